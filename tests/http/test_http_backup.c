/*
 * test_http_backup.c: GET /v1/backup on a standby and on a primary: the
 * image stream, HEAD, ETag, Range and If-Range, a download cut in half and
 * resumed, a backup taken while frames keep arriving, and the primary
 * role's status and metrics from its source callbacks.
 */
#include <errno.h>
#include <unistd.h>

#include "httptest.h"

static ht_server *standby_with_frames(ht_primary *p, char **dir, size_t n)
{
  *dir = test_tmpdir("standby");
  ht_server *s = xcalloc(sizeof *s);
  ht_start_standby(s, *dir);
  for (size_t i = 0; i < n; i++)
    assert_int_equal(ht_post_frame(s, &p->frames[i], NULL), 200);
  ht_wait_applied(s, n);
  return s;
}

/* Wait until no backup response is alive (its snapshot closed). */
static void wait_no_backup(ht_server *s)
{
  http_server_status st;
  for (int i = 0; i < 500; i++) {
    ht_status(s, &st);
    if (st.backups_in_progress == 0)
      return;
    test_pause_ms(10);
  }
  fail_msg("a backup stays in progress");
}

static void test_backup_stream(void **state)
{
  (void)state;
  ht_primary p;
  ht_primary_open(&p, 256, 31);
  ht_primary_run(&p, 25);
  char *dir;
  ht_server *s = standby_with_frames(&p, &dir, 25);
  loom_position ppos;
  ht_primary_position(&p, &ppos);

  ht_resp full;
  ht_call("GET", ht_url(s, "/v1/backup"), NULL, &full);
  assert_int_equal(full.status, 200);
  assert_int_equal(full.content_length, (long long)full.len);
  assert_string_equal(full.accept_ranges, "bytes");
  assert_string_equal(full.content_type, "application/octet-stream");
  char etag[HTTP_ETAG_MAX];
  http_etag_format(&ppos, etag);
  assert_string_equal(full.etag, etag);
  loom_position bpos;
  ht_check_stream(full.body, full.len, &bpos);
  assert_int_equal(bpos.seq, 25);
  assert_int_equal(bpos.checksum, ppos.checksum);
  ht_assert_image_is(dir, full.body + LOOM_STREAM_HEADER,
                     full.len - LOOM_STREAM_HEADER);
  const size_t total = full.len;
  char range[96];

  /* HEAD: the same headers, no body. */
  ht_resp r;
  ht_call("HEAD", ht_url(s, "/v1/backup"), NULL, &r);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.len, 0);
  assert_int_equal(r.content_length, (long long)total);
  assert_string_equal(r.etag, etag);
  ht_resp_free(&r);

  /* Ranges. */
  ht_req req = {.headers = {"Range: bytes=0-99"}};
  ht_call("GET", ht_url(s, "/v1/backup"), &req, &r);
  assert_int_equal(r.status, 206);
  snprintf(range, sizeof range, "bytes 0-99/%zu", total);
  assert_string_equal(r.content_range, range);
  assert_int_equal(r.len, 100);
  assert_memory_equal(r.body, full.body, 100);
  ht_resp_free(&r);
  req.headers[0] = "Range: bytes=-100";
  ht_call("GET", ht_url(s, "/v1/backup"), &req, &r);
  assert_int_equal(r.status, 206);
  assert_int_equal(r.len, 100);
  assert_memory_equal(r.body, full.body + total - 100, 100);
  ht_resp_free(&r);
  /* Across the header/page boundary. */
  req.headers[0] = "Range: bytes=60-16500";
  ht_call("GET", ht_url(s, "/v1/backup"), &req, &r);
  assert_int_equal(r.status, 206);
  assert_int_equal(r.len, 16441);
  assert_memory_equal(r.body, full.body + 60, 16441);
  ht_resp_free(&r);
  char unsat[64];
  snprintf(unsat, sizeof unsat, "Range: bytes=%zu-", total);
  req.headers[0] = unsat;
  ht_call("GET", ht_url(s, "/v1/backup"), &req, &r);
  assert_int_equal(r.status, 416);
  snprintf(range, sizeof range, "bytes */%zu", total);
  assert_string_equal(r.content_range, range);
  ht_assert_has(&r, "\"error\":\"range not satisfiable\"");
  ht_resp_free(&r);
  req.headers[0] = "Range: bytes=0-1,5-6";
  ht_call("GET", ht_url(s, "/v1/backup"), &req, &r);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.len, total);
  ht_resp_free(&r);

  /* A download cut in half, resumed with Range and If-Range. */
  ht_req cut = {.abort_after = total / 2};
  ht_call("GET", ht_url(s, "/v1/backup"), &cut, &r);
  assert_int_equal(r.curl_rc, CURLE_WRITE_ERROR);
  assert_int_equal(r.len, total / 2);
  char resume[64], ifrange[128];
  snprintf(resume, sizeof resume, "Range: bytes=%zu-", r.len);
  snprintf(ifrange, sizeof ifrange, "If-Range: %s", r.etag);
  ht_req rest = {.headers = {resume, ifrange}};
  ht_resp r2;
  ht_call("GET", ht_url(s, "/v1/backup"), &rest, &r2);
  assert_int_equal(r2.status, 206);
  assert_int_equal(r.len + r2.len, total);
  assert_memory_equal(r.body, full.body, r.len);
  assert_memory_equal(r2.body, full.body + r.len, r2.len);
  ht_resp_free(&r2);
  ht_resp_free(&r);

  /* The image moves on: a resume naming the old ETag restarts (200, the
   * whole new stream), never splices. */
  wait_no_backup(s);
  for (size_t i = 0; i < 5; i++)
    ht_primary_commit(&p, 3, 20);
  for (size_t i = 25; i < 30; i++)
    assert_int_equal(ht_post_frame(s, &p.frames[i], NULL), 200);
  ht_wait_applied(s, 30);
  snprintf(ifrange, sizeof ifrange, "If-Range: %s", etag);
  rest.headers[0] = "Range: bytes=1000-";
  rest.headers[1] = ifrange;
  ht_call("GET", ht_url(s, "/v1/backup"), &rest, &r);
  assert_int_equal(r.status, 200);
  assert_string_not_equal(r.etag, etag);
  ht_check_stream(r.body, r.len, &bpos);
  assert_int_equal(bpos.seq, 30);
  ht_resp_free(&r);
  /* An If-Range that is not an ETag of ours (a date): the whole stream. */
  rest.headers[1] = "If-Range: Wed, 21 Oct 2015 07:28:00 GMT";
  ht_call("GET", ht_url(s, "/v1/backup"), &rest, &r);
  assert_int_equal(r.status, 200);
  ht_resp_free(&r);

  ht_resp_free(&full);
  ht_stop(s);
  free(s);
  ht_primary_free(&p);
  test_rmtree(dir);
}

