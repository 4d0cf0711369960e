/*
 * json.h: the JSON writer of http/ (json.c); internal, not part of the
 * public API (server.h is).
 */
#ifndef HTTP_JSON_H
#define HTTP_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------------- */
/* JSON writer (json.c). Builds a document into a growing buffer; commas
 * and escaping are its job. An allocation failure is remembered and makes
 * http_json_take() return NULL. */

#define HTTP_JSON_MAX_DEPTH 32

typedef struct http_json_writer {
  char *data;
  size_t len;
  size_t cap;
  bool failed;
  unsigned depth;
  bool need_comma[HTTP_JSON_MAX_DEPTH + 1];
  bool after_key;
} http_json_writer;

void http_json_init(http_json_writer *w);
void http_json_free(http_json_writer *w);
/* The document (NUL-terminated, *len without the NUL); the caller owns it
 * and frees it with free(). NULL if anything failed; w is empty after. */
char *http_json_take(http_json_writer *w, size_t *len);

void http_json_object_begin(http_json_writer *w);
void http_json_object_end(http_json_writer *w);
void http_json_array_begin(http_json_writer *w);
void http_json_array_end(http_json_writer *w);
void http_json_key(http_json_writer *w, const char *key);
void http_json_string(http_json_writer *w, const char *s); /* NULL writes null */
void http_json_uint(http_json_writer *w, uint64_t v);
void http_json_int(http_json_writer *w, int64_t v);
void http_json_double(http_json_writer *w, double v);     /* non-finite: null */
void http_json_bool(http_json_writer *w, bool v);
void http_json_null(http_json_writer *w);
void http_json_hex64(http_json_writer *w, uint64_t v);    /* "%016x" as a string */
void http_json_time_ns(http_json_writer *w, int64_t ns);  /* ISO 8601 UTC, ms; 0: null */

/* A key and its value in one call: http_json_key, then the value writer of the
 * same name. */
void http_json_member_string(http_json_writer *w, const char *key, const char *s);
void http_json_member_uint(http_json_writer *w, const char *key, uint64_t v);
void http_json_member_hex64(http_json_writer *w, const char *key, uint64_t v);
void http_json_member_time_ns(http_json_writer *w, const char *key, int64_t ns);

#endif /* HTTP_JSON_H */
