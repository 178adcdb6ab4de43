"""Tokenizer training on SpeechBrain's Brain: data pipeline, Brain subclass, model export.

Data: ``dump/<set>/manifest.csv`` (kaldiio log-mel + transcript) -> normalised mel [T50, 128]
(the training set's global CMVN) + SentencePiece ids; whole utterances (no cropping) packed
into dynamic batches of ``batch_seconds`` of audio by speechbrain's DynamicBatchSampler.

Logged every epoch (``train_log.txt`` and the console): every loss part, codebook usage and
perplexity, learning rate, throughput in audio-seconds per second, CTC targets that did not
fit, non-finite losses skipped.

Schedule. With ``max_train_minutes`` > 0 the run is planned in steps: the first epoch is timed
(training, validation and checkpoint together), then the number of steps that fits the cap (at most
``number_of_epochs`` epochs and ``max_train_steps`` steps) is fixed and the learning-rate decay is
stretched to end exactly at the last planned step. The last epoch may stop part-way, so an epoch
longer than the cap leaves no time unused. The plan is part of the checkpoint, so a resumed run
keeps it. The schedule sets the rate before each optimiser step (step k trains at lr(k)).

Content-first schedule (``phase_a_fraction`` > 0): the first share of the planned steps trains
with the VQ bypassed (decoder and CTC head read the continuous latents; CTC weight
``phase_a_ctc_weight``, 0 when ``ctc_weight`` is 0); then the codebook is set by k-means on
encoder outputs and the whole model trains with the VQ (CTC weight ``ctc_weight``). With
``kmeans_init`` the codebook starts from k-means at the first quantised step in either schedule.
The paper trains jointly from the first step: ``phase_a_fraction: 0``.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import time
from collections import defaultdict

import numpy as np
import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

from sitok.data.kaldi import allow_pipes, check_rxspec, read_mat
from sitok.data.mel import GlobalCMVN
from sitok.data.ranks import MicroBatchSampler, micro_batch_layout, process_rank
from sitok.data.shards import ShardDataset, ShardLoader, read_index
from sitok.fileio import write_text_atomic
from sitok.models import SiTok, SiTokConfig
from sitok.models.loading import build_checked, load_weights, parse_config, read_config, write_model_dir
from sitok.quantizers import CodebookUsage
from sitok.quantizers.vq import EMAVectorQuantizer
from sitok.train.checkpoints import atomic_checkpointer, forget_unsaved_epochs, use_weights_only_loaders
from sitok.train.distributed import (
    SHARDED_NAME,
    OrderedGradSum,
    StrategyBrainMixin,
    full_model_state,
    full_tensor,
    is_sharded,
    leave_process_group,
    load_sharded_model,
    unwrapped,
)

logger = logging.getLogger(__name__)


# ---- data --------------------------------------------------------------------------------------
def dataio_prepare(hparams: dict):
    """Datasets for train/valid and the training batch sampler. Returns (datasets, sampler, stats).

    A manifest entry that is a shell command ("cmd |") is refused before training starts, unless the
    hparams (``allow_pipes: true``) or the environment allow them (``sitok.data.kaldi``)."""
    import sentencepiece as spm
    from speechbrain.dataio.dataset import DynamicItemDataset
    from speechbrain.dataio.sampler import DynamicBatchSampler

    shards = hparams.get("train_shards")
    for key in (
        ("valid_csv", "cmvn_file", "sp_model") if shards else ("train_csv", "valid_csv", "cmvn_file", "sp_model")
    ):
        if not os.path.exists(hparams[key]):
            raise FileNotFoundError(f"{key}: {hparams[key]} not found (run the recipe's stages 1-3 first)")
    cmvn = GlobalCMVN.load(hparams["cmvn_file"])
    sp = spm.SentencePieceProcessor(model_file=hparams["sp_model"])

    @sb.utils.data_pipeline.takes("id", "feats")
    @sb.utils.data_pipeline.provides("mel")
    def mel_pipeline(uid, feats):
        return cmvn(torch.from_numpy(read_mat(feats, f"utterance {uid}").copy()))

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("tokens")
    def text_pipeline(wrd):
        return torch.LongTensor(sp.encode(wrd))

    datasets, stats = {}, {}
    for name in ("valid",) if shards else ("train", "valid"):
        csv, keys = hparams[f"{name}_csv"], ["id", "mel", "tokens", "duration"]
        ds = DynamicItemDataset.from_csv(csv, dynamic_items=[mel_pipeline, text_pipeline], output_keys=keys)
        for uid in ds.data_ids:
            check_rxspec(ds.data[uid]["feats"], f"{csv}: utterance {uid}")
        n = len(ds)
        ds = ds.filtered_sorted(key_max_value={"duration": hparams["max_duration"]})
        stats[f"{name}_utterances"] = len(ds)
        stats[f"{name}_too_long"] = n - len(ds)
        if n - len(ds):
            logger.warning("%s: %d utterances longer than %.1f s left out", csv, n - len(ds), hparams["max_duration"])
        datasets[name] = ds
    if shards:
        return shard_data(hparams, cmvn, sp, datasets, stats)
    sampler = DynamicBatchSampler(
        datasets["train"],
        max_batch_length=hparams["batch_seconds"],
        num_buckets=hparams["num_buckets"],
        length_func=lambda x: x["duration"],
        shuffle=True,
        batch_ordering="random",
        seed=hparams["seed"],
    )
    stats["train_batches_per_epoch"] = len(sampler)
    if micro_batches_per_step(hparams):
        sampler = MicroBatchSampler(sampler, micro_batches_per_step(hparams))
        stats["train_batches_per_epoch"] = sampler.steps  # optimiser steps, the same on any number of processes
    train = datasets["train"]
    stats["train_hours"] = round(sum(float(train.data[i]["duration"]) for i in train.data_ids) / 3600, 3)
    return datasets, sampler, stats


def micro_batches_per_step(hparams) -> int:
    """``micro_batches_per_step`` of the hparams (a dict or the Brain's namespace); 0 when unset."""
    key = "micro_batches_per_step"
    return int((hparams.get(key) if isinstance(hparams, dict) else getattr(hparams, key, None)) or 0)


def shard_data(hparams: dict, cmvn: GlobalCMVN, sp, datasets: dict, stats: dict):
    """Training data streamed from WebDataset shards (``train_shards``) with the log-mel computed on
    the fly: a :class:`ShardLoader` (the train "set" and the sampler whose ``set_epoch`` the Brain
    calls), and for the k-means codebook start the first batches of the stream as rank 0 sees them
    (the same frames on every rank)."""
    shard_dir = hparams["train_shards"]

    def stream(rank=None, world_size=None):
        return ShardDataset(
            shard_dir,
            cmvn=cmvn,
            tokenize=sp.encode,
            seed=hparams["seed"],
            epoch=1,
            rank=rank,
            world_size=world_size,
            even=True,
            shuffle_buffer=int(hparams.get("shuffle_buffer", 2000)),
            batch_seconds=hparams["batch_seconds"],
            max_batch_size=int(hparams.get("max_batch_size", 10**9)),
        )

    loader = ShardLoader(stream(), num_workers=hparams["num_workers"], micro_batches=micro_batches_per_step(hparams))
    index = read_index(shard_dir)
    datasets["train"] = loader
    datasets["kmeans"] = ShardLoader(stream(0, 1), num_workers=0)
    stats["train_utterances"] = index["utterances"]
    stats["train_batches_per_epoch"] = loader.steps
    stats["train_hours"] = round(index["seconds"] / 3600, 3)
    logger.info(
        "training data: %s (%d shards, %.2f h), streamed", shard_dir, len(index["shards"]), index["seconds"] / 3600
    )
    return datasets, loader, stats


# ---- recoverables ------------------------------------------------------------------------------
def _numpy_array_globals() -> list:
    """What a pickled numpy array needs: plain-data constructors (no other code), allowed for
    reading the rng.ckpt files written before RNGState stored lists."""
    core = np._core if hasattr(np, "_core") else np.core
    allowed = [core.multiarray._reconstruct, np.ndarray, np.dtype]
    if hasattr(np, "dtypes"):  # numpy >= 1.25 pickles the dtype's class
        allowed.append(np.dtypes.UInt32DType)
    return allowed


@register_checkpoint_hooks
class RNGState:
    """torch / numpy / random generator states in the checkpoint, so that a resumed run draws the
    same noise, timesteps and batches as an uninterrupted one. Stored as a uint8 tensor, ints and
    floats, loaded with ``weights_only=True``: a checkpoint cannot run code."""

    @mark_as_saver
    def save(self, path):
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [name, [int(k) for k in keys], int(pos), int(has_gauss), float(gauss)],
            "random": [version, list(internal), gauss_next],
        }
        torch.save(state, path)

    @mark_as_loader
    def load(self, path, end_of_epoch=True):
        try:
            state = torch.load(path, weights_only=True)
        except pickle.UnpicklingError:  # written before the list format: numpy arrays, still data only
            with torch.serialization.safe_globals(_numpy_array_globals()):
                state = torch.load(path, weights_only=True)
        name, keys, pos, has_gauss, gauss = state["numpy"]
        version, internal, gauss_next = state["random"]
        torch.set_rng_state(state["torch"])
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        random.setstate((version, tuple(internal), gauss_next))


