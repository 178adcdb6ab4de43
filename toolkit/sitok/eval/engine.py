"""The evaluation engine: one set, a grid of settings, each decoded, vocoded and judged the same
way, one cache file per setting and one summary format. ``sitok evaluate``, ``eval-refine`` and
``judge-wer`` are configurations of it.

    data = EvalSet.load("dump/test", max_utts=40)
    eng = Engine(data, "exp/tokenizer_mini/eval/test", build_judges(parse_judges(None), lm="judge_lm.arpa"))
    eng.add_model("base", "exp/tokenizer_mini/model")
    for v in eng.load_vocoders(["auto"], "base"):
        eng.score(Setting("model", "base", v, steps=4))
    summary = eng.write()

A setting is one of

    original      the recordings themselves (judges that compare with a reference are left out)
    groundtruth   the ground-truth log-mel through a vocoder (the reference rows)
    model         a model's codes -> decoder (Euler steps, token-CFG scale, start-noise temperature) -> vocoder

Every decoded setting gets the normalised log-mel L1 distance to the ground truth (the decoder's
training space; per utterance and its mean), the Fréchet mel distance of its frames (FMD) and the
decoder's real-time factor; a judged setting is vocoded and scored by every judge (WER from the ASR
judge's transcripts, means of the rest). ``write`` puts into the output directory

    summary.json    format sitok-eval-2: the set, the models' facts, the judges, one row per setting
    results.csv     the rows; results.md: the same as a markdown table
    per_utt.csv     one row per setting x utterance (mel L1, the judges' scores and transcripts)
    cache/<setting>.json   a finished setting: reused while its fingerprint (the set, the model's and
                    vocoder's weights, the setting, the seed) and its judges are unchanged
    mels/<setting>/<utt>.npy   decoded log-mels of ``examples`` utterances (the report's figures)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from sitok.data.audio import AudioError, load_audio
from sitok.data.kaldi import read_mat, read_scp, read_table
from sitok.data.mel import MelConfig
from sitok.eval.asr import word_error_rate
from sitok.eval.judges import build_judges, parse_judges, score_set
from sitok.eval.metrics import code_statistics, ctc_asr, frechet_distance, gaussian, mel_l1
from sitok.fileio import atomic_open, write_text_atomic
from sitok.infer import Tokenizer
from sitok.infer.sets import encode_mels, length_batches, state_digest
from sitok.infer.tokenizer import check_temperature
from sitok.infer.vocoder import load_vocoder
from sitok.stamp import digest, digest_dump, fresh_cache

logger = logging.getLogger(__name__)

FORMAT = "sitok-eval-2"
GROUND_TRUTH, ORIGINAL = "ground truth", "original"
MEAN_COLUMNS = ("sim", "dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "dnsmos_p808", "utmos", "pesq", "stoi", "mel_l1")
MARKDOWN = [
    ("wer", "WER %", "{:.2f}"),
    ("sim", "SIM", "{:.3f}"),
    ("dnsmos_ovrl", "DNSMOS OVRL", "{:.2f}"),
    ("dnsmos_p808", "P.808", "{:.2f}"),
    ("utmos", "UTMOS", "{:.2f}"),
    ("pesq", "PESQ", "{:.2f}"),
    ("stoi", "STOI", "{:.3f}"),
    ("mel_l1", "mel L1", "{:.4f}"),
    ("fmd", "FMD", "{:.3f}"),
    ("decoder_rtf", "decoder RTF", "{:.4f}"),
]


def setting_key(model: str, vocoder: str, steps: int, cfg_scale: float, temperature: float) -> str:
    """The name of a decoded setting (files, rows); temperature 1 adds nothing to it."""
    key = f"{model}_{vocoder}_steps{steps}_cfg{cfg_scale:g}"
    return key if temperature == 1.0 else f"{key}_temp{temperature:g}"


@dataclass(frozen=True)
class Setting:
    source: str  # original | groundtruth | model
    model: str = ORIGINAL
    vocoder: str = ""
    steps: int = 0
    cfg_scale: float = 1.0
    temperature: float = 1.0

    @classmethod
    def groundtruth(cls, vocoder: str) -> Setting:
        return cls("groundtruth", GROUND_TRUTH, vocoder)

    @property
    def key(self) -> str:
        if self.source == "model":
            return setting_key(self.model, self.vocoder, self.steps, self.cfg_scale, self.temperature)
        return ORIGINAL if self.source == "original" else f"groundtruth_{self.vocoder}"

    def fields(self) -> dict:
        return {"setting": self.key, "model": self.model, **asdict(self)}  # the row's columns: model before source


def example_utts(utts: list[str], n: int) -> list[str]:
    """``n`` evenly spaced utterances of a sorted set (``max_utts``; the report's mel figures)."""
    if n <= 0 or not utts:
        return []
    return [utts[i] for i in sorted(set(np.linspace(0, len(utts) - 1, min(n, len(utts))).round().astype(int)))]


@dataclass
class EvalSet:
    """The utterances of a set and what the settings need of them: ground-truth log-mels (CPU),
    the recordings at ``sample_rate``, transcripts, and codes when they are given."""

    dump_dir: str
    utts: list[str]
    texts: dict
    mel_cfg: MelConfig
    sample_rate: int
    mels: dict | None = None
    audio: dict | None = None
    codes: dict | None = None
    codes_dir: str | None = None
    skipped: int = 0

    @classmethod
    def load(
        cls,
        dump_dir: str,
        max_utts: int = 0,
        *,
        feats: bool = True,
        audio: bool = True,
        text: bool = True,
        codes_dir: str | None = None,
        sample_rate: int | None = None,
    ) -> EvalSet:
        """The utterances that have everything asked (features, audio, a transcript, codes), sorted;
        ``max_utts`` > 0 keeps that many evenly spaced (every speaker, not the first few). With a
        transcript asked, marker texts (``<label>`` of keyword sets) are left out; recordings that
        cannot be read are left out with a warning."""
        path = os.path.join(dump_dir, "mel_config.json")
        mel_cfg = MelConfig()
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                mel_cfg = MelConfig.from_dict(json.load(fh))
        tables = {}
        if feats:
            tables["features"] = read_scp(os.path.join(dump_dir, "feats.scp"))
        if audio:
            tables["audio"] = read_table(os.path.join(dump_dir, "wav.scp"))
        has_text = text or os.path.exists(os.path.join(dump_dir, "text"))
        texts = read_table(os.path.join(dump_dir, "text")) if has_text else {}
        if text:
            tables["a transcript"] = {u: t for u, t in texts.items() if not t.startswith("<")}
        if codes_dir:
            tables["codes"] = read_scp(os.path.join(codes_dir, "codes.scp"))
        first = next(iter(tables.values()))
        utts = sorted(u for u in first if all(u in t for t in tables.values()))
        if len(utts) < len(first):
            logger.warning("%s: %d utterances lack %s; left out", dump_dir, len(first) - len(utts), " or ".join(tables))
        utts = example_utts(utts, max_utts) if max_utts else utts
        data = cls(dump_dir, utts, texts, mel_cfg, sample_rate or mel_cfg.sample_rate, codes_dir=codes_dir)
        if audio:
            data.audio = {}
            for u in utts:
                try:
                    data.audio[u] = load_audio(tables["audio"][u], data.sample_rate).numpy()
                except AudioError as exc:
                    logger.warning("skipped %s: %s", u, exc)
            data.skipped = len(utts) - len(data.audio)
            data.utts = [u for u in utts if u in data.audio]
        if not data.utts:
            raise ValueError(f"{dump_dir}: no utterance with {', '.join(tables)}")
        if feats:
            data.mels = {u: torch.from_numpy(read_mat(tables["features"][u]).copy()) for u in data.utts}
        if codes_dir:
            data.codes = {u: torch.from_numpy(read_mat(tables["codes"][u]).astype(np.int64)) for u in data.utts}
        return data

    @property
    def frames(self) -> dict:
        return {u: m.shape[0] for u, m in self.mels.items()}

    @property
    def audio_seconds(self) -> float:
        if self.mels is not None:
            return sum(self.frames.values()) / self.mel_cfg.frame_rate
        return sum(a.shape[-1] for a in self.audio.values()) / self.sample_rate

    def stamp(self) -> dict:
        """What the set's scores depend on: its files' digests and the utterances chosen."""
        inputs = {"text": digest(os.path.join(self.dump_dir, "text")) if self.texts else "none"}
        if self.mels is not None:
            inputs["feats"] = digest_dump(self.dump_dir)
        if self.audio is not None:
            inputs["wav_scp"] = digest(os.path.join(self.dump_dir, "wav.scp"))
        if self.codes_dir:
            inputs["codes"] = digest(self.codes_dir)
        utts = hashlib.sha256(" ".join(self.utts).encode()).hexdigest()
        return {"inputs": inputs, "options": {"utts": f"{len(self.utts)}:{utts}", "sample_rate": str(self.sample_rate)}}


@torch.no_grad()
def decode_codes(tok, codes: dict, frames: dict, steps: int, cfg_scale=1.0, seed=0, temperature=1.0):
    """Decode every utterance's codes [CN, T] in length-sorted padded batches (an item decodes as it
    would alone) -> ({utt: log-mel [frames, n_mels] (CPU)}, decoder seconds)."""
    out, seconds = {}, 0.0
    for batch in length_batches({u: c.shape[1] for u, c in codes.items()}):
        c = torch.nn.utils.rnn.pad_sequence([codes[u].T for u in batch], batch_first=True).transpose(1, 2)
        lengths = torch.tensor([codes[u].shape[1] for u in batch])
        t0 = time.perf_counter()
        mel = tok.decode_mel(c, steps=steps, seed=seed, lengths=lengths, cfg_scale=cfg_scale, temperature=temperature)
        seconds += time.perf_counter() - t0
        out.update((u, mel[i, : frames[u]]) for i, u in enumerate(batch))
    return out, seconds


@dataclass
class _Model:
    tok: Tokenizer
    model_dir: str
    codes: dict
    facts: dict
    digest: str
    reference: tuple | None = field(default=None, repr=False)  # normalised ground truth, its frame Gaussian


class Engine:
    """Scores settings of one ``EvalSet`` (see the module docstring)."""

    def __init__(
        self,
        data: EvalSet,
        out_dir: str | None,
        judges: dict | None = None,
        *,
        lm: str | None = None,
        seed: int = 0,
        examples: int = 0,
        progress: bool = True,
        device: str = "cpu",
    ):
        self.data, self.out_dir, self.judges = data, out_dir, dict(judges or {})
        self.lm, self.seed, self.examples, self.progress, self.device = lm, seed, examples, progress, device
        self.judge_info = {k: j.info() for k, j in self.judges.items()}
        self.models: dict[str, _Model] = {}
        self.results: dict[str, dict] = {}  # setting key -> {"row", "per_utt"}, in the order first scored
        self._vocoders: dict = {}  # (model name or None for ground truth, vocoder name) -> (module, digest)
        self.t_start = time.time()
        self.stamp = data.stamp()
        self.stamp["inputs"]["lm"] = digest(lm) if lm else "none"
        self.stamp["options"].update(seed=str(seed), format=FORMAT)
        if out_dir:
            fresh_cache(os.path.join(out_dir, "cache"), self.stamp, out_dir)

    @property
    def mel_cfg(self) -> MelConfig:
        return next(iter(self.models.values())).tok.mel_cfg if self.models else self.data.mel_cfg

    # ---- what is scored ---------------------------------------------------------------------
    def add_model(self, name: str, model_dir: str, ctc: bool = False) -> None:
        """Load a model; its codes are the set's (``codes_dir``) or encoded here from the features.
        ``ctc``: also read the codes with the model's CTC head (facts ``ctc_asr_wer``)."""
        tok = Tokenizer.from_pretrained(model_dir, device=self.device, vocoder="griffin_lim")
        cfg, data = tok.config, self.data
        facts = {"name": name, "model_dir": os.path.abspath(model_dir), "config": cfg.to_dict()}
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as fh:
            facts["refine"] = json.load(fh).get("refine")
        codes = data.codes
        if codes is None:
            codes, enc_s = encode_mels(tok, data.mels)
            facts["encode_rtf"] = enc_s / data.audio_seconds
        facts.update(
            parameters=tok.info()["parameters"],
            fps=cfg.token_rate,
            tps=cfg.token_rate * cfg.num_codebooks,
            num_codebooks=cfg.num_codebooks,
            codebook_size=cfg.codebook_size,
            bits_per_second=cfg.bits_per_second,
            **code_statistics(codes, cfg.num_codebooks, cfg.codebook_size),
        )
        if ctc and data.texts and (res := ctc_asr(tok, codes, data.texts)):
            facts.update(res)
            logger.info("%s: CTC ASR (greedy, the tokenizer's CTC head): WER %.2f %%", name, res["ctc_asr_wer"])
        self.models[name] = _Model(tok, model_dir, codes, facts, digest(model_dir))

    def decodings(self, name: str, steps, cfg_scales, temperatures) -> tuple[list, list, list]:
        """The (steps, CFG scales, temperatures) model ``name`` decodes with: a regression decoder
        takes one pass (steps 0, no noise); a model without token CFG only w = 1."""
        cfg = self.models[name].tok.config
        if cfg.decoder != "diffusion":
            return [0], [1.0], [1.0]
        scales = [float(w) for w in cfg_scales if w == 1.0 or cfg.token_cfg] or [1.0]
        if len(scales) < len(cfg_scales):
            logger.info("%s has no token CFG: scales other than 1 left out", name)
        return list(steps), scales, [float(check_temperature(t)) for t in temperatures]

    def load_vocoders(self, specs, model: str | None = None) -> list[str]:
        """Vocoders for the settings of ``model`` (None: the ground-truth rows), each ``NAME`` (auto |
        vocos | griffin_lim, from the model's directory, or the first model's for ground truth) or
        ``NAME=DIR`` (a vocoder directory, or a model directory with vocoder/); returns their names."""
        names = []
        for spec in specs:
            kind, _, src = spec.partition("=")
            if not src and (model or self.models):
                src = self.models[model or next(iter(self.models))].model_dir
            voc = load_vocoder(kind, src or None, self.mel_cfg).to(self.device).eval()
            self._vocoders[(model, voc.name)] = (voc, f"{voc.name}:{state_digest(voc)}")
            names += [voc.name] if voc.name not in names else []
        return names

    # ---- scoring ----------------------------------------------------------------------------
    def score(self, st: Setting, judged: bool = True) -> dict:
        """The row of setting ``st`` (from the cache when it holds it); ``judged``: vocode it and run
        every judge (judges that need a reference are left out of the original recordings)."""
        judges = {
            k: j for k, j in self.judges.items() if judged and not (st.source == "original" and j.needs_reference)
        }
        info = {k: self.judge_info[k] for k in judges}
        parts = {"set": self.stamp, "setting": st.fields()}
        if st.source != "original":
            parts["vocoder"] = self._vocoder(st)[1]
        if st.source == "model":
            parts["model"] = self.models[st.model].digest
        fingerprint = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
        path = os.path.join(self.out_dir, "cache", f"{st.key}.json") if self.out_dir else None
        entry = None
        if path and os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                entry = json.load(fh)
            if entry["fingerprint"] != fingerprint or any(entry["judges"].get(k) != v for k, v in info.items()):
                entry = None
        if entry is None:
            entry = {"fingerprint": fingerprint, "judges": info, **self._compute(st, judges)}
            if path:
                write_text_atomic(path, json.dumps(entry) + "\n")
        else:
            logger.info("%s: done before, kept (%s)", st.key, path)
        self.results[st.key] = {"row": entry["row"], "per_utt": entry["per_utt"]}
        return entry["row"]

    def _vocoder(self, st: Setting) -> tuple:
        return self._vocoders[(st.model if st.source == "model" else None, st.vocoder)]

    def _compute(self, st: Setting, judges: dict) -> dict:
        data, t0 = self.data, time.time()
        row = {**st.fields(), "mel_l1": None, "fmd": None, "wer": None, "decoder_rtf": None}
        keys = ("setting", "model", "vocoder", "steps", "cfg_scale", "temperature")
        per = {u: {**{k: row[k] for k in keys}, "utt": u} for u in data.utts}
        mels, frames, seconds = None, None, data.audio_seconds
        if st.source == "groundtruth":
            if data.mels is None:
                raise ValueError(f"{data.dump_dir}: a set without ground-truth features has no ground-truth rows")
            mels, frames = data.mels, data.frames
            row.update(fmd=0.0, decoder_rtf=0.0)
            for u in data.utts:
                per[u]["mel_l1"] = 0.0
        elif st.source == "model":
            m = self.models[st.model]
            if data.mels is not None:
                frames = data.frames
            else:  # codes not made from the set's audio (generated speech): as long as the codes say
                frames = {u: int(m.codes[u].shape[-1]) * m.tok.config.stack for u in data.utts}
                seconds = sum(frames.values()) / self.mel_cfg.frame_rate
            mels, dec_s = decode_codes(m.tok, m.codes, frames, st.steps, st.cfg_scale, self.seed, st.temperature)
            row["decoder_rtf"] = dec_s / seconds
            if data.mels is not None:
                if m.reference is None:  # the set in this model's normalised space: once per model
                    ref = {u: m.tok.normalise(data.mels[u]) for u in data.utts}
                    m.reference = ref, gaussian(torch.cat([ref[u] for u in data.utts]).numpy())
                ref, ref_gauss = m.reference
                hyp = {u: m.tok.normalise(mels[u]) for u in data.utts}
                for u in data.utts:
                    per[u]["mel_l1"] = mel_l1(hyp[u], ref[u])
                cut = [hyp[u][: min(len(hyp[u]), len(ref[u]))] for u in data.utts]
                row["fmd"] = frechet_distance(torch.cat(cut).numpy(), ref_gauss)
        if mels is not None and self.out_dir:
            for u in example_utts(data.utts, self.examples):
                with atomic_open(os.path.join(self.out_dir, "mels", st.key, f"{u}.npy"), "wb") as fh:
                    np.save(fh, mels[u].float().numpy())
        if judges:
            sr, t1 = data.sample_rate, time.perf_counter()
            if mels is None:
                wavs = data.audio
            else:
                voc = self._vocoder(st)[0]
                hop, sr = self.mel_cfg.hop_length, self.mel_cfg.sample_rate
                if sr != data.sample_rate and any(j.needs_reference for j in judges.values()):
                    raise ValueError(f"the recordings were loaded at {data.sample_rate} Hz, the vocoder makes {sr} Hz")
                wavs = {u: voc(mels[u].to(self.device)).cpu().numpy()[: frames[u] * hop] for u in data.utts}
                row["vocoder_rtf"] = (time.perf_counter() - t1) / seconds
            scores, seconds = score_set(judges, data.audio, wavs, data.texts, sr, self.progress, st.key)
            for u in data.utts:
                per[u].update(scores[u])
                if "hyp" in scores[u]:
                    ref_text = data.texts[u]
                    per[u]["ref"] = ref_text
                    per[u]["utt_wer"] = (
                        100 * word_error_rate([ref_text], [scores[u]["hyp"]]) if ref_text.strip() else None
                    )
            row["judge_seconds"] = {k: round(x, 2) for k, x in seconds.items()}
        row.update(summarise(list(per.values()), data.texts))
        row["seconds"] = time.time() - t0
        logger.info("%s: %s (%.0f s)", st.key, _brief(row), row["seconds"])
        return {"row": row, "per_utt": list(per.values())}

    # ---- output -----------------------------------------------------------------------------
    def write(self, **extra) -> dict:
        """The summary of every setting scored; written to the output directory when there is one."""
        import pandas as pd

        data = self.data
        rows = [r["row"] for r in self.results.values()]
        summary = {
            "format": FORMAT,
            "dump_dir": os.path.abspath(data.dump_dir),
            "set": os.path.basename(data.dump_dir.rstrip("/")),
            "codes_dir": data.codes_dir,
            "utterances": len(data.utts),
            "skipped": data.skipped,
            "audio_seconds": data.audio_seconds,
            "seed": self.seed,
            "lm": self.lm,
            "judges": self.judge_info,
            "models": {n: m.facts for n, m in self.models.items()},
            "settings": rows,
            **extra,
            "wall_seconds": time.time() - self.t_start,
        }
        if self.out_dir:
            out = self.out_dir
            write_text_atomic(os.path.join(out, "summary.json"), json.dumps(summary, indent=1) + "\n")
            with atomic_open(os.path.join(out, "results.csv")) as fh:
                pd.DataFrame(rows).drop(columns="judge_seconds", errors="ignore").to_csv(fh, index=False)
            with atomic_open(os.path.join(out, "per_utt.csv")) as fh:
                pd.DataFrame([p for r in self.results.values() for p in r["per_utt"]]).to_csv(fh, index=False)
            write_text_atomic(os.path.join(out, "results.md"), results_markdown(rows) + "\n")
            logger.info(
                "%d settings x %d utterances in %.0f s -> %s", len(rows), len(data.utts), summary["wall_seconds"], out
            )
        return summary


def summarise(per_utt: list[dict], texts: dict) -> dict:
    """A setting's figures from its utterances: corpus WER of the transcripts, means of the rest."""
    out = {}
    if per_utt and "hyp" in per_utt[0]:
        out["wer"] = 100 * word_error_rate([texts[r["utt"]] for r in per_utt], [r["hyp"] for r in per_utt])
    for k in MEAN_COLUMNS:
        vals = [r[k] for r in per_utt if r.get(k) is not None and np.isfinite(r[k])]
        if vals:
            out[k] = float(np.mean(vals))
        if k == "pesq" and len(vals) < len(per_utt) and any("pesq" in r for r in per_utt):
            out["pesq_nan"] = len(per_utt) - len(vals)
    return out


def _brief(row: dict) -> str:
    return ", ".join(f"{label} {fmt.format(row[k])}" for k, label, fmt in MARKDOWN if row.get(k) is not None)


def results_markdown(rows: list[dict]) -> str:
    """Rows as a markdown table: the setting, then every figure some row has."""
    cols = [c for c in MARKDOWN if any(r.get(c[0]) is not None for r in rows)]
    lines = ["| model | vocoder | steps | CFG w | temperature | " + " | ".join(c[1] for c in cols) + " |"]
    lines.append("|" + "---|" * (5 + len(cols)))
    for r in rows:
        decoded = r["source"] == "model"
        steps = ("regression" if r["steps"] == 0 else str(r["steps"])) if decoded else "—"
        tau = f"{r['temperature']:g}" if decoded and r["steps"] else "—"
        cells = [fmt.format(r[k]) if r.get(k) is not None else "" for k, _, fmt in cols]
        head = f"| {r['model']} | {r['vocoder'] or '—'} | {steps} | {r['cfg_scale']:g} | {tau} | "
        lines.append(head + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- configurations ---------------------------------------------------------------------------
def evaluate(
    model_dir: str | None,
    dump_dir: str,
    out_dir: str,
    *,
    steps=(1,),
    cfg_scales=(1.0,),
    temperatures=(1.0,),
    vocoders=("auto",),
    judges: dict | None = None,
    judge_opts: dict | None = None,
    lm: str | None = None,
    groundtruth: bool = True,
    original: bool = False,
    max_utts: int = 0,
    seed: int = 0,
    progress: bool = True,
    name: str | None = None,
    examples: int = 3,
    device: str = "cpu",
) -> dict:
    """``sitok evaluate``: a split scored by every judge: the original recordings (``original``),
    ground-truth mel through each vocoder (``groundtruth``), then the model's reconstruction for
    every vocoder x steps x CFG scale x temperature; the model's facts include its CTC head's WER.
    Without a model: the recordings and ground-truth mel through the vocoders alone (a vocoder's
    copy-synthesis evaluation, e.g. ``vocoders=["griffin_lim", "vocos=exp/vocoder/model"]``)."""
    for t in temperatures:  # before any work, not at the first decode
        check_temperature(t)
    built = build_judges(parse_judges(None) if judges is None else judges, judge_opts, lm)
    data = EvalSet.load(dump_dir, max_utts, audio=bool(built))
    eng = Engine(data, out_dir, built, lm=lm, seed=seed, examples=examples, progress=progress, device=device)
    settings = [Setting("original")] if original and built else []
    decoded = []
    if model_dir:
        name = name or os.path.basename(os.path.dirname(os.path.abspath(model_dir)))
        eng.add_model(name, model_dir, ctc=True)
        grid = eng.decodings(name, steps, cfg_scales, temperatures)
        vocs = eng.load_vocoders(vocoders, name)
        decoded = [Setting("model", name, v, s, w, t) for v in vocs for s in grid[0] for w in grid[1] for t in grid[2]]
    if groundtruth:
        settings += [Setting.groundtruth(v) for v in eng.load_vocoders(vocoders)]
    if not settings + decoded:
        raise ValueError("evaluate: nothing to score (no model, no ground truth, no original recordings)")
    logger.info(
        "%s: %d utterances (%.1f min), %d settings, judges %s",
        dump_dir,
        len(data.utts),
        data.audio_seconds / 60,
        len(settings + decoded),
        sorted(built),
    )
    for st in settings + decoded:
        eng.score(st)
    return eng.write()


def judge_wer(data_dir: str, out: str | None = None, lm: str | None = None, max_utts: int = 0, progress=True) -> dict:
    """``sitok judge-wer``: the ASR judge on a data dir's recordings (ground truth, or a resynthesised
    set); ``out``: a TSV of utt, ref, hyp under a first line naming the judge and the WER."""
    judges = build_judges({"asr": "pocketsphinx"}, lm=lm)
    data = EvalSet.load(data_dir, max_utts, feats=False, sample_rate=judges["asr"].sample_rate)
    eng = Engine(data, None, judges, lm=lm, progress=progress)
    row = eng.score(Setting("original"))
    info = eng.judge_info["asr"]
    if out:
        with atomic_open(out) as fh:
            fh.write(
                f"# {info['judge']} {info['version']} lm={lm or 'generic'} WER {row['wer']:.2f} %\nutt\tref\thyp\n"
            )
            fh.writelines(f"{r['utt']}\t{r['ref']}\t{r['hyp']}\n" for r in eng.results[ORIGINAL]["per_utt"])
    logger.info(
        "%s: %s (lm: %s) WER %.2f %% on %d utterances (%d skipped)",
        data_dir,
        info["judge"],
        lm or "generic en-US",
        row["wer"],
        len(data.utts),
        data.skipped,
    )
    return row
