/* records.c: the cluster's keys and the JSON records stored under them
 * (docs/CLUSTER.md "Keys in etcd"; etcd.h). Seqs and epochs are JSON
 * integers (jansson keeps them as long long, never a double). */
#include "etcd.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

bool cluster_name_valid(const char *name)
{
  size_t n = name ? strlen(name) : 0;
  if (n == 0 || n > 63)
    return false;
  for (size_t i = 0; i < n; i++) {
    char c = name[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
      return false;
  }
  return true;
}

int cluster_key(char *buf, size_t size, const char *cluster,
                const char *suffix)
{
  if (!buf || !cluster_name_valid(cluster) || !suffix)
    return CLUSTER_EINVAL;
  int n = snprintf(buf, size, "/loomship/%s/%s", cluster, suffix);
  if (n < 0 || (size_t)n >= size)
    return CLUSTER_EINVAL;
  return 0;
}

int cluster_epoch_parse(const char *text, size_t len, int64_t *epoch)
{
  if (!text || len == 0 || len > 19)
    return CLUSTER_EPROTOCOL;
  uint64_t v = 0;
  for (size_t i = 0; i < len; i++) {
    if (text[i] < '0' || text[i] > '9')
      return CLUSTER_EPROTOCOL;
    v = v * 10 + (uint64_t)(text[i] - '0');
  }
  if (v > (uint64_t)INT64_MAX)
    return CLUSTER_EPROTOCOL;
  *epoch = (int64_t)v;
  return 0;
}

/* Copy a string field into a fixed buffer; required ones must be there. */
static int record_string(json_t *obj, const char *field, char *dst,
                         size_t size, bool required)
{
  json_t *v = json_object_get(obj, field);
  if (!v || json_is_null(v)) {
    dst[0] = '\0';
    return required ? CLUSTER_EPROTOCOL : 0;
  }
  if (!json_is_string(v) || json_string_length(v) >= size)
    return CLUSTER_EPROTOCOL;
  memcpy(dst, json_string_value(v), json_string_length(v) + 1);
  return 0;
}

static int record_integer(json_t *obj, const char *field, int64_t *dst)
{
  json_t *v = json_object_get(obj, field);
  *dst = 0;
  if (!v || json_is_null(v))
    return 0;
  if (!json_is_integer(v))
    return CLUSTER_EPROTOCOL;
  *dst = (int64_t)json_integer_value(v);
  return 0;
}

static json_t *record_load(const char *json, size_t len)
{
  json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, NULL);
  if (root && !json_is_object(root)) {
    json_decref(root);
    return NULL;
  }
  return root;
}

static int member_lag(json_t *root, struct cluster_member *out)
{
  json_t *lag = json_object_get(root, "lag");
  if (!lag || json_is_null(lag))
    return 0;
  if (!json_is_object(lag))
    return CLUSTER_EPROTOCOL;
  int rc = record_integer(lag, "frames", &out->lag_frames);
  json_t *s = json_object_get(lag, "seconds");
  if (s && !json_is_null(s)) {
    if (!json_is_number(s))
      return CLUSTER_EPROTOCOL;
    out->lag_seconds = json_number_value(s);
  }
  return rc;
}

/* Parse json into out (size bytes, zeroed first and again on failure)
 * with fields(). */
static int record_parse(const char *json, size_t len, void *out, size_t size,
                        int (*fields)(json_t *root, void *out))
{
  if (!json || !out)
    return CLUSTER_EINVAL;
  memset(out, 0, size);
  json_t *root = record_load(json, len);
  if (!root)
    return CLUSTER_EPROTOCOL;
  int rc = fields(root, out);
  json_decref(root);
  if (rc)
    memset(out, 0, size);
  return rc;
}

static int member_fields(json_t *root, void *arg)
{
  struct cluster_member *out = arg;
  int rc = record_string(root, "name", out->name, sizeof out->name, true);
  rc = rc ? rc : record_string(root, "url", out->url, sizeof out->url, true);
  rc = rc ? rc : record_string(root, "role", out->role, sizeof out->role, true);
  rc = rc ? rc : record_integer(root, "epoch", &out->epoch);
  rc = rc ? rc : record_string(root, "history", out->history,
                               sizeof out->history, false);
  rc = rc ? rc : record_integer(root, "received_seq", &out->received_seq);
  rc = rc ? rc : record_integer(root, "applied_seq", &out->applied_seq);
  rc = rc ? rc : record_integer(root, "primary_seq", &out->primary_seq);
  rc = rc ? rc : member_lag(root, out);
  rc = rc ? rc : record_string(root, "state", out->state, sizeof out->state,
                               false);
  return rc ? rc : record_string(root, "updated_at", out->updated_at,
                                 sizeof out->updated_at, false);
}

int cluster_member_parse(const char *json, size_t len,
                         struct cluster_member *out)
{
  return record_parse(json, len, out, sizeof *out, member_fields);
}

static int record_dump(json_t *root, char **json)
{
  if (!root)
    return CLUSTER_ENOMEM;
  *json = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(root);
  return *json ? 0 : CLUSTER_ENOMEM;
}

int cluster_member_format(const struct cluster_member *m, char **json)
{
  if (!m || !json)
    return CLUSTER_EINVAL;
  json_t *root = json_pack(
      "{s:s, s:s, s:s, s:I, s:s, s:I, s:I, s:I, s:{s:I, s:f}, s:s, s:s}",
      "name", m->name, "url", m->url, "role", m->role,
      "epoch", (json_int_t)m->epoch, "history", m->history,
      "received_seq", (json_int_t)m->received_seq,
      "applied_seq", (json_int_t)m->applied_seq,
      "primary_seq", (json_int_t)m->primary_seq,
      "lag", "frames", (json_int_t)m->lag_frames, "seconds", m->lag_seconds,
      "state", m->state, "updated_at", m->updated_at);
  return record_dump(root, json);
}

static int leader_fields(json_t *root, void *arg)
{
  struct cluster_leader *out = arg;
  int rc = record_string(root, "name", out->name, sizeof out->name, true);
  rc = rc ? rc : record_string(root, "url", out->url, sizeof out->url, true);
  return rc ? rc : record_integer(root, "epoch", &out->epoch);
}

int cluster_leader_parse(const char *json, size_t len,
                         struct cluster_leader *out)
{
  return record_parse(json, len, out, sizeof *out, leader_fields);
}

int cluster_leader_format(const struct cluster_leader *leader, char **json)
{
  if (!leader || !json)
    return CLUSTER_EINVAL;
  json_t *root = json_pack("{s:s, s:s, s:I}", "name", leader->name, "url",
                           leader->url, "epoch", (json_int_t)leader->epoch);
  return record_dump(root, json);
}
