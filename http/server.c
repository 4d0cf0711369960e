/*
 * server.c: the daemon (libmicrohttpd), request dispatch, authentication,
 * load bounds, status, metrics and the health checks.
 *
 * REQUESTS
 *
 * libmicrohttpd calls the access handler several times per request, in
 * three phases:
 *
 *   0. request line (on_request_line, the URI log callback): allocate the
 *      request state while the raw target can still be seen.
 *   1. headers received (!r->started): decide what can be decided from
 *      the headers: a NUL byte in the path or an ambiguous length (400),
 *      unknown path (404), method (405), stopping (503), token (401),
 *      upload slot (503), Content-Length over the cap (413), and for a
 *      base image, claiming the standby. A refusal is queued at once:
 *      libmicrohttpd then skips the body and closes the connection after
 *      the reply. Otherwise the guard (guard.c) watches the body's rate
 *      and duration.
 *   2. body chunks (*upload_data_size > 0): a frame accumulates up to its
 *      cap (its header, once 128 bytes are in, gives the real size); a
 *      base image is fed to the store page by page. libmicrohttpd cannot
 *      queue an answer here, so a refusal decided here is kept and the
 *      rest of the body read and dropped up to its Content-Length; without
 *      one (chunked), past the byte cap, or too slow or too long, the
 *      connection is closed at once (body_chunk).
 *   3. body complete (*upload_data_size == 0): answer.
 *
 * The request state is freed in one place, the completion callback
 * (request_completed), whatever happened: a base image still open there
 * was cut off, and is aborted (the old image stays).
 *
 * Threads: one per connection (MHD_USE_THREAD_PER_CONNECTION), so a
 * handler may block on the disk (an fsync of the receive log) without
 * stalling other connections; the connection limit bounds the threads.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server_internal.h"

#ifndef LOOMSHIP_VERSION
#define LOOMSHIP_VERSION "unknown"
#endif

const unsigned http_counted_codes[HTTP_CODE_SLOTS - 1] = {
    200, 206, 400, 401, 404, 405, 409, 413, 416, 500, 503, 507, 304, 408};

static const char *const endpoint_paths[HTTP_EP_COUNT] = {
    [HTTP_EP_FRAMES] = "/v1/frames",   [HTTP_EP_BASE] = "/v1/base",
    [HTTP_EP_PROMOTE] = "/v1/promote", [HTTP_EP_BACKUP] = "/v1/backup",
    [HTTP_EP_STATUS] = "/v1/status",   [HTTP_EP_METRICS] = "/metrics",
    [HTTP_EP_HEALTHZ] = "/healthz",    [HTTP_EP_READYZ] = "/readyz",
    [HTTP_EP_OTHER] = "other",
};

const char *http_endpoint_path(http_endpoint ep)
{
  return ep < HTTP_EP_COUNT ? endpoint_paths[ep] : "other";
}

/* ---------------------------------------------------------------------- */
/* Per-request state */

typedef struct request {
  http_endpoint ep;
  bool started;                 /* phase 1 done */
  bool path_nul_escaped;        /* "%00" in the raw request target */
  const char *target_end;       /* end of the raw target as a C string */
  bool upload_slot;             /* holds one of max_uploads */
  bool wants_reserved_slot;     /* a frame: the kept slot, once its header
                                   proves valid */
  bool has_length;              /* Content-Length given */
  uint64_t body_bytes;          /* read so far */
  uint64_t body_cap;            /* past this, the connection is closed */
  bool refused;                 /* the body is being skipped */
  http_reply refusal;           /* what to answer then */
  uint8_t *body;                /* a frame */
  size_t len;
  size_t cap;
  bool header_checked;
  http_base_upload *base;       /* a base image */
} request;

static http_endpoint endpoint_of(const char *url)
{
  for (int ep = 0; ep < HTTP_EP_OTHER; ep++)
    if (strcmp(url, endpoint_paths[ep]) == 0)
      return (http_endpoint)ep;
  return HTTP_EP_OTHER;
}

/* The methods each endpoint takes (HEAD goes with GET). */
static const char *allowed_methods(http_endpoint ep)
{
  switch (ep) {
  case HTTP_EP_FRAMES:
  case HTTP_EP_PROMOTE:
    return "POST";
  case HTTP_EP_BASE:
    return "PUT";
  case HTTP_EP_BACKUP:
  case HTTP_EP_STATUS:
  case HTTP_EP_METRICS:
  case HTTP_EP_HEALTHZ:
  case HTTP_EP_READYZ:
    return "GET, HEAD";
  case HTTP_EP_OTHER:
  case HTTP_EP_COUNT:
    break;
  }
  return "";
}

static bool method_allowed(http_endpoint ep, const char *method)
{
  const char *allowed = allowed_methods(ep);
  if (strcmp(allowed, "GET, HEAD") == 0)
    return strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
  return strcmp(method, allowed) == 0;
}

static bool needs_token(http_endpoint ep)
{
  return ep == HTTP_EP_FRAMES || ep == HTTP_EP_BASE ||
         ep == HTTP_EP_PROMOTE || ep == HTTP_EP_BACKUP;
}

static void client_address(struct MHD_Connection *conn, char *out, size_t n)
{
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  snprintf(out, n, "?");
  if (!ci || !ci->client_addr)
    return;
  const struct sockaddr *sa = ci->client_addr;
  if (sa->sa_family == AF_INET)
    inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr,
              out, (socklen_t)n);
  else if (sa->sa_family == AF_INET6)
    inet_ntop(AF_INET6,
              &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out,
              (socklen_t)n);
}

/* ---------------------------------------------------------------------- */
/* Sending */

void http_server_count(http_server *s, http_endpoint ep, unsigned status)
{
  unsigned slot = HTTP_CODE_SLOTS - 1;
  for (unsigned i = 0; i < HTTP_CODE_SLOTS - 1; i++)
    if (http_counted_codes[i] == status)
      slot = i;
  pthread_mutex_lock(&s->stats_mu);
  s->requests[ep][slot]++;
  pthread_mutex_unlock(&s->stats_mu);
}

static int queue_buffer(http_server *s, struct MHD_Connection *conn,
                        http_endpoint ep, unsigned status, char *data,
                        size_t len, const char *content_type,
                        const http_reply *reply)
{
  struct MHD_Response *resp =
      MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
  if (!resp) {
    free(data);
    return MHD_NO;
  }
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
  if (reply) {
    if (reply->retry_after) {
      char v[16];
      snprintf(v, sizeof v, "%u", reply->retry_after);
      MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, v);
    }
    for (unsigned i = 0; i < reply->header_count; i++)
      MHD_add_response_header(resp, reply->headers[i].name,
                              reply->headers[i].value);
  }
  enum MHD_Result r = MHD_queue_response(conn, status, resp);
  MHD_destroy_response(resp);
  http_server_count(s, ep, status);
  return r;
}

int http_server_send(http_server *s, struct MHD_Connection *conn,
                     http_endpoint ep, http_reply *reply)
{
  if (!reply->status) {
    /* A handler that decided nothing: a bug, answered as one. */
    http_reply_error(reply, 500, "internal error");
  }
  while (reply->body.depth > 0)
    json_object_end(&reply->body);
  size_t len = 0;
  char *doc = json_take(&reply->body, &len);
  if (!doc) {
    doc = strdup("{\"error\":\"out of memory\"}");
    if (!doc)
      return MHD_NO;
    len = strlen(doc);
    reply->status = 503;
  }
  return queue_buffer(s, conn, ep, reply->status, doc, len,
                      "application/json", reply);
}

