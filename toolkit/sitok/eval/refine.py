"""Reconstruction of a set by several models and decode settings (recipe stage 11).

For every model x Euler steps x token-CFG scale x start-noise temperature: decode the set's
codes, score the normalised log-mel L1 distance to the ground truth (the training space of the
decoder; lower is better), the Fréchet mel distance (FMD: the Fréchet distance between the
Gaussians fitted to all decoded and all ground-truth normalised log-mel frames of the set; a
distribution distance, like the FID by which shortcut models are judged, where L1 to one
reference rewards the conditional mean) and the decoder's real-time factor; at the steps in
``wer_steps`` also vocode and score the offline ASR judge's WER, for the plain setting (w = 1,
temperature 1) and for the other setting with the lowest mean mel distance over the steps (the
CFG scale of a token-CFG model, a temperature), selected on this set or, with ``select_from``,
on an earlier run's results (a dev set's). Ground-truth mel through each available vocoder
gives the reference rows. Writes ``per_utt.csv``, ``results.csv``, ``results.md`` and ``summary.json``.

    sitok eval-refine dump/test exp/tokenizer_mini/codes/test exp/refine_eval_mini/test \
        --models base=exp/tokenizer_mini/model shortcut=exp/refine_mini_shortcut/model \
        --steps 1 2 4 --cfg-scales 1 2 --wer-steps 1 4 --lm data/lang_unigram256/judge_lm.arpa
    # tune the temperature on dev (no judge), score test at the dev-selected one:
    sitok eval-refine dump/dev ... exp/refine_eval_mini/dev --models ... --temperatures 0 0.5 1
    sitok eval-refine dump/test ... exp/refine_eval_mini/test --models ... --temperatures 0 0.5 1 \
        --wer-steps 1 2 4 --select-from exp/refine_eval_mini/dev
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import torch

from sitok.data.kaldi import read_mat, read_scp, read_table
from sitok.fileio import atomic_open, write_text_atomic
from sitok.infer.sets import length_batches
from sitok.stamp import digest, digest_dump, fresh_cache

logger = logging.getLogger(__name__)


@torch.no_grad()
def decode_set(
    tok, codes: dict, frames: dict, steps: int, cfg_scale: float = 1.0, seed: int = 0, temperature: float = 1.0
):
    """Decode every utterance (batched); returns ({utt: log-mel [frames, 128]}, decoder seconds)."""
    out, seconds = {}, 0.0
    for batch in length_batches({u: codes[u].shape[1] for u in codes}):
        c = torch.nn.utils.rnn.pad_sequence(
            [torch.from_numpy(codes[u].T.astype(np.int64)) for u in batch], batch_first=True
        ).transpose(1, 2)  # [B, CN, T]
        lengths = torch.tensor([codes[u].shape[1] for u in batch])
        t0 = time.perf_counter()
        mel = tok.decode_mel(c, steps=steps, seed=seed, lengths=lengths, cfg_scale=cfg_scale, temperature=temperature)
        seconds += time.perf_counter() - t0
        for i, u in enumerate(batch):
            out[u] = mel[i, : frames[u]].cpu()
    return out, seconds


def mel_l1(tok, hyp: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean |cmvn(hyp) - cmvn(ref)| over the frames both have (normalised log-mel L1)."""
    n = min(hyp.shape[0], ref.shape[0])
    return float((tok.cmvn(hyp[:n].to(tok.device)) - tok.cmvn(ref[:n].to(tok.device))).abs().mean())


