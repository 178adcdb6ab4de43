"""SpeechTTS: a decoder-only language model that reads text and writes speech tokens (AR-TTS).

One sequence per utterance, fed to a Hugging Face causal LM as input embeddings::

    [text tokens] [<speech>] [speech token 1] ... [speech token T]
                      |            |                    |
        predicts:  token 1      token 2     ...    end of speech      (the loss)

The LM keeps its text embeddings for the text; speech tokens enter through their own table
(optionally started from the tokenizer's VQ codebook) and a projection to the LM's width, and
leave through a new output head over the K codes plus one end-of-speech class. The LM's own text
head is not used. Zero-shot speaker prompting is continuation: the text is the prompt's transcript
followed by the target text, and the prompt's tokens are the first speech tokens, from which
generation goes on (as TaDiCodec-AR, Spark-TTS, CosyVoice 2 and Llasa do). One codebook (the
paper's TTS setting).

Classifier-free guidance on the text: a model trained with ``text_dropout`` > 0 sees that share of
its training sequences without their text ([<speech>] [speech tokens]: the unconditional model of
the same speech). At synthesis with ``Sampling.cfg_scale`` s != 1 every item is run twice in one
batch, with its text and without (both continue the same prompt tokens and are fed the same drawn
token), and the next token is drawn from ``uncond + s * (cond - uncond)`` of the two logit rows.

Sampling per step: temperature, top-k, top-p, and repetition-aware sampling (CosyVoice 2): when
the token drawn from the filtered distribution already occurs ``ras_ratio * ras_window`` times or
more among the last ``ras_window`` generated tokens, it is drawn again from the unfiltered
distribution. Temperature 0 is greedy. Generation is batched over left-padded prefixes with the
KV cache and stops per item at end of speech or at a length bound from its text.

Backbones, LoRA and the model directory are those of ``sitok.models.speech_lm``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from sitok.checks import unknown_fields
from sitok.models.speech_lm import BackboneConfig, BackboneModel, pad_sequences


@dataclass
class SpeechTTSConfig(BackboneConfig):
    codebook_size: int = 1024
    speech_dim: int = 32  # width of the speech-token table (the codebook's width to start from it)
    max_tokens_per_char: float = 2.0  # generation stops after this many speech tokens per text character (+ 10)
    min_tokens_per_char: float = 0.2  # ... and cannot end before this many
    text_dropout: float = 0.0  # training only: share of sequences seen without their text (for guidance)

    INTS: ClassVar[dict] = {"codebook_size": (2, 2**20), "speech_dim": (1, 65536)}
    FLOATS: ClassVar[dict] = {
        "max_tokens_per_char": (0.01, 100.0),
        "min_tokens_per_char": (0.0, 100.0),
        "text_dropout": (0.0, 0.9),
    }


@dataclass
class Sampling:
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    ras_window: int = 10  # repetition-aware sampling window (0: off)
    ras_ratio: float = 0.1  # redraw from the full distribution at this share of repeats in the window
    cfg_scale: float = 1.0  # classifier-free guidance on the text (1: off; needs a model trained with text_dropout)

    @classmethod
    def from_dict(cls, d: dict) -> Sampling:
        """A Sampling from a mapping (the hparams' ``sampling``): its fields only, the others default."""
        unknown = unknown_fields(cls, d)
        if unknown:
            raise ValueError(f"sampling: unknown fields {unknown} (known: {[f.name for f in fields(cls)]})")
        return cls(**d)


def sample_next(logits: torch.Tensor, history: list[int], s: Sampling, generator=None) -> int:
    """One token id from ``logits`` [V] under ``s``, given the tokens generated so far."""
    if s.temperature <= 0:
        return int(logits.argmax())
    probs = F.softmax(logits.float() / s.temperature, dim=-1)
    filtered = probs.clone()
    if s.top_k > 0:
        kth = torch.topk(filtered, min(s.top_k, filtered.numel())).values[-1]
        filtered[filtered < kth] = 0
    if s.top_p < 1.0:
        sorted_p, order = torch.sort(filtered, descending=True)
        cut = torch.cumsum(sorted_p, 0) - sorted_p >= s.top_p * sorted_p.sum()  # keep the smallest head reaching p
        filtered[order[cut]] = 0
    token = int(torch.multinomial(filtered / filtered.sum(), 1, generator=generator))
    if s.ras_window > 0 and history:
        recent = history[-s.ras_window :]
        if recent.count(token) >= max(1.0, s.ras_ratio * s.ras_window):
            token = int(torch.multinomial(probs, 1, generator=generator))
    return token


class SpeechTTS(BackboneModel):
    config_class = SpeechTTSConfig
    config_file = "speech_tts.json"

    def __init__(self, cfg: SpeechTTSConfig, lm: nn.Module | None = None, text=None):
        super().__init__(cfg, lm, text)
        width = self.lm.config.hidden_size
        self.start_id = self.end_id = cfg.codebook_size  # the <speech> marker in, end of speech out
        self.speech_embed = nn.Embedding(cfg.codebook_size + 1, cfg.speech_dim)
        nn.init.normal_(self.speech_embed.weight, std=1.0)
        self.speech_proj = nn.Linear(cfg.speech_dim, width)
        self.init_speech_projection(self.speech_proj)
        self.speech_head = nn.Linear(width, cfg.codebook_size + 1)
        nn.init.normal_(self.speech_head.weight, std=0.02)
        nn.init.zeros_(self.speech_head.bias)

    def init_from_codebook(self, codebook: torch.Tensor) -> None:
        """Start the code rows of the speech table as the tokenizer's codebook [1, K, D] (D = speech_dim)."""
        cfg = self.config
        if tuple(codebook.shape) != (1, cfg.codebook_size, cfg.speech_dim):
            raise ValueError(
                f"codebook of shape {tuple(codebook.shape)} does not fit 1 x {cfg.codebook_size} x {cfg.speech_dim}"
            )
        with torch.no_grad():
            book = codebook[0].float()
            self.speech_embed.weight[: cfg.codebook_size].copy_(book / book.std().clamp_min(1e-6))

    def _speech(self, ids: torch.Tensor) -> torch.Tensor:
        return self.speech_proj(self.speech_embed(ids))

    def _text(self, ids: list[int], device) -> torch.Tensor:
        return self.lm.get_input_embeddings()(torch.tensor(ids, dtype=torch.long, device=device))

    def _prefix(self, text_ids: list[int], prompt: torch.Tensor | None, device) -> torch.Tensor:
        """[text][<speech>][prompt tokens] as one [L, width] tensor."""
        speech = torch.tensor([self.start_id], dtype=torch.long, device=device)
        if prompt is not None:
            speech = torch.cat([speech, prompt.to(device).long()])
        return torch.cat([self._text(text_ids, device), self._speech(speech)])

    # ---- training -------------------------------------------------------------------------
    def forward(self, texts: list[list[int]], codes: list[torch.Tensor]) -> dict:
        """Mean cross-entropy of every speech token and the end of speech, given the text and the
        speech tokens before it. ``codes``: [T_i] token ids per utterance."""
        device = self.speech_head.weight.device
        p = self.config.text_dropout
        if self.training and p > 0:  # the unconditional model: the same speech without its text
            keep = (torch.rand(len(texts)) >= p).tolist()
            texts = [ids if k else [] for ids, k in zip(texts, keep)]
        seqs, targets, masks = [], [], []
        for ids, c in zip(texts, codes):
            c = c.to(device).long()
            seqs.append(
                torch.cat([self._text(ids, device), self._speech(torch.cat([c.new_tensor([self.start_id]), c]))])
            )
            n_text = len(ids)
            scored = torch.zeros(len(seqs[-1]), dtype=torch.bool, device=device)
            scored[n_text:] = True  # <speech> predicts token 1, ..., token T predicts the end
            masks.append(scored)
            targets.append(torch.cat([c, c.new_tensor([self.end_id])]))
        emb, mask = pad_sequences(seqs, left=False)
        hidden = self.lm.get_decoder()(inputs_embeds=self.input_dropout(emb), attention_mask=mask).last_hidden_state
        scored = nn.utils.rnn.pad_sequence(masks, batch_first=True, padding_value=False)
        logits = self.speech_head(hidden[scored])
        target = torch.cat(targets)
        loss = F.cross_entropy(logits.float(), target)
        return {"loss": loss, "tokens": int(target.numel()), "correct": int((logits.argmax(-1) == target).sum())}

    # ---- generation -----------------------------------------------------------------------
    def length_bounds(self, text: str) -> tuple[int, int]:
        """(fewest, most) speech tokens to generate after the prompt for ``text`` (the target only)."""
        cfg = self.config
        return int(cfg.min_tokens_per_char * len(text)), int(cfg.max_tokens_per_char * len(text)) + 10

    @torch.no_grad()
    def generate(
        self,
        texts: list[str],
        prompts: list[torch.Tensor | None] | None = None,
        prompt_texts: list[str] | None = None,
        sampling: Sampling | None = None,
        seed: int = 0,
    ) -> list[torch.Tensor]:
        """Speech tokens [T_i] for each text (after the prompt's own tokens, which are not returned).
        ``prompts``: tokens [T_p] of a prompt utterance per item (or None); ``prompt_texts``: their
        transcripts, read before the text."""
        s = sampling or Sampling()
        guided = s.cfg_scale != 1.0
        if guided and self.config.text_dropout <= 0:
            raise ValueError(
                f"cfg_scale {s.cfg_scale}: guidance needs a model trained with text_dropout > 0 (this one: 0)"
            )
        n = len(texts)
        prompts = prompts or [None] * n
        prompt_texts = prompt_texts or [""] * n
        device = self.speech_head.weight.device
        prefixes, bounds = [], []
        for text, prompt, ptext in zip(texts, prompts, prompt_texts):
            full = f"{ptext} {text}".strip() if ptext else text
            prefixes.append(self._prefix(self.text.encode(full), prompt, device))
            bounds.append(self.length_bounds(text))
        if guided:  # rows n..2n-1: the same items without their text
            prefixes += [self._prefix([], prompt, device) for prompt in prompts]
        emb, mask = pad_sequences(prefixes, left=True)
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
        out = self.lm.get_decoder()(inputs_embeds=emb, attention_mask=mask, position_ids=positions, use_cache=True)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        hyps: list[list[int]] = [[] for _ in range(n)]
        done = [False] * n
        for step in range(max(b[1] for b in bounds)):
            logits = self.speech_head(out.last_hidden_state[:, -1]).float().cpu()
            if guided:
                logits = logits[n:] + s.cfg_scale * (logits[:n] - logits[n:])
            nxt = []
            for i in range(n):
                if done[i]:
                    nxt.append(self.end_id)
                    continue
                row = logits[i].clone()
                if step < bounds[i][0]:
                    row[self.end_id] = float("-inf")
                tok = sample_next(row, hyps[i], s, generator)
                if tok == self.end_id or step + 1 >= bounds[i][1]:
                    done[i] = True
                if tok != self.end_id:
                    hyps[i].append(tok)
                nxt.append(tok)
            if all(done):
                break
            ids = torch.tensor(nxt * (2 if guided else 1), dtype=torch.long, device=device)[:, None]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            out = self.lm.get_decoder()(
                inputs_embeds=self._speech(ids),
                attention_mask=mask,
                position_ids=positions,
                cache=out.cache,
                use_cache=True,
            )
        return [torch.tensor(h, dtype=torch.long) for h in hyps]
