"""Judges behind one interface: each is a backend of a *kind*, chosen by name.

    judge = build_judge("sim")                    # the offline default: Resemblyzer
    judge = build_judge("asr", "whisper", model="/models/whisper-large-v3")   # optional backend
    judge.score(ref_wav, hyp_wav, sr, text="...") -> {"sim": 0.83}
    judge.info()                                  -> {"kind": "sim", "judge": "resemblyzer", "version": "0.1.4", ...}

Kinds and backends (default first; the defaults ship their models inside PyPI packages):

    asr   pocketsphinx | whisper (transformers, local weights)     -> {"hyp": text}; WER per set
    sim   resemblyzer  | wavlm   (transformers WavLMForXVector)    -> {"sim": cosine}
    mos   dnsmos       | utmos   (a local TorchScript UTMOS model) -> {"dnsmos_ovrl", ...} / {"utmos"}
    pesq  pesq (PESQ-WB, P.862.2)                                   -> {"pesq": MOS-LQO}
    stoi  stoi (pystoi)                                             -> {"stoi": 0..1}

Every judge takes waveforms at any rate and resamples to its own; reference-free judges (ASR,
MOS) ignore ``ref``. A judge that needs weights the machine does not have raises a
``FileNotFoundError`` that says which option to set: nothing is downloaded.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import torch

from sitok.data.audio import resample
from sitok.data.text import normalize_text
from sitok.eval import quality


def _pkg_version(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


def _to_rate(wav, sr: int, new_sr: int) -> np.ndarray:
    """Mono float32 numpy waveform at ``new_sr``."""
    x = quality._mono(wav)
    return quality._resample(x, int(sr), int(new_sr)).astype(np.float32)


class Judge:
    """Base class: ``kind``, ``name``, ``sample_rate`` and ``score``; ``info`` records the judge."""

    kind = ""
    name = ""
    sample_rate = 16000
    needs_reference = False

    def score(self, ref, hyp, sr: int, text: str | None = None) -> dict:
        raise NotImplementedError

    @property
    def version(self) -> str:
        return "unknown"

    def info(self) -> dict:
        return {"kind": self.kind, "judge": self.name, "version": self.version, "sample_rate": self.sample_rate}

    def _local(self, model: str | None, file: bool = False) -> str:
        """``model`` when it is a local model directory (``file``: a file), else a FileNotFoundError
        naming the option that gives one."""
        if not model or not (os.path.isfile(model) if file else os.path.isdir(model)):
            what, arg = ("TorchScript file", "FILE") if file else ("local model directory", "DIR")
            raise FileNotFoundError(
                f"{self.name} judge: {what} {model!r} not found; give one with "
                f"--judge-opt {self.kind}.model={arg} (nothing is downloaded)"
            )
        return model


class _TransformersJudge(Judge):
    """A judge on a local ``transformers`` model directory (``model_dir``)."""

    model_dir = ""

    @property
    def version(self) -> str:
        return f"transformers {_pkg_version('transformers')}, {os.path.basename(self.model_dir.rstrip('/'))}"


# ---- intelligibility ------------------------------------------------------------------------
class PocketSphinxJudge(Judge):
    """pocketsphinx en-US (its bundled acoustic model); ``lm``: an ARPA LM (e.g. the recipe's
    in-domain judge LM), else the package's generic en-US LM.

    One decoder carries adaptive front-end state from one utterance to the next (on garbled audio
    the hypotheses of 4 in 10 utterances change with the order; a fresh decoder costs seconds), so
    ``score_set`` transcribes a set in sorted-utterance order with one judge: a WER is reproducible
    for a given set and order of settings."""

    kind, name = "asr", "pocketsphinx"

    def __init__(self, lm: str | None = None):
        import pocketsphinx

        if lm and not os.path.exists(lm):
            raise FileNotFoundError(f"pocketsphinx judge: language model {lm} not found")
        self.lm = lm
        self._decoder = pocketsphinx.Decoder(samprate=self.sample_rate, loglevel="FATAL", **({"lm": lm} if lm else {}))

    @property
    def version(self) -> str:
        return _pkg_version("pocketsphinx")

    def info(self) -> dict:
        return {**super().info(), "lm": self.lm or "pocketsphinx en-us generic"}

    def score(self, ref, hyp, sr, text=None):
        x = resample(torch.as_tensor(np.asarray(hyp, dtype=np.float32)), sr, self.sample_rate).numpy()
        d = self._decoder
        d.start_utt()
        d.process_raw((np.clip(x, -1.0, 1.0) * 32767).astype("<i2").tobytes(), full_utt=True)
        d.end_utt()
        out = d.hyp()
        return {"hyp": normalize_text(out.hypstr if out is not None else "")}


class WhisperJudge(_TransformersJudge):
    """Whisper through ``transformers`` from a local model directory (the paper's judge is
    whisper-large-v3). ``model``: a directory holding its config and weights."""

    kind, name = "asr", "whisper"

    def __init__(self, model: str | None = None, language: str = "en", device: str = "cpu"):
        self.model_dir = self._local(model)
        from transformers import pipeline

        self._pipe = pipeline("automatic-speech-recognition", model=model, device=device)
        self._kwargs = {"generate_kwargs": {"language": language, "task": "transcribe"}}

    def score(self, ref, hyp, sr, text=None):
        x = _to_rate(hyp, sr, self.sample_rate)
        out = self._pipe({"raw": x, "sampling_rate": self.sample_rate}, **self._kwargs)
        return {"hyp": normalize_text(out["text"])}


# ---- speaker similarity -----------------------------------------------------------------------
class ResemblyzerJudge(Judge):
    """Cosine similarity of Resemblyzer (GE2E) speaker embeddings of reference and hypothesis."""

    kind, name, needs_reference = "sim", "resemblyzer", True

    def __init__(self, device: str = "cpu"):
        from resemblyzer import VoiceEncoder

        self._enc = VoiceEncoder(device, verbose=False)
        self._ref_cache: dict[bytes, np.ndarray] = {}  # the same reference is scored against many settings

    @property
    def version(self) -> str:
        return _pkg_version("Resemblyzer")

    def embed(self, wav, sr: int) -> np.ndarray:
        from resemblyzer import preprocess_wav

        x = preprocess_wav(_to_rate(wav, sr, self.sample_rate), source_sr=self.sample_rate)
        if x.size < self.sample_rate // 10:  # VAD left (almost) nothing: embed the raw signal
            x = _to_rate(wav, sr, self.sample_rate)
        return self._enc.embed_utterance(x)  # L2-normalised

    def score(self, ref, hyp, sr, text=None):
        import hashlib

        key = hashlib.sha1(np.ascontiguousarray(quality._mono(ref)).tobytes() + str(sr).encode()).digest()
        if key not in self._ref_cache:
            if len(self._ref_cache) > 10000:
                self._ref_cache.clear()
            self._ref_cache[key] = self.embed(ref, sr)
        return {"sim": float(np.dot(self._ref_cache[key], self.embed(hyp, sr)))}


class WavLMSimJudge(_TransformersJudge):
    """Cosine similarity of ``transformers`` WavLMForXVector embeddings from a local model
    directory (e.g. microsoft/wavlm-base-plus-sv; the paper uses a WavLM-TDNN verifier)."""

    kind, name, needs_reference = "sim", "wavlm", True

    def __init__(self, model: str | None = None, device: str = "cpu"):
        self.model_dir = self._local(model)
        from transformers import AutoFeatureExtractor, WavLMForXVector

        self._fe = AutoFeatureExtractor.from_pretrained(model)
        self._net = WavLMForXVector.from_pretrained(model).eval().to(device)
        self.device = device

    @torch.no_grad()
    def embed(self, wav, sr: int) -> torch.Tensor:
        x = _to_rate(wav, sr, self.sample_rate)
        inputs = self._fe(x, sampling_rate=self.sample_rate, return_tensors="pt").to(self.device)
        return torch.nn.functional.normalize(self._net(**inputs).embeddings[0], dim=-1)

    def score(self, ref, hyp, sr, text=None):
        return {"sim": float(self.embed(ref, sr) @ self.embed(hyp, sr))}


# ---- quality --------------------------------------------------------------------------------
class DNSMOSJudge(Judge):
    """DNSMOS P.835 (SIG, BAK, OVRL) and P.808 from speechmos' bundled ONNX models."""

    kind, name = "mos", "dnsmos"

    @property
    def version(self) -> str:
        return f"speechmos {_pkg_version('speechmos')}, onnxruntime {_pkg_version('onnxruntime')}"

    def score(self, ref, hyp, sr, text=None):
        return {f"dnsmos_{k}": v for k, v in quality.dnsmos(hyp, sr).items()}


