"""The bad-input matrix: every kind of bad audio, codes and model directory through every entry point.

Each cell states what the entry point must do, and the test checks it:

* ``error``: the call fails (the API raises; the CLI exits 1 with one log line) naming the file and
  the reason, and writes no output;
* ``skip``: data preparation (prep from the header, the feature stage from the samples) keeps
  going, leaves the utterance out and records it with its reason (``skipped.tsv`` and the log),
  so nothing is dropped silently;
* ``ok``: valid input (other rates and channel counts are resampled and down-mixed; silence and
  1 s of audio are fine to encode).

``python tests/test_bad_input_matrix.py`` prints the matrix as markdown (docs/ROBUSTNESS.md).
"""

import logging
import os
import shutil
import sys

import numpy as np
import pytest
import torch

from sitok import cli
from sitok.data.features import compute_features
from sitok.data.kaldi import DataDir, read_table
from sitok.data.prep import Entry, make_data_dir
from sitok.infer import Tokenizer

from conftest import BAD_REASONS, make_bad_files, write_model_dir

AUDIO_ENTRY_POINTS = ("API encode", "CLI encode", "CLI resynth", "prep", "compute-feats")
# kind -> (reason named in the error / skipped.tsv, behaviour at API/CLI, behaviour at prep/compute-feats)
AUDIO = {
    "good": (None, "ok", "ok"),
    "wrong_rate": (None, "ok", "ok"),
    "stereo": (None, "ok", "ok"),
    "empty": ("empty-file", "error", "skip"),
    "not_audio": ("unreadable", "error", "skip"),
    "truncated": ("unreadable", "error", "skip"),
    "nan": ("non-finite", "error", "skip"),
    "silent": ("silent", "ok", "skip"),  # silence encodes; a training corpus does not want it
    "short": ("too-short", "ok", "skip"),  # 20 ms: one token; prep's minimum is 0.1 s
    "long": ("too-long", "ok", "skip"),  # 12 s: prep's maximum here is 10 s
    "directory": ("not-a-file", "error", "skip"),
    "missing": ("missing", "error", "skip"),
}
CODES = {  # a codes file given to decode -> the reason in the error
    "float codes": "integer",
    "out of the codebook": "must lie in [0, 64)",
    "wrong shape": "must have shape",
    "empty": "T > 0",
    "truncated .npy": "not a .npy codes file",
    "text file": "not a .npy codes file",
}
MODEL = {  # a damaged model directory -> (the file the error names, words of the reason)
    "no config.json": ("config.json", "not a SiTok model directory"),
    "malformed config.json": ("config.json", "not valid JSON"),
    "codebook of 2**33 entries": ("config.json", "codebook_size must be an integer in"),
    "newer format": ("config.json", "newer than this toolkit reads"),
    "truncated model.pt": ("model.pt", "truncated or not a state dict"),
    "weights of another shape": ("model.pt", "has shape"),
    "malformed cmvn.json": ("cmvn.json", ""),
}


def audio_files(d):
    files = make_bad_files(d)
    files["directory"] = os.path.join(d, "a_directory.wav")
    os.makedirs(files["directory"])
    files["missing"] = os.path.join(d, "missing.wav")
    return files


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("matrix")
    return {"audio": audio_files(str(d / "audio")), "model": write_model_dir(str(d / "model"))}


def _cli(argv, caplog):
    caplog.clear()
    with caplog.at_level(logging.INFO):
        rc = cli.main(argv)
    return rc, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _assert_error(kind, path, reason, rc, errors, outputs):
    assert rc == cli.EXIT_ERROR, (kind, rc)
    assert len(errors) == 1 and path in errors[0] and reason in errors[0] and "\n" not in errors[0], (kind, errors)
    assert not any(os.path.exists(o) for o in outputs), (kind, outputs)


