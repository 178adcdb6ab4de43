"""Robust audio loading: every recipe stage reads audio through :func:`load_audio`.

Usable input is repaired (other sample rates are resampled, multi-channel audio is
down-mixed); unusable input raises :class:`AudioError`, whose message names the file and
the reason, so that a stage can skip it, count it and list it in its log. Usable but damaged
input (a data chunk cut short) is read as far as it goes and warns with :class:`AudioWarning`.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from sitok.fileio import atomic_open

if TYPE_CHECKING:
    import torch


class AudioError(ValueError):
    """An audio file that cannot be used. ``reason`` is a short machine-friendly tag."""

    def __init__(self, path: str, reason: str, detail: str = ""):
        self.path, self.reason, self.detail = str(path), reason, detail
        msg = f"{path}: {reason}"
        super().__init__(f"{msg} ({detail})" if detail else msg)


class AudioWarning(UserWarning):
    """Audio that is used but damaged (e.g. truncated); the message names the file."""


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    num_frames: int
    channels: int
    truncated: str = ""  # libsndfile's note when the data chunk is shorter than its header declares

    @property
    def duration(self) -> float:
        return self.num_frames / self.sample_rate


def probe_audio(path: str) -> AudioInfo:
    """Read the header only (cheap). Raises AudioError for missing, empty or non-audio files."""
    if not os.path.exists(path):
        raise AudioError(path, "missing", "no such file")
    if os.path.isdir(path):
        raise AudioError(path, "not-a-file", "is a directory")
    if os.path.getsize(path) == 0:
        raise AudioError(path, "empty-file", "0 bytes")
    try:
        info = sf.info(path)
    except Exception as exc:  # libsndfile: not audio, truncated header, unknown format
        raise AudioError(path, "unreadable", str(exc).strip().splitlines()[-1][:200]) from None
    if info.frames <= 0:
        raise AudioError(path, "no-samples", "header declares 0 frames")
    # libsndfile reads a cut-short data chunk as far as it goes and logs "data : <declared> (should be <present>)"
    cut = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", info.extra_info or "", re.MULTILINE)
    truncated = f"the header declares {cut[1]} data bytes, the file holds {cut[2]}" if cut else ""
    return AudioInfo(int(info.samplerate), int(info.frames), int(info.channels), truncated)


@lru_cache(maxsize=16)
def _resampler(orig_sr: int, new_sr: int):
    import torch
    import torchaudio

    return torchaudio.transforms.Resample(orig_sr, new_sr, dtype=torch.float32)


def resample(wav, orig_sr: int, new_sr: int):
    """Band-limited resampling of ``wav`` [..., N]; the filter is built once per rate pair."""
    if orig_sr == new_sr:
        return wav
    return _resampler(int(orig_sr), int(new_sr))(wav)


def load_audio(
    path: str,
    sample_rate: int = 24000,
    *,
    min_duration: float = 0.0,
    max_duration: float = math.inf,
    silence_peak: float = 1e-4,
) -> torch.Tensor:
    """Load ``path`` as a mono float32 tensor [N] at ``sample_rate``.

    Raises :class:`AudioError` (naming the file) for: missing, empty, unreadable/non-audio,
    truncated to nothing, NaN/Inf samples, digital silence (peak below ``silence_peak``),
    shorter than ``min_duration`` or longer than ``max_duration`` seconds. A file truncated
    inside its data is read as far as it goes, with an :class:`AudioWarning`.
    """
    info = probe_audio(path)
    if info.duration > max_duration:  # decided from the header: never decode huge files
        raise AudioError(path, "too-long", f"{info.duration:.2f}s > {max_duration:g}s")
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=False)
    except Exception as exc:
        raise AudioError(path, "unreadable", str(exc).strip().splitlines()[-1][:200]) from None
    data = np.asarray(data)
    data = data if data.ndim == 1 else data.mean(axis=1)  # [N, C] -> [N] by averaging channels
    if data.size == 0:
        raise AudioError(path, "no-samples", "no sample could be decoded (truncated?)")
    if info.truncated or data.shape[0] < info.num_frames:
        detail = info.truncated or f"the header declares {info.num_frames} frames"
        warnings.warn(
            AudioWarning(f"{path}: truncated ({detail}): read the {data.shape[0]} frames present"), stacklevel=2
        )
    if not np.isfinite(data).all():
        raise AudioError(path, "non-finite", f"{int((~np.isfinite(data)).sum())} NaN/Inf samples")
    duration = data.size / sr
    if duration < min_duration:
        raise AudioError(path, "too-short", f"{duration:.3f}s < {min_duration:g}s")
    if duration > max_duration:
        raise AudioError(path, "too-long", f"{duration:.2f}s > {max_duration:g}s")
    peak = float(np.abs(data).max())
    if peak < silence_peak:
        raise AudioError(path, "silent", f"peak {peak:.2e} < {silence_peak:g}")
    import torch

    wav = torch.from_numpy(np.ascontiguousarray(data))
    return resample(wav, sr, sample_rate)


def write_wav_atomic(path: str, wav, sample_rate: int, subtype: str = "PCM_16") -> None:
    """Write a wav file through a temporary name + rename (never half-written): on any error the
    temporary file is removed and a previous ``path`` is left as it was."""
    if hasattr(wav, "detach"):  # torch.Tensor
        wav = wav.detach().cpu().numpy()
    data = np.asarray(wav, dtype=np.float32)
    with atomic_open(path, "wb") as fh:
        sf.write(fh, data, sample_rate, subtype=subtype, format="WAV")
