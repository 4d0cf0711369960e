/*
 * test_apply.c: frames applied to a real standby store (core/): the three
 * workloads, duplicates, gaps, epochs, damaged pages, coalesced frames,
 * and frames made by the commit hook of a real arena.
 */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "replicate_testlib.h"

typedef struct fixture {
  char dir[64];
  char standby_dir[96];
  char primary_dir[96];
  loom_store *store;
  replicate_encoder *enc;
  replicate_decoder *dec;
} fixture;

static int setup(void **state)
{
  fixture *fx = xcalloc(sizeof *fx);
  strcpy(fx->dir, "/tmp/replicate-apply-XXXXXX");
  if (mkdtemp(fx->dir) == NULL) return -1;
  join_path(fx->standby_dir, sizeof fx->standby_dir, fx->dir, "standby");
  join_path(fx->primary_dir, sizeof fx->primary_dir, fx->dir, "primary");
  if (loom_store_open(fx->standby_dir, LOOM_CREATE, NULL, &fx->store) != 0)
    return -1;
  if (replicate_encoder_new(1, &fx->enc) != 0) return -1;
  if (replicate_decoder_new(NULL, &fx->dec) != 0) return -1;
  *state = fx;
  return 0;
}

static int teardown(void **state)
{
  fixture *fx = *state;
  if (fx->store) loom_store_close(fx->store);
  replicate_encoder_free(fx->enc);
  replicate_decoder_free(fx->dec);
  test_remove_tree(fx->dir);
  free(fx);
  return 0;
}

/* A model of the primary starting where the standby is. */
static void primary_at_standby(fixture *fx, model *m)
{
  loom_position pos;
  loom_store_position(fx->store, &pos);
  assert_int_equal(pos.pages, 0);
  model_init(m, pos.epoch, pos.seq, pos.checksum);
}

static int apply_bytes(fixture *fx, const replicate_buf *frame)
{
  replicate_frame f;
  int rc = replicate_frame_decode(fx->dec, frame->data, frame->len, &f);
  if (rc != 0) return rc;
  return replicate_frame_apply(&f, fx->store);
}

/* The standby holds exactly the model's image and position. */
static void expect_store_equals(fixture *fx, const model *m)
{
  loom_position pos;
  loom_store_position(fx->store, &pos);
  assert_int_equal(pos.epoch, m->epoch);
  assert_int_equal(pos.seq, m->seq);
  assert_int_equal(pos.checksum, m->checksum);
  assert_int_equal(pos.pages, m->pages);
  uint8_t *page = xmalloc(PS);
  for (uint64_t n = 0; n < m->pages; n++) {
    assert_int_equal(loom_store_read_page(fx->store, n, page), 0);
    if (memcmp(page, model_page(m, n), PS) != 0)
      fail_msg("page %" PRIu64 " differs", n);
    assert_int_equal(loom_store_page_hash(fx->store, n), m->hashes[n]);
  }
  free(page);
}

/* The page-hash tree of snap equals the one built anew from hashes[0,
 * pages) (core/tree.c keeps it incrementally). */
static void expect_tree(loom_snapshot *snap, const uint64_t *hashes,
                        uint64_t pages)
{
  uint64_t *below = xmalloc((pages + 1) * sizeof *below);
  uint64_t *here = xmalloc((pages + 1) * sizeof *here);
  uint64_t *got = xmalloc((pages + 1) * sizeof *got);
  if (pages > 0) /* hashes is NULL for an empty model */
    memcpy(below, hashes, pages * sizeof *below);
  for (unsigned l = 0; l < LOOM_TREE_LEVELS; l++) {
    uint64_t n = loom_tree_nodes(pages, l);
    if (l > 0) {
      uint64_t m = loom_tree_nodes(pages, l - 1);
      for (uint64_t i = 0; i < n; i++) {
        uint64_t k = m - i * LOOM_TREE_FANOUT;
        here[i] = loom_tree_node_hash(l, below + i * LOOM_TREE_FANOUT,
                                      k < LOOM_TREE_FANOUT ? k : LOOM_TREE_FANOUT);
      }
      memcpy(below, here, n * sizeof *below);
    }
    assert_int_equal(loom_snapshot_tree(snap, l, 0, n, got), 0);
    if (memcmp(got, below, n * sizeof *got) != 0)
      fail_msg("level %u of the tree differs (%" PRIu64 " pages)", l, pages);
    assert_int_equal(loom_snapshot_tree(snap, l, n, 1, got), LOOM_EINVAL);
  }
  free(below);
  free(here);
  free(got);
}

