/*
 * node.c: a cluster member (node.h is the manual; the design is
 * docs/CLUSTER.md "The life cycle"). This file: start and stop, the lease
 * keeper, the leader-key watch, the standby side, the leader's writer
 * bracket and the self-fencing check, status. The HA loop, which decides,
 * is node_loop.c.
 *
 * SELF-FENCING (DESIGN section 6)
 *   F1. The lease keeper notes the CLOCK_MONOTONIC time at which it *sends*
 *       each keep-alive; when etcd answers that the lease lives, the lease
 *       is known alive until that send time + the ttl etcd granted
 *       (lease_deadline_ns). A renewal that answers late moves the deadline
 *       from its send time only, never from the answer.
 *   F2. cluster_node_may_ack answers true only while now < deadline -
 *       margin (margin: ttl/4, at most 1 s), read right before the
 *       acknowledgement, after any wait for the sync set: a process frozen
 *       past its ttl wakes with now past the deadline and acknowledges
 *       nothing.
 *   F3. The HA loop demotes a leader whose deadline - margin passed
 *       (self_fence_total), whatever etcd says later.
 */
#include "node_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "logline.h"

void node_logf(cluster_node *n, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  loom_log_vline(n->o.log, n->o.log_ctx, fmt, ap);
  va_end(ap);
}

static char *dup_or_null(const char *s)
{
  return s ? strdup(s) : NULL;
}

/* ---------------------------------------------------------------------- */
/* The lease keeper (F1) */

bool node_lease_alive(cluster_node *n, int64_t now_ns)
{
  pthread_mutex_lock(&n->mu);
  bool alive = n->lease_id != 0 &&
               now_ns < n->lease_deadline_ns - (int64_t)(n->margin_s * 1e9);
  pthread_mutex_unlock(&n->mu);
  return alive;
}

static void wake_loop_locked(cluster_node *n)
{
  n->wake = true;
  pthread_cond_broadcast(&n->cond);
}

/* Sleep up to seconds, or until stopping: true when stopping. */
bool node_sleep(cluster_node *n, double seconds)
{
  struct timespec until = loom_deadline(CLOCK_MONOTONIC, (int64_t)(seconds * 1e9));
  pthread_mutex_lock(&n->mu);
  while (!n->done && pthread_cond_timedwait(&n->cond, &n->mu, &until) != ETIMEDOUT)
    ;
  bool stop = n->done;
  pthread_mutex_unlock(&n->mu);
  return stop;
}

/* One round: grant when there is no lease, else renew. */
static int lease_round(cluster_node *n)
{
  pthread_mutex_lock(&n->mu);
  int64_t id = n->lease_id;
  pthread_mutex_unlock(&n->mu);
  int64_t sent = loom_mono_ns(), ttl = 0, granted = 0;
  int rc = id ? cluster_etcd_lease_keepalive(n->lease_etcd, id, &ttl)
              : cluster_etcd_lease_grant(n->lease_etcd, n->o.ttl, &id, &granted);
  pthread_mutex_lock(&n->mu);
  n->etcd_ok = rc == 0 || rc == CLUSTER_ELEASE_GONE || rc == CLUSTER_EREFUSED;
  if (!n->etcd_ok)
    snprintf(n->etcd_error, sizeof n->etcd_error, "lease %s: %s (%s)",
             id ? "keep-alive" : "grant", cluster_strerror(rc),
             cluster_etcd_error(n->lease_etcd));
  if (rc == 0) {
    if (granted) {
      n->lease_id = id;
      n->lease_ttl = granted;
      wake_loop_locked(n); /* a new lease: the member key goes on it */
    }
    n->lease_deadline_ns = sent + n->lease_ttl * INT64_C(1000000000);
  } else if (rc == CLUSTER_ELEASE_GONE) {
    n->lease_id = 0;
    n->lease_deadline_ns = 0;
    wake_loop_locked(n);
  }
  pthread_mutex_unlock(&n->mu);
  if (rc && rc != CLUSTER_ELEASE_GONE)
    node_logf(n, "etcd: lease %s: %s (%s)", id ? "keep-alive" : "grant",
              cluster_strerror(rc), cluster_etcd_error(n->lease_etcd));
  return rc;
}

