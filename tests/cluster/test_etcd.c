/* test_etcd.c: the etcd client's error paths against an in-process fake
 * etcd (libmicrohttpd on 127.0.0.1, ephemeral ports): garbage answers,
 * 5xx, a lease that is gone, a compare that fails, a watch that breaks
 * mid-stream or is compacted, a slow endpoint (timeout, then the next
 * endpoint), 64-bit numbers that a double would round. Each fake answer is
 * a canned body chosen by the test; the fake also keeps the last request
 * body, so a test can check what the client sent. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "etcd.h"

/* ---- the fake -------------------------------------------------------- */

struct fake {
  struct MHD_Daemon *d;
  int port;
  unsigned status;        /* HTTP status of every answer */
  const char *body;       /* the answer ("" for none) */
  long delay_ms;          /* before answering */
  const char *stream[8];  /* /v3/watch: lines sent one by one, then... */
  bool stream_hold;       /* ...keep the stream open (else cut it) */
  char last_path[128];
  char last_request[4096];
  atomic_int requests;
};

struct upload {
  char data[4096];
  size_t len;
};

struct stream_state {
  struct fake *f;
  int next;
};

static void sleep_ms(long ms)
{
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static double now_s(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
  (void)pos;
  struct stream_state *s = cls;
  const char *line = s->next < 8 ? s->f->stream[s->next] : NULL;
  if (!line) {
    if (!s->f->stream_hold)
      return MHD_CONTENT_READER_END_WITH_ERROR; /* cut mid-stream */
    sleep_ms(20);
    return 0;
  }
  size_t n = strlen(line);
  if (n > max)
    return MHD_CONTENT_READER_END_WITH_ERROR;
  memcpy(buf, line, n);
  s->next++;
  return (ssize_t)n;
}

static enum MHD_Result fake_handler(void *cls, struct MHD_Connection *conn,
                                    const char *url, const char *method,
                                    const char *version, const char *data,
                                    size_t *size, void **con_cls)
{
  (void)method, (void)version;
  struct fake *f = cls;
  if (!*con_cls) {
    *con_cls = calloc(1, sizeof(struct upload));
    return MHD_YES;
  }
  struct upload *u = *con_cls;
  if (*size) {
    size_t n = *size < sizeof u->data - 1 - u->len ? *size
                                                   : sizeof u->data - 1 - u->len;
    memcpy(u->data + u->len, data, n);
    u->len += n;
    *size = 0;
    return MHD_YES;
  }
  snprintf(f->last_path, sizeof f->last_path, "%s", url);
  snprintf(f->last_request, sizeof f->last_request, "%.*s", (int)u->len,
           u->data);
  atomic_fetch_add(&f->requests, 1);
  if (f->delay_ms)
    sleep_ms(f->delay_ms);
  struct MHD_Response *r;
  if (strcmp(url, "/v3/watch") == 0 && f->stream[0]) {
    struct stream_state *s = calloc(1, sizeof *s);
    s->f = f;
    r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 1024,
                                          stream_read, s, free);
  } else {
    r = MHD_create_response_from_buffer(strlen(f->body), (void *)f->body,
                                        MHD_RESPMEM_PERSISTENT);
  }
  enum MHD_Result ret = MHD_queue_response(conn, f->status, r);
  MHD_destroy_response(r);
  return ret;
}

static void fake_done(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
  (void)cls, (void)c, (void)toe;
  free(*con_cls);
  *con_cls = NULL;
}

static struct fake *fake_start(unsigned status, const char *body)
{
  struct fake *f = calloc(1, sizeof *f);
  f->status = status;
  f->body = body;
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  f->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION |
                              MHD_USE_INTERNAL_POLLING_THREAD,
                          0, NULL, NULL, fake_handler, f,
                          MHD_OPTION_SOCK_ADDR, &sa,
                          MHD_OPTION_NOTIFY_COMPLETED, fake_done, NULL,
                          MHD_OPTION_END);
  assert_non_null(f->d);
  const union MHD_DaemonInfo *info =
      MHD_get_daemon_info(f->d, MHD_DAEMON_INFO_BIND_PORT);
  f->port = info->port;
  return f;
}

static void fake_stop(struct fake *f)
{
  MHD_stop_daemon(f->d);
  free(f);
}

static struct cluster_etcd *client_of(const char *endpoints, long timeout_ms)
{
  struct cluster_etcd_options o = {.endpoints = endpoints,
                                   .timeout_ms = timeout_ms};
  struct cluster_etcd *c = NULL;
  assert_int_equal(cluster_etcd_open(&o, &c), 0);
  return c;
}

