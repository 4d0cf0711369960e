/* json_get.h: typed reads by path from a jansson tree, for the documents
 * the loomship command reads from servers (status, errors, positions).
 * Sequence numbers, epochs and counts are read as integers, never through
 * a double. */
#ifndef LOOMSHIP_JSON_GET_H
#define LOOMSHIP_JSON_GET_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* len bytes as one JSON object or array; NULL when malformed. The caller
 * owns the tree: json_decref it. */
json_t *cli_json_parse(const char *text, size_t len);
/* The member at path ("a.b.c" descends objects), or NULL (j may be NULL). */
const json_t *cli_json_get(const json_t *j, const char *path);
/* A non-negative integer at path: true and *out, or false (*out untouched)
 * when absent, of another type, or negative. */
bool cli_json_uint(const json_t *j, const char *path, uint64_t *out);
/* The same, dflt when it is not there. */
uint64_t cli_json_uint_or(const json_t *j, const char *path, uint64_t dflt);
/* Any number (an integer too) as a double, for quantities such as seconds. */
double cli_json_real(const json_t *j, const char *path, double dflt);
/* A string (valid while the tree lives), or dflt. */
const char *cli_json_string(const json_t *j, const char *path, const char *dflt);
/* true or false, or dflt. */
bool cli_json_bool(const json_t *j, const char *path, bool dflt);

#endif