static void *lease_main(void *arg)
{
  cluster_node *n = arg;
  struct cluster_backoff b;
  cluster_backoff_init(&b, 100, 1000, 0);
  double period = n->o.ttl / 3.0;
  for (;;) {
    int rc = lease_round(n);
    double wait = rc == 0 ? period : rc == CLUSTER_ELEASE_GONE ? 0
                                   : cluster_backoff_next(&b) / 1000.0;
    if (rc == 0)
      cluster_backoff_reset(&b);
    if (node_sleep(n, wait))
      return NULL;
  }
}

/* ---------------------------------------------------------------------- */
/* The leader key's watch: wakes the loop at once when the key changes. */

static int watch_event(void *arg, const struct cluster_event *event)
{
  cluster_node *n = arg;
  (void)event;
  pthread_mutex_lock(&n->mu);
  wake_loop_locked(n);
  pthread_mutex_unlock(&n->mu);
  return 0;
}

static void *watch_main(void *arg)
{
  cluster_node *n = arg;
  struct cluster_backoff b;
  cluster_backoff_init(&b, 100, 2000, 0);
  int64_t from = 0;
  for (;;) {
    int rc = cluster_watch_run(n->watch, n->key_leader, false, from, 30000,
                               watch_event, n);
    if (rc == CLUSTER_ECANCELLED)
      return NULL;
    int64_t seen = cluster_watch_revision(n->watch);
    from = rc == CLUSTER_ECOMPACTED ? 0 : seen ? seen + 1 : 0;
    /* Whatever changed while no stream was open: the loop reads it. */
    watch_event(n, NULL);
    if (node_sleep(n, rc == CLUSTER_ETIMEDOUT ? 0
                                                         : cluster_backoff_next(&b) / 1000.0))
      return NULL;
    if (rc == CLUSTER_ETIMEDOUT)
      cluster_backoff_reset(&b);
  }
}

/* ---------------------------------------------------------------------- */
/* The standby side */

static void http_log(void *ctx, const char *line)
{
  cluster_node *n = ctx;
  node_logf(n, "%s", line);
}

int node_standby_start(cluster_node *n)
{
  http_server_options o = {
      .role = HTTP_ROLE_STANDBY,
      .dir = n->dir,
      .listen_host = n->host,
      .listen_port = n->o.listen_port,
      .promote_max_lag = n->o.promote_max_lag,
      .commit_log_bytes = n->o.commit_log_bytes,
      .frame_key = n->o.frame_key,
      .tls_cert_file = n->tls_cert,
      .tls_key_file = n->tls_key,
      .scrub_interval_seconds = n->o.scrub_interval_seconds,
      .scrub_mbps = n->o.scrub_mbps,
      .cluster = &n->source,
      /* Self-repair from the leader that ships to us (fetch.c). */
      .repair_get = node_repair_get,
      .repair_ctx = n,
      .log = http_log,
      .log_ctx = n,
  };
  /* The leader's server may still hold the port a moment after it
   * closed: retry EADDRINUSE for a second. */
  int rc = EADDRINUSE;
  for (int i = 0; i < 50 && rc == EADDRINUSE; i++) {
    pthread_mutex_lock(&n->server_mu);
    o.token = (const uint8_t *)n->token;
    o.token_len = n->token ? strlen(n->token) : 0;
    rc = http_server_start(&o, &n->standby);
    pthread_mutex_unlock(&n->server_mu);
    if (rc == EADDRINUSE)
      node_sleep(n, 0.02);
  }
  return rc;
}

