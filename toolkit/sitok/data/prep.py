"""Corpus preparation: turn a corpus on disk into Kaldi-style data dirs (+ a SpeechBrain
manifest), the same files for every corpus.

Each reader yields :class:`Entry` rows; :func:`make_data_dir` checks every audio header and
transcript, skips what is unusable (naming the file and the reason in ``skipped.tsv`` and
counting skips in the log) and writes the data dir atomically, file by file. With
``segment_long``, recordings over the duration limit are cut into utterances in their silences
(a ``segments`` table, see :func:`make_data_dir`) instead of being skipped.

Readers:
* :func:`read_mini` — the embedded synthetic corpus (``sitok.data.synth``);
* :func:`read_librispeech` — ``<root>/LibriSpeech/<split>/<spk>/<chapter>/*.flac`` with
  ``<spk>-<chapter>.trans.txt``;
* :func:`read_libritts` — ``<root>/LibriTTS/<split>/<spk>/<chapter>/<utt>.wav`` with
  ``<utt>.normalized.txt``;
* :func:`read_librilight` — ``<root>/librilight/<split>/<spk>/<book>/*.flac``, no transcripts
  (hour-long files: use ``segment_long``);
* :func:`read_emilia` — ``<root>/Emilia/<LANG>/``: batch ``*.jsonl`` manifests (or a ``.json``
  beside each audio file) with id, text and speaker;
* ``iemocap``, ``voxceleb1``, ``speech_commands`` — the DASB probe corpora (``sitok.data.dasb_prep``).
A reader may also yield :class:`Skip` rows for items it leaves out on purpose; they are counted.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator

from sitok.data.audio import AudioError, load_audio, probe_audio
from sitok.data.dasb_prep import NO_TRANSCRIPT
from sitok.data.dasb_prep import READERS as DASB_READERS
from sitok.data.entries import Entry, Skip, summarize_skips, write_skipped
from sitok.data.kaldi import DataDir
from sitok.data.segment import SegmentConfig, segment_speech
from sitok.data.synth import read_metadata
from sitok.data.text import check_transcript, non_ascii_count

logger = logging.getLogger(__name__)

_SPECIAL = re.compile(r"^<[a-z_]+>$")  # non-speech markers such as <silence> are kept as they are
_UTT_ID = re.compile(r"^[A-Za-z0-9_.\-]+$")


def make_data_dir(
    entries: Iterable[Entry | Skip],
    out_dir: str,
    *,
    min_duration: float = 0.1,
    max_duration: float = 60.0,
    segment_long: bool = False,
    segment_max: float = 20.0,
    segment_backend: str = "energy",
) -> tuple[DataDir, list[Skip]]:
    """Check and write one data dir. Returns the kept data and the skipped items.

    A recording longer than ``max_duration`` is skipped ("too-long"), unless ``segment_long``:
    then it is cut in its silences (:mod:`sitok.data.segment`, ``segment_backend``) into
    utterances of at most ``segment_max`` seconds, ``<recording>-<k>`` (k = 0000, 0001, ... in
    time order), each listed in ``segments`` (``utt recording start end``) with the recording's
    file in ``wav.scp``, its speaker and label, and the segment's length in ``utt2dur``. Which
    words fall in which segment is unknown, so the text of a recording cut into several
    segments is the ``<no_transcript>`` marker (left out of vocabularies and CTC targets); a
    recording that gives one segment keeps its whole transcript, since that segment holds all
    its speech. A long recording without transcript is segmented too (marker text); one with no
    speech found is skipped ("no-speech"), and segments shorter than ``min_duration`` are
    skipped ("too-short"). Recordings within ``max_duration`` are written as without the option.
    """
    if segment_long and segment_max > max_duration:
        raise ValueError(f"segment_max {segment_max:g}s exceeds max_duration {max_duration:g}s")
    seg_cfg = SegmentConfig(max_segment=segment_max, backend=segment_backend) if segment_long else None
    wav_scp, text, utt2spk, utt2dur, utt2label, segments = {}, {}, {}, {}, {}, {}
    segmented: set[str] = set()  # recordings cut into segments (their ids are no utterance ids)
    skips: list[Skip] = []
    n_non_ascii = 0
    for e in entries:
        if isinstance(e, Skip):  # left out by the reader itself (e.g. a label not used): counted here
            skips.append(e)
            continue
        if not _UTT_ID.match(e.utt) or not e.utt.startswith(e.speaker):
            skips.append(Skip(e.utt, e.path, "bad-utt-id", "ids need [A-Za-z0-9_.-] and the speaker id as prefix"))
            continue
        if e.utt in wav_scp or e.utt in segmented:
            skips.append(Skip(e.utt, e.path, "duplicate-utt"))
            continue
        if e.text is None and not segment_long:
            skips.append(Skip(e.utt, e.path, "no-transcript"))
            continue
        norm = None  # a long recording may come without transcript when it is segmented
        if e.text is not None:
            raw = e.text.strip()
            norm, problem = (raw, None) if _SPECIAL.match(raw) else check_transcript(raw)
            n_non_ascii += non_ascii_count(raw) > 0
            if problem:
                skips.append(Skip(e.utt, e.path, problem, f"transcript {raw[:40]!r} has no words"))
                continue
        try:
            info = probe_audio(e.path)
        except AudioError as exc:
            skips.append(Skip(e.utt, e.path, exc.reason, exc.detail))
            continue
        if info.duration < min_duration:
            skips.append(Skip(e.utt, e.path, "too-short", f"{info.duration:.3f}s < {min_duration:g}s"))
            continue
        if info.duration > max_duration:
            if seg_cfg is None:
                skips.append(Skip(e.utt, e.path, "too-long", f"{info.duration:.1f}s > {max_duration:g}s"))
                continue
            kept, dropped = _segment_recording(e, norm, info.sample_rate, seg_cfg, min_duration)
            skips += dropped
            if any(u in wav_scp for u in kept):
                skips.append(Skip(e.utt, e.path, "duplicate-utt", "a segment id is already an utterance"))
                continue
            segmented.add(e.utt)
            for utt, (start, end, seg_text) in kept.items():
                wav_scp[utt] = os.path.abspath(e.path)
                text[utt] = seg_text
                utt2spk[utt] = e.speaker
                utt2dur[utt] = f"{end - start:.4f}"
                segments[utt] = f"{e.utt} {start:.4f} {end:.4f}"
                if e.label is not None:
                    utt2label[utt] = e.label
            continue
        if norm is None:
            skips.append(Skip(e.utt, e.path, "no-transcript"))
            continue
        wav_scp[e.utt] = os.path.abspath(e.path)
        text[e.utt] = norm
        utt2spk[e.utt] = e.speaker
        utt2dur[e.utt] = f"{info.duration:.4f}"
        if e.label is not None:
            utt2label[e.utt] = e.label
    tables = {"wav.scp": wav_scp, "text": text, "utt2spk": utt2spk, "utt2dur": utt2dur}
    if utt2label:
        tables["utt2label"] = utt2label
    if segments:
        tables["segments"] = segments
    dd = DataDir(tables)
    dd.save(out_dir)
    dd.to_manifest(os.path.join(out_dir, "manifest.csv"))
    write_skipped(os.path.join(out_dir, "skipped.tsv"), skips)
    hours = sum(float(d) for d in utt2dur.values()) / 3600
    logger.info(
        "%s: %d utterances, %d speakers, %.2f h; %s%s",
        out_dir,
        len(dd),
        len(set(utt2spk.values())),
        hours,
        summarize_skips(skips),
        f"; {n_non_ascii} transcripts had non-ASCII characters (transliterated)" if n_non_ascii else "",
    )
    for s in skips[:10]:
        logger.warning("skipped %s (%s): %s %s", s.utt, s.path, s.reason, s.detail)
    if len(skips) > 10:
        logger.warning("... %d more skips listed in %s", len(skips) - 10, os.path.join(out_dir, "skipped.tsv"))
    return dd, skips


def _segment_recording(
    e: Entry, norm: str | None, sample_rate: int, cfg: SegmentConfig, min_duration: float
) -> tuple[dict[str, tuple[float, float, str]], list[Skip]]:
    """Cut one long recording: {utt: (start, end, text)} of its segments, and the skips (an
    unreadable or speechless recording, segments shorter than ``min_duration``)."""
    try:
        wav = load_audio(e.path, sample_rate)  # at its own rate: nothing is resampled
    except AudioError as exc:
        return {}, [Skip(e.utt, e.path, exc.reason, exc.detail)]
    spans = segment_speech(wav, sample_rate, cfg)
    if not spans:
        return {}, [Skip(e.utt, e.path, "no-speech", f"{cfg.backend} VAD found no speech")]
    seg_text = norm if len(spans) == 1 and norm is not None else NO_TRANSCRIPT
    kept, skips = {}, []
    for k, (start, end) in enumerate(spans):
        utt = f"{e.utt}-{k:04d}"
        if end - start < min_duration:
            skips.append(Skip(utt, e.path, "too-short", f"segment {start:.2f}-{end:.2f}s < {min_duration:g}s"))
        else:
            kept[utt] = (start, end, seg_text)
    return kept, skips


# ---------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------
def read_mini(corpus_root: str, split: str) -> Iterator[Entry]:
    rows = [r for r in read_metadata(corpus_root) if r["split"] == split]
    if not rows:
        raise ValueError(f"{corpus_root}/metadata.tsv: no utterance in split {split!r}")
    for r in rows:
        yield Entry(r["utt"], r["speaker"], os.path.join(corpus_root, r["path"]), r["text"], r["label"])


def _find_split(root: str, corpus: str, split: str) -> str:
    for cand in (os.path.join(root, corpus, split), os.path.join(root, split)):
        if os.path.isdir(cand):
            return cand
    raise FileNotFoundError(
        f"{corpus} split {split!r} not found under {root} (looked for {root}/{corpus}/{split} and "
        f"{root}/{split}); point --db_root at the folder holding the extracted {corpus}/"
    )


def _split_files(root: str, corpus: str, split: str, name: str, what: str) -> list[str]:
    """The files ``*/*/<name>`` (a glob: speaker/chapter folders) of a corpus split, sorted;
    FileNotFoundError naming ``what`` was looked for when there are none."""
    base = _find_split(root, corpus, split)
    found = sorted(glob.glob(os.path.join(base, "*", "*", name)))
    if not found:
        raise FileNotFoundError(f"{base}: no */*/{name} {what} (not a {corpus} split?)")
    return found


