"""ONNX export: every graph against PyTorch through onnxruntime (tiny models), the runner's decode
equal to Tokenizer.decode_mel from the same start noise, and the command line."""

import json
import os

import numpy as np
import pytest
import torch

from conftest import run_cli, write_model_dir


def tokenizer_dir(tmp_path, **kw):
    from sitok.infer.vocoder import export_vocoder
    from sitok.models.vocos import Vocos, VocosConfig

    d = write_model_dir(tmp_path / "model", **kw)
    torch.manual_seed(1)
    export_vocoder(Vocos(VocosConfig(dim=16, intermediate=32, layers=1)), os.path.join(d, "vocoder"))
    return d


@pytest.mark.parametrize("kw", [{}, {"shortcut": True, "prediction": "x"}, {"decoder_chunk": 2}])
def test_export_matches_pytorch_and_the_runner_decodes_as_the_tokenizer(tmp_path, kw):
    from sitok.infer import Tokenizer
    from sitok.infer.onnx import ATOL, OnnxTokenizer, export_onnx

    tok = Tokenizer.from_pretrained(tokenizer_dir(tmp_path, **kw))
    out = str(tmp_path / "onnx")
    facts = export_onnx(tok, out)
    assert sorted(os.listdir(out)) == ["condition.onnx", "encoder.onnx", "onnx.json", "step.onnx", "vocoder.onnx"]
    check = facts["check"]
    assert (
        check["encoder_codes_differ"] == 0.0 and max(v for k, v in check.items() if k != "encoder_codes_differ") < ATOL
    )
    assert json.load(open(f"{out}/onnx.json"))["check"] == check

    # another length than the export's and the check's: the graphs are not specialised to one
    ox = OnnxTokenizer(out)
    torch.manual_seed(2)
    mel = torch.randn(70, 128) * 2 - 5  # 70 frames: not a multiple of the 4 frames per token
    codes = tok.encode_mels([mel])[0]
    assert np.array_equal(ox.encode_mel(mel.numpy()), codes.numpy())
    noise = tok.start_noise(1, codes.shape[-1], seed=5)[0].numpy()
    for steps in (1, 3):
        ref = tok.decode_mel(codes, steps=steps, seed=5)[0].numpy()
        np.testing.assert_allclose(ox.decode_mel(codes.numpy(), steps=steps, noise=noise), ref, atol=ATOL, rtol=0)
    np.testing.assert_allclose(ox.vocode(ref), tok.vocoder(torch.from_numpy(ref)[None])[0].numpy(), atol=ATOL, rtol=0)


def test_command_line_export_and_refusals(tmp_path):
    d = tokenizer_dir(tmp_path)
    r = run_cli("export-onnx", "-m", d, "-o", str(tmp_path / "onnx"))
    assert "largest |ONNX - PyTorch|" in r.stdout + r.stderr
    assert json.load(open(tmp_path / "onnx" / "onnx.json"))["vocoder"] is True
    r = run_cli("export-onnx", "-m", d, "-o", str(tmp_path / "plain"), "--vocoder", "griffin_lim")
    assert not os.path.exists(tmp_path / "plain" / "vocoder.onnx")
    reg = write_model_dir(tmp_path / "regression", decoder="regression")
    r = run_cli("export-onnx", "-m", reg, "-o", str(tmp_path / "r"), check=False)
    assert r.returncode != 0 and "regression decoder" in r.stderr and not os.path.exists(tmp_path / "r")
