"""Evaluation summaries -> tables in the layout of the paper's Tables 1, 2, 3, 5, 6, 7 and 9.

Input: the ``summary.json`` files of the evaluate stage (``<exp>/eval/<set>/summary.json``),
optionally the probe results of an experiment (``<exp>/probes/summary.json``: ER, SV, KS, ASR);
experiments with probe results only (continuous features) add rows to Table 2. The LLM-ASR
(``<exp>/llm_asr/results.json``) and AR-TTS (``<exp>/tts/results.json``, Table 7) results are
read from the same experiment directories.
Each model contributes one row, at its *reported setting* (Euler steps, token-CFG scale,
vocoder; chosen by the caller, never by the test scores). Every table carries our numbers and,
in columns labelled "paper", the paper's numbers for the row that matches the configuration.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import re

import pandas as pd

from sitok.report import paper

logger = logging.getLogger(__name__)

REFINE_LABELS = {
    "decoder_ft": "+ Decoder Finetuning",
    "token_cfg": "+ Token CFG",
    "shortcut": "+ Shortcut FT",
    "light_head": "+ Light head (FT)",
    "diffusion": "R + D",
    "reparam": "+ Decoder re-parameterised",
}


# ---- loading -----------------------------------------------------------------------------------
def find_summaries(paths: list[str], set_name: str | None = None) -> list[str]:
    """summary.json files under each path: the file itself, ``<path>/summary.json``, or
    ``<path>/eval/<set>/summary.json`` (every set when ``set_name`` is None)."""
    out = []
    for p in paths:
        if os.path.isfile(p):
            found = [p]
        elif os.path.isfile(os.path.join(p, "summary.json")):
            found = [os.path.join(p, "summary.json")]
        else:
            found = sorted(glob.glob(os.path.join(p, "eval", set_name or "*", "summary.json")))
        if not found:
            for_set = f" for set {set_name}" if set_name else ""
            logger.warning("%s: no evaluation summary%s (run the evaluate stage first); left out", p, for_set)
        out += found
    return out


def load_summary(path: str) -> list[dict]:
    """One view per model of an evaluation summary: its facts as ``model``, its settings and the
    ground-truth rows as ``settings``."""
    with open(path, encoding="utf-8") as fh:
        s = json.load(fh)
    if s.get("format") != "sitok-eval-2":
        raise ValueError(f"{path}: not a sitok evaluation summary (format {s.get('format')!r})")
    return [_model_view(s, path, m) for m in s["models"].values()]


def _model_view(s: dict, path: str, m: dict) -> dict:
    rows = [r for r in s["settings"] if r["source"] == "groundtruth" or r["model"] == m["name"]]
    s = {**s, "path": path, "model": dict(m), "settings": rows}
    m = s["model"]
    if not m.get("refine"):  # model directories exported before lineage was recorded: the exp name
        exp = os.path.basename(os.path.dirname(m["model_dir"]))
        hit = re.match(r"refine_.+_(decoder_ft|token_cfg|shortcut|light_head|diffusion)$", exp)
        m["refine"] = {"kind": hit.group(1)} if hit else None
    exp = os.path.dirname(m["model_dir"])
    probes = os.path.join(exp, "probes", "summary.json")
    if os.path.exists(probes):
        with open(probes, encoding="utf-8") as fh:
            s["probes"] = json.load(fh)
    s["exp_dir"] = exp
    s["llm_asr"] = read_llm_asr(exp)
    s["tts"] = read_tts(exp)
    return s


def _read_result(exp_dir: str, sub: str, task: str, what: str) -> dict:
    """``<exp_dir>/<sub>/results.json`` checked to be a ``task`` result, or {} when there is none."""
    path = os.path.join(exp_dir, sub, "results.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as fh:
        res = json.load(fh)
    if res.get("task") != task:
        raise ValueError(f"{path}: not an {what} result (task {res.get('task')!r})")
    return res


def read_llm_asr(exp_dir: str) -> dict:
    """``<exp_dir>/llm_asr/results.json`` (LLM-ASR, recipe stage 15), or {} when there is none."""
    return _read_result(exp_dir, "llm_asr", "llm_asr", "LLM-ASR")


def read_tts(exp_dir: str) -> dict:
    """``<exp_dir>/tts/results.json`` (AR-TTS, recipe stage 16), or {} when there is none."""
    return _read_result(exp_dir, "tts", "tts", "AR-TTS")


# ---- one row per model -------------------------------------------------------------------------
def _pick(settings: list[dict], steps: int | None, cfg_scale: float | None, vocoder: str | None, token_cfg: bool):
    model = [r for r in settings if r["source"] == "model"]
    if not model:
        return None
    vocoder = vocoder if any(r["vocoder"] == vocoder for r in model) else model[0]["vocoder"]
    model = [r for r in model if r["vocoder"] == vocoder]
    avail = sorted({r["steps"] for r in model})
    s = steps if steps in avail else avail[0]
    model = [r for r in model if r["steps"] == s]
    scales = sorted({r["cfg_scale"] for r in model})
    if token_cfg:
        w = cfg_scale if cfg_scale in scales else max(scales)
    else:
        w = 1.0 if 1.0 in scales else scales[0]
    return next(r for r in model if r["cfg_scale"] == w)


def loss_label(cfg: dict, refine: dict | None) -> str:
    if refine and refine.get("kind") == "diffusion":
        return "R + D"
    return "R" if cfg.get("decoder") == "regression" else "D"


def model_rows(
    summaries: list[dict], steps: int | None = None, cfg_scale: float | None = None, vocoder: str | None = None
) -> pd.DataFrame:
    """One row per evaluated model at its reported setting, with its configuration."""
    rows = []
    for s in summaries:
        m, cfg = s["model"], s["model"]["config"]
        r = _pick(s["settings"], steps, cfg_scale, vocoder, bool(cfg.get("token_cfg")))
        if r is None:
            continue
        kind = (m.get("refine") or {}).get("kind")
        rows.append(
            {
                "experiment": m["name"],
                "set": s["set"],
                "loss": loss_label(cfg, m.get("refine")),
                "refine": kind,
                "ctc_weight": cfg["ctc_weight"],
                "cs": cfg["codebook_size"],
                "cn": cfg["num_codebooks"],
                "cd": cfg["codebook_dim"],
                "quantizer": cfg["quantizer"],
                "token_cfg": bool(cfg.get("token_cfg")),
                "light_head": int(cfg.get("light_head_layers") or 0),
                "shortcut": bool(cfg.get("shortcut")),
                "fps": m["fps"],
                "tps": m["tps"],
                "kbps": m["bits_per_second"] / 1000,
                "params_m": m["parameters"] / 1e6,
                "usage": m.get("codebook_usage"),
                "perplexity": m.get("code_perplexity"),
                **{k: r[k] for k in ("setting", "steps", "cfg_scale", "vocoder")},
                **{k: r.get(k) for k in ("wer", "sim")},
                "mos": r.get("utmos", r.get("dnsmos_ovrl")),
                "mos_judge": "UTMOS" if r.get("utmos") is not None else "DNSMOS OVRL",
                **{k: r.get(k) for k in ("pesq", "stoi", "mel_l1", "decoder_rtf")},
                "ctc_asr": m.get("ctc_asr_wer") if cfg["ctc_weight"] > 0 else None,  # untrained head: "-"
                **probe_columns(s.get("probes", {}), s.get("llm_asr", {})),
            }
        )
        if rows[-1]["ctc_asr"] is None or cfg["ctc_weight"] == 0:
            rows[-1]["ctc_asr_beam"] = None
    return pd.DataFrame(rows)


def probe_columns(probes: dict, llm_asr: dict) -> dict:
    """The understanding columns of one ``<exp>/probes/summary.json`` and the LLM-ASR result of
    the same experiment (empty dicts: all None)."""
    return {
        "asr": llm_asr.get("wer"),
        "asr_probe": probes.get("asr_wer"),
        "asr_probe_beam": probes.get("asr_wer_beam"),
        "er": probes.get("er_accuracy"),
        "sv": probes.get("sv_eer"),
        "sv_min_dcf": probes.get("sv_min_dcf"),
        "ks": probes.get("ks_accuracy"),
        "ctc_asr_beam": probes.get("ctc_asr_wer_beam"),
    }


def find_probe_summaries(paths: list[str]) -> list[dict]:
    """``<path>/probes/summary.json`` of experiments that have probe results but no evaluation
    summary (continuous-feature baselines, tokenizers only probed)."""
    out = []
    for p in paths:
        f = os.path.join(p, "probes", "summary.json")
        if os.path.isdir(p) and os.path.isfile(f) and not glob.glob(os.path.join(p, "eval", "*", "summary.json")):
            with open(f, encoding="utf-8") as fh:
                s = json.load(fh)
            if s.get("format") != "sitok-probes-1":
                raise ValueError(f"{f}: not a sitok probe summary (format {s.get('format')!r})")
            out.append({**s, "exp_dir": p, "llm_asr": read_llm_asr(p), "tts": read_tts(p)})
    return out


def groundtruth_row(summaries: list[dict], vocoder: str | None = None) -> dict | None:
    """The ground-truth-through-vocoder setting (the chosen vocoder's, else the first found)."""
    gts = [r for s in summaries for r in s["settings"] if r["source"] == "groundtruth"]
    if not gts:
        return None
    r = next((g for g in gts if g["vocoder"] == vocoder), gts[0])
    scores = {k: r.get(k) for k in ("wer", "sim", "mos", "pesq", "stoi")}
    return {**scores, "mos": r.get("utmos", r.get("dnsmos_ovrl")), "vocoder": r["vocoder"]}


# ---- tables ------------------------------------------------------------------------------------
def _fps_tps(r) -> str:
    return f"{r['fps']:g}/{r['tps']:g}"


def _signature(r, drop: tuple[str, ...]) -> tuple:
    keys = ("loss", "ctc_weight", "cs", "cn", "cd", "quantizer", "token_cfg", "light_head", "shortcut", "fps", "refine")
    return tuple(r[k] for k in keys if k not in drop)


def _table1_row(model: str, experiment: str, fps_tps, cn, kbps, r, p: dict | None) -> dict:
    """A Table 1 row: our WER, SIM, MOS, PESQ and STOI of ``r`` beside the paper's row ``p`` (None: no match)."""
    return {
        "model": model,
        "experiment": experiment,
        "FPS/TPS": fps_tps,
        "CN": cn,
        "BR (kbps)": kbps,
        **{k.upper(): r[k] for k in ("wer", "sim", "mos", "pesq", "stoi")},
        "paper row": p["row"] if p else "",
        **{f"paper {k.upper()}": p[k] if p else None for k in ("wer", "sim", "utmos")},
    }


def _main_config(r) -> bool:
    """D loss, CTC regularisation, VQ and the full decoder: the configuration of the paper's SiTok rows."""
    return r["loss"] == "D" and r["ctc_weight"] != 0 and r["quantizer"] != "fsq" and not r["light_head"]


def table1(df: pd.DataFrame, gt: dict | None) -> pd.DataFrame:
    """Main reconstruction results: ground truth, then every model; the paper's SiTok rows beside."""
    out = []
    if gt:
        out.append(_table1_row(f"Ground Truth ({gt['vocoder']})", "", "-", "-", "-", gt, paper.TABLE1[0]))
    for _, r in df.iterrows():
        kind = r["refine"] if isinstance(r["refine"], str) else None  # pandas holds a missing one as NaN
        label = REFINE_LABELS.get(kind) if kind else f"SiTok (CN = {r['cn']})"
        if kind == "token_cfg":
            label += f" (w = {r['cfg_scale']:g})"
        want = {"decoder_ft": "+ Decoder Finetuning", "token_cfg": "+ Token CFG"}.get(kind, f"SiTok (CN = {r['cn']})")
        p = next((x for x in paper.TABLE1 if x["row"] == want and (x["cn"] == r["cn"])), None)
        if not _main_config(r) or kind in ("shortcut", "light_head"):
            p = None  # ablations and refinements the paper's Table 1 has no row for
        out.append(_table1_row(label, r["experiment"], _fps_tps(r), r["cn"], r["kbps"], r, p))
    return pd.DataFrame(out)


# the paper's understanding columns ("ASR" there is the LLM-based ASR), then our extra ones
UNDERSTANDING = [("ctc_asr", "CTC ASR"), ("asr", "LLM ASR"), ("er", "ER"), ("sv", "SV"), ("ks", "KS")]
EXTRA_UNDERSTANDING = [
    ("ctc_asr_beam", "CTC ASR (beam)"),
    ("asr_probe", "ASR probe (BiLSTM)"),
    ("asr_probe_beam", "ASR probe (beam)"),
    ("sv_min_dcf", "SV minDCF"),
]
FEATURE_LABELS = {"mel12.5": "Mel (continuous, 12.5 Hz stacked)", "mel50": "Mel (continuous, 50 Hz)"}


def table2(df: pd.DataFrame, probe_only: list[dict] = ()) -> pd.DataFrame:
    """Understanding: compression figures, CTC ASR and the probes (ER, SV, KS, ASR; greedy and
    beam WER, SV minDCF). Rows: every base model of ``df``, then probe-only experiments
    (continuous features as the upper baseline; their CN/CS/bit-rate are "-")."""
    out = []
    for _, r in df[df["refine"].isna()].iterrows():
        p = next((x for x in paper.TABLE2 if x["row"] == f"SiTok (CN = {r['cn']})"), None) if _main_config(r) else None
        row = {
            "model": f"SiTok (CN = {r['cn']})",
            "experiment": r["experiment"],
            "CTC Reg.": _ctc_label(r["ctc_weight"]),
            "FPS/TPS": _fps_tps(r),
            "CN/CS": f"{r['cn']}/{r['cs']}",
            "BR (kbps)": r["kbps"],
        }
        row.update({label: r.get(k) for k, label in UNDERSTANDING + EXTRA_UNDERSTANDING})
        row["paper row"] = p["row"] if p else ""
        row.update({f"paper {label}": (p[k] if p else None) for k, label in UNDERSTANDING})
        out.append(row)
    for s in probe_only:
        tokens = s["features"] == "tokens"
        row = {
            "model": f"SiTok (CN = {s['cn']})" if tokens else FEATURE_LABELS.get(s["features"], s["features"]),
            "experiment": s["name"],
            "CTC Reg.": _ctc_label(s["ctc_weight"]) if s.get("ctc_weight") is not None else "",
            "FPS/TPS": f"{s['fps']:g}/{s['tps']:g}" if tokens else f"{s['fps']:g}/-",
            "CN/CS": f"{s['cn']}/{s['cs']}" if tokens else "-",
            "BR (kbps)": s["kbps"],
        }
        cols = {"ctc_asr": s.get("ctc_asr_wer"), **probe_columns(s, s.get("llm_asr", {}))}
        row.update({label: cols.get(k) for k, label in UNDERSTANDING + EXTRA_UNDERSTANDING})
        row["paper row"] = ""
        row.update({f"paper {label}": None for _, label in UNDERSTANDING})
        out.append(row)
    return pd.DataFrame(out)


def _ctc_label(weight) -> str:
    return f"Yes ({weight:g})" if weight and weight > 0 else "No"


def _scores(r) -> dict:
    """Our WER, SIM, MOS and understanding columns of the result row ``r``."""
    return {"WER": r["wer"], "SIM": r["sim"], "MOS": r["mos"], **{label: r[k] for k, label in UNDERSTANDING}}


def _paper_scores(p: dict | None) -> dict:
    """The same columns from the paper's matching row ``p`` (UTMOS for MOS); None where no row matches."""
    return {
        f"paper {label}": p[k] if p else None
        for k, label in [("wer", "WER"), ("sim", "SIM"), ("utmos", "UTMOS")] + UNDERSTANDING
    }


def table3(df: pd.DataFrame) -> pd.DataFrame:
    """CTC regularisation: regularised (weight > 0) vs not, by tokens per second."""
    out = []
    base = df[df["refine"].isna() & (df["loss"] == "D") & (df["quantizer"] != "fsq") & (df["light_head"] == 0)]
    for _, r in base.sort_values(["ctc_weight", "tps"], ascending=[False, True]).iterrows():
        reg = r["ctc_weight"] > 0
        p = next((x for x in paper.TABLE3 if x["ctc"] == reg and x["tps"] == r["tps"]), None)
        row = {
            "CTC Reg.": _ctc_label(r["ctc_weight"]),
            "experiment": r["experiment"],
            "FPS/TPS": _fps_tps(r),
            **_scores(r),
            **_paper_scores(p),
        }
        out.append(row)
    return pd.DataFrame(out)


def table5(df: pd.DataFrame) -> pd.DataFrame:
    """Ablations, with the configuration columns of the paper's Table 5."""
    out = []
    rows = df[df["refine"].isna() | (df["refine"] == "diffusion")]
    rows = rows[(rows["quantizer"] != "fsq") & (rows["light_head"] == 0)]
    for _, r in rows.iterrows():
        p = paper.table5_match(r["loss"], r["ctc_weight"], r["cn"], r["cd"], r["token_cfg"], r["fps"])
        row = {
            "experiment": r["experiment"],
            "Loss": r["loss"],
            "CTC W.": r["ctc_weight"],
            "CS": r["cs"],
            "CN": r["cn"],
            "CD": r["cd"],
            "Tok. CFG": "✓" if r["token_cfg"] else "×",
            "FPS": r["fps"],
            **_scores(r),
            "paper CS": p["cs"] if p else None,
            **_paper_scores(p),
        }
        out.append(row)
    return pd.DataFrame(out)


def _pairs(df: pd.DataFrame, drop: tuple[str, ...], is_variant) -> pd.DataFrame:
    """Rows that are a variant (``is_variant``) and the rows that differ from one only in ``drop``."""
    variants = df[df.apply(is_variant, axis=1)]
    keep = set()
    for _, v in variants.iterrows():
        sig = _signature(v, drop)
        keep |= set(df.index[df.apply(lambda r: _signature(r, drop) == sig, axis=1)])  # noqa: B023
    return df.loc[sorted(keep)]


def table6(df: pd.DataFrame) -> pd.DataFrame:
    """Light-weight diffusion head vs the full decoder (same configuration otherwise)."""
    rows = _pairs(df, ("light_head", "refine"), lambda r: r["light_head"] > 0)
    out = []
    for _, r in rows.sort_values("light_head").iterrows():
        p = paper.TABLE6[1 if r["light_head"] else 0]
        row = {
            "model": p["row"],
            "experiment": r["experiment"],
            "light head layers": r["light_head"],
            "steps": r["steps"],
            **{k.upper(): r[k] for k in ("wer", "sim", "mos")},
            "mel L1": r["mel_l1"],
            "decoder RTF": r["decoder_rtf"],
            **{f"paper {k.upper()}": p[k] for k in ("wer", "sim", "utmos")},
        }
        out.append(row)
    return pd.DataFrame(out)


def table9(df: pd.DataFrame) -> pd.DataFrame:
    """VQ vs FSQ (same configuration otherwise)."""
    rows = _pairs(df, ("quantizer", "cd", "cs"), lambda r: r["quantizer"] == "fsq")
    out = []
    for _, r in rows.sort_values("quantizer", key=lambda q: q != "vq").iterrows():
        p = next((x for x in paper.TABLE9 if x["quantizer"] == r["quantizer"]), None)
        row = {
            "model": f"SiTok ({r['quantizer'].upper()})",
            "experiment": r["experiment"],
            "CS": r["cs"],
            **_scores(r),
            **_paper_scores(p),
        }
        out.append(row)
    return pd.DataFrame(out)


PROMPTINGS = {"same": "same speaker", "unseen": "held-out speaker", "resynthesis": "— (reconstruction)"}


def tts_experiments(summaries: list[dict], probe_only: list[dict] = ()) -> list[dict]:
    """One entry per experiment directory with an AR-TTS result, in the order first seen:
    ``experiment`` (its name), ``exp_dir``, ``fps_tps`` (of its tokenizer, "" when unknown) and
    ``results`` (its ``tts/results.json``). A directory evaluated on several sets counts once."""
    out, seen = [], set()
    for s in list(summaries) + list(probe_only):
        if not s.get("tts") or os.path.realpath(s["exp_dir"]) in seen:
            continue
        seen.add(os.path.realpath(s["exp_dir"]))
        if "model" in s:  # an evaluation summary's view of one model
            name, fps, tps = s["model"]["name"], s["model"]["fps"], s["model"]["tps"]
        else:  # a probe-only experiment
            name, fps, tps = s["name"], s.get("fps"), s.get("tps")
        fps_tps = f"{fps:g}/{tps:g}" if fps is not None and tps is not None else ""
        out.append({"experiment": name, "exp_dir": s["exp_dir"], "fps_tps": fps_tps, "results": s["tts"]})
    return out


def _rtf(r: dict) -> float | None:
    """LM + decoder + vocoder real-time factor of a result row (None when a part was not measured)."""
    parts = [r.get("lm_rtf"), r.get("decoder_rtf"), r.get("vocoder_rtf")]
    return None if any(p is None for p in parts) else sum(parts)


def tts_system(res: dict) -> str:
    """Table 7's name of our AR-TTS run: backbone, random start, layers, guidance on the text, and
    the best of several token sequences by the CTC head."""
    init = "" if res.get("pretrained", True) else ", random init"
    scale = (res.get("sampling") or {}).get("cfg_scale", 1.0)
    cfg = "" if scale == 1.0 else f", text guidance {scale:g}"
    n = int(res.get("candidates", 1))
    best = "" if n <= 1 else f", best of {n} by CTC"
    return f"SiTok-AR-TTS (ours, {res.get('backbone')}{init}, {res.get('lm_layers')} layers{cfg}{best})"


def table7(entries: list[dict]) -> pd.DataFrame:
    """Zero-shot AR-TTS: one row per (prompting, decoder steps) of each experiment of
    ``entries`` (see ``tts_experiments``; same-speaker prompts, held-out speakers' prompts, then
    the tokenizer's reconstruction of the same utterances), then the paper's rows (its systems;
    empty cells where it gives no number)."""
    out = []
    for e in entries:
        res = e["results"]
        system = tts_system(res)
        order = list(PROMPTINGS)
        rows = sorted(
            res.get("rows", []),
            key=lambda r: (order.index(r["prompting"]) if r["prompting"] in order else len(order), r["steps"]),
        )
        for r in rows:
            out.append(
                {
                    "System": system,
                    "experiment": e["experiment"],
                    "Prompt": PROMPTINGS.get(r["prompting"], r["prompting"]),
                    "FPS/TPS": e["fps_tps"],
                    "Params (M)": res["parameters"] / 1e6 if res.get("parameters") else None,
                    "Decoder steps": r["steps"],
                    "WER": r.get("wer"),
                    "SIM": r.get("sim"),
                    "DNSMOS": r.get("dnsmos_ovrl"),
                    "RTF": _rtf(r),
                    "LM RTF": r.get("lm_rtf"),
                }
            )
    for p in paper.TABLE7:
        out.append(
            {
                "System": p["row"],
                "experiment": "paper",
                "Prompt": "zero-shot (SeedTTS test-en)",
                "FPS/TPS": p["fps_tps"],
                "Params (M)": p["params_m"],
                "Decoder steps": p["steps"],
                "WER": p["wer"],
                "SIM": p["sim"],
                "DNSMOS": None,
                "RTF": p["rtf"],
                "LM RTF": None,
            }
        )
    df = pd.DataFrame(out)
    # step counts stay integers beside the paper's missing ones (a float column would print "16.0")
    df["Decoder steps"] = pd.Series([r["Decoder steps"] for r in out], dtype=object)
    return df


# ---- output ------------------------------------------------------------------------------------
def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, bool):
        return "✓" if v else "×"
    if isinstance(v, float):
        if abs(v) >= 100 or v == int(v) and abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def markdown(df: pd.DataFrame) -> str:
    """A DataFrame as a GitHub markdown table (empty / NaN cells as "—")."""
    if df.empty:
        return "_(no rows: the experiments for this table were not evaluated)_"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(rec[c]) for c in cols) + " |" for rec in df.to_dict("records")]
    return "\n".join(lines)
