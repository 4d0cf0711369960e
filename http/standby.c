/*
 * standby.c: the standby side of replication.
 *
 * DESIGN
 *
 * A standby owns an image directory: its loom_store, a *receive log* (a
 * replicate_log in DIR/replog/) and an *applier thread*. The primary posts
 * frames; each is handled in four steps:
 *
 *   1. decode strictly (replicate_frame_decode): 400, or 413 for a frame
 *      over the limits;
 *   2. place it against the received position: a heartbeat only updates
 *      what we know of the primary; a frame of an older epoch is refused
 *      (409 stale epoch); one already received is answered 200 and changes
 *      nothing; one whose before is not the received position is refused
 *      (409, with our positions, so the primary resends from there);
 *   3. append it to the receive log, durably (507 when the disk is full;
 *      the log undoes a partial record, so nothing received before is
 *      lost); the received position moves to its after;
 *   4. answer 200 with {received, applied}; the applier thread then reads
 *      it back from the log, applies it with replicate_frame_apply(), and
 *      trims the log (replicate_log_retain) behind the applied position.
 *
 * GROUP APPLY. When several frames wait in the receive log, the applier
 * merges them (replicate_coalescer_finish_frame, up to APPLY_MERGE_FRAMES
 * frames and APPLY_MERGE_PAGES distinct pages) and applies them as one
 * commit: one patch, one image and one meta fsync for all of them, so a
 * standby that falls behind catches up faster instead of falling further
 * behind. The store is opened with LOOM_APPLY_ASYNC: a commit returns at
 * its commit point (the patch durable: recovery re-applies it) and the
 * image is written while the next frames are merged; reads wait for it.
 * If a merged apply fails (not for lack of space or storage), the frames
 * it held are applied one at a time, so the bad one is found and dropped
 * as below.
 *
 * A coalesced frame (several commits merged, sent to a standby far behind)
 * cannot go in the receive log (replicate_log_append takes single commits):
 * it is applied at once instead, after the applier has drained, and the
 * receive log is reset behind it; it is answered once applied.
 *
 * INVARIANTS (under mu)
 *
 *   I1. applied is the store's committed position; received.seq >=
 *       applied.seq, and every frame in (applied.seq, received.seq] is in
 *       the receive log, in order.
 *   I2. pending holds (seq, first commit time, bytes) of exactly those
 *       frames, oldest first: lag in seconds and bytes come from it.
 *   I3. While base_active, the applier starts no apply and frames are
 *       answered 503; the base upload is the only user of the store.
 *   I4. After promotion the receive log is empty, received == applied, and
 *       every frame is refused.
 *
 * RECOVERY (http_standby_open)
 *
 * received is the newest frame in the receive log when it is newer than
 * the store's position, else the store's position (and a log that does not
 * connect to the store is reset). The applier then catches up.
 *
 * A frame that fails to apply (its pages do not give its after checksum, or
 * the log cannot read it back) stops the applier (apply_failed). The next
 * frame received, or a promotion, rolls received back to applied and
 * resets the receive log: the primary is answered 409 and resends.
 *
 * PRIMARY'S CLOCK (DESIGN.md section 4). Lag in seconds is measured on one
 * clock, the primary's: commit times come from it, so "now" does too: the
 * primary's time in its last heartbeat (made as it was sent), or in a
 * commit frame when that is later than the estimate, plus our monotonic
 * time since it arrived. Our own realtime clock is used only before any
 * frame arrived. clock_skew_seconds estimates how far our clock is from the
 * primary's: the least (our realtime at arrival - the primary's time in the
 * frame) over the last SKEW_SAMPLES frames and heartbeats; the network
 * delay, and a commit frame's wait before it was sent, only add to a
 * sample, so the least is the closest.
 *
 * Locks: recv_mu serialises receipt (frames, base begin, promotion);
 * store_mu guards the store (one thread at a time, loom.h); mu guards the
 * state below and pairs with cond. Order: recv_mu, store_mu, mu. No lock is
 * held across an HTTP callback boundary.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "standby.h"

#define SKEW_SAMPLES 32

/* The primary's clock as seen from here (PRIMARY'S CLOCK). Under mu. */
typedef struct primary_clock {
  bool known;
  int64_t primary_ns;         /* a time on the primary's clock */
  int64_t mono_ns;            /* our CLOCK_MONOTONIC when it arrived */
  int64_t skew_ns[SKEW_SAMPLES]; /* our realtime minus the primary's time */
  unsigned skew_len, skew_next;
} primary_clock;

typedef struct pending_frame {
  uint64_t seq;               /* its after.seq */
  int64_t commit_ns;          /* its first commit's time */
  uint64_t bytes;             /* the frame's size */
} pending_frame;

struct http_standby {
  const http_logger *logger;
  const struct loom_io *io;
  char *dir;
  replicate_limits limits;
  uint64_t max_unapplied_bytes;

  loom_store *store;          /* store_mu */
  replicate_log *log;         /* its own lock; appends under recv_mu */
  replicate_decoder *recv_dec;/* recv_mu */
  replicate_decoder *apply_dec; /* the applier thread */
  replicate_coalescer *apply_merge; /* the applier thread: group apply */
  uint64_t single_through;    /* the applier thread: apply frames up to
                                 this seq one at a time (a merged apply
                                 failed: find the culprit) */
  pthread_t applier;
  bool applier_started;

  pthread_mutex_t recv_mu;
  pthread_mutex_t store_mu;
  pthread_mutex_t mu;
  pthread_cond_t cond;

  /* mu: */
  loom_position received;
  loom_position applied;
  loom_lineage lineage;       /* the history followed (none: holds nothing
                                 yet, and the store adopts the first one
                                 it applies) */
  int diverged;               /* last refusal as backwards or sideways */
  int64_t diverged_at_ns, diverged_mono_ns;
  uint64_t divergences;
  uint64_t promote_max_lag;
  pending_frame *pending;     /* a ring */
  size_t pending_head, pending_len, pending_cap;
  uint64_t pending_bytes;
  uint64_t primary_epoch;
  uint64_t primary_seq;
  int64_t primary_commit_ns;
  int64_t last_contact_ns;
  primary_clock clock;
  bool promoted;
  int64_t promoted_at_ns;
  bool base_active;
  bool applier_busy;
  bool stopping;
  bool apply_failed;
  int fatal;                  /* storage failed (store or log poisoned): no
                                 more applies; received frames are kept and
                                 a restart recovers */
  bool need_sync;
  int last_apply_error;
  int64_t last_apply_error_at_ns;
  unsigned snapshots_open;
  uint64_t frames_received, frames_applied, apply_commits, duplicates,
      heartbeats, bases;
  uint64_t bytes_received, apply_failures;
};

struct http_base_upload {
  http_standby *sb;
  loom_patch *patch;
  uint64_t content_length;
  uint8_t header[LOOM_STREAM_HEADER];
  size_t header_len;
  loom_position target;
  uint8_t *page;              /* one page being filled */
  size_t page_fill;
  uint64_t pages_added;
  bool refused;
  http_reply refusal;
};

/* ---------------------------------------------------------------------- */
/* The primary's clock (PRIMARY'S CLOCK) */

/* The primary's time now, on its clock; our realtime when not known. */
static int64_t primary_clock_now(const primary_clock *c)
{
  if (!c->known)
    return http_now_ns();
  return c->primary_ns + (http_monotonic_ns() - c->mono_ns);
}

