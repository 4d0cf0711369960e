#!/bin/bash
# base_readback_bench.sh: what a standby's read-back of a base image costs
# (docs/INTEGRITY.md section 5: a base image is read back whole before it
# is acknowledged). A primary directory with one save of 60,000 keys
# (37,964 pages, 593 MiB); then ROUNDS times an empty standby on
# 127.0.0.1 and one more save of the primary shipping to it, which sends a
# base image. Per round: the time from the primary's snapshot for the base
# image to the standby's answer (the primary's log), and the read-back's
# own time (the standby's log line "base image at ... read back in T s").
# Prints the medians and their ratio.
# Usage: bench/base_readback_bench.sh BUILD_DIR [ROUNDS]   (default 3)
set -eu
BUILD=${1:?usage: base_readback_bench.sh BUILD_DIR [ROUNDS]}
ROUNDS=${2:-3}
L=$(cd "$BUILD" && pwd)/cli/loomship
W=$(mktemp -d /tmp/loomship-rbbench-XXXXXX)
trap 'kill $spid 2>/dev/null; rm -rf "$W"' EXIT
spid=
TABLE="--keys 60000 --arena-pages 76000"
"$L" primary --dir "$W/p" --saves 1 $TABLE --pages 60000 >/dev/null 2>&1
ms() { # HH:MM:SS.mmm -> milliseconds
  echo "$1" | awk -F: '{ printf "%d\n", ($1 * 3600 + $2 * 60 + $3) * 1000 }'
}
: > "$W/rounds"
for i in $(seq 1 "$ROUNDS"); do
  rm -rf "$W/s"
  "$L" standby --dir "$W/s" --listen 127.0.0.1:0 > "$W/s.out" 2> "$W/s.log" &
  spid=$!
  url=
  for _ in $(seq 1 200); do
    url=$(grep -o "http://[0-9.:]*" "$W/s.out" | head -1 || true)
    [ -n "$url" ] && break
    sleep 0.05
  done
  [ -n "$url" ] || { echo "round $i: the standby did not start" >&2; cat "$W/s.log" >&2; exit 1; }
  "$L" primary --dir "$W/p" --standby "$url" --saves 1 $TABLE --pages 1 \
    2> "$W/p.log" > /dev/null || { echo "round $i: the primary failed" >&2; tail -5 "$W/p.log" >&2; exit 1; }
  t0=$(grep "snapshot at seq" "$W/p.log" | head -1 | cut -c12-23)
  t1=$(grep "base image at seq" "$W/p.log" | head -1 | cut -c12-23)
  rb=$(grep -o "read back in [0-9.]* s" "$W/s.log" | head -1 | awk '{print $4}')
  base=$(( $(ms "$t1") - $(ms "$t0") ))
  echo "round $i: base image $base ms, read-back $rb s"
  echo "$base $rb" >> "$W/rounds"
  kill "$spid"
  wait "$spid" 2>/dev/null || true
  spid=
done
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
mb=$(awk '{ print $1 }' "$W/rounds" | median)
mr=$(awk '{ print $2 }' "$W/rounds" | median)
echo "median base image: $mb ms; median read-back: $mr s"
awk -v b="$mb" -v r="$mr" 'BEGIN { printf "read-back / base image (medians): %.1f %%\n", 100 * r * 1000 / b }'
