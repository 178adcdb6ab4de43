"""RMSNorm and the decoder's scale-only adaptive RMSNorm (AdaRMSNorm)."""

from __future__ import annotations

import torch
import torch.nn as nn


class RMSNorm(nn.RMSNorm):
    """torch's RMSNorm with an explicit eps (its default depends on the dtype)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__(dim, eps=eps)


class AdaRMSNorm(nn.Module):
    """Scale-only adaptive RMSNorm: ``rms_norm(x) * gain(c)`` with ``gain = Linear(c)``.

    The Linear starts at weight 0, bias 1, so each norm begins as a plain (unit-gain) RMSNorm
    and learns how the timestep embedding ``c`` should rescale each channel.
    """

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.gain = nn.Linear(cond_dim, dim)
        nn.init.zeros_(self.gain.weight)
        nn.init.ones_(self.gain.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # x [B, T, D], c [B, C] (or [B, T, C] for per-frame conditioning)
        g = self.gain(c)
        if g.dim() == 2:
            g = g.unsqueeze(1)
        return nn.functional.rms_norm(x, (x.shape[-1],), eps=self.eps) * g