/* A frame or heartbeat from the primary just arrived. */
static void primary_clock_note(primary_clock *c, const replicate_frame_info *info)
{
  bool heartbeat = info->kind == REPLICATE_KIND_HEARTBEAT;
  int64_t sent_ns = heartbeat ? info->heartbeat_time_ns : info->commit_time_ns;
  if (sent_ns <= 0)
    return;
  /* A heartbeat is made as it is sent: it resets the estimate (the
   * primary's clock may have been stepped back); a commit frame may have
   * waited, so it only moves the estimate forward. */
  if (heartbeat || !c->known || sent_ns > primary_clock_now(c)) {
    c->primary_ns = sent_ns;
    c->mono_ns = http_monotonic_ns();
    c->known = true;
  }
  c->skew_ns[c->skew_next] = http_now_ns() - sent_ns;
  c->skew_next = (c->skew_next + 1) % SKEW_SAMPLES;
  if (c->skew_len < SKEW_SAMPLES)
    c->skew_len++;
}

/* Our clock minus the primary's, estimated; false before any sample. */
static bool primary_clock_skew(const primary_clock *c, double *seconds)
{
  if (c->skew_len == 0)
    return false;
  int64_t least = c->skew_ns[0];
  for (unsigned i = 1; i < c->skew_len; i++)
    if (c->skew_ns[i] < least)
      least = c->skew_ns[i];
  *seconds = (double)least / 1e9;
  return true;
}

/* ---------------------------------------------------------------------- */
/* Small helpers */

static bool same_point(const replicate_point *p, const loom_position *pos)
{
  return p->seq == pos->seq && p->checksum == pos->checksum &&
         p->pages == pos->pages;
}

static void point_json(json_writer *w, const char *key,
                       const loom_position *pos)
{
  json_key(w, key);
  http_json_position(w, pos);
}

/* {"received": ..., "applied": ..., "epoch", "history"} keys of the
 * current positions. Under mu. */
static void positions_json(http_standby *sb, json_writer *w)
{
  point_json(w, "received", &sb->received);
  point_json(w, "applied", &sb->applied);
  json_key(w, "epoch");
  json_uint(w, sb->received.epoch);
  http_json_history(w, &sb->lineage.history);
}

static int pending_push(http_standby *sb, uint64_t seq, int64_t commit_ns,
                        uint64_t bytes)
{
  if (sb->pending_len == sb->pending_cap) {
    size_t cap = sb->pending_cap ? sb->pending_cap * 2 : 64;
    pending_frame *ring = malloc(cap * sizeof *ring);
    if (!ring)
      return ENOMEM;
    for (size_t i = 0; i < sb->pending_len; i++)
      ring[i] = sb->pending[(sb->pending_head + i) % sb->pending_cap];
    free(sb->pending);
    sb->pending = ring;
    sb->pending_cap = cap;
    sb->pending_head = 0;
  }
  size_t tail = (sb->pending_head + sb->pending_len) % sb->pending_cap;
  sb->pending[tail] = (pending_frame){seq, commit_ns, bytes};
  sb->pending_len++;
  sb->pending_bytes += bytes;
  return 0;
}

/* Drop the pending frames up to seq (applied). */
static void pending_pop_through(http_standby *sb, uint64_t seq)
{
  while (sb->pending_len &&
         sb->pending[sb->pending_head].seq <= seq) {
    sb->pending_bytes -= sb->pending[sb->pending_head].bytes;
    sb->pending_head = (sb->pending_head + 1) % sb->pending_cap;
    sb->pending_len--;
  }
}

static void pending_clear(http_standby *sb)
{
  sb->pending_head = 0;
  sb->pending_len = 0;
  sb->pending_bytes = 0;
}

static loom_position position_of(const replicate_frame_info *info)
{
  return (loom_position){
      .epoch = info->epoch,
      .seq = info->after.seq,
      .checksum = info->after.checksum,
      .pages = info->after.pages,
      .commit_time_ns = info->commit_time_ns,
  };
}

static bool is_disk_full(int rc)
{
  return rc == ENOSPC || rc == EDQUOT || rc == EFBIG;
}

/* Under recv_mu: forget the frames past applied after an apply failed.
 * The applier is stopped (apply_failed) so the log is ours. */
static void rollback_under_recv(http_standby *sb)
{
  pthread_mutex_lock(&sb->mu);
  bool failed = sb->apply_failed;
  pthread_mutex_unlock(&sb->mu);
  if (!failed)
    return;
  int rc = replicate_log_reset(sb->log);
  if (rc)
    http_logf(sb->logger, "standby: resetting the receive log: %s",
              replicate_strerror(rc));
  pthread_mutex_lock(&sb->mu);
  http_logf(sb->logger,
            "standby: received frames %llu..%llu dropped after a failed "
            "apply; back at seq %llu",
            (unsigned long long)sb->applied.seq + 1,
            (unsigned long long)sb->received.seq,
            (unsigned long long)sb->applied.seq);
  sb->received = sb->applied;
  pending_clear(sb);
  sb->apply_failed = false;
  pthread_cond_broadcast(&sb->cond);
  pthread_mutex_unlock(&sb->mu);
}

/* ---------------------------------------------------------------------- */
/* The applier thread */

/* What an apply error means. A poisoned store or log is fatal: after a
 * failed fsync nothing in memory can be trusted, so applies stop, the
 * received frames stay in the receive log (they were acknowledged), and a
 * restart recovers (never an fsync retried into silent loss). A system
 * error before the commit point (ENOSPC, ENOMEM) is worth a retry. Anything
 * else says the frame itself is bad: it is dropped and the primary resends. */
typedef enum apply_error_kind { APPLY_BAD_FRAME, APPLY_RETRY, APPLY_FATAL } apply_error_kind;

static apply_error_kind apply_error_kind_of(int rc)
{
  if (rc == LOOM_EPANIC || rc == REPLICATE_EPANIC)
    return APPLY_FATAL;
  return rc > 0 && rc != EINVAL ? APPLY_RETRY : APPLY_BAD_FRAME;
}

/* Under mu: storage failed; say it once. */
static void set_fatal(http_standby *sb, int rc)
{
  if (sb->fatal)
    return;
  sb->fatal = rc;
  http_logf(sb->logger, "standby: storage failed (%s): applies stopped at seq %llu; "
            "received frames up to seq %llu are kept in the receive log; restart "
            "to recover", replicate_strerror(rc), (unsigned long long)sb->applied.seq,
            (unsigned long long)sb->received.seq);
}

/* Group apply bounds: frames merged into one commit, and their distinct
 * pages (the merge holds LOOM_PAGE_SIZE bytes per page, twice). */
#define NS_PER_S INT64_C(1000000000)
#define DIVERGED_HOLD_NS (10 * NS_PER_S)
#define APPLY_MERGE_FRAMES 256u
#define APPLY_MERGE_PAGES 2048u

/* Read frame seq from the receive log and decode it into apply_dec. */
static int applier_read(http_standby *sb, uint64_t seq, replicate_buf *buf,
                        replicate_frame *frame)
{
  int rc = replicate_log_read(sb->log, seq, buf);
  if (rc == 0)
    rc = replicate_frame_decode(sb->apply_dec, buf->data, buf->len, frame);
  return rc;
}

/* The next thing to apply: frame next alone, or frames next..*through
 * (through <= last, the received position) merged into one. Errors are
 * those of frame next. */
