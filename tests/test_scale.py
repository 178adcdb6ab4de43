"""Scale-out of tokenizer training (sitok.train.distributed): FSDP2 trains like DDP, sharded DCP
checkpoints load on another number of processes, and the recipe runs as 2 nodes x 2 processes
(two torchrun launches on localhost, --nnodes 2 --node-rank 0/1), then resumes on 1 node."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_train import args, tiny_dump  # noqa: F401  (the module-scoped tiny recipe dump)

from sitok.data.kaldi import DataDir
from sitok.data.shards import write_shards
from sitok.train.tokenizer import export_checkpoint, read_train_stats

from conftest import ROOT, free_port, kill_tree, run_one_thread

DRIVER = os.path.join(ROOT, "tests", "scale_driver.py")
STEPS = 20
LOSS_RTOL = 1e-5
# the vocoder on 2 processes x 2 segments against 1 x 4 (6 steps, 3 with the GAN): the same means
# summed in another order. Measured: 3.4e-5 apart; a run with 2 segments per step (other data): 6.2e-3.
VOCODER_ATOL = 5e-4


def torchrun(*launch: str) -> list:
    return [sys.executable, "-m", "torch.distributed.run", *launch]


@pytest.fixture(scope="module")
def ddp_and_fsdp(tmp_path_factory):
    """The driver's 2-process run: per-step losses of DDP and FSDP2, FSDP2's DCP checkpoint and full state."""
    out = tmp_path_factory.mktemp("scale")
    cmd = torchrun("--nproc_per_node", "2", "--master_port", str(free_port()), DRIVER, str(out), str(STEPS))
    r = run_one_thread(cmd, timeout=300, cwd=str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_fsdp_losses_match_ddp(ddp_and_fsdp):
    losses = json.loads((ddp_and_fsdp / "losses.json").read_text())
    assert len(losses["ddp"]) == len(losses["fsdp"]) == STEPS
    assert losses["ddp"][-1] < losses["ddp"][0]  # it learns
    for step, (a, b) in enumerate(zip(losses["ddp"], losses["fsdp"])):
        assert b == pytest.approx(a, rel=LOSS_RTOL), step


def test_sharded_checkpoint_from_2_processes_loads_in_1(ddp_and_fsdp):
    """The DCP checkpoint written by 2 ranks, loaded into a plain (unsharded) model and AdamW,
    equals the full state gathered when it was written: weights, EMA codebook, optimiser moments."""
    from hyperpyyaml import load_hyperpyyaml
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from sitok.models import SiTok
    from sitok.train.distributed import ShardedTrainState

    full = torch.load(ddp_and_fsdp / "full.pt", weights_only=True)
    tiny = os.path.join(ROOT, "recipes", "tokenizer", "hparams", "tiny.yaml")
    with open(tiny, encoding="utf-8") as fh:
        hp = load_hyperpyyaml(fh, {"exp_dir": str(ddp_and_fsdp / "exp1"), "vocab_size": 20, "seed": 7})
    modules = torch.nn.ModuleDict({"model": SiTok(hp["model_config"])})  # other weights than the saved ones
    opt = hp["opt_class"](modules.parameters())
    ShardedTrainState(modules, opt).load(ddp_and_fsdp / "sharded.ckpt")
    model_state, optim_state = get_state_dict(modules, opt)
    assert model_state.keys() == full["model"].keys()
    assert "model.quantizer.embed" in model_state and "model.quantizer.cluster_size" in model_state
    for k, v in full["model"].items():
        assert torch.equal(model_state[k], v), k
    moments = 0
    for name, st in full["optim"]["state"].items():
        for key, v in st.items():
            assert torch.equal(optim_state["state"][name][key], v), (name, key)
            moments += key in ("exp_avg", "exp_avg_sq")
    assert moments == 2 * len(full["model"]) - 2 * sum(k.startswith("model.quantizer.") for k in full["model"])
    assert optim_state["param_groups"][0]["lr"] == full["optim"]["param_groups"][0]["lr"]


def test_recipe_two_nodes_then_resume_on_one(tiny_dump):  # noqa: F811
    """2 nodes x 2 processes (FSDP2, audio streamed from shards) train 2 epochs and checkpoint; the last
    checkpoint (DCP, 4 shards) exports in one process to the weights the run exported, and a
    run on 1 node x 2 processes resumes from it (DCP reshards 4 -> 2) to the same weights."""
    root, n = tiny_dump
    exp = root / "exp_2x2"
    shards = str(root / "shards_2x2")  # the training audio streamed from shards, the mel computed on the fly
    write_shards(str(root / "data" / "train"), shards, max_count=4, progress=False)
    fsdp = ["--distributed_strategy", "fsdp", "--distributed_backend", "gloo", "--train_shards", shards]
    recipe = args(root, n, exp, epochs=2)[1:] + fsdp
    # two "nodes" on localhost, static rendezvous: node 0 hosts the store (egs/TEMPLATE/slurm.sh
    # uses c10d across real nodes)
    rdzv = ["--nnodes", "2", "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    nodes = [
        subprocess.Popen(
            torchrun(*rdzv, "--node-rank", str(i), *recipe),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        for i in (0, 1)
    ]
    try:
        outs = [p.communicate(timeout=300)[0] for p in nodes]
    finally:
        for p in nodes:  # a node left waiting for the other one is not left behind
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert [p.returncode for p in nodes] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    log = (exp / "log.txt").read_text()
    assert "FSDP: 4 ranks, weights and codebooks identical across ranks: True" in log
    assert [s["epoch"] for s in read_train_stats(str(exp))] == [1, 2]
    ckpts = sorted((exp / "save").glob("CKPT+*"), key=lambda d: (d / "CKPT.yaml").stat().st_mtime)
    assert len(ckpts) == 2 and all((d / "CKPT.yaml").exists() for d in ckpts)
    sharded = ckpts[-1] / "sharded.ckpt"
    assert (sharded / ".metadata").exists() and len(list(sharded.glob("*.distcp"))) == 4
    assert not (ckpts[-1] / "model.ckpt").exists() and not (ckpts[-1] / "optimizer.ckpt").exists()
    final = torch.load(exp / "model" / "model.pt", weights_only=True)
    out = export_checkpoint(str(exp), str(root / "export_2x2"))  # one process reads the 4 shards
    exported = torch.load(os.path.join(out, "model.pt"), weights_only=True)
    assert exported.keys() == final.keys() and all(torch.equal(exported[k], final[k]) for k in final)

    # 1 node x 2 processes on the same experiment: the last checkpoint is resumed (4 shards
    # resharded to 2), no epoch is left to train, and the weights exported are the same again
    shutil.rmtree(exp / "model")
    resume = args(root, n, exp, epochs=2)[1:] + fsdp
    r = run_one_thread(torchrun("--nproc_per_node", "2", "--master_port", str(free_port()), *resume), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (exp / "log.txt").read_text()
    assert f"Loading a checkpoint from {ckpts[-1]}" in log
    assert "FSDP: 2 ranks, weights and codebooks identical across ranks: True" in log
    again = torch.load(exp / "model" / "model.pt", weights_only=True)
    assert again.keys() == final.keys() and all(torch.equal(again[k], final[k]) for k in final)


def test_run_resumed_on_another_number_of_processes_continues_as_if_uninterrupted(tiny_dump):  # noqa: F811
    """micro_batches_per_step 4: every step averages the same 4 micro-batches whatever the number of
    processes. A run on 2 nodes x 2 processes (audio from shards, a checkpoint after every step) is
    killed inside an epoch and resumed on 1 node x 2 processes (2 micro-batches accumulated each);
    it ends with exactly the weights and codebook of an uninterrupted 1 x 2 run of the same steps
    (ordered_grad_reduction: the micro-batch gradients are added in the same order either way)."""
    from test_shards import checkpointed_step

    root, n = tiny_dump
    # the 12 training utterances 4 times over (48): 12 steps per epoch, so the kill lands inside one
    train = DataDir.load(str(root / "data" / "train"))
    tables = {name: {f"{u}-{k}": v for k in range(4) for u, v in t.items()} for name, t in train.tables.items()}
    DataDir(tables).save(str(root / "data" / "train_x4"))
    shards = str(root / "shards_micro")
    write_shards(str(root / "data" / "train_x4"), shards, max_count=12, progress=False)

    def recipe(exp):
        a = args(root, n, exp, epochs=2)[1:]
        a[a.index("--batch_seconds") + 1] = "1.5"  # one utterance per micro-batch
        micro = ["--micro_batches_per_step", "4", "--ordered_grad_reduction", "True", "--ckpt_interval_steps", "1"]
        micro += ["--distributed_backend", "gloo"]
        return a + ["--train_shards", shards, *micro]

    ref, exp = root / "exp_micro_ref", root / "exp_micro"
    r = run_one_thread(torchrun("--nproc_per_node", "2", "--master_port", str(free_port()), *recipe(ref)), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "this process computes [0, 2] of each step (2 accumulated)" in (ref / "log.txt").read_text()

    rdzv = ["--nnodes", "2", "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    nodes = [
        subprocess.Popen(
            torchrun(*rdzv, "--node-rank", str(i), *recipe(exp)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        for i in (0, 1)
    ]
    deadline = time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p in nodes) and checkpointed_step(exp) < 2:
        time.sleep(0.01)
    for p in nodes:  # both "machines" fail (launchers and workers) after a checkpoint inside epoch 1
        kill_tree(p.pid)
        p.wait()
    # step 2 being saved: the checkpoint after step 1 is complete
    assert checkpointed_step(exp) >= 2 and not (exp / "train_stats.jsonl").exists(), "no kill inside epoch 1"
    assert "this process computes [0] of each step (1 accumulated)" in (exp / "log.txt").read_text()

    r = run_one_thread(torchrun("--nproc_per_node", "2", "--master_port", str(free_port()), *recipe(exp)), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (exp / "log.txt").read_text()
    assert "resumed inside an epoch on another number of processes" in log and "epoch 1 resumed after" in log
    assert [s["epoch"] for s in read_train_stats(str(exp))] == [1, 2]
    a = torch.load(ref / "model" / "model.pt", weights_only=True)
    b = torch.load(exp / "model" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    # the codebook made the same number of EMA updates: one per step, not one per micro-batch
    assert [int(v) for k, v in a.items() if k.endswith("quantizer.steps")] == [24]
    assert "gradients summed in micro-batch order" in log
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different


def test_micro_batches_from_the_feature_dump_are_the_same_steps_on_1_or_2_processes(tiny_dump):  # noqa: F811
    """The feature-dump path (DynamicBatchSampler cut into steps of micro-batches): one process
    accumulating 2 micro-batches per step ends with exactly the weights of 2 processes computing
    one each."""
    root, n = tiny_dump

    def recipe(exp):
        return args(root, n, exp, epochs=2)[1:] + ["--micro_batches_per_step", "2"]

    one, two = root / "exp_dump_micro1", root / "exp_dump_micro2"
    r = run_one_thread([sys.executable, *recipe(one)], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "this process computes [0, 1] of each step (2 accumulated)" in (one / "log.txt").read_text()
    launch = ["--nproc_per_node", "2", "--master_port", str(free_port())]
    r = run_one_thread(torchrun(*launch, *recipe(two), "--distributed_backend", "gloo"), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "this process computes [0] of each step (1 accumulated)" in (two / "log.txt").read_text()
    a = torch.load(one / "model" / "model.pt", weights_only=True)
    b = torch.load(two / "model" / "model.pt", weights_only=True)
    steps = [s["step"] for s in read_train_stats(str(one))]
    assert steps == [s["step"] for s in read_train_stats(str(two))] and steps[-1] > 2
    # two gradients (and two codebook sums) added in either order give the same floats: bit-identical
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_probe_trains_under_torchrun_and_stops_on_every_rank_together(tiny_dump):  # noqa: F811
    """A DASB probe (emotion-recognition recipe on mel features) on 2 gloo processes: the training
    set is split over them, a time budget spent in epoch 1 stops both at the same step of epoch 1
    (the main process plans, the other follows), and the results are written once."""
    root, _ = tiny_dump
    for split in ("train", "dev"):  # labels: the speaker of each utterance, as utt2label
        utts = [line.split()[0] for line in open(root / "dump" / split / "feats.scp")]
        (root / "dump" / split / "utt2label").write_text("".join(f"{u} {u.split('-')[0]}\n" for u in utts))
    exp = root / "exp_probe_ddp"
    probe = [
        os.path.join(ROOT, "recipes", "probes", "er", "train.py"),
        os.path.join(ROOT, "recipes", "probes", "er", "hparams", "mini.yaml"),
        *("--features", "mel12.5", "--model_dir", "none", "--codes_root", "none", "--dump_dir", str(root / "dump")),
        *("--train_set", "train", "--valid_set", "dev", "--test_set", "dev", "--exp_dir", str(exp)),
        *("--number_of_epochs", "3", "--batch_size", "2", "--max_train_minutes", "0.0001"),
        *("--distributed_backend", "gloo"),
    ]
    launch = ["--nproc_per_node", "2", "--master_port", str(free_port())]
    r = run_one_thread(torchrun(*launch, *probe), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((exp / "results.json").read_text())
    assert results["epochs"] == 1 and results["epoch_limit"] == 3
    assert 2 <= results["steps"] <= results["steps_per_epoch"]  # planned at the 2nd step at the latest
    assert results["n_test"] == 4 and 0 <= results["accuracy"] <= 100  # every rank scored the whole test set
    log = (exp / "log.txt").read_text()
    assert log.count("steps planned") == 1 and log.count("probe er on mel12.5:") == 1


def test_vocoder_gan_under_torchrun_equals_one_process_with_the_whole_batch(tiny_dump):  # noqa: F811
    """The vocoder recipe (stage 10) on 2 gloo processes with 2 segments each trains the same
    generator as one process with all 4 segments per step, through the GAN steps too: each rank
    takes every second utterance of the epoch's order, DDP averages the per-rank mean losses, and
    the discriminator's generator pass runs outside its DDP wrapper. The losses whose value is not
    a mean over segments (the weighted phase loss, the consistency ratio) and the discriminators'
    random window are off, so that the two runs compute the same thing."""
    from test_vocoder import train_args

    root, _ = tiny_dump
    same = ["--phase_loss_weight", "0", "--consistency_loss_weight", "0", "--disc_segment_samples", "0"]
    one, two, half = root / "voc_one", root / "voc_two", root / "voc_half"
    r = run_one_thread(train_args(root, one) + same + ["--batch_size", "4"], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_one_thread(train_args(root, half) + same + ["--batch_size", "2"], timeout=300)  # control
    assert r.returncode == 0, r.stderr[-3000:]
    launch = ["--nproc_per_node", "2", "--master_port", str(free_port())]
    cmd = torchrun(*launch, *train_args(root, two)[1:], *same, "--batch_size", "2", "--distributed_backend", "gloo")
    r = run_one_thread(cmd, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    stats = read_train_stats(str(two))
    assert [s["optimizer_step"] for s in stats] == [s["optimizer_step"] for s in read_train_stats(str(one))] == [3, 6]
    assert stats[-1]["train"]["gan_steps"] == 3  # the GAN joined at step 2 on both ranks
    assert (two / "train_log.txt").read_text().count("epoch: 2") == 1  # logged once
    a, b, c = (torch.load(d / "model" / "model.pt", weights_only=True) for d in (one, two, half))
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    control = max(float((a[k] - c[k]).abs().max()) for k in a)
    assert diff < VOCODER_ATOL < control, (diff, control)


def test_ordered_grad_sum_in_one_process_is_the_left_fold_of_the_micro_batch_gradients():
    """One process, 3 micro-batches: the step's gradient is g0 + g1 + g2 added in that order (what
    autograd's own accumulation gives), the slots are emptied, and a missing micro-batch is an error."""
    from sitok.train.distributed import OrderedGradSum

    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 3)
    xs = [torch.randn(4, 5) * 10**k for k in range(3)]  # magnitudes far apart: the order shows in the floats
    for x in xs:
        layer(x).pow(2).sum().backward()
    native = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad(set_to_none=True)
    summed = OrderedGradSum(layer.parameters(), streams=[0, 1, 2], micro_batches=3)
    for x in xs:
        layer(x).pow(2).sum().backward()
        summed.keep()
        assert all(p.grad is None for p in layer.parameters())
    summed.sum_into_grads()
    assert all(torch.equal(p.grad, g) for p, g in zip(layer.parameters(), native))
    assert summed.slots == []
    layer(xs[0]).sum().backward()
    summed.keep()
    with pytest.raises(RuntimeError, match="1 micro-batch gradients kept, 3 expected"):
        summed.sum_into_grads()
