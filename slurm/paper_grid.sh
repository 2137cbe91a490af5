#!/usr/bin/env bash
# Submit the paper's experiment grid for one model family as dependent Slurm jobs:
#
#   (toy families: zoo -> token datasets, before everything else)
#   correlation shards (array) -> merge ------------+
#   activation summaries (array over datasets) -----+-> neuron dataframe -+-> explanations (array over layers)
#   weight summaries -------------------------------+                     +-> interventions (array over values)
#                                                                               -> intervention summary
#
# usage: slurm/paper_grid.sh FAMILY [--dry-run]
#   FAMILY     stanford-gpt2-small | stanford-gpt2-medium | pythia-160m | pythia-{14m,31m,70m,410m} | toy | toy-tiny
#   --dry-run  print the sbatch commands (as a shell script) instead of submitting
#
# Seed a is compared with every other seed (pythia-160m with pythia-160m-seed1..3), with and without
# the rotation baseline in one pass. What to submit is asked of the stages themselves
# (`universal-neurons done`, one Python process per round): a run finished with these settings is not
# submitted again, a job whose inputs are being recomputed is, and a result made with other settings
# stops the grid with the stages' messages (UN_OVERWRITE=1 replaces them). Correlation shards whose
# statistics exist are skipped by correlations_fast.py itself. Jobs run in the current directory: artifacts go to DATASET_DIR,
# RESULTS_DIR, SUMMARY_DIR, DATAFRAME_DIR, INTERVENTION_DIR, EXPLANATION_DIR, UNIVERSAL_NEURONS_ZOO
# when set (they are passed on to the jobs), else to the default folders under it.
#
# Settings (environment variables, all optional):
#   UN_ENV_ACTIVATE    command that enters the Python environment in each job ("source ~/un/bin/activate")
#   UN_REPO            the checkout (default: the one this script is in)
#   UN_PARTITION       sbatch --partition
#   UN_GPU_OPTS        sbatch options of the jobs that use a GPU (default --gres=gpu:1 for the paper's
#                      families, none for the toy ones; set it empty to run on CPUs)
#   UN_TIME, UN_MEM    sbatch --time, --mem of every job
#   UN_SBATCH_OPTS     any other sbatch options of every job (e.g. "--account=lab --cpus-per-task=8")
#   UN_LOG_DIR         job logs (default slurm_logs)
#   UN_N_SEEDS         use seeds a.. only up to this many (default: all: 5; pythia-160m 4, the paper's;
#                      other PolyPythias sizes 10)
#   UN_SHARDS          token shards of the correlation pass (default 8, toy 2)
#   UN_PAIRS_PER_PASS  all: one pass computes a against every other seed; 1: one pass per pair
#                      (default 1 for the paper's families, whose statistics are large; all for toy)
#   UN_N_LAYERS        layers (array of the explanations; default from the family)
#   UN_CORR_DATASET, UN_EXPLAIN_DATASET, UN_INTERVENTION_DATASET: token datasets (one name);
#   UN_SUMMARY_DATASETS: the datasets summarised (space-separated)
#   UN_EXPLAIN_NEURONS CSV (layer, neuron columns) of the neurons to explain (default: the universal
#                      ones, dataframes/interpretable_neurons/<model>/universal.csv)
#   UN_INTERVENTION_NEURONS  neuron subsets to fix, space-separated (l.n or l.n,l.n; "auto": the
#                      last layer's largest-norm neuron in the dataframe); "none" = no interventions
#   UN_INTERVENTION_VALUES   fixed activation values (default "-0.17 0 1 2 3 4 5 6", as the paper)
#   UN_CORR_ARGS, UN_WEIGHTS_ARGS, UN_SUMMARY_ARGS, UN_EXPLAIN_ARGS, UN_INTERVENTION_ARGS,
#   UN_DATASET_ARGS    extra flags of those scripts (e.g. UN_CORR_ARGS="--batch_size 64 --max_memory_gb 60";
#                      UN_INTERVENTION_ARGS defaults to "--n_random_baselines 20" for the paper's families)
#   UN_OVERWRITE=1     pass --overwrite to every job: results made with other settings are replaced
#   UN_MAKE_DATASET=1  for the paper's families, also submit make_dataset.py (needs the hub) when a
#                      dataset is missing (default: stop with the command to run)
#   Toy families: UN_TOY_N_SEQ (rows per subset, toy-tiny 500) and UN_TOY_MIX (mix size, toy 1m, toy-tiny 16k).
set -euo pipefail

