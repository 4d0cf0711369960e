/*
 * internal.h: what the files of http/ share; not part of the public API
 * (server.h is). The tests include it to check the helpers directly.
 *
 *   json.c      a minimal JSON writer
 *   util.c      ranges, ETags, tokens, times, error names
 *   server.c    the daemon: dispatch, authentication, load bounds, status,
 *               metrics, health
 *   backup.c    GET /v1/backup from a shared snapshot
 *   guard.c     deadlines for headers and uploads (slow clients)
 *   standby.c   the standby: receive log, applier thread, frames, base,
 *               promotion
 *
 * Lock order (standby): recv_mu, then store_mu, then mu. The server's own
 * lock (stats_mu) is never held while taking another; the backups' lock
 * (backup.c) is held around opening a snapshot (which, on a standby, takes
 * store_mu and mu), never while taking stats_mu.
 */
#ifndef HTTP_INTERNAL_H
#define HTTP_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <pthread.h>
#include <stdint.h>

#include <microhttpd.h>

#include "loom.h"
#include "replicate.h"
#include "server.h"

/* ---------------------------------------------------------------------- */
/* JSON writer (json.c). Builds a document into a growing buffer; commas
 * and escaping are its job. An allocation failure is remembered and makes
 * json_take() return NULL. */

#define JSON_MAX_DEPTH 32

typedef struct json_writer {
  char *data;
  size_t len;
  size_t cap;
  bool failed;
  unsigned depth;
  bool need_comma[JSON_MAX_DEPTH + 1];
  bool after_key;
} json_writer;

void json_init(json_writer *w);
void json_free(json_writer *w);
/* The document (NUL-terminated, *len without the NUL); the caller owns it
 * and frees it with free(). NULL if anything failed; w is empty after. */
char *json_take(json_writer *w, size_t *len);

void json_object_begin(json_writer *w);
void json_object_end(json_writer *w);
void json_array_begin(json_writer *w);
void json_array_end(json_writer *w);
void json_key(json_writer *w, const char *key);
void json_string(json_writer *w, const char *s); /* NULL writes null */
void json_uint(json_writer *w, uint64_t v);
void json_int(json_writer *w, int64_t v);
void json_double(json_writer *w, double v);     /* non-finite: null */
void json_bool(json_writer *w, bool v);
void json_null(json_writer *w);
void json_hex64(json_writer *w, uint64_t v);    /* "%016x" as a string */
void json_time_ns(json_writer *w, int64_t ns);  /* ISO 8601 UTC, ms; 0: null */

/* ---------------------------------------------------------------------- */
/* Helpers (util.c) */

typedef enum http_range_result {
  HTTP_RANGE_NONE = 0,          /* no usable Range: send everything (200) */
  HTTP_RANGE_SINGLE = 1,        /* bytes [*first, *last] (206) */
  HTTP_RANGE_UNSATISFIABLE = 2  /* 416 */
} http_range_result;

/* Parse a Range header value against a body of total bytes. Only one
 * "bytes=" range is served: a list of several, another unit or a syntax
 * error gives HTTP_RANGE_NONE (RFC 9110 lets a server ignore Range). */
http_range_result http_range_parse(const char *value, uint64_t total,
                                   uint64_t *first, uint64_t *last);

/* The strong ETag of a position, quotes included:
 * "\"<epoch>-<seq>-<checksum as 16 hex digits>\"". */
#define HTTP_ETAG_MAX 64
void http_etag_format(const loom_position *pos, char out[HTTP_ETAG_MAX]);

/* Does the Authorization header value carry "Bearer <token>"? Compares in
 * time independent of where the bytes differ. NULL value: false. */
bool http_token_matches(const uint8_t *token, size_t token_len,
                        const char *authorization);

/* The identifier of an error code ("REPLICATE_EPAYLOAD_CHECKSUM",
 * "LOOM_EPOSITION", "ENOSPC", ...). Never NULL. */
