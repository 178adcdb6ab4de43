"""Judges on known pairs, WER normalisation, compression arithmetic, and the report's tables
built from fixture evaluation summaries."""

import json
import os
import subprocess

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from sitok.eval.judges import DEFAULTS, build_judge, parse_judges
from sitok.models import SiTokConfig

SENTENCES = [
    "the birch canoe slid on the smooth planks",
    "glue the sheet to the dark blue background",
    "it is easy to tell the depth of a well",
    "these days a chicken leg is a rare dish",
]
needs_flite = pytest.mark.tools("flite")


def flite(tmp_path, voice, text=SENTENCES[0]):
    path = str(tmp_path / f"{voice}.wav")
    subprocess.run(["flite", "-voice", voice, "-t", text, "-o", path], check=True)
    wav, sr = sf.read(path, dtype="float32")
    return wav, sr


# ---- judges ------------------------------------------------------------------------------------
@needs_flite
def test_asr_judge_reads_clean_speech_exactly_with_the_in_domain_lm(tmp_path):
    from sitok.eval.asr import word_error_rate
    from sitok.eval.ngram import write_bigram_arpa

    lm = str(tmp_path / "lm.arpa")
    write_bigram_arpa(SENTENCES, lm)
    judge = build_judge("asr", lm=lm)
    wav, sr = flite(tmp_path, "slt")
    hyp = judge.score(wav, wav, sr)["hyp"]
    assert word_error_rate([SENTENCES[0]], [hyp]) == 0.0
    assert judge.info()["judge"] == "pocketsphinx" and judge.info()["version"][0].isdigit()
    with pytest.raises(FileNotFoundError, match="language model"):
        build_judge("asr", lm=str(tmp_path / "missing.arpa"))


@needs_flite
def test_speaker_similarity_identical_vs_another_speaker(tmp_path):
    import torch

    from sitok.data.audio import resample

    judge = build_judge("sim")
    a, sr = flite(tmp_path, "slt")
    b, sr_b = flite(tmp_path, "kal")
    b = resample(torch.from_numpy(b), sr_b, sr).numpy()
    same = judge.score(a, a, sr)["sim"]
    other = judge.score(a, b, sr)["sim"]
    assert same > 0.99
    assert other < same - 0.2  # a different voice scores clearly lower
    # a mildly degraded copy of the same voice stays closer than the other speaker
    noisy = a + 0.005 * np.random.default_rng(0).standard_normal(a.shape).astype(np.float32)
    assert judge.score(a, noisy, sr)["sim"] > other


@needs_flite
def test_white_noise_gets_a_low_dnsmos_and_clean_speech_a_higher_one(tmp_path):
    judge = build_judge("mos")
    wav, sr = flite(tmp_path, "slt")
    noise = 0.3 * np.random.default_rng(0).standard_normal(wav.shape).astype(np.float32)
    clean, bad = judge.score(None, wav, sr), judge.score(None, noise, sr)
    assert set(clean) == {"dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808"}
    assert bad["dnsmos_ovrl"] < 1.6 and bad["dnsmos_bak"] < 2.0
    assert clean["dnsmos_ovrl"] > bad["dnsmos_ovrl"] + 0.5


@needs_flite
def test_signal_judges_on_identical_and_degraded_audio(tmp_path):
    wav, sr = flite(tmp_path, "slt")
    pesq, stoi = build_judge("pesq"), build_judge("stoi")
    assert pesq.score(wav, wav, sr)["pesq"] > 4.4 and stoi.score(wav, wav, sr)["stoi"] > 0.99
    noisy = wav + 0.05 * np.random.default_rng(0).standard_normal(wav.shape).astype(np.float32)
    assert pesq.score(wav, noisy, sr)["pesq"] < 2.5 and stoi.score(wav, noisy, sr)["stoi"] < 0.95


def test_judge_registry_defaults_and_optional_backends_without_weights(tmp_path):
    assert DEFAULTS == {"asr": "pocketsphinx", "sim": "resemblyzer", "mos": "dnsmos", "pesq": "pesq", "stoi": "stoi"}
    assert parse_judges(["asr=whisper", "mos=none"]) == {
        "asr": "whisper",
        "sim": "resemblyzer",
        "pesq": "pesq",
        "stoi": "stoi",
    }
    with pytest.raises(ValueError, match="unknown asr judge"):
        parse_judges(["asr=kaldi"])
    with pytest.raises(ValueError, match="KIND=BACKEND"):
        parse_judges(["whisper"])
    # optional backends never download: a missing local model is a clear error naming the option
    for kind, backend, opt in [
        ("asr", "whisper", "asr.model"),
        ("sim", "wavlm", "sim.model"),
        ("mos", "utmos", "mos.model"),
    ]:
        with pytest.raises(FileNotFoundError, match=opt):
            build_judge(kind, backend, model=str(tmp_path / "absent"))


