"""Losses: flow matching (decoder), shortcut fine-tuning, masked reconstruction (regression baseline), CTC."""

from sitok.losses.ctc import ctc_loss, ctc_required_frames
from sitok.losses.flow_matching import flow_matching_loss, interpolate, masked_mean, reconstruction_error
from sitok.losses.shortcut import bootstrap_target, shortcut_loss

__all__ = [
    "bootstrap_target",
    "shortcut_loss",
    "ctc_loss",
    "ctc_required_frames",
    "flow_matching_loss",
    "interpolate",
    "masked_mean",
    "reconstruction_error",
]
