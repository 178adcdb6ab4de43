"""The tokenizer recipe (recipes/tokenizer/train.py) on a tiny dump: it trains, exports a model
directory that the Tokenizer API loads, and a run killed mid-way resumes to identical losses."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from sitok.data.features import compute_features
from sitok.data.prep import Entry, make_data_dir
from sitok.data.synth import make_sentence
from sitok.data.vocab import train_sentencepiece
from sitok.train.tokenizer import read_train_stats

from conftest import ROOT, run_one_thread, tone, torchrun_gloo, write

TRAIN = os.path.join(ROOT, "recipes", "tokenizer", "train.py")
TINY = os.path.join(ROOT, "recipes", "tokenizer", "hparams", "tiny.yaml")


@pytest.fixture(scope="module")
def tiny_dump(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinyrecipe")
    rng = random.Random(0)
    texts = {}
    for split, n in (("train", 12), ("dev", 4)):
        entries = []
        for i in range(n):
            text = make_sentence(rng)
            path = write(
                str(root / "wav" / f"s{i % 3}-{split}-{i:02d}.wav"), tone(1.0 + 0.1 * (i % 5), freq=120 + 15 * i)
            )
            entries.append(Entry(f"s{i % 3}-{split}-{i:02d}", f"s{i % 3}", path, text))
            texts.setdefault(split, []).append(text)
        make_data_dir(entries, str(root / "data" / split))
        compute_features(str(root / "data" / split), str(root / "dump" / split), progress=False)
    model = train_sentencepiece(texts["train"] * 3, str(root / "lang"), vocab_size=40)
    n_pieces = sum(1 for _ in open(os.path.join(root, "lang", "tokens.txt")))
    assert os.path.exists(model)
    return root, n_pieces


def args(root, n_pieces, exp, epochs=3):
    return [
        sys.executable,
        TRAIN,
        TINY,
        "--dump_dir",
        str(root / "dump"),
        "--lang_dir",
        str(root / "lang"),
        "--vocab_size",
        str(n_pieces),
        "--exp_dir",
        str(exp),
        "--number_of_epochs",
        str(epochs),
        "--batch_seconds",
        "4",
        "--num_buckets",
        "2",
    ]


def test_train_export_and_load(tiny_dump):
    root, n = tiny_dump
    exp = root / "exp_full"
    r = run_one_thread(args(root, n, exp))
    assert r.returncode == 0, r.stderr[-3000:]
    stats = read_train_stats(str(exp))
    assert [s["epoch"] for s in stats] == [1, 2, 3]
    for key in ("diff", "vq", "ctc", "usage", "perplexity", "audio_s_per_s", "ctc_not_fitting", "nonfinite_skipped"):
        assert key in stats[0]["train"], key
    assert "codebook_usage" in stats[0]["valid"] and stats[-1]["lr"] > 0
    assert sorted(os.listdir(exp / "model")) == ["cmvn.json", "config.json", "model.pt", "sp.model"]
    torch.load(exp / "model" / "model.pt", weights_only=True)  # plain tensors only
    from sitok import Tokenizer

    tok = Tokenizer.from_pretrained(str(exp / "model"))
    codes = tok.encode(tone(1.0), 24000)
    assert codes.shape == (1, 13) and int(codes.max()) < 64
    info = run_one_thread([sys.executable, "-m", "sitok.cli", "info", "-m", str(exp / "model")])
    assert '"tokens_per_second": 12.5' in info.stdout and '"bits_per_second": 75.0' in info.stdout
    # the command line: encode -> codes.npy -> decode, and resynth
    import numpy as np
    import soundfile as sf

    wav = write(str(root / "in48k.wav"), tone(1.0, sr=48000), sr=48000)
    cli = [sys.executable, "-m", "sitok.cli"]
    r = run_one_thread([*cli, "encode", wav, "-m", str(exp / "model"), "-o", str(root / "codes.npy")])
    assert r.returncode == 0, r.stderr
    codes = np.load(root / "codes.npy")
    assert codes.shape == (1, 13) and codes.dtype.kind == "i"
    assert (
        run_one_thread(
            [
                *cli,
                "decode",
                str(root / "codes.npy"),
                "-m",
                str(exp / "model"),
                "-o",
                str(root / "out.wav"),
                "--steps",
                "2",
            ]
        ).returncode
        == 0
    )
    assert sf.info(str(root / "out.wav")).samplerate == 24000 and sf.info(str(root / "out.wav")).frames == 13 * 4 * 480
    assert run_one_thread([*cli, "resynth", wav, "-m", str(exp / "model"), "-o", str(root / "re.wav")]).returncode == 0
    assert sf.info(str(root / "re.wav")).frames == 24000
    assert (
        run_one_thread(
            [*cli, "resynth", wav, "-m", str(exp / "model"), "-o", str(root / "re0.wav"), "--temperature", "0"]
        ).returncode
        == 0
    )
    r = run_one_thread(
        [
            *cli,
            "decode",
            str(root / "codes.npy"),
            "-m",
            str(exp / "model"),
            "-o",
            str(root / "hot.wav"),
            "--temperature",
            "-1",
        ]
    )
    assert r.returncode == 2 and "--temperature: must be a finite number >= 0, got '-1'" in r.stderr  # usage error
    np.save(root / "bad.npy", codes + 1000)
    r = run_one_thread([*cli, "decode", str(root / "bad.npy"), "-m", str(exp / "model"), "-o", str(root / "bad.wav")])
    assert r.returncode == 1 and f"{root / 'bad.npy'}: codes must lie in [0, 64)" in r.stderr


def test_killed_training_resumes_with_identical_losses(tiny_dump):
    root, n = tiny_dump
    ref = root / "exp_ref"
    assert run_one_thread(args(root, n, ref)).returncode == 0
    exp = root / "exp_killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen(
        args(root, n, exp), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (exp / "train_stats.jsonl").exists():
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL)  # dies somewhere in epoch 2 (or 3)
    p.wait()
    done_before = len(read_train_stats(str(exp)))
    assert 1 <= done_before < 3, "the kill came too late to test resuming"
    r = run_one_thread(args(root, n, exp))
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = read_train_stats(str(ref)), read_train_stats(str(exp))
    assert [s["epoch"] for s in b] == [1, 2, 3]
    for x, y in zip(a, b):
        for key in ("loss", "diff", "vq", "ctc"):
            assert x["train"][key] == pytest.approx(y["train"][key], rel=1e-6, abs=1e-7), (x["epoch"], key)
        assert x["valid"]["loss"] == pytest.approx(y["valid"]["loss"], rel=1e-6)


def test_ddp_two_cpu_processes_agree(tiny_dump):
    root, n = tiny_dump
    exp = root / "exp_ddp"
    cmd = torchrun_gloo(args(root, n, exp, epochs=1)[1:])
    r = run_one_thread(cmd, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    log = open(exp / "log.txt").read()
    assert "2 ranks, weights and codebooks identical across ranks: True" in log
    assert (exp / "model" / "config.json").exists()


def _kill_after(cmd, exp, records: int):
    """Start training, SIGKILL it once ``records`` epochs are logged; returns the epochs logged."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and len(read_train_stats(str(exp))) < records:
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    return len(read_train_stats(str(exp)))


