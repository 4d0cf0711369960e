/*
 * test_receiver.c: the standby's receiver (replicate/receiver.h) driven
 * directly, without HTTP: frames in order, a gap, a duplicate and a
 * heartbeat, a divergence, a coalesced frame, a delayed standby, a base
 * image (whole, cut short, too long, during frames), and promotion and its
 * refusals; an archiving standby's hold on its receive log.
 */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <cmocka.h>

#include "receiver.h"
#include "replicate_testlib.h"

typedef struct fixture {
  char dir[64];
  char standby_dir[96];
  replicate_receiver *rx;
  replicate_encoder *enc;
  replicate_decoder *dec;
  model m;                      /* the primary */
  loom_history history;         /* the primary's */
  test_rng rng;
  /* What on_position told (positions_seen) */
  _Atomic uint64_t told, told_received, told_applied, told_backwards;
  _Atomic uint64_t told_received_epoch, told_applied_epoch;
  uint64_t told_seqs[64];       /* the received seqs told, in order */
  _Atomic uint64_t told_seqs_n;
} fixture;

/* on_position (receiver.h): the last positions, and whether applied ever
 * passed received or a seq went back without a rollback to applied. */
static void positions_seen(void *ctx, const loom_position *received,
                           const loom_position *applied)
{
  fixture *fx = ctx;
  if (applied->seq > received->seq ||
      (received->seq < atomic_load(&fx->told_received) &&
       received->seq != applied->seq) ||
      applied->seq < atomic_load(&fx->told_applied))
    atomic_fetch_add(&fx->told_backwards, 1);
  uint64_t n = atomic_load(&fx->told_seqs_n);
  if (received->seq != atomic_load(&fx->told_received) && n < 64) {
    fx->told_seqs[n] = received->seq; /* calls never overlap: rx->mu */
    atomic_store(&fx->told_seqs_n, n + 1);
  }
  atomic_store(&fx->told_received, received->seq);
  atomic_store(&fx->told_applied, applied->seq);
  atomic_store(&fx->told_received_epoch, received->epoch);
  atomic_store(&fx->told_applied_epoch, applied->epoch);
  atomic_fetch_add(&fx->told, 1);
}

/* What on_position told last is where the status says received and
 * applied are (every move was told). */
static void expect_told_is_status(fixture *fx)
{
  replicate_receiver_status s;
  replicate_receiver_get_status(fx->rx, &s);
  assert_int_equal(atomic_load(&fx->told_received), s.received.seq);
  assert_int_equal(atomic_load(&fx->told_received_epoch), s.received.epoch);
  assert_int_equal(atomic_load(&fx->told_applied), s.applied.seq);
  assert_int_equal(atomic_load(&fx->told_applied_epoch), s.applied.epoch);
}

/* Open the standby's receiver (apply_delay seconds: 0 for none), telling
 * positions_seen. */
static int open_receiver_delayed(fixture *fx, uint64_t promote_max_lag,
                                 double apply_delay)
{
  replicate_receiver_options o = {.dir = fx->standby_dir,
                                  .promote_max_lag = promote_max_lag,
                                  .apply_delay_seconds = apply_delay,
                                  .on_position = positions_seen,
                                  .position_ctx = fx};
  return replicate_receiver_open(&o, &fx->rx);
}

static int open_receiver(fixture *fx, uint64_t promote_max_lag)
{
  return open_receiver_delayed(fx, promote_max_lag, 0);
}

static int setup(void **state)
{
  fixture *fx = xcalloc(sizeof *fx);
  strcpy(fx->dir, "/tmp/replicate-receiver-XXXXXX");
  if (mkdtemp(fx->dir) == NULL)
    return -1;
  join_path(fx->standby_dir, sizeof fx->standby_dir, fx->dir, "standby");
  if (open_receiver(fx, 10) != 0 || replicate_encoder_new(1, &fx->enc) != 0 ||
      replicate_decoder_new(NULL, &fx->dec) != 0)
    return -1;
  replicate_receiver_status s;
  replicate_receiver_get_status(fx->rx, &s);
  model_init(&fx->m, s.applied.epoch, s.applied.seq, s.applied.checksum);
  fx->rng.state = 12;
  rng_fill(&fx->rng, fx->history.id, sizeof fx->history.id);
  *state = fx;
  return 0;
}

static int teardown(void **state)
{
  fixture *fx = *state;
  replicate_receiver_close(fx->rx);
  replicate_encoder_free(fx->enc);
  replicate_decoder_free(fx->dec);
  model_free(&fx->m);
  test_remove_tree(fx->dir);
  free(fx);
  return 0;
}

/* The next commit of model m, in the primary's history: a few random
 * pages (the image grows to 8). */
static void next_frame(fixture *fx, model *m, replicate_buf *out)
{
  uint64_t nums[3];
  uint8_t *news = xmalloc(3 * PS);
  uint64_t after = m->pages < 8 ? 8 : m->pages;
  for (size_t i = 0; i < 3; i++) {
    nums[i] = i * 2 + rng_below(&fx->rng, 2);
    rng_fill(&fx->rng, news + i * PS, PS);
  }
  replicate_frame_info info;
  replicate_page_src srcs[3];
  model_commit_info(m, after, 3, nums, news, &info, srcs);
  info.history = fx->history;
  assert_int_equal(replicate_frame_encode(fx->enc, &info, srcs, 3, out), 0);
  model_commit_apply(m, &info, 3, nums, news);
  free(news);
}

