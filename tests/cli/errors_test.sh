#!/usr/bin/env bash
# errors_test.sh: errors name the thing that is wrong (issue 15), with real
# loomship processes on 127.0.0.1: a port in use is reported against
# --listen, a missing TLS file against --tls-cert/--tls-key (never the data
# directory, which is then not created); a --standby or node URL with
# another scheme names the URL and the scheme; `backup` from a URL where
# nothing listens fails in seconds, not after minutes of retries; `verify`
# exits 0 agree, 1 corrupt, 2 no image or unreadable, 3 in use.
# Usage: errors_test.sh PATH/TO/loomship
TEST_NAME=errors
. "$(dirname "$0")/../lib/testlib.sh"

# said WANT-EXIT WANT-TEXT CMD...: the exit code and a stderr line with the text
said() {
  local want=$1 text=$2; shift 2
  timeout 30 "$LOOMSHIP" "$@" >/dev/null 2>"$work/err"
  local rc=$?
  echo "  exit $rc: $(head -c 300 "$work/err")"
  [ "$rc" = "$want" ] && { [ -z "$text" ] || grep -qF -- "$text" "$work/err"; }
}

"$LOOMSHIP" standby --dir "$work/s" --listen 127.0.0.1:0 >"$work/s.out" 2>"$work/s.err" &
spid=$!
pids+=("$spid")
for _ in $(seq 200); do grep -q listening "$work/s.out" && break; sleep 0.05; done
surl=$(grep -o 'http://[0-9.]*:[0-9]*' "$work/s.out" | head -1)
port=${surl##*:}

echo "== a port in use names --listen, not the directory"
check "standby" said 1 "--listen 127.0.0.1:$port: the port is in use by another process" \
  standby --dir "$work/s2" --listen "127.0.0.1:$port"
check "and its directory was not created" test ! -e "$work/s2"
check "primary" said 1 "--listen 127.0.0.1:$port: the port is in use" \
  primary --dir "$work/p2" --listen "127.0.0.1:$port" --saves 1
check "the message does not blame a directory" bash -c "! grep -q '$work/p2' '$work/err'"

echo "== a missing TLS file names the file"
check "--tls-cert missing" said 1 "--tls-cert $work/none.pem: No such file or directory" \
  standby --dir "$work/s3" --listen 127.0.0.1:0 --tls-cert "$work/none.pem" --tls-key "$work/k.pem"
check "and the directory was not created" test ! -e "$work/s3"
: >"$work/cert.pem"
check "--tls-key missing" said 1 "--tls-key $work/k.pem: No such file or directory" \
  standby --dir "$work/s4" --listen 127.0.0.1:0 --tls-cert "$work/cert.pem" --tls-key "$work/k.pem"
: >"$work/k.pem"
check "files that are no certificate and key" said 1 \
  "--tls-cert $work/cert.pem / --tls-key $work/k.pem: not accepted" \
  standby --dir "$work/s5" --listen 127.0.0.1:0 --tls-cert "$work/cert.pem" --tls-key "$work/k.pem"

echo "== a URL of another scheme names the URL and the scheme (exit 2)"
check "--standby htp://" said 2 \
  "--standby htp://127.0.0.1:8470: the scheme must be http or https, not 'htp'" \
  primary --dir "$work/p3" --standby htp://127.0.0.1:8470
check "--standby without a scheme" said 2 "--standby 127.0.0.1:8470: not a URL" \
  primary --dir "$work/p3" --standby 127.0.0.1:8470
check "and nothing was created" test ! -e "$work/p3"
check "backup --from htp://" said 2 "htp://127.0.0.1:9: the scheme must be http or https" \
  backup --from htp://127.0.0.1:9 --out "$work/b0"
check "status htp://" said 2 "htp://127.0.0.1:9: the scheme must be http or https" \
  status htp://127.0.0.1:9

echo "== backup from a URL where nothing listens fails fast"
start=$(date +%s%N)
check "connection refused: exit 1, the URL named" said 1 \
  "http://127.0.0.1:9/v1/backup: Couldn't connect to server" \
  backup --from http://127.0.0.1:9 --out "$work/b1"
ms=$((($(date +%s%N) - start) / 1000000))
check "within 5 s (took $ms ms; it retried for ~79 s before)" test "$ms" -lt 5000
check "and left nothing behind" bash -c "! ls '$work' | grep -q '^b1'"

echo "== verify: 0 agree, 1 corrupt, 2 no image, 3 in use"
"$LOOMSHIP" primary --dir "$work/v" --saves 5 --rate 100 >/dev/null 2>&1
check "a good directory: 0" said 0 "" verify "$work/v"
cp -a "$work/v" "$work/vc"
printf '\377\377\377\377' | dd of="$work/vc/image" bs=1 seek=100 conv=notrunc 2>/dev/null
check "a changed image byte: 1" said 1 "checksum mismatch" verify "$work/vc"
check "no such directory: 2" said 2 "$work/none" verify "$work/none"
mkdir "$work/empty-not-store"; : >"$work/empty-not-store/junk"
check "a directory without an image: 2" said 2 "$work/empty-not-store" verify "$work/empty-not-store"
check "a live standby's directory: 3" said 3 "$work/s:" verify "$work/s"
finish