const char *http_error_name(int rc);

/* The decoder limits the options ask for (defaults filled in). */
replicate_limits http_limits_of(const http_server_options *opt);

int64_t http_now_ns(void);       /* CLOCK_REALTIME (+ the test offset) */
int64_t http_monotonic_ns(void); /* CLOCK_MONOTONIC */
/* Test seam: shift this process's http_now_ns() by ns (a host whose clock
 * is off); 0, the default, in production. */
void http_clock_offset_set(int64_t ns);

/* ---------------------------------------------------------------------- */
/* A reply being built by a handler: a status code, a JSON body (an object
 * left open: http_server_send closes it) and a few extra headers. */

#define HTTP_REPLY_HEADERS 4

typedef struct http_reply {
  unsigned status;
  json_writer body;
  unsigned retry_after;         /* seconds; 0: no Retry-After header */
  unsigned header_count;
  struct {
    const char *name;           /* a string literal */
    char value[96];
  } headers[HTTP_REPLY_HEADERS];
} http_reply;

/* Add a header (dropped beyond HTTP_REPLY_HEADERS: a bug). */
void http_reply_header(http_reply *reply, const char *name, const char *value);
/* Start a reply {"error": message, ...}: the caller may add keys, the
 * object is closed when the reply is sent. */
void http_reply_error(http_reply *reply, unsigned status, const char *message);
/* Start a reply with an empty object (status 200 unless set). */
void http_reply_object(http_reply *reply, unsigned status);
/* Write pos as {"epoch", "seq", "checksum", "pages", "at"}. */
void http_json_position(json_writer *w, const loom_position *pos);
/* The key "history": 32 hex digits, or null for none. */
void http_json_history(json_writer *w, const loom_history *h);

typedef struct http_logger {
  http_log_fn fn;
  void *ctx;
} http_logger;

