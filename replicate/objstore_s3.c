/*
 * objstore_s3.c: the s3:// backend of objstore.h. Not built yet: being
 * written on its own branch (issue 17); opening one fails cleanly.
 */
#include "objstore_internal.h"
#include "replicate.h"

int objstore_s3_open(const char *url, const char *location,
                     const objstore_options *options, objstore **out) {
  (void)url;
  (void)location;
  (void)options;
  *out = 0;
  return REPLICATE_ESTORE;
}
