# testlib.sh: what the process-level test scripts share. Source it after
# setting TEST_NAME; it sets LOOMSHIP (from $1), work (a scratch directory,
# kept when a check failed), pids (killed at exit), and the check helpers.
#   ok WHAT / bad WHAT       count and print one result
#   check WHAT CMD...        ok if CMD succeeds, else bad
#   finish                   print "N passed, M failed"; exit status
#   wait_for SECONDS CMD...  poll CMD until it succeeds (0), or 1 after
#                            SECONDS: wait for what can be observed, never
#                            a fixed sleep as synchronisation
#   start_node NAME ARGS...  a loomship process in the background: pid, url
set -uo pipefail
LOOMSHIP=$(readlink -f "$1")
work=$(mktemp -d "/tmp/loomship-${TEST_NAME:-test}-XXXXXX")
pids=()
failures=0
passes=0
testlib_cleanup() {
  for p in "${pids[@]}"; do
    kill -CONT "$p" 2>/dev/null
    kill -KILL "$p" 2>/dev/null
  done
  wait 2>/dev/null
  if [ "$failures" -eq 0 ]; then rm -rf "$work"; else echo "kept $work"; fi
}
trap testlib_cleanup EXIT
ok() { echo "ok: $*"; passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; failures=$((failures + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
wait_for() {
  local end=$((SECONDS + $1)); shift
  while [ $SECONDS -lt "$end" ]; do "$@" && return 0; sleep 0.05; done
  "$@"
}
finish() {
  echo "$passes passed, $failures failed"
  [ "$failures" -eq 0 ]
}
# start_node NAME ARGS...: `loomship ARGS...` in the background, its output
# in $work/NAME.out and .err; sets pid, and url once it says where it
# listens (empty if it did not within 10 s).
start_node() {
  local name=$1; shift
  "$LOOMSHIP" "$@" >"$work/$name.out" 2>"$work/$name.err" &
  pid=$!
  pids+=("$pid")
  url=
  for _ in $(seq 200); do
    url=$(grep -o 'http://[0-9.]*:[0-9]*' "$work/$name.out" | head -1)
    [ -n "$url" ] && break
    sleep 0.05
  done
}
