"""Smoke test: the mini recipe through every stage on a handful of utterances, a re-run that
does no work twice, and a stage killed half-way that resumes."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from sitok.data.kaldi import read_table, validate_data_dir

from conftest import ROOT, have

RUN = os.path.join(ROOT, "egs", "mini", "sitok", "run.sh")
REFINE = ["--refine_args", "--number_of_epochs 1 --batch_seconds 8 --max_train_minutes 0", "--vocoder_config", "tiny",
          "--vocoder_eval_utts", "2", "--eval_steps", "1 2", "--eval_cfg_scales", "1 2", "--eval_wer_steps", "1"]  # fmt: skip
TINY = "--train_minutes 0.6 --dev_minutes 0.2 --test_minutes 0.2 --unseen_minutes 0.2 --ks_per_class '1 1 1'"

pytestmark = pytest.mark.skipif(not have("flite", "espeak-ng"), reason="flite/espeak-ng missing (tools/install.sh)")


def run(tmp, *args, check=True, **kw):
    cmd = ["bash", RUN, "--corpus_dir", f"{tmp}/corpus", "--datadir", f"{tmp}/data", "--dumpdir", f"{tmp}/dump",
           "--expdir", f"{tmp}/exp", "--python", sys.executable, "--local_corpus_opts", TINY, "--progress", "false",
           "--vocab_size", "64", "--judge_check_utts", "5", "--tokenizer_config", "tiny",
           "--tokenizer_args", "--number_of_epochs 1 --batch_seconds 8", "--decode_steps", "2", *args]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"run.sh failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def snapshot(tmp):
    out = {}
    for d, _, files in os.walk(tmp):
        for f in files:
            p = os.path.join(d, f)
            out[p] = os.stat(p).st_mtime_ns
    return out


def test_every_stage_and_rerun(tmp_path):
    tmp = str(tmp_path)
    r = run(tmp, "--stage", "0", "--stop_stage", "5")
    log = r.stdout + r.stderr
    for s in range(6):
        assert f"Stage {s}:" in log
    sets = ["train", "dev", "test", "test_unseen", "ks_train", "ks_dev", "ks_test"]
    for s in sets:  # every utterance has text, speaker, duration and a feature entry
        assert validate_data_dir(f"{tmp}/dump/{s}", need=("utt2dur", "feats.scp", "utt2num_frames")) == []
        assert read_table(f"{tmp}/dump/{s}/wav.scp").keys() == read_table(f"{tmp}/dump/{s}/feats.scp").keys()
    assert os.path.exists(f"{tmp}/dump/train/cmvn.json")
    assert os.path.exists(f"{tmp}/data/lang_unigram64/sp.model")
    assert "WER" in log and "CTC fit at 12.50 Hz" in log
    assert os.path.exists(f"{tmp}/data/test_unseen/trials")
    # stage 4: a model directory; stage 5: codes for every set, resynthesis + judge WER of the tests
    exp = f"{tmp}/exp/tokenizer_tiny"
    assert sorted(os.listdir(f"{exp}/model")) == ["cmvn.json", "config.json", "model.pt", "sp.model"]
    assert '"bits_per_second": 75.0' in log
    for s in sets:
        assert read_table(f"{exp}/codes/{s}/codes.scp").keys() == read_table(f"{tmp}/dump/{s}/feats.scp").keys()
    for s in ("test", "test_unseen"):
        for d in (f"{s}_groundtruth", f"{s}_steps2"):
            assert validate_data_dir(f"{exp}/resynth/{d}", check_files=True) == []
            assert open(f"{exp}/resynth/{d}/judge_wer.tsv").readline().startswith("# pocketsphinx")

    # stages 6-11: every refinement kind, the vocoder, the refinement evaluation
    r = run(tmp, "--stage", "6", "--stop_stage", "11", *REFINE)
    log = r.stdout + r.stderr
    for s in range(6, 12):
        assert f"Stage {s}:" in log
    for kind in ("decoder_ft", "token_cfg", "shortcut", "light_head"):
        model = f"{tmp}/exp/refine_tiny_{kind}/model"
        assert {"config.json", "model.pt", "cmvn.json", "sp.model", "vocoder"} <= set(os.listdir(model)), kind
    assert '"shortcut": true' in log and "light head: last 1 of 2 layers" in log
    assert os.path.exists(f"{exp}/model/vocoder/config.json")
    assert os.path.exists(f"{tmp}/exp/vocoder_tiny/eval_test/summary.json")
    res = pd.read_csv(f"{tmp}/exp/refine_eval_tiny/test/results.csv")
    assert set(res["model"]) == {"ground truth", "base", "decoder_ft", "token_cfg", "shortcut", "light_head"}
    assert set(res[res.model == "token_cfg"]["cfg_scale"]) == {1.0, 2.0}
    assert set(res[res.model == "ground truth"]["vocoder"]) == {"griffin_lim", "vocos"}
    assert res[(res.model == "shortcut") & (res.steps == 1)]["wer"].notna().all()

    before = snapshot(tmp)
    r = run(tmp, "--stage", "0", "--stop_stage", "11", *REFINE)
    log = r.stdout + r.stderr
    assert "already synthesised" in log and log.count("already done, skipping") >= 1 + len(sets) + 1 + len(sets)
    assert log.count("already exported, skipping") == 1 + 4 + 1  # tokenizer, 4 refinements, vocoder
    assert "is up to date" in log and "refine_eval_tiny/test already done" in log
    assert snapshot(tmp) == before  # nothing rewritten


def test_killed_feature_stage_resumes(tmp_path):
    tmp = str(tmp_path)
    run(tmp, "--stage", "0", "--stop_stage", "1")
    p = subprocess.Popen(["bash", "-c", " ".join(["exec", "bash", RUN, "--stage", "2", "--stop_stage", "2",
                          "--datadir", f"{tmp}/data", "--dumpdir", f"{tmp}/dump", "--python", sys.executable,
                          "--progress", "false", "--nj", "1"])],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    deadline = time.time() + 300  # generous: a loaded 2-core machine
    while time.time() < deadline and not os.path.exists(f"{tmp}/dump/train/.done"):
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)  # kill the whole stage (shell + python) mid-way
    p.wait()
    r = run(tmp, "--stage", "2", "--stop_stage", "3")
    for s in ("train", "dev", "test", "test_unseen", "ks_train", "ks_dev", "ks_test"):
        assert os.path.exists(f"{tmp}/dump/{s}/.done")
        assert validate_data_dir(f"{tmp}/dump/{s}", need=("utt2dur", "feats.scp")) == []
        assert not [f for f in os.listdir(f"{tmp}/dump/{s}") if ".tmp" in f]
    assert "already done, skipping" in r.stdout + r.stderr  # train finished before the kill


def test_help_and_unknown_option():
    r = subprocess.run(["bash", RUN, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--stop_stage" in r.stdout and "vocabulary" in r.stdout
    r = subprocess.run(["bash", RUN, "--no_such_option", "1"], capture_output=True, text=True)
    assert r.returncode != 0 and "unknown option --no_such_option" in r.stderr
