"""Kaldi-style data directories: read, write (atomically), validate, filter, and derive
SpeechBrain manifests.

A data dir holds one utterance per line in each file, sorted by utterance id (``LC_ALL=C``
byte order), with ids that start with their speaker id:

    wav.scp    utt  /path/to/audio.wav
    text       utt  normalised transcript
    utt2spk    utt  speaker
    spk2utt    speaker  utt1 utt2 ...          (derived from utt2spk)
    utt2dur    utt  seconds                     (from the audio header)
    utt2label  utt  label                       (optional: style / keyword class)
    segments   utt  recording start end         (optional: the utterance is the slice [start, end)
                                                 seconds of its wav.scp file; an utterance with
                                                 no line is the whole file. wav.scp stays keyed
                                                 by utterance, so every table has one line per
                                                 utterance; written by prep's segment_long)
    feats.scp  utt  ark:offset                  (in dump dirs, written by the feature stage)
"""

from __future__ import annotations

import csv
import os
from collections import OrderedDict

from sitok.fileio import atomic_open

REQUIRED = ("wav.scp", "text", "utt2spk")
OPTIONAL = ("utt2dur", "utt2label", "feats.scp", "utt2num_frames", "segments")
PER_UTT = REQUIRED + OPTIONAL


class DataDirError(ValueError):
    pass


# ---- feature tables (feats.scp, codes.scp) --------------------------------------------------
# A Kaldi rxspecifier may be a command: kaldiio runs an entry such as ``utt1 gunzip -c x.gz |``
# (or ``| cmd``, also behind an ``ark:`` prefix, a ``:offset`` or a ``[range]``) through the shell.
# Data dirs are shared between people, so such entries are refused unless the user opts in:
# ``allow_pipes(True)`` (the CLI's --allow-pipes, the recipes' ``allow_pipes: true``) or
# SITOK_ALLOW_PIPES=1 in the environment (inherited by data-loader workers and subprocesses).
ALLOW_PIPES_ENV = "SITOK_ALLOW_PIPES"
PIPE_REFUSED = "piped entries run shell commands; refused (allow with --allow-pipes / allow_pipes: true)"


class PipeRefused(DataDirError):
    """A table entry that kaldiio would run as a shell command."""


def allow_pipes(on: bool = True) -> None:
    """Let piped entries run, in this process and the processes it starts (or stop them again)."""
    if on:
        os.environ[ALLOW_PIPES_ENV] = "1"
    else:
        os.environ.pop(ALLOW_PIPES_ENV, None)


def pipes_allowed() -> bool:
    return os.environ.get(ALLOW_PIPES_ENV, "").strip().lower() in ("1", "true", "yes")


def is_pipe(spec: str) -> bool:
    """Whether kaldiio could run ``spec`` as a command. Any "|" counts: kaldiio cuts a ``:offset``
    and a ``[range]`` off before it looks for a leading or trailing "|", so "cmd |:0" runs too;
    a file name with a "|" inside is refused along with them."""
    return "|" in str(spec)


def check_rxspec(spec: str, where: str | None = None) -> str:
    """``spec`` unchanged, or PipeRefused naming ``where`` (e.g. "dump/dev/feats.scp: utterance u1")."""
    if is_pipe(spec) and not pipes_allowed():
        raise PipeRefused(f"{where or repr(spec)}: {PIPE_REFUSED}")
    return spec


def read_scp(path: str) -> OrderedDict[str, str]:
    """A feats.scp / codes.scp table (utt -> rxspecifier); a piped entry is refused naming the
    file and the utterance before anything is read from it."""
    table = read_table(path)
    for utt, spec in table.items():
        check_rxspec(spec, f"{path}: utterance {utt}")
    return table


def read_mat(spec: str, where: str | None = None):
    """``kaldiio.load_mat(spec)``: the matrix an scp entry points at. Piped entries are refused
    (PipeRefused naming ``where``) unless the user allowed them."""
    import kaldiio

    return kaldiio.load_mat(check_rxspec(spec, where))


