#!/usr/bin/env python
"""Plot and tabulate a tokenizer training run: python tools/train_curve.py EXP_DIR [EXP_DIR ...]

Reads EXP_DIR/train_stats.jsonl (or, for older runs, speechbrain's train_log.txt), writes
EXP_DIR/train_curve.png and prints a markdown table (every few epochs) for docs/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import re
import sys


def load(exp_dir: str) -> list[dict]:
    path = os.path.join(exp_dir, "train_stats.jsonl")
    if os.path.exists(path):
        by = {}
        for line in open(path, encoding="utf-8"):
            if line.strip():
                r = json.loads(line)
                by[r["epoch"]] = r
        return [by[e] for e in sorted(by)]
    rows = []
    for line in open(os.path.join(exp_dir, "train_log.txt"), encoding="utf-8"):
        meta, train, valid = (line.split(" - ") + ["", ""])[:3]

        def parse(s, pre):
            return {k.strip()[len(pre) :]: float(v) for k, v in re.findall(r"(" + pre + r"[\w ]+?): ([-\d.e+]+)", s)}

        m = parse(meta, "")
        rows.append(
            {
                "epoch": int(m["epoch"]),
                "lr": m.get("lr"),
                "minutes": m.get("minutes"),
                "train": parse(train, "train "),
                "valid": parse(valid, "valid "),
            }
        )
    return rows


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for exp in sys.argv[1:]:
        rows = load(exp)
        ep = [r["epoch"] for r in rows]
        fig, ax = plt.subplots(1, 3, figsize=(13, 3.4))
        ax[0].plot(ep, [r["train"]["diff"] for r in rows], label="train")
        ax[0].plot(ep, [r["valid"]["diff"] for r in rows], label="valid")
        ax[0].set_title("decoder loss (L1)")
        ax[1].plot(ep, [r["train"]["ctc"] for r in rows], label="train")
        ax[1].plot(ep, [r["valid"]["ctc"] for r in rows], label="valid")
        ax[1].set_title("CTC loss (per unit)")
        ax[2].plot(ep, [100 * r["valid"].get("codebook_usage", float("nan")) for r in rows])  # none in phase A
        ax[2].set_title("codebook usage on valid (%)")
        for a in ax:
            a.set_xlabel("epoch")
        ax[0].legend()
        fig.suptitle(os.path.basename(os.path.normpath(exp)))
        fig.tight_layout()
        fig.savefig(os.path.join(exp, "train_curve.png"), dpi=80)
        print(f"\n{exp} ({len(rows)} epochs, {rows[-1].get('minutes') or 0:.1f} min)\n")
        print(
            "| epoch | minutes | train diff | valid diff | train CTC | valid CTC | valid usage % "
            "| valid perplexity | audio-s/s |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        step = max(1, len(rows) // 8)
        for r in rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else []):
            t, v = r["train"], r["valid"]
            usage = (
                f"{100 * v['codebook_usage']:.1f} | {v['code_perplexity']:.0f}" if "codebook_usage" in v else "— | —"
            )
            print(
                f"| {r['epoch']} | {r.get('minutes') or 0:.1f} | {t['diff']:.3f} | {v['diff']:.3f} | {t['ctc']:.2f} | "
                f"{v['ctc']:.2f} | {usage} | {t['audio_s_per_s']:.0f} |"
            )


if __name__ == "__main__":
    main()
