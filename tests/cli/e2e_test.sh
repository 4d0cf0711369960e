#!/usr/bin/env bash
# e2e_test.sh: real loomship processes on 127.0.0.1 (ephemeral ports):
# replication, kill -9 of either side and restart, backups (loomship backup,
# and curl with a resumed download), tokens, promotion and fencing, the
# status and inspect documents, --help and errors of every subcommand.
# Usage: e2e_test.sh PATH/TO/loomship
TEST_NAME=e2e
. "$(dirname "$0")/../lib/testlib.sh"

# start_standby NAME [args...]: starts it, sets URL_<NAME> and PID_<NAME>.
start_standby() {
  local name=$1; shift
  "$LOOMSHIP" standby --dir "$work/$name" --listen 127.0.0.1:${PORT_OF[$name]:-0} "$@" \
    >"$work/$name.out" 2>>"$work/$name.err" &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 100); do
    grep -q listening "$work/$name.out" 2>/dev/null && break
    sleep 0.05
  done
  local url
  url=$(grep -o 'http://[0-9.]*:[0-9]*' "$work/$name.out" | head -1)
  PORT_OF[$name]=${url##*:}
  eval "URL_$name=$url; PID_$name=$pid"
}
declare -A PORT_OF

# position DIR -> "seq checksum"
position() {
  "$LOOMSHIP" inspect "$1" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["seq"], d["checksum"])'
}
status_field() { # URL python-expression-on-d
  curl -s "$1/v1/status" | python3 -c "import json,sys; d=json.load(sys.stdin); print($2)"
}
applied_seq() { status_field "$1" 'd["applied"]["seq"]' 2>/dev/null || echo 0; }
applied_at_least() { [ "$(applied_seq "$1")" -ge "$2" ]; } # URL SEQ
status_true() { [ "$(status_field "$1" "$2" 2>/dev/null)" = True ]; } # URL EXPR
wait_applied() { # URL SEQ
  for _ in $(seq 200); do
    [ "$(status_field "$1" 'd["applied"]["seq"]' 2>/dev/null)" = "$2" ] && return 0
    sleep 0.05
  done
  return 1
}

echo "== every subcommand answers --help, and refuses bad arguments"
for c in demo standby primary backup status inspect verify promote; do
  check "$c --help" bash -c "\"$LOOMSHIP\" $c --help >/dev/null"
  out=$("$LOOMSHIP" "$c" --no-such-option 2>&1); rc=$?
  check "$c refuses a bad option (exit $rc)" test "$rc" -ne 0
done
out=$("$LOOMSHIP" inspect "$work/nothing" 2>&1); rc=$?
check "inspect of a missing dir: one line, non-zero" test "$rc" -ne 0 -a "$(echo "$out" | wc -l)" -eq 1

echo "== primary -> standby, then kill -9 of the primary mid-run and restart"
start_standby s1
"$LOOMSHIP" primary --dir "$work/p1" --standby "$URL_s1" --saves 150 --rate 500 --pages 16 \
  >"$work/p1.out" 2>"$work/p1.err"
check "primary exits 0 after --saves" test $? -eq 0
check "standby holds the primary's position" test "$(position "$work/p1")" = \
  "$(curl -s "$URL_s1/v1/status" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["applied"]["seq"], d["applied"]["checksum"])')"
"$LOOMSHIP" primary --dir "$work/p1" --standby "$URL_s1" --saves 0 --rate 200 --pages 16 \
  >>"$work/p1.out" 2>>"$work/p1.err" &
ppid=$!; pids+=("$ppid")
seq0=$(applied_seq "$URL_s1")
wait_for 10 applied_at_least "$URL_s1" $((seq0 + 20)) # mid-run: it ships
kill -KILL "$ppid"; wait "$ppid" 2>/dev/null
check "verify passes on the killed primary's directory" "$LOOMSHIP" verify "$work/p1"
"$LOOMSHIP" primary --dir "$work/p1" --standby "$URL_s1" --saves 50 --rate 500 --pages 16 \
  >>"$work/p1.out" 2>>"$work/p1.err"
seq=$(position "$work/p1" | cut -d' ' -f1)
check "standby caught up after the primary's restart (seq $seq)" wait_applied "$URL_s1" "$seq"

