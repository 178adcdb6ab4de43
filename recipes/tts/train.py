#!/usr/bin/env python
"""AR-TTS: a decoder-only LM reads text and writes the tokenizer's speech tokens; the tokenizer's
diffusion decoder and vocoder make the waveform.

    python recipes/tts/train.py recipes/tts/hparams/mini.yaml --model_dir exp/tokenizer_mini/model \
        --codes_root exp/tokenizer_mini/codes --exp_dir exp/tokenizer_mini/tts

Run from a corpus recipe directory (egs/<corpus>/sitok); stage 16 of egs/TEMPLATE/sitok.sh does.
Several GPUs: ``torchrun --nproc_per_node N recipes/tts/train.py ... --precision bf16``.
"""

import sys

from sitok.lm.tts import run

if __name__ == "__main__":
    run(sys.argv[1:])
