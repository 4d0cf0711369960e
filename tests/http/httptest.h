/*
 * httptest.h: what the http/ tests share: a real primary (a loom arena
 * whose commit hook encodes every commit into a frame), a libcurl client,
 * a standby server on 127.0.0.1:0, and image comparisons.
 *
 * Everything here asserts through cmocka: a helper that fails fails the
 * test that called it.
 */
#ifndef HTTPTEST_H
#define HTTPTEST_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <time.h>

#include "loom.h"
#include "replicate.h"
#include "replicate_testlib.h"
#include "server.h"
#include "util.h"

/* ---------------------------------------------------------------------- */
/* Directories */

/* Frames built by hand carry no history. */
static const loom_history no_history;

/* A subdirectory path (not created). Caller frees. */
static inline char *ht_path(const char *dir, const char *name)
{
  char *p = xmalloc(strlen(dir) + strlen(name) + 2);
  sprintf(p, "%s/%s", dir, name);
  return p;
}

/* The whole image file of an image directory. Caller frees. */
static inline uint8_t *ht_read_image(const char *dir, size_t *len)
{
  uint8_t *buf = test_read_file(dir, "image", len);
  return buf ? buf : xmalloc(1); /* no image: empty */
}

/* Assert two image directories hold the same bytes and position. */
static inline void ht_assert_same_image(const char *a, const char *b)
{
  size_t la, lb;
  uint8_t *ia = ht_read_image(a, &la);
  uint8_t *ib = ht_read_image(b, &lb);
  assert_int_equal(la, lb);
  assert_memory_equal(ia, ib, la);
  free(ia);
  free(ib);
  loom_position pa, pb;
  assert_int_equal(loom_inspect(a, &pa), 0);
  assert_int_equal(loom_inspect(b, &pb), 0);
  assert_int_equal(pa.seq, pb.seq);
  assert_int_equal(pa.checksum, pb.checksum);
  assert_int_equal(pa.pages, pb.pages);
  loom_position rec;
  uint64_t computed;
  assert_int_equal(loom_verify(b, &rec, &computed), 0);
  assert_int_equal(computed, pb.checksum);
}

/* ---------------------------------------------------------------------- */
/* The primary: a loom whose every commit becomes a frame. */

typedef struct ht_primary {
  char *dir;
  loom *l;
  replicate_encoder *enc;
  replicate_buf *frames;        /* frames[i]: the i-th commit's frame */
  size_t nframes, cap;
  uint64_t arena_pages;
  uint64_t image_pages;
  test_rng rng;
  pthread_mutex_t mu;           /* around saves and snapshot opens */
} ht_primary;

/* The history the primary's frames carry. */
static inline loom_history ht_primary_history(ht_primary *p)
{
  loom_lineage lineage;
  loom_store_lineage(loom_get_store(p->l), &lineage);
  return lineage.history;
}

static inline int ht_on_commit(void *ctx, loom *l, const loom_commit *c)
{
  ht_primary *p = ctx;
  if (p->nframes == p->cap) {
    p->cap = p->cap ? p->cap * 2 : 64;
    p->frames = realloc(p->frames, p->cap * sizeof *p->frames);
    assert_non_null(p->frames);
  }
  replicate_buf *buf = &p->frames[p->nframes];
  memset(buf, 0, sizeof *buf);
  int rc = replicate_frame_encode_commit(p->enc, l, c, buf);
  if (rc == 0)
    p->nframes++;
  return rc;
}

static inline void ht_primary_open(ht_primary *p, uint64_t arena_pages,
                                   uint64_t seed)
{
  memset(p, 0, sizeof *p);
  p->dir = test_tmpdir("primary");
  p->arena_pages = arena_pages;
  p->rng.state = seed;
  pthread_mutex_init(&p->mu, NULL);
  assert_int_equal(replicate_encoder_new(1, &p->enc), 0);
  loom_options o = {.arena_pages = arena_pages, .flags = LOOM_CREATE,
                    .on_commit = ht_on_commit, .commit_ctx = p};
  int rc = loom_open(p->dir, &o, &p->l);
  if (rc)
    fprintf(stderr, "loom_open: %s\n", loom_strerror(rc));
  assert_int_equal(rc, 0);
}

/* One commit: touch `touch` random pages below new_pages (at least one;
 * some writes change a few bytes, some the whole page), then save with
 * the image at new_pages. Returns the frame's index. */
