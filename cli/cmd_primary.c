/*
 * cmd_primary.c: loomship primary, the bundled example application run as
 * a primary: a key-value table changing about K pages per save, HZ saves a
 * second, every commit shipped to every --standby; the read endpoints on
 * --listen. Stops after --saves N (0: at SIGTERM), then waits up to
 * --drain-timeout for the standbys to hold everything it committed.
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
#include "client.h"
#include "clock.h"
#include "faultio.h"
#include "kv.h"
#include "logging.h"
#include "primary.h"
#include "replicate.h"
#include "server.h"
#include "signals.h"


#define MAX_STANDBYS 32

/* ---------------------------------------------------------------------- */
/* The node: kv table + replication log + shipper + read endpoints. */

static void on_commit_tweak(loom_options *o, void *ctx)
{
  primary_node *n = ctx;
  o->on_commit = primary_on_commit;
  o->commit_ctx = n;
  /* A page rotted on disk is refused before its save's commit point,
   * never hashed into a valid commit (docs/INTEGRITY.md 1a). */
  o->flags |= LOOM_APPLY_ASYNC | LOOM_CHECK_PREVIOUS;
  o->io = faultio_from_env(); /* NULL (POSIX) unless a crash test asks */
  o->log_bytes = n->cfg.commit_log_bytes;
}

int primary_on_commit(void *ctx, loom *l, const loom_commit *c)
{
  primary_node *n = ctx;
  pthread_mutex_lock(&n->lock);
  n->committed = c->after;
  pthread_mutex_unlock(&n->lock);
  n->bytes_raw += c->page_count * LOOM_PAGE_SIZE;
  if (n->archiver)
    replicate_archiver_on_commit(n->archiver, l, c); /* never fails a commit */
  return n->shipper ? replicate_shipper_on_commit(n->shipper, l, c) : 0;
}

static void source_position(void *ctx, loom_position *out)
{
  primary_node *n = ctx;
  pthread_mutex_lock(&n->lock);
  *out = n->committed;
  pthread_mutex_unlock(&n->lock);
}

static int source_snapshot(void *ctx, loom_snapshot **out)
{
  primary_node *n = ctx;
  return loom_store_snapshot_open(loom_get_store(kv_loom(n->table)), out);
}

static void source_history(void *ctx, loom_history *out)
{
  primary_node *n = ctx;
  loom_lineage lineage;
  loom_store_lineage(loom_get_store(kv_loom(n->table)), &lineage);
  *out = lineage.history;
}

static bool source_fenced(void *ctx)
{
  primary_node *n = ctx;
  if (!n->shipper)
    return false;
  replicate_shipper_summary s;
  replicate_shipper_get_summary(n->shipper, &s);
  return s.fenced;
}

/* The shipper fills the server's per-peer status directly. */
static size_t source_peers(void *ctx, replicate_peer_status *out, size_t cap)
{
  primary_node *n = ctx;
  size_t count = 0;
  if (n->shipper)
    replicate_shipper_status(n->shipper, out, cap, &count);
  return count;
}

static void source_sync(void *ctx, http_sync_status *out)
{
  primary_node *n = ctx;
  out->required = n->cfg.sync_count;
  if (n->shipper) {
    replicate_shipper_summary s;
    replicate_shipper_get_summary(n->shipper, &s);
    out->degraded = s.sync_degraded;
    out->degraded_since_ns = s.sync_degraded_since_ns;
  }
}

static void source_commit_log(void *ctx, loom_log_stats *out)
{
  primary_node *n = ctx;
  loom_get_log_stats(kv_loom(n->table), out); /* with RECENT's memory */
}

static void source_log_stats(void *ctx, replicate_log_stats *out)
{
  primary_node *n = ctx;
  replicate_log_get_stats(n->log, out);
}

static void source_save_durations(void *ctx, replicate_duration_histogram *out)
{
  primary_node *n = ctx;
  pthread_mutex_lock(&n->lock);
  *out = n->save_durations;
  pthread_mutex_unlock(&n->lock);
}

static void source_archive(void *ctx, replicate_archive_status *out)
{
  replicate_archiver_status(((primary_node *)ctx)->archiver, out);
}

