"""The ``sitok`` console script. Recipe stages call these subcommands; users can too.

    sitok synth-mini       build the embedded synthetic corpus (egs/mini stage 0)
    sitok prep             corpus on disk -> Kaldi-style data dir + manifest (stage 1)
    sitok make-trials      speaker-verification trial list for a data dir
    sitok compute-feats    data dir -> log-mel ark/scp dump + CMVN stats (stage 2)
    sitok train-vocab      SentencePiece CTC vocabulary + CTC fit report (stage 3)
    sitok judge-lm         in-domain bigram LM for the offline ASR judge (stage 3)
    sitok judge-wer        offline ASR judge (pocketsphinx) WER on a data dir's audio
    sitok combine-data-dirs   union of data dirs
    sitok validate-data-dir   Kaldi-style consistency checks
    sitok count-params     parameters of a tokenizer config (meta device, no memory)
    sitok info             facts of a model directory (params, token rate, CN, CS, bit-rate)
    sitok encode           wav -> codes (.npy)
    sitok decode           codes (.npy) -> wav
    sitok resynth          wav -> codes -> wav
    sitok codes-stats      codebook usage and perplexity of a set's codes
    sitok export           model directory from a training run's latest checkpoint
    sitok dump-codes       codes of a whole feature dump dir (stage 5)
    sitok resynth-set      decode a set's codes / vocode its ground truth to wavs (stage 5)
    sitok eval-refine      mel distance / WER / RTF of models x steps x CFG scales x temperatures on a set
    sitok best-decoding    the (steps, temperature) with the lowest mel L1 of an eval-refine run
    sitok compare-refine   paired per-utterance comparison of eval-refine settings (bootstrap CI)
    sitok evaluate         reconstruction of a split scored by every judge
    sitok report           the paper's tables and figures from evaluated experiments
    sitok probe-summary    probe results + CTC ASR (greedy, beam) -> <exp>/probes/summary.json (stage 13)

Run ``sitok COMMAND -h`` for a command's arguments and their defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

logger = logging.getLogger("sitok")

# exit status of every command (documented in the top-level help and README.md)
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EPILOG = """exit status:
  0    success
  1    error: bad input, data, model directory or output path; one line on stderr names the file
       and the reason (--log-level DEBUG adds the traceback)
  2    usage error: unknown command or option, bad option value (argparse)
  130  interrupted (Ctrl-C)
"""
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
    )


# ---------------------------------------------------------------------------------------
VOCODERS = ("auto", "vocos", "griffin_lim")
VOCODER_HELP = "auto: the model directory's trained vocoder when it has one, else Griffin-Lim"
TEMPERATURE_HELP = "start-noise scale tau (1: sample; 0: deterministic decode from the noise mode)"


def cmd_synth_mini(a) -> int:
    from sitok.data import synth

    items = synth.plan_corpus(
        seed=a.seed,
        train_minutes=a.train_minutes,
        dev_minutes=a.dev_minutes,
        test_minutes=a.test_minutes,
        unseen_minutes=a.unseen_minutes,
        ks_per_class=tuple(a.ks_per_class),
    )
    logger.info("synthesising %d utterances into %s with %d jobs (seed %d)", len(items), a.out, a.nj, a.seed)
    seconds = synth.synthesize_corpus(a.out, items, nj=a.nj, progress=not a.no_progress)
    logger.info("corpus %s: %s", a.out, synth.total_hours(seconds))
    return 0


def cmd_prep(a) -> int:
    from sitok.data.prep import get_reader, make_data_dir

    opts = {
        "iemocap": {"test_session": a.test_session, "valid_session": a.valid_session},
        "voxceleb1": {"dev_per_speaker": a.dev_per_speaker},
        "speech_commands": {"out_dir": a.out, "silence_per_split": a.silence_per_split},
    }.get(a.corpus, {})
    entries = get_reader(a.corpus)(a.root, a.split, **opts)
    make_data_dir(entries, a.out, min_duration=a.min_duration, max_duration=a.max_duration)
    if a.corpus == "voxceleb1" and a.split == "test":  # the official trial list, as utterance ids
        from sitok.data.dasb_prep import voxceleb_trials

        voxceleb_trials(a.root, a.out)
    return 0


def cmd_make_trials(a) -> int:
    """Balanced speaker-verification trials over a data dir's speakers -> DATA_DIR/trials."""
    from sitok.data.kaldi import read_table
    from sitok.probes.data import make_trials, write_trials

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


