/*
 * node_loop.c: the HA loop of a cluster member (node.h; docs/CLUSTER.md
 * "The life cycle"). Once per cycle (every ttl/3, or at once when the
 * leader key changes, the lease changes, or the leader's writer waits for
 * a sync set) it reads the cluster's keys in one range, decides from that
 * snapshot alone, acts, and says what it decided in one sentence, logged
 * when it changes (Patroni's HA loop).
 *
 * DECISIONS
 *   Leader:  demote when the lease may have expired (node.c F3) or the
 *            leader key is not ours; else keep the peers in step with the
 *            members, keep the sync set (--sync N: written before any
 *            acknowledgement relies on it), hand over on a switchover
 *            (with --sync, the set becomes {target, us} first, so that a
 *            target dying before it leads leaves us eligible).
 *   Standby: publish the member key; follow the leader (rewind first when
 *            our history goes past its epoch's branch point); when there
 *            is no leader, campaign if this member is the most advanced
 *            reachable eligible one (E1-E4 below).
 *
 * ELECTION
 *   E1. Eligible: with --sync, a member named in the sync key (any member
 *       while there is none); without, one at most --max-lag-on-failover
 *       frames behind the primary seq it heard.
 *   E2. The most advanced eligible member (received epoch, then seq) with
 *       a live member key campaigns; ties go to the lowest name. A
 *       switchover naming a live member lets only that one campaign.
 *   E3. One txn: the leader key absent (create_revision 0), the epoch
 *       counter unchanged since read (its mod_revision, or absent); then
 *       epoch := max(counter, our epoch) + 1 and leader := us, on our
 *       lease. Of two campaigns at most one wins; the loser reads again.
 *   E4. The winner stops its standby side (applying all it received),
 *       makes the epoch durable in its directory, and hands the directory
 *       to the application (on_lead).
 */
#include "node_internal.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "clock.h"
#include "receiver.h"

/* ---------------------------------------------------------------------- */
/* Saying what was decided */