static void ship_log(void *ctx, const char *line) { cli_log(ctx, line); }

/* The replication log is a cache of the store: damage found at open costs
 * frames (standbys that need them get a base image), never the start. */
static void log_repaired(void *ctx, const replicate_log_repair *r)
{
  char text[400], line[512];
  snprintf(line, sizeof line, "replication log repaired: %s (standbys that need "
           "those seqs get a base image)",
           replicate_log_repair_describe(r, text, sizeof text));
  cli_log(ctx, line);
}

/* Tell the standbys where trees and pages are served (self-repair): the
 * configured URL, or the server's own when it listens on a named host. */
static int advertise(primary_node *n, const primary_config *cfg)
{
  char url[300];
  const char *host = cfg->listen_host;
  if (cfg->advertise_url)
    snprintf(url, sizeof url, "%s", cfg->advertise_url);
  else if (n->server && host && strcmp(host, "0.0.0.0") && strcmp(host, "::"))
    snprintf(url, sizeof url, strchr(host, ':') ? "%s://[%s]:%u" : "%s://%s:%u",
             cfg->tls_cert ? "https" : "http", host, (unsigned)http_server_port(n->server));
  else
    return 0;
  int rc = n->shipper ? replicate_shipper_set_upstream(n->shipper, url) : 0;
  if (rc)
    return cli_fail(cfg->who, "--advertise %s: %s", url, replicate_strerror(rc));
  return 0;
}

/* The replication log. It derives its segment size from the cap
 * (replicate.h); it is a cache of the store, whose commit is durable
 * before the hook appends to it: its fsyncs run off the save path
 * (REPLICATE_LOG_SYNC_BACKGROUND, docs/FRAME.md 2.3, "The replication
 * log's fsyncs"). The archive's backlog is held in it (DESIGN section 7):
 * its cap is at least --archive-max-backlog-mb. */
static int open_log(primary_node *n, const primary_config *cfg)
{
  replicate_log_options lo = {.max_bytes = cfg->log_max_bytes, .on_repair = log_repaired,
                              .repair_ctx = (void *)cfg->who,
                              .sync = REPLICATE_LOG_SYNC_BACKGROUND};
  uint64_t backlog = !cfg->archive ? 0
                     : cfg->archive->max_backlog_bytes ? cfg->archive->max_backlog_bytes
                                                       : REPLICATE_ARCHIVE_BACKLOG_DEFAULT;
  if (backlog > (lo.max_bytes ? lo.max_bytes : REPLICATE_LOG_MAX_BYTES_DEFAULT))
    lo.max_bytes = backlog;
  int rc = replicate_log_open(cfg->dir, &lo, faultio_from_env(), &n->log);
  return rc ? cli_fail(cfg->who, "replication log: %s", replicate_strerror(rc)) : 0;
}

/* --archive: before the shipper, which may start a log that ends short of
 * the store afresh (the archiver takes what it needs from it first). */
static int start_archiver(primary_node *n, const primary_config *cfg, loom_store *store)
{
  replicate_archiver_options ao = *cfg->archive;
  if (cli_archiver_check(cfg->who, &ao.access))
    return 1;
  ao.store = store;
  ao.log = n->log;
  ao.log_writer = !(cfg->standby_count || cfg->max_peers); /* no shipper writes it */
  char position_file[4096];
  snprintf(position_file, sizeof position_file, "%s/replog/archive-position", cfg->dir);
  ao.position_file = position_file;
  ao.log_fn = cfg->quiet ? NULL : ship_log;
  ao.log_ctx = (void *)cfg->who;
  int rc = replicate_archiver_start(&ao, &n->archiver);
  return rc ? cli_fail(cfg->who, "--archive %s: %s", ao.access.url, replicate_strerror(rc))
            : 0;
}

