"""Smoke test: the mini recipe through every stage on a handful of utterances, stages 1-5 killed
at random points and resumed to the same outputs, a re-run that does no work twice, and work
redone (or refused) when its inputs changed."""

import filecmp
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from sitok.data.kaldi import read_table, validate_data_dir
from sitok.data.trials import read_trials

from conftest import ROOT, run_cli

RUN = os.path.join(ROOT, "egs", "mini", "sitok", "run.sh")
ABLATIONS = os.path.join(ROOT, "egs", "mini", "sitok", "run_ablations.sh")
SHORTCUT = os.path.join(ROOT, "egs", "mini", "sitok", "run_shortcut.sh")
REFINE = [
    "--refine_args",
    "--number_of_epochs 1 --batch_seconds 8 --max_train_minutes 0",
    "--vocoder_config",
    "tiny",
    "--vocoder_eval_utts",
    "2",
    "--eval_steps",
    "1 2",
    "--eval_cfg_scales",
    "1 2",
    "--eval_wer_steps",
    "1",
    "--eval_temperatures",
    "0 1",
    "--eval_select_set",
    "dev",
    "--evaluate_steps",
    "1 2",
    "--evaluate_cfg_scales",
    "1 2",
    "--evaluate_vocoders",
    "vocos griffin_lim",
    "--evaluate_utts",
    "3",
]
PROBES = ["--probe_args", "--number_of_epochs 1 --batch_size 4"]
TINY = (
    "--train_minutes 0.6 --dev_minutes 0.2 --test_minutes 0.2 --unseen_minutes 0.5 --ks_per_class '1 1 1'"
    " --tts_train_minutes 0.2"
)

pytestmark = pytest.mark.tools("flite", "espeak-ng")


def run_sh(tmp, *args, corpus_dir=None):
    """The run.sh command line on ``tmp`` (its corpus from ``corpus_dir``, by default ``tmp/corpus``)
    at the tiny sizes of these tests, then ``args``."""
    return [
        "bash",
        RUN,
        "--corpus_dir",
        corpus_dir or f"{tmp}/corpus",
        "--datadir",
        f"{tmp}/data",
        "--dumpdir",
        f"{tmp}/dump",
        "--expdir",
        f"{tmp}/exp",
        "--python",
        sys.executable,
        "--local_corpus_opts",
        TINY,
        "--extra_sets",  # the keyword clips and the AR-TTS-only sentences (tts_train)
        "ks_train ks_dev ks_test tts_train",
        "--progress",
        "false",
        "--vocab_size",
        "64",
        "--judge_check_utts",
        "5",
        "--tokenizer_config",
        "tiny",
        "--tokenizer_args",
        "--number_of_epochs 1 --batch_seconds 8",
        "--decode_steps",
        "1 2",
        "--decode_temperatures",
        "0 1",
        "--decode_select_utts",
        "3",
        *args,
    ]


def run(tmp, *args, check=True, **kw):
    r = subprocess.run(run_sh(tmp, *args), capture_output=True, text=True, **kw)
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


def kill_and_resume(tmp, reference, seconds, kills=10, seed=0):
    """Stages 1-5 in ``tmp`` (the corpus of ``reference``), SIGKILLed ``kills`` times at random
    points spread over the first 80 % of ``seconds`` of work (the uninterrupted run's time, which
    other load on the machine may have stretched), then run to the end. Returns the kill times."""
    rng = random.Random(seed)
    points = sorted(round(rng.uniform(0.5, 0.8 * seconds), 2) for _ in range(kills))
    cmd = run_sh(tmp, "--stage", "1", "--stop_stage", "5", corpus_dir=f"{reference}/corpus")
    start, killed = 0.0, 0
    for t in points:  # each run resumes what the killed ones left, so the kills fall all along the stages
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            p.wait(timeout=t - start)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            killed += 1
        start = t
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert killed == kills  # every kill hit a running stage (restarts cost time, so the work outlasts the points)
    return points


