"""Sharded audio for paper-scale corpora: training reads tar shards and computes the log-mel on
the fly, so no feature dump is needed.

    write_shards("data/train", "shards/train", max_count=2000, max_seconds=3600)
    ds = ShardDataset("shards/train", cmvn="dump/train/cmvn.json", batch_seconds=200)
    loader = DataLoader(ds, batch_size=None, num_workers=4, collate_fn=collate)

Layout of a shard directory (WebDataset tar files, readable by any tar tool)::

    shard-000000.tar   per utterance <key>.flac (or .wav; mono, 16-bit PCM by default, at the
                       data's own rate), <key>.txt (transcript), <key>.json (id, speaker,
                       duration, sample rate); keys are "<shard>_<position>", never the
                       utterance id (ids with dots would break the key/extension split)
    shard-000000.json  the shard's utterance ids, durations, skipped audio and the stamp of what
                       it was made from; written after its tar, so it marks the shard complete
    index.json         shard names, utterance counts, seconds; written atomically, last
    skipped.tsv        unusable audio left out (utt, file, reason, detail)

Utterances are assigned to shards in a seeded random order (a shard mixes speakers), a shard
closing at ``max_count`` utterances or ``max_seconds`` of audio (from ``utt2dur``), so the
assignment is known before any audio is read. Each shard is an independent job: a killed run
redoes only the shards without a current ``.json``, and a complete output made from the same
inputs and options is left untouched.

Audio is read as the feature stage reads it (:func:`sitok.data.audio.load_audio`: the same
checks and channel down-mix) and stored at its own rate, unless ``sample_rate`` asks for
resampling at write time. The reader resamples to the mel rate with the same band-limited
resampler as the feature stage, so for 16-bit mono sources (every prepared corpus here) the
on-the-fly log-mel equals the dumped one exactly (tests/test_shards.py measures it). Other
sources (float or 24-bit samples, several channels) are quantised to ``bits`` when written, and
so is audio resampled at write time: 16-bit quantisation of resampled audio moves quiet mel bins
(up to 0.3 in log units on the test tones), so keep the default rate or use ``bits=24`` there.

Reading (:class:`ShardDataset`) plans each epoch from the index alone, before reading audio:

1. the shard order is a permutation seeded by ``(seed, epoch)``; the epoch's samples are the
   shards' samples in that order;
2. that sequence is cut into ``world_size * num_workers`` contiguous slices whose sizes differ
   by at most one (slice ``rank * num_workers + worker``), so every sample is read by exactly one
   rank and worker, whatever the shard count; ``even=True`` makes every slice ``N // slices``
   long instead, leaving out the remaining ``N mod slices`` samples of that epoch;
3. each slice is shuffled with a seeded buffer of ``shuffle_buffer`` samples, then optionally
   grouped into batches by duration (a bucketing buffer of ``bucket_buffer`` samples is sorted
   by duration and cut into batches of at most ``batch_seconds`` padded seconds).

The plan is a list of batches of (shard, position); the reader reads the slice's shards in
order, keeps only the samples still to come and yields them as planned, holding at most about
``shuffle_buffer + bucket_buffer`` undecoded samples. Resumption is therefore exact: a
:class:`StreamState` counts the samples the training loop received from each slice, and a run
given that state skips the first that-many samples of each slice's plan (shards that are
entirely consumed are not opened), yielding exactly the rest of the uninterrupted sequence.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterator

import numpy as np
import soundfile as sf
import torch

from sitok.data.audio import AudioError, load_audio, probe_audio, resample
from sitok.data.entries import Skip, summarize_skips, write_skipped
from sitok.data.kaldi import DataDir, DataDirError
from sitok.data.mel import GlobalCMVN, MelConfig, MelFrontend
from sitok.data.ranks import micro_batch_layout, process_rank
from sitok.fileio import atomic_open, write_text_atomic
from sitok.stamp import make_stamp, read_stamp

logger = logging.getLogger(__name__)

INDEX = "index.json"
FORMAT_VERSION = 1
AUDIO_FORMATS = ("flac", "wav")
BITS = (16, 24)


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.tar"


def _sidecar(out_dir: str, i: int) -> str:
    return os.path.join(out_dir, f"shard-{i:06d}.json")


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def _read_data_dir(data_dir: str) -> tuple[DataDir, dict[str, float]]:
    """The data dir and its durations; any inconsistency is a DataDirError naming the file."""
    dd = DataDir.load(data_dir)  # names a missing wav.scp / text / utt2spk and bad lines
    if os.path.exists(os.path.join(data_dir, "segments")):
        raise DataDirError(f"{data_dir}/segments: segmented recordings are not supported; cut them into files first")
    if not dd.utts:
        raise DataDirError(f"{data_dir}/wav.scp: no utterances")
    if "utt2dur" not in dd.tables:
        raise DataDirError(f"{data_dir}/utt2dur: missing (the prep stage writes it)")
    for name in ("text", "utt2spk", "utt2dur"):
        table = dd.tables[name]
        lacking = [u for u in dd.utts if u not in table]
        if lacking:
            raise DataDirError(
                f"{data_dir}/{name}: no entry for {len(lacking)} utterances of wav.scp, e.g. {lacking[0]!r}"
            )
    durations = {}
    for utt in dd.utts:
        value = dd.tables["utt2dur"][utt]
        try:
            durations[utt] = float(value)
        except ValueError:
            durations[utt] = math.nan
        if not durations[utt] > 0 or not math.isfinite(durations[utt]):
            raise DataDirError(f"{data_dir}/utt2dur: bad duration {value!r} for utterance {utt!r}")
    return dd, durations


def plan_shards(
    utts: list[str], durations: dict[str, float], *, max_count: int, max_seconds: float, seed: int
) -> list[list[str]]:
    """Utterances in a random order seeded by ``seed``, cut into shards of at most ``max_count``
    utterances and ``max_seconds`` of audio (an utterance longer than that gets a shard alone)."""
    order = [utts[i] for i in np.random.default_rng(seed).permutation(len(utts))]
    shards: list[list[str]] = []
    cur: list[str] = []
    seconds = 0.0
    for utt in order:
        if cur and (len(cur) >= max_count or seconds + durations[utt] > max_seconds):
            shards.append(cur)
            cur, seconds = [], 0.0
        cur.append(utt)
        seconds += durations[utt]
    if cur:
        shards.append(cur)
    return shards


def encode_audio(wav: np.ndarray, sample_rate: int, audio_format: str = "flac", bits: int = 16) -> bytes:
    """Float samples in [-1, 1) -> FLAC/WAV bytes of ``bits``-bit PCM. The quantisation is done
    here (round to the nearest step, clip), so a 16-bit source read as float is stored unchanged."""
    scale = 2 ** (bits - 1)
    q = np.clip(np.round(np.asarray(wav, np.float64) * scale), -scale, scale - 1)
    # 24-bit PCM is written from the top 24 bits of an int32 container
    data = q.astype(np.int16) if bits == 16 else q.astype(np.int32) << 8
    buf = io.BytesIO()
    sf.write(buf, data, sample_rate, format=audio_format.upper(), subtype=f"PCM_{bits}")
    return buf.getvalue()


def _shard_stamp(utts: list[str], dd: DataDir, options: dict) -> dict:
    """What one shard is made from: its utterances (id, audio path, transcript, speaker) and the
    audio options. A shard whose stamp differs is rewritten."""
    t = dd.tables
    listing = "".join(f"{u}\t{t['wav.scp'][u]}\t{t['text'][u]}\t{t['utt2spk'][u]}\n" for u in utts)
    return {
        "inputs": {"utterances": hashlib.sha256(listing.encode()).hexdigest()},
        "options": {k: str(v) for k, v in sorted(options.items())},
    }


def _write_shard(args) -> dict:
    """Job: write shard ``i`` (tar, then its .json). Returns the .json's content."""
    i, utts, tables, out_dir, options, stamp = args
    path = os.path.join(out_dir, shard_name(i))
    ids, durations, skipped = [], [], []
    import webdataset as wds

    with atomic_open(path, "wb") as fh:
        writer = wds.TarWriter(fh, encoder=False, mtime=0)  # fixed mtime: the same input, the same bytes
        for utt in utts:
            wav_path = tables["wav.scp"][utt]
            try:
                rate = options["sample_rate"] or probe_audio(wav_path).sample_rate
                wav = load_audio(
                    wav_path, rate, min_duration=options["min_duration"], max_duration=options["max_duration"]
                ).numpy()
            except AudioError as exc:
                skipped.append([utt, wav_path, exc.reason, exc.detail])
                continue
            key = f"{i:06d}_{len(ids):06d}"
            meta = {"id": utt, "speaker": tables["utt2spk"][utt], "sample_rate": rate, "num_samples": len(wav)}
            meta["duration"] = len(wav) / rate
            fmt = options["audio_format"]
            writer.write(
                {
                    "__key__": key,
                    fmt: encode_audio(wav, rate, fmt, options["bits"]),
                    "txt": tables["text"][utt].encode("utf-8"),
                    "json": json.dumps(meta, ensure_ascii=False).encode("utf-8"),
                }
            )
            ids.append(utt)
            durations.append(meta["duration"])
        writer.close()
    side = {
        "name": shard_name(i),
        "ids": ids,
        "durations": durations,
        "seconds": sum(durations),
        "bytes": os.path.getsize(path),
        "skipped": skipped,
        "stamp": stamp,
    }
    write_text_atomic(_sidecar(out_dir, i), json.dumps(side, ensure_ascii=False) + "\n")
    return side