def test_content_first_schedule_resumes_in_both_phases(tiny_dump):
    """Phase A (VQ bypassed) for half of 6 epochs, k-means codebook start, phase B; a run killed in
    phase A and one killed in phase B resume to the uninterrupted run's losses."""
    root, n = tiny_dump
    extra = ["--phase_a_fraction", "0.5", "--kmeans_init", "True", "--dead_relative", "0.03"]
    ref = root / "exp_phases_ref"
    r = run_one_thread(args(root, n, ref, epochs=6) + extra)
    assert r.returncode == 0, r.stderr[-3000:]
    a = read_train_stats(str(ref))
    assert [s["phase"] for s in a] == ["A"] * 3 + ["B"] * 3
    assert all("codebook_usage" not in s["valid"] and s["train"]["vq"] == 0 for s in a[:3])
    assert all(s["valid"]["codebook_usage"] > 0 and s["train"]["vq"] > 0 for s in a[3:])
    with open(ref / "log.txt") as fh:
        assert fh.read().count("k-means codebook start before step") == 1
    for kill_at, phase in ((1, "A"), (4, "B")):
        exp = root / f"exp_phases_killed_{phase}"
        done = _kill_after(args(root, n, exp, epochs=6) + extra, exp, kill_at)
        assert kill_at <= done < 6, "the kill came too late to test resuming"
        assert a[done]["phase"] == phase  # the epoch that was running when killed
        r = run_one_thread(args(root, n, exp, epochs=6) + extra)
        assert r.returncode == 0, r.stderr[-3000:]
        b = read_train_stats(str(exp))
        assert [s["epoch"] for s in b] == [1, 2, 3, 4, 5, 6]
        for x, y in zip(a, b):
            for key in ("loss", "diff", "ctc"):
                assert x["train"][key] == pytest.approx(y["train"][key], rel=1e-6, abs=1e-7), (phase, x["epoch"], key)
            assert x["valid"]["loss"] == pytest.approx(y["valid"]["loss"], rel=1e-6)


