/*
 * receiver_apply.c: the receiver's applier thread, group apply, the
 * classes of apply errors, coalesced frames and the rollback after a
 * failed apply. The design (GROUP APPLY, INVARIANTS, RECOVERY) is at the
 * top of receiver.c.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "array.h"
#include "clock.h"
#include "receiver_internal.h"

/* Frames applied between two trims of the receive log while busy. */
#define RETAIN_EVERY 256u

/* ---------------------------------------------------------------------- */
/* What an apply error means */

/* A poisoned store or log is fatal: after a failed fsync nothing in memory
 * can be trusted, so applies stop, the received frames stay in the receive
 * log (they were acknowledged), and a restart recovers (never an fsync
 * retried into silent loss). A system error before the commit point
 * (ENOSPC, ENOMEM) is worth a retry. Anything else says the frame itself
 * is bad: it is dropped and the primary resends. */
typedef enum apply_error_kind { APPLY_BAD_FRAME, APPLY_RETRY, APPLY_FATAL } apply_error_kind;

bool rx_is_fatal(int rc)
{
  return rc == LOOM_EPANIC || rc == REPLICATE_EPANIC;
}

static apply_error_kind apply_error_kind_of(int rc)
{
  if (rx_is_fatal(rc))
    return APPLY_FATAL;
  return rc > 0 && rc != EINVAL ? APPLY_RETRY : APPLY_BAD_FRAME;
}

void rx_set_fatal(replicate_receiver *rx, int rc)
{
  if (rx->fatal)
    return;
  rx->fatal = rc;
  rx_logf(rx, "standby: storage failed (%s): applies stopped at seq %llu; "
          "received frames up to seq %llu are kept in the receive log; restart "
          "to recover", replicate_strerror(rc), (unsigned long long)rx->applied.seq,
          (unsigned long long)rx->received.seq);
}

/* ---------------------------------------------------------------------- */
/* What this standby computed itself (DESIGN section 8) */

void rx_note_computed(replicate_receiver *rx, const loom_position *pos,
                      bool read_back, uint64_t checksum, uint64_t bad_page)
{
  if (rx->rot_page != UINT64_MAX)
    return; /* the image is known bad: the checksum found stays */
  rx->computed = *pos;
  if (!read_back)
    return;
  rx->computed.checksum = checksum;
  if (bad_page == UINT64_MAX && checksum == pos->checksum)
    return;
  rx->rot_page = bad_page;
  rx->readback_mismatches++;
  if (rx->on_bad_pages && bad_page != UINT64_MAX)
    rx->on_bad_pages(rx->bad_pages_ctx, &bad_page, 1);
  rx_logf(rx, "standby: %s at seq %llu: page %llu read back from the image "
          "does not match the hash it was written with; the image's checksum "
          "is %016llx, not %016llx",
          replicate_strerror(REPLICATE_EIMAGE_ROT), (unsigned long long)pos->seq,
          (unsigned long long)bad_page, (unsigned long long)checksum,
          (unsigned long long)pos->checksum);
}

/* READ-BACK, GATHERED. A read-back reads the image, so it waits for the
 * store's checkpoint to write the applied pages there; done before every
 * apply, it made each apply wait for the previous one's image writes and
 * two fsyncs. The pages of the applies since the last read-back gather
 * instead (each at most once), and are read back together at the newest
 * position once the checkpoint has caught up by itself, when the standby
 * is idle, or when RX_READBACK_MAX_NS have passed since the oldest of them
 * (or RX_READBACK_MAX_PAGES gathered): computed trails applied by at most
 * about that long under load. The checksum is the same proof: every page
 * written since the last read-back is read back and hashed, the others
 * were at theirs. */
#define RX_READBACK_MAX_NS (LOOM_NS_PER_S / 20) /* 50 ms */
#define RX_READBACK_MAX_PAGES 65536u

