"""Feature stage: bad input survives and is reported; jobs resume after a kill; outputs are
exactly the mel frontend's."""

import os

import kaldiio
import numpy as np
import pytest

import sitok.data.features as features
from sitok.data.audio import load_audio
from sitok.data.kaldi import DataDir, read_table, validate_data_dir
from sitok.data.mel import GlobalCMVN, MelFrontend
from sitok.data.prep import Entry, make_data_dir

from conftest import tone, write


def entries_for(files):
    return [Entry(f"spk1-{name}", "spk1", path, f"words for {name}") for name, path in sorted(files.items())]


def test_bad_input_is_skipped_named_and_counted(bad_files, tmp_path):
    data, dump = str(tmp_path / "data"), str(tmp_path / "dump")
    dd, skips = make_data_dir(entries_for(bad_files), data, max_duration=10.0)
    at_prep = {s.utt.split("-")[1]: s.reason for s in skips}
    assert at_prep == {
        "empty": "empty-file",
        "not_audio": "unreadable",
        "truncated": "unreadable",
        "short": "too-short",
        "long": "too-long",
    }
    # NaN and digital silence pass the header check; the feature stage finds them
    summary = features.compute_features(data, dump, nj=2, max_duration=10.0, progress=False)
    assert summary["utterances"] == 3 and summary["skipped"] == 2
    skipped = open(f"{dump}/skipped.tsv").read()
    assert bad_files["nan"] in skipped and "non-finite" in skipped
    assert bad_files["silent"] in skipped and "silent" in skipped
    kept = read_table(f"{dump}/feats.scp")
    assert sorted(kept) == ["spk1-good", "spk1-stereo", "spk1-wrong_rate"]
    assert validate_data_dir(dump, need=("utt2dur", "feats.scp", "utt2num_frames")) == []
    for utt, spec in kept.items():
        mel = kaldiio.load_mat(spec)
        assert mel.shape == (50, 128) and mel.dtype == np.float32
        assert int(read_table(f"{dump}/utt2num_frames")[utt]) == 50
    ref = MelFrontend()(load_audio(bad_files["good"])).numpy()
    np.testing.assert_array_equal(kaldiio.load_mat(kept["spk1-good"]), ref)
    cmvn = GlobalCMVN.load(f"{dump}/cmvn.json")
    assert cmvn.stats.count == 150
    assert "feats" in open(f"{dump}/manifest.csv").readline()
    assert not [f for f in os.listdir(dump) if ".tmp" in f]


def _corpus(tmp_path, n=8):
    files = {
        f"u{i:02d}": write(str(tmp_path / "wav" / f"u{i:02d}.wav"), tone(0.5 + 0.1 * i, freq=150 + 20 * i))
        for i in range(n)
    }
    data = str(tmp_path / "data")
    make_data_dir(entries_for(files), data)
    return data


def test_kill_and_rerun_resumes_only_unfinished_jobs(tmp_path):
    data = _corpus(tmp_path)
    clean = str(tmp_path / "clean")
    features.compute_features(data, clean, nj=4, progress=False)

    dump = str(tmp_path / "dump")
    real_job = features._run_job

    def dies_on_job_2(args):
        if args[0] == 2:
            raise KeyboardInterrupt("killed")  # the run dies half-way through
        return real_job(args)

    with pytest.raises(KeyboardInterrupt):
        for j in range(4):  # serial, deterministic order: jobs 0 and 1 finish, 2 dies
            dies_on_job_2((j, *_job_args(data, dump, 4, j)))
    assert os.path.exists(f"{dump}/jobs/0.done") and not os.path.exists(f"{dump}/jobs/2.done")
    assert not os.path.exists(f"{dump}/feats.scp")

    before = {j: os.stat(f"{dump}/feats.{j}.ark").st_mtime_ns for j in (0, 1)}
    features.compute_features(data, dump, nj=4, progress=False)
    # only the unfinished jobs ran again: finished arks are untouched
    assert {j: os.stat(f"{dump}/feats.{j}.ark").st_mtime_ns for j in (0, 1)} == before
    assert os.path.exists(f"{dump}/jobs/2.done") and os.path.exists(f"{dump}/jobs/3.done")
    a, b = read_table(f"{clean}/feats.scp"), read_table(f"{dump}/feats.scp")
    assert list(a) == list(b)
    for utt in a:
        np.testing.assert_array_equal(kaldiio.load_mat(a[utt]), kaldiio.load_mat(b[utt]))
    assert open(f"{clean}/cmvn.json").read() == open(f"{dump}/cmvn.json").read()


def _job_args(data, dump, nj, j):
    dd = DataDir.load(data)
    chunks = [list(c) for c in np.array_split(np.array(dd.utts, dtype=object), nj)]
    os.makedirs(f"{dump}/jobs", exist_ok=True)
    from sitok.data.mel import MelConfig

    return chunks[j], dd.tables["wav.scp"], dump, MelConfig(), 0.1, 60.0


def test_all_skipped_is_a_clear_error(tmp_path):
    p = write(str(tmp_path / "s.wav"), np.zeros(24000, np.float32))
    data = str(tmp_path / "data")
    make_data_dir([Entry("a-1", "a", p, "x")], data)
    with pytest.raises(RuntimeError, match="every utterance"):
        features.compute_features(data, str(tmp_path / "dump"), progress=False)


def test_cli_compute_feats_single_job(tmp_path):
    from conftest import run_cli

    data = _corpus(tmp_path, n=3)
    r = run_cli("compute-feats", data, str(tmp_path / "dump"), "--nj", "1", "--no-progress")
    assert "3 utterances" in r.stderr and "0 skipped" in r.stderr
