#!/usr/bin/env bash
# repair_test.sh: damage that used to leave a node stuck until a person
# acted (issue 11, "Stuck until a person acts", the storage side), with real
# loomship processes on 127.0.0.1:
#   1. a damaged *older* replication-log segment: the primary starts anyway,
#      says which file and which seqs it dropped, and a standby that needed
#      them gets a base image and ends identical (inspect both, cmp images);
#   2. a deleted hashes file (derived data) is rebuilt: verify passes and
#      the directory opens again as a primary and as a standby;
#   3. a damaged meta (both slots) is one message that names DIR/meta and
#      what to do, from verify, inspect, standby and primary alike.
# Usage: repair_test.sh PATH/TO/loomship
TEST_NAME=repair
. "$(dirname "$0")/../lib/testlib.sh"

declare -A URL PID PORT
start_standby() { # NAME [EXTRA ARGS...]
  local name=$1; shift
  : >"$work/$name.out"
  "$LOOMSHIP" standby --dir "$work/$name" --listen "127.0.0.1:${PORT[$name]:-0}" "$@" \
    >"$work/$name.out" 2>>"$work/$name.err" &
  PID[$name]=$!
  pids+=("${PID[$name]}")
  for _ in $(seq 200); do grep -q listening "$work/$name.out" && break; sleep 0.05; done
  URL[$name]=$(grep -o 'http://[0-9.]*:[0-9]*' "$work/$name.out" | head -1)
  PORT[$name]=${URL[$name]##*:}
}
stop_standby() { kill -TERM "${PID[$1]}"; wait "${PID[$1]}" 2>/dev/null; }
status() { curl -s "$1/v1/status" | python3 -c "import json,sys; d=json.load(sys.stdin); print($2)"; }
inspect_json() { "$LOOMSHIP" inspect "$1" --json; }
quiet() { "$@" >/dev/null; }
seq_of() { inspect_json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["seq"])'; }
wait_applied() { # URL SEQ
  for _ in $(seq 400); do
    [ "$(status "$1" 'd["applied"]["seq"]' 2>/dev/null)" = "$2" ] && return 0
    sleep 0.05
  done
  return 1
}
identical() { # DIR DIR
  cmp -s "$1/image" "$2/image" && [ "$(inspect_json "$1")" = "$(inspect_json "$2")" ]
}
flip_byte() { # FILE OFFSET
  python3 - "$1" "$2" <<'EOF'
import sys
path, off = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    f.seek(off); b = f.read(1); f.seek(off); f.write(bytes([b[0] ^ 0x40]))
EOF
}

echo "== 1. a damaged older replication-log segment"
start_standby a
"$LOOMSHIP" primary --dir "$work/p" --standby "${URL[a]}" --saves 20 --rate 1000 \
  --pages 32 --log-max-mb 1 >/dev/null 2>"$work/p.err"
stop_standby a
# The standby is away: the log keeps every frame from seq 21 on, in
# segments of 128 KiB.
"$LOOMSHIP" primary --dir "$work/p" --standby "${URL[a]}" --saves 200 --rate 1000 \
  --pages 32 --log-max-mb 1 --drain-timeout 1 >/dev/null 2>>"$work/p.err"
segs=("$work"/p/replog/seg-*.log)
check "the log has several segments (${#segs[@]})" test "${#segs[@]}" -ge 3
damaged=${segs[1]}
size=$(stat -c %s "$damaged")
flip_byte "$damaged" $((size / 2))
start_standby a
"$LOOMSHIP" primary --dir "$work/p" --standby "${URL[a]}" --saves 5 --rate 100 \
  --pages 8 --log-max-mb 1 >/dev/null 2>"$work/p2.err"
rc=$?
check "the primary started and finished despite the damage (exit $rc)" test "$rc" = 0
check "it said which file it dropped" grep -q "replication log repaired: replog/$(basename "$damaged"): damaged at byte" "$work/p2.err"
check "and which seqs" grep -qE "replog/$(basename "$damaged"): damaged at byte [0-9]+: removed, with seqs [0-9]+-[0-9]+" "$work/p2.err"
check "and the older segment it dropped with it" grep -q "replog/$(basename "${segs[0]}"): older than a damaged segment" "$work/p2.err"
check "the damaged file is gone" test ! -e "$damaged"
check "the standby converged to seq $(seq_of "$work/p")" wait_applied "${URL[a]}" "$(seq_of "$work/p")"
check "it was sent a base image (seq 21 was dropped)" \
  test "$(status "${URL[a]}" 'd["counters"]["base_images"]')" -ge 1
stop_standby a
check "the standby ends identical to the primary" identical "$work/p" "$work/a"
check "verify passes on the standby" quiet "$LOOMSHIP" verify "$work/a"
check "verify passes on the primary" quiet "$LOOMSHIP" verify "$work/p"

echo "== 2. a deleted hashes file is rebuilt"
rm "$work/p/hashes"
check "verify passes (and rebuilds it)" quiet "$LOOMSHIP" verify "$work/p"
check "the hashes file is back" test -s "$work/p/hashes"
rm "$work/p/hashes" "$work/a/hashes"
check "inspect works without it" quiet inspect_json "$work/p"
start_standby a
check "a standby opens without it" grep -q listening "$work/a.out"
check "it has its hashes back" test -s "$work/a/hashes"
"$LOOMSHIP" primary --dir "$work/p" --standby "${URL[a]}" --saves 5 --rate 100 \
  --pages 8 >/dev/null 2>"$work/p3.err"
prc=$?
check "a primary opens without it (exit $prc)" test "$prc" = 0
check "and has its hashes back" test -s "$work/p/hashes"
check "the standby follows" wait_applied "${URL[a]}" "$(seq_of "$work/p")"
stop_standby a
check "both identical" identical "$work/p" "$work/a"

echo "== 3. a damaged meta: one message naming DIR/meta and what to do"
python3 -c "import sys; open(sys.argv[1], 'r+b').write(b'\x5a' * 1024)" "$work/a/meta"
names_meta() { # CMD_ERR_FILE
  grep -q "$work/a/meta" "$1" && [ "$(wc -l <"$1")" -le 2 ]
}
"$LOOMSHIP" verify "$work/a" >/dev/null 2>"$work/v.err"
check "verify exits 1 (corrupt)" test $? = 1
check "verify names the meta file" names_meta "$work/v.err"
"$LOOMSHIP" inspect "$work/a" >/dev/null 2>"$work/i.err"
check "inspect fails" test $? != 0
check "inspect names the meta file" names_meta "$work/i.err"
"$LOOMSHIP" standby --dir "$work/a" --listen 127.0.0.1:0 >/dev/null 2>"$work/s.err"
check "the standby refuses to start" test $? = 1
check "the standby names the meta file" grep -q "$work/a/meta" "$work/s.err"
check "and offers --resync-from" grep -q -- "--resync-from" "$work/s.err"
check "the image was left alone" cmp -s "$work/a/image" "$work/p/image"
cp "$work/a/meta" "$work/p/meta"
"$LOOMSHIP" primary --dir "$work/p" --saves 1 >/dev/null 2>"$work/pm.err"
check "the primary refuses to start" test $? = 1
check "the primary names the meta file" grep -q "$work/p/meta" "$work/pm.err"
finish