int node_standby_stop(cluster_node *n)
{
  pthread_mutex_lock(&n->server_mu);
  int rc = http_server_stop(n->standby);
  n->standby = NULL;
  pthread_mutex_unlock(&n->server_mu);
  return rc;
}

/* ---------------------------------------------------------------------- */
/* Reloading (SIGHUP) */

int cluster_node_set_token(cluster_node *n, const char *token)
{
  if (!token || !*token)
    return CLUSTER_EINVAL;
  char *copy = strdup(token);
  if (!copy)
    return CLUSTER_ENOMEM;
  pthread_mutex_lock(&n->server_mu);
  int rc = n->token ? 0 : CLUSTER_EINVAL;
  if (!rc && n->standby)
    rc = http_server_set_token(n->standby, (const uint8_t *)copy, strlen(copy));
  char *old = rc ? copy : n->token;
  if (!rc)
    n->token = copy;
  pthread_mutex_unlock(&n->server_mu);
  explicit_bzero(old, strlen(old));
  free(old);
  return rc;
}

int cluster_node_reload_tls(cluster_node *n)
{
  pthread_mutex_lock(&n->server_mu);
  int rc = n->tls_cert && n->standby
               ? http_server_reload_tls(n->standby, n->tls_cert, n->tls_key)
               : 0;
  pthread_mutex_unlock(&n->server_mu);
  return rc;
}

/* ---------------------------------------------------------------------- */
/* The leader's writer */

bool cluster_node_write_begin(cluster_node *n, double timeout_seconds)
{
  struct timespec until =
      loom_deadline(CLOCK_MONOTONIC, (int64_t)(timeout_seconds * 1e9));
  pthread_mutex_lock(&n->mu);
  while (!(n->leading && n->writing) && !n->stopping &&
         pthread_cond_timedwait(&n->cond, &n->mu, &until) != ETIMEDOUT)
    ;
  bool ok = n->leading && n->writing && !n->stopping;
  if (ok)
    n->in_save = true;
  pthread_mutex_unlock(&n->mu);
  return ok;
}

void cluster_node_write_end(cluster_node *n)
{
  pthread_mutex_lock(&n->mu);
  n->in_save = false;
  pthread_cond_broadcast(&n->cond);
  pthread_mutex_unlock(&n->mu);
}

/* Every member of the sync set holds saved. Under mu. */
static bool sync_set_holds_locked(cluster_node *n, const loom_position *saved)
{
  if (n->sync_count < n->o.sync || !n->shipper)
    return false;
  replicate_peer_status st[NODE_MEMBERS_MAX];
  size_t count = 0;
  replicate_shipper_status(n->shipper, st, NODE_MEMBERS_MAX, &count);
  for (size_t i = 0; i < n->sync_count; i++) {
    bool held = false;
    for (size_t j = 0; j < count && j < NODE_MEMBERS_MAX && !held; j++)
      held = strcmp(st[j].url, n->sync_urls[i]) == 0 &&
             st[j].received_epoch == saved->epoch && st[j].received_seq >= saved->seq;
    if (!held)
      return false;
  }
  return true;
}

bool cluster_node_may_ack(cluster_node *n, const loom_position *saved)
{
  int64_t until = loom_mono_ns() + (int64_t)(n->o.sync_timeout_seconds * 1e9);
  pthread_mutex_lock(&n->mu);
  bool ok = n->leading && saved->epoch == n->epoch;
  while (ok && n->o.sync && !sync_set_holds_locked(n, saved)) {
    /* The loop looks for a sync set at once, then at most every 50 ms. */
    int64_t now = loom_mono_ns();
    if (now - n->sync_wake_ns > 50000000) {
      n->sync_wake_ns = now;
      n->sync_wanted = true;
      wake_loop_locked(n);
    }
    struct timespec pause = loom_deadline(CLOCK_MONOTONIC, 1000000);
    pthread_cond_timedwait(&n->cond, &n->mu, &pause);
    ok = n->leading && loom_mono_ns() < until;
  }
  pthread_mutex_unlock(&n->mu);
  /* F2: the last check, right before the acknowledgement. */
  if (!ok || !node_lease_alive(n, loom_mono_ns()))
    return false;
  pthread_mutex_lock(&n->mu);
  if (saved->seq > n->last_acked_seq)
    n->last_acked_seq = saved->seq;
  n->leader_saves++;
  pthread_mutex_unlock(&n->mu);
  return true;
}

