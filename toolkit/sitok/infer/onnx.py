"""ONNX export of a tokenizer, and an onnxruntime runner of the exported graphs.

    sitok export-onnx -m exp/tokenizer_mini/model -o exp/tokenizer_mini/onnx

    from sitok.infer.onnx import OnnxTokenizer
    ox = OnnxTokenizer("exp/tokenizer_mini/onnx")
    codes = ox.encode_mel(log_mel)                 # un-normalised log-mel [T50, n_mels] -> codes [CN, T]
    mel = ox.decode_mel(codes, steps=4, seed=0)    # -> un-normalised log-mel [4T, n_mels]
    wav = ox.vocode(mel)                           # -> 24 kHz waveform (a model with a trained vocoder)

The graphs (``torch.onnx.export`` with the dynamo exporter; batch and length dynamic):

    encoder.onnx    frames [B, T, stack * n_mels] (normalised log-mel, ``stack`` frames per token),
                    token_lengths [B] -> codes [B, CN, T]
    condition.onnx  codes [B, CN, T], mask [B, T] -> h [B, T, W]: the part of the decoder run once
    step.onnx       h, mask, x_t [B, T, stack * n_mels], t [B] (, d [B] for shortcut decoders)
                    -> velocity [B, T, stack * n_mels]: one Euler step of the flow-matching ODE
    vocoder.onnx    log-mel [B, F, n_mels] -> waveform [B, F * hop] (the model's Vocos vocoder)
    onnx.json       what the runner needs besides the graphs: CMVN, stacking, the mel settings

Framing, normalisation, the Euler loop and the start noise stay outside the graphs (numpy), so
one step graph serves every step count. ``export_onnx`` checks every graph against PyTorch on a
random input and records the largest difference in onnx.json. Diffusion decoders only (a
regression decoder has no steps to export); token CFG is not exported (scale 1).
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import torch
from torch import nn

from sitok.fileio import atomic_dir, write_text_atomic
from sitok.layers import lengths_to_mask

logger = logging.getLogger(__name__)

ONNX_FORMAT = "sitok-onnx-1"
ATOL = 1e-4  # largest |ONNX - PyTorch| accepted by the export check (float32 graphs)


# ---- the exported modules ----------------------------------------------------------------------
class _Encoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, frames, token_lengths):
        mask = lengths_to_mask(token_lengths, frames.shape[1])
        z, quantizer = self.model.encode_frames(frames, mask), self.model.quantizer
        if hasattr(quantizer, "encode_dense"):  # VQ: its encode indexes frames by the mask
            return quantizer.encode_dense(z, mask)
        return quantizer.encode(z, mask)


class _Condition(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, codes, mask):
        quantizer = self.model.quantizer
        if hasattr(quantizer, "lookup"):  # VQ: its decode checks the codes' values, data a graph cannot test
            cond = self.model.from_latent(quantizer.lookup(codes))
        else:
            cond = self.model.cond_from_codes(codes)
        return self.model.decoder.condition(cond, mask)


class _Step(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, h, mask, x_t, t, d=None):
        return self.model.velocity(x_t, t, h, mask, d)


def _export(module: nn.Module, args: tuple, names: list[str], dynamic: list[dict], path: str) -> None:
    torch.onnx.export(
        module.eval(),
        args,
        path,
        input_names=names,
        dynamic_shapes=tuple(dynamic),
        dynamo=True,
        external_data=False,
        verbose=False,
    )


def _session(path: str, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def _run(session, **inputs) -> np.ndarray:
    return session.run(None, {k: np.ascontiguousarray(v) for k, v in inputs.items()})[0]


# ---- export --------------------------------------------------------------------------------------
def export_onnx(tok, out_dir: str, frames: int = 9, seed: int = 0) -> dict:
    """Export ``tok`` (a ``sitok.infer.Tokenizer`` on the CPU, float32) to ``out_dir`` (written
    atomically); returns the facts written to onnx.json, with the export check's differences."""
    model, cfg = tok.model.eval(), tok.model.config
    if cfg.decoder != "diffusion":
        raise ValueError("export-onnx: a regression decoder has no decoder step to export (diffusion decoders only)")
    if tok.dtype != torch.float32 or tok.device.type != "cpu":
        raise ValueError("export-onnx: export the float32 model on the CPU")
    g = torch.Generator().manual_seed(seed)
    b, t, d = 2, frames, cfg.frame_dim
    x = torch.randn(b, t, d, generator=g)
    lengths = torch.tensor([t, max(1, t - 3)])
    mask = lengths_to_mask(lengths, t)
    codes = torch.randint(0, cfg.codebook_size, (b, cfg.num_codebooks, t), generator=g)
    steps = torch.rand(b, generator=g)
    batch_len = [{0: "batch", 1: "tokens"}, {0: "batch"}]
    vocoder = getattr(tok.vocoder, "model", None) if getattr(tok.vocoder, "name", "") == "vocos" else None
    t0 = time.time()
    with atomic_dir(out_dir) as tmp, torch.no_grad():
        _export(_Encoder(model), (x, lengths), ["frames", "token_lengths"], batch_len, f"{tmp}/encoder.onnx")
        codes_dyn = [{0: "batch", 2: "tokens"}, batch_len[0]]
        _export(_Condition(model), (codes, mask), ["codes", "mask"], codes_dyn, f"{tmp}/condition.onnx")
        h = _Condition(model)(codes, mask)
        step_args, step_names = (h, mask, x, steps), ["h", "mask", "x_t", "t"]
        step_dyn = [batch_len[0]] * 3 + [batch_len[1]]
        if cfg.shortcut:
            step_args, step_names, step_dyn = step_args + (steps / 2,), step_names + ["d"], step_dyn + [batch_len[1]]
        _export(_Step(model), step_args, step_names, step_dyn, f"{tmp}/step.onnx")
        if vocoder is not None:
            mel = torch.randn(b, 4 * t, cfg.n_mels, generator=g) - 5.0
            _export(vocoder, (mel,), ["log_mel"], [{0: "batch", 1: "frames"}], f"{tmp}/vocoder.onnx")
        facts = {
            "format": ONNX_FORMAT,
            "source": os.path.abspath(tok.model_dir) if tok.model_dir else None,
            "stack": cfg.stack,
            "n_mels": cfg.n_mels,
            "frame_dim": cfg.frame_dim,
            "num_codebooks": cfg.num_codebooks,
            "codebook_size": cfg.codebook_size,
            "shortcut": bool(cfg.shortcut),
            "token_rate": cfg.token_rate,
            "cmvn": {"mean": tok.cmvn.mean.tolist(), "std": tok.cmvn.std.tolist()},
            "log_floor": tok.mel_cfg.log_floor,
            "hop_length": tok.mel_cfg.hop_length,
            "sample_rate": tok.sample_rate,
            "vocoder": vocoder is not None,
            "torch": torch.__version__,
        }
        write_text_atomic(f"{tmp}/onnx.json", json.dumps(facts, indent=1) + "\n")
        facts["check"] = check_parity(tok, tmp, seed=seed + 1)
        write_text_atomic(f"{tmp}/onnx.json", json.dumps(facts, indent=1) + "\n")
    logger.info("export-onnx: %s in %.1f s; largest |ONNX - PyTorch|: %s", out_dir, time.time() - t0, facts["check"])
    return facts


