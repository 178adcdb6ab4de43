#!/usr/bin/env bash
# The shared SiTok recipe: every stage lives here once (ESPnet egs2/TEMPLATE style).
# A corpus recipe egs/<corpus>/sitok/run.sh sets its options and calls this script from its
# own directory, which must hold local/corpus.sh (stage 0) and local/data.sh (stage 1).
#
# Every generated file is under corpus/, data/, dump/ and exp/ of the recipe directory: they
# can be deleted and regenerated. Each stage writes a .done stamp last, recording the inputs
# (digests of files and directories) and the options it was made from, and skips the work on a
# re-run only when both are unchanged: a killed run is resumed by running the same command
# again, and changed inputs or options redo what depends on them (the log names what changed).
# A trained model is never deleted for you: when its inputs changed the stage stops and says so.
#
# Corpus locations: one variable per corpus in egs/db.sh (overridable from the environment),
# which run.sh passes as --corpus_dir; --db_root DIR on the command line wins over both.
set -euo pipefail
# log, run_stage, is_done, mark_done, begin_work, train_or_skip, set_launcher (shared with the drivers in egs/*/sitok/)
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SECONDS=0

# ---- options (any of them can be given as --name value) -------------------------------
stage=0                 # first stage to run
stop_stage=100          # last stage to run
nj=2                    # parallel jobs for synthesis and features
python=                 # Python interpreter (default: <toolkit>/.venv/bin/python)
corpus_dir=corpus       # stage 0: where the corpus is synthesised / found (real corpora: run.sh gives egs/db.sh's)
db_root=                # the same as --corpus_dir, and wins over it: where an extracted corpus is (see egs/db.sh)
local_corpus_opts=      # extra options for local/corpus.sh
local_data_opts=        # extra options for local/data.sh
train_set=train         # data sets (names of data/<set> directories)
valid_set=dev
test_sets="test"
extra_sets=             # more sets that get features but are not train/valid/test (e.g. keyword clips)
datadir=data
dumpdir=dump
expdir=exp
min_duration=0.1        # seconds; shorter audio is skipped (and listed)
max_duration=60         # seconds; longer audio is skipped (and listed)
cmvn_mode=global        # global (paper: one mean/var) | per_bin
vocab_type=unigram      # SentencePiece model type for the CTC targets (unigram|bpe|word|char)
vocab_size=256          # paper scale 32100; mini a few hundred
token_rate=12.5         # tokens per second of the tokenizer (CTC fit check)
ctc_upsample=1          # CTC frames per token (characters/phones at 12.5 Hz need 2-3); passed to training
tokenizer_config=mini   # recipes/tokenizer/hparams/<name>.yaml (tiny|mini|S|B|L|XL) or a path to a YAML
tokenizer_tag=          # experiment name (default: the config name): exp/tokenizer_<tag>
tokenizer_args=         # extra hparams overrides, e.g. "--number_of_epochs 10 --ctc_weight 0"
ngpu=0                  # > 1: torchrun --nproc_per_node ngpu (per node; DDP, or FSDP2 with --distributed_strategy fsdp in the args)
num_nodes=1             # > 1: multi-node training (stages 4, 6-10, 13, 15, 16): run the same command on every node
node_rank=0             # static rendezvous: this node's rank, 0 .. num_nodes - 1
master_addr=127.0.0.1   # static rendezvous: the address of node 0 ...
master_port=29500       # ... and a free port there
rdzv_endpoint=          # HOST:PORT: c10d rendezvous instead of the static one (node ranks assigned by it)
rdzv_id=sitok           # c10d rendezvous: the job's id, the same on every node
decode_steps="1 4 16"   # stage 5: candidate Euler steps for resynthesising the test sets ...
decode_temperatures="0 1"  # ... and start-noise temperatures: the pair with the lowest mel L1 on
decode_select_utts=100  #     this many utterances of the valid set is used (one candidate each: no selection)
resynth_sets=           # stage 5: sets to resynthesise and ASR-judge (default: the test sets; "none": none)
refine_config=mini      # stages 6-9: recipes/refine/hparams/<name>.yaml or a path to a YAML
refine_kinds="decoder_ft token_cfg shortcut light_head"  # which refinement runs stages 6-9 make
refine_args=            # extra hparams overrides for every refinement run, e.g. "--max_train_minutes 30"
vocoder_config=mini     # stage 10: recipes/vocoder/hparams/<name>.yaml or a path to a YAML
vocoder_args=           # extra hparams overrides for vocoder training
vocoder_eval_utts=100   # stage 10: PESQ/STOI/DNSMOS of the vocoder on this many (evenly spaced) test utterances (0: all)
eval_sets=              # stage 11: sets to evaluate (default: the first test set)
eval_steps="1 2 4 8 16" # stage 11: Euler steps to score
eval_cfg_scales="1 1.25 1.5 2"  # stage 11: token-CFG scales to score (models trained with token drop)
eval_wer_steps="1 2 4"  # stage 11: steps that also get vocoded and ASR-judged (WER)
eval_temperatures=1     # stage 11: start-noise temperatures to score, e.g. "0 0.5 1"
eval_select_set=        # stage 11: set whose mel L1 selects the judged CFG scale / temperature
                        #           (scored first, without the judge; default: each eval set itself)
