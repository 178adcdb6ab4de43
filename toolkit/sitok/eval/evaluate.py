"""The evaluate stage: reconstruction of a split by one model, scored by every judge.

    sitok evaluate -m exp/tokenizer_mini/model dump/test exp/tokenizer_mini/eval/test \
        --steps 1 4 --cfg-scales 1 --lm data/lang_unigram256/judge_lm.arpa

Settings scored: ground-truth mel through each vocoder asked (the reference rows), then the
model's reconstruction for every steps x CFG scale x vocoder. Per setting and utterance: judge
ASR hypothesis and WER, speaker SIM against the original audio, DNSMOS (or UTMOS), PESQ-WB,
STOI and the normalised log-mel L1 distance. Per model: compression figures (FPS, TPS, CN, CS,
bit-rate, codebook usage and perplexity of the split's codes), parameters, encode/decode RTF and
the CTC head's greedy ASR WER ("CTC ASR"). Writes

    out/per_utt.csv      one row per setting x utterance
    out/summary.json     settings (means, corpus WER, RTFs), model facts, judges and versions, timings
    out/results.md       the settings as a markdown table
    out/settings/*.json  one per finished setting: a re-run (or a killed one) skips them, unless the
                         model, the set, the judges or the LM changed (settings/.stamp)
    out/mels/<setting>/<utt>.npy   log-mels of a few utterances, for the report's figures
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from sitok.data.kaldi import read_mat, read_scp, read_table
from sitok.eval.asr import word_error_rate
from sitok.eval.judges import build_judge, parse_judges
from sitok.fileio import atomic_open, write_text_atomic
from sitok.infer.sets import encode_mels
from sitok.stamp import digest, digest_dump, fresh_cache

logger = logging.getLogger(__name__)

JUDGE_COLUMNS = ("wer", "sim", "dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "dnsmos_p808", "utmos", "pesq", "stoi")


def _load_set(dump_dir: str, max_utts: int, sample_rate: int):
    """Sorted utterances, texts, frame counts, ground-truth log-mels and the original audio."""
    from sitok.data.audio import load_audio

    feats = read_scp(os.path.join(dump_dir, "feats.scp"))
    wavs = read_table(os.path.join(dump_dir, "wav.scp"))
    texts = read_table(os.path.join(dump_dir, "text"))
    lacking = sorted(u for u in feats if u not in wavs or u not in texts)
    if lacking:
        logger.warning("%s: %d utterances lack audio or text; left out (first: %s)", dump_dir, len(lacking), lacking[0])
    utts = sorted(u for u in feats if u in wavs and u in texts)
    if max_utts:  # evenly spaced over the sorted set (every speaker, not the first few)
        utts = example_utts(utts, max_utts)
    if not utts:
        raise ValueError(f"{dump_dir}: no utterance with features, audio and text")
    mels = {u: torch.from_numpy(read_mat(feats[u]).copy()) for u in utts}
    audio = {u: load_audio(wavs[u], sample_rate).numpy() for u in utts}
    return utts, {u: texts[u] for u in utts}, mels, audio


@torch.no_grad()
def _decode(tok, codes: dict, frames: dict, steps: int, cfg_scale: float, temperature: float) -> tuple[dict, float]:
    from sitok.eval.refine import decode_set

    return decode_set(tok, {u: c.numpy() for u, c in codes.items()}, frames, steps, cfg_scale, temperature=temperature)


def code_statistics(codes: dict, num_codebooks: int, codebook_size: int) -> dict:
    """Codebook usage (fraction of entries used) and perplexity of a set's codes."""
    from sitok.quantizers import CodebookUsage

    usage = CodebookUsage(codebook_size, num_codebooks)
    for c in codes.values():
        usage.update(c.long()[None])
    s = usage.summary()
    return {"codebook_usage": float(s["usage"]), "code_perplexity": float(s["perplexity"])}


def ctc_greedy(ids: list[int], blank: int = 0) -> list[int]:
    """Best-path CTC: merge repeats, drop blanks. Ids are SentencePiece ids (blank = id 0, the
    vocabulary's pad piece, as in the training targets)."""
    return [i for j, i in enumerate(ids) if i != blank and (j == 0 or ids[j - 1] != i)]


