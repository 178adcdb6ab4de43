"""Data commands: corpus -> Kaldi-style data dir -> features -> CTC vocabulary (recipe stages 0-3).

Library modules are imported inside each command, so ``sitok --help`` starts without torch."""

from __future__ import annotations

import logging
import os

from sitok.cli.common import NO_PROGRESS_HELP, add_command, positive_int

logger = logging.getLogger("sitok")


def cmd_synth_mini(a) -> int:
    from sitok.data import synth

    items = synth.plan_corpus(
        a.seed,
        a.train_minutes,
        a.dev_minutes,
        a.test_minutes,
        a.unseen_minutes,
        tuple(a.ks_per_class),
        tts_train_minutes=a.tts_train_minutes,
    )
    logger.info("synthesising %d utterances into %s with %d jobs (seed %d)", len(items), a.out, a.nj, a.seed)
    seconds = synth.synthesize_corpus(a.out, items, nj=a.nj, progress=not a.no_progress)
    logger.info("corpus %s: %s", a.out, synth.total_hours(seconds))
    return 0


def cmd_prep(a) -> int:
    from sitok.data.dasb_prep import voxceleb_trials
    from sitok.data.prep import get_reader, make_data_dir

    opts = {
        "iemocap": {"test_session": a.test_session, "valid_session": a.valid_session},
        "voxceleb1": {"dev_per_speaker": a.dev_per_speaker},
        "speech_commands": {"out_dir": a.out, "silence_per_split": a.silence_per_split},
    }.get(a.corpus, {})
    entries = get_reader(a.corpus)(a.root, a.split, **opts)
    segment = {"segment_long": a.segment_long, "segment_max": a.segment_max, "segment_backend": a.segment_backend}
    make_data_dir(entries, a.out, min_duration=a.min_duration, max_duration=a.max_duration, **segment)
    if a.corpus == "voxceleb1" and a.split == "test":  # the official trial list, as utterance ids
        voxceleb_trials(a.root, a.out)
    return 0


def cmd_make_trials(a) -> int:
    """Balanced speaker-verification trials over a data dir's speakers -> DATA_DIR/trials."""
    from sitok.data.kaldi import read_table
    from sitok.data.trials import make_trials, write_trials

    utt2spk = read_table(os.path.join(a.data_dir, "utt2spk"))
    exclude = set(read_table(os.path.join(a.train_dir, "utt2spk")).values()) if a.train_dir else set()
    try:
        trials = make_trials(utt2spk, n_trials=a.n_trials, seed=a.seed, exclude_speakers=exclude)
    except ValueError as exc:  # too few held-out utterances: the SV probe reports it when it runs
        logger.warning("%s: no trial list written: %s", a.data_dir, exc)
        return 0
    write_trials(os.path.join(a.data_dir, "trials"), trials)
    n_t = sum(lab for lab, _, _ in trials)
    logger.info(
        "%s/trials: %d trials (%d target, %d nontarget) over %d held-out speakers",
        a.data_dir,
        len(trials),
        n_t,
        len(trials) - n_t,
        len(set(utt2spk.values())),
    )
    return 0


def cmd_compute_feats(a) -> int:
    from sitok.data.features import compute_features

    compute_features(
        a.data_dir,
        a.dump_dir,
        nj=a.nj,
        min_duration=a.min_duration,
        max_duration=a.max_duration,
        cmvn_mode=a.cmvn_mode,
        progress=not a.no_progress,
    )
    return 0


def cmd_write_shards(a) -> int:
    from sitok.data.shards import write_shards

    write_shards(
        a.data_dir,
        a.out_dir,
        max_count=a.shard_size,
        max_seconds=a.shard_seconds,
        audio_format=a.audio_format,
        bits=a.bits,
        sample_rate=a.sample_rate,
        min_duration=a.min_duration,
        max_duration=a.max_duration,
        seed=a.seed,
        nj=a.nj,
        progress=not a.no_progress,
    )
    return 0


def cmd_train_vocab(a) -> int:
    from sitok.data.vocab import train_vocabulary

    train_vocabulary(a.data_dir, a.out, a.vocab_size, a.model_type, a.token_rate, a.ctc_upsample, nj=a.nj)
    return 0


