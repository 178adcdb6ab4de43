#!/usr/bin/env python
"""LLM-ASR: a decoder-only LM reads speech tokens (or mel) and writes the transcript.

    python recipes/llm_asr/train.py recipes/llm_asr/hparams/mini.yaml --features tokens \
        --model_dir exp/tokenizer_mini/model --codes_root exp/tokenizer_mini/codes \
        --exp_dir exp/tokenizer_mini/llm_asr

Run from a corpus recipe directory (egs/<corpus>/sitok); stage 15 of egs/TEMPLATE/sitok.sh does.
Several GPUs: ``torchrun --nproc_per_node N recipes/llm_asr/train.py ... --precision bf16``.
"""

import sys

from sitok.lm.asr import run

if __name__ == "__main__":
    run(sys.argv[1:])