evaluate_steps="1 4"    # stage 12: Euler steps at which every model is scored by every judge
evaluate_cfg_scales="1 1.25"  # stage 12: token-CFG scales (models trained with token drop; others use 1)
evaluate_vocoders=auto  # stage 12: vocoders to score (auto: the model directory's own, else Griffin-Lim)
evaluate_judges=        # stage 12: judge backends, e.g. "asr=whisper sim=wavlm" (default: the offline ones)
evaluate_judge_opts=    # stage 12: judge options, e.g. "asr.model=/models/whisper-large-v3"
evaluate_groundtruth=true  # stage 12: also score ground-truth mel -> vocoder (with the first model)
evaluate_utts=0         # stage 12: score this many evenly spaced utterances of each set (0: all)
eval_models=            # stage 12: more models to score, "NAME=MODEL_DIR ..." (e.g. the R + D ablation)
probe_tasks="er sv ks asr"  # stage 13: DASB-style probes to run (a task whose sets have no dump is skipped, logged)
probe_features="tokens mel12.5 mel50"  # stage 13: tokens = this recipe's tokenizer (+ --probe_models); mel*: continuous baselines
probe_models=           # stage 13: more tokenizers to probe, "NAME=MODEL_DIR ..." (codes dumped to <model>/../codes once)
probe_config=mini       # stage 13: recipes/probes/<task>/hparams/<name>.yaml
probe_args=             # stage 13: extra hparams overrides for every probe, e.g. "--number_of_epochs 2"
probe_er_sets=          # stage 13: "TRAIN VALID TEST" of each probe (default: train, valid, first test set;
probe_sv_sets=          #   SV: train, valid, last test set = held-out speakers; KS: ks_train ks_dev ks_test)
probe_ks_sets="ks_train ks_dev ks_test"
probe_asr_sets=
llm_asr_features=tokens # stage 15: LLM-ASR inputs: tokens (this recipe's tokenizer and --llm_asr_models), mel12.5, mel50
llm_asr_models=         # stage 15: more tokenizers to read, "NAME=MODEL_DIR ..." (e.g. the CTC-free ablation)
llm_asr_config=mini     # stage 15: recipes/llm_asr/hparams/<name>.yaml or a path to a YAML
llm_asr_args=           # stage 15: extra hparams overrides, e.g. "--pretrained False" or "--backbone /models/Qwen2.5-0.5B"
tts_config=mini         # stage 16: recipes/tts/hparams/<name>.yaml or a path to a YAML
tts_args=               # stage 16: extra hparams overrides, e.g. "--pretrained False" or "--eval_utts 0"
tts_unseen_set=         # stage 16: held-out speakers' prompts (default: the second test set, if any)
tts_train_sets=         # stage 16: the sets the AR-TTS LM trains on (default: the train set), e.g. "train tts_train"
judge_check_utts=100    # stage 3: ASR-judge WER on this many ground-truth utterances of the first test set (0: skip)
progress=true           # progress bars

help_message=$(cat <<EOF
Usage: $0 [options]   (run from egs/<corpus>/sitok/)
Corpus paths: egs/db.sh (one variable per corpus, also read from the environment) or --db_root DIR.

Multi-GPU / multi-node training (stages 4, 6-10, 13, 15, 16): --ngpu N runs N processes per node; with
--num_nodes M run the same command on each of the M nodes, either with a static rendezvous
(--node_rank 0..M-1 --master_addr NODE0 --master_port PORT) or with c10d (--rdzv_endpoint HOST:PORT
--rdzv_id JOB, node ranks assigned). Experiment directories must be on a filesystem every node
sees. egs/TEMPLATE/slurm.sh is an sbatch example.

Stages:
  0  corpus       synthesise (mini) or locate (real corpora) the audio: local/corpus.sh
  1  data prep    Kaldi-style dirs data/<set>/ + SpeechBrain manifests: local/data.sh
  2  features     log-mel ark/scp dumps + CMVN stats in ${dumpdir}/<set>/, validated
  3  vocabulary   SentencePiece CTC vocabulary + CTC fit report; in-domain LM for the ASR judge
                  and the judge's WER on ground-truth test audio
  4  tokenizer    train SiTok (recipes/tokenizer/train.py) and export the model directory
  5  tokens       dump codes for every set; resynthesise the test sets (and their ground truth
                  through the same vocoder); ASR-judge WER of both
  6  decoder_ft   refine: encoder + VQ frozen, decoder trained further   (recipes/refine/train.py)
  7  token_cfg    refine: + 10 % whole-utterance token drop to a learned null condition
  8  shortcut     refine: shortcut fine-tuning (step-size conditioned decoder, few-step decoding)
  9  light_head   refine: decoder split into a main body (run once) + light diffusion head
                  (stages 6-9 run the kinds listed in --refine_kinds; each resumes from its checkpoint)
 10  vocoder      train the Vocos-style vocoder (recipes/vocoder/train.py) and put it into every
                  model directory of this recipe (<model>/vocoder), so decode uses it
 11  refine eval  log-mel distance of every model x steps x CFG scale x temperature on the eval
                  sets, judge WER at --eval_wer_steps (plain setting and the best other one, chosen
                  on --eval_select_set), vocoder vs Griffin-Lim on ground truth; exp/refine_eval_<tag>/
 12  evaluate     every model (base, refinements, --eval_models) on the eval sets with every judge
                  (WER, SIM, DNSMOS, PESQ, STOI, mel L1, CTC ASR, codebook use, RTF): <exp>/eval/<set>/
 13  probes       DASB-style probes on frozen features (recipes/probes/<task>/train.py): ER, SV (EER,
                  minDCF), KS, ASR (BiLSTM + CTC) for the tokenizer's codes, --probe_models and
                  continuous mel (12.5 / 50 Hz); CTC ASR of each tokenizer's own head (greedy + beam)
                  -> <exp>/probes/<task>/results.json, <exp>/probes/summary.json; the list of what
                  was probed (name, features, model, results): exp/probes_<tag>.json
 14  report       sitok report of the evaluated models (stage 12) and exp/probes_<tag>.json: the
                  paper's tables (markdown + CSV) and figures -> exp/report_<tag>/
 15  LLM-ASR      a decoder-only LM (SmolLM2-135M by default) fine-tuned to read the tokens (and
                  --llm_asr_features) and write the transcript; greedy WER on the first test set
                  (recipes/llm_asr/train.py) -> <exp>/llm_asr/results.json
 16  AR-TTS       a decoder-only LM (SmolLM2-135M by default) fine-tuned to write the tokens of a
                  text; the first test set's sentences synthesised with same-speaker and held-out-
                  speaker prompts, judged (WER, SIM to the prompt, DNSMOS, RTF) at several decoder
                  step counts beside the reconstruction (recipes/tts/train.py); --tts_train_sets:
                  more sets to learn from -> <exp>/tts/
EOF
)

toolkit_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
. "${toolkit_root}/tools/parse_options.sh"
[ -z "${db_root}" ] || corpus_dir=${db_root}

if [ -z "${python}" ]; then
    python="${toolkit_root}/.venv/bin/python"
    [ -x "${python}" ] || { log "ERROR: ${python} not found: run ${toolkit_root}/tools/install.sh first (or 'make demo')"; exit 1; }
fi
for f in local/corpus.sh local/data.sh; do
    [ -x "${f}" ] || { log "ERROR: $(pwd)/${f} missing or not executable: run this script from egs/<corpus>/sitok/"; exit 1; }
