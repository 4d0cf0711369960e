/*
 * test_rewind.c: a cluster member's rewind through the page-hash tree
 * (replicate/repair.c, replicate_rewind_from; receiver.c,
 * replicate_receiver_rewind_from). Two real stores of one history: ours,
 * a former leader that committed seqs 2 and 3 at epoch 1, and the
 * leader's, promoted to epoch 2 at seq 1 and one commit further, grown by
 * two pages. A fake upstream serves the leader's tree and pages answers
 * from its store. Checked: only the pages that differ move, and the store
 * is then the leader's, byte for byte, at its position and of its lineage,
 * durably; a page that does not hash to the leader's hash, a move that is
 * not allowed (no permission, not diverged) and one where most pages
 * differ are refused with nothing written; through a receiver, the rewind
 * is reported (rewound_*) and the permission is needed; a process that
 * dies right after the rewind's commit (before any checkpoint) recovers to
 * the leader's image, one that dies after adopting the lineage and before
 * the commit to the old position.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "receiver.h"
#include "replicate.h"
#include "testlib.h"

#define PS ((uint64_t)LOOM_PAGE_SIZE)
#define PAGES 32u

typedef struct fixture {
  char *dir, *leader_dir;
  loom_store *store, *leader;
  int requests;
  uint64_t pages_asked;
  bool rot_served;             /* serve page 7 rotted (its hash kept) */
} fixture;

static void fill(uint64_t n, uint8_t v, uint8_t *page)
{
  memset(page, (int)(0x41 + n + v), PS);
}

/* Commit the pages in list[0, count) filled with v, to pages in all,
 * at the store's epoch, one seq on. */
static void commit(loom_store *s, const uint64_t *list, uint64_t count, uint8_t v,
                   uint64_t pages)
{
  loom_patch_header h = {.page_count = count};
  loom_store_position(s, &h.before);
  h.after = h.before;
  h.after.seq++;
  h.after.pages = pages;
  uint8_t page[LOOM_PAGE_SIZE];
  for (uint64_t i = 0; i < count; i++) {
    fill(list[i], v, page);
    if (list[i] < h.before.pages)
      h.after.checksum -= loom_store_page_hash(s, list[i]);
    h.after.checksum += loom_page_hash(list[i], page);
  }
  loom_patch *p;
  assert_int_equal(loom_store_patch_begin(s, &h, &p), 0);
  for (uint64_t i = 0; i < count; i++) {
    fill(list[i], v, page);
    assert_int_equal(loom_patch_add(p, list[i], page), 0);
  }
  assert_int_equal(loom_patch_commit(p), 0);
  assert_int_equal(loom_store_sync(s), 0);
}

static int setup(void **state)
{
  fixture *fx = calloc(1, sizeof *fx);
  fx->dir = test_tmpdir("rewind");
  fx->leader_dir = test_tmpdir("rewind-leader");
  if (loom_store_open(fx->dir, LOOM_CREATE, NULL, &fx->store) ||
      loom_store_ensure_history(fx->store) ||
      loom_store_open(fx->leader_dir, LOOM_CREATE, NULL, &fx->leader))
    return -1;
  loom_lineage lineage;
  loom_store_lineage(fx->store, &lineage);
  if (loom_store_adopt_lineage(fx->leader, &lineage))
    return -1;
  uint64_t all[PAGES];
  for (uint64_t n = 0; n < PAGES; n++)
    all[n] = n;
  commit(fx->store, all, PAGES, 0, PAGES);   /* seq 1, both */
  commit(fx->leader, all, PAGES, 0, PAGES);
  uint64_t ours[] = {3, 4};
  commit(fx->store, ours, 2, 1, PAGES);      /* seqs 2, 3 past the branch */
  commit(fx->store, ours + 1, 1, 2, PAGES);
  if (loom_store_set_epoch(fx->leader, 2))   /* branch (2, 1, checksum) */
    return -1;
  uint64_t theirs[] = {7, 32, 33};
  commit(fx->leader, theirs, 3, 3, PAGES + 2);
  *state = fx;
  return 0;
}

static int teardown(void **state)
{
  fixture *fx = *state;
  if (fx->store)
    loom_store_close(fx->store);
  loom_store_close(fx->leader);
  test_rmtree(fx->dir);
  test_rmtree(fx->leader_dir);
  free(fx);
  return 0;
}

