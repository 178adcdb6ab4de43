"""Sharded audio (sitok.data.shards): writing, the exactly-once split over ranks x workers, exact
resumption mid-epoch, on-the-fly log-mel against the feature dump, idempotence, bad input."""

import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections import Counter

import numpy as np
import pytest
import torch
import yaml
from test_train import args, tiny_dump  # noqa: F401  (the module-scoped tiny recipe dump)
from torch.utils.data import DataLoader

from sitok import cli
from sitok.data.kaldi import DataDir, DataDirError, read_mat, read_table
from sitok.data.shards import (
    ShardDataset,
    ShardLoader,
    StreamState,
    collate,
    epoch_plan,
    padded_batch,
    read_index,
    worker_order,
    write_shards,
)
from sitok.train.tokenizer import read_train_stats

from conftest import run_one_thread, write

N_UTTS = 36
MEL_ATOL = 1e-5  # on-the-fly vs dumped log-mel of 16-bit sources; measured: 0 (identical)


def make_data_dir(root: str, n: int = N_UTTS) -> str:
    """n synthetic utterances by 3 speakers (every sixth at 16 kHz, resampled on reading) and one
    file that is not audio (left out by both the feature stage and the shards)."""
    rng = np.random.default_rng(0)
    wav, text, utt2spk, utt2dur = {}, {}, {}, {}
    for i in range(n):
        spk = f"spk{i % 3}"
        utt = f"{spk}-{i:04d}"
        sr = 16000 if i % 6 == 5 else 24000
        dur = 0.3 + 0.07 * (i % 11)
        t = np.arange(int(dur * sr)) / sr
        x = 0.3 * np.sin(2 * np.pi * (150 + 20 * i) * t) + 0.02 * rng.standard_normal(t.size)
        wav[utt] = write(f"{root}/wav/{utt}.wav", x.astype(np.float32), sr=sr)
        text[utt], utt2spk[utt], utt2dur[utt] = f"words of utterance {i}", spk, f"{t.size / sr:.4f}"
    bad = "spk0-9999"
    os.makedirs(f"{root}/wav", exist_ok=True)
    with open(f"{root}/wav/{bad}.wav", "w") as fh:
        fh.write("not audio\n" * 50)
    wav[bad], text[bad], utt2spk[bad], utt2dur[bad] = f"{root}/wav/{bad}.wav", "bad", "spk0", "1.0"
    d = f"{root}/data"
    DataDir({"wav.scp": wav, "text": text, "utt2spk": utt2spk, "utt2dur": utt2dur}).save(d)
    return d


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shards"))
    data = make_data_dir(root)
    out = f"{root}/shards"
    index = write_shards(data, out, max_count=7, max_seconds=4.0, progress=False)  # 6 shards: not a multiple of 4
    return data, out, index


def kept_ids(out: str) -> set:
    ids = set()
    for s in read_index(out)["shards"]:
        with open(os.path.join(out, s["name"][:-4] + ".json")) as fh:
            ids |= set(json.load(fh)["ids"])
    return ids


# ---- writing ----------------------------------------------------------------------------------
def test_write_shards_index_and_skipped(corpus):
    data, out, index = corpus
    names = sorted(f for f in os.listdir(out) if f.endswith(".tar"))
    assert names == [s["name"] for s in index["shards"]] and names[0] == "shard-000000.tar"
    assert len(names) % 4 != 0 and all(s["utterances"] <= 7 for s in index["shards"])
    assert index["utterances"] == N_UTTS and index["skipped"] == 1
    dur = read_table(f"{data}/utt2dur")
    assert index["seconds"] == pytest.approx(sum(float(v) for u, v in dur.items() if u != "spk0-9999"), abs=1e-2)
    assert kept_ids(out) == set(dur) - {"spk0-9999"}
    skipped = open(f"{out}/skipped.tsv").read().splitlines()
    assert len(skipped) == 2 and skipped[1].startswith("spk0-9999\t") and "unreadable" in skipped[1]
    assert not [f for f in os.listdir(out) if ".tmp" in f]
    ds = ShardDataset(out, features="none", rank=0, world_size=1)
    sample = next(iter(ds))
    assert set(sample) >= {"id", "text", "speaker", "duration"} and sample["id"].startswith(sample["speaker"])


