/*
 * ship_test.c: the shipper (replicate/ship.h) against fake standbys.
 *
 * A fake standby is a libmicrohttpd server on 127.0.0.1 (an ephemeral
 * port) that owns a real loom_store: POST /v1/frames decodes each frame
 * with replicate_frame_decode() and applies it with replicate_frame_apply(),
 * PUT /v1/base applies the image stream as a LOOM_PATCH_BASE patch, and
 * both answer with the store's position as the wire contract (ship.h) says.
 * Knobs make it misbehave: a required token, 409 "stale epoch", closing
 * the connection instead of answering (before or after applying), claiming
 * a frame it did not apply (to make a gap), delaying or stalling answers,
 * refusing connections (stopped), 503 with Retry-After, 413 above a size,
 * restarting empty.
 *
 * The primary is a real arena (loom_open) whose commit hook calls
 * replicate_shipper_on_commit(). After every scenario the standby's image
 * file equals the primary's byte for byte, and their positions (epoch, seq,
 * checksum, pages) are equal.
 *
 * SHIP_TEST_VERBOSE=1 prints the shipper's diagnostics.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cmocka.h>
#include <microhttpd.h>

#include "iosim.h"
#include "loom.h"
#include "replicate.h"

#include "ship_internal.h"
#include "testlib.h"

#define PS LOOM_PAGE_SIZE

/* ---------------------------------------------------------------------- */
/* Helpers */

static int64_t now_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}




static bool verbose(void)
{
  const char *v = getenv("SHIP_TEST_VERBOSE");
  return v && *v && strcmp(v, "0") != 0;
}

/* ---------------------------------------------------------------------- */
/* The fake standby */

typedef struct fake {
  char *dir;
  loom_store *store;
  replicate_decoder *dec;
  struct MHD_Daemon *daemon;
  uint16_t port;
  char url[64];
  char *tls_cert;             /* PEM, for https; NULL for http */
  char *tls_key;

  pthread_mutex_t mu;         /* everything below, and the store */
  pthread_cond_t cond;
  bool shutting_down;

  /* Knobs. */
  char token[64];             /* required bearer token, "" for none */
  bool stale_epoch;           /* answer every frame 409 "stale epoch" */
  unsigned drop_before;       /* close the next N frame requests unanswered */
  unsigned drop_after;        /* apply the next N frames, then close */
  unsigned lie;               /* answer the next N frames 200 unapplied */
  unsigned busy;              /* answer the next N requests 503 */
  unsigned retry_after_s;     /* Retry-After of those */
  unsigned error_status;      /* answer every request with it (0: no) */
  size_t max_body;            /* 413 above this many bytes (0: none) */
  unsigned delay_ms;          /* before each answer */
  bool stalled;               /* answers wait until released */
  bool damaged;               /* its image no longer holds what it recorded:
                                 every frame and heartbeat answered 409
                                 REPLICATE_EPAGE_HASH (a base image asked
                                 for), until a base image mends it */
  bool spoil_base;            /* a base image is installed but spoiled (it
                                 stays damaged) and its answer is lost */

  /* What happened. */
  unsigned requests, frames, coalesced, heartbeats, duplicates, gaps,
      mismatches, bases, refused_token, dropped, stale_answers, too_large,
      busy_answers;
  uint64_t claimed_seq;       /* the seq a lie claimed */
  bool order_violation;       /* an applied frame did not follow the last */
  int64_t last_request_ns;
  int64_t busy_answered_ns;
  int64_t after_busy_ns;      /* the first request after a 503 */
} fake;

typedef struct upload {
  uint8_t *buf;
  size_t len;
  size_t cap;
} upload;

static void position_json(char *out, size_t cap, const loom_position *p)
{
  snprintf(out, cap,
           "{\"epoch\": %" PRIu64 ", \"seq\": %" PRIu64
           ", \"checksum\": \"%016" PRIx64 "\", \"pages\": %" PRIu64
           ", \"at\": null}",
           p->epoch, p->seq, p->checksum, p->pages);
}

/* The checksum a fake computed itself is its position's XOR this (0: an
 * honest image; else one that does not hold what it was sent). */
static uint64_t fake_computed_xor;

/* An answer as a standby gives it: {"error", "code", "epoch", "received",
 * "applied", "computed"}; error and code may be NULL. */
static enum MHD_Result respond_code(struct MHD_Connection *conn, unsigned status,
                                    const char *error, const char *code,
                                    const loom_position *pos, unsigned retry_after)
{
  char body[1024], point[256], computed[256];
  if (pos) {
    position_json(point, sizeof point, pos);
    loom_position c = *pos;
    c.checksum ^= __atomic_load_n(&fake_computed_xor, __ATOMIC_RELAXED);
    position_json(computed, sizeof computed, &c);
    if (error)
      snprintf(body, sizeof body,
               "{\"error\": \"%s\", \"code\": \"%s\", \"epoch\": %" PRIu64
               ", \"received\": %s, \"applied\": %s, \"computed\": %s, "
               "\"extra\": [1, 2.5e3, {\"nested\": true}]}",
               error, code ? code : "", pos->epoch, point, point, computed);
    else
      snprintf(body, sizeof body,
               "{\"received\": %s, \"applied\": %s, \"computed\": %s, "
               "\"epoch\": %" PRIu64 "}",
               point, point, computed, pos->epoch);
  } else {
    snprintf(body, sizeof body, "{\"error\": \"%s\"}", error ? error : "error");
  }
  struct MHD_Response *r = MHD_create_response_from_buffer(
      strlen(body), body, MHD_RESPMEM_MUST_COPY);
  if (!r)
    return MHD_NO;
  MHD_add_response_header(r, "Content-Type", "application/json");
  if (retry_after) {
    char v[16];
    snprintf(v, sizeof v, "%u", retry_after);
    MHD_add_response_header(r, "Retry-After", v);
  }
  enum MHD_Result ret = MHD_queue_response(conn, status, r);
  MHD_destroy_response(r);
  return ret;
}

static enum MHD_Result respond(struct MHD_Connection *conn, unsigned status,
                               const char *error, const loom_position *pos,
                               unsigned retry_after)
{
  return respond_code(conn, status, error, NULL, pos, retry_after);
}

/* Apply a base image stream held whole (the fake is allowed to). Under mu. */
static int apply_base(fake *f, const uint8_t *bytes, size_t len,
                      loom_position *pos)
{
  if (len < LOOM_STREAM_HEADER)
    return LOOM_ECORRUPT;
  int rc = loom_stream_header_decode(bytes, pos, NULL);
  if (rc)
    return rc;
  if (len != LOOM_STREAM_HEADER + pos->pages * PS)
    return LOOM_ECORRUPT;
  loom_patch_header h = {.after = *pos, .page_count = pos->pages,
                         .flags = LOOM_PATCH_BASE};
  loom_store_position(f->store, &h.before);
  loom_patch *p;
  rc = loom_store_patch_begin(f->store, &h, &p);
  for (uint64_t n = 0; !rc && n < pos->pages; n++)
    rc = loom_patch_add(p, n, bytes + LOOM_STREAM_HEADER + n * PS);
  if (rc) {
    if (p)
      loom_patch_abort(p);
    return rc;
  }
  rc = loom_patch_commit(p);
  if (!rc)
    rc = loom_store_sync(f->store);
  return rc;
}

static bool token_ok(fake *f, struct MHD_Connection *conn)
{
  if (!f->token[0])
    return true;
  const char *auth =
      MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
  char want[96];
  snprintf(want, sizeof want, "Bearer %s", f->token);
  return auth && strcmp(auth, want) == 0;
}

/* The refusals that come before a request's body is looked at (404, 401,
 * a busy 503, the test's error status, 413): true and *ret set if one
 * applies. Under f->mu, as every answer_* below. */
static bool answer_refusal(fake *f, struct MHD_Connection *conn, bool known,
                           const upload *u, const loom_position *pos,
                           enum MHD_Result *ret)
{
  if (!known) {
    *ret = respond(conn, 404, "not found", NULL, 0);
  } else if (!token_ok(f, conn)) {
    f->refused_token++;
    *ret = respond(conn, 401, "unauthorized", NULL, 0);
  } else if (f->busy) {
    f->busy--;
    f->busy_answers++;
    f->busy_answered_ns = now_ns();
    f->after_busy_ns = 0;
    *ret = respond(conn, 503, "busy", pos, f->retry_after_s);
  } else if (f->error_status) {
    *ret = respond(conn, f->error_status, "refused by the test", NULL, 0);
  } else if (f->max_body && u->len > f->max_body) {
    f->too_large++;
    *ret = respond(conn, 413, "too large", pos, 0);
  } else {
    return false;
  }
  return true;
}

/* PUT /v1/base. */
static enum MHD_Result answer_base(fake *f, struct MHD_Connection *conn,
                                   const upload *u, loom_position pos)
{
  if (f->stale_epoch) {
    loom_position newer = pos;
    newer.epoch++;
    f->stale_answers++;
    return respond(conn, 409, "stale epoch", &newer, 0);
  }
  if (apply_base(f, u->buf, u->len, &pos))
    return respond(conn, 400, "bad base image", NULL, 0);
  f->bases++;
  if (f->spoil_base)
    return MHD_NO; /* installed, still damaged, the answer lost */
  if (f->damaged) { /* every page written anew */
    f->damaged = false;
    __atomic_store_n(&fake_computed_xor, 0, __ATOMIC_RELAXED);
  }
  return respond(conn, 200, NULL, &pos, 0);
}

/* What a frame's apply returned (rc), answered as a standby would. */
static enum MHD_Result answer_applied(fake *f, struct MHD_Connection *conn,
                                      const replicate_frame *frame, int rc,
                                      uint64_t before_seq)
{
  loom_position pos;
  loom_store_position(f->store, &pos);
  if (rc == 0) {
    if (frame->info.before.seq != before_seq)
      f->order_violation = true;
    f->frames++;
    if (frame->info.flags & REPLICATE_FRAME_COALESCED)
      f->coalesced++;
    rc = loom_store_sync(f->store); /* durable before the answer */
    loom_store_position(f->store, &pos);
    if (rc)
      return respond(conn, 500, "sync failed", &pos, 0);
    if (f->drop_after) {
      f->drop_after--;
      f->dropped++;
      return MHD_NO;
    }
    return respond(conn, 200, NULL, &pos, 0);
  }
  if (rc == REPLICATE_EDUPLICATE) {
    f->duplicates++;
    return respond(conn, 200, NULL, &pos, 0);
  }
  if (rc == REPLICATE_EPOSITION) {
    bool same_seq = frame->info.before.seq == pos.seq;
    if (same_seq)
      f->mismatches++;
    else
      f->gaps++;
    return respond(conn, 409, same_seq ? "checksum mismatch" : "gap", &pos, 0);
  }
  if (rc == REPLICATE_ESTALE_EPOCH) {
    f->stale_answers++;
    return respond(conn, 409, "stale epoch", &pos, 0);
  }
  if (replicate_is_divergence(rc)) {
    f->mismatches++;
    return respond_code(conn, 409, "diverged",
                        rc == REPLICATE_EFORK ? "REPLICATE_EFORK"
                        : rc == REPLICATE_EHISTORY ? "REPLICATE_EHISTORY"
                        : rc == REPLICATE_EBEHIND ? "REPLICATE_EBEHIND"
                                                  : "REPLICATE_EPAST_BRANCH",
                        &pos, 0);
  }
  return respond(conn, 400, replicate_strerror(rc), NULL, 0);
}