static int start_shipper(primary_node *n, const primary_config *cfg, loom_store *store)
{
  replicate_shipper_options so = {
      .max_peers = cfg->max_peers,
      .store = store,
      .log = n->log,
      .standby_urls = cfg->standbys,
      .standby_count = cfg->standby_count,
      .token = cfg->token,
      .ca_file = cfg->ca_file,
      .sync_count = cfg->sync_count,
      .sync_timeout_seconds = cfg->sync_timeout_seconds,
      .on_sync_timeout = cfg->sync_degrade ? REPLICATE_SYNC_DEGRADE : REPLICATE_SYNC_FAIL,
      .zstd_level = cfg->zstd_level,
      .frame_key = cfg->frame_key,
      .log_fn = cfg->quiet ? NULL : ship_log,
      .log_ctx = (void *)cfg->who,
  };
  int rc = replicate_shipper_start(&so, &n->shipper);
  return rc ? cli_fail(cfg->who, "shipper: %s", replicate_strerror(rc)) : 0;
}

/* --listen: status, metrics, backups, the tree and pages. */
static int start_server(primary_node *n, const primary_config *cfg)
{
  n->source = (http_primary_source){.ctx = n,
                                    .position = source_position,
                                    .snapshot_open = source_snapshot,
                                    .fenced = source_fenced,
                                    .peers = source_peers,
                                    .sync_state = source_sync,
                                    .history = source_history,
                                    .log_stats = source_log_stats,
                                    .commit_log = source_commit_log,
                                    .save_durations = source_save_durations,
                                    .archive = n->archiver ? source_archive : NULL};
  http_server_options ho = {
      .role = HTTP_ROLE_PRIMARY,
      .primary = &n->source,
      .listen_host = cfg->listen_host,
      .listen_port = cfg->listen_port,
      .token = (const uint8_t *)cfg->token,
      .token_len = cfg->token ? strlen(cfg->token) : 0,
      .tls_cert_file = cfg->tls_cert,
      .tls_key_file = cfg->tls_key,
      .scrub_interval_seconds = cfg->scrub_interval_seconds,
      .scrub_mbps = cfg->scrub_mbps,
      .frame_key = cfg->frame_key,
      .log = cfg->quiet ? NULL : cli_log,
      .log_ctx = (void *)cfg->who,
      .cluster = cfg->cluster,
  };
  int rc = http_server_start(&ho, &n->server);
  return rc ? cli_fail_server(cfg->who, rc, cfg->listen_host, cfg->listen_port, NULL,
                              cfg->tls_cert, cfg->tls_key)
            : 0;
}

int primary_open(primary_node *n, const primary_config *cfg)
{
  memset(n, 0, sizeof *n);
  pthread_mutex_init(&n->lock, NULL);
  n->cfg = *cfg;
  int rc = kv_open(cfg->dir, cfg->arena_pages, cfg->keys, on_commit_tweak, n, &n->table);
  if (rc)
    return cli_fail_store(cfg->who, cfg->dir, rc,
                          "Restore the directory from a backup, or promote a standby");
  loom_store *store = loom_get_store(kv_loom(n->table));
  loom_store_position(store, &n->committed);
  if ((rc = open_log(n, cfg)))
    return rc;
  if (cfg->archive && (rc = start_archiver(n, cfg, store)))
    return rc;
  if ((cfg->standby_count || cfg->max_peers) && (rc = start_shipper(n, cfg, store)))
    return rc;
  if (cfg->listen_host && (rc = start_server(n, cfg)))
    return rc;
  return advertise(n, cfg);
}

/* One unit of the workload: K values each get 64 fresh random bytes. */
int primary_step(primary_node *n)
{
  for (uint64_t k = 0; k < n->cfg.pages; k++) {
    uint8_t bytes[64];
    for (unsigned i = 0; i < sizeof bytes; i += 8) {
      n->rng ^= n->rng << 13, n->rng ^= n->rng >> 7, n->rng ^= n->rng << 17;
      memcpy(bytes + i, &n->rng, 8);
    }
    uint64_t key = n->rng % n->cfg.keys;
    size_t off = (size_t)((n->rng >> 24) % (LOOM_PAGE_SIZE - sizeof bytes));
    int rc = kv_poke(n->table, key, off, bytes, sizeof bytes);
    if (rc)
      return rc;
  }
  double start = loom_mono_s();
  int rc = kv_save(n->table);
  double took = loom_mono_s() - start;
  if (rc == 0 || rc == REPLICATE_ESYNC_TIMEOUT || rc == REPLICATE_EFENCED)
    n->saves++; /* committed locally either way */
  if (rc == 0) {
    pthread_mutex_lock(&n->lock);
    replicate_duration_observe(&n->save_durations, took);
    pthread_mutex_unlock(&n->lock);
  }
  return rc;
}

