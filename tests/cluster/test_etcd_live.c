/* test_etcd_live.c: the etcd client against a real 3-member etcd
 * (started by etcd_live.py, which passes the client URLs in
 * LOOMSHIP_ETCD_ENDPOINTS and kills a member when this program writes
 * "KILL i" on stdout, answering "ok" on stdin). Skipped without the
 * variable. Every wait polls an observable with a deadline. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "etcd.h"

static const char *endpoints;
static char prefix[64];

static double now_s(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms)
{
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static struct cluster_etcd *client(void)
{
  struct cluster_etcd_options o = {.endpoints = endpoints, .timeout_ms = 2000};
  struct cluster_etcd *c = NULL;
  assert_int_equal(cluster_etcd_open(&o, &c), 0);
  return c;
}

static const char *key(const char *suffix)
{
  static char buf[4][128];
  static int n;
  char *b = buf[n++ % 4];
  snprintf(b, sizeof buf[0], "%s%s", prefix, suffix);
  return b;
}

/* ---- a lease: grant, keep alive, expire ------------------------------ */

static void test_lease_expiry(void **state)
{
  (void)state;
  struct cluster_etcd *c = client();
  int64_t id = 0, ttl = 0, left = 0;
  assert_int_equal(cluster_etcd_lease_grant(c, 2, &id, &ttl), 0);
  assert_true(id != 0);
  assert_true(ttl >= 2);
  assert_int_equal(cluster_etcd_lease_keepalive(c, id, &left), 0);
  assert_true(left > 0 && left <= ttl);
  assert_int_equal(cluster_etcd_put(c, key("lease"), "x", 1, id), 0);
  struct cluster_kv kv;
  assert_int_equal(cluster_etcd_get(c, key("lease"), &kv), 0);
  assert_int_equal(kv.lease, id);
  cluster_kv_free(&kv);
  /* no more keep-alives: the key goes with the lease */
  double deadline = now_s() + (double)ttl + 10;
  int rc = 0;
  while ((rc = cluster_etcd_get(c, key("lease"), &kv)) == 0 &&
         now_s() < deadline) {
    cluster_kv_free(&kv);
    sleep_ms(100);
  }
  assert_int_equal(rc, CLUSTER_ENOTFOUND);
  assert_int_equal(cluster_etcd_lease_keepalive(c, id, &left),
                   CLUSTER_ELEASE_GONE);
  assert_int_equal(cluster_etcd_lease_revoke(c, id), CLUSTER_ELEASE_GONE);
  assert_int_equal(cluster_etcd_put(c, key("lease"), "y", 1, id),
                   CLUSTER_ELEASE_GONE);
  assert_true(cluster_etcd_revision(c) > 0);
  cluster_etcd_close(c);
}

/* ---- the epoch counter: two concurrent bumps, exactly one wins ------- */

struct bumper {
  pthread_barrier_t *barrier;
  int round;
  bool won;
  int rc;
};

static void *bump(void *arg)
{
  struct bumper *b = arg;
  struct cluster_etcd *c = client();
  struct cluster_kv kv;
  int64_t epoch = 0;
  int rc = cluster_etcd_get(c, key("epoch"), &kv);
  struct cluster_compare cmp = {.key = key("epoch"),
                                .target = CLUSTER_CMP_MOD,
                                .result = CLUSTER_CMP_EQUAL};
  if (rc == CLUSTER_ENOTFOUND) {
    cmp.target = CLUSTER_CMP_CREATE;
    rc = 0;
  } else if (rc == 0) {
    cmp.number = kv.mod_revision;
    rc = cluster_epoch_parse(kv.value, kv.value_len, &epoch);
    cluster_kv_free(&kv);
  }
  char next[24];
  snprintf(next, sizeof next, "%lld", (long long)epoch + 1);
  struct cluster_op put = {.kind = CLUSTER_OP_PUT, .key = key("epoch"),
                           .value = next, .value_len = strlen(next)};
  struct cluster_txn_result r;
  pthread_barrier_wait(b->barrier);
  if (!rc)
    rc = cluster_etcd_txn(c, &cmp, 1, &put, 1, NULL, 0, &r);
  b->rc = rc;
  b->won = !rc && r.succeeded;
  if (!rc)
    cluster_txn_result_free(&r);
  cluster_etcd_close(c);
  return NULL;
}

