"""The mel frontend (paper Appendix D.3) and global mean/variance normalisation.

One module, used by feature dumping, training, the vocoder and ``Tokenizer`` at inference:

    24 kHz audio -> STFT (n_fft = win = 1920 = 80 ms, hop 480 = 20 ms, Hann)
    -> |STFT| (magnitude) -> 128 mel bins over 0-12 kHz (Slaney scale and area norm)
    -> natural log with floor 1e-5 -> [T, 128] at 50 frames/s

Framing: the waveform is right-padded with zeros to a multiple of the hop, then reflect-padded
by (n_fft - hop) / 2 on both sides, and framed without centring, so an utterance of N samples
gives exactly T = ceil(N / hop) frames and frame k is centred on sample k * hop + hop / 2.
A vocoder that inverts these frames returns T * hop samples.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F

from sitok.checks import check_fields, unknown_fields
from sitok.fileio import write_text_atomic


@dataclass(frozen=True)
class MelConfig:
    sample_rate: int = 24000
    n_fft: int = 1920
    win_length: int = 1920
    hop_length: int = 480
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float = 12000.0
    power: float = 1.0  # 1 = magnitude mel (paper), 2 = power mel
    log_floor: float = 1e-5
    mel_scale: str = "slaney"
    mel_norm: str | None = "slaney"

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    def num_frames(self, num_samples: int) -> int:
        return math.ceil(num_samples / self.hop_length)

    @classmethod
    def from_dict(cls, d: dict | None) -> MelConfig:
        """A mel config from plain data (a model directory's config.json), range-checked."""
        d = d or {}
        if not isinstance(d, dict) or unknown_fields(cls, d):
            raise ValueError(f"MelConfig: expected a mapping of {[f.name for f in fields(cls)]}, got {d!r}")
        cfg = cls(**d)
        sizes = (1, 65536)
        check_fields(
            "MelConfig",
            cfg,
            ints=dict(sample_rate=(1, 768000), n_fft=(2, 65536), win_length=sizes, hop_length=sizes, n_mels=(1, 4096)),
            floats=dict(f_min=(0.0, 384000.0), f_max=(0.0, 384000.0), power=(0.1, 10.0), log_floor=(1e-30, 1.0)),
            choices={"mel_scale": ("slaney", "htk"), "mel_norm": ("slaney", None)},
        )
        if cfg.win_length > cfg.n_fft:
            raise ValueError(f"MelConfig: win_length {cfg.win_length} must not exceed n_fft {cfg.n_fft}")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


def mel_filterbank(cfg: MelConfig) -> torch.Tensor:
    """[n_fft // 2 + 1, n_mels] triangular filters (torchaudio's implementation)."""
    import torchaudio.functional as AF

    n_freqs = cfg.n_fft // 2 + 1
    return AF.melscale_fbanks(n_freqs, cfg.f_min, cfg.f_max, cfg.n_mels, cfg.sample_rate, cfg.mel_norm, cfg.mel_scale)


class MelFrontend(torch.nn.Module):
    """wav [B, N] (or [N]) at ``cfg.sample_rate`` -> log-mel [B, T, n_mels] (or [T, n_mels])."""

    def __init__(self, cfg: MelConfig | None = None):
        super().__init__()
        self.cfg = cfg or MelConfig()
        self.register_buffer("window", torch.hann_window(self.cfg.win_length), persistent=False)
        self.register_buffer("fbank", mel_filterbank(self.cfg), persistent=False)

    def num_frames(self, num_samples):
        """Frames for a sample count (int or LongTensor of lengths)."""
        hop = self.cfg.hop_length
        if isinstance(num_samples, torch.Tensor):
            return torch.div(num_samples + hop - 1, hop, rounding_mode="floor")
        return self.cfg.num_frames(int(num_samples))

    @torch.no_grad()
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        squeeze = wav.dim() == 1
        x = wav.unsqueeze(0) if squeeze else wav  # [B, N]
        n = x.shape[-1]
        if n == 0:
            raise ValueError("MelFrontend: empty waveform")
        x = F.pad(x, (0, (-n) % cfg.hop_length))  # to a multiple of the hop
        side = (cfg.n_fft - cfg.hop_length) // 2
        mode = "reflect" if x.shape[-1] > side else "constant"
        x = F.pad(x.unsqueeze(1), (side, side), mode=mode).squeeze(1)
        mel = self.log_mel_of_padded(x)
        return mel[0] if squeeze else mel

    @torch.no_grad()
    def log_mel_of_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Samples already padded as ``forward`` pads them [B, N] -> log-mel [B, T, n_mels] of the
        frames that fit (a streaming encoder feeds it slices of the padded signal)."""
        cfg = self.cfg
        spec = torch.stft(
            x.float(), cfg.n_fft, cfg.hop_length, cfg.win_length, self.window, center=False, return_complex=True
        ).abs()  # [B, F, T]
        if cfg.power != 1.0:
            spec = spec.pow(cfg.power)
        mel = torch.matmul(spec.transpose(1, 2), self.fbank)  # [B, T, n_mels]
        return torch.log(torch.clamp(mel, min=cfg.log_floor))


# ---------------------------------------------------------------------------------------
# Global mean / variance normalisation
# ---------------------------------------------------------------------------------------

PAPER_MEAN = -4.92
PAPER_VAR = 8.14


@dataclass
class CMVNStats:
    """Sufficient statistics of log-mel frames: count, per-bin sum and sum of squares."""

    count: int = 0
    sum: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sum_sq: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def add(self, mel) -> None:
        """Accumulate frames ``mel`` [T, D] (numpy or torch)."""
        m = mel.detach().cpu().double().numpy() if isinstance(mel, torch.Tensor) else np.asarray(mel, np.float64)
        if self.count == 0 and self.sum.size == 0:
            self.sum = np.zeros(m.shape[-1])
            self.sum_sq = np.zeros(m.shape[-1])
        self.count += m.shape[0]
        self.sum += m.sum(0)
        self.sum_sq += (m * m).sum(0)

    def merge(self, other: CMVNStats) -> CMVNStats:
        if other.count == 0:
            return self
        if self.count == 0:
            return CMVNStats(other.count, other.sum.copy(), other.sum_sq.copy())
        return CMVNStats(self.count + other.count, self.sum + other.sum, self.sum_sq + other.sum_sq)

    def to_dict(self) -> dict:
        return {"count": int(self.count), "sum": self.sum.tolist(), "sum_sq": self.sum_sq.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> CMVNStats:
        return cls(int(d["count"]), np.asarray(d["sum"], np.float64), np.asarray(d["sum_sq"], np.float64))


class GlobalCMVN(torch.nn.Module):
    """(mel - mean) / std with one scalar mean/var over all bins (``mode="global"``, the
    paper's choice) or one per mel bin (``mode="per_bin"``). Statistics are data, saved as
    JSON beside the model, so the exact normalisation travels with it."""

    def __init__(self, mean, var, mode: str = "global", stats: CMVNStats | None = None):
        super().__init__()
        self.mode = mode
        self.stats = stats
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(-1))
        self.register_buffer("std", torch.as_tensor(var, dtype=torch.float32).reshape(-1).sqrt())

    @classmethod
    def paper(cls) -> GlobalCMVN:
        """The paper's statistics (mean -4.92, variance 8.14)."""
        return cls(PAPER_MEAN, PAPER_VAR, "global")

    @classmethod
    def from_stats(cls, stats: CMVNStats, mode: str = "global", var_floor: float = 1e-6) -> GlobalCMVN:
        if stats.count == 0:
            raise ValueError("GlobalCMVN.from_stats: no frames were accumulated")
        if mode == "global":
            n = stats.count * stats.sum.size
            mean = stats.sum.sum() / n
            var = stats.sum_sq.sum() / n - mean**2
        elif mode == "per_bin":
            mean = stats.sum / stats.count
            var = stats.sum_sq / stats.count - mean**2
        else:
            raise ValueError(f"GlobalCMVN: unknown mode {mode!r} (global|per_bin)")
        return cls(mean, np.maximum(var, var_floor), mode, stats)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return (mel - self.mean) / self.std

    def inverse(self, mel_norm: torch.Tensor) -> torch.Tensor:
        return mel_norm * self.std + self.mean

    # ---- persistence: plain JSON -------------------------------------------------------
    def to_dict(self) -> dict:
        d = {"mode": self.mode, "mean": self.mean.tolist(), "var": (self.std**2).tolist()}
        if self.stats is not None:
            d["stats"] = self.stats.to_dict()
        return d

    def save(self, path: str) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str) -> GlobalCMVN:
        """Read a cmvn.json; a malformed one is a ValueError naming the file."""
        with open(path, encoding="utf-8") as fh:
            try:
                d = json.load(fh)
            except ValueError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc})") from None
        try:
            stats = CMVNStats.from_dict(d["stats"]) if "stats" in d else None
            mean, var = np.asarray(d["mean"], dtype=np.float64), np.asarray(d["var"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not CMVN statistics (mean, var): {exc!r}") from None
        return cls(mean, var, d.get("mode", "global"), stats)
