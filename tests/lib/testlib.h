/*
 * testlib.h: what every C test shares, whatever module it tests: scratch
 * directories, a reproducible RNG, and allocation that cannot fail.
 * Module helpers build on it: tests/arena/testutil.h (a page model),
 * tests/replicate/replicate_testlib.h (image model, frame forger),
 * tests/http/httptest.h (a primary, a client, a standby server). The shell
 * and Python suites have tests/lib/testlib.sh and tests/system/systest.py.
 */
#ifndef LOOM_TESTLIB_H
#define LOOM_TESTLIB_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------------- */
/* Memory: a test has no use for a recovery path from malloc failing. */

static inline void *xmalloc(size_t n)
{
  void *p = malloc(n ? n : 1);
  if (p == NULL) {
    fprintf(stderr, "out of memory (%zu bytes)\n", n);
    abort();
  }
  return p;
}

static inline void *xcalloc(size_t n)
{
  void *p = calloc(1, n ? n : 1);
  if (p == NULL) {
    fprintf(stderr, "out of memory (%zu bytes)\n", n);
    abort();
  }
  return p;
}

/* ---------------------------------------------------------------------- */
/* Scratch directories */

/* A fresh directory $TMPDIR/loom-TAG-XXXXXX (TMPDIR: /tmp by default);
 * one that cannot be made aborts the test program. Remove it (and free the
 * path) with test_rmtree(). */
static inline char *test_tmpdir(const char *tag)
{
  const char *root = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  size_t len = strlen(root) + strlen(tag) + 32;
  char *path = xmalloc(len);
  snprintf(path, len, "%s/loom-%s-XXXXXX", root, tag);
  if (!mkdtemp(path)) {
    perror(path);
    abort();
  }
  return path;
}

/* Remove path and everything under it: 0, or -1 (said on stderr). */
static inline int test_remove_tree(const char *path)
{
  size_t len = strlen(path) + 16;
  char *cmd = xmalloc(len);
  snprintf(cmd, len, "rm -rf '%s'", path);
  int rc = system(cmd) == 0 ? 0 : -1;
  if (rc)
    fprintf(stderr, "could not remove %s\n", path);
  free(cmd);
  return rc;
}

/* test_remove_tree, then free path. NULL is allowed. */
static inline void test_rmtree(char *path)
{
  if (!path)
    return;
  test_remove_tree(path);
  free(path);
}

/* The whole file dir/name in a malloc'd buffer (its length in *len), or
 * NULL (*len 0) when it cannot be opened or read. Caller frees. */
static inline uint8_t *test_read_file(const char *dir, const char *name,
                                      size_t *len)
{
  size_t cap = strlen(dir) + strlen(name) + 2;
  char *path = xmalloc(cap);
  snprintf(path, cap, "%s/%s", dir, name);
  FILE *f = fopen(path, "rb");
  free(path);
  *len = 0;
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *buf = xmalloc(n > 0 ? (size_t)n : 1);
  if (n < 0 || (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n)) {
    free(buf);
    buf = NULL;
  } else {
    *len = (size_t)n;
  }
  fclose(f);
  return buf;
}

/* ---------------------------------------------------------------------- */
/* RNG: splitmix64, reproducible from a printed seed. */

typedef struct test_rng {
  uint64_t state;
} test_rng;

static inline uint64_t rng_next(test_rng *r)
{
  uint64_t z = (r->state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static inline uint64_t rng_below(test_rng *r, uint64_t n)
{
  return rng_next(r) % n;
}

static inline void rng_fill(test_rng *r, void *buf, size_t len)
{
  uint8_t *p = buf;
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t v = rng_next(r);
    memcpy(p + i, &v, 8);
  }
  if (i < len) {
    uint64_t v = rng_next(r);
    memcpy(p + i, &v, len - i);
  }
}

/* ---------------------------------------------------------------------- */
/* Waiting: a test waits for what it can observe, with a deadline. A fixed
 * pause is only for pacing a workload or for checking that nothing
 * happens (say which in a comment). */

/* CLOCK_MONOTONIC in milliseconds. */
static inline int64_t test_now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sleep ms milliseconds: between two looks at an observable, or pacing. */
static inline void test_pause_ms(long ms)
{
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

/* Re-evaluate cond every 5 ms until it holds or timeout_ms have passed;
 * then the caller asserts cond (or what it implies). */
#define TEST_WAIT_UNTIL(cond, timeout_ms)                                     \
  do {                                                                        \
    int64_t test_wait_end_ = test_now_ms() + (timeout_ms);                    \
    while (!(cond) && test_now_ms() < test_wait_end_)                         \
      test_pause_ms(5);                                                       \
  } while (0)

#endif
