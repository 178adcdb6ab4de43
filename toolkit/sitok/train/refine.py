"""Decoder refinement on a trained tokenizer (paper sections 2.3, 2.4, Appendix C.1).

One Brain, seven kinds of run (``refine:`` in recipes/refine/hparams/*.yaml):

    decoder_ft   encoder + VQ frozen; the decoder trains further with the flow-matching loss
    token_cfg    as decoder_ft, plus whole-utterance token drop (p = 0.1) to a learned null cond
    shortcut     as decoder_ft, with a step-size embedding and the shortcut loss (losses/shortcut.py)
    light_head   as decoder_ft, with the decoder split into a main body (run once) and a head
    chunked      as decoder_ft, with a chunk-causal attention mask (``decoder_chunk`` tokens): the
                 decoder learns to work without the tokens after the current chunk, so it can
                 decode a stream chunk by chunk (``sitok.infer.streaming.ChunkedDecoder``)
    diffusion    the paper's "R + D" (Table 5): a regression ("R") model's decoder becomes a
                 diffusion decoder and is trained with the flow-matching loss on frozen tokens
    reparam      a diffusion model's decoder re-trains under another parameterisation
                 (``decoder_overrides``, e.g. {prediction: velocity}: the paper's) or geometry
                 (dec_hidden, dec_layers), warm-started from every trained layer whose shape still
                 fits (egs/mini/sitok/run_shortcut.sh; docs/RESULTS.md)

Every run starts from an exported model directory (``init_model``); parameters the new
architecture adds (null condition, d embedding) start as no-ops, and the light head's layers
start from the decoder's last layers. Only ``decoder.*`` parameters are trainable; the frozen
encoder, VQ (codebook buffers included) and CTC branch stay bit-identical.
"""

from __future__ import annotations

import copy
import logging
import os

import torch

from sitok.models import SiTok, SiTokConfig
from sitok.models.loading import MODEL_FORMAT, check_state, load_weights, parse_config, read_config
from sitok.train.tokenizer import TokenizerBrain

logger = logging.getLogger(__name__)

KINDS = ("decoder_ft", "token_cfg", "shortcut", "light_head", "chunked", "diffusion", "reparam")

# decoder keys a refine=diffusion|reparam run may set (the decoder trains anew under them)
DECODER_OVERRIDES = ("prediction", "x_skip", "loss", "dec_hidden", "dec_layers", "dec_intermediate")


