"""Reconstruction of a set by several models and decode settings (recipe stage 11): the
evaluation engine (``sitok.eval.engine``) configured for decoder refinements, and its views.

For every model x Euler steps x token-CFG scale x start-noise temperature: the normalised log-mel
L1 distance to the ground truth (lower is better), the Fréchet mel distance (FMD: between the
Gaussians fitted to all decoded and all ground-truth normalised frames of the set; a distribution
distance, like the FID by which shortcut models are judged, where L1 to one reference rewards the
conditional mean) and the decoder's real-time factor; at the steps in ``wer_steps`` also the
offline ASR judge's WER, for the plain setting (w = 1, temperature 1) and for the other setting
with the lowest mean mel distance over the steps (a CFG scale, a temperature), selected on this
set or, with ``select_from``, on an earlier run's results (a dev set's). Ground-truth mel through
each available vocoder gives the reference rows. The engine's files: ``summary.json``,
``results.csv``, ``results.md``, ``per_utt.csv``, ``cache/``.

    sitok eval-refine dump/test exp/tokenizer_mini/codes/test exp/refine_eval_mini/test \
        --models base=exp/tokenizer_mini/model shortcut=exp/refine_mini_shortcut/model \
        --steps 1 2 4 --cfg-scales 1 2 --wer-steps 1 4 --lm data/lang_unigram256/judge_lm.arpa
    # tune the temperature on dev (no judge), score test at the dev-selected one:
    sitok eval-refine dump/dev ... exp/refine_eval_mini/dev --models ... --temperatures 0 0.5 1
    sitok eval-refine dump/test ... exp/refine_eval_mini/test --models ... --temperatures 0 0.5 1 \
        --wer-steps 1 2 4 --select-from exp/refine_eval_mini/dev
"""

from __future__ import annotations

import logging
import os

import numpy as np

from sitok.eval.asr import scored_pairs
from sitok.eval.engine import Engine, EvalSet, Setting
from sitok.eval.judges import build_judges
from sitok.infer.tokenizer import check_temperature
from sitok.infer.vocoder import vocoder_dir

logger = logging.getLogger(__name__)


def select_setting(rows: list[dict], name: str, settings: list[tuple], steps: list[int], source: str):
    """The (cfg_scale, temperature) of ``settings`` other than the plain (1, 1) with the lowest mean
    mel L1 among ``rows`` of model ``name``, over those of ``steps`` that ``rows`` have; None when
    there is no other setting. ``source`` names the rows' origin in errors."""
    candidates = [st for st in settings if st != (1.0, 1.0)]
    if not candidates:
        return None
    mine = [r for r in rows if r["model"] == name]
    use = [s for s in steps if any(r["steps"] == s for r in mine)]
    if not use:
        raise ValueError(f"{source}: no results of model {name!r} at any of steps {list(steps)}")
    mean = {}
    for w, tau in candidates:
        vals = [r["mel_l1"] for r in mine if r["steps"] in use and r["cfg_scale"] == w and r["temperature"] == tau]
        if len(vals) != len(use):
            raise ValueError(
                f"{source}: model {name!r} lacks mel L1 at cfg_scale={w:g}, temperature={tau:g} for "
                f"some of steps {use}; score that setting there first"
            )
        mean[(w, tau)] = float(np.mean(vals))
    return min(candidates, key=lambda st: mean[st])


def best_decoding(results_csv: str, name: str) -> tuple[int, float]:
    """(steps, temperature) of model ``name`` with the lowest mean mel L1 in an eval-refine
    ``results.csv`` (plain CFG scale): how stage 5 picks its resynthesis setting on dev."""
    import pandas as pd

    if not os.path.exists(results_csv):
        raise FileNotFoundError(f"{results_csv}: no eval-refine results")
    df = pd.read_csv(results_csv)
    df = df[(df["model"] == name) & (df["cfg_scale"] == 1.0)]
    if df.empty:
        raise ValueError(f"{results_csv}: no rows of model {name!r}")
    best = df.loc[df["mel_l1"].idxmin()]
    return int(best["steps"]), float(best["temperature"])


def evaluate_refinement(
    dump_dir: str,
    codes_dir: str,
    out_dir: str,
    models: dict[str, str],
    steps: list[int],
    cfg_scales: list[float] = (1.0,),
    wer_steps: list[int] = (),
    lm: str | None = None,
    max_utts: int = 0,
    progress: bool = True,
    vocoder: str = "auto",
    temperatures: list[float] = (1.0,),
    select_from: str | None = None,
) -> list[dict]:
    """Score ``models`` (name -> model dir) on a set's codes; see the module docstring. Returns the rows."""
    import pandas as pd

    for tau in temperatures:  # before any work, not at the first decode
        check_temperature(tau)
    selection_rows = None
    if select_from:
        path = os.path.join(select_from, "results.csv")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no eval-refine results to select settings from")
        selection_rows = pd.read_csv(path).to_dict("records")
    judges = build_judges({"asr": "pocketsphinx"}, lm=lm) if wer_steps else {}
    data = EvalSet.load(dump_dir, max_utts, audio=False, text=bool(wer_steps), codes_dir=codes_dir)
    eng = Engine(data, out_dir, judges, lm=lm, progress=progress)
    for name, model_dir in models.items():
        eng.add_model(name, model_dir)
    if judges:  # reference rows: ground-truth mel through Griffin-Lim and the first trained vocoder of the models
        own = next((d for d in models.values() if vocoder_dir(d)), None)
        for v in eng.load_vocoders(["griffin_lim"] + ([f"vocos={own}"] if own else [])):
            eng.score(Setting.groundtruth(v))
    for name in models:
        (voc,) = eng.load_vocoders([vocoder], name)
        steps_, scales, taus = eng.decodings(name, steps, cfg_scales, temperatures)
        grid = [(w, tau) for w in scales for tau in taus]
        settings = [Setting("model", name, voc, s, w, tau) for w, tau in grid for s in steps_]
        rows = [eng.score(st, judged=False) for st in settings]  # 1) mel distances of every setting
        best = select_setting(
            rows if selection_rows is None else selection_rows, name, grid, steps_, select_from or out_dir
        )
        if best is not None:
            logger.info(
                "%s: setting with the lowest mean mel distance (selected on %s): cfg_scale %g, temperature %g",
                name,
                select_from or dump_dir,
                *best,
            )
        judged = [(1.0, 1.0)] + ([best] if best is not None else [])
        for st in settings:  # 2) the judge at wer_steps for the plain and the selected setting
            if judges and (st.steps in wer_steps or st.steps == 0) and (st.cfg_scale, st.temperature) in judged:
                eng.score(st)
    return eng.write(select_from=select_from)["settings"]