void rx_readback_defer(replicate_receiver *rx, const replicate_frame *frame,
                       const loom_position *pos)
{
  uint64_t n = frame->info.page_count;
  if (!rx->rb_pending) {
    rx->rb_len = 0;
    rx->rb_since_ns = rx_mono_ns();
  }
  rx->rb_pos = *pos;
  rx->rb_pending = true;
  if (rx->rb_len + n > rx->rb_cap) {
    size_t cap = (size_t)(rx->rb_len + n) * 2;
    uint64_t *v = realloc(rx->rb_pages, cap * sizeof *v);
    if (!v) {
      rx->rb_whole = true; /* these pages are not listed: read it all */
      return;
    }
    rx->rb_pages = v;
    rx->rb_cap = cap;
  }
  for (uint64_t i = 0; i < n; i++) {
    replicate_page p;
    replicate_frame_get_page(frame, i, &p);
    rx->rb_pages[rx->rb_len + i] = p.page_number;
  }
  rx->rb_len += (size_t)n;
}

/* Under store_mu, pending: read back now, or let more applies gather. */
static bool readback_due(replicate_receiver *rx)
{
  if (rx->rb_len >= RX_READBACK_MAX_PAGES ||
      rx_mono_ns() - rx->rb_since_ns >= RX_READBACK_MAX_NS)
    return true;
  return loom_store_queued(rx->store) == 0; /* caught up: no wait */
}

void rx_readback_flush(replicate_receiver *rx, rx_readback *out, bool now)
{
  out->done = false;
  out->bad_page = UINT64_MAX;
  if (!rx->rb_pending)
    return;
  loom_position pos;
  loom_store_position(rx->store, &pos);
  if (!loom_position_same(&pos, &rx->rb_pos)) {
    rx->rb_pending = false; /* a base image or a rewind came between */
    rx->rb_whole = false;
    return;
  }
  if (!now && !readback_due(rx))
    return; /* the next apply's pages join these */
  size_t unique = loom_sort_unique_u64(rx->rb_pages, rx->rb_len);
  rx->rb_len = unique;
  int rc = rx->rb_whole
               ? replicate_image_readback(rx->store, &out->checksum, &out->bad_page)
               : replicate_pages_readback(rx->store, rx->rb_pages, unique,
                                          &out->checksum, &out->bad_page);
  if (rc) {
    /* Kept: read back with the next apply's (at a later position each
     * page is still checked against its hash there). */
    rx_logf(rx, "standby: reading back applied pages: %s", replicate_strerror(rc));
    return;
  }
  rx->rb_pending = false;
  rx->rb_whole = false;
  out->done = true;
  out->pos = pos;
}

void rx_note_readback(replicate_receiver *rx, const rx_readback *rb)
{
  if (rb->done)
    rx_note_computed(rx, &rb->pos, true, rb->checksum, rb->bad_page);
}

/* ---------------------------------------------------------------------- */
/* Rollback and draining */

void rx_rollback(replicate_receiver *rx)
{
  pthread_mutex_lock(&rx->mu);
  bool failed = rx->apply_failed;
  pthread_mutex_unlock(&rx->mu);
  if (!failed)
    return;
  /* The applier is stopped (apply_failed), so the log is ours. */
  rx_log_reset(rx);
  pthread_mutex_lock(&rx->mu);
  rx_logf(rx, "standby: received frames %llu..%llu dropped after a failed "
          "apply; back at seq %llu", (unsigned long long)rx->applied.seq + 1,
          (unsigned long long)rx->received.seq,
          (unsigned long long)rx->applied.seq);
  rx->received = rx->applied;
  rx_positions_moved(rx);
  rx_pending_clear(rx);
  rx->apply_failed = false;
  pthread_cond_broadcast(&rx->cond);
  pthread_mutex_unlock(&rx->mu);
}

bool rx_wait_applied(replicate_receiver *rx)
{
  while (!rx->apply_failed &&
         (rx->applier_busy || rx->applied.seq < rx->received.seq))
    pthread_cond_wait(&rx->cond, &rx->mu);
  return rx->apply_failed;
}