static int applier_take(http_standby *sb, uint64_t next, uint64_t last,
                        replicate_buf *buf, replicate_frame *frame,
                        uint64_t *through)
{
  *through = next;
  int rc = applier_read(sb, next, buf, frame);
  if (rc || last == next || next <= sb->single_through ||
      frame->info.page_count > APPLY_MERGE_PAGES ||
      replicate_coalescer_add(sb->apply_merge, frame) != 0)
    return rc;
  replicate_frame_info prev = frame->info;
  for (uint64_t seq = next + 1; seq <= last && seq - next < APPLY_MERGE_FRAMES;
       seq++) {
    replicate_frame more;
    if (applier_read(sb, seq, buf, &more) != 0 ||
        more.info.epoch != prev.epoch || more.info.before.seq != prev.after.seq ||
        more.info.before.checksum != prev.after.checksum ||
        more.info.before.pages != prev.after.pages ||
        replicate_coalescer_pages(sb->apply_merge) + more.info.page_count >
            APPLY_MERGE_PAGES)
      break; /* left for the next round, which reports its error */
    if (replicate_coalescer_add(sb->apply_merge, &more) != 0)
      return applier_read(sb, next, buf, frame); /* the merge is empty again */
    prev = more.info;
    *through = seq;
  }
  rc = replicate_coalescer_finish_frame(sb->apply_merge, sb->apply_dec, frame);
  if (rc) {
    /* Over the limits (the zero pages a shrink adds are not counted
     * above): take the frames one at a time up to there. */
    sb->single_through = *through;
    *through = next;
    return applier_read(sb, next, buf, frame);
  }
  return 0;
}

static void *applier_main(void *arg)
{
  http_standby *sb = arg;
  replicate_buf buf = {0};
  unsigned since_retain = 0; /* frames applied since the last trim */

  pthread_mutex_lock(&sb->mu);
  for (;;) {
    bool work = !sb->base_active && !sb->apply_failed && !sb->fatal &&
                !sb->promoted && sb->applied.seq < sb->received.seq;
    if (!work) {
      if (sb->need_sync && !sb->base_active) {
        /* Idle: make the image file current and trim the log. */
        sb->need_sync = false;
        sb->applier_busy = true;
        uint64_t keep_from = sb->applied.seq + 1;
        pthread_mutex_unlock(&sb->mu);
        pthread_mutex_lock(&sb->store_mu);
        int rc = loom_store_sync(sb->store);
        pthread_mutex_unlock(&sb->store_mu);
        if (rc)
          http_logf(sb->logger, "standby: syncing the image: %s",
                    loom_strerror(rc));
        rc = replicate_log_retain(sb->log, keep_from);
        if (rc)
          http_logf(sb->logger, "standby: trimming the receive log: %s",
                    replicate_strerror(rc));
        since_retain = 0;
        pthread_mutex_lock(&sb->mu);
        sb->applier_busy = false;
        pthread_cond_broadcast(&sb->cond);
        continue;
      }
      if (sb->stopping)
        break;
      pthread_cond_wait(&sb->cond, &sb->mu);
      continue;
    }

    uint64_t next = sb->applied.seq + 1;
    uint64_t last = sb->received.seq;
    uint64_t applied_before = sb->applied.seq;
    sb->applier_busy = true;
    pthread_mutex_unlock(&sb->mu);

    replicate_frame frame;
    loom_position pos;
    uint64_t merged_through = next;
    int rc = applier_take(sb, next, last, &buf, &frame, &merged_through);
    pthread_mutex_lock(&sb->store_mu);
    if (rc == 0)
      rc = replicate_frame_apply(&frame, sb->store);
    loom_store_position(sb->store, &pos);
    pthread_mutex_unlock(&sb->store_mu);
    if (rc != 0 && merged_through > next &&
        apply_error_kind_of(rc) == APPLY_BAD_FRAME) {
      /* Which of the merged frames is bad? Take them one at a time. */
      sb->single_through = merged_through;
      pthread_mutex_lock(&sb->mu);
      sb->applier_busy = false;
      pthread_cond_broadcast(&sb->cond); /* a base upload may wait for it */
      continue;
    }

    pthread_mutex_lock(&sb->mu);
    sb->applier_busy = false;
    if (rc == 0 || rc == REPLICATE_EDUPLICATE) {
      sb->applied = pos;
      pending_pop_through(sb, pos.seq);
      if (rc == 0 && pos.seq > applied_before) {
        sb->frames_applied += pos.seq - applied_before;
        sb->apply_commits++;
      }
      sb->need_sync = true;
      since_retain += (unsigned)(pos.seq - applied_before);
      if (since_retain >= 256) {
        since_retain = 0;
        pthread_mutex_unlock(&sb->mu);
        replicate_log_retain(sb->log, pos.seq + 1);
        pthread_mutex_lock(&sb->mu);
      }
    } else {
      sb->last_apply_error = rc;
      sb->last_apply_error_at_ns = http_now_ns();
      sb->apply_failures++;
      http_logf(sb->logger, "standby: applying frame %llu: %s",
                (unsigned long long)next, replicate_strerror(rc));
      apply_error_kind kind = apply_error_kind_of(rc);
      if (kind == APPLY_FATAL) {
        set_fatal(sb, rc);
      } else if (kind == APPLY_RETRY && !sb->stopping) {
        /* A second, whatever else wakes the applier meanwhile (each
         * received frame does): no retry storm on a full disk. */
        struct timespec until, now;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        do {
          pthread_cond_timedwait(&sb->cond, &sb->mu, &until);
          clock_gettime(CLOCK_REALTIME, &now);
        } while (!sb->stopping &&
                 (now.tv_sec < until.tv_sec ||
                  (now.tv_sec == until.tv_sec && now.tv_nsec < until.tv_nsec)));
      } else if (kind == APPLY_RETRY) {
        /* Stopping: leave the frames in the receive log for the restart
         * (trying again at once would spin until the disk has room). */
        pthread_cond_broadcast(&sb->cond);
        break;
      } else {
        /* The frame is bad (or we are stopping and cannot apply it):
         * stop until receipt rolls back to applied. */
        sb->apply_failed = true;
      }
    }
    pthread_cond_broadcast(&sb->cond);
  }
  pthread_mutex_unlock(&sb->mu);
  replicate_buf_free(&buf);
  return NULL;
}

/* ---------------------------------------------------------------------- */
/* Open and close */

/* replicate_log_open repaired a damaged receive log: nothing committed is
 * lost (the store holds it); the primary resends what was not applied. */
static void log_repaired(void *ctx, const replicate_log_repair *r)
{
  char line[512];
  http_logf(ctx, "standby: receive log repaired: %s",
            replicate_log_repair_describe(r, line, sizeof line));
}

