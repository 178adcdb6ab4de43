"""A Vocos-style vocoder: log-mel [B, T, n_mels] -> 24 kHz waveform [B, T * hop].

    log-mel --Conv1d(k=7)--> LayerNorm --> ConvNeXt blocks x L --> LayerNorm
            --Linear--> (log-magnitude, phase) per STFT bin --> inverse STFT --> waveform

ConvNeXt block: depthwise Conv1d(k=7) -> LayerNorm -> Linear(dim, intermediate) -> GELU ->
Linear(intermediate, dim) -> learned per-channel scale (layer scale) -> residual.

The inverse STFT matches the mel frontend (``sitok.data.mel``): n_fft 1920, hop 480, periodic
Hann window, and frame k is centred on output sample k * hop + hop / 2, so T frames give exactly
T * hop samples that line up with the audio the mel was computed from. It is torch.istft's
weighted overlap-add (inverse FFT, window, overlap-add, divide by the summed squared window)
cropped to [n_fft/2 - hop/2, n_fft/2 - hop/2 + T * hop) instead of torch's centred crop, which
would put frame k at sample k * hop and drop the first hop/2 samples.

Two optional priors (config flags, both off = Vocos as published) help a small model trained for
minutes on a CPU: ``magnitude_prior`` adds log(max(pinv(mel filterbank) @ exp(log-mel), 1e-5)),
the least-squares linear spectrum Griffin-Lim starts from, to the predicted log-magnitude (the
network learns a residual); ``integrate_phase`` makes the phase outputs per-frame phase advances
whose running sum is the phase (a learned phase vocoder). The mini recipe uses the first.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sitok.checks import check_fields, unknown_fields
from sitok.data.mel import MelConfig, mel_filterbank


@dataclass
class VocosConfig:
    n_mels: int = 128
    dim: int = 512
    intermediate: int = 1536
    layers: int = 8
    kernel: int = 7
    n_fft: int = 1920
    hop: int = 480
    max_magnitude: float = 1000.0  # exp(log-magnitude) is clipped here (unnormalised STFT scale)
    # Two optional priors that make a small model learn fast (both off = Vocos as published):
    magnitude_prior: bool = False  # predict log|S| as a residual over the mel filterbank's pseudo-inverse
    integrate_phase: bool = False  # predict each frame's phase advance; phase = its running sum

    @classmethod
    def from_dict(cls, d: dict) -> VocosConfig:
        """A config from plain data (a vocoder directory's config.json), range-checked."""
        unknown = unknown_fields(cls, d) if isinstance(d, dict) else d
        if not isinstance(d, dict) or unknown:
            raise ValueError(f"VocosConfig: unknown fields {unknown!r}")
        cfg, dim = cls(**d), (1, 65536)
        ints = dict(
            n_mels=(1, 4096), dim=dim, intermediate=dim, layers=(1, 1024), kernel=(1, 1023), n_fft=(2, 65536), hop=dim
        )
        bools = ("magnitude_prior", "integrate_phase")
        check_fields("VocosConfig", cfg, ints=ints, floats={"max_magnitude": (1e-6, 1e30)}, bools=bools)
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, intermediate: int, kernel: int, layer_scale: float):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, intermediate)
        self.fc2 = nn.Linear(intermediate, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x):  # x: [B, dim, T]
        h = self.dwconv(x).transpose(1, 2)  # [B, T, dim]
        h = self.fc2(F.gelu(self.fc1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class ISTFTHead(nn.Module):
    """Hidden [B, T, dim] -> waveform [B, T * hop] through a predicted complex spectrum.

    With ``integrate_phase`` the phase outputs are per-frame phase advances around the advance of
    a sinusoid at the bin's centre frequency (2 pi b hop / n_fft), and the phase is their running
    sum over frames: a phase vocoder's phase propagation, learned."""

    def __init__(self, dim: int, n_fft: int, hop: int, max_magnitude: float, integrate_phase: bool = False):
        super().__init__()
        self.n_fft, self.hop, self.max_magnitude = n_fft, hop, max_magnitude
        self.integrate_phase = integrate_phase
        self.proj = nn.Linear(dim, n_fft + 2)  # (n_fft/2 + 1) log-magnitudes, as many phases
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
        advance = torch.remainder(2 * math.pi * bins * hop / n_fft, 2 * math.pi)  # exact, then wrapped
        self.register_buffer("bin_advance", advance.float()[:, None], persistent=False)  # [F, 1]

    def forward(self, h, log_mag_prior=None):
        """-> (waveform [B, T * hop], magnitude [B, F, T], phase [B, F, T])."""
        log_mag, phase = self.proj(h).transpose(1, 2).chunk(2, dim=1)  # [B, F, T] each
        if log_mag_prior is not None:
            log_mag = log_mag + log_mag_prior
        if self.integrate_phase:
            phase = torch.cumsum(phase + self.bin_advance, dim=-1)
        mag = torch.exp(log_mag).clamp(max=self.max_magnitude)
        spec = torch.polar(mag, phase)  # mag * (cos + i sin)
        return self.istft(spec), mag, phase

    def istft(self, spec):
        """Complex spectrum [B, n_fft/2 + 1, T] -> waveform [B, T * hop], frame k centred on
        sample k * hop + hop / 2."""
        n_fft, hop = self.n_fft, self.hop
        t = spec.shape[-1]
        frames = torch.fft.irfft(spec, n=n_fft, dim=1) * self.window[None, :, None]  # [B, n_fft, T]
        full = (t - 1) * hop + n_fft
        ola = F.fold(frames, output_size=(1, full), kernel_size=(1, n_fft), stride=(1, hop))  # [B, 1, 1, full]
        win_sq = (self.window**2)[None, :, None].expand(1, n_fft, t)
        env = F.fold(win_sq, output_size=(1, full), kernel_size=(1, n_fft), stride=(1, hop))
        start = n_fft // 2 - hop // 2
        return ola[:, 0, 0, start : start + t * hop] / env[:, 0, 0, start : start + t * hop].clamp(min=1e-11)


class Vocos(nn.Module):
    def __init__(self, config: VocosConfig | dict):
        super().__init__()
        self.config = cfg = VocosConfig.from_dict(config) if isinstance(config, dict) else config
        self.embed = nn.Conv1d(cfg.n_mels, cfg.dim, cfg.kernel, padding=cfg.kernel // 2)
        self.norm_in = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(cfg.dim, cfg.intermediate, cfg.kernel, layer_scale=1.0 / cfg.layers)
            for _ in range(cfg.layers)
        )
        self.norm_out = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.head = ISTFTHead(cfg.dim, cfg.n_fft, cfg.hop, cfg.max_magnitude, cfg.integrate_phase)
        self.apply(self._init_weights)
        if cfg.magnitude_prior:  # the least-squares inverse of our mel filterbank (as Griffin-Lim uses)
            if torch.empty(0).is_meta:  # a shape-only build (sitok.models.loading): nothing to compute
                pinv = torch.empty(cfg.n_mels, cfg.n_fft // 2 + 1)
            else:
                mel = MelConfig(n_fft=cfg.n_fft, win_length=cfg.n_fft, hop_length=cfg.hop, n_mels=cfg.n_mels)
                pinv = torch.linalg.pinv(mel_filterbank(mel))
            self.register_buffer("mel_pinv", pinv, persistent=False)  # [n_mels, F]
        else:
            self.mel_pinv = None

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def predict(self, log_mel: torch.Tensor):
        """log-mel [B, T, n_mels] -> (waveform [B, T * hop], STFT magnitude and phase [B, F, T])."""
        if log_mel.dim() != 3 or log_mel.shape[-1] != self.config.n_mels:
            raise ValueError(f"Vocos: expected [B, T, {self.config.n_mels}] log-mel, got {tuple(log_mel.shape)}")
        x = self.embed(log_mel.transpose(1, 2))  # [B, dim, T]
        x = self.norm_in(x.transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        prior = None
        if self.mel_pinv is not None:
            prior = torch.log((log_mel.exp() @ self.mel_pinv).clamp(min=1e-5)).transpose(1, 2)  # [B, F, T]
        return self.head(self.norm_out(x.transpose(1, 2)), prior)

    def forward(self, log_mel: torch.Tensor, spectrum: bool = False):
        """log-mel [B, T, n_mels] (or [T, n_mels]) -> waveform [B, T * hop] (or [T * hop]).

        ``spectrum=True``: what ``predict`` returns (training goes through ``forward``, the one
        method a DistributedDataParallel wrapper passes on)."""
        if spectrum:
            return self.predict(log_mel)
        squeeze = log_mel.dim() == 2
        wav = self.predict(log_mel.unsqueeze(0) if squeeze else log_mel)[0]
        return wav[0] if squeeze else wav