void cluster_node_attach_shipper(cluster_node *n, replicate_shipper *shipper)
{
  pthread_mutex_lock(&n->mu);
  n->shipper = shipper;
  pthread_mutex_unlock(&n->mu);
}

/* ---------------------------------------------------------------------- */
/* Status */

static void member_of(const struct cluster_member *m, http_cluster_member *out)
{
  snprintf(out->name, sizeof out->name, "%s", m->name);
  snprintf(out->url, sizeof out->url, "%s", m->url);
  out->leader = strcmp(m->role, "leader") == 0;
  out->epoch = (uint64_t)m->epoch;
  out->received_seq = (uint64_t)m->received_seq;
  out->applied_seq = (uint64_t)m->applied_seq;
  out->lag_frames = (uint64_t)m->lag_frames;
  out->lag_seconds = m->lag_seconds;
  snprintf(out->state, sizeof out->state, "%s", m->state);
}

static void source_get(void *ctx, http_cluster_status *c)
{
  cluster_node *n = ctx;
  int64_t now = loom_mono_ns();
  pthread_mutex_lock(&n->mu);
  const node_view *v = &n->view;
  snprintf(c->name, sizeof c->name, "%s", n->cluster_name);
  snprintf(c->member, sizeof c->member, "%s", n->name);
  if (v->has_leader) {
    snprintf(c->leader, sizeof c->leader, "%s", v->leader.name);
    snprintf(c->leader_url, sizeof c->leader_url, "%s", v->leader.url);
    c->epoch = (uint64_t)v->leader.epoch;
  }
  c->lease_ttl = (unsigned)(n->lease_ttl ? n->lease_ttl : n->o.ttl);
  c->etcd_ok = n->etcd_ok;
  snprintf(c->etcd_error, sizeof c->etcd_error, "%s", n->etcd_error);
  c->sync_count = v->has_sync ? v->sync_count : 0;
  memcpy(c->sync_set, v->sync, sizeof c->sync_set);
  c->member_count = v->member_count;
  for (size_t i = 0; i < v->member_count; i++)
    member_of(&v->members[i], &c->members[i]);
  c->is_leader = n->leading;
  double left = n->lease_id ? (double)(n->lease_deadline_ns - now) / 1e9 : 0;
  c->lease_remaining_seconds = left > 0 ? left : 0;
  c->elections_total = n->elections;
  c->self_fence_total = n->self_fences;
  c->rewound = n->rewound_at_ns != 0;
  c->rewound_frames = n->rewound_frames;
  c->rewound_from_seq = n->rewound_from_seq;
  c->rewound_at_ns = n->rewound_at_ns;
  c->rewound_pages = n->rewound_pages;
  c->rewound_image_pages = n->rewound_image_pages;
  pthread_mutex_unlock(&n->mu);
}

const void *cluster_node_http_source(cluster_node *n) { return &n->source; }

uint16_t cluster_node_port(const cluster_node *n) { return n->o.listen_port; }

