"""``dump_codes``: flat memory, the same bytes as the in-memory encoding, resuming after SIGKILL,
stale parts dropped, two ranks giving what one gives."""

import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import sitok.infer.sets as sets
from sitok.data.kaldi import read_mat, read_scp
from sitok.infer import Tokenizer
from sitok.infer.sets import dump_codes, encode_mels, write_codes

from conftest import ROOT, write_model_dir

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from dump_codes_memory import make_dump as make_random_dump  # noqa: E402

N_UTTS = 60
SMALL = ["--part-utts", "6", "--batch-frames", "900", "--no-progress"]  # about 11 parts of 1-3 batches


def make_dump(path, n=N_UTTS, seed=0):
    """A feature dump dir of ``n`` random log-mels of 40-300 frames (the benchmark's maker)."""
    make_random_dump(str(path), n, seed, frames=(40, 299), speakers=3)
    return str(path)


def in_memory_codes(tok, dump_dir, out_dir, batch_frames):
    """The implementation dump_codes replaced: every mel in memory, encoded, then written."""
    feats = read_scp(os.path.join(dump_dir, "feats.scp"))
    mels = {u: torch.from_numpy(read_mat(p).copy()) for u, p in feats.items()}
    codes, _ = encode_mels(tok, mels, batch_frames)
    return write_codes(codes, out_dir)


def read_output(out_dir):
    """codes.ark bytes, codes.scp with the directory cut off (outputs in two dirs compare), utt2num_tokens."""
    with open(os.path.join(out_dir, "codes.ark"), "rb") as fh:
        ark = fh.read()
    with open(os.path.join(out_dir, "codes.scp"), encoding="utf-8") as fh:
        scp = fh.read().replace(out_dir, "OUT")
    with open(os.path.join(out_dir, "utt2num_tokens"), encoding="utf-8") as fh:
        return ark, scp, fh.read()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dump_codes")
    dump = make_dump(str(root / "dump"))
    model = write_model_dir(str(root / "model"))
    ref = str(root / "ref")
    in_memory_codes(Tokenizer.from_pretrained(model, vocoder="griffin_lim"), dump, ref, 900)
    return dump, model, ref


def tokenizer(model):
    return Tokenizer.from_pretrained(model, vocoder="griffin_lim")


def test_output_is_the_in_memory_encoding_with_one_batch_of_mels_at_a_time(setup, tmp_path, monkeypatch, caplog):
    dump, model, ref = setup
    tok = tokenizer(model)
    loaded, batches = [0], []
    real_read, real_encode = sets.read_mat, tok.encode_mels

    def counting_read(*a, **k):
        loaded[0] += 1
        return real_read(*a, **k)

    def encode(mels):  # every mel read since the last batch belongs to this batch
        assert loaded[0] == len(mels)
        loaded[0] = 0
        batches.append(len(mels))
        return real_encode(mels)

    monkeypatch.setattr(sets, "read_mat", counting_read)
    monkeypatch.setattr(tok, "encode_mels", encode)
    out = str(tmp_path / "codes")
    assert dump_codes(tok, dump, out, batch_frames=900, progress=False, part_utts=6) == N_UTTS
    assert read_output(out) == read_output(ref)
    planned = sets.length_batches(sets.frame_counts(dump, read_scp(os.path.join(dump, "feats.scp"))), 900)
    assert batches == [len(b) for b in planned] and len(batches) > 5  # the set's batches, one at a time
    assert sorted(os.listdir(out)) == [".codes.stamp", "codes.ark", "codes.scp", "utt2num_tokens"]

    # a finished output with the same stamp is kept: nothing is read or encoded again
    mtime = os.stat(os.path.join(out, "codes.ark")).st_mtime_ns
    batches.clear()
    with caplog.at_level(logging.INFO, logger="sitok"):
        dump_codes(tok, dump, out, batch_frames=900, progress=False, part_utts=6)
    assert not batches and os.stat(os.path.join(out, "codes.ark")).st_mtime_ns == mtime
    assert "already made from the same model and features, kept" in caplog.text


def test_frame_counts_from_the_headers_without_utt2num_frames(setup, tmp_path, monkeypatch):
    dump, model, ref = setup
    bare = str(tmp_path / "dump")
    os.makedirs(bare)
    os.symlink(os.path.join(dump, "feats.scp"), os.path.join(bare, "feats.scp"))  # entries name the ark itself
    feats = read_scp(os.path.join(bare, "feats.scp"))
    monkeypatch.setattr(sets, "read_mat", lambda *a, **k: pytest.fail("a matrix was loaded to count its frames"))
    counts = sets.frame_counts(bare, feats)
    monkeypatch.undo()
    assert counts == {u: read_mat(p).shape[0] for u, p in feats.items()}
    out = str(tmp_path / "codes")
    dump_codes(tokenizer(model), bare, out, batch_frames=900, progress=False, part_utts=6)
    assert read_output(out) == read_output(ref)