def test_utmos_backend_runs_a_local_torchscript_model(tmp_path):
    import torch

    class Fake(torch.nn.Module):  # stands in for a TorchScript UTMOS export: (wave [B, T], sr) -> [B]
        def forward(self, wave: torch.Tensor, sr: int) -> torch.Tensor:
            return 1.0 + wave.abs().mean(dim=1) * 0 + float(sr) / 16000.0

    path = str(tmp_path / "utmos.pt")
    torch.jit.script(Fake()).save(path)
    judge = build_judge("mos", "utmos", model=path)
    assert judge.score(None, np.zeros(24000, np.float32), 24000) == {"utmos": 2.0}  # resampled to 16 kHz first


# ---- text normalisation and compression ----------------------------------------------------------
def test_wer_uses_the_training_text_normalisation():
    from sitok.data import text
    from sitok.eval import asr
    from sitok.eval.asr import word_error_rate

    assert asr.normalize_text is text.normalize_text  # one function for CTC targets and the judges
    assert word_error_rate(["Hello, World!  It's 3 o'clock."], [text.normalize_text("hello world it's 3 o'clock")]) == 0
    assert word_error_rate(["a b c d"], ["a x c"]) == 0.5


def test_bit_rate_arithmetic():
    paper = SiTokConfig(codebook_size=65536, num_codebooks=1)
    assert paper.token_rate == 12.5 and paper.bits_per_second == 200.0  # 12.5 Hz x 16 bit
    cn4 = SiTokConfig(codebook_size=2**14, num_codebooks=4, quantizer="rvq")
    assert cn4.bits_per_second == 700.0  # 12.5 Hz x 4 x 14 bit
    assert SiTokConfig(codebook_size=1024, stack=8).bits_per_second == 62.5  # 6.25 Hz x 10 bit


def test_code_statistics_usage_and_perplexity():
    import torch

    from sitok.eval.metrics import code_statistics

    uniform = {"a": torch.arange(8).view(1, 8), "b": torch.arange(8).view(1, 8)}
    s = code_statistics(uniform, 1, 16)
    assert s["codebook_usage"] == pytest.approx(0.5) and s["code_perplexity"] == pytest.approx(8.0)


# ---- the report --------------------------------------------------------------------------------
def _summary(name, wer, config=None, refine=None, steps=(1,), cfg=(1.0,), ctc=80.0, gt=False):
    cfg_d = SiTokConfig(codebook_size=1024, **(config or {})).to_dict()
    c = SiTokConfig.from_dict(cfg_d)
    settings = []
    if gt:
        settings.append(
            {
                "setting": "groundtruth_griffin_lim",
                "model": "ground truth",
                "source": "groundtruth",
                "steps": 0,
                "cfg_scale": 1.0,
                "vocoder": "griffin_lim",
                "wer": 5.0,
                "sim": 0.93,
                "dnsmos_ovrl": 2.4,
                "pesq": 2.2,
                "stoi": 0.94,
                "mel_l1": 0.0,
            }
        )
    for s in steps:
        for w in cfg:
            settings.append(
                {
                    "setting": f"{name}_griffin_lim_steps{s}_cfg{w:g}",
                    "model": name,
                    "source": "model",
                    "steps": s,
                    "cfg_scale": w,
                    "vocoder": "griffin_lim",
                    "wer": wer + s + (w - 1),
                    "sim": 0.6,
                    "dnsmos_ovrl": 1.5,
                    "pesq": 1.1,
                    "stoi": 0.6,
                    "mel_l1": 0.25,
                    "decoder_rtf": 0.01 * s,
                }
            )
    return {
        "format": "sitok-eval-2",
        "set": "test",
        "utterances": 233,
        "dump_dir": "/nonexistent/dump/test",
        "judges": {"asr": {"judge": "pocketsphinx", "version": "5.1.1"}},
        "models": {
            name: {
                "name": name,
                "model_dir": f"/x/{name}/model",
                "config": cfg_d,
                "refine": refine,
                "parameters": 11.8e6,
                "fps": c.token_rate,
                "tps": c.token_rate * c.num_codebooks,
                "num_codebooks": c.num_codebooks,
                "codebook_size": c.codebook_size,
                "bits_per_second": c.bits_per_second,
                "codebook_usage": 0.9,
                "code_perplexity": 700.0,
                "ctc_asr_wer": ctc if c.ctc_weight > 0 else None,
            }
        },
        "settings": settings,
    }


