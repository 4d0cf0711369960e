/*
 * objstore_s3.h: internals of the s3:// backend (objstore_s3.c), shared
 * with its text helpers (objstore_s3_xml.c) and its tests. Not installed.
 * The requests, signing and retries are described in docs/OBJSTORE.md.
 */
#ifndef REPLICATE_OBJSTORE_S3_H
#define REPLICATE_OBJSTORE_S3_H

#include <stddef.h>
#include <stdint.h>

#include "objstore_internal.h"

/* The longest object name read back from a listing (the store's prefix
 * and a key of objstore.h). */
#define S3_KEY_MAX 1100

/* Test hook: ListObjectsV2 pages of at most n keys (1-1000; default
 * 1000), so a test pages through a listing without thousands of objects.
 * No effect on a store that is not s3://. */
void objstore_s3_set_max_keys(objstore *store, unsigned n);

/* The text of the first <name>...</name> in body, unescaped, into out
 * (cap bytes with the NUL): its length, or -1 when absent, malformed or
 * too long. */
int s3_xml_get(const char *body, size_t len, const char *name, char *out,
               size_t cap);

/* Unescapes XML text [v, vend) into out: its length, or -1. */
int s3_xml_text(const char *v, const char *vend, char *out, size_t cap);

/* The Code of an S3 <Error> body into code (letters, digits, '.'): 0, or
 * -1 (and "") when the body has none. */
int s3_error_code(const char *body, size_t len, char *code, size_t cap);

/* Reads one ListObjectsV2 answer: fn(ctx, key, size) for each <Contents>
 * in order (a non-zero return stops and is returned); *truncated and the
 * NextContinuationToken (required when truncated). REPLICATE_ESTORE when
 * the answer is not a well-formed listing. */
typedef int (*s3_list_fn)(void *ctx, const char *key, uint64_t size);
int s3_list_parse(const char *body, size_t len, s3_list_fn fn, void *ctx,
                  int *truncated, char *token, size_t token_cap);

/* A query value in SigV4's canonical form: every byte but A-Z a-z 0-9
 * - _ . ~ as %XX, uppercase. malloc'd; NULL when out of memory. */
char *s3_query_encode(const char *in);

/* The credentials file: exactly two lines, the access key id and the
 * secret (a final newline is optional). 0, REPLICATE_EINVAL (why names
 * the file and what is wrong), ENOMEM. */
int s3_read_credentials(const char *path, char **id, char **secret, char *why,
                        size_t why_len);

/* 1 when url is http://HOST:PORT or https://HOST:PORT (a trailing '/'
 * allowed; HOST a name, an IPv4 address or [IPv6]), else 0. */
int s3_endpoint_ok(const char *url);

#endif