static void expect_store_tree(loom_store *store, const model *m)
{
  loom_snapshot *snap;
  assert_int_equal(loom_store_snapshot_open(store, &snap), 0);
  expect_tree(snap, m->hashes, m->pages);
  loom_snapshot_close(snap);
}

/* Grow the image to `pages` pages of random data through a frame. */
static void apply_initial(fixture *fx, model *m, uint64_t pages, test_rng *r)
{
  uint64_t *nums = xmalloc(pages * sizeof *nums);
  uint8_t *news = xmalloc(pages * PS);
  uint64_t after;
  workload_make(m, WL_APPEND, pages, r, nums, news, &after);
  replicate_buf buf = {0};
  assert_int_equal(model_commit(m, fx->enc, after, pages, nums, news, &buf), 0);
  assert_int_equal(apply_bytes(fx, &buf), 0);
  replicate_buf_free(&buf);
  free(nums);
  free(news);
}

static void apply_workload(fixture *fx, workload w, size_t n)
{
  test_rng r = {n * 3 + (uint64_t)w};
  model m;
  primary_at_standby(fx, &m);
  if (w != WL_APPEND) apply_initial(fx, &m, n + 3, &r);
  uint64_t *nums = xmalloc(n * sizeof *nums);
  uint8_t *news = xmalloc(n * PS);
  uint64_t after;
  workload_make(&m, w, n, &r, nums, news, &after);
  replicate_buf buf = {0};
  model before;
  model_copy(&before, &m);
  assert_int_equal(model_commit(&m, fx->enc, after, n, nums, news, &buf), 0);
  replicate_frame f;
  assert_int_equal(replicate_frame_decode(fx->dec, buf.data, buf.len, &f), 0);
  assert_int_equal(replicate_frame_apply(&f, fx->store), 0);
  expect_store_equals(fx, &m);
  /* Applying rebuilt the deltas in place: the frame still describes the
   * same commit (now all whole pages), and applies as a duplicate. */
  for (uint64_t i = 0; i < f.info.page_count; i++) {
    replicate_page page;
    replicate_frame_get_page(&f, i, &page);
    assert_int_equal(page.encoding, REPLICATE_PAGE_WHOLE);
  }
  assert_int_equal(replicate_frame_apply(&f, fx->store), REPLICATE_EDUPLICATE);
  assert_int_equal(model_apply_frame(&before, &f), 0);
  assert_true(model_equal(&before, &m));
  model_free(&before);
  /* Once more: a duplicate, answered as such, changing nothing. */
  assert_int_equal(apply_bytes(fx, &buf), REPLICATE_EDUPLICATE);
  expect_store_equals(fx, &m);
  replicate_buf_free(&buf);
  free(nums);
  free(news);
  model_free(&m);
}

static void test_sparse(void **state) { apply_workload(*state, WL_SPARSE, 64); }
static void test_rewrite(void **state) { apply_workload(*state, WL_REWRITE, 64); }
static void test_append(void **state) { apply_workload(*state, WL_APPEND, 64); }
static void test_sparse_one(void **state) { apply_workload(*state, WL_SPARSE, 1); }
static void test_sparse_4096(void **state) { apply_workload(*state, WL_SPARSE, 4096); }

