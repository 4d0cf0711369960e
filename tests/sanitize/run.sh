#!/usr/bin/env bash
# run.sh: dynamic analysis (issue 6, suite 7) beyond the ASan+UBSan pass
# that ./test already makes of the whole suite.
#
#   1. ThreadSanitizer: a build with -Db_sanitize=thread, then the threaded
#      suites: the replicate suites (the shipper's libcurl threads, the
#      log) and the http suites (libmicrohttpd's connection threads, the
#      standby's applier, backups), and the security/diskfull/load tests
#      through the TSan-built binary in the long form.
#   2. valgrind memcheck on the unit suites (the cmocka binaries of the
#      default build), --error-exitcode=99, definite leaks are errors.
#
# Usage: tests/sanitize/run.sh [--quick] [--tsan-only|--valgrind-only]
#   BUILD_TSAN   TSan build dir   [/tmp/loomship-build-tsan]
#   BUILD_PLAIN  plain build dir  [/tmp/loomship-build-plain]
#   --quick      the bounded form ./test runs: TSan on replicate_ship,
#                replicate_receiver, http_standby, http_backup and
#                http_unit; valgrind on every
#                unit test but replicate_frame (4 min under valgrind),
#                replicate_apply and replicate_coalesce (1 min each; ASan
#                covers them in ./test) and
#                the fuzz replays, which run on their seed files only
# Exit 0 when everything is clean; 77 when neither tool is available.
set -uo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
tsan_dir=${BUILD_TSAN:-/tmp/loomship-build-tsan}
plain_dir=${BUILD_PLAIN:-/tmp/loomship-build-plain}
quick=0 do_tsan=1 do_valgrind=1
for a in "$@"; do
  case $a in
    --quick) quick=1 ;;
    --tsan-only) do_valgrind=0 ;;
    --valgrind-only) do_tsan=0 ;;
    *) echo "usage: $0 [--quick] [--tsan-only|--valgrind-only]" >&2; exit 2 ;;
  esac
done
status=0
ran=0
build_failed=0

# Cases that assert wall-clock bounds (a stalled standby must not slow a
# save beyond N ms) which TSan's 5-15x slowdown can miss: a failure of
# only these, with no TSan report, is not a finding of this run.
timing_only() { # TEST CASE...
  local t=$1; shift
  local c
  for c in "$@"; do
    case "$t:$c" in
      replicate_ship:test_two_one_stalled|replicate_ship:test_sync_timeout_degrade) ;;
      # a 384 MiB base drained within 10 s: 3x past that under TSan
      replicate_archive:test_restore_memory_bounded) ;;
      *) return 1 ;;
    esac
  done
  return 0
}

setup() { # DIR [meson options]
  local dir=$1; shift
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" "$src" "$@" >"$dir.setup.log" 2>&1 ||
      { cat "$dir.setup.log"; return 1; }
  fi
  # -k 0: build everything that compiles (other folders may be mid-edit);
  # a failed build still fails the run, after the tests that could run.
  ninja -C "$dir" -k 0 >"$dir.ninja.log" 2>&1 ||
    { grep -A3 FAILED "$dir.ninja.log" | head -20; build_failed=1; }
  return 0
}