static void say(cluster_node *n, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void say(cluster_node *n, const char *fmt, ...)
{
  char line[sizeof n->sentence];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (strcmp(line, n->sentence) == 0)
    return;
  memcpy(n->sentence, line, sizeof line);
  node_logf(n, "%s", line);
}

static void utc_now(char *buf, size_t size)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char sec[24];
  strftime(sec, sizeof sec, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(buf, size, "%.19s.%03dZ", sec, (int)(ts.tv_nsec / 1000000) % 1000);
}

/* ---------------------------------------------------------------------- */
/* Reading the cluster's keys: one range, one snapshot */

static void names_parse(json_t *arr, char names[][64], size_t *count)
{
  *count = 0;
  size_t i;
  json_t *v;
  json_array_foreach(arr, i, v) {
    if (json_is_string(v) && *count < NODE_MEMBERS_MAX)
      snprintf(names[(*count)++], 64, "%s", json_string_value(v));
  }
}

static void sync_parse(const struct cluster_kv *kv, node_view *v)
{
  json_t *root = json_loadb(kv->value, kv->value_len, 0, NULL);
  json_t *e = root ? json_object_get(root, "epoch") : NULL;
  json_t *m = root ? json_object_get(root, "members") : NULL;
  if (json_is_integer(e) && json_is_array(m)) {
    v->has_sync = true;
    v->sync_epoch = (uint64_t)json_integer_value(e);
    names_parse(m, v->sync, &v->sync_count);
  }
  json_decref(root);
}

static void switchover_parse(const struct cluster_kv *kv, node_view *v)
{
  json_t *root = json_loadb(kv->value, kv->value_len, 0, NULL);
  json_t *from = root ? json_object_get(root, "from") : NULL;
  json_t *to = root ? json_object_get(root, "to") : NULL;
  if (json_is_string(from)) {
    v->has_switchover = true;
    v->switchover_drained = json_is_true(json_object_get(root, "drained"));
    snprintf(v->switchover_from, 64, "%s", json_string_value(from));
    snprintf(v->switchover_to, 64, "%s", json_is_string(to) ? json_string_value(to) : "");
  }
  json_decref(root);
}

static void view_take(cluster_node *n, const struct cluster_kv *kv, node_view *v)
{
  const char *k = kv->key + strlen(n->key_prefix);
  if (strcmp(k, "leader") == 0) {
    v->has_leader = cluster_leader_parse(kv->value, kv->value_len, &v->leader) == 0;
    v->leader_mod_revision = kv->mod_revision;
    v->leader_lease = kv->lease;
  } else if (strcmp(k, "epoch") == 0) {
    if (cluster_epoch_parse(kv->value, kv->value_len, &v->epoch) == 0)
      v->epoch_mod_revision = kv->mod_revision;
  } else if (strcmp(k, "sync") == 0) {
    sync_parse(kv, v);
  } else if (strcmp(k, "switchover") == 0) {
    switchover_parse(kv, v);
  } else if (strncmp(k, "members/", 8) == 0 && v->member_count < NODE_MEMBERS_MAX) {
    if (cluster_member_parse(kv->value, kv->value_len, &v->members[v->member_count]) == 0)
      v->member_count++;
  }
}

static int view_read(cluster_node *n, node_view *v)
{
  memset(v, 0, sizeof *v);
  struct cluster_kv_list list = {0};
  int rc = cluster_etcd_range_prefix(n->etcd, n->key_prefix, &list);
  if (rc)
    return rc;
  for (size_t i = 0; i < list.count; i++)
    view_take(n, &list.items[i], v);
  cluster_kv_list_free(&list);
  v->ok = true;
  return 0;
}

static const struct cluster_member *view_member(const node_view *v, const char *name)
{
  for (size_t i = 0; i < v->member_count; i++)
    if (strcmp(v->members[i].name, name) == 0)
      return &v->members[i];
  return NULL;
}

/* ---------------------------------------------------------------------- */
/* The member key */

static void history_hex(const loom_history *h, char out[33])
{
  if (loom_history_is_none(h)) {
    out[0] = '\0';
    return;
  }
  for (int i = 0; i < 16; i++)
    snprintf(out + 2 * i, 3, "%02x", h->id[i]);
}

static void member_as_standby(cluster_node *n, struct cluster_member *m)
{
  http_server_status st;
  http_server_get_status(n->standby, &st);
  snprintf(m->role, sizeof m->role, "standby");
  m->epoch = (int64_t)st.received.epoch;
  history_hex(&st.history, m->history);
  m->received_seq = (int64_t)st.received.seq;
  m->applied_seq = (int64_t)st.applied.seq;
  m->primary_seq = (int64_t)st.primary_seq;
  m->lag_frames = (int64_t)st.lag_frames;
  m->lag_seconds = st.lag_seconds;
  snprintf(m->state, sizeof m->state, "%s",
           st.diverged ? "diverged" : st.replay_paused ? "base_sync"
           : st.lag_frames ? "catching_up" : "streaming");
}

static void member_as_leader(cluster_node *n, struct cluster_member *m)
{
  snprintf(m->role, sizeof m->role, "leader");
  snprintf(m->state, sizeof m->state, "leading");
  pthread_mutex_lock(&n->mu);
  replicate_shipper *sh = n->shipper;
  m->epoch = (int64_t)n->epoch;
  m->received_seq = m->applied_seq = m->primary_seq = (int64_t)n->epoch_start_seq;
  if (sh) {
    replicate_shipper_summary s;
    replicate_shipper_get_summary(sh, &s);
    m->received_seq = m->applied_seq = m->primary_seq = (int64_t)s.latest_seq;
  }
  pthread_mutex_unlock(&n->mu);
}

/* Put our member key on our lease when it changed (or the lease did), a
 * position change at most once per ttl unless force (an election, a new
 * role): positions matter to elections, which publish afresh first. */
static void member_publish_when(cluster_node *n, bool force)
{
  pthread_mutex_lock(&n->mu);
  int64_t lease = n->lease_id;
  bool leading = n->leading;
  pthread_mutex_unlock(&n->mu);
  if (!lease || (!leading && !n->standby))
    return;
  struct cluster_member m;
  memset(&m, 0, sizeof m);
  snprintf(m.name, sizeof m.name, "%s", n->name);
  snprintf(m.url, sizeof m.url, "%s", n->url);
  if (leading)
    member_as_leader(n, &m);
  else
    member_as_standby(n, &m);
  char *json = NULL;
  if (cluster_member_format(&m, &json))
    return;
  bool same = lease == n->published_lease && strcmp(json, n->published) == 0;
  bool recent = loom_mono_ns() - n->published_ns < (int64_t)n->o.ttl * 1000000000 &&
                lease == n->published_lease && n->published[0] && !force;
  if (!same && !recent) {
    /* updated_at says when the content changed, not when it was re-put. */
    char *stamped = NULL;
    utc_now(m.updated_at, sizeof m.updated_at);
    if (cluster_member_format(&m, &stamped) == 0 &&
        cluster_etcd_put(n->etcd, n->key_member, stamped, strlen(stamped), lease) == 0) {
      snprintf(n->published, sizeof n->published, "%s", json);
      n->published_lease = lease;
      n->published_ns = loom_mono_ns();
    }
    free(stamped);
  }
  free(json);
}

static void member_publish(cluster_node *n) { member_publish_when(n, false); }

/* ---------------------------------------------------------------------- */
/* Peers and the sync set (leader) */

static bool peer_healthy(const replicate_peer_status *p)
{
  return p->state == REPLICATE_PEER_STREAMING || p->state == REPLICATE_PEER_CATCHING_UP ||
         p->state == REPLICATE_PEER_BASE_SYNC;
}

/* Every other member a peer; peers that left removed. */
static void peers_sync(cluster_node *n, const node_view *v, replicate_shipper *sh)
{
  for (size_t i = 0; i < v->member_count; i++) {
    const struct cluster_member *m = &v->members[i];
    if (strcmp(m->name, n->name) != 0 && m->url[0])
      replicate_shipper_add_peer(sh, m->url); /* EEXIST: already one */
  }
  replicate_peer_status st[NODE_MEMBERS_MAX];
  size_t count = 0;
  replicate_shipper_status(sh, st, NODE_MEMBERS_MAX, &count);
  for (size_t j = 0; j < count && j < NODE_MEMBERS_MAX; j++) {
    bool member = false;
    for (size_t i = 0; i < v->member_count && !member; i++)
      member = strcmp(v->members[i].url, st[j].url) == 0 &&
               strcmp(v->members[i].name, n->name) != 0;
    if (!member)
      replicate_shipper_remove_peer(sh, st[j].url);
  }
}

typedef struct holder {
  const struct cluster_member *m;
  uint64_t seq;
} holder;

static int holder_order(const void *a, const void *b)
{
  const holder *x = a, *y = b;
  if (x->seq != y->seq)
    return x->seq > y->seq ? -1 : 1;
  return strcmp(x->m->name, y->m->name);
}

/* Live members whose peer is healthy and holds every save acknowledged at
 * our epoch, best first. */
static size_t holders_find(cluster_node *n, const node_view *v, replicate_shipper *sh,
                           holder *out)
{
  replicate_peer_status st[NODE_MEMBERS_MAX];
  size_t count = 0, h = 0;
  replicate_shipper_status(sh, st, NODE_MEMBERS_MAX, &count);
  pthread_mutex_lock(&n->mu);
  uint64_t epoch = n->epoch, acked = n->last_acked_seq;
  pthread_mutex_unlock(&n->mu);
  for (size_t j = 0; j < count && j < NODE_MEMBERS_MAX; j++) {
    if (!peer_healthy(&st[j]) || st[j].received_epoch != epoch || st[j].received_seq < acked)
      continue;
    for (size_t i = 0; i < v->member_count; i++)
      if (strcmp(v->members[i].url, st[j].url) == 0 && strcmp(v->members[i].name, n->name))
        out[h++] = (holder){&v->members[i], st[j].received_seq};
  }
  qsort(out, h, sizeof *out, holder_order);
  return h;
}

/* The sync set we published still stands: every member of it is live and
 * its peer healthy. */
static bool sync_set_stands(cluster_node *n, const node_view *v, replicate_shipper *sh)
{
  replicate_peer_status st[NODE_MEMBERS_MAX];
  size_t count = 0;
  replicate_shipper_status(sh, st, NODE_MEMBERS_MAX, &count);
  pthread_mutex_lock(&n->mu);
  bool ok = n->sync_count >= n->o.sync;
  for (size_t i = 0; i < n->sync_count && ok; i++) {
    bool healthy = false;
    for (size_t j = 0; j < count && j < NODE_MEMBERS_MAX; j++)
      healthy = healthy || (strcmp(st[j].url, n->sync_urls[i]) == 0 && peer_healthy(&st[j]));
    ok = healthy && view_member(v, n->sync_names[i]) != NULL;
  }
  pthread_mutex_unlock(&n->mu);
  return ok;
}

/* Write sync = {"epoch": ours, "members": names}; logged when written. */
static int sync_publish(cluster_node *n, const char *const *names, size_t count)
{
  json_t *arr = json_array();
  for (size_t i = 0; i < count; i++)
    json_array_append_new(arr, json_string(names[i]));
  json_t *root = json_pack("{s:I, s:o}", "epoch", (json_int_t)n->epoch, "members", arr);
  char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;
  json_decref(root);
  int rc = text ? cluster_etcd_put(n->etcd, n->key_sync, text, strlen(text), 0)
                : CLUSTER_ENOMEM;
  if (rc == 0)
    node_logf(n, "sync set published: %s", text);
  free(text);
  return rc;
}

/* Choose and publish a sync set of N members that hold everything we
 * acknowledged; acknowledgements rely on it only once etcd has it. */
static void sync_set_keep(cluster_node *n, const node_view *v, replicate_shipper *sh)
{
  if (sync_set_stands(n, v, sh))
    return;
  holder h[NODE_MEMBERS_MAX];
  size_t count = holders_find(n, v, sh, h);
  if (count < n->o.sync) {
    if (!n->sync_short_said)
      node_logf(n, "sync: %zu of %u members hold every acknowledged save: "
                "acknowledgements wait", count, n->o.sync);
    n->sync_short_said = true;
    return;
  }
  n->sync_short_said = false;
  const char *names[NODE_MEMBERS_MAX];
  for (size_t i = 0; i < n->o.sync; i++)
    names[i] = h[i].m->name;
  if (sync_publish(n, names, n->o.sync) == 0) {
    pthread_mutex_lock(&n->mu);
    for (size_t i = 0; i < n->o.sync; i++) {
      snprintf(n->sync_names[i], 64, "%s", h[i].m->name);
      snprintf(n->sync_urls[i], REPLICATE_URL_MAX, "%s", h[i].m->url);
    }
    n->sync_count = n->o.sync;
    pthread_cond_broadcast(&n->cond);
    pthread_mutex_unlock(&n->mu);
  }
}

/* ---------------------------------------------------------------------- */
/* Role changes */

static void leader_key_release(cluster_node *n)
{
  pthread_mutex_lock(&n->mu);
  int64_t lease = n->lease_id;
  pthread_mutex_unlock(&n->mu);
  if (!lease)
    return;
  struct cluster_compare c = {.key = n->key_leader, .target = CLUSTER_CMP_LEASE,
                              .result = CLUSTER_CMP_EQUAL, .number = lease};
  struct cluster_op del = {.kind = CLUSTER_OP_DELETE, .key = n->key_leader};
  struct cluster_txn_result r = {0};
  cluster_etcd_txn(n->etcd, &c, 1, &del, 1, NULL, 0, &r);
  cluster_txn_result_free(&r);
}

/* Stop the writer: no save between begin and end from here on. */
static void writer_stop(cluster_node *n)
{
  pthread_mutex_lock(&n->mu);
  n->writing = false;
  while (n->in_save)
    pthread_cond_wait(&n->cond, &n->mu);
  pthread_mutex_unlock(&n->mu);
}

static void demote(cluster_node *n, bool restart_standby, const char *why)
{
  writer_stop(n);
  n->o.on_stop_writing(n->o.ctx, n);
  pthread_mutex_lock(&n->mu);
  n->leading = false;
  n->shipper = NULL;
  n->sync_count = 0;
  pthread_mutex_unlock(&n->mu);
  leader_key_release(n);
  n->published[0] = '\0';
  say(n, "%s", why);
  if (restart_standby) {
    int rc = node_standby_start(n);
    if (rc)
      node_logf(n, "the standby side did not start again: %s", cluster_strerror(rc));
  }
}

/* E4: the directory at the new epoch, durably. Its position's seq: *seq. */
static int epoch_make_durable(cluster_node *n, uint64_t epoch, uint64_t *seq)
{
  loom_store *s;
  loom_store_options so = {.log_bytes = n->o.commit_log_bytes};
  int rc = loom_store_open_with(n->dir, &so, &s);
  if (rc)
    return rc;
  loom_position pos;
  loom_store_position(s, &pos);
  *seq = pos.seq;
  rc = pos.epoch < epoch ? loom_store_set_epoch(s, epoch) : 0;
  int crc = loom_store_close(s);
  return rc ? rc : crc;
}

static void become_leader(cluster_node *n, uint64_t epoch)
{
  int rc = node_standby_stop(n);
  uint64_t seq = 0;
  if (!rc)
    rc = epoch_make_durable(n, epoch, &seq);
  if (!rc) {
    pthread_mutex_lock(&n->mu);
    n->leading = true;
    n->epoch = epoch;
    n->epoch_start_seq = seq;
    n->last_acked_seq = seq;
    n->sync_count = 0;
    n->elections++;
    pthread_mutex_unlock(&n->mu);
    rc = n->o.on_lead(n->o.ctx, n, epoch);
    if (rc) {
      n->o.on_stop_writing(n->o.ctx, n);
      pthread_mutex_lock(&n->mu);
      n->leading = false;
      pthread_mutex_unlock(&n->mu);
    }
  }
  if (rc) {
    node_logf(n, "could not lead at epoch %" PRIu64 ": %s; giving the leader key back",
              epoch, cluster_strerror(rc));
    leader_key_release(n);
    if (!n->standby && (rc = node_standby_start(n)))
      node_logf(n, "the standby side did not start again: %s", cluster_strerror(rc));
    return;
  }
  pthread_mutex_lock(&n->mu);
  n->writing = true;
  pthread_cond_broadcast(&n->cond);
  pthread_mutex_unlock(&n->mu);
  n->published[0] = '\0';
  say(n, "promoted self to leader at epoch %" PRIu64 " by acquiring the leader key "
      "(from seq %" PRIu64 ")", epoch, seq);
}

/* ---------------------------------------------------------------------- */
/* Election (E1-E3) */

static bool eligible(cluster_node *n, const node_view *v, const struct cluster_member *m)
{
  if (n->o.sync) {
    if (!v->has_sync)
      return true;
    for (size_t i = 0; i < v->sync_count; i++)
      if (strcmp(v->sync[i], m->name) == 0)
        return true;
    return false;
  }
  return m->primary_seq <= m->received_seq ||
         (uint64_t)(m->primary_seq - m->received_seq) <= n->o.max_lag_on_failover;
}

/* a is more advanced than b (E2). */
static bool ahead(const struct cluster_member *a, const struct cluster_member *b)
{
  if (a->epoch != b->epoch)
    return a->epoch > b->epoch;
  if (a->received_seq != b->received_seq)
    return a->received_seq > b->received_seq;
  return strcmp(a->name, b->name) < 0;
}

/* Whether we may campaign; if not, *who is the reason's member. */
static const char *campaign_blocked(cluster_node *n, const node_view *v,
                                    const struct cluster_member *me)
{
  /* A handover the old leader drained to a live member: that one alone
   * campaigns, whatever the others hold (it holds everything committed). */
  bool handover = v->has_switchover && v->switchover_drained && v->switchover_to[0] &&
                  view_member(v, v->switchover_to);
  if (handover && strcmp(v->switchover_to, n->name))
    return "a switchover names another member";
  if (handover)
    return NULL;
  if (!eligible(n, v, me))
    return n->o.sync ? "not in the sync set" : "too far behind (--max-lag-on-failover)";
  for (size_t i = 0; i < v->member_count; i++) {
    const struct cluster_member *m = &v->members[i];
    if (strcmp(m->name, n->name) && eligible(n, v, m) && ahead(m, me))
      return "another eligible member is more advanced";
  }
  return NULL;
}

/* E3: one txn. 1 won, 0 lost, or an error. */
static int campaign(cluster_node *n, const node_view *v, uint64_t own_epoch, uint64_t *epoch)
{
  pthread_mutex_lock(&n->mu);
  int64_t lease = n->lease_id;
  pthread_mutex_unlock(&n->mu);
  if (!lease)
    return 0;
  uint64_t e = ((uint64_t)v->epoch > own_epoch ? (uint64_t)v->epoch : own_epoch) + 1;
  struct cluster_leader l = {.epoch = (int64_t)e};
  snprintf(l.name, sizeof l.name, "%s", n->name);
  snprintf(l.url, sizeof l.url, "%s", n->url);
  char *leader = NULL, counter[24];
  if (cluster_leader_format(&l, &leader))
    return CLUSTER_ENOMEM;
  snprintf(counter, sizeof counter, "%" PRIu64, e);
  struct cluster_compare c[2] = {
      {.key = n->key_leader, .target = CLUSTER_CMP_CREATE, .result = CLUSTER_CMP_EQUAL},
      {.key = n->key_epoch, .result = CLUSTER_CMP_EQUAL,
       .target = v->epoch_mod_revision ? CLUSTER_CMP_MOD : CLUSTER_CMP_CREATE,
       .number = v->epoch_mod_revision}};
  struct cluster_op put[2] = {
      {.kind = CLUSTER_OP_PUT, .key = n->key_epoch, .value = counter,
       .value_len = strlen(counter)},
      {.kind = CLUSTER_OP_PUT, .key = n->key_leader, .value = leader,
       .value_len = strlen(leader), .lease = lease}};
  struct cluster_txn_result r = {0};
  int rc = cluster_etcd_txn(n->etcd, c, 2, put, 2, NULL, 0, &r);
  free(leader);
  bool won = rc == 0 && r.succeeded;
  cluster_txn_result_free(&r);
  *epoch = e;
  return rc ? rc : won;
}

static void election(cluster_node *n)
{
  /* Our position first, then a moment for the others to publish theirs
   * (the watch woke them too), then decide from one fresh snapshot. */
  member_publish_when(n, true);
  if (node_sleep(n, 0.15))
    return;
  node_view v;
  if (view_read(n, &v) || v.has_leader)
    return;
  const struct cluster_member *me = view_member(&v, n->name);
  if (!me) {
    say(n, "no leader, and our member key is not in etcd yet: waiting");
    return;
  }
  const char *why = campaign_blocked(n, &v, me);
  if (why) {
    say(n, "no leader: not campaigning, %s", why);
    return;
  }
  uint64_t epoch = 0;
  int rc = campaign(n, &v, (uint64_t)me->epoch, &epoch);
  if (rc == 1)
    become_leader(n, epoch);
  else
    say(n, "no leader: campaign for epoch %" PRIu64 " lost%s%s", epoch,
        rc < 0 ? ": " : "", rc < 0 ? cluster_strerror(rc) : "");
}

/* ---------------------------------------------------------------------- */
/* Rewind (DESIGN section 3's one exception): our history goes past the
 * branch point of the leader's epoch. The standby side is closed; a
 * receiver of our own, under the node-only permission
 * (replicate_receiver_allow_rewind), takes the leader's image: through
 * the page-hash tree (only the pages that differ), or when that fails
 * (most pages differ, a leader without the tree) its whole backup as a
 * base image. */

typedef struct pull {
  replicate_receiver_base *up;
  bool failed;
} pull;

static size_t pull_write(char *data, size_t size, size_t nmemb, void *ctx)
{
  pull *p = ctx;
  if (replicate_receiver_base_feed(p->up, data, size * nmemb)) {
    p->failed = true;
    return 0;
  }
  return size * nmemb;
}

static int rewind_fetch(cluster_node *n, replicate_receiver_base *up, const char *from)
{
  char url[REPLICATE_URL_MAX + 32];
  snprintf(url, sizeof url, "%s/v1/backup", from);
  struct curl_slist *h;
  CURL *c = node_curl_open(n, url, &h);
  if (!c)
    return REPLICATE_ECURL;
  pull p = {.up = up};
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, pull_write);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &p);
  curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1024L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 10L);
  CURLcode cc = curl_easy_perform(c);
  node_curl_close(c, h);
  return cc == CURLE_OK || p.failed ? 0 : REPLICATE_ECURL;
}

