"""Residual VQ (SoundStream, Zeghidour et al. 2021): CN EMA-VQ stages on successive residuals.

    rvq = ResidualVQ(dim=32, num_codebooks=4, codebook_size=65536)
    out = rvq(z, mask)      # out.codes [B, 4, T]; out.z_q = sum of the 4 stage embeddings

Stage c quantizes r_c = z - sum_{j<c} q_j (q_j exact stage-j vectors, no gradient), so each
stage's commitment loss beta * ||r_c - sg(q_c)||^2 pulls z; the total loss is their sum.
z_q = sum_c q_c + (z - sg(z)) (forward value exact, gradient 1 to z, not CN). Each stage has its own EMA
codebook, data initialisation and dead-code restart (see vq.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sitok.quantizers.base import Quantizer, QuantizerOutput
from sitok.quantizers.vq import EMAVectorQuantizer, nearest


class ResidualVQ(Quantizer):
    def __init__(self, dim: int, num_codebooks: int = 4, codebook_size: int = 65536, **vq_kwargs):
        """vq_kwargs go to every EMAVectorQuantizer stage (decay, eps, beta, dead_threshold, ...)."""
        super().__init__(dim, codebook_size, num_codebooks)
        self.stages = nn.ModuleList(EMAVectorQuantizer(dim, codebook_size, **vq_kwargs) for _ in range(num_codebooks))

    def forward(self, z: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        z, mask = self._check_input(z, mask)  # [B, T, D], [B, T]
        residual = z  # [B, T, D]
        q_sum = torch.zeros_like(z)  # [B, T, D]
        codes, loss, stats = [], z.new_zeros(()), {}
        for c, stage in enumerate(self.stages):
            out, q = stage._forward(residual, mask)  # q [B, T, D] exact stage vectors
            residual = residual - q
            q_sum = q_sum + q
            codes.append(out.codes)  # [B, 1, T]
            loss = loss + out.loss
            stats.update({f"{k}_{c}": v for k, v in out.stats.items()})
        codes = torch.cat(codes, dim=1)  # [B, CN, T]
        z_q = q_sum + (z - z.detach())  # straight-through: forward value exactly sum q_c
        for key in ("usage", "perplexity", "ema_usage"):
            stats[key] = sum(stats[f"{key}_{c}"] for c in range(self.num_codebooks)) / self.num_codebooks
        return QuantizerOutput(z_q=z_q, codes=codes, loss=loss, stats=stats)

    @torch.no_grad()
    def init_kmeans(self, frames: Tensor, iters: int = 10, seed: int = 0) -> dict[str, float]:
        """Residual k-means: stage c is fitted to what stages < c leave of ``frames`` [N, D]."""
        residual, stats = frames.detach().float(), {}
        for c, stage in enumerate(self.stages):
            fit = stage.init_kmeans(residual, iters=iters, seed=seed + c)
            stats.update({f"{k}_{c}": v for k, v in fit.items()})
            residual = residual - stage.embed[nearest(residual.to(stage.embed.device), stage.embed)].to(residual.device)
        return stats

    @torch.no_grad()
    def encode(self, z: Tensor, mask: Tensor | None = None) -> Tensor:
        z, mask = self._check_input(z, mask)
        residual, codes = z, []
        for stage in self.stages:
            c = stage.encode(residual, mask)  # [B, 1, T]
            residual = residual - stage.decode(c)
            codes.append(c)
        return torch.cat(codes, dim=1)  # [B, CN, T]

    def decode(self, codes: Tensor) -> Tensor:
        codes = self._check_codes(codes)
        return sum(stage.decode(codes[:, c : c + 1]) for c, stage in enumerate(self.stages))  # [B, T, D]
