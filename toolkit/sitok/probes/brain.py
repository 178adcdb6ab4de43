"""DASB-style probes on frozen features: the SpeechBrain Brains and the recipe body.

    front end (tokens | mel)  ->  head  ->  loss
    ER, KS:  ECAPA-TDNN -> cosine classifier, additive angular margin (AAM) softmax -> accuracy
    SV:      the same, trained on the training speakers -> embeddings of held-out speakers ->
             cosine scores of a trial list -> EER, minDCF (speechbrain.utils.metric_stats)
    ASR:     (upsample) -> 2-layer BiLSTM -> linear -> CTC -> greedy and beam WER

The best checkpoint by validation error (classification error or greedy WER) is the one tested.
Each probe writes ``<exp_dir>/results.json`` (metrics, counts, wall time) and, for SV, the trial
list and its scores; ASR writes the hypotheses.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time

import speechbrain as sb
import torch

from sitok.data.kaldi import allow_pipes
from sitok.data.trials import make_trials, read_trials, write_trials
from sitok.eval.asr import word_error_rate
from sitok.fileio import write_text_atomic
from sitok.losses.ctc import ctc_beam_searcher, ctc_greedy
from sitok.probes.data import durations, make_dataset, probe_sets, transcribed_sets
from sitok.train.distributed import leave_process_group
from sitok.train.plan import StepPlanned

logger = logging.getLogger(__name__)

TASKS = ("er", "ks", "sv", "asr")
LABEL_FILES = {"er": "utt2label", "ks": "utt2label", "sv": "utt2spk", "asr": "text"}


def _targets(batch, device) -> torch.Tensor:
    t = batch.target
    return t.data.to(device) if hasattr(t, "data") else torch.as_tensor(t, device=device)


class _Probe(StepPlanned):
    """What the probes share: the time budget planned in steps (``StepPlanned``: the last epoch, or
    the first if it alone outlasts ``max_train_minutes``, stops part-way), DDP on CPU, and the end
    of a stage: ``stage_stats`` of a validation are logged and the checkpoint with the lowest
    ``best_key`` is kept; a test's become ``test_stats``. The epochs and steps done go to
    results.json."""

    def _wrap_distributed(self):
        """torchrun on CPU (gloo): DDP without SpeechBrain's SyncBatchNorm conversion, which has no
        CPU kernels (ECAPA-TDNN's batch norms then keep per-process statistics); on GPUs, SpeechBrain's."""
        if not self.distributed_launch or str(self.device).startswith("cuda"):
            return super()._wrap_distributed()
        from torch.nn.parallel import DistributedDataParallel

        for name, module in self.modules.items():
            if any(p.requires_grad for p in module.parameters()):
                self.modules[name] = DistributedDataParallel(module, find_unused_parameters=self.find_unused_parameters)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            return
        stats = self.stage_stats(stage, stage_loss)
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                {"epoch": epoch}, train_stats={"loss": self.train_loss}, valid_stats=stats
            )
            self.checkpointer.save_and_keep_only(meta={self.best_key: stats[self.best_key]}, min_keys=[self.best_key])
            self.epochs_done = epoch
            self.plan(epoch)
        else:
            self.test_stats = stats


class ClassifierProbe(_Probe, sb.Brain):
    """ER / KS / SV: front end -> ECAPA-TDNN embedding -> cosine classifier (AAM loss)."""

    best_key = "error"

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        feats, lens = batch.feats
        x = self.modules.frontend(feats)
        emb = self.modules.encoder(x, lens)  # [B, 1, E]
        return self.modules.classifier(emb), emb

    def compute_objectives(self, predictions, batch, stage):
        cosine, _ = predictions  # [B, 1, C]
        target = _targets(batch, self.device).long().view(-1, 1)  # [B, 1]
        loss = self.hparams.compute_cost(cosine, target)
        if stage != sb.Stage.TRAIN:
            pred = cosine.squeeze(1).argmax(dim=-1)
            self.n_correct += int((pred == target[:, 0]).sum())
            self.n_seen += int(target.shape[0])
        return loss

    def on_stage_start(self, stage, epoch=None):
        self.n_correct, self.n_seen = 0, 0

    def stage_stats(self, stage, stage_loss) -> dict:
        acc = self.n_correct / max(1, self.n_seen)
        return {"loss": stage_loss, "error": 1.0 - acc, "accuracy": acc}

    @torch.no_grad()
    def embeddings(self, dataset) -> dict:
        """utt -> L2-normalised embedding, for every utterance of ``dataset`` (eval mode)."""
        self.modules.eval()
        loader = sb.dataio.dataloader.make_dataloader(dataset, batch_size=self.hparams.batch_size)
        out = {}
        for batch in loader:
            _, emb = self.compute_forward(batch, sb.Stage.TEST)
            emb = torch.nn.functional.normalize(emb.squeeze(1), dim=-1).cpu()
            out.update(zip(batch.id, emb))
        return out


def probe_upsample(hparams: dict) -> int:
    """Front-end frames are repeated ``upsample`` times, or more when ``min_ctc_rate`` (CTC frames
    per second) asks for it: characters (~16/s) need 37.5 Hz from 12.5 Hz tokens but nothing
    more from 50 Hz mel."""
    frame_rate = hparams["modules"]["frontend"].frame_rate
    need = float(hparams.get("min_ctc_rate", 0) or 0)
    return max(int(hparams["upsample"]), math.ceil(need / frame_rate - 1e-9) if need > 0 else 1)


class CTCProbe(_Probe, sb.Brain):
    """ASR: front end -> (x upsample) -> BiLSTM -> linear -> CTC over the recipe's SentencePiece units."""

    best_key = "wer"

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        feats, lens = batch.feats
        x = self.modules.frontend(feats)  # [B, T, D]
        up = self.upsample
        if up > 1:
            x = x.repeat_interleave(up, dim=1)
        T = x.shape[1]
        n = torch.clamp(torch.round(lens * T).long(), 1, T).cpu()
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, n, batch_first=True, enforce_sorted=False)
        h, _ = self.modules.lstm(packed)
        h, _ = torch.nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=T)
        return self.modules.ctc_lin(h).log_softmax(dim=-1), n  # [B, T, V], [B]

    def compute_objectives(self, predictions, batch, stage):
        log_probs, n = predictions
        tokens, tok_lens = batch.target
        target_lengths = torch.round(tok_lens * tokens.shape[1]).long().to(self.device)
        args = (log_probs.transpose(0, 1), tokens.to(self.device).long(), n.to(self.device), target_lengths)
        loss = torch.nn.functional.ctc_loss(*args, blank=0, zero_infinity=True)
        if stage != sb.Stage.TRAIN:
            best = log_probs.argmax(-1).cpu()
            for i, u in enumerate(batch.id):
                self.hyps["greedy"][u] = self.sp.decode(ctc_greedy(best[i, : n[i]].tolist()))
            if stage == sb.Stage.TEST and self.beam_searcher is not None:
                lens = n.float() / log_probs.shape[1]
                for u, hyp in zip(batch.id, self.beam_searcher(log_probs.cpu(), lens)):
                    self.hyps["beam"][u] = hyp[0].text
        return loss

    def on_stage_start(self, stage, epoch=None):
        self.hyps = {"greedy": {}, "beam": {}}

    def stage_stats(self, stage, stage_loss) -> dict:
        stats = {"loss": stage_loss, "wer": self.wer(self.hyps["greedy"])}
        if stage == sb.Stage.TEST and self.hyps["beam"]:
            stats["wer_beam"] = self.wer(self.hyps["beam"])
        return stats

    def wer(self, hyps: dict) -> float:
        utts = sorted(hyps)
        return 100 * word_error_rate([self.refs[u] for u in utts], [hyps[u] for u in utts])


