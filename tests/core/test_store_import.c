/*
 * store_import_test.c: loom_store_create_from_stream (core/import.c):
 *   - a stream made from a store makes a directory at the same position
 *     and lineage whose image is byte for byte the store's, and which
 *     verifies; the same with the hashes handed in;
 *   - a damaged stream (a page byte flipped), one cut short, a bad header,
 *     or handed hashes that do not sum to the checksum: an error, and the
 *     directory is no store (loom_inspect and loom_store_open refuse it);
 *   - a directory that holds something: LOOM_EINVAL, left as it was;
 *   - a power cut right before each I/O operation of a creation (the I/O
 *     simulator: unsynced writes dropped, kept, or torn with directory
 *     changes kept in any prefix): the directory is then either no store
 *     or a store at exactly the stream's position that verifies; never one
 *     at another position;
 *   - loom_store_create_from_pages of four chunks (the writer thread
 *     writing one while the next is filled): the n-th pwrite failing (EIO,
 *     ENOSPC), for every n, returns that error and leaves no store; a
 *     power cut before each of its I/O operations leaves no store or the
 *     whole image.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "iosim.h"
#include "loom.h"

#define PS ((uint64_t)LOOM_PAGE_SIZE)
#define PAGES 40u

typedef struct fixture {
  char root[64];
  loom_position pos; /* the source store's */
  loom_lineage lineage;
  uint8_t *stream; /* header + PAGES pages */
  size_t len;
  uint64_t *hashes; /* each page's */
} fixture;

/* The stream's bytes, handed out in order (loom_stream_next_fn). */
typedef struct reader {
  const uint8_t *bytes;
  size_t len, at;
} reader;

static int next_bytes(void *ctx, size_t len, const void **data)
{
  reader *r = ctx;
  if (len > r->len - r->at)
    return EIO;
  *data = r->bytes + r->at;
  r->at += len;
  return 0;
}

/* Runs "CMD A B" in a shell; asserts it succeeded. */
static void run(const char *cmd, const char *a, const char *b)
{
  char line[512];
  snprintf(line, sizeof line, "%s %s %s", cmd, a, b);
  assert_int_equal(system(line), 0);
}

/* A source store of PAGES pages of random bytes at seq 1, with a history,
 * and its image stream. */
static int setup(void **state)
{
  fixture *fx = calloc(1, sizeof *fx);
  strcpy(fx->root, "/tmp/store-import-XXXXXX");
  if (!fx || !mkdtemp(fx->root))
    return -1;
  char src[128];
  snprintf(src, sizeof src, "%s/src", fx->root);
  loom_store *s;
  if (loom_store_open(src, LOOM_CREATE, NULL, &s) ||
      loom_store_ensure_history(s))
    return -1;
  loom_patch_header h = {.page_count = PAGES, .flags = 0};
  loom_store_position(s, &h.before);
  h.after = (loom_position){.epoch = 1, .seq = 1, .pages = PAGES};
  fx->len = LOOM_STREAM_HEADER + PAGES * PS;
  fx->stream = malloc(fx->len);
  fx->hashes = calloc(PAGES, sizeof *fx->hashes);
  uint8_t *pages = fx->stream + LOOM_STREAM_HEADER;
  for (size_t i = 0; i < PAGES * PS; i++)
    pages[i] = (uint8_t)(rand() >> 7);
  for (uint64_t n = 0; n < PAGES; n++) {
    fx->hashes[n] = loom_page_hash(n, pages + n * PS);
    h.after.checksum += fx->hashes[n];
  }
  loom_patch *p;
  if (loom_store_patch_begin(s, &h, &p))
    return -1;
  for (uint64_t n = 0; n < PAGES; n++)
    if (loom_patch_add(p, n, pages + n * PS))
      return -1;
  if (loom_patch_commit(p) || loom_store_sync(s))
    return -1;
  loom_store_position(s, &fx->pos);
  loom_store_lineage(s, &fx->lineage);
  loom_stream_header_encode(fx->stream, &fx->pos, &fx->lineage);
  if (loom_store_close(s))
    return -1;
  *state = fx;
  return 0;
}

static int teardown(void **state)
{
  fixture *fx = *state;
  run("rm -rf", fx->root, "");
  free(fx->stream);
  free(fx->hashes);
  free(fx);
  return 0;
}

static int create(fixture *fx, const char *dir, const loom_io *io,
                  const uint8_t *bytes, size_t len, const uint64_t *hashes)
{
  reader r = {bytes, len, 0};
  loom_position pos;
  int rc = loom_store_create_from_stream(dir, io, next_bytes, &r, hashes, &pos);
  if (rc == 0)
    assert_true(loom_position_same_epoch(&pos, &fx->pos));
  return rc;
}

