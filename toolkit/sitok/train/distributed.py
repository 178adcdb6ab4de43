"""Scale-out of tokenizer training: FSDP2 sharding and sharded (DCP) checkpoints.

``distributed_strategy`` in the hparams chooses how the ranks of a torchrun launch share the model:

    ddp   every rank holds the whole model, optimiser state and gradients; gradients are
          all-reduced (SpeechBrain's own DistributedDataParallel wrapper; the default)
    fsdp  parameters, gradients and AdamW state are split across the ranks (FSDP2,
          ``torch.distributed.fsdp.fully_shard``): one shard group per transformer block of
          every Llama stack (encoder, CTC, decoder), and the root (projections, heads, time
          embedding) as one more group; a block's parameters are gathered just before its
          forward and backward and freed after them

Buffers are never sharded: every rank keeps the whole EMA codebook (``embed``, ``embed_avg``,
``cluster_size`` ...). The quantizer sums its EMA statistics over all ranks and samples new
entries on rank 0 (broadcast) whatever wraps it, so the codebook stays identical on every rank
under either strategy (``check_ranks_agree`` verifies it at the end of training).

Checkpoints under fsdp (``ShardedTrainState``): model and optimiser state are written by every
rank into one ``torch.distributed.checkpoint`` (DCP) directory, ``<CKPT>/sharded.ckpt/``, beside
SpeechBrain's small recoverables (counter, schedule, RNG, plan). DCP records the global shape
and offset of every piece, so a checkpoint written by N ranks loads on M ranks (or in a plain
process: export, tests). The file that makes the directory a checkpoint (CKPT.yaml) is written
after the DCP save has finished on every rank (``AtomicCheckpointer``), so a run killed while
saving resumes from the previous complete checkpoint. The checkpoint directory must be on a
filesystem that every node sees.
"""

from __future__ import annotations

import functools
import logging
import pickle

import torch
import torch.distributed as dist
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

from sitok.data.ranks import micro_batch_layout
from sitok.layers.transformer import LlamaBlock, LlamaStack

logger = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp")
SHARDED_NAME = "sharded"  # the recoverable's name: <CKPT>/sharded.ckpt/ holds the DCP files


def unwrapped(module: torch.nn.Module) -> torch.nn.Module:
    """The module itself, under a DistributedDataParallel wrapper if it has one."""
    return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def leave_process_group() -> bool:
    """End a torchrun run's process group on every rank once its last collective is done: wait for
    all ranks, then tear the group down. A process that exits with the group still up races the
    communication threads of the others and can abort ("terminate called without an active
    exception") while a slower rank is still writing. Returns whether this is the main process
    (asked before the group goes: after it every process would say so). No-op outside
    torch.distributed (then True)."""
    if not is_distributed():
        return True
    main = dist.get_rank() == 0
    dist.barrier()
    dist.destroy_process_group()
    return main


def check_strategy(name: str) -> str:
    if name not in STRATEGIES:
        raise ValueError(
            f"distributed_strategy must be one of {STRATEGIES}, got {name!r} (hparams or --distributed_strategy)"
        )
    return name


