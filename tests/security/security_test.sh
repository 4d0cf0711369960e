#!/usr/bin/env bash
# security_test.sh: issue 6, suite 6, with real loomship processes on
# 127.0.0.1 (ephemeral ports).
#   - every write, base, backup and promote request without the right token
#     (none, wrong, a prefix, an extension, another scheme) is refused 401
#     and logged, one line each; the right token is accepted (so the check
#     can fail); status, metrics and health need no token;
#   - a primary with the wrong token replicates nothing and says
#     "unauthorized";
#   - a standby promoted to a newer epoch refuses the old primary's frames
#     (the old primary is fenced) and its image does not move;
#   - the token and the TLS private key never appear in logs, status,
#     metrics, process arguments (ps -o args) or the environment;
#   - TLS: status, backup and the shipper refuse a self-signed certificate
#     without --ca-file, a certificate from another CA, and a certificate
#     for another host name; they accept the right --ca-file.
# Usage: security_test.sh PATH/TO/loomship
TEST_NAME=sec
. "$(dirname "$0")/../lib/testlib.sh"

for tool in curl python3; do
  command -v $tool >/dev/null || { echo "SKIP: $tool missing"; exit 77; }
done

# start_node NAME ROLE [args...]: starts `loomship ROLE`, waits for its
# "listening on" line, sets URL_<NAME> and PID_<NAME>.
start_node() {
  local name=$1 role=$2; shift 2
  "$LOOMSHIP" "$role" --dir "$work/$name" "$@" \
    >"$work/$name.out" 2>"$work/$name.err" &
  local pid=$!
  pids+=("$pid")
  local url=
  for _ in $(seq 200); do
    url=$(grep -o 'https\?://[0-9.]*:[0-9]*' "$work/$name.out" 2>/dev/null | head -1)
    [ -n "$url" ] && break
    sleep 0.05
  done
  eval "URL_$name=$url; PID_$name=$pid"
}
stop_node() { kill -TERM "$1" 2>/dev/null; wait "$1" 2>/dev/null; }
code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$token" >"$work/token"
echo "wrong-$token" >"$work/wrong-token"
chmod 600 "$work/token" "$work/wrong-token"

echo "== every write, base, backup and promote without the right token: 401, logged"
start_node s1 standby --listen 127.0.0.1:0 --token-file "$work/token"
declare -a requests=(
  "POST /v1/frames" "PUT /v1/base" "POST /v1/promote" "GET /v1/backup" "HEAD /v1/backup")
declare -a auths=(
  "" "Authorization: Bearer wrong" "Authorization: Bearer ${token:0:47}"
  "Authorization: Bearer ${token}x" "Authorization: Basic $token"
  "Authorization: Bearer" "Authorization: Bearer $token $token")