def _shard_done(out_dir: str, i: int, stamp: dict) -> dict | None:
    """The shard's .json when it records ``stamp`` and its tar has the recorded size, else None."""
    side = read_stamp(_sidecar(out_dir, i))
    tar = os.path.join(out_dir, shard_name(i))
    if side is None or side.get("stamp") != stamp or not os.path.isfile(tar):
        return None
    return side if os.path.getsize(tar) == side.get("bytes") else None


def _index_current(out_dir: str, stamp: dict) -> dict | None:
    index = read_stamp(os.path.join(out_dir, INDEX))
    if index is None or index.get("stamp") != stamp:
        return None
    for s in index.get("shards", []):
        tar = os.path.join(out_dir, s["name"])
        if not os.path.isfile(tar) or os.path.getsize(tar) != s["bytes"]:
            return None
    return index


def _clean(out_dir: str, n_shards: int) -> None:
    """Remove temporary files of killed runs and shards beyond ``n_shards`` (a larger earlier run)."""
    for path in glob.glob(os.path.join(out_dir, "*.tmp*")):
        os.remove(path)
    for path in glob.glob(os.path.join(out_dir, "shard-*.*")):
        m = re.search(r"shard-(\d+)\.(tar|json)$", path)
        if m and int(m.group(1)) >= n_shards:
            os.remove(path)