/* POST /v1/frames: decode, the test's knobs (stale epoch, dropped
 * connections, a lie about the position), then apply. */
static enum MHD_Result answer_frame(fake *f, struct MHD_Connection *conn,
                                    const upload *u, loom_position pos)
{
  replicate_frame frame;
  if (replicate_frame_decode(f->dec, u->buf, u->len, &frame))
    return respond(conn, 400, "malformed", NULL, 0);
  if (f->stale_epoch || frame.info.epoch < pos.epoch) {
    loom_position newer = pos;
    if (f->stale_epoch)
      newer.epoch = frame.info.epoch + 1;
    f->stale_answers++;
    return respond(conn, 409, "stale epoch", &newer, 0);
  }
  if (frame.info.kind == REPLICATE_KIND_HEARTBEAT)
    f->heartbeats++;
  if (f->damaged)
    return respond_code(conn, 409, "checksum mismatch", "REPLICATE_EPAGE_HASH", &pos, 0);
  if (frame.info.kind == REPLICATE_KIND_HEARTBEAT)
    return respond(conn, 200, NULL, &pos, 0);
  if (f->drop_before) {
    f->drop_before--;
    f->dropped++;
    return MHD_NO;
  }
  if (f->lie && frame.info.after.seq > pos.seq) {
    /* Claim the frame without applying it: the next one makes a gap. */
    f->lie--;
    loom_position claimed = pos;
    claimed.seq = frame.info.after.seq;
    claimed.checksum = frame.info.after.checksum;
    claimed.pages = frame.info.after.pages;
    f->claimed_seq = claimed.seq;
    return respond(conn, 200, NULL, &claimed, 0);
  }
  int rc = replicate_frame_apply(&frame, f->store);
  return answer_applied(f, conn, &frame, rc, pos.seq);
}

/* The last call of a request: the whole body is in u. */
static enum MHD_Result answer(fake *f, struct MHD_Connection *conn,
                              const char *url, const char *method, upload *u)
{
  pthread_mutex_lock(&f->mu);
  f->requests++;
  int64_t t = now_ns();
  if (f->busy_answered_ns && !f->after_busy_ns)
    f->after_busy_ns = t;
  f->last_request_ns = t;
  if (f->delay_ms) {
    unsigned d = f->delay_ms;
    pthread_mutex_unlock(&f->mu);
    test_pause_ms(d); /* a slow standby: pacing, not synchronisation */
    pthread_mutex_lock(&f->mu);
  }
  while (f->stalled && !f->shutting_down)
    pthread_cond_wait(&f->cond, &f->mu);
  if (f->shutting_down) {
    pthread_mutex_unlock(&f->mu);
    return MHD_NO;
  }

  enum MHD_Result ret;
  loom_position pos;
  loom_store_position(f->store, &pos);
  bool is_frames = strcmp(url, "/v1/frames") == 0 && strcmp(method, "POST") == 0;
  bool is_base = strcmp(url, "/v1/base") == 0 && strcmp(method, "PUT") == 0;
  if (!answer_refusal(f, conn, is_frames || is_base, u, &pos, &ret))
    ret = is_base ? answer_base(f, conn, u, pos) : answer_frame(f, conn, u, pos);
  pthread_cond_broadcast(&f->cond);
  pthread_mutex_unlock(&f->mu);
  return ret;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn,
                               const char *url, const char *method,
                               const char *version, const char *upload_data,
                               size_t *upload_data_size, void **con_cls)
{
  (void)version;
  fake *f = cls;
  upload *u = *con_cls;
  if (!u) {
    u = calloc(1, sizeof *u);
    if (!u)
      return MHD_NO;
    *con_cls = u;
    return MHD_YES;
  }
  if (*upload_data_size) {
    size_t n = *upload_data_size;
    if (u->len + n > u->cap) {
      size_t cap = u->cap ? u->cap : 65536;
      while (cap < u->len + n)
        cap *= 2;
      uint8_t *b = realloc(u->buf, cap);
      if (!b)
        return MHD_NO;
      u->buf = b;
      u->cap = cap;
    }
    memcpy(u->buf + u->len, upload_data, n);
    u->len += n;
    *upload_data_size = 0;
    return MHD_YES;
  }
  return answer(f, conn, url, method, u);
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
  (void)cls;
  (void)conn;
  (void)toe;
  upload *u = *con_cls;
  if (u) {
    free(u->buf);
    free(u);
    *con_cls = NULL;
  }
}

static void fake_listen(fake *f)
{
  struct sockaddr_in addr;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons(f->port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  pthread_mutex_lock(&f->mu);
  f->shutting_down = false;
  pthread_mutex_unlock(&f->mu);
  unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD;
  for (int attempt = 0; attempt < 50 && !f->daemon; attempt++) {
    if (f->tls_cert)
      f->daemon = MHD_start_daemon(
          flags | MHD_USE_TLS, 0, NULL, NULL, handler, f,
          MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
          MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned int)1,
          MHD_OPTION_NOTIFY_COMPLETED, completed, f,
          MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)30,
          MHD_OPTION_HTTPS_MEM_KEY, f->tls_key,
          MHD_OPTION_HTTPS_MEM_CERT, f->tls_cert, MHD_OPTION_END);
    else
      f->daemon = MHD_start_daemon(
          flags, 0, NULL, NULL, handler, f,
          MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
          MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned int)1,
          MHD_OPTION_NOTIFY_COMPLETED, completed, f,
          MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)30, MHD_OPTION_END);
    if (!f->daemon)
      test_pause_ms(20);
  }
  assert_non_null(f->daemon);
  if (!f->port) {
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info(f->daemon, MHD_DAEMON_INFO_BIND_PORT);
    assert_non_null(info);
    f->port = info->port;
    snprintf(f->url, sizeof f->url, "%s://127.0.0.1:%u",
             f->tls_cert ? "https" : "http", f->port);
  }
}

/* Stop answering: connections are refused until fake_up(). */
static void fake_down(fake *f)
{
  if (!f->daemon)
    return;
  pthread_mutex_lock(&f->mu);
  f->shutting_down = true;
  pthread_cond_broadcast(&f->cond);
  pthread_mutex_unlock(&f->mu);
  MHD_stop_daemon(f->daemon);
  f->daemon = NULL;
}

static void fake_up(fake *f)
{
  fake_listen(f);
}

static void fake_open_store(fake *f)
{
  int rc = loom_store_open(f->dir, LOOM_CREATE, NULL, &f->store);
  if (rc)
    fprintf(stderr, "loom_store_open(%s): %s\n", f->dir, loom_strerror(rc));
  assert_int_equal(rc, 0);
}

/* A fake standby; https with the PEM cert and key when given (copied). */
static fake *fake_start_tls(const char *cert, const char *key)
{
  fake *f = calloc(1, sizeof *f);
  assert_non_null(f);
  /* An honest image (a test that failed mid-way may have left it set). */
  __atomic_store_n(&fake_computed_xor, 0, __ATOMIC_RELAXED);
  if (cert) {
    f->tls_cert = strdup(cert);
    f->tls_key = strdup(key);
  }
  pthread_mutex_init(&f->mu, NULL);
  pthread_cond_init(&f->cond, NULL);
  f->dir = test_tmpdir("standby");
  fake_open_store(f);
  assert_int_equal(replicate_decoder_new(NULL, &f->dec), 0);
  fake_listen(f);
  return f;
}

static fake *fake_start(void)
{
  return fake_start_tls(NULL, NULL);
}

/* Restart with an empty image directory, on the same port. */
static void fake_restart_empty(fake *f)
{
  fake_down(f);
  assert_int_equal(loom_store_close(f->store), 0);
  test_remove_tree(f->dir);
  assert_int_equal(mkdir(f->dir, 0700), 0);
  fake_open_store(f);
  fake_up(f);
}

/* Restart holding an image of its own: pages of random bytes at (epoch 1,
 * seq), a history the primary never had. */
static void fake_restart_diverged(fake *f, uint64_t seq, uint64_t pages,
                                  uint64_t seed)
{
  fake_down(f);
  assert_int_equal(loom_store_close(f->store), 0);
  test_remove_tree(f->dir);
  assert_int_equal(mkdir(f->dir, 0700), 0);
  fake_open_store(f);
  uint8_t *img = malloc(pages * PS + 1);
  assert_non_null(img);
  uint64_t sum = 0;
  test_rng rng = {seed};
  for (uint64_t n = 0; n < pages; n++) {
    for (size_t j = 0; j < PS; j += 8) {
      uint64_t v = rng_next(&rng);
      memcpy(img + n * PS + j, &v, 8);
    }
    sum += loom_page_hash(n, img + n * PS);
  }
  loom_patch_header h = {.after = {.epoch = 1, .seq = seq, .checksum = sum,
                                   .pages = pages, .commit_time_ns = 1},
                         .page_count = pages, .flags = LOOM_PATCH_BASE};
  loom_store_position(f->store, &h.before);
  loom_patch *patch;
  assert_int_equal(loom_store_patch_begin(f->store, &h, &patch), 0);
  for (uint64_t n = 0; n < pages; n++)
    assert_int_equal(loom_patch_add(patch, n, img + n * PS), 0);
  assert_int_equal(loom_patch_commit(patch), 0);
  assert_int_equal(loom_store_sync(f->store), 0);
  free(img);
  fake_up(f);
}

static void fake_stop(fake *f)
{
  fake_down(f);
  loom_store_close(f->store);
  replicate_decoder_free(f->dec);
  test_remove_tree(f->dir);
  free(f->dir);
  free(f->tls_cert);
  free(f->tls_key);
  pthread_cond_destroy(&f->cond);
  pthread_mutex_destroy(&f->mu);
  free(f);
}

static void fake_set_stalled(fake *f, bool stalled)
{
  pthread_mutex_lock(&f->mu);
  f->stalled = stalled;
  pthread_cond_broadcast(&f->cond);
  pthread_mutex_unlock(&f->mu);
}

static void fake_position(fake *f, loom_position *pos)
{
  pthread_mutex_lock(&f->mu);
  loom_store_position(f->store, pos);
  pthread_mutex_unlock(&f->mu);
}

#define FAKE_SET(f, field, value)                                            \
  do {                                                                       \
    pthread_mutex_lock(&(f)->mu);                                            \
    (f)->field = (value);                                                    \
    pthread_mutex_unlock(&(f)->mu);                                          \
  } while (0)

