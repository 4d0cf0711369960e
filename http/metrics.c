/*
 * metrics.c: GET /metrics in the Prometheus text format 0.0.4, built from
 * the node's figures (status.c). Metric names are a public contract.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server_internal.h"
#if __has_include("build_version.h")
#include "build_version.h" /* generated: the build's commit */
#else
#define LOOMSHIP_COMMIT "unknown" /* builds without it (the fuzz build) */
#endif

/* ---------------------------------------------------------------------- */
/* A growing text buffer */

typedef struct textbuf {
  char *data;
  size_t len, cap;
  bool failed;
} textbuf;

static void tb_printf(textbuf *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void tb_printf(textbuf *t, const char *fmt, ...)
{
  if (t->failed)
    return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->data ? t->data + t->len : NULL,
                      t->data ? t->cap - t->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
      t->failed = true;
      return;
    }
    if (t->data && t->len + (size_t)n < t->cap) {
      t->len += (size_t)n;
      return;
    }
    size_t cap = t->cap ? t->cap * 2 : 4096;
    while (cap < t->len + (size_t)n + 1)
      cap *= 2;
    char *data = realloc(t->data, cap);
    if (!data) {
      t->failed = true;
      return;
    }
    t->data = data;
    t->cap = cap;
  }
}

static void tb_head(textbuf *t, const char *name, const char *type,
                    const char *help)
{
  tb_printf(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value with \\, \" and \n escaped, as the format wants. */
static void label_escape(const char *in, char *out, size_t n)
{
  size_t j = 0;
  for (; *in && j + 3 < n; in++) {
    if (*in == '\\' || *in == '"') {
      out[j++] = '\\';
      out[j++] = *in;
    } else if (*in == '\n') {
      out[j++] = '\\';
      out[j++] = 'n';
    } else {
      out[j++] = *in;
    }
  }
  out[j] = '\0';
}

static void gauge_u(textbuf *t, const char *name, const char *help, uint64_t v)
{
  tb_head(t, name, "gauge", help);
  tb_printf(t, "%s %" PRIu64 "\n", name, v);
}

static void gauge_f(textbuf *t, const char *name, const char *help, double v)
{
  char num[HTTP_JSON_NUMBER_MAX];
  tb_head(t, name, "gauge", help);
  tb_printf(t, "%s %s\n", name, http_json_format_double(v, num));
}

/* A *_time_seconds gauge: ns since the epoch, every digit kept. */
static void gauge_time(textbuf *t, const char *name, const char *help, int64_t ns)
{
  char num[HTTP_JSON_NUMBER_MAX];
  tb_head(t, name, "gauge", help);
  tb_printf(t, "%s %s\n", name, http_json_format_ns_seconds(ns, num));
}

/* A duration histogram (replicate.h): cumulative buckets, sum, count. */
static void histogram(textbuf *t, const char *name, const char *help,
                      const replicate_duration_histogram *h)
{
  char num[HTTP_JSON_NUMBER_MAX];
  uint64_t below = 0;
  tb_head(t, name, "histogram", help);
  for (int i = 0; i < REPLICATE_DURATION_BUCKETS; i++) {
    below += h->counts[i];
    tb_printf(t, "%s_bucket{le=\"%s\"} %" PRIu64 "\n", name,
              http_json_format_double(replicate_duration_bounds[i], num), below);
  }
  tb_printf(t, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name, h->count);
  tb_printf(t, "%s_sum %s\n", name, http_json_format_double(h->sum_seconds, num));
  tb_printf(t, "%s_count %" PRIu64 "\n", name, h->count);
}

static void counter_u(textbuf *t, const char *name, const char *help,
                      uint64_t v)
{
  tb_head(t, name, "counter", help);
  tb_printf(t, "%s %" PRIu64 "\n", name, v);
}

/* Every state of a standby, for the state set (replicate.h lists them,
 * REPLICATE_PEER_DIVERGED last). */
#define PEER_STATES ((int)REPLICATE_PEER_DIVERGED + 1)

static double seconds_of(int64_t ns) { return (double)ns / 1e9; }

/* ---------------------------------------------------------------------- */
/* The metrics, one builder per part */

/* The scrubber's findings (DESIGN section 8). */
static void integrity_metrics(textbuf *t, const replicate_scrub_status *in)
{
  tb_head(t, "loomship_integrity_state", "gauge",
          "1 for the image's integrity state (ok, repairing, corrupt).");
  for (int k = REPLICATE_INTEGRITY_OK; k <= REPLICATE_INTEGRITY_CORRUPT; k++)
    tb_printf(t, "loomship_integrity_state{state=\"%s\"} %d\n",
              replicate_integrity_state_name((replicate_integrity_state)k),
              in->state == (replicate_integrity_state)k);
  counter_u(t, "loomship_scrub_pages_total", "Image pages the scrubber checked.",
            in->pages_scrubbed);
  counter_u(t, "loomship_scrub_bad_pages_total",
            "Pages the scrubber found not matching their recorded hash.",
            in->bad_pages);
  counter_u(t, "loomship_integrity_repaired_pages_total",
            "Pages fetched again and repaired.", in->pages_repaired);
  gauge_time(t, "loomship_scrub_last_pass_time_seconds",
             "When the last full scrub pass ended (0: none yet).", in->last_scrub_at_ns);
}

/* One series per standby (label url) and per value of a second label
 * (named name_of(k), k < count): value_of(standby, k). */
static void per_peer_set(textbuf *t, const http_figures *f, const char *name,
                         const char *type, const char *help, const char *label, int count,
                         const char *(*name_of)(int k),
                         uint64_t (*value_of)(const replicate_peer_status *p, int k))
{
  tb_head(t, name, type, help);
  for (size_t i = 0; i < f->peer_count; i++) {
    char url[2 * REPLICATE_URL_MAX];
    label_escape(f->peers[i].url, url, sizeof url);
    for (int k = 0; k < count; k++)
      tb_printf(t, "%s{url=\"%s\",%s=\"%s\"} %" PRIu64 "\n", name, url, label, name_of(k),
                value_of(&f->peers[i], k));
  }
}

static const char *state_name(int k)
{
  return replicate_peer_state_name((replicate_peer_state)k);
}

static uint64_t in_state(const replicate_peer_status *p, int k) { return (int)p->state == k; }

static const char *error_kind_name(int k)
{
  return replicate_peer_error_kind_name((replicate_peer_error_kind)k);
}

static uint64_t errors_of_kind(const replicate_peer_status *p, int k) { return p->errors[k]; }

/* One series per peer (label url) for each figure, and its state. */
static void peer_metrics(textbuf *t, const http_figures *f)
{
  static const struct {
    const char *name, *type, *help;
  } per[] = {
      {"loomship_standby_sent_seq", "gauge", "Newest seq sent to the standby."},
      {"loomship_standby_received_seq", "gauge",
       "Newest seq the standby holds durably."},
      {"loomship_standby_applied_seq", "gauge",
       "Newest seq in the standby's image."},
      {"loomship_standby_lag_frames", "gauge",
       "Commits the standby has not applied."},
      {"loomship_standby_lag_bytes", "gauge",
       "Frame bytes the standby has not applied."},
      {"loomship_standby_lag_seconds", "gauge",
       "Age of the oldest commit the standby has not applied."},
      {"loomship_standby_shipped_raw_bytes_total", "counter",
       "Page bytes shipped to the standby before compression."},
      {"loomship_standby_shipped_wire_bytes_total", "counter",
       "Frame bytes shipped to the standby."},
      {"loomship_standby_base_images_total", "counter",
       "Base images the standby acknowledged."},
      {"loomship_standby_verified_seq", "gauge",
       "Highest seq at which the checksum the standby computed from its "
       "image equalled this primary's."},
      {"loomship_standby_checksum_mismatches_total", "counter",
       "Answers whose computed image checksum differed from this primary's "
       "(each makes the standby diverged)."},
      {"loomship_standby_last_reply_time_seconds", "gauge",
       "When the standby last answered: its seqs and lag are as of then "
       "(0: not yet)."},
      {"loomship_standby_last_error_time_seconds", "gauge",
       "When the last error with the standby happened (0: none)."},
  };
  for (size_t m = 0; m < sizeof per / sizeof per[0]; m++) {
    tb_head(t, per[m].name, per[m].type, per[m].help);
    for (size_t i = 0; i < f->peer_count; i++) {
      const replicate_peer_status *p = &f->peers[i];
      char url[2 * REPLICATE_URL_MAX];
      label_escape(p->url, url, sizeof url);
      double v = 0;
      char num[HTTP_JSON_NUMBER_MAX];
      switch (m) {
      case 0: v = (double)p->sent_seq; break;
      case 1: v = (double)p->received_seq; break;
      case 2: v = (double)p->applied_seq; break;
      case 3: v = (double)p->lag_frames; break;
      case 4: v = (double)p->lag_bytes; break;
      case 5: v = p->lag_seconds; break;
      case 6: v = (double)p->bytes_raw; break;
      case 7: v = (double)p->bytes_wire; break;
      case 8: v = (double)p->base_images_sent; break;
      case 9: v = (double)p->verified_seq; break;
      case 10: v = (double)p->checksum_mismatches; break;
      case 11:
        tb_printf(t, "%s{url=\"%s\"} %s\n", per[m].name, url,
                  http_json_format_ns_seconds(p->last_reply_at_ns, num));
        continue;
      default:
        tb_printf(t, "%s{url=\"%s\"} %s\n", per[m].name, url,
                  http_json_format_ns_seconds(p->last_error_at_ns, num));
        continue;
      }
      tb_printf(t, "%s{url=\"%s\"} %s\n", per[m].name, url, http_json_format_double(v, num));
    }
  }
  per_peer_set(t, f, "loomship_standby_state", "gauge",
               "The standby's replication state as a state set: one series per "
               "state, 1 for the current one, 0 for the others.",
               "state", PEER_STATES, state_name, in_state);
}

static void guard_metrics(textbuf *t, http_guard *guard)
{
  uint64_t closed[HTTP_GUARD_REASONS];
  http_guard_closed_counts(guard, closed);
  tb_head(t, "loomship_http_connections_closed_total", "counter",
          "Connections closed for a late request header or a slow or "
          "overlong upload, by reason.");
  for (int v = HTTP_GUARD_HEADERS_LATE; v < HTTP_GUARD_REASONS; v++)
    tb_printf(t, "loomship_http_connections_closed_total{reason=\"%s\"} "
              "%" PRIu64 "\n", http_guard_reason_name((http_guard_verdict)v),
              closed[v]);
}

/* What every node shows: build, role, times, readiness, position. */
static void node_metrics(textbuf *t, http_server *s, const http_figures *f)
{
  const http_server_status *st = &f->view.status;
  tb_head(t, "loomship_info", "gauge", "Build and role of this node.");
  tb_printf(t, "loomship_info{version=\"%s\",role=\"%s\"} 1\n",
            LOOMSHIP_VERSION, f->standby_role ? "standby" : "primary");
  tb_head(t, "loomship_build_info", "gauge", "The build: version and git commit.");
  tb_printf(t, "loomship_build_info{version=\"%s\",commit=\"%s\"} 1\n",
            LOOMSHIP_VERSION, LOOMSHIP_COMMIT);
  gauge_time(t, "loomship_start_time_seconds",
          "When the server started, in seconds since the epoch.",
          s->started_ns);
  gauge_f(t, "loomship_uptime_seconds", "Seconds since the server started.",
          seconds_of(http_monotonic_ns() - s->started_mono_ns));
  gauge_u(t, "loomship_ready", "1 when /readyz answers 200.", f->ready);
  gauge_u(t, "loomship_epoch", "The node's epoch.", http_figures_epoch(f));
  gauge_u(t, "loomship_applied_seq", "Seq of the image's position.",
          st->applied.seq);
  gauge_u(t, "loomship_applied_pages", "Length of the image in pages.",
          st->applied.pages);
  gauge_time(t, "loomship_applied_commit_time_seconds",
          "Commit time of the image's position (0: unknown).",
          st->applied.commit_time_ns);
}

/* A standby's own: received, lag, contact, divergence. */
static void standby_metrics(textbuf *t, const http_figures *f)
{
  const http_server_status *st = &f->view.status;
  gauge_u(t, "loomship_received_seq",
          "Seq of the newest frame durable in the receive log.",
          st->received.seq);
  gauge_u(t, "loomship_primary_seq", "Newest seq heard of from the primary.",
          st->primary_seq);
  gauge_u(t, "loomship_lag_frames", "Commits heard of and not applied.",
          st->lag_frames);
  gauge_u(t, "loomship_lag_bytes", "Frame bytes received and not applied.",
          st->lag_bytes);
  gauge_f(t, "loomship_lag_seconds",
          "Age of the oldest commit heard of and not applied.",
          st->lag_seconds);
  gauge_f(t, "loomship_apply_delay_seconds",
          "--apply-delay: commits are applied once this old (0: at once).",
          st->apply_delay_seconds);
  if (f->view.clock_skew_known)
    gauge_f(t, "loomship_clock_skew_seconds",
            "This node's clock minus the primary's, estimated.",
            f->view.clock_skew_seconds);
  gauge_u(t, "loomship_replay_paused",
          "1 while a base image is coming in.", st->replay_paused);
  gauge_u(t, "loomship_receive_log_bytes", "Size of the receive log.",
          f->view.receive_log_bytes);
  gauge_time(t, "loomship_last_contact_time_seconds",
          "When the primary was last heard from (0: never).",
          f->view.last_contact_ns);
  gauge_u(t, "loomship_diverged",
          "1 while input that would move this standby backwards or "
          "sideways is being refused (status: diverged).",
          st->diverged != 0);
  histogram(t, "loomship_apply_duration_seconds",
            "How long each group apply took: frames from the receive log "
            "committed to the image.", &f->view.apply_durations);
  histogram(t, "loomship_receive_log_append_duration_seconds",
            "How long each frame's append to the receive log took, its "
            "fdatasync included: the frame is received at its end.",
            &f->view.append_durations);
  counter_u(t, "loomship_divergence_refusals_total",
            "Frames and base images refused as moving this standby "
            "backwards or sideways.", st->divergences);
}

/* Counters of frames, backups and uploads (every role). */
static void counter_metrics(textbuf *t, const http_figures *f)
{
  const http_server_status *st = &f->view.status;
  counter_u(t, "loomship_frames_received_total",
            "Commit frames made durable in the receive log.",
            st->frames_received);
  counter_u(t, "loomship_frames_applied_total",
            "Frames applied to the image.", st->frames_applied);
  counter_u(t, "loomship_apply_commits_total",
            "Store commits the applied frames took (frames waiting in the "
            "receive log are merged).", st->apply_commits);
  counter_u(t, "loomship_frames_duplicate_total",
            "Frames received again (answered, nothing changed).",
            st->duplicates);
  counter_u(t, "loomship_heartbeats_received_total",
            "Heartbeats received from the primary.", f->view.heartbeats);
  counter_u(t, "loomship_received_bytes_total",
            "Bytes of the commit frames received.", f->view.bytes_received);
  counter_u(t, "loomship_base_images_total", "Base images installed.",
            f->view.bases);
  counter_u(t, "loomship_apply_errors_total",
            "Frames that failed to apply.", f->view.apply_failures);
  gauge_u(t, "loomship_backups_in_progress", "Backup downloads in progress.",
          f->backup.in_progress);
  counter_u(t, "loomship_backups_total", "Backup downloads started.",
            f->backup.started);
  counter_u(t, "loomship_backup_sent_bytes_total",
            "Bytes of backup image streams sent.", f->backup.bytes_sent);
  integrity_metrics(t, &f->integrity);
  gauge_u(t, "loomship_http_uploads_in_progress",
          "Frame and base uploads in progress.", f->uploads);
  counter_u(t, "loomship_http_auth_failures_total",
            "Requests refused for a missing or wrong token.", f->auth_failures);
  counter_u(t, "loomship_frame_tag_refusals_total",
            "Frames and base images refused for a missing or wrong frame tag.",
            f->tags.refused);
}

/* The standard process_* families (metrics_process.c reads them). */
static void process_metrics(textbuf *t)
{
  http_process_figures p;
  http_process_figures_read(&p);
  if (p.cpu_known) {
    char num[HTTP_JSON_NUMBER_MAX];
    tb_head(t, "process_cpu_seconds_total", "counter",
            "Total user and system CPU time spent in seconds.");
    tb_printf(t, "process_cpu_seconds_total %s\n", http_json_format_double(p.cpu_seconds, num));
  }
  if (p.memory_known) {
    gauge_u(t, "process_resident_memory_bytes", "Resident memory size in bytes.",
            p.resident_bytes);
    gauge_u(t, "process_virtual_memory_bytes", "Virtual memory size in bytes.",
            p.virtual_bytes);
  }
  if (p.fds_known) {
    gauge_u(t, "process_open_fds", "Number of open file descriptors.", p.open_fds);
    if (p.max_fds)
      gauge_u(t, "process_max_fds", "Maximum number of open file descriptors.",
              p.max_fds);
  }
  if (p.start_time_ns)
    gauge_time(t, "process_start_time_seconds",
               "Start time of the process since unix epoch in seconds.", p.start_time_ns);
}

/* A primary's sync mode: required standbys and whether it is degraded. */
static void sync_metrics(textbuf *t, http_server *s)
{
  http_sync_status sync = {0};
  if (!s->primary.sync_state)
    return;
  s->primary.sync_state(s->primary.ctx, &sync);
  gauge_u(t, "loomship_sync_required", "Standbys each save waits for (--sync N; 0: async).",
          sync.required);
  gauge_u(t, "loomship_sync_degraded",
          "1 while fewer than --sync N standbys hold the latest commit since a save "
          "timed out (status: sync.degraded).", sync.degraded);
  gauge_time(t, "loomship_sync_degraded_since_time_seconds",
             "When sync mode became degraded (0: it is not).",
             sync.degraded ? sync.degraded_since_ns : 0);
}

/* A primary's replication log: what a standby that was away can catch up
 * from without a base image. */
static void log_metrics(textbuf *t, http_server *s)
{
  replicate_log_stats ls;
  if (s->primary.save_durations) {
    replicate_duration_histogram h;
    s->primary.save_durations(s->primary.ctx, &h);
    histogram(t, "loomship_save_duration_seconds",
              "How long the application's saves took (commit, and in sync mode "
              "the wait for standbys).", &h);
  }
  if (!s->primary.log_stats)
    return;
  s->primary.log_stats(s->primary.ctx, &ls);
  gauge_u(t, "loomship_replication_log_bytes",
          "Size of the replication log on disk, record headers included.", ls.bytes);
  gauge_u(t, "loomship_replication_log_oldest_seq",
          "Oldest seq the replication log still holds (0: empty).", ls.oldest_seq);
  gauge_u(t, "loomship_replication_log_newest_seq",
          "Newest seq in the replication log (0: empty).", ls.newest_seq);
  gauge_u(t, "loomship_replication_log_segments", "Segment files of the replication log.",
          ls.segments);
}

/* The store's commit log (DESIGN section 9), when the server knows it. */
static void commit_log_metrics(textbuf *t, const http_figures *f)
{
  const http_server_status *st = &f->view.status;
  if (!st->commit_log_known)
    return;
  const loom_log_stats *c = &st->commit_log;
  gauge_u(t, "loomship_checkpoint_seq",
          "Seq the checkpoint has brought the image file to (durably).",
          c->checkpoint.seq);
  gauge_u(t, "loomship_commit_log_used_bytes",
          "Bytes of the commit log holding records not yet checkpointed.", c->used);
  gauge_u(t, "loomship_commit_log_size_bytes", "Size of the commit log's ring.",
          c->size);
  gauge_u(t, "loomship_commit_log_queued_records",
          "Committed records waiting for the checkpoint.", c->queued);
  counter_u(t, "loomship_commit_log_checkpoints_total",
            "Checkpoints (batches of records merged into the image) since start.",
            c->checkpoints);
  counter_u(t, "loomship_commit_log_waits_total",
            "Commits that waited for log space since start.", c->waits);
  gauge_u(t, "loomship_commit_log_merge_bytes",
          "Memory the checkpoint holds for records not yet merged.",
          c->merge_bytes);
  gauge_u(t, "loomship_commit_log_merge_peak_bytes",
          "Highest merge_bytes since start (at most 1/16 of the ring).",
          c->merge_peak_bytes);
  gauge_u(t, "loomship_commit_log_recent_bytes",
          "Memory of the arena's copies of pages not yet checkpointed.",
          c->recent_bytes);
}

/* The archiver's (DESIGN section 7), when the node archives. */
static void archive_metrics(textbuf *t, const http_figures *f)
{
  if (!f->archiving)
    return;
  const replicate_archive_status *a = &f->archive;
  gauge_u(t, "loomship_archive_uploaded_seq", "Newest seq uploaded to the archive.",
          a->uploaded_seq);
  gauge_u(t, "loomship_archive_lag_frames",
          "Commits not yet in the archive.", a->lag_frames);
  gauge_f(t, "loomship_archive_lag_seconds",
          "Age of the oldest commit not yet in the archive.", a->lag_seconds);
  gauge_u(t, "loomship_archive_bases", "Base images kept in the archive at this epoch.",
          a->bases);
  gauge_u(t, "loomship_archive_gap", "1 when the archive recorded a gap since start.",
          a->gap);
  gauge_u(t, "loomship_archive_stopped",
          "1 when archiving stopped for good (see status archive.last_error).", a->stopped);
  gauge_u(t, "loomship_archive_backlog_bytes",
          "Frames waiting in memory for their upload.", a->backlog_bytes);
  counter_u(t, "loomship_archive_uploaded_bytes_total", "Object bytes uploaded.",
            a->requests.bytes_up);
  counter_u(t, "loomship_archive_downloaded_bytes_total", "Object bytes downloaded.",
            a->requests.bytes_down);
  tb_head(t, "loomship_archive_requests_total", "counter",
          "Requests sent to the object store, by kind (retries count each time).");
  tb_printf(t, "loomship_archive_requests_total{kind=\"put\"} %llu\n"
               "loomship_archive_requests_total{kind=\"get\"} %llu\n"
               "loomship_archive_requests_total{kind=\"list\"} %llu\n"
               "loomship_archive_requests_total{kind=\"delete\"} %llu\n",
            (unsigned long long)a->requests.puts, (unsigned long long)a->requests.gets,
            (unsigned long long)a->requests.lists, (unsigned long long)a->requests.deletes);
  counter_u(t, "loomship_archive_errors_total", "Object store requests that failed.",
            a->requests.errors);
}

/* Failed requests per standby and kind (replicate.h names the kinds). */
static void peer_error_metrics(textbuf *t, const http_figures *f)
{
  per_peer_set(t, f, "loomship_standby_errors_total", "counter",
               "Failed requests to the standby, by kind: unreachable, stalled, refused "
               "(an HTTP error answer), unauthorized, local.",
               "kind", REPLICATE_PEER_ERROR_KINDS, error_kind_name, errors_of_kind);
}

/* Replies by endpoint and status code (http_server_count). */
static void request_metrics(textbuf *t, http_server *s)
{
  tb_head(t, "loomship_http_requests_total", "counter",
          "HTTP requests answered, by endpoint and status code.");
  pthread_mutex_lock(&s->stats_mu);
  for (int ep = 0; ep < HTTP_EP_COUNT; ep++)
    for (unsigned c = 0; c < HTTP_CODE_SLOTS; c++) {
      uint64_t n = s->requests[ep][c];
      if (!n)
        continue;
      char code[16];
      if (c < HTTP_CODE_SLOTS - 1)
        snprintf(code, sizeof code, "%u", http_counted_codes[c]);
      else
        snprintf(code, sizeof code, "other");
      tb_printf(t,
                "loomship_http_requests_total{endpoint=\"%s\",code=\"%s\"} "
                "%" PRIu64 "\n",
                http_endpoint_path((http_endpoint)ep), code, n);
    }
  pthread_mutex_unlock(&s->stats_mu);
}

/* A cluster member's gauges (DESIGN section 6); nothing on other nodes. */
static void cluster_metrics(textbuf *t, http_server *s)
{
  http_cluster_status *c = http_cluster_collect(s);
  if (!c)
    return;
  gauge_u(t, "loomship_cluster_is_leader", "1 while this member leads.", c->is_leader);
  gauge_u(t, "loomship_cluster_epoch", "The leader's epoch as etcd says.", c->epoch);
  gauge_f(t, "loomship_cluster_lease_remaining_seconds",
          "Time left on this member's lease, measured from the send time of its "
          "last successful renewal; 0 without a live lease.",
          c->lease_remaining_seconds);
  gauge_u(t, "loomship_cluster_etcd_up", "1 while etcd answers.", c->etcd_ok);
  counter_u(t, "loomship_cluster_elections_total", "Elections this member won.",
            c->elections_total);
  counter_u(t, "loomship_cluster_self_fence_total",
            "Times this member stopped acknowledging saves as leader because its "
            "lease may have expired.", c->self_fence_total);
  gauge_u(t, "loomship_cluster_rewound_pages",
          "Pages the last rewind wrote (only those that differed, through the "
          "page-hash tree; all of them from a base image); 0 without one.",
          c->rewound_pages);
  gauge_u(t, "loomship_cluster_rewound_image_pages",
          "The image's pages after the last rewind; 0 without one.",
          c->rewound_image_pages);
  free(c);
}

int http_answer_metrics(http_server *s, struct MHD_Connection *conn)
{
  http_figures f;
  http_figures_collect(s, &f);
  textbuf t = {0};
  node_metrics(&t, s, &f);
  if (f.standby_role) {
    standby_metrics(&t, &f);
  } else {
    gauge_u(&t, "loomship_fenced",
            "1 once a standby was promoted past this primary.", f.fenced);
    gauge_u(&t, "loomship_standbys", "Standbys configured.", f.peer_count);
    sync_metrics(&t, s);
    log_metrics(&t, s);
    peer_metrics(&t, &f);
    peer_error_metrics(&t, &f);
  }
  archive_metrics(&t, &f); /* a primary's or a standby's */
  commit_log_metrics(&t, &f);
  cluster_metrics(&t, s);
  counter_metrics(&t, &f);
  guard_metrics(&t, s->guard);
  request_metrics(&t, s);
  process_metrics(&t);
  http_figures_free(&f);

  if (t.failed) {
    free(t.data);
    http_reply reply = {0};
    http_reply_error(&reply, 503, "out of memory");
    return http_server_send(s, conn, HTTP_EP_METRICS, &reply);
  }
  return http_server_send_body(s, conn, HTTP_EP_METRICS, t.data, t.len,
                               "text/plain; version=0.0.4; charset=utf-8");
}
