/* watch.c: an etcd watch stream (etcd.h "Watch").
 *
 * POST /v3/watch {"create_request": {...}} keeps the connection open and
 * answers one JSON object a line, each {"result": {...}}: first
 * {"created": true}, then {"events": [...]} as keys change, or
 * {"canceled": true, "compact_revision"} when the start revision is gone.
 * The transfer runs on a curl multi handle, so that cancel (from another
 * thread) wakes the poll at once with curl_multi_wakeup, and the run loop
 * checks the cancel flag, the idle bound and the create deadline at least
 * every WATCH_TICK_MS. */
#include "etcd_internal.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define WATCH_TICK_MS 100

struct cluster_watch {
  struct etcd_endpoints ep;
  CURLM *multi;
  CURL *easy;
  struct curl_slist *headers;
  atomic_bool cancelled;
  int64_t revision;
  int64_t compact_revision;
  char error[ETCD_ERROR_SIZE];
  /* one run */
  struct etcd_buf line;
  cluster_watch_fn fn;
  void *arg;
  int stop;        /* non-zero: why the stream must end */
  bool created;
  long long last_data_ms;
};

static long long watch_now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int cluster_watch_open(const struct cluster_etcd_options *options,
                       struct cluster_watch **out)
{
  if (!out)
    return CLUSTER_EINVAL;
  *out = NULL;
  struct cluster_watch *w = calloc(1, sizeof *w);
  if (!w)
    return CLUSTER_ENOMEM;
  int rc = etcd_endpoints_parse(options, &w->ep);
  if (rc) {
    free(w);
    return rc;
  }
  atomic_init(&w->cancelled, false);
  w->multi = curl_multi_init();
  w->easy = curl_easy_init();
  w->headers = curl_slist_append(NULL, "Content-Type: application/json");
  if (!w->multi || !w->easy || !w->headers) {
    cluster_watch_close(w);
    return CLUSTER_ENOMEM;
  }
  *out = w;
  return 0;
}

void cluster_watch_close(struct cluster_watch *w)
{
  if (!w)
    return;
  if (w->easy)
    curl_easy_cleanup(w->easy);
  if (w->multi)
    curl_multi_cleanup(w->multi);
  curl_slist_free_all(w->headers);
  etcd_buf_free(&w->line);
  etcd_endpoints_free(&w->ep);
  free(w);
}

void cluster_watch_cancel(struct cluster_watch *w)
{
  if (!w)
    return;
  atomic_store(&w->cancelled, true);
  curl_multi_wakeup(w->multi);
}

void cluster_watch_reset(struct cluster_watch *w)
{
  if (w)
    atomic_store(&w->cancelled, false);
}

int64_t cluster_watch_revision(const struct cluster_watch *w)
{
  return w ? w->revision : 0;
}

int64_t cluster_watch_compact_revision(const struct cluster_watch *w)
{
  return w ? w->compact_revision : 0;
}

const char *cluster_watch_error(const struct cluster_watch *w)
{
  return w ? w->error : "";
}

/* ---- one line of the stream ------------------------------------------ */

static int watch_fail(struct cluster_watch *w, int rc, const char *what)
{
  snprintf(w->error, sizeof w->error, "%s: watch: %s",
           w->ep.url[w->ep.current], what);
  return rc;
}

static int watch_event(struct cluster_watch *w, json_t *ev)
{
  struct cluster_event event;
  memset(&event, 0, sizeof event);
  json_t *type = json_object_get(ev, "type");
  if (type && !json_is_string(type))
    return watch_fail(w, CLUSTER_EPROTOCOL, "an event type is not a string");
  if (!type || strcmp(json_string_value(type), "PUT") == 0)
    event.type = CLUSTER_EVENT_PUT;
  else if (strcmp(json_string_value(type), "DELETE") == 0)
    event.type = CLUSTER_EVENT_DELETE;
  else
    return watch_fail(w, CLUSTER_EPROTOCOL, "an unknown event type");
  int rc = etcd_json_kv(json_object_get(ev, "kv"), &event.kv);
  if (rc)
    return watch_fail(w, rc, "an event without a valid kv");
  if (event.kv.mod_revision <= 0) {
    cluster_kv_free(&event.kv);
    return watch_fail(w, CLUSTER_EPROTOCOL, "an event without a revision");
  }
  rc = w->fn(w->arg, &event);
  if (rc == 0 && event.kv.mod_revision > w->revision)
    w->revision = event.kv.mod_revision;
  cluster_kv_free(&event.kv);
  return rc;
}

