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