/* Gaps, duplicates, fencing, and adopting a promoted primary's epoch. */
static void test_positions(void **state)
{
  fixture *fx = *state;
  test_rng r = {5};
  model m;
  primary_at_standby(fx, &m);
  apply_initial(fx, &m, 8, &r);
  replicate_buf frames[4] = {{0}};
  model after_two;
  for (int i = 0; i < 4; i++) {
    assert_int_equal(model_random_commit(&m, fx->enc, &r, 8, &frames[i]), 0);
    if (i == 1) model_copy(&after_two, &m);
  }
  /* A gap: 409. */
  assert_int_equal(apply_bytes(fx, &frames[1]), REPLICATE_EPOSITION);
  assert_int_equal(apply_bytes(fx, &frames[0]), 0);
  assert_int_equal(apply_bytes(fx, &frames[1]), 0);
  expect_store_equals(fx, &after_two);
  assert_int_equal(apply_bytes(fx, &frames[0]), REPLICATE_EDUPLICATE);
  assert_int_equal(apply_bytes(fx, &frames[1]), REPLICATE_EDUPLICATE);

  /* The primary was promoted away from (fenced) at this very position: a
   * new primary continues at epoch 2 from here. */
  model promoted;
  model_copy(&promoted, &after_two);
  promoted.epoch = 2;
  replicate_buf next = {0};
  assert_int_equal(model_random_commit(&promoted, fx->enc, &r, 8, &next), 0);
  assert_int_equal(apply_bytes(fx, &next), 0);
  expect_store_equals(fx, &promoted);
  /* The old primary's frames are now from an older epoch. */
  assert_int_equal(apply_bytes(fx, &frames[2]), REPLICATE_ESTALE_EPOCH);
  assert_int_equal(apply_bytes(fx, &frames[0]), REPLICATE_ESTALE_EPOCH);

  /* A newer epoch that forked elsewhere (another checksum at the seq the
   * standby holds) is a divergence, and the standby keeps its epoch. */
  model forked;
  model_copy(&forked, &after_two);
  forked.epoch = 3;
  assert_int_equal(model_random_commit(&forked, fx->enc, &r, 8, &next), 0);
  assert_int_equal(model_random_commit(&forked, fx->enc, &r, 8, &next), 0);
  assert_int_equal(apply_bytes(fx, &next), REPLICATE_EFORK);
  expect_store_equals(fx, &promoted);

  /* A heartbeat is not applied. */
  loom_position latest = {.epoch = 2, .seq = promoted.seq,
                          .checksum = promoted.checksum,
                          .pages = promoted.pages};
  assert_int_equal(replicate_frame_encode_heartbeat(&no_history, &latest, 1, &next), 0);
  assert_int_equal(apply_bytes(fx, &next), REPLICATE_EKIND);

  for (int i = 0; i < 4; i++) replicate_buf_free(&frames[i]);
  replicate_buf_free(&next);
  model_free(&m);
  model_free(&after_two);
  model_free(&promoted);
  model_free(&forked);
}

/* The checksum a standby computes itself (DESIGN section 8): after an
 * apply, the pages read back from the image give the store's checksum;
 * once the disk stored something else for one of them, the read-back
 * names that page and gives another checksum, which the primary compares
 * with its own. */
