"""Model commands: encode, decode and resynthesise audio, inspect and export model directories,
dump a set's codes (recipe stages 4-5).

Library modules are imported inside each command, so ``sitok --help`` starts without torch."""

from __future__ import annotations

import json
import logging
import os

from sitok.cli.common import (
    DEVICE_HELP,
    MODEL_DIR_HELP,
    NO_PROGRESS_HELP,
    VOCODER_HELP,
    VOCODERS,
    add_command,
    add_decoding,
    check_output,
    load_tokenizer,
    nonneg_float,
    one_line,
    positive_int,
)

logger = logging.getLogger("sitok")


def batch_output_paths(output: str, n: int) -> list[str]:
    """One output per batch item: out.wav -> out_0.wav, out_1.wav, ..."""
    root, ext = os.path.splitext(output)
    return [f"{root}_{i}{ext}" for i in range(n)]


def cmd_count_params(a) -> int:
    from sitok.models import SiTokConfig, count_parameters
    from sitok.models.loading import load_model_config

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


def cmd_info(a) -> int:
    print(json.dumps(load_tokenizer(a).info(), indent=1))
    return 0


def run_many(a, kind: str) -> int:
    """encode / decode / resynth of a directory or list file into the directory ``a.output``."""
    from sitok.infer.batch import collect_jobs, run_jobs

    if os.path.exists(a.output) and not os.path.isdir(a.output):
        raise ValueError(f"{a.output}: not a directory (many inputs write one output file each into it)")
    jobs = collect_jobs(a.input, a.output, kind)
    decoding = {}
    if kind != "encode":
        decoding = {"steps": a.steps, "seed": a.seed, "cfg_scale": a.cfg_scale, "temperature": a.temperature}
    counts = run_jobs(load_tokenizer(a), jobs, a.output, kind, a.batch_size, not a.no_progress, **decoding)
    logger.info("%s -> %s: %d written, %d already there, %d failed", a.input, a.output, *counts.values())
    if counts["failed"]:
        raise ValueError(f"{counts['failed']} of {len(jobs)} inputs failed: see {os.path.join(a.output, 'failed.tsv')}")
    return 0


def cmd_encode(a) -> int:
    import numpy as np

    from sitok.data.audio import probe_audio
    from sitok.fileio import atomic_open
    from sitok.infer.batch import is_many

    if is_many(a.input):
        return run_many(a, "encode")
    check_output(a.output)
    probe_audio(a.input)  # a bad input fails before the model loads
    codes = load_tokenizer(a).encode(a.input)
    with atomic_open(a.output, "wb") as fh:  # through a handle: np.save appends no ".npy"
        np.save(fh, codes.numpy())
    logger.info("%s -> %s: codes %s", a.input, a.output, tuple(codes.shape))
    return 0


def cmd_decode(a) -> int:
    from sitok.data.audio import write_wav_atomic
    from sitok.infer.batch import is_many, read_codes

    if is_many(a.input):
        return run_many(a, "decode")
    check_output(a.output)
    codes = read_codes(a.input)
    tok = load_tokenizer(a)
    try:
        tok.check_codes(codes)
    except ValueError as exc:
        raise ValueError(f"{a.input}: {str(exc).removeprefix('decode: ')}") from None
    wav, sr = tok.decode(codes, steps=a.steps, seed=a.seed, cfg_scale=a.cfg_scale, temperature=a.temperature)
    outputs = batch_output_paths(a.output, len(wav)) if codes.ndim == 3 else [a.output]
    for path in outputs:
        check_output(path)
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
    from sitok.infer.batch import is_many

    if is_many(a.input):
        return run_many(a, "resynth")
    check_output(a.output)
    probe_audio(a.input)
    tok = load_tokenizer(a)
    wav, sr = tok.resynth(a.input, steps=a.steps, seed=a.seed, cfg_scale=a.cfg_scale, temperature=a.temperature)
    write_wav_atomic(a.output, wav, sr)
    logger.info("%s -> %s (%d steps)", a.input, a.output, a.steps)
    return 0


def cmd_export(a) -> int:
    from sitok.train.tokenizer import export_checkpoint

    export_checkpoint(a.exp_dir, a.output)
    return 0


