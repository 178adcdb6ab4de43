#!/usr/bin/env bash
# Short A/B runs of tokenizer training options on the mini corpus: every arm trains for the same
# number of steps from the same seed, then is scored on the same evenly spaced test utterances
# (judge WER and SIM through Griffin-Lim at 1 step, the CTC head's greedy WER, codebook use) and
# the last epoch's dev losses. Arms run two at a time, one thread each.
#
#   ./run_tokenizer_ab.sh --epochs 6 --arms "default; joint --phase_a_fraction=0; cos --vq_normalize=True"
#
# Arms are separated by ';': a name, then hparams overrides of recipes/tokenizer/hparams/mini.yaml
# written --key=value; "lang=DIR" picks another CTC vocabulary (default data/lang_char, the recipe's).
# Results: exp/ab_<NAME>/eval_test/summary.json, and a table on stdout (also exp/ab_summary.tsv).
# Run stages 0-3 of ./run.sh first (and `sitok train-vocab` for other vocabularies, e.g. unigram 256).
set -euo pipefail
cd "$(dirname "$0")"
epochs=6
utts=100
arms="base"
python=../../../.venv/bin/python
. ../../../tools/parse_options.sh

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (run_tokenizer_ab.sh) $*"; }
sitok=("${python}" -m sitok.cli)

train_arm() {  # NAME OVERRIDES...
    local name=$1; shift
    local exp=exp/ab_${name} lang=data/lang_char args=()
    for o in "$@"; do
        case "${o}" in
            lang=*) lang=${o#lang=} ;;
            --*=*) args+=("${o%%=*}" "${o#*=}") ;;
            *) log "ERROR: arm ${name}: override '${o}' is not --key=value or lang=DIR"; return 2 ;;
        esac
    done
    mkdir -p exp
    if [ ! -f "${exp}/model/config.json" ]; then
        log "${name}: train ${epochs} epochs (${lang}; ${args[*]:-defaults}) -> ${exp}"
        OMP_NUM_THREADS=1 "${python}" ../../../recipes/tokenizer/train.py ../../../recipes/tokenizer/hparams/mini.yaml \
            --exp_dir "${exp}" --lang_dir "${lang}" --vocab_size "$(wc -l < "${lang}/tokens.txt")" \
            --number_of_epochs "${epochs}" --max_train_minutes 0 ${args[@]+"${args[@]}"} > "${exp}.log" 2>&1
    fi
    if [ ! -f "${exp}/eval_test/summary.json" ]; then
        OMP_NUM_THREADS=1 "${sitok[@]}" evaluate dump/test "${exp}/eval_test" -m "${exp}/model" --steps 1 \
            --vocoders griffin_lim --judges mos=none pesq=none stoi=none --no-groundtruth --max-utts "${utts}" \
            --lm data/lang_char/judge_lm.arpa --threads 1 --no-progress >> "${exp}.log" 2>&1
    fi
    log "${name}: done"
}

IFS=';' read -r -a arm_list <<< "${arms}"
names=() pids=()
for arm in "${arm_list[@]}"; do
    read -r -a words <<< "${arm}"
    [ ${#words[@]} -eq 0 ] && continue
    names+=("${words[0]}")
    train_arm "${words[@]}" &
    pids+=($!)
    if [ ${#pids[@]} -eq 2 ]; then wait "${pids[@]}"; pids=(); fi
done
[ ${#pids[@]} -gt 0 ] && wait "${pids[@]}"

"${python}" - "${names[@]}" <<'PY' | tee exp/ab_summary.tsv
import json, sys

nan = float("nan")
print("arm\tjudge_wer\tsim\tmel_l1\tctc_asr_wer\ttest_usage\tdev_diff\tdev_ctc\tdev_usage\ttrain_min")
for name in sys.argv[1:]:
    exp = f"exp/ab_{name}"
    with open(f"{exp}/train_stats.jsonl", encoding="utf-8") as fh:
        last = [json.loads(x) for x in fh if x.strip()][-1]
    with open(f"{exp}/eval_test/summary.json", encoding="utf-8") as fh:
        s = json.load(fh)
    row = next(r for r in s["settings"] if r["source"] == "model" and r["steps"] == 1)
    m, v = next(iter(s["models"].values())), last["valid"]
    cols = [row.get("wer", nan), row.get("sim", nan), row.get("mel_l1", nan), m.get("ctc_asr_wer", nan),
            m.get("codebook_usage", nan), v.get("diff", nan), v.get("ctc", nan), v.get("codebook_usage", nan),
            last["minutes"]]
    print("\t".join([name] + [f"{x:.4g}" for x in cols]))
PY
