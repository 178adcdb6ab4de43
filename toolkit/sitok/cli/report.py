"""Report commands: the DASB probe summary of an experiment and the paper's tables and figures.

Library modules are imported inside each command, so ``sitok --help`` starts without torch."""

from __future__ import annotations

import logging
import os

from sitok.cli.common import add_command

logger = logging.getLogger("sitok")


def cmd_probe_summary(a) -> int:
    from sitok.probes.summary import collect

    name = a.name or os.path.basename(os.path.normpath(a.exp_dir))
    collect(a.exp_dir, name, a.features, a.model_dir, a.codes_dir, a.dump_dir, a.beam_size)
    return 0


def cmd_probe_records(a) -> int:
    from sitok.report.probe_records import write_records

    records = write_records(a.out, [tuple(x) for x in a.record])
    logger.info("%s: %d probe records", a.out, len(records))
    return 0


def cmd_report(a) -> int:
    from sitok.report.build import write_report

    write_report(
        a.exp_dirs, a.out, set_name=a.set, dump_dir=a.dump_dir, steps=a.steps, cfg_scale=a.cfg_scale, vocoder=a.vocoder
    )
    with open(os.path.join(a.out, "report.md"), encoding="utf-8") as fh:
        print(fh.read())
    return 0


def add_parsers(sub) -> None:
    s = add_command(
        sub, "probe-summary", cmd_probe_summary, "probe results + CTC ASR -> <exp>/probes/summary.json (stage 13)"
    )
    s.add_argument("exp_dir", help="the experiment whose probes/<task>/results.json are collected")
    s.add_argument("--name", default=None, help="row label (default: the experiment dir's name)")
    s.add_argument(
        "--features",
        default="tokens",
        choices=["tokens", "mel12.5", "mel50"],
        help="what the probes saw: tokens, or log-mel at 12.5 / 50 Hz",
    )
    s.add_argument("--model-dir", default=None, help="tokens: the tokenizer model directory")
    s.add_argument("--codes-dir", default=None, help="tokens: codes of the CTC-ASR test split")
    s.add_argument("--dump-dir", default=None, help="the CTC-ASR test split's dump dir (transcripts)")
    s.add_argument("--beam-size", type=int, default=10, help="CTC beam width")

    s = add_command(
        sub, "probe-records", cmd_probe_records, "add what stage 13 probed to its record file (stage 14 reads it)"
    )
    s.add_argument("out", help="the record file, e.g. exp/probes_mini.json")
    s.add_argument(
        "--record",
        nargs=4,
        action="append",
        default=[],
        metavar=("NAME", "FEATURES", "MODEL_DIR", "EXP_DIR"),
        help='one probed feature set (MODEL_DIR "" for continuous features); repeat for each',
    )

    s = add_command(sub, "report", cmd_report, "the paper's tables (markdown + CSV) and figures from evaluated runs")
    s.add_argument(
        "exp_dirs",
        nargs="+",
        help="experiment dirs (with eval/<set>/summary.json), summary files or stage-13 probe-record files",
    )
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--set", default=None, help="evaluated set to report (default: every one found)")
    s.add_argument("--dump-dir", default=None, help="the set's dump dir, for the mel-spectrogram figures")
    s.add_argument("--steps", type=int, default=None, help="reported Euler steps (default: the fewest scored)")
    s.add_argument("--cfg-scale", type=float, default=None, help="reported token-CFG scale of CFG models")
    s.add_argument("--vocoder", default=None, help="reported vocoder (default: the first scored)")
