"""Stage 13's probe records (``<expdir>/probes_<tag>.json``) and ``sitok report`` reading them."""

import json
import os
import subprocess
import sys

from sitok.report.probe_records import expand_paths, read_records, write_records


def probe_summary(exp_dir, name, features, **results):
    os.makedirs(os.path.join(exp_dir, "probes"), exist_ok=True)
    facts = (
        {"fps": 12.5, "tps": 12.5, "cn": 1, "cs": 1024, "kbps": 0.125, "ctc_weight": 0.1}
        if features == "tokens"
        else {"fps": 50.0, "tps": None, "cn": None, "cs": None, "kbps": None, "ctc_weight": None}
    )
    s = {"format": "sitok-probes-1", "name": name, "features": features, **facts, "tasks": {"er": {}}, **results}
    with open(os.path.join(exp_dir, "probes", "summary.json"), "w") as fh:
        json.dump(s, fh)


def test_records_merge_keep_paths_relative_and_are_not_rewritten_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    probe_summary("exp/tokenizer_x", "tokenizer_x", "tokens", er_accuracy=70.0, sv_eer=12.0)
    probe_summary("exp/features_mel50", "features_mel50", "mel50", er_accuracy=90.0)
    path = "exp/probes_x.json"
    write_records(path, [("tokenizer_x", "tokens", "exp/tokenizer_x/model", "exp/tokenizer_x")])
    # a second stage-13 run probing other features adds its records, keeping the first run's
    write_records(path, [("features_mel50", "mel50", None, "exp/features_mel50")])
    raw = json.load(open(path))
    assert [r["name"] for r in raw] == ["tokenizer_x", "features_mel50"]
    assert raw[0]["exp_dir"] == "tokenizer_x" and raw[0]["model_dir"] == "tokenizer_x/model"  # relative to exp/
    assert raw[0]["results"]["er_accuracy"] == 70.0 and raw[0]["tasks"] == ["er"]
    assert raw[1]["model_dir"] is None and raw[1]["results"]["sv_eer"] is None
    mtime = os.stat(path).st_mtime_ns
    write_records(path, [("features_mel50", "mel50", "", "exp/features_mel50")])  # the same again: untouched
    assert os.stat(path).st_mtime_ns == mtime
    # read from another working directory, the paths still name the same directories
    os.makedirs("elsewhere")
    monkeypatch.chdir(tmp_path / "elsewhere")
    got = [r["exp_dir"] for r in read_records("../exp/probes_x.json")]
    assert got == ["../exp/tokenizer_x", "../exp/features_mel50"]
    # each experiment once, in order; a record without a probe summary is left out
    monkeypatch.chdir(tmp_path)
    write_records(path, [("gone", "mel12.5", None, "exp/features_mel12.5")])
    assert expand_paths(["exp/tokenizer_x", path]) == ["exp/tokenizer_x", "exp/features_mel50"]


def test_report_reads_the_record_file(tmp_path, monkeypatch):
    from sitok.report.build import write_report

    monkeypatch.chdir(tmp_path)
    probe_summary("exp/tokenizer_x", "tokenizer_x", "tokens", er_accuracy=70.0, sv_eer=12.0, ks_accuracy=75.0)
    probe_summary("exp/features_mel50", "features_mel50", "mel50", er_accuracy=90.0)
    r = subprocess.run(
        [
            *(sys.executable, "-m", "sitok.cli", "probe-records", "exp/probes_x.json"),
            *("--record", "tokenizer_x", "tokens", "exp/tokenizer_x/model", "exp/tokenizer_x"),
            *("--record", "features_mel50", "mel50", "", "exp/features_mel50"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    for paths in (["exp/probes_x.json"], ["exp/tokenizer_x", "exp/probes_x.json"]):  # never a row twice
        t2 = write_report(paths, str(tmp_path / "r"))["table2_understanding"].set_index("experiment")
        assert list(t2.index) == ["tokenizer_x", "features_mel50"]
        assert (t2.loc["tokenizer_x", "ER"], t2.loc["features_mel50", "ER"]) == (70.0, 90.0)
