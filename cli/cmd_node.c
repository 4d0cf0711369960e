/*
 * cmd_node.c: loomship node, a cluster member (DESIGN section 6): a standby
 * of the current leader, or the leader running the bundled example
 * application (primary_open/step/close of cmd_primary.c) and shipping to
 * every other member found in etcd. The life cycle is cluster/node.h's;
 * this file is its application: open the example on the directory when
 * told to lead, save at --rate, acknowledge (the --ack-log line) only when
 * cluster_node_may_ack says so, close it when told to stop writing.
 * SIGTERM, or --saves N saves acknowledged as leader, make a planned stop
 * (hand over to the most advanced member, nothing lost) and exit 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "clock.h"
#include "etcd.h"
#include "logging.h"
#include "node.h"
#include "primary.h"
#include "replicate.h"
#include "signals.h"

#define NODE_MAX_PEERS 31

typedef struct node_args {
  const char *name, *dir, *listen, *etcd, *cluster, *advertise, *token_file, *ack_log,
      *ca_file, *frame_key_file, *tls_cert, *tls_key;
  uint64_t ttl, sync, max_lag, saves, rate, pages, keys, arena_pages, seed, drain,
      sync_timeout, level, log_max_mb, scrub_interval, scrub_mbps, commit_log_mb;
  cli_archiver_args archive;
  cli_log_args log;
} node_args;

/* The application: the example table, open while this node leads. mu
 * orders opening and closing it (the HA loop's callbacks) with SIGHUP's
 * reload (the main thread), which hands the token and certificate to its
 * server and shipper. */
typedef struct node_app {
  pthread_mutex_t mu;
  primary_config cfg;         /* its token: see token */
  char *token;                /* under mu: the token the next leadership uses */
  primary_node n;
  bool open;                  /* under mu */
  uint64_t seed;
  cluster_node *node;         /* for the reload */
  replicate_frame_key *frame_key; /* for the reload: its holders share it */
  replicate_archiver_options archive; /* --archive: the leader's archiver */
  char writer[1200];
  double drain_seconds;       /* --drain-timeout: the archive's, too */
} node_app;

static int app_lead(void *ctx, cluster_node *node, uint64_t epoch)
{
  node_app *app = ctx;
  pthread_mutex_lock(&app->mu);
  primary_config cfg = app->cfg;
  cfg.token = app->token;
  cfg.cluster = cluster_node_http_source(node);
  int rc = primary_open(&app->n, &cfg);
  if (rc) {
    primary_close(&app->n, 0);
    pthread_mutex_unlock(&app->mu);
    return CLUSTER_EINVAL;
  }
  app->open = true;
  pthread_mutex_unlock(&app->mu);
  app->n.rng = app->seed ^ (epoch * 0x9e3779b97f4a7c15u);
  if (!app->n.rng)
    app->n.rng = 1;
  cluster_node_attach_shipper(node, app->n.shipper);
  return 0;
}

static void app_stop_writing(void *ctx, cluster_node *node)
{
  node_app *app = ctx;
  cluster_node_attach_shipper(node, NULL);
  pthread_mutex_lock(&app->mu);
  /* What this epoch committed goes to the archive before its writer stops
   * (bounded: the node waits to rejoin as a standby meanwhile). */
  if (app->open && app->n.archiver)
    replicate_archiver_drain(app->n.archiver,
                             app->drain_seconds < 10 ? app->drain_seconds : 10);
  if (app->open)
    primary_close(&app->n, 0); /* the node drained what a handover needs */
  app->open = false;
  pthread_mutex_unlock(&app->mu);
}

/* SIGHUP (cli_reload's targets): the node's standby server, and the
 * leader's server and shipper while it leads. */
static const char *app_set_token(void *ctx, const char *token)
{
  node_app *app = ctx;
  int rc = cluster_node_set_token(app->node, token);
  if (rc)
    return cluster_strerror(rc);
  char *copy = strdup(token);
  if (!copy)
    return "out of memory";
  pthread_mutex_lock(&app->mu);
  int src = app->open && app->n.server
                ? http_server_set_token(app->n.server, (const uint8_t *)copy, strlen(copy))
                : 0;
  int shrc = app->open && app->n.shipper ? replicate_shipper_set_token(app->n.shipper, copy)
                                         : 0;
  char *old = app->token;
  app->token = copy; /* the next leadership's, whatever the running one took */
  pthread_mutex_unlock(&app->mu);
  cli_token_forget(old);
  return src ? http_strerror(src) : shrc ? replicate_strerror(shrc) : NULL;
}