void cluster_node_get_state(cluster_node *n, struct cluster_node_state *out)
{
  memset(out, 0, sizeof *out);
  int64_t now = loom_mono_ns();
  pthread_mutex_lock(&n->mu);
  out->leading = n->leading;
  if (n->view.has_leader) {
    out->epoch = (uint64_t)n->view.leader.epoch;
    snprintf(out->leader, sizeof out->leader, "%s", n->view.leader.name);
  }
  out->etcd_ok = n->etcd_ok;
  double left = n->lease_id ? (double)(n->lease_deadline_ns - now) / 1e9 : 0;
  out->lease_remaining_seconds = left > 0 ? left : 0;
  out->elections_total = n->elections;
  out->self_fence_total = n->self_fences;
  out->rewinds_total = n->rewinds;
  out->leader_saves = n->leader_saves;
  pthread_mutex_unlock(&n->mu);
}

/* ---------------------------------------------------------------------- */
/* Start and stop */

static int options_check(const struct cluster_node_options *o)
{
  if (!o || !cluster_name_valid(o->name) || !o->dir || !o->listen_host ||
      !o->listen_port || !o->etcd || !o->on_lead || !o->on_stop_writing ||
      (o->cluster && !cluster_name_valid(o->cluster)) || (o->ttl && o->ttl < 2) ||
      o->sync > NODE_MEMBERS_MAX - 1)
    return CLUSTER_EINVAL;
  return 0;
}

static int keys_make(cluster_node *n)
{
  char member[80];
  snprintf(member, sizeof member, "members/%s", n->name);
  const char *c = n->cluster_name;
  int rc = cluster_key(n->key_member, NODE_KEY_MAX, c, member);
  if (!rc) rc = cluster_key(n->key_leader, NODE_KEY_MAX, c, "leader");
  if (!rc) rc = cluster_key(n->key_epoch, NODE_KEY_MAX, c, "epoch");
  if (!rc) rc = cluster_key(n->key_sync, NODE_KEY_MAX, c, "sync");
  if (!rc) rc = cluster_key(n->key_switchover, NODE_KEY_MAX, c, "switchover");
  if (!rc) rc = cluster_key(n->key_members, NODE_KEY_MAX, c, "members/");
  if (!rc) rc = cluster_key(n->key_prefix, NODE_KEY_MAX, c, "");
  return rc;
}

/* The options, copied, with their defaults. */
static int node_configure(cluster_node *n, const struct cluster_node_options *opt)
{
  n->o = *opt;
  n->name = strdup(opt->name);
  n->dir = strdup(opt->dir);
  n->host = strdup(opt->listen_host);
  n->endpoints = strdup(opt->etcd);
  n->cluster_name = strdup(opt->cluster ? opt->cluster : CLUSTER_DEFAULT_NAME);
  n->token = dup_or_null(opt->token);
  n->ca_file = dup_or_null(opt->ca_file);
  n->tls_cert = dup_or_null(opt->tls_cert);
  n->tls_key = dup_or_null(opt->tls_key);
  if (opt->url) {
    n->url = strdup(opt->url);
  } else if ((n->url = malloc(300)) != NULL) {
    snprintf(n->url, 300, "%s://%s:%u", opt->tls_cert ? "https" : "http",
             opt->listen_host, (unsigned)opt->listen_port);
  }
  if (!n->name || !n->dir || !n->host || !n->endpoints || !n->cluster_name || !n->url ||
      (opt->token && !n->token) || (opt->ca_file && !n->ca_file) ||
      (opt->tls_cert && !n->tls_cert) || (opt->tls_key && !n->tls_key))
    return CLUSTER_ENOMEM;
  if (!opt->tls_cert != !opt->tls_key)
    return CLUSTER_EINVAL;
  n->o.ttl = opt->ttl ? opt->ttl : 5;
  n->o.max_lag_on_failover = opt->max_lag_on_failover ? opt->max_lag_on_failover : 1000;
  n->o.sync_timeout_seconds = opt->sync_timeout_seconds > 0 ? opt->sync_timeout_seconds : 10;
  n->o.drain_timeout_seconds = opt->drain_timeout_seconds > 0 ? opt->drain_timeout_seconds
                                                              : 30;
  n->margin_s = n->o.ttl / 4.0 < 1.0 ? n->o.ttl / 4.0 : 1.0;
  n->source = (http_cluster_source){.ctx = n, .get = source_get};
  cluster_backoff_init(&n->backoff, 100, 2000, 0);
  return keys_make(n);
}