# ---- exactly once per epoch over 2 ranks x 2 workers ------------------------------------------
def epoch_ids(out, epoch, batch_seconds=None, even=False, **kw):
    """The ids each of 2 simulated ranks receives through a DataLoader with 2 workers."""
    seen = []
    for rank in (0, 1):
        ds = ShardDataset(out, features="none", rank=rank, world_size=2, seed=3, epoch=epoch, even=even, **kw)
        if batch_seconds:
            ds.batch_seconds = batch_seconds
            loader = DataLoader(ds, batch_size=None, num_workers=2, collate_fn=collate)
        else:
            loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate)
        for batch in loader:
            assert len(set(batch["slice"])) == 1 and batch["num_slices"][0] == 4  # a batch comes from one worker
            assert batch["slice"][0] // 2 == rank
            seen += batch["id"]
    return seen


@pytest.mark.parametrize("batch_seconds", [None, 2.5])
def test_every_sample_exactly_once_per_epoch(corpus, batch_seconds):
    _, out, _ = corpus
    kept = kept_ids(out)
    orders = []
    for epoch in (0, 1):
        seen = epoch_ids(out, epoch, batch_seconds, shuffle_buffer=4)
        assert Counter(seen) == Counter(kept), f"epoch {epoch}: duplicates or losses"
        orders.append(seen)
    assert orders[0] != orders[1]  # the order changes with the epoch
    assert epoch_ids(out, 1, batch_seconds, shuffle_buffer=4) == orders[1]  # and is reproducible


def test_even_split_drops_the_remainder_only(corpus):
    _, out, _ = corpus
    seen = epoch_ids(out, 0, even=True)
    assert len(seen) == len(set(seen)) == N_UTTS // 4 * 4


def test_plan_slices_cover_each_sample_once_for_any_layout():
    counts = [5, 1, 7, 3, 9]
    for num_slices in (1, 2, 3, 4, 7, 30):
        items = []
        for j in range(num_slices):
            batches, _ = epoch_plan(
                counts, lambda s: [1.0] * counts[s], epoch=2, seed=0, slice_id=j, num_slices=num_slices
            )
            items += [(s, p) for b in batches for s, p, _ in b]
        assert sorted(items) == sorted((s, p) for s, c in enumerate(counts) for p in range(c)), num_slices
    shard_orders = [
        epoch_plan(counts, lambda s: [1.0] * counts[s], epoch=e, seed=0, slice_id=0, num_slices=1)[1] for e in range(3)
    ]
    assert len({tuple(o) for o in shard_orders}) == 3  # the shard order is shuffled per epoch


# ---- resumption -------------------------------------------------------------------------------
def by_slice(batches) -> dict:
    out = {}
    for b in batches:
        out.setdefault(b["slice"][0], []).extend(b["id"])
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_gives_exactly_the_rest(corpus, workers):
    _, out, _ = corpus
    opts = dict(features="none", rank=1, world_size=2, seed=5, epoch=1, shuffle_buffer=3, batch_seconds=2.0)

    def loader(ds):
        return DataLoader(ds, batch_size=None, num_workers=workers, collate_fn=collate)

    full = list(loader(ShardDataset(out, **opts)))
    assert len(full) >= 4
    state, first = StreamState(epoch=1), []
    for batch in loader(ShardDataset(out, **opts)):  # interrupted after 3 batches
        state.update(batch)
        first.append(batch)
        if len(first) == 3:
            break
    saved = json.loads(json.dumps(state.to_dict()))  # as stored in a checkpoint
    assert saved["epoch"] == 1 and saved["num_slices"] == 2 * max(1, workers)
    assert sum(saved["consumed"].values()) == sum(len(b["id"]) for b in first)
    resumed_ds = ShardDataset(out, **{**opts, "epoch": 0})
    resumed_ds.load_state_dict(saved)
    rest = list(loader(resumed_ds))
    if workers == 0:  # one stream: the concatenation is the uninterrupted sequence, batch for batch
        assert [b["id"] for b in first + rest] == [b["id"] for b in full]
    else:  # the loader interleaves its workers; each worker's own sequence continues exactly
        got = by_slice(first)
        for s, ids in by_slice(rest).items():
            got[s] = got.get(s, []) + ids
        assert got == by_slice(full)
    with pytest.raises(ValueError, match="same world size and num_workers"):
        other = ShardDataset(out, **{**opts, "world_size": 3, "rank": 0})
        other.load_state_dict({**saved, "num_slices": 5})
        next(iter(other))