static struct cluster_etcd *client(struct fake *f)
{
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d", f->port);
  return client_of(url, 1000);
}

#define HEADER "\"header\":{\"revision\":\"42\"}"

/* ---- garbage, 5xx, 4xx ----------------------------------------------- */

static void test_garbage(void **state)
{
  (void)state;
  const char *bodies[] = {
      "not json {", "[1,2]", "{\"header\":{\"revision\":1.5e3}}",
      "{" HEADER ",\"kvs\":[{\"key\":\"!!!!\"}]}",
      "{" HEADER ",\"kvs\":[{\"key\":\"YQ==\",\"mod_revision\":\"12x\"}]}",
      "{" HEADER ",\"kvs\":{}}", ""};
  for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++) {
    struct fake *f = fake_start(200, bodies[i]);
    struct cluster_etcd *c = client(f);
    struct cluster_kv_list list;
    assert_int_equal(cluster_etcd_range_prefix(c, "/a/", &list),
                     CLUSTER_EPROTOCOL);
    assert_int_equal(list.count, 0);
    assert_true(strlen(cluster_etcd_error(c)) > 0);
    cluster_etcd_close(c);
    fake_stop(f);
  }
  /* a grant without an id */
  struct fake *f = fake_start(200, "{" HEADER ",\"TTL\":\"5\"}");
  struct cluster_etcd *c = client(f);
  int64_t id, ttl;
  assert_int_equal(cluster_etcd_lease_grant(c, 5, &id, &ttl),
                   CLUSTER_EPROTOCOL);
  cluster_etcd_close(c);
  fake_stop(f);
}

static void test_http_errors(void **state)
{
  (void)state;
  struct fake *f = fake_start(503, "{\"error\":\"etcdserver: no leader\","
                                   "\"message\":\"etcdserver: no leader\","
                                   "\"code\":14}");
  struct cluster_etcd *c = client(f);
  assert_int_equal(cluster_etcd_put(c, "/a", "b", 1, 0), CLUSTER_EHTTP);
  assert_non_null(strstr(cluster_etcd_error(c), "no leader"));
  assert_string_equal(cluster_error_name(CLUSTER_EHTTP), "CLUSTER_EHTTP");
  f->status = 400;
  f->body = "{\"error\":\"bad\",\"code\":3}";
  assert_int_equal(cluster_etcd_put(c, "/a", "b", 1, 0), CLUSTER_EREFUSED);
  f->status = 302;
  assert_int_equal(cluster_etcd_put(c, "/a", "b", 1, 0), CLUSTER_EPROTOCOL);
  cluster_etcd_close(c);
  fake_stop(f);
}

/* ---- a lease that is gone -------------------------------------------- */

static void test_lease_gone(void **state)
{
  (void)state;
  /* keep-alive of a gone lease: the streaming form with no TTL */
  struct fake *f = fake_start(200, "{\"result\":{" HEADER ",\"ID\":\"7\"}}\n");
  struct cluster_etcd *c = client(f);
  int64_t ttl = 99;
  assert_int_equal(cluster_etcd_lease_keepalive(c, 7, &ttl),
                   CLUSTER_ELEASE_GONE);
  assert_non_null(strstr(f->last_request, "\"ID\":\"7\""));
  f->body = "{\"result\":{" HEADER ",\"ID\":\"7\",\"TTL\":\"0\"}}\n";
  assert_int_equal(cluster_etcd_lease_keepalive(c, 7, &ttl),
                   CLUSTER_ELEASE_GONE);
  f->body = "{\"result\":{" HEADER ",\"ID\":\"7\",\"TTL\":\"4\"}}\n";
  assert_int_equal(cluster_etcd_lease_keepalive(c, 7, &ttl), 0);
  assert_int_equal(ttl, 4);
  assert_int_equal(cluster_etcd_revision(c), 42);
  /* revoke, or a put on it: 404 "requested lease not found" */
  f->status = 404;
  f->body = "{\"error\":\"etcdserver: requested lease not found\","
            "\"message\":\"etcdserver: requested lease not found\","
            "\"code\":5}";
  assert_int_equal(cluster_etcd_lease_revoke(c, 7), CLUSTER_ELEASE_GONE);
  assert_int_equal(cluster_etcd_put(c, "/k", "v", 1, 7), CLUSTER_ELEASE_GONE);
  assert_non_null(strstr(f->last_request, "\"lease\":\"7\""));
  cluster_etcd_close(c);
  fake_stop(f);
}

/* ---- a compare that fails -------------------------------------------- */