done
sitok=("${python}" -m sitok.cli)
# ensure_codes MODEL_DIR SET OUT: codes of dump/SET by MODEL_DIR in OUT, made again when the
# model's weights or the features changed
ensure_codes() {
    local m=$1 dset=$2 out=$3
    local st=(--input "model=${m}/model.pt" --input "config=${m}/config.json" --input "cmvn=${m}/cmvn.json"
              --dump "feats=${dumpdir}/${dset}" --what "${out}")
    if is_done "${out}/.done" "${st[@]}"; then
        log "  codes of ${dset} by ${m} already done, skipping"
        return 0
    fi
    "${sitok[@]}" dump-codes "${dumpdir}/${dset}" "${out}" -m "${m}" "${no_progress[@]}"
    mark_done "${out}/.done" "${st[@]}"
}
no_progress=(); ${progress} || no_progress=(--no-progress)
all_sets="${train_set} ${valid_set} ${test_sets} ${extra_sets}"
lang_dir="${datadir}/lang_${vocab_type}${vocab_size}"
[ "${vocab_type}" = char ] && lang_dir="${datadir}/lang_char"  # one unit per character: no size to choose
export PYTHONUNBUFFERED=1

log "$0 $*"

# ---- stage 0: corpus ---------------------------------------------------------------------
if run_stage 0; then
    log "Stage 0: corpus -> ${corpus_dir} (local/corpus.sh; it skips work already done)"
    eval "corpus_opts=(${local_corpus_opts})"
    local/corpus.sh --corpus_dir "${corpus_dir}" --nj "${nj}" --python "${python}" --progress "${progress}" \
        ${corpus_opts[@]+"${corpus_opts[@]}"}
fi

# ---- stage 1: data prep ------------------------------------------------------------------
if run_stage 1; then
    st=(--input "corpus=${corpus_dir}/.done" --input local_data=local/data.sh --option "sets=${all_sets}"
        --option "corpus_dir=${corpus_dir}" --option "min_duration=${min_duration}"
        --option "max_duration=${max_duration}" --option "local_data_opts=${local_data_opts}")
    if is_done "${datadir}/.done" "${st[@]}"; then
        log "Stage 1: data dirs in ${datadir}/ already done, skipping"
    else
        log "Stage 1: data prep -> ${datadir}/{$(echo ${all_sets} | tr ' ' ',')}"
        eval "data_opts=(${local_data_opts})"
        local/data.sh --corpus_dir "${corpus_dir}" --datadir "${datadir}" --python "${python}" \
            --min_duration "${min_duration}" --max_duration "${max_duration}" ${data_opts[@]+"${data_opts[@]}"}
        for dset in ${all_sets}; do
            "${sitok[@]}" validate-data-dir "${datadir}/${dset}" --need utt2dur --check-files
        done
        mark_done "${datadir}/.done" "${st[@]}"
    fi
fi

# ---- stage 2: features -------------------------------------------------------------------
if run_stage 2; then
    log "Stage 2: log-mel features (24 kHz, n_fft 1920, hop 480, 128 bins, 50 Hz) with ${nj} jobs"
    for dset in ${all_sets}; do
        st=(--input "data=${datadir}/${dset}" --option "min_duration=${min_duration}"
            --option "max_duration=${max_duration}" --option "cmvn_mode=${cmvn_mode}")
        if is_done "${dumpdir}/${dset}/.done" "${st[@]}"; then
            log "  ${dumpdir}/${dset} already done, skipping"
            continue
        fi
        "${sitok[@]}" compute-feats "${datadir}/${dset}" "${dumpdir}/${dset}" --nj "${nj}" \
            --min-duration "${min_duration}" --max-duration "${max_duration}" --cmvn-mode "${cmvn_mode}" "${no_progress[@]}"
        "${sitok[@]}" validate-data-dir "${dumpdir}/${dset}" --need utt2dur feats.scp utt2num_frames
        mark_done "${dumpdir}/${dset}/.done" "${st[@]}"
    done
    log "  global CMVN statistics for training: ${dumpdir}/${train_set}/cmvn.json"
fi

# ---- stage 3: vocabulary -----------------------------------------------------------------
if run_stage 3; then
    first_test=${test_sets%% *}
    st=(--input "text=${dumpdir}/${train_set}/text" --option "vocab_type=${vocab_type}" --option "vocab_size=${vocab_size}"
        --option "token_rate=${token_rate}" --option "ctc_upsample=${ctc_upsample}"
        --option "judge_check_utts=${judge_check_utts}" ${first_test:+--input "judge_check=${dumpdir}/${first_test}/text"})
    if is_done "${lang_dir}/.done" "${st[@]}"; then
        log "Stage 3: vocabulary ${lang_dir} already done, skipping"
    else
        log "Stage 3: SentencePiece ${vocab_type} ${vocab_size} on ${dumpdir}/${train_set}/text -> ${lang_dir}"
        "${sitok[@]}" train-vocab "${dumpdir}/${train_set}" --out "${lang_dir}" --vocab-size "${vocab_size}" \
            --model-type "${vocab_type}" --token-rate "${token_rate}" --ctc-upsample "${ctc_upsample}" --nj "${nj}"
        "${sitok[@]}" judge-lm --text "${dumpdir}/${train_set}/text" --out "${lang_dir}/judge_lm.arpa"
        if [ "${judge_check_utts}" -gt 0 ] && [ -n "${test_sets}" ]; then
            log "  ASR judge on ground truth: ${judge_check_utts} utterances of ${dumpdir}/${first_test}"
            "${sitok[@]}" judge-wer "${dumpdir}/${first_test}" --lm "${lang_dir}/judge_lm.arpa" \
                --max-utts "${judge_check_utts}" --out "${lang_dir}/judge_wer_${first_test}.tsv" "${no_progress[@]}"
        fi
        mark_done "${lang_dir}/.done" "${st[@]}"
    fi
fi

tokenizer_config_file=${tokenizer_config}
[ -f "${tokenizer_config_file}" ] || tokenizer_config_file="${toolkit_root}/recipes/tokenizer/hparams/${tokenizer_config}.yaml"
tok_exp="${expdir}/tokenizer_${tokenizer_tag:-$(basename "${tokenizer_config}" .yaml)}"
model_dir="${tok_exp}/model"

