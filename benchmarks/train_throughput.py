#!/usr/bin/env python
"""Tokenizer training throughput: audio-seconds per second, model FLOP utilisation (MFU)
against a measured matmul peak, padding efficiency of the dynamic batches, and same-run
comparisons of the toolkit's Llama block with ``transformers``' LlamaDecoderLayer and of its VQ
with ``vector-quantize-pytorch`` at equal sizes.

    python benchmarks/train_throughput.py [--config mini] [--steps 20] [--quick]
        [--manifest egs/mini/sitok/dump/train/manifest.csv]
    python benchmarks/train_throughput.py --config L --device cuda --precision bf16 [--compile]

On a GPU the step runs under bf16 autocast with fused AdamW (``--precision bf16``), optionally
``torch.compile``d, and the MFU denominator is a measured bf16 matmul peak of that device (or
``--peak-tflops``, e.g. the data-sheet dense figure).

The last line is JSON (audio_seconds_per_second, mfu, padding_efficiency, ...). Never asserted
on by tests. Optional comparison packages: pip install -r tools/requirements-bench.txt
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

import numpy as np
import torch

CPU = torch.device("cpu")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "toolkit"))

from timing import best_time  # noqa: E402

from sitok.models import SiTok, SiTokConfig  # noqa: E402
from sitok.models.loading import load_model_config  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(n: int = 1024, repeats: int = 5, device=CPU, dtype=torch.float32) -> float:
    """Measured matmul FLOP/s of ``dtype`` on ``device`` (the MFU denominator)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)

    def run():
        for _ in range(4):
            a @ b
        sync(device)

    t = best_time(run, warmup=2, repeats=repeats)
    return 4 * 2 * n**3 / t


def durations(manifest: str | None, n: int = 2000, seed: int = 0) -> list[float]:
    if manifest and os.path.exists(manifest):
        with open(manifest, encoding="utf-8") as fh:
            return [float(r["duration"]) for r in csv.DictReader(fh)]
    rng = np.random.default_rng(seed)  # shaped like the mini corpus: ~2.6 s sentences
    return list(np.clip(rng.lognormal(np.log(2.5), 0.3, n), 0.8, 8.0))


def padding_efficiency(durs: list[float], batch_seconds: float, num_buckets: int) -> tuple[float, list[list[int]]]:
    """speechbrain DynamicBatchSampler over these durations: real audio / padded audio."""
    from speechbrain.dataio.sampler import DynamicBatchSampler

    ds = [{"duration": d} for d in durs]
    sampler = DynamicBatchSampler(
        ds,
        max_batch_length=batch_seconds,
        num_buckets=num_buckets,
        lengths_list=durs,
        shuffle=True,
        batch_ordering="random",
    )
    batches = [list(b) for b in sampler]
    real = sum(durs)
    padded = sum(len(b) * max(durs[i] for i in b) for b in batches)
    return real / padded, batches


def train_step_flops(model: SiTok, mel, lengths, targets, target_lengths) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = model(mel, lengths, targets, target_lengths)
        out["loss"].backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def make_batch(durs: list[float], idx: list[int], vocab: int, seed: int = 0, device=CPU):
    g = torch.Generator().manual_seed(seed)
    frames = [int(round(durs[i] * 50)) for i in idx]
    t = max(frames)
    mel = torch.randn(len(idx), t, 128, generator=g)
    lengths = torch.tensor(frames)
    u = max(1, int(t / 50 * 4))  # ~4 units per second
    targets = torch.randint(1, vocab, (len(idx), u), generator=g)
    return tuple(x.to(device) for x in (mel, lengths, targets, torch.full((len(idx),), u)))


