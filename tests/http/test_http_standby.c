/*
 * test_http_standby.c: the standby server driven over real HTTP (libcurl)
 * on 127.0.0.1: frames from a real primary (a loom arena whose commit hook
 * encodes each commit), duplicates, gaps, tokens, malformed bodies, load
 * bounds, base images, promotion, restart, disk full, coalesced frames,
 * status, metrics and the health checks.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "httptest.h"
#include "iosim.h"

/* ---------------------------------------------------------------------- */
/* Helpers */

/* A raw connection to the server (for slow and idle clients). */
static int raw_connect(ht_server *s)
{
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_port = htons(http_server_port(s->server)),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
  return fd;
}

static void raw_send(int fd, const void *data, size_t len)
{
  assert_int_equal(send(fd, data, len, MSG_NOSIGNAL), (ssize_t)len);
}

/* Has the server closed fd within ms milliseconds? */
static bool raw_closed_within(int fd, int ms)
{
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int64_t until = http_monotonic_ns() + (int64_t)ms * 1000000;
  while (http_monotonic_ns() < until) {
    if (poll(&p, 1, 50) > 0) {
      char buf[4096];
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n <= 0)
        return true;
    }
  }
  return false;
}

/* Send GET /healthz on fd (the connection stays open: HTTP/1.1) and wait
 * up to ms for the answer's status line: proof that the server has
 * accepted fd and holds it. */
static bool raw_healthz_answered(int fd, int ms)
{
  const char *req = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
  raw_send(fd, req, strlen(req));
  char buf[4096];
  size_t have = 0;
  struct pollfd p = {.fd = fd, .events = POLLIN};
  for (int64_t end = test_now_ms() + ms; test_now_ms() < end;) {
    if (poll(&p, 1, 50) <= 0)
      continue;
    ssize_t n = recv(fd, buf + have, sizeof buf - 1 - have, 0);
    if (n <= 0)
      return false;
    have += (size_t)n;
    buf[have] = '\0';
    if (strstr(buf, "\r\n"))
      return strncmp(buf, "HTTP/1.1 200", 12) == 0;
    if (have == sizeof buf - 1)
      return false;
  }
  return false;
}

typedef struct upload_src {
  const uint8_t *data;
  size_t len, pos;
  size_t abort_at;              /* 0: never */
} upload_src;

static size_t upload_read(char *buf, size_t size, size_t n, void *ctx)
{
  upload_src *u = ctx;
  size_t want = size * n;
  if (u->abort_at && u->pos >= u->abort_at)
    return CURL_READFUNC_ABORT;
  size_t left = u->len - u->pos;
  if (u->abort_at && u->abort_at - u->pos < left)
    left = u->abort_at - u->pos;
  if (want > left)
    want = left;
  memcpy(buf, u->data + u->pos, want);
  u->pos += want;
  return want;
}

/* Upload with a read callback: PUT with a known size (or POST chunked
 * when chunked), optionally cut off after abort_at bytes. */
static void upload(const char *method, const char *url, const char *token,
                   const uint8_t *data, size_t len, size_t abort_at,
                   bool chunked, ht_resp *out)
{
  memset(out, 0, sizeof *out);
  out->content_length = -1;
  ht_sink sink = {out, 0};
  upload_src src = {data, len, 0, abort_at};
  struct curl_slist *hdrs;
  char auth[512];
  ht_req req = {.token = token};
  CURL *c = ht_curl("GET", url, &req, out, &sink, &hdrs, auth);
  curl_easy_setopt(c, CURLOPT_READFUNCTION, upload_read);
  curl_easy_setopt(c, CURLOPT_READDATA, &src);
  if (strcmp(method, "PUT") == 0) {
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    if (!chunked)
      curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)len);
  } else {
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    if (!chunked)
      curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
  }
  out->curl_rc = curl_easy_perform(c);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
  curl_easy_cleanup(c);
  curl_slist_free_all(hdrs);
  if (!out->body)
    out->body = xcalloc(1);
}

/* The image stream of the primary's store now (header + pages). */
static uint8_t *primary_stream(ht_primary *p, size_t *len, loom_position *pos)
{
  loom_snapshot *snap;
  pthread_mutex_lock(&p->mu);
  assert_int_equal(loom_store_snapshot_open(loom_get_store(p->l), &snap), 0);
  pthread_mutex_unlock(&p->mu);
  loom_snapshot_position(snap, pos);
  *len = LOOM_STREAM_HEADER + pos->pages * PS;
  uint8_t *s = xmalloc(*len);
  loom_lineage lineage;
  loom_snapshot_lineage(snap, &lineage);
  loom_stream_header_encode(s, pos, &lineage);
  if (pos->pages)
    assert_int_equal(loom_snapshot_read(snap, 0, s + LOOM_STREAM_HEADER,
                                        pos->pages * PS), 0);
  loom_snapshot_close(snap);
  return s;
}

/* POST a heartbeat: the primary (epoch 1) at seq (checksum 77, pages)
 * since commit_ns, made at made_ns. Returns the HTTP status. */
/* A heartbeat of p's history saying it is at seq since commit_ns. */
static long post_heartbeat(ht_server *s, ht_primary *p, uint64_t seq,
                           uint64_t pages, int64_t commit_ns, int64_t made_ns)
{
  replicate_buf hb = {0};
  loom_position latest = {.epoch = 1, .seq = seq, .checksum = 77,
                          .pages = pages, .commit_time_ns = commit_ns};
  loom_history history = ht_primary_history(p);
  assert_int_equal(replicate_frame_encode_heartbeat(&history, &latest, made_ns,
                                                    &hb), 0);
  long status = ht_post_frame(s, &hb, NULL);
  replicate_buf_free(&hb);
  return status;
}

static void post_range(ht_server *s, ht_primary *p, size_t from, size_t to,
                       const char *token)
{
  for (size_t i = from; i < to; i++) {
    long st = ht_post_frame(s, &p->frames[i], token);
    if (st != 200)
      fail_msg("frame %zu: status %ld", i + 1, st);
  }
}

/* ---------------------------------------------------------------------- */
/* Frames */

static void test_frames_in_order(void **state)
{
  (void)state;
  ht_primary p;
  ht_primary_open(&p, 256, 11);
  ht_primary_run(&p, 60);
  char *dir = test_tmpdir("standby");
  ht_server s;
  ht_start_standby(&s, dir);

  /* Each answer carries the positions, received at once. */
  for (size_t i = 0; i < p.nframes; i++) {
    ht_req req = {.body = p.frames[i].data, .body_len = p.frames[i].len};
    ht_resp r;
    ht_call("POST", ht_url(&s, "/v1/frames"), &req, &r);
    assert_int_equal(r.status, 200);
    char want[64];
    snprintf(want, sizeof want, "\"received\":{\"epoch\":1,\"seq\":%zu,", i + 1);
    ht_assert_has(&r, want);
    ht_assert_has(&r, "\"duplicate\":false");
    assert_string_equal(r.content_type, "application/json");
    ht_resp_free(&r);
  }
  ht_wait_applied(&s, p.nframes);
  http_server_status st;
  ht_status(&s, &st);
  assert_int_equal(st.received.seq, p.nframes);
  assert_int_equal(st.frames_received, p.nframes);
  assert_int_equal(st.lag_frames, 0);
  ht_finish_same(&s, &p, dir);
}

static void test_duplicate_and_gap(void **state)
{
  (void)state;
  ht_primary p;
  ht_primary_open(&p, 256, 12);
  ht_primary_run(&p, 12);
  char *dir = test_tmpdir("standby");
  ht_server s;
  ht_start_standby(&s, dir);
  post_range(&s, &p, 0, 5, NULL);
  ht_wait_applied(&s, 5);
  size_t len;
  uint8_t *before = ht_applied_image(ht_url(&s, "/v1/backup"), &len);

  /* A frame already received: 200, the position, nothing changes. */
  ht_req req = {.body = p.frames[2].data, .body_len = p.frames[2].len};
  ht_resp r;
  ht_call("POST", ht_url(&s, "/v1/frames"), &req, &r);
  assert_int_equal(r.status, 200);
  ht_assert_has(&r, "\"duplicate\":true");
  ht_assert_has(&r, "\"received\":{\"epoch\":1,\"seq\":5,");
  ht_resp_free(&r);
  req.body = p.frames[4].data;
  req.body_len = p.frames[4].len;
  ht_call("POST", ht_url(&s, "/v1/frames"), &req, &r);
  assert_int_equal(r.status, 200);
  ht_assert_has(&r, "\"duplicate\":true");
  ht_resp_free(&r);

  /* A gap: 409 with the standby's position. */
  req.body = p.frames[6].data;
  req.body_len = p.frames[6].len;
  ht_call("POST", ht_url(&s, "/v1/frames"), &req, &r);
  assert_int_equal(r.status, 409);
  ht_assert_has(&r, "\"error\":\"gap\"");
  ht_assert_has(&r, "\"received\":{\"epoch\":1,\"seq\":5,");
  ht_assert_has(&r, "\"applied\":{\"epoch\":1,\"seq\":5,");
  ht_resp_free(&r);

  http_server_status st;
  ht_status(&s, &st);
  assert_int_equal(st.received.seq, 5);
  assert_int_equal(st.duplicates, 2);
  ht_assert_image_is(dir, before, len);
  free(before);

  /* The primary resends from there. */
  post_range(&s, &p, 5, p.nframes, NULL);
  ht_wait_applied(&s, p.nframes);
  ht_finish_same(&s, &p, dir);
}