# ---- on-the-fly mel equals the dump ----------------------------------------------------------
def test_mel_on_the_fly_equals_the_feature_dump(corpus, tmp_path):
    from sitok.data.features import compute_features
    from sitok.data.mel import GlobalCMVN

    data, out, _ = corpus
    dump = str(tmp_path / "dump")
    compute_features(data, dump, nj=1, progress=False)
    feats = read_table(f"{dump}/feats.scp")
    cmvn = GlobalCMVN.load(f"{dump}/cmvn.json")
    worst = 0.0
    for norm in (None, cmvn):
        ds = ShardDataset(out, cmvn=norm, rank=0, world_size=1, batch_seconds=3.0)
        n = 0
        for batch in DataLoader(ds, batch_size=None, collate_fn=collate):
            for i, utt in enumerate(batch["id"]):
                ref = torch.from_numpy(read_mat(feats[utt]).copy())
                ref = norm(ref) if norm is not None else ref
                got = batch["mel"][i, : batch["mel_lengths"][i]]
                assert got.shape == ref.shape, utt
                worst = max(worst, float((got - ref).abs().max()))
                n += 1
            assert batch["mel"].shape[0] * batch["duration"].max() <= 3.0 + 1e-6 or len(batch["id"]) == 1
        assert n == len(feats) == N_UTTS
    assert worst <= MEL_ATOL, worst
    samples = list(ShardDataset(out, rank=0, world_size=1, tokenize=lambda t: [len(w) for w in t.split()]))[:3]
    sb = padded_batch(samples)  # the batch shape the tokenizer training gets from its feature-dump datasets
    mel, rel = sb.mel
    plain = collate(samples)
    assert torch.equal(mel, plain["mel"]) and sb.tokens[0].shape == plain["tokens"].shape
    assert torch.equal((rel * mel.shape[1]).round().long(), plain["mel_lengths"]) and sb.id == plain["id"]


# ---- idempotence ------------------------------------------------------------------------------
def test_rerun_is_idempotent_and_redoes_only_what_changed(corpus, tmp_path):
    data, src, _ = corpus
    out = str(tmp_path / "shards")
    shutil.copytree(src, out)

    def mtimes():
        return {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in sorted(os.listdir(out))}

    before = mtimes()
    index = write_shards(data, out, max_count=7, max_seconds=4.0, progress=False)
    assert mtimes() == before and index == read_index(src)
    os.remove(f"{out}/shard-000002.tar")  # a lost shard: only it is written again
    write_shards(data, out, max_count=7, max_seconds=4.0, progress=False)
    after = mtimes()
    changed = {f for f in after if after[f] != before.get(f)}
    assert changed == {"shard-000002.tar", "shard-000002.json", "index.json", "skipped.tsv"}
    with open(f"{src}/shard-000002.tar", "rb") as a, open(f"{out}/shard-000002.tar", "rb") as b:
        assert a.read() == b.read()  # the same input gives the same bytes
    index = write_shards(data, out, max_count=20, max_seconds=100.0, progress=False)  # new options: rewritten
    assert len(index["shards"]) == 2 and sorted(f for f in os.listdir(out) if f.endswith(".tar")) == [
        "shard-000000.tar",
        "shard-000001.tar",
    ]


# ---- bad input --------------------------------------------------------------------------------
def test_bad_data_dir_is_one_line_naming_the_file(corpus, tmp_path, caplog):
    data, _, _ = corpus
    cases = {
        "utt2dur": lambda d: os.remove(f"{d}/utt2dur"),
        "text": lambda d: open(f"{d}/text", "w").write("spk0-0000 hello\n"),
        "utt2dur:": lambda d: open(f"{d}/utt2dur", "a").write("spk9-0000\n"),
        "wav.scp": lambda d: os.remove(f"{d}/wav.scp"),
    }
    for i, (needle, damage) in enumerate(cases.items()):
        bad = str(tmp_path / f"bad{i}")
        shutil.copytree(data, bad)
        damage(bad)
        with pytest.raises(DataDirError) as err:
            write_shards(bad, str(tmp_path / f"out{i}"), progress=False)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"{bad}") and needle.rstrip(":") in msg, msg
    caplog.set_level(logging.ERROR)
    assert cli.main(["write-shards", bad, str(tmp_path / "out"), "--no-progress"]) == 1
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.startswith("write-shards: ") and bad in line and "\n" not in line
    with pytest.raises(FileNotFoundError, match="index.json: not found"):
        ShardDataset(str(tmp_path / "nothing"))