@torch.no_grad()
def ctc_asr(tok, codes: dict, texts: dict, beam_size: int = 0) -> dict | None:
    """The tokenizer's own CTC head on the codes -> WER (paper "CTC ASR"): greedy, and with
    ``beam_size`` > 0 also speechbrain's CTC prefix beam search (no LM)."""
    import sentencepiece as spm

    from sitok.infer.sets import length_batches
    from sitok.layers import lengths_to_mask
    from sitok.probes.brain import ctc_beam_searcher

    sp_path = os.path.join(tok.model_dir or "", "sp.model")
    if tok.model.ctc is None or tok.model.config.ctc_weight == 0 or not os.path.exists(sp_path):
        return None  # no CTC head, or one never trained (weight 0): the paper's "-"
    sp = spm.SentencePieceProcessor(model_file=sp_path)
    searcher = ctc_beam_searcher(sp, beam_size) if beam_size > 0 else None
    hyps, beam_hyps = {}, {}
    for batch in length_batches({u: c.shape[1] for u, c in codes.items()}):
        lengths = torch.tensor([codes[u].shape[1] for u in batch])
        c = torch.nn.utils.rnn.pad_sequence([codes[u].T for u in batch], batch_first=True).transpose(1, 2)
        mask = lengths_to_mask(lengths, c.shape[2]).to(tok.device)
        log_probs = tok.model.ctc_logits(c.to(tok.device), mask).log_softmax(-1).cpu()  # causal: no leak back
        lengths = tok.model.ctc_lengths(lengths)
        best = log_probs.argmax(-1)
        for i, u in enumerate(batch):
            hyps[u] = sp.decode(ctc_greedy(best[i, : lengths[i]].tolist()))
        if searcher is not None:
            for u, h in zip(batch, searcher(log_probs, lengths.float() / log_probs.shape[1])):
                beam_hyps[u] = h[0].text
    utts = sorted(codes)
    refs = [texts[u] for u in utts]
    out = {"ctc_asr_wer": 100 * word_error_rate(refs, [hyps[u] for u in utts]), "ctc_decoding": "greedy"}
    if searcher is not None:
        out.update(
            {
                "ctc_asr_wer_beam": 100 * word_error_rate(refs, [beam_hyps[u] for u in utts]),
                "ctc_beam_size": beam_size,
                "ctc_decoding": "greedy + beam",
            }
        )
    return out


def _score(judges: dict, ref: dict, hyp: dict, texts: dict, sr: int, progress: bool, desc: str) -> tuple[dict, dict]:
    """Every judge on every utterance, in two threads (the judges' native code releases the GIL):
    the ASR judge in sorted order (its state carries over utterances) with the speaker judge, and
    MOS, PESQ and STOI beside them (measured on the mini test split: 68 + 84 s vs 135 + 22 + 14 s)."""
    from tqdm import tqdm

    utts = sorted(hyp)
    first = ("asr", "sim")
    groups = [[k for k in judges if k in first], [k for k in judges if k not in first]]
    groups = [g for g in groups if g]
    bar = tqdm(total=len(utts) * len(judges), desc=desc, unit="score", disable=not progress, mininterval=2)
    seconds = {k: 0.0 for k in judges}

    def run(kinds):
        out = {u: {} for u in utts}
        for u in utts:
            for k in kinds:
                t0 = time.perf_counter()
                out[u].update(judges[k].score(ref[u], hyp[u], sr, texts[u]))
                seconds[k] += time.perf_counter() - t0
                bar.update(1)
        return out

    with ThreadPoolExecutor(max_workers=len(groups)) as pool:
        parts = list(pool.map(run, groups))
    bar.close()
    scores = {u: {k: v for p in parts for k, v in p[u].items()} for u in utts}
    return scores, seconds


def _summarise(rows: list[dict], texts: dict) -> dict:
    """Means of the per-utterance scores; corpus-level WER from the hypotheses."""
    out = {}
    if rows and "hyp" in rows[0]:
        out["wer"] = 100 * word_error_rate([texts[r["utt"]] for r in rows], [r["hyp"] for r in rows])
    for k in JUDGE_COLUMNS[1:] + ("mel_l1",):
        vals = [r[k] for r in rows if k in r and r[k] is not None and np.isfinite(r[k])]
        if vals:
            out[k] = float(np.mean(vals))
        if k == "pesq" and len(vals) < len(rows):
            out["pesq_nan"] = len(rows) - len(vals)
    return out