def parse_setting(spec: str) -> tuple[str, float, float]:
    """``NAME[@TEMPERATURE[@CFG_SCALE]]`` -> (name, temperature, cfg_scale); both default to 1."""
    name, *rest = spec.split("@")
    if not name or len(rest) > 2:
        raise ValueError(f"expected NAME[@TEMPERATURE[@CFG_SCALE]], got {spec!r}")
    try:
        vals = [float(v) for v in rest] + [1.0] * (2 - len(rest))
    except ValueError:
        raise ValueError(f"expected NAME[@TEMPERATURE[@CFG_SCALE]] with numbers, got {spec!r}") from None
    return name, vals[0], vals[1]


def utterance_errors(utts: list[str], refs: list[str], hyps: list[str]) -> dict[str, tuple[int, int]]:
    """{utt: (word errors, reference words)} of a judge's transcripts, counted as
    :func:`sitok.eval.asr.word_error_rate` counts them (:func:`scored_pairs`)."""
    import jiwer

    out = {}
    for i, r, h in scored_pairs(refs, hyps):
        m = jiwer.process_words(r, h)
        out[utts[i]] = (m.substitutions + m.deletions + m.insertions, len(r.split()))
    return out


def paired_comparison(
    eval_dir: str, a: str, b: str, steps: list[int], metric: str = "mel_l1", n_boot: int = 2000, seed: int = 0
) -> list[dict]:
    """Two settings of one eval-refine output (``NAME[@TEMPERATURE[@CFG_SCALE]]`` each) compared
    utterance by utterance, for each of ``steps``: the set's value for each (``mel_l1``: mean of
    the per-utterance distances; ``wer``: corpus WER in %, from the judge's transcripts; both from
    per_utt.csv), the difference a - b, its 95 % paired-bootstrap interval (``n_boot`` resamples of
    the utterances both have) and the shares of utterances where ``a`` is better and worse."""
    import pandas as pd

    if metric not in ("mel_l1", "wer"):
        raise ValueError(f"metric must be mel_l1|wer, got {metric!r}")
    paths = [os.path.join(eval_dir, f) for f in ("results.csv", "per_utt.csv")]
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: not an eval-refine output directory (run sitok eval-refine first)")
    results = pd.read_csv(paths[0])
    per_utt = pd.read_csv(paths[1], dtype={"utt": str, "ref": str, "hyp": str})

    def values(spec: str, s: int) -> tuple[dict, dict]:  # {utt: numerator}, {utt: denominator}
        name, tau, w = parse_setting(spec)
        sel = results[(results.model == name) & (results.steps == s) & (results.temperature == tau)]
        sel = sel[(sel.cfg_scale == w) & (sel.wer.notna() if metric == "wer" else True)]
        if metric == "mel_l1":
            rows = per_utt[per_utt.setting.isin(sel.setting)].drop_duplicates("utt")
            if rows.empty:
                raise ValueError(f"{eval_dir}: no rows for {spec} at {s} steps (scored: {sorted(set(results.model))})")
            num = dict(zip(rows["utt"], rows["mel_l1"]))
            return num, dict.fromkeys(num, 1.0)
        if len(sel) != 1:
            raise ValueError(
                f"{eval_dir}: {'no' if sel.empty else 'more than one'} judged setting for {spec} at {s} steps "
                "(the judge runs at --wer-steps, for the plain and the selected setting)"
            )
        rows = per_utt[per_utt.setting == sel.setting.iloc[0]]
        errs = utterance_errors(list(rows.utt), list(rows.ref.fillna("")), list(rows.hyp.fillna("")))
        return {u: e for u, (e, _) in errs.items()}, {u: n for u, (_, n) in errs.items()}

    rng = np.random.default_rng(seed)
    scale = 100.0 if metric == "wer" else 1.0
    out = []
    for s in steps:
        (na, da), (nb, _) = values(a, s), values(b, s)  # same utterances, same reference words
        utts = sorted(set(na) & set(nb))
        xa, xb = np.array([na[u] for u in utts]), np.array([nb[u] for u in utts])
        d = np.array([da[u] for u in utts])  # mel: ones (a mean); WER: reference words (a corpus rate)
        idx = rng.integers(0, len(utts), (n_boot, len(utts)))
        boot = scale * (xa[idx].sum(1) - xb[idx].sum(1)) / d[idx].sum(1)
        va, vb = scale * xa.sum() / d.sum(), scale * xb.sum() / d.sum()
        out.append(
            {
                "a": a,
                "b": b,
                "metric": metric,
                "steps": s,
                "utterances": len(utts),
                "a_value": float(va),
                "b_value": float(vb),
                "diff": float(va - vb),
                "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
                "a_better_share": float((xa < xb).mean()),
                "a_worse_share": float((xa > xb).mean()),
            }
        )
    return out
