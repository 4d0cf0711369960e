/* etcd.c: stubs until the client lands (etcd.h is the API). */
#include "etcd.h"

#include <stdlib.h>
#include <string.h>

int cluster_etcd_open(const struct cluster_etcd_options *options,
                      struct cluster_etcd **out)
{
  (void)options;
  *out = NULL;
  return CLUSTER_EINVAL;
}
void cluster_etcd_close(struct cluster_etcd *etcd) { (void)etcd; }
int64_t cluster_etcd_revision(const struct cluster_etcd *etcd) { (void)etcd; return 0; }
const char *cluster_etcd_endpoint(const struct cluster_etcd *etcd) { (void)etcd; return ""; }
const char *cluster_etcd_error(const struct cluster_etcd *etcd) { (void)etcd; return "not implemented"; }
int cluster_etcd_lease_grant(struct cluster_etcd *etcd, int64_t ttl_seconds,
                             int64_t *id, int64_t *granted_ttl)
{ (void)etcd; (void)ttl_seconds; (void)id; (void)granted_ttl; return CLUSTER_EINVAL; }
int cluster_etcd_lease_keepalive(struct cluster_etcd *etcd, int64_t id, int64_t *ttl)
{ (void)etcd; (void)id; (void)ttl; return CLUSTER_EINVAL; }
int cluster_etcd_lease_revoke(struct cluster_etcd *etcd, int64_t id)
{ (void)etcd; (void)id; return CLUSTER_EINVAL; }
void cluster_kv_free(struct cluster_kv *kv)
{
  if (!kv) return;
  free(kv->key); free(kv->value);
  memset(kv, 0, sizeof *kv);
}
void cluster_kv_list_free(struct cluster_kv_list *list)
{
  if (!list) return;
  for (size_t i = 0; i < list->count; i++) cluster_kv_free(&list->items[i]);
  free(list->items);
  memset(list, 0, sizeof *list);
}
int cluster_etcd_put(struct cluster_etcd *etcd, const char *key,
                     const void *value, size_t value_len, int64_t lease)
{ (void)etcd; (void)key; (void)value; (void)value_len; (void)lease; return CLUSTER_EINVAL; }
int cluster_etcd_get(struct cluster_etcd *etcd, const char *key, struct cluster_kv *out)
{ (void)etcd; (void)key; memset(out, 0, sizeof *out); return CLUSTER_EINVAL; }
int cluster_etcd_range_prefix(struct cluster_etcd *etcd, const char *prefix,
                              struct cluster_kv_list *out)
{ (void)etcd; (void)prefix; memset(out, 0, sizeof *out); return CLUSTER_EINVAL; }
int cluster_etcd_delete(struct cluster_etcd *etcd, const char *key, int64_t *deleted)
{ (void)etcd; (void)key; (void)deleted; return CLUSTER_EINVAL; }
void cluster_txn_result_free(struct cluster_txn_result *result)
{ if (result) cluster_kv_list_free(&result->range); }
int cluster_etcd_txn(struct cluster_etcd *etcd,
                     const struct cluster_compare *compares, size_t ncompares,
                     const struct cluster_op *success, size_t nsuccess,
                     const struct cluster_op *failure, size_t nfailure,
                     struct cluster_txn_result *result)
{
  (void)etcd; (void)compares; (void)ncompares; (void)success; (void)nsuccess;
  (void)failure; (void)nfailure; memset(result, 0, sizeof *result);
  return CLUSTER_EINVAL;
}
int cluster_watch_open(const struct cluster_etcd_options *options, struct cluster_watch **out)
{ (void)options; *out = NULL; return CLUSTER_EINVAL; }
int cluster_watch_run(struct cluster_watch *watch, const char *key,
                      bool prefix, int64_t start_revision,
                      long idle_timeout_ms, cluster_watch_fn fn, void *arg)
{ (void)watch; (void)key; (void)prefix; (void)start_revision; (void)idle_timeout_ms; (void)fn; (void)arg; return CLUSTER_EINVAL; }
void cluster_watch_cancel(struct cluster_watch *watch) { (void)watch; }
void cluster_watch_reset(struct cluster_watch *watch) { (void)watch; }
int64_t cluster_watch_revision(const struct cluster_watch *watch) { (void)watch; return 0; }
int64_t cluster_watch_compact_revision(const struct cluster_watch *watch) { (void)watch; return 0; }
const char *cluster_watch_error(const struct cluster_watch *watch) { (void)watch; return "not implemented"; }
void cluster_watch_close(struct cluster_watch *watch) { (void)watch; }