static void test_token(void **state)
{
  (void)state;
  ht_primary p;
  ht_primary_open(&p, 128, 13);
  ht_primary_run(&p, 3);
  char *dir = test_tmpdir("standby");
  ht_server s;
  static const char token[] = "s3cret-token-4f8a";
  http_server_options opt = {.role = HTTP_ROLE_STANDBY, .dir = dir,
                             .token = (const uint8_t *)token,
                             .token_len = strlen(token)};
  ht_start(&s, &opt);

  assert_int_equal(ht_post_frame(&s, &p.frames[0], NULL), 401);
  assert_int_equal(ht_post_frame(&s, &p.frames[0], "s3cret-token-4f8b"), 401);
  assert_int_equal(ht_post_frame(&s, &p.frames[0], "s3cret-token-4f8"), 401);
  assert_int_equal(ht_post_frame(&s, &p.frames[0], "s3cret-token-4f8aa"), 401);
  http_server_status st;
  ht_status(&s, &st);
  assert_int_equal(st.received.seq, 0);
  assert_int_equal(ht_post_frame(&s, &p.frames[0], token), 200);

  ht_resp r;
  ht_call("GET", ht_url(&s, "/v1/backup"), NULL, &r);
  assert_int_equal(r.status, 401);
  ht_assert_has(&r, "\"error\":\"token required\"");
  assert_true(strstr(r.www_authenticate, "Bearer") != NULL);
  ht_resp_free(&r);
  ht_req req = {.token = token};
  ht_call("GET", ht_url(&s, "/v1/backup"), &req, &r);
  assert_int_equal(r.status, 200);
  ht_resp_free(&r);
  ht_call("POST", ht_url(&s, "/v1/promote"), NULL, &r);
  assert_int_equal(r.status, 401);
  ht_resp_free(&r);
  ht_req bad = {.token = "nope"};
  ht_call("PUT", ht_url(&s, "/v1/base"), &bad, &r);
  assert_int_equal(r.status, 401);
  ht_assert_has(&r, "\"error\":\"wrong token\"");
  ht_resp_free(&r);
  /* Reads need no token. */
  ht_call("GET", ht_url(&s, "/v1/status"), NULL, &r);
  assert_int_equal(r.status, 200);
  ht_resp_free(&r);
  ht_call("GET", ht_url(&s, "/metrics"), NULL, &r);
  assert_int_equal(r.status, 200);
  ht_assert_has(&r, "loomship_http_auth_failures_total 7");
  ht_resp_free(&r);

  /* Refusals are logged, without the token. */
  pthread_mutex_lock(&s.log.mu);
  unsigned logged401 = 0;
  for (unsigned i = 0; i < s.log.n && i < 64; i++) {
    if (strstr(s.log.lines[i], "401"))
      logged401++;
    assert_null(strstr(s.log.lines[i], "s3cret"));
    assert_null(strstr(s.log.lines[i], "nope"));
  }
  pthread_mutex_unlock(&s.log.mu);
  assert_int_equal(logged401, 7);

  ht_status(&s, &st);
  assert_int_equal(st.role, HTTP_ROLE_STANDBY);
  ht_stop(&s);
  ht_primary_free(&p);
  test_rmtree(dir);
}

/* ---------------------------------------------------------------------- */
/* Malformed bodies: each refused with its code, the image unchanged. */

typedef struct bad_case {
  const char *what;
  uint8_t *body;
  size_t len;
  long want;
  const char *want_text;        /* in the reply, or NULL */
} bad_case;

static void check_refused(ht_server *s, const bad_case *c)
{
  ht_req req = {.body = c->body ? c->body : (const uint8_t *)"",
                .body_len = c->len};
  ht_resp r;
  ht_call("POST", ht_url(s, "/v1/frames"), &req, &r);
  if (r.status != c->want)
    fail_msg("%s: status %ld, wanted %ld (%s)", c->what, r.status, c->want,
             (const char *)r.body);
  ht_assert_has(&r, "\"error\":");
  if (c->want_text)
    ht_assert_has(&r, c->want_text);
  ht_resp_free(&r);
}

static void test_malformed_bodies(void **state)
{
  (void)state;
  ht_primary p;
  ht_primary_open(&p, 256, 14);
  ht_primary_run(&p, 11);
  char *dir = test_tmpdir("standby");
  ht_server s;
  http_server_options opt = {.role = HTTP_ROLE_STANDBY, .dir = dir,
                             .max_frame_bytes = 1u << 20,
                             .max_frame_pages = 256};
  ht_start(&s, &opt);
  post_range(&s, &p, 0, 10, NULL);
  ht_wait_applied(&s, 10);
  size_t img_len;
  uint8_t *img = ht_applied_image(ht_url(&s, "/v1/backup"), &img_len);
  http_server_status before;
  ht_status(&s, &before);

  const replicate_buf *next = &p.frames[10];
  test_rng rng = {99};
  bad_case c = {0};

  c = (bad_case){"empty", NULL, 0, 400, "REPLICATE_ETRUNCATED"};
  check_refused(&s, &c);
  size_t sizes[] = {1, 17, 127, 128, 129, 4096, 70000};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    c = (bad_case){"random", xmalloc(sizes[i]), sizes[i], 400, NULL};
    rng_fill(&rng, c.body, c.len);
    check_refused(&s, &c);
    free(c.body);
  }
  size_t cuts[] = {1, 64, 127, 128, 129, next->len / 2, next->len - 1};
  for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
    c = (bad_case){"truncated", next->data, cuts[i], 400, NULL};
    check_refused(&s, &c);
  }
  /* Bit flips anywhere: the header checksum or the payload's catches it. */
  uint8_t *flip = xmalloc(next->len);
  for (int i = 0; i < 120; i++) {
    memcpy(flip, next->data, next->len);
    uint64_t off = i < 60 ? rng_below(&rng, REPLICATE_HEADER_SIZE)
                          : rng_below(&rng, next->len);
    flip[off] ^= (uint8_t)(1u << rng_below(&rng, 8));
    c = (bad_case){"bit flip", flip, next->len, 400, NULL};
    check_refused(&s, &c);
  }
  memcpy(flip, next->data, next->len);
  flip[next->len - 1] ^= 0x40;
  c = (bad_case){"payload flip", flip, next->len, 400,
                 "\"code\":\"REPLICATE_EPAYLOAD_CHECKSUM\""};
  check_refused(&s, &c);
  memcpy(flip, next->data, next->len);
  flip[REPLICATE_HEADER_SIZE - 3] ^= 1; /* in the header checksum */
  c = (bad_case){"header flip", flip, next->len, 400,
                 "REPLICATE_EHEADER_CHECKSUM"};
  check_refused(&s, &c);
  free(flip);
  /* Trailing bytes. */
  uint8_t *longer = xmalloc(next->len + 1);
  memcpy(longer, next->data, next->len);
  longer[next->len] = 0;
  c = (bad_case){"trailing", longer, next->len + 1, 400, "REPLICATE_ETRAILING"};
  check_refused(&s, &c);
  free(longer);

  /* Oversized: by Content-Length, at once. */
  c = (bad_case){"oversized", xcalloc(2u << 20), 2u << 20, 413,
                 "\"error\":\"frame too large\""};
  check_refused(&s, &c);
  free(c.body);

  /* zstd bombs. A frame declaring one page whose payload inflates to 2048
   * pages: the decoder refuses it (the zstd content size is checked before
   * decompressing). */
  size_t raw_len = (size_t)2048 * REPLICATE_ENTRY_SIZE;
  uint8_t *raw = xcalloc(raw_len);
  for (uint64_t i = 0; i < 2048; i++)
    forge_entry(raw + i * REPLICATE_ENTRY_SIZE, i, 0, 0, NULL);
  forge_header h = forge_default(1);
  h.before_seq = before.received.seq;
  h.before_checksum = before.received.checksum;
  h.before_pages = before.received.pages;
  h.after_seq = h.before_seq + 1;
  h.after_pages = 4096;
  size_t bomb_len;
  uint8_t *bomb = forge_frame_entries(&h, raw, raw_len, &bomb_len);
  assert_true(bomb_len < 64 * 1024);
  c = (bad_case){"bomb (lying)", bomb, bomb_len, 400, "REPLICATE_EDECOMPRESS"};
  check_refused(&s, &c);
  free(bomb);
  /* The same, declared honestly: over max_frame_pages, 413. */
  h = forge_default(2048);
  h.after_pages = 4096;
  bomb = forge_frame_entries(&h, raw, raw_len, &bomb_len);
  c = (bad_case){"bomb (honest)", bomb, bomb_len, 413, "REPLICATE_ETOOBIG"};
  check_refused(&s, &c);
  free(bomb);
  free(raw);
  /* A header announcing a frame over the cap, the body never sent in full:
   * refused from the header alone. */
  h = forge_default(1);
  h.compressed = 100u << 20;
  uint8_t head[REPLICATE_HEADER_SIZE + 64] = {0};
  forge_write_header(&h, head);
  c = (bad_case){"announced too big", head, sizeof head, 413, NULL};
  check_refused(&s, &c);

  /* Nothing changed. */
  http_server_status after;
  ht_status(&s, &after);
  assert_int_equal(after.received.seq, before.received.seq);
  assert_int_equal(after.applied.checksum, before.applied.checksum);
  ht_assert_image_is(dir, img, img_len);
  free(img);

  /* And the standby still takes the real next frame. */
  assert_int_equal(ht_post_frame(&s, next, NULL), 200);
  ht_wait_applied(&s, 11);
  ht_finish_same(&s, &p, dir);
}

/* A well-formed frame from position at whose one page does not give its
 * after checksum (what a faulty primary could send). Caller frees. */
static uint8_t *forge_frame_with_wrong_after(const loom_history *history,
                                             const loom_position *at,
                                             size_t *len)
{
  uint8_t *entry = xcalloc(REPLICATE_ENTRY_SIZE);
  uint8_t page[PS];
  memset(page, 0x5a, sizeof page);
  forge_entry(entry, 0, loom_page_hash(0, page), 0, page);
  forge_header h = forge_default(1);
  h.before_seq = at->seq;
  h.before_checksum = at->checksum;
  h.before_pages = at->pages;
  h.after_seq = at->seq + 1;
  h.after_pages = at->pages;
  h.after_checksum = 12345;
  memcpy(h.history, history->id, sizeof h.history);
  uint8_t *frame = forge_frame_entries(&h, entry, REPLICATE_ENTRY_SIZE, len);
  free(entry);
  return frame;
}

