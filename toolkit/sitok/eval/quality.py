"""Offline signal-quality judges: PESQ-WB, STOI, DNSMOS P.835 / P.808.

Plain functions on 1-D waveforms (numpy or torch) at any sample rate; each returns floats.
Reference and degraded signals are trimmed to their common length. Everything runs offline:
the DNSMOS ONNX models ship inside the ``speechmos`` package.

    pesq_wb(ref, deg, sr)  -> float in [-0.5, 4.64]   (pesq, ITU-T P.862.2 at 16 kHz)
    stoi(ref, deg, sr)     -> float in [0, 1]         (pystoi, resamples to 10 kHz itself)
    dnsmos(wav, sr)        -> {"sig", "bak", "ovrl", "p808"}  (speechmos' DNSMOS at 16 kHz)
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from sitok.data.audio import resample

JUDGE_SR = 16000  # PESQ-WB and DNSMOS operate at 16 kHz


def _mono(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        x = x.squeeze()
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {x.shape}")
    return x


def _resample(x: np.ndarray, sr: int, new_sr: int) -> np.ndarray:
    if sr == new_sr:
        return x
    import torch

    return resample(torch.from_numpy(x.astype(np.float32)), int(sr), int(new_sr)).double().numpy()


def _pair(ref, deg) -> tuple[np.ndarray, np.ndarray]:
    ref, deg = _mono(ref), _mono(deg)
    n = min(ref.size, deg.size)
    if n == 0:
        raise ValueError("empty waveform")
    return ref[:n], deg[:n]


def pesq_wb(ref, deg, sr: int) -> float:
    """Wide-band PESQ (MOS-LQO) of ``deg`` against ``ref``; NaN when PESQ finds no speech in
    ``ref`` or the signals are too short for it (under ~0.25 s)."""
    from pesq import BufferTooShortError, NoUtterancesError, pesq

    ref, deg = _pair(ref, deg)
    if not np.abs(ref).max() > 0:  # digital silence: nothing to compare
        return float("nan")
    ref, deg = _resample(ref, sr, JUDGE_SR), _resample(deg, sr, JUDGE_SR)
    try:
        return float(pesq(JUDGE_SR, ref, deg, "wb"))
    except (NoUtterancesError, BufferTooShortError):
        return float("nan")


def stoi(ref, deg, sr: int, extended: bool = False) -> float:
    """Short-time objective intelligibility (pystoi; ESTOI with ``extended=True``)."""
    from pystoi import stoi as _stoi

    ref, deg = _pair(ref, deg)
    return float(_stoi(ref, deg, int(sr), extended=extended))


@lru_cache(maxsize=1)
def _dnsmos_model(threads: int):
    """speechmos' DNSMOS (P.835 SIG/BAK/OVRL model + P.808 model) with ONNX sessions limited to
    ``threads`` CPU threads (speechmos' own ``run`` uses every core)."""
    import onnxruntime as ort
    from speechmos import dnsmos as sm

    models = os.path.join(os.path.dirname(sm.__file__), "dnsmos_models")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    model = sm.DNSMOS.__new__(sm.DNSMOS)  # speechmos' class, our session options
    model.primary_model_path = os.path.join(models, "sig_bak_ovr.onnx")
    model.onnx_sess, model.p808_onnx_sess = (
        ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        for path in (model.primary_model_path, os.path.join(models, "model_v8.onnx"))
    )
    return model


def dnsmos(wav, sr: int) -> dict[str, float]:
    """DNSMOS P.835 (``sig``, ``bak``, ``ovrl``) and P.808 (``p808``) of one waveform.

    Resampled to 16 kHz and clipped to [-1, 1]. The model scores 9.01 s windows: a shorter clip
    is repeated to exactly one window (speechmos doubles it until it is longer and averages the
    windows of the repetition at 1 s hops, which repeat the same signal and cost up to 7x more);
    a longer one is scored in windows at 1 s hops and averaged (speechmos).
    """
    import torch
    from speechmos.dnsmos import INPUT_LENGTH

    x = np.clip(_resample(_mono(wav), sr, JUDGE_SR), -1.0, 1.0).astype(np.float32)
    if x.size == 0:
        raise ValueError("empty waveform")
    window = int(INPUT_LENGTH * JUDGE_SR)
    if x.size < window:
        x = np.tile(x, -(-window // x.size))[:window]
    out = _dnsmos_model(max(1, torch.get_num_threads()))(x, JUDGE_SR, False)
    return {k: float(out[f"{k}_mos"]) for k in ("sig", "bak", "ovrl", "p808")}
