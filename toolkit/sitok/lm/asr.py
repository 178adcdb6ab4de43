"""LLM-ASR on frozen speech features: a SpeechLM (``sitok.models.speech_lm``) fine-tuned to
transcribe, then decoded on the test set (the recipe body of recipes/llm_asr/train.py).

    python recipes/llm_asr/train.py recipes/llm_asr/hparams/mini.yaml --features tokens \\
        --model_dir exp/tokenizer_mini/model --codes_root exp/tokenizer_mini/codes \\
        --exp_dir exp/tokenizer_mini/llm_asr

Features are read as the probes read them (``sitok.probes.data``): the codes a recipe stage
dumped, or the normalised log-mel of the feature dump (``mel12.5``: stacked to 12.5 Hz inside the
model). Training is the shared loop of ``sitok.lm.brain`` (two learning rates, warm-up and decay
planned to the time budget, checkpoints, resume, DDP, length batches by LM positions: speech +
prompt + transcript).

Outputs in ``exp_dir``: ``model/`` (a SpeechLM model directory), ``hyps.txt`` (utt, decoding,
hypothesis) and ``results.json`` (WER greedy and beam, counts, wall times, parameters).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import speechbrain as sb
import torch

from sitok.eval.asr import word_error_rate
from sitok.fileio import atomic_open, write_text_atomic
from sitok.infer import Tokenizer
from sitok.lm.brain import SpeechLMBrain, length_batches, start_run, train, trained_model
from sitok.models.loading import load_model_config
from sitok.models.speech_lm import SpeechLM, SpeechLMConfig
from sitok.probes.data import make_dataset, transcribed_sets
from sitok.probes.frontend import codebook_vectors

logger = logging.getLogger(__name__)


def build_model(hparams: dict) -> SpeechLM:
    """The SpeechLM of the hparams: its input side sized from the tokenizer (tokens) or the mel.

    ``speech_encoder``: ``none`` (tables or stacked mel straight into the projection), ``ctc``
    (tokens only: the tokenizer's CTC decoder blocks, copied), ``random`` (blocks of the same sizes
    from random weights) or ``auto`` (``ctc`` for tokens of a tokenizer trained with a CTC decoder,
    else ``none``: one setting for every input of a comparison)."""
    kw = {
        k: hparams[k]
        for k in ("backbone", "pretrained", "prompt", "lora_rank", "lora_alpha", "lora_dropout", "dropout")
    }
    kw["lm_layers"] = hparams.get("lm_layers", 0)
    encoder = hparams.get("speech_encoder", "none")
    if encoder not in ("none", "ctc", "random", "auto"):
        raise ValueError(f"speech_encoder must be none, ctc, random or auto, got {encoder!r}")
    tok_cfg = load_model_config(hparams["model_dir"]) if hparams["features"] == "tokens" else None
    if encoder == "auto":
        encoder = "ctc" if tok_cfg and tok_cfg.get("vocab_size") and tok_cfg.get("ctc_layers") else "none"
        logger.info("speech_encoder auto: %s", encoder)
    if tok_cfg is not None:
        from_codebook = hparams["init_from_codebook"] or encoder == "ctc"
        kw.update(
            inputs="tokens",
            codebook_size=tok_cfg["codebook_size"],
            num_codebooks=tok_cfg["num_codebooks"],
            speech_dim=tok_cfg["codebook_dim"] if from_codebook else hparams["speech_dim"],
        )
    elif hparams["features"] in ("mel12.5", "mel50"):
        kw.update(inputs="mel", mel_stack=4 if hparams["features"] == "mel12.5" else 1)
    else:
        raise ValueError(f"features must be tokens, mel12.5 or mel50, got {hparams['features']!r}")
    if encoder == "ctc" and (tok_cfg is None or not tok_cfg.get("vocab_size") or not tok_cfg.get("ctc_layers")):
        raise ValueError("speech_encoder ctc needs tokens from a tokenizer trained with a CTC decoder")
    if encoder != "none":
        sizes = tok_cfg or {}
        kw.update(
            encoder_layers=sizes.get("ctc_layers") or hparams.get("speech_encoder_layers", 2),
            encoder_hidden=sizes.get("hidden", 256),
            encoder_intermediate=sizes.get("intermediate", 1024),
            encoder_heads=sizes.get("heads", 4),
        )
    if hparams.get("tiny"):
        kw["tiny"] = dict(hparams["tiny"])
    model = SpeechLM(SpeechLMConfig.from_dict(kw))
    if tok_cfg is not None and (hparams["init_from_codebook"] or encoder == "ctc"):
        tokenizer = Tokenizer.from_pretrained(hparams["model_dir"], vocoder="griffin_lim").model
        books = codebook_vectors(tokenizer.quantizer)
        if encoder == "ctc":
            model.init_from_tokenizer(books, tokenizer.from_latent, tokenizer.ctc)
        else:
            model.init_from_codebook(books)
    if hparams.get("freeze_speech_encoder"):  # the speech features stay as started: only the projection adapts
        for name, p in model.named_parameters():
            if name.startswith(("speech_embed", "speech_in", "speech_encoder")):
                p.requires_grad = False
    return model


class LLMASRBrain(SpeechLMBrain):
    """Trains a SpeechLM on (features, transcript ids); greedy / beam decoding on test."""

    def _inputs(self, batch):
        feats, rel = batch.feats
        feats = feats.to(self.device)
        lengths = torch.round(rel * feats.shape[1]).long().to(self.device)
        ids, id_rel = batch.target
        n = torch.round(id_rel * ids.shape[1]).long()
        texts = [ids[i, : int(n[i])].tolist() for i in range(ids.shape[0])]
        return feats, lengths, texts

    def compute_forward(self, batch, stage):
        feats, lengths, texts = self._inputs(batch)
        return self.modules.model(feats, lengths, texts)

    @torch.no_grad()
    def decode(self, dataset, beam_size: int) -> dict:
        """{utt: hypothesis} over ``dataset`` in length-sorted batches."""
        self.modules.eval()
        loader = sb.dataio.dataloader.make_dataloader(dataset, batch_size=self.hparams.decode_batch_size)
        hyps = {}
        for batch in loader:
            feats, lengths, _ = self._inputs(batch)
            for u, h in zip(batch.id, self.model.transcribe(feats, lengths, beam_size=beam_size)):
                hyps[u] = h
        return hyps


def _datasets(hparams, text):
    """{split: (items, dataset)} with transcripts as LM token ids, and the counts."""
    encode = lambda t: torch.tensor(text.encode(t), dtype=torch.long)  # noqa: E731
    sets, counts = transcribed_sets(hparams)
    return {s: (items, make_dataset(items, reader, encode)) for s, (items, reader) in sets.items()}, counts


def run(argv: list[str]) -> None:
    """The body of recipes/llm_asr/train.py: hparams + overrides -> trained model -> test WER."""
    hparams, run_opts, t0 = start_run(argv)
    model = build_model(hparams)
    sets, counts = _datasets(hparams, model.text)
    logger.info(
        "LLM-ASR on %s: %s backbone (%s), %.1f M parameters, %.2f M trained; %d train / %d valid / %d test utterances",
        hparams["features"],
        hparams["backbone"],
        "pretrained" if hparams["pretrained"] else "random init",
        sum(p.numel() for p in model.parameters()) / 1e6,
        sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
        *(len(sets[s][0]) for s in ("train", "valid", "test")),
    )
    rate = 50.0 if hparams["features"] == "mel50" else 12.5
    sampler = length_batches(hparams, sets["train"][0], rate, shuffle=True)
    brain = train(LLMASRBrain, model, hparams, run_opts, t0, sets["train"][1], sets["valid"][1], sampler)
    train_minutes = (time.time() - t0) / 60
    model = trained_model(brain, os.path.join(hparams["exp_dir"], "model"))
    if model is None:  # not the main process
        return
    t_dec = time.time()
    hyps = {"greedy": brain.decode(sets["test"][1], 1)}
    if hparams["beam_size"] > 1:
        hyps["beam"] = brain.decode(sets["test"][1], hparams["beam_size"])
    decode_seconds = time.time() - t_dec
    refs = sets["test"][0]
    with atomic_open(os.path.join(hparams["exp_dir"], "hyps.txt")) as fh:
        for u in sorted(refs):
            for kind, h in hyps.items():
                fh.write(f"{u}\t{kind}\t{h[u]}\n")
    utts = sorted(refs)
    results = {
        "task": "llm_asr",
        "features": hparams["features"],
        "backbone": hparams["backbone"],
        "pretrained": hparams["pretrained"],
        "lora_rank": hparams["lora_rank"],
        "lm_layers": model.lm.config.num_hidden_layers,
        "counts": counts,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trained_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "epochs": hparams["epoch_counter"].current,
        "steps": brain.optimizer_step,
        "train_minutes": round(train_minutes, 2),
        "decode_seconds": round(decode_seconds, 1),
        "n_test": len(utts),
        "beam_size": hparams["beam_size"],
    }
    for kind, h in hyps.items():
        key = "wer" if kind == "greedy" else "wer_beam"
        results[key] = 100 * word_error_rate([refs[u] for u in utts], [h[u] for u in utts])
    results["wall_seconds"] = round(time.time() - t0, 1)
    write_text_atomic(os.path.join(hparams["exp_dir"], "results.json"), json.dumps(results, indent=1) + "\n")
    logger.info(
        "LLM-ASR on %s: WER %.2f %% (greedy)%s on %d test utterances -> %s",
        hparams["features"],
        results["wer"],
        f", {results['wer_beam']:.2f} % (beam {hparams['beam_size']})" if "wer_beam" in results else "",
        len(utts),
        hparams["exp_dir"],
    )


if __name__ == "__main__":
    run(sys.argv[1:])
