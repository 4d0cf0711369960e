/*
 * util.h: small helpers of http/ (util.c): Range, ETags, the bearer
 * token, decoder limits, clocks and the log. Internal.
 */
#ifndef HTTP_UTIL_H
#define HTTP_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loom.h"
#include "replicate.h"
#include "server.h"

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

/* The decoder limits the options ask for (defaults filled in). */
replicate_limits http_limits_of(const http_server_options *opt);

int64_t http_now_ns(void);       /* CLOCK_REALTIME (+ the test offset) */
int64_t http_monotonic_ns(void); /* CLOCK_MONOTONIC */
/* Test seam: shift this process's http_now_ns() by ns (a host whose clock
 * is off); 0, the default, in production. */
void http_clock_offset_set(int64_t ns);

/* ---------------------------------------------------------------------- */
/* The log */

typedef struct http_logger {
  http_log_fn fn;
  void *ctx;
} http_logger;

void http_logf(const http_logger *logger, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif /* HTTP_UTIL_H */
