/*
 * arena_test.c: the arena and the store through the public API, for every
 * tracker and load mode. Invariants (loom_check) are checked after every
 * operation; the image on disk is compared with a model of what was saved.
 *
 * cmocka swaps the SIGSEGV handler around each test: arenas are opened in
 * the test bodies only.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cmocka.h>
#include <xxhash.h>

#include "loom_io.h"
#include "testutil.h"

typedef struct config {
  loom_tracker tracker;
  unsigned flags;
  const char *name;
} config;

static void report(void *ctx, const char *msg)
{
  (void)ctx;
  print_error("invariant: %s\n", msg);
}

#define CHECK_INVARIANTS(l) assert_int_equal(loom_check((l), report, NULL), 0)

/* The model: what every page of the image must hold. */
typedef struct model {
  uint64_t pages;
  uint8_t *bytes; /* arena_pages * PAGE */
} model;

static loom *open_arena(const char *dir, const config *c, uint64_t pages,
                        loom_options *extra)
{
  loom_options o = {.arena_pages = pages, .flags = LOOM_CREATE | c->flags,
                    .tracker = c->tracker};
  if (extra) {
    o.on_commit = extra->on_commit;
    o.commit_ctx = extra->commit_ctx;
    o.page_is_free = extra->page_is_free;
    o.free_ctx = extra->free_ctx;
    o.watermarks = extra->watermarks;
    o.watermarks_ctx = extra->watermarks_ctx;
    o.on_exhausted = extra->on_exhausted;
    o.exhausted_ctx = extra->exhausted_ctx;
    o.log_bytes = extra->log_bytes;
  }
  loom *l = NULL;
  int rc = loom_open(dir, &o, &l);
  if (rc)
    print_error("loom_open(%s): %s\n", c->name, loom_strerror(rc));
  assert_int_equal(rc, 0);
  if (c->tracker != LOOM_TRACK_AUTO)
    assert_int_equal(loom_get_tracker(l), c->tracker);
  CHECK_INVARIANTS(l);
  return l;
}

static void assert_image_is(const char *dir, const model *m)
{
  uint64_t pages;
  uint8_t *img = read_image(dir, &pages);
  assert_non_null(img);
  assert_int_equal(pages, m->pages);
  assert_memory_equal(img, m->bytes, pages * PAGE);
  free(img);
  loom_position rec;
  uint64_t computed;
  assert_int_equal(loom_verify(dir, &rec, &computed), 0);
  assert_int_equal(rec.checksum, computed);
  assert_int_equal(rec.pages, m->pages);
}

/* Write a few bytes into random pages below low, in arena and model. */
static void scribble(loom *l, model *m, uint64_t low, unsigned count,
                     test_rng *rng)
{
  uint8_t *base = loom_base(l);
  for (unsigned i = 0; i < count; i++) {
    uint64_t n = rng_next(rng) % low;
    uint64_t off = n * PAGE + rng_next(rng) % (PAGE - 8);
    uint64_t v = rng_next(rng);
    memcpy(base + off, &v, 8);
    memcpy(m->bytes + off, &v, 8);
  }
}

static void model_save(model *m, uint64_t low, uint64_t arena_pages)
{
  /* Pages past low are not part of the image; the model keeps the arena's
   * bytes for them, and the image holds [0, low). */
  (void)arena_pages;
  m->pages = low;
}

/* Random saves with growth, truncation and empty saves; reopen between. */
static void test_round_trips(void **state)
{
  const config *c = *state;
  char *dir = test_tmpdir("rt");
  const uint64_t arena = 256;
  model m = {0, calloc(arena, PAGE)};
  test_rng rng = {0x1234 + (uint64_t)c->tracker * 77 + c->flags};
  uint64_t seq = 0;
  for (int round = 0; round < 4; round++) {
    loom *l = open_arena(dir, c, arena, NULL);
    /* The arena holds the image after open. */
    assert_memory_equal(loom_base(l), m.bytes, m.pages * PAGE);
    uint8_t *base = loom_base(l);
    /* The model mirrors the arena: past the image, a new arena is zero. */
    memset(m.bytes + m.pages * PAGE, 0, (arena - m.pages) * PAGE);
    for (int i = 0; i < 12; i++) {
      uint64_t low = 1 + rng_next(&rng) % (arena / 2);
      if (i % 5 == 4)
        low = m.pages; /* same length */
      uint64_t touched = i % 4 == 3 ? 0 : 1 + rng_next(&rng) % 20;
      scribble(l, &m, low, (unsigned)touched, &rng);
      loom_position before, after;
      loom_store_position(loom_get_store(l), &before);
      int rc = loom_save(l, low, arena);
      assert_int_equal(rc, 0);
      loom_store_position(loom_get_store(l), &after);
      if (touched == 0 && low == before.pages) {
        assert_int_equal(after.seq, before.seq);
      } else {
        assert_int_equal(after.seq, before.seq + 1);
        seq++;
      }
      model_save(&m, low, arena);
      CHECK_INVARIANTS(l);
      assert_int_equal(after.pages, low);
      assert_memory_equal(base, m.bytes, low * PAGE);
    }
    assert_int_equal(loom_close(l), 0);
    assert_image_is(dir, &m);
    loom_position p;
    assert_int_equal(loom_inspect(dir, &p), 0);
    assert_int_equal(p.seq, seq);
  }
  free(m.bytes);
  test_rmtree(dir);
}

/* The first write to each clean page is noticed, even repeated saves. */
static void test_every_write_noticed(void **state)
{
  const config *c = *state;
  char *dir = test_tmpdir("wr");
  loom *l = open_arena(dir, c, 64, NULL);
  uint8_t *base = loom_base(l);
  for (uint64_t n = 0; n < 32; n++)
    base[n * PAGE] = (uint8_t)n;
  assert_int_equal(loom_save(l, 32, 64), 0);
  for (int round = 1; round < 6; round++) {
    for (uint64_t n = (uint64_t)round; n < 32; n += 3)
      base[n * PAGE + 100] = (uint8_t)(round * 7 + n);
    assert_int_equal(loom_save(l, 32, 64), 0);
    CHECK_INVARIANTS(l);
    loom_position p;
    loom_store_position(loom_get_store(l), &p);
    assert_int_equal(p.seq, (uint64_t)round + 1);
    for (uint64_t n = 0; n < 32; n++)
      assert_int_equal(loom_store_page_hash(loom_get_store(l), n),
                       loom_page_hash(n, base + n * PAGE));
  }
  assert_int_equal(loom_close(l), 0);
  uint64_t pages;
  uint8_t *img = read_image(dir, &pages);
  assert_int_equal(pages, 32);
  for (uint64_t n = 0; n < 32; n++)
    assert_int_equal(img[n * PAGE], (uint8_t)n);
  free(img);
  test_rmtree(dir);
}