static unsigned fake_count(fake *f, const unsigned *field)
{
  pthread_mutex_lock(&f->mu);
  unsigned v = *field;
  pthread_mutex_unlock(&f->mu);
  return v;
}

#define FAKE_GET(f, field) fake_count((f), &(f)->field)

/* ---------------------------------------------------------------------- */
/* The primary: a real arena whose commit hook ships */

#define ARENA_PAGES 256u

typedef struct primary {
  char *dir;
  loom *l;
  replicate_log *log;
  replicate_shipper *sh;
  uint64_t low;
  test_rng rng;
  int last_hook_rc;
} primary;

static int commit_hook(void *ctx, loom *l, const loom_commit *c)
{
  primary *p = ctx;
  p->last_hook_rc = p->sh ? replicate_shipper_on_commit(p->sh, l, c) : 0;
  return p->last_hook_rc;
}

static void watermarks(void *ctx, uint64_t *low, uint64_t *high)
{
  primary *p = ctx;
  *low = p->low;
  *high = ARENA_PAGES;
}

static void ship_log(void *ctx, const char *line)
{
  (void)ctx;
  if (verbose())
    fprintf(stderr, "  [ship] %s\n", line);
}

/* Options with short timeouts for the tests; urls set by the caller. */
static replicate_shipper_options test_options(void)
{
  replicate_shipper_options o = {0};
  o.heartbeat_seconds = 0.2;
  o.connect_timeout_seconds = 1;
  o.request_timeout_seconds = 2;
  o.backoff_base_seconds = 0.02;
  o.backoff_max_seconds = 0.3;
  o.unauthorized_retry_seconds = 0.3;
  o.sync_timeout_seconds = 5;
  o.log_fn = ship_log;
  return o;
}

/* The loom_io the next primary_open() gives its log (NULL: POSIX). */
static const struct loom_io *next_log_io;

static void primary_open(primary *p, const char *dir,
                         const replicate_log_options *lo)
{
  /* Async apply, as loomship primary: the hook runs while the apply does
   * (loom.c S4 after S6), and the shrinking and growing saves below check
   * that the frames it encodes still hold the right old versions. */
  loom_options o = {.arena_pages = ARENA_PAGES,
                    .flags = LOOM_CREATE | LOOM_APPLY_ASYNC,
                    .on_commit = commit_hook, .commit_ctx = p,
                    .watermarks = watermarks, .watermarks_ctx = p};
  int rc = loom_open(dir, &o, &p->l);
  if (rc)
    fprintf(stderr, "loom_open: %s\n", loom_strerror(rc));
  assert_int_equal(rc, 0);
  loom_position pos;
  loom_store_position(loom_get_store(p->l), &pos);
  p->low = pos.pages;
  rc = replicate_log_open(dir, lo, next_log_io, &p->log);
  if (rc)
    fprintf(stderr, "replicate_log_open: %s\n", replicate_strerror(rc));
  assert_int_equal(rc, 0);
}

static void primary_start(primary *p, replicate_shipper_options *o,
                          fake **standbys, size_t n,
                          const replicate_log_options *lo)
{
  memset(p, 0, sizeof *p);
  p->rng.state = 42;
  p->dir = test_tmpdir("primary");
  primary_open(p, p->dir, lo);
  const char *urls[8];
  assert_true(n <= 8);
  for (size_t i = 0; i < n; i++)
    urls[i] = standbys[i]->url;
  o->store = loom_get_store(p->l);
  o->log = p->log;
  o->standby_urls = urls;
  o->standby_count = n;
  int rc = replicate_shipper_start(o, &p->sh);
  if (rc)
    fprintf(stderr, "replicate_shipper_start: %s\n",
            replicate_strerror(rc));
  assert_int_equal(rc, 0);
}

/* Stop the shipper and close the arena and the log (the directory stays). */
static void primary_close(primary *p)
{
  replicate_shipper_stop(p->sh);
  p->sh = NULL;
  assert_int_equal(replicate_log_close(p->log), 0);
  p->log = NULL;
  assert_int_equal(loom_close(p->l), 0);
  p->l = NULL;
}

static void primary_stop(primary *p)
{
  primary_close(p);
  test_remove_tree(p->dir);
  free(p->dir);
}

/*
 * One save: the image grows now and then (and shrinks rarely); k pages
 * change, each either by 64 scattered bytes (a delta) or entirely (a whole
 * page of fresh bytes when whole is set). Returns loom_save's result.
 */
static int primary_save(primary *p, unsigned k, bool whole)
{
  uint64_t r = rng_next(&p->rng);
  if (p->low < 4 || r % 5 == 0)
    p->low += 1 + r % 3;
  else if (r % 17 == 0 && p->low > 8)
    p->low -= 2;
  if (p->low > ARENA_PAGES / 2)
    p->low = ARENA_PAGES / 2;
  for (unsigned i = 0; i < k; i++) {
    uint64_t n = rng_next(&p->rng) % p->low;
    uint8_t *page = loom_page(p->l, n);
    if (whole) {
      for (size_t j = 0; j < PS; j += 8) {
        uint64_t v = rng_next(&p->rng);
        memcpy(page + j, &v, 8);
      }
    } else {
      for (int j = 0; j < 64; j++)
        page[rng_next(&p->rng) % PS] = (uint8_t)rng_next(&p->rng);
    }
  }
  return loom_save(p->l, p->low, ARENA_PAGES);
}

static void primary_saves(primary *p, unsigned count, unsigned k, bool whole)
{
  for (unsigned i = 0; i < count; i++) {
    int rc = primary_save(p, k, whole);
    if (rc)
      fprintf(stderr, "loom_save: %s\n", replicate_strerror(rc));
    assert_int_equal(rc, 0);
  }
}

static void primary_position(primary *p, loom_position *pos)
{
  loom_store_position(loom_get_store(p->l), pos);
}

static void standby_status(primary *p, size_t i, replicate_peer_status *out)
{
  replicate_peer_status st[8];
  size_t n = 0;
  replicate_shipper_status(p->sh, st, 8, &n);
  assert_true(i < n);
  *out = st[i];
}

/* Wait until cond(ctx) holds, up to seconds. */
static bool wait_for(bool (*cond)(void *), void *ctx, double seconds)
{
  int64_t end = now_ns() + (int64_t)(seconds * 1e9);
  while (!cond(ctx)) {
    if (now_ns() > end)
      return false;
    test_pause_ms(5);
  }
  return true;
}

typedef struct count_wait {
  fake *f;
  const unsigned *field;
  unsigned at_least;
} count_wait;

static bool count_reached(void *ctx)
{
  count_wait *w = ctx;
  return fake_count(w->f, w->field) >= w->at_least;
}

static bool log_trimmed(void *ctx)
{
  replicate_log_stats ls;
  replicate_log_get_stats(ctx, &ls);
  return ls.oldest_seq > 1;
}

typedef struct state_wait {
  primary *p;
  size_t i;
  replicate_peer_state state;
} state_wait;

static bool in_state(void *ctx)
{
  state_wait *w = ctx;
  replicate_peer_status st;
  standby_status(w->p, w->i, &st);
  return st.state == w->state;
}

static void wait_state(primary *p, size_t i, replicate_peer_state s)
{
  state_wait w = {p, i, s};
  bool ok = wait_for(in_state, &w, 10);
  if (!ok) {
    replicate_peer_status st;
    standby_status(p, i, &st);
    fprintf(stderr, "standby %zu: state %s, wanted %s (last error: %s)\n", i,
            st.state_name, replicate_peer_state_name(s), st.last_error);
  }
  assert_true(ok);
}

typedef struct seq_wait {
  fake *f;
  uint64_t seq;
} seq_wait;

static bool fake_at(void *ctx)
{
  seq_wait *w = ctx;
  loom_position pos;
  fake_position(w->f, &pos);
  return pos.seq >= w->seq;
}

typedef struct position_wait {
  fake *f;
  loom_position pos;
} position_wait;

static bool fake_holds(void *ctx)
{
  position_wait *w = ctx;
  loom_position pos;
  fake_position(w->f, &pos);
  return pos.seq == w->pos.seq && pos.checksum == w->pos.checksum &&
         pos.epoch == w->pos.epoch;
}

static bool fake_reaches(fake *f, uint64_t seq, double seconds)
{
  seq_wait w = {f, seq};
  return wait_for(fake_at, &w, seconds);
}

/* The standby's image equals the primary's, byte for byte, and so do
 * their positions. */
static void assert_same_image(primary *p, fake *f)
{
  assert_int_equal(loom_store_sync(loom_get_store(p->l)), 0);
  loom_position a, b;
  primary_position(p, &a);
  pthread_mutex_lock(&f->mu);
  assert_int_equal(loom_store_sync(f->store), 0);
  loom_store_position(f->store, &b);
  pthread_mutex_unlock(&f->mu);
  if (a.seq != b.seq || a.checksum != b.checksum)
    fprintf(stderr, "primary at seq %" PRIu64 " (%016" PRIx64 "), standby %s at "
            "seq %" PRIu64 " (%016" PRIx64 ")\n", a.seq, a.checksum, f->url,
            b.seq, b.checksum);
  assert_int_equal(a.epoch, b.epoch);
  assert_int_equal(a.seq, b.seq);
  assert_int_equal(a.checksum, b.checksum);
  assert_int_equal(a.pages, b.pages);

  size_t la, lb;
  uint8_t *ia = test_read_file(p->dir, "image", &la);
  uint8_t *ib = test_read_file(f->dir, "image", &lb);
  assert_true(a.pages == 0 || (ia && ib));
  assert_int_equal(la, a.pages * PS);
  assert_int_equal(lb, la);
  assert_true(la == 0 || memcmp(ia, ib, la) == 0);
  free(ia);
  free(ib);
  size_t ha, hb;
  uint8_t *xa = test_read_file(p->dir, "hashes", &ha);
  uint8_t *xb = test_read_file(f->dir, "hashes", &hb);
  assert_true(ha >= a.pages * 8 && hb >= a.pages * 8);
  assert_true(a.pages == 0 || memcmp(xa, xb, a.pages * 8) == 0);
  free(xa);
  free(xb);
}

/* The common tail of a one-standby test: the fake's image equals the
 * primary's, then both are stopped and their directories removed. */
static void finish_same(primary *p, fake *f)
{
  assert_same_image(p, f);
  primary_stop(p);
  fake_stop(f);
}

static void drain_ok(primary *p)
{
  bool ok = replicate_shipper_drain(p->sh, 15);
  if (!ok) {
    replicate_peer_status st[8];
    size_t n;
    replicate_shipper_status(p->sh, st, 8, &n);
    for (size_t i = 0; i < n && i < 8; i++)
      fprintf(stderr, "standby %s: %s received %" PRIu64 " (%s)\n", st[i].url,
              st[i].state_name, st[i].received_seq, st[i].last_error);
  }
  assert_true(ok);
}

