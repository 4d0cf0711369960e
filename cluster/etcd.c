/* etcd.c: the etcd v3 client over the JSON gateway (etcd.h).
 *
 * One request: the body as compact JSON, POSTed to the current endpoint;
 * on a connection error, a timeout or a 5xx the next endpoint is tried,
 * each at most once (etcd_request). The answer (etcd_answer): HTTP 200
 * with a JSON object, possibly wrapped as {"result": {...}} (the streaming
 * form of keep-alive), whose header.revision is the cluster's revision
 * then; 4xx/5xx carry {"error", "message", "code"}. The calls below only
 * build bodies and read answers. */
#include "etcd_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cluster_etcd {
  struct etcd_endpoints ep;
  CURL *curl;
  struct curl_slist *headers;
  struct etcd_buf answer;
  int64_t revision;
  char error[ETCD_ERROR_SIZE];
};

static size_t etcd_write(char *data, size_t size, size_t n, void *arg)
{
  return etcd_buf_append(arg, data, size * n) ? 0 : size * n;
}

int cluster_etcd_open(const struct cluster_etcd_options *options,
                      struct cluster_etcd **out)
{
  if (!out)
    return CLUSTER_EINVAL;
  *out = NULL;
  struct cluster_etcd *c = calloc(1, sizeof *c);
  if (!c)
    return CLUSTER_ENOMEM;
  int rc = etcd_endpoints_parse(options, &c->ep);
  if (rc) {
    free(c);
    return rc;
  }
  c->curl = curl_easy_init();
  c->headers = curl_slist_append(NULL, "Content-Type: application/json");
  if (!c->curl || !c->headers) {
    cluster_etcd_close(c);
    return CLUSTER_ENOMEM;
  }
  *out = c;
  return 0;
}

void cluster_etcd_close(struct cluster_etcd *c)
{
  if (!c)
    return;
  if (c->curl)
    curl_easy_cleanup(c->curl);
  curl_slist_free_all(c->headers);
  etcd_buf_free(&c->answer);
  etcd_endpoints_free(&c->ep);
  free(c);
}

int64_t cluster_etcd_revision(const struct cluster_etcd *c)
{
  return c ? c->revision : 0;
}

const char *cluster_etcd_endpoint(const struct cluster_etcd *c)
{
  return c ? c->ep.url[c->ep.current] : "";
}

const char *cluster_etcd_error(const struct cluster_etcd *c)
{
  return c ? c->error : "";
}

/* ---- one request ----------------------------------------------------- */

/* Map etcd's error text: a lease that is gone has its own code. */
static int etcd_error_code(long http, const char *message)
{
  if (message && strstr(message, "lease not found"))
    return CLUSTER_ELEASE_GONE;
  return http >= 500 ? CLUSTER_EHTTP : CLUSTER_EREFUSED;
}

static const char *etcd_error_text(json_t *root)
{
  json_t *e = json_object_get(root, "error");
  if (json_is_object(e)) /* the streaming form */
    e = json_object_get(e, "message");
  if (!json_is_string(e))
    e = json_object_get(root, "message");
  return json_is_string(e) ? json_string_value(e) : NULL;
}

/* Read the answer of endpoint idx into *answer (the "result" unwrapped). */
static int etcd_answer(struct cluster_etcd *c, size_t idx, long http,
                       json_t **answer)
{
  const char *url = c->ep.url[idx];
  json_t *root = c->answer.data
      ? json_loadb(c->answer.data, c->answer.len, 0, NULL) : NULL;
  const char *text = root ? etcd_error_text(root) : NULL;
  int rc = 0;
  if (http != 200 || (text && *text)) {
    rc = http == 200 || http >= 400 ? etcd_error_code(http, text)
                                    : CLUSTER_EPROTOCOL;
    snprintf(c->error, sizeof c->error, "%s: HTTP %ld: %s", url, http,
             text ? text : "(no etcd error text)");
  } else if (!json_is_object(root)) {
    rc = CLUSTER_EPROTOCOL;
    snprintf(c->error, sizeof c->error, "%s: the answer is not JSON", url);
  } else {
    json_t *result = json_object_get(root, "result");
    json_t *body = json_is_object(result) ? result : root;
    int64_t revision;
    rc = etcd_json_revision(body, &revision);
    if (rc)
      snprintf(c->error, sizeof c->error, "%s: bad header", url);
    else if (revision > c->revision)
      c->revision = revision;
    if (!rc) {
      *answer = json_incref(body);
      c->error[0] = '\0';
    }
  }
  json_decref(root);
  return rc;
}