/* ---------------------------------------------------------------------- */
/* A backup while frames keep arriving equals exactly one position. */

typedef struct poster {
  ht_server *s;
  ht_primary *p;
  size_t from, to;
  long failures;
} poster;

static void *post_all(void *arg)
{
  poster *w = arg;
  for (size_t i = w->from; i < w->to; i++)
    if (ht_post_frame(w->s, &w->p->frames[i], NULL) != 200)
      w->failures++;
  return NULL;
}

typedef struct fetcher {
  ht_server *s;
  ht_resp r;
} fetcher;

static void *fetch_slowly(void *arg)
{
  fetcher *f = arg;
  char url[128];
  snprintf(url, sizeof url, "%s/v1/backup", f->s->base);
  ht_req req = {.max_recv_speed = 4 << 20};
  ht_call("GET", url, &req, &f->r);
  return NULL;
}

static void test_backup_during_posting(void **state)
{
  (void)state;
  ht_primary p;
  ht_primary_open(&p, 1024, 32);
  ht_primary_commit(&p, 400, 400); /* a 6.4 MiB image */
  for (int i = 0; i < 150; i++)
    ht_primary_commit(&p, 30, 400);
  char *dir;
  ht_server *s = standby_with_frames(&p, &dir, 1);

  poster w = {s, &p, 1, p.nframes, 0};
  pthread_t pt;
  assert_int_equal(pthread_create(&pt, NULL, post_all, &w), 0);
  for (int round = 0; round < 3; round++) {
    fetcher f = {s, {0}};
    pthread_t ft;
    assert_int_equal(pthread_create(&ft, NULL, fetch_slowly, &f), 0);
    /* Status shows the backup in progress. */
    bool seen = false;
    for (int i = 0; i < 200 && !seen; i++) {
      ht_resp st;
      ht_call("GET", ht_url(s, "/v1/status"), NULL, &st);
      seen = ht_has(&st, "\"backup\":{\"in_progress\":1,\"position\":{");
      ht_resp_free(&st);
      if (!seen)
        test_pause_ms(5);
    }
    pthread_join(ft, NULL);
    assert_true(seen);
    assert_int_equal(f.r.status, 200);
    loom_position bpos;
    ht_check_stream(f.r.body, f.r.len, &bpos);
    /* ... and it is the primary's position at that seq. */
    assert_true(bpos.seq >= 1 && bpos.seq <= p.nframes);
    replicate_frame_info info;
    const replicate_buf *fr = &p.frames[bpos.seq - 1];
    assert_int_equal(replicate_frame_parse_header(fr->data, fr->len, NULL,
                                                  &info), 0);
    assert_int_equal(bpos.checksum, info.after.checksum);
    assert_int_equal(bpos.pages, info.after.pages);
    ht_resp_free(&f.r);
  }
  pthread_join(pt, NULL);
  assert_int_equal(w.failures, 0);
  ht_wait_applied(s, p.nframes);
  ht_stop(s);
  free(s);
  ht_primary_close(&p);
  ht_assert_same_image(p.dir, dir);
  ht_primary_free(&p);
  test_rmtree(dir);
}