/* Wait until the standby is at the primary's position (a standby that
 * is unreachable or unauthorized at the moment is not waited for by
 * replicate_shipper_drain), then drain. */
static void catch_up(primary *p, fake *f)
{
  position_wait w = {f, {0}};
  primary_position(p, &w.pos);
  loom_position pos = w.pos;
  if (!wait_for(fake_holds, &w, 15)) {
    loom_position fpos;
    fake_position(f, &fpos);
    replicate_peer_status st;
    replicate_shipper_status(p->sh, &st, 1, &(size_t){0});
    fprintf(stderr, "standby %s at seq %" PRIu64 ", primary at %" PRIu64
            "; first standby: %s (%s)\n", f->url, fpos.seq, pos.seq,
            st.state_name, st.last_error);
    fail();
  }
  drain_ok(p);
}

/* ---------------------------------------------------------------------- */
/* The JSON reader */

static void test_answer_reader(void **state)
{
  (void)state;
  ship_answer a;
  const char *ok =
      " {\"received\": {\"epoch\": 3, \"seq\": 1044, \"checksum\": "
      "\"9f3c00000000abcd\", \"pages\": 7, \"at\": \"2026-11-25T22:01:02Z\"},"
      " \"applied\": {\"at\": null, \"pages\": 6, \"seq\": 1042, \"epoch\": 3,"
      " \"checksum\": \"00000000000000FF\"}, \"duplicate\": false,"
      " \"list\": [1, -2, 3.5e-1, \"x\\u00e9\\n\", {}, []]} \n";
  assert_int_equal(ship_answer_parse(ok, strlen(ok), &a), 0);
  assert_true(a.has_received && a.has_applied);
  assert_int_equal(a.received.epoch, 3);
  assert_int_equal(a.received.seq, 1044);
  assert_int_equal(a.received.checksum, 0x9f3c00000000abcdull);
  assert_int_equal(a.received.pages, 7);
  assert_int_equal(a.applied.seq, 1042);
  assert_int_equal(a.applied.checksum, 0xff);
  assert_false(a.has_error);
  assert_false(a.has_computed);
  const char *computed =
      "{\"computed\": {\"epoch\": 2, \"seq\": 8, \"checksum\": "
      "\"00000000000000a1\", \"pages\": 5}}";
  assert_int_equal(ship_answer_parse(computed, strlen(computed), &a), 0);
  assert_true(a.has_computed);
  assert_int_equal(a.computed.seq, 8);
  assert_int_equal(a.computed.checksum, 0xa1);
  assert_false(a.single_frames);
  const char *delayed = "{\"single_frames\": true}"; /* a delayed standby */
  assert_int_equal(ship_answer_parse(delayed, strlen(delayed), &a), 0);
  assert_true(a.single_frames);

  const char *conflict =
      "{\"error\": \"stale epoch\", \"epoch\": 9223372036854775807, "
      "\"received\": {\"epoch\": 4, \"seq\": 0, \"checksum\": "
      "\"0000000000000000\", \"pages\": 0}}";
  assert_int_equal(ship_answer_parse(conflict, strlen(conflict), &a), 0);
  assert_true(a.has_error);
  assert_string_equal(a.error, "stale epoch");
  assert_true(a.has_epoch);
  assert_int_equal(a.epoch, INT64_MAX); /* jansson's integers are int64 */
  assert_false(a.has_applied);

  static const char *const bad[] = {
      "",
      "[]",
      "{",
      "{\"received\": {\"epoch\": 1, \"seq\": 2, \"checksum\": \"0011\", "
      "\"pages\": 3}}",                                   /* short checksum */
      "{\"received\": {\"epoch\": 1, \"seq\": 2, \"pages\": 3}}", /* missing */
      "{\"computed\": {\"epoch\": 1, \"seq\": 2, \"pages\": 3}}", /* missing */
      "{\"computed\": {\"epoch\": 1, \"seq\": 2, \"checksum\": 7, "
      "\"pages\": 3}}",                                  /* not hex text */
      "{\"received\": {\"epoch\": 1, \"seq\": -2, \"checksum\": "
      "\"0000000000000000\", \"pages\": 3}}",             /* negative */
      "{\"received\": {\"epoch\": 1, \"seq\": 2.0, \"checksum\": "
      "\"0000000000000000\", \"pages\": 3}}",             /* not an integer */
      "{\"epoch\": 18446744073709551616}",                /* overflows */
      "{\"epoch\": 9223372036854775808}",                 /* over int64 */
      "{\"x\": 1, \"x\": 2}",                             /* repeated */
      "{\"epoch\": 1, \"epoch\": 2}",                     /* repeated */
      "{\"error\": \"a\"} x",                             /* trailing */
      "{\"error\": \"a\",}",                              /* trailing comma */
      "{\"error\": 'a'}",
      "{\"error\": \"a\nb\"}",                            /* control char */
      "{\"error\": \"\\x\"}",                             /* bad escape */
      "{\"error\": \"\xc3\x28\"}",                        /* bad UTF-8 */
      "{\"x\": 01}",                                      /* leading zero */
      "{\"x\": tru}",
      "{\"single_frames\": 1}",                        /* not a boolean */
      "{\"x\": [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]}", /* too deep */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    if (ship_answer_parse(bad[i], strlen(bad[i]), &a) != REPLICATE_EMALFORMED)
      fail_msg("accepted: %s", bad[i]);
  }
  /* Embedded NUL: the length rules, not the terminator. */
  const char nul[] = "{\"error\": \"a\"}\0{";
  assert_int_equal(ship_answer_parse(nul, sizeof nul - 1, &a),
                   REPLICATE_EMALFORMED);
}

static void test_bad_options(void **state)
{
  (void)state;
  char *dir = test_tmpdir("opts");
  loom_store *store;
  replicate_log *log;
  assert_int_equal(loom_store_open(dir, LOOM_CREATE, NULL, &store), 0);
  assert_int_equal(replicate_log_open(dir, NULL, NULL, &log), 0);
  const char *good[] = {"http://127.0.0.1:9"};
  const char *ftp[] = {"ftp://127.0.0.1:9"};
  replicate_shipper *sh = NULL;
  replicate_shipper_options o = test_options();
  o.store = store;
  o.log = log;
  o.standby_urls = ftp;
  o.standby_count = 1;
  assert_int_equal(replicate_shipper_start(&o, &sh), REPLICATE_EINVAL);
  o.standby_urls = good;
  o.sync_count = 2;
  assert_int_equal(replicate_shipper_start(&o, &sh), REPLICATE_EINVAL);
  o.sync_count = 0;
  o.standby_count = 0; /* no peer and no room for one */
  assert_int_equal(replicate_shipper_start(&o, &sh), REPLICATE_EINVAL);
  o.standby_count = 1;
  o.sync_count = 0;
  o.token = "two\nlines";
  assert_int_equal(replicate_shipper_start(&o, &sh), REPLICATE_EINVAL);
  o.token = NULL;
  o.heartbeat_seconds = -1;
  assert_int_equal(replicate_shipper_start(&o, &sh), REPLICATE_EINVAL);
  o.heartbeat_seconds = 0;
  assert_int_equal(replicate_shipper_start(&o, &sh), 0);
  assert_int_equal(replicate_shipper_set_token(sh, "bad token"),
                   REPLICATE_EINVAL);
  assert_int_equal(replicate_shipper_set_token(sh, "good-token"), 0);
  replicate_shipper_stop(sh);
  assert_int_equal(replicate_log_close(log), 0);
  assert_int_equal(loom_store_close(store), 0);
  test_remove_tree(dir);
  free(dir);
}

/* ---------------------------------------------------------------------- */
/* Scenarios */

/* Frames arrive and apply in order; lag is accounted. */
static void test_ordering(void **state)
{
  (void)state;
  fake *f = fake_start();
  primary p;
  replicate_shipper_options o = test_options();
  primary_start(&p, &o, &f, 1, NULL);
  wait_state(&p, 0, REPLICATE_PEER_STREAMING);
  for (int i = 0; i < 40; i++) {
    assert_int_equal(primary_save(&p, 1 + i % 4, i % 7 == 0), 0);
    if (i % 10 == 0)
      test_pause_ms(20); /* pacing: bursts and pauses, not synchronisation */
  }
  drain_ok(&p);
  assert_false(f->order_violation);
  assert_int_equal(FAKE_GET(f, gaps) + FAKE_GET(f, mismatches), 0);
  assert_int_equal(FAKE_GET(f, bases), 0);
  assert_same_image(&p, f);

  loom_position pos;
  primary_position(&p, &pos);
  replicate_shipper_summary sum;
  replicate_shipper_get_summary(p.sh, &sum);
  assert_int_equal(sum.latest_seq, pos.seq);
  assert_false(sum.fenced);
  replicate_peer_status st;
  standby_status(&p, 0, &st);
  assert_string_equal(st.url, f->url);
  assert_int_equal(st.received_seq, pos.seq);
  assert_int_equal(st.sent_seq, pos.seq);
  assert_int_equal(st.lag_frames, 0);
  assert_true(st.lag_seconds == 0);
  assert_int_equal(st.frames_sent, pos.seq);
  assert_true(st.bytes_wire > 0 && st.bytes_raw > st.bytes_wire);
  assert_string_equal(st.last_error, "");

  /* Idle: heartbeats flow (two more within a few periods). */
  count_wait hb = {f, &f->heartbeats, FAKE_GET(f, heartbeats) + 2};
  assert_true(wait_for(count_reached, &hb, 5));
  primary_stop(&p);
  fake_stop(f);
}

/* A frame applied but not answered (the connection closed) is resent: a
 * duplicate, answered 200; frames whose connection closed before they
 * were applied are resent until they are. */
static void test_duplicates(void **state)
{
  (void)state;
  fake *f = fake_start();
  primary p;
  replicate_shipper_options o = test_options();
  primary_start(&p, &o, &f, 1, NULL);
  wait_state(&p, 0, REPLICATE_PEER_STREAMING);
  primary_saves(&p, 3, 2, false);
  drain_ok(&p);
  for (unsigned i = 1; i <= 3; i++) {
    FAKE_SET(f, drop_after, 1);
    primary_saves(&p, 1, 2, false);
    count_wait w = {f, &f->duplicates, i};
    assert_true(wait_for(count_reached, &w, 10));
  }
  FAKE_SET(f, drop_before, 2);
  primary_saves(&p, 1, 2, false);
  catch_up(&p, f);
  assert_int_equal(FAKE_GET(f, dropped), 5);
  assert_int_equal(FAKE_GET(f, duplicates), 3);
  assert_int_equal(FAKE_GET(f, gaps) + FAKE_GET(f, mismatches), 0);
  assert_false(f->order_violation);
  replicate_peer_status st;
  standby_status(&p, 0, &st);
  assert_true(st.failures >= 1); /* libcurl retries some on its own */
  primary_saves(&p, 3, 2, false);
  drain_ok(&p);
  finish_same(&p, f);
}