def write_shards(
    data_dir: str,
    out_dir: str,
    *,
    max_count: int = 2000,
    max_seconds: float = 3600.0,
    audio_format: str = "flac",
    bits: int = 16,
    sample_rate: int | None = None,
    min_duration: float = 0.1,
    max_duration: float = 60.0,
    seed: int = 0,
    nj: int = 1,
    progress: bool = True,
) -> dict:
    """Write the WebDataset shards of ``data_dir`` to ``out_dir`` (see the module docstring).

    ``sample_rate=None`` stores each file at its own rate; an integer resamples at write time.
    Unusable audio is left out and listed in ``skipped.tsv`` (like the feature stage). Returns
    the index (also written to ``out_dir/index.json``); a complete output made from the same
    inputs and options is returned as it is, nothing rewritten."""
    from tqdm import tqdm

    if audio_format not in AUDIO_FORMATS:
        raise ValueError(f"write_shards: audio_format must be one of {AUDIO_FORMATS}, got {audio_format!r}")
    if bits not in BITS:
        raise ValueError(f"write_shards: bits must be one of {BITS}, got {bits!r}")
    if max_count < 1 or not max_seconds > 0:
        raise ValueError(f"write_shards: max_count ({max_count}) and max_seconds ({max_seconds}) must be positive")
    dd, durations = _read_data_dir(data_dir)
    options = {
        "audio_format": audio_format,
        "bits": bits,
        "sample_rate": sample_rate,
        "min_duration": min_duration,
        "max_duration": max_duration,
    }
    plan_options = {"max_count": max_count, "max_seconds": max_seconds, "seed": seed, **options}
    tables = ("wav.scp", "text", "utt2spk", "utt2dur")
    stamp = make_stamp({n: os.path.join(data_dir, n) for n in tables}, plan_options)
    index = _index_current(out_dir, stamp)
    if index is not None:
        logger.info("%s: up to date (%d shards, %d utterances)", out_dir, len(index["shards"]), index["utterances"])
        return index

    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(os.path.join(out_dir, INDEX)):
        os.remove(os.path.join(out_dir, INDEX))  # never an index over shards about to change
    shards = plan_shards(dd.utts, durations, max_count=max_count, max_seconds=max_seconds, seed=seed)
    _clean(out_dir, len(shards))
    stamps = [_shard_stamp(utts, dd, options) for utts in shards]
    sides: dict[int, dict] = {}
    for i in range(len(shards)):
        side = _shard_done(out_dir, i, stamps[i])
        if side is not None:
            sides[i] = side
    jobs = [(i, shards[i], dd.tables, out_dir, options, stamps[i]) for i in range(len(shards)) if i not in sides]
    if sides:
        logger.info("%s: %d of %d shards already written, writing %d", out_dir, len(sides), len(shards), len(jobs))
    bar = tqdm(total=len(shards), initial=len(sides), desc=f"shards {os.path.basename(out_dir)}", disable=not progress)
    if nj > 1 and len(jobs) > 1:
        from multiprocessing import get_context

        # forkserver, not fork: forking after torch has started threads can deadlock
        with get_context("forkserver").Pool(
            min(nj, len(jobs)), initializer=torch.set_num_threads, initargs=(1,)
        ) as pool:
            for side in pool.imap_unordered(_write_shard, jobs):
                sides[int(side["name"][6:12])] = side
                bar.update(1)
    else:
        for job in jobs:
            sides[job[0]] = _write_shard(job)
            bar.update(1)
    bar.close()

    skips = [Skip(*row) for i in range(len(shards)) for row in sides[i]["skipped"]]
    write_skipped(os.path.join(out_dir, "skipped.tsv"), skips)
    listed = [{k: sides[i][k] for k in ("name", "bytes", "seconds")} for i in range(len(shards))]
    for entry, i in zip(listed, range(len(shards))):
        entry["utterances"] = len(sides[i]["ids"])
    total = sum(s["utterances"] for s in listed)
    if total == 0:
        raise RuntimeError(f"{out_dir}: every utterance of {data_dir} was skipped; see {out_dir}/skipped.tsv")
    seconds = sum(s["seconds"] for s in listed)
    index = {
        "format": "sitok-shards",
        "version": FORMAT_VERSION,
        "data_dir": os.path.abspath(data_dir),
        "audio": options,
        "shards": listed,
        "utterances": total,
        "seconds": seconds,
        "hours": seconds / 3600,
        "skipped": len(skips),
        "stamp": stamp,
    }
    write_text_atomic(os.path.join(out_dir, INDEX), json.dumps(index, indent=1, ensure_ascii=False) + "\n")
    logger.info(
        "%s: %d shards, %d utterances (%.2f h); %s", out_dir, len(listed), total, seconds / 3600, summarize_skips(skips)
    )
    for s in skips[:10]:
        logger.warning("skipped %s (%s): %s %s", s.utt, s.path, s.reason, s.detail)
    return index