static int send_error(http_server *s, struct MHD_Connection *conn,
                      http_endpoint ep, unsigned status, const char *message)
{
  http_reply reply = {0};
  http_reply_error(&reply, status, message);
  return http_server_send(s, conn, ep, &reply);
}

/* ---------------------------------------------------------------------- */
/* What the node knows, gathered once for status, metrics and /readyz. */

typedef struct node_figures {
  http_standby_view view;       /* on a primary, view.status only */
  bool standby_role;            /* a standby not promoted */
  bool promoted;
  bool fenced;
  bool ready;
  const char *not_ready;        /* why, when not ready */
  replicate_peer_status *peers; /* primary: malloc'd */
  size_t peer_count;
  http_backup_figures backup;
  unsigned uploads;
  uint64_t auth_failures;
} node_figures;

static void figures_collect(http_server *s, node_figures *f)
{
  memset(f, 0, sizeof *f);
  http_server_status *st = &f->view.status;
  if (s->standby) {
    http_standby_view_get(s->standby, &f->view);
    f->promoted = st->role == HTTP_ROLE_PRIMARY;
    f->standby_role = !f->promoted;
    bool apply_ok = st->ready;
    f->ready = true;
    if (f->standby_role) {
      if (st->replay_paused) {
        f->ready = false;
        f->not_ready = "base image in progress";
      } else if (!apply_ok) {
        f->ready = false;
        f->not_ready = "a received frame failed to apply";
      } else if (st->lag_seconds > s->ready_max_lag_seconds) {
        f->ready = false;
        f->not_ready = "lag above the threshold";
      }
    }
  } else {
    st->role = HTTP_ROLE_PRIMARY;
    s->primary.position(s->primary.ctx, &st->applied);
    if (s->primary.history)
      s->primary.history(s->primary.ctx, &st->history);
    st->received = st->applied;
    st->primary_seq = st->applied.seq;
    f->fenced = s->primary.fenced && s->primary.fenced(s->primary.ctx);
    f->ready = !f->fenced;
    if (f->fenced)
      f->not_ready = "fenced: a standby was promoted";
    if (s->primary.peers) {
      size_t cap = 16;
      for (int attempt = 0; attempt < 3; attempt++) {
        replicate_peer_status *list = calloc(cap, sizeof *list);
        if (!list)
          break;
        size_t n = s->primary.peers(s->primary.ctx, list, cap);
        if (n <= cap) {
          f->peers = list;
          f->peer_count = n;
          break;
        }
        free(list);
        cap = n;
      }
    }
  }
  st->fenced = f->fenced;
  st->ready = f->ready;
  http_backups_figures(s->backups, &f->backup);
  st->backups_in_progress = f->backup.in_progress;
  pthread_mutex_lock(&s->stats_mu);
  f->uploads = s->uploads;
  f->auth_failures = s->auth_failures;
  pthread_mutex_unlock(&s->stats_mu);
}

static void figures_free(node_figures *f)
{
  free(f->peers);
  f->peers = NULL;
}

void http_server_get_status(http_server *s, http_server_status *out)
{
  node_figures f;
  figures_collect(s, &f);
  *out = f.view.status;
  figures_free(&f);
}

/* ---------------------------------------------------------------------- */
/* GET /v1/status */

static void lag_json(json_writer *w, uint64_t frames, uint64_t bytes,
                     double seconds)
{
  json_key(w, "lag");
  json_object_begin(w);
  json_key(w, "frames");
  json_uint(w, frames);
  json_key(w, "bytes");
  json_uint(w, bytes);
  json_key(w, "seconds");
  json_double(w, seconds);
  json_object_end(w);
}

/* "diverged": null, or the last input refused as moving this standby
 * backwards or sideways: {"code", "reason", "at"}. */
static void diverged_json(json_writer *w, const http_server_status *st)
{
  json_key(w, "diverged");
  if (!st->diverged) {
    json_null(w);
    return;
  }
  json_object_begin(w);
  json_key(w, "code");
  json_string(w, http_error_name(st->diverged));
  json_key(w, "reason");
  json_string(w, replicate_strerror(st->diverged));
  json_key(w, "at");
  json_time_ns(w, st->diverged_at_ns);
  json_key(w, "refusals");
  json_uint(w, st->divergences);
  json_object_end(w);
}

static void status_json(http_server *s, const node_figures *f, json_writer *w)
{
  const http_server_status *st = &f->view.status;
  json_object_begin(w);
  json_key(w, "role");
  json_string(w, f->standby_role ? "standby" : "primary");
  json_key(w, "epoch");
  json_uint(w, st->received.epoch > st->applied.epoch ? st->received.epoch
                                                      : st->applied.epoch);
  http_json_history(w, &st->history);
  json_key(w, "applied");
  http_json_position(w, &st->applied);

  if (f->standby_role) {
    diverged_json(w, st);
    json_key(w, "received");
    http_json_position(w, &st->received);
    json_key(w, "primary_seq");
    json_uint(w, st->primary_seq);
    lag_json(w, st->lag_frames, st->lag_bytes, st->lag_seconds);
    json_key(w, "clock_skew_seconds");
    if (f->view.clock_skew_known)
      json_double(w, f->view.clock_skew_seconds);
    else
      json_null(w);
    json_key(w, "replay_paused");
    json_bool(w, st->replay_paused);
    json_key(w, "primary_epoch");
    json_uint(w, f->view.primary_epoch);
    json_key(w, "last_contact_at");
    json_time_ns(w, f->view.last_contact_ns);
    json_key(w, "last_apply_error");
    json_string(w, st->last_apply_error ? replicate_strerror(st->last_apply_error)
                                        : NULL);
    json_key(w, "last_apply_error_at");
    json_time_ns(w, st->last_apply_error ? f->view.last_apply_error_at_ns : 0);
    json_key(w, "receive_log_bytes");
    json_uint(w, f->view.receive_log_bytes);
  } else {
    json_key(w, "fenced");
    json_bool(w, f->fenced);
    if (s->primary.sync_state) {
      http_sync_status sync = {0};
      s->primary.sync_state(s->primary.ctx, &sync);
      json_key(w, "sync");
      json_object_begin(w);
      json_key(w, "required");
      json_uint(w, sync.required);
      json_key(w, "count");
      json_uint(w, sync.required);
      json_key(w, "degraded");
      json_bool(w, sync.degraded);
      json_key(w, "degraded_since");
      json_time_ns(w, sync.degraded ? sync.degraded_since_ns : 0);
      json_object_end(w);
    }
    if (f->promoted) {
      json_key(w, "promoted_at");
      json_time_ns(w, f->view.promoted_at_ns);
    }
    json_key(w, "standbys");
    json_array_begin(w);
    for (size_t i = 0; i < f->peer_count; i++) {
      const replicate_peer_status *p = &f->peers[i];
      json_object_begin(w);
      json_key(w, "url");
      json_string(w, p->url);
      json_key(w, "state");
      json_string(w, replicate_peer_state_name(p->state));
      json_key(w, "sent_seq");
      json_uint(w, p->sent_seq);
      json_key(w, "received_seq");
      json_uint(w, p->received_seq);
      json_key(w, "applied_seq");
      json_uint(w, p->applied_seq);
      json_key(w, "base_images");
      json_uint(w, p->base_images_sent);
      lag_json(w, p->lag_frames, p->lag_bytes, p->lag_seconds);
      json_key(w, "last_error");
      json_string(w, p->last_error[0] ? p->last_error : NULL);
      json_key(w, "last_error_at");
      json_time_ns(w, p->last_error_at_ns);
      json_key(w, "bytes");
      json_object_begin(w);
      json_key(w, "raw");
      json_uint(w, p->bytes_raw);
      json_key(w, "wire");
      json_uint(w, p->bytes_wire);
      json_object_end(w);
      json_object_end(w);
    }
    json_array_end(w);
  }

  json_key(w, "ready");
  json_bool(w, f->ready);
  json_key(w, "backup");
  json_object_begin(w);
  json_key(w, "in_progress");
  json_uint(w, f->backup.in_progress);
  json_key(w, "position");
  if (f->backup.open)
    http_json_position(w, &f->backup.position);
  else
    json_null(w);
  json_object_end(w);

  json_key(w, "counters");
  json_object_begin(w);
  json_key(w, "frames_received");
  json_uint(w, st->frames_received);
  json_key(w, "frames_applied");
  json_uint(w, st->frames_applied);
  json_key(w, "apply_commits");
  json_uint(w, st->apply_commits);
  json_key(w, "duplicates");
  json_uint(w, st->duplicates);
  json_key(w, "heartbeats");
  json_uint(w, f->view.heartbeats);
  json_key(w, "base_images");
  json_uint(w, f->view.bases);
  json_key(w, "backups");
  json_uint(w, f->backup.started);
  json_object_end(w);

  json_key(w, "uptime_seconds");
  json_double(w, (double)(http_monotonic_ns() - s->started_mono_ns) / 1e9);
  json_key(w, "started_at");
  json_time_ns(w, s->started_ns);
  json_key(w, "version");
  json_string(w, LOOMSHIP_VERSION);
  json_object_end(w);
}