/* A standby that answers 409 gap is resent frames from its position. */
static void test_gap(void **state)
{
  (void)state;
  fake *f = fake_start();
  primary p;
  replicate_shipper_options o = test_options();
  primary_start(&p, &o, &f, 1, NULL);
  wait_state(&p, 0, REPLICATE_PEER_STREAMING);
  primary_saves(&p, 5, 2, false);
  drain_ok(&p);
  FAKE_SET(f, lie, 1);
  primary_saves(&p, 1, 2, false); /* claimed, not applied */
  for (int i = 0; i < 200 && FAKE_GET(f, lie) > 0; i++)
    test_pause_ms(5);
  assert_int_equal(FAKE_GET(f, lie), 0);
  primary_saves(&p, 6, 2, false); /* the next frame finds a gap */
  catch_up(&p, f);
  assert_true(FAKE_GET(f, gaps) >= 1);
  assert_int_equal(FAKE_GET(f, bases), 0);
  finish_same(&p, f);
}

/* A log append that fails after the commit point (the disk is full): the
 * save succeeds (it is committed; the log is only a cache), the frame was
 * published before the append and
 * reaches the standby from memory; the next commit starts the log afresh
 * and streaming goes on without a base image. */
static void test_log_append_fails(void **state)
{
  (void)state;
  iosim *sim;
  assert_int_equal(iosim_create(NULL, &sim), 0);
  fake *f = fake_start();
  primary p;
  replicate_shipper_options o = test_options();
  next_log_io = iosim_io(sim);
  primary_start(&p, &o, &f, 1, NULL);
  next_log_io = NULL;
  wait_state(&p, 0, REPLICATE_PEER_STREAMING);
  primary_saves(&p, 5, 2, false);
  drain_ok(&p);

  iosim_fault fault = {.kind = IOSIM_FAIL, .err = ENOSPC, .by_type = 1,
                       .op = LOOM_IO_PWRITE,
                       .index = iosim_count_op(sim, LOOM_IO_PWRITE)};
  assert_int_equal(iosim_fault_add(sim, &fault), 0);
  assert_int_equal(primary_save(&p, 2, false), 0);
  assert_true(iosim_faults_injected(sim) >= 1);
  replicate_log_stats ls;
  replicate_log_get_stats(p.log, &ls);
  assert_int_equal(ls.newest_seq, 5);
  catch_up(&p, f); /* seq 6, from memory */
  assert_same_image(&p, f);

  primary_saves(&p, 5, 2, false);
  catch_up(&p, f);
  replicate_log_get_stats(p.log, &ls);
  assert_int_equal(ls.oldest_seq, 7);
  assert_int_equal(ls.newest_seq, 11);
  assert_int_equal(FAKE_GET(f, bases), 0);
  assert_int_equal(FAKE_GET(f, gaps) + FAKE_GET(f, mismatches), 0);
  assert_same_image(&p, f);
  primary_stop(&p);
  fake_stop(f);
  iosim_destroy(sim);
}

/* A standby away while commits happen catches up with merged frames. */
static void test_catch_up_coalesced(void **state)
{
  (void)state;
  fake *f = fake_start();
  fake_down(f);
  primary p;
  replicate_shipper_options o = test_options();
  o.coalesce_max_pages = 16;
  primary_start(&p, &o, &f, 1, NULL);
  wait_state(&p, 0, REPLICATE_PEER_UNREACHABLE);
  primary_saves(&p, 30, 3, false);
  replicate_peer_status st;
  standby_status(&p, 0, &st);
  assert_int_equal(st.lag_frames, 30);
  assert_true(st.lag_bytes > 0);
  assert_true(st.lag_seconds > 0);
  assert_true(st.last_error[0] != '\0');
  /* every failure counted, by kind (metrics: loomship_standby_errors_total) */
  assert_true(st.errors[REPLICATE_PEER_ERROR_UNREACHABLE] > 0);
  assert_int_equal(st.errors[REPLICATE_PEER_ERROR_UNAUTHORIZED], 0);
  uint64_t sum = 0;
  for (int k = 0; k < REPLICATE_PEER_ERROR_KINDS; k++)
    sum += st.errors[k];
  assert_int_equal(sum, st.failures);
  assert_true(st.last_error_at > 0);
  fake_up(f);
  catch_up(&p, f);
  assert_true(FAKE_GET(f, coalesced) >= 2); /* 90 page writes, 16 a piece */
  assert_true(FAKE_GET(f, frames) < 30);
  assert_int_equal(FAKE_GET(f, bases), 0);
  standby_status(&p, 0, &st);
  assert_true(st.coalesced_sent >= 2);
  assert_int_equal(st.frames_sent, 30);
  finish_same(&p, f);
}

/* A standby restarted empty, when the log no longer reaches seq 1, gets a
 * base image; two standbys share the snapshot. */
static void test_restarted_empty(void **state)
{
  (void)state;
  fake *fs[2] = {fake_start(), fake_start()};
  primary p;
  replicate_shipper_options o = test_options();
  /* Exactly one base each: a request timed out on a loaded machine (TSan)
   * would be sent again and counted twice, so none may time out here. */
  o.request_timeout_seconds = 20;
  replicate_log_options lo = {.segment_bytes = 16384};
  primary_start(&p, &o, fs, 2, &lo);
  primary_saves(&p, 30, 2, true);
  drain_ok(&p);
  /* Retention follows the acknowledgements. */
  assert_true(wait_for(log_trimmed, p.log, 5));
  for (int i = 0; i < 2; i++)
    fake_restart_empty(fs[i]);
  primary_saves(&p, 5, 2, true);
  catch_up(&p, fs[0]);
  catch_up(&p, fs[1]);
  for (int i = 0; i < 2; i++) {
    /* One base each, after the restart. (A second one, at seq 1, came now
     * and then: retention after a heartbeat's answer found the log still
     * empty before the first append and dropped the frame the commit side
     * had just published; ring_follow_log.) */
    assert_int_equal(FAKE_GET(fs[i], bases), 1);
    assert_same_image(&p, fs[i]);
    replicate_peer_status st;
    standby_status(&p, (size_t)i, &st);
    assert_int_equal(st.base_images_sent, 1);
  }
  primary_stop(&p);
  fake_stop(fs[0]);
  fake_stop(fs[1]);
}

/* A standby that falls past the log's byte cap gets a base image. */
static void test_log_cap(void **state)
{
  (void)state;
  fake *f = fake_start();
  primary p;
  replicate_shipper_options o = test_options();
  replicate_log_options lo = {.segment_bytes = 32768, .max_bytes = 200000};
  primary_start(&p, &o, &f, 1, &lo);
  primary_saves(&p, 5, 2, true);
  drain_ok(&p);
  fake_down(f);
  primary_saves(&p, 40, 2, true); /* about 40 * 32 KiB: past the cap */
  replicate_log_stats ls;
  replicate_log_get_stats(p.log, &ls);
  assert_true(ls.segments_dropped > 0);
  assert_true(ls.bytes <= 200000 + 2 * 32768 + 65536);
  loom_position fpos;
  fake_position(f, &fpos);
  assert_true(ls.oldest_seq > fpos.seq + 1);
  fake_up(f);
  catch_up(&p, f);
  assert_int_equal(FAKE_GET(f, bases), 1);
  finish_same(&p, f);
}

/* One stalled standby does not hold back the others nor the saves. */
static void stalled_scenario(size_t n)
{
  fake *fs[4];
  for (size_t i = 0; i < n; i++)
    fs[i] = fake_start();
  primary p;
  replicate_shipper_options o = test_options();
  o.request_timeout_seconds = 0.5;
  primary_start(&p, &o, fs, n, NULL);
  for (size_t i = 0; i < n; i++)
    wait_state(&p, i, REPLICATE_PEER_STREAMING);
  fake_set_stalled(fs[0], true);
  int64_t t0 = now_ns();
  int64_t slowest = 0;
  for (int i = 0; i < 30; i++) {
    int64_t s = now_ns();
    assert_int_equal(primary_save(&p, 3, false), 0);
    int64_t d = now_ns() - s;
    if (d > slowest)
      slowest = d;
    test_pause_ms(10);
  }
  loom_position pos;
  primary_position(&p, &pos);
  for (size_t i = 1; i < n; i++)
    assert_true(fake_reaches(fs[i], pos.seq, 5));
  double took = (double)(now_ns() - t0) / 1e9;
  assert_true(took < 5);
  assert_true(slowest < 400000000); /* no save waited for the stalled one */
  loom_position stalled_pos;
  fake_position(fs[0], &stalled_pos);
  assert_true(stalled_pos.seq < pos.seq);
  replicate_peer_status st;
  standby_status(&p, 0, &st);
  assert_true(st.received_seq < pos.seq);
  assert_true(st.lag_frames > 0);
  wait_state(&p, 0, REPLICATE_PEER_UNREACHABLE); /* the request timed out */
  standby_status(&p, 1, &st);
  assert_int_equal(st.received_seq, pos.seq);
  fake_set_stalled(fs[0], false);
  for (size_t i = 0; i < n; i++)
    catch_up(&p, fs[i]);
  for (size_t i = 0; i < n; i++)
    assert_same_image(&p, fs[i]);
  primary_stop(&p);
  for (size_t i = 0; i < n; i++)
    fake_stop(fs[i]);
}

static void test_two_one_stalled(void **state)
{
  (void)state;
  stalled_scenario(2);
}

static void test_four_one_stalled(void **state)
{
  (void)state;
  stalled_scenario(4);
}

/* Sync mode: save returns once the standby holds the frame durably. */
static void test_sync_blocks(void **state)
{
  (void)state;
  fake *fs[2] = {fake_start(), fake_start()};
  primary p;
  replicate_shipper_options o = test_options();
  o.sync_count = 1;
  primary_start(&p, &o, fs, 2, NULL);
  wait_state(&p, 0, REPLICATE_PEER_STREAMING);
  wait_state(&p, 1, REPLICATE_PEER_STREAMING);
  FAKE_SET(fs[0], delay_ms, 250);
  FAKE_SET(fs[1], delay_ms, 250);
  for (int i = 0; i < 3; i++) {
    int64_t t = now_ns();
    assert_int_equal(primary_save(&p, 2, false), 0);
    double took = (double)(now_ns() - t) / 1e9;
    assert_true(took >= 0.2);
    loom_position pos, a, b;
    primary_position(&p, &pos);
    fake_position(fs[0], &a);
    fake_position(fs[1], &b);
    assert_true(a.seq == pos.seq || b.seq == pos.seq);
  }
  FAKE_SET(fs[0], delay_ms, 0);
  FAKE_SET(fs[1], delay_ms, 0);
  drain_ok(&p);
  replicate_shipper_summary sum;
  replicate_shipper_get_summary(p.sh, &sum);
  assert_false(sum.sync_degraded);
  assert_same_image(&p, fs[0]);
  assert_same_image(&p, fs[1]);
  primary_stop(&p);
  fake_stop(fs[0]);
  fake_stop(fs[1]);
}

