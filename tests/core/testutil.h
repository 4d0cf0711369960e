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
  char path[4096];
  snprintf(path, sizeof path, "%s/image", dir);
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *buf = malloc(len > 0 ? (size_t)len : 1);
  if (len > 0 && fread(buf, 1, (size_t)len, f) != (size_t)len) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  *pages = (uint64_t)len / PAGE;
  return buf;
}

#endif