/* A heartbeat of the primary saying it is at seq. */
static void heartbeat(fixture *fx, uint64_t seq, replicate_buf *out)
{
  loom_position latest = {.epoch = fx->m.epoch, .seq = seq, .checksum = 0x1234,
                          .pages = 8, .commit_time_ns = fx->m.time_ns};
  assert_int_equal(replicate_frame_encode_heartbeat(&fx->history, &latest,
                                                    fx->m.time_ns, out), 0);
}

static replicate_recv_result send(fixture *fx, const replicate_buf *frame,
                                  replicate_recv_outcome *o)
{
  replicate_receiver_frame(fx->rx, frame->data, frame->len, o);
  return o->result;
}

/* Send the next commit of the primary; expect it taken. */
static void send_next(fixture *fx)
{
  replicate_buf buf = {0};
  replicate_recv_outcome o;
  next_frame(fx, &fx->m, &buf);
  assert_int_equal(send(fx, &buf, &o), REPLICATE_RECV_OK);
  assert_int_equal(o.received.seq, fx->m.seq);
  assert_int_equal(o.received.checksum, fx->m.checksum);
  replicate_buf_free(&buf);
}

static int64_t mono_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait (10 s at most) until the status's applied seq (or, with computed,
 * its computed seq) reaches seq; the status then. */
static replicate_receiver_status wait_seq(fixture *fx, uint64_t seq, bool computed)
{
  int64_t deadline = mono_ms() + 10000;
  replicate_receiver_status s;
  for (;;) {
    replicate_receiver_get_status(fx->rx, &s);
    uint64_t at = computed ? s.computed.seq : s.applied.seq;
    if (at >= seq || mono_ms() > deadline)
      break;
    struct timespec ts = {0, 2000000};
    nanosleep(&ts, NULL);
  }
  assert_int_equal(computed ? s.computed.seq : s.applied.seq, seq);
  return s;
}

/* Wait (10 s at most) until the applier applied seq. */
static void wait_applied(fixture *fx, uint64_t seq) { wait_seq(fx, seq, false); }

/* Close the receiver and compare its store with the primary's model. */
static void expect_store_is_model(fixture *fx)
{
  assert_int_equal(replicate_receiver_close(fx->rx), 0);
  fx->rx = NULL;
  loom_store *store;
  assert_int_equal(loom_store_open(fx->standby_dir, 0, NULL, &store), 0);
  loom_position pos;
  loom_store_position(store, &pos);
  assert_int_equal(pos.seq, fx->m.seq);
  assert_int_equal(pos.checksum, fx->m.checksum);
  assert_int_equal(pos.pages, fx->m.pages);
  uint8_t *page = xmalloc(PS);
  for (uint64_t n = 0; n < fx->m.pages; n++) {
    assert_int_equal(loom_store_read_page(store, n, page), 0);
    if (memcmp(page, model_page(&fx->m, n), PS) != 0)
      fail_msg("page %" PRIu64 " differs", n);
  }
  free(page);
  assert_int_equal(loom_store_close(store), 0);
  assert_int_equal(open_receiver(fx, 10), 0);
}

/* ---------------------------------------------------------------------- */

static void test_in_order(void **state)
{
  fixture *fx = *state;
  for (int i = 0; i < 20; i++)
    send_next(fx);
  wait_applied(fx, 20);
  replicate_receiver_status s;
  replicate_receiver_get_status(fx->rx, &s);
  assert_int_equal(s.frames_received, 20);
  assert_int_equal(s.frames_applied, 20);
  assert_int_equal(s.append_durations.count, 20); /* each append timed */
  assert_true(s.append_durations.sum_seconds > 0);
  assert_int_equal(s.lag_frames, 0);
  assert_int_equal(s.lag_bytes, 0);
  expect_store_is_model(fx);
  /* Reopened: the position survives, and frames continue from it. */
  send_next(fx);
  wait_applied(fx, 21);
}

/* READ-BACK, GATHERED (receiver_apply.c): frames sent one at a time, each
 * once the last is applied, are applied without each waiting for the last
 * one's checkpoint (a read-back of its pages, or an idle sync, forced one
 * per apply before: here about one per 20-50 ms of the run), and once the
 * standby is idle computed reaches applied with the primary's checksum. */
static void test_readback_gathered(void **state)
{
  fixture *fx = *state;
  replicate_receiver_status s;
  replicate_receiver_get_status(fx->rx, &s);
  uint64_t checkpoints = s.commit_log.checkpoints, commits = s.apply_commits;
  int64_t start = mono_ms();
  for (uint64_t i = 1; i <= 100; i++) {
    send_next(fx);
    wait_applied(fx, i);
  }
  int64_t took = mono_ms() - start;
  replicate_receiver_get_status(fx->rx, &s);
  checkpoints = s.commit_log.checkpoints - checkpoints;
  commits = s.apply_commits - commits;
  print_message("100 frames in %lld ms: %llu commits, %llu checkpoints\n",
                (long long)took, (unsigned long long)commits,
                (unsigned long long)checkpoints);
  assert_int_equal(commits, 100);
  assert_true(checkpoints <= (uint64_t)(took / 10) + 3);
  s = wait_seq(fx, 100, true);
  assert_true(s.computed.checksum == fx->m.checksum);
  assert_true(s.rot_page == UINT64_MAX);
  expect_store_is_model(fx);
}

