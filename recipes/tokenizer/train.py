#!/usr/bin/env python
"""Train the SiTok tokenizer (SpeechBrain recipe).

    python recipes/tokenizer/train.py recipes/tokenizer/hparams/mini.yaml [--key value ...]

Run from a corpus recipe directory (egs/<corpus>/sitok), where the hparams' relative paths
(dump/, data/lang_*/, exp/) resolve; stage 4 of egs/TEMPLATE/sitok.sh does exactly that.
Multi-GPU / multi-node: ``torchrun --nproc_per_node N recipes/tokenizer/train.py ...``.

Everything about the model and the optimiser is in the YAML; this script wires the data
(kaldiio log-mel dumps + SentencePiece targets) into ``sitok.train.TokenizerBrain`` and exports
the model directory (plain config + weights) at the end.
"""

import os
import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml

from sitok.train.tokenizer import TokenizerBrain, check_ranks_agree, dataio_prepare, export_model_dir


def main(argv):
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)  # no-op unless launched by torchrun
    with open(hparams_file, encoding="utf-8") as fh:
        hparams = load_hyperpyyaml(fh, overrides)
    sb.create_experiment_directory(experiment_directory=hparams["exp_dir"], hyperparams_to_save=hparams_file,
                                   overrides=overrides)  # fmt: skip
    datasets, train_sampler, stats = dataio_prepare(hparams)
    brain = TokenizerBrain(modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
                           run_opts=run_opts, checkpointer=hparams["checkpointer"])  # fmt: skip
    brain.data_stats = stats
    brain.train_sampler = train_sampler  # Brain calls set_epoch(): batches depend on (seed, epoch) only
    brain.fit(
        brain.hparams.epoch_counter,
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs={"batch_sampler": train_sampler, "num_workers": hparams["num_workers"]},
        valid_loader_kwargs={"batch_size": 8, "num_workers": hparams["num_workers"]},
    )
    check_ranks_agree(brain.model)  # DDP: every rank must hold the same weights and codebook
    if sb.utils.distributed.if_main_process():
        export_model_dir(brain, hparams, os.path.join(hparams["exp_dir"], "model"))


if __name__ == "__main__":
    main(sys.argv[1:])