refused=0
for req in "${requests[@]}"; do
  method=${req% *} path=${req#* }
  for auth in "${auths[@]}"; do
    args=(-X "$method")
    [ "$method" = HEAD ] && args=(-I)
    [ "$method" = GET ] && args=()
    [ "$method" != GET ] && [ "$method" != HEAD ] && args+=(--data-binary @/dev/null)
    [ -n "$auth" ] && args+=(-H "$auth")
    c=$(code "${args[@]}" "$URL_s1$path")
    if [ "$c" = 401 ]; then refused=$((refused + 1)); else
      bad "$method $path with '${auth:0:30}...' answered $c, not 401"; fi
  done
done
total=$(( ${#requests[@]} * ${#auths[@]} ))
check "$refused of $total unauthorized requests refused 401" test "$refused" -eq "$total"
sleep 0.2
logged=$(grep -c ' 401 ' "$work/s1.err" "$work/s1.out" | awk -F: '{s+=$2} END {print s}')
check "each refusal logged ($logged lines for $total)" test "$logged" -eq "$total"
check "the applied position did not move" test \
  "$(curl -s "$URL_s1/v1/status" | json 'd["applied"]["seq"], d["epoch"], d["role"]')" = "0 1 standby"
check "backup with the right token: 200" test \
  "$(code -H "Authorization: Bearer $token" "$URL_s1/v1/backup")" = 200
for p in /v1/status /metrics /healthz /readyz; do
  check "GET $p needs no token" test "$(code "$URL_s1$p")" = 200
done

echo "== a primary with the wrong token replicates nothing"
"$LOOMSHIP" primary --dir "$work/pw" --standby "$URL_s1" --token-file "$work/wrong-token" \
  --saves 0 --rate 100 --pages 4 --drain-timeout 1 --listen 127.0.0.1:0 \
  >"$work/pw.out" 2>"$work/pw.err" &
ppid=$!; pids+=("$ppid")
state=
for _ in $(seq 150); do
  url=$(grep -o 'http://[0-9.]*:[0-9]*' "$work/pw.out" 2>/dev/null | head -1)
  [ -n "$url" ] && state=$(curl -s "$url/v1/status" | json 'd["standbys"][0]["state"]' 2>/dev/null)
  [ "$state" = unauthorized ] && break
  sleep 0.1
done
check "the primary reports the standby as unauthorized (got '$state')" test "$state" = unauthorized
sleep 0.5
kill -TERM "$ppid"; wait "$ppid" 2>/dev/null
check "the primary committed saves meanwhile" test \
  "$("$LOOMSHIP" inspect "$work/pw" --json | json 'd["seq"]')" -gt 0
check "the standby applied nothing" test \
  "$(curl -s "$URL_s1/v1/status" | json 'd["applied"]["seq"]')" = 0

echo "== a standby at a newer epoch refuses the old primary's frames"
start_node s2 standby --listen 127.0.0.1:0 --token-file "$work/token"
"$LOOMSHIP" primary --dir "$work/p2" --standby "$URL_s2" --token-file "$work/token" \
  --saves 20 --rate 200 --pages 4 >"$work/p2.out" 2>"$work/p2.err"
wait_applied() { # URL SEQ: up to 10 s
  for _ in $(seq 100); do
    [ "$(curl -s "$1/v1/status" | json 'd["applied"]["seq"]' 2>/dev/null)" = "$2" ] && return 0
    sleep 0.1
  done
  return 1
}
check "primary p2 replicated 20 saves" wait_applied "$URL_s2" 20
check "promote s2" "$LOOMSHIP" promote "$URL_s2" --token-file "$work/token"
before=$(curl -s "$URL_s2/v1/status" | json 'd["epoch"], d["applied"]["seq"], d["applied"]["checksum"]')
"$LOOMSHIP" primary --dir "$work/p2" --standby "$URL_s2" --token-file "$work/token" \
  --saves 5 --rate 200 --pages 4 --drain-timeout 2 >>"$work/p2.out" 2>>"$work/p2.err"
after=$(curl -s "$URL_s2/v1/status" | json 'd["epoch"], d["applied"]["seq"], d["applied"]["checksum"]')
check "the promoted node is at epoch 2 and did not move ($before -> $after)" \
  test "$before" = "$after" -a "${after%% *}" = 2
check "the old primary says it was fenced" grep -qi fenc "$work/p2.out" "$work/p2.err"
stop_node "$PID_s2"

echo "== TLS: verification failures refused by every client"
if ! command -v openssl >/dev/null; then
  echo "SKIP (TLS part): openssl missing"
else
  mkcert() { # NAME SUBJECT-ALT-NAME
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=$1" \
      -addext "subjectAltName=$2" -keyout "$work/$1.key" -out "$work/$1.pem" \
      >/dev/null 2>&1
  }
  mkcert good IP:127.0.0.1
  mkcert other IP:127.0.0.1
  mkcert wrongname DNS:elsewhere.invalid
  chmod 600 "$work"/*.key
  start_node st standby --listen 127.0.0.1:0 --token-file "$work/token" \
    --tls-cert "$work/good.pem" --tls-key "$work/good.key"
  check "the TLS standby serves https" test "${URL_st:0:8}" = "https://"
  check "status without --ca-file fails" bash -c \
    "! \"$LOOMSHIP\" status $URL_st >/dev/null 2>&1"
  check "status with another CA fails" bash -c \
    "! \"$LOOMSHIP\" status $URL_st --ca-file \"$work/other.pem\" >/dev/null 2>&1"
  check "status with the right --ca-file works" \
    "$LOOMSHIP" status "$URL_st" --ca-file "$work/good.pem"
  check "backup without --ca-file fails, writes nothing" bash -c \
    "! \"$LOOMSHIP\" backup --from $URL_st --out \"$work/b1\" --token-file \"$work/token\" --retries 0 >/dev/null 2>&1 && test ! -e \"$work/b1\""
  check "backup with the right --ca-file works" "$LOOMSHIP" backup --from "$URL_st" \
    --out "$work/b2" --token-file "$work/token" --ca-file "$work/good.pem"
  "$LOOMSHIP" primary --dir "$work/pt" --standby "$URL_st" --token-file "$work/token" \
    --saves 5 --rate 100 --pages 4 --drain-timeout 2 >"$work/pt.out" 2>"$work/pt.err"
  check "the shipper without --ca-file delivers nothing" test \
    "$(curl -s --cacert "$work/good.pem" "$URL_st/v1/status" | json 'd["applied"]["seq"]')" = 0
  "$LOOMSHIP" primary --dir "$work/pt" --standby "$URL_st" --token-file "$work/token" \
    --saves 5 --rate 100 --pages 4 --drain-timeout 2 --ca-file "$work/other.pem" \
    >>"$work/pt.out" 2>>"$work/pt.err"
  check "the shipper with another CA delivers nothing" test \
    "$(curl -s --cacert "$work/good.pem" "$URL_st/v1/status" | json 'd["applied"]["seq"]')" = 0
  "$LOOMSHIP" primary --dir "$work/pt" --standby "$URL_st" --token-file "$work/token" \
    --saves 5 --rate 100 --pages 4 --ca-file "$work/good.pem" \
    >>"$work/pt.out" 2>>"$work/pt.err"
  want=$("$LOOMSHIP" inspect "$work/pt" --json | json 'd["seq"], d["checksum"]')
  for _ in $(seq 100); do
    got=$(curl -s --cacert "$work/good.pem" "$URL_st/v1/status" | json 'd["applied"]["seq"], d["applied"]["checksum"]')
    [ "$got" = "$want" ] && break
    sleep 0.1
  done
  check "the shipper with the right --ca-file delivers everything ($got = $want)" \
    test "$got" = "$want" -a "${want%% *}" -gt 0
  check "the refused attempts were reported as certificate problems" \
    grep -qi 'certificate' "$work/pt.out" "$work/pt.err"
  stop_node "$PID_st"
  start_node sw standby --listen 127.0.0.1:0 --tls-cert "$work/wrongname.pem" \
    --tls-key "$work/wrongname.key"
  check "status refuses a certificate for another host name" bash -c \
    "! \"$LOOMSHIP\" status $URL_sw --ca-file \"$work/wrongname.pem\" >/dev/null 2>&1"
  check "backup refuses a certificate for another host name" bash -c \
    "! \"$LOOMSHIP\" backup --from $URL_sw --out \"$work/b3\" --retries 0 --ca-file \"$work/wrongname.pem\" >/dev/null 2>&1"
fi

echo "== secrets never in logs, status, metrics, arguments or environment"
start_node s3 standby --listen 127.0.0.1:0 --token-file "$work/token" \
  ${URL_st:+--tls-cert "$work/good.pem" --tls-key "$work/good.key"}
cacert=()
[ -n "${URL_st:-}" ] && cacert=(--cacert "$work/good.pem")
"$LOOMSHIP" primary --dir "$work/p3" --standby "$URL_s3" --token-file "$work/token" \
  ${URL_st:+--ca-file "$work/good.pem"} --saves 0 --rate 50 --pages 4 \
  --listen 127.0.0.1:0 >"$work/p3.out" 2>"$work/p3.err" &
ppid=$!; pids+=("$ppid")
sleep 1.5
p3url=$(grep -o 'http://[0-9.]*:[0-9]*' "$work/p3.out" | head -1)
{
  for u in "$URL_s3" "$p3url"; do
    for p in /v1/status /metrics; do
      curl -s "${cacert[@]}" "$u$p"
      curl -s "${cacert[@]}" -H "Authorization: Bearer $token" "$u$p"
    done
  done
  # a client sending a wrong token must not get it echoed either
  curl -s "${cacert[@]}" -H "Authorization: Bearer wrong-$token" "$URL_s3/v1/backup"
  "$LOOMSHIP" status "$URL_s3" --json ${URL_st:+--ca-file "$work/good.pem"}
  ps -eo args
  cat "/proc/$ppid/cmdline" "/proc/$PID_s3/cmdline" | tr '\0' ' '
  cat "/proc/$ppid/environ" "/proc/$PID_s3/environ" | tr '\0' '\n'
} >"$work/exposed.txt" 2>&1
kill -TERM "$ppid"; wait "$ppid" 2>/dev/null
stop_node "$PID_s3"
stop_node "$PID_s1"
cat "$work"/*.out "$work"/*.err >>"$work/exposed.txt"
check "the exposure sample is not empty ($(wc -c <"$work/exposed.txt") bytes)" \
  test "$(wc -c <"$work/exposed.txt")" -gt 1000
check "the token appears nowhere" bash -c "! grep -qF '$token' '$work/exposed.txt'"
if [ -f "$work/good.key" ]; then
  keyline=$(sed -n 5p "$work/good.key")
  check "the TLS key appears nowhere" bash -c "! grep -qF '$keyline' '$work/exposed.txt'"
fi

echo "security: $passes passed, $failures failed"
[ "$failures" -eq 0 ]
