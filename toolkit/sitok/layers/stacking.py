"""Frame stacking (50 Hz mel -> 12.5 Hz tokens) and padding masks."""

from __future__ import annotations

import torch


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """[B] lengths -> [B, T] bool, True on valid frames."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def stacked_lengths(lengths: torch.Tensor, factor: int) -> torch.Tensor:
    """Frames after stacking: ceil(length / factor)."""
    return torch.div(lengths + factor - 1, factor, rounding_mode="floor")


def stack_frames(x: torch.Tensor, factor: int) -> torch.Tensor:
    """[B, T, D] -> [B, ceil(T / factor), factor * D]; the tail is zero-padded.

    Stacked frame k holds frames k*factor .. k*factor + factor - 1, concatenated in time order.
    """
    b, t, d = x.shape
    pad = (-t) % factor
    if pad:
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
    return x.reshape(b, (t + pad) // factor, factor * d)


def unstack_frames(y: torch.Tensor, factor: int, length: int | None = None) -> torch.Tensor:
    """Inverse of :func:`stack_frames`: [B, T', factor * D] -> [B, T' * factor, D] (cut to ``length``)."""
    b, t, fd = y.shape
    x = y.reshape(b, t * factor, fd // factor)
    return x if length is None else x[:, :length]