def write_fixtures(root):
    fixtures = [  # one model per summary, as sitok evaluate writes them
        _summary("tokenizer_abl_base", 70.0, gt=True, steps=(1, 2, 4)),
        _summary("tokenizer_abl_ctc0", 90.0, {"ctc_weight": 0.0}),
        _summary("tokenizer_abl_R", 75.0, {"decoder": "regression"}, steps=(0,)),
        _summary("refine_abl_R_diffusion", 78.0, refine={"kind": "diffusion"}),
        _summary("tokenizer_abl_cn4", 60.0, {"num_codebooks": 4, "quantizer": "rvq"}),
        _summary("tokenizer_abl_fsq", 72.0, {"quantizer": "fsq", "codebook_dim": 10}),
        _summary("tokenizer_abl_light", 71.0, {"light_head_layers": 1}),
        _summary("refine_mini_token_cfg", 65.0, {"token_cfg": True}, cfg=(1.0, 1.25)),
        _summary("refine_mini_shortcut", 69.0, {"shortcut": True}, steps=(1, 2, 4)),
    ]
    dirs = []
    for s in fixtures:
        d = os.path.join(root, next(iter(s["models"])))
        os.makedirs(os.path.join(d, "eval", "test"))
        with open(os.path.join(d, "eval", "test", "summary.json"), "w") as fh:
            json.dump(s, fh)
        dirs.append(d)
    return dirs


def test_report_tables_from_fixture_summaries(tmp_path):
    from sitok.report.build import write_report

    dirs = write_fixtures(str(tmp_path / "exp"))
    out = str(tmp_path / "report")
    built = write_report(dirs, out, set_name="test")
    for stem in (
        "table1_reconstruction",
        "table2_understanding",
        "table3_ctc",
        "table5_ablations",
        "table6_light_head",
        "table9_vq_fsq",
    ):
        assert os.path.exists(f"{out}/{stem}.md") and os.path.exists(f"{out}/{stem}.csv")
        assert list(pd.read_csv(f"{out}/{stem}.csv").columns) == list(built[stem].columns)
    t1 = built["table1_reconstruction"]
    assert list(t1.columns[:10]) == [
        "model",
        "experiment",
        "FPS/TPS",
        "CN",
        "BR (kbps)",
        "WER",
        "SIM",
        "MOS",
        "PESQ",
        "STOI",
    ]
    assert t1.iloc[0]["model"] == "Ground Truth (griffin_lim)" and t1.iloc[0]["paper WER"] == 2.14
    assert t1.iloc[1]["model"] == "SiTok (CN = 1)" and t1.iloc[1]["experiment"] == "tokenizer_abl_base"
    cn4 = t1[t1["experiment"] == "tokenizer_abl_cn4"].iloc[0]
    assert (cn4["FPS/TPS"], cn4["BR (kbps)"], cn4["paper WER"]) == ("12.5/50", 0.5, 2.80)  # 4 x 10 bit x 12.5 Hz
    cfg = t1[t1["experiment"] == "refine_mini_token_cfg"].iloc[0]
    assert cfg["model"] == "+ Token CFG (w = 1.25)" and cfg["WER"] == 65.0 + 1 + 0.25 and cfg["paper WER"] == 3.34
    assert pd.isna(t1[t1["experiment"] == "tokenizer_abl_ctc0"].iloc[0]["paper WER"])  # no Table 1 row for it
    assert {"CTC ASR", "LLM ASR", "ER", "SV", "KS", "paper LLM ASR", "paper KS"} <= set(
        built["table2_understanding"].columns
    )
    # Table 3: regularised rows first, the unregularised one beside the paper's 33.0
    t3 = built["table3_ctc"]
    no = t3[t3["CTC Reg."] == "No"].iloc[0]
    assert no["experiment"] == "tokenizer_abl_ctc0" and no["paper WER"] == 33.0 and pd.isna(no["CTC ASR"])
    # Table 5: D, R, R + D and CN rows with their paper rows
    t5 = built["table5_ablations"].set_index("experiment")
    assert t5.loc["tokenizer_abl_R", "Loss"] == "R" and t5.loc["tokenizer_abl_R", "paper WER"] == 4.66
    assert t5.loc["refine_abl_R_diffusion", "Loss"] == "R + D" and t5.loc["refine_abl_R_diffusion", "paper WER"] == 5.73
    assert t5.loc["tokenizer_abl_cn4", "paper CS"] == 2**14 and t5.loc["tokenizer_abl_ctc0", "paper WER"] == 33.0
    assert t5.loc["tokenizer_abl_base", "WER"] == 71.0  # the fewest steps scored (1), not the best
    assert "tokenizer_abl_fsq" not in t5.index and "tokenizer_abl_light" not in t5.index
    # Table 6 and 9 pair each variant with the model that differs only there
    t6 = built["table6_light_head"]
    assert list(t6["experiment"]) == ["tokenizer_abl_base", "tokenizer_abl_light"]
    assert list(t6["paper WER"]) == [4.06, 3.97]
    t9 = built["table9_vq_fsq"]
    assert list(t9["experiment"]) == ["tokenizer_abl_base", "tokenizer_abl_fsq"] and list(t9["paper WER"]) == [
        4.06,
        5.23,
    ]
    # markdown layout and the figure
    md = open(f"{out}/table5_ablations.md").read().splitlines()
    assert md[0].startswith("| experiment | Loss | CTC W. | CS | CN | CD | Tok. CFG | FPS | WER | SIM | MOS |")
    assert md[1].count("---") == len(built["table5_ablations"].columns)
    assert os.path.getsize(f"{out}/fig2_steps.png") > 1000
    report = open(f"{out}/report.md").read()
    assert "paper" in report and "not the same measurement" in report