/* The page-hash tree first: only the pages that differ from the
 * leader's image move (replicate_receiver_rewind_from). 0, or an error
 * (logged): then the whole backup. */
static int rewind_tree(cluster_node *n, replicate_receiver *rx,
                       const struct cluster_leader *l, uint64_t *moved)
{
  loom_lineage lineage;
  char why[512] = "";
  int rc = node_leader_lineage(n, l->url, &lineage, why, sizeof why);
  node_leader_source *src = rc ? NULL : malloc(sizeof *src);
  if (!rc && !src)
    rc = ENOMEM;
  if (!rc) {
    node_leader_source_init(src, n, l->url);
    rc = replicate_receiver_rewind_from(rx, &src->src, &lineage, moved, why, sizeof why);
  }
  free(src);
  if (rc)
    node_logf(n, "rewind through the page-hash tree of %s: %s (%s): pulling its backup "
              "instead", l->url, why[0] ? why : cluster_strerror(rc), cluster_error_name(rc));
  return rc;
}

/* The leader's whole backup as a base image. */
static int rewind_base(cluster_node *n, replicate_receiver *rx, const struct cluster_leader *l)
{
  replicate_receiver_base *up;
  replicate_recv_outcome o;
  int rc = replicate_receiver_base_begin(rx, UINT64_MAX, NULL, &up, &o);
  if (rc)
    return rc;
  rc = rewind_fetch(n, up, l->url);
  if (rc) {
    replicate_receiver_base_abort(up);
    return rc;
  }
  replicate_receiver_base_finish(up, &o);
  return o.result == REPLICATE_RECV_OK ? 0 : o.code ? o.code : REPLICATE_EPOSITION;
}