static uint8_t *answer_new(fixture *fx, replicate_answer_kind kind, uint64_t count,
                           size_t *len)
{
  replicate_answer_head h = {.kind = kind, .count = count};
  loom_lineage lineage;
  loom_store_lineage(fx->leader, &lineage);
  h.history = lineage.history;
  loom_store_position(fx->leader, &h.position);
  *len = replicate_answer_size(kind, count);
  uint8_t *buf = calloc(1, *len);
  assert_non_null(buf);
  replicate_answer_begin(&h, buf);
  return buf;
}

/* GET /v1/tree?[seq=S&]level=0&first=F&count=C: the leader's page hashes. */
static uint8_t *tree_answer(fixture *fx, const char *path, size_t *len)
{
  const char *q = strstr(path, "first=");
  unsigned long long first, count;
  assert_int_equal(sscanf(q, "first=%llu&count=%llu", &first, &count), 2);
  uint8_t *buf = answer_new(fx, REPLICATE_ANSWER_TREE, count, len);
  for (uint64_t i = 0; i < count; i++)
    replicate_answer_put_node(buf, i, loom_store_page_hash(fx->leader, first + i));
  return buf;
}

/* GET /v1/pages?seq=S&pages=RUNS: the leader's pages. */
static uint8_t *pages_answer(fixture *fx, const char *path, size_t *len)
{
  replicate_page_run runs[64];
  size_t nruns;
  assert_int_equal(replicate_parse_ranges(strstr(path, "pages=") + 6, runs, 64, &nruns,
                                          REPLICATE_PAGES_MAX), 0);
  uint64_t count = 0;
  for (size_t r = 0; r < nruns; r++)
    count += runs[r].last - runs[r].first + 1;
  fx->pages_asked += count;
  uint8_t *buf = answer_new(fx, REPLICATE_ANSWER_PAGES, count, len);
  uint64_t i = 0;
  uint8_t page[LOOM_PAGE_SIZE];
  for (size_t r = 0; r < nruns; r++)
    for (uint64_t n = runs[r].first; n <= runs[r].last; n++, i++) {
      assert_int_equal(loom_store_read_page(fx->leader, n, page), 0);
      uint64_t hash = loom_page_hash(n, page);
      if (fx->rot_served && n == 7)
        page[100] ^= 1;
      replicate_answer_put_page(buf, i, n, hash, page);
    }
  return buf;
}

static int fake_get(void *ctx, const char *path, replicate_tag_kind kind, uint8_t **body,
                    size_t *len, char *why, size_t why_len)
{
  (void)why, (void)why_len;
  fixture *fx = ctx;
  fx->requests++;
  bool tree = strncmp(path, "/v1/tree?", 9) == 0;
  assert_int_equal(kind, tree ? REPLICATE_TAG_TREE : REPLICATE_TAG_PAGES);
  *body = tree ? tree_answer(fx, path, len) : pages_answer(fx, path, len);
  replicate_answer_seal(*body, *len);
  return 0;
}

static void assert_same_image(fixture *fx)
{
  loom_position a, b;
  loom_store_position(fx->store, &a);
  loom_store_position(fx->leader, &b);
  assert_true(loom_position_same(&a, &b));
  assert_int_equal(a.epoch, b.epoch);
  uint8_t x[LOOM_PAGE_SIZE], y[LOOM_PAGE_SIZE];
  for (uint64_t n = 0; n < b.pages; n++) {
    assert_int_equal(loom_store_read_page(fx->store, n, x), 0);
    assert_int_equal(loom_store_read_page(fx->leader, n, y), 0);
    assert_memory_equal(x, y, PS);
  }
}

static void test_rewinds_differing_pages(void **state)
{
  fixture *fx = *state;
  replicate_repair_source src = {fake_get, fx};
  loom_lineage lineage;
  loom_store_lineage(fx->leader, &lineage);
  uint64_t moved = 0;
  char why[300];
  assert_int_equal(replicate_rewind_from(fx->store, &src, &lineage, 2, &moved, why,
                                         sizeof why), 0);
  /* 3 and 4 (ours past the branch), 7 (theirs), 32 and 33 (grown). */
  assert_int_equal(moved, 5);
  assert_int_equal(fx->pages_asked, 5);
  assert_same_image(fx);
  loom_lineage got;
  loom_store_lineage(fx->store, &got);
  assert_int_equal(got.branch_count, lineage.branch_count);
  assert_memory_equal(got.branches, lineage.branches,
                      lineage.branch_count * sizeof lineage.branches[0]);
  /* Durable: a new open is at the leader's position. */
  loom_position before;
  loom_store_position(fx->store, &before);
  assert_int_equal(loom_store_close(fx->store), 0);
  fx->store = NULL;
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &fx->store), 0);
  assert_same_image(fx);
}

