/*
 * receiver_base.c: a base image streamed into the receiver (receiver.h,
 * replicate_receiver_base_*; PUT /v1/base). While it comes in the applier
 * starts nothing (I3 of receiver.c): the upload is the only user of the
 * store. The header is placed against the received position before any
 * page is written; the pages go into one base patch, committed at the end.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "receiver_internal.h"

struct replicate_receiver_base {
  replicate_receiver *rx;
  loom_patch *patch;
  uint64_t length;              /* announced; UINT64_MAX: unknown */
  uint8_t header[LOOM_STREAM_HEADER];
  size_t header_len;
  loom_position target;
  uint8_t *page;                /* one page being filled */
  size_t page_fill;
  uint64_t pages_added;
  bool refused;
  replicate_recv_result refusal;
  int refusal_code;
  uint64_t image_epoch;         /* STALE_EPOCH: the image's */
};

/* Outside recv_mu: mark the upload active, or say why not. */
static int base_claim(replicate_receiver *rx, const loom_position *if_position,
                      replicate_recv_outcome *outcome)
{
  pthread_mutex_lock(&rx->recv_mu);
  pthread_mutex_lock(&rx->mu);
  int rc = 0;
  if (rx->promoted) {
    rx_outcome(rx, REPLICATE_RECV_PROMOTED, 0, outcome);
    rc = EPERM;
  } else if (rx->base_active) {
    rx_outcome(rx, REPLICATE_RECV_BASE_RUNNING, 0, outcome);
    rc = EBUSY;
  } else if (if_position && (if_position->epoch != rx->received.epoch ||
                             if_position->seq != rx->received.seq ||
                             if_position->checksum != rx->received.checksum)) {
    rx_outcome(rx, REPLICATE_RECV_BASE_MOVED, REPLICATE_EPOSITION, outcome);
    rc = EAGAIN;
  } else {
    rx->base_active = true;
  }
  pthread_mutex_unlock(&rx->mu);
  pthread_mutex_unlock(&rx->recv_mu);
  return rc;
}

int replicate_receiver_base_begin(replicate_receiver *rx, uint64_t length,
                                  const loom_position *if_position,
                                  replicate_receiver_base **out,
                                  replicate_recv_outcome *outcome)
{
  replicate_receiver_base *up = calloc(1, sizeof *up);
  uint8_t *page = malloc(LOOM_PAGE_SIZE);
  if (!up || !page) {
    free(up);
    free(page);
    memset(outcome, 0, sizeof *outcome);
    outcome->result = REPLICATE_RECV_NO_MEMORY;
    outcome->code = ENOMEM;
    outcome->retry_after = 1;
    return ENOMEM;
  }
  up->rx = rx;
  up->page = page;
  up->length = length;
  int rc = base_claim(rx, if_position, outcome);
  if (rc) {
    free(up->page);
    free(up);
    return rc;
  }
  /* The applier starts nothing new while base_active: wait for the one
   * in flight. */
  pthread_mutex_lock(&rx->mu);
  while (rx->applier_busy)
    pthread_cond_wait(&rx->cond, &rx->mu);
  pthread_mutex_unlock(&rx->mu);
  *out = up;
  return 0;
}

static void base_refuse(replicate_receiver_base *up, replicate_recv_result r,
                        int rc)
{
  up->refused = true;
  up->refusal = r;
  up->refusal_code = rc;
  if (up->patch) {
    pthread_mutex_lock(&up->rx->store_mu);
    loom_patch_abort(up->patch);
    pthread_mutex_unlock(&up->rx->store_mu);
    up->patch = NULL;
  }
}

/* Is the decoded header acceptable here? Refuses the upload if not. */
static bool base_header_fits(replicate_receiver_base *up,
                             const loom_lineage *lineage)
{
  replicate_receiver *rx = up->rx;
  if (up->target.pages > rx->limits.max_image_pages) {
    base_refuse(up, REPLICATE_RECV_BASE_TOO_LARGE, 0);
    return false;
  }
  if (up->length != UINT64_MAX &&
      up->length !=
          LOOM_STREAM_HEADER + up->target.pages * (uint64_t)LOOM_PAGE_SIZE) {
    base_refuse(up, REPLICATE_RECV_BASE_LENGTH, 0);
    return false;
  }
  pthread_mutex_lock(&rx->mu);
  int place = replicate_place_base(&rx->lineage.history, &rx->received,
                                   &up->target, lineage);
  if (replicate_is_divergence(place))
    rx_note_divergence(rx, place, &lineage->history);
  pthread_mutex_unlock(&rx->mu);
  if (place == REPLICATE_ESTALE_EPOCH) {
    up->image_epoch = up->target.epoch;
    base_refuse(up, REPLICATE_RECV_STALE_EPOCH, 0);
    return false;
  }
  if (replicate_is_divergence(place)) {
    base_refuse(up, REPLICATE_RECV_DIVERGED, place);
    return false;
  }
  return true;
}

/* The header is complete: check it and begin the patch. */
static void base_start_patch(replicate_receiver_base *up)
{
  replicate_receiver *rx = up->rx;
  loom_lineage lineage;
  int rc = loom_stream_header_decode(up->header, &up->target, &lineage);
  if (rc) {
    base_refuse(up, REPLICATE_RECV_BASE_HEADER, rc);
    return;
  }
  if (!base_header_fits(up, &lineage))
    return;
  loom_patch_header h = {
      .after = up->target,
      .page_count = up->target.pages,
      .flags = LOOM_PATCH_BASE,
  };
  /* The history first (durable in the meta), then the image: a crash
   * between leaves the old image under the new lineage, which place_base
   * allowed (the same history, or a store that held nothing). */
  pthread_mutex_lock(&rx->store_mu);
  rc = loom_history_is_none(&lineage.history)
           ? 0 : loom_store_adopt_lineage(rx->store, &lineage);
  loom_store_position(rx->store, &h.before);
  if (!rc)
    rc = loom_store_patch_begin(rx->store, &h, &up->patch);
  pthread_mutex_unlock(&rx->store_mu);
  if (!rc && !loom_history_is_none(&lineage.history)) {
    pthread_mutex_lock(&rx->mu);
    rx->lineage = lineage;
    pthread_mutex_unlock(&rx->mu);
  }
  if (rc) {
    up->patch = NULL;
    base_refuse(up, REPLICATE_RECV_BASE_STORE, rc);
  }
}