def test_report_chooses_the_setting_it_is_told(tmp_path):
    from sitok.report.build import write_report

    dirs = write_fixtures(str(tmp_path / "exp"))
    built = write_report(dirs, str(tmp_path / "r4"), set_name="test", steps=4)
    t5 = built["table5_ablations"].set_index("experiment")
    assert t5.loc["tokenizer_abl_base", "WER"] == 74.0  # steps 4
    assert t5.loc["tokenizer_abl_ctc0", "WER"] == 91.0  # scored at 1 step only: falls back to it
    with pytest.raises(FileNotFoundError, match="evaluate stage"):
        write_report([str(tmp_path / "nothing")], str(tmp_path / "r5"))


def test_report_reads_one_view_per_model_of_a_summary(tmp_path):
    from sitok.report.tables import load_summary

    a, b = _summary("m1", 70.0, gt=True), _summary("m2", 80.0)
    both = {**a, "models": {**a["models"], **b["models"]}, "settings": a["settings"] + b["settings"]}
    (tmp_path / "summary.json").write_text(json.dumps(both))
    views = load_summary(str(tmp_path / "summary.json"))
    assert [v["model"]["name"] for v in views] == ["m1", "m2"]
    assert {r["model"] for r in views[1]["settings"]} == {"m2", "ground truth"}  # its rows and the reference rows
    (tmp_path / "summary.json").write_text(json.dumps({**both, "format": "sitok-eval-1"}))
    with pytest.raises(ValueError, match="not a sitok evaluation summary"):
        load_summary(str(tmp_path / "summary.json"))


def test_ctc_greedy_merges_repeats_and_drops_blank_id_zero():
    from sitok.losses.ctc import ctc_greedy

    assert ctc_greedy([0, 5, 5, 0, 5, 7, 7, 0, 0, 3]) == [5, 5, 7, 3]  # SentencePiece ids as trained (no offset)
    assert ctc_greedy([0, 0]) == [] and ctc_greedy([]) == []


def test_report_table2_merges_probe_results_and_continuous_baselines(tmp_path):
    from sitok.report.build import write_report

    root = str(tmp_path / "exp")
    dirs = write_fixtures(root)[:2]  # tokenizer_abl_base (CTC 0.1), tokenizer_abl_ctc0
    for d, er in zip(dirs, (61.0, 55.0)):
        with open(os.path.join(d, "eval", "test", "summary.json")) as fh:
            s = json.load(fh)
        next(iter(s["models"].values()))["model_dir"] = os.path.join(d, "model")  # the probes sit beside it
        with open(os.path.join(d, "eval", "test", "summary.json"), "w") as fh:
            json.dump(s, fh)
        os.makedirs(os.path.join(d, "probes"))
        with open(os.path.join(d, "probes", "summary.json"), "w") as fh:
            json.dump(
                {
                    "format": "sitok-probes-1",
                    "name": os.path.basename(d),
                    "features": "tokens",
                    "er_accuracy": er,
                    "sv_eer": 20.0,
                    "sv_min_dcf": 0.9,
                    "ks_accuracy": 80.0,
                    "asr_wer": 50.0,
                    "asr_wer_beam": 49.0,
                    "ctc_asr_wer": 80.0,
                    "ctc_asr_wer_beam": 79.5,
                },
                fh,
            )
    mel = os.path.join(root, "features_mel50")
    os.makedirs(os.path.join(mel, "probes"))
    with open(os.path.join(mel, "probes", "summary.json"), "w") as fh:
        json.dump(
            {
                "format": "sitok-probes-1",
                "name": "features_mel50",
                "features": "mel50",
                "fps": 50.0,
                "tps": None,
                "cn": None,
                "cs": None,
                "kbps": None,
                "er_accuracy": 90.0,
                "sv_eer": 5.0,
                "ks_accuracy": 95.0,
                "asr_wer": 30.0,
                "ctc_asr_wer": None,
            },
            fh,
        )
    for d, wer in ((dirs[0], 40.0), (mel, 25.0)):  # LLM-ASR (stage 15) on the tokens and on mel
        os.makedirs(os.path.join(d, "llm_asr"))
        with open(os.path.join(d, "llm_asr", "results.json"), "w") as fh:
            json.dump({"task": "llm_asr", "wer": wer}, fh)
    t2 = write_report(dirs + [mel], str(tmp_path / "r"), set_name="test")["table2_understanding"].set_index(
        "experiment"
    )
    assert list(t2.index) == ["tokenizer_abl_base", "tokenizer_abl_ctc0", "features_mel50"]
    base, ctc0, cont = t2.loc["tokenizer_abl_base"], t2.loc["tokenizer_abl_ctc0"], t2.loc["features_mel50"]
    probe = (base["ASR probe (BiLSTM)"], base["ASR probe (beam)"])
    assert (base["ER"], base["SV"], base["KS"], *probe) == (61.0, 20.0, 80.0, 50.0, 49.0)
    assert (base["CTC Reg."], base["CTC ASR (beam)"], base["paper ER"]) == ("Yes (0.1)", 79.5, 63.5)
    assert (base["LLM ASR"], base["paper LLM ASR"], cont["LLM ASR"]) == (40.0, 4.95, 25.0) and pd.isna(ctc0["LLM ASR"])
    assert ctc0["CTC Reg."] == "No" and pd.isna(ctc0["CTC ASR"]) and pd.isna(ctc0["CTC ASR (beam)"])
    assert ctc0["ER"] == 55.0 and pd.isna(ctc0["paper ER"])
    assert cont["model"] == "Mel (continuous, 50 Hz)" and cont["CN/CS"] == "-" and cont["FPS/TPS"] == "50/-"
    assert (cont["ER"], cont["SV"], cont["KS"], cont["ASR probe (BiLSTM)"]) == (90.0, 5.0, 95.0, 30.0)
    assert pd.isna(cont["paper ER"])


