/*
 * replay_main.c: the plain main() linked into every target of tests/fuzz
 * when it is not built with libFuzzer (gcc, or the ./test replay).
 *
 *   TARGET_replay                 run the seed corpus compiled in
 *                                 (FUZZ_CORPUS) and deterministic mutations
 *                                 of each seed (bit flips, byte sets,
 *                                 truncations, extensions; seeded by the
 *                                 file's index, printed)
 *   TARGET_replay PATH...         the same for these files and directories
 *                                 (a crash file from libFuzzer, say)
 *   TARGET_replay --make-seeds DIR   write the target's seed inputs
 *
 * Exit 0 when every input ran without breaking a promise (a broken one
 * aborts).
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_common.h"

#ifndef FUZZ_CORPUS
#error "FUZZ_CORPUS must name the seed corpus directory"
#endif

static uint64_t splitmix(uint64_t *s)
{
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static size_t runs;

static void replay(const uint8_t *data, size_t size, uint64_t seed)
{
  LLVMFuzzerTestOneInput(data, size);
  runs++;
  uint8_t *m = malloc(size + 64);
  CHECK(m != NULL);
  for (int round = 0; round < fuzz_replay_mutations; round++) {
    memcpy(m, data, size);
    size_t len = size;
    int edits = 1 + (int)(splitmix(&seed) % 4);
    for (int e = 0; e < edits && len > 0; e++) {
      uint64_t r = splitmix(&seed);
      size_t at = (size_t)(r >> 8) % len;
      switch (r % 5) {
      case 0: m[at] ^= (uint8_t)(1u << (r >> 40) % 8); break;
      case 1: m[at] = (uint8_t)(r >> 48); break;
      case 2: len = at; break;
      case 3: m[at] = (uint8_t)((r >> 32) & 1 ? 0xff : 0x00); break;
      default:
        if (len < size + 64) m[len++] = (uint8_t)(r >> 32);
        break;
      }
    }
    LLVMFuzzerTestOneInput(m, len);
    runs++;
  }
  free(m);
}

static int replay_file(const char *path, uint64_t seed)
{
  FILE *fp = fopen(path, "rb");
  if (fp == NULL) {
    perror(path);
    return 1;
  }
  fseek(fp, 0, SEEK_END);
  long size = ftell(fp);
  fseek(fp, 0, SEEK_SET);
  uint8_t *data = malloc(size > 0 ? (size_t)size : 1);
  CHECK(data != NULL);
  size_t got = fread(data, 1, (size_t)size, fp);
  fclose(fp);
  replay(data, got, seed);
  free(data);
  return 0;
}

static int replay_path(const char *path, int *files)
{
  struct stat sb;
  if (stat(path, &sb) != 0) {
    perror(path);
    return 1;
  }
  if (!S_ISDIR(sb.st_mode)) {
    (*files)++;
    return replay_file(path, (uint64_t)*files);
  }
  DIR *d = opendir(path);
  if (d == NULL) {
    perror(path);
    return 1;
  }
  int failed = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char full[4096];
    snprintf(full, sizeof full, "%s/%s", path, e->d_name);
    (*files)++;
    failed |= replay_file(full, (uint64_t)*files);
  }
  closedir(d);
  return failed;
}

int main(int argc, char **argv)
{
  if (argc == 3 && strcmp(argv[1], "--make-seeds") == 0)
    return fuzz_make_seeds(argv[2]);
  int files = 0, failed = 0;
  if (argc > 1) {
    for (int i = 1; i < argc; i++) failed |= replay_path(argv[i], &files);
  } else {
    failed = replay_path(FUZZ_CORPUS, &files);
  }
  printf("%s: %d seed files, %d mutations each, %zu inputs run\n", argv[0],
         files, fuzz_replay_mutations, runs);
  if (files == 0) {
    fprintf(stderr, "no seed inputs found\n");
    return 1;
  }
  return failed;
}
