/* cmd_standby.c: loomship standby, a hot standby serving the HTTP API until
 * SIGTERM, when it applies everything it has received and exits. */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "archive.h"
#include "cli.h"
#include "clock.h"
#include "faultio.h"
#include "logging.h"
#include "replicate.h"
#include "server.h"
#include "signals.h"

/* "HOST:PORT" (IPv6 as "[addr]:port") into host (malloc'd) and port. */
int cli_parse_listen(const char *cmd, const char *text, char **host, uint16_t *port)
{
  const char *colon = strrchr(text, ':');
  if (!colon || colon == text)
    return cli_fail(cmd, "--listen takes HOST:PORT, not '%s'", text);
  uint64_t p;
  if (cli_parse_u64(cmd, "the port", colon + 1, 0, 65535, &p))
    return 1;
  const char *h = text;
  size_t n = (size_t)(colon - text);
  if (h[0] == '[' && n >= 2 && h[n - 1] == ']')
    h++, n -= 2;
  *host = strndup(h, n);
  *port = (uint16_t)p;
  return 0;
}

/* What the serving loop needs: where to probe the server, what SIGHUP
 * re-reads. */
typedef struct serve_context {
  const char *host;
  uint16_t port;
  bool tls;
  cli_reload reload;
  cli_standby_archive *archive; /* --archive, or NULL */
  double drain_seconds;         /* --drain-timeout: the archive's upload */
} serve_context;

typedef struct standby_args {
  const char *dir, *listen, *token_file, *cert, *key, *resync_from, *ca_file;
  const char *repair_from, *frame_key_file;
  const char *bootstrap;
  cli_archiver_args archive;
  uint64_t ready_lag_ms, promote_max_lag;
  uint64_t scrub_interval, scrub_mbps, apply_delay, commit_log_mb, drain;
  cli_log_args log;
} standby_args;