# ---- stage 4: tokenizer training -------------------------------------------------------------
if run_stage 4; then
    [ -f "${tokenizer_config_file}" ] || { log "ERROR: tokenizer config ${tokenizer_config_file} not found"; exit 1; }
    st=(--input "config=${tokenizer_config_file}" --dump "train=${dumpdir}/${train_set}" --dump "valid=${dumpdir}/${valid_set}"
        --input "lang=${lang_dir}" --option "ctc_upsample=${ctc_upsample}" --option "tokenizer_args=${tokenizer_args}")
    if ! train_or_skip "${tok_exp}" "${model_dir}" "${st[@]}"; then
        log "Stage 4: ${model_dir} already exported from the same inputs, skipping (delete ${tok_exp} to train again)"
    else
        n_pieces=$(wc -l < "${lang_dir}/tokens.txt")
        log "Stage 4: train the tokenizer (${tokenizer_config_file}) -> ${tok_exp} (resumes from its last checkpoint)"
        set_launcher "${ngpu}"
        eval "tok_args=(${tokenizer_args})"
        "${launcher[@]}" "${toolkit_root}/recipes/tokenizer/train.py" "${tokenizer_config_file}" \
            --exp_dir "${tok_exp}" --dump_dir "${dumpdir}" --train_set "${train_set}" --valid_set "${valid_set}" \
            --lang_dir "${lang_dir}" --vocab_size "${n_pieces}" --ctc_upsample "${ctc_upsample}" \
            ${tok_args[@]+"${tok_args[@]}"}
        "${sitok[@]}" info -m "${model_dir}"
    fi
fi