echo "== kill -9 of the standby mid-stream, restart, catch up"
"$LOOMSHIP" primary --dir "$work/p1" --standby "$URL_s1" --saves 0 --rate 200 --pages 16 \
  --ack-log "$work/p1.ack" >>"$work/p1.out" 2>>"$work/p1.err" &
ppid=$!; pids+=("$ppid")
seq0=$(applied_seq "$URL_s1")
wait_for 10 applied_at_least "$URL_s1" $((seq0 + 20)) # mid-stream
kill -KILL "$PID_s1"; wait "$PID_s1" 2>/dev/null
# The primary commits while the standby is down: 20 more saves acknowledged.
acks_at_least() { [ "$(wc -l < "$1")" -ge "$2" ]; }
acked=$(wc -l < "$work/p1.ack")
check "the primary saves on while its standby is down" \
  wait_for 10 acks_at_least "$work/p1.ack" $((acked + 20))
start_standby s1
seq0=$(applied_seq "$URL_s1")
wait_for 10 applied_at_least "$URL_s1" $((seq0 + 10)) # it streams again
kill -TERM "$ppid"; wait "$ppid"
check "primary drained and stopped on SIGTERM (exit $?)" true
seq=$(position "$work/p1" | cut -d' ' -f1)
check "the restarted standby converged (seq $seq)" wait_applied "$URL_s1" "$seq"
kill -TERM "$PID_s1"; wait "$PID_s1"
check "standby stops cleanly on SIGTERM" test $? -eq 0
check "standby image equals the primary's byte for byte" cmp -s "$work/p1/image" "$work/s1/image"
check "verify passes on the standby" "$LOOMSHIP" verify "$work/s1"

echo "== backups: loomship backup, and curl with a cut and resumed download"
start_standby s1
check "loomship backup" "$LOOMSHIP" backup --from "$URL_s1" --out "$work/bk1"
check "the backup verifies" "$LOOMSHIP" verify "$work/bk1"
check "the backup equals the image" cmp -s "$work/p1/image" "$work/bk1/image"
check "backup refuses to replace a directory" bash -c "! '$LOOMSHIP' backup --from '$URL_s1' --out '$work/bk1' 2>/dev/null"
curl -s -o "$work/full.img" "$URL_s1/v1/backup"
size=$(stat -c %s "$work/full.img")
head -c $((size / 2)) "$work/full.img" > "$work/part.img"
curl -s -C - -o "$work/part.img" "$URL_s1/v1/backup"
check "curl -C - resumes a cut download byte-identically ($size bytes)" cmp -s "$work/full.img" "$work/part.img"
etag=$(curl -sI "$URL_s1/v1/backup" | tr -d '\r' | awk -F': ' 'tolower($1)=="etag"{print $2}')
check "the backup has a strong ETag" test -n "$etag" -a "${etag:0:1}" = '"'
kill -TERM "$PID_s1"; wait "$PID_s1"

echo "== tokens"
printf 'e2e-secret-token\n' > "$work/token"
printf 'wrong-token\n' > "$work/wrong"
start_standby s2 --token-file "$work/token"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST --data-binary x "$URL_s2/v1/frames")
check "a frame without a token is refused (401, got $code)" test "$code" = 401
code=$(curl -s -o /dev/null -w '%{http_code}' "$URL_s2/v1/backup")
check "a backup without a token is refused (401, got $code)" test "$code" = 401
"$LOOMSHIP" primary --dir "$work/p2" --standby "$URL_s2" --token-file "$work/wrong" \
  --saves 5 --rate 50 --drain-timeout 2 >"$work/p2.out" 2>"$work/p2.err"
check "a wrong token never appears in the logs" bash -c "! grep -q wrong-token '$work/p2.err' '$work/s2.err'"
"$LOOMSHIP" primary --dir "$work/p2" --standby "$URL_s2" --token-file "$work/token" \
  --saves 20 --rate 100 --listen 127.0.0.1:0 >"$work/p2.out" 2>"$work/p2.err"
seq=$(position "$work/p2" | cut -d' ' -f1)
check "with the right token the standby catches up (seq $seq)" wait_applied "$URL_s2" "$seq"
check "the token never appears in the logs" bash -c "! grep -q e2e-secret-token '$work'/*.err"

