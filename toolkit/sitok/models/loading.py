"""Loading model directories and checkpoints that other people wrote: data in, no code run, nothing
allocated that the weights do not hold.

    model, config = load_model_dir("exp/tokenizer_mini/model")    # SiTok, config.json as a dict

``config.json`` is plain JSON. Its ``format`` names the layout and its version ("sitok-model-1");
a newer version is refused ("upgrade sitok"); a model directory without the field (hand-made,
e.g. in tests, before the field was checked) is read as version 1. The ``model`` and ``mel``
mappings are range-checked (``SiTokConfig.from_dict``, ``MelConfig.from_dict``).

``model.pt`` is a state dict, loaded with ``weights_only=True`` (memory-mapped). The model is first
built on the meta device (no memory) and every key and shape of its state dict compared with the
file's: a config that asks for more than the weights hold (a 2**33-entry codebook next to a small
model.pt) is a one-line ValueError naming the file and the first difference, before the real model
is built.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from collections.abc import Callable

import torch
import yaml

from sitok.data.mel import GlobalCMVN, MelConfig
from sitok.fileio import atomic_dir, write_text_atomic
from sitok.models.sitok import SiTok, SiTokConfig

MODEL_FORMAT = "sitok-model-1"


def write_model_dir(
    out_dir: str,
    model: SiTok,
    *,
    cmvn: str | GlobalCMVN,
    state: dict | None = None,
    sp_model: str | None = None,
    extra: dict | None = None,
) -> str:
    """A model directory: ``config.json`` (plain data: the model and mel configs, the parameter
    count and ``extra`` fields), ``model.pt`` (a state dict loadable with ``weights_only=True``;
    ``state`` when the model itself holds shards), ``cmvn.json`` (a file copied or a
    GlobalCMVN saved) and ``sp.model`` when given. Written in a temporary directory and renamed,
    so a reader never sees a partial model."""
    with atomic_dir(out_dir) as tmp:
        weights = {k: v.detach().cpu().contiguous() for k, v in (state or model.state_dict()).items()}
        torch.save(weights, os.path.join(tmp, "model.pt"))
        if isinstance(cmvn, GlobalCMVN):
            cmvn.save(os.path.join(tmp, "cmvn.json"))
        else:
            shutil.copy(cmvn, os.path.join(tmp, "cmvn.json"))
        if sp_model:
            shutil.copy(sp_model, os.path.join(tmp, "sp.model"))
        config = {
            "format": MODEL_FORMAT,
            "model": model.config.to_dict(),
            "mel": MelConfig().to_dict(),
            "parameters": model.num_parameters(),
            **(extra or {}),
        }
        write_text_atomic(os.path.join(tmp, "config.json"), json.dumps(config, indent=1) + "\n")
    return out_dir


def check_format(found, newest: str, where: str, missing_ok: bool = False) -> None:
    """``found``: a config's ``format`` field; ``newest``: "<layout>-<version>" this toolkit reads."""
    layout, _, version = newest.rpartition("-")
    if found is None and missing_ok:
        return
    m = re.fullmatch(re.escape(layout) + r"-(\d+)", str(found))
    if m is None:
        raise ValueError(f"{where}: format {found!r} is not a {layout} directory ({newest})")
    if int(m[1]) > int(version):
        raise ValueError(f"{where}: format {found!r} is newer than this toolkit reads ({newest}); upgrade sitok")
    if int(m[1]) != int(version):
        raise ValueError(f"{where}: format {found!r} is not one this toolkit reads ({newest})")


def read_config(path: str, newest: str, missing_ok: bool = False) -> dict:
    """A config.json (a JSON object) whose ``format`` this toolkit reads."""
    with open(path, encoding="utf-8") as fh:
        try:
            cfg = json.load(fh)
        except ValueError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: not a JSON object")
    check_format(cfg.get("format"), newest, path, missing_ok)
    return cfg