/* Find received from the log (see RECOVERY). */
static int recover_received(http_standby *sb)
{
  loom_position store_pos;
  loom_store_position(sb->store, &store_pos);
  loom_store_lineage(sb->store, &sb->lineage);
  sb->applied = store_pos;
  sb->received = store_pos;

  replicate_log_stats st;
  replicate_log_get_stats(sb->log, &st);
  if (st.records == 0)
    return 0;
  if (st.newest_seq == store_pos.seq && st.newest_epoch <= store_pos.epoch)
    return 0; /* everything in the log is applied; appends continue it */
  if (st.newest_seq <= store_pos.seq || st.newest_epoch < store_pos.epoch ||
      st.oldest_seq > store_pos.seq + 1)
    return replicate_log_reset(sb->log); /* does not connect to the store */

  /* Frames store_pos.seq + 1 .. newest are waiting to be applied. */
  replicate_buf buf = {0};
  int rc = 0;
  for (uint64_t seq = store_pos.seq + 1; seq <= st.newest_seq; seq++) {
    replicate_frame_info info;
    rc = replicate_log_read(sb->log, seq, &buf);
    if (rc == 0)
      rc = replicate_frame_parse_header(buf.data, buf.len, NULL, &info);
    if (rc == 0 && seq == store_pos.seq + 1 &&
        (!same_point(&info.before, &store_pos) || info.epoch < store_pos.epoch))
      rc = REPLICATE_EPOSITION; /* a history the store does not have */
    if (rc == 0)
      rc = pending_push(sb, info.after.seq, info.first_commit_time_ns, buf.len);
    if (rc)
      break;
    /* A store that held nothing (or no history id) follows the history of
     * the frames it took: it adopts it when it applies them. */
    if (seq == store_pos.seq + 1 &&
        (store_pos.seq == 0 || loom_history_is_none(&sb->lineage.history)))
      sb->lineage = (loom_lineage){.history = info.history};
    sb->received = position_of(&info);
  }
  replicate_buf_free(&buf);
  if (rc) {
    http_logf(sb->logger, "standby: receive log does not continue the image "
              "(%s): reset", replicate_strerror(rc));
    pending_clear(sb);
    sb->received = store_pos;
    loom_store_lineage(sb->store, &sb->lineage);
    return replicate_log_reset(sb->log);
  }
  return 0;
}

int http_standby_open(const http_server_options *opt,
                      const http_logger *logger, http_standby **out)
{
  http_standby *sb = calloc(1, sizeof *sb);
  if (!sb)
    return ENOMEM;
  sb->logger = logger;
  sb->io = opt->io;
  sb->dir = strdup(opt->dir);
  sb->limits = http_limits_of(opt);
  sb->max_unapplied_bytes =
      opt->max_unapplied_bytes ? opt->max_unapplied_bytes : (UINT64_C(1) << 30);
  pthread_mutex_init(&sb->recv_mu, NULL);
  pthread_mutex_init(&sb->store_mu, NULL);
  pthread_mutex_init(&sb->mu, NULL);
  pthread_cond_init(&sb->cond, NULL);
  if (!sb->dir) {
    http_standby_close(sb);
    return ENOMEM;
  }

  int rc = loom_store_open(sb->dir, LOOM_CREATE | LOOM_APPLY_ASYNC, sb->io,
                            &sb->store);
  if (rc == 0) {
    /* No size bound from the log: the applier's lag is bounded by
     * max_unapplied_bytes instead, and retention trims behind it. */
    replicate_log_options lo = {.segment_bytes = 0, .max_bytes = UINT64_MAX,
                                .on_repair = log_repaired,
                                .repair_ctx = (void *)logger};
    rc = replicate_log_open(sb->dir, &lo, sb->io, &sb->log);
  }
  if (rc == 0)
    rc = replicate_decoder_new(&sb->limits, &sb->recv_dec);
  if (rc == 0)
    rc = replicate_decoder_new(&sb->limits, &sb->apply_dec);
  if (rc == 0)
    rc = replicate_coalescer_new(APPLY_MERGE_PAGES, &sb->apply_merge);
  if (rc == 0)
    rc = recover_received(sb);
  if (rc == 0) {
    sb->promote_max_lag = opt->promote_max_lag ? opt->promote_max_lag : 100;
    sb->primary_epoch = sb->received.epoch;
    sb->primary_seq = sb->received.seq;
    sb->primary_commit_ns = sb->received.commit_time_ns;
    rc = pthread_create(&sb->applier, NULL, applier_main, sb);
    sb->applier_started = rc == 0;
  }
  if (rc) {
    http_standby_close(sb);
    return rc;
  }
  *out = sb;
  return 0;
}

int http_standby_close(http_standby *sb)
{
  if (!sb)
    return 0;
  int first = 0;
  if (sb->applier_started) {
    pthread_mutex_lock(&sb->mu);
    sb->stopping = true;
    pthread_cond_broadcast(&sb->cond);
    pthread_mutex_unlock(&sb->mu);
    pthread_join(sb->applier, NULL);
    if (sb->applied.seq < sb->received.seq && sb->last_apply_error)
      first = sb->last_apply_error;
  }
  if (sb->store) {
    int rc = loom_store_sync(sb->store);
    if (rc && !first)
      first = rc;
  }
  if (sb->log) {
    int rc = replicate_log_close(sb->log);
    if (rc && !first)
      first = rc;
  }
  if (sb->store) {
    int rc = loom_store_close(sb->store);
    if (rc && !first)
      first = rc;
  }
  replicate_decoder_free(sb->recv_dec);
  replicate_decoder_free(sb->apply_dec);
  replicate_coalescer_free(sb->apply_merge);
  pthread_cond_destroy(&sb->cond);
  pthread_mutex_destroy(&sb->mu);
  pthread_mutex_destroy(&sb->store_mu);
  pthread_mutex_destroy(&sb->recv_mu);
  free(sb->pending);
  free(sb->dir);
  free(sb);
  return first;
}

/* ---------------------------------------------------------------------- */
/* POST /v1/frames */

static void reply_decode_error(http_reply *reply, int rc)
{
  unsigned status = rc == REPLICATE_ETOOBIG ? 413 : rc == ENOMEM ? 503 : 400;
  http_reply_error(reply, status,
                   status == 413   ? "frame too large"
                   : status == 503 ? "out of memory"
                                   : "malformed frame");
  json_key(&reply->body, "code");
  json_string(&reply->body, http_error_name(rc));
  json_key(&reply->body, "detail");
  json_string(&reply->body, replicate_strerror(rc));
  if (status == 503)
    reply->retry_after = 1;
}

/* Under recv_mu and mu: refuse a frame or heartbeat of an older epoch. */
static void reply_stale_epoch(http_standby *sb, uint64_t frame_epoch,
                              http_reply *reply)
{
  http_reply_error(reply, 409, "stale epoch");
  json_key(&reply->body, "frame_epoch");
  json_uint(&reply->body, frame_epoch);
  json_key(&reply->body, "role");
  json_string(&reply->body, sb->promoted ? "primary" : "standby");
  positions_json(sb, &reply->body);
}

/* Under mu: input was refused as moving this standby backwards or
 * sideways (replicate_place_*): say so in the log (once a second at most)
 * and in status. */
static void note_divergence(http_standby *sb, int rc, const loom_history *theirs)
{
  if (sb->diverged != rc || http_monotonic_ns() - sb->diverged_mono_ns > NS_PER_S) {
    char ours_hex[33], theirs_hex[33];
    loom_history_hex(&sb->lineage.history, ours_hex);
    loom_history_hex(theirs, theirs_hex);
    http_logf(sb->logger, "standby: refused input of history %s that would "
              "move this standby (history %s, epoch %llu, seq %llu) backwards "
              "or sideways: %s", theirs_hex, ours_hex,
              (unsigned long long)sb->received.epoch,
              (unsigned long long)sb->received.seq, replicate_strerror(rc));
  }
  sb->diverged = rc;
  sb->diverged_at_ns = http_now_ns();
  sb->diverged_mono_ns = http_monotonic_ns();
  sb->divergences++;
}

