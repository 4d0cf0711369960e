/* etcd_json.c: the pieces client and watch share (etcd_internal.h): the
 * endpoint list, an answer buffer, base64, and readers of etcd's JSON. */
#include "etcd_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- endpoints ------------------------------------------------------- */

static int endpoints_add(struct etcd_endpoints *e, const char *s, size_t n)
{
  while (n > 0 && s[n - 1] == '/')
    n--; /* "http://h:p/" and "http://h:p" are one endpoint */
  if (n == 0)
    return CLUSTER_EINVAL;
  if (e->count == ETCD_MAX_ENDPOINTS)
    return CLUSTER_EINVAL;
  if (!(n > 7 && strncmp(s, "http://", 7) == 0) &&
      !(n > 8 && strncmp(s, "https://", 8) == 0))
    return CLUSTER_EINVAL;
  char *url = strndup(s, n);
  if (!url)
    return CLUSTER_ENOMEM;
  e->url[e->count++] = url;
  return 0;
}

int etcd_endpoints_parse(const struct cluster_etcd_options *o,
                         struct etcd_endpoints *e)
{
  memset(e, 0, sizeof *e);
  if (!o || !o->endpoints || o->timeout_ms < 0 || o->connect_timeout_ms < 0)
    return CLUSTER_EINVAL;
  const char *s = o->endpoints;
  while (*s) {
    const char *comma = strchr(s, ',');
    size_t n = comma ? (size_t)(comma - s) : strlen(s);
    int rc = endpoints_add(e, s, n);
    if (rc) {
      etcd_endpoints_free(e);
      return rc;
    }
    s += n + (comma ? 1 : 0);
  }
  if (e->count == 0)
    return CLUSTER_EINVAL;
  e->timeout_ms = o->timeout_ms ? o->timeout_ms : 2000;
  e->connect_timeout_ms = o->connect_timeout_ms ? o->connect_timeout_ms
                          : e->timeout_ms < 1000 ? e->timeout_ms : 1000;
  return 0;
}

void etcd_endpoints_free(struct etcd_endpoints *e)
{
  for (size_t i = 0; i < e->count; i++)
    free(e->url[i]);
  memset(e, 0, sizeof *e);
}

/* ---- buffer ---------------------------------------------------------- */

int etcd_buf_append(struct etcd_buf *b, const void *data, size_t len)
{
  if (b->len + len + 1 > ETCD_MAX_ANSWER) {
    b->overflow = true;
    return CLUSTER_EPROTOCOL;
  }
  if (b->len + len + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + len + 1)
      cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p)
      return CLUSTER_ENOMEM;
    b->data = p;
    b->cap = cap;
  }
  memcpy(b->data + b->len, data, len);
  b->len += len;
  b->data[b->len] = '\0';
  return 0;
}

void etcd_buf_free(struct etcd_buf *b)
{
  free(b->data);
  memset(b, 0, sizeof *b);
}

/* ---- base64 ---------------------------------------------------------- */

static const char b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *etcd_base64_encode(const void *data, size_t len)
{
  const unsigned char *p = data;
  char *out = malloc((len + 2) / 3 * 4 + 1), *o = out;
  if (!out)
    return NULL;
  for (size_t i = 0; i < len; i += 3) {
    uint32_t v = (uint32_t)p[i] << 16;
    if (i + 1 < len)
      v |= (uint32_t)p[i + 1] << 8;
    if (i + 2 < len)
      v |= p[i + 2];
    *o++ = b64[(v >> 18) & 63];
    *o++ = b64[(v >> 12) & 63];
    *o++ = i + 1 < len ? b64[(v >> 6) & 63] : '=';
    *o++ = i + 2 < len ? b64[v & 63] : '=';
  }
  *o = '\0';
  return out;
}

static int b64_value(char c)
{
  const char *p = c ? strchr(b64, c) : NULL;
  return p ? (int)(p - b64) : -1;
}

int etcd_base64_decode(const char *text, size_t len, char **out,
                       size_t *out_len)
{
  if (len % 4 != 0)
    return CLUSTER_EPROTOCOL;
  char *buf = malloc(len / 4 * 3 + 1);
  size_t n = 0;
  if (!buf)
    return CLUSTER_ENOMEM;
  for (size_t i = 0; i < len; i += 4) {
    int pad = (text[i + 2] == '=') + (text[i + 3] == '=');
    bool last = i + 4 == len;
    int a = b64_value(text[i]), b = b64_value(text[i + 1]);
    int c = pad >= 2 ? 0 : b64_value(text[i + 2]);
    int d = pad >= 1 ? 0 : b64_value(text[i + 3]);
    if (a < 0 || b < 0 || c < 0 || d < 0 || (pad && !last) ||
        (pad == 1 && text[i + 2] == '=')) {
      free(buf);
      return CLUSTER_EPROTOCOL;
    }
    uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 |
                 (uint32_t)d;
    buf[n++] = (char)(v >> 16);
    if (pad < 2)
      buf[n++] = (char)(v >> 8);
    if (pad < 1)
      buf[n++] = (char)v;
  }
  buf[n] = '\0';
  *out = buf;
  *out_len = n;
  return 0;
}