def ctc_frames_needed(ids: list[int]) -> int:
    """Frames a CTC alignment of ``ids`` needs: one per unit + one blank between equal neighbours."""
    return len(ids) + sum(a == b for a, b in zip(ids, ids[1:]))


# ---- recipe body ---------------------------------------------------------------------------------
def _write(path: str, text: str) -> None:
    """Under torchrun every rank scores the whole test set; the main process writes the files."""
    if sb.utils.distributed.if_main_process():
        write_text_atomic(path, text)


def _finish(hparams, results: dict, t0: float) -> None:
    results["wall_seconds"] = round(time.time() - t0, 1)
    path = os.path.join(hparams["exp_dir"], "results.json")
    _write(path, json.dumps(results, indent=1) + "\n")
    shown = {k: v for k, v in results.items() if k in ("accuracy", "eer", "min_dcf", "wer", "wer_beam")}
    logger.info("probe %s on %s: %s -> %s", hparams["task"], hparams["features"], shown, path)


def _brain(brain_class, hparams, run_opts, name: str, layer):
    """A ``brain_class`` over the probe's modules plus its output ``layer`` (as ``name``), which the
    checkpointer saves and restores with the rest."""
    modules = hparams["modules"]
    modules[name] = layer
    hparams["checkpointer"].add_recoverable(name, layer)
    return brain_class(modules, hparams["opt_class"], hparams, run_opts, hparams["checkpointer"])