/* on_position: told once at open, then as each frame is received and
 * applied; received and applied as the status has them, never backwards. */
static void test_position_observer(void **state)
{
  fixture *fx = *state;
  assert_true(atomic_load(&fx->told) >= 1); /* at open */
  assert_int_equal(atomic_load(&fx->told_received), 0);
  for (uint64_t i = 1; i <= 10; i++)
    send_next(fx);
  replicate_receiver_status s = wait_seq(fx, 10, false);
  assert_int_equal(atomic_load(&fx->told_received), s.received.seq);
  assert_int_equal(atomic_load(&fx->told_applied), 10);
  /* One call per received frame, in order, and the applies' besides. */
  assert_true(atomic_load(&fx->told) >= 1 + 10 + 1);
  assert_int_equal(atomic_load(&fx->told_seqs_n), 10);
  for (uint64_t i = 0; i < 10; i++)
    assert_int_equal(fx->told_seqs[i], i + 1);
  assert_int_equal(atomic_load(&fx->told_backwards), 0);
  expect_told_is_status(fx);
  /* Reopened: told again at open, at the recovered position. */
  assert_int_equal(replicate_receiver_close(fx->rx), 0);
  atomic_store(&fx->told, 0);
  atomic_store(&fx->told_received, 0);
  atomic_store(&fx->told_applied, 0);
  assert_int_equal(open_receiver(fx, 10), 0);
  assert_int_equal(atomic_load(&fx->told), 1);
  assert_int_equal(atomic_load(&fx->told_received), 10);
  assert_int_equal(atomic_load(&fx->told_applied), 10);
}

static void test_malformed(void **state)
{
  fixture *fx = *state;
  uint8_t junk[200];
  memset(junk, 0x5a, sizeof junk);
  replicate_recv_outcome o;
  replicate_receiver_frame(fx->rx, junk, sizeof junk, &o);
  assert_int_equal(o.result, REPLICATE_RECV_MALFORMED);
  assert_int_equal(o.code, REPLICATE_EMAGIC);
  assert_string_equal(replicate_recv_result_name(o.result), "malformed");
}

static void test_gap(void **state)
{
  fixture *fx = *state;
  send_next(fx);
  replicate_buf f2 = {0}, f3 = {0};
  next_frame(fx, &fx->m, &f2);
  next_frame(fx, &fx->m, &f3);
  replicate_recv_outcome o;
  assert_int_equal(send(fx, &f3, &o), REPLICATE_RECV_GAP);
  assert_int_equal(o.code, REPLICATE_EPOSITION);
  assert_int_equal(o.received.seq, 1);
  assert_int_equal(o.frame_before.seq, 2);
  /* The sender resends from received: both are taken. */
  assert_int_equal(send(fx, &f2, &o), REPLICATE_RECV_OK);
  assert_int_equal(send(fx, &f3, &o), REPLICATE_RECV_OK);
  assert_int_equal(o.received.seq, 3);
  wait_applied(fx, 3);
  replicate_buf_free(&f2);
  replicate_buf_free(&f3);
  expect_store_is_model(fx);
}

static void test_duplicate_and_heartbeat(void **state)
{
  fixture *fx = *state;
  replicate_buf f1 = {0};
  replicate_recv_outcome o;
  next_frame(fx, &fx->m, &f1);
  assert_int_equal(send(fx, &f1, &o), REPLICATE_RECV_OK);
  send_next(fx);
  assert_int_equal(send(fx, &f1, &o), REPLICATE_RECV_DUPLICATE);
  assert_int_equal(o.received.seq, 2);

  replicate_buf hb = {0};
  heartbeat(fx, 7, &hb);
  assert_int_equal(send(fx, &hb, &o), REPLICATE_RECV_HEARTBEAT);
  assert_int_equal(o.primary_seq, 7);
  wait_applied(fx, 2);
  replicate_receiver_status s;
  replicate_receiver_get_status(fx->rx, &s);
  assert_int_equal(s.duplicates, 1);
  assert_int_equal(s.heartbeats, 1);
  assert_int_equal(s.primary_seq, 7);
  assert_int_equal(s.lag_frames, 5);
  assert_true(s.clock_skew_known);
  replicate_buf_free(&f1);
  replicate_buf_free(&hb);
}

static void test_divergence(void **state)
{
  fixture *fx = *state;
  model other;
  model_copy(&other, &fx->m);
  send_next(fx);
  /* Another commit 1 (other pages): a fork at a seq the standby holds. */
  replicate_buf fork = {0};
  next_frame(fx, &other, &fork);
  replicate_recv_outcome o;
  assert_int_equal(send(fx, &fork, &o), REPLICATE_RECV_DIVERGED);
  assert_int_equal(o.code, REPLICATE_EFORK);
  assert_int_equal(o.received.seq, 1);
  assert_int_equal(o.received.checksum, fx->m.checksum);
  replicate_receiver_status s;
  replicate_receiver_get_status(fx->rx, &s);
  assert_int_equal(s.diverged, REPLICATE_EFORK);
  assert_int_equal(s.divergences, 1);
  /* Its next frame does not follow ours either. */
  replicate_buf fork2 = {0};
  next_frame(fx, &other, &fork2);
  assert_int_equal(send(fx, &fork2, &o), REPLICATE_RECV_DIVERGED);
  replicate_buf_free(&fork);
  replicate_buf_free(&fork2);
  model_free(&other);
  wait_applied(fx, 1);
  expect_store_is_model(fx);
}