def loader_batches(loader, epoch):
    loader.set_epoch(epoch)
    return [list(b.id) for b in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_equal_steps_per_rank_and_resume_by_batch_count(corpus, workers):
    """ShardLoader: every rank gets the same number of batches (the fewest any rank's plan has),
    and a loader resumed after k batches yields exactly the rest of the uninterrupted epoch."""
    _, out, _ = corpus

    def loader(rank):
        ds = ShardDataset(out, features="none", seed=3, rank=rank, world_size=2, even=True, batch_seconds=2.0)
        return ShardLoader(ds, num_workers=workers)

    ranks = [loader(0), loader(1)]
    plans = [[len(p) for p in ld._plans(r)] for r, ld in enumerate(ranks)]
    assert len(ranks[0]) == len(ranks[1]) == min(sum(p) for p in plans) > 2
    for epoch in (1, 2):
        full = [loader_batches(ld, epoch) for ld in ranks]
        assert [len(f) for f in full] == [len(ranks[0])] * 2
        seen = [u for f in full for b in f for u in b]
        assert len(seen) == len(set(seen))  # no sample twice in an epoch across ranks and workers
        for r in range(2):
            for k in (1, len(full[r]) - 1):
                again = loader(r)
                again.resume(epoch, k)
                again.set_epoch(epoch)  # what the training loop calls next: keeps the resumption point
                assert [list(b.id) for b in again] == full[r][k:], (epoch, r, k)
    assert worker_order([3, 1, 2]) == [0, 1, 2, 0, 2, 0]


@pytest.mark.parametrize("workers", [0, 2])
def test_micro_batches_are_the_same_steps_for_any_number_of_ranks(corpus, workers):
    """With 4 micro-batches per step, 1, 2 or 4 ranks together yield, step by step, the same 4
    micro-batches in the same order (rank r takes positions r, r + W, ...); a loader resumed after
    k steps on another number of ranks yields exactly the rest."""
    _, out, _ = corpus
    M = 4

    def loader(rank, world):
        ds = ShardDataset(out, features="none", seed=5, rank=rank, world_size=world, even=True, batch_seconds=1.5)
        return ShardLoader(ds, num_workers=workers, micro_batches=M)

    def steps(world, epoch, resume_steps=0):
        """The epoch's steps as lists of M micro-batches (ids), put together from every rank."""
        per_rank = []
        for r in range(world):
            ld = loader(r, world)
            if resume_steps:
                ld.resume(epoch, resume_steps * (M // world))
            ld.set_epoch(epoch)
            per_rank.append([list(b.id) for b in ld])
        n_steps = len(per_rank[0]) // (M // world)
        assert all(len(b) == n_steps * (M // world) for b in per_rank)
        return [[per_rank[j % world][s * (M // world) + j // world] for j in range(M)] for s in range(n_steps)]

    for epoch in (1, 2):
        one = steps(1, epoch)
        ld = loader(0, 1)
        ld.set_epoch(epoch)
        assert len(one) == ld.steps > 2
        seen = [u for step in one for b in step for u in b]
        assert len(seen) == len(set(seen))  # no sample twice in an epoch
        assert steps(2, epoch) == one and steps(4, epoch) == one
        assert steps(2, epoch, resume_steps=1) == one[1:]  # stopped after 1 step on 4 ranks, resumed on 2
        assert steps(4, epoch, resume_steps=2) == one[2:]
    assert steps(1, 1) != steps(1, 2)  # epochs reshuffle
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        loader(0, 3)


def test_micro_batch_sampler_splits_steps_over_ranks():
    """The feature-dump path: a batch sampler cut into steps of M batches, rank r taking positions
    r, r + W, ...; the batches after the last whole step are left out."""
    from sitok.data.ranks import MicroBatchSampler

    class Batches:
        def __init__(self):
            self.epoch = 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __len__(self):
            return 10

        def __iter__(self):
            return iter([[self.epoch * 100 + i] for i in range(10)])

    def together(world, epoch):
        ranks = []
        for r in range(world):
            s = MicroBatchSampler(Batches(), 4, rank=r, world_size=world)
            s.set_epoch(epoch)
            assert len(s) == 2 * (4 // world) and s.steps == 2
            ranks.append(list(s))
        return [ranks[j % world][step * (4 // world) + j // world] for step in range(2) for j in range(4)]

    expected = [[300 + i] for i in range(8)]
    assert together(1, 3) == together(2, 3) == together(4, 3) == expected
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        MicroBatchSampler(Batches(), 4, rank=0, world_size=3)


def test_tokenizer_trains_from_shards(tiny_dump, tmp_path):  # noqa: F811
    """The tiny tokenizer recipe reads the training audio from shards (log-mel on the fly) and
    exports a model; the epoch's steps come from the shard plan."""
    root, n = tiny_dump
    shards = str(tmp_path / "shards")
    write_shards(str(root / "data" / "train"), shards, max_count=5, progress=False)
    exp = tmp_path / "exp"
    r = run_one_thread(args(root, n, exp, epochs=2) + ["--train_shards", shards])
    assert r.returncode == 0, r.stderr[-3000:]
    log = (exp / "log.txt").read_text()
    assert f"training data: {shards} (3 shards" in log and "streamed" in log
    stats = read_train_stats(str(exp))
    assert [s["epoch"] for s in stats] == [1, 2]
    assert (exp / "model" / "model.pt").exists()


def checkpointed_step(exp) -> int:
    """The largest within-epoch step of the experiment's checkpoints (SpeechBrain's brain.ckpt)."""
    steps = [0]
    for f in (exp / "save").glob("CKPT+*/brain.ckpt"):
        try:
            steps.append(int(yaml.safe_load(f.read_text())["step"]))
        except (OSError, TypeError, KeyError, ValueError, yaml.YAMLError):
            pass  # being written
    return max(steps)


def test_training_from_shards_killed_mid_epoch_resumes_identically(tiny_dump, tmp_path):  # noqa: F811
    """Checkpoints after every step; a run killed inside an epoch resumes at the next batch of the
    stream (not at the epoch's start) and ends with the uninterrupted run's losses."""
    root, n = tiny_dump
    shards = str(tmp_path / "shards")
    write_shards(str(root / "data" / "train"), shards, max_count=5, progress=False)
    more = ["--train_shards", shards, "--ckpt_interval_steps", "1"]
    ref, exp = tmp_path / "ref", tmp_path / "killed"
    assert run_one_thread(args(root, n, ref, epochs=2) + more).returncode == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen(
        args(root, n, exp, epochs=2) + more,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and checkpointed_step(exp) < 2:
        time.sleep(0.01)
    os.killpg(p.pid, signal.SIGKILL)  # after a checkpoint inside epoch 1
    p.wait()
    assert not (exp / "train_stats.jsonl").exists(), "the kill came after epoch 1: nothing mid-epoch to resume"
    r = run_one_thread(args(root, n, exp, epochs=2) + more)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "epoch 1 resumed after" in (exp / "log.txt").read_text()
    a, b = read_train_stats(str(ref)), read_train_stats(str(exp))
    assert [s["epoch"] for s in b] == [1, 2]
    # epoch 1's train averages cover only the batches after the resumption; the rest must agree
    for x, y in zip(a, b):
        assert x["valid"]["loss"] == pytest.approx(y["valid"]["loss"], rel=1e-6), x["epoch"]
    for key in ("loss", "diff", "vq", "ctc"):
        assert a[1]["train"][key] == pytest.approx(b[1]["train"][key], rel=1e-6, abs=1e-7), key
    w_ref = torch.load(ref / "model" / "model.pt", weights_only=True)
    w_exp = torch.load(exp / "model" / "model.pt", weights_only=True)
    assert all(torch.allclose(w_ref[k], w_exp[k], rtol=1e-5, atol=1e-7) for k in w_ref)


def test_process_rank_takes_arguments_then_torchruns_environment(monkeypatch):
    from sitok.data.ranks import process_rank

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert process_rank("x") == (0, 1, False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert process_rank("x") == (1, 3, False) and process_rank("x", 0, 2) == (0, 2, False)
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ValueError, match="dump-codes: RANK='one' WORLD_SIZE='3' are not integers"):
        process_rank("dump-codes")
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ValueError, match="ShardDataset: rank 3 is outside world size 3"):
        process_rank("ShardDataset")
