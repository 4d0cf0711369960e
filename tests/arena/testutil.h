/* testutil.h: temporary directories and a page model for the core tests. */
#ifndef LOOM_TESTUTIL_H
#define LOOM_TESTUTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loom.h"

#define PAGE LOOM_PAGE_SIZE

/* A fresh directory under $TMPDIR (or /tmp); removed by tmpdir_remove. */
static inline char *tmpdir_make(const char *tag)
{
  const char *root = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  size_t len = strlen(root) + strlen(tag) + 32;
  char *path = malloc(len);
  if (!path)
    return NULL;
  snprintf(path, len, "%s/loom-%s-XXXXXX", root, tag);
  if (!mkdtemp(path)) {
    free(path);
    return NULL;
  }
  return path;
}

static inline void tmpdir_remove(char *path)
{
  if (!path)
    return;
  size_t len = strlen(path) + 16;
  char *cmd = malloc(len);
  if (!cmd)
    return;
  snprintf(cmd, len, "rm -rf '%s'", path);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", path);
  free(cmd);
  free(path);
}

/* xorshift64*: reproducible randomness from a printed seed. */
static inline uint64_t rng_next(uint64_t *state)
{
  uint64_t x = *state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *state = x;
  return x * UINT64_C(2685821657736338717);
}

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
