/*
 * reply.h: the reply every handler of http/ builds (reply.c), the JSON
 * pieces documents share, and the stable names of error codes. Internal.
 */
#ifndef HTTP_REPLY_H
#define HTTP_REPLY_H

#include <stdbool.h>
#include <stdint.h>

#include "json.h"
#include "loom.h"

/* ---------------------------------------------------------------------- */
/* A reply being built by a handler: a status code, a JSON body (an object
 * left open: http_server_send closes it) and a few extra headers. */

#define HTTP_REPLY_HEADERS 4

typedef struct http_reply {
  unsigned status;
  http_json_writer body;
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
void http_json_position(http_json_writer *w, const loom_position *pos);
/* The key "history": 32 hex digits, or null for none. */
void http_json_history(http_json_writer *w, const loom_history *h);

/* The identifier of an error code ("REPLICATE_EPAYLOAD_CHECKSUM",
 * "LOOM_EPOSITION", "ENOSPC", ...). Never NULL. */
const char *http_error_name(int rc);

#endif /* HTTP_REPLY_H */
