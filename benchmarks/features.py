#!/usr/bin/env python
"""Feature-extraction speed (x real time) of the mel frontend, on 1 and 2 cores.

    python benchmarks/features.py [--minutes 10] [--quick]

Measures, on the same synthetic 24 kHz audio:
  * the frontend alone (MelFrontend on in-memory waveforms), torch threads = 1 and 2;
  * librosa's melspectrogram with the same parameters (the library a user would otherwise pick);
  * the whole feature stage (wav files -> kaldiio ark/scp + CMVN stats) with --nj 1 and 2.
The last line is JSON with every figure. Never asserted on by tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "toolkit"))

from timing import best_time  # noqa: E402

from sitok.data.features import compute_features  # noqa: E402
from sitok.data.mel import MelConfig, MelFrontend  # noqa: E402
from sitok.data.prep import Entry, make_data_dir  # noqa: E402


def make_audio(n_utts: int, seconds: float, sr: int = 24000) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    out = []
    for i in range(n_utts):
        f0 = 100 + 10 * i
        x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 20)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
        out.append((0.1 * x + 0.01 * rng.standard_normal(t.size)).astype(np.float32))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="audio to process")
    ap.add_argument("--quick", action="store_true", help="1 minute of audio, 1 repeat")
    a = ap.parse_args()
    minutes = 1.0 if a.quick else a.minutes
    repeats = 1 if a.quick else 3
    seconds_per_utt = 6.0
    wavs = make_audio(max(1, int(minutes * 60 / seconds_per_utt)), seconds_per_utt)
    audio_s = sum(len(w) for w in wavs) / 24000
    cfg = MelConfig()
    res: dict[str, float | str] = {
        "audio_seconds": audio_s,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
    }
    fe = MelFrontend(cfg)
    tensors = [torch.from_numpy(w) for w in wavs]
    for threads in (1, 2):
        torch.set_num_threads(threads)
        t = best_time(lambda: [fe(x) for x in tensors], repeats)
        res[f"frontend_x_realtime_{threads}thread"] = audio_s / t
    torch.set_num_threads(1)

    import librosa

    def librosa_all():
        for w in wavs:
            m = librosa.feature.melspectrogram(
                y=w,
                sr=24000,
                n_fft=1920,
                hop_length=480,
                win_length=1920,
                window="hann",
                center=True,
                pad_mode="reflect",
                power=1.0,
                n_mels=128,
                fmin=0,
                fmax=12000,
            )
            np.log(np.maximum(m, 1e-5))

    res["librosa_x_realtime"] = audio_s / best_time(librosa_all, repeats)

    with tempfile.TemporaryDirectory() as tmp:
        entries = []
        for i, w in enumerate(wavs):
            p = os.path.join(tmp, "wav", f"s-{i:04d}.wav")
            os.makedirs(os.path.dirname(p), exist_ok=True)
            sf.write(p, w, 24000, subtype="PCM_16")
            entries.append(Entry(f"s-{i:04d}", "s", p, "text"))
        make_data_dir(entries, os.path.join(tmp, "data"))
        for nj in (1, 2):

            def stage(nj=nj):
                dump = os.path.join(tmp, f"dump{nj}")
                if os.path.exists(dump):
                    import shutil

                    shutil.rmtree(dump)
                compute_features(os.path.join(tmp, "data"), dump, nj=nj, progress=False)

            res[f"stage_x_realtime_nj{nj}"] = audio_s / best_time(stage, repeats)

    print(
        f"audio: {audio_s / 60:.1f} min of 24 kHz speech-like signal, {res['cores']} cores, torch {torch.__version__}"
    )
    for k, v in res.items():
        if k.endswith(("thread", "librosa_x_realtime", "nj1", "nj2")):
            print(f"  {k:34s} {v:10.0f} x real time")
    print(json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in res.items()}))


if __name__ == "__main__":
    main()
