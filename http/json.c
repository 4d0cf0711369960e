/*
 * json.c: a minimal JSON writer for the server's replies.
 *
 * The writer appends to one growing buffer. It tracks, per nesting level,
 * whether the next value needs a comma, and whether a key was just written
 * (then the value follows the colon). Strings are escaped per RFC 8259:
 * the quote, the backslash and every control character; bytes >= 0x80 are
 * copied as they are (the server writes only ASCII and UTF-8 of its own).
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "array.h"
#include "json.h"

void http_json_init(http_json_writer *w)
{
  memset(w, 0, sizeof *w);
}

void http_json_free(http_json_writer *w)
{
  free(w->data);
  memset(w, 0, sizeof *w);
}

char *http_json_take(http_json_writer *w, size_t *len)
{
  char *doc = NULL;
  if (!w->failed && w->data) {
    doc = w->data;
    if (len)
      *len = w->len;
    w->data = NULL;
  }
  http_json_free(w);
  return doc;
}

/* The first buffer: most answers fit, in one allocation. */
#define WRITER_FIRST_BYTES 256

/* Make room for n more bytes and the terminating NUL. */
static bool reserve(http_json_writer *w, size_t n)
{
  if (w->failed)
    return false;
  size_t need = n <= SIZE_MAX - w->len - 1 ? w->len + n + 1 : 0;
  if (need < WRITER_FIRST_BYTES && need != 0)
    need = WRITER_FIRST_BYTES;
  if (need == 0 || loom_array_reserve(&w->data, &w->cap, need, 1) != 0) {
    w->failed = true;
    return false;
  }
  return true;
}

static void append(http_json_writer *w, const char *s, size_t n)
{
  if (!reserve(w, n))
    return;
  memcpy(w->data + w->len, s, n);
  w->len += n;
  w->data[w->len] = '\0';
}

static void append_str(http_json_writer *w, const char *s)
{
  append(w, s, strlen(s));
}

/* Before any value: the comma that separates it from the previous one. */
static void value_start(http_json_writer *w)
{
  if (w->after_key) {
    w->after_key = false;
    return;
  }
  if (w->need_comma[w->depth])
    append(w, ",", 1);
  w->need_comma[w->depth] = true;
}

static void open_level(http_json_writer *w, char c)
{
  value_start(w);
  append(w, &c, 1);
  if (w->depth >= HTTP_JSON_MAX_DEPTH) {
    w->failed = true; /* a bug in the caller: too deep */
    return;
  }
  w->depth++;
  w->need_comma[w->depth] = false;
}

static void close_level(http_json_writer *w, char c)
{
  if (w->depth == 0) {
    w->failed = true;
    return;
  }
  w->depth--;
  append(w, &c, 1);
}

void http_json_object_begin(http_json_writer *w) { open_level(w, '{'); }
void http_json_object_end(http_json_writer *w) { close_level(w, '}'); }
void http_json_array_begin(http_json_writer *w) { open_level(w, '['); }
void http_json_array_end(http_json_writer *w) { close_level(w, ']'); }

static void append_escaped(http_json_writer *w, const char *s)
{
  append(w, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    char esc[8];
    switch (*p) {
    case '"':
      append(w, "\\\"", 2);
      break;
    case '\\':
      append(w, "\\\\", 2);
      break;
    case '\n':
      append(w, "\\n", 2);
      break;
    case '\r':
      append(w, "\\r", 2);
      break;
    case '\t':
      append(w, "\\t", 2);
      break;
    default:
      if (*p < 0x20) {
        snprintf(esc, sizeof esc, "\\u%04x", (unsigned)*p);
        append(w, esc, 6);
      } else {
        append(w, (const char *)p, 1);
      }
    }
  }
  append(w, "\"", 1);
}

void http_json_key(http_json_writer *w, const char *key)
{
  value_start(w);
  append_escaped(w, key);
  append(w, ":", 1);
  w->after_key = true;
}