# ---- FSDP2 wrapping ----------------------------------------------------------------------------
def mixed_precision(precision: str):
    """bf16: parameters gathered and computed in bf16, gradients reduced in fp32 (the sharded
    master weights and AdamW state stay fp32). Otherwise None (everything fp32)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return None


def shard_model(
    model: torch.nn.Module, precision: str = "fp32", checkpointing: bool | None = None, blocks: tuple = (LlamaBlock,)
) -> torch.nn.Module:
    """Shard ``model`` in place with FSDP2: every module of the ``blocks`` types (our LlamaBlocks,
    or a Hugging Face LM's decoder layers), then the root. Returns the model.

    ``checkpointing`` (default: the model config's ``checkpointing``) recomputes each block's
    activations in the backward pass, in every Llama stack, the CTC stack included (the model
    itself turns it on for the encoder and decoder only). Rank 0's weights and buffers are
    broadcast first, as DistributedDataParallel does, so the ranks start from one model whatever
    their seeds."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    if is_distributed():
        with torch.no_grad():
            for t in model.state_dict().values():
                dist.broadcast(t, src=0)
    if checkpointing is None:
        checkpointing = bool(getattr(getattr(model, "config", None), "checkpointing", False))
    kw = {"mp_policy": mp} if (mp := mixed_precision(precision)) is not None else {}
    n = 0
    for m in model.modules():
        if isinstance(m, LlamaStack) and checkpointing:
            m.checkpointing = True
        if isinstance(m, blocks):
            fully_shard(m, **kw)
            n += 1
    fully_shard(model, **kw)
    if hasattr(model, "encode_latents"):  # called outside forward (k-means codebook start)
        register_fsdp_forward_method(model, "encode_latents")
    logger.info(
        "FSDP2: %d transformer blocks + root sharded; %s; activation checkpointing %s", n, precision, checkpointing
    )
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A parameter's whole value (gathered from every rank if it is a sharded DTensor: collective)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def full_model_state(model: torch.nn.Module, rank0_only: bool = False) -> dict[str, torch.Tensor]:
    """The unsharded state dict on CPU (collective under FSDP; ``rank0_only``: other ranks get {})."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    options = StateDictOptions(full_state_dict=True, cpu_offload=rank0_only)
    state = get_model_state_dict(model, options=options)
    return {k: v.detach().cpu() for k, v in state.items()}


@torch.no_grad()
def grads_finite_or_dropped(params) -> int:
    """Under FSDP a gradient is split across the ranks: a non-finite value on one rank's shard
    must drop the whole gradient on every rank. Returns the number of parameters dropped."""
    from torch.distributed.tensor import DTensor

    params = [p for p in params if p.requires_grad and p.grad is not None]
    if not params:
        return 0
    local = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for p in params]
    bad = torch.stack([(~torch.isfinite(g)).any() for g in local]).float()  # [n_params]
    if is_distributed():
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    for p, b in zip(params, bad.tolist()):
        if b:
            p.grad = None
    return int(bad.sum())


# ---- the strategy in a SpeechBrain Brain -------------------------------------------------------
class StrategyBrainMixin:
    """``distributed_strategy`` (ddp | fsdp) for a SpeechBrain Brain (listed before ``sb.Brain``):

    * ddp: SpeechBrain's own DistributedDataParallel wrapper;
    * fsdp: every module that trains is sharded with FSDP2 (``fsdp_blocks`` are the shard units,
      then the root; mixed precision with ``precision: bf16``), model and optimiser are
      checkpointed together as one DCP checkpoint written by every rank (``sharded.ckpt/``,
      ``ShardedTrainState``) instead of SpeechBrain's files written by the main process, and a
      non-finite value in any rank's gradient shard drops that gradient on every rank.

    The subclass calls ``use_sharded_checkpoints`` at the end of its ``init_optimizers``."""

    @property
    def strategy(self) -> str:
        return check_strategy(str(getattr(self.hparams, "distributed_strategy", "ddp")))

    def fsdp_blocks(self, module: torch.nn.Module) -> tuple:
        """The module types of ``module`` that become FSDP units."""
        return (LlamaBlock,)

    def fsdp_checkpointing(self, module: torch.nn.Module) -> bool | None:
        """Whether ``module`` recomputes activations (None: its config's ``checkpointing``)."""
        return None

    def _wrap_distributed(self):
        if self.strategy != "fsdp":
            return super()._wrap_distributed()
        if not self.distributed_launch:  # one process: nothing to shard; checkpoints are DCP all the same
            logger.info("distributed_strategy fsdp without torchrun: one process, the model is not sharded")
            return
        for module in self.modules.values():
            if any(p.requires_grad for p in module.parameters()):
                blocks, checkpointing = self.fsdp_blocks(module), self.fsdp_checkpointing(module)
                shard_model(module, precision=self.precision, checkpointing=checkpointing, blocks=blocks)

    def use_sharded_checkpoints(self) -> None:
        if self.strategy != "fsdp" or self.checkpointer is None:
            return
        ours = [self.optimizer, *self.modules.values()]
        for name, obj in list(self.checkpointer.recoverables.items()):
            if any(obj is o for o in ours):
                del self.checkpointer.recoverables[name]
        self.checkpointer.add_recoverable(SHARDED_NAME, ShardedTrainState(self.modules, self.optimizer))

    def check_gradients(self):
        if self.strategy != "fsdp":
            return super().check_gradients()
        if dropped := grads_finite_or_dropped(self.modules.parameters()):
            logger.warning("%d gradients contain NaN or Inf: set to None on every rank", dropped)


# ---- gradients summed in a fixed order ---------------------------------------------------------
class OrderedGradSum:
    """The gradient of a step as the sum of its M micro-batch gradients added in position order
    (0, 1, ..., M-1), whichever process computed each: the same floats on any number of processes.

    An all-reduce (DDP) adds the ranks' partial sums in an order that depends on the number of
    ranks, so a run resumed on another number of processes drifts by rounding (~1e-9 per step)
    until a frame near a tie takes another codebook entry. Here every process keeps the gradient
    of each of its micro-batches (``keep`` after its backward, run without DDP's reduction), and
    at the step ``sum_into_grads`` gathers all of them and adds them in position order. The cost:
    M / W gradient copies per process and an all-gather of M instead of an all-reduce of one, so
    this is for reproducibility checks and small models (``ordered_grad_reduction``), not the
    default."""

    def __init__(self, params, streams: list[int], micro_batches: int):
        self.params = [p for p in params if p.requires_grad]
        self.streams, self.micro_batches = list(streams), int(micro_batches)
        self.slots: list[torch.Tensor] = []

    def keep(self) -> None:
        """Move this micro-batch's gradients into a slot (the parameters' gradients are cleared)."""
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self.params])
        self.slots.append(flat)
        for p in self.params:
            p.grad = None

    def sum_into_grads(self) -> None:
        """Every process: the step's gradient (micro-batch gradients added in position order)."""
        if len(self.slots) != len(self.streams):
            raise RuntimeError(
                f"OrderedGradSum: {len(self.slots)} micro-batch gradients kept, {len(self.streams)} expected"
            )
        local = torch.stack(self.slots)  # [M / W, P]
        self.slots = []
        world = dist.get_world_size() if is_distributed() else 1
        gathered = [torch.empty_like(local) for _ in range(world)] if world > 1 else [local]
        if world > 1:
            dist.all_gather(gathered, local)
        by_position = {}
        for rank, part in enumerate(gathered):
            for i, position in enumerate(micro_batch_layout(self.micro_batches, rank, world)):
                by_position[position] = part[i]
        total = by_position[0].clone()
        for position in range(1, self.micro_batches):
            total += by_position[position]
        offset = 0
        for p in self.params:
            p.grad = total[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()


# ---- sharded checkpoints -----------------------------------------------------------------------
@functools.cache
def _dcp_metadata_globals() -> frozenset:
    """What a DCP ``.metadata`` file may name: DCP's own plain records, torch.Size, dtype, layout
    and memory-format constants (a layout is pickled as a lookup of its name), and the path it
    was written to. Nothing else is unpickled: no code runs on load."""
    allowed = {
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("pathlib", "PosixPath"),
        ("pathlib", "WindowsPath"),
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
    }
    for name in dir(torch):
        if isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)):
            allowed.add(("torch", name))
    return frozenset(allowed)


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _dcp_metadata_globals():
            return super().find_class(module, name)
        if module.startswith("torch.distributed.checkpoint."):  # DCP's record classes, not its functions
            found = super().find_class(module, name)
            if isinstance(found, type) and found.__module__.startswith("torch.distributed.checkpoint."):
                return found
        raise pickle.UnpicklingError(f"DCP metadata names {module}.{name}: not checkpoint data, refused")


