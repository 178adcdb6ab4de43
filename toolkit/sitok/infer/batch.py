"""Encode, decode or resynthesise many files: a directory (searched recursively) or a list file,
in length-sorted batches through the batched API, resumable after a kill.

    sitok encode  wavs/      -o codes/   --batch-size 16    # codes/<relative path>.npy
    sitok decode  codes/     -o wavs_out/ --steps 4          # wavs_out/<relative path>.wav
    sitok resynth files.list -o resynth/                     # one audio path per line

Each output is written atomically, so an output that exists is complete: a re-run (after a kill,
or with more inputs) skips it, removes the temporary file of a write the kill cut short, and
does the rest. An input that cannot be read is named in
``<out_dir>/failed.tsv`` with the reason and the others go on; the caller reports the count.
A batch gives every item the result it would get alone (``encode_batch``, ``decode(lengths=)``).
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

from sitok.data.audio import AudioError, probe_audio, write_wav_atomic
from sitok.fileio import atomic_open, write_text_atomic

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")
KINDS = {"encode": (AUDIO_EXTENSIONS, ".npy"), "decode": ((".npy",), ".wav"), "resynth": (AUDIO_EXTENSIONS, ".wav")}


@dataclass
class Job:
    source: str  # input file
    output: str  # output file under the output directory


def is_many(path: str) -> bool:
    """Whether an input names many files: a directory, or a list file (.list / .txt / .scp)."""
    return os.path.isdir(path) or path.endswith((".list", ".txt", ".scp"))


def collect_jobs(path: str, out_dir: str, kind: str) -> list[Job]:
    """The (input, output) pairs of a directory (files with the kind's extensions, outputs at the
    same relative paths) or of a list file (one path per line, or Kaldi ``key path`` lines; outputs
    named by the file name, or by the key)."""
    exts, out_ext = KINDS[kind]
    jobs: list[Job] = []
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for f in sorted(files):
                if f.lower().endswith(exts):
                    rel = os.path.relpath(os.path.join(root, f), path)
                    jobs.append(Job(os.path.join(root, f), os.path.join(out_dir, os.path.splitext(rel)[0] + out_ext)))
    else:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                parts = line.split()
                if not parts or parts[0].startswith("#"):
                    continue
                if len(parts) > 2:
                    raise ValueError(f"{path}:{n}: expected a path or 'key path', got {line.strip()!r}")
                source = parts[-1]
                name = parts[0] if len(parts) == 2 else os.path.splitext(os.path.basename(source))[0]
                jobs.append(Job(source, os.path.join(out_dir, name + out_ext)))
    seen: dict[str, str] = {}
    for j in jobs:
        if j.output in seen:
            raise ValueError(f"{path}: {seen[j.output]} and {j.source} would both write {j.output}")
        seen[j.output] = j.source
    if not jobs:
        raise ValueError(f"{path}: no input files ({', '.join(exts)})")
    return jobs


def _size(job: Job, kind: str) -> int:
    """Sort key: samples of an audio file, tokens of a codes file (header reads only)."""
    if kind == "decode":
        try:
            shape = np.load(job.source, mmap_mode="r", allow_pickle=False).shape  # the header only
        except (ValueError, EOFError) as exc:
            raise ValueError(f"{job.source}: not a .npy codes file ({exc})") from None
        return int(shape[-1]) if shape else 0
    return probe_audio(job.source).num_frames


def run_jobs(tok, jobs: list[Job], out_dir: str, kind: str, batch_size: int = 8, progress: bool = True, **decoding):
    """Do the jobs whose output does not exist yet, ``batch_size`` similar-length inputs at a time.
    ``decoding``: steps, seed, cfg_scale, temperature (decode and resynth). Returns counts
    {"done", "skipped", "failed"}; the failures are written to ``<out_dir>/failed.tsv``."""
    from tqdm import tqdm

    todo, failed = [], []
    for j in jobs:
        if os.path.exists(j.output):
            continue
        for leftover in glob.glob(glob.escape(j.output) + ".tmp*"):  # a write cut short by a kill
            os.remove(leftover)
        try:
            todo.append((_size(j, kind), j))
        except (AudioError, OSError, ValueError) as exc:
            failed.append((j.source, str(exc)))
    skipped = len(jobs) - len(todo) - len(failed)
    if skipped:
        logger.info("%s: %d of %d outputs already written, skipping them", out_dir, skipped, len(jobs))
    todo.sort(key=lambda x: (x[0], x[1].source))
    bar = tqdm(total=len(todo), desc=kind, unit="file", disable=not progress)
    done = 0
    for i in range(0, len(todo), batch_size):
        batch = [j for _, j in todo[i : i + batch_size]]
        try:
            _run_batch(tok, batch, kind, decoding)
            done += len(batch)
        except (AudioError, ValueError):  # one bad item: the batch again one by one, to name it
            for j in batch:
                try:
                    _run_batch(tok, [j], kind, decoding)
                    done += 1
                except (AudioError, ValueError) as exc:
                    failed.append((j.source, str(exc)))
        bar.update(len(batch))
    bar.close()
    if failed:
        write_text_atomic(
            os.path.join(out_dir, "failed.tsv"), "".join(f"{s}\t{' '.join(r.split())}\n" for s, r in failed)
        )
    return {"done": done, "skipped": skipped, "failed": len(failed)}


def _run_batch(tok, batch: list[Job], kind: str, decoding: dict) -> None:
    if kind in ("encode", "resynth"):
        codes = tok.encode_batch([j.source for j in batch])
    else:
        codes = [_load_codes(j.source) for j in batch]
    if kind == "encode":
        for j, c in zip(batch, codes):
            _save_codes(j.output, c.numpy())
        return
    lengths = torch.tensor([c.shape[-1] for c in codes])
    padded = torch.zeros(len(codes), codes[0].shape[0], int(lengths.max()), dtype=torch.long)
    for i, c in enumerate(codes):
        padded[i, :, : c.shape[-1]] = torch.as_tensor(c)
    wav, sr = tok.decode(padded, lengths=lengths, **decoding)
    samples = (lengths * tok.model.config.stack * tok.mel_cfg.hop_length).tolist()
    for j, w, n in zip(batch, wav, samples):
        if kind == "resynth":  # cut to the input's duration, as resynth of one file does
            n = min(n, round(probe_audio(j.source).duration * sr))
        os.makedirs(os.path.dirname(j.output) or ".", exist_ok=True)
        write_wav_atomic(j.output, w[:n].numpy(), sr)


def read_codes(path: str) -> np.ndarray:
    """Codes from a .npy file (never unpickled), the file named in every error."""
    with open(path, "rb") as fh:  # OSError names the file
        try:
            return np.lib.format.read_array(fh, allow_pickle=False)
        except (ValueError, EOFError, OSError) as exc:
            raise ValueError(f"{path}: not a .npy codes file ({' '.join(str(exc).split())[:200]})") from None


def _load_codes(path: str) -> torch.Tensor:
    codes = read_codes(path)
    if codes.ndim != 2:
        raise ValueError(f"{path}: codes [CN, T] expected, got shape {codes.shape}")
    return torch.as_tensor(codes)


def _save_codes(path: str, codes: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_open(path, "wb") as fh:  # through a handle: np.save appends no ".npy"
        np.save(fh, codes)
