/*
 * fuzz_common.h: what the hostile-input targets of tests/fuzz share: a
 * small deterministic image directory (the template every input starts
 * from), file helpers, and the CHECK macro (a broken promise aborts, which
 * libFuzzer and the replay driver both report as a crash).
 *
 * The template: a store created fresh, then two commits:
 *   seq 1: pages 0..3, page n filled with the byte 'A'+n (and its number)
 *   seq 2: page 1 rewritten, page 4 added (5 pages)
 * then its epoch set to 2 (so frames of epoch 1 are from an older epoch).
 * Every value in it is fixed (commit times too), so the seed corpora kept
 * in the tree keep matching it.
 */
#ifndef LOOMSHIP_FUZZ_COMMON_H
#define LOOMSHIP_FUZZ_COMMON_H

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loom.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Each target defines it: write its seed inputs into dir (replay driver,
 * `--make-seeds DIR`). */
int fuzz_make_seeds(const char *dir);
/* Each target defines it: how many mutations of each seed the replay
 * driver runs. */
extern const int fuzz_replay_mutations;

#define CHECK(cond)                                                      \
  do {                                                                   \
    if (!(cond)) {                                                       \
      fprintf(stderr, "%s:%d: broken promise: %s\n", __FILE__, __LINE__, \
              #cond);                                                    \
      abort();                                                           \
    }                                                                    \
  } while (0)

/* Frames built by hand carry no history. */
static const loom_history no_history;

#define FUZZ_TEMPLATE_PAGES 5u
#define FUZZ_EPOCH 2u
#define FUZZ_TIME_NS 1764115200000000000ll /* 2025-11-26T00:00:00Z */

static inline void fuzz_put_le64(uint8_t *p, uint64_t v)
{
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint64_t fuzz_get_le64(const uint8_t *p)
{
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

static inline void fuzz_fill_page(uint8_t *page, uint64_t n, unsigned version)
{
  memset(page, (int)('A' + n + 16 * version), LOOM_PAGE_SIZE);
  fuzz_put_le64(page, n);
  fuzz_put_le64(page + 8, version);
}

static inline void fuzz_write_file(const char *dir, const char *name,
                                   const void *data, size_t len)
{
  char path[4096];
  CHECK(snprintf(path, sizeof path, "%s/%s", dir, name) < (int)sizeof path);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  CHECK(fd >= 0);
  const uint8_t *p = data;
  while (len > 0) {
    ssize_t w = write(fd, p, len);
    CHECK(w > 0);
    p += w;
    len -= (size_t)w;
  }
  CHECK(close(fd) == 0);
}

/* Read a whole file; NULL with *len 0 when it does not exist. */
static inline uint8_t *fuzz_read_file(const char *dir, const char *name,
                                      size_t *len)
{
  char path[4096];
  CHECK(snprintf(path, sizeof path, "%s/%s", dir, name) < (int)sizeof path);
  *len = 0;
  int fd = open(path, O_RDONLY);
  if (fd < 0) return NULL;
  struct stat sb;
  CHECK(fstat(fd, &sb) == 0);
  uint8_t *buf = malloc((size_t)sb.st_size + 1);
  CHECK(buf != NULL);
  size_t got = 0;
  while (got < (size_t)sb.st_size) {
    ssize_t r = read(fd, buf + got, (size_t)sb.st_size - got);
    CHECK(r > 0);
    got += (size_t)r;
  }
  close(fd);
  *len = got;
  return buf;
}

/* The image files a template consists of (the lock file is made by open). */
static const char *const fuzz_files[] = {"image", "hashes", "meta", "log"};

static inline int fuzz_remove_one(const char *path, const struct stat *sb,
                                  int type, struct FTW *ftw)
{
  (void)sb;
  (void)type;
  (void)ftw;
  remove(path);
  return 0;
}

/* Remove a scratch directory and everything in it. */
static inline void fuzz_clear_dir(const char *dir)
{
  nftw(dir, fuzz_remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Copy the template's files into work (emptied first). The template's
 * files are read once and kept (one template per process). */
static inline void fuzz_copy_template(const char *tmpl, const char *work)
{
  enum { NFILES = sizeof fuzz_files / sizeof fuzz_files[0] };
  static uint8_t *data[NFILES];
  static size_t len[NFILES];
  static int loaded;
  if (!loaded) {
    for (size_t i = 0; i < NFILES; i++)
      data[i] = fuzz_read_file(tmpl, fuzz_files[i], &len[i]);
    loaded = 1;
  }
  fuzz_clear_dir(work);
  CHECK(mkdir(work, 0700) == 0);
  for (size_t i = 0; i < NFILES; i++)
    if (data[i] != NULL) fuzz_write_file(work, fuzz_files[i], data[i], len[i]);
}

/* Commit pages [first, first + count) of pages[] to store, moving it to a
 * position of after_pages pages; checksum computed from pages[]. */
static inline void fuzz_commit(loom_store *store, uint8_t (*pages)[LOOM_PAGE_SIZE],
                               uint64_t first, uint64_t count,
                               uint64_t after_pages, int64_t time_ns)
{
  loom_patch_header h;
  memset(&h, 0, sizeof h);
  loom_store_position(store, &h.before);
  h.after = h.before;
  h.after.seq = h.before.seq + 1;
  h.after.pages = after_pages;
  h.after.commit_time_ns = time_ns;
  uint64_t sum = 0;
  for (uint64_t n = 0; n < after_pages; n++) sum += loom_page_hash(n, pages[n]);
  h.after.checksum = sum;
  h.page_count = count;
  loom_patch *p;
  CHECK(loom_store_patch_begin(store, &h, &p) == 0);
  for (uint64_t n = first; n < first + count; n++)
    CHECK(loom_patch_add(p, n, pages[n]) == 0);
  CHECK(loom_patch_commit(p) == 0);
  CHECK(loom_store_sync(store) == 0);
}

/* The pages of the template at seq 2 (FUZZ_TEMPLATE_PAGES of them), and of
 * the next commit the seeds describe (page 2 rewritten, page 5 added). */
static inline void fuzz_template_pages(uint8_t (*pages)[LOOM_PAGE_SIZE],
                                       int next)
{
  for (uint64_t n = 0; n < FUZZ_TEMPLATE_PAGES + 1; n++)
    fuzz_fill_page(pages[n], n, 0);
  fuzz_fill_page(pages[1], 1, 1);
  if (next) fuzz_fill_page(pages[2], 2, 2);
}

/* Build the template in dir (created); returns its position. */
static inline void fuzz_build_template(const char *dir, loom_position *pos)
{
  fuzz_clear_dir(dir);
  uint8_t (*pages)[LOOM_PAGE_SIZE] = calloc(FUZZ_TEMPLATE_PAGES + 1,
                                            LOOM_PAGE_SIZE);
  CHECK(pages != NULL);
  loom_store *store;
  CHECK(loom_store_open(dir, LOOM_CREATE, NULL, &store) == 0);
  for (uint64_t n = 0; n < 4; n++) fuzz_fill_page(pages[n], n, 0);
  fuzz_commit(store, pages, 0, 4, 4, FUZZ_TIME_NS);
  fuzz_template_pages(pages, 0);
  fuzz_commit(store, pages, 1, 4, FUZZ_TEMPLATE_PAGES, FUZZ_TIME_NS + 1000);
  CHECK(loom_store_set_epoch(store, FUZZ_EPOCH) == 0);
  loom_store_position(store, pos);
  CHECK(loom_store_close(store) == 0);
  free(pages);
}

/* A scratch directory unique to the process: under $FUZZ_SCRATCH when set
 * (fuzz_run.sh sets it to a directory it removes, since libFuzzer may end
 * the process without running atexit handlers), else /dev/shm or /tmp. */
static inline void fuzz_scratch_path(char *out, size_t cap, const char *what)
{
  const char *base = getenv("FUZZ_SCRATCH");
  if (base == NULL || base[0] == 0)
    base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
  snprintf(out, cap, "%s/loomfuzz-%d-%s", base, (int)getpid(), what);
}

/* The position a directory holds after a clean open/close must be the one
 * its pages give: loom_verify agrees. */
static inline void fuzz_check_verifies(const char *dir, loom_position *rec)
{
  uint64_t computed = 0;
  int rc = loom_verify(dir, rec, &computed);
  if (rc != 0)
    fprintf(stderr, "verify: %s (recorded %016llx computed %016llx)\n",
            loom_strerror(rc), (unsigned long long)rec->checksum,
            (unsigned long long)computed);
  CHECK(rc == 0);
  CHECK(computed == rec->checksum);
}

#endif