@register_checkpoint_hooks
class TrainingPlan:
    """The step plan of a run: the optimiser steps that fit the time cap, the epochs they span (the
    last one may end part-way) and the last step of phase A. ``planned`` is False until the first
    epoch has been timed; until then the plan is ``epochs`` whole epochs (at most ``max_steps``)."""

    def __init__(self, epochs: int, phase_a_fraction: float, batches_per_epoch: int, max_steps: int = 0):
        self.fraction, self.batches = float(phase_a_fraction), max(1, int(batches_per_epoch))
        self.max_steps = int(max_steps or 0)
        self.steps = self._capped(int(epochs) * self.batches)
        self.planned = False
        self.phase_a_steps = self._phase_a(0)
        self.micro_per_process: int | None = None  # micro-batches per step of this process (saved)

    def _capped(self, steps: int) -> int:
        return max(1, min(steps, self.max_steps) if self.max_steps > 0 else steps)

    @property
    def epochs(self) -> int:
        """The epochs the planned steps span (the last one may end part-way)."""
        return -(-self.steps // self.batches)

    def _phase_a(self, done: int) -> int:
        if self.fraction <= 0:
            return 0
        if not self.planned:  # the first epoch is phase A whatever the plan turns out to be
            return 2**62
        return max(done, round(self.fraction * self.steps))

    @property
    def total_steps(self) -> int:
        return self.steps

    def fix(self, steps: int, done_steps: int) -> None:
        """Plan ``steps`` optimiser steps in all (never fewer than the ``done_steps`` trained)."""
        self.steps = max(int(done_steps), self._capped(int(steps)))
        self.planned = True
        self.phase_a_steps = self._phase_a(done_steps)

    @mark_as_saver
    def save(self, path):
        state = {"steps": self.steps, "planned": self.planned, "phase_a_steps": self.phase_a_steps}
        torch.save({**state, "micro_per_process": self.micro_per_process}, path)

    @mark_as_loader
    def load(self, path, end_of_epoch=True):
        state = torch.load(path, weights_only=True)
        self.planned, self.phase_a_steps = state["planned"], state["phase_a_steps"]
        self.steps = state["steps"] if "steps" in state else state["epochs"] * self.batches  # older plans: whole epochs
        self.micro_per_process = state.get("micro_per_process")


def quantizer_initialised(q: torch.nn.Module) -> bool:
    """False while an EMA codebook (or any RVQ stage) still waits for its data initialisation."""
    stages = getattr(q, "stages", [q])
    return all(bool(getattr(s, "initted", True)) for s in stages)


# ---- Brain -------------------------------------------------------------------------------------
class TokenizerBrain(StrategyBrainMixin, sb.Brain):
    data_stats: dict = {}
    kmeans_data = None  # the training dataset: frames for the k-means codebook start

    def on_fit_start(self):
        use_weights_only_loaders()  # before super() recovers the last checkpoint
        # the meta file written last: a kill while saving (or, under FSDP, a rank still writing its
        # shards) leaves no checkpoint that looks complete
        self.checkpointer = atomic_checkpointer(self.checkpointer)
        self.checkpointer.add_recoverable("rng", RNGState())
        hp = self.hparams
        n_batches = self.data_stats.get("train_batches_per_epoch", 1)
        max_steps = int(getattr(hp, "max_train_steps", 0) or 0)
        self.plan = TrainingPlan(hp.number_of_epochs, float(getattr(hp, "phase_a_fraction", 0.0)), n_batches, max_steps)
        self.checkpointer.add_recoverable("plan", self.plan)
        self.lr_schedule = sb.nnet.schedulers.WarmAndExpDecayLRSchedule(
            lr=hp.lr, n_warmup_steps=hp.warmup_steps, total_steps=self.plan.total_steps, decay_factor=hp.lr_decay_factor
        )
        self.set_decay()
        self.checkpointer.add_recoverable("lr_schedule", self.lr_schedule)
        super().on_fit_start()  # recovers the last checkpoint: plan, schedule, counter
        forget_unsaved_epochs(self)
        self.rescale_resumed_step()
        self.streams, self.ema_quantizers = [], []
        if self.micro_batches:
            self.streams = self.micro_batch_streams()
            self.ema_quantizers = [q for q in self.modules.model.modules() if isinstance(q, EMAVectorQuantizer)]
            for q in self.ema_quantizers:
                q.accumulate = True
            logger.info(
                "%d micro-batches per step: this process computes %s of each step (%d accumulated)",
                self.micro_batches,
                self.streams,
                self.grad_accumulation_factor,
            )
        self.ordered_sum = None
        if getattr(hp, "ordered_grad_reduction", False):
            if not self.micro_batches or self.strategy == "fsdp":
                raise ValueError(
                    "ordered_grad_reduction needs micro_batches_per_step > 0 and distributed_strategy ddp "
                    f"(got {self.micro_batches} and {self.strategy})"
                )
            self.ordered_sum = OrderedGradSum(self.model.parameters(), self.streams, self.micro_batches)
            logger.info("gradients summed in micro-batch order on every process (ordered_grad_reduction)")
        if self.plan.planned:
            hp.epoch_counter.limit = self.plan.epochs
        model, cfg = self.model, self.model.config
        logger.info(
            "SiTok: %.2f M parameters; %.2f tokens/s, %d x %d codes, %.1f bit/s; %d torch threads; %s",
            model.num_parameters() / 1e6,
            cfg.token_rate,
            cfg.num_codebooks,
            cfg.codebook_size,
            cfg.bits_per_second,
            torch.get_num_threads(),
            json.dumps(self.data_stats),
        )
        if self.plan.fraction > 0:
            logger.info(
                "content-first schedule: the first %.0f %% of the steps train without the VQ", 100 * self.plan.fraction
            )
        self.train_start = time.time()

    def rescale_resumed_step(self) -> None:
        """A checkpoint taken inside an epoch counts that epoch's batches in micro-batches of the
        process that saved it; resumed with another number of processes (micro_batches_per_step
        fixed), the same steps are another number of this process's micro-batches."""
        saved, now = self.plan.micro_per_process, self.grad_accumulation_factor
        self.plan.micro_per_process = now
        if self.step == 0 or saved in (None, now):
            return
        steps = self.step // saved
        logger.info(
            "resumed inside an epoch on another number of processes: %d steps done = %d micro-batches here (was %d)",
            steps,
            steps * now,
            self.step,
        )
        self.step = steps * now
        loader = self.checkpointer.recoverables.get("dataloader-TRAIN")
        if getattr(loader, "_speechbrain_recovery_skip_to", None) is not None:
            loader._speechbrain_recovery_skip_to = self.step

    # ---- distributed strategy (StrategyBrainMixin) ----------------------------------------
    def init_optimizers(self):
        super().init_optimizers()
        self.use_sharded_checkpoints()

    # ---- schedule ------------------------------------------------------------------------
    @property
    def global_step(self) -> int:
        """Optimiser steps started so far (the schedule is called at the start of each step)."""
        return int(self.lr_schedule.current_step)

    def in_phase_a(self) -> bool:
        """Whether the current (or, between epochs, the last) training step is in phase A; the
        validation after an epoch runs in the phase of the epoch's last step."""
        return max(0, self.global_step - 1) < self.plan.phase_a_steps

    def set_decay(self) -> None:
        """The decay ends at the last planned step: step index total - 1 trains at lr * decay_factor."""
        self.lr_schedule.decay_steps = max(1, self.plan.total_steps - 1 - self.lr_schedule.n_warmup_steps)

    def make_plan(self, epoch: int) -> None:
        """After the first timed epoch: the steps that fit ``max_train_minutes`` fix the decay and
        the epochs (the last one stops part-way when the cap falls inside it)."""
        limit = float(self.hparams.max_train_minutes or 0)
        per_epoch = (time.time() - self.train_start) / max(1, epoch)
        steps = self.hparams.number_of_epochs * self.plan.batches
        if limit > 0:  # 3 % of the cap kept for epochs that run slower than the first
            steps = min(steps, int(0.97 * limit * 60 / per_epoch * self.plan.batches))
        self.plan.fix(steps, self.global_step)
        self.hparams.epoch_counter.limit = self.plan.epochs
        self.set_decay()
        phase_a = f"until step {self.plan.phase_a_steps}" if self.plan.fraction > 0 else "off"
        msg = "plan: %.1f s per epoch -> %d steps (%.2f epochs) within max_train_minutes=%g; phase A %s"
        logger.info(msg, per_epoch, self.plan.total_steps, self.plan.total_steps / self.plan.batches, limit, phase_a)

    @property
    def _optimizer_step_limit_exceeded(self) -> bool:
        """Brain's loop leaves the epoch (then validates and stops) once the planned steps are
        trained: the last planned epoch may end part-way. Checked before each micro-batch, so a
        step is never cut between its micro-batches."""
        plan = getattr(self, "plan", None)
        if plan is None:
            return super()._optimizer_step_limit_exceeded
        return self.global_step >= plan.total_steps and self.step % self.grad_accumulation_factor == 0

    @torch.no_grad()
    def kmeans_codebook(self) -> None:
        """Codebook <- k-means of ``kmeans_frames`` encoder outputs of random training utterances."""
        from speechbrain.dataio.batch import PaddedBatch

        q, hp = self.model.quantizer, self.hparams
        if not hasattr(q, "init_kmeans") or self.kmeans_data is None:
            return
        want, ds = int(getattr(hp, "kmeans_frames", 20000)), self.kmeans_data
        if isinstance(ds, torch.utils.data.DataLoader):  # a stream (shards): its first batches
            batches = iter(ds)
        else:
            order = random.Random(hp.seed).sample(range(len(ds)), len(ds))
            batches = (PaddedBatch([ds[i] for i in order[s : s + 16]]) for s in range(0, len(order), 16))
        frames, n = [], 0
        self.modules.eval()
        for batch in batches:
            batch = batch.to(self.device)
            mel, rel = batch.mel
            z, mask = self.model.encode_latents(mel, (rel * mel.shape[1]).round().long())
            frames.append(z[mask].float())
            n += int(mask.sum())
            if n >= want:
                break
        self.modules.train()
        t0 = time.time()
        stats = q.init_kmeans(torch.cat(frames)[:want], iters=int(getattr(hp, "kmeans_iters", 10)), seed=hp.seed)
        seconds = time.time() - t0
        logger.info(
            "k-means codebook start before step %d (%.1f s): %s", self.global_step - 1, seconds, json.dumps(stats)
        )

    @property
    def model(self):
        m = self.modules.model
        return unwrapped(m)

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        mel, rel = batch.mel
        mel_lengths = (rel * mel.shape[1]).round().long()
        tokens, trel = batch.tokens
        token_lengths = (trel * tokens.shape[1]).round().long()
        continuous = self.in_phase_a()
        kmeans = stage == sb.Stage.TRAIN and not continuous and getattr(self.hparams, "kmeans_init", False)
        if kmeans and not quantizer_initialised(self.model.quantizer):
            self.kmeans_codebook()
        ctc_weight = None  # phase B: the configured weight
        if continuous:  # phase A's own weight; CTC off (the ablation) stays off
            on = self.model.config.ctc_weight > 0
            ctc_weight = float(getattr(self.hparams, "phase_a_ctc_weight", 1.0)) if on else 0.0
        mode = "continuous" if continuous else "joint"  # SiTok.forward_continuous / forward_joint
        return self.modules.model(mel, mel_lengths, tokens, token_lengths, mode=mode, ctc_weight=ctc_weight)

    def compute_objectives(self, out, batch, stage):
        parts = {k: float(v.detach()) for k, v in out.items() if k in ("diff", "vq", "ctc")}
        self._acc["audio_s"] += float(sum(batch.duration))
        self._acc["n"] += 1
        for k, v in parts.items():
            self._acc[k] += v
        self._acc["ctc_not_fitting"] += out.get("ctc_not_fitting", 0)
        for k, v in out.get("stats", {}).items():
            self._acc["stat_" + k] += float(v)
        if not torch.isfinite(out["loss"]):
            self._acc["nonfinite"] += 1
        return out["loss"]

    # ---- micro-batches ---------------------------------------------------------------------
    @property
    def micro_batches(self) -> int:
        """``micro_batches_per_step`` M (0: one micro-batch per process and step, the global batch
        grows with the number of processes). With M > 0 a step averages the gradients of the same M
        micro-batches whatever the number of processes W: each process accumulates M / W of them,
        the noise and timesteps of a micro-batch are seeded by (seed, step, its position in the
        step), and the EMA codebook makes one update per step from all of them. A run can then
        resume on another number of processes and continue as it would have (up to the order in
        which floats are summed across processes)."""
        return micro_batches_per_step(self.hparams)

    def micro_batch_streams(self) -> list[int]:
        """The positions within every step that this process computes."""
        rank, world, _ = process_rank("micro_batches_per_step")
        return micro_batch_layout(self.micro_batches, rank, world)

    def _seed_micro_batch(self, position: int) -> None:
        """The global torch generator <- (seed, optimiser step, position in the step)."""
        state = np.random.SeedSequence([int(self.hparams.seed), int(self.optimizer_step), position])
        torch.manual_seed(int(state.generate_state(1, np.uint64)[0] >> 1))

    def fit_batch(self, batch):
        """With ``ordered_grad_reduction``: SpeechBrain's step, but each micro-batch's gradient is
        kept apart (no DDP reduction) and the step's gradient is their sum in position order,
        the same floats on any number of processes (``OrderedGradSum``)."""
        if self.ordered_sum is None:
            return super().fit_batch(batch)
        should_step = (self.step % self.grad_accumulation_factor) == 0
        self.on_fit_batch_start(batch, should_step)
        with self.no_sync():
            with self.training_ctx:
                outputs = self.compute_forward(batch, sb.Stage.TRAIN)
                loss = self.compute_objectives(outputs, batch, sb.Stage.TRAIN)
            scaled = self.scaler.scale(loss / self.micro_batches)  # the step's mean over its M micro-batches
            self.check_loss_isfinite(scaled)
            scaled.backward()
        self.ordered_sum.keep()
        if should_step:
            self.ordered_sum.sum_into_grads()
            self.optimizers_step()
        self.on_fit_batch_end(batch, outputs, loss, should_step)
        return loss.detach().cpu()

    def _train_loader_specifics(self, dataset, loader_kwargs):
        if isinstance(loader_kwargs.get("batch_sampler"), MicroBatchSampler):
            return loader_kwargs  # already this process's share: not split again by SpeechBrain
        return super()._train_loader_specifics(dataset, loader_kwargs)

    def _should_save_intra_epoch_ckpt(self, last_ckpt_time, steps_since_ckpt):
        # never between the micro-batches of a step: the accumulated gradient is not checkpointed
        if self.step % self.grad_accumulation_factor:
            return False
        return super()._should_save_intra_epoch_ckpt(last_ckpt_time, steps_since_ckpt)

    def on_fit_batch_start(self, batch, should_step):
        k = (self.step - 1) % self.grad_accumulation_factor  # this micro-batch's place in the step
        if k == 0:  # the rate of this step, set at its first micro-batch: the phase is the step's
            self.lr_schedule(self.optimizer)
        if self.streams:
            self._seed_micro_batch(self.streams[k])

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        if should_step and self.ema_quantizers:  # the step's one codebook update (collective)
            self._seed_micro_batch(self.micro_batches)
            for q in self.ema_quantizers:
                q.flush()

    def on_stage_start(self, stage, epoch=None):
        self._acc = defaultdict(float)
        self._t0 = time.time()
        if stage == sb.Stage.TRAIN and self.step > 0 and isinstance(self.train_sampler, ShardLoader):
            self.train_sampler.resume(epoch, self.step)  # a run resumed mid-epoch: skip what was trained on
            logger.info("epoch %d resumed after %d of %d batches", epoch, self.step, len(self.train_sampler))
        if stage != sb.Stage.TRAIN:
            self._usage = CodebookUsage(self.model.config.codebook_size, self.model.config.num_codebooks)

    def evaluate_batch(self, batch, stage):
        out = self.compute_forward(batch, stage)
        loss = self.compute_objectives(out, batch, stage)
        if out["codes"] is not None:  # phase A has no codes
            self._usage.update(out["codes"], out["token_mask"])  # eval mode: the same codes encode() gives
        return loss.detach().cpu()

    def _summary(self, stage_loss) -> dict:
        a = self._acc
        n = max(1.0, a["n"])
        s = {"loss": stage_loss}
        s.update({k: a[k] / n for k in ("diff", "vq", "ctc") if k in a})
        s.update({k[5:]: a[k] / n for k in list(a) if k.startswith("stat_")})
        s["audio_s_per_s"] = a["audio_s"] / max(1e-9, time.time() - self._t0)
        s["ctc_not_fitting"] = int(a["ctc_not_fitting"])
        s["nonfinite_skipped"] = int(a["nonfinite"])
        return s

    def on_stage_end(self, stage, stage_loss, epoch=None):
        summary = self._summary(stage_loss)
        if stage == sb.Stage.TRAIN:
            self.train_stats = summary
            return
        if self._usage.frames > 0:  # none in phase A (no VQ)
            summary.update(codebook_usage=self._usage.usage, code_perplexity=self._usage.perplexity)
        if stage == sb.Stage.VALID:
            phase = "A" if self.in_phase_a() else "B"
            if not self.plan.planned:
                self.make_plan(epoch)
            lr = self.optimizer.param_groups[0]["lr"]
            minutes = (time.time() - self.train_start) / 60
            meta = {"epoch": epoch, "lr": lr, "minutes": minutes, "step": self.global_step}
            if self.plan.fraction > 0:
                meta["phase"] = phase
            self.hparams.train_logger.log_stats(stats_meta=meta, train_stats=self.train_stats, valid_stats=summary)
            self.checkpointer.save_and_keep_only(
                meta={"loss": stage_loss, "epoch": epoch}, min_keys=["loss"], num_to_keep=2
            )
            if sb.utils.distributed.if_main_process():  # full-precision curve, one JSON line per epoch
                record = {**meta, "train": self.train_stats, "valid": summary}
                with open(os.path.join(self.hparams.exp_dir, "train_stats.jsonl"), "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record) + "\n")
            limit = float(self.hparams.max_train_minutes or 0)
            if limit > 0 and (time.time() - self.train_start) / 60 > limit:
                logger.info("max_train_minutes=%g reached after epoch %d: stopping", limit, epoch)
                self.hparams.epoch_counter.current = self.hparams.epoch_counter.limit
        else:
            self.test_stats = summary


def run_recipe(argv: list[str], brain_class: type) -> None:
    """The body of recipes/{tokenizer,refine}/train.py: hparams + overrides -> experiment dir ->
    data -> ``brain_class.fit`` -> DDP agreement check -> ``<exp_dir>/model``."""
    from hyperpyyaml import load_hyperpyyaml

    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)  # no-op unless launched by torchrun
    with open(hparams_file, encoding="utf-8") as fh:
        hparams = load_hyperpyyaml(fh, overrides)
    sb.create_experiment_directory(
        experiment_directory=hparams["exp_dir"], hyperparams_to_save=hparams_file, overrides=overrides
    )
    if hparams.get("allow_pipes"):  # feats entries that are shell commands ("cmd |") may run
        allow_pipes(True)
    if sb.utils.distributed.if_main_process():
        write_train_config(hparams)
    datasets, train_sampler, stats = dataio_prepare(hparams)
    brain = brain_class(hparams["modules"], hparams["opt_class"], hparams, run_opts, hparams["checkpointer"])
    if brain.micro_batches:  # this process accumulates its share of every step's micro-batches
        share = len(brain.micro_batch_streams())
        if brain.grad_accumulation_factor not in (1, share):
            raise ValueError(
                f"grad_accumulation_factor {brain.grad_accumulation_factor} with micro_batches_per_step "
                f"{brain.micro_batches}: the factor follows from the number of processes ({share} here); leave it unset"
            )
        brain.grad_accumulation_factor = share
    brain.data_stats = stats
    brain.kmeans_data = datasets.get("kmeans", datasets["train"])
    brain.train_sampler = train_sampler  # Brain calls set_epoch(): batches depend on (seed, epoch) only
    brain.fit(
        brain.hparams.epoch_counter,
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs={"batch_sampler": train_sampler, "num_workers": hparams["num_workers"]},
        valid_loader_kwargs={"batch_size": 8, "num_workers": hparams["num_workers"]},
    )
    check_ranks_agree(brain.model)  # every rank must hold the same weights and codebook
    state = full_model_state(brain.model, rank0_only=True) if is_sharded(brain.model) else None  # collective
    if leave_process_group():  # the last collective is done: the main process exports alone
        export_model_dir(brain, hparams, os.path.join(hparams["exp_dir"], "model"), state=state)


def read_train_stats(exp_dir: str) -> list[dict]:
    """Per-epoch records of ``train_stats.jsonl`` (an epoch redone after a kill: last one wins)."""
    path = os.path.join(exp_dir, "train_stats.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        by_epoch = {rec["epoch"]: rec for rec in (json.loads(line) for line in fh if line.strip())}
    return [by_epoch[e] for e in sorted(by_epoch)]


def check_ranks_agree(model: torch.nn.Module) -> None:
    """Under torch.distributed: all-gather a checksum of every parameter and buffer (EMA codebook
    included) and raise if any rank differs; logs the verdict. No-op when not distributed. Under
    FSDP the checksums are of the full (unsharded) tensors, gathered one at a time."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    kind = "FSDP" if is_sharded(model) else "DDP"
    state = model.state_dict()
    sums = torch.stack([full_tensor(v).detach().double().sum() for v in state.values()])  # [n_tensors]
    gathered = [torch.zeros_like(sums) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, sums)
    agree = all(torch.equal(g, gathered[0]) for g in gathered)
    logger.info("%s: %d ranks, weights and codebooks identical across ranks: %s", kind, len(gathered), agree)
    if not agree:
        raise RuntimeError(f"{kind} ranks ended with different weights or codebooks")


# ---- export ------------------------------------------------------------------------------------
TRAIN_CONFIG = "train_config.json"
TRAIN_CONFIG_FORMAT = "sitok-train-1"


def write_train_config(hparams: dict) -> str:
    """``<exp_dir>/train_config.json``: what ``export_checkpoint`` needs, as plain data: the model's
    config, its checkpoint folder (relative to the experiment dir), the CMVN, SentencePiece model
    and training manifest (paths as the recipe resolved them), the refinement lineage."""
    exp_dir = hparams["exp_dir"]
    config = {
        "format": TRAIN_CONFIG_FORMAT,
        "model": hparams["model"].config.to_dict(),
        "save_folder": os.path.relpath(str(hparams["checkpointer"].checkpoints_dir), exp_dir),
        **{k: str(hparams[k]) for k in ("cmvn_file", "sp_model", "train_csv")},
    }
    if hparams.get("refine"):
        overrides = dict(hparams.get("decoder_overrides") or {})
        config.update(refine=hparams["refine"], init_model=hparams.get("init_model"), decoder_overrides=overrides)
    path = os.path.join(exp_dir, TRAIN_CONFIG)
    write_text_atomic(path, json.dumps(config, indent=1) + "\n")
    return path


def export_checkpoint(exp_dir: str, out_dir: str | None = None) -> str:
    """Export the latest checkpoint of a (possibly still running) training experiment as a
    model directory: ``sitok export exp/tokenizer_mini -o /tmp/model_epoch9``.

    Reads ``train_config.json`` (plain data, written when the training started) and the
    checkpoint's ``model.ckpt`` (weights only, checked against that config), never the experiment's
    hyperparams.yaml: its tags (``!new:``, ``!apply:``, ``!name:``) run code, and an experiment
    directory may come from someone else."""
    from types import SimpleNamespace

    from speechbrain.utils.checkpoints import Checkpointer

    path = os.path.join(exp_dir, TRAIN_CONFIG)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path}: not found; export reads this plain-data file (written when training "
            "starts), never hyperparams.yaml, whose tags run code; re-running the training "
            "command on this experiment writes it"
        )
    config = read_config(path, TRAIN_CONFIG_FORMAT)
    model_cfg = parse_config(SiTokConfig.from_dict, config.get("model"), path)
    for key in ("save_folder", "cmvn_file", "sp_model", "train_csv"):
        if not isinstance(config.get(key), str):
            raise ValueError(f"{path}: {key} must be a path, got {config.get(key)!r}")
    save_dir = os.path.join(exp_dir, config["save_folder"])
    ckpt = Checkpointer(save_dir).find_checkpoint() if os.path.isdir(save_dir) else None  # the most recent
    if ckpt is None:
        raise FileNotFoundError(f"{save_dir}: no checkpoint to export")
    weights, sharded = os.path.join(ckpt.path, "model.ckpt"), os.path.join(ckpt.path, SHARDED_NAME + ".ckpt")
    if not os.path.exists(weights) and os.path.isdir(sharded):  # distributed_strategy fsdp: DCP shards
        model = load_sharded_model(sharded, SiTok(model_cfg))
    else:
        model = build_checked(lambda: SiTok(model_cfg), load_weights(weights), weights, path)
    holder = SimpleNamespace(model=model)  # the part of a Brain that export_model_dir reads
    out = export_model_dir(holder, config, out_dir or os.path.join(exp_dir, "model"))
    logger.info("exported checkpoint %s (epoch %s)", ckpt.path, ckpt.meta.get("epoch"))
    return out


def export_model_dir(brain: TokenizerBrain, hparams: dict, out_dir: str, state: dict | None = None) -> str:
    """Write a model directory: ``config.json`` (plain data), ``model.pt`` (state dict, loadable
    with ``weights_only=True``), ``cmvn.json``, ``sp.model``. Written to a temporary directory
    and renamed, so a reader never sees a partial model. ``state``: the model's full state dict
    when the model itself holds shards (FSDP; ``full_model_state``)."""
    extra = {"trained_on": hparams["train_csv"]}
    if hparams.get("refine"):  # lineage, read by ``sitok report`` (e.g. R + D = refine "diffusion")
        extra["refine"] = {"kind": hparams["refine"], "init_model": hparams.get("init_model")}
        if hparams.get("decoder_overrides"):
            extra["refine"]["decoder_overrides"] = dict(hparams["decoder_overrides"])
    write_model_dir(
        out_dir, brain.model, cmvn=hparams["cmvn_file"], state=state, sp_model=hparams["sp_model"], extra=extra
    )
    logger.info("exported %s", out_dir)
    return out_dir
