"""Scores computed from the tokenizer's own outputs (no judge): distances between decoded and
ground-truth log-mels in the model's normalised space, code statistics, and the CTC head's ASR.

    mel_l1(hyp_n, ref_n)          mean |hyp - ref| over the frames both have (normalised log-mels)
    frechet_distance(a, b)        Fréchet distance between the Gaussians of two sets of frames (FMD)
    code_statistics(codes, ...)   codebook usage and perplexity of a set's codes
    ctc_asr(tok, codes, texts)    WER of the CTC head read greedily (and by beam search)
"""

from __future__ import annotations

import numpy as np
import torch

from sitok.eval.asr import word_error_rate
from sitok.infer.sets import length_batches
from sitok.losses.ctc import ctc_beam_searcher, ctc_greedy
from sitok.quantizers import CodebookUsage


def mel_l1(hyp: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean |hyp - ref| over the frames both have; both normalised log-mels [T, n_mels]."""
    n = min(hyp.shape[0], ref.shape[0])
    return float((hyp[:n] - ref[:n]).abs().mean())


def gaussian(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the rows of ``x`` [N, D], in float64."""
    x = np.asarray(x, dtype=np.float64)
    return x.mean(0), np.cov(x, rowvar=False)


def frechet_distance(a, b) -> float:
    """Fréchet distance between two Gaussians, each given as rows [N, D] or as (mean, cov):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))."""
    from scipy import linalg

    (mu_a, s_a), (mu_b, s_b) = (g if isinstance(g, tuple) else gaussian(g) for g in (a, b))
    root = linalg.sqrtm(s_a @ s_b)
    root = root.real if np.iscomplexobj(root) else root  # numerical noise in the imaginary part
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2.0 * root))


def code_statistics(codes: dict, num_codebooks: int, codebook_size: int) -> dict:
    """Codebook usage (fraction of entries used) and perplexity of a set's codes [CN, T]."""
    usage = CodebookUsage(codebook_size, num_codebooks)
    for c in codes.values():
        usage.update(torch.as_tensor(c).long()[None])
    s = usage.summary()
    return {"codebook_usage": float(s["usage"]), "code_perplexity": float(s["perplexity"])}


def ctc_asr(tok, codes: dict, texts: dict, beam_size: int = 0) -> dict | None:
    """The tokenizer's own CTC head on the codes -> WER (paper "CTC ASR"): greedy, and with
    ``beam_size`` > 0 also speechbrain's CTC prefix beam search (no LM). None when the model has
    no trained CTC head or its directory no ``sp.model`` (the paper's "-")."""
    sp = tok.ctc_units()
    if sp is None:
        return None
    searcher = ctc_beam_searcher(sp, beam_size) if beam_size > 0 else None
    hyps, beam_hyps = {}, {}
    for batch in length_batches({u: c.shape[1] for u, c in codes.items()}):
        lengths = torch.tensor([codes[u].shape[1] for u in batch])
        c = torch.nn.utils.rnn.pad_sequence([torch.as_tensor(codes[u]).T for u in batch], batch_first=True)
        log_probs, lengths = tok.ctc_log_probs(c.transpose(1, 2), lengths)
        best = log_probs.argmax(-1)
        hyps.update((u, sp.decode(ctc_greedy(best[i, : lengths[i]].tolist()))) for i, u in enumerate(batch))
        if searcher is not None:
            beams = searcher(log_probs, lengths.float() / log_probs.shape[1])
            beam_hyps.update((u, h[0].text) for u, h in zip(batch, beams))
    utts = sorted(codes)
    refs = [texts[u] for u in utts]
    out = {"ctc_asr_wer": 100 * word_error_rate(refs, [hyps[u] for u in utts]), "ctc_decoding": "greedy"}
    if searcher is not None:
        beam = 100 * word_error_rate(refs, [beam_hyps[u] for u in utts])
        out.update({"ctc_asr_wer_beam": beam, "ctc_beam_size": beam_size, "ctc_decoding": "greedy + beam"})
    return out
