import glob
import os
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tone(seconds=1.0, sr=24000, freq=220.0, amp=0.3, channels=1):
    t = np.arange(int(seconds * sr)) / sr
    x = (amp * np.sin(2 * np.pi * freq * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    return np.stack([x, 0.5 * x], 1) if channels == 2 else x


def write(path, data, sr=24000, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, data, sr, **kw)
    return path


def make_bad_files(d):
    """Every bad-audio case: name -> path (the expected reasons are in BAD_REASONS)."""
    os.makedirs(d, exist_ok=True)
    files = {}
    files["good"] = write(f"{d}/good.wav", tone(1.0))
    files["wrong_rate"] = write(f"{d}/wrong_rate.wav", tone(1.0, sr=16000), sr=16000)
    files["stereo"] = write(f"{d}/stereo.wav", tone(1.0, channels=2))
    open(f"{d}/empty.wav", "wb").close()
    files["empty"] = f"{d}/empty.wav"
    with open(f"{d}/not_audio.wav", "w") as fh:
        fh.write("this is a text file, not audio\n" * 20)
    files["not_audio"] = f"{d}/not_audio.wav"
    write(f"{d}/full.wav", tone(1.0))
    with open(f"{d}/full.wav", "rb") as fh:
        blob = fh.read()
    with open(f"{d}/truncated.wav", "wb") as fh:
        fh.write(blob[:30])  # cut inside the RIFF header
    files["truncated"] = f"{d}/truncated.wav"
    nan = tone(1.0)
    nan[100:200] = np.nan
    files["nan"] = write(f"{d}/nan.wav", nan, subtype="FLOAT")
    files["silent"] = write(f"{d}/silent.wav", np.zeros(24000, np.float32))
    files["short"] = write(f"{d}/short.wav", tone(0.02))
    files["long"] = write(f"{d}/long.wav", tone(12.0))
    os.remove(f"{d}/full.wav")
    return files


# reasons expected from load_audio(min_duration=0.1, max_duration=10)
BAD_REASONS = {
    "empty": "empty-file",
    "not_audio": "unreadable",
    "truncated": "unreadable",
    "nan": "non-finite",
    "silent": "silent",
    "short": "too-short",
    "long": "too-long",
}


@pytest.fixture
def bad_files(tmp_path):
    return make_bad_files(str(tmp_path / "audio"))


def have(*tools):
    return all(shutil.which(t) for t in tools)


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_runtest_setup(item):
    """``@pytest.mark.tools("flite", ...)``: a test that needs programs is skipped where they are
    missing, but fails under CI=true, where tools/install.sh must have installed them."""
    for mark in item.iter_markers("tools"):
        missing = [t for t in mark.args if not shutil.which(t)]
        if missing and on_ci():
            pytest.fail(f"CI=true and {', '.join(missing)} not on PATH: tools/install.sh must install them")
        if missing:
            pytest.skip(f"{', '.join(missing)} missing (tools/install.sh)")


# files that take most of the suite's time, collected first: tools/test.sh hands files to parallel
# workers in collection order, so the longest starts at once and the others fill the other workers
LONGEST_FIRST = ("test_recipe.py",)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def run_cli(*args, cwd=None, check=True):
    return subprocess.run(
        [sys.executable, "-m", "sitok.cli", *args], cwd=cwd, check=check, capture_output=True, text=True
    )


def free_port() -> int:
    """A TCP port nothing listens on now (tests run in parallel: never a fixed port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process it started, as a machine failure would: torchrun's
    workers run in sessions of their own, so killing the launcher's process group leaves them on
    (Linux: parents read from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    for p in tree:  # the launcher first: it cannot restart a worker
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def torchrun_gloo(script_args: list) -> list:
    """``python SCRIPT ARGS...`` as a 2-process CPU (gloo) DDP run under torchrun on a free port."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    return launcher + ["--master_port", str(free_port())] + [*script_args, "--distributed_backend", "gloo"]


def run_one_thread(cmd, **kw):
    """``cmd`` run to its end with OMP_NUM_THREADS=1, its output captured as text (no check of its status)."""
    return subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), **kw)


TINY_MODEL = {
    "hidden": 32,
    "intermediate": 64,
    "heads": 2,
    "enc_layers": 1,
    "dec_layers": 2,
    "ctc_layers": 1,
    "codebook_size": 64,
    "codebook_dim": 8,
    "vocab_size": 20,
}


def tiny_sitok(seed=0, **kw):
    """An untrained SiTok of the TINY_MODEL sizes (``kw`` replace fields), its weights drawn from ``seed``."""
    import torch

    from sitok.models import SiTok, SiTokConfig

    torch.manual_seed(seed)
    return SiTok(SiTokConfig(**{**TINY_MODEL, **kw}))


def write_model_dir(path, seed=0, **kw):
    """A model directory of an untrained tiny SiTok (config.json, model.pt, cmvn.json), as export writes it."""
    from sitok.data.mel import GlobalCMVN
    from sitok.models.loading import write_model_dir as write

    write(str(path), tiny_sitok(seed, **kw), cmvn=GlobalCMVN.paper())
    return str(path)
