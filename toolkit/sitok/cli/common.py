"""What every ``sitok`` command shares: logging, exit status, help layout, option types, loading a
model directory with a one-line reason when it fails, and output-name checks."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

logger = logging.getLogger("sitok")

# exit status of every command (documented in the top-level help and README.md)
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EPILOG = """exit status:
  0    success
  1    error: bad input, data, model directory or output path; one line on stderr names the file
       and the reason (--log-level DEBUG adds the traceback)
  2    usage error: unknown command or option, bad option value (argparse)
  130  interrupted (Ctrl-C)
"""
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

VOCODERS = ("auto", "vocos", "griffin_lim")
VOCODER_HELP = "auto: the model directory's trained vocoder when it has one, else Griffin-Lim"
TEMPERATURE_HELP = "start-noise scale tau (1: sample; 0: deterministic decode from the noise mode)"
MODEL_DIR_HELP = "model directory (config.json, model.pt, cmvn.json; optional vocoder/)"
DEVICE_HELP = "torch device (cpu, cuda, cuda:1, ...)"
NO_PROGRESS_HELP = "no progress bars"


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
    )


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions and epilogs as written; every optional argument's default shown after its help."""

    def _get_help_string(self, action):
        return action.help if action.required else super()._get_help_string(action)


def add_command(sub, name: str, func, help: str) -> argparse.ArgumentParser:
    """A subcommand whose description is its help line, laid out by HelpFormatter."""
    p = sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
    p.set_defaults(func=func)
    return p


def nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def add_decoding(p: argparse.ArgumentParser, steps: int = 16, seed_help: str = "start-noise seed") -> None:
    """The decoding options shared by decode, resynth and resynth-set."""
    p.add_argument("--steps", type=positive_int, default=steps, help="Euler steps of the decoder ODE")
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--cfg-scale", type=nonneg_float, default=1.0, help="token CFG scale w (1: plain conditional)")
    p.add_argument("--temperature", type=nonneg_float, default=1.0, help=TEMPERATURE_HELP)


def torch_threads(n: int) -> None:
    if n > 0:
        import torch

        torch.set_num_threads(n)


def one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception as one short line: an OSError as 'FILE: reason', others as their message
    (prefixed by the type when that says more than the message alone)."""
    if isinstance(exc, OSError) and exc.filename is not None:
        msg = f"{exc.filename}: {exc.strerror or exc}"
    elif isinstance(exc, (ValueError, RuntimeError)) and str(exc):
        msg = str(exc)
    else:
        msg = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    msg = " ".join(msg.split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def load_tokenizer(a):
    """The Tokenizer of ``a.model_dir`` on ``a.device``; a failure names the file that is bad."""
    from sitok.infer import Tokenizer

    try:
        return Tokenizer.from_pretrained(a.model_dir, device=a.device, vocoder=getattr(a, "vocoder", "auto"))
    except Exception as exc:  # name the file of the model directory that failed, and why
        msg = one_line(exc)
        if msg.startswith((os.path.join(a.model_dir, ""), f"{a.model_dir}:")):  # the loader named it already
            raise ValueError(msg) from exc
        raise ValueError(model_dir_failure(a.model_dir, exc)) from exc


def model_dir_failure(model_dir: str, exc: Exception) -> str:
    """Why ``model_dir`` failed to load, as '<dir>/<file>: <reason> (<detail>)'.

    Runs only after a failure: it checks the directory's files in order (config.json, cmvn.json,
    the vocoder's files, model.pt) and names the first bad one; ``exc`` is reported when all look
    sound (e.g. a state dict that does not fit the config, or an unusable device)."""
    import torch

    from sitok.models import SiTokConfig

    def read_json(path: str, keys: tuple) -> str | None:
        try:
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except OSError as e:
            return f"{path}: cannot read ({e.strerror or e})"
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            return f"{path}: malformed JSON ({one_line(e, 200)})"
        missing = [k for k in keys if not isinstance(doc, dict) or k not in doc]
        return f"{path}: no {', '.join(missing)} entry (not a SiTok model file)" if missing else None

    def read_state(path: str) -> str | None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except OSError as e:
            return f"{path}: cannot read ({e.strerror or e})"
        except Exception as e:  # noqa: BLE001 - EOFError, UnpicklingError, RuntimeError (zip), ...
            return f"{path}: truncated or not a state dict ({one_line(e, 200)})"
        return None if isinstance(state, dict) else f"{path}: not a state dict (holds a {type(state).__name__})"

    if not os.path.isdir(model_dir):
        return f"{model_dir}: {'not a directory' if os.path.exists(model_dir) else 'no such directory'} (a model dir)"
    cfg_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(cfg_path):
        return f"{cfg_path}: missing (not a SiTok model directory)"
    problem = read_json(cfg_path, ("model",))
    if problem is None:
        with open(cfg_path, encoding="utf-8") as fh:
            try:
                SiTokConfig.from_dict(json.load(fh)["model"])
            except (TypeError, ValueError, AttributeError) as e:
                problem = f"{cfg_path}: bad model config ({one_line(e, 200)})"
    problem = problem or read_json(os.path.join(model_dir, "cmvn.json"), ("mean", "var"))
    voc_dir = os.path.join(model_dir, "vocoder")
    if not problem and os.path.isdir(voc_dir):
        problem = read_json(os.path.join(voc_dir, "config.json"), ("model",))
        problem = problem or read_state(os.path.join(voc_dir, "model.pt"))
    problem = problem or read_state(os.path.join(model_dir, "model.pt"))
    if problem:
        return problem
    if "state_dict" in str(exc):
        return f"{os.path.join(model_dir, 'model.pt')}: does not fit config.json ({one_line(exc, 200)})"
    return f"{model_dir}: cannot load the model ({one_line(exc, 300)})"


def check_output(path: str) -> str:
    """An output file name must not be an existing directory (-o keeps the name given)."""
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory; -o takes a file name")
    return path
