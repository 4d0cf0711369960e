/*
 * ship_internal.h: internals of the shipper shared by ship.c, ship_json.c
 * and the tests. Not installed; the module's manual is replicate.h.
 */
#ifndef REPLICATE_SHIP_INTERNAL_H
#define REPLICATE_SHIP_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loom.h"
#include "replicate.h"

/* A position as a standby reports it: {"epoch", "seq", "checksum" (16 hex
 * digits), "pages"}; other keys (such as "at") are allowed and ignored. */
typedef struct ship_point {
  bool present;
  uint64_t epoch;
  uint64_t seq;
  uint64_t checksum;
  uint64_t pages;
} ship_point;

#define SHIP_ANSWER_ERROR_MAX 64

/* What the shipper reads from a standby's JSON answer. */
typedef struct ship_answer {
  bool has_error;
  char error[SHIP_ANSWER_ERROR_MAX]; /* top-level "error", truncated,
                                        control characters replaced */
  bool has_code;
  char code[SHIP_ANSWER_ERROR_MAX];  /* top-level "code" (a stable error
                                        name such as "REPLICATE_EFORK") */
  bool has_history;
  loom_history history;              /* top-level "history": 32 hex digits,
                                        or null (none: all zero) */
  bool has_epoch;
  uint64_t epoch;                    /* top-level "epoch" */
  ship_point received;
  ship_point applied;
} ship_answer;

/* The longest answer read; a longer one is a failed request. */
#define SHIP_ANSWER_MAX 65536u

/*
 * ship_answer_parse: read text[0, len) as exactly one JSON object (RFC 8259,
 * read by jansson; nesting at most 16 deep, whitespace around it allowed)
 * and extract the fields above. Returns 0, or REPLICATE_EMALFORMED when the
 * text is not well-formed JSON, is not an object, repeats a key in any of
 * its objects, holds an integer jansson cannot represent (below -2^63 or
 * from 2^63 on, anywhere), gives an extracted field a value of the wrong
 * type (a number that is not a non-negative integer, so below 2^63; a
 * checksum that is not 16 hex digits; a history that is neither null nor
 * 32 hex digits; an error or code that is not a string), or holds a
 * "received" or "applied" object missing one of its four fields.
 */
int ship_answer_parse(const char *text, size_t len, ship_answer *out);

#endif /* REPLICATE_SHIP_INTERNAL_H */