def test_learning_rate_decay_ends_at_the_last_planned_step(tiny_dump):
    root, n = tiny_dump
    exp = root / "exp_plan"
    r = run_one_thread(args(root, n, exp, epochs=3) + ["--max_train_minutes", "30", "--lr_decay_factor", "0.1"])
    assert r.returncode == 0, r.stderr[-3000:]
    stats = read_train_stats(str(exp))
    assert [s["epoch"] for s in stats] == [1, 2, 3]  # a 30-minute cap does not cut a 3-epoch run
    assert stats[-1]["lr"] == pytest.approx(0.001 * 0.1, rel=1e-6)  # the last step trains at lr * factor
    with open(exp / "log.txt") as fh:
        assert "plan:" in fh.read()


def test_plan_fits_the_time_cap():
    """The plan's arithmetic with a fake clock: 90 s epochs of 50 steps under a 10-minute cap (3 %
    kept) -> 323 steps, 6 whole epochs and 23 steps of a 7th; phase A on the first 30 % of them, the
    decay stretched to the last of them."""
    from types import SimpleNamespace

    import speechbrain as sb

    from sitok.train.tokenizer import TokenizerBrain, TrainingPlan

    plan = TrainingPlan(epochs=100, phase_a_fraction=0.3, batches_per_epoch=50)
    assert plan.phase_a_steps > 10**9  # the first epoch is phase A until the plan exists
    sched = sb.nnet.schedulers.WarmAndExpDecayLRSchedule(lr=1.0, n_warmup_steps=10, total_steps=5000)
    counter = SimpleNamespace(limit=100)
    fake = SimpleNamespace(
        hparams=SimpleNamespace(max_train_minutes=10, number_of_epochs=100, epoch_counter=counter),
        plan=plan,
        lr_schedule=sched,
        global_step=50,
        train_start=time.time() - 90,
    )
    fake.set_decay = lambda: TokenizerBrain.set_decay(fake)
    TokenizerBrain.make_plan(fake, epoch=1)
    assert plan.planned and plan.total_steps == 323 and plan.epochs == counter.limit == 7
    assert plan.phase_a_steps == 97 and sched.decay_steps == 323 - 1 - 10
    plan2 = TrainingPlan(epochs=100, phase_a_fraction=0.01, batches_per_epoch=50)
    fake.plan = plan2
    TokenizerBrain.make_plan(fake, epoch=1)
    assert plan2.phase_a_steps == 50  # never shorter than the epoch already trained without the VQ
    plan3 = TrainingPlan(epochs=100, phase_a_fraction=0.3, batches_per_epoch=50, max_steps=120)
    assert plan3.total_steps == 120 and plan3.epochs == 3  # the step cap holds before the plan exists
    fake.plan = plan3
    TokenizerBrain.make_plan(fake, epoch=1)
    assert plan3.total_steps == 120 and plan3.epochs == counter.limit == 3  # and after it
    fake.hparams.max_train_minutes, fake.train_start = 1, time.time() - 90  # an epoch longer than the cap
    plan4 = TrainingPlan(epochs=100, phase_a_fraction=0.3, batches_per_epoch=50)
    fake.plan = plan4
    TokenizerBrain.make_plan(fake, epoch=1)
    assert plan4.total_steps == 50 and plan4.epochs == 1  # never fewer steps than already trained


