#!/usr/bin/env bash
# options_test.sh: the command line's contract (DESIGN.md section 5). For
# every subcommand: the options its --help lists (name, value, default, in
# order) are the ones docs/loomship.1 documents under it; it answers
# --version with "loomship X.Y.Z (commit C)"; an unknown option is named in
# one line with exit 2.
# Usage: options_test.sh PATH/TO/loomship PATH/TO/loomship.1
TEST_NAME=options
. "$(dirname "$0")/../lib/testlib.sh"
MAN=$(readlink -f "$2")
# Every subcommand `loomship --help` lists (so a new command is covered
# once it is in that list).
COMMANDS=$("$LOOMSHIP" --help | awk '/^  [a-z][a-z-]* +[^ ]/ { print $1 }' | xargs)
[ -n "$COMMANDS" ] || { echo "FAIL: loomship --help lists no subcommands"; exit 1; }
echo "subcommands: $COMMANDS"

# help_options CMD: "name|VALUE|default" per option of CMD's --help, in
# order (default "required" for a required option, empty when none shown).
help_options() {
  "$LOOMSHIP" "$1" --help | awk '
    function flush() { if (name != "") print name "|" arg "|" dflt; name = "" }
    function take(text) {
      dflt = ""
      if (match(text, /\[[^]]*\]$/)) dflt = substr(text, RSTART + 1, RLENGTH - 2)
    }
    /^  (-h, )?--[a-z]/ {
      flush()
      line = $0; sub(/^  (-h, )?--/, "", line)
      left = line; text = ""
      if (match(line, /  +/)) { left = substr(line, 1, RSTART - 1); text = substr(line, RSTART + RLENGTH) }
      n = split(left, part, " "); name = part[1]; arg = n > 1 ? part[2] : ""
      take(text); next
    }
    /^                          [^ ]/ && name != "" {
      text = text " " substr($0, 27); take(text); next
    }
    { flush() }
    END { flush() }' | grep -v -e '^help|' -e '^version|'
}

# man_options CMD: the same from the man page's ".SS CMD" section.
man_options() {
  sed 's/\\-/-/g' "$MAN" | awk -v cmd="$1" '
    function flush() { if (name != "") print name "|" arg "|" dflt; name = "" }
    /^\.S[SH] / { flush(); inside = ($1 == ".SS" && $2 == cmd); next }
    !inside { next }
    /^\.TP/ { flush(); tag = 1; next }
    tag && /^\.BI? --/ {
      tag = 0; name = $2; sub(/^--/, "", name); arg = ""; dflt = ""
      if (match($0, /" [^"]*"/)) arg = substr($0, RSTART + 2, RLENGTH - 3)
      next
    }
    name != "" && /^Default: .*\.$/ { dflt = substr($0, 10, length($0) - 10) }
    name != "" && /^Required\.$/ { dflt = "required" }
    END { flush() }'
}

echo "== the man page has every subcommand and the sections operators look for"
for c in $COMMANDS; do
  check "$c: a .SS section and a SYNOPSIS line" bash -c \
    "grep -qx '.SS $c' '$MAN' && sed -n '/^.SH SYNOPSIS/,/^.SH DESCRIPTION/p' '$MAN' | grep -qx '.B loomship $c.*'"
done
for section in "EXIT STATUS" SIGNALS ENVIRONMENT FILES EXAMPLES; do
  check "section $section" grep -qx ".SH $section" "$MAN"
done

echo "== --help and the man page list the same options"
for c in $COMMANDS; do
  h=$(help_options "$c"); m=$(man_options "$c")
  if [ "$h" = "$m" ]; then
    ok "$c: $(echo "$h" | grep -c .) options agree"
  else
    bad "$c: --help and docs/loomship.1 disagree (< help, > man):"
    diff <(echo "$h") <(echo "$m") | grep '^[<>]'
  fi
  check "$c --help lists -h, --help and --version" \
    bash -c "\"$LOOMSHIP\" $c --help | grep -q -- '^  -h, --help' &&
             \"$LOOMSHIP\" $c --help | grep -q -- '^  --version'"
  check "$c -h prints the usage line" bash -c "\"$LOOMSHIP\" $c -h | grep -q '^usage: loomship $c'"
done

echo "== --version everywhere"
version_ok() { # ARGS...
  local out; out=$("$LOOMSHIP" "$@"); [ $? -eq 0 ] &&
    [[ $out =~ ^loomship\ [0-9]+\.[0-9]+\.[0-9]+\ \(commit\ ([0-9a-f]{7,}|unknown)\)$ ]]
}
check "loomship --version: $("$LOOMSHIP" --version)" version_ok --version
for c in $COMMANDS; do
  check "$c --version" version_ok "$c" --version
done

echo "== an unknown or malformed option is named in one line, exit 2"
named() { # WHAT-IN-MESSAGE ARGS...
  local what=$1; shift
  local out rc; out=$("$LOOMSHIP" "$@" 2>&1 >/dev/null); rc=$?
  [ "$rc" -eq 2 ] && [ "$(echo "$out" | wc -l)" -eq 1 ] && [[ $out == *"$what"* ]] ||
    { echo "  exit $rc: $out"; return 1; }
}
for c in $COMMANDS; do
  check "$c --frobnicate" named \
    "loomship $c: unknown option '--frobnicate'; see 'loomship $c --help'" "$c" --frobnicate
done
check "a prefix of an option is unknown" named "unknown option '--drain'" \
  primary --dir "$work/p" --drain 3
check "a missing value is named" named "option '--dir' needs a value" primary --dir
check "a flag given a value is named" named "option '--json' takes no value" inspect x --json=1
check "a bad number is named" named "--rate must be a whole number" primary --dir x --rate=fast
check "a bad choice is named" named "--sync-fallback is fail or async" \
  primary --dir x --sync-fallback maybe
check "a missing required option is named" named "--listen HOST:PORT is required" \
  standby --dir x
check "a missing positional argument is named" named "URL is missing" status
check "an extra argument is named" named "unexpected argument 'y'" inspect x y
check "after --, an option is an argument" named "unexpected argument '--json'" \
  inspect x -- --json
check "-- then the positional argument" bash -c "\"$LOOMSHIP\" inspect -- \"$work/none\" 2>&1 |
  grep -q 'none'"
finish
