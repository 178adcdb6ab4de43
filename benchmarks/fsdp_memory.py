#!/usr/bin/env python
"""Per-GPU training memory of a tokenizer config under DDP and FSDP2, from a model built on the
meta device (no allocation).

    python benchmarks/fsdp_memory.py --config recipes/tokenizer/hparams/XL.yaml --gpus 8

Model state, P trainable parameters, B buffer elements (EMA codebook: replicated, fp32), N GPUs,
mixed precision as the recipe trains it (fp32 master weights, bf16 compute, fp32 gradients):

    DDP    4P (fp32 weights) + 4P (fp32 grads) + 8P (AdamW m, v) + 2P (bf16 weight copies cached
           by autocast during the forward) + 4B                                  = 18P + 4B
    FSDP2  (4P + 4P + 8P) / N (sharded weights, grads, AdamW) + 4B
           + 2 x 2p_max (bf16 block gathered for compute, the next one prefetched)
           + 4p_max (fp32 unsharded gradient of one block before its reduce-scatter)
    where p_max is the largest shard group (one transformer block, or the root's own parameters)

Activations per second of audio, bf16 (2 bytes), t = token rate (12.5 tokens/s), per layer
with width h and MLP width i, per token: attention keeps its input, q/k/v, the attention output
and the output projection's input (7h with the residual and norm inputs), SwiGLU keeps gate/up
(2i), silu(gate) and the product (2i):

    a_layer = 2 (7h + 4i) bytes per token
    without checkpointing:  t x (sum over every layer of a_layer + 4 x 4 x frame_dim)
    with checkpointing:     t x (sum over every layer of 2h + max a_layer + 4 x 4 x frame_dim)
    (4 x 4 x frame_dim: the fp32 stacked mel, noise, x_t and velocity target of the flow loss)

Attention runs through scaled_dot_product_attention (flash / memory-efficient kernels): no
T x T matrix is stored. The figures leave out allocator fragmentation and communication
buffers; leave 10-20 % of headroom.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "toolkit"))

from sitok.layers.transformer import LlamaBlock, LlamaStack  # noqa: E402
from sitok.models import SiTok, SiTokConfig  # noqa: E402
from sitok.models.loading import load_model_config  # noqa: E402

GiB = 2**30


def meta_model(config_path: str) -> SiTok:
    cfg = SiTokConfig.from_dict(load_model_config(config_path))
    with torch.device("meta"):
        return SiTok(cfg)


def shard_groups(model: SiTok) -> list[int]:
    """Parameters of every FSDP2 shard group: one per LlamaBlock, the rest of the model as the root."""
    blocks = [sum(p.numel() for p in m.parameters()) for m in model.modules() if isinstance(m, LlamaBlock)]
    total = sum(p.numel() for p in model.parameters())
    return blocks + [total - sum(blocks)]


def model_state_bytes(p: int, b: int, p_max: int, gpus: int) -> dict:
    ddp = {"weights_fp32": 4 * p, "grads_fp32": 4 * p, "adamw_fp32": 8 * p, "bf16_copies": 2 * p, "buffers": 4 * b}
    fsdp = {
        "weights_fp32": 4 * p / gpus,
        "grads_fp32": 4 * p / gpus,
        "adamw_fp32": 8 * p / gpus,
        "gathered_bf16": 2 * 2 * p_max,
        "unsharded_grad": 4 * p_max,
        "buffers": 4 * b,
    }
    return {"ddp": ddp, "fsdp": fsdp}


def activation_bytes_per_second(model: SiTok) -> dict:
    cfg = model.config
    layers = []  # (h, i) of every transformer layer
    for m in model.modules():
        if isinstance(m, LlamaStack):
            for blk in m.blocks:
                layers.append((blk.attn.qkv.in_features, blk.mlp.down.in_features))
    per_layer = [2 * (7 * h + 4 * i) for h, i in layers]
    flow = 4 * 4 * cfg.frame_dim
    t = cfg.token_rate
    return {
        "no_checkpointing": t * (sum(per_layer) + flow),
        "checkpointing": t * (sum(2 * h for h, _ in layers) + max(per_layer) + flow),
        "layers": len(layers),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=os.path.join(ROOT, "recipes", "tokenizer", "hparams", "XL.yaml"))
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--batch_seconds", type=float, default=None, help="audio per GPU per step (default: the config's)")
    a = ap.parse_args(argv)
    model = meta_model(a.config)
    p = sum(x.numel() for x in model.parameters() if x.requires_grad)
    b = sum(x.numel() for x in model.buffers() if x.is_floating_point())
    groups = shard_groups(model)
    state = model_state_bytes(p, b, max(groups), a.gpus)
    act = activation_bytes_per_second(model)
    batch_seconds = a.batch_seconds
    if batch_seconds is None:
        import yaml

        with open(a.config, encoding="utf-8") as fh:
            batch_seconds = float(yaml.load(fh, Loader=yaml.BaseLoader).get("batch_seconds", 0) or 0)
    print(f"{a.config}: {p:,} trainable parameters ({p / 1e9:.3f} B), {b:,} buffer elements (EMA codebook)")
    print(f"FSDP2 shard groups: {len(groups) - 1} blocks + root; largest {max(groups) / 1e6:.1f} M parameters")
    print(f"model state per GPU at {a.gpus} GPUs (fp32 master, bf16 compute, AdamW):")
    for kind in ("ddp", "fsdp"):
        parts = ", ".join(f"{k} {v / GiB:.2f}" for k, v in state[kind].items())
        print(f"  {kind.upper():5s} {sum(state[kind].values()) / GiB:7.2f} GiB  ({parts})")
    print(f"activations ({act['layers']} transformer layers, {model.config.token_rate:g} tokens/s, bf16):")
    for k in ("no_checkpointing", "checkpointing"):
        line = f"  {k.replace('_', ' '):17s} {act[k] / 2**20:7.2f} MiB per second of audio"
        if batch_seconds:
            line += f" = {act[k] * batch_seconds / GiB:.2f} GiB per {batch_seconds:g} s batch"
        print(line)
    record = {
        "parameters": p,
        "buffers": b,
        "gpus": a.gpus,
        "ddp_state_gib": sum(state["ddp"].values()) / GiB,
        "fsdp_state_gib": sum(state["fsdp"].values()) / GiB,
        "activation_mib_per_s": act["no_checkpointing"] / 2**20,
        "activation_mib_per_s_checkpointing": act["checkpointing"] / 2**20,
        "batch_seconds": batch_seconds,
    }
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
