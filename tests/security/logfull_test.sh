#!/usr/bin/env bash
# logfull_test.sh: issue 11, "a save whose commit point was passed reports
# success even if a later step hits ENOSPC". The primary's replication log
# (DIR/replog) sits on a tmpfs of 256 KiB that fills up every ~80 saves,
# while its store has room. Each save is committed before the log append,
# so every one must be reported as a success: the ack log
# (LOOMSHIP_ACK_LOG, one line per save that returned success) lists all of
# them, the primary exits 0, says once per streak that the log append
# failed, and its standby still ends identical (frames from memory, or a
# base image).
# Needs root and mount(2) (tmpfs); skips with 77 otherwise.
# Usage: logfull_test.sh PATH/TO/loomship
TEST_NAME=logfull
. "$(dirname "$0")/../lib/testlib.sh"
mnt=$work/p/replog
mkdir -p "$mnt"
if ! mount -t tmpfs -o size=256k tmpfs "$mnt" 2>/dev/null; then
  echo "SKIP: cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)"
  exit 77
fi
trap 'umount "$mnt" 2>/dev/null; testlib_cleanup' EXIT

"$LOOMSHIP" standby --dir "$work/s" --listen 127.0.0.1:0 >"$work/s.out" 2>"$work/s.err" &
spid=$!; pids+=("$spid")
for _ in $(seq 200); do grep -q listening "$work/s.out" && break; sleep 0.05; done
surl=$(grep -o 'http://[0-9.]*:[0-9]*' "$work/s.out" | head -1)
status() { curl -s "$surl/v1/status" | python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
seq_of() { "$LOOMSHIP" inspect "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["seq"])'; }

saves=300
LOOMSHIP_ACK_LOG=$work/acks "$LOOMSHIP" primary --dir "$work/p" --standby "$surl" \
  --saves $saves --rate 500 --pages 32 --log-max-mb 64 --drain-timeout 30 \
  >"$work/p.out" 2>"$work/p.err"
rc=$?
check "the primary exits 0 (exit $rc)" test "$rc" = 0
check "its log append met a full disk" grep -q "replication log: appending seq [0-9]* failed (No space left on device)" "$work/p.err"
check "it said so once per streak, not per save" \
  test "$(grep -c 'replication log: appending seq' "$work/p.err")" -le "$(( $(grep -c 'appends work again' "$work/p.err") + 1 ))"
check "no save was reported as failed" bash -c "! grep -q 'save:' '$work/p.err'"
committed=$(seq_of "$work/p")
acked=$(wc -l <"$work/acks")
check "every committed save was acknowledged ($acked of $committed)" test "$acked" = "$committed"
check "the last acknowledged seq is the committed one" \
  grep -q "^seq $committed " <(tail -1 "$work/acks")
check "$saves saves were made" test "$committed" = "$saves"
for _ in $(seq 200); do
  [ "$(status 'd["applied"]["seq"]' 2>/dev/null)" = "$committed" ] && break
  sleep 0.05
done
check "the standby holds every save" test "$(status 'd["applied"]["seq"]')" = "$committed"
kill -TERM "$spid"; wait "$spid" 2>/dev/null
check "the standby is identical to the primary" cmp -s "$work/p/image" "$work/s/image"
check "verify passes on the primary" bash -c "'$LOOMSHIP' verify '$work/p' >/dev/null"
finish
