"""The public API: ``Tokenizer.from_pretrained(dir)``, ``encode(wav, sr)``, ``decode(codes)``.

    from sitok import Tokenizer
    tok = Tokenizer.from_pretrained("egs/mini/sitok/exp/tokenizer_mini/model")
    codes = tok.encode(wav, sample_rate)     # LongTensor [CN, T] at 12.5 Hz
    codes = tok.encode("speech.flac")        # a path: read, down-mixed, resampled
    wav, sr = tok.decode(codes, steps=4)     # 24 kHz waveform
    tok.to("cuda", torch.bfloat16)           # model on the GPU in bfloat16; outputs stay float32 CPU

Waveforms are float in [-1, 1] (integer PCM is rescaled; louder float audio warns), mono or
multi-channel, at any rate in [1000, 384000] Hz. Outputs are float32 (codes: int64) CPU tensors
unless ``keep_device=True``. A model directory is plain data: ``config.json`` (no code runs on
load), ``model.pt`` (a state dict loaded with ``weights_only=True``), ``cmvn.json`` and
optionally ``sp.model``.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import warnings

import numpy as np
import torch

from sitok.data.audio import load_audio, probe_audio, resample
from sitok.data.mel import GlobalCMVN, MelConfig, MelFrontend
from sitok.infer.sampler import euler_sample
from sitok.infer.vocoder import load_vocoder
from sitok.layers import lengths_to_mask
from sitok.models import SiTok
from sitok.models.loading import load_model_dir, mel_config

MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 384000  # plausible audio rates; anything else is a unit mistake
# integer PCM -> float in [-1, 1]: (x - offset) / scale
PCM_SCALES = {
    np.dtype(np.uint8): (128.0, 128.0),
    np.dtype(np.int8): (0.0, 128.0),
    np.dtype(np.int16): (0.0, 32768.0),
    np.dtype(np.int32): (0.0, 2147483648.0),
}


def check_temperature(temperature: float) -> float:
    """A start-noise temperature must be a finite number >= 0; returns it."""
    if not 0.0 <= temperature < float("inf"):
        raise ValueError(f"decode: temperature must be a finite number >= 0, got {temperature}")
    return temperature


def check_cfg_scale(cfg_scale: float) -> float:
    """A token-CFG scale must be a finite number >= 0 (1: plain conditional, 0: unconditional)."""
    if not 0.0 <= cfg_scale < float("inf"):
        raise ValueError(f"decode: cfg_scale must be a finite number >= 0, got {cfg_scale}")
    return cfg_scale


def check_sample_rate(sample_rate) -> int:
    """A sample rate must be a whole number of Hz in [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]; returns it as int."""
    ok = isinstance(sample_rate, numbers.Real) and not isinstance(sample_rate, bool)
    ok = ok and math.isfinite(sample_rate) and float(sample_rate).is_integer()
    if not ok or not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise ValueError(
            f"encode: sample_rate must be a whole number of Hz in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}], "
            f"got {sample_rate!r}"
        )
    return int(sample_rate)


def _float_samples(wav) -> torch.Tensor:
    """An array or tensor of samples -> float32 CPU tensor; integer PCM is rescaled to [-1, 1]."""

    def refuse(dtype):
        return ValueError(
            f"encode: samples must be float (in [-1, 1]) or int8/uint8/int16/int32 PCM, got {dtype} "
            "(int64 is ambiguous: cast to the PCM width it holds)"
        )

    if isinstance(wav, torch.Tensor):
        wav = wav.detach().cpu()
        if wav.dtype.is_floating_point:
            return wav.float()
        if wav.dtype == torch.bool or wav.dtype.is_complex:
            raise refuse(wav.dtype)
        wav = wav.numpy()
    a = np.asarray(wav)
    if a.dtype.kind == "f":
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if a.dtype in PCM_SCALES:
        offset, scale = PCM_SCALES[a.dtype]
        return torch.from_numpy(((a.astype(np.float64) - offset) / scale).astype(np.float32))
    raise refuse(a.dtype)


def _as_mono_tensor(wav) -> torch.Tensor:
    """[N], [C, N] (torch convention) or [N, C] (soundfile convention) -> float32 [N] in [-1, 1].

    Integer PCM is rescaled; float samples beyond [-1, 1] are kept but warn (unnormalised audio)."""
    x = _float_samples(wav)
    if x.dim() == 2:
        x = x.mean(0) if x.shape[0] <= x.shape[1] else x.mean(1)
    if x.dim() != 1 or x.numel() == 0:
        raise ValueError(f"encode: expected a non-empty waveform [N] or [C, N], got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("encode: waveform holds NaN or Inf")
    peak = float(x.abs().max())
    if peak > 1.0:
        warnings.warn(
            f"encode: waveform peaks at {peak:.4g} > 1: float samples are expected in [-1, 1] (pass "
            "integer PCM as int16/int32, or divide by the full scale)",
            UserWarning,
            stacklevel=_caller_stacklevel(),
        )
    return x


def _caller_stacklevel() -> int:
    """The ``warnings.warn`` stacklevel of the API's caller: the first frame outside this module
    and torch's no_grad wrapper (for a function of this module that calls it directly)."""
    no_grad_wrapper = os.path.join("torch", "utils", "_contextlib.py")
    frame, level = sys._getframe(1), 1  # level 1: the function that calls warnings.warn
    while frame is not None and (
        frame.f_code.co_filename == __file__ or frame.f_code.co_filename.endswith(no_grad_wrapper)
    ):
        frame, level = frame.f_back, level + 1
    return level