static inline size_t ht_primary_commit(ht_primary *p, unsigned touch,
                                       uint64_t new_pages)
{
  assert_true(new_pages >= 1 && new_pages < p->arena_pages / 2);
  pthread_mutex_lock(&p->mu);
  for (unsigned i = 0; i < (touch ? touch : 1); i++) {
    uint64_t n = rng_below(&p->rng, new_pages);
    uint8_t *page = loom_page(p->l, n);
    if (rng_below(&p->rng, 4) == 0) {
      rng_fill(&p->rng, page, PS);
    } else {
      uint64_t off = rng_below(&p->rng, PS - 64);
      rng_fill(&p->rng, page + off, 64);
    }
  }
  size_t before = p->nframes;
  int rc = loom_save(p->l, new_pages, p->arena_pages);
  pthread_mutex_unlock(&p->mu);
  assert_int_equal(rc, 0);
  assert_int_equal(p->nframes, before + 1);
  p->image_pages = new_pages;
  return before;
}

/* n commits with a changing image length. */
static inline void ht_primary_run(ht_primary *p, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    uint64_t pages = p->image_pages ? p->image_pages : 8;
    uint64_t r = rng_below(&p->rng, 8);
    if (r == 0 && pages > 2)
      pages -= 1 + rng_below(&p->rng, pages / 2);
    else if (r <= 2)
      pages += 1 + rng_below(&p->rng, 6);
    if (pages >= p->arena_pages / 2)
      pages = p->arena_pages / 2 - 1;
    ht_primary_commit(p, 1 + (unsigned)rng_below(&p->rng, 6), pages);
  }
}

static inline void ht_primary_position(ht_primary *p, loom_position *pos)
{
  pthread_mutex_lock(&p->mu);
  loom_store_position(loom_get_store(p->l), pos);
  pthread_mutex_unlock(&p->mu);
}

/* Close the arena (its image is then at the last commit) but keep the
 * frames and the directory. */
static inline void ht_primary_close(ht_primary *p)
{
  if (p->l)
    assert_int_equal(loom_close(p->l), 0);
  p->l = NULL;
}

static inline void ht_primary_free(ht_primary *p)
{
  ht_primary_close(p);
  for (size_t i = 0; i < p->nframes; i++)
    replicate_buf_free(&p->frames[i]);
  free(p->frames);
  replicate_encoder_free(p->enc);
  pthread_mutex_destroy(&p->mu);
  test_rmtree(p->dir);
  memset(p, 0, sizeof *p);
}

/* ---------------------------------------------------------------------- */
/* The client */

typedef struct ht_resp {
  long status;
  uint8_t *body;
  size_t len;
  char etag[96];
  char content_range[96];
  char allow[64];
  char retry_after[16];
  char content_type[96];
  char www_authenticate[96];
  char accept_ranges[32];
  long long content_length;     /* -1 if none */
  CURLcode curl_rc;
} ht_resp;

static inline void ht_resp_free(ht_resp *r)
{
  free(r->body);
  memset(r, 0, sizeof *r);
}

typedef struct ht_sink {
  ht_resp *resp;
  size_t abort_after;           /* stop the transfer after this many bytes
                                   (0: never) */
} ht_sink;

static inline size_t ht_write_cb(char *data, size_t size, size_t n, void *ctx)
{
  ht_sink *s = ctx;
  size_t len = size * n;
  if (s->abort_after && s->resp->len + len > s->abort_after) {
    len = s->abort_after - s->resp->len; /* keep exactly abort_after */
    s->resp->body = realloc(s->resp->body, s->resp->len + len + 1);
    memcpy(s->resp->body + s->resp->len, data, len);
    s->resp->len += len;
    return 0; /* curl aborts: CURLE_WRITE_ERROR */
  }
  s->resp->body = realloc(s->resp->body, s->resp->len + len + 1);
  assert_non_null(s->resp->body);
  memcpy(s->resp->body + s->resp->len, data, len);
  s->resp->len += len;
  s->resp->body[s->resp->len] = 0;
  return size * n;
}

static inline void ht_header_value(const char *line, size_t len,
                                   const char *name, char *out, size_t cap)
{
  size_t nl = strlen(name);
  if (len <= nl + 1 || strncasecmp(line, name, nl) != 0 || line[nl] != ':')
    return;
  const char *v = line + nl + 1;
  size_t vl = len - nl - 1;
  while (vl && (*v == ' ' || *v == '\t'))
    v++, vl--;
  while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
    vl--;
  if (vl >= cap)
    vl = cap - 1;
  memcpy(out, v, vl);
  out[vl] = 0;
}

