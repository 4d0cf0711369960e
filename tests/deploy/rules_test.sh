#!/usr/bin/env bash
# The Prometheus rules and the Grafana dashboard in deploy/: the rules are
# valid and fire as tested (promtool check/test rules), and every metric
# they or the dashboard name is one a real primary or standby exports.
# Skips (77) where promtool is missing.
set -euo pipefail
loomship=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
. "$src/tests/testlib.sh"
command -v promtool >/dev/null || { echo "no promtool (Debian's prometheus): skipped"; exit 77; }
tl_setup rules

check "promtool check rules" promtool check rules "$src/deploy/prometheus/loomship.rules.yml"
check "promtool test rules" promtool test rules "$src/deploy/prometheus/loomship.rules.test.yml"
check "the dashboard is JSON" python3 -c "import json,sys; json.load(open(sys.argv[1]))" \
  "$src/deploy/grafana/loomship.json"

# A standby and a primary that shipped a few saves: their /metrics.
tl_start_standby "$T/standby"
"$loomship" primary --dir "$T/primary" --standby "$STANDBY_URL" --saves 5 --rate 50 \
  --listen 127.0.0.1:0 --keys 16 --arena-pages 128 --pages 2 >"$T/primary.out" 2>&1 &
ppid=$!
purl=$(tl_wait_line "$T/primary.out" 'listening on ' 10 | sed -E 's/.*listening on ([^ ]+).*/\1/')
tl_wait_http "$purl/metrics" 10
curl -fsS "$purl/metrics" >"$T/metrics"
tl_wait_http "$STANDBY_URL/metrics" 10
curl -fsS "$STANDBY_URL/metrics" >>"$T/metrics"
wait $ppid || true

names=$(grep -ohE 'loomship_[a-z_]+' "$src/deploy/prometheus/loomship.rules.yml" \
          "$src/deploy/grafana/loomship.json" | sort -u)
for n in $names; do
  case $n in loomship_replication) continue ;; esac # the dashboard's title words
  check "metric $n is exported" grep -qE "^(# TYPE )?$n[ {]" "$T/metrics"
done
tl_done
