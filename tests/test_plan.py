"""The time budget planned in optimiser steps (sitok.train.plan), on a real SpeechBrain Brain with a
clock that advances with the steps trained (validation takes no time): 40 steps per epoch, 6 s per
step unless a test slows the machine down."""

import pytest
import speechbrain as sb
import torch

import sitok.train.plan as plan_module
from sitok.train.checkpoints import AtomicCheckpointer
from sitok.train.plan import StepPlan, StepPlanned

STEPS_PER_EPOCH, VALID_BATCHES = 40, 10


class Toy(StepPlanned, sb.Brain):
    def compute_forward(self, batch, stage):
        x, _ = batch
        return self.modules.lin(x.to(self.device))

    def compute_objectives(self, pred, batch, stage):
        return ((pred - batch[1].to(self.device)) ** 2).mean()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.VALID:
            self.plan(epoch)
            self.checkpointer.save_and_keep_only(meta={"loss": stage_loss}, min_keys=["loss"])


def _run(tmp_path, minutes, epochs=20, seconds_per_step=lambda step: 6.0 * step):
    """Fit the toy under ``minutes`` of budget; the clock reads ``seconds_per_step(optimizer_step)``."""
    torch.manual_seed(0)
    x = torch.randn(STEPS_PER_EPOCH, 1, 3)
    train = [(x[i], x[i].sum(-1, keepdim=True)) for i in range(STEPS_PER_EPOCH)]
    valid = train[:VALID_BATCHES]
    counter = sb.utils.epoch_loop.EpochCounter(epochs)
    lin = torch.nn.Linear(3, 1)
    plan = StepPlan(epochs * STEPS_PER_EPOCH)
    ckpt = AtomicCheckpointer(tmp_path / "save", recoverables={"lin": lin, "counter": counter, "plan": plan})
    hparams = {"max_train_minutes": minutes, "epoch_counter": counter}
    brain = Toy({"lin": lin}, lambda p: torch.optim.SGD(p, lr=0.01), hparams, {"device": "cpu"}, ckpt)
    brain.t_start, brain.batches_per_epoch, brain.valid_batches, brain.step_plan = 0.0, STEPS_PER_EPOCH, 10, plan
    plan_module._now = lambda: seconds_per_step(brain.optimizer_step)
    brain.fit(counter, train, valid, train_loader_kwargs={"batch_size": None}, valid_loader_kwargs={"batch_size": None})
    return brain


@pytest.fixture(autouse=True)
def _real_clock_afterwards():
    yield
    plan_module._now = lambda: plan_module.time.time()


def test_a_first_epoch_longer_than_the_budget_stops_part_way_and_stays_stopped(tmp_path):
    # at step 2 (5 % of 40): 6 s per step, the epoch would end at 12 + 38 x 6 + a validation of
    # 10 batches x 6 s / 3 = 260 s > 120 s: (120 - 12 - 20) / 6 = 14 more steps -> 16 planned
    brain = _run(tmp_path, minutes=2)
    assert brain.step_plan.planned and brain.step_plan.steps == 16
    assert brain.optimizer_step == 16 and brain.hparams.epoch_counter.current == 1
    # a rerun resumes the saved plan (not the fresh 800-step one) and trains nothing more
    again = _run(tmp_path, minutes=2)
    assert again.step_plan.planned and again.step_plan.steps == 16 and again.optimizer_step == 16


def test_the_plan_after_the_first_epoch_ends_the_last_epoch_part_way(tmp_path):
    # the first epoch fits (260 s < 600 s); after it: 240 s per epoch, 360 s left -> 60 more steps
    brain = _run(tmp_path, minutes=10)
    assert brain.step_plan.steps == 100 and brain.optimizer_step == 100
    assert brain.hparams.epoch_counter.current == 3  # the third epoch stopped half-way


def test_a_machine_that_slows_down_shrinks_the_plan_within_the_epoch(tmp_path):
    # planned as above (100 steps); then 12 s per step. Windows are 2 steps; the window 40-42
    # spans the validation (not timed); 42-44 is slow but the one before was not; 44-46 makes
    # two slow windows in a row: at 312 s, 54 steps x 12 s + 2 validations x the 6 s measured
    # between epochs 1 and 2 would end at 972 s > 612 s -> (600 - 312 - 12) / 12 = 23 more steps
    clock = lambda s: 6.0 * s if s <= 40 else 240 + 12.0 * (s - 40)  # noqa: E731
    brain = _run(tmp_path, minutes=10, seconds_per_step=clock)
    assert brain.step_plan.steps == 69 and brain.optimizer_step == 69
    assert brain.hparams.epoch_counter.current == 2 and clock(69) <= 600  # the whole-epoch check overran: 720 s


def test_one_slow_window_is_not_taken_for_the_new_pace(tmp_path):
    # 11 min: 110 steps planned after epoch 1. A hiccup (60 s per step at steps 51-52) costs 108 s
    # that the plan must give back, at the pace of the window before it (6 s per step), not at the
    # hiccup's: at step 52 (420 s) the 58 steps left would end at 768 s > 673 s ->
    # (660 - 420) / 6 = 40 more steps (at 60 s per step it would have kept 4)
    clock = lambda s: 6.0 * s + (108.0 if s > 52 else 54.0 * (s - 50) if s > 50 else 0.0)  # noqa: E731
    brain = _run(tmp_path, minutes=11, seconds_per_step=clock)
    assert brain.step_plan.steps == 92 and brain.optimizer_step == 92 and clock(92) <= 660


def test_no_budget_trains_every_epoch(tmp_path):
    brain = _run(tmp_path, minutes=0, epochs=2)
    assert not brain.step_plan.planned and brain.optimizer_step == 2 * STEPS_PER_EPOCH


def test_every_time_capped_loop_uses_the_step_plan():
    from sitok.lm.brain import SpeechLMBrain
    from sitok.probes.brain import ClassifierProbe, CTCProbe
    from sitok.train.vocoder import VocoderBrain

    assert all(issubclass(c, StepPlanned) for c in (SpeechLMBrain, ClassifierProbe, CTCProbe, VocoderBrain))
