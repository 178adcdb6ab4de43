#!/usr/bin/env python
"""Peak memory and time of ``dump_codes`` against the size of the features it encodes.

    python benchmarks/dump_codes_memory.py [--utts 1000] [--part-utts 200] [--batch-frames 20000]

Makes a synthetic feature dump dir in a temporary directory: N random log-mels [T, 128] float32
of 2-15 s at 50 frames/s (kaldiio feats.ark/scp + utt2num_frames, as the feature stage writes
them), and a tiny untrained model directory (config.json, model.pt, cmvn.json, as export writes
them). Then it runs ``dump_codes`` once, in a fresh child process so that the peak resident set
size (``ru_maxrss`` of the child) is the encoding's alone, and prints that peak against the
process's size before encoding (after imports and the model) and the total size of the features;
then the same for the in-memory way ``dump_codes`` replaced (every mel loaded, ``encode_mels``,
``write_codes``) for comparison. The last line is JSON with every figure. Never asserted on by tests.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "toolkit"))

TINY_MODEL = {
    "hidden": 32,
    "intermediate": 64,
    "heads": 2,
    "enc_layers": 1,
    "dec_layers": 1,
    "ctc_layers": 1,
    "codebook_size": 64,
    "codebook_dim": 8,
    "vocab_size": 20,
}


def make_dump(path: str, n: int, seed: int = 0, frames: tuple[int, int] = (100, 750), speakers: int = 20) -> int:
    """A feature dump dir of ``n`` random log-mels of ``frames`` frames (default 2-15 s) x 128 bins
    (float32 Kaldi matrices, as the feature stage writes them) with utt2num_frames; returns their bytes."""
    import kaldiio

    from sitok.data.kaldi import write_table

    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)
    counts, total = {}, 0
    ark, scp = os.path.join(path, "feats.ark"), os.path.join(path, "feats.scp")
    with kaldiio.WriteHelper(f"ark,scp:{ark},{scp}") as writer:
        for i in range(n):
            utt = f"spk{i % speakers:02d}-u{i:06d}"
            mel = rng.normal(-5.0, 2.0, (int(rng.integers(frames[0], frames[1] + 1)), 128)).astype(np.float32)
            writer(utt, mel)
            counts[utt] = mel.shape[0]
            total += mel.nbytes
    write_table(os.path.join(path, "utt2num_frames"), counts)
    return total


def make_model_dir(path: str) -> str:
    """An untrained tiny SiTok saved as ``sitok export`` lays a model directory out."""
    import torch

    from sitok.data.mel import GlobalCMVN
    from sitok.models import SiTok, SiTokConfig
    from sitok.models.loading import write_model_dir

    torch.manual_seed(0)
    return write_model_dir(path, SiTok(SiTokConfig(**TINY_MODEL)), cmvn=GlobalCMVN.paper())


def rss_mib() -> float:
    """The current resident set size of this process (Linux /proc), MiB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def encode(model_dir: str, dump_dir: str, out_dir: str, batch_frames: int, part_utts: int, queue, in_memory) -> None:
    """Child process: load the tokenizer, run dump_codes (or the in-memory encoding), report
    (utterances, RSS before, peak RSS, seconds)."""
    import torch

    from sitok.data.kaldi import read_mat, read_scp
    from sitok.infer import Tokenizer
    from sitok.infer.sets import dump_codes, encode_mels, write_codes

    torch.set_num_threads(1)
    tok = Tokenizer.from_pretrained(model_dir, vocoder="griffin_lim")
    before = rss_mib()
    t0 = time.perf_counter()
    if in_memory:
        feats = read_scp(os.path.join(dump_dir, "feats.scp"))
        mels = {u: torch.from_numpy(read_mat(s).copy()) for u, s in feats.items()}
        n = write_codes(encode_mels(tok, mels, batch_frames)[0], out_dir)
    else:
        n = dump_codes(tok, dump_dir, out_dir, batch_frames=batch_frames, progress=False, part_utts=part_utts)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    queue.put((n, before, peak, seconds))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--utts", type=int, default=1000, help="utterances in the synthetic dump (default: %(default)s)")
    p.add_argument("--part-utts", type=int, default=200, help="utterances per part (default: %(default)s)")
    p.add_argument("--batch-frames", type=int, default=20000, help="padded frames per batch (default: %(default)s)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="dump_codes_memory.") as root:
        t0 = time.perf_counter()
        feats_bytes = make_dump(os.path.join(root, "dump"), a.utts)
        model_dir = make_model_dir(os.path.join(root, "model"))
        make_s = time.perf_counter() - t0
        ctx = multiprocessing.get_context("spawn")  # a fresh process: its peak is the encoding's own
        runs = {}
        for name, in_memory in (("dump_codes", False), ("in-memory", True)):
            queue = ctx.Queue()
            out = os.path.join(root, f"codes_{name}")
            args = (model_dir, os.path.join(root, "dump"), out, a.batch_frames, a.part_utts, queue, in_memory)
            child = ctx.Process(target=encode, args=args)
            child.start()
            runs[name] = queue.get()
            child.join()
    feats_mib = feats_bytes / 2**20
    print(f"synthetic dump: {a.utts} utterances, features {feats_mib:.1f} MiB (float32), made in {make_s:.1f} s")
    for name, (n, before, peak, seconds) in runs.items():
        print(
            f"{name:>10}: {n} utterances in {seconds:.1f} s ({n / seconds:.0f} utt/s; 1 thread, CPU, tiny model); "
            f"RSS {before:.1f} MiB before, peak {peak:.1f} MiB: +{peak - before:.1f} MiB for {feats_mib:.1f} MiB "
            f"of features ({(peak - before) / feats_mib:.0%})"
        )
    n, before, peak, seconds = runs["dump_codes"]
    figures = {
        "utts": n,
        "features_mib": round(feats_mib, 1),
        "rss_before_mib": round(before, 1),
        "peak_rss_mib": round(peak, 1),
        "encode_growth_mib": round(peak - before, 1),
        "seconds": round(seconds, 2),
        "batch_frames": a.batch_frames,
        "part_utts": a.part_utts,
        "in_memory_growth_mib": round(runs["in-memory"][2] - runs["in-memory"][1], 1),
        "in_memory_seconds": round(runs["in-memory"][3], 2),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
