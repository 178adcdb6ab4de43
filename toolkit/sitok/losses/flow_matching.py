"""Conditional flow matching (rectified flow), the decoder's training objective.

    x_t = t * x + (1 - t) * eps,   eps ~ N(0, I),   t ~ U(0, 1)
    target velocity v = x - eps
    loss = || v_theta(x_t, t, cond) - v ||_1  (or squared), averaged over valid frames

Inference integrates dx/dt = v_theta from t = 0 (noise) to t = 1 (data).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def masked_mean(err: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``err`` [B, T, D] over valid frames (mask [B, T], True = valid)."""
    if mask is None:
        return err.mean()
    m = mask.unsqueeze(-1).to(err.dtype)
    return (err * m).sum() / (m.sum() * err.shape[-1]).clamp_min(1.0)


def reconstruction_error(pred: torch.Tensor, target: torch.Tensor, mask=None, kind: str = "l1") -> torch.Tensor:
    if kind not in ("l1", "l2"):
        raise ValueError(f"unknown loss kind {kind!r} (l1|l2)")
    return masked_mean((pred - target).abs() if kind == "l1" else (pred - target).pow(2), mask)


def interpolate(x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = t x + (1 - t) eps, with t [B] broadcast over [B, T, D]."""
    t = t.view(-1, *([1] * (x.dim() - 1)))
    return t * x + (1.0 - t) * eps


def flow_matching_loss(
    velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    kind: str = "l1",
    t: torch.Tensor | None = None,
    eps: torch.Tensor | None = None,
    prediction: str = "velocity",
) -> torch.Tensor:
    """Flow-matching loss of ``velocity_fn(x_t, t)`` on data ``x`` [B, T, D].

    ``prediction="velocity"``: the network predicts v and is scored against x - eps (default).
    ``prediction="x"``: the network predicts the clean x (v = (x_hat - x_t) / (1 - t) at
    sampling time) and is scored in x space, i.e. the velocity loss weighted by (1 - t).
    """
    b = x.shape[0]
    t = torch.rand(b, device=x.device, dtype=x.dtype) if t is None else t
    eps = torch.randn_like(x) if eps is None else eps
    x_t = interpolate(x, eps, t)
    target = {"velocity": x - eps, "x": x}[prediction]
    return reconstruction_error(velocity_fn(x_t, t), target, mask, kind)