/* An empty standby directory whose receive log holds frames[0, n) and
 * then extra (if not NULL): frames received durably and never applied. */
static void receive_log_holding(const char *dir, const replicate_buf *frames,
                                size_t n, const void *extra, size_t extra_len)
{
  loom_store *store;
  assert_int_equal(loom_store_open(dir, LOOM_CREATE, NULL, &store), 0);
  assert_int_equal(loom_store_close(store), 0);
  replicate_log *log;
  assert_int_equal(replicate_log_open(dir, NULL, NULL, &log), 0);
  for (size_t i = 0; i < n; i++)
    assert_int_equal(replicate_log_append(log, frames[i].data, frames[i].len), 0);
  if (extra)
    assert_int_equal(replicate_log_append(log, extra, extra_len), 0);
  assert_int_equal(replicate_log_close(log), 0);
}

/* A well-formed frame whose pages do not give its after checksum (a faulty
 * primary): received, fails to apply, and the standby falls back to its
 * applied position; the real frame is then taken. */
static void test_frame_that_does_not_apply(void **state)
{
  (void)state;
  ht_primary p;
  ht_primary_open(&p, 128, 15);
  ht_primary_run(&p, 6);
  char *dir = test_tmpdir("standby");
  ht_server s;
  ht_start_standby(&s, dir);
  post_range(&s, &p, 0, 5, NULL);
  ht_wait_applied(&s, 5);
  http_server_status st;
  ht_status(&s, &st);

  size_t len;
  loom_history history = ht_primary_history(&p);
  uint8_t *bad = forge_frame_with_wrong_after(&history, &st.received, &len);
  replicate_buf b = {bad, len, len};
  assert_int_equal(ht_post_frame(&s, &b, NULL), 200);
  for (int i = 0; i < 400; i++) {
    ht_status(&s, &st);
    if (st.last_apply_error)
      break;
    test_pause_ms(5);
  }
  assert_int_equal(st.last_apply_error, REPLICATE_EAFTER_CHECKSUM);
  assert_false(st.ready);
  ht_resp r;
  ht_call("GET", ht_url(&s, "/readyz"), NULL, &r);
  assert_int_equal(r.status, 503);
  ht_resp_free(&r);
  free(bad);

  assert_int_equal(ht_post_frame(&s, &p.frames[5], NULL), 200);
  ht_wait_applied(&s, 6);
  ht_finish_same(&s, &p, dir);
}

/* ---------------------------------------------------------------------- */
/* Load bounds */

