"""The Vocos-style vocoder: output length and alignment, the model directory round trip,
vocoder selection, the training recipe (tiny config: trains, exports, a killed run resumes to
identical losses) and the offline quality judges."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_train import tiny_dump  # noqa: F401  (the module-scoped tiny corpus + dump fixture)

from sitok.data.mel import MelConfig, MelFrontend
from sitok.infer.vocoder import GriffinLimVocoder, VocosVocoder, export_vocoder, load_vocoder
from sitok.models.vocos import Vocos, VocosConfig
from sitok.train.vocoder import SegmentCropper, load_generator_weights, manifest_segments, read_train_stats

from conftest import ROOT, run_one_thread, tone

TRAIN = os.path.join(ROOT, "recipes", "vocoder", "train.py")
TINY = os.path.join(ROOT, "recipes", "vocoder", "hparams", "tiny.yaml")
HOP, N_FFT = 480, 1920


def tiny_generator(seed=0) -> Vocos:
    torch.manual_seed(seed)
    return Vocos(VocosConfig(dim=32, intermediate=64, layers=1)).eval()


def frontend_stft(x: torch.Tensor) -> torch.Tensor:
    """Complex STFT [B, F, T] framed exactly like sitok.data.mel (frame k centred on k*hop + hop/2)."""
    x = F.pad(x, (0, (-x.shape[-1]) % HOP))
    side = (N_FFT - HOP) // 2
    x = F.pad(x.unsqueeze(1), (side, side), mode="reflect").squeeze(1)
    return torch.stft(x, N_FFT, HOP, N_FFT, torch.hann_window(N_FFT), center=False, return_complex=True)


def speech_like(seconds=2.0, sr=24000, seed=0) -> np.ndarray:
    """A glottal pulse train (F0 100-140 Hz) through three vowel formants, three syllables per second."""
    from scipy.signal import lfilter

    n = int(seconds * sr)
    t = np.arange(n) / sr
    phase = np.cumsum((120 + 20 * np.sin(2 * np.pi * 0.7 * t)) / sr)
    pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(float)
    y = np.zeros(n)
    for f, bw in ((700, 130), (1220, 70), (2600, 160)):
        r = np.exp(-np.pi * bw / sr)
        y += lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * f / sr), r * r], pulses)
    y *= 0.5 * (1 - np.cos(2 * np.pi * 3 * t))
    return (0.3 * y / np.abs(y).max()).astype(np.float32)


# ---------------------------------------------------------------------------------------
# shapes and alignment
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("frames", [1, 2, 7, 50])
def test_output_length_is_hop_times_frames(frames):
    g = tiny_generator()
    with torch.no_grad():
        assert g(torch.randn(3, frames, 128)).shape == (3, frames * HOP)
        assert g(torch.randn(frames, 128)).shape == (frames * HOP,)  # [T, 128] -> [T * hop]
    voc = VocosVocoder(g)
    assert voc(torch.randn(2, frames, 128)).shape == (2, frames * HOP)
    if frames >= 4:  # same contract as the Griffin-Lim fallback (whose torch STFT needs >= 4 frames)
        assert GriffinLimVocoder(n_iter=2)(torch.randn(frames, 128)).shape == (frames * HOP,)


def test_wrong_mel_size_raises():
    with pytest.raises(ValueError, match="128"):
        tiny_generator()(torch.randn(1, 5, 80))


def test_istft_head_inverts_the_frontend_framing_exactly():
    """The spectrum of a sine, framed like the mel frontend (frame k centred on k*hop + hop/2),
    comes back from the head's inverse STFT as the same sine at the same samples, edges included;
    in the interior it equals torch.istft shifted by hop/2."""
    head = tiny_generator().head
    n = HOP * 40
    t = torch.arange(n) / 24000
    x = torch.stack([0.5 * torch.sin(2 * math.pi * 440 * t), 0.3 * torch.sin(2 * math.pi * 97 * t + 1.0)])
    spec = frontend_stft(x)
    assert spec.shape[-1] == 40
    y = head.istft(spec)
    assert y.shape == (2, n)
    assert torch.allclose(y, x, atol=1e-5)
    ref = torch.istft(spec, N_FFT, HOP, N_FFT, torch.hann_window(N_FFT), center=True)  # frame k at k * hop
    assert torch.allclose(y[:, HOP : HOP + 30 * HOP], ref[:, HOP // 2 : HOP // 2 + 30 * HOP], atol=1e-5)
    # a shifted sine is not reproduced: the check can fail
    assert not torch.allclose(head.istft(frontend_stft(torch.roll(x, HOP // 2, -1))), x, atol=1e-2)


@pytest.mark.parametrize("k", [3, 10])
def test_one_frame_is_centred_on_k_hop_plus_half_hop(k):
    """A single non-zero frame (a hand-built 1 kHz cosine spectrum) produces a burst whose energy
    centroid is sample k * hop + hop / 2."""
    head = tiny_generator().head
    spec = torch.zeros(1, N_FFT // 2 + 1, 16, dtype=torch.complex64)
    spec[0, 80, k] = 500.0  # bin 80 = 1 kHz
    y = head.istft(spec)[0]
    energy = y.double() ** 2
    centroid = float((energy * torch.arange(y.numel(), dtype=torch.float64)).sum() / energy.sum())
    assert centroid == pytest.approx(k * HOP + HOP / 2, abs=1.0)


def test_priors_give_a_sensible_untrained_vocoder():
    """With the magnitude prior (mel filterbank pseudo-inverse) and integrated phase, an untrained
    generator already returns audio whose mel is close to its input; without them it does not."""
    x = torch.from_numpy(speech_like(1.0))
    frontend = MelFrontend()
    mel = frontend(x)
    errors = {}
    for priors in (False, True):
        torch.manual_seed(0)
        g = Vocos(VocosConfig(dim=32, intermediate=64, layers=1, magnitude_prior=priors, integrate_phase=priors)).eval()
        with torch.no_grad():
            y = g(mel)
        assert y.shape == x.shape
        errors[priors] = float((frontend(y) - mel).abs().mean())
    assert errors[True] < 0.8 and errors[False] > 1.5, errors


def test_generator_sizes():
    assert 3e6 < Vocos(VocosConfig(dim=256, intermediate=768, layers=8)).num_parameters() < 5e6  # mini
    assert 13e6 < Vocos(VocosConfig()).num_parameters() < 15e6  # paper size (default config)


# ---------------------------------------------------------------------------------------
# model directory and selection
# ---------------------------------------------------------------------------------------
def test_export_and_from_pretrained_round_trip(tmp_path):
    g = tiny_generator(seed=3)
    out = export_vocoder(g, str(tmp_path / "vocoder"), {"note": "test"})
    assert sorted(os.listdir(out)) == ["config.json", "model.pt"]
    assert not os.path.exists(str(tmp_path / "vocoder.tmp"))
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["type"] == "vocos" and config["model"]["dim"] == 32 and config["note"] == "test"
    assert config["mel"] == MelConfig().to_dict()
    torch.load(os.path.join(out, "model.pt"), weights_only=True)  # plain tensors only
    voc = VocosVocoder.from_pretrained(out)
    mel = torch.randn(2, 9, 128)
    with torch.no_grad():
        assert torch.equal(voc(mel), g(mel))
    assert voc.name == "vocos" and voc.num_parameters() == g.num_parameters()


def test_load_vocoder_selection(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    assert isinstance(load_vocoder("auto", str(model_dir)), GriffinLimVocoder)
    assert isinstance(load_vocoder("auto", None), GriffinLimVocoder)
    assert isinstance(load_vocoder("griffin_lim", None), GriffinLimVocoder)
    with pytest.raises(FileNotFoundError, match=str(model_dir / "vocoder")):
        load_vocoder("vocos", str(model_dir))
    with pytest.raises(FileNotFoundError, match="vocoder"):
        load_vocoder("vocos", None)
    with pytest.raises(ValueError, match="unknown vocoder"):
        load_vocoder("hifigan", str(model_dir))
    export_vocoder(tiny_generator(), str(model_dir / "vocoder"))
    assert isinstance(load_vocoder("auto", str(model_dir)), VocosVocoder)
    assert isinstance(load_vocoder("vocos", str(model_dir)), VocosVocoder)
    assert isinstance(load_vocoder("vocos", str(model_dir / "vocoder")), VocosVocoder)  # the directory itself
    assert isinstance(load_vocoder("griffin_lim", str(model_dir)), GriffinLimVocoder)
    with pytest.raises(ValueError, match="trained on mel"):
        load_vocoder("vocos", str(model_dir), MelConfig(n_mels=80))


# ---------------------------------------------------------------------------------------
# training recipe
# ---------------------------------------------------------------------------------------
def train_args(root, exp, epochs=2):
    return [
        sys.executable,
        TRAIN,
        TINY,
        "--dump_dir",
        str(root / "dump"),
        "--exp_dir",
        str(exp),
        "--number_of_epochs",
        str(epochs),
        "--noprogressbar",
    ]


def start(cmd, log):
    """Start a training run in the background (its own process group), output to ``log``."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "w") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def test_train_export_kill_and_resume(tiny_dump):  # noqa: F811
    """The reference run and the run to be killed go side by side (one thread each)."""
    root, _ = tiny_dump
    ref, exp = root / "voc_ref", root / "voc_killed"
    p_ref = start(train_args(root, ref), root / "voc_ref.log")
    p = start(train_args(root, exp), root / "voc_killed.log")
    deadline = time.time() + 120
    while time.time() < deadline and not (exp / "train_stats.jsonl").exists():
        time.sleep(0.01)
    os.killpg(p.pid, signal.SIGKILL)  # dies during epoch 2: resumes from its epoch-1 checkpoint
    p.wait()
    assert p_ref.wait(timeout=300) == 0, (root / "voc_ref.log").read_text()[-3000:]
    stats = read_train_stats(str(ref))
    assert [s["epoch"] for s in stats] == [1, 2]
    assert stats[0]["train"]["gan_steps"] > 0 and stats[-1]["train"]["gan_steps"] == stats[-1]["train"]["steps"]
    for key in ("mel", "adv", "fm", "d_loss", "phase", "amplitude", "consistency", "steps_per_s", "nonfinite_skipped"):
        assert key in stats[-1]["train"], key
    assert "mel_l1" in stats[-1]["valid"] and "pesq_wb" in stats[-1]["valid"]
    assert sorted(os.listdir(ref / "model")) == ["config.json", "model.pt"]
    voc = load_vocoder("vocos", str(ref / "model"))
    wav = torch.from_numpy(tone(1.0))
    assert voc(MelFrontend()(wav)).shape == (24000,)
    done_before = len(read_train_stats(str(exp)))
    assert done_before == 1, "the kill came too late to test resuming"
    assert not (exp / "model").exists()
    r = run_one_thread(train_args(root, exp))
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = read_train_stats(str(ref)), read_train_stats(str(exp))
    assert [s["epoch"] for s in b] == [1, 2]
    for x, y in zip(a, b):
        for key in ("loss", "mel", "adv", "fm", "d_loss", "phase", "amplitude", "consistency"):
            assert x["train"][key] == pytest.approx(y["train"][key], rel=1e-5), (x["epoch"], key)
        assert x["valid"]["mel_l1"] == pytest.approx(y["valid"]["mel_l1"], rel=1e-5)
        assert x["optimizer_step"] == y["optimizer_step"]
    sa = torch.load(ref / "model" / "model.pt", weights_only=True)
    sb = torch.load(exp / "model" / "model.pt", weights_only=True)
    assert all(torch.allclose(sa[k], sb[k], rtol=1e-5, atol=1e-6) for k in sa)


