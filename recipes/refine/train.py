#!/usr/bin/env python
"""Refine the decoder of a trained SiTok tokenizer (SpeechBrain recipe).

    python recipes/refine/train.py recipes/refine/hparams/mini.yaml \
        --refine shortcut --init_model exp/tokenizer_mini/model --exp_dir exp/refine_mini_shortcut

``--refine``: decoder_ft | token_cfg | shortcut | light_head (see sitok.train.refine). The
encoder and VQ stay frozen; the result is a model directory ``<exp_dir>/model`` that the
Tokenizer API, the CLI and recipe stage 5 read like any other. Run from egs/<corpus>/sitok.
"""

import sys

from sitok.train.refine import RefineBrain
from sitok.train.tokenizer import run_recipe

if __name__ == "__main__":
    run_recipe(sys.argv[1:], RefineBrain)