def refined_config(
    base: dict,
    refine: str,
    light_head_layers: int = 0,
    keep_cfg: bool = True,
    decoder_overrides: dict | None = None,
    decoder_chunk: int = 0,
) -> dict:
    """The model config of a refinement run of kind ``refine`` from the base config."""
    if refine not in KINDS:
        raise ValueError(f"refine must be one of {KINDS}, got {refine!r}")
    if refine == "chunked" and int(decoder_chunk) < 1:
        raise ValueError(f"refine=chunked needs decoder_chunk >= 1 (tokens per chunk), got {decoder_chunk}")
    cfg = dict(base)
    regression = cfg.get("decoder", "diffusion") != "diffusion"
    overrides = dict(decoder_overrides or {})
    if overrides and refine not in ("diffusion", "reparam"):
        raise ValueError(f"decoder_overrides apply to refine=diffusion|reparam only (got refine={refine})")
    bad = sorted(set(overrides) - set(DECODER_OVERRIDES))
    if bad:
        raise ValueError(f"decoder_overrides: unknown keys {bad} (allowed: {list(DECODER_OVERRIDES)})")
    if refine == "diffusion":
        if not regression:
            raise ValueError(
                "refine=diffusion (R + D) starts from a regression model (decoder: regression); "
                "refine=reparam re-trains a diffusion decoder under decoder_overrides"
            )
        cfg["decoder"] = "diffusion"
        cfg.update(overrides)
        return cfg
    if refine == "reparam":
        if regression:
            raise ValueError("refine=reparam needs a diffusion decoder (refine=diffusion turns an R model into one)")
        if not {k: v for k, v in overrides.items() if cfg.get(k) != v}:
            raise ValueError(
                "refine=reparam: give decoder_overrides that change the decoder, "
                f"e.g. {{prediction: velocity}} (got {overrides or 'none'})"
            )
        cfg.update(overrides)
        return cfg
    if regression:
        raise ValueError(
            f"refine={refine} needs a diffusion decoder (this model is a regression 'R' baseline; "
            "refine=diffusion turns it into one)"
        )
    if refine == "token_cfg":
        cfg["token_cfg"] = True
    elif refine == "shortcut":
        cfg["shortcut"] = True
    elif refine == "light_head":
        cfg["light_head_layers"] = int(light_head_layers) or max(1, cfg["dec_layers"] // 4)
    elif refine == "chunked":
        cfg["decoder_chunk"] = int(decoder_chunk)
    if not keep_cfg and refine != "token_cfg":
        cfg["token_cfg"] = False
    return cfg


def _remap_light_head(state: dict, cfg: dict) -> dict:
    """Full-decoder weights -> light-head names: decoder layers [L-H, L) become head layers
    [0, H) and the final norm moves to the head. The body's norms lose t: each plain RMSNorm
    starts at the t-independent part of its AdaRMSNorm gain (the gain Linear's bias)."""
    n_body = cfg["dec_layers"] - cfg["light_head_layers"]
    out = {}
    for k, v in state.items():
        if k.startswith("decoder.body.blocks."):
            i = int(k.split(".")[3])
            rest = ".".join(k.split(".")[4:])
            if i >= n_body:
                out[f"decoder.head.blocks.{i - n_body}.{rest}"] = v
                continue
            if rest.endswith("norm.gain.bias"):
                out[f"decoder.body.blocks.{i}.{rest[: -len('gain.bias')]}weight"] = v
                continue
        if k.startswith("decoder.body.norm."):
            out["decoder.head.norm." + k[len("decoder.body.norm.") :]] = v
            continue
        out[k] = v
    return out


def _remap_regression(state: dict) -> dict:
    """Regression-decoder weights -> diffusion-decoder names: each plain RMSNorm weight becomes
    the t-independent bias of the AdaRMSNorm gain (its weight starts at 0), so every layer starts
    as the regression decoder's."""
    out = {}
    for k, v in state.items():
        if k.startswith("decoder.body.") and k.endswith("norm.weight"):
            k = k[: -len("weight")] + "gain.bias"
        out[k] = v
    return out


def load_for_refinement(
    init_model: str,
    refine: str,
    light_head_layers: int = 0,
    keep_cfg: bool = True,
    decoder_overrides: dict | None = None,
    decoder_chunk: int = 0,
) -> SiTok:
    """Build the refinement model from a model directory; logs what is new and what is left out.
    The directory's config.json and model.pt are checked against each other first (format, ranges,
    every weight's name and shape: ``sitok.models.loading``)."""
    cfg_path = os.path.join(init_model, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"init_model: {cfg_path} not found (export a tokenizer first: recipe stage 4)")
    base = read_config(cfg_path, MODEL_FORMAT, missing_ok=True).get("model")
    weights = os.path.join(init_model, "model.pt")
    state = load_weights(weights)
    with torch.device("meta"):
        base_model = SiTok(parse_config(SiTokConfig.from_dict, base, cfg_path))
    check_state(base_model.state_dict(), state, weights)
    cfg = refined_config(base, refine, light_head_layers, keep_cfg, decoder_overrides, decoder_chunk)
    model = SiTok(cfg)
    if refine == "reparam":
        # re-parameterisation: the decoder keeps its trained layers (warm start); a new x_t -> velocity
        # skip starts at -I, so at t = 0 the velocity begins as x_hat - x_t (x prediction's there)
        if model.decoder.skip is not None and not any(k.startswith("decoder.skip.") for k in state):
            torch.nn.init.zeros_(model.decoder.skip.bias)
            with torch.no_grad():
                model.decoder.skip.weight.copy_(-torch.eye(model.decoder.skip.weight.shape[0]))
    elif refine == "diffusion":
        state = _remap_regression(state)
        # x_t enters through a zero projection: the new decoder starts as the regression
        # function of cond (x prediction), and learns to use x_t and t from there
        torch.nn.init.zeros_(model.decoder.x_proj.weight)
        torch.nn.init.zeros_(model.decoder.x_proj.bias)
    if cfg.get("light_head_layers") and not base.get("light_head_layers"):
        state = _remap_light_head(state, cfg)
    own = model.state_dict()
    loadable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    new = sorted(set(own) - set(loadable))
    unused = sorted(set(state) - set(loadable))
    model.load_state_dict(loadable, strict=False)
    for part in ("in_proj", "encoder", "to_latent", "quantizer", "from_latent"):
        missing = [k for k in new if k.startswith(part + ".")]
        if missing:
            raise ValueError(f"{init_model}: frozen part {part} lacks weights {missing[:3]}: wrong model directory?")
    logger.info(
        "refine=%s from %s: %d tensors loaded; new (initialised here): %s; not used: %s",
        refine,
        init_model,
        len(loadable),
        new or "none",
        unused or "none",
    )
    return model


def freeze_all_but_decoder(model: torch.nn.Module) -> tuple[int, int]:
    """requires_grad only for decoder.* parameters. Returns (trainable, frozen) counts."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("decoder."))
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return n_train, sum(p.numel() for p in model.parameters()) - n_train


class RefineBrain(TokenizerBrain):
    """TokenizerBrain with frozen tokens, token drop, the shortcut loss and an EMA teacher."""

    def __init__(self, modules=None, *args, **kwargs):
        self._counts = freeze_all_but_decoder(modules["model"])  # before Brain counts trainable parameters
        super().__init__(modules, *args, **kwargs)

    def on_fit_start(self):
        n_train, n_frozen = freeze_all_but_decoder(self.model)
        hp = self.hparams
        logger.info(
            "refine=%s: %.2f M decoder parameters train, %.2f M (encoder, VQ, CTC) frozen; cfg_drop_prob=%g",
            hp.refine,
            n_train / 1e6,
            n_frozen / 1e6,
            self.cfg_drop_prob,
        )
        self.ema = None
        if hp.refine == "shortcut" and float(hp.ema_decay) > 0:
            self.ema = copy.deepcopy(self.model.decoder).to(self.device).eval().requires_grad_(False)
            self.checkpointer.add_recoverable("ema_decoder", self.ema)
        super().on_fit_start()

    @property
    def cfg_drop_prob(self) -> float:
        return float(self.hparams.cfg_drop_prob) if self.model.config.token_cfg else 0.0

    def init_optimizers(self):
        params = [p for p in self.modules.parameters() if p.requires_grad]
        self.optimizer = self.opt_class(params)
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        mel, rel = batch.mel
        mel_lengths = (rel * mel.shape[1]).round().long()
        shortcut = None
        if self.model.config.shortcut:
            hp = self.hparams
            shortcut = {"kind": hp.shortcut_loss, "bootstrap_every": hp.bootstrap_every}
        return self.modules.model(  # SiTok.forward_refine
            mel, mel_lengths, mode="refine", cfg_drop_prob=self.cfg_drop_prob, shortcut=shortcut, teacher=self.ema
        )

    @torch.no_grad()
    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        super().on_fit_batch_end(batch, outputs, loss, should_step)
        if should_step and self.ema is not None:
            decay = float(self.hparams.ema_decay)
            for pe, p in zip(self.ema.parameters(), self.model.decoder.parameters()):
                pe.lerp_(p.detach(), 1.0 - decay)
