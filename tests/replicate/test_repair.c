/*
 * test_repair.c: writing fetched good copies of rotted pages
 * (replicate/repair.c, replicate_repair_pages) into a real store: a good
 * answer repairs the image at the same position; an answer with a page
 * that does not match its hash, a page of another position, another
 * position or history, the wrong pages, or a damaged answer is refused and
 * nothing is written; the same through a standby's receiver
 * (replicate_receiver_repair); the scrubber's repair hook: repairing, then
 * ok with pages_repaired, or corrupt after REPLICATE_REPAIR_TRIES failed
 * rounds with the reason.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <time.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "receiver.h"
#include "replicate.h"
#include "testlib.h"

#define PS ((uint64_t)LOOM_PAGE_SIZE)
#define PAGES 8u

typedef struct fixture {
  char *dir;
  loom_store *store;
  uint64_t rotted[2];
} fixture;

static void fill(uint64_t n, uint8_t *page)
{
  memset(page, (int)(0x41 + n), PS);
}

static void write_image(const fixture *fx, uint64_t n, const uint8_t *page)
{
  char path[512];
  snprintf(path, sizeof path, "%s/image", fx->dir);
  int fd = open(path, O_WRONLY);
  assert_true(fd >= 0);
  assert_int_equal(pwrite(fd, page, PS, (off_t)(n * PS)), (ssize_t)PS);
  close(fd);
}

/* A store at seq 1 with PAGES known pages; pages 2 and 5 then rotted in
 * the image file behind its back. */
static int setup(void **state)
{
  fixture *fx = calloc(1, sizeof *fx);
  fx->dir = test_tmpdir("repair");
  if (loom_store_open(fx->dir, LOOM_CREATE, NULL, &fx->store) ||
      loom_store_ensure_history(fx->store))
    return -1;
  loom_patch_header h = {.page_count = PAGES};
  loom_store_position(fx->store, &h.before);
  h.after = (loom_position){.epoch = h.before.epoch, .seq = 1, .pages = PAGES};
  uint8_t page[LOOM_PAGE_SIZE];
  for (uint64_t n = 0; n < PAGES; n++) {
    fill(n, page);
    h.after.checksum += loom_page_hash(n, page);
  }
  loom_patch *p;
  int rc = loom_store_patch_begin(fx->store, &h, &p);
  for (uint64_t n = 0; !rc && n < PAGES; n++) {
    fill(n, page);
    rc = loom_patch_add(p, n, page);
  }
  if (!rc)
    rc = loom_patch_commit(p);
  if (!rc)
    rc = loom_store_sync(fx->store);
  fx->rotted[0] = 2;
  fx->rotted[1] = 5;
  for (int i = 0; !rc && i < 2; i++) {
    fill(fx->rotted[i], page);
    page[1234] ^= 0x10;
    write_image(fx, fx->rotted[i], page);
  }
  *state = fx;
  return rc ? -1 : 0;
}

static int teardown(void **state)
{
  fixture *fx = *state;
  loom_store_close(fx->store);
  test_rmtree(fx->dir);
  free(fx);
  return 0;
}

/* An answer for pages[0, count) at the store's position, each page's
 * contents from fill() (the good ones). */
static uint8_t *answer_for(const fixture *fx, const uint64_t *pages,
                           uint64_t count, size_t *len)
{
  replicate_answer_head h = {.kind = REPLICATE_ANSWER_PAGES, .count = count};
  loom_lineage lineage;
  loom_store_lineage(fx->store, &lineage);
  h.history = lineage.history;
  loom_store_position(fx->store, &h.position);
  *len = replicate_answer_size(REPLICATE_ANSWER_PAGES, count);
  uint8_t *buf = calloc(1, *len);
  assert_non_null(buf);
  replicate_answer_begin(&h, buf);
  uint8_t page[LOOM_PAGE_SIZE];
  for (uint64_t i = 0; i < count; i++) {
    fill(pages[i], page);
    replicate_answer_put_page(buf, i, pages[i], loom_page_hash(pages[i], page), page);
  }
  replicate_answer_seal(buf, *len);
  return buf;
}

