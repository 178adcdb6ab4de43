"""The one text normaliser used by CTC training, the vocabulary, ASR judges and WER.

Lower-case ASCII words separated by single spaces; apostrophes inside words are kept
("don't"), hyphens split words, every other punctuation mark is dropped, accented letters
lose their accents, anything else outside ``[a-z0-9' ]`` is removed and counted.
"""

from __future__ import annotations

import re
import unicodedata

_KEEP = re.compile(r"[^a-z0-9' ]+")
_SPACE = re.compile(r"\s+")
_EDGE_APOS = re.compile(r"(^|\s)'+|'+(?=\s|$)")


def normalize_text(text: str) -> str:
    """Normalise a transcript (see module docstring). Returns "" for text with no words."""
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    text = unicodedata.normalize("NFKD", text)
    text = text.encode("ascii", "ignore").decode("ascii").lower()
    text = re.sub(r"[-_/]", " ", text)
    text = _KEEP.sub(" ", text)
    text = _EDGE_APOS.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


def check_transcript(text: str) -> tuple[str, str | None]:
    """Normalise ``text``; return (normalised, problem) where problem is None when usable.

    Problems: ``empty-text`` (nothing left after normalisation). Non-ASCII characters are
    transliterated or dropped silently by design (they are reported by the callers' counts
    through :func:`non_ascii_count`).
    """
    norm = normalize_text(text)
    return norm, None if norm else "empty-text"


def non_ascii_count(text: str) -> int:
    return sum(1 for ch in text if ord(ch) > 127)
