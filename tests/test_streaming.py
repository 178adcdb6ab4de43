"""Streaming encode (sitok.infer.streaming): codes pushed chunk by chunk equal offline encoding,
for random chunkings, and each token is out once the audio its frames need has arrived."""

import numpy as np
import pytest
import torch

from sitok.infer import Tokenizer
from sitok.infer.streaming import StreamingEncoder
from sitok.layers.transformer import LlamaStack

from conftest import write_model_dir


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return Tokenizer.from_pretrained(
        write_model_dir(tmp_path_factory.mktemp("stream") / "model"), vocoder="griffin_lim"
    )


def speechlike(seconds: float, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 24000)) / 24000
    x = 0.3 * np.sin(2 * np.pi * (140 + 60 * np.sin(2 * np.pi * 2 * t)) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    return torch.from_numpy((x + 0.03 * rng.standard_normal(t.size)).astype(np.float32))


def stream(tok, wav, sizes):
    enc, out, pos = StreamingEncoder(tok), [], 0
    for n in sizes:
        out.append(enc.push(wav[pos : pos + n]))
        pos += n
    out.append(enc.push(wav[pos:]))
    out.append(enc.flush())
    return torch.cat(out, dim=1)


def test_cached_stack_equals_the_whole_sequence():
    torch.manual_seed(0)
    stack = LlamaStack(2, 32, 64, 2, causal=True).eval()
    x = torch.randn(1, 23, 32)
    with torch.no_grad():
        whole = stack(x)
    caches = [{} for _ in stack.blocks]
    parts = [stack.forward_cached(x[:, a:b], caches) for a, b in ((0, 5), (5, 6), (6, 17), (17, 23))]
    assert torch.allclose(torch.cat(parts, dim=1), whole, atol=1e-5)
    with pytest.raises(ValueError, match="runs incrementally only chunk by chunk"):
        LlamaStack(1, 32, 64, 2, causal=False).forward_cached(x, [{}])
    with pytest.raises(ValueError, match="give c exactly when"):
        LlamaStack(1, 32, 64, 2, causal=True, cond_dim=8).forward_cached(x, [{}])


def test_streaming_codes_equal_offline_codes_for_20_random_chunkings(tok):
    """Codes equal; and the encoder's continuous latents too (a tiny random model's codes alone
    would not notice a small error in the frames)."""
    latents = []
    hook = tok.model.to_latent.register_forward_hook(lambda m, i, out: latents.append(out.reshape(-1, out.shape[-1])))
    rng = np.random.default_rng(0)
    try:
        for trial in range(20):
            wav = speechlike(float(rng.uniform(0.02, 3.0)), trial)  # from a 20 ms scrap to 3 s
            latents.clear()
            offline = tok.encode(wav, tok.sample_rate)
            z_offline = torch.cat(latents)
            sizes = [int(s) for s in rng.integers(1, 4000, size=int(rng.integers(1, 40)))]
            latents.clear()
            assert torch.equal(stream(tok, wav, sizes), offline), (trial, len(wav), sizes[:5])
            assert torch.allclose(torch.cat(latents), z_offline, rtol=0, atol=1e-5), (trial, len(wav))
    finally:
        hook.remove()


def test_each_token_is_out_once_its_audio_has_arrived(tok):
    wav = speechlike(2.0, 1)
    enc, got = StreamingEncoder(tok), 0
    for n in range(0, len(wav), 240):  # 10 ms pushes
        got += enc.push(wav[n : n + 240]).shape[1]
        arrived = min(n + 240, len(wav))
        assert got == max(0, (arrived - 2640) // 1920 + 1)  # token j needs samples up to 1,920 j + 2,640
    assert got + enc.flush().shape[1] == tok.encode(wav, tok.sample_rate).shape[1]
    with pytest.raises(RuntimeError, match="push after flush"):
        enc.push(wav[:10])
    enc.reset()
    assert enc.flush().shape[1] == 0


def decode_stream(dec, codes, sizes):
    out, pos = [], 0
    for n in sizes:
        out.append(dec.push(codes[:, pos : pos + n]))
        pos += n
    out.append(dec.push(codes[:, pos:]))
    out.append(dec.flush())
    return torch.cat(out)


def test_chunked_decode_with_the_whole_utterance_in_view_equals_offline(tok):
    from sitok.infer.streaming import ChunkedDecoder

    codes = torch.randint(0, 64, (1, 23), generator=torch.Generator().manual_seed(0))
    offline = tok.decode_mel(codes, steps=2, temperature=0.0)[0]
    dec = ChunkedDecoder(tok, chunk=2, lookahead=30, context=30, crossfade=1, steps=2, temperature=0.0)
    torch.testing.assert_close(decode_stream(dec, codes, [1, 4, 0, 7]), offline, rtol=0, atol=1e-5)


def test_chunked_decode_waits_for_its_lookahead_and_any_chunking_gives_the_same_frames(tok):
    from sitok.infer.streaming import ChunkedDecoder

    codes = torch.randint(0, 64, (1, 29), generator=torch.Generator().manual_seed(1))
    dec = ChunkedDecoder(tok, chunk=3, lookahead=1, context=4, crossfade=1, steps=2, seed=3)
    assert dec.latency_ms == 320.0  # (3 + 1) tokens of 80 ms
    first = [dec.push(codes[:, i : i + 1]).shape[0] for i in range(8)]
    assert first == [0, 0, 0, 12, 0, 0, 12, 0]  # chunk k is out when token 3k + 3 (its look-ahead) arrives
    dec.reset()
    whole = decode_stream(dec, codes, [])
    assert whole.shape == (4 * 29, tok.model.config.n_mels)
    rng = np.random.default_rng(0)
    for _ in range(3):
        dec.reset()
        sizes = [int(s) for s in rng.integers(0, 6, size=8)]
        torch.testing.assert_close(decode_stream(dec, codes, sizes), whole, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="crossfade"):
        ChunkedDecoder(tok, chunk=2, lookahead=0, crossfade=1)


@pytest.mark.parametrize(
    "kw",
    [
        {"decoder_chunk": 2},
        {"decoder_chunk": 2, "light_head_layers": 1},
        {"decoder_chunk": 3, "shortcut": True, "prediction": "x"},
        {"decoder_chunk": 2, "decoder": "regression"},
    ],
)
def test_chunk_causal_decoder_streams_exactly_its_offline_decode(kw, tmp_path):
    """A chunk-causal decoder: ChunkedDecoder's defaults follow the model (its chunk, no look-ahead,
    no cross-fade, the whole past in view through cached keys and values), and the streamed
    log-mel equals decoding the utterance at once, for any way the tokens arrive; a bounded
    context re-decodes windows instead (the same here, as 30 tokens cover the utterance)."""
    from sitok.infer.streaming import ChunkedDecoder

    n = kw["decoder_chunk"]
    tok = Tokenizer.from_pretrained(write_model_dir(tmp_path / "model", **kw), vocoder="griffin_lim")
    codes = torch.randint(0, 64, (1, 23), generator=torch.Generator().manual_seed(0))
    offline = tok.decode_mel(codes, steps=2, temperature=0.0)[0]
    dec = ChunkedDecoder(tok, steps=2, temperature=0.0)
    assert dec.cached and (dec.chunk, dec.lookahead, dec.crossfade, dec.context) == (n, 0, 0, None)
    assert dec.latency_ms == 80.0 * n
    assert dec.push(codes[:, : n - 1]).shape[0] == 0 and dec.push(codes[:, n - 1 : n]).shape[0] == 4 * n
    rng = np.random.default_rng(0)
    for _ in range(3):
        dec.reset()
        sizes = [int(s) for s in rng.integers(0, 6, size=6)]
        torch.testing.assert_close(decode_stream(dec, codes, sizes), offline, rtol=0, atol=1e-5)
    windows = ChunkedDecoder(tok, context=30, steps=2, temperature=0.0)
    assert not windows.cached and windows.context == 30 + (-30 % n)  # windows start on chunk boundaries
    torch.testing.assert_close(decode_stream(windows, codes, [5, 1]), offline, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=f"chunk-causal in chunks of {n}"):
        ChunkedDecoder(tok, chunk=n + 1)
    with pytest.raises(ValueError, match=f"chunk-causal in chunks of {n}"):
        ChunkedDecoder(tok, chunk=n, lookahead=1)