@torch.no_grad()
def check_parity(tok, onnx_dir: str, seed: int = 1, frames: int = 13) -> dict:
    """The exported graphs against the PyTorch model on a new random input of another batch size
    and length: {graph: largest absolute difference} (codes: the share of codes that differ).
    Raises when a difference is above ``ATOL``."""
    ox = OnnxTokenizer(onnx_dir)
    model, cfg = tok.model, tok.model.config
    g = torch.Generator().manual_seed(seed)
    b, t = 3, frames
    lengths = torch.tensor([t, t - 2, max(1, t - 7)])
    mask = lengths_to_mask(lengths, t)
    x = torch.randn(b, t, cfg.frame_dim, generator=g)
    codes = _Encoder(model)(x, lengths)
    onnx_codes = _run(ox.encoder, frames=x.numpy(), token_lengths=lengths.numpy())
    valid = mask[:, None, :].expand_as(codes).numpy()
    out = {"encoder_codes_differ": float((onnx_codes != codes.numpy())[valid].mean())}
    h = _Condition(model)(codes, mask)
    out["condition"] = float(np.abs(_run(ox.condition, codes=codes.numpy(), mask=mask.numpy()) - h.numpy()).max())
    steps = torch.rand(b, generator=g)
    d = steps / 2 if cfg.shortcut else None
    v = _Step(model)(h, mask, x, steps, d)
    inputs = {"h": h.numpy(), "mask": mask.numpy(), "x_t": x.numpy(), "t": steps.numpy()}
    if cfg.shortcut:
        inputs["d"] = d.numpy()
    valid_v = mask[..., None].expand_as(v).numpy()
    out["step"] = float(np.abs(_run(ox.step, **inputs) - v.numpy())[valid_v].max())
    noise = tok.start_noise(1, t, seed=seed)
    mel = tok.decode_mel(codes[:1], steps=4, seed=seed)[0].numpy()
    out["decode_mel_4_steps"] = float(
        np.abs(ox.decode_mel(codes[0].numpy(), steps=4, noise=noise[0].numpy()) - mel).max()
    )
    if ox.vocoder is not None:
        wav = tok.vocoder(torch.from_numpy(mel)[None])[0].numpy()
        out["vocoder"] = float(np.abs(ox.vocode(mel) - wav).max())
    bad = {k: v for k, v in out.items() if k != "encoder_codes_differ" and v > ATOL}
    if bad or out["encoder_codes_differ"] > 0:
        raise RuntimeError(f"export-onnx: the ONNX graphs in {onnx_dir} differ from PyTorch: {out} (atol {ATOL})")
    return out