def evaluate(
    model_dir: str,
    dump_dir: str,
    out_dir: str,
    *,
    steps=(1,),
    cfg_scales=(1.0,),
    vocoders=("auto",),
    judges: dict | None = None,
    judge_opts: dict | None = None,
    lm: str | None = None,
    groundtruth: bool = True,
    max_utts: int = 0,
    seed: int = 0,
    progress: bool = True,
    name: str | None = None,
    examples: int = 3,
    temperature: float = 1.0,
) -> dict:
    """Score one model on one split (see the module docstring); returns the summary. Every decode
    starts from noise scaled by ``temperature`` (settings at another value than 1 are named
    ``..._temp<t>``, so they never reuse rows of another temperature)."""
    import pandas as pd

    from sitok.eval.refine import mel_l1
    from sitok.infer import Tokenizer
    from sitok.infer.tokenizer import check_temperature

    check_temperature(temperature)
    temp_tag = "" if temperature == 1.0 else f"_temp{temperature:g}"

    t_start = time.time()
    judges = parse_judges(None) if judges is None else dict(judges)
    judge_opts = dict(judge_opts or {})
    name = name or os.path.basename(os.path.dirname(os.path.abspath(model_dir)))
    toks = {}
    for v in vocoders:
        tok = Tokenizer.from_pretrained(model_dir, vocoder=v)
        toks[getattr(tok.vocoder, "name", v)] = tok  # "auto" resolves to the directory's vocoder
    tok = next(iter(toks.values()))
    cfg = tok.model.config
    if cfg.decoder != "diffusion":
        steps, cfg_scales = [0], [1.0]  # regression decoder: one pass, no ODE
    elif not cfg.token_cfg:
        dropped = [w for w in cfg_scales if w != 1.0]
        if dropped:
            logger.info("%s has no token CFG: scales %s left out", name, dropped)
        cfg_scales = [1.0]
    utts, texts, mels, audio = _load_set(dump_dir, max_utts, tok.sample_rate)
    frames = {u: m.shape[0] for u, m in mels.items()}
    audio_s = sum(a.shape[-1] for a in audio.values()) / tok.sample_rate
    logger.info(
        "%s on %s: %d utterances (%.1f min); steps %s, CFG %s, vocoders %s; judges %s",
        name,
        dump_dir,
        len(utts),
        audio_s / 60,
        list(steps),
        list(cfg_scales),
        list(toks),
        judges,
    )

    built, judge_info = {}, {}
    for kind, backend in judges.items():
        opts = dict(judge_opts.get(kind, {}))
        if kind == "asr" and backend == "pocketsphinx" and lm:
            opts.setdefault("lm", lm)
        built[kind] = build_judge(kind, backend, **opts)
        judge_info[kind] = built[kind].info()

    codes, enc_s = encode_mels(tok, mels)
    model_facts = {
        "name": name,
        "model_dir": os.path.abspath(model_dir),
        "config": cfg.to_dict(),
        "parameters": tok.model.num_parameters(),
        "fps": cfg.token_rate,
        "tps": cfg.token_rate * cfg.num_codebooks,
        "num_codebooks": cfg.num_codebooks,
        "codebook_size": cfg.codebook_size,
        "bits_per_second": cfg.bits_per_second,
        "encode_rtf": enc_s / audio_s,
        **code_statistics(codes, cfg.num_codebooks, cfg.codebook_size),
    }
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as fh:
        model_facts["refine"] = json.load(fh).get("refine")
    t0 = time.time()
    ctc = ctc_asr(tok, codes, texts)
    if ctc:
        model_facts.update(ctc)
        logger.info(
            "CTC ASR (greedy, the tokenizer's CTC head): WER %.2f %% (%.1f s)", ctc["ctc_asr_wer"], time.time() - t0
        )

    settings = []
    if groundtruth:
        settings += [("groundtruth", 0, 1.0, v) for v in toks]
    settings += [("model", s, w, v) for v in toks for s in steps for w in cfg_scales]
    inputs = {"model": digest(model_dir), "feats": digest_dump(dump_dir), "lm": digest(lm) if lm else "none"}
    options = {"max_utts": max_utts, "seed": seed, "judges": json.dumps(judge_info, sort_keys=True, default=str)}
    fresh_cache(
        os.path.join(out_dir, "settings"), {"inputs": inputs, "options": {k: str(v) for k, v in options.items()}}
    )
    rows, per_utt = [], []
    for source, s, w, v in settings:
        key = f"groundtruth_{v}" if source == "groundtruth" else f"steps{s}_cfg{w:g}_{v}{temp_tag}"
        path = os.path.join(out_dir, "settings", f"{key}.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                done = json.load(fh)
            logger.info("%s: done before, kept (%s)", key, path)
        else:
            t0 = time.time()
            vt = toks[v]
            if source == "groundtruth":
                hyp_mels, dec_s = mels, 0.0
            else:
                hyp_mels, dec_s = _decode(vt, codes, frames, s, w, temperature)
            _save_examples(out_dir, key, hyp_mels, utts, examples)
            t1 = time.perf_counter()
            hop = vt.mel_cfg.hop_length
            hyp = {u: vt.vocoder(hyp_mels[u].to(vt.device)).cpu().numpy()[: frames[u] * hop] for u in utts}
            voc_s = time.perf_counter() - t1
            scores, judge_s = _score(built, audio, hyp, texts, vt.sample_rate, progress, key)
            urows = []
            for u in utts:
                r = {"setting": key, "utt": u, **scores[u]}
                r["mel_l1"] = 0.0 if source == "groundtruth" else mel_l1(vt, hyp_mels[u], mels[u])
                if "hyp" in r:
                    r["ref"] = texts[u]
                    r["utt_wer"] = 100 * word_error_rate([texts[u]], [r["hyp"]])
                urows.append(r)
            row = {
                "setting": key,
                "source": source,
                "steps": s,
                "cfg_scale": w,
                "vocoder": v,
                "temperature": 1.0 if source == "groundtruth" else temperature,
                **_summarise(urows, texts),
                "decoder_rtf": dec_s / audio_s,
                "vocoder_rtf": voc_s / audio_s,
                "judge_seconds": {k: round(x, 2) for k, x in judge_s.items()},
                "seconds": time.time() - t0,
            }
            done = {"row": row, "per_utt": urows}
            write_text_atomic(path, json.dumps(done) + "\n")
            logger.info(
                "%s: %s (%.0f s; judges: %s)",
                key,
                _brief(row),
                row["seconds"],
                ", ".join(f"{k} {x:.0f} s" for k, x in judge_s.items()),
            )
        rows.append(done["row"])
        per_utt.extend(done["per_utt"])
    with atomic_open(os.path.join(out_dir, "per_utt.csv")) as fh:
        pd.DataFrame(per_utt).to_csv(fh, index=False)
    summary = {
        "format": "sitok-eval-1",
        "dump_dir": os.path.abspath(dump_dir),
        "set": os.path.basename(dump_dir.rstrip("/")),
        "utterances": len(utts),
        "audio_seconds": audio_s,
        "model": model_facts,
        "judges": judge_info,
        "settings": rows,
        "wall_seconds": time.time() - t_start,
        "seed": seed,
    }
    write_text_atomic(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=1) + "\n")
    write_text_atomic(os.path.join(out_dir, "results.md"), settings_markdown(summary) + "\n")
    logger.info(
        "%s: %d settings x %d utterances in %.0f s -> %s", name, len(rows), len(utts), summary["wall_seconds"], out_dir
    )
    return summary


