#!/usr/bin/env bash
# fuzz_bounded.sh SOURCE_DIR BUILD_DIR: the bounded libFuzzer run of ./test.
# Skips (77) without clang. Otherwise configures a clang build of the
# project in BUILD_DIR (once), builds the six libFuzzer targets of
# tests/fuzz and runs fuzz_run.sh on them (FUZZ_SECONDS per target,
# default 60). Registered in the 'slow' suite of the default (gcc) build.
set -euo pipefail
src=$(readlink -f "$1") build=$2
if ! command -v clang >/dev/null 2>&1; then
  echo "SKIP: clang not installed (apt-get install clang libclang-rt-14-dev)"
  exit 77
fi
if ! echo 'int LLVMFuzzerTestOneInput(const char *d, long n) { (void)d; (void)n; return 0; }' |
     clang -x c -fsanitize=fuzzer -o /dev/null - 2>/dev/null; then
  echo "SKIP: clang cannot link libFuzzer (install libclang-rt-14-dev)"
  exit 77
fi
if [ ! -f "$build/build.ninja" ]; then
  CC=clang meson setup "$build" "$src" >"$build.setup.log" 2>&1 ||
    { cat "$build.setup.log"; exit 1; }
fi
ninja -C "$build" tests/fuzz/fuzz_meta tests/fuzz/fuzz_patch tests/fuzz/fuzz_frame \
  tests/fuzz/fuzz_apply tests/fuzz/fuzz_http tests/fuzz/fuzz_integrity
exec "$src/tests/fuzz/fuzz_run.sh" "$build/tests/fuzz" "$src/tests/fuzz/corpus"
