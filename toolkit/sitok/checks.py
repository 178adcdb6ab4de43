"""Range checks of configs read from files other people wrote (a model directory's config.json).

A field out of range is a one-line ValueError naming it, before anything is built from the config:
a 1 KB config.json must not be able to ask for a 256 GB codebook.
"""

from __future__ import annotations

import math
from dataclasses import fields


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def unknown_fields(cls, d: dict) -> list:
    """The keys of the mapping ``d`` that name no field of the dataclass ``cls``, sorted."""
    return sorted(set(d) - {f.name for f in fields(cls)})


def check_fields(
    owner: str,
    cfg,
    *,
    ints: dict | None = None,
    floats: dict | None = None,
    choices: dict | None = None,
    bools: tuple = (),
) -> None:
    """Check the fields of the dataclass instance ``cfg``. ``ints`` / ``floats``: name -> (lo, hi),
    both included (an int field whose default is None may be None); ``choices``: name -> allowed
    strings (or None); ``bools``: names that must be True or False."""
    defaults = {f.name: f.default for f in fields(cfg)}
    for name, (lo, hi) in (ints or {}).items():
        v = getattr(cfg, name)
        if v is None and defaults.get(name) is None:
            continue
        if not _is_int(v) or not lo <= v <= hi:
            raise ValueError(f"{owner}: {name} must be an integer in [{lo}, {hi}], got {v!r}")
    for name, (lo, hi) in (floats or {}).items():
        v = getattr(cfg, name)
        if not (_is_int(v) or isinstance(v, float)) or not math.isfinite(v) or not lo <= v <= hi:
            raise ValueError(f"{owner}: {name} must be a number in [{lo}, {hi}], got {v!r}")
    for name, allowed in (choices or {}).items():
        v = getattr(cfg, name)
        if not (v is None or isinstance(v, str)) or v not in allowed:
            raise ValueError(f"{owner}: {name} must be one of {list(allowed)}, got {v!r}")
    for name in bools:
        v = getattr(cfg, name)
        if not isinstance(v, bool):
            raise ValueError(f"{owner}: {name} must be true or false, got {v!r}")