/* "URL state (seq S)" for each standby, comma-separated, into line. */
static void standbys_report(primary_node *n, char *line, size_t cap)
{
  line[0] = '\0';
  if (!n->shipper || cap == 0)
    return;
  replicate_peer_status st[MAX_STANDBYS];
  size_t count, used = 0;
  replicate_shipper_status(n->shipper, st, MAX_STANDBYS, &count);
  for (size_t i = 0; i < count && i < MAX_STANDBYS && used < cap; i++) {
    int k = snprintf(line + used, cap - used, "%s%s %s (received seq %llu)",
                     i ? ", " : "", st[i].url, st[i].state_name,
                     (unsigned long long)st[i].received_seq);
    if (k < 0)
      break;
    used += (size_t)k;
  }
}

int primary_close(primary_node *n, double drain_timeout)
{
  char line[8];
  return primary_close_report(n, drain_timeout, line, sizeof line);
}

int primary_close_report(primary_node *n, double drain_timeout, char *line,
                         size_t cap)
{
  /* Drain with the read endpoints still up (status shows the drain), then
   * stop the server before the shipper: its status handlers read the
   * shipper, which must not be freed under a request. */
  int drained = 1;
  if (n->shipper)
    drained = replicate_shipper_drain(n->shipper, drain_timeout);
  if (n->archiver && !replicate_archiver_drain(n->archiver, drain_timeout)) {
    replicate_archive_status as;
    replicate_archiver_status(n->archiver, &as);
    char text[700];
    snprintf(text, sizeof text, "the archive is missing %llu committed frames after "
             "--drain-timeout%s%s", (unsigned long long)as.lag_frames,
             as.last_error[0] ? ": " : "", as.last_error);
    cli_log((void *)n->cfg.who, text);
    drained = 0;
  }
  standbys_report(n, line, cap);
  if (n->server)
    http_server_stop(n->server);
  n->server = NULL;
  if (n->shipper)
    replicate_shipper_stop(n->shipper);
  n->shipper = NULL;
  replicate_archiver_stop(n->archiver); /* before the store closes */
  n->archiver = NULL;
  if (n->log)
    replicate_log_close(n->log);
  int rc = n->table ? kv_close(n->table) : 0;
  pthread_mutex_destroy(&n->lock);
  if (rc)
    return cli_fail(n->cfg.who, "close: %s", loom_strerror(rc));
  return drained ? 0 : 2;
}

/* ---------------------------------------------------------------------- */
/* The subcommand. */

/* One line for --ack-log: "EPOCH SEQ CHECKSUM", in one write(2), so that a
 * kill -9 leaves whole lines (DESIGN section 5). */
void primary_ack_log_write(int fd, const loom_position *p)
{
  if (fd < 0)
    return;
  char line[80];
  int len = snprintf(line, sizeof line, "%" PRIu64 " %" PRIu64 " %016" PRIx64 "\n",
                     p->epoch, p->seq, p->checksum);
  if (len > 0 && write(fd, line, (size_t)len) != len)
    cli_log("primary", "--ack-log: a line could not be written");
}

static bool node_fenced(primary_node *n) { return source_fenced(n); }

/* Once fenced, no more saves: with --saves N the primary stops at once,
 * with --saves 0 it keeps serving ("fenced": true) until SIGTERM. */
int primary_reload_archive_key(void *ctx, char *why, size_t why_len)
{
  primary_node *n = ctx;
  return n->archiver ? replicate_archiver_reload_key(n->archiver, why, why_len) : 0;
}

