"""``sitok report EXPDIR...``: the paper's tables (markdown + CSV) and figures from evaluations.

    sitok report exp/tokenizer_mini exp/refine_mini_* --out exp/report_mini --set test --dump-dir dump/test
    sitok report exp/tokenizer_mini exp/probes_mini.json --out ...   # + what stage 13 probed

Writes into ``--out``:
    table1_reconstruction.{md,csv}  table2_understanding.{md,csv}  table3_ctc.{md,csv}
    table5_ablations.{md,csv}       table6_light_head.{md,csv}     table9_vq_fsq.{md,csv}
    table7_tts.{md,csv}   AR-TTS (stage 16, ``<exp>/tts/results.json``), when an experiment has it
    tts_examples/<prompting>/   its listening examples: <utt>.wav, <utt>.prompt.wav, examples.tsv and
                          <utt>.png (log-mel of the generated speech above the prompt's); with several
                          AR-TTS experiments, tts_examples/<experiment>/<prompting>/
    fig2_steps.png        WER / SIM / MOS against Euler steps for every model scored at several
    mels_<utt>.png        ground-truth log-mel above each model's reconstruction
    report.md             all of it, with the judges, the reported setting and the paper's labels
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import shutil

import numpy as np
import pandas as pd

from sitok.data.kaldi import read_mat, read_scp
from sitok.fileio import atomic_dir, atomic_open, write_text_atomic
from sitok.report import paper
from sitok.report import tables as T
from sitok.report.probe_records import expand_paths

logger = logging.getLogger(__name__)

TABLES = [
    (
        "table1_reconstruction",
        "Table 1: reconstruction",
        "Model rows at the reported setting; ground truth through the vocoder. Paper: SiTok rows of its Table 1.",
    ),
    (
        "table2_understanding",
        "Table 2: understanding",
        "CTC ASR: the tokenizer's own CTC head on the split's codes "
        "(greedy; beam = CTC prefix beam search, 10 beams, no LM). LLM ASR: a decoder-only LM fine-tuned on the "
        "features (stage 15; the paper's ASR column: a 1 B LLM), greedy WER (%). ER / SV / KS and the ASR probe: "
        "the DASB-style probes on the frozen features (stage 13): ER and KS accuracy (%), SV EER (%) and normalised "
        "minDCF (p_target 0.01) on held-out speakers' trials, ASR probe = BiLSTM + CTC WER (%). Continuous mel rows "
        "are the upper baseline.",
    ),
    ("table3_ctc", "Table 3: CTC regularisation", "Regularised (CTC weight > 0) vs not, by tokens per second."),
    (
        "table5_ablations",
        "Table 5: ablations",
        "Codebook size is not matched to the paper (the mini grid uses "
        "1,024 entries); the paper's row is the one with its default size for that CN.",
    ),
    ("table6_light_head", "Table 6: light-weight diffusion head", "Models that differ only in the light head."),
    ("table9_vq_fsq", "Table 9: VQ vs FSQ", "Models that differ only in the quantizer."),
]


def _save_table(df, out_dir: str, stem: str) -> str:
    with atomic_open(os.path.join(out_dir, f"{stem}.csv")) as fh:
        df.to_csv(fh, index=False)
    md = T.markdown(df)
    write_text_atomic(os.path.join(out_dir, f"{stem}.md"), md + "\n")
    return md


def _savefig(fig, path: str, dpi: int) -> None:
    import matplotlib.pyplot as plt

    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi)
    plt.close(fig)


def steps_figure(summaries: list[dict], path: str, vocoder: str | None = None) -> bool:
    """Figure-2 style: WER, SIM and MOS against Euler steps (w = 1), one line per model scored at
    two or more step counts (base vs shortcut when both are there). False when none is."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}
    for s in summaries:
        rows = [r for r in s["settings"] if r["source"] == "model" and r["cfg_scale"] == 1.0 and r["steps"] > 0]
        vocs = [r["vocoder"] for r in rows]
        voc = vocoder if vocoder in vocs else (vocs[0] if vocs else None)
        rows = sorted((r for r in rows if r["vocoder"] == voc), key=lambda r: r["steps"])
        if len(rows) >= 2:
            curves[s["model"]["name"]] = rows
    if not curves:
        return False
    metrics = [("wer", "WER (%) ↓"), ("sim", "SIM ↑"), ("mos", "MOS ↑")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (k, label) in zip(axes, metrics):
        for name, rows in curves.items():
            xs = [r["steps"] for r in rows]
            ys = [r.get("utmos", r.get("dnsmos_ovrl")) if k == "mos" else r.get(k) for r in rows]
            if all(y is None for y in ys):
                continue
            ax.plot(xs, [np.nan if y is None else y for y in ys], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="Euler steps", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        "Reconstruction against decoding steps (ours; the paper's Figure 2 gives curves, not numbers)", fontsize=9
    )
    fig.tight_layout()
    _savefig(fig, path, dpi=110)
    return True


def mel_figures(summaries: list[dict], df, dump_dir: str | None, out_dir: str, max_models: int = 6) -> list[str]:
    """For each example utterance the evaluate stage kept: ground-truth log-mel above each
    model's reconstruction at its reported setting. Returns the files written."""
    if not dump_dir or not os.path.exists(os.path.join(dump_dir, "feats.scp")):
        logger.warning("report: no --dump-dir with feats.scp: mel-spectrogram figures left out")
        return []
    feats = read_scp(os.path.join(dump_dir, "feats.scp"))
    chosen = {r["experiment"]: r for r in df.to_dict("records")}
    panels = []  # (name, the mels dir of its reported setting)
    for s in summaries[:max_models]:
        if (r := chosen.get(s["model"]["name"])) is not None:
            steps = "regression" if r["steps"] == 0 else f"{r['steps']} steps"
            mels = os.path.join(os.path.dirname(s["path"]), "mels", r["setting"])
            panels.append((f"{r['experiment']} ({steps})", mels))
    utts = sorted({f[:-4] for _, d in panels if os.path.isdir(d) for f in os.listdir(d) if f.endswith(".npy")})
    written = []
    for u in utts:
        if u not in feats:
            continue
        rows = [("ground truth", read_mat(feats[u]))]
        rows += [
            (name, np.load(os.path.join(d, f"{u}.npy")))
            for name, d in panels
            if os.path.exists(os.path.join(d, f"{u}.npy"))
        ]
        path = os.path.join(out_dir, f"mels_{u}.png")
        _mel_panels(rows, rows[0][1], path, panel_height=1.6)
        written.append(path)
    return written


TABLE7 = ("table7_tts", "Table 7: zero-shot AR-TTS")


def tts_note(entries: list[dict]) -> str:
    """The caption of Table 7: what was trained, how it was judged and what the paper's rows are."""
    runs = []
    for e in entries:
        r = e["results"]
        lora = f", LoRA rank {r['lora_rank']}" if r.get("lora_rank") else ""
        temp = (r.get("sampling") or {}).get("temperature")
        runs.append(
            f"{e['experiment']}: {r.get('backbone')} LM ({'pretrained' if r.get('pretrained') else 'random init'}, "
            f"{r.get('lm_layers')} layers, {(r.get('parameters') or 0) / 1e6:.0f} M parameters{lora}), "
            f"{r.get('epochs')} epochs / {r.get('steps')} steps in {r.get('train_minutes')} min; "
            f"{r.get('utterances')} test sentences per prompting"
            + (f", sampling temperature {temp:g}" if temp is not None else "")
        )
    return (
        "An LM trained on the mini-scale data (recipe stage 16) predicts the tokenizer's codes from text, "
        "continuing a prompt utterance (its transcript and codes); the codes are decoded at each step count and "
        "vocoded. Prompt: same speaker = another test utterance of the target's speaker; held-out speaker = an "
        "utterance of a speaker of the held-out set; reconstruction = the tokenizer's own resynthesis of the same "
        "test utterances (no LM). " + "; ".join(runs) + ". "
        "Our judges: WER (%) of offline pocketsphinx with the in-domain LM against the target sentence, SIM of "
        "Resemblyzer against the prompt recording, DNSMOS OVRL. RTF: LM + decoder + vocoder seconds per second "
        "of speech, measured on this CPU (LM RTF: the LM's part). "
        f'Rows of experiment "paper" are the paper\'s own numbers ({paper.TABLE7_SETTING}; SiTok-AR-TTS: a 0.5 B '
        "LM on 100 k hours of Emilia, 16 decoding steps); not the same measurement as ours."
    )


@functools.lru_cache(maxsize=4)
def _mel_frontend(sample_rate: int):
    """The project's log-mel frontend at 50 frames/s for audio at ``sample_rate`` (the tokenizer's
    own configuration at 24 kHz)."""
    from sitok.data.mel import MelConfig, MelFrontend

    hop = sample_rate // 50
    n_mels = 128 if sample_rate >= 16000 else 80
    return MelFrontend(
        MelConfig(
            sample_rate=sample_rate,
            n_fft=4 * hop,
            win_length=4 * hop,
            hop_length=hop,
            n_mels=n_mels,
            f_max=sample_rate / 2,
        )
    )


def _wav_log_mel(path: str) -> np.ndarray:
    """[T, n_mels] log-mel of a wav file (channels averaged)."""
    import soundfile as sf
    import torch

    wav, sr = sf.read(path, dtype="float32", always_2d=True)
    return _mel_frontend(int(sr))(torch.from_numpy(np.ascontiguousarray(wav.mean(axis=1)))).numpy()


def example_figure(wav: str, prompt: str | None, title: str, prompt_title: str, path: str) -> bool:
    """Log-mel of the generated ``wav`` above its ``prompt``'s (same colour scale, the prompt's) as
    a PNG at ``path``. False (and nothing written) when the audio cannot be read."""
    try:
        rows = [(title, _wav_log_mel(wav))]
        if prompt and os.path.exists(prompt):
            rows.append((prompt_title, _wav_log_mel(prompt)))
    except (RuntimeError, ValueError) as exc:  # unreadable or empty audio
        logger.warning("report: %s: no mel-spectrogram figure (%s)", wav, exc)
        return False
    _mel_panels(rows, rows[-1][1], path, panel_height=1.8)
    return True


def _mel_panels(rows: list, ref: np.ndarray, path: str, panel_height: float) -> None:
    """(title, log-mel [frames, bins]) panels stacked in one PNG at ``path``, on the colour scale
    of ``ref`` (its 1st percentile to its maximum)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vmin, vmax = float(np.percentile(ref, 1)), float(ref.max())
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, panel_height * len(rows)), squeeze=False)
    for ax, (name, mel) in zip(axes[:, 0], rows):
        ax.imshow(mel.T, origin="lower", aspect="auto", vmin=vmin, vmax=vmax, cmap="magma")
        ax.set_title(name, fontsize=8, loc="left")
        ax.set_yticks([])
    axes[-1, 0].set_xlabel("frames (50 Hz)")
    fig.tight_layout()
    _savefig(fig, path, dpi=100)


def _read_examples(src: str) -> list[tuple[str, str, str]]:
    """(utt, prompt utt, text) of an examples directory: its examples.tsv, else its wavs."""
    tsv = os.path.join(src, "examples.tsv")
    if os.path.exists(tsv):
        with open(tsv, encoding="utf-8") as fh:
            rows = [line.rstrip("\n").split("\t") for line in fh if line.strip()]
        return [(r[0], r[1] if len(r) > 1 else "", r[2] if len(r) > 2 else "") for r in rows]
    wavs = sorted(f[:-4] for f in os.listdir(src) if f.endswith(".wav") and not f.endswith(".prompt.wav"))
    return [(u, "", "") for u in wavs]


def tts_examples(entries: list[dict], out_dir: str) -> list[str]:
    """Copy the listening examples of each AR-TTS experiment (``<exp>/tts/examples/<prompting>/``)
    into ``<out_dir>/tts_examples/`` with one mel-spectrogram PNG per example; the directory is
    rebuilt and swapped in whole. Returns the report's markdown lines for them."""
    dest = os.path.join(out_dir, "tts_examples")
    found = []  # (experiment, prompting, source directory, max decoder steps)
    for e in entries:
        root = os.path.join(e["exp_dir"], "tts", "examples")
        if os.path.isdir(root):
            steps = max(e["results"].get("eval_steps") or [0])
            promptings = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
            order = list(T.PROMPTINGS)
            promptings.sort(key=lambda p: order.index(p) if p in order else len(order))
            found += [(e["experiment"], p, os.path.join(root, p), steps) for p in promptings]
    if not found:
        shutil.rmtree(dest, ignore_errors=True)  # examples of an earlier run that no longer has any
        return []
    several = len({f[0] for f in found}) > 1
    lines = [
        "### Listening examples",
        "",
        "Generated speech (decoded at the largest step count scored, the configured vocoder) and its prompt; "
        "the log-mel of the generated speech is drawn above the prompt's, on the prompt's colour scale.",
        "",
    ]
    with atomic_dir(dest) as tmp:
        for exp, prompting, src, steps in found:
            rel = os.path.join(exp, prompting) if several else prompting
            os.makedirs(os.path.join(tmp, rel))
            label = T.PROMPTINGS.get(prompting, prompting)
            lines += [f"#### {label} ({exp})", ""]
            for name in os.listdir(src):
                if name.endswith((".wav", ".tsv")):
                    shutil.copyfile(os.path.join(src, name), os.path.join(tmp, rel, name))
            for utt, prompt_utt, text in _read_examples(src):
                if not os.path.exists(os.path.join(src, f"{utt}.wav")):
                    continue
                base = f"tts_examples/{rel}/{utt}"
                prompt = os.path.join(src, f"{utt}.prompt.wav")
                has_prompt = os.path.exists(prompt)
                shown = text if len(text) <= 80 else text[:77] + "..."
                drawn = example_figure(
                    os.path.join(src, f"{utt}.wav"),
                    prompt if has_prompt else None,
                    f'generated ({label}, {steps} steps): {utt} "{shown}"',
                    f"prompt: {prompt_utt or '?'}",
                    os.path.join(tmp, rel, f"{utt}.png"),
                )
                links = f"[generated]({base}.wav)" + (
                    f" · [prompt {prompt_utt}]({base}.prompt.wav)" if has_prompt else ""
                )
                lines.append(f'- `{utt}`: "{text}" · {links}')
                if drawn:
                    lines += ["", f"  ![{utt}]({base}.png)", ""]
            lines.append("")
    return lines


def _tts_section(entries: list[dict], out_dir: str) -> tuple:
    """Table 7 and the listening examples: (DataFrame, report lines); (None, []) without AR-TTS results."""
    if not entries:
        return None, []
    stem, title = TABLE7
    df = T.table7(entries)
    parts = [f"## {title}", "", tts_note(entries), "", _save_table(df, out_dir, stem), ""]
    return df, parts + tts_examples(entries, out_dir)


def _write_probe_only_report(probe_only: list[dict], out_dir: str) -> dict:
    """Table 2 from probe summaries alone (stage 13 ran, stage 12 did not)."""
    os.makedirs(out_dir, exist_ok=True)
    built = {"table2_understanding": T.table2(pd.DataFrame(columns=["refine"]), probe_only)}
    parts = [
        "# SiTok report",
        "",
        f"Probe summaries only ({', '.join(s['name'] for s in probe_only)}): no evaluation summary was found "
        "(run the evaluate stage, e.g. stage 12, for the reconstruction tables).",
        f'Columns labelled "paper" are the paper\'s own numbers ({paper.JUDGES}).',
        "",
    ]
    stem, title, note = next(t for t in TABLES if t[0] == "table2_understanding")
    parts += [f"## {title}", "", note, "", _save_table(built[stem], out_dir, stem), ""]
    t7, tts_parts = _tts_section(T.tts_experiments([], probe_only), out_dir)
    if t7 is not None:
        built[TABLE7[0]] = t7
        parts += tts_parts
    write_text_atomic(os.path.join(out_dir, "report.md"), "\n".join(parts))
    logger.info("report: Table 2 from %d probe summaries -> %s", len(probe_only), out_dir)
    return built


def write_report(
    paths: list[str],
    out_dir: str,
    set_name: str | None = None,
    dump_dir: str | None = None,
    steps: int | None = None,
    cfg_scale: float | None = None,
    vocoder: str | None = None,
) -> dict:
    """Build every table and figure; returns {stem: DataFrame}. A path may also be the probe
    record file of stage 13 (``<expdir>/probes_<tag>.json``): it stands for the probed experiments."""
    paths = expand_paths(paths)
    probe_only = T.find_probe_summaries(paths)
    # a probed experiment is looked at for evaluation summaries only when it has some
    evaluated = [
        p
        for p in paths
        if not os.path.isfile(os.path.join(p, "probes", "summary.json"))
        or glob.glob(os.path.join(p, "eval", "*", "summary.json"))
    ]
    files = T.find_summaries(evaluated, set_name)
    if not files and probe_only:  # probes without the evaluate stage: Table 2 alone
        return _write_probe_only_report(probe_only, out_dir)
    if not files:
        raise FileNotFoundError(f"report: no evaluation summary under {paths} (run the evaluate stage, e.g. stage 12)")
    summaries = [view for f in files for view in T.load_summary(f)]
    os.makedirs(out_dir, exist_ok=True)
    df = T.model_rows(summaries, steps, cfg_scale, vocoder)
    gt = T.groundtruth_row(summaries, vocoder)
    built = {
        "table1_reconstruction": T.table1(df, gt),
        "table2_understanding": T.table2(df, probe_only),
        "table3_ctc": T.table3(df),
        "table5_ablations": T.table5(df),
        "table6_light_head": T.table6(df),
        "table9_vq_fsq": T.table9(df),
    }
    judges = summaries[0]["judges"]
    judge_line = ", ".join(f"{k}: {v['judge']} {v['version']}" for k, v in judges.items())
    sets = sorted({s["set"] for s in summaries})
    parts = [
        "# SiTok report",
        "",
        f"Set: {', '.join(sets)} ({summaries[0]['utterances']} utterances). Models: {len(df)} "
        f"({', '.join(df['experiment']) if len(df) else 'none'}).",
        f"Reported setting per model: Euler steps {steps if steps is not None else 'the fewest scored'}, "
        f"token-CFG scale {cfg_scale if cfg_scale is not None else 'the largest scored'} for CFG models "
        f"(1 otherwise), vocoder {vocoder or 'the first scored'}. Chosen before looking at scores, not "
        "the best on the test set.",
        f"Our judges: {judge_line}. MOS is DNSMOS OVRL unless UTMOS was judged.",
        f'Columns labelled "paper" are the paper\'s own numbers ({paper.JUDGES}); they are not the same '
        "measurement as ours (different corpus, judges and model scale).",
        "",
    ]
    for stem, title, note in TABLES:
        md = _save_table(built[stem], out_dir, stem)
        parts += [f"## {title}", "", note, "", md, ""]
    t7, tts_parts = _tts_section(T.tts_experiments(summaries, probe_only), out_dir)
    if t7 is not None:
        built[TABLE7[0]] = t7
        parts += tts_parts
    if steps_figure(summaries, os.path.join(out_dir, "fig2_steps.png"), vocoder):
        parts += ["## Figure 2: reconstruction against decoding steps", "", "![steps](fig2_steps.png)", ""]
    figs = mel_figures(summaries, df, dump_dir or (summaries[0]["dump_dir"]), out_dir)
    if figs:
        parts += ["## Mel-spectrograms: ground truth vs reconstruction", ""]
        parts += [f"![{os.path.basename(f)}]({os.path.basename(f)})" for f in figs] + [""]
    write_text_atomic(os.path.join(out_dir, "report.md"), "\n".join(parts))
    logger.info(
        "report: %d models from %d summaries -> %s (%s)",
        len(df),
        len(files),
        out_dir,
        ", ".join(f"{k}: {len(v)} rows" for k, v in built.items()),
    )
    return built