static inline size_t ht_header_cb(char *line, size_t size, size_t n, void *ctx)
{
  ht_resp *r = ctx;
  size_t len = size * n;
  char cl[32] = "";
  ht_header_value(line, len, "ETag", r->etag, sizeof r->etag);
  ht_header_value(line, len, "Content-Range", r->content_range,
                  sizeof r->content_range);
  ht_header_value(line, len, "Allow", r->allow, sizeof r->allow);
  ht_header_value(line, len, "Retry-After", r->retry_after,
                  sizeof r->retry_after);
  ht_header_value(line, len, "Content-Type", r->content_type,
                  sizeof r->content_type);
  ht_header_value(line, len, "WWW-Authenticate", r->www_authenticate,
                  sizeof r->www_authenticate);
  ht_header_value(line, len, "Accept-Ranges", r->accept_ranges,
                  sizeof r->accept_ranges);
  ht_header_value(line, len, "Content-Length", cl, sizeof cl);
  if (cl[0])
    r->content_length = atoll(cl);
  return len;
}

/* A request's options beyond method and URL. */
typedef struct ht_req {
  const char *token;            /* Bearer token, or NULL */
  const void *body;             /* with body_len; NULL: no body */
  size_t body_len;
  const char *headers[4];       /* extra "Name: value" lines */
  size_t abort_after;           /* see ht_sink */
  long max_recv_speed;          /* bytes/s, 0: unlimited */
  const char *cainfo;           /* TLS: the CA (self-signed cert) file */
} ht_req;

static inline CURL *ht_curl(const char *method, const char *url,
                            const ht_req *req, ht_resp *out, ht_sink *sink,
                            struct curl_slist **hdrs, char *auth)
{
  CURL *c = curl_easy_init();
  assert_non_null(c);
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, ht_write_cb);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, sink);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, ht_header_cb);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, out);
  if (strcmp(method, "HEAD") == 0)
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  else if (strcmp(method, "GET") != 0)
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
  *hdrs = NULL;
  if (req && req->token) {
    sprintf(auth, "Authorization: Bearer %s", req->token);
    *hdrs = curl_slist_append(*hdrs, auth);
  }
  for (int i = 0; req && i < 4 && req->headers[i]; i++)
    *hdrs = curl_slist_append(*hdrs, req->headers[i]);
  if (*hdrs)
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, *hdrs);
  if (req && req->body) {
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE,
                     (curl_off_t)req->body_len);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, req->body);
  } else if (strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0) {
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
  }
  if (req && req->max_recv_speed)
    curl_easy_setopt(c, CURLOPT_MAX_RECV_SPEED_LARGE,
                     (curl_off_t)req->max_recv_speed);
  if (req && req->cainfo) {
    curl_easy_setopt(c, CURLOPT_CAINFO, req->cainfo);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
  }
  return c;
}

/* Perform method on url; out receives status, body and headers. */
static inline void ht_call(const char *method, const char *url,
                           const ht_req *req, ht_resp *out)
{
  memset(out, 0, sizeof *out);
  out->content_length = -1;
  ht_sink sink = {out, req ? req->abort_after : 0};
  struct curl_slist *hdrs;
  char auth[512];
  CURL *c = ht_curl(method, url, req, out, &sink, &hdrs, auth);
  out->curl_rc = curl_easy_perform(c);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
  curl_easy_cleanup(c);
  curl_slist_free_all(hdrs);
  if (!out->body)
    out->body = xcalloc(1);
}

/* Does the body contain needle? */
static inline bool ht_has(const ht_resp *r, const char *needle)
{
  return r->body && strstr((const char *)r->body, needle) != NULL;
}

#define ht_assert_has(r, needle)                                              \
  do {                                                                        \
    if (!ht_has((r), (needle)))                                               \
      fail_msg("body %s lacks %s", (const char *)(r)->body, (needle));        \
  } while (0)

/* ---------------------------------------------------------------------- */
/* A server */

typedef struct ht_log {
  pthread_mutex_t mu;
  char lines[64][256];
  unsigned n;
} ht_log;

static inline void ht_log_fn(void *ctx, const char *msg)
{
  ht_log *log = ctx;
  pthread_mutex_lock(&log->mu);
  snprintf(log->lines[log->n % 64], sizeof log->lines[0], "%s", msg);
  log->n++;
  pthread_mutex_unlock(&log->mu);
}

typedef struct ht_server {
  http_server *server;
  char base[64];                /* "http://127.0.0.1:PORT" */
  char url[128];                /* scratch for ht_url */
  ht_log log;
} ht_server;

/* Start with opt (log filled in here). */
static inline void ht_start(ht_server *s, http_server_options *opt)
{
  memset(&s->log, 0, sizeof s->log);
  pthread_mutex_init(&s->log.mu, NULL);
  opt->log = ht_log_fn;
  opt->log_ctx = &s->log;
  int rc = http_server_start(opt, &s->server);
  if (rc)
    fail_msg("http_server_start: %s", http_strerror(rc));
  snprintf(s->base, sizeof s->base, "%s://127.0.0.1:%u",
           opt->tls_cert_file ? "https" : "http",
           (unsigned)http_server_port(s->server));
}