static void test_upload_limit(void **state)
{
  (void)state;
  ht_primary p;
  ht_primary_open(&p, 128, 16);
  ht_primary_run(&p, 2);
  char *dir = test_tmpdir("standby");
  ht_server s;
  http_server_options opt = {.role = HTTP_ROLE_STANDBY, .dir = dir,
                             .max_uploads = 1};
  ht_start(&s, &opt);

  /* A slow client holds the only upload slot. */
  int fd = raw_connect(&s);
  const char *head = "POST /v1/frames HTTP/1.1\r\nHost: x\r\n"
                     "Content-Length: 100000\r\n\r\n";
  raw_send(fd, head, strlen(head));
  raw_send(fd, "0123456789", 10);
  TEST_WAIT_UNTIL(ht_metric(&s, "loomship_http_uploads_in_progress") == 1, 5000);
  assert_true(ht_metric(&s, "loomship_http_uploads_in_progress") == 1);
  ht_req req = {.body = p.frames[0].data, .body_len = p.frames[0].len};
  ht_resp r;
  ht_call("POST", ht_url(&s, "/v1/frames"), &req, &r);
  assert_int_equal(r.status, 503);
  assert_string_equal(r.retry_after, "1");
  ht_assert_has(&r, "too many uploads");
  ht_resp_free(&r);
  /* Reads are not uploads. */
  ht_call("GET", ht_url(&s, "/healthz"), NULL, &r);
  assert_int_equal(r.status, 200);
  ht_assert_has(&r, "\"status\":\"ok\"");
  ht_resp_free(&r);
  close(fd);
  TEST_WAIT_UNTIL(ht_metric(&s, "loomship_http_uploads_in_progress") == 0, 5000); /* the slot is back */
  assert_int_equal(ht_post_frame(&s, &p.frames[0], NULL), 200);

  /* Clients that stop sending mid-body (half-open connections) give their
   * slots back after upload_stall_seconds, not the idle timeout: a real
   * frame gets through within seconds. */
  ht_stop(&s);
  opt = (http_server_options){.role = HTTP_ROLE_STANDBY, .dir = dir,
                              .max_uploads = 2, .upload_stall_seconds = 1,
                              .connection_timeout_seconds = 30};
  ht_start(&s, &opt);
  int stalled[2];
  for (int i = 0; i < 2; i++) {
    stalled[i] = raw_connect(&s);
    raw_send(stalled[i], head, strlen(head));
    raw_send(stalled[i], "0123456789", 10);
  }
  /* The first holds a slot (the other waits for the last one, kept for a
   * frame whose header proves valid: not counted). */
  TEST_WAIT_UNTIL(ht_metric(&s, "loomship_http_uploads_in_progress") == 1, 5000);
  assert_true(ht_metric(&s, "loomship_http_uploads_in_progress") == 1);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int status = 0;
  for (int tries = 0; tries < 100 && status != 200; tries++) {
    status = ht_post_frame(&s, &p.frames[1], NULL);
    if (status != 200)
      test_pause_ms(100);
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double waited = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  assert_int_equal(status, 200);
  assert_true(waited < 5.0); /* the idle timeout would be 30 s */
  for (int i = 0; i < 2; i++)
    close(stalled[i]);

  /* A chunked body over the cap: refused once the bytes say so, by closing
   * the connection (no Content-Length to read the rest to). */
  ht_stop(&s);
  opt = (http_server_options){.role = HTTP_ROLE_STANDBY, .dir = dir,
                              .max_frame_bytes = 256 * 1024};
  ht_start(&s, &opt);
  /* (A real frame's header, so the header check passes, then too much.) */
  uint8_t *big = xcalloc(1u << 20);
  memcpy(big, p.frames[1].data, p.frames[1].len);
  upload("POST", ht_url(&s, "/v1/frames"), NULL, big, 1u << 20, 0, true, &r);
  assert_int_not_equal(r.curl_rc, CURLE_OK);
  assert_int_not_equal(r.status, 200);
  ht_resp_free(&r);
  free(big);
  /* A real frame sent chunked is fine. */
  upload("POST", ht_url(&s, "/v1/frames"), NULL, p.frames[1].data,
         p.frames[1].len, 0, true, &r);
  assert_int_equal(r.status, 200);
  ht_resp_free(&r);
  ht_stop(&s);
  ht_primary_free(&p);
  test_rmtree(dir);
}

/* Does /healthz answer 200 within ms (the server releases a closed
 * connection's slot a moment after it sees the close)? */
static bool healthz_within(ht_server *s, int ms)
{
  for (int waited = 0; waited < ms; waited += 50) {
    ht_resp r;
    ht_call("GET", ht_url(s, "/healthz"), NULL, &r);
    bool ok = r.curl_rc == CURLE_OK && r.status == 200;
    ht_resp_free(&r);
    if (ok)
      return true;
    test_pause_ms(50);
  }
  return false;
}

static void test_connection_limits(void **state)
{
  (void)state;
  char *dir = test_tmpdir("standby");
  ht_server s;
  http_server_options opt = {.role = HTTP_ROLE_STANDBY, .dir = dir,
                             .connection_timeout_seconds = 1,
                             .per_ip_connection_limit = 2};
  ht_start(&s, &opt);
  /* An idle connection is closed after the timeout. */
  int idle = raw_connect(&s);
  assert_true(raw_closed_within(idle, 4000));
  close(idle);

  /* Two connections from one address at most. (The server may count the
   * idle one a little longer: reconnect until both are held.) */
  int a = raw_connect(&s), b = raw_connect(&s);
  for (int i = 0; i < 20; i++) {
    bool a_gone = raw_closed_within(a, 50), b_gone = raw_closed_within(b, 50);
    if (!a_gone && !b_gone)
      break;
    if (a_gone) {
      close(a);
      a = raw_connect(&s);
    }
    if (b_gone) {
      close(b);
      b = raw_connect(&s);
    }
  }
  ht_resp r;
  ht_call("GET", ht_url(&s, "/healthz"), NULL, &r);
  assert_int_not_equal(r.curl_rc, CURLE_OK);
  ht_resp_free(&r);
  close(a);
  close(b);
  assert_true(healthz_within(&s, 3000));
  ht_stop(&s);

  opt = (http_server_options){.role = HTTP_ROLE_STANDBY, .dir = dir,
                              .connection_limit = 1};
  ht_start(&s, &opt);
  a = raw_connect(&s);
  assert_true(raw_healthz_answered(a, 3000)); /* the server holds a */
  ht_call("GET", ht_url(&s, "/healthz"), NULL, &r);
  assert_int_not_equal(r.curl_rc, CURLE_OK);
  ht_resp_free(&r);
  close(a);
  assert_true(healthz_within(&s, 3000));
  ht_stop(&s);
  test_rmtree(dir);
}

/* ---------------------------------------------------------------------- */
/* Base images */

static void test_base_image(void **state)
{
  (void)state;
  ht_primary p;
  ht_primary_open(&p, 256, 17);
  ht_primary_run(&p, 20);
  size_t slen;
  loom_position spos;
  uint8_t *stream = primary_stream(&p, &slen, &spos);
  assert_int_equal(spos.seq, 20);
  ht_primary_run(&p, 10);
  size_t slen2;
  loom_position spos2;
  uint8_t *stream2 = primary_stream(&p, &slen2, &spos2);

  char *dir = test_tmpdir("standby");
  ht_server s;
  ht_start_standby(&s, dir);
  /* A frame the fresh standby cannot take: it needs a base. */
  assert_int_equal(ht_post_frame(&s, &p.frames[20], NULL), 409);

  ht_resp r;
  upload("PUT", ht_url(&s, "/v1/base"), NULL, stream, slen, 0, false, &r);
  assert_int_equal(r.status, 200);
  ht_assert_has(&r, "\"applied\":{\"epoch\":1,\"seq\":20,");
  ht_resp_free(&r);
  http_server_status st;
  ht_status(&s, &st);
  assert_int_equal(st.applied.seq, 20);
  assert_int_equal(st.received.seq, 20);
  assert_int_equal(st.applied.checksum, spos.checksum);
  ht_assert_image_is(dir, stream + LOOM_STREAM_HEADER,
                     slen - LOOM_STREAM_HEADER);

  /* Refused bases leave the image as it is. */
  uint8_t *bad = xmalloc(slen2);
  memcpy(bad, stream2, slen2);
  bad[LOOM_STREAM_HEADER + PS + 100] ^= 1;
  upload("PUT", ht_url(&s, "/v1/base"), NULL, bad, slen2, 0, false, &r);
  assert_int_equal(r.status, 400);
  ht_assert_has(&r, "checksum");
  ht_resp_free(&r);
  memcpy(bad, stream2, slen2);
  bad[3] ^= 1;
  upload("PUT", ht_url(&s, "/v1/base"), NULL, bad, slen2, 0, false, &r);
  assert_int_equal(r.status, 400);
  ht_assert_has(&r, "malformed image stream header");
  ht_resp_free(&r);
  upload("PUT", ht_url(&s, "/v1/base"), NULL, stream2, slen2 - 100, 0, false,
         &r);
  assert_int_equal(r.status, 400);
  ht_resp_free(&r);
  upload("PUT", ht_url(&s, "/v1/base"), NULL, stream2, slen2 - 100, 0, true,
         &r);
  assert_int_equal(r.status, 400);
  ht_assert_has(&r, "truncated image stream");
  ht_resp_free(&r);
  upload("PUT", ht_url(&s, "/v1/base"), NULL, stream2, LOOM_STREAM_HEADER / 2,
         0, true, &r);
  assert_int_equal(r.status, 400);
  ht_resp_free(&r);
  free(bad);
  uint8_t *more = xcalloc(slen2 + PS);
  memcpy(more, stream2, slen2);
  /* Chunked, past the image's last page: closed, not read on. */
  upload("PUT", ht_url(&s, "/v1/base"), NULL, more, slen2 + PS, 0, true, &r);
  assert_int_not_equal(r.curl_rc, CURLE_OK);
  assert_int_not_equal(r.status, 200);
  ht_resp_free(&r);
  /* With a Content-Length, the same is read to its end and answered. */
  upload("PUT", ht_url(&s, "/v1/base"), NULL, more, slen2 + PS, 0, false, &r);
  assert_int_equal(r.status, 400);
  ht_resp_free(&r);
  free(more);
  /* Cut off in the middle of the transfer. */
  upload("PUT", ht_url(&s, "/v1/base"), NULL, stream2, slen2, slen2 / 2, false,
         &r);
  assert_int_not_equal(r.curl_rc, CURLE_OK);
  ht_resp_free(&r);
  for (int i = 0; i < 200; i++) {
    ht_status(&s, &st);
    if (!st.replay_paused)
      break;
    test_pause_ms(10);
  }
  assert_false(st.replay_paused);
  assert_int_equal(st.applied.seq, 20);
  ht_assert_image_is(dir, stream + LOOM_STREAM_HEADER,
                     slen - LOOM_STREAM_HEADER);

  /* Frames continue from the base. */
  post_range(&s, &p, 20, 30, NULL);
  ht_wait_applied(&s, 30);
  ht_stop(&s);
  ht_primary_close(&p);
  ht_assert_same_image(p.dir, dir);

  /* A base on a standby that already has frames replaces its image. */
  char *dir2 = test_tmpdir("standby2");
  ht_start_standby(&s, dir2);
  post_range(&s, &p, 0, 3, NULL);
  upload("PUT", ht_url(&s, "/v1/base"), NULL, stream2, slen2, 0, false, &r);
  assert_int_equal(r.status, 200);
  ht_resp_free(&r);
  ht_stop(&s);
  ht_assert_same_image(p.dir, dir2);

  /* An image over max_image_pages: 413, by Content-Length or by header
   * (chunked: the connection is closed instead). */
  http_server_options small = {.role = HTTP_ROLE_STANDBY, .dir = dir2,
                               .max_image_pages = 2};
  ht_start(&s, &small);
  upload("PUT", ht_url(&s, "/v1/base"), NULL, stream2, slen2, 0, false, &r);
  assert_int_equal(r.status, 413);
  ht_assert_has(&r, "\"error\":\"image too large\"");
  ht_resp_free(&r);
  /* (chunked: refused by the header, then closed, not read on) */
  upload("PUT", ht_url(&s, "/v1/base"), NULL, stream2, slen2, 0, true, &r);
  assert_int_not_equal(r.curl_rc, CURLE_OK);
  assert_int_not_equal(r.status, 200);
  ht_resp_free(&r);
  ht_stop(&s);
  ht_assert_same_image(p.dir, dir2);

  free(stream);
  free(stream2);
  ht_primary_free(&p);
  test_rmtree(dir);
  test_rmtree(dir2);
}

/* ---------------------------------------------------------------------- */
/* Promotion */

static void test_promote(void **state)
{
  (void)state;
  ht_primary p;
  ht_primary_open(&p, 128, 18);
  ht_primary_run(&p, 8);
  char *dir = test_tmpdir("standby");
  ht_server s;
  ht_start_standby(&s, dir);
  post_range(&s, &p, 0, 5, NULL);

  ht_resp r;
  ht_call("POST", ht_url(&s, "/v1/promote"), NULL, &r);
  assert_int_equal(r.status, 200);
  ht_assert_has(&r, "\"role\":\"primary\"");
  ht_assert_has(&r, "\"epoch\":2");
  ht_assert_has(&r, "\"applied\":{\"epoch\":2,\"seq\":5,");
  ht_resp_free(&r);
  http_server_status st;
  ht_status(&s, &st);
  assert_int_equal(st.role, HTTP_ROLE_PRIMARY);
  assert_int_equal(st.applied.epoch, 2);
  assert_int_equal(st.applied.seq, 5);

  /* The old primary's frames and heartbeats: 409 stale epoch. */
  ht_req req = {.body = p.frames[5].data, .body_len = p.frames[5].len};
  ht_call("POST", ht_url(&s, "/v1/frames"), &req, &r);
  assert_int_equal(r.status, 409);
  ht_assert_has(&r, "\"error\":\"stale epoch\"");
  ht_assert_has(&r, "\"frame_epoch\":1");
  ht_assert_has(&r, "\"epoch\":2");
  ht_resp_free(&r);
  assert_int_equal(ht_post_frame(&s, &p.frames[2], NULL), 409);
  replicate_buf hb = {0};
  loom_position latest = {.epoch = 1, .seq = 8, .checksum = 1, .pages = 1,
                          .commit_time_ns = 1};
  loom_history history = ht_primary_history(&p);
  assert_int_equal(replicate_frame_encode_heartbeat(&history, &latest, 2, &hb), 0);
  assert_int_equal(ht_post_frame(&s, &hb, NULL), 409);
  replicate_buf_free(&hb);

  ht_call("POST", ht_url(&s, "/v1/promote"), NULL, &r);
  assert_int_equal(r.status, 409);
  ht_assert_has(&r, "already primary");
  ht_resp_free(&r);
  ht_call("GET", ht_url(&s, "/v1/status"), NULL, &r);
  assert_int_equal(r.status, 200);
  ht_assert_has(&r, "\"role\":\"primary\"");
  ht_assert_has(&r, "\"epoch\":2");
  ht_assert_has(&r, "\"fenced\":false");
  ht_assert_has(&r, "\"standbys\":[]");
  ht_resp_free(&r);
  ht_call("GET", ht_url(&s, "/readyz"), NULL, &r);
  assert_int_equal(r.status, 200);
  ht_resp_free(&r);
  /* A backup of the promoted node carries the new epoch. */
  ht_call("GET", ht_url(&s, "/v1/backup"), NULL, &r);
  assert_int_equal(r.status, 200);
  loom_position bpos;
  ht_check_stream(r.body, r.len, &bpos);
  assert_int_equal(bpos.epoch, 2);
  assert_int_equal(bpos.seq, 5);
  ht_resp_free(&r);
  ht_stop(&s);

  /* Durable: the epoch survives a restart, and the old frames stay out. */
  loom_position pos;
  assert_int_equal(loom_inspect(dir, &pos), 0);
  assert_int_equal(pos.epoch, 2);
  assert_int_equal(pos.seq, 5);
  ht_start_standby(&s, dir);
  req.body = p.frames[5].data;
  req.body_len = p.frames[5].len;
  ht_call("POST", ht_url(&s, "/v1/frames"), &req, &r);
  assert_int_equal(r.status, 409);
  ht_assert_has(&r, "\"error\":\"stale epoch\"");
  ht_resp_free(&r);
  /* And so is a base image of the old epoch. */
  size_t slen;
  loom_position spos;
  uint8_t *stream = primary_stream(&p, &slen, &spos);
  assert_int_equal(spos.epoch, 1);
  upload("PUT", ht_url(&s, "/v1/base"), NULL, stream, slen, 0, false, &r);
  assert_int_equal(r.status, 409);
  ht_assert_has(&r, "\"error\":\"stale epoch\"");
  ht_assert_has(&r, "\"image_epoch\":1");
  ht_resp_free(&r);
  free(stream);
  ht_stop(&s);
  assert_int_equal(loom_inspect(dir, &pos), 0);
  assert_int_equal(pos.epoch, 2);
  assert_int_equal(pos.seq, 5);
  ht_primary_free(&p);
  test_rmtree(dir);
}

/* A cluster member: promotion goes through etcd (409 CLUSTER_MEMBER, the
 * node stays a standby); status shows "cluster" and "rewound", metrics
 * the loomship_cluster_* gauges, as the member's source says. */
static void cluster_source_get(void *ctx, http_cluster_status *c)
{
  (void)ctx;
  snprintf(c->name, sizeof c->name, "loomship");
  snprintf(c->member, sizeof c->member, "n2");
  snprintf(c->leader, sizeof c->leader, "n1");
  snprintf(c->leader_url, sizeof c->leader_url, "http://127.0.0.1:9");
  c->epoch = 4;
  c->lease_ttl = 3;
  c->etcd_ok = true;
  c->sync_count = 1;
  snprintf(c->sync_set[0], sizeof c->sync_set[0], "n2");
  c->member_count = 1;
  snprintf(c->members[0].name, sizeof c->members[0].name, "n1");
  c->members[0].leader = true;
  c->members[0].epoch = 4;
  c->members[0].received_seq = 7;
  snprintf(c->members[0].state, sizeof c->members[0].state, "streaming");
  c->lease_remaining_seconds = 2.5;
  c->elections_total = 1;
  c->rewound = true;
  c->rewound_frames = 3;
  c->rewound_from_seq = 12;
  c->rewound_at_ns = INT64_C(1700000000000000000);
  c->rewound_pages = 5;
  c->rewound_image_pages = 40;
}

static void test_cluster_member(void **state)
{
  (void)state;
  ht_primary p;
  ht_primary_open(&p, 128, 18);
  ht_primary_run(&p, 4);
  char *dir = test_tmpdir("member");
  ht_server s;
  http_cluster_source src = {.get = cluster_source_get};
  http_server_options opt = {.role = HTTP_ROLE_STANDBY, .dir = dir, .cluster = &src};
  ht_start(&s, &opt);
  post_range(&s, &p, 0, 4, NULL);
  ht_resp r;
  ht_call("POST", ht_url(&s, "/v1/promote"), NULL, &r);
  assert_int_equal(r.status, 409);
  ht_assert_has(&r, "\"code\":\"CLUSTER_MEMBER\"");
  ht_resp_free(&r);
  ht_call("POST", ht_url(&s, "/v1/promote?force=1"), NULL, &r);
  assert_int_equal(r.status, 409);
  ht_resp_free(&r);
  http_server_status st;
  ht_status(&s, &st);
  assert_int_equal(st.role, HTTP_ROLE_STANDBY);

  ht_call("GET", ht_url(&s, "/v1/status"), NULL, &r);
  assert_int_equal(r.status, 200);
  ht_assert_has(&r, "\"cluster\":{\"name\":\"loomship\",\"member\":\"n2\","
                    "\"leader\":\"n1\",\"leader_url\":\"http://127.0.0.1:9\","
                    "\"epoch\":4,\"lease_ttl\":3,\"etcd\":\"ok\","
                    "\"etcd_error\":null,\"sync_set\":[\"n2\"],\"members\":[{\"name\":\"n1\",");
  ht_assert_has(&r, "\"role\":\"leader\",\"epoch\":4,\"received_seq\":7,");
  ht_assert_has(&r, "\"rewound\":{\"frames\":3,\"from_seq\":12,\"at\":\"2023-");
  ht_assert_has(&r, "\"pages\":5,\"image_pages\":40}");
  ht_resp_free(&r);
  ht_call("GET", ht_url(&s, "/metrics"), NULL, &r);
  assert_int_equal(r.status, 200);
  ht_assert_has(&r, "loomship_cluster_is_leader 0\n");
  ht_assert_has(&r, "loomship_cluster_epoch 4\n");
  ht_assert_has(&r, "loomship_cluster_lease_remaining_seconds 2.5");
  ht_assert_has(&r, "loomship_cluster_etcd_up 1\n");
  ht_assert_has(&r, "loomship_cluster_elections_total 1\n");
  ht_assert_has(&r, "loomship_cluster_self_fence_total 0\n");
  ht_assert_has(&r, "loomship_cluster_rewound_pages 5\n");
  ht_assert_has(&r, "loomship_cluster_rewound_image_pages 40\n");
  ht_resp_free(&r);
  ht_stop(&s);

  /* Not a member: no "cluster" key, no cluster gauges. */
  ht_start_standby(&s, dir);
  ht_call("GET", ht_url(&s, "/v1/status"), NULL, &r);
  assert_null(strstr((const char *)r.body, "\"cluster\""));
  ht_resp_free(&r);
  ht_call("GET", ht_url(&s, "/metrics"), NULL, &r);
  assert_null(strstr((const char *)r.body, "loomship_cluster_"));
  ht_resp_free(&r);
  ht_stop(&s);
  ht_primary_free(&p);
  test_rmtree(dir);
}

/* ---------------------------------------------------------------------- */
/* Restart, recovery, disk full, graceful stop, coalesced frames */

static void test_restart_and_recovery(void **state)
{
  (void)state;
  ht_primary p;
  ht_primary_open(&p, 256, 19);
  ht_primary_run(&p, 16);
  char *dir = test_tmpdir("standby");
  ht_server s;
  ht_start_standby(&s, dir);
  post_range(&s, &p, 0, 10, NULL);
  ht_stop(&s);
  ht_start_standby(&s, dir);
  http_server_status st;
  ht_status(&s, &st);
  assert_int_equal(st.received.seq, 10);
  assert_int_equal(st.applied.seq, 10);
  post_range(&s, &p, 10, 16, NULL);
  ht_wait_applied(&s, 16);
  ht_stop(&s);
  ht_primary_close(&p);
  ht_assert_same_image(p.dir, dir);

  /* Frames durable in the receive log but never applied (a standby killed
   * right after answering): applied on the next start. */
  char *dir2 = test_tmpdir("standby2");
  receive_log_holding(dir2, p.frames, 16, NULL, 0);
  ht_start_standby(&s, dir2);
  ht_status(&s, &st);
  assert_int_equal(st.received.seq, 16);
  ht_wait_applied(&s, 16);
  /* All 16 waited together: merged into one commit (group apply). */
  ht_status(&s, &st);
  assert_int_equal(st.frames_applied, 16);
  assert_int_equal(st.apply_commits, 1);
  ht_stop(&s);
  ht_assert_same_image(p.dir, dir2);
  ht_primary_free(&p);
  test_rmtree(dir);
  test_rmtree(dir2);
}

/* A damaged older segment in the receive log (here each frame has a
 * segment of its own): the standby starts anyway, logs which file it
 * dropped, and takes the frames again from the primary (the store is the
 * truth: nothing committed was lost). */
static void test_damaged_receive_log(void **state)
{
  (void)state;
  ht_primary p;
  ht_primary_open(&p, 128, 29);
  ht_primary_run(&p, 8);
  char *dir = test_tmpdir("standby");
  loom_store *store;
  assert_int_equal(loom_store_open(dir, LOOM_CREATE, NULL, &store), 0);
  assert_int_equal(loom_store_close(store), 0);
  replicate_log_options lo = {.segment_bytes = 1};
  replicate_log *log;
  assert_int_equal(replicate_log_open(dir, &lo, NULL, &log), 0);
  for (size_t i = 0; i < 8; i++)
    assert_int_equal(replicate_log_append(log, p.frames[i].data, p.frames[i].len), 0);
  assert_int_equal(replicate_log_close(log), 0);
  char seg[512];
  snprintf(seg, sizeof seg, "%s/replog/seg-%020d.log", dir, 3);
  int fd = open(seg, O_RDWR);
  assert_true(fd >= 0);
  uint8_t b = 0;
  assert_int_equal(pread(fd, &b, 1, 100), 1);
  b ^= 0x40;
  assert_int_equal(pwrite(fd, &b, 1, 100), 1);
  close(fd);

  ht_server s;
  ht_start_standby(&s, dir);
  bool said = false;
  pthread_mutex_lock(&s.log.mu);
  for (unsigned i = 0; i < s.log.n && i < 64; i++)
    said |= strstr(s.log.lines[i], "receive log repaired: replog/seg-00000000000000000003.log: "
                                   "damaged") != NULL;
  pthread_mutex_unlock(&s.log.mu);
  assert_true(said);
  post_range(&s, &p, 0, p.nframes, NULL);
  ht_wait_applied(&s, p.nframes);
  ht_finish_same(&s, &p, dir);
}

/* Group apply with a bad frame among those merged (its pages do not give
 * its after checksum): the merged commit fails, the frames are then taken
 * one at a time, so the good ones before it are applied and the bad one
 * alone is refused; the primary's real frame then takes its place. */
static void test_merged_apply_with_a_bad_frame(void **state)
{
  (void)state;
  ht_primary p;
  ht_primary_open(&p, 128, 23);
  ht_primary_run(&p, 8);
  loom_position at5;
  {
    /* The position after frame 5, from a standby fed frames 1..5. */
    char *tmp = test_tmpdir("standby-ref");
    ht_server s;
    ht_start_standby(&s, tmp);
    post_range(&s, &p, 0, 5, NULL);
    ht_wait_applied(&s, 5);
    http_server_status st;
    ht_status(&s, &st);
    at5 = st.applied;
    ht_stop(&s);
    test_rmtree(tmp);
  }
  size_t len;
  loom_history history = ht_primary_history(&p);
  uint8_t *bad = forge_frame_with_wrong_after(&history, &at5, &len);

  /* Frames 1..5 and the bad sixth wait in the receive log of a standby
   * that has applied nothing: its applier merges all six at start. */
  char *dir = test_tmpdir("standby");
  receive_log_holding(dir, p.frames, 5, bad, len);
  free(bad);

  ht_server s;
  ht_start_standby(&s, dir);
  http_server_status st;
  for (int i = 0; i < 400; i++) {
    ht_status(&s, &st);
    if (st.last_apply_error && st.applied.seq == 5)
      break;
    test_pause_ms(5);
  }
  assert_int_equal(st.received.seq, 6);
  assert_int_equal(st.applied.seq, 5);
  assert_int_equal(st.frames_applied, 5);
  assert_int_equal(st.last_apply_error, REPLICATE_EAFTER_CHECKSUM);

  /* The real sixth frame replaces it; the rest follow, merged or not. */
  assert_int_equal(ht_post_frame(&s, &p.frames[5], NULL), 200);
  post_range(&s, &p, 6, p.nframes, NULL);
  ht_wait_applied(&s, p.nframes);
  ht_finish_same(&s, &p, dir);
}

static void test_disk_full(void **state)
{
  (void)state;
  ht_primary p;
  ht_primary_open(&p, 128, 20);
  ht_primary_run(&p, 8);
  char *dir = test_tmpdir("standby");
  iosim *sim;
  assert_int_equal(iosim_create(NULL, &sim), 0);
  ht_server s;
  http_server_options opt = {.role = HTTP_ROLE_STANDBY, .dir = dir,
                             .io = iosim_io(sim)};
  ht_start(&s, &opt);
  post_range(&s, &p, 0, 5, NULL);
  ht_wait_applied(&s, 5);
  size_t img_len;
  uint8_t *img = ht_applied_image(ht_url(&s, "/v1/backup"), &img_len);

  /* The next write fails: the disk is full. */
  iosim_fault f = {.kind = IOSIM_FAIL, .err = ENOSPC, .by_type = 1,
                   .op = LOOM_IO_PWRITE,
                   .index = iosim_count_op(sim, LOOM_IO_PWRITE)};
  assert_int_equal(iosim_fault_add(sim, &f), 0);
  ht_req req = {.body = p.frames[5].data, .body_len = p.frames[5].len};
  ht_resp r;
  ht_call("POST", ht_url(&s, "/v1/frames"), &req, &r);
  assert_int_equal(r.status, 507);
  ht_assert_has(&r, "\"error\":\"disk full\"");
  ht_assert_has(&r, "\"received\":{\"epoch\":1,\"seq\":5,");
  ht_resp_free(&r);
  assert_true(iosim_faults_injected(sim) >= 1);
  http_server_status st;
  ht_status(&s, &st);
  assert_int_equal(st.received.seq, 5);
  ht_assert_image_is(dir, img, img_len);
  free(img);

  /* Another I/O error: 500, nothing received. */
  f = (iosim_fault){.kind = IOSIM_FAIL, .err = EIO, .by_type = 1,
                    .op = LOOM_IO_PWRITE,
                    .index = iosim_count_op(sim, LOOM_IO_PWRITE)};
  assert_int_equal(iosim_fault_add(sim, &f), 0);
  ht_call("POST", ht_url(&s, "/v1/frames"), &req, &r);
  assert_int_equal(r.status, 500);
  ht_assert_has(&r, "\"code\":\"EIO\"");
  ht_resp_free(&r);
  ht_status(&s, &st);
  assert_int_equal(st.received.seq, 5);

  /* Space again: the same frame goes through, nothing was lost. */
  post_range(&s, &p, 5, 8, NULL);
  ht_wait_applied(&s, 8);
  ht_stop(&s);
  iosim_destroy(sim);
  ht_primary_close(&p);
  ht_assert_same_image(p.dir, dir);
  ht_primary_free(&p);
  test_rmtree(dir);
}

static void test_graceful_stop(void **state)
{
  (void)state;
  ht_primary p;
  ht_primary_open(&p, 512, 21);
  for (int i = 0; i < 40; i++)
    ht_primary_commit(&p, 40, 200);
  char *dir = test_tmpdir("standby");
  ht_server s;
  ht_start_standby(&s, dir);
  post_range(&s, &p, 0, 40, NULL);
  /* Stop at once: everything received is applied before stop returns. */
  ht_finish_same(&s, &p, dir);
}

/* The primary's frames [from, to) merged into one, in *out. */
static void merge_frames(ht_primary *p, size_t from, size_t to,
                         replicate_buf *out)
{
  replicate_decoder *dec;
  replicate_coalescer *co;
  assert_int_equal(replicate_decoder_new(NULL, &dec), 0);
  assert_int_equal(replicate_coalescer_new(0, &co), 0);
  for (size_t i = from; i < to; i++) {
    replicate_frame f;
    assert_int_equal(replicate_frame_decode(dec, p->frames[i].data,
                                            p->frames[i].len, &f), 0);
    assert_int_equal(replicate_coalescer_add(co, &f), 0);
  }
  assert_int_equal(replicate_coalescer_finish(co, p->enc, out), 0);
  replicate_coalescer_free(co);
  replicate_decoder_free(dec);
}

static void test_coalesced_frame(void **state)
{
  (void)state;
  ht_primary p;
  ht_primary_open(&p, 256, 22);
  ht_primary_run(&p, 20);
  replicate_buf merged = {0};
  merge_frames(&p, 5, 12, &merged);

  char *dir = test_tmpdir("standby");
  ht_server s;
  ht_start_standby(&s, dir);
  post_range(&s, &p, 0, 5, NULL);
  ht_req req = {.body = merged.data, .body_len = merged.len};
  ht_resp r;
  ht_call("POST", ht_url(&s, "/v1/frames"), &req, &r);
  assert_int_equal(r.status, 200);
  ht_assert_has(&r, "\"applied\":{\"epoch\":1,\"seq\":12,");
  ht_resp_free(&r);
  /* Again: a duplicate. */
  ht_call("POST", ht_url(&s, "/v1/frames"), &req, &r);
  assert_int_equal(r.status, 200);
  ht_assert_has(&r, "\"duplicate\":true");
  ht_resp_free(&r);
  post_range(&s, &p, 12, 20, NULL);
  ht_wait_applied(&s, 20);
  ht_stop(&s);
  /* And after a restart the receive log is consistent. */
  ht_start_standby(&s, dir);
  http_server_status st;
  ht_status(&s, &st);
  assert_int_equal(st.received.seq, 20);
  ht_stop(&s);
  ht_primary_close(&p);
  ht_assert_same_image(p.dir, dir);
  replicate_buf_free(&merged);
  ht_primary_free(&p);
  test_rmtree(dir);
}

/* Input that would move a standby backwards or sideways is refused, and
 * the standby says so (DESIGN section 3): frames and heartbeats of another
 * history, a base image of another history, a base image below its seq,
 * another checksum at a seq it holds. Its image never changes. */
static void test_never_backwards_or_sideways(void **state)
{
  (void)state;
  ht_primary p, other;
  ht_primary_open(&p, 128, 41);
  ht_primary_run(&p, 12);
  ht_primary_open(&other, 128, 42); /* another directory: another history */
  ht_primary_run(&other, 20);
  size_t old_len, other_len;
  loom_position old_pos, other_pos;
  char *dir = test_tmpdir("standby");
  ht_server s;
  ht_start_standby(&s, dir);
  post_range(&s, &p, 0, 6, NULL);
  uint8_t *older = primary_stream(&p, &old_len, &old_pos); /* seq 12 */
  (void)older;
  post_range(&s, &p, 6, 12, NULL);
  ht_wait_applied(&s, 12);
  http_server_status before;
  ht_status(&s, &before);
  assert_int_equal(before.diverged, 0);

  /* Another history's frame (its seq 13 would even follow ours). */
  ht_resp r;
  ht_req req = {.body = other.frames[12].data, .body_len = other.frames[12].len};
  ht_call("POST", ht_url(&s, "/v1/frames"), &req, &r);
  assert_int_equal(r.status, 409);
  ht_assert_has(&r, "\"error\":\"diverged\"");
  ht_assert_has(&r, "\"code\":\"REPLICATE_EHISTORY\"");
  ht_resp_free(&r);
  /* Its base image, whose seq is ahead of ours: refused all the same. */
  uint8_t *foreign = primary_stream(&other, &other_len, &other_pos);
  upload("PUT", ht_url(&s, "/v1/base"), NULL, foreign, other_len, 0, false, &r);
  assert_int_equal(r.status, 409);
  ht_assert_has(&r, "\"code\":\"REPLICATE_EHISTORY\"");
  ht_resp_free(&r);
  /* Our own history's base at a lower seq (an older primary directory):
   * built from a copy of our primary at seq 6. */
  ht_primary_close(&p);
  char *copy = test_tmpdir("older");
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "cp -a '%s/.' '%s/'", p.dir, copy);
  assert_int_equal(system(cmd), 0);
  loom_store *cs;
  assert_int_equal(loom_store_open(copy, 0, NULL, &cs), 0);
  loom_position cpos;
  loom_store_position(cs, &cpos);
  loom_lineage clin;
  loom_store_lineage(cs, &clin);
  loom_position lower = cpos;
  lower.seq = 6; /* the header lies about nothing the check needs */
  uint8_t hdr[LOOM_STREAM_HEADER];
  loom_stream_header_encode(hdr, &lower, &clin);
  assert_int_equal(loom_store_close(cs), 0);
  size_t blen = LOOM_STREAM_HEADER + lower.pages * PS;
  uint8_t *behind = xcalloc(blen);
  memcpy(behind, hdr, sizeof hdr);
  upload("PUT", ht_url(&s, "/v1/base"), NULL, behind, blen, 0, false, &r);
  assert_int_equal(r.status, 409);
  ht_assert_has(&r, "\"code\":\"REPLICATE_EBEHIND\"");
  ht_resp_free(&r);
  /* Another checksum at the seq we hold (a second copy of the primary). */
  lower.seq = 12;
  lower.checksum ^= 1;
  loom_stream_header_encode(behind, &lower, &clin);
  upload("PUT", ht_url(&s, "/v1/base"), NULL, behind, blen, 0, false, &r);
  assert_int_equal(r.status, 409);
  ht_assert_has(&r, "\"code\":\"REPLICATE_EFORK\"");
  ht_resp_free(&r);

  http_server_status after;
  ht_status(&s, &after);
  assert_memory_equal(&after.applied, &before.applied, sizeof after.applied);
  assert_true(loom_history_equal(&after.history, &before.history));
  assert_int_equal(after.diverged, REPLICATE_EFORK);
  assert_true(after.divergences >= 4);
  ht_call("GET", ht_url(&s, "/v1/status"), NULL, &r);
  ht_assert_has(&r, "\"diverged\":{\"code\":\"REPLICATE_EFORK\"");
  ht_resp_free(&r);
  ht_call("GET", ht_url(&s, "/metrics"), NULL, &r);
  ht_assert_has(&r, "loomship_diverged 1");
  ht_resp_free(&r);
  ht_stop(&s);
  ht_assert_same_image(p.dir, dir);
  free(foreign);
  free(older);
  free(behind);
  test_rmtree(copy);
  ht_primary_close(&other);
  ht_primary_free(&other);
  ht_primary_free(&p);
  test_rmtree(dir);
}

