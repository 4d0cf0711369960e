/*
 * ship_json.c: the strict reader of a standby's JSON answers, over jansson.
 *
 * jansson checks the whole text (RFC 8259, UTF-8, no trailing bytes, no key
 * twice in one object); this file adds what the contract in ship_internal.h
 * asks beyond that (nesting, the types of the fields the shipper reads) and
 * copies those fields out, so the tree never outlives the call.
 */
#include "ship_internal.h"

#include <jansson.h>
#include <string.h>

#include "hex.h"
#include "replicate.h"

#define MAX_DEPTH 16

/* Whether j nests at most depth_left containers deep. */
static bool depth_ok(const json_t *j, int depth_left)
{
  if (!json_is_object(j) && !json_is_array(j))
    return true;
  if (depth_left == 0)
    return false;
  if (json_is_array(j)) {
    size_t i;
    const json_t *v;
    json_array_foreach(j, i, v)
      if (!depth_ok(v, depth_left - 1))
        return false;
    return true;
  }
  const char *key;
  const json_t *v;
  json_object_foreach((json_t *)j, key, v)
    if (!depth_ok(v, depth_left - 1))
      return false;
  return true;
}

/* A non-negative integer: jansson's integers are int64, so below 2^63. */
static int read_uint(const json_t *j, uint64_t *out)
{
  if (!json_is_integer(j) || json_integer_value(j) < 0)
    return REPLICATE_EMALFORMED;
  *out = (uint64_t)json_integer_value(j);
  return 0;
}

/* A string's text into buf (cap bytes, NUL included), cut to fit: printable
 * ASCII kept, every other code point (control characters, non-ASCII)
 * replaced by one '?'. jansson has checked the UTF-8. */
static int read_text(const json_t *j, char *buf, size_t cap)
{
  if (!json_is_string(j))
    return REPLICATE_EMALFORMED;
  const unsigned char *s = (const unsigned char *)json_string_value(j);
  size_t len = json_string_length(j), n = 0;
  for (size_t i = 0; i < len && n + 1 < cap; i++) {
    if ((s[i] & 0xc0) == 0x80)
      continue; /* a continuation byte: its lead byte gave the '?' */
    buf[n++] = s[i] >= 0x20 && s[i] < 0x7f ? (char)s[i] : '?';
  }
  buf[n] = '\0';
  return 0;
}

/* A point: {"epoch", "seq", "checksum" (16 hex digits), "pages"}. */
static int read_point(const json_t *j, loom_position *point, bool *present)
{
  if (!j)
    return 0;
  if (!json_is_object(j))
    return REPLICATE_EMALFORMED;
  const json_t *sum = json_object_get(j, "checksum");
  if (read_uint(json_object_get(j, "epoch"), &point->epoch) ||
      read_uint(json_object_get(j, "seq"), &point->seq) ||
      read_uint(json_object_get(j, "pages"), &point->pages) || !json_is_string(sum) ||
      json_string_length(sum) != 16)
    return REPLICATE_EMALFORMED;
  const char *hex = json_string_value(sum);
  uint64_t v = 0;
  for (size_t i = 0; i < 16; i++) {
    int h = loom_hex_digit((unsigned char)hex[i]);
    if (h < 0)
      return REPLICATE_EMALFORMED;
    v = v << 4 | (uint64_t)h;
  }
  point->checksum = v;
  *present = true;
  return 0;
}

/* null (no history: all zero) or a string of 32 hex digits. */
static int read_history(const json_t *j, loom_history *out)
{
  memset(out, 0, sizeof *out);
  if (json_is_null(j))
    return 0;
  if (!json_is_string(j) || json_string_length(j) != 2 * LOOM_HISTORY_SIZE ||
      loom_history_parse(json_string_value(j), out) != 0)
    return REPLICATE_EMALFORMED;
  return 0;
}

/* The top-level fields; each may be absent. */
static int read_answer(const json_t *j, ship_answer *out)
{
  const json_t *v;
  int rc = read_point(json_object_get(j, "received"), &out->received,
                      &out->has_received);
  if (!rc)
    rc = read_point(json_object_get(j, "applied"), &out->applied,
                    &out->has_applied);
  if (!rc)
    rc = read_point(json_object_get(j, "computed"), &out->computed,
                    &out->has_computed);
  if (!rc && (v = json_object_get(j, "epoch"))) {
    out->has_epoch = true;
    rc = read_uint(v, &out->epoch);
  }
  if (!rc && (v = json_object_get(j, "error"))) {
    out->has_error = true;
    rc = read_text(v, out->error, sizeof out->error);
  }
  if (!rc && (v = json_object_get(j, "code"))) {
    out->has_code = true;
    rc = read_text(v, out->code, sizeof out->code);
  }
  if (!rc && (v = json_object_get(j, "history"))) {
    out->has_history = true;
    rc = read_history(v, &out->history);
  }
  if (!rc && (v = json_object_get(j, "single_frames"))) {
    if (json_is_boolean(v))
      out->single_frames = json_is_true(v);
    else
      rc = REPLICATE_EMALFORMED;
  }
  return rc;
}

int ship_answer_parse(const char *text, size_t len, ship_answer *out)
{
  memset(out, 0, sizeof *out);
  if (!text || len > SHIP_ANSWER_MAX)
    return REPLICATE_EMALFORMED;
  json_error_t error;
  json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &error);
  int rc = json_is_object(j) && depth_ok(j, MAX_DEPTH) ? read_answer(j, out)
                                                        : REPLICATE_EMALFORMED;
  json_decref(j);
  if (rc)
    memset(out, 0, sizeof *out);
  return rc;
}
