#!/usr/bin/env bash
# Where each corpus is: one variable per corpus, read by egs/<corpus>/sitok/run.sh (sourced, not
# executed). Nothing is downloaded by a recipe: extract a corpus yourself, then either
#   - edit its line below,
#   - or set the variable in the environment:   LIBRISPEECH=/data/corpora ./run.sh
#   - or give the folder on the command line:   ./run.sh --db_root /data/corpora
# (--db_root is an option of egs/TEMPLATE/sitok.sh and wins over this file and the environment).
# A relative path is relative to the recipe directory, egs/<corpus>/sitok/.

LIBRISPEECH=${LIBRISPEECH:-downloads}          # the folder holding LibriSpeech/<split>/
LIBRITTS=${LIBRITTS:-downloads}                # the folder holding LibriTTS/<split>/
IEMOCAP=${IEMOCAP:-downloads}                  # the folder holding IEMOCAP_full_release/Session1..5 (or Session1..5)
VOXCELEB1=${VOXCELEB1:-downloads}              # the folder holding wav/id*/ and veri_test2.txt (or meta/veri_test2.txt)
SPEECH_COMMANDS=${SPEECH_COMMANDS:-downloads}  # the folder holding <word>/*.wav, validation_list.txt, testing_list.txt
MINI=${MINI:-corpus}                           # mini: where stage 0 synthesises the embedded corpus
