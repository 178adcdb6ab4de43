#!/usr/bin/env bash
# Shortcut fine-tuning in the paper's parameterisation (results in docs/RESULTS.md).
#
# The mini tokenizer's decoder predicts clean x; the paper's predicts the velocity
# x - eps. By default this script re-trains the mini decoder the paper's way on the frozen
# tokens, then fine-tunes it two ways with the same epochs, batches and learning rate: shortcut
# fine-tuning, and plain flow-matching fine-tuning (decoder_ft, the equal-compute control).
# With --overrides "" it fine-tunes the mini decoder itself (x prediction) the same two ways.
# Stage 3 scores all of them and the mini base: mel L1, Fréchet mel distance (FMD), judge WER,
# at every start-noise temperature of --eval_temperatures; the judge hears the plain setting
# (temperature 1) and the temperature with the lowest mean mel L1 on --select_set.
#
#   1  re-parameterised base: refine "reparam" with --overrides on exp/tokenizer_mini (encoder + VQ
#      frozen); skipped when --overrides is empty (the base model is then the starting point)
#   2  from it, side by side: shortcut fine-tuning and decoder_ft (the equal-compute control)
#   3  sitok eval-refine on --select_set (mel L1 and FMD only), then on --eval_set: log-mel L1 at
#      --eval_steps, judge WER at --eval_wer_steps
#
#   ./run_shortcut.sh --train_args "--device cuda --num_workers 4"   # 4.6 min of training on one H100
#   ./run_shortcut.sh                 # the same on CPU: ~4 h of training on the 2-core machine (estimated)
#   ./run_shortcut.sh --stage 3       # score only (~1.5 h on one core: dev grid, then test with the judge)
#   ./run_shortcut.sh --name x --overrides ""   # the x-prediction pair: exp/refine_mini_x_{shortcut,ft}
# Every step is resumable: run the same command again (exported models are kept; a model begun
# from another starting model or other arguments stops the script; scores are made again when a
# model, the codes or the options changed).
set -euo pipefail
cd "$(dirname "$0")"

stage=1
stop_stage=100
base_model=exp/tokenizer_mini/model   # the trained tokenizer (run.sh stage 4)
codes_dir=exp/tokenizer_mini/codes    # its codes (run.sh stage 5)
tag=mini
name=velocity                          # the fine-tunes are exp/refine_<tag>_<name>_{shortcut,ft}
# the paper's parameterisation (velocity, no x_t skip) at a width that can carry the 512-dim noise
overrides="{prediction: velocity, x_skip: False, dec_hidden: 512, dec_layers: 2}"
base_args="--lr 0.001 --warmup_steps 200 --batch_seconds 128 --number_of_epochs 90"
ft_args="--batch_seconds 128 --number_of_epochs 40"  # shortcut and control alike
train_args=              # for every training run, e.g. "--device cuda --num_workers 4"
refine_config=mini
eval_set=test
eval_steps="1 2 4 8 16"
eval_wer_steps="1 2 4"
eval_temperatures="0 0.5 1"  # start-noise scales; 1 alone scores plain sampling only
select_set=dev               # the set whose mel L1 selects the judged temperature ("" : eval_set itself)
eval_args=               # more eval-refine options, e.g. "--max-utts 50"
lang_dir=data/lang_char
expdir=exp
dumpdir=dump
python=
help_message="Usage: $0 [--stage N] [--stop_stage N] [--base_model DIR] [--name velocity] [--overrides '{...}'] [--base_args '...'] [--ft_args '...'] [--train_args '--device cuda'] [--eval_set test] [--eval_steps '1 2 4'] [--eval_temperatures '0 1'] [--select_set dev] [--eval_args '...']"

toolkit_root="$(cd ../../.. && pwd)"
. "${toolkit_root}/tools/parse_options.sh"
. ../../TEMPLATE/lib.sh  # log, run_stage, is_done, mark_done, train_or_skip: the template's own
python=${python:-${toolkit_root}/.venv/bin/python}
config="${toolkit_root}/recipes/refine/hparams/${refine_config}.yaml"
[ -f "${refine_config}" ] && config=${refine_config}
vbase="${expdir}/refine_${tag}_${name}"
start="${vbase}/model"                 # what stage 2 fine-tunes
[ -n "${overrides}" ] || start=${base_model}
SECONDS=0
log "$0 $*"

