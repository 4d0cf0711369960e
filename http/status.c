/*
 * status.c: what the node knows, gathered once per request (figures), and
 * the documents built from it: GET /v1/status (DESIGN.md section 5: the
 * names are a public contract) and GET /readyz.
 *
 * On a primary the standbys it ships to are its *peers* (replicate.h):
 * their list is shown under "standbys", one object per peer.
 */
#include <stdlib.h>
#include <string.h>

#include "server_internal.h"

/* ---------------------------------------------------------------------- */
/* Figures */

/* A standby's readiness (server.h, READINESS): view.status.ready says
 * only that the last apply did not fail. */
static void standby_figures(http_server *s, http_figures *f)
{
  http_server_status *st = &f->view.status;
  http_standby_view_get(s->standby, &f->view);
  f->promoted = st->role == HTTP_ROLE_PRIMARY;
  f->standby_role = !f->promoted;
  if (s->archive) { /* an archiving standby (DESIGN section 7) */
    f->archiving = true;
    s->archive(s->archive_ctx, &f->archive);
  }
  bool apply_ok = st->ready;
  f->ready = true;
  if (!f->standby_role)
    return;
  if (st->replay_paused) {
    f->ready = false;
    f->not_ready = "base image in progress";
  } else if (!apply_ok) {
    f->ready = false;
    f->not_ready = "a received frame failed to apply";
  } else if (st->lag_seconds - st->apply_delay_seconds > s->ready_max_lag_seconds) {
    f->ready = false;
    f->not_ready = "lag above the threshold";
  }
}

/* The primary's peers, asked again with a larger array while the list
 * grows (three tries). None when out of memory. */
static void peers_collect(http_server *s, http_figures *f)
{
  size_t cap = 16;
  for (int attempt = 0; attempt < 3; attempt++) {
    replicate_peer_status *list = calloc(cap, sizeof *list);
    if (!list)
      return;
    size_t n = s->primary.peers(s->primary.ctx, list, cap);
    if (n <= cap) {
      f->peers = list;
      f->peer_count = n;
      return;
    }
    free(list);
    cap = n;
  }
}

static void primary_figures(http_server *s, http_figures *f)
{
  http_server_status *st = &f->view.status;
  st->role = HTTP_ROLE_PRIMARY;
  s->primary.position(s->primary.ctx, &st->applied);
  if (s->primary.history)
    s->primary.history(s->primary.ctx, &st->history);
  st->received = st->applied;
  st->primary_seq = st->applied.seq;
  f->fenced = s->primary.fenced && s->primary.fenced(s->primary.ctx);
  f->ready = !f->fenced;
  if (f->fenced)
    f->not_ready = "fenced: a standby was promoted";
  if (s->primary.peers)
    peers_collect(s, f);
  if (s->primary.commit_log) {
    st->commit_log_known = true;
    s->primary.commit_log(s->primary.ctx, &st->commit_log);
  }
  if (s->primary.archive) {
    f->archiving = true;
    s->primary.archive(s->primary.ctx, &f->archive);
  }
}

void http_figures_collect(http_server *s, http_figures *f)
{
  memset(f, 0, sizeof *f);
  http_server_status *st = &f->view.status;
  if (s->standby)
    standby_figures(s, f);
  else
    primary_figures(s, f);
  st->fenced = f->fenced;
  st->ready = f->ready;
  http_backups_figures(s->backups, &f->backup);
  http_server_integrity(s, &f->integrity);
  st->backups_in_progress = f->backup.in_progress;
  pthread_mutex_lock(&s->stats_mu);
  f->uploads = s->uploads;
  f->auth_failures = s->auth_failures;
  pthread_mutex_unlock(&s->stats_mu);
  http_auth_figures(s, &f->tags);
}

void http_figures_free(http_figures *f)
{
  free(f->peers);
  f->peers = NULL;
}

uint64_t http_figures_epoch(const http_figures *f)
{
  const http_server_status *st = &f->view.status;
  return st->received.epoch > st->applied.epoch ? st->received.epoch
                                                : st->applied.epoch;
}

void http_server_get_status(http_server *s, http_server_status *out)
{
  http_figures f;
  http_figures_collect(s, &f);
  *out = f.view.status;
  http_figures_free(&f);
}

/* ---------------------------------------------------------------------- */
/* GET /v1/status */