static void test_coalesced(void **state)
{
  fixture *fx = *state;
  send_next(fx);
  replicate_coalescer *c;
  assert_int_equal(replicate_coalescer_new(0, &c), 0);
  for (int i = 0; i < 4; i++) {
    replicate_buf buf = {0};
    replicate_frame f;
    next_frame(fx, &fx->m, &buf);
    assert_int_equal(replicate_frame_decode(fx->dec, buf.data, buf.len, &f), 0);
    assert_int_equal(replicate_coalescer_add(c, &f), 0);
    replicate_buf_free(&buf);
  }
  replicate_buf merged = {0};
  assert_int_equal(replicate_coalescer_finish(c, fx->enc, &merged), 0);
  replicate_coalescer_free(c);
  replicate_recv_outcome o;
  assert_int_equal(send(fx, &merged, &o), REPLICATE_RECV_OK);
  /* Applied at once: nothing waits in the receive log. */
  assert_int_equal(o.applied.seq, 5);
  assert_int_equal(o.received.seq, 5);
  expect_told_is_status(fx);
  assert_int_equal(send(fx, &merged, &o), REPLICATE_RECV_DUPLICATE);
  replicate_buf_free(&merged);
  send_next(fx);
  wait_applied(fx, 6);
  expect_store_is_model(fx);
  expect_told_is_status(fx);
}

/* ---------------------------------------------------------------------- */
/* A delayed standby (receiver.h DELAYED STANDBY) */

static int64_t real_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void reopen_delayed(fixture *fx, double delay)
{
  assert_int_equal(replicate_receiver_close(fx->rx), 0);
  assert_int_equal(open_receiver_delayed(fx, 10, delay), 0);
}

/* Commits of "now" wait out the delay, across a close and reopen; a merged
 * frame of young commits is refused (SINGLE_FRAMES); promotion without
 * force applies only what is due. */
static void test_apply_delay(void **state)
{
  fixture *fx = *state;
  reopen_delayed(fx, 2.0);
  fx->m.time_ns = real_ns();
  int64_t sent_ms = mono_ms();
  for (int i = 0; i < 3; i++)
    send_next(fx);
  replicate_receiver_status s;
  replicate_receiver_get_status(fx->rx, &s);
  assert_int_equal(s.received.seq, 3);
  assert_int_equal(s.applied.seq, 0);
  assert_int_equal(s.delay_waiting_frames, 3);
  assert_true(s.apply_delay_seconds == 2.0);

  replicate_coalescer *c;
  assert_int_equal(replicate_coalescer_new(0, &c), 0);
  model young; /* a copy: the primary's frames 4-5, merged, not kept */
  model_copy(&young, &fx->m);
  replicate_buf merged = {0};
  for (int i = 0; i < 2; i++) {
    replicate_buf buf = {0};
    replicate_frame f;
    next_frame(fx, &young, &buf);
    assert_int_equal(replicate_frame_decode(fx->dec, buf.data, buf.len, &f), 0);
    assert_int_equal(replicate_coalescer_add(c, &f), 0);
    replicate_buf_free(&buf);
  }
  assert_int_equal(replicate_coalescer_finish(c, fx->enc, &merged), 0);
  replicate_coalescer_free(c);
  model_free(&young);
  replicate_recv_outcome o;
  assert_int_equal(send(fx, &merged, &o), REPLICATE_RECV_SINGLE_FRAMES);
  assert_true(o.single_frames);
  assert_int_equal(o.received.seq, 3);
  replicate_buf_free(&merged);

  reopen_delayed(fx, 2.0); /* the young commits stay in the receive log */
  replicate_receiver_get_status(fx->rx, &s);
  assert_int_equal(s.received.seq, 3);
  assert_int_equal(s.applied.seq, 0);
  wait_applied(fx, 3);
  assert_true(mono_ms() - sent_ms >= 1900);

  fx->m.time_ns = real_ns();
  send_next(fx); /* 4 and 5, young: discarded by the promotion */
  send_next(fx);
  replicate_receiver_promote(fx->rx, false, &o);
  assert_int_equal(o.result, REPLICATE_RECV_OK);
  assert_int_equal(o.applied.seq, 3);
  replicate_receiver_get_status(fx->rx, &s);
  assert_int_equal(s.delay_discarded, 2);
  expect_told_is_status(fx); /* received back at 3, the new epoch */
}

/* Group apply within the commit log's ring: frames waiting in the receive
 * log at open (kept there by an apply delay) are merged only up to half
 * the ring, so a merged record never outgrows it. With a 128 KiB ring (4
 * pages), frames of 3 pages each go one at a time (before: all six in one
 * commit, a record that grew the ring); the ring stays as configured. */