# ---------------------------------------------------------------------------------------
# Reading: the epoch plan
# ---------------------------------------------------------------------------------------


def read_index(shard_dir: str) -> dict:
    """``shard_dir/index.json``; a missing or foreign one is an error naming the file."""
    path = os.path.join(shard_dir, INDEX)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found (write the shards first: sitok write-shards DATA_DIR {shard_dir})")
    index = read_stamp(path)
    if index is None or index.get("format") != "sitok-shards" or not isinstance(index.get("shards"), list):
        raise ValueError(f"{path}: not a sitok shard index")
    return index


def slice_bounds(n: int, slice_id: int, num_slices: int, even: bool = False) -> tuple[int, int]:
    """[lo, hi) of slice ``slice_id`` of ``n`` samples: contiguous, sizes differing by at most one
    (or all ``n // num_slices`` long with ``even``)."""
    if even:
        size = n // num_slices
        return slice_id * size, (slice_id + 1) * size
    return slice_id * n // num_slices, (slice_id + 1) * n // num_slices


def _buffer_shuffle(items: list, size: int, rng: np.random.Generator) -> list:
    """A streaming shuffle: hold ``size`` items, emit a random one for each new item read. An item
    is emitted at most ``size`` places before it is read, so the reader's lookahead is bounded."""
    if size <= 1:
        return list(items)
    out, buf = [], []
    for it in items:
        buf.append(it)
        if len(buf) >= size:
            j = int(rng.integers(len(buf)))
            buf[j], buf[-1] = buf[-1], buf[j]
            out.append(buf.pop())
    out.extend(buf[j] for j in rng.permutation(len(buf)))
    return out


def _bucket(items: list, batch_seconds: float, buffer: int, max_batch_size: int, rng: np.random.Generator) -> list:
    """Dynamic batches: each group of ``buffer`` items is sorted by duration and cut so that
    batch size x longest duration stays within ``batch_seconds`` (the padded audio a batch
    holds); the group's batches come out in a random order."""
    out = []
    for start in range(0, len(items), max(1, buffer)):
        group = sorted(items[start : start + max(1, buffer)], key=lambda it: it[2])
        batches, cur = [], []
        for it in group:  # ascending: the new item is the longest of the batch
            if cur and ((len(cur) + 1) * it[2] > batch_seconds or len(cur) >= max_batch_size):
                batches.append(cur)
                cur = []
            cur.append(it)
        if cur:
            batches.append(cur)
        out.extend(batches[j] for j in rng.permutation(len(batches)))
    return out


def epoch_plan(
    counts: list[int],
    durations: Callable[[int], list[float]],
    *,
    epoch: int,
    seed: int,
    slice_id: int,
    num_slices: int,
    even: bool = False,
    shuffle_buffer: int = 0,
    batch_seconds: float | None = None,
    bucket_buffer: int = 1000,
    max_batch_size: int = 10**9,
) -> tuple[list[list[tuple[int, int, float]]], list[int]]:
    """The batches of one slice in one epoch, as lists of (shard, position, duration), and the
    shards it reads in reading order. ``counts`` are the shards' utterance counts; ``durations(i)``
    gives shard i's durations (read only for the shards this slice touches). Without
    ``batch_seconds`` every batch holds one sample."""
    order = np.random.default_rng([seed, epoch]).permutation(len(counts))
    lo, hi = slice_bounds(sum(counts), slice_id, num_slices, even)
    items, start = [], 0
    shards_read = []
    for s in order:
        s = int(s)
        a, b = max(lo, start), min(hi, start + counts[s])
        if a < b:
            dur = durations(s)
            items += [(s, p, dur[p]) for p in range(a - start, b - start)]
            shards_read.append(s)
        start += counts[s]
    items = _buffer_shuffle(items, shuffle_buffer, np.random.default_rng([seed, epoch, slice_id, 1]))
    if batch_seconds is None:
        return [[it] for it in items], shards_read
    rng = np.random.default_rng([seed, epoch, slice_id, 2])
    return _bucket(items, batch_seconds, bucket_buffer, max_batch_size, rng), shards_read


# ---------------------------------------------------------------------------------------
# Reading: resumption state
# ---------------------------------------------------------------------------------------