/* A base image sent for a position the standby no longer holds (it moved
 * on since the sender looked: another primary's frames came in between) is
 * refused with its position, so the sender decides again. */
static void test_base_precondition(void **state)
{
  (void)state;
  ht_primary p;
  ht_primary_open(&p, 128, 51);
  ht_primary_run(&p, 8);
  size_t slen;
  loom_position spos;
  uint8_t *stream = primary_stream(&p, &slen, &spos);
  char *dir = test_tmpdir("standby");
  ht_server s;
  ht_start_standby(&s, dir);
  post_range(&s, &p, 0, 3, NULL);
  ht_wait_applied(&s, 3);
  http_server_status st;
  ht_status(&s, &st);
  char stale[96], current[96];
  snprintf(stale, sizeof stale, "X-Loomship-If-Position: 1 0 %016llx",
           (unsigned long long)0);
  snprintf(current, sizeof current, "X-Loomship-If-Position: %llu %llu %016llx",
           (unsigned long long)st.received.epoch, (unsigned long long)st.received.seq,
           (unsigned long long)st.received.checksum);
  ht_req req = {.body = stream, .body_len = slen, .headers = {stale}};
  ht_resp r;
  ht_call("PUT", ht_url(&s, "/v1/base"), &req, &r);
  assert_int_equal(r.status, 409);
  ht_assert_has(&r, "\"error\":\"position moved\"");
  ht_assert_has(&r, "\"received\":{\"epoch\":1,\"seq\":3,");
  ht_resp_free(&r);
  ht_status(&s, &st);
  assert_int_equal(st.applied.seq, 3);
  req.headers[0] = current;
  ht_call("PUT", ht_url(&s, "/v1/base"), &req, &r);
  assert_int_equal(r.status, 200);
  ht_assert_has(&r, "\"applied\":{\"epoch\":1,\"seq\":8,");
  ht_resp_free(&r);
  ht_stop(&s);
  free(stream);
  ht_primary_close(&p);
  ht_primary_free(&p);
  test_rmtree(dir);
}