class Tokenizer:
    def __init__(
        self,
        model: SiTok,
        cmvn: GlobalCMVN,
        mel_cfg: MelConfig | None = None,
        vocoder=None,
        device: str | torch.device = "cpu",
        model_dir: str | None = None,
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.cmvn = cmvn.to(self.device)
        self.mel_cfg = mel_cfg or MelConfig()
        self.frontend = MelFrontend(self.mel_cfg).to(self.device)
        self.model_dir = model_dir
        if vocoder is None or isinstance(vocoder, str):
            vocoder = load_vocoder(vocoder or "griffin_lim", model_dir, self.mel_cfg)
        self.vocoder = vocoder.to(self.device).eval()

    # ---- placement ----------------------------------------------------------------------------
    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Tokenizer:
        """Move the model, CMVN, mel front end and vocoder to ``device``; cast the model to ``dtype``
        (e.g. torch.bfloat16). The front end, CMVN and vocoder compute in float32 (STFT and
        Griffin-Lim need it); inputs are cast to the model's dtype. Returns self."""
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"Tokenizer.to: dtype must be a floating-point torch.dtype, got {dtype!r}")
        if device is not None:
            self.device = torch.device(device)
        self.model.to(device=self.device, dtype=dtype)
        self.cmvn.to(self.device)
        self.frontend.to(self.device)
        self.vocoder.to(self.device)
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The model's floating-point dtype (float32 unless changed with ``to``)."""
        return next(p.dtype for p in self.model.parameters() if p.dtype.is_floating_point)

    # ---- loading ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_dir: str, device: str = "cpu", vocoder="auto") -> Tokenizer:
        """Load a model directory. ``vocoder``: "auto" (the directory's trained vocoder in
        ``vocoder/`` when present, else Griffin-Lim), "vocos", "griffin_lim" or a module.

        config.json and model.pt are checked before the model is built (format version, field
        ranges, every weight's name and shape: ``sitok.models.loading``); errors name the file."""
        model, cfg = load_model_dir(model_dir)
        mel_cfg = mel_config(cfg, os.path.join(model_dir, "config.json"))
        cmvn = GlobalCMVN.load(os.path.join(model_dir, "cmvn.json"))
        if cmvn.mean.numel() not in (1, model.config.n_mels) or mel_cfg.n_mels != model.config.n_mels:
            raise ValueError(
                f"{model_dir}: cmvn.json ({cmvn.mean.numel()} values), mel ({mel_cfg.n_mels}) and "
                f"model ({model.config.n_mels}) disagree on the number of mel bands"
            )
        return cls(model, cmvn, mel_cfg, vocoder, device, model_dir)

    # ---- facts ------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.mel_cfg.sample_rate

    @property
    def config(self):
        """The model's ``SiTokConfig`` (decoder kind, token CFG, codebooks, CTC weight, ...)."""
        return self.model.config

    def info(self) -> dict:
        c = self.model.config
        return {
            "parameters": self.model.num_parameters(),
            "frame_rate_hz": self.mel_cfg.frame_rate,
            "tokens_per_second": c.token_rate * c.num_codebooks,
            "token_frame_rate_hz": c.token_rate,
            **{k: getattr(c, k) for k in ("num_codebooks", "codebook_size", "bits_per_second", "quantizer")},
            "decoder": c.decoder
            + (f" (light head: last {c.light_head_layers} of {c.dec_layers} layers)" if c.light_head_layers else ""),
            **{k: getattr(c, k) for k in ("token_cfg", "shortcut")},
            "vocoder": getattr(self.vocoder, "name", type(self.vocoder).__name__),
        }

    # ---- encode -----------------------------------------------------------------------------
    def _waveform(self, wav, sample_rate) -> tuple[torch.Tensor, int]:
        """(float32 mono [N], its rate) of an array / tensor at ``sample_rate``, or of an audio file
        (str or os.PathLike: read with the toolkit's reader at the model's rate; ``sample_rate`` may be
        omitted, and when given must be the file's rate)."""
        if isinstance(wav, (str, os.PathLike)):
            path = os.fspath(wav)
            if sample_rate is not None:
                file_rate = probe_audio(path).sample_rate
                if check_sample_rate(sample_rate) != file_rate:
                    raise ValueError(
                        f"{path}: sample_rate={sample_rate} given but the file is at {file_rate} Hz "
                        "(omit sample_rate for a file)"
                    )
            return load_audio(path, self.sample_rate, silence_peak=0.0), self.sample_rate
        if sample_rate is None:
            raise ValueError("encode: sample_rate is required for an array or tensor (a file path carries its own)")
        sr = check_sample_rate(sample_rate)
        return _as_mono_tensor(wav), sr

    def _mel_of(self, x: torch.Tensor, sr: int) -> torch.Tensor:
        """float32 [N] at ``sr`` -> normalised float32 log-mel [T50, 128] on the device."""
        return self.cmvn(self.frontend(resample(x, sr, self.sample_rate).to(self.device)))

    @torch.no_grad()
    def mel(self, wav, sample_rate: int | None = None, keep_device: bool = False) -> torch.Tensor:
        """Normalised log-mel [T50, 128] (float32) of one waveform, at any rate / channel count, or of
        an audio file (path)."""
        mel = self._mel_of(*self._waveform(wav, sample_rate))
        return mel if keep_device else mel.cpu()

    @torch.no_grad()
    def encode(self, wav, sample_rate: int | None = None, keep_device: bool = False) -> torch.Tensor:
        """One waveform (array / tensor at ``sample_rate``) or audio file (path; ``sample_rate`` optional)
        -> codes LongTensor [CN, T] at the token rate (12.5 Hz)."""
        mel = self._mel_of(*self._waveform(wav, sample_rate))
        codes = self.model.encode(mel[None].to(self.dtype))[0]
        return codes if keep_device else codes.cpu()

    @torch.no_grad()
    def encode_batch(self, wavs, sample_rate: int | None = None, keep_device: bool = False) -> list[torch.Tensor]:
        """Several waveforms (arrays at ``sample_rate``) or audio files, padded into one batch; codes
        do not depend on the padding."""
        if isinstance(wavs, (str, os.PathLike, np.ndarray, torch.Tensor)):
            raise TypeError("encode_batch: expected a list of waveforms or paths (use encode for one)")
        wavs = list(wavs)
        if not wavs:
            raise ValueError("encode_batch: no waveforms to encode (an empty list)")
        return self._encode_normalised([self._mel_of(*self._waveform(w, sample_rate)) for w in wavs], keep_device)

    @torch.no_grad()
    def encode_mels(self, mels, keep_device: bool = False) -> list[torch.Tensor]:
        """Un-normalised log-mels [T50, n_mels] (a feature dump's, or ``decode_mel``'s), padded into one
        batch -> codes [CN, T] each, as ``encode_batch`` gives for the waveforms they came from."""
        return self._encode_normalised([self.normalise(m, keep_device=True) for m in mels], keep_device)

    def _encode_normalised(self, mels: list[torch.Tensor], keep_device: bool) -> list[torch.Tensor]:
        lengths = torch.tensor([m.shape[0] for m in mels], device=self.device)
        batch = torch.nn.utils.rnn.pad_sequence(mels, batch_first=True).to(self.dtype)
        codes = self.model.encode(batch, lengths)
        t = self.model.token_lengths(lengths)
        return [codes[i, :, : t[i]] if keep_device else codes[i, :, : t[i]].cpu() for i in range(len(mels))]

    @torch.no_grad()
    def normalise(self, mel, keep_device: bool = False) -> torch.Tensor:
        """Un-normalised log-mel [..., n_mels] -> the model's normalised space (its CMVN), float32: the
        space the decoder is trained in, where reconstructions are compared."""
        out = self.cmvn(torch.as_tensor(mel).to(self.device, torch.float32))
        return out if keep_device else out.cpu()

    @property
    def has_ctc(self) -> bool:
        """Whether the model has a CTC head that was trained (a CTC weight above 0)."""
        return self.model.ctc is not None and self.model.config.ctc_weight > 0

    def ctc_units(self):
        """The SentencePiece model of the CTC head's units (``sp.model`` of the model directory), or
        None when the model has no trained CTC head or its directory no ``sp.model``."""
        import sentencepiece as spm

        path = os.path.join(self.model_dir or "", "sp.model")
        if not self.has_ctc or not os.path.exists(path):
            return None
        return spm.SentencePieceProcessor(model_file=path)

    @torch.no_grad()
    def ctc_log_probs(self, codes, lengths=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The CTC head on codes [CN, T] or [B, CN, T] (``lengths``: tokens of a padded batch) ->
        (log-probabilities [B, T * U, V] float32 CPU, CTC frames [B]); the head is causal, so an
        item's frames do not depend on its padding."""
        if self.model.ctc is None:
            raise ValueError("ctc_log_probs: the model has no CTC head")
        codes = self.check_codes(codes, lengths)
        b, _, t = codes.shape
        lens = self.check_lengths(lengths, b, t)
        lens = torch.full((b,), t) if lens is None else lens
        mask = lengths_to_mask(lens, t).to(self.device)
        return self.model.ctc_logits(codes, mask).float().log_softmax(-1).cpu(), self.model.ctc_lengths(lens)

    # ---- decode -----------------------------------------------------------------------------
    @staticmethod
    def check_lengths(lengths, batch: int, frames: int) -> torch.Tensor | None:
        """Token lengths of a padded batch: ``batch`` integers in [1, ``frames``] -> LongTensor [B] (CPU)."""
        if lengths is None:
            return None
        lens = torch.as_tensor(lengths if isinstance(lengths, torch.Tensor) else np.asarray(lengths)).cpu()
        if lens.dim() == 0:
            lens = lens[None]
        bad = lens.dtype.is_floating_point or lens.dtype.is_complex or lens.dtype == torch.bool
        if bad or lens.shape != (batch,) or int(lens.min()) < 1 or int(lens.max()) > frames:
            raise ValueError(
                f"decode: lengths must be {batch} integer(s) in [1, {frames}] (tokens), got {lens.tolist()}"
            )
        return lens.long()

    def check_codes(self, codes, lengths=None) -> torch.Tensor:
        """Validate codes: integer tensor [CN, T] (or [B, CN, T]) within the codebook. With ``lengths``
        only each item's first lengths[i] tokens are checked; the padding is replaced by code 0."""
        c = self.model.config
        if not isinstance(codes, torch.Tensor):
            codes = torch.as_tensor(np.asarray(codes))
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise ValueError(f"decode: codes must be an integer tensor, got {codes.dtype}")
        if codes.dim() == 2:
            codes = codes[None]
        if codes.dim() != 3 or codes.shape[1] != c.num_codebooks or codes.shape[2] == 0:
            raise ValueError(
                f"decode: codes must have shape [{c.num_codebooks}, T] or [B, {c.num_codebooks}, T] "
                f"with T > 0, got {tuple(codes.shape)}"
            )
        values = codes = codes.long()
        lens = self.check_lengths(lengths, codes.shape[0], codes.shape[2])
        if lens is not None:
            pad = ~lengths_to_mask(lens.to(codes.device), codes.shape[2])[:, None, :].expand_as(codes)
            values = codes[~pad]
            codes = codes.masked_fill(pad, 0)
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= c.codebook_size:
            raise ValueError(f"decode: codes must lie in [0, {c.codebook_size}), got values in [{lo}, {hi}]")
        return codes.to(self.device)

    def start_noise(self, batch: int, frames: int, seed=0, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Standard normal start noise [B, T, frame_dim] (float32, on the device; padding frames are 0).

        Item i's noise depends only on its seed and its own length, never on its batch mates or the
        padding: an int ``seed`` seeds every item alike (an item decodes as it would alone), a
        sequence gives one seed per item, None draws fresh noise."""
        d = self.model.config.frame_dim
        n = [frames] * batch if lengths is None else [int(v) for v in lengths]
        if seed is None or isinstance(seed, numbers.Integral):
            seeds = [seed] * batch
        else:
            seeds = [int(s) for s in seed]
            if len(seeds) != batch:
                raise ValueError(f"decode: {len(seeds)} seeds for a batch of {batch}")
        gen = torch.Generator(device=self.device)
        if seed is None:
            gen.seed()
        noise = torch.zeros(batch, frames, d, device=self.device)
        for i in range(batch):
            if seeds[i] is not None:
                gen.manual_seed(seeds[i])
            noise[i, : n[i]] = torch.randn(n[i], d, generator=gen, device=self.device)
        return noise

    @torch.no_grad()
    def decode_mel(
        self,
        codes,
        steps: int = 16,
        seed: int | list[int] | None = 0,
        lengths=None,
        cfg_scale: float = 1.0,
        temperature: float = 1.0,
        keep_device: bool = False,
    ) -> torch.Tensor:
        """codes [CN, T] or [B, CN, T] -> un-normalised log-mel [B, 4T, 128] (Euler ODE, ``steps``).

        ``lengths`` [B] (tokens) marks a padded batch: item i decodes exactly as it would alone, and
        its frames past 4 * lengths[i] are silence (the log floor). ``seed``: see ``start_noise``.
        ``cfg_scale`` w != 1 applies token classifier-free guidance (needs a model trained with
        token drop); w = 1 is the plain conditional decoder. Shortcut models take d = 1/steps.
        ``temperature`` tau scales the start noise, x_0 = tau * eps: 1 samples the decoder's
        distribution, 0 decodes deterministically from the noise mode (the seed no longer
        matters), values between trade diversity for closeness to the centre of that distribution.
        """
        check_cfg_scale(cfg_scale)
        if cfg_scale != 1.0 and not self.model.config.token_cfg:
            raise ValueError(f"decode: cfg_scale={cfg_scale} needs a model trained for token CFG (token_cfg: true)")
        check_temperature(temperature)
        diffusion = self.model.config.decoder == "diffusion"  # a regression decoder takes one pass: steps unused
        if diffusion and (isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1):
            raise ValueError(f"decode: steps must be an integer >= 1, got {steps!r}")
        codes = self.check_codes(codes, lengths)
        b, _, t = codes.shape
        lens = self.check_lengths(lengths, b, t)
        lens = None if lens is None else lens.to(self.device)
        mask = None if lens is None else lengths_to_mask(lens, t)
        cond = self.model.cond_from_codes(codes)  # [B, T, hidden]
        if diffusion:
            noise = (temperature * self.start_noise(b, t, seed, lens)).to(self.dtype)
            x = euler_sample(self.model.velocity_fn(cond, mask, steps, cfg_scale), noise, steps)
        else:
            x = self.model.decoder(cond, mask)
        mel = self.cmvn.inverse(self.model.unstack(x).float())
        if lens is not None:
            valid = lengths_to_mask(lens * self.model.config.stack, mel.shape[1])[..., None]
            mel = mel.masked_fill(~valid, math.log(self.mel_cfg.log_floor))
        return mel if keep_device else mel.cpu()

    @torch.no_grad()
    def decode(
        self,
        codes,
        steps: int = 16,
        seed: int | list[int] | None = 0,
        cfg_scale: float = 1.0,
        temperature: float = 1.0,
        lengths=None,
        keep_device: bool = False,
    ) -> tuple[torch.Tensor, int]:
        """codes [CN, T] -> (waveform [N] at 24 kHz, 24000); [B, CN, T] -> ([B, N], 24000).

        With ``lengths`` [B] (tokens) each item is decoded and vocoded as it would be alone; its
        waveform is zero past lengths[i] * 4 * hop samples (cut it there)."""
        batched = np.ndim(codes) == 3
        mel = self.decode_mel(codes, steps, seed, lengths, cfg_scale, temperature, keep_device=True)
        if lengths is None:
            wav = self.vocoder(mel)
        else:
            hop, stack = self.mel_cfg.hop_length, self.model.config.stack
            frames = (self.check_lengths(lengths, mel.shape[0], mel.shape[1] // stack) * stack).tolist()
            wav = torch.zeros(mel.shape[0], mel.shape[1] * hop, device=mel.device)
            for i, f in enumerate(frames):
                w = self.vocoder(mel[i : i + 1, :f])[0][: f * hop]
                wav[i, : w.shape[-1]] = w
        wav = wav.float() if keep_device else wav.float().cpu()
        return (wav if batched else wav[0]), self.sample_rate

    @torch.no_grad()
    def resynth(
        self,
        wav,
        sample_rate: int | None = None,
        steps: int = 16,
        seed: int | None = 0,
        cfg_scale: float = 1.0,
        temperature: float = 1.0,
        keep_device: bool = False,
    ) -> tuple[torch.Tensor, int]:
        """Encode then decode a waveform or audio file; the output is cut to the input's duration."""
        x, sr = self._waveform(wav, sample_rate)
        codes = self.model.encode(self._mel_of(x, sr)[None].to(self.dtype))[0]
        out, out_sr = self.decode(codes, steps, seed, cfg_scale, temperature, keep_device=keep_device)
        n = round(x.numel() * out_sr / sr)
        return out[:n], out_sr