usage() { sed -n '/^# usage:/,/^#   --dry-run/p' "$0" >&2; exit 2; }
family=""
dry_run=0
for arg in "$@"; do
  case $arg in
    --dry-run) dry_run=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    -*) echo "unknown option $arg" >&2; usage ;;
    *) [ -z "$family" ] || usage; family=$arg ;;
  esac
done
[ -n "$family" ] || usage

export UN_REPO=${UN_REPO:-$(cd "$(dirname "$0")/.." && pwd)}
# shellcheck source=slurm/common.sh
source "$UN_REPO/slurm/common.sh"   # the same environment as the jobs, for the checks below
[ -z "${UN_ENV_ACTIVATE:-}" ] || export UN_ENV_ACTIVATE

# The family's models, datasets and defaults -----------------------------------------------------
PILE_SUBSETS="arxiv bookcorpus2 books3 dm_mathematics enron_emails europarl freelaw github gutenberg
  hackernews nih_exporter opensubtitles openwebtext2 philpapers pile_cc pubmed_abstracts pubmed_central
  stackexchange ubuntu_irc uspto_backgrounds wikipedia youtubesubtitles"
preset=""
case $family in
  stanford-gpt2-small|stanford-gpt2-medium)
    models=("$family"-{a,b,c,d,e}); dfamily=gpt2
    [ "$family" = stanford-gpt2-small ] && n_layers=12 || n_layers=24
    [ "$family" = stanford-gpt2-small ] && neurons="11.3030 11.2859" || neurons="23.945" ;;
  pythia-160m)
    models=(pythia-160m pythia-160m-seed{1,2,3}); dfamily=pythia; n_layers=12; neurons=auto ;;
  pythia-14m|pythia-31m|pythia-70m|pythia-410m)  # PolyPythias: seed 0 and seed1..9 (UN_N_SEEDS to cap)
    models=("$family" "$family"-seed{1..9}); dfamily=pythia; neurons=auto
    [ "$family" = pythia-410m ] && n_layers=24 || n_layers=6 ;;
  toy) preset=default; models=(toy-gpt2-{a,b,c,d,e}); dfamily=toy; neurons=auto ;;
  toy-tiny) preset=tiny; models=(toy-gpt2-tiny-{a,b,c,d,e}); dfamily=toy; neurons=auto ;;
  *) echo "unknown family '$family'" >&2; usage ;;