static int wait_fenced(primary_node *n, sigset_t *stop, uint64_t saves,
                       const cli_reload *reload)
{
  char epoch[24];
  snprintf(epoch, sizeof epoch, "%llu", (unsigned long long)n->committed.epoch);
  cli_log_fields(CLI_ERROR, "primary",
                 "FENCED: a standby of this primary's history has a newer epoch (it was "
                 "promoted); this primary saves nothing more",
                 (const char *const[]){"epoch", epoch, NULL});
  if (saves == 0 && n->server) {
    while (cli_wait_stop(stop, 1, reload) == 0)
      cli_notify_progress(true, "fenced: serving until stopped");
  }
  return PRIMARY_EXIT_FENCED;
}

/* The scrubber found a page that does not match its recorded hash: say
 * which, and stop before a save or a base image ships it (DESIGN 8). */
static bool image_rotted(primary_node *n)
{
  replicate_scrub_status in;
  http_server_integrity(n->server, &in);
  if (in.state != REPLICATE_INTEGRITY_CORRUPT)
    return false;
  cli_fail("primary", "%s: stopping rather than ship it; promote a standby, which "
           "holds the page as committed, or restore this directory", in.last_error);
  return true;
}

/* STATUS= with the seq and the largest standby lag; the watchdog ping
 * when the loop ran and the server (if any) answers. */
static void watch(primary_node *n)
{
  static double last; /* the main thread's */
  double wd = cli_watchdog_seconds(), every = wd > 0 && wd / 4 < 0.25 ? wd / 4 : 0.25;
  if (!getenv("NOTIFY_SOCKET") || loom_mono_s() - last < every)
    return; /* nobody to tell, or told just now (cli_notify_progress paces) */
  last = loom_mono_s();
  double worst = 0;
  if (n->shipper) {
    replicate_peer_status st[MAX_STANDBYS];
    size_t count = 0;
    replicate_shipper_status(n->shipper, st, MAX_STANDBYS, &count);
    for (size_t i = 0; i < count && i < MAX_STANDBYS; i++)
      worst = st[i].lag_seconds > worst ? st[i].lag_seconds : worst;
  }
  bool ok = !n->server || cli_watchdog_seconds() == 0 ||
            cli_probe_server(n->cfg.listen_host, http_server_port(n->server),
                             n->cfg.tls_cert != NULL, 1);
  char status[160];
  snprintf(status, sizeof status, "seq %llu, %llu saves, largest standby lag %.3f s%s",
           (unsigned long long)n->committed.seq, (unsigned long long)n->saves, worst,
           ok ? "" : " (server not answering)");
  cli_notify_progress(ok, status);
}

/* The workload: a save every 1/rate s until --saves or a stop signal.
 * Returns 0, PRIMARY_EXIT_FENCED or 1 (an error, said). */