/* ---------------------------------------------------------------------- */
/* The primary role */

typedef struct fake_primary {
  ht_primary *p;
  bool fenced;
} fake_primary;

static void fp_position(void *ctx, loom_position *out)
{
  fake_primary *f = ctx;
  ht_primary_position(f->p, out);
}

static int fp_snapshot(void *ctx, loom_snapshot **out)
{
  fake_primary *f = ctx;
  pthread_mutex_lock(&f->p->mu);
  int rc = loom_store_snapshot_open(loom_get_store(f->p->l), out);
  pthread_mutex_unlock(&f->p->mu);
  return rc;
}

static bool fp_fenced(void *ctx)
{
  fake_primary *f = ctx;
  return f->fenced;
}

static size_t fp_peers(void *ctx, replicate_peer_status *out, size_t cap)
{
  (void)ctx;
  /* 20 peers: more than the server's first guess (16). */
  for (size_t i = 0; i < 20 && i < cap; i++) {
    memset(&out[i], 0, sizeof out[i]);
    snprintf(out[i].url, sizeof out[i].url, "http://10.0.0.%zu:8470", i + 2);
    out[i].state = i == 0 ? REPLICATE_PEER_STREAMING : REPLICATE_PEER_UNREACHABLE;
    out[i].sent_seq = 45;
    out[i].received_seq = 44;
    out[i].applied_seq = 42;
    out[i].lag_frames = 3;
    out[i].lag_bytes = 49152;
    out[i].lag_seconds = 0.004;
    out[i].bytes_raw = 1000;
    out[i].bytes_wire = 100;
    if (i == 0)
      out[i].last_reply_at_ns = 1700000000123456789LL; /* every digit printed */
    if (i == 1) {
      snprintf(out[i].last_error, sizeof out[i].last_error,
               "connect: \"refused\"");
      out[i].last_error_at_ns = 1700000000000000000LL;
      out[i].errors[REPLICATE_PEER_ERROR_UNREACHABLE] = 5;
      out[i].errors[REPLICATE_PEER_ERROR_REFUSED] = 2;
    }
  }
  return 20;
}

static void fp_log_stats(void *ctx, replicate_log_stats *out)
{
  (void)ctx;
  *out = (replicate_log_stats){.oldest_seq = 7, .newest_seq = 12, .bytes = 123456,
                               .segments = 2};
}

static void fp_save_durations(void *ctx, replicate_duration_histogram *out)
{
  (void)ctx;
  memset(out, 0, sizeof *out);
  replicate_duration_observe(out, 0.003);
  replicate_duration_observe(out, 0.004);
  replicate_duration_observe(out, 20);
}

static void fp_sync(void *ctx, http_sync_status *out)
{
  (void)ctx;
  out->required = 1;
  out->degraded = true;
  out->degraded_since_ns = 1700000000123000000LL;
}