def _reader(path):
    """A DCP reader that first unpickles the metadata through an allow-list of plain records and
    refuses anything else, before DCP reads it (the shards themselves DCP reads with
    ``torch.load(weights_only=True)``)."""
    from torch.distributed.checkpoint import FileSystemReader

    class Reader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as fh:
                _MetadataUnpickler(fh).load()
            return super().read_metadata(*args, **kwargs)

    return Reader(path)


class ShardedTrainState:
    """Model + optimiser state as one DCP checkpoint, written and read by every rank together.

    ``model`` is the Brain's module dict. Saved keys: ``model`` (parameter and buffer names of the
    unwrapped modules, e.g. ``model.encoder.blocks.0.attn.qkv.weight``) and ``optim`` (AdamW state
    keyed by the same names), so the files depend neither on the wrapping nor on the number of
    ranks."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None):
        self.model, self.optimizer = model, optimizer

    def state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

        if self.optimizer is None:
            return {"model": get_model_state_dict(self.model)}
        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        return {"model": model_state, "optim": optim_state}

    @mark_as_saver
    def save(self, path):
        import torch.distributed.checkpoint as dcp

        dcp.save(self.state(), checkpoint_id=str(path))

    @mark_as_loader
    def load(self, path, end_of_epoch=True):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

        state = self.state()  # the targets: shapes and shards of this run
        dcp.load(state, storage_reader=_reader(str(path)))
        if self.optimizer is None:
            set_model_state_dict(self.model, state["model"])
        else:
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


# collective: every rank runs the saver (SpeechBrain runs other savers on the main process only)
register_checkpoint_hooks(ShardedTrainState, save_on_main_only=False)


def load_sharded_model(path, model: torch.nn.Module, key: str = "model") -> torch.nn.Module:
    """The weights of the Brain module ``key`` in a sharded checkpoint directory into ``model``,
    in this process whatever the number of ranks that wrote it (collective when distributed)."""
    ShardedTrainState(torch.nn.ModuleDict({key: model})).load(path)
    return model
