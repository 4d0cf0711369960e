/*
 * store_repair_test.c: what opening an image directory does with damaged
 * or missing files (core/store.c, RECOVERY R3 and the meta rule):
 *   - a deleted hashes file (derived data) is rebuilt from the image, as a
 *     truncated one is, and verify passes; read-only tools work without it;
 *   - a meta with no valid slot (or none at all) while the image holds
 *     pages is LOOM_EMETA for every opener (never a new empty store);
 *   - a directory that crashed while being created (empty meta, empty
 *     image) still opens as a new store;
 *   - a page repair (LOOM_PATCH_REPAIR) rewrites a rotted page with its good
 *     copy at the same position, refuses a copy that is not the page that
 *     was written, and leaves the store able to commit on.
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

#include "loom.h"

#define PS ((uint64_t)LOOM_PAGE_SIZE)
#define PAGES 6u

typedef struct fixture {
  char dir[64];
  loom_position pos;  /* the position committed by setup */
} fixture;

static void path_of(const fixture *fx, const char *name, char *out, size_t len)
{
  snprintf(out, len, "%s/%s", fx->dir, name);
}

static off_t size_of(const fixture *fx, const char *name)
{
  char path[128];
  path_of(fx, name, path, sizeof path);
  struct stat st;
  return stat(path, &st) == 0 ? st.st_size : -1;
}

/* A store at seq 1 with PAGES pages of known contents. */
static int setup(void **state)
{
  fixture *fx = calloc(1, sizeof *fx);
  strcpy(fx->dir, "/tmp/store-repair-XXXXXX");
  if (!fx || !mkdtemp(fx->dir))
    return -1;
  loom_store *s;
  if (loom_store_open(fx->dir, LOOM_CREATE, NULL, &s) != 0)
    return -1;
  loom_position before;
  loom_store_position(s, &before);
  uint8_t *page = malloc(PS);
  loom_position after = {.epoch = before.epoch, .seq = 1, .pages = PAGES};
  for (uint64_t n = 0; n < PAGES; n++) {
    memset(page, (int)(0x30 + n), PS);
    after.checksum += loom_page_hash(n, page);
  }
  loom_patch_header h = {.before = before, .after = after, .page_count = PAGES};
  loom_patch *p;
  int rc = loom_store_patch_begin(s, &h, &p);
  for (uint64_t n = 0; !rc && n < PAGES; n++) {
    memset(page, (int)(0x30 + n), PS);
    rc = loom_patch_add(p, n, page);
  }
  if (!rc)
    rc = loom_patch_commit(p);
  free(page);
  if (!rc)
    rc = loom_store_close(s);
  fx->pos = after;
  *state = fx;
  return rc ? -1 : 0;
}

static int teardown(void **state)
{
  fixture *fx = *state;
  const char *names[] = {"image", "hashes", "meta", "log", "lock"};
  char path[128];
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    path_of(fx, names[i], path, sizeof path);
    unlink(path);
  }
  rmdir(fx->dir);
  free(fx);
  return 0;
}

static void remove_file(const fixture *fx, const char *name)
{
  char path[128];
  path_of(fx, name, path, sizeof path);
  assert_int_equal(unlink(path), 0);
}

static void overwrite(const fixture *fx, const char *name, off_t off, size_t len)
{
  char path[128];
  path_of(fx, name, path, sizeof path);
  int fd = open(path, O_WRONLY);
  assert_true(fd >= 0);
  uint8_t junk[1024];
  memset(junk, 0x5a, sizeof junk);
  assert_true(len <= sizeof junk);
  assert_int_equal(pwrite(fd, junk, len, off), (ssize_t)len);
  close(fd);
}

static void expect_position(const fixture *fx, const loom_position *p)
{
  assert_int_equal(p->epoch, fx->pos.epoch);
  assert_int_equal(p->seq, fx->pos.seq);
  assert_int_equal(p->checksum, fx->pos.checksum);
  assert_int_equal(p->pages, fx->pos.pages);
}

/* rm hashes: inspect still works, open rebuilds it, verify passes. */
static void test_hashes_deleted(void **state)
{
  fixture *fx = *state;
  remove_file(fx, "hashes");
  loom_position p;
  assert_int_equal(loom_inspect(fx->dir, &p), 0);
  expect_position(fx, &p);
  loom_store *s;
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &s), 0);
  loom_store_position(s, &p);
  expect_position(fx, &p);
  uint8_t *page = malloc(PS);
  memset(page, 0x32, PS);
  assert_int_equal(loom_store_page_hash(s, 2), loom_page_hash(2, page));
  free(page);
  assert_int_equal(loom_store_close(s), 0);
  assert_int_equal(size_of(fx, "hashes"), (off_t)(PAGES * 8));
  uint64_t computed = 0;
  assert_int_equal(loom_verify(fx->dir, &p, &computed), 0);
  assert_int_equal(computed, fx->pos.checksum);
  /* verify alone rebuilds it too. */
  remove_file(fx, "hashes");
  assert_int_equal(loom_verify(fx->dir, &p, &computed), 0);
  assert_int_equal(size_of(fx, "hashes"), (off_t)(PAGES * 8));
}

