#!/usr/bin/env bash
# units_test.sh: the systemd units (deploy/) pass `systemd-analyze verify`
# (with the build's binary in place of /usr/local/bin/loomship; no output
# at all is allowed), and the two daemons' units score "OK" or better in
# `systemd-analyze security`. Skips (77) where systemd-analyze is missing.
# Running a unit for real (systemd-run) needs systemd as PID 1, which a
# container here does not have: that part is not run.
# Usage: units_test.sh [PATH/TO/loomship]
set -euo pipefail
command -v systemd-analyze >/dev/null || { echo "SKIP: no systemd-analyze"; exit 77; }
dir=$(dirname "$0")/../../deploy
bin=$(readlink -f "${1:-/usr/local/bin/loomship}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# verify DIR: systemd-analyze verify on every unit there; its output
verify() {
  (cd "$1" && systemd-analyze verify --man=no ./*.service ./*.timer 2>&1) || echo "exit $?"
}

mkdir "$work/units" "$work/broken"
cp "$dir"/loomship-*.service "$dir"/loomship-*.timer "$work/units/"
sed -i "s#/usr/local/bin/loomship#$bin#g" "$work/units"/*
out=$(verify "$work/units")
if [ -n "$out" ]; then
  echo "FAIL: systemd-analyze verify:"; echo "$out"; exit 1
fi
echo "ok: systemd-analyze verify: $(ls "$work/units" | xargs)"
# The check can fail: a unit with a misspelt key and a missing binary does.
cp "$work/units"/* "$work/broken/"
sed -i "s#^ExecStart=$bin#ExecStartt=/nonexistent/loomship#" "$work/broken/loomship-standby.service"
out=$(verify "$work/broken")
[ -n "$out" ] || { echo "FAIL: verify said nothing about a broken unit"; exit 1; }
echo "ok: a broken unit is reported ($(echo "$out" | head -1))"

for unit in "$dir"/loomship-standby.service "$dir"/loomship-primary.service; do
  line=$(systemd-analyze security --offline=yes "$unit" 2>&1 | grep 'Overall exposure level')
  echo "$(basename "$unit"): $line"
  score=$(echo "$line" | sed -E 's/.*: ([0-9.]+) .*/\1/')
  awk -v s="$score" 'BEGIN { exit !(s <= 4.9) }' || { echo "exposure $score is above OK"; exit 1; }
done
if [ "$(cat /proc/1/comm 2>/dev/null)" != systemd ]; then
  echo "note: PID 1 is $(cat /proc/1/comm 2>/dev/null || echo unknown), not systemd: no unit is run for real here"
fi
