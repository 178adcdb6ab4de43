"""A time budget planned in optimiser steps, for SpeechBrain Brains (the LLM-ASR / AR-TTS loop,
the probes and the vocoder).

``max_train_minutes`` becomes a number of optimiser steps, never more than ``number_of_epochs``
whole epochs:

* early in the first epoch (after ``plan_check_fraction`` of its steps): if the epoch would not
  end within the budget, the steps that fit are planned now from the time per step, keeping time
  for one validation pass;
* otherwise after the first epoch, its validation included: the steps that fit the rest of the
  budget;
* while the plan runs, every ``plan_check_fraction`` of an epoch: if the steps of the last two
  such windows were slower than planned (a machine that slowed down) and the rest of the plan
  (with the time measured between epochs for each validation left) would overrun the budget by
  more than ``replan_tolerance``, the plan shrinks to what still fits;
* after each later epoch the same check (or, where no window was timed, stop if the rest of the
  plan at the epochs' mean pace no longer fits).

Brain's ``optimizer_step_limit`` ends the last epoch part-way, so an epoch longer than the budget
leaves none of it unused and overruns none of it. The plan is a recoverable of the checkpointer,
so a resumed run keeps it. Under torchrun the main process decides and the others follow, so every
rank stops at the same step.
"""

from __future__ import annotations

import logging
import math
import time

import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

from sitok.train.checkpoints import forget_unsaved_epochs, use_weights_only_loaders

logger = logging.getLogger(__name__)


def _now() -> float:
    """The clock the budget is measured with (a test can replace it)."""
    return time.time()


@register_checkpoint_hooks
class StepPlan:
    """The optimiser steps planned for a run: ``steps`` (whole epochs) until the budget has been
    timed, then what fits it (``planned``). Saved with the checkpoints."""

    def __init__(self, steps: int):
        self.steps, self.planned = int(steps), False

    @mark_as_saver
    def save(self, path):
        torch.save({"steps": self.steps, "planned": self.planned}, path)

    @mark_as_loader
    def load(self, path, end_of_epoch=True):
        state = torch.load(path, weights_only=True)
        self.steps, self.planned = int(state["steps"]), bool(state["planned"])


