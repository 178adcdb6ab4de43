"""Quantizers: latents z [B, T, D] -> codes [B, CN, T] -> z_q [B, T, D].

    q = build_quantizer("vq", dim=32)                       # SiTok default: 65,536 x 32 EMA VQ
    q = build_quantizer("rvq", dim=32, num_codebooks=4)     # residual VQ, CN = 4
    q = build_quantizer("fsq", dim=16)                      # levels [2] * 16
    q = build_quantizer("bsq", dim=16)                      # 16 sign bits (wraps speechbrain)

One module per method: base (interface, CodebookUsage), vq, rvq, fsq, bsq.
"""

from sitok.quantizers.base import CodebookUsage, Quantizer, QuantizerOutput
from sitok.quantizers.bsq import BSQ
from sitok.quantizers.fsq import FSQ
from sitok.quantizers.rvq import ResidualVQ
from sitok.quantizers.vq import EMAVectorQuantizer

KINDS = {"vq": EMAVectorQuantizer, "rvq": ResidualVQ, "fsq": FSQ, "bsq": BSQ}


def build_quantizer(kind: str, dim: int, **kwargs) -> Quantizer:
    """kind in {"vq", "rvq", "fsq", "bsq"}; kwargs go to that class's constructor."""
    if kind not in KINDS:
        raise ValueError(f"unknown quantizer kind {kind!r}; expected one of {sorted(KINDS)}")
    return KINDS[kind](dim=dim, **kwargs)


__all__ = [
    "BSQ",
    "FSQ",
    "CodebookUsage",
    "EMAVectorQuantizer",
    "KINDS",
    "Quantizer",
    "QuantizerOutput",
    "ResidualVQ",
    "build_quantizer",
]