def cmd_train_vocab(a) -> int:
    from sitok.data.kaldi import read_table
    from sitok.data.vocab import ctc_fit_report, train_sentencepiece, write_report

    data_dir = a.data_dir
    texts = [t for t in read_table(os.path.join(data_dir, "text")).values() if not t.startswith("<")]
    model = train_sentencepiece(texts, a.out, vocab_size=a.vocab_size, model_type=a.model_type, num_threads=a.nj)
    rate = a.token_rate * a.ctc_upsample
    report = ctc_fit_report(model, data_dir, token_rate=rate)
    report["ctc_upsample"] = a.ctc_upsample
    write_report(report, os.path.join(a.out, "ctc_fit.json"))
    logger.info(
        "%s: %d pieces (%s) from %d transcripts; %.2f units/s; CTC fit at %.2f Hz (%g Hz tokens x %d): worst "
        "%.3f, p99 %.3f, mean %.3f, %d utterances do not fit",
        model,
        report["vocab_size"],
        a.model_type,
        len(texts),
        report["units_per_second"],
        rate,
        a.token_rate,
        a.ctc_upsample,
        report["ratio_max"],
        report["ratio_p99"],
        report["ratio_mean"],
        report["not_fitting"],
    )
    if report["not_fitting"]:
        logger.warning(
            "%d training targets are longer than their token sequence (worst: %s); use a coarser "
            "vocabulary (larger --vocab_size) or a larger --ctc-upsample; see %s/ctc_fit.json",
            report["not_fitting"],
            report["worst"][0],
            a.out,
        )
    return 0


def cmd_judge_lm(a) -> int:
    from sitok.data.kaldi import read_table
    from sitok.eval.ngram import write_bigram_arpa

    texts = [t for t in read_table(a.text).values() if not t.startswith("<")]
    counts = write_bigram_arpa(texts, a.out)
    logger.info("%s: bigram LM from %d sentences: %s", a.out, len(texts), json.dumps(counts))
    return 0


def cmd_judge_wer(a) -> int:
    """Word error rate of the offline ASR judge on a data dir's audio (ground truth)."""
    from tqdm import tqdm

    from sitok.data.audio import AudioError, load_audio
    from sitok.data.kaldi import DataDir
    from sitok.eval.asr import PocketSphinxASR, word_error_rate
    from sitok.fileio import atomic_open

    dd = DataDir.load(a.data_dir)
    utts = [u for u in dd.utts if not dd.tables["text"][u].startswith("<")][: a.max_utts or None]
    asr = PocketSphinxASR(lm=a.lm)
    refs, hyps, rows, skipped = [], [], [], 0
    for u in tqdm(utts, desc="asr judge", unit="utt", disable=a.no_progress, mininterval=2):
        try:
            wav = load_audio(dd.tables["wav.scp"][u], 16000)
        except AudioError as exc:
            logger.warning("skipped %s: %s", u, exc)
            skipped += 1
            continue
        hyp = asr.transcribe(wav.numpy(), 16000)
        refs.append(dd.tables["text"][u])
        hyps.append(hyp)
        rows.append(f"{u}\t{refs[-1]}\t{hyp}\n")
    wer = word_error_rate(refs, hyps)
    if a.out:
        with atomic_open(a.out) as fh:
            fh.write(f"# {asr.name} {asr.version} lm={a.lm or 'generic'} WER {100 * wer:.2f} %\nutt\tref\thyp\n")
            fh.writelines(rows)
    logger.info(
        "%s: %s (lm: %s) WER %.2f %% on %d utterances (%d skipped)",
        a.data_dir,
        asr.name,
        a.lm or "generic en-US",
        100 * wer,
        len(refs),
        skipped,
    )
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


def load_model_config(path: str) -> dict:
    """The ``model_config`` mapping of an hparams YAML (or a model directory's config.json)."""
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)["model"]
    import yaml

    with open(path, encoding="utf-8") as fh:
        doc = yaml.load(fh, Loader=_ref_loader())
    if "model_config" not in doc:
        raise ValueError(f"{path}: no model_config mapping")
    return _resolve_refs(doc["model_config"], doc)