static int rewind_from(cluster_node *n, const struct cluster_leader *l)
{
  replicate_receiver_options ro = {.dir = n->dir, .promote_max_lag = n->o.promote_max_lag,
                                   .commit_log_bytes = n->o.commit_log_bytes};
  replicate_receiver *rx;
  int rc = replicate_receiver_open(&ro, &rx);
  if (rc)
    return rc;
  replicate_receiver_allow_rewind(rx, (uint64_t)l->epoch);
  uint64_t moved = 0;
  bool tree = rewind_tree(n, rx, l, &moved) == 0;
  if (!tree)
    rc = rewind_base(n, rx, l);
  replicate_receiver_status st;
  replicate_receiver_get_status(rx, &st);
  int crc = replicate_receiver_close(rx);
  if (!rc && st.rewound_at_ns) {
    pthread_mutex_lock(&n->mu);
    n->rewinds++;
    n->rewound_frames = st.rewound_frames;
    n->rewound_from_seq = st.rewound_from_seq;
    n->rewound_at_ns = st.rewound_at_ns;
    n->rewound_pages = tree ? moved : st.applied.pages;
    n->rewound_image_pages = st.applied.pages;
    pthread_mutex_unlock(&n->mu);
    node_logf(n, "rewound: %" PRIu64 " commits past the branch point of epoch %" PRId64
              " discarded (from seq %" PRIu64 "); now at seq %" PRIu64 ", %" PRIu64
              " of %" PRIu64 " pages moved (%s)", st.rewound_frames, l->epoch,
              st.rewound_from_seq, st.applied.seq, tree ? moved : st.applied.pages,
              st.applied.pages, tree ? "page-hash tree" : "base image");
  }
  return rc ? rc : crc;
}

