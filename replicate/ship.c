/*
 * ship.c: the shipper (its manual is the Shipping part of replicate.h).
 *
 * DESIGN
 *
 * Two sides share one mutex (mu) and one condition variable (cond):
 *
 *   the commit side    replicate_shipper_on_commit(), on the application's
 *                      saving thread, after the commit point: encode,
 *                      publish the commit (latest, the commit ring) and
 *                      wake the shipping thread, append to the log
 *                      (durable), and in sync mode wait on cond.
 *   the shipping side  one thread, one curl multi handle, one pipeline per
 *                      standby: schedule() picks each idle standby's next
 *                      request, finish() reads its answer and moves the
 *                      standby's state.
 *
 * The commit ring holds one entry per recent commit (seq, commit time,
 * frame bytes, and the frame itself while it is among the newest
 * cache_bytes): streaming standbys are sent frames from memory, standbys
 * further behind read them from the log; lag in bytes and seconds is
 * computed from it.
 *
 * Invariants
 *   I1. A frame is shipped only after its commit point (the store has it
 *       durably). It is published before its log append when the ring
 *       keeps it in memory, so that the standby's receive-log fsync
 *       overlaps ours; otherwise only once replicate_log_append() returned
 *       0, since the shipper would read it from the log. If the append
 *       fails, a frame in memory is still sent from there; one not in
 *       memory would be read from the log, which lacks it, so a standby
 *       that needs it gets a base image. (A crash before the append is durable leaves a
 *       log that lacks the store's newest frame: the next append finds the
 *       chain broken and starts the log afresh.)
 *   I2. At most one request per standby is in flight; its body (a frame of
 *       the ring, the standby's own buffer, or the snapshot being streamed)
 *       stays alive and unchanged until the request is finished.
 *   I3. Every field that status readers or the commit side read is written
 *       under mu; the shipping thread, its only writer, reads its own
 *       fields without it.
 *   I4. Once fenced, no request is started, ever.
 *   I5. The token lives in the shipper (zeroed when freed) and in the
 *       per-standby header lists (zeroed when freed); it is never copied
 *       into an error, a status or a diagnostic.
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

#include <curl/curl.h>

#define NS_PER_S INT64_C(1000000000)
#define RING_MAX_ENTRIES (1u << 18)
#define CONFLICTS_BEFORE_BASE 3u

/* ---------------------------------------------------------------------- */
/* Types */

/* A frame kept in memory, shared by the ring and the requests sending it;
 * refs is changed under mu. */
typedef struct ship_frame {
  unsigned refs;
  size_t len;
  uint8_t data[];
} ship_frame;

typedef struct commit_entry {
  uint64_t seq;
  int64_t commit_time_ns;
  uint64_t bytes;       /* frame bytes */
  uint64_t cum_bytes;   /* bytes of every entry up to this one */
  ship_frame *frame;    /* NULL when not (or no longer) in memory */
} commit_entry;

typedef struct commit_ring {
  commit_entry *v;
  size_t cap;
  size_t head;
  size_t len;
  size_t first_cached;  /* offset from head of the oldest entry that may
                           still hold a frame */
} commit_ring;

typedef enum request_kind {
  REQ_NONE = 0,
  REQ_HEARTBEAT,
  REQ_FRAME,
  REQ_COALESCED,
  REQ_BASE
} request_kind;

typedef struct standby_point {
  uint64_t epoch;
  uint64_t seq;
  uint64_t checksum;
  uint64_t pages;
} standby_point;

typedef struct standby {
  struct replicate_shipper *sh;
  char *url;                  /* as configured */
  char *frames_url;
  char *base_url;
  CURL *easy;
  struct curl_slist *headers;
  uint64_t headers_token_gen;
  char errbuf[CURL_ERROR_SIZE];

  /* The request in flight (I2); shipping thread only. */
  bool in_flight;
  request_kind req;
  ship_frame *req_frame;      /* a ring frame being sent, or NULL */
  replicate_buf body_buf;     /* the standby's own body bytes */
  const uint8_t *body;
  size_t body_len;
  uint64_t req_epoch;
  uint64_t req_after_seq;
  uint64_t req_after_checksum;
  uint64_t req_frames;
  uint64_t req_raw_bytes;
  uint64_t req_pages;
  bool holds_snapshot;
  uint8_t base_header[LOOM_STREAM_HEADER];
  uint64_t base_off;
  uint64_t base_total;
  int base_read_error;
  char *answer;               /* SHIP_ANSWER_MAX + 1 bytes */
  size_t answer_len;
  bool answer_overflow;
  int64_t progress_ns;        /* CLOCK_MONOTONIC: launch, or the last time
                                 a byte moved either way */
  curl_off_t seen_up, seen_down; /* bytes moved, as last reported */
  bool stalled;               /* this request was shown as stalled */

  /* Scheduling; shipping thread only. */
  bool known;                 /* received is this connection's truth */
  bool need_base;
  bool has_history;           /* its answers carry a history */
  loom_history history;       /* the history it follows, as last heard */
  int diverged;               /* 0, or why it is refused (REPLICATE_E*):
                                 nothing is sent but a periodic heartbeat
                                 to see whether that changed */
  unsigned consecutive_failures;
  unsigned unreachable_run;   /* under mu: failed requests in a row that
                                 left it unreachable (0 after a 200) */
  unsigned consecutive_conflicts;
  int64_t next_attempt_ns;    /* CLOCK_MONOTONIC */
  uint64_t refused_token_gen; /* the token generation a 401 refused */
  int64_t last_activity_ns;
  uint64_t coalesce_pages;    /* this standby's piece size (413 halves) */
  replicate_buf scratch;      /* frames read while coalescing */

  /* Shared (I3): written under mu by the shipping thread. */
  replicate_peer_state state;
  bool has_position;          /* heard from at least once */
  bool on_chain;              /* received is known to be in this primary's
                                 history (it accepted our frames, or the
                                 frame after it follows it) */
  standby_point received;
  standby_point applied;
  uint64_t sent_seq;
  char last_error[REPLICATE_ERROR_MAX];
  int64_t last_error_ns;
  uint64_t bytes_raw, bytes_wire, frames_sent, requests, heartbeats_sent,
      coalesced_sent, base_images_sent, failures;
} standby;

struct replicate_shipper {
  /* Options, with defaults applied (immutable after start). */
  loom_store *store;
  loom_lineage lineage;       /* the store's history and branch points */
  replicate_log *log;
  char *ca_file;
  unsigned sync_count;
  double sync_timeout_s;
  replicate_sync_outcome on_sync_timeout;
  int64_t heartbeat_ns;
  long connect_timeout_ms;
  long request_timeout_ms;
  long base_stall_s;
  int64_t stall_ns;
  double backoff_base_s;
  double backoff_max_s;
  int64_t unauthorized_retry_ns;
  uint64_t coalesce_max_pages;
  uint64_t coalesce_max_bytes;
  uint64_t cache_bytes;
  replicate_ship_log_fn log_fn;
  void *log_ctx;

  standby *sb;
  size_t n;

  /* The commit side's own. */
  replicate_encoder *commit_enc;
  replicate_buf commit_buf;
  bool log_failing;     /* the last log append failed */

  /* The shipping thread's own. */
  CURLM *multi;
  replicate_encoder *ship_enc;
  replicate_decoder *dec;
  replicate_coalescer *coal;
  loom_snapshot *snap;
  unsigned snap_refs;
  loom_position snap_pos;
  uint64_t retained_from;
  uint64_t rng;
  pthread_t thread;
  bool thread_started;
  bool curl_initialised;

  /* Shared, under mu. */
  pthread_mutex_t mu;
  pthread_cond_t cond;
  loom_position latest;
  commit_ring ring;
  uint64_t cached_bytes;
  bool fenced;
  bool degraded;              /* sync mode: a save timed out, and fewer
                                 than sync_count standbys hold the latest
                                 frame since */
  int64_t degraded_since_ns;  /* CLOCK_REALTIME, when degraded was set */
  bool stopping;
  char *token;
  uint64_t token_gen;
};

/* ---------------------------------------------------------------------- */
/* Small helpers */

static int64_t mono_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static int64_t real_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static int64_t seconds_to_ns(double s)
{
  return (int64_t)(s * 1e9);
}

static char *copy_string(const char *s)
{
  size_t n = strlen(s) + 1;
  char *c = malloc(n);
  if (c)
    memcpy(c, s, n);
  return c;
}

static void free_secret(char *s)
{
  if (!s)
    return;
  explicit_bzero(s, strlen(s));
  free(s);
}

static bool token_acceptable(const char *token)
{
  if (!token)
    return true;
  if (!*token)
    return false;
  for (const unsigned char *p = (const unsigned char *)token; *p; p++)
    if (*p < 0x21 || *p == 0x7f)
      return false;
  return true;
}

