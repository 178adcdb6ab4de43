"""SiTok, the Speech Diffusion Tokenizer (paper section 2, Appendix A and D).

    mel [B, T50, 128] -> stack 4 frames -> [B, T, 512] -> Linear -> causal Llama encoder
      -> Linear(hidden -> 32) -> VQ (65,536 x 32, EMA) -> z_q -> Linear(32 -> hidden) = cond
    cond -> causal Llama CTC decoder -> Linear -> vocab            (CTC loss, weight 0.1)
    cond, x_t, t -> non-causal Llama decoder with AdaRMSNorm(t) -> velocity [B, T, 512]

T = T50 / 4 is the token rate (12.5 Hz). Total loss = L_diff + L_vq + ctc_weight * L_ctc.
``decoder="regression"`` is the paper's "R" baseline: the decoder predicts x from cond (L1).
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from sitok.checks import check_fields, unknown_fields
from sitok.layers import (
    AdaRMSNorm,
    LlamaStack,
    TimestepEmbedding,
    cached_positions,
    lengths_to_mask,
    stack_frames,
    stacked_lengths,
    unstack_frames,
)
from sitok.losses import ctc_loss, flow_matching_loss, reconstruction_error, shortcut_loss
from sitok.quantizers import KINDS, build_quantizer

SHORTCUT_BASE_STEPS = 128  # the smallest shortcut step (d = 1/128) stands in for d = 0


def shortcut_level(d: torch.Tensor) -> torch.Tensor:
    """Step size d in (0, 1] -> log2(1/d) / log2(128) in [0, 1]: what the d embedding sees."""
    return torch.log2(1.0 / d.clamp(1.0 / SHORTCUT_BASE_STEPS, 1.0)) / math.log2(SHORTCUT_BASE_STEPS)


@dataclass
class SiTokConfig:
    n_mels: int = 128
    stack: int = 4  # mel frames per token (50 Hz / 4 = 12.5 Hz)
    mel_rate: float = 50.0
    hidden: int = 256
    intermediate: int = 1024
    heads: int = 4
    enc_layers: int = 4
    dec_layers: int = 4
    ctc_layers: int = 2
    dec_hidden: int | None = None  # decoder width (default: hidden)
    dec_intermediate: int | None = None
    quantizer: str = "vq"  # vq | rvq | fsq | bsq
    codebook_size: int = 65536
    codebook_dim: int = 32
    num_codebooks: int = 1  # CN (residual VQ when > 1)
    quantizer_kwargs: dict = field(default_factory=dict)
    vocab_size: int = 256  # CTC vocabulary incl. blank = 0; 0 disables the CTC branch
    ctc_weight: float = 0.1
    ctc_upsample: int = 1  # CTC frames per token: characters or phones (10-17/s) need 2-3 at 12.5 Hz
    ctc_dropout: float = 0.0  # dropout on the CTC decoder's input and before its output layer (training only)
    decoder: str = "diffusion"  # diffusion | regression
    loss: str = "l1"  # l1 | l2
    prediction: str = "velocity"  # velocity (v = x - eps) | x (predict clean x; v = (x_hat - x_t) / (1 - t))
    x_skip: bool = True  # linear path from x_t to the velocity (needed when dec width < 512)
    time_embed_dim: int | None = None  # AdaRMSNorm conditioning width (default: decoder width)
    checkpointing: bool = False  # activation checkpointing (large configs)
    # ---- refinement (paper section 2.3, 2.4, Appendix C.1) ----
    token_cfg: bool = False  # learned null condition for token classifier-free guidance
    shortcut: bool = False  # decoder also conditioned on the step size d (shortcut models)
    light_head_layers: int = 0  # > 0: the last N decoder layers form a light diffusion head
    decoder_chunk: int = 0  # > 0: chunk-causal decoder (streaming): a token sees its chunk of N and the ones before

    @property
    def frame_dim(self) -> int:
        return self.n_mels * self.stack

    @property
    def token_rate(self) -> float:
        return self.mel_rate / self.stack

    @property
    def bits_per_second(self) -> float:
        return self.token_rate * self.num_codebooks * math.log2(self.codebook_size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SiTokConfig:
        """A config from plain data (config.json, hparams), range-checked by ``validate``."""
        if not isinstance(d, dict):
            raise ValueError(f"SiTokConfig: expected a mapping, got {type(d).__name__}")
        if unknown := unknown_fields(cls, d):
            raise ValueError(f"SiTokConfig: unknown fields {unknown}")
        return cls(**d).validate()

    def validate(self) -> SiTokConfig:
        """Every field within plausible bounds (ValueError naming the first that is not); returns self.
        The bounds keep a config read from a file from asking for absurd allocations; the weights'
        shapes are checked against the model before it is built (``sitok.models.loading``)."""
        check_fields(
            "SiTokConfig", self, ints=_CONFIG_INTS, floats=_CONFIG_FLOATS, choices=_CONFIG_CHOICES, bools=_CONFIG_BOOLS
        )
        if not isinstance(self.quantizer_kwargs, dict) or not all(isinstance(k, str) for k in self.quantizer_kwargs):
            raise ValueError(
                f"SiTokConfig: quantizer_kwargs must be a mapping with string keys, got {self.quantizer_kwargs!r}"
            )
        return self


_DIM, _LAYERS = (1, 65536), (0, 1024)
_CONFIG_INTS = {
    "n_mels": (1, 4096),
    "stack": (1, 64),
    "hidden": _DIM,
    "intermediate": _DIM,
    "heads": (1, 1024),
    "enc_layers": _LAYERS,
    "dec_layers": (1, 1024),
    "ctc_layers": _LAYERS,
    "dec_hidden": _DIM,
    "dec_intermediate": _DIM,
    "codebook_size": (2, 2**20),
    "codebook_dim": _DIM,
    "num_codebooks": (1, 1024),
    "vocab_size": (0, 2**20),
    "ctc_upsample": (1, 64),
    "time_embed_dim": _DIM,
    "light_head_layers": _LAYERS,
    "decoder_chunk": (0, 4096),
}
_CONFIG_FLOATS = {"mel_rate": (1e-3, 1e5), "ctc_weight": (0.0, 1e6), "ctc_dropout": (0.0, 0.9)}
_CONFIG_CHOICES = {
    "quantizer": ("vq", "rvq", "fsq", "bsq"),
    "decoder": ("diffusion", "regression"),
    "loss": ("l1", "l2"),
    "prediction": ("velocity", "x"),
}
_CONFIG_BOOLS = ("x_skip", "checkpointing", "token_cfg", "shortcut")


class Decoder(nn.Module):
    """Non-causal Llama decoder, split into a part run once per utterance and a part run per step.

        h = decoder.condition(cond, mask)               # once: cond MLP (+ main body, light head)
        out = decoder.step(h, mask, x_t, t, d)         # every ODE step -> velocity or x_hat

    Full decoder (``light_head_layers=0``): all layers run every step on cond + x_t, with
    AdaRMSNorm(t). Light-weight head (paper Appendix C.1): the first ``dec_layers - H`` layers
    (the main body) run once on cond and give h_base; the last H layers (the head) run every
    step on x_t + h_base with AdaRMSNorm(t). Shortcut models add a step-size embedding of d to the
    timestep embedding. Token CFG replaces the whole cond of dropped utterances by a learned null
    condition. Regression ("R"): cond -> x_hat, no x_t, no t.

    Chunk-causal (``decoder_chunk`` N > 0): the tokens are cut into chunks of N from the first,
    and a token attends to the tokens of its own chunk and of every earlier chunk only. What the
    decoder makes of chunk k then depends on tokens 0 .. (k + 1) N - 1 alone, so decoding a
    stream chunk by chunk gives what decoding the whole utterance gives, N tokens after they
    arrive (``sitok.infer.streaming.ChunkedDecoder``).
    """

    def __init__(self, cfg: SiTokConfig):
        super().__init__()
        width = cfg.dec_hidden or cfg.hidden
        inter = cfg.dec_intermediate or cfg.intermediate
        self.diffusion = cfg.decoder == "diffusion"
        self.cond_mlp = nn.Sequential(nn.Linear(cfg.hidden, width), nn.SiLU(), nn.Linear(width, width))
        self.null_cond = nn.Parameter(torch.zeros(cfg.hidden)) if cfg.token_cfg else None
        head = cfg.light_head_layers if self.diffusion else 0
        if not 0 <= head < cfg.dec_layers or (head and head == cfg.dec_layers):
            raise ValueError(f"light_head_layers={head} must be in [0, dec_layers={cfg.dec_layers})")
        tdim = (cfg.time_embed_dim or width) if self.diffusion else None
        if self.diffusion:
            self.x_proj = nn.Linear(cfg.frame_dim, width)
            self.t_embed = TimestepEmbedding(tdim)
            self.d_embed = TimestepEmbedding(tdim) if cfg.shortcut else None  # starts as a no-op (_init_weights)
            self.skip = nn.Linear(cfg.frame_dim, cfg.frame_dim) if cfg.x_skip else None

        def stack(n, c, norm=True):
            return LlamaStack(
                n, width, inter, cfg.heads, causal=False, cond_dim=c, final_norm=norm, checkpointing=cfg.checkpointing
            )

        if head:
            # main body: once per utterance, no t; h_base is its residual stream (the head normalises)
            self.body = stack(cfg.dec_layers - head, None, norm=False)
            self.head = stack(head, tdim)  # light head: every step
        else:
            self.body = stack(cfg.dec_layers, tdim)
            self.head = None
        self.out = nn.Linear(width, cfg.frame_dim)
        self.chunk = cfg.decoder_chunk

    def attention_mask(self, mask: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor | None:
        """The padding mask [B, T] as the stacks take it: itself, or for a chunk-causal decoder
        [B, T, T], True where token i may attend to token j (j's chunk not after i's, j valid)."""
        if not self.chunk:
            return mask
        b, t = h.shape[:2]
        chunk = torch.arange(t, device=h.device) // self.chunk
        visible = chunk[None, :] <= chunk[:, None]  # [T (query), T (key)]
        keys = mask if mask is not None else torch.ones(b, t, dtype=torch.bool, device=h.device)
        return visible[None] & keys[:, None, :]

    # ---- token CFG ----------------------------------------------------------------------
    def drop_tokens(self, cond: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
        """Replace the cond [B, T, H] of utterances with ``drop`` [B] True by the null condition."""
        if drop is None:
            return cond
        if self.null_cond is None:
            raise ValueError("this decoder has no null condition (token_cfg: False): it cannot drop tokens")
        return torch.where(drop.view(-1, 1, 1), self.null_cond.to(cond.dtype), cond)

    # ---- once per utterance / every step ------------------------------------------------
    def condition(self, cond, mask=None, drop=None, caches=None):
        """The per-utterance part. ``caches`` (chunk-causal decoders, one chunk of tokens at a
        time, no padding): the body's keys and values of the earlier chunks, extended here."""
        h = self.cond_mlp(self.drop_tokens(cond, drop))  # [B, T, W]
        if self.head is not None or not self.diffusion:  # light head: h_base; regression: the final hidden states
            h = self.body(h, self.attention_mask(mask, h)) if caches is None else self._cached(self.body, h, caches)
        return h

    def step(self, h, mask, x_t, t, d=None, caches=None):
        """One decoder evaluation: x_t [B, T, 512], t [B], d [B] (shortcut step size) -> [B, T, 512].
        ``caches``: as in ``condition``, the stepped stack's keys and values at this t."""
        c = self.t_embed(t)  # [B, C]
        if self.d_embed is not None:
            d = torch.full_like(t, 1.0 / SHORTCUT_BASE_STEPS) if d is None else d
            c = c + self.d_embed(shortcut_level(d))
        stack, x = (self.head if self.head is not None else self.body), h + self.x_proj(x_t)
        out = self.out(
            stack(x, self.attention_mask(mask, h), c) if caches is None else self._cached(stack, x, caches, c)
        )
        return out + self.skip(x_t) if self.skip is not None else out

    def _cached(self, stack, x, caches, c=None):
        past = cached_positions(caches)
        if not self.chunk or x.shape[1] > self.chunk or past % self.chunk:
            raise ValueError(
                f"decoder: incremental decoding takes the chunks of a chunk-causal decoder one by one "
                f"(decoder_chunk {self.chunk}; got {x.shape[1]} tokens after {past})"
            )
        return stack.forward_cached(x, caches, c, chunk=True)

    def forward(self, cond, mask=None, x_t=None, t=None, d=None, drop=None):
        h = self.condition(cond, mask, drop)
        if not self.diffusion:
            return self.out(h)  # x_hat [B, T, 512]
        return self.step(h, mask, x_t, t, d)


