"""The public Tokenizer API: inputs (paths, rates, integer PCM, loudness), padded batches, dtype and device."""

import pathlib
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from sitok.data.audio import load_audio
from sitok.data.mel import GlobalCMVN
from sitok.infer import Tokenizer

from conftest import tiny_sitok, tone


def tiny_tokenizer(**kw) -> Tokenizer:
    return Tokenizer(tiny_sitok(**kw), GlobalCMVN.paper())


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def speech_like(seconds=1.0, sr=24000, seed=0):
    x = tone(seconds, sr) + 0.05 * np.random.default_rng(seed).standard_normal(int(seconds * sr)).astype(np.float32)
    return x.astype(np.float32)


# ---- inputs ---------------------------------------------------------------------------------
def test_encode_accepts_a_path(tok, tmp_path):
    wav48 = tone(1.0, sr=48000)
    path = str(tmp_path / "in48k.wav")
    sf.write(path, wav48, 48000, subtype="FLOAT")
    ref = tok.encode(load_audio(path, 24000), 24000)  # what the toolkit's reader gives at the model's rate
    assert torch.equal(tok.encode(path), ref)
    assert torch.equal(tok.encode(pathlib.Path(path)), ref)  # os.PathLike
    assert torch.equal(tok.encode(path, 48000), ref)  # the file's own rate may be given
    with pytest.raises(ValueError, match="the file is at 48000 Hz"):
        tok.encode(path, 16000)
    assert torch.equal(tok.encode_batch([path, pathlib.Path(path)])[1], ref)
    wav, sr = tok.resynth(path, steps=1)
    assert sr == 24000 and wav.shape == (24000,)
    with pytest.raises(ValueError, match="sample_rate is required"):
        tok.encode(wav48)
    with pytest.raises(ValueError, match="missing"):
        tok.encode(str(tmp_path / "nope.wav"))


@pytest.mark.parametrize("sr", [0, 16, 999, 384001, -24000, 24000.5, float("nan"), float("inf"), True, "24000"])
def test_implausible_sample_rates_are_refused(tok, sr):
    with pytest.raises(ValueError, match=r"sample_rate must be a whole number of Hz in \[1000, 384000\]"):
        tok.encode(tone(0.5), sr)


def test_plausible_sample_rate_types(tok):
    wav = tone(0.5)
    ref = tok.encode(wav, 24000)
    assert torch.equal(tok.encode(wav, 24000.0), ref) and torch.equal(tok.encode(wav, np.int64(24000)), ref)


