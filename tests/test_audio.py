"""Bad input audio: every case is repaired or refused with the file and reason named."""

import pathlib
import warnings

import numpy as np
import pytest
import soundfile as sf

from sitok.data.audio import AudioError, AudioWarning, load_audio, probe_audio, write_wav_atomic

from conftest import BAD_REASONS, tone


@pytest.mark.parametrize("case", sorted(BAD_REASONS))
def test_unusable_audio_is_refused_with_file_and_reason(bad_files, case):
    path = bad_files[case]
    with pytest.raises(AudioError) as err:
        load_audio(path, min_duration=0.1, max_duration=10.0)
    assert err.value.reason == BAD_REASONS[case]
    assert path in str(err.value)


def test_missing_file():
    with pytest.raises(AudioError) as err:
        load_audio("/nonexistent/x.wav")
    assert err.value.reason == "missing" and "/nonexistent/x.wav" in str(err.value)


def test_wrong_rate_is_resampled(bad_files):
    assert probe_audio(bad_files["wrong_rate"]).sample_rate == 16000
    wav = load_audio(bad_files["wrong_rate"], 24000)
    assert wav.shape == (24000,)
    # a 220 Hz tone stays a 220 Hz tone
    spec = np.abs(np.fft.rfft(wav.numpy()))
    assert abs(int(spec.argmax()) - 220) <= 1


def test_stereo_is_downmixed(bad_files):
    wav = load_audio(bad_files["stereo"], 24000)
    assert wav.ndim == 1 and wav.shape[0] == 24000
    np.testing.assert_allclose(wav.numpy(), 0.75 * tone(1.0), atol=1e-4)


def test_truncated_data_chunk_reads_what_is_there_and_warns(tmp_path):
    path = str(tmp_path / "cut.wav")
    sf.write(path, tone(1.0), 24000, subtype="PCM_16")
    blob = open(path, "rb").read()
    open(path, "wb").write(blob[: len(blob) // 2])  # header says 1 s, data holds 0.5 s
    with pytest.warns(AudioWarning, match=r"cut\.wav: truncated \(the header declares 48000 data bytes") as record:
        wav = load_audio(path)
    assert len(record) == 1 and 0.4 * 24000 < wav.shape[0] <= 24000
    np.testing.assert_allclose(wav.numpy(), tone(1.0)[: wav.shape[0]], atol=1e-4)  # what is there, unchanged
    whole = str(tmp_path / "whole.wav")
    sf.write(whole, tone(1.0), 24000, subtype="PCM_16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an intact file does not warn
        load_audio(whole)


def test_write_wav_atomic_leaves_no_temp(tmp_path):
    path = str(tmp_path / "o.wav")
    write_wav_atomic(path, tone(0.5), 24000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.wav"]
    assert sf.info(path).frames == 12000


def test_failed_wav_write_leaves_the_previous_file_and_no_temp(tmp_path, monkeypatch):
    path = str(tmp_path / "o.wav")
    write_wav_atomic(path, tone(0.5), 24000)
    before = pathlib.Path(path).read_bytes()
    real_write = sf.write

    def write_half_then_fail(file, data, *args, **kwargs):
        real_write(file, data[: len(data) // 2], *args, **kwargs)  # some bytes reach the temporary file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sf, "write", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        write_wav_atomic(path, tone(1.0), 24000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.wav"]
    assert pathlib.Path(path).read_bytes() == before
    with pytest.raises(IsADirectoryError):  # an existing directory is not a file name
        write_wav_atomic(str(tmp_path), tone(0.5), 24000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.wav"]
