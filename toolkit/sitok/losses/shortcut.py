"""Shortcut-model fine-tuning objective (Frans et al. 2024; SiTok paper section 2.3).

The decoder s(x_t, t, d) also sees the step size d. Training mixes two kinds of rows per batch:

    flow rows (7/8):      d = 1/128 (stands in for d = 0), t on the 1/128 grid
                          s(x_t, t, d) -> x - eps                       (flow matching)
    bootstrap rows (1/8): big step 2h = 1/2^k, k ~ U{0..6}, t on the 2h grid
                          v1 = s'(x_t, t, h);  v2 = s'(x_t + h v1, t + h, h)
                          s(x_t, t, 2h) -> stopgrad((v1 + v2) / 2)      (self-consistency)

s' is the teacher: an EMA copy of the decoder (or the live one, without gradients). N-step
sampling then uses d = 1/N. With x-prediction (``prediction="x"``) the network outputs x_hat,
its velocity is (x_hat - x_t) / (1 - t), and targets are compared in x space,
x_target = x_t + (1 - t) v_target, like the base flow-matching loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from sitok.losses.flow_matching import interpolate, masked_mean

# fn(x_t [R, T, D], t [R], d [R], rows: slice) -> network output [R, T, D] (velocity or x_hat)
ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, slice], torch.Tensor]


def _bcast(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1, 1, 1)


def to_velocity(out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction: str) -> torch.Tensor:
    if prediction == "velocity":
        return out
    return (out - x_t) / _bcast(1.0 - t).clamp_min(1e-3)


def from_velocity(v: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction: str) -> torch.Tensor:
    if prediction == "velocity":
        return v
    return x_t + _bcast(1.0 - t) * v


@torch.no_grad()
def bootstrap_target(teacher: ModelFn, x_t, t, d, rows: slice, prediction: str = "velocity") -> torch.Tensor:
    """Self-consistency target for a step of size ``d`` [R] at ``t`` [R]: the average velocity of
    two teacher steps of size d/2, returned in the network's prediction space."""
    h = d / 2
    v1 = to_velocity(teacher(x_t, t, h, rows), x_t, t, prediction)
    x_mid = x_t + _bcast(h) * v1
    v2 = to_velocity(teacher(x_mid, t + h, h, rows), x_mid, t + h, prediction)
    return from_velocity((v1 + v2) / 2, x_t, t, prediction)


def shortcut_loss(
    student: ModelFn,
    teacher: ModelFn,
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    kind: str = "l2",
    prediction: str = "velocity",
    base_steps: int = 128,
    bootstrap_every: int = 8,
) -> dict:
    """Shortcut loss on data ``x`` [B, T, D]. Returns {"loss", "fm", "sc", "bootstrap_rows"}.

    The first max(1, B // bootstrap_every) rows (when B >= 2) are bootstrap rows, the rest flow
    rows; the student runs once on the whole batch.
    """
    b = x.shape[0]
    nb = 0 if b < 2 else max(1, b // bootstrap_every)
    levels = int(math.log2(base_steps))
    dev, dt = x.device, x.dtype
    eps = torch.randn_like(x)
    # flow rows: t on the base grid, d = 1/base_steps
    t = torch.randint(0, base_steps, (b,), device=dev).to(dt) / base_steps
    d = torch.full((b,), 1.0 / base_steps, device=dev, dtype=dt)
    if nb:
        k = torch.randint(0, levels, (nb,), device=dev)  # big step 1/2^k, k = 0..levels-1
        sections = (2**k).to(dt)
        d[:nb] = 1.0 / sections
        t[:nb] = torch.floor(torch.rand(nb, device=dev, dtype=dt) * sections) / sections
    x_t = interpolate(x, eps, t)
    target = (x - eps) if prediction == "velocity" else x.clone()
    if prediction not in ("velocity", "x"):
        raise ValueError(f"prediction must be velocity|x, got {prediction!r}")
    if nb:
        target[:nb] = bootstrap_target(teacher, x_t[:nb], t[:nb], d[:nb], slice(0, nb), prediction)
    out = student(x_t, t, d, slice(0, b))
    err = (out - target).abs() if kind == "l1" else (out - target).pow(2)
    if kind not in ("l1", "l2"):
        raise ValueError(f"unknown loss kind {kind!r} (l1|l2)")
    m = mask if mask is not None else torch.ones(x.shape[:2], dtype=torch.bool, device=dev)
    parts = {"loss": masked_mean(err, m), "bootstrap_rows": nb}
    parts["fm"] = masked_mean(err[nb:], m[nb:]).detach()
    parts["sc"] = masked_mean(err[:nb], m[:nb]).detach() if nb else torch.zeros((), device=dev)
    return parts
