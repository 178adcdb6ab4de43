"""LLM-ASR on frozen speech features: a SpeechLM (``sitok.models.speech_lm``) fine-tuned to
transcribe, then decoded on the test set (the recipe body of recipes/llm_asr/train.py).

    python recipes/llm_asr/train.py recipes/llm_asr/hparams/mini.yaml --features tokens \\
        --model_dir exp/tokenizer_mini/model --codes_root exp/tokenizer_mini/codes \\
        --exp_dir exp/tokenizer_mini/llm_asr

Features are read as the probes read them (``sitok.probes.data``): the codes a recipe stage
dumped, or the normalised log-mel of the feature dump (``mel12.5``: stacked to 12.5 Hz inside the
model). Training is a SpeechBrain Brain: checkpoints every ``ckpt_interval_minutes`` and at each
epoch's end (a killed run resumes where it stopped), DDP under ``torchrun``, batches of similar
length packed to ``max_batch_positions`` input positions (speech + prompt + text) by SpeechBrain's
DynamicBatchSampler. The learning rate warms up, then decays linearly to ``lr_final_factor`` at
the last planned step; after the first epoch the run is planned to fit ``max_train_minutes``.

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

from sitok.data.kaldi import allow_pipes
from sitok.eval.asr import word_error_rate
from sitok.fileio import atomic_open, write_text_atomic
from sitok.infer import Tokenizer
from sitok.models.loading import load_model_config
from sitok.models.speech_lm import SpeechLM, SpeechLMConfig
from sitok.probes.data import durations, make_dataset, transcribed_sets
from sitok.probes.frontend import codebook_vectors
from sitok.train.checkpoints import AtomicCheckpointer, use_weights_only_loaders

logger = logging.getLogger(__name__)


def build_model(hparams: dict) -> SpeechLM:
    """The SpeechLM of the hparams: its input side sized from the tokenizer (tokens) or the mel.

    ``speech_encoder``: ``none`` (tables or stacked mel straight into the projection), ``ctc``
    (tokens only: the tokenizer's CTC decoder blocks, copied and fine-tuned) or ``random`` (blocks
    of the same sizes from random weights)."""
    kw = {k: hparams[k] for k in ("backbone", "pretrained", "prompt", "lora_rank", "lora_alpha", "lora_dropout")}
    kw["lm_layers"] = hparams.get("lm_layers", 0)
    encoder = hparams.get("speech_encoder", "none")
    if encoder not in ("none", "ctc", "random"):
        raise ValueError(f"speech_encoder must be none, ctc or random, got {encoder!r}")
    tok_cfg = load_model_config(hparams["model_dir"]) if hparams["features"] == "tokens" else None
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
    return model


class LLMASRBrain(sb.Brain):
    """Trains ``modules.speech_lm`` on (features, transcript ids); greedy / beam decoding on test."""

    @property
    def model(self) -> SpeechLM:
        m = self.modules.speech_lm
        return m.module if hasattr(m, "module") else m

    def init_optimizers(self):
        """Two groups: the speech input side at ``speech_lr``, the LM (or its adapters) at ``lr``."""
        speech, lm = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (speech if name.startswith("speech_") else lm).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": speech, "lr": self.hparams.speech_lr}, {"params": lm, "lr": self.hparams.lr}],
            weight_decay=self.hparams.weight_decay,
        )
        self.optimizers_dict = {"opt_class": self.optimizer}
        self.base_lrs = [self.hparams.speech_lr, self.hparams.lr]
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

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
        return self.modules.speech_lm(feats, lengths, texts)

    def compute_objectives(self, out, batch, stage):
        self.tokens += out["tokens"]
        self.correct += out["correct"]
        return out["loss"]

    def on_fit_batch_start(self, batch, should_step):
        """Linear warm-up, then linear decay to ``lr_final_factor`` at the planned last step."""
        step, total = self.optimizer_step, max(1, self.planned_steps)
        warm = self.hparams.warmup_steps
        if step < warm:
            f = (step + 1) / warm
        else:
            f = 1 - (1 - self.hparams.lr_final_factor) * min(1.0, (step - warm) / max(1, total - warm))
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def on_stage_start(self, stage, epoch=None):
        self.tokens, self.correct, self.t_stage = 0, 0, time.time()
        if stage == sb.Stage.TRAIN and epoch is not None:  # the epoch's batches, also in a resumed run
            self.train_batches.set_epoch(epoch)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        stats = {"loss": stage_loss, "token_accuracy": self.correct / max(1, self.tokens)}
        if stage == sb.Stage.TRAIN:
            self.train_stats = {**stats, "minutes": (time.time() - self.t_start) / 60}
            return
        if stage == sb.Stage.VALID:
            self.plan(epoch)
            lr = self.optimizer.param_groups[1]["lr"]
            self.hparams.train_logger.log_stats(
                {"epoch": epoch, "lr": lr, "step": self.optimizer_step}, self.train_stats, stats
            )
            self.checkpointer.save_and_keep_only(meta={"loss": stage_loss}, min_keys=["loss"])

    def plan(self, epoch: int) -> None:
        """After the first epoch: the epochs that fit ``max_train_minutes`` fix the decay's end."""
        budget = float(self.hparams.max_train_minutes or 0)
        per_epoch = (time.time() - self.t_fit) / max(1, epoch - self.first_epoch + 1)
        limit = self.hparams.epoch_counter.limit
        if budget and epoch == self.first_epoch:
            fit = max(epoch, int((60 * budget - (time.time() - self.t_start)) / per_epoch) + epoch)
            if fit < limit:
                logger.info("%.1f min per epoch: %d epochs fit max_train_minutes=%g", per_epoch / 60, fit, budget)
                self.hparams.epoch_counter.limit = limit = fit
                self.planned_steps = limit * self.batches_per_epoch
        elif budget and (time.time() - self.t_start) + per_epoch > 60 * budget and epoch < limit:
            logger.info("max_train_minutes=%g: stopping after epoch %d", budget, epoch)
            self.hparams.epoch_counter.limit = epoch

    def on_fit_start(self):
        use_weights_only_loaders()
        super().on_fit_start()
        self.t_fit, self.first_epoch = time.time(), self.hparams.epoch_counter.current + 1

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