@pytest.mark.parametrize("entry", AUDIO_ENTRY_POINTS[:3])
@pytest.mark.parametrize("kind", list(AUDIO))
def test_audio_through_encode_and_resynth(setup, tmp_path, caplog, kind, entry):
    path, model = setup["audio"][kind], setup["model"]
    reason, want, _ = AUDIO[kind]
    if entry == "API encode":
        tok = Tokenizer.from_pretrained(model)
        if want == "ok":
            assert tok.encode(path).shape[1] >= 1
        else:
            with pytest.raises(Exception) as exc:
                tok.encode(path)
            assert path in str(exc.value) and reason in str(exc.value), str(exc.value)
        return
    out = str(tmp_path / ("codes.npy" if entry == "CLI encode" else "out.wav"))
    if kind == "directory":  # the command line reads a directory as many inputs: this one holds none
        reason = "no input files"
    rc, errors = _cli([entry.split()[1], path, "-m", model, "-o", out], caplog)
    if want == "ok":
        assert rc == cli.EXIT_OK and errors == [] and os.path.getsize(out) > 0
    else:
        _assert_error(kind, path, reason, rc, errors, [out])
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_audio_through_prep_and_compute_feats(setup, tmp_path):
    """One data dir holding every kind: prep skips what it can see from the header, the feature
    stage what it finds in the samples; both record each with its reason, and keep the rest."""
    audio = setup["audio"]
    entries = [Entry(f"spk-{k}", "spk", p, f"words of {k}") for k, p in audio.items()]
    data = str(tmp_path / "data")
    dd, skips = make_data_dir(entries, data, max_duration=10.0)
    at_prep = {s.utt.removeprefix("spk-"): s.reason for s in skips}
    assert all(p in {s.path for s in skips} for k, p in audio.items() if k in at_prep)

    # the feature stage on a data dir written without prep's checks (a hand-made wav.scp)
    raw = str(tmp_path / "raw")
    DataDir(
        {
            "wav.scp": {f"spk-{k}": p for k, p in audio.items()},
            "text": {f"spk-{k}": "w" for k in audio},
            "utt2spk": {f"spk-{k}": "spk" for k in audio},
        }
    ).save(raw)
    dump = str(tmp_path / "dump")
    compute_features(raw, dump, nj=1, max_duration=10.0, progress=False)
    with open(f"{dump}/skipped.tsv", encoding="utf-8") as fh:
        at_feats = {line.split("\t")[0].removeprefix("spk-"): line.split("\t")[2] for line in list(fh)[1:]}
    kept = {u.removeprefix("spk-") for u in read_table(f"{dump}/feats.scp")}
    for kind, (reason, _, want) in AUDIO.items():
        if want == "ok":
            assert kind not in at_prep and kind in kept and kind not in at_feats, kind
        else:  # prep sees it, or (silence, NaN) the feature stage does; either names the reason
            assert at_prep.get(kind, at_feats.get(kind)) == reason, (kind, at_prep.get(kind), at_feats.get(kind))
            assert kind not in at_feats or kind not in kept
            assert kind in at_feats or kind not in dd.utts
    assert set(BAD_REASONS) <= set(AUDIO)


def _codes_file(kind, path):
    if kind == "float codes":
        np.save(path, np.zeros((1, 5), np.float32))
    elif kind == "out of the codebook":
        np.save(path, np.full((1, 5), 64, np.int64))
    elif kind == "wrong shape":
        np.save(path, np.zeros((3, 5), np.int64))
    elif kind == "empty":
        np.save(path, np.zeros((1, 0), np.int64))
    elif kind == "truncated .npy":
        np.save(path, np.zeros((1, 50), np.int64))
        with open(path, "rb") as fh:
            blob = fh.read()
        with open(path, "wb") as fh:
            fh.write(blob[:40])
    else:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("1 2 3\n")
    return path


