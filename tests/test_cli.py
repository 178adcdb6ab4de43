"""The ``sitok`` command line: help, option checks, exit status and one-line errors, output names."""

import argparse
import logging
import os
import pathlib
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from sitok import __version__, cli

from conftest import run_cli, tone, write, write_model_dir


def subcommands() -> dict:
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model_dir(str(tmp_path_factory.mktemp("cli") / "model"))


@pytest.fixture
def wav(tmp_path):
    return write(str(tmp_path / "in.wav"), tone(1.0, sr=16000), sr=16000)


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def no_temporaries(*dirs) -> bool:
    return not [f for d in dirs for f in os.listdir(d) if ".tmp" in f]


# ---- help -------------------------------------------------------------------------------------
def test_top_level_help_lists_every_command():
    listed = re.findall(r"^ {4}sitok ([a-z0-9-]+) ", cli.__doc__, re.MULTILINE)
    assert listed == sorted(set(listed), key=listed.index)  # no command listed twice
    assert set(listed) == set(subcommands())
    top = cli.build_parser().format_help()
    for code in ("0", "1", "2", "130"):  # the exit status table
        assert re.search(rf"^  {code} +\S", top, re.MULTILINE), code


def test_every_argument_has_help_and_shows_its_default():
    formatter = cli.HelpFormatter("sitok")
    for name, sp in subcommands().items():
        assert sp.description, name
        for action in sp._actions:
            assert action.help, (name, action.dest)
            optional = action.option_strings and not action.required and action.default is not argparse.SUPPRESS
            if optional and not isinstance(action, argparse._HelpAction):
                assert "%(default)s" in formatter._get_help_string(action), (name, action.dest)
        sp.format_help()  # every help string formats (no stray %)
    assert "(default: 16)" in subcommands()["decode"].format_help()


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"sitok {__version__}"


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--log-level", "LOUD", "info", "-m", "x"], "invalid choice: 'LOUD'"),
        (
            ["decode", "c.npy", "-m", "x", "-o", "o.wav", "--cfg-scale", "nan"],
            "--cfg-scale: must be a finite number >= 0, got 'nan'",
        ),
        (["decode", "c.npy", "-m", "x", "-o", "o.wav", "--cfg-scale", "inf"], "got 'inf'"),
        (["decode", "c.npy", "-m", "x", "-o", "o.wav", "--cfg-scale", "-1"], "got '-1'"),
        (["resynth", "a.wav", "-m", "x", "-o", "o.wav", "--temperature", "-0.5"], "--temperature: must be a finite"),
        (["decode", "c.npy", "-m", "x", "-o", "o.wav", "--steps", "0"], "--steps: must be an integer >= 1, got '0'"),
        (
            ["eval-refine", "d", "c", "o", "--models", "a=b", "--cfg-scales", "1", "nan"],
            "--cfg-scales: must be a finite",
        ),
        (["evaluate", "d", "o", "--temperatures", "1", "-1"], "must be a finite number >= 0, got '-1'"),
        (["evaluate", "d", "o", "--steps", "0"], "--steps: must be an integer >= 1"),
        (["encode", "a.wav", "-m", "x"], "-o/--output"),
        (["no-such-command"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2_and_name_the_value(capsys, argv, needle):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == cli.EXIT_USAGE == 2
    assert needle in capsys.readouterr().err


def test_evaluate_with_nothing_to_score_is_one_line(tmp_path, caplog):
    d = tmp_path / "dump"
    d.mkdir()
    (d / "feats.scp").write_text("")
    assert cli.main(["evaluate", str(d), str(tmp_path / "o"), "--no-groundtruth", "--judges", "asr=none"]) == 1
    assert len(errors(caplog)) == 1 and "evaluate: " in errors(caplog)[0]
    assert cli.build_parser().parse_args(["evaluate", "d", "o", "--temperature", "0"]).temperatures == [0.0]


def test_log_level_is_case_insensitive():
    assert cli.build_parser().parse_args(["--log-level", "debug", "info", "-m", "x"]).log_level == "DEBUG"


# ---- errors: exit 1, one line naming the file ---------------------------------------------------
def test_interrupt_exits_130(monkeypatch, caplog):
    def interrupted(a):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.codec, "cmd_info", interrupted)
    assert cli.main(["info", "-m", "x"]) == cli.EXIT_INTERRUPTED == 130
    assert errors(caplog) == ["info: interrupted"]


def damage(model_dir, tmp_path, case):
    bad = str(tmp_path / "bad_model")
    shutil.copytree(model_dir, bad)
    pt, cfg, cmvn = (os.path.join(bad, f) for f in ("model.pt", "config.json", "cmvn.json"))
    if case == "truncated model.pt":
        blob = pathlib.Path(pt).read_bytes()
        pathlib.Path(pt).write_bytes(blob[: len(blob) // 3])
    elif case == "empty model.pt":
        pathlib.Path(pt).write_bytes(b"")
    elif case == "text model.pt":
        pathlib.Path(pt).write_text("not a checkpoint\n")
    elif case == "model.pt is a directory":
        os.remove(pt)
        os.mkdir(pt)
    elif case == "no model.pt":
        os.remove(pt)
    elif case == "malformed config.json":
        pathlib.Path(cfg).write_text('{"model": {"hidden": 32,')
    elif case == "config.json without model":
        pathlib.Path(cfg).write_text('{"format": "sitok-model-1"}')
    elif case == "malformed cmvn.json":
        pathlib.Path(cmvn).write_text("{")
    return bad, cfg if "config.json" in case else cmvn if "cmvn.json" in case else pt


DAMAGE = [
    "truncated model.pt",
    "empty model.pt",
    "text model.pt",
    "model.pt is a directory",
    "no model.pt",
    "malformed config.json",
    "config.json without model",
    "malformed cmvn.json",
]


@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_model_dir_is_one_line_naming_the_file(model_dir, tmp_path, wav, caplog, case):
    bad, culprit = damage(model_dir, tmp_path, case)
    out = str(tmp_path / "codes.npy")
    assert cli.main(["encode", wav, "-m", bad, "-o", out]) == cli.EXIT_ERROR == 1
    (msg,) = errors(caplog)
    assert msg.startswith(f"encode: {culprit}:") and "\n" not in msg, msg
    assert not os.path.exists(out) and no_temporaries(tmp_path)


def test_missing_model_dir(tmp_path, wav, caplog):
    assert cli.main(["info", "-m", str(tmp_path / "nope")]) == 1
    assert errors(caplog) == [f"info: {tmp_path / 'nope'}: no such directory (a model dir)"]


def test_error_is_one_stderr_line_and_debug_adds_the_traceback(model_dir, tmp_path, wav):
    bad, culprit = damage(model_dir, tmp_path, "truncated model.pt")
    r = run_cli("encode", wav, "-m", bad, "-o", str(tmp_path / "c.npy"), check=False)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert f"ERROR: encode: {culprit}: truncated or not a state dict (" in lines[0]
    r = run_cli("--log-level", "DEBUG", "encode", wav, "-m", bad, "-o", str(tmp_path / "c.npy"), check=False)
    assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr
    assert r.stderr.rstrip().splitlines()[-1].endswith(lines[0].split(" ERROR: ")[1])


@pytest.mark.parametrize("case", ["directory", "missing", "not audio"])
def test_bad_encode_input_names_the_file(model_dir, tmp_path, caplog, case):
    path = str(tmp_path / "input.wav")
    if case == "directory":
        os.mkdir(path)
    elif case == "not audio":
        pathlib.Path(path).write_text("text\n" * 100)
    assert cli.main(["encode", path, "-m", model_dir, "-o", str(tmp_path / "c.npy")]) == 1
    (msg,) = errors(caplog)
    assert msg.startswith(f"encode: {path}: ") and "\n" not in msg


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"RIFF0000WAVE", "not a .npy codes file"),
        (np.zeros((1, 4), np.float32), "codes must be an integer tensor"),
        (np.full((1, 4), 64), "codes must lie in [0, 64)"),
        (np.zeros((2, 4), np.int64), "codes must have shape [1, T]"),
    ],
)
def test_bad_codes_file_names_the_file(model_dir, tmp_path, caplog, content, needle):
    path = str(tmp_path / "codes.npy")
    if isinstance(content, bytes):
        pathlib.Path(path).write_bytes(content)
    else:
        np.save(path, content)
    out = str(tmp_path / "out.wav")
    assert cli.main(["decode", path, "-m", model_dir, "-o", out, "--steps", "1"]) == 1
    (msg,) = errors(caplog)
    assert msg.startswith(f"decode: {path}: ") and needle in msg, msg
    assert not os.path.exists(out) and no_temporaries(tmp_path)