class UTMOSJudge(Judge):
    """UTMOS from a local TorchScript file: a module mapping (wave [B, T] at 16 kHz, 16000) to
    MOS [B], e.g. a ``torch.jit.script`` export of the UTMOS22 strong learner."""

    kind, name = "mos", "utmos"

    def __init__(self, model: str | None = None):
        self.model_path = self._local(model, file=True)
        self._net = torch.jit.load(model, map_location="cpu").eval()

    @property
    def version(self) -> str:
        return f"torchscript {os.path.basename(self.model_path)}"

    @torch.no_grad()
    def score(self, ref, hyp, sr, text=None):
        x = torch.from_numpy(_to_rate(hyp, sr, self.sample_rate)).unsqueeze(0)
        return {"utmos": float(self._net(x, self.sample_rate).reshape(-1)[0])}


# ---- signal ---------------------------------------------------------------------------------
class PESQJudge(Judge):
    kind, name, needs_reference = "pesq", "pesq", True

    @property
    def version(self) -> str:
        return f"{_pkg_version('pesq')} (wide band, P.862.2)"

    def score(self, ref, hyp, sr, text=None):
        return {"pesq": quality.pesq_wb(ref, hyp, sr)}


class STOIJudge(Judge):
    kind, name, needs_reference = "stoi", "stoi", True
    sample_rate = 10000  # pystoi's internal rate

    @property
    def version(self) -> str:
        return _pkg_version("pystoi")

    def score(self, ref, hyp, sr, text=None):
        return {"stoi": quality.stoi(ref, hyp, sr)}


