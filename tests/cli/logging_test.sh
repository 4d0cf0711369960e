#!/usr/bin/env bash
# logging_test.sh: the long-running commands' logs and signals (DESIGN.md
# section 5, issue 15), with real loomship processes on 127.0.0.1:
# --log-format text|json and --log-level; journald priority prefixes when
# JOURNAL_STREAM names stderr; no doubled "standby: standby:" prefixes;
# SIGHUP re-reads the token file (standby and primary) and never stops a
# process; SIGINT stops a standby as SIGTERM does; under systemd's
# notification protocol the watchdog is pinged and STATUS= carries the lag.
# Usage: logging_test.sh PATH/TO/loomship
TEST_NAME=logging
. "$(dirname "$0")/../lib/testlib.sh"
command -v curl >/dev/null || { echo "SKIP: curl missing"; exit 77; }

stop() { kill -TERM "$1" 2>/dev/null; wait "$1" 2>/dev/null; }
poll() { # SECONDS CMD...: CMD succeeds within SECONDS
  local end=$((SECONDS + $1)); shift
  until "$@"; do [ $SECONDS -ge "$end" ] && return 1; sleep 0.1; done
}
code() { curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $1" "$2/v1/backup"; }
state_of() { curl -s "$1/v1/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["standbys"][0]["state"])'; }
export -f state_of

echo "== bad values are usage errors naming the option"
for c in "standby --dir $work/x --listen 127.0.0.1:0" "primary --dir $work/y" "demo"; do
  check "${c%% *} --log-format xml: exit 2" bash -c \
    "\"$LOOMSHIP\" $c --log-format xml 2>&1 | grep -q \"log-format is text or json, not 'xml'\""
  check "${c%% *} --log-level loud: exit 2" bash -c \
    "\"$LOOMSHIP\" $c --log-level loud 2>/dev/null; [ \$? = 2 ]"
done

echo "== --log-format json: one object a line, with time, level, who, msg"
start_node sj standby --dir "$work/sj" --listen 127.0.0.1:0 --log-format json
sj=$pid
kill -INT "$sj"; wait "$sj"; rc=$?
check "SIGINT stops the standby as SIGTERM does (exit $rc)" test "$rc" = 0
check "every stderr line is a JSON object with the four keys" python3 -c '
import json, sys
lines = open(sys.argv[1]).read().splitlines()
assert lines, "no lines"
for l in lines:
    d = json.loads(l)
    assert {"time", "level", "who", "msg"} <= d.keys(), d
    assert d["who"] == "standby" and d["level"] in ("debug", "info", "warning", "error")
assert any(d["msg"].startswith("SIGINT: applying") for d in map(json.loads, lines))
' "$work/sj.err"

echo "== --log-level warning leaves out info lines"
start_node sw standby --dir "$work/sw" --listen 127.0.0.1:0 --log-level warning
stop "$pid"
check "no SIGTERM info line" bash -c "! grep -q 'SIGTERM' '$work/sw.err'"
start_node si standby --dir "$work/si" --listen 127.0.0.1:0
stop "$pid"
check "by default (info) it is there, with its level" \
  grep -Eq '^20[0-9-]+T[0-9:.]+Z info standby: SIGTERM: applying' "$work/si.err"

echo "== under journald: <N> priority prefixes, no time"
: >"$work/jr.err"
export JOURNAL_STREAM=$(stat -c '%d:%i' "$work/jr.err")
"$LOOMSHIP" standby --dir "$work/jr" --listen 127.0.0.1:0 >"$work/jr.out" 2>>"$work/jr.err" &
jr=$!; pids+=("$jr")
poll 10 grep -q listening "$work/jr.out"
stop "$jr"
check "the SIGTERM line is <6>standby: ..." grep -q '^<6>standby: SIGTERM: applying' "$work/jr.err"
"$LOOMSHIP" standby --dir "$work/jr2" --listen 127.0.0.1:0 >"$work/jr2.out" 2>"$work/jr2.err" &
jr2=$!; pids+=("$jr2")
poll 10 grep -q listening "$work/jr2.out"
stop "$jr2"
unset JOURNAL_STREAM
check "stderr elsewhere than JOURNAL_STREAM names: no prefix" \
  bash -c "! grep -q '^<' '$work/jr2.err' && grep -q ' info standby: SIGTERM' '$work/jr2.err'"

echo "== no doubled prefixes (a base image is logged once as 'standby: ...')"
"$LOOMSHIP" primary --dir "$work/pb" --standby http://127.0.0.1:9 --saves 1500 --rate 5000 \
  --pages 32 --log-max-mb 1 --drain-timeout 0 >/dev/null 2>&1
start_node sb standby --dir "$work/sb" --listen 127.0.0.1:0
sb=$pid; sburl=$url
"$LOOMSHIP" primary --dir "$work/pb" --standby "$sburl" --saves 3 --rate 100 --pages 8 \
  --log-max-mb 1 >/dev/null 2>"$work/pb.err"
stop "$sb"
check "the standby logged its base image" grep -q 'standby: base image at epoch' "$work/sb.err"
check "and no line says 'standby: standby:'" bash -c "! grep -q 'standby: standby:' '$work/sb.err'"

echo "== SIGHUP re-reads the token file and never stops a process"
umask 077
printf 'old-token-0123456789abcdef\n' >"$work/tok"
start_node st standby --dir "$work/st" --listen 127.0.0.1:0 --token-file "$work/tok"
st=$pid; sturl=$url
check "the old token works" test "$(code old-token-0123456789abcdef "$sturl")" = 200
printf 'new-token-0123456789abcdef\n' >"$work/tok"
kill -HUP "$st"
check "after SIGHUP the new token works" poll 10 bash -c \
  "[ \"\$(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer new-token-0123456789abcdef' '$sturl/v1/backup')\" = 200 ]"
check "and the old one is refused" test "$(code old-token-0123456789abcdef "$sturl")" = 401
check "the standby still runs" kill -0 "$st"
check "it logged the re-read" grep -q "standby: SIGHUP: token re-read file=$work/tok" "$work/st.err"
printf '\n' >"$work/tok"
kill -HUP "$st"
check "an unusable token file keeps the token" poll 10 grep -q "the old token stays" "$work/st.err"
check "the new token still works" test "$(code new-token-0123456789abcdef "$sturl")" = 200

printf 'wrong-token-0123456789abcdef\n' >"$work/ptok"
printf 'new-token-0123456789abcdef\n' >"$work/tok"
kill -HUP "$st"
start_node pt primary --dir "$work/pt" --standby "$sturl" --token-file "$work/ptok" --rate 20 \
  --pages 4 --listen 127.0.0.1:0 --drain-timeout 0
pt=$pid; pturl=$url
check "a primary with the wrong token: unauthorized" poll 10 bash -c "[ \"\$(state_of '$pturl')\" = unauthorized ]"
cp "$work/tok" "$work/ptok"
kill -HUP "$pt"
check "after SIGHUP on the primary it streams" poll 15 bash -c "[ \"\$(state_of '$pturl')\" = streaming ]"
check "the primary still runs" kill -0 "$pt"
check "the shipper's lines carry the standby as a field" \
  grep -q " info primary: catching_up -> unauthorized standby=$sturl\$" "$work/pt.err"
check "the primary's own server takes the new token" \
  test "$(code new-token-0123456789abcdef "$pturl")" = 200

echo "== SIGHUP re-reads the TLS certificate and key"
if command -v openssl >/dev/null; then
  cert() { # NAME: a self-signed certificate for 127.0.0.1 in $work/NAME.{crt,key}
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 \
      -addext subjectAltName=IP:127.0.0.1 -keyout "$work/$1.key" -out "$work/$1.crt" >/dev/null 2>&1
  }
  cert a; cert b
  cp "$work/a.crt" "$work/tls.crt"; cp "$work/a.key" "$work/tls.key"
  "$LOOMSHIP" standby --dir "$work/stls" --listen 127.0.0.1:0 --tls-cert "$work/tls.crt" \
    --tls-key "$work/tls.key" >"$work/stls.out" 2>"$work/stls.err" &
  stls=$!; pids+=("$stls")
  poll 10 grep -q listening "$work/stls.out"
  turl=$(grep -o 'https://[0-9.]*:[0-9]*' "$work/stls.out" | head -1)
  trusts() { curl -s -o /dev/null --cacert "$work/$1.crt" "$turl/healthz"; }
  check "it serves certificate A" trusts a
  cp "$work/b.crt" "$work/tls.crt"; cp "$work/b.key" "$work/tls.key"
  kill -HUP "$stls"
  check "after SIGHUP it serves certificate B" poll 10 trusts b
  check "and no longer A" bash -c "! curl -s -o /dev/null --cacert '$work/a.crt' '$turl/healthz'"
  check "it logged the re-read" grep -q "standby: SIGHUP: TLS certificate re-read cert=$work/tls.crt" "$work/stls.err"
  echo "not a certificate" >"$work/tls.crt"
  kill -HUP "$stls"
  check "a file that is no certificate: logged, B still served" \
    poll 10 grep -q "not used (.*); the old certificate stays" "$work/stls.err"
  check "B is still served" trusts b
  check "the standby still runs" kill -0 "$stls"
  stop "$stls"
else
  echo "SKIP (part): openssl missing, no certificates to rotate"
fi

echo "== systemd: the watchdog is pinged and STATUS= carries the lag"
python3 - "$work/notify.sock" >"$work/notify.log" 2>&1 <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(20)
while True:
    try:
        m = s.recv(4096).decode()
    except socket.timeout:
        break
    print(m.replace("\n", "|"), flush=True)
PY
pids+=($!)
poll 5 test -S "$work/notify.sock"
NOTIFY_SOCKET="$work/notify.sock" WATCHDOG_USEC=900000 \
  "$LOOMSHIP" standby --dir "$work/sn" --listen 127.0.0.1:0 >"$work/sn.out" 2>"$work/sn.err" &
sn=$!; pids+=("$sn")
check "READY=1 was sent" poll 10 grep -q 'READY=1' "$work/notify.log"
check "WATCHDOG=1 with STATUS= naming the lag" poll 10 grep -q 'WATCHDOG=1|STATUS=applied seq 0, lag 0 frames' "$work/notify.log"
snurl=$(grep -o 'http://[0-9.]*:[0-9]*' "$work/sn.out" | head -1)
# Hold every connection one address may have (8): the server no longer
# answers the probe from 127.0.0.1, so no more pings until they close
# (once the test has seen the STATUS line, or after 20 s at most).
python3 - "${snurl##*:}" "$work/release" <<'PY' &
import os, socket, sys, time
held = [socket.create_connection(("127.0.0.1", int(sys.argv[1]))) for _ in range(8)]
t0 = time.monotonic()
while not os.path.exists(sys.argv[2]) and time.monotonic() - t0 < 20:
    time.sleep(0.05)
PY
holder=$!
check "a server that does not answer: STATUS says so, without WATCHDOG=1" \
  poll 10 grep -q '^STATUS=applied seq 0, lag 0 frames, 0.000 s (not progressing)$' "$work/notify.log"
touch "$work/release"
wait "$holder"
check "pings again once it answers" poll 10 bash -c \
  "tail -n 2 '$work/notify.log' | grep -q '^WATCHDOG=1|STATUS=applied seq 0, lag 0 frames, 0.000 s$'"
stop "$sn"
check "STOPPING=1 at the end" poll 5 grep -q 'STOPPING=1' "$work/notify.log"
finish