typedef struct text_buf {
  char data[256 * 1024];
  size_t len;
} text_buf;

static size_t text_write(char *data, size_t size, size_t nmemb, void *ctx)
{
  text_buf *b = ctx;
  size_t n = size * nmemb;
  if (b->len + n >= sizeof b->data)
    return 0;
  memcpy(b->data + b->len, data, n);
  b->len += n;
  return n;
}

/* Whether the leader's status shows us (our URL) as a diverged standby:
 * the leader judged our position against its history (replicate_place_peer:
 * past its epoch's branch point, or another checksum at a seq we hold). */
static bool leader_says_diverged(cluster_node *n, const struct cluster_leader *l)
{
  CURL *c = curl_easy_init();
  text_buf *b = calloc(1, sizeof *b);
  bool diverged = false;
  if (c && b) {
    char url[REPLICATE_URL_MAX + 32];
    snprintf(url, sizeof url, "%s/v1/status", l->url);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, text_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 1000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (n->ca_file)
      curl_easy_setopt(c, CURLOPT_CAINFO, n->ca_file);
    json_t *root = curl_easy_perform(c) == CURLE_OK ? json_loadb(b->data, b->len, 0, NULL)
                                                    : NULL;
    size_t i;
    json_t *sb;
    json_array_foreach(json_object_get(root, "standbys"), i, sb) {
      const char *u = json_string_value(json_object_get(sb, "url"));
      const char *state = json_string_value(json_object_get(sb, "state"));
      diverged = diverged || (u && state && strcmp(u, n->url) == 0 &&
                              strcmp(state, "diverged") == 0);
    }
    json_decref(root);
  }
  free(b);
  if (c)
    curl_easy_cleanup(c);
  return diverged;
}