/* Whether page n of the store reads as its good contents. */
static bool page_good(const fixture *fx, uint64_t n)
{
  uint8_t want[LOOM_PAGE_SIZE], got[LOOM_PAGE_SIZE];
  fill(n, want);
  assert_int_equal(loom_store_read_page(fx->store, n, got), 0);
  return memcmp(want, got, PS) == 0;
}

static void test_repairs(void **state)
{
  fixture *fx = *state;
  loom_position before, after;
  loom_store_position(fx->store, &before);
  assert_false(page_good(fx, 2));
  assert_false(page_good(fx, 5));
  size_t len;
  uint8_t *a = answer_for(fx, fx->rotted, 2, &len);
  assert_int_equal(replicate_repair_pages(fx->store, a, len, fx->rotted, 2), 0);
  assert_true(page_good(fx, 2));
  assert_true(page_good(fx, 5));
  loom_store_position(fx->store, &after);
  assert_true(loom_position_same_epoch(&before, &after));
  free(a);
  /* Durable: the directory verifies once closed. */
  assert_int_equal(loom_store_close(fx->store), 0);
  fx->store = NULL;
  uint64_t computed;
  assert_int_equal(loom_verify(fx->dir, &after, &computed), 0);
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &fx->store), 0);
}

/* Each refused, and the rotted pages are still rotted. */
static void expect_refused(fixture *fx, uint8_t *a, size_t len,
                           const uint64_t *pages, uint64_t count, int want)
{
  assert_int_equal(replicate_repair_pages(fx->store, a, len, pages, count), want);
  assert_false(page_good(fx, 2));
  assert_false(page_good(fx, 5));
  free(a);
}

static void test_refused(void **state)
{
  fixture *fx = *state;
  size_t len;
  uint8_t *a = answer_for(fx, fx->rotted, 2, &len);
  /* A page whose contents do not match the hash it comes with. */
  replicate_answer_page_slot(a, 1)[100] ^= 1;
  replicate_answer_seal(a, len);
  expect_refused(fx, a, len, fx->rotted, 2, REPLICATE_EPAGE_HASH);
  /* A page consistent with its hash, but not the page written here. */
  a = answer_for(fx, fx->rotted, 2, &len);
  uint8_t other[LOOM_PAGE_SIZE];
  fill(6, other);
  replicate_answer_put_page(a, 0, 2, loom_page_hash(2, other), other);
  replicate_answer_seal(a, len);
  expect_refused(fx, a, len, fx->rotted, 2, REPLICATE_EPAGE_HASH);
  /* Another position. */
  a = answer_for(fx, fx->rotted, 2, &len);
  a[16] ^= 1; /* position.seq */
  replicate_answer_seal(a, len);
  expect_refused(fx, a, len, fx->rotted, 2, REPLICATE_EPOSITION);
  /* Another history. */
  a = answer_for(fx, fx->rotted, 2, &len);
  a[56] ^= 1;
  replicate_answer_seal(a, len);
  expect_refused(fx, a, len, fx->rotted, 2, REPLICATE_EHISTORY);
  /* Not the pages asked for. */
  uint64_t wrong[2] = {2, 6};
  a = answer_for(fx, wrong, 2, &len);
  expect_refused(fx, a, len, fx->rotted, 2, REPLICATE_EANSWER);
  a = answer_for(fx, fx->rotted, 1, &len);
  expect_refused(fx, a, len, fx->rotted, 2, REPLICATE_EANSWER);
  /* Damaged on the way (one bit, not resealed). */
  a = answer_for(fx, fx->rotted, 2, &len);
  a[len / 2] ^= 4;
  expect_refused(fx, a, len, fx->rotted, 2, REPLICATE_EANSWER);
}