class StepPlanned:
    """Brain mixin (before ``sb.Brain`` in the bases). Before ``fit`` the caller calls
    :meth:`set_plan`; the hparams hold ``max_train_minutes`` (0: no budget) and ``epoch_counter``.
    A subclass calls :meth:`plan` at the end of each validation."""

    plan_check_fraction = 0.05  # share of an epoch timed before judging whether the plan fits
    valid_step_cost = 1 / 3  # a validation batch costs about a third of a training step (no backward pass)
    replan_tolerance = 0.02  # share of the budget a running plan may be projected to overrun before it shrinks

    def set_plan(self, t_start: float, batches_per_epoch: int, valid_batches: int, epochs: int) -> None:
        """What the plan needs, set before ``fit``: the run's start (the budget counts from it), this
        process's training and validation batches per epoch, and a plan of ``epochs`` whole epochs,
        registered with the checkpointer so that a resumed run keeps it (older checkpoints have none)."""
        self.t_start, self.batches_per_epoch, self.valid_batches = t_start, batches_per_epoch, valid_batches
        self.step_plan = StepPlan(epochs * batches_per_epoch)
        self.checkpointer.add_recoverable("plan", self.step_plan, optional_load=True)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.batches_per_epoch / max(1, self.grad_accumulation_factor)))

    def budget_seconds(self) -> float:
        return 60 * float(getattr(self.hparams, "max_train_minutes", 0) or 0)

    def on_fit_start(self):
        use_weights_only_loaders()  # checkpoints are read as data, never unpickled objects
        super().on_fit_start()  # recovers the last checkpoint, the plan with it
        forget_unsaved_epochs(self)
        if self.step_plan.planned:
            self.apply_plan()
        self.t_fit, self.first_epoch, self.fit_step = (
            _now(),
            self.hparams.epoch_counter.current + 1,
            self.optimizer_step,
        )
        self._window = None  # (time, optimiser step, epoch) where the steps being timed began
        self._last_step = None  # (time, epoch) of the last optimiser step
        self._paces = []  # seconds per step over the last two timed windows
        self._epoch_gap = None  # seconds between the last step of an epoch and the first of the next

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        super().on_fit_batch_end(batch, outputs, loss, should_step)
        if not should_step or not self.budget_seconds():
            return
        now, epoch = _now(), self.hparams.epoch_counter.current
        if self._last_step is not None and self._last_step[1] != epoch and self._paces:
            # validation, checkpointing and the loader's start, measured rather than guessed
            self._epoch_gap = max(0.0, now - self._last_step[0] - self._paces[-1])
        self._last_step = (now, epoch)
        check_at = max(2, math.ceil(self.plan_check_fraction * self.steps_per_epoch))
        done = self.optimizer_step - self.fit_step
        if done % check_at:
            return
        window, self._window = self._window, (now, self.optimizer_step, epoch)
        timed = window is not None and window[2] == epoch  # a window across a validation pass is not timed
        if timed:
            self._paces = self._paces[-1:] + [(now - window[0]) / (self.optimizer_step - window[1])]
        if not self.step_plan.planned:
            if self.first_epoch == 1 and done == check_at:
                self.plan_within_first_epoch()
        elif timed and self.pace() is not None:
            self.replan_if_slower(self.pace())

    def pace(self) -> float | None:
        """Seconds per step now: the faster of the last two timed windows, so that one slow window
        (a checkpoint written, a moment of load) is not taken for the machine's new pace."""
        return min(self._paces) if len(self._paces) == 2 else None

    def plan_within_first_epoch(self) -> None:
        """The first epoch has run ``plan_check_fraction`` of its steps: if it cannot end within the
        budget, plan the steps that fit (one validation pass kept) now."""
        now = _now()
        done = self.optimizer_step - self.fit_step
        per_step = (now - self.t_fit) / done
        elapsed = now - self.t_start
        valid = self.valid_batches * per_step * self.valid_step_cost
        epoch_end = elapsed + (self.steps_per_epoch - self.optimizer_step) * per_step + valid
        fit = None
        if epoch_end > self.budget_seconds():
            fit = self.optimizer_step + max(0, int((self.budget_seconds() - elapsed - valid) / per_step))
        fit = sb.utils.distributed.ddp_broadcast(fit)  # every rank reaches this step: the main process decides
        if fit is None:
            return
        self.step_plan.steps, self.step_plan.planned = min(self.step_plan.steps, fit), True
        self.apply_plan()
        msg = "%.2f s per step: the first epoch (%d steps) would outlast max_train_minutes=%g: %d steps planned"
        logger.info(msg, per_step, self.steps_per_epoch, self.budget_seconds() / 60, self.step_plan.steps)

    def replan_if_slower(self, per_step: float, validated: bool = False) -> None:
        """The plan is running at ``per_step`` seconds per step: if the rest of the plan (the
        validation passes left included; ``validated``: the current epoch's is done) would now
        overrun the budget by more than ``replan_tolerance``, keep only the steps that fit. A plan
        only ever shrinks here."""
        plan, n = self.step_plan, self.steps_per_epoch
        elapsed = _now() - self.t_start
        validations = max(0, -(-plan.steps // n) - self.hparams.epoch_counter.current + (0 if validated else 1))
        gap = self._epoch_gap
        valid = validations * (gap if gap is not None else self.valid_batches * per_step * self.valid_step_cost)
        end = elapsed + (plan.steps - self.optimizer_step) * per_step + valid
        fit = None
        if end > (1 + self.replan_tolerance) * self.budget_seconds():
            fit = self.optimizer_step + max(0, int((self.budget_seconds() - elapsed - valid) / per_step))
        fit = sb.utils.distributed.ddp_broadcast(fit)
        if fit is None or fit >= plan.steps:
            return
        logger.info(
            "%.2f s per step now: the %d steps planned would end at %.1f min > max_train_minutes=%g: %d steps",
            per_step,
            plan.steps,
            end / 60,
            self.budget_seconds() / 60,
            fit,
        )
        plan.steps = fit
        self.apply_plan()

    def plan(self, epoch: int) -> None:
        """At the end of an epoch's validation: after the first timed epoch the steps that fit the
        budget (Brain's step limit; the last epoch stops part-way); after later epochs, stop early if
        the rest of the plan no longer fits."""
        if not self.budget_seconds():
            return
        now = _now()
        elapsed = now - self.t_start
        per_epoch = (now - self.t_fit) / max(1, epoch - self.first_epoch + 1)
        plan, n = self.step_plan, self.steps_per_epoch
        if not plan.planned:
            fit = self.optimizer_step + max(0, int((self.budget_seconds() - elapsed) / per_epoch * n))
            fit = sb.utils.distributed.ddp_broadcast(fit)
            plan.planned = True
            if fit < plan.steps:
                plan.steps = fit
                self.apply_plan()
                msg = "%.1f min per epoch: %d steps (%.2f epochs) fit max_train_minutes=%g"
                logger.info(msg, per_epoch / 60, fit, fit / n, self.budget_seconds() / 60)
            return
        if self.pace() is not None:  # the pace of the last windows, not the epochs' mean
            self.replan_if_slower(self.pace(), validated=True)
            return
        left = per_epoch * min(1.0, (plan.steps - self.optimizer_step) / n)
        stop = self.optimizer_step < plan.steps and elapsed + left > self.budget_seconds()
        if sb.utils.distributed.ddp_broadcast(stop):
            logger.info("max_train_minutes=%g: stopping after epoch %d", self.budget_seconds() / 60, epoch)
            self.hparams.epoch_counter.limit = epoch

    def apply_plan(self) -> None:
        """The planned steps as Brain's step limit and the epochs they span."""
        self.optimizer_step_limit = self.step_plan.steps
        epochs = -(-self.step_plan.steps // self.steps_per_epoch)
        self.hparams.epoch_counter.limit = min(self.hparams.epoch_counter.limit, max(1, epochs))
