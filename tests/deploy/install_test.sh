#!/usr/bin/env bash
# meson install into a scratch prefix, then build and run an application
# outside the tree with `pkg-config --cflags --libs loomship`.
set -euo pipefail
build=$1
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
DESTDIR="$scratch/root" meson install -C "$build" --quiet --no-rebuild >/dev/null
option() {
  meson introspect "$build" --buildoptions |
    python3 -c 'import json,sys; print([o["value"] for o in json.load(sys.stdin) if o["name"]==sys.argv[1]][0])' "$1"
}
if [ "$(option b_sanitize)" != none ]; then
  echo "sanitizer build: an outside program cannot link the sanitized library; skipped"
  exit 77
fi
prefix=$(option prefix)
root="$scratch/root$prefix"
pc=$(dirname "$(find "$root" -name loomship.pc | head -1)")
[ -n "$pc" ] || { echo "no loomship.pc installed"; exit 1; }
[ -x "$root/bin/loomship" ] || { echo "no loomship binary installed"; exit 1; }
find "$root" -name 'loomship.1*' | grep -q . || { echo "no man page installed"; exit 1; }
cat > "$scratch/app.c" <<'C'
#include <loom.h>
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv)
{
  (void)argc;
  loom_options o = {.arena_pages = 64, .flags = LOOM_CREATE};
  loom *l;
  int rc = loom_open(argv[1], &o, &l);
  if (rc) { fprintf(stderr, "%s\n", loom_strerror(rc)); return 1; }
  memcpy(loom_base(l), "hello", 6);
  if ((rc = loom_save(l, 1, 64)) || (rc = loom_close(l))) return 1;
  loom_position p;
  if (loom_inspect(argv[1], &p) || p.seq != 1 || p.pages != 1) return 1;
  puts("ok");
  return 0;
}
C
export PKG_CONFIG_PATH="$pc"
# The .pc file names the configured prefix; point it at the scratch root.
flags=$(pkg-config --define-variable=prefix="$root" --cflags --libs --static loomship)
cc -o "$scratch/app" "$scratch/app.c" $flags
LD_LIBRARY_PATH="$root/lib:$(dirname "$(find "$root" -name 'libloomship.so' | head -1)")" \
  "$scratch/app" "$scratch/img" | grep -qx ok
echo "installed library, headers, pkg-config file, binary and man page: ok"
