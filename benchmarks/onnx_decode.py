#!/usr/bin/env python
"""Decode real-time factor of onnxruntime against PyTorch on the same model and codes.

    python benchmarks/onnx_decode.py [--model-dir egs/mini/sitok/exp/tokenizer_mini/model] [--seconds 10]
        [--threads 2] [--steps 1 4 16]

Exports the model directory (or, without one, random weights of the mini architecture: timing does
not depend on the weights) with ``sitok.infer.onnx.export_onnx``, then times tokens -> log-mel at
each step count through ``Tokenizer.decode_mel`` (PyTorch) and ``OnnxTokenizer.decode_mel``
(onnxruntime), both on ``--threads`` threads, from the same codes and start noise; with a vocoder
graph also log-mel -> waveform. RTF = processing time / audio duration, best of 3. The last line
is JSON. Never asserted on by tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "toolkit"))

from timing import best_time  # noqa: E402

from sitok.data.mel import GlobalCMVN  # noqa: E402
from sitok.infer import Tokenizer  # noqa: E402
from sitok.infer.onnx import OnnxTokenizer, export_onnx  # noqa: E402
from sitok.models import SiTok, SiTokConfig  # noqa: E402
from sitok.models.loading import load_model_config  # noqa: E402


def tokenizer(model_dir: str | None) -> tuple[Tokenizer, str]:
    if model_dir and os.path.exists(os.path.join(model_dir, "config.json")):
        return Tokenizer.from_pretrained(model_dir), f"trained ({model_dir})"
    cfg = load_model_config(os.path.join(ROOT, "recipes/tokenizer/hparams/mini.yaml"))
    torch.manual_seed(0)
    return Tokenizer(SiTok(SiTokConfig.from_dict(cfg)).eval(), GlobalCMVN.paper()), "random (mini.yaml)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=os.path.join(ROOT, "egs/mini/sitok/exp/tokenizer_mini/model"))
    p.add_argument("--seconds", type=float, default=10.0, help="audio duration of the decoded codes")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, nargs="+", default=[1, 4, 16])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tok, source = tokenizer(a.model_dir)
    cfg = tok.model.config
    tokens = int(a.seconds * cfg.token_rate)
    audio_s = tokens / cfg.token_rate
    codes = torch.randint(0, cfg.codebook_size, (cfg.num_codebooks, tokens), generator=torch.Generator().manual_seed(0))
    noise = tok.start_noise(1, tokens, seed=0)[0].numpy()
    with tempfile.TemporaryDirectory() as tmp:
        facts = export_onnx(tok, os.path.join(tmp, "onnx"))
        ox = OnnxTokenizer(os.path.join(tmp, "onnx"), threads=a.threads)
        rows = []
        for steps in a.steps:
            pt = best_time(lambda s=steps: tok.decode_mel(codes, steps=s, seed=0), 3)
            ort = best_time(lambda s=steps: ox.decode_mel(codes.numpy(), steps=s, noise=noise), 3)
            rows.append({"steps": steps, "pytorch_rtf": pt / audio_s, "onnxruntime_rtf": ort / audio_s})
        vocoder = None
        if ox.vocoder is not None:
            mel = tok.decode_mel(codes, steps=1, seed=0)
            pt = best_time(lambda: tok.vocoder(mel), 3)
            ort = best_time(lambda: ox.vocode(mel[0].numpy()), 3)
            vocoder = {"pytorch_rtf": pt / audio_s, "onnxruntime_rtf": ort / audio_s}
    print(f"model: {source}; {audio_s:.1f} s of audio ({tokens} tokens), {a.threads} threads")
    print("| decoder steps | PyTorch RTF | onnxruntime RTF | speed-up |")
    print("|---|---|---|---|")
    for r in rows:
        speedup = r["pytorch_rtf"] / r["onnxruntime_rtf"]
        print(f"| {r['steps']} | {r['pytorch_rtf']:.4f} | {r['onnxruntime_rtf']:.4f} | {speedup:.2f}x |")
    if vocoder:
        print(
            f"vocoder (Vocos): PyTorch RTF {vocoder['pytorch_rtf']:.4f}, onnxruntime {vocoder['onnxruntime_rtf']:.4f}"
        )
    print(f"export check, largest |ONNX - PyTorch|: {facts['check']}")
    print(
        json.dumps(
            {"model": source, "audio_seconds": audio_s, "threads": a.threads, "decode": rows, "vocoder": vocoder}
            | {"check": facts["check"], "numpy": np.__version__}
        )
    )


if __name__ == "__main__":
    main()
