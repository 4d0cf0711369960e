/*
 * scrub_bench.c: what the scrubber (replicate/scrub.c, DESIGN section 8)
 * costs the commit path, in the same run: loom_save latency (k pages
 * changed a save, async apply, as a primary saves) with no scrubber and
 * with one re-reading the image continuously at its cap, in alternating
 * phases; and the read rate the scrubber kept against its cap.
 *
 *   scrub_bench [--pages N] [--k K] [--saves S] [--rounds R] [--mbps M]
 *               [--dir DIR]
 *
 * Defaults: a 16,384-page image (256 MiB), 64 pages a save, 200 saves a
 * phase, 3 rounds of (without, with), the default cap of 64 MiB/s.
 * Goal (issue 13): p99 with the scrubber <= 1.1 x p99 without.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "loom.h"
#include "loom_bench.h"
#include "replicate.h"

#define PS LOOM_PAGE_SIZE

static void die(const char *what, int rc)
{
  fprintf(stderr, "scrub_bench: %s: %s\n", what, replicate_strerror(rc));
  exit(2);
}

static int snap_open(void *ctx, loom_snapshot **out)
{
  return loom_store_snapshot_open(ctx, out);
}

static void snap_close(void *ctx, loom_snapshot *snap)
{
  (void)ctx;
  loom_snapshot_close(snap);
}

int main(int argc, char **argv)
{
  bench_save_args a = BENCH_SAVE_ARGS_DEFAULT;
  double mbps = 64;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (bench_save_arg(argv[i], argv[i + 1], &a))
      continue;
    if (!strcmp(argv[i], "--mbps")) mbps = atof(argv[i + 1]);
    else {
      fprintf(stderr, "usage: scrub_bench [--pages N] [--k K] [--saves S] [--rounds R] "
                      "[--mbps M] [--dir DIR]\n");
      return 2;
    }
  }
  uint64_t n = a.n, k = a.k;
  unsigned s = a.s, rounds = a.rounds;
  char dir[256];
  snprintf(dir, sizeof dir, "%s/scrub_bench.%d", a.root, (int)getpid());
  loom *l;
  int rc = bench_loom_with_image(dir, (loom_options){.flags = LOOM_COPY_IN | LOOM_APPLY_ASYNC},
                                 n, 64, &l);
  if (rc)
    die("an arena with its image", rc);
  loom_store *store = loom_get_store(l);

  double *without = malloc(sizeof(double) * s * rounds), *with = malloc(sizeof(double) * s * rounds);
  unsigned tick = 1;
  uint64_t scrubbed = 0;
  double scrub_s = 0;
  for (unsigned r = 0; r < rounds; r++) {
    if ((rc = bench_spread_saves(l, n, k, s, without + r * s, &tick)))
      die("save", rc);
    replicate_scrub_options so = {.snapshot_open = snap_open, .snapshot_close = snap_close,
                                  .ctx = store, .interval_seconds = 0.2, .mbps = mbps};
    replicate_scrubber *sc;
    if ((rc = replicate_scrubber_start(&so, &sc)))
      die("scrubber", rc);
    usleep(300 * 1000); /* its first pass starts after one interval */
    replicate_scrub_status st0, st1;
    replicate_scrubber_status(sc, &st0);
    double t0 = now_s();
    if ((rc = bench_spread_saves(l, n, k, s, with + r * s, &tick)))
      die("save", rc);
    replicate_scrubber_status(sc, &st1);
    scrub_s += now_s() - t0;
    scrubbed += st1.pages_scrubbed - st0.pages_scrubbed;
    replicate_scrubber_stop(sc);
  }
  size_t total = (size_t)s * rounds;
  double p50a = percentile(without, total, 0.5), p99a = percentile(without, total, 0.99);
  double p50b = percentile(with, total, 0.5), p99b = percentile(with, total, 0.99);
  printf("scrubber against the commit path: %" PRIu64 "-page image (%.0f MiB), %" PRIu64
         " pages a save, %zu saves each, %u alternating rounds\n\n", n,
         (double)n * PS / 1048576.0, k, total, rounds);
  printf("| saves | p50 ms | p99 ms |\n|---|---:|---:|\n");
  printf("| without a scrubber | %.3f | %.3f |\n", p50a, p99a);
  printf("| with the scrubber at %.0f MiB/s | %.3f | %.3f |\n", mbps, p50b, p99b);
  printf("\np99 with / without: %.2f (goal <= 1.10); scrubber read %.1f MiB/s while "
         "saving (cap %.0f)\n", p99b / p99a, (double)scrubbed * PS / 1048576.0 / scrub_s,
         mbps);
  loom_close(l);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "scrub_bench: could not remove %s\n", dir);
  free(without);
  free(with);
  return 0;
}