/* The commit hook sees exactly the changed pages, their old versions and
 * hashes, and the before/after positions. */
typedef struct hook_seen {
  int calls;
  uint64_t pages;
  int old_ok;
  loom_position before, after;
  uint8_t expect_old[4][PAGE];
  uint64_t expect_numbers[4];
} hook_seen;

static int hook(void *ctx, loom *l, const loom_commit *c)
{
  hook_seen *h = ctx;
  h->calls++;
  h->pages = c->page_count;
  h->before = c->before;
  h->after = c->after;
  h->old_ok = 1;
  uint8_t buf[PAGE];
  for (uint64_t i = 0; i < c->page_count && i < 4; i++) {
    if (c->page_numbers[i] != h->expect_numbers[i] ||
        loom_commit_old_page(l, c, i, buf) != 0 ||
        memcmp(buf, h->expect_old[i], PAGE) != 0 ||
        c->new_hashes[i] != loom_page_hash(c->page_numbers[i],
                                           loom_page(l, c->page_numbers[i])))
      h->old_ok = 0;
    if (c->page_numbers[i] < c->before.pages &&
        c->old_hashes[i] != loom_page_hash(c->page_numbers[i], h->expect_old[i]))
      h->old_ok = 0;
  }
  return 0;
}

static void test_commit_hook(void **state)
{
  const config *c = *state;
  char *dir = test_tmpdir("hook");
  hook_seen *h = calloc(1, sizeof *h);
  loom_options extra = {.on_commit = hook, .commit_ctx = h};
  loom *l = open_arena(dir, c, 64, &extra);
  uint8_t *base = loom_base(l);
  memset(base, 0x11, 8 * PAGE);
  assert_int_equal(loom_save(l, 8, 64), 0);
  assert_int_equal(h->calls, 1);
  assert_int_equal(h->pages, 8);
  /* Change pages 2, 5 and a new page 9 (the image grows to 10). */
  memcpy(h->expect_old[0], base + 2 * PAGE, PAGE);
  memcpy(h->expect_old[1], base + 5 * PAGE, PAGE);
  memcpy(h->expect_old[2], base + 8 * PAGE, PAGE); /* zeros: new page */
  memset(h->expect_old[3], 0, PAGE);
  h->expect_numbers[0] = 2;
  h->expect_numbers[1] = 5;
  h->expect_numbers[2] = 8;
  h->expect_numbers[3] = 9;
  base[2 * PAGE + 1] = 1;
  base[5 * PAGE + 2] = 2;
  base[8 * PAGE + 3] = 3;
  base[9 * PAGE + 4] = 4;
  assert_int_equal(loom_save(l, 10, 64), 0);
  assert_int_equal(h->calls, 2);
  assert_int_equal(h->pages, 4);
  assert_true(h->old_ok);
  assert_int_equal(h->before.seq, 1);
  assert_int_equal(h->after.seq, 2);
  assert_int_equal(h->before.pages, 8);
  assert_int_equal(h->after.pages, 10);
  /* Writing the same bytes again changes nothing: no commit. */
  base[2 * PAGE + 1] = 1;
  assert_int_equal(loom_save(l, 10, 64), 0);
  assert_int_equal(h->calls, 2);
  CHECK_INVARIANTS(l);
  assert_int_equal(loom_close(l), 0);
  free(h);
  test_rmtree(dir);
}

/* RECENT PAGES (loom.c): with an apply thread the hook reads old versions
 * while the checkpoint still writes earlier records, from the pages kept
 * after each commit and the image file. Random saves that grow, shrink
 * and rewrite pages: every old version the hook reads is the committed
 * image's before the save (the test's copy), zeros past its end. */
typedef struct old_check {
  uint8_t *prev;        /* the committed image before the save */
  uint64_t checked, wrong, behind;
  uint64_t in_place;    /* loom_commit_old_page_view without a copy */
} old_check;

/* loom_commit_old_page_view gives the same bytes as loom_commit_old_page,
 * and leaves buf alone when it points elsewhere. */
static int view_agrees(loom *l, const loom_commit *c, uint64_t i,
                       const uint8_t *want, old_check *o)
{
  static uint8_t buf[PAGE];
  const void *page = NULL;
  memset(buf, 0xa5, PAGE);
  if (loom_commit_old_page_view(l, c, i, buf, &page) != 0 || !page ||
      memcmp(page, want, PAGE) != 0)
    return 0;
  if (page == buf)
    return 1;
  o->in_place++;
  for (size_t b = 0; b < PAGE; b++)
    if (buf[b] != 0xa5)
      return 0;
  return 1;
}

static int hook_old_versions(void *ctx, loom *l, const loom_commit *c)
{
  old_check *o = ctx;
  static const uint8_t zero[PAGE];
  uint8_t buf[PAGE];
  loom_log_stats st;
  loom_store_log_stats(loom_get_store(l), &st);
  if (st.checkpoint.seq < c->before.seq)
    o->behind++; /* records before this one were not checkpointed yet */
  for (uint64_t i = 0; i < c->page_count; i++) {
    uint64_t n = c->page_numbers[i];
    const uint8_t *want = n < c->before.pages ? o->prev + n * PAGE : zero;
    o->checked++;
    if (loom_commit_old_page(l, c, i, buf) != 0 || memcmp(buf, want, PAGE) != 0 ||
        (n < c->before.pages && c->old_hashes[i] != loom_page_hash(n, want)) ||
        !view_agrees(l, c, i, want, o))
      o->wrong++;
  }
  return 0;
}