static void test_epoch_cas(void **state)
{
  (void)state;
  for (int round = 0; round < 10; round++) {
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, 2);
    struct bumper b[2] = {{&barrier, round, false, 0},
                          {&barrier, round, false, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
      pthread_create(&t[i], NULL, bump, &b[i]);
    for (int i = 0; i < 2; i++)
      pthread_join(t[i], NULL);
    pthread_barrier_destroy(&barrier);
    assert_int_equal(b[0].rc, 0);
    assert_int_equal(b[1].rc, 0);
    assert_int_equal((int)b[0].won + (int)b[1].won, 1);
  }
  struct cluster_etcd *c = client();
  struct cluster_kv kv;
  int64_t epoch = 0;
  assert_int_equal(cluster_etcd_get(c, key("epoch"), &kv), 0);
  assert_int_equal(cluster_epoch_parse(kv.value, kv.value_len, &epoch), 0);
  assert_int_equal(epoch, 10); /* one bump a round, none lost */
  cluster_kv_free(&kv);
  cluster_etcd_close(c);
}

/* ---- the leader key: create if absent, on a lease -------------------- */

static int campaign(struct cluster_etcd *c, const char *name, int64_t lease,
                    struct cluster_txn_result *r)
{
  struct cluster_compare cmp = {.key = key("leader"),
                                .target = CLUSTER_CMP_CREATE,
                                .result = CLUSTER_CMP_EQUAL, .number = 0};
  struct cluster_op put = {.kind = CLUSTER_OP_PUT, .key = key("leader"),
                           .value = name, .value_len = strlen(name),
                           .lease = lease};
  struct cluster_op get = {.kind = CLUSTER_OP_RANGE, .key = key("leader")};
  return cluster_etcd_txn(c, &cmp, 1, &put, 1, &get, 1, r);
}

static void test_leader_create_if_absent(void **state)
{
  (void)state;
  struct cluster_etcd *a = client(), *b = client();
  int64_t la, lb, ttl;
  assert_int_equal(cluster_etcd_lease_grant(a, 5, &la, &ttl), 0);
  assert_int_equal(cluster_etcd_lease_grant(b, 5, &lb, &ttl), 0);
  struct cluster_txn_result r;
  assert_int_equal(campaign(a, "a", la, &r), 0);
  assert_true(r.succeeded);
  assert_true(r.revision > 0);
  cluster_txn_result_free(&r);
  assert_int_equal(campaign(b, "b", lb, &r), 0);
  assert_false(r.succeeded);
  assert_int_equal(r.range.count, 1); /* the failure branch read a's */
  assert_string_equal(r.range.items[0].value, "a");
  assert_int_equal(r.range.items[0].lease, la);
  cluster_txn_result_free(&r);
  assert_int_equal(cluster_etcd_lease_revoke(a, la), 0);
  assert_int_equal(campaign(b, "b", lb, &r), 0);
  assert_true(r.succeeded);
  cluster_txn_result_free(&r);
  assert_int_equal(cluster_etcd_lease_revoke(b, lb), 0);
  cluster_etcd_close(a);
  cluster_etcd_close(b);
}

/* ---- watch: a put and a delete, then cancel promptly ----------------- */

struct seen {
  atomic_int puts, deletes;
  char value[64];
  int64_t put_revision;
};

struct watcher {
  struct cluster_watch *w;
  struct seen seen;
  int64_t from;
  int rc;
};

static int on_event(void *arg, const struct cluster_event *ev)
{
  struct seen *s = arg;
  if (ev->type == CLUSTER_EVENT_PUT) {
    snprintf(s->value, sizeof s->value, "%s", ev->kv.value);
    s->put_revision = ev->kv.mod_revision;
    atomic_fetch_add(&s->puts, 1);
  } else {
    atomic_fetch_add(&s->deletes, 1);
  }
  return 0;
}

static void *watch_thread(void *arg)
{
  struct watcher *x = arg;
  x->rc = cluster_watch_run(x->w, key("w/"), true, x->from, 0, on_event,
                            &x->seen);
  return NULL;
}

static bool poll_until(atomic_int *v, int want, double seconds)
{
  double deadline = now_s() + seconds;
  while (atomic_load(v) < want && now_s() < deadline)
    sleep_ms(10);
  return atomic_load(v) >= want;
}

static void test_watch_put_delete(void **state)
{
  (void)state;
  struct cluster_etcd_options o = {.endpoints = endpoints};
  struct watcher x;
  memset(&x, 0, sizeof x);
  assert_int_equal(cluster_watch_open(&o, &x.w), 0);
  pthread_t t;
  pthread_create(&t, NULL, watch_thread, &x);
  struct cluster_etcd *c = client();
  /* the watch starts "from now": put until it has seen one */
  double deadline = now_s() + 10;
  while (atomic_load(&x.seen.puts) == 0 && now_s() < deadline) {
    assert_int_equal(cluster_etcd_put(c, key("w/k"), "v1", 2, 0), 0);
    poll_until(&x.seen.puts, 1, 0.2);
  }
  assert_true(atomic_load(&x.seen.puts) >= 1);
  assert_string_equal(x.seen.value, "v1");
  int64_t deleted = 0;
  assert_int_equal(cluster_etcd_delete(c, key("w/k"), &deleted), 0);
  assert_int_equal(deleted, 1);
  assert_true(poll_until(&x.seen.deletes, 1, 10));
  double t0 = now_s();
  cluster_watch_cancel(x.w);
  pthread_join(t, NULL);
  assert_true(now_s() - t0 < 1.0); /* prompt */
  assert_int_equal(x.rc, CLUSTER_ECANCELLED);
  int64_t seen = cluster_watch_revision(x.w);
  assert_true(seen >= x.seen.put_revision);
  /* re-watch from the put's revision: it comes again, then the delete */
  int64_t put_rev = x.seen.put_revision;
  memset(&x.seen, 0, sizeof x.seen);
  cluster_watch_reset(x.w);
  x.from = put_rev;
  pthread_create(&t, NULL, watch_thread, &x);
  assert_true(poll_until(&x.seen.deletes, 1, 10));
  assert_int_equal(x.seen.put_revision, put_rev);
  cluster_watch_cancel(x.w);
  pthread_join(t, NULL);
  cluster_watch_close(x.w);
  cluster_etcd_close(c);
}

/* ---- failover: the member a client talks to dies --------------------- */

static void ask_kill(int member)
{
  char line[16];
  printf("KILL %d\n", member);
  fflush(stdout);
  assert_non_null(fgets(line, sizeof line, stdin));
  assert_string_equal(line, "ok\n");
}

/* Right after a member dies, the two left may still be electing a leader,
 * and etcd refuses requests until they have one (the harness runs etcd
 * with --election-timeout 500: an error status, or no answer in time): a
 * request must be taken within a few elections, not at once. Any other
 * error fails at once. */
static bool electing(int rc)
{
  return rc == CLUSTER_EHTTP || rc == CLUSTER_ETIMEDOUT;
}

static int get_within(struct cluster_etcd *c, const char *k,
                      struct cluster_kv *kv, double seconds)
{
  double deadline = now_s() + seconds;
  int rc;
  while (electing(rc = cluster_etcd_get(c, k, kv)) && now_s() < deadline)
    sleep_ms(50);
  return rc;
}

static int put_within(struct cluster_etcd *c, const char *k, const char *v,
                      double seconds)
{
  double deadline = now_s() + seconds;
  int rc;
  while (electing(rc = cluster_etcd_put(c, k, v, strlen(v), 0)) &&
         now_s() < deadline)
    sleep_ms(50);
  return rc;
}

static void test_failover(void **state)
{
  (void)state;
  struct cluster_etcd *c = client();
  assert_int_equal(cluster_etcd_put(c, key("f"), "before", 6, 0), 0);
  char first[256];
  snprintf(first, sizeof first, "%s", cluster_etcd_endpoint(c));
  assert_true(strncmp(endpoints, first, strlen(first)) == 0);
  ask_kill(0);
  struct cluster_kv kv;
  assert_int_equal(get_within(c, key("f"), &kv, 10), 0);
  assert_string_equal(kv.value, "before");
  cluster_kv_free(&kv);
  assert_string_not_equal(cluster_etcd_endpoint(c), first);
  assert_int_equal(put_within(c, key("f"), "after", 10), 0);
  /* a new client and a watch whose first endpoint is dead */
  struct cluster_etcd *d = client();
  assert_int_equal(cluster_etcd_get(d, key("f"), &kv), 0);
  assert_string_equal(kv.value, "after");
  cluster_kv_free(&kv);
  cluster_etcd_close(d);
  struct cluster_etcd_options o = {.endpoints = endpoints};
  struct watcher x;
  memset(&x, 0, sizeof x);
  assert_int_equal(cluster_watch_open(&o, &x.w), 0);
  x.from = 1;
  pthread_t t;
  pthread_create(&t, NULL, watch_thread, &x);
  assert_true(poll_until(&x.seen.puts, 1, 10));
  cluster_watch_cancel(x.w);
  pthread_join(t, NULL);
  assert_int_equal(x.rc, CLUSTER_ECANCELLED);
  cluster_watch_close(x.w);
  cluster_etcd_close(c);
}

int main(void)
{
  endpoints = getenv("LOOMSHIP_ETCD_ENDPOINTS");
  if (!endpoints || !*endpoints) {
    printf("SKIP: LOOMSHIP_ETCD_ENDPOINTS not set (run etcd_live.py)\n");
    return 77;
  }
  snprintf(prefix, sizeof prefix, "/test/%d/", (int)getpid());
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_lease_expiry),
    cmocka_unit_test(test_epoch_cas),
    cmocka_unit_test(test_leader_create_if_absent),
    cmocka_unit_test(test_watch_put_delete),
    cmocka_unit_test(test_failover),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
