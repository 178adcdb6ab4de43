"""The training loop shared by the LLM-ASR and AR-TTS recipes: a SpeechBrain Brain around a model
whose forward returns ``{"loss", "tokens", "correct"}``.

* two parameter groups: the speech side (parameters named ``speech_*``: tables, projections, the
  speech encoder, the speech head) at ``speech_lr``, the LM (or its LoRA adapters) at ``lr``;
* linear warm-up over ``warmup_steps``, then linear decay to ``lr_final_factor`` at the last
  planned step; the run is planned in steps to fit ``max_train_minutes`` (``sitok.train.plan``:
  early in the first epoch if that epoch would outlast the budget, else after it; the last epoch
  may stop part-way), so the decay ends when the budget does; the plan is saved with the checkpoints;
* checkpoints every ``ckpt_interval_minutes`` and at each epoch's end (the best validation loss
  kept), so a killed run resumes where it stopped; DDP under ``torchrun``, or FSDP2 with
  ``distributed_strategy: fsdp`` (the backbone's decoder layers sharded, DCP checkpoints);
* batches of similar length packed to ``max_batch_positions`` LM positions by SpeechBrain's
  DynamicBatchSampler (``length_batches``).
"""

from __future__ import annotations

import logging
import math
import time

import speechbrain as sb
import torch

from sitok.data.kaldi import allow_pipes
from sitok.probes.data import durations, train_set_names
from sitok.train.checkpoints import AtomicCheckpointer
from sitok.train.distributed import StrategyBrainMixin, full_model_state, is_sharded, leave_process_group, unwrapped
from sitok.train.plan import StepPlanned

logger = logging.getLogger(__name__)


class SpeechLMBrain(StepPlanned, StrategyBrainMixin, sb.Brain):
    """Subclasses define ``compute_forward`` (batch -> the model's output dict). Before ``fit`` the
    caller sets ``train_batches`` (the sampler) and calls ``set_plan``: the time budget is planned
    in steps by :class:`StepPlanned`."""

    @property
    def model(self):
        m = self.modules.model
        return unwrapped(m)

    def init_optimizers(self):
        speech, lm = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (speech if name.startswith("speech_") else lm).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": speech, "lr": self.hparams.speech_lr}, {"params": lm, "lr": self.hparams.lr}],
            weight_decay=self.hparams.weight_decay,
        )
        self.optimizers_dict = {"opt_class": self.optimizer}
        self.base_lrs = [self.hparams.speech_lr, self.hparams.lr]
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)
        self.use_sharded_checkpoints()

    def fsdp_blocks(self, module):
        """FSDP units: the backbone's decoder layers (one class for a Hugging Face causal LM)."""
        return tuple({type(layer) for layer in self.model.lm.get_decoder().layers})

    def fsdp_checkpointing(self, module) -> bool:
        return bool(self.model.lm.is_gradient_checkpointing)

    def compute_objectives(self, out, batch, stage):
        self.tokens += out["tokens"]
        self.correct += out["correct"]
        return out["loss"]

    def on_fit_batch_start(self, batch, should_step):
        step, total = self.optimizer_step, max(1, self.step_plan.steps)
        warm = self.hparams.warmup_steps
        if step < warm:
            f = (step + 1) / warm
        else:
            f = 1 - (1 - self.hparams.lr_final_factor) * min(1.0, (step - warm) / max(1, total - warm))
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def on_stage_start(self, stage, epoch=None):
        self.tokens, self.correct, self.t_stage = 0, 0, time.time()
        if stage == sb.Stage.TRAIN and epoch is not None:  # the epoch's batches, also in a resumed run
            self.train_batches.set_epoch(epoch)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        stats = {"loss": stage_loss, "token_accuracy": self.correct / max(1, self.tokens)}
        if stage == sb.Stage.TRAIN:
            self.train_stats = {**stats, "minutes": (time.time() - self.t_start) / 60}
            return
        if stage == sb.Stage.VALID:
            self.plan(epoch)
            lr = self.optimizer.param_groups[1]["lr"]
            self.hparams.train_logger.log_stats(
                {"epoch": epoch, "lr": lr, "step": self.optimizer_step}, self.train_stats, stats
            )
            self.checkpointer.save_and_keep_only(meta={"loss": stage_loss}, min_keys=["loss"])

    def on_fit_start(self):
        if getattr(self.hparams, "activation_checkpointing", False):  # recompute each layer in the backward pass
            self.model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            logger.info("activation checkpointing: the backbone's layers are recomputed in the backward pass")
        super().on_fit_start()  # StepPlanned: recovers the last checkpoint, the plan with it