static void test_old_versions_async(void **state)
{
  const config *c = *state;
  if (!(c->flags & LOOM_APPLY_ASYNC)) {
    skip(); /* without the apply thread every hook waits for the checkpoint */
    return;
  }
  char *dir = test_tmpdir("oldv");
  old_check o = {.prev = calloc(2048, PAGE)};
  /* An 8 MiB ring: RECENT holds 256 pages, so that commits fill it. */
  loom_options extra = {.on_commit = hook_old_versions, .commit_ctx = &o,
                        .log_bytes = 8u << 20};
  loom *l = open_arena(dir, c, 2048, &extra);
  loom_log_stats st;
  loom_get_log_stats(l, &st);
  assert_int_equal(st.recent_bytes, 0); /* taken at the first commit */
  uint8_t *base = loom_base(l);
  test_rng rng = {7};
  uint64_t len = 32;
  for (int save = 0; save < 400; save++) {
    uint64_t next = len;
    uint64_t roll = rng_below(&rng, 10);
    if (roll == 0 && len > 24) {
      next = len - 1 - rng_below(&rng, 8); /* shrink */
      if (save % 2) /* the cut pages zeroed: regrown, they are not saved */
        memset(base + next * PAGE, 0, (len - next) * PAGE);
    }
    else if (roll < 4 && len < 200)
      next = len + 1 + rng_below(&rng, 12); /* grow, some new pages untouched */
    else if (save % 100 == 50)
      next = len + 1300 < 2000 ? len + 1300 : len; /* see k below */
    uint64_t k = 1 + rng_below(&rng, save % 50 == 0 ? 300 : 24);
    if (save % 100 == 50 || save % 100 == 51)
      k = 3000; /* commits past the early path's and RECENT's 1,024 pages */
    if (save % 100 == 60 && len > 1200)
      next = 100 + rng_below(&rng, 100); /* and back down */
    for (uint64_t j = 0; j < k; j++)
      base[rng_below(&rng, next) * PAGE + rng_below(&rng, PAGE)] ^= (uint8_t)(1 + rng_below(&rng, 255));
    assert_int_equal(loom_save(l, next, 2048), 0);
    memcpy(o.prev, base, next * PAGE);
    len = next;
  }
  print_message("    %s: %" PRIu64 " old versions checked, %" PRIu64
                " hooks with records still to checkpoint\n", c->name, o.checked, o.behind);
  assert_int_equal(o.wrong, 0);
  assert_true(o.checked > 1000);
  assert_true(o.behind > 0); /* the hooks did not all wait */
  assert_true(o.in_place > 0); /* the early path's copies, not copied again */
  /* The memory the commit log costs, as status reports it: RECENT's
   * index of 256 pages (where each version is in the log, not a copy of
   * it: before, 256 pages of 16 KiB), and the checkpoint's merge state. */
  loom_get_log_stats(l, &st);
  assert_true(st.recent_bytes > 0);
  assert_true(st.recent_bytes <= 256 * 64);
  assert_true(st.merge_peak_bytes > 0);
  assert_true(st.merge_peak_bytes <= (8u << 20) / 16);
  CHECK_INVARIANTS(l);
  assert_int_equal(loom_close(l), 0);
  free(o.prev);
  test_rmtree(dir);
}

/* Free pages (the allocator says so) are not saved and stay dirty. */
static int free_odd(void *ctx, uint64_t n)
{
  (void)ctx;
  return n % 2 == 1;
}

static void test_free_pages(void **state)
{
  const config *c = *state;
  char *dir = test_tmpdir("free");
  loom_options extra = {.page_is_free = free_odd};
  loom *l = open_arena(dir, c, 64, &extra);
  uint8_t *base = loom_base(l);
  for (uint64_t n = 0; n < 10; n++)
    memset(base + n * PAGE, (int)(n + 1), PAGE);
  loom_stats st;
  assert_int_equal(loom_save(l, 10, 64), 0);
  loom_get_stats(l, &st);
  assert_int_equal(st.pages_saved, 5);
  CHECK_INVARIANTS(l);
  assert_int_equal(loom_close(l), 0);
  uint64_t pages;
  uint8_t *img = read_image(dir, &pages);
  assert_int_equal(pages, 10);
  for (uint64_t n = 0; n < 10; n++)
    assert_int_equal(img[n * PAGE + 77], n % 2 ? 0 : (uint8_t)(n + 1));
  free(img);
  loom_position rec;
  uint64_t computed;
  assert_int_equal(loom_verify(dir, &rec, &computed), 0);
  test_rmtree(dir);
}

/* Foul and yolo make every page dirty; the next save restores tracking. */
static void test_foul_yolo_toss(void **state)
{
  const config *c = *state;
  char *dir = test_tmpdir("foul");
  loom *l = open_arena(dir, c, 64, NULL);
  uint8_t *base = loom_base(l);
  memset(base, 7, 16 * PAGE);
  assert_int_equal(loom_save(l, 16, 64), 0);
  assert_int_equal(loom_foul(l), 0);
  base[3 * PAGE] = 9;
  assert_int_equal(loom_save(l, 16, 64), 0);
  CHECK_INVARIANTS(l);
  loom_position p;
  loom_store_position(loom_get_store(l), &p);
  assert_int_equal(p.seq, 2);
  assert_int_equal(loom_yolo(l), 0);
  base[5 * PAGE] = 9;
  base[40 * PAGE] = 1; /* anywhere: no guard in yolo mode */
  assert_int_equal(loom_save(l, 16, 64), 0);
  CHECK_INVARIANTS(l);
  loom_store_position(loom_get_store(l), &p);
  assert_int_equal(p.seq, 3);
  /* Toss: free middle pages read as zero afterwards. */
  memset(base + 20 * PAGE, 5, 10 * PAGE);
  assert_int_equal(loom_toss(l, 20, 30), 0);
  for (uint64_t n = 20; n < 30; n++)
    if (n != 40)
      assert_int_equal(base[n * PAGE + 10], 0);
  CHECK_INVARIANTS(l);
  assert_int_equal(loom_close(l), 0);
  uint64_t pages;
  uint8_t *img = read_image(dir, &pages);
  assert_int_equal(img[3 * PAGE], 9);
  assert_int_equal(img[5 * PAGE], 9);
  free(img);
  test_rmtree(dir);
}

/* The guard page: a write to it moves it (the application's watermarks say
 * where); with no free page left, the exhaustion callback runs. */
typedef struct marks {
  uint64_t low, high;
  int exhausted;
  sigjmp_buf jump;
  int jump_armed;
} marks;

static void watermarks(void *ctx, uint64_t *low, uint64_t *high)
{
  marks *m = ctx;
  *low = m->low;
  *high = m->high;
}

static void exhausted(void *ctx)
{
  marks *m = ctx;
  m->exhausted++;
  if (m->jump_armed)
    siglongjmp(m->jump, 1);
}