/* The etcd clients: requests bounded well inside the ttl. */
static int clients_open(cluster_node *n)
{
  struct cluster_etcd_options eo = {.endpoints = n->endpoints,
                                    .timeout_ms = (long)n->o.ttl * 1000 / 4,
                                    .connect_timeout_ms = 300};
  int rc = cluster_etcd_open(&eo, &n->etcd);
  if (!rc)
    rc = cluster_etcd_open(&eo, &n->lease_etcd);
  if (!rc)
    rc = cluster_watch_open(&eo, &n->watch);
  return rc;
}

static void node_free(cluster_node *n)
{
  cluster_etcd_close(n->etcd);
  cluster_etcd_close(n->lease_etcd);
  cluster_watch_close(n->watch);
  free(n->name), free(n->dir), free(n->host), free(n->url), free(n->endpoints);
  free(n->cluster_name), free(n->ca_file), free(n->tls_cert), free(n->tls_key);
  if (n->token)
    explicit_bzero(n->token, strlen(n->token));
  free(n->token);
  pthread_cond_destroy(&n->cond);
  pthread_mutex_destroy(&n->mu);
  pthread_mutex_destroy(&n->server_mu);
  free(n);
}

static int threads_start(cluster_node *n)
{
  int rc = pthread_create(&n->lease_thread, NULL, lease_main, n);
  n->lease_started = rc == 0;
  if (!rc)
    n->watch_started = (rc = pthread_create(&n->watch_thread, NULL, watch_main, n)) == 0;
  if (!rc)
    n->loop_started = (rc = pthread_create(&n->loop_thread, NULL, node_loop_main, n)) == 0;
  return rc;
}

static void threads_join(cluster_node *n)
{
  pthread_mutex_lock(&n->mu);
  n->stopping = true;
  wake_loop_locked(n);
  pthread_mutex_unlock(&n->mu);
  if (n->loop_started)
    pthread_join(n->loop_thread, NULL); /* it sets done */
  pthread_mutex_lock(&n->mu);
  n->done = true;
  pthread_cond_broadcast(&n->cond);
  pthread_mutex_unlock(&n->mu);
  cluster_watch_cancel(n->watch);
  if (n->watch_started)
    pthread_join(n->watch_thread, NULL);
  if (n->lease_started)
    pthread_join(n->lease_thread, NULL);
}

int cluster_node_start(const struct cluster_node_options *opt, cluster_node **out)
{
  *out = NULL;
  if (options_check(opt))
    return CLUSTER_EINVAL;
  cluster_node *n = calloc(1, sizeof *n);
  if (!n)
    return CLUSTER_ENOMEM;
  pthread_mutex_init(&n->mu, NULL);
  pthread_mutex_init(&n->server_mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&n->cond, &ca);
  pthread_condattr_destroy(&ca);
  int rc = node_configure(n, opt);
  if (!rc)
    rc = clients_open(n);
  if (!rc)
    rc = node_standby_start(n);
  if (!rc)
    rc = threads_start(n);
  if (rc) {
    threads_join(n);
    if (n->standby)
      node_standby_stop(n);
    node_free(n);
    return rc;
  }
  *out = n;
  return 0;
}

int cluster_node_stop(cluster_node *n)
{
  if (!n)
    return 0;
  threads_join(n); /* the loop makes the planned stop */
  int rc = n->stop_result;
  if (n->lease_id && cluster_etcd_lease_revoke(n->etcd, n->lease_id) == 0)
    node_logf(n, "lease revoked: member key %s removed", n->key_member);
  if (n->standby) {
    int src = node_standby_stop(n);
    if (!rc && src)
      rc = src;
  }
  node_free(n);
  return rc;
}