char *etcd_prefix_end(const char *prefix, size_t len, size_t *end_len)
{
  char *end = malloc(len + 1);
  if (!end)
    return NULL;
  memcpy(end, prefix, len);
  while (len > 0 && (unsigned char)end[len - 1] == 0xff)
    len--;
  if (len == 0) {
    end[0] = '\0';
    *end_len = 1;
  } else {
    end[len - 1] = (char)((unsigned char)end[len - 1] + 1);
    *end_len = len;
  }
  return end;
}

/* ---- JSON readers ---------------------------------------------------- */

int etcd_json_int64(json_t *obj, const char *field, int64_t *out)
{
  json_t *v = json_is_object(obj) ? json_object_get(obj, field) : NULL;
  *out = 0;
  if (!v || json_is_null(v))
    return 0;
  if (json_is_integer(v)) {
    *out = (int64_t)json_integer_value(v);
    return 0;
  }
  if (!json_is_string(v))
    return CLUSTER_EPROTOCOL;
  const char *s = json_string_value(v);
  char *end = NULL;
  errno = 0;
  long long n = strtoll(s, &end, 10);
  if (errno || end == s || *end != '\0' ||
      !((s[0] >= '0' && s[0] <= '9') || s[0] == '-'))
    return CLUSTER_EPROTOCOL;
  *out = (int64_t)n;
  return 0;
}

int etcd_json_revision(json_t *answer, int64_t *revision)
{
  json_t *h = json_object_get(answer, "header");
  *revision = 0;
  if (!h)
    return 0;
  if (!json_is_object(h))
    return CLUSTER_EPROTOCOL;
  return etcd_json_int64(h, "revision", revision);
}

static int json_bytes(json_t *obj, const char *field, char **out,
                      size_t *len)
{
  json_t *v = json_object_get(obj, field);
  if (!v || json_is_null(v))
    return etcd_base64_decode("", 0, out, len);
  if (!json_is_string(v))
    return CLUSTER_EPROTOCOL;
  return etcd_base64_decode(json_string_value(v), json_string_length(v), out,
                            len);
}

int etcd_json_kv(json_t *obj, struct cluster_kv *kv)
{
  memset(kv, 0, sizeof *kv);
  if (!json_is_object(obj))
    return CLUSTER_EPROTOCOL;
  int rc = json_bytes(obj, "key", &kv->key, &kv->key_len);
  rc = rc ? rc : json_bytes(obj, "value", &kv->value, &kv->value_len);
  rc = rc ? rc : etcd_json_int64(obj, "create_revision", &kv->create_revision);
  rc = rc ? rc : etcd_json_int64(obj, "mod_revision", &kv->mod_revision);
  rc = rc ? rc : etcd_json_int64(obj, "version", &kv->version);
  rc = rc ? rc : etcd_json_int64(obj, "lease", &kv->lease);
  if (rc)
    cluster_kv_free(kv);
  return rc;
}

int etcd_json_kvs(json_t *array, struct cluster_kv_list *list)
{
  if (!array || json_is_null(array))
    return 0;
  if (!json_is_array(array))
    return CLUSTER_EPROTOCOL;
  size_t n = json_array_size(array);
  if (n == 0)
    return 0;
  struct cluster_kv *items =
      realloc(list->items, (list->count + n) * sizeof *items);
  if (!items)
    return CLUSTER_ENOMEM;
  list->items = items;
  for (size_t i = 0; i < n; i++) {
    int rc = etcd_json_kv(json_array_get(array, i), &items[list->count]);
    if (rc)
      return rc;
    list->count++;
  }
  return 0;
}

int etcd_curl_error(CURLcode code, bool *retry)
{
  /* if, not switch: CURLcode has ~100 values and -Wswitch-enum */
  *retry = true;
  if (code == CURLE_OPERATION_TIMEDOUT)
    return CLUSTER_ETIMEDOUT;
  if (code == CURLE_COULDNT_CONNECT || code == CURLE_COULDNT_RESOLVE_HOST ||
      code == CURLE_SEND_ERROR || code == CURLE_RECV_ERROR ||
      code == CURLE_GOT_NOTHING || code == CURLE_PARTIAL_FILE ||
      code == CURLE_SSL_CONNECT_ERROR)
    return CLUSTER_EUNREACHABLE;
  *retry = false;
  return code == CURLE_OUT_OF_MEMORY ? CLUSTER_ENOMEM : CLUSTER_EPROTOCOL;
}