#define AT(field) offsetof(standby_args, field)
static const cli_option standby_options[] = {
    {.name = "dir", .arg = "DIR", .kind = CLI_TEXT, .offset = AT(dir), .required = true,
     .help = "the image directory (created 0700 with its missing parents)"},
    {.name = "listen", .arg = "HOST:PORT", .kind = CLI_TEXT, .offset = AT(listen),
     .required = true, .help = "where to serve the HTTP API (port 0: any free port; "
                               "the first line of output names it)"},
    {.name = "token-file", .arg = "F", .kind = CLI_TEXT, .offset = AT(token_file),
     .dflt = "none", .help = "the bearer token that writes and promotion require, "
                             "also sent to --resync-from's URL"},
    {.name = "tls-cert", .arg = "F", .kind = CLI_TEXT, .offset = AT(cert), .dflt = "none",
     .help = "serve HTTPS with this certificate (with --tls-key)"},
    {.name = "tls-key", .arg = "F", .kind = CLI_TEXT, .offset = AT(key), .dflt = "none",
     .help = "the private key of --tls-cert"},
    {.name = "ready-lag-ms", .arg = "MS", .kind = CLI_NUMBER, .offset = AT(ready_lag_ms),
     .min = 0, .max = 86400000, .dflt = "5000",
     .help = "/readyz says ready while the lag is at most this"},
    {.name = "promote-max-lag", .arg = "FRAMES", .kind = CLI_NUMBER,
     .offset = AT(promote_max_lag), .min = 1, .max = UINT64_MAX, .dflt = "100",
     .help = "promotion is refused (unless forced) more than this many frames behind "
             "the primary seq last heard"},
    {.name = "apply-delay", .arg = "SECONDS", .kind = CLI_NUMBER,
     .offset = AT(apply_delay), .min = 0, .max = 30 * 86400, .dflt = "0",
     .help = "a delayed standby: receive at once (durably, into the receive log) but "
             "apply a commit only once it is this old by its commit time; the delay "
             "holds across restarts; promote applies only what is due unless forced; "
             "ready while the lag minus the delay is within --ready-lag-ms"},
    CLI_COMMIT_LOG_ROW(commit_log_mb),
    {.name = "scrub-interval", .arg = "SECONDS", .kind = CLI_NUMBER,
     .offset = AT(scrub_interval), .min = 0, .max = UINT64_C(1) << 32, .dflt = "86400",
     .help = "re-read every image page and check it against its recorded hash this "
             "often (the first pass after one interval or 10 minutes, whichever is "
             "shorter; status \"integrity\"); 0: never"},
    {.name = "scrub-mbps", .arg = "M", .kind = CLI_NUMBER, .offset = AT(scrub_mbps),
     .min = 1, .max = 1 << 20, .dflt = "64",
     .help = "the scrubber reads at most this many MiB a second"},
    {.name = "resync-from", .arg = "URL", .kind = CLI_TEXT, .offset = AT(resync_from),
     .dflt = "none",
     .help = "at start, replace DIR with a verified backup pulled from URL (a primary's or "
             "another standby's): the only way, with a new empty directory, to replace a "
             "standby's history; the swap is atomic, DIR is left as it was if the pull fails"},
    {.name = "repair-from", .arg = "URL", .kind = CLI_TEXT, .offset = AT(repair_from),
     .dflt = "the URL the primary's frames advertise",
     .help = "self-repair: rotted pages (found by the scrubber, a frame that no longer "
             "applies, or the read-back of an apply) are fetched from URL (a primary's "
             "or standby's, with --token-file's token) at its position with what "
             "changed since ours, verified against its page hashes and written (status "
             "\"integrity\"); with no URL at all, they make the standby corrupt"},
    {.name = "ca-file", .arg = "F", .kind = CLI_TEXT, .offset = AT(ca_file),
     .dflt = "the system's CAs",
     .help = "CA certificates to verify --resync-from's and --repair-from's TLS "
             "certificates"},
    {.name = "bootstrap", .arg = "ARCHIVE", .kind = CLI_TEXT, .offset = AT(bootstrap),
     .dflt = "none",
     .help = "at start, seed an empty DIR with the newest position of the archive "
             "(s3://BUCKET/PREFIX or file:///DIR), then stream from the primary, which "
             "sends only what follows; a DIR that holds an image is left as it is"},
    {.name = "drain-timeout", .arg = "SECONDS", .kind = CLI_NUMBER, .offset = AT(drain),
     .min = 0, .max = 86400, .dflt = "30",
     .help = "with --archive: on stop, wait this long for the archive to hold everything "
             "received; then the uploads are cut and a line names the seqs not uploaded"},
    CLI_ARCHIVER_OPTIONS(standby_args, archive),
    CLI_FRAME_KEY_ROW(standby_args, frame_key_file),
    CLI_LOG_OPTIONS(standby_args, log),
    {0},
};
#undef AT

/* What the serving loop watches for the watchdog: the applier has
 * progressed when it has nothing to apply (or a base image is coming in),
 * or when applied moved within the watchdog period. */
typedef struct progress {
  uint64_t applied_seq;
  double moved_at;
} progress;

static bool applier_progressed(progress *p, const http_server_status *st, double now)
{
  if (st->applied.seq != p->applied_seq) {
    p->applied_seq = st->applied.seq;
    p->moved_at = now;
  }
  /* Idle: nothing received waits but frames a delay holds back. */
  bool idle = st->received.seq <= st->applied.seq + st->delay_waiting_frames ||
              st->replay_paused;
  double limit = cli_watchdog_seconds() > 0 ? cli_watchdog_seconds() / 2 : 30;
  return idle || now - p->moved_at < limit;
}

/* Once a second: STATUS= with the lag, and the watchdog ping while the
 * server answers and the applier progresses. */
