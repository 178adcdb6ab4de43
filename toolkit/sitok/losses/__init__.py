"""Losses: flow matching (decoder), masked reconstruction (regression baseline), CTC."""

from sitok.losses.ctc import ctc_loss, ctc_required_frames
from sitok.losses.flow_matching import flow_matching_loss, interpolate, masked_mean, reconstruction_error

__all__ = ["ctc_loss", "ctc_required_frames", "flow_matching_loss", "interpolate", "masked_mean", "reconstruction_error"]
