#!/usr/bin/env python
"""Copy-synthesis evaluation of vocoders: ground-truth mel -> vocoder -> waveform, scored
against the original audio.

    python recipes/vocoder/evaluate.py --dump dump/test --vocoder exp/vocoder_mini/model \\
        --out exp/vocoder_mini/eval_test [--max-utts 100] [--write-wavs]

For each utterance of ``<dump>/manifest.csv``: load the 24 kHz audio, compute the log-mel with
``sitok.data.mel.MelFrontend``, vocode it with Griffin-Lim and with the trained vocoder
(``--vocoder``: a vocoder directory, or a model directory holding ``vocoder/``), and score both
with PESQ-WB, STOI and DNSMOS (P.835 SIG/BAK/OVRL, P.808); DNSMOS of the original audio is the
reference row. Writes ``<out>/scores.csv`` (one row per utterance and system) and
``<out>/summary.json`` (means, counts, judge versions, wall time), both atomically.
With ``--max-utts N`` an evenly spaced subset of N utterances (in manifest order) is scored.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from sitok.data.audio import AudioError, load_audio, write_wav_atomic
from sitok.data.mel import MelConfig, MelFrontend
from sitok.eval.quality import dnsmos, judge_versions, pesq_wb, stoi
from sitok.fileio import atomic_open, write_text_atomic
from sitok.infer.vocoder import GriffinLimVocoder, load_vocoder

logger = logging.getLogger("sitok.vocoder.evaluate")
METRICS = ["pesq_wb", "stoi", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808"]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dump", required=True, help="a dump directory with manifest.csv (e.g. dump/test)")
    p.add_argument(
        "--vocoder", required=True, help="vocoder directory (config.json + model.pt) or model dir with vocoder/"
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--max-utts", type=int, default=0, help="score an evenly spaced subset of this many utterances")
    p.add_argument("--write-wavs", action="store_true", help="also write <out>/wavs/<utt>_<system>.wav")
    p.add_argument("--griffin-lim-iters", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch / ONNX threads")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def select(df: pd.DataFrame, max_utts: int) -> pd.DataFrame:
    if max_utts and len(df) > max_utts:
        idx = np.unique(np.linspace(0, len(df) - 1, max_utts).round().astype(int))
        df = df.iloc[idx]
    return df


def score(ref: torch.Tensor, wav: torch.Tensor | None, sr: int) -> dict:
    """All metrics of ``wav`` (``None``: the reference itself, DNSMOS only)."""
    row = {}
    target = ref if wav is None else wav
    if wav is not None:
        row["pesq_wb"] = pesq_wb(ref, wav, sr)
        row["stoi"] = stoi(ref, wav, sr)
    for k, v in dnsmos(target, sr).items():
        row[f"dnsmos_{k}"] = v
    return row


def summarise(scores: pd.DataFrame) -> dict:
    out = {}
    for system, g in scores.groupby("system", sort=False):
        s = {"utterances": len(g)}
        for m in METRICS:
            vals = g[m].dropna() if m in g else pd.Series(dtype=float)
            s[m] = float(vals.mean()) if len(vals) else None
            s[f"{m}_count"] = len(vals)
        s["vocode_rtf"] = float(g["vocode_s"].sum() / g["duration"].sum()) if g["vocode_s"].notna().any() else None
        out[system] = s
    return out


def markdown(summary: dict) -> str:
    lines = [
        "| system | PESQ-WB | STOI | DNSMOS SIG | BAK | OVRL | P.808 | utts |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for system, s in summary.items():
        cells = ["-" if s[m] is None else f"{s[m]:.3f}" for m in METRICS]
        lines.append(f"| {system} | " + " | ".join(cells) + f" | {s['utterances']} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.makedirs(args.out, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(os.path.join(args.out, "eval.log"))],
    )
    torch.set_num_threads(args.threads)
    t_start = time.time()
    manifest = os.path.join(args.dump, "manifest.csv")
    if not os.path.exists(manifest):
        raise FileNotFoundError(f"{manifest} not found")
    df = select(pd.read_csv(manifest, dtype={"ID": str}), args.max_utts)
    cfg = MelConfig()
    sr = cfg.sample_rate
    frontend = MelFrontend(cfg)
    systems = {
        "griffin_lim": GriffinLimVocoder(cfg, n_iter=args.griffin_lim_iters),
        "vocos": load_vocoder("vocos", args.vocoder, cfg),
    }
    logger.info(
        "scoring %d utterances of %s with %s; vocos from %s (%d parameters); judges %s",
        len(df),
        manifest,
        ", ".join(systems),
        args.vocoder,
        systems["vocos"].num_parameters(),
        json.dumps(judge_versions()),
    )
    wav_dir = os.path.join(args.out, "wavs")
    if args.write_wavs:
        os.makedirs(wav_dir, exist_ok=True)
    rows, skipped = [], []
    for _, item in tqdm(df.iterrows(), total=len(df), desc="vocoder eval", mininterval=10, disable=args.no_progress):
        uid = item["ID"]
        try:
            ref = load_audio(item["wav"], sr)
        except AudioError as exc:
            skipped.append(str(exc))
            logger.warning("skipped %s: %s", uid, exc)
            continue
        mel = frontend(ref)
        duration = ref.numel() / sr
        rows.append(
            {"utt": uid, "system": "original", "duration": duration, "vocode_s": math.nan, **score(ref, None, sr)}
        )
        for name, vocoder in systems.items():
            t0 = time.time()
            wav = vocoder(mel)
            vocode_s = time.time() - t0
            wav = wav[: ref.numel()]  # T * hop >= N samples: drop the padding of the last frame
            rows.append({"utt": uid, "system": name, "duration": duration, "vocode_s": vocode_s, **score(ref, wav, sr)})
            if args.write_wavs:
                write_wav_atomic(os.path.join(wav_dir, f"{uid}_{name}.wav"), wav.clamp(-1, 1), sr)
    if not rows:
        raise RuntimeError(f"{manifest}: no utterance could be scored ({len(skipped)} skipped)")
    scores = pd.DataFrame(rows)
    with atomic_open(os.path.join(args.out, "scores.csv")) as fh:
        scores.to_csv(fh, index=False, float_format="%.4f")
    summary = {
        "dump": args.dump,
        "vocoder": args.vocoder,
        "utterances": int(scores["utt"].nunique()),
        "skipped": skipped,
        "griffin_lim_iters": args.griffin_lim_iters,
        "threads": args.threads,
        "systems": summarise(scores),
        "judge_versions": judge_versions(),
        "wall_time_s": round(time.time() - t_start, 1),
    }
    write_text_atomic(os.path.join(args.out, "summary.json"), json.dumps(summary, indent=1) + "\n")
    logger.info(
        "%d utterances (%d skipped) in %.1f s\n%s",
        summary["utterances"],
        len(skipped),
        summary["wall_time_s"],
        markdown(summary["systems"]),
    )
    return summary


if __name__ == "__main__":
    main()