/* ---------------------------------------------------------------------- */
/* Group apply */

/* Read frame seq from the receive log and decode it into apply_dec. */
static int applier_read(replicate_receiver *rx, uint64_t seq,
                        replicate_buf *buf, replicate_frame *frame)
{
  int rc = replicate_log_read(rx->log, seq, buf);
  if (rc == 0)
    rc = replicate_frame_decode(rx->apply_dec, buf->data, buf->len, frame);
  return rc;
}

static bool follows(const replicate_frame_info *prev,
                    const replicate_frame_info *more)
{
  return more->epoch == prev->epoch &&
         loom_position_same(&more->before, &prev->after);
}

/* The next thing to apply: frame next alone, or frames next..*through
 * (through <= last, the received position) merged into one. Errors are
 * those of frame next. */
static int applier_take(replicate_receiver *rx, uint64_t next, uint64_t last,
                        replicate_buf *buf, replicate_frame *frame,
                        uint64_t *through)
{
  *through = next;
  int rc = applier_read(rx, next, buf, frame);
  if (rc || last == next || next <= rx->single_through ||
      frame->info.page_count > rx->apply_merge_pages ||
      replicate_coalescer_add(rx->apply_merge, frame) != 0)
    return rc;
  replicate_frame_info prev = frame->info;
  for (uint64_t seq = next + 1;
       seq <= last && seq - next < RX_APPLY_MERGE_FRAMES; seq++) {
    replicate_frame more;
    if (applier_read(rx, seq, buf, &more) != 0 || !follows(&prev, &more.info) ||
        replicate_coalescer_pages(rx->apply_merge) + more.info.page_count >
            rx->apply_merge_pages)
      break; /* left for the next round, which reports its error */
    if (replicate_coalescer_add(rx->apply_merge, &more) != 0)
      return applier_read(rx, next, buf, frame); /* the merge is empty again */
    prev = more.info;
    *through = seq;
  }
  rc = replicate_coalescer_finish_frame(rx->apply_merge, rx->apply_dec, frame);
  if (rc) {
    /* Over the limits (the zero pages a shrink adds are not counted
     * above): take the frames one at a time up to there. */
    rx->single_through = *through;
    *through = next;
    return applier_read(rx, next, buf, frame);
  }
  return 0;
}

/* ---------------------------------------------------------------------- */
/* The applier thread */

/* Under mu, idle: make the image file current and trim the log. */
static void applier_idle_sync(replicate_receiver *rx)
{
  rx->need_sync = false;
  rx->applier_busy = true;
  uint64_t keep_from = rx->applied.seq + 1;
  pthread_mutex_unlock(&rx->mu);
  rx_readback rb;
  pthread_mutex_lock(&rx->store_mu);
  int rc = loom_store_sync(rx->store);
  rx_readback_flush(rx, &rb, true);
  pthread_mutex_unlock(&rx->store_mu);
  if (rc)
    rx_logf(rx, "standby: syncing the image: %s", loom_strerror(rc));
  rc = replicate_log_retain(rx->log, keep_from);
  if (rc)
    rx_logf(rx, "standby: trimming the receive log: %s",
            replicate_strerror(rc));
  pthread_mutex_lock(&rx->mu);
  rx_note_readback(rx, &rb);
  rx->applier_busy = false;
  pthread_cond_broadcast(&rx->cond);
}

/* Under mu, idle with need_sync: sync once no frame came for
 * RX_IDLE_SYNC_NS (the store's checkpoint thread lets records gather as
 * long), else shorten *wait_ns to when it will be due. Syncing as soon
 * as the applier ran out of frames made every frame of a standby that
 * keeps up pay a checkpoint: the image's writes and two fsyncs. */
#define RX_IDLE_SYNC_NS (LOOM_NS_PER_S / 50) /* 20 ms */

