#!/usr/bin/env bash
# token_test.sh: token files (DESIGN.md section 5), with real loomship
# processes on 127.0.0.1: every command reads them through one function;
# an empty, blank, NUL-holding or non-token first line is refused with exit
# 2 and a message naming the file; a short token and a file readable by
# group or others are warned about and the command still runs; trailing
# spaces, CR and LF are trimmed, so the token matches.
# Usage: token_test.sh PATH/TO/loomship
TEST_NAME=token
. "$(dirname "$0")/../lib/testlib.sh"
command -v curl >/dev/null || { echo "SKIP: curl missing"; exit 77; }

mkfile() { # NAME MODE PRINTF-FORMAT
  printf "$3" >"$work/$1"
  chmod "$2" "$work/$1"
}
mkfile blank 600 '   \n'
mkfile empty 600 ''
mkfile nul 600 'x\0y-0123456789abcdef\n'
mkfile space 600 'two words-0123456789abcdef\n'
mkfile ctrl 600 'tab\tinside-0123456789abcdef\n'
mkfile short 600 'abc\n'
mkfile exposed 644 'exposed-token-0123456789\n'
mkfile good 600 'good-token-0123456789abcdef  \r\n'

refused() { # FILE CMD ARGS...: exit 2 and a line naming the file
  local file=$1; shift
  timeout 5 "$LOOMSHIP" "$@" --token-file "$work/$file" >/dev/null 2>"$work/err"
  local rc=$?
  [ "$rc" = 2 ] && grep -q "token file $work/$file refused" "$work/err" ||
    { echo "  rc $rc: $(cat "$work/err")"; return 1; }
}

echo "== unusable tokens are refused by every command (exit 2, the file named)"
for f in blank empty nul space ctrl; do
  check "standby refuses $f" refused $f standby --dir "$work/s-$f" --listen 127.0.0.1:0
  check "primary refuses $f" refused $f primary --dir "$work/p-$f" \
    --standby http://127.0.0.1:9 --saves 1 --drain-timeout 0
  check "status refuses $f" refused $f status http://127.0.0.1:9
  check "backup refuses $f" refused $f backup --from http://127.0.0.1:9 --out "$work/b-$f"
  check "promote refuses $f" refused $f promote http://127.0.0.1:9
  check "and nothing was created for $f" test ! -e "$work/s-$f" -a ! -e "$work/p-$f"
done

echo "== a short token and an exposed file: warned about, the standby still runs"
start_standby() { # NAME TOKENFILE: sets url
  "$LOOMSHIP" standby --dir "$work/$1" --listen 127.0.0.1:0 --token-file "$work/$2" \
    >"$work/$1.out" 2>"$work/$1.err" &
  pids+=($!)
  url=
  for _ in $(seq 200); do
    url=$(grep -o 'http://[0-9.]*:[0-9]*' "$work/$1.out" | head -1)
    [ -n "$url" ] && break
    sleep 0.05
  done
}
start_standby s1 short
check "the short token's standby runs" test -n "$url"
check "it warns that the token is short, naming the file" \
  grep -q "warning: the token in $work/short is only 3 bytes" "$work/s1.err"
check "no warning about the mode of a 0600 file" bash -c "! grep -q 'readable by group' '$work/s1.err'"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer abc" "$url/v1/backup")
check "the short token is the token (backup answers $code)" test "$code" = 200
start_standby s2 exposed
check "the exposed file's standby runs" test -n "$url"
check "it warns that the file is readable by group or others" \
  grep -q "warning: token file $work/exposed is readable by group or others (mode 0644)" "$work/s2.err"

echo "== trailing spaces, CR and LF are trimmed: the token matches"
start_standby s3 good
check "the standby runs, without warnings" bash -c "[ -n '$url' ] && ! grep -q warning '$work/s3.err'"
code=$(curl -s -o /dev/null -w '%{http_code}' \
  -H "Authorization: Bearer good-token-0123456789abcdef" "$url/v1/backup")
check "the trimmed token is accepted ($code)" test "$code" = 200
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer good-token" "$url/v1/backup")
check "a prefix of it is not ($code)" test "$code" = 401
check "status with the same file works" bash -c "\"$LOOMSHIP\" status \"$url\" --token-file \"$work/good\" >/dev/null"

finish