/* Through a standby's receiver: the pages are good in its snapshots. */
static void test_receiver_repairs(void **state)
{
  fixture *fx = *state;
  size_t len;
  uint8_t *a = answer_for(fx, fx->rotted, 2, &len);
  assert_int_equal(loom_store_close(fx->store), 0);
  fx->store = NULL;
  replicate_receiver_options o = {.dir = fx->dir};
  replicate_receiver *rx;
  assert_int_equal(replicate_receiver_open(&o, &rx), 0);
  uint64_t bad[1] = {4}; /* page 4 is fine, but not what the answer holds */
  assert_int_equal(replicate_receiver_repair(rx, a, len, bad, 1), REPLICATE_EANSWER);
  assert_int_equal(replicate_receiver_repair(rx, a, len, fx->rotted, 2), 0);
  loom_snapshot *snap;
  assert_int_equal(replicate_receiver_snapshot_open(rx, &snap), 0);
  uint8_t want[LOOM_PAGE_SIZE], got[LOOM_PAGE_SIZE];
  for (int i = 0; i < 2; i++) {
    fill(fx->rotted[i], want);
    assert_int_equal(loom_snapshot_read(snap, fx->rotted[i] * PS, got, PS), 0);
    assert_memory_equal(want, got, PS);
  }
  replicate_receiver_snapshot_close(rx, snap);
  assert_int_equal(replicate_receiver_close(rx), 0);
  free(a);
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &fx->store), 0);
}

/* The scrubber's side: snapshots of the fixture's store, and a repair hook
 * that answers with the good pages (or fails, when fail is set). */
typedef struct hook {
  fixture *fx;
  bool fail;
  int busy;                     /* the first calls answer EBUSY */
  bool base_during;             /* the first call sees a base installed */
  replicate_scrubber *sc;
  atomic_int calls;
  uint64_t pages[4];
  uint64_t count;
  atomic_int base_asks;         /* want_base calls */
} hook;

static void hook_want_base(void *ctx, const char *why)
{
  (void)why;
  atomic_fetch_add(&((hook *)ctx)->base_asks, 1);
}

static int hook_snap_open(void *ctx, loom_snapshot **out)
{
  return loom_store_snapshot_open(((hook *)ctx)->fx->store, out);
}

static void hook_snap_close(void *ctx, loom_snapshot *snap)
{
  (void)ctx;
  loom_snapshot_close(snap);
}

static int hook_repair(void *ctx, const uint64_t *pages, uint64_t count, char *why,
                       size_t why_len)
{
  hook *h = ctx;
  atomic_fetch_add(&h->calls, 1);
  h->count = count;
  memcpy(h->pages, pages, (size_t)(count < 4 ? count : 4) * sizeof *pages);
  if (h->busy > 0) {
    h->busy--;
    snprintf(why, why_len, "a base image is being installed");
    return EBUSY;
  }
  if (h->base_during) {
    h->base_during = false;
    replicate_scrubber_base_installed(h->sc, NULL, 0);
    snprintf(why, why_len, "cut by the base image");
    return EIO;
  }
  if (h->fail) {
    snprintf(why, why_len, "the upstream is away");
    return EIO;
  }
  size_t len;
  uint8_t *a = answer_for(h->fx, pages, count, &len);
  int rc = replicate_repair_pages(h->fx->store, a, len, pages, count);
  free(a);
  return rc;
}

/* The scrubber's status once pred holds, within 10 s. */
static replicate_scrub_status wait_status(replicate_scrubber *sc,
                                          bool (*pred)(const replicate_scrub_status *))
{
  replicate_scrub_status st;
  for (int i = 0; i < 1000; i++) {
    replicate_scrubber_status(sc, &st);
    if (pred(&st))
      break;
    nanosleep(&(struct timespec){0, 10000000}, NULL);
  }
  return st;
}

static bool repaired(const replicate_scrub_status *st)
{
  return st->state == REPLICATE_INTEGRITY_OK && st->pages_repaired >= 2;
}

static bool gave_up(const replicate_scrub_status *st)
{
  return st->state == REPLICATE_INTEGRITY_CORRUPT && strstr(st->last_error, "failed");
}