static CURLcode etcd_attempt(struct cluster_etcd *c, size_t idx,
                             const char *path, const char *body, long *http)
{
  char url[1024];
  snprintf(url, sizeof url, "%s%s", c->ep.url[idx], path);
  c->answer.len = 0;
  c->answer.overflow = false;
  CURL *h = c->curl;
  curl_easy_reset(h);
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, c->ep.timeout_ms);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, c->ep.connect_timeout_ms);
  curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, c->headers);
  curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, etcd_write);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &c->answer);
  CURLcode res = curl_easy_perform(h);
  *http = 0;
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, http);
  return res;
}

/* POST body (taken) to path; *answer is the answer object (decref it). */
static int etcd_request(struct cluster_etcd *c, const char *path,
                        json_t *body, json_t **answer)
{
  *answer = NULL;
  char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
  json_decref(body);
  if (!text) {
    snprintf(c->error, sizeof c->error, "out of memory");
    return CLUSTER_ENOMEM;
  }
  int rc = CLUSTER_EUNREACHABLE;
  for (size_t i = 0; i < c->ep.count; i++) {
    size_t idx = (c->ep.current + i) % c->ep.count;
    long http = 0;
    bool retry = false;
    CURLcode res = etcd_attempt(c, idx, path, text, &http);
    if (res == CURLE_OK) {
      rc = etcd_answer(c, idx, http, answer);
      retry = rc == CLUSTER_EHTTP;
      if (!retry)
        c->ep.current = idx;
    } else {
      rc = c->answer.overflow ? CLUSTER_EPROTOCOL
                              : etcd_curl_error(res, &retry);
      snprintf(c->error, sizeof c->error, "%s: %s", c->ep.url[idx],
               c->answer.overflow ? "answer too large"
                                  : curl_easy_strerror(res));
    }
    if (!retry)
      break;
  }
  free(text);
  return rc;
}

/* ---- bodies ---------------------------------------------------------- */

/* Strings are made with json_stringn, never json_string: http/json.c
 * exports a json_string of its own, and a program linking both (the
 * loomship command) would call that one. */
static json_t *json_b64(const void *data, size_t len)
{
  char *s = etcd_base64_encode(data, len);
  json_t *v = s ? json_stringn(s, strlen(s)) : NULL;
  free(s);
  return v;
}

static json_t *json_i64(int64_t n)
{
  char buf[24];
  snprintf(buf, sizeof buf, "%lld", (long long)n);
  return json_stringn(buf, strlen(buf));
}

/* Set a field to a new value; a NULL value (ENOMEM) poisons obj. */
static void json_put(json_t **obj, const char *field, json_t *value)
{
  if (*obj && (!value || json_object_set_new(*obj, field, value))) {
    json_decref(*obj);
    *obj = NULL;
  }
  if (!*obj)
    json_decref(value);
}

static json_t *json_prefix_end(const char *prefix, size_t len)
{
  size_t n;
  char *end = etcd_prefix_end(prefix, len, &n);
  json_t *v = end ? json_b64(end, n) : NULL;
  free(end);
  return v;
}

static json_t *body_key(const char *key, bool prefix)
{
  json_t *b = json_object();
  json_put(&b, "key", json_b64(key, strlen(key)));
  if (prefix)
    json_put(&b, "range_end", json_prefix_end(key, strlen(key)));
  return b;
}

