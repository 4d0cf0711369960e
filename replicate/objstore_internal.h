/*
 * objstore_internal.h: what a backend of objstore.h provides.
 *
 * objstore.c parses the URL, checks keys, counts requests and keeps the
 * last error; a backend only moves bytes. Each backend allocates its own
 * struct whose first member is a struct objstore.
 */
#ifndef REPLICATE_OBJSTORE_INTERNAL_H
#define REPLICATE_OBJSTORE_INTERNAL_H

#include <stdatomic.h>

#include "objstore.h"

struct objstore_backend {
  int (*put)(objstore *s, const char *key, const void *data, size_t len,
             unsigned flags);
  int (*get)(objstore *s, const char *key, size_t max_len, void **data,
             size_t *len);
  int (*get_range)(objstore *s, const char *key, uint64_t offset, size_t len,
                   void **data, size_t *got);
  int (*list)(objstore *s, const char *prefix, objstore_each_fn each,
              void *ctx);
  int (*del)(objstore *s, const char *key);
  void (*close)(objstore *s);
  /* [NULL] From another thread, after store->cancelled is set: wake a
   * request in progress so that it sees it. */
  void (*cancel)(objstore *s);
};

struct objstore {
  const struct objstore_backend *backend;
  char *url;
  objstore_options options; /* defaults filled in; strings not owned */
  objstore_stats stats;     /* backends count requests here */
  char last_error[512];
  atomic_bool cancelled;    /* objstore_cancel(): every request fails */
};

/* objstore_cancel() was called: fails with REPLICATE_ESTORE, naming op. */
int objstore_fail_cancelled(objstore *store, const char *op);

/* Sets store->last_error from a printf format; returns rc. */
int objstore_fail(objstore *store, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Sets the text objstore_open_error() returns; returns rc. */
int objstore_open_fail(int rc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The backends. location is what follows the scheme: "BUCKET/PREFIX" for
 * s3://, "/DIR" for file://. Each fills in the common part through
 * objstore_init_common(). */
int objstore_file_open(const char *url, const char *location,
                       const objstore_options *options, objstore **out);
int objstore_s3_open(const char *url, const char *location,
                     const objstore_options *options, objstore **out);
int objstore_init_common(objstore *store, const struct objstore_backend *b,
                         const char *url, const objstore_options *options);

#endif
