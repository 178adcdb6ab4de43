#!/usr/bin/env python
"""Train the Vocos-style vocoder (SpeechBrain recipe, GAN with two optimisers).

    python recipes/vocoder/train.py recipes/vocoder/hparams/mini.yaml [--key value ...]
    torchrun --nproc_per_node N recipes/vocoder/train.py ...    # N processes, batch_size each

Run from a corpus recipe directory (egs/<corpus>/sitok), where the hparams' relative paths
(dump/, exp/) resolve. Everything about the generator, discriminator, losses and optimisers is
in the YAML; this script wires 24 kHz audio segments + their log-mel (sitok.data.mel) into
``sitok.train.vocoder.VocoderBrain`` and exports the generator as a vocoder directory
(``<exp_dir>/model``: config.json + model.pt) at the end; a tokenizer model directory picks it
up from ``<model_dir>/vocoder`` (copy or link it there).

A killed run resumes from its last checkpoint; a finished run re-run does no further training.
"""

import math
import os
import sys
import time

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml

from sitok.data.ranks import process_rank
from sitok.infer.vocoder import export_vocoder
from sitok.train.vocoder import VocoderBrain, dataio_prepare, load_generator_weights


def main(argv):
    t0 = time.time()  # max_train_minutes counts from here
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)  # no-op unless launched by torchrun
    with open(hparams_file, encoding="utf-8") as fh:
        hparams = load_hyperpyyaml(fh, overrides)
    sb.create_experiment_directory(
        experiment_directory=hparams["exp_dir"], hyperparams_to_save=hparams_file, overrides=overrides
    )
    datasets, cropper, stats = dataio_prepare(hparams)
    sampler = sb.dataio.sampler.ReproducibleRandomSampler(datasets["train"], seed=hparams["seed"])
    _, world, _ = process_rank("recipes/vocoder/train.py")
    # each process takes every world-th utterance of the epoch's order (SpeechBrain's DDP sampler wrapper)
    stats["train_batches_per_epoch"] = len(datasets["train"]) // world // hparams["batch_size"]
    stats["processes"] = world
    # workers are forked once, not every epoch (short epochs on a fast device spent seconds on it)
    workers = {"num_workers": hparams["num_workers"], "persistent_workers": hparams["num_workers"] > 0}
    brain = VocoderBrain(
        modules=hparams["modules"], hparams=hparams, run_opts=run_opts, checkpointer=hparams["checkpointer"]
    )
    if hparams.get("init_from"):  # start the generator from an exported vocoder (a resumed run's checkpoint wins)
        load_generator_weights(brain.generator, hparams["init_from"])
    brain.data_stats = stats
    brain.set_plan(  # max_train_minutes becomes generator steps (sitok.train.plan)
        t0,
        batches_per_epoch=max(1, stats["train_batches_per_epoch"]),
        valid_batches=math.ceil(len(datasets["valid"]) / world / hparams["batch_size"]),
        epochs=hparams["number_of_epochs"],
    )
    brain.train_cropper = cropper  # crops depend on (seed, epoch, utterance) only
    brain.train_sampler = sampler  # Brain calls set_epoch(): the order depends on (seed, epoch) only
    brain.fit(
        brain.hparams.epoch_counter,
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs={"batch_size": hparams["batch_size"], "sampler": sampler, "drop_last": True, **workers},
        valid_loader_kwargs={"batch_size": hparams["batch_size"], **workers},
    )
    if sb.utils.distributed.if_main_process():
        export_vocoder(
            brain.generator,
            os.path.join(hparams["exp_dir"], "model"),
            {"trained_on": hparams["train_csv"], "optimizer_steps": brain.optimizer_step},
        )


if __name__ == "__main__":
    main(sys.argv[1:])
