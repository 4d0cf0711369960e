/* etcd_bench.c: the etcd client's round trips against a real etcd, the
 * cost a cluster member pays per call (a lease keep-alive every ttl/3, a
 * member-key put, a campaign txn, a range of the cluster's keys).
 *
 *   python3 tests/cluster/etcd_live.py build/bench/etcd_bench [N]
 *
 * etcd_live.py starts a 3-member etcd on 127.0.0.1 and passes its URLs in
 * LOOMSHIP_ETCD_ENDPOINTS. Prints p50/p99/max in ms of N calls each. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "etcd.h"

static double now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void report(const char *what, double *t, int n)
{
  qsort(t, (size_t)n, sizeof *t, cmp_double);
  printf("%-22s n=%d  p50 %.3f ms  p99 %.3f ms  max %.3f ms\n", what, n,
         t[n / 2], t[(n * 99) / 100], t[n - 1]);
}

static int one(struct cluster_etcd *c, int kind, int i, int64_t lease)
{
  char value[256];
  snprintf(value, sizeof value, "{\"name\":\"bench\",\"url\":\"http://127.0.0.1:1\","
           "\"role\":\"standby\",\"received_seq\":%d}", i);
  int64_t ttl;
  struct cluster_kv_list list;
  struct cluster_txn_result r;
  struct cluster_compare cmp = {.key = "/loomship/bench/leader",
                                .target = CLUSTER_CMP_CREATE};
  struct cluster_op put = {.kind = CLUSTER_OP_PUT,
                           .key = "/loomship/bench/leader", .value = "x",
                           .value_len = 1, .lease = lease};
  int rc;
  switch (kind) {
  case 0:
    return cluster_etcd_lease_keepalive(c, lease, &ttl);
  case 1:
    return cluster_etcd_put(c, "/loomship/bench/members/b", value,
                            strlen(value), lease);
  case 2:
    rc = cluster_etcd_txn(c, &cmp, 1, &put, 1, NULL, 0, &r);
    cluster_txn_result_free(&r);
    return rc;
  default:
    rc = cluster_etcd_range_prefix(c, "/loomship/bench/", &list);
    cluster_kv_list_free(&list);
    return rc;
  }
}

int main(int argc, char **argv)
{
  const char *eps = getenv("LOOMSHIP_ETCD_ENDPOINTS");
  int n = argc > 1 ? atoi(argv[1]) : 1000;
  if (!eps || n < 1) {
    fprintf(stderr, "run through tests/cluster/etcd_live.py\n");
    return 77;
  }
  struct cluster_etcd_options o = {.endpoints = eps};
  struct cluster_etcd *c;
  int64_t lease, ttl;
  if (cluster_etcd_open(&o, &c) || cluster_etcd_lease_grant(c, 5, &lease, &ttl))
    return 1;
  static const char *names[] = {"lease keep-alive", "member put (lease)",
                                "campaign txn", "range of the cluster"};
  double *t = malloc((size_t)n * sizeof *t);
  for (int kind = 0; kind < 4; kind++) {
    for (int i = 0; i < n; i++) {
      double t0 = now_ms();
      int rc = one(c, kind, i, lease);
      t[i] = now_ms() - t0;
      if (rc) {
        fprintf(stderr, "%s: %s (%s)\n", names[kind], cluster_strerror(rc),
                cluster_etcd_error(c));
        return 1;
      }
    }
    report(names[kind], t, n);
  }
  free(t);
  cluster_etcd_lease_revoke(c, lease);
  cluster_etcd_close(c);
  return 0;
}
