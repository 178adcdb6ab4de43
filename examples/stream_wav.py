#!/usr/bin/env python
"""Stream a wav through the tokenizer as if it arrived live: encode -> codes -> chunked decode ->
vocoder, printing what comes out after each block of audio and how long it took.

    python examples/stream_wav.py in.wav -m egs/mini/sitok/exp/tokenizer_mini/model -o out.wav \\
        [--block-ms 40] [--chunk 2] [--lookahead 2] [--steps 4]

Audio arrives in blocks of ``--block-ms``; the StreamingEncoder emits each token 30 ms after the
end of its 80 ms, the ChunkedDecoder decodes a chunk once its look-ahead tokens are there, and the
vocoder turns each new block of log-mel frames into audio (with a few frames of left context, so
block edges do not click). The algorithmic latency of the first audio is the encoder's 110 ms for
the first token plus (chunk + lookahead - 1) x 80 ms; the compute time is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "toolkit"))

from sitok.data.audio import load_audio, write_wav_atomic  # noqa: E402
from sitok.infer import Tokenizer  # noqa: E402
from sitok.infer.streaming import ChunkedDecoder, StreamingEncoder  # noqa: E402

VOCODER_CONTEXT = 8  # mel frames of left context for each vocoder call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input")
    p.add_argument("-m", "--model-dir", required=True)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--block-ms", type=float, default=40.0, help="audio per arriving block")
    p.add_argument(
        "--chunk", type=int, default=None, help="tokens decoded together (default 2, or a chunk-causal decoder's own)"
    )
    p.add_argument(
        "--lookahead",
        type=int,
        default=None,
        help="tokens after a chunk that must have arrived (default 2; 0 for a chunk-causal decoder)",
    )
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--temperature", type=float, default=0.0)
    a = p.parse_args()
    tok = Tokenizer.from_pretrained(a.model_dir)
    wav = load_audio(a.input, tok.sample_rate)
    enc = StreamingEncoder(tok)
    crossfade = None if a.lookahead is None else min(1, a.lookahead)
    dec = ChunkedDecoder(tok, a.chunk, a.lookahead, crossfade=crossfade, steps=a.steps, temperature=a.temperature)
    hop, block = tok.mel_cfg.hop_length, int(a.block_ms * tok.sample_rate / 1000)
    mel_all, out = torch.zeros(0, tok.model.config.n_mels), []
    print(
        f"decoder latency {dec.latency_ms:.0f} ms ({dec.chunk} + {dec.lookahead} tokens); blocks of {a.block_ms:g} ms"
    )
    print("| audio in (ms) | tokens out | mel frames out | audio out (ms) | compute (ms) |")
    print("|---|---|---|---|---|")
    first = None
    for start in range(0, len(wav) + block, block):
        last = start >= len(wav)
        t0 = time.perf_counter()
        codes = enc.flush() if last else enc.push(wav[start : start + block])
        mel = dec.push(codes) if codes.shape[1] else torch.zeros(0, tok.model.config.n_mels)
        if last:
            mel = torch.cat([mel, dec.flush()])
        audio = torch.zeros(0)
        if len(mel):
            ctx = mel_all[-VOCODER_CONTEXT:]
            mel_all = torch.cat([mel_all, mel])
            audio = tok.vocoder(torch.cat([ctx, mel])[None])[0][len(ctx) * hop :].cpu()
            out.append(audio)
        ms = 1000 * (time.perf_counter() - t0)
        arrived = min(start + block, len(wav)) * 1000 / tok.sample_rate
        if len(audio) and first is None:
            first = (arrived, ms)
        if len(codes[0]) or len(mel):
            out_ms = 1000 * len(audio) / tok.sample_rate
            print(f"| {arrived:.0f} | {codes.shape[1]} | {len(mel)} | {out_ms:.0f} | {ms:.1f} |")
    write_wav_atomic(a.output, torch.cat(out).numpy(), tok.sample_rate)
    print(f"first audio after {first[0]:.0f} ms of input (+ {first[1]:.1f} ms of compute); wrote {a.output}")


if __name__ == "__main__":
    main()