def test_report_from_probe_summaries_alone(tmp_path):
    """Stage 13 without stage 12: the report is Table 2 alone; a token row's CTC label comes
    from the CTC weight that the probe summary recorded."""
    from sitok.report.build import write_report

    tok = tmp_path / "tokenizer_x"
    (tok / "probes").mkdir(parents=True)
    (tok / "probes" / "summary.json").write_text(
        json.dumps(
            {
                "format": "sitok-probes-1",
                "name": "tokenizer_x",
                "features": "tokens",
                "model_dir": str(tok / "model"),
                "fps": 12.5,
                "tps": 12.5,
                "cn": 1,
                "cs": 1024,
                "kbps": 0.125,
                "ctc_weight": 0.1,
                "er_accuracy": 70.0,
                "sv_eer": 12.0,
                "ks_accuracy": 75.0,
                "asr_wer": 60.0,
                "ctc_asr_wer": 85.0,
            }
        )
    )
    built = write_report([str(tok)], str(tmp_path / "r"))
    assert list(built) == ["table2_understanding"]
    row = built["table2_understanding"].set_index("experiment").loc["tokenizer_x"]
    got = (row["CTC Reg."], row["ER"], row["SV"], row["KS"], row["ASR probe (BiLSTM)"], row["CTC ASR"])
    assert got == ("Yes (0.1)", 70.0, 12.0, 75.0, 60.0, 85.0)
    report = (tmp_path / "r" / "report.md").read_text()
    assert "## Table 2: understanding" in report and "Table 1" not in report
    assert (tmp_path / "r" / "table2_understanding.csv").exists()


def _tts_row(prompting, steps, wer, sim, dnsmos, lm_rtf):
    """One row of ``<exp>/tts/results.json`` as stage 16 writes it."""
    return {
        "prompting": prompting,
        "setting": f"{prompting}_vocos_steps{steps}_cfg1",
        "steps": steps,
        "wer": wer,
        "sim": sim,
        "dnsmos_ovrl": dnsmos,
        "lm_rtf": lm_rtf,
        "decoder_rtf": 0.01 * steps,
        "vocoder_rtf": 0.02,
    }


