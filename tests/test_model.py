"""The SiTok model, its losses and the Tokenizer API (tiny sizes)."""

import math
import os

import numpy as np
import pytest
import torch

from sitok.data.mel import GlobalCMVN
from sitok.infer import Tokenizer
from sitok.infer.sampler import euler_sample
from sitok.losses import ctc_loss, ctc_required_frames, flow_matching_loss
from sitok.models import SiTok, SiTokConfig, count_parameters

from conftest import ROOT, TINY_MODEL, tiny_sitok


def batch(b=3, t=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    mel = torch.randn(b, t, 128, generator=g)
    lengths = torch.tensor([t, t - 9, t - 20][:b])
    targets = torch.randint(1, 20, (b, 3), generator=g)
    return mel, lengths, targets, torch.full((b,), 3)


def test_forward_shapes_and_loss_parts():
    m = tiny_sitok()
    mel, lengths, tg, tl = batch()
    out = m(mel, lengths, tg, tl)
    assert set(out) >= {"loss", "diff", "vq", "ctc", "ctc_not_fitting", "stats"}
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    codes = m.eval().encode(mel, lengths)
    assert codes.shape == (3, 1, math.ceil(37 / 4)) and codes.dtype == torch.long
    assert m.token_lengths(lengths).tolist() == [10, 7, 5]
    assert m.config.token_rate == 12.5 and m.config.bits_per_second == 12.5 * 6


def test_flow_matching_loss_is_zero_for_the_exact_velocity():
    x, eps, t = torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.rand(2)
    assert flow_matching_loss(lambda x_t, tt: x - eps, x, t=t, eps=eps) == 0
    assert flow_matching_loss(lambda x_t, tt: x, x, t=t, eps=eps, prediction="x") == 0
    assert flow_matching_loss(lambda x_t, tt: x, x, t=t, eps=eps) > 0.5
    # x_t really is t x + (1 - t) eps: the exact velocity recovers it
    seen = {}
    flow_matching_loss(lambda x_t, tt: seen.setdefault("x_t", x_t), x, t=t, eps=eps)
    torch.testing.assert_close(seen["x_t"], t.view(-1, 1, 1) * x + (1 - t.view(-1, 1, 1)) * eps)


def test_euler_sampler_follows_straight_paths_and_keeps_prompt():
    x, noise = torch.randn(1, 6, 4), torch.randn(1, 6, 4)
    out = euler_sample(lambda x_t, t: x - noise, noise, steps=4)  # the exact straight-line field
    torch.testing.assert_close(out, x)
    mask = torch.tensor([[True, True, False, False, False, False]])
    out = euler_sample(lambda x_t, t: torch.zeros_like(x_t), noise, steps=3, prompt=x, prompt_mask=mask)
    torch.testing.assert_close(out[:, :2], x[:, :2])
    torch.testing.assert_close(out[:, 2:], noise[:, 2:])


def test_ctc_counts_targets_that_cannot_fit():
    assert ctc_required_frames(torch.tensor([[3, 3, 4, 0]]), torch.tensor([3])).tolist() == [4]
    logits = torch.randn(2, 5, 10)
    loss, bad = ctc_loss(logits, torch.tensor([5, 2]), torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([3, 3]))
    assert bad == 1 and torch.isfinite(loss)  # the second (3 units in 2 frames) is excluded, not zeroed
    loss_one, _ = ctc_loss(logits[:1], torch.tensor([5]), torch.tensor([[1, 2, 3]]), torch.tensor([3]))
    torch.testing.assert_close(loss, loss_one)


def test_ctc_upsampling_fits_character_rate_targets():
    """12 units in 10 tokens (a character rate at 12.5 Hz) cannot align; x3 CTC frames can. Token t
    owns CTC frames 3t .. 3t + 2, so the causal CTC branch still sees no future token."""
    mel, lengths, _, _ = batch(b=2, t=40)
    lengths = torch.tensor([40, 40])
    targets, tl = torch.randint(1, 20, (2, 12), generator=torch.Generator().manual_seed(1)), torch.tensor([12, 12])
    assert tiny_sitok()(mel, lengths, targets, tl)["ctc_not_fitting"] == 2
    m = tiny_sitok(ctc_upsample=3)
    out = m(mel, lengths, targets, tl)
    assert out["ctc_not_fitting"] == 0 and torch.isfinite(out["ctc"])
    codes = m.eval().encode(mel, lengths)
    logits = m.ctc_logits(codes)
    assert logits.shape == (2, 30, 20) and m.ctc_lengths(m.token_lengths(lengths)).tolist() == [30, 30]
    cut = m.ctc_logits(codes[:, :, :6])  # the first 6 tokens alone give the same first 18 frames
    torch.testing.assert_close(cut, logits[:, :18])
    with pytest.raises(ValueError, match="ctc_upsample"):
        tiny_sitok(ctc_upsample=0)


def test_continuous_phase_bypasses_the_codebook():
    m = tiny_sitok()
    mel, lengths, tg, tl = batch()
    before = m.quantizer.embed.clone()
    out = m.forward_continuous(mel, lengths, tg, tl, ctc_weight=2.0)
    assert out["codes"] is None and float(out["vq"]) == 0.0
    torch.testing.assert_close(out["loss"], out["diff"] + 2.0 * out["ctc"])
    assert torch.equal(m.quantizer.embed, before) and not bool(m.quantizer.initted)  # no EMA step, no data init
    out["loss"].backward()
    assert m.to_latent.weight.grad.abs().sum() > 0  # the encoder learns through the continuous latents


def test_calling_the_model_runs_the_named_training_mode():
    """model(..., mode=m) is forward_<m>: trainers call the model itself, so a DDP wrapper sees the step."""
    mel, lengths, tg, tl = batch()
    for mode, args in (("joint", (tg, tl)), ("continuous", (tg, tl)), ("refine", ())):
        torch.manual_seed(5)
        via_call = tiny_sitok()(mel, lengths, *args, mode=mode)
        torch.manual_seed(5)
        direct = getattr(tiny_sitok(), f"forward_{mode}")(mel, lengths, *args)
        assert via_call.keys() == direct.keys()
        torch.testing.assert_close(via_call["loss"], direct["loss"])
    with pytest.raises(ValueError, match="mode must be one of"):
        tiny_sitok()(mel, lengths, mode="phase_a")


def test_initialisation_by_module_type():
    """Linear layers start at N(0, 0.02) with zero bias; AdaRMSNorm gains at weight 0, bias 1 (a plain
    RMSNorm) and the shortcut step-size embedding's output at 0 (a no-op)."""
    from sitok.layers import AdaRMSNorm

    m = tiny_sitok(shortcut=True)
    gains = [g.gain for g in m.modules() if isinstance(g, AdaRMSNorm)]
    assert gains and all(not g.weight.any() and bool((g.bias == 1).all()) for g in gains)
    d_out = m.decoder.d_embed.mlp[-1]
    assert not d_out.weight.any() and not d_out.bias.any()
    assert 0.015 < float(m.in_proj.weight.detach().std()) < 0.025 and not m.in_proj.bias.any()


def test_causal_encoder_ignores_the_future():
    m = tiny_sitok().eval()
    mel = torch.randn(1, 40, 128)
    mel2 = mel.clone()
    mel2[:, 20:] = torch.randn(1, 20, 128)  # frames of tokens >= 5 change
    z1, _ = m.encode_latents(mel)
    z2, _ = m.encode_latents(mel2)
    torch.testing.assert_close(z1[:, :5], z2[:, :5])
    assert not torch.allclose(z1[:, 5:], z2[:, 5:])


def test_codes_do_not_depend_on_padding_or_batch_mates():
    m = tiny_sitok().eval()
    mel, lengths, _, _ = batch()
    codes = m.encode(mel, lengths)
    alone = m.encode(mel[1:2, : lengths[1]], lengths[1:2])
    t1 = int(m.token_lengths(lengths)[1])
    assert torch.equal(codes[1, :, :t1], alone[0])


@pytest.mark.parametrize(
    "decoder,prediction,factor", [("regression", "velocity", 10), ("diffusion", "x", 2), ("diffusion", "velocity", 1.3)]
)
def test_tiny_model_overfits_one_batch(decoder, prediction, factor):
    """Encoder + VQ + decoder memorise one batch. The regression decoder's L1 drops >= 10x; the
    diffusion losses, scored at fresh random (t, noise) every step, fall more slowly."""
    m = tiny_sitok(decoder=decoder, prediction=prediction, ctc_weight=0.0, quantizer_kwargs={"dead_threshold": 0.9})
    g = torch.Generator().manual_seed(0)
    mel = torch.randn(2, 6, 1, 128, generator=g).repeat(1, 1, 4, 1).reshape(2, 24, 128)  # a random frame per token
    lengths = torch.tensor([24, 16])
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for step in range(250):
        torch.manual_seed(step)
        out = m(mel, lengths)
        opt.zero_grad()
        out["diff"].backward()
        opt.step()
        losses.append(float(out["diff"].detach()))
    first, last = np.mean(losses[:5]), np.mean(losses[-10:])
    assert first / last >= factor, (first, last)
    assert out["stats"]["perplexity"] > 9  # the 10 distinct tokens got distinct codes (dead-code restarts)


DECODE_IN_A_FRESH_PROCESS = """
import sys, numpy as np, torch
from sitok.infer import Tokenizer
tok = Tokenizer.from_pretrained(sys.argv[1], vocoder="griffin_lim")
codes = torch.from_numpy(np.load(sys.argv[2]))
np.save(sys.argv[3], tok.decode_mel(codes, steps=3, seed=int(sys.argv[4])).numpy())
np.save(sys.argv[5], tok.encode(np.load(sys.argv[6]), 24000).numpy())
"""


def test_same_seed_same_output_across_save_load_and_processes(tmp_path):
    """A model directory reloaded in another process encodes to the same codes, and decoding with
    the same seed gives bit-identical mels (a different seed does not)."""
    import subprocess
    import sys

    from conftest import write_model_dir

    model_dir = write_model_dir(str(tmp_path / "model"), seed=3)
    torch.manual_seed(3)
    tok = Tokenizer(SiTok(SiTokConfig(**TINY_MODEL)), GlobalCMVN.paper())
    wav = (np.random.default_rng(0).standard_normal(36000) * 0.1).astype(np.float32)
    codes = tok.encode(wav, 24000)
    np.save(tmp_path / "codes.npy", codes.numpy())
    np.save(tmp_path / "wav.npy", wav)
    torch.manual_seed(1234)  # the global RNG state must not matter
    mel = tok.decode_mel(codes, steps=3, seed=7)
    for seed in (7, 8):
        r = subprocess.run(
            [
                sys.executable,
                "-c",
                DECODE_IN_A_FRESH_PROCESS,
                model_dir,
                str(tmp_path / "codes.npy"),
                str(tmp_path / f"mel{seed}.npy"),
                str(seed),
                str(tmp_path / "codes2.npy"),
                str(tmp_path / "wav.npy"),
            ],
            capture_output=True,
            text=True,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
            check=False,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        assert np.array_equal(np.load(tmp_path / "codes2.npy"), codes.numpy())
    assert np.array_equal(np.load(tmp_path / "mel7.npy"), mel.numpy())
    assert not np.allclose(np.load(tmp_path / "mel8.npy"), mel.numpy())


def test_paper_configs_count_within_5_percent():
    paper = {8: 0.63e9, 12: 0.88e9, 16: 1.12e9, 24: 1.61e9}
    for layers, target in paper.items():
        cfg = SiTokConfig(
            hidden=1536,
            intermediate=4096,
            heads=16,
            enc_layers=layers,
            dec_layers=layers,
            ctc_layers=4,
            vocab_size=32100,
            time_embed_dim=512,
            x_skip=False,
        )
        total = count_parameters(cfg)["total"]
        assert abs(total / target - 1) < 0.05, (layers, total)


# ---- the public API -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    torch.manual_seed(0)
    model = SiTok(SiTokConfig(**TINY_MODEL))
    return Tokenizer(model, GlobalCMVN.paper())


def voiced(sr: int, seconds: float = 2.0) -> np.ndarray:
    """One continuous signal sampled at ``sr``: a gliding 100-180 Hz pulse train with harmonics
    below 3.6 kHz (so every rate from 8 kHz up holds all of it) and a syllable-rate envelope."""
    t = np.arange(int(sr * seconds)) / sr
    phase = 2 * np.pi * (140 * t - 40 / (2 * np.pi * 0.7) * np.cos(2 * np.pi * 0.7 * t))  # f0 = 140 + 40 sin
    x = sum(np.sin(k * phase) / k for k in range(1, 20))
    return (0.1 * x * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)).astype(np.float32)


# Measured on this tiny untrained model (2 s, 25 tokens): code agreement with the 24 kHz codes
# 0.80 at 8 kHz, 0.96 at 16 kHz, 1.0 at 44.1 and 48 kHz; mean |difference| of the normalised
# log-mel in the bands below 3.6 kHz (interior frames) 1.2e-3 at 8 kHz, <= 1.2e-4 at the others.
# A rate taken wrongly (no resampling: a 2x time stretch at 48 kHz) gives ~1/64 agreement.
@pytest.mark.parametrize("sr,agreement", [(8000, 0.7), (16000, 0.9), (44100, 0.9), (48000, 0.9)])
def test_encode_any_rate(tok, sr, agreement):
    from sitok.data.mel import mel_filterbank

    ref, ref_mel = tok.encode(voiced(24000), 24000), tok.mel(voiced(24000), 24000)
    codes, mel = tok.encode(voiced(sr), sr), tok.mel(voiced(sr), sr)
    assert codes.shape == ref.shape == (1, 25) and codes.dtype == torch.long
    assert float((codes == ref).float().mean()) >= agreement
    centre_hz = mel_filterbank(tok.mel_cfg).argmax(0) * tok.sample_rate / tok.mel_cfg.n_fft
    low = centre_hz < 3600
    assert mel.shape == ref_mel.shape and float((mel - ref_mel)[2:-2, low].abs().mean()) < 0.01


def test_encode_stereo_both_layouts(tok):
    mono = (np.random.default_rng(0).standard_normal(24000) * 0.1).astype(np.float32)
    ref = tok.encode(mono, 24000)
    assert torch.equal(tok.encode(np.stack([mono, mono]), 24000), ref)  # [C, N]
    assert torch.equal(tok.encode(np.stack([mono, mono], 1), 24000), ref)  # [N, C]
    with pytest.raises(ValueError):
        tok.encode(np.array([np.nan] * 100, np.float32), 24000)


@pytest.mark.parametrize(
    "bad",
    [
        torch.tensor([[64, 1, 2]]),
        torch.tensor([[-1, 1, 2]]),
        torch.tensor([[1.0, 2.0]]),
        torch.tensor([1, 2, 3]),
        torch.zeros(2, 3, dtype=torch.long),
        torch.zeros(1, 0, dtype=torch.long),
    ],
)
def test_decode_rejects_bad_codes(tok, bad):
    with pytest.raises(ValueError):
        tok.decode(bad)


def test_decode_length_and_determinism(tok):
    codes = torch.randint(0, 64, (1, 5))
    wav, sr = tok.decode(codes, steps=2)
    assert sr == 24000 and wav.shape == (5 * 4 * 480,)
    wav2, _ = tok.decode(codes, steps=2)
    assert torch.equal(wav, wav2)
    batch_wav, _ = tok.decode(codes[None].repeat(2, 1, 1), steps=2)
    assert batch_wav.shape == (2, 5 * 4 * 480)
    info = tok.info()
    assert info["tokens_per_second"] == 12.5 and info["bits_per_second"] == 75.0


@pytest.mark.parametrize("name", ["S", "B", "L", "XL"])
def test_paper_config_forward_on_a_tiny_input(name):
    """Paper-scale configs instantiate with real weights (fp32, up to ~6 GB) and run one forward."""
    import gc

    from sitok.models.loading import load_model_config

    cfg = SiTokConfig.from_dict(load_model_config(os.path.join(ROOT, "recipes/tokenizer/hparams", f"{name}.yaml")))
    torch.manual_seed(0)
    model = SiTok(cfg)
    mel, lengths, tg, tl = batch(b=2, t=26)
    with torch.no_grad():
        out = model(mel, lengths, tg, tl)
        codes = model.eval().encode(mel, lengths)
    assert torch.isfinite(out["loss"]) and codes.shape == (2, 1, 7) and int(codes.max()) < 65536
    assert model.config.bits_per_second == 200.0
    del model, out
    gc.collect()


def test_ctc_dropout_acts_in_training_only():
    """The CTC decoder's dropout changes the training logits and nothing at inference: the same weights
    read with dropout 0.5 or 0 give the same eval-mode logits."""
    torch.manual_seed(0)
    m = tiny_sitok(ctc_dropout=0.5)
    plain = tiny_sitok()
    plain.load_state_dict(m.state_dict())
    codes = m.eval().encode(*batch()[:2])
    torch.testing.assert_close(m.ctc_logits(codes), plain.eval().ctc_logits(codes))
    m.train()
    assert not torch.allclose(m.ctc_logits(codes), m.ctc_logits(codes))
    with pytest.raises(ValueError, match="ctc_dropout"):
        SiTokConfig.from_dict({**TINY_MODEL, "ctc_dropout": 1.5})