# ---- stage 5: tokens and resynthesis ---------------------------------------------------------
if run_stage 5; then
    log "Stage 5: codes for every set -> ${tok_exp}/codes/<set>; resynthesis of ${test_sets}"
    for dset in ${all_sets}; do
        ensure_codes "${model_dir}" "${dset}" "${tok_exp}/codes/${dset}"
    done
    resynth=${resynth_sets:-${test_sets}}; [ "${resynth}" = none ] && resynth=
    read -r -a cand_steps <<< "${decode_steps}"
    read -r -a cand_temps <<< "${decode_temperatures}"
    if [ -z "${resynth}" ]; then
        dec_steps=; dec_temp=
    elif [ ${#cand_steps[@]} -gt 1 ] || [ ${#cand_temps[@]} -gt 1 ]; then
        select_dir="${tok_exp}/decode_select_${valid_set}"
        st=(--input "model=${model_dir}/model.pt" --input "codes=${tok_exp}/codes/${valid_set}"
            --dump "feats=${dumpdir}/${valid_set}" --option "steps=${decode_steps}"
            --option "temperatures=${decode_temperatures}" --option "utts=${decode_select_utts}" --what "${select_dir}")
        if is_done "${select_dir}/.done" "${st[@]}"; then
            log "  decoding setting: ${select_dir} already done, skipping"
        else
            begin_work "${select_dir}" "${st[@]}"
            log "  decoding setting: lowest mel L1 on ${decode_select_utts} utterances of ${valid_set} over steps {${decode_steps}} x temperature {${decode_temperatures}}"
            "${sitok[@]}" eval-refine "${dumpdir}/${valid_set}" "${tok_exp}/codes/${valid_set}" "${select_dir}" \
                --models "base=${model_dir}" --steps "${cand_steps[@]}" --temperatures "${cand_temps[@]}" \
                --max-utts "${decode_select_utts}" "${no_progress[@]}"
            mark_done "${select_dir}/.done" "${st[@]}"
        fi
        read -r dec_steps dec_temp <<< "$("${sitok[@]}" best-decoding "${select_dir}")"
    else
        dec_steps=${cand_steps[0]}; dec_temp=${cand_temps[0]}
    fi
    [ -n "${resynth}" ] && log "  resynthesis at ${dec_steps} steps, temperature ${dec_temp}"
    # made again when the model dir (with its vocoder: the trained one once stage 10 has run), the
    # codes or the options changed; resynth-set itself keeps only the audio made from the same
    # weights, vocoder, codes and options (wav/.stamp); the judge runs again when that audio or
    # the judge's LM changed.
    for dset in ${resynth}; do
        out="${tok_exp}/resynth/${dset}_steps${dec_steps}_temp${dec_temp}"
        gt="${tok_exp}/resynth/${dset}_groundtruth"
        st=(--input "model=${model_dir}" --dump "feats=${dumpdir}/${dset}" --what "${gt}")
        if ! is_done "${gt}/.done" "${st[@]}"; then
            "${sitok[@]}" resynth-set "${dumpdir}/${dset}" "${gt}" -m "${model_dir}" "${no_progress[@]}"
            mark_done "${gt}/.done" "${st[@]}"
        fi
        st=(--input "model=${model_dir}" --input "codes=${tok_exp}/codes/${dset}" --dump "feats=${dumpdir}/${dset}"
            --option "steps=${dec_steps}" --option "temperature=${dec_temp}" --what "${out}")
        if ! is_done "${out}/.done" "${st[@]}"; then
            "${sitok[@]}" resynth-set "${dumpdir}/${dset}" "${out}" -m "${model_dir}" --codes-dir "${tok_exp}/codes/${dset}" \
                --steps "${dec_steps}" --temperature "${dec_temp}" "${no_progress[@]}"
            mark_done "${out}/.done" "${st[@]}"
        fi
        for d in "${gt}" "${out}"; do
            st=(--input "audio=${d}/wav/.stamp" --input "wav_scp=${d}/wav.scp" --input "lm=${lang_dir}/judge_lm.arpa")
            if is_done "${d}/.judged" "${st[@]}"; then
                log "  $(head -1 "${d}/judge_wer.tsv")  (${d})"
                continue
            fi
            "${sitok[@]}" judge-wer "${d}" --lm "${lang_dir}/judge_lm.arpa" --out "${d}/judge_wer.tsv" "${no_progress[@]}"
            mark_done "${d}/.judged" "${st[@]}"
        done
    done
fi

# ---- stages 6-9: decoder refinement -----------------------------------------------------------
refine_config_file=${refine_config}
[ -f "${refine_config_file}" ] || refine_config_file="${toolkit_root}/recipes/refine/hparams/${refine_config}.yaml"
tok_tag=$(basename "${tok_exp}"); tok_tag=${tok_tag#tokenizer_}
refine_exp() { echo "${expdir}/refine_${tok_tag}_$1"; }
has_kind() { [[ " ${refine_kinds} " == *" $1 "* ]]; }
# token_cfg and shortcut start from the fine-tuned decoder when there is one; light_head from the base
refine_init() {
    if [ "$1" != decoder_ft ] && [ "$1" != light_head ] && has_kind decoder_ft; then
        echo "$(refine_exp decoder_ft)/model"
    else
        echo "${model_dir}"
    fi
}
refine_stage=6
for kind in decoder_ft token_cfg shortcut light_head; do
    if run_stage ${refine_stage}; then
        out=$(refine_exp ${kind})
        init=$(refine_init ${kind})
        st=(--input "config=${refine_config_file}" --input "init_weights=${init}/model.pt" --input "init_config=${init}/config.json"
            --dump "train=${dumpdir}/${train_set}" --dump "valid=${dumpdir}/${valid_set}" --option "kind=${kind}"
            --option "refine_args=${refine_args}")
        if ! has_kind ${kind}; then
            log "Stage ${refine_stage}: ${kind} not in --refine_kinds, skipping"
        elif [ ! -f "${init}/config.json" ]; then
            log "ERROR: ${init}/config.json not found: run the earlier stages first"; exit 1
        elif ! train_or_skip "${out}" "${out}/model" "${st[@]}"; then
            log "Stage ${refine_stage}: ${kind}: ${out}/model already exported from the same inputs, skipping (delete ${out} to train again)"
        else
            log "Stage ${refine_stage}: refine ${kind} from ${init} -> ${out} (${refine_config_file}; resumes from its last checkpoint)"
            eval "ref_args=(${refine_args})"
            set_launcher "${ngpu}"
            "${launcher[@]}" "${toolkit_root}/recipes/refine/train.py" "${refine_config_file}" --refine ${kind} \
                --init_model "${init}" --exp_dir "${out}" --dump_dir "${dumpdir}" --train_set "${train_set}" \
                --valid_set "${valid_set}" ${ref_args[@]+"${ref_args[@]}"}
            [ -d "${init}/vocoder" ] && [ ! -d "${out}/model/vocoder" ] && cp -r "${init}/vocoder" "${out}/model/vocoder"
            "${sitok[@]}" info -m "${out}/model"
        fi
    fi
    refine_stage=$((refine_stage + 1))
done

# ---- stage 10: vocoder -------------------------------------------------------------------------
vocoder_config_file=${vocoder_config}
[ -f "${vocoder_config_file}" ] || vocoder_config_file="${toolkit_root}/recipes/vocoder/hparams/${vocoder_config}.yaml"
voc_exp="${expdir}/vocoder_$(basename "${vocoder_config}" .yaml)"
if run_stage 10; then
    [ -f "${vocoder_config_file}" ] || { log "ERROR: vocoder config ${vocoder_config_file} not found"; exit 1; }
    st=(--input "config=${vocoder_config_file}" --dump "train=${dumpdir}/${train_set}" --dump "valid=${dumpdir}/${valid_set}"
        --option "vocoder_args=${vocoder_args}")
    if ! train_or_skip "${voc_exp}" "${voc_exp}/model" "${st[@]}"; then
        log "Stage 10: vocoder ${voc_exp}/model already exported from the same inputs, skipping (delete ${voc_exp} to train again)"
    else
        log "Stage 10: train the vocoder (${vocoder_config_file}) -> ${voc_exp} (resumes from its last checkpoint)"
        eval "voc_args=(${vocoder_args})"
        set_launcher "${ngpu}"
        "${launcher[@]}" "${toolkit_root}/recipes/vocoder/train.py" "${vocoder_config_file}" --exp_dir "${voc_exp}" \
            --dump_dir "${dumpdir}" --train_set "${train_set}" --valid_set "${valid_set}" ${voc_args[@]+"${voc_args[@]}"}
    fi
    first_test=${test_sets%% *}
    st=(--input "vocoder=${voc_exp}/model" --dump "feats=${dumpdir}/${first_test}" --option "utts=${vocoder_eval_utts}")
    if [ -n "${first_test}" ] && ! is_done "${voc_exp}/eval_${first_test}/.done" "${st[@]}"; then
        begin_work "${voc_exp}/eval_${first_test}" "${st[@]}"
        log "  ground-truth mel -> vocoder vs Griffin-Lim on ${first_test} (PESQ-WB, STOI, DNSMOS): ${voc_exp}/eval_${first_test}"
        "${sitok[@]}" evaluate "${dumpdir}/${first_test}" "${voc_exp}/eval_${first_test}" --original --judges asr=none sim=none \
            --vocoders griffin_lim "vocos=${voc_exp}/model" --max-utts "${vocoder_eval_utts}" "${no_progress[@]}"
        mark_done "${voc_exp}/eval_${first_test}/.done" "${st[@]}"
    fi
    for m in "${model_dir}" $(for k in ${refine_kinds}; do echo "$(refine_exp ${k})/model"; done); do
        [ -f "${m}/config.json" ] || continue
        if [ -f "${m}/vocoder/config.json" ] && cmp -s "${m}/vocoder/model.pt" "${voc_exp}/model/model.pt"; then
            log "  ${m}/vocoder is up to date"
        else
            rm -rf "${m}/vocoder.tmp" && cp -r "${voc_exp}/model" "${m}/vocoder.tmp"
            rm -rf "${m}/vocoder" && mv "${m}/vocoder.tmp" "${m}/vocoder"
            log "  vocoder -> ${m}/vocoder"
        fi
    done
fi

# ---- stage 11: refinement evaluation -----------------------------------------------------------
if run_stage 11; then
    eval_out="${expdir}/refine_eval_${tok_tag}"
    models=("base=${model_dir}")
    for k in ${refine_kinds}; do
        [ -f "$(refine_exp ${k})/model/config.json" ] && models+=("${k}=$(refine_exp ${k})/model")
    done
    grid=(--models "${models[@]}" --steps ${eval_steps} --cfg-scales ${eval_cfg_scales} --temperatures ${eval_temperatures})
    # the scores are made again (their caches removed) when a model, the codes, the features or the grid changed
    grid_st=(--option "grid=${grid[*]}")
    for m in "${models[@]}"; do grid_st+=(--input "${m%%=*}=${m#*=}"); done
    for dset in ${eval_sets:-${test_sets%% *}}; do
        [ -f "${tok_exp}/codes/${dset}/.done" ] || { log "ERROR: ${tok_exp}/codes/${dset} missing: run stage 5 first"; exit 1; }
        st=("${grid_st[@]}" --input "codes=${tok_exp}/codes/${dset}" --dump "feats=${dumpdir}/${dset}"
            --input "lm=${lang_dir}/judge_lm.arpa" --option "wer_steps=${eval_wer_steps}" --option "select=${eval_select_set}")
        select=()
        if [ -n "${eval_select_set}" ] && [ "${eval_select_set}" != "${dset}" ]; then
            sel_out="${eval_out}/${eval_select_set}_select"
            sel_st=("${grid_st[@]}" --input "codes=${tok_exp}/codes/${eval_select_set}" --dump "feats=${dumpdir}/${eval_select_set}")
            if ! is_done "${sel_out}/.done" "${sel_st[@]}" --what "${sel_out}"; then
                log "Stage 11: mel L1 on ${eval_select_set} (no judge), to select the judged settings -> ${sel_out}"
                [ -f "${tok_exp}/codes/${eval_select_set}/.done" ] || { log "ERROR: ${tok_exp}/codes/${eval_select_set} missing: run stage 5 first"; exit 1; }
                begin_work "${sel_out}" "${sel_st[@]}"
                "${sitok[@]}" eval-refine "${dumpdir}/${eval_select_set}" "${tok_exp}/codes/${eval_select_set}" "${sel_out}" \
                    "${grid[@]}" "${no_progress[@]}"
                mark_done "${sel_out}/.done" "${sel_st[@]}"
            fi
            select=(--select-from "${sel_out}")
            st+=(--input "selection=${sel_out}/.done")
        fi
        if is_done "${eval_out}/${dset}/.done" "${st[@]}" --what "${eval_out}/${dset}"; then
            log "Stage 11: ${eval_out}/${dset} already done, skipping"
            continue
        fi
        begin_work "${eval_out}/${dset}" "${st[@]}"
        log "Stage 11: refinement evaluation on ${dset}: ${models[*]} -> ${eval_out}/${dset}"
        "${sitok[@]}" eval-refine "${dumpdir}/${dset}" "${tok_exp}/codes/${dset}" "${eval_out}/${dset}" "${grid[@]}" \
            --wer-steps ${eval_wer_steps} --lm "${lang_dir}/judge_lm.arpa" ${select[@]+"${select[@]}"} "${no_progress[@]}"
        log "  $(head -1 "${eval_out}/${dset}/results.md")"
        tail -n +3 "${eval_out}/${dset}/results.md" | while read -r line; do log "  ${line}"; done
        mark_done "${eval_out}/${dset}/.done" "${st[@]}"
    done
fi

# ---- stage 12: evaluate ------------------------------------------------------------------------
eval_model_list() {  # NAME=MODEL_DIR of every model this recipe has made, then --eval_models
    echo "$(basename "${tok_exp}")=${model_dir}"
    for k in ${refine_kinds}; do
        [ -f "$(refine_exp ${k})/model/config.json" ] && echo "$(basename "$(refine_exp ${k})")=$(refine_exp ${k})/model"
    done
    for m in ${eval_models}; do echo "${m}"; done
}
if run_stage 12; then
    eval "judge_args=(${evaluate_judges:+--judges ${evaluate_judges}} ${evaluate_judge_opts:+--judge-opt ${evaluate_judge_opts}})"
    for dset in ${eval_sets:-${test_sets%% *}}; do
        gt=${evaluate_groundtruth}
        for entry in $(eval_model_list); do
            name=${entry%%=*}; mdir=${entry#*=}
            out="$(dirname "${mdir}")/eval/${dset}"
            [ -f "${mdir}/config.json" ] || { log "ERROR: ${mdir}/config.json not found (--eval_models ${entry})"; exit 1; }
            st=(--input "model=${mdir}" --dump "feats=${dumpdir}/${dset}" --input "lm=${lang_dir}/judge_lm.arpa"
                --option "steps=${evaluate_steps}" --option "cfg_scales=${evaluate_cfg_scales}"
                --option "vocoders=${evaluate_vocoders}" --option "judges=${evaluate_judges}"
                --option "judge_opts=${evaluate_judge_opts}" --option "groundtruth=${gt}" --option "utts=${evaluate_utts}")
            if is_done "${out}/.done" "${st[@]}" --what "${out}"; then
                log "Stage 12: ${name} on ${dset}: ${out} already done, skipping"
            else
                begin_work "${out}" "${st[@]}"
                log "Stage 12: evaluate ${name} (${mdir}) on ${dset}: steps ${evaluate_steps}, vocoders ${evaluate_vocoders} -> ${out}"
                gt_arg=(); ${gt} || gt_arg=(--no-groundtruth)
                "${sitok[@]}" evaluate "${dumpdir}/${dset}" "${out}" -m "${mdir}" --name "${name}" \
                    --steps ${evaluate_steps} --cfg-scales ${evaluate_cfg_scales} --vocoders ${evaluate_vocoders} \
                    --lm "${lang_dir}/judge_lm.arpa" --max-utts "${evaluate_utts}" \
                    ${gt_arg[@]+"${gt_arg[@]}"} ${judge_args[@]+"${judge_args[@]}"} "${no_progress[@]}"
                tail -n +3 "${out}/results.md" | while read -r line; do log "  ${line}"; done
                mark_done "${out}/.done" "${st[@]}"
            fi
            gt=false  # the ground-truth rows once per set
        done
    done
fi

# ---- stage 13: downstream probes --------------------------------------------------------------
probe_sets() {  # TRAIN VALID TEST of a task
    case $1 in
        er) echo "${probe_er_sets:-${train_set} ${valid_set} ${test_sets%% *}}" ;;
        sv) echo "${probe_sv_sets:-${train_set} ${valid_set} ${test_sets##* }}" ;;
        ks) echo "${probe_ks_sets}" ;;
        asr) echo "${probe_asr_sets:-${train_set} ${valid_set} ${test_sets%% *}}" ;;
        *) log "ERROR: unknown probe task '$1' (er sv ks asr)"; exit 1 ;;
    esac
}
probe_records="${expdir}/probes_${tok_tag}.json"  # what stage 13 probed, read by stage 14
if run_stage 13; then
    for task in ${probe_tasks}; do
        case ${task} in er|sv|ks|asr) ;; *) log "ERROR: unknown probe task '${task}' (er sv ks asr)"; exit 1 ;; esac
    done
    # the probed feature sets, one index across the three arrays: name, features, model dir (none: mel)
    p_names=(); p_feats=(); p_mdirs=()
    for f in ${probe_features}; do
        case ${f} in
            tokens) p_names+=("$(basename "${tok_exp}")"); p_feats+=(tokens); p_mdirs+=("${model_dir}") ;;
            mel12.5|mel50) p_names+=("features_${f}"); p_feats+=("${f}"); p_mdirs+=("") ;;
            *) log "ERROR: unknown probe feature '${f}' (tokens mel12.5 mel50)"; exit 1 ;;
        esac
    done
    for m in ${probe_models}; do
        [[ ${m} == ?*=?* ]] || { log "ERROR: --probe_models entry '${m}' is not NAME=MODEL_DIR"; exit 1; }
        p_names+=("${m%%=*}"); p_feats+=(tokens); p_mdirs+=("${m#*=}")
    done
    records=()
    for i in "${!p_names[@]}"; do
        name=${p_names[i]}; feats=${p_feats[i]}; mdir=${p_mdirs[i]}
        if [ "${feats}" = tokens ]; then
            pexp=$(dirname "${mdir}"); codes_root="${pexp}/codes"
            [ -f "${mdir}/config.json" ] || { log "ERROR: ${mdir}/config.json not found (probe model ${name})"; exit 1; }
        else
            pexp="${expdir}/${name}"; codes_root=
        fi
        ran=false
        for task in ${probe_tasks}; do
            read -r p_train p_valid p_test <<< "$(probe_sets ${task})"
            out="${pexp}/probes/${task}"
            missing=; labels=utt2label
            case ${task} in sv) labels=utt2spk ;; asr) labels=text ;; esac
            for dset in ${p_train} ${p_valid} ${p_test}; do
                [ -f "${dumpdir}/${dset}/feats.scp" ] && [ -f "${dumpdir}/${dset}/${labels}" ] || missing="${missing} ${dset}"
            done
            if [ -n "${missing}" ]; then
                log "Stage 13: ${task} probe skipped for ${name}: no feature dump or no ${labels} for${missing} in ${dumpdir}/"
                continue
            fi
            if [ "${feats}" = tokens ]; then  # tokens are extracted once, then read from disk by the probe
                for dset in ${p_train} ${p_valid} ${p_test}; do
                    ensure_codes "${mdir}" "${dset}" "${codes_root}/${dset}"
                done
            fi
            probe_yaml=${probe_config}; [ -f "${probe_yaml}" ] || probe_yaml="${toolkit_root}/recipes/probes/${task}/hparams/${probe_config}.yaml"
            extra=()
            [ "${task}" = sv ] && [ -f "${datadir}/${p_test}/trials" ] && extra=(--trials_file "${datadir}/${p_test}/trials")
            [ "${task}" = asr ] && extra=(--sp_model "${lang_dir}/sp.model")
            st=(--input "config=${probe_yaml}" --option "features=${feats}" --option "probe_args=${probe_args}"
                --option "extra=${extra[*]}")
            [ "${task}" = sv ] && [ -f "${datadir}/${p_test}/trials" ] && st+=(--input "trials=${datadir}/${p_test}/trials")
            [ "${task}" = asr ] && st+=(--input "sp_model=${lang_dir}/sp.model")
            for dset in ${p_train} ${p_valid} ${p_test}; do
                st+=(--dump "${dset}=${dumpdir}/${dset}")
                [ "${feats}" = tokens ] && st+=(--input "codes_${dset}=${codes_root}/${dset}")
            done
            if is_done "${out}/.done" "${st[@]}" --what "${out}"; then
                log "Stage 13: ${task} probe on ${name} (${feats}): ${out} already done, skipping"
                continue
            fi
            begin_work "${out}" "${st[@]}"
            log "Stage 13: ${task} probe on ${name} (${feats}; ${p_train}/${p_valid}/${p_test}) -> ${out}"
            mkdir -p "${pexp}/probes"
            set_launcher "${ngpu}"
            # shellcheck disable=SC2086
            "${launcher[@]}" "${toolkit_root}/recipes/probes/${task}/train.py" "${probe_yaml}" --features "${feats}" \
                --model_dir "${mdir:-none}" --codes_root "${codes_root:-none}" --dump_dir "${dumpdir}" \
                --train_set "${p_train}" --valid_set "${p_valid}" --test_set "${p_test}" --exp_dir "${out}" \
                ${extra[@]+"${extra[@]}"} ${probe_args} > "${out}.log" 2>&1 \
                || { log "ERROR: ${task} probe on ${name} failed; see ${out}.log"; tail -n 20 "${out}.log" >&2; exit 1; }
            grep "probe ${task} on" "${out}.log" | tail -1 | while read -r line; do log "  ${line}"; done
            mark_done "${out}/.done" "${st[@]}"; ran=true
        done
        if ${ran} || [ ! -f "${pexp}/probes/summary.json" ]; then  # + CTC ASR of the tokenizer's own head
            test_set=$(probe_sets asr | awk '{print $3}')
            "${sitok[@]}" probe-summary "${pexp}" --name "${name}" --features "${feats}" \
                ${mdir:+--model-dir "${mdir}" --codes-dir "${codes_root}/${test_set}"} --dump-dir "${dumpdir}/${test_set}"
        fi
        records+=(--record "${name}" "${feats}" "${mdir}" "${pexp}")
    done
    "${sitok[@]}" probe-records "${probe_records}" ${records[@]+"${records[@]}"}
