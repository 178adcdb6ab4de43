"""Completion stamps: finished work is reused only when its inputs and options are the same."""

import os
import subprocess
import sys

import kaldiio
import numpy as np
import torch
from test_features import _corpus

from sitok import stamp
from sitok.data import features
from sitok.data.kaldi import read_table
from sitok.data.mel import GlobalCMVN
from sitok.infer import Tokenizer
from sitok.infer.sets import dump_codes, resynth_set, vocode_set

from conftest import tiny_sitok, tone, write


def test_digest_follows_content_and_ignores_hidden_and_temporary_files(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("one")
    (d / "sub" / "b.bin").write_bytes(b"\0\1")
    first = stamp.digest(str(d))
    (d / ".done").write_text("{}")
    (d / "a.txt.tmp123").write_text("partial")
    assert stamp.digest(str(d)) == first
    (d / "sub" / "b.bin").write_bytes(b"\0\2")
    assert stamp.digest(str(d)) != first
    assert stamp.digest(str(tmp_path / "nothing")) == "missing"


def test_a_big_file_is_summarised_by_size_time_and_edges(tmp_path, monkeypatch):
    monkeypatch.setattr(stamp, "BIG_FILE", 10)
    monkeypatch.setattr(stamp, "_EDGE", 4)
    f = tmp_path / "big.ark"
    f.write_bytes(b"abcdefghijklmnopqrstuvwxyz")
    first = stamp.digest(str(f))
    f.write_bytes(b"abcdefghijklmnopqrstuvwxyZ")  # the last bytes differ
    os.utime(f, ns=(1, 1))
    assert stamp.digest(str(f)) != first


def test_changes_name_what_differs():
    old = {"inputs": {"model": "a", "feats": "b"}, "options": {"steps": "4"}}
    new = {"inputs": {"model": "c", "feats": "b"}, "options": {"steps": "16", "seed": "0"}}
    assert stamp.changes(old, new) == ["model changed", "option seed is new", "steps 4 -> 16"]
    assert stamp.changes(old, old) == []
    assert stamp.changes(None, new) == ["no stamp of a finished run"]


def test_cli_check_and_write(tmp_path):
    inp = tmp_path / "in.txt"
    inp.write_text("x")
    marker = str(tmp_path / "out" / ".done")

    def run(action, *extra):
        args = [sys.executable, "-m", "sitok.stamp", action, marker, "--input", f"in={inp}", "--option", "n=1", *extra]
        return subprocess.run(args, capture_output=True, text=True, check=False)

    assert run("check").returncode == 1  # nothing done yet
    assert run("write").returncode == 0
    assert run("check").returncode == 0
    inp.write_text("y")
    r = run("check")
    assert r.returncode == 1 and "in changed" in r.stderr
    assert run("check", "--option", "n=2").returncode == 1


def test_fresh_cache_keeps_same_stamp_removes_other(tmp_path):
    cache = str(tmp_path / "rows")
    a = {"inputs": {"model": "a"}, "options": {}}
    assert not stamp.fresh_cache(cache, a)
    open(os.path.join(cache, "r1.json"), "w").close()
    open(os.path.join(cache, "r2.json.tmp99"), "w").close()  # a killed writer's file
    assert stamp.fresh_cache(cache, a)
    assert sorted(os.listdir(cache)) == [".stamp", "r1.json"]
    assert not stamp.fresh_cache(cache, {"inputs": {"model": "b"}, "options": {}})
    assert os.listdir(cache) == [".stamp"]


# ---- compute-feats ---------------------------------------------------------------------------
def test_compute_feats_after_the_data_dir_grew_covers_every_utterance(tmp_path):
    small = _corpus(tmp_path / "small", n=6)
    dump = str(tmp_path / "dump")
    features.compute_features(small, dump, nj=1, progress=False)
    assert len(read_table(f"{dump}/feats.scp")) == 6
    big = _corpus(tmp_path / "small", n=9)  # the same data dir with three more utterances
    assert big == small
    features.compute_features(big, dump, nj=1, progress=False)
    scp = read_table(f"{dump}/feats.scp")
    assert len(scp) == 9
    fresh = str(tmp_path / "fresh")
    features.compute_features(big, fresh, nj=1, progress=False)
    for u, spec in read_table(f"{fresh}/feats.scp").items():
        np.testing.assert_array_equal(kaldiio.load_mat(spec), kaldiio.load_mat(scp[u]))


def test_compute_feats_removes_temporary_files_of_killed_runs_and_extra_jobs(tmp_path):
    data = _corpus(tmp_path, n=6)
    dump = str(tmp_path / "dump")
    features.compute_features(data, dump, nj=3, progress=False)
    orphan = f"{dump}/feats.0.ark.tmp999999999"  # no such process
    with open(orphan, "wb") as fh:
        fh.write(b"\0" * 1000)
    features.compute_features(data, dump, nj=2, progress=False)
    assert not os.path.exists(orphan)
    assert not os.path.exists(f"{dump}/feats.2.ark") and not os.path.exists(f"{dump}/jobs/2.done")
    assert len(read_table(f"{dump}/feats.scp")) == 6


def test_compute_feats_redoes_a_job_when_its_audio_list_changed(tmp_path):
    data = _corpus(tmp_path, n=4)
    dump = str(tmp_path / "dump")
    features.compute_features(data, dump, nj=1, progress=False)
    before = kaldiio.load_mat(read_table(f"{dump}/feats.scp")["spk1-u00"])
    write(str(tmp_path / "other.wav"), tone(0.7, freq=600))
    wav_scp = read_table(f"{data}/wav.scp")
    wav_scp["spk1-u00"] = str(tmp_path / "other.wav")
    with open(f"{data}/wav.scp", "w") as fh:
        fh.writelines(f"{u} {p}\n" for u, p in wav_scp.items())
    features.compute_features(data, dump, nj=1, progress=False)
    after = kaldiio.load_mat(read_table(f"{dump}/feats.scp")["spk1-u00"])
    assert after.shape != before.shape


# ---- resynth-set ---------------------------------------------------------------------------
def _tokenizer(seed=0):
    return Tokenizer(tiny_sitok(seed, dec_layers=1).eval(), GlobalCMVN(torch.zeros(128), torch.ones(128)))


def _resynth_setup(tmp_path):
    data = _corpus(tmp_path, n=3)
    dump = str(tmp_path / "dump")
    features.compute_features(data, dump, nj=1, progress=False)
    codes = str(tmp_path / "codes")
    dump_codes(_tokenizer(), dump, codes, progress=False)
    return dump, codes


def _audio(out):
    with open(os.path.join(out, "wav", "spk1-u00.wav"), "rb") as fh:
        return fh.read()


def _wav_mtimes(out):
    return {
        f: os.stat(os.path.join(out, "wav", f)).st_mtime_ns
        for f in sorted(os.listdir(os.path.join(out, "wav")))
        if f.endswith(".wav")
    }


def test_resynth_set_redoes_audio_made_with_other_options_or_weights(tmp_path, caplog):
    dump, codes = _resynth_setup(tmp_path)
    out = str(tmp_path / "resynth")
    tok = _tokenizer()
    resynth_set(tok, dump, codes, out, steps=2, progress=False)
    first = _wav_mtimes(out)
    assert len(first) == 3
    resynth_set(tok, dump, codes, out, steps=2, progress=False)  # same everything: kept
    assert _wav_mtimes(out) == first

    a = _audio(out)
    with caplog.at_level("INFO"):
        resynth_set(tok, dump, codes, out, steps=4, progress=False)
    assert "steps 2 -> 4" in caplog.text
    assert _audio(out) != a

    b = _audio(out)
    resynth_set(tok, dump, codes, out, steps=4, temperature=0.0, progress=False)
    c = _audio(out)
    assert c != b
    caplog.clear()
    with caplog.at_level("INFO"):
        resynth_set(_tokenizer(seed=1), dump, codes, out, steps=4, temperature=0.0, progress=False)  # retrained
    assert "model changed" in caplog.text
    assert _audio(out) != c


def test_vocode_set_redoes_audio_of_another_vocoder(tmp_path, caplog):
    dump, _ = _resynth_setup(tmp_path)
    out = str(tmp_path / "gt")
    tok = _tokenizer()
    vocode_set(tok, dump, out, progress=False)
    marker = stamp.read_stamp(os.path.join(out, "wav", ".stamp"))
    assert marker["inputs"]["vocoder"].startswith("griffin_lim:")

    class Louder(torch.nn.Module):
        name = "louder"

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, mel):
            return 0.5 * self.inner(mel)

    tok.vocoder = Louder(tok.vocoder)
    with caplog.at_level("INFO"):
        vocode_set(tok, dump, out, progress=False)
    assert "vocoder changed" in caplog.text
