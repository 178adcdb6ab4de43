"""The quantizer interface shared by VQ, RVQ, FSQ and BSQ, and codebook-usage statistics.

Shapes: encoder latents z [B, T, D], frame mask [B, T] (True = valid frame), codes
[B, CN, T] (CN = number of codebooks; 1 for VQ/FSQ, CN stages for RVQ, D/16 for BSQ).

Conventions every quantizer follows:
  * padded frames (mask False) are replaced by zeros on input: they never touch training
    statistics (EMA codebooks, losses, usage), get code 0 in every codebook, z_q = decode(code 0)
    and no gradient;
  * the code of a valid frame depends only on that frame (and the quantizer state), never on
    the other frames of the batch or on what the padding holds;
  * z_q is straight-through: its forward value is the quantized vector, its gradient goes to z.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    z_q: Tensor  # [B, T, D] straight-through: forward value = quantized, gradient flows to z
    codes: Tensor  # [B, CN, T] long
    loss: Tensor  # scalar commitment / auxiliary loss (0 when none)
    stats: dict[str, float] = field(default_factory=dict)  # 'usage', 'perplexity', ... of this batch


def check_codes(codes: Tensor, num_codebooks: int, codebook_size: int) -> Tensor:
    """Validate codes [B, CN, T] (integer dtype, 0 <= code < codebook_size); return them as long."""
    if not isinstance(codes, Tensor):
        raise ValueError(f"codes must be a torch.Tensor of shape [B, {num_codebooks}, T], got {type(codes).__name__}")
    if codes.dtype == torch.bool or codes.dtype.is_floating_point or codes.dtype.is_complex:
        raise ValueError(f"codes must have an integer dtype, got {codes.dtype}")
    if codes.dim() != 3 or codes.shape[1] != num_codebooks:
        raise ValueError(f"codes must have shape [B, CN={num_codebooks}, T], got {tuple(codes.shape)}")
    if codes.numel():
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0:
            raise ValueError(f"codes must be >= 0, got a negative code {lo}")
        if hi >= codebook_size:
            raise ValueError(f"codes must be < codebook_size={codebook_size}, got {hi}")
    return codes.long()


class Quantizer(nn.Module, ABC):
    """Maps latents z [B, T, D] to codes [B, CN, T] and back to z_q [B, T, D]."""

    def __init__(self, dim: int, codebook_size: int, num_codebooks: int = 1):
        super().__init__()
        if dim < 1 or codebook_size < 2 or num_codebooks < 1:
            raise ValueError(
                f"bad quantizer sizes: dim={dim}, codebook_size={codebook_size}, num_codebooks={num_codebooks}"
            )
        self.dim = int(dim)  # D, input / output dim
        self.codebook_size = int(codebook_size)  # entries per codebook
        self.num_codebooks = int(num_codebooks)  # CN

    @property
    def bits_per_token(self) -> float:
        return self.num_codebooks * math.log2(self.codebook_size)

    @abstractmethod
    def forward(self, z: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        """Quantize z [B, T, D]; in training mode, may update internal state (e.g. EMA codebooks)."""

    @abstractmethod
    def encode(self, z: Tensor, mask: Tensor | None = None) -> Tensor:
        """Codes [B, CN, T] of z [B, T, D]; no gradient, no state update (whatever the mode)."""

    @abstractmethod
    def decode(self, codes: Tensor) -> Tensor:
        """z_q [B, T, D] of codes [B, CN, T]; ValueError on malformed codes."""

    # ---- helpers for subclasses ----

    def _check_input(self, z: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Validate z [B, T, D] and mask [B, T]; return (z with padded frames zeroed, mask)."""
        if not isinstance(z, Tensor) or z.dim() != 3 or z.shape[-1] != self.dim:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"z must have shape [B, T, D={self.dim}], got {shape}")
        B, T, _ = z.shape
        if mask is None:
            return z, torch.ones(B, T, dtype=torch.bool, device=z.device)
        if mask.dtype != torch.bool or tuple(mask.shape) != (B, T):
            raise ValueError(
                f"mask must be a bool tensor of shape [B, T]=({B}, {T}), got {mask.dtype} {tuple(mask.shape)}"
            )
        mask = mask.to(z.device)
        return z.masked_fill(~mask[..., None], 0.0), mask  # [B, T, D]: padding -> 0, no gradient

    def _check_codes(self, codes: Tensor) -> Tensor:
        return check_codes(codes, self.num_codebooks, self.codebook_size)

    def _batch_stats(self, codes: Tensor, mask: Tensor) -> dict[str, float]:
        usage = CodebookUsage(self.codebook_size, self.num_codebooks, device=codes.device)
        usage.update(codes, mask, validate=False)
        return {"usage": usage.usage, "perplexity": usage.perplexity}