static void test_readback(void **state)
{
  fixture *fx = *state;
  test_rng r = {7};
  model m;
  primary_at_standby(fx, &m);
  apply_initial(fx, &m, 8, &r);
  replicate_buf buf = {0};
  assert_int_equal(model_random_commit(&m, fx->enc, &r, 8, &buf), 0);
  replicate_frame f;
  assert_int_equal(replicate_frame_decode(fx->dec, buf.data, buf.len, &f), 0);
  assert_int_equal(replicate_frame_apply(&f, fx->store), 0);
  uint64_t sum = 0, bad = 0;
  assert_int_equal(replicate_frame_readback(&f, fx->store, &sum, &bad), 0);
  assert_int_equal(sum, m.checksum);
  assert_int_equal(bad, UINT64_MAX);

  /* Flip a bit of the frame's first page in the image file. */
  assert_true(f.info.page_count > 0);
  replicate_page page;
  replicate_frame_get_page(&f, 0, &page);
  char path[160];
  join_path(path, sizeof path, fx->standby_dir, "image");
  int fd = open(path, O_RDWR);
  assert_true(fd >= 0);
  uint8_t byte;
  off_t off = (off_t)(page.page_number * PS + 100);
  assert_int_equal(pread(fd, &byte, 1, off), 1);
  byte ^= 0x10;
  assert_int_equal(pwrite(fd, &byte, 1, off), 1);
  close(fd);
  assert_int_equal(replicate_frame_readback(&f, fx->store, &sum, &bad), 0);
  assert_int_equal(bad, page.page_number);
  assert_int_not_equal(sum, m.checksum);
  /* The position still claims the recorded checksum: only the read-back
   * tells. */
  loom_position pos;
  loom_store_position(fx->store, &pos);
  assert_int_equal(pos.checksum, m.checksum);
  replicate_buf_free(&buf);
  model_free(&m);
}

/* A page whose contents do not match its hash (the frame's checksums and
 * after checksum are all consistent with the lying hash): refused, the
 * store unchanged. Then a frame whose after checksum lies. */
static void test_damaged(void **state)
{
  fixture *fx = *state;
  test_rng r = {6};
  model m;
  primary_at_standby(fx, &m);
  apply_initial(fx, &m, 8, &r);
  model before;
  model_copy(&before, &m);

  uint64_t nums[3] = {1, 4, 9};
  uint8_t *news = xmalloc(3 * PS);
  for (int i = 0; i < 3; i++) {
    if (nums[i] < m.pages) memcpy(news + i * PS, model_page(&m, nums[i]), PS);
    else memset(news + i * PS, 0, PS);
    news[i * PS + 77] ^= 0x42;
  }
  replicate_frame_info info;
  replicate_page_src srcs[3];
  model_commit_info(&m, 10, 3, nums, news, &info, srcs);
  for (int victim = 0; victim < 3; victim++) {
    replicate_page_src lying[3];
    memcpy(lying, srcs, sizeof lying);
    lying[victim].new_hash ^= 1;
    replicate_frame_info lie = info;
    lie.after.checksum += (srcs[victim].new_hash ^ 1) - srcs[victim].new_hash;
    replicate_buf buf = {0};
    assert_int_equal(replicate_frame_encode(fx->enc, &lie, lying, 3, &buf), 0);
    replicate_frame f, g;
    assert_int_equal(replicate_frame_decode(fx->dec, buf.data, buf.len, &f), 0);
    assert_int_equal(replicate_frame_apply(&f, fx->store), REPLICATE_EPAGE_HASH);
    expect_store_equals(fx, &before);
    /* The refused frame still describes the same commit: each page as
     * decoded, or (rebuilt before the failing one) whole. */
    replicate_decoder *fresh;
    assert_int_equal(replicate_decoder_new(NULL, &fresh), 0);
    assert_int_equal(replicate_frame_decode(fresh, buf.data, buf.len, &g), 0);
    for (uint64_t i = 0; i < 3; i++) {
      replicate_page a, b;
      replicate_frame_get_page(&f, i, &a);
      replicate_frame_get_page(&g, i, &b);
      if (a.encoding == b.encoding) {
        assert_memory_equal(a.contents, b.contents, PS);
      } else {
        assert_int_equal(a.encoding, REPLICATE_PAGE_WHOLE);
        assert_true(i < (uint64_t)victim);
        assert_memory_equal(a.contents, news + i * PS, PS);
      }
    }
    replicate_decoder_free(fresh);
    replicate_buf_free(&buf);
  }
  /* The pages are right, the after checksum is not. */
  replicate_frame_info lie = info;
  lie.after.checksum++;
  replicate_buf buf = {0};
  assert_int_equal(replicate_frame_encode(fx->enc, &lie, srcs, 3, &buf), 0);
  assert_int_equal(apply_bytes(fx, &buf), REPLICATE_EAFTER_CHECKSUM);
  expect_store_equals(fx, &before);
  /* And the honest frame applies. */
  assert_int_equal(replicate_frame_encode(fx->enc, &info, srcs, 3, &buf), 0);
  assert_int_equal(apply_bytes(fx, &buf), 0);
  model_commit_apply(&m, &info, 3, nums, news);
  expect_store_equals(fx, &m);
  replicate_buf_free(&buf);
  free(news);
  model_free(&m);
  model_free(&before);
}