def test_the_time_budget_is_planned_in_generator_steps(tiny_dump, tmp_path, monkeypatch):  # noqa: F811
    """max_train_minutes becomes generator steps. The recipe runs in this process on a clock that
    advances 10 s per generator step (3 steps per epoch): after epoch 1 (30 s) an 80-s budget
    leaves room for 5 more steps, so the run stops 2 steps into epoch 3, checkpoints that step and
    exports; a rerun trains nothing."""
    import importlib.util
    import types

    import sitok.train.plan as plan_module
    from sitok.train.vocoder import VocoderBrain

    spec = importlib.util.spec_from_file_location("vocoder_train_recipe", TRAIN)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    clock = [0.0]
    monkeypatch.setattr(plan_module, "_now", lambda: clock[0])
    monkeypatch.setattr(recipe, "time", types.SimpleNamespace(time=lambda: clock[0]))
    fit_batch = VocoderBrain.fit_batch

    def ten_seconds_a_step(self, batch):
        clock[0] += 10.0
        return fit_batch(self, batch)

    monkeypatch.setattr(VocoderBrain, "fit_batch", ten_seconds_a_step)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    exp = tmp_path / "exp"
    argv = train_args(tiny_dump[0], exp, epochs=10)[2:] + ["--max_train_minutes", str(80 / 60)]
    recipe.main(argv)
    stats = read_train_stats(str(exp))
    assert [(s["epoch"], s["optimizer_step"]) for s in stats] == [(1, 3), (2, 6), (3, 8)]
    assert clock[0] == 80.0
    assert "8 steps (2.67 epochs) fit max_train_minutes" in (exp / "log.txt").read_text()
    assert sorted(os.listdir(exp / "model")) == ["config.json", "model.pt"]
    recipe.main(argv)  # resumes the saved plan: nothing left to train
    assert len(read_train_stats(str(exp))) == 3 and clock[0] == 80.0


