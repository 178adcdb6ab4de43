"""ODE samplers for the flow-matching decoder."""

from __future__ import annotations

from collections.abc import Callable

import torch


@torch.no_grad()
def euler_sample(
    velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    steps: int = 16,
    prompt: torch.Tensor | None = None,
    prompt_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integrate dx/dt = v(x_t, t) from t = 0 (``noise``) to t = 1 with ``steps`` Euler steps.

    ``prompt`` [B, T, D] with ``prompt_mask`` [B, T] (True = known frame) keeps those frames on
    the straight path t * prompt + (1 - t) * noise, so the result reproduces them exactly.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x, b, dt = noise, noise.shape[0], 1.0 / steps
    keep = None if prompt is None else prompt_mask.unsqueeze(-1).to(noise.dtype)
    for i in range(steps):
        t = torch.full((b,), i * dt, device=noise.device, dtype=noise.dtype)
        if keep is not None:
            x = keep * (t.view(-1, 1, 1) * prompt + (1 - t.view(-1, 1, 1)) * noise) + (1 - keep) * x
        x = x + dt * velocity_fn(x, t)
    if keep is not None:
        x = keep * prompt + (1 - keep) * x
    return x