static void test_compare_fails(void **state)
{
  (void)state;
  /* succeeded absent (proto3 leaves false out); the failure branch's
   * range; a revision past 2^53, which a double would round */
  struct fake *f = fake_start(200,
      "{\"header\":{\"revision\":\"9007199254740993\"},\"responses\":["
      "{\"response_range\":{\"kvs\":[{\"key\":\"L2w=\",\"value\":\"YQ==\","
      "\"create_revision\":\"9007199254740993\",\"mod_revision\":\"5\","
      "\"lease\":\"7587868813434436107\"}],\"count\":\"1\"}}]}");
  struct cluster_etcd *c = client(f);
  struct cluster_compare cmp = {.key = "/l", .target = CLUSTER_CMP_CREATE,
                                .result = CLUSTER_CMP_EQUAL, .number = 0};
  struct cluster_op put = {.kind = CLUSTER_OP_PUT, .key = "/l",
                           .value = "b", .value_len = 1, .lease = 3};
  struct cluster_op get = {.kind = CLUSTER_OP_RANGE, .key = "/l"};
  struct cluster_txn_result r;
  assert_int_equal(cluster_etcd_txn(c, &cmp, 1, &put, 1, &get, 1, &r), 0);
  assert_false(r.succeeded);
  assert_true(r.revision == 9007199254740993LL);
  assert_int_equal(r.range.count, 1);
  assert_string_equal(r.range.items[0].key, "/l");
  assert_string_equal(r.range.items[0].value, "a");
  assert_true(r.range.items[0].create_revision == 9007199254740993LL);
  assert_true(r.range.items[0].lease == 7587868813434436107LL);
  cluster_txn_result_free(&r);
  /* what was sent: the compare and both branches, numbers as strings */
  json_t *sent = json_loads(f->last_request, 0, NULL);
  assert_non_null(sent);
  json_t *k = json_array_get(json_object_get(sent, "compare"), 0);
  assert_string_equal(json_string_value(json_object_get(k, "target")),
                      "CREATE");
  assert_string_equal(json_string_value(json_object_get(k, "result")),
                      "EQUAL");
  assert_string_equal(
      json_string_value(json_object_get(k, "create_revision")), "0");
  assert_string_equal(json_string_value(json_object_get(k, "key")), "L2w=");
  json_t *p = json_object_get(json_array_get(json_object_get(sent, "success"),
                                             0), "request_put");
  assert_string_equal(json_string_value(json_object_get(p, "lease")), "3");
  assert_non_null(json_object_get(json_array_get(
      json_object_get(sent, "failure"), 0), "request_range"));
  json_decref(sent);
  /* and a success */
  f->body = "{" HEADER ",\"succeeded\":true}";
  assert_int_equal(cluster_etcd_txn(c, &cmp, 1, &put, 1, NULL, 0, &r), 0);
  assert_true(r.succeeded);
  assert_int_equal(r.revision, 42);
  cluster_txn_result_free(&r);
  f->body = "{" HEADER ",\"succeeded\":\"yes\"}";
  assert_int_equal(cluster_etcd_txn(c, &cmp, 1, &put, 1, NULL, 0, &r),
                   CLUSTER_EPROTOCOL);
  cluster_etcd_close(c);
  fake_stop(f);
}

/* ---- a slow endpoint: timeout, then the next one --------------------- */

static void test_slow_endpoint_failover(void **state)
{
  (void)state;
  struct fake *slow = fake_start(200, "{" HEADER "}");
  struct fake *good = fake_start(200, "{\"header\":{\"revision\":\"43\"}}");
  slow->delay_ms = 1500;
  char eps[128], second[64];
  snprintf(eps, sizeof eps, "http://127.0.0.1:%d,http://127.0.0.1:%d",
           slow->port, good->port);
  snprintf(second, sizeof second, "http://127.0.0.1:%d", good->port);
  struct cluster_etcd *c = client_of(eps, 300);
  double t0 = now_s();
  assert_int_equal(cluster_etcd_put(c, "/a", "b", 1, 0), 0);
  assert_true(now_s() - t0 < 1.2); /* the slow one was not waited for */
  assert_string_equal(cluster_etcd_endpoint(c), second);
  assert_int_equal(cluster_etcd_revision(c), 43);
  assert_int_equal(atomic_load(&slow->requests), 1);
  assert_int_equal(atomic_load(&good->requests), 1);
  /* it sticks to the one that answered */
  assert_int_equal(cluster_etcd_put(c, "/a", "b", 1, 0), 0);
  assert_int_equal(atomic_load(&slow->requests), 1);
  /* both slow: a timeout */
  good->delay_ms = 1500;
  assert_int_equal(cluster_etcd_put(c, "/a", "b", 1, 0), CLUSTER_ETIMEDOUT);
  cluster_etcd_close(c);
  /* nobody listening: unreachable */
  c = client_of("http://127.0.0.1:1", 300);
  assert_int_equal(cluster_etcd_put(c, "/a", "b", 1, 0),
                   CLUSTER_EUNREACHABLE);
  cluster_etcd_close(c);
  fake_stop(slow);
  fake_stop(good);
}

