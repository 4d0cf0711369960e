/*
 * archiver.c: --archive on the commands that write an archive (primary,
 * standby, node; DESIGN section 7): their options, the writer id, and a
 * standby's archiver, fed by its receiver with the frames it holds durably.
 *
 * A STANDBY'S ARCHIVER
 *
 * The standby's receiver (inside the server) hands every commit frame, once
 * durable, to cli_standby_archive_on_received, which passes it to the
 * archiver (replicate_archiver_on_frame) or drops it while there is none.
 * The archiver starts (tick, at once and then once a second while there is
 * none) at the received position, epoch and lineage (a standby that holds
 * nothing yet: at its first frame's), all read under feed_mu: a frame
 * received meanwhile waits for feed_mu and is then fed (the archiver
 * ignores one already counted). Bases are snapshots of the receiver's
 * store. When the node follows another epoch (a new primary after a
 * failover), the archiver stops itself and tick starts one at the new
 * epoch. Once promoted, nothing new is received: an application started
 * on the directory as primary archives the new epoch.
 *
 * Its backlog is held in the receive log (DESIGN section 7): the receiver
 * keeps every frame from its open on (receiver.h, on_received), the
 * archiver moves that hold to its uploaded seq + 1 and remembers the
 * uploaded position in DIR/replog/archive-position, and a restart (after
 * a kill -9, or a stop whose drain did not finish: hold_after_stop) takes
 * the frames after it from the receive log before any new one.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "archive.h"
#include "cli.h"
#include "faultio.h"
#include "logging.h"
#include "receiver.h"
#include "server.h"

void cli_archiver_configure(const cli_archiver_args *a, const char *role,
                            const char *dir, replicate_archiver_options *out,
                            char *writer, size_t size)
{
  *out = (replicate_archiver_options){
      .interval_seconds = (double)a->interval,
      .base_interval_seconds = (double)a->base_interval,
      .keep_bases = (unsigned)a->keep_bases,
      .max_backlog_bytes = a->max_backlog_mb << 20};
  cli_archive_options(&a->access, a->url, &out->access);
  out->access.store.on_request = faultio_store_hook(); /* crash tests only */
  char host_name[256] = "", cwd[400] = "";
  gethostname(host_name, sizeof host_name - 1);
  if (dir[0] != '/' && !getcwd(cwd, sizeof cwd))
    cwd[0] = '\0';
  snprintf(writer, size, "%s %s:%s%s%s", role, host_name, cwd,
           cwd[0] ? "/" : "", dir);
  out->writer_id = writer;
  out->scratch_dir = dir; /* a large base is sealed into a file there */
}

int cli_archiver_check(const char *who, const replicate_archive_options *access)
{
  replicate_archive *probe = NULL;
  int rc = replicate_archive_open(access, &probe);
  if (rc)
    cli_fail(who, "--archive %s: %s", access->url,
             probe ? replicate_archive_last_error(probe)
                   : replicate_strerror(rc));
  replicate_archive_close(probe);
  return rc ? 1 : 0;
}

/* ---------------------------------------------------------------------- */
/* A standby's archiver */

struct cli_standby_archive {
  pthread_mutex_t feed_mu; /* the archiver's start and stop vs feeds */
  replicate_archiver *ar;  /* under feed_mu; NULL: none yet */
  replicate_archiver_options o;
  char writer[1200];
  replicate_receiver *rx; /* the server's, once known */
  bool closed;            /* no archiver any more */
  char position_file[4096]; /* DIR/replog/archive-position */
  int start_rc;             /* the last failed start's, said once */
  bool hold_lifted;         /* failed starts lifted the receive log's hold */
};

static void archive_log(void *ctx, const char *line) { cli_log(ctx, line); }

static int rx_snapshot_open(void *ctx, loom_snapshot **out)
{
  return replicate_receiver_snapshot_open(ctx, out);
}

static void rx_snapshot_close(void *ctx, loom_snapshot *snap)
{
  replicate_receiver_snapshot_close(ctx, snap);
}

