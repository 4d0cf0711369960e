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
  replicate_stream_reader stream;
  loom_position target;
  bool refused;
  replicate_recv_result refusal;
  int refusal_code;
  uint64_t image_epoch;         /* STALE_EPOCH: the image's */
  bool rewinding;               /* allowed past a divergence: a rewind */
  uint64_t rewind_frames, rewind_from_seq;
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
  if (!up || replicate_stream_reader_init(&up->stream)) {
    if (up)
      replicate_stream_reader_free(&up->stream);
    free(up);
    memset(outcome, 0, sizeof *outcome);
    outcome->result = REPLICATE_RECV_NO_MEMORY;
    outcome->code = ENOMEM;
    outcome->retry_after = 1;
    return ENOMEM;
  }
  up->rx = rx;
  up->length = length;
  int rc = base_claim(rx, if_position, outcome);
  if (rc) {
    replicate_stream_reader_free(&up->stream);
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
      up->length != replicate_stream_length(&up->target)) {
    base_refuse(up, REPLICATE_RECV_BASE_LENGTH, 0);
    return false;
  }
  pthread_mutex_lock(&rx->mu);
  int place = replicate_place_base(&rx->lineage.history, &rx->received,
                                   &up->target, lineage);
  /* The one exception to the history rules (P5 of place.c). */
  if (replicate_place_rewind(place, &rx->lineage.history, &rx->received,
                             rx->rewind_epoch, &up->target, lineage)) {
    up->rewinding = true;
    up->rewind_from_seq = rx->received.seq;
    up->rewind_frames = replicate_rewound_commits(&rx->received, &up->target, lineage);
    place = 0;
  }
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

/* The header is decoded: check it and begin the patch. */
static void base_start_patch(replicate_receiver_base *up)
{
  replicate_receiver *rx = up->rx;
  loom_lineage lineage = up->stream.lineage;
  up->target = up->stream.position;
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
  int rc = loom_history_is_none(&lineage.history)
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

/* A whole page came: add it to the patch. */
static void base_add_page(replicate_receiver_base *up)
{
  pthread_mutex_lock(&up->rx->store_mu);
  int rc = loom_patch_add(up->patch, up->stream.pages - 1, up->stream.page);
  pthread_mutex_unlock(&up->rx->store_mu);
  if (rc)
    base_refuse(up, REPLICATE_RECV_BASE_STORE, rc);
}

int replicate_receiver_base_feed(replicate_receiver_base *up,
                                 const void *data, size_t len)
{
  const uint8_t *p = data;
  while (len > 0 && !up->refused) {
    switch (replicate_stream_reader_take(&up->stream, &p, &len)) {
    case REPLICATE_STREAM_MORE:
      break;
    case REPLICATE_STREAM_HEADER:
      base_start_patch(up);
      break;
    case REPLICATE_STREAM_BAD_HEADER:
      base_refuse(up, REPLICATE_RECV_BASE_HEADER, up->stream.header_rc);
      break;
    case REPLICATE_STREAM_PAGE:
      base_add_page(up);
      break;
    case REPLICATE_STREAM_TRAILING:
      base_refuse(up, REPLICATE_RECV_BASE_TRAILING, 0);
      break;
    }
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
  replicate_stream_reader_free(&up->stream);
  free(up);
}

/* Under mu: the image committed at pos is the new position; rb is its
 * read-back (every page: computed is what the image holds, never the
 * base's own checksum copied). */
static void base_committed(replicate_receiver *rx, const loom_position *pos,
                           const rx_readback *rb, int64_t readback_ns)
{
  rx->applied = *pos;
  rx->received = *pos;
  rx_positions_moved(rx);
  rx->rot_page = UINT64_MAX; /* every page was written anew */
  if (rb->done)
    rx_note_readback(rx, rb);
  else /* the read-back failed (said): the store's word, as before it */
    rx_note_computed(rx, pos, false, 0, UINT64_MAX);
  rx_pending_clear(rx);
  rx->apply_failed = false;
  rx->want_base = false; /* replicate_receiver_want_base: done */
  rx->bases++;
  rx_note_sound_input(rx);
  if (pos->epoch > rx->primary_epoch ||
      (pos->epoch == rx->primary_epoch && pos->seq >= rx->primary_seq)) {
    rx->primary_epoch = pos->epoch;
    rx->primary_seq = pos->seq;
    rx->primary_commit_ns = pos->commit_time_ns;
  }
  rx_logf(rx, "standby: base image at epoch %llu seq %llu (%llu pages, read back "
          "in %.3f s)", (unsigned long long)pos->epoch, (unsigned long long)pos->seq,
          (unsigned long long)pos->pages, (double)readback_ns / 1e9);
}

void replicate_receiver_base_finish(replicate_receiver_base *up,
                                    replicate_recv_outcome *out)
{
  replicate_receiver *rx = up->rx;
  if (!up->refused && !replicate_stream_reader_complete(&up->stream))
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
  rx_readback rb = {.bad_page = UINT64_MAX};
  pthread_mutex_lock(&rx->store_mu);
  int rc = loom_patch_commit(up->patch);
  up->patch = NULL;
  if (rc == 0)
    rc = loom_store_sync(rx->store);
  loom_store_position(rx->store, &pos);
  /* Every page read back, as an apply's are (DESIGN section 8): a disk
   * that spoiled the base image is found now, not by a later scrub. */
  int64_t readback_ns = rx_mono_ns();
  int rrc = rc ? 0 : replicate_image_readback(rx->store, &rb.checksum, &rb.bad_page);
  readback_ns = rx_mono_ns() - readback_ns;
  rb.done = rc == 0 && rrc == 0;
  rb.pos = pos;
  pthread_mutex_unlock(&rx->store_mu);
  if (rrc)
    rx_logf(rx, "standby: reading back the base image: %s", replicate_strerror(rrc));

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
  if (up->rewinding)
    rx_note_rewound(rx, up->rewind_frames, up->rewind_from_seq);
  base_committed(rx, &pos, &rb, readback_ns);
  rx_outcome(rx, REPLICATE_RECV_OK, 0, out);
  pthread_mutex_unlock(&rx->mu);
  base_release(up);
}

void replicate_receiver_base_abort(replicate_receiver_base *up)
{
  if (up)
    base_release(up);
}

void rx_note_rewound(replicate_receiver *rx, uint64_t frames, uint64_t from_seq)
{
  rx->rewind_epoch = 0; /* one rewind per permission */
  rx->rewound_frames = frames;
  rx->rewound_from_seq = from_seq;
  rx->rewound_at_ns = rx_now_ns(rx);
  rx_logf(rx, "standby: rewound: %llu commits past the branch point discarded "
          "(from seq %llu)", (unsigned long long)frames, (unsigned long long)from_seq);
}

void replicate_receiver_want_base(replicate_receiver *rx)
{
  pthread_mutex_lock(&rx->mu);
  if (!rx->want_base)
    rx_logf(rx, "standby: asking the primary for a base image (too many bad pages to "
            "repair page by page)");
  rx->want_base = true;
  pthread_mutex_unlock(&rx->mu);
}

bool replicate_receiver_wants_base(replicate_receiver *rx)
{
  pthread_mutex_lock(&rx->mu);
  bool want = rx->want_base;
  pthread_mutex_unlock(&rx->mu);
  return want;
}

void replicate_receiver_allow_rewind(replicate_receiver *rx, uint64_t epoch)
{
  pthread_mutex_lock(&rx->mu);
  rx->rewind_epoch = epoch;
  pthread_mutex_unlock(&rx->mu);
}