static bool idle_sync_due(replicate_receiver *rx, int64_t *wait_ns)
{
  int64_t left = rx->need_sync_ns + RX_IDLE_SYNC_NS - rx_mono_ns();
  if (left <= 0)
    return true;
  if (*wait_ns <= 0 || left < *wait_ns)
    *wait_ns = left;
  return false;
}

/* Under mu: applied moved to pos (rc 0, or REPLICATE_EDUPLICATE). */
static void applier_applied(replicate_receiver *rx, int rc,
                            const loom_position *pos, uint64_t applied_before,
                            unsigned *since_retain)
{
  rx->applied = *pos;
  rx_positions_moved(rx);
  rx_pending_pop_through(rx, pos->seq);
  if (rc == 0 && pos->seq > applied_before) {
    rx->frames_applied += pos->seq - applied_before;
    rx->apply_commits++;
  }
  rx->need_sync = true;
  rx->need_sync_ns = rx_mono_ns();
  *since_retain += (unsigned)(pos->seq - applied_before);
  if (*since_retain >= RETAIN_EVERY) {
    *since_retain = 0;
    pthread_mutex_unlock(&rx->mu);
    replicate_log_retain(rx->log, pos->seq + 1);
    pthread_mutex_lock(&rx->mu);
  }
}

/* Under mu: a second, whatever else wakes the applier meanwhile (each
 * received frame does): no retry storm on a full disk. */
static void applier_back_off(replicate_receiver *rx)
{
  int64_t until_ns = loom_mono_ns() + LOOM_NS_PER_S;
  struct timespec until = {.tv_sec = (time_t)(until_ns / LOOM_NS_PER_S),
                           .tv_nsec = (long)(until_ns % LOOM_NS_PER_S)};
  do
    pthread_cond_timedwait(&rx->cond, &rx->mu, &until); /* CLOCK_MONOTONIC */
  while (!rx->stopping && loom_mono_ns() < until_ns);
}

/* Under mu: applying frame next failed with rc. Returns false when the
 * applier must end. */
static bool applier_failed(replicate_receiver *rx, int rc, uint64_t next)
{
  rx->last_apply_error = rc;
  rx->last_apply_error_at_ns = rx_now_ns(rx);
  rx->apply_failures++;
  rx_logf(rx, "standby: applying frame %llu: %s", (unsigned long long)next,
          replicate_strerror(rc));
  switch (apply_error_kind_of(rc)) {
  case APPLY_FATAL:
    rx_set_fatal(rx, rc);
    return true;
  case APPLY_RETRY:
    if (!rx->stopping) {
      applier_back_off(rx);
      return true;
    }
    /* Stopping: leave the frames in the receive log for the restart
     * (trying again at once would spin until the disk has room). */
    pthread_cond_broadcast(&rx->cond);
    return false;
  case APPLY_BAD_FRAME:
    /* The frame is bad (or we are stopping and cannot apply it): stop
     * until receipt rolls back to applied. */
    rx->apply_failed = true;
    return true;
  }
  return true;
}

/* Under store_mu: a frame whose before matched did not rebuild (rc): which
 * of its pages no longer match their recorded hashes on disk (bit rot),
 * into bad (at most REPLICATE_PAGES_MAX). */
static uint64_t rotted_pages(replicate_receiver *rx, const replicate_frame *frame, int rc,
                             uint64_t *bad)
{
  if (rc != REPLICATE_EPAGE_HASH && rc != REPLICATE_EAFTER_CHECKSUM)
    return 0;
  loom_position pos;
  loom_store_position(rx->store, &pos);
  uint64_t n = 0;
  for (uint64_t i = 0; i < frame->info.page_count && n < REPLICATE_PAGES_MAX; i++) {
    replicate_page p;
    replicate_frame_get_page(frame, i, &p);
    uint64_t checksum, first_bad = UINT64_MAX;
    if (p.page_number < pos.pages &&
        replicate_pages_readback(rx->store, &p.page_number, 1, &checksum, &first_bad) == 0 &&
        first_bad != UINT64_MAX)
      bad[n++] = p.page_number;
  }
  return n;
}

