/*
 * ship_ring.c: the shipper's commit ring and frame cache (the newest
 * cache_bytes of frames kept in memory for streaming standbys, older ones
 * read back from the log), and log retention after acknowledgements. The
 * design and invariants are at the top of ship.c.
 */
#include "ship_internal.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------------- */
/* Frames in memory and the commit ring (under mu) */

void ship_frame_release_locked(replicate_shipper *sh, ship_frame *f)
{
  (void)sh;
  if (f && --f->refs == 0)
    free(f);
}

commit_entry *ship_ring_at(commit_ring *r, size_t i)
{
  return &r->v[(r->head + i) % r->cap];
}

commit_entry *ship_ring_find(commit_ring *r, uint64_t seq)
{
  if (r->len == 0)
    return NULL;
  uint64_t first = ship_ring_at(r, 0)->seq;
  if (seq < first || seq - first >= r->len)
    return NULL;
  return ship_ring_at(r, (size_t)(seq - first));
}

static void ring_pop_front(replicate_shipper *sh)
{
  commit_ring *r = &sh->ring;
  commit_entry *e = ship_ring_at(r, 0);
  if (e->frame) {
    sh->cached_bytes -= e->frame->len;
    ship_frame_release_locked(sh, e->frame);
    e->frame = NULL;
  }
  r->head = (r->head + 1) % r->cap;
  r->len--;
  if (r->first_cached > 0)
    r->first_cached--;
}

void ship_ring_clear(replicate_shipper *sh)
{
  while (sh->ring.len)
    ring_pop_front(sh);
  sh->ring.first_cached = 0;
}

/* Append the commit seq; its frame (may be NULL) is owned by the ring. */
int ship_ring_push(replicate_shipper *sh, uint64_t seq, int64_t time_ns,
                   uint64_t bytes, ship_frame *frame)
{
  commit_ring *r = &sh->ring;
  if (r->len && ship_ring_at(r, r->len - 1)->seq + 1 != seq)
    ship_ring_clear(sh);
  if (r->len == RING_MAX_ENTRIES)
    ring_pop_front(sh);
  if (r->len == r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 256;
    commit_entry *v = malloc(cap * sizeof *v);
    if (!v)
      return ENOMEM;
    for (size_t i = 0; i < r->len; i++)
      v[i] = *ship_ring_at(r, i);
    free(r->v);
    r->v = v;
    r->cap = cap;
    r->head = 0;
  }
  uint64_t cum = r->len ? ship_ring_at(r, r->len - 1)->cum_bytes : 0;
  *ship_ring_at(r, r->len) = (commit_entry){seq, time_ns, bytes, cum + bytes, frame};
  r->len++;
  if (frame)
    sh->cached_bytes += frame->len;
  /* Keep the newest cache_bytes of frames in memory. */
  while (sh->cached_bytes > sh->cache_bytes && r->first_cached < r->len) {
    commit_entry *e = ship_ring_at(r, r->first_cached);
    if (e->frame) {
      sh->cached_bytes -= e->frame->len;
      ship_frame_release_locked(sh, e->frame);
      e->frame = NULL;
    }
    r->first_cached++;
  }
  return 0;
}

/* The ring caches the log: forget the frames the log dropped, so that a
 * standby that needs them gets a base image, as the log says. */
void ship_ring_forget_before(replicate_shipper *sh, uint64_t oldest_seq)
{
  commit_ring *r = &sh->ring;
  while (r->first_cached < r->len) {
    commit_entry *e = ship_ring_at(r, r->first_cached);
    if (e->seq >= oldest_seq)
      break;
    if (e->frame) {
      sh->cached_bytes -= e->frame->len;
      ship_frame_release_locked(sh, e->frame);
      e->frame = NULL;
    }
    r->first_cached++;
  }
}

/* After retention, which never drops the log's newest segment: an empty
 * log dropped nothing here. It is empty before the first append, and the
 * commit side publishes a frame to the ring before appending it (the two
 * fsyncs overlap), so forgetting every cached frame then would turn the
 * first commit's frame into a base image for every standby. */