def read_table(path: str, *, allow_empty_value: bool = False) -> OrderedDict[str, str]:
    """Read ``key value...`` lines. Raises DataDirError naming file and line on bad input."""
    table: OrderedDict[str, str] = OrderedDict()
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            key, _, value = line.partition(" ")
            value = value.strip()
            if not value and not allow_empty_value:
                raise DataDirError(f"{path}:{lineno}: no value for key {key!r}")
            if key in table:
                raise DataDirError(f"{path}:{lineno}: duplicate key {key!r}")
            table[key] = value
    return table


def write_table(path: str, table: dict) -> None:
    """Write ``key value`` lines sorted by key (C byte order), atomically."""
    with atomic_open(path) as fh:
        for key in sorted(table, key=lambda k: k.encode()):
            fh.write(f"{key} {table[key]}\n")


def spk2utt_from_utt2spk(utt2spk: dict) -> OrderedDict[str, str]:
    spk2utt: dict[str, list[str]] = {}
    for utt in sorted(utt2spk, key=lambda k: k.encode()):
        spk2utt.setdefault(utt2spk[utt], []).append(utt)
    return OrderedDict((s, " ".join(u)) for s, u in sorted(spk2utt.items(), key=lambda kv: kv[0].encode()))


class DataDir:
    """In-memory view of a data dir: ``tables[name][utt] = value``."""

    def __init__(self, tables: dict[str, dict] | None = None):
        self.tables: dict[str, dict] = {k: dict(v) for k, v in (tables or {}).items()}

    @classmethod
    def load(cls, path: str) -> DataDir:
        if not os.path.isdir(path):
            raise DataDirError(f"{path}: not a directory")
        tables = {}
        for name in PER_UTT:
            f = os.path.join(path, name)
            if os.path.exists(f):
                tables[name] = read_table(f, allow_empty_value=(name == "text"))
        missing = [n for n in REQUIRED if n not in tables]
        if missing:
            raise DataDirError(f"{path}: missing {', '.join(missing)}")
        return cls(tables)

    def save(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        for name, table in self.tables.items():
            write_table(os.path.join(path, name), table)
        write_table(os.path.join(path, "spk2utt"), spk2utt_from_utt2spk(self.tables["utt2spk"]))

    @property
    def utts(self) -> list[str]:
        return sorted(self.tables["wav.scp"], key=lambda k: k.encode())

    def __len__(self) -> int:
        return len(self.tables["wav.scp"])

    def subset(self, keep) -> DataDir:
        keep = set(keep)
        return DataDir({n: {u: v for u, v in t.items() if u in keep} for n, t in self.tables.items()})

    def durations(self) -> dict[str, float]:
        return {u: float(d) for u, d in self.tables.get("utt2dur", {}).items()}

    # ---- SpeechBrain manifest ---------------------------------------------------------
    def to_manifest(self, path: str) -> None:
        """CSV with SpeechBrain's columns: ID, duration, wav, spk_id, wrd (+ label, feats)."""
        t = self.tables
        cols = ["ID", "duration", "wav", "spk_id", "wrd"]
        if "utt2label" in t:
            cols.append("label")
        if "feats.scp" in t:
            cols += ["feats", "num_frames"]
        if "segments" in t:  # the slice of ``wav`` each utterance is (empty: the whole file)
            cols += ["start", "stop"]
        dur = t.get("utt2dur", {})
        with atomic_open(path) as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(cols)
            for u in self.utts:
                row = [u, dur.get(u, ""), t["wav.scp"][u], t["utt2spk"][u], t["text"].get(u, "")]
                if "utt2label" in t:
                    row.append(t["utt2label"].get(u, ""))
                if "feats.scp" in t:
                    row += [t["feats.scp"].get(u, ""), t.get("utt2num_frames", {}).get(u, "")]
                if "segments" in t:
                    row += t["segments"][u].split()[1:] if u in t["segments"] else ["", ""]
                w.writerow(row)


def validate_data_dir(path: str, *, need=("utt2dur",), check_files: bool = False) -> list[str]:
    """Check a data dir like Kaldi's ``utils/validate_data_dir.sh``.

    Every utterance of ``wav.scp`` must have text, a speaker, and every table named in
    ``need`` (e.g. ``utt2dur``, ``feats.scp``); no table may list an utterance that wav.scp
    lacks; files must be sorted; utterance ids must start with their speaker id; spk2utt
    must agree with utt2spk. Returns the list of problems (empty = valid).
    """
    problems: list[str] = []
    try:
        dd = DataDir.load(path)
    except DataDirError as exc:
        return [str(exc)]
    utts = set(dd.tables["wav.scp"])
    if not utts:
        problems.append(f"{path}/wav.scp: no utterances")
    for name in ("text", "utt2spk", *need):
        table = dd.tables.get(name)
        if table is None:
            problems.append(f"{path}/{name}: missing")
            continue
        if lacking := utts - set(table):
            problems.append(
                f"{path}/{name}: {len(lacking)} utterances of wav.scp lack an entry, e.g. {sorted(lacking)[:3]}"
            )
    for name, table in dd.tables.items():
        if extra := set(table) - utts:
            problems.append(f"{path}/{name}: {len(extra)} entries not in wav.scp, e.g. {sorted(extra)[:3]}")
        keys = list(table)  # read_table keeps the file's order
        if keys != sorted(keys, key=lambda k: k.encode()):
            problems.append(f"{path}/{name}: not sorted (LC_ALL=C)")
    for utt, spk in dd.tables["utt2spk"].items():
        if not utt.startswith(spk):
            problems.append(f"{path}/utt2spk: utterance {utt!r} does not start with its speaker id {spk!r}")
            break
    for utt, text in dd.tables["text"].items():
        if not text.strip():
            problems.append(f"{path}/text: empty transcript for {utt!r}")
            break
    for utt, dur in dd.tables.get("utt2dur", {}).items():
        try:
            ok = float(dur) > 0
        except ValueError:
            ok = False
        if not ok:
            problems.append(f"{path}/utt2dur: bad duration {dur!r} for {utt!r}")
            break
    s2u = os.path.join(path, "spk2utt")
    if not os.path.exists(s2u):
        problems.append(f"{path}/spk2utt: missing")
    elif read_table(s2u) != spk2utt_from_utt2spk(dd.tables["utt2spk"]):
        problems.append(f"{path}/spk2utt: disagrees with utt2spk")
    if check_files:
        for utt, wav in dd.tables["wav.scp"].items():
            if not os.path.exists(wav):
                problems.append(f"{path}/wav.scp: {utt}: file {wav} does not exist")
                break
    return problems


def combine_data_dirs(out_dir: str, in_dirs: list[str]) -> DataDir:
    """Union of data dirs (like Kaldi's ``utils/combine_data.sh``); tables that some inputs
    lack are dropped, except ``segments`` (an utterance without a line is its whole file);
    duplicate utterance ids are an error naming both dirs."""
    parts = [DataDir.load(d) for d in in_dirs]
    names = set.intersection(*(set(p.tables) for p in parts)) if parts else set()
    names |= {"segments"} & set.union(set(), *(set(p.tables) for p in parts))
    tables: dict[str, dict] = {n: {} for n in names}
    owner: dict[str, str] = {}
    for d, p in zip(in_dirs, parts):
        for utt in p.tables["wav.scp"]:
            if utt in owner:
                raise DataDirError(f"combine: utterance {utt!r} is in both {owner[utt]} and {d}")
            owner[utt] = d
        for n in names:
            tables[n].update(p.tables.get(n, {}))
    dd = DataDir(tables)
    dd.save(out_dir)
    dd.to_manifest(os.path.join(out_dir, "manifest.csv"))
    return dd
