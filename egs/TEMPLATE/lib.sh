#!/usr/bin/env bash
# Shell functions shared by the recipe template (sitok.sh) and the drivers that run it several
# times (egs/mini/sitok/run_ablations.sh, run_shortcut.sh): logging, the stage range, and the
# completion stamps that make every step resumable. Sourced, not executed; it defines functions
# only, so sourcing it before or after tools/parse_options.sh adds no option.
#
# The sourcing script provides, by the time a function is called:
#   ${python}               the interpreter that runs `python -m sitok.stamp` (no torch import:
#                           a check costs the digests only)
#   ${stage} ${stop_stage}  the range run_stage tests
#   ${num_nodes} ${node_rank} ${master_addr} ${master_port} ${rdzv_endpoint} ${rdzv_id}
#                           the node options set_launcher passes to torch.distributed.run
# shellcheck disable=SC2154  # python, stage, stop_stage and the node options are the sourcing script's

# log MESSAGE...: one line, stamped with the time and the calling file, line and function
log() {
    local fname=${BASH_SOURCE[1]##*/}
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}

# run_stage N: true when N is within --stage .. --stop_stage
run_stage() { [ "${stage}" -le "$1" ] && [ "${stop_stage}" -ge "$1" ]; }

# is_done MARKER [--input NAME=PATH | --dump NAME=DIR | --option NAME=VALUE | --what TEXT]...: true
# when MARKER records the same inputs and options; false (logging what changed, if anything) otherwise
is_done() { "${python}" -m sitok.stamp check "$@"; }
# mark_done MARKER STAMP_ARGS...: record the inputs and options in MARKER (written atomically)
mark_done() { "${python}" -m sitok.stamp write "$@"; }

# begin_work DIR STAMP_ARGS...: the partial results in DIR (caches, checkpoints of a killed run)
# are resumed only when they were begun from the same inputs and options; otherwise DIR is emptied
begin_work() {
    local dir=$1; shift
    if [ -d "${dir}" ] && ! is_done "${dir}/.started" "$@"; then
        log "  ${dir}: removing what was begun from other inputs or options"
        rm -rf "${dir}"
    fi
    mkdir -p "${dir}" && mark_done "${dir}/.started" "$@"
}

# train_or_skip EXP MODEL_DIR STAMP_ARGS...: false when MODEL_DIR was exported from the same
# inputs and options (skip); true to train (a fresh run, or the resumption of the same one);
# stops the script when EXP was begun from other inputs or options: a trained model is never
# deleted for you.
train_or_skip() {
    local exp=$1 model=$2; shift 2
    if [ -f "${exp}/.started" ]; then
        is_done "${exp}/.started" --what "${exp}" "$@" \
            || { log "ERROR: ${exp} was trained from other inputs or options (logged above): delete it to train again"; exit 1; }
    else
        [ -f "${model}/config.json" ] && log "  ${exp}: trained before inputs were recorded; recording them now"
        mkdir -p "${exp}" && mark_done "${exp}/.started" "$@"
    fi
    [ ! -f "${model}/config.json" ]
}

# set_launcher NPROC: the array ${launcher[@]} that starts a training script: ${python} alone for
# one process on one node, else torch.distributed.run with NPROC processes per node and the
# sourcing script's node options: --rdzv_endpoint (c10d rendezvous, with --rdzv_id) when given,
# else --num_nodes/--node_rank/--master_addr/--master_port (static rendezvous on node 0)
set_launcher() {
    local nproc=$1
    [ "${nproc}" -ge 1 ] || nproc=1
    launcher=("${python}")
    [ "${nproc}" -gt 1 ] || [ "${num_nodes}" -gt 1 ] || return 0
    launcher=("${python}" -m torch.distributed.run --nnodes "${num_nodes}" --nproc_per_node "${nproc}")
    if [ -n "${rdzv_endpoint}" ]; then
        launcher+=(--rdzv_backend c10d --rdzv_endpoint "${rdzv_endpoint}" --rdzv_id "${rdzv_id}")
    else
        launcher+=(--node_rank "${node_rank}" --master_addr "${master_addr}" --master_port "${master_port}")
    fi
}