static void ring_follow_log(replicate_shipper *sh)
{
  replicate_log_stats st;
  replicate_log_get_stats(sh->log, &st);
  if (!st.records)
    return;
  pthread_mutex_lock(&sh->mu);
  ship_ring_forget_before(sh, st.oldest_seq);
  pthread_mutex_unlock(&sh->mu);
}

/* Get the frame of seq: a reference to the ring's copy (*ref), or read from
 * the log into buf. *data and *len point at its bytes either way. */
int ship_fetch_frame(replicate_shipper *sh, uint64_t seq, ship_frame **ref,
                     replicate_buf *buf, const uint8_t **data, size_t *len)
{
  *ref = NULL;
  pthread_mutex_lock(&sh->mu);
  commit_entry *e = ship_ring_find(&sh->ring, seq);
  if (e && e->frame) {
    e->frame->refs++;
    *ref = e->frame;
  }
  pthread_mutex_unlock(&sh->mu);
  if (*ref) {
    *data = (*ref)->data;
    *len = (*ref)->len;
    return 0;
  }
  int rc = replicate_log_read(sh->log, seq, buf);
  if (rc)
    return rc;
  *data = buf->data;
  *len = buf->len;
  return 0;
}

void ship_drop_ref(replicate_shipper *sh, ship_frame **ref)
{
  if (!*ref)
    return;
  pthread_mutex_lock(&sh->mu);
  ship_frame_release_locked(sh, *ref);
  pthread_mutex_unlock(&sh->mu);
  *ref = NULL;
}

/* ---------------------------------------------------------------------- */
/* Retention */

/* Under mu: what standby peer holds back in the log (LOG RETENTION). */
static replicate_log_reader reader_of(const replicate_shipper *sh,
                                      const ship_peer *peer)
{
  if (peer->holds_snapshot)
    return (replicate_log_reader){REPLICATE_LOG_READER_AT, sh->snap_pos.seq};
  if (peer->need_base)
    return (replicate_log_reader){REPLICATE_LOG_READER_NEEDS_BASE, 0};
  if (!peer->has_position)
    return (replicate_log_reader){REPLICATE_LOG_READER_UNKNOWN, 0};
  return (replicate_log_reader){REPLICATE_LOG_READER_AT, peer->received.seq};
}

/* Retention (see replicate.h; the policy is replicate_log_oldest_needed).
 * Shipping thread, after acknowledgements. */
void ship_retain_log(replicate_shipper *sh)
{
  uint64_t applied_min = UINT64_MAX;
  pthread_mutex_lock(&sh->mu);
  bool fenced = sh->fenced;
  for (size_t i = 0; i < sh->n && !fenced; i++) {
    const ship_peer *peer = &sh->peers[i];
    sh->readers[i] = reader_of(sh, peer);
    uint64_t applied = peer->has_position ? peer->applied.seq : 0;
    if (applied < applied_min)
      applied_min = applied;
  }
  /* The ring keeps what lag accounting needs: from the oldest applied. */
  while (!fenced && applied_min != UINT64_MAX && sh->ring.len > 1 &&
         ship_ring_at(&sh->ring, 0)->seq <= applied_min &&
         ship_ring_at(&sh->ring, 0)->frame == NULL)
    ring_pop_front(sh);
  pthread_mutex_unlock(&sh->mu);
  if (fenced)
    return;
  uint64_t need = replicate_log_oldest_needed(sh->readers, sh->n);
  if (need == UINT64_MAX || need == 0 || need <= sh->retained_from)
    return;
  int rc = replicate_log_retain(sh->log, need);
  if (rc)
    ship_diag(sh, "log retention up to seq %" PRIu64 ": %s", need,
              replicate_strerror(rc));
  else
    sh->retained_from = need;
  ring_follow_log(sh);
}