static void test_group_apply_fits_ring(void **state)
{
  fixture *fx = *state;
  reopen_delayed(fx, 600.0);
  fx->m.time_ns = real_ns();
  for (int i = 0; i < 6; i++)
    send_next(fx);
  assert_int_equal(replicate_receiver_close(fx->rx), 0); /* all still young */
  replicate_receiver_options o = {.dir = fx->standby_dir, .promote_max_lag = 10,
                                  .commit_log_bytes = 128 * 1024};
  assert_int_equal(replicate_receiver_open(&o, &fx->rx), 0);
  wait_applied(fx, 6);
  replicate_receiver_status s;
  replicate_receiver_get_status(fx->rx, &s);
  assert_int_equal(s.apply_commits, 6);
  assert_int_equal(s.commit_log.size, 128 * 1024);
  expect_store_is_model(fx);
}

/* What an archiving standby's hook saw: the seqs, in order. */
typedef struct seen_frames {
  uint64_t seqs[16];
  size_t n;
  bool merged; /* a merged frame was passed on */
} seen_frames;

static void on_received(void *ctx, const void *frame, size_t len)
{
  seen_frames *seen = ctx;
  replicate_frame_info info;
  assert_int_equal(replicate_frame_parse_header(frame, len, NULL, &info), 0);
  seen->merged |= (info.flags & REPLICATE_FRAME_COALESCED) != 0;
  if (seen->n < 16)
    seen->seqs[seen->n++] = info.after.seq;
}

/* A receiver with on_received (an archiving standby) passes every single
 * commit on once durable, in order, and nothing else; merged frames are
 * refused (SINGLE_FRAMES) and every answer asks for single frames. */
static void test_on_received(void **state)
{
  fixture *fx = *state;
  replicate_receiver_close(fx->rx);
  seen_frames seen = {0};
  replicate_receiver_options ro = {.dir = fx->standby_dir, .promote_max_lag = 10,
                                   .on_received = on_received, .received_ctx = &seen};
  assert_int_equal(replicate_receiver_open(&ro, &fx->rx), 0);
  replicate_buf last = {0};
  replicate_recv_outcome o;
  for (int i = 0; i < 3; i++) {
    replicate_buf_free(&last);
    next_frame(fx, &fx->m, &last);
    assert_int_equal(send(fx, &last, &o), REPLICATE_RECV_OK);
    assert_true(o.single_frames);
  }
  assert_int_equal(send(fx, &last, &o), REPLICATE_RECV_DUPLICATE);
  replicate_buf_free(&last);
  assert_int_equal(seen.n, 3);
  for (size_t i = 0; i < 3; i++)
    assert_int_equal(seen.seqs[i], i + 1);

  replicate_coalescer *c;
  assert_int_equal(replicate_coalescer_new(0, &c), 0);
  model ahead; /* frames 4-5 merged; the primary then sends them singly */
  model_copy(&ahead, &fx->m);
  replicate_buf merged = {0}, single[2] = {{0}};
  for (int i = 0; i < 2; i++) {
    replicate_frame f;
    next_frame(fx, &ahead, &single[i]);
    assert_int_equal(
        replicate_frame_decode(fx->dec, single[i].data, single[i].len, &f), 0);
    assert_int_equal(replicate_coalescer_add(c, &f), 0);
  }
  assert_int_equal(replicate_coalescer_finish(c, fx->enc, &merged), 0);
  replicate_coalescer_free(c);
  assert_int_equal(send(fx, &merged, &o), REPLICATE_RECV_SINGLE_FRAMES);
  assert_true(o.single_frames);
  assert_int_equal(o.received.seq, 3);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(send(fx, &single[i], &o), REPLICATE_RECV_OK);
    replicate_buf_free(&single[i]);
  }
  replicate_buf_free(&merged);
  model_free(&ahead);
  assert_int_equal(seen.n, 5);
  assert_int_equal(seen.seqs[3], 4);
  assert_int_equal(seen.seqs[4], 5);
  assert_false(seen.merged);
}

/* The oldest seq the receive log holds. */
static uint64_t log_oldest(fixture *fx)
{
  replicate_log_stats st;
  replicate_log_get_stats(replicate_receiver_log(fx->rx), &st);
  return st.oldest_seq;
}

static void open_archiving(fixture *fx, seen_frames *seen)
{
  replicate_receiver_options ro = {.dir = fx->standby_dir,
                                   .promote_max_lag = 10,
                                   .on_received = seen ? on_received : NULL,
                                   .received_ctx = seen,
                                   .log_segment_bytes = 64 << 10};
  assert_int_equal(replicate_receiver_open(&ro, &fx->rx), 0);
}

/* An archiving standby's receive log (on_received) keeps every frame from
 * open on, applied or not, until its consumer moves the hold
 * (replicate_receiver_log, replicate_log_hold), across a restart too; a
 * receiver without on_received trims behind its applies. Segments of
 * 64 KiB: a frame (three 16 KiB pages) a segment, so trims show. */
