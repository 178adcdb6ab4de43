"""sitok encode / decode / resynth over many files: a directory or a list file, batched like one
file at a time, resumed after a kill, a bad input named in failed.tsv while the rest go on."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from conftest import run_cli, tone, write


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    files = []
    for i in range(40):
        sub = "a" if i % 2 else "b/c"
        files.append(write(str(root / "wavs" / sub / f"u{i:02d}.wav"), tone(0.3 + 0.05 * (i % 9), freq=110 + 9 * i)))
    return root, files, quiet_model_dir(root / "model")


def quiet_model_dir(path):
    """A tiny untrained model with a tiny Vocos vocoder whose speech stays inside [-1, 1] (peak
    ~0.06: a CMVN with mean -1 and a small spread). With the paper's CMVN such a model decodes a
    log-mel up to ~15, audio far beyond full scale, and Griffin-Lim's 32 iterations turn the
    1e-6 differences of a padded batch into several 16-bit steps; the feed-forward vocoder does not."""
    import torch

    from sitok.data.mel import GlobalCMVN
    from sitok.infer.vocoder import export_vocoder
    from sitok.models.loading import write_model_dir as write_dir
    from sitok.models.vocos import Vocos, VocosConfig

    from conftest import tiny_sitok

    write_dir(str(path), tiny_sitok(0), cmvn=GlobalCMVN(-1.0, 0.09))
    torch.manual_seed(1)
    vocos = Vocos(VocosConfig(dim=16, intermediate=32, layers=1, magnitude_prior=True))
    export_vocoder(vocos, os.path.join(str(path), "vocoder"))
    return str(path)


def npy(path):
    return np.load(path, allow_pickle=False)


def test_directory_encodes_and_decodes_as_one_file_at_a_time(corpus, tmp_path):
    from sitok.infer import Tokenizer

    root, files, model = corpus
    run_cli("encode", str(root / "wavs"), "-o", str(tmp_path / "codes"), "-m", model, "--batch-size", "8")
    tok = Tokenizer.from_pretrained(model)
    for f in files[:6] + files[-3:]:
        rel = os.path.relpath(f, root / "wavs")
        out = tmp_path / "codes" / rel.replace(".wav", ".npy")
        assert np.array_equal(npy(out), tok.encode(f).numpy()), rel
    r = run_cli("decode", str(tmp_path / "codes"), "-o", str(tmp_path / "dec"), "-m", model, "--steps", "1")
    assert "40 written, 0 already there, 0 failed" in r.stderr
    for f in files[:2] + files[-1:]:  # different lengths, padded in their batches
        rel = os.path.relpath(f, root / "wavs")
        single = str(tmp_path / f"single_{os.path.basename(f)}")
        run_cli(
            "decode", str(tmp_path / "codes" / rel.replace(".wav", ".npy")), "-o", single, "-m", model, "--steps", "1"
        )
        batched, alone = sf.read(tmp_path / "dec" / rel)[0], sf.read(single)[0]
        assert 0.01 < np.abs(alone).max() < 0.9, rel  # audible, not clipped
        assert batched.shape == alone.shape and np.abs(batched - alone).max() <= 2 / 32768, rel  # 16-bit rounding
    r = run_cli("decode", str(tmp_path / "codes"), "-o", str(tmp_path / "dec"), "-m", model, "--steps", "1")
    assert "0 written, 40 already there" in r.stderr  # a re-run has nothing to do


def test_killed_run_resumes_to_the_same_outputs(corpus, tmp_path):
    root, files, model = corpus
    ref, out = tmp_path / "ref", tmp_path / "out"
    run_cli("encode", str(root / "wavs"), "-o", str(ref), "-m", model, "--batch-size", "1")
    cmd = [sys.executable, "-m", "sitok.cli", "encode", str(root / "wavs"), "-o", str(out), "-m", model]
    p = subprocess.Popen(cmd + ["--batch-size", "1"], start_new_session=True, stderr=subprocess.DEVNULL)

    def written():
        return [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs if f.endswith(".npy")]

    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None and len(written()) < 5:
        time.sleep(0.01)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    before = len(written())
    assert 5 <= before < 40, "the kill came too late to test resuming"
    r = run_cli("encode", str(root / "wavs"), "-o", str(out), "-m", model, "--batch-size", "1")
    assert f"{40 - before} written, {before} already there, 0 failed" in r.stderr
    assert len(written()) == 40 and not [f for d, _, fs in os.walk(out) for f in fs if not f.endswith(".npy")]
    for f in written():
        assert np.array_equal(npy(f), npy(str(f).replace(str(out), str(ref)))), f


def test_list_file_with_a_bad_input_names_it_and_writes_the_rest(corpus, tmp_path):
    root, files, model = corpus
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    lst = tmp_path / "in.list"
    lst.write_text(f"{files[0]}\n{bad}\n{files[1]}\n")
    r = run_cli("resynth", str(lst), "-o", str(tmp_path / "res"), "-m", model, "--steps", "1", check=False)
    assert r.returncode == 1 and "1 of 3 inputs failed" in r.stderr
    assert sorted(os.listdir(tmp_path / "res")) == ["failed.tsv", "u00.wav", "u01.wav"]
    assert open(tmp_path / "res" / "failed.tsv").read().startswith(f"{bad}\t")
    n = sf.info(str(tmp_path / "res" / "u01.wav")).frames
    assert n == round(sf.info(files[1]).duration * 24000)  # cut to the input's duration, as one file is
    clash = tmp_path / "clash.list"
    clash.write_text(f"{files[0]}\n{files[0]}\n")
    r = run_cli("encode", str(clash), "-o", str(tmp_path / "x"), "-m", model, check=False)
    assert r.returncode == 1 and "would both write" in r.stderr
