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

import torch
from speechbrain.nnet.schedulers import WarmAndExpDecayLRSchedule
from speechbrain.utils import checkpoints as sb_checkpoints


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
