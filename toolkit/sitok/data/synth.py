"""The embedded default corpus (``egs/mini``), synthesised from text the toolkit generates.

No data can be downloaded on the machines this toolkit targets, so stage 0 of the mini recipe
builds a small multi-speaker corpus with flite and espeak-ng:

* a seeded sentence grammar over a few hundred common English words;
* 22 speakers: 4 flite voices and several espeak-ng voice variants, each given its own pitch
  and a vocal-tract-length factor (synthesise slower / faster, then resample, which scales the
  formants); 5 speakers are held out (split ``test_unseen``, for speaker verification);
* 4 speaking styles as an emotion proxy (neutral / happy / sad / angry: pitch level and range,
  rate and loudness), stored as labels;
* 1 s keyword clips (yes no up down left right on off stop go, ``_unknown_`` words and
  ``_silence_`` noise), Speech-Commands-like, for keyword spotting;
* sentence splits ``train`` / ``dev`` (seen speakers, all voices), ``test`` (seen flite
  speakers only: the offline ASR judge, pocketsphinx, reads flite voices well but not espeak-ng
  formant voices) and ``test_unseen`` (held-out speakers); keyword splits ``ks_train`` /
  ``ks_dev`` / ``ks_test``;
* optionally ``tts_train``: more sentences by the seen speakers, drawn after everything else (so
  asking for it changes no other split), for models that learn from more speech than the
  tokenizer needs (the AR-TTS LM).

Everything is 24 kHz mono 16-bit wav and is a pure function of the seed: the same seed gives
byte-identical audio and metadata.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np
import soundfile as sf

from sitok.data.audio import resample, write_wav_atomic
from sitok.fileio import atomic_open, write_text_atomic

logger = logging.getLogger(__name__)

SAMPLE_RATE = 24000
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
STYLES = ("neutral", "happy", "sad", "angry")

# ---------------------------------------------------------------------------------------
# Sentence grammar
# ---------------------------------------------------------------------------------------
WORDS = {
    "name": "anna ben carla david emma frank grace henry iris jack kate leo maria nick olivia peter "
    "rachel sam tina victor".split(),
    "noun": "apple basket bicycle bird boat book bottle box bridge bucket cake camera candle car "
    "chair clock coat cup desk door dress engine farmer flower garden glass hammer hat horse "
    "house jacket kettle key kitchen ladder lamp letter map mirror needle paper pencil piano "
    "picture pillow plate pocket radio ribbon ring river rope shirt shoe spoon stone table "
    "teacher ticket towel train tree truck umbrella wagon wall watch window".split(),
    "adj": "big small old new red blue green yellow heavy light warm cold clean dirty quiet loud "
    "bright dark soft hard long short round empty full wooden broken shiny tiny strange famous "
    "simple".split(),
    "verb_past": "found carried painted opened closed moved cleaned dropped lifted pushed pulled "
    "washed fixed sold bought borrowed returned packed covered checked".split(),
    "verb": "find carry paint open close move clean drop lift push pull wash fix sell buy borrow "
    "return pack cover check".split(),
    "place": "kitchen garden station market office library village school harbor forest "
    "hospital museum bakery factory street corner hallway basement attic island".split(),
    "prep": "near behind under beside inside across".split(),
    "time": "today yesterday tomorrow tonight every morning last week before dinner after lunch "
    "on monday on friday".split(" "),
    "adv": "slowly quickly quietly carefully happily gently early later again together".split(),
    "num": "two three four five six seven eight nine ten twelve".split(),
    "plural": "apples baskets birds boats books bottles boxes cakes candles chairs clocks cups "
    "flowers hats horses keys lamps letters maps pencils pictures plates rings shoes spoons "
    "stones tickets towels trees wagons".split(),
}
WORDS["time"] = [t.strip() for t in WORDS["time"] if t.strip()]

TEMPLATES = (
    "the {adj} {noun} is {prep} the {place}",
    "{name} {verb_past} the {adj} {noun} {time}",
    "please {verb} the {noun} {adv}",
    "we {verb_past} {num} {plural} at the {place}",
    "did you {verb} the {adj} {noun} {prep} the {noun}",
    "{name} and {name} {verb_past} the {noun} {adv}",
    "there are {num} {adj} {plural} in the {place}",
    "my {noun} was {prep} the {adj} {noun} {time}",
    "{name} will {verb} the {plural} at the {place} {time}",
    "the {noun} from the {place} is very {adj}",
    "can you {verb} a {adj} {noun} for {name}",
    "they {verb_past} the {adj} {noun} and the {adj} {noun}",
)
UNKNOWN_WORDS = (
    "bed bird cat dog happy house tree wow marvin sheila zero one two three four five six seven "
    "eight nine learn follow forward backward visual"
).split()


def make_sentence(rng: random.Random) -> str:
    template = rng.choice(TEMPLATES)
    return " ".join(rng.choice(WORDS[p[1:-1]]) if p.startswith("{") else p for p in template.split())


# ---------------------------------------------------------------------------------------
# Speakers and styles
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Speaker:
    id: str
    engine: str  # flite | espeak
    voice: str
    pitch: float  # flite: f0 target mean in Hz; espeak: -p 0..99
    vtl: float  # vocal-tract-length factor (formant scale)
    rate: float  # speaking-rate factor (>1 = faster)
    held_out: bool = False


SPEAKERS = (
    Speaker("f01", "flite", "slt", 175, 1.00, 1.00),
    Speaker("f02", "flite", "slt", 205, 1.06, 0.95),
    Speaker("f03", "flite", "slt", 160, 0.95, 1.05, held_out=True),
    Speaker("f04", "flite", "awb", 115, 1.00, 1.00),
    Speaker("f05", "flite", "awb", 135, 1.05, 0.92),
    Speaker("f06", "flite", "rms", 105, 1.00, 1.00),
    Speaker("f07", "flite", "rms", 95, 0.95, 1.08),
    Speaker("f08", "flite", "rms", 125, 1.08, 0.95),
    Speaker("f09", "flite", "kal16", 110, 1.00, 1.00),
    Speaker("f10", "flite", "kal16", 135, 1.08, 0.95, held_out=True),
    Speaker("f11", "flite", "slt", 225, 1.10, 1.00),
    Speaker("e01", "espeak", "en-us+m1", 40, 1.00, 1.00),
    Speaker("e02", "espeak", "en-us+f2", 60, 1.00, 0.95),
    Speaker("e03", "espeak", "en-gb+m3", 35, 1.00, 1.05),
    Speaker("e04", "espeak", "en+f4", 70, 1.00, 1.00, held_out=True),
    Speaker("e05", "espeak", "en-us+m7", 45, 0.95, 1.00),
    Speaker("e06", "espeak", "en-gb-scotland+m2", 50, 1.00, 0.92),
    Speaker("e07", "espeak", "en-029+f1", 65, 1.00, 1.00),
    Speaker("e08", "espeak", "en-gb-x-rp+m4", 30, 1.00, 1.05, held_out=True),
    Speaker("e09", "espeak", "en-us+f5", 55, 1.05, 1.00),
    Speaker("e10", "espeak", "en-us+klatt", 50, 1.00, 0.95),
    Speaker("e11", "espeak", "en-us+m6", 38, 1.00, 1.00, held_out=True),
)

# style -> (pitch scale, pitch-range scale, rate scale, gain)
STYLE_PARAMS = {
    "neutral": (1.00, 1.0, 1.00, 0.50),
    "happy": (1.20, 2.0, 1.10, 0.55),
    "sad": (0.88, 0.4, 0.85, 0.25),
    "angry": (1.08, 1.7, 1.08, 0.90),
}
STYLE_WEIGHTS = (0.4, 0.2, 0.2, 0.2)
ESPEAK_RANGE = {1.0: "medium", 2.0: "x-high", 0.4: "x-low", 1.7: "high"}


@dataclass(frozen=True)
class Item:
    utt: str
    split: str
    speaker: Speaker
    text: str  # what is spoken ("" for silence)
    label: str  # style (sentences) or keyword class (ks splits)
    style: str
    seed: int
    clip_seconds: float = 0.0  # > 0: centre in a fixed-length clip with a random offset

    @property
    def relpath(self) -> str:
        return os.path.join("wav", self.split, self.speaker.id, f"{self.utt}.wav")


def _synthesize_raw(item: Item, tmpdir: str) -> tuple[np.ndarray, int]:
    """Run flite / espeak-ng; return (float32 samples, native rate before the VTL trick)."""
    spk = item.speaker
    pitch_s, range_s, rate_s, _ = STYLE_PARAMS[item.style]
    rate = spk.rate * rate_s / spk.vtl  # slower before the speed-up of the VTL resampling
    out = os.path.join(tmpdir, f"{item.utt}.wav")
    if spk.engine == "flite":
        f0 = f"int_f0_target_mean={spk.pitch * pitch_s / spk.vtl:.1f}"
        setf = [f0, f"int_f0_target_stddev={20 * range_s:.1f}", f"duration_stretch={1.0 / rate:.3f}"]
        cmd = ["flite", "-voice", spk.voice, *(x for v in setf for x in ("--setf", v)), "-t", item.text, "-o", out]
    else:
        pitch = int(min(99, max(0, round(spk.pitch * pitch_s))))
        ssml = f'<speak><prosody range="{ESPEAK_RANGE[range_s]}">{item.text}</prosody></speak>'
        cmd = ["espeak-ng", "-m", "-v", spk.voice, "-p", str(pitch), "-s", str(int(165 * rate)), "-w", out, ssml]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    data, sr = sf.read(out, dtype="float32")
    os.remove(out)
    return (data if data.ndim == 1 else data.mean(1)), sr


def render(item: Item, tmpdir: str) -> np.ndarray:
    """Synthesise one item as 24 kHz float32 samples."""
    import torch

    rng = np.random.default_rng(item.seed)
    if item.label == SILENCE:  # background-noise clip, never digital silence
        n = int(round(item.clip_seconds * SAMPLE_RATE))
        return (rng.standard_normal(n) * rng.uniform(0.002, 0.02)).astype(np.float32)
    data, sr = _synthesize_raw(item, tmpdir)
    # vocal-tract-length trick: treat sr*vtl samples/s as sr -> formants scale by vtl
    src = int(round(sr * item.speaker.vtl / 100.0)) * 100
    wav = resample(torch.from_numpy(data), src, SAMPLE_RATE).numpy()
    peak = float(np.abs(wav).max()) or 1.0
    wav = wav / peak * STYLE_PARAMS[item.style][3] * rng.uniform(0.85, 1.0)
    if item.clip_seconds > 0:
        n = int(round(item.clip_seconds * SAMPLE_RATE))
        wav = wav[:n]
        clip = (rng.standard_normal(n) * 1e-3).astype(np.float32)
        start = int(rng.integers(0, n - len(wav) + 1))
        clip[start : start + len(wav)] += wav
        wav = clip
    return np.clip(wav, -1.0, 1.0).astype(np.float32)


def _render_to_file(args: tuple[Item, str]) -> tuple[str, float]:
    item, root = args
    path = os.path.join(root, item.relpath)
    if os.path.exists(path):  # resumable: items are deterministic, finished ones are kept
        return item.utt, sf.info(path).duration
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sitok_synth_") as tmp:
        wav = render(item, tmp)
    write_wav_atomic(path, wav, SAMPLE_RATE)
    return item.utt, len(wav) / SAMPLE_RATE


# ---------------------------------------------------------------------------------------
# Corpus plan
# ---------------------------------------------------------------------------------------
MEAN_SENTENCE_SECONDS = 2.58  # measured on this grammar (seed 1234); turns minutes into counts


def plan_corpus(
    seed: int = 1234,
    train_minutes: float = 270.0,
    dev_minutes: float = 10.0,
    test_minutes: float = 10.0,
    unseen_minutes: float = 6.0,
    ks_per_class: tuple[int, int, int] = (60, 10, 15),
    tts_train_minutes: float = 0.0,
) -> list[Item]:
    """The list of utterances to synthesise: a pure function of its arguments. ``tts_train_minutes``
    > 0 adds the split ``tts_train``, drawn last: every other split stays as it is without it."""
    rng = random.Random(seed)
    seen = [s for s in SPEAKERS if not s.held_out]
    held = [s for s in SPEAKERS if s.held_out]
    flite_seen = [s for s in seen if s.engine == "flite"]
    items: list[Item] = []
    eval_text: set[str] = set()  # every sentence of test, test_unseen and dev: never in another split

    def sentences(split: str, minutes: float, speakers: list[Speaker]) -> None:
        for i in range(max(1, round(minutes * 60 / MEAN_SENTENCE_SECONDS))):
            spk = speakers[i % len(speakers)]
            text = make_sentence(rng)
            while text in eval_text:  # a sentence of an evaluation split occurs in no other split
                text = make_sentence(rng)
            if split not in ("train", "tts_train"):
                eval_text.add(text)
            style = rng.choices(STYLES, STYLE_WEIGHTS)[0]
            utt = f"{spk.id}-{split}-{i:05d}"
            items.append(Item(utt, split, spk, text, style, style, rng.randrange(2**31)))

    # evaluation splits first: their sentences are then kept out of every later split
    sentences("test", test_minutes, flite_seen)
    sentences("test_unseen", unseen_minutes, held)
    sentences("dev", dev_minutes, seen)
    sentences("train", train_minutes, seen)

    classes = list(KEYWORDS) + [UNKNOWN, SILENCE]
    for split, per_class in zip(("ks_train", "ks_dev", "ks_test"), ks_per_class):
        i = 0
        for cls in classes:
            for _ in range(per_class):
                spk = seen[rng.randrange(len(seen))]
                word = {UNKNOWN: rng.choice(UNKNOWN_WORDS), SILENCE: ""}.get(cls, cls)
                style = rng.choices(STYLES, STYLE_WEIGHTS)[0]
                utt = f"{spk.id}-{split}-{i:05d}"
                items.append(Item(utt, split, spk, word, cls, style, rng.randrange(2**31), clip_seconds=1.0))
                i += 1
    if tts_train_minutes > 0:
        sentences("tts_train", tts_train_minutes, seen)

    shared = {i.text for i in items if i.split in ("train", "tts_train")} & eval_text
    if shared:  # the loop above makes this impossible; a change that breaks it must not pass silently
        raise AssertionError(f"plan_corpus: {len(shared)} sentences in a training and an evaluation split")
    return items


def synthesize_corpus(root: str, items: list[Item], nj: int = 2, progress: bool = True) -> dict:
    """Render ``items`` under ``root`` (resumable) and write ``metadata.tsv`` and
    ``speakers.tsv`` atomically. Returns summary figures (seconds per split)."""
    for tool in ("flite", "espeak-ng"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: run tools/install.sh (Debian packages flite espeak-ng sox)")
    os.makedirs(root, exist_ok=True)
    from tqdm import tqdm

    jobs = [(it, root) for it in items]
    durations: dict[str, float] = {}
    bar = tqdm(total=len(jobs), desc="synthesise", unit="utt", disable=not progress, mininterval=2)
    # not fork: a forked child of a process with live torch/OpenMP threads can deadlock
    with get_context("forkserver").Pool(nj) if nj > 1 else contextlib.nullcontext() as pool:
        for utt, dur in pool.imap_unordered(_render_to_file, jobs, chunksize=8) if pool else map(_render_to_file, jobs):
            durations[utt] = dur
            bar.update()
    bar.close()

    with atomic_open(os.path.join(root, "metadata.tsv")) as fh:
        fh.write("utt\tsplit\tspeaker\tlabel\tstyle\tpath\ttext\n")
        for it in sorted(items, key=lambda it: it.utt):
            text = "<silence>" if it.label == SILENCE else it.text
            fh.write(f"{it.utt}\t{it.split}\t{it.speaker.id}\t{it.label}\t{it.style}\t{it.relpath}\t{text}\n")
    lines = ["speaker\tengine\tvoice\tpitch\tvtl\trate\theld_out"]
    lines += [f"{s.id}\t{s.engine}\t{s.voice}\t{s.pitch}\t{s.vtl}\t{s.rate}\t{int(s.held_out)}" for s in SPEAKERS]
    write_text_atomic(os.path.join(root, "speakers.tsv"), "\n".join(lines) + "\n")

    seconds: dict[str, float] = {}
    for it in items:
        seconds[it.split] = seconds.get(it.split, 0.0) + durations[it.utt]
    return seconds


def read_metadata(root: str) -> list[dict]:
    path = os.path.join(root, "metadata.tsv")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: corpus metadata missing; run stage 0 (corpus synthesis) first")
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        return [dict(zip(header, line.rstrip("\n").split("\t"))) for line in fh if line.strip()]


def total_hours(seconds: dict[str, float]) -> str:
    return ", ".join(f"{k} {v / 60:.1f} min" for k, v in sorted(seconds.items())) if seconds else "nothing"