/* dir opens at the stream's position and lineage, verifies, and its
 * image is the source's, byte for byte. */
static void assert_is_copy(fixture *fx, const char *dir)
{
  loom_position pos;
  loom_lineage lineage;
  assert_int_equal(loom_inspect_lineage(dir, &pos, &lineage), 0);
  assert_true(loom_position_same_epoch(&pos, &fx->pos));
  assert_true(loom_history_equal(&lineage.history, &fx->lineage.history));
  uint64_t computed;
  assert_int_equal(loom_verify(dir, &pos, &computed), 0);
  assert_int_equal(computed, fx->pos.checksum);
  char src[128];
  snprintf(src, sizeof src, "%s/src", fx->root);
  char a[160], b[160];
  snprintf(a, sizeof a, "%s/image", dir);
  snprintf(b, sizeof b, "%s/image", src);
  run("cmp -s", a, b);
}

static void test_copy(void **state)
{
  fixture *fx = *state;
  char dir[128];
  snprintf(dir, sizeof dir, "%s/copy", fx->root);
  assert_int_equal(create(fx, dir, NULL, fx->stream, fx->len, NULL), 0);
  assert_is_copy(fx, dir);
  loom_store *s; /* and it takes commits like any store */
  assert_int_equal(loom_store_open(dir, 0, NULL, &s), 0);
  assert_int_equal(loom_store_close(s), 0);
  snprintf(dir, sizeof dir, "%s/hashed", fx->root);
  assert_int_equal(create(fx, dir, NULL, fx->stream, fx->len, fx->hashes), 0);
  assert_is_copy(fx, dir);
}

/* dir holds no store: inspect and an open refuse it (LOOM_ENOIMAGE; with
 * pages in its image LOOM_EMETA, also with LOOM_CREATE: no new store is
 * made over them). */
static void assert_no_store(const char *dir, int pages_written)
{
  loom_position pos;
  loom_store *s;
  assert_int_not_equal(loom_inspect(dir, &pos), 0);
  assert_int_equal(loom_store_open(dir, 0, NULL, &s),
                   pages_written ? LOOM_EMETA : LOOM_ENOIMAGE);
  if (pages_written)
    assert_int_equal(loom_store_open(dir, LOOM_CREATE, NULL, &s), LOOM_EMETA);
}

static void test_damaged_stream(void **state)
{
  fixture *fx = *state;
  char dir[128];
  uint8_t *bad = malloc(fx->len);
  memcpy(bad, fx->stream, fx->len);
  bad[LOOM_STREAM_HEADER + 7 * PS + 99] ^= 1;
  snprintf(dir, sizeof dir, "%s/flipped", fx->root);
  assert_int_equal(create(fx, dir, NULL, bad, fx->len, NULL), LOOM_ECORRUPT);
  assert_no_store(dir, 1);
  snprintf(dir, sizeof dir, "%s/short", fx->root);
  assert_int_equal(create(fx, dir, NULL, fx->stream, fx->len - PS, NULL), EIO);
  assert_no_store(dir, 0);
  uint64_t *wrong = malloc(PAGES * sizeof *wrong);
  memcpy(wrong, fx->hashes, PAGES * sizeof *wrong);
  wrong[3]++;
  snprintf(dir, sizeof dir, "%s/wronghash", fx->root);
  assert_int_equal(create(fx, dir, NULL, fx->stream, fx->len, wrong),
                   LOOM_ECORRUPT);
  assert_no_store(dir, 1);
  memcpy(bad, fx->stream, fx->len);
  bad[20] ^= 1;
  snprintf(dir, sizeof dir, "%s/header", fx->root);
  assert_int_equal(create(fx, dir, NULL, bad, fx->len, NULL), LOOM_ECORRUPT);
  free(wrong);
  free(bad);
}

static void test_not_empty(void **state)
{
  fixture *fx = *state;
  char dir[128], file[160];
  snprintf(dir, sizeof dir, "%s/full", fx->root);
  assert_int_equal(mkdir(dir, 0700), 0);
  snprintf(file, sizeof file, "%s/notes", dir);
  FILE *f = fopen(file, "w");
  assert_non_null(f);
  fclose(f);
  assert_int_equal(create(fx, dir, NULL, fx->stream, fx->len, NULL),
                   LOOM_EINVAL);
  assert_int_equal(access(file, F_OK), 0);
  char src[128];
  snprintf(src, sizeof src, "%s/src", fx->root); /* a store: refused too */
  assert_int_equal(create(fx, src, NULL, fx->stream, fx->len, NULL),
                   LOOM_EINVAL);
}