def cmd_export_onnx(a) -> int:
    from sitok.infer.onnx import export_onnx

    a.device = "cpu"
    facts = export_onnx(load_tokenizer(a), a.output)
    check = ", ".join(f"{k} {v:.2g}" for k, v in facts["check"].items())
    graphs = "encoder, condition, step" + (", vocoder" if facts["vocoder"] else "")
    print(f"{a.output}: {graphs}; largest |ONNX - PyTorch|: {check}")
    return 0


def cmd_dump_codes(a) -> int:
    from sitok.infer.sets import dump_codes

    if a.device == "cuda" and "LOCAL_RANK" in os.environ:  # under torchrun: one device per rank
        a.device = f"cuda:{os.environ['LOCAL_RANK']}"
    tok = load_tokenizer(a)
    n = dump_codes(tok, a.dump_dir, a.out_dir, a.batch_frames, not a.no_progress, a.part_utts)
    logger.info("%s/codes.scp: %d utterances", a.out_dir, n)
    return 0


def cmd_resynth_set(a) -> int:
    from sitok.infer.sets import resynth_set, vocode_set

    tok = load_tokenizer(a)
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


def cmd_transcribe(a) -> int:
    """Speech (wav) or codes (.npy) -> text through an LLM-ASR model of recipe stage 15."""
    import torch

    from sitok.infer.batch import read_codes
    from sitok.models.speech_lm import SpeechLM

    tok = load_tokenizer(a)
    try:
        asr = SpeechLM.load(a.asr).to(a.device)
    except Exception as exc:
        raise ValueError(f"{a.asr}: not a usable LLM-ASR model directory ({one_line(exc, 200)})") from exc
    for path in a.inputs:
        if path.endswith(".npy"):
            if asr.config.inputs != "tokens":
                raise ValueError(f"{path}: {a.asr} reads mel, not codes: give the audio file")
            codes = torch.as_tensor(read_codes(path)).long()
            try:
                tok.check_codes(codes)
            except ValueError as exc:
                raise ValueError(f"{path}: {str(exc).removeprefix('decode: ')}") from None
            speech = codes[-1] if codes.dim() == 3 else codes  # [CN, T]
            x = speech.T[None]
        elif asr.config.inputs == "tokens":
            x = tok.encode(path).T[None]
        else:
            x = tok.normalise(tok.mel(path))[None]
        text = asr.transcribe(x.to(a.device), torch.tensor([x.shape[1]], device=a.device), beam_size=a.beam_size)[0]
        print(f"{path}\t{text}")
    return 0


def cmd_tts(a) -> int:
    """Text (+ a prompt utterance and its transcript) -> speech tokens -> mel -> wav."""
    import time

    import torch

    from sitok.data.audio import probe_audio, write_wav_atomic
    from sitok.lm.tts import CTCScorer, generate_ranked
    from sitok.models.tts_lm import Sampling, SpeechTTS

    check_output(a.output)
    if a.prompt:
        probe_audio(a.prompt)
        if not a.prompt_text:
            raise ValueError(f"{a.prompt}: --prompt-text (its transcript) is needed with --prompt")
    tok = load_tokenizer(a)
    try:
        tts = SpeechTTS.load(a.tts).to(a.device)
    except Exception as exc:
        raise ValueError(f"{a.tts}: not a usable TTS model directory ({one_line(exc, 200)})") from exc
    if tts.config.codebook_size != tok.config.codebook_size or tok.config.num_codebooks != 1:
        raise ValueError(f"{a.tts} writes {tts.config.codebook_size} codes; {a.model_dir} needs a one-codebook match")
    prompt = tok.encode(a.prompt)[0] if a.prompt else None
    sampling = Sampling(a.sample_temperature, a.top_k, a.top_p, a.ras_window, a.ras_ratio, a.text_cfg_scale)
    scorer = CTCScorer(tok) if a.candidates > 1 else None
    t0 = time.perf_counter()
    (codes,), (chosen,) = generate_ranked(
        tts, [a.text], [prompt], [a.prompt_text or ""], sampling, a.seed, a.candidates, a.candidate_temperature, scorer
    )
    t_lm = time.perf_counter() - t0
    if scorer is not None:
        logger.info("best of %d token sequences by the CTC head: %s", a.candidates, "drawn" if chosen else "the first")
    if prompt is not None:  # the decoder sees the prompt's tokens too, then its audio is cut off
        codes = torch.cat([prompt, codes])
    wav, sr = tok.decode(codes[None], steps=a.steps, seed=a.seed, cfg_scale=a.cfg_scale, temperature=a.temperature)
    t_dec = time.perf_counter() - t0 - t_lm
    if prompt is not None:
        wav = wav[..., int(len(prompt) / tok.config.token_rate * sr) :]
    write_wav_atomic(a.output, wav, sr)
    seconds = wav.shape[-1] / sr
    logger.info(
        "%s: %.2f s of speech, %d tokens; RTF %.3f (LM %.3f + decoder %.3f, %d steps)",
        a.output,
        seconds,
        len(codes) - (0 if prompt is None else len(prompt)),
        (t_lm + t_dec) / max(seconds, 1e-9),
        t_lm / max(seconds, 1e-9),
        t_dec / max(seconds, 1e-9),
        a.steps,
    )
    return 0


