/*
 * objstore.c: the part of objstore.h that every backend shares: the URL's
 * scheme picks the backend, keys are checked before any backend sees them,
 * and the last error is kept in words.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "objstore_internal.h"
#include "replicate.h"

int objstore_fail(objstore *store, int rc, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(store->last_error, sizeof store->last_error, fmt, ap);
  va_end(ap);
  store->stats.errors++;
  return rc;
}

/* Per thread: an open that fails has no store to keep its words in. */
static _Thread_local char open_error[512];

int objstore_open_fail(int rc, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(open_error, sizeof open_error, fmt, ap);
  va_end(ap);
  return rc;
}

const char *objstore_open_error(void) { return open_error; }

int objstore_init_common(objstore *store, const struct objstore_backend *b,
                         const char *url, const objstore_options *options)
{
  store->backend = b;
  store->url = strdup(url);
  if (store->url == NULL) return ENOMEM;
  if (options != NULL) store->options = *options;
  objstore_options *o = &store->options;
  if (o->region == NULL) o->region = "us-east-1";
  if (o->multipart_bytes == 0) o->multipart_bytes = (size_t)64 << 20;
  if (o->retries == 0) o->retries = 5;
  if (o->retry_base_ms == 0) o->retry_base_ms = 100;
  if (o->timeout_ms == 0) o->timeout_ms = 30000;
  if (o->parallel_parts == 0) o->parallel_parts = 4;
  atomic_init(&store->cancelled, false);
  return 0;
}

int objstore_open(const char *url, const objstore_options *options,
                  objstore **out)
{
  *out = NULL;
  open_error[0] = '\0';
  if (url == NULL) return objstore_open_fail(REPLICATE_EINVAL, "no URL");
  if (strncmp(url, "s3://", 5) == 0)
    return objstore_s3_open(url, url + 5, options, out);
  if (strncmp(url, "file://", 7) == 0)
    return objstore_file_open(url, url + 7, options, out);
  return objstore_open_fail(REPLICATE_EINVAL,
                            "%s: not s3://BUCKET/PREFIX nor file:///DIR", url);
}

void objstore_close(objstore *store)
{
  if (store == NULL) return;
  char *url = store->url;
  store->backend->close(store);
  free(url);
}

/* 1-512 bytes of [A-Za-z0-9._/-], not starting with '/', no "..". */
static int key_ok(const char *key)
{
  size_t n = strlen(key);
  if (n == 0 || n > 512 || key[0] == '/' || strstr(key, "..") != NULL)
    return 0;
  for (size_t i = 0; i < n; i++) {
    char c = key[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
             (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '/' ||
             c == '-';
    if (!ok) return 0;
  }
  return 1;
}

static int bad_key(objstore *store, const char *key)
{
  return objstore_fail(store, REPLICATE_EINVAL, "%s: invalid object key '%s'",
                       store->url, key);
}

int objstore_fail_cancelled(objstore *store, const char *op)
{
  return objstore_fail(store, REPLICATE_ESTORE,
                       "%s %s: cancelled (the node is stopping)", op,
                       store->url);
}

void objstore_cancel(objstore *store)
{
  if (store == NULL) return;
  atomic_store(&store->cancelled, true);
  if (store->backend->cancel != NULL) store->backend->cancel(store);
}

/* The crash tests' seam (objstore_options.on_request). Every call checks
 * objstore_cancel() here first: nothing is sent once it was. */
static int announce(objstore *store, const char *op, const char *key)
{
  if (atomic_load(&store->cancelled))
    return objstore_fail_cancelled(store, op);
  if (store->options.on_request != NULL)
    store->options.on_request(store->options.request_ctx, op, key);
  return 0;
}

int objstore_put(objstore *store, const char *key, const void *data,
                 size_t len, unsigned flags)
{
  if (!key_ok(key)) return bad_key(store, key);
  int rc = announce(store, "put", key);
  if (rc != 0) return rc;
  return store->backend->put(store, key, data, len, flags);
}

int objstore_get(objstore *store, const char *key, size_t max_len,
                 void **data, size_t *len)
{
  *data = NULL;
  *len = 0;
  if (!key_ok(key)) return bad_key(store, key);
  int rc = announce(store, "get", key);
  if (rc != 0) return rc;
  return store->backend->get(store, key, max_len, data, len);
}

int objstore_get_range(objstore *store, const char *key, uint64_t offset,
                       size_t len, void **data, size_t *got)
{
  *data = NULL;
  *got = 0;
  if (!key_ok(key)) return bad_key(store, key);
  if (len == 0) return REPLICATE_EINVAL;
  int rc = announce(store, "get", key);
  if (rc != 0) return rc;
  return store->backend->get_range(store, key, offset, len, data, got);
}

int objstore_list(objstore *store, const char *prefix, objstore_each_fn each,
                  void *ctx)
{
  if (prefix[0] != '\0' && !key_ok(prefix)) return bad_key(store, prefix);
  int rc = announce(store, "list", prefix);
  if (rc != 0) return rc;
  return store->backend->list(store, prefix, each, ctx);
}

int objstore_delete(objstore *store, const char *key)
{
  if (!key_ok(key)) return bad_key(store, key);
  int rc = announce(store, "delete", key);
  if (rc != 0) return rc;
  return store->backend->del(store, key);
}

const char *objstore_last_error(const objstore *store)
{
  return store->last_error;
}

void objstore_get_stats(const objstore *store, objstore_stats *out)
{
  *out = store->stats;
}

const char *objstore_url(const objstore *store) { return store->url; }