/* Write up to page 60; 1 if the exhaustion callback jumped out. */
static __attribute__((noinline)) int exhaust(marks *m, uint8_t *base)
{
  m->jump_armed = 1;
  if (sigsetjmp(m->jump, 1) != 0)
    return 1;
  for (uint64_t n = 40; n < 60; n++)
    base[n * PAGE] = 2;
  return 0;
}

static void test_guard(void **state)
{
  const config *c = *state;
  char *dir = test_tmpdir("guard");
  marks *m = calloc(1, sizeof *m);
  m->low = 4;
  m->high = 60;
  loom_options extra = {.watermarks = watermarks, .watermarks_ctx = m,
                        .on_exhausted = exhausted, .exhausted_ctx = m};
  loom *l = open_arena(dir, c, 64, &extra);
  uint8_t *base = loom_base(l);
  assert_int_equal(loom_ward(l, 4, 60), 0);
  CHECK_INVARIANTS(l);
  /* The guard is at 32: the low region grows to 40 and writes into it. */
  m->low = 40;
  for (uint64_t n = 4; n < 40; n++)
    base[n * PAGE] = 1;
  loom_stats st;
  loom_get_stats(l, &st);
  assert_true(st.guard_moves >= 1);
  assert_int_equal(m->exhausted, 0);
  assert_int_equal(loom_save(l, 40, 60), 0);
  CHECK_INVARIANTS(l);
  /* Exhaust: low meets high; the callback jumps out of the fault. */
  m->low = 60;
  assert_true(exhaust(m, base));
  assert_int_equal(m->exhausted, 1);
  assert_int_equal(loom_ward(l, 60, 60), LOOM_EEXHAUSTED);
  /* The application frees space: ward places the guard again. */
  m->low = 45;
  m->jump_armed = 0;
  assert_int_equal(loom_ward(l, 45, 60), 0);
  assert_int_equal(loom_save(l, 45, 60), 0);
  CHECK_INVARIANTS(l);
  assert_int_equal(loom_close(l), 0);
  free(m);
  test_rmtree(dir);
}