static int answer_status(http_server *s, struct MHD_Connection *conn)
{
  node_figures f;
  figures_collect(s, &f);
  http_reply reply = {.status = 200};
  json_init(&reply.body);
  status_json(s, &f, &reply.body);
  figures_free(&f);
  return http_server_send(s, conn, HTTP_EP_STATUS, &reply);
}

static int answer_readyz(http_server *s, struct MHD_Connection *conn)
{
  node_figures f;
  figures_collect(s, &f);
  http_reply reply = {0};
  http_reply_object(&reply, f.ready ? 200 : 503);
  json_key(&reply.body, "ready");
  json_bool(&reply.body, f.ready);
  json_key(&reply.body, "reason");
  json_string(&reply.body, f.not_ready);
  json_key(&reply.body, "role");
  json_string(&reply.body, f.standby_role ? "standby" : "primary");
  json_key(&reply.body, "lag_seconds");
  json_double(&reply.body, f.view.status.lag_seconds);
  json_key(&reply.body, "threshold_seconds");
  json_double(&reply.body, s->ready_max_lag_seconds);
  figures_free(&f);
  return http_server_send(s, conn, HTTP_EP_READYZ, &reply);
}

/* ---------------------------------------------------------------------- */
/* GET /metrics: Prometheus text format 0.0.4 */

typedef struct textbuf {
  char *data;
  size_t len, cap;
  bool failed;
} textbuf;

static void tb_printf(textbuf *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void tb_printf(textbuf *t, const char *fmt, ...)
{
  if (t->failed)
    return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->data ? t->data + t->len : NULL,
                      t->data ? t->cap - t->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
      t->failed = true;
      return;
    }
    if (t->data && t->len + (size_t)n < t->cap) {
      t->len += (size_t)n;
      return;
    }
    size_t cap = t->cap ? t->cap * 2 : 4096;
    while (cap < t->len + (size_t)n + 1)
      cap *= 2;
    char *data = realloc(t->data, cap);
    if (!data) {
      t->failed = true;
      return;
    }
    t->data = data;
    t->cap = cap;
  }
}