fi

# ---- stage 14: report --------------------------------------------------------------------------
if run_stage 14; then
    report_out="${expdir}/report_${tok_tag}"
    report_set=${eval_sets:-${test_sets}}; report_set=${report_set%% *}
    exps=()
    for entry in $(eval_model_list); do exps+=("$(dirname "${entry#*=}")"); done
    found=false  # something to report: an evaluation (stage 12) or the probe records (stage 13)
    for e in "${exps[@]}"; do compgen -G "${e}/eval/*/summary.json" > /dev/null && found=true; done
    # sitok report reads the record file as the experiments it names (probe-only ones included)
    [ -f "${probe_records}" ] && exps+=("${probe_records}") && found=true
    ${found} || { log "ERROR: Stage 14: nothing to report: no evaluation summary (<exp>/eval/<set>/summary.json, stage 12) under ${exps[*]} and no probe records ${probe_records} (stage 13); run those stages first"; exit 1; }
    log "Stage 14: sitok report ${exps[*]} -> ${report_out}"
    "${sitok[@]}" report "${exps[@]}" --out "${report_out}" --set "${report_set}" --dump-dir "${dumpdir}/${report_set}"
fi

# ---- stage 15: LLM-ASR ----------------------------------------------------------------------------
if run_stage 15; then
    asr_yaml=${llm_asr_config}; [ -f "${asr_yaml}" ] || asr_yaml="${toolkit_root}/recipes/llm_asr/hparams/${llm_asr_config}.yaml"
    read -r a_train a_valid a_test <<< "${train_set} ${valid_set} ${test_sets%% *}"
    pb=(); ${progress} || pb=(--noprogressbar)
    a_entries=()  # NAME=FEATURES=MODEL_DIR (no model dir for mel)
    for f in ${llm_asr_features}; do
        case ${f} in
            tokens) a_entries+=("$(basename "${tok_exp}")=tokens=${model_dir}") ;;
            mel12.5|mel50) a_entries+=("features_${f}=${f}=") ;;
            *) log "ERROR: unknown LLM-ASR feature '${f}' (tokens mel12.5 mel50)"; exit 1 ;;
        esac
    done
    for m in ${llm_asr_models}; do
        [[ ${m} == ?*=?* ]] || { log "ERROR: --llm_asr_models entry '${m}' is not NAME=MODEL_DIR"; exit 1; }
        a_entries+=("${m%%=*}=tokens=${m#*=}")
    done
    for entry in "${a_entries[@]}"; do
        IFS='=' read -r name feats mdir <<< "${entry}"
        st=(--input "config=${asr_yaml}" --option "features=${feats}" --option "llm_asr_args=${llm_asr_args}")
        if [ "${feats}" = tokens ]; then
            [ -f "${mdir}/config.json" ] || { log "ERROR: ${mdir}/config.json not found (LLM-ASR model ${name})"; exit 1; }
            pexp=$(dirname "${mdir}"); codes_root="${pexp}/codes"
            for dset in ${a_train} ${a_valid} ${a_test}; do
                ensure_codes "${mdir}" "${dset}" "${codes_root}/${dset}"
                st+=(--input "codes_${dset}=${codes_root}/${dset}")
            done
            st+=(--input "model=${mdir}/model.pt")
        else
            pexp="${expdir}/${name}"; codes_root=
        fi
        for dset in ${a_train} ${a_valid} ${a_test}; do st+=(--dump "${dset}=${dumpdir}/${dset}"); done
        out="${pexp}/llm_asr"
        if is_done "${out}/.done" "${st[@]}" --what "${out}"; then
            log "Stage 15: LLM-ASR on ${name} (${feats}): ${out} already done, skipping"
            continue
        fi
        begin_work "${out}" "${st[@]}"
        log "Stage 15: LLM-ASR on ${name} (${feats}; ${a_train}/${a_valid}/${a_test}) -> ${out}"
        # shellcheck disable=SC2086
        set_launcher "${ngpu}"
        "${launcher[@]}" "${toolkit_root}/recipes/llm_asr/train.py" "${asr_yaml}" --features "${feats}" \
            --model_dir "${mdir:-none}" --codes_root "${codes_root:-none}" --dump_dir "${dumpdir}" \
            --train_set "${a_train}" --valid_set "${a_valid}" --test_set "${a_test}" --exp_dir "${out}" \
            ${pb[@]+"${pb[@]}"} ${llm_asr_args} > "${out}.log" 2>&1 \
            || { log "ERROR: LLM-ASR on ${name} failed; see ${out}.log"; tail -n 20 "${out}.log" >&2; exit 1; }
        grep "LLM-ASR on .*: WER" "${out}.log" | tail -1 | while read -r line; do log "  ${line}"; done
        mark_done "${out}/.done" "${st[@]}"
    done