void http_json_string(http_json_writer *w, const char *s)
{
  if (!s) {
    http_json_null(w);
    return;
  }
  value_start(w);
  append_escaped(w, s);
}

void http_json_uint(http_json_writer *w, uint64_t v)
{
  char buf[24];
  value_start(w);
  snprintf(buf, sizeof buf, "%" PRIu64, v);
  append_str(w, buf);
}

void http_json_int(http_json_writer *w, int64_t v)
{
  char buf[24];
  value_start(w);
  snprintf(buf, sizeof buf, "%" PRId64, v);
  append_str(w, buf);
}

void http_json_double(http_json_writer *w, double v)
{
  if (!isfinite(v)) {
    http_json_null(w);
    return;
  }
  char buf[HTTP_JSON_NUMBER_MAX];
  value_start(w);
  append_str(w, http_json_format_double(v, buf));
}

void http_json_bool(http_json_writer *w, bool v)
{
  value_start(w);
  append_str(w, v ? "true" : "false");
}

void http_json_null(http_json_writer *w)
{
  value_start(w);
  append_str(w, "null");
}

void http_json_hex64(http_json_writer *w, uint64_t v)
{
  char buf[24];
  snprintf(buf, sizeof buf, "%016" PRIx64, v);
  http_json_string(w, buf);
}

void http_json_time_ns(http_json_writer *w, int64_t ns)
{
  if (ns <= 0) {
    http_json_null(w);
    return;
  }
  time_t secs = (time_t)(ns / 1000000000);
  char fraction[16];
  snprintf(fraction, sizeof fraction, "%09d", (int)(ns % 1000000000));
  for (int keep = 9; keep > 3 && !strcmp(fraction + keep - 3, "000"); keep -= 3)
    fraction[keep - 3] = '\0';
  struct tm tm;
  char date[32], buf[64];
  gmtime_r(&secs, &tm);
  strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(buf, sizeof buf, "%s.%sZ", date, fraction);
  http_json_string(w, buf);
}

void http_json_member_string(http_json_writer *w, const char *key, const char *s)
{
  http_json_key(w, key);
  http_json_string(w, s);
}

void http_json_member_uint(http_json_writer *w, const char *key, uint64_t v)
{
  http_json_key(w, key);
  http_json_uint(w, v);
}

void http_json_member_double(http_json_writer *w, const char *key, double v)
{
  http_json_key(w, key);
  http_json_double(w, v);
}

void http_json_member_hex64(http_json_writer *w, const char *key, uint64_t v)
{
  http_json_key(w, key);
  http_json_hex64(w, v);
}

void http_json_member_time_ns(http_json_writer *w, const char *key, int64_t ns)
{
  http_json_key(w, key);
  http_json_time_ns(w, ns);
}

const char *http_json_format_double(double v, char *buf)
{
  /* A whole number below 2^53 (no libm: floor/fabs are not linked here). */
  if (v > -9007199254740992.0 && v < 9007199254740992.0 && v == (double)(long long)v) {
    snprintf(buf, HTTP_JSON_NUMBER_MAX, "%.0f", v); /* "10", not "1e+01" */
    return buf;
  }
  for (int digits = 1; digits <= 17; digits++) {
    snprintf(buf, HTTP_JSON_NUMBER_MAX, "%.*g", digits, v);
    if (strtod(buf, NULL) == v || !isfinite(v))
      break;
  }
  return buf;
}

const char *http_json_format_ns_seconds(int64_t ns, char *buf)
{
  const char *sign = ns < 0 ? "-" : "";
  uint64_t u = ns < 0 ? (uint64_t)0 - (uint64_t)ns : (uint64_t)ns;
  int n = snprintf(buf, HTTP_JSON_NUMBER_MAX, "%s%" PRIu64 ".%09u", sign, u / 1000000000u,
                   (unsigned)(u % 1000000000u));
  while (n > 0 && buf[n - 1] == '0')
    buf[--n] = '\0';
  if (n > 0 && buf[n - 1] == '.')
    buf[--n] = '\0';
  return buf;
}
