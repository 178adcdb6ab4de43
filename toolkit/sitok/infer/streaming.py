"""Streaming: encode an audio stream (``StreamingEncoder``, codes equal to offline encoding) and
decode a stream of codes chunk by chunk (``ChunkedDecoder``, further down).

Streaming encode: codes of an audio stream, each emitted as soon as the audio its frames need
has arrived, equal to encoding the whole recording at once.

    enc = StreamingEncoder(tok)
    for chunk in chunks:            # 1-D float tensors at tok.sample_rate, any sizes
        codes = enc.push(chunk)     # [CN, n] for the n tokens completed by this chunk (n may be 0)
    codes = enc.flush()             # the last tokens, which need the end of the recording

Latency. Mel frame k covers samples [k*hop - side, k*hop - side + n_fft) of the recording
(side = (n_fft - hop) / 2: 720 samples, n_fft 1,920, hop 480 at 24 kHz), and token j stacks
frames 4j .. 4j + 3, so token j is out once sample (4j + 3) * hop - side + n_fft = 1,920 j + 2,640
has arrived: 30 ms after the end of its 80 ms of audio. The encoder is causal; its keys and
values are cached per block, so each token costs one position's worth of compute. The last
frames use the recording's end (zero padding to a whole hop, then reflection), so they come with
``flush``.
"""

from __future__ import annotations

import math

import torch

from sitok.infer.sampler import euler_sample
from sitok.infer.tokenizer import Tokenizer


class StreamingEncoder:
    def __init__(self, tok: Tokenizer):
        cfg = tok.mel_cfg
        self.tok, self.model = tok, tok.model
        self.hop, self.n_fft = cfg.hop_length, cfg.n_fft
        self.side = (cfg.n_fft - cfg.hop_length) // 2
        self.stack = self.model.config.stack
        self.reset()

    def reset(self) -> None:
        """Start a new stream."""
        self.buf = torch.zeros(0)  # the samples still needed, from index self.offset of the recording
        self.offset = 0
        self.received = 0
        self.frames = 0  # mel frames computed
        self.pending: list[torch.Tensor] = []  # normalised frames [n_mels] not yet in a token
        self.caches: list[dict] = [{} for _ in self.model.encoder.blocks]
        self.closed = False

    # ---- audio -> frames ------------------------------------------------------------------
    def _samples(self, start: int, stop: int, total: int | None) -> torch.Tensor:
        """Samples [start, stop) of the recording as the offline front end pads it: reflected
        before 0; after the end (``total`` known only at flush) zeros up to a whole hop, then the
        reflection of that padded signal."""
        orig = torch.arange(start, stop)
        idx = torch.where(orig < 0, -orig, orig)  # left reflection (the edge sample not repeated)
        zero = torch.zeros_like(idx, dtype=torch.bool)
        if total is not None:
            padded = math.ceil(total / self.hop) * self.hop
            if padded <= self.side:  # too short to reflect: the front end pads with zeros instead
                return torch.where((orig >= 0) & (orig < total), self._at(orig), 0.0)
            idx = torch.where(idx >= padded, 2 * (padded - 1) - idx, idx)  # right reflection
            zero = idx >= total
        return torch.where(zero, 0.0, self._at(idx))

    def _at(self, idx: torch.Tensor) -> torch.Tensor:
        """Buffered samples at recording indices ``idx`` (indices outside the buffer read its edge)."""
        if len(self.buf) == 0:
            return torch.zeros(idx.shape)
        return self.buf[(idx - self.offset).clamp(0, len(self.buf) - 1)]

    def _frames(self, k1: int, total: int | None = None) -> None:
        """Compute mel frames self.frames .. k1 - 1 into ``pending``."""
        k0 = self.frames
        if k1 <= k0:
            return
        start, stop = k0 * self.hop - self.side, (k1 - 1) * self.hop - self.side + self.n_fft
        seg = self._samples(start, stop, total).to(self.tok.device)
        mel = self.tok.frontend.log_mel_of_padded(seg[None])[0]  # [k1 - k0, n_mels]
        self.pending.extend(self.tok.cmvn(mel))
        self.frames = k1
        keep_from = max(0, self.frames * self.hop - self.side) if self.frames * self.hop >= 2 * self.side else 0
        if keep_from > self.offset:  # samples no later frame needs
            self.buf, self.offset = self.buf[keep_from - self.offset :], keep_from

    # ---- frames -> codes ------------------------------------------------------------------
    @torch.no_grad()
    def _tokens(self, final: bool = False) -> torch.Tensor:
        n = len(self.pending) // self.stack
        if final and len(self.pending) % self.stack:  # the last token: its missing frames are zeros
            zeros = torch.zeros_like(self.pending[0])
            self.pending.extend([zeros] * (self.stack - len(self.pending) % self.stack))
            n += 1
        cn = self.model.config.num_codebooks
        if n == 0:
            return torch.zeros(cn, 0, dtype=torch.long)
        frames, self.pending = self.pending[: n * self.stack], self.pending[n * self.stack :]
        x = torch.stack(frames).reshape(1, n, -1).to(self.tok.dtype)  # [1, n, stack * n_mels]
        h = self.model.encoder.forward_cached(self.model.in_proj(x), self.caches)
        codes = self.model.quantizer.encode(self.model.to_latent(h), None)  # [1, CN, n]
        return codes[0].cpu()

    # ---- the stream ---------------------------------------------------------------------
    def push(self, chunk) -> torch.Tensor:
        """Add samples (1-D, at the tokenizer's sample rate); returns the codes [CN, n] completed."""
        if self.closed:
            raise RuntimeError("StreamingEncoder: push after flush (call reset for a new stream)")
        chunk = torch.as_tensor(chunk, dtype=torch.float32).reshape(-1).cpu()
        self.buf = torch.cat([self.buf, chunk])
        self.received += chunk.numel()
        ready = (
            (self.received - self.n_fft + self.side) // self.hop + 1 if self.received >= self.n_fft - self.side else 0
        )
        self._frames(ready)
        return self._tokens()

    def flush(self) -> torch.Tensor:
        """The end of the stream: the remaining frames and codes [CN, n]."""
        if self.closed:
            raise RuntimeError("StreamingEncoder: flushed twice (call reset for a new stream)")
        self.closed = True
        if self.received == 0:
            return self._tokens()
        self._frames(math.ceil(self.received / self.hop), total=self.received)
        return self._tokens(final=True)


