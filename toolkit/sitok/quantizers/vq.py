"""Vector quantizer with an EMA-updated codebook (VQ-VAE, van den Oord et al. 2017, App. A.1).

SiTok's default: one codebook of K = 65,536 entries of dim D = 32, 16 bits per 12.5 Hz frame.

    vq = EMAVectorQuantizer(dim=32, codebook_size=65536)
    out = vq(z, mask)                    # z [B, T, 32] -> out.z_q [B, T, 32], out.codes [B, 1, T]
    loss = recon_loss + out.loss         # out.loss = beta * commitment

Training-mode forward, per step:
  1. (first step, init_from_data) codebook <- random valid frames of the batch;
  2. codes = argmin_k ||z - e_k||^2 over valid frames, with the codebook before this step's update;
  3. EMA of per-entry frame counts (cluster_size) and frame sums (embed_avg), from valid frames
     only, summed over ranks when torch.distributed is initialised; e_k = embed_avg_k / smoothed
     count_k (Laplace smoothing eps);
  4. every `restart_every` steps, dead entries (cluster_size < dead_threshold) are re-initialised
     to random valid frames of the batch (rank 0's frames when distributed, broadcast).

Dead-code threshold. cluster_size is an EMA of "frames assigned per step"; every entry starts
(and restarts) with a nominal count of 1. An entry that is never chosen decays as decay**n, so
with the defaults (decay 0.99, dead_threshold 1e-3) it is declared dead after
ln(1000) / -ln(0.99) ~ 690 steps without use. For reference, with 8k valid frames per step and
65,536 entries a uniformly used entry has cluster_size ~ 0.12, two orders of magnitude above the
threshold, so live-but-rare entries are not churned. dead_threshold must be < 1.

Relative threshold. A fixed threshold means a different thing at every batch size and codebook
size: with ~700 frames per step and 1,024 entries the uniform rate is ~0.7 frames per entry per
step, so a threshold of 0.5 restarts live entries that are merely a little rarer than average.
``dead_relative`` = r > 0 declares an entry dead when no frame has chosen it among the last K / r
valid frames (counted over all ranks), whatever the batch and codebook size: with r = 0.03 an
entry used at 1/3 of the uniform rate survives that window with probability 1 - e^-11, one used
at 1/30 of it is likely restarted, and an entry nobody uses is restarted after K / r frames
(~50 steps of the mini recipe) rather than the hundreds of steps an EMA count needs to decay.
Both tests apply when both are set.

k-means initialisation. ``init_kmeans(frames)`` sets the codebook to the k-means centroids of a
sample of encoder outputs (Lloyd iterations, empty clusters re-seeded from random frames), the
usual start for EMA VQ (SoundStream, Encodec): every entry starts where data is, so usage is high
from the first step and no entry has to be restarted into place.

Nearest-neighbour search runs in float32 (autocast off) over fixed-size chunks of frames, each
zero-padded to the same number of rows, so every matmul has one shape [R, D] x [D, K] whatever
the batch: the code of a frame cannot depend on the batch composition, and memory stays at
R x K floats (64 MB for K = 65,536).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from sitok.quantizers.base import Quantizer, QuantizerOutput


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class EMAVectorQuantizer(Quantizer):
    """dim: D; codebook_size: K; decay: EMA decay; eps: Laplace smoothing of the counts;
    beta: commitment weight (loss = beta * mean over valid frames and dims of (z - sg(q))^2, the usual MSE);
    normalize: cosine-similarity VQ (z and the entries are l2-normalised; usage stays higher early on);
    dead_threshold: restart entries whose EMA count is below it; dead_relative: also restart those no
    frame chose among the last codebook_size / dead_relative frames (0: off); restart_every: check every n
    training steps (0 = never); init_from_data: codebook <- frames of the first training batch
    (with fewer frames than entries, every frame once and then repeats); chunk_elements: max
    elements of one [R, K] distance chunk (R capped at 256 frames: a fixed [256, K] matmul per chunk,
    little padding on short batches)."""

    def __init__(
        self,
        dim: int,
        codebook_size: int = 65536,
        decay: float = 0.99,
        eps: float = 1e-5,
        beta: float = 0.25,
        dead_threshold: float = 1e-3,
        dead_relative: float = 0.0,
        restart_every: int = 1,
        init_from_data: bool = True,
        chunk_elements: int = 2**24,
        normalize: bool = False,
    ):
        super().__init__(dim, codebook_size, num_codebooks=1)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        if not 0.0 <= dead_threshold < 1.0:
            raise ValueError(f"dead_threshold must be in [0, 1) (entries restart with count 1), got {dead_threshold}")
        if not 0.0 <= dead_relative < 1.0:
            raise ValueError(f"dead_relative must be in [0, 1) (dead after K / r unused frames), got {dead_relative}")
        if restart_every < 0:
            raise ValueError(f"restart_every must be >= 0 (0 = never), got {restart_every}")
        self.decay, self.eps, self.beta = float(decay), float(eps), float(beta)
        self.normalize = bool(normalize)  # cosine-similarity VQ: z and every entry on the unit sphere
        self.dead_threshold, self.restart_every = float(dead_threshold), int(restart_every)
        self.dead_relative = float(dead_relative)
        self.chunk_rows = max(1, min(256, chunk_elements // codebook_size))  # R frames per distance chunk
        K, D = codebook_size, dim
        embed = torch.randn(K, D)
        self.register_buffer("embed", embed)  # [K, D] codebook
        self.register_buffer("embed_avg", embed.clone())  # [K, D] EMA of per-entry frame sums
        self.register_buffer("cluster_size", torch.ones(K))  # [K] EMA of per-entry frame counts (+ restart credit)
        self.register_buffer("usage_ema", torch.zeros(K))  # [K] EMA of counts only (for the running usage stat)
        self.register_buffer("unused_frames", torch.zeros(K))  # [K] valid frames seen since the entry was last chosen
        self.register_buffer("initted", torch.tensor(not init_from_data))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.accumulate = False  # True: training forwards only collect; flush() updates (see _collect)
        self._pending: tuple[Tensor, Tensor, Tensor] | None = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # models saved before unused_frames existed load with the counter at zero
        state_dict.setdefault(prefix + "unused_frames", torch.zeros_like(self.unused_frames))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---- lookup ----

    @torch.no_grad()
    def _nearest(self, x: Tensor) -> Tensor:
        """x [N, D] -> codes [N] of the nearest entries (squared Euclidean distance), in float32
        over fixed-shape chunks (a frame's code cannot depend on its batch mates)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return nearest(x.float(), self.embed.float(), rows=self.chunk_rows, fixed_shape=True)

    def _codes(self, x: Tensor, mask: Tensor) -> Tensor:
        """Valid frames x [N, D] (= z[mask]), mask [B, T] -> codes [B, T]; padded frames get code 0."""
        codes = torch.zeros(mask.shape, dtype=torch.long, device=x.device)  # [B, T]
        codes[mask] = self._nearest(x)
        return codes

    def _prepare(self, z: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        z, mask = self._check_input(z, mask)
        if self.normalize:
            z = F.normalize(z, dim=-1)
        return z, mask

    @torch.no_grad()
    def encode(self, z: Tensor, mask: Tensor | None = None) -> Tensor:
        z, mask = self._prepare(z, mask)
        return self._codes(z[mask], mask)[:, None, :]  # [B, 1, T]

    def encode_dense(self, z: Tensor, mask: Tensor) -> Tensor:
        """``encode`` in the form graph exporters need (ONNX): every frame's distances in one matrix,
        nothing indexed by the mask, no input checks. The same codes on valid frames, 0 on padding
        (up to ties that float rounding may break differently)."""
        z = F.normalize(z, dim=-1) if self.normalize else z
        e = self.embed.float()
        dist = e.pow(2).sum(1) - 2.0 * z.float() @ e.t()  # [B, T, K] (||z||^2 is the same for every entry)
        return torch.where(mask, dist.argmin(-1), 0)[:, None, :]  # [B, 1, T]

    def decode(self, codes: Tensor) -> Tensor:
        return self.lookup(self._check_codes(codes).to(self.embed.device))

    def lookup(self, codes: Tensor) -> Tensor:
        """``decode`` without the checks of the codes (graph export): codes [B, 1, T] -> [B, T, D]."""
        return F.embedding(codes[:, 0], self.embed)

    # ---- training step ----

    def forward(self, z: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        return self._forward(z, mask)[0]

    def _forward(self, z: Tensor, mask: Tensor | None) -> tuple[QuantizerOutput, Tensor]:
        """Also returns the exact quantized vectors q [B, T, D] (no grad), used by ResidualVQ."""
        z, mask = self._prepare(z, mask)  # [B, T, D], [B, T]
        x = z.detach()[mask].float()  # [N, D] valid frames
        if self.training and not bool(self.initted):
            self._init_codebook(x)
        codes = self._codes(x, mask)  # [B, T]
        q = F.embedding(codes, self.embed).to(z.dtype)  # [B, T, D], codebook before the update
        n_valid = mask.sum().clamp(min=1)
        commit = (z - q).pow(2).mean(dim=-1).masked_fill(~mask, 0.0).sum() / n_valid  # mean over frames and dims
        z_q = q + (z - z.detach())  # straight-through: forward value exactly q, gradient 1 to z
        codes = codes[:, None, :]  # [B, 1, T]
        stats = self._batch_stats(codes, mask)
        restarted = 0
        if self.training and self.accumulate:  # counted now, applied by flush() at the optimiser step
            self._collect(x, codes[:, 0][mask])
        elif self.training:
            restarted = self._ema_update(x, codes[:, 0][mask])
        stats.update(self._running_stats(), restarted=float(restarted))
        return QuantizerOutput(z_q=z_q, codes=codes, loss=self.beta * commit, stats=stats), q

    @torch.no_grad()
    def _sample_frames(self, x: Tensor, n: int) -> Tensor | None:
        """n random rows of x [N, D] (distinct while N allows), rank 0's when distributed; None if none."""
        N = x.shape[0]
        rows = None
        # only the rank whose rows are used draws: the random stream of the others does not depend
        # on whether the codebook was (re)started during their step
        if N > 0 and (not _distributed() or dist.get_rank() == 0):
            if N >= n:
                idx = torch.randperm(N, device=x.device)[:n]
            else:  # every frame once, then repeats
                idx = torch.cat([torch.randperm(N, device=x.device), torch.randint(N, (n - N,), device=x.device)])
            rows = x[idx]  # [n, D]
        if _distributed():
            ok = torch.tensor(float(rows is not None), device=self.embed.device)
            dist.broadcast(ok, src=0)
            if not bool(ok):
                return None
            if rows is None:
                rows = torch.zeros(n, self.dim, device=self.embed.device)
            rows = rows.to(self.embed.device, torch.float32).contiguous()
            dist.broadcast(rows, src=0)
        return rows

    @torch.no_grad()
    def _init_codebook(self, x: Tensor) -> None:
        rows = self._sample_frames(x, self.codebook_size)
        if rows is None:  # no valid frame yet: try again next step
            return
        self.embed.copy_(rows)
        self.embed_avg.copy_(rows)
        self.cluster_size.fill_(1.0)
        self.initted.fill_(True)

    @torch.no_grad()
    def _ema_update(self, x: Tensor, idx: Tensor) -> int:
        """EMA step from valid frames x [N, D] with codes idx [N]; returns the number of restarts."""
        K, D = self.codebook_size, self.dim
        counts = torch.bincount(idx, minlength=K).float()  # [K]
        sums = torch.zeros(K, D, device=x.device).index_add_(0, idx, x)  # [K, D]
        return self._apply_ema(counts, sums, x)

    # ---- several micro-batches per step ----
    # With gradient accumulation a step sees several forwards. ``accumulate = True`` makes the
    # codebook a function of the step, not of how its micro-batches are spread over the ranks:
    # every micro-batch of a step is coded with the same codebook, their counts and sums are added
    # up, and ``flush()`` (called once per optimiser step, on every rank) makes the one EMA update
    # and the restarts, drawing restart frames from the first micro-batch rank 0 saw. The frame sums
    # are kept in float64, so that adding the micro-batches in another order (another number of
    # ranks) rounds to the same float32 codebook: a codebook one ulp off would code a frame near a
    # tie differently, and the runs would drift apart.

    def _empty_pending(self, frames: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(counts [K], float64 sums [K, D], restart frames) before any micro-batch of a step."""
        K, D, dev = self.codebook_size, self.dim, frames.device
        return torch.zeros(K, device=dev), torch.zeros(K, D, device=dev, dtype=torch.float64), frames

    @torch.no_grad()
    def _collect(self, x: Tensor, idx: Tensor) -> None:
        if self._pending is None:  # the step's first micro-batch: its frames are the restart candidates
            self._pending = self._empty_pending(x.clone())
        counts, sums, _ = self._pending
        counts.add_(torch.bincount(idx, minlength=self.codebook_size).float())
        sums.index_add_(0, idx, x.double())

    @torch.no_grad()
    def flush(self) -> int:
        """Apply the EMA update of the micro-batches collected since the last flush (collective when
        distributed: every rank must call it). Returns the number of restarted entries."""
        # a rank that saw no training forward still joins the reduction, with nothing
        pending = self._pending or self._empty_pending(self.embed.new_zeros(0, self.dim))
        self._pending = None
        return self._apply_ema(*pending)

    @torch.no_grad()
    def _apply_ema(self, counts: Tensor, sums: Tensor, x: Tensor) -> int:
        """The EMA step from per-entry frame counts [K] and sums [K, D] (summed over the ranks here);
        restart frames are drawn from x [N, D] (rank 0's). Returns the number of restarts."""
        K, d = self.codebook_size, self.decay
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        sums = sums.float()
        if float(counts.sum()) == 0:  # no valid frame on any rank: nothing to learn from
            return 0
        self.cluster_size.mul_(d).add_(counts, alpha=1 - d)
        self.embed_avg.mul_(d).add_(sums, alpha=1 - d)
        self.usage_ema.mul_(d).add_(counts, alpha=1 - d)
        self.unused_frames.add_(counts.sum()).masked_fill_(counts > 0, 0.0)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + K * self.eps) * n  # [K], Laplace smoothing
        embed = self.embed_avg / smoothed[:, None]
        self.embed.copy_(F.normalize(embed, dim=-1) if self.normalize else embed)
        self.steps += 1
        if self.restart_every and int(self.steps) % self.restart_every == 0:
            return self._restart_dead(x)
        return 0

    def dead_entries(self) -> Tensor:
        """[K] bool: entries whose EMA count is below dead_threshold or, with dead_relative, that no
        frame chose among the last codebook_size / dead_relative frames."""
        dead = self.cluster_size < self.dead_threshold
        if self.dead_relative > 0:
            dead |= self.unused_frames > self.codebook_size / self.dead_relative
        return dead

    @torch.no_grad()
    def init_kmeans(self, frames: Tensor, iters: int = 10, seed: int = 0) -> dict[str, float]:
        """Codebook <- k-means centroids of ``frames`` [N, D] (encoder outputs, rank 0's when
        distributed, broadcast); EMA sums and counts restart from them. Returns the fit's stats."""
        x = frames.detach().float().to(self.embed.device)
        if self.normalize:
            x = F.normalize(x, dim=-1)
        stats = {}
        if not _distributed() or dist.get_rank() == 0:
            centroids, stats = kmeans(x, self.codebook_size, iters=iters, seed=seed, normalize=self.normalize)
        else:
            centroids = torch.zeros_like(self.embed)
        if _distributed():
            centroids = centroids.contiguous()
            dist.broadcast(centroids, src=0)
        self.embed.copy_(centroids)
        self.embed_avg.copy_(centroids)
        self.cluster_size.fill_(1.0)
        self.unused_frames.zero_()
        self.initted.fill_(True)
        return stats

    @torch.no_grad()
    def _restart_dead(self, x: Tensor) -> int:
        dead = self.dead_entries()  # [K], identical on every rank
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        rows = self._sample_frames(x, n_dead)  # [n_dead, D]
        if rows is None:
            return 0
        self.embed[dead] = rows
        self.embed_avg[dead] = rows
        self.cluster_size[dead] = 1.0
        self.unused_frames[dead] = 0.0
        return n_dead

    def _running_stats(self) -> dict[str, float]:
        """Codebook usage from the EMA counts: fraction of entries whose EMA count (without the
        init/restart credit) is >= dead_threshold, and exp entropy of the EMA count distribution."""
        u = self.usage_ema.double()
        total = float(u.sum())
        if total <= 0:
            return {"ema_usage": 0.0, "ema_perplexity": 0.0}
        p = u / total
        entropy = float(-(p * p.clamp(min=1e-300).log()).sum())
        usage = float((u >= max(self.dead_threshold, 1e-12)).double().mean())
        return {"ema_usage": usage, "ema_perplexity": math.exp(entropy)}

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, codebook_size={self.codebook_size}, decay={self.decay}, beta={self.beta}, "
            f"dead_threshold={self.dead_threshold}, dead_relative={self.dead_relative}, "
            f"restart_every={self.restart_every}"
        )


@torch.no_grad()
def nearest(x: Tensor, centroids: Tensor, rows: int = 256, fixed_shape: bool = False) -> Tensor:
    """x [N, D], centroids [K, D] -> index [N] of the nearest centroid (squared Euclidean),
    computed in chunks of ``rows`` frames so memory stays at rows x K; ``fixed_shape`` zero-pads
    every chunk to ``rows`` so each matmul has one shape whatever N."""
    e2 = centroids.pow(2).sum(dim=1)  # [K]; ||x||^2 is the same for every centroid
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for s in range(0, x.shape[0], rows):
        chunk = x[s : s + rows]
        n = chunk.shape[0]
        if fixed_shape:
            chunk = F.pad(chunk, (0, 0, 0, rows - n))
        out[s : s + n] = torch.addmm(e2, chunk, centroids.t(), alpha=-2.0).argmin(dim=1)[:n]
    return out


@torch.no_grad()
def kmeans(x: Tensor, k: int, iters: int = 10, seed: int = 0, normalize: bool = False) -> tuple[Tensor, dict]:
    """Lloyd's k-means: x [N, D] -> (centroids [k, D], stats). Starts from k-means++ seeds (each
    next seed drawn with probability proportional to its squared distance from the seeds so far;
    one pass over the frames per seed, about the cost of one Lloyd iteration); with N < k, from
    all frames and then random repeats with a little noise. A cluster left empty is re-seeded
    from a random frame. ``normalize``: centroids on the unit sphere (cosine VQ). Stats: frames,
    iterations, mean squared distance to the nearest centroid, share of centroids with a frame."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans needs frames [N, D] with N > 0, got {tuple(x.shape)}")
    g = torch.Generator(device="cpu").manual_seed(seed)
    n, d = x.shape
    x = x.float()
    if n >= k:
        c = torch.empty(k, d, device=x.device)
        c[0] = x[int(torch.randint(n, (1,), generator=g))]
        d2 = (x - c[0]).pow(2).sum(1)  # [N] squared distance to the nearest seed so far
        for i in range(1, k):
            w = d2.double().cpu()
            if float(w.sum()) > 0:
                j = int(torch.multinomial(w, 1, generator=g))
            else:  # every frame is already a seed's copy
                j = int(torch.randint(n, (1,), generator=g))
            c[i] = x[j]
            d2 = torch.minimum(d2, (x - c[i]).pow(2).sum(1))
    else:
        extra = torch.randint(n, (k - n,), generator=g).to(x.device)
        jitter = 1e-3 * x.std() * torch.randn(k - n, d, generator=g).to(x.device)
        c = torch.cat([x[torch.randperm(n, generator=g).to(x.device)], x[extra] + jitter])
    for _ in range(iters):
        idx = nearest(x, c)
        counts = torch.bincount(idx, minlength=k).float()
        sums = torch.zeros(k, d, device=x.device).index_add_(0, idx, x)
        empty = counts == 0
        c = torch.where(empty[:, None], c, sums / counts.clamp(min=1)[:, None])
        if bool(empty.any()):
            c[empty] = x[torch.randint(n, (int(empty.sum()),), generator=g).to(x.device)]
        if normalize:
            c = F.normalize(c, dim=-1)
    idx = nearest(x, c)
    dist2 = (x - c[idx]).pow(2).sum(dim=1).mean()
    used = torch.bincount(idx, minlength=k) > 0
    return c, {"frames": n, "iterations": iters, "mse": float(dist2), "used": float(used.float().mean())}
