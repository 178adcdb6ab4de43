"""Finite scalar quantization (FSQ, Mentzer et al. 2023): no codebook, no auxiliary loss.

    fsq = FSQ(dim=16, levels=[2] * 16)     # 2**16 = 65,536 codes, 16 bits per frame
    out = fsq(z, mask)                     # out.codes [B, 1, T] in range(65536)

Channel i (L = levels[i] >= 2 values) is bounded and rounded on a grid symmetric about 0:
    y = tanh(z_i) * (L - 1) / 2               in (-(L-1)/2, (L-1)/2)
    digit = round(y + (L - 1) / 2)            in {0, ..., L-1}   (straight-through round)
    value = (digit - (L - 1) / 2) / ((L - 1) / 2)                in [-1, 1]
so odd L gives {-1, ..., 0, ..., 1} and even L a half-integer grid without 0 (L = 2: {-1, +1},
i.e. the sign of z_i). The frame's code is the mixed-radix number of its digits,
code = sum_i digit_i * prod(levels[:i]) (channel 0 is the least significant digit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from sitok.quantizers.base import Quantizer, QuantizerOutput


class FSQ(Quantizer):
    def __init__(self, dim: int = 16, levels: Sequence[int] | None = None):
        levels = [2] * 16 if levels is None else [int(l) for l in levels]
        if len(levels) != dim:
            raise ValueError(f"FSQ needs dim == len(levels), got dim={dim} and {len(levels)} levels {levels}")
        if any(l < 2 for l in levels):
            raise ValueError(f"every FSQ level must be >= 2, got {levels}")
        size = math.prod(levels)
        if size > 2**62:
            raise ValueError(f"prod(levels) = {size} does not fit int64 codes")
        super().__init__(dim, size, num_codebooks=1)
        self.levels = levels
        L = torch.tensor(levels, dtype=torch.float32)
        self.register_buffer("half_width", (L - 1) / 2, persistent=False)  # [D] (L-1)/2
        basis = torch.cumprod(torch.tensor([1] + levels[:-1], dtype=torch.long), dim=0)
        self.register_buffer("basis", basis, persistent=False)  # [D] mixed-radix place values
        self.register_buffer("radix", torch.tensor(levels, dtype=torch.long), persistent=False)  # [D]

    def _values(self, digits: Tensor) -> Tensor:
        return (digits - self.half_width) / self.half_width  # [B, T, D] in [-1, 1]

    def forward(self, z: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        z, mask = self._check_input(z, mask)  # [B, T, D], [B, T]
        y = torch.tanh(z.float()) * self.half_width + self.half_width  # [B, T, D] in (0, L-1)
        digits = torch.round(y.detach()).masked_fill(~mask[..., None], 0.0)  # [B, T, D], padding -> code 0
        codes = (digits.long() * self.basis).sum(dim=-1)[:, None, :]  # [B, 1, T]
        soft = self._values(y)  # [B, T, D]
        z_q = self._values(digits) + (soft - soft.detach())  # straight-through, forward value exact
        return QuantizerOutput(z_q.to(z.dtype), codes, z.new_zeros(()), self._batch_stats(codes, mask))

    @torch.no_grad()
    def encode(self, z: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.forward(z, mask).codes

    def decode(self, codes: Tensor) -> Tensor:
        codes = self._check_codes(codes).to(self.basis.device)[:, 0, :, None]  # [B, T, 1]
        digits = (codes // self.basis) % self.radix  # [B, T, D]
        return self._values(digits.float())

    def extra_repr(self) -> str:
        return f"levels={self.levels}, codebook_size={self.codebook_size}"
