"""Completion stamps: a ``.done`` marker that records what the finished work was made from.

A stage (or a per-item cache such as a resynthesised set) is skipped on a re-run only when its
stamp records the same inputs and the same options as the run asking; otherwise the work is
redone and the log names what changed. A stamp is a small JSON file:

    {"inputs": {"model": "<digest>", "feats": "<digest>"}, "options": {"steps": "4"}}

Inputs are files or directories. A file's digest is the SHA-256 of its content; files above
``BIG_FILE`` bytes (feature archives of large corpora) are summarised by size, modification
time and their first and last MiB instead, so checking a stamp stays cheap at any scale. A
directory's digest covers every file below it except hidden files (other stamps) and temporary
files (``*.tmp*``). A missing input has the digest ``missing``. A feature dump directory is
named by its defining files only (``DUMP_FILES``: the scp with the archives' offsets, the mel
configuration, the statistics and the per-utterance tables), not its archives, so checking a
stamp never reads a large corpus's features; features computed anew from changed audio change
the statistics, and another configuration changes ``mel_config.json``.

From the shell (the recipe template), without importing torch::

    python -m sitok.stamp check DIR/.done --input model=exp/tok/model --dump feats=dump/test --option steps=4
    python -m sitok.stamp write DIR/.done --input model=exp/tok/model --option steps=4

``check`` exits 0 when the stamp matches, 1 when it is missing or stale (logging what changed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys

from sitok.fileio import write_text_atomic

logger = logging.getLogger(__name__)

BIG_FILE = 256 * 2**20
_EDGE = 2**20


def _file_digest(path: str) -> str:
    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if st.st_size <= BIG_FILE:
            for block in iter(lambda: fh.read(2**20), b""):
                h.update(block)
        else:
            h.update(f"size={st.st_size} mtime_ns={st.st_mtime_ns}".encode())
            h.update(fh.read(_EDGE))
            fh.seek(-_EDGE, os.SEEK_END)
            h.update(fh.read(_EDGE))
    return h.hexdigest()


def _skipped(name: str) -> bool:
    return name.startswith(".") or ".tmp" in name


def digest(path: str) -> str:
    """The digest of a file or a directory tree (see the module docstring)."""
    if os.path.isfile(path):
        return _file_digest(path)
    if not os.path.isdir(path):
        return "missing"
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not _skipped(d))
        for name in sorted(f for f in files if not _skipped(f)):
            full = os.path.join(root, name)
            h.update(f"{os.path.relpath(full, path)}\0{_file_digest(full)}\n".encode())
    return h.hexdigest()


DUMP_FILES = ("feats.scp", "mel_config.json", "cmvn.json", "utt2num_frames", "text", "utt2spk", "utt2label")


def digest_dump(path: str) -> str:
    """The digest of a feature dump directory by its defining files (``DUMP_FILES``)."""
    if not os.path.isfile(os.path.join(path, "feats.scp")):
        return "missing"
    h = hashlib.sha256()
    for name in DUMP_FILES:
        f = os.path.join(path, name)
        h.update(f"{name}\0{_file_digest(f) if os.path.isfile(f) else 'missing'}\n".encode())
    return h.hexdigest()


def make_stamp(
    inputs: dict[str, str] | None = None, options: dict | None = None, dumps: dict[str, str] | None = None
) -> dict:
    """A stamp of named input paths and feature dumps (digested now) and options (as strings)."""
    digests = {name: digest(p) for name, p in (inputs or {}).items()}
    digests.update({name: digest_dump(p) for name, p in (dumps or {}).items()})
    return {"inputs": dict(sorted(digests.items())), "options": {k: str(v) for k, v in sorted((options or {}).items())}}


def read_stamp(marker: str) -> dict | None:
    """The stamp in ``marker``; None when missing, unreadable or an empty legacy marker."""
    try:
        with open(marker, encoding="utf-8") as fh:
            stamp = json.load(fh)
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def changes(old: dict | None, new: dict) -> list[str]:
    """What differs between a recorded stamp and a new one, in words; empty when they match."""
    if old is None:
        return ["no stamp of a finished run"]
    out = []
    for part in ("inputs", "options"):
        a, b = old.get(part, {}), new.get(part, {})
        for key in sorted(set(a) | set(b)):
            if key not in a:
                out.append(f"{part[:-1]} {key} is new")
            elif key not in b:
                out.append(f"{part[:-1]} {key} is gone")
            elif a[key] != b[key]:
                out.append(f"{key} changed" if part == "inputs" else f"{key} {a[key]} -> {b[key]}")
    return out


def is_current(marker: str, stamp: dict, what: str | None = None) -> bool:
    """True when ``marker`` records ``stamp``; otherwise logs why the work is redone."""
    diff = changes(read_stamp(marker), stamp)
    if diff and os.path.exists(marker):
        logger.info("%s: redoing, %s", what or os.path.dirname(marker) or marker, "; ".join(diff))
    return not diff


def write_stamp(marker: str, stamp: dict) -> None:
    write_text_atomic(marker, json.dumps(stamp, indent=1) + "\n")


def fresh_cache(cache_dir: str, stamp: dict, what: str | None = None) -> bool:
    """Make ``cache_dir`` a cache of results made from ``stamp``: its content is kept when its
    ``.stamp`` records the same stamp, and removed (naming what changed) otherwise; temporary
    files of killed runs are removed either way. Returns True when earlier results are kept."""
    marker = os.path.join(cache_dir, ".stamp")
    diff = changes(read_stamp(marker), stamp)
    os.makedirs(cache_dir, exist_ok=True)
    names = os.listdir(cache_dir)
    old = [f for f in names if not _skipped(f)]
    if diff and old:
        logger.info("%s: %d cached results removed (%s)", what or cache_dir, len(old), "; ".join(diff))
    for f in names:
        if (diff and f in old) or ".tmp" in f:
            full = os.path.join(cache_dir, f)
            shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)
    if diff:
        write_stamp(marker, stamp)
    return not diff


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"sitok.stamp: {flag} expects NAME=VALUE, got {item!r}")
        out[key] = value
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sitok.stamp", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("check", "write"), help="check: exit 0 if current, 1 if not; write: record")
    p.add_argument("marker", help="the stamp file, e.g. DIR/.done")
    p.add_argument("--input", action="append", default=[], metavar="NAME=PATH", help="an input file or directory")
    p.add_argument("--dump", action="append", default=[], metavar="NAME=DIR", help="a feature dump directory")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE", help="an option of the work")
    p.add_argument("--what", default=None, help="what the stamp is for, in the log line")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S")
    stamp = make_stamp(_pairs(a.input, "--input"), _pairs(a.option, "--option"), _pairs(a.dump, "--dump"))
    if a.action == "write":
        write_stamp(a.marker, stamp)
        return 0
    return 0 if is_current(a.marker, stamp, a.what) else 1


if __name__ == "__main__":
    sys.exit(main())
