"""Readers for the DASB probe corpora, in their released layouts (nothing is downloaded).

Each reader yields :class:`sitok.data.entries.Entry` rows (or :class:`Skip` rows for items it
leaves out on purpose, so they are counted in ``skipped.tsv``) for ``make_data_dir``:

* :func:`read_iemocap` — ``[IEMOCAP_full_release/]Session{1..5}/sentences/wav/<dialog>/<utt>.wav``,
  labels from ``Session*/dialog/EmoEvaluation/<dialog>.txt``, transcripts from
  ``Session*/dialog/transcriptions/<dialog>.txt``. Four classes as in DASB / SpeechBrain:
  neutral, happy (hap + exc), angry, sad; other labels are skipped ("label-not-used").
  Leave-one-session-out: ``test`` = session 5, ``dev`` = session 4, ``train`` = sessions 1-3
  (``test_session`` / ``valid_session`` change that). Speaker = session + the gender letter of
  the utterance's speaker (``Ses01F_impro01_M000`` -> ``Ses01M``).
* :func:`read_voxceleb1` — ``wav/<id1xxxx>/<youtube id>/<nnnnn>.wav`` (also under
  ``vox1_dev_wav/`` and ``vox1_test_wav/``) with ``veri_test2.txt`` (or ``meta/veri_test2.txt``).
  ``test`` = the trial list's speakers, ``train`` / ``dev`` = every other speaker, ``dev`` being
  the last ``dev_per_speaker`` utterances of each (sorted). Label = speaker. No transcripts:
  the text is the ``<no_transcript>`` marker. :func:`voxceleb_trials` converts the trial list.
* :func:`read_speech_commands` — ``<word>/<hash>_nohash_<n>.wav`` with ``validation_list.txt``
  and ``testing_list.txt``: ``dev`` / ``test`` are those lists, ``train`` the rest. 12 classes:
  the 10 keywords, ``_unknown_`` (every other word) and ``_silence_``: 1 s slices of
  ``_background_noise_/*.wav`` written to ``<out>/silence_wavs/``. The slices of all noise files
  (sorted, in order) are dealt to the splits by position: slice k goes to dev if k % 10 == 8, to
  test if k % 10 == 9, else to train; each split takes as many as its mean keyword class has
  (``silence_per_split`` overrides), evenly spaced over its share.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterator

from sitok.data.entries import Entry, Skip
from sitok.data.kaldi import read_table
from sitok.data.trials import read_trials, write_trials
from sitok.fileio import atomic_open

logger = logging.getLogger(__name__)

NO_TRANSCRIPT = "<no_transcript>"
EMOTIONS = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")


def _need_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not found ({what}); point --root at the extracted corpus")
    return path


# ---------------------------------------------------------------------------------------
# IEMOCAP
# ---------------------------------------------------------------------------------------
_EMO_LINE = re.compile(r"^\[[\d.]+ - [\d.]+\]\t(\S+)\t(\S+)\t")
_TRANS_LINE = re.compile(r"^(Ses\d\d[FM]_\S+?_[FM]\d+)\s+\[[^\]]*\]:\s*(.*)$")


def _iemocap_root(root: str) -> str:
    for cand in (os.path.join(root, "IEMOCAP_full_release"), root):
        if os.path.isdir(os.path.join(cand, "Session1")):
            return cand
    raise FileNotFoundError(f"{root}: no Session1/ (nor IEMOCAP_full_release/Session1/); point --root at IEMOCAP")


def iemocap_sessions(split: str, test_session: int = 5, valid_session: int = 4) -> list[int]:
    train = [s for s in range(1, 6) if s not in (test_session, valid_session)]
    sessions = {"test": [test_session], "dev": [valid_session], "train": train}
    if split not in sessions:
        raise ValueError(f"IEMOCAP split must be train, dev or test, got {split!r}")
    return sessions[split]


def read_iemocap(root: str, split: str, test_session: int = 5, valid_session: int = 4, **_) -> Iterator[Entry | Skip]:
    base = _iemocap_root(root)
    for s in iemocap_sessions(split, test_session, valid_session):
        sess = _need_dir(os.path.join(base, f"Session{s}"), f"IEMOCAP session {s}")
        texts = {}
        for f in sorted(glob.glob(os.path.join(sess, "dialog", "transcriptions", "*.txt"))):
            with open(f, encoding="utf-8", errors="replace") as fh:
                texts.update(m.groups() for m in map(_TRANS_LINE.match, fh) if m)
        label_files = sorted(glob.glob(os.path.join(sess, "dialog", "EmoEvaluation", "*.txt")))
        if not label_files:
            raise FileNotFoundError(f"{sess}/dialog/EmoEvaluation: no label files")
        for f in label_files:
            dialog = os.path.basename(f)[:-4]
            with open(f, encoding="utf-8", errors="replace") as fh:
                rows = [m.groups() for m in map(_EMO_LINE.match, fh) if m]
            for name, emo in rows:
                spk = name[:5] + re.search(r"_([FM])\d+$", name).group(1)  # Ses01F_impro01_M000 -> Ses01M
                utt = f"{spk}-{name}"
                path = os.path.join(sess, "sentences", "wav", dialog, f"{name}.wav")
                if emo not in EMOTIONS:
                    yield Skip(utt, path, "label-not-used", f"emotion {emo!r} is not one of the 4 classes")
                    continue
                yield Entry(utt, spk, path, texts.get(name, NO_TRANSCRIPT), EMOTIONS[emo])


# ---------------------------------------------------------------------------------------
# VoxCeleb1
# ---------------------------------------------------------------------------------------
def _voxceleb_wavs(root: str) -> dict[str, str]:
    """{"id10270/x6uYqmx31kE/00001.wav": absolute path} over every wav/ folder of the release."""
    out = {}
    for release in ("", "vox1_dev_wav", "vox1_test_wav"):
        for p in sorted(glob.glob(os.path.join(root, release, "wav", "id*", "*", "*.wav"))):
            out["/".join(p.split(os.sep)[-3:])] = p
    if not out:
        raise FileNotFoundError(f"{root}: no wav/id*/<video>/<n>.wav files (nor under vox1_dev_wav/ or vox1_test_wav/)")
    return out


def _voxceleb_trial_file(root: str) -> str:
    for cand in (os.path.join(root, "veri_test2.txt"), os.path.join(root, "meta", "veri_test2.txt")):
        if os.path.isfile(cand):
            return cand
    raise FileNotFoundError(f"{root}: no veri_test2.txt (nor meta/veri_test2.txt)")


def _vox_utt(rel: str) -> str:
    spk, video, n = rel[:-4].split("/")
    return f"{spk}-{video}-{n}"


def read_voxceleb1(root: str, split: str, dev_per_speaker: int = 2, **_) -> Iterator[Entry]:
    if split not in ("train", "dev", "test"):
        raise ValueError(f"VoxCeleb1 split must be train, dev or test, got {split!r}")
    wavs = _voxceleb_wavs(root)
    test_spk = {rel.split("/")[0] for row in read_trials(_voxceleb_trial_file(root)) for rel in row[1:]}
    by_spk = defaultdict(list)
    for rel in sorted(wavs):
        by_spk[rel.split("/")[0]].append(rel)
    for spk in sorted(by_spk):
        if (split == "test") != (spk in test_spk):  # test: the trial list's speakers; train, dev: the others
            continue
        rels = by_spk[spk]
        cut = len(rels) - dev_per_speaker if len(rels) > dev_per_speaker else len(rels)
        chosen = rels if split == "test" else rels[cut:] if split == "dev" else rels[:cut]
        for rel in chosen:
            yield Entry(_vox_utt(rel), spk, wavs[rel], NO_TRANSCRIPT, spk)


def voxceleb_trials(root: str, data_dir: str) -> dict:
    """Write ``<data_dir>/trials`` (``<1|0> <enrol utt> <test utt>``) from veri_test2.txt, keeping
    trials whose two utterances are in the data dir; the others are counted and logged."""
    have = set(read_table(os.path.join(data_dir, "wav.scp")))
    path = _voxceleb_trial_file(root)
    kept, missing = [], []
    for lab, a, b in read_trials(path):
        ua, ub = _vox_utt(a), _vox_utt(b)
        (kept if ua in have and ub in have else missing).append((lab, ua, ub))
    if not kept:
        raise ValueError(f"{path}: no trial has both utterances in {data_dir}")
    write_trials(os.path.join(data_dir, "trials"), kept)
    if missing:
        logger.warning(
            "%s: %d of %d trials left out: an utterance is missing from %s (first: %s %s)",
            path,
            len(missing),
            len(kept) + len(missing),
            data_dir,
            missing[0][1],
            missing[0][2],
        )
    logger.info("%s/trials: %d trials from %s", data_dir, len(kept), path)
    return {"kept": len(kept), "missing": len(missing)}


# ---------------------------------------------------------------------------------------
# Speech Commands v2
# ---------------------------------------------------------------------------------------
def _list(root: str, name: str) -> set[str]:
    path = os.path.join(root, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (Speech Commands v2 ships validation_list.txt and testing_list.txt)")
    with open(path, encoding="utf-8") as fh:
        return {line.strip() for line in fh if line.strip()}


def silence_slices(root: str, split: str, count: int | None, out_dir: str) -> list[Entry]:
    """1 s slices of the background-noise files for ``split`` (see the module doc), written as
    16-bit wav files into ``<out_dir>/silence_wavs/`` (atomically); returns their entries."""
    import soundfile as sf

    noise = sorted(glob.glob(os.path.join(root, "_background_noise_", "*.wav")))
    slices = []  # (file, start sample, sample rate)
    for f in noise:
        info = sf.info(f)
        sr = int(info.samplerate)
        slices += [(f, k * sr, sr) for k in range(int(info.frames // sr))]
    which = {"dev": (8,), "test": (9,), "train": tuple(range(8))}[split]
    mine = [s for k, s in enumerate(slices) if k % 10 in which]
    if count is not None and count < len(mine):  # evenly spaced over the split's share
        mine = [mine[round(i * (len(mine) - 1) / max(1, count - 1))] for i in range(count)] if count > 0 else []
    out = os.path.join(out_dir, "silence_wavs")
    os.makedirs(out, exist_ok=True)
    entries = []
    for f, start, sr in mine:
        name = re.sub(r"[^A-Za-z0-9]+", "_", os.path.basename(f)[:-4])
        utt = f"silence-{name}-{start // sr:04d}"
        path = os.path.join(out, f"{utt}.wav")
        if not os.path.exists(path):
            audio, _ = sf.read(f, start=start, frames=sr, dtype="int16")
            with atomic_open(path, "wb", encoding=None) as fh:
                sf.write(fh, audio, sr, subtype="PCM_16", format="WAV")
        entries.append(Entry(utt, "silence", path, "<silence>", "_silence_"))
    return entries


def read_speech_commands(
    root: str, split: str, out_dir: str | None = None, silence_per_split: int | None = None, **_
) -> Iterator[Entry]:
    if split not in ("train", "dev", "test"):
        raise ValueError(f"Speech Commands split must be train, dev or test, got {split!r}")
    valid, test = _list(root, "validation_list.txt"), _list(root, "testing_list.txt")
    rels = sorted(
        "/".join(p.split(os.sep)[-2:])
        for p in glob.glob(os.path.join(root, "*", "*.wav"))
        if not p.split(os.sep)[-2].startswith("_")
    )
    if not rels:
        raise FileNotFoundError(f"{root}: no <word>/*.wav files (not a Speech Commands folder?)")
    chosen = [
        r for r in rels if (r in test if split == "test" else r in valid if split == "dev" else r not in valid | test)
    ]
    per_class = defaultdict(int)
    for rel in chosen:
        word, fname = rel.split("/")
        spk, _, n = fname[:-4].partition("_nohash_")
        label = word if word in KEYWORDS else "_unknown_"
        per_class[label] += 1
        yield Entry(f"{spk}-{word}-{n}", spk, os.path.join(root, rel), word, label)
    if out_dir is None:
        raise ValueError("Speech Commands needs out_dir: the _silence_ slices are written there")
    kw = [per_class[k] for k in KEYWORDS if per_class[k]]
    count = silence_per_split if silence_per_split is not None else (round(sum(kw) / len(kw)) if kw else 0)
    yield from silence_slices(root, split, count, out_dir)


READERS = {"iemocap": read_iemocap, "voxceleb1": read_voxceleb1, "speech_commands": read_speech_commands}