def test_cfg_scale_without_token_cfg_is_explained(model_dir, tmp_path, caplog):
    np.save(tmp_path / "c.npy", np.zeros((1, 4), np.int64))
    assert (
        cli.main(
            ["decode", str(tmp_path / "c.npy"), "-m", model_dir, "-o", str(tmp_path / "o.wav"), "--cfg-scale", "2"]
        )
        == 1
    )
    assert errors(caplog) == ["decode: cfg_scale=2.0 needs a model trained for token CFG (token_cfg: true)"]


# ---- outputs ------------------------------------------------------------------------------------
def test_output_keeps_the_name_given(model_dir, tmp_path, wav):
    out = str(tmp_path / "codes")  # no .npy suffix: written as named
    assert cli.main(["encode", wav, "-m", model_dir, "-o", out]) == 0
    assert sorted(os.listdir(tmp_path)) == ["codes", "in.wav"]
    codes = np.load(out)
    assert codes.shape == (1, 13) and codes.dtype == np.int64
    assert cli.main(["decode", out, "-m", model_dir, "-o", str(tmp_path / "speech"), "--steps", "1"]) == 0
    assert sf.info(str(tmp_path / "speech")).frames == 13 * 4 * 480
    assert cli.main(["resynth", wav, "-m", model_dir, "-o", str(tmp_path / "re.wav"), "--steps", "1"]) == 0
    assert sf.info(str(tmp_path / "re.wav")).frames == 24000
    assert sorted(os.listdir(tmp_path)) == ["codes", "in.wav", "re.wav", "speech"]