static int run_workload(primary_node *n, sigset_t *stop, uint64_t saves,
                        uint64_t rate, int ack_fd, const cli_reload *reload)
{
  double period = 1.0 / (double)rate, next = loom_mono_s(), last_log = loom_mono_s();
  for (;;) {
    if (saves && n->saves >= saves)
      return 0;
    double wait = next - loom_mono_s();
    /* A slow rate still pings the watchdog thrice per period. */
    double wd = cli_watchdog_seconds(), slice = wd > 0 && wait > wd / 3 ? wd / 3 : wait;
    int sig = cli_wait_stop(stop, slice > 0 ? slice : 0, reload);
    if (sig > 0) {
      cli_log_at(CLI_INFO, "primary", "%s: finishing", sig == SIGINT ? "SIGINT" : "SIGTERM");
      return 0;
    }
    watch(n);
    if (slice < wait)
      continue; /* not yet time to save */
    next += period;
    if (next < loom_mono_s() - 1)
      next = loom_mono_s(); /* fell behind: do not burst */
    if (node_fenced(n))
      return wait_fenced(n, stop, saves, reload);
    if (image_rotted(n))
      return 1;
    int rc = primary_step(n);
    if (rc == 0) {
      faultio_note_ack(&n->committed);
      primary_ack_log_write(ack_fd, &n->committed);
    } else if (rc == REPLICATE_ESYNC_TIMEOUT) {
      char line[160];
      snprintf(line, sizeof line, "save of epoch %llu seq %llu was not acknowledged "
               "by enough standbys in time (it is committed locally)",
               (unsigned long long)n->committed.epoch,
               (unsigned long long)n->committed.seq);
      cli_log("primary", line);
    } else if (rc == REPLICATE_EFENCED) {
      return wait_fenced(n, stop, saves, reload);
    } else if (rc == LOOM_ECORRUPT && loom_rotted_page(kv_loom(n->table)) != UINT64_MAX) {
      cli_fail("primary", "save refused: page %llu of the image does not match the hash it "
               "was committed with (bit rot, or a write that landed wrong); nothing was "
               "committed or shipped at seq %llu: promote a standby that holds it "
               "(verified_seq), or resync this directory from one",
               (unsigned long long)loom_rotted_page(kv_loom(n->table)),
               (unsigned long long)n->committed.seq + 1);
      return 1;
    } else {
      cli_fail("primary", "save: %s", replicate_strerror(rc)); /* covers loom's too */
      return 1;
    }
    if (loom_mono_s() - last_log >= 10) {
      char count[24], seq[24], epoch[24];
      snprintf(count, sizeof count, "%llu", (unsigned long long)n->saves);
      snprintf(seq, sizeof seq, "%llu", (unsigned long long)n->committed.seq);
      snprintf(epoch, sizeof epoch, "%llu", (unsigned long long)n->committed.epoch);
      cli_log_fields(CLI_INFO, "primary", "progress",
                     (const char *const[]){"saves", count, "seq", seq, "epoch", epoch, NULL});
      last_log = loom_mono_s();
    }
  }
}

typedef struct primary_args {
  const char *dir, *listen, *token_file, *ack_log, *ca_file, *tls_cert, *tls_key;
  const char *frame_key_file, *advertise;
  const char *standbys[MAX_STANDBYS];
  size_t standby_count;
  int sync_degrade;
  uint64_t sync, saves, rate, pages, keys, arena_pages, drain, sync_timeout, seed,
      log_max_mb, level, scrub_interval, scrub_mbps, commit_log_mb;
  cli_archiver_args archive;
  cli_log_args log;
} primary_args;

/* A standby's URL names its scheme (http or https) and a host: 0, or 2
 * after a line naming the URL and what is wrong with it. */
static int check_standby_url(const char *cmd, const char *url)
{
  char why[128];
  if (client_url_check(url, why, sizeof why) == 0)
    return 0;
  cli_fail(cmd, "--standby %s: %s", url, why);
  return 2;
}

static int add_standby(const char *cmd, const char *url, void *args)
{
  primary_args *a = args;
  if (check_standby_url(cmd, url))
    return 2;
  if (a->standby_count == MAX_STANDBYS) {
    cli_fail(cmd, "at most %d --standby", MAX_STANDBYS);
    return 2;
  }
  a->standbys[a->standby_count++] = url;
  return 0;
}

static int set_sync_fallback(const char *cmd, const char *value, void *args)
{
  if (strcmp(value, "fail") && strcmp(value, "async")) {
    cli_fail(cmd, "--sync-fallback is fail or async, not '%s'", value);
    return 2;
  }
  ((primary_args *)args)->sync_degrade = !strcmp(value, "async");
  return 0;
}