static void test_scrubber_hook(void **state)
{
  fixture *fx = *state;
  hook h = {.fx = fx};
  replicate_scrub_options o = {.snapshot_open = hook_snap_open,
                               .snapshot_close = hook_snap_close, .ctx = &h,
                               .interval_seconds = 0.05, .mbps = 64,
                               .repair = hook_repair, .repair_ctx = &h};
  replicate_scrubber *sc;
  assert_int_equal(replicate_scrubber_start(&o, &sc), 0);
  replicate_scrub_status st = wait_status(sc, repaired);
  replicate_scrubber_stop(sc);
  assert_true(repaired(&st));
  assert_int_equal(st.pages_repaired, 2);
  assert_int_equal(h.count, 2);
  assert_int_equal(h.pages[0], 2);
  assert_int_equal(h.pages[1], 5);
  assert_true(page_good(fx, 2));
  assert_true(page_good(fx, 5));
  assert_string_equal(st.last_error, "");
}

static void test_scrubber_hook_fails(void **state)
{
  fixture *fx = *state;
  hook h = {.fx = fx, .fail = true};
  replicate_scrub_options o = {.snapshot_open = hook_snap_open,
                               .snapshot_close = hook_snap_close, .ctx = &h,
                               .interval_seconds = 0.05, .mbps = 64,
                               .repair = hook_repair, .repair_ctx = &h,
                               .want_base = hook_want_base};
  replicate_scrubber *sc;
  assert_int_equal(replicate_scrubber_start(&o, &sc), 0);
  replicate_scrub_status st = wait_status(sc, gave_up);
  replicate_scrubber_stop(sc);
  assert_int_equal(st.state, REPLICATE_INTEGRITY_CORRUPT);
  assert_true(atomic_load(&h.calls) >= REPLICATE_REPAIR_TRIES);
  /* A pass's pages do not hold the standby up: the next pass tries again,
   * no base image is asked for. */
  assert_int_equal(atomic_load(&h.base_asks), 0);
  assert_int_equal(st.pages_repaired, 0);
  assert_non_null(strstr(st.last_error, "the upstream is away"));
  assert_false(page_good(fx, 2));
  assert_false(page_good(fx, 5));
}

/* ---------------------------------------------------------------------- */
/* replicate_repair_from with a fake upstream at the store's position */

typedef struct fake_upstream {
  fixture *fx;
  int requests;
  bool other_history;           /* the pin names another history */
  bool rot_page5;               /* page 5 is served rotted (its hash good) */
} fake_upstream;

static int fake_get(void *ctx, const char *path, replicate_tag_kind kind, uint8_t **body,
                    size_t *len, char *why, size_t why_len)
{
  (void)why, (void)why_len;
  fake_upstream *u = ctx;
  u->requests++;
  if (strncmp(path, "/v1/tree?level=0&first=0&count=0", 32) == 0) {
    assert_int_equal(kind, REPLICATE_TAG_TREE);
    replicate_answer_head h = {.kind = REPLICATE_ANSWER_TREE};
    loom_lineage lineage;
    loom_store_lineage(u->fx->store, &lineage);
    h.history = lineage.history;
    if (u->other_history)
      h.history.id[0] ^= 1;
    loom_store_position(u->fx->store, &h.position);
    *len = replicate_answer_size(REPLICATE_ANSWER_TREE, 0);
    *body = calloc(1, *len);
    replicate_answer_begin(&h, *body);
    replicate_answer_seal(*body, *len);
    return 0;
  }
  assert_int_equal(kind, REPLICATE_TAG_PAGES);
  assert_string_equal(path, "/v1/pages?seq=1&pages=2,5"); /* just the bad ones */
  *body = answer_for(u->fx, u->fx->rotted, 2, len);
  if (u->rot_page5) {
    uint64_t n, hash;
    const uint8_t *contents;
    replicate_answer_page(*body, 1, &n, &hash, &contents);
    ((uint8_t *)contents)[99] ^= 1;
    replicate_answer_seal(*body, *len);
  }
  return 0;
}