typedef struct summary_wait {
  primary *p;
  bool degraded;
} summary_wait;

static bool degraded_is(void *ctx)
{
  summary_wait *w = ctx;
  replicate_shipper_summary sum;
  replicate_shipper_get_summary(w->p->sh, &sum);
  return sum.sync_degraded == w->degraded;
}

/* Sync mode, timeout, outcome "fail": the save reports it, the commit
 * stands. */
static void test_sync_timeout_fail(void **state)
{
  (void)state;
  fake *f = fake_start();
  primary p;
  replicate_shipper_options o = test_options();
  o.sync_count = 1;
  o.sync_timeout_seconds = 0.3;
  o.on_sync_timeout = REPLICATE_SYNC_FAIL;
  o.request_timeout_seconds = 5;
  primary_start(&p, &o, &f, 1, NULL);
  wait_state(&p, 0, REPLICATE_PEER_STREAMING);
  assert_int_equal(primary_save(&p, 2, false), 0);
  fake_set_stalled(f, true);
  loom_position before, after;
  primary_position(&p, &before);
  int64_t t = now_ns();
  assert_int_equal(primary_save(&p, 2, false), REPLICATE_ESYNC_TIMEOUT);
  double took = (double)(now_ns() - t) / 1e9;
  assert_true(took >= 0.25 && took < 2);
  primary_position(&p, &after);
  assert_int_equal(after.seq, before.seq + 1); /* the commit stands */
  /* Status says so while saves time out... */
  replicate_shipper_summary sum;
  replicate_shipper_get_summary(p.sh, &sum);
  assert_true(sum.sync_degraded);
  assert_true(sum.sync_degraded_since_ns > 0);
  int64_t since = sum.sync_degraded_since_ns;
  t = now_ns();
  assert_int_equal(primary_save(&p, 2, false), REPLICATE_ESYNC_TIMEOUT);
  assert_true((double)(now_ns() - t) / 1e9 >= 0.25); /* each save waits */
  replicate_shipper_get_summary(p.sh, &sum);
  assert_true(sum.sync_degraded);
  assert_int_equal(sum.sync_degraded_since_ns, since);
  /* ...and no longer once the standby holds the latest frame. */
  fake_set_stalled(f, false);
  catch_up(&p, f);
  summary_wait w = {&p, false};
  assert_true(wait_for(degraded_is, &w, 10));
  replicate_shipper_get_summary(p.sh, &sum);
  assert_int_equal(sum.sync_degraded_since_ns, 0);
  assert_int_equal(primary_save(&p, 2, false), 0);
  drain_ok(&p);
  finish_same(&p, f);
}

/* Sync mode, timeout, outcome "degrade": async until the standby is back. */
static void test_sync_timeout_degrade(void **state)
{
  (void)state;
  fake *f = fake_start();
  primary p;
  replicate_shipper_options o = test_options();
  o.sync_count = 1;
  o.sync_timeout_seconds = 0.3;
  o.on_sync_timeout = REPLICATE_SYNC_DEGRADE;
  o.request_timeout_seconds = 5;
  primary_start(&p, &o, &f, 1, NULL);
  wait_state(&p, 0, REPLICATE_PEER_STREAMING);
  fake_set_stalled(f, true);
  int64_t t = now_ns();
  assert_int_equal(primary_save(&p, 2, false), 0);
  assert_true((double)(now_ns() - t) / 1e9 >= 0.25);
  replicate_shipper_summary sum;
  replicate_shipper_get_summary(p.sh, &sum);
  assert_true(sum.sync_degraded);
  t = now_ns();
  primary_saves(&p, 5, 2, false); /* asynchronous now */
  assert_true((double)(now_ns() - t) / 1e9 < 0.25);
  fake_set_stalled(f, false);
  summary_wait w = {&p, false};
  assert_true(wait_for(degraded_is, &w, 10));
  /* Synchronous again. */
  FAKE_SET(f, delay_ms, 150);
  t = now_ns();
  assert_int_equal(primary_save(&p, 2, false), 0);
  assert_true((double)(now_ns() - t) / 1e9 >= 0.1);
  FAKE_SET(f, delay_ms, 0);
  drain_ok(&p);
  finish_same(&p, f);
}

/* 401: nothing shipped, the state says so, the token never shows; a token
 * rotation (on the standby, then on the primary) heals it. */
static void test_unauthorized(void **state)
{
  (void)state;
  fake *f = fake_start();
  snprintf(f->token, sizeof f->token, "standby-secret-B");
  primary p;
  replicate_shipper_options o = test_options();
  o.token = "primary-secret-A";
  primary_start(&p, &o, &f, 1, NULL);
  wait_state(&p, 0, REPLICATE_PEER_UNAUTHORIZED);
  primary_saves(&p, 4, 2, false);
  test_pause_ms(100); /* checks that nothing happens: no frame gets through */
  loom_position fpos;
  fake_position(f, &fpos);
  assert_int_equal(fpos.seq, 0);
  assert_int_equal(FAKE_GET(f, frames), 0);
  replicate_peer_status st;
  standby_status(&p, 0, &st);
  assert_string_equal(st.state_name, "unauthorized");
  assert_true(st.errors[REPLICATE_PEER_ERROR_UNAUTHORIZED] > 0);
  assert_non_null(strstr(st.last_error, "401"));
  assert_null(strstr(st.last_error, "secret"));
  /* Retried, but rarely (a 0.3 s period): two more refusals take at least
   * one period, not a storm. */
  int64_t t0 = now_ns();
  count_wait rw = {f, &f->refused_token, FAKE_GET(f, refused_token) + 2};
  assert_true(wait_for(count_reached, &rw, 5));
  assert_true(now_ns() - t0 >= 250000000);
  /* The standby rotates to the primary's token. */
  pthread_mutex_lock(&f->mu);
  snprintf(f->token, sizeof f->token, "primary-secret-A");
  pthread_mutex_unlock(&f->mu);
  catch_up(&p, f);
  assert_same_image(&p, f);
  /* Both rotate again: the standby first (401), then the primary. */
  pthread_mutex_lock(&f->mu);
  snprintf(f->token, sizeof f->token, "rotated-secret-C");
  pthread_mutex_unlock(&f->mu);
  primary_saves(&p, 2, 2, false);
  wait_state(&p, 0, REPLICATE_PEER_UNAUTHORIZED);
  assert_int_equal(replicate_shipper_set_token(p.sh, "rotated-secret-C"), 0);
  catch_up(&p, f);
  standby_status(&p, 0, &st);
  assert_null(strstr(st.last_error, "secret"));
  finish_same(&p, f);
}

/* A primary whose one standby wants another token, refused once, with a
 * 60 s unauthorized retry period. */
static fake *start_refused(primary *p)
{
  fake *f = fake_start();
  snprintf(f->token, sizeof f->token, "standby-secret-B");
  replicate_shipper_options o = test_options();
  o.token = "primary-secret-A";
  o.unauthorized_retry_seconds = 60;
  primary_start(p, &o, &f, 1, NULL);
  wait_state(p, 0, REPLICATE_PEER_UNAUTHORIZED);
  return f;
}

/* A standby that re-reads its token after the primary did (nodes get
 * SIGHUP one at a time): the primary asks again within seconds, not after
 * the whole retry period (60 s here), and the wait grows while it keeps
 * refusing (0.5 s, 1 s, ...: no storm). */
static void test_unauthorized_backoff(void **state)
{
  (void)state;
  primary p;
  fake *f = start_refused(&p);
  int64_t t0 = now_ns();
  count_wait rw = {f, &f->refused_token, FAKE_GET(f, refused_token) + 2};
  assert_true(wait_for(count_reached, &rw, 10));
  assert_true(now_ns() - t0 >= 1000000000); /* 0.5 s, then 1 s */
  primary_saves(&p, 3, 2, false);
  pthread_mutex_lock(&f->mu);
  snprintf(f->token, sizeof f->token, "primary-secret-A");
  pthread_mutex_unlock(&f->mu);
  catch_up(&p, f); /* next ask 2 s after the last refusal; 15 s deadline */
  assert_same_image(&p, f);
  primary_stop(&p);
  fake_stop(f);
}

/* A new token (SIGHUP) lets the first request through at once, and the
 * commits after it do not wait out the unauthorized retry period (30 s by
 * default): a success ends the wait. */
static void test_token_rotation_no_wait(void **state)
{
  (void)state;
  primary p;
  fake *f = start_refused(&p);
  primary_saves(&p, 3, 2, false);
  assert_int_equal(replicate_shipper_set_token(p.sh, "standby-secret-B"), 0);
  wait_state(&p, 0, REPLICATE_PEER_STREAMING);
  primary_saves(&p, 3, 2, false); /* shipped as they commit, not in 60 s */
  catch_up(&p, f);
  assert_same_image(&p, f);
  primary_stop(&p);
  fake_stop(f);
}

/* 409 stale epoch: fenced everywhere, nothing more is shipped. */
static void test_fenced(void **state)
{
  (void)state;
  fake *fs[2] = {fake_start(), fake_start()};
  primary p;
  replicate_shipper_options o = test_options();
  primary_start(&p, &o, fs, 2, NULL);
  primary_saves(&p, 6, 2, false);
  drain_ok(&p);
  assert_same_image(&p, fs[0]);
  assert_same_image(&p, fs[1]);
  loom_position fenced_at;
  primary_position(&p, &fenced_at);
  FAKE_SET(fs[0], stale_epoch, true);
  int rc = primary_save(&p, 2, false); /* shipped, refused: fenced */
  assert_true(rc == 0 || rc == REPLICATE_EFENCED);
  wait_state(&p, 0, REPLICATE_PEER_FENCED);
  replicate_shipper_summary sum;
  replicate_shipper_get_summary(p.sh, &sum);
  assert_true(sum.fenced);
  replicate_peer_status st;
  standby_status(&p, 0, &st);
  assert_non_null(strstr(st.last_error, "epoch"));
  standby_status(&p, 1, &st);
  assert_string_equal(st.state_name, "fenced");
  assert_int_equal(primary_save(&p, 2, false), REPLICATE_EFENCED);
  assert_false(replicate_shipper_drain(p.sh, 1));
  unsigned r0 = FAKE_GET(fs[0], requests), r1 = FAKE_GET(fs[1], requests);
  test_pause_ms(600); /* heartbeats would have gone out every 0.2 s */
  assert_int_equal(FAKE_GET(fs[0], requests), r0);
  assert_int_equal(FAKE_GET(fs[1], requests), r1);
  /* The standby that fenced us stayed where it was. */
  loom_position fpos;
  fake_position(fs[0], &fpos);
  assert_int_equal(fpos.seq, fenced_at.seq);
  primary_stop(&p);
  fake_stop(fs[0]);
  fake_stop(fs[1]);
}

