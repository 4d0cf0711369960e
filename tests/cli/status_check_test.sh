#!/usr/bin/env bash
# status_check_test.sh: `loomship status URL --check [--max-lag SECONDS]`
# (DESIGN.md section 5) against real loomship processes on 127.0.0.1: exit
# 0 healthy, 1 degraded (not ready, fenced, lag over --max-lag: on a
# primary its largest standby lag), 2 unreachable or error; and the plain
# status shows ready, last contact, last apply error, sync and version.
# Usage: status_check_test.sh PATH/TO/loomship
TEST_NAME=status-check
. "$(dirname "$0")/../lib/testlib.sh"

# check_is WANT URL ARGS...: the exit code of status --check is WANT
check_is() {
  local want=$1 u=$2; shift 2
  "$LOOMSHIP" status "$u" --check "$@" >"$work/check.out" 2>&1
  local rc=$?
  echo "  exit $rc: $(cat "$work/check.out")"
  [ "$rc" = "$want" ]
}
# poll_check WANT URL ARGS...: the exit code becomes WANT within 15 s
poll_check() {
  for _ in $(seq 150); do
    "$LOOMSHIP" status "$2" --check "${@:3}" >"$work/check.out" 2>&1
    [ $? = "$1" ] && { echo "  $(cat "$work/check.out")"; return 0; }
    sleep 0.1
  done
  echo "  last: $(cat "$work/check.out")"
  return 1
}

echo "== unreachable or not a loomship node: 2"
check "nothing listening: exit 2" check_is 2 http://127.0.0.1:9
check "and the line says unreachable" grep -q '^unreachable: http://127.0.0.1:9/readyz' "$work/check.out"
python3 -m http.server --bind 127.0.0.1 0 --directory "$work" >"$work/http.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q 'port' "$work/http.out" && break; sleep 0.05; done
hport=$(grep -o 'port [0-9]*' "$work/http.out" | head -1 | cut -d' ' -f2)
check "a server without /readyz: exit 2" check_is 2 "http://127.0.0.1:$hport"
check "a bad --max-lag is a usage error" bash -c \
  "\"$LOOMSHIP\" status http://127.0.0.1:9 --check --max-lag soon 2>/dev/null; [ \$? = 2 ]"

echo "== a healthy standby and primary: 0"
start_node s standby --dir "$work/s" --listen 127.0.0.1:0
surl=$url
check "a standby that was started: healthy" check_is 0 "$surl" --max-lag 5
check "and the line says healthy" grep -q "^healthy: standby $surl" "$work/check.out"
start_node p primary --dir "$work/p" --standby "$surl" --rate 20 --pages 4 --listen 127.0.0.1:0
purl=$url
check "a primary streaming to it: healthy" poll_check 0 "$purl" --max-lag 5
"$LOOMSHIP" status "$surl" >"$work/plain.out"
check "the plain status shows ready" grep -q '^ready      yes' "$work/plain.out"
check "the plain status shows the last contact" \
  grep -Eq '^contact    last heard from the primary at 20[0-9-]+T' "$work/plain.out"
check "the plain status shows the last apply error" grep -q '^apply      no error' "$work/plain.out"
check "the plain status shows the version" \
  grep -q "^version    $("$LOOMSHIP" --version | cut -d' ' -f2)" "$work/plain.out"
"$LOOMSHIP" status "$purl" >"$work/plainp.out"
check "the primary's plain status shows its sync state" \
  grep -q '^sync       0 required, not degraded' "$work/plainp.out"

echo "== degraded: 1"
start_node p2 primary --dir "$work/p2" --standby http://127.0.0.1:9 --rate 20 --pages 4 \
  --listen 127.0.0.1:0 --drain-timeout 0
p2url=$url
check "a primary whose standby is away, --max-lag 0.3: degraded" poll_check 1 "$p2url" --max-lag 0.3
check "and the line names the lag" grep -q "^degraded: primary $p2url: lag .* over --max-lag 0.3" "$work/check.out"
check "without --max-lag it is healthy" check_is 0 "$p2url"
"$LOOMSHIP" promote "$surl" >/dev/null
check "a primary whose standby was promoted: degraded (fenced)" poll_check 1 "$purl"
# (/readyz and /v1/status are two requests: the first degraded line may
# have caught only one of them fenced; asked again, both are.)
check "asked again: still degraded" check_is 1 "$purl"
check "and the line says not ready and fenced" \
  grep -q "^degraded: primary $purl: not ready (.*); fenced" "$work/check.out"
finish