static void test_repair_from(void **state)
{
  fixture *fx = *state;
  fake_upstream u = {.fx = fx};
  replicate_repair_source src = {fake_get, &u};
  uint64_t moved = 0;
  char why[200];
  assert_int_equal(replicate_repair_from(fx->store, &src, fx->rotted, 2, &moved, why,
                                         sizeof why), 0);
  assert_int_equal(moved, 2);
  assert_int_equal(u.requests, 2); /* the pin and the pages: no hashes at our position */
  assert_true(page_good(fx, 2));
  assert_true(page_good(fx, 5));
  loom_position pos;
  loom_store_position(fx->store, &pos);
  assert_int_equal(pos.seq, 1);
}

static void test_repair_from_refused(void **state)
{
  fixture *fx = *state;
  fake_upstream u = {.fx = fx, .rot_page5 = true};
  replicate_repair_source src = {fake_get, &u};
  uint64_t moved = 9;
  char why[200];
  assert_int_equal(replicate_repair_from(fx->store, &src, fx->rotted, 2, &moved, why,
                                         sizeof why), REPLICATE_EPAGE_HASH);
  assert_non_null(strstr(why, "page 5 from the upstream refused"));
  assert_int_equal(moved, 0);
  assert_false(page_good(fx, 2)); /* nothing written, not even the good one */
  u = (fake_upstream){.fx = fx, .other_history = true};
  assert_int_equal(replicate_repair_from(fx->store, &src, fx->rotted, 2, &moved, why,
                                         sizeof why), REPLICATE_EHISTORY);
  assert_int_equal(u.requests, 1);
  assert_false(page_good(fx, 5));
}

/* A scrubber that makes no passes, repairing through h, waiting
 * retry_seconds after a failed try (0: the default), asking h for a base
 * image when want_base (then h->sc is the scrubber). */
static replicate_scrubber *start_repair_only(hook *h, double retry_seconds,
                                             bool want_base)
{
  replicate_scrub_options o = {.snapshot_open = hook_snap_open,
                               .snapshot_close = hook_snap_close, .ctx = h,
                               .repair = hook_repair, .repair_ctx = h,
                               .want_base = want_base ? hook_want_base : NULL,
                               .repair_only = true,
                               .repair_retry_seconds = retry_seconds};
  replicate_scrubber *sc = NULL;
  assert_int_equal(replicate_scrubber_start(&o, &sc), 0);
  assert_non_null(sc);
  h->sc = sc;
  return sc;
}

/* Pages handed to a scrubber that makes no passes are repaired at once. */
static void test_asked_repair(void **state)
{
  fixture *fx = *state;
  hook h = {.fx = fx};
  replicate_scrubber *sc = start_repair_only(&h, 0, false);
  replicate_scrubber_request_repair(sc, &fx->rotted[1], 1);
  replicate_scrubber_request_repair(sc, fx->rotted, 2); /* 5 again: once */
  replicate_scrub_status st = wait_status(sc, repaired);
  replicate_scrubber_stop(sc);
  assert_true(repaired(&st));
  assert_false(st.running); /* no passes */
  assert_int_equal(st.pages_scrubbed, 0);
  assert_true(page_good(fx, 2));
  assert_true(page_good(fx, 5));
}

/* A page reported again while it is asked for, or while its round runs
 * (a frame that no longer applies reports its pages at each try), counts
 * once in bad_pages; a page reported twice in one call too. */
static bool first_try_failed(const replicate_scrub_status *st)
{
  return strstr(st->last_error, "try 1 of") != NULL;
}

static void test_found_again_counts_once(void **state)
{
  fixture *fx = *state;
  hook h = {.fx = fx, .fail = true};
  replicate_scrubber *sc = start_repair_only(&h, 60, false); /* the round waits */
  uint64_t five_twice[] = {5, 5};
  replicate_scrubber_request_repair(sc, five_twice, 2);
  replicate_scrub_status st = wait_status(sc, first_try_failed);
  assert_true(first_try_failed(&st)); /* 5's round runs */
  replicate_scrubber_request_repair(sc, fx->rotted, 2); /* 2 and 5 */
  replicate_scrubber_status(sc, &st);
  replicate_scrubber_stop(sc);
  assert_int_equal(st.bad_pages, 2);
  assert_int_equal(st.state, REPLICATE_INTEGRITY_REPAIRING);
}