static void diag(replicate_shipper *sh, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void diag(replicate_shipper *sh, const char *fmt, ...)
{
  if (!sh->log_fn)
    return;
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  sh->log_fn(sh->log_ctx, line);
}

/* xorshift64*, for backoff jitter (shipping thread only). */
static double random_unit(replicate_shipper *sh)
{
  uint64_t x = sh->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  sh->rng = x;
  return (double)((x * UINT64_C(2685821657736338717)) >> 11) / 9007199254740992.0;
}

const char *replicate_peer_state_name(replicate_peer_state state)
{
  switch (state) {
  case REPLICATE_PEER_STREAMING: return "streaming";
  case REPLICATE_PEER_CATCHING_UP: return "catching_up";
  case REPLICATE_PEER_BASE_SYNC: return "base_sync";
  case REPLICATE_PEER_UNREACHABLE: return "unreachable";
  case REPLICATE_PEER_UNAUTHORIZED: return "unauthorized";
  case REPLICATE_PEER_FENCED: return "fenced";
  case REPLICATE_PEER_DIVERGED: return "diverged";
  case REPLICATE_PEER_STALLED: return "stalled";
  case REPLICATE_PEER_REFUSED: return "refused";
  }
  return "unknown";
}

/* ---------------------------------------------------------------------- */
/* Frames in memory and the commit ring (under mu) */

static void frame_release_locked(replicate_shipper *sh, ship_frame *f)
{
  (void)sh;
  if (f && --f->refs == 0)
    free(f);
}

static commit_entry *ring_at(commit_ring *r, size_t i)
{
  return &r->v[(r->head + i) % r->cap];
}

static commit_entry *ring_find(commit_ring *r, uint64_t seq)
{
  if (r->len == 0)
    return NULL;
  uint64_t first = ring_at(r, 0)->seq;
  if (seq < first || seq - first >= r->len)
    return NULL;
  return ring_at(r, (size_t)(seq - first));
}

static void ring_pop_front(replicate_shipper *sh)
{
  commit_ring *r = &sh->ring;
  commit_entry *e = ring_at(r, 0);
  if (e->frame) {
    sh->cached_bytes -= e->frame->len;
    frame_release_locked(sh, e->frame);
    e->frame = NULL;
  }
  r->head = (r->head + 1) % r->cap;
  r->len--;
  if (r->first_cached > 0)
    r->first_cached--;
}

static void ring_clear(replicate_shipper *sh)
{
  while (sh->ring.len)
    ring_pop_front(sh);
  sh->ring.first_cached = 0;
}

/* Append the commit seq; its frame (may be NULL) is owned by the ring. */
static int ring_push(replicate_shipper *sh, uint64_t seq, int64_t time_ns,
                     uint64_t bytes, ship_frame *frame)
{
  commit_ring *r = &sh->ring;
  if (r->len && ring_at(r, r->len - 1)->seq + 1 != seq)
    ring_clear(sh);
  if (r->len == RING_MAX_ENTRIES)
    ring_pop_front(sh);
  if (r->len == r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 256;
    commit_entry *v = malloc(cap * sizeof *v);
    if (!v)
      return ENOMEM;
    for (size_t i = 0; i < r->len; i++)
      v[i] = *ring_at(r, i);
    free(r->v);
    r->v = v;
    r->cap = cap;
    r->head = 0;
  }
  uint64_t cum = r->len ? ring_at(r, r->len - 1)->cum_bytes : 0;
  *ring_at(r, r->len) = (commit_entry){seq, time_ns, bytes, cum + bytes, frame};
  r->len++;
  if (frame)
    sh->cached_bytes += frame->len;
  /* Keep the newest cache_bytes of frames in memory. */
  while (sh->cached_bytes > sh->cache_bytes && r->first_cached < r->len) {
    commit_entry *e = ring_at(r, r->first_cached);
    if (e->frame) {
      sh->cached_bytes -= e->frame->len;
      frame_release_locked(sh, e->frame);
      e->frame = NULL;
    }
    r->first_cached++;
  }
  return 0;
}

/* The ring caches the log: forget the frames the log dropped, so that a
 * standby that needs them gets a base image, as the log says. */
static void ring_forget_before(replicate_shipper *sh, uint64_t oldest_seq)
{
  commit_ring *r = &sh->ring;
  while (r->first_cached < r->len) {
    commit_entry *e = ring_at(r, r->first_cached);
    if (e->seq >= oldest_seq)
      break;
    if (e->frame) {
      sh->cached_bytes -= e->frame->len;
      frame_release_locked(sh, e->frame);
      e->frame = NULL;
    }
    r->first_cached++;
  }
}

static void ring_follow_log(replicate_shipper *sh)
{
  replicate_log_stats st;
  replicate_log_get_stats(sh->log, &st);
  pthread_mutex_lock(&sh->mu);
  ring_forget_before(sh, st.records ? st.oldest_seq : UINT64_MAX);
  pthread_mutex_unlock(&sh->mu);
}

/* ---------------------------------------------------------------------- */
/* Shared standby fields (I3) */

static void publish_state(standby *sb, replicate_peer_state state)
{
  replicate_shipper *sh = sb->sh;
  pthread_mutex_lock(&sh->mu);
  if (!sh->fenced && sb->state != state) {
    diag(sh, "standby %s: %s -> %s", sb->url,
         replicate_peer_state_name(sb->state),
         replicate_peer_state_name(state));
    sb->state = state;
    pthread_cond_broadcast(&sh->cond);
  }
  pthread_mutex_unlock(&sh->mu);
}

static void set_error(standby *sb, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void set_error(standby *sb, const char *fmt, ...)
{
  replicate_shipper *sh = sb->sh;
  char text[REPLICATE_ERROR_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  pthread_mutex_lock(&sh->mu);
  memcpy(sb->last_error, text, sizeof text);
  sb->last_error_ns = real_ns();
  pthread_mutex_unlock(&sh->mu);
  diag(sh, "standby %s: %s", sb->url, text);
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

static standby_point point_from(const ship_point *p)
{
  return (standby_point){p->epoch, p->seq, p->checksum, p->pages};
}

/* Number of standbys that hold (epoch, seq) durably. Under mu. */
static unsigned acked_locked(replicate_shipper *sh, uint64_t epoch,
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
  by->last_error_ns = real_ns();
  pthread_cond_broadcast(&sh->cond);
  uint64_t ours = sh->latest.epoch;
  pthread_mutex_unlock(&sh->mu);
  if (first)
    diag(sh, "standby %s has epoch %" PRIu64 " (ours %" PRIu64
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
  sb->next_attempt_ns = mono_ns() + seconds_to_ns(sh->backoff_max_s);
  set_error(sb, "diverged (%s): %s; its position (epoch %" PRIu64 ", seq %"
            PRIu64 ", checksum %016" PRIx64 ") is left as it is", detail,
            replicate_strerror(why), sb->received.epoch, sb->received.seq,
            sb->received.checksum);
  publish_state(sb, REPLICATE_PEER_DIVERGED);
  pthread_mutex_lock(&sh->mu);
  sb->on_chain = false;
  pthread_cond_broadcast(&sh->cond); /* a drain stops waiting for it */
  pthread_mutex_unlock(&sh->mu);
}

/* ---------------------------------------------------------------------- */
/* Requests */

static size_t write_answer(char *data, size_t size, size_t nmemb, void *ud)
{
  standby *sb = ud;
  size_t n = size * nmemb;
  if (n > SHIP_ANSWER_MAX - sb->answer_len) {
    sb->answer_overflow = true;
    return 0;
  }
  memcpy(sb->answer + sb->answer_len, data, n);
  sb->answer_len += n;
  return n;
}

/* Note when bytes move (curl calls this about once a second even when
 * nothing does): the stall check (check_stall) compares with it. */
static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow,
                       curl_off_t ultotal, curl_off_t ulnow)
{
  standby *sb = ud;
  (void)dltotal;
  (void)ultotal;
  if (dlnow != sb->seen_down || ulnow != sb->seen_up) {
    sb->seen_down = dlnow;
    sb->seen_up = ulnow;
    sb->progress_ns = mono_ns();
  }
  return 0;
}

static size_t read_base(char *buf, size_t size, size_t nitems, void *ud)
{
  standby *sb = ud;
  replicate_shipper *sh = sb->sh;
  size_t want = size * nitems;
  size_t done = 0;
  while (done < want && sb->base_off < sb->base_total) {
    if (sb->base_off < LOOM_STREAM_HEADER) {
      size_t k = (size_t)(LOOM_STREAM_HEADER - sb->base_off);
      if (k > want - done)
        k = want - done;
      memcpy(buf + done, sb->base_header + sb->base_off, k);
      done += k;
      sb->base_off += k;
      continue;
    }
    uint64_t left = sb->base_total - sb->base_off;
    size_t k = want - done;
    if (k > left)
      k = (size_t)left;
    int rc = loom_snapshot_read(sh->snap, sb->base_off - LOOM_STREAM_HEADER,
                                buf + done, k);
    if (rc) {
      sb->base_read_error = rc;
      return CURL_READFUNC_ABORT;
    }
    done += k;
    sb->base_off += k;
  }
  return done;
}

/* (Re)build the standby's header list when the token changed. */
static int prepare_headers(standby *sb)
{
  replicate_shipper *sh = sb->sh;
  pthread_mutex_lock(&sh->mu);
  uint64_t gen = sh->token_gen;
  if (sb->headers && sb->headers_token_gen == gen) {
    pthread_mutex_unlock(&sh->mu);
    return 0;
  }
  char *auth = NULL;
  if (sh->token) {
    static const char prefix[] = "Authorization: Bearer ";
    size_t len = sizeof prefix - 1 + strlen(sh->token) + 1;
    auth = malloc(len);
    if (auth)
      snprintf(auth, len, "%s%s", prefix, sh->token);
  }
  bool want_auth = sh->token != NULL;
  pthread_mutex_unlock(&sh->mu);
  if (want_auth && !auth)
    return ENOMEM;

  for (struct curl_slist *p = sb->headers; p; p = p->next)
    explicit_bzero(p->data, strlen(p->data));
  curl_slist_free_all(sb->headers);
  sb->headers = NULL;

  struct curl_slist *list = NULL;
  static const char *const fixed[] = {
      "Content-Type: application/octet-stream", "Accept: application/json",
      "Expect:"};
  for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
    struct curl_slist *next = curl_slist_append(list, fixed[i]);
    if (!next)
      goto fail;
    list = next;
  }
  if (auth) {
    struct curl_slist *next = curl_slist_append(list, auth);
    if (!next)
      goto fail;
    list = next;
    free_secret(auth);
    auth = NULL;
  }
  sb->headers = list;
  sb->headers_token_gen = gen;
  return 0;
fail:
  free_secret(auth);
  for (struct curl_slist *p = list; p; p = p->next)
    explicit_bzero(p->data, strlen(p->data));
  curl_slist_free_all(list);
  return ENOMEM;
}

/* Set the options every request shares. */
static int prepare_easy(standby *sb, const char *url)
{
  replicate_shipper *sh = sb->sh;
  int rc = prepare_headers(sb);
  if (rc)
    return rc;
  CURL *e = sb->easy;
  curl_easy_reset(e);
  sb->errbuf[0] = '\0';
  sb->answer_len = 0;
  sb->answer_overflow = false;
  CURLcode c = CURLE_OK;
#define SET(opt, val)                                                        \
  do {                                                                       \
    if (c == CURLE_OK)                                                       \
      c = curl_easy_setopt(e, opt, val);                                     \
  } while (0)
  SET(CURLOPT_URL, url);
  SET(CURLOPT_PRIVATE, (void *)sb);
  SET(CURLOPT_NOSIGNAL, 1L);
  SET(CURLOPT_ERRORBUFFER, sb->errbuf);
  SET(CURLOPT_WRITEFUNCTION, write_answer);
  SET(CURLOPT_WRITEDATA, (void *)sb);
  SET(CURLOPT_NOPROGRESS, 0L);
  SET(CURLOPT_XFERINFOFUNCTION, on_progress);
  SET(CURLOPT_XFERINFODATA, (void *)sb);
  SET(CURLOPT_HTTPHEADER, sb->headers);
  SET(CURLOPT_CONNECTTIMEOUT_MS, sh->connect_timeout_ms);
  SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
  SET(CURLOPT_PROTOCOLS_STR, "http,https");
  SET(CURLOPT_SSL_VERIFYPEER, 1L);
  SET(CURLOPT_SSL_VERIFYHOST, 2L);
  SET(CURLOPT_TCP_KEEPALIVE, 1L);
  if (sh->ca_file)
    SET(CURLOPT_CAINFO, sh->ca_file);
#undef SET
  return c == CURLE_OK ? 0 : REPLICATE_ECURL;
}

static int launch(standby *sb)
{
  if (curl_multi_add_handle(sb->sh->multi, sb->easy) != CURLM_OK)
    return REPLICATE_ECURL;
  sb->in_flight = true;
  sb->progress_ns = mono_ns();
  sb->seen_up = 0;
  sb->seen_down = 0;
  sb->stalled = false;
  return 0;
}

/* POST the body (sb->body, sb->body_len) to /v1/frames. */
static int post_body(standby *sb)
{
  replicate_shipper *sh = sb->sh;
  int rc = prepare_easy(sb, sb->frames_url);
  if (rc)
    return rc;
  CURLcode c = curl_easy_setopt(sb->easy, CURLOPT_POST, 1L);
  if (c == CURLE_OK)
    c = curl_easy_setopt(sb->easy, CURLOPT_POSTFIELDS, (const char *)sb->body);
  if (c == CURLE_OK)
    c = curl_easy_setopt(sb->easy, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)sb->body_len);
  if (c == CURLE_OK)
    c = curl_easy_setopt(sb->easy, CURLOPT_TIMEOUT_MS, sh->request_timeout_ms);
  if (c != CURLE_OK)
    return REPLICATE_ECURL;
  return launch(sb);
}

/* Drop what the finished (or abandoned) request held. */
static void release_request(standby *sb)
{
  replicate_shipper *sh = sb->sh;
  if (sb->req_frame) {
    pthread_mutex_lock(&sh->mu);
    frame_release_locked(sh, sb->req_frame);
    pthread_mutex_unlock(&sh->mu);
    sb->req_frame = NULL;
  }
  if (sb->holds_snapshot) {
    sb->holds_snapshot = false;
    if (--sh->snap_refs == 0) {
      loom_snapshot_close(sh->snap);
      sh->snap = NULL;
    }
  }
  sb->body = NULL;
  sb->body_len = 0;
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
  delay = delay / 2 + random_unit(sh) * delay / 2; /* equal jitter */
  if (retry_after_s > delay)
    delay = retry_after_s;
  sb->consecutive_failures++;
  sb->next_attempt_ns = mono_ns() + seconds_to_ns(delay);
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
  if (state)
    sb->unreachable_run++;
  pthread_cond_broadcast(&sh->cond); /* a drain counts the attempts */
  pthread_mutex_unlock(&sh->mu);
  set_error(sb, "%s", text);
  if (state)
    publish_state(sb, *state);
  sb->known = false;
  retry_after_backoff(sb, retry_after_s);
}

/* No answer (unreachable, or still stalled when it was shown stalled), or
 * a local failure (the state is kept). */
static void fail(standby *sb, bool unreachable, double retry_after_s,
                 const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void fail(standby *sb, bool unreachable, double retry_after_s,
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
  replicate_point point = {latest->seq, latest->checksum, latest->pages};
  int rc = replicate_frame_encode_heartbeat(&sb->sh->lineage.history,
                                            latest->epoch, &point,
                                            latest->commit_time_ns, real_ns(),
                                            &sb->body_buf);
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
  return post_body(sb);
}

/* Get the frame of seq: a reference to the ring's copy (*ref), or read from
 * the log into buf. *data and *len point at its bytes either way. */
static int fetch_frame(replicate_shipper *sh, uint64_t seq, ship_frame **ref,
                       replicate_buf *buf, const uint8_t **data, size_t *len)
{
  *ref = NULL;
  pthread_mutex_lock(&sh->mu);
  commit_entry *e = ring_find(&sh->ring, seq);
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

static void drop_ref(replicate_shipper *sh, ship_frame **ref)
{
  if (!*ref)
    return;
  pthread_mutex_lock(&sh->mu);
  frame_release_locked(sh, *ref);
  pthread_mutex_unlock(&sh->mu);
  *ref = NULL;
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

static int start_base(standby *sb)
{
  replicate_shipper *sh = sb->sh;
  if (snapshot_behind(sb)) {
    retry_after_backoff(sb, 0);
    return 0;
  }
  publish_state(sb, REPLICATE_PEER_BASE_SYNC);
  if (!sh->snap) {
    int rc = loom_store_snapshot_open(sh->store, &sh->snap);
    if (rc) {
      sh->snap = NULL;
      return rc;
    }
    loom_snapshot_position(sh->snap, &sh->snap_pos);
    diag(sh, "snapshot at seq %" PRIu64 " (%" PRIu64 " pages) opened for base "
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

  int rc = prepare_easy(sb, sb->base_url);
  CURLcode c = rc ? CURLE_FAILED_INIT : CURLE_OK;
#define SET(opt, val)                                                        \
  do {                                                                       \
    if (c == CURLE_OK)                                                       \
      c = curl_easy_setopt(sb->easy, opt, val);                              \
  } while (0)
  SET(CURLOPT_UPLOAD, 1L);
  SET(CURLOPT_READFUNCTION, read_base);
  SET(CURLOPT_READDATA, (void *)sb);
  SET(CURLOPT_INFILESIZE_LARGE, (curl_off_t)sb->base_total);
  SET(CURLOPT_LOW_SPEED_LIMIT, 1L);
  SET(CURLOPT_LOW_SPEED_TIME, sh->base_stall_s);
#undef SET
  if (!rc && c != CURLE_OK)
    rc = REPLICATE_ECURL;
  if (!rc)
    rc = launch(sb);
  if (rc) {
    release_request(sb);
    return rc;
  }
  mark_sent(sb, sh->snap_pos.seq);
  return 0;
}

/* Send the standby the frames after r: one frame as it is, or a merged
 * piece. Returns 0 (a request started, or need_base set), or an error. */
static int start_frames(standby *sb, const standby_point *r,
                        const loom_position *latest)
{
  replicate_shipper *sh = sb->sh;
  uint64_t seq = r->seq + 1;
  ship_frame *ref = NULL;
  const uint8_t *data;
  size_t len;
  int rc = fetch_frame(sh, seq, &ref, &sb->body_buf, &data, &len);
  if (rc == REPLICATE_ELOG_GONE || rc == REPLICATE_ELOG_AHEAD ||
      rc == REPLICATE_ELOG_CORRUPT || rc == REPLICATE_EPANIC) {
    diag(sh, "standby %s: the log does not hold seq %" PRIu64 " (%s): "
         "sending a base image", sb->url, seq, replicate_strerror(rc));
    sb->need_base = true;
    return 0;
  }
  if (rc)
    return rc;
  replicate_frame_info first;
  rc = replicate_frame_parse_header(data, len, NULL, &first);
  if (rc) {
    drop_ref(sh, &ref);
    return rc;
  }
  if (first.epoch < r->epoch || first.before.seq != r->seq ||
      first.before.checksum != r->checksum || first.before.pages != r->pages) {
    drop_ref(sh, &ref);
    diverge(sb, REPLICATE_EFORK, "this primary's log has another checksum "
            "at its seq");
    return 0;
  }
  set_on_chain(sb, true);

  /* Merge when further behind, as far as the piece caps allow. */
  uint64_t cap_pages = sb->coalesce_pages;
  uint64_t frames = 1, pages = first.page_count, bytes = len;
  bool merged = false;
  if (latest->seq > seq && first.page_count < cap_pages) {
    for (uint64_t s = seq + 1; s <= latest->seq; s++) {
      ship_frame *next_ref = NULL;
      const uint8_t *next_data;
      size_t next_len;
      if (fetch_frame(sh, s, &next_ref, &sb->scratch, &next_data, &next_len))
        break;
      replicate_frame_info info;
      int prc = replicate_frame_parse_header(next_data, next_len, NULL, &info);
      if (prc || info.epoch != first.epoch ||
          pages + info.page_count > cap_pages ||
          bytes + next_len > sh->coalesce_max_bytes) {
        drop_ref(sh, &next_ref);
        break;
      }
      if (!merged) {
        replicate_frame f;
        prc = replicate_frame_decode(sh->dec, data, len, &f);
        if (!prc)
          prc = replicate_coalescer_add(sh->coal, &f);
        if (prc) {
          drop_ref(sh, &next_ref);
          break;
        }
        merged = true;
      }
      replicate_frame f;
      prc = replicate_frame_decode(sh->dec, next_data, next_len, &f);
      drop_ref(sh, &next_ref);
      if (prc)
        break; /* the piece ends before this frame */
      prc = replicate_coalescer_add(sh->coal, &f);
      if (prc) {
        /* The coalescer emptied itself: send the first frame alone. */
        merged = false;
        frames = 1;
        break;
      }
      frames++;
      pages += info.page_count;
      bytes += next_len;
    }
  }

  if (merged && frames > 1) {
    rc = replicate_coalescer_finish(sh->coal, sh->ship_enc, &sb->scratch);
    if (rc == 0) {
      drop_ref(sh, &ref);
      replicate_frame_info info;
      rc = replicate_frame_parse_header(sb->scratch.data, sb->scratch.len,
                                        NULL, &info);
      if (rc)
        return rc;
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
      sb->req_frames = frames;
      sb->req_pages = info.page_count;
      sb->req_raw_bytes = info.page_count * LOOM_PAGE_SIZE;
      publish_state(sb, REPLICATE_PEER_CATCHING_UP);
      rc = post_body(sb);
      if (!rc)
        mark_sent(sb, info.after.seq);
      return rc;
    }
    /* Merging failed (the coalescer is empty again): the first frame
     * alone, below. */
  } else if (merged) {
    /* Only the first frame was added: empty the coalescer. */
    replicate_buf discard = {0};
    (void)replicate_coalescer_finish(sh->coal, sh->ship_enc, &discard);
    replicate_buf_free(&discard);
  }

  /* One frame, as it is (it may live in body_buf: read from the log). */
  sb->req_frame = ref;
  sb->req = REQ_FRAME;
  sb->body = data;
  sb->body_len = len;
  sb->req_epoch = first.epoch;
  sb->req_after_seq = first.after.seq;
  sb->req_after_checksum = first.after.checksum;
  sb->req_frames = 1;
  sb->req_pages = first.page_count;
  sb->req_raw_bytes = first.page_count * LOOM_PAGE_SIZE;
  publish_state(sb, latest->seq == seq ? REPLICATE_PEER_STREAMING
                                       : REPLICATE_PEER_CATCHING_UP);
  rc = post_body(sb);
  if (rc) {
    release_request(sb);
    return rc;
  }
  mark_sent(sb, first.after.seq);
  return 0;
}

/* Pick and start the next request of an idle standby. */
static void schedule(standby *sb, int64_t now)
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

  int rc;
  const char *what;
  if (!sb->known) {
    what = "heartbeat";
    rc = start_heartbeat(sb, &latest);
  } else {
    standby_point r = sb->received;
    if (r.epoch > latest.epoch) {
      /* Only a node of our own history fences us (finish() says the same):
       * another history's epochs say nothing about ours. */
      if (sb->has_history && !loom_history_is_none(&sb->history) &&
          !loom_history_equal(&sb->history, &sh->lineage.history))
        diverge(sb, REPLICATE_EHISTORY, "it follows another history");
      else
        fence(sh, sb, r.epoch);
      return;
    }
    loom_position peer = {.epoch = r.epoch, .seq = r.seq,
                          .checksum = r.checksum, .pages = r.pages};
    int place = replicate_place_peer(&sh->lineage, &latest,
                                     sb->has_history ? &sb->history : NULL,
                                     &peer);
    if (replicate_is_divergence(place)) {
      diverge(sb, place, place == REPLICATE_EBEHIND
                             ? "it is ahead of this primary, whose directory "
                               "is older (restored from a backup, or empty?)"
                             : "checked against this primary's history");
      return;
    }
    sb->diverged = 0;
    if (!sb->need_base && place == REPLICATE_EDUPLICATE) {
      set_on_chain(sb, true);
      publish_state(sb, REPLICATE_PEER_STREAMING);
      if (now - sb->last_activity_ns < sh->heartbeat_ns)
        return;
      what = "heartbeat";
      rc = start_heartbeat(sb, &latest);
      goto started;
    }
    if (!sb->need_base) {
      what = "frames";
      rc = start_frames(sb, &r, &latest);
      /* Frames on their way, or none because it diverged: never a base
       * image then (only a log that no longer reaches back asks one). */
      if (rc || sb->in_flight || sb->diverged)
        goto started;
    }
    /* A base image replaces whatever the standby holds: only over a
     * position of our own history, as far as our positions ring tells. */
    uint64_t epoch_at, checksum_at;
    if (r.seq > 0 && r.seq <= latest.seq &&
        loom_store_checksum_at(sh->store, r.seq, &epoch_at, &checksum_at) &&
        checksum_at != r.checksum) {
      diverge(sb, REPLICATE_EFORK, "this primary had another checksum at its seq");
      return;
    }
    what = "base image";
    rc = start_base(sb);
  }
started:
  if (rc) {
    /* A local failure (reading the log, a snapshot, memory): the state
     * stays, the error is shown, and the attempt is repeated later. */
    set_error(sb, "preparing the %s: %s", what, replicate_strerror(rc));
    retry_after_backoff(sb, 0);
  }
}

/* ---------------------------------------------------------------------- */
/* Answers */

/* Retention (see replicate.h). Shipping thread, after acknowledgements. */
static void retain_log(replicate_shipper *sh)
{
  uint64_t need = UINT64_MAX;
  uint64_t applied_min = UINT64_MAX;
  pthread_mutex_lock(&sh->mu);
  bool fenced = sh->fenced;
  for (size_t i = 0; i < sh->n && !fenced; i++) {
    const standby *sb = &sh->sb[i];
    uint64_t candidate;
    if (sb->holds_snapshot) {
      candidate = sh->snap_pos.seq + 1;
    } else if (sb->need_base) {
      continue; /* needs a base image: holds nothing back */
    } else if (!sb->has_position) {
      candidate = 0;
    } else {
      candidate = sb->received.seq + 1;
    }
    if (candidate < need)
      need = candidate;
    uint64_t applied = sb->has_position ? sb->applied.seq : 0;
    if (applied < applied_min)
      applied_min = applied;
  }
  /* The ring keeps what lag accounting needs: from the oldest applied. */
  while (!fenced && applied_min != UINT64_MAX && sh->ring.len > 1 &&
         ring_at(&sh->ring, 0)->seq <= applied_min &&
         ring_at(&sh->ring, 0)->frame == NULL)
    ring_pop_front(sh);
  pthread_mutex_unlock(&sh->mu);
  if (fenced || need == UINT64_MAX || need == 0 || need <= sh->retained_from)
    return;
  int rc = replicate_log_retain(sh->log, need);
  if (rc)
    diag(sh, "log retention up to seq %" PRIu64 ": %s", need,
         replicate_strerror(rc));
  else
    sh->retained_from = need;
  ring_follow_log(sh);
}

/* After an acknowledgement: wake sync waiters, restore sync mode. */
static void after_ack(replicate_shipper *sh)
{
  pthread_mutex_lock(&sh->mu);
  pthread_cond_broadcast(&sh->cond);
  if (sh->degraded && acked_locked(sh, sh->latest.epoch, sh->latest.seq) >=
                          sh->sync_count) {
    sh->degraded = false;
    sh->degraded_since_ns = 0;
    pthread_mutex_unlock(&sh->mu);
    diag(sh, "sync mode restored: %u standbys hold the latest frame",
         sh->sync_count);
    return;
  }
  pthread_mutex_unlock(&sh->mu);
}

static const char *request_name(request_kind k)
{
  switch (k) {
  case REQ_HEARTBEAT: return "heartbeat";
  case REQ_FRAME: return "frame";
  case REQ_COALESCED: return "merged frames";
  case REQ_BASE: return "base image";
  case REQ_NONE: break;
  }
  return "request";
}

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
    snprintf(text, sizeof text, "%s: HTTP %ld (%s)", request_name(req),
             code, standby_error);
  else
    snprintf(text, sizeof text, "%s: HTTP %ld", request_name(req), code);
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
  sb->received = point_from(&a->received);
  if (a->applied.present)
    sb->applied = point_from(&a->applied);
  else if (!sb->has_position)
    sb->applied = sb->received;
  sb->has_position = true;
  sb->on_chain = false; /* until checked (schedule, finish) */
  pthread_cond_broadcast(&sh->cond);
  pthread_mutex_unlock(&sh->mu);
  sb->known = true;
}

static void finish(standby *sb, CURLcode result)
{
  replicate_shipper *sh = sb->sh;
  request_kind req = sb->req;
  long code = 0;
  curl_off_t retry_after = 0;
  curl_easy_getinfo(sb->easy, CURLINFO_RESPONSE_CODE, &code);
  curl_easy_getinfo(sb->easy, CURLINFO_RETRY_AFTER, &retry_after);
  int base_read_error = req == REQ_BASE ? sb->base_read_error : 0;
  uint64_t wire = req == REQ_BASE ? sb->base_total : sb->body_len;
  release_request(sb);
  sb->in_flight = false;
  sb->req = REQ_NONE;
  sb->last_activity_ns = mono_ns();
  double retry_s = retry_after > 0 ? (double)retry_after : 0;

  if (base_read_error) {
    fail(sb, false, 0, "reading the snapshot for the base image: %s",
         replicate_strerror(base_read_error));
    return;
  }
  if (result != CURLE_OK) {
    if (sb->answer_overflow)
      fail(sb, true, 0, "%s: answer longer than %u bytes", request_name(req),
           SHIP_ANSWER_MAX);
    else
      fail(sb, true, 0, "%s: %s", request_name(req),
           sb->errbuf[0] ? sb->errbuf : curl_easy_strerror(result));
    /* Frames are resent as they were (a standby that got them answers
     * 200, a duplicate; one that moved answers 409 with its position); a
     * base image is not resent blindly: its position is asked first. */
    sb->known = req == REQ_FRAME || req == REQ_COALESCED;
    return;
  }

  /* The request went through: account for it. */
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

  ship_answer a;
  bool readable = ship_answer_parse(sb->answer, sb->answer_len, &a) == 0;
  if (code == 200 || code == 409) {
    if (!readable || !a.received.present) {
      fail(sb, true, retry_s, "%s: HTTP %ld with an unreadable answer",
           request_name(req), code);
      return;
    }
    pthread_mutex_lock(&sh->mu);
    uint64_t ours = sh->latest.epoch;
    pthread_mutex_unlock(&sh->mu);
    bool stale = code == 409 && a.has_error && strcmp(a.error, "stale epoch") == 0;
    uint64_t theirs = a.received.epoch;
    if (a.has_epoch && a.epoch > theirs)
      theirs = a.epoch;
    /* Only a node of our own history fences us: another history's epochs
     * say nothing about ours. */
    bool same_history = !a.has_history || loom_history_is_none(&a.history) ||
                        loom_history_equal(&a.history, &sh->lineage.history);
    record_position(sb, &a);
    if (same_history && (stale || theirs > ours)) {
      fence(sh, sb, theirs > ours ? theirs : ours + 1);
      return;
    }
  }

  switch (code) {
  case 200:
    sb->consecutive_failures = 0;
    sb->consecutive_conflicts = 0;
    pthread_mutex_lock(&sh->mu);
    sb->unreachable_run = 0;
    pthread_mutex_unlock(&sh->mu);
    if (req == REQ_BASE) {
      sb->need_base = false;
      pthread_mutex_lock(&sh->mu);
      sb->base_images_sent++;
      pthread_mutex_unlock(&sh->mu);
      diag(sh, "standby %s: base image at seq %" PRIu64 " received", sb->url,
           sb->req_after_seq);
    }
    if ((req == REQ_FRAME || req == REQ_COALESCED || req == REQ_BASE) &&
        sb->received.epoch == sb->req_epoch &&
        sb->received.seq < sb->req_after_seq) {
      fail(sb, false, retry_s, "%s up to seq %" PRIu64 " answered 200 but the "
           "standby holds seq %" PRIu64, request_name(req), sb->req_after_seq,
           sb->received.seq);
      return;
    }
    if ((req == REQ_FRAME || req == REQ_COALESCED || req == REQ_BASE) &&
        sb->received.seq == sb->req_after_seq &&
        sb->received.checksum == sb->req_after_checksum)
      set_on_chain(sb, true);
    after_ack(sh);
    retain_log(sh);
    return;
  case 409: {
    int refusal = a.has_code ? refusal_of(a.code) : 0;
    if (refusal == REPLICATE_EBEHIND && req == REQ_BASE) {
      /* Our snapshot trailed the standby (the image file is written after
       * the commit point): a newer one follows, not a divergence. */
      set_error(sb, "base image at seq %" PRIu64 " is behind the standby "
                "(seq %" PRIu64 "): a newer one follows", sb->req_after_seq,
                a.received.seq);
      retry_after_backoff(sb, retry_s);
      after_ack(sh);
      return;
    }
    if (replicate_is_divergence(refusal)) {
      diverge(sb, refusal, "the standby refused our input");
      after_ack(sh);
      return;
    }
    /* A frame that did not rebuild the standby's image although its
     * before matched: its image is damaged; a base image repairs it. */
    if (refusal == REPLICATE_EAFTER_CHECKSUM || refusal == REPLICATE_EPAGE_HASH ||
        (!a.has_code && a.has_error && strcmp(a.error, "checksum mismatch") == 0))
      sb->need_base = true;
    if (++sb->consecutive_conflicts >= CONFLICTS_BEFORE_BASE)
      sb->need_base = true;
    set_error(sb, "%s refused (409 %s): the standby is at seq %" PRIu64
              "; resending from there", request_name(req),
              a.has_error ? a.error : "conflict", a.received.seq);
    if (sb->consecutive_conflicts > 1)
      retry_after_backoff(sb, retry_s);
    after_ack(sh);
    return;
  }
  case 401:
  case 403:
    pthread_mutex_lock(&sh->mu);
    sb->failures++;
    pthread_mutex_unlock(&sh->mu);
    set_error(sb, "HTTP %ld: the standby refused our token", code);
    pthread_mutex_lock(&sh->mu);
    sb->refused_token_gen = sh->token_gen;
    pthread_mutex_unlock(&sh->mu);
    publish_state(sb, REPLICATE_PEER_UNAUTHORIZED);
    sb->known = false;
    sb->next_attempt_ns = mono_ns() + sh->unauthorized_retry_ns;
    return;
  case 413:
    if (req == REQ_COALESCED && sb->req_pages > 1) {
      sb->coalesce_pages = sb->req_pages / 2;
      set_error(sb, "merged frames of %" PRIu64 " pages refused as too large "
                "(413): pieces of at most %" PRIu64 " pages from now on",
                sb->req_pages, sb->coalesce_pages);
      sb->known = false;
      return;
    }
    if (req == REQ_FRAME) {
      set_error(sb, "frame %" PRIu64 " refused as too large (413): sending a "
                "base image", sb->req_after_seq);
      sb->need_base = true;
      sb->known = false;
      return;
    }
    refuse(sb, req, code, "too large", retry_s);
    return;
  default:
    refuse(sb, req, code, readable && a.has_error ? a.error : NULL, retry_s);
    return;
  }
}

/* ---------------------------------------------------------------------- */
/* The shipping thread */

/* A request on an open connection (bytes went out) that has moved no byte
 * either way for stall_ns: show it (the request goes on to its timeout). */
static void check_stall(standby *sb, int64_t now)
{
  replicate_shipper *sh = sb->sh;
  if (!sb->in_flight || sb->stalled || sb->seen_up == 0 ||
      now - sb->progress_ns < sh->stall_ns)
    return;
  sb->stalled = true;
  set_error(sb, "%s: no answer for %.1f s on an open connection",
            request_name(sb->req), (double)(now - sb->progress_ns) / 1e9);
  publish_state(sb, REPLICATE_PEER_STALLED);
}

static int64_t next_due(const standby *sb, const loom_position *latest)
{
  replicate_shipper *sh = sb->sh;
  int64_t now = mono_ns();
  if (sb->in_flight) /* when check_stall is due, if ever */
    return sb->stalled || sb->seen_up == 0 ? INT64_MAX
                                           : sb->progress_ns + sh->stall_ns;
  if (sb->next_attempt_ns > now)
    return sb->next_attempt_ns;
  if (!sb->known || sb->need_base || sb->received.seq < latest->seq)
    return now; /* work to do */
  return sb->last_activity_ns + sh->heartbeat_ns;
}

static void *ship_main(void *arg)
{
  replicate_shipper *sh = arg;
  for (;;) {
    pthread_mutex_lock(&sh->mu);
    bool stopping = sh->stopping;
    loom_position latest = sh->latest;
    pthread_mutex_unlock(&sh->mu);
    if (stopping)
      break;

    int64_t now = mono_ns();
    for (size_t i = 0; i < sh->n; i++)
      schedule(&sh->sb[i], now);

    int running = 0;
    curl_multi_perform(sh->multi, &running);
    bool finished = false;
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(sh->multi, &left))) {
      if (m->msg != CURLMSG_DONE)
        continue;
      CURL *easy = m->easy_handle;
      CURLcode result = m->data.result;
      char *priv = NULL;
      curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
      curl_multi_remove_handle(sh->multi, easy);
      finish((standby *)(void *)priv, result);
      finished = true;
    }
    if (finished)
      continue;

    pthread_mutex_lock(&sh->mu);
    bool fenced = sh->fenced;
    pthread_mutex_unlock(&sh->mu);
    now = mono_ns();
    for (size_t i = 0; i < sh->n && !fenced; i++)
      check_stall(&sh->sb[i], now);
    int64_t wake = now + NS_PER_S;
    for (size_t i = 0; i < sh->n && !fenced; i++) {
      const standby *sb = &sh->sb[i];
      int64_t due = next_due(sb, &latest);
      if (due < wake)
        wake = due;
    }
    int64_t wait_ms = (wake - now + 999999) / 1000000;
    if (wait_ms < 0)
      wait_ms = 0;
    if (wait_ms > 1000)
      wait_ms = 1000;
    curl_multi_poll(sh->multi, NULL, 0, (int)wait_ms, NULL);
  }

  for (size_t i = 0; i < sh->n; i++) {
    standby *sb = &sh->sb[i];
    if (sb->in_flight) {
      curl_multi_remove_handle(sh->multi, sb->easy);
      sb->in_flight = false;
      release_request(sb);
    }
  }
  return NULL;
}

/* ---------------------------------------------------------------------- */
/* Start and stop */

static char *join_url(const char *base, size_t base_len, const char *path)
{
  size_t n = base_len + strlen(path) + 1;
  char *s = malloc(n);
  if (s) {
    memcpy(s, base, base_len);
    memcpy(s + base_len, path, strlen(path) + 1);
  }
  return s;
}

static int standby_init(replicate_shipper *sh, standby *sb, const char *url)
{
  sb->sh = sh;
  if (!url || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0))
    return REPLICATE_EINVAL;
  for (const unsigned char *p = (const unsigned char *)url; *p; p++)
    if (*p <= 0x20 || *p == 0x7f)
      return REPLICATE_EINVAL;
  size_t len = strlen(url);
  while (len > 0 && url[len - 1] == '/')
    len--;
  sb->url = copy_string(url);
  sb->frames_url = join_url(url, len, "/v1/frames");
  sb->base_url = join_url(url, len, "/v1/base");
  sb->answer = malloc(SHIP_ANSWER_MAX + 1);
  sb->easy = curl_easy_init();
  if (!sb->url || !sb->frames_url || !sb->base_url || !sb->answer)
    return ENOMEM;
  if (!sb->easy)
    return REPLICATE_ECURL;
  sb->state = REPLICATE_PEER_CATCHING_UP;
  sb->coalesce_pages = sh->coalesce_max_pages;
  return 0;
}

static void standby_free(standby *sb)
{
  if (sb->easy)
    curl_easy_cleanup(sb->easy);
  for (struct curl_slist *p = sb->headers; p; p = p->next)
    explicit_bzero(p->data, strlen(p->data));
  curl_slist_free_all(sb->headers);
  free(sb->url);
  free(sb->frames_url);
  free(sb->base_url);
  free(sb->answer);
  replicate_buf_free(&sb->body_buf);
  replicate_buf_free(&sb->scratch);
}

/* Make the log's newest frame the store's position, or empty it. */
static int reconcile_log(replicate_shipper *sh, const loom_position *pos)
{
  replicate_log_stats st;
  replicate_log_get_stats(sh->log, &st);
  if (st.records == 0)
    return 0;
  bool keep = st.newest_seq == pos->seq && st.newest_epoch <= pos->epoch;
  if (keep) {
    replicate_buf buf = {0};
    replicate_frame_info info;
    int rc = replicate_log_read(sh->log, st.newest_seq, &buf);
    if (!rc)
      rc = replicate_frame_parse_header(buf.data, buf.len, NULL, &info);
    replicate_buf_free(&buf);
    if (rc && rc != REPLICATE_ELOG_GONE && rc != REPLICATE_ELOG_AHEAD)
      return rc;
    keep = !rc && info.after.checksum == pos->checksum &&
           info.after.pages == pos->pages;
  }
  if (keep)
    return 0;
  diag(sh, "replication log ends at seq %" PRIu64 ", the store is at seq %"
       PRIu64 ": log reset (standbys behind get base images)", st.newest_seq,
       pos->seq);
  return replicate_log_reset(sh->log);
}

static int check_duration(double v)
{
  return v < 0 || isnan(v) ? REPLICATE_EINVAL : 0;
}

int replicate_shipper_start(const replicate_shipper_options *opt,
                            replicate_shipper **out)
{
  assert(opt && out);
  *out = NULL;
  if (!opt->store || !opt->log || !opt->standby_urls ||
      opt->standby_count == 0 || opt->sync_count > opt->standby_count ||
      !token_acceptable(opt->token) ||
      (opt->on_sync_timeout != REPLICATE_SYNC_FAIL &&
       opt->on_sync_timeout != REPLICATE_SYNC_DEGRADE) ||
      check_duration(opt->sync_timeout_seconds) ||
      check_duration(opt->heartbeat_seconds) ||
      check_duration(opt->connect_timeout_seconds) ||
      check_duration(opt->request_timeout_seconds) ||
      check_duration(opt->base_stall_seconds) ||
      check_duration(opt->stall_seconds) ||
      check_duration(opt->backoff_base_seconds) ||
      check_duration(opt->backoff_max_seconds) ||
      check_duration(opt->unauthorized_retry_seconds))
    return REPLICATE_EINVAL;

  replicate_shipper *sh = calloc(1, sizeof *sh);
  if (!sh)
    return ENOMEM;
  sh->store = opt->store;
  sh->log = opt->log;
  sh->sync_count = opt->sync_count;
  sh->sync_timeout_s = opt->sync_timeout_seconds > 0 ? opt->sync_timeout_seconds : 10;
  sh->on_sync_timeout = opt->on_sync_timeout;
  sh->heartbeat_ns = seconds_to_ns(opt->heartbeat_seconds > 0 ? opt->heartbeat_seconds : 1);
  sh->connect_timeout_ms = (long)(1000 * (opt->connect_timeout_seconds > 0
                                             ? opt->connect_timeout_seconds : 5));
  sh->request_timeout_ms = (long)(1000 * (opt->request_timeout_seconds > 0
                                             ? opt->request_timeout_seconds : 30));
  double stall = opt->base_stall_seconds > 0 ? opt->base_stall_seconds : 120;
  sh->base_stall_s = (long)stall + ((double)(long)stall < stall);
  sh->stall_ns = seconds_to_ns(opt->stall_seconds > 0 ? opt->stall_seconds : 5);
  sh->backoff_base_s = opt->backoff_base_seconds > 0 ? opt->backoff_base_seconds : 0.1;
  sh->backoff_max_s = opt->backoff_max_seconds > 0 ? opt->backoff_max_seconds : 5;
  if (sh->backoff_max_s < sh->backoff_base_s)
    sh->backoff_max_s = sh->backoff_base_s;
  sh->unauthorized_retry_ns = seconds_to_ns(
      opt->unauthorized_retry_seconds > 0 ? opt->unauthorized_retry_seconds : 30);
  sh->coalesce_max_pages = opt->coalesce_max_pages ? opt->coalesce_max_pages : 2048;
  sh->coalesce_max_bytes = opt->coalesce_max_bytes ? opt->coalesce_max_bytes
                                                   : UINT64_C(32) << 20;
  sh->cache_bytes = opt->cache_bytes ? opt->cache_bytes : UINT64_C(64) << 20;
  sh->log_fn = opt->log_fn;
  sh->log_ctx = opt->log_ctx;
  sh->rng = (uint64_t)real_ns() ^ ((uint64_t)getpid() << 32) ^ (uintptr_t)sh;
  if (!sh->rng)
    sh->rng = 1;

  pthread_mutex_init(&sh->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&sh->cond, &ca);
  pthread_condattr_destroy(&ca);

  int rc = 0;
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    rc = REPLICATE_ECURL;
    goto fail;
  }
  sh->curl_initialised = true;
  if (opt->ca_file && !(sh->ca_file = copy_string(opt->ca_file))) {
    rc = ENOMEM;
    goto fail;
  }
  if (opt->token && !(sh->token = copy_string(opt->token))) {
    rc = ENOMEM;
    goto fail;
  }
  sh->token_gen = 1;
  sh->sb = calloc(opt->standby_count, sizeof *sh->sb);
  if (!sh->sb) {
    rc = ENOMEM;
    goto fail;
  }
  sh->n = opt->standby_count;
  for (size_t i = 0; i < sh->n && !rc; i++)
    rc = standby_init(sh, &sh->sb[i], opt->standby_urls[i]);
  if (rc)
    goto fail;
  sh->multi = curl_multi_init();
  if (!sh->multi) {
    rc = REPLICATE_ECURL;
    goto fail;
  }
  int level = opt->zstd_level ? opt->zstd_level : 1;
  rc = replicate_encoder_new(level, &sh->commit_enc);
  if (!rc)
    rc = replicate_encoder_new(level, &sh->ship_enc);
  if (!rc)
    rc = replicate_decoder_new(NULL, &sh->dec);
  if (!rc)
    rc = replicate_coalescer_new(sh->coalesce_max_pages, &sh->coal);
  if (rc)
    goto fail;

  loom_store_position(sh->store, &sh->latest);
  loom_store_lineage(sh->store, &sh->lineage);
  rc = reconcile_log(sh, &sh->latest);
  if (rc)
    goto fail;

  rc = pthread_create(&sh->thread, NULL, ship_main, sh);
  if (rc)
    goto fail;
  sh->thread_started = true;
  *out = sh;
  return 0;
fail:
  replicate_shipper_stop(sh);
  return rc;
}

void replicate_shipper_stop(replicate_shipper *sh)
{
  if (!sh)
    return;
  if (sh->thread_started) {
    pthread_mutex_lock(&sh->mu);
    sh->stopping = true;
    pthread_cond_broadcast(&sh->cond);
    pthread_mutex_unlock(&sh->mu);
    curl_multi_wakeup(sh->multi);
    pthread_join(sh->thread, NULL);
  }
  for (size_t i = 0; sh->sb && i < sh->n; i++)
    standby_free(&sh->sb[i]);
  free(sh->sb);
  if (sh->snap)
    loom_snapshot_close(sh->snap);
  if (sh->multi)
    curl_multi_cleanup(sh->multi);
  ring_clear(sh);
  free(sh->ring.v);
  replicate_encoder_free(sh->commit_enc);
  replicate_encoder_free(sh->ship_enc);
  replicate_decoder_free(sh->dec);
  replicate_coalescer_free(sh->coal);
  replicate_buf_free(&sh->commit_buf);
  free_secret(sh->token);
  free(sh->ca_file);
  if (sh->curl_initialised)
    curl_global_cleanup();
  pthread_cond_destroy(&sh->cond);
  pthread_mutex_destroy(&sh->mu);
  free(sh);
}

/* ---------------------------------------------------------------------- */
/* The commit side */

static void deadline_after(struct timespec *ts, double seconds)
{
  clock_gettime(CLOCK_MONOTONIC, ts);
  int64_t ns = ts->tv_nsec + seconds_to_ns(seconds);
  ts->tv_sec += (time_t)(ns / NS_PER_S);
  ts->tv_nsec = (long)(ns % NS_PER_S);
}

/* Make commit c known to the pipelines: the latest position, and its
 * frame (bytes long; *frame, if given, is taken: the ring keeps it in
 * memory, or frees it and the log is read when needed). */
static void commit_publish(replicate_shipper *sh, const loom_commit *c,
                           uint64_t bytes, ship_frame **frame)
{
  ship_frame *f = frame ? *frame : NULL;
  if (frame)
    *frame = NULL;
  pthread_mutex_lock(&sh->mu);
  sh->latest = c->after;
  if (ring_push(sh, c->after.seq, c->after.commit_time_ns, bytes, f))
    free(f); /* not in memory: read from the log when needed */
  pthread_mutex_unlock(&sh->mu);
  curl_multi_wakeup(sh->multi);
}

/* Sync mode: wait until sync_count standbys hold c (see replicate.h). A
 * timeout marks the shipper degraded (either outcome: status shows it until
 * enough standbys hold the latest frame again, after_ack). */
static int sync_wait(replicate_shipper *sh, const loom_commit *c)
{
  bool async = sh->on_sync_timeout == REPLICATE_SYNC_DEGRADE;
  struct timespec deadline;
  deadline_after(&deadline, sh->sync_timeout_s);
  pthread_mutex_lock(&sh->mu);
  bool timed_out = false;
  while (!sh->fenced && !sh->stopping && !(async && sh->degraded) &&
         acked_locked(sh, c->after.epoch, c->after.seq) < sh->sync_count) {
    if (pthread_cond_timedwait(&sh->cond, &sh->mu, &deadline) == ETIMEDOUT) {
      timed_out = acked_locked(sh, c->after.epoch, c->after.seq) < sh->sync_count;
      break;
    }
  }
  if (sh->fenced) {
    pthread_mutex_unlock(&sh->mu);
    return REPLICATE_EFENCED;
  }
  if (!timed_out) {
    pthread_mutex_unlock(&sh->mu);
    return 0;
  }
  bool first = !sh->degraded;
  if (first) {
    sh->degraded = true;
    sh->degraded_since_ns = real_ns();
  }
  pthread_mutex_unlock(&sh->mu);
  if (first)
    diag(sh, "sync: fewer than %u standbys acknowledged epoch %" PRIu64
         " seq %" PRIu64 " within %.3f s: %s until they catch up",
         sh->sync_count, c->after.epoch, c->after.seq, sh->sync_timeout_s,
         async ? "running asynchronously" : "saves report the timeout");
  return async ? 0 : REPLICATE_ESYNC_TIMEOUT;
}

/* The log is a cache of the store: a failed append (ENOSPC, EIO, a
 * poisoned handle) never fails the save, whose commit point has passed; it
 * costs a base image to a standby that later needs a frame the shipper no
 * longer holds in memory. Said when appends start failing and when they
 * work again, not once per save. */
static void note_log_append(replicate_shipper *sh, uint64_t seq, int rc)
{
  if (rc && !sh->log_failing)
    diag(sh, "replication log: appending seq %" PRIu64 " failed (%s); the "
         "save stands (it is committed); until appends work again, a standby "
         "that needs a frame no longer in memory gets a base image", seq,
         replicate_strerror(rc));
  else if (!rc && sh->log_failing)
    diag(sh, "replication log: appends work again from seq %" PRIu64, seq);
  sh->log_failing = rc != 0;
}

int replicate_shipper_on_commit(replicate_shipper *sh, loom *l,
                                const loom_commit *c)
{
  assert(sh && l && c);
  int rc = replicate_frame_encode_commit(sh->commit_enc, l, c, &sh->commit_buf);
  ship_frame *frame = NULL;
  if (!rc) {
    frame = malloc(sizeof *frame + sh->commit_buf.len);
    if (frame) {
      frame->refs = 1;
      frame->len = sh->commit_buf.len;
      memcpy(frame->data, sh->commit_buf.data, sh->commit_buf.len);
    }
  }
  /* The commit is durable in the store (the commit point came before this
   * hook), so it may ship now, while the log append below is made durable:
   * the standby's receive-log fsync and ours overlap instead of following
   * each other. Only a frame the in-memory cache keeps goes early: the
   * shipper reads any other from the log, which must hold it first. If
   * the append fails, the frame still ships from memory, and the log
   * starts afresh at the next commit (as after any append failure). */
  bool early = frame && frame->len <= sh->cache_bytes;
  if (early)
    commit_publish(sh, c, sh->commit_buf.len, &frame);
  int log_rc = 0;
  if (!rc) {
    log_rc = replicate_log_append(sh->log, sh->commit_buf.data, sh->commit_buf.len);
    if (log_rc == REPLICATE_ENOT_CONTIGUOUS) {
      /* The log's chain was broken by an earlier failure: start afresh. */
      log_rc = replicate_log_reset(sh->log);
      if (!log_rc)
        log_rc = replicate_log_append(sh->log, sh->commit_buf.data,
                                      sh->commit_buf.len);
    }
    note_log_append(sh, c->after.seq, log_rc);
  }
  bool logged = !rc && !log_rc;
  if (!early)
    commit_publish(sh, c, logged ? sh->commit_buf.len : 0, logged ? &frame : NULL);
  free(frame); /* not published (an append failed): the ring has no copy */

  replicate_log_stats st;
  replicate_log_get_stats(sh->log, &st);
  pthread_mutex_lock(&sh->mu);
  /* The append may have dropped old segments (the byte cap). */
  ring_forget_before(sh, st.records ? st.oldest_seq : UINT64_MAX);
  bool fenced = sh->fenced;
  pthread_mutex_unlock(&sh->mu);
  if (rc)
    return rc;
  if (fenced)
    return REPLICATE_EFENCED;
  if (sh->sync_count == 0)
    return 0;

  return sync_wait(sh, c);
}

int replicate_shipper_set_token(replicate_shipper *sh, const char *token)
{
  assert(sh);
  if (!token_acceptable(token))
    return REPLICATE_EINVAL;
  char *copy = NULL;
  if (token && !(copy = copy_string(token)))
    return ENOMEM;
  pthread_mutex_lock(&sh->mu);
  free_secret(sh->token);
  sh->token = copy;
  sh->token_gen++;
  pthread_mutex_unlock(&sh->mu);
  /* schedule() sees the new generation and asks an unauthorized standby
   * again at once. */
  curl_multi_wakeup(sh->multi);
  return 0;
}

/* ---------------------------------------------------------------------- */
/* Status */

/* Lag of a standby at applied seq, under mu. */
static void lag_locked(replicate_shipper *sh, uint64_t applied, int64_t now,
                       uint64_t *frames, uint64_t *bytes, double *seconds)
{
  *frames = 0;
  *bytes = 0;
  *seconds = 0;
  if (applied >= sh->latest.seq)
    return;
  *frames = sh->latest.seq - applied;
  commit_ring *r = &sh->ring;
  int64_t oldest_ns = sh->latest.commit_time_ns;
  if (r->len) {
    commit_entry *first = ring_at(r, 0);
    commit_entry *last = ring_at(r, r->len - 1);
    commit_entry *at = ring_find(r, applied);
    commit_entry *next = ring_find(r, applied + 1);
    if (at)
      *bytes = last->cum_bytes - at->cum_bytes;
    else if (applied < first->seq)
      *bytes = last->cum_bytes - first->cum_bytes + first->bytes;
    if (next)
      oldest_ns = next->commit_time_ns;
    else if (applied < first->seq)
      oldest_ns = first->commit_time_ns;
  }
  if (oldest_ns > 0 && now > oldest_ns)
    *seconds = (double)(now - oldest_ns) / 1e9;
}

void replicate_shipper_status(replicate_shipper *sh,
                              replicate_peer_status *array, size_t cap,
                              size_t *n)
{
  assert(sh && n && (array || cap == 0));
  int64_t now = real_ns();
  pthread_mutex_lock(&sh->mu);
  *n = sh->n;
  for (size_t i = 0; i < sh->n && i < cap; i++) {
    const standby *sb = &sh->sb[i];
    replicate_peer_status *o = &array[i];
    memset(o, 0, sizeof *o);
    snprintf(o->url, sizeof o->url, "%s", sb->url);
    o->state = sb->state;
    o->state_name = replicate_peer_state_name(sb->state);
    o->sent_seq = sb->sent_seq;
    o->received_seq = sb->has_position ? sb->received.seq : 0;
    o->applied_seq = sb->has_position ? sb->applied.seq : 0;
    o->received_epoch = sb->has_position ? sb->received.epoch : 0;
    lag_locked(sh, o->applied_seq, now, &o->lag_frames, &o->lag_bytes,
               &o->lag_seconds);
    memcpy(o->last_error, sb->last_error, sizeof o->last_error);
    o->last_error_at_ns = sb->last_error_ns;
    o->last_error_at = sb->last_error_ns / NS_PER_S;
    o->bytes_raw = sb->bytes_raw;
    o->bytes_wire = sb->bytes_wire;
    o->frames_sent = sb->frames_sent;
    o->requests = sb->requests;
    o->heartbeats_sent = sb->heartbeats_sent;
    o->coalesced_sent = sb->coalesced_sent;
    o->base_images_sent = sb->base_images_sent;
    o->failures = sb->failures;
  }
  pthread_mutex_unlock(&sh->mu);
}

void replicate_shipper_get_summary(replicate_shipper *sh,
                                   replicate_shipper_summary *out)
{
  assert(sh && out);
  pthread_mutex_lock(&sh->mu);
  out->epoch = sh->latest.epoch;
  out->latest_seq = sh->latest.seq;
  out->latest_commit_time_ns = sh->latest.commit_time_ns;
  out->fenced = sh->fenced;
  out->sync_degraded = sh->degraded;
  out->sync_degraded_since_ns = sh->degraded ? sh->degraded_since_ns : 0;
  out->sync_count = sh->sync_count;
  out->standby_count = sh->n;
  pthread_mutex_unlock(&sh->mu);
}

/* A drain gives up on an unreachable standby only after this many failed
 * attempts in a row (about 1.5 s of backoff): one reset connection while the
 * primary stops is not a standby that is gone. */
#define DRAIN_UNREACHABLE_ATTEMPTS 4

/* The standby holds the latest frame. Under mu. */
static bool holds_latest_locked(const replicate_shipper *sh, const standby *sb)
{
  return sb->has_position && sb->on_chain &&
         sb->received.epoch == sh->latest.epoch &&
         sb->received.seq >= sh->latest.seq;
}

/* Waiting longer will not bring it the latest frame: unreachable, stalled
 * or refused (after DRAIN_UNREACHABLE_ATTEMPTS), unauthorized, fenced or
 * diverged. Under mu. */
static bool hopeless_locked(const standby *sb)
{
  return ((sb->state == REPLICATE_PEER_UNREACHABLE ||
           sb->state == REPLICATE_PEER_STALLED ||
           sb->state == REPLICATE_PEER_REFUSED) &&
          sb->unreachable_run >= DRAIN_UNREACHABLE_ATTEMPTS) ||
         sb->state == REPLICATE_PEER_UNAUTHORIZED ||
         sb->state == REPLICATE_PEER_FENCED ||
         sb->state == REPLICATE_PEER_DIVERGED;
}

/* How the drain stands: 1 every standby holds the latest frame, -1 some do
 * not and waiting will not change it, 0 wait on. Under mu. */
static int drain_outcome_locked(const replicate_shipper *sh)
{
  int outcome = 1;
  for (size_t i = 0; i < sh->n; i++) {
    const standby *sb = &sh->sb[i];
    if (holds_latest_locked(sh, sb))
      continue;
    if (!hopeless_locked(sb))
      return 0;
    outcome = -1;
  }
  return outcome;
}

bool replicate_shipper_drain(replicate_shipper *sh, double timeout_seconds)
{
  assert(sh);
  struct timespec deadline;
  deadline_after(&deadline, timeout_seconds > 0 ? timeout_seconds : 0);
  pthread_mutex_lock(&sh->mu);
  int outcome = drain_outcome_locked(sh);
  while (outcome == 0 && !sh->fenced &&
         pthread_cond_timedwait(&sh->cond, &sh->mu, &deadline) != ETIMEDOUT)
    outcome = drain_outcome_locked(sh);
  bool done = drain_outcome_locked(sh) == 1 && !sh->fenced;
  pthread_mutex_unlock(&sh->mu);
  return done;
}