/* ---- watch ----------------------------------------------------------- */

struct seen {
  int events;
  int64_t last_revision;
  enum cluster_event_type last_type;
  char last_value[32];
};

static int on_event(void *arg, const struct cluster_event *ev)
{
  struct seen *s = arg;
  s->events++;
  s->last_revision = ev->kv.mod_revision;
  s->last_type = ev->type;
  snprintf(s->last_value, sizeof s->last_value, "%s", ev->kv.value);
  return 0;
}

static struct cluster_watch *watch_of(struct fake *f)
{
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d", f->port);
  struct cluster_etcd_options o = {.endpoints = url, .timeout_ms = 1000};
  struct cluster_watch *w = NULL;
  assert_int_equal(cluster_watch_open(&o, &w), 0);
  return w;
}

#define CREATED "{\"result\":{\"header\":{\"revision\":\"39\"},\"created\":true}}\n"
#define EVENT_PUT                                                            \
  "{\"result\":{" HEADER ",\"events\":[{\"kv\":{\"key\":\"L2sx\","           \
  "\"value\":\"djE=\",\"mod_revision\":\"40\"}}]}}\n"
#define EVENT_DELETE                                                         \
  "{\"result\":{" HEADER ",\"events\":[{\"type\":\"DELETE\",\"kv\":"          \
  "{\"key\":\"L2sx\",\"mod_revision\":\"41\"}}]}}\n"

static void test_watch_breaks_mid_stream(void **state)
{
  (void)state;
  struct fake *f = fake_start(200, "");
  f->stream[0] = CREATED;
  f->stream[1] = EVENT_PUT;
  f->stream[2] = EVENT_DELETE;
  f->stream[3] = "{\"result\":{\"events\":[{\"kv\""; /* then cut */
  struct cluster_watch *w = watch_of(f);
  struct seen s = {0};
  assert_int_equal(cluster_watch_run(w, "/k", true, 0, 0, on_event, &s),
                   CLUSTER_EPROTOCOL);
  assert_int_equal(s.events, 2);
  assert_int_equal(s.last_type, CLUSTER_EVENT_DELETE);
  assert_int_equal(cluster_watch_revision(w), 41); /* re-watch from 42 */
  assert_true(strlen(cluster_watch_error(w)) > 0);
  /* the request: a create_request with a prefix's range_end */
  assert_non_null(strstr(f->last_request, "\"range_end\":\"L2w=\""));
  /* garbage on the stream */
  f->stream[1] = "this is not json\n";
  f->stream[2] = NULL;
  f->stream_hold = true;
  memset(&s, 0, sizeof s);
  assert_int_equal(cluster_watch_run(w, "/k", false, 0, 0, on_event, &s),
                   CLUSTER_EPROTOCOL);
  assert_int_equal(s.events, 0);
  /* compacted */
  f->stream[0] = "{\"result\":{\"header\":{},\"canceled\":true,"
                 "\"compact_revision\":\"30\"}}\n";
  f->stream[1] = NULL;
  assert_int_equal(cluster_watch_run(w, "/k", false, 5, 0, on_event, &s),
                   CLUSTER_ECOMPACTED);
  assert_int_equal(cluster_watch_compact_revision(w), 30);
  cluster_watch_close(w);
  fake_stop(f);
}

struct runner {
  struct cluster_watch *w;
  struct seen s;
  long idle_ms;
  atomic_int rc;
  atomic_bool done;
};

static void *run_watch(void *arg)
{
  struct runner *r = arg;
  atomic_store(&r->rc, cluster_watch_run(r->w, "/k", false, 0, r->idle_ms,
                                         on_event, &r->s));
  atomic_store(&r->done, true);
  return NULL;
}