def _ref_loader():
    """A safe YAML loader that keeps hyperpyyaml's ``!ref <key>`` as markers and ignores other
    tags (no code is run: count-params only needs the plain model_config)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def ref(loader, node):
        return ("!ref", loader.construct_scalar(node))

    def other(loader, suffix, node):
        return None

    Loader.add_constructor("!ref", ref)
    Loader.add_multi_constructor("!", other)
    return Loader


def _resolve_refs(value, doc):
    if isinstance(value, tuple) and value and value[0] == "!ref":
        key = value[1].strip()
        if not (key.startswith("<") and key.endswith(">")):
            raise ValueError(f"count-params: only plain !ref <key> is supported, got {value[1]!r}")
        return _resolve_refs(doc[key[1:-1]], doc)
    if isinstance(value, dict):
        return {k: _resolve_refs(v, doc) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_refs(v, doc) for v in value]
    return value


def cmd_count_params(a) -> int:
    from sitok.models import SiTokConfig, count_parameters

    for path in a.configs:
        cfg = SiTokConfig.from_dict(load_model_config(path))
        counts = count_parameters(cfg)
        parts = ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in counts.items() if k != "total")
        print(
            f"{path}: {counts['total']:,} parameters ({counts['total'] / 1e9:.3f} B; {parts}); "
            f"{cfg.token_rate:g} tokens/s x {cfg.num_codebooks} x {cfg.codebook_size} codes = "
            f"{cfg.bits_per_second:g} bit/s"
        )
    return 0


def _tokenizer(a):
    from sitok.infer import Tokenizer

    try:
        return Tokenizer.from_pretrained(a.model_dir, device=a.device, vocoder=getattr(a, "vocoder", "auto"))
    except Exception as exc:  # name the file of the model directory that failed, and why
        msg = _one_line(exc)
        if msg.startswith((os.path.join(a.model_dir, ""), f"{a.model_dir}:")):  # the loader named it already
            raise ValueError(msg) from exc
        raise ValueError(_model_dir_failure(a.model_dir, exc)) from exc


def _one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception as one short line: an OSError as 'FILE: reason', others as their message
    (prefixed by the type when that says more than the message alone)."""
    if isinstance(exc, OSError) and exc.filename is not None:
        msg = f"{exc.filename}: {exc.strerror or exc}"
    elif isinstance(exc, (ValueError, RuntimeError)) and str(exc):
        msg = str(exc)
    else:
        msg = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    msg = " ".join(msg.split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _model_dir_failure(model_dir: str, exc: Exception) -> str:
    """Why ``model_dir`` failed to load, as '<dir>/<file>: <reason> (<detail>)'.

    Runs only after a failure: it checks the directory's files in order (config.json, cmvn.json,
    the vocoder's files, model.pt) and names the first bad one; ``exc`` is reported when all look
    sound (e.g. a state dict that does not fit the config, or an unusable device)."""
    import torch

    from sitok.models import SiTokConfig

    def read_json(path: str, keys: tuple) -> str | None:
        try:
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except OSError as e:
            return f"{path}: cannot read ({e.strerror or e})"
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            return f"{path}: malformed JSON ({_one_line(e, 200)})"
        missing = [k for k in keys if not isinstance(doc, dict) or k not in doc]
        return f"{path}: no {', '.join(missing)} entry (not a SiTok model file)" if missing else None

    def read_state(path: str) -> str | None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except OSError as e:
            return f"{path}: cannot read ({e.strerror or e})"
        except Exception as e:  # noqa: BLE001 - EOFError, UnpicklingError, RuntimeError (zip), ...
            return f"{path}: truncated or not a state dict ({_one_line(e, 200)})"
        return None if isinstance(state, dict) else f"{path}: not a state dict (holds a {type(state).__name__})"

    if not os.path.isdir(model_dir):
        return f"{model_dir}: {'not a directory' if os.path.exists(model_dir) else 'no such directory'} (a model dir)"
    cfg_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(cfg_path):
        return f"{cfg_path}: missing (not a SiTok model directory)"
    problem = read_json(cfg_path, ("model",))
    if problem is None:
        with open(cfg_path, encoding="utf-8") as fh:
            try:
                SiTokConfig.from_dict(json.load(fh)["model"])
            except (TypeError, ValueError, AttributeError) as e:
                problem = f"{cfg_path}: bad model config ({_one_line(e, 200)})"
    problem = problem or read_json(os.path.join(model_dir, "cmvn.json"), ("mean", "var"))
    voc_dir = os.path.join(model_dir, "vocoder")
    if not problem and os.path.isdir(voc_dir):
        problem = read_json(os.path.join(voc_dir, "config.json"), ("model",))
        problem = problem or read_state(os.path.join(voc_dir, "model.pt"))
    problem = problem or read_state(os.path.join(model_dir, "model.pt"))
    if problem:
        return problem
    if "state_dict" in str(exc):
        return f"{os.path.join(model_dir, 'model.pt')}: does not fit config.json ({_one_line(exc, 200)})"
    return f"{model_dir}: cannot load the model ({_one_line(exc, 300)})"


def _check_output(path: str) -> str:
    """An output file name must not be an existing directory (-o keeps the name given)."""
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory; -o takes a file name")
    return path


def _load_codes(path: str):
    """Codes from a .npy file (no pickles), with the file named in every error."""
    import numpy as np

    with open(path, "rb") as fh:  # OSError names the file
        try:
            return np.lib.format.read_array(fh, allow_pickle=False)
        except (ValueError, EOFError, OSError) as exc:
            raise ValueError(f"{path}: not a .npy codes file ({_one_line(exc, 200)})") from None


def batch_output_paths(output: str, n: int) -> list[str]:
    """One output per batch item: out.wav -> out_0.wav, out_1.wav, ..."""
    root, ext = os.path.splitext(output)
    return [f"{root}_{i}{ext}" for i in range(n)]


def cmd_info(a) -> int:
    print(json.dumps(_tokenizer(a).info(), indent=1))
    return 0


def cmd_encode(a) -> int:
    import numpy as np

    from sitok.data.audio import probe_audio
    from sitok.fileio import atomic_open

    _check_output(a.output)
    probe_audio(a.input)  # a bad input fails before the model loads
    tok = _tokenizer(a)
    codes = tok.encode(a.input)
    with atomic_open(a.output, "wb") as fh:  # through a handle: np.save appends no ".npy"
        np.save(fh, codes.numpy())
    logger.info("%s -> %s: codes %s", a.input, a.output, tuple(codes.shape))
    return 0


def cmd_decode(a) -> int:
    from sitok.data.audio import write_wav_atomic

    _check_output(a.output)
    codes = _load_codes(a.input)
    tok = _tokenizer(a)
    try:
        tok.check_codes(codes)
    except ValueError as exc:
        raise ValueError(f"{a.input}: {str(exc).removeprefix('decode: ')}") from None
    wav, sr = tok.decode(codes, steps=a.steps, seed=a.seed, cfg_scale=a.cfg_scale, temperature=a.temperature)
    outputs = batch_output_paths(a.output, len(wav)) if codes.ndim == 3 else [a.output]
    for path in outputs:
        _check_output(path)
    for path, w in zip(outputs, wav if codes.ndim == 3 else [wav]):
        write_wav_atomic(path, w, sr)
    logger.info(
        "%s -> %s: %d x %.2f s at %d Hz (%d steps)",
        a.input,
        ", ".join(outputs),
        len(outputs),
        wav.shape[-1] / sr,
        sr,
        a.steps,
    )
    return 0


def cmd_resynth(a) -> int:
    from sitok.data.audio import probe_audio, write_wav_atomic

    _check_output(a.output)
    probe_audio(a.input)
    tok = _tokenizer(a)
    wav, sr = tok.resynth(a.input, steps=a.steps, seed=a.seed, cfg_scale=a.cfg_scale, temperature=a.temperature)
    write_wav_atomic(a.output, wav, sr)
    logger.info("%s -> %s (%d steps)", a.input, a.output, a.steps)
    return 0


def cmd_probe_summary(a) -> int:
    from sitok.probes.summary import collect

    collect(
        a.exp_dir,
        a.name or os.path.basename(os.path.normpath(a.exp_dir)),
        a.features,
        a.model_dir,
        a.codes_dir,
        a.dump_dir,
        a.beam_size,
    )
    return 0


def cmd_codes_stats(a) -> int:
    """Codebook usage and perplexity of a set's codes (codes.scp of stage 5)."""
    import torch

    from sitok.data.kaldi import read_mat, read_scp
    from sitok.eval.evaluate import code_statistics

    codes = {
        u: torch.from_numpy(read_mat(p).astype("int64"))
        for u, p in read_scp(os.path.join(a.codes_dir, "codes.scp")).items()
    }
    cn = next(iter(codes.values())).shape[0]
    s = code_statistics(codes, cn, a.codebook_size)
    tokens = sum(c.shape[1] for c in codes.values())
    print(
        json.dumps(
            {
                "codes_dir": a.codes_dir,
                "utterances": len(codes),
                "frames": tokens,
                "num_codebooks": cn,
                "codebook_size": a.codebook_size,
                "usage": s["codebook_usage"],
                "perplexity": s["code_perplexity"],
            }
        )
    )
    return 0


def cmd_export(a) -> int:
    from sitok.train.tokenizer import export_checkpoint

    export_checkpoint(a.exp_dir, a.output)
    return 0


def cmd_dump_codes(a) -> int:
    from sitok.infer.sets import dump_codes

    n = dump_codes(_tokenizer(a), a.dump_dir, a.out_dir, progress=not a.no_progress)
    logger.info("%s/codes.scp: %d utterances", a.out_dir, n)
    return 0


def cmd_resynth_set(a) -> int:
    from sitok.infer.sets import resynth_set, vocode_set

    tok = _tokenizer(a)
    if a.codes_dir:
        resynth_set(
            tok,
            a.dump_dir,
            a.codes_dir,
            a.out_dir,
            steps=a.steps,
            seed=a.seed,
            progress=not a.no_progress,
            cfg_scale=a.cfg_scale,
            temperature=a.temperature,
        )
    else:
        vocode_set(tok, a.dump_dir, a.out_dir, progress=not a.no_progress)
    return 0


def cmd_eval_refine(a) -> int:
    from sitok.eval.refine import evaluate_refinement

    models = {}
    for item in a.models:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--models: expected NAME=MODEL_DIR, got {item!r}")
        models[name] = path
    evaluate_refinement(
        a.dump_dir,
        a.codes_dir,
        a.out_dir,
        models,
        a.steps,
        a.cfg_scales,
        a.wer_steps,
        a.lm,
        max_utts=a.max_utts,
        progress=not a.no_progress,
        vocoder=a.vocoder,
        temperatures=a.temperatures,
        select_from=a.select_from,
    )
    return 0


def cmd_best_decoding(a) -> int:
    from sitok.eval.refine import best_decoding

    steps, temperature = best_decoding(os.path.join(a.eval_dir, "results.csv"), a.model)
    print(f"{steps} {temperature:g}")
    return 0


def cmd_compare_refine(a) -> int:
    from sitok.eval.refine import paired_comparison

    unit = " (%)" if a.metric == "wer" else ""
    print(f"| A | B | steps | utts | {a.metric}{unit} A | {a.metric}{unit} B | A - B | 95 % CI | A better / worse on |")
    print("|---|---|---|---|---|---|---|---|---|")
    fmt = ".2f" if a.metric == "wer" else ".4f"
    for b in a.b:
        for r in paired_comparison(a.eval_dir, a.a, b, a.steps, a.metric, seed=a.seed):
            lo, hi = r["ci95"]
            print(
                f"| {r['a']} | {r['b']} | {r['steps']} | {r['utterances']} | {r['a_value']:{fmt}} | "
                f"{r['b_value']:{fmt}} | {r['diff']:+{fmt}} | [{lo:+{fmt}}, {hi:+{fmt}}] | "
                f"{100 * r['a_better_share']:.0f} / {100 * r['a_worse_share']:.0f} % |"
            )
    return 0


# ---------------------------------------------------------------------------------------
def _judge_opts(items) -> dict:
    """``["asr.model=/models/whisper", "asr.language=en"]`` -> {"asr": {"model": ..., "language": ...}}."""
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        kind, dot, opt = key.partition(".")
        if not sep or not dot or not opt:
            raise SystemExit(f"--judge-opt: expected KIND.OPTION=VALUE (e.g. asr.model=/models/whisper), got {item!r}")
        out.setdefault(kind, {})[opt] = value
    return out


def cmd_evaluate(a) -> int:
    from sitok.eval.evaluate import evaluate
    from sitok.eval.judges import parse_judges

    torch_threads(a.threads)
    evaluate(
        a.model_dir,
        a.dump_dir,
        a.out_dir,
        steps=a.steps,
        cfg_scales=a.cfg_scales,
        vocoders=a.vocoders,
        judges=parse_judges(a.judges),
        judge_opts=_judge_opts(a.judge_opt),
        lm=a.lm,
        groundtruth=not a.no_groundtruth,
        max_utts=a.max_utts,
        progress=not a.no_progress,
        name=a.name,
        temperature=a.temperature,
    )
    return 0


def cmd_report(a) -> int:
    from sitok.report.build import write_report

    write_report(
        a.exp_dirs, a.out, set_name=a.set, dump_dir=a.dump_dir, steps=a.steps, cfg_scale=a.cfg_scale, vocoder=a.vocoder
    )
    print(open(os.path.join(a.out, "report.md"), encoding="utf-8").read())
    return 0


def torch_threads(n: int) -> None:
    if n > 0:
        import torch

        torch.set_num_threads(n)


def build_parser() -> argparse.ArgumentParser:
    from sitok import __version__

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
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth-mini", help="synthesise the embedded corpus")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=1234)
    s.add_argument("--nj", type=int, default=2)
    s.add_argument("--train-minutes", type=float, default=90.0)
    s.add_argument("--dev-minutes", type=float, default=10.0)
    s.add_argument("--test-minutes", type=float, default=10.0)
    s.add_argument("--unseen-minutes", type=float, default=6.0)
    s.add_argument("--ks-per-class", type=int, nargs=3, default=[60, 10, 15], metavar=("TRAIN", "DEV", "TEST"))
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_synth_mini)

    s = sub.add_parser("prep", help="corpus -> Kaldi-style data dir")
    s.add_argument(
        "--corpus",
        required=True,
        help="mini, librispeech, libritts, iemocap, voxceleb1, speech_commands "
        "(or any reader added to sitok.data.prep.READERS)",
    )
    s.add_argument("--root", required=True, help="corpus root (mini: the synthesised corpus dir)")
    s.add_argument("--split", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--min-duration", type=float, default=0.1)
    s.add_argument("--max-duration", type=float, default=60.0)
    s.add_argument("--test-session", type=int, default=5, help="iemocap: the test session")
    s.add_argument("--valid-session", type=int, default=4, help="iemocap: the validation session")
    s.add_argument("--dev-per-speaker", type=int, default=2, help="voxceleb1: dev utterances per training speaker")
    s.add_argument(
        "--silence-per-split",
        type=int,
        default=None,
        help="speech_commands: _silence_ clips per split (default: as many as the mean keyword class)",
    )
    s.set_defaults(func=cmd_prep)

    s = sub.add_parser("make-trials", help="speaker-verification trials for a data dir")
    s.add_argument("data_dir")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--n-trials", type=int, default=2000, help="half same-speaker, half different")
    s.add_argument("--train-dir", default=None, help="the probe's training data dir: its speakers must not appear")
    s.set_defaults(func=cmd_make_trials)

    s = sub.add_parser("compute-feats", help="log-mel features + CMVN stats")
    s.add_argument("data_dir")
    s.add_argument("dump_dir")
    s.add_argument("--nj", type=int, default=1)
    s.add_argument("--min-duration", type=float, default=0.1)
    s.add_argument("--max-duration", type=float, default=60.0)
    s.add_argument("--cmvn-mode", default="global", choices=["global", "per_bin"])
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_compute_feats)

    s = sub.add_parser("train-vocab", help="SentencePiece CTC vocabulary")
    s.add_argument("data_dir", help="training data dir (text, utt2dur)")
    s.add_argument("--out", required=True)
    s.add_argument("--vocab-size", type=int, default=256)
    s.add_argument("--model-type", default="unigram", choices=["unigram", "bpe", "word", "char"])
    s.add_argument("--token-rate", type=float, default=12.5)
    s.add_argument("--ctc-upsample", type=int, default=1, help="CTC frames per token (the fit is checked at rate x N)")
    s.add_argument("--nj", type=int, default=1)
    s.set_defaults(func=cmd_train_vocab)

    s = sub.add_parser("judge-lm", help="in-domain bigram LM for pocketsphinx")
    s.add_argument("--text", required=True, help="Kaldi text file of training transcripts")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_judge_lm)

    s = sub.add_parser("judge-wer", help="offline ASR judge (pocketsphinx) WER on a data dir")
    s.add_argument("data_dir")
    s.add_argument("--lm", default=None, help="ARPA LM (default: pocketsphinx's generic en-US LM)")
    s.add_argument("--max-utts", type=int, default=0, help="first N utterances only (0 = all)")
    s.add_argument("--out", default=None, help="per-utterance ref/hyp TSV")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_judge_wer)

    s = sub.add_parser("combine-data-dirs", help="union of data dirs")
    s.add_argument("out")
    s.add_argument("inputs", nargs="+")
    s.set_defaults(func=cmd_combine)

    s = sub.add_parser("validate-data-dir", help="Kaldi-style consistency checks")
    s.add_argument("data_dir")
    s.add_argument("--need", nargs="*", default=["utt2dur"], help="tables every utterance must have")
    s.add_argument("--check-files", action="store_true")
    s.set_defaults(func=cmd_validate)
    s = sub.add_parser("count-params", help="parameters of tokenizer configs (meta device)")
    s.add_argument("configs", nargs="+", help="hparams YAML(s) with a model_config mapping, or model dirs")
    s.set_defaults(func=cmd_count_params)

    for name, fn, helptext in [
        ("info", cmd_info, "facts of a model directory"),
        ("encode", cmd_encode, "wav -> codes .npy [CN, T]"),
        ("decode", cmd_decode, "codes .npy -> 24 kHz wav"),
        ("resynth", cmd_resynth, "wav -> codes -> wav"),
    ]:
        s = sub.add_parser(name, help=helptext)
        if name != "info":
            s.add_argument("input")
        s.add_argument("-m", "--model-dir", required=True)
        if name != "info":
            s.add_argument("-o", "--output", required=True)
        if name in ("decode", "resynth"):
            s.add_argument("--steps", type=int, default=16)
            s.add_argument("--seed", type=int, default=0)
            s.add_argument("--cfg-scale", type=float, default=1.0, help="token CFG scale w (1: plain conditional)")
            s.add_argument("--temperature", type=float, default=1.0, help=TEMPERATURE_HELP)
        s.add_argument("--vocoder", default="auto", choices=VOCODERS, help=VOCODER_HELP)
        s.add_argument("--device", default="cpu")
        s.set_defaults(func=fn)

    s = sub.add_parser("probe-summary", help="probe results + CTC ASR -> <exp>/probes/summary.json")
    s.add_argument("exp_dir", help="the experiment whose probes/<task>/results.json are collected")
    s.add_argument("--name", default=None)
    s.add_argument("--features", default="tokens", choices=["tokens", "mel12.5", "mel50"])
    s.add_argument("--model-dir", default=None, help="tokens: the tokenizer model directory")
    s.add_argument("--codes-dir", default=None, help="tokens: codes of the CTC-ASR test split")
    s.add_argument("--dump-dir", default=None, help="the CTC-ASR test split's dump dir (transcripts)")
    s.add_argument("--beam-size", type=int, default=10)
    s.set_defaults(func=cmd_probe_summary)

    s = sub.add_parser("codes-stats", help="codebook usage / perplexity of a set's codes")
    s.add_argument("codes_dir")
    s.add_argument("--codebook-size", type=int, required=True)
    s.set_defaults(func=cmd_codes_stats)

    s = sub.add_parser("export", help="model directory from the latest checkpoint of a training run")
    s.add_argument("exp_dir")
    s.add_argument("-o", "--output", default=None, help="default: EXP_DIR/model")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("dump-codes", help="codes of every utterance of a feature dump dir")
    s.add_argument("dump_dir")
    s.add_argument("out_dir")
    s.add_argument("-m", "--model-dir", required=True)
    s.add_argument("--device", default="cpu")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_dump_codes)

    s = sub.add_parser("resynth-set", help="decode a set's codes (or vocode its ground-truth mel) to wavs")
    s.add_argument("dump_dir")
    s.add_argument("out_dir")
    s.add_argument("-m", "--model-dir", required=True)
    s.add_argument("--codes-dir", default=None, help="codes.scp to decode; without it: ground truth -> vocoder")
    s.add_argument("--steps", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--cfg-scale", type=float, default=1.0, help="token CFG scale w (1: plain conditional)")
    s.add_argument("--temperature", type=float, default=1.0, help=TEMPERATURE_HELP)
    s.add_argument("--vocoder", default="auto", choices=VOCODERS, help=VOCODER_HELP)
    s.add_argument("--device", default="cpu")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_resynth_set)

    s = sub.add_parser(
        "eval-refine", help="mel distance / WER / RTF of models x steps x CFG scales x temperatures on a set"
    )
    s.add_argument("dump_dir")
    s.add_argument("codes_dir", help="the set's codes (refined models share the base model's encoder and VQ)")
    s.add_argument("out_dir")
    s.add_argument("--models", nargs="+", required=True, help="NAME=MODEL_DIR ...")
    s.add_argument("--steps", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    s.add_argument("--cfg-scales", nargs="+", type=float, default=[1.0])
    s.add_argument("--temperatures", nargs="+", type=float, default=[1.0], help="start-noise scales tau to score")
    s.add_argument("--wer-steps", nargs="*", type=int, default=[], help="steps that also get the ASR judge")
    s.add_argument(
        "--select-from",
        default=None,
        help="an earlier eval-refine output dir (e.g. on dev) whose mel L1 selects the judged setting",
    )
    s.add_argument("--lm", default=None, help="judge LM (ARPA); default: pocketsphinx's generic LM")
    s.add_argument("--max-utts", type=int, default=0)
    s.add_argument("--vocoder", default="auto", choices=VOCODERS, help=VOCODER_HELP)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_eval_refine)

    s = sub.add_parser("best-decoding", help="print 'STEPS TEMPERATURE' with the lowest mel L1 in an eval-refine dir")
    s.add_argument("eval_dir", help="an eval-refine output directory (its results.csv)")
    s.add_argument("--model", default="base", help="the model's NAME in that evaluation")
    s.set_defaults(func=cmd_best_decoding)

    s = sub.add_parser(
        "compare-refine", help="paired per-utterance mel L1 or WER of eval-refine settings, bootstrap CI"
    )
    s.add_argument("eval_dir", help="an eval-refine output directory (its per_utt.csv)")
    s.add_argument("a", help="NAME[@TEMPERATURE[@CFG_SCALE]], e.g. shortcut@0")
    s.add_argument("b", nargs="+", help="one or more settings to compare A with, e.g. base@0 base@1")
    s.add_argument("--steps", nargs="+", type=int, default=[1, 2, 4])
    s.add_argument(
        "--metric",
        default="mel_l1",
        choices=["mel_l1", "wer"],
        help="mel_l1 (per_utt.csv) or wer (the judge's hyps/*.tsv: scored settings at --wer-steps)",
    )
    s.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    s.set_defaults(func=cmd_compare_refine)
    _add_evaluate(sub)
    return _finish_parser(p)