/* Under mu: the same, and the 409 answer that tells the sender. */
static void reply_diverged(http_standby *sb, int rc, const loom_history *theirs,
                           http_reply *reply)
{
  note_divergence(sb, rc, theirs);
  http_reply_error(reply, 409, "diverged");
  json_key(&reply->body, "code");
  json_string(&reply->body, http_error_name(rc));
  json_key(&reply->body, "reason");
  json_string(&reply->body, replicate_strerror(rc));
  positions_json(sb, &reply->body);
}

/* Under mu: input that is not a divergence came in (a frame, a duplicate,
 * a gap, a heartbeat, a base image). A divergence shown in status is
 * cleared once such input comes DIVERGED_HOLD_NS after the last refusal:
 * the sender that caused it has been quiet that long. */
static void note_sound_input(http_standby *sb)
{
  if (sb->diverged && http_monotonic_ns() - sb->diverged_mono_ns > DIVERGED_HOLD_NS)
    sb->diverged = 0;
}

/* Under mu: input of history h is being taken in; a standby that held
 * nothing follows h from now on (the store adopts it durably with the
 * first frame or base image it applies). */
static void follow_history(http_standby *sb, const loom_history *h)
{
  if (!loom_history_equal(&sb->lineage.history, h)) {
    memset(&sb->lineage, 0, sizeof sb->lineage);
    sb->lineage.history = *h;
  }
}

/* A coalesced frame: drain the applier, apply it here, reset the log.
 * Under recv_mu (not mu). */
static void apply_coalesced(http_standby *sb, const replicate_frame *frame,
                            size_t len, http_reply *reply)
{
  pthread_mutex_lock(&sb->mu);
  while (!sb->apply_failed && (sb->applier_busy ||
                               sb->applied.seq < sb->received.seq))
    pthread_cond_wait(&sb->cond, &sb->mu);
  bool failed = sb->apply_failed;
  pthread_mutex_unlock(&sb->mu);
  if (failed) {
    rollback_under_recv(sb);
    pthread_mutex_lock(&sb->mu);
    http_reply_error(reply, 409, "checksum mismatch");
    json_key(&reply->body, "code");
    json_string(&reply->body, http_error_name(sb->last_apply_error
                                                  ? sb->last_apply_error
                                                  : REPLICATE_EAFTER_CHECKSUM));
    positions_json(sb, &reply->body);
    pthread_mutex_unlock(&sb->mu);
    return;
  }

  loom_position pos;
  pthread_mutex_lock(&sb->store_mu);
  int rc = replicate_frame_apply(frame, sb->store);
  loom_store_position(sb->store, &pos);
  pthread_mutex_unlock(&sb->store_mu);
  if (rc == 0) {
    /* The log's chain is broken by the merged frame: start it afresh. */
    int lrc = replicate_log_reset(sb->log);
    if (lrc)
      http_logf(sb->logger, "standby: resetting the receive log: %s",
                replicate_strerror(lrc));
  }

  pthread_mutex_lock(&sb->mu);
  if (rc == 0 || rc == REPLICATE_EDUPLICATE) {
    sb->applied = pos;
    sb->received = pos;
    pending_clear(sb);
    sb->need_sync = true;
    if (rc == 0) {
      sb->frames_received++;
      sb->frames_applied++;
      sb->apply_commits++;
      sb->bytes_received += len;
    } else {
      sb->duplicates++;
    }
    http_reply_object(reply, 200);
    positions_json(sb, &reply->body);
    json_key(&reply->body, "duplicate");
    json_bool(&reply->body, rc != 0);
    pthread_cond_broadcast(&sb->cond);
  } else if (replicate_is_divergence(rc)) {
    reply_diverged(sb, rc, &frame->info.history, reply);
  } else if (rc == REPLICATE_EPOSITION || rc == REPLICATE_ESTALE_EPOCH) {
    http_reply_error(reply, 409, rc == REPLICATE_ESTALE_EPOCH ? "stale epoch"
                                                              : "gap");
    json_key(&reply->body, "code");
    json_string(&reply->body, http_error_name(rc));
    positions_json(sb, &reply->body);
  } else if (is_disk_full(rc)) {
    http_reply_error(reply, 507, "disk full");
    positions_json(sb, &reply->body);
  } else if (apply_error_kind_of(rc) == APPLY_FATAL) {
    set_fatal(sb, rc);
    http_reply_error(reply, 503, "storage failed: the standby must restart");
    positions_json(sb, &reply->body);
  } else {
    unsigned status = rc > 0 ? 500 : 400;
    http_reply_error(reply, status, status == 400 ? "frame does not apply"
                                                  : "apply failed");
    json_key(&reply->body, "code");
    json_string(&reply->body, http_error_name(rc));
    json_key(&reply->body, "detail");
    json_string(&reply->body, replicate_strerror(rc));
    positions_json(sb, &reply->body);
  }
  pthread_mutex_unlock(&sb->mu);
}