def _fit(brain, hparams, train, valid, t0):
    """Train (resuming from the last checkpoint) within ``max_train_minutes`` from ``t0``."""
    world = max(1, int(os.environ.get("WORLD_SIZE", 1)))  # each process reads 1/world of every set
    brain.epochs_done = None
    brain.set_plan(
        t0,
        batches_per_epoch=math.ceil(math.ceil(len(train) / world) / hparams["batch_size"]),
        valid_batches=math.ceil(math.ceil(len(valid) / world) / hparams["batch_size"]),
        epochs=hparams["number_of_epochs"],
    )
    brain.fit(
        brain.hparams.epoch_counter,
        train,
        valid,
        train_loader_kwargs={"batch_size": hparams["batch_size"], "shuffle": True, "num_workers": 0},
        valid_loader_kwargs={"batch_size": hparams["batch_size"], "num_workers": 0},
    )


def _done(brain, hparams) -> dict:
    """The training done, for results.json: epochs (the last may be partial) and optimiser steps."""
    return {
        "epochs": brain.epochs_done,
        "epoch_limit": hparams["number_of_epochs"],
        "steps": brain.optimizer_step,
        "steps_per_epoch": brain.steps_per_epoch,
    }


def run_classifier(hparams, run_opts, t0) -> None:
    task, label_file = hparams["task"], LABEL_FILES[hparams["task"]]
    sets, counts = probe_sets(hparams, label_file)
    classes = sorted(set(sets["train"][0].values()))
    index = {c: i for i, c in enumerate(classes)}
    results = {"task": task, "features": hparams["features"], "classes": len(classes), "counts": counts}
    if task == "sv":  # validation: the training speakers' held-out utterances (classification error)
        counts["valid"]["not_a_training_speaker"] = sum(s not in index for s in sets["valid"][0].values())
        sets["valid"] = ({u: s for u, s in sets["valid"][0].items() if s in index}, sets["valid"][1])
    else:
        unknown = sorted({lab for split in ("valid", "test") for lab in sets[split][0].values()} - set(classes))
        if unknown:
            raise ValueError(
                f"{hparams['dump_dir']}: labels {unknown[:5]} of the valid/test sets are not in the "
                f"training set {hparams['train_set']}"
            )
    ds = {s: make_dataset(items, reader, index.get) for s, (items, reader) in sets.items() if s != "test"}
    classifier = hparams["classifier_class"](out_neurons=len(classes))
    brain = _brain(ClassifierProbe, hparams, run_opts, "classifier", classifier)
    results["parameters"] = sum(p.numel() for p in brain.modules.parameters())
    _fit(brain, hparams, ds["train"], ds["valid"], t0)
    results.update(_done(brain, hparams))
    if task != "sv":
        test = make_dataset(sets["test"][0], sets["test"][1], index.get)
        brain.evaluate(test, min_key="error", test_loader_kwargs={"batch_size": hparams["batch_size"]})
        results.update({"accuracy": 100 * brain.test_stats["accuracy"], "n_test": brain.n_seen})
        return _finish(hparams, results, t0)
    # SV: held-out speakers only; trial list generated once (or given), saved with the results
    test_items = sets["test"][0]
    trials_path = os.path.join(hparams["exp_dir"], "trials")
    if hparams.get("trials_file"):
        trials = read_trials(hparams["trials_file"])
    elif os.path.exists(trials_path):
        trials = read_trials(trials_path)
    else:
        trials = make_trials(test_items, hparams["n_trials"], hparams["seed"], exclude_speakers=classes)
    bad = sorted({u for _, a, b in trials for u in (a, b) if u not in test_items})
    if bad:
        raise ValueError(f"trial list uses {len(bad)} utterances without features in {hparams['test_set']}: {bad[:3]}")
    speakers = {test_items[u] for _, a, b in trials for u in (a, b)}
    overlap = sorted(speakers & set(classes))
    if overlap:
        raise ValueError(f"trial speakers {overlap[:5]} are training speakers: trials must use held-out speakers")
    if sb.utils.distributed.if_main_process():
        write_trials(trials_path, trials)
    brain.checkpointer.recover_if_possible(min_key="error")
    emb = brain.embeddings(make_dataset({u: 0 for u in test_items}, sets["test"][1]))
    scores = [(lab, a, b, float((emb[a] * emb[b]).sum())) for lab, a, b in trials]
    _write(
        os.path.join(hparams["exp_dir"], "scores.txt"), "".join(f"{lab} {a} {b} {s:.6f}\n" for lab, a, b, s in scores)
    )
    eer, dcf = sv_metrics([s for lab, _, _, s in scores if lab == 1], [s for lab, _, _, s in scores if lab == 0])
    results.update(eer=eer, min_dcf=dcf, n_trials=len(trials), trials=trials_path, trial_speakers=len(speakers))
    _finish(hparams, results, t0)


