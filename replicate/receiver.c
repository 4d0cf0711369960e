/*
 * receiver.c: the standby side of replication (receiver.h).
 *
 * DESIGN
 *
 * A receiver owns an image directory: its loom_store, a *receive log* (a
 * replicate_log in DIR/replog/) and an *applier thread*. The primary posts
 * frames; each is handled in four steps (replicate_receiver_frame; the
 * HTTP answers are http/standby.c's):
 *
 *   1. decode strictly (replicate_frame_decode): MALFORMED (400, or 413
 *      for a frame over the limits);
 *   2. place it against the received position: a heartbeat only updates
 *      what we know of the primary; a frame of an older epoch is refused
 *      (STALE_EPOCH, 409); one already received is answered DUPLICATE and
 *      changes nothing; one whose before is not the received position is
 *      refused (GAP or OVERLAP, 409, with our positions, so the primary
 *      resends from there);
 *   3. append it to the receive log, durably (DISK_FULL, 507, when the
 *      disk is full; the log undoes a partial record, so nothing received
 *      before is lost); the received position moves to its after;
 *   4. answer OK with {received, applied}; the applier thread then reads
 *      it back from the log, applies it with replicate_frame_apply(), and
 *      trims the log (replicate_log_retain) behind the applied position,
 *      but not past the log's hold: with on_received (an archiving
 *      standby) the log keeps every frame from open on until the archiver
 *      moves the hold to what it uploaded (receiver.h).
 *
 * GROUP APPLY (receiver_apply.c). When several frames wait in the receive
 * log, the applier merges them (replicate_coalescer_finish_frame, up to
 * RX_APPLY_MERGE_FRAMES frames and RX_APPLY_MERGE_PAGES distinct pages, or
 * half the commit log's ring when that is fewer: merge_pages_for) and
 * applies them as one commit: one patch, one image and one meta fsync for
 * all of them, so a standby that falls behind catches up faster instead
 * of falling further behind. The store is opened with LOOM_APPLY_ASYNC: a
 * commit returns at its commit point (the patch durable: recovery
 * re-applies it) and the image is written while the next frames are
 * merged; reads wait for it. If a merged apply fails (not for lack of
 * space or storage), the frames it held are applied one at a time, so the
 * bad one is found and dropped as below.
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
 *       refused (BASE_ACTIVE, 503); the base upload is the only user of
 *       the store.
 *   I4. After promotion the receive log is empty, received == applied, and
 *       every frame is refused.
 *   I5. A delayed standby (receiver.h, DELAYED STANDBY) applies nothing
 *       past rx_apply_limit: the pending frames [head, head + due_len)
 *       are those whose commit time plus the delay has passed on the
 *       primary's clock (below), and only they are applied, merged or not.
 *
 * RECOVERY (replicate_receiver_open)
 *
 * received is the newest frame in the receive log when it is newer than
 * the store's position, else the store's position (and a log that does not
 * connect to the store is reset). The applier then catches up.
 *
 * A frame that fails to apply (its pages do not give its after checksum, or
 * the log cannot read it back) stops the applier (apply_failed). The next
 * frame received, or a promotion, rolls received back to applied and
 * resets the receive log: the primary is refused (409) and resends.
 *
 * PRIMARY'S CLOCK (DESIGN.md section 4). Lag in seconds is measured on one
 * clock, the primary's: commit times come from it, so "now" does too: the
 * primary's time in its last heartbeat (made as it was sent), or in a
 * commit frame when that is later than the estimate, plus our monotonic
 * time since it arrived. Our own realtime clock is used only before any
 * frame arrived. clock_skew_seconds estimates how far our clock is from the
 * primary's: the least (our realtime at arrival - the primary's time in the
 * frame) over the last RX_SKEW_SAMPLES frames and heartbeats; the network
 * delay, and a commit frame's wait before it was sent, only add to a
 * sample, so the least is the closest.
 *
 * Locks: recv_mu serialises receipt (frames, base begin, promotion);
 * store_mu guards the store (one thread at a time, loom.h); mu guards the
 * state below and pairs with cond. Order: recv_mu, store_mu, mu. No lock is
 * held when a call returns to the caller.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "receiver_internal.h"
#include "clock.h"
#include "logline.h"

#define DIVERGED_HOLD_NS (10 * RX_NS_PER_S)

/* ---------------------------------------------------------------------- */
/* Small helpers */

void rx_logf(replicate_receiver *rx, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  loom_log_vline(rx->log_fn, rx->log_ctx, fmt, ap);
  va_end(ap);
}

static int64_t realtime_ns(void) { return loom_real_ns(); } /* core/clock.h */

int64_t rx_now_ns(const replicate_receiver *rx) { return rx->now_ns(); }
int64_t rx_mono_ns(void) { return loom_mono_ns(); }

bool rx_is_disk_full(int rc)
{
  return rc == ENOSPC || rc == EDQUOT || rc == EFBIG;
}

void rx_outcome(replicate_receiver *rx, replicate_recv_result result, int code,
                replicate_recv_outcome *out)
{
  memset(out, 0, sizeof *out);
  out->result = result;
  out->code = code;
  out->promoted = rx->promoted;
  out->received = rx->received;
  out->applied = rx->applied;
  out->history = rx->lineage.history;
  out->primary_seq = rx->primary_seq;
  out->computed = rx->computed;
  out->single_frames = rx->delay_ns != 0 || rx->on_received != NULL;
}

void rx_positions_moved(replicate_receiver *rx)
{
  if (rx->on_position)
    rx->on_position(rx->position_ctx, &rx->received, &rx->applied);
}

