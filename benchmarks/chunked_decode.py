#!/usr/bin/env python
"""Latency against quality of chunked (streaming) decoding on a split, beside offline decoding.

    cd egs/mini/sitok && python ../../../benchmarks/chunked_decode.py --model-dir exp/tokenizer_mini/model \\
        --dump-dir dump/test --codes-dir exp/tokenizer_mini/codes/test --lm data/lang_char/judge_lm.arpa \\
        --out exp/tokenizer_mini/chunked --settings 4:0 3:1 2:2 1:1 [--max-utts 0]

For every utterance of the split, its codes are decoded offline (``Tokenizer.decode_mel``) and by
``ChunkedDecoder`` at each CHUNK:LOOKAHEAD setting (tokens), all at ``--steps`` and start-noise
``--temperature`` (0: the mini recipe's dev-selected setting, deterministic); each log-mel goes
through the model directory's vocoder (Griffin-Lim when it has none) into a data dir that the
offline ASR judge reads. Printed per setting: algorithmic latency (CHUNK + LOOKAHEAD tokens x 80
ms), mel L1 to the ground-truth mel (normalised log-mel, as the evaluation computes it) and its
ratio to offline decoding's, mel L1 to the offline decode, judge WER, decode real-time factor.
The last line is JSON. Never asserted on by tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "toolkit"))

from sitok.data.audio import write_wav_atomic  # noqa: E402
from sitok.data.kaldi import read_mat, read_scp, read_table, write_table  # noqa: E402
from sitok.eval.engine import judge_wer  # noqa: E402
from sitok.eval.metrics import mel_l1  # noqa: E402
from sitok.infer import Tokenizer  # noqa: E402
from sitok.infer.streaming import ChunkedDecoder  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--dump-dir", required=True, help="the split's feature dump (feats.scp, text)")
    p.add_argument("--codes-dir", required=True, help="the split's codes (codes.scp)")
    p.add_argument("--out", required=True, help="directory for the decoded data dirs")
    p.add_argument("--lm", default=None, help="the ASR judge's language model")
    p.add_argument("--settings", nargs="+", default=["4:0", "3:1", "2:2", "1:1"], help="CHUNK:LOOKAHEAD tokens")
    p.add_argument(
        "--context",
        type=int,
        default=None,
        help="tokens of left context per window (default: 16; a chunk-causal decoder: all)",
    )
    p.add_argument("--crossfade", type=int, default=1, help="tokens cross-faded (at most the look-ahead)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-utts", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tok = Tokenizer.from_pretrained(a.model_dir)
    codes_scp, feats = read_scp(os.path.join(a.codes_dir, "codes.scp")), read_scp(os.path.join(a.dump_dir, "feats.scp"))
    texts = read_table(os.path.join(a.dump_dir, "text"))
    utts = sorted(u for u in codes_scp if u in feats and u in texts)
    utts = utts[: a.max_utts] if a.max_utts else utts
    rate = tok.model.config.token_rate
    names = ["offline"] + [f"chunk{s.replace(':', '_la')}" for s in a.settings]
    stats = {n: {"l1_gt": 0.0, "l1_offline": 0.0, "seconds": 0.0} for n in names}
    audio_s = 0.0
    for n in names:
        os.makedirs(os.path.join(a.out, n, "wav"), exist_ok=True)
    for u in utts:
        codes = torch.as_tensor(read_mat(codes_scp[u])).long()  # [CN, T]
        gt = tok.normalise(torch.as_tensor(read_mat(feats[u])))
        audio_s += codes.shape[1] / rate
        t0 = time.perf_counter()
        offline = tok.decode_mel(codes, steps=a.steps, temperature=a.temperature)[0]
        stats["offline"]["seconds"] += time.perf_counter() - t0
        mels = {"offline": offline}
        for name, setting in zip(names[1:], a.settings):
            chunk, lookahead = (int(x) for x in setting.split(":"))
            dec = ChunkedDecoder(
                tok, chunk, lookahead, a.context, min(a.crossfade, chunk, lookahead), a.steps, temperature=a.temperature
            )
            t0 = time.perf_counter()
            parts = [dec.push(codes[:, i : i + 1]) for i in range(codes.shape[1])]  # one token at a time
            mels[name] = torch.cat(parts + [dec.flush()])
            stats[name]["seconds"] += time.perf_counter() - t0
        for name, mel in mels.items():
            n = tok.normalise(mel)
            stats[name]["l1_gt"] += mel_l1(n, gt) / len(utts)
            stats[name]["l1_offline"] += mel_l1(n, tok.normalise(offline)) / len(utts)
            wav = tok.vocoder(mel[None].to(tok.device))[0].cpu().numpy()
            write_wav_atomic(os.path.join(a.out, name, "wav", f"{u}.wav"), wav, tok.sample_rate)
    rows = []
    for name, setting in zip(names, [None] + a.settings):
        d = os.path.join(a.out, name)
        write_table(os.path.join(d, "wav.scp"), {u: os.path.abspath(os.path.join(d, "wav", f"{u}.wav")) for u in utts})
        write_table(os.path.join(d, "text"), {u: texts[u] for u in utts})
        wer = judge_wer(d, os.path.join(d, "judge_wer.tsv"), lm=a.lm, progress=False)["wer"]
        chunk, lookahead = (int(x) for x in setting.split(":")) if setting else (None, None)
        s = stats[name]
        rows.append(
            {
                "setting": name,
                "chunk": chunk,
                "lookahead": lookahead,
                "latency_ms": None if setting is None else 1000.0 * (chunk + lookahead) / rate,
                "mel_l1_gt": s["l1_gt"],
                "mel_l1_offline": s["l1_offline"],
                "wer": wer,
                "decode_rtf": s["seconds"] / audio_s,
            }
        )
    base = rows[0]
    print(
        f"{len(utts)} utterances, {audio_s:.0f} s; {a.steps} steps, temperature {a.temperature}, "
        f"context {a.context or 'default'}"
    )
    print("| setting | latency | mel L1 to ground truth | vs offline | mel L1 to offline | judge WER | decode RTF |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        lat = "whole utterance" if r["latency_ms"] is None else f"{r['latency_ms']:.0f} ms"
        print(
            f"| {r['setting']} | {lat} | {r['mel_l1_gt']:.4f} | {r['mel_l1_gt'] / base['mel_l1_gt']:.3f}x | "
            f"{r['mel_l1_offline']:.4f} | {r['wer']:.2f} % | {r['decode_rtf']:.4f} |"
        )
    print(json.dumps({"utterances": len(utts), "steps": a.steps, "temperature": a.temperature, "rows": rows}))


if __name__ == "__main__":
    main()
