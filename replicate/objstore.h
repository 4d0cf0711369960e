/*
 * objstore.h: whole objects under keys, in an S3-compatible bucket or a
 * mounted directory: what the archive (DESIGN section 7) is written to.
 *
 * INTRODUCTION
 *
 * An objstore is opened from the archive's URL:
 *
 *     s3://BUCKET/PREFIX   path-style requests to --archive-endpoint
 *                          (http://HOST:PORT), signed with SigV4 through
 *                          libcurl (CURLOPT_AWS_SIGV4), the region from
 *                          --archive-region (default us-east-1), the access
 *                          key id and the secret from --archive-credentials
 *                          (two lines)
 *     file:///DIR          a mounted file system: one file per key under
 *                          DIR, written to a temporary name, fsynced and
 *                          renamed, then the directory fsynced
 *
 * Keys are relative to the PREFIX (or DIR): "bases/00000001/...". A key is
 * 1-512 bytes of [A-Za-z0-9._/-], never starting with '/' and with no "..".
 *
 * Every object is put whole and read whole, or in ranges
 * (objstore_get_range): the archive's objects are self-checking
 * (docs/ARCHIVE.md), so the store is only asked to keep bytes. Large puts (over objstore_options.multipart_bytes) go as S3
 * multipart uploads. Transient failures (unreachable, 5xx, 503 SlowDown
 * with Retry-After) are retried with backoff up to the options' limits
 * before an error is returned; 403 and 404 are never retried.
 *
 * ERRORS
 *
 * 0, a positive errno value (ENOMEM, or a file:// system call's), or:
 *
 *     REPLICATE_ESTORE          unreachable, 5xx after the retries, or an
 *                               answer that could not be read
 *     REPLICATE_ESTORE_AUTH     403: wrong credentials or signature
 *     REPLICATE_ESTORE_MISSING  404: no such key (get), or no such bucket
 *     REPLICATE_ESTORE_EXISTS   OBJSTORE_PUT_IF_ABSENT and the key exists
 *     REPLICATE_EINVAL          a malformed URL, key or credentials file
 *
 * objstore_last_error() describes the last failure in words a person can
 * act on (it names the URL, the key, the HTTP status and the store's own
 * error code, e.g. "PUT s3://b/p/x: 403 SignatureDoesNotMatch").
 *
 * THREADS
 *
 * An objstore is used by one thread at a time (the archiver's). Open one
 * per thread that needs one. objstore_cancel() is the one call another
 * thread may make (how a stopping node gives up on a store that hangs).
 */
#ifndef REPLICATE_OBJSTORE_H
#define REPLICATE_OBJSTORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct objstore objstore;

typedef struct objstore_options {
  const char *endpoint;         /* s3:// only: "http://127.0.0.1:8080" */
  const char *region;           /* s3:// only: NULL is "us-east-1" */
  const char *credentials_file; /* s3:// only: key id, secret: two lines */
  size_t multipart_bytes;       /* 0: 64 MiB; parts are this size too */
  unsigned parallel_parts;      /* s3:// multipart: parts in flight at
                                   once, each its own request [0: 4] */
  unsigned retries;             /* 0: 5 tries in all */
  unsigned retry_base_ms;       /* 0: 100 ms, doubled each try, capped at
                                   5 s; a Retry-After answer overrides */
  long timeout_ms;              /* 0: 30 s per request */
  /* A seam for crash tests (cli/faultio.h): called before each put, get,
   * list and delete goes out (op "put", "get", "list" or "delete"; key the
   * object's, or the prefix listed), on the thread that sends it (a
   * restore's read-ahead thread too: the hook must be thread-safe, and
   * the order of a restore's requests between its two threads varies).
   * [NULL] */
  void (*on_request)(void *ctx, const char *op, const char *key);
  void *request_ctx;
} objstore_options;

/* What a store was asked, for status and metrics. Counts requests as
 * sent (a retried request counts each time). */
typedef struct objstore_stats {
  uint64_t puts, gets, lists, deletes; /* requests by kind */
  uint64_t bytes_up, bytes_down;       /* object bytes */
  uint64_t errors;                     /* requests that failed */
  uint64_t retries;                    /* requests sent again */
} objstore_stats;

/* Opens the store named by url ("s3://..." or "file:///..."). Sends no
 * request (a missing bucket is found at the first one). */
int objstore_open(const char *url, const objstore_options *options,
                  objstore **out);

/* Why the last objstore_open() in this thread failed, in words ("" when
 * it did not): the URL, the endpoint or the credentials file, and what is
 * wrong with it. Until the next objstore_open() in this thread. */
const char *objstore_open_error(void);
void objstore_close(objstore *store);

#define OBJSTORE_PUT_IF_ABSENT 1u /* fail REPLICATE_ESTORE_EXISTS if the
                                     key exists (S3 If-None-Match: *) */
/* On an S3 store that does not support conditional PUTs (Swift 2.30's
 * s3api answers 501), and for multipart puts, OBJSTORE_PUT_IF_ABSENT is a
 * HEAD, then the PUT: not atomic (docs/OBJSTORE.md, "Conditional puts"). */

int objstore_put(objstore *store, const char *key, const void *data,
                 size_t len, unsigned flags);

/* Reads a whole object into *data (malloc'd, the caller frees), refusing
 * one larger than max_len (REPLICATE_ESTORE; 0: no limit). */
int objstore_get(objstore *store, const char *key, size_t max_len,
                 void **data, size_t *len);

/* Reads bytes [offset, offset + len) of an object into *data (malloc'd,
 * the caller frees): *got is len, or less only where the object ends
 * (S3: a GET with a Range header, retried like any GET). For reading a
 * large object in pieces (a restore streams its base this way). An
 * offset at or past the end: REPLICATE_ESTORE (S3's 416). */
int objstore_get_range(objstore *store, const char *key, uint64_t offset,
                       size_t len, void **data, size_t *got);

/* Calls each(ctx, key, size) for every key under prefix, in ascending
 * byte order of keys; a non-zero return from each stops the listing and
 * is returned. Pages through S3's ListObjectsV2 continuation tokens. */
typedef int (*objstore_each_fn)(void *ctx, const char *key, uint64_t size);
int objstore_list(objstore *store, const char *prefix, objstore_each_fn each,
                  void *ctx);

/* Deletes key; a missing key is not an error. */
int objstore_delete(objstore *store, const char *key);

/* From any thread: the request in progress (a transfer, or the wait
 * before a retry) and every later call fail at once with REPLICATE_ESTORE
 * ("cancelled"), instead of waiting up to timeout_ms for each of its
 * retries. For a node that stops after its drain timed out; irreversible:
 * close the store after. A multipart put cut this way leaves its parts in
 * the store (its abort is cancelled too). */
void objstore_cancel(objstore *store);

const char *objstore_last_error(const objstore *store);
void objstore_get_stats(const objstore *store, objstore_stats *out);

/* The URL the store was opened from (for status: "archive.url"). */
const char *objstore_url(const objstore *store);

#ifdef __cplusplus
}
#endif

#endif
