/*
 * dispatch.c: the requests: libmicrohttpd's access handler and connection
 * callbacks, authentication, load bounds, uploads, sending and counting
 * replies, and the dispatch to one handler per endpoint.
 *
 * REQUESTS
 *
 * libmicrohttpd calls the access handler several times per request, in
 * three phases:
 *
 *   0. request line (http_dispatch_request_line, the URI log callback):
 *      allocate the request state while the raw target can still be seen.
 *   1. headers received (!r->started, headers_in): decide what can be
 *      decided from the headers: a NUL byte in the path or an ambiguous
 *      length (400), unknown path (404), method (405), stopping (503),
 *      token (401), upload slot (503), Content-Length over the cap (413),
 *      and for a base image, claiming the standby. A refusal is queued at once:
 *      libmicrohttpd then skips the body and closes the connection after
 *      the reply. Otherwise the guard (guard.c) watches the body's rate
 *      and duration.
 *   2. body chunks (*upload_data_size > 0): a frame accumulates up to its
 *      cap (its header, once REPLICATE_HEADER_SIZE (144) bytes are in, gives the real size); a
 *      base image is fed to the store page by page. libmicrohttpd cannot
 *      queue an answer here, so a refusal decided here is kept and the
 *      rest of the body read and dropped up to its Content-Length; without
 *      one (chunked), past the byte cap, or too slow or too long, the
 *      connection is closed at once (body_chunk).
 *   3. body complete (*upload_data_size == 0): answer, with the handler
 *      of the endpoint (handlers[]).
 *
 * The request state is freed in one place, the completion callback
 * (http_dispatch_completed), whatever happened: a base image still open
 * there was cut off, and is aborted (the old image stays).
 *
 * Threads: one per connection (MHD_USE_THREAD_PER_CONNECTION), so a
 * handler may block on the disk (an fsync of the receive log) without
 * stalling other connections; the connection limit bounds the threads.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "server_internal.h"

const unsigned http_counted_codes[HTTP_CODE_SLOTS - 1] = {
    200, 206, 400, 401, 404, 405, 409, 413, 416, 500, 503, 507, 304, 408};

static const char *const endpoint_paths[HTTP_EP_COUNT] = {
    [HTTP_EP_FRAMES] = "/v1/frames",   [HTTP_EP_BASE] = "/v1/base",
    [HTTP_EP_PROMOTE] = "/v1/promote", [HTTP_EP_BACKUP] = "/v1/backup",
    [HTTP_EP_STATUS] = "/v1/status",   [HTTP_EP_METRICS] = "/metrics",
    [HTTP_EP_HEALTHZ] = "/healthz",    [HTTP_EP_READYZ] = "/readyz",
    [HTTP_EP_TREE] = "/v1/tree",       [HTTP_EP_PAGES] = "/v1/pages",
    [HTTP_EP_PAGE] = "/",
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
  http_tag_upload tag;          /* its tag (auth.c) */
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
  case HTTP_EP_TREE:
  case HTTP_EP_PAGES:
  case HTTP_EP_PAGE:
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
         ep == HTTP_EP_PROMOTE || ep == HTTP_EP_BACKUP ||
         ep == HTTP_EP_TREE || ep == HTTP_EP_PAGES;
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
    http_json_object_end(&reply->body);
  size_t len = 0;
  char *doc = http_json_take(&reply->body, &len);
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

int http_server_send_body(http_server *s, struct MHD_Connection *conn,
                          http_endpoint ep, char *data, size_t len,
                          const char *content_type)
{
  return queue_buffer(s, conn, ep, 200, data, len, content_type, NULL);
}

