/* benchutil.h: what the benchmark programs share: a monotonic clock, and
 * medians with min and max (the machine is shared: report medians and
 * ratios). Header-only; each program includes it once. */
#ifndef LOOMSHIP_BENCHUTIL_H
#define LOOMSHIP_BENCHUTIL_H

#include <stddef.h>
#include <stdlib.h>
#include <time.h>

static inline double now_s(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline int cmp_double(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

typedef struct stat3 {
  double median, min, max;
} stat3;

/* Median, min and max of v[0, n) (sorts v); zeros when n is 0. */
static inline stat3 summarize(double *v, int n)
{
  stat3 s = {0, 0, 0};
  if (n <= 0)
    return s;
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  s.median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  s.min = v[0];
  s.max = v[n - 1];
  return s;
}

/* Percentile q (0..1) of v[0, n) (sorts v); -1 when n is 0. */
static inline double percentile(double *v, size_t n, double q)
{
  if (!n)
    return -1;
  qsort(v, n, sizeof *v, cmp_double);
  return v[(size_t)(q * (double)(n - 1) + 0.5)];
}

#endif
