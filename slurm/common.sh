# shellcheck shell=bash
# Sourced by every job script in slurm/: strict mode, the checkout, the environment, a log header.
#
# Environment (set by the driver, or by you when you sbatch a job script yourself):
#   UN_REPO          the universal-neurons checkout (default: the directory sbatch was run from)
#   UN_ENV_ACTIVATE  a command that enters the Python environment, e.g. "source ~/venvs/un/bin/activate"
#                    (default: none; the job inherits the submitting shell's PATH)
# Jobs run in the directory sbatch was run from, so the artifact folders (token_datasets,
# correlation_results, ...) are relative to it unless DATASET_DIR, RESULTS_DIR, ... say otherwise.
set -euo pipefail
UN_REPO=${UN_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
if [ -n "${UN_ENV_ACTIVATE:-}" ]; then
  set +u  # activate scripts (venv, conda, modules) read unset variables
  eval "$UN_ENV_ACTIVATE"
  set -u
fi
export PYTHONPATH="$UN_REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# A job the grid sent to a GPU (UN_REQUIRE_CUDA=1) stops at once when torch sees no GPU, instead of
# running for days on the CPU.
if [ "${UN_REQUIRE_CUDA:-0}" = 1 ]; then
  python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' || {
    echo "error: this job asked for a GPU but torch sees none on $(hostname) (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset}," \
         "torch CUDA build: $(python -c 'import torch; print(torch.version.cuda)' 2>/dev/null))" >&2
    exit 2
  }
fi

# un_run CMD ARGS...: print what runs where, run it, print how long it took; its exit status is the job's.
un_run() {
  local start=$SECONDS rc=0
  echo "[$(date '+%F %T')] job ${SLURM_JOB_ID:-(no slurm)}${SLURM_ARRAY_TASK_ID:+ task $SLURM_ARRAY_TASK_ID} on $(hostname): $*"
  "$@" || rc=$?
  echo "[$(date '+%F %T')] exit $rc after $((SECONDS - start)) s"
  return "$rc"
}

# un_array_item "W0 W1 W2 ...": the word of the list at this array task's index (task 0 outside an array).
un_array_item() {
  local -a items
  read -ra items <<< "$1"
  local i=${SLURM_ARRAY_TASK_ID:-0}
  if [ "$i" -ge "${#items[@]}" ]; then
    echo "array task $i but only ${#items[@]} item(s): '$1'" >&2
    return 2
  fi
  echo "${items[$i]}"
}

# un_arg FLAG ARGS...: the value following FLAG in ARGS (empty if absent).
un_arg() {
  local flag=$1; shift
  while [ $# -gt 1 ]; do
    if [ "$1" = "$flag" ]; then echo "$2"; return; fi
    shift
  done
}

# un_layer_rows CSV LAYER: how many rows of CSV (a neuron dataframe: a 'layer' column) are in LAYER.
un_layer_rows() {
  awk -F, -v l="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "layer") c = i; next }
                     c && $c == l { n++ } END { print n + 0 }' "$1"
}
