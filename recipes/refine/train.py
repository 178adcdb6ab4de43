#!/usr/bin/env python
"""Refine the decoder of a trained SiTok tokenizer (SpeechBrain recipe).

    python recipes/refine/train.py recipes/refine/hparams/mini.yaml \
        --refine shortcut --init_model exp/tokenizer_mini/model --exp_dir exp/refine_mini_shortcut

``--refine``: decoder_ft | token_cfg | shortcut | light_head (see sitok.train.refine). The
encoder and VQ stay frozen; the result is a model directory ``<exp_dir>/model`` that the
Tokenizer API, the CLI and recipe stage 5 read like any other. Run from egs/<corpus>/sitok.
"""

import os
import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml

from sitok.train.refine import RefineBrain
from sitok.train.tokenizer import check_ranks_agree, dataio_prepare, export_model_dir


def main(argv):
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fh:
        hparams = load_hyperpyyaml(fh, overrides)
    sb.create_experiment_directory(experiment_directory=hparams["exp_dir"], hyperparams_to_save=hparams_file,
                                   overrides=overrides)  # fmt: skip
    datasets, train_sampler, stats = dataio_prepare(hparams)
    brain = RefineBrain(modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
                        run_opts=run_opts, checkpointer=hparams["checkpointer"])  # fmt: skip
    brain.data_stats = stats
    brain.train_sampler = train_sampler
    brain.fit(
        brain.hparams.epoch_counter,
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs={"batch_sampler": train_sampler, "num_workers": hparams["num_workers"]},
        valid_loader_kwargs={"batch_size": 8, "num_workers": hparams["num_workers"]},
    )
    check_ranks_agree(brain.model)
    if sb.utils.distributed.if_main_process():
        export_model_dir(brain, hparams, os.path.join(hparams["exp_dir"], "model"))


if __name__ == "__main__":
    main(sys.argv[1:])