/* 503 with Retry-After: the next attempt waits that long. */
static void test_retry_after(void **state)
{
  (void)state;
  fake *f = fake_start();
  primary p;
  replicate_shipper_options o = test_options();
  primary_start(&p, &o, &f, 1, NULL);
  wait_state(&p, 0, REPLICATE_PEER_STREAMING);
  FAKE_SET(f, retry_after_s, 1);
  FAKE_SET(f, busy, 1);
  primary_saves(&p, 1, 2, false);
  wait_state(&p, 0, REPLICATE_PEER_REFUSED);
  catch_up(&p, f);
  pthread_mutex_lock(&f->mu);
  double waited = (double)(f->after_busy_ns - f->busy_answered_ns) / 1e9;
  pthread_mutex_unlock(&f->mu);
  assert_true(waited >= 0.95);
  replicate_peer_status st;
  standby_status(&p, 0, &st);
  assert_non_null(strstr(st.last_error, "503"));
  assert_true(st.errors[REPLICATE_PEER_ERROR_REFUSED] > 0);
  finish_same(&p, f);
}

/* An HTTP error answer is "refused", not "unreachable", and last_error
 * says the code and the standby's text; it heals when the answers do. */
static void test_refused(void **state)
{
  (void)state;
  fake *f = fake_start();
  primary p;
  replicate_shipper_options o = test_options();
  primary_start(&p, &o, &f, 1, NULL);
  wait_state(&p, 0, REPLICATE_PEER_STREAMING);
  static const unsigned codes[] = {400, 503, 507};
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
    FAKE_SET(f, error_status, codes[i]);
    primary_saves(&p, 1, 2, false);
    wait_state(&p, 0, REPLICATE_PEER_REFUSED);
    replicate_peer_status st;
    standby_status(&p, 0, &st);
    char want[32];
    snprintf(want, sizeof want, "HTTP %u (refused by the test)", codes[i]);
    if (!strstr(st.last_error, want))
      fprintf(stderr, "last_error: %s\n", st.last_error);
    assert_non_null(strstr(st.last_error, want));
    assert_string_equal(st.state_name, "refused");
    FAKE_SET(f, error_status, 0);
    catch_up(&p, f);
    wait_state(&p, 0, REPLICATE_PEER_STREAMING);
  }
  finish_same(&p, f);
}

/* A standby that takes the request and never answers (a stopped process:
 * its kernel still accepts) shows "stalled" after stall_seconds, long
 * before the request times out, and streams again once it answers. */
static void test_stalled_state(void **state)
{
  (void)state;
  fake *f = fake_start();
  primary p;
  replicate_shipper_options o = test_options();
  o.request_timeout_seconds = 30;
  o.stall_seconds = 0.3;
  primary_start(&p, &o, &f, 1, NULL);
  wait_state(&p, 0, REPLICATE_PEER_STREAMING);
  fake_set_stalled(f, true);
  int64_t t0 = now_ns();
  primary_saves(&p, 1, 2, false);
  wait_state(&p, 0, REPLICATE_PEER_STALLED);
  double took = (double)(now_ns() - t0) / 1e9;
  assert_true(took >= 0.25 && took < 5);
  replicate_peer_status st;
  standby_status(&p, 0, &st);
  assert_string_equal(st.state_name, "stalled");
  assert_non_null(strstr(st.last_error, "no answer"));
  assert_true(st.lag_frames > 0);
  fake_set_stalled(f, false);
  catch_up(&p, f);
  wait_state(&p, 0, REPLICATE_PEER_STREAMING);
  finish_same(&p, f);
}

/* 413 on a merged piece: smaller pieces. */
static void test_too_large_pieces(void **state)
{
  (void)state;
  fake *f = fake_start();
  fake_down(f);
  primary p;
  replicate_shipper_options o = test_options();
  primary_start(&p, &o, &f, 1, NULL);
  primary_saves(&p, 12, 2, true); /* about 32 KiB a frame */
  FAKE_SET(f, max_body, 70000); /* one frame fits, a merge of 3 does not */
  fake_up(f);
  catch_up(&p, f);
  assert_true(FAKE_GET(f, too_large) >= 1);
  assert_int_equal(FAKE_GET(f, bases), 0);
  finish_same(&p, f);
}

/* The primary stops mid-ship and starts again on its directory: shipping
 * resumes where the standby left off, from the log. */
static void test_primary_restart(void **state)
{
  (void)state;
  fake *f = fake_start();
  primary p;
  replicate_shipper_options o = test_options();
  primary_start(&p, &o, &f, 1, NULL);
  primary_saves(&p, 5, 2, false);
  drain_ok(&p);
  fake_set_stalled(f, true);
  primary_saves(&p, 10, 2, false);
  primary_close(&p); /* a request in flight is abandoned */
  fake_set_stalled(f, false);
  primary_open(&p, p.dir, NULL);
  const char *urls[1] = {f->url};
  o.store = loom_get_store(p.l);
  o.log = p.log;
  o.standby_urls = urls;
  o.standby_count = 1;
  assert_int_equal(replicate_shipper_start(&o, &p.sh), 0);
  primary_saves(&p, 3, 2, false);
  catch_up(&p, f);
  assert_int_equal(FAKE_GET(f, bases), 0);
  finish_same(&p, f);
}

/* Wait until standby 0 is diverged; fail with what it shows otherwise. */
static void wait_diverged(primary *p)
{
  state_wait w = {p, 0, REPLICATE_PEER_DIVERGED};
  if (!wait_for(in_state, &w, 15)) {
    replicate_peer_status st;
    standby_status(p, 0, &st);
    fprintf(stderr, "standby state %s (%s)\n", st.state_name, st.last_error);
    fail();
  }
}

/* A standby whose image is not in the primary's history is never
 * overwritten (DESIGN section 3): no base image, the standby keeps its
 * position, and the primary shows it diverged. Found by a 409 naming
 * REPLICATE_EFORK (same seq, other checksum), or by its position alone
 * (ahead of the primary: an older primary directory). */
static void test_diverged(void **state)
{
  (void)state;
  fake *f = fake_start();
  primary p;
  replicate_shipper_options o = test_options();
  o.heartbeat_seconds = 30; /* the shipper keeps believing its position */
  o.request_timeout_seconds = 20; /* one refusal counted: none resent */
  primary_start(&p, &o, &f, 1, NULL);
  primary_saves(&p, 5, 2, false);
  drain_ok(&p);
  loom_position pos, fork_pos, now;
  primary_position(&p, &pos);
  fake_restart_diverged(f, pos.seq, 3, 7);
  fake_position(f, &fork_pos);
  primary_saves(&p, 1, 2, false);
  wait_diverged(&p);
  assert_int_equal(FAKE_GET(f, mismatches), 1);
  assert_int_equal(FAKE_GET(f, bases), 0);
  fake_position(f, &now);
  assert_memory_equal(&now, &fork_pos, sizeof now);
  replicate_peer_status st;
  standby_status(&p, 0, &st);
  assert_non_null(strstr(st.last_error, "diverged"));
  assert_string_equal(st.state_name, "diverged");
  /* A diverged standby is not waited for: the drain ends at once, not
   * done. */
  assert_false(replicate_shipper_drain(p.sh, 5));

  /* Ahead of the primary: seen in the answer to the first heartbeat. */
  primary_stop(&p);
  fake_restart_empty(f); /* a new primary: both start empty */
  primary_start(&p, &o, &f, 1, NULL);
  primary_saves(&p, 2, 2, false);
  catch_up(&p, f);
  assert_int_equal(FAKE_GET(f, bases), 0);
  primary_position(&p, &pos);
  fake_restart_diverged(f, pos.seq + 3, 2, 9);
  fake_position(f, &fork_pos);
  primary_close(&p);
  primary_open(&p, p.dir, NULL);
  const char *urls[1] = {f->url};
  o.store = loom_get_store(p.l);
  o.log = p.log;
  o.standby_urls = urls;
  o.standby_count = 1;
  assert_int_equal(replicate_shipper_start(&o, &p.sh), 0);
  wait_diverged(&p);
  assert_int_equal(FAKE_GET(f, bases), 0);
  fake_position(f, &now);
  assert_memory_equal(&now, &fork_pos, sizeof now);
  standby_status(&p, 0, &st);
  assert_non_null(strstr(st.last_error, "ahead of this primary"));

  /* Behind the primary, on another fork: found by comparing the log's
   * frame after its seq. Diverged, and still no base image (the log
   * reaches back: a forked standby is never overwritten). */
  primary_saves(&p, 6, 2, false);
  primary_position(&p, &pos);
  fake_restart_diverged(f, pos.seq - 2, 2, 11);
  fake_position(f, &fork_pos);
  primary_close(&p);
  primary_open(&p, p.dir, NULL);
  o.store = loom_get_store(p.l);
  o.log = p.log;
  assert_int_equal(replicate_shipper_start(&o, &p.sh), 0);
  wait_diverged(&p);
  primary_saves(&p, 1, 2, false);
  standby_status(&p, 0, &st);
  assert_string_equal(st.state_name, "diverged");
  if (!strstr(st.last_error, "histories forked"))
    fail_msg("last_error: %s", st.last_error);
  assert_int_equal(FAKE_GET(f, bases), 0);
  fake_position(f, &now);
  assert_memory_equal(&now, &fork_pos, sizeof now);
  primary_stop(&p);
  fake_stop(f);
}

/* Checksums in acks (DESIGN section 8): verified_seq follows the seqs at
 * which the standby's own checksum equals ours; a standby whose computed
 * checksum differs is diverged, counted, and named in last_error, until
 * an answer equals ours again. */
typedef struct verified_wait {
  primary *p;
  uint64_t seq;
} verified_wait;

static bool verified_reaches(void *ctx)
{
  verified_wait *w = ctx;
  replicate_peer_status st;
  standby_status(w->p, 0, &st);
  return st.verified_seq >= w->seq && st.state == REPLICATE_PEER_STREAMING;
}

/* The primary's seq now, once the standby verified it within timeout_s
 * (the test fails otherwise). */
static uint64_t verified_now(primary *p, int timeout_s)
{
  loom_position pos;
  primary_position(p, &pos);
  verified_wait w = {p, pos.seq};
  assert_true(wait_for(verified_reaches, &w, timeout_s));
  return pos.seq;
}

/* One save more, verified by the standby within timeout_s. */
static uint64_t save_verified(primary *p, int timeout_s)
{
  primary_saves(p, 1, 2, false);
  return verified_now(p, timeout_s);
}

/* A primary with one fake standby that caught up with five saves. */
static fake *caught_up_pair(primary *p)
{
  fake *f = fake_start();
  replicate_shipper_options o = test_options();
  primary_start(p, &o, &f, 1, NULL);
  primary_saves(p, 5, 2, false);
  catch_up(p, f);
  return f;
}

