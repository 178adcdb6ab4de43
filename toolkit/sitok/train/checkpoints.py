"""SpeechBrain checkpoints loaded as data: no file in ``<exp_dir>/save`` can run code.

An experiment directory may come from someone else (copied to resume or to export it). SpeechBrain's
default loaders call ``torch.load(path)`` without ``weights_only``: torch >= 2.6 then reads data
only, but older torch, or TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1, unpickles arbitrary objects, which
can run any code. ``use_weights_only_loaders()`` replaces the default load hooks of every kind of
recoverable the sitok recipes checkpoint with loaders that pass ``weights_only=True``:

    torch modules, optimisers, LR schedulers, grad scalers   state dicts
    speechbrain.nnet.schedulers.WarmAndExpDecayLRSchedule    a dict of numbers

The other recoverables (epoch counter, Brain step counter, data loader position) are text or
``yaml.safe_load``; sitok's own (``RNGState``, ``TrainingPlan``) load with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time

import torch
from speechbrain.nnet.schedulers import WarmAndExpDecayLRSchedule
from speechbrain.utils import checkpoints as sb_checkpoints
from speechbrain.utils.distributed import ddp_barrier, if_main_process


def load_state(path) -> dict:
    """A checkpoint file's state dict, read as data (tensors, numbers, strings, containers)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _state_dict_loader(obj, path, end_of_epoch=True):
    state = load_state(path)
    if isinstance(obj, torch.nn.Module):  # SpeechBrain's key renames of old checkpoints, strict as it is
        obj.load_state_dict(sb_checkpoints.hook_on_loading_state_dict_checkpoint(state), strict=True)
    else:
        obj.load_state_dict(state)


# the attributes WarmAndExpDecayLRSchedule.save writes (speechbrain 1.x)
_WARM_EXP_KEYS = ("base_lr", "n_warmup_steps", "decay_factor", "decay_steps", "current_step")


def _warm_exp_loader(obj, path, end_of_epoch=True):
    data = load_state(path)
    missing = [k for k in _WARM_EXP_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path}: not a WarmAndExpDecayLRSchedule checkpoint (no {missing[0]})")
    for k in _WARM_EXP_KEYS:
        setattr(obj, k, data[k])


def use_weights_only_loaders() -> None:
    """Make SpeechBrain's checkpointer load every torch-pickled recoverable with ``weights_only=True``
    (process-wide; idempotent)."""
    hooks = sb_checkpoints.DEFAULT_LOAD_HOOKS
    kinds = [
        torch.nn.Module,
        torch.optim.Optimizer,
        torch.optim.lr_scheduler.LRScheduler,
        torch.optim.lr_scheduler.ReduceLROnPlateau,
        torch.amp.GradScaler,
    ]
    for cls in kinds:
        hooks[cls] = _state_dict_loader
    hooks[WarmAndExpDecayLRSchedule] = _warm_exp_loader


class AtomicCheckpointer(sb_checkpoints.Checkpointer):
    """A SpeechBrain Checkpointer whose checkpoints appear complete or not at all.

    SpeechBrain writes a checkpoint's meta file (CKPT.yaml) first and the recoverables after it, so
    a run killed while saving leaves a listed checkpoint with a truncated file that the next run
    fails to load. Here the meta file is written last, atomically: a directory without it is not a
    checkpoint to SpeechBrain, and such leftovers are removed at the next save."""

    def _save_checkpoint_metafile(self, fpath, meta_to_include=None, end_of_epoch=True):
        self._pending_meta = (fpath, dict(meta_to_include or {}), end_of_epoch)
        return {"unixtime": time.time(), "end-of-epoch": end_of_epoch, **(meta_to_include or {})}

    def save_checkpoint(self, *args, **kwargs):
        leftovers = self.checkpoints_dir.iterdir() if self.checkpoints_dir.exists() and if_main_process() else ()
        for d in leftovers:  # on the main process only: another rank may be filling a new directory
            if (
                d.is_dir()
                and d.name.startswith(sb_checkpoints.CKPT_PREFIX)
                and not (d / sb_checkpoints.METAFNAME).exists()
            ):
                shutil.rmtree(d, ignore_errors=True)  # a save that was killed before it completed
        self._pending_meta = None
        ckpt = super().save_checkpoint(*args, **kwargs)
        if self._pending_meta is not None:
            fpath, meta, end_of_epoch = self._pending_meta
            tmp = fpath.with_name(fpath.name + ".tmp")
            super()._save_checkpoint_metafile(tmp, meta, end_of_epoch)
            os.replace(tmp, fpath)
        # every rank lists the checkpoints next (to delete old ones, one collective per deletion):
        # none may read the directory before the main process has made this one complete
        ddp_barrier()
        return ckpt


def atomic_checkpointer(ckpt: sb_checkpoints.Checkpointer) -> AtomicCheckpointer:
    """``ckpt`` as an AtomicCheckpointer: the same directory, recoverables and hooks, its meta file
    written last (needed when a recoverable is saved by every rank: the checkpoint must not be
    listed before the last rank has finished writing)."""
    if isinstance(ckpt, AtomicCheckpointer):
        return ckpt
    atomic = AtomicCheckpointer(ckpt.checkpoints_dir, allow_partial_load=ckpt.allow_partial_load)
    for name, obj in ckpt.recoverables.items():
        atomic.add_recoverable(
            name,
            obj,
            custom_load_hook=ckpt.custom_load_hooks.get(name),
            custom_save_hook=ckpt.custom_save_hooks.get(name),
            optional_load=ckpt.optional_recoverables.get(name, False),
        )
    return atomic


_EPOCH_LINE = re.compile(r"^epoch: (\d+)\b")


def _epoch_of(line: str) -> int | None:
    if line.startswith("{"):
        try:
            epoch = json.loads(line).get("epoch")
        except (ValueError, AttributeError):
            return None
        return epoch if isinstance(epoch, int) else None
    m = _EPOCH_LINE.match(line)
    return int(m.group(1)) if m else None


def forget_epochs_after(epoch: int, *paths) -> None:
    """Drop the lines of epochs after ``epoch`` from per-epoch logs (SpeechBrain's ``train_log.txt``
    lines ``epoch: N, ...`` or JSON lines with an ``"epoch"`` key), rewriting each file atomically.

    An epoch is logged just before its checkpoint is saved; a run killed between the two redoes
    that epoch when it resumes, and without this its log would hold the epoch twice. Called on the
    main process after the checkpoint is recovered; lines without an epoch number are kept."""
    if not if_main_process():
        return
    for path in paths:
        if not path or not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as fh:
            lines = fh.readlines()
        kept = [line for line in lines if (_epoch_of(line) or 0) <= epoch]
        if len(kept) == len(lines):
            continue
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(kept)
        os.replace(tmp, path)


def forget_unsaved_epochs(brain) -> None:
    """``forget_epochs_after`` for a SpeechBrain Brain just after it recovered its last checkpoint:
    its train logger's file and ``<exp_dir>/train_stats.jsonl`` keep the epochs the checkpoint holds."""
    hp = brain.hparams
    log = getattr(getattr(hp, "train_logger", None), "save_file", None)
    exp_dir = getattr(hp, "exp_dir", None)
    stats = os.path.join(exp_dir, "train_stats.jsonl") if exp_dir else None
    forget_epochs_after(hp.epoch_counter.current, log, stats)