/* One writer: a second opener, in this process or another, is refused. */
static void test_lock(void **state)
{
  const config *c = *state;
  char *dir = test_tmpdir("lock");
  loom *l = open_arena(dir, c, 16, NULL);
  loom_store *s2;
  assert_int_equal(loom_store_open(dir, 0, NULL, &s2), LOOM_ELOCKED);
  pid_t pid = fork();
  if (pid == 0) {
    loom_store *s3;
    _exit(loom_store_open(dir, 0, NULL, &s3) == LOOM_ELOCKED ? 0 : 1);
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  /* Read-only tools still read a position. */
  loom_position p;
  assert_int_equal(loom_inspect(dir, &p), 0);
  assert_int_equal(loom_verify(dir, NULL, NULL), LOOM_ELOCKED);
  assert_int_equal(loom_close(l), 0);
  assert_int_equal(loom_store_open(dir, 0, NULL, &s2), 0);
  assert_int_equal(loom_store_close(s2), 0);
  test_rmtree(dir);
}

/* Backup: a directory at the same position that verifies. */
static void test_backup_and_epoch(void **state)
{
  const config *c = *state;
  char *dir = test_tmpdir("bk");
  char *out = test_tmpdir("bkout");
  char dest[4200];
  snprintf(dest, sizeof dest, "%s/copy", out);
  loom *l = open_arena(dir, c, 64, NULL);
  uint8_t *base = loom_base(l);
  for (uint64_t n = 0; n < 20; n++)
    memset(base + n * PAGE, (int)n, PAGE);
  assert_int_equal(loom_save(l, 20, 64), 0);
  assert_int_equal(loom_store_set_epoch(loom_get_store(l), 5), 0);
  assert_int_equal(loom_store_set_epoch(loom_get_store(l), 4), LOOM_EINVAL);
  assert_int_equal(loom_store_backup(loom_get_store(l), dest), 0);
  /* A backup never replaces an existing directory. */
  int again = loom_store_backup(loom_get_store(l), dest);
  assert_true(again == EEXIST || again == ENOTEMPTY);
  loom_position p, q;
  loom_store_position(loom_get_store(l), &p);
  assert_int_equal(p.epoch, 5);
  assert_int_equal(loom_close(l), 0);
  assert_int_equal(loom_verify(dest, &q, NULL), 0);
  assert_int_equal(q.epoch, 5);
  assert_int_equal(q.seq, p.seq);
  assert_int_equal(q.checksum, p.checksum);
  /* Reopened, the epoch holds and new commits carry it. */
  l = open_arena(dir, c, 64, NULL);
  loom_store_position(loom_get_store(l), &p);
  assert_int_equal(p.epoch, 5);
  base = loom_base(l);
  base[PAGE] = 0x55;
  assert_int_equal(loom_save(l, 20, 64), 0);
  loom_store_position(loom_get_store(l), &p);
  assert_int_equal(p.epoch, 5);
  assert_int_equal(p.seq, 2);
  assert_int_equal(loom_close(l), 0);
  test_rmtree(dir);
  test_rmtree(out);
}

/* ---------------------------------------------------------------------- */
/* The store alone: streamed patches, as a standby applies them. */

static void fill(uint8_t *page, uint64_t seed)
{
  for (unsigned i = 0; i < PAGE; i += 8)
    memcpy(page + i, &seed, 8), seed = seed * 6364136223846793005u + 1;
}

/* A disk with no room for the image to grow: the POSIX I/O, except that
 * reserve() answers ENOSPC while `full` is set. */
static int full;
static int reserves;

static int full_reserve(void *ctx, int fd, off_t off, off_t len)
{
  (void)ctx;
  reserves++;
  return full ? -ENOSPC : loom_io_posix()->reserve(NULL, fd, off, len);
}

/* A commit that grows the image reserves the new blocks before its commit
 * point: a full disk fails the commit cleanly (nothing changes, the handle
 * is not poisoned) instead of failing the apply after it. */
static void test_growth_reserved_before_commit(void **state)
{
  (void)state;
  char *dir = test_tmpdir("reserve");
  loom_io io = *loom_io_posix();
  io.reserve = full_reserve;
  loom_options o = {.arena_pages = 64, .flags = LOOM_CREATE | LOOM_APPLY_ASYNC,
                    .io = &io};
  loom *l;
  assert_int_equal(loom_open(dir, &o, &l), 0);
  uint8_t *base = loom_base(l);
  memset(base, 0x21, 4 * PAGE);
  assert_int_equal(loom_save(l, 4, 64), 0);
  assert_true(reserves >= 1);
  loom_position before, after;
  loom_store_position(loom_get_store(l), &before);

  full = 1;
  memset(base + 4 * PAGE, 0x22, 4 * PAGE);
  base[0] = 0x23;
  assert_int_equal(loom_save(l, 8, 64), ENOSPC);
  loom_store_position(loom_get_store(l), &after);
  assert_memory_equal(&after, &before, sizeof after);
  /* Not growing needs no reservation: this commit goes through. */
  assert_int_equal(loom_save(l, 4, 64), 0);
  loom_store_position(loom_get_store(l), &after);
  assert_int_equal(after.seq, before.seq + 1);

  full = 0;
  memset(base + 4 * PAGE, 0x22, 4 * PAGE);
  assert_int_equal(loom_save(l, 8, 64), 0);
  assert_int_equal(loom_store_sync(loom_get_store(l)), 0);
  loom_store_position(loom_get_store(l), &after);
  assert_int_equal(after.pages, 8);
  CHECK_INVARIANTS(l);
  assert_int_equal(loom_close(l), 0);
  uint64_t pages;
  uint8_t *img = read_image(dir, &pages);
  assert_int_equal(pages, 8);
  assert_int_equal(img[0], 0x23);
  assert_int_equal(img[5 * PAGE], 0x22);
  free(img);
  test_rmtree(dir);
}

static void test_store_patches(void **state)
{
  (void)state;
  char *dir = test_tmpdir("store");
  loom_store *s;
  assert_int_equal(loom_store_open(dir, LOOM_CREATE, NULL, &s), 0);
  loom_position p0;
  loom_store_position(s, &p0);
  assert_int_equal(p0.seq, 0);
  assert_int_equal(p0.epoch, 1);
  uint8_t *pages = calloc(8, PAGE);
  for (int i = 0; i < 8; i++)
    fill(pages + i * PAGE, (uint64_t)i + 100);
  /* A base image of 8 pages. */
  uint64_t sum = 0;
  for (uint64_t i = 0; i < 8; i++)
    sum += loom_page_hash(i, pages + i * PAGE);
  loom_patch_header h = {.before = p0,
                         .after = {.epoch = 2, .seq = 10, .checksum = sum, .pages = 8},
                         .page_count = 8, .flags = LOOM_PATCH_BASE};
  loom_patch *p;
  assert_int_equal(loom_store_patch_begin(s, &h, &p), 0);
  for (uint64_t i = 0; i < 8; i++)
    assert_int_equal(loom_patch_add(p, i, pages + i * PAGE), 0);
  assert_int_equal(loom_patch_commit(p), 0);
  loom_position p1;
  loom_store_position(s, &p1);
  assert_int_equal(p1.seq, 10);
  assert_int_equal(p1.epoch, 2);
  /* A patch that does not chain is refused and changes nothing. */
  h = (loom_patch_header){.before = p0, .after = {.epoch = 2, .seq = 11, .pages = 8},
                          .page_count = 1};
  assert_int_equal(loom_store_patch_begin(s, &h, &p), LOOM_EPOSITION);
  /* A patch whose after checksum is wrong is refused at commit. */
  h = (loom_patch_header){.before = p1,
                          .after = {.epoch = 2, .seq = 11, .checksum = 42, .pages = 8},
                          .page_count = 1};
  assert_int_equal(loom_store_patch_begin(s, &h, &p), 0);
  fill(pages + 3 * PAGE, 999);
  assert_int_equal(loom_patch_add(p, 3, pages + 3 * PAGE), 0);
  assert_int_equal(loom_patch_commit(p), LOOM_EPOSITION);
  loom_position same;
  loom_store_position(s, &same);
  assert_int_equal(same.seq, 10);
  /* Out of order pages are refused. */
  h.page_count = 2;
  assert_int_equal(loom_store_patch_begin(s, &h, &p), 0);
  assert_int_equal(loom_patch_add(p, 5, pages), 0);
  assert_int_equal(loom_patch_add(p, 4, pages), LOOM_EINVAL);
  loom_patch_abort(p);
  /* A right one, growing the image to 10 with one new page listed. */
  uint64_t after_sum = p1.checksum - loom_store_page_hash(s, 3) +
                       loom_page_hash(3, pages + 3 * PAGE) +
                       loom_page_hash(9, pages) + 0;
  uint8_t zero[PAGE] = {0};
  after_sum += loom_page_hash(8, zero);
  h = (loom_patch_header){.before = p1,
                          .after = {.epoch = 2, .seq = 11, .checksum = after_sum, .pages = 10},
                          .page_count = 2};
  assert_int_equal(loom_store_patch_begin(s, &h, &p), 0);
  assert_int_equal(loom_patch_add(p, 3, pages + 3 * PAGE), 0);
  assert_int_equal(loom_patch_add(p, 9, pages), 0);
  assert_int_equal(loom_patch_commit(p), 0);
  uint8_t buf[PAGE];
  assert_int_equal(loom_store_read_page(s, 3, buf), 0);
  assert_memory_equal(buf, pages + 3 * PAGE, PAGE);
  assert_int_equal(loom_store_read_page(s, 8, buf), 0);
  assert_memory_equal(buf, zero, PAGE);
  assert_int_equal(loom_store_close(s), 0);
  loom_position rec;
  uint64_t computed;
  assert_int_equal(loom_verify(dir, &rec, &computed), 0);
  assert_int_equal(rec.seq, 11);
  assert_int_equal(rec.pages, 10);
  free(pages);
  test_rmtree(dir);
}

/* A corrupted image is caught by verify and by open. */
/* Bit rot: byte off of dir's image file set to 4 (it holds 3 there). */
static void rot_image_byte(const char *dir, long off)
{
  char path[4200];
  snprintf(path, sizeof path, "%s/image", dir);
  FILE *f = fopen(path, "r+b");
  assert_non_null(f);
  fseek(f, off, SEEK_SET);
  fputc(4, f);
  fclose(f);
}

static void test_verify_catches_corruption(void **state)
{
  (void)state;
  char *dir = test_tmpdir("corrupt");
  config c = {LOOM_TRACK_AUTO, 0, "auto"};
  loom *l = open_arena(dir, &c, 16, NULL);
  memset(loom_base(l), 3, 4 * PAGE);
  assert_int_equal(loom_save(l, 4, 16), 0);
  assert_int_equal(loom_close(l), 0);
  rot_image_byte(dir, 2 * PAGE + 5);
  loom_position rec;
  uint64_t computed = 0;
  assert_int_equal(loom_verify(dir, &rec, &computed), LOOM_ECORRUPT);
  assert_true(computed != rec.checksum);
  test_rmtree(dir);
}

/* LOOM_CHECK_PREVIOUS: a page rotted on disk while the arena was closed is
 * refused by the save that changes it, before its commit point (nothing
 * committed, the page named); a save of other pages, and every save
 * without the flag, goes on. Each tracker, demand-paged and copied in. */
static void test_check_previous(void **state)
{
  (void)state;
  static const config configs[] = {
      {LOOM_TRACK_MPROTECT, LOOM_CHECK_PREVIOUS, "mprotect"},
      {LOOM_TRACK_AUTO, LOOM_CHECK_PREVIOUS, "auto"},
      {LOOM_TRACK_AUTO, LOOM_CHECK_PREVIOUS | LOOM_COPY_IN | LOOM_APPLY_ASYNC, "copy-in"}};
  for (size_t k = 0; k < sizeof configs / sizeof *configs; k++) {
    char *dir = test_tmpdir("rotprev");
    loom *l = open_arena(dir, &configs[k], 16, NULL);
    memset(loom_base(l), 3, 4 * PAGE);
    assert_int_equal(loom_save(l, 6, 16), 0); /* pages 4, 5: zeros, not written */
    ((uint8_t *)loom_base(l))[5 * PAGE] = 1;  /* grown in this session: not read */
    assert_int_equal(loom_save(l, 6, 16), 0);
    assert_int_equal(loom_close(l), 0);
    rot_image_byte(dir, 2 * PAGE + 5);
    l = open_arena(dir, &configs[k], 16, NULL);
    loom_position before, after;
    loom_store_position(loom_get_store(l), &before);
    ((uint8_t *)loom_base(l))[1 * PAGE] = 9; /* a sound page: saved */
    assert_int_equal(loom_save(l, 6, 16), 0);
    ((uint8_t *)loom_base(l))[2 * PAGE + 100] = 7; /* the rotted one: refused */
    assert_int_equal(loom_save(l, 6, 16), LOOM_ECORRUPT);
    assert_int_equal(loom_rotted_page(l), 2);
    loom_store_position(loom_get_store(l), &after);
    assert_int_equal(after.seq, before.seq + 1);
    assert_int_equal(loom_save(l, 6, 16), LOOM_ECORRUPT); /* still refused */
    assert_int_equal(loom_close(l), 0);
    loom_position rec;
    uint64_t computed = 0;
    assert_int_equal(loom_verify(dir, &rec, &computed), LOOM_ECORRUPT); /* not absorbed */
    test_rmtree(dir);
  }
}

/* A snapshot keeps reading the image at its position while saves change,
 * grow and shrink it, from another thread. */
typedef struct reader_args {
  loom_snapshot *snap;
  const uint8_t *expect;
  uint64_t bytes;
  int rounds, mismatches, errors;
} reader_args;

static void *snapshot_reader(void *arg)
{
  reader_args *a = arg;
  uint8_t *buf = malloc(a->bytes);
  for (int r = 0; r < a->rounds; r++) {
    /* Odd-sized reads across page boundaries. */
    for (uint64_t off = 0; off < a->bytes;) {
      size_t k = 7777 + (size_t)(off % 3) * 5000;
      if (k > a->bytes - off)
        k = (size_t)(a->bytes - off);
      if (loom_snapshot_read(a->snap, off, buf + off, k) != 0)
        a->errors++;
      off += k;
    }
    if (memcmp(buf, a->expect, a->bytes) != 0)
      a->mismatches++;
  }
  free(buf);
  return NULL;
}

static void test_snapshot(void **state)
{
  const config *c = *state;
  char *dir = test_tmpdir("snap");
  loom *l = open_arena(dir, c, 64, NULL);
  uint8_t *base = loom_base(l);
  for (uint64_t n = 0; n < 24; n++)
    memset(base + n * PAGE, (int)(n + 1), PAGE);
  assert_int_equal(loom_save(l, 24, 64), 0);
  uint8_t *expect = malloc(24 * PAGE);
  memcpy(expect, base, 24 * PAGE);
  loom_snapshot *snap;
  /* The snapshot takes what the image file holds: let the apply finish. */
  assert_int_equal(loom_store_sync(loom_get_store(l)), 0);
  assert_int_equal(loom_store_snapshot_open(loom_get_store(l), &snap), 0);
  /* Several at once; a ninth is refused. */
  loom_snapshot *more[8];
  for (int i = 0; i < 7; i++)
    assert_int_equal(loom_store_snapshot_open(loom_get_store(l), &more[i]), 0);
  assert_int_equal(loom_store_snapshot_open(loom_get_store(l), &more[7]), LOOM_EINVAL);
  for (int i = 1; i < 7; i++)
    loom_snapshot_close(more[i]);
  loom_position sp;
  loom_snapshot_position(snap, &sp);
  assert_int_equal(sp.seq, 1);
  reader_args a = {snap, expect, 24 * PAGE, 20, 0, 0};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, snapshot_reader, &a), 0);
  for (int i = 0; i < 30; i++) {
    uint64_t low = i % 3 == 2 ? 10 : 30;
    for (uint64_t n = 0; n < low; n += 3)
      base[n * PAGE + (uint64_t)i] = (uint8_t)(i + 100);
    assert_int_equal(loom_save(l, low, 64), 0);
  }
  pthread_join(t, NULL);
  assert_int_equal(a.errors, 0);
  assert_int_equal(a.mismatches, 0);
  /* The snapshot's pages hash to its checksum. */
  uint8_t page[PAGE];
  uint64_t sum = 0;
  for (uint64_t n = 0; n < sp.pages; n++) {
    assert_int_equal(loom_snapshot_read(snap, n * PAGE, page, PAGE), 0);
    sum += loom_page_hash(n, page);
  }
  assert_int_equal(sum, sp.checksum);
  assert_int_equal(loom_snapshot_read(snap, 24 * PAGE - 1, page, 2), LOOM_EINVAL);
  /* The second snapshot, open as long, holds the same image. */
  for (uint64_t n = 0; n < sp.pages; n++) {
    uint8_t other[PAGE];
    assert_int_equal(loom_snapshot_read(more[0], n * PAGE, other, PAGE), 0);
    assert_memory_equal(other, expect + n * PAGE, PAGE);
  }
  loom_snapshot_close(more[0]);
  loom_snapshot_close(snap);
  assert_int_equal(loom_close(l), 0);
  free(expect);
  test_rmtree(dir);
}

