"""The LLM-ASR recipe (recipes/llm_asr/train.py) on a tiny dump with the tiny backbone: it trains on
codes and on mel, writes a model directory `sitok transcribe` reads, resumes a killed run to the
same losses, and takes a DDP step on two CPU processes."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from sitok.data.features import compute_features
from sitok.data.prep import Entry, make_data_dir
from sitok.data.synth import make_sentence
from sitok.infer import Tokenizer
from sitok.infer.sets import dump_codes
from sitok.models.speech_lm import SpeechLM

from conftest import ROOT, run_one_thread, tone, torchrun_gloo, write, write_model_dir

TRAIN = os.path.join(ROOT, "recipes", "llm_asr", "train.py")
HPARAMS = os.path.join(ROOT, "recipes", "llm_asr", "hparams", "mini.yaml")


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """train / dev / test dumps of tones with transcripts, a tiny untrained tokenizer and its codes."""
    root = tmp_path_factory.mktemp("llm_asr")
    rng = random.Random(0)
    for split, n in (("train", 10), ("dev", 3), ("test", 3)):
        entries = []
        for i in range(n):
            utt = f"s{i % 2}-{split}-{i:02d}"
            path = write(str(root / "wav" / f"{utt}.wav"), tone(0.8 + 0.1 * (i % 4), freq=110 + 20 * i))
            entries.append(Entry(utt, f"s{i % 2}", path, make_sentence(rng)))
        make_data_dir(entries, str(root / "dump" / split))
        compute_features(str(root / "dump" / split), str(root / "dump" / split), progress=False)
    model = write_model_dir(root / "tok" / "model")
    tok = Tokenizer.from_pretrained(model, vocoder="griffin_lim")
    for split in ("train", "dev", "test"):
        dump_codes(tok, str(root / "dump" / split), str(root / "tok" / "codes" / split), progress=False)
    return root


def args(root, exp, epochs=2, features="tokens"):
    return [
        sys.executable,
        TRAIN,
        HPARAMS,
        "--backbone",
        "tiny",
        "--features",
        features,
        "--model_dir",
        str(root / "tok" / "model"),
        "--codes_root",
        str(root / "tok" / "codes"),
        "--dump_dir",
        str(root / "dump"),
        "--exp_dir",
        str(exp),
        "--number_of_epochs",
        str(epochs),
        "--max_train_minutes",
        "0",
        "--max_batch_positions",
        "120",
        "--warmup_steps",
        "2",
        "--lm_layers",
        "0",
        "--noprogressbar",
    ]


def train_stats(exp) -> list[str]:
    path = os.path.join(exp, "train_log.txt")
    return open(path).read().splitlines() if os.path.exists(path) else []


def test_recipe_trains_on_codes_and_mel_and_transcribe_reads_its_model(tiny_set, tmp_path):
    root = tiny_set
    exp = root / "exp_tokens"
    r = run_one_thread(args(root, exp) + ["--speech_encoder", "ctc"])  # speech side from the tokenizer's CTC decoder
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.load(open(exp / "results.json"))
    assert res["n_test"] == 3 and res["epochs"] == 2 and res["wer"] >= 0
    assert res["counts"]["train"]["kept"] == 10
    hyps = open(exp / "hyps.txt").read().splitlines()
    assert len(hyps) == 3 and all(h.count("\t") == 2 for h in hyps)
    assert os.path.exists(exp / "model" / "speech_lm.json") and len(train_stats(exp)) == 2
    assert json.load(open(exp / "model" / "speech_lm.json"))["encoder_layers"] == 1  # the tiny tokenizer's CTC decoder

    wav = str(root / "wav" / "s0-test-00.wav")
    npy = str(tmp_path / "codes.npy")
    np.save(npy, Tokenizer.from_pretrained(str(root / "tok" / "model"), vocoder="griffin_lim").encode(wav).numpy())
    cmd = [sys.executable, "-m", "sitok.cli", "transcribe", wav, npy, "-m", str(root / "tok" / "model")]
    r = run_one_thread(cmd + ["--asr", str(exp / "model")])
    assert r.returncode == 0, r.stderr[-3000:]
    (w, text_w), (n, text_n) = (line.split("\t") for line in r.stdout.splitlines())
    assert (w, n) == (wav, npy) and text_w == text_n  # the audio is encoded to the same codes

    mel = root / "exp_mel"
    r = run_one_thread(args(root, mel, epochs=1, features="mel12.5") + ["--speech_encoder", "random"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.load(open(mel / "results.json"))["features"] == "mel12.5"
    assert json.load(open(mel / "model" / "speech_lm.json"))["encoder_layers"] == 2
    r = run_one_thread(args(root, root / "exp_bad", epochs=1, features="mel12.5") + ["--speech_encoder", "ctc"])
    assert r.returncode != 0 and "speech_encoder ctc needs tokens" in r.stdout + r.stderr


def test_killed_run_resumes_to_the_same_losses(tiny_set):
    root = tiny_set
    ref = root / "exp_ref"
    r = run_one_thread(args(root, ref, epochs=4))
    assert r.returncode == 0, r.stderr[-3000:]
    exp = root / "exp_killed"
    p = subprocess.Popen(
        args(root, exp, epochs=4),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and len(train_stats(exp)) < 2:
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    logged = len(train_stats(exp))
    assert 2 <= logged < 4, "the kill came too late to test resuming"
    # an epoch is logged just before its checkpoint is saved: a kill between the two leaves a line
    # of an epoch that no checkpoint holds, which the resumed run must replace, not repeat
    with open(exp / "train_log.txt", "a") as fh:
        fh.write(f"epoch: {logged + 1}, lr: 1.00e-04, step: 99 - train loss: 9.99 - valid loss: 9.99\n")
    r = run_one_thread(args(root, exp, epochs=4))
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = train_stats(ref), train_stats(exp)
    assert len(b) == 4
    losses = lambda lines: [re.sub(r"train minutes: [^ ]* ", "", line.split(" - ", 1)[1]) for line in lines]  # noqa: E731
    assert losses(a) == losses(b) and "valid loss" in losses(b)[-1]


def test_fsdp_trains_like_ddp_on_two_cpu_processes_and_exports_the_whole_model(tiny_set):
    """distributed_strategy fsdp (the backbone's layers sharded over 2 gloo processes, DCP
    checkpoints, activation checkpointing) logs the losses of a DDP run of the same 2 epochs,
    then gathers the weights into a model directory that loads in one process and decodes."""
    root = tiny_set
    runs = {}
    for strategy in ("ddp", "fsdp"):
        exp = root / f"exp_{strategy}"
        more = ["--activation_checkpointing", "True"] if strategy == "fsdp" else []  # the same numbers, recomputed
        cmd = torchrun_gloo(args(root, exp, epochs=2)[1:] + ["--distributed_strategy", strategy, *more])
        r = run_one_thread(cmd, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[strategy] = exp
    numbers = lambda exp: [float(x) for x in re.findall(r"loss: ([0-9.e+-]+)", "\n".join(train_stats(exp)))]  # noqa: E731
    ddp, fsdp = numbers(runs["ddp"]), numbers(runs["fsdp"])
    assert len(ddp) == len(fsdp) == 4  # train and valid loss of 2 epochs
    assert fsdp == pytest.approx(ddp, rel=1e-4)
    assert (
        "FSDP2: 2 transformer blocks + root sharded; fp32; activation checkpointing True"
        in (runs["fsdp"] / "log.txt").read_text()
    )
    ckpts = [d for d in os.listdir(runs["fsdp"] / "save") if d.startswith("CKPT")]
    assert ckpts and all(os.path.isdir(runs["fsdp"] / "save" / c / "sharded.ckpt") for c in ckpts)
    results = json.load(open(runs["fsdp"] / "results.json"))
    assert results["steps"] > 0 and results["n_test"] > 0
    a = torch.load(runs["fsdp"] / "model" / "model.pt", weights_only=True)
    b = torch.load(runs["ddp"] / "model" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5) for k in a)
    SpeechLM.load(str(runs["fsdp"] / "model"))  # a plain model again