@pytest.mark.parametrize(
    "dtype,full_scale,offset", [(np.int16, 32768, 0), (np.int32, 2**31, 0), (np.int8, 128, 0), (np.uint8, 128, 128)]
)
def test_integer_pcm_is_rescaled(tok, dtype, full_scale, offset):
    x = speech_like()
    pcm = (np.round(x * (full_scale - 1)) + offset).astype(dtype)
    ref = tok.mel(x, 24000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rescaled PCM lies in [-1, 1]: no loudness warning
        for wav in (pcm, torch.from_numpy(pcm)):
            mel = tok.mel(wav, 24000)
            # measured mean |difference| of normalised log-mel: 8-bit 0.006, 16-bit 2e-5 (not rescaled: 1.7 / 3.6)
            assert float((mel - ref).abs().mean()) < (0.05 if full_scale == 128 else 0.001)


def test_ambiguous_sample_types_are_refused(tok):
    for bad in (np.arange(1000), torch.ones(1000, dtype=torch.bool), np.ones(1000, np.complex64)):
        with pytest.raises(ValueError, match="samples must be float"):
            tok.encode(bad, 24000)


def test_loud_float_audio_warns(tok):
    x = speech_like()
    loud = 2.0 * x / np.abs(x).max()
    for encode in (lambda: tok.encode(loud, 24000), lambda: tok.encode_batch([x, loud], 24000)):
        with pytest.warns(UserWarning, match=r"peaks at 2 > 1") as record:
            encode()
        assert [w.filename for w in record] == [__file__]  # attributed to the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.encode(x / np.abs(x).max(), 24000)  # full scale is fine


def test_encode_batch_needs_a_nonempty_list(tok):
    with pytest.raises(ValueError, match="empty list"):
        tok.encode_batch([])
    with pytest.raises(TypeError, match="expected a list"):
        tok.encode_batch(np.zeros((2, 24000), np.float32))
    a, b = speech_like(1.0), speech_like(0.6, seed=1)
    ca, cb = tok.encode_batch([a, b], 24000)
    assert torch.equal(ca, tok.encode(a, 24000)) and torch.equal(cb, tok.encode(b, 24000))


# ---- decode options ---------------------------------------------------------------------------
@pytest.mark.parametrize("w", [float("nan"), float("inf"), -1.0])
def test_bad_cfg_scale_is_reported_as_such(tok, w):
    with pytest.raises(ValueError, match=f"cfg_scale must be a finite number >= 0, got {w}"):
        tok.decode(torch.zeros(1, 3, dtype=torch.long), cfg_scale=w)


@pytest.mark.parametrize("steps", [0, -2, 1.5, True])
def test_bad_steps_are_refused(tok, steps):
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        tok.decode_mel(torch.zeros(1, 3, dtype=torch.long), steps=steps)


def test_a_regression_decoder_takes_no_steps():
    """One pass, no ODE: evaluation scores it at steps 0, as any other value gives the same mel."""
    tok = tiny_tokenizer(decoder="regression")
    codes = torch.randint(0, 64, (1, 6), generator=torch.Generator().manual_seed(0))
    assert torch.equal(tok.decode_mel(codes, steps=0), tok.decode_mel(codes, steps=16))


@pytest.mark.parametrize("lengths", [[5], [5, 10], [0, 9], [5.0, 9.0], [[5, 9]]])
def test_bad_lengths_are_refused(tok, lengths):
    with pytest.raises(ValueError, match="lengths must be 2 integer"):
        tok.decode_mel(torch.zeros(2, 1, 9, dtype=torch.long), lengths=lengths)


# ---- padded batches ---------------------------------------------------------------------------
@pytest.mark.parametrize("decoder", ["diffusion", "regression"])
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_padded_item_decodes_as_it_does_alone(decoder, temperature):
    tok = tiny_tokenizer(decoder=decoder)
    g = torch.Generator().manual_seed(0)
    short, long = torch.randint(0, 64, (1, 5), generator=g), torch.randint(0, 64, (1, 9), generator=g)
    batch = torch.full((2, 1, 9), -1, dtype=torch.long)  # padding need not be a valid code
    batch[0, :, :5], batch[1] = short, long
    out = tok.decode_mel(batch, steps=3, temperature=temperature, lengths=[5, 9])
    for i, codes in enumerate((short, long)):
        alone = tok.decode_mel(codes, steps=3, temperature=temperature)[0]
        n = alone.shape[0]
        # measured: <= 1e-6 (before per-item noise and masks, the short item differed by up to 1.1)
        assert float((out[i, :n] - alone).abs().max()) < 1e-4
    assert torch.all(out[0, 20:] == np.log(tok.mel_cfg.log_floor))  # padding frames are silence
    wav, _ = tok.decode(batch, steps=3, temperature=temperature, lengths=torch.tensor([5, 9]))
    assert wav.shape == (2, 9 * 4 * 480) and torch.all(wav[0, 5 * 4 * 480 :] == 0)
    assert float(wav[0, : 5 * 4 * 480].abs().max()) > 0


def test_seed_per_item():
    tok = tiny_tokenizer()
    codes = torch.randint(0, 64, (2, 1, 6), generator=torch.Generator().manual_seed(1))
    both = tok.decode_mel(codes, steps=2, seed=[3, 4])
    torch.testing.assert_close(both[1], tok.decode_mel(codes[1], steps=2, seed=4)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(both[0], tok.decode_mel(codes[0], steps=2, seed=3)[0], atol=1e-5, rtol=0)
    assert not torch.allclose(both[1], tok.decode_mel(codes[1], steps=2, seed=3)[0])
    with pytest.raises(ValueError, match="3 seeds for a batch of 2"):
        tok.decode_mel(codes, seed=[1, 2, 3])


# ---- dtype and device -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "dtype,mel_atol,agreement", [(torch.float64, 1e-4, 1.0), (torch.bfloat16, 0.5, 0.8), (torch.float16, 0.1, 0.8)]
)
def test_to_dtype_casts_inputs_and_returns_float32_cpu(dtype, mel_atol, agreement):
    ref_tok = tiny_tokenizer()
    x = speech_like(2.0)
    ref_codes = ref_tok.encode(x, 24000)
    ref_mel = ref_tok.decode_mel(ref_codes, steps=2)
    tok = tiny_tokenizer()
    assert tok.to(dtype=dtype) is tok and tok.dtype == dtype
    codes = tok.encode(x, 24000)
    assert codes.dtype == torch.long and codes.device.type == "cpu"
    # measured agreement with the float32 codes: 1.0 for float64, bfloat16 and float16
    assert float((codes == ref_codes).float().mean()) >= agreement
    mel = tok.decode_mel(ref_codes, steps=2)
    assert mel.dtype == torch.float32 and mel.device.type == "cpu"
    # measured max |difference| to float32: float64 2e-6, bfloat16 0.06, float16 0.011
    assert float((mel - ref_mel).abs().max()) < mel_atol
    wav, _ = tok.decode(ref_codes, steps=2)
    assert wav.dtype == torch.float32 and torch.isfinite(wav).all()
    assert torch.equal(tok.encode_batch([x], 24000)[0], codes)


def test_to_refuses_a_non_float_dtype():
    with pytest.raises(ValueError, match="floating-point"):
        tiny_tokenizer().to(dtype=torch.int32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_cuda_keeps_outputs_on_the_cpu_unless_asked():
    ref_tok = tiny_tokenizer()
    x = speech_like(2.0)
    ref_codes = ref_tok.encode(x, 24000)
    ref_mel = ref_tok.decode_mel(ref_codes, steps=2, temperature=0)
    tok = tiny_tokenizer().to("cuda", torch.bfloat16)
    codes = tok.encode(x, 24000)
    assert codes.device.type == "cpu" and tok.encode(x, 24000, keep_device=True).device.type == "cuda"
    assert float((codes == ref_codes).float().mean()) >= 0.8
    mel = tok.decode_mel(ref_codes, steps=2, temperature=0)
    assert mel.device.type == "cpu" and mel.dtype == torch.float32
    assert float((mel - ref_mel).abs().max()) < 0.5
    wav, _ = tok.decode(ref_codes, steps=2, keep_device=True)
    assert wav.device.type == "cuda" and wav.dtype == torch.float32
    padded = torch.zeros(2, 1, ref_codes.shape[1], dtype=torch.long)
    padded[0, :, :5], padded[1] = ref_codes[:, :5], ref_codes
    out = tok.to(dtype=torch.float32).decode_mel(padded, steps=2, lengths=[5, ref_codes.shape[1]], seed=1)
    alone = tok.decode_mel(ref_codes[:, :5], steps=2, seed=1)[0]
    assert float((out[0, : alone.shape[0]] - alone).abs().max()) < 1e-3  # TF32 / kernel choice on the GPU
