"""Probe inputs (the probe's front end): frozen tokens or continuous mel features -> [B, T, D] frame vectors.

Every probe input takes a padded batch ``x`` and returns ``[B, T', D]`` with ``frame_rate`` frames
per second, so one probe head (ECAPA-TDNN, BiLSTM) works on any of them. (Not to be confused with
``sitok.data.mel.MelFrontend``, which computes the log-mel from a waveform.)

* :class:`TokenProbeInput` (discrete, DASB style): codes ``[B, T, CN]`` (long) -> one embedding
  table per codebook -> optional projection -> the CN codebook vectors of each frame combined by
  a learned per-frame attention weighting (:class:`AttentionMLP`). A table can start from the
  tokenizer's own codebook (``init``); the ids are read, never modified in place.
* :class:`MelProbeInput` (continuous upper baseline): the normalised log-mel ``[B, T50, 128]``
  either at 50 Hz (``stack=1``) or stacked 4 frames at a time to the token rate of 12.5 Hz
  (``stack=4``, the same stacking as the tokenizer's encoder input), then a linear layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sitok.infer import Tokenizer
from sitok.models.loading import load_model_config


class AttentionMLP(nn.Module):
    """Per-frame softmax weights over the CN codebook vectors: score = MLP(vector), one per
    codebook; output = sum_c softmax(score)_c * vector_c. With CN = 1 the weight is exactly 1."""

    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # x [B, T, CN, D]
        w = self.mlp(x).squeeze(-1).softmax(dim=-1)  # [B, T, CN]
        return (w.unsqueeze(-1) * x).sum(dim=2), w  # [B, T, D], [B, T, CN]


class TokenProbeInput(nn.Module):
    """Codes [B, T, CN] -> [B, T, dim].

    ``init``: optional tensor [CN, K, Dc] (the quantizer's codebooks, :func:`codebook_vectors`).
    With it each table is [K, Dc] initialised from the codebook and a linear projection Dc -> dim
    follows (identity-initialised when Dc == dim); without it each table is [K, dim] and no
    projection is used. ``freeze_init`` keeps the initialised tables fixed (the projection trains).
    """

    def __init__(
        self,
        num_codebooks: int,
        codebook_size: int,
        dim: int = 256,
        init: Tensor | None = None,
        freeze_init: bool = False,
        attention_hidden: int = 64,
        frame_rate: float = 12.5,
    ):
        super().__init__()
        self.num_codebooks, self.codebook_size, self.dim = int(num_codebooks), int(codebook_size), int(dim)
        self.frame_rate = float(frame_rate)
        table_dim = dim
        if init is not None:
            if tuple(init.shape[:2]) != (num_codebooks, codebook_size):
                raise ValueError(
                    f"init codebooks have shape {tuple(init.shape)}, expected [{num_codebooks}, {codebook_size}, Dc]"
                )
            table_dim = int(init.shape[2])
        self.embeddings = nn.ModuleList(nn.Embedding(codebook_size, table_dim) for _ in range(num_codebooks))
        self.proj = None
        if init is not None:
            for c, emb in enumerate(self.embeddings):
                emb.weight.data.copy_(init[c].float())
                emb.weight.requires_grad_(not freeze_init)
            self.proj = nn.Linear(table_dim, dim)
            if table_dim == dim:
                nn.init.eye_(self.proj.weight)
                nn.init.zeros_(self.proj.bias)
        self.attention = AttentionMLP(dim, attention_hidden)
        self.last_weights: Tensor | None = None  # [B, T, CN] of the last batch (for inspection)

    def forward(self, codes: Tensor) -> Tensor:
        if codes.dim() != 3 or codes.shape[-1] != self.num_codebooks:
            raise ValueError(f"codes must be [B, T, {self.num_codebooks}], got {tuple(codes.shape)}")
        if codes.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"codes must be integer ids, got {codes.dtype}")
        x = torch.stack([emb(codes[..., c].long()) for c, emb in enumerate(self.embeddings)], dim=2)  # [B,T,CN,Dt]
        if self.proj is not None:
            x = self.proj(x)  # [B, T, CN, dim]
        out, self.last_weights = self.attention(x)
        return out


class MelProbeInput(nn.Module):
    """Normalised log-mel [B, T50, n_mels] -> [B, T50 / stack, dim] (stack 4: 12.5 Hz; 1: 50 Hz)."""

    def __init__(self, n_mels: int = 128, stack: int = 4, dim: int = 256, mel_rate: float = 50.0):
        super().__init__()
        self.n_mels, self.stack = int(n_mels), int(stack)
        self.frame_rate = mel_rate / self.stack
        self.proj = nn.Linear(self.n_mels * self.stack, dim)

    def forward(self, mel: Tensor) -> Tensor:
        B, T, F = mel.shape
        if F != self.n_mels:
            raise ValueError(f"mel must be [B, T, {self.n_mels}], got {tuple(mel.shape)}")
        T = -(-T // self.stack) * self.stack  # pad to a whole number of stacks (padding is masked later)
        mel = nn.functional.pad(mel, (0, 0, 0, T - mel.shape[1]))
        return self.proj(mel.reshape(B, T // self.stack, F * self.stack))


@torch.no_grad()
def codebook_vectors(quantizer) -> Tensor:
    """The quantizer's codebooks as [CN, K, Dc]: VQ -> its entries; residual VQ -> each stage's;
    implicit codebooks (FSQ, BSQ; CN = 1) -> ``decode`` of every id (K <= 2**17)."""
    if hasattr(quantizer, "embed"):
        return quantizer.embed.detach().float()[None].clone()
    if hasattr(quantizer, "stages"):
        return torch.stack([s.embed.detach().float() for s in quantizer.stages]).clone()
    K = int(quantizer.codebook_size)
    if quantizer.num_codebooks != 1 or K > 2**17:
        raise ValueError(
            f"cannot list the codebook of {type(quantizer).__name__} (CN {quantizer.num_codebooks}, K {K})"
        )
    ids = torch.arange(K)[None, None, :]  # [1, 1, K]
    return quantizer.decode(ids)[0].float()[None].clone()  # [1, K, Dc]


FEATURES = ("tokens", "mel12.5", "mel50")


def build_frontend(
    features: str,
    dim: int = 256,
    model_dir: str | None = None,
    init_from_codebook: bool = False,
    freeze_init: bool = False,
    attention_hidden: int = 64,
    n_mels: int = 128,
) -> nn.Module:
    """``features``: "tokens" (needs ``model_dir``: the tokenizer whose codes are probed),
    "mel12.5" or "mel50" (continuous baselines)."""
    if features in ("mel12.5", "mel50"):
        return MelProbeInput(n_mels, stack=4 if features == "mel12.5" else 1, dim=dim)
    if features != "tokens":
        raise ValueError(f"unknown probe features {features!r}; expected one of {FEATURES}")
    if not model_dir:
        raise ValueError("token features need model_dir (the tokenizer model directory)")
    cfg = load_model_config(model_dir)
    init = None
    if init_from_codebook:
        init = codebook_vectors(Tokenizer.from_pretrained(model_dir, vocoder="griffin_lim").model.quantizer)
    tps = cfg["mel_rate"] / cfg["stack"]
    return TokenProbeInput(cfg["num_codebooks"], cfg["codebook_size"], dim, init, freeze_init, attention_hidden, tps)
