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
 *                      (durable at once, or by the log's own thread when
 *                      it was opened with REPLICATE_LOG_SYNC_BACKGROUND, as
 *                      the primary's is: the log is a cache of the store),
 *                      and in sync mode wait on cond.
 *   the shipping side  one thread, one curl multi handle, one pipeline per
 *                      standby: ship_schedule() picks each idle standby's next
 *                      request, ship_finish() reads its answer and moves the
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
 *       overlaps the append (and its fsync, when the log makes each
 *       append durable); otherwise only once replicate_log_append() returned
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
#include "clock.h"
#include "logline.h"

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
/* Small helpers */

int64_t ship_mono_ns(void) { return loom_mono_ns(); } /* core/clock.h */
int64_t ship_real_ns(void) { return loom_real_ns(); }

int64_t ship_seconds_to_ns(double s)
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

void ship_free_secret(char *s)
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

void ship_diag(replicate_shipper *sh, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  loom_log_vline(sh->log_fn, sh->log_ctx, fmt, ap);
  va_end(ap);
}

/* xorshift64*, for backoff jitter (shipping thread only). */
double ship_random_unit(replicate_shipper *sh)
{
  uint64_t x = sh->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  sh->rng = x;
  return (double)((x * UINT64_C(2685821657736338717)) >> 11) / 9007199254740992.0;
}

/* ---------------------------------------------------------------------- */
/* The shipping thread */

static int64_t next_due(const ship_peer *peer, const loom_position *latest)
{
  replicate_shipper *sh = peer->sh;
  int64_t now = ship_mono_ns();
  if (peer->in_flight) /* when ship_check_stall is due, if ever */
    return peer->stalled || peer->seen_up == 0 ? INT64_MAX
                                           : peer->progress_ns + sh->stall_ns;
  if (peer->next_attempt_ns > now)
    return peer->next_attempt_ns;
  if (!peer->known || peer->need_base || peer->received.seq < latest->seq)
    return now; /* work to do */
  return peer->last_activity_ns + sh->heartbeat_ns;
}

static void apply_peer_ops(replicate_shipper *sh);

static void *ship_main(void *arg)
{
  replicate_shipper *sh = arg;
  for (;;) {
    apply_peer_ops(sh);
    pthread_mutex_lock(&sh->mu);
    bool stopping = sh->stopping;
    loom_position latest = sh->latest;
    pthread_mutex_unlock(&sh->mu);
    if (stopping)
      break;

    int64_t now = ship_mono_ns();
    for (size_t i = 0; i < sh->n; i++)
      ship_schedule(&sh->peers[i], now);

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
      ship_finish((ship_peer *)(void *)priv, result);
      finished = true;
    }
    if (finished)
      continue;

    pthread_mutex_lock(&sh->mu);
    bool fenced = sh->fenced;
    pthread_mutex_unlock(&sh->mu);
    now = ship_mono_ns();
    for (size_t i = 0; i < sh->n && !fenced; i++)
      ship_check_stall(&sh->peers[i], now);
    int64_t wake = now + NS_PER_S;
    for (size_t i = 0; i < sh->n && !fenced; i++) {
      const ship_peer *peer = &sh->peers[i];
      int64_t due = next_due(peer, &latest);
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
    ship_peer *peer = &sh->peers[i];
    if (peer->in_flight) {
      curl_multi_remove_handle(sh->multi, peer->easy);
      peer->in_flight = false;
      ship_release_request(peer);
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

static int peer_init(replicate_shipper *sh, ship_peer *peer, const char *url)
{
  peer->sh = sh;
  if (!url || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0))
    return REPLICATE_EINVAL;
  for (const unsigned char *p = (const unsigned char *)url; *p; p++)
    if (*p <= 0x20 || *p == 0x7f)
      return REPLICATE_EINVAL;
  size_t len = strlen(url);
  while (len > 0 && url[len - 1] == '/')
    len--;
  peer->url = copy_string(url);
  peer->frames_url = join_url(url, len, "/v1/frames");
  peer->base_url = join_url(url, len, "/v1/base");
  peer->answer = malloc(SHIP_ANSWER_MAX + 1);
  peer->easy = curl_easy_init();
  if (!peer->url || !peer->frames_url || !peer->base_url || !peer->answer)
    return ENOMEM;
  if (!peer->easy)
    return REPLICATE_ECURL;
  peer->state = REPLICATE_PEER_CATCHING_UP;
  peer->coalesce_pages = sh->coalesce_max_pages;
  return 0;
}

static void peer_free(ship_peer *peer)
{
  if (peer->easy)
    curl_easy_cleanup(peer->easy);
  for (struct curl_slist *p = peer->headers; p; p = p->next)
    explicit_bzero(p->data, strlen(p->data));
  curl_slist_free_all(peer->headers);
  free(peer->url);
  free(peer->frames_url);
  free(peer->base_url);
  free(peer->answer);
  replicate_buf_free(&peer->body_buf);
  replicate_buf_free(&peer->scratch);
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
  ship_diag(sh, "replication log ends at seq %" PRIu64 ", the store is at seq %"
            PRIu64 ": log reset (standbys behind get base images)", st.newest_seq,
            pos->seq);
  return replicate_log_reset(sh->log);
}

static int check_duration(double v)
{
  return v < 0 || isnan(v) ? REPLICATE_EINVAL : 0;
}

static bool options_valid(const replicate_shipper_options *opt)
{
  size_t cap = opt->max_peers ? opt->max_peers : opt->standby_count;
  return opt->store && opt->log && (opt->standby_urls || !opt->standby_count) &&
         cap != 0 && opt->standby_count <= cap && opt->sync_count <= cap &&
         token_acceptable(opt->token) &&
         (opt->on_sync_timeout == REPLICATE_SYNC_FAIL ||
          opt->on_sync_timeout == REPLICATE_SYNC_DEGRADE) &&
         !check_duration(opt->sync_timeout_seconds) &&
         !check_duration(opt->heartbeat_seconds) &&
         !check_duration(opt->connect_timeout_seconds) &&
         !check_duration(opt->request_timeout_seconds) &&
         !check_duration(opt->base_stall_seconds) &&
         !check_duration(opt->stall_seconds) &&
         !check_duration(opt->backoff_base_seconds) &&
         !check_duration(opt->backoff_max_seconds) &&
         !check_duration(opt->unauthorized_retry_seconds);
}

/* The settings, with their defaults for what opt leaves 0. */
static void apply_options(replicate_shipper *sh, const replicate_shipper_options *opt)
{
  sh->store = opt->store;
  sh->log = opt->log;
  sh->sync_count = opt->sync_count;
  sh->sync_timeout_s = opt->sync_timeout_seconds > 0 ? opt->sync_timeout_seconds : 10;
  sh->on_sync_timeout = opt->on_sync_timeout;
  sh->heartbeat_ns = ship_seconds_to_ns(opt->heartbeat_seconds > 0 ? opt->heartbeat_seconds : 1);
  sh->connect_timeout_ms = (long)(1000 * (opt->connect_timeout_seconds > 0
                                             ? opt->connect_timeout_seconds : 5));
  sh->request_timeout_ms = (long)(1000 * (opt->request_timeout_seconds > 0
                                             ? opt->request_timeout_seconds : 30));
  double stall = opt->base_stall_seconds > 0 ? opt->base_stall_seconds : 120;
  sh->base_stall_s = (long)stall + ((double)(long)stall < stall);
  sh->stall_ns = ship_seconds_to_ns(opt->stall_seconds > 0 ? opt->stall_seconds : 5);
  sh->backoff_base_s = opt->backoff_base_seconds > 0 ? opt->backoff_base_seconds : 0.1;
  sh->backoff_max_s = opt->backoff_max_seconds > 0 ? opt->backoff_max_seconds : 5;
  if (sh->backoff_max_s < sh->backoff_base_s)
    sh->backoff_max_s = sh->backoff_base_s;
  sh->unauthorized_retry_ns = ship_seconds_to_ns(
      opt->unauthorized_retry_seconds > 0 ? opt->unauthorized_retry_seconds : 30);
  sh->coalesce_max_pages = opt->coalesce_max_pages ? opt->coalesce_max_pages : 2048;
  sh->coalesce_max_bytes = opt->coalesce_max_bytes ? opt->coalesce_max_bytes
                                                   : UINT64_C(32) << 20;
  sh->cache_bytes = opt->cache_bytes ? opt->cache_bytes : UINT64_C(64) << 20;
  sh->log_fn = opt->log_fn;
  sh->log_ctx = opt->log_ctx;
  sh->rng = (uint64_t)ship_real_ns() ^ ((uint64_t)getpid() << 32) ^ (uintptr_t)sh;
  if (!sh->rng)
    sh->rng = 1;
}

/* libcurl, the copied strings, the standbys and the codecs. */
static int acquire(replicate_shipper *sh, const replicate_shipper_options *opt)
{
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
    return REPLICATE_ECURL;
  sh->curl_initialised = true;
  sh->frame_key = opt->frame_key;
  if (opt->ca_file && !(sh->ca_file = copy_string(opt->ca_file)))
    return ENOMEM;
  if (opt->token && !(sh->token = copy_string(opt->token)))
    return ENOMEM;
  sh->token_gen = 1;
  sh->cap = opt->max_peers ? opt->max_peers : opt->standby_count;
  sh->peers = calloc(sh->cap, sizeof *sh->peers);
  sh->readers = calloc(sh->cap, sizeof *sh->readers);
  if (!sh->peers || !sh->readers)
    return ENOMEM;
  sh->n = opt->standby_count;
  int rc = 0;
  for (size_t i = 0; i < sh->n && !rc; i++)
    rc = peer_init(sh, &sh->peers[i], opt->standby_urls[i]);
  if (rc)
    return rc;
  sh->multi = curl_multi_init();
  if (!sh->multi)
    return REPLICATE_ECURL;
  int level = opt->zstd_level ? opt->zstd_level : 1;
  rc = replicate_encoder_new(level, &sh->commit_enc);
  if (!rc)
    rc = replicate_encoder_new(level, &sh->ship_enc);
  if (!rc)
    rc = replicate_decoder_new(NULL, &sh->dec);
  if (!rc)
    rc = replicate_coalescer_new(sh->coalesce_max_pages, &sh->coal);
  return rc;
}

int replicate_shipper_start(const replicate_shipper_options *opt,
                            replicate_shipper **out)
{
  assert(opt && out);
  *out = NULL;
  if (!options_valid(opt))
    return REPLICATE_EINVAL;

  replicate_shipper *sh = calloc(1, sizeof *sh);
  if (!sh)
    return ENOMEM;
  apply_options(sh, opt);

  pthread_mutex_init(&sh->mu, NULL);
  pthread_mutex_init(&sh->ops_mu, NULL);
  loom_cond_init_mono(&sh->cond);

  int rc = acquire(sh, opt);
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
  for (size_t i = 0; sh->peers && i < sh->n; i++)
    peer_free(&sh->peers[i]);
  free(sh->peers);
  free(sh->readers);
  for (size_t i = 0; i < sh->peer_op_count; i++)
    free(sh->peer_ops[i].url);
  free(sh->peer_ops);
  if (sh->snap)
    loom_snapshot_close(sh->snap);
  if (sh->multi)
    curl_multi_cleanup(sh->multi);
  ship_ring_clear(sh);
  free(sh->ring.v);
  replicate_encoder_free(sh->commit_enc);
  replicate_encoder_free(sh->ship_enc);
  replicate_decoder_free(sh->dec);
  replicate_coalescer_free(sh->coal);
  replicate_buf_free(&sh->commit_buf);
  ship_free_secret(sh->token);
  free(sh->ca_file);
  free(sh->upstream);
  if (sh->curl_initialised)
    curl_global_cleanup();
  pthread_cond_destroy(&sh->cond);
  pthread_mutex_destroy(&sh->mu);
  pthread_mutex_destroy(&sh->ops_mu);
  free(sh);
}

/* ---------------------------------------------------------------------- */
/* The commit side */

void ship_deadline_after(struct timespec *ts, double seconds)
{
  *ts = loom_deadline(CLOCK_MONOTONIC, ship_seconds_to_ns(seconds));
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
  if (ship_ring_push(sh, c->after.seq, c->after.commit_time_ns, bytes, f))
    free(f); /* not in memory: read from the log when needed */
  pthread_mutex_unlock(&sh->mu);
  curl_multi_wakeup(sh->multi);
}

/* Sync mode: wait until sync_count standbys hold c (see replicate.h). A
 * timeout marks the shipper degraded (either outcome: status shows it until
 * enough standbys hold the latest frame again, ship_after_ack). */
static int sync_wait(replicate_shipper *sh, const loom_commit *c)
{
  bool async = sh->on_sync_timeout == REPLICATE_SYNC_DEGRADE;
  struct timespec deadline;
  ship_deadline_after(&deadline, sh->sync_timeout_s);
  pthread_mutex_lock(&sh->mu);
  bool timed_out = false;
  while (!sh->fenced && !sh->stopping && !(async && sh->degraded) &&
         ship_acked_locked(sh, c->after.epoch, c->after.seq) < sh->sync_count) {
    if (pthread_cond_timedwait(&sh->cond, &sh->mu, &deadline) == ETIMEDOUT) {
      timed_out = ship_acked_locked(sh, c->after.epoch, c->after.seq) < sh->sync_count;
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
    sh->degraded_since_ns = ship_real_ns();
  }
  pthread_mutex_unlock(&sh->mu);
  if (first)
    ship_diag(sh, "sync: fewer than %u standbys acknowledged epoch %" PRIu64
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
    ship_diag(sh, "replication log: appending seq %" PRIu64 " failed (%s); the "
              "save stands (it is committed); until appends work again, a standby "
              "that needs a frame no longer in memory gets a base image", seq,
              replicate_strerror(rc));
  else if (!rc && sh->log_failing)
    ship_diag(sh, "replication log: appends work again from seq %" PRIu64, seq);
  sh->log_failing = rc != 0;
}

int replicate_shipper_on_commit(replicate_shipper *sh, loom *l,
                                const loom_commit *c)
{
  assert(sh && l && c);
  int rc = replicate_frame_encode_commit(sh->commit_enc, l, c, &sh->commit_buf);
  if (rc == REPLICATE_EIMAGE_ROT)
    ship_diag(sh, "seq %" PRIu64 " is not shipped: page %" PRIu64 " of the image "
              "does not match the hash it was committed with (bit rot, or a "
              "write that did not land); it stands locally. Stop this primary "
              "and promote a standby, which holds the page as committed",
              c->after.seq, replicate_encoder_rot_page(sh->commit_enc));
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
   * hook), so it may ship now, while the log append below is made:
   * the standby's receive-log fsync and our append overlap instead of
   * following each other. Only a frame the in-memory cache keeps goes early: the
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
  ship_ring_forget_before(sh, st.records ? st.oldest_seq : UINT64_MAX);
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
  ship_free_secret(sh->token);
  sh->token = copy;
  sh->token_gen++;
  pthread_mutex_unlock(&sh->mu);
  /* ship_schedule() sees the new generation and asks an unauthorized standby
   * again at once. */
  curl_multi_wakeup(sh->multi);
  return 0;
}

int replicate_shipper_set_upstream(replicate_shipper *sh, const char *url)
{
  assert(sh);
  if (url && (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0))
    return REPLICATE_EINVAL;
  for (const char *c = url; c && *c; c++)
    if (*c <= ' ' || *c > '~')
      return REPLICATE_EINVAL;
  char *copy = NULL;
  if (url && !(copy = copy_string(url)))
    return ENOMEM;
  pthread_mutex_lock(&sh->mu);
  free(sh->upstream);
  sh->upstream = copy;
  sh->token_gen++; /* the headers are built again */
  pthread_mutex_unlock(&sh->mu);
  return 0;
}

/* ---------------------------------------------------------------------- */
/* Peers added and removed at run time
 *
 * The caller checks and queues (under mu); the shipping thread applies
 * (apply_peer_ops), since it alone walks peer and n without mu (I3). A
 * removed peer's request in flight is abandoned; so is one of the peer
 * moved into its slot (a struct that moves must not be in curl's hands),
 * which then asks its position again. */

static bool url_acceptable(const char *url)
{
  if (!url || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0))
    return false;
  for (const unsigned char *p = (const unsigned char *)url; *p; p++)
    if (*p <= 0x20 || *p == 0x7f)
      return false;
  return strlen(url) < REPLICATE_URL_MAX;
}

/* Whether url is a peer once the queued operations are applied, and how
 * many peers there will be then. Under mu. */
static bool peer_will_exist_locked(const replicate_shipper *sh, const char *url,
                                   size_t *count)
{
  bool present = false;
  size_t n = sh->n;
  for (size_t i = 0; i < sh->n; i++)
    present = present || strcmp(sh->peers[i].url, url) == 0;
  for (size_t i = 0; i < sh->peer_op_count; i++) {
    const struct peer_op *op = &sh->peer_ops[i];
    n = op->add ? n + 1 : n - 1;
    if (strcmp(op->url, url) == 0)
      present = op->add;
  }
  *count = n;
  return present;
}

static int queue_peer_op(replicate_shipper *sh, const char *url, bool add)
{
  assert(sh);
  if (!url_acceptable(url))
    return REPLICATE_EINVAL;
  char *copy = copy_string(url);
  if (!copy)
    return ENOMEM;
  pthread_mutex_lock(&sh->ops_mu);
  pthread_mutex_lock(&sh->mu);
  size_t count;
  bool present = peer_will_exist_locked(sh, url, &count);
  int rc = add && present ? EEXIST : !add && !present ? ENOENT
           : add && count >= sh->cap ? ENOSPC : 0;
  struct peer_op *ops = NULL;
  if (!rc && !(ops = realloc(sh->peer_ops, (sh->peer_op_count + 1) * sizeof *ops)))
    rc = ENOMEM;
  if (!rc) {
    sh->peer_ops = ops;
    sh->peer_ops[sh->peer_op_count++] = (struct peer_op){.add = add, .url = copy};
    copy = NULL;
  }
  pthread_mutex_unlock(&sh->mu);
  pthread_mutex_unlock(&sh->ops_mu);
  free(copy);
  if (!rc)
    curl_multi_wakeup(sh->multi);
  return rc;
}

int replicate_shipper_add_peer(replicate_shipper *sh, const char *url)
{
  return queue_peer_op(sh, url, true);
}

int replicate_shipper_remove_peer(replicate_shipper *sh, const char *url)
{
  return queue_peer_op(sh, url, false);
}

/* Abandon peer's request in flight, if any (shipping thread, without mu). */
static void abandon_request(ship_peer *peer)
{
  if (!peer->in_flight)
    return;
  curl_multi_remove_handle(peer->sh->multi, peer->easy);
  peer->in_flight = false;
  ship_release_request(peer);
  peer->known = false;
}

static void add_peer_now(replicate_shipper *sh, const char *url)
{
  ship_peer fresh = {0};
  int rc = peer_init(sh, &fresh, url);
  if (rc) {
    peer_free(&fresh);
    ship_diag(sh, "peer %s not added: %s", url, replicate_strerror(rc));
    return;
  }
  pthread_mutex_lock(&sh->mu);
  /* queue_peer_op counted against cap, but an add queued while this
   * thread applied the previous ones can overshoot it: refuse here too. */
  bool full = sh->n >= sh->cap;
  if (!full)
    sh->peers[sh->n++] = fresh;
  pthread_mutex_unlock(&sh->mu);
  if (full) {
    peer_free(&fresh);
    ship_diag(sh, "peer %s not added: already %zu peers, the most it takes", url, sh->cap);
    return;
  }
  ship_diag(sh, "peer %s added (%zu peers)", url, sh->n);
}

static void remove_peer_now(replicate_shipper *sh, const char *url)
{
  size_t i = 0;
  while (i < sh->n && strcmp(sh->peers[i].url, url) != 0)
    i++;
  if (i == sh->n)
    return;
  abandon_request(&sh->peers[i]);
  abandon_request(&sh->peers[sh->n - 1]);
  pthread_mutex_lock(&sh->mu);
  ship_peer gone = sh->peers[i];
  sh->peers[i] = sh->peers[sh->n - 1];
  memset(&sh->peers[sh->n - 1], 0, sizeof sh->peers[0]);
  sh->n--;
  pthread_cond_broadcast(&sh->cond); /* sync waits and drains count again */
  pthread_mutex_unlock(&sh->mu);
  peer_free(&gone);
  ship_diag(sh, "peer %s removed (%zu peers)", url, sh->n);
}

static void apply_peer_ops(replicate_shipper *sh)
{
  pthread_mutex_lock(&sh->ops_mu);
  pthread_mutex_lock(&sh->mu);
  struct peer_op *ops = sh->peer_ops;
  size_t count = sh->peer_op_count;
  sh->peer_ops = NULL;
  sh->peer_op_count = 0;
  pthread_mutex_unlock(&sh->mu);
  for (size_t i = 0; i < count; i++) {
    if (ops[i].add)
      add_peer_now(sh, ops[i].url);
    else
      remove_peer_now(sh, ops[i].url);
    free(ops[i].url);
  }
  pthread_mutex_unlock(&sh->ops_mu);
  free(ops);
}
