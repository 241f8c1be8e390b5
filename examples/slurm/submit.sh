#!/usr/bin/env bash
# Submit a sharded hallurun benchmark to Slurm: a job array of SHARDS tasks (shard.sbatch, one node each), then
# one merge + eval (merge.sbatch) that starts when every shard task has ended. Edit the variables below; every
# other file reads them from the environment this script passes on.
set -euo pipefail

# ---- edit here ------------------------------------------------------------------------------------------------
RUN=$PWD/runs/llama8b-precisewikiqa  # the run folder, on a filesystem every node mounts (docs/scaling.md)
TASK=precisewikiqa
MODEL=meta-llama/Llama-3.1-8B-Instruct
SHARDS=8                             # array tasks 0..SHARDS-1, one shard each
MAX_RESTARTS=5                       # requeues a shard may use (SLURM_RESTART_COUNT counts them all)
VENV=${VENV:-}                       # a virtual environment with hallurun and vLLM, if they are not on PATH
JUDGE=${JUDGE:-}                     # empty: the heuristic judge; or a judge model for `hallurun eval --judge`
# ---------------------------------------------------------------------------------------------------------------

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export RUN TASK MODEL SHARDS MAX_RESTARTS VENV JUDGE

# --parsable prints "jobid" or "jobid;cluster".
shards=$(sbatch --parsable --array="0-$((SHARDS - 1))" --export=ALL "$here/shard.sbatch")
shards=${shards%%;*}

# afterany, not afterok. Neither is released by a task this script requeues (a requeued task is pending again,
# never "ended"), but afterok fails for good the moment any task ends other than with exit 0 (Slurm: "the
# dependent job will never be run, even if the preceding job is requeued and has a different termination state
# in a subsequent execution"), and the merge then sits in the queue as DependencyNeverSatisfied with nothing
# said about which shard is missing. afterany runs the merge once every task has ended, and `hallurun merge`
# checks the shards itself: it refuses (exit 2) with one line per missing or unfinished shard and the command
# that finishes it. After finishing those, run merge.sbatch again (sbatch --export=ALL,RUN=... merge.sbatch).
merge=$(sbatch --parsable --dependency="afterany:$shards" --export=ALL "$here/merge.sbatch")
merge=${merge%%;*}

echo "shards: job array $shards (tasks 0-$((SHARDS - 1)))  merge: job $merge  run folder: $RUN"
echo "watch:  squeue -j $shards,$merge    progress: hallurun status $RUN"
