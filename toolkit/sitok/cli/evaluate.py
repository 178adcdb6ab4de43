"""Evaluation commands: the ASR judge's LM and ground-truth WER, codebook statistics, the
reconstruction of a set scored by the judges, refinement grids and their comparison.

Library modules are imported inside each command, so ``sitok --help`` starts without torch."""

from __future__ import annotations

import json
import logging
import os

from sitok.cli.common import (
    DEVICE_HELP,
    MODEL_DIR_HELP,
    NO_PROGRESS_HELP,
    TEMPERATURE_HELP,
    VOCODER_HELP,
    VOCODERS,
    add_command,
    nonneg_float,
    positive_int,
    torch_threads,
)

logger = logging.getLogger("sitok")


def cmd_judge_lm(a) -> int:
    from sitok.data.kaldi import read_table
    from sitok.eval.ngram import write_bigram_arpa

    texts = [t for t in read_table(a.text).values() if not t.startswith("<")]
    counts = write_bigram_arpa(texts, a.out)
    logger.info("%s: bigram LM from %d sentences: %s", a.out, len(texts), json.dumps(counts))
    return 0


def cmd_judge_wer(a) -> int:
    """Word error rate of the offline ASR judge on a data dir's audio (ground truth)."""
    from sitok.eval.engine import judge_wer

    judge_wer(a.data_dir, a.out, a.lm, a.max_utts, progress=not a.no_progress)
    return 0


def cmd_codes_stats(a) -> int:
    """Codebook usage and perplexity of a set's codes (codes.scp of stage 5)."""
    import torch

    from sitok.data.kaldi import read_mat, read_scp
    from sitok.eval.metrics import code_statistics

    codes = {
        u: torch.from_numpy(read_mat(p).astype("int64"))
        for u, p in read_scp(os.path.join(a.codes_dir, "codes.scp")).items()
    }
    cn = next(iter(codes.values())).shape[0]
    s = code_statistics(codes, cn, a.codebook_size)
    frames = sum(c.shape[1] for c in codes.values())
    out = {"codes_dir": a.codes_dir, "utterances": len(codes), "frames": frames, "num_codebooks": cn}
    out.update(codebook_size=a.codebook_size, usage=s["codebook_usage"], perplexity=s["code_perplexity"])
    print(json.dumps(out))
    return 0


def cmd_eval_refine(a) -> int:
    from sitok.eval.refine import evaluate_refinement

    models = {}
    for item in a.models:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--models: expected NAME=MODEL_DIR, got {item!r}")
        models[name] = path
    evaluate_refinement(
        a.dump_dir,
        a.codes_dir,
        a.out_dir,
        models,
        a.steps,
        a.cfg_scales,
        a.wer_steps,
        a.lm,
        max_utts=a.max_utts,
        progress=not a.no_progress,
        vocoder=a.vocoder,
        temperatures=a.temperatures,
        select_from=a.select_from,
    )
    return 0


def cmd_best_decoding(a) -> int:
    from sitok.eval.refine import best_decoding

    steps, temperature = best_decoding(os.path.join(a.eval_dir, "results.csv"), a.model)
    print(f"{steps} {temperature:g}")
    return 0


def cmd_compare_refine(a) -> int:
    from sitok.eval.refine import paired_comparison

    unit = " (%)" if a.metric == "wer" else ""
    print(f"| A | B | steps | utts | {a.metric}{unit} A | {a.metric}{unit} B | A - B | 95 % CI | A better / worse on |")
    print("|---|---|---|---|---|---|---|---|---|")
    fmt = ".2f" if a.metric == "wer" else ".4f"
    for b in a.b:
        for r in paired_comparison(a.eval_dir, a.a, b, a.steps, a.metric, seed=a.seed):
            lo, hi = r["ci95"]
            print(
                f"| {r['a']} | {r['b']} | {r['steps']} | {r['utterances']} | {r['a_value']:{fmt}} | "
                f"{r['b_value']:{fmt}} | {r['diff']:+{fmt}} | [{lo:+{fmt}}, {hi:+{fmt}}] | "
                f"{100 * r['a_better_share']:.0f} / {100 * r['a_worse_share']:.0f} % |"
            )
    return 0


def judge_options(items) -> dict:
    """``["asr.model=/models/whisper", "asr.language=en"]`` -> {"asr": {"model": ..., "language": ...}}."""
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        kind, dot, opt = key.partition(".")
        if not sep or not dot or not opt:
            raise SystemExit(f"--judge-opt: expected KIND.OPTION=VALUE (e.g. asr.model=/models/whisper), got {item!r}")
        out.setdefault(kind, {})[opt] = value
    return out


def cmd_evaluate(a) -> int:
    from sitok.eval.engine import evaluate
    from sitok.eval.judges import parse_judges

    torch_threads(a.threads)
    evaluate(
        a.model_dir,
        a.dump_dir,
        a.out_dir,
        steps=a.steps,
        cfg_scales=a.cfg_scales,
        temperatures=a.temperatures,
        vocoders=a.vocoders,
        judges=parse_judges(a.judges),
        judge_opts=judge_options(a.judge_opt),
        lm=a.lm,
        groundtruth=not a.no_groundtruth,
        original=a.original,
        max_utts=a.max_utts,
        progress=not a.no_progress,
        name=a.name,
        device=a.device,
    )
    return 0