/* Take up to len bytes of the header; returns how many. */
static size_t base_feed_header(replicate_receiver_base *up,
                               const uint8_t *data, size_t len)
{
  size_t n = LOOM_STREAM_HEADER - up->header_len;
  if (n > len)
    n = len;
  memcpy(up->header + up->header_len, data, n);
  up->header_len += n;
  if (up->header_len == LOOM_STREAM_HEADER)
    base_start_patch(up);
  return n;
}

/* Take up to len bytes of pages; returns how many. */
static size_t base_feed_pages(replicate_receiver_base *up,
                              const uint8_t *data, size_t len)
{
  if (up->pages_added == up->target.pages) {
    base_refuse(up, REPLICATE_RECV_BASE_TRAILING, 0);
    return len;
  }
  size_t n = LOOM_PAGE_SIZE - up->page_fill;
  if (n > len)
    n = len;
  memcpy(up->page + up->page_fill, data, n);
  up->page_fill += n;
  if (up->page_fill == LOOM_PAGE_SIZE) {
    pthread_mutex_lock(&up->rx->store_mu);
    int rc = loom_patch_add(up->patch, up->pages_added, up->page);
    pthread_mutex_unlock(&up->rx->store_mu);
    if (rc) {
      base_refuse(up, REPLICATE_RECV_BASE_STORE, rc);
      return len;
    }
    up->pages_added++;
    up->page_fill = 0;
  }
  return n;
}

int replicate_receiver_base_feed(replicate_receiver_base *up,
                                 const void *data, size_t len)
{
  const uint8_t *p = data;
  while (len > 0 && !up->refused) {
    size_t n = up->header_len < LOOM_STREAM_HEADER
                   ? base_feed_header(up, p, len)
                   : base_feed_pages(up, p, len);
    p += n;
    len -= n;
  }
  return up->refused ? EINVAL : 0;
}

static void base_release(replicate_receiver_base *up)
{
  replicate_receiver *rx = up->rx;
  if (up->patch) {
    pthread_mutex_lock(&rx->store_mu);
    loom_patch_abort(up->patch);
    pthread_mutex_unlock(&rx->store_mu);
  }
  pthread_mutex_lock(&rx->mu);
  rx->base_active = false;
  pthread_cond_broadcast(&rx->cond);
  pthread_mutex_unlock(&rx->mu);
  free(up->page);
  free(up);
}

/* Under mu: the image committed at pos is the new position. */
static void base_committed(replicate_receiver *rx, const loom_position *pos)
{
  rx->applied = *pos;
  rx->received = *pos;
  rx_note_computed(rx, pos, false, 0, UINT64_MAX);
  rx_pending_clear(rx);
  rx->apply_failed = false;
  rx->bases++;
  rx_note_sound_input(rx);
  if (pos->epoch > rx->primary_epoch ||
      (pos->epoch == rx->primary_epoch && pos->seq >= rx->primary_seq)) {
    rx->primary_epoch = pos->epoch;
    rx->primary_seq = pos->seq;
    rx->primary_commit_ns = pos->commit_time_ns;
  }
  rx_logf(rx, "standby: base image at epoch %llu seq %llu (%llu pages)",
          (unsigned long long)pos->epoch, (unsigned long long)pos->seq,
          (unsigned long long)pos->pages);
}

void replicate_receiver_base_finish(replicate_receiver_base *up,
                                    replicate_recv_outcome *out)
{
  replicate_receiver *rx = up->rx;
  if (!up->refused && (up->header_len < LOOM_STREAM_HEADER ||
                       up->pages_added < up->target.pages ||
                       up->page_fill != 0))
    base_refuse(up, REPLICATE_RECV_BASE_TRUNCATED, 0);
  if (up->refused) {
    pthread_mutex_lock(&rx->mu);
    rx_outcome(rx, up->refusal, up->refusal_code, out);
    out->input_epoch = up->image_epoch;
    pthread_mutex_unlock(&rx->mu);
    base_release(up);
    return;
  }

  loom_position pos;
  pthread_mutex_lock(&rx->store_mu);
  int rc = loom_patch_commit(up->patch);
  up->patch = NULL;
  if (rc == 0)
    rc = loom_store_sync(rx->store);
  loom_store_position(rx->store, &pos);
  pthread_mutex_unlock(&rx->store_mu);

  if (rc) {
    rx_logf(rx, "standby: base image refused: %s", loom_strerror(rc));
    pthread_mutex_lock(&rx->mu);
    rx_outcome(rx, REPLICATE_RECV_BASE_COMMIT, rc, out);
    pthread_mutex_unlock(&rx->mu);
    base_release(up);
    return;
  }
  /* Frames received before the base are moot: the log restarts at pos. */
  rx_log_reset(rx);
  pthread_mutex_lock(&rx->mu);
  base_committed(rx, &pos);
  rx_outcome(rx, REPLICATE_RECV_OK, 0, out);
  pthread_mutex_unlock(&rx->mu);
  base_release(up);
}

void replicate_receiver_base_abort(replicate_receiver_base *up)
{
  if (up)
    base_release(up);
}
