#!/usr/bin/env python
"""ASR probe (DASB ASR): frozen features -> 2-layer BiLSTM -> CTC over SentencePiece units;
greedy and beam-search WER on the test set.

    python recipes/probes/asr/train.py recipes/probes/asr/hparams/mini.yaml --features mel12.5 \
        --sp_model data/lang_unigram256/sp.model --exp_dir exp/features_mel12.5/probes/asr

Why SentencePiece units and not characters at 12.5 Hz: see the hparams file's header. Every
target is checked against its CTC input length first (counts in <exp_dir>/results.json);
hypotheses go to <exp_dir>/hyps.txt.
"""

import sys

from sitok.probes.brain import run_probe

if __name__ == "__main__":
    run_probe(sys.argv[1:])
