/*
 * ship_json.c: a small, strict reader for the standby's JSON answers.
 *
 * It walks the whole text with a recursive-descent parser of RFC 8259
 * (objects, arrays, strings with their escapes and UTF-8, numbers,
 * literals), so anything that is not exactly one well-formed JSON object is
 * refused, and extracts only the fields the shipper needs (ship_internal.h).
 * Nothing is allocated; nesting is bounded.
 */
#include "ship_internal.h"

#include <string.h>

#include "replicate.h"

#define MAX_DEPTH 16
#define KEY_MAX 32

typedef struct reader {
  const unsigned char *p;
  const unsigned char *end;
  int depth;
} reader;

/* A string's decoded text, as far as it fits (ASCII; other code points are
 * replaced by '?'), and whether it fitted. */
typedef struct text {
  char *buf;
  size_t cap;   /* bytes of buf, the NUL included */
  size_t len;
  bool truncated;
} text;

static void skip_space(reader *r)
{
  while (r->p < r->end &&
         (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
    r->p++;
}

static int hex_value(unsigned char c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

static void text_put(text *t, char c)
{
  if (!t)
    return;
  if (t->len + 1 < t->cap) {
    t->buf[t->len++] = c;
    t->buf[t->len] = '\0';
  } else {
    t->truncated = true;
  }
}

/* The length of the well-formed UTF-8 sequence at p (lead byte >= 0x80),
 * or 0. */
static size_t utf8_length(const unsigned char *p, const unsigned char *end)
{
  unsigned char c = p[0];
  size_t n;
  unsigned char lo = 0x80, hi = 0xbf;
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    if (c == 0xe0)
      lo = 0xa0;
    else if (c == 0xed)
      hi = 0x9f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    if (c == 0xf0)
      lo = 0x90;
    else if (c == 0xf4)
      hi = 0x8f;
  } else {
    return 0;
  }
  if ((size_t)(end - p) < n)
    return 0;
  if (p[1] < lo || p[1] > hi)
    return 0;
  for (size_t i = 2; i < n; i++)
    if (p[i] < 0x80 || p[i] > 0xbf)
      return 0;
  return n;
}

/* A string, the opening quote at r->p; its text into t (may be NULL). */
static int parse_string(reader *r, text *t)
{
  if (r->p >= r->end || *r->p != '"')
    return REPLICATE_EMALFORMED;
  r->p++;
  while (r->p < r->end) {
    unsigned char c = *r->p;
    if (c == '"') {
      r->p++;
      return 0;
    }
    if (c < 0x20)
      return REPLICATE_EMALFORMED;
    if (c == '\\') {
      if (r->end - r->p < 2)
        return REPLICATE_EMALFORMED;
      unsigned char e = r->p[1];
      r->p += 2;
      switch (e) {
      case '"': text_put(t, '"'); break;
      case '\\': text_put(t, '\\'); break;
      case '/': text_put(t, '/'); break;
      case 'b': case 'f': case 'n': case 'r': case 't': text_put(t, '?'); break;
      case 'u': {
        if (r->end - r->p < 4)
          return REPLICATE_EMALFORMED;
        unsigned v = 0;
        for (int i = 0; i < 4; i++) {
          int h = hex_value(r->p[i]);
          if (h < 0)
            return REPLICATE_EMALFORMED;
          v = v << 4 | (unsigned)h;
        }
        r->p += 4;
        text_put(t, v >= 0x20 && v < 0x7f ? (char)v : '?');
        break;
      }
      default:
        return REPLICATE_EMALFORMED;
      }
      continue;
    }
    if (c < 0x80) {
      text_put(t, (char)c);
      r->p++;
      continue;
    }
    size_t n = utf8_length(r->p, r->end);
    if (n == 0)
      return REPLICATE_EMALFORMED;
    text_put(t, '?');
    r->p += n;
  }
  return REPLICATE_EMALFORMED;
}

/* A number; *as_uint receives its value and *is_uint whether it is a
 * non-negative integer that fits 64 bits. */
static int parse_number(reader *r, uint64_t *as_uint, bool *is_uint)
{
  bool integer = true, fits = true;
  uint64_t v = 0;
  if (r->p < r->end && *r->p == '-') {
    integer = false;
    r->p++;
  }
  if (r->p >= r->end)
    return REPLICATE_EMALFORMED;
  if (*r->p == '0') {
    r->p++;
  } else if (*r->p >= '1' && *r->p <= '9') {
    while (r->p < r->end && *r->p >= '0' && *r->p <= '9') {
      unsigned d = (unsigned)(*r->p - '0');
      if (v > (UINT64_MAX - d) / 10)
        fits = false;
      else
        v = v * 10 + d;
      r->p++;
    }
  } else {
    return REPLICATE_EMALFORMED;
  }
  if (r->p < r->end && *r->p == '.') {
    integer = false;
    r->p++;
    if (r->p >= r->end || *r->p < '0' || *r->p > '9')
      return REPLICATE_EMALFORMED;
    while (r->p < r->end && *r->p >= '0' && *r->p <= '9')
      r->p++;
  }
  if (r->p < r->end && (*r->p == 'e' || *r->p == 'E')) {
    integer = false;
    r->p++;
    if (r->p < r->end && (*r->p == '+' || *r->p == '-'))
      r->p++;
    if (r->p >= r->end || *r->p < '0' || *r->p > '9')
      return REPLICATE_EMALFORMED;
    while (r->p < r->end && *r->p >= '0' && *r->p <= '9')
      r->p++;
  }
  *as_uint = v;
  *is_uint = integer && fits;
  return 0;
}

static int parse_literal(reader *r, const char *word)
{
  size_t n = strlen(word);
  if ((size_t)(r->end - r->p) < n || memcmp(r->p, word, n) != 0)
    return REPLICATE_EMALFORMED;
  r->p += n;
  return 0;
}

static int skip_value(reader *r);

/* Walk an object, the '{' at r->p, calling member(ctx, key, r) for each
 * member with r at its value; member must consume the value. */
typedef int (*member_fn)(void *ctx, const text *key, reader *r);

static int walk_object(reader *r, member_fn member, void *ctx)
{
  if (r->p >= r->end || *r->p != '{')
    return REPLICATE_EMALFORMED;
  if (++r->depth > MAX_DEPTH)
    return REPLICATE_EMALFORMED;
  r->p++;
  skip_space(r);
  if (r->p < r->end && *r->p == '}') {
    r->p++;
    r->depth--;
    return 0;
  }
  for (;;) {
    char key_buf[KEY_MAX + 1];
    text key = {key_buf, sizeof key_buf, 0, false};
    key_buf[0] = '\0';
    skip_space(r);
    int rc = parse_string(r, &key);
    if (rc)
      return rc;
    skip_space(r);
    if (r->p >= r->end || *r->p != ':')
      return REPLICATE_EMALFORMED;
    r->p++;
    skip_space(r);
    rc = member(ctx, &key, r);
    if (rc)
      return rc;
    skip_space(r);
    if (r->p >= r->end)
      return REPLICATE_EMALFORMED;
    if (*r->p == ',') {
      r->p++;
      continue;
    }
    if (*r->p == '}') {
      r->p++;
      r->depth--;
      return 0;
    }
    return REPLICATE_EMALFORMED;
  }
}

static int skip_member(void *ctx, const text *key, reader *r)
{
  (void)ctx;
  (void)key;
  return skip_value(r);
}

static int skip_array(reader *r)
{
  if (++r->depth > MAX_DEPTH)
    return REPLICATE_EMALFORMED;
  r->p++;
  skip_space(r);
  if (r->p < r->end && *r->p == ']') {
    r->p++;
    r->depth--;
    return 0;
  }
  for (;;) {
    skip_space(r);
    int rc = skip_value(r);
    if (rc)
      return rc;
    skip_space(r);
    if (r->p >= r->end)
      return REPLICATE_EMALFORMED;
    if (*r->p == ',') {
      r->p++;
      continue;
    }
    if (*r->p == ']') {
      r->p++;
      r->depth--;
      return 0;
    }
    return REPLICATE_EMALFORMED;
  }
}

static int skip_value(reader *r)
{
  if (r->p >= r->end)
    return REPLICATE_EMALFORMED;
  switch (*r->p) {
  case '{':
    return walk_object(r, skip_member, NULL);
  case '[':
    return skip_array(r);
  case '"':
    return parse_string(r, NULL);
  case 't':
    return parse_literal(r, "true");
  case 'f':
    return parse_literal(r, "false");
  case 'n':
    return parse_literal(r, "null");
  default: {
    uint64_t v;
    bool is_uint;
    return parse_number(r, &v, &is_uint);
  }
  }
}

static bool key_is(const text *key, const char *name)
{
  return !key->truncated && strcmp(key->buf, name) == 0;
}

static int read_uint(reader *r, uint64_t *out)
{
  if (r->p >= r->end || !((*r->p >= '0' && *r->p <= '9') || *r->p == '-'))
    return REPLICATE_EMALFORMED;
  bool is_uint;
  int rc = parse_number(r, out, &is_uint);
  if (rc)
    return rc;
  return is_uint ? 0 : REPLICATE_EMALFORMED;
}

/* ---------------------------------------------------------------------- */
/* A point: {"epoch", "seq", "checksum", "pages"} */

enum { POINT_EPOCH = 1, POINT_SEQ = 2, POINT_CHECKSUM = 4, POINT_PAGES = 8,
       POINT_ALL = 15 };

typedef struct point_ctx {
  ship_point *point;
  unsigned seen;
} point_ctx;

static int point_member(void *ctx, const text *key, reader *r)
{
  point_ctx *pc = ctx;
  unsigned bit;
  uint64_t *field;
  if (key_is(key, "epoch")) {
    bit = POINT_EPOCH;
    field = &pc->point->epoch;
  } else if (key_is(key, "seq")) {
    bit = POINT_SEQ;
    field = &pc->point->seq;
  } else if (key_is(key, "pages")) {
    bit = POINT_PAGES;
    field = &pc->point->pages;
  } else if (key_is(key, "checksum")) {
    if (pc->seen & POINT_CHECKSUM)
      return REPLICATE_EMALFORMED;
    pc->seen |= POINT_CHECKSUM;
    char buf[20];
    text t = {buf, sizeof buf, 0, false};
    buf[0] = '\0';
    if (r->p >= r->end || *r->p != '"')
      return REPLICATE_EMALFORMED;
    int rc = parse_string(r, &t);
    if (rc)
      return rc;
    if (t.truncated || t.len != 16)
      return REPLICATE_EMALFORMED;
    uint64_t v = 0;
    for (size_t i = 0; i < 16; i++) {
      int h = hex_value((unsigned char)buf[i]);
      if (h < 0)
        return REPLICATE_EMALFORMED;
      v = v << 4 | (uint64_t)h;
    }
    pc->point->checksum = v;
    return 0;
  } else {
    return skip_value(r);
  }
  if (pc->seen & bit)
    return REPLICATE_EMALFORMED;
  pc->seen |= bit;
  return read_uint(r, field);
}

static int read_point(reader *r, ship_point *point)
{
  if (point->present)
    return REPLICATE_EMALFORMED; /* the key appeared twice */
  point_ctx pc = {point, 0};
  int rc = walk_object(r, point_member, &pc);
  if (rc)
    return rc;
  if (pc.seen != POINT_ALL)
    return REPLICATE_EMALFORMED;
  point->present = true;
  return 0;
}

/* ---------------------------------------------------------------------- */
/* The answer */

/* null (no history) or a string of 32 hex digits. */
static int read_history(reader *r, loom_history *out)
{
  memset(out, 0, sizeof *out);
  skip_space(r);
  if (r->end - r->p >= 4 && memcmp(r->p, "null", 4) == 0)
    return skip_value(r);
  char buf[2 * LOOM_HISTORY_SIZE + 2];
  text t = {buf, sizeof buf, 0, false};
  int rc = parse_string(r, &t);
  if (rc)
    return rc;
  if (t.truncated || loom_history_parse(buf, out) != 0)
    return REPLICATE_EMALFORMED;
  return 0;
}

static int answer_member(void *ctx, const text *key, reader *r)
{
  ship_answer *a = ctx;
  if (key_is(key, "received"))
    return read_point(r, &a->received);
  if (key_is(key, "applied"))
    return read_point(r, &a->applied);
  if (key_is(key, "epoch")) {
    if (a->has_epoch)
      return REPLICATE_EMALFORMED;
    a->has_epoch = true;
    return read_uint(r, &a->epoch);
  }
  if (key_is(key, "error")) {
    if (a->has_error)
      return REPLICATE_EMALFORMED;
    a->has_error = true;
    text t = {a->error, sizeof a->error, 0, false};
    a->error[0] = '\0';
    return parse_string(r, &t);
  }
  if (key_is(key, "code")) {
    if (a->has_code)
      return REPLICATE_EMALFORMED;
    a->has_code = true;
    text t = {a->code, sizeof a->code, 0, false};
    a->code[0] = '\0';
    return parse_string(r, &t);
  }
  if (key_is(key, "history")) {
    if (a->has_history)
      return REPLICATE_EMALFORMED;
    a->has_history = true;
    return read_history(r, &a->history);
  }
  return skip_value(r);
}

int ship_answer_parse(const char *text_in, size_t len, ship_answer *out)
{
  memset(out, 0, sizeof *out);
  if (!text_in || len > SHIP_ANSWER_MAX)
    return REPLICATE_EMALFORMED;
  reader r = {(const unsigned char *)text_in,
              (const unsigned char *)text_in + len, 0};
  skip_space(&r);
  int rc = walk_object(&r, answer_member, out);
  if (!rc) {
    skip_space(&r);
    if (r.p != r.end)
      rc = REPLICATE_EMALFORMED;
  }
  if (rc)
    memset(out, 0, sizeof *out);
  return rc;
}