def cmd_combine(a) -> int:
    from sitok.data.kaldi import combine_data_dirs

    dd = combine_data_dirs(a.out, a.inputs)
    logger.info("%s: %d utterances from %s", a.out, len(dd), " ".join(a.inputs))
    return 0


def cmd_validate(a) -> int:
    from sitok.data.kaldi import validate_data_dir

    problems = validate_data_dir(a.data_dir, need=tuple(a.need), check_files=a.check_files)
    for p in problems:
        logger.error(p)
    if problems:
        return 1
    logger.info("%s: valid (%s)", a.data_dir, ", ".join(["wav.scp", "text", "utt2spk", *a.need]))
    return 0


def add_parsers(sub) -> None:
    s = add_command(sub, "synth-mini", cmd_synth_mini, "build the embedded synthetic corpus (egs/mini stage 0)")
    s.add_argument("--out", required=True, help="output corpus directory")
    s.add_argument("--seed", type=int, default=1234, help="corpus seed (the same seed gives a byte-identical corpus)")
    s.add_argument("--nj", type=int, default=2, help="parallel jobs")
    s.add_argument("--train-minutes", type=float, default=270.0, help="minutes of speech in the train split")
    s.add_argument("--dev-minutes", type=float, default=10.0, help="minutes of speech in the dev split")
    s.add_argument("--test-minutes", type=float, default=10.0, help="minutes of speech in the test split")
    s.add_argument(
        "--unseen-minutes", type=float, default=6.0, help="minutes of speech by unseen speakers (test_unseen)"
    )
    s.add_argument(
        "--ks-per-class",
        type=int,
        nargs=3,
        default=[60, 10, 15],
        metavar=("TRAIN", "DEV", "TEST"),
        help="keyword-spotting clips per class in train, dev and test",
    )
    s.add_argument(
        "--tts-train-minutes",
        type=float,
        default=0.0,
        help="minutes of speech in the extra split tts_train (seen speakers; 0: none), drawn after the "
        "others so that it changes none of them",
    )
    s.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)

    s = add_command(sub, "prep", cmd_prep, "corpus on disk -> Kaldi-style data dir + manifest (stage 1)")
    s.add_argument(
        "--corpus",
        required=True,
        help="mini, librispeech, libritts, librilight, emilia, iemocap, voxceleb1, speech_commands "
        "(or any reader added to sitok.data.prep.READERS)",
    )
    s.add_argument("--root", required=True, help="corpus root (mini: the synthesised corpus dir)")
    s.add_argument("--split", required=True, help="corpus split, e.g. train-clean-100, test-clean, train, test")
    s.add_argument("--out", required=True, help="output data dir")
    s.add_argument("--min-duration", type=float, default=0.1, help="drop utterances shorter than this (seconds)")
    s.add_argument("--max-duration", type=float, default=60.0, help="drop utterances longer than this (seconds)")
    s.add_argument(
        "--segment-long",
        action="store_true",
        help="cut recordings longer than --max-duration into utterances in their silences (a segments "
        "file; the text of a recording cut in several is <no_transcript>) instead of dropping them",
    )
    s.add_argument("--segment-max", type=float, default=20.0, help="--segment-long: longest segment (seconds)")
    s.add_argument(
        "--segment-backend",
        default="energy",
        choices=["energy", "silero"],
        help="--segment-long: voice activity detector (energy: no model; silero: the silero-vad package)",
    )
    s.add_argument("--test-session", type=int, default=5, help="iemocap: the test session")
    s.add_argument("--valid-session", type=int, default=4, help="iemocap: the validation session")
    s.add_argument("--dev-per-speaker", type=int, default=2, help="voxceleb1: dev utterances per training speaker")
    s.add_argument(
        "--silence-per-split",
        type=int,
        default=None,
        help="speech_commands: _silence_ clips per split (default: as many as the mean keyword class)",
    )

    s = add_command(sub, "make-trials", cmd_make_trials, "speaker-verification trial list for a data dir")
    s.add_argument("data_dir", help="Kaldi-style data dir (utt2spk); the list is written to DATA_DIR/trials")
    s.add_argument("--seed", type=int, default=0, help="trial sampling seed")
    s.add_argument("--n-trials", type=int, default=2000, help="half same-speaker, half different")
    s.add_argument("--train-dir", default=None, help="the probe's training data dir: its speakers must not appear")

    s = add_command(sub, "compute-feats", cmd_compute_feats, "data dir -> log-mel ark/scp dump + CMVN stats (stage 2)")
    s.add_argument("data_dir", help="Kaldi-style data dir (wav.scp, text, utt2spk, ...)")
    s.add_argument("dump_dir", help="output feature dump dir (feats.scp, cmvn.json, ...)")
    s.add_argument("--nj", type=int, default=1, help="parallel jobs")
    s.add_argument("--min-duration", type=float, default=0.1, help="drop utterances shorter than this (seconds)")
    s.add_argument("--max-duration", type=float, default=60.0, help="drop utterances longer than this (seconds)")
    s.add_argument(
        "--cmvn-mode",
        default="global",
        choices=["global", "per_bin"],
        help="global: one mean and variance (the paper's); per_bin: one per mel bin",
    )
    s.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)

    s = add_command(sub, "write-shards", cmd_write_shards, "data dir -> WebDataset audio shards + index.json")
    s.add_argument("data_dir", help="Kaldi-style data dir (wav.scp, text, utt2spk, utt2dur)")
    s.add_argument("out_dir", help="output shard dir (shard-NNNNNN.tar, index.json, skipped.tsv)")
    s.add_argument("--shard-size", type=positive_int, default=2000, help="most utterances per shard")
    s.add_argument("--shard-seconds", type=float, default=3600.0, help="most seconds of audio per shard")
    s.add_argument("--audio-format", default="flac", choices=["flac", "wav"], help="how the audio is stored")
    s.add_argument("--bits", type=int, default=16, choices=[16, 24], help="PCM bits per sample of the stored audio")
    s.add_argument(
        "--sample-rate",
        type=positive_int,
        default=None,
        help="resample to this rate when writing (None: keep each file's rate, for features equal to the dump)",
    )
    s.add_argument("--min-duration", type=float, default=0.1, help="drop utterances shorter than this (seconds)")
    s.add_argument("--max-duration", type=float, default=60.0, help="drop utterances longer than this (seconds)")
    s.add_argument("--seed", type=int, default=0, help="seed of the order in which utterances fill the shards")
    s.add_argument("--nj", type=positive_int, default=1, help="parallel jobs (one shard each)")
    s.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)

    s = add_command(sub, "train-vocab", cmd_train_vocab, "SentencePiece CTC vocabulary + CTC fit report (stage 3)")
    s.add_argument("data_dir", help="training data dir (text, utt2dur)")
    s.add_argument("--out", required=True, help="output directory (sp.model, ctc_fit.json)")
    s.add_argument("--vocab-size", type=int, default=256, help="SentencePiece vocabulary size")
    s.add_argument(
        "--model-type", default="unigram", choices=["unigram", "bpe", "word", "char"], help="SentencePiece model type"
    )
    s.add_argument("--token-rate", type=float, default=12.5, help="token rate (Hz) the CTC fit is checked at")
    s.add_argument("--ctc-upsample", type=int, default=1, help="CTC frames per token (the fit is checked at rate x N)")
    s.add_argument("--nj", type=int, default=1, help="parallel jobs")

    s = add_command(sub, "combine-data-dirs", cmd_combine, "union of data dirs")
    s.add_argument("out", help="output data dir")
    s.add_argument("inputs", nargs="+", help="data dirs to combine")

    s = add_command(sub, "validate-data-dir", cmd_validate, "Kaldi-style consistency checks")
    s.add_argument("data_dir", help="Kaldi-style data dir (wav.scp, text, utt2spk, ...)")
    s.add_argument("--need", nargs="*", default=["utt2dur"], help="tables every utterance must have")
    s.add_argument("--check-files", action="store_true", help="also check that every audio file can be read")