class StreamState:
    """What a training loop has received in the current epoch: samples per slice (slice =
    ``rank * num_workers + worker``). Feed it every batch (``update``), save ``to_dict()`` with the
    checkpoint, and give it back to :meth:`ShardDataset.load_state_dict` to resume::

        {"epoch": 3, "num_slices": 4, "consumed": {"0": 120, "1": 118}}

    Each rank sees only its own slices; states of several ranks combine with :meth:`merge`."""

    def __init__(self, epoch: int = 0, num_slices: int | None = None, consumed: dict[int, int] | None = None):
        self.epoch, self.num_slices = int(epoch), num_slices
        self.consumed: dict[int, int] = dict(consumed or {})

    def new_epoch(self, epoch: int) -> None:
        self.epoch, self.consumed = int(epoch), {}

    def update(self, batch) -> None:
        """Count a batch from :func:`collate` (or one sample dict, or a list of them)."""
        if isinstance(batch, dict) and not isinstance(batch.get("slice"), (list, tuple)):
            batch = {"slice": [batch["slice"]], "num_slices": [batch["num_slices"]]}
        elif isinstance(batch, list):
            batch = {"slice": [s["slice"] for s in batch], "num_slices": [s["num_slices"] for s in batch]}
        for s, n in zip(batch["slice"], batch["num_slices"]):
            if self.num_slices is not None and int(n) != self.num_slices:
                raise ValueError(f"StreamState: a sample of a {n}-slice stream in a {self.num_slices}-slice state")
            self.num_slices = int(n)
            self.consumed[int(s)] = self.consumed.get(int(s), 0) + 1

    def merge(self, other: StreamState) -> StreamState:
        if other.epoch != self.epoch or (
            None not in (self.num_slices, other.num_slices) and other.num_slices != self.num_slices
        ):
            raise ValueError(
                f"StreamState.merge: states of different epochs or layouts ({self.to_dict()}, {other.to_dict()})"
            )
        merged = dict(self.consumed)
        for s, n in other.consumed.items():
            merged[s] = merged.get(s, 0) + n
        return StreamState(self.epoch, self.num_slices or other.num_slices, merged)

    def to_dict(self) -> dict:
        consumed = {str(s): n for s, n in sorted(self.consumed.items())}
        return {"epoch": self.epoch, "num_slices": self.num_slices, "consumed": consumed}

    @classmethod
    def from_dict(cls, d: dict) -> StreamState:
        try:
            consumed = {int(s): int(n) for s, n in d.get("consumed", {}).items()}
            return cls(int(d["epoch"]), None if d.get("num_slices") is None else int(d["num_slices"]), consumed)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"StreamState: expected {{epoch, num_slices, consumed}}, got {d!r} ({exc})") from None


# ---------------------------------------------------------------------------------------
# Reading: the dataset
# ---------------------------------------------------------------------------------------