/* ---- leases ---------------------------------------------------------- */

int cluster_etcd_lease_grant(struct cluster_etcd *c, int64_t ttl_seconds,
                             int64_t *id, int64_t *granted_ttl)
{
  if (!c || !id || !granted_ttl || ttl_seconds < 1)
    return CLUSTER_EINVAL;
  json_t *b = json_object(), *a;
  json_put(&b, "TTL", json_integer(ttl_seconds));
  int rc = etcd_request(c, "/v3/lease/grant", b, &a);
  if (rc)
    return rc;
  rc = etcd_json_int64(a, "ID", id);
  rc = rc ? rc : etcd_json_int64(a, "TTL", granted_ttl);
  if (!rc && (*id == 0 || *granted_ttl <= 0))
    rc = CLUSTER_EPROTOCOL;
  if (rc)
    snprintf(c->error, sizeof c->error, "%s: a lease grant without id/ttl",
             cluster_etcd_endpoint(c));
  json_decref(a);
  return rc;
}

int cluster_etcd_lease_keepalive(struct cluster_etcd *c, int64_t id,
                                 int64_t *ttl)
{
  if (!c || !ttl || id == 0)
    return CLUSTER_EINVAL;
  json_t *b = json_object(), *a;
  json_put(&b, "ID", json_i64(id));
  int rc = etcd_request(c, "/v3/lease/keepalive", b, &a);
  if (rc)
    return rc;
  rc = etcd_json_int64(a, "TTL", ttl);
  if (!rc && *ttl <= 0) {
    rc = CLUSTER_ELEASE_GONE;
    snprintf(c->error, sizeof c->error, "%s: lease %lld is gone",
             cluster_etcd_endpoint(c), (long long)id);
  }
  json_decref(a);
  return rc;
}

int cluster_etcd_lease_revoke(struct cluster_etcd *c, int64_t id)
{
  if (!c || id == 0)
    return CLUSTER_EINVAL;
  json_t *b = json_object(), *a;
  json_put(&b, "ID", json_i64(id));
  int rc = etcd_request(c, "/v3/lease/revoke", b, &a);
  json_decref(a);
  return rc;
}

/* ---- keys ------------------------------------------------------------ */

void cluster_kv_free(struct cluster_kv *kv)
{
  if (!kv)
    return;
  free(kv->key);
  free(kv->value);
  memset(kv, 0, sizeof *kv);
}

void cluster_kv_list_free(struct cluster_kv_list *list)
{
  if (!list)
    return;
  for (size_t i = 0; i < list->count; i++)
    cluster_kv_free(&list->items[i]);
  free(list->items);
  memset(list, 0, sizeof *list);
}

static json_t *body_put(const char *key, const void *value, size_t len,
                        int64_t lease)
{
  json_t *b = body_key(key, false);
  json_put(&b, "value", json_b64(value ? value : "", len));
  if (lease)
    json_put(&b, "lease", json_i64(lease));
  return b;
}

int cluster_etcd_put(struct cluster_etcd *c, const char *key,
                     const void *value, size_t value_len, int64_t lease)
{
  if (!c || !key || (!value && value_len))
    return CLUSTER_EINVAL;
  json_t *a;
  int rc = etcd_request(c, "/v3/kv/put",
                        body_put(key, value, value_len, lease), &a);
  json_decref(a);
  return rc;
}

static int etcd_range(struct cluster_etcd *c, const char *key, bool prefix,
                      struct cluster_kv_list *out)
{
  memset(out, 0, sizeof *out);
  json_t *a;
  int rc = etcd_request(c, "/v3/kv/range", body_key(key, prefix), &a);
  if (rc)
    return rc;
  rc = etcd_json_kvs(json_object_get(a, "kvs"), out);
  rc = rc ? rc : etcd_json_revision(a, &out->revision);
  json_decref(a);
  if (rc) {
    cluster_kv_list_free(out);
    snprintf(c->error, sizeof c->error, "%s: a range answer that is not "
             "etcd's", cluster_etcd_endpoint(c));
  }
  return rc;
}

