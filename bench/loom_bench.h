/* loom_bench.h: what the save-latency benches share beyond benchloom.h
 * (scrub_bench, check_bench): their options and the saves they time. */
#ifndef LOOMSHIP_LOOM_BENCH_H
#define LOOMSHIP_LOOM_BENCH_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "benchloom.h"
#include "benchutil.h"

/* The options of a save bench: --pages N (the image), --k K (pages a
 * save), --saves S (a phase), --rounds R, --dir DIR. */
typedef struct bench_save_args {
  uint64_t n, k;
  unsigned s, rounds;
  const char *root;
} bench_save_args;

#define BENCH_SAVE_ARGS_DEFAULT {16384, 64, 200, 3, "/tmp"}

/* Take option name with its value into a: 1, or 0 when it is not one. */
static inline int bench_save_arg(const char *name, const char *value, bench_save_args *a)
{
  if (!strcmp(name, "--pages")) a->n = strtoull(value, NULL, 10);
  else if (!strcmp(name, "--k")) a->k = strtoull(value, NULL, 10);
  else if (!strcmp(name, "--saves")) a->s = (unsigned)atoi(value);
  else if (!strcmp(name, "--rounds")) a->rounds = (unsigned)atoi(value);
  else if (!strcmp(name, "--dir")) a->root = value;
  else return 0;
  return 1;
}

/* s saves of k pages spread over an n-page image (one byte each, moved by
 * *tick): latencies (ms) into lat. 0, or loom_save's error. */
static inline int bench_spread_saves(loom *l, uint64_t n, uint64_t k, unsigned s,
                                     double *lat, unsigned *tick)
{
  uint8_t *b = loom_base(l);
  uint64_t stride = n / k;
  for (unsigned r = 0; r < s; r++, (*tick)++) {
    for (uint64_t i = 0; i < k; i++)
      b[(i * stride + *tick % stride) * LOOM_PAGE_SIZE + (*tick * 8) % LOOM_PAGE_SIZE] ^= 0xff;
    double t0 = now_s();
    int rc = loom_save(l, n, n + 64);
    lat[r] = (now_s() - t0) * 1e3;
    if (rc)
      return rc;
  }
  return 0;
}

#endif
