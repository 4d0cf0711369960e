#!/usr/bin/env bash
# replication_test.sh: replication scenarios with real loomship processes on
# 127.0.0.1 (issue 3's list): a standby restarted empty (base image), the
# log cap exceeded while a standby was stopped (base image), four standbys
# with one stopped (SIGSTOP) while the others keep up, and sync mode:
# blocking until acknowledged, and both timeout outcomes. After each, every
# standby's image equals the primary's byte for byte.
# Usage: replication_test.sh PATH/TO/loomship
TEST_NAME=repl
. "$(dirname "$0")/../lib/testlib.sh"

declare -A URL PID PORT
start_standby() { # NAME
  local name=$1
  : >"$work/$name.out"
  "$LOOMSHIP" standby --dir "$work/$name" --listen "127.0.0.1:${PORT[$name]:-0}" \
    >"$work/$name.out" 2>>"$work/$name.err" &
  PID[$name]=$!
  pids+=("${PID[$name]}")
  for _ in $(seq 100); do grep -q listening "$work/$name.out" && break; sleep 0.05; done
  URL[$name]=$(grep -o 'http://[0-9.]*:[0-9]*' "$work/$name.out" | head -1)
  PORT[$name]=${URL[$name]##*:}
}
stop_standby() { kill -CONT "${PID[$1]}" 2>/dev/null; kill -TERM "${PID[$1]}"; wait "${PID[$1]}" 2>/dev/null; }
status() { curl -s "$1/v1/status" | python3 -c "import json,sys; d=json.load(sys.stdin); print($2)"; }
poll_status() { # URL EXPR WANT: the value of EXPR once it is WANT (10 s at most)
  local v=
  for _ in $(seq 200); do
    v=$(status "$1" "$2" 2>/dev/null)
    [ "$v" = "$3" ] && break
    sleep 0.05
  done
  echo "$v"
}
seq_of() { "$LOOMSHIP" inspect "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["seq"])'; }
wait_applied() { # URL SEQ
  for _ in $(seq 300); do
    [ "$(status "$1" 'd["applied"]["seq"]' 2>/dev/null)" = "$2" ] && return 0
    sleep 0.05
  done
  return 1
}
seq_at_least() { [ "$(status "$1" "$2" 2>/dev/null || echo 0)" -ge "$3" ]; } # URL EXPR N
same_as_primary() { # PRIMARY_DIR STANDBY_NAME
  cmp -s "$1/image" "$work/$2/image" &&
    [ "$("$LOOMSHIP" inspect "$1" --json)" = "$("$LOOMSHIP" inspect "$work/$2" --json)" ]
}

echo "== a standby restarted empty gets a base image (the log no longer reaches seq 1)"
start_standby a
"$LOOMSHIP" primary --dir "$work/pa" --standby "${URL[a]}" --saves 300 --rate 1000 \
  --pages 32 --log-max-mb 1 >/dev/null 2>"$work/pa.err"
stop_standby a
rm -rf "$work/a"
start_standby a
"$LOOMSHIP" primary --dir "$work/pa" --standby "${URL[a]}" --saves 10 --rate 100 \
  --pages 8 --log-max-mb 1 >/dev/null 2>>"$work/pa.err"
check "the empty standby converged" wait_applied "${URL[a]}" "$(seq_of "$work/pa")"
check "it was sent a base image" test "$(status "${URL[a]}" 'd["counters"]["base_images"]')" -ge 1
stop_standby a
check "its image equals the primary's" same_as_primary "$work/pa" a

echo "== a standby that was down while the log cap was exceeded gets a base image"
start_standby a
behind=$(status "${URL[a]}" 'd["applied"]["seq"]')
stop_standby a
"$LOOMSHIP" primary --dir "$work/pa" --standby "${URL[a]}" --saves 1000 --rate 2000 --pages 32 \
  --log-max-mb 1 --drain-timeout 1 >/dev/null 2>>"$work/pa.err"
start_standby a
"$LOOMSHIP" primary --dir "$work/pa" --standby "${URL[a]}" --saves 5 --rate 100 --pages 8 \
  --log-max-mb 1 >/dev/null 2>>"$work/pa.err"
check "converged from seq $behind to seq $(seq_of "$work/pa")" wait_applied "${URL[a]}" "$(seq_of "$work/pa")"
check "a base image was sent (the log no longer reached seq $((behind + 1)))" \
  test "$(status "${URL[a]}" 'd["counters"]["base_images"]')" -ge 1
stop_standby a
check "its image equals the primary's" same_as_primary "$work/pa" a

echo "== four standbys, one stopped: the others keep up"
for s in b1 b2 b3 b4; do start_standby "$s"; done
"$LOOMSHIP" primary --dir "$work/pb" --standby "${URL[b1]}" --standby "${URL[b2]}" \
  --standby "${URL[b3]}" --standby "${URL[b4]}" --saves 0 --rate 100 --pages 16 \
  --listen 127.0.0.1:0 >"$work/pb.out" 2>"$work/pb.err" &
ppid=$!; pids+=("$ppid")
for _ in $(seq 100); do grep -q listening "$work/pb.out" && break; sleep 0.05; done
purl=$(grep -o 'http://[0-9.]*:[0-9]*' "$work/pb.out" | head -1)
wait_for 10 seq_at_least "${URL[b4]}" 'd["applied"]["seq"]' 50 # it streams
kill -STOP "${PID[b4]}"
# The primary goes on saving; the stopped one falls 100 frames behind.
wait_for 20 seq_at_least "$purl" 'd["applied"]["seq"]' 300
wait_for 10 seq_at_least "$purl" 'd["standbys"][3]["lag"]["frames"]' 100
state4=$(poll_status "$purl" 'd["standbys"][3]["state"]' stalled)
check "the stopped one shows as stalled ($state4), not streaming" test "$state4" = stalled
seq_now=$(status "$purl" 'd["applied"]["seq"]')
lags=$(status "$purl" '" ".join(str(s["lag"]["frames"]) for s in d["standbys"])')
read -r l1 l2 l3 l4 <<<"$lags"
check "the primary kept saving (seq $seq_now)" test "$seq_now" -ge 300
check "three standbys keep up (lag $l1 $l2 $l3 frames)" test "$l1" -le 20 -a "$l2" -le 20 -a "$l3" -le 20
check "the stopped one falls behind ($l4 frames)" test "$l4" -ge 100
kill -CONT "${PID[b4]}"
kill -TERM "$ppid"; wait "$ppid"
for s in b1 b2 b3 b4; do
  check "$s converged" wait_applied "${URL[$s]}" "$(seq_of "$work/pb")"
  stop_standby "$s"
  check "$s equals the primary" same_as_primary "$work/pb" "$s"
done

echo "== sync mode: saves wait for the standby; both timeout outcomes"
start_standby c
t0=$(date +%s.%N)
"$LOOMSHIP" primary --dir "$work/pc" --standby "${URL[c]}" --sync 1 --saves 20 --rate 1000 \
  --pages 8 >/dev/null 2>"$work/pc.err"
check "sync saves are all received by the standby when they return" \
  test "$(status "${URL[c]}" 'd["received"]["seq"]')" = "$(seq_of "$work/pc")"
kill -STOP "${PID[c]}"
t0=$(date +%s.%N)
"$LOOMSHIP" primary --dir "$work/pc" --standby "${URL[c]}" --sync 1 --sync-timeout 1 \
  --sync-fallback fail --saves 3 --rate 1000 --pages 8 --drain-timeout 1 \
  --listen 127.0.0.1:0 >"$work/pc2.out" 2>>"$work/pc.err" &
ppid=$!; pids+=("$ppid")
for _ in $(seq 100); do grep -q listening "$work/pc2.out" && break; sleep 0.05; done
purl=$(grep -o 'http://[0-9.]*:[0-9]*' "$work/pc2.out" | head -1)
degraded=$(poll_status "$purl" \
  'd["sync"]["degraded"] and d["sync"]["degraded_since"] is not None' True)
wait "$ppid"
t1=$(date +%s.%N)
check "with the standby stopped, each save waits for the timeout ($(echo "$t1 - $t0" | bc) s for 3)" \
  test "$(echo "$t1 - $t0 >= 3" | bc)" = 1
check "and says which save was not acknowledged" \
  grep -Eq "save of epoch [0-9]+ seq [0-9]+ was not acknowledged" "$work/pc.err"
check "and status says sync degraded, since when ($degraded)" test "$degraded" = True
t0=$(date +%s.%N)
"$LOOMSHIP" primary --dir "$work/pc" --standby "${URL[c]}" --sync 1 --sync-timeout 1 \
  --sync-fallback async --saves 50 --rate 1000 --pages 8 --drain-timeout 1 \
  --listen 127.0.0.1:0 >"$work/pc3.out" 2>>"$work/pc.err" &
ppid=$!; pids+=("$ppid")
for _ in $(seq 100); do grep -q listening "$work/pc3.out" && break; sleep 0.05; done
purl=$(grep -o 'http://[0-9.]*:[0-9]*' "$work/pc3.out" | head -1)
degraded=$(poll_status "$purl" 'd["sync"]["degraded"]' True)
wait "$ppid"
t1=$(date +%s.%N)
check "with fallback async, one timeout then the saves go on ($(echo "$t1 - $t0" | bc) s for 50)" \
  test "$(echo "$t1 - $t0 < 8" | bc)" = 1
check "and status says sync degraded ($degraded)" test "$degraded" = True
kill -CONT "${PID[c]}"
"$LOOMSHIP" primary --dir "$work/pc" --standby "${URL[c]}" --sync 1 --saves 5 --rate 100 \
  --pages 8 >/dev/null 2>>"$work/pc.err"
check "after the standby is back it converges" wait_applied "${URL[c]}" "$(seq_of "$work/pc")"
stop_standby c
check "its image equals the primary's" same_as_primary "$work/pc" c

finish