/* A deleted hashes file is rebuilt only when the image agrees. */
static void test_hashes_deleted_image_damaged(void **state)
{
  fixture *fx = *state;
  remove_file(fx, "hashes");
  overwrite(fx, "image", (off_t)(3 * PS + 100), 16);
  loom_store *s;
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &s), LOOM_ECORRUPT);
}

/* Both meta slots damaged: LOOM_EMETA, for every kind of opener. */
static void test_meta_damaged(void **state)
{
  fixture *fx = *state;
  overwrite(fx, "meta", 0, 1024);
  loom_store *s;
  loom_position p;
  uint64_t computed;
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &s), LOOM_EMETA);
  assert_int_equal(loom_store_open(fx->dir, LOOM_CREATE, NULL, &s), LOOM_EMETA);
  assert_int_equal(loom_store_open(fx->dir, LOOM_READONLY, NULL, &s), LOOM_EMETA);
  assert_int_equal(loom_inspect(fx->dir, &p), LOOM_EMETA);
  assert_int_equal(loom_verify(fx->dir, &p, &computed), LOOM_EMETA);
  /* Nothing was replaced: the image is still there. */
  assert_int_equal(size_of(fx, "image"), (off_t)(PAGES * PS));
  assert_non_null(strstr(loom_strerror(LOOM_EMETA), "meta"));
}

/* One slot damaged: the other one is the position (unchanged rule). */
static void test_meta_one_slot(void **state)
{
  fixture *fx = *state;
  loom_store *s;
  /* Reopen twice so that both slots hold the position. */
  for (int i = 0; i < 2; i++) {
    assert_int_equal(loom_store_open(fx->dir, 0, NULL, &s), 0);
    assert_int_equal(loom_store_close(s), 0);
  }
  overwrite(fx, "meta", 0, 512);
  loom_position p;
  assert_int_equal(loom_inspect(fx->dir, &p), 0);
  expect_position(fx, &p);
}

/* A deleted meta is the same loss. */
static void test_meta_deleted(void **state)
{
  fixture *fx = *state;
  remove_file(fx, "meta");
  loom_store *s;
  loom_position p;
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &s), LOOM_EMETA);
  assert_int_equal(loom_inspect(fx->dir, &p), LOOM_EMETA);
  assert_int_equal(loom_store_open(fx->dir, LOOM_CREATE, NULL, &s), LOOM_EMETA);
  assert_int_equal(size_of(fx, "image"), (off_t)(PAGES * PS));
}

/* A store whose creation crashed (no valid meta, empty image) is still
 * made anew: that is not a lost position. */
static void test_never_committed(void **state)
{
  fixture *fx = *state;
  char path[128];
  path_of(fx, "image", path, sizeof path);
  assert_int_equal(truncate(path, 0), 0);
  path_of(fx, "meta", path, sizeof path);
  assert_int_equal(truncate(path, 0), 0);
  loom_store *s;
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &s), LOOM_ENOIMAGE);
  assert_int_equal(loom_store_open(fx->dir, LOOM_CREATE, NULL, &s), 0);
  loom_position p;
  loom_store_position(s, &p);
  assert_int_equal(p.seq, 0);
  assert_int_equal(loom_store_close(s), 0);
}

/* Page n's good contents (as setup wrote them), or a wrong one. */
static uint8_t *good_page(uint64_t n)
{
  uint8_t *page = malloc(PS);
  assert_non_null(page);
  memset(page, (int)(0x30 + n), PS);
  return page;
}

static void read_image_page(const fixture *fx, uint64_t n, uint8_t *out)
{
  char path[128];
  path_of(fx, "image", path, sizeof path);
  int fd = open(path, O_RDONLY);
  assert_true(fd >= 0);
  assert_int_equal(pread(fd, out, PS, (off_t)(n * PS)), (ssize_t)PS);
  close(fd);
}

static int repair_page(loom_store *s, const loom_position *at, uint64_t n,
                       const uint8_t *page)
{
  loom_patch_header h = {.before = *at, .after = *at, .page_count = 1,
                         .flags = LOOM_PATCH_REPAIR};
  loom_patch *p;
  int rc = loom_store_patch_begin(s, &h, &p);
  if (rc)
    return rc;
  rc = loom_patch_add(p, n, page);
  if (rc) {
    loom_patch_abort(p);
    return rc;
  }
  return loom_patch_commit(p);
}

/* Rot page 3, repair it from a good copy: the image holds the good page,
 * the position did not move, verify passes, the next commit goes on. */
