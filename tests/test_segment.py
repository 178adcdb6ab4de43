"""Long-audio segmentation (sitok.data.segment) and its use by data prep and the features stage.

The test recording is built here with a known layout: speech-like bursts (syllables of a
sawtooth voice through vowel formants, with a noise consonant before each) of known start and
end, separated by silences (low noise) of varied length, including stretches of continuous
"speech" longer than the cap. Every check is made against that layout.
"""

import os

import numpy as np
import pytest
from scipy.signal import lfilter

from sitok.data import features
from sitok.data.kaldi import read_table, validate_data_dir
from sitok.data.prep import make_data_dir
from sitok.data.segment import SegmentConfig, load_segment, segment_speech, split_at_quietest

from conftest import write

SR = 16000
CAP = 20.0
# (silence before, speech) in seconds; the rest of the 3 minutes is silence
LAYOUT = [
    (1.0, 4.0),
    (0.2, 3.0),  # a pause inside a sentence: shorter than min_gap, must not be a cut
    (0.8, 6.0),
    (2.5, 45.0),  # longer than two caps
    (1.5, 12.0),
    (0.35, 8.0),
    (5.0, 25.0),  # longer than one cap
    (0.6, 9.0),
    (3.0, 14.0),
    (1.2, 7.0),
    (10.0, 19.9),  # under the cap, over it once padded
]
VOWELS = [(730, 1090, 2440), (270, 2290, 3010), (530, 1840, 2480), (300, 870, 2240), (640, 1190, 2390)]


def _resonator(x, freq, bandwidth):
    r, theta = np.exp(-np.pi * bandwidth / SR), 2 * np.pi * freq / SR
    return lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], x)


def _syllable(rng):
    """A noise consonant then a voiced vowel with a falling pitch, ~0.2-0.4 s."""
    n = int(rng.uniform(0.15, 0.3) * SR)
    f0 = rng.uniform(100, 220) * np.linspace(1.0, 0.8, n)
    voice = 2 * (np.cumsum(f0 / SR) % 1.0) - 1  # sawtooth
    for freq, bw in zip(VOWELS[rng.integers(len(VOWELS))], (90, 110, 170)):
        voice = _resonator(voice, freq, bw)
    voice = voice / voice.std() * np.sqrt(np.hanning(n))
    m = int(rng.uniform(0.03, 0.08) * SR)
    consonant = _resonator(rng.standard_normal(m), rng.uniform(2500, 5000), 1500)
    consonant = 0.3 * consonant / consonant.std() * np.hanning(m)
    return np.concatenate([consonant, voice])


def _speech(seconds, rng):
    n = int(round(seconds * SR))
    parts, total = [], 0
    while total < n:
        parts.append(_syllable(rng))
        total += len(parts[-1])
    return 0.1 * np.concatenate(parts)[:n]


def build_recording(layout, total, seed=0):
    """(wav [N] float32 at SR, speech spans [(start, end)] in samples)."""
    rng = np.random.default_rng(seed)
    wav = 1e-3 * rng.standard_normal(int(total * SR))  # background noise, -60 dB
    spans, t = [], 0.0
    for silence, speech in layout:
        t += silence
        a, b = int(round(t * SR)), int(round((t + speech) * SR))
        wav[a:b] += _speech(speech, rng)[: b - a]
        spans.append((a, b))
        t += speech
    assert t <= total
    return wav.astype(np.float32), spans


@pytest.fixture(scope="module")
def recording():
    return build_recording(LAYOUT, 180.0)