/* Under mu, with work to do: one apply (a frame, or frames merged).
 * Returns false when the applier must end. */
static bool applier_round(replicate_receiver *rx, replicate_buf *buf,
                          unsigned *since_retain, uint64_t last)
{
  uint64_t next = rx->applied.seq + 1;
  uint64_t applied_before = rx->applied.seq;
  rx->applier_busy = true;
  pthread_mutex_unlock(&rx->mu);

  replicate_frame frame;
  loom_position pos;
  uint64_t merged_through = next;
  int64_t start_ns = rx_mono_ns();
  int rc = applier_take(rx, next, last, buf, &frame, &merged_through);
  rx_readback rb;
  pthread_mutex_lock(&rx->store_mu);
  rx_readback_flush(rx, &rb, false); /* the previous applies' pages */
  bool taken = rc == 0;
  if (rc == 0)
    rc = replicate_frame_apply(&frame, rx->store);
  loom_store_position(rx->store, &pos);
  if (rc == 0)
    rx_readback_defer(rx, &frame, &pos);
  uint64_t bad[REPLICATE_PAGES_MAX];
  uint64_t nbad = taken && rx->on_bad_pages ? rotted_pages(rx, &frame, rc, bad) : 0;
  pthread_mutex_unlock(&rx->store_mu);
  if (rc != 0 && merged_through > next &&
      apply_error_kind_of(rc) == APPLY_BAD_FRAME) {
    /* Which of the merged frames is bad? Take them one at a time. */
    rx->single_through = merged_through;
    pthread_mutex_lock(&rx->mu);
    rx_note_readback(rx, &rb);
    rx->applier_busy = false;
    pthread_cond_broadcast(&rx->cond); /* a base upload may wait for it */
    return true;
  }

  double took = (double)(rx_mono_ns() - start_ns) / 1e9;
  pthread_mutex_lock(&rx->mu);
  if (nbad) {
    rx_logf(rx, "standby: frame %llu no longer applies: %llu of its pages (first %llu) "
            "do not match their recorded hashes on disk; repairing them",
            (unsigned long long)next, (unsigned long long)nbad, (unsigned long long)bad[0]);
    rx->on_bad_pages(rx->bad_pages_ctx, bad, nbad);
  }
  rx_note_readback(rx, &rb);
  rx->applier_busy = false;
  bool go_on = true;
  if (rc == 0)
    replicate_duration_observe(&rx->apply_durations, took);
  if (rc == 0 || rc == REPLICATE_EDUPLICATE)
    applier_applied(rx, rc, &pos, applied_before, since_retain);
  else
    go_on = applier_failed(rx, rc, next);
  pthread_cond_broadcast(&rx->cond);
  return go_on;
}

void *rx_applier_main(void *arg)
{
  replicate_receiver *rx = arg;
  replicate_buf buf = {0};
  unsigned since_retain = 0; /* frames applied since the last trim */

  pthread_mutex_lock(&rx->mu);
  for (;;) {
    int64_t wait_ns; /* a delayed standby: until the next frame is due */
    uint64_t limit = rx_apply_limit(rx, &wait_ns);
    bool work = !rx->base_active && !rx->apply_failed && !rx->fatal &&
                !rx->promoted && rx->applied.seq < limit;
    if (work) {
      if (!applier_round(rx, &buf, &since_retain, limit))
        break;
    } else if (rx->need_sync && !rx->base_active &&
               (rx->stopping || idle_sync_due(rx, &wait_ns))) {
      applier_idle_sync(rx);
      since_retain = 0;
    } else if (rx->stopping) {
      break; /* a delayed standby leaves what is not due in the log */
    } else if (wait_ns > 0) {
      struct timespec until = loom_deadline(CLOCK_MONOTONIC, wait_ns);
      pthread_cond_timedwait(&rx->cond, &rx->mu, &until);
    } else {
      pthread_cond_wait(&rx->cond, &rx->mu);
    }
  }
  pthread_mutex_unlock(&rx->mu);
  replicate_buf_free(&buf);
  return NULL;
}