void http_logf(const http_logger *logger, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---------------------------------------------------------------------- */
/* The standby (standby.c) */

typedef struct http_standby http_standby;

/* More than the public status: what /v1/status and /metrics show. */
typedef struct http_standby_view {
  http_server_status status;
  uint64_t primary_epoch;
  int64_t primary_commit_ns;    /* commit time of primary_seq, 0 unknown */
  int64_t last_contact_ns;      /* last frame or heartbeat, 0 never */
  int64_t last_apply_error_at_ns;
  int64_t promoted_at_ns;       /* 0 unless promoted */
  uint64_t heartbeats;
  uint64_t bases;
  uint64_t bytes_received;      /* commit frame bytes made durable */
  uint64_t apply_failures;
  uint64_t receive_log_bytes;
  bool clock_skew_known;        /* a frame or heartbeat arrived */
  double clock_skew_seconds;    /* our clock minus the primary's, estimated
                                   (standby.c, PRIMARY'S CLOCK) */
} http_standby_view;

int http_standby_open(const http_server_options *opt,
                      const http_logger *logger, http_standby **out);
/* Apply everything received, sync, close. Returns the first error. */
int http_standby_close(http_standby *sb);

/* POST /v1/frames with the whole body. */
void http_standby_receive_frame(http_standby *sb, const uint8_t *body,
                                size_t len, http_reply *reply);
/* POST /v1/promote[?force=1]: refused (409) when the standby never
 * applied anything (PROMOTE_EMPTY) or is more than promote_max_lag frames
 * behind the primary seq it last heard (PROMOTE_BEHIND), unless forced. */
void http_standby_promote(http_standby *sb, bool force, http_reply *reply);

/* PUT /v1/base, streamed: begin (0, or non-zero with reply filled), feed
 * chunks (0, or non-zero once refused: the reply to send is then kept in
 * the upload and given by finish), finish (commit, free) or abort (free,
 * the old image stays). content_length is UINT64_MAX when unknown. */
typedef struct http_base_upload http_base_upload;
int http_standby_base_begin(http_standby *sb, uint64_t content_length,
                            http_base_upload **out, http_reply *reply);
int http_standby_base_feed(http_base_upload *up, const uint8_t *data,
                           size_t len);
void http_standby_base_finish(http_base_upload *up, http_reply *reply);
void http_standby_base_abort(http_base_upload *up);

/* A snapshot of the standby's store: 0, EBUSY (a base image is coming in),
 * or the errors of loom_store_snapshot_open. Close it with
 * http_standby_snapshot_close. */
int http_standby_snapshot_open(http_standby *sb, loom_snapshot **out);
void http_standby_snapshot_close(http_standby *sb, loom_snapshot *snap);

void http_standby_view_get(http_standby *sb, http_standby_view *out);
bool http_standby_promoted(http_standby *sb);

/* ---------------------------------------------------------------------- */
/* The connection guard (guard.c): deadlines for request headers and
 * uploads, kept by a thread of its own (the file's comment says why
 * libmicrohttpd's idle timeout is not enough). Protocol: register
 * http_guard_notify as the daemon's MHD_OPTION_NOTIFY_CONNECTION with the
 * guard as its closure; from the access handler call request_begin once the
 * headers are in, upload_begin when a body is to be read and
 * upload_progress with each piece of it; from the completion callback,
 * request_end. A connection the guard does not know (out of memory) is
 * simply not guarded. */

typedef struct http_guard http_guard;

typedef struct http_guard_limits {
  unsigned header_timeout_seconds;      /* G1 */
  unsigned upload_grace_seconds;        /* G2: before the rate counts */
  uint64_t upload_min_bytes_per_second; /* G2; 0: no minimum */
} http_guard_limits;

typedef enum http_guard_verdict {
  HTTP_GUARD_OK = 0,
  HTTP_GUARD_HEADERS_LATE = 1,  /* G1 */
  HTTP_GUARD_TOO_SLOW = 2,      /* G2 */
  HTTP_GUARD_TOO_LONG = 3,      /* G3 */
  HTTP_GUARD_REASONS = 4
} http_guard_verdict;

/* "headers_late", "upload_too_slow", "upload_too_long" (metrics labels). */
const char *http_guard_reason_name(http_guard_verdict v);

int http_guard_start(const http_guard_limits *limits,
                     const http_logger *logger, http_guard **out);
/* After the daemon stopped. NULL is a no-op. */
void http_guard_stop(http_guard *guard);
void http_guard_notify(void *cls, struct MHD_Connection *conn,
                       void **socket_context,
                       enum MHD_ConnectionNotificationCode code);
void http_guard_request_begin(http_guard *guard, struct MHD_Connection *conn);
void http_guard_request_end(http_guard *guard, struct MHD_Connection *conn);
/* An upload starts (max_seconds: its duration cap, G3; 0: none). */
void http_guard_upload_begin(http_guard *guard, struct MHD_Connection *conn,
                             unsigned max_seconds);
/* bytes more arrived: HTTP_GUARD_OK, or the reason the caller must close
 * the connection now (counted as closed by the guard). */
http_guard_verdict http_guard_upload_progress(http_guard *guard,
                                              struct MHD_Connection *conn,
                                              size_t bytes);
/* How many connections were closed, by reason (index: the verdict). */
void http_guard_closed_counts(http_guard *guard,
                              uint64_t out[HTTP_GUARD_REASONS]);

/* ---------------------------------------------------------------------- */
/* Backups (backup.c): GET /v1/backup from a snapshot shared by every
 * download in progress. An object of its own, with its own lock: the
 * server creates it with a source of snapshots, asks it to answer and for
 * its figures, and frees it once the daemon stopped (no response left). */

typedef struct http_backups http_backups;

/* Where snapshots come from. open: 0 or an error code (503 is answered;
 * EBUSY says a base image is coming in); NULL open: ENOTSUP. close: gives
 * back what open gave, from any thread. */
typedef struct http_backup_source {
  void *ctx;
  int (*open)(void *ctx, loom_snapshot **out);
  void (*close)(void *ctx, loom_snapshot *snap);
} http_backup_source;

/* 0 or ENOMEM. source is copied. */
int http_backups_create(const http_backup_source *source, http_backups **out);
/* Once no response is left (after MHD_stop_daemon). NULL is a no-op. */
void http_backups_free(http_backups *backups);

/*
 * Answer GET or HEAD /v1/backup (the token was checked); range and
 * if_range are the request's headers (NULL when absent). Returns the
 * status to answer with:
 *   200, 206  *resp is the image stream to queue (whole, or the range);
 *             the caller queues it and destroys its reference
 *   503, 416  reply is filled (no snapshot; a range past the end); the
 *             caller sends it
 *   0         out of memory: nothing to send (close the connection)
 */
unsigned http_backups_respond(http_backups *backups, const char *range,
                              const char *if_range, http_reply *reply,
                              struct MHD_Response **resp);

/* The figures status and metrics show about backups. */
typedef struct http_backup_figures {
  unsigned in_progress;
  uint64_t started;
  uint64_t bytes_sent;
  bool open;                    /* a snapshot is open */
  loom_position position;       /* its position */
} http_backup_figures;

void http_backups_figures(http_backups *backups, http_backup_figures *out);

/* ---------------------------------------------------------------------- */
/* The server (server.c) */

typedef enum http_endpoint {
  HTTP_EP_FRAMES = 0,
  HTTP_EP_BASE,
  HTTP_EP_PROMOTE,
  HTTP_EP_BACKUP,
  HTTP_EP_STATUS,
  HTTP_EP_METRICS,
  HTTP_EP_HEALTHZ,
  HTTP_EP_READYZ,
  HTTP_EP_OTHER,
  HTTP_EP_COUNT
} http_endpoint;

/* The status codes counted one by one in /metrics; others go to "other". */
#define HTTP_CODE_SLOTS 15
extern const unsigned http_counted_codes[HTTP_CODE_SLOTS - 1];

const char *http_endpoint_path(http_endpoint ep);

struct http_server {
  http_role role;               /* the configured role */
  http_primary_source primary;  /* primary role */
  uint8_t *token;               /* NULL: no authentication */
  size_t token_len;
  char *tls_cert;               /* PEM contents, or NULL */
  char *tls_key;
  uint64_t max_frame_bytes;
  uint64_t max_image_pages;
  replicate_limits limits;      /* what a frame may declare */
  unsigned max_uploads;
  unsigned upload_stall_seconds;   /* per-connection timeout while uploading */
  unsigned frame_upload_max_seconds; /* duration caps (guard.c, G3) */
  unsigned base_upload_max_seconds;
  http_guard *guard;
  unsigned connection_timeout;     /* the daemon's, restored after an upload */
  double ready_max_lag_seconds;
  http_logger logger;

  http_standby *standby;        /* standby role (also once promoted) */
  struct MHD_Daemon *daemon;
  uint16_t port;
  int64_t started_ns;
  int64_t started_mono_ns;

  pthread_mutex_t stats_mu;     /* the figures below */
  bool stopping;
  unsigned uploads;             /* frame and base uploads in progress */
  uint64_t requests[HTTP_EP_COUNT][HTTP_CODE_SLOTS];
  uint64_t auth_failures;

  http_backups *backups;        /* GET /v1/backup (backup.c) */
};

/* Count a reply by endpoint and status (for /metrics). */
void http_server_count(http_server *server, http_endpoint ep, unsigned status);
/* Queue reply (closing its JSON object) and free it. Returns the
 * enum MHD_Result. */
int http_server_send(http_server *server, struct MHD_Connection *conn,
                     http_endpoint ep, http_reply *reply);

#endif /* HTTP_INTERNAL_H */
