/*
 * guard.h: deadlines for request headers and uploads (guard.c).
 * Internal.
 */
#ifndef HTTP_GUARD_H
#define HTTP_GUARD_H

#include <stddef.h>
#include <stdint.h>

#include <microhttpd.h>

#include "util.h"

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

#endif /* HTTP_GUARD_H */