static void test_receive_log_hold(void **state)
{
  fixture *fx = *state;
  replicate_receiver_close(fx->rx);
  seen_frames seen = {0};
  open_archiving(fx, &seen);
  for (int i = 0; i < 20; i++)
    send_next(fx);
  wait_applied(fx, 20);
  test_pause_ms(300); /* checks that nothing happens: the applier's trims */
  assert_int_equal(log_oldest(fx), 1);

  replicate_log_hold(replicate_receiver_log(fx->rx), 15); /* 1-14 uploaded */
  send_next(fx);
  wait_applied(fx, 21);
  TEST_WAIT_UNTIL(log_oldest(fx) > 1, 5000);
  assert_in_range(log_oldest(fx), 2, 15);
  replicate_buf buf = {0};
  replicate_log *log = replicate_receiver_log(fx->rx);
  assert_int_equal(replicate_log_read(log, 15, &buf), 0);

  /* A restart (the consumer's hold is gone with the process): the
   * receiver holds everything again before its applier trims. */
  uint64_t oldest = log_oldest(fx);
  assert_int_equal(replicate_receiver_close(fx->rx), 0);
  open_archiving(fx, &seen);
  send_next(fx);
  wait_applied(fx, 22);
  test_pause_ms(300);
  assert_int_equal(log_oldest(fx), oldest);

  /* Without on_received, the applies trim the log. */
  assert_int_equal(replicate_receiver_close(fx->rx), 0);
  open_archiving(fx, NULL);
  send_next(fx);
  wait_applied(fx, 23);
  TEST_WAIT_UNTIL(log_oldest(fx) > 15, 5000);
  assert_true(log_oldest(fx) > 15);
  replicate_buf_free(&buf);
}

/* ---------------------------------------------------------------------- */
/* Base images */

/* The image stream of model m: header, then pages. */
static uint8_t *image_stream(const model *m, const loom_history *h,
                             size_t *len)
{
  *len = LOOM_STREAM_HEADER + m->pages * PS;
  uint8_t *s = xmalloc(*len);
  loom_position pos = {.epoch = m->epoch, .seq = m->seq,
                       .checksum = m->checksum, .pages = m->pages,
                       .commit_time_ns = m->time_ns};
  loom_lineage lineage;
  memset(&lineage, 0, sizeof lineage);
  lineage.history = *h;
  loom_stream_header_encode(s, &pos, &lineage);
  memcpy(s + LOOM_STREAM_HEADER, m->data, m->pages * PS);
  return s;
}

/* Feed stream[0, len) in uneven chunks; returns the last feed's code. */
static int feed(replicate_receiver_base *up, const uint8_t *stream, size_t len)
{
  size_t off = 0, chunk = 1;
  int rc = 0;
  while (off < len && rc == 0) {
    size_t n = len - off < chunk ? len - off : chunk;
    rc = replicate_receiver_base_feed(up, stream + off, n);
    off += n;
    chunk = chunk * 3 + 7;
  }
  return rc;
}

static void test_base_image(void **state)
{
  fixture *fx = *state;
  send_next(fx);
  wait_applied(fx, 1);
  /* The primary moved on to seq 40; its log no longer reaches back. */
  for (int i = 0; i < 39; i++) {
    replicate_buf buf = {0};
    next_frame(fx, &fx->m, &buf);
    replicate_buf_free(&buf);
  }
  size_t len;
  uint8_t *stream = image_stream(&fx->m, &fx->history, &len);

  replicate_receiver_base *up, *second;
  replicate_recv_outcome o;
  assert_int_equal(replicate_receiver_base_begin(fx->rx, len, NULL, &up, &o), 0);
  /* One at a time; frames wait. */
  assert_int_equal(replicate_receiver_base_begin(fx->rx, len, NULL, &second, &o),
                   EBUSY);
  assert_int_equal(o.result, REPLICATE_RECV_BASE_RUNNING);
  replicate_buf next = {0};
  model ahead;
  model_copy(&ahead, &fx->m);
  next_frame(fx, &ahead, &next);
  assert_int_equal(send(fx, &next, &o), REPLICATE_RECV_BASE_ACTIVE);
  assert_int_equal(o.retry_after, 1);
  replicate_receiver_promote(fx->rx, true, &o);
  assert_int_equal(o.result, REPLICATE_RECV_BASE_ACTIVE);

  assert_int_equal(feed(up, stream, len), 0);
  replicate_receiver_base_finish(up, &o);
  assert_int_equal(o.result, REPLICATE_RECV_OK);
  assert_int_equal(o.applied.seq, 40);
  assert_int_equal(o.received.seq, 40);
  assert_int_equal(o.applied.checksum, fx->m.checksum);
  expect_told_is_status(fx);
  /* Frames continue from the image. */
  assert_int_equal(send(fx, &next, &o), REPLICATE_RECV_OK);
  model_free(&fx->m);
  fx->m = ahead;
  wait_applied(fx, 41);
  replicate_receiver_status s;
  replicate_receiver_get_status(fx->rx, &s);
  assert_int_equal(s.bases, 1);
  replicate_buf_free(&next);
  free(stream);
  expect_store_is_model(fx);
}

