/* array.h: the growable-array helper, and searching and sorting arrays of
 * uint64_t (page numbers, seqs). Internal: not installed.
 *
 *   uint64_t *items = NULL; size_t cap = 0;
 *   int rc = loom_array_reserve(&items, &cap, count + 1, sizeof *items);
 *
 * Makes room for need elements of elem bytes in the array *data_ptr points
 * to, whose capacity is *cap elements: doubling, at least 16. 0, or ENOMEM
 * (then the array and *cap are unchanged; an overflowing size is ENOMEM
 * too). The elements already there are kept; new ones are not zeroed. */
#ifndef LOOM_ARRAY_H
#define LOOM_ARRAY_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline int loom_array_reserve(void *data_ptr, size_t *cap, size_t need,
                                     size_t elem)
{
  if (need <= *cap)
    return 0;
  size_t n = *cap < 16 ? 16 : *cap;
  while (n < need)
    n = n > SIZE_MAX / 2 ? need : n * 2;
  if (elem && n > SIZE_MAX / elem)
    return ENOMEM;
  void *old;
  memcpy(&old, data_ptr, sizeof old);
  void *grown = realloc(old, n * elem);
  if (!grown)
    return ENOMEM;
  memcpy(data_ptr, &grown, sizeof grown);
  *cap = n;
  return 0;
}

/* Where v would go in the ascending list[0, n): the index of the first
 * element not below it, or n. */
static inline uint64_t loom_sorted_at(const uint64_t *list, uint64_t n, uint64_t v)
{
  uint64_t lo = 0, hi = n;
  while (lo < hi) {
    uint64_t mid = lo + (hi - lo) / 2;
    if (list[mid] < v)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* qsort's comparison of two uint64_t. */
static inline int loom_u64_cmp(const void *a, const void *b)
{
  uint64_t x, y;
  memcpy(&x, a, sizeof x);
  memcpy(&y, b, sizeof y);
  return x < y ? -1 : x > y;
}

/* Sort v[0, n) and drop repeats: the count left. */
static inline size_t loom_sort_unique_u64(uint64_t *v, size_t n)
{
  if (n == 0)
    return 0;
  qsort(v, n, sizeof *v, loom_u64_cmp);
  size_t unique = 1;
  for (size_t i = 1; i < n; i++)
    if (v[i] != v[unique - 1])
      v[unique++] = v[i];
  return unique;
}

#endif