/* A merged frame whose answer was lost (the standby holds its first
 * commits already, from a later single frame or a kill -9 after the apply):
 * an overlap of the same history, answered with the position so the
 * primary resends from there; never a mismatch that costs a base image. */
static void test_overlap_after_lost_answer(void **state)
{
  (void)state;
  ht_primary p;
  ht_primary_open(&p, 256, 31);
  ht_primary_run(&p, 16);
  replicate_buf merged = {0};
  merge_frames(&p, 4, 12, &merged); /* seq 4 -> 12 */

  char *dir = test_tmpdir("standby");
  ht_server s;
  ht_start_standby(&s, dir);
  post_range(&s, &p, 0, 5, NULL); /* the standby holds seq 5 */
  ht_req req = {.body = merged.data, .body_len = merged.len};
  ht_resp r;
  ht_call("POST", ht_url(&s, "/v1/frames"), &req, &r);
  assert_int_equal(r.status, 409);
  ht_assert_has(&r, "\"error\":\"overlap\"");
  ht_assert_has(&r, "\"code\":\"REPLICATE_EPOSITION\"");
  ht_assert_has(&r, "\"received\":{\"epoch\":1,\"seq\":5,");
  ht_resp_free(&r);
  http_server_status st;
  ht_status(&s, &st);
  assert_int_equal(st.diverged, 0);
  post_range(&s, &p, 5, 16, NULL);
  ht_wait_applied(&s, 16);
  ht_stop(&s);
  ht_primary_close(&p);
  ht_assert_same_image(p.dir, dir);
  replicate_buf_free(&merged);
  ht_primary_free(&p);
  test_rmtree(dir);
}