def check_against_layout(segments, wav, spans, cap):
    """Every check of a segmentation against the known layout."""
    n = len(wav)
    assert segments, "no segment found"
    # sorted, inside the recording, not overlapping, none longer than the cap
    for (a0, b0), (a1, _) in zip(segments, segments[1:]):
        assert b0 <= a1 + 1e-9, f"segments overlap: ({a0}, {b0}) and next start {a1}"
    for a, b in segments:
        assert 0 <= a < b <= n / SR + 1e-9
        assert b - a <= cap + 1e-9, f"segment ({a:.2f}, {b:.2f}) is {b - a:.2f}s > cap {cap}s"
    # no speech sample outside the segments
    covered = np.zeros(n, dtype=bool)
    for a, b in segments:
        covered[int(round(a * SR)) : int(round(b * SR))] = True
    for a, b in spans:
        missed = np.flatnonzero(~covered[a:b])
        assert missed.size == 0, (
            f"speech {a / SR:.2f}-{b / SR:.2f}s: {missed.size} samples outside, first at {(a + missed[0]) / SR:.3f}s"
        )
    # the cuts are in the silences: the middle of every silence of 1 s or more is left out ...
    gaps = [(spans[i][1], spans[i + 1][0]) for i in range(len(spans) - 1)]
    for a, b in gaps:
        if b - a >= SR:
            assert not covered[(a + b) // 2], f"silence {a / SR:.2f}-{b / SR:.2f}s is not cut"
    # ... a short pause is no cut ...
    pause = gaps[0]
    assert (pause[1] - pause[0]) / SR < 0.3
    assert not any(pause[0] / SR <= t <= pause[1] / SR for seg in segments for t in seg), "a 0.2 s pause was cut"
    # ... and the stretches longer than the cap are cut at quiet points
    for a, b in spans:
        inner = [s for s, _ in segments if a / SR < s < b / SR]  # segment starts inside the stretch
        assert len(inner) >= (b - a) / SR // cap, f"speech {a / SR:.1f}-{b / SR:.1f}s is not split"
        frames = wav[a : b - (b - a) % 160].reshape(-1, 160)  # 10 ms frames of the stretch
        level = 10 * np.log10((frames.astype(np.float64) ** 2).mean(1) + 1e-10)
        for cut in inner:
            k = int(round(cut * SR)) - a
            near = level[max(0, k // 160 - 3) : k // 160 + 4]  # +-30 ms around the cut
            assert near.min() < np.median(level) - 10, f"cut at {cut:.2f}s is not at a quiet point"


def test_energy_segments_follow_the_layout(recording):
    wav, spans = recording
    segments = segment_speech(wav, SR, SegmentConfig(max_segment=CAP))
    check_against_layout(segments, wav, spans, CAP)


def test_a_smaller_cap_and_a_torch_input(recording):
    import torch

    wav, spans = recording
    segments = segment_speech(torch.from_numpy(wav), SR, SegmentConfig(max_segment=8.0))
    check_against_layout(segments, wav, spans, 8.0)


def test_silero_segments_follow_the_layout(recording):
    pytest.importorskip("silero_vad", reason="the silero-vad package (tools/requirements.txt) is not installed")
    pytest.importorskip("onnxruntime", reason="the silero backend runs its packaged ONNX model with onnxruntime")
    wav, spans = recording
    segments = segment_speech(wav, SR, SegmentConfig(max_segment=CAP, backend="silero"))
    check_against_layout(segments, wav, spans, CAP)


def test_silence_gives_no_segment():
    assert segment_speech(np.zeros(5 * SR, np.float32), SR) == []


def test_split_at_quietest_keeps_every_frame_and_the_cap():
    energy = np.zeros(100)
    energy[[30, 55, 70]] = -50.0  # the quiet frames
    assert split_at_quietest((0, 100), energy, cap=60) == [(0, 55), (55, 100)]
    pieces = split_at_quietest((5, 100), energy, cap=30)
    assert pieces[0][0] == 5 and pieces[-1][1] == 100
    assert all(p[1] == q[0] for p, q in zip(pieces, pieces[1:]))  # contiguous: nothing dropped
    assert all(b - a <= 30 for a, b in pieces)
    assert 30 in {a for a, _ in pieces} and 55 in {a for a, _ in pieces}


def test_load_segment_reads_the_slice(tmp_path):
    wav = np.linspace(-0.5, 0.5, 3 * SR, dtype=np.float32)
    path = write(str(tmp_path / "r.wav"), wav, sr=SR, subtype="FLOAT")
    part = load_segment(path, 1.0, 1.5, SR).numpy()
    np.testing.assert_allclose(part, wav[SR : SR + SR // 2])


# ---------------------------------------------------------------------------------------
# Data prep and features
# ---------------------------------------------------------------------------------------
def _long_corpus(tmp_path):
    """A LibriSpeech-layout split: a 70 s chapter recording with several bursts, a 35 s one with a
    single burst and a short ordinary utterance."""
    base = tmp_path / "LibriSpeech" / "dev-clean" / "84" / "121123"
    long_wav, long_spans = build_recording([(1.0, 6.0), (1.5, 14.0), (2.0, 9.0), (0.8, 25.0), (3.0, 5.0)], 70.0, 1)
    one_wav, _ = build_recording([(12.0, 6.0)], 35.0, 2)
    short_wav, _ = build_recording([(0.2, 2.0)], 2.5, 3)
    for utt, wav in [("84-121123-0000", long_wav), ("84-121123-0001", one_wav), ("84-121123-0002", short_wav)]:
        write(str(base / f"{utt}.flac"), wav, sr=SR, format="FLAC")
    with open(base / "84-121123.trans.txt", "w") as fh:
        fh.write("84-121123-0000 A WHOLE CHAPTER OF WORDS\n84-121123-0001 ONE SENTENCE\n84-121123-0002 SHORT ONE\n")
    return tmp_path, long_spans


def test_prep_segments_long_recordings(tmp_path):
    from sitok.cli import main

    root, long_spans = _long_corpus(tmp_path)
    out = str(tmp_path / "data")
    args = ["prep", "--corpus", "librispeech", "--root", str(root), "--split", "dev-clean", "--out", out]
    assert main([*args, "--max-duration", "30", "--segment-long", "--segment-max", "10"]) == 0

    assert validate_data_dir(out) == []
    segments = read_table(f"{out}/segments")
    text, dur, wav_scp = read_table(f"{out}/text"), read_table(f"{out}/utt2dur"), read_table(f"{out}/wav.scp")
    long_utts = [u for u in segments if segments[u].startswith("84-121123-0000 ")]
    assert long_utts == [f"84-121123-0000-{k:04d}" for k in range(len(long_utts))]
    assert len(long_utts) >= 6  # five bursts, the 25 s one cut in three
    spans = [tuple(map(float, segments[u].split()[1:])) for u in long_utts]
    for u, (a, b) in zip(long_utts, spans):
        assert b - a <= 10.0 + 1e-3 and abs(float(dur[u]) - (b - a)) < 1e-3
        assert text[u] == "<no_transcript>" and wav_scp[u].endswith("84-121123-0000.flac")
    for a, b in long_spans:  # every speech sample of the long recording is in a segment
        assert _covered(spans, a / SR, b / SR), f"speech {a / SR:.2f}-{b / SR:.2f}s is not in a segment"
    # one segment: the whole transcript is kept; the short utterance is as without the option
    assert [u for u in segments if u.startswith("84-121123-0001")] == ["84-121123-0001-0000"]
    assert text["84-121123-0001-0000"] == "one sentence"
    assert text["84-121123-0002"] == "short one" and "84-121123-0002" not in segments
    assert "too-long" not in open(f"{out}/skipped.tsv").read()
    header = open(f"{out}/manifest.csv").readline().strip().split(",")
    assert header[-2:] == ["start", "stop"]

    # the features stage reads each segment's slice only
    dump = str(tmp_path / "dump")
    features.compute_features(out, dump, nj=1, max_duration=30.0, progress=False)
    frames = read_table(f"{dump}/utt2num_frames")
    assert set(frames) == set(wav_scp)
    for u in segments:
        assert abs(int(frames[u]) - 50 * float(dur[u])) <= 2, (u, frames[u], dur[u])


def _covered(spans, a, b):
    """Whether the contiguous union of ``spans`` holds [a, b]."""
    t = a
    for s, e in sorted(spans):
        if s <= t + 1e-6 and e > t:
            t = e
    return t >= b - 1e-6


def test_prep_without_the_option_skips_long_recordings(tmp_path):
    from sitok.data.prep import read_librispeech

    root, _ = _long_corpus(tmp_path)
    out = str(tmp_path / "data")
    dd, skips = make_data_dir(read_librispeech(str(root), "dev-clean"), out, max_duration=30.0)
    assert sorted(s.reason for s in skips) == ["too-long", "too-long"]
    assert dd.utts == ["84-121123-0002"] and not os.path.exists(f"{out}/segments")
    with pytest.raises(ValueError, match="segment_max"):
        make_data_dir([], out, max_duration=30.0, segment_long=True, segment_max=40.0)
