#!/usr/bin/env python
"""Encode speed (x real time) and decode real-time factor (RTF) per Euler steps and decoder kind.

    python benchmarks/codec_speed.py [--exp-dir egs/mini/sitok/exp] [--seconds 10] [--paper L] [--quick]

Decode RTF for steps {1, 2, 4, 8, 16} x decoder {full, light head} x {base, shortcut}:
* mini geometry: the trained model directories of the mini recipe where they exist
  (tokenizer_mini, refine_mini_shortcut, refine_mini_light_head), else random weights with the
  same architecture (timing does not depend on the weights; the JSON says which);
* paper geometry (``--paper L``): random weights.
``light_head_step_speedup``: time of one full-decoder ODE step / one light-head step (paper
geometry, 12 + 4 layers; ``..._mini`` for 3 + 1). RTF = processing time / audio duration; the
decoder (tokens -> mel) is timed alone and, for the mini models, with the Griffin-Lim vocoder.
The last line is JSON. Never asserted on by tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "toolkit"))

from timing import best_time  # noqa: E402

from sitok.data.mel import GlobalCMVN  # noqa: E402
from sitok.infer import Tokenizer  # noqa: E402
from sitok.models import SiTok, SiTokConfig  # noqa: E402
from sitok.models.loading import load_model_config  # noqa: E402

KINDS = {
    "full/base": {},
    "full/shortcut": {"shortcut": True},
    "light/base": {"light_head_layers": -1},
    "light/shortcut": {"shortcut": True, "light_head_layers": -1},
}
TRAINED = {
    "full/base": "tokenizer_mini",
    "full/shortcut": "refine_mini_shortcut",
    "light/base": "refine_mini_light_head",
}


def config_path(name: str) -> str:
    return name if os.path.exists(name) else os.path.join(ROOT, "recipes/tokenizer/hparams", f"{name}.yaml")


def random_tokenizer(config: dict, kind: str, device: str = "cpu") -> Tokenizer:
    cfg = dict(config, **KINDS[kind])
    if cfg.get("light_head_layers") == -1:
        cfg["light_head_layers"] = max(1, cfg["dec_layers"] // 4)  # paper: 12 + 4
    torch.manual_seed(0)
    with torch.device(device):
        model = SiTok(SiTokConfig.from_dict(cfg)).eval()
    return Tokenizer(model, GlobalCMVN.paper(), vocoder="griffin_lim", device=device)


def load(exp_dir: str, config: str, kind: str) -> tuple[Tokenizer, str]:
    d = os.path.join(exp_dir, TRAINED.get(kind, "-"), "model")
    if os.path.exists(os.path.join(d, "config.json")):
        return Tokenizer.from_pretrained(d, vocoder="griffin_lim"), f"trained ({d})"
    return random_tokenizer(load_model_config(config_path(config)), kind), f"random ({config})"


def step_seconds(tok: Tokenizer, tokens: int, repeats: int) -> float:
    """Time of one ODE step (the per-step part of the decoder) on ``tokens`` tokens."""
    m = tok.model
    codes = torch.zeros(1, m.config.num_codebooks, tokens, dtype=torch.long, device=tok.device)
    with torch.no_grad():
        h = m.decoder.condition(m.cond_from_codes(codes))
        x = torch.randn(1, tokens, m.config.frame_dim, device=tok.device)
        t = torch.full((1,), 0.5, device=tok.device)
        return best_time(lambda: m.velocity(x, t, h), repeats)


def measure(tok: Tokenizer, seconds: float, steps_list, repeats: int, vocoder: bool = True) -> dict:
    sr = tok.sample_rate
    wav = torch.randn(int(seconds * sr)) * 0.1
    res = {"encode_x_realtime": seconds / best_time(lambda: tok.encode(wav, sr), repeats)}
    codes = tok.encode(wav, sr)
    res["decoder_rtf"] = {
        s: best_time(lambda s=s: tok.decode_mel(codes, steps=s), repeats) / seconds for s in steps_list
    }
    res["step_seconds"] = step_seconds(tok, codes.shape[-1], repeats)
    if vocoder:
        mel = tok.decode_mel(codes, steps=1, keep_device=True)  # the vocoder's input, on its device
        res["vocoder_rtf"] = best_time(lambda: tok.vocoder(mel), repeats) / seconds
        res["decode_rtf"] = {s: r + res["vocoder_rtf"] for s, r in res["decoder_rtf"].items()}
    return res


def table(name: str, results: dict, steps) -> None:
    print(f"  {name}: decoder RTF by steps")
    print("    kind            " + "".join(f"{s:>9d}" for s in steps) + "   step ms")
    for kind, r in results.items():
        print(
            f"    {kind:15s} "
            + "".join(f"{r['decoder_rtf'][s]:9.4f}" for s in steps)
            + f"   {1e3 * r['step_seconds']:.2f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp-dir", default=os.path.join(ROOT, "egs/mini/sitok/exp"))
    ap.add_argument("--config", default="mini")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--paper", default="L", help="paper geometry with random weights ('' to skip)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="5 s of audio (paper geometry 2 s, steps 1 and 2), 1 repeat")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    seconds, repeats = (5.0, 1) if a.quick else (a.seconds, 3)
    steps = [1, 2, 4, 8, 16]
    out = {"device": a.device, "threads": torch.get_num_threads(), "audio_seconds": seconds, "mini": {}}
    mini = {}
    for kind in KINDS:
        tok, what = load(a.exp_dir, a.config, kind)
        if a.device != "cpu":
            tok = Tokenizer(tok.model, tok.cmvn, tok.mel_cfg, vocoder="griffin_lim", device=a.device)
        mini[kind] = measure(tok, seconds, steps, repeats)
        out["mini"][kind] = what
    out["encode_x_realtime"] = mini["full/base"]["encode_x_realtime"]
    out["vocoder_rtf"] = mini["full/base"]["vocoder_rtf"]
    out["decoder_rtf"] = {k: r["decoder_rtf"] for k, r in mini.items()}
    out["decode_rtf"] = {k: r["decode_rtf"] for k, r in mini.items()}
    out["light_head_step_speedup_mini"] = mini["full/base"]["step_seconds"] / mini["light/base"]["step_seconds"]
    print(f"mini geometry; {seconds:g} s of audio, {out['threads']} threads, device {a.device}")
    print(f"  encode: {out['encode_x_realtime']:.0f} x real time; Griffin-Lim vocoder RTF {out['vocoder_rtf']:.3f}")
    table("mini", mini, steps)
    print(f"  light head per-step speed-up (3 + 1 layers): {out['light_head_step_speedup_mini']:.2f} x")
    if a.paper:
        path = config_path(a.paper)
        psteps = [1, 2] if a.quick and a.device == "cpu" else steps
        pseconds = 2.0 if a.quick else seconds
        paper = {}
        for kind in KINDS:
            tok = random_tokenizer(load_model_config(path), kind, a.device)
            paper[kind] = measure(tok, pseconds, psteps, 1 if a.quick else 2, vocoder=False)
            paper[kind]["parameters"] = tok.model.num_parameters()
            del tok
        speedup = paper["full/base"]["step_seconds"] / paper["light/base"]["step_seconds"]
        out["light_head_step_speedup"] = speedup
        out[f"paper_{a.paper}"] = {
            "audio_seconds": pseconds,
            "decoder_rtf": {k: r["decoder_rtf"] for k, r in paper.items()},
            "step_seconds": {k: r["step_seconds"] for k, r in paper.items()},
            "parameters": {k: r["parameters"] for k, r in paper.items()},
            "encode_x_realtime": paper["full/base"]["encode_x_realtime"],
            "paper_reported_rtf": {16: 0.041, 8: 0.024, 4: 0.013},
        }
        print(
            f"{a.paper} geometry (random weights, {paper['full/base']['parameters'] / 1e9:.2f} B), "
            f"{pseconds:g} s of audio"
        )
        table(a.paper, paper, psteps)
        print(
            f"  light head per-step speed-up (12 + 4 layers): {speedup:.2f} x; paper (GPU): RTF 0.041 / 0.024 / "
            "0.013 at 16 / 8 / 4 steps"
        )
    print(json.dumps(out, default=lambda v: round(v, 5) if isinstance(v, float) else v))


if __name__ == "__main__":
    main()
