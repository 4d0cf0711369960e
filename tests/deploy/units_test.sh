#!/usr/bin/env bash
# The systemd units score "OK" or better in systemd-analyze security; skips
# (77) where systemd-analyze is missing.
set -euo pipefail
command -v systemd-analyze >/dev/null || { echo "no systemd-analyze: skipped"; exit 77; }
dir=$(dirname "$0")/../../deploy
for unit in "$dir"/loomship-standby.service "$dir"/loomship-primary.service; do
  line=$(systemd-analyze security --offline=yes "$unit" 2>&1 | grep 'Overall exposure level')
  echo "$(basename "$unit"): $line"
  score=$(echo "$line" | sed -E 's/.*: ([0-9.]+) .*/\1/')
  awk -v s="$score" 'BEGIN { exit !(s <= 4.9) }' || { echo "exposure $score is above OK"; exit 1; }
done