def test_report_table7_ar_tts_with_listening_examples(tmp_path):
    from sitok.report.build import write_report
    from sitok.report.tables import read_tts, tts_system

    exp = write_fixtures(str(tmp_path / "exp"))[0]  # tokenizer_abl_base, 12.5/12.5
    with open(os.path.join(exp, "eval", "test", "summary.json")) as fh:
        s = json.load(fh)
    next(iter(s["models"].values()))["model_dir"] = os.path.join(exp, "model")  # tts/ sits beside it
    with open(os.path.join(exp, "eval", "test", "summary.json"), "w") as fh:
        json.dump(s, fh)
    rows = [  # written out of order: the table sorts by prompting, then steps
        _tts_row("resynthesis", 16, 12.0, None, None, 0.0),
        _tts_row("same", 16, 20.5, 0.71, 2.9, 0.31),
        _tts_row("unseen", 1, 30.0, 0.55, 2.7, 0.33),
        _tts_row("same", 1, 23.4, 0.70, 2.8, 0.31),
    ]
    results = {
        "task": "tts",
        "backbone": "smollm2",
        "pretrained": True,
        "lm_layers": 30,
        "lora_rank": 0,
        "counts": {"train": {"kept": 900}},
        "parameters": 134000000,
        "epochs": 5,
        "steps": 900,
        "train_minutes": 55.1,
        "utterances": 100,
        "sampling": {"temperature": 0.8, "top_k": 50},
        "eval_steps": [1, 16],
        "rows": rows,
        "eval_minutes": 6.0,
        "wall_seconds": 4000,
    }
    ex = os.path.join(exp, "tts", "examples", "same")
    os.makedirs(ex)
    with open(os.path.join(exp, "tts", "results.json"), "w") as fh:
        json.dump(results, fh)
    t = np.arange(8000) / 16000  # 0.5 s at 16 kHz
    sf.write(os.path.join(ex, "utt1.wav"), 0.3 * np.sin(2 * np.pi * 440 * t), 16000)
    sf.write(os.path.join(ex, "utt1.prompt.wav"), 0.3 * np.sin(2 * np.pi * 880 * t), 16000)
    with open(os.path.join(ex, "examples.tsv"), "w") as fh:
        fh.write("utt1\tutt7\tthe birch canoe\n")

    out = str(tmp_path / "r")
    for _ in range(2):  # a second run rebuilds the same files in place
        t7 = write_report([exp], out, set_name="test")["table7_tts"]
    ours = t7[t7["experiment"] == "tokenizer_abl_base"]
    assert set(ours["System"]) == {"SiTok-AR-TTS (ours, smollm2, 30 layers)"}
    guided = {**results, "pretrained": False, "lm_layers": 6, "sampling": {"temperature": 0, "cfg_scale": 2.5}}
    assert tts_system(guided) == "SiTok-AR-TTS (ours, smollm2, random init, 6 layers, text guidance 2.5)"
    ranked = {**guided, "sampling": {"temperature": 0}, "candidates": 16}
    assert tts_system(ranked) == "SiTok-AR-TTS (ours, smollm2, random init, 6 layers, best of 16 by CTC)"
    assert list(ours["Prompt"]) == ["same speaker", "same speaker", "held-out speaker", "— (reconstruction)"]
    assert list(ours["Decoder steps"]) == [1, 16, 1, 16]
    assert list(ours["WER"]) == [23.4, 20.5, 30.0, 12.0] and list(ours["SIM"][:3]) == [0.70, 0.71, 0.55]
    assert ours["FPS/TPS"].iloc[0] == "12.5/12.5" and ours["Params (M)"].iloc[0] == 134.0
    assert ours["RTF"].iloc[1] == pytest.approx(0.31 + 0.16 + 0.02) and ours["LM RTF"].iloc[1] == 0.31
    recon = ours.iloc[3]
    assert pd.isna(recon["SIM"]) and pd.isna(recon["DNSMOS"]) and recon["RTF"] == pytest.approx(0.18)
    theirs = t7[t7["experiment"] == "paper"].set_index("System")
    assert list(theirs.index) == [
        "CosyVoice 2 (Du et al., 2024b)",
        "SparkTTS (Wang et al., 2025a)",
        "Llasa (Ye et al., 2025b)",
        "SiTok-AR-TTS",
    ]
    sitok = theirs.loc["SiTok-AR-TTS"]
    assert (sitok["WER"], sitok["SIM"], sitok["RTF"], sitok["Decoder steps"]) == (2.46, 0.64, 0.234, 16)
    cosy = theirs.loc["CosyVoice 2 (Du et al., 2024b)"]
    assert (cosy["FPS/TPS"], cosy["WER"], cosy["SIM"], cosy["RTF"]) == ("25/25", 2.89, 0.66, 0.455)
    assert pd.isna(cosy["DNSMOS"]) and pd.isna(cosy["Params (M)"]) and cosy["Decoder steps"] is None
    md = open(f"{out}/table7_tts.md").read()
    assert md.startswith("| System | experiment | Prompt |") and "| 2.46 | 0.640 | — | 0.234 | — |" in md
    assert list(pd.read_csv(f"{out}/table7_tts.csv").columns) == list(t7.columns)
    got = sorted(os.listdir(f"{out}/tts_examples/same"))
    assert got == ["examples.tsv", "utt1.png", "utt1.prompt.wav", "utt1.wav"]
    assert os.path.getsize(f"{out}/tts_examples/same/utt1.png") > 1000
    assert not os.path.exists(f"{out}/tts_examples.tmp")
    report = open(f"{out}/report.md").read()
    assert "## Table 7: zero-shot AR-TTS" in report and "pocketsphinx" in report
    assert "(tts_examples/same/utt1.wav)" in report and "![utt1](tts_examples/same/utt1.png)" in report

    with open(os.path.join(exp, "tts", "results.json"), "w") as fh:
        json.dump({**results, "task": "llm_asr"}, fh)
    with pytest.raises(ValueError, match="tts/results.json: not an AR-TTS result"):
        read_tts(exp)
    with pytest.raises(ValueError, match="tts/results.json"):
        write_report([exp], out, set_name="test")


# ---- the evaluation engine ---------------------------------------------------------------------
ENGINE_TEXTS = ["hello world", "the cat sat", "a dog ran far", "blue sky today", "one two three"]


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory):
    """A five-utterance dump (tones of several lengths, two speakers) and an untrained tiny model."""
    from sitok.data.entries import Entry
    from sitok.data.features import compute_features
    from sitok.data.prep import make_data_dir

    from conftest import tone, write, write_model_dir

    root = tmp_path_factory.mktemp("engine")
    entries = []
    for i, text in enumerate(ENGINE_TEXTS):
        path = write(str(root / "wav" / f"u{i}.wav"), tone(0.6 + 0.15 * i, freq=150 + 20 * i))
        entries.append(Entry(f"s{i % 2}-u{i}", f"s{i % 2}", path, text))
    make_data_dir(entries, str(root / "data"))
    compute_features(str(root / "data"), str(root / "dump"), progress=False)
    return str(root / "dump"), write_model_dir(str(root / "exp" / "model"))


