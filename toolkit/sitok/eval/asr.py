"""ASR judges for intelligibility (WER). Default: pocketsphinx, whose en-US acoustic model,
language model and dictionary ship inside its PyPI package, so it runs offline."""

from __future__ import annotations

import numpy as np
import torch

from sitok.data.audio import resample
from sitok.data.text import normalize_text


class PocketSphinxASR:
    """Offline en-US recogniser (CMU pocketsphinx, bundled model). Input: mono float audio.

    One decoder object carries adaptive front-end state from one utterance to the next (on
    garbled audio the hypotheses of 4 in 10 utterances change with the order; a fresh decoder
    costs seconds), so every scorer in the toolkit transcribes a set in sorted-utterance order
    with one decoder, in one process: a WER is reproducible for a given set.
    """

    name = "pocketsphinx"
    sample_rate = 16000

    def __init__(self, lm: str | None = None):
        """``lm``: an ARPA language model (e.g. the in-domain one of the vocabulary stage);
        None uses the package's generic en-US LM."""
        import pocketsphinx

        self.version = getattr(pocketsphinx, "__version__", "unknown")
        self.lm = lm
        kwargs = {"lm": lm} if lm else {}
        self._decoder = pocketsphinx.Decoder(samprate=self.sample_rate, loglevel="FATAL", **kwargs)

    def transcribe(self, wav, sample_rate: int) -> str:
        x = torch.as_tensor(np.asarray(wav, dtype=np.float32))
        x = resample(x, sample_rate, self.sample_rate).numpy()
        pcm = (np.clip(x, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        d = self._decoder
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        return normalize_text(hyp.hypstr if hyp is not None else "")


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