def bench_training(
    cfg: SiTokConfig,
    durs,
    batch_seconds,
    num_buckets,
    steps,
    device=CPU,
    precision: str = "fp32",
    compile_model: bool = False,
) -> dict:
    """Timed optimiser steps on dynamic batches of these durations (random mel and targets).
    ``precision`` bf16: autocast on the device (the weights and AdamW states stay fp32)."""
    torch.manual_seed(0)
    model = SiTok(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    step_model = torch.compile(model) if compile_model else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    eff, batches = padding_efficiency(durs, batch_seconds, num_buckets)
    rng = np.random.default_rng(0)
    picks = [batches[i] for i in rng.choice(len(batches), size=min(steps, len(batches)), replace=False)]
    flops = train_step_flops(model, *make_batch(durs, picks[0], cfg.vocab_size, device=device))
    audio0 = sum(durs[i] for i in picks[0])
    step_batches = [make_batch(durs, b, cfg.vocab_size, seed=k, device=device) for k, b in enumerate(picks)]

    def step(batch):
        with autocast:
            out = step_model(*batch)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for batch in step_batches[: 3 if compile_model else 1]:  # warm-up (and compilation)
        step(batch)
    sync(device)
    t0 = time.perf_counter()
    audio = 0.0
    for b, batch in zip(picks, step_batches):
        step(batch)
        audio += sum(durs[i] for i in b)
    sync(device)
    elapsed = time.perf_counter() - t0
    return {
        "parameters": model.num_parameters(),
        "steps": len(picks),
        "audio_seconds_per_second": audio / elapsed,
        "seconds_per_step": elapsed / len(picks),
        "flops_per_audio_second": flops / audio0,
        "padding_efficiency": eff,
        "batches_per_epoch": len(batches),
    }


def bench_llama_block(hidden: int, inter: int, heads: int, seq: int, batch: int) -> dict:
    from sitok.layers import LlamaBlock, RotaryEmbedding

    torch.manual_seed(0)
    ours = LlamaBlock(hidden, inter, heads, causal=True)
    rope = RotaryEmbedding(hidden // heads)(seq)
    x = torch.randn(batch, seq, hidden, requires_grad=True)

    def run_ours():
        ours(x, rope).sum().backward()

    res = {"shape": f"B{batch} T{seq} hidden{hidden} inter{inter} heads{heads}", "sitok_ms": 1e3 * best_time(run_ours)}
    try:
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding
    except ImportError:
        res["transformers_ms"] = None
        return res
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max(4096, seq),
    )
    cfg._attn_implementation = "sdpa"
    theirs = LlamaDecoderLayer(cfg, layer_idx=0)
    rot = LlamaRotaryEmbedding(cfg)
    pos = torch.arange(seq)[None]
    pe = rot(x, pos)
    mask = torch.full((seq, seq), float("-inf")).triu(1)[None, None]

    def run_theirs():
        out = theirs(x, attention_mask=mask, position_ids=pos, position_embeddings=pe)
        (out[0] if isinstance(out, tuple) else out).sum().backward()

    res["transformers_ms"] = 1e3 * best_time(run_theirs)
    res["params_equal"] = sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    return res


def bench_vq(dim: int, k: int, frames: int) -> dict:
    from sitok.quantizers import EMAVectorQuantizer

    torch.manual_seed(0)
    z = torch.randn(1, frames, dim)
    ours = EMAVectorQuantizer(dim, k).train()
    res = {"shape": f"{frames} frames x {dim} dims, {k} codes", "sitok_train_ms": 1e3 * best_time(lambda: ours(z))}
    ours.eval()
    res["sitok_encode_ms"] = 1e3 * best_time(lambda: ours.encode(z))
    try:
        from vector_quantize_pytorch import VectorQuantize
    except ImportError:
        res["vqtorch_train_ms"] = None
        return res
    theirs = VectorQuantize(dim=dim, codebook_size=k, decay=0.99, commitment_weight=0.25).train()
    res["vqtorch_train_ms"] = 1e3 * best_time(lambda: theirs(z))
    theirs.eval()
    res["vqtorch_encode_ms"] = 1e3 * best_time(lambda: theirs(z))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="mini", help="hparams name or YAML path")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-seconds", type=float, default=64.0)
    ap.add_argument("--num-buckets", type=int, default=30)
    ap.add_argument("--manifest", default=os.path.join(ROOT, "egs/mini/sitok/dump/train/manifest.csv"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--quick", action="store_true", help="3 steps of 16 s batches; small comparison shapes")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast in the step")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (3 warm-up steps)")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="MFU denominator (default: a measured matmul)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    path = a.config if os.path.exists(a.config) else os.path.join(ROOT, "recipes/tokenizer/hparams", f"{a.config}.yaml")
    cfg = SiTokConfig.from_dict(load_model_config(path))
    steps, batch_seconds = (3, 16.0) if a.quick else (a.steps, a.batch_seconds)
    durs = durations(a.manifest)
    dtype = torch.bfloat16 if a.precision == "bf16" else torch.float32
    n = 512 if a.quick else (8192 if device.type == "cuda" else 1024)
    peak = a.peak_tflops * 1e12 if a.peak_tflops > 0 else matmul_peak(n, device=device, dtype=dtype)
    res = {
        "config": os.path.basename(path),
        "device": str(device),
        "precision": a.precision,
        "compiled": a.compile,
        "threads": torch.get_num_threads(),
        "matmul_peak_gflops": peak / 1e9,
    }
    res.update(bench_training(cfg, durs, batch_seconds, a.num_buckets, steps, device, a.precision, a.compile))
    res["mfu"] = res["flops_per_audio_second"] * res["audio_seconds_per_second"] / peak
    if device.type == "cuda":
        res["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    h, i, nh = cfg.hidden, cfg.intermediate, cfg.heads
    res["llama_block"] = bench_llama_block(h, i, nh, 64 if a.quick else 256, 2 if a.quick else 8)
    res["vq"] = bench_vq(cfg.codebook_dim, 1024 if a.quick else 65536, 400 if a.quick else 4000)

    where = f"{res['device']}, {a.precision}{', compiled' if a.compile else ''}, {res['threads']} threads"
    print(f"{res['config']}: {res['parameters'] / 1e6:.2f} M parameters ({where})")
    print(
        f"  training: {res['audio_seconds_per_second']:.1f} audio-s/s ({res['seconds_per_step']:.2f} s/step of "
        f"{batch_seconds:g} s batches); MFU {100 * res['mfu']:.1f} % of {peak / 1e9:.1f} GFLOP/s "
        f"({'given' if a.peak_tflops > 0 else 'a measured ' + a.precision + ' matmul'} peak)"
    )
    print(
        f"  dynamic batching: padding efficiency {100 * res['padding_efficiency']:.1f} %, "
        f"{res['batches_per_epoch']} batches/epoch"
    )
    lb, vq = res["llama_block"], res["vq"]
    print(
        f"  Llama block fwd+bwd [{lb['shape']}]: sitok {lb['sitok_ms']:.1f} ms, transformers "
        f"{lb['transformers_ms'] if lb['transformers_ms'] is None else round(lb['transformers_ms'], 1)} ms"
    )
    print(
        f"  VQ [{vq['shape']}]: sitok train {vq['sitok_train_ms']:.1f} ms / encode {vq['sitok_encode_ms']:.1f} ms; "
        f"vector-quantize-pytorch train {vq.get('vqtorch_train_ms')} ms / encode {vq.get('vqtorch_encode_ms')} ms"
    )
    print(json.dumps(res, default=lambda v: round(v, 4) if isinstance(v, float) else v))


if __name__ == "__main__":
    main()
