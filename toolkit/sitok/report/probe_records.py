"""What stage 13 probed: ``<expdir>/probes_<tag>.json``, read back by stage 14 through ``sitok report``.

A JSON list with one record per probed feature set (a tokenizer's codes or a continuous mel)::

    [{"name": "tokenizer_mini", "features": "tokens", "model_dir": "tokenizer_mini/model",
      "exp_dir": "tokenizer_mini", "summary": "tokenizer_mini/probes/summary.json",
      "tasks": ["asr", "er", "ks", "sv"], "results": {"er_accuracy": 67.8, "sv_eer": 9.8, ...}},
     {"name": "features_mel50", "features": "mel50", "model_dir": null, ...}]

Paths are relative to the directory holding the file, so the record reads the same from any
working directory and survives moving the recipe. ``results`` are the headline numbers of the
experiment's ``probes/summary.json`` when the record was written (null: the task was skipped or
not run); the summary itself stays what the report's tables are built from.

Stage 13 adds the records of the feature sets it probed, replacing any earlier record of the
same experiment directory, and keeps the others: stage 13 run in parts (e.g. tokens in one run,
the mel baselines in another, even at the same time) leaves one file listing all of them. Every
record's results are read again at each write. Delete the file to start a fresh list.

From the shell (stage 13; written atomically, and left untouched when nothing changed)::

    sitok probe-records exp/probes_mini.json \\
        --record tokenizer_mini tokens exp/tokenizer_mini/model exp/tokenizer_mini \\
        --record features_mel50 mel50 "" exp/features_mel50

``sitok report`` accepts such a file among its experiment paths: it stands for the experiment
directories of its records that have a probe summary.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os

from sitok.fileio import write_text_atomic

logger = logging.getLogger(__name__)

# the keys of <exp>/probes/summary.json copied into each record
RESULT_KEYS = (
    "er_accuracy",
    "sv_eer",
    "sv_min_dcf",
    "ks_accuracy",
    "asr_wer",
    "asr_wer_beam",
    "ctc_asr_wer",
    "ctc_asr_wer_beam",
    "kbps",
)
REQUIRED = ("name", "features", "model_dir", "exp_dir")


def _rel(path: str | None, base: str) -> str | None:
    return os.path.relpath(path, base) if path else None


def make_record(name: str, features: str, model_dir: str | None, exp_dir: str, base: str) -> dict:
    """One record, with paths relative to ``base``; results from ``<exp_dir>/probes/summary.json``."""
    summary = os.path.join(exp_dir, "probes", "summary.json")
    rec = {"name": name, "features": features, "model_dir": _rel(model_dir, base), "exp_dir": _rel(exp_dir, base)}
    if not os.path.isfile(summary):
        return {**rec, "summary": None, "tasks": [], "results": {}}
    with open(summary, encoding="utf-8") as fh:
        s = json.load(fh)
    results = {k: s.get(k) for k in RESULT_KEYS}
    return {**rec, "summary": _rel(summary, base), "tasks": sorted(s.get("tasks", {})), "results": results}


@contextlib.contextmanager
def _locked(directory: str):
    """An exclusive lock on ``directory`` while the record file in it is read and replaced."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_records(path: str, entries: list[tuple[str, str, str | None, str]]) -> list[dict]:
    """Add the records of ``entries`` (name, features, model_dir or None, exp_dir) to ``path``:
    a record of the same exp_dir is replaced in place, new ones are appended, the others kept.
    The file is replaced atomically, and only when its content changes."""
    base = os.path.dirname(os.path.abspath(path))
    os.makedirs(base, exist_ok=True)
    with _locked(base):
        merged = {}  # exp_dir -> (name, features, model_dir, exp_dir), in file order, then new ones
        if os.path.isfile(path):
            for r in read_records(path):
                merged[os.path.abspath(r["exp_dir"])] = (r["name"], r["features"], r["model_dir"], r["exp_dir"])
        for n, f, m, e in entries:
            merged[os.path.abspath(e)] = (n, f, m or None, e)
        records = [make_record(n, f, m, e, base) for n, f, m, e in merged.values()]
        text = json.dumps(records, indent=1) + "\n"
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as fh:
                if fh.read() == text:
                    return records
        write_text_atomic(path, text)
    return records


def read_records(path: str) -> list[dict]:
    """The records of ``path``, with their paths made relative to the working directory again."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, list) or not all(isinstance(r, dict) and all(k in r for k in REQUIRED) for r in data):
        raise ValueError(f"{path}: not a list of probe records (each with {', '.join(REQUIRED)})")
    base = os.path.dirname(os.path.abspath(path))
    keys = ("model_dir", "exp_dir", "summary")
    return [{**r, **{k: os.path.relpath(os.path.join(base, r[k])) if r.get(k) else None for k in keys}} for r in data]


def is_record_file(path: str) -> bool:
    """True for a file holding a JSON list (an evaluation or probe summary is an object)."""
    if not (os.path.isfile(path) and path.endswith(".json")):
        return False
    try:
        with open(path, encoding="utf-8") as fh:
            return isinstance(json.load(fh), list)
    except (OSError, ValueError):
        return False


def expand_paths(paths: list[str]) -> list[str]:
    """``paths`` with every probe-record file replaced by the experiment directories of its
    records that have a probe summary; each directory once, in order."""
    out, seen = [], set()
    for p in paths:
        found = [p]
        if is_record_file(p):
            found = []
            for r in read_records(p):
                if os.path.isfile(os.path.join(r["exp_dir"], "probes", "summary.json")):
                    found.append(r["exp_dir"])
                else:
                    logger.warning("%s: %s has no probes/summary.json; left out", p, r["exp_dir"])
        for f in found:
            key = os.path.normpath(os.path.abspath(f))
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out
