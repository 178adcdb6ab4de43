#!/usr/bin/env python
"""Emotion recognition probe (DASB ER): frozen features -> ECAPA-TDNN -> 4-way AAM classifier.

    python recipes/probes/er/train.py recipes/probes/er/hparams/mini.yaml --features tokens \
        --model_dir exp/tokenizer_mini/model --codes_root exp/tokenizer_mini/codes \
        --exp_dir exp/tokenizer_mini/probes/er

Labels: utt2label of the train/valid/test sets (mini: speaking style; IEMOCAP: neutral, happy,
angry, sad). Metric: accuracy on the test set with the checkpoint of lowest validation error,
written to <exp_dir>/results.json. Stage 13 of egs/TEMPLATE/sitok.sh runs it.
"""

import sys

from sitok.probes.brain import run_probe

if __name__ == "__main__":
    run_probe(sys.argv[1:])