static void tb_head(textbuf *t, const char *name, const char *type,
                    const char *help)
{
  tb_printf(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value with \\, \" and \n escaped, as the format wants. */
static void label_escape(const char *in, char *out, size_t n)
{
  size_t j = 0;
  for (; *in && j + 3 < n; in++) {
    if (*in == '\\' || *in == '"') {
      out[j++] = '\\';
      out[j++] = *in;
    } else if (*in == '\n') {
      out[j++] = '\\';
      out[j++] = 'n';
    } else {
      out[j++] = *in;
    }
  }
  out[j] = '\0';
}

static void gauge_u(textbuf *t, const char *name, const char *help, uint64_t v)
{
  tb_head(t, name, "gauge", help);
  tb_printf(t, "%s %" PRIu64 "\n", name, v);
}

static void gauge_f(textbuf *t, const char *name, const char *help, double v)
{
  tb_head(t, name, "gauge", help);
  tb_printf(t, "%s %.9g\n", name, v);
}

static void counter_u(textbuf *t, const char *name, const char *help,
                      uint64_t v)
{
  tb_head(t, name, "counter", help);
  tb_printf(t, "%s %" PRIu64 "\n", name, v);
}

static double seconds_of(int64_t ns) { return (double)ns / 1e9; }

static void peer_metrics(textbuf *t, const node_figures *f)
{
  static const struct {
    const char *name, *type, *help;
  } per[] = {
      {"loomship_standby_sent_seq", "gauge", "Newest seq sent to the standby."},
      {"loomship_standby_received_seq", "gauge",
       "Newest seq the standby holds durably."},
      {"loomship_standby_applied_seq", "gauge",
       "Newest seq in the standby's image."},
      {"loomship_standby_lag_frames", "gauge",
       "Commits the standby has not applied."},
      {"loomship_standby_lag_bytes", "gauge",
       "Frame bytes the standby has not applied."},
      {"loomship_standby_lag_seconds", "gauge",
       "Age of the oldest commit the standby has not applied."},
      {"loomship_standby_shipped_raw_bytes_total", "counter",
       "Page bytes shipped to the standby before compression."},
      {"loomship_standby_shipped_wire_bytes_total", "counter",
       "Frame bytes shipped to the standby."},
      {"loomship_standby_base_images_total", "counter",
       "Base images the standby acknowledged."},
      {"loomship_standby_last_error_time_seconds", "gauge",
       "When the last error with the standby happened (0: none)."},
  };
  for (size_t m = 0; m < sizeof per / sizeof per[0]; m++) {
    tb_head(t, per[m].name, per[m].type, per[m].help);
    for (size_t i = 0; i < f->peer_count; i++) {
      const replicate_peer_status *p = &f->peers[i];
      char url[2 * REPLICATE_URL_MAX];
      label_escape(p->url, url, sizeof url);
      double v = 0;
      switch (m) {
      case 0: v = (double)p->sent_seq; break;
      case 1: v = (double)p->received_seq; break;
      case 2: v = (double)p->applied_seq; break;
      case 3: v = (double)p->lag_frames; break;
      case 4: v = (double)p->lag_bytes; break;
      case 5: v = p->lag_seconds; break;
      case 6: v = (double)p->bytes_raw; break;
      case 7: v = (double)p->bytes_wire; break;
      case 8: v = (double)p->base_images_sent; break;
      default: v = seconds_of(p->last_error_at_ns); break;
      }
      tb_printf(t, "%s{url=\"%s\"} %.17g\n", per[m].name, url, v);
    }
  }
  tb_head(t, "loomship_standby_state", "gauge",
          "1 for the standby's current replication state.");
  for (size_t i = 0; i < f->peer_count; i++) {
    char url[2 * REPLICATE_URL_MAX];
    label_escape(f->peers[i].url, url, sizeof url);
    tb_printf(t, "loomship_standby_state{url=\"%s\",state=\"%s\"} 1\n", url,
              replicate_peer_state_name(f->peers[i].state));
  }
}

static void guard_metrics(textbuf *t, http_guard *guard)
{
  uint64_t closed[HTTP_GUARD_REASONS];
  http_guard_closed_counts(guard, closed);
  tb_head(t, "loomship_http_connections_closed_total", "counter",
          "Connections closed for a late request header or a slow or "
          "overlong upload, by reason.");
  for (int v = HTTP_GUARD_HEADERS_LATE; v < HTTP_GUARD_REASONS; v++)
    tb_printf(t, "loomship_http_connections_closed_total{reason=\"%s\"} "
              "%" PRIu64 "\n", http_guard_reason_name((http_guard_verdict)v),
              closed[v]);
}

static int answer_metrics(http_server *s, struct MHD_Connection *conn)
{
  node_figures f;
  figures_collect(s, &f);
  const http_server_status *st = &f.view.status;
  textbuf t = {0};

  tb_head(&t, "loomship_info", "gauge", "Build and role of this node.");
  tb_printf(&t, "loomship_info{version=\"%s\",role=\"%s\"} 1\n",
            LOOMSHIP_VERSION, f.standby_role ? "standby" : "primary");
  gauge_f(&t, "loomship_start_time_seconds",
          "When the server started, in seconds since the epoch.",
          seconds_of(s->started_ns));
  gauge_f(&t, "loomship_uptime_seconds", "Seconds since the server started.",
          seconds_of(http_monotonic_ns() - s->started_mono_ns));
  gauge_u(&t, "loomship_ready", "1 when /readyz answers 200.", f.ready);
  gauge_u(&t, "loomship_epoch", "The node's epoch.",
          st->received.epoch > st->applied.epoch ? st->received.epoch
                                                 : st->applied.epoch);
  gauge_u(&t, "loomship_applied_seq", "Seq of the image's position.",
          st->applied.seq);
  gauge_u(&t, "loomship_applied_pages", "Length of the image in pages.",
          st->applied.pages);
  gauge_f(&t, "loomship_applied_commit_time_seconds",
          "Commit time of the image's position (0: unknown).",
          seconds_of(st->applied.commit_time_ns));

  if (f.standby_role) {
    gauge_u(&t, "loomship_received_seq",
            "Seq of the newest frame durable in the receive log.",
            st->received.seq);
    gauge_u(&t, "loomship_primary_seq", "Newest seq heard of from the primary.",
            st->primary_seq);
    gauge_u(&t, "loomship_lag_frames", "Commits heard of and not applied.",
            st->lag_frames);
    gauge_u(&t, "loomship_lag_bytes", "Frame bytes received and not applied.",
            st->lag_bytes);
    gauge_f(&t, "loomship_lag_seconds",
            "Age of the oldest commit heard of and not applied.",
            st->lag_seconds);
    if (f.view.clock_skew_known)
      gauge_f(&t, "loomship_clock_skew_seconds",
              "This node's clock minus the primary's, estimated.",
              f.view.clock_skew_seconds);
    gauge_u(&t, "loomship_replay_paused",
            "1 while a base image is coming in.", st->replay_paused);
    gauge_u(&t, "loomship_receive_log_bytes", "Size of the receive log.",
            f.view.receive_log_bytes);
    gauge_f(&t, "loomship_last_contact_time_seconds",
            "When the primary was last heard from (0: never).",
            seconds_of(f.view.last_contact_ns));
    gauge_u(&t, "loomship_diverged",
            "1 while input that would move this standby backwards or "
            "sideways is being refused (status: diverged).",
            st->diverged != 0);
    counter_u(&t, "loomship_divergence_refusals_total",
              "Frames and base images refused as moving this standby "
              "backwards or sideways.", st->divergences);
  } else {
    gauge_u(&t, "loomship_fenced",
            "1 once a standby was promoted past this primary.", f.fenced);
    gauge_u(&t, "loomship_standbys", "Standbys configured.", f.peer_count);
    peer_metrics(&t, &f);
  }
  counter_u(&t, "loomship_frames_received_total",
            "Commit frames made durable in the receive log.",
            st->frames_received);
  counter_u(&t, "loomship_frames_applied_total",
            "Frames applied to the image.", st->frames_applied);
  counter_u(&t, "loomship_apply_commits_total",
            "Store commits the applied frames took (frames waiting in the "
            "receive log are merged).", st->apply_commits);
  counter_u(&t, "loomship_frames_duplicate_total",
            "Frames received again (answered, nothing changed).",
            st->duplicates);
  counter_u(&t, "loomship_heartbeats_received_total",
            "Heartbeats received from the primary.", f.view.heartbeats);
  counter_u(&t, "loomship_received_bytes_total",
            "Bytes of the commit frames received.", f.view.bytes_received);
  counter_u(&t, "loomship_base_images_total", "Base images installed.",
            f.view.bases);
  counter_u(&t, "loomship_apply_errors_total",
            "Frames that failed to apply.", f.view.apply_failures);
  gauge_u(&t, "loomship_backups_in_progress", "Backup downloads in progress.",
          f.backup.in_progress);
  counter_u(&t, "loomship_backups_total", "Backup downloads started.",
            f.backup.started);
  counter_u(&t, "loomship_backup_sent_bytes_total",
            "Bytes of backup image streams sent.", f.backup.bytes_sent);
  gauge_u(&t, "loomship_http_uploads_in_progress",
          "Frame and base uploads in progress.", f.uploads);
  counter_u(&t, "loomship_http_auth_failures_total",
            "Requests refused for a missing or wrong token.", f.auth_failures);
  guard_metrics(&t, s->guard);

  tb_head(&t, "loomship_http_requests_total", "counter",
          "HTTP requests answered, by endpoint and status code.");
  pthread_mutex_lock(&s->stats_mu);
  for (int ep = 0; ep < HTTP_EP_COUNT; ep++)
    for (unsigned c = 0; c < HTTP_CODE_SLOTS; c++) {
      uint64_t n = s->requests[ep][c];
      if (!n)
        continue;
      char code[16];
      if (c < HTTP_CODE_SLOTS - 1)
        snprintf(code, sizeof code, "%u", http_counted_codes[c]);
      else
        snprintf(code, sizeof code, "other");
      tb_printf(&t,
                "loomship_http_requests_total{endpoint=\"%s\",code=\"%s\"} "
                "%" PRIu64 "\n",
                endpoint_paths[ep], code, n);
    }
  pthread_mutex_unlock(&s->stats_mu);
  figures_free(&f);

  if (t.failed) {
    free(t.data);
    return send_error(s, conn, HTTP_EP_METRICS, 503, "out of memory");
  }
  return queue_buffer(s, conn, HTTP_EP_METRICS, 200, t.data, t.len,
                      "text/plain; version=0.0.4; charset=utf-8", NULL);
}

/* ---------------------------------------------------------------------- */
/* The access handler */

/* Take a slot when fewer than limit are held. */
static bool slot_take(http_server *s, request *r, unsigned limit)
{
  pthread_mutex_lock(&s->stats_mu);
  bool ok = s->uploads < limit;
  if (ok)
    s->uploads++;
  pthread_mutex_unlock(&s->stats_mu);
  r->upload_slot = ok;
  return ok;
}

/* Phase 1: a slot for an upload, or false (503). While the upload runs,
 * the connection's idle timeout is upload_stall_seconds: a client that
 * stops sending mid-body (a half-open connection, a dead primary) gives its
 * slot back within seconds, not after the daemon's idle timeout.
 *
 * Without a token anyone may upload, so the last slot is kept for a frame
 * whose header proves valid (frame_consume claims it): uploads that send
 * garbage, or nothing, cannot hold every slot. With a token every upload
 * here carries it. */
static bool take_upload_slot(http_server *s, request *r, struct MHD_Connection *conn)
{
  bool keep_one = !s->token && s->max_uploads > 1;
  bool ok = slot_take(s, r, s->max_uploads - (keep_one ? 1 : 0));
  if (!ok && keep_one && r->ep == HTTP_EP_FRAMES)
    ok = r->wants_reserved_slot = true;
  if (ok)
    MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT,
                              s->upload_stall_seconds);
  return ok;
}

static uint64_t content_length(struct MHD_Connection *conn)
{
  const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                              MHD_HTTP_HEADER_CONTENT_LENGTH);
  if (!v || !*v)
    return UINT64_MAX;
  char *end;
  errno = 0;
  unsigned long long n = strtoull(v, &end, 10);
  if (errno || *end)
    return UINT64_MAX;
  return n;
}