#define AT(field) offsetof(primary_args, field)
#define NUMBER CLI_NUMBER_ROW
#define TEXT CLI_TEXT_ROW
static const cli_option primary_options[] = {
    {.name = "dir", .arg = "DIR", .kind = CLI_TEXT, .offset = AT(dir), .required = true,
     .help = "the image directory (created 0700 with its missing parents)"},
    {.name = "standby", .arg = "URL", .kind = CLI_CALL, .set = add_standby, .dflt = "none",
     .help = "a standby to replicate to; repeat for each (at most 32)"},
    TEXT("token-file", "F", token_file, "none",
         "the bearer token, sent to the standbys and required for backups from "
         "--listen"),
    TEXT("ca-file", "F", ca_file, "the system's CAs",
         "CA certificates to verify the standbys' TLS certificates"),
    NUMBER("sync", "N", sync, 0, MAX_STANDBYS, "0",
           "a save waits until N standbys hold it durably; 0: asynchronous"),
    NUMBER("sync-timeout", "SECONDS", sync_timeout, 1, 86400, "10",
           "the longest a save waits for --sync standbys"),
    {.name = "sync-fallback", .arg = "fail|async", .kind = CLI_CALL,
     .set = set_sync_fallback, .dflt = "fail",
     .help = "after --sync-timeout, fail the save (it is committed locally) or go on "
             "asynchronously until N standbys are back"},
    NUMBER("saves", "N", saves, 0, UINT64_MAX, "0", "stop after N saves; 0: at SIGTERM"),
    NUMBER("rate", "HZ", rate, 1, 100000, "10", "saves a second"),
    PRIMARY_TABLE_OPTIONS,
    TEXT("listen", "HOST:PORT", listen, "none",
         "serve the read endpoints (status, metrics, backup) there"),
    TEXT("advertise", "URL", advertise, "http://HOST:PORT of --listen",
         "the URL the standbys repair from (sent with every frame)"),
    PRIMARY_TLS_OPTIONS,
    NUMBER("drain-timeout", "SECONDS", drain, 0, 86400, "30",
           "on stop, wait this long for every reachable standby to hold everything"),
    PRIMARY_FRAME_OPTIONS,
    PRIMARY_SCRUB_OPTIONS("with --listen: ",
                          "a rotted page stops the primary (exit 1) before it ships it"),
    TEXT("ack-log", "FILE", ack_log, "none",
         "append \"EPOCH SEQ CHECKSUM\" each time a save returns success"),
    CLI_ARCHIVER_OPTIONS(primary_args, archive),
    CLI_FRAME_KEY_ROW(primary_args, frame_key_file),
    CLI_LOG_OPTIONS(primary_args, log),
    {0},
};
#undef TEXT
#undef NUMBER
#undef AT

/* The node's configuration from the arguments: 0, or an exit code after an
 * error line. */
static int primary_configure(const primary_args *a, primary_config *cfg)
{
  *cfg = (primary_config){
      .who = "primary", .dir = a->dir, .arena_pages = a->arena_pages, .keys = a->keys,
      .pages = a->pages, .standbys = a->standbys, .standby_count = a->standby_count,
      .ca_file = a->ca_file, .sync_count = (unsigned)a->sync,
      .sync_timeout_seconds = (double)a->sync_timeout, .sync_degrade = a->sync_degrade,
      .zstd_level = (int)a->level, .log_max_bytes = a->log_max_mb << 20,
      .commit_log_bytes = a->commit_log_mb << 20,
      .tls_cert = a->tls_cert, .tls_key = a->tls_key,
      .scrub_interval_seconds = (double)a->scrub_interval,
      .scrub_mbps = (double)a->scrub_mbps, .advertise_url = a->advertise};
  if (cfg->sync_count > cfg->standby_count)
    return cli_usage_error(&cmd_primary, "--sync %u needs as many --standby",
                           cfg->sync_count);
  if (!cfg->tls_cert != !cfg->tls_key)
    return cli_usage_error(&cmd_primary, "--tls-cert and --tls-key go together");
  if (cfg->keys + cfg->keys / 4 + 64 > cfg->arena_pages)
    return cli_fail("primary", "--keys %llu needs an arena of more than %llu pages",
                    (unsigned long long)cfg->keys, (unsigned long long)cfg->arena_pages);
  return 0;
}

/* What run_primary allocated for the node's options. */
static void release(replicate_frame_key *frame_key, char *token, char *host)
{
  replicate_frame_key_free(frame_key);
  free(token);
  free(host);
}

/* --token-file and --frame-key-file: 0, or an exit code after a line. */
static int read_secrets(const primary_args *a, char **token, replicate_frame_key **frame_key)
{
  int rc = a->token_file ? cli_token_file_read("primary", a->token_file, token) : 0;
  if (!rc && (rc = cli_frame_key_read("primary", a->frame_key_file, frame_key)) != 0)
    cli_token_forget(*token);
  return rc;
}