BACKENDS: dict[str, dict[str, type]] = {
    "asr": {"pocketsphinx": PocketSphinxJudge, "whisper": WhisperJudge},
    "sim": {"resemblyzer": ResemblyzerJudge, "wavlm": WavLMSimJudge},
    "mos": {"dnsmos": DNSMOSJudge, "utmos": UTMOSJudge},
    "pesq": {"pesq": PESQJudge},
    "stoi": {"stoi": STOIJudge},
}
DEFAULTS = {kind: next(iter(backends)) for kind, backends in BACKENDS.items()}


def build_judge(kind: str, backend: str | None = None, **opts) -> Judge:
    """The judge of ``kind`` (asr | sim | mos | pesq | stoi) by backend name (default: the
    offline one). ``opts`` go to the backend (e.g. ``lm=`` for pocketsphinx, ``model=`` for
    whisper / wavlm / utmos)."""
    if kind not in BACKENDS:
        raise ValueError(f"unknown judge kind {kind!r}; known: {sorted(BACKENDS)}")
    backend = backend or DEFAULTS[kind]
    if backend not in BACKENDS[kind]:
        raise ValueError(f"unknown {kind} judge {backend!r}; known: {sorted(BACKENDS[kind])}")
    return BACKENDS[kind][backend](**opts)


def build_judges(kinds: dict[str, str], opts: dict | None = None, lm: str | None = None) -> dict[str, Judge]:
    """{kind: backend} -> {kind: judge}; ``opts``: {kind: {option: value}}; ``lm``: the ARPA LM of
    the pocketsphinx ASR judge (unless ``opts`` names one)."""
    out = {}
    for kind, backend in kinds.items():
        o = dict((opts or {}).get(kind, {}))
        if kind == "asr" and (backend or DEFAULTS["asr"]) == "pocketsphinx" and lm:
            o.setdefault("lm", lm)
        out[kind] = build_judge(kind, backend, **o)
    return out


def parse_judges(specs: list[str] | None) -> dict[str, str]:
    """``["asr=whisper", "sim=wavlm"]`` -> {kind: backend}, the defaults filling the rest;
    ``kind=none`` leaves a kind out."""
    out = dict(DEFAULTS)
    for spec in specs or []:
        kind, _, backend = spec.partition("=")
        if kind not in BACKENDS or not backend:
            raise ValueError(f"--judges: expected KIND=BACKEND with KIND in {sorted(BACKENDS)}, got {spec!r}")
        if backend == "none":
            out.pop(kind, None)
        elif backend not in BACKENDS[kind]:
            raise ValueError(f"--judges: unknown {kind} judge {backend!r}; known: {sorted(BACKENDS[kind])}")
        else:
            out[kind] = backend
    return out


def score_set(judges: dict, refs: dict | None, hyps: dict, texts: dict, sr: int, progress: bool, desc: str):
    """Every judge on every utterance of ``hyps`` (waveforms at ``sr``; ``refs``: the original audio,
    None for judges that score the originals themselves) -> ({utt: scores}, {kind: seconds}).

    Two threads (the judges' native code releases the GIL): the ASR judge in sorted order (its
    state carries over utterances) with the speaker judge, and MOS, PESQ and STOI beside them."""
    from tqdm import tqdm

    utts = sorted(hyps)
    first = ("asr", "sim")
    groups = [g for g in ([k for k in judges if k in first], [k for k in judges if k not in first]) if g]
    bar = tqdm(total=len(utts) * len(judges), desc=desc, unit="score", disable=not progress, mininterval=2)
    seconds = dict.fromkeys(judges, 0.0)

    def run(kinds):
        out = {u: {} for u in utts}
        for u in utts:
            for k in kinds:
                t0 = time.perf_counter()
                out[u].update(judges[k].score(None if refs is None else refs[u], hyps[u], sr, texts.get(u)))
                seconds[k] += time.perf_counter() - t0
                bar.update(1)
        return out

    with ThreadPoolExecutor(max_workers=max(1, len(groups))) as pool:
        parts = list(pool.map(run, groups))
    bar.close()
    return {u: {k: v for p in parts for k, v in p[u].items()} for u in utts}, seconds