/* libmicrohttpd's URI log callback: called with the raw request target,
 * before it is split at '?' and unescaped; what it returns becomes the
 * request's *req_cls. */
static void *on_request_line(void *cls, const char *uri,
                             struct MHD_Connection *conn)
{
  (void)cls;
  (void)conn;
  request *r = calloc(1, sizeof *r);
  if (!r)
    return NULL;
  r->path_nul_escaped = strstr(uri, "%00") != NULL;
  r->target_end = uri + strlen(uri);
  return r;
}

/* A raw NUL byte in the target ("GET /healthz<NUL>junk HTTP/1.1" is seen
 * as "/healthz"). libmicrohttpd (0.9.75) parses the request line in place
 * and cuts the version off with a NUL of its own, so the target read as a
 * C string ends right before the version unless it holds a NUL. Judged only
 * when both lie within one short line: a libmicrohttpd that copies them
 * elsewhere makes the test say nothing rather than refuse everything. */
static bool target_has_raw_nul(const request *r, const char *version)
{
  if (!r->target_end || !version || !*version)
    return false;
  uintptr_t end = (uintptr_t)r->target_end, v = (uintptr_t)version;
  return v > end + 1 && v - end < 64 * 1024;
}

static enum MHD_Result count_lengths(void *cls, enum MHD_ValueKind kind,
                                     const char *key, const char *value)
{
  (void)kind;
  (void)value;
  if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0)
    (*(unsigned *)cls)++;
  return MHD_YES;
}

/* Content-Length twice (libmicrohttpd takes the first), or with
 * Transfer-Encoding (which one frames the body?): the ground of request
 * smuggling between proxies, refused. */
static bool length_ambiguous(struct MHD_Connection *conn)
{
  unsigned lengths = 0;
  MHD_get_connection_values(conn, MHD_HEADER_KIND, count_lengths, &lengths);
  bool encoded = MHD_lookup_connection_value(
                     conn, MHD_HEADER_KIND,
                     MHD_HTTP_HEADER_TRANSFER_ENCODING) != NULL;
  return lengths > 1 || (lengths == 1 && encoded);
}

/* Phase 1, before anything else: 400 for a request whose path or body
 * length cannot be trusted. */
static bool refuse_malformed(struct MHD_Connection *conn, request *r,
                             const char *version, http_reply *reply)
{
  int rc = 0;
  if (r->path_nul_escaped || target_has_raw_nul(r, version)) {
    rc = HTTP_EPATH;
    r->ep = HTTP_EP_OTHER;
  } else if (length_ambiguous(conn)) {
    rc = HTTP_ELENGTH;
  }
  if (!rc)
    return false;
  http_reply_error(reply, 400, http_strerror(rc));
  json_key(&reply->body, "code");
  json_string(&reply->body, http_error_name(rc));
  return true;
}

/* A body nobody asked for (promote, reads) is dropped up to this much. */
#define OTHER_BODY_CAP (64 * 1024)

/* Phase 1, the request accepted: how much body may come, and the guard's
 * watch over it (rate and duration) when one comes. */
static void body_begin(http_server *s, struct MHD_Connection *conn,
                       request *r)
{
  uint64_t cl = content_length(conn);
  r->has_length = cl != UINT64_MAX;
  unsigned max_seconds = s->frame_upload_max_seconds;
  if (r->ep == HTTP_EP_FRAMES) {
    r->body_cap = s->max_frame_bytes;
  } else if (r->ep == HTTP_EP_BASE) {
    r->body_cap = LOOM_STREAM_HEADER + s->max_image_pages * LOOM_PAGE_SIZE;
    max_seconds = s->base_upload_max_seconds;
  } else {
    r->body_cap = OTHER_BODY_CAP;
  }
  if (r->has_length && cl < r->body_cap)
    r->body_cap = cl;
  bool encoded = MHD_lookup_connection_value(
                     conn, MHD_HEADER_KIND,
                     MHD_HTTP_HEADER_TRANSFER_ENCODING) != NULL;
  if (encoded || (r->has_length && cl > 0))
    http_guard_upload_begin(s->guard, conn, max_seconds);
}

