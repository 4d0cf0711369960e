/*
 * test_log_powerloss.c: the replication log under simulated power loss
 * (tests/core/iosim). Before every I/O operation of a run of appends,
 * retention and the byte cap, the simulator writes out possible states of
 * the disk after a power cut (unsynced writes dropped, kept or torn;
 * unsynced directory changes rolled back or kept), and each must open as a
 * log that holds, unchanged, every frame whose append had returned, and
 * then a contiguous run of frames.
 */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "iosim.h"
#include "replicate_testlib.h"

#define FRAMES 40

typedef struct run {
  char root[64];        /* the image directory, tracked by the simulator */
  char cuts[64];        /* where power-cut states are written */
  replicate_buf frames[FRAMES]; /* frames[i] has seq i + 1 */
  uint64_t appended;    /* appends that returned 0 (deferred: and were
                           synced after): [1, appended] */
  uint64_t may_drop_below; /* seqs below this may be gone (retention and
                              the cap, as of the end of the call running) */
  uint64_t cuts_checked;
  char failure[256];    /* the first failure seen in a cut */
} run;

static void make_frames(run *r)
{
  test_rng rng = {31};
  model m;
  model_init(&m, 1, 0, 0);
  model_fill_random(&m, 4, &rng);
  replicate_encoder *enc;
  assert_int_equal(replicate_encoder_new(1, &enc), 0);
  uint8_t *news = xmalloc(PS);
  for (int i = 0; i < FRAMES; i++) {
    uint64_t nums[1] = {(uint64_t)i % 4};
    memcpy(news, model_page(&m, nums[0]), PS);
    for (int k = 0; k < 64; k++) news[rng_below(&rng, PS)] ^= 0x21;
    /* Some frames are larger than a 4 KiB sector, to be torn inside. */
    if (i % 5 == 0) rng_fill(&rng, news, PS / 2);
    assert_int_equal(model_commit(&m, enc, 4, 1, nums, news, &r->frames[i]), 0);
  }
  free(news);
  replicate_encoder_free(enc);
  model_free(&m);
}

/* Check one post-power-loss state; on failure, note why. */
static void check_cut(run *r, const char *dir, uint64_t k, unsigned mode)
{
  replicate_log *log;
  int rc = replicate_log_open(dir, NULL, NULL, &log);
  if (rc != 0) {
    snprintf(r->failure, sizeof r->failure, "op %" PRIu64 " mode %#x: open: %s",
             k, mode, replicate_strerror(rc));
    return;
  }
  replicate_log_stats st;
  replicate_log_get_stats(log, &st);
  uint64_t durable_from = r->may_drop_below > 1 ? r->may_drop_below : 1;
  if (r->appended >= durable_from &&
      (st.records == 0 || st.oldest_seq > durable_from ||
       st.newest_seq < r->appended)) {
    snprintf(r->failure, sizeof r->failure,
             "op %" PRIu64 " mode %#x: log holds [%" PRIu64 ", %" PRIu64
             "], appends returned for [%" PRIu64 ", %" PRIu64 "]",
             k, mode, st.oldest_seq, st.newest_seq, durable_from, r->appended);
  }
  replicate_buf buf = {0};
  for (uint64_t s = st.oldest_seq; st.records && s <= st.newest_seq; s++) {
    rc = replicate_log_read(log, s, &buf);
    if (rc != 0 || s > FRAMES || buf.len != r->frames[s - 1].len ||
        memcmp(buf.data, r->frames[s - 1].data, buf.len) != 0) {
      snprintf(r->failure, sizeof r->failure,
               "op %" PRIu64 " mode %#x: frame %" PRIu64 " differs (%s)", k,
               mode, s, replicate_strerror(rc));
      break;
    }
  }
  replicate_buf_free(&buf);
  replicate_log_close(log);
}