def add_parsers(sub) -> None:
    s = add_command(sub, "judge-lm", cmd_judge_lm, "in-domain bigram LM for the offline ASR judge (stage 3)")
    s.add_argument("--text", required=True, help="Kaldi text file of training transcripts")
    s.add_argument("--out", required=True, help="output ARPA file")

    s = add_command(sub, "judge-wer", cmd_judge_wer, "offline ASR judge (pocketsphinx) WER on a data dir's audio")
    s.add_argument("data_dir", help="Kaldi-style data dir (wav.scp, text)")
    s.add_argument("--lm", default=None, help="ARPA LM (default: pocketsphinx's generic en-US LM)")
    s.add_argument("--max-utts", type=int, default=0, help="this many evenly spaced utterances (0 = all)")
    s.add_argument("--out", default=None, help="per-utterance ref/hyp TSV")
    s.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)

    s = add_command(sub, "codes-stats", cmd_codes_stats, "codebook usage and perplexity of a set's codes")
    s.add_argument("codes_dir", help="a set's codes dir (codes.scp)")
    s.add_argument("--codebook-size", type=int, required=True, help="codebook size of the model that made the codes")

    s = add_command(
        sub, "eval-refine", cmd_eval_refine, "mel distance / WER / RTF of models x steps x CFG scales x temperatures"
    )
    s.add_argument("dump_dir", help="the set's feature dump dir (feats.scp, text)")
    s.add_argument("codes_dir", help="the set's codes (refined models share the base model's encoder and VQ)")
    s.add_argument("out_dir", help="output dir (results.csv, per_utt.csv)")
    s.add_argument("--models", nargs="+", required=True, help="NAME=MODEL_DIR ...")
    s.add_argument("--steps", nargs="+", type=positive_int, default=[1, 2, 4, 8, 16], help="Euler steps to score")
    s.add_argument(
        "--cfg-scales",
        nargs="+",
        type=nonneg_float,
        default=[1.0],
        help="token-CFG scales w to score (CFG models; others score w = 1)",
    )
    s.add_argument(
        "--temperatures", nargs="+", type=nonneg_float, default=[1.0], help="start-noise scales tau to score"
    )
    s.add_argument("--wer-steps", nargs="*", type=int, default=[], help="steps that also get the ASR judge")
    s.add_argument(
        "--select-from",
        default=None,
        help="an earlier eval-refine output dir (e.g. on dev) whose mel L1 selects the judged setting",
    )
    s.add_argument("--lm", default=None, help="judge LM (ARPA); default: pocketsphinx's generic LM")
    s.add_argument("--max-utts", type=int, default=0, help="this many evenly spaced utterances (0 = all)")
    s.add_argument("--vocoder", default="auto", choices=VOCODERS, help=VOCODER_HELP)
    s.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)

    s = add_command(
        sub, "best-decoding", cmd_best_decoding, "the (steps, temperature) with the lowest mel L1 of an eval-refine run"
    )
    s.add_argument("eval_dir", help="an eval-refine output directory (its results.csv)")
    s.add_argument("--model", default="base", help="the model's NAME in that evaluation")

    s = add_command(
        sub, "compare-refine", cmd_compare_refine, "paired per-utterance comparison of eval-refine settings (bootstrap)"
    )
    s.add_argument("eval_dir", help="an eval-refine output directory (its per_utt.csv)")
    s.add_argument("a", help="NAME[@TEMPERATURE[@CFG_SCALE]], e.g. shortcut@0")
    s.add_argument("b", nargs="+", help="one or more settings to compare A with, e.g. base@0 base@1")
    s.add_argument("--steps", nargs="+", type=positive_int, default=[1, 2, 4], help="Euler steps to compare")
    s.add_argument(
        "--metric",
        default="mel_l1",
        choices=["mel_l1", "wer"],
        help="mel_l1, or wer (the judge's transcripts: judged settings at --wer-steps); both from per_utt.csv",
    )
    s.add_argument("--seed", type=int, default=0, help="bootstrap seed")

    s = add_command(sub, "evaluate", cmd_evaluate, "reconstruction of a split by one model, scored by every judge")
    s.add_argument("dump_dir", help="feature dump dir of the split (feats.scp, wav.scp, text)")
    s.add_argument("out_dir", help="output dir (summary.json, results.csv, results.md, per_utt.csv)")
    s.add_argument(
        "-m", "--model-dir", default=None, help=MODEL_DIR_HELP + "; without one, ground truth through the vocoders"
    )
    s.add_argument("--steps", type=positive_int, nargs="+", default=[1], help="Euler steps to score")
    s.add_argument("--cfg-scales", type=nonneg_float, nargs="+", default=[1.0], help="token-CFG scales (CFG models)")
    s.add_argument(
        "--temperatures", "--temperature", type=nonneg_float, nargs="+", default=[1.0], help=TEMPERATURE_HELP
    )
    s.add_argument(
        "--vocoders",
        nargs="+",
        default=["auto"],
        help="each is scored: auto | vocos | griffin_lim (the model directory's), or NAME=DIR (a vocoder directory)",
    )
    s.add_argument(
        "--judges",
        nargs="*",
        default=None,
        metavar="KIND=BACKEND",
        help="e.g. asr=whisper sim=wavlm mos=utmos; KIND=none leaves one out (default: the offline ones)",
    )
    s.add_argument(
        "--judge-opt",
        nargs="*",
        default=None,
        metavar="KIND.OPTION=VALUE",
        help="backend options, e.g. asr.model=/models/whisper-large-v3 sim.model=/models/wavlm-sv",
    )
    s.add_argument("--lm", default=None, help="ARPA LM for the pocketsphinx judge (the recipe's judge LM)")
    s.add_argument("--no-groundtruth", action="store_true", help="skip the ground-truth-through-vocoder rows")
    s.add_argument("--original", action="store_true", help="also judge the original recordings (a reference row)")
    s.add_argument("--max-utts", type=int, default=0, help="score this many evenly spaced utterances (0: all)")
    s.add_argument("--name", default=None, help="row label (default: the experiment dir of the model)")
    s.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    s.add_argument("--device", default="cpu", help=DEVICE_HELP)
    s.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