/* Phase 1: returns true with reply filled when the request is decided. */
static bool first_call(http_server *s, struct MHD_Connection *conn,
                       request *r, const char *method, http_reply *reply)
{
  if (r->ep == HTTP_EP_OTHER) {
    http_reply_error(reply, 404, "no such endpoint");
    return true;
  }
  if (!method_allowed(r->ep, method)) {
    http_reply_error(reply, 405, "method not allowed");
    json_key(&reply->body, "allow");
    json_string(&reply->body, allowed_methods(r->ep));
    http_reply_header(reply, MHD_HTTP_HEADER_ALLOW, allowed_methods(r->ep));
    return true;
  }
  pthread_mutex_lock(&s->stats_mu);
  bool stopping = s->stopping;
  pthread_mutex_unlock(&s->stats_mu);
  if (stopping && r->ep != HTTP_EP_HEALTHZ) {
    http_reply_error(reply, 503, "shutting down");
    return true;
  }
  if (needs_token(r->ep) && s->token) {
    const char *auth = MHD_lookup_connection_value(
        conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!http_token_matches(s->token, s->token_len, auth)) {
      char addr[INET6_ADDRSTRLEN];
      client_address(conn, addr, sizeof addr);
      http_logf(&s->logger, "401 %s %s from %s: %s token", method,
                endpoint_paths[r->ep], addr, auth ? "wrong" : "no");
      pthread_mutex_lock(&s->stats_mu);
      s->auth_failures++;
      pthread_mutex_unlock(&s->stats_mu);
      http_reply_error(reply, 401, auth ? "wrong token" : "token required");
      http_reply_header(reply, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                        "Bearer realm=\"loomship\"");
      return true;
    }
  }
  bool standby_endpoint = r->ep == HTTP_EP_FRAMES || r->ep == HTTP_EP_BASE ||
                          r->ep == HTTP_EP_PROMOTE;
  if (standby_endpoint && !s->standby) {
    loom_position pos;
    s->primary.position(s->primary.ctx, &pos);
    http_reply_error(reply, 409, "not a standby");
    json_key(&reply->body, "role");
    json_string(&reply->body, "primary");
    json_key(&reply->body, "applied");
    http_json_position(&reply->body, &pos);
    json_key(&reply->body, "epoch");
    json_uint(&reply->body, pos.epoch);
    return true;
  }
  if (r->ep == HTTP_EP_FRAMES || r->ep == HTTP_EP_BASE) {
    if (!take_upload_slot(s, r, conn)) {
      http_reply_error(reply, 503, "too many uploads in progress");
      reply->retry_after = 1;
      return true;
    }
  }
  if (r->ep == HTTP_EP_FRAMES) {
    uint64_t cl = content_length(conn);
    if (cl != UINT64_MAX && cl > s->max_frame_bytes) {
      http_reply_error(reply, 413, "frame too large");
      json_key(&reply->body, "max_bytes");
      json_uint(&reply->body, s->max_frame_bytes);
      return true;
    }
  }
  if (r->ep == HTTP_EP_BASE) {
    uint64_t cl = content_length(conn);
    if (cl != UINT64_MAX &&
        cl > LOOM_STREAM_HEADER + s->max_image_pages * (uint64_t)LOOM_PAGE_SIZE) {
      http_reply_error(reply, 413, "image too large");
      return true;
    }
    if (http_standby_base_begin(s->standby, cl, &r->base, reply) != 0)
      return true;
  }
  return false;
}

static void frame_refuse(request *r, unsigned status, const char *message,
                         int rc)
{
  r->refused = true;
  http_reply_error(&r->refusal, status, message);
  if (rc) {
    json_key(&r->refusal.body, "code");
    json_string(&r->refusal.body, http_error_name(rc));
    json_key(&r->refusal.body, "detail");
    json_string(&r->refusal.body, replicate_strerror(rc));
  }
  free(r->body);
  r->body = NULL;
  r->len = r->cap = 0;
}

/* Phase 2 for a frame: accumulate, bounded. */
static void frame_consume(http_server *s, request *r, const char *data,
                          size_t n)
{
  if (r->refused)
    return;
  if (n > s->max_frame_bytes - r->len) {
    frame_refuse(r, 413, "frame too large", 0);
    return;
  }
  if (r->len + n > r->cap) {
    size_t cap = r->cap ? r->cap : 64 * 1024;
    while (cap < r->len + n)
      cap *= 2;
    if (cap > s->max_frame_bytes)
      cap = s->max_frame_bytes;
    uint8_t *body = realloc(r->body, cap);
    if (!body) {
      frame_refuse(r, 503, "out of memory", ENOMEM);
      return;
    }
    r->body = body;
    r->cap = cap;
  }
  memcpy(r->body + r->len, data, n);
  r->len += n;

  if (!r->header_checked && r->len >= REPLICATE_HEADER_SIZE) {
    /* The header says how big the frame is: refuse early what will not
     * fit, and size the buffer once. */
    r->header_checked = true;
    replicate_frame_info info;
    int rc = replicate_frame_parse_header(r->body, r->len, &s->limits, &info);
    if (rc == REPLICATE_ETOOBIG || (rc == 0 && info.frame_size > s->max_frame_bytes))
      frame_refuse(r, 413, "frame too large", rc);
    else if (rc)
      frame_refuse(r, 400, "malformed frame", rc);
    else if (r->wants_reserved_slot && !slot_take(s, r, s->max_uploads)) {
      frame_refuse(r, 503, "too many uploads in progress", 0);
      r->refusal.retry_after = 1;
    } else if (info.frame_size > r->cap) {
      uint8_t *body = realloc(r->body, (size_t)info.frame_size);
      if (body) {
        r->body = body;
        r->cap = (size_t)info.frame_size;
      }
    }
  }
}

/* Close the connection now, with no answer libmicrohttpd can still send
 * (it queues none once a body has begun). Returns MHD_NO, which closes. */
static enum MHD_Result close_now(http_server *s, struct MHD_Connection *conn,
                                 const request *r, const char *why)
{
  char addr[INET6_ADDRSTRLEN];
  client_address(conn, addr, sizeof addr);
  http_logf(&s->logger, "closed %s from %s after %" PRIu64 " body bytes: %s",
            endpoint_paths[r->ep], addr, r->body_bytes, why);
  return MHD_NO;
}

/* An upload the guard condemned (G2, G3): 408, written on the socket by
 * hand since libmicrohttpd cannot queue an answer in the middle of a body
 * (over TLS nothing is written), then closed. Best effort: a client still
 * sending may see the reset of the close before the answer. */
