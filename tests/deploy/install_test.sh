#!/usr/bin/env bash
# meson install into a scratch prefix, then build and run applications
# outside the tree with only the installed headers and pkg-config:
#   - `pkg-config --static loomship`: an arena saved and inspected;
#   - `pkg-config loomship-replicate` (shared): an arena that ships its
#     commits to a `loomship standby` started here on 127.0.0.1; the
#     standby must hold and apply every commit.
# Also: the shared libraries export only the public API, and the version
# macros agree with loom_version().
set -euo pipefail
build=$1
scratch=$(mktemp -d)
standby_pid=
cleanup() {
  [ -n "$standby_pid" ] && kill -KILL "$standby_pid" 2>/dev/null
  rm -rf "$scratch"
}
trap cleanup EXIT
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
  if (strcmp(loom_version(), LOOMSHIP_VERSION_STRING) != 0 ||
      loom_version_number() != LOOMSHIP_VERSION_NUMBER) return 1;
  puts("ok");
  return 0;
}
C
export PKG_CONFIG_PATH="$pc"
# The .pc file names the configured prefix; point it at the scratch root.
flags=$(pkg-config --define-variable=prefix="$root" --cflags --libs --static loomship)
cc -o "$scratch/app" "$scratch/app.c" $flags
libdir=$(dirname "$(find "$root" -name 'libloomship.so' | head -1)")
LD_LIBRARY_PATH="$libdir" "$scratch/app" "$scratch/img" | grep -qx ok
echo "arena library (static), headers, version macros: ok"

# Only the public API leaves the shared libraries.
for lib in loomship:loom_ loomship-replicate:replicate_ loomship-cluster:cluster_; do
  [ -e "$libdir/lib${lib%%:*}.so" ] || { echo "no lib${lib%%:*}.so installed"; exit 1; }
  [ -e "$libdir/lib${lib%%:*}.a" ] || { echo "no lib${lib%%:*}.a installed"; exit 1; }
  other=$(nm -D --defined-only "$libdir/lib${lib%%:*}.so" | awk '{print $3}' |
          grep -v "^${lib#*:}" || true)
  [ -z "$other" ] || { echo "lib${lib%%:*}.so exports internal symbols: $other"; exit 1; }
done

# The etcd client, from the installed header and pkg-config loomship-cluster
# (shared): an unreachable etcd is a clear error code, not a crash.
cat > "$scratch/etcd.c" <<'C'
#include <etcd.h>
#include <stdio.h>
#include <string.h>
int main(void)
{
  char key[64];
  struct cluster_etcd_options o = {.endpoints = "http://127.0.0.1:1", .timeout_ms = 500};
  struct cluster_etcd *c;
  struct cluster_kv kv;
  if (cluster_key(key, sizeof key, "loomship", "leader") || cluster_etcd_open(&o, &c))
    return 1;
  int rc = cluster_etcd_get(c, key, &kv);
  cluster_etcd_close(c);
  if (rc != CLUSTER_EUNREACHABLE || strcmp(cluster_error_name(rc), "CLUSTER_EUNREACHABLE"))
    return 1;
  puts("ok");
  return 0;
}
C
flags=$(pkg-config --define-variable=prefix="$root" --cflags --libs loomship-cluster)
cc -o "$scratch/etcd" "$scratch/etcd.c" $flags
LD_LIBRARY_PATH="$libdir" "$scratch/etcd" | grep -qx ok
echo "cluster library (shared, etcd client): ok"

# The arena replicating to a standby, from the installed headers only.
cat > "$scratch/ship.c" <<'C'
#include <loom.h>
#include <replicate.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static replicate_shipper *shipper;

static int on_commit(void *ctx, loom *l, const loom_commit *c)
{
  (void)ctx;
  return shipper ? replicate_shipper_on_commit(shipper, l, c) : 0;
}