void rx_log_reset(replicate_receiver *rx)
{
  int rc = replicate_log_reset(rx->log);
  if (rc)
    rx_logf(rx, "standby: resetting the receive log: %s",
            replicate_strerror(rc));
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

const char *replicate_recv_result_name(replicate_recv_result r)
{
  switch (r) {
  case REPLICATE_RECV_OK: return "ok";
  case REPLICATE_RECV_DUPLICATE: return "duplicate";
  case REPLICATE_RECV_HEARTBEAT: return "heartbeat";
  case REPLICATE_RECV_MALFORMED: return "malformed";
  case REPLICATE_RECV_STALE_EPOCH: return "stale_epoch";
  case REPLICATE_RECV_DIVERGED: return "diverged";
  case REPLICATE_RECV_GAP: return "gap";
  case REPLICATE_RECV_OVERLAP: return "overlap";
  case REPLICATE_RECV_PROMOTED: return "promoted";
  case REPLICATE_RECV_BASE_ACTIVE: return "base_active";
  case REPLICATE_RECV_BEHIND: return "behind";
  case REPLICATE_RECV_NO_MEMORY: return "no_memory";
  case REPLICATE_RECV_PROMOTE_EMPTY: return "promote_empty";
  case REPLICATE_RECV_PROMOTE_BEHIND: return "promote_behind";
  case REPLICATE_RECV_ALREADY_PRIMARY: return "already_primary";
  case REPLICATE_RECV_DISK_FULL: return "disk_full";
  case REPLICATE_RECV_STORAGE_FAILED: return "storage_failed";
  case REPLICATE_RECV_WRITE_FAILED: return "write_failed";
  case REPLICATE_RECV_PROMOTE_FAILED: return "promote_failed";
  case REPLICATE_RECV_APPLY_STOPPED: return "apply_stopped";
  case REPLICATE_RECV_APPLY_STALE_EPOCH: return "apply_stale_epoch";
  case REPLICATE_RECV_APPLY_GAP: return "apply_gap";
  case REPLICATE_RECV_APPLY_DISK_FULL: return "apply_disk_full";
  case REPLICATE_RECV_APPLY_STORAGE_FAILED: return "apply_storage_failed";
  case REPLICATE_RECV_APPLY_REFUSED: return "apply_refused";
  case REPLICATE_RECV_APPLY_FAILED: return "apply_failed";
  case REPLICATE_RECV_BASE_RUNNING: return "base_running";
  case REPLICATE_RECV_BASE_HEADER: return "base_header";
  case REPLICATE_RECV_BASE_TOO_LARGE: return "base_too_large";
  case REPLICATE_RECV_BASE_LENGTH: return "base_length";
  case REPLICATE_RECV_BASE_TRAILING: return "base_trailing";
  case REPLICATE_RECV_BASE_TRUNCATED: return "base_truncated";
  case REPLICATE_RECV_BASE_STORE: return "base_store";
  case REPLICATE_RECV_BASE_COMMIT: return "base_commit";
  case REPLICATE_RECV_BASE_MOVED: return "base_moved";
  case REPLICATE_RECV_SINGLE_FRAMES: return "single_frames";
  case REPLICATE_RECV_LAST: break;
  }
  return "unknown";
}

/* ---------------------------------------------------------------------- */
/* The primary's clock (PRIMARY'S CLOCK) */

/* The primary's time now, on its clock; our realtime when not known. */
static int64_t primary_clock_now(const replicate_receiver *rx)
{
  const rx_primary_clock *c = &rx->clock;
  if (!c->known)
    return rx_now_ns(rx);
  return c->primary_ns + (rx_mono_ns() - c->mono_ns);
}

/* A frame or heartbeat from the primary just arrived. */
static void primary_clock_note(replicate_receiver *rx,
                               const replicate_frame_info *info)
{
  rx_primary_clock *c = &rx->clock;
  bool heartbeat = info->kind == REPLICATE_KIND_HEARTBEAT;
  int64_t sent_ns = heartbeat ? info->heartbeat_time_ns : info->commit_time_ns;
  if (sent_ns <= 0)
    return;
  /* A heartbeat is made as it is sent: it resets the estimate (the
   * primary's clock may have been stepped back); a commit frame may have
   * waited, so it only moves the estimate forward. */
  if (heartbeat || !c->known || sent_ns > primary_clock_now(rx)) {
    c->primary_ns = sent_ns;
    c->mono_ns = rx_mono_ns();
    c->known = true;
  }
  c->skew_ns[c->skew_next] = rx_now_ns(rx) - sent_ns;
  c->skew_next = (c->skew_next + 1) % RX_SKEW_SAMPLES;
  if (c->skew_len < RX_SKEW_SAMPLES)
    c->skew_len++;
}

/* Our clock minus the primary's, estimated; false before any sample. */
static bool primary_clock_skew(const rx_primary_clock *c, double *seconds)
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
/* Frames received and not applied (I2) */

int rx_pending_push(replicate_receiver *rx, uint64_t seq, int64_t commit_ns,
                    uint64_t bytes)
{
  if (rx->pending_len == rx->pending_cap) {
    size_t cap = rx->pending_cap ? rx->pending_cap * 2 : 64;
    rx_pending_frame *ring = malloc(cap * sizeof *ring);
    if (!ring)
      return ENOMEM;
    for (size_t i = 0; i < rx->pending_len; i++)
      ring[i] = rx->pending[(rx->pending_head + i) % rx->pending_cap];
    free(rx->pending);
    rx->pending = ring;
    rx->pending_cap = cap;
    rx->pending_head = 0;
  }
  size_t tail = (rx->pending_head + rx->pending_len) % rx->pending_cap;
  rx->pending[tail] = (rx_pending_frame){seq, commit_ns, bytes};
  rx->pending_len++;
  rx->pending_bytes += bytes;
  return 0;
}

/* Drop the pending frames up to seq (applied). */
void rx_pending_pop_through(replicate_receiver *rx, uint64_t seq)
{
  while (rx->pending_len && rx->pending[rx->pending_head].seq <= seq) {
    if (rx->due_len) {
      rx->due_len--;
      rx->due_bytes -= rx->pending[rx->pending_head].bytes;
    }
    rx->pending_bytes -= rx->pending[rx->pending_head].bytes;
    rx->pending_head = (rx->pending_head + 1) % rx->pending_cap;
    rx->pending_len--;
  }
}

void rx_pending_clear(replicate_receiver *rx)
{
  rx->pending_head = 0;
  rx->pending_len = 0;
  rx->pending_bytes = 0;
  rx->due_len = 0;
  rx->due_bytes = 0;
}

uint64_t rx_apply_limit(replicate_receiver *rx, int64_t *wait_ns)
{
  *wait_ns = 0;
  if (!rx->delay_ns || rx->apply_all)
    return rx->received.seq;
  int64_t now = primary_clock_now(rx);
  while (rx->due_len < rx->pending_len) {
    const rx_pending_frame *f =
        &rx->pending[(rx->pending_head + rx->due_len) % rx->pending_cap];
    if (f->commit_ns > 0 && f->commit_ns + rx->delay_ns > now) {
      *wait_ns = f->commit_ns + rx->delay_ns - now;
      break;
    }
    rx->due_len++;
    rx->due_bytes += f->bytes;
  }
  uint64_t limit = rx->due_len
      ? rx->pending[(rx->pending_head + rx->due_len - 1) % rx->pending_cap].seq
      : rx->applied.seq;
  if (rx->holding && limit > rx->hold_seq) {
    limit = rx->hold_seq;
    *wait_ns = 0;
  }
  return limit;
}

/* Under mu: a merged frame ending at commit time commit_ns that a delayed
 * standby cannot apply yet (it cannot wait in the receive log). */
static bool too_young_to_merge(replicate_receiver *rx, int64_t commit_ns)
{
  if (rx->on_received) /* every commit is passed on as it came */
    return true;
  return rx->delay_ns && !rx->apply_all &&
         commit_ns + rx->delay_ns > primary_clock_now(rx);
}

/* ---------------------------------------------------------------------- */
/* Open and close */

/* replicate_log_open repaired a damaged receive log: nothing committed is
 * lost (the store holds it); the primary resends what was not applied. */
static void log_repaired(void *ctx, const replicate_log_repair *r)
{
  char line[512];
  rx_logf(ctx, "standby: receive log repaired: %s",
          replicate_log_repair_describe(r, line, sizeof line));
}

/* Frames store_pos.seq + 1 .. newest wait in the log: account for them. */
static int recover_pending(replicate_receiver *rx, const loom_position *store_pos,
                           uint64_t newest)
{
  replicate_buf buf = {0};
  int rc = 0;
  for (uint64_t seq = store_pos->seq + 1; seq <= newest; seq++) {
    replicate_frame_info info;
    rc = replicate_log_read(rx->log, seq, &buf);
    if (rc == 0)
      rc = replicate_frame_parse_header(buf.data, buf.len, NULL, &info);
    if (rc == 0 && seq == store_pos->seq + 1 &&
        (!loom_position_same(&info.before, store_pos) || info.epoch < store_pos->epoch))
      rc = REPLICATE_EPOSITION; /* a history the store does not have */
    if (rc == 0)
      rc = rx_pending_push(rx, info.after.seq, info.first_commit_time_ns,
                           buf.len);
    if (rc)
      break;
    /* A store that held nothing (or no history id) follows the history of
     * the frames it took: it adopts it when it applies them. */
    if (seq == store_pos->seq + 1 &&
        (store_pos->seq == 0 || loom_history_is_none(&rx->lineage.history)))
      rx->lineage = (loom_lineage){.history = info.history};
    rx->received = position_of(&info);
  }
  replicate_buf_free(&buf);
  return rc;
}

/* Find received from the log (see RECOVERY). */
static int recover_received(replicate_receiver *rx)
{
  loom_position store_pos;
  loom_store_position(rx->store, &store_pos);
  loom_store_lineage(rx->store, &rx->lineage);
  rx->applied = store_pos;
  rx->received = store_pos;
  rx->computed = store_pos; /* R3 checked the hashes against it */

  replicate_log_stats st;
  replicate_log_get_stats(rx->log, &st);
  if (st.records == 0)
    return 0;
  if (st.newest_seq == store_pos.seq && st.newest_epoch <= store_pos.epoch)
    return 0; /* everything in the log is applied; appends continue it */
  if (st.newest_seq <= store_pos.seq || st.newest_epoch < store_pos.epoch ||
      st.oldest_seq > store_pos.seq + 1)
    return replicate_log_reset(rx->log); /* does not connect to the store */

  int rc = recover_pending(rx, &store_pos, st.newest_seq);
  if (rc) {
    rx_logf(rx, "standby: receive log does not continue the image (%s): "
            "reset", replicate_strerror(rc));
    rx_pending_clear(rx);
    rx->received = store_pos;
    loom_store_lineage(rx->store, &rx->lineage);
    return replicate_log_reset(rx->log);
  }
  return 0;
}

/* Copy the options, defaults filled in. */
static int receiver_configure(replicate_receiver *rx,
                              const replicate_receiver_options *opt)
{
  rx->log_fn = opt->log_fn;
  rx->log_ctx = opt->log_ctx;
  rx->on_bad_pages = opt->on_bad_pages;
  rx->bad_pages_ctx = opt->bad_pages_ctx;
  rx->on_received = opt->on_received;
  rx->received_ctx = opt->received_ctx;
  rx->on_position = opt->on_position;
  rx->position_ctx = opt->position_ctx;
  rx->now_ns = opt->now_ns ? opt->now_ns : realtime_ns;
  rx->io = opt->io;
  rx->commit_log_bytes = opt->commit_log_bytes;
  rx->log_segment_bytes =
      opt->log_segment_bytes ? opt->log_segment_bytes : UINT64_C(16) << 20;
  rx->limits = opt->limits ? *opt->limits : replicate_limits_default();
  rx->max_unapplied_bytes = opt->max_unapplied_bytes
                                ? opt->max_unapplied_bytes
                                : (UINT64_C(1) << 30);
  rx->promote_max_lag = opt->promote_max_lag ? opt->promote_max_lag : 100;
  rx->delay_ns = opt->apply_delay_seconds > 0
                     ? (int64_t)(opt->apply_delay_seconds * 1e9) : 0;
  pthread_mutex_init(&rx->recv_mu, NULL);
  pthread_mutex_init(&rx->store_mu, NULL);
  pthread_mutex_init(&rx->mu, NULL);
  loom_cond_init_mono(&rx->cond); /* the applier's back-off waits on it */
  rx->dir = strdup(opt->dir);
  return rx->dir ? 0 : ENOMEM;
}

/* Group apply's cap: a merged record fits in half the commit log's ring
 * (a record larger than the ring would make the store drain its log and
 * grow the ring for it, then shrink it back: a checkpoint and two metas
 * per merged apply), and the next record can be written while it is
 * checkpointed. The default ring (64 MiB) gives RX_APPLY_MERGE_PAGES. */
static uint64_t merge_pages_for(loom_store *store)
{
  loom_log_stats st;
  loom_store_log_stats(store, &st);
  uint64_t pages = st.size / 2 / LOOM_PAGE_SIZE;
  return pages < 1 ? 1 : pages > RX_APPLY_MERGE_PAGES ? RX_APPLY_MERGE_PAGES : pages;
}

/* Open the store, the receive log, the decoders; recover. */
static int receiver_open_parts(replicate_receiver *rx)
{
  loom_store_options so = {.flags = LOOM_CREATE | LOOM_APPLY_ASYNC,
                           .io = rx->io, .log_bytes = rx->commit_log_bytes};
  int rc = loom_store_open_with(rx->dir, &so, &rx->store);
  if (rc == 0)
    rx->apply_merge_pages = merge_pages_for(rx->store);
  if (rc == 0) {
    /* No size bound from the log: the applier's lag is bounded by
     * max_unapplied_bytes instead, and retention trims behind it. */
    replicate_log_options lo = {.segment_bytes = rx->log_segment_bytes,
                                .max_bytes = UINT64_MAX,
                                .on_repair = log_repaired, .repair_ctx = rx};
    rc = replicate_log_open(rx->dir, &lo, rx->io, &rx->log);
  }
  if (rc == 0 && rx->on_received)
    replicate_log_hold(rx->log, 1); /* before the applier may trim: its
                                       consumer moves it (receiver.h) */
  if (rc == 0)
    rc = replicate_decoder_new(&rx->limits, &rx->recv_dec);
  if (rc == 0)
    rc = replicate_decoder_new(&rx->limits, &rx->apply_dec);
  if (rc == 0)
    rc = replicate_coalescer_new(RX_APPLY_MERGE_PAGES, &rx->apply_merge);
  if (rc == 0)
    rc = recover_received(rx);
  return rc;
}

int replicate_receiver_open(const replicate_receiver_options *opt,
                            replicate_receiver **out)
{
  if (!opt || !opt->dir || !out)
    return REPLICATE_EINVAL;
  replicate_receiver *rx = calloc(1, sizeof *rx);
  if (!rx)
    return ENOMEM;
  rx->rot_page = UINT64_MAX;
  int rc = receiver_configure(rx, opt);
  if (rc == 0)
    rc = receiver_open_parts(rx);
  if (rc == 0) {
    loom_store_lineage(rx->store, &rx->lineage);
    rx->primary_epoch = rx->received.epoch;
    rx->primary_seq = rx->received.seq;
    rx->primary_commit_ns = rx->received.commit_time_ns;
    rc = pthread_create(&rx->applier, NULL, rx_applier_main, rx);
    rx->applier_started = rc == 0;
  }
  if (rc == 0) { /* the position open recovered (or a newer one) */
    pthread_mutex_lock(&rx->mu);
    rx_positions_moved(rx);
    pthread_mutex_unlock(&rx->mu);
  }
  if (rc) {
    replicate_receiver_close(rx);
    return rc;
  }
  *out = rx;
  return 0;
}

/* Stop the applier once it applied what it can; its last error when
 * frames stay unapplied. */
static int stop_applier(replicate_receiver *rx)
{
  if (!rx->applier_started)
    return 0;
  pthread_mutex_lock(&rx->mu);
  rx->stopping = true;
  pthread_cond_broadcast(&rx->cond);
  pthread_mutex_unlock(&rx->mu);
  pthread_join(rx->applier, NULL);
  if (rx->applied.seq < rx->received.seq && rx->last_apply_error)
    return rx->last_apply_error;
  return 0;
}

int replicate_receiver_close(replicate_receiver *rx)
{
  if (!rx)
    return 0;
  int first = stop_applier(rx);
  if (rx->store) {
    int rc = loom_store_sync(rx->store);
    if (rc && !first)
      first = rc;
  }
  if (rx->log) {
    int rc = replicate_log_close(rx->log);
    if (rc && !first)
      first = rc;
  }
  if (rx->store) {
    int rc = loom_store_close(rx->store);
    if (rc && !first)
      first = rc;
  }
  replicate_decoder_free(rx->recv_dec);
  replicate_decoder_free(rx->apply_dec);
  replicate_coalescer_free(rx->apply_merge);
  pthread_cond_destroy(&rx->cond);
  pthread_mutex_destroy(&rx->mu);
  pthread_mutex_destroy(&rx->store_mu);
  pthread_mutex_destroy(&rx->recv_mu);
  free(rx->pending);
  free(rx->dir);
  free(rx->rb_pages);
  free(rx);
  return first;
}

/* ---------------------------------------------------------------------- */
/* Frames */

void rx_note_divergence(replicate_receiver *rx, int rc,
                        const loom_history *theirs)
{
  /* In the log once a second at most, and in status. */
  if (rx->diverged != rc || rx_mono_ns() - rx->diverged_mono_ns > RX_NS_PER_S) {
    char ours_hex[33], theirs_hex[33];
    loom_history_hex(&rx->lineage.history, ours_hex);
    loom_history_hex(theirs, theirs_hex);
    rx_logf(rx, "standby: refused input of history %s that would "
            "move this standby (history %s, epoch %llu, seq %llu) backwards "
            "or sideways: %s", theirs_hex, ours_hex,
            (unsigned long long)rx->received.epoch,
            (unsigned long long)rx->received.seq, replicate_strerror(rc));
  }
  rx->diverged = rc;
  rx->diverged_at_ns = rx_now_ns(rx);
  rx->diverged_mono_ns = rx_mono_ns();
  rx->divergences++;
}

/* Under mu: input that is not a divergence came in (a frame, a duplicate,
 * a gap, a heartbeat, a base image). A divergence shown in status is
 * cleared once such input comes DIVERGED_HOLD_NS after the last refusal:
 * the sender that caused it has been quiet that long. */
void rx_note_sound_input(replicate_receiver *rx)
{
  if (rx->diverged && rx_mono_ns() - rx->diverged_mono_ns > DIVERGED_HOLD_NS)
    rx->diverged = 0;
}

/* Under mu: input of history h is being taken in; a standby that held
 * nothing follows h from now on (the store adopts it durably with the
 * first frame or base image it applies). */
static void follow_history(replicate_receiver *rx, const loom_history *h)
{
  if (!loom_history_equal(&rx->lineage.history, h)) {
    memset(&rx->lineage, 0, sizeof rx->lineage);
    rx->lineage.history = *h;
  }
}

/* Under mu: what we know of the primary, from a frame or heartbeat. */
static void primary_heard(replicate_receiver *rx,
                          const replicate_frame_info *info)
{
  primary_clock_note(rx, info);
  if (info->epoch > rx->primary_epoch) {
    rx->primary_epoch = info->epoch;
    rx->primary_seq = info->after.seq;
    rx->primary_commit_ns = info->commit_time_ns;
  } else if (info->after.seq >= rx->primary_seq) {
    rx->primary_seq = info->after.seq;
    rx->primary_commit_ns = info->commit_time_ns;
  }
}

/* Under mu: step 2, placing the frame. REPLICATE_RECV_OK when it is to be
 * taken in (the outcome is then not filled yet). */
static replicate_recv_result place_frame(replicate_receiver *rx,
                                         const replicate_frame_info *info,
                                         replicate_recv_outcome *out)
{
  rx->last_contact_ns = rx_now_ns(rx);
  int place = replicate_place_frame(&rx->lineage.history, &rx->received, info);
  replicate_recv_result r = REPLICATE_RECV_OK;
  int code = 0;
  if (place == REPLICATE_ESTALE_EPOCH) {
    r = REPLICATE_RECV_STALE_EPOCH;
  } else if (replicate_is_divergence(place)) {
    rx_note_divergence(rx, place, &info->history);
    r = REPLICATE_RECV_DIVERGED;
    code = place;
  } else if (rx->promoted) {
    r = REPLICATE_RECV_PROMOTED;
  } else {
    rx_note_sound_input(rx);
    primary_heard(rx, info);
    if (info->kind == REPLICATE_KIND_HEARTBEAT) {
      rx->heartbeats++;
      r = REPLICATE_RECV_HEARTBEAT;
    } else if (place == REPLICATE_EDUPLICATE) {
      rx->duplicates++;
      r = REPLICATE_RECV_DUPLICATE;
    } else if (rx->base_active) {
      r = REPLICATE_RECV_BASE_ACTIVE;
    } else if (place == REPLICATE_EPOSITION) {
      /* A frame from further ahead is a gap; one that begins behind the
       * received seq and ends past it an overlap (a merged frame whose
       * answer was lost): either way the primary resends from here. */
      r = info->before.seq > rx->received.seq ? REPLICATE_RECV_GAP
                                              : REPLICATE_RECV_OVERLAP;
      code = REPLICATE_EPOSITION;
    }
  }
  if (r == REPLICATE_RECV_OK)
    return r;
  rx_outcome(rx, r, code, out);
  out->input_epoch = info->epoch;
  out->frame_epoch = info->epoch;
  out->frame_before = info->before;
  if (r == REPLICATE_RECV_BASE_ACTIVE)
    out->retry_after = 1;
  return r;
}

/* Under recv_mu: step 3, the frame made durable in the receive log. */
static int append_frame(replicate_receiver *rx, const void *bytes, size_t len)
{
  int rc = replicate_log_append(rx->log, bytes, len);
  if (rc == REPLICATE_ENOT_CONTIGUOUS) {
    /* The log's chain does not end at received: it holds only applied
     * frames (a base image or a coalesced frame moved the store past it).
     * Start it afresh when that loses nothing unapplied, and try again. */
    pthread_mutex_lock(&rx->mu);
    bool all_applied = rx->applied.seq == rx->received.seq;
    pthread_mutex_unlock(&rx->mu);
    if (all_applied && replicate_log_reset(rx->log) == 0)
      rc = replicate_log_append(rx->log, bytes, len);
  }
  return rc;
}

/* Under mu: step 4, or why step 3 failed. */
static void frame_appended(replicate_receiver *rx,
                           const replicate_frame_info *info, size_t len,
                           int rc, replicate_recv_outcome *out)
{
  if (rc) {
    rx_logf(rx, "standby: receive log append of frame %llu: %s",
            (unsigned long long)info->after.seq, replicate_strerror(rc));
    replicate_recv_result r = REPLICATE_RECV_WRITE_FAILED;
    if (rx_is_disk_full(rc)) {
      r = REPLICATE_RECV_DISK_FULL;
    } else if (rx_is_fatal(rc)) {
      rx_set_fatal(rx, rc); /* a failed fsync of the receive log */
      r = REPLICATE_RECV_STORAGE_FAILED;
    }
    rx_outcome(rx, r, rc, out);
    return;
  }
  if (rx_pending_push(rx, info->after.seq, info->first_commit_time_ns, len)) {
    /* Durable but untracked: lag accounting is off by this frame. */
    rx_logf(rx, "standby: out of memory tracking frame %llu",
            (unsigned long long)info->after.seq);
  }
  rx->received = position_of(info);
  rx_positions_moved(rx);
  rx->frames_received++;
  rx->bytes_received += len;
  pthread_cond_broadcast(&rx->cond);
  rx_outcome(rx, REPLICATE_RECV_OK, 0, out);
}

/* Under recv_mu, with the frame decoded. */
static void take_frame(replicate_receiver *rx, const replicate_frame *frame,
                       const void *bytes, size_t len,
                       replicate_recv_outcome *out)
{
  const replicate_frame_info *info = &frame->info;
  rx_rollback(rx);

  pthread_mutex_lock(&rx->mu);
  if (rx->want_base && !rx->promoted) {
    /* Too many bad pages for a repair: a base image is the way back. */
    rx_outcome(rx, REPLICATE_RECV_APPLY_STOPPED, REPLICATE_EPAGE_HASH, out);
    pthread_mutex_unlock(&rx->mu);
    return;
  }
  if (place_frame(rx, info, out) != REPLICATE_RECV_OK) {
    pthread_mutex_unlock(&rx->mu);
    return;
  }
  follow_history(rx, &info->history);
  if ((info->flags & REPLICATE_FRAME_COALESCED) &&
      too_young_to_merge(rx, info->commit_time_ns)) {
    rx_outcome(rx, REPLICATE_RECV_SINGLE_FRAMES, 0, out);
    out->frame_epoch = info->epoch;
    out->frame_before = info->before;
    pthread_mutex_unlock(&rx->mu);
    return;
  }
  if (info->flags & REPLICATE_FRAME_COALESCED) {
    pthread_mutex_unlock(&rx->mu);
    rx_apply_coalesced(rx, frame, len, out);
    return;
  }
  /* Back-pressure on what waits to be applied: with a delay, only the
   * frames already due count (the others wait by design). */
  int64_t unused;
  if (rx->delay_ns)
    rx_apply_limit(rx, &unused);
  uint64_t waiting = rx->delay_ns ? rx->due_bytes : rx->pending_bytes;
  if (waiting + len > rx->max_unapplied_bytes &&
      (rx->delay_ns ? rx->due_len : rx->pending_len) > 0) {
    rx_outcome(rx, REPLICATE_RECV_BEHIND, 0, out);
    out->retry_after = 1;
    pthread_mutex_unlock(&rx->mu);
    return;
  }
  pthread_mutex_unlock(&rx->mu);

  int64_t began = rx_mono_ns();
  int rc = append_frame(rx, bytes, len);
  double took = (double)(rx_mono_ns() - began) / 1e9;

  pthread_mutex_lock(&rx->mu);
  replicate_duration_observe(&rx->append_durations, took);
  frame_appended(rx, info, len, rc, out);
  pthread_mutex_unlock(&rx->mu);
  if (rc == 0 && rx->on_received) /* still under recv_mu: in seq order */
    rx->on_received(rx->received_ctx, bytes, len);
}

void replicate_receiver_frame(replicate_receiver *rx, const void *bytes,
                              size_t len, replicate_recv_outcome *out)
{
  replicate_frame frame;
  pthread_mutex_lock(&rx->recv_mu);
  int rc = replicate_frame_decode(rx->recv_dec, bytes, len, &frame);
  if (rc) {
    pthread_mutex_unlock(&rx->recv_mu);
    memset(out, 0, sizeof *out);
    out->result = REPLICATE_RECV_MALFORMED;
    out->code = rc;
    out->retry_after = rc == ENOMEM ? 1 : 0;
    return;
  }
  take_frame(rx, &frame, bytes, len, out);
  pthread_mutex_unlock(&rx->recv_mu);
}

/* ---------------------------------------------------------------------- */
/* Promotion */

/* Under mu: why this standby may not be promoted (unless forced), or
 * REPLICATE_RECV_OK. A standby that holds nothing would fence its primary
 * with an empty image; one far behind would lose what it never received. */
static replicate_recv_result promote_refusal(const replicate_receiver *rx)
{
  if (rx->received.seq == 0)
    return REPLICATE_RECV_PROMOTE_EMPTY;
  uint64_t behind = rx->primary_seq > rx->received.seq
                        ? rx->primary_seq - rx->received.seq : 0;
  if (behind > rx->promote_max_lag)
    return REPLICATE_RECV_PROMOTE_BEHIND;
  return REPLICATE_RECV_OK;
}

/* Under recv_mu and store_mu: a new epoch; *pos and *lineage after it. */
static int start_epoch(replicate_receiver *rx, loom_position *pos,
                       loom_lineage *lineage)
{
  int rc = loom_store_sync(rx->store);
  loom_store_position(rx->store, pos);
  if (rc == 0)
    rc = loom_store_ensure_history(rx->store); /* forced at seq 0: a new one */
  if (rc == 0)
    rc = loom_store_set_epoch(rx->store, pos->epoch + 1);
  loom_store_position(rx->store, pos);
  loom_store_lineage(rx->store, lineage);
  return rc;
}

/* Under recv_mu and mu, a delayed standby (DELAYED STANDBY): forced, the
 * delay is over (everything received is applied next); else apply what is
 * due now and discard the younger commits, so that what follows applies
 * nothing more. */
static void promote_settle_delay(replicate_receiver *rx, bool force)
{
  if (!rx->delay_ns)
    return;
  if (force) {
    rx->apply_all = true;
    pthread_cond_broadcast(&rx->cond);
    return;
  }
  int64_t unused;
  rx->hold_seq = rx_apply_limit(rx, &unused);
  rx->holding = true;
  pthread_cond_broadcast(&rx->cond);
  while (!rx->apply_failed && !rx->fatal &&
         (rx->applier_busy || rx->applied.seq < rx->hold_seq))
    pthread_cond_wait(&rx->cond, &rx->mu);
  if (!rx->apply_failed && !rx->fatal && rx->received.seq > rx->applied.seq) {
    uint64_t n = rx->received.seq - rx->applied.seq;
    rx_logf(rx, "standby: promotion: %llu received commits (seq %llu..%llu) are younger "
            "than the apply delay and are discarded (promote with force applies them)",
            (unsigned long long)n, (unsigned long long)rx->applied.seq + 1,
            (unsigned long long)rx->received.seq);
    rx->delay_discarded += n;
    rx->received = rx->applied; /* the receive log is reset with the new epoch */
    rx_positions_moved(rx);
    rx_pending_clear(rx);
  }
  rx->holding = false;
}

/* Under recv_mu: receipt is paused; apply everything received, then
 * start the new epoch. Received frames that failed to apply are rolled
 * back: what counts for PROMOTE_EMPTY is then what was applied. */
static void promote_now(replicate_receiver *rx, bool force,
                        replicate_recv_outcome *out)
{
  promote_settle_delay(rx, force);
  rx_wait_applied(rx);
  pthread_mutex_unlock(&rx->mu);
  rx_rollback(rx);
  pthread_mutex_lock(&rx->mu);
  if (!force && rx->applied.seq == 0) {
    rx_outcome(rx, REPLICATE_RECV_PROMOTE_EMPTY, 0, out);
    return;
  }
  pthread_mutex_unlock(&rx->mu);

  loom_position pos;
  loom_lineage lineage;
  pthread_mutex_lock(&rx->store_mu);
  int rc = start_epoch(rx, &pos, &lineage);
  pthread_mutex_unlock(&rx->store_mu);

  if (rc) {
    pthread_mutex_lock(&rx->mu);
    rx_logf(rx, "standby: promotion failed: %s", loom_strerror(rc));
    rx_outcome(rx, REPLICATE_RECV_PROMOTE_FAILED, rc, out);
    return;
  }
  rx_log_reset(rx);
  pthread_mutex_lock(&rx->mu);
  rx->promoted = true;
  rx->promoted_at_ns = rx_now_ns(rx);
  rx->lineage = lineage;
  rx->applied = pos;
  rx->received = pos;
  rx_positions_moved(rx);
  rx_note_computed(rx, &pos, false, 0, UINT64_MAX);
  rx_pending_clear(rx);
  rx_logf(rx, "standby: promoted to primary at epoch %llu, seq %llu",
          (unsigned long long)pos.epoch, (unsigned long long)pos.seq);
  rx_outcome(rx, REPLICATE_RECV_OK, 0, out);
  pthread_cond_broadcast(&rx->cond);
}

void replicate_receiver_promote(replicate_receiver *rx, bool force,
                                replicate_recv_outcome *out)
{
  pthread_mutex_lock(&rx->recv_mu);
  pthread_mutex_lock(&rx->mu);
  replicate_recv_result refusal = force ? REPLICATE_RECV_OK : promote_refusal(rx);
  if (rx->promoted)
    rx_outcome(rx, REPLICATE_RECV_ALREADY_PRIMARY, 0, out);
  else if (refusal != REPLICATE_RECV_OK)
    rx_outcome(rx, refusal, 0, out);
  else if (rx->base_active)
    rx_outcome(rx, REPLICATE_RECV_BASE_ACTIVE, 0, out);
  else
    promote_now(rx, force, out); /* returns under mu */
  pthread_mutex_unlock(&rx->mu);
  pthread_mutex_unlock(&rx->recv_mu);
}

/* ---------------------------------------------------------------------- */
/* Snapshots and status */

int replicate_receiver_snapshot_open(replicate_receiver *rx,
                                     loom_snapshot **out)
{
  pthread_mutex_lock(&rx->store_mu);
  pthread_mutex_lock(&rx->mu);
  bool busy = rx->base_active;
  pthread_mutex_unlock(&rx->mu);
  /* The image catches up with the applied position first (the store
   * writes it after each commit point): a backup begun after the status
   * said applied N holds N or later. */
  int rc = busy ? EBUSY : loom_store_sync(rx->store);
  if (rc == 0)
    rc = loom_store_snapshot_open(rx->store, out);
  if (rc == 0) {
    pthread_mutex_lock(&rx->mu);
    rx->snapshots_open++;
    pthread_mutex_unlock(&rx->mu);
  }
  pthread_mutex_unlock(&rx->store_mu);
  return rc;
}

int replicate_receiver_repair(replicate_receiver *rx, const uint8_t *answer,
                              size_t len, const uint64_t *pages, uint64_t count)
{
  if (!rx)
    return REPLICATE_EINVAL;
  pthread_mutex_lock(&rx->store_mu);
  pthread_mutex_lock(&rx->mu);
  bool busy = rx->base_active;
  pthread_mutex_unlock(&rx->mu);
  int rc = busy ? EBUSY : replicate_repair_pages(rx->store, answer, len, pages, count);
  pthread_mutex_unlock(&rx->store_mu);
  return rc;
}

/* Outside every lock: hold applies off as a base image does (I3), the
 * applier idle. 0, EBUSY or EPERM. */
static int repair_claim(replicate_receiver *rx)
{
  pthread_mutex_lock(&rx->recv_mu);
  pthread_mutex_lock(&rx->mu);
  int rc = rx->promoted ? EPERM : rx->base_active ? EBUSY : 0;
  if (!rc)
    rx->base_active = true;
  while (!rc && rx->applier_busy)
    pthread_cond_wait(&rx->cond, &rx->mu);
  pthread_mutex_unlock(&rx->mu);
  pthread_mutex_unlock(&rx->recv_mu);
  return rc;
}

/* Under mu, after a repair or rewind moved the store from before to
 * after (or not): the receiver follows the store. */
static void repair_settle(replicate_receiver *rx, int rc, const loom_position *before,
                          const loom_position *after, uint64_t moved)
{
  if (!loom_position_same_epoch(before, after)) {
    rx->applied = *after;
    rx->received = *after;
    rx_positions_moved(rx);
    rx_pending_clear(rx);
    rx->need_sync = true;
    rx->need_sync_ns = rx_mono_ns();
    rx_logf(rx, "standby: repaired from the upstream: %llu pages moved, from seq %llu "
            "to seq %llu", (unsigned long long)moved, (unsigned long long)before->seq,
            (unsigned long long)after->seq);
  }
  if (!rc) {
    rx->apply_failed = false;
    rx->rot_page = UINT64_MAX;
    rx->computed = *after;
  }
  rx->base_active = false;
  pthread_cond_broadcast(&rx->cond);
}

/* A repair (lineage NULL) or a rewind to the leader of lineage, applies
 * held off meanwhile. */
static int repair_run(replicate_receiver *rx, const replicate_repair_source *src,
                      const uint64_t *bad, uint64_t nbad, const loom_lineage *lineage,
                      uint64_t *moved, char *why, size_t why_len)
{
  *moved = 0;
  if (!rx || !src)
    return REPLICATE_EINVAL;
  int rc = repair_claim(rx);
  if (rc)
    return rc;
  pthread_mutex_lock(&rx->mu);
  uint64_t allowed = rx->rewind_epoch;
  loom_position received = rx->received;
  pthread_mutex_unlock(&rx->mu);
  loom_position before, after;
  pthread_mutex_lock(&rx->store_mu);
  loom_store_position(rx->store, &before);
  rc = lineage ? replicate_rewind_from(rx->store, src, lineage, allowed, moved, why, why_len)
               : replicate_repair_from(rx->store, src, bad, nbad, moved, why, why_len);
  loom_store_position(rx->store, &after);
  pthread_mutex_unlock(&rx->store_mu);
  bool jumped = !loom_position_same_epoch(&before, &after);
  if (jumped)
    rx_log_reset(rx); /* its frames start below the new position */
  pthread_mutex_lock(&rx->mu);
  if (lineage && jumped) { /* committed (a read-back may still have failed) */
    rx->lineage = *lineage;
    rx_note_rewound(rx, replicate_rewound_commits(&received, &after, lineage),
                    received.seq);
  }
  repair_settle(rx, rc, &before, &after, *moved);
  pthread_mutex_unlock(&rx->mu);
  return rc;
}

int replicate_receiver_repair_from(replicate_receiver *rx,
                                   const replicate_repair_source *src,
                                   const uint64_t *bad, uint64_t nbad, uint64_t *moved,
                                   char *why, size_t why_len)
{
  return repair_run(rx, src, bad, nbad, NULL, moved, why, why_len);
}

int replicate_receiver_rewind_from(replicate_receiver *rx,
                                   const replicate_repair_source *src,
                                   const loom_lineage *lineage, uint64_t *moved,
                                   char *why, size_t why_len)
{
  if (!lineage)
    return REPLICATE_EINVAL;
  return repair_run(rx, src, NULL, 0, lineage, moved, why, why_len);
}

void replicate_receiver_snapshot_close(replicate_receiver *rx,
                                       loom_snapshot *snap)
{
  loom_snapshot_close(snap);
  pthread_mutex_lock(&rx->mu);
  rx->snapshots_open--;
  pthread_mutex_unlock(&rx->mu);
}

bool replicate_receiver_promoted(replicate_receiver *rx)
{
  pthread_mutex_lock(&rx->mu);
  bool promoted = rx->promoted;
  pthread_mutex_unlock(&rx->mu);
  return promoted;
}

void replicate_receiver_lineage(replicate_receiver *rx, loom_lineage *out)
{
  pthread_mutex_lock(&rx->mu);
  *out = rx->lineage;
  pthread_mutex_unlock(&rx->mu);
}

replicate_log *replicate_receiver_log(replicate_receiver *rx)
{
  return rx->log; /* set at open, never replaced: no lock */
}

/* Under mu: lag in frames, bytes and seconds. */
static void lag_locked(replicate_receiver *rx, replicate_receiver_status *s)
{
  s->primary_seq = rx->primary_seq > rx->received.seq ? rx->primary_seq
                                                      : rx->received.seq;
  s->lag_frames = s->primary_seq > rx->applied.seq
                      ? s->primary_seq - rx->applied.seq : 0;
  s->lag_bytes = rx->pending_bytes;
  /* Age of the oldest commit heard of and not applied, on the primary's
   * clock: the oldest pending frame's, or, when only a heartbeat told us
   * of newer commits, the primary's newest commit (all we know of their
   * times). */
  int64_t oldest_ns = 0;
  if (rx->pending_len)
    oldest_ns = rx->pending[rx->pending_head].commit_ns;
  else if (s->lag_frames)
    oldest_ns = rx->primary_commit_ns;
  if (s->lag_frames && oldest_ns > 0) {
    int64_t age = primary_clock_now(rx) - oldest_ns;
    s->lag_seconds = age > 0 ? (double)age / 1e9 : 0.0;
  }
  s->clock_skew_known = primary_clock_skew(&rx->clock, &s->clock_skew_seconds);
}

void replicate_receiver_get_status(replicate_receiver *rx,
                                   replicate_receiver_status *s)
{
  memset(s, 0, sizeof *s);
  pthread_mutex_lock(&rx->mu);
  s->promoted = rx->promoted;
  s->promoted_at_ns = rx->promoted_at_ns;
  s->received = rx->received;
  s->applied = rx->applied;
  s->history = rx->lineage.history;
  s->primary_epoch = rx->primary_epoch;
  s->primary_commit_ns = rx->primary_commit_ns;
  s->last_contact_ns = rx->last_contact_ns;
  lag_locked(rx, s);
  s->base_active = rx->base_active;
  s->apply_stopped = rx->apply_failed;
  s->fatal_error = rx->fatal;
  s->last_apply_error = rx->last_apply_error;
  s->last_apply_error_at_ns = rx->last_apply_error_at_ns;
  s->diverged = rx->diverged;
  s->diverged_at_ns = rx->diverged_at_ns;
  s->divergences = rx->divergences;
  s->frames_received = rx->frames_received;
  s->frames_applied = rx->frames_applied;
  s->apply_commits = rx->apply_commits;
  s->apply_durations = rx->apply_durations;
  s->append_durations = rx->append_durations;
  s->apply_failures = rx->apply_failures;
  s->duplicates = rx->duplicates;
  s->heartbeats = rx->heartbeats;
  s->bases = rx->bases;
  s->bytes_received = rx->bytes_received;
  s->rewound_frames = rx->rewound_frames;
  s->rewound_from_seq = rx->rewound_from_seq;
  s->rewound_at_ns = rx->rewound_at_ns;
  s->computed = rx->computed;
  s->rot_page = rx->rot_page;
  s->readback_mismatches = rx->readback_mismatches;
  s->apply_delay_seconds = (double)rx->delay_ns / 1e9;
  if (rx->delay_ns && !rx->apply_all) {
    int64_t unused;
    rx_apply_limit(rx, &unused);
    s->delay_waiting_frames = rx->pending_len - rx->due_len;
  }
  s->delay_discarded = rx->delay_discarded;
  pthread_mutex_unlock(&rx->mu);
  loom_store_log_stats(rx->store, &s->commit_log); /* its own locks */
  replicate_log_stats st;
  replicate_log_get_stats(rx->log, &st);
  s->receive_log_bytes = st.bytes;
}