int cluster_etcd_get(struct cluster_etcd *c, const char *key,
                     struct cluster_kv *out)
{
  if (!out)
    return CLUSTER_EINVAL;
  memset(out, 0, sizeof *out);
  if (!c || !key || !*key)
    return CLUSTER_EINVAL;
  struct cluster_kv_list list;
  int rc = etcd_range(c, key, false, &list);
  if (rc)
    return rc;
  if (list.count == 0) {
    snprintf(c->error, sizeof c->error, "%s: no key %s",
             cluster_etcd_endpoint(c), key);
    rc = CLUSTER_ENOTFOUND;
  } else {
    *out = list.items[0];
    memset(&list.items[0], 0, sizeof list.items[0]);
  }
  cluster_kv_list_free(&list);
  return rc;
}

int cluster_etcd_range_prefix(struct cluster_etcd *c, const char *prefix,
                              struct cluster_kv_list *out)
{
  if (!out)
    return CLUSTER_EINVAL;
  memset(out, 0, sizeof *out);
  if (!c || !prefix || !*prefix)
    return CLUSTER_EINVAL;
  return etcd_range(c, prefix, true, out);
}

int cluster_etcd_delete(struct cluster_etcd *c, const char *key,
                        int64_t *deleted)
{
  if (!c || !key || !*key)
    return CLUSTER_EINVAL;
  json_t *a;
  int rc = etcd_request(c, "/v3/kv/deleterange", body_key(key, false), &a);
  int64_t n = 0;
  if (!rc)
    rc = etcd_json_int64(a, "deleted", &n);
  if (deleted)
    *deleted = n;
  json_decref(a);
  return rc;
}

/* ---- transactions ---------------------------------------------------- */

static const char *cmp_target_name(enum cluster_cmp_target t, const char **f)
{
  switch (t) {
  case CLUSTER_CMP_CREATE: *f = "create_revision"; return "CREATE";
  case CLUSTER_CMP_MOD: *f = "mod_revision"; return "MOD";
  case CLUSTER_CMP_VERSION: *f = "version"; return "VERSION";
  case CLUSTER_CMP_VALUE: *f = "value"; return "VALUE";
  case CLUSTER_CMP_LEASE: *f = "lease"; return "LEASE";
  }
  return NULL;
}

static const char *cmp_result_name(enum cluster_cmp_result r)
{
  switch (r) {
  case CLUSTER_CMP_EQUAL: return "EQUAL";
  case CLUSTER_CMP_NOT_EQUAL: return "NOT_EQUAL";
  case CLUSTER_CMP_GREATER: return "GREATER";
  case CLUSTER_CMP_LESS: return "LESS";
  }
  return NULL;
}

static json_t *body_compare(const struct cluster_compare *k)
{
  const char *field = NULL;
  const char *target = cmp_target_name(k->target, &field);
  const char *result = cmp_result_name(k->result);
  if (!k->key || !target || !result ||
      (k->target == CLUSTER_CMP_VALUE && !k->value && k->value_len))
    return NULL;
  json_t *b = body_key(k->key, false);
  json_put(&b, "target", json_stringn(target, strlen(target)));
  json_put(&b, "result", json_stringn(result, strlen(result)));
  json_put(&b, field, k->target == CLUSTER_CMP_VALUE
                          ? json_b64(k->value ? k->value : "", k->value_len)
                          : json_i64(k->number));
  return b;
}

