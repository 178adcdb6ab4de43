#!/usr/bin/env python
"""Keyword spotting probe (DASB KS): frozen features of 1 s clips -> ECAPA-TDNN -> 12 classes
(10 keywords, _unknown_, _silence_; Speech Commands v2 layout, or the mini corpus's ks_* sets).

    python recipes/probes/ks/train.py recipes/probes/ks/hparams/mini.yaml --features tokens \
        --model_dir exp/tokenizer_mini/model --codes_root exp/tokenizer_mini/codes \
        --exp_dir exp/tokenizer_mini/probes/ks

Metric: test accuracy with the checkpoint of lowest validation error (<exp_dir>/results.json).
"""

import sys

from sitok.probes.brain import run_probe

if __name__ == "__main__":
    run_probe(sys.argv[1:])
