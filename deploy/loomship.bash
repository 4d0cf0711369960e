# bash completion for loomship: subcommands, their options, and the values
# of options that name a directory, a file or one of a few words. Read from
# the binary's own --help each time, so it lists exactly what that binary
# takes (tests/deploy/completion_test.sh checks it against --help).
# Installed by meson as loomship into bash-completion's completions dir.

# The options of a subcommand's --help: "--name VALUE" or "--name" per line.
_loomship_options() {
  "$1" "$2" --help 2>/dev/null | awk '
    /^  (-h, )?--[a-z]/ {
      line = $0; sub(/^  (-h, )?/, "", line)
      if (match(line, /  +/)) line = substr(line, 1, RSTART - 1)
      print line
    }'
}

_loomship() {
  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
  local bin=${COMP_WORDS[0]} sub=${COMP_WORDS[1]}
  COMPREPLY=()
  if [ "$COMP_CWORD" -eq 1 ]; then
    local subs
    subs=$("$bin" --help 2>/dev/null | awk '/^  [a-z][a-z-]* +[^ ]/ { print $1 }')
    COMPREPLY=($(compgen -W "$subs --help --version" -- "$cur"))
    return 0
  fi
  local opts value=
  opts=$(_loomship_options "$bin" "$sub")
  if [[ $prev == --* ]]; then
    value=$(printf '%s\n' "$opts" | awk -v o="$prev" '$1 == o && NF > 1 { print $2 }')
  fi
  if [ -n "$value" ]; then
    case $value in
      DIR) COMPREPLY=($(compgen -d -- "$cur")) ;;
      F | FILE) COMPREPLY=($(compgen -f -- "$cur")) ;;
      *'|'*) COMPREPLY=($(compgen -W "${value//|/ }" -- "$cur")) ;;
    esac
    return 0
  fi
  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "$(printf '%s\n' "$opts" | awk '{ print $1 }')" -- "$cur"))
  elif "$bin" "$sub" --help 2>/dev/null | grep -q "^usage: loomship $sub DIR"; then
    COMPREPLY=($(compgen -d -- "$cur"))
  fi
  return 0
}
complete -F _loomship loomship