static inline void ht_start_standby(ht_server *s, const char *dir)
{
  http_server_options opt = {.role = HTTP_ROLE_STANDBY, .dir = dir};
  ht_start(s, &opt);
}

static inline void ht_stop(ht_server *s)
{
  assert_int_equal(http_server_stop(s->server), 0);
  s->server = NULL;
  pthread_mutex_destroy(&s->log.mu);
}

static inline const char *ht_url(ht_server *s, const char *path)
{
  snprintf(s->url, sizeof s->url, "%s%s", s->base, path);
  return s->url;
}

/* POST one frame; returns the status. */
static inline long ht_post_frame(ht_server *s, const replicate_buf *frame,
                                 const char *token)
{
  char url[128];
  snprintf(url, sizeof url, "%s/v1/frames", s->base);
  ht_req req = {.token = token, .body = frame->data, .body_len = frame->len};
  ht_resp r;
  ht_call("POST", url, &req, &r);
  long status = r.status;
  ht_resp_free(&r);
  return status;
}

/* The value of the metric name (a line "name value" of GET /metrics), or
 * -1 when there is none or no answer. */
static inline double ht_metric(ht_server *s, const char *name)
{
  ht_resp r;
  ht_call("GET", ht_url(s, "/metrics"), NULL, &r);
  double v = -1;
  size_t n = strlen(name);
  for (const char *line = (const char *)r.body; line && *line;) {
    if (!strncmp(line, name, n) && line[n] == ' ') {
      v = strtod(line + n + 1, NULL);
      break;
    }
    line = strchr(line, '\n');
    line = line ? line + 1 : NULL;
  }
  ht_resp_free(&r);
  return v;
}

static inline void ht_status(ht_server *s, http_server_status *st)
{
  http_server_get_status(s->server, st);
}

/* Wait (up to 10 s) until the standby has applied seq. */
static inline void ht_wait_applied(ht_server *s, uint64_t seq)
{
  http_server_status st;
  for (int i = 0; i < 2000; i++) {
    ht_status(s, &st);
    if (st.applied.seq >= seq && !st.replay_paused)
      return;
    struct timespec ts = {0, 5000000};
    nanosleep(&ts, NULL);
  }
  fail_msg("applied %llu, waited for %llu", (unsigned long long)st.applied.seq,
           (unsigned long long)seq);
}

/* The common tail of a standby test: stop the standby s, close the
 * primary p, check that the standby's image in dir equals the primary's
 * byte for byte, free p, remove dir (and free its name). */
static inline void ht_finish_same(ht_server *s, ht_primary *p, char *dir)
{
  ht_stop(s);
  ht_primary_close(p);
  ht_assert_same_image(p->dir, dir);
  ht_primary_free(p);
  test_rmtree(dir);
}

/* The image of the node at url as of its applied position, through
 * GET /v1/backup (which waits until the image file has caught up with the
 * applied position: the file itself is written just after the commit
 * point). *len: its bytes, without the stream header. */
static inline uint8_t *ht_applied_image(const char *url, size_t *len)
{
  ht_resp r;
  ht_call("GET", url, NULL, &r);
  assert_int_equal(r.status, 200);
  assert_true(r.len >= LOOM_STREAM_HEADER);
  *len = r.len - LOOM_STREAM_HEADER;
  uint8_t *img = malloc(*len + 1);
  assert_non_null(img);
  memcpy(img, r.body + LOOM_STREAM_HEADER, *len);
  ht_resp_free(&r);
  return img;
}

/* The standby's image bytes now (stop not needed: waits for the apply). */
static inline void ht_assert_image_is(const char *dir, const uint8_t *bytes,
                                      size_t len)
{
  size_t n;
  uint8_t *now = ht_read_image(dir, &n);
  assert_int_equal(n, len);
  if (len)
    assert_memory_equal(now, bytes, len);
  free(now);
}

/* Check an image stream: its pages hash to its header's checksum. */
static inline void ht_check_stream(const uint8_t *s, size_t len,
                                   loom_position *pos)
{
  assert_true(len >= LOOM_STREAM_HEADER);
  assert_int_equal(loom_stream_header_decode(s, pos, NULL), 0);
  assert_int_equal(len, LOOM_STREAM_HEADER + pos->pages * PS);
  uint64_t sum = 0;
  for (uint64_t n = 0; n < pos->pages; n++)
    sum += loom_page_hash(n, s + LOOM_STREAM_HEADER + n * PS);
  assert_int_equal(sum, pos->checksum);
}

#endif /* HTTPTEST_H */