def gaussian(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the rows of ``x`` [N, D], in float64."""
    x = np.asarray(x, dtype=np.float64)
    return x.mean(0), np.cov(x, rowvar=False)


def frechet_distance(a, b) -> float:
    """Fréchet distance between two Gaussians, each given as rows [N, D] or as (mean, cov):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))."""
    from scipy import linalg

    (mu_a, s_a), (mu_b, s_b) = (g if isinstance(g, tuple) else gaussian(g) for g in (a, b))
    root = linalg.sqrtm(s_a @ s_b)
    root = root.real if np.iscomplexobj(root) else root  # numerical noise in the imaginary part
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2.0 * root))


def _wer(tok, asr, mels: dict, texts: dict, progress: bool) -> tuple[float, list]:
    """Vocode every mel and transcribe it with the judge (sorted order, see PocketSphinxASR); WER."""
    from tqdm import tqdm

    from sitok.data.audio import resample
    from sitok.eval.asr import word_error_rate

    utts = sorted(mels)
    hyps = []
    for u in tqdm(utts, desc="vocode + asr", unit="utt", disable=not progress, mininterval=2):
        wav = resample(tok.vocoder(mels[u].to(tok.device)).cpu(), tok.sample_rate, 16000)
        hyps.append(asr.transcribe(wav.numpy(), 16000))
    refs = [texts[u] for u in utts]
    return word_error_rate(refs, hyps), list(zip(utts, refs, hyps))


def setting_key(name: str, vocoder: str, steps: int, cfg_scale: float, temperature: float) -> str:
    """File name of a scored setting (temperature 1 keeps the name it had before temperatures)."""
    key = f"{name}_{vocoder}_steps{steps}_cfg{cfg_scale:g}"
    return key if temperature == 1.0 else f"{key}_temp{temperature:g}"


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
        vals = [
            r["mel_l1"] for r in mine if r["steps"] in use and r["cfg_scale"] == w and r.get("temperature", 1.0) == tau
        ]
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
    """Score ``models`` (name -> model dir) on a set; see the module docstring. Returns the rows."""
    import pandas as pd

    from sitok.infer import Tokenizer
    from sitok.infer.tokenizer import check_temperature

    for tau in temperatures:  # before any work, not at the first decode
        check_temperature(tau)
    selection_rows = None
    if select_from:
        path = os.path.join(select_from, "results.csv")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no eval-refine results to select settings from")
        selection_rows = pd.read_csv(path).to_dict("records")
    feats = read_scp(os.path.join(dump_dir, "feats.scp"))
    texts = read_table(os.path.join(dump_dir, "text"))
    frames = {u: int(n) for u, n in read_table(os.path.join(dump_dir, "utt2num_frames")).items()}
    codes_scp = read_scp(os.path.join(codes_dir, "codes.scp"))
    missing = sorted(set(feats) - set(codes_scp))
    if missing:
        logger.warning(
            "%s: %d utterances of %s have no codes; left out (first: %s)", codes_dir, len(missing), dump_dir, missing[0]
        )
    utts = sorted(set(feats) & set(codes_scp))[: max_utts or None]
    codes = {u: read_mat(codes_scp[u]) for u in utts}
    ref = {u: torch.from_numpy(read_mat(feats[u]).copy()) for u in utts}
    audio_s = sum(frames[u] for u in utts) / 50.0
    asr = None
    if wer_steps:
        from sitok.eval.asr import PocketSphinxASR

        asr = PocketSphinxASR(lm=lm)
    os.makedirs(out_dir, exist_ok=True)
    rows, per_utt = [], []
    t_start = time.time()
    done_dir = os.path.join(out_dir, "rows")  # one JSON per finished setting: a re-run skips them
    inputs = {f"model_{n}": digest(d) for n, d in models.items()}
    inputs.update(feats=digest_dump(dump_dir), codes=digest(codes_dir), lm=digest(lm) if lm else "none")
    options = {"max_utts": str(max_utts), "vocoder": str(vocoder)}
    fresh_cache(done_dir, {"inputs": inputs, "options": options}, out_dir)  # rows of other inputs go

    def cached(key):
        path = os.path.join(done_dir, f"{key}.json")
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)

    def keep(key, row):
        write_text_atomic(os.path.join(done_dir, f"{key}.json"), json.dumps({"row": row, "per_utt": []}))
        rows.append(row)

    # reference rows: ground-truth mel -> each vocoder a model directory offers
    vocoders = {"griffin_lim": next(iter(models.values()))}
    for d in models.values():
        if os.path.exists(os.path.join(d, "vocoder", "config.json")):
            vocoders["vocos"] = d
            break
    for voc, src in vocoders.items() if asr is not None else ():
        key = f"groundtruth_{voc}"
        if (c := cached(key)) is not None:
            rows.append(c["row"])
            continue
        tok = Tokenizer.from_pretrained(src, vocoder=voc)
        t0 = time.time()
        wer, hyp_rows = _wer(tok, asr, ref, texts, progress)
        _write_hyps(out_dir, key, hyp_rows)
        keep(
            key,
            {
                "model": "ground truth",
                "steps": 0,
                "cfg_scale": 1.0,
                "temperature": 1.0,
                "vocoder": voc,
                "mel_l1": 0.0,
                "fmd": 0.0,
                "wer": 100 * wer,
                "decoder_rtf": 0.0,
            },
        )
        logger.info("ground-truth mel -> %s: WER %.2f %% (%.0f s)", voc, 100 * wer, time.time() - t0)
    # 1) mel distance and decoder RTF of every setting; 2) WER at wer_steps for the plain setting
    # (w = 1, temperature 1) and the other setting with the lowest mean mel distance
    for name, model_dir in models.items():
        tok = Tokenizer.from_pretrained(model_dir, vocoder=vocoder)
        voc = getattr(tok.vocoder, "name", "custom")
        scales = [w for w in cfg_scales if w == 1.0 or tok.model.config.token_cfg] or [1.0]
        settings = [(float(w), float(tau)) for w in scales for tau in temperatures]
        ref_n = None  # the set in this model's CMVN and its frame Gaussian: once per model, when needed
        l1 = {}
        for w, tau in settings:
            for s in steps:
                key = setting_key(name, voc, s, w, tau)
                if (c := cached(key)) is None:
                    t0 = time.time()
                    mels, dec_s = decode_set(tok, codes, frames, s, w, temperature=tau)
                    if ref_n is None:
                        ref_n = {u: tok.cmvn(ref[u].to(tok.device)).cpu() for u in utts}
                        ref_gauss = gaussian(torch.cat([ref_n[u] for u in utts]).numpy())
                    hyp_n = {u: tok.cmvn(mels[u].to(tok.device)).cpu() for u in utts}  # normalised once, used twice
                    cut = {u: min(len(hyp_n[u]), len(ref_n[u])) for u in utts}
                    dists = {u: float((hyp_n[u][: cut[u]] - ref_n[u][: cut[u]]).abs().mean()) for u in utts}
                    fmd = frechet_distance(torch.cat([hyp_n[u][: cut[u]] for u in utts]).numpy(), ref_gauss)
                    row = {
                        "model": name,
                        "steps": s,
                        "cfg_scale": w,
                        "temperature": tau,
                        "vocoder": voc,
                        "mel_l1": float(np.mean(list(dists.values()))),
                        "fmd": fmd,
                        "wer": None,
                        "decoder_rtf": dec_s / audio_s,
                    }
                    c = {
                        "row": row,
                        "per_utt": [
                            {"model": name, "steps": s, "cfg_scale": w, "temperature": tau, "utt": u, "mel_l1": d}
                            for u, d in dists.items()
                        ],
                    }
                    write_text_atomic(os.path.join(done_dir, f"{key}.json"), json.dumps(c))
                    logger.info(
                        "%s steps=%d cfg=%g temperature=%g: mel L1 %.4f, FMD %.3f, decoder RTF %.4f (%.0f s)",
                        name,
                        s,
                        w,
                        tau,
                        row["mel_l1"],
                        row["fmd"],
                        row["decoder_rtf"],
                        time.time() - t0,
                    )
                for r in (c["row"], *c["per_utt"]):
                    r.setdefault("temperature", 1.0)  # rows cached before temperatures existed
                l1[(w, tau, s)] = c
        if selection_rows is None:
            best = select_setting([c["row"] for c in l1.values()], name, settings, list(steps), out_dir)
        else:
            best = select_setting(selection_rows, name, settings, list(steps), select_from)
        wer_settings = [(1.0, 1.0)] + ([best] if best is not None else [])
        if best is not None:
            logger.info(
                "%s: setting with the lowest mean mel distance (selected on %s): cfg_scale %g, temperature %g",
                name,
                select_from or dump_dir,
                *best,
            )
        for (w, tau, s), c in l1.items():
            row = c["row"]
            if asr is not None and s in wer_steps and (w, tau) in wer_settings and row["wer"] is None:
                key = setting_key(name, voc, s, w, tau)
                t0 = time.time()
                mels, _ = decode_set(tok, codes, frames, s, w, temperature=tau)
                wer, hyp_rows = _wer(tok, asr, mels, texts, progress)
                row["wer"] = 100 * wer
                _write_hyps(out_dir, key, hyp_rows)
                write_text_atomic(os.path.join(done_dir, f"{key}.json"), json.dumps(c))
                logger.info(
                    "%s steps=%d cfg=%g temperature=%g (%s): WER %.2f %% (%.0f s)",
                    name,
                    s,
                    w,
                    tau,
                    voc,
                    row["wer"],
                    time.time() - t0,
                )
            rows.append(row)
            per_utt.extend(c["per_utt"])
    df = pd.DataFrame(rows)
    _save_csv(df, os.path.join(out_dir, "results.csv"))
    _save_csv(pd.DataFrame(per_utt), os.path.join(out_dir, "per_utt.csv"))
    write_text_atomic(os.path.join(out_dir, "results.md"), results_markdown(df) + "\n")
    summary = {
        "dump_dir": dump_dir,
        "codes_dir": codes_dir,
        "utterances": len(utts),
        "audio_seconds": audio_s,
        "models": models,
        "asr_judge": None if asr is None else f"{asr.name} {asr.version}",
        "lm": lm,
        "wall_seconds": time.time() - t_start,
        "rows": rows,
    }
    write_text_atomic(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=1) + "\n")
    logger.info("%s: %d rows, %d utterances, %.0f s", out_dir, len(rows), len(utts), time.time() - t_start)
    return rows


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


def utterance_errors(hyps_tsv: str) -> dict[str, tuple[int, int]]:
    """{utt: (word errors, reference words)} of a judge's ``hyps/<setting>.tsv`` (utt, ref, hyp),
    counted as :func:`sitok.eval.asr.word_error_rate` counts them (:func:`scored_pairs`)."""
    import jiwer
    import pandas as pd

    from sitok.eval.asr import scored_pairs

    df = pd.read_csv(hyps_tsv, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    out = {}
    for i, r, h in scored_pairs(list(df["ref"]), list(df["hyp"])):
        m = jiwer.process_words(r, h)
        out[df["utt"][i]] = (m.substitutions + m.deletions + m.insertions, len(r.split()))
    return out


def paired_comparison(
    eval_dir: str, a: str, b: str, steps: list[int], metric: str = "mel_l1", n_boot: int = 2000, seed: int = 0
) -> list[dict]:
    """Two settings of one eval-refine output (``NAME[@TEMPERATURE[@CFG_SCALE]]`` each) compared
    utterance by utterance, for each of ``steps``: the set's value for each (``mel_l1``: mean of
    the per-utterance distances, from per_utt.csv; ``wer``: corpus WER in %, from the judge's
    hyps/*.tsv), the difference a - b, its 95 % paired-bootstrap interval (``n_boot`` resamples of
    the utterances both have) and the shares of utterances where ``a`` is better and worse."""
    import pandas as pd

    if metric not in ("mel_l1", "wer"):
        raise ValueError(f"metric must be mel_l1|wer, got {metric!r}")
    per_utt = None
    if metric == "mel_l1":
        path = os.path.join(eval_dir, "per_utt.csv")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: not an eval-refine output directory (run sitok eval-refine first)")
        per_utt = pd.read_csv(path)
        per_utt = per_utt.assign(temperature=per_utt["temperature"].fillna(1.0) if "temperature" in per_utt else 1.0)

    def values(spec: str, s: int) -> tuple[dict, dict]:  # {utt: numerator}, {utt: denominator}
        name, tau, w = parse_setting(spec)
        if metric == "mel_l1":
            sel = per_utt[
                (per_utt.model == name) & (per_utt.steps == s) & (per_utt.temperature == tau) & (per_utt.cfg_scale == w)
            ]
            if sel.empty:
                raise ValueError(
                    f"{eval_dir}/per_utt.csv: no rows for {spec} at {s} steps (scored: {sorted(set(per_utt.model))})"
                )
            num = dict(zip(sel["utt"], sel["mel_l1"]))
            return num, dict.fromkeys(num, 1.0)
        found = [
            f
            for f in (
                os.path.join(eval_dir, "hyps", setting_key(name, v, s, w, tau) + ".tsv")
                for v in ("griffin_lim", "vocos", "custom")
            )
            if os.path.exists(f)
        ]
        if len(found) != 1:
            raise ValueError(
                f"{eval_dir}/hyps: {'no' if not found else 'more than one'} judge output for {spec} at "
                f"{s} steps (the judge runs at --wer-steps, for the plain and the selected setting)"
            )
        errs = utterance_errors(found[0])
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


def results_markdown(df) -> str:
    """The rows as a markdown table: model, vocoder, steps, CFG scale, temperature, mel L1, FMD, WER,
    decoder RTF."""
    lines = [
        "| model | vocoder | steps | CFG w | temperature | normalised log-mel L1 | FMD | judge WER (%) | decoder RTF |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def num(v, fmt):  # rows cached before a column existed hold None (NaN in a frame)
        return "" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)

    for r in df.to_dict("records"):
        steps = "—" if r["steps"] == 0 else str(int(r["steps"]))
        tau = r.get("temperature")
        tau = 1.0 if tau is None or np.isnan(tau) else tau  # rows cached before temperatures: 1
        tau = "—" if r["steps"] == 0 else f"{tau:g}"
        lines.append(
            f"| {r['model']} | {r['vocoder']} | {steps} | {r['cfg_scale']:g} | {tau} | {r['mel_l1']:.4f} | "
            f"{num(r.get('fmd'), '.3f')} | {num(r['wer'], '.2f')} | {r['decoder_rtf']:.4f} |"
        )
    return "\n".join(lines)


def _save_csv(df, path: str) -> None:
    with atomic_open(path) as fh:
        df.to_csv(fh, index=False)


def _write_hyps(out_dir: str, name: str, rows: list) -> None:
    body = "utt\tref\thyp\n" + "".join(f"{u}\t{r}\t{h}\n" for u, r, h in rows)
    write_text_atomic(os.path.join(out_dir, "hyps", f"{name}.tsv"), body)