esac
models=("${models[@]:0:${UN_N_SEEDS:-${#models[@]}}}")
if [ "${#models[@]}" -lt 2 ]; then echo "UN_N_SEEDS must be at least 2" >&2; exit 2; fi
model=${models[0]}
others=("${models[@]:1}")
untrained=()
if [ -n "$preset" ]; then
  # context length and layers from the zoo preset; zoo models not trained yet
  read -r ctx n_layers untrained_list < <(python -c '
import sys
from universal_neurons import zoo
p = zoo.PRESETS[sys.argv[1]]
print(p.ctx_len, p.n_layer, *[m for m in sys.argv[2:] if not zoo.is_trained(m)])' "$preset" "${models[@]}") \
    || { echo "cannot read the zoo preset: is the environment set up (UN_ENV_ACTIVATE)?" >&2; exit 2; }
  read -ra untrained <<< "${untrained_list:-}"
  if [ "$family" = toy ]; then mix=${UN_TOY_MIX:-1m}; n_seq=${UN_TOY_N_SEQ:--1}; else mix=${UN_TOY_MIX:-16k}; n_seq=${UN_TOY_N_SEQ:-500}; fi
  corr_ds=${UN_CORR_DATASET:-python-stdlib.all-$mix.$ctx}
  summary_ds=${UN_SUMMARY_DATASETS:-python-stdlib.prose.$ctx python-stdlib.code.$ctx python-stdlib.tests.$ctx}
  explain_ds=${UN_EXPLAIN_DATASET:-$corr_ds}
  shards=${UN_SHARDS:-2}; pairs_per_pass=${UN_PAIRS_PER_PASS:-all}; gpu_opts=${UN_GPU_OPTS-}
  intervention_args=""
else
  corr_ds=${UN_CORR_DATASET:-pile.test.all-100m.512}
  summary_ds=${UN_SUMMARY_DATASETS:-$(for s in $PILE_SUBSETS; do printf 'pile.test.%s.512 ' "$s"; done)}
  explain_ds=${UN_EXPLAIN_DATASET:-pile.test.all-10m.512}
  shards=${UN_SHARDS:-8}; pairs_per_pass=${UN_PAIRS_PER_PASS:-1}; gpu_opts=${UN_GPU_OPTS---gres=gpu:1}
  intervention_args="--n_random_baselines 20"   # the paper compared with 20 random last-layer neurons
fi
n_layers=${UN_N_LAYERS:-$n_layers}
intervention_ds=${UN_INTERVENTION_DATASET:-$explain_ds}
neurons=${UN_INTERVENTION_NEURONS:-$neurons}
values=${UN_INTERVENTION_VALUES:--0.17 0 1 2 3 4 5 6}
read -ra summary_list <<< "$summary_ds"
read -ra value_list <<< "$values"
log_dir=${UN_LOG_DIR:-slurm_logs}

# The token datasets' folder (paths.token_dataset_path; tests/test_slurm.py checks they agree) and the
# neurons to explain (the neuron dataframe's universal.csv, paths.interpretable_neurons_path)
dataset_root=${DATASET_DIR:-token_datasets}/$dfamily
universal_csv=${DATAFRAME_DIR:-dataframes}/interpretable_neurons/$model/universal.csv
explain_csv=${UN_EXPLAIN_NEURONS:-$universal_csv}

# What is done: the stages answer (universal-neurons done reads their command lines, decides with the
# records of runs.py and neither computes nor writes). ask KEY SCRIPT ARGS... queues a question;
# answer_all asks them in one process and stops the grid on a stale result or a bad flag.
overwrite=()
[ "${UN_OVERWRITE:-0}" = 0 ] || overwrite=(--overwrite)
declare -A answer=()
ask_keys=()
ask_lines=()
ask() {
  local key=$1 line
  shift
  printf -v line '%s\x1f' "$@"   # words joined by the unit separator: any character survives
  ask_keys+=("$key")
  ask_lines+=("$line")
}
answer_all() {
  [ "${#ask_lines[@]}" -gt 0 ] || return 0
  local text i bad=()
  local -a lines
  text=$(printf '%s\n' "${ask_lines[@]}" | python -m universal_neurons.cli done) \
    || { echo "could not ask the stages what is done (python -m universal_neurons.cli done)" >&2; exit 2; }
  mapfile -t lines <<< "$text"
  [ "${#lines[@]}" -eq "${#ask_lines[@]}" ] || { echo "universal-neurons done: unexpected answer" >&2; exit 2; }
  for i in "${!lines[@]}"; do
    answer[${ask_keys[$i]}]=${lines[$i]}
    case ${lines[$i]} in stale*|error*) bad+=("${ask_keys[$i]}: ${lines[$i]}") ;; esac
  done
  ask_keys=()
  ask_lines=()
  if [ "${#bad[@]}" -gt 0 ]; then
    printf '%s\n' "${bad[@]}" >&2
    echo "nothing submitted: rerun with UN_OVERWRITE=1 to replace results made with other settings" >&2
    exit 2
  fi
}
is_done() { [[ ${answer[$1]:-todo} == done* ]]; }
explain_empty() {  # explain_empty LAYER: the neurons to explain include none of LAYER
  [ -f "$explain_csv" ] && [ "$(un_layer_rows "$explain_csv" "$1")" -eq 0 ]
}

# Submission ------------------------------------------------------------------------------------
n_jobs=0
submitted=0
if [ "$dry_run" = 1 ]; then
  echo "#!/bin/bash"
  echo "# slurm/paper_grid.sh $family: the jobs it would submit now"
  echo "set -e"
fi