static void lag_json(http_json_writer *w, uint64_t frames, uint64_t bytes,
                     double seconds)
{
  http_json_key(w, "lag");
  http_json_object_begin(w);
  http_json_member_uint(w, "frames", frames);
  http_json_member_uint(w, "bytes", bytes);
  http_json_member_double(w, "seconds", seconds);
  http_json_object_end(w);
}

/* "diverged": null, or the last input refused as moving this standby
 * backwards or sideways: {"code", "reason", "at"}. */
static void diverged_json(http_json_writer *w, const http_server_status *st)
{
  http_json_key(w, "diverged");
  if (!st->diverged) {
    http_json_null(w);
    return;
  }
  http_json_object_begin(w);
  http_json_member_string(w, "code", http_error_name(st->diverged));
  http_json_member_string(w, "reason", replicate_strerror(st->diverged));
  http_json_member_time_ns(w, "at", st->diverged_at_ns);
  http_json_member_uint(w, "refusals", st->divergences);
  http_json_object_end(w);
}

/* A standby's own keys: its positions, lag and contact with the primary. */
static void standby_json(const http_figures *f, http_json_writer *w)
{
  const http_server_status *st = &f->view.status;
  diverged_json(w, st);
  http_json_key(w, "received");
  http_json_position(w, &st->received);
  http_json_key(w, "computed");
  http_json_position(w, &st->computed);
  http_json_member_uint(w, "primary_seq", st->primary_seq);
  lag_json(w, st->lag_frames, st->lag_bytes, st->lag_seconds);
  if (st->apply_delay_seconds > 0) { /* a delayed standby (DESIGN section 7) */
    http_json_key(w, "apply_delay");
    http_json_object_begin(w);
    http_json_member_double(w, "seconds", st->apply_delay_seconds);
    http_json_member_uint(w, "waiting_frames", st->delay_waiting_frames);
    http_json_member_uint(w, "discarded_by_promotion", st->delay_discarded);
    http_json_object_end(w);
  }
  http_json_key(w, "clock_skew_seconds");
  if (f->view.clock_skew_known)
    http_json_double(w, f->view.clock_skew_seconds);
  else
    http_json_null(w);
  http_json_key(w, "replay_paused");
  http_json_bool(w, st->replay_paused);
  http_json_member_uint(w, "primary_epoch", f->view.primary_epoch);
  http_json_member_time_ns(w, "last_contact_at", f->view.last_contact_ns);
  int apply_error = st->last_apply_error;
  http_json_member_string(w, "last_apply_error",
                          apply_error ? replicate_strerror(apply_error) : NULL);
  http_json_member_time_ns(w, "last_apply_error_at",
                           apply_error ? f->view.last_apply_error_at_ns : 0);
  http_json_member_uint(w, "receive_log_bytes", f->view.receive_log_bytes);
}

/* "sync": {"required", "count" (the same, for older readers), "degraded",
 * "degraded_since"}. */
static void sync_json(http_server *s, http_json_writer *w)
{
  http_sync_status sync = {0};
  s->primary.sync_state(s->primary.ctx, &sync);
  http_json_key(w, "sync");
  http_json_object_begin(w);
  http_json_member_uint(w, "required", sync.required);
  http_json_member_uint(w, "count", sync.required);
  http_json_key(w, "degraded");
  http_json_bool(w, sync.degraded);
  http_json_member_time_ns(w, "degraded_since", sync.degraded ? sync.degraded_since_ns : 0);
  http_json_object_end(w);
}

/* One entry of "standbys": a peer as the shipper reports it. */
static void peer_json(const replicate_peer_status *p, http_json_writer *w)
{
  http_json_object_begin(w);
  http_json_member_string(w, "url", p->url);
  http_json_member_string(w, "state", replicate_peer_state_name(p->state));
  http_json_member_uint(w, "sent_seq", p->sent_seq);
  http_json_member_uint(w, "received_seq", p->received_seq);
  http_json_member_uint(w, "applied_seq", p->applied_seq);
  http_json_member_uint(w, "base_images", p->base_images_sent);
  lag_json(w, p->lag_frames, p->lag_bytes, p->lag_seconds);
  http_json_member_time_ns(w, "last_reply_at", p->last_reply_at_ns);
  http_json_member_string(w, "last_error", p->last_error[0] ? p->last_error : NULL);
  http_json_member_time_ns(w, "last_error_at", p->last_error_at_ns);
  http_json_key(w, "bytes");
  http_json_object_begin(w);
  http_json_member_uint(w, "raw", p->bytes_raw);
  http_json_member_uint(w, "wire", p->bytes_wire);
  http_json_object_end(w);
  http_json_member_uint(w, "verified_seq", p->verified_seq);
  http_json_member_uint(w, "checksum_mismatches", p->checksum_mismatches);
  http_json_object_end(w);
}

