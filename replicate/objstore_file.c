/*
 * objstore_file.c: the file:// backend of objstore.h. Not built yet: being
 * written on its own branch (issue 17); opening one fails cleanly.
 */
#include "objstore_internal.h"
#include "replicate.h"

int objstore_file_open(const char *url, const char *location,
                     const objstore_options *options, objstore **out) {
  (void)url;
  (void)location;
  (void)options;
  *out = 0;
  return REPLICATE_ESTORE;
}
