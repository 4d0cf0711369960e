/*
 * tree_bench.c: what the page-hash tree (core/tree.c, DESIGN section 8)
 * costs a commit: store_tree_update for k changed pages of a 1 GiB image
 * (65,536 pages), the work the apply step adds under snap_lock, and the
 * copy every snapshot takes when it opens. Compare with loom_save's
 * latency for the same k from core_bench (docs/BENCHMARKS.md).
 *
 *   build/bench/tree_bench
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "loom.h"
#include "tree.h"

#define PAGES 65536u

static double now_s(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t zero_hash(uint64_t n) { return n * 0x9e3779b97f4a7c15ull; }

static int cmp_u64(const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

int main(void)
{
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
    printf("update, %6" PRIu64 " changed pages: %9.2f us a commit\n", k,
           total / rounds * 1e6);
  }
  t0 = now_s();
  for (int r = 0; r < 100; r++)
    store_tree_copy(&copy, &t);
  printf("copy at snapshot open: %.3f ms\n", (now_s() - t0) / 100 * 1e3);
  store_tree_free(&t);
  store_tree_free(&copy);
  free(hashes);
  free(numbers);
  free(news);
  return 0;
}