if [ $do_tsan = 1 ]; then
  echo "== ThreadSanitizer ($tsan_dir)"
  # TSan needs the address space layout it expects (Linux >= 6.5 with a high
  # mmap_rnd_bits breaks old TSan runtimes): run under setarch -R when the
  # first attempt cannot even start.
  if setup "$tsan_dir" -Db_sanitize=thread -Db_lundef=false; then
    ran=1
    if [ $quick = 1 ]; then
      tests=(replicate_ship replicate_receiver http_standby http_backup http_unit)
    else
      tests=(replicate_ship replicate_receiver http_standby http_backup http_unit http_tls
             replicate_log replicate_apply replicate_frame replicate_coalesce
             replicate_archive replicate_repair
             e2e security diskfull fuzz_load fuzz_http_replay)
    fi
    wrapper=()
    probe=$(ls "$tsan_dir"/tests/http/test_http_unit 2>/dev/null)
    if [ -n "$probe" ] && ! "$probe" >/dev/null 2>&1 &&
       setarch "$(uname -m)" -R "$probe" >/dev/null 2>&1; then
      wrapper=(--wrapper "setarch $(uname -m) -R")
    fi
    # Reports go to files (log_path), so that those of loomship processes
    # whose stderr a test script discards are seen too.
    reports=$tsan_dir/tsan-reports
    for t in "${tests[@]}"; do
      rm -rf "$reports"; mkdir -p "$reports"
      TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:history_size=4:log_path=$reports/report" \
        meson test -C "$tsan_dir" --no-rebuild "${wrapper[@]}" --print-errorlogs \
        --timeout-multiplier 10 "$t" >"$tsan_dir/tsan-$t.log" 2>&1
      rc=$?
      if ls "$reports"/report* >/dev/null 2>&1; then
        cat "$reports"/report* >>"$tsan_dir/tsan-$t.log"
        rc=1
      fi
      grep -E "^ *[0-9]+/[0-9]+ |error" "$tsan_dir/tsan-$t.log" | head -3
      if [ $rc -ne 0 ]; then
        failed=$(grep -o '^\[  FAILED  \] test_[a-z0-9_]*' "$tsan_dir/tsan-$t.log" |
                 awk '{print $3}' | sort -u | tr '\n' ' ')
        if ! grep -q "ThreadSanitizer" "$tsan_dir/tsan-$t.log" &&
           [ -n "$failed" ] && timing_only "$t" $failed; then
          echo "TSan: $t: no race; wall-clock bounds missed under TSan's slowdown: $failed"
        else
          status=1
          echo "TSan: $t FAILED; report:"
          grep -A30 "WARNING: ThreadSanitizer" "$tsan_dir/tsan-$t.log" | head -60
        fi
      fi
    done
  else
    echo "TSan build failed"; status=1
  fi
fi

if [ $do_valgrind = 1 ]; then
  if ! command -v valgrind >/dev/null; then
    echo "== valgrind not installed: skipped (apt-get install valgrind)"
  else
    echo "== valgrind memcheck on the unit suites ($plain_dir)"
    if setup "$plain_dir" -Dbuildtype=debug; then
      ran=1
      vg="valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --track-origins=yes --quiet"
      # The fuzz replays run thousands of store opens: under valgrind they
      # take minutes; run them on their seed files alone (quick) instead.
      list=$(meson test -C "$plain_dir" --list --suite unit 2>/dev/null |
             sed 's/.* \/ //' | grep -v '_replay$' || true)
      # The arena suites track writes by write-protecting pages and taking
      # the SIGSEGV (or userfaultfd, a syscall valgrind 3.19 lacks):
      # memcheck reports every such caught write as an invalid write, so
      # they are left out (ASan+UBSan covers them in ./test).
      list=$(echo "$list" | grep -v -e '^arena$' -e '^big_arena$')
      # replicate_frame takes 4 minutes under valgrind, replicate_apply and
      # replicate_coalesce one each: the long form only.
      [ $quick = 1 ] &&
        list=$(echo "$list" | grep -v -E '^(replicate_frame|replicate_apply|replicate_coalesce)$')
      # shellcheck disable=SC2086
      meson test -C "$plain_dir" --no-rebuild --wrapper "$vg" --print-errorlogs \
        --num-processes 2 --timeout-multiplier 20 $list ||
        { status=1; echo "valgrind: FAILED (see $plain_dir/meson-logs/testlog.txt)"; }
      for t in meta patch apply http; do
        bin=$plain_dir/tests/fuzz/fuzz_${t}_replay
        [ -x "$bin" ] || continue
        echo "valgrind: fuzz_${t}_replay on its seeds"
        $vg "$bin" "$src/tests/fuzz/corpus/$t" >/dev/null ||
          { status=1; echo "valgrind: fuzz_${t}_replay FAILED"; }
      done
    else
      echo "plain build failed"; status=1
    fi
  fi
fi

[ $build_failed = 1 ] && { echo "a build failed (see above)"; status=1; }
[ $ran = 0 ] && exit 77
exit $status