class ShardDataset(torch.utils.data.IterableDataset):
    """Stream a shard directory as training samples (see the module docstring for the plan).

    A sample is a dict: ``id``, ``mel`` [T, n_mels] (log-mel of :class:`MelFrontend`, normalised
    by ``cmvn`` when given), ``duration`` (seconds), ``text``, ``speaker``, ``tokens`` (LongTensor,
    when ``tokenize`` is given), ``wav`` (when ``return_wav``), and ``slice`` / ``num_slices`` for
    :class:`StreamState`. With ``batch_seconds`` the dataset yields lists of samples (dynamic
    batches): use ``DataLoader(ds, batch_size=None, collate_fn=collate)``; without it, one sample
    at a time: ``DataLoader(ds, batch_size=B, collate_fn=collate)``.

    Call :meth:`set_epoch` before each epoch (the DataLoader copies the dataset to its workers when
    iteration starts, so do not use ``persistent_workers``). ``device`` is where the mel is
    computed; inside DataLoader workers keep it "cpu" (CUDA cannot be used in forked workers).
    """

    def __init__(
        self,
        shard_dir: str,
        *,
        mel_cfg: MelConfig | None = None,
        cmvn: GlobalCMVN | str | None = None,
        tokenize: Callable[[str], list[int]] | None = None,
        seed: int = 0,
        epoch: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        even: bool = False,
        shuffle_buffer: int = 0,
        batch_seconds: float | None = None,
        bucket_buffer: int = 1000,
        max_batch_size: int = 10**9,
        features: str = "mel",
        return_wav: bool = False,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        if features not in ("mel", "none"):
            raise ValueError(f"ShardDataset: features must be 'mel' or 'none', got {features!r}")
        self.shard_dir = shard_dir
        self.index = read_index(shard_dir)
        self.mel_cfg = mel_cfg or MelConfig()
        self.cmvn = GlobalCMVN.load(cmvn) if isinstance(cmvn, str) else cmvn
        self.tokenize, self.seed, self.epoch = tokenize, seed, int(epoch)
        self.rank, self.world_size, _ = process_rank("ShardDataset", rank, world_size)
        self.even, self.shuffle_buffer = even, shuffle_buffer
        self.batch_seconds, self.bucket_buffer, self.max_batch_size = batch_seconds, bucket_buffer, max_batch_size
        self.features, self.return_wav, self.device = features, return_wav, torch.device(device)
        self._resume: StreamState | None = None
        self._frontend: MelFrontend | None = None
        self.worker_rotation = 0  # see slice_layout (a resumed ShardLoader sets it)
        # set by a ShardLoader with micro_batches_per_step (see slices()): the streams this process
        # reads, how many there are, DataLoader workers per stream, and the batches every slice gives
        self.streams: list[int] | None = None
        self.num_streams, self.stream_workers, self.slice_batches = 0, 1, None

    # ---- epochs and resumption ---------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its beginning (a resumption state of another epoch is dropped)."""
        self.epoch = int(epoch)
        if self._resume is not None and self._resume.epoch != self.epoch:
            self._resume = None

    def load_state_dict(self, state: dict | StreamState) -> None:
        """Resume: the epoch of ``state``, without the samples it records as consumed."""
        self._resume = state if isinstance(state, StreamState) else StreamState.from_dict(state)
        self.epoch = self._resume.epoch

    # ---- the plan -----------------------------------------------------------------------
    def _durations(self, s: int) -> list[float]:
        path = os.path.join(self.shard_dir, self.index["shards"][s]["name"][: -len(".tar")] + ".json")
        side = read_stamp(path)
        if side is None or len(side.get("durations", [])) != self.index["shards"][s]["utterances"]:
            raise ValueError(f"{path}: missing or inconsistent with {self.shard_dir}/{INDEX}; rewrite the shards")
        return side["durations"]

    def slice_layout(self) -> tuple[int, int]:
        """(slice id, number of slices) of the calling process (a DataLoader worker or not);
        DataLoader worker ``j`` reads the rank's slice ``(j + worker_rotation) % workers``."""
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * workers + (worker + self.worker_rotation) % workers, self.world_size * workers

    def slices(self) -> tuple[list[int], int]:
        """(the slices the calling process reads, interleaved batch by batch; number of slices).

        Without streams, :meth:`slice_layout`'s one slice. With streams (``micro_batches_per_step``
        M; the process reads streams ``streams``, A of them, each read by ``stream_workers`` = n
        DataLoader workers) there are M x n slices, slice ``stream * n + w``; DataLoader worker j
        reads stream ``streams[j % A]`` through its worker ``(j // A + worker_rotation) % n``, so
        the DataLoader's round robin returns every step's A micro-batches in stream order; a
        process without workers reads its A streams itself, interleaved."""
        if self.streams is None:
            slice_id, num_slices = self.slice_layout()
            return [slice_id], num_slices
        n, a_count = self.stream_workers, len(self.streams)
        info = torch.utils.data.get_worker_info()
        if info is None:
            return list(self.streams), self.num_streams
        stream = self.streams[info.id % a_count]
        return [stream * n + (info.id // a_count + self.worker_rotation) % n], self.num_streams * n

    def plan(self, slice_id: int, num_slices: int) -> tuple[list, list[int]]:
        """This epoch's batches of slice ``slice_id`` after what the resumption state consumed
        (with ``slice_batches``, only the first that-many batches of the slice count)."""
        counts = [s["utterances"] for s in self.index["shards"]]
        batches, shards = epoch_plan(
            counts,
            self._durations,
            epoch=self.epoch,
            seed=self.seed,
            slice_id=slice_id,
            num_slices=num_slices,
            even=self.even,
            shuffle_buffer=self.shuffle_buffer,
            batch_seconds=self.batch_seconds,
            bucket_buffer=self.bucket_buffer,
            max_batch_size=self.max_batch_size,
        )
        if self.slice_batches is not None:
            batches = batches[: self.slice_batches]
        state = self._resume
        if state is None or state.epoch != self.epoch:
            return batches, shards
        if state.num_slices is not None and state.num_slices != num_slices:
            raise ValueError(
                f"ShardDataset: the resumption state has {state.num_slices} slices (ranks x workers), this run "
                f"{num_slices}; resume with the same world size and num_workers"
            )
        skip, done, k = state.consumed.get(slice_id, 0), 0, 0
        while k < len(batches) and done + len(batches[k]) <= skip:
            done += len(batches[k])
            k += 1
        if done != skip:
            raise ValueError(f"ShardDataset: {skip} consumed samples of slice {slice_id} end inside a batch")
        return batches[k:], shards

    # ---- iteration ----------------------------------------------------------------------
    def _read_shard(self, s: int, last: int) -> Iterator[tuple[int, dict]]:
        """(position, raw sample) of shard ``s`` up to position ``last`` (the rest is not read)."""
        from webdataset.tariterators import group_by_keys, tar_file_iterator

        path = os.path.join(self.shard_dir, self.index["shards"][s]["name"])
        with open(path, "rb") as fh:
            files = ({**f, "__url__": path} for f in tar_file_iterator(fh))
            for pos, raw in enumerate(group_by_keys(files)):
                if raw["__key__"] != f"{s:06d}_{pos:06d}":
                    raise ValueError(f"{path}: sample {pos} has the key {raw['__key__']!r}; rewrite the shards")
                yield pos, raw
                if pos >= last:
                    return

    def _decode(self, raw: dict, slice_id: int, num_slices: int) -> dict:
        meta = json.loads(raw["json"])
        ext = "flac" if "flac" in raw else "wav"
        data, sr = sf.read(io.BytesIO(raw[ext]), dtype="float32", always_2d=False)
        sample = {
            "id": meta["id"],
            "duration": len(data) / sr,
            "text": raw["txt"].decode("utf-8"),
            "speaker": meta["speaker"],
            "slice": slice_id,
            "num_slices": num_slices,
        }
        if self.features == "mel" or self.return_wav:
            wav = resample(torch.from_numpy(np.ascontiguousarray(data)), sr, self.mel_cfg.sample_rate)
            if self.return_wav:
                sample["wav"] = wav
            if self.features == "mel":
                if self._frontend is None:
                    self._frontend = MelFrontend(self.mel_cfg).to(self.device)
                mel = self._frontend(wav.to(self.device))  # [T, n_mels]
                if self.cmvn is not None:
                    mel = self.cmvn.to(self.device)(mel)
                sample["mel"] = mel
        if self.tokenize is not None:
            sample["tokens"] = torch.LongTensor(self.tokenize(sample["text"]))
        return sample

    def __iter__(self):
        slice_ids, num_slices = self.slices()
        streams = [self._iter_slice(i, num_slices) for i in slice_ids]
        while True:  # one batch of every slice in turn (several slices have equal batch counts)
            for it in streams:
                batch = next(it, None)
                if batch is None:
                    return
                yield batch

    def _iter_slice(self, slice_id: int, num_slices: int):
        batches, shards = self.plan(slice_id, num_slices)
        needed = {(s, p) for batch in batches for s, p, _ in batch}
        last: dict[int, int] = {}  # shard -> the last position still needed
        for s, p in needed:
            last[s] = max(last.get(s, -1), p)
        pending: dict[tuple[int, int], dict] = {}  # read, not yet yielded (undecoded)
        k = 0
        for s in shards:
            if s not in last:
                continue  # every sample of it was consumed before the resumption
            for pos, raw in self._read_shard(s, last[s]):
                if (s, pos) not in needed:
                    continue  # consumed before the resumption, or another slice's
                pending[(s, pos)] = raw
                while k < len(batches) and all((b[0], b[1]) in pending for b in batches[k]):
                    out = [self._decode(pending.pop((b[0], b[1])), slice_id, num_slices) for b in batches[k]]
                    yield out if self.batch_seconds is not None else out[0]
                    k += 1
        if k != len(batches):
            raise RuntimeError(f"{self.shard_dir}: shards hold fewer samples than {INDEX} lists; rewrite the shards")


# ---------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------


def _pad(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([t.shape[0] for t in tensors], dtype=torch.long)
    out = tensors[0].new_zeros((len(tensors), int(lengths.max()), *tensors[0].shape[1:]))
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out, lengths


def collate(samples) -> dict:
    """Samples (a list, or one sample) -> a batch: ``mel`` [B, T, n_mels] zero-padded with
    ``mel_lengths`` [B] (frames), ``tokens`` / ``token_lengths`` and ``wav`` / ``wav_lengths`` when
    the samples have them, ``duration`` [B], and the lists ``id``, ``text``, ``speaker``,
    ``slice``, ``num_slices``."""
    if isinstance(samples, dict):
        samples = [samples]
    batch = {k: [s[k] for s in samples] for k in ("id", "text", "speaker", "slice", "num_slices")}
    batch["duration"] = torch.tensor([s["duration"] for s in samples], dtype=torch.float32)
    for key, lengths in (("mel", "mel_lengths"), ("tokens", "token_lengths"), ("wav", "wav_lengths")):
        if key in samples[0]:
            batch[key], batch[lengths] = _pad([s[key] for s in samples])
    return batch


def padded_batch(samples):
    """Samples -> SpeechBrain's ``PaddedBatch`` over ``id``, ``mel``, ``tokens``, ``duration`` (the
    keys the tokenizer training's datasets give), so ``batch.mel`` is (padded, relative lengths)
    exactly as when training reads a feature dump."""
    from speechbrain.dataio.batch import PaddedBatch

    if isinstance(samples, dict):
        samples = [samples]
    keys = [k for k in ("id", "mel", "tokens", "duration") if k in samples[0]]
    return PaddedBatch([{k: s[k] for k in keys} for s in samples])


# ---------------------------------------------------------------------------------------
# Training loader: equal batch counts on every rank, resumable by batch count
# ---------------------------------------------------------------------------------------


def worker_order(counts: list[int]) -> list[int]:
    """The worker of each batch, in the order a DataLoader over an iterable dataset returns them:
    round robin over the workers, an exhausted worker left out (``counts``: batches per worker)."""
    left, order = list(counts), []
    while any(left):
        for w, n in enumerate(left):
            if n:
                order.append(w)
                left[w] -= 1
    return order


class ShardLoader(torch.utils.data.DataLoader):
    """The DataLoader a training loop iterates over shards: dynamic batches of a
    :class:`ShardDataset` from ``num_workers`` workers, collated by ``collate_fn``.

    Data-parallel ranks must run the same number of steps, but dynamic batching gives the ranks'
    plans different batch counts; every rank therefore stops the epoch after the fewest batches any
    rank's plan has (``len(loader)``, computed from the index alone, the same on every rank). The
    samples left over are a few batches' worth; the next epoch reshuffles everything.

    Resumption needs one number, the same on every rank: the batches done in the epoch. From it
    each rank recomputes which of its samples were consumed (:func:`worker_order`) and skips them
    (:meth:`resume`), so a resumed epoch continues with exactly the batches an uninterrupted one
    would have given. Call :meth:`set_epoch` before each epoch."""

    def __init__(
        self,
        dataset: ShardDataset,
        num_workers: int = 0,
        collate_fn: Callable = padded_batch,
        micro_batches: int | None = None,
    ):
        if dataset.batch_seconds is None:
            raise ValueError("ShardLoader: the dataset needs batch_seconds (dynamic batches)")
        # micro_batches M: a step's M micro-batches are the same whatever the number of ranks
        # (sitok.data.ranks.micro_batch_layout); each of the M streams is read by num_workers
        # workers and gives the same number of batches, so the DataLoader's round robin never skips
        loader_workers = num_workers
        if micro_batches:
            dataset.streams = micro_batch_layout(micro_batches, dataset.rank, dataset.world_size)
            dataset.num_streams, dataset.stream_workers = micro_batches, max(1, num_workers)
            loader_workers = num_workers * len(dataset.streams)
        # its own generator: starting an iterator draws a seed, which must not move the global RNG
        # (a resumed epoch starts its iterator at another point of the training's random stream)
        gen = torch.Generator().manual_seed(dataset.seed)
        super().__init__(dataset, batch_size=None, num_workers=loader_workers, collate_fn=collate_fn, generator=gen)
        self.start, self.num_batches = 0, 0
        self.set_epoch(dataset.epoch)

    @property
    def steps(self) -> int:
        """Optimiser steps per epoch: this process's batches, per step of micro-batches if any."""
        streams = self.dataset.streams
        return self.num_batches // len(streams) if streams else self.num_batches

    def _full_plans(self, slice_ids, num_slices: int) -> list[list]:
        """The batches of these slices in this epoch from its beginning (no resumption, no cap)."""
        ds = self.dataset
        saved, ds._resume, cap, ds.slice_batches = ds._resume, None, ds.slice_batches, None
        try:
            return [ds.plan(i, num_slices)[0] for i in slice_ids]
        finally:
            ds._resume, ds.slice_batches = saved, cap

    def _stream_plans(self) -> list[list]:
        """Every slice's batches with micro-batch streams (all M x n slices: the same on every rank)."""
        n = self.dataset.num_streams * self.dataset.stream_workers
        return self._full_plans(range(n), n)

    def _plans(self, rank: int) -> list[list]:
        """Rank ``rank``'s batches of this epoch, per worker, from the epoch's beginning."""
        workers = max(1, self.num_workers)
        return self._full_plans(range(rank * workers, (rank + 1) * workers), self.dataset.world_size * workers)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (at the resumption point when :meth:`resume` named this epoch)."""
        if epoch != self.dataset.epoch or self.dataset._resume is None:
            self.start, self.dataset.worker_rotation = 0, 0
        self.dataset.set_epoch(epoch)
        if self.dataset.streams:  # every slice gives the fewest batches any slice has
            ds = self.dataset
            ds.slice_batches = min(len(p) for p in self._stream_plans())
            self.num_batches = ds.slice_batches * ds.stream_workers * len(ds.streams)
            return
        counts = [sum(len(p) for p in self._plans(r)) for r in range(self.dataset.world_size)]
        self.num_batches = min(counts)
        if max(counts) > self.num_batches:
            logger.debug("epoch %d: ranks planned %s batches; every rank takes %d", epoch, counts, self.num_batches)

    def resume(self, epoch: int, batches_done: int) -> None:
        """Continue epoch ``epoch`` after its first ``batches_done`` batches."""
        if self.dataset.streams:
            return self._resume_streams(epoch, batches_done)
        ds, workers = self.dataset, max(1, self.num_workers)
        ds._resume = None
        self.set_epoch(epoch)
        plans = self._plans(ds.rank)
        consumed: dict[int, int] = {}
        pulled = [0] * workers
        order = worker_order([len(p) for p in plans])
        for w in order[:batches_done]:
            consumed[ds.rank * workers + w] = consumed.get(ds.rank * workers + w, 0) + len(plans[w][pulled[w]])
            pulled[w] += 1
        ds.load_state_dict(StreamState(epoch, ds.world_size * workers, consumed))
        # a new DataLoader starts its round robin at worker 0: let worker 0 read the slice whose
        # batch comes next, so the rest of the epoch arrives in the uninterrupted order
        ds.worker_rotation = order[batches_done] if batches_done < len(order) else 0
        self.start = min(batches_done, self.num_batches)

    def _resume_streams(self, epoch: int, batches_done: int) -> None:
        """``resume`` with streams: ``batches_done`` is a whole number of steps S; stream worker w
        gave the batches i < S with i mod n = w."""
        ds = self.dataset
        ds._resume = None
        self.set_epoch(epoch)
        a_count, n = len(ds.streams), ds.stream_workers
        if batches_done % a_count:
            raise ValueError(f"ShardLoader: {batches_done} batches done is not a whole number of steps of {a_count}")
        steps = batches_done // a_count
        plans = self._stream_plans()
        consumed = {}
        for stream in ds.streams:
            for w in range(n):
                k = len(range(w, steps, n))
                consumed[stream * n + w] = sum(len(b) for b in plans[stream * n + w][:k])
        ds.load_state_dict(StreamState(epoch, ds.num_streams * n, consumed))
        ds.worker_rotation = steps % n
        self.start = min(batches_done, self.num_batches)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        left, self.start = self.num_batches - self.start, 0
        if left <= 0:
            return
        for i, batch in enumerate(super().__iter__()):
            yield batch
            if i + 1 >= left:
                return
