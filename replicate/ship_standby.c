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

void ship_publish_state(standby *sb, replicate_peer_state state)
{
  replicate_shipper *sh = sb->sh;
  pthread_mutex_lock(&sh->mu);
  if (!sh->fenced && sb->state != state) {
    ship_diag(sh, "standby %s: %s -> %s", sb->url,
              replicate_peer_state_name(sb->state),
              replicate_peer_state_name(state));
    sb->state = state;
    pthread_cond_broadcast(&sh->cond);
  }
  pthread_mutex_unlock(&sh->mu);
}

void ship_set_error(standby *sb, const char *fmt, ...)
{
  replicate_shipper *sh = sb->sh;
  char text[REPLICATE_ERROR_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  pthread_mutex_lock(&sh->mu);
  memcpy(sb->last_error, text, sizeof text);
  sb->last_error_ns = ship_real_ns();
  pthread_mutex_unlock(&sh->mu);
  ship_diag(sh, "standby %s: %s", sb->url, text);
}

static void set_on_chain(standby *sb, bool on_chain)
{
  replicate_shipper *sh = sb->sh;
  pthread_mutex_lock(&sh->mu);
  if (sb->on_chain != on_chain) {
    sb->on_chain = on_chain;
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
    const standby *sb = &sh->sb[i];
    if (sb->has_position && sb->on_chain &&
        sb->state != REPLICATE_PEER_FENCED &&
        sb->received.epoch == epoch && sb->received.seq >= seq)
      count++;
  }
  return count;
}

/* A promotion elsewhere fenced us (I4). */
static void fence(replicate_shipper *sh, standby *by, uint64_t epoch)
{
  pthread_mutex_lock(&sh->mu);
  bool first = !sh->fenced;
  sh->fenced = true;
  for (size_t i = 0; i < sh->n; i++)
    sh->sb[i].state = REPLICATE_PEER_FENCED;
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
static void diverge(standby *sb, int why, const char *detail)
{
  replicate_shipper *sh = sb->sh;
  sb->diverged = why;
  sb->need_base = false;
  sb->known = false;
  sb->next_attempt_ns = ship_mono_ns() + ship_seconds_to_ns(sh->backoff_max_s);
  ship_set_error(sb, "diverged (%s): %s; its position (epoch %" PRIu64 ", seq %"
                 PRIu64 ", checksum %016" PRIx64 ") is left as it is", detail,
                 replicate_strerror(why), sb->received.epoch, sb->received.seq,
                 sb->received.checksum);
  ship_publish_state(sb, REPLICATE_PEER_DIVERGED);
  pthread_mutex_lock(&sh->mu);
  sb->on_chain = false;
  pthread_cond_broadcast(&sh->cond); /* a drain stops waiting for it */
  pthread_mutex_unlock(&sh->mu);
}

/* ---------------------------------------------------------------------- */
/* Failures and backoff */

static void retry_after_backoff(standby *sb, double retry_after_s)
{
  replicate_shipper *sh = sb->sh;
  unsigned k = sb->consecutive_failures < 30 ? sb->consecutive_failures : 30;
  double delay = sh->backoff_base_s;
  for (unsigned i = 0; i < k && delay < sh->backoff_max_s; i++)
    delay *= 2;
  if (delay > sh->backoff_max_s)
    delay = sh->backoff_max_s;
  delay = delay / 2 + ship_random_unit(sh) * delay / 2; /* equal jitter */
  if (retry_after_s > delay)
    delay = retry_after_s;
  sb->consecutive_failures++;
  sb->next_attempt_ns = ship_mono_ns() + ship_seconds_to_ns(delay);
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
static void fail_into(standby *sb, const replicate_peer_state *state,
                      double retry_after_s, const char *text)
{
  replicate_shipper *sh = sb->sh;
  pthread_mutex_lock(&sh->mu);
  sb->failures++;
  sb->errors[error_kind(state)]++;
  if (state)
    sb->unreachable_run++;
  pthread_cond_broadcast(&sh->cond); /* a drain counts the attempts */
  pthread_mutex_unlock(&sh->mu);
  ship_set_error(sb, "%s", text);
  if (state)
    ship_publish_state(sb, *state);
  sb->known = false;
  retry_after_backoff(sb, retry_after_s);
}

/* No answer (unreachable, or still stalled when it was shown stalled), or
 * a local failure (the state is kept). */
void ship_fail(standby *sb, bool unreachable, double retry_after_s,
               const char *fmt, ...)
{
  char text[REPLICATE_ERROR_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  replicate_peer_state state = sb->stalled ? REPLICATE_PEER_STALLED
                                              : REPLICATE_PEER_UNREACHABLE;
  fail_into(sb, unreachable ? &state : NULL, retry_after_s, text);
}

/* ---------------------------------------------------------------------- */
/* Starting requests */

static int start_heartbeat(standby *sb, const loom_position *latest)
{
  int rc = replicate_frame_encode_heartbeat(&sb->sh->lineage.history, latest,
                                            ship_real_ns(), &sb->body_buf);
  if (rc)
    return rc;
  sb->req = REQ_HEARTBEAT;
  sb->body = sb->body_buf.data;
  sb->body_len = sb->body_buf.len;
  sb->req_epoch = latest->epoch;
  sb->req_after_seq = 0;
  sb->req_after_checksum = 0;
  sb->req_frames = 0;
  sb->req_raw_bytes = 0;
  sb->req_pages = 0;
  return ship_post_body(sb);
}

static void mark_sent(standby *sb, uint64_t seq)
{
  replicate_shipper *sh = sb->sh;
  pthread_mutex_lock(&sh->mu);
  sb->sent_seq = seq;
  pthread_mutex_unlock(&sh->mu);
}

/* A snapshot (shared by base images in flight) at a position below what
 * the standby holds would move it backwards: it refuses that. Reopen an
 * unshared one (the image file trails the committed position while an
 * apply runs), else wait for the one in use to be released. True when the
 * base image must wait. */
static bool snapshot_behind(standby *sb)
{
  replicate_shipper *sh = sb->sh;
  if (!sh->snap || sh->snap_pos.epoch != sb->received.epoch ||
      sh->snap_pos.seq >= sb->received.seq)
    return false;
  if (sh->snap_refs == 0) {
    loom_snapshot_close(sh->snap);
    sh->snap = NULL;
    return false;
  }
  return true;
}

/* The base request's headers: ours, and the position it was chosen for
 * (X-Loomship-If-Position): a standby that moved on since refuses it with
 * where it is now, and we decide again. */
static CURLcode base_headers(standby *sb)
{
  if (!sb->has_position)
    return curl_easy_setopt(sb->easy, CURLOPT_HTTPHEADER, sb->headers);
  char expect[96];
  snprintf(expect, sizeof expect, "X-Loomship-If-Position: %" PRIu64 " %" PRIu64
           " %016" PRIx64, sb->received.epoch, sb->received.seq,
           sb->received.checksum);
  for (struct curl_slist *p = sb->headers; p; p = p->next) {
    struct curl_slist *next = curl_slist_append(sb->base_headers, p->data);
    if (!next)
      return CURLE_OUT_OF_MEMORY;
    sb->base_headers = next;
  }
  struct curl_slist *next = curl_slist_append(sb->base_headers, expect);
  if (!next)
    return CURLE_OUT_OF_MEMORY;
  sb->base_headers = next;
  return curl_easy_setopt(sb->easy, CURLOPT_HTTPHEADER, sb->base_headers);
}

static int start_base(standby *sb)
{
  replicate_shipper *sh = sb->sh;
  if (snapshot_behind(sb)) {
    retry_after_backoff(sb, 0);
    return 0;
  }
  ship_publish_state(sb, REPLICATE_PEER_BASE_SYNC);
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
  sb->holds_snapshot = true;
  loom_lineage lineage;
  loom_snapshot_lineage(sh->snap, &lineage);
  loom_stream_header_encode(sb->base_header, &sh->snap_pos, &lineage);
  sb->base_off = 0;
  sb->base_total = LOOM_STREAM_HEADER + sh->snap_pos.pages * LOOM_PAGE_SIZE;
  sb->base_read_error = 0;
  sb->req = REQ_BASE;
  sb->req_epoch = sh->snap_pos.epoch;
  sb->req_after_seq = sh->snap_pos.seq;
  sb->req_after_checksum = sh->snap_pos.checksum;
  sb->req_frames = 0;
  sb->req_pages = sh->snap_pos.pages;
  sb->req_raw_bytes = sh->snap_pos.pages * LOOM_PAGE_SIZE;

  int rc = ship_prepare_easy(sb, sb->base_url);
  CURLcode c = rc ? CURLE_FAILED_INIT : CURLE_OK;
#define SET(opt, val)                                                        \
  do {                                                                       \
    if (c == CURLE_OK)                                                       \
      c = curl_easy_setopt(sb->easy, opt, val);                              \
  } while (0)
  if (c == CURLE_OK)
    c = base_headers(sb);
  SET(CURLOPT_UPLOAD, 1L);
  SET(CURLOPT_READFUNCTION, ship_read_base);
  SET(CURLOPT_READDATA, (void *)sb);
  SET(CURLOPT_INFILESIZE_LARGE, (curl_off_t)sb->base_total);
  SET(CURLOPT_LOW_SPEED_LIMIT, 1L);
  SET(CURLOPT_LOW_SPEED_TIME, sh->base_stall_s);
#undef SET
  if (!rc && c != CURLE_OK)
    rc = REPLICATE_ECURL;
  if (!rc)
    rc = ship_launch(sb);
  if (rc) {
    ship_release_request(sb);
    return rc;
  }
  mark_sent(sb, sh->snap_pos.seq);
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
static int fetch_first(standby *sb, frame_piece *p, bool *go)
{
  replicate_shipper *sh = sb->sh;
  *go = false;
  int rc = ship_fetch_frame(sh, p->seq, &p->ref, &sb->body_buf, &p->data, &p->len);
  if (rc == REPLICATE_ELOG_GONE || rc == REPLICATE_ELOG_AHEAD ||
      rc == REPLICATE_ELOG_CORRUPT || rc == REPLICATE_EPANIC) {
    ship_diag(sh, "standby %s: the log does not hold seq %" PRIu64 " (%s): "
              "sending a base image", sb->url, p->seq, replicate_strerror(rc));
    sb->need_base = true;
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
static bool check_chain(standby *sb, const loom_position *r, frame_piece *p)
{
  const replicate_frame_info *first = &p->first;
  if (first->epoch < r->epoch || !loom_position_same(&first->before, r)) {
    ship_drop_ref(sb->sh, &p->ref);
    diverge(sb, REPLICATE_EFORK, "this primary's log has another checksum "
            "at its seq");
    return false;
  }
  set_on_chain(sb, true);
  return true;
}

/* Add frame s to the piece, as far as the piece caps allow. False when
 * the piece ends before it. */
static bool merge_frame(standby *sb, frame_piece *p, uint64_t s,
                        uint64_t cap_pages)
{
  replicate_shipper *sh = sb->sh;
  ship_frame *next_ref = NULL;
  const uint8_t *next_data;
  size_t next_len;
  if (ship_fetch_frame(sh, s, &next_ref, &sb->scratch, &next_data, &next_len))
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
static bool send_merged(standby *sb, frame_piece *p, int *rc)
{
  replicate_shipper *sh = sb->sh;
  *rc = replicate_coalescer_finish(sh->coal, sh->ship_enc, &sb->scratch);
  if (*rc)
    return false;
  ship_drop_ref(sh, &p->ref);
  replicate_frame_info info;
  *rc = replicate_frame_parse_header(sb->scratch.data, sb->scratch.len, NULL,
                                     &info);
  if (*rc)
    return true;
  /* The merged piece is the standby's own body: swap buffers so the
   * scratch buffer is free for the next piece. */
  replicate_buf tmp = sb->body_buf;
  sb->body_buf = sb->scratch;
  sb->scratch = tmp;
  sb->req = REQ_COALESCED;
  sb->body = sb->body_buf.data;
  sb->body_len = sb->body_buf.len;
  sb->req_epoch = info.epoch;
  sb->req_after_seq = info.after.seq;
  sb->req_after_checksum = info.after.checksum;
  sb->req_frames = p->frames;
  sb->req_pages = info.page_count;
  sb->req_raw_bytes = info.page_count * LOOM_PAGE_SIZE;
  ship_publish_state(sb, REPLICATE_PEER_CATCHING_UP);
  *rc = ship_post_body(sb);
  if (!*rc)
    mark_sent(sb, info.after.seq);
  return true;
}

/* Send the first frame as it is (it may live in body_buf: read from the
 * log). */
static int send_one(standby *sb, frame_piece *p, const loom_position *latest)
{
  const replicate_frame_info *first = &p->first;
  sb->req_frame = p->ref;
  sb->req = REQ_FRAME;
  sb->body = p->data;
  sb->body_len = p->len;
  sb->req_epoch = first->epoch;
  sb->req_after_seq = first->after.seq;
  sb->req_after_checksum = first->after.checksum;
  sb->req_frames = 1;
  sb->req_pages = first->page_count;
  sb->req_raw_bytes = first->page_count * LOOM_PAGE_SIZE;
  ship_publish_state(sb, latest->seq == p->seq ? REPLICATE_PEER_STREAMING
                                               : REPLICATE_PEER_CATCHING_UP);
  int rc = ship_post_body(sb);
  if (rc) {
    ship_release_request(sb);
    return rc;
  }
  mark_sent(sb, first->after.seq);
  return 0;
}

/* Send the standby the frames after r: one frame as it is, or a merged
 * piece. Returns 0 (a request started, or need_base set, or it
 * diverged), or an error. */
static int start_frames(standby *sb, const loom_position *r,
                        const loom_position *latest)
{
  replicate_shipper *sh = sb->sh;
  frame_piece p = {.seq = r->seq + 1};
  bool go;
  int rc = fetch_first(sb, &p, &go);
  if (rc || !go)
    return rc;
  if (!check_chain(sb, r, &p))
    return 0;

  /* Merge when further behind, as far as the piece caps allow. */
  uint64_t cap_pages = sb->coalesce_pages;
  p.frames = 1;
  p.pages = p.first.page_count;
  p.bytes = p.len;
  if (latest->seq > p.seq && p.first.page_count < cap_pages)
    for (uint64_t s = p.seq + 1; s <= latest->seq; s++)
      if (!merge_frame(sb, &p, s, cap_pages))
        break;

  if (p.merged && p.frames > 1) {
    if (send_merged(sb, &p, &rc))
      return rc;
    /* Merging failed (the coalescer is empty again): the first frame
     * alone, below. */
  } else if (p.merged) {
    /* Only the first frame was added: empty the coalescer. */
    replicate_buf discard = {0};
    (void)replicate_coalescer_finish(sh->coal, sh->ship_enc, &discard);
    replicate_buf_free(&discard);
  }
  return send_one(sb, &p, latest);
}

/* The standby holds a newer epoch than ours. Only a node of our own
 * history fences us (finish() says the same): another history's epochs
 * say nothing about ours. */
static void fence_or_diverge(standby *sb, uint64_t epoch)
{
  replicate_shipper *sh = sb->sh;
  if (sb->has_history && !loom_history_is_none(&sb->history) &&
      !loom_history_equal(&sb->history, &sh->lineage.history))
    diverge(sb, REPLICATE_EHISTORY, "it follows another history");
  else
    fence(sh, sb, epoch);
}

/* A base image replaces whatever the standby holds: only over a position
 * of our own history, as far as our positions ring tells. */
static int start_base_over(standby *sb, const loom_position *r,
                           const loom_position *latest, const char **what)
{
  uint64_t epoch_at, checksum_at;
  if (r->seq > 0 && r->seq <= latest->seq &&
      loom_store_checksum_at(sb->sh->store, r->seq, &epoch_at, &checksum_at) &&
      checksum_at != r->checksum) {
    diverge(sb, REPLICATE_EFORK, "this primary had another checksum at its seq");
    return 0;
  }
  *what = "base image";
  return start_base(sb);
}

/* The next request of a standby whose position we know; *what names it
 * for an error. */
static int schedule_known(standby *sb, int64_t now, const loom_position *latest,
                          const char **what)
{
  replicate_shipper *sh = sb->sh;
  loom_position r = sb->received;
  if (r.epoch > latest->epoch) {
    fence_or_diverge(sb, r.epoch);
    return 0;
  }
  int place = replicate_place_peer(&sh->lineage, latest,
                                   sb->has_history ? &sb->history : NULL, &r);
  if (replicate_is_divergence(place)) {
    diverge(sb, place, place == REPLICATE_EBEHIND
                           ? "it is ahead of this primary, whose directory "
                             "is older (restored from a backup, or empty?)"
                           : "checked against this primary's history");
    return 0;
  }
  sb->diverged = 0;
  if (!sb->need_base && place == REPLICATE_EDUPLICATE) {
    set_on_chain(sb, true);
    ship_publish_state(sb, REPLICATE_PEER_STREAMING);
    if (now - sb->last_activity_ns < sh->heartbeat_ns)
      return 0;
    *what = "heartbeat";
    return start_heartbeat(sb, latest);
  }
  if (!sb->need_base) {
    *what = "frames";
    int rc = start_frames(sb, &r, latest);
    /* Frames on their way, or none because it diverged: never a base
     * image then (only a log that no longer reaches back asks one). */
    if (rc || sb->in_flight || sb->diverged)
      return rc;
  }
  return start_base_over(sb, &r, latest, what);
}

/* Pick and start the next request of an idle standby. */
void ship_schedule(standby *sb, int64_t now)
{
  replicate_shipper *sh = sb->sh;
  if (sb->in_flight)
    return;
  pthread_mutex_lock(&sh->mu);
  bool fenced = sh->fenced;
  loom_position latest = sh->latest;
  bool new_token = sb->state == REPLICATE_PEER_UNAUTHORIZED &&
                   sh->token_gen != sb->refused_token_gen;
  pthread_mutex_unlock(&sh->mu);
  if (fenced || (now < sb->next_attempt_ns && !new_token))
    return;

  /* A snapshot for base images reads the image file, which the apply
   * may bring past the position the commit hook published yet: what it
   * holds is committed all the same. */
  if (sh->committed_floor.epoch == latest.epoch &&
      sh->committed_floor.seq > latest.seq)
    latest = sh->committed_floor;
  const char *what = "heartbeat";
  int rc = sb->known ? schedule_known(sb, now, &latest, &what)
                     : start_heartbeat(sb, &latest);
  if (rc) {
    /* A local failure (reading the log, a snapshot, memory): the state
     * stays, the error is shown, and the attempt is repeated later. */
    ship_set_error(sb, "preparing the %s: %s", what, replicate_strerror(rc));
    retry_after_backoff(sb, 0);
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
  };
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
    if (strcmp(name, codes[i].name) == 0)
      return codes[i].rc;
  return 0;
}

/* An HTTP error answer with no state of its own: refused, saying the code
 * and the standby's error text (standby_error, or NULL). */
static void refuse(standby *sb, request_kind req, long code,
                   const char *standby_error, double retry_after_s)
{
  char text[REPLICATE_ERROR_MAX];
  if (standby_error)
    snprintf(text, sizeof text, "%s: HTTP %ld (%s)", ship_request_name(req),
             code, standby_error);
  else
    snprintf(text, sizeof text, "%s: HTTP %ld", ship_request_name(req), code);
  replicate_peer_state state = REPLICATE_PEER_REFUSED;
  fail_into(sb, &state, retry_after_s, text);
}

static void record_position(standby *sb, const ship_answer *a)
{
  replicate_shipper *sh = sb->sh;
  pthread_mutex_lock(&sh->mu);
  if (a->has_history) {
    sb->has_history = true;
    sb->history = a->history;
  }
  sb->received = a->received;
  if (a->has_applied)
    sb->applied = a->applied;
  else if (!sb->has_position)
    sb->applied = sb->received;
  sb->has_position = true;
  sb->on_chain = false; /* until checked (ship_schedule, ship_finish) */
  pthread_cond_broadcast(&sh->cond);
  pthread_mutex_unlock(&sh->mu);
  sb->known = true;
}

/* No answer: the transfer failed, or the answer was too long. */
static void finish_no_answer(standby *sb, request_kind req, CURLcode result)
{
  if (sb->answer_overflow)
    ship_fail(sb, true, 0, "%s: answer longer than %u bytes", ship_request_name(req),
              SHIP_ANSWER_MAX);
  else
    ship_fail(sb, true, 0, "%s: %s", ship_request_name(req),
              sb->errbuf[0] ? sb->errbuf : curl_easy_strerror(result));
  /* Frames are resent as they were (a standby that got them answers
   * 200, a duplicate; one that moved answers 409 with its position); a
   * base image is not resent blindly: its position is asked first. */
  sb->known = req == REQ_FRAME || req == REQ_COALESCED;
}

/* The request went through: account for it. */
static void account(standby *sb, request_kind req, uint64_t wire)
{
  replicate_shipper *sh = sb->sh;
  pthread_mutex_lock(&sh->mu);
  sb->requests++;
  sb->bytes_wire += wire;
  sb->bytes_raw += sb->req_raw_bytes;
  switch (req) {
  case REQ_HEARTBEAT: sb->heartbeats_sent++; break;
  case REQ_FRAME: sb->frames_sent += sb->req_frames; break;
  case REQ_COALESCED:
    sb->frames_sent += sb->req_frames;
    sb->coalesced_sent++;
    break;
  case REQ_BASE: break;
  case REQ_NONE: break;
  }
  pthread_mutex_unlock(&sh->mu);
}

/* A 200 or 409 carries the standby's position: record it. True when that
 * ends the request: the answer is unreadable, or it fences us. */
static bool take_position(standby *sb, request_kind req, long code,
                          bool readable, const ship_answer *a, double retry_s)
{
  replicate_shipper *sh = sb->sh;
  if (!readable || !a->has_received) {
    ship_fail(sb, true, retry_s, "%s: HTTP %ld with an unreadable answer",
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
  record_position(sb, a);
  if (same_history && (stale || theirs > ours)) {
    fence(sh, sb, theirs > ours ? theirs : ours + 1);
    return true;
  }
  return false;
}

/* 200: the standby took the request. */
static void finish_ok(standby *sb, request_kind req, double retry_s)
{
  replicate_shipper *sh = sb->sh;
  sb->consecutive_failures = 0;
  sb->consecutive_conflicts = 0;
  /* A success ends any wait: after a 401 the new token's first request is
   * let through early (ship_schedule), and the rest must not then wait out
   * the unauthorized retry period. */
  sb->next_attempt_ns = 0;
  pthread_mutex_lock(&sh->mu);
  sb->unreachable_run = 0;
  pthread_mutex_unlock(&sh->mu);
  if (req == REQ_BASE) {
    sb->need_base = false;
    pthread_mutex_lock(&sh->mu);
    sb->base_images_sent++;
    pthread_mutex_unlock(&sh->mu);
    ship_diag(sh, "standby %s: base image at seq %" PRIu64 " received", sb->url,
              sb->req_after_seq);
  }
  if ((req == REQ_FRAME || req == REQ_COALESCED || req == REQ_BASE) &&
      sb->received.epoch == sb->req_epoch &&
      sb->received.seq < sb->req_after_seq) {
    ship_fail(sb, false, retry_s, "%s up to seq %" PRIu64 " answered 200 but the "
              "standby holds seq %" PRIu64, ship_request_name(req), sb->req_after_seq,
              sb->received.seq);
    return;
  }
  if ((req == REQ_FRAME || req == REQ_COALESCED || req == REQ_BASE) &&
      sb->received.seq == sb->req_after_seq &&
      sb->received.checksum == sb->req_after_checksum)
    set_on_chain(sb, true);
  ship_after_ack(sh);
  ship_retain_log(sh);
}

/* 409: the standby refused the request, saying where it is. */
static void finish_conflict(standby *sb, request_kind req, const ship_answer *a,
                            double retry_s)
{
  replicate_shipper *sh = sb->sh;
  int refusal = a->has_code ? refusal_of(a->code) : 0;
  if (refusal == REPLICATE_EBEHIND && req == REQ_BASE) {
    /* Our snapshot trailed the standby (the image file is written after
     * the commit point): a newer one follows, not a divergence. */
    ship_set_error(sb, "base image at seq %" PRIu64 " is behind the standby "
                   "(seq %" PRIu64 "): a newer one follows", sb->req_after_seq,
                   a->received.seq);
    retry_after_backoff(sb, retry_s);
    ship_after_ack(sh);
    return;
  }
  if (replicate_is_divergence(refusal)) {
    diverge(sb, refusal, "the standby refused our input");
    ship_after_ack(sh);
    return;
  }
  /* A frame that did not rebuild the standby's image although its
   * before matched: its image is damaged; a base image repairs it. */
  if (refusal == REPLICATE_EAFTER_CHECKSUM || refusal == REPLICATE_EPAGE_HASH ||
      (!a->has_code && a->has_error && strcmp(a->error, "checksum mismatch") == 0))
    sb->need_base = true;
  if (++sb->consecutive_conflicts >= CONFLICTS_BEFORE_BASE)
    sb->need_base = true;
  ship_set_error(sb, "%s refused (409 %s): the standby is at seq %" PRIu64
                 "; resending from there", ship_request_name(req),
                 a->has_error ? a->error : "conflict", a->received.seq);
  if (sb->consecutive_conflicts > 1)
    retry_after_backoff(sb, retry_s);
  ship_after_ack(sh);
}

/* 401, 403: the standby refused our token; retried when a new one is
 * set, or after a while. */
static void finish_unauthorized(standby *sb, long code)
{
  replicate_shipper *sh = sb->sh;
  pthread_mutex_lock(&sh->mu);
  sb->failures++;
  sb->errors[REPLICATE_PEER_ERROR_UNAUTHORIZED]++;
  pthread_mutex_unlock(&sh->mu);
  ship_set_error(sb, "HTTP %ld: the standby refused our token", code);
  pthread_mutex_lock(&sh->mu);
  sb->refused_token_gen = sh->token_gen;
  pthread_mutex_unlock(&sh->mu);
  ship_publish_state(sb, REPLICATE_PEER_UNAUTHORIZED);
  sb->known = false;
  sb->next_attempt_ns = ship_mono_ns() + sh->unauthorized_retry_ns;
}

/* 413: the body was too large: smaller pieces, or a base image. */
static void finish_too_large(standby *sb, request_kind req, long code,
                             double retry_s)
{
  if (req == REQ_COALESCED && sb->req_pages > 1) {
    sb->coalesce_pages = sb->req_pages / 2;
    ship_set_error(sb, "merged frames of %" PRIu64 " pages refused as too large "
                   "(413): pieces of at most %" PRIu64 " pages from now on",
                   sb->req_pages, sb->coalesce_pages);
    sb->known = false;
    return;
  }
  if (req == REQ_FRAME) {
    ship_set_error(sb, "frame %" PRIu64 " refused as too large (413): sending a "
                   "base image", sb->req_after_seq);
    sb->need_base = true;
    sb->known = false;
    return;
  }
  refuse(sb, req, code, "too large", retry_s);
}

/* A request ended: a dispatcher over one handler per kind of answer. */
void ship_finish(standby *sb, CURLcode result)
{
  request_kind req = sb->req;
  long code = 0;
  curl_off_t retry_after = 0;
  curl_easy_getinfo(sb->easy, CURLINFO_RESPONSE_CODE, &code);
  curl_easy_getinfo(sb->easy, CURLINFO_RETRY_AFTER, &retry_after);
  int base_read_error = req == REQ_BASE ? sb->base_read_error : 0;
  uint64_t wire = req == REQ_BASE ? sb->base_total : sb->body_len;
  ship_release_request(sb);
  sb->in_flight = false;
  sb->req = REQ_NONE;
  sb->last_activity_ns = ship_mono_ns();
  double retry_s = retry_after > 0 ? (double)retry_after : 0;

  if (base_read_error) {
    ship_fail(sb, false, 0, "reading the snapshot for the base image: %s",
              replicate_strerror(base_read_error));
    return;
  }
  if (result != CURLE_OK) {
    finish_no_answer(sb, req, result);
    return;
  }
  account(sb, req, wire);
  ship_answer a;
  bool readable = ship_answer_parse(sb->answer, sb->answer_len, &a) == 0;
  if ((code == 200 || code == 409) &&
      take_position(sb, req, code, readable, &a, retry_s))
    return;
  switch (code) {
  case 200: finish_ok(sb, req, retry_s); return;
  case 409: finish_conflict(sb, req, &a, retry_s); return;
  case 401:
  case 403: finish_unauthorized(sb, code); return;
  case 413: finish_too_large(sb, req, code, retry_s); return;
  default:
    refuse(sb, req, code, readable && a.has_error ? a.error : NULL, retry_s);
    return;
  }
}