static void test_base_refusals(void **state)
{
  fixture *fx = *state;
  for (int i = 0; i < 3; i++)
    send_next(fx);
  size_t len;
  uint8_t *stream = image_stream(&fx->m, &fx->history, &len);
  replicate_receiver_base *up;
  replicate_recv_outcome o;

  /* Cut short: nothing changes. */
  assert_int_equal(replicate_receiver_base_begin(fx->rx, UINT64_MAX, NULL, &up, &o), 0);
  assert_int_equal(feed(up, stream, len - 100), 0);
  replicate_receiver_base_finish(up, &o);
  assert_int_equal(o.result, REPLICATE_RECV_BASE_TRUNCATED);
  assert_int_equal(o.received.seq, 3);

  /* A byte too many. */
  uint8_t *longer = xmalloc(len + 1);
  memcpy(longer, stream, len);
  longer[len] = 0;
  assert_int_equal(replicate_receiver_base_begin(fx->rx, UINT64_MAX, NULL, &up, &o), 0);
  assert_int_not_equal(feed(up, longer, len + 1), 0);
  replicate_receiver_base_finish(up, &o);
  assert_int_equal(o.result, REPLICATE_RECV_BASE_TRAILING);
  free(longer);

  /* An announced length that is not the header's. */
  assert_int_equal(replicate_receiver_base_begin(fx->rx, len - 1, NULL, &up, &o), 0);
  assert_int_not_equal(feed(up, stream, len), 0);
  replicate_receiver_base_finish(up, &o);
  assert_int_equal(o.result, REPLICATE_RECV_BASE_LENGTH);

  /* A damaged header. */
  stream[5] ^= 1;
  assert_int_equal(replicate_receiver_base_begin(fx->rx, len, NULL, &up, &o), 0);
  assert_int_not_equal(feed(up, stream, len), 0);
  replicate_receiver_base_finish(up, &o);
  assert_int_equal(o.result, REPLICATE_RECV_BASE_HEADER);
  assert_int_not_equal(o.code, 0);
  stream[5] ^= 1;

  /* An image of another history: refused before any page is written. */
  loom_history theirs = fx->history;
  theirs.id[0] ^= 1;
  size_t other_len;
  uint8_t *other = image_stream(&fx->m, &theirs, &other_len);
  assert_int_equal(replicate_receiver_base_begin(fx->rx, other_len, NULL, &up, &o), 0);
  assert_int_not_equal(feed(up, other, other_len), 0);
  replicate_receiver_base_finish(up, &o);
  assert_int_equal(o.result, REPLICATE_RECV_DIVERGED);
  assert_int_equal(o.code, REPLICATE_EHISTORY);
  assert_int_equal(o.received.seq, 3);
  free(other);

  /* Abandoned halfway: the old image stays, frames go on. */
  assert_int_equal(replicate_receiver_base_begin(fx->rx, len, NULL, &up, &o), 0);
  assert_int_equal(feed(up, stream, len / 2), 0);
  replicate_receiver_base_abort(up);
  send_next(fx);
  wait_applied(fx, 4);
  free(stream);
  expect_store_is_model(fx);
}

/* A cluster node's rewind (replicate_receiver_allow_rewind): this node
 * holds epoch 1 up to seq 8; the leader was promoted to epoch 2 at seq 3.
 * Its base image is refused (past the branch) until the node allows a
 * rewind to epoch 2; then what lay past seq 3 is discarded and reported,
 * once. Another history stays refused even so. */
static void test_rewind(void **state)
{
  fixture *fx = *state;
  for (int i = 0; i < 3; i++)
    send_next(fx);
  model leader;
  model_copy(&leader, &fx->m);
  loom_branch branch = {.epoch = fx->m.epoch + 1, .seq = fx->m.seq,
                        .checksum = fx->m.checksum};
  leader.epoch = branch.epoch;
  for (int i = 0; i < 5; i++)
    send_next(fx); /* the old leader's commits 4..8 */
  wait_applied(fx, 8);
  for (int i = 0; i < 2; i++) {
    replicate_buf buf = {0};
    next_frame(fx, &leader, &buf); /* the new leader's 4..5 at epoch 2 */
    replicate_buf_free(&buf);
  }
  size_t len;
  uint8_t *stream = image_stream(&leader, &fx->history, &len);
  loom_lineage lineage;
  memset(&lineage, 0, sizeof lineage);
  lineage.history = fx->history;
  lineage.branch_count = 1;
  lineage.branches[0] = branch;
  loom_position pos = {.epoch = leader.epoch, .seq = leader.seq,
                       .checksum = leader.checksum, .pages = leader.pages,
                       .commit_time_ns = leader.time_ns};
  loom_stream_header_encode(stream, &pos, &lineage);

  replicate_receiver_base *up;
  replicate_recv_outcome o;
  assert_int_equal(replicate_receiver_base_begin(fx->rx, len, NULL, &up, &o), 0);
  assert_int_not_equal(feed(up, stream, len), 0);
  replicate_receiver_base_finish(up, &o);
  assert_int_equal(o.result, REPLICATE_RECV_DIVERGED);
  assert_int_equal(o.code, REPLICATE_EPAST_BRANCH);

  /* Another history is refused even with the permission. */
  replicate_receiver_allow_rewind(fx->rx, 2);
  loom_history theirs = fx->history;
  theirs.id[3] ^= 1;
  size_t other_len;
  uint8_t *other = image_stream(&leader, &theirs, &other_len);
  assert_int_equal(replicate_receiver_base_begin(fx->rx, other_len, NULL, &up, &o), 0);
  assert_int_not_equal(feed(up, other, other_len), 0);
  replicate_receiver_base_finish(up, &o);
  assert_int_equal(o.result, REPLICATE_RECV_DIVERGED);
  assert_int_equal(o.code, REPLICATE_EHISTORY);
  free(other);

  assert_int_equal(replicate_receiver_base_begin(fx->rx, len, NULL, &up, &o), 0);
  assert_int_equal(feed(up, stream, len), 0);
  replicate_receiver_base_finish(up, &o);
  assert_int_equal(o.result, REPLICATE_RECV_OK);
  assert_int_equal(o.applied.epoch, 2);
  assert_int_equal(o.applied.seq, 5);
  assert_int_equal(o.applied.checksum, leader.checksum);
  expect_told_is_status(fx); /* back from 8 to 5, at epoch 2 */
  replicate_receiver_status s;
  replicate_receiver_get_status(fx->rx, &s);
  assert_int_equal(s.rewound_frames, 5); /* seqs 4..8 of epoch 1 */
  assert_int_equal(s.rewound_from_seq, 8);
  assert_true(s.rewound_at_ns > 0);

  /* The new leader's frames follow from the image. */
  free(stream);
  model_free(&fx->m);
  fx->m = leader;
  replicate_buf next = {0};
  next_frame(fx, &fx->m, &next);
  assert_int_equal(send(fx, &next, &o), REPLICATE_RECV_OK);
  replicate_buf_free(&next);
  wait_applied(fx, 6);
  expect_store_is_model(fx);

  /* The positions ring forgot the discarded branch: seq 4 is the new
   * leader's now, or unknown, never the old epoch's. */
  replicate_receiver_close(fx->rx);
  fx->rx = NULL;
  loom_store *store;
  assert_int_equal(loom_store_open(fx->standby_dir, 0, NULL, &store), 0);
  uint64_t e, c;
  if (loom_store_checksum_at(store, 4, &e, &c))
    assert_int_equal(e, 2);
  assert_int_equal(loom_store_close(store), 0);
  assert_int_equal(open_receiver(fx, 10), 0);
}