NOISE_BLOCK = 64  # token positions per block of start noise drawn from one seed


class ChunkedDecoder:
    """Streaming decode: codes in, log-mel out chunk by chunk, with the non-causal decoder.

        dec = ChunkedDecoder(tok, chunk=2, lookahead=2, steps=4, temperature=0.0)
        for codes in stream:            # [CN, n] tokens as they arrive (a StreamingEncoder's output)
            mel = dec.push(codes)       # un-normalised log-mel [F, n_mels] of the chunks now ready
        mel = dec.flush()               # the rest, once the stream has ended

    Chunk k (tokens kN .. kN + N - 1, N = ``chunk``) is decoded once the tokens up to kN + N + L
    have arrived (L = ``lookahead``), in a window reaching ``context`` tokens back and L ahead;
    its frames of the chunk are emitted, the first ``crossfade`` tokens' worth blended linearly
    (in log-mel) with what the window before predicted for them in its look-ahead. Algorithmic
    latency: (N + L) tokens, 80 ms each at 12.5 Hz (``latency_ms``), on top of the encoder's
    30 ms. The start noise of token position p is the same in every window (drawn per block of
    ``NOISE_BLOCK`` positions from ``seed``, scaled by ``temperature``), so windows differ only in
    what they see; when context and look-ahead cover the whole utterance the output equals
    decoding it at once from that noise.

    A chunk-causal decoder (``decoder_chunk`` M > 0 in its config: ``--refine chunked``) sees no
    token after its chunk, so it needs no look-ahead and no cross-fade: by default ``chunk`` = M,
    ``lookahead`` = ``crossfade`` = 0, and the whole past stays in view (``context`` None): each
    model chunk is decoded once, its keys and values kept per layer and per Euler step (earlier
    chunks never attend to later ones, so they stay valid), and the stream comes out exactly as
    decoding the utterance at once, at the cost of decoding it once. A bounded ``context``
    (rounded up to a multiple of M) re-decodes windows instead and changes the output, as the
    decoder was trained with the whole past in view. The default ``context`` of a decoder that
    looks both ways is 16 tokens.
    """

    def __init__(
        self,
        tok: Tokenizer,
        chunk: int | None = None,
        lookahead: int | None = None,
        context: int | None = None,
        crossfade: int | None = None,
        steps: int = 4,
        seed: int = 0,
        temperature: float = 1.0,
    ):
        causal = tok.model.config.decoder_chunk  # 0: a decoder that looks both ways
        chunk = (causal or 2) if chunk is None else chunk
        lookahead = (0 if causal else 2) if lookahead is None else lookahead
        crossfade = (0 if causal else 1) if crossfade is None else crossfade
        if causal and (chunk % causal or lookahead or crossfade):
            raise ValueError(
                f"ChunkedDecoder: this decoder is chunk-causal in chunks of {causal} tokens: chunk must be a "
                f"multiple of {causal}, lookahead and crossfade 0 (got {chunk}, {lookahead}, {crossfade})"
            )
        if context is None and not causal:
            context = 16
        if causal and context is not None:
            context = -(-context // causal) * causal  # windows start on the decoder's chunk boundaries
        if (
            chunk < 1
            or lookahead < 0
            or (context is not None and context < 0)
            or not 0 <= crossfade <= min(chunk, lookahead)
        ):
            raise ValueError(
                f"ChunkedDecoder: need chunk >= 1, lookahead >= 0, context >= 0 and 0 <= crossfade <= "
                f"min(chunk, lookahead); got chunk={chunk}, lookahead={lookahead}, context={context}, "
                f"crossfade={crossfade}"
            )
        self.tok, self.model = tok, tok.model
        self.chunk, self.lookahead, self.context, self.crossfade = chunk, lookahead, context, crossfade
        self.steps, self.seed, self.temperature = steps, seed, temperature
        self.stack = self.model.config.stack
        self.reset()

    @property
    def latency_ms(self) -> float:
        """Tokens that must arrive before a chunk can be decoded, in milliseconds of audio."""
        return 1000.0 * (self.chunk + self.lookahead) / self.model.config.token_rate

    @property
    def cached(self) -> bool:
        """Whether chunks are decoded once with cached keys and values (chunk-causal, whole past)."""
        return bool(self.model.config.decoder_chunk) and self.context is None

    def reset(self) -> None:
        """Start a new stream."""
        if self.cached:  # keys and values of the chunks decoded so far, per layer
            dec = self.model.decoder
            stepped = dec.head if dec.head is not None else dec.body
            self.body_caches = [{} for _ in dec.body.blocks]  # the per-utterance part (light head, regression)
            self.step_caches = [[{} for _ in stepped.blocks] for _ in range(self.steps)]  # one set per Euler step
        self.codes = torch.zeros(self.model.config.num_codebooks, 0, dtype=torch.long)
        self.emitted = 0  # tokens whose frames are out
        self.tail = None  # the last window's prediction of the next chunk's first crossfade tokens
        self.closed = False

    def _noise(self, start: int, stop: int) -> torch.Tensor:
        """Start noise [stop - start, frame_dim] of token positions start .. stop - 1."""
        d = self.model.config.frame_dim
        blocks = []
        for b in range(start // NOISE_BLOCK, (stop - 1) // NOISE_BLOCK + 1):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + b)
            blocks.append(torch.randn(NOISE_BLOCK, d, generator=g))
        first = (start // NOISE_BLOCK) * NOISE_BLOCK
        return torch.cat(blocks)[start - first : stop - first]

    @torch.no_grad()
    def _window(self, start: int, stop: int) -> torch.Tensor:
        """Un-normalised log-mel [(stop - start) * stack, n_mels] of tokens start .. stop - 1 alone."""
        tok, model = self.tok, self.model
        codes = self.codes[:, start:stop][None].to(tok.device)
        cond = model.cond_from_codes(codes)
        if model.config.decoder == "diffusion":
            noise = (self.temperature * self._noise(start, stop))[None].to(tok.device, tok.dtype)
            x = euler_sample(model.velocity_fn(cond, None, self.steps), noise, self.steps)
        else:
            x = model.decoder(cond)
        return tok.cmvn.inverse(model.unstack(x).float())[0].cpu()

    def _chunk_cached(self, start: int, stop: int) -> torch.Tensor:
        """Un-normalised log-mel of tokens start .. stop - 1, one model chunk at a time (the last
        one may be short: the end of the stream)."""
        n = self.model.config.decoder_chunk
        return torch.cat([self._one_chunk(a, min(a + n, stop)) for a in range(start, stop, n)])

    @torch.no_grad()
    def _one_chunk(self, start: int, stop: int) -> torch.Tensor:
        """One model chunk decoded after the cached ones: ``euler_sample`` on its tokens alone, each
        step against that step's keys and values of the earlier chunks (extended here)."""
        tok, model = self.tok, self.model
        cond = model.cond_from_codes(self.codes[:, start:stop][None].to(tok.device))
        h = model.decoder.condition(cond, caches=self.body_caches)
        if model.config.decoder != "diffusion":
            x = model.decoder.out(h)
        else:
            noise = (self.temperature * self._noise(start, stop))[None].to(tok.device, tok.dtype)
            d = (
                torch.full((1,), 1.0 / self.steps, device=tok.device, dtype=tok.dtype)
                if model.config.shortcut
                else None
            )
            step_caches = iter(self.step_caches)  # euler_sample calls the velocity once per step, in order
            x = euler_sample(lambda x_t, t: model.velocity(x_t, t, h, d=d, caches=next(step_caches)), noise, self.steps)
        return tok.cmvn.inverse(model.unstack(x).float())[0].cpu()

    def _ready(self, final: bool) -> torch.Tensor:
        total, s, out = self.codes.shape[1], self.stack, []
        while self.emitted < total:
            start = self.emitted
            stop = min(start + self.chunk, total) if final else start + self.chunk
            if not final and stop + self.lookahead > total:
                break
            if self.cached:
                out.append(self._chunk_cached(start, stop))
                self.emitted = stop
                continue
            w0 = 0 if self.context is None else max(0, start - self.context)
            w1 = min(total, stop + self.lookahead)
            mel = self._window(w0, w1)
            cur = mel[(start - w0) * s : (stop - w0) * s].clone()
            if self.tail is not None and len(self.tail):
                n = min(len(self.tail), len(cur))
                w = torch.arange(1, n + 1, dtype=cur.dtype)[:, None] / (n + 1)  # towards this window
                cur[:n] = (1 - w) * self.tail[:n] + w * cur[:n]
            self.tail = mel[(stop - w0) * s : (stop - w0 + self.crossfade) * s] if self.crossfade else None
            out.append(cur)
            self.emitted = stop
        return torch.cat(out) if out else torch.zeros(0, self.model.config.n_mels)

    def push(self, codes) -> torch.Tensor:
        """Add tokens [CN, n]; returns the log-mel frames [F, n_mels] of the chunks now complete."""
        if self.closed:
            raise RuntimeError("ChunkedDecoder: push after flush (call reset for a new stream)")
        codes = self.tok.check_codes(codes)[0].cpu() if torch.as_tensor(codes).shape[-1] else None
        if codes is not None:
            self.codes = torch.cat([self.codes, codes], dim=1)
        return self._ready(final=False)

    def flush(self) -> torch.Tensor:
        """The end of the stream: the frames of the tokens not yet decoded."""
        if self.closed:
            raise RuntimeError("ChunkedDecoder: flushed twice (call reset for a new stream)")
        self.closed = True
        return self._ready(final=True)
