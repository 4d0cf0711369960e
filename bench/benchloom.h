/* benchloom.h: the loom every save benchmark starts from: an arena whose
 * first n pages hold a populated image (page i filled with the byte
 * i % 251 + 1), saved once, with room for `spare` more pages. Header-only,
 * for the benchmark programs that link core/. */
#ifndef LOOMSHIP_BENCHLOOM_H
#define LOOMSHIP_BENCHLOOM_H

#include <stdint.h>
#include <string.h>

#include "loom.h"

/* Open (creating) the loom in dir with o (arena_pages is set here to
 * n + spare, LOOM_CREATE added), fill and save the image: 0 and *out, or
 * the error of loom_open or loom_save (nothing left open then). */
static inline int bench_loom_with_image(const char *dir, loom_options o, uint64_t n,
                                        uint64_t spare, loom **out)
{
  o.arena_pages = n + spare;
  o.flags |= LOOM_CREATE;
  loom *l;
  int rc = loom_open(dir, &o, &l);
  if (rc)
    return rc;
  uint8_t *b = loom_base(l);
  for (uint64_t i = 0; i < n; i++)
    memset(b + i * LOOM_PAGE_SIZE, (int)(i % 251) + 1, LOOM_PAGE_SIZE);
  if ((rc = loom_save(l, n, n + spare))) {
    loom_close(l);
    return rc;
  }
  *out = l;
  return 0;
}

#endif
