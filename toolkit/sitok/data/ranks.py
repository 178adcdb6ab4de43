"""Which process of a multi-process job this is: the rank and world size that split data among
processes (dump-codes parts, WebDataset shards)."""

from __future__ import annotations

import os


def process_rank(who: str, rank: int | None = None, world_size: int | None = None) -> tuple[int, int, bool]:
    """(rank, world size, whether a torch.distributed process group is initialised): ``rank`` and
    ``world_size`` when both are given, else the process group's when there is one, else RANK /
    WORLD_SIZE as torchrun sets them, else (0, 1). ``who`` names the caller in errors."""
    import torch.distributed as dist

    group = dist.is_available() and dist.is_initialized()
    if rank is not None and world_size is not None:
        r, w = int(rank), int(world_size)
    elif group:
        r, w = dist.get_rank(), dist.get_world_size()
    else:
        try:
            r, w = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        except ValueError:
            raise ValueError(
                f"{who}: RANK={os.environ.get('RANK')!r} WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} "
                "are not integers (torchrun sets them; unset both for one process)"
            ) from None
    if not 0 <= r < w:
        raise ValueError(f"{who}: rank {r} is outside world size {w} (unset RANK and WORLD_SIZE for one process)")
    return r, w, group


# ---- a fixed number of micro-batches per optimiser step ------------------------------------------
# With ``micro_batches`` = M per step, step s of an epoch trains on the epoch's micro-batches
# s*M .. s*M + M - 1, whatever the number of processes W: process r takes micro-batches
# r, r + W, r + 2W, ... of each step (M / W of them, gradients accumulated), so changing W changes
# who computes what, not what is computed. Micro-batch j of a step is the "stream" j; stream j is
# always on process j mod W.


def micro_batch_layout(micro_batches: int, rank: int, world_size: int) -> list[int]:
    """The streams (micro-batch positions within a step) process ``rank`` computes, in order."""
    if micro_batches < 1 or micro_batches % world_size:
        raise ValueError(
            f"micro_batches_per_step={micro_batches} must be a positive multiple of the number of "
            f"processes ({world_size}): every process accumulates the same number of micro-batches"
        )
    return list(range(rank, micro_batches, world_size))


class MicroBatchSampler:
    """A batch sampler (SpeechBrain's DynamicBatchSampler or any iterable of index lists with
    ``set_epoch``) cut into steps of ``micro_batches`` batches; yields this process's share of every
    step (:func:`micro_batch_layout`) and leaves out the last ``len % micro_batches`` batches of the
    epoch. ``len()`` is this process's batches per epoch."""

    def __init__(self, batch_sampler, micro_batches: int, rank: int | None = None, world_size: int | None = None):
        self.sampler, self.micro_batches = batch_sampler, int(micro_batches)
        self.rank, self.world_size, _ = process_rank("MicroBatchSampler", rank, world_size)
        self.streams = micro_batch_layout(self.micro_batches, self.rank, self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    @property
    def steps(self) -> int:
        """Optimiser steps per epoch."""
        return len(self.sampler) // self.micro_batches

    def __len__(self) -> int:
        return self.steps * len(self.streams)

    def __iter__(self):
        batches = list(self.sampler)
        for s in range(self.steps):
            for j in self.streams:
                yield batches[s * self.micro_batches + j]
