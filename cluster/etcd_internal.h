/* etcd_internal.h: what the client (etcd.c) and the watch (watch.c) share:
 * the endpoint list, base64, the JSON readers of etcd's answers. Not
 * installed, not exported (cluster.map). */
#ifndef LOOMSHIP_CLUSTER_ETCD_INTERNAL_H
#define LOOMSHIP_CLUSTER_ETCD_INTERNAL_H

#include "etcd.h"

#include <curl/curl.h>
#include <jansson.h>

#define ETCD_MAX_ENDPOINTS 16
#define ETCD_MAX_ANSWER (64u << 20) /* bytes of one answer */
#define ETCD_ERROR_SIZE 512

/* The parsed --etcd list and the timeouts, shared by client and watch. */
struct etcd_endpoints {
  char *url[ETCD_MAX_ENDPOINTS];
  size_t count;
  size_t current; /* the one that answered last */
  long timeout_ms;
  long connect_timeout_ms;
};

/* Parse options into e (CLUSTER_EINVAL, CLUSTER_ENOMEM); free with
 * etcd_endpoints_free. */
int etcd_endpoints_parse(const struct cluster_etcd_options *options,
                         struct etcd_endpoints *e);
void etcd_endpoints_free(struct etcd_endpoints *e);

/* A growing byte buffer for answers (capped at ETCD_MAX_ANSWER). */
struct etcd_buf {
  char *data;
  size_t len;
  size_t cap;
  bool overflow;
};
int etcd_buf_append(struct etcd_buf *b, const void *data, size_t len);
void etcd_buf_free(struct etcd_buf *b);

/* Base64 (RFC 4648, with padding). encode: a malloc'd NUL-terminated
 * string, NULL on ENOMEM. decode: a malloc'd buffer with a NUL after
 * *out_len bytes; CLUSTER_EPROTOCOL on bad input. */
char *etcd_base64_encode(const void *data, size_t len);
int etcd_base64_decode(const char *text, size_t len, char **out,
                       size_t *out_len);

/* The end of the range of every key starting with prefix (len bytes):
 * the prefix with its last byte below 0xff incremented, the rest dropped;
 * "\0" (every key) when there is no such byte. A malloc'd buffer of
 * *end_len bytes, NULL on ENOMEM. */
char *etcd_prefix_end(const char *prefix, size_t len, size_t *end_len);

/* A 64-bit number field of etcd's JSON: a decimal string (or a JSON
 * integer); absent or null is 0. CLUSTER_EPROTOCOL for anything else. */
int etcd_json_int64(json_t *obj, const char *field, int64_t *out);

/* header.revision of an answer object (0 when absent). */
int etcd_json_revision(json_t *answer, int64_t *revision);

/* One mvccpb.KeyValue object into kv (base64 decoded). */
int etcd_json_kv(json_t *obj, struct cluster_kv *kv);

/* A "kvs" array into list (appended). */
int etcd_json_kvs(json_t *array, struct cluster_kv_list *list);

/* Map a curl result to a CLUSTER_E* code: timeouts, connection failures;
 * true in *retry when another endpoint may answer. */
int etcd_curl_error(CURLcode code, bool *retry);

#endif