static void watch(const serve_context *c, progress *p, const http_server_status *st)
{
  double now = loom_mono_s();
  bool ok = applier_progressed(p, st, now) &&
            (cli_watchdog_seconds() == 0 || cli_probe_server(c->host, c->port, c->tls, 1));
  char status[160];
  snprintf(status, sizeof status, "applied seq %llu, lag %llu frames, %.3f s%s",
           (unsigned long long)st->applied.seq, (unsigned long long)st->lag_frames,
           st->lag_seconds, ok ? "" : " (not progressing)");
  cli_notify_progress(ok, status);
}

/* Serve until a stop signal, then stop the server: the exit code. Once a
 * second, see whether storage failed (a failed fsync poisons the store):
 * then the node stops, and its restart recovers from what is durable
 * (PostgreSQL's answer to fsync errors). SIGHUP re-reads the token. */
static int serve_until_stop(const serve_context *c, sigset_t *stop)
{
  http_server *server = c->reload.server;
  int sig = 0;
  http_server_status st;
  progress p = {.moved_at = loom_mono_s()};
  for (;;) {
    /* Once a second, or thrice per watchdog period if that is shorter. */
    double wd = cli_watchdog_seconds();
    sig = cli_wait_stop(stop, wd > 0 && wd / 3 < 1 ? wd / 3 : 1, &c->reload);
    if (sig > 0)
      break;
    http_server_get_status(server, &st);
    if (st.fatal_error)
      break;
    watch(c, &p, &st);
    cli_standby_archive_tick(c->archive, server);
  }
  cli_notify("STOPPING=1");
  /* The archive first: its bases read the store the server's receiver
   * owns. What arrives during its drain is still fed. */
  cli_standby_archive_close(c->archive, c->drain_seconds);
  if (sig <= 0) {
    cli_log("standby", "storage failed: stopping; restart to recover");
    http_server_stop(server);
    return cli_fail("standby", "storage failed: %s", replicate_strerror(st.fatal_error));
  }
  http_server_get_status(server, &st);
  cli_log("standby", st.apply_delay_seconds > 0
                         ? "stop signal: applying what is due; commits younger than "
                           "--apply-delay stay in the receive log for the restart"
                     : sig == SIGTERM ? "SIGTERM: applying what was received, then stopping"
                                      : "SIGINT: applying what was received, then stopping");
  int rc = http_server_stop(server);
  if (rc)
    return cli_fail("standby", "stop: %s", http_strerror(rc));
  return 0;
}

/* Before anything opens DIR: --resync-from (the one operator act that
 * replaces this standby's history, with a new empty directory), then
 * --bootstrap, then --archive's checks. 0, or an exit code after a line. */
static int prepare_dir(const standby_args *a, const char *token,
                       const replicate_frame_key *frame_key,
                       cli_standby_archive **archive)
{
  int rc = 0;
  /* The one operator act that replaces this standby's history (with a new
   * empty directory): before anything opens DIR. */
  if (a->resync_from &&
      (rc = cli_standby_resync(a->dir, a->resync_from, token, a->ca_file, frame_key)) != 0)
    return rc;
  if (a->bootstrap &&
      (rc = cli_standby_bootstrap(a->dir, a->bootstrap, &a->archive.access)) != 0)
    return rc;
  return cli_standby_archive_new(&a->archive, a->dir, archive);
}

/* The server's options from the arguments (repair and archive hooks are
 * set by the caller). */
static void server_options(const standby_args *a, const char *host, uint16_t port,
                           const char *token, const replicate_frame_key *frame_key,
                           http_server_options *o)
{
  *o = (http_server_options){
      .role = HTTP_ROLE_STANDBY,
      .dir = a->dir,
      .io = faultio_from_env(), /* NULL (POSIX) unless a crash test asks */
      .listen_host = host,
      .listen_port = port,
      .token = (const uint8_t *)token,
      .token_len = token ? strlen(token) : 0,
      .tls_cert_file = a->cert,
      .tls_key_file = a->key,
      .ready_max_lag_seconds = (double)a->ready_lag_ms / 1000.0,
      .promote_max_lag = a->promote_max_lag,
      .commit_log_bytes = a->commit_log_mb << 20,
      .receive_log_segment_bytes = faultio_receive_log_segment_bytes(),
      .apply_delay_seconds = (double)a->apply_delay,
      .scrub_interval_seconds = (double)a->scrub_interval,
      .scrub_mbps = (double)a->scrub_mbps,
      .frame_key = frame_key,
      .log = cli_log,
      .log_ctx = (void *)"standby",
  };
}

