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
 *     at another position.
 */
#include <errno.h>
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

/* One creation through the simulator under root, cut before op at into
 * c->out: whether op at happened. */
static int create_and_cut(fixture *fx, const char *root, cut_ctx *c)
{
  iosim *sim;
  assert_int_equal(iosim_create(root, &sim), 0);
  iosim_hook_set(sim, cut_before, c);
  char dir[200];
  snprintf(dir, sizeof dir, "%s/store", root);
  assert_int_equal(create(fx, dir, iosim_io(sim), fx->stream, fx->len, NULL),
                   0);
  assert_int_equal(iosim_model_errors(sim), 0);
  iosim_destroy(sim);
  return c->cut;
}

static void test_power_cuts(void **state)
{
  fixture *fx = *state;
  const unsigned modes[] = {IOSIM_CUT_DROP, IOSIM_CUT_KEEP,
                            IOSIM_CUT_RANDOM_4K | IOSIM_CUT_DIR_RANDOM};
  int stores = 0, none = 0;
  for (size_t m = 0; m < sizeof modes / sizeof *modes; m++) {
    for (uint64_t k = 0;; k++) {
      char root[128];
      snprintf(root, sizeof root, "%s/sim", fx->root);
      assert_int_equal(mkdir(root, 0700), 0);
      cut_ctx c = {.at = k, .seed = k * 7 + m, .mode = modes[m]};
      snprintf(c.out, sizeof c.out, "%s/cut", fx->root);
      int cut = create_and_cut(fx, root, &c);
      run("rm -rf", root, cut ? "" : c.out);
      if (!cut)
        break;
      char dir[200];
      snprintf(dir, sizeof dir, "%s/store", c.out);
      loom_position pos;
      if (loom_inspect(dir, &pos) == 0) {
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

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_copy),
      cmocka_unit_test(test_damaged_stream),
      cmocka_unit_test(test_not_empty),
      cmocka_unit_test(test_power_cuts),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
