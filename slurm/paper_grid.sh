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
#   FAMILY     stanford-gpt2-small | stanford-gpt2-medium | pythia-160m | toy | toy-tiny
#   --dry-run  print the sbatch commands (as a shell script) instead of submitting
#
# Seed a is compared with every other seed (pythia-160m with pythia-160m-seed1..3), with and without
# the rotation baseline in one pass. Work whose final artifacts exist is not submitted again (a job
# whose inputs are being recomputed is); correlation shards whose statistics exist are skipped by
# correlations_fast.py itself. Jobs run in the current directory: artifacts go to DATASET_DIR,
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
#   UN_N_SEEDS         use seeds a.. only up to this many (default: all: 5, Pythia 4)
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

# Where the final artifacts are (as universal_neurons/paths.py; tests/test_slurm.py checks they agree)
dataset_root=${DATASET_DIR:-token_datasets}/$dfamily
results_root=${RESULTS_DIR:-correlation_results}
summary_root=${SUMMARY_DIR:-summary_data}
dataframe_root=${DATAFRAME_DIR:-dataframes}
explanation_root=${EXPLANATION_DIR:-${RESULTS_DIR:-results}/explanations}
intervention_root=${INTERVENTION_DIR:-intervention_results}
universal_csv=$dataframe_root/interpretable_neurons/$model/universal.csv
explain_csv=${UN_EXPLAIN_NEURONS:-$universal_csv}
full_matrix=0
[[ " ${UN_CORR_ARGS:-} " != *" --save_full_correlation_matrix "* ]] || full_matrix=1