/* Ours as it was: epoch 1 at seq 3. */
static void assert_untouched(fixture *fx)
{
  loom_position pos;
  loom_lineage lineage;
  loom_store_position(fx->store, &pos);
  loom_store_lineage(fx->store, &lineage);
  assert_int_equal(pos.epoch, 1);
  assert_int_equal(pos.seq, 3);
  assert_int_equal(pos.pages, PAGES);
  assert_int_equal(lineage.branch_count, 0);
  uint8_t want[LOOM_PAGE_SIZE], got[LOOM_PAGE_SIZE];
  fill(4, 2, want);
  assert_int_equal(loom_store_read_page(fx->store, 4, got), 0);
  assert_memory_equal(want, got, PS);
}

static void test_rewind_refused(void **state)
{
  fixture *fx = *state;
  replicate_repair_source src = {fake_get, fx};
  loom_lineage lineage;
  loom_store_lineage(fx->leader, &lineage);
  uint64_t moved = 9;
  char why[300];
  fx->rot_served = true; /* a page that does not hash to the leader's hash */
  assert_int_equal(replicate_rewind_from(fx->store, &src, &lineage, 2, &moved, why,
                                         sizeof why), REPLICATE_EPAGE_HASH);
  assert_int_equal(moved, 0);
  assert_non_null(strstr(why, "page 7"));
  assert_untouched(fx);
  fx->rot_served = false;
  /* No permission, or one for a newer epoch than the leader's. */
  assert_int_equal(replicate_rewind_from(fx->store, &src, &lineage, 0, &moved, why,
                                         sizeof why), REPLICATE_EPAST_BRANCH);
  assert_int_equal(replicate_rewind_from(fx->store, &src, &lineage, 3, &moved, why,
                                         sizeof why), REPLICATE_EPAST_BRANCH);
  /* A lineage that is not the leader's position's (no branch of epoch 2). */
  loom_lineage old;
  loom_store_lineage(fx->store, &old);
  assert_int_equal(replicate_rewind_from(fx->store, &src, &old, 2, &moved, why,
                                         sizeof why), REPLICATE_EANSWER);
  assert_untouched(fx);
}

/* Most pages differ: a base image's job. */
static void test_rewind_too_big(void **state)
{
  fixture *fx = *state;
  uint64_t half[PAGES / 2 + 1];
  for (uint64_t n = 0; n < PAGES / 2 + 1; n++)
    half[n] = n;
  commit(fx->leader, half, PAGES / 2 + 1, 9, PAGES + 2);
  replicate_repair_source src = {fake_get, fx};
  loom_lineage lineage;
  loom_store_lineage(fx->leader, &lineage);
  uint64_t moved;
  char why[300];
  assert_int_equal(replicate_rewind_from(fx->store, &src, &lineage, 2, &moved, why,
                                         sizeof why), REPLICATE_ETOOBIG);
  assert_int_equal(fx->pages_asked, 0);
  assert_untouched(fx);
}

/* on_position (receiver.h): the positions last told, as {epoch, seq} of
 * received then applied; calls never overlap (the receiver's lock). */
static void positions_told(void *ctx, const loom_position *received,
                           const loom_position *applied)
{
  _Atomic uint64_t *told = ctx;
  atomic_store(&told[0], received->epoch);
  atomic_store(&told[1], received->seq);
  atomic_store(&told[2], applied->epoch);
  atomic_store(&told[3], applied->seq);
}

/* Through a receiver: refused without the permission, then reported (and
 * told to on_position). */
