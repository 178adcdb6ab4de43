"""Long-audio segmentation: cut a long recording (LibriLight, Emilia) into utterances no longer than
a cap, in its silences, so that recordings over the data dir's duration limit can be used.

    segments = segment_speech(wav, 16000, SegmentConfig(max_segment=20.0))  # [(start_s, end_s), ...]

Every backend gives one speech / non-speech decision per frame; the rest is shared:

1. speech frames are grouped into regions;
2. regions separated by a silence shorter than ``min_gap`` become one region (pauses inside a
   sentence do not end it);
3. each region is padded by ``pad`` seconds on both sides (never into its neighbour: two pads
   that would meet stop at the middle of the silence);
4. a region still longer than ``max_segment`` is cut at its quietest frame, again and again,
   into contiguous pieces: no speech is ever dropped.

Backends:
* ``energy`` (default): frame energy against a threshold set per recording from its own noise
  floor and speech level; no weights, numpy only. It assumes the recording has pauses (a
  recording that is speech from end to end has no noise floor to measure: use ``silero``);
* ``silero``: the Silero VAD network from the ``silero-vad`` package, whose weights ship inside the
  package (nothing is downloaded); run with onnxruntime on 16 kHz audio.

:func:`load_segment` reads the slice ``[start, end)`` of a recording without decoding the rest
(the features stage reads the utterances of a ``segments`` table with it).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import soundfile as sf

from sitok.data.audio import AudioError, probe_audio, resample

BACKENDS = ("energy", "silero")
SILERO_RATE = 16000
SILERO_HOP = 512  # samples per Silero decision at 16 kHz (32 ms)


@dataclass(frozen=True)
class SegmentConfig:
    max_segment: float = 20.0  # seconds: no segment is longer
    backend: str = "energy"  # "energy" or "silero"
    min_gap: float = 0.5  # seconds: a shorter silence does not separate two speech regions
    pad: float = 0.15  # seconds of context kept before and after speech
    frame: float = 0.01  # seconds per energy frame (the energy backend's resolution)
    energy_margin_db: float = 10.0  # speech is at least this far above the noise floor ...
    energy_range_db: float = 45.0  # ... and at most this far below the loud speech level
    silero_threshold: float = 0.5  # Silero speech probability at or above which a frame is speech

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"segment backend {self.backend!r}: expected one of {BACKENDS}")
        if self.max_segment <= 2 * self.pad:
            raise ValueError(f"max_segment {self.max_segment:g}s must exceed twice the pad ({self.pad:g}s)")


def segment_speech(wav, sample_rate: int, cfg: SegmentConfig | None = None) -> list[tuple[float, float]]:
    """Speech segments of a mono waveform ``wav`` [N] (numpy or torch) as (start, end) seconds,
    sorted, not overlapping, each at most ``cfg.max_segment`` long. [] when nothing is speech."""
    cfg = cfg or SegmentConfig()
    wav = np.asarray(wav.detach().cpu() if hasattr(wav, "detach") else wav, dtype=np.float32).reshape(-1)
    if wav.size == 0:
        return []
    if cfg.backend == "silero":
        wav = np.asarray(resample(_as_tensor(wav), sample_rate, SILERO_RATE), dtype=np.float32)
        sample_rate, hop = SILERO_RATE, SILERO_HOP
        energy = frame_energy_db(wav, hop)  # [F]
        speech = silero_speech_prob(wav)[: len(energy)] >= cfg.silero_threshold  # [F]
    else:
        hop = max(1, round(cfg.frame * sample_rate))
        energy = frame_energy_db(wav, hop)  # [F]
        speech = energy_speech(energy, cfg)  # [F]

    frame_s = hop / sample_rate
    regions = speech_regions(speech)
    regions = merge_close(regions, min_gap=math.ceil(cfg.min_gap / frame_s))
    regions = pad_regions(regions, pad=round(cfg.pad / frame_s), n_frames=len(energy))
    cap = int(cfg.max_segment / frame_s + 1e-9)  # frames
    pieces = [p for r in regions for p in split_at_quietest(r, energy, cap)]
    n = len(wav)
    return [(a * hop / sample_rate, min(b * hop, n) / sample_rate) for a, b in pieces]


# ---------------------------------------------------------------------------------------
# Frame decisions (the backends)
# ---------------------------------------------------------------------------------------
def frame_energy_db(wav: np.ndarray, hop: int) -> np.ndarray:
    """Mean power (dB) of consecutive frames of ``hop`` samples; the last frame may be shorter."""
    n_frames = math.ceil(len(wav) / hop)
    padded = np.zeros(n_frames * hop, dtype=np.float32)  # float32: an hour of audio stays small
    padded[: len(wav)] = wav
    power = np.square(padded.reshape(n_frames, hop)).mean(axis=1, dtype=np.float64)
    if len(wav) % hop:  # the zeros of the last frame are not signal
        power[-1] *= hop / (len(wav) % hop)
    return 10 * np.log10(power + 1e-10)


def energy_speech(energy_db: np.ndarray, cfg: SegmentConfig) -> np.ndarray:
    """Speech frames by energy: above the noise floor (10th percentile) by ``energy_margin_db``
    and within ``energy_range_db`` of the speech level (95th percentile)."""
    floor, level = np.percentile(energy_db, [10, 95])
    threshold = max(floor + cfg.energy_margin_db, level - cfg.energy_range_db)
    return energy_db > threshold


def _as_tensor(wav: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(wav))


@lru_cache(maxsize=1)
def _silero_model():
    """The packaged Silero VAD (ONNX). Importing ``silero_vad`` sets torch's thread count to 1:
    the caller's setting is put back."""
    import torch

    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad
    except ImportError as exc:
        raise ImportError(
            f"segment backend 'silero' needs the silero-vad package ({exc}); "
            "install tools/requirements.txt or use the 'energy' backend"
        ) from None
    finally:
        torch.set_num_threads(threads)
    with warnings.catch_warnings():  # the package locates its model file with a deprecated call
        warnings.simplefilter("ignore", DeprecationWarning)
        return load_silero_vad(onnx=True)


