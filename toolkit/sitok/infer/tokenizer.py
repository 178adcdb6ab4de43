"""The public API: ``Tokenizer.from_pretrained(dir)``, ``encode(wav, sr)``, ``decode(codes)``.

    from sitok import Tokenizer
    tok = Tokenizer.from_pretrained("egs/mini/sitok/exp/tokenizer_mini/model")
    codes = tok.encode(wav, sample_rate)     # LongTensor [CN, T] at 12.5 Hz
    wav, sr = tok.decode(codes, steps=4)     # 24 kHz waveform

A model directory is plain data: ``config.json`` (no code runs on load), ``model.pt`` (a state
dict loaded with ``weights_only=True``), ``cmvn.json`` and optionally ``sp.model``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from sitok.data.audio import resample
from sitok.data.mel import GlobalCMVN, MelConfig, MelFrontend
from sitok.infer.sampler import euler_sample
from sitok.layers import lengths_to_mask
from sitok.models import SiTok


def check_temperature(temperature: float) -> float:
    """A start-noise temperature must be a finite number >= 0; returns it."""
    if not 0.0 <= temperature < float("inf"):
        raise ValueError(f"decode: temperature must be a finite number >= 0, got {temperature}")
    return temperature


def _as_mono_tensor(wav) -> torch.Tensor:
    """[N], [C, N] (torch convention) or [N, C] (soundfile convention) -> float32 [N]."""
    x = torch.as_tensor(np.asarray(wav) if not isinstance(wav, torch.Tensor) else wav).float()
    if x.dim() == 2:
        x = x.mean(0) if x.shape[0] <= x.shape[1] else x.mean(1)
    if x.dim() != 1 or x.numel() == 0:
        raise ValueError(f"encode: expected a non-empty waveform [N] or [C, N], got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("encode: waveform holds NaN or Inf")
    return x


class Tokenizer:
    def __init__(self, model: SiTok, cmvn: GlobalCMVN, mel_cfg: MelConfig | None = None, vocoder=None,
                 device: str | torch.device = "cpu", model_dir: str | None = None):  # fmt: skip
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.cmvn = cmvn.to(self.device)
        self.mel_cfg = mel_cfg or MelConfig()
        self.frontend = MelFrontend(self.mel_cfg).to(self.device)
        self.model_dir = model_dir
        if vocoder is None or isinstance(vocoder, str):
            from sitok.infer.vocoder import load_vocoder

            vocoder = load_vocoder(vocoder or "griffin_lim", model_dir, self.mel_cfg)
        self.vocoder = vocoder.to(self.device).eval()

    # ---- loading ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_dir: str, device: str = "cpu", vocoder="auto") -> "Tokenizer":
        """Load a model directory. ``vocoder``: "auto" (the directory's trained vocoder in
        ``vocoder/`` when present, else Griffin-Lim), "vocos", "griffin_lim" or a module."""
        cfg_path = os.path.join(model_dir, "config.json")
        if not os.path.exists(cfg_path):
            raise FileNotFoundError(f"{cfg_path}: not a SiTok model directory (no config.json)")
        with open(cfg_path, encoding="utf-8") as fh:
            cfg = json.load(fh)
        model = SiTok(cfg["model"])
        state = torch.load(os.path.join(model_dir, "model.pt"), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        cmvn = GlobalCMVN.load(os.path.join(model_dir, "cmvn.json"))
        return cls(model, cmvn, MelConfig.from_dict(cfg.get("mel")), vocoder, device, model_dir)

    # ---- facts ------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.mel_cfg.sample_rate

    def info(self) -> dict:
        c = self.model.config
        return {
            "parameters": self.model.num_parameters(),
            "frame_rate_hz": self.mel_cfg.frame_rate,
            "tokens_per_second": c.token_rate * c.num_codebooks,
            "token_frame_rate_hz": c.token_rate,
            "num_codebooks": c.num_codebooks,
            "codebook_size": c.codebook_size,
            "bits_per_second": c.bits_per_second,
            "quantizer": c.quantizer,
            "decoder": c.decoder + (f" (light head: last {c.light_head_layers} of {c.dec_layers} layers)"
                                    if c.light_head_layers else ""),
            "token_cfg": c.token_cfg,
            "shortcut": c.shortcut,
            "vocoder": getattr(self.vocoder, "name", type(self.vocoder).__name__),
        }

    # ---- encode -----------------------------------------------------------------------------
    @torch.no_grad()
    def mel(self, wav, sample_rate: int) -> torch.Tensor:
        """Normalised log-mel [T50, 128] of one waveform at any rate / channel count."""
        x = resample(_as_mono_tensor(wav), int(sample_rate), self.sample_rate).to(self.device)
        return self.cmvn(self.frontend(x))

    @torch.no_grad()
    def encode(self, wav, sample_rate: int) -> torch.Tensor:
        """One waveform -> codes LongTensor [CN, T] at the token rate (12.5 Hz)."""
        mel = self.mel(wav, sample_rate)
        return self.model.encode(mel[None])[0].cpu()

    @torch.no_grad()
    def encode_batch(self, wavs: list, sample_rate: int) -> list[torch.Tensor]:
        """Several waveforms, padded into one batch; codes do not depend on the padding."""
        mels = [self.mel(w, sample_rate) for w in wavs]
        lengths = torch.tensor([m.shape[0] for m in mels], device=self.device)
        batch = torch.nn.utils.rnn.pad_sequence(mels, batch_first=True)
        codes = self.model.encode(batch, lengths)
        t = self.model.token_lengths(lengths)
        return [codes[i, :, : t[i]].cpu() for i in range(len(wavs))]

    # ---- decode -----------------------------------------------------------------------------
    def check_codes(self, codes) -> torch.Tensor:
        """Validate codes: integer tensor [CN, T] (or [B, CN, T]) within the codebook."""
        c = self.model.config
        if not isinstance(codes, torch.Tensor):
            codes = torch.as_tensor(np.asarray(codes))
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise ValueError(f"decode: codes must be an integer tensor, got {codes.dtype}")
        if codes.dim() == 2:
            codes = codes[None]
        if codes.dim() != 3 or codes.shape[1] != c.num_codebooks or codes.shape[2] == 0:
            raise ValueError(f"decode: codes must have shape [{c.num_codebooks}, T] or [B, {c.num_codebooks}, T] "
                             f"with T > 0, got {tuple(codes.shape)}")  # fmt: skip
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= c.codebook_size:
            raise ValueError(f"decode: codes must lie in [0, {c.codebook_size}), got values in [{lo}, {hi}]")
        return codes.long().to(self.device)

    @torch.no_grad()
    def decode_mel(self, codes, steps: int = 16, seed: int | None = 0, lengths: torch.Tensor | None = None,
                   cfg_scale: float = 1.0, temperature: float = 1.0) -> torch.Tensor:  # fmt: skip
        """codes [CN, T] or [B, CN, T] -> un-normalised log-mel [B, 4T, 128] (Euler ODE, ``steps``).

        ``cfg_scale`` w != 1 applies token classifier-free guidance (needs a model trained with
        token drop); w = 1 is the plain conditional decoder. Shortcut models take d = 1/steps.
        ``temperature`` tau scales the start noise, x_0 = tau * eps: 1 samples the decoder's
        distribution, 0 decodes deterministically from the noise mode (the seed no longer
        matters), values between trade diversity for closeness to the centre of that distribution.
        """
        if cfg_scale != 1.0 and not self.model.config.token_cfg:
            raise ValueError(f"decode: cfg_scale={cfg_scale} needs a model trained for token CFG (token_cfg: true)")
        check_temperature(temperature)
        codes = self.check_codes(codes)
        b, _, t = codes.shape
        mask = None if lengths is None else lengths_to_mask(lengths.to(self.device), t)
        cond = self.model.cond_from_codes(codes)  # [B, T, hidden]
        gen = torch.Generator(device=self.device)
        if seed is not None:
            gen.manual_seed(seed)
        else:
            gen.seed()
        if self.model.config.decoder == "diffusion":
            noise = temperature * torch.randn(b, t, self.model.config.frame_dim, generator=gen, device=self.device)
            x = euler_sample(self.model.velocity_fn(cond, mask, steps, cfg_scale), noise, steps)
        else:
            x = self.model.decoder(cond, mask)
        return self.cmvn.inverse(self.model.unstack(x))

    @torch.no_grad()
    def decode(self, codes, steps: int = 16, seed: int | None = 0, cfg_scale: float = 1.0,
               temperature: float = 1.0) -> tuple[torch.Tensor, int]:  # fmt: skip
        """codes [CN, T] -> (waveform [N] at 24 kHz, 24000); [B, CN, T] -> ([B, N], 24000)."""
        batched = np.ndim(codes) == 3
        wav = self.vocoder(self.decode_mel(codes, steps, seed, cfg_scale=cfg_scale, temperature=temperature)).cpu()
        return (wav if batched else wav[0]), self.sample_rate

    @torch.no_grad()
    def resynth(self, wav, sample_rate: int, steps: int = 16, seed: int | None = 0, cfg_scale: float = 1.0,
                temperature: float = 1.0) -> tuple[torch.Tensor, int]:  # fmt: skip
        """Encode then decode; the output is cut to the input's duration."""
        x = _as_mono_tensor(wav)
        out, sr = self.decode(self.encode(x, sample_rate), steps, seed, cfg_scale, temperature)
        n = int(round(x.numel() * sr / sample_rate))
        return out[:n], sr