# submit VAR NAME DEPS GPU ARRAY SCRIPT ARGS...: sbatch slurm/SCRIPT ARGS after the jobs DEPS
# (colon-separated ids, may be empty), with the GPU options if GPU=1, as an array if ARRAY is
# non-empty; the job id goes to VAR. With --dry-run, print the command instead.
submit() {
  local var=$1 name=$2 deps=$3 gpu=$4 array=$5 script=$6 id
  shift 6
  local opts=(--parsable --job-name="un-$name")
  if [ -n "$array" ]; then
    opts+=(--array="$array" --output="$log_dir/%x-%A_%a.out")
  else
    opts+=(--output="$log_dir/%x-%j.out")
  fi
  [ -z "${UN_PARTITION:-}" ] || opts+=(--partition="$UN_PARTITION")
  [ -z "${UN_TIME:-}" ] || opts+=(--time="$UN_TIME")
  [ -z "${UN_MEM:-}" ] || opts+=(--mem="$UN_MEM")
  # shellcheck disable=SC2206  # option strings are split into words on purpose
  [ "$gpu" = 0 ] || opts+=($gpu_opts)
  # a job given a GPU fails fast without one (slurm/common.sh)
  [ "$gpu" = 0 ] || [ -z "$gpu_opts" ] || opts+=(--export=ALL,UN_REQUIRE_CUDA=1)
  # shellcheck disable=SC2206
  opts+=(${UN_SBATCH_OPTS:-})
  n_jobs=$((n_jobs + 1))
  if [ "$dry_run" = 1 ]; then
    id="\$JOB$n_jobs"
    # shellcheck disable=SC2016  # the $(...) and ${...} are for the printed script
    printf 'JOB%s=$(sbatch' "$n_jobs"
    printf ' %q' "${opts[@]}"
    # a failed job cancels the jobs that wait for it instead of leaving them pending forever
    [ -z "$deps" ] || printf ' --kill-on-invalid-dep=yes --dependency=afterok:%s' "$deps"
    printf ' %q' "$UN_REPO/slurm/$script" "$@"
    # shellcheck disable=SC2016
    printf '); JOB%s=${JOB%s%%%%;*}  # %s\n' "$n_jobs" "$n_jobs" "$name"
  else
    mkdir -p "$log_dir"
    [ -z "$deps" ] || opts+=(--kill-on-invalid-dep=yes --dependency="afterok:$deps")
    id=$(sbatch "${opts[@]}" "$UN_REPO/slurm/$script" "$@")
    id=${id%%;*}
    submitted=$((submitted + 1))
    echo "submitted $id un-$name${array:+ array $array}${deps:+ after $deps}"
  fi
  printf -v "$var" '%s' "$id"
}

join_ids() {  # join_ids ID...: the non-empty ids joined by ':'
  local out="" id
  for id in "$@"; do [ -z "$id" ] || out=${out:+$out:}$id; done
  echo "$out"
}
ranges() {  # ranges 0 1 2 5 7 8 -> 0-2,5,7-8 (an --array spec)
  local out="" start="" prev="" i
  for i in "$@" ""; do
    if [ -n "$prev" ] && [ "$i" = "$((prev + 1))" ]; then prev=$i; continue; fi
    [ -z "$start" ] || { [ "$start" = "$prev" ] && out+=",$start" || out+=",$start-$prev"; }
    start=$i; prev=$i
  done
  echo "${out#,}"
}
note() { if [ "$dry_run" = 1 ]; then echo "# $*"; else echo "$*"; fi; }

# Decisions: every question is asked before anything is submitted, so a stale result or a bad flag
# stops the grid with nothing submitted ------------------------------------------------------------
missing_ds=()
for ds in "$corr_ds" "${summary_list[@]}" "$explain_ds" "$intervention_ds"; do
  [ -d "$dataset_root/$ds" ] || [[ " ${missing_ds[*]} " == *" $ds "* ]] || missing_ds+=("$ds")
done
# shellcheck disable=SC2206
extra=(${UN_DATASET_ARGS:-})
toy_data=(--model "$model" --hf_dataset python-stdlib --ctx_len "${ctx:-}" --n_seq "${n_seq:-}" --mix_tokens "${mix:-}"
          "${extra[@]}" "${overwrite[@]}")
if [ -n "$preset" ] && [ "${#untrained[@]}" -eq 0 ]; then
  ask data make_dataset.py "${toy_data[@]}"   # made with these settings? (stale stops the grid)
  answer_all
fi
need_data=0
if [ "${#missing_ds[@]}" -gt 0 ] || { [ -n "$preset" ] && ! is_done data; }; then
  need_data=1
  if [ -z "$preset" ] && [ "${UN_MAKE_DATASET:-0}" != 1 ] && [ "$dry_run" != 1 ]; then
    echo "missing token datasets under $dataset_root: ${missing_ds[*]}" >&2
    echo "make them first (needs the hub), e.g. sbatch slurm/make_dataset.sbatch --model $model" \
         "--hf_dataset EleutherAI/pile --ctx_len 512 --mix_tokens 10m 100m, or rerun with UN_MAKE_DATASET=1" >&2
    exit 2
  fi
