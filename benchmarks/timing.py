"""Shared timing helper of the benchmarks (they print figures; tests never assert on time)."""

from __future__ import annotations

import sys
import time


def _sync() -> None:
    """Wait for queued GPU work, so a CUDA timing covers the kernels and not only their launch."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def best_time(fn, repeats: int = 3, warmup: int = 1) -> float:
    """Best wall-clock seconds of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs
    (GPU work is synchronised before and after each timed run)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        best = min(best, time.perf_counter() - t0)
    return best