class FakeASR:
    """Stands in for an ASR judge: one fixed transcript, so the WER is known."""

    kind, name, sample_rate, needs_reference = "asr", "fake", 16000, False

    def info(self):
        return {"kind": self.kind, "judge": self.name, "version": "1", "sample_rate": self.sample_rate}

    def score(self, ref, hyp, sr, text=None):
        return {"hyp": "the cat"}


class FakeSim(FakeASR):
    """A judge with a reference: the hypothesis' length over the reference's (1 for the recordings)."""

    kind, name, needs_reference = "sim", "fake", True

    def score(self, ref, hyp, sr, text=None):
        return {"sim": len(hyp) / len(ref)}


def fake_judges(monkeypatch):
    from sitok.eval import judges

    monkeypatch.setitem(judges.BACKENDS["asr"], "fake", FakeASR)
    monkeypatch.setitem(judges.BACKENDS["sim"], "fake", FakeSim)
    return {"asr": "fake", "sim": "fake"}


def test_engine_scores_the_grid_as_the_tokenizer_decodes_and_caches_each_setting(eval_set, tmp_path, monkeypatch):
    import torch

    from sitok.data.kaldi import read_mat, read_scp
    from sitok.eval.asr import word_error_rate
    from sitok.eval.engine import evaluate, example_utts
    from sitok.infer import Tokenizer

    dump, model_dir = eval_set
    out = str(tmp_path / "eval")
    run = dict(steps=[1, 2], temperatures=[1.0, 0.0], judges=fake_judges(monkeypatch), original=True, progress=False)
    s = evaluate(model_dir, dump, out, max_utts=4, name="m", **run)
    assert s == json.load(open(f"{out}/summary.json")) and s["format"] == "sitok-eval-2"
    keys = [r["setting"] for r in s["settings"]]
    assert keys == ["original", "groundtruth_griffin_lim"] + [
        f"m_griffin_lim_steps{n}_cfg1{t}" for n in (1, 2) for t in ("", "_temp0")
    ]
    utts = sorted(read_scp(f"{dump}/feats.scp"))
    assert s["utterances"] == 4 and s["models"]["m"]["num_codebooks"] == 1 and 0 < s["models"]["m"]["codebook_usage"]
    per_utt = pd.read_csv(f"{out}/per_utt.csv", dtype={"utt": str})
    chosen = sorted(set(per_utt["utt"]))
    assert chosen == [utts[i] for i in (0, 1, 3, 4)]  # --max-utts: evenly spaced over the sorted set
    assert len(per_utt) == len(keys) * 4
    # every figure from the public Tokenizer, one utterance at a time
    tok = Tokenizer.from_pretrained(model_dir)
    rows = {r["setting"]: r for r in s["settings"]}
    for steps, tau, suffix in ((1, 1.0, ""), (2, 0.0, "_temp0")):
        l1, frames = [], []
        for u in chosen:
            ref = torch.from_numpy(read_mat(read_scp(f"{dump}/feats.scp")[u]).copy())
            codes = tok.encode_mels([ref])[0]
            hyp = tok.decode_mel(codes, steps=steps, temperature=tau)[0, : ref.shape[0]]
            hyp_n, ref_n = tok.normalise(hyp), tok.normalise(ref)
            n = min(len(hyp_n), len(ref_n))
            l1.append(float((hyp_n[:n] - ref_n[:n]).abs().mean()))
            frames.append(hyp_n[:n])
        row = rows[f"m_griffin_lim_steps{steps}_cfg1{suffix}"]
        assert row["mel_l1"] == pytest.approx(float(np.mean(l1)), rel=1e-5) and row["fmd"] > 0
        assert row["wer"] == pytest.approx(
            100 * word_error_rate([ENGINE_TEXTS[int(u[-1])] for u in chosen], ["the cat"] * 4)
        )
        assert row["sim"] == pytest.approx(1.0, abs=0.1)  # vocoded to the recording's length (whole hops)
    assert "sim" not in rows["original"]  # the recordings have no reference to compare with
    assert rows["original"]["wer"] == rows["m_griffin_lim_steps1_cfg1"]["wer"]
    assert rows["groundtruth_griffin_lim"]["mel_l1"] == 0.0 and rows["groundtruth_griffin_lim"]["fmd"] == 0.0
    assert list(pd.read_csv(f"{out}/results.csv")["setting"]) == keys
    assert open(f"{out}/results.md").readline().startswith("| model | vocoder | steps | CFG w | temperature | WER %")
    assert sorted(os.listdir(f"{out}/mels/m_griffin_lim_steps1_cfg1")) == [f"{u}.npy" for u in example_utts(chosen, 3)]
    # a re-run decodes nothing; another model recomputes its settings only
    calls = []
    monkeypatch.setattr(Tokenizer, "decode_mel", lambda self, *a, **k: calls.append(1) / 0)
    again = evaluate(model_dir, dump, out, max_utts=4, name="m", **run)
    assert [r["mel_l1"] for r in again["settings"]] == [r["mel_l1"] for r in s["settings"]] and not calls
    monkeypatch.undo()
    from conftest import write_model_dir

    write_model_dir(model_dir, seed=1)
    changed = evaluate(model_dir, dump, out, max_utts=4, name="m", **{**run, "judges": fake_judges(monkeypatch)})
    assert changed["settings"][:2] == s["settings"][:2]  # the recordings and ground truth: kept
    assert all(a["mel_l1"] != b["mel_l1"] for a, b in zip(changed["settings"][2:], s["settings"][2:]))
    write_model_dir(model_dir, seed=0)