@pytest.mark.parametrize("name", ["tiny", "mini", "mini_gpu", "paper"])
def test_every_vocoder_config_loads(name, tmp_path):
    """Each hparams file builds its generator and discriminator; mini_gpu trains the mini
    generator (the same architecture, so either drops into the mini recipe)."""
    from hyperpyyaml import load_hyperpyyaml

    def load(n):
        with open(os.path.join(ROOT, "recipes", "vocoder", "hparams", f"{n}.yaml"), encoding="utf-8") as fh:
            return load_hyperpyyaml(fh, {"exp_dir": str(tmp_path / n)})

    hp = load(name)
    assert isinstance(hp["generator"], Vocos) and hp["discriminator"] is not None
    for key in ("init_from", "checkpoint_every_epochs", "gan_start_step", "max_train_minutes", "num_workers"):
        assert key in hp, key
    if name == "mini_gpu":
        assert hp["generator_config"] == load("mini")["generator_config"]
        assert hp["gan_start_step"] < hp["number_of_epochs"] * 27  # the GAN joins within the measured run


def test_init_from_and_checkpoint_interval(tiny_dump, tmp_path):  # noqa: F811
    """--init_from starts the generator from an exported vocoder; checkpoint_every_epochs=2 over
    3 epochs saves after epoch 2 and at the last epoch only."""
    root, _ = tiny_dump
    export_vocoder(tiny_generator(seed=5), str(tmp_path / "init"))
    exp = tmp_path / "exp"
    r = run_one_thread(
        train_args(root, exp, epochs=3) + ["--init_from", str(tmp_path / "init"), "--checkpoint_every_epochs", "2"]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    log = (exp / "log.txt").read_text()
    assert "generator initialised from " + str(tmp_path / "init" / "model.pt") in log
    saved = [ln for ln in log.splitlines() if "Saved an end-of-epoch checkpoint" in ln]
    assert len(saved) == 2, saved
    assert [s["epoch"] for s in read_train_stats(str(exp))] == [1, 2, 3]


def test_load_generator_weights(tmp_path):
    export_vocoder(tiny_generator(seed=5), str(tmp_path / "model" / "vocoder"))
    g = tiny_generator(seed=6)
    ref = tiny_generator(seed=5).state_dict()
    assert not all(torch.equal(v, ref[k]) for k, v in g.state_dict().items())
    load_generator_weights(g, str(tmp_path / "model"))  # a model directory holding vocoder/
    assert all(torch.equal(v, ref[k]) for k, v in g.state_dict().items())
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_generator_weights(g, str(tmp_path / "nowhere"))
    with pytest.raises(RuntimeError):  # another architecture
        load_generator_weights(Vocos(VocosConfig(dim=48, intermediate=64, layers=1)), str(tmp_path / "model"))


class _Crops(torch.utils.data.Dataset):
    def __init__(self, cropper):
        self.cropper = cropper

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return self.cropper.start_frame(f"utt{i}", 500)


def test_cropper_epoch_reaches_persistent_workers():
    """Persistent data-loader workers hold a copy of the cropper made when they were forked:
    the epoch set in the main process must still change their crops."""
    cropper = SegmentCropper(seed=1, segment_frames=50, hop=480)
    loader = torch.utils.data.DataLoader(_Crops(cropper), batch_size=8, num_workers=1, persistent_workers=True)
    seen = []
    for epoch in (0, 1, 2):
        cropper.epoch = epoch
        seen.append(next(iter(loader)).tolist())
    for epoch, starts in enumerate(seen):
        cropper.epoch = epoch
        assert starts == [cropper.start_frame(f"utt{i}", 500) for i in range(8)]
    assert seen[0] != seen[1] != seen[2]


# ---------------------------------------------------------------------------------------
# quality judges
# ---------------------------------------------------------------------------------------
def test_pesq_and_stoi_of_identical_and_degraded_audio():
    from sitok.eval.quality import pesq_wb, stoi

    x = speech_like()
    assert pesq_wb(x, x, 24000) > 4.0
    assert stoi(x, x, 24000) > 0.99
    noisy = x + 0.05 * np.random.default_rng(0).standard_normal(x.size).astype(np.float32)
    assert pesq_wb(x, noisy, 24000) < 3.0
    assert stoi(x, noisy, 24000) < 0.95
    assert pesq_wb(x, np.concatenate([x, x]), 24000) > 4.0  # lengths trimmed to the common minimum
    assert math.isnan(pesq_wb(np.zeros(48000), np.zeros(48000), 24000))  # no speech: NaN, not a crash


def test_dnsmos_prefers_speech_to_noise():
    from sitok.eval.quality import dnsmos

    clean = dnsmos(speech_like(), 24000)
    noise = dnsmos(0.1 * np.random.default_rng(0).standard_normal(48000), 24000)
    assert set(clean) == {"sig", "bak", "ovrl", "p808"} and all(isinstance(v, float) for v in clean.values())
    assert noise["ovrl"] < clean["ovrl"] - 0.5
    assert noise["bak"] < clean["bak"]


def test_manifest_segments_reads_slices_only(tmp_path):
    """Rows of a segmented data dir carry start/stop and are read as slices; whole files are not listed."""
    csv_path = tmp_path / "manifest.csv"
    csv_path.write_text(
        "ID,duration,wav,spk_id,wrd,start,stop\n"
        "rec1-0000,4.5,/a/rec1.flac,s1,,0.25,4.75\n"
        "rec1-0001,3.0,/a/rec1.flac,s1,,4.75,7.75\n"
        "utt2,2.0,/a/utt2.flac,s1,hello,,\n"
    )
    assert manifest_segments(str(csv_path)) == {"rec1-0000": (0.25, 4.75), "rec1-0001": (4.75, 7.75)}
    plain = tmp_path / "plain.csv"
    plain.write_text("ID,duration,wav,spk_id,wrd\nutt2,2.0,/a/utt2.flac,s1,hello\n")
    assert manifest_segments(str(plain)) == {}