/* The last lines a run prints: where it ended, and its standbys. */
static void print_report(const loom_position *last, uint64_t saves, const char *standbys_line)
{
  char hex[17];
  printf("committed seq %llu (epoch %llu, checksum %s) in %llu saves\n",
         (unsigned long long)last->seq, (unsigned long long)last->epoch,
         cli_hex64(last->checksum, hex), (unsigned long long)saves);
  if (standbys_line[0])
    printf("standbys: %s\n", standbys_line);
}

static int run_primary(void *args)
{
  const primary_args *a = args;
  int lrc = cli_logging_setup(&cmd_primary, &a->log);
  if (lrc)
    return lrc;
  const char *listen = a->listen, *token_file = a->token_file, *ack_log = a->ack_log;
  uint64_t saves = a->saves, rate = a->rate, drain = a->drain, seed = a->seed;
  primary_config cfg;
  int crc = primary_configure(a, &cfg);
  if (crc)
    return crc;
  replicate_archiver_options archive;
  char writer[1200];
  cli_archiver_configure(&a->archive, "primary", a->dir, &archive, writer, sizeof writer);
  if (a->archive.url)
    cfg.archive = &archive;
  char *host = NULL;
  if (listen && cli_parse_listen("primary", listen, &host, &cfg.listen_port))
    return 2;
  cfg.listen_host = host;
  char *token = NULL;
  replicate_frame_key *frame_key = NULL;
  int trc = read_secrets(a, &token, &frame_key);
  if (trc) {
    free(host);
    return trc;
  }
  cfg.token = token;
  cfg.frame_key = frame_key;
  sigset_t stop;
  cli_block_stop_signals(&stop);

  primary_node n;
  int rc = primary_open(&n, &cfg);
  if (token)
    memset(token, 0, strlen(token));
  if (rc) {
    primary_close(&n, 0);
    release(frame_key, token, host);
    return rc;
  }
  if (n.server) {
    printf("listening on %s://%s:%u\n", cfg.tls_cert ? "https" : "http", host,
           (unsigned)http_server_port(n.server));
    fflush(stdout);
  }
  cli_notify_ready("saving");
  /* The workload's randomness: --seed repeats a run; by default time and
   * pid, so that two runs in the same second still differ. */
  n.rng = seed ? seed : (((uint64_t)time(NULL) * 2654435761u) ^ ((uint64_t)getpid() << 32)) | 1;
  int ack_fd = -1;
  if (ack_log && (ack_fd = open(ack_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC,
                                0600)) < 0) {
    cli_fail("primary", "--ack-log %s: %s", ack_log, strerror(errno));
    primary_close(&n, 0);
    release(frame_key, token, host);
    return 1;
  }
  cli_reload reload = {.who = "primary", .token_file = token_file, .tls_cert = cfg.tls_cert,
                       .tls_key = cfg.tls_key, .server = n.server, .shipper = n.shipper,
                       .frame_key_file = a->frame_key_file, .frame_key = frame_key,
                       .archive_key_file = a->archive.url ? a->archive.access.key_file : NULL,
                       .reload_archive_key = primary_reload_archive_key, .archive_ctx = &n};
  int exit_code = run_workload(&n, &stop, saves, rate, ack_fd, &reload);
  if (exit_code == 0 && node_fenced(&n))
    exit_code = PRIMARY_EXIT_FENCED; /* fenced after its last save */
  cli_notify("STOPPING=1");
  loom_position last = n.committed;
  char standbys_line[1024];
  rc = primary_close_report(&n, exit_code == PRIMARY_EXIT_FENCED ? 0 : (double)drain,
                            standbys_line, sizeof standbys_line);
  if (ack_fd >= 0)
    close(ack_fd);
  release(frame_key, token, host); /* shipper and server are stopped */
  print_report(&last, n.saves, standbys_line);
  if (exit_code)
    return exit_code;
  return rc == 2 ? PRIMARY_EXIT_NOT_DRAINED : rc;
}

const cli_command cmd_primary = {
    .name = "primary",
    .summary = "run the example application as a primary replicating to standbys",
    .options = primary_options, .args_size = sizeof(primary_args), .run = run_primary};