static void test_watch_cancel_and_idle(void **state)
{
  (void)state;
  struct fake *f = fake_start(200, "");
  f->stream[0] = CREATED;
  f->stream[1] = EVENT_PUT;
  f->stream_hold = true; /* then silence, connection open */
  struct runner r;
  memset(&r, 0, sizeof r);
  r.w = watch_of(f);
  pthread_t t;
  pthread_create(&t, NULL, run_watch, &r);
  double deadline = now_s() + 5;
  while (cluster_watch_revision(r.w) < 40 && now_s() < deadline)
    sleep_ms(10);
  assert_int_equal(cluster_watch_revision(r.w), 40);
  assert_false(atomic_load(&r.done));
  double t0 = now_s();
  cluster_watch_cancel(r.w);
  pthread_join(t, NULL);
  assert_true(now_s() - t0 < 0.5);
  assert_int_equal(atomic_load(&r.rc), CLUSTER_ECANCELLED);
  assert_string_equal(r.s.last_value, "v1");
  /* idle bound: silence for 300 ms ends the run */
  cluster_watch_reset(r.w);
  r.idle_ms = 300;
  t0 = now_s();
  run_watch(&r);
  assert_int_equal(atomic_load(&r.rc), CLUSTER_ETIMEDOUT);
  assert_true(now_s() - t0 < 2.0);
  cluster_watch_close(r.w);
  fake_stop(f);
}

/* ---- small parts: options, records, backoff -------------------------- */

static void test_options_and_records(void **state)
{
  (void)state;
  struct cluster_etcd *c = NULL;
  struct cluster_etcd_options bad[] = {
      {.endpoints = ""}, {.endpoints = "127.0.0.1:2379"},
      {.endpoints = "http://a,,http://b"}, {.endpoints = NULL}};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    assert_int_equal(cluster_etcd_open(&bad[i], &c), CLUSTER_EINVAL);
  char key[64];
  assert_int_equal(cluster_key(key, sizeof key, "prod", "members/n1"), 0);
  assert_string_equal(key, "/loomship/prod/members/n1");
  assert_int_equal(cluster_key(key, sizeof key, "a/b", "leader"),
                   CLUSTER_EINVAL);
  assert_int_equal(cluster_key(key, 8, "prod", "leader"), CLUSTER_EINVAL);
  struct cluster_member m = {.epoch = 3, .received_seq = 9007199254740993LL,
                             .applied_seq = 5, .lag_frames = 2,
                             .lag_seconds = 0.5};
  strcpy(m.name, "n1"), strcpy(m.url, "http://127.0.0.1:1"),
      strcpy(m.role, "leader"), strcpy(m.state, "leading");
  char *json;
  assert_int_equal(cluster_member_format(&m, &json), 0);
  struct cluster_member back;
  assert_int_equal(cluster_member_parse(json, strlen(json), &back), 0);
  assert_true(back.received_seq == 9007199254740993LL);
  assert_string_equal(back.role, "leader");
  assert_true(back.lag_seconds == 0.5);
  free(json);
  const char *bad_member = "{\"name\":\"n\",\"url\":\"u\",\"role\":\"standby\","
                           "\"received_seq\":\"12\"}";
  assert_int_equal(cluster_member_parse(bad_member, strlen(bad_member), &back),
                   CLUSTER_EPROTOCOL);
  int64_t e;
  assert_int_equal(cluster_epoch_parse("17", 2, &e), 0);
  assert_int_equal(e, 17);
  assert_int_equal(cluster_epoch_parse("-1", 2, &e), CLUSTER_EPROTOCOL);
  assert_int_equal(cluster_epoch_parse("9223372036854775808", 19, &e),
                   CLUSTER_EPROTOCOL);
  struct cluster_backoff b;
  cluster_backoff_init(&b, 100, 1000, 42);
  uint32_t prev_cap = 100;
  for (int i = 0; i < 10; i++) {
    uint32_t d = cluster_backoff_next(&b);
    assert_true(d >= prev_cap / 2 && d <= prev_cap);
    prev_cap = prev_cap * 2 > 1000 ? 1000 : prev_cap * 2;
  }
  cluster_backoff_reset(&b);
  assert_true(cluster_backoff_next(&b) <= 100);
  assert_string_equal(cluster_error_name(CLUSTER_ELEASE_GONE),
                      "CLUSTER_ELEASE_GONE");
  assert_non_null(strstr(cluster_strerror(CLUSTER_ECOMPACTED), "compacted"));
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_garbage),
    cmocka_unit_test(test_http_errors),
    cmocka_unit_test(test_lease_gone),
    cmocka_unit_test(test_compare_fails),
    cmocka_unit_test(test_slow_endpoint_failover),
    cmocka_unit_test(test_watch_breaks_mid_stream),
    cmocka_unit_test(test_watch_cancel_and_idle),
    cmocka_unit_test(test_options_and_records),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