def example_utts(utts: list[str], n: int) -> list[str]:
    """``n`` evenly spaced utterances of a sorted set (``--max-utts``; the report's mel figures)."""
    if n <= 0 or not utts:
        return []
    return [utts[i] for i in sorted(set(np.linspace(0, len(utts) - 1, min(n, len(utts))).round().astype(int)))]


def _save_examples(out_dir: str, key: str, mels: dict, utts: list[str], n: int) -> None:
    """Log-mels of a few utterances as out/mels/<setting>/<utt>.npy (for the report's figures)."""
    for u in example_utts(utts, n):
        with atomic_open(os.path.join(out_dir, "mels", key, f"{u}.npy"), "wb") as fh:
            np.save(fh, mels[u].float().numpy())


def _brief(row: dict) -> str:
    parts = []
    for k, fmt in (
        ("wer", "WER %.2f %%"),
        ("sim", "SIM %.3f"),
        ("dnsmos_ovrl", "OVRL %.2f"),
        ("utmos", "UTMOS %.2f"),
        ("pesq", "PESQ %.2f"),
        ("stoi", "STOI %.3f"),
        ("mel_l1", "mel L1 %.4f"),
    ):
        if row.get(k) is not None:
            parts.append(fmt % row[k])
    return ", ".join(parts)


def settings_markdown(summary: dict) -> str:
    """The settings of one evaluation as a markdown table."""
    cols = [
        ("wer", "WER %", "{:.2f}"),
        ("sim", "SIM", "{:.3f}"),
        ("dnsmos_ovrl", "DNSMOS OVRL", "{:.2f}"),
        ("dnsmos_p808", "P.808", "{:.2f}"),
        ("utmos", "UTMOS", "{:.2f}"),
        ("pesq", "PESQ", "{:.2f}"),
        ("stoi", "STOI", "{:.3f}"),
        ("mel_l1", "mel L1", "{:.4f}"),
        ("decoder_rtf", "decoder RTF", "{:.4f}"),
    ]
    rows = summary["settings"]
    cols = [c for c in cols if any(r.get(c[0]) is not None for r in rows)]
    head = "| setting | steps | CFG w | vocoder | " + " | ".join(c[1] for c in cols) + " |"
    lines = [head, "|" + "---|" * (4 + len(cols))]
    for r in rows:
        cells = [fmt.format(r[k]) if r.get(k) is not None else "" for k, _, fmt in cols]
        steps = "—" if r["source"] == "groundtruth" else ("regression" if r["steps"] == 0 else str(r["steps"]))
        label = "ground truth" if r["source"] == "groundtruth" else summary["model"]["name"]
        lines.append(f"| {label} | {steps} | {r['cfg_scale']:g} | {r['vocoder']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