def _length_batches(hparams, items: dict, shuffle: bool):
    """SpeechBrain's DynamicBatchSampler over ``items``: batches of similar length holding up to
    ``max_batch_positions`` LM input positions, estimated from the duration (speech at the input
    rate, then ``text_positions_per_second`` for prompt and transcript)."""
    from speechbrain.dataio.sampler import DynamicBatchSampler

    rate = 50.0 if hparams["features"] == "mel50" else 12.5
    dur = durations(hparams["dump_dir"], hparams["train_set"])
    missing = [u for u in items if u not in dur]
    if missing:
        raise ValueError(f"{hparams['dump_dir']}/{hparams['train_set']}/utt2dur: no duration for {missing[:3]}")
    lengths = [dur[u] * (rate + hparams["text_positions_per_second"]) for u in items]
    return DynamicBatchSampler(
        list(items),
        max_batch_length=hparams["max_batch_positions"],
        num_buckets=hparams["num_buckets"],
        lengths_list=lengths,
        shuffle=shuffle,
        batch_ordering="random" if shuffle else "ascending",
        seed=hparams["seed"],
    )


def run(argv: list[str]) -> None:
    """The body of recipes/llm_asr/train.py: hparams + overrides -> trained model -> test WER."""
    from hyperpyyaml import load_hyperpyyaml

    t0 = time.time()
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    with open(hparams_file, encoding="utf-8") as fh:
        hparams = load_hyperpyyaml(fh, overrides)
    sb.utils.distributed.ddp_init_group(run_opts)  # under torchrun: one process per rank
    sb.create_experiment_directory(
        experiment_directory=hparams["exp_dir"], hyperparams_to_save=hparams_file, overrides=overrides
    )
    if hparams.get("allow_pipes"):
        allow_pipes(True)
    model = build_model(hparams)
    sets, counts = _datasets(hparams, model.text)
    checkpointer = AtomicCheckpointer(
        hparams["save_folder"], recoverables={"speech_lm": model, "counter": hparams["epoch_counter"]}
    )
    brain = LLMASRBrain(modules={"speech_lm": model}, hparams=hparams, run_opts=run_opts, checkpointer=checkpointer)
    brain.t_start = t0
    sampler = _length_batches(hparams, sets["train"][0], shuffle=True)
    loader = {"batch_sampler": sampler, "num_workers": 0}
    brain.batches_per_epoch, brain.train_batches = len(sampler), sampler
    brain.planned_steps = hparams["number_of_epochs"] * brain.batches_per_epoch
    logger.info(
        "LLM-ASR on %s: %s backbone (%s), %.1f M parameters, %.2f M trained; %d train / %d valid / %d test utterances",
        hparams["features"],
        hparams["backbone"],
        "pretrained" if hparams["pretrained"] else "random init",
        sum(p.numel() for p in model.parameters()) / 1e6,
        sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
        *(len(sets[s][0]) for s in ("train", "valid", "test")),
    )
    brain.fit(
        hparams["epoch_counter"],
        sets["train"][1],
        sets["valid"][1],
        train_loader_kwargs=loader,
        valid_loader_kwargs={"batch_size": hparams["decode_batch_size"], "num_workers": 0},
    )
    train_minutes = (time.time() - t0) / 60
    checkpointer.recover_if_possible(min_key="loss")
    if not sb.utils.distributed.if_main_process():
        return
    out_dir = os.path.join(hparams["exp_dir"], "model")
    model.save(out_dir)
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