def parse_config(parse: Callable, data, where: str):
    """``parse(data)`` (a config's ``from_dict``), its errors prefixed with ``where``."""
    try:
        return parse(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def load_weights(path: str) -> dict:
    """A state dict file as data: tensors only (``weights_only=True``, memory-mapped when the file
    allows it). Anything else is a ValueError naming the file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no weights")
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # the legacy (non-zip) format cannot be memory-mapped
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path}: not a plain state dict ({str(exc).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError) as exc:  # a cut or damaged zip archive, an empty file
        first = (str(exc).splitlines() or [type(exc).__name__])[0].split(". ")[0]
        raise ValueError(f"{path}: truncated or not a state dict ({first})") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{path}: not a state dict (names -> tensors)")
    return state


def check_state(expected: dict, state: dict, where: str) -> None:
    """ValueError naming ``where`` and the first key or shape in which ``state`` differs from
    ``expected`` (the state dict of the model the config describes, e.g. built on the meta device)."""
    for k, ref in expected.items():
        if k not in state:
            raise ValueError(f"{where}: no weights for {k} {list(ref.shape)}, which the config's model has")
        if tuple(state[k].shape) != tuple(ref.shape):
            raise ValueError(f"{where}: {k} has shape {list(state[k].shape)}, the config's model has {list(ref.shape)}")
    for k, v in state.items():
        if k not in expected:
            raise ValueError(f"{where}: {k} {list(v.shape)} is not part of the config's model")


def build_checked(
    build: Callable[[], torch.nn.Module], state: dict, where: str, config_path: str | None = None
) -> torch.nn.Module:
    """``build()`` first on the meta device, compared with ``state`` (``check_state``), then for real
    with ``state`` loaded. Errors of ``build`` (an inconsistent config) name ``config_path``."""
    try:
        with torch.device("meta"):
            meta = build()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{config_path or where}: {exc}") from None
    check_state(meta.state_dict(), state, where)
    del meta
    model = build()
    model.load_state_dict(state)
    return model


def load_model_dir(model_dir: str):
    """(SiTok, config.json as a dict) of a model directory, checked as the module docstring says."""
    cfg_path = os.path.join(model_dir, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{cfg_path}: not a SiTok model directory (no config.json)")
    cfg = read_config(cfg_path, MODEL_FORMAT, missing_ok=True)
    if "model" not in cfg:
        raise ValueError(f"{cfg_path}: no model mapping")
    model_cfg = parse_config(SiTokConfig.from_dict, cfg["model"], cfg_path)
    weights = os.path.join(model_dir, "model.pt")
    model = build_checked(lambda: SiTok(model_cfg), load_weights(weights), weights, cfg_path)
    return model, cfg


def mel_config(cfg: dict, where: str):
    """The ``mel`` mapping of a model or vocoder config.json, range-checked (defaults when absent)."""
    return parse_config(MelConfig.from_dict, cfg.get("mel"), where)


def load_model_config(path: str) -> dict:
    """The ``model_config`` mapping of an hparams YAML, or the ``model`` mapping of a model
    directory's config.json. The YAML is read by a safe loader: no code runs."""
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)["model"]
    with open(path, encoding="utf-8") as fh:
        doc = yaml.load(fh, Loader=_RefLoader)
    if "model_config" not in doc:
        raise ValueError(f"{path}: no model_config mapping")
    return _resolve_refs(doc["model_config"], doc, path)


class _RefLoader(yaml.SafeLoader):
    """Keeps hyperpyyaml's ``!ref <key>`` as ("!ref", "<key>") markers and reads other tags as None."""


_RefLoader.add_constructor("!ref", lambda loader, node: ("!ref", loader.construct_scalar(node)))
_RefLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _resolve_refs(value, doc: dict, path: str):
    if isinstance(value, tuple) and value and value[0] == "!ref":
        key = value[1].strip()
        if not (key.startswith("<") and key.endswith(">")):
            raise ValueError(f"{path}: only plain !ref <key> is supported in model_config, got {value[1]!r}")
        return _resolve_refs(doc[key[1:-1]], doc, path)
    if isinstance(value, dict):
        return {k: _resolve_refs(v, doc, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_refs(v, doc, path) for v in value]
    return value
