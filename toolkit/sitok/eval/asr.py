"""Word error rate for the ASR judges (``sitok.eval.judges``): the shared text normalisation, then
jiwer's corpus-level WER."""

from __future__ import annotations

from sitok.data.text import normalize_text


def scored_pairs(refs: list[str], hyps: list[str]) -> list[tuple[int, str, str]]:
    """(index, reference, hypothesis) after the shared text normalisation, for every pair whose
    reference is not empty: what a WER counts."""
    pairs = ((i, normalize_text(r), normalize_text(h)) for i, (r, h) in enumerate(zip(refs, hyps)))
    return [p for p in pairs if p[1]]


def word_error_rate(refs: list[str], hyps: list[str]) -> float:
    """Corpus-level WER (jiwer) after the shared text normalisation; 0..inf (1.0 = 100 %)."""
    import jiwer

    pairs = [(r, h) for _, r, h in scored_pairs(refs, hyps)]
    if not pairs:
        raise ValueError("word_error_rate: no non-empty reference")
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))
