"""Binary spherical quantization (BSQ, Zhao et al. 2024), wrapping speechbrain's implementation.

    bsq = BSQ(dim=16)          # 16 bits per frame -> codes [B, 1, T] in range(65536)
    bsq = BSQ(dim=32)          # 32 bits -> 2 codebooks of 16 bits, codes [B, 2, T]

u = z / ||z|| (over all D dims), q = sign(u) / sqrt(D) (a zero coordinate gives -1), and
z_q = q + (u - sg(u)) (straight-through; z_q lies on the unit sphere, so its scale is not z's).

Codes. The D sign bits are split into CN = D / bits_per_codebook groups of consecutive dims
(CN = 1 if D <= bits_per_codebook, default 16; otherwise D must be a multiple of it), and each
group's bits form one binary index, most significant bit first (speechbrain's convention:
dim 0 of the group is bit G-1; bit = 1 for a positive coordinate). codebook_size = 2**G.

Loss = beta * mean over valid frames of ||u - sg(q)||^2 (commitment)
     + sum over groups of speechbrain's entropy loss (entropy_loss_weight * (per-frame entropy
       - diversity_gamma * batch code entropy), soft assignments at inv_temperature), computed
       on the valid frames only.
What is wrapped: speechbrain.lobes.models.bsq.BinarySphericalQuantizer (one per group) gives
the training-time codes and the entropy loss; z_q and the commitment loss use the global
normalisation above (speechbrain normalises each group on its own, which would change the
scale and gradient when CN > 1). Its entropy loss materialises soft assignments over all 2**G
codes: memory ~ N_valid_frames x 2**G floats per group in forward (e.g. 300 frames x 65,536
= 79 MB). encode() does not call it (codes straight from the signs, same convention), so
inference stays cheap.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sitok.quantizers.base import Quantizer, QuantizerOutput


class BSQ(Quantizer):
    def __init__(
        self,
        dim: int,
        beta: float = 0.25,
        entropy_loss_weight: float = 0.1,
        diversity_gamma: float = 1.0,
        inv_temperature: float = 100.0,
        bits_per_codebook: int = 16,
    ):
        if dim > bits_per_codebook and dim % bits_per_codebook:
            raise ValueError(
                f"BSQ needs dim <= {bits_per_codebook} or a multiple of it (bits per codebook), got dim={dim}"
            )
        G = min(dim, bits_per_codebook)
        super().__init__(dim, 2**G, num_codebooks=dim // G)
        try:
            from speechbrain.lobes.models.bsq import BinarySphericalQuantizer
        except ImportError as e:  # speechbrain is an optional dependency of sitok
            raise ImportError("BSQ wraps speechbrain's BinarySphericalQuantizer: pip install speechbrain>=1.1") from e
        self.bits = G  # bits per codebook
        self.beta, self.inv_temperature = float(beta), float(inv_temperature)
        self.groups = nn.ModuleList(
            BinarySphericalQuantizer(G, entropy_loss_weight=entropy_loss_weight, diversity_gamma=diversity_gamma)
            for _ in range(self.num_codebooks)
        )
        self.register_buffer("place", 2 ** torch.arange(G - 1, -1, -1), persistent=False)  # [G], MSB first

    def _codes_from_signs(self, u: Tensor, mask: Tensor) -> Tensor:
        """u [B, T, D] -> codes [B, CN, T]; padded frames get code 0."""
        B, T, _ = u.shape
        bits = (u > 0).long().view(B, T, self.num_codebooks, self.bits)  # [B, T, CN, G]
        codes = (bits * self.place).sum(dim=-1).masked_fill(~mask[..., None], 0)  # [B, T, CN]
        return codes.transpose(1, 2).contiguous()  # [B, CN, T]

    def forward(self, z: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        z, mask = self._check_input(z, mask)  # [B, T, D], [B, T]
        B, T, D = z.shape
        u = F.normalize(z.float(), dim=-1)  # [B, T, D] on the unit sphere
        uv = u[mask]  # [N, D] valid frames
        codes = torch.zeros(B, self.num_codebooks, T, dtype=torch.long, device=z.device)  # [B, CN, T]
        aux = u.new_zeros(())
        if uv.shape[0] > 0:
            for c, group in enumerate(self.groups):
                part = uv[:, c * self.bits : (c + 1) * self.bits]  # [N, G]
                _, idx, aux_c = group(part[None], inv_temperature=self.inv_temperature)  # idx [1, N]
                codes[:, c][mask] = idx[0].long()
                aux = aux + aux_c
        q = self.decode(codes)  # [B, T, D], +-1/sqrt(D)
        commit = (u - q).pow(2).mean(dim=-1).masked_fill(~mask, 0.0).sum() / mask.sum().clamp(min=1)
        z_q = q + (u - u.detach())  # straight-through: forward value exactly q
        loss = self.beta * commit + aux
        return QuantizerOutput(z_q=z_q.to(z.dtype), codes=codes, loss=loss, stats=self._batch_stats(codes, mask))

    @torch.no_grad()
    def encode(self, z: Tensor, mask: Tensor | None = None) -> Tensor:
        z, mask = self._check_input(z, mask)
        return self._codes_from_signs(F.normalize(z.float(), dim=-1), mask)

    def decode(self, codes: Tensor) -> Tensor:
        codes = self._check_codes(codes).to(self.place.device)  # [B, CN, T]
        bits = (codes.transpose(1, 2)[..., None] // self.place) % 2  # [B, T, CN, G]
        B, T = bits.shape[:2]
        return (bits.float() * 2 - 1).reshape(B, T, self.dim) / math.sqrt(self.dim)  # [B, T, D]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_codebooks={self.num_codebooks}, bits_per_codebook={self.bits}, beta={self.beta}"