static const char *app_reload_tls(void *ctx)
{
  node_app *app = ctx;
  int rc = cluster_node_reload_tls(app->node);
  if (rc)
    return cluster_strerror(rc);
  pthread_mutex_lock(&app->mu);
  int src = app->open && app->n.server
                ? http_server_reload_tls(app->n.server, app->cfg.tls_cert, app->cfg.tls_key)
                : 0;
  pthread_mutex_unlock(&app->mu);
  return src ? http_strerror(src) : NULL;
}

/* SIGHUP: the leader's archiver, while it leads. */
static int app_reload_archive_key(void *ctx, char *why, size_t why_len)
{
  node_app *app = ctx;
  pthread_mutex_lock(&app->mu);
  int rc = app->open ? primary_reload_archive_key(&app->n, why, why_len) : 0;
  pthread_mutex_unlock(&app->mu);
  return rc;
}

/* Wait for the next save's turn (1/rate after the last) or a stop signal:
 * true on a stop signal. */
static bool pace(sigset_t *stop, double *next, double period, const cli_reload *reload)
{
  double wait = *next - loom_mono_s();
  /* SIGHUP is not a stop: cli_wait_stop re-reads (reload) and answers 0. */
  if (cli_wait_stop(stop, wait > 0 ? wait : 0, reload) > 0)
    return true;
  *next += period;
  if (*next < loom_mono_s() - 1)
    *next = loom_mono_s();
  return false;
}

/* One save as leader, acknowledged only when the node allows it: 1 when
 * acknowledged, 0 when not, -1 on a storage error (said). */
static int save_once(cluster_node *node, node_app *app, int ack_fd)
{
  int rc = primary_step(&app->n);
  if (rc == REPLICATE_EFENCED || rc == REPLICATE_ESYNC_TIMEOUT)
    return 0;
  if (rc) {
    cli_fail("node", "save: %s", replicate_strerror(rc));
    return -1;
  }
  if (!cluster_node_may_ack(node, &app->n.committed)) {
    char hex[17];
    char line[160];
    snprintf(line, sizeof line, "save of epoch %" PRIu64 " seq %" PRIu64 " (%s) not "
             "acknowledged (lease or sync set)", app->n.committed.epoch,
             app->n.committed.seq, cli_hex64(app->n.committed.checksum, hex));
    cli_log("node", line);
    return 0;
  }
  primary_ack_log_write(ack_fd, &app->n.committed);
  return 1;
}

/* The writer: saves while leading until a stop signal or --saves. */
static int run_writer(cluster_node *node, node_app *app, sigset_t *stop,
                      const node_args *a, int ack_fd)
{
  double period = 1.0 / (double)a->rate, next = loom_mono_s();
  uint64_t acked = 0;
  cli_reload reload = {.who = "node", .token_file = a->token_file, .tls_cert = a->tls_cert,
                       .tls_key = a->tls_key, .set_token = app_set_token,
                       .reload_tls = app_reload_tls, .ctx = app,
                       .frame_key_file = a->frame_key_file, .frame_key = app->frame_key,
                       .archive_key_file = a->archive.url ? a->archive.access.key_file : NULL,
                       .reload_archive_key = app_reload_archive_key, .archive_ctx = app};
  for (;;) {
    if (pace(stop, &next, period, &reload)) {
      cli_log("node", "stop signal: a planned stop");
      return 0;
    }
    if (!cluster_node_write_begin(node, 0))
      continue;
    int r = save_once(node, app, ack_fd);
    cluster_node_write_end(node);
    if (r < 0)
      return 1;
    acked += (uint64_t)r;
    if (a->saves && acked >= a->saves) {
      cli_log("node", "--saves reached: a planned stop");
      return 0;
    }
  }
}

