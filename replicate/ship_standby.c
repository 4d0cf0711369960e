/*
 * ship_standby.c: the state machine of each standby the shipper ships to
 * (STATES OF A STANDBY in replicate.h): which request comes next
 * (ship_schedule), what an answer means (ship_finish), failures and
 * backoff, fencing, divergence and refusals. The design and invariants are
 * at the top of ship.c.
 */
#include "ship_internal.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------------- */
/* Shared standby fields (I3) */

void ship_publish_state(ship_peer *peer, replicate_peer_state state)
{
  replicate_shipper *sh = peer->sh;
  pthread_mutex_lock(&sh->mu);
  if (!sh->fenced && peer->state != state) {
    ship_diag(sh, "standby %s: %s -> %s", peer->url,
              replicate_peer_state_name(peer->state),
              replicate_peer_state_name(state));
    peer->state = state;
    pthread_cond_broadcast(&sh->cond);
  }
  pthread_mutex_unlock(&sh->mu);
}

void ship_set_error(ship_peer *peer, const char *fmt, ...)
{
  replicate_shipper *sh = peer->sh;
  char text[REPLICATE_ERROR_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  pthread_mutex_lock(&sh->mu);
  memcpy(peer->last_error, text, sizeof text);
  peer->last_error_ns = ship_real_ns();
  pthread_mutex_unlock(&sh->mu);
  ship_diag(sh, "standby %s: %s", peer->url, text);
}

static void set_on_chain(ship_peer *peer, bool on_chain)
{
  replicate_shipper *sh = peer->sh;
  pthread_mutex_lock(&sh->mu);
  if (peer->on_chain != on_chain) {
    peer->on_chain = on_chain;
    pthread_cond_broadcast(&sh->cond);
  }
  pthread_mutex_unlock(&sh->mu);
}

/* Number of standbys that hold (epoch, seq) durably. Under mu. */
unsigned ship_acked_locked(replicate_shipper *sh, uint64_t epoch,
                           uint64_t seq)
{
  unsigned count = 0;
  for (size_t i = 0; i < sh->n; i++) {
    const ship_peer *peer = &sh->peers[i];
    if (peer->has_position && peer->on_chain &&
        peer->state != REPLICATE_PEER_FENCED &&
        peer->received.epoch == epoch && peer->received.seq >= seq)
      count++;
  }
  return count;
}

/* A promotion elsewhere fenced us (I4). */
static void fence(replicate_shipper *sh, ship_peer *by, uint64_t epoch)
{
  pthread_mutex_lock(&sh->mu);
  bool first = !sh->fenced;
  sh->fenced = true;
  for (size_t i = 0; i < sh->n; i++)
    sh->peers[i].state = REPLICATE_PEER_FENCED;
  snprintf(by->last_error, sizeof by->last_error,
           "fenced: the standby has epoch %" PRIu64 ", newer than ours (%"
           PRIu64 ")", epoch, sh->latest.epoch);
  by->last_error_ns = ship_real_ns();
  pthread_cond_broadcast(&sh->cond);
  uint64_t ours = sh->latest.epoch;
  pthread_mutex_unlock(&sh->mu);
  if (first)
    ship_diag(sh, "standby %s has epoch %" PRIu64 " (ours %" PRIu64
              "): this primary is fenced; shipping stopped", by->url, epoch, ours);
}

/* The standby's position is not one this primary may move it from
 * (replicate_place_peer, or the standby refused our input as moving it
 * backwards or sideways): never a base image over it; say so, and only
 * ask its position again now and then. */
static void diverge(ship_peer *peer, int why, const char *detail)
{
  replicate_shipper *sh = peer->sh;
  peer->diverged = why;
  peer->need_base = peer->says_damaged = false;
  peer->known = false;
  peer->next_attempt_ns = ship_mono_ns() + ship_seconds_to_ns(sh->backoff_max_s);
  ship_set_error(peer, "diverged (%s): %s; its position (epoch %" PRIu64 ", seq %"
                 PRIu64 ", checksum %016" PRIx64 ") is left as it is", detail,
                 replicate_strerror(why), peer->received.epoch, peer->received.seq,
                 peer->received.checksum);
  ship_publish_state(peer, REPLICATE_PEER_DIVERGED);
  pthread_mutex_lock(&sh->mu);
  peer->on_chain = false;
  pthread_cond_broadcast(&sh->cond); /* a drain stops waiting for it */
  pthread_mutex_unlock(&sh->mu);
}

/* ---------------------------------------------------------------------- */
/* Failures and backoff */

static void retry_after_backoff(ship_peer *peer, double retry_after_s)
{
  replicate_shipper *sh = peer->sh;
  unsigned k = peer->consecutive_failures < 30 ? peer->consecutive_failures : 30;
  double delay = sh->backoff_base_s;
  for (unsigned i = 0; i < k && delay < sh->backoff_max_s; i++)
    delay *= 2;
  if (delay > sh->backoff_max_s)
    delay = sh->backoff_max_s;
  delay = delay / 2 + ship_random_unit(sh) * delay / 2; /* equal jitter */
  if (retry_after_s > delay)
    delay = retry_after_s;
  peer->consecutive_failures++;
  peer->next_attempt_ns = ship_mono_ns() + ship_seconds_to_ns(delay);
}

/* The kind of a failure that leaves state (NULL: a local failure, the state
 * kept). */
static replicate_peer_error_kind error_kind(const replicate_peer_state *state)
{
  if (!state)
    return REPLICATE_PEER_ERROR_LOCAL;
  if (*state == REPLICATE_PEER_STALLED)
    return REPLICATE_PEER_ERROR_STALLED;
  if (*state == REPLICATE_PEER_REFUSED)
    return REPLICATE_PEER_ERROR_REFUSED;
  return REPLICATE_PEER_ERROR_UNREACHABLE;
}

/* A failed request: the error, the state it leaves (counted as a failed
 * attempt for a drain) or none (keep), backoff; the position is asked
 * again before anything else is sent. */
static void fail_into(ship_peer *peer, const replicate_peer_state *state,
                      double retry_after_s, const char *text)
{
  replicate_shipper *sh = peer->sh;
  pthread_mutex_lock(&sh->mu);
  peer->failures++;
  peer->errors[error_kind(state)]++;
  if (state)
    peer->unreachable_run++;
  pthread_cond_broadcast(&sh->cond); /* a drain counts the attempts */
  pthread_mutex_unlock(&sh->mu);
  ship_set_error(peer, "%s", text);
  if (state)
    ship_publish_state(peer, *state);
  peer->known = false;
  retry_after_backoff(peer, retry_after_s);
}

/* No answer (unreachable, or still stalled when it was shown stalled), or
 * a local failure (the state is kept). */
void ship_fail(ship_peer *peer, bool unreachable, double retry_after_s,
               const char *fmt, ...)
{
  char text[REPLICATE_ERROR_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  replicate_peer_state state = peer->stalled ? REPLICATE_PEER_STALLED
                                              : REPLICATE_PEER_UNREACHABLE;
  fail_into(peer, unreachable ? &state : NULL, retry_after_s, text);
}

/* ---------------------------------------------------------------------- */
/* Starting requests */

static int start_heartbeat(ship_peer *peer, const loom_position *latest)
{
  int rc = replicate_frame_encode_heartbeat(&peer->sh->lineage.history, latest,
                                            ship_real_ns(), &peer->body_buf);
  if (rc)
    return rc;
  peer->req = REQ_HEARTBEAT;
  peer->body = peer->body_buf.data;
  peer->body_len = peer->body_buf.len;
  peer->req_epoch = latest->epoch;
  peer->req_after_seq = 0;
  peer->req_after_checksum = 0;
  peer->req_frames = 0;
  peer->req_raw_bytes = 0;
  peer->req_pages = 0;
  return ship_post_body(peer);
}

static void mark_sent(ship_peer *peer, uint64_t seq)
{
  replicate_shipper *sh = peer->sh;
  pthread_mutex_lock(&sh->mu);
  peer->sent_seq = seq;
  pthread_mutex_unlock(&sh->mu);
}

/* A snapshot (shared by base images in flight) at a position below what
 * the standby holds would move it backwards: it refuses that. Reopen an
 * unshared one (the image file trails the committed position while an
 * apply runs), else wait for the one in use to be released. True when the
 * base image must wait. */
static bool snapshot_behind(ship_peer *peer)
{
  replicate_shipper *sh = peer->sh;
  if (!sh->snap || sh->snap_pos.epoch != peer->received.epoch ||
      sh->snap_pos.seq >= peer->received.seq)
    return false;
  if (sh->snap_refs == 0) {
    loom_snapshot_close(sh->snap);
    sh->snap = NULL;
    return false;
  }
  return true;
}

/* The base request's headers: ours, the position it was chosen for
 * (X-Loomship-If-Position): a standby that moved on since refuses it with
 * where it is now, and we decide again; and under a frame key, the tag
 * header saying the tag trails the image (the body gains its bytes). */
static CURLcode base_headers(ship_peer *peer)
{
  replicate_shipper *sh = peer->sh;
  char expect[96], tag[128];
  snprintf(expect, sizeof expect, "X-Loomship-If-Position: %" PRIu64 " %" PRIu64
           " %016" PRIx64, peer->received.epoch, peer->received.seq,
           peer->received.checksum);
  if (sh->frame_key) {
    if (replicate_tag_stream_begin(sh->frame_key, REPLICATE_TAG_BASE, NULL,
                                   &peer->base_tag) != 0)
      return CURLE_OUT_OF_MEMORY;
    snprintf(tag, sizeof tag, "%s: %s trailer", REPLICATE_TAG_HEADER,
             replicate_frame_key_id(sh->frame_key, 0));
    peer->base_total += REPLICATE_TAG_SIZE;
  }
  return ship_request_headers(peer, peer->has_position ? expect : NULL,
                              sh->frame_key ? tag : NULL);
}

static int start_base(ship_peer *peer)
{
  replicate_shipper *sh = peer->sh;
  if (snapshot_behind(peer)) {
    retry_after_backoff(peer, 0);
    return 0;
  }
  ship_publish_state(peer, REPLICATE_PEER_BASE_SYNC);
  if (!sh->snap) {
    int rc = loom_store_snapshot_open(sh->store, &sh->snap);
    if (rc) {
      sh->snap = NULL;
      return rc;
    }
    loom_snapshot_position(sh->snap, &sh->snap_pos);
    if (sh->snap_pos.epoch > sh->committed_floor.epoch ||
        sh->snap_pos.seq > sh->committed_floor.seq)
      sh->committed_floor = sh->snap_pos;
    ship_diag(sh, "snapshot at seq %" PRIu64 " (%" PRIu64 " pages) opened for base "
              "images", sh->snap_pos.seq, sh->snap_pos.pages);
  }
  sh->snap_refs++;
  peer->holds_snapshot = true;
  peer->mending = peer->mismatch; /* a mend (mend_allowed): counted once
                                     its body is sent (ship_read_base) */
  loom_lineage lineage;
  loom_snapshot_lineage(sh->snap, &lineage);
  loom_stream_header_encode(peer->base_header, &sh->snap_pos, &lineage);
  peer->base_off = 0;
  peer->base_total = LOOM_STREAM_HEADER + sh->snap_pos.pages * LOOM_PAGE_SIZE;
  peer->base_image_end = peer->base_total;
  peer->base_read_error = 0;
  peer->req = REQ_BASE;
  peer->req_epoch = sh->snap_pos.epoch;
  peer->req_after_seq = sh->snap_pos.seq;
  peer->req_after_checksum = sh->snap_pos.checksum;
  peer->req_frames = 0;
  peer->req_pages = sh->snap_pos.pages;
  peer->req_raw_bytes = sh->snap_pos.pages * LOOM_PAGE_SIZE;

  int rc = ship_prepare_easy(peer, peer->base_url);
  CURLcode c = rc ? CURLE_FAILED_INIT : CURLE_OK;
#define SET(opt, val)                                                        \
  do {                                                                       \
    if (c == CURLE_OK)                                                       \
      c = curl_easy_setopt(peer->easy, opt, val);                              \
  } while (0)
  if (c == CURLE_OK)
    c = base_headers(peer);
  SET(CURLOPT_UPLOAD, 1L);
  SET(CURLOPT_READFUNCTION, ship_read_base);
  SET(CURLOPT_READDATA, (void *)peer);
  SET(CURLOPT_INFILESIZE_LARGE, (curl_off_t)peer->base_total);
  SET(CURLOPT_LOW_SPEED_LIMIT, 1L);
  SET(CURLOPT_LOW_SPEED_TIME, sh->base_stall_s);
#undef SET
  if (!rc && c != CURLE_OK)
    rc = REPLICATE_ECURL;
  if (!rc)
    rc = ship_launch(peer);
  if (rc) {
    ship_release_request(peer);
    return rc;
  }
  mark_sent(peer, sh->snap_pos.seq);
  return 0;
}

/* The piece start_frames sends: the first frame after the standby's
 * position, and what merging the ones after it added. */
typedef struct frame_piece {
  uint64_t seq;               /* the first frame's seq */
  ship_frame *ref;            /* the first frame in the log, or NULL */
  const uint8_t *data;        /* the first frame as it is */
  size_t len;
  replicate_frame_info first; /* its header */
  uint64_t frames, pages, bytes; /* what the piece holds so far */
  bool merged;                /* the coalescer holds the first frame */
} frame_piece;

/* Fetch the first frame after r into p. Returns 0 with *go true when
 * there is one to check; 0 with *go false when the log no longer holds it
 * (need_base is set); or an error. */
static int fetch_first(ship_peer *peer, frame_piece *p, bool *go)
{
  replicate_shipper *sh = peer->sh;
  *go = false;
  int rc = ship_fetch_frame(sh, p->seq, &p->ref, &peer->body_buf, &p->data, &p->len);
  if (rc == REPLICATE_ELOG_GONE || rc == REPLICATE_ELOG_AHEAD ||
      rc == REPLICATE_ELOG_CORRUPT || rc == REPLICATE_EPANIC) {
    ship_diag(sh, "standby %s: the log does not hold seq %" PRIu64 " (%s): "
              "sending a base image", peer->url, p->seq, replicate_strerror(rc));
    peer->need_base = true;
    return 0;
  }
  if (rc)
    return rc;
  rc = replicate_frame_parse_header(p->data, p->len, NULL, &p->first);
  if (rc) {
    ship_drop_ref(sh, &p->ref);
    return rc;
  }
  *go = true;
  return 0;
}

/* Does the first frame follow r, the standby's position? If not, our
 * log has another checksum at its seq: it diverged. */
static bool check_chain(ship_peer *peer, const loom_position *r, frame_piece *p)
{
  const replicate_frame_info *first = &p->first;
  if (first->epoch < r->epoch || !loom_position_same(&first->before, r)) {
    ship_drop_ref(peer->sh, &p->ref);
    diverge(peer, REPLICATE_EFORK, "this primary's log has another checksum "
            "at its seq");
    return false;
  }
  set_on_chain(peer, true);
  return true;
}

/* Add frame s to the piece, as far as the piece caps allow. False when
 * the piece ends before it. */
static bool merge_frame(ship_peer *peer, frame_piece *p, uint64_t s,
                        uint64_t cap_pages)
{
  replicate_shipper *sh = peer->sh;
  ship_frame *next_ref = NULL;
  const uint8_t *next_data;
  size_t next_len;
  if (ship_fetch_frame(sh, s, &next_ref, &peer->scratch, &next_data, &next_len))
    return false;
  replicate_frame_info info;
  int prc = replicate_frame_parse_header(next_data, next_len, NULL, &info);
  if (prc || info.epoch != p->first.epoch ||
      p->pages + info.page_count > cap_pages ||
      p->bytes + next_len > sh->coalesce_max_bytes) {
    ship_drop_ref(sh, &next_ref);
    return false;
  }
  if (!p->merged) {
    replicate_frame f;
    prc = replicate_frame_decode(sh->dec, p->data, p->len, &f);
    if (!prc)
      prc = replicate_coalescer_add(sh->coal, &f);
    if (prc) {
      ship_drop_ref(sh, &next_ref);
      return false;
    }
    p->merged = true;
  }
  replicate_frame f;
  prc = replicate_frame_decode(sh->dec, next_data, next_len, &f);
  ship_drop_ref(sh, &next_ref);
  if (prc)
    return false; /* the piece ends before this frame */
  prc = replicate_coalescer_add(sh->coal, &f);
  if (prc) {
    /* The coalescer emptied itself: send the first frame alone. */
    p->merged = false;
    p->frames = 1;
    return false;
  }
  p->frames++;
  p->pages += info.page_count;
  p->bytes += next_len;
  return true;
}

/* Send the merged piece. False when merging failed (the coalescer is
 * empty again) and the first frame goes alone; else *rc says how the
 * request started. */
static bool send_merged(ship_peer *peer, frame_piece *p, int *rc)
{
  replicate_shipper *sh = peer->sh;
  *rc = replicate_coalescer_finish(sh->coal, sh->ship_enc, &peer->scratch);
  if (*rc)
    return false;
  ship_drop_ref(sh, &p->ref);
  replicate_frame_info info;
  *rc = replicate_frame_parse_header(peer->scratch.data, peer->scratch.len, NULL,
                                     &info);
  if (*rc)
    return true;
  /* The merged piece is the standby's own body: swap buffers so the
   * scratch buffer is free for the next piece. */
  replicate_buf tmp = peer->body_buf;
  peer->body_buf = peer->scratch;
  peer->scratch = tmp;
  peer->req = REQ_COALESCED;
  peer->body = peer->body_buf.data;
  peer->body_len = peer->body_buf.len;
  peer->req_epoch = info.epoch;
  peer->req_after_seq = info.after.seq;
  peer->req_after_checksum = info.after.checksum;
  peer->req_frames = p->frames;
  peer->req_pages = info.page_count;
  peer->req_raw_bytes = info.page_count * LOOM_PAGE_SIZE;
  ship_publish_state(peer, REPLICATE_PEER_CATCHING_UP);
  *rc = ship_post_body(peer);
  if (!*rc)
    mark_sent(peer, info.after.seq);
  return true;
}

/* Send the first frame as it is (it may live in body_buf: read from the
 * log). */
static int send_one(ship_peer *peer, frame_piece *p, const loom_position *latest)
{
  const replicate_frame_info *first = &p->first;
  peer->req_frame = p->ref;
  peer->req = REQ_FRAME;
  peer->body = p->data;
  peer->body_len = p->len;
  peer->req_epoch = first->epoch;
  peer->req_after_seq = first->after.seq;
  peer->req_after_checksum = first->after.checksum;
  peer->req_frames = 1;
  peer->req_pages = first->page_count;
  peer->req_raw_bytes = first->page_count * LOOM_PAGE_SIZE;
  ship_publish_state(peer, latest->seq == p->seq ? REPLICATE_PEER_STREAMING
                                               : REPLICATE_PEER_CATCHING_UP);
  int rc = ship_post_body(peer);
  if (rc) {
    ship_release_request(peer);
    return rc;
  }
  mark_sent(peer, first->after.seq);
  return 0;
}

/* Send the standby the frames after r: one frame as it is, or a merged
 * piece. Returns 0 (a request started, or need_base set, or it
 * diverged), or an error. */
static int start_frames(ship_peer *peer, const loom_position *r,
                        const loom_position *latest)
{
  replicate_shipper *sh = peer->sh;
  frame_piece p = {.seq = r->seq + 1};
  bool go;
  int rc = fetch_first(peer, &p, &go);
  if (rc || !go)
    return rc;
  if (!check_chain(peer, r, &p))
    return 0;

  /* Merge when further behind, as far as the piece caps allow. */
  uint64_t cap_pages = peer->coalesce_pages;
  p.frames = 1;
  p.pages = p.first.page_count;
  p.bytes = p.len;
  if (!peer->single_frames && latest->seq > p.seq && p.first.page_count < cap_pages)
    for (uint64_t s = p.seq + 1; s <= latest->seq; s++)
      if (!merge_frame(peer, &p, s, cap_pages))
        break;

  if (p.merged && p.frames > 1) {
    if (send_merged(peer, &p, &rc))
      return rc;
    /* Merging failed (the coalescer is empty again): the first frame
     * alone, below. */
  } else if (p.merged) {
    /* Only the first frame was added: empty the coalescer. */
    replicate_buf discard = {0};
    (void)replicate_coalescer_finish(sh->coal, sh->ship_enc, &discard);
    replicate_buf_free(&discard);
  }
  return send_one(peer, &p, latest);
}

/* ---------------------------------------------------------------------- */
/* Verified positions (DESIGN section 8, "Checksums in acks") */

/* Our checksum at seq (at or below latest), when known. */
static bool our_checksum_at(replicate_shipper *sh, uint64_t seq,
                            const loom_position *latest, uint64_t *checksum)
{
  uint64_t epoch;
  if (seq > latest->seq)
    return false;
  if (seq == latest->seq) {
    *checksum = latest->checksum;
    return true;
  }
  return loom_store_checksum_at(sh->store, seq, &epoch, checksum) == 1;
}

/* Compare the checksum a standby of our history computed itself from its
 * image with ours at the same seq: equal moves verified_seq; different is
 * a mismatch, shown as diverged (schedule_known) until an answer equals
 * ours again (a repaired image). A standby whose claimed position at that
 * seq already differs from ours forked: the history rules say so (place.c,
 * check_chain), with the better reason. Under mu. Returns true for a new
 * mismatch. */
static bool check_computed_locked(ship_peer *peer, const ship_answer *a,
                                  const loom_position *latest)
{
  replicate_shipper *sh = peer->sh;
  uint64_t ours;
  if (!a->has_computed || a->computed.seq == 0 ||
      (a->has_history && !loom_history_is_none(&a->history) &&
       !loom_history_equal(&a->history, &sh->lineage.history)) ||
      !our_checksum_at(sh, a->computed.seq, latest, &ours))
    return false;
  if (a->has_applied && a->applied.seq == a->computed.seq &&
      a->applied.checksum != ours)
    return false;
  if (ours == a->computed.checksum) {
    if (a->computed.seq > peer->verified_seq)
      peer->verified_seq = a->computed.seq;
    peer->mismatch = false;
    return false;
  }
  if (peer->mismatch && loom_position_same(&peer->mismatch_at, &a->computed))
    return false;
  peer->mismatch = true;
  peer->mismatch_at = a->computed;
  peer->mismatch_ours = ours;
  peer->checksum_mismatches++;
  return true;
}

static void check_computed(ship_peer *peer, const ship_answer *a)
{
  replicate_shipper *sh = peer->sh;
  pthread_mutex_lock(&sh->mu);
  loom_position latest = sh->latest;
  if (sh->committed_floor.epoch == latest.epoch &&
      sh->committed_floor.seq > latest.seq)
    latest = sh->committed_floor;
  bool fresh = check_computed_locked(peer, a, &latest);
  pthread_mutex_unlock(&sh->mu);
  if (fresh)
    ship_diag(sh, "standby %s: %s: at seq %" PRIu64 " it computed %016" PRIx64
              " from its image, this primary has %016" PRIx64, peer->url,
              replicate_strerror(REPLICATE_ECHECKSUM_MISMATCH),
              a->computed.seq, a->computed.checksum, peer->mismatch_ours);
}

/* A standby whose computed checksum differed from ours: diverged. */
static void diverge_on_mismatch(ship_peer *peer)
{
  char detail[160];
  snprintf(detail, sizeof detail, "at seq %" PRIu64 " it computed %016" PRIx64
           " from its image, this primary has %016" PRIx64,
           peer->mismatch_at.seq, peer->mismatch_at.checksum, peer->mismatch_ours);
  diverge(peer, REPLICATE_ECHECKSUM_MISMATCH, detail);
}

/* A standby whose computed checksum differs from ours is diverged (we
 * cannot tell its image from another's), except when it says itself that
 * its image no longer holds what it recorded (rot found by its read-back
 * or a frame that no longer applies) and asks for a base image: its
 * recorded position is ours (schedule_known checked it), so a base image
 * of our history moves it forward on our own line, not onto another
 * (DESIGN section 3). Once per mend: the next is allowed only after the
 * standby verified a seq past the last one, or SHIP_MEND_INTERVAL_S after
 * it (a disk that spoils every write stays diverged instead of being sent
 * base images back to back; rot met again days later is mended again). */
#define SHIP_MEND_INTERVAL_S 600
static bool mend_allowed(const ship_peer *peer)
{
  return peer->need_base && peer->says_damaged &&
         (peer->mended_seq == 0 || peer->verified_seq > peer->mended_seq ||
          ship_mono_ns() - peer->mended_ns >= ship_seconds_to_ns(SHIP_MEND_INTERVAL_S));
}

/* The standby holds a newer epoch than ours. Only a node of our own
 * history fences us (finish() says the same): another history's epochs
 * say nothing about ours. */
static void fence_or_diverge(ship_peer *peer, uint64_t epoch)
{
  replicate_shipper *sh = peer->sh;
  if (peer->has_history && !loom_history_is_none(&peer->history) &&
      !loom_history_equal(&peer->history, &sh->lineage.history))
    diverge(peer, REPLICATE_EHISTORY, "it follows another history");
  else
    fence(sh, peer, epoch);
}

/* A base image replaces whatever the standby holds: only over a position
 * of our own history, as far as our positions ring tells. */
static int start_base_over(ship_peer *peer, const loom_position *r,
                           const loom_position *latest, const char **what)
{
  uint64_t epoch_at, checksum_at;
  if (r->seq > 0 && r->seq <= latest->seq &&
      loom_store_checksum_at(peer->sh->store, r->seq, &epoch_at, &checksum_at) &&
      checksum_at != r->checksum) {
    diverge(peer, REPLICATE_EFORK, "this primary had another checksum at its seq");
    return 0;
  }
  *what = "base image";
  return start_base(peer);
}

/* The next request of a standby whose position we know; *what names it
 * for an error. */
static int schedule_known(ship_peer *peer, int64_t now, const loom_position *latest,
                          const char **what)
{
  replicate_shipper *sh = peer->sh;
  loom_position r = peer->received;
  if (r.epoch > latest->epoch) {
    fence_or_diverge(peer, r.epoch);
    return 0;
  }
  int place = replicate_place_peer(&sh->lineage, latest,
                                   peer->has_history ? &peer->history : NULL, &r);
  if (replicate_is_divergence(place)) {
    diverge(peer, place, place == REPLICATE_EBEHIND
                           ? "it is ahead of this primary, whose directory "
                             "is older (restored from a backup, or empty?)"
                           : "checked against this primary's history");
    return 0;
  }
  if (peer->mismatch && !mend_allowed(peer)) {
    diverge_on_mismatch(peer);
    return 0;
  }
  peer->diverged = 0;
  if (!peer->need_base && place == REPLICATE_EDUPLICATE) {
    set_on_chain(peer, true);
    ship_publish_state(peer, REPLICATE_PEER_STREAMING);
    if (now - peer->last_activity_ns < sh->heartbeat_ns)
      return 0;
    *what = "heartbeat";
    return start_heartbeat(peer, latest);
  }
  if (!peer->need_base) {
    *what = "frames";
    int rc = start_frames(peer, &r, latest);
    /* Frames on their way, or none because it diverged: never a base
     * image then (only a log that no longer reaches back asks one). */
    if (rc || peer->in_flight || peer->diverged)
      return rc;
  }
  return start_base_over(peer, &r, latest, what);
}

/* Pick and start the next request of an idle standby. */
void ship_schedule(ship_peer *peer, int64_t now)
{
  replicate_shipper *sh = peer->sh;
  if (peer->in_flight)
    return;
  pthread_mutex_lock(&sh->mu);
  bool fenced = sh->fenced;
  loom_position latest = sh->latest;
  bool new_token = peer->state == REPLICATE_PEER_UNAUTHORIZED &&
                   sh->token_gen != peer->refused_token_gen;
  pthread_mutex_unlock(&sh->mu);
  if (fenced || (now < peer->next_attempt_ns && !new_token))
    return;

  /* A snapshot for base images reads the image file, which the apply
   * may bring past the position the commit hook published yet: what it
   * holds is committed all the same. */
  if (sh->committed_floor.epoch == latest.epoch &&
      sh->committed_floor.seq > latest.seq)
    latest = sh->committed_floor;
  const char *what = "heartbeat";
  int rc = peer->known ? schedule_known(peer, now, &latest, &what)
                     : start_heartbeat(peer, &latest);
  if (rc) {
    /* A local failure (reading the log, a snapshot, memory): the state
     * stays, the error is shown, and the attempt is repeated later. */
    ship_set_error(peer, "preparing the %s: %s", what, replicate_strerror(rc));
    retry_after_backoff(peer, 0);
  }
}

/* After an acknowledgement: wake sync waiters, restore sync mode. */
void ship_after_ack(replicate_shipper *sh)
{
  pthread_mutex_lock(&sh->mu);
  pthread_cond_broadcast(&sh->cond);
  if (sh->degraded && ship_acked_locked(sh, sh->latest.epoch, sh->latest.seq) >=
                          sh->sync_count) {
    sh->degraded = false;
    sh->degraded_since_ns = 0;
    pthread_mutex_unlock(&sh->mu);
    ship_diag(sh, "sync mode restored: %u standbys hold the latest frame",
              sh->sync_count);
    return;
  }
  pthread_mutex_unlock(&sh->mu);
}

/* ---------------------------------------------------------------------- */
/* Answers */

/* The REPLICATE_E* code a standby's 409 names, for the codes that change
 * what the primary does next; 0 for any other. */
static int refusal_of(const char *name)
{
  static const struct {
    const char *name;
    int rc;
  } codes[] = {
      {"REPLICATE_EHISTORY", REPLICATE_EHISTORY},
      {"REPLICATE_EBEHIND", REPLICATE_EBEHIND},
      {"REPLICATE_EFORK", REPLICATE_EFORK},
      {"REPLICATE_EPAST_BRANCH", REPLICATE_EPAST_BRANCH},
      {"REPLICATE_EAFTER_CHECKSUM", REPLICATE_EAFTER_CHECKSUM},
      {"REPLICATE_EPAGE_HASH", REPLICATE_EPAGE_HASH},
      {"REPLICATE_ETAG_MISSING", REPLICATE_ETAG_MISSING},
      {"REPLICATE_ETAG_KEY", REPLICATE_ETAG_KEY},
      {"REPLICATE_ETAG_BAD", REPLICATE_ETAG_BAD},
  };
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
    if (strcmp(name, codes[i].name) == 0)
      return codes[i].rc;
  return 0;
}

/* An HTTP error answer with no state of its own: refused, saying the code
 * and the standby's error text (standby_error, or NULL). */
static void refuse(ship_peer *peer, request_kind req, long code,
                   const char *standby_error, double retry_after_s)
{
  char text[REPLICATE_ERROR_MAX];
  if (standby_error)
    snprintf(text, sizeof text, "%s: HTTP %ld (%s)", ship_request_name(req),
             code, standby_error);
  else
    snprintf(text, sizeof text, "%s: HTTP %ld", ship_request_name(req), code);
  replicate_peer_state state = REPLICATE_PEER_REFUSED;
  fail_into(peer, &state, retry_after_s, text);
}

static void record_position(ship_peer *peer, const ship_answer *a)
{
  replicate_shipper *sh = peer->sh;
  pthread_mutex_lock(&sh->mu);
  if (a->has_history) {
    peer->has_history = true;
    peer->history = a->history;
  }
  peer->received = a->received;
  if (a->has_applied)
    peer->applied = a->applied;
  else if (!peer->has_position)
    peer->applied = peer->received;
  peer->has_position = true;
  peer->last_reply_ns = ship_real_ns();
  peer->on_chain = false; /* until checked (ship_schedule, ship_finish) */
  pthread_cond_broadcast(&sh->cond);
  pthread_mutex_unlock(&sh->mu);
  peer->known = true;
  check_computed(peer, a);
}

/* No answer: the transfer failed, or the answer was too long. */
static void finish_no_answer(ship_peer *peer, request_kind req, CURLcode result)
{
  if (peer->answer_overflow)
    ship_fail(peer, true, 0, "%s: answer longer than %u bytes", ship_request_name(req),
              SHIP_ANSWER_MAX);
  else
    ship_fail(peer, true, 0, "%s: %s", ship_request_name(req),
              peer->errbuf[0] ? peer->errbuf : curl_easy_strerror(result));
  /* Frames are resent as they were (a standby that got them answers
   * 200, a duplicate; one that moved answers 409 with its position); a
   * base image is not resent blindly: its position is asked first. */
  peer->known = req == REQ_FRAME || req == REQ_COALESCED;
}

/* The request went through: account for it. */
static void account(ship_peer *peer, request_kind req, uint64_t wire)
{
  replicate_shipper *sh = peer->sh;
  pthread_mutex_lock(&sh->mu);
  peer->requests++;
  peer->bytes_wire += wire;
  peer->bytes_raw += peer->req_raw_bytes;
  switch (req) {
  case REQ_HEARTBEAT: peer->heartbeats_sent++; break;
  case REQ_FRAME: peer->frames_sent += peer->req_frames; break;
  case REQ_COALESCED:
    peer->frames_sent += peer->req_frames;
    peer->coalesced_sent++;
    break;
  case REQ_BASE: break;
  case REQ_NONE: break;
  }
  pthread_mutex_unlock(&sh->mu);
}

/* A 200 or 409 carries the standby's position: record it. True when that
 * ends the request: the answer is unreadable, or it fences us. */
static bool take_position(ship_peer *peer, request_kind req, long code,
                          bool readable, const ship_answer *a, double retry_s)
{
  replicate_shipper *sh = peer->sh;
  if (!readable || !a->has_received) {
    ship_fail(peer, true, retry_s, "%s: HTTP %ld with an unreadable answer",
              ship_request_name(req), code);
    return true;
  }
  pthread_mutex_lock(&sh->mu);
  uint64_t ours = sh->latest.epoch;
  pthread_mutex_unlock(&sh->mu);
  bool stale = code == 409 && a->has_error && strcmp(a->error, "stale epoch") == 0;
  uint64_t theirs = a->received.epoch;
  if (a->has_epoch && a->epoch > theirs)
    theirs = a->epoch;
  /* Only a node of our own history fences us: another history's epochs
   * say nothing about ours. */
  bool same_history = !a->has_history || loom_history_is_none(&a->history) ||
                      loom_history_equal(&a->history, &sh->lineage.history);
  record_position(peer, a);
  if (same_history && (stale || theirs > ours)) {
    fence(sh, peer, theirs > ours ? theirs : ours + 1);
    return true;
  }
  return false;
}

/* 200: the standby took the request. */
static void finish_ok(ship_peer *peer, request_kind req, double retry_s)
{
  replicate_shipper *sh = peer->sh;
  peer->consecutive_failures = 0;
  peer->consecutive_conflicts = 0;
  peer->unauthorized_run = 0;
  peer->says_damaged = false; /* it took a request: no longer asking */
  /* A success ends any wait: after a 401 the new token's first request is
   * let through early (ship_schedule), and the rest must not then wait out
   * the unauthorized retry period. */
  peer->next_attempt_ns = 0;
  pthread_mutex_lock(&sh->mu);
  peer->unreachable_run = 0;
  pthread_mutex_unlock(&sh->mu);
  if (req == REQ_BASE) {
    peer->need_base = false;
    pthread_mutex_lock(&sh->mu);
    peer->base_images_sent++;
    pthread_mutex_unlock(&sh->mu);
    ship_diag(sh, "standby %s: base image at seq %" PRIu64 " received", peer->url,
              peer->req_after_seq);
  }
  if ((req == REQ_FRAME || req == REQ_COALESCED || req == REQ_BASE) &&
      peer->received.epoch == peer->req_epoch &&
      peer->received.seq < peer->req_after_seq) {
    ship_fail(peer, false, retry_s, "%s up to seq %" PRIu64 " answered 200 but the "
              "standby holds seq %" PRIu64, ship_request_name(req), peer->req_after_seq,
              peer->received.seq);
    return;
  }
  if ((req == REQ_FRAME || req == REQ_COALESCED || req == REQ_BASE) &&
      peer->received.seq == peer->req_after_seq &&
      peer->received.checksum == peer->req_after_checksum)
    set_on_chain(peer, true);
  ship_after_ack(sh);
  ship_retain_log(sh);
}

/* 409: the standby refused the request, saying where it is. */
static void finish_conflict(ship_peer *peer, request_kind req, const ship_answer *a,
                            double retry_s)
{
  replicate_shipper *sh = peer->sh;
  int refusal = a->has_code ? refusal_of(a->code) : 0;
  if (refusal == REPLICATE_EBEHIND && req == REQ_BASE) {
    /* Our snapshot trailed the standby (the image file is written after
     * the commit point): a newer one follows, not a divergence. */
    ship_set_error(peer, "base image at seq %" PRIu64 " is behind the standby "
                   "(seq %" PRIu64 "): a newer one follows", peer->req_after_seq,
                   a->received.seq);
    retry_after_backoff(peer, retry_s);
    ship_after_ack(sh);
    return;
  }
  if (replicate_is_divergence(refusal)) {
    diverge(peer, refusal, "the standby refused our input");
    ship_after_ack(sh);
    return;
  }
  /* A frame that did not rebuild the standby's image although its
   * before matched: its image is damaged; a base image repairs it. */
  if (refusal == REPLICATE_EAFTER_CHECKSUM || refusal == REPLICATE_EPAGE_HASH ||
      (!a->has_code && a->has_error && strcmp(a->error, "checksum mismatch") == 0))
    peer->need_base = peer->says_damaged = true;
  else
    peer->says_damaged = false; /* asks for nothing now */
  if (++peer->consecutive_conflicts >= CONFLICTS_BEFORE_BASE)
    peer->need_base = true;
  ship_set_error(peer, "%s refused (409 %s): the standby is at seq %" PRIu64
                 "; resending from there", ship_request_name(req),
                 a->has_error ? a->error : "conflict", a->received.seq);
  if (peer->consecutive_conflicts > 1)
    retry_after_backoff(peer, retry_s);
  ship_after_ack(sh);
}

/* The first ask again after a 401; each refusal in a row doubles the wait,
 * up to unauthorized_retry_seconds. Nodes re-read their token and frame
 * keys one at a time (SIGHUP on each): a primary that rotated first is
 * refused by a standby that has not yet, and must not then wait a whole
 * retry period after the standby caught up. */
#define UNAUTHORIZED_FIRST_RETRY_S 0.5

/* 401, 403: the standby refused our token, or our frame tag (its code
 * says which: a REPLICATE_ETAG_*); retried when a new token is set, or
 * after a wait that grows while it keeps refusing. */
static void finish_unauthorized(ship_peer *peer, long code, const ship_answer *a)
{
  replicate_shipper *sh = peer->sh;
  pthread_mutex_lock(&sh->mu);
  peer->failures++;
  peer->errors[REPLICATE_PEER_ERROR_UNAUTHORIZED]++;
  pthread_mutex_unlock(&sh->mu);
  if (a->has_code && strncmp(a->code, "REPLICATE_ETAG_", 15) == 0)
    ship_set_error(peer, "HTTP %ld: the standby refused our frame tag (%s: %s)",
                   code, a->code, replicate_strerror(refusal_of(a->code)));
  else
    ship_set_error(peer, "HTTP %ld: the standby refused our token", code);
  pthread_mutex_lock(&sh->mu);
  peer->refused_token_gen = sh->token_gen;
  pthread_mutex_unlock(&sh->mu);
  ship_publish_state(peer, REPLICATE_PEER_UNAUTHORIZED);
  peer->known = false;
  int64_t wait_ns = ship_seconds_to_ns(UNAUTHORIZED_FIRST_RETRY_S);
  for (unsigned i = 0; i < peer->unauthorized_run && wait_ns < sh->unauthorized_retry_ns; i++)
    wait_ns *= 2;
  if (wait_ns > sh->unauthorized_retry_ns)
    wait_ns = sh->unauthorized_retry_ns;
  if (peer->unauthorized_run < UINT_MAX)
    peer->unauthorized_run++;
  peer->next_attempt_ns = ship_mono_ns() + wait_ns;
}

/* 413: the body was too large: smaller pieces, or a base image. */
static void finish_too_large(ship_peer *peer, request_kind req, long code,
                             double retry_s)
{
  if (req == REQ_COALESCED && peer->req_pages > 1) {
    peer->coalesce_pages = peer->req_pages / 2;
    ship_set_error(peer, "merged frames of %" PRIu64 " pages refused as too large "
                   "(413): pieces of at most %" PRIu64 " pages from now on",
                   peer->req_pages, peer->coalesce_pages);
    peer->known = false;
    return;
  }
  if (req == REQ_FRAME) {
    ship_set_error(peer, "frame %" PRIu64 " refused as too large (413): sending a "
                   "base image", peer->req_after_seq);
    peer->need_base = true;
    peer->known = false;
    return;
  }
  refuse(peer, req, code, "too large", retry_s);
}

/* A request ended: a dispatcher over one handler per kind of answer. */
void ship_finish(ship_peer *peer, CURLcode result)
{
  request_kind req = peer->req;
  long code = 0;
  curl_off_t retry_after = 0;
  curl_easy_getinfo(peer->easy, CURLINFO_RESPONSE_CODE, &code);
  curl_easy_getinfo(peer->easy, CURLINFO_RETRY_AFTER, &retry_after);
  int base_read_error = req == REQ_BASE ? peer->base_read_error : 0;
  uint64_t wire = req == REQ_BASE ? peer->base_total : peer->body_len;
  ship_release_request(peer);
  peer->in_flight = false;
  peer->req = REQ_NONE;
  peer->last_activity_ns = ship_mono_ns();
  double retry_s = retry_after > 0 ? (double)retry_after : 0;

  if (base_read_error) {
    ship_fail(peer, false, 0, "reading the snapshot for the base image: %s",
              replicate_strerror(base_read_error));
    return;
  }
  if (result != CURLE_OK) {
    finish_no_answer(peer, req, result);
    return;
  }
  account(peer, req, wire);
  ship_answer a;
  bool readable = ship_answer_parse(peer->answer, peer->answer_len, &a) == 0;
  if (readable && (code == 200 || code == 409) && a.has_received)
    peer->single_frames = a.single_frames; /* a delayed standby says so */
  if ((code == 200 || code == 409) &&
      take_position(peer, req, code, readable, &a, retry_s))
    return;
  switch (code) {
  case 200: finish_ok(peer, req, retry_s); return;
  case 409: finish_conflict(peer, req, &a, retry_s); return;
  case 401:
  case 403: finish_unauthorized(peer, code, &a); return;
  case 413: finish_too_large(peer, req, code, retry_s); return;
  default:
    refuse(peer, req, code, readable && a.has_error ? a.error : NULL, retry_s);
    return;
  }
}