def read_librispeech(root: str, split: str) -> Iterator[Entry]:
    """LibriSpeech: one ``<spk>-<chapter>.trans.txt`` per chapter, lines ``<utt> TEXT``."""
    for trans in _split_files(root, "LibriSpeech", split, "*.trans.txt", "transcript files"):
        chapter_dir = os.path.dirname(trans)
        with open(trans, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                utt, _, words = line.strip().partition(" ")
                spk = utt.split("-")[0]
                audio = os.path.join(chapter_dir, f"{utt}.flac")
                if not os.path.exists(audio) and os.path.exists(audio[:-5] + ".wav"):
                    audio = audio[:-5] + ".wav"
                yield Entry(utt, spk, audio, words)


def read_libritts(root: str, split: str) -> Iterator[Entry]:
    """LibriTTS / LibriTTS-R: ``<utt>.wav`` beside ``<utt>.normalized.txt``."""
    for wav in _split_files(root, "LibriTTS", split, "*.wav", "files"):
        utt = os.path.basename(wav)[:-4]
        spk = utt.split("_")[0]
        txt = wav[:-4] + ".normalized.txt"
        if not os.path.exists(txt):
            txt = wav[:-4] + ".original.txt"
        text = None
        if os.path.exists(txt):
            with open(txt, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        yield Entry(utt, spk, wav, text)


def _kaldi_id(text: str) -> str:
    """A string usable inside a Kaldi id: letters, digits, '_' and '-' kept, anything else '_'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def read_librilight(root: str, split: str) -> Iterator[Entry]:
    """Libri-Light (small / medium / large / duplicate): ``<speaker>/<book>/<name>.flac``, no
    transcripts (the ``<no_transcript>`` marker). Its files run to an hour: prepare with
    ``segment_long`` to cut them into utterances."""
    for audio in _split_files(root, "librilight", split, "*.flac", "audio files"):
        book_dir = os.path.dirname(audio)
        spk = _kaldi_id(os.path.basename(os.path.dirname(book_dir)))
        book = _kaldi_id(os.path.basename(book_dir))
        name = _kaldi_id(os.path.splitext(os.path.basename(audio))[0])
        yield Entry(f"{spk}-{book}-{name}", spk, audio, NO_TRANSCRIPT)


def _emilia_rows(base: str) -> Iterator[tuple[dict, str]]:
    """(metadata, audio path) of every Emilia utterance under ``base``: the rows of its
    ``*.jsonl`` files (``wav`` relative to the file's folder or to the folder named after it),
    else the ``.json`` beside each audio file."""
    manifests = sorted(glob.glob(os.path.join(base, "**", "*.jsonl"), recursive=True))
    for manifest in manifests:
        here, stem = os.path.dirname(manifest), os.path.splitext(os.path.basename(manifest))[0]
        with open(manifest, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    rel = row["wav"]
                except (ValueError, KeyError, TypeError):
                    raise ValueError(f"{manifest}:{n}: not a JSON object with a 'wav' field") from None
                cands = [
                    os.path.join(here, rel),
                    os.path.join(here, stem, rel),
                    os.path.join(here, stem, os.path.basename(rel)),
                ]
                yield row, next((c for c in cands if os.path.exists(c)), cands[0])
    if manifests:
        return
    for side in sorted(glob.glob(os.path.join(base, "**", "*.json"), recursive=True)):
        audio = next((side[:-5] + ext for ext in (".mp3", ".flac", ".wav") if os.path.exists(side[:-5] + ext)), None)
        if audio is None:
            continue
        with open(side, encoding="utf-8") as fh:
            try:
                row = json.load(fh)
            except ValueError:
                raise ValueError(f"{side}: not valid JSON") from None
        yield (row if isinstance(row, dict) else {}), audio


def read_emilia(root: str, split: str) -> Iterator[Entry]:
    """Emilia (``split`` = a language folder: EN, ZH, DE, FR, JA, KO): utterances
    ``<LANG>_B<batch>_S<speaker>_W<n>`` with their text and speaker from the batch ``*.jsonl``
    files or the per-file ``.json`` metadata; the speaker is the id without its ``_W`` part when
    the metadata has none."""
    base = _find_split(root, "Emilia", split)
    found = False
    for row, audio in _emilia_rows(base):
        found = True
        utt = _kaldi_id(str(row.get("id") or os.path.splitext(os.path.basename(audio))[0]))
        spk = _kaldi_id(str(row.get("speaker") or utt.rsplit("_W", 1)[0]))
        if not utt.startswith(spk):
            utt = f"{spk}-{utt}"
        text = row.get("text")
        yield Entry(utt, spk, audio, text.strip() if isinstance(text, str) else None)
    if not found:
        raise FileNotFoundError(
            f"{base}: no *.jsonl manifest and no audio with a .json beside it (not an Emilia split?)"
        )


READERS = {
    "mini": read_mini,
    "librispeech": read_librispeech,
    "libritts": read_libritts,
    "librilight": read_librilight,
    "emilia": read_emilia,
}


def get_reader(corpus: str):
    """The reader of ``corpus``: READERS above or a DASB probe corpus (sitok.data.dasb_prep)."""
    readers = {**READERS, **DASB_READERS}
    if corpus not in readers:
        raise ValueError(f"unknown corpus {corpus!r}; expected one of {sorted(readers)}")
    return readers[corpus]
