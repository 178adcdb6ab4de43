#!/usr/bin/env python
"""Encode speed (x real time) and decode real-time factor (RTF) per number of Euler steps.

    python benchmarks/codec_speed.py [--model-dir egs/mini/sitok/exp/tokenizer_mini/model]
                                     [--seconds 10] [--paper L] [--quick]

* mini: the trained model directory when it exists, else the mini config with random weights;
* paper geometry (``--paper L``): the L configuration with random weights, fewer steps on CPU.
RTF = processing time / audio duration (lower is faster); the decoder (tokens -> mel, ODE) is
timed alone and with the Griffin-Lim vocoder. The last line is JSON with ``encode_x_realtime``
and ``decode_rtf`` keyed by steps. Never asserted on by tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "toolkit"))

from sitok.cli import load_model_config  # noqa: E402
from sitok.data.mel import GlobalCMVN  # noqa: E402
from sitok.infer import Tokenizer  # noqa: E402
from sitok.models import SiTok, SiTokConfig  # noqa: E402
from timing import best_time  # noqa: E402


def load(model_dir: str | None, config: str) -> tuple[Tokenizer, str]:
    if model_dir and os.path.exists(os.path.join(model_dir, "config.json")):
        return Tokenizer.from_pretrained(model_dir), f"trained ({model_dir})"
    path = config if os.path.exists(config) else os.path.join(ROOT, "recipes/tokenizer/hparams", f"{config}.yaml")
    torch.manual_seed(0)
    return Tokenizer(SiTok(SiTokConfig.from_dict(load_model_config(path))), GlobalCMVN.paper()), f"random ({config})"


def measure(tok: Tokenizer, seconds: float, steps_list, repeats: int, vocoder: bool = True) -> dict:
    sr = tok.sample_rate
    wav = torch.randn(int(seconds * sr)) * 0.1
    res = {"encode_x_realtime": seconds / best_time(lambda: tok.encode(wav, sr), repeats)}
    codes = tok.encode(wav, sr)
    res["decoder_rtf"] = {s: best_time(lambda s=s: tok.decode_mel(codes, steps=s), repeats) / seconds for s in steps_list}
    if vocoder:
        mel = tok.decode_mel(codes, steps=1)
        res["vocoder_rtf"] = best_time(lambda: tok.vocoder(mel), repeats) / seconds
        res["decode_rtf"] = {s: r + res["vocoder_rtf"] for s, r in res["decoder_rtf"].items()}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=os.path.join(ROOT, "egs/mini/sitok/exp/tokenizer_mini/model"))
    ap.add_argument("--config", default="mini")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--paper", default="L", help="paper geometry with random weights ('' to skip)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="5 s of audio, 1 repeat, paper geometry at 1 step only")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    seconds, repeats = (5.0, 1) if a.quick else (a.seconds, 3)
    steps = [1, 2, 4, 8, 16]
    tok, what = load(a.model_dir, a.config)
    if a.device != "cpu":
        tok = Tokenizer(tok.model, tok.cmvn, tok.mel_cfg, device=a.device)
    out = {"device": a.device, "threads": torch.get_num_threads(), "audio_seconds": seconds, "mini": what}
    out.update(measure(tok, seconds, steps, repeats))
    print(f"mini model, {what}; {seconds:g} s of audio, {out['threads']} threads")
    print(f"  encode: {out['encode_x_realtime']:.0f} x real time; Griffin-Lim vocoder RTF {out['vocoder_rtf']:.3f}")
    for s in steps:
        print(f"  decode {s:2d} steps: decoder RTF {out['decoder_rtf'][s]:.4f}, with vocoder {out['decode_rtf'][s]:.4f}")
    if a.paper:
        torch.manual_seed(0)
        path = os.path.join(ROOT, "recipes/tokenizer/hparams", f"{a.paper}.yaml")
        with torch.device(a.device):
            model = SiTok(SiTokConfig.from_dict(load_model_config(path))).eval()
        big = Tokenizer(model, GlobalCMVN.paper(), device=a.device)
        psteps = [1] if a.quick and a.device == "cpu" else [4, 8, 16]
        paper = measure(big, 2.0 if a.quick else seconds, psteps, 1 if a.quick else 2, vocoder=False)
        out[f"paper_{a.paper}"] = {"parameters": model.num_parameters(), **paper,
                                   "paper_reported_rtf": {16: 0.041, 8: 0.024, 4: 0.013}}  # fmt: skip
        print(f"  {a.paper} geometry (random weights, {model.num_parameters() / 1e9:.2f} B): encode "
              f"{paper['encode_x_realtime']:.1f} x real time; decoder RTF "
              + ", ".join(f"{s} steps {r:.3f}" for s, r in paper["decoder_rtf"].items())
              + " (paper, GPU: 16 steps 0.041, 8 steps 0.024, 4 steps 0.013)")  # fmt: skip
    print(json.dumps(out, default=lambda v: round(v, 5) if isinstance(v, float) else v))


if __name__ == "__main__":
    main()