def _cli(*args, env=None, slow=0.0):
    """``sitok ARGS`` in a subprocess; ``slow``: seconds of sleep before every encoder batch."""
    code = (
        "import sys, time\n"
        "from sitok.infer.tokenizer import Tokenizer\n"
        "real = Tokenizer.encode_mels\n"
        f"Tokenizer.encode_mels = lambda self, mels, *a, **k: (time.sleep({slow}), real(self, mels, *a, **k))[1]\n"
        "from sitok import cli\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    inherited = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env = {**inherited, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for(cond, proc, seconds=300.0):  # generous: a loaded machine is slow to start torch
    t0 = time.monotonic()
    while not cond():
        assert proc.poll() is None, f"dump-codes ended before it could be killed:\n{proc.stdout.read()}"
        assert time.monotonic() - t0 < seconds, "timed out"
        time.sleep(0.01)


def test_sigkill_resumes_with_the_finished_parts(setup, tmp_path, monkeypatch, caplog):
    dump, model, ref = setup
    out = str(tmp_path / "codes")
    parts = os.path.join(out, ".parts")
    proc = _cli("dump-codes", dump, out, "-m", model, *SMALL, slow=0.1)

    def part0_done_part1_started():
        names = os.listdir(parts) if os.path.isdir(parts) else []
        return "part-00000.done" in names and any(n.startswith("part-00001.ark.tmp") for n in names)

    _wait_for(part0_done_part1_started, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(n for n in os.listdir(parts) if n.endswith(".done"))
    assert finished and not os.path.exists(os.path.join(out, "codes.scp"))
    part0 = os.stat(os.path.join(parts, "part-00000.ark")).st_mtime_ns

    encoded = []
    real = sets._encode_part
    monkeypatch.setattr(sets, "_encode_part", lambda *a: (encoded.append(os.path.basename(a[4])), real(*a))[1])
    monkeypatch.setattr("shutil.rmtree", _keep_parts())
    with caplog.at_level(logging.INFO, logger="sitok"):
        dump_codes(tokenizer(model), dump, out, batch_frames=900, progress=False, part_utts=6)
    assert read_output(out) == read_output(ref)
    kept = {n.replace(".done", ".ark") for n in finished}
    assert "part-00000.ark" in kept and not kept & set(encoded) and "part-00001.ark" in encoded
    assert f"{len(finished)} of the" in caplog.text and "finished before, kept" in caplog.text
    assert os.stat(os.path.join(parts, "part-00000.ark")).st_mtime_ns == part0  # not written again
    assert not [n for n in os.listdir(parts) if ".tmp" in n]  # the killed run's partial part is gone


def _keep_parts():
    """shutil.rmtree that keeps ``.parts`` (so the test can look at it after the run)."""
    import shutil

    real = shutil.rmtree

    def rmtree(path, *a, **k):
        if os.path.basename(path) != ".parts":
            real(path, *a, **k)

    return rmtree


def test_parts_of_another_model_or_features_are_not_reused(setup, tmp_path, monkeypatch, caplog):
    dump, model, ref = setup
    other = write_model_dir(str(tmp_path / "other"), seed=1)
    ref_other = str(tmp_path / "ref_other")
    in_memory_codes(tokenizer(other), dump, ref_other, 900)
    assert read_output(ref_other)[0] != read_output(ref)[0]

    out = str(tmp_path / "codes")
    real, calls = sets._encode_part, []

    def killed_after_two_parts(*a):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(a)
        real(*a)

    monkeypatch.setattr(sets, "_encode_part", killed_after_two_parts)
    with pytest.raises(KeyboardInterrupt):
        dump_codes(tokenizer(model), dump, out, batch_frames=900, progress=False, part_utts=6)
    monkeypatch.undo()
    assert os.path.exists(os.path.join(out, ".parts", "part-00001.done"))
    with caplog.at_level(logging.INFO, logger="sitok"):
        dump_codes(tokenizer(other), dump, out, batch_frames=900, progress=False, part_utts=6)
    assert "parts of an earlier run removed, starting over (model changed)" in caplog.text
    assert read_output(out) == read_output(ref_other)

    # a finished output of one model is made again for another, and again for changed features
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sitok"):
        dump_codes(tokenizer(model), dump, out, batch_frames=900, progress=False, part_utts=6)
    assert "already made" not in caplog.text and read_output(out) == read_output(ref)
    same_path = make_dump(str(tmp_path / "dump2"))
    dump_codes(tokenizer(model), same_path, out, batch_frames=900, progress=False)
    make_dump(same_path, seed=1)  # new features under the same path
    ref_changed = str(tmp_path / "ref_changed")
    in_memory_codes(tokenizer(model), same_path, ref_changed, 900)
    dump_codes(tokenizer(model), same_path, out, batch_frames=900, progress=False)
    assert read_output(out) == read_output(ref_changed) != read_output(ref)


def test_two_ranks_without_a_process_group_give_the_one_process_output(setup, tmp_path):
    dump, model, ref = setup
    out = str(tmp_path / "codes")
    args = ("dump-codes", dump, out, "-m", model, *SMALL)
    rank1 = _cli(*args, env={"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    rank0 = _cli(*args, env={"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    logs = [p.communicate(timeout=300)[0] for p in (rank0, rank1)]
    assert [p.returncode for p in (rank0, rank1)] == [0, 0], logs
    assert read_output(out) == read_output(ref)
    feats = read_scp(os.path.join(dump, "feats.scp"))
    n_parts = len(sets.plan_parts(sets.frame_counts(dump, feats), 900, 6))  # part i goes to rank i % 2
    assert f"rank 1 wrote its {n_parts // 2} parts" in logs[1], logs[1]
    assert f"({n_parts - n_parts // 2} encoded by this process now)" in logs[0], logs[0]
    assert sorted(os.listdir(out)) == [".codes.stamp", "codes.ark", "codes.scp", "utt2num_tokens"]
