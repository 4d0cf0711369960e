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
void http_json_double(http_json_writer *w, double v);     /* exact (below); non-finite: null */
void http_json_bool(http_json_writer *w, bool v);
void http_json_null(http_json_writer *w);
void http_json_hex64(http_json_writer *w, uint64_t v);    /* "%016x" as a string */
/* ISO 8601 UTC with the fraction to the nanosecond, trailing groups of
 * three zeros dropped down to milliseconds ("...:20.123Z",
 * "...:20.123456789Z"); ns <= 0: null. */
void http_json_time_ns(http_json_writer *w, int64_t ns);

/* A key and its value in one call: http_json_key, then the value writer of the
 * same name. */
void http_json_member_string(http_json_writer *w, const char *key, const char *s);
void http_json_member_uint(http_json_writer *w, const char *key, uint64_t v);
void http_json_member_double(http_json_writer *w, const char *key, double v);
void http_json_member_hex64(http_json_writer *w, const char *key, uint64_t v);
void http_json_member_time_ns(http_json_writer *w, const char *key, int64_t ns);

/* Numbers printed exactly, for JSON and the metrics text alike:
 * http_json_format_double writes the shortest decimal that reads back as
 * v (strtod gives v again: "0.004", not "0.0040000000000000001"; up to 17
 * significant digits), http_json_format_ns_seconds writes ns as seconds
 * with every nanosecond ("1700000000.123456789", trailing zeros dropped,
 * "5" for whole seconds). buf holds at least HTTP_JSON_NUMBER_MAX bytes;
 * both return buf. */
#define HTTP_JSON_NUMBER_MAX 40
const char *http_json_format_double(double v, char *buf);
const char *http_json_format_ns_seconds(int64_t ns, char *buf);

#endif /* HTTP_JSON_H */
