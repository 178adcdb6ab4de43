"""Mel -> waveform. Griffin-Lim (training-free fallback, torchaudio) until a trained vocoder exists."""

from __future__ import annotations

import torch

from sitok.data.mel import MelConfig


class GriffinLimVocoder(torch.nn.Module):
    """Log-mel [B, T, n_mels] (un-normalised) -> 24 kHz waveform [B, T * hop].

    Mel -> linear magnitude by least squares (torchaudio's InverseMelScale with our filterbank),
    then Griffin-Lim phase reconstruction. Our frames are centred at k * hop + hop / 2 (see
    ``sitok.data.mel``); torch's centred iSTFT puts them at k * hop, so the output is shifted
    by hop / 2 to line up with the input audio.
    """

    name = "griffin_lim"

    def __init__(self, cfg: MelConfig | None = None, n_iter: int = 32):
        super().__init__()
        import torchaudio

        from sitok.data.mel import mel_filterbank

        self.cfg = cfg = cfg or MelConfig()
        self.register_buffer("fbank", mel_filterbank(cfg), persistent=False)  # [F, M]
        self.register_buffer("fbank_pinv", torch.linalg.pinv(mel_filterbank(cfg)), persistent=False)  # [M, F]
        self.gl = torchaudio.transforms.GriffinLim(n_fft=cfg.n_fft, win_length=cfg.win_length,
                                                   hop_length=cfg.hop_length, power=1.0, n_iter=n_iter,
                                                   rand_init=False)  # deterministic  # fmt: skip

    @torch.no_grad()
    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        squeeze = log_mel.dim() == 2
        m = log_mel.unsqueeze(0) if squeeze else log_mel
        mel = m.float().exp()  # [B, T, M] magnitude mel
        spec = (mel @ self.fbank_pinv).clamp_min(0.0).transpose(1, 2)  # [B, F, T]
        wav = self.gl(spec)  # [B, ~T * hop], frames centred at k * hop
        t = m.shape[1]
        half = self.cfg.hop_length // 2
        wav = torch.nn.functional.pad(wav, (half, 0))[:, : t * self.cfg.hop_length]
        wav = torch.nn.functional.pad(wav, (0, t * self.cfg.hop_length - wav.shape[1]))
        return wav[0] if squeeze else wav