# ---- the onnxruntime runner --------------------------------------------------------------------
class OnnxTokenizer:
    """Encode and decode with onnxruntime only (numpy in and out): the graphs of ``export_onnx``."""

    def __init__(self, onnx_dir: str, threads: int = 0):
        path = os.path.join(onnx_dir, "onnx.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{onnx_dir}: no onnx.json (not a directory written by sitok export-onnx)")
        with open(path, encoding="utf-8") as fh:
            self.facts = facts = json.load(fh)
        if facts.get("format") != ONNX_FORMAT:
            raise ValueError(f"{path}: format {facts.get('format')!r}, expected {ONNX_FORMAT!r}")
        self.stack, self.frame_dim = facts["stack"], facts["frame_dim"]
        self.mean = np.asarray(facts["cmvn"]["mean"], np.float32)
        self.std = np.asarray(facts["cmvn"]["std"], np.float32)
        self.encoder = _session(os.path.join(onnx_dir, "encoder.onnx"), threads)
        self.condition = _session(os.path.join(onnx_dir, "condition.onnx"), threads)
        self.step = _session(os.path.join(onnx_dir, "step.onnx"), threads)
        voc = os.path.join(onnx_dir, "vocoder.onnx")
        self.vocoder = _session(voc, threads) if facts["vocoder"] else None

    def encode_mel(self, log_mel: np.ndarray) -> np.ndarray:
        """Un-normalised log-mel [T50, n_mels] -> codes [CN, ceil(T50 / stack)] (int64)."""
        mel = (np.asarray(log_mel, np.float32) - self.mean) / self.std
        t50, n_mels = mel.shape
        t = -(-t50 // self.stack)
        frames = np.zeros((t * self.stack, n_mels), np.float32)
        frames[:t50] = mel
        frames = frames.reshape(1, t, self.stack * n_mels)
        return _run(self.encoder, frames=frames, token_lengths=np.array([t], np.int64))[0]

    def decode_mel(self, codes: np.ndarray, steps: int = 16, seed: int = 0, noise: np.ndarray | None = None):
        """Codes [CN, T] -> un-normalised log-mel [stack * T, n_mels] by ``steps`` Euler steps from
        ``noise`` [T, stack * n_mels] (default: standard normal drawn with ``seed``)."""
        codes = np.asarray(codes, np.int64)[None]
        t = codes.shape[-1]
        mask = np.ones((1, t), bool)
        h = _run(self.condition, codes=codes, mask=mask)
        x = noise[None] if noise is not None else np.random.default_rng(seed).standard_normal((1, t, self.frame_dim))
        x = x.astype(np.float32)
        dt = 1.0 / steps
        extra = {"d": np.full((1,), dt, np.float32)} if self.facts["shortcut"] else {}
        for i in range(steps):
            t_i = np.full((1,), i * dt, np.float32)
            x = x + dt * _run(self.step, h=h, mask=mask, x_t=x, t=t_i, **extra)
        mel = x[0].reshape(t * self.stack, -1)
        return mel * self.std + self.mean

    def vocode(self, log_mel: np.ndarray) -> np.ndarray:
        """Un-normalised log-mel [F, n_mels] -> waveform [F * hop] through the exported vocoder."""
        if self.vocoder is None:
            raise ValueError("this export has no vocoder (the model directory had no trained vocoder)")
        return _run(self.vocoder, log_mel=np.asarray(log_mel, np.float32)[None])[0]