def length_batches(hparams: dict, items, rate: float, shuffle: bool, dur: dict | None = None):
    """SpeechBrain's DynamicBatchSampler over ``items``: batches of similar length holding up to
    ``max_batch_positions`` LM positions, estimated from each utterance's duration (speech at
    ``rate`` positions per second, then ``text_positions_per_second`` for the text); ``dur``: the
    durations (default: the utt2dur of the training sets)."""
    from speechbrain.dataio.sampler import DynamicBatchSampler

    names = train_set_names(hparams)
    dur = dur if dur is not None else durations(hparams["dump_dir"], names)
    missing = [u for u in items if u not in dur]
    if missing:
        where = ", ".join(f"{hparams['dump_dir']}/{n}/utt2dur" for n in names)
        raise ValueError(f"{where}: no duration for {missing[:3]}")
    return DynamicBatchSampler(
        list(items),
        max_batch_length=hparams["max_batch_positions"],
        num_buckets=hparams["num_buckets"],
        lengths_list=[dur[u] * (rate + hparams["text_positions_per_second"]) for u in items],
        shuffle=shuffle,
        batch_ordering="random" if shuffle else "ascending",
        seed=hparams["seed"],
    )


def start_run(argv: list[str]) -> tuple[dict, dict, float]:
    """(hparams, run_opts, start time) of a recipe's command line: the hparams file with its
    overrides, the DDP group joined under torchrun, the experiment directory created."""
    from hyperpyyaml import load_hyperpyyaml

    t0 = time.time()
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    with open(hparams_file, encoding="utf-8") as fh:
        hparams = load_hyperpyyaml(fh, overrides)
    sb.utils.distributed.ddp_init_group(run_opts)  # under torchrun: one process per rank
    sb.create_experiment_directory(
        experiment_directory=hparams["exp_dir"], hyperparams_to_save=hparams_file, overrides=overrides
    )
    if hparams.get("allow_pipes"):
        allow_pipes(True)
    return hparams, run_opts, t0


def train(brain_class, model, hparams: dict, run_opts: dict, t0: float, train_set, valid_set, sampler):
    """Fit ``model`` with a ``brain_class`` (a SpeechLMBrain) on ``train_set`` batched by ``sampler``,
    validate on ``valid_set``; the best checkpoint (lowest validation loss) is loaded at the end.
    Returns the brain."""
    checkpointer = AtomicCheckpointer(
        hparams["save_folder"], recoverables={"model": model, "counter": hparams["epoch_counter"]}
    )
    brain = brain_class(modules={"model": model}, hparams=hparams, run_opts=run_opts, checkpointer=checkpointer)
    brain.train_batches = sampler
    brain.set_plan(
        t0,
        batches_per_epoch=len(sampler),
        valid_batches=math.ceil(len(valid_set) / hparams["decode_batch_size"]),
        epochs=hparams["number_of_epochs"],
    )
    brain.fit(
        hparams["epoch_counter"],
        train_set,
        valid_set,
        train_loader_kwargs={"batch_sampler": sampler, "num_workers": 0},
        valid_loader_kwargs={"batch_size": hparams["decode_batch_size"], "num_workers": 0},
    )
    checkpointer.recover_if_possible(min_key="loss")
    return brain


def trained_model(brain, out_dir: str):
    """The main process's copy of the trained model after ``train``, also written to ``out_dir``
    (None on the other processes). Under FSDP the weights are gathered from every rank first (a
    collective: every process calls this) and the model is read back whole from ``out_dir``."""
    model = brain.model
    state = full_model_state(model, rank0_only=True) if is_sharded(model) else None
    if not leave_process_group():  # the last collective: the main process decodes and judges alone
        return None
    model.save(out_dir, state=state)
    if state is not None:
        model = type(model).load(out_dir).to(brain.device)
        brain.modules["model"] = model
    return model