/* ---------------------------------------------------------------------- */
/* Phase 0 and 1: the request line and the headers */

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
  bool keep_one = !s->auth && s->max_uploads > 1;
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
void *http_dispatch_request_line(void *cls, const char *uri,
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
  http_json_key(&reply->body, "code");
  http_json_string(&reply->body, http_error_name(rc));
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

/* Phase 1: 404 for an unknown path, 405 for a method it does not take. */
static bool refuse_route(const request *r, const char *method,
                         http_reply *reply)
{
  if (r->ep == HTTP_EP_OTHER) {
    http_reply_error(reply, 404, "no such endpoint");
    return true;
  }
  if (method_allowed(r->ep, method))
    return false;
  http_reply_error(reply, 405, "method not allowed");
  http_json_key(&reply->body, "allow");
  http_json_string(&reply->body, allowed_methods(r->ep));
  http_reply_header(reply, MHD_HTTP_HEADER_ALLOW, allowed_methods(r->ep));
  return true;
}

/* Phase 1: 503 once stopping (the health check still answers). */
static bool refuse_stopping(http_server *s, const request *r,
                            http_reply *reply)
{
  pthread_mutex_lock(&s->stats_mu);
  bool stopping = s->stopping;
  pthread_mutex_unlock(&s->stats_mu);
  if (!stopping || r->ep == HTTP_EP_HEALTHZ)
    return false;
  http_reply_error(reply, 503, "shutting down");
  return true;
}

/* Phase 1: 401 for an endpoint that needs the token, without it. */
static bool refuse_token(http_server *s, struct MHD_Connection *conn,
                         const request *r, const char *method,
                         http_reply *reply)
{
  if (!needs_token(r->ep) || !s->auth)
    return false;
  const char *auth = MHD_lookup_connection_value(
      conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
  pthread_mutex_lock(&s->token_mu);
  bool matches = http_token_matches(s->token, s->token_len, auth);
  pthread_mutex_unlock(&s->token_mu);
  if (matches)
    return false;
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

/* Phase 1: 409 for a standby's endpoint on a primary. */
static bool refuse_not_standby(http_server *s, const request *r,
                               http_reply *reply)
{
  bool standby_endpoint = r->ep == HTTP_EP_FRAMES || r->ep == HTTP_EP_BASE ||
                          r->ep == HTTP_EP_PROMOTE;
  if (!standby_endpoint || s->standby)
    return false;
  loom_position pos;
  s->primary.position(s->primary.ctx, &pos);
  http_reply_error(reply, 409, "not a standby");
  http_json_key(&reply->body, "role");
  http_json_string(&reply->body, "primary");
  http_json_key(&reply->body, "applied");
  http_json_position(&reply->body, &pos);
  http_json_key(&reply->body, "epoch");
  http_json_uint(&reply->body, pos.epoch);
  return true;
}

/* Phase 1 for an upload (frame, base): a slot (503), a Content-Length
 * within the cap (413), and for a base image, the standby's claim. */
static bool refuse_upload(http_server *s, struct MHD_Connection *conn,
                          request *r, http_reply *reply)
{
  if (r->ep != HTTP_EP_FRAMES && r->ep != HTTP_EP_BASE)
    return false;
  if (!take_upload_slot(s, r, conn)) {
    http_reply_error(reply, 503, "too many uploads in progress");
    reply->retry_after = 1;
    return true;
  }
  uint64_t cl = content_length(conn);
  if (r->ep == HTTP_EP_FRAMES) {
    if (cl == UINT64_MAX || cl <= s->max_frame_bytes)
      return false;
    http_reply_error(reply, 413, "frame too large");
    http_json_key(&reply->body, "max_bytes");
    http_json_uint(&reply->body, s->max_frame_bytes);
    return true;
  }
  if (cl != UINT64_MAX &&
      cl > LOOM_STREAM_HEADER + s->max_image_pages * (uint64_t)LOOM_PAGE_SIZE) {
    http_reply_error(reply, 413, "image too large");
    return true;
  }
  if (http_auth_base_begin(s, conn, &r->tag, &cl, reply))
    return true;
  const char *expect = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                   "X-Loomship-If-Position");
  return http_standby_base_begin(s->standby, cl, expect, &r->base, reply) != 0;
}

/* Phase 1: returns true with reply filled when the request is decided. */
static bool first_call(http_server *s, struct MHD_Connection *conn,
                       request *r, const char *method, http_reply *reply)
{
  return refuse_route(r, method, reply) || refuse_stopping(s, r, reply) ||
         refuse_token(s, conn, r, method, reply) ||
         refuse_not_standby(s, r, reply) || refuse_upload(s, conn, r, reply);
}

/* ---------------------------------------------------------------------- */
/* Phase 2: the body */

static void frame_refuse(request *r, unsigned status, const char *message,
                         int rc)
{
  r->refused = true;
  http_reply_error(&r->refusal, status, message);
  if (rc) {
    http_json_key(&r->refusal.body, "code");
    http_json_string(&r->refusal.body, http_error_name(rc));
    http_json_key(&r->refusal.body, "detail");
    http_json_string(&r->refusal.body, replicate_strerror(rc));
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
    if (rc && s->frame_key)
      return; /* fail closed: the tag is checked before any parsing (auth.c),
                 the body is bounded by max_frame_bytes meanwhile */
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
  http_json_key(&reply.body, "code");
  http_json_string(&reply.body, http_error_name(rc));
  http_json_object_end(&reply.body);
  size_t len = 0;
  char *doc = http_json_take(&reply.body, &len);
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
  if (doc && ci && !s->tls) {
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
    size_t image = http_auth_base_feed(&r->tag, (const uint8_t *)data, n);
    refused = image && http_standby_base_feed(r->base, (const uint8_t *)data, image) != 0;
  }
  if (refused && !r->has_length)
    return close_now(s, conn, r, "refused, and no Content-Length");
  return MHD_YES;
}

/* ---------------------------------------------------------------------- */
/* Phase 3: one handler per endpoint, called once the body is complete. */

typedef enum MHD_Result (*endpoint_handler)(http_server *s,
                                            struct MHD_Connection *conn,
                                            request *r);

/* X-Loomship-Upstream of accepted frames: where the primary serves trees
 * and pages (DESIGN section 4), kept for self-repair. An http or https URL
 * of printable characters, else ignored. */
static void learn_upstream(http_server *s, struct MHD_Connection *conn)
{
  const char *url = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                "X-Loomship-Upstream");
  if (!url || strlen(url) >= sizeof s->upstream ||
      (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0))
    return;
  for (const char *c = url; *c; c++)
    if (*c <= ' ' || *c > '~')
      return;
  pthread_mutex_lock(&s->stats_mu);
  snprintf(s->upstream, sizeof s->upstream, "%s", url);
  pthread_mutex_unlock(&s->stats_mu);
}

/* While the standby repairs pages from its upstream (integrity state
 * repairing), frames wait: 503 with Retry-After 1, code REPAIRING (the
 * primary tries again; a base image is not needed). */
static bool refuse_repairing(http_server *s, http_reply *reply)
{
  replicate_scrub_status in;
  http_server_integrity(s, &in);
  if (in.state != REPLICATE_INTEGRITY_REPAIRING)
    return false;
  http_reply_error(reply, 503, "repairing rotted pages from the upstream");
  http_json_key(&reply->body, "code");
  http_json_string(&reply->body, "REPAIRING");
  reply->retry_after = 1;
  return true;
}

/* POST /v1/frames: the refusal kept from phase 2, or the standby's
 * answer. */
static enum MHD_Result answer_frames(http_server *s,
                                     struct MHD_Connection *conn, request *r)
{
  http_reply reply = {0};
  if (r->refused) {
    reply = r->refusal;
    http_json_init(&r->refusal.body);
  } else if (!http_auth_frames_refused(s, conn, r->body, r->len, &reply)) {
    learn_upstream(s, conn);
    if (!refuse_repairing(s, &reply))
      http_standby_receive_frame(s->standby, r->body, r->len, &reply);
  }
  return (enum MHD_Result)http_server_send(s, conn, r->ep, &reply);
}

/* PUT /v1/base: commit the image fed in phase 2 (or answer its refusal). */
static enum MHD_Result answer_base(http_server *s, struct MHD_Connection *conn,
                                   request *r)
{
  http_reply reply = {0};
  if (http_auth_base_refused(s, &r->tag, &reply))
    http_standby_base_abort(r->base); /* the old image stays */
  else
    http_standby_base_finish(r->base, &reply);
  if (reply.status == 200)
    http_server_base_installed(s); /* a damaged image is whole again */
  r->base = NULL;
  return (enum MHD_Result)http_server_send(s, conn, r->ep, &reply);
}

static enum MHD_Result answer_promote(http_server *s,
                                      struct MHD_Connection *conn, request *r)
{
  const char *force =
      MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "force");
  http_reply reply = {0};
  if (s->cluster.get) { /* promotion goes through etcd (DESIGN section 6) */
    http_reply_error(&reply, 409, "a cluster member is promoted through etcd: "
                                  "use loomship switchover");
    http_json_key(&reply.body, "code");
    http_json_string(&reply.body, "CLUSTER_MEMBER");
    return (enum MHD_Result)http_server_send(s, conn, r->ep, &reply);
  }
  http_standby_promote(s->standby, force && strcmp(force, "1") == 0, &reply);
  return (enum MHD_Result)http_server_send(s, conn, r->ep, &reply);
}

/* GET or HEAD /v1/backup: the backups answer, the server queues and
 * counts. */
static enum MHD_Result answer_backup(http_server *s,
                                     struct MHD_Connection *conn, request *r)
{
  const char *range = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                  MHD_HTTP_HEADER_RANGE);
  const char *if_range = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_IF_RANGE);
  const char *want_tag = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                     REPLICATE_WANT_TAG_HEADER);
  http_reply reply = {0};
  struct MHD_Response *resp = NULL;
  unsigned status =
      want_tag && s->frame_key
          ? http_backups_respond_tagged(s->backups, s->frame_key, &reply, &resp)
          : http_backups_respond(s->backups, range, if_range, &reply, &resp);
  if (!resp && !status)
    return MHD_NO;
  if (!resp)
    return (enum MHD_Result)http_server_send(s, conn, r->ep, &reply);
  enum MHD_Result result = MHD_queue_response(conn, status, resp);
  MHD_destroy_response(resp);
  http_server_count(s, r->ep, status);
  return result;
}