int cli_standby_archive_new(const cli_archiver_args *a, const char *dir,
                            cli_standby_archive **out)
{
  *out = NULL;
  if (!a->url)
    return 0;
  cli_standby_archive *sa = calloc(1, sizeof *sa);
  if (!sa)
    return cli_fail("standby", "--archive: out of memory");
  pthread_mutex_init(&sa->feed_mu, NULL);
  cli_archiver_configure(a, "standby", dir, &sa->o, sa->writer,
                         sizeof sa->writer);
  sa->o.log_fn = archive_log;
  sa->o.log_ctx = (void *)"standby";
  snprintf(sa->position_file, sizeof sa->position_file,
           "%s/replog/archive-position", dir);
  sa->o.position_file = sa->position_file;
  sa->o.hold_after_stop = true; /* the receiver held it from its open on */
  if (cli_archiver_check("standby", &sa->o.access)) {
    pthread_mutex_destroy(&sa->feed_mu);
    free(sa);
    return 1;
  }
  *out = sa;
  return 0;
}

void cli_standby_archive_on_received(void *ctx, const void *frame, size_t len)
{
  cli_standby_archive *sa = ctx;
  pthread_mutex_lock(&sa->feed_mu);
  if (sa->ar)
    replicate_archiver_on_frame(sa->ar, frame, len);
  pthread_mutex_unlock(&sa->feed_mu);
}

void cli_standby_archive_status(void *ctx, replicate_archive_status *out)
{
  cli_standby_archive *sa = ctx;
  pthread_mutex_lock(&sa->feed_mu);
  if (sa->ar)
    replicate_archiver_status(sa->ar, out);
  pthread_mutex_unlock(&sa->feed_mu);
  if (!out->url[0]) /* none yet: the URL, and nothing uploaded */
    snprintf(out->url, sizeof out->url, "%s", sa->o.access.url);
}

int cli_standby_archive_reload_key(void *ctx, char *why, size_t why_len)
{
  cli_standby_archive *sa = ctx;
  pthread_mutex_lock(&sa->feed_mu);
  int rc = sa->ar ? replicate_archiver_reload_key(sa->ar, why, why_len) : 0;
  pthread_mutex_unlock(&sa->feed_mu); /* a later one reads the file at start */
  return rc;
}

/* What the receive log keeps for the archive alone: the frames from its
 * hold on that the applier no longer needs (those after applied it keeps
 * anyway). 0 when nothing is held. */
static uint64_t log_held_bytes(replicate_log *log, uint64_t applied_seq)
{
  uint64_t from = replicate_log_held_from(log), bytes = 0;
  replicate_log_stats ls;
  replicate_log_get_stats(log, &ls);
  if (from == 0 || ls.records == 0)
    return 0;
  if (from < ls.oldest_seq) /* held from before the log's oldest frame */
    from = ls.oldest_seq;
  if (from > applied_seq ||
      replicate_log_bytes_after(log, from - 1, &bytes) != 0)
    return 0;
  uint64_t unapplied = 0;
  if (replicate_log_bytes_after(log, applied_seq, &unapplied) != 0)
    unapplied = 0;
  return bytes > unapplied ? bytes - unapplied : 0;
}

/* Under feed_mu: an archiver at the received position, epoch, lineage.
 * A start that fails is tried again at the next tick. Meanwhile the
 * receive log goes on holding the frames the archive lacks, as it does
 * for a running archiver whose store is away, up to the same bound
 * (max_backlog_bytes): a start that works a second later loses nothing.
 * Past the bound the hold is lifted (a store or key file gone bad must
 * not fill the disk and stop the receipts): the next start finds the log
 * short of its head, and the archive records a gap and takes a base.
 * The bound is checked at every failed start. */
static void start_locked(cli_standby_archive *sa,
                         const replicate_receiver_status *st)
{
  replicate_archiver_options o = sa->o;
  o.snapshot_open = rx_snapshot_open;
  o.snapshot_close = rx_snapshot_close;
  o.snapshot_ctx = sa->rx;
  o.log = replicate_receiver_log(sa->rx); /* the backlog (see the top) */
  o.position = st->received;
  replicate_receiver_lineage(sa->rx, &o.lineage);
  int rc = faultio_archiver_start_fails() ? EAGAIN
                                          : replicate_archiver_start(&o, &sa->ar);
  int said = sa->start_rc;
  sa->start_rc = rc;
  if (rc == 0) {
    sa->hold_lifted = false;
    return;
  }
  uint64_t bound = o.max_backlog_bytes ? o.max_backlog_bytes
                                       : REPLICATE_ARCHIVE_BACKLOG_DEFAULT;
  uint64_t held = log_held_bytes(o.log, st->applied.seq);
  char line[800];
  if (held > bound) {
    replicate_log_hold(o.log, 0);
    if (!sa->hold_lifted) {
      snprintf(line, sizeof line,
               "--archive %s: not started (%s): the receive log held %" PRIu64
               " MiB for it, past --archive-max-backlog-mb; it no longer keeps "
               "frames for it (the archive records a gap and takes a base once "
               "it starts)",
               o.access.url, replicate_strerror(rc), held >> 20);
      cli_log("standby", line);
    }
    sa->hold_lifted = true;
    return;
  }
  if (rc == said)
    return;
  snprintf(line, sizeof line, "--archive %s: %s (retried each second; %s)",
           o.access.url, replicate_strerror(rc),
           sa->hold_lifted ? "the receive log no longer keeps frames for it"
                           : "the receive log keeps the frames received "
                             "meanwhile, up to --archive-max-backlog-mb");
  cli_log("standby", line);
}