/* ---------------------------------------------------------------------- */
/* A coalesced frame: drain the applier, apply it here, reset the log */

/* Under mu: what the apply of a coalesced frame (rc) came to. */
static void coalesced_outcome(replicate_receiver *rx,
                              const replicate_frame *frame, size_t len, int rc,
                              const loom_position *pos,
                              replicate_recv_outcome *out)
{
  replicate_recv_result r;
  if (rc == 0 || rc == REPLICATE_EDUPLICATE) {
    rx->applied = *pos;
    rx->received = *pos;
    rx_positions_moved(rx);
    rx_pending_clear(rx);
    rx->need_sync = true;
    rx->need_sync_ns = rx_mono_ns();
    if (rc == 0) {
      rx->frames_received++;
      rx->frames_applied++;
      rx->apply_commits++;
      rx->bytes_received += len;
    } else {
      rx->duplicates++;
    }
    pthread_cond_broadcast(&rx->cond);
    r = rc == 0 ? REPLICATE_RECV_OK : REPLICATE_RECV_DUPLICATE;
  } else if (replicate_is_divergence(rc)) {
    rx_note_divergence(rx, rc, &frame->info.history);
    r = REPLICATE_RECV_DIVERGED;
  } else if (rc == REPLICATE_ESTALE_EPOCH) {
    r = REPLICATE_RECV_APPLY_STALE_EPOCH;
  } else if (rc == REPLICATE_EPOSITION) {
    r = REPLICATE_RECV_APPLY_GAP;
  } else if (rx_is_disk_full(rc)) {
    r = REPLICATE_RECV_APPLY_DISK_FULL;
  } else if (apply_error_kind_of(rc) == APPLY_FATAL) {
    rx_set_fatal(rx, rc);
    r = REPLICATE_RECV_APPLY_STORAGE_FAILED;
  } else {
    r = rc > 0 ? REPLICATE_RECV_APPLY_FAILED : REPLICATE_RECV_APPLY_REFUSED;
  }
  rx_outcome(rx, r, r == REPLICATE_RECV_OK || r == REPLICATE_RECV_DUPLICATE
                        ? 0 : rc, out);
}

void rx_apply_coalesced(replicate_receiver *rx, const replicate_frame *frame,
                        size_t len, replicate_recv_outcome *out)
{
  pthread_mutex_lock(&rx->mu);
  bool failed = rx_wait_applied(rx);
  pthread_mutex_unlock(&rx->mu);
  if (failed) {
    rx_rollback(rx);
    pthread_mutex_lock(&rx->mu);
    rx_outcome(rx, REPLICATE_RECV_APPLY_STOPPED,
               rx->last_apply_error ? rx->last_apply_error
                                    : REPLICATE_EAFTER_CHECKSUM, out);
    pthread_mutex_unlock(&rx->mu);
    return;
  }

  loom_position pos;
  rx_readback rb;
  pthread_mutex_lock(&rx->store_mu);
  rx_readback_flush(rx, &rb, false);
  int rc = replicate_frame_apply(frame, rx->store);
  loom_store_position(rx->store, &pos);
  if (rc == 0)
    rx_readback_defer(rx, frame, &pos);
  pthread_mutex_unlock(&rx->store_mu);
  if (rc == 0)
    rx_log_reset(rx); /* the log's chain is broken by the merged frame */

  pthread_mutex_lock(&rx->mu);
  rx_note_readback(rx, &rb);
  coalesced_outcome(rx, frame, len, rc, &pos, out);
  pthread_mutex_unlock(&rx->mu);
}