def test_evaluate_without_a_model_scores_vocoders_on_ground_truth(eval_set, tmp_path, monkeypatch):
    """The vocoder's copy-synthesis evaluation (stage 10): the recordings and ground-truth mel through
    Griffin-Lim and a trained vocoder directory, no tokenizer."""
    from sitok.infer.vocoder import export_vocoder
    from sitok.models.vocos import Vocos, VocosConfig

    from conftest import run_cli

    dump, _ = eval_set
    voc = export_vocoder(Vocos(VocosConfig(dim=16, intermediate=32, layers=1)), str(tmp_path / "vocoder"))
    out = str(tmp_path / "voc_eval")
    run_cli(
        "evaluate",
        dump,
        out,
        "--original",
        "--judges",
        "asr=none",
        "sim=none",
        "mos=none",
        "pesq=none",
        "--vocoders",
        "griffin_lim",
        f"vocos={voc}",
        "--max-utts",
        "2",
        "--no-progress",
    )
    s = json.load(open(f"{out}/summary.json"))
    assert s["models"] == {} and [r["setting"] for r in s["settings"]] == [
        "original",
        "groundtruth_griffin_lim",
        "groundtruth_vocos",
    ]
    orig, gl, vocos = s["settings"]
    assert "stoi" not in orig and 0 < gl["stoi"] <= 1 and vocos["stoi"] is not None and gl["vocoder_rtf"] > 0


def test_judge_wer_is_the_asr_judge_on_the_recordings(eval_set, tmp_path):
    from sitok.eval.asr import word_error_rate
    from sitok.eval.engine import judge_wer

    data_dir = os.path.join(os.path.dirname(eval_set[0]), "data")
    out = str(tmp_path / "judge.tsv")
    row = judge_wer(data_dir, out, max_utts=3, progress=False)
    lines = open(out).read().splitlines()
    assert (
        lines[0].startswith("# pocketsphinx ") and f"WER {row['wer']:.2f} %" in lines[0] and lines[1] == "utt\tref\thyp"
    )
    body = [ln.split("\t") for ln in lines[2:]]
    assert [b[0] for b in body] == ["s0-u0", "s0-u4", "s1-u3"]  # evenly spaced, sorted
    assert row["wer"] == pytest.approx(
        100 * word_error_rate([b[1] for b in body], [b[2] if len(b) > 2 else "" for b in body])
    )


def test_tokenizer_encodes_feature_mels_and_reads_its_ctc_head_item_by_item(eval_set):
    """The public API the engine decodes and scores through: a padded batch of a dump's log-mels
    encodes as each alone; the CTC head of a padded batch reads each item as alone."""
    import torch

    from sitok.data.kaldi import read_mat, read_scp
    from sitok.infer import Tokenizer

    dump, model_dir = eval_set
    tok = Tokenizer.from_pretrained(model_dir)
    mels = [torch.from_numpy(read_mat(p).copy()) for p in read_scp(f"{dump}/feats.scp").values()]
    codes = tok.encode_mels(mels)
    assert all(torch.equal(c, tok.encode_mels([m])[0]) for c, m in zip(codes, mels))
    assert [c.shape[1] for c in codes] == [-(-m.shape[0] // 4) for m in mels]
    assert torch.allclose(tok.cmvn.inverse(tok.normalise(mels[0])), mels[0], atol=1e-5)
    lengths = torch.tensor([c.shape[1] for c in codes])
    padded = torch.nn.utils.rnn.pad_sequence([c.T for c in codes], batch_first=True).transpose(1, 2)
    log_probs, frames = tok.ctc_log_probs(padded, lengths)
    assert frames.tolist() == (lengths * tok.config.ctc_upsample).tolist()
    for i, c in enumerate(codes):
        alone, n = tok.ctc_log_probs(c)
        assert n.tolist() == [frames[i]] and torch.allclose(log_probs[i, : frames[i]], alone[0], atol=1e-5)