/* Random commits (growth, shrinking, pages grown unsent), applied one by
 * one and, on a second standby, coalesced. */
static void test_random_and_coalesced(void **state)
{
  fixture *fx = *state;
  test_rng r = {77};
  model m;
  primary_at_standby(fx, &m);
  model start;
  model_copy(&start, &m);
  char other_dir[128];
  join_path(other_dir, sizeof other_dir, fx->dir, "second");
  loom_store *other;
  assert_int_equal(loom_store_open(other_dir, LOOM_CREATE, NULL, &other), 0);
  replicate_coalescer *co;
  assert_int_equal(replicate_coalescer_new(0, &co), 0);

  replicate_buf frame = {0}, merged = {0};
  loom_snapshot *held = NULL; /* its tree stays at round 30's position */
  model at_held;
  for (int round = 0; round < 60; round++) {
    assert_int_equal(model_random_commit(&m, fx->enc, &r, 20, &frame), 0);
    assert_int_equal(apply_bytes(fx, &frame), 0);
    expect_store_tree(fx->store, &m);
    if (round == 30) {
      assert_int_equal(loom_store_snapshot_open(fx->store, &held), 0);
      model_copy(&at_held, &m);
    }
    replicate_frame f;
    assert_int_equal(replicate_frame_decode(fx->dec, frame.data, frame.len, &f), 0);
    assert_int_equal(replicate_coalescer_add(co, &f), 0);
    /* Every 15 commits, the second standby gets them as one frame. */
    if (round % 15 == 14) {
      assert_int_equal(replicate_coalescer_finish(co, fx->enc, &merged), 0);
      assert_int_equal(replicate_frame_decode(fx->dec, merged.data, merged.len, &f), 0);
      assert_int_equal(f.info.flags, REPLICATE_FRAME_COALESCED);
      assert_int_equal(replicate_frame_apply(&f, other), 0);
      loom_position a, b;
      loom_store_position(fx->store, &a);
      loom_store_position(other, &b);
      assert_int_equal(a.seq, b.seq);
      assert_int_equal(a.checksum, b.checksum);
      assert_int_equal(a.pages, b.pages);
      expect_store_tree(other, &m);
    }
  }
  expect_tree(held, at_held.hashes, at_held.pages);
  loom_snapshot_close(held);
  model_free(&at_held);
  expect_store_equals(fx, &m);
  loom_store *first = fx->store;
  fx->store = other;
  expect_store_equals(fx, &m);
  fx->store = first;
  assert_int_equal(loom_store_close(other), 0);
  replicate_coalescer_free(co);
  replicate_buf_free(&frame);
  replicate_buf_free(&merged);
  model_free(&m);
  model_free(&start);
}

/* ---------------------------------------------------------------------- */
/* The commit hook of a real arena */

typedef struct hook_ctx {
  replicate_encoder *enc;
  replicate_buf frames[16];
  int count;
  int error;
} hook_ctx;