static void before_op(void *ctx, iosim *sim, uint64_t k, loom_io_op op)
{
  (void)op;
  run *r = ctx;
  if (r->failure[0]) return;
  static const unsigned modes[] = {
      IOSIM_CUT_DROP, IOSIM_CUT_KEEP, IOSIM_CUT_RANDOM_512,
      IOSIM_CUT_RANDOM_4K | IOSIM_CUT_DIR_RANDOM,
      IOSIM_CUT_RANDOM_512 | IOSIM_CUT_DIR_RANDOM};
  for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
    char dir[128];
    snprintf(dir, sizeof dir, "%s/cut", r->cuts);
    int rc = iosim_powercut(sim, k * 7 + i, dir, modes[i]);
    if (rc != 0) {
      snprintf(r->failure, sizeof r->failure, "powercut: %s", strerror(rc));
      return;
    }
    check_cut(r, dir, k, modes[i]);
    test_remove_tree(dir);
    r->cuts_checked++;
  }
}

/* sync: REPLICATE_LOG_SYNC_EACH, or _DEFERRED with a replicate_log_sync
 * after every third append (what it promises: LOG SYNC in log.c). */
static void powerloss_run(replicate_log_sync_mode sync)
{
  run *r = xcalloc(sizeof *r);
  strcpy(r->root, "/tmp/replog-power-XXXXXX");
  strcpy(r->cuts, "/tmp/replog-cuts-XXXXXX");
  assert_non_null(mkdtemp(r->root));
  assert_non_null(mkdtemp(r->cuts));
  make_frames(r);

  /* A dry run without power cuts tells where retention and the cap will
   * have moved the oldest seq at the end of each call. */
  replicate_log_options opt = {.segment_bytes = 6000, .max_bytes = 30000, .sync = sync};
  uint64_t oldest_after[FRAMES + 2];
  char dry[96];
  join_path(dry, sizeof dry, r->cuts, "dry");
  assert_int_equal(mkdir(dry, 0755), 0);
  replicate_log *log;
  replicate_log_stats st;
  assert_int_equal(replicate_log_open(dry, &opt, NULL, &log), 0);
  for (uint64_t s = 1; s <= FRAMES; s++) {
    assert_int_equal(replicate_log_append(log, r->frames[s - 1].data, r->frames[s - 1].len), 0);
    replicate_log_get_stats(log, &st);
    oldest_after[s] = st.oldest_seq;
    if (s == 25) {
      assert_int_equal(replicate_log_retain(log, 20), 0);
      replicate_log_get_stats(log, &st);
      oldest_after[FRAMES + 1] = st.oldest_seq;
    }
  }
  assert_true(st.segments_dropped > 3);
  assert_int_equal(replicate_log_close(log), 0);
  test_remove_tree(dry);

  iosim *sim;
  assert_int_equal(iosim_create(r->root, &sim), 0);
  iosim_hook_set(sim, before_op, r);
  assert_int_equal(replicate_log_open(r->root, &opt, iosim_io(sim), &log), 0);
  for (uint64_t s = 1; s <= FRAMES && !r->failure[0]; s++) {
    r->may_drop_below = oldest_after[s];
    int rc = replicate_log_append(log, r->frames[s - 1].data, r->frames[s - 1].len);
    assert_int_equal(rc, 0);
    if (sync == REPLICATE_LOG_SYNC_EACH) {
      r->appended = s;
    } else if (s % 3 == 0) {
      assert_int_equal(replicate_log_sync(log), 0);
      r->appended = s;
    }
    replicate_log_get_stats(log, &st);
    assert_int_equal(st.oldest_seq, oldest_after[s]);
    if (s == 25) {
      r->may_drop_below = oldest_after[FRAMES + 1];
      assert_int_equal(replicate_log_retain(log, 20), 0);
    }
  }
  assert_int_equal(replicate_log_close(log), 0);
  iosim_hook_set(sim, NULL, NULL);
  if (r->failure[0]) fail_msg("%s", r->failure);
  assert_int_equal(iosim_model_errors(sim), 0);
  assert_true(r->cuts_checked > 300);
  iosim_destroy(sim);

  test_remove_tree(r->root);
  test_remove_tree(r->cuts);
  for (int i = 0; i < FRAMES; i++) replicate_buf_free(&r->frames[i]);
  free(r);
}

static void test_powerloss(void **state)
{
  (void)state;
  powerloss_run(REPLICATE_LOG_SYNC_EACH);
}

static void test_powerloss_deferred(void **state)
{
  (void)state;
  powerloss_run(REPLICATE_LOG_SYNC_DEFERRED);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_powerloss),
      cmocka_unit_test(test_powerloss_deferred),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