static void test_page_repair(void **state)
{
  fixture *fx = *state;
  overwrite(fx, "image", (off_t)(3 * PS + 100), 16);
  uint64_t computed = 0;
  loom_position p;
  assert_int_equal(loom_verify(fx->dir, &p, &computed), LOOM_ECORRUPT);
  loom_store *s;
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &s), 0);
  loom_store_position(s, &p);
  uint8_t *good = good_page(3), *back = malloc(PS);
  assert_int_equal(repair_page(s, &p, 3, good), 0);
  assert_int_equal(loom_store_sync(s), 0);
  loom_store_position(s, &p);
  expect_position(fx, &p);
  assert_int_equal(loom_store_read_page(s, 3, back), 0);
  assert_memory_equal(back, good, PS);
  assert_int_equal(loom_store_close(s), 0);
  read_image_page(fx, 3, back);
  assert_memory_equal(back, good, PS);
  assert_int_equal(loom_verify(fx->dir, &p, &computed), 0);
  assert_int_equal(computed, fx->pos.checksum);
  /* A normal commit follows the repair. */
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &s), 0);
  loom_position next = fx->pos;
  next.seq = 2;
  memset(back, 0x31, PS);
  memset(good, 0x77, PS);
  next.checksum = fx->pos.checksum - loom_page_hash(1, back) + loom_page_hash(1, good);
  loom_patch_header h = {.before = fx->pos, .after = next, .page_count = 1};
  loom_patch *patch;
  assert_int_equal(loom_store_patch_begin(s, &h, &patch), 0);
  assert_int_equal(loom_patch_add(patch, 1, good), 0);
  assert_int_equal(loom_patch_commit(patch), 0);
  assert_int_equal(loom_store_close(s), 0);
  assert_int_equal(loom_verify(fx->dir, &p, &computed), 0);
  assert_int_equal(p.seq, 2);
  free(good);
  free(back);
}

/* The repaired page survives a reopen (the repair patch, which still
 * counts at its position, is applied again: the same good page). */
static void test_page_repair_reopen(void **state)
{
  fixture *fx = *state;
  overwrite(fx, "image", (off_t)(5 * PS), 8);
  loom_store *s;
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &s), 0);
  uint8_t *good = good_page(5), *back = malloc(PS);
  assert_int_equal(repair_page(s, &fx->pos, 5, good), 0);
  assert_int_equal(loom_store_close(s), 0);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(loom_store_open(fx->dir, 0, NULL, &s), 0);
    loom_position p;
    loom_store_position(s, &p);
    expect_position(fx, &p);
    assert_int_equal(loom_store_close(s), 0);
  }
  read_image_page(fx, 5, back);
  assert_memory_equal(back, good, PS);
  uint64_t computed = 0;
  loom_position p;
  assert_int_equal(loom_verify(fx->dir, &p, &computed), 0);
  free(good);
  free(back);
}

/* A copy that is not the page written at this position, a page past the
 * end, a repair that moves the position or claims to be a base image: all
 * refused, nothing written (the rotted page stays rotted and verify says
 * so). */
static void test_page_repair_refused(void **state)
{
  fixture *fx = *state;
  overwrite(fx, "image", (off_t)(2 * PS + 7), 16);
  loom_store *s;
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &s), 0);
  uint8_t *wrong = good_page(2), *back = malloc(PS);
  wrong[4000] ^= 1;
  assert_int_equal(repair_page(s, &fx->pos, 2, wrong), LOOM_EPOSITION);
  uint8_t *other = good_page(4); /* page 4's contents offered as page 2 */
  assert_int_equal(repair_page(s, &fx->pos, 2, other), LOOM_EPOSITION);
  assert_int_equal(repair_page(s, &fx->pos, PAGES, other), LOOM_EINVAL);
  loom_position moved = fx->pos;
  moved.seq++;
  loom_patch_header h = {.before = fx->pos, .after = moved, .page_count = 1,
                         .flags = LOOM_PATCH_REPAIR};
  loom_patch *p;
  assert_int_equal(loom_store_patch_begin(s, &h, &p), LOOM_EPOSITION);
  h.after = fx->pos;
  h.flags = LOOM_PATCH_REPAIR | LOOM_PATCH_BASE;
  assert_int_equal(loom_store_patch_begin(s, &h, &p), LOOM_EINVAL);
  assert_int_equal(loom_store_close(s), 0);
  read_image_page(fx, 2, back);
  assert_memory_not_equal(back, wrong, PS);
  uint64_t computed = 0;
  loom_position pos;
  assert_int_equal(loom_verify(fx->dir, &pos, &computed), LOOM_ECORRUPT);
  free(wrong);
  free(other);
  free(back);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_hashes_deleted, setup, teardown),
      cmocka_unit_test_setup_teardown(test_hashes_deleted_image_damaged, setup, teardown),
      cmocka_unit_test_setup_teardown(test_meta_damaged, setup, teardown),
      cmocka_unit_test_setup_teardown(test_meta_one_slot, setup, teardown),
      cmocka_unit_test_setup_teardown(test_meta_deleted, setup, teardown),
      cmocka_unit_test_setup_teardown(test_never_committed, setup, teardown),
      cmocka_unit_test_setup_teardown(test_page_repair, setup, teardown),
      cmocka_unit_test_setup_teardown(test_page_repair_reopen, setup, teardown),
      cmocka_unit_test_setup_teardown(test_page_repair_refused, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
