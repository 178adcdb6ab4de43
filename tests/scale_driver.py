"""Run by tests/test_scale.py under torchrun (2 gloo processes): the tiny tokenizer (model and
optimiser of recipes/tokenizer/hparams/tiny.yaml) trained STEPS steps on the same synthetic
batches twice, once wrapped in DDP and once sharded by FSDP2, from the same weights and seeds.

    python -m torch.distributed.run --nproc_per_node 2 tests/scale_driver.py OUT_DIR [STEPS]

Writes to OUT_DIR (rank 0): losses.json {"ddp": [...], "fsdp": [...]} (per-step loss averaged
over the ranks), the FSDP run's DCP checkpoint (sharded.ckpt/, written by both ranks) and its
full state at that moment (full.pt: model and optimiser state by parameter name)."""

import json
import os
import sys

import torch
import torch.distributed as dist
from hyperpyyaml import load_hyperpyyaml
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
from torch.nn.parallel import DistributedDataParallel

from sitok.models import SiTok
from sitok.train.distributed import ShardedTrainState, shard_model
from sitok.train.tokenizer import check_ranks_agree

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes/tokenizer/hparams/tiny.yaml")


def batch(step: int, rank: int, vocab: int):
    """The batch of (step, rank): 2 utterances of 1.0 and 0.76 s of mel, 6 and 4 CTC targets."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    mel = torch.randn(2, 50, 128, generator=g)
    mel_lengths = torch.tensor([50, 38])
    targets = torch.randint(1, vocab, (2, 6), generator=g)
    return mel, mel_lengths, targets, torch.tensor([6, 4])


def train(strategy: str, hp: dict, steps: int):
    rank = dist.get_rank()
    torch.manual_seed(hp["seed"])
    model = SiTok(hp["model_config"])
    model = DistributedDataParallel(model) if strategy == "ddp" else shard_model(model)
    modules = torch.nn.ModuleDict({"model": model})
    opt = hp["opt_class"](modules.parameters())
    torch.manual_seed(100 + rank)  # noise and timesteps of the flow-matching loss, per rank
    losses = []
    for step in range(steps):
        mel, ml, tg, tl = batch(step, rank, hp["vocab_size"])
        loss = model(mel, ml, tg, tl)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(modules.parameters()), hp["max_grad_norm"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(float(mean) / dist.get_world_size())
    check_ranks_agree(model.module if strategy == "ddp" else model)
    return modules, opt, losses


def main(out: str, steps: int) -> None:
    dist.init_process_group("gloo")
    with open(TINY, encoding="utf-8") as fh:
        hp = load_hyperpyyaml(fh, {"exp_dir": os.path.join(out, "exp"), "vocab_size": 20})
    losses = {}
    for strategy in ("ddp", "fsdp"):
        modules, opt, losses[strategy] = train(strategy, hp, steps)
    ShardedTrainState(modules, opt).save(os.path.join(out, "sharded.ckpt"))  # every rank writes its shards
    full_model, full_optim = get_state_dict(
        modules, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if dist.get_rank() == 0:
        torch.save({"model": full_model, "optim": full_optim}, os.path.join(out, "full.pt"))
        with open(os.path.join(out, "losses.json"), "w", encoding="utf-8") as fh:
            json.dump(losses, fh)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 20)