#define AT(field) offsetof(node_args, field)
#define NUMBER CLI_NUMBER_ROW
#define TEXT CLI_TEXT_ROW
static const cli_option node_options[] = {
    {.name = "name", .arg = "NAME", .kind = CLI_TEXT, .offset = AT(name), .required = true,
     .help = "this member's name in the cluster (1-63 of A-Z a-z 0-9 . _ -)"},
    {.name = "dir", .arg = "DIR", .kind = CLI_TEXT, .offset = AT(dir), .required = true,
     .help = "the image directory (created 0700 with its missing parents)"},
    {.name = "listen", .arg = "HOST:PORT", .kind = CLI_TEXT, .offset = AT(listen),
     .required = true, .help = "where to serve the HTTP API, as standby and as leader "
                               "(a fixed port: the other members ship to it)"},
    {.name = "etcd", .arg = "URL[,URL]...", .kind = CLI_TEXT, .offset = AT(etcd),
     .required = true, .help = "etcd's client URLs"},
    TEXT("cluster", "NAME", cluster, "loomship", "the cluster (the keys /loomship/NAME/)"),
    NUMBER("ttl", "SECONDS", ttl, 2, 3600, "5",
           "the lease ttl: a dead leader is replaced within about this; a leader "
           "acknowledges nothing once ttl - margin passed since its last renewal was sent"),
    NUMBER("sync", "N", sync, 0, NODE_MAX_PEERS, "0",
           "N members (the sync set, published in etcd) hold every acknowledged save; "
           "only they may win an election; 0: asynchronous"),
    NUMBER("max-lag-on-failover", "FRAMES", max_lag, 1, UINT64_MAX, "1000",
           "without --sync, a member further behind the primary seq it heard never wins"),
    TEXT("advertise", "URL", advertise, "http(s)://HOST:PORT of --listen",
         "the URL the other members ship to"),
    NUMBER("saves", "N", saves, 0, UINT64_MAX, "0",
           "after N saves acknowledged as leader, make a planned stop and exit; 0: run "
           "until SIGTERM"),
    NUMBER("rate", "HZ", rate, 1, 100000, "10", "saves a second while leading"),
    PRIMARY_TABLE_OPTIONS,
    TEXT("ack-log", "FILE", ack_log, "none",
         "append \"EPOCH SEQ CHECKSUM\" (one write) for each save acknowledged, only "
         "while the lease is surely alive"),
    TEXT("token-file", "F", token_file, "none",
         "the bearer token of every member (writes, backups, rewinds)"),
    TEXT("ca-file", "F", ca_file, "the system's CAs", "CA certificates for https members"),
    PRIMARY_TLS_OPTIONS,
    NUMBER("drain-timeout", "SECONDS", drain, 1, 86400, "30",
           "a planned stop waits this long for the next leader to hold everything"),
    NUMBER("sync-timeout", "SECONDS", sync_timeout, 1, 86400, "10",
           "with --sync, the longest a save waits for the sync set"),
    PRIMARY_FRAME_OPTIONS,
    CLI_FRAME_KEY_ROW(node_args, frame_key_file),
    PRIMARY_SCRUB_OPTIONS("", "what it finds shows in status \"integrity\""),
    CLI_ARCHIVER_OPTIONS(node_args, archive),
    CLI_LOG_OPTIONS(node_args, log),
    {0},
};
#undef TEXT
#undef NUMBER
#undef AT

static void node_log(void *ctx, const char *line) { cli_log(ctx, line); }

