"""A small word n-gram language model written as an ARPA file, for the offline ASR judge.

The mini corpus speaks sentences from the toolkit's own grammar, which pocketsphinx's generic
English LM finds improbable. Stage 3 therefore builds an in-domain bigram LM on the *training*
transcripts (evaluation text is never seen) with absolute discounting and back-off to an
add-one unigram, the way a domain-adapted recogniser would be set up.
"""

from __future__ import annotations

import math
from collections import Counter

from sitok.data.text import normalize_text
from sitok.fileio import atomic_open

BOS, EOS = "<s>", "</s>"


def write_bigram_arpa(sentences, path: str, discount: float = 0.5, vocab=None) -> dict:
    """Estimate a back-off bigram LM from ``sentences`` and write it to ``path`` (ARPA).

    ``vocab`` adds words with zero counts (they keep add-one unigram mass). Returns counts.
    """
    uni: Counter = Counter()
    bi: Counter = Counter()
    for s in sentences:
        words = normalize_text(s).split()
        if not words:
            continue
        seq = [BOS, *words, EOS]
        uni.update(seq[1:])
        bi.update(zip(seq[:-1], seq[1:]))
    words = set(uni) | set(vocab or ()) | {EOS}
    total = sum(uni.values())
    p_uni = {w: (uni[w] + 1) / (total + len(words)) for w in words}
    listed: dict[str, list[str]] = {}
    for h, w in bi:
        listed.setdefault(h, []).append(w)
    hist = {h: sum(bi[(h, w)] for w in ws) for h, ws in listed.items()}
    p_bi = {(h, w): (c - discount) / hist[h] for (h, w), c in bi.items()}
    backoff = {}
    for h, ws in listed.items():
        left = 1.0 - sum(p_bi[(h, w)] for w in ws)
        denom = 1.0 - sum(p_uni[w] for w in ws)
        backoff[h] = left / denom if denom > 0 else 1.0
    with atomic_open(path) as fh:
        fh.write(f"\\data\\\nngram 1={len(words) + 1}\nngram 2={len(p_bi)}\n\n\\1-grams:\n")
        fh.write(f"-99.0000 {BOS} {math.log10(backoff.get(BOS, 1.0)):.4f}\n")
        for w in sorted(words):
            bo = f" {math.log10(backoff[w]):.4f}" if w in backoff else ""
            fh.write(f"{math.log10(p_uni[w]):.4f} {w}{bo}\n")
        fh.write("\n\\2-grams:\n")
        for h, w in sorted(p_bi):
            fh.write(f"{math.log10(p_bi[(h, w)]):.4f} {h} {w}\n")
        fh.write("\n\\end\\\n")
    return {"unigrams": len(words) + 1, "bigrams": len(p_bi), "tokens": total}
