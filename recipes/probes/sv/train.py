#!/usr/bin/env python
"""Speaker verification probe (DASB SV): ECAPA-TDNN embeddings trained with AAM softmax on the
training speakers, cosine scores on trials over held-out speakers -> EER and minDCF.

    python recipes/probes/sv/train.py recipes/probes/sv/hparams/mini.yaml --features mel50 \
        --trials_file data/test_unseen/trials --exp_dir exp/features_mel50/probes/sv

The trial list (given, or generated balanced with a fixed seed) is saved with the scores in
<exp_dir>/{trials,scores.txt}; a trial speaker who is also a training speaker is an error.
"""

import sys

from sitok.probes.brain import run_probe

if __name__ == "__main__":
    run_probe(sys.argv[1:])
