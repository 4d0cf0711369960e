#!/usr/bin/env bash
# fuzz_run.sh BUILD_DIR CORPUS_ROOT: a bounded libFuzzer run of every target
# of tests/fuzz (clang builds only). FUZZ_SECONDS per target (default 30).
# New inputs found go to a scratch copy of the corpus (the tree's corpus is
# not grown by ./test); a crash is kept as CORPUS_ROOT/TARGET/crash-* so it
# is replayed by every later ./test, and the run fails.
set -u
build=$1 corpus_root=$2
seconds=${FUZZ_SECONDS:-30}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
status=0
for target in meta patch frame apply http integrity; do
  bin=$build/fuzz_$target
  [ -x "$bin" ] || { echo "fuzz_run: $bin missing"; exit 1; }
  mkdir -p "$scratch/$target" "$scratch/art-$target"
  cp "$corpus_root/$target"/* "$scratch/$target/"
  case $target in
    patch) maxlen=120000 ;; apply | frame) maxlen=70000 ;; *) maxlen=8192 ;;
  esac
  echo "fuzz_run: $target for ${seconds}s"
  mkdir -p "$scratch/dirs"
  FUZZ_SCRATCH="$scratch/dirs" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
  "$bin" -max_total_time="$seconds" -max_len=$maxlen -timeout=30 \
    -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$scratch/art-$target/" "$scratch/$target" \
    >"$scratch/$target.log" 2>&1
  rc=$?
  grep -E '^(stat::number_of_executed_units|stat::new_units_added|stat::peak_rss_mb)' \
    "$scratch/$target.log" | sed "s/^/fuzz_run: $target /"
  if [ $rc -ne 0 ]; then
    status=1
    echo "fuzz_run: $target FAILED (rc $rc); log tail:"
    tail -40 "$scratch/$target.log"
    for a in "$scratch/art-$target"/*; do
      [ -f "$a" ] || continue
      cp "$a" "$corpus_root/$target/" && echo "fuzz_run: kept $corpus_root/$target/$(basename "$a")"
    done
  fi
done
exit $status