refine() {  # refine KIND INIT OUT ARGS...: one refinement run (stops when OUT was begun from another model or other arguments)
    local kind=$1 init=$2 out=$3
    shift 3
    local st=(--input "config=${config}" --input "init_weights=${init}/model.pt" --input "init_config=${init}/config.json"
              --dump "train=${dumpdir}/train" --option "kind=${kind}" --option "args=$*")
    train_or_skip "${out}" "${out}/model" "${st[@]}" || { log "  ${out}/model already exported, skipping (delete it to train again)"; return 0; }
    log "  ${kind} from ${init} -> ${out} (log: ${out}.log; resumes from its last checkpoint)"
    mkdir -p "$(dirname "${out}")"
    "${python}" "${toolkit_root}/recipes/refine/train.py" "${config}" --refine "${kind}" --init_model "${init}" \
        --exp_dir "${out}" --dump_dir "${dumpdir}" "$@" > "${out}.log" 2>&1 \
        || { log "ERROR: ${kind} failed; see ${out}.log"; return 1; }
}

if run_stage 1; then
    [ -f "${base_model}/config.json" ] || { log "ERROR: ${base_model}/config.json missing: run ./run.sh --stop_stage 4 first"; exit 1; }
fi
if run_stage 1 && [ -z "${overrides}" ]; then
    log "Stage 1: no --overrides: stage 2 fine-tunes ${base_model} itself"
elif run_stage 1; then
    log "Stage 1: re-parameterised base: the decoder of ${base_model} re-trained with ${overrides} on frozen tokens"
    eval "args=(${base_args} ${train_args})"
    refine reparam "${base_model}" "${vbase}" --decoder_overrides "${overrides}" ${args[@]+"${args[@]}"}
fi

if run_stage 2; then
    threads=$(( $(nproc) / 2 )); [ "${threads}" -ge 1 ] || threads=1
    log "Stage 2: from ${start}: shortcut fine-tuning and the decoder_ft control (${ft_args}), ${threads} thread(s) each"
    eval "args=(${ft_args} ${train_args})"
    OMP_NUM_THREADS=${threads} refine shortcut "${start}" "${vbase}_shortcut" ${args[@]+"${args[@]}"} & p1=$!
    OMP_NUM_THREADS=${threads} refine decoder_ft "${start}" "${vbase}_ft" ${args[@]+"${args[@]}"} & p2=$!
    wait ${p1} && wait ${p2} || exit 1
fi

if run_stage 3; then
    models=("base=${base_model}")
    [ -n "${overrides}" ] && models+=("${name}=${vbase}/model")
    models+=("${name}_ft=${vbase}_ft/model" "${name}_shortcut=${vbase}_shortcut/model")
    lm=()
    [ -f "${lang_dir}/judge_lm.arpa" ] && lm=(--lm "${lang_dir}/judge_lm.arpa")
    eval "more=(${eval_args})"
    score() {  # score SET OUT ARGS...: sitok eval-refine of every model on SET, once
        local set=$1 out=$2
        shift 2
        local st=(--input "codes=${codes_dir}/${set}" --dump "feats=${dumpdir}/${set}" --option "steps=${eval_steps}"
                  --option "temperatures=${eval_temperatures}" --option "eval_args=${eval_args}" --option "args=$*")
        for m in "${models[@]}"; do st+=(--input "${m%%=*}=${m#*=}"); done
        is_done "${out}/.done" --what "${out}" "${st[@]}" && { log "Stage 3: ${out} already done, skipping"; return 0; }
        [ -f "${codes_dir}/${set}/.done" ] || { log "ERROR: ${codes_dir}/${set} missing: run ./run.sh --stage 5 --stop_stage 5"; return 1; }
        log "Stage 3: ${set}: ${models[*]} at steps ${eval_steps}, temperatures ${eval_temperatures} -> ${out}"
        "${python}" -m sitok.cli eval-refine "${dumpdir}/${set}" "${codes_dir}/${set}" "${out}" --models "${models[@]}" \
            --steps ${eval_steps} --temperatures ${eval_temperatures} --vocoder griffin_lim ${more[@]+"${more[@]}"} "$@"
        while read -r line; do log "  ${line}"; done < "${out}/results.md"
        mark_done "${out}/.done" "${st[@]}"
    }
    out="${expdir}/refine_eval_${tag}_${name}"
    select=()
    if [ -n "${select_set}" ] && [ "${select_set}" != "${eval_set}" ] && [ "${eval_temperatures}" != "1" ]; then
        score "${select_set}" "${out}/${select_set}"
        select=(--select-from "${out}/${select_set}")
    fi
    score "${eval_set}" "${out}/${eval_set}" --wer-steps ${eval_wer_steps} ${lm[@]+"${lm[@]}"} ${select[@]+"${select[@]}"}
fi
log "Finished in ${SECONDS} s"
