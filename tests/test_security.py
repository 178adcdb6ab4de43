"""Files handed over by other people run no code and cannot ask for huge allocations: experiment
dirs (hyperparams.yaml, checkpoints), scp tables with piped entries, model and vocoder dirs."""

import json
import os
import pickle
import random

import numpy as np
import pytest
import torch

from sitok.data.kaldi import PipeRefused, allow_pipes, is_pipe, read_mat, read_scp
from sitok.data.mel import GlobalCMVN

from conftest import TINY_MODEL, tiny_sitok


class Payload:
    """Unpickling this runs ``touch <marker>``: what a crafted checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def model_dir(path, model=None, **config_fields):
    """A model directory like export_model_dir's; ``config_fields`` replace top-level config keys."""
    model = model or tiny_sitok()
    os.makedirs(path)
    torch.save(model.state_dict(), os.path.join(path, "model.pt"))
    GlobalCMVN(torch.zeros(128), torch.ones(128)).save(os.path.join(path, "cmvn.json"))
    config = {"format": "sitok-model-1", "model": model.config.to_dict(), **config_fields}
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(config, fh)
    return str(path)


# ---- 1. sitok export: hyperparams.yaml is never loaded ------------------------------------------
def test_export_reads_train_config_and_never_runs_hyperparams_yaml(tmp_path):
    from speechbrain.utils.checkpoints import Checkpointer

    from sitok import Tokenizer
    from sitok.train.tokenizer import export_checkpoint, write_train_config

    marker = tmp_path / "pwned"
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "hyperparams.yaml").write_text(f'__x: !apply:os.system ["touch {marker}"]\nexp_dir: {exp}\n')
    model = tiny_sitok()
    ckpt = Checkpointer(str(exp / "save"), recoverables={"model": model})
    ckpt.save_checkpoint(meta={"epoch": 1})
    GlobalCMVN(torch.zeros(128), torch.ones(128)).save(str(tmp_path / "cmvn.json"))
    (tmp_path / "sp.model").write_bytes(b"sentencepiece model")
    write_train_config(
        {
            "exp_dir": str(exp),
            "model": model,
            "checkpointer": ckpt,
            "cmvn_file": str(tmp_path / "cmvn.json"),
            "sp_model": str(tmp_path / "sp.model"),
            "train_csv": "dump/train/manifest.csv",
        }
    )
    out = export_checkpoint(str(exp), str(tmp_path / "model"))
    assert not marker.exists()
    tok = Tokenizer.from_pretrained(out, vocoder="griffin_lim")
    for k, v in model.state_dict().items():
        assert torch.equal(tok.model.state_dict()[k], v), k
    # weights that do not fit the recorded config are refused, naming the checkpoint file
    cfg = json.loads((exp / "train_config.json").read_text())
    cfg["model"]["codebook_size"] = 128
    (exp / "train_config.json").write_text(json.dumps(cfg))
    expected = r"model\.ckpt: quantizer\..* has shape \[64, 8\], the config's model has \[128, 8\]"
    with pytest.raises(ValueError, match=expected):
        export_checkpoint(str(exp), str(tmp_path / "model2"))
    # an experiment without train_config.json is refused with one line naming the file
    (exp / "train_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="train_config.json: not found") as err:
        export_checkpoint(str(exp), str(tmp_path / "model3"))
    assert "\n" not in str(err.value)
    assert not marker.exists() and not (tmp_path / "model3").exists()


# ---- 2. resuming: checkpoint files are read as data -----------------------------------------------
def test_rng_state_resumes_bit_exactly_and_refuses_pickled_code(tmp_path):
    from sitok.train.tokenizer import RNGState

    def draw():
        return torch.rand(4), np.random.standard_normal(3), random.random(), random.gauss(0, 1)

    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.standard_normal(), random.gauss(0, 1)  # cached Gaussians are part of the state too
    RNGState().save(tmp_path / "rng.ckpt")
    a = draw()
    torch.manual_seed(7), np.random.seed(8), random.seed(9)
    RNGState().load(tmp_path / "rng.ckpt")
    b = draw()
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2:] == b[2:]
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(tmp_path / "rng.ckpt")) == []
    # the numpy-array format of older checkpoints still resumes
    torch.save(
        {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()},
        tmp_path / "old.ckpt",
    )
    a = draw()
    torch.manual_seed(7), np.random.seed(8), random.seed(9)
    RNGState().load(tmp_path / "old.ckpt")
    b = draw()
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2:] == b[2:]
    marker = tmp_path / "pwned"
    torch.save({"torch": torch.get_rng_state(), "numpy": Payload(marker), "random": []}, tmp_path / "evil.ckpt")
    with pytest.raises(pickle.UnpicklingError):
        RNGState().load(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_speechbrain_checkpoints_load_weights_only(tmp_path, monkeypatch):
    """Even where torch.load would unpickle objects by default (old torch, or this variable)."""
    from speechbrain.nnet.schedulers import WarmAndExpDecayLRSchedule
    from speechbrain.utils.checkpoints import Checkpointer

    from sitok.train.checkpoints import use_weights_only_loaders

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    use_weights_only_loaders()
    marker = tmp_path / "pwned"

    def checkpointer():
        lin = torch.nn.Linear(2, 2)
        opt = torch.optim.AdamW(lin.parameters(), lr=1.0)
        sched = WarmAndExpDecayLRSchedule(lr=1.0, n_warmup_steps=2, total_steps=10)
        return Checkpointer(str(tmp_path / "save"), {"model": lin, "optimizer": opt, "lr": sched}), lin, sched

    ckpt, lin, sched = checkpointer()
    for _ in range(3):
        sched(ckpt.recoverables["optimizer"])
    path = ckpt.save_checkpoint().path
    ckpt2, lin2, sched2 = checkpointer()
    ckpt2.recover_if_possible()
    assert torch.equal(lin2.weight, lin.weight) and sched2.current_step == 3 and sched2.decay_steps == sched.decay_steps
    for name in ("model", "optimizer", "lr"):
        good = (path / f"{name}.ckpt").read_bytes()
        torch.save(Payload(marker), path / f"{name}.ckpt")
        with pytest.raises(pickle.UnpicklingError):
            checkpointer()[0].recover_if_possible()
        assert not marker.exists(), name
        (path / f"{name}.ckpt").write_bytes(good)


# ---- 3. piped scp entries ---------------------------------------------------------------------------
@pytest.fixture
def no_pipes(monkeypatch):
    monkeypatch.setenv("SITOK_ALLOW_PIPES", "0")  # restored after the test, whatever it turns on


@pytest.mark.parametrize("form", ["{cmd} |", "| {cmd}", "ark:{cmd} |", "{cmd} |:0", "{cmd} |[0:1]", "  {cmd}|  "])
def test_piped_entries_are_refused(tmp_path, no_pipes, form):
    marker = tmp_path / "pwned"
    spec = form.format(cmd=f"touch {marker}")
    assert is_pipe(spec)
    scp = tmp_path / "feats.scp"
    scp.write_text(f"utt1 {spec}\n")
    with pytest.raises(PipeRefused) as err:
        read_scp(str(scp))
    assert str(err.value) == (
        f"{scp}: utterance utt1: piped entries run shell commands; refused "
        "(allow with --allow-pipes / allow_pipes: true)"
    )
    with pytest.raises(PipeRefused, match="piped entries run shell commands"):
        read_mat(spec)
    assert not marker.exists()


def test_allowed_pipes_run_and_plain_entries_read(tmp_path, no_pipes):
    import kaldiio

    mat = np.arange(6, dtype=np.float32).reshape(2, 3)
    kaldiio.save_mat(str(tmp_path / "one.mat"), mat)
    with kaldiio.WriteHelper(f"ark,scp:{tmp_path}/feats.ark,{tmp_path}/feats.scp") as w:
        w("utt1", mat)
    plain = read_scp(str(tmp_path / "feats.scp"))
    assert not is_pipe(plain["utt1"]) and np.array_equal(read_mat(plain["utt1"]), mat)
    marker = tmp_path / "ran"
    spec = f"touch {marker}; cat {tmp_path / 'one.mat'} |"
    allow_pipes(True)
    assert np.array_equal(read_mat(spec), mat) and marker.exists()
    allow_pipes(False)
    with pytest.raises(PipeRefused):
        read_mat(spec)


def test_cli_refuses_pipes_unless_allowed(tmp_path, no_pipes, caplog, capsys):
    import kaldiio

    from sitok.cli import main

    codes = np.array([[1, 2, 3, 1]], dtype=np.float32)  # codes-stats casts to int64
    kaldiio.save_mat(str(tmp_path / "codes.mat"), codes)
    marker = tmp_path / "ran"
    (tmp_path / "codes.scp").write_text(f"utt1 touch {marker}; cat {tmp_path / 'codes.mat'} |\n")
    args = ["codes-stats", str(tmp_path), "--codebook-size", "4"]
    assert main(args) == 1
    assert "codes.scp: utterance utt1: piped entries run shell commands" in caplog.text and not marker.exists()
    capsys.readouterr()
    assert main(["--allow-pipes", *args]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["frames"] == 4 and marker.exists()


def test_training_manifest_with_piped_feats_is_refused(tmp_path, no_pipes):
    from sitok.data.vocab import train_sentencepiece
    from sitok.train.tokenizer import dataio_prepare

    marker = tmp_path / "pwned"
    sp = train_sentencepiece(["hello world", "a b c d e", "speech tokens"] * 5, str(tmp_path / "lang"), vocab_size=20)
    GlobalCMVN(torch.zeros(128), torch.ones(128)).save(str(tmp_path / "cmvn.json"))
    csv = tmp_path / "manifest.csv"
    csv.write_text(f"ID,duration,wav,spk_id,wrd,feats,num_frames\ns1-u1,1.0,x.wav,s1,hello world,touch {marker} |,50\n")
    hp = {
        "train_csv": str(csv),
        "valid_csv": str(csv),
        "cmvn_file": str(tmp_path / "cmvn.json"),
        "sp_model": sp,
        "max_duration": 20.0,
        "batch_seconds": 4,
        "num_buckets": 1,
        "seed": 0,
    }
    with pytest.raises(PipeRefused, match=f"{csv}: utterance s1-u1: piped entries"):
        dataio_prepare(hp)
    assert not marker.exists()


# ---- 4. model and vocoder directories: ranges, shapes, format --------------------------------------
def test_model_dir_config_out_of_range_is_refused_before_building(tmp_path):
    from sitok import Tokenizer

    good = model_dir(tmp_path / "good")
    assert Tokenizer.from_pretrained(good, vocoder="griffin_lim").model.config.codebook_size == 64
    cfg = {**tiny_sitok().config.to_dict(), "codebook_size": 8589934592}  # a 1 KB file asking for 256 GB
    d = model_dir(tmp_path / "huge", model=tiny_sitok())
    (tmp_path / "huge" / "config.json").write_text(json.dumps({"format": "sitok-model-1", "model": cfg}))
    expected = r"huge/config.json: SiTokConfig: codebook_size must be an integer in \[2, 1048576\], got 8589934592"
    with pytest.raises(ValueError, match=expected):
        Tokenizer.from_pretrained(d, vocoder="griffin_lim")
    for field, value, message in (
        ("decoder", "magic", "decoder must be one of"),
        ("heads", -1, "heads must be"),
        ("x_skip", "yes", "x_skip must be true or false"),
        ("surprise", 1, r"unknown fields \['surprise'\]"),
    ):
        (tmp_path / "huge" / "config.json").write_text(json.dumps({"model": {**TINY_MODEL, field: value}}))
        with pytest.raises(ValueError, match=message):
            Tokenizer.from_pretrained(d, vocoder="griffin_lim")


def test_model_dir_weights_must_match_the_config_before_the_model_is_built(tmp_path, monkeypatch):
    """A config within range but far larger than its weights: the meta-device check refuses it, and
    the only SiTok built is the one on the meta device (nothing allocated)."""
    from sitok import Tokenizer
    from sitok.models import sitok as sitok_module

    d = model_dir(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(
        json.dumps({"model": {**TINY_MODEL, "hidden": 4096, "intermediate": 16384, "enc_layers": 16}})
    )
    devices = []
    init = sitok_module.SiTok.__init__

    def recording_init(self, *a, **kw):
        devices.append(torch.empty(0).device.type)
        init(self, *a, **kw)

    monkeypatch.setattr(sitok_module.SiTok, "__init__", recording_init)
    expected = r"m/model.pt: in_proj.weight has shape \[32, 512\], the config's model has \[4096, 512\]"
    with pytest.raises(ValueError, match=expected):
        Tokenizer.from_pretrained(d, vocoder="griffin_lim")
    assert devices == ["meta"]
    # missing and extra weights are named too
    state = torch.load(os.path.join(d, "model.pt"), weights_only=True)
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model": TINY_MODEL}))
    torch.save({k: v for k, v in state.items() if k != "to_latent.bias"}, os.path.join(d, "model.pt"))
    with pytest.raises(ValueError, match=r"model.pt: no weights for to_latent.bias \[8\]"):
        Tokenizer.from_pretrained(d, vocoder="griffin_lim")
    torch.save({**state, "extra.weight": torch.zeros(3)}, os.path.join(d, "model.pt"))
    with pytest.raises(ValueError, match=r"model.pt: extra.weight \[3\] is not part of the config's model"):
        Tokenizer.from_pretrained(d, vocoder="griffin_lim")
    marker = tmp_path / "pwned"
    torch.save({**state, "in_proj.weight": Payload(marker)}, os.path.join(d, "model.pt"))
    with pytest.raises(ValueError, match="model.pt: not a plain state dict"):
        Tokenizer.from_pretrained(d, vocoder="griffin_lim")
    assert not marker.exists()


def test_model_dir_format_versions(tmp_path):
    from sitok import Tokenizer

    d = model_dir(tmp_path / "m", format="sitok-model-9")
    with pytest.raises(ValueError) as err:
        Tokenizer.from_pretrained(d, vocoder="griffin_lim")
    assert str(err.value) == (
        f"{d}/config.json: format 'sitok-model-9' is newer than this toolkit reads (sitok-model-1); upgrade sitok"
    )
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    for fmt, message in (("sitok-vocoder-1", "is not a sitok-model directory"), (None, None)):
        if fmt is None:
            cfg.pop("format")  # hand-made directories without the field read as version 1
        else:
            cfg["format"] = fmt
        (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
        if message:
            with pytest.raises(ValueError, match=message):
                Tokenizer.from_pretrained(d, vocoder="griffin_lim")
        else:
            assert Tokenizer.from_pretrained(d, vocoder="griffin_lim").model.config.codebook_size == 64


def test_vocoder_dir_is_checked_like_a_model_dir(tmp_path):
    from sitok.infer.vocoder import VocosVocoder, export_vocoder, load_vocoder
    from sitok.models.vocos import Vocos, VocosConfig

    d = export_vocoder(Vocos(VocosConfig(dim=32, intermediate=64, layers=1)), str(tmp_path / "v"))
    assert VocosVocoder.from_pretrained(d).model.config.dim == 32
    path = tmp_path / "v" / "config.json"
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps({**cfg, "model": {**cfg["model"], "dim": 2**40}}))
    with pytest.raises(ValueError, match=r"VocosConfig: dim must be an integer in \[1, 65536\]"):
        VocosVocoder.from_pretrained(d)
    path.write_text(json.dumps({**cfg, "model": {**cfg["model"], "dim": 64}}))
    with pytest.raises(ValueError, match=r"v/model.pt: .* has shape \[32, 128, 7\], the config's model has \[64, 128"):
        VocosVocoder.from_pretrained(d)
    path.write_text(json.dumps({**cfg, "format": "sitok-vocoder-2"}))
    with pytest.raises(ValueError, match=r"'sitok-vocoder-2' is newer than this toolkit reads \(sitok-vocoder-1\)"):
        load_vocoder("auto", str(tmp_path / "v"))  # found, and refused by name rather than skipped