static int on_commit(void *ctx, loom *l, const loom_commit *c)
{
  hook_ctx *h = ctx;
  if (h->count == 16) return h->error = EOVERFLOW;
  int rc = replicate_frame_encode_commit(h->enc, l, c, &h->frames[h->count]);
  if (rc == 0) h->count++;
  else h->error = rc;
  return rc;
}

static void test_commit_hook(void **state)
{
  fixture *fx = *state;
  hook_ctx hook = {.enc = fx->enc};
  loom_options opt = {
      .arena_pages = 64,
      .flags = LOOM_CREATE,
      .on_commit = on_commit,
      .commit_ctx = &hook,
  };
  loom *l;
  int rc = loom_open(fx->primary_dir, &opt, &l);
  if (rc != 0) fail_msg("loom_open: %s", loom_strerror(rc));
  test_rng r = {123};
  /* 1: ten pages of data. */
  for (uint64_t n = 0; n < 10; n++) rng_fill(&r, loom_page(l, n), PS);
  assert_int_equal(loom_save(l, 10, 64), 0);
  /* 2: a few bytes here and there (deltas), one page rewritten. */
  for (int k = 0; k < 50; k++)
    ((uint8_t *)loom_page(l, rng_below(&r, 10)))[rng_below(&r, PS)] ^= 0x5a;
  rng_fill(&r, loom_page(l, 3), PS);
  assert_int_equal(loom_save(l, 10, 64), 0);
  /* 3: shrink to 6, then 4: grow to 12 writing only page 11. */
  ((uint8_t *)loom_page(l, 2))[9] ^= 1;
  assert_int_equal(loom_save(l, 6, 64), 0);
  memset(loom_page(l, 11), 0x77, PS);
  assert_int_equal(loom_save(l, 12, 64), 0);
  assert_int_equal(hook.error, 0);
  assert_true(hook.count >= 3);

  for (int i = 0; i < hook.count; i++) {
    replicate_frame f;
    assert_int_equal(replicate_frame_decode(fx->dec, hook.frames[i].data,
                                            hook.frames[i].len, &f), 0);
    if (i == 1) {
      /* The sparse changes went as deltas. */
      bool delta = false;
      for (uint64_t k = 0; k < f.info.page_count; k++) {
        replicate_page page;
        replicate_frame_get_page(&f, k, &page);
        delta |= page.encoding == REPLICATE_PAGE_XOR;
      }
      assert_true(delta);
    }
    rc = replicate_frame_apply(&f, fx->store);
    if (rc != 0) fail_msg("frame %d: %s", i, replicate_strerror(rc));
  }
  loom_position primary, standby;
  loom_store_position(loom_get_store(l), &primary);
  loom_store_position(fx->store, &standby);
  assert_int_equal(standby.seq, primary.seq);
  assert_int_equal(standby.checksum, primary.checksum);
  assert_int_equal(standby.pages, primary.pages);
  assert_int_equal(standby.pages, 12);
  uint8_t *page = xmalloc(PS);
  for (uint64_t n = 0; n < standby.pages; n++) {
    assert_int_equal(loom_store_read_page(fx->store, n, page), 0);
    assert_memory_equal(page, loom_page(l, n), PS);
  }
  free(page);
  assert_int_equal(loom_close(l), 0);
  for (int i = 0; i < hook.count; i++) replicate_buf_free(&hook.frames[i]);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_sparse, setup, teardown),
      cmocka_unit_test_setup_teardown(test_rewrite, setup, teardown),
      cmocka_unit_test_setup_teardown(test_append, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sparse_one, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sparse_4096, setup, teardown),
      cmocka_unit_test_setup_teardown(test_positions, setup, teardown),
      cmocka_unit_test_setup_teardown(test_damaged, setup, teardown),
      cmocka_unit_test_setup_teardown(test_readback, setup, teardown),
      cmocka_unit_test_setup_teardown(test_random_and_coalesced, setup, teardown),
      cmocka_unit_test_setup_teardown(test_commit_hook, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