fi
inputs_stay=0
[ "${#untrained[@]}" -gt 0 ] || [ "$need_data" = 1 ] || inputs_stay=1

# shellcheck disable=SC2206
corr_extra=(${UN_CORR_ARGS:-} "${overwrite[@]}")
# shellcheck disable=SC2206
weights_extra=(${UN_WEIGHTS_ARGS:-} "${overwrite[@]}")
# shellcheck disable=SC2206
summary_extra=(${UN_SUMMARY_ARGS:-} "${overwrite[@]}")
df_args=(--model "$model" --others "${others[@]}" --dataset "$corr_ds" --activation_datasets "${summary_list[@]}"
         "${overwrite[@]}")
# Round 1: the stages whose inputs stay as they are (the others are redone)
[ "${#untrained[@]}" -gt 0 ] || ask weights weights.py --model "$model" "${weights_extra[@]}"
if [ "$inputs_stay" = 1 ]; then
  for other in "${others[@]}"; do
    ask "corr $other" correlations_fast.py --model_1_name "$model" --model_2_name "$other" --token_dataset "$corr_ds" \
      --baseline none rotation "${corr_extra[@]}"
  done
  for ds in "${summary_list[@]}"; do ask "summary $ds" summary.py --model "$model" --token_dataset "$ds" "${summary_extra[@]}"; done
  ask neuron-df neuron-df "${df_args[@]}"
fi
answer_all
corr_todo=()
for other in "${others[@]}"; do is_done "corr $other" || corr_todo+=("$other"); done
summary_todo=()
for i in "${!summary_list[@]}"; do is_done "summary ${summary_list[$i]}" || summary_todo+=("$i"); done
need_df=0
if [ "$inputs_stay" = 0 ] || [ "${#corr_todo[@]}" -gt 0 ] || [ "${#summary_todo[@]}" -gt 0 ] || ! is_done weights \
   || ! is_done neuron-df; then
  need_df=1
fi

# Round 2: what reads the neuron dataframe, when it stays as it is
# shellcheck disable=SC2206
explain_extra=(${UN_EXPLAIN_ARGS:-} "${overwrite[@]}")
explain_args=(--model "$model" --dataset "$explain_ds" --neuron_df_path "$explain_csv" "${explain_extra[@]}")
# shellcheck disable=SC2206
intervention_extra=(${UN_INTERVENTION_ARGS-$intervention_args} "${overwrite[@]}")
subsets=()
[ "$neurons" = none ] || read -ra subsets <<< "$neurons"
declare -A resolved=()
for subset in "${subsets[@]}"; do
  resolved[$subset]=$subset
  if [ "$subset" = auto ] && [ "$need_df" = 0 ]; then
    resolved[$subset]=$(python "$UN_REPO/slurm/entropy_neuron.py" "$model")
  fi
done
intervention_base() {  # intervention_base SUBSET: entropy_intervention.py's flags of SUBSET, without the values
  base=(--model "$model" --token_dataset "$intervention_ds" --neuron_subset "${resolved[$1]}"
        --intervention_type fixed_activation "${intervention_extra[@]}")
}
if [ "$need_df" = 0 ]; then
  for ((l = 0; l < n_layers; l++)); do
    explain_empty "$l" || ask "explain $l" explain.py "${explain_args[@]}" --layer "$l"
  done
  for subset in "${subsets[@]}"; do
    intervention_base "$subset"
    for v in "${value_list[@]}"; do
      ask "intervention $subset $v" entropy_intervention.py "${base[@]}" --no_summary --intervention_param "$v"
    done
    ask "intervention-summary $subset" entropy_intervention.py "${base[@]}" --intervention_param "${value_list[@]}"
  done
  answer_all
fi

# Submissions --------------------------------------------------------------------------------------

# 1. Zoo and token datasets (toy families: trained and built here; the paper's: expected to exist)
zoo_job=""
if [ "${#untrained[@]}" -gt 0 ]; then
  submit zoo_job zoo "" 1 "" zoo.sbatch --preset "$preset" --n_seeds "${#models[@]}"