def sv_metrics(positive: list[float], negative: list[float], p_target: float = 0.01) -> tuple[float, float]:
    """EER (%) and normalised minDCF (p_target, c_miss = c_fa = 1) with speechbrain.utils.metric_stats.

    speechbrain's minDCF is the raw detection cost; it is divided by the cost of the best trivial
    system, min(p_target, 1 - p_target), as in the NIST/VoxCeleb convention (1.0 = no better than
    always rejecting)."""
    from speechbrain.utils.metric_stats import EER, minDCF

    pos, neg = torch.tensor(positive), torch.tensor(negative)
    eer, _ = EER(pos, neg)
    dcf, _ = minDCF(pos, neg, c_miss=1.0, c_fa=1.0, p_target=p_target)
    return 100 * float(eer), float(dcf) / min(p_target, 1 - p_target)


def run_asr(hparams, run_opts, t0) -> None:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=hparams["sp_model"])
    sets, counts = transcribed_sets(hparams)
    up = probe_upsample(hparams)
    rate = hparams["modules"]["frontend"].frame_rate * up
    fits = {}
    for split, (items, reader) in sets.items():  # every target must fit its CTC input length
        dur = durations(hparams["dump_dir"], hparams[f"{split}_set"])
        bad = [u for u, t in items.items() if ctc_frames_needed(sp.encode(t)) > int(dur[u] * rate)]
        fits[split] = {"targets_too_long": len(bad), "of": len(items)}
        if bad and split != "test":  # train/valid: left out (counted); test: kept and scored as they come
            msg = "%s: %d of %d targets need more CTC frames than %.1f frames/s give: left out (%s ...)"
            logger.warning(msg, hparams[f"{split}_set"], len(bad), len(items), rate, bad[:3])
            sets[split] = ({u: t for u, t in items.items() if u not in set(bad)}, reader)
        elif bad:
            logger.warning(
                "%s: %d of %d test targets cannot fit (scored anyway)", hparams["test_set"], len(bad), len(items)
            )
    encode = lambda t: torch.tensor(sp.encode(t), dtype=torch.long)  # noqa: E731
    ds = {s: make_dataset(items, reader, encode) for s, (items, reader) in sets.items()}
    brain = _brain(CTCProbe, hparams, run_opts, "ctc_lin", hparams["ctc_lin_class"](n_neurons=sp.get_piece_size()))
    brain.sp, brain.beam_searcher, brain.upsample = sp, None, up
    brain.refs = {u: t for items, _ in sets.values() for u, t in items.items()}
    results = {
        "task": "asr",
        "features": hparams["features"],
        "units": f"sentencepiece:{sp.get_piece_size()}",
        "upsample": up,
        "ctc_frame_rate": rate,
        "target_fit": fits,
        "counts": counts,
        "parameters": sum(p.numel() for p in brain.modules.parameters()),
    }
    _fit(brain, hparams, ds["train"], ds["valid"], t0)
    results.update(_done(brain, hparams))
    brain.beam_searcher = ctc_beam_searcher(sp, hparams["beam_size"])
    brain.evaluate(ds["test"], min_key="wer", test_loader_kwargs={"batch_size": hparams["batch_size"]})
    hyps = brain.hyps
    lines = (
        f"{u}\tgreedy\t{hyps['greedy'][u]}\n{u}\tbeam\t{hyps['beam'].get(u, '')}\n" for u in sorted(hyps["greedy"])
    )
    _write(os.path.join(hparams["exp_dir"], "hyps.txt"), "".join(lines))
    results.update(wer=brain.test_stats["wer"], wer_beam=brain.test_stats.get("wer_beam"))
    results.update(beam_size=hparams["beam_size"], n_test=len(brain.hyps["greedy"]))
    _finish(hparams, results, t0)


def run_probe(argv: list[str]) -> None:
    """The body of recipes/probes/<task>/train.py: hparams + overrides -> experiment dir -> probe."""
    from hyperpyyaml import load_hyperpyyaml

    t0 = time.time()
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)  # no-op unless launched by torchrun
    with open(hparams_file, encoding="utf-8") as fh:
        hparams = load_hyperpyyaml(fh, overrides)
    if hparams["task"] not in TASKS:
        raise ValueError(f"{hparams_file}: task must be one of {TASKS}, got {hparams['task']!r}")
    sb.create_experiment_directory(
        experiment_directory=hparams["exp_dir"], hyperparams_to_save=hparams_file, overrides=overrides
    )
    if hparams.get("allow_pipes"):  # codes.scp / feats.scp entries that are shell commands ("cmd |") may run
        allow_pipes(True)
    source = hparams["codes_root"] if hparams["features"] == "tokens" else f"{hparams['dump_dir']}/*/feats.scp"
    logger.info("probe %s on %s features (%s) -> %s", hparams["task"], hparams["features"], source, hparams["exp_dir"])
    (run_asr if hparams["task"] == "asr" else run_classifier)(hparams, run_opts, t0)
    leave_process_group()


if __name__ == "__main__":
    run_probe(sys.argv[1:])
