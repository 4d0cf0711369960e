/* array.h: the growable-array helper. Internal: not installed.
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

#endif