def test_the_last_epoch_stops_at_the_planned_step(tiny_dump):
    """``max_train_steps`` inside an epoch: Brain's loop leaves the epoch at that step, validates,
    exports; the decay ends at that step; running the command again trains nothing more."""
    root, n = tiny_dump
    exp = root / "exp_steps"
    cmd = args(root, n, exp, epochs=3) + ["--max_train_steps", "7", "--lr_decay_factor", "0.1"]
    r = run_one_thread(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    stats = read_train_stats(str(exp))
    per_epoch = stats[0]["step"]
    assert 7 % per_epoch and per_epoch < 7, per_epoch  # the cap falls inside an epoch after the first
    assert [s["epoch"] for s in stats] == list(range(1, -(-7 // per_epoch) + 1))
    assert stats[-1]["step"] == 7 and stats[-1]["lr"] == pytest.approx(0.001 * 0.1, rel=1e-6)
    assert (exp / "model" / "model.pt").exists()
    r = run_one_thread(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_train_stats(str(exp)) == stats


def test_atomic_checkpointer_ignores_a_save_that_did_not_complete(tmp_path):
    """A save that dies after some files (a killed run) leaves no checkpoint to recover from: the
    last complete one is recovered, and the leftover directory goes at the next save."""
    from sitok.train.checkpoints import AtomicCheckpointer

    lin = torch.nn.Linear(2, 2)
    ck = AtomicCheckpointer(tmp_path, recoverables={"lin": lin})
    ck.save_checkpoint(name="good")
    saved = lin.weight.detach().clone()

    def die(obj, path):
        raise KeyboardInterrupt("killed while saving")

    with torch.no_grad():
        lin.weight.add_(1.0)
    ck.add_recoverable("late", torch.nn.Linear(1, 1), custom_save_hook=die)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(name="partial")
    partial = [d for d in tmp_path.iterdir() if d.name.endswith("partial")]
    assert partial and (partial[0] / "lin.ckpt").exists()  # some files were written ...
    fresh = AtomicCheckpointer(tmp_path, recoverables={"lin": lin})
    assert [c.path.name for c in fresh.list_checkpoints()] == ["CKPT+good"]  # ... but it is no checkpoint
    fresh.recover_if_possible()
    assert torch.equal(lin.weight, saved)
    fresh.save_checkpoint(name="next")
    assert not partial[0].exists()


def test_resumed_logs_forget_epochs_that_no_checkpoint_holds(tmp_path):
    """A run killed after logging an epoch but before saving its checkpoint redoes that epoch: its
    lines in train_log.txt and train_stats.jsonl go, everything else stays as it was."""
    from types import SimpleNamespace

    from sitok.train.checkpoints import forget_unsaved_epochs

    log, stats = tmp_path / "train_log.txt", tmp_path / "train_stats.jsonl"
    log.write_text("".join(f"epoch: {e}, lr: 1.00e-03 - train loss: {e}.5\n" for e in (1, 2, 3, 10)) + "a note\n")
    stats.write_text("".join(f'{{"epoch": {e}, "train": {{"loss": {e}}}}}\n' for e in (1, 2, 3)))
    hp = SimpleNamespace(
        train_logger=SimpleNamespace(save_file=str(log)),
        exp_dir=str(tmp_path),
        epoch_counter=SimpleNamespace(current=2),
    )
    forget_unsaved_epochs(SimpleNamespace(hparams=hp))
    assert (
        log.read_text()
        == "epoch: 1, lr: 1.00e-03 - train loss: 1.5\nepoch: 2, lr: 1.00e-03 - train loss: 2.5\na note\n"
    )
    assert [r["epoch"] for r in read_train_stats(str(tmp_path))] == [1, 2]
    forget_unsaved_epochs(SimpleNamespace(hparams=hp))  # nothing more to drop: the files stay as they are
    assert len(log.read_text().splitlines()) == 3
