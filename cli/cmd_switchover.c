/*
 * cmd_switchover.c: loomship switchover, a planned handover (DESIGN
 * section 5): write /loomship/CLUSTER/switchover {"from": the leader, "to":
 * --to or null, "requested_at"}; the leader (cluster/node_loop.c) stops
 * saving, drains to the target and hands the leader key over. Exit 0 once
 * a member leads at a higher epoch (the --to one, if given) and has
 * committed a save there (its member key's received_seq moved past where
 * it started leading); 1 on timeout (the switchover key is removed: the
 * leader keeps the key) or error; 2 usage.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "cli.h"
#include "clock.h"
#include "etcd.h"

typedef struct switchover_args {
  const char *etcd, *cluster, *to;
  uint64_t timeout;
} switchover_args;

#define AT(field) offsetof(switchover_args, field)
static const cli_option switchover_options[] = {
    {.name = "etcd", .arg = "URL[,URL]...", .kind = CLI_TEXT, .offset = AT(etcd),
     .required = true, .help = "etcd's client URLs"},
    {.name = "cluster", .arg = "NAME", .kind = CLI_TEXT, .offset = AT(cluster),
     .dflt = "loomship", .help = "the cluster"},
    {.name = "to", .arg = "NAME", .kind = CLI_TEXT, .offset = AT(to),
     .dflt = "the most advanced member", .help = "the member to hand over to"},
    {.name = "timeout", .arg = "SECONDS", .kind = CLI_NUMBER, .offset = AT(timeout),
     .min = 1, .max = 86400, .dflt = "30",
     .help = "give up after this long (the leader then keeps the key)"},
    {0},
};
#undef AT

typedef struct keys {
  char leader[256], switchover[256], members[256];
} keys;

/* The leader now, from its key: 0, CLUSTER_ENOTFOUND, or an etcd error. */
static int leader_read(struct cluster_etcd *e, const keys *k, struct cluster_leader *l)
{
  struct cluster_kv kv = {0};
  int rc = cluster_etcd_get(e, k->leader, &kv);
  if (!rc)
    rc = cluster_leader_parse(kv.value, kv.value_len, l);
  cluster_kv_free(&kv);
  return rc;
}

static int request_put(struct cluster_etcd *e, const keys *k, const char *from,
                       const char *to)
{
  char at[40];
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  strftime(at, sizeof at, "%Y-%m-%dT%H:%M:%SZ", &tm);
  json_t *root = json_pack("{s:s, s:s?, s:s}", "from", from, "to", to, "requested_at", at);
  char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;
  json_decref(root);
  int rc = text ? cluster_etcd_put(e, k->switchover, text, strlen(text), 0)
                : CLUSTER_ENOMEM;
  free(text);
  return rc;
}

/* The leader's member key's received_seq, or -1. */
static int64_t leader_seq(struct cluster_etcd *e, const keys *k, const char *name)
{
  char key[320];
  snprintf(key, sizeof key, "%s%s", k->members, name);
  struct cluster_kv kv = {0};
  struct cluster_member m;
  int64_t seq = -1;
  if (cluster_etcd_get(e, key, &kv) == 0 &&
      cluster_member_parse(kv.value, kv.value_len, &m) == 0 &&
      strcmp(m.role, "leader") == 0)
    seq = m.received_seq;
  cluster_kv_free(&kv);
  return seq;
}

/* Poll until a new leader saved at a higher epoch: true when it did. */
static bool wait_new_leader(struct cluster_etcd *e, const keys *k, int64_t old_epoch,
                            const char *to, double timeout)
{
  double until = loom_mono_s() + timeout;
  int64_t first_seq = -1, epoch_seen = 0;
  while (loom_mono_s() < until) {
    struct cluster_leader l;
    if (leader_read(e, k, &l) == 0 && l.epoch > old_epoch && (!to || !strcmp(l.name, to))) {
      int64_t seq = leader_seq(e, k, l.name);
      if (l.epoch != epoch_seen)
        epoch_seen = l.epoch, first_seq = seq;
      if (seq >= 0 && first_seq >= 0 && seq > first_seq) {
        printf("%s leads at epoch %" PRId64 " and saves (seq %" PRId64 ")\n", l.name,
               l.epoch, seq);
        return true;
      }
      if (first_seq < 0)
        first_seq = seq;
    }
    struct timespec pause = {0, 100 * 1000 * 1000};
    nanosleep(&pause, NULL);
  }
  return false;
}

static int run_switchover(void *args)
{
  const switchover_args *a = args;
  const char *cluster = a->cluster ? a->cluster : CLUSTER_DEFAULT_NAME;
  keys k;
  if (cluster_key(k.leader, sizeof k.leader, cluster, "leader") ||
      cluster_key(k.switchover, sizeof k.switchover, cluster, "switchover") ||
      cluster_key(k.members, sizeof k.members, cluster, "members/") ||
      (a->to && !cluster_name_valid(a->to)))
    return cli_usage_error(&cmd_switchover, "--cluster and --to take 1-63 of "
                                            "A-Z a-z 0-9 . _ -");
  struct cluster_etcd_options eo = {.endpoints = a->etcd};
  struct cluster_etcd *e;
  int rc = cluster_etcd_open(&eo, &e);
  if (rc)
    return cli_usage_error(&cmd_switchover, "--etcd: %s", cluster_strerror(rc));
  struct cluster_leader l;
  if ((rc = leader_read(e, &k, &l)) != 0) {
    cluster_etcd_close(e);
    return cli_fail("switchover", rc == CLUSTER_ENOTFOUND ? "no leader now: nothing to "
                    "switch over" : "etcd: %s", cluster_strerror(rc));
  }
  if (a->to && strcmp(a->to, l.name) == 0) {
    cluster_etcd_close(e);
    return cli_fail("switchover", "%s is the leader already", a->to);
  }
  if ((rc = request_put(e, &k, l.name, a->to)) != 0) {
    cluster_etcd_close(e);
    return cli_fail("switchover", "etcd: %s", cluster_strerror(rc));
  }
  printf("switchover from %s (epoch %" PRId64 ") to %s requested\n", l.name, l.epoch,
         a->to ? a->to : "the most advanced member");
  fflush(stdout);
  bool done = wait_new_leader(e, &k, l.epoch, a->to, (double)a->timeout);
  if (!done) {
    cluster_etcd_delete(e, k.switchover, NULL);
    cli_fail("switchover", "no member led at a higher epoch within %llu s; the request "
             "was withdrawn", (unsigned long long)a->timeout);
  }
  cluster_etcd_close(e);
  return done ? 0 : 1;
}

const cli_command cmd_switchover = {
    .name = "switchover",
    .summary = "hand the cluster's leadership over, losing nothing",
    .options = switchover_options, .args_size = sizeof(switchover_args),
    .run = run_switchover};
