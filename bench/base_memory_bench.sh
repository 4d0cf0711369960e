#!/usr/bin/env bash
# base_memory_bench.sh LOOMSHIP [KEYS] [ROUNDS] [OTHER_LOOMSHIP]: what a
# base upload costs the archiving process in memory (issue 17;
# docs/BENCHMARKS.md section 14).
#
# The example's image is grown to KEYS keys (a page each: 65536 keys make
# a 1 GiB image), then `loomship primary --archive file:///ARC --saves 20`
# runs on it: its first upload is a base of the whole image. Its peak RSS
# (/usr/bin/time -f %M) and peak anonymous memory are set against the same
# run without --archive (the arena the example maps and touches), so the
# difference is the archive's: the base's buffers. Each round archives into a new, empty directory;
# with OTHER_LOOMSHIP (another build, e.g. main's) the two binaries
# alternate. Prints one line per run and the medians.
set -euo pipefail
loomship=$1
keys=${2:-65536}
rounds=${3:-3}
other=${4:-}
work=$(mktemp -d /tmp/loomship-basemem-XXXXXX)
trap 'rm -rf "$work"' EXIT
table=(--keys "$keys" --arena-pages $((keys + keys / 4 + 256)) --rate 100000)

"$loomship" primary --dir "$work/p" --saves $((keys / 8)) "${table[@]}" --pages 64 \
  > /dev/null 2>&1
echo "# image: $(($(stat -c %s "$work/p/image") >> 20)) MiB ($keys keys)"

# run NAME BINARY [ARCHIVE OPTIONS]: peak RSS (/usr/bin/time: every page
# mapped, a base's scratch file's included), peak anonymous memory
# (RssAnon of /proc/PID/status, sampled every 10 ms: what the kernel
# cannot take back but by swapping), both in MiB, and seconds.
run() {
  local name=$1 bin=$2; shift 2
  local t0 t1 kib tpid cpid="" anon=0 a
  t0=$(date +%s.%N)
  /usr/bin/time -f %M -o "$work/maxrss" "$bin" primary --dir "$work/p" \
    --saves 20 "${table[@]}" --pages 16 "$@" > /dev/null 2> "$work/err" &
  tpid=$!
  while kill -0 "$tpid" 2> /dev/null; do
    [ -z "$cpid" ] && cpid=$(pgrep -P "$tpid" || true)
    if [ -n "$cpid" ]; then
      a=$(awk '/^RssAnon:/ {print $2}' "/proc/$cpid/status" 2> /dev/null || true)
      if [ -n "$a" ] && [ "$a" -gt "$anon" ]; then anon=$a; fi
    fi
    sleep 0.01 # the sampling period, not a wait for anything
  done
  wait "$tpid" || { echo "$name: failed: $(tail -3 "$work/err")" >&2; exit 1; }
  t1=$(date +%s.%N)
  kib=$(tail -1 "$work/maxrss")
  if ! grep -qE '^[0-9]+$' <<< "$kib"; then
    echo "$name: failed: $(tail -3 "$work/err")" >&2
    exit 1
  fi
  if [ $# -gt 0 ] && ! grep -q 'base at seq' "$work/err"; then
    echo "$name: no base uploaded: $(tail -3 "$work/err")" >&2
    exit 1
  fi
  printf '%-10s peak RSS %6d MiB  peak anonymous %6d MiB  %5.1f s\n' "$name" \
    $((kib >> 10)) $((anon >> 10)) "$(echo "$t1 - $t0" | bc)"
  echo "$name $((kib >> 10)) $((anon >> 10))" >> "$work/results"
}

binaries=("this:$loomship")
[ -n "$other" ] && binaries+=("other:$other")
for r in $(seq 1 "$rounds"); do
  run arena "$loomship"
  for b in "${binaries[@]}"; do
    name=${b%%:*} bin=${b#*:}
    rm -rf "$work/arc" && mkdir "$work/arc"
    run "$name" "$bin" --archive "file://$work/arc" --archive-base-interval 86400
  done
done
# median NAME COLUMN: the median of that column of NAME's runs.
median() {
  local vals count
  vals=$(awk -v n="$1" -v c="$2" '$1 == n {print $c}' "$work/results" | sort -n)
  count=$(wc -l <<< "$vals")
  sed -n "$(((count + 1) / 2))p" <<< "$vals"
}
echo "# medians (MiB): peak RSS, peak anonymous"
for name in arena this other; do
  grep -q "^$name " "$work/results" || continue
  echo "$name $(median "$name" 2) $(median "$name" 3)"
done