static void test_primary_role(void **state)
{
  (void)state;
  ht_primary p;
  ht_primary_open(&p, 256, 33);
  ht_primary_run(&p, 12);
  fake_primary fp = {&p, false};
  http_primary_source src = {&fp, fp_position, fp_snapshot, fp_fenced,
                             fp_peers, fp_sync, NULL, fp_log_stats, fp_save_durations, NULL, NULL};
  static const char token[] = "tok";
  http_server_options opt = {.role = HTTP_ROLE_PRIMARY, .primary = &src,
                             .token = (const uint8_t *)token, .token_len = 3};
  ht_server s;
  ht_start(&s, &opt);
  loom_position pos;
  ht_primary_position(&p, &pos);

  ht_resp r;
  ht_call("GET", ht_url(&s, "/v1/status"), NULL, &r);
  assert_int_equal(r.status, 200);
  ht_assert_has(&r, "{\"role\":\"primary\",\"epoch\":1,\"history\":null,"
                    "\"applied\":{\"epoch\":1,\"seq\":12,");
  ht_assert_has(&r, "\"fenced\":false");
  ht_assert_has(&r, "\"sync\":{\"required\":1,\"count\":1,\"degraded\":true,"
                    "\"degraded_since\":\"2023-11-14T22:13:20.123Z\"}");
  ht_assert_has(&r, "\"standbys\":[{\"url\":\"http://10.0.0.2:8470\","
                    "\"state\":\"streaming\",\"sent_seq\":45,"
                    "\"received_seq\":44,\"applied_seq\":42,\"base_images\":0,"
                    "\"lag\":{\"frames\":3,\"bytes\":49152,\"seconds\":0.004},"
                    "\"last_reply_at\":\"2023-11-14T22:13:20.123456789Z\","
                    "\"last_error\":null,\"last_error_at\":null,");
  ht_assert_has(&r, "\"last_error\":\"connect: \\\"refused\\\"\","
                    "\"last_error_at\":\"2023-11-14T22:13:20.000Z\"");
  ht_assert_has(&r, "\"url\":\"http://10.0.0.21:8470\"");
  assert_false(ht_has(&r, "\"received\":"));
  ht_resp_free(&r);

  ht_call("GET", ht_url(&s, "/metrics"), NULL, &r);
  ht_assert_has(&r, "loomship_info{version=\"" LOOMSHIP_VERSION
                    "\",role=\"primary\"} 1\n");
  ht_assert_has(&r, "\nloomship_fenced 0\n");
  ht_assert_has(&r, "\nloomship_standbys 20\n");
  ht_assert_has(&r, "loomship_standby_lag_frames{url=\"http://10.0.0.2:8470\"} 3\n");
  ht_assert_has(&r, "loomship_standby_state{url=\"http://10.0.0.3:8470\","
                    "state=\"unreachable\"} 1\n");
  ht_assert_has(&r, "# TYPE loomship_standby_shipped_wire_bytes_total counter\n");
  /* issue 15: the state as a full state set, exact times, sync, build,
   * the process_* families */
  ht_assert_has(&r, "loomship_standby_state{url=\"http://10.0.0.3:8470\","
                    "state=\"streaming\"} 0\n");
  ht_assert_has(&r, "loomship_standby_state{url=\"http://10.0.0.3:8470\","
                    "state=\"diverged\"} 0\n");
  ht_assert_has(&r, "loomship_standby_state{url=\"http://10.0.0.2:8470\","
                    "state=\"streaming\"} 1\n");
  ht_assert_has(&r, "loomship_standby_state{url=\"http://10.0.0.2:8470\","
                    "state=\"unreachable\"} 0\n");
  ht_assert_has(&r, "loomship_standby_last_error_time_seconds{url=\"http://10.0.0.3:8470\"}"
                    " 1700000000\n");
  ht_assert_has(&r, "loomship_standby_last_reply_time_seconds{url=\"http://10.0.0.2:8470\"}"
                    " 1700000000.123456789\n");
  ht_assert_has(&r, "loomship_standby_errors_total{url=\"http://10.0.0.3:8470\","
                    "kind=\"unreachable\"} 5\n");
  ht_assert_has(&r, "loomship_standby_errors_total{url=\"http://10.0.0.3:8470\","
                    "kind=\"refused\"} 2\n");
  ht_assert_has(&r, "loomship_standby_errors_total{url=\"http://10.0.0.2:8470\","
                    "kind=\"local\"} 0\n");
  ht_assert_has(&r, "\nloomship_replication_log_bytes 123456\n");
  ht_assert_has(&r, "\nloomship_replication_log_oldest_seq 7\n");
  ht_assert_has(&r, "# TYPE loomship_save_duration_seconds histogram\n"
                    "loomship_save_duration_seconds_bucket{le=\"0.0001\"} 0\n");
  ht_assert_has(&r, "loomship_save_duration_seconds_bucket{le=\"0.0025\"} 0\n"
                    "loomship_save_duration_seconds_bucket{le=\"0.005\"} 2\n");
  ht_assert_has(&r, "loomship_save_duration_seconds_bucket{le=\"10\"} 2\n"
                    "loomship_save_duration_seconds_bucket{le=\"+Inf\"} 3\n"
                    "loomship_save_duration_seconds_sum 20.007\n"
                    "loomship_save_duration_seconds_count 3\n");
  ht_assert_has(&r, "\nloomship_sync_required 1\n");
  ht_assert_has(&r, "\nloomship_sync_degraded 1\n");
  ht_assert_has(&r, "\nloomship_sync_degraded_since_time_seconds 1700000000.123\n");
  ht_assert_has(&r, "\nloomship_build_info{version=\"" LOOMSHIP_VERSION "\",commit=\"");
  ht_assert_has(&r, "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total ");
  ht_assert_has(&r, "\nprocess_resident_memory_bytes ");
  ht_assert_has(&r, "\nprocess_virtual_memory_bytes ");
  ht_assert_has(&r, "\nprocess_open_fds ");
  ht_assert_has(&r, "\nprocess_max_fds ");
  ht_assert_has(&r, "\nprocess_start_time_seconds 1");
  ht_resp_free(&r);

  /* Standby endpoints: 409 not a standby (after the token check). */
  ht_req req = {.token = token, .body = p.frames[0].data,
                .body_len = p.frames[0].len};
  ht_call("POST", ht_url(&s, "/v1/frames"), &req, &r);
  assert_int_equal(r.status, 409);
  ht_assert_has(&r, "\"error\":\"not a standby\"");
  ht_resp_free(&r);
  ht_call("POST", ht_url(&s, "/v1/frames"), NULL, &r);
  assert_int_equal(r.status, 401);
  ht_resp_free(&r);

  /* The backup is the primary's image. */
  ht_req breq = {.token = token};
  ht_call("GET", ht_url(&s, "/v1/backup"), &breq, &r);
  assert_int_equal(r.status, 200);
  loom_position bpos;
  ht_check_stream(r.body, r.len, &bpos);
  assert_int_equal(bpos.seq, 12);
  assert_int_equal(bpos.checksum, pos.checksum);
  ht_assert_image_is(p.dir, r.body + LOOM_STREAM_HEADER,
                     r.len - LOOM_STREAM_HEADER);
  ht_resp_free(&r);

  ht_call("GET", ht_url(&s, "/readyz"), NULL, &r);
  assert_int_equal(r.status, 200);
  ht_resp_free(&r);
  fp.fenced = true;
  ht_call("GET", ht_url(&s, "/readyz"), NULL, &r);
  assert_int_equal(r.status, 503);
  ht_assert_has(&r, "fenced");
  ht_resp_free(&r);
  ht_call("GET", ht_url(&s, "/v1/status"), NULL, &r);
  ht_assert_has(&r, "\"fenced\":true");
  ht_resp_free(&r);
  http_server_status st;
  ht_status(&s, &st);
  assert_true(st.fenced);
  assert_int_equal(st.role, HTTP_ROLE_PRIMARY);
  ht_stop(&s);

  /* Without a snapshot callback: 503. */
  src.snapshot_open = NULL;
  src.peers = NULL;
  opt.token = NULL;
  opt.token_len = 0;
  ht_start(&s, &opt);
  ht_call("GET", ht_url(&s, "/v1/backup"), NULL, &r);
  assert_int_equal(r.status, 503);
  ht_resp_free(&r);
  ht_call("GET", ht_url(&s, "/v1/status"), NULL, &r);
  ht_assert_has(&r, "\"standbys\":[]");
  ht_resp_free(&r);
  ht_stop(&s);
  ht_primary_free(&p);
}

int main(void)
{
  curl_global_init(CURL_GLOBAL_DEFAULT);
  if (getenv("HTTP_TEST_FILTER")) /* run only the tests matching a pattern */
    cmocka_set_test_filter(getenv("HTTP_TEST_FILTER"));
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_backup_stream),
      cmocka_unit_test(test_backup_during_posting),
      cmocka_unit_test(test_primary_role),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  curl_global_cleanup();
  return rc;
}