class CodebookUsage:
    """Code histograms accumulated over batches (e.g. a whole test split).

        u = CodebookUsage(codebook_size=65536, num_codebooks=1)
        for batch in loader:
            u.update(quantizer.encode(z, mask), mask)
        u.usage, u.perplexity, u.summary()

    usage: fraction of entries used at least once (per codebook: usage_per_codebook; mean: usage).
    perplexity: exp of the entropy (nats) of the code distribution (per codebook; mean over codebooks).
    Both are 0.0 while no frame has been counted.
    """

    def __init__(self, codebook_size: int, num_codebooks: int = 1, device: torch.device | str | None = None):
        self.codebook_size = int(codebook_size)
        self.num_codebooks = int(num_codebooks)
        self.counts = torch.zeros(self.num_codebooks, self.codebook_size, dtype=torch.long, device=device)  # [CN, K]

    def reset(self) -> None:
        self.counts.zero_()

    def update(self, codes: Tensor, mask: Tensor | None = None, validate: bool = True) -> None:
        """Count codes [B, CN, T] of the valid frames (mask [B, T], True = valid)."""
        if validate:
            codes = check_codes(codes, self.num_codebooks, self.codebook_size)
        codes = codes.long()
        CN, K = self.num_codebooks, self.codebook_size
        self.counts = self.counts.to(codes.device)
        offset = torch.arange(CN, device=codes.device)[None, :, None] * K  # [1, CN, 1]
        flat = codes + offset  # [B, CN, T], index into the flattened [CN * K] histogram
        if mask is not None:
            if mask.dtype != torch.bool or mask.shape != (codes.shape[0], codes.shape[2]):
                raise ValueError(f"mask must be a bool tensor of shape [B, T], got {mask.dtype} {tuple(mask.shape)}")
            flat = flat.masked_select(mask.to(codes.device)[:, None, :])  # [N * CN]
        self.counts += torch.bincount(flat.reshape(-1), minlength=CN * K).view(CN, K)

    @property
    def frames(self) -> int:
        return int(self.counts[0].sum())

    @property
    def usage_per_codebook(self) -> Tensor:  # [CN]
        return (self.counts > 0).double().mean(dim=1).cpu()

    @property
    def perplexity_per_codebook(self) -> Tensor:  # [CN]
        counts = self.counts.double()
        total = counts.sum(dim=1, keepdim=True)  # [CN, 1]
        p = counts / total.clamp(min=1)
        entropy = -(p * p.clamp(min=1e-300).log()).sum(dim=1)  # [CN], 0 log 0 = 0
        return torch.where(total[:, 0] > 0, entropy.exp(), torch.zeros_like(entropy)).cpu()

    @property
    def usage(self) -> float:
        return float(self.usage_per_codebook.mean())

    @property
    def perplexity(self) -> float:
        return float(self.perplexity_per_codebook.mean())

    def summary(self) -> dict[str, float]:
        out = {"usage": self.usage, "perplexity": self.perplexity, "frames": float(self.frames)}
        if self.num_codebooks > 1:
            for c, (u, p) in enumerate(zip(self.usage_per_codebook, self.perplexity_per_codebook)):
                out[f"usage_{c}"], out[f"perplexity_{c}"] = float(u), float(p)
        return out
