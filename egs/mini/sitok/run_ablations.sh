#!/usr/bin/env bash
# Mini-scale ablations of the paper (Tables 3, 5, 6, 9): each variant of
# recipes/tokenizer/hparams/ablations.yaml is trained at one shared budget in its own experiment
# directory (exp/tokenizer_abl_<name>), scored by the evaluate stage, and laid out by
# `sitok report` beside the paper's numbers. Every step is resumable: run the same command again.
#
#   ./run_ablations.sh                          # everything (~75 min on 2 CPU cores once stages 0-3 are done, 4.5-h corpus)
#   ./run_ablations.sh --ablations "base ctc0"  # a subset
#   ./run_ablations.sh --stage 4                # only evaluate + report
#
# Stages: 1 data (run.sh stages 0-3)  2 train the variants + dump their codes (run.sh 4-5)
#         3 R + D (refine "diffusion" on the R variant)  4 evaluate (run.sh 12)  5 report
set -euo pipefail
cd "$(dirname "$0")"

stage=1
stop_stage=100
ablations="base ctc0 R cn2 cn4 fsq light"   # names in recipes/tokenizer/hparams/ablations.yaml
ablation_args="--number_of_epochs 4 --max_train_minutes 45"   # the budget every variant shares: 1,156 steps on the 4.5-h corpus (~15 min on one thread; the time cap only guards)
rd_args="--number_of_epochs 4 --max_train_minutes 10"      # R + D: decoder-only diffusion training
nj_train=2            # variants trained at once; each gets nproc / nj_train threads
tokenizer_config=mini
refine_config=mini
eval_set=test
eval_steps="1"         # Euler steps scored (the mini decoder reads best at 1 step; docs/RESULTS.md)
eval_groundtruth=true  # also score ground truth through the vocoder (once, with the first variant)
report_dir=exp/report_ablations
python=
run_args=             # more options for every ./run.sh call (e.g. "--expdir exp --vocab_size 64")
help_message="Usage: $0 [--stage N] [--stop_stage N] [--ablations 'base ctc0 ...'] [--ablation_args '...'] [--nj_train N] [--eval_steps '1'] [--eval_groundtruth true|false] [--run_args '...']"

toolkit_root="$(cd ../../.. && pwd)"
. "${toolkit_root}/tools/parse_options.sh"
. ../../TEMPLATE/lib.sh  # log, run_stage, train_or_skip: the template's own
python=${python:-${toolkit_root}/.venv/bin/python}
eval "extra=(${run_args})"
expdir=exp
dumpdir=dump
for ((i = 0; i + 1 < ${#extra[@]}; i++)); do
    case "${extra[i]}" in --expdir) expdir=${extra[i + 1]} ;; --dumpdir) dumpdir=${extra[i + 1]} ;; esac
done
run() { ./run.sh --python "${python}" --tokenizer_config "${tokenizer_config}" ${extra[@]+"${extra[@]}"} "$@"; }
overrides() {  # the command-line overrides of one ablation, from ablations.yaml
    "${python}" - "$1" "${toolkit_root}/recipes/tokenizer/hparams/ablations.yaml" <<'PY'
import sys, yaml
name, path = sys.argv[1], sys.argv[2]
table = yaml.safe_load(open(path))
if name not in table:
    sys.exit(f"ablation {name!r} not in {path} (known: {' '.join(table)})")
for k, v in (table[name] or {}).items():
    print(f"--{k} {v}", end=" ")
PY
}
SECONDS=0
log "$0 $*"

if run_stage 1; then
    log "Stage 1: corpus, data, features, vocabulary (run.sh stages 0-3; skipped where done)"
    run --stage 0 --stop_stage 3
fi

if run_stage 2; then
    threads=$(( $(nproc) / nj_train )); [ "${threads}" -ge 1 ] || threads=1
    log "Stage 2: train ${ablations} (${ablation_args}), ${nj_train} at a time with ${threads} threads each"
    for name in ${ablations}; do overrides "${name}" > /dev/null; done  # every name known before anything starts
    wait_variant() { wait "$1" || { log "ERROR: a variant failed; see ${expdir}/tokenizer_abl_*.log"; exit 1; }; }
    pids=()
    for name in ${ablations}; do
        args="${ablation_args} $(overrides "${name}")"
        mkdir -p "${expdir}"
        logfile="${expdir}/tokenizer_abl_${name}.log"
        log "  abl_${name}: ${args} (log: ${logfile})"
        OMP_NUM_THREADS=${threads} run --stage 4 --stop_stage 5 --tokenizer_tag "abl_${name}" \
            --tokenizer_args "${args}" --resynth_sets none > "${logfile}" 2>&1 &
        pids+=($!)
        if [ "${#pids[@]}" -ge "${nj_train}" ]; then wait_variant "${pids[0]}"; pids=("${pids[@]:1}"); fi
    done
    for p in ${pids[@]+"${pids[@]}"}; do wait_variant "${p}"; done
    for name in ${ablations}; do log "  abl_${name}: $(grep -h 'minutes:' "${expdir}/tokenizer_abl_${name}/train_log.txt" | tail -1 | cut -c1-60)"; done
fi

if run_stage 3 && [[ " ${ablations} " == *" R "* ]]; then
    out="${expdir}/refine_abl_R_diffusion"
    init="${expdir}/tokenizer_abl_R/model"
    config="${toolkit_root}/recipes/refine/hparams/${refine_config}.yaml"
    st=(--input "config=${config}" --input "init_weights=${init}/model.pt" --input "init_config=${init}/config.json"
        --dump "train=${dumpdir}/train" --option "rd_args=${rd_args}")
    if ! train_or_skip "${out}" "${out}/model" "${st[@]}"; then  # stops when begun from another R model or other arguments
        log "Stage 3: R + D ${out}/model already exported, skipping"
    else
        log "Stage 3: R + D: the R variant's decoder becomes a diffusion decoder, trained on frozen tokens -> ${out}"
        eval "rd=(${rd_args})"
        "${python}" "${toolkit_root}/recipes/refine/train.py" "${config}" \
            --refine diffusion --init_model "${init}" --exp_dir "${out}" --dump_dir "${dumpdir}" ${rd[@]+"${rd[@]}"}
    fi
fi

if run_stage 4; then
    log "Stage 4: evaluate every variant on ${eval_set} (run.sh stage 12; steps ${eval_steps})"
    gt=${eval_groundtruth}  # ground truth through the vocoder: once, with the first variant
    for name in ${ablations}; do
        more=()
        [ "${name}" = R ] && [ -f "${expdir}/refine_abl_R_diffusion/model/config.json" ] && \
            more=(--eval_models "refine_abl_R_diffusion=${expdir}/refine_abl_R_diffusion/model")
        run --stage 12 --stop_stage 12 --tokenizer_tag "abl_${name}" --refine_kinds "" --eval_sets "${eval_set}" \
            --evaluate_steps "${eval_steps}" --evaluate_groundtruth "${gt}" ${more[@]+"${more[@]}"}
        gt=false
    done
fi

if run_stage 5; then
    exps=()
    for name in ${ablations}; do exps+=("${expdir}/tokenizer_abl_${name}"); done
    [ -d "${expdir}/refine_abl_R_diffusion" ] && exps+=("${expdir}/refine_abl_R_diffusion")
    log "Stage 5: sitok report ${exps[*]} -> ${report_dir}"
    "${python}" -m sitok.cli report "${exps[@]}" --out "${report_dir}" --set "${eval_set}" --dump-dir "${dumpdir}/${eval_set%% *}"
fi
log "Finished in ${SECONDS} s"