def _accepted_kwargs(kind: str, kwargs: dict) -> dict:
    """Keep the keys the quantizer class takes (RVQ forwards extras to its stages); warn about
    the rest, so one quantizer_kwargs mapping can serve ablations that switch the quantizer."""
    names = set(inspect.signature(KINDS[kind].__init__).parameters)
    if kind == "rvq":
        names |= set(inspect.signature(KINDS["vq"].__init__).parameters)
    dropped = sorted(set(kwargs) - names)
    if dropped:
        logging.getLogger(__name__).warning("quantizer_kwargs %s do not apply to %s; ignored", dropped, kind)
    return {k: v for k, v in kwargs.items() if k in names}


class SiTok(nn.Module):
    def __init__(self, config: SiTokConfig | dict | None = None, **kwargs):
        super().__init__()
        if isinstance(config, dict):
            config = SiTokConfig.from_dict(config)
        self.config = cfg = config or SiTokConfig.from_dict(kwargs)

        # encoder: stacked mel -> z
        self.in_proj = nn.Linear(cfg.frame_dim, cfg.hidden)
        self.encoder = LlamaStack(
            cfg.enc_layers, cfg.hidden, cfg.intermediate, cfg.heads, causal=True, checkpointing=cfg.checkpointing
        )
        self.to_latent = nn.Linear(cfg.hidden, cfg.codebook_dim)
        qkw = dict(cfg.quantizer_kwargs)
        if cfg.quantizer in ("vq", "rvq"):
            qkw.setdefault("codebook_size", cfg.codebook_size)
        if cfg.quantizer == "rvq" or cfg.num_codebooks > 1:
            kind = "rvq"
            qkw.setdefault("num_codebooks", cfg.num_codebooks)
        else:
            kind = cfg.quantizer
        if kind == "fsq":
            qkw.setdefault("levels", [2] * cfg.codebook_dim)
        qkw = _accepted_kwargs(kind, qkw)
        self.quantizer = build_quantizer(kind, cfg.codebook_dim, **qkw)
        if (self.quantizer.codebook_size, self.quantizer.num_codebooks) != (cfg.codebook_size, cfg.num_codebooks):
            raise ValueError(
                f"config says {cfg.num_codebooks} x {cfg.codebook_size} codes but the {kind} quantizer has "
                f"{self.quantizer.num_codebooks} x {self.quantizer.codebook_size} (FSQ: prod(levels); BSQ: 2**dim)"
            )
        self.from_latent = nn.Linear(cfg.codebook_dim, cfg.hidden)
        # CTC branch on the quantised latents
        self.ctc = None
        if cfg.ctc_upsample < 1:
            raise ValueError(f"ctc_upsample must be a positive integer, got {cfg.ctc_upsample}")
        if cfg.vocab_size > 0 and cfg.ctc_layers > 0:
            self.ctc = LlamaStack(cfg.ctc_layers, cfg.hidden, cfg.intermediate, cfg.heads, causal=True)
            # U CTC frames per token: one linear map to U x vocab logits, read as U consecutive frames
            self.ctc_head = nn.Linear(cfg.hidden, cfg.vocab_size * cfg.ctc_upsample)
            self.ctc_dropout = nn.Dropout(cfg.ctc_dropout)
        self.decoder = Decoder(cfg)
        self._init_weights()

    def _init_weights(self) -> None:
        """Every Linear: weight N(0, 0.02), bias 0, drawn in module order; except two kinds that start as no-ops:
        AdaRMSNorm gains keep their own weight 0, bias 1 (a plain RMSNorm; no draw), and the shortcut step-size
        embedding's output layer starts at 0 (a shortcut model fine-tuned from a base model starts as the base)."""
        ada_gains = {m.gain for m in self.modules() if isinstance(m, AdaRMSNorm)}
        d_out = self.decoder.d_embed.mlp[-1] if getattr(self.decoder, "d_embed", None) is not None else None
        for m in self.modules():
            if not isinstance(m, nn.Linear) or m.weight.is_meta or m in ada_gains:
                continue
            if m is d_out:
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)
            else:
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # ---- sizes --------------------------------------------------------------------------
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def token_lengths(self, mel_lengths: torch.Tensor) -> torch.Tensor:
        return stacked_lengths(mel_lengths, self.config.stack)

    # ---- encoder side -------------------------------------------------------------------
    def encode_latents(self, mel: torch.Tensor, mel_lengths: torch.Tensor | None = None):
        """mel [B, T50, 128] (normalised) -> z [B, T, codebook_dim], token mask [B, T]."""
        x = stack_frames(mel, self.config.stack)  # [B, T, 512]
        mask = None
        if mel_lengths is not None:
            mask = lengths_to_mask(self.token_lengths(mel_lengths), x.shape[1])
        return self.encode_frames(x, mask), mask

    def encode_frames(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Stacked frames [B, T, stack * n_mels] (normalised), token mask [B, T] -> z [B, T, codebook_dim]."""
        return self.to_latent(self.encoder(self.in_proj(x), mask))

    @torch.no_grad()
    def encode(self, mel: torch.Tensor, mel_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """codes [B, CN, T] (padded positions hold codes of padding; use token_lengths)."""
        z, mask = self.encode_latents(mel, mel_lengths)
        return self.quantizer.encode(z, mask)

    def cond_from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        z_q = self.quantizer.decode(codes)  # FSQ / BSQ give float32 whatever the model's dtype
        return self.from_latent(z_q.to(self.from_latent.weight.dtype))  # [B, T, hidden]

    # ---- decoder side -------------------------------------------------------------------
    def velocity(self, x_t, t, h, mask=None, d=None, caches=None):
        """v(x_t, t | h): h = ``decoder.condition(cond)``; x_t [B, T, 512], t [B], d [B] -> [B, T, 512]
        (``caches``: one chunk of a chunk-causal decoder after the cached ones, ``Decoder.step``)."""
        out = self.decoder.step(h, mask, x_t, t, d) if caches is None else self.decoder.step(h, mask, x_t, t, d, caches)
        if self.config.prediction == "x":  # out is x_hat; Euler steps never reach t = 1
            return (out - x_t) / (1.0 - t).clamp_min(1e-3).view(-1, 1, 1)
        return out

    def velocity_fn(self, cond, mask=None, steps: int | None = None, cfg_scale: float = 1.0):
        """A closure (x_t, t) -> velocity for an ODE sampler: the per-utterance part of the decoder
        runs here once. Shortcut models step with d = 1/steps. Token CFG with scale w:
        v = v_u + w (v_c - v_u), conditional and null-condition rows in one batch."""
        d_val = 1.0 / steps if (self.config.shortcut and steps) else None
        guided, drop = cfg_scale != 1.0, None
        if guided:
            b = cond.shape[0]
            drop = torch.arange(2 * b, device=cond.device) >= b
            cond = torch.cat([cond, cond])
            mask = None if mask is None else torch.cat([mask, mask])
        h = self.decoder.condition(cond, mask, drop)

        def fn(x_t, t):
            if guided:
                x_t, t = torch.cat([x_t, x_t]), torch.cat([t, t])
            d = None if d_val is None else torch.full_like(t, d_val)
            v = self.velocity(x_t, t, h, mask, d)
            if not guided:
                return v
            v_c, v_u = v.chunk(2)
            return v_u + cfg_scale * (v_c - v_u)

        return fn

    # ---- training: one method per mode --------------------------------------------------
    TRAINING_MODES = ("joint", "continuous", "refine")

    def forward(self, *args, mode: str = "joint", **kwargs) -> dict:
        """Losses of one batch by ``forward_<mode>``; trainers call the model itself so a DDP wrapper syncs grads."""
        if mode not in self.TRAINING_MODES:
            raise ValueError(f"mode must be one of {self.TRAINING_MODES}, got {mode!r}")
        return getattr(self, f"forward_{mode}")(*args, **kwargs)

    def forward_joint(self, mel, mel_lengths, targets=None, target_lengths=None, *, ctc_weight=None) -> dict:
        """The paper's training: encoder, VQ, decoder and CTC branch learn together.

        mel [B, T50, 128] normalised; targets [B, U] CTC ids (0 = blank). loss = diff + vq + ctc_weight * ctc;
        ``ctc_weight`` overrides the configured CTC weight for this batch (a weight schedule).
        """
        z, mask = self.encode_latents(mel, mel_lengths)
        q = self.quantizer(z, mask)
        cond = self.from_latent(q.z_q)
        out = {"vq": q.loss, "stats": dict(q.stats), "codes": q.codes, "token_mask": mask}
        return self._decoder_and_ctc_losses(out, cond, mel, mel_lengths, targets, target_lengths, ctc_weight)

    def forward_continuous(self, mel, mel_lengths, targets=None, target_lengths=None, *, ctc_weight=None) -> dict:
        """The first phase of the content-first schedule: ``forward_joint`` with the VQ bypassed. Decoder and CTC
        branch read the continuous latents z: no VQ loss, no codebook update, no codes."""
        z, mask = self.encode_latents(mel, mel_lengths)
        if getattr(self.quantizer, "normalize", False):  # cosine VQ: the latents it will see lie on the sphere
            z = nn.functional.normalize(z, dim=-1)
        cond = self.from_latent(z)
        out = {"vq": torch.zeros((), device=mel.device), "stats": {}, "codes": None, "token_mask": mask}
        return self._decoder_and_ctc_losses(out, cond, mel, mel_lengths, targets, target_lengths, ctc_weight)

    def forward_refine(self, mel, mel_lengths, *, cfg_drop_prob: float = 0.0, shortcut=None, teacher=None) -> dict:
        """Decoder refinement: the frozen encoder + VQ give cond (no gradients, no codebook update, no VQ or CTC
        loss) and only the decoder learns.

        ``cfg_drop_prob``: token CFG, the share of utterances that get the null condition (in training mode).
        ``shortcut``: kwargs of ``shortcut_loss`` (shortcut models); ``teacher`` is the decoder that builds its
        targets (default: this one, without gradients).
        """
        cond, mask, codes = self.frozen_cond(mel, mel_lengths)
        out = {"vq": torch.zeros((), device=mel.device), "stats": {}, "codes": codes, "token_mask": mask}
        drop = None
        if cfg_drop_prob > 0 and self.training:
            drop = torch.rand(mel.shape[0], device=mel.device) < cfg_drop_prob
            out["stats"]["cfg_dropped"] = drop.float().mean().detach()
        out["diff"], stats = self._decoder_loss(cond, mask, mel, drop, shortcut, teacher)
        out["stats"].update(stats)
        out["loss"] = out["diff"] + out["vq"]
        return out

    def frozen_cond(self, mel, mel_lengths):
        """cond and token mask from the frozen encoder + VQ (refinement stages): no gradients and
        no codebook update, the same cond ``decode`` builds from the codes."""
        with torch.no_grad():
            z, mask = self.encode_latents(mel, mel_lengths)
            codes = self.quantizer.encode(z, mask)
            return self.cond_from_codes(codes), mask, codes

    def _decoder_and_ctc_losses(self, out, cond, mel, mel_lengths, targets, target_lengths, ctc_weight) -> dict:
        """Adds the decoder loss "diff", the CTC loss (with targets, a CTC branch and a weight > 0) and the total."""
        mask = out["token_mask"]
        out["diff"], _ = self._decoder_loss(cond, mask, mel)
        loss = out["diff"] + out["vq"]
        weight = self.config.ctc_weight if ctc_weight is None else ctc_weight
        if self.ctc is not None and targets is not None and weight > 0:
            logits = self.ctc_from_cond(cond, mask)  # [B, T * U, V]
            lengths = self.ctc_lengths(self.token_lengths(mel_lengths))
            out["ctc"], out["ctc_not_fitting"] = ctc_loss(logits, lengths, targets, target_lengths)
            loss = loss + weight * out["ctc"]
        out["loss"] = loss
        return out

    def _decoder_loss(self, cond, mask, mel, drop=None, shortcut=None, teacher=None) -> tuple[torch.Tensor, dict]:
        """(loss, stats) of the decoder on the stacked mel given cond: L1/L2 for the regression decoder, else
        flow matching, or with ``shortcut`` the shortcut loss (``teacher``: see ``forward_refine``).
        ``drop`` [B]: utterances that get the null condition (token CFG)."""
        cfg = self.config
        if cfg.prediction not in ("velocity", "x"):
            raise ValueError(f"prediction must be velocity|x, got {cfg.prediction!r}")
        x = stack_frames(mel, cfg.stack)  # target [B, T, 512]
        if cfg.decoder != "diffusion":
            return reconstruction_error(self.decoder(cond, mask, drop=drop), x, mask, cfg.loss), {}
        h = self.decoder.condition(cond, mask, drop)
        if shortcut is None:
            fn = lambda x_t, t: self.decoder.step(h, mask, x_t, t)  # noqa: E731
            return flow_matching_loss(fn, x, mask, cfg.loss, prediction=cfg.prediction), {}
        t_dec = teacher if teacher is not None else self.decoder
        with torch.no_grad():
            h_t = h.detach() if teacher is None else t_dec.condition(cond, mask, drop)
        parts = shortcut_loss(
            _rows_fn(self.decoder, h, mask), _rows_fn(t_dec, h_t, mask), x, mask, prediction=cfg.prediction, **shortcut
        )
        return parts["loss"], {"shortcut_fm": parts["fm"], "shortcut_sc": parts["sc"]}

    # ---- CTC branch ---------------------------------------------------------------------
    def ctc_from_cond(self, cond: torch.Tensor, mask=None) -> torch.Tensor:
        """cond [B, T, hidden] -> CTC logits [B, T * U, V]: token t gives frames tU .. tU + U - 1."""
        b, t, _ = cond.shape
        h = self.ctc(self.ctc_dropout(cond), mask)
        return self.ctc_head(self.ctc_dropout(h)).reshape(b, t * self.config.ctc_upsample, self.config.vocab_size)

    def ctc_lengths(self, token_lengths: torch.Tensor) -> torch.Tensor:
        return token_lengths * self.config.ctc_upsample

    def ctc_logits(self, codes: torch.Tensor, mask=None) -> torch.Tensor:
        """codes [B, CN, T] -> CTC logits [B, T * U, V] (lengths: ``ctc_lengths``)."""
        return self.ctc_from_cond(self.cond_from_codes(codes), mask)

    def unstack(self, x: torch.Tensor, mel_len: int | None = None) -> torch.Tensor:
        return unstack_frames(x, self.config.stack, mel_len)


def _rows_fn(decoder: Decoder, h, mask):
    """``decoder.step`` as ``shortcut_loss`` calls it: (x_t, t, d, rows) -> its output on those rows of h and mask."""
    return lambda x_t, t, d, r: decoder.step(h[r], None if mask is None else mask[r], x_t, t, d)


def count_parameters(config: SiTokConfig | dict) -> dict:
    """Instantiate ``config`` on the meta device (no memory) and count parameters by part."""
    with torch.device("meta"):
        model = SiTok(config)
    parts = {
        "encoder": [model.in_proj, model.encoder, model.to_latent],
        "quantizer": [model.quantizer, model.from_latent],
        "ctc": [model.ctc, model.ctc_head] if model.ctc is not None else [],
        "decoder": [model.decoder],
    }
    counts = {k: sum(p.numel() for m in v for p in m.parameters()) for k, v in parts.items()}
    counts["total"] = model.num_parameters()
    return counts