def _add_evaluate(sub) -> None:
    s = sub.add_parser("evaluate", help="reconstruction of a split by one model, scored by every judge")
    s.add_argument("dump_dir", help="feature dump dir of the split (feats.scp, wav.scp, text)")
    s.add_argument("out_dir")
    s.add_argument("-m", "--model-dir", required=True)
    s.add_argument("--steps", type=int, nargs="+", default=[1], help="Euler steps to score")
    s.add_argument("--cfg-scales", type=float, nargs="+", default=[1.0], help="token-CFG scales (CFG models)")
    s.add_argument("--temperature", type=float, default=1.0, help=TEMPERATURE_HELP)
    s.add_argument("--vocoders", nargs="+", default=["auto"], help="auto | vocos | griffin_lim (each is scored)")
    s.add_argument(
        "--judges",
        nargs="*",
        default=None,
        metavar="KIND=BACKEND",
        help="e.g. asr=whisper sim=wavlm mos=utmos; KIND=none leaves one out (default: the offline ones)",
    )
    s.add_argument(
        "--judge-opt",
        nargs="*",
        default=None,
        metavar="KIND.OPTION=VALUE",
        help="backend options, e.g. asr.model=/models/whisper-large-v3 sim.model=/models/wavlm-sv",
    )
    s.add_argument("--lm", default=None, help="ARPA LM for the pocketsphinx judge (the recipe's judge LM)")
    s.add_argument("--no-groundtruth", action="store_true", help="skip the ground-truth-through-vocoder rows")
    s.add_argument("--max-utts", type=int, default=0, help="score this many evenly spaced utterances (0: all)")
    s.add_argument("--name", default=None, help="row label (default: the experiment dir of the model)")
    s.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("report", help="the paper's tables (markdown + CSV) and figures from evaluated experiments")
    s.add_argument("exp_dirs", nargs="+", help="experiment dirs (with eval/<set>/summary.json) or summary files")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--set", default=None, help="evaluated set to report (default: every one found)")
    s.add_argument("--dump-dir", default=None, help="the set's dump dir, for the mel-spectrogram figures")
    s.add_argument("--steps", type=int, default=None, help="reported Euler steps (default: the fewest scored)")
    s.add_argument("--cfg-scale", type=float, default=None, help="reported token-CFG scale of CFG models")
    s.add_argument("--vocoder", default=None, help="reported vocoder (default: the first scored)")
    s.set_defaults(func=cmd_report)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions and epilogs as written; every optional argument's default shown after its help."""

    def _get_help_string(self, action):
        return action.help if action.required else super()._get_help_string(action)


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


