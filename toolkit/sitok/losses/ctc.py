"""CTC loss on the token-rate latents, with utterances that cannot fit counted, not hidden.

A CTC alignment of U target units (with R adjacent repeats) needs at least U + R input frames.
At 12.5 Hz a target that is too long gives an infinite loss, which ``zero_infinity`` would
silently turn into 0; here such utterances are excluded from the loss and reported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ctc_required_frames(targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """[B] frames each target needs: U + number of adjacent repeats (padding ignored)."""
    u = targets.shape[1]
    if u < 2:
        return target_lengths.clone()
    same = targets[:, 1:] == targets[:, :-1]
    valid = torch.arange(1, u, device=targets.device)[None, :] < target_lengths[:, None]
    return target_lengths + (same & valid).sum(1)


def ctc_loss(
    logits: torch.Tensor,
    input_lengths: torch.Tensor,
    targets: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int = 0,
) -> tuple[torch.Tensor, int]:
    """Mean CTC loss (per target unit, averaged over utterances) over the utterances whose target
    fits their input; returns (loss, number of utterances that did not fit)."""
    fits = ctc_required_frames(targets, target_lengths) <= input_lengths
    fits &= target_lengths > 0
    n_bad = int((~fits).sum())
    if not bool(fits.any()):
        return logits.sum() * 0.0, n_bad
    log_probs = logits[fits].float().log_softmax(-1).transpose(0, 1)  # [T, B', V]
    args = (log_probs, targets[fits], input_lengths[fits], target_lengths[fits])
    return F.ctc_loss(*args, blank=blank, reduction="mean", zero_infinity=False), n_bad


def ctc_greedy(ids: list[int], blank: int = 0) -> list[int]:
    """Best-path CTC decoding of one utterance's argmax ids: merge repeats, drop blanks (the
    SentencePiece targets use id 0, the pad piece, as the blank)."""
    return [i for j, i in enumerate(ids) if i != blank and (j == 0 or ids[j - 1] != i)]


def ctc_beam_searcher(sp, beam_size: int = 10):
    """speechbrain's CTC prefix beam search over SentencePiece units (blank = id 0), no LM."""
    from speechbrain.decoders.ctc import CTCPrefixBeamSearcher

    vocab = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    return CTCPrefixBeamSearcher(blank_index=0, vocab_list=vocab, beam_size=beam_size)