/* The image stream header round-trips and refuses corruption. */
static void test_stream_header(void **state)
{
  (void)state;
  loom_position p = {.epoch = 3, .seq = 99, .checksum = 0xdeadbeef, .pages = 12,
                     .commit_time_ns = 12345};
  loom_lineage lin = {.branch_count = 2,
                      .branches = {{2, 10, 0xabc}, {3, 50, 0xdef}}};
  assert_int_equal(loom_history_parse("00112233445566778899aabbccddeeff",
                                      &lin.history), 0);
  uint8_t h[LOOM_STREAM_HEADER];
  loom_stream_header_encode(h, &p, &lin);
  loom_position q;
  loom_lineage lq;
  assert_int_equal(loom_stream_header_decode(h, &q, &lq), 0);
  assert_memory_equal(&p, &q, sizeof p);
  assert_memory_equal(&lin, &lq, sizeof lin);
  for (unsigned i = 0; i < LOOM_STREAM_HEADER; i++) {
    h[i] ^= 0x10;
    assert_int_not_equal(loom_stream_header_decode(h, &q, NULL), 0);
    h[i] ^= 0x10;
  }
}

/* Two threads first-writing the same clean pages: no false "bug". */
typedef struct writer_args {
  uint8_t *base;
  int round;
} writer_args;