/* GET /v1/tree and /v1/pages (integrity.c): binary answers, or a JSON
 * refusal. */
static enum MHD_Result answer_integrity(http_server *s,
                                        struct MHD_Connection *conn, request *r)
{
  static const char *const keys[] = {"seq", "level", "first", "count", "pages"};
  const char *v[5];
  for (int i = 0; i < 5; i++)
    v[i] = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, keys[i]);
  http_integrity_query q = {v[0], v[1], v[2], v[3], v[4]};
  http_reply reply = {0};
  uint8_t *body = NULL;
  size_t len = 0;
  unsigned status = r->ep == HTTP_EP_TREE
                        ? http_integrity_tree(s->integrity, &q, &reply, &body, &len)
                        : http_integrity_pages(s->integrity, &q, &reply, &body, &len);
  if (!body)
    return (enum MHD_Result)http_server_send(s, conn, r->ep, &reply);
  struct MHD_Response *resp =
      MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
  if (!resp) {
    free(body);
    return MHD_NO;
  }
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                          "application/octet-stream");
  if (status == 200)
    http_auth_tag_answer(s, resp, r->ep == HTTP_EP_TREE ? REPLICATE_TAG_TREE
                                                        : REPLICATE_TAG_PAGES,
                         body, len);
  enum MHD_Result result = MHD_queue_response(conn, status, resp);
  MHD_destroy_response(resp);
  http_server_count(s, r->ep, status);
  return result;
}