corr_done() {  # corr_done OTHER: both baselines' summaries of (model, OTHER) exist
  local b f
  for b in none rotation; do
    for f in correlation_summary.pt correlation_summary_T.pt; do
      [ -f "$results_root/$model+$1/$corr_ds/pearson.$b/$f" ] || return 1
    done
    [ "$full_matrix" = 0 ] || [ -f "$results_root/$model+$1/$corr_ds/pearson.$b/correlation.pt" ] || return 1
  done
}
weights_done() {
  local f
  for f in neuron_stats.csv k_comps.pt q_comps.pt v_comps.pt o_comps.pt vocab_comps.pt neuron_comps.pt; do
    [ -f "$summary_root/$model/weights/$f" ] || return 1
  done
}
summary_done() {  # summary_done DATASET
  local f
  for f in neuron_bin_counts.pt neuron_bin_edges.pt neuron_max_activating_index.pt neuron_max_activating_value.pt; do
    [ -f "$summary_root/$model/activations/$1/$f" ] || return 1
  done
}
explain_done() {  # explain_done LAYER: explained, or the neurons to explain include none of LAYER
  [ -f "$explanation_root/$model/$explain_ds/token_feature/layer_$1/variance_reduction.csv" ] ||
    { [ -f "$explain_csv" ] && [ "$(un_layer_rows "$explain_csv" "$1")" -eq 0 ]; }
}
intervention_dir() {  # intervention_dir NEURON_SUBSET: the subset's folder (11.3030,11.2859 -> 11.3030_11.2859)
  echo "$intervention_root/$model/$intervention_ds/${1//,/_}"
}
intervention_done() {  # intervention_done NEURON_SUBSET VALUE: the run of VALUE has finished
  local v=$2
  [[ $v == *[.eE]* ]] || v=$v.0   # the folder name has Python's str(float(value)): 1 -> 1.0
  [ -f "$(intervention_dir "$1")/fixed_activation_$v/meta.json" ]
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

# 1. Zoo and token datasets (toy families: trained and built here; the paper's: expected to exist)
zoo_job=""
if [ "${#untrained[@]}" -gt 0 ]; then
  submit zoo_job zoo "" 1 "" zoo.sbatch --preset "$preset" --n_seeds "${#models[@]}"
fi
missing_ds=()
for ds in "$corr_ds" "${summary_list[@]}" "$explain_ds" "$intervention_ds"; do
  [ -d "$dataset_root/$ds" ] || [[ " ${missing_ds[*]} " == *" $ds "* ]] || missing_ds+=("$ds")
done
data_job=""
if [ "${#missing_ds[@]}" -gt 0 ]; then
  # shellcheck disable=SC2206
  extra=(${UN_DATASET_ARGS:-})
  if [ -n "$preset" ]; then
    submit data_job dataset "$zoo_job" 0 "" make_dataset.sbatch --model "$model" --hf_dataset python-stdlib \
      --ctx_len "$ctx" --n_seq "$n_seq" --mix_tokens "$mix" "${extra[@]}"
  elif [ "${UN_MAKE_DATASET:-0}" = 1 ]; then
    submit data_job dataset "" 0 "" make_dataset.sbatch --model "$model" --hf_dataset EleutherAI/pile \
      --ctx_len 512 --mix_tokens 10m 100m "${extra[@]}"
  elif [ "$dry_run" = 1 ]; then
    note "missing token datasets under $dataset_root: ${missing_ds[*]}"
  else
    echo "missing token datasets under $dataset_root: ${missing_ds[*]}" >&2
    echo "make them first (needs the hub), e.g. sbatch slurm/make_dataset.sbatch --model $model" \
         "--hf_dataset EleutherAI/pile --ctx_len 512 --mix_tokens 10m 100m, or rerun with UN_MAKE_DATASET=1" >&2
    exit 2
  fi
fi
input_jobs=$(join_ids "$zoo_job" "$data_job")

# 2. Correlations: shard arrays, each followed by its merge
# shellcheck disable=SC2206
corr_extra=(${UN_CORR_ARGS:-})
todo=()
for other in "${others[@]}"; do corr_done "$other" || todo+=("$other"); done
if [ "$pairs_per_pass" = all ]; then passes=("${todo[*]}"); else passes=("${todo[@]}"); fi
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
[ "${#todo[@]}" -gt 0 ] || note "correlations of $model with ${others[*]} on $corr_ds: done"

# 3. Weight summaries
weights_job=""
# shellcheck disable=SC2206
weights_extra=(${UN_WEIGHTS_ARGS:-})
if weights_done; then
  note "weight summaries of $model: done"
else
  submit weights_job weights "$zoo_job" 1 "" weights.sbatch --model "$model" "${weights_extra[@]}"
fi

# 4. Activation summaries: an array over the datasets not summarised yet (task i = dataset i)
summary_job=""
todo=()
for i in "${!summary_list[@]}"; do summary_done "${summary_list[$i]}" || todo+=("$i"); done
if [ "${#todo[@]}" -gt 0 ]; then
  # shellcheck disable=SC2206
  summary_extra=(${UN_SUMMARY_ARGS:-})
  submit summary_job summary "$input_jobs" 1 "$(ranges "${todo[@]}")" summary.sbatch "${summary_list[*]}" \
    --model "$model" "${summary_extra[@]}"
else
  note "activation summaries of $model: done"
fi

# 5. The neuron dataframe, after everything it reads
df_deps=$(join_ids "${merge_jobs[@]}" "$weights_job" "$summary_job")
df_job=""
if [ -n "$df_deps" ] || [ ! -f "$dataframe_root/neuron_dfs/$model.csv" ] || [ ! -f "$universal_csv" ]; then
  submit df_job neuron-df "$df_deps" 0 "" neuron_df.sbatch --model "$model" --others "${others[@]}" \
    --dataset "$corr_ds" --activation_datasets "${summary_list[@]}"
else
  note "neuron dataframe of $model: done"
fi

# 6. Explanations of the universal neurons: an array over layers (task i = layer i)
todo=()
for ((l = 0; l < n_layers; l++)); do
  [ -z "$df_job" ] && explain_done "$l" || todo+=("$l")
done
if [ "${#todo[@]}" -gt 0 ]; then
  # shellcheck disable=SC2206
  explain_extra=(${UN_EXPLAIN_ARGS:-})
  submit explain_job explain "$df_job" 1 "$(ranges "${todo[@]}")" explain.sbatch --model "$model" \
    --dataset "$explain_ds" --neuron_df_path "$explain_csv" "${explain_extra[@]}"
else
  note "explanations of $model on $explain_ds: done"
fi

# 7. Entropy interventions: per neuron subset, an array over the values (task i = value i), then
#    one job that writes the summary CSV over all values (and runs anything an array task left)
if [ "$neurons" != none ]; then
  # shellcheck disable=SC2206
  intervention_extra=(${UN_INTERVENTION_ARGS-$intervention_args})
  for subset in $neurons; do
    resolved=$subset
    if [ "$subset" = auto ] && [ -z "$df_job" ]; then
      resolved=$(python "$UN_REPO/slurm/entropy_neuron.py" "$model")
    fi
    todo=()
    for i in "${!value_list[@]}"; do
      { [ "$resolved" != auto ] && [ -z "$df_job" ] && intervention_done "$resolved" "${value_list[$i]}"; } || todo+=("$i")
    done
    args=("${value_list[*]}" --model "$model" --token_dataset "$intervention_ds" --neuron_subset "$resolved"
          --intervention_type fixed_activation "${intervention_extra[@]}")
    values_job=""
    if [ "${#todo[@]}" -gt 0 ]; then
      submit values_job intervention "$df_job" 1 "$(ranges "${todo[@]}")" intervention.sbatch "${args[@]}"
    fi
    if [ -n "$values_job" ] || [ ! -f "$(intervention_dir "$resolved")/summary_fixed_activation.csv" ]; then
      submit collect_job intervention-summary "$(join_ids "$values_job" "$df_job")" 1 "" intervention.sbatch "${args[@]}"
    else
      note "interventions on $model $resolved: done"
    fi
  done
fi

if [ "$dry_run" = 1 ]; then
  echo "# $n_jobs job(s)"
else
  echo "$submitted job(s) submitted for $family ($model vs ${others[*]}); logs in $log_dir/"
fi
