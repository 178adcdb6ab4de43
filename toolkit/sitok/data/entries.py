"""The rows a corpus reader yields: an utterance to keep (:class:`Entry`) or one it leaves out on
purpose (:class:`Skip`, counted in the data dir's ``skipped.tsv``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sitok.fileio import atomic_open


@dataclass
class Entry:
    utt: str
    speaker: str
    path: str
    text: str | None  # None: no transcript file
    label: str | None = None


@dataclass
class Skip:
    utt: str
    path: str
    reason: str
    detail: str = ""


def write_skipped(path: str, skips: list[Skip]) -> None:
    """``skipped.tsv``: one line per dropped item (utt, file, reason, detail)."""
    with atomic_open(path) as fh:
        fh.write("utt\tpath\treason\tdetail\n")
        fh.writelines(f"{s.utt}\t{s.path}\t{s.reason}\t{s.detail}\n" for s in skips)


def summarize_skips(skips: list[Skip]) -> str:
    if not skips:
        return "0 skipped"
    counts = Counter(s.reason for s in skips)
    return f"{len(skips)} skipped (" + ", ".join(f"{r}: {n}" for r, n in sorted(counts.items())) + ")"