static int watch_result(struct cluster_watch *w, json_t *r, int64_t start)
{
  int64_t header_rev = 0;
  if (etcd_json_revision(r, &header_rev))
    return watch_fail(w, CLUSTER_EPROTOCOL, "a bad header");
  if (json_is_true(json_object_get(r, "canceled"))) {
    etcd_json_int64(r, "compact_revision", &w->compact_revision);
    if (w->compact_revision > 0)
      return watch_fail(w, CLUSTER_ECOMPACTED, "start revision compacted");
    return watch_fail(w, CLUSTER_EPROTOCOL, "etcd cancelled the watch");
  }
  json_t *events = json_object_get(r, "events");
  if (json_is_true(json_object_get(r, "created"))) {
    w->created = true;
    int64_t seen = start > 0 ? start - 1 : header_rev;
    if (seen > w->revision)
      w->revision = seen;
  } else if (!w->created) {
    return watch_fail(w, CLUSTER_EPROTOCOL, "events before the watch was "
                      "created");
  }
  if (events && !json_is_array(events))
    return watch_fail(w, CLUSTER_EPROTOCOL, "events is not an array");
  for (size_t i = 0; i < json_array_size(events); i++) {
    int rc = watch_event(w, json_array_get(events, i));
    if (rc)
      return rc;
  }
  if (json_array_size(events) == 0 && !json_is_true(json_object_get(r,
      "created")) && header_rev > w->revision)
    w->revision = header_rev; /* a progress notification */
  return 0;
}

static int watch_line(struct cluster_watch *w, const char *text, size_t len,
                      int64_t start)
{
  json_t *root = json_loadb(text, len, 0, NULL);
  json_t *r = json_object_get(root, "result");
  int rc;
  if (!json_is_object(r)) {
    json_t *e = json_object_get(root, "error");
    rc = watch_fail(w, e ? CLUSTER_EHTTP : CLUSTER_EPROTOCOL,
                    e ? "etcd sent an error on the stream"
                      : "a line that is not a watch answer");
  } else {
    rc = watch_result(w, r, start);
  }
  json_decref(root);
  return rc;
}

/* ---- the transfer ---------------------------------------------------- */

struct watch_write {
  struct cluster_watch *w;
  int64_t start;
};

static size_t watch_write(char *data, size_t size, size_t n, void *arg)
{
  struct watch_write *ww = arg;
  struct cluster_watch *w = ww->w;
  size_t len = size * n;
  w->last_data_ms = watch_now_ms();
  if (w->stop || etcd_buf_append(&w->line, data, len)) {
    if (!w->stop)
      w->stop = watch_fail(w, CLUSTER_EPROTOCOL, "a line too long");
    return 0;
  }
  char *nl;
  while (!w->stop && (nl = memchr(w->line.data, '\n', w->line.len))) {
    size_t one = (size_t)(nl - w->line.data);
    if (one > 0)
      w->stop = watch_line(w, w->line.data, one, ww->start);
    memmove(w->line.data, nl + 1, w->line.len - one - 1);
    w->line.len -= one + 1;
  }
  return w->stop ? 0 : len;
}

static json_t *watch_body(const char *key, bool prefix, int64_t start)
{
  char rev[24];
  size_t klen = strlen(key);
  char *k64 = etcd_base64_encode(key, klen), *e64 = NULL;
  if (prefix) {
    size_t n;
    char *end = etcd_prefix_end(key, klen, &n);
    e64 = end ? etcd_base64_encode(end, n) : NULL;
    free(end);
  }
  snprintf(rev, sizeof rev, "%lld", (long long)start);
  json_t *req = (!k64 || (prefix && !e64)) ? NULL
      : prefix ? json_pack("{s:{s:s, s:s, s:s}}", "create_request", "key",
                           k64, "range_end", e64, "start_revision", rev)
               : json_pack("{s:{s:s, s:s}}", "create_request", "key", k64,
                           "start_revision", rev);
  free(k64);
  free(e64);
  return req;
}