/* Our history goes past the branch point of the leader's epoch (or holds
 * another checksum at a seq it holds), as we or the leader found: rewind
 * to the leader. Asked only while we are at an older epoch. */
static void rewind_if_diverged(cluster_node *n, const node_view *v)
{
  http_server_status st;
  http_server_get_status(n->standby, &st);
  if ((uint64_t)v->leader.epoch <= st.received.epoch || !v->leader.url[0] ||
      st.received.seq == 0)
    return;
  bool ours = st.diverged == REPLICATE_EPAST_BRANCH || st.diverged == REPLICATE_EFORK ||
              st.diverged == REPLICATE_EBEHIND;
  if (!ours && !leader_says_diverged(n, &v->leader))
    return;
  say(n, "our history goes past the branch point of %s's epoch %" PRId64
      ": rewinding to it", v->leader.name, v->leader.epoch);
  node_standby_stop(n);
  int rc = rewind_from(n, &v->leader);
  if (rc)
    node_logf(n, "rewind from %s failed: %s (tried again next cycle)", v->leader.url,
              cluster_strerror(rc));
  if ((rc = node_standby_start(n)))
    node_logf(n, "the standby side did not start again: %s", cluster_strerror(rc));
}

/* ---------------------------------------------------------------------- */
/* Planned handover (switchover, planned stop) */

