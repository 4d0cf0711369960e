/*
 * tree_bench.c: what the page-hash tree (core/tree.c, DESIGN section 8)
 * costs a commit: store_tree_update for k changed pages of a 1 GiB image
 * (65,536 pages), the work the apply step adds under snap_lock, and the
 * copy every snapshot takes when it opens. With --save, loom_save's
 * latency for the same k on a 1 GiB image in the same run (inline apply,
 * so the apply step and its tree update are inside it), and the tree's
 * share of it (goal, issue 13: <= 5 %). The tree is always kept, so "with
 * and without" is the save against the update it contains.
 *
 *   build/bench/tree_bench [--save] [--dir DIR]
 */
#include <inttypes.h>
#include <stdbool.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "loom.h"
#include "benchloom.h"
#include "benchutil.h"
#include "tree.h"

#define PAGES 65536u

static uint64_t zero_hash(uint64_t n) { return n * 0x9e3779b97f4a7c15ull; }

static int cmp_u64(const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* loom_save's median (ms) for k pages spread over a PAGES-page image,
 * inline apply (the tree update is inside it), for each k in ks. */
static void save_latency(const char *root, const uint64_t *ks, const double *update_us,
                         size_t nk)
{
  char dir[256];
  snprintf(dir, sizeof dir, "%s/tree_bench.%d", root, (int)getpid());
  loom *l;
  int rc = bench_loom_with_image(dir, (loom_options){.flags = LOOM_COPY_IN}, PAGES, 64, &l);
  if (rc) {
    fprintf(stderr, "tree_bench: %s: %s\n", dir, loom_strerror(rc));
    exit(2);
  }
  uint8_t *b = loom_base(l);
  printf("\nloom_save on the same 1 GiB image, inline apply, median of 31:\n");
  for (size_t j = 0; j < nk; j++) {
    double lat[31];
    uint64_t stride = PAGES / ks[j];
    for (int r = 0; r < 32; r++) {
      for (uint64_t i = 0; i < ks[j]; i++)
        b[i * stride * LOOM_PAGE_SIZE + (uint64_t)r * 8] ^= 0xff;
      double t0 = now_s();
      if ((rc = loom_save(l, PAGES, PAGES + 64))) {
        fprintf(stderr, "tree_bench: save: %s\n", loom_strerror(rc));
        exit(2);
      }
      if (r > 0)
        lat[r - 1] = (now_s() - t0) * 1e3;
    }
    qsort(lat, 31, sizeof *lat, cmp_double);
    printf("save, %6" PRIu64 " changed pages: %9.3f ms; the tree's update %6.2f us = "
           "%.3f %% of it\n", ks[j], lat[15], update_us[j], update_us[j] / 10 / lat[15]);
  }
  loom_close(l);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "tree_bench: could not remove %s\n", dir);
}

int main(int argc, char **argv)
{
  bool save = false;
  const char *root = "/tmp";
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--save"))
      save = true;
    else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
      root = argv[++i];
    else {
      fprintf(stderr, "usage: tree_bench [--save] [--dir DIR]\n");
      return 2;
    }
  }
  uint64_t *hashes = malloc(PAGES * sizeof *hashes);
  uint64_t rng = 88172645463325252ull;
  for (uint64_t i = 0; i < PAGES; i++) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    hashes[i] = rng;
  }
  store_tree t = {0}, copy = {0};
  double t0 = now_s();
  store_tree_build(&t, hashes, PAGES);
  printf("build, %u pages: %.3f ms\n", PAGES, (now_s() - t0) * 1e3);
  static const uint64_t ks[] = {1, 16, 64, 1024, 4096, 65536};
  double update_us[sizeof ks / sizeof ks[0]];
  uint64_t *numbers = malloc(PAGES * sizeof *numbers), *news = malloc(PAGES * sizeof *news);
  for (size_t j = 0; j < sizeof ks / sizeof ks[0]; j++) {
    uint64_t k = ks[j];
    unsigned rounds = k >= 4096 ? 50 : 2000;
    double total = 0;
    for (unsigned r = 0; r < rounds; r++) {
      for (uint64_t i = 0; i < k; i++) {
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        numbers[i] = k == PAGES ? i : rng % PAGES;
        news[i] = rng;
      }
      qsort(numbers, k, sizeof *numbers, cmp_u64);
      uint64_t m = 0; /* distinct, ascending */
      for (uint64_t i = 0; i < k; i++)
        if (m == 0 || numbers[i] != numbers[m - 1])
          numbers[m++] = numbers[i];
      double s = now_s();
      store_tree_update(&t, PAGES, numbers, news, m, zero_hash);
      total += now_s() - s;
    }
    update_us[j] = total / rounds * 1e6;
    printf("update, %6" PRIu64 " changed pages: %9.2f us a commit\n", k, update_us[j]);
  }
  t0 = now_s();
  for (int r = 0; r < 100; r++)
    store_tree_copy(&copy, &t);
  printf("copy at snapshot open: %.3f ms\n", (now_s() - t0) / 100 * 1e3);
  store_tree_free(&t);
  store_tree_free(&copy);
  if (save)
    save_latency(root, ks, update_us, 5); /* up to 4096 pages */
  free(hashes);
  free(numbers);
  free(news);
  return 0;
}