fi
data_job=""
if [ "$need_data" = 1 ]; then
  if [ -n "$preset" ]; then
    submit data_job dataset "$zoo_job" 0 "" make_dataset.sbatch "${toy_data[@]}"
  elif [ "${UN_MAKE_DATASET:-0}" = 1 ]; then
    submit data_job dataset "" 0 "" make_dataset.sbatch --model "$model" --hf_dataset EleutherAI/pile \
      --ctx_len 512 --mix_tokens 10m 100m "${extra[@]}" "${overwrite[@]}"
  else
    note "missing token datasets under $dataset_root: ${missing_ds[*]}"
  fi
fi
input_jobs=$(join_ids "$zoo_job" "$data_job")

# 2. Correlations: shard arrays, each followed by its merge
if [ "$pairs_per_pass" = all ]; then passes=("${corr_todo[*]}"); else passes=("${corr_todo[@]}"); fi
merge_jobs=()
shard_job=""
for pass in "${passes[@]}"; do
  [ -n "$pass" ] || continue
  read -ra pass_models <<< "$pass"
  corr_args=(--model_1_name "$model" --model_2_name "${pass_models[@]}" --token_dataset "$corr_ds"
             --baseline none rotation --num_shards "$shards" "${corr_extra[@]}")
  submit shard_job corr "$input_jobs" 1 "0-$((shards - 1))" correlations.sbatch "${corr_args[@]}"
  submit merge_job merge "$shard_job" 1 "" correlations_merge.sbatch "${corr_args[@]}"
  merge_jobs+=("$merge_job")
done
[ "${#corr_todo[@]}" -gt 0 ] || note "correlations of $model with ${others[*]} on $corr_ds: done"

# 3. Weight summaries
weights_job=""
if is_done weights; then
  note "weight summaries of $model: done"
else
  submit weights_job weights "$zoo_job" 1 "" weights.sbatch --model "$model" "${weights_extra[@]}"
fi

# 4. Activation summaries: an array over the datasets not summarised yet (task i = dataset i)
summary_job=""
if [ "${#summary_todo[@]}" -gt 0 ]; then
  submit summary_job summary "$input_jobs" 1 "$(ranges "${summary_todo[@]}")" summary.sbatch "${summary_list[*]}" \
    --model "$model" "${summary_extra[@]}"
else
  note "activation summaries of $model: done"
fi

# 5. The neuron dataframe, after everything it reads
df_job=""
if [ "$need_df" = 1 ]; then
  submit df_job neuron-df "$(join_ids "${merge_jobs[@]}" "$weights_job" "$summary_job")" 0 "" neuron_df.sbatch \
    "${df_args[@]}"
else
  note "neuron dataframe of $model: done"
fi

# 6. Explanations of the universal neurons: an array over layers (task i = layer i)
todo=()
for ((l = 0; l < n_layers; l++)); do
  if [ "$need_df" = 1 ] || { ! explain_empty "$l" && ! is_done "explain $l"; }; then todo+=("$l"); fi
done
if [ "${#todo[@]}" -gt 0 ]; then
  submit explain_job explain "$df_job" 1 "$(ranges "${todo[@]}")" explain.sbatch "${explain_args[@]}"
else
  note "explanations of $model on $explain_ds: done"
fi

# 7. Entropy interventions: per neuron subset, an array over the values (task i = value i, runs only),
#    then one job that writes the summary CSV over all values (and runs anything an array task left)
for subset in "${subsets[@]}"; do
  todo=()
  for i in "${!value_list[@]}"; do
    { [ "$need_df" = 0 ] && is_done "intervention $subset ${value_list[$i]}"; } || todo+=("$i")
  done
  intervention_base "$subset"
  args=("${value_list[*]}" "${base[@]}")
  values_job=""
  if [ "${#todo[@]}" -gt 0 ]; then
    submit values_job intervention "$df_job" 1 "$(ranges "${todo[@]}")" intervention.sbatch "${args[@]}"
  fi
  if [ -n "$values_job" ] || ! is_done "intervention-summary $subset"; then
    submit collect_job intervention-summary "$(join_ids "$values_job" "$df_job")" 1 "" intervention.sbatch "${args[@]}"
  else
    note "interventions on $model ${resolved[$subset]}: done"
  fi
done

if [ "$dry_run" = 1 ]; then
  echo "# $n_jobs job(s)"
else
  echo "$submitted job(s) submitted for $family ($model vs ${others[*]}); logs in $log_dir/"
fi