fi

# ---- stage 16: AR-TTS -----------------------------------------------------------------------------
if run_stage 16; then
    tts_yaml=${tts_config}; [ -f "${tts_yaml}" ] || tts_yaml="${toolkit_root}/recipes/tts/hparams/${tts_config}.yaml"
    read -r t_valid t_test t_unseen <<< "${valid_set} ${test_sets}"
    t_unseen=${tts_unseen_set:-${t_unseen:-}}
    t_sets=${tts_train_sets:-${train_set}}
    read -r t_train t_extra <<< "${t_sets}"
    t_extra="[$(echo ${t_extra:-} | tr ' ' ',')]"  # the sets beside the first, as a YAML list
    pb=(); ${progress} || pb=(--noprogressbar)
    out="${tok_exp}/tts"
    st=(--input "config=${tts_yaml}" --option "tts_args=${tts_args}" --input "model=${model_dir}"
        --input "lm=${lang_dir}/judge_lm.arpa" --option "unseen=${t_unseen}")
    for dset in ${t_sets} ${t_valid} ${t_test} ${t_unseen}; do  # every set's codes and dump: in the stamp
        ensure_codes "${model_dir}" "${dset}" "${tok_exp}/codes/${dset}"
        st+=(--input "codes_${dset}=${tok_exp}/codes/${dset}" --dump "${dset}=${dumpdir}/${dset}")
    done
    if is_done "${out}/.done" "${st[@]}" --what "${out}"; then
        log "Stage 16: AR-TTS: ${out} already done, skipping"
    else
        begin_work "${out}" "${st[@]}"
        log "Stage 16: AR-TTS on $(echo ${t_sets} | tr ' ' '+')/${t_valid}, synthesis of ${t_test} (prompts: same speaker${t_unseen:+, ${t_unseen}}) -> ${out}"
        # shellcheck disable=SC2086
        set_launcher "${ngpu}"
        "${launcher[@]}" "${toolkit_root}/recipes/tts/train.py" "${tts_yaml}" --model_dir "${model_dir}" \
            --codes_root "${tok_exp}/codes" --dump_dir "${dumpdir}" --train_set "${t_train}" --extra_train_sets "${t_extra}" \
            --valid_set "${t_valid}" --test_set "${t_test}" --unseen_set "${t_unseen:-null}" --judge_lm "${lang_dir}/judge_lm.arpa" \
            --exp_dir "${out}" ${pb[@]+"${pb[@]}"} ${tts_args} > "${out}.log" 2>&1 \
            || { log "ERROR: AR-TTS failed; see ${out}.log"; tail -n 20 "${out}.log" >&2; exit 1; }
        grep "AR-TTS .* steps: WER" "${out}.log" | while read -r line; do log "  ${line}"; done
        mark_done "${out}/.done" "${st[@]}"
    fi
fi

log "Finished stages ${stage}..${stop_stage} in ${SECONDS} s"