/* The member to hand over to: the one named, or the most advanced
 * eligible peer. */
static const struct cluster_member *handover_target(cluster_node *n, const node_view *v,
                                                    const char *to)
{
  if (to && to[0])
    return strcmp(to, n->name) ? view_member(v, to) : NULL;
  const struct cluster_member *best = NULL;
  for (size_t i = 0; i < v->member_count; i++) {
    const struct cluster_member *m = &v->members[i];
    if (strcmp(m->name, n->name) && eligible(n, v, m) && (!best || ahead(m, best)))
      best = m;
  }
  return best;
}

/* Whether the target's peer holds everything we committed. */
static bool target_holds_all(cluster_node *n, const char *url)
{
  pthread_mutex_lock(&n->mu);
  replicate_shipper *sh = n->shipper;
  bool held = false;
  if (sh) {
    replicate_shipper_summary s;
    replicate_shipper_get_summary(sh, &s);
    replicate_peer_status st[NODE_MEMBERS_MAX];
    size_t count = 0;
    replicate_shipper_status(sh, st, NODE_MEMBERS_MAX, &count);
    for (size_t j = 0; j < count && j < NODE_MEMBERS_MAX; j++)
      held = held || (strcmp(st[j].url, url) == 0 && st[j].received_epoch == s.epoch &&
                      st[j].received_seq >= s.latest_seq);
  }
  pthread_mutex_unlock(&n->mu);
  return held;
}

static void switchover_put(cluster_node *n, const char *to)
{
  char at[40];
  utc_now(at, sizeof at);
  json_t *root = json_pack("{s:s, s:s, s:s, s:b}", "from", n->name, "to", to,
                           "requested_at", at, "drained", 1);
  char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;
  json_decref(root);
  if (text)
    cluster_etcd_put(n->etcd, n->key_switchover, text, strlen(text), 0);
  free(text);
}

/* Saving resumes after a handover that did not happen (a stopping
 * process stays stopped). */
static void writer_resume(cluster_node *n, bool stopping)
{
  pthread_mutex_lock(&n->mu);
  n->writing = !stopping;
  pthread_cond_broadcast(&n->cond);
  pthread_mutex_unlock(&n->mu);
}

/* Stop saving, drain to the target, hand the key over: true when handed
 * over. If the drain cannot finish, writing resumes and the key stays. */
static bool handover(cluster_node *n, const node_view *v, const char *to, bool stopping)
{
  const struct cluster_member *t = handover_target(n, v, to);
  if (!t) {
    say(n, "handover: no member to hand over to%s%s: keeping the leader key",
        to && to[0] ? " named " : "", to ? to : "");
    return false;
  }
  writer_stop(n);
  peers_sync(n, v, n->shipper);
  int64_t until = loom_mono_ns() + (int64_t)(n->o.drain_timeout_seconds * 1e9);
  while (!target_holds_all(n, t->url) && loom_mono_ns() < until &&
         node_lease_alive(n, loom_mono_ns()))
    node_sleep(n, 0.01);
  if (!target_holds_all(n, t->url)) {
    say(n, "handover to %s: the drain did not finish; keeping the leader key", t->name);
    writer_resume(n, stopping);
    return false;
  }
  /* With --sync, the sync set becomes {target, us} before we let go: both
   * hold everything we acknowledged (we stopped saving), and if the target
   * dies before it leads, we are still eligible; without it, a set naming
   * only the dead target would leave no member eligible, ever. */
  const char *pair[2] = {t->name, n->name};
  if (n->o.sync && sync_publish(n, pair, 2)) {
    say(n, "handover to %s: the sync set could not be written; keeping the leader key",
        t->name);
    writer_resume(n, stopping);
    return false;
  }
  switchover_put(n, t->name); /* the others let the target campaign alone */
  char why[200];
  snprintf(why, sizeof why, "handed the leader key over to %s (it holds everything "
           "committed)", t->name);
  demote(n, !stopping, why);
  return true;
}

/* ---------------------------------------------------------------------- */
/* One cycle */