@pytest.mark.parametrize("command", ["encode", "decode", "resynth"])
def test_output_that_is_a_directory_is_refused(model_dir, tmp_path, wav, caplog, command):
    np.save(tmp_path / "c.npy", np.zeros((1, 4), np.int64))
    out = tmp_path / "outdir"
    out.mkdir()
    src = str(tmp_path / "c.npy") if command == "decode" else wav
    assert cli.main([command, src, "-m", model_dir, "-o", str(out)]) == 1
    assert errors(caplog) == [f"{command}: {out}: is a directory; -o takes a file name"]
    assert os.listdir(out) == [] and sorted(os.listdir(tmp_path)) == ["c.npy", "in.wav", "outdir"]


def test_decode_batched_codes_writes_one_file_per_item(model_dir, tmp_path):
    from sitok.data.audio import write_wav_atomic
    from sitok.infer import Tokenizer

    codes = np.random.default_rng(0).integers(0, 64, (3, 1, 6))
    np.save(tmp_path / "batch.npy", codes)
    assert (
        cli.main(
            [
                "decode",
                str(tmp_path / "batch.npy"),
                "-m",
                model_dir,
                "-o",
                str(tmp_path / "out.wav"),
                "--steps",
                "2",
                "--seed",
                "5",
            ]
        )
        == 0
    )
    assert sorted(os.listdir(tmp_path)) == ["batch.npy", "out_0.wav", "out_1.wav", "out_2.wav"]
    assert not np.array_equal(sf.read(str(tmp_path / "out_0.wav"))[0], sf.read(str(tmp_path / "out_1.wav"))[0])
    tok = Tokenizer.from_pretrained(model_dir)
    batch, _ = tok.decode(codes, steps=2, seed=5)
    mels = tok.decode_mel(codes, steps=2, seed=5)
    for i in range(3):
        got, sr = sf.read(str(tmp_path / f"out_{i}.wav"), dtype="int16")
        write_wav_atomic(str(tmp_path / "item.wav"), batch[i], 24000)
        assert sr == 24000 and got.shape == (6 * 4 * 480,)
        assert np.abs(got.astype(int) - sf.read(str(tmp_path / "item.wav"), dtype="int16")[0]).max() <= 1
        # each item's mel is the item decoded on its own; the waveforms are not compared, because
        # Griffin-Lim turns float rounding of this random model's huge mel (log-mel ~17) into audible error
        alone = tok.decode_mel(codes[i], steps=2, seed=5)
        assert torch.allclose(mels[i], alone[0], atol=1e-5)
