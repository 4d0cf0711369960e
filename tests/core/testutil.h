/* testutil.h: a page model for the arena tests (directories and the RNG:
 * tests/lib/testlib.h). */
#ifndef LOOM_TESTUTIL_H
#define LOOM_TESTUTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loom.h"
#include "testlib.h"

#define PAGE LOOM_PAGE_SIZE

/* Read the whole image file of dir into a malloc'd buffer. */
static inline uint8_t *read_image(const char *dir, uint64_t *pages)
{
  size_t len;
  uint8_t *buf = test_read_file(dir, "image", &len);
  *pages = (uint64_t)len / PAGE;
  return buf;
}

#endif