/* A primary's own keys (also a promoted standby's): fenced, sync, its
 * peers. */
static void primary_json(http_server *s, const http_figures *f,
                         http_json_writer *w)
{
  http_json_key(w, "fenced");
  http_json_bool(w, f->fenced);
  if (s->primary.sync_state)
    sync_json(s, w);
  if (f->promoted) {
    http_json_member_time_ns(w, "promoted_at", f->view.promoted_at_ns);
  }
  http_json_key(w, "standbys");
  http_json_array_begin(w);
  for (size_t i = 0; i < f->peer_count; i++)
    peer_json(&f->peers[i], w);
  http_json_array_end(w);
}

static void backup_json(const http_figures *f, http_json_writer *w)
{
  http_json_key(w, "backup");
  http_json_object_begin(w);
  http_json_member_uint(w, "in_progress", f->backup.in_progress);
  http_json_key(w, "position");
  if (f->backup.open)
    http_json_position(w, &f->backup.position);
  else
    http_json_null(w);
  http_json_object_end(w);
}

static void counters_json(const http_figures *f, http_json_writer *w)
{
  const http_server_status *st = &f->view.status;
  http_json_key(w, "counters");
  http_json_object_begin(w);
  http_json_member_uint(w, "frames_received", st->frames_received);
  http_json_member_uint(w, "frames_applied", st->frames_applied);
  http_json_member_uint(w, "apply_commits", st->apply_commits);
  http_json_member_uint(w, "duplicates", st->duplicates);
  http_json_member_uint(w, "heartbeats", f->view.heartbeats);
  http_json_member_uint(w, "base_images", f->view.bases);
  http_json_member_uint(w, "backups", f->backup.started);
  http_json_object_end(w);
}

/* "integrity" (DESIGN section 8): the scrubber's findings. */
static void integrity_json(const http_figures *f, http_json_writer *w)
{
  const replicate_scrub_status *in = &f->integrity;
  http_json_key(w, "integrity");
  http_json_object_begin(w);
  http_json_member_string(w, "state", replicate_integrity_state_name(in->state));
  http_json_key(w, "scrubbing");
  http_json_bool(w, in->running);
  http_json_member_time_ns(w, "last_scrub_at", in->last_scrub_at_ns);
  http_json_member_uint(w, "pages_scrubbed", in->pages_scrubbed);
  http_json_member_uint(w, "pages_repaired", in->pages_repaired);
  http_json_member_uint(w, "bad_pages", in->bad_pages);
  http_json_member_string(w, "last_error", in->last_error[0] ? in->last_error : NULL);
  http_json_object_end(w);
}

/* "checkpoint_seq" and "commit_log" (DESIGN section 9): how far the
 * checkpoint has brought the image file, and the log's fill; absent when
 * the node's store is not known to the server. */
static void commit_log_json(const http_figures *f, http_json_writer *w)
{
  const http_server_status *st = &f->view.status;
  if (!st->commit_log_known)
    return;
  const loom_log_stats *c = &st->commit_log;
  http_json_member_uint(w, "checkpoint_seq", c->checkpoint.seq);
  http_json_key(w, "commit_log");
  http_json_object_begin(w);
  http_json_member_uint(w, "used_bytes", c->used);
  http_json_member_uint(w, "size_bytes", c->size);
  http_json_member_uint(w, "queued", c->queued);
  http_json_member_uint(w, "checkpoints", c->checkpoints);
  http_json_member_uint(w, "waits", c->waits);
  http_json_member_uint(w, "merge_bytes", c->merge_bytes);
  http_json_member_uint(w, "merge_peak_bytes", c->merge_peak_bytes);
  http_json_member_uint(w, "recent_bytes", c->recent_bytes);
  http_json_object_end(w);
}

