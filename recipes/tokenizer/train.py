#!/usr/bin/env python
"""Train the SiTok tokenizer (SpeechBrain recipe).

    python recipes/tokenizer/train.py recipes/tokenizer/hparams/mini.yaml [--key value ...]

Run from a corpus recipe directory (egs/<corpus>/sitok), where the hparams' relative paths
(dump/, data/lang_*/, exp/) resolve; stage 4 of egs/TEMPLATE/sitok.sh does exactly that.
Multi-GPU / multi-node: ``torchrun --nproc_per_node N recipes/tokenizer/train.py ...``.

Everything about the model and the optimiser is in the YAML; this script wires the data
(kaldiio log-mel dumps + SentencePiece targets) into ``sitok.train.TokenizerBrain`` and exports
the model directory (plain config + weights) at the end.
"""

import sys

from sitok.train.tokenizer import TokenizerBrain, run_recipe

if __name__ == "__main__":
    run_recipe(sys.argv[1:], TokenizerBrain)