# Option values checked by argparse in every command that has them (a bad one is a usage error).
ARG_TYPES = {
    "steps": _positive_int,
    "temperature": _nonneg_float,
    "temperatures": _nonneg_float,
    "cfg_scale": _nonneg_float,
    "cfg_scales": _nonneg_float,
}
# Help of the arguments defined without one: "command:dest" first, then "dest".
ARG_HELP = {
    "nj": "parallel jobs",
    "no_progress": "no progress bars",
    "device": "torch device (cpu, cuda, cuda:1, ...)",
    "model_dir": "model directory (config.json, model.pt, cmvn.json; optional vocoder/)",
    "data_dir": "Kaldi-style data dir (wav.scp, text, utt2spk, ...)",
    "min_duration": "drop utterances shorter than this (seconds)",
    "max_duration": "drop utterances longer than this (seconds)",
    "seed": "random seed",
    "steps": "Euler steps of the decoder ODE",
    "synth-mini:out": "output corpus directory",
    "synth-mini:seed": "corpus seed (the same seed gives a byte-identical corpus)",
    "synth-mini:train_minutes": "minutes of speech in the train split",
    "synth-mini:dev_minutes": "minutes of speech in the dev split",
    "synth-mini:test_minutes": "minutes of speech in the test split",
    "synth-mini:unseen_minutes": "minutes of speech by unseen speakers (test_unseen)",
    "synth-mini:ks_per_class": "keyword-spotting clips per class in train, dev and test",
    "prep:split": "corpus split, e.g. train-clean-100, test-clean, train, test",
    "prep:out": "output data dir",
    "make-trials:seed": "trial sampling seed",
    "compute-feats:dump_dir": "output feature dump dir (feats.scp, cmvn.json, ...)",
    "compute-feats:cmvn_mode": "global: one mean and variance (the paper's); per_bin: one per mel bin",
    "train-vocab:out": "output directory (sp.model, ctc_fit.json)",
    "train-vocab:vocab_size": "SentencePiece vocabulary size",
    "train-vocab:model_type": "SentencePiece model type",
    "train-vocab:token_rate": "token rate (Hz) the CTC fit is checked at",
    "judge-lm:out": "output ARPA file",
    "combine-data-dirs:out": "output data dir",
    "combine-data-dirs:inputs": "data dirs to combine",
    "validate-data-dir:check_files": "also check that every audio file can be read",
    "encode:input": "audio file (any format libsndfile reads, any rate and channel count)",
    "encode:output": "codes file, int64 .npy [CN, T] (written under exactly this name)",
    "decode:input": ".npy codes [CN, T], or [B, CN, T] for B files",
    "decode:output": "output wav; codes [B, CN, T] give one wav per item, OUTPUT with _0, _1, ... before the "
    "extension (out.wav -> out_0.wav, out_1.wav)",
    "decode:seed": "start-noise seed (an utterance's noise depends only on it and the utterance's length)",
    "resynth:input": "audio file (any format libsndfile reads, any rate and channel count)",
    "resynth:output": "output wav (24 kHz, cut to the input's duration)",
    "resynth:seed": "start-noise seed",
    "resynth-set:seed": "start-noise seed",
    "probe-summary:name": "row label (default: the experiment dir's name)",
    "probe-summary:features": "what the probes saw: tokens, or log-mel at 12.5 / 50 Hz",
    "probe-summary:beam_size": "CTC beam width",
    "codes-stats:codes_dir": "a set's codes dir (codes.scp)",
    "codes-stats:codebook_size": "codebook size of the model that made the codes",
    "export:exp_dir": "training experiment dir (hyperparams.yaml, save/)",
    "dump-codes:dump_dir": "feature dump dir (feats.scp)",
    "dump-codes:out_dir": "output dir (codes.scp + ark)",
    "resynth-set:dump_dir": "the set's feature dump dir (feats.scp, utt2num_frames)",
    "resynth-set:out_dir": "output dir of wavs (wav.scp)",
    "eval-refine:dump_dir": "the set's feature dump dir (feats.scp, text)",
    "evaluate:out_dir": "output dir (summary.json, results.md, per_utt.csv)",
    "eval-refine:out_dir": "output dir (results.csv, per_utt.csv)",
    "eval-refine:steps": "Euler steps to score",
    "eval-refine:cfg_scales": "token-CFG scales w to score (CFG models; others score w = 1)",
    "eval-refine:max_utts": "first N utterances only (0 = all)",
    "compare-refine:steps": "Euler steps to compare",
}


def _finish_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every subcommand: the shared formatter, its help as description, help for every argument
    (from ARG_HELP where the definition has none) and the checked option types of ARG_TYPES."""
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    for name, sp in sub.choices.items():
        sp.formatter_class = HelpFormatter
        sp.description = sp.description or helps.get(name)
        for action in sp._actions:
            if action.help is None:
                action.help = ARG_HELP.get(f"{name}:{action.dest}", ARG_HELP.get(action.dest))
            if action.dest in ARG_TYPES and action.option_strings:
                action.type = ARG_TYPES[action.dest]
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
        logger.error("%s: %s", args.command, _one_line(exc).removeprefix(f"{args.command}: "))
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
