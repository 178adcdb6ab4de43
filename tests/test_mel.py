"""The mel frontend (paper Appendix D.3) against an independent numpy + librosa computation with the same
parameters: 24 kHz, n_fft = window = 1920 (periodic Hann), hop 480 (50 Hz), 128 Slaney mel bands over 0-12 kHz,
magnitude, natural log."""

import json

import numpy as np
import pytest
import torch

from sitok.data.mel import CMVNStats, GlobalCMVN, MelConfig, MelFrontend

from conftest import tone


def reference_logmel(x: np.ndarray) -> np.ndarray:
    """Direct STFT formula with numpy + librosa's Slaney filterbank (no torch, no torchaudio)."""
    import librosa

    sr, n_fft, hop = 24000, 1920, 480
    n = len(x)
    x = np.pad(x, (0, (-n) % hop))
    side = (n_fft - hop) // 2
    x = np.pad(x, (side, side), mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = np.stack([x[i : i + n_fft] for i in range(0, len(x) - n_fft + 1, hop)])
    mag = np.abs(np.fft.rfft(frames * window, axis=1))  # [T, 961]
    fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=128, fmin=0.0, fmax=12000.0, htk=False, norm="slaney")
    return np.log(np.maximum(mag @ fb.T, 1e-5))


def test_paper_parameters():
    cfg = MelConfig()
    assert (cfg.sample_rate, cfg.n_fft, cfg.win_length, cfg.hop_length, cfg.n_mels) == (24000, 1920, 1920, 480, 128)
    assert (cfg.f_min, cfg.f_max, cfg.power) == (0.0, 12000.0, 1.0)
    assert cfg.frame_rate == 50.0


@pytest.mark.parametrize("seconds", [1.0, 1.37])
def test_matches_independent_stft(seconds):
    rng = np.random.default_rng(0)
    x = (tone(seconds) + 0.05 * rng.standard_normal(int(seconds * 24000))).astype(np.float32)
    ours = MelFrontend()(torch.from_numpy(x)).double().numpy()
    ref = reference_logmel(x.astype(np.float64))
    assert ours.shape == ref.shape == (int(np.ceil(len(x) / 480)), 128)
    np.testing.assert_allclose(ours, ref, atol=2e-3, rtol=0)
    # the log floor is active somewhere only if some bins are below 1e-5; never above the reference
    assert np.abs(ours - ref).mean() < 1e-4


def test_shapes_at_50hz_and_batching():
    fe = MelFrontend()
    assert fe(torch.zeros(24000) + 0.1).shape == (50, 128)
    assert fe(torch.zeros(24001) + 0.1).shape == (51, 128)
    assert fe(torch.zeros(480) + 0.1).shape == (1, 128)  # shorter than the reflect pad: still works
    batch = torch.from_numpy(np.stack([tone(2.0), tone(2.0, freq=300)]))
    out = fe(batch)
    assert out.shape == (2, 100, 128)
    torch.testing.assert_close(out[1], fe(batch[1]))
    assert fe.num_frames(torch.tensor([24000, 24001, 1])).tolist() == [50, 51, 1]


def test_frame_k_is_centred_on_sample_k_hop():
    x = torch.zeros(24000)
    x[10 * 480 + 240] = 1.0  # click at the centre of frame 10
    energy = MelFrontend()(x).exp().sum(1)
    assert int(energy.argmax()) == 10


def test_cmvn_round_trip_and_stats(tmp_path):
    rng = np.random.default_rng(1)
    frames = [rng.normal(-5, 3, size=(n, 128)) for n in (40, 70)]
    stats = CMVNStats()
    for f in frames:
        stats.add(f)
    allf = np.concatenate(frames)
    g = GlobalCMVN.from_stats(stats, mode="global")
    assert g.mean.item() == pytest.approx(allf.mean(), abs=1e-5)
    assert (g.std.item() ** 2) == pytest.approx(allf.var(), rel=1e-5)
    p = GlobalCMVN.from_stats(stats, mode="per_bin")
    np.testing.assert_allclose(p.mean.numpy(), allf.mean(0), atol=1e-5)
    x = torch.from_numpy(allf).float()
    for norm in (g, p, GlobalCMVN.paper()):
        torch.testing.assert_close(norm.inverse(norm(x)), x, atol=1e-4, rtol=1e-5)
    y = p(x)
    assert y.mean().abs() < 1e-4 and (y.std(0) - 1).abs().max() < 1e-2
    g.save(str(tmp_path / "cmvn.json"))
    g2 = GlobalCMVN.load(str(tmp_path / "cmvn.json"))
    torch.testing.assert_close(g2(x), g(x))
    assert json.load(open(tmp_path / "cmvn.json"))["mode"] == "global"
    merged = CMVNStats().merge(stats)
    assert merged.count == stats.count
    paper = GlobalCMVN.paper()
    assert paper.mean.item() == pytest.approx(-4.92) and paper.std.item() ** 2 == pytest.approx(8.14)