static void *same_pages_writer(void *arg)
{
  writer_args *a = arg;
  for (uint64_t n = 0; n < 32; n++)
    a->base[n * PAGE + 8] = (uint8_t)a->round;
  return NULL;
}

static void test_threads_first_write(void **state)
{
  const config *c = *state;
  char *dir = test_tmpdir("mt");
  loom *l = open_arena(dir, c, 64, NULL);
  uint8_t *base = loom_base(l);
  memset(base, 1, 32 * PAGE);
  assert_int_equal(loom_save(l, 32, 64), 0);
  for (int round = 0; round < 200; round++) {
    writer_args a = {base, round};
    pthread_t t1, t2;
    pthread_create(&t1, NULL, same_pages_writer, &a);
    pthread_create(&t2, NULL, same_pages_writer, &a);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    assert_int_equal(loom_save(l, 32, 64), 0);
  }
  CHECK_INVARIANTS(l);
  assert_int_equal(loom_close(l), 0);
  test_rmtree(dir);
}

/* What the review of the core found, each kept from coming back. */
static int hook_reads(void *ctx, loom *l, const loom_commit *c)
{
  (void)c;
  uint8_t buf[PAGE];
  *(int *)ctx = loom_store_read_page(loom_get_store(l), 0, buf);
  return 0;
}

/* The commit log's ring through loom_options.log_bytes: a ring too small
 * for the next record checkpoints first (a wait); a record larger than the
 * ring grows it, and the next open settles it back. */
/* A save wakes the checkpoint thread only for the first record of an
 * empty queue or the one that fills a quarter of the ring (store.c,
 * queue_push): records below the quarter that no save woke it for are
 * still checkpointed once saves stop (at its idle timeout), without any
 * call that waits for the checkpoint. */
static void test_checkpoint_idle(void **state)
{
  (void)state;
  char dir[] = "/tmp/arena-idle-XXXXXX";
  assert_non_null(mkdtemp(dir));
  loom *l;
  loom_options o = {.arena_pages = 64,
                    .flags = LOOM_CREATE | LOOM_COPY_IN | LOOM_APPLY_ASYNC};
  assert_int_equal(loom_open(dir, &o, &l), 0);
  uint8_t *b = loom_base(l);
  for (int r = 0; r < 5; r++) { /* far below a quarter of 64 MiB */
    b[(uint64_t)r * LOOM_PAGE_SIZE] = (uint8_t)(r + 1);
    assert_int_equal(loom_save(l, 8, 64), 0);
  }
  loom_log_stats st;
  TEST_WAIT_UNTIL((loom_store_log_stats(loom_get_store(l), &st),
                   st.checkpoint.seq == 5 && st.queued == 0),
                  10000);
  assert_int_equal(st.checkpoint.seq, 5);
  assert_int_equal(st.queued, 0);
  assert_int_equal(loom_close(l), 0);
  assert_int_equal(test_remove_tree(dir), 0);
}

static void test_log_ring(void **state)
{
  (void)state;
  char dir[] = "/tmp/arena-log-XXXXXX";
  assert_non_null(mkdtemp(dir));
  loom *l;
  /* Through the arena: loom_options.log_bytes sizes the ring. */
  loom_options o = {.arena_pages = 64, .flags = LOOM_CREATE | LOOM_COPY_IN |
                    LOOM_CHECKPOINT_DEFER, .log_bytes = 3 * 24576};
  assert_int_equal(loom_open(dir, &o, &l), 0);
  uint8_t *b = loom_base(l);
  loom_store *s = loom_get_store(l);
  for (int r = 0; r < 4; r++) { /* one-page records: 24 KiB each */
    b[5] = (uint8_t)(r + 1);
    assert_int_equal(loom_save(l, 1, 64), 0);
  }
  loom_log_stats st;
  loom_store_log_stats(s, &st);
  assert_int_equal(st.size, 3 * 24576);
  assert_true(st.waits >= 1); /* the fourth found the ring full */
  assert_true(st.checkpoints >= 1);
  /* A record of 8 pages (about 136 KiB) does not fit the ring at all. */
  for (uint64_t n = 0; n < 8; n++)
    b[n * LOOM_PAGE_SIZE + 1] ^= 0xff;
  assert_int_equal(loom_save(l, 8, 64), 0);
  loom_store_log_stats(s, &st);
  assert_true(st.size >= 4096 + 8 * (uint64_t)LOOM_PAGE_SIZE);
  assert_int_equal(loom_close(l), 0);
  char path[64];
  snprintf(path, sizeof path, "%s/log", dir);
  struct stat fst;
  assert_int_equal(stat(path, &fst), 0);
  assert_true(fst.st_size > 3 * 24576); /* the grown ring's bytes */
  assert_int_equal(loom_open(dir, &o, &l), 0);
  loom_store_log_stats(loom_get_store(l), &st);
  assert_int_equal(st.size, 3 * 24576); /* settled back at open */
  assert_int_equal(st.checkpoint.seq, 5);
  assert_int_equal(((uint8_t *)loom_base(l))[5], 4); /* the fourth save's */
  assert_int_equal(stat(path, &fst), 0);
  assert_true(fst.st_size <= 3 * 24576); /* and the file cut to it */
  /* Grown again, then shrunk back in the same session by the next save
   * that fits the configured ring. */
  b = loom_base(l);
  s = loom_get_store(l);
  for (uint64_t n = 0; n < 8; n++)
    b[n * LOOM_PAGE_SIZE + 1] ^= 0xff;
  assert_int_equal(loom_save(l, 8, 64), 0);
  loom_store_log_stats(s, &st);
  assert_true(st.size > 3 * 24576);
  b[5] = 7;
  assert_int_equal(loom_save(l, 8, 64), 0);
  loom_store_log_stats(s, &st);
  assert_int_equal(st.size, 3 * 24576);
  assert_int_equal(stat(path, &fst), 0);
  assert_true(fst.st_size <= 3 * 24576);
  assert_int_equal(loom_close(l), 0);
  assert_int_equal(loom_open(dir, &o, &l), 0);
  assert_int_equal(((uint8_t *)loom_base(l))[5], 7);
  assert_int_equal(loom_close(l), 0);
  char cmd[64];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  assert_int_equal(system(cmd), 0);
}