static json_t *body_op(const struct cluster_op *op)
{
  json_t *inner = NULL;
  const char *name = NULL;
  if (!op->key || !*op->key)
    return NULL;
  switch (op->kind) {
  case CLUSTER_OP_PUT:
    if (!op->value && op->value_len)
      return NULL;
    inner = body_put(op->key, op->value, op->value_len, op->lease);
    name = "request_put";
    break;
  case CLUSTER_OP_DELETE:
    inner = body_key(op->key, op->prefix);
    name = "request_delete_range";
    break;
  case CLUSTER_OP_RANGE:
    inner = body_key(op->key, op->prefix);
    name = "request_range";
    break;
  }
  json_t *b = name ? json_object() : NULL;
  json_put(&b, name, inner);
  return b;
}

static json_t *body_list(const void *items, size_t n, size_t size,
                         json_t *(*one)(const void *))
{
  json_t *list = json_array();
  for (size_t i = 0; list && i < n; i++) {
    json_t *v = one((const char *)items + i * size);
    if (!v || json_array_append_new(list, v)) {
      json_decref(list);
      return NULL;
    }
  }
  return list;
}

static json_t *one_compare(const void *p) { return body_compare(p); }
static json_t *one_op(const void *p) { return body_op(p); }

/* Collect what the RANGE ops of the branch that ran read. */
static int txn_ranges(json_t *responses, struct cluster_kv_list *out)
{
  if (!responses || json_is_null(responses))
    return 0;
  if (!json_is_array(responses))
    return CLUSTER_EPROTOCOL;
  for (size_t i = 0; i < json_array_size(responses); i++) {
    json_t *r = json_array_get(responses, i);
    json_t *range = json_object_get(r, "response_range");
    if (!range)
      range = json_object_get(r, "responseRange");
    int rc = range ? etcd_json_kvs(json_object_get(range, "kvs"), out) : 0;
    if (rc)
      return rc;
  }
  return 0;
}

int cluster_etcd_txn(struct cluster_etcd *c,
                     const struct cluster_compare *compares, size_t ncompares,
                     const struct cluster_op *success, size_t nsuccess,
                     const struct cluster_op *failure, size_t nfailure,
                     struct cluster_txn_result *result)
{
  if (!result)
    return CLUSTER_EINVAL;
  memset(result, 0, sizeof *result);
  if (!c || ncompares > 64 || nsuccess > 64 || nfailure > 64 ||
      (ncompares && !compares) || (nsuccess && !success) ||
      (nfailure && !failure))
    return CLUSTER_EINVAL;
  json_t *b = json_object();
  json_t *cmp = body_list(compares, ncompares, sizeof *compares, one_compare);
  json_t *ok = body_list(success, nsuccess, sizeof *success, one_op);
  json_t *ko = body_list(failure, nfailure, sizeof *failure, one_op);
  if (!cmp || !ok || !ko) {
    json_decref(b), json_decref(cmp), json_decref(ok), json_decref(ko);
    return CLUSTER_EINVAL; /* a bad compare or op (or ENOMEM) */
  }
  json_put(&b, "compare", cmp);
  json_put(&b, "success", ok);
  json_put(&b, "failure", ko);
  json_t *a;
  int rc = etcd_request(c, "/v3/kv/txn", b, &a);
  if (rc)
    return rc;
  json_t *s = json_object_get(a, "succeeded");
  if (s && !json_is_boolean(s) && !json_is_null(s))
    rc = CLUSTER_EPROTOCOL;
  result->succeeded = json_is_true(s);
  rc = rc ? rc : etcd_json_revision(a, &result->revision);
  rc = rc ? rc : txn_ranges(json_object_get(a, "responses"), &result->range);
  result->range.revision = result->revision;
  json_decref(a);
  if (rc) {
    cluster_txn_result_free(result);
    snprintf(c->error, sizeof c->error, "%s: a txn answer that is not etcd's",
             cluster_etcd_endpoint(c));
  }
  return rc;
}

void cluster_txn_result_free(struct cluster_txn_result *result)
{
  if (!result)
    return;
  cluster_kv_list_free(&result->range);
  memset(result, 0, sizeof *result);
}
