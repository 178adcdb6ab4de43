"""Vocoder training on SpeechBrain's Brain: GAN with two optimisers (HiFi-GAN recipe layout).

Data: ``dump/<set>/manifest.csv`` -> the utterance's 24 kHz audio -> un-normalised log-mel with
``sitok.data.mel.MelFrontend`` (the frontend every other stage uses) over the whole utterance ->
a random hop-aligned crop of ``segment_frames`` frames and the ``segment_frames * hop`` samples
those frames describe. The crop offset is a function of (seed, epoch, utterance id) only, so the
data of every epoch is the same in an uninterrupted run and in a resumed one.

Losses (Vocos weights): multi-resolution log-mel L1 (speechbrain's ``L1SpecLoss`` at each
resolution; the first is our frontend's) x ``mel_loss_weight``; optionally APNet-style phase
losses (instantaneous frequency + group delay) x ``phase_loss_weight`` and log-amplitude and
STFT-consistency losses on the generator's own spectrum x ``amplitude_loss_weight`` /
``consistency_loss_weight``; after ``gan_start_step``
generator steps, the discriminator (speechbrain's HiFi-GAN MPD/MSD) is trained with hinge loss
and the generator gets hinge adversarial + feature-matching losses (speechbrain's
``GeneratorLoss`` / ``DiscriminatorLoss`` wrappers). Until then training is reconstruction only:
on one CPU core a GAN step with the MPD on 8192-sample windows costs ~35x a reconstruction-only
step (batch 16: 21 s against 0.6 s; with MPD + MSD 50 s).

The time budget ``max_train_minutes`` is planned in generator steps (``sitok.train.plan``): the
run stops part-way through an epoch once the planned steps are done, so a long epoch neither
overruns the budget nor leaves a third of it unused.

Logged every epoch (``train_log.txt``, ``train_stats.jsonl``): every loss part, learning rates,
generator steps, GAN steps, throughput, non-finite losses skipped; every ``log_interval``
steps a progress line in ``log.txt``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
import zlib
from collections import defaultdict

import speechbrain as sb
import torch
import torch.nn.functional as F
from torch import nn

from sitok.data.audio import AudioError, load_audio
from sitok.data.mel import MelConfig, MelFrontend
from sitok.data.segment import load_segment
from sitok.eval.quality import pesq_wb
from sitok.infer.vocoder import VocosVocoder, vocoder_dir
from sitok.train.distributed import unwrapped
from sitok.train.plan import StepPlanned
from sitok.train.tokenizer import RNGState, read_train_stats  # noqa: F401  (read_train_stats: the same train_stats.jsonl format)

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------
class MultiResolutionMelLoss(nn.Module):
    """Mean of speechbrain ``L1SpecLoss`` (log-mel L1) over several (n_fft, hop, n_mels)
    resolutions. Takes waveforms [B, 1, N]."""

    def __init__(self, resolutions, sample_rate: int = 24000, f_max: float = 12000.0):
        super().__init__()
        from speechbrain.lobes.models.HifiGAN import L1SpecLoss

        self.losses = nn.ModuleList(
            L1SpecLoss(
                sample_rate=sample_rate,
                hop_length=int(hop),
                win_length=int(n_fft),
                n_mel_channels=int(n_mels),
                n_fft=int(n_fft),
                mel_fmin=0.0,
                mel_fmax=f_max,
                power=1.0,
                norm="slaney",
                mel_scale="slaney",
                dynamic_range_compression=True,
            )
            for n_fft, hop, n_mels in resolutions
        )

    def forward(self, y_hat, y):
        return sum(loss(y_hat, y) for loss in self.losses) / len(self.losses)


class MultiPeriodDiscriminator(nn.Module):
    """speechbrain's HiFi-GAN multi-period discriminator with a configurable set of periods
    (``speechbrain.lobes.models.HifiGAN.MultiPeriodDiscriminator`` fixes them to 2, 3, 5, 7, 11).
    Same output: lists of scores and of per-layer features, one entry per period."""

    def __init__(self, periods=(2, 3, 5, 7, 11)):
        super().__init__()
        from speechbrain.lobes.models.HifiGAN import DiscriminatorP

        self.discriminators = nn.ModuleList(DiscriminatorP(int(p)) for p in periods)

    def forward(self, x):
        scores, feats = zip(*(d(x) for d in self.discriminators))
        return list(scores), list(feats)


def anti_wrap(x: torch.Tensor) -> torch.Tensor:
    """|x| after wrapping into [-pi, pi]: the distance between two phase differences."""
    return (x - 2 * math.pi * torch.round(x / (2 * math.pi))).abs()


class _FramedSTFT(nn.Module):
    """An STFT framed like ``sitok.data.mel`` (so its frame k is the generator's frame k), with the
    ``edge_frames`` at each end (reflect-padded) to leave out of a loss."""

    def __init__(self, n_fft: int = 1920, hop: int = 480, edge_frames: int = 2):
        super().__init__()
        self.n_fft, self.hop, self.edge = n_fft, hop, edge_frames
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def stft(self, y: torch.Tensor) -> torch.Tensor:
        y = y.reshape(y.shape[0], -1)
        side = (self.n_fft - self.hop) // 2
        y = F.pad(y.unsqueeze(1), (side, side), mode="reflect").squeeze(1)
        return torch.stft(y, self.n_fft, self.hop, self.n_fft, self.window, center=False, return_complex=True)

    def crop(self, t: int) -> slice:
        """The frames of ``t`` a loss counts: all but the edges (all of a short segment)."""
        e = self.edge if t > 2 * self.edge + 1 else 0
        return slice(e, t - e)


class PhaseLoss(_FramedSTFT):
    """Anti-wrapped instantaneous-frequency (time difference) and group-delay (frequency
    difference) losses between the generator's predicted STFT phase and the phase of the real
    audio, as in APNet (Ai and Ling, 2023). Both are blind to a frame's absolute phase, which the
    mel does not carry. Bins are weighted by log(1 + |S|) of the real audio, so silent bins (random
    phase) do not count; the ``edge_frames`` at each end (reflect-padded) are left out.

    The real STFT is framed like ``sitok.data.mel``, so its frame k is the generator's frame k."""

    def forward(self, phase_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """phase_hat [B, F, T], real audio y [B, T * hop] (or [B, 1, T * hop])."""
        crop = self.crop(phase_hat.shape[-1])
        spec, phase_hat = self.stft(y)[..., crop], phase_hat[..., crop]
        phase, w = spec.angle(), torch.log1p(spec.abs())
        wt = torch.minimum(w[..., 1:], w[..., :-1])
        wf = torch.minimum(w[:, 1:], w[:, :-1])
        iaf = anti_wrap(phase_hat.diff(dim=-1) - phase.diff(dim=-1))
        gd = anti_wrap(phase_hat.diff(dim=1) - phase.diff(dim=1))
        return (wt * iaf).sum() / wt.sum().clamp_min(1e-6) + (wf * gd).sum() / wf.sum().clamp_min(1e-6)


class SpectrumLoss(_FramedSTFT):
    """Losses on the generator's own STFT (APNet-style, Ai and Ling 2023), framed like the mel:

    * ``amplitude``: L1 between the predicted log-magnitudes and those of the real audio;
    * ``consistency``: how far the predicted complex spectrum is from the STFT of the waveform it
      synthesises (an inconsistent spectrum loses energy and smears in the overlap-add), relative
      to the mean magnitude of the real audio.

    The ``edge_frames`` at each end (reflect-padded) are left out."""

    def __init__(self, n_fft: int = 1920, hop: int = 480, edge_frames: int = 2, floor: float = 1e-4):
        super().__init__(n_fft, hop, edge_frames)
        self.floor = floor

    def forward(self, mag_hat, phase_hat, y_hat, y) -> tuple[torch.Tensor, torch.Tensor]:
        crop = self.crop(mag_hat.shape[-1])
        spec = self.stft(y)[..., crop]
        mag_hat, phase_hat = mag_hat[..., crop], phase_hat[..., crop]
        amplitude = (
            (torch.log(mag_hat.clamp(min=self.floor)) - torch.log(spec.abs().clamp(min=self.floor))).abs().mean()
        )
        consistent = self.stft(y_hat)[..., crop]
        consistency = (torch.polar(mag_hat, phase_hat) - consistent).abs().mean() / spec.abs().mean().clamp(min=1e-6)
        return amplitude, consistency


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------
class SegmentCropper:
    """Hop-aligned random crops whose offset depends on (seed, epoch, utterance id) only."""

    def __init__(self, seed: int, segment_frames: int, hop: int):
        self.seed, self.segment_frames, self.hop = int(seed), int(segment_frames), int(hop)
        # The epoch lives in shared memory, so that persistent data-loader workers (forked
        # once, holding a copy of this object) see the main process's update.
        self._epoch = torch.zeros(1, dtype=torch.long).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch[0] = int(value)

    def start_frame(self, uid: str, num_frames: int) -> int:
        slack = num_frames - self.segment_frames
        if slack <= 0:
            return 0
        return random.Random(zlib.crc32(f"{self.seed}/{self.epoch}/{uid}".encode())).randint(0, slack)

    def __call__(self, uid: str, wav: torch.Tensor, frontend: MelFrontend):
        """wav [N] -> (segment [F * hop], log-mel [F, n_mels]); short utterances are zero-padded."""
        f, hop = self.segment_frames, self.hop
        wav = torch.nn.functional.pad(wav, (0, max(f * hop, wav.numel()) - wav.numel()))
        wav = torch.nn.functional.pad(wav, (0, (-wav.numel()) % hop))
        mel = frontend(wav)  # [T, n_mels], frames of the whole utterance
        k0 = self.start_frame(uid, mel.shape[0])
        return wav[k0 * hop : (k0 + f) * hop], mel[k0 : k0 + f]


def manifest_segments(csv_path: str) -> dict[str, tuple[float, float]]:
    """{utt: (start, stop)} seconds for the manifest rows that are slices of a longer recording
    (the ``start``/``stop`` columns written for a data dir with a ``segments`` file)."""
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {r["ID"]: (float(r["start"]), float(r["stop"])) for r in rows if r.get("start") not in (None, "")}


def dataio_prepare(hparams: dict):
    """Train/valid datasets of fixed-length segments. Returns (datasets, train_cropper, stats).

    Unusable audio files (missing, empty, unreadable, wrong content) are found from their headers
    here, left out, counted and listed in the log; the run goes on without them."""
    from speechbrain.dataio.dataset import DynamicItemDataset

    for key in ("train_csv", "valid_csv"):
        if not os.path.exists(hparams[key]):
            raise FileNotFoundError(f"{key}: {hparams[key]} not found (run the recipe's data stages first)")
    mel_cfg = MelConfig()
    frontend = MelFrontend(mel_cfg)
    hop = mel_cfg.hop_length
    segment_frames = int(hparams["segment_frames"])
    croppers = {n: SegmentCropper(hparams["seed"], segment_frames, hop) for n in ("train", "valid")}  # valid: epoch 0
    stats: dict = {"segment_frames": segment_frames, "segment_seconds": segment_frames * hop / mel_cfg.sample_rate}
    datasets = {}
    for name in ("train", "valid"):
        cropper = croppers[name]
        bounds = manifest_segments(hparams[f"{name}_csv"])

        def read(uid, path, bounds=bounds, **checks):
            """The utterance's audio: the whole file, or its slice where the manifest has one."""
            if uid in bounds:
                return load_segment(path, *bounds[uid], mel_cfg.sample_rate, **checks)
            return load_audio(path, mel_cfg.sample_rate, **checks)

        @sb.utils.data_pipeline.takes("id", "wav")
        @sb.utils.data_pipeline.provides("sig", "mel")
        def audio_pipeline(uid, path, cropper=cropper, read=read):
            seg, mel = cropper(uid, read(uid, path), frontend)
            yield seg
            yield mel

        ds = DynamicItemDataset.from_csv(
            hparams[f"{name}_csv"], dynamic_items=[audio_pipeline], output_keys=["id", "sig", "mel"]
        )
        bad = []  # (path, reason): every file is decoded once here, so that no bad file stops training
        for uid in ds.data_ids:
            path = ds.data[uid]["wav"]
            try:
                read(uid, path, min_duration=float(hparams.get("min_duration", 0.1)))
            except AudioError as exc:
                bad.append((path, str(exc)))
        if bad:
            bad_paths = {p for p, _ in bad}
            ds = ds.filtered_sorted(key_test={"wav": lambda p, bad_paths=bad_paths: p not in bad_paths})
            logger.warning(
                "%s: %d unusable audio files left out:\n  %s",
                hparams[f"{name}_csv"],
                len(bad),
                "\n  ".join(msg for _, msg in bad),
            )
        limit = int(hparams.get(f"{name}_max_utts", 0) or 0)
        if limit and len(ds) > limit:
            ds = ds.filtered_sorted(select_n=limit)
        stats[f"{name}_utterances"] = len(ds)
        stats[f"{name}_skipped"] = len(bad)
        datasets[name] = ds
    return datasets, croppers["train"], stats


def load_generator_weights(generator: nn.Module, path: str) -> None:
    """Copy an exported vocoder's weights into ``generator`` (``path``: a vocoder directory, or a
    model directory holding ``vocoder/``); the architectures must match."""
    found = vocoder_dir(path)
    if found is None:
        raise FileNotFoundError(f"init_from: no exported vocoder (config.json + model.pt) at {path} nor {path}/vocoder")
    generator.load_state_dict(VocosVocoder.from_pretrained(found).model.state_dict())  # strict
    logger.info("generator initialised from %s", os.path.join(found, "model.pt"))


# ---------------------------------------------------------------------------------------
# Brain
# ---------------------------------------------------------------------------------------
def _finite_on_every_rank(loss: torch.Tensor) -> bool:
    """Whether ``loss`` is finite on every process: under DDP one rank skipping a backward that the
    others run would leave them waiting in the gradient all-reduce, so all skip or none does."""
    ok = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
    return bool(ok.item())


class VocoderBrain(StepPlanned, sb.Brain):
    """Generator + discriminator, two optimisers and two learning-rate schedules.

    ``self.optimizer_step`` counts generator updates (saved by Brain's own checkpoint hook); the
    discriminator and the adversarial losses join at ``gan_start_step``. The recipe sets what
    :class:`~sitok.train.plan.StepPlanned` needs (``t_start``, ``batches_per_epoch``,
    ``valid_batches``, ``step_plan``) before ``fit``."""

    data_stats: dict | None = None  # set by the recipe
    train_cropper: SegmentCropper | None = None

    @property
    def generator(self) -> nn.Module:
        """The generator itself (under torchrun ``self.modules.generator`` is its DDP wrapper)."""
        return unwrapped(self.modules.generator)

    @property
    def discriminator(self) -> nn.Module:
        return unwrapped(self.modules.discriminator)

    def init_optimizers(self):
        self.optimizer_g = self.hparams.opt_class_generator(self.generator.parameters())
        self.optimizer_d = self.hparams.opt_class_discriminator(self.discriminator.parameters())
        self.optimizers_dict = {"optimizer_g": self.optimizer_g, "optimizer_d": self.optimizer_d}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer_g", self.optimizer_g)
            self.checkpointer.add_recoverable("optimizer_d", self.optimizer_d)

    def on_fit_start(self):
        hp = self.hparams
        self.checkpointer.add_recoverable("rng", RNGState())
        cfg = MelConfig()
        self.frontend_mel_loss = MultiResolutionMelLoss([(cfg.n_fft, cfg.hop_length, cfg.n_mels)]).to(self.device)
        self.phase_loss = PhaseLoss(cfg.n_fft, cfg.hop_length).to(self.device)
        self.spectrum_loss = SpectrumLoss(cfg.n_fft, cfg.hop_length).to(self.device)
        per_epoch = max(1, (self.data_stats or {}).get("train_batches_per_epoch", 1))
        total = max(2, per_epoch * hp.number_of_epochs)
        gan_steps = max(2, total - hp.gan_start_step)

        def schedule(lr: float, n: int):  # warm-up, then exponential decay over n steps
            return sb.nnet.schedulers.WarmAndExpDecayLRSchedule(
                lr=lr, n_warmup_steps=min(hp.warmup_steps, n - 1), total_steps=n, decay_factor=hp.lr_decay_factor
            )

        self.lr_schedule_g, self.lr_schedule_d = schedule(hp.lr, total), schedule(hp.lr_discriminator, gan_steps)
        self.checkpointer.add_recoverable("lr_schedule_g", self.lr_schedule_g)
        self.checkpointer.add_recoverable("lr_schedule_d", self.lr_schedule_d)
        super().on_fit_start()  # StepPlanned: optimisers, then the latest checkpoint (the plan with it)
        if self.lr_schedule_g.current_step == 0:  # fresh run: warm-up starts from lr 0
            self.lr_schedule_g(self.optimizer_g)
            self.lr_schedule_d(self.optimizer_d)
        g = sum(p.numel() for p in self.generator.parameters())
        d = sum(p.numel() for p in self.discriminator.parameters())
        logger.info(
            "Vocoder: generator %.3f M parameters, discriminator %.3f M; learning rates decay over %d steps "
            "(%d per epoch), GAN from step %d; %s",
            g / 1e6,
            d / 1e6,
            total,
            per_epoch,
            hp.gan_start_step,
            json.dumps(self.data_stats),
        )

    def on_stage_start(self, stage, epoch=None):
        self._acc = defaultdict(float)
        self._t0 = time.time()
        if stage == sb.Stage.TRAIN and self.train_cropper is not None:
            self.train_cropper.epoch = int(epoch or 0)

    # ---- training ------------------------------------------------------------------------
    def _disc_crop(self, y, y_hat):
        """The same random window of real and generated audio for the discriminator."""
        n = int(self.hparams.disc_segment_samples or 0)
        if n <= 0 or n >= y.shape[-1]:
            return y, y_hat
        start = int(torch.randint(0, y.shape[-1] - n + 1, (1,)))
        return y[..., start : start + n], y_hat[..., start : start + n]

    def _step(self, optimizer, loss, params, schedule):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, self.hparams.max_grad_norm)
        if self.skip_nonfinite_grads:
            self.check_gradients()
        optimizer.step()
        schedule(optimizer)

    def fit_batch(self, batch):
        hp = self.hparams
        batch = batch.to(self.device)
        y = batch.sig.data.unsqueeze(1)  # [B, 1, N]
        y_hat, mag_hat, phase_hat = self.modules.generator(batch.mel.data, spectrum=True)
        y_hat = y_hat.unsqueeze(1)  # [B, 1, N]
        gan = self.optimizer_step >= hp.gan_start_step
        acc = self._acc
        if gan:  # 1) discriminator step on real vs detached generated audio
            yd, yd_hat = self._disc_crop(y, y_hat)
            # One call on both halves: under DDP each forward of a wrapped module must be followed
            # by its own backward before the next forward.
            n = yd.shape[0]
            scores, _ = self.modules.discriminator(torch.cat([yd_hat.detach(), yd]))
            scores_fake, scores_real = [s[:n] for s in scores], [s[n:] for s in scores]
            d_loss = hp.discriminator_loss(scores_fake, scores_real)["D_loss"]
            if _finite_on_every_rank(d_loss):
                self._step(self.optimizer_d, d_loss, self.discriminator.parameters(), self.lr_schedule_d)
                acc["d_loss"] += float(d_loss.detach())
                acc["gan_steps"] += 1
            else:
                acc["nonfinite"] += 1
                self.check_loss_isfinite(d_loss)
            # 2) generator losses through the (updated) discriminator, called without its DDP
            # wrapper: the discriminator gradients of this pass are never used (the next
            # discriminator step starts from zero), so no rank waits to reduce them.
            scores_fake, feats_fake = self.discriminator(yd_hat)
            with torch.no_grad():
                _, feats_real = self.discriminator(yd)
            losses = hp.generator_loss(
                sb.Stage.TRAIN, y_hat=y_hat, y=y, scores_fake=scores_fake, feats_fake=feats_fake, feats_real=feats_real
            )
        else:
            losses = hp.generator_loss(sb.Stage.TRAIN, y_hat=y_hat, y=y)
        loss = losses["G_loss"]
        if hp.phase_loss_weight:
            phase_loss = self.phase_loss(phase_hat, y)
            loss = loss + hp.phase_loss_weight * phase_loss
            acc["phase"] += float(phase_loss.detach())
        if hp.amplitude_loss_weight or hp.consistency_loss_weight:
            amplitude, consistency = self.spectrum_loss(mag_hat, phase_hat, y_hat, y)
            loss = loss + hp.amplitude_loss_weight * amplitude + hp.consistency_loss_weight * consistency
            acc["amplitude"] += float(amplitude.detach())
            acc["consistency"] += float(consistency.detach())
        stepped = _finite_on_every_rank(loss)
        if stepped:
            self._step(self.optimizer_g, loss, self.generator.parameters(), self.lr_schedule_g)
            self.optimizer_step += 1
            acc["n"] += 1
            acc["mel"] += float(losses["G_l1_spec_loss"].detach())
            acc["loss"] += float(loss.detach())
            if gan:
                acc["adv"] += float(losses["G_mse_fake_loss"].detach())
                acc["fm"] += float(losses["G_feat_match_loss"].detach())
            acc["audio_s"] += y.shape[0] * y.shape[-1] / MelConfig().sample_rate
        else:
            acc["nonfinite"] += 1
            self.check_loss_isfinite(loss)  # raises after nonfinite_patience
        if hp.log_interval and self.optimizer_step % hp.log_interval == 0 and acc["n"]:
            logger.info("step %d (epoch step %d): %s", self.optimizer_step, self.step, json.dumps(self._summary()))
        self.on_fit_batch_end(batch, None, loss, stepped)  # StepPlanned times the steps here
        return loss.detach().cpu()

    # ---- validation ----------------------------------------------------------------------
    def evaluate_batch(self, batch, stage):
        batch = batch.to(self.device)
        y = batch.sig.data.unsqueeze(1)
        y_hat = self.generator(batch.mel.data).unsqueeze(1)
        mel = self.frontend_mel_loss(y_hat, y)  # log-mel L1 at the frontend's resolution
        acc = self._acc
        acc["n"] += 1
        acc["mel_l1"] += float(mel)
        acc["mel"] += float(self.hparams.mel_loss(y_hat, y))
        budget = int(self.hparams.valid_pesq_utts)
        for ref, deg in zip(y[:, 0], y_hat[:, 0]):
            if acc["pesq_n"] >= budget:
                break
            score = pesq_wb(ref, deg, MelConfig().sample_rate)
            if not math.isnan(score):
                acc["pesq"] += score
                acc["pesq_n"] += 1
        return mel.detach().cpu()

    def _summary(self) -> dict:
        a = self._acc
        n = max(1.0, a["n"])
        s = {k: a[k] / n for k in ("loss", "mel", "mel_l1", "phase", "amplitude", "consistency") if k in a}
        if a["gan_steps"]:
            s.update(adv=a["adv"] / a["gan_steps"], fm=a["fm"] / a["gan_steps"], d_loss=a["d_loss"] / a["gan_steps"])
        if a["pesq_n"]:
            s["pesq_wb"] = a["pesq"] / a["pesq_n"]
        elapsed = max(1e-9, time.time() - self._t0)
        s.update(
            steps=int(a["n"]),
            gan_steps=int(a["gan_steps"]),
            steps_per_s=a["n"] / elapsed,
            audio_s_per_s=a["audio_s"] / elapsed,
            nonfinite_skipped=int(a["nonfinite"]),
        )
        return s

    def on_stage_end(self, stage, stage_loss, epoch=None):
        summary = self._summary()
        if stage == sb.Stage.TRAIN:
            self.train_stats = summary
            return
        if stage != sb.Stage.VALID:
            self.test_stats = summary
            return
        minutes = (time.time() - self.t_start) / 60
        meta = {
            "epoch": epoch,
            "lr_g": self.optimizer_g.param_groups[0]["lr"],
            "lr_d": self.optimizer_d.param_groups[0]["lr"],
            "optimizer_step": self.optimizer_step,
            "minutes": minutes,
        }
        self.hparams.train_logger.log_stats(stats_meta=meta, train_stats=self.train_stats, valid_stats=summary)
        self.plan(epoch)  # the steps that fit max_train_minutes; the epoch limit shrinks with them
        # Short epochs (a small set, a fast device) would spend much of their time writing the
        # generator + discriminator + both optimisers: checkpoint every N epochs, and always at
        # the last epoch (the one the plan ends in included).
        every = max(1, int(getattr(self.hparams, "checkpoint_every_epochs", 1) or 1))
        if epoch % every == 0 or epoch >= self.hparams.epoch_counter.limit:
            self.checkpointer.save_and_keep_only(meta={"mel_l1": summary["mel_l1"], "epoch": epoch}, num_to_keep=2)
        if sb.utils.distributed.if_main_process():
            with open(os.path.join(self.hparams.exp_dir, "train_stats.jsonl"), "a", encoding="utf-8") as fh:
                fh.write(json.dumps({**meta, "train": self.train_stats, "valid": summary}) + "\n")