/* ---------------------------------------------------------------------- */
/* Promotion */

static void test_promote(void **state)
{
  fixture *fx = *state;
  replicate_recv_outcome o;
  replicate_receiver_promote(fx->rx, false, &o);
  assert_int_equal(o.result, REPLICATE_RECV_PROMOTE_EMPTY);
  assert_false(o.promoted);

  for (int i = 0; i < 3; i++)
    send_next(fx);
  /* The primary says it is at 50: more than 10 (promote_max_lag) ahead. */
  replicate_buf hb = {0};
  heartbeat(fx, 50, &hb);
  assert_int_equal(send(fx, &hb, &o), REPLICATE_RECV_HEARTBEAT);
  replicate_receiver_promote(fx->rx, false, &o);
  assert_int_equal(o.result, REPLICATE_RECV_PROMOTE_BEHIND);
  assert_int_equal(o.primary_seq, 50);

  /* Forced: everything received is applied first, then a new epoch. */
  replicate_receiver_promote(fx->rx, true, &o);
  assert_int_equal(o.result, REPLICATE_RECV_OK);
  assert_true(o.promoted);
  assert_int_equal(o.applied.seq, 3);
  assert_int_equal(o.applied.epoch, fx->m.epoch + 1);
  assert_int_equal(o.received.seq, 3);
  assert_true(replicate_receiver_promoted(fx->rx));
  expect_told_is_status(fx); /* the same seq at the new epoch */

  replicate_receiver_promote(fx->rx, false, &o);
  assert_int_equal(o.result, REPLICATE_RECV_ALREADY_PRIMARY);
  /* The old primary is fenced: its frames are of an older epoch. */
  replicate_buf next = {0};
  next_frame(fx, &fx->m, &next);
  assert_int_equal(send(fx, &next, &o), REPLICATE_RECV_STALE_EPOCH);
  assert_int_equal(o.input_epoch, fx->m.epoch);
  assert_true(o.promoted);
  replicate_receiver_base *up;
  assert_int_equal(replicate_receiver_base_begin(fx->rx, UINT64_MAX, NULL, &up, &o),
                   EPERM);
  assert_int_equal(o.result, REPLICATE_RECV_PROMOTED);
  replicate_buf_free(&hb);
  replicate_buf_free(&next);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_in_order, setup, teardown),
      cmocka_unit_test_setup_teardown(test_readback_gathered, setup, teardown),
      cmocka_unit_test_setup_teardown(test_position_observer, setup, teardown),
      cmocka_unit_test_setup_teardown(test_malformed, setup, teardown),
      cmocka_unit_test_setup_teardown(test_gap, setup, teardown),
      cmocka_unit_test_setup_teardown(test_duplicate_and_heartbeat, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_divergence, setup, teardown),
      cmocka_unit_test_setup_teardown(test_coalesced, setup, teardown),
      cmocka_unit_test_setup_teardown(test_apply_delay, setup, teardown),
      cmocka_unit_test_setup_teardown(test_group_apply_fits_ring, setup, teardown),
      cmocka_unit_test_setup_teardown(test_on_received, setup, teardown),
      cmocka_unit_test_setup_teardown(test_receive_log_hold, setup, teardown),
      cmocka_unit_test_setup_teardown(test_base_image, setup, teardown),
      cmocka_unit_test_setup_teardown(test_base_refusals, setup, teardown),
      cmocka_unit_test_setup_teardown(test_promote, setup, teardown),
      cmocka_unit_test_setup_teardown(test_rewind, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