def silero_speech_prob(wav16k: np.ndarray, block: float = 30.0) -> np.ndarray:
    """Silero speech probability of each ``SILERO_HOP``-sample frame of 16 kHz audio [F].

    The audio is read as parallel streams of ``block`` seconds (one batch row each, the model's
    state starting afresh at each block, as at the start of a file): one model call per frame
    of a block instead of one per frame of the recording."""
    import torch

    n_frames = math.ceil(len(wav16k) / SILERO_HOP)
    per_block = math.ceil(block * SILERO_RATE / SILERO_HOP)  # frames per stream
    n_blocks = math.ceil(n_frames / per_block)
    x = np.zeros(n_blocks * per_block * SILERO_HOP, dtype=np.float32)
    x[: len(wav16k)] = wav16k
    x = x.reshape(n_blocks, per_block, SILERO_HOP)  # [B, K, hop]
    model = _silero_model()
    model.reset_states(n_blocks)
    with torch.no_grad():
        prob = [model(_as_tensor(x[:, k]), SILERO_RATE) for k in range(per_block)]  # K x [B, 1]
    return torch.cat(prob, dim=1).reshape(-1).numpy()[:n_frames]  # [B, K] -> [F], in time order


# ---------------------------------------------------------------------------------------
# From frame decisions to segments (frame indices, end exclusive)
# ---------------------------------------------------------------------------------------
def speech_regions(speech: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True in ``speech`` as (first, last + 1) frame pairs."""
    edges = np.diff(np.concatenate([[0], speech.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(int(a), int(b)) for a, b in zip(starts, ends)]


def merge_close(regions: list[tuple[int, int]], min_gap: int) -> list[tuple[int, int]]:
    """Join regions whose silence in between is shorter than ``min_gap`` frames."""
    merged: list[tuple[int, int]] = []
    for a, b in regions:
        if merged and a - merged[-1][1] < min_gap:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


def pad_regions(regions: list[tuple[int, int]], pad: int, n_frames: int) -> list[tuple[int, int]]:
    """Widen each region by ``pad`` frames on both sides, within the recording and never past the
    middle of the silence that separates it from a neighbour."""
    padded = []
    for i, (a, b) in enumerate(regions):
        lo, hi = max(0, a - pad), min(n_frames, b + pad)
        if i > 0:
            lo = max(lo, (regions[i - 1][1] + a) // 2)
        if i + 1 < len(regions):
            hi = min(hi, (b + regions[i + 1][0]) // 2)
        padded.append((lo, hi))
    return padded


def split_at_quietest(region: tuple[int, int], energy_db: np.ndarray, cap: int) -> list[tuple[int, int]]:
    """Cut ``region`` into contiguous pieces of at most ``cap`` frames, each cut at the quietest
    frame allowed: the piece on the left of a cut may not exceed the cap; when the rest fits in
    two pieces, neither may the one on the right; otherwise the left piece is at least half a cap
    long, so that no piece is needlessly short."""
    start, end = region
    pieces = []
    while end - start > cap:
        hi = start + cap  # the cut frame starts the right piece: the left one is [start, hi) at most
        lo = end - cap if end - start <= 2 * cap else start + cap // 2
        lo = max(lo, start + 1)  # a cut always moves forward
        cut = lo + int(np.argmin(energy_db[lo : hi + 1]))
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


# ---------------------------------------------------------------------------------------
# Reading one segment of a recording
# ---------------------------------------------------------------------------------------
def load_segment(
    path: str,
    start: float,
    end: float,
    sample_rate: int = 24000,
    *,
    min_duration: float = 0.0,
    max_duration: float = math.inf,
    silence_peak: float = 1e-4,
):
    """The slice [``start``, ``end``) seconds of ``path`` as a mono float32 tensor [N] at
    ``sample_rate``; only that slice is decoded. Raises :class:`AudioError` (naming the file and
    the slice) for the same problems as :func:`sitok.data.audio.load_audio`."""
    info = probe_audio(path)
    where = f"{path} [{start:.3f}, {end:.3f}]"
    if not 0 <= start < end:
        raise AudioError(where, "bad-segment", "a segment needs 0 <= start < end")
    if end - start > max_duration:
        raise AudioError(where, "too-long", f"{end - start:.2f}s > {max_duration:g}s")
    first, stop = round(start * info.sample_rate), min(round(end * info.sample_rate), info.num_frames)
    try:
        data, sr = sf.read(path, start=first, stop=max(first, stop), dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(where, "unreadable", str(exc).strip().splitlines()[-1][:200]) from None
    data = data.mean(axis=1)  # [N, C] -> [N]
    if data.size == 0:
        raise AudioError(where, "no-samples", f"the recording ends at {info.duration:.3f}s")
    if not np.isfinite(data).all():
        raise AudioError(where, "non-finite", f"{int((~np.isfinite(data)).sum())} NaN/Inf samples")
    if data.size / sr < min_duration:
        raise AudioError(where, "too-short", f"{data.size / sr:.3f}s < {min_duration:g}s")
    peak = float(np.abs(data).max())
    if peak < silence_peak:
        raise AudioError(where, "silent", f"peak {peak:.2e} < {silence_peak:g}")
    return resample(_as_tensor(data), sr, sample_rate)
