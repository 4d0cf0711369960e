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
void json_double(json_writer *w, double v);     /* exact (below); non-finite: null */
void json_bool(json_writer *w, bool v);
void json_null(json_writer *w);
void json_hex64(json_writer *w, uint64_t v);    /* "%016x" as a string */
/* ISO 8601 UTC with the fraction to the nanosecond, trailing groups of
 * three zeros dropped down to milliseconds ("...:20.123Z",
 * "...:20.123456789Z"); ns <= 0: null. */
void json_time_ns(json_writer *w, int64_t ns);

/* Numbers printed exactly, for JSON and the metrics text alike:
 * json_format_double writes the shortest decimal that reads back as v
 * (strtod gives v again: "0.004", not "0.0040000000000000001"; up to 17
 * significant digits), json_format_ns_seconds writes ns as seconds with
 * every nanosecond ("1700000000.123456789", trailing zeros dropped, "5"
 * for whole seconds). buf holds at least JSON_NUMBER_MAX bytes; both
 * return buf. */
#define JSON_NUMBER_MAX 40
const char *json_format_double(double v, char *buf);
const char *json_format_ns_seconds(int64_t ns, char *buf);

#endif /* HTTP_JSON_H */
