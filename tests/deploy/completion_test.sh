#!/usr/bin/env bash
# completion_test.sh: deploy/loomship.bash completes every subcommand
# `loomship --help` lists, and for each exactly the options its --help
# lists (with -h's --help and --version), and the values of options that
# name a choice or a directory.
# Usage: completion_test.sh PATH/TO/loomship PATH/TO/loomship.bash
TEST_NAME=completion
. "$(dirname "$0")/../lib/testlib.sh"
. "$2"

# complete WORDS...: COMPREPLY for the last word, sorted, one a line
complete_words() {
  COMP_WORDS=("$LOOMSHIP" "$@")
  COMP_CWORD=$#
  _loomship
  printf '%s\n' "${COMPREPLY[@]}" | sort
}

subs=$("$LOOMSHIP" --help | awk '/^  [a-z][a-z-]* +[^ ]/ { print $1 }' | sort)
check "the subcommands: $(echo $subs)" \
  test "$(complete_words '')" = "$(printf '%s\n' $subs --help --version | sort)"
check "a prefix: st -> standby status" test "$(complete_words st | xargs)" = "standby status"
for c in $subs; do
  want=$("$LOOMSHIP" "$c" --help | grep -oE '^  (-h, )?--[a-z-]+' | sed -E 's/^  (-h, )?//' | sort)
  got=$(complete_words "$c" --)
  if [ "$want" = "$got" ]; then
    ok "$c: $(echo "$want" | grep -c .) options"
  else
    bad "$c: completion and --help disagree (< help, > completion)"
    diff <(echo "$want") <(echo "$got") | grep '^[<>]'
  fi
done
check "a choice: --log-format -> text json" \
  test "$(complete_words standby --log-format '' | xargs)" = "json text"
check "a choice: --sync-fallback a -> async" \
  test "$(complete_words primary --sync-fallback a | xargs)" = "async"
mkdir -p "$work/dirs/alpha" "$work/dirs/beta"
: >"$work/dirs/afile"
check "a directory: --dir completes directories only" \
  test "$(complete_words standby --dir "$work/dirs/a" | xargs)" = "$work/dirs/alpha"
check "a positional DIR completes directories" \
  test "$(complete_words verify "$work/dirs/b" | xargs)" = "$work/dirs/beta"
finish