/* The member's and the application's settings. */
static int node_configure(const node_args *a, const char *host, uint16_t port,
                          char *token, const replicate_frame_key *frame_key,
                          node_app *app, struct cluster_node_options *o)
{
  if (a->keys + a->keys / 4 + 64 > a->arena_pages)
    return cli_fail("node", "--keys %llu needs an arena of more than %llu pages",
                    (unsigned long long)a->keys, (unsigned long long)a->arena_pages);
  if (!cluster_name_valid(a->name) || (a->cluster && !cluster_name_valid(a->cluster)))
    return cli_usage_error(&cmd_node, "--name and --cluster take 1-63 of A-Z a-z 0-9 . _ -");
  if (port == 0)
    return cli_usage_error(&cmd_node, "--listen needs a fixed port (it is advertised)");
  if (!a->tls_cert != !a->tls_key)
    return cli_usage_error(&cmd_node, "--tls-cert and --tls-key go together");
  app->cfg = (primary_config){
      .who = "node", .dir = a->dir, .arena_pages = a->arena_pages, .keys = a->keys,
      .pages = a->pages, .token = token, .ca_file = a->ca_file,
      .zstd_level = (int)a->level, .log_max_bytes = a->log_max_mb << 20,
      .commit_log_bytes = a->commit_log_mb << 20,
      .listen_host = host, .listen_port = port, .max_peers = NODE_MAX_PEERS,
      .advertise_url = a->advertise, .frame_key = frame_key,
      .tls_cert = a->tls_cert, .tls_key = a->tls_key,
      .scrub_interval_seconds = (double)a->scrub_interval,
      .scrub_mbps = (double)a->scrub_mbps};
  cli_archiver_configure(&a->archive, "node", a->dir, &app->archive, app->writer,
                         sizeof app->writer);
  if (a->archive.url) { /* only the leader archives, at its epoch */
    if (cli_archiver_check("node", &app->archive.access))
      return 1;
    app->cfg.archive = &app->archive;
  }
  app->drain_seconds = (double)a->drain;
  app->token = token;
  app->seed = a->seed ? a->seed
                      : (((uint64_t)time(NULL) * 2654435761u) ^ ((uint64_t)getpid() << 32)) | 1;
  *o = (struct cluster_node_options){
      .name = a->name, .dir = a->dir, .listen_host = host, .listen_port = port,
      .url = a->advertise, .etcd = a->etcd, .cluster = a->cluster, .ttl = (unsigned)a->ttl,
      .sync = (unsigned)a->sync, .max_lag_on_failover = a->max_lag,
      .sync_timeout_seconds = (double)a->sync_timeout,
      .drain_timeout_seconds = (double)a->drain, .token = token, .ca_file = a->ca_file,
      .frame_key = frame_key, .tls_cert = a->tls_cert, .tls_key = a->tls_key,
      .scrub_interval_seconds = (double)a->scrub_interval,
      .scrub_mbps = (double)a->scrub_mbps, .commit_log_bytes = a->commit_log_mb << 20,
      .on_lead = app_lead,
      .on_stop_writing = app_stop_writing, .ctx = app,
      .log = node_log, .log_ctx = (void *)"node"};
  return 0;
}

static int run_node(void *args)
{
  const node_args *a = args;
  int lrc = cli_logging_setup(&cmd_node, &a->log);
  if (lrc)
    return lrc;
  char *host = NULL, *token = NULL;
  uint16_t port;
  if (cli_parse_listen("node", a->listen, &host, &port))
    return 2;
  int rc = a->token_file ? cli_token_file_read("node", a->token_file, &token) : 0;
  static node_app app; /* the callbacks' context outlives run_node's frame */
  pthread_mutex_init(&app.mu, NULL);
  struct cluster_node_options o;
  replicate_frame_key *frame_key = NULL;
  if (!rc)
    rc = cli_frame_key_read("node", a->frame_key_file, &frame_key);
  if (!rc)
    rc = node_configure(a, host, port, token, frame_key, &app, &o);
  int ack_fd = -1;
  if (!rc && a->ack_log &&
      (ack_fd = open(a->ack_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600)) < 0)
    rc = cli_fail("node", "--ack-log %s: %s", a->ack_log, strerror(errno));
  sigset_t stop;
  cli_block_stop_signals(&stop);
  cluster_node *node = NULL;
  if (!rc && (rc = cluster_node_start(&o, &node)) != 0)
    rc = cli_fail("node", "%s: %s", a->dir, cluster_strerror(rc));
  if (!rc) {
    app.node = node;
    app.frame_key = frame_key;
    printf("listening on %s://%s:%u\n", a->tls_cert ? "https" : "http", host,
           (unsigned)port);
    fflush(stdout);
    cli_notify_ready("member");
    rc = run_writer(node, &app, &stop, a, ack_fd);
    cli_notify("STOPPING=1");
    int src = cluster_node_stop(node);
    if (src == 1)
      cli_log("node", "stopped without handing over (no member held everything in "
                      "time): the leader key expires with the lease");
    else if (src && !rc)
      rc = cli_fail("node", "stop: %s", cluster_strerror(src));
  }
  if (ack_fd >= 0)
    close(ack_fd);
  cli_token_forget(app.token ? app.token : token); /* SIGHUP may have replaced it */
  replicate_frame_key_free(frame_key); /* the node is stopped */
  free(host);
  return rc;
}

const cli_command cmd_node = {
    .name = "node",
    .summary = "run a cluster member: a standby of the leader etcd names, or the leader",
    .options = node_options, .args_size = sizeof(node_args), .run = run_node};