/* ---------------------------------------------------------------------- */
/* Status, metrics, health */

/* Every sample in a Prometheus text body follows its HELP and TYPE,
 * counters end in _total, a histogram's samples are its _bucket, _sum and
 * _count. */
static void check_exposition(const char *text)
{
  char family[128] = "";
  bool help = false, type = false, hist = false;
  const char *line = text;
  while (*line) {
    const char *end = strchr(line, '\n');
    assert_non_null(end); /* every line ends with a newline */
    char buf[1024];
    size_t n = (size_t)(end - line);
    assert_true(n < sizeof buf);
    memcpy(buf, line, n);
    buf[n] = 0;
    char name[128], kind[32];
    if (sscanf(buf, "# HELP %127s", name) == 1) {
      snprintf(family, sizeof family, "%s", name);
      help = true;
      type = false;
    } else if (sscanf(buf, "# TYPE %127s %31s", name, kind) == 2) {
      assert_string_equal(name, family);
      assert_true(help);
      type = true;
      hist = strcmp(kind, "histogram") == 0;
      if (strcmp(kind, "counter") == 0)
        assert_non_null(strstr(name, "_total"));
      else if (!hist)
        assert_string_equal(kind, "gauge");
    } else {
      size_t len = strcspn(buf, "{ "), flen = strlen(family);
      char tail[32] = "";
      if (len > flen && len - flen < sizeof tail)
        memcpy(tail, buf + flen, len - flen);
      bool suffix = hist && (!strcmp(tail, "_bucket") || !strcmp(tail, "_sum") ||
                             !strcmp(tail, "_count"));
      if ((len != flen && !suffix) || strncmp(buf, family, flen) != 0)
        fail_msg("sample %s outside its family %s", buf, family);
      assert_true(type);
    }
    line = end + 1;
  }
}

