"""Mel -> waveform vocoders, selectable at decode time.

* ``GriffinLimVocoder`` ("griffin_lim"): training-free fallback (torchaudio), always available.
* ``VocosVocoder`` ("vocos"): the trained Vocos-style generator (``sitok.models.vocos``), loaded
  from a vocoder directory: ``config.json`` (plain data) + ``model.pt`` (state dict, loaded with
  ``weights_only=True``), written by ``export_vocoder`` (stage: ``recipes/vocoder/train.py``).

``load_vocoder(name, model_dir)`` picks one: "griffin_lim", "vocos" (from
``<model_dir>/vocoder``) or "auto" (vocos when ``<model_dir>/vocoder/config.json`` exists,
else griffin_lim). Every vocoder maps un-normalised log-mel [B, T, n_mels] (or [T, n_mels]) to
24 kHz audio [B, T * hop] (or [T * hop]) lined up with the audio the mel came from.
"""

from __future__ import annotations

import json
import logging
import os

import torch

from sitok.data.mel import MelConfig, mel_filterbank
from sitok.fileio import atomic_dir, write_text_atomic
from sitok.models.loading import build_checked, load_weights, mel_config, parse_config, read_config
from sitok.models.vocos import Vocos, VocosConfig

logger = logging.getLogger(__name__)

VOCODER_FORMAT = "sitok-vocoder-1"
VOCODER_SUBDIR = "vocoder"  # a tokenizer model directory may hold its vocoder here


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

        self.cfg = cfg = cfg or MelConfig()
        self.register_buffer("fbank_pinv", torch.linalg.pinv(mel_filterbank(cfg)), persistent=False)  # [M, F]
        self.gl = torchaudio.transforms.GriffinLim(
            n_fft=cfg.n_fft,
            win_length=cfg.win_length,
            hop_length=cfg.hop_length,
            power=1.0,
            n_iter=n_iter,
            rand_init=False,
        )  # deterministic

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


class VocosVocoder(torch.nn.Module):
    """The trained Vocos-style vocoder: log-mel [B, T, n_mels] (un-normalised) -> [B, T * hop]."""

    name = "vocos"

    def __init__(self, model, cfg: MelConfig | None = None):
        super().__init__()
        self.cfg = cfg or MelConfig()
        self.model = model.eval()

    @classmethod
    def from_pretrained(cls, path: str, map_location="cpu") -> VocosVocoder:
        """config.json and model.pt are checked as a tokenizer's are (``sitok.models.loading``): format
        version, field ranges, every weight's name and shape before the generator is built."""
        config_path = os.path.join(path, "config.json")
        if not os.path.exists(config_path):
            raise FileNotFoundError(f"vocoder directory {path}: no config.json")
        config = read_config(config_path, VOCODER_FORMAT)
        if config.get("type") != "vocos" or "model" not in config:
            raise ValueError(
                f"{config_path}: not a Vocos vocoder (format {config.get('format')!r}, type {config.get('type')!r})"
            )
        model_cfg = parse_config(VocosConfig.from_dict, config["model"], config_path)
        weights = os.path.join(path, "model.pt")
        model = build_checked(lambda: Vocos(model_cfg), load_weights(weights), weights, config_path)
        return cls(model.to(map_location), mel_config(config, config_path))

    def num_parameters(self) -> int:
        return self.model.num_parameters()

    @torch.no_grad()
    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        return self.model(log_mel.float())


def export_vocoder(model, out_dir: str, extra_meta: dict | None = None) -> str:
    """Write a vocoder directory (``config.json`` + ``model.pt``) for a ``sitok.models.vocos.Vocos``.

    Written to ``<out_dir>.tmp`` and renamed, so a reader never sees a partial directory."""
    model = getattr(model, "model", model)  # a VocosVocoder or the bare generator
    with atomic_dir(out_dir) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        torch.save(state, os.path.join(tmp, "model.pt"))
        config = {
            "format": VOCODER_FORMAT,
            "type": "vocos",
            "model": model.config.to_dict(),
            "mel": MelConfig().to_dict(),
            "parameters": model.num_parameters(),
            **(extra_meta or {}),
        }
        write_text_atomic(os.path.join(tmp, "config.json"), json.dumps(config, indent=1) + "\n")
    logger.info("exported vocoder %s", out_dir)
    return out_dir


def _is_vocoder_dir(path: str) -> bool:
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    try:
        with open(config, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return False
    # any version counts: a newer one is then refused by name when loaded, not silently skipped
    return isinstance(data, dict) and str(data.get("format", "")).startswith("sitok-vocoder-")


def vocoder_dir(model_dir: str | None) -> str | None:
    """Where the trained vocoder of ``model_dir`` lives: ``<model_dir>/vocoder``, or ``model_dir``
    itself when it is a vocoder directory; None when there is none."""
    if model_dir is None:
        return None
    for path in (os.path.join(model_dir, VOCODER_SUBDIR), model_dir):
        if _is_vocoder_dir(path):
            return path
    return None


def load_vocoder(name: str, model_dir: str | None = None, mel_cfg: MelConfig | None = None) -> torch.nn.Module:
    """A vocoder by name: "griffin_lim", "vocos" (``<model_dir>/vocoder``; ``model_dir`` may
    also be a vocoder directory itself) or "auto" (vocos if one exists there, else griffin_lim)."""
    name = (name or "auto").lower()
    if name not in ("auto", "vocos", "griffin_lim"):
        raise ValueError(f"unknown vocoder {name!r} (auto|vocos|griffin_lim)")
    found = None if name == "griffin_lim" else vocoder_dir(model_dir)
    if found is None and name != "vocos":  # griffin_lim, or auto without a trained vocoder
        return GriffinLimVocoder(mel_cfg)
    if found is None:
        expected = (
            os.path.join(model_dir, VOCODER_SUBDIR) if model_dir else "<model_dir>/vocoder (no model directory given)"
        )
        raise FileNotFoundError(
            f"vocoder 'vocos': no trained vocoder at {expected} (config.json + model.pt; "
            "train one with recipes/vocoder/train.py, or use 'griffin_lim')"
        )
    voc = VocosVocoder.from_pretrained(found)
    if mel_cfg is not None and voc.cfg != mel_cfg:
        raise ValueError(f"vocoder {found} was trained on mel {voc.cfg.to_dict()}, not {mel_cfg.to_dict()}")
    return voc