static void test_review_findings(void **state)
{
  (void)state;
  config c = {LOOM_TRACK_AUTO, 0, "auto"};
  char *dir = test_tmpdir("review");
  int hook_rc = 0;
  loom_options extra = {.on_commit = hook_reads, .commit_ctx = &hook_rc};
  loom *l = open_arena(dir, &c, 16, &extra);
  memset(loom_base(l), 2, 4 * PAGE);
  /* An image as long as the arena leaves no page for the guard. */
  assert_int_equal(loom_save(l, 16, 16), LOOM_EEXHAUSTED);
  loom_position p;
  loom_store_position(loom_get_store(l), &p);
  assert_int_equal(p.seq, 0);
  /* Inside the commit hook the image is still the old one: refused. */
  assert_int_equal(loom_save(l, 4, 16), 0);
  assert_int_equal(hook_rc, LOOM_EINVAL);
  /* A snapshot after a promotion carries the new epoch. */
  assert_int_equal(loom_store_sync(loom_get_store(l)), 0);
  assert_int_equal(loom_store_set_epoch(loom_get_store(l), 9), 0);
  loom_snapshot *snap;
  assert_int_equal(loom_store_snapshot_open(loom_get_store(l), &snap), 0);
  loom_snapshot_position(snap, &p);
  assert_int_equal(p.epoch, 9);
  loom_snapshot_close(snap);
  assert_int_equal(loom_close(l), 0);
  /* A forged meta (valid checksum, absurd length) is refused at once,
   * before anything is sized by it. */
  loom_position forged = {.epoch = 1, .seq = 5, .checksum = 1, .pages = UINT64_C(1) << 31};
  char path[4200];
  snprintf(path, sizeof path, "%s/meta", dir);
  uint8_t slot[512] = {0};
  memcpy(slot, "LOOMMETA", 8);
  uint32_t v = 1, ps = PAGE;
  uint64_t gen = 1000;
  memcpy(slot + 8, &v, 4);
  memcpy(slot + 12, &ps, 4);
  memcpy(slot + 16, &gen, 8);
  memcpy(slot + 24, &forged.epoch, 8);
  memcpy(slot + 32, &forged.seq, 8);
  memcpy(slot + 40, &forged.checksum, 8);
  memcpy(slot + 48, &forged.pages, 8);
  uint64_t sum = XXH3_64bits(slot, 504);
  memcpy(slot + 504, &sum, 8);
  FILE *f = fopen(path, "r+b");
  fwrite(slot, 1, 512, f);
  fclose(f);
  loom_store *s;
  assert_int_equal(loom_store_open(dir, 0, NULL, &s), LOOM_ECORRUPT);
  test_rmtree(dir);
}

#define TESTS_FOR(cfg)                                              \
  cmocka_unit_test_prestate(test_round_trips, &cfg),                \
  cmocka_unit_test_prestate(test_every_write_noticed, &cfg),        \
  cmocka_unit_test_prestate(test_commit_hook, &cfg),                \
  cmocka_unit_test_prestate(test_old_versions_async, &cfg),         \
  cmocka_unit_test_prestate(test_free_pages, &cfg),                 \
  cmocka_unit_test_prestate(test_foul_yolo_toss, &cfg),             \
  cmocka_unit_test_prestate(test_guard, &cfg),                      \
  cmocka_unit_test_prestate(test_lock, &cfg),                       \
  cmocka_unit_test_prestate(test_backup_and_epoch, &cfg),           \
  cmocka_unit_test_prestate(test_snapshot, &cfg),                   \
  cmocka_unit_test_prestate(test_threads_first_write, &cfg)

int main(void)
{
  static config mp_demand = {LOOM_TRACK_MPROTECT, 0, "mprotect demand-paged"};
  static config mp_copy = {LOOM_TRACK_MPROTECT, LOOM_COPY_IN | LOOM_VALIDATE,
                           "mprotect copy-in validate"};
  static config uf_demand = {LOOM_TRACK_UFFD_ASYNC, LOOM_VALIDATE,
                             "uffd demand-paged validate"};
  static config uf_copy = {LOOM_TRACK_UFFD_ASYNC, LOOM_COPY_IN | LOOM_APPLY_ASYNC,
                           "uffd copy-in async-apply"};
  static config mp_swap = {LOOM_TRACK_MPROTECT, LOOM_SWAP | LOOM_APPLY_ASYNC,
                           "mprotect swap async-apply"};
  static config uf_swap = {LOOM_TRACK_UFFD_ASYNC, LOOM_SWAP | LOOM_COPY_IN,
                           "uffd swap copy-in"};
  const struct CMUnitTest tests[] = {
      TESTS_FOR(mp_demand), TESTS_FOR(mp_copy), TESTS_FOR(uf_demand),
      TESTS_FOR(uf_copy),   TESTS_FOR(mp_swap), TESTS_FOR(uf_swap),
      cmocka_unit_test(test_store_patches),
      cmocka_unit_test(test_growth_reserved_before_commit),
      cmocka_unit_test(test_verify_catches_corruption),
      cmocka_unit_test(test_stream_header),
      cmocka_unit_test(test_review_findings),
      cmocka_unit_test(test_log_ring),
      cmocka_unit_test(test_checkpoint_idle),
      cmocka_unit_test(test_check_previous),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