static void test_status_metrics_health(void **state)
{
  (void)state;
  ht_primary p;
  ht_primary_open(&p, 128, 23);
  ht_primary_run(&p, 3);
  char *dir = test_tmpdir("standby");
  ht_server s;
  ht_start_standby(&s, dir);
  post_range(&s, &p, 0, 3, NULL);
  ht_wait_applied(&s, 3);
  loom_position pos;
  ht_primary_position(&p, &pos);

  ht_resp r;
  ht_call("GET", ht_url(&s, "/v1/status"), NULL, &r);
  assert_int_equal(r.status, 200);
  char want[160];
  snprintf(want, sizeof want,
           "\"applied\":{\"epoch\":1,\"seq\":3,\"checksum\":\"%016llx\","
           "\"pages\":%llu,\"at\":\"",
           (unsigned long long)pos.checksum, (unsigned long long)pos.pages);
  ht_assert_has(&r, "{\"role\":\"standby\",\"epoch\":1,");
  ht_assert_has(&r, want);
  ht_assert_has(&r, "\"received\":{\"epoch\":1,\"seq\":3,");
  ht_assert_has(&r, "\"primary_seq\":3,");
  ht_assert_has(&r, "\"lag\":{\"frames\":0,\"bytes\":0,\"seconds\":0},"
                    "\"clock_skew_seconds\":");
  ht_assert_has(&r, "\"replay_paused\":false");
  ht_assert_has(&r, "\"ready\":true");
  ht_assert_has(&r, "\"uptime_seconds\":");
  ht_assert_has(&r, "\"backup\":{\"in_progress\":0,\"position\":null}");
  ht_resp_free(&r);
  ht_call("HEAD", ht_url(&s, "/v1/status"), NULL, &r);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.len, 0);
  ht_resp_free(&r);
  ht_call("GET", ht_url(&s, "/readyz"), NULL, &r);
  assert_int_equal(r.status, 200);
  ht_resp_free(&r);
  ht_call("GET", ht_url(&s, "/healthz"), NULL, &r);
  assert_int_equal(r.status, 200);
  ht_resp_free(&r);

  /* A heartbeat says the primary is at 10 since 30 s: lag, not ready. */
  int64_t now = http_now_ns();
  assert_int_equal(post_heartbeat(&s, &p, 10, pos.pages, now - 30000000000LL, now),
                   200);
  ht_call("GET", ht_url(&s, "/v1/status"), NULL, &r);
  ht_assert_has(&r, "\"primary_seq\":10,");
  ht_assert_has(&r, "\"lag\":{\"frames\":7,\"bytes\":0,\"seconds\":3");
  ht_assert_has(&r, "\"ready\":false");
  ht_resp_free(&r);
  ht_call("GET", ht_url(&s, "/readyz"), NULL, &r);
  assert_int_equal(r.status, 503);
  ht_assert_has(&r, "\"ready\":false");
  ht_assert_has(&r, "lag above the threshold");
  ht_resp_free(&r);

  ht_call("GET", ht_url(&s, "/metrics"), NULL, &r);
  assert_int_equal(r.status, 200);
  assert_string_equal(r.content_type, "text/plain; version=0.0.4; charset=utf-8");
  check_exposition((const char *)r.body);
  ht_assert_has(&r, "# TYPE loomship_info gauge\nloomship_info{version=\""
                    LOOMSHIP_VERSION "\",role=\"standby\"} 1\n");
  ht_assert_has(&r, "\nloomship_applied_seq 3\n");
  ht_assert_has(&r, "\nloomship_received_seq 3\n");
  ht_assert_has(&r, "\nloomship_primary_seq 10\n");
  ht_assert_has(&r, "\nloomship_lag_frames 7\n");
  ht_assert_has(&r, "\nloomship_ready 0\n");
  ht_assert_has(&r, "\nloomship_frames_received_total 3\n");
  ht_assert_has(&r, "\nloomship_heartbeats_received_total 1\n");
  /* issue 15: every group apply timed (3 frames applied: 1 to 3 applies) */
  ht_assert_has(&r, "# TYPE loomship_apply_duration_seconds histogram\n");
  ht_assert_has(&r, "\nloomship_apply_duration_seconds_bucket{le=\"+Inf\"} ");
  assert_false(ht_has(&r, "\nloomship_apply_duration_seconds_count 0\n"));
  /* every frame's receive-log append timed: 3 frames */
  ht_assert_has(&r, "# TYPE loomship_receive_log_append_duration_seconds histogram\n");
  ht_assert_has(&r, "\nloomship_receive_log_append_duration_seconds_count 3\n");
  ht_assert_has(&r, "loomship_http_requests_total{endpoint=\"/v1/frames\","
                    "code=\"200\"} 4\n");
  ht_assert_has(&r, "loomship_http_requests_total{endpoint=\"/readyz\","
                    "code=\"503\"} 1\n");
  ht_resp_free(&r);

  /* Unknown paths and wrong methods. */
  ht_call("GET", ht_url(&s, "/v1/nope"), NULL, &r);
  assert_int_equal(r.status, 404);
  ht_assert_has(&r, "\"error\":\"no such endpoint\"");
  ht_resp_free(&r);
  ht_call("GET", ht_url(&s, "/v1/frames"), NULL, &r);
  assert_int_equal(r.status, 405);
  assert_string_equal(r.allow, "POST");
  ht_resp_free(&r);
  ht_call("DELETE", ht_url(&s, "/v1/status"), NULL, &r);
  assert_int_equal(r.status, 405);
  assert_string_equal(r.allow, "GET, HEAD");
  ht_resp_free(&r);
  ht_call("POST", ht_url(&s, "/v1/base"), NULL, &r);
  assert_int_equal(r.status, 405);
  assert_string_equal(r.allow, "PUT");
  ht_resp_free(&r);
  ht_call("GET", ht_url(&s, "/metrics"), NULL, &r);
  ht_assert_has(&r, "loomship_http_requests_total{endpoint=\"other\","
                    "code=\"404\"} 1\n");
  ht_assert_has(&r, "loomship_http_requests_total{endpoint=\"/v1/frames\","
                    "code=\"405\"} 1\n");
  ht_resp_free(&r);

  ht_stop(&s);
  ht_primary_free(&p);
  test_rmtree(dir);
}

/* The realtime clock of the primary (the test's own, unshifted). */
static int64_t primary_clock_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The number after "key": in a JSON body (the key must be there). */
static double json_number(const ht_resp *r, const char *key)
{
  char needle[64];
  snprintf(needle, sizeof needle, "\"%s\":", key);
  const char *at = strstr((const char *)r->body, needle);
  if (!at)
    fail_msg("no %s in %s", key, (const char *)r->body);
  return strtod(at + strlen(needle), NULL);
}

/* A standby whose clock is offset_s off the primary's: lag in seconds
 * stays the age of the oldest unapplied commit on the primary's clock,
 * /readyz does not flap, and clock_skew_seconds reports the offset. */
static void lag_with_clock_offset(int64_t offset_s)
{
  http_clock_offset_set(offset_s * 1000000000LL);
  ht_primary p;
  ht_primary_open(&p, 128, 29);
  ht_primary_run(&p, 3);
  char *dir = test_tmpdir("standby");
  ht_server s;
  ht_start_standby(&s, dir);
  post_range(&s, &p, 0, 3, NULL);
  ht_wait_applied(&s, 3);
  loom_position pos;
  ht_primary_position(&p, &pos);

  /* The primary says it is at seq 10 since 2 s ago (its clock). */
  int64_t now = primary_clock_ns();
  assert_int_equal(post_heartbeat(&s, &p, 10, pos.pages, now - 2000000000LL, now),
                   200);
  for (int i = 0; i < 3; i++) {
    http_server_status st;
    ht_status(&s, &st);
    assert_int_equal(st.lag_frames, 7);
    if (st.lag_seconds < 1.9 || st.lag_seconds > 3.5)
      fail_msg("clock offset %+lld s: lag %.3f s, want about 2",
               (long long)offset_s, st.lag_seconds);
    ht_resp r;
    ht_call("GET", ht_url(&s, "/readyz"), NULL, &r);
    assert_int_equal(r.status, 200); /* 2 s is under the 5 s threshold */
    ht_resp_free(&r);
    ht_call("GET", ht_url(&s, "/v1/status"), NULL, &r);
    double skew = json_number(&r, "clock_skew_seconds");
    if (skew < (double)offset_s - 0.5 || skew > (double)offset_s + 2)
      fail_msg("clock offset %+lld s: clock_skew_seconds %.3f",
               (long long)offset_s, skew);
    ht_resp_free(&r);
    test_pause_ms(100); /* pacing: the lag must hold as time passes */
  }
  /* The lag grows on the primary's clock as time passes here. */
  http_server_status st;
  ht_status(&s, &st);
  assert_true(st.lag_seconds >= 2.25 && st.lag_seconds < 4);
  ht_resp r;
  ht_call("GET", ht_url(&s, "/metrics"), NULL, &r);
  ht_assert_has(&r, "\nloomship_clock_skew_seconds ");
  ht_resp_free(&r);

  ht_stop(&s);
  ht_primary_free(&p);
  test_rmtree(dir);
  http_clock_offset_set(0);
}

static void test_lag_standby_clock_ahead(void **state)
{
  (void)state;
  lag_with_clock_offset(3600);
}

static void test_lag_standby_clock_behind(void **state)
{
  (void)state;
  lag_with_clock_offset(-3600);
}

static void test_start_errors(void **state)
{
  (void)state;
  http_server *srv = NULL;
  http_server_options opt = {0};
  assert_int_equal(http_server_start(&opt, &srv), HTTP_EINVAL);
  opt.role = HTTP_ROLE_STANDBY;
  assert_int_equal(http_server_start(&opt, &srv), HTTP_EINVAL);
  opt.role = HTTP_ROLE_PRIMARY;
  assert_int_equal(http_server_start(&opt, &srv), HTTP_EINVAL);
  char *dir = test_tmpdir("standby");
  opt = (http_server_options){.role = HTTP_ROLE_STANDBY, .dir = dir,
                              .tls_cert_file = "/nonexistent"};
  assert_int_equal(http_server_start(&opt, &srv), HTTP_ETLS);

  /* The directory is locked by its server; the port is taken. */
  ht_server s;
  ht_start_standby(&s, dir);
  opt = (http_server_options){.role = HTTP_ROLE_STANDBY, .dir = dir};
  assert_int_equal(http_server_start(&opt, &srv), LOOM_ELOCKED);
  char *dir2 = test_tmpdir("standby2");
  opt = (http_server_options){.role = HTTP_ROLE_STANDBY, .dir = dir2,
                              .listen_port = http_server_port(s.server)};
  assert_int_equal(http_server_start(&opt, &srv), HTTP_EINUSE);
  ht_stop(&s);
  assert_non_null(http_strerror(HTTP_EDAEMON));
  assert_int_equal(http_server_stop(NULL), 0);
  test_rmtree(dir);
  test_rmtree(dir2);
}

int main(void)
{
  curl_global_init(CURL_GLOBAL_DEFAULT);
  if (getenv("HTTP_TEST_FILTER")) /* run only the tests matching a pattern */
    cmocka_set_test_filter(getenv("HTTP_TEST_FILTER"));
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_frames_in_order),
      cmocka_unit_test(test_duplicate_and_gap),
      cmocka_unit_test(test_token),
      cmocka_unit_test(test_malformed_bodies),
      cmocka_unit_test(test_frame_that_does_not_apply),
      cmocka_unit_test(test_upload_limit),
      cmocka_unit_test(test_connection_limits),
      cmocka_unit_test(test_base_image),
      cmocka_unit_test(test_promote),
      cmocka_unit_test(test_cluster_member),
      cmocka_unit_test(test_restart_and_recovery),
      cmocka_unit_test(test_damaged_receive_log),
      cmocka_unit_test(test_merged_apply_with_a_bad_frame),
      cmocka_unit_test(test_disk_full),
      cmocka_unit_test(test_graceful_stop),
      cmocka_unit_test(test_coalesced_frame),
      cmocka_unit_test(test_overlap_after_lost_answer),
      cmocka_unit_test(test_never_backwards_or_sideways),
      cmocka_unit_test(test_base_precondition),
      cmocka_unit_test(test_status_metrics_health),
      cmocka_unit_test(test_lag_standby_clock_ahead),
      cmocka_unit_test(test_lag_standby_clock_behind),
      cmocka_unit_test(test_start_errors),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  curl_global_cleanup();
  return rc;
}