static enum MHD_Result close_late_upload(http_server *s,
                                         struct MHD_Connection *conn,
                                         const request *r,
                                         http_guard_verdict v)
{
  int rc = v == HTTP_GUARD_TOO_SLOW ? HTTP_ESLOW_UPLOAD : HTTP_ELONG_UPLOAD;
  http_reply reply = {0};
  http_reply_error(&reply, 408, http_strerror(rc));
  json_key(&reply.body, "code");
  json_string(&reply.body, http_error_name(rc));
  json_object_end(&reply.body);
  size_t len = 0;
  char *doc = json_take(&reply.body, &len);
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
  if (doc && ci && !s->tls_cert) {
    char msg[512];
    int n = snprintf(msg, sizeof msg,
                     "HTTP/1.1 408 Request Timeout\r\n"
                     "Content-Type: application/json\r\n"
                     "Cache-Control: no-store\r\nConnection: close\r\n"
                     "Content-Length: %zu\r\n\r\n%s", len, doc);
    if (n > 0 && (size_t)n < sizeof msg)
      (void)!send(ci->connect_fd, msg, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
  }
  free(doc);
  http_server_count(s, r->ep, 408);
  return close_now(s, conn, r, http_guard_reason_name(v));
}

/* Phase 2: one piece of a body. A frame accumulates, a base image goes to
 * the store, anything else is dropped. The connection is closed (MHD_NO)
 * when the upload breaks a guard limit, passes its byte cap, or is refused
 * with no Content-Length to read the rest to (an endless chunked body). */
static enum MHD_Result body_chunk(http_server *s, struct MHD_Connection *conn,
                                  request *r, const char *data, size_t n)
{
  http_guard_verdict v = http_guard_upload_progress(s->guard, conn, n);
  if (v != HTTP_GUARD_OK)
    return close_late_upload(s, conn, r, v);
  r->body_bytes += n;
  if (r->body_bytes > r->body_cap)
    return close_now(s, conn, r, "body over its cap");
  bool refused = false;
  if (r->ep == HTTP_EP_FRAMES) {
    frame_consume(s, r, data, n);
    refused = r->refused;
  } else if (r->ep == HTTP_EP_BASE && r->base) {
    refused = http_standby_base_feed(r->base, (const uint8_t *)data, n) != 0;
  }
  if (refused && !r->has_length)
    return close_now(s, conn, r, "refused, and no Content-Length");
  return MHD_YES;
}

/* GET or HEAD /v1/backup: the backups answer, the server queues and
 * counts. */
static enum MHD_Result answer_backup(http_server *s,
                                     struct MHD_Connection *conn)
{
  const char *range = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                  MHD_HTTP_HEADER_RANGE);
  const char *if_range = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_IF_RANGE);
  http_reply reply = {0};
  struct MHD_Response *resp = NULL;
  unsigned status =
      http_backups_respond(s->backups, range, if_range, &reply, &resp);
  if (!resp && !status)
    return MHD_NO;
  if (!resp)
    return (enum MHD_Result)http_server_send(s, conn, HTTP_EP_BACKUP, &reply);
  enum MHD_Result r = MHD_queue_response(conn, status, resp);
  MHD_destroy_response(resp);
  http_server_count(s, HTTP_EP_BACKUP, status);
  return r;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn,
                                 const char *url, const char *method,
                                 const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **req_cls)
{
  http_server *s = cls;
  request *r = *req_cls; /* made by on_request_line */
  if (!r)
    return MHD_NO;

  if (!r->started) {
    r->started = true;
    http_guard_request_begin(s->guard, conn);
    r->ep = endpoint_of(url);
    http_reply reply = {0};
    if (refuse_malformed(conn, r, version, &reply) ||
        first_call(s, conn, r, method, &reply))
      return (enum MHD_Result)http_server_send(s, conn, r->ep, &reply);
    body_begin(s, conn, r);
    return MHD_YES;
  }

  if (*upload_data_size) {
    size_t n = *upload_data_size;
    *upload_data_size = 0;
    return body_chunk(s, conn, r, upload_data, n);
  }

  http_reply reply = {0};
  switch (r->ep) {
  case HTTP_EP_FRAMES:
    if (r->refused) {
      reply = r->refusal;
      json_init(&r->refusal.body);
    } else {
      http_standby_receive_frame(s->standby, r->body, r->len, &reply);
    }
    break;
  case HTTP_EP_BASE:
    http_standby_base_finish(r->base, &reply);
    r->base = NULL;
    break;
  case HTTP_EP_PROMOTE: {
    const char *force = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND,
                                                    "force");
    http_standby_promote(s->standby, force && strcmp(force, "1") == 0, &reply);
    break;
  }
  case HTTP_EP_BACKUP:
    return answer_backup(s, conn);
  case HTTP_EP_STATUS:
    return (enum MHD_Result)answer_status(s, conn);
  case HTTP_EP_METRICS:
    return (enum MHD_Result)answer_metrics(s, conn);
  case HTTP_EP_READYZ:
    return (enum MHD_Result)answer_readyz(s, conn);
  case HTTP_EP_HEALTHZ:
    http_reply_object(&reply, 200);
    json_key(&reply.body, "status");
    json_string(&reply.body, "ok");
    break;
  case HTTP_EP_OTHER:
  case HTTP_EP_COUNT:
    http_reply_error(&reply, 404, "no such endpoint");
    break;
  }
  return (enum MHD_Result)http_server_send(s, conn, r->ep, &reply);
}

static void request_completed(void *cls, struct MHD_Connection *conn,
                              void **req_cls,
                              enum MHD_RequestTerminationCode toe)
{
  (void)toe;
  http_server *s = cls;
  request *r = *req_cls;
  http_guard_request_end(s->guard, conn); /* the next request's headers */
  if (!r)
    return;
  if (r->base) /* cut off before its end: the old image stays */
    http_standby_base_abort(r->base);
  if (r->upload_slot) {
    pthread_mutex_lock(&s->stats_mu);
    s->uploads--;
    pthread_mutex_unlock(&s->stats_mu);
  }
  if (r->upload_slot || r->wants_reserved_slot) {
    if (conn && toe == MHD_REQUEST_TERMINATED_COMPLETED_OK)
      MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT,
                                s->connection_timeout); /* kept alive: idle again */
  }
  json_free(&r->refusal.body);
  free(r->body);
  free(r);
  *req_cls = NULL;
}

/* libmicrohttpd's error logger: fmt is its own format string. */
__attribute__((format(printf, 2, 0)))
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
  http_server *s = cls;
  if (!s->logger.fn)
    return;
  char line[512];
  vsnprintf(line, sizeof line, fmt, ap);
  size_t n = strlen(line);
  while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
    line[--n] = '\0';
  char msg[560];
  snprintf(msg, sizeof msg, "libmicrohttpd: %s", line);
  s->logger.fn(s->logger.ctx, msg);
}

/* ---------------------------------------------------------------------- */
/* Start and stop */

/* Read a whole (small) file into a NUL-terminated buffer. */
static int read_file(const char *path, char **out)
{
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return errno;
  struct stat st;
  if (fstat(fd, &st) != 0 || st.st_size > (1 << 20)) {
    int rc = errno ? errno : EFBIG;
    close(fd);
    return rc;
  }
  char *buf = malloc((size_t)st.st_size + 1);
  if (!buf) {
    close(fd);
    return ENOMEM;
  }
  size_t done = 0;
  while (done < (size_t)st.st_size) {
    ssize_t n = read(fd, buf + done, (size_t)st.st_size - done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      int rc = n < 0 ? errno : EIO;
      free(buf);
      close(fd);
      return rc;
    }
    done += (size_t)n;
  }
  close(fd);
  buf[done] = '\0';
  *out = buf;
  return 0;
}

static int listen_on(const char *host, uint16_t port, int *fd_out,
                     uint16_t *bound)
{
  struct addrinfo hints = {.ai_family = AF_UNSPEC,
                           .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
  struct addrinfo *res = NULL;
  char service[8];
  snprintf(service, sizeof service, "%u", (unsigned)port);
  if (getaddrinfo(host, service, &hints, &res) != 0 || !res)
    return HTTP_EADDRESS;
  int rc = EADDRNOTAVAIL;
  int fd = -1;
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      rc = errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* A deep backlog: a flood of connects (closed at once past the
     * per-address limit) must not crowd out other clients' SYNs. */
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 1024) == 0)
      break;
    rc = errno;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0)
    return rc;
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) {
    rc = errno;
    close(fd);
    return rc;
  }
  if (ss.ss_family == AF_INET)
    *bound = ntohs(((struct sockaddr_in *)&ss)->sin_port);
  else
    *bound = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  *fd_out = fd;
  return 0;
}

/* Snapshots for backups: the standby's store, or the primary's. */
static int snapshot_open(void *ctx, loom_snapshot **out)
{
  http_server *s = ctx;
  if (s->standby)
    return http_standby_snapshot_open(s->standby, out);
  if (!s->primary.snapshot_open)
    return ENOTSUP;
  return s->primary.snapshot_open(s->primary.ctx, out);
}