def _model_options(s, vocoder: bool = True) -> None:
    s.add_argument("-m", "--model-dir", required=True, help=MODEL_DIR_HELP)
    if vocoder:
        s.add_argument("--vocoder", default="auto", choices=VOCODERS, help=VOCODER_HELP)
    s.add_argument("--device", default="cpu", help=DEVICE_HELP)


MANY = "or many: a directory (searched recursively) or a list file (.list/.txt/.scp: a path, or 'key path', per line)"
MANY_OUT = "with many inputs, a directory: the same relative paths (or names) with the output's extension"


def _many_options(s) -> None:
    s.add_argument(
        "--batch-size", type=positive_int, default=8, help="with many inputs: files per batch (similar lengths)"
    )
    s.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)


def add_parsers(sub) -> None:
    s = add_command(sub, "count-params", cmd_count_params, "parameters of a tokenizer config (meta device, no memory)")
    s.add_argument("configs", nargs="+", help="hparams YAML(s) with a model_config mapping, or model dirs")

    s = add_command(sub, "info", cmd_info, "facts of a model directory (params, token rate, CN, CS, bit-rate)")
    _model_options(s)

    s = add_command(sub, "encode", cmd_encode, "wav -> codes (.npy [CN, T])")
    s.add_argument("input", help="audio file (any format libsndfile reads, any rate and channel count); " + MANY)
    s.add_argument(
        "-o", "--output", required=True, help="codes file, int64 .npy [CN, T] (written under this name); " + MANY_OUT
    )
    _model_options(s)
    _many_options(s)

    s = add_command(sub, "decode", cmd_decode, "codes (.npy) -> 24 kHz wav")
    s.add_argument("input", help=".npy codes [CN, T], or [B, CN, T] for B files; " + MANY)
    s.add_argument(
        "-o",
        "--output",
        required=True,
        help="output wav; codes [B, CN, T] give one wav per item, OUTPUT with _0, _1, ... before the "
        "extension (out.wav -> out_0.wav, out_1.wav); " + MANY_OUT,
    )
    add_decoding(s, seed_help="start-noise seed (an utterance's noise depends only on it and the utterance's length)")
    _model_options(s)
    _many_options(s)

    s = add_command(sub, "resynth", cmd_resynth, "wav -> codes -> wav")
    s.add_argument("input", help="audio file (any format libsndfile reads, any rate and channel count); " + MANY)
    s.add_argument(
        "-o", "--output", required=True, help="output wav (24 kHz, cut to the input's duration); " + MANY_OUT
    )
    add_decoding(s)
    _model_options(s)
    _many_options(s)

    s = add_command(sub, "transcribe", cmd_transcribe, "speech or codes -> text with an LLM-ASR model (stage 15)")
    s.add_argument("inputs", nargs="+", help="audio files, or .npy codes files written by 'sitok encode'")
    s.add_argument("--asr", required=True, help="LLM-ASR model directory (<exp>/llm_asr/model, written by stage 15)")
    s.add_argument("--beam-size", type=positive_int, default=1, help="1: greedy decoding; more: beam search")
    _model_options(s, vocoder=False)

    s = add_command(sub, "tts", cmd_tts, "text -> speech with an AR-TTS model over the tokens (stage 16)")
    s.add_argument("text", help="the text to speak")
    s.add_argument("-o", "--output", required=True, help="output wav (24 kHz)")
    s.add_argument("--tts", required=True, help="AR-TTS model directory (<exp>/tts/model, written by stage 16)")
    s.add_argument("--prompt", default=None, help="a prompt utterance (audio file) whose voice to continue")
    s.add_argument("--prompt-text", default=None, help="the prompt utterance's transcript (needed with --prompt)")
    s.add_argument(
        "--sample-temperature", type=nonneg_float, default=1.0, help="token sampling temperature (0: greedy)"
    )
    s.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    s.add_argument("--top-p", type=nonneg_float, default=1.0, help="sample within this probability mass (1: all)")
    s.add_argument("--ras-window", type=int, default=10, help="repetition-aware sampling window (0: off)")
    s.add_argument("--ras-ratio", type=nonneg_float, default=0.1, help="redraw share of repeats in the window")
    s.add_argument(
        "--text-cfg-scale",
        type=nonneg_float,
        default=1.0,
        help="classifier-free guidance of the tokens on the text (1: off; a model trained with text_dropout)",
    )
    s.add_argument(
        "--candidates",
        type=positive_int,
        default=1,
        help="the best of this many token sequences by the tokenizer's CTC head: the one of the sampling "
        "options above and the rest drawn at --candidate-temperature (1: no ranking)",
    )
    s.add_argument(
        "--candidate-temperature", type=nonneg_float, default=0.6, help="temperature of the drawn candidates"
    )
    add_decoding(s, seed_help="seed of the token sampling and of the decoder's start noise")
    _model_options(s)

    s = add_command(sub, "export", cmd_export, "model directory from a training run's latest checkpoint")
    s.add_argument("exp_dir", help="training experiment dir (train_config.json, save/)")
    s.add_argument("-o", "--output", default=None, help="output model directory (default: EXP_DIR/model)")

    s = add_command(
        sub,
        "export-onnx",
        cmd_export_onnx,
        "ONNX graphs of a model directory (encoder + quantiser, decoder condition, one decoder step, vocoder), "
        "checked against PyTorch with onnxruntime",
    )
    s.add_argument("-m", "--model-dir", required=True, help=MODEL_DIR_HELP)
    s.add_argument("-o", "--output", required=True, help="output directory (written whole or not at all)")
    s.add_argument(
        "--vocoder", default="auto", choices=VOCODERS, help=VOCODER_HELP + " (griffin_lim: no vocoder graph)"
    )

    s = add_command(
        sub,
        "dump-codes",
        cmd_dump_codes,
        "codes of every utterance of a feature dump dir (stage 5); resumes after a kill, shares parts among "
        "torchrun ranks",
    )
    s.add_argument("dump_dir", help="feature dump dir (feats.scp)")
    s.add_argument("out_dir", help="output dir (codes.scp + ark)")
    _model_options(s, vocoder=False)
    s.add_argument(
        "--batch-frames",
        type=positive_int,
        default=20000,
        help="padded mel frames per encoder batch (utterances sorted by length); lower it when the device "
        "runs out of memory",
    )
    s.add_argument(
        "--part-utts",
        type=positive_int,
        default=2000,
        help="utterances per part, the unit kept by a killed run (OUT_DIR/.parts) and shared among torchrun ranks",
    )
    s.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)

    s = add_command(
        sub, "resynth-set", cmd_resynth_set, "decode a set's codes (or vocode its ground-truth mel) to wavs (stage 5)"
    )
    s.add_argument("dump_dir", help="the set's feature dump dir (feats.scp, utt2num_frames)")
    s.add_argument("out_dir", help="output dir of wavs (wav.scp)")
    s.add_argument("--codes-dir", default=None, help="codes.scp to decode; without it: ground truth -> vocoder")
    add_decoding(s)
    _model_options(s)
    s.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