static void leader_cycle(cluster_node *n, const node_view *v, int rc)
{
  if (!node_lease_alive(n, loom_mono_ns())) {
    pthread_mutex_lock(&n->mu);
    n->self_fences++;
    pthread_mutex_unlock(&n->mu);
    demote(n, true, "demoting self: the lease may have expired (no renewal acknowledged "
                    "within ttl - margin); acknowledging nothing more");
    return;
  }
  if (rc)
    return; /* etcd did not answer: the lease decides (F3) */
  if (!v->has_leader || strcmp(v->leader.name, n->name) ||
      (uint64_t)v->leader.epoch != n->epoch) {
    demote(n, true, "demoting self: the leader key is not ours any more");
    return;
  }
  replicate_shipper *sh = n->shipper;
  if (sh) {
    peers_sync(n, v, sh);
    if (n->o.sync)
      sync_set_keep(n, v, sh);
  }
  if (v->has_switchover && strcmp(v->switchover_from, n->name) == 0 &&
      handover(n, v, v->switchover_to, false))
    return;
  member_publish(n);
  say(n, "no action: I am %s, the leader at epoch %" PRIu64, n->name, n->epoch);
}

static void standby_cycle(cluster_node *n, const node_view *v, int rc)
{
  if (!n->standby && node_standby_start(n))
    return;
  member_publish(n);
  if (rc) {
    say(n, "etcd unreachable (%s): serving as a standby; no election until it "
        "returns", cluster_strerror(rc));
    return;
  }
  if (v->has_leader && strcmp(v->leader.name, n->name) == 0) {
    /* Ours, from before a self-fence (etcd kept the lease alive while it
     * was away): give it back, so that an election decides afresh. */
    leader_key_release(n);
    say(n, "the leader key still names us after we stopped leading: released it");
    return;
  }
  if (v->has_leader) {
    if (v->has_switchover && strcmp(v->switchover_to, n->name) == 0 &&
        strcmp(v->switchover_from, v->leader.name))
      cluster_etcd_delete(n->etcd, n->key_switchover, NULL); /* done with */
    rewind_if_diverged(n, v);
    say(n, "no action: I am %s, a standby following %s at epoch %" PRId64, n->name,
        v->leader.name, v->leader.epoch);
    return;
  }
  election(n);
}

/* A new leader clears the switchover that made it. */
static void switchover_done(cluster_node *n, const node_view *v)
{
  if (n->leading && v->has_switchover && strcmp(v->switchover_from, n->name) != 0)
    cluster_etcd_delete(n->etcd, n->key_switchover, NULL);
}

/* One cycle. A standby that nothing woke (no change of the leader key,
 * whose watch wakes it) reads the keys at most once per ttl; a leader
 * every cycle (ttl/3: peers, sync set, switchover). */
static void cycle(cluster_node *n, bool woken)
{
  node_view v;
  pthread_mutex_lock(&n->mu);
  bool cached = !n->leading && !woken && n->view.ok &&
                loom_mono_ns() - n->view_ns < (int64_t)n->o.ttl * 1000000000;
  if (cached)
    v = n->view;
  pthread_mutex_unlock(&n->mu);
  int rc = cached ? 0 : view_read(n, &v);
  pthread_mutex_lock(&n->mu);
  if (!rc && !cached) {
    n->view = v;
    n->view_ns = loom_mono_ns();
  }
  if (!cached)
    n->etcd_ok = rc == 0;
  if (rc && !cached)
    snprintf(n->etcd_error, sizeof n->etcd_error, "reading the cluster's keys: %s (%s)",
             cluster_strerror(rc), cluster_etcd_error(n->etcd));
  bool leading = n->leading;
  n->sync_wanted = false;
  pthread_mutex_unlock(&n->mu);
  if (leading) {
    leader_cycle(n, &v, rc);
    if (!rc)
      switchover_done(n, &v);
  } else {
    standby_cycle(n, &v, rc);
  }
}

/* The planned stop (cluster_node_stop): a leader hands over. */
static void planned_stop(cluster_node *n)
{
  if (!n->leading)
    return;
  node_view v;
  bool handed = view_read(n, &v) == 0 && handover(n, &v, NULL, true);
  if (!handed) {
    demote(n, false, "stopping without handing over: the leader key stays until "
                     "the lease runs out");
    pthread_mutex_lock(&n->mu);
    n->lease_id = 0; /* keep the key: no revoke */
    pthread_mutex_unlock(&n->mu);
    n->stop_result = 1;
  }
}

void *node_loop_main(void *arg)
{
  cluster_node *n = arg;
  double period = n->o.ttl / 3.0;
  for (;;) {
    struct timespec until = loom_deadline(CLOCK_MONOTONIC, (int64_t)(period * 1e9));
    pthread_mutex_lock(&n->mu);
    while (!n->wake && !n->stopping &&
           pthread_cond_timedwait(&n->cond, &n->mu, &until) != ETIMEDOUT)
      ;
    bool woken = n->wake;
    n->wake = false;
    bool stopping = n->stopping;
    pthread_mutex_unlock(&n->mu);
    if (stopping) {
      planned_stop(n);
      return NULL;
    }
    cycle(n, woken);
  }
}