def same_outputs(a, b):
    """Every output of stages 1-5 under ``a`` and ``b`` is the same (text with the directory
    names replaced); logs, timings, stamps, evaluation caches (timings, fingerprints) and checkpoints
    are not outputs."""
    skip = re.compile(
        r"(^|/)(\.[^/]*|summary\.json|log\.txt|train_log\.txt|train_stats\.jsonl|env\.log|"
        r"hyperparams\.yaml|tokenizer\.py|save|results\.(md|csv)|per_utt\.csv|cache|eval_temp)(/|$)"
    )
    files = []
    for root, _, names in os.walk(a):
        for n in names:
            rel = os.path.relpath(os.path.join(root, n), a)
            if not skip.search(rel) and not rel.startswith("corpus"):
                files.append(rel)
    assert files
    for rel in sorted(files):
        fa, fb = os.path.join(a, rel), os.path.join(b, rel)
        assert os.path.exists(fb), rel
        if rel.endswith((".ark", ".pt", ".wav", ".model")):
            assert filecmp.cmp(fa, fb, shallow=False), rel
        else:
            with open(fa, errors="replace") as ha, open(fb, errors="replace") as hb:
                ta, tb = ha.read(), hb.read()
            assert ta.replace(a, "ROOT") == tb.replace(b, "ROOT").replace(f"{a}/corpus", "ROOT/corpus"), rel
    return len(files)


