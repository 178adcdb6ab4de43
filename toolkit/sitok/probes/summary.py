"""One experiment's understanding results: ``<exp>/probes/summary.json`` (report Table 2).

Collects each probe's ``<exp>/probes/<task>/results.json`` and, for token features, the
tokenizer's own CTC head on the test split (greedy and beam WER, paper's "CTC ASR"), with the
compression facts of the features (FPS, TPS, CN, CS, bit-rate). Keys read by the report:
``er_accuracy``, ``sv_eer``, ``ks_accuracy``, ``asr_wer`` (+ ``asr_wer_beam``, ``sv_min_dcf``,
``ctc_asr_wer``, ``ctc_asr_wer_beam``) and ``<task>_wall_seconds``.
"""

from __future__ import annotations

import json
import logging
import os
import time

from sitok.data.kaldi import read_mat, read_scp, read_table
from sitok.eval.metrics import ctc_asr
from sitok.fileio import write_text_atomic
from sitok.infer import Tokenizer
from sitok.models import SiTokConfig
from sitok.models.loading import load_model_config

logger = logging.getLogger(__name__)

METRICS = {
    "er": {"accuracy": "er_accuracy"},
    "ks": {"accuracy": "ks_accuracy"},
    "sv": {"eer": "sv_eer", "min_dcf": "sv_min_dcf"},
    "asr": {"wer": "asr_wer", "wer_beam": "asr_wer_beam"},
}


def feature_facts(features: str, model_dir: str | None = None) -> dict:
    """FPS, TPS, CN, CS, bit-rate and CTC weight of the probed features (continuous: no CN/CS/rate/CTC)."""
    if features == "tokens":
        cfg = SiTokConfig.from_dict(load_model_config(model_dir))
        return {
            "fps": cfg.token_rate,
            "tps": cfg.token_rate * cfg.num_codebooks,
            "cn": cfg.num_codebooks,
            "cs": cfg.codebook_size,
            "kbps": cfg.bits_per_second / 1000,
            "ctc_weight": cfg.ctc_weight,
        }
    fps = {"mel12.5": 12.5, "mel50": 50.0}[features]
    return {"fps": fps, "tps": None, "cn": None, "cs": None, "kbps": None, "ctc_weight": None}


def collect(
    exp_dir: str,
    name: str,
    features: str,
    model_dir: str | None = None,
    codes_dir: str | None = None,
    dump_dir: str | None = None,
    beam_size: int = 10,
) -> dict:
    """Write ``<exp_dir>/probes/summary.json`` from the finished probes (+ CTC ASR for tokens)."""
    probes_dir = os.path.join(exp_dir, "probes")
    out = {
        "format": "sitok-probes-1",
        "name": name,
        "features": features,
        "model_dir": model_dir,
        **feature_facts(features, model_dir),
        "tasks": {},
    }
    for task, keys in METRICS.items():
        path = os.path.join(probes_dir, task, "results.json")
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as fh:
            res = json.load(fh)
        out["tasks"][task] = res
        out.update({key: res.get(k) for k, key in keys.items()})
        out[f"{task}_wall_seconds"] = res.get("wall_seconds")
    if features == "tokens" and codes_dir and dump_dir:
        out.update(ctc_asr_on_codes(model_dir, codes_dir, dump_dir, beam_size))
    path = os.path.join(probes_dir, "summary.json")
    write_text_atomic(path, json.dumps(out, indent=1) + "\n")
    shown = ("er_accuracy", "sv_eer", "ks_accuracy", "asr_wer", "ctc_asr_wer", "ctc_asr_wer_beam")
    logger.info("%s: %s", path, {k: out.get(k) for k in shown})
    return out


def ctc_asr_on_codes(model_dir: str, codes_dir: str, dump_dir: str, beam_size: int = 10) -> dict:
    """Greedy + beam WER of the tokenizer's CTC head on the dumped codes of one split."""
    import torch

    t0 = time.time()
    tok = Tokenizer.from_pretrained(model_dir, vocoder="griffin_lim")
    scp = read_scp(os.path.join(codes_dir, "codes.scp"))
    texts = read_table(os.path.join(dump_dir, "text"))
    texts = {u: t for u, t in texts.items() if not t.startswith("<")}  # markers, not transcripts
    codes = {u: torch.from_numpy(read_mat(p).copy()).long() for u, p in scp.items() if u in texts}
    if not codes:
        return {"ctc_asr_wer": None, "ctc_asr_wer_beam": None, "ctc_asr_note": f"{dump_dir}: no transcripts"}
    missing = len(scp) - len(codes)
    if missing:
        logger.warning("%s: %d utterances of %s have no transcript: left out of CTC ASR", dump_dir, missing, codes_dir)
    res = ctc_asr(tok, codes, texts, beam_size=beam_size)
    if res is None:
        return {"ctc_asr_wer": None, "ctc_asr_wer_beam": None, "ctc_asr_note": "no trained CTC head (weight 0)"}
    res.update(ctc_asr_utts=len(codes), ctc_asr_seconds=round(time.time() - t0, 1))
    res["ctc_asr_set"] = os.path.basename(os.path.normpath(dump_dir))
    return res
