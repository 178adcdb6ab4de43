"""Feature stage: log-mel dumps (kaldiio ark/scp) of a data dir, in parallel over ``nj`` jobs.

    compute_features("data/train", "dump/train", nj=2)

writes ``dump/train/``: ``feats.<j>.ark`` + ``feats.scp`` (log-mel [T, 128], float32, not
normalised), ``utt2num_frames``, ``cmvn.json`` (global mean/var statistics of this split),
``skipped.tsv`` (file, reason), a copy of the data dir restricted to the kept utterances and
its ``manifest.csv`` (with a ``feats`` column). Each job writes its ark under a temporary name,
renames it, then writes its scp and a ``.done`` stamp of what it was made from (its utterances,
their audio paths, the mel configuration and the duration limits): a killed run restarts only
the jobs that had not finished, a job whose inputs changed (the data dir grew, another mel
configuration) is redone, temporary files of killed runs are removed, and no reader ever sees
a half-written file. Utterances listed in the data dir's ``segments`` table are the slice
``[start, end)`` of their ``wav.scp`` file (long recordings cut by prep's ``segment_long``);
only that slice is read.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import time
from multiprocessing import get_context

import numpy as np

from sitok.data.audio import AudioError, load_audio
from sitok.data.kaldi import DataDir, read_table, write_table
from sitok.data.mel import CMVNStats, GlobalCMVN, MelConfig, MelFrontend
from sitok.data.prep import Skip, summarize_skips, write_skipped
from sitok.data.segment import load_segment
from sitok.fileio import atomic_open, write_text_atomic
from sitok.stamp import is_current, write_stamp

logger = logging.getLogger(__name__)


def _job_paths(dump_dir: str, job: int) -> dict[str, str]:
    d = os.path.join(dump_dir, "jobs")
    return {
        "ark": os.path.join(dump_dir, f"feats.{job}.ark"),
        "scp": os.path.join(d, f"feats.{job}.scp"),
        "frames": os.path.join(d, f"utt2num_frames.{job}"),
        "skipped": os.path.join(d, f"skipped.{job}.tsv"),
        "stats": os.path.join(d, f"stats.{job}.json"),
        "done": os.path.join(d, f"{job}.done"),
    }


_counter = None  # shared progress counter, inherited by the workers


def _init_worker(counter) -> None:
    global _counter
    _counter = counter


def _run_job(args) -> int:
    """Worker: features of one chunk of utterances. Returns the job index."""
    job, utts, wav_scp, dump_dir, mel_cfg, min_dur, max_dur = args[:7]
    segments = args[7] if len(args) > 7 else {}  # utt -> "recording start end"; optional last
    counter = _counter
    import kaldiio.matio
    import torch

    torch.set_num_threads(1)
    p = _job_paths(dump_dir, job)
    frontend = MelFrontend(mel_cfg)
    stats = CMVNStats()
    scp: dict[str, str] = {}
    frames: dict[str, int] = {}
    skips: list[Skip] = []
    tmp = f"{p['ark']}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        for i, utt in enumerate(utts):
            path = wav_scp[utt]
            try:
                if utt in segments:  # "recording start end": only that slice of the file
                    _, start, end = segments[utt].split()
                    limits = {"min_duration": min_dur, "max_duration": max_dur}
                    wav = load_segment(path, float(start), float(end), mel_cfg.sample_rate, **limits)
                else:
                    wav = load_audio(path, mel_cfg.sample_rate, min_duration=min_dur, max_duration=max_dur)
                mel = frontend(wav).numpy().astype(np.float32)  # [T, n_mels]
                if not np.isfinite(mel).all():
                    raise AudioError(path, "non-finite", "non-finite log-mel")
            except AudioError as exc:
                skips.append(Skip(utt, path, exc.reason, exc.detail))
            else:
                fh.write(utt.encode() + b" ")
                scp[utt] = f"{p['ark']}:{fh.tell()}"
                kaldiio.matio.write_array(fh, mel)
                frames[utt] = mel.shape[0]
                stats.add(mel)
            if counter is not None and (i % 8 == 7 or i == len(utts) - 1):
                with counter.get_lock():
                    counter.value += i % 8 + 1
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, p["ark"])
    write_table(p["scp"], scp)
    write_table(p["frames"], frames)
    write_skipped(p["skipped"], skips)
    write_text_atomic(p["stats"], json.dumps(stats.to_dict()))
    write_stamp(p["done"], _job_stamp(utts, wav_scp, mel_cfg, min_dur, max_dur, segments))
    return job


def _job_stamp(utts, wav_scp, mel_cfg: MelConfig, min_dur: float, max_dur: float, segments=None) -> dict:
    """What a job's features are made from; a job whose stamp differs is redone."""
    import hashlib

    # a segmented utterance's slice is part of its source (unsegmented lines read as before)
    segments = segments or {}
    listing = "".join(f"{u} {wav_scp[u]}" + (f" {segments[u]}" if u in segments else "") + "\n" for u in utts)
    listing = listing.encode()
    mel = json.dumps(mel_cfg.to_dict(), sort_keys=True)
    return {
        "inputs": {"utterances": hashlib.sha256(listing).hexdigest()},
        "options": {"mel": mel, "min_duration": str(min_dur), "max_duration": str(max_dur)},
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_dump_dir(dump_dir: str, nj: int) -> None:
    """Remove what killed or earlier runs left: temporary archives of processes that no longer
    run, and the archives and job files of jobs beyond ``nj`` (a run with more jobs)."""
    for tmp in glob.glob(os.path.join(dump_dir, "feats.*.ark.tmp*")):
        pid = re.search(r"\.tmp(\d+)$", tmp)
        if pid is None or not _pid_alive(int(pid.group(1))) or int(pid.group(1)) == os.getpid():
            logger.info("removing %s (left by a killed run)", tmp)
            os.remove(tmp)
    for ark in glob.glob(os.path.join(dump_dir, "feats.*.ark")):
        job = re.search(r"feats\.(\d+)\.ark$", ark)
        if job is not None and int(job.group(1)) >= nj:
            for path in _job_paths(dump_dir, int(job.group(1))).values():
                if os.path.exists(path):
                    os.remove(path)


def compute_features(
    data_dir: str,
    dump_dir: str,
    *,
    nj: int = 1,
    mel_cfg: MelConfig | None = None,
    min_duration: float = 0.1,
    max_duration: float = 60.0,
    cmvn_mode: str = "global",
    progress: bool = True,
) -> dict:
    """Dump features of ``data_dir`` to ``dump_dir`` (see module docstring). Returns a summary."""
    from tqdm import tqdm

    mel_cfg = mel_cfg or MelConfig()
    dd = DataDir.load(data_dir)
    utts = dd.utts
    if not utts:
        raise ValueError(f"{data_dir}/wav.scp: no utterances")
    nj = max(1, min(nj, len(utts)))
    os.makedirs(os.path.join(dump_dir, "jobs"), exist_ok=True)
    write_text_atomic(os.path.join(dump_dir, "mel_config.json"), json.dumps(mel_cfg.to_dict(), indent=1) + "\n")
    chunks = [list(c) for c in np.array_split(np.array(utts, dtype=object), nj)]
    _clean_dump_dir(dump_dir, nj)
    wav_scp = dd.tables["wav.scp"]
    segments = dd.tables.get("segments", {})  # utt -> "recording start end" (long recordings cut)
    stamps = [_job_stamp(c, wav_scp, mel_cfg, min_duration, max_duration, segments) for c in chunks]
    todo = [j for j in range(nj) if not is_current(_job_paths(dump_dir, j)["done"], stamps[j], f"{dump_dir} job {j}")]
    done_before = sum(len(chunks[j]) for j in range(nj) if j not in todo)
    if len(todo) < nj:
        logger.info("%s: %d of %d jobs already done, running %d", dump_dir, nj - len(todo), nj, len(todo))

    t0 = time.time()
    ctx = get_context("forkserver")  # not fork: see synth.py (fork after torch threads can deadlock)
    counter = ctx.Value("l", 0)
    _init_worker(counter)
    jobs = [(j, chunks[j], wav_scp, dump_dir, mel_cfg, min_duration, max_duration, segments) for j in todo]
    desc = f"features {os.path.basename(dump_dir)}"
    bar = tqdm(total=len(utts), initial=done_before, desc=desc, unit="utt", disable=not progress, mininterval=1)
    if len(jobs) == 1:
        _run_job(jobs[0])
        bar.update(counter.value)
    elif jobs:
        with ctx.Pool(len(jobs), initializer=_init_worker, initargs=(counter,)) as pool:
            pending = pool.map_async(_run_job, jobs)
            seen = 0
            while not pending.ready():
                pending.wait(0.5)
                bar.update(counter.value - seen)
                seen = counter.value
            pending.get()  # re-raise a worker's exception
            bar.update(counter.value - seen)
    bar.close()
    elapsed = time.time() - t0

    # ---- merge the jobs ----------------------------------------------------------------
    scp: dict[str, str] = {}
    num_frames: dict[str, str] = {}
    skips: list[Skip] = []
    stats = CMVNStats()
    for j in range(nj):
        p = _job_paths(dump_dir, j)
        scp.update(read_table(p["scp"]))
        num_frames.update(read_table(p["frames"]))
        with open(p["skipped"], encoding="utf-8") as fh:
            next(fh)
            skips += [Skip(*line.rstrip("\n").split("\t")) for line in fh if line.strip()]
        with open(p["stats"], encoding="utf-8") as fh:
            d = json.load(fh)
        if d["count"]:
            stats = stats.merge(CMVNStats.from_dict(d))
    if not scp:
        raise RuntimeError(f"{dump_dir}: every utterance of {data_dir} was skipped; see {dump_dir}/skipped.tsv")
    kept = dd.subset(scp)
    kept.tables["feats.scp"] = scp
    kept.tables["utt2num_frames"] = num_frames
    kept.save(dump_dir)
    kept.to_manifest(os.path.join(dump_dir, "manifest.csv"))
    write_skipped(os.path.join(dump_dir, "skipped.tsv"), skips)
    GlobalCMVN.from_stats(stats, mode=cmvn_mode).save(os.path.join(dump_dir, "cmvn.json"))
    audio_s = sum(kept.durations().values())
    summary = {
        "utterances": len(kept),
        "skipped": len(skips),
        "frames": stats.count,
        "audio_hours": audio_s / 3600,
        "seconds": elapsed,
        "x_realtime": audio_s / elapsed if elapsed > 0 and not done_before else None,
    }
    with atomic_open(os.path.join(dump_dir, "summary.json")) as fh:
        json.dump(summary, fh, indent=1)
    logger.info(
        "%s: %d utterances, %d frames (%.2f h) in %.1f s with %d jobs; %s",
        dump_dir,
        len(kept),
        stats.count,
        audio_s / 3600,
        elapsed,
        nj,
        summarize_skips(skips),
    )
    for s in skips[:10]:
        logger.warning("skipped %s (%s): %s %s", s.utt, s.path, s.reason, s.detail)
    return summary