static enum MHD_Result answer_status(http_server *s,
                                     struct MHD_Connection *conn, request *r)
{
  (void)r;
  return (enum MHD_Result)http_answer_status(s, conn);
}

static enum MHD_Result answer_metrics(http_server *s,
                                      struct MHD_Connection *conn, request *r)
{
  (void)r;
  return (enum MHD_Result)http_answer_metrics(s, conn);
}

static enum MHD_Result answer_readyz(http_server *s,
                                     struct MHD_Connection *conn, request *r)
{
  (void)r;
  return (enum MHD_Result)http_answer_readyz(s, conn);
}

static enum MHD_Result answer_healthz(http_server *s,
                                      struct MHD_Connection *conn, request *r)
{
  http_reply reply = {0};
  http_reply_object(&reply, 200);
  http_json_key(&reply.body, "status");
  http_json_string(&reply.body, "ok");
  return (enum MHD_Result)http_server_send(s, conn, r->ep, &reply);
}

static enum MHD_Result answer_page(http_server *s, struct MHD_Connection *conn,
                                   request *r)
{
  (void)r;
  return (enum MHD_Result)http_answer_page(s, conn);
}

static enum MHD_Result answer_unknown(http_server *s,
                                      struct MHD_Connection *conn, request *r)
{
  http_reply reply = {0};
  http_reply_error(&reply, 404, "no such endpoint");
  return (enum MHD_Result)http_server_send(s, conn, r->ep, &reply);
}

static const endpoint_handler handlers[HTTP_EP_COUNT] = {
    [HTTP_EP_FRAMES] = answer_frames,   [HTTP_EP_BASE] = answer_base,
    [HTTP_EP_PROMOTE] = answer_promote, [HTTP_EP_BACKUP] = answer_backup,
    [HTTP_EP_STATUS] = answer_status,   [HTTP_EP_METRICS] = answer_metrics,
    [HTTP_EP_HEALTHZ] = answer_healthz, [HTTP_EP_READYZ] = answer_readyz,
    [HTTP_EP_PAGE] = answer_page,
    [HTTP_EP_TREE] = answer_integrity,  [HTTP_EP_PAGES] = answer_integrity,
    [HTTP_EP_OTHER] = answer_unknown,
};

/* ---------------------------------------------------------------------- */
/* libmicrohttpd's callbacks */

/* Phase 1: the headers are in. Refuse now, or get ready for the body. */
static enum MHD_Result headers_in(http_server *s, struct MHD_Connection *conn,
                                  request *r, const char *url,
                                  const char *method, const char *version)
{
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

enum MHD_Result http_dispatch_access(void *cls, struct MHD_Connection *conn,
                                     const char *url, const char *method,
                                     const char *version,
                                     const char *upload_data,
                                     size_t *upload_data_size, void **req_cls)
{
  http_server *s = cls;
  request *r = *req_cls; /* made by http_dispatch_request_line */
  if (!r)
    return MHD_NO;
  if (!r->started)
    return headers_in(s, conn, r, url, method, version);
  if (*upload_data_size) {
    size_t n = *upload_data_size;
    *upload_data_size = 0;
    return body_chunk(s, conn, r, upload_data, n);
  }
  return handlers[r->ep](s, conn, r);
}

void http_dispatch_completed(void *cls, struct MHD_Connection *conn,
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
  http_auth_base_free(&r->tag);
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
  http_json_free(&r->refusal.body);
  free(r->body);
  free(r);
  *req_cls = NULL;
}
