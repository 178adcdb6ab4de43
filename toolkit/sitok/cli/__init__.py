"""The ``sitok`` console script: one module per command group, each command a thin layer over a
library function. Recipe stages call these commands; users can too.

    data (sitok.cli.data)
    sitok synth-mini         build the embedded synthetic corpus (egs/mini stage 0)
    sitok prep               corpus on disk -> Kaldi-style data dir + manifest (stage 1)
    sitok make-trials        speaker-verification trial list for a data dir
    sitok compute-feats      data dir -> log-mel ark/scp dump + CMVN stats (stage 2)
    sitok write-shards       data dir -> WebDataset audio shards + index.json
    sitok train-vocab        SentencePiece CTC vocabulary + CTC fit report (stage 3)
    sitok combine-data-dirs  union of data dirs
    sitok validate-data-dir  Kaldi-style consistency checks

    models and codes (sitok.cli.codec)
    sitok count-params       parameters of a tokenizer config (meta device, no memory)
    sitok info               facts of a model directory (params, token rate, CN, CS, bit-rate)
    sitok encode             wav -> codes (.npy)
    sitok decode             codes (.npy) -> wav
    sitok resynth            wav -> codes -> wav
    sitok transcribe         speech or codes -> text with an LLM-ASR model (stage 15)
    sitok tts                text -> speech with an AR-TTS model over the tokens (stage 16)
    sitok export             model directory from a training run's latest checkpoint
    sitok export-onnx        ONNX graphs of a model directory, checked with onnxruntime
    sitok dump-codes         codes of a whole feature dump dir (stage 5)
    sitok resynth-set        decode a set's codes / vocode its ground truth to wavs (stage 5)

    evaluation (sitok.cli.evaluate)
    sitok judge-lm           in-domain bigram LM for the offline ASR judge (stage 3)
    sitok judge-wer          offline ASR judge (pocketsphinx) WER on a data dir's audio
    sitok codes-stats        codebook usage and perplexity of a set's codes
    sitok eval-refine        mel distance / WER / RTF of models x steps x CFG scales x temperatures on a set
    sitok best-decoding      the (steps, temperature) with the lowest mel L1 of an eval-refine run
    sitok compare-refine     paired per-utterance comparison of eval-refine settings (bootstrap CI)
    sitok evaluate           reconstruction of a split scored by every judge

    reports (sitok.cli.report)
    sitok probe-summary      probe results + CTC ASR (greedy, beam) -> <exp>/probes/summary.json (stage 13)
    sitok probe-records      add what stage 13 probed to its record file (read by stage 14)
    sitok report             the paper's tables and figures from evaluated experiments

Run ``sitok COMMAND -h`` for a command's arguments and their defaults.

Each command imports the library it runs inside its own function, so that ``sitok --help`` and
the light commands (data-dir validation, stamps) start without importing torch or speechbrain.
"""

from __future__ import annotations

import argparse
import sys

from sitok import __version__
from sitok.cli import codec, data, evaluate, report
from sitok.cli.common import (
    EPILOG,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    LOG_LEVELS,
    HelpFormatter,
    logger,
    one_line,
    setup_logging,
)

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "HelpFormatter", "build_parser", "main"]

GROUPS = (data, codec, evaluate, report)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sitok", description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="log verbosity (DEBUG also prints the traceback of an error)",
    )
    p.add_argument(
        "--allow-pipes",
        action="store_true",
        help="let feats.scp / codes.scp entries that are shell commands ('cmd |') run (refused by default)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_parsers(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    if args.allow_pipes:
        from sitok.data.kaldi import allow_pipes

        allow_pipes(True)
    try:
        return args.func(args) or EXIT_OK
    except KeyboardInterrupt:
        logger.error("%s: interrupted", args.command)
        return EXIT_INTERRUPTED
    except Exception as exc:  # any failure ends as one line naming the file and the reason
        logger.debug("%s failed", args.command, exc_info=True)
        logger.error("%s: %s", args.command, one_line(exc).removeprefix(f"{args.command}: "))
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