void cli_standby_archive_tick(cli_standby_archive *sa, http_server *server)
{
  if (!sa || sa->closed)
    return;
  sa->rx = http_server_receiver(server);
  if (!sa->rx)
    return;
  pthread_mutex_lock(&sa->feed_mu);
  replicate_receiver_status st;
  replicate_receiver_get_status(sa->rx, &st);
  replicate_archive_status as = {0};
  if (sa->ar)
    replicate_archiver_status(sa->ar, &as);
  replicate_archiver *old = NULL;
  if (sa->ar && as.stopped && st.received.epoch != as.epoch) {
    old = sa->ar; /* the node follows a new epoch: archive that one */
    sa->ar = NULL;
  }
  pthread_mutex_unlock(&sa->feed_mu);
  /* Not under feed_mu: its thread may wait for the receiver (a snapshot),
   * whose receipt may wait for feed_mu. Before the new one starts: no
   * step of the old one's thread moves the receive log's hold after the
   * new one set it. */
  replicate_archiver_stop(old);
  pthread_mutex_lock(&sa->feed_mu);
  replicate_receiver_get_status(sa->rx, &st);
  if (!sa->ar && !sa->closed && !st.promoted && !st.base_active)
    start_locked(sa, &st);
  pthread_mutex_unlock(&sa->feed_mu);
}

/* After a drain that did not finish: which seqs the archive lacks, and
 * why (the last error, or a request that had not answered). */
static void say_not_uploaded(replicate_archiver *ar, double timeout_seconds)
{
  replicate_archive_status as;
  replicate_archiver_status(ar, &as);
  char seqs[96] = "no received frame, but its start-up did not finish";
  if (as.lag_frames > 0)
    snprintf(seqs, sizeof seqs, "seqs %" PRIu64 "-%" PRIu64,
             as.uploaded_seq + 1, as.committed_seq);
  char line[2048]; /* url, seqs and last_error fit: no cut */
  snprintf(line, sizeof line,
           "--drain-timeout %.0f s: not uploaded to the archive %s: %s "
           "(%" PRIu64 " received frames; the archive holds up to seq %" PRIu64
           ")%s%s",
           timeout_seconds, as.url, seqs, as.lag_frames, as.uploaded_seq,
           as.last_error[0] ? ": "
                             : ": a request to the store was in progress (no "
                               "answer yet, or retrying)",
           as.last_error);
  cli_log("standby", line);
}

int cli_standby_archive_close(cli_standby_archive *sa, double timeout_seconds)
{
  if (!sa || sa->closed)
    return 1;
  pthread_mutex_lock(&sa->feed_mu);
  replicate_archiver *ar = sa->ar;
  pthread_mutex_unlock(&sa->feed_mu);
  /* Not under feed_mu: frames go on being fed while it drains. */
  int done = ar ? replicate_archiver_drain(ar, timeout_seconds) : 1;
  pthread_mutex_lock(&sa->feed_mu);
  sa->ar = NULL;
  sa->closed = true;
  pthread_mutex_unlock(&sa->feed_mu);
  if (ar && !done)
    say_not_uploaded(ar, timeout_seconds);
  replicate_archiver_stop(ar); /* cuts a request that hangs; status still
                                  answers (the URL) */
  return done;
}

void cli_standby_archive_free(cli_standby_archive *sa)
{
  if (!sa)
    return;
  if (!sa->closed)
    cli_standby_archive_close(sa, 0);
  pthread_mutex_destroy(&sa->feed_mu);
  free(sa);
}