def test_every_stage_and_rerun(tmp_path):
    tmp = str(tmp_path / "a")
    r0 = run(tmp, "--stage", "0", "--stop_stage", "0")
    t1 = time.time()
    r = run(tmp, "--stage", "1", "--stop_stage", "5")
    seconds = time.time() - t1
    log = r0.stdout + r0.stderr + r.stdout + r.stderr
    for s in range(6):
        assert f"Stage {s}:" in log
    sets = ["train", "dev", "test", "test_unseen", "ks_train", "ks_dev", "ks_test", "tts_train"]
    for s in sets:  # every utterance has text, speaker, duration and a feature entry
        assert validate_data_dir(f"{tmp}/dump/{s}", need=("utt2dur", "feats.scp", "utt2num_frames")) == []
        assert read_table(f"{tmp}/dump/{s}/wav.scp").keys() == read_table(f"{tmp}/dump/{s}/feats.scp").keys()
    assert os.path.exists(f"{tmp}/dump/train/cmvn.json")
    assert os.path.exists(f"{tmp}/data/lang_char/sp.model")  # the mini recipe: character CTC units
    assert "WER" in log and "CTC fit at 37.50 Hz (12.5 Hz tokens x 3)" in log
    assert os.path.exists(f"{tmp}/data/test_unseen/trials")
    # stage 4: a model directory; stage 5: codes for every set, resynthesis + judge WER of the tests
    exp = f"{tmp}/exp/tokenizer_tiny"
    assert sorted(os.listdir(f"{exp}/model")) == ["cmvn.json", "config.json", "model.pt", "sp.model"]
    assert '"bits_per_second": 75.0' in log
    for s in sets:
        assert read_table(f"{exp}/codes/{s}/codes.scp").keys() == read_table(f"{tmp}/dump/{s}/feats.scp").keys()
    # the decoding setting was chosen on dev (lowest mel L1 over 1/2 steps x temperature 0/1)
    dec_steps, dec_temp = run_cli("best-decoding", f"{exp}/decode_select_dev").stdout.split()
    assert dec_steps in ("1", "2") and dec_temp in ("0", "1") and f"resynthesis at {dec_steps} steps" in log
    # sitok evaluate at the chosen temperature: its own setting name, never another temperature's rows
    ev = f"{exp}/eval_temp/test"
    run_cli(
        "evaluate",
        f"{tmp}/dump/test",
        ev,
        "-m",
        f"{exp}/model",
        "--steps",
        "1",
        "--temperature",
        "0",
        "--vocoders",
        "griffin_lim",
        "--judges",
        "asr=none",
        "sim=none",
        "mos=none",
        "pesq=none",
        "--no-groundtruth",
        "--max-utts",
        "2",
        "--no-progress",
    )
    rows = json.load(open(f"{ev}/summary.json"))["settings"]
    assert [(r["setting"], r["temperature"]) for r in rows] == [("tokenizer_tiny_griffin_lim_steps1_cfg1_temp0", 0.0)]
    for s in ("test", "test_unseen"):
        for d in (f"{s}_groundtruth", f"{s}_steps{dec_steps}_temp{dec_temp}"):
            assert validate_data_dir(f"{exp}/resynth/{d}", check_files=True) == []
            assert open(f"{exp}/resynth/{d}/judge_wer.tsv").readline().startswith("# pocketsphinx")

    # stages 1-5 killed at 10 random points, then resumed: the outputs of an uninterrupted run
    b = str(tmp_path / "b")
    points = kill_and_resume(b, tmp, seconds)
    n = same_outputs(tmp, b)
    print(f"fault injection: SIGKILL at {points} s of {seconds:.0f} s; {n} of {n} output files identical")
    assert not [os.path.join(d, f) for d, _, fs in os.walk(b) for f in fs if ".tmp" in f]

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
    assert res[res.model != "ground truth"]["fmd"].gt(0).all()  # the Frechet mel distance of every decode
    sel = pd.read_csv(f"{tmp}/exp/refine_eval_tiny/dev_select/results.csv")  # judged settings chosen on dev
    assert set(sel["temperature"]) == {0.0, 1.0} and sel["wer"].isna().all() and "ground truth" not in set(sel.model)
    assert res[(res.model == "shortcut") & (res.steps == 1) & (res.temperature == 0)]["wer"].notna().all()

    # stages 12-14: every model scored by every judge, the probes, then the paper-style report
    r = run(tmp, "--stage", "12", "--stop_stage", "14", *REFINE, *PROBES)
    log = r.stdout + r.stderr
    assert "Stage 12:" in log and "Stage 13:" in log and "Stage 14:" in log
    for name, d in [("tokenizer_tiny", exp)] + [
        (f"refine_tiny_{k}", f"{tmp}/exp/refine_tiny_{k}") for k in ("decoder_ft", "token_cfg")
    ]:
        summary = json.load(open(f"{d}/eval/test/summary.json"))
        assert summary["utterances"] == 3 and list(summary["models"]) == [name]
        assert set(summary["judges"]) == {"asr", "sim", "mos", "pesq", "stoi"}
        keys = {r["setting"] for r in summary["settings"]}
        scales = ("1", "2") if name.endswith("token_cfg") else ("1",)
        want = {f"{name}_{v}_steps{s}_cfg{w}" for s in (1, 2) for w in scales for v in ("vocos", "griffin_lim")}
        assert keys == want | ({"groundtruth_vocos", "groundtruth_griffin_lim"} if d == exp else set())
        per_utt = pd.read_csv(f"{d}/eval/test/per_utt.csv")
        assert len(per_utt) == 3 * len(keys) and per_utt[["sim", "dnsmos_ovrl", "stoi", "mel_l1"]].notna().all().all()
        facts = summary["models"][name]
        assert facts["bits_per_second"] == 75.0 and 0 < facts["codebook_usage"] <= 1
    report = f"{tmp}/exp/report_tiny"
    t1 = pd.read_csv(f"{report}/table1_reconstruction.csv")
    assert len(t1) == 1 + 5 and t1["WER"].notna().all()  # ground truth + base + 4 refinements
    assert os.path.exists(f"{report}/fig2_steps.png") and [f for f in os.listdir(report) if f.startswith("mels_")]
    # stage 13: four probes on the tokens and on each continuous feature set, results in Table 2
    for pexp in (exp, f"{tmp}/exp/features_mel12.5", f"{tmp}/exp/features_mel50"):
        s = json.load(open(f"{pexp}/probes/summary.json"))
        for key in ("er_accuracy", "ks_accuracy", "sv_eer", "sv_min_dcf", "asr_wer", "asr_wer_beam"):
            assert s[key] is not None, (pexp, key)
        assert 0 <= s["er_accuracy"] <= 100 and 0 <= s["sv_eer"] <= 100
        assert read_trials(f"{pexp}/probes/sv/trials") == read_trials(f"{tmp}/data/test_unseen/trials")
    s = json.load(open(f"{exp}/probes/summary.json"))
    assert s["ctc_asr_wer"] is not None and s["ctc_asr_wer_beam"] is not None and s["kbps"] == 0.075
    fit = json.load(open(f"{exp}/probes/asr/results.json"))["target_fit"]  # every target checked against its input
    assert fit["test"]["of"] == len(read_table(f"{tmp}/dump/test/text")) and "targets_too_long" in fit["train"]
    t2 = pd.read_csv(f"{report}/table2_understanding.csv").set_index("experiment")
    assert {"tokenizer_tiny", "features_mel12.5", "features_mel50"} <= set(t2.index)
    assert t2[["ER", "SV", "KS", "ASR probe (BiLSTM)"]].notna().all().all()
    records = json.load(open(f"{tmp}/exp/probes_tiny.json"))  # what stage 13 probed, read by stage 14
    assert [(r["name"], r["features"]) for r in records] == [
        ("tokenizer_tiny", "tokens"),
        ("features_mel12.5", "mel12.5"),
        ("features_mel50", "mel50"),
    ]
    assert all(r["results"]["er_accuracy"] is not None for r in records)

    # the ablation script on two variants (+ R + D), sharing the prepared data
    abl = subprocess.run(
        [
            "bash",
            ABLATIONS,
            "--stage",
            "2",
            "--ablations",
            "base R",
            "--tokenizer_config",
            "tiny",
            "--ablation_args",
            "--number_of_epochs 1 --batch_seconds 8",
            "--rd_args",
            "--number_of_epochs 1 --batch_seconds 8 --max_train_minutes 0",
            "--eval_steps",
            "1",
            "--report_dir",
            f"{tmp}/exp/report_ablations",
            "--python",
            sys.executable,
            "--run_args",
            f"--corpus_dir {tmp}/corpus --datadir {tmp}/data --dumpdir {tmp}/dump "
            f"--expdir {tmp}/exp --vocab_size 64 --progress false --evaluate_utts 3",
        ],
        capture_output=True,
        text=True,
    )
    assert abl.returncode == 0, abl.stdout[-3000:] + abl.stderr[-3000:]
    t5 = pd.read_csv(f"{tmp}/exp/report_ablations/table5_ablations.csv").set_index("experiment")
    assert list(t5["Loss"]) == ["D", "R", "R + D"] and t5["WER"].notna().all()
    assert t5.loc["refine_abl_R_diffusion", "paper WER"] == 5.73

    # the shortcut comparison script: re-parameterised base, shortcut + control, scored (tiny is a
    # velocity model, so the test re-parameterises it the other way)
    one = "--number_of_epochs 1 --batch_seconds 8 --max_train_minutes 0"
    sc_args = [
        "--base_model",
        f"{exp}/model",
        "--codes_dir",
        f"{exp}/codes",
        "--tag",
        "tiny",
        "--overrides",
        "{prediction: x, x_skip: False}",
        "--base_args",
        one,
        "--ft_args",
        one,
        "--eval_steps",
        "1 2",
        "--eval_wer_steps",
        "1",
        "--eval_args",
        "--max-utts 3",
        "--eval_temperatures",
        "0 1",
        "--lang_dir",
        f"{tmp}/data/lang_char",
        "--expdir",
        f"{tmp}/exp",
        "--dumpdir",
        f"{tmp}/dump",
        "--python",
        sys.executable,
    ]
    sc = subprocess.run(["bash", SHORTCUT, *sc_args], capture_output=True, text=True)
    assert sc.returncode == 0, sc.stdout[-3000:] + sc.stderr[-3000:]
    res = pd.read_csv(f"{tmp}/exp/refine_eval_tiny_velocity/test/results.csv")
    assert set(res["model"]) >= {"base", "velocity", "velocity_ft", "velocity_shortcut"}
    assert json.load(open(f"{tmp}/exp/refine_tiny_velocity/model/config.json"))["model"]["prediction"] == "x"
    assert res[(res.model == "velocity_shortcut") & (res.steps == 1)]["wer"].notna().all()  # temperatures 0 and 1
    assert sorted(set(res[res.model != "ground truth"]["temperature"])) == [0.0, 1.0] and res["fmd"].notna().all()
    dev = pd.read_csv(f"{tmp}/exp/refine_eval_tiny_velocity/dev/results.csv")  # the temperature is selected on dev
    assert len(dev) == 4 * 2 * 2 and dev["wer"].isna().all() and "(selected on " in sc.stdout + sc.stderr
    cmp = subprocess.run(
        [
            sys.executable,
            "-m",
            "sitok.cli",
            "compare-refine",
            f"{tmp}/exp/refine_eval_tiny_velocity/test",
            "velocity_shortcut@0",
            "base@1",
            "velocity_ft@0",
            "--steps",
            "1",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    assert cmp.returncode == 0, cmp.stderr
    assert len([ln for ln in cmp.stdout.splitlines() if ln.startswith("| velocity_shortcut@0 |")]) == 4
    sc = subprocess.run(["bash", SHORTCUT, *sc_args], capture_output=True, text=True)  # a re-run does nothing
    assert sc.returncode == 0 and sc.stdout.count("already exported, skipping") == 3
    assert sc.stdout.count("already done, skipping") == 2
    # --overrides "": the pair fine-tunes the base model itself
    sc = subprocess.run(
        ["bash", SHORTCUT, *sc_args, "--name", "x", "--overrides", "", "--eval_temperatures", "1"],
        capture_output=True,
        text=True,
    )
    assert sc.returncode == 0, sc.stdout[-3000:] + sc.stderr[-3000:]
    assert "no --overrides: stage 2 fine-tunes" in sc.stdout and not os.path.exists(f"{tmp}/exp/refine_tiny_x")
    res = pd.read_csv(f"{tmp}/exp/refine_eval_tiny_x/test/results.csv")
    assert set(res["model"]) == {"ground truth", "base", "x_ft", "x_shortcut"}
    assert (
        json.load(open(f"{tmp}/exp/refine_tiny_x_shortcut/model/config.json"))["refine"]["init_model"] == f"{exp}/model"
    )

    # the vocoder of stage 10 is now the model's own: stage 5 resynthesises through it, its codes stay
    r = run(tmp, "--stage", "5", "--stop_stage", "5")
    log = r.stdout + r.stderr
    assert log.count("already done, skipping") == len(sets) + 1  # codes of every set, the decoding setting
    assert "_groundtruth: redoing, model changed" in log and f"_temp{dec_temp}: redoing, model changed" in log

    before = snapshot(tmp)
    r = run(tmp, "--stage", "0", "--stop_stage", "13", *REFINE, *PROBES)
    log = r.stdout + r.stderr
    assert "already synthesised" in log and log.count("already done, skipping") >= 1 + len(sets) + 1 + len(sets)
    assert (
        log.count("already exported from the same inputs, skipping") == 1 + 4 + 1
    )  # tokenizer, 4 refinements, vocoder
    assert "is up to date" in log and "refine_eval_tiny/test already done" in log
    assert "Stage 12: refine_tiny_light_head on test" in log and "redoing" not in log
    assert log.count("probe on features_mel50 (mel50): ") == 4
    assert len(re.findall(r"probe on \S+ \(\S+\): \S+ already done, skipping", log)) == 12
    assert snapshot(tmp) == before  # nothing rewritten

    # changed inputs: a trained model is not thrown away, the recipe stops and names the change
    r = run(
        tmp,
        "--stage",
        "4",
        "--stop_stage",
        "4",
        "--tokenizer_args",
        "--number_of_epochs 2 --batch_seconds 8",
        check=False,
    )
    assert r.returncode != 0 and "tokenizer_args" in r.stdout + r.stderr
    assert "was trained from other inputs or options" in r.stdout + r.stderr
    # a retrained tokenizer (another model.pt): its codes are made again
    os.replace(f"{tmp}/exp/refine_tiny_decoder_ft/model/model.pt", f"{exp}/model/model.pt")
    r = run(tmp, "--stage", "5", "--stop_stage", "5")
    assert (r.stdout + r.stderr).count(": redoing, model changed") >= len(sets)


def test_help_and_unknown_option():
    r = subprocess.run(["bash", RUN, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--stop_stage" in r.stdout and "vocabulary" in r.stdout
    r = subprocess.run(["bash", RUN, "--no_such_option", "1"], capture_output=True, text=True)
    assert r.returncode != 0 and "unknown option --no_such_option" in r.stderr