static int run_standby(void *args)
{
  const standby_args *a = args;
  int lrc = cli_logging_setup(&cmd_standby, &a->log);
  if (lrc)
    return lrc;
  const char *dir = a->dir, *cert = a->cert, *key = a->key;
  if (!cert != !key)
    return cli_usage_error(&cmd_standby, "--tls-cert and --tls-key go together");
  char *host;
  uint16_t port;
  if (cli_parse_listen("standby", a->listen, &host, &port))
    return 2;
  char *token = NULL;
  replicate_frame_key *frame_key = NULL;
  int rc = a->token_file ? cli_token_file_read("standby", a->token_file, &token) : 0;
  if (!rc && (rc = cli_frame_key_read("standby", a->frame_key_file, &frame_key)) != 0)
    cli_token_forget(token);
  if (rc) {
    free(host);
    return rc;
  }
  sigset_t stop;
  cli_block_stop_signals(&stop);
  cli_standby_archive *archive = NULL;
  if ((rc = prepare_dir(a, token, frame_key, &archive)) != 0) {
    cli_token_forget(token);
    replicate_frame_key_free(frame_key);
    free(host);
    return rc;
  }
  http_server_options o;
  server_options(a, host, port, token, frame_key, &o);
  /* Self-repair from --repair-from, or else from the URL the primary
   * advertises in its frames (the token is kept for it until the end). */
  cli_repair_source repair = {a->repair_from, token, a->ca_file, frame_key};
  o.repair_get = cli_repair_get;
  o.repair_ctx = &repair;
  if (archive) {
    o.on_received = cli_standby_archive_on_received;
    o.archive = cli_standby_archive_status;
    o.received_ctx = archive;
  }
  http_server *server;
  rc = http_server_start(&o, &server);
  if (rc)
    cli_token_forget(token);
  if (rc) {
    cli_standby_archive_free(archive);
    if (rc == LOOM_EMETA)
      rc = cli_fail_store("standby", dir, rc,
                          "To replace this standby's image with a verified copy of its "
                          "primary's (or of another standby's), start it with "
                          "--resync-from URL");
    else
      rc = cli_fail_server("standby", rc, host, port, dir, cert, key);
    replicate_frame_key_free(frame_key);
    free(host);
    return rc;
  }
  printf("listening on %s://%s:%u\n", cert ? "https" : "http", host,
         (unsigned)http_server_port(server));
  fflush(stdout);
  cli_notify_ready("receiving");
  serve_context c = {.host = host, .port = http_server_port(server), .tls = cert != NULL,
                     .reload = {.who = "standby", .token_file = a->token_file,
                                .tls_cert = cert, .tls_key = key, .server = server,
                                .frame_key_file = a->frame_key_file,
                                .frame_key = frame_key,
                                .archive_key_file = archive ? a->archive.access.key_file : NULL,
                                .reload_archive_key = cli_standby_archive_reload_key,
                                .archive_ctx = archive},
                     .archive = archive,
                     .drain_seconds = (double)a->drain};
  cli_standby_archive_tick(archive, server);
  rc = serve_until_stop(&c, &stop);
  cli_standby_archive_free(archive); /* the server is stopped */
  free(host);
  cli_token_forget(token);
  replicate_frame_key_free(frame_key); /* the server is stopped */
  return rc;
}

const cli_command cmd_standby = {
    .name = "standby", .summary = "run a hot standby: receive, apply, serve the HTTP API",
    .options = standby_options, .args_size = sizeof(standby_args), .run = run_standby};