void http_standby_receive_frame(http_standby *sb, const uint8_t *body,
                                size_t len, http_reply *reply)
{
  replicate_frame frame;
  pthread_mutex_lock(&sb->recv_mu);
  int rc = replicate_frame_decode(sb->recv_dec, body, len, &frame);
  if (rc) {
    pthread_mutex_unlock(&sb->recv_mu);
    reply_decode_error(reply, rc);
    return;
  }
  const replicate_frame_info *info = &frame.info;
  rollback_under_recv(sb);

  pthread_mutex_lock(&sb->mu);
  sb->last_contact_ns = http_now_ns();
  int place = replicate_place_frame(&sb->lineage.history, &sb->received, info);
  if (place == REPLICATE_ESTALE_EPOCH) {
    reply_stale_epoch(sb, info->epoch, reply);
    goto out;
  }
  if (replicate_is_divergence(place)) {
    reply_diverged(sb, place, &info->history, reply);
    goto out;
  }
  note_sound_input(sb);
  if (sb->promoted) {
    http_reply_error(reply, 409, "not a standby");
    json_key(&reply->body, "role");
    json_string(&reply->body, "primary");
    positions_json(sb, &reply->body);
    goto out;
  }
  primary_clock_note(&sb->clock, info);
  /* What we know of the primary. */
  if (info->epoch > sb->primary_epoch) {
    sb->primary_epoch = info->epoch;
    sb->primary_seq = info->after.seq;
    sb->primary_commit_ns = info->commit_time_ns;
  } else if (info->after.seq >= sb->primary_seq) {
    sb->primary_seq = info->after.seq;
    sb->primary_commit_ns = info->commit_time_ns;
  }

  if (info->kind == REPLICATE_KIND_HEARTBEAT) {
    sb->heartbeats++;
    http_reply_object(reply, 200);
    positions_json(sb, &reply->body);
    goto out;
  }
  if (place == REPLICATE_EDUPLICATE) {
    sb->duplicates++;
    http_reply_object(reply, 200);
    positions_json(sb, &reply->body);
    json_key(&reply->body, "duplicate");
    json_bool(&reply->body, true);
    goto out;
  }
  if (sb->base_active) {
    http_reply_error(reply, 503, "base image in progress");
    reply->retry_after = 1;
    positions_json(sb, &reply->body);
    goto out;
  }
  if (place == REPLICATE_EPOSITION) {
    /* A frame from further ahead is a gap; one that begins behind the
     * received seq and ends past it an overlap (a merged frame whose
     * answer was lost): either way the primary resends from here. */
    http_reply_error(reply, 409, info->before.seq > sb->received.seq
                                     ? "gap" : "overlap");
    json_key(&reply->body, "code");
    json_string(&reply->body, http_error_name(REPLICATE_EPOSITION));
    json_key(&reply->body, "frame_before");
    json_object_begin(&reply->body);
    json_key(&reply->body, "epoch");
    json_uint(&reply->body, info->epoch);
    json_key(&reply->body, "seq");
    json_uint(&reply->body, info->before.seq);
    json_key(&reply->body, "checksum");
    json_hex64(&reply->body, info->before.checksum);
    json_key(&reply->body, "pages");
    json_uint(&reply->body, info->before.pages);
    json_object_end(&reply->body);
    positions_json(sb, &reply->body);
    goto out;
  }
  follow_history(sb, &info->history);
  if (info->flags & REPLICATE_FRAME_COALESCED) {
    pthread_mutex_unlock(&sb->mu);
    apply_coalesced(sb, &frame, len, reply);
    pthread_mutex_unlock(&sb->recv_mu);
    return;
  }
  if (sb->pending_bytes + len > sb->max_unapplied_bytes &&
      sb->pending_len > 0) {
    http_reply_error(reply, 503, "applier behind");
    reply->retry_after = 1;
    positions_json(sb, &reply->body);
    goto out;
  }
  pthread_mutex_unlock(&sb->mu);

  rc = replicate_log_append(sb->log, body, len);
  if (rc == REPLICATE_ENOT_CONTIGUOUS) {
    /* The log's chain does not end at received: it holds only applied
     * frames (a base image or a coalesced frame moved the store past it).
     * Start it afresh when that loses nothing unapplied, and try again. */
    pthread_mutex_lock(&sb->mu);
    bool all_applied = sb->applied.seq == sb->received.seq;
    pthread_mutex_unlock(&sb->mu);
    if (all_applied && replicate_log_reset(sb->log) == 0)
      rc = replicate_log_append(sb->log, body, len);
  }

  pthread_mutex_lock(&sb->mu);
  if (rc) {
    http_logf(sb->logger, "standby: receive log append of frame %llu: %s",
              (unsigned long long)info->after.seq, replicate_strerror(rc));
    if (is_disk_full(rc)) {
      http_reply_error(reply, 507, "disk full");
    } else if (apply_error_kind_of(rc) == APPLY_FATAL) {
      set_fatal(sb, rc); /* a failed fsync of the receive log */
      http_reply_error(reply, 503, "storage failed: the standby must restart");
    } else {
      http_reply_error(reply, 500, "receive log write failed");
    }
    json_key(&reply->body, "code");
    json_string(&reply->body, http_error_name(rc));
    positions_json(sb, &reply->body);
    goto out;
  }
  rc = pending_push(sb, info->after.seq, info->first_commit_time_ns, len);
  if (rc) {
    /* Durable but untracked: lag accounting is off by this frame. */
    http_logf(sb->logger, "standby: out of memory tracking frame %llu",
              (unsigned long long)info->after.seq);
  }
  sb->received = position_of(info);
  sb->frames_received++;
  sb->bytes_received += len;
  pthread_cond_broadcast(&sb->cond);
  http_reply_object(reply, 200);
  positions_json(sb, &reply->body);
  json_key(&reply->body, "duplicate");
  json_bool(&reply->body, false);
out:
  pthread_mutex_unlock(&sb->mu);
  pthread_mutex_unlock(&sb->recv_mu);
}

/* ---------------------------------------------------------------------- */
/* POST /v1/promote */

/* Under mu: why this standby may not be promoted (unless forced), or
 * NULL. A standby that holds nothing would fence its primary with an empty
 * image; one far behind would lose what it never received. */
static const char *promote_refusal(http_standby *sb, const char **reason)
{
  if (sb->received.seq == 0) {
    *reason = "this standby never received anything: promoting it would "
              "start an empty history and fence the real primary";
    return "PROMOTE_EMPTY";
  }
  uint64_t behind = sb->primary_seq > sb->received.seq
                        ? sb->primary_seq - sb->received.seq : 0;
  if (behind > sb->promote_max_lag) {
    *reason = "this standby is further behind the primary seq it last heard "
              "than --promote-max-lag allows";
    return "PROMOTE_BEHIND";
  }
  return NULL;
}

/* Under mu: refuse the promotion (409) if promote_refusal says so; true
 * when refused. */
static bool reply_promote_refused(http_standby *sb, http_reply *reply)
{
  const char *reason = NULL, *refusal = promote_refusal(sb, &reason);
  if (!refusal)
    return false;
  http_reply_error(reply, 409, "promotion refused");
  json_key(&reply->body, "code");
  json_string(&reply->body, refusal);
  json_key(&reply->body, "reason");
  json_string(&reply->body, reason);
  json_key(&reply->body, "primary_seq");
  json_uint(&reply->body, sb->primary_seq);
  positions_json(sb, &reply->body);
  return true;
}

void http_standby_promote(http_standby *sb, bool force, http_reply *reply)
{
  pthread_mutex_lock(&sb->recv_mu);
  pthread_mutex_lock(&sb->mu);
  if (sb->promoted) {
    http_reply_error(reply, 409, "already primary");
    positions_json(sb, &reply->body);
    goto out_mu;
  }
  if (!force && reply_promote_refused(sb, reply))
    goto out_mu;
  if (sb->base_active) {
    http_reply_error(reply, 409, "base image in progress");
    positions_json(sb, &reply->body);
    goto out_mu;
  }
  /* Receipt is paused (recv_mu); apply everything received. */
  while (!sb->apply_failed && (sb->applier_busy ||
                               sb->applied.seq < sb->received.seq))
    pthread_cond_wait(&sb->cond, &sb->mu);
  pthread_mutex_unlock(&sb->mu);
  rollback_under_recv(sb);
  pthread_mutex_lock(&sb->mu);
  /* Received frames that failed to apply were rolled back: what counts is
   * what was applied. */
  if (!force && sb->applied.seq == 0 && reply_promote_refused(sb, reply))
    goto out_mu;
  pthread_mutex_unlock(&sb->mu);

  loom_position pos;
  pthread_mutex_lock(&sb->store_mu);
  int rc = loom_store_sync(sb->store);
  loom_store_position(sb->store, &pos);
  if (rc == 0)
    rc = loom_store_ensure_history(sb->store); /* forced at seq 0: a new one */
  if (rc == 0)
    rc = loom_store_set_epoch(sb->store, pos.epoch + 1);
  loom_store_position(sb->store, &pos);
  loom_lineage lineage;
  loom_store_lineage(sb->store, &lineage);
  pthread_mutex_unlock(&sb->store_mu);

  pthread_mutex_lock(&sb->mu);
  if (rc) {
    http_logf(sb->logger, "standby: promotion failed: %s", loom_strerror(rc));
    http_reply_error(reply, is_disk_full(rc) ? 507 : 500, "promotion failed");
    json_key(&reply->body, "code");
    json_string(&reply->body, http_error_name(rc));
    positions_json(sb, &reply->body);
    goto out_mu;
  }
  pthread_mutex_unlock(&sb->mu);
  rc = replicate_log_reset(sb->log);
  if (rc)
    http_logf(sb->logger, "standby: resetting the receive log: %s",
              replicate_strerror(rc));
  pthread_mutex_lock(&sb->mu);
  sb->promoted = true;
  sb->promoted_at_ns = http_now_ns();
  sb->lineage = lineage;
  sb->applied = pos;
  sb->received = pos;
  pending_clear(sb);
  http_logf(sb->logger, "standby: promoted to primary at epoch %llu, seq %llu",
            (unsigned long long)pos.epoch, (unsigned long long)pos.seq);
  http_reply_object(reply, 200);
  json_key(&reply->body, "role");
  json_string(&reply->body, "primary");
  json_key(&reply->body, "epoch");
  json_uint(&reply->body, pos.epoch);
  point_json(&reply->body, "applied", &pos);
  pthread_cond_broadcast(&sb->cond);
out_mu:
  pthread_mutex_unlock(&sb->mu);
  pthread_mutex_unlock(&sb->recv_mu);
}