static void test_verified(void **state)
{
  (void)state;
  primary p;
  fake *f = caught_up_pair(&p);
  uint64_t seq = verified_now(&p, 10);
  replicate_peer_status st;
  standby_status(&p, 0, &st);
  assert_int_equal(st.verified_seq, seq);
  assert_int_equal(st.checksum_mismatches, 0);

  __atomic_store_n(&fake_computed_xor, 1, __ATOMIC_RELAXED);
  primary_saves(&p, 1, 2, false);
  wait_diverged(&p);
  standby_status(&p, 0, &st);
  assert_true(st.checksum_mismatches >= 1);
  assert_int_equal(st.verified_seq, seq);
  if (!strstr(st.last_error, "checksum differs") ||
      !strstr(st.last_error, "computed"))
    fail_msg("last_error: %s", st.last_error);

  /* Repaired: the next answer's checksum equals ours, streaming again. */
  __atomic_store_n(&fake_computed_xor, 0, __ATOMIC_RELAXED);
  save_verified(&p, 10);
  catch_up(&p, f);
  primary_stop(&p);
  fake_stop(f);
}

/* A standby whose computed checksum differs but which says itself that
 * its image is damaged (409 REPLICATE_EPAGE_HASH: rot its read-back found
 * and could not repair) is sent a base image of our history, not left
 * diverged (docs/INTEGRITY.md section 5); once per mend: damaged again
 * before it verified a seq past that base image, it is diverged. */
static bool bases_reach(void *ctx)
{
  void **w = ctx;
  return FAKE_GET((fake *)w[0], bases) >= *(unsigned *)w[1];
}

/* The fake's image spoiled (its computed checksum differs, and it asks
 * for a base image) or sound again. */
static void fake_set_damaged(fake *f, bool damaged)
{
  pthread_mutex_lock(&f->mu);
  f->damaged = damaged;
  __atomic_store_n(&fake_computed_xor, damaged ? 1 : 0, __ATOMIC_RELAXED);
  pthread_mutex_unlock(&f->mu);
}

static void test_mend_over_mismatch(void **state)
{
  (void)state;
  primary p;
  fake *f = caught_up_pair(&p);

  /* No save meanwhile: heartbeats carry it, and no frame can verify a
   * seq past the base image before phase 2. */
  fake_set_damaged(f, true);
  unsigned one = 1;
  void *w[2] = {f, &one};
  assert_true(wait_for(bases_reach, w, 15));
  verified_now(&p, 10);
  replicate_peer_status st;
  standby_status(&p, 0, &st);
  assert_true(st.checksum_mismatches >= 1);
  assert_int_equal(st.base_images_sent, 1);

  /* Damaged again at once, no seq verified past the base image: the
   * disk spoils what it is sent; diverged, no second base image. */
  fake_set_damaged(f, true);
  wait_diverged(&p);
  assert_int_equal(FAKE_GET(f, bases), 1);

  /* Mended by other means (--resync-from): streaming again. */
  fake_set_damaged(f, false);
  save_verified(&p, 20);

  /* A mend whose answer is lost counts all the same: the standby stays
   * damaged, and no second base image follows on its next refusal. */
  save_verified(&p, 20); /* a verified seq past the last mend */
  pthread_mutex_lock(&f->mu);
  f->spoil_base = true;
  pthread_mutex_unlock(&f->mu);
  fake_set_damaged(f, true);
  unsigned two = 2;
  w[1] = &two;
  assert_true(wait_for(bases_reach, w, 15));
  wait_diverged(&p);
  test_pause_ms(600); /* heartbeats every 0.2 s would bring a third */
  assert_int_equal(FAKE_GET(f, bases), 2);
  pthread_mutex_lock(&f->mu);
  f->spoil_base = false;
  pthread_mutex_unlock(&f->mu);
  fake_set_damaged(f, false);
  save_verified(&p, 20);
  primary_stop(&p);
  fake_stop(f);
}

/* https: verified against the CA file; without it, verification fails. */
/* Peers added and removed at run time (a cluster leader): a leader alone
 * saves; a peer added later catches up; a removed one is sent nothing
 * more, and the others go on. */
static bool peer_count_is(void *ctx)
{
  void **w = ctx;
  replicate_shipper_summary sum;
  replicate_shipper_get_summary(((primary *)w[0])->sh, &sum);
  return sum.standby_count == *(size_t *)w[1];
}

static void wait_peer_count(primary *p, size_t n)
{
  void *w[2] = {p, &n};
  assert_true(wait_for(peer_count_is, w, 10));
}

static void test_peers_at_run_time(void **state)
{
  (void)state;
  fake *fs[2] = {fake_start(), fake_start()};
  primary p;
  replicate_shipper_options o = test_options();
  o.max_peers = 2;
  primary_start(&p, &o, fs, 0, NULL); /* alone */
  primary_saves(&p, 5, 2, false);
  assert_int_equal(replicate_shipper_add_peer(p.sh, "ftp://127.0.0.1:9"),
                   REPLICATE_EINVAL);
  assert_int_equal(replicate_shipper_remove_peer(p.sh, fs[0]->url), ENOENT);
  assert_int_equal(replicate_shipper_add_peer(p.sh, fs[0]->url), 0);
  assert_int_equal(replicate_shipper_add_peer(p.sh, fs[0]->url), EEXIST);
  wait_peer_count(&p, 1);
  loom_position pos;
  primary_position(&p, &pos);
  assert_true(fake_reaches(fs[0], pos.seq, 10));
  assert_int_equal(replicate_shipper_add_peer(p.sh, fs[1]->url), 0);
  assert_int_equal(replicate_shipper_add_peer(p.sh, "http://127.0.0.1:9"), ENOSPC);
  primary_saves(&p, 5, 2, false);
  drain_ok(&p);
  assert_same_image(&p, fs[0]);
  assert_same_image(&p, fs[1]);

  /* Removed: fs[0] hears nothing more; fs[1] streams on. */
  assert_int_equal(replicate_shipper_remove_peer(p.sh, fs[0]->url), 0);
  assert_int_equal(replicate_shipper_remove_peer(p.sh, fs[0]->url), ENOENT);
  wait_peer_count(&p, 1);
  loom_position before;
  fake_position(fs[0], &before);
  primary_saves(&p, 4, 2, false);
  drain_ok(&p);
  assert_same_image(&p, fs[1]);
  replicate_peer_status st;
  standby_status(&p, 0, &st);
  assert_string_equal(st.url, fs[1]->url);
  loom_position after;
  fake_position(fs[0], &after);
  assert_int_equal(after.seq, before.seq);
  primary_position(&p, &pos);
  assert_true(pos.seq > before.seq);
  primary_stop(&p);
  fake_stop(fs[0]);
  fake_stop(fs[1]);
}

static void test_https(void **state)
{
  (void)state;
  if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES)
    skip();
  char *certs = test_tmpdir("certs");
  char cmd[4096];
  snprintf(cmd, sizeof cmd,
           "(cd '%s' && "
           "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
           "-nodes -keyout ca.key -out ca.pem -days 2 -subj '/CN=ship test CA' "
           "&& openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
           "-nodes -keyout server.key -out server.csr -subj '/CN=127.0.0.1' "
           "&& printf 'subjectAltName=IP:127.0.0.1\n' > ext.cnf "
           "&& openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key "
           "-CAcreateserial -out server.pem -days 2 -extfile ext.cnf"
           ") >/dev/null 2>&1",
           certs);
  if (system(cmd) != 0) { /* no openssl: nothing to test with */
    test_remove_tree(certs);
    free(certs);
    skip();
  }
  size_t n;
  char *cert = (char *)test_read_file(certs, "server.pem", &n);
  cert = realloc(cert, n + 1);
  cert[n] = '\0';
  char *key = (char *)test_read_file(certs, "server.key", &n);
  key = realloc(key, n + 1);
  key[n] = '\0';
  char ca[1024];
  snprintf(ca, sizeof ca, "%s/ca.pem", certs);

  fake *f = fake_start_tls(cert, key);
  assert_int_equal(strncmp(f->url, "https://", 8), 0);
  primary p;
  replicate_shipper_options o = test_options();
  o.ca_file = ca;
  o.token = "tls-token";
  snprintf(f->token, sizeof f->token, "tls-token");
  primary_start(&p, &o, &f, 1, NULL);
  primary_saves(&p, 10, 2, false);
  catch_up(&p, f);
  assert_same_image(&p, f);
  primary_stop(&p);

  /* Without the CA file the certificate does not verify: nothing ships. */
  unsigned requests = FAKE_GET(f, requests);
  primary q;
  replicate_shipper_options o2 = test_options();
  primary_start(&q, &o2, &f, 1, NULL);
  wait_state(&q, 0, REPLICATE_PEER_UNREACHABLE);
  replicate_peer_status st;
  standby_status(&q, 0, &st);
  assert_true(st.last_error[0] != '\0');
  unsigned frames = FAKE_GET(f, frames);
  primary_saves(&q, 2, 2, false);
  test_pause_ms(300); /* checks that nothing happens: no request goes out */
  assert_int_equal(FAKE_GET(f, frames), frames);
  assert_int_equal(FAKE_GET(f, requests), requests);
  primary_stop(&q);
  fake_stop(f);
  free(cert);
  free(key);
  test_remove_tree(certs);
  free(certs);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_answer_reader),
      cmocka_unit_test(test_bad_options),
      cmocka_unit_test(test_ordering),
      cmocka_unit_test(test_duplicates),
      cmocka_unit_test(test_gap),
      cmocka_unit_test(test_catch_up_coalesced),
      cmocka_unit_test(test_log_append_fails),
      cmocka_unit_test(test_restarted_empty),
      cmocka_unit_test(test_log_cap),
      cmocka_unit_test(test_two_one_stalled),
      cmocka_unit_test(test_four_one_stalled),
      cmocka_unit_test(test_sync_blocks),
      cmocka_unit_test(test_sync_timeout_fail),
      cmocka_unit_test(test_sync_timeout_degrade),
      cmocka_unit_test(test_unauthorized),
      cmocka_unit_test(test_token_rotation_no_wait),
      cmocka_unit_test(test_unauthorized_backoff),
      cmocka_unit_test(test_fenced),
      cmocka_unit_test(test_retry_after),
      cmocka_unit_test(test_refused),
      cmocka_unit_test(test_stalled_state),
      cmocka_unit_test(test_too_large_pieces),
      cmocka_unit_test(test_primary_restart),
      cmocka_unit_test(test_diverged),
      cmocka_unit_test(test_verified),
      cmocka_unit_test(test_mend_over_mismatch),
      cmocka_unit_test(test_https),
      cmocka_unit_test(test_peers_at_run_time),
  };
  if (getenv("SHIP_TEST_FILTER"))
    cmocka_set_test_filter(getenv("SHIP_TEST_FILTER"));
  return cmocka_run_group_tests(tests, NULL, NULL);
}