echo "== status and inspect documents (the contract's field names)"
check "standby status fields" test "$(status_field "$URL_s2" \
  'all(k in d for k in ["role","epoch","applied","received","primary_seq","lag","replay_paused"]) and all(k in d["lag"] for k in ["frames","bytes","seconds"]) and d["role"]=="standby"')" = True
check "inspect --json fields" test "$("$LOOMSHIP" inspect "$work/p2" --json | python3 -c \
  'import json,sys; d=json.load(sys.stdin); print(all(k in d for k in ["epoch","seq","checksum","pages","page_size"]))')" = True
out=$("$LOOMSHIP" status "$URL_s2" | head -1)
check "loomship status prints lag first ('$out')" test "${out:0:3}" = lag
"$LOOMSHIP" primary --dir "$work/p2" --standby "$URL_s2" --token-file "$work/token" \
  --saves 0 --rate 20 --listen 127.0.0.1:0 >"$work/p2b.out" 2>"$work/p2b.err" &
ppid=$!; pids+=("$ppid")
for _ in $(seq 100); do grep -q listening "$work/p2b.out" && break; sleep 0.05; done
purl=$(grep -o 'http://[0-9.]*:[0-9]*' "$work/p2b.out" | head -1)
check "primary status: one entry per standby with the contract's fields" wait_for 10 status_true "$purl" \
  'd["role"]=="primary" and "fenced" in d and len(d["standbys"])==1 and all(k in d["standbys"][0] for k in ["url","state","sent_seq","received_seq","applied_seq","lag","last_error","last_error_at"])'
check "metrics in Prometheus text format" bash -c "curl -s '$purl/metrics' | grep -q '^# TYPE loomship_'"

echo "== promotion fences the old primary"
check "promote" "$LOOMSHIP" promote "$URL_s2" --token-file "$work/token"
fenced=no
for _ in $(seq 100); do
  [ "$(status_field "$purl" 'd["fenced"]')" = True ] && { fenced=yes; break; }
  sleep 0.1
done
check "the old primary says it is fenced" test "$fenced" = yes
check "the promoted node reports role primary" test "$(status_field "$URL_s2" 'd["role"]')" = primary
kill -TERM "$ppid"; wait "$ppid"
kill -TERM "$PID_s2"; wait "$PID_s2"

echo "== systemd notification: READY=1, watchdog pings, STOPPING=1"
python3 - "$work/notify.sock" "$work/notify.log" <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1]); s.settimeout(8)
with open(sys.argv[2], "w") as log:
    end = time.time() + 8
    while time.time() < end:
        try:
            log.write(s.recv(4096).decode() + "\n"); log.flush()
        except socket.timeout:
            break
PY
npid=$!; pids+=("$npid")
for _ in $(seq 50); do [ -S "$work/notify.sock" ] && break; sleep 0.05; done
NOTIFY_SOCKET="$work/notify.sock" WATCHDOG_USEC=400000 "$LOOMSHIP" standby --dir "$work/s3" \
  --listen 127.0.0.1:0 >"$work/s3.out" 2>"$work/s3.err" &
spid=$!; pids+=("$spid")
t0=$(date +%s.%N)
pings_at_least() { [ "$(grep -c '^WATCHDOG=1' "$work/notify.log" 2>/dev/null)" -ge "$1" ]; }
wait_for 10 pings_at_least 3
t1=$(date +%s.%N)
kill -TERM "$spid"; wait "$spid"
check "READY=1 sent once listening" grep -q '^READY=1' "$work/notify.log"
check "watchdog pings thrice per WATCHDOG_USEC (3 in $(echo "$t1 - $t0" | bc) s)" \
  test "$(echo "$t1 - $t0 <= 1.2" | bc)" = 1
check "STOPPING=1 on SIGTERM" wait_for 5 grep -q '^STOPPING=1' "$work/notify.log"
kill "$npid" 2>/dev/null

echo "== the demo"
check "loomship demo exits 0 and says the images are identical" \
  bash -c "'$LOOMSHIP' demo --seconds 2 2>'$work/demo.err' | grep -q 'primary, standby and backup are identical'"

finish
