#!/usr/bin/env bash
# fsync_mutants.sh: remove the engine's fsyncs one at a time (in the I/O
# simulator, not in the source) and check that the power-loss suite notices.
#
#   tests/core/fsync_mutants.sh [BUILD_DIR] [RUNS_PER_MUTANT] [WORKLOAD_REGEX]
#
# BUILD_DIR defaults to ./build; RUNS_PER_MUTANT (default 1500) power cuts
# are run against the one workload each mutant belongs to; WORKLOAD_REGEX
# (an extended regular expression, default: all) picks workloads.
#
# For every workload, the power-loss suite lists the fsync calls its
# recorded run makes, by ordinal (LOOM_POWERLOSS_LIST_FSYNCS=1). For each
# (workload, ordinal) the suite runs again with LOOM_IOSIM_DROP_FSYNC=ordinal:
# the simulator turns that one fsync into a no-op (nothing becomes durable),
# exactly as if the call were deleted from the engine. A mutant is *caught*
# when the suite then fails (an acknowledged commit lost, a torn image, a
# recovery error...), and *survives* when every run still passes: that
# fsync is either not needed for correctness, or the suite cannot see it.
#
# The suite's other knobs pass through the environment (for instance
# LOOM_POWERLOSS_DIR_RANDOM=0). A workload whose unmutated runs already fail
# has its mutants skipped, since they could not tell anything.
#
# Output: one line per mutant, then the survivors. Exit status: 0 when
# every mutant is caught, 1 when some survived or were skipped, 2 on a
# usage error.
set -uo pipefail

build=${1:-build}
runs=${2:-1500}
only=${3:-.}
exe="$build/tests/core/powerloss_test"
if [ ! -x "$exe" ]; then
  echo "fsync_mutants.sh: $exe not found (build first: ninja -C $build)" >&2
  exit 2
fi

list=$(LOOM_POWERLOSS_LIST_FSYNCS=1 LOOM_POWERLOSS_RUNS=0 "$exe" 2>/dev/null |
       grep '^fsync ' | awk -v re="$only" '$3 ~ re')
if [ -z "$list" ]; then
  echo "fsync_mutants.sh: the suite listed no fsync" >&2
  exit 2
fi
workloads=$(awk '{print $3}' <<<"$list" | sort -u | wc -l)
all_workloads=$(LOOM_POWERLOSS_LIST_FSYNCS=1 LOOM_POWERLOSS_RUNS=0 "$exe" 2>/dev/null |
                awk '/^fsync /{print $3}' | sort -u | wc -l)
# Run seeds pick among all workloads, then the suite keeps one workload's
# runs: scale by the number of workloads so that one gets about $runs.
total_runs=$((runs * all_workloads))

# A mutant means something only against a workload whose unmutated runs
# pass: check each baseline first.
declare -A baseline
for w in $(awk '{print $3}' <<<"$list" | sort -u); do
  if LOOM_POWERLOSS_WORKLOAD=$w LOOM_POWERLOSS_RUNS=$total_runs "$exe" \
     >/dev/null 2>&1; then
    baseline[$w]=pass
  else
    baseline[$w]=fail
    echo "fsync_mutants.sh: $w fails without any mutation: its mutants are skipped" >&2
  fi
done

caught=0
survived=0
skipped=0
survivors=()
printf '%-28s %7s %5s  %-32s %s\n' workload ordinal op path result
while read -r _ ordinal workload _ op path; do
  if [ "${baseline[$workload]}" != pass ]; then
    result="skipped (baseline fails)"
    skipped=$((skipped + 1))
  elif LOOM_IOSIM_DROP_FSYNC=$ordinal LOOM_POWERLOSS_WORKLOAD=$workload \
     LOOM_POWERLOSS_RUNS=$total_runs "$exe" >/dev/null 2>&1; then
    result=SURVIVED
    survived=$((survived + 1))
    survivors+=("$workload fsync #$ordinal (op $op, $path)")
  else
    result=caught
    caught=$((caught + 1))
  fi
  printf '%-28s %7s %5s  %-32s %s\n' "$workload" "$ordinal" "$op" "$path" "$result"
done <<<"$list"

echo
echo "fsync_mutants.sh: $((caught + survived + skipped)) mutants over $workloads workloads: $caught caught, $survived survived, $skipped skipped"
for s in "${survivors[@]+"${survivors[@]}"}"; do
  echo "  survived: $s"
done
[ "$survived" -eq 0 ] && [ "$skipped" -eq 0 ]