typedef struct cut_ctx {
  uint64_t at, seed;
  unsigned mode;
  bool big; /* the four-chunk import (create_big), else the stream's */
  char out[160];
  int cut;
} cut_ctx;

static void cut_before(void *ctx, iosim *sim, uint64_t k, loom_io_op op)
{
  (void)op;
  cut_ctx *c = ctx;
  if (k == c->at) {
    assert_int_equal(iosim_powercut(sim, c->seed, c->out, c->mode), 0);
    c->cut = 1;
  }
}

static int create_big(fixture *fx, const char *dir, const loom_io *io);

/* One creation through the simulator under root, cut before op at into
 * c->out: whether op at happened. */
static int create_and_cut(fixture *fx, const char *root, cut_ctx *c)
{
  iosim *sim;
  assert_int_equal(iosim_create(root, &sim), 0);
  iosim_hook_set(sim, cut_before, c);
  char dir[200];
  snprintf(dir, sizeof dir, "%s/store", root);
  const loom_io *io = iosim_io(sim);
  assert_int_equal(c->big ? create_big(fx, dir, io)
                          : create(fx, dir, io, fx->stream, fx->len, NULL),
                   0);
  assert_int_equal(iosim_model_errors(sim), 0);
  iosim_destroy(sim);
  return c->cut;
}

static void assert_is_big(fixture *fx, const char *dir);

/* A creation (the stream's, or with big the four-chunk import's) cut
 * before each of its operations in turn, in three modes: no store, or a
 * copy of the source. */
static void power_cuts(fixture *fx, bool big)
{
  const unsigned modes[] = {IOSIM_CUT_DROP, IOSIM_CUT_KEEP,
                            IOSIM_CUT_RANDOM_4K | IOSIM_CUT_DIR_RANDOM};
  int stores = 0, none = 0;
  for (size_t m = 0; m < sizeof modes / sizeof *modes; m++) {
    for (uint64_t k = 0;; k++) {
      char root[128];
      snprintf(root, sizeof root, "%s/sim", fx->root);
      assert_int_equal(mkdir(root, 0700), 0);
      cut_ctx c = {.at = k, .seed = k * 7 + m, .mode = modes[m], .big = big};
      snprintf(c.out, sizeof c.out, "%s/cut", fx->root);
      int cut = create_and_cut(fx, root, &c);
      run("rm -rf", root, cut ? "" : c.out);
      if (!cut)
        break;
      char dir[200];
      snprintf(dir, sizeof dir, "%s/store", c.out);
      loom_position pos;
      if (loom_inspect(dir, &pos) == 0) {
        if (big)
          assert_is_big(fx, dir);
        else
          assert_is_copy(fx, dir);
        stores++;
      } else {
        loom_store *s;
        assert_int_not_equal(loom_store_open(dir, 0, NULL, &s), 0);
        none++;
      }
      run("rm -rf", c.out, "");
    }
  }
  /* Both outcomes were met: cuts before the meta, and after it. */
  assert_true(stores > 0);
  assert_true(none > 0);
}

static void test_power_cuts(void **state)
{
  power_cuts(*state, false);
}

/* ---------------------------------------------------------------------- */
/* A multi-chunk import (loom_store_create_from_pages): the pages are
 * made chunk by chunk and written by the importer's writer thread */

#define BIG_PAGES (3 * LOOM_IMPORT_CHUNK_PAGES + 17) /* 4 chunks */

/* The big image: page n's bytes from a splitmix of n, made once. */
static uint8_t *big_image(loom_position *pos, const fixture *fx)
{
  static uint8_t *img;
  static uint64_t sum;
  if (!img) {
    img = malloc(BIG_PAGES * PS);
    assert_non_null(img);
    uint64_t z = 42;
    for (size_t i = 0; i < BIG_PAGES * PS; i += 8) {
      z += 0x9e3779b97f4a7c15ull;
      uint64_t v = (z ^ (z >> 31)) * 0xbf58476d1ce4e5b9ull;
      memcpy(img + i, &v, 8);
    }
    for (uint64_t n = 0; n < BIG_PAGES; n++)
      sum += loom_page_hash(n, img + n * PS);
  }
  *pos = (loom_position){.epoch = fx->pos.epoch, .seq = fx->pos.seq,
                         .pages = BIG_PAGES, .checksum = sum};
  return img;
}