@pytest.mark.parametrize("entry", ["API decode", "CLI decode"])
@pytest.mark.parametrize("kind", list(CODES))
def test_codes_through_decode(setup, tmp_path, caplog, kind, entry):
    path = _codes_file(kind, str(tmp_path / "codes.npy"))
    if entry == "API decode":
        if kind in ("truncated .npy", "text file"):
            pytest.skip("the API takes arrays: reading a file is the CLI's part")
        tok = Tokenizer.from_pretrained(setup["model"])
        with pytest.raises(ValueError, match=CODES[kind].replace("[", r"\[").replace(")", r"\)")):
            tok.decode(torch.from_numpy(np.load(path)))
        return
    out = str(tmp_path / "out.wav")
    rc, errors = _cli(["decode", path, "-m", setup["model"], "-o", out], caplog)
    _assert_error(kind, path, CODES[kind], rc, errors, [out])


def _damaged_model(model, d, kind):
    bad = os.path.join(d, "bad_model")
    shutil.copytree(model, bad)
    cfg, pt, cmvn = (os.path.join(bad, f) for f in ("config.json", "model.pt", "cmvn.json"))
    if kind == "no config.json":
        os.remove(cfg)
    elif kind == "malformed config.json":
        with open(cfg, "w", encoding="utf-8") as fh:
            fh.write('{"model": {')
    elif kind in ("codebook of 2**33 entries", "newer format"):
        import json

        with open(cfg, encoding="utf-8") as fh:
            c = json.load(fh)
        if kind == "newer format":
            c["format"] = "sitok-model-9"
        else:
            c["model"]["codebook_size"] = 2**33
        with open(cfg, "w", encoding="utf-8") as fh:
            json.dump(c, fh)
    elif kind == "truncated model.pt":
        with open(pt, "rb") as fh:
            blob = fh.read()
        with open(pt, "wb") as fh:
            fh.write(blob[: len(blob) // 2])
    elif kind == "weights of another shape":
        other = write_model_dir(os.path.join(d, "wider"), hidden=48)
        shutil.copy(os.path.join(other, "model.pt"), pt)
    else:
        with open(cmvn, "w", encoding="utf-8") as fh:
            fh.write("{")
    return bad, os.path.join(bad, MODEL[kind][0])


@pytest.mark.parametrize("entry", ["API from_pretrained", "CLI encode"])
@pytest.mark.parametrize("kind", list(MODEL))
def test_damaged_model_directory(setup, tmp_path, caplog, kind, entry):
    bad, culprit = _damaged_model(setup["model"], str(tmp_path), kind)
    reason = MODEL[kind][1]
    if entry == "API from_pretrained":
        with pytest.raises(Exception) as exc:
            Tokenizer.from_pretrained(bad)
        assert culprit in str(exc.value) and reason in str(exc.value), str(exc.value)
        return
    out = str(tmp_path / "codes.npy")
    rc, errors = _cli(["encode", setup["audio"]["good"], "-m", bad, "-o", out], caplog)
    _assert_error(kind, culprit, reason, rc, errors, [out])


def markdown() -> str:
    heads = ("API encode", "CLI encode", "CLI resynth", "data prep + features (stages 1-2)")
    rows = ["| bad input | " + " | ".join(heads) + " |", "|---" * (1 + len(heads)) + "|"]
    for kind, (reason, api, prep) in AUDIO.items():
        cells = [c if c == "ok" else f"{c}: `{reason}`" for c in (api, api, api, prep)]
        rows.append(f"| audio: {kind.replace('_', ' ')} | " + " | ".join(cells) + " |")
    rows += ["", "| bad input | API decode | CLI decode |", "|---|---|---|"]
    for kind, reason in CODES.items():
        api = "n/a (the API takes arrays)" if kind in ("truncated .npy", "text file") else f"error: `{reason}`"
        rows.append(f"| codes: {kind} | {api} | error: `{reason}` |")
    rows += ["", "| bad model directory | API from_pretrained | CLI (any command) |", "|---|---|---|"]
    for kind, (f, reason) in MODEL.items():
        cell = f"error naming `{f}`" + (f": `{reason}`" if reason else "")
        rows.append(f"| {kind} | {cell} | {cell} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(markdown() + "\n")
