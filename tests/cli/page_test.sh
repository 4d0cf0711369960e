#!/usr/bin/env bash
# page_test.sh: GET / (DESIGN.md section 5), the one-page status view, with
# real loomship processes on 127.0.0.1: it is HTML with nothing from
# elsewhere (inline CSS and JS, a Content-Security-Policy), it needs no
# token, and once headless Chromium has run its script it shows the role
# and, on a primary, a row per standby with its state and lag, and a lag
# chart. `loomship demo` prints its URL. Skips (77) without chromium.
# Usage: page_test.sh PATH/TO/loomship
TEST_NAME=page
. "$(dirname "$0")/../lib/testlib.sh"
command -v curl >/dev/null || { echo "SKIP: curl missing"; exit 77; }
CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
[ -n "$CHROMIUM" ] || { echo "SKIP: chromium missing (./test installs Debian's chromium)"; exit 77; }

# dom URL FILE: the DOM after the page's script ran (virtual time: polls
# happen without waiting in real time)
dom() {
  timeout 60 "$CHROMIUM" --headless --no-sandbox --disable-gpu --user-data-dir="$work/chrome" \
    --virtual-time-budget=4000 --dump-dom "$1" >"$2" 2>"$work/chrome.err"
}

printf 'page-token-0123456789abcdef\n' >"$work/tok"
chmod 600 "$work/tok"
start_node s standby --dir "$work/s" --listen 127.0.0.1:0 --token-file "$work/tok"
surl=$url
start_node p primary --dir "$work/p" --standby "$surl" --token-file "$work/tok" --rate 20 --pages 4 \
  --listen 127.0.0.1:0
purl=$url

echo "== GET / is one HTML document with nothing from elsewhere"
curl -s -D "$work/head" -o "$work/page.html" "$purl/"
check "200 without a token" grep -q '^HTTP/1.1 200' "$work/head"
check "text/html" grep -qi '^Content-Type: text/html; charset=utf-8' "$work/head"
check "a Content-Security-Policy that allows only this node" \
  grep -qi "^Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'" "$work/head"
check "no external asset (no src=, no absolute URL)" \
  bash -c "! grep -Eq 'src=|https?://|//[a-z]' '$work/page.html'"
check "HEAD / answers too" bash -c "curl -sI '$purl/' | grep -q '^HTTP/1.1 200'"

echo "== rendered by headless Chromium"
# The standby must be streaming before the snapshot (poll the status).
for _ in $(seq 100); do
  curl -s "$purl/v1/status" | grep -q '"state":"streaming"' && break
  sleep 0.1
done
dom "$purl/" "$work/primary.dom"
check "the primary's page shows its role" grep -q '<span id="role">primary</span>' "$work/primary.dom"
check "a standby row with its url and state" \
  grep -Eq "<tr class=\"standby\" data-url=\"$surl\"><td>$surl</td><td class=\"ok\">streaming</td>" "$work/primary.dom"
check "the status arrived (#updated has a time)" grep -Eq 'id="updated">20[0-9-]+T' "$work/primary.dom"
check "the lag chart has a line for the standby" grep -q '<polyline class="lag"' "$work/primary.dom"
dom "$surl/" "$work/standby.dom"
check "the standby's page shows its role" grep -q '<span id="role">standby</span>' "$work/standby.dom"
check "and its lag" grep -Eq '<td id="lag">[0-9]+ frames, [0-9]+ bytes, [0-9.]+ s</td>' "$work/standby.dom"

echo "== loomship demo prints its URL"
timeout 60 "$LOOMSHIP" demo --seconds 1 >"$work/demo.out" 2>&1
check "a 'page' line with the standby's URL" grep -Eq '^page +http://127.0.0.1:[0-9]+/ ' "$work/demo.out"
finish