/* loom_page_fill_fn: chunks of the big image. */
static int fill_big(void *ctx, uint64_t first, uint64_t k, uint8_t *buf,
                    uint64_t *hashes)
{
  const uint8_t *img = ctx;
  memcpy(buf, img + first * PS, k * PS);
  for (uint64_t i = 0; i < k; i++)
    hashes[i] = loom_page_hash(first + i, buf + i * PS);
  return 0;
}

static int create_big(fixture *fx, const char *dir, const loom_io *io)
{
  loom_position pos;
  uint8_t *img = big_image(&pos, fx);
  return loom_store_create_from_pages(dir, io, &pos, &fx->lineage, fill_big,
                                      img);
}

/* dir is a store at the big image's position that verifies, its image
 * the big image byte for byte. */
static void assert_is_big(fixture *fx, const char *dir)
{
  loom_position want, pos;
  const uint8_t *img = big_image(&want, fx);
  uint64_t computed;
  assert_int_equal(loom_verify(dir, &pos, &computed), 0);
  assert_true(loom_position_same_epoch(&pos, &want));
  assert_int_equal(computed, want.checksum);
  char path[300];
  snprintf(path, sizeof path, "%s/image", dir);
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  uint8_t *page = malloc(PS);
  for (uint64_t n = 0; n < BIG_PAGES; n++) {
    assert_int_equal(fread(page, 1, PS, f), PS);
    assert_memory_equal(page, img + n * PS, PS);
  }
  assert_int_equal(fread(page, 1, 1, f), 0);
  free(page);
  fclose(f);
}

/* dir holds no store: no meta (also when the meta's own write failed:
 * C6 removes the file it made), and inspect and an open refuse it. */
static void assert_no_meta(const char *dir)
{
  char path[300];
  snprintf(path, sizeof path, "%s/meta", dir);
  struct stat st;
  assert_int_not_equal(stat(path, &st), 0);
  loom_position pos;
  loom_store *s;
  assert_int_not_equal(loom_inspect(dir, &pos), 0);
  assert_int_not_equal(loom_store_open(dir, 0, NULL, &s), 0);
}

/* The n-th pwrite of a multi-chunk import failing with err (EIO, then
 * ENOSPC), for every n, among them the image's chunks the writer thread
 * writes: the import returns err and leaves no store. Then one with no
 * fault makes the image. */
static void test_big_write_errors(void **state)
{
  fixture *fx = *state;
  const int errs[] = {EIO, ENOSPC};
  for (size_t e = 0; e < 2; e++) {
    uint64_t failed = 0;
    for (uint64_t n = 0;; n++) {
      char root[128], dir[200];
      snprintf(root, sizeof root, "%s/bigfail", fx->root);
      assert_int_equal(mkdir(root, 0700), 0);
      snprintf(dir, sizeof dir, "%s/store", root);
      iosim *sim;
      assert_int_equal(iosim_create(root, &sim), 0);
      iosim_fault f = {.kind = IOSIM_FAIL, .err = errs[e], .by_type = 1,
                       .op = LOOM_IO_PWRITE, .index = n};
      assert_int_equal(iosim_fault_add(sim, &f), 0);
      int rc = create_big(fx, dir, iosim_io(sim));
      bool fired = iosim_faults_injected(sim) > 0;
      uint64_t pwrites = iosim_count_op(sim, LOOM_IO_PWRITE);
      iosim_destroy(sim);
      if (!fired) {
        assert_int_equal(rc, 0);
        assert_is_big(fx, dir);
        run("rm -rf", root, "");
        break;
      }
      if (rc != errs[e])
        print_error("pwrite %" PRIu64 " of %" PRIu64 " failed: rc %d\n", n,
                    pwrites, rc);
      assert_int_equal(rc, errs[e]);
      assert_no_meta(dir);
      failed++;
      run("rm -rf", root, "");
    }
    /* At least the image's four chunks were each failed once. */
    assert_true(failed >= (BIG_PAGES + LOOM_IMPORT_CHUNK_PAGES - 1) /
                             LOOM_IMPORT_CHUNK_PAGES);
  }
}

/* A power cut before each I/O operation of a multi-chunk import (chunks
 * written by the writer thread while the next is made): no store, or one
 * at the image's position whose image is the whole image. */
static void test_big_power_cuts(void **state)
{
  power_cuts(*state, true);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_copy),
      cmocka_unit_test(test_damaged_stream),
      cmocka_unit_test(test_not_empty),
      cmocka_unit_test(test_power_cuts),
      cmocka_unit_test(test_big_write_errors),
      cmocka_unit_test(test_big_power_cuts),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