/* ---------------------------------------------------------------------- */
/* PUT /v1/base */

int http_standby_base_begin(http_standby *sb, uint64_t content_length,
                            http_base_upload **out, http_reply *reply)
{
  http_base_upload *up = calloc(1, sizeof *up);
  uint8_t *page = malloc(LOOM_PAGE_SIZE);
  if (!up || !page) {
    free(up);
    free(page);
    http_reply_error(reply, 503, "out of memory");
    reply->retry_after = 1;
    return ENOMEM;
  }
  up->sb = sb;
  up->page = page;
  up->content_length = content_length;

  pthread_mutex_lock(&sb->recv_mu);
  pthread_mutex_lock(&sb->mu);
  int rc = 0;
  if (sb->promoted) {
    http_reply_error(reply, 409, "not a standby");
    positions_json(sb, &reply->body);
    rc = EPERM;
  } else if (sb->base_active) {
    http_reply_error(reply, 409, "base image already in progress");
    positions_json(sb, &reply->body);
    rc = EBUSY;
  } else {
    sb->base_active = true;
  }
  pthread_mutex_unlock(&sb->mu);
  pthread_mutex_unlock(&sb->recv_mu);
  if (rc) {
    free(up->page);
    free(up);
    return rc;
  }
  /* The applier starts nothing new while base_active: wait for the one
   * in flight. */
  pthread_mutex_lock(&sb->mu);
  while (sb->applier_busy)
    pthread_cond_wait(&sb->cond, &sb->mu);
  pthread_mutex_unlock(&sb->mu);
  *out = up;
  return 0;
}

static void base_refuse(http_base_upload *up, unsigned status,
                        const char *message, int rc)
{
  up->refused = true;
  http_reply_error(&up->refusal, status, message);
  if (rc) {
    json_key(&up->refusal.body, "code");
    json_string(&up->refusal.body, http_error_name(rc));
    json_key(&up->refusal.body, "detail");
    json_string(&up->refusal.body, replicate_strerror(rc));
  }
  if (up->patch) {
    pthread_mutex_lock(&up->sb->store_mu);
    loom_patch_abort(up->patch);
    pthread_mutex_unlock(&up->sb->store_mu);
    up->patch = NULL;
  }
}

static unsigned status_of_store_error(int rc)
{
  if (is_disk_full(rc))
    return 507;
  if (rc == LOOM_ETOOBIG)
    return 413;
  return rc == LOOM_EPOSITION || rc == LOOM_EINVAL ? 400 : 500;
}

/* The header is complete: check it and begin the patch. */
static void base_start_patch(http_base_upload *up)
{
  http_standby *sb = up->sb;
  loom_lineage lineage;
  int rc = loom_stream_header_decode(up->header, &up->target, &lineage);
  if (rc) {
    base_refuse(up, 400, "malformed image stream header", rc);
    return;
  }
  const uint64_t max_pages = sb->limits.max_image_pages;
  if (up->target.pages > max_pages) {
    base_refuse(up, 413, "image too large", 0);
    return;
  }
  if (up->content_length != UINT64_MAX &&
      up->content_length !=
          LOOM_STREAM_HEADER + up->target.pages * (uint64_t)LOOM_PAGE_SIZE) {
    base_refuse(up, 400, "Content-Length does not match the image header", 0);
    return;
  }
  pthread_mutex_lock(&sb->mu);
  int place = replicate_place_base(&sb->lineage.history, &sb->received,
                                   &up->target, &lineage);
  if (replicate_is_divergence(place))
    note_divergence(sb, place, &lineage.history);
  pthread_mutex_unlock(&sb->mu);
  if (place == REPLICATE_ESTALE_EPOCH) {
    base_refuse(up, 409, "stale epoch", 0);
    json_key(&up->refusal.body, "image_epoch");
    json_uint(&up->refusal.body, up->target.epoch);
    return;
  }
  if (replicate_is_divergence(place)) {
    base_refuse(up, 409, "diverged", place);
    return;
  }
  loom_patch_header h = {
      .after = up->target,
      .page_count = up->target.pages,
      .flags = LOOM_PATCH_BASE,
  };
  /* The history first (durable in the meta), then the image: a crash
   * between leaves the old image under the new lineage, which place_base
   * allowed (the same history, or a store that held nothing). */
  pthread_mutex_lock(&sb->store_mu);
  rc = loom_history_is_none(&lineage.history)
           ? 0 : loom_store_adopt_lineage(sb->store, &lineage);
  loom_store_position(sb->store, &h.before);
  if (!rc)
    rc = loom_store_patch_begin(sb->store, &h, &up->patch);
  pthread_mutex_unlock(&sb->store_mu);
  if (!rc && !loom_history_is_none(&lineage.history)) {
    pthread_mutex_lock(&sb->mu);
    sb->lineage = lineage;
    pthread_mutex_unlock(&sb->mu);
  }
  if (rc) {
    up->patch = NULL;
    base_refuse(up, status_of_store_error(rc), "base image refused", rc);
  }
}

int http_standby_base_feed(http_base_upload *up, const uint8_t *data,
                           size_t len)
{
  while (len > 0 && !up->refused) {
    if (up->header_len < LOOM_STREAM_HEADER) {
      size_t n = LOOM_STREAM_HEADER - up->header_len;
      if (n > len)
        n = len;
      memcpy(up->header + up->header_len, data, n);
      up->header_len += n;
      data += n;
      len -= n;
      if (up->header_len == LOOM_STREAM_HEADER)
        base_start_patch(up);
      continue;
    }
    if (up->pages_added == up->target.pages) {
      base_refuse(up, 400, "bytes after the last page of the image", 0);
      break;
    }
    size_t n = LOOM_PAGE_SIZE - up->page_fill;
    if (n > len)
      n = len;
    memcpy(up->page + up->page_fill, data, n);
    up->page_fill += n;
    data += n;
    len -= n;
    if (up->page_fill == LOOM_PAGE_SIZE) {
      pthread_mutex_lock(&up->sb->store_mu);
      int rc = loom_patch_add(up->patch, up->pages_added, up->page);
      pthread_mutex_unlock(&up->sb->store_mu);
      if (rc) {
        base_refuse(up, status_of_store_error(rc), "base image refused", rc);
        break;
      }
      up->pages_added++;
      up->page_fill = 0;
    }
  }
  return up->refused ? EINVAL : 0;
}