/* Why the transfer ended, once curl says it is done. */
static int watch_done(struct cluster_watch *w, CURLcode res, bool *retry)
{
  long http = 0;
  *retry = false;
  curl_easy_getinfo(w->easy, CURLINFO_RESPONSE_CODE, &http);
  if (w->stop)
    return w->stop;
  if (res != CURLE_OK) {
    int rc = etcd_curl_error(res, retry);
    *retry = *retry && !w->created;
    if (w->created && rc == CLUSTER_EUNREACHABLE)
      rc = CLUSTER_EPROTOCOL; /* it broke mid-stream */
    return watch_fail(w, rc, curl_easy_strerror(res));
  }
  if (http != 200) {
    *retry = http >= 500;
    return watch_fail(w, http >= 500 ? CLUSTER_EHTTP : CLUSTER_EREFUSED,
                      "HTTP error");
  }
  return watch_fail(w, CLUSTER_EPROTOCOL, "the stream ended");
}

/* Check the bounds of the run loop: cancel, idle, create deadline. */
static int watch_bounds(struct cluster_watch *w, long idle_ms,
                        long long begun_ms)
{
  long long now = watch_now_ms();
  if (atomic_load(&w->cancelled))
    return watch_fail(w, CLUSTER_ECANCELLED, "cancelled");
  if (!w->created && now - begun_ms > w->ep.timeout_ms)
    return watch_fail(w, CLUSTER_ETIMEDOUT, "not created in time");
  if (w->created && idle_ms > 0 && now - w->last_data_ms > idle_ms)
    return watch_fail(w, CLUSTER_ETIMEDOUT, "idle for too long");
  return 0;
}

/* One attempt at the current endpoint; *retry: another may answer. */
static int watch_attempt(struct cluster_watch *w, const char *body,
                         long idle_ms, struct watch_write *ww, bool *retry)
{
  char url[1024];
  snprintf(url, sizeof url, "%s/v3/watch", w->ep.url[w->ep.current]);
  CURL *h = w->easy;
  curl_easy_reset(h);
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, w->ep.connect_timeout_ms);
  curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, w->headers);
  curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, watch_write);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, ww);
  w->created = false;
  w->stop = 0;
  w->line.len = 0;
  w->last_data_ms = watch_now_ms();
  long long begun = w->last_data_ms;
  if (curl_multi_add_handle(w->multi, h) != CURLM_OK)
    return watch_fail(w, CLUSTER_ENOMEM, "curl_multi_add_handle");
  int rc = 0, running = 1;
  *retry = false;
  while (!rc) {
    curl_multi_perform(w->multi, &running);
    int left;
    CURLMsg *m = curl_multi_info_read(w->multi, &left);
    if (m && m->msg == CURLMSG_DONE)
      rc = watch_done(w, m->data.result, retry);
    else if (w->stop)
      rc = w->stop;
    else if (!(rc = watch_bounds(w, idle_ms, begun)))
      curl_multi_poll(w->multi, NULL, 0, WATCH_TICK_MS, NULL);
  }
  curl_multi_remove_handle(w->multi, h);
  return rc;
}

int cluster_watch_run(struct cluster_watch *w, const char *key, bool prefix,
                      int64_t start_revision, long idle_timeout_ms,
                      cluster_watch_fn fn, void *arg)
{
  if (!w || !key || !*key || !fn || start_revision < 0 ||
      idle_timeout_ms < 0)
    return CLUSTER_EINVAL;
  json_t *req = watch_body(key, prefix, start_revision);
  char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
  json_decref(req);
  if (!body)
    return CLUSTER_ENOMEM;
  w->fn = fn;
  w->arg = arg;
  w->compact_revision = 0;
  struct watch_write ww = {w, start_revision};
  int rc = CLUSTER_EUNREACHABLE;
  for (size_t i = 0; i < w->ep.count; i++) {
    bool retry = false;
    rc = watch_attempt(w, body, idle_timeout_ms, &ww, &retry);
    if (!retry)
      break;
    w->ep.current = (w->ep.current + 1) % w->ep.count;
  }
  free(body);
  return rc;
}
