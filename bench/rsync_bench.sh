#!/bin/sh
# rsync_bench.sh: catch-up of a stopped standby against rsync --inplace
# (issue 7 item 5). A 1 GiB image (65,536 pages of 16 KiB, random bytes);
# the primary changes 1 % of its pages (655 pages, a run of 64 random bytes
# each, in 10 saves) while the standby is stopped.
#   loomship: lag_bench catchup (in-process primary, standby restarted on
#             the same port and directory): time from the restart until the
#             standby has applied the last save, and bytes on the wire
#             (shipper's bytes_wire); it also writes the image before and
#             after the changes.
#   rsync:    an rsync daemon on 127.0.0.1 (temporary config, started here);
#             the standby copy is the image before, brought up to date with
#             `rsync --inplace --stats new.img rsync://127.0.0.1:PORT/m/image`;
#             wall time and "Total bytes sent" + "Total bytes received";
#             the result is checked with cmp. Repeated (the copy is reset
#             between repeats); page cache warm on both sides.
# Usage: bench/rsync_bench.sh BUILD_DIR [--quick]
set -eu
BUILD=${1:?usage: rsync_bench.sh BUILD_DIR [--quick]}
REPS=$([ "${2:-}" = "--quick" ] && echo 2 || echo 3)
command -v rsync >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y rsync >/dev/null
W=$(mktemp -d /tmp/rsync_bench.XXXXXX)
DPID=
cleanup() { [ -n "$DPID" ] && kill "$DPID" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT INT TERM
"$BUILD/bench/lag_bench" catchup --image-pages 65536 --pages 64 --dir "$W" --rsync-dir "$W"
mkdir "$W/dst"
PORT=$((40000 + $$ % 20000))
cat > "$W/rsyncd.conf" <<CONF
pid file = $W/rsyncd.pid
use chroot = false
[m]
  path = $W/dst
  read only = false
  uid = root
  gid = root
CONF
rsync --daemon --no-detach --config="$W/rsyncd.conf" --address=127.0.0.1 --port=$PORT &
DPID=$!
sleep 0.5
T=""; B=""
for r in $(seq 1 $REPS); do
  cp "$W/old.img" "$W/dst/image"
  sync
  t0=$(date +%s.%N)
  rsync --inplace --stats "$W/new.img" "rsync://127.0.0.1:$PORT/m/image" > "$W/stats" 2>&1
  t1=$(date +%s.%N)
  cmp -s "$W/new.img" "$W/dst/image" || { echo "rsync_bench: copy differs" >&2; exit 1; }
  bytes=$(awk '/^Total bytes sent/ { gsub(",", "", $4); s = $4 } /^Total bytes received/ { gsub(",", "", $4); r = $4 } END { print s + r }' "$W/stats")
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')
  echo "# rsync --inplace repeat $r: $secs s, $bytes bytes"
  T="$T $secs"; B="$B $bytes"
done
stat3() { echo $@ | tr ' ' '\n' | sort -g | awk '{ v[NR] = $1 } END { printf "%.6g %.6g %.6g", v[int((NR + 1) / 2)], v[1], v[NR] }'; }
echo "RESULT rsync_seconds $(stat3 $T) s -=0 0"
echo "RESULT rsync_bytes $(stat3 $B) B -=0 0"
