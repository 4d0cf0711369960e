#!/usr/bin/env bash
# resync_test.sh: loomship standby --resync-from URL (DESIGN sections 3 and
# 5), with real loomship processes on 127.0.0.1: a standby whose meta is
# damaged is replaced by a verified backup pulled from another standby, and
# one from the primary; both then stream. Refusals leave the directory as
# it was: a failed pull (no token), a directory in use. A DIR.resync left
# by an interrupted resync is removed.
# Usage: resync_test.sh PATH/TO/loomship
TEST_NAME=resync
. "$(dirname "$0")/../lib/testlib.sh"

umask 077
printf 'resync-test-token-0123456789\n' >"$work/token"
declare -A URL PID PORT
start_standby() { # NAME [EXTRA ARGS...]
  local name=$1; shift
  : >"$work/$name.out"
  "$LOOMSHIP" standby --dir "$work/$name" --listen "127.0.0.1:${PORT[$name]:-0}" \
    --token-file "$work/token" "$@" >"$work/$name.out" 2>>"$work/$name.err" &
  PID[$name]=$!
  pids+=("${PID[$name]}")
  for _ in $(seq 600); do
    grep -q listening "$work/$name.out" && break
    kill -0 "${PID[$name]}" 2>/dev/null || break
    sleep 0.05
  done
  URL[$name]=$(grep -o 'http://[0-9.]*:[0-9]*' "$work/$name.out" | head -1)
  [ -n "${URL[$name]}" ] && PORT[$name]=${URL[$name]##*:}
  [ -n "${URL[$name]}" ]
}
stop_pid() { kill -TERM "$1" 2>/dev/null; wait "$1" 2>/dev/null; }
status() { curl -s "$1/v1/status" | python3 -c "import json,sys; d=json.load(sys.stdin); print($2)"; }
inspect_json() { "$LOOMSHIP" inspect "$1" --json; }
seq_of() { inspect_json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["seq"])'; }
applied_at_least() { [ "$(status "$1" 'd["applied"]["seq"]' 2>/dev/null || echo 0)" -ge "$2" ]; }
streaming() { # PRIMARY_URL STANDBY_URL
  [ "$(status "$1" "[s['state'] for s in d['standbys'] if s['url'] == '$2'][0]" 2>/dev/null)" = streaming ]
}
identical() { cmp -s "$1/image" "$2/image" && [ "$(inspect_json "$1")" = "$(inspect_json "$2")" ]; }
start_primary() { # STANDBY NAMES...
  local args=()
  for s in "$@"; do args+=(--standby "${URL[$s]}"); done
  : >"$work/p.out"
  "$LOOMSHIP" primary --dir "$work/p" "${args[@]}" --token-file "$work/token" \
    --listen 127.0.0.1:0 --saves 0 --rate 50 --pages 8 >"$work/p.out" 2>>"$work/p.err" &
  ppid=$!; pids+=("$ppid")
  for _ in $(seq 200); do grep -q listening "$work/p.out" && break; sleep 0.05; done
  purl=$(grep -o 'http://[0-9.]*:[0-9]*' "$work/p.out" | head -1)
}

echo "== a primary streaming to standby a"
start_standby a
start_primary a
check "standby a applies" wait_for 20 applied_at_least "${URL[a]}" 20

echo "== standby b: its meta is damaged"
"$LOOMSHIP" backup --from "${URL[a]}" --out "$work/b" --token-file "$work/token" \
  >/dev/null 2>"$work/backup.err"
python3 -c "import sys; open(sys.argv[1], 'r+b').write(b'\x5a' * 1024)" "$work/b/meta"
cp "$work/b/meta" "$work/b-meta.damaged"
"$LOOMSHIP" standby --dir "$work/b" --listen 127.0.0.1:0 >/dev/null 2>"$work/b0.err"
check "it refuses to start, and offers --resync-from" grep -q -- "--resync-from" "$work/b0.err"

echo "== refusals leave the directory as it was"
"$LOOMSHIP" standby --dir "$work/b" --listen 127.0.0.1:0 --resync-from "${URL[a]}" \
  >/dev/null 2>"$work/b1.err"
check "a resync without the token fails (exit $?)" grep -q "resync from ${URL[a]} failed" "$work/b1.err"
check "b was left as it was" cmp -s "$work/b/meta" "$work/b-meta.damaged"
check "nothing was left beside it" bash -c "! ls -d '$work'/b.resync* 2>/dev/null"
start_standby c
"$LOOMSHIP" standby --dir "$work/c" --listen 127.0.0.1:0 --resync-from "${URL[a]}" \
  --token-file "$work/token" >/dev/null 2>"$work/c1.err"
check "a resync of a directory in use is refused (exit $?)" grep -q "in use" "$work/c1.err"
check "the running standby c is still up" kill -0 "${PID[c]}"
stop_pid "${PID[c]}"

echo "== resync b from standby a, c from the primary"
mkdir -p "$work/b.resync" && echo junk >"$work/b.resync/image"
check "b starts with --resync-from a standby's URL" start_standby b --resync-from "${URL[a]}"
check "it said what it pulled and that it verified it" grep -q "now holds epoch 1 seq [1-9][0-9]* .*verified, from ${URL[a]}" "$work/b.err"
check "the leftover b.resync was removed" test ! -e "$work/b.resync"
check "nothing is left beside b" bash -c "! ls -d '$work'/b.resync* 2>/dev/null"
check "b verifies" bash -c "'$LOOMSHIP' inspect '$work/b' >/dev/null"
check "b serves its new position" test "$(status "${URL[b]}" 'd["applied"]["seq"]')" -ge 20
check "c starts with --resync-from the primary's URL" start_standby c --resync-from "$purl"
check "c's position came from the primary" grep -q "verified, from $purl" "$work/c.err"
check "a new directory d is made from a URL" start_standby d --resync-from "$purl"
check "d holds the primary's history" test "$(status "${URL[d]}" 'd["applied"]["seq"]')" -ge 20
stop_pid "${PID[d]}"
check "d verifies" bash -c "'$LOOMSHIP' verify '$work/d' >/dev/null"

echo "== both then stream"
stop_pid "$ppid"
start_primary a b c
check "b streams" wait_for 30 streaming "$purl" "${URL[b]}"
check "c streams" wait_for 30 streaming "$purl" "${URL[c]}"
stop_pid "$ppid"
final=$(seq_of "$work/p")
for s in a b c; do
  check "$s applied seq $final" wait_for 20 applied_at_least "${URL[$s]}" "$final"
  stop_pid "${PID[$s]}"
  check "$s is identical to the primary" identical "$work/p" "$work/$s"
done
finish