static void test_receiver_rewind(void **state)
{
  fixture *fx = *state;
  assert_int_equal(loom_store_close(fx->store), 0);
  fx->store = NULL;
  static _Atomic uint64_t told[4];
  replicate_receiver_options ro = {.dir = fx->dir, .on_position = positions_told,
                                   .position_ctx = told};
  replicate_receiver *rx;
  assert_int_equal(replicate_receiver_open(&ro, &rx), 0);
  replicate_repair_source src = {fake_get, fx};
  loom_lineage lineage;
  loom_store_lineage(fx->leader, &lineage);
  uint64_t moved;
  char why[300];
  assert_int_equal(replicate_receiver_rewind_from(rx, &src, &lineage, &moved, why,
                                                  sizeof why), REPLICATE_EPAST_BRANCH);
  replicate_receiver_status st;
  replicate_receiver_get_status(rx, &st);
  assert_int_equal(st.rewound_at_ns, 0);
  replicate_receiver_allow_rewind(rx, 2);
  assert_int_equal(replicate_receiver_rewind_from(rx, &src, &lineage, &moved, why,
                                                  sizeof why), 0);
  assert_int_equal(moved, 5);
  replicate_receiver_get_status(rx, &st);
  assert_true(st.rewound_at_ns != 0);
  assert_int_equal(st.rewound_frames, 2);   /* seqs 2 and 3 */
  assert_int_equal(st.rewound_from_seq, 3);
  assert_int_equal(st.applied.epoch, 2);
  assert_int_equal(st.applied.seq, 2);
  assert_int_equal(st.received.seq, 2);
  assert_int_equal(atomic_load(&told[0]), 2);
  assert_int_equal(atomic_load(&told[1]), 2);
  assert_int_equal(atomic_load(&told[2]), 2);
  assert_int_equal(atomic_load(&told[3]), 2);
  /* One rewind per permission. */
  assert_int_equal(replicate_receiver_rewind_from(rx, &src, &lineage, &moved, why,
                                                  sizeof why), REPLICATE_EPOSITION);
  assert_int_equal(replicate_receiver_close(rx), 0);
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &fx->store), 0);
  assert_same_image(fx);
}

/* The rewind's commit recovered after a crash: a child adopts the
 * leader's lineage and commits the differing pages as one
 * LOOM_PATCH_REWIND record with the checkpoint deferred, then dies
 * (_exit, no close): the next open replays the record and is the leader's
 * image; a child that dies after the lineage, before the commit, leaves
 * the old position. */
static void crash_child(fixture *fx, bool commit)
{
  static const uint64_t diff[] = {3, 4, 7, 32, 33};
  static uint8_t pages[5][LOOM_PAGE_SIZE];
  loom_lineage lineage;
  loom_store_lineage(fx->leader, &lineage);
  loom_patch_header h = {.page_count = 5, .flags = LOOM_PATCH_REWIND};
  loom_store_position(fx->store, &h.before);
  loom_store_position(fx->leader, &h.after);
  for (int i = 0; i < 5; i++)
    assert_int_equal(loom_store_read_page(fx->leader, diff[i], pages[i]), 0);
  loom_store_close(fx->store);
  fx->store = NULL;
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    loom_store *s;
    loom_patch *p;
    int rc = loom_store_open(fx->dir, LOOM_CHECKPOINT_DEFER, NULL, &s);
    if (!rc)
      rc = loom_store_adopt_lineage(s, &lineage);
    if (!rc && commit)
      rc = loom_store_patch_begin(s, &h, &p);
    for (int i = 0; !rc && commit && i < 5; i++)
      rc = loom_patch_add(p, diff[i], pages[i]);
    if (!rc && commit)
      rc = loom_patch_commit(p); /* durable in the log; no checkpoint */
    _exit(rc ? 3 : 0);
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
  /* The image file is as it was: only the log holds the rewind. */
  char path[512];
  struct stat st;
  snprintf(path, sizeof path, "%s/image", fx->dir);
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal((uint64_t)st.st_size, PAGES * PS);
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &fx->store), 0);
}

static void test_rewind_recovery(void **state)
{
  fixture *fx = *state;
  crash_child(fx, false);
  loom_position pos;
  loom_store_position(fx->store, &pos);
  assert_int_equal(pos.epoch, 1);
  assert_int_equal(pos.seq, 3);
  crash_child(fx, true);
  assert_same_image(fx);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_rewinds_differing_pages, setup, teardown),
      cmocka_unit_test_setup_teardown(test_rewind_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(test_rewind_too_big, setup, teardown),
      cmocka_unit_test_setup_teardown(test_receiver_rewind, setup, teardown),
      cmocka_unit_test_setup_teardown(test_rewind_recovery, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