int main(int argc, char **argv)
{
  if (argc != 4)
    return 2;
  int saves = atoi(argv[3]);
  loom_options o = {.arena_pages = 256, .flags = LOOM_CREATE,
                    .on_commit = on_commit};
  loom *l;
  replicate_log *log;
  int rc = loom_open(argv[1], &o, &l);
  if (!rc)
    rc = replicate_log_open(argv[1], &(replicate_log_options){0}, NULL, &log);
  if (rc) {
    fprintf(stderr, "open: %s\n", replicate_strerror(rc));
    return 1;
  }
  const char *urls[] = {argv[2]};
  replicate_shipper_options so = {.store = loom_get_store(l), .log = log,
                                  .standby_urls = urls, .standby_count = 1,
                                  .sync_count = 1};
  if ((rc = replicate_shipper_start(&so, &shipper))) {
    fprintf(stderr, "shipper: %s\n", replicate_strerror(rc));
    return 1;
  }
  for (int i = 1; i <= saves && !rc; i++) {
    snprintf((char *)loom_base(l) + (i % 8) * LOOM_PAGE_SIZE, 32, "save %d", i);
    rc = loom_save(l, 8, 256); /* sync: returns once the standby has it */
  }
  int drained = replicate_shipper_drain(shipper, 10);
  replicate_shipper_stop(shipper);
  shipper = NULL;
  if (rc) {
    fprintf(stderr, "save: %s (%s)\n", replicate_strerror(rc),
            replicate_error_name(rc));
    return 1;
  }
  loom_position p;
  loom_store_position(loom_get_store(l), &p);
  if (!drained || (rc = replicate_log_close(log)) || (rc = loom_close(l)))
    return 1;
  printf("%llu\n", (unsigned long long)p.seq);
  return 0;
}
C
for f in "$root"/include/loomship/*.h; do   # only installed headers reach it
  case $(basename "$f") in loom.h|loom_io.h|loom_version.h|replicate.h|receiver.h|etcd.h|node.h) ;;
    *) echo "unexpected installed header $f"; exit 1 ;; esac
done
flags=$(pkg-config --define-variable=prefix="$root" --cflags --libs loomship-replicate)
cc -std=c11 -Wall -Wextra -Werror -o "$scratch/ship" "$scratch/ship.c" $flags

"$root/bin/loomship" standby --dir "$scratch/standby" --listen 127.0.0.1:0 \
  >"$scratch/standby.out" 2>"$scratch/standby.err" &
standby_pid=$!
url=
for _ in $(seq 200); do   # up to 10 s for its "listening" line
  url=$(grep -o 'http://[0-9.]*:[0-9]*' "$scratch/standby.out" | head -1 || true)
  [ -n "$url" ] && break
  sleep 0.05
done
[ -n "$url" ] || { echo "the standby did not start"; cat "$scratch/standby.err"; exit 1; }
seq=$(LD_LIBRARY_PATH="$libdir" "$scratch/ship" "$scratch/primary" "$url" 5) ||
  { echo "the outside primary failed"; cat "$scratch/standby.err"; exit 1; }
[ "$seq" = 5 ] || { echo "the outside primary committed $seq, not 5"; exit 1; }
applied=
for _ in $(seq 200); do   # received (sync) at once; applied within 10 s
  applied=$(curl -s "$url/v1/status" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["applied"]["seq"])' || true)
  [ "$applied" = 5 ] && break
  sleep 0.05
done
[ "$applied" = 5 ] || { echo "the standby applied seq '$applied', not 5"; exit 1; }
kill -TERM "$standby_pid"
wait "$standby_pid" || true
standby_pid=
"$root/bin/loomship" inspect "$scratch/primary" --json > "$scratch/p.json"
"$root/bin/loomship" inspect "$scratch/standby" --json > "$scratch/s.json"
cmp -s "$scratch/p.json" "$scratch/s.json" ||
  { echo "standby and primary differ:"; cat "$scratch/p.json" "$scratch/s.json"; exit 1; }
cmp -s "$scratch/primary/image" "$scratch/standby/image" ||
  { echo "standby and primary images differ"; exit 1; }
echo "replicating library (loomship-replicate, shared) shipping to a standby: ok"
echo "installed libraries, headers, pkg-config files, binary and man page: ok"