/* The pages a base image's own read-back found are asked for again when
 * the base ends (which drops the others), and not counted again: they
 * were counted when found. */
static bool one_repaired(const replicate_scrub_status *st)
{
  return st->state == REPLICATE_INTEGRITY_OK && st->pages_repaired >= 1;
}

static void test_base_installed_still_bad(void **state)
{
  fixture *fx = *state;
  hook h = {.fx = fx};
  replicate_scrubber *sc = start_repair_only(&h, 0, false);
  replicate_scrubber_base_installed(sc, &fx->rotted[1], 1);
  replicate_scrub_status st = wait_status(sc, one_repaired);
  replicate_scrubber_stop(sc);
  assert_true(one_repaired(&st));
  assert_int_equal(st.bad_pages, 0);
  assert_true(page_good(fx, fx->rotted[1]));
}

/* Pages asked for hold the standby up (a frame that no longer applies, a
 * read-back its primary sees as another checksum): when the last round
 * fails, a base image is asked for, once. */
static bool base_asked(const replicate_scrub_status *st)
{
  return st->state == REPLICATE_INTEGRITY_CORRUPT && strstr(st->last_error, "asked for");
}

static replicate_scrubber *start_asked(hook *h)
{
  replicate_scrubber *sc = start_repair_only(h, 0.01, true);
  replicate_scrubber_request_repair(sc, h->fx->rotted, 2);
  return sc;
}

static void test_asked_repair_fails(void **state)
{
  fixture *fx = *state;
  hook h = {.fx = fx, .fail = true, .busy = 2}; /* two busy answers: not tries */
  replicate_scrubber *sc = start_asked(&h);
  replicate_scrub_status st = wait_status(sc, base_asked);
  replicate_scrubber_stop(sc);
  assert_true(base_asked(&st));
  assert_non_null(strstr(st.last_error, "try 6 of 6 failed"));
  assert_non_null(strstr(st.last_error, "the upstream is away"));
  assert_int_equal(atomic_load(&h.calls), REPLICATE_REPAIR_TRIES_ASKED + 2);
  assert_int_equal(atomic_load(&h.base_asks), 1);
  assert_int_equal(st.pages_repaired, 0);
  assert_false(page_good(fx, 2));
}

/* A base image installed while a round of asked pages runs ends it: no
 * more tries, no base image asked for, the state ok. */
static bool round_over(const replicate_scrub_status *st)
{
  return st->state == REPLICATE_INTEGRITY_OK;
}

static void test_asked_repair_base_came(void **state)
{
  fixture *fx = *state;
  hook h = {.fx = fx, .fail = true, .base_during = true};
  replicate_scrubber *sc = start_asked(&h);
  replicate_scrub_status st = wait_status(sc, round_over);
  test_pause_ms(100); /* any further try would come within 10 ms */
  replicate_scrubber_status(sc, &st);
  replicate_scrubber_stop(sc);
  assert_true(round_over(&st));
  assert_int_equal(atomic_load(&h.calls), 1);
  assert_int_equal(atomic_load(&h.base_asks), 0);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_repairs, setup, teardown),
      cmocka_unit_test_setup_teardown(test_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(test_receiver_repairs, setup, teardown),
      cmocka_unit_test_setup_teardown(test_scrubber_hook, setup, teardown),
      cmocka_unit_test_setup_teardown(test_scrubber_hook_fails, setup, teardown),
      cmocka_unit_test_setup_teardown(test_repair_from, setup, teardown),
      cmocka_unit_test_setup_teardown(test_repair_from_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(test_asked_repair, setup, teardown),
      cmocka_unit_test_setup_teardown(test_base_installed_still_bad, setup, teardown),
      cmocka_unit_test_setup_teardown(test_found_again_counts_once, setup, teardown),
      cmocka_unit_test_setup_teardown(test_asked_repair_fails, setup, teardown),
      cmocka_unit_test_setup_teardown(test_asked_repair_base_came, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