static void snapshot_close(void *ctx, loom_snapshot *snap)
{
  http_server *s = ctx;
  if (s->standby)
    http_standby_snapshot_close(s->standby, snap);
  else
    loom_snapshot_close(snap);
}

static int backups_create(http_server *s)
{
  http_backup_source source = {s, snapshot_open, snapshot_close};
  return http_backups_create(&source, &s->backups);
}

static void server_free(http_server *s)
{
  if (s->token) {
    memset(s->token, 0, s->token_len);
    free(s->token);
  }
  if (s->tls_key) {
    memset(s->tls_key, 0, strlen(s->tls_key));
    free(s->tls_key);
  }
  free(s->tls_cert);
  http_guard_stop(s->guard);
  pthread_mutex_destroy(&s->stats_mu);
  http_backups_free(s->backups);
  free(s);
}

int http_server_start(const http_server_options *opt, http_server **out)
{
  if (!opt || !out)
    return HTTP_EINVAL;
  if (opt->role == HTTP_ROLE_STANDBY ? !opt->dir
      : opt->role == HTTP_ROLE_PRIMARY ? !opt->primary || !opt->primary->position
                                       : true)
    return HTTP_EINVAL;
  if (opt->token && opt->token_len == 0)
    return HTTP_EINVAL;
  bool tls = opt->tls_cert_file || opt->tls_key_file;
  if (tls && (!opt->tls_cert_file || !opt->tls_key_file ||
              MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES))
    return HTTP_ETLS;

  http_server *s = calloc(1, sizeof *s);
  if (!s)
    return ENOMEM;
  pthread_mutex_init(&s->stats_mu, NULL);
  s->role = opt->role;
  if (opt->primary)
    s->primary = *opt->primary;
  s->logger = (http_logger){opt->log, opt->log_ctx};
  s->max_frame_bytes = opt->max_frame_bytes ? opt->max_frame_bytes
                                            : (UINT64_C(64) << 20);
  s->max_image_pages = opt->max_image_pages ? opt->max_image_pages
                                            : (UINT64_C(1) << 30);
  s->limits = http_limits_of(opt);
  s->max_uploads = opt->max_uploads ? opt->max_uploads : 4;
  s->connection_timeout =
      opt->connection_timeout_seconds ? opt->connection_timeout_seconds : 30;
  s->upload_stall_seconds = opt->upload_stall_seconds ? opt->upload_stall_seconds : 5;
  if (s->upload_stall_seconds > s->connection_timeout)
    s->upload_stall_seconds = s->connection_timeout;
  s->frame_upload_max_seconds =
      opt->frame_upload_max_seconds ? opt->frame_upload_max_seconds : 60;
  s->base_upload_max_seconds =
      opt->base_upload_max_seconds ? opt->base_upload_max_seconds : 3600;
  s->ready_max_lag_seconds =
      opt->ready_max_lag_seconds > 0 ? opt->ready_max_lag_seconds : 5.0;
  s->started_ns = http_now_ns();
  s->started_mono_ns = http_monotonic_ns();

  int rc = 0;
  if (opt->token) {
    s->token = malloc(opt->token_len);
    if (!s->token)
      rc = ENOMEM;
    else {
      memcpy(s->token, opt->token, opt->token_len);
      s->token_len = opt->token_len;
    }
  }
  if (rc == 0 && tls) {
    rc = read_file(opt->tls_cert_file, &s->tls_cert);
    if (rc == 0)
      rc = read_file(opt->tls_key_file, &s->tls_key);
  }
  if (rc == 0) {
    http_guard_limits gl = {
        .header_timeout_seconds =
            opt->header_timeout_seconds ? opt->header_timeout_seconds : 5,
        .upload_grace_seconds =
            opt->upload_grace_seconds ? opt->upload_grace_seconds : 3,
        .upload_min_bytes_per_second = opt->upload_min_bytes_per_second
                                           ? opt->upload_min_bytes_per_second
                                           : 16384,
    };
    rc = http_guard_start(&gl, &s->logger, &s->guard);
  }
  int fd = -1;
  if (rc == 0)
    rc = listen_on(opt->listen_host ? opt->listen_host : "127.0.0.1",
                   opt->listen_port, &fd, &s->port);
  if (rc == 0 && opt->role == HTTP_ROLE_STANDBY)
    rc = http_standby_open(opt, &s->logger, &s->standby);
  if (rc == 0)
    rc = backups_create(s);
  if (rc) {
    if (fd >= 0)
      close(fd);
    http_standby_close(s->standby);
    server_free(s);
    return rc;
  }

  struct MHD_OptionItem options[16];
  unsigned n = 0;
  options[n++] = (struct MHD_OptionItem){MHD_OPTION_EXTERNAL_LOGGER,
                                         (intptr_t)mhd_log, s};
  options[n++] = (struct MHD_OptionItem){MHD_OPTION_URI_LOG_CALLBACK,
                                         (intptr_t)on_request_line, s};
  options[n++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_CONNECTION,
                                         (intptr_t)http_guard_notify, s->guard};
  options[n++] = (struct MHD_OptionItem){MHD_OPTION_LISTEN_SOCKET, fd, NULL};
  options[n++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_COMPLETED,
                                         (intptr_t)request_completed, s};
  options[n++] = (struct MHD_OptionItem){
      MHD_OPTION_CONNECTION_LIMIT,
      opt->connection_limit ? opt->connection_limit : 128, NULL};
  options[n++] = (struct MHD_OptionItem){
      MHD_OPTION_CONNECTION_TIMEOUT,
      s->connection_timeout,
      NULL};
  /* One client address cannot take more than a sixteenth of the
   * connections (a flood or a crowd of slow clients from one place leaves
   * room for the primary, monitoring and backups elsewhere): 8 by default,
   * far above what one primary needs (one connection per kind of upload). */
  options[n++] = (struct MHD_OptionItem){
      MHD_OPTION_PER_IP_CONNECTION_LIMIT,
      opt->per_ip_connection_limit ? opt->per_ip_connection_limit : 8, NULL};
  if (tls) {
    options[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0,
                                           s->tls_cert};
    options[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0,
                                           s->tls_key};
  }
  options[n++] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};

  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD |
                   MHD_USE_THREAD_PER_CONNECTION | MHD_USE_AUTO |
                   MHD_USE_ERROR_LOG;
  if (tls)
    flags |= MHD_USE_TLS;
  s->daemon = MHD_start_daemon(flags, 0, NULL, NULL, on_access, s,
                               MHD_OPTION_ARRAY, options, MHD_OPTION_END);
  if (!s->daemon) {
    close(fd);
    http_standby_close(s->standby);
    server_free(s);
    return HTTP_EDAEMON;
  }
  *out = s;
  return 0;
}

uint16_t http_server_port(const http_server *s)
{
  return s->port;
}

int http_server_stop(http_server *s)
{
  if (!s)
    return 0;
  pthread_mutex_lock(&s->stats_mu);
  s->stopping = true;
  pthread_mutex_unlock(&s->stats_mu);
  /* Closes the listen socket and every connection, waits for their
   * threads; each request's completion callback runs (an unfinished base
   * image is aborted, backup responses release the snapshot). */
  MHD_stop_daemon(s->daemon);
  int rc = http_standby_close(s->standby);
  server_free(s);
  return rc;
}