static void base_release(http_base_upload *up)
{
  http_standby *sb = up->sb;
  if (up->patch) {
    pthread_mutex_lock(&sb->store_mu);
    loom_patch_abort(up->patch);
    pthread_mutex_unlock(&sb->store_mu);
  }
  pthread_mutex_lock(&sb->mu);
  sb->base_active = false;
  pthread_cond_broadcast(&sb->cond);
  pthread_mutex_unlock(&sb->mu);
  json_free(&up->refusal.body);
  free(up->page);
  free(up);
}

void http_standby_base_finish(http_base_upload *up, http_reply *reply)
{
  http_standby *sb = up->sb;
  if (!up->refused && (up->header_len < LOOM_STREAM_HEADER ||
                       up->pages_added < up->target.pages ||
                       up->page_fill != 0))
    base_refuse(up, 400, "truncated image stream", 0);
  if (up->refused) {
    *reply = up->refusal;
    json_init(&up->refusal.body);
    pthread_mutex_lock(&sb->mu);
    positions_json(sb, &reply->body);
    pthread_mutex_unlock(&sb->mu);
    base_release(up);
    return;
  }

  loom_position pos;
  pthread_mutex_lock(&sb->store_mu);
  int rc = loom_patch_commit(up->patch);
  up->patch = NULL;
  if (rc == 0)
    rc = loom_store_sync(sb->store);
  loom_store_position(sb->store, &pos);
  pthread_mutex_unlock(&sb->store_mu);

  if (rc) {
    http_logf(sb->logger, "standby: base image refused: %s",
              loom_strerror(rc));
    http_reply_error(reply, status_of_store_error(rc),
                     rc == LOOM_EPOSITION
                         ? "the pages do not give the header's checksum"
                         : "base image not committed");
    json_key(&reply->body, "code");
    json_string(&reply->body, http_error_name(rc));
    pthread_mutex_lock(&sb->mu);
    positions_json(sb, &reply->body);
    pthread_mutex_unlock(&sb->mu);
    base_release(up);
    return;
  }

  /* Frames received before the base are moot: the log restarts at pos. */
  int lrc = replicate_log_reset(sb->log);
  if (lrc)
    http_logf(sb->logger, "standby: resetting the receive log: %s",
              replicate_strerror(lrc));
  pthread_mutex_lock(&sb->mu);
  sb->applied = pos;
  sb->received = pos;
  pending_clear(sb);
  sb->apply_failed = false;
  sb->bases++;
  note_sound_input(sb);
  if (pos.epoch > sb->primary_epoch ||
      (pos.epoch == sb->primary_epoch && pos.seq >= sb->primary_seq)) {
    sb->primary_epoch = pos.epoch;
    sb->primary_seq = pos.seq;
    sb->primary_commit_ns = pos.commit_time_ns;
  }
  http_logf(sb->logger, "standby: base image at epoch %llu seq %llu (%llu pages)",
            (unsigned long long)pos.epoch, (unsigned long long)pos.seq,
            (unsigned long long)pos.pages);
  http_reply_object(reply, 200);
  positions_json(sb, &reply->body);
  pthread_mutex_unlock(&sb->mu);
  base_release(up);
}

void http_standby_base_abort(http_base_upload *up)
{
  if (up)
    base_release(up);
}

/* ---------------------------------------------------------------------- */
/* Snapshots and status */

int http_standby_snapshot_open(http_standby *sb, loom_snapshot **out)
{
  pthread_mutex_lock(&sb->store_mu);
  pthread_mutex_lock(&sb->mu);
  bool busy = sb->base_active;
  pthread_mutex_unlock(&sb->mu);
  /* The image catches up with the applied position first (the store
   * writes it after each commit point): a backup begun after the status
   * said applied N holds N or later. */
  int rc = busy ? EBUSY : loom_store_sync(sb->store);
  if (rc == 0)
    rc = loom_store_snapshot_open(sb->store, out);
  if (rc == 0) {
    pthread_mutex_lock(&sb->mu);
    sb->snapshots_open++;
    pthread_mutex_unlock(&sb->mu);
  }
  pthread_mutex_unlock(&sb->store_mu);
  return rc;
}

void http_standby_snapshot_close(http_standby *sb, loom_snapshot *snap)
{
  loom_snapshot_close(snap);
  pthread_mutex_lock(&sb->mu);
  sb->snapshots_open--;
  pthread_mutex_unlock(&sb->mu);
}

bool http_standby_promoted(http_standby *sb)
{
  pthread_mutex_lock(&sb->mu);
  bool promoted = sb->promoted;
  pthread_mutex_unlock(&sb->mu);
  return promoted;
}

void http_standby_view_get(http_standby *sb, http_standby_view *out)
{
  memset(out, 0, sizeof *out);
  http_server_status *s = &out->status;
  pthread_mutex_lock(&sb->mu);
  s->role = sb->promoted ? HTTP_ROLE_PRIMARY : HTTP_ROLE_STANDBY;
  s->applied = sb->applied;
  s->received = sb->received;
  s->primary_seq = sb->primary_seq > sb->received.seq ? sb->primary_seq
                                                      : sb->received.seq;
  s->lag_frames = s->primary_seq > sb->applied.seq
                      ? s->primary_seq - sb->applied.seq : 0;
  s->lag_bytes = sb->pending_bytes;
  /* Age of the oldest commit heard of and not applied, on the primary's
   * clock: the oldest pending frame's, or, when only a heartbeat told us
   * of newer commits, the primary's newest commit (all we know of their
   * times). */
  int64_t oldest_ns = 0;
  if (sb->pending_len)
    oldest_ns = sb->pending[sb->pending_head].commit_ns;
  else if (s->lag_frames)
    oldest_ns = sb->primary_commit_ns;
  if (s->lag_frames && oldest_ns > 0) {
    int64_t age = primary_clock_now(&sb->clock) - oldest_ns;
    s->lag_seconds = age > 0 ? (double)age / 1e9 : 0.0;
  }
  s->replay_paused = sb->base_active;
  s->frames_received = sb->frames_received;
  s->frames_applied = sb->frames_applied;
  s->apply_commits = sb->apply_commits;
  s->duplicates = sb->duplicates;
  s->last_apply_error = sb->last_apply_error;
  out->primary_epoch = sb->primary_epoch;
  out->primary_commit_ns = sb->primary_commit_ns;
  out->last_contact_ns = sb->last_contact_ns;
  out->last_apply_error_at_ns = sb->last_apply_error_at_ns;
  out->promoted_at_ns = sb->promoted_at_ns;
  out->heartbeats = sb->heartbeats;
  out->bases = sb->bases;
  out->bytes_received = sb->bytes_received;
  out->apply_failures = sb->apply_failures;
  out->clock_skew_known = primary_clock_skew(&sb->clock, &out->clock_skew_seconds);
  bool failed = sb->apply_failed || sb->fatal;
  s->fatal_error = sb->fatal;
  s->history = sb->lineage.history;
  s->diverged = sb->diverged;
  s->diverged_at_ns = sb->diverged_at_ns;
  s->divergences = sb->divergences;
  pthread_mutex_unlock(&sb->mu);
  /* ready is decided by the server (it knows the threshold); a standby
   * stuck on a failed apply is never ready. */
  s->ready = !failed;
  replicate_log_stats st;
  replicate_log_get_stats(sb->log, &st);
  out->receive_log_bytes = st.bytes;
}