/* "archive" (DESIGN section 7): null unless the node archives. */
static void archive_json(const http_figures *f, http_json_writer *w)
{
  const replicate_archive_status *a = &f->archive;
  http_json_key(w, "archive");
  if (!f->archiving) {
    http_json_null(w);
    return;
  }
  http_json_object_begin(w);
  http_json_member_string(w, "url", a->url);
  http_json_member_uint(w, "uploaded_seq", a->uploaded_seq);
  http_json_key(w, "lag");
  http_json_object_begin(w);
  http_json_member_uint(w, "frames", a->lag_frames);
  http_json_member_double(w, "seconds", a->lag_seconds);
  http_json_object_end(w);
  http_json_member_uint(w, "bases", a->bases);
  http_json_key(w, "gap");
  if (a->gap) {
    http_json_object_begin(w);
    http_json_member_uint(w, "first", a->gap_first);
    http_json_member_uint(w, "last", a->gap_last);
    http_json_object_end(w);
  } else {
    http_json_null(w);
  }
  http_json_key(w, "stopped");
  http_json_bool(w, a->stopped);
  http_json_member_string(w, "last_error", a->last_error[0] ? a->last_error : NULL);
  http_json_member_time_ns(w, "last_error_at", a->last_error_at_ns);
  http_json_object_end(w);
}

/* "frame_auth" (DESIGN section 8, docs/AUTH.md): the frame key's ids and
 * the input refused for its tag. */
static void frame_auth_json(const http_figures *f, http_json_writer *w)
{
  const http_tag_figures *t = &f->tags;
  http_json_key(w, "frame_auth");
  http_json_object_begin(w);
  http_json_member_string(w, "key_id", t->keyed ? t->key_id : NULL);
  http_json_member_string(w, "previous_key_id",
                          t->previous_key_id[0] ? t->previous_key_id : NULL);
  http_json_member_uint(w, "refused", t->refused);
  http_json_key(w, "last_refusal");
  if (t->last_at_ns) {
    http_json_object_begin(w);
    http_json_member_string(w, "code", http_error_name(t->last_code));
    http_json_member_string(w, "reason", t->last_reason);
    http_json_member_time_ns(w, "at", t->last_at_ns);
    http_json_object_end(w);
  } else {
    http_json_string(w, NULL);
  }
  http_json_object_end(w);
}

static void status_json(http_server *s, const http_figures *f, http_json_writer *w)
{
  const http_server_status *st = &f->view.status;
  http_json_object_begin(w);
  http_json_member_string(w, "role", f->standby_role ? "standby" : "primary");
  http_json_member_uint(w, "epoch", http_figures_epoch(f));
  http_json_history(w, &st->history);
  http_json_key(w, "applied");
  http_json_position(w, &st->applied);
  if (f->standby_role)
    standby_json(f, w);
  else
    primary_json(s, f, w);
  http_json_key(w, "ready");
  http_json_bool(w, f->ready);
  commit_log_json(f, w);
  integrity_json(f, w);
  archive_json(f, w);
  frame_auth_json(f, w);
  http_cluster_status *cluster = http_cluster_collect(s);
  if (cluster)
    http_cluster_json(cluster, w);
  free(cluster);
  backup_json(f, w);
  counters_json(f, w);
  http_json_member_double(w, "uptime_seconds", (double)(http_monotonic_ns() - s->started_mono_ns) / 1e9);
  http_json_member_time_ns(w, "started_at", s->started_ns);
  http_json_member_string(w, "version", LOOMSHIP_VERSION);
  http_json_object_end(w);
}

int http_answer_status(http_server *s, struct MHD_Connection *conn)
{
  http_figures f;
  http_figures_collect(s, &f);
  http_reply reply = {.status = 200};
  http_json_init(&reply.body);
  status_json(s, &f, &reply.body);
  http_figures_free(&f);
  return http_server_send(s, conn, HTTP_EP_STATUS, &reply);
}

/* ---------------------------------------------------------------------- */
/* GET /readyz */

int http_answer_readyz(http_server *s, struct MHD_Connection *conn)
{
  http_figures f;
  http_figures_collect(s, &f);
  http_reply reply = {0};
  http_reply_object(&reply, f.ready ? 200 : 503);
  http_json_key(&reply.body, "ready");
  http_json_bool(&reply.body, f.ready);
  http_json_key(&reply.body, "reason");
  http_json_string(&reply.body, f.not_ready);
  http_json_key(&reply.body, "role");
  http_json_string(&reply.body, f.standby_role ? "standby" : "primary");
  http_json_key(&reply.body, "lag_seconds");
  http_json_double(&reply.body, f.view.status.lag_seconds);
  http_json_key(&reply.body, "threshold_seconds");
  http_json_double(&reply.body, s->ready_max_lag_seconds);
  http_figures_free(&f);
  return http_server_send(s, conn, HTTP_EP_READYZ, &reply);
}
