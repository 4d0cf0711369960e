/*
 * standby.c: the standby's endpoints, as thin adapters over the receiver
 * of replicate/ (receiver.h: the receive log, the applier, group apply,
 * promotion, base images, lag; its design is at the top of
 * replicate/receiver.c). Each request is handed to the receiver as bytes,
 * chunks or a promote request; the outcome it returns becomes the JSON
 * answer of docs/HTTP.md through one table per endpoint (status code,
 * "error" text, and the keys the answer carries). No replication policy
 * lives here.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "standby.h"

/* ---------------------------------------------------------------------- */
/* Outcomes as answers */

/* The keys an answer carries, after "error", in this order. */
enum {
  K_CODE = 1u << 0,             /* "code": the error name of o->code */
  K_DETAIL = 1u << 1,           /* "detail": its description */
  K_REASON = 1u << 2,           /* "reason": the same, for a divergence */
  K_FRAME_EPOCH = 1u << 3,      /* "frame_epoch": the refused frame's */
  K_IMAGE_EPOCH = 1u << 4,      /* "image_epoch": the refused image's */
  K_ROLE = 1u << 5,             /* "role": "primary" or "standby" */
  K_FRAME_BEFORE = 1u << 6,     /* "frame_before": the frame's before */
  K_PROMOTE = 1u << 7,          /* "code", "reason", "primary_seq" of a
                                   promotion refused */
  K_NEW_EPOCH = 1u << 8,        /* "epoch", "applied" after a promotion */
  K_POSITIONS = 1u << 9,        /* "received", "applied", "epoch",
                                   "history" */
  K_DUPLICATE = 1u << 10,       /* "duplicate" */
  S_DECODE = 1u << 11,          /* status: 413 too big, 503 out of memory */
  S_STORE = 1u << 12,           /* status: from the store's error */
  S_DISK = 1u << 13,            /* status: 507 when the disk is full */
};

typedef struct reply_shape {
  unsigned status;              /* 0: the receiver never gives this here */
  const char *error;            /* the "error" text; NULL for 200 */
  unsigned keys;
} reply_shape;

#define POS K_POSITIONS

static const reply_shape frame_shapes[REPLICATE_RECV_LAST] = {
    [REPLICATE_RECV_OK] = {200, NULL, POS | K_DUPLICATE},
    [REPLICATE_RECV_DUPLICATE] = {200, NULL, POS | K_DUPLICATE},
    [REPLICATE_RECV_HEARTBEAT] = {200, NULL, POS},
    [REPLICATE_RECV_MALFORMED] = {400, "malformed frame",
                                  S_DECODE | K_CODE | K_DETAIL},
    [REPLICATE_RECV_STALE_EPOCH] = {409, "stale epoch",
                                    K_FRAME_EPOCH | K_ROLE | POS},
    [REPLICATE_RECV_DIVERGED] = {409, "diverged", K_CODE | K_REASON | POS},
    [REPLICATE_RECV_GAP] = {409, "gap", K_CODE | K_FRAME_BEFORE | POS},
    [REPLICATE_RECV_OVERLAP] = {409, "overlap", K_CODE | K_FRAME_BEFORE | POS},
    [REPLICATE_RECV_PROMOTED] = {409, "not a standby", K_ROLE | POS},
    [REPLICATE_RECV_BASE_ACTIVE] = {503, "base image in progress", POS},
    [REPLICATE_RECV_BEHIND] = {503, "applier behind", POS},
    [REPLICATE_RECV_DISK_FULL] = {507, "disk full", K_CODE | POS},
    [REPLICATE_RECV_STORAGE_FAILED] =
        {503, "storage failed: the standby must restart", K_CODE | POS},
    [REPLICATE_RECV_WRITE_FAILED] = {500, "receive log write failed",
                                     K_CODE | POS},
    [REPLICATE_RECV_APPLY_STOPPED] = {409, "checksum mismatch", K_CODE | POS},
    [REPLICATE_RECV_APPLY_STALE_EPOCH] = {409, "stale epoch", K_CODE | POS},
    [REPLICATE_RECV_APPLY_GAP] = {409, "gap", K_CODE | POS},
    [REPLICATE_RECV_APPLY_DISK_FULL] = {507, "disk full", POS},
    [REPLICATE_RECV_APPLY_STORAGE_FAILED] =
        {503, "storage failed: the standby must restart", POS},
    [REPLICATE_RECV_APPLY_REFUSED] = {400, "frame does not apply",
                                      K_CODE | K_DETAIL | POS},
    [REPLICATE_RECV_APPLY_FAILED] = {500, "apply failed",
                                     K_CODE | K_DETAIL | POS},
    [REPLICATE_RECV_SINGLE_FRAMES] = {409, "single frames only",
                                      K_FRAME_BEFORE | POS},
};

static const reply_shape promote_shapes[REPLICATE_RECV_LAST] = {
    [REPLICATE_RECV_OK] = {200, NULL, K_ROLE | K_NEW_EPOCH},
    [REPLICATE_RECV_ALREADY_PRIMARY] = {409, "already primary", POS},
    [REPLICATE_RECV_PROMOTE_EMPTY] = {409, "promotion refused",
                                      K_PROMOTE | POS},
    [REPLICATE_RECV_PROMOTE_BEHIND] = {409, "promotion refused",
                                       K_PROMOTE | POS},
    [REPLICATE_RECV_BASE_ACTIVE] = {409, "base image in progress", POS},
    [REPLICATE_RECV_PROMOTE_FAILED] = {500, "promotion failed",
                                       S_DISK | K_CODE | POS},
};

static const reply_shape base_shapes[REPLICATE_RECV_LAST] = {
    [REPLICATE_RECV_OK] = {200, NULL, POS},
    [REPLICATE_RECV_NO_MEMORY] = {503, "out of memory", 0},
    [REPLICATE_RECV_PROMOTED] = {409, "not a standby", POS},
    [REPLICATE_RECV_BASE_RUNNING] = {409, "base image already in progress",
                                     POS},
    [REPLICATE_RECV_BASE_HEADER] = {400, "malformed image stream header",
                                    K_CODE | K_DETAIL | POS},
    [REPLICATE_RECV_BASE_TOO_LARGE] = {413, "image too large", POS},
    [REPLICATE_RECV_BASE_LENGTH] =
        {400, "Content-Length does not match the image header", POS},
    [REPLICATE_RECV_STALE_EPOCH] = {409, "stale epoch", K_IMAGE_EPOCH | POS},
    [REPLICATE_RECV_DIVERGED] = {409, "diverged", K_CODE | K_DETAIL | POS},
    [REPLICATE_RECV_BASE_STORE] = {500, "base image refused",
                                   S_STORE | K_CODE | K_DETAIL | POS},
    [REPLICATE_RECV_BASE_TRAILING] = {400,
                                      "bytes after the last page of the image",
                                      POS},
    [REPLICATE_RECV_BASE_TRUNCATED] = {400, "truncated image stream", POS},
    [REPLICATE_RECV_BASE_COMMIT] = {500, "base image not committed",
                                    S_STORE | K_CODE | POS},
    [REPLICATE_RECV_BASE_MOVED] = {409, "position moved", K_CODE | POS},
};

#undef POS

static bool is_disk_full(int rc)
{
  return rc == ENOSPC || rc == EDQUOT || rc == EFBIG;
}

static unsigned status_of_store_error(int rc)
{
  if (is_disk_full(rc))
    return 507;
  if (rc == LOOM_ETOOBIG)
    return 413;
  return rc == LOOM_EPOSITION || rc == LOOM_EINVAL ? 400 : 500;
}

/* The status and "error" text of an outcome of this shape. */
static unsigned shape_status(const reply_shape *shape,
                             const replicate_recv_outcome *o,
                             const char **error)
{
  *error = shape->error;
  if (shape->keys & S_DECODE) {
    if (o->code == REPLICATE_ETOOBIG) {
      *error = "frame too large";
      return 413;
    }
    if (o->code == ENOMEM) {
      *error = "out of memory";
      return 503;
    }
  }
  if (shape->keys & S_STORE) {
    if (o->result == REPLICATE_RECV_BASE_COMMIT && o->code == LOOM_EPOSITION)
      *error = "the pages do not give the header's checksum";
    return status_of_store_error(o->code);
  }
  if ((shape->keys & S_DISK) && is_disk_full(o->code))
    return 507;
  return shape->status;
}

static void json_point(http_json_writer *w, const char *key,
                       const loom_position *pos)
{
  http_json_key(w, key);
  http_json_position(w, pos);
}

/* The keys of a promotion refused. */
static void promote_refusal_json(http_json_writer *w, const replicate_recv_outcome *o)
{
  bool empty = o->result == REPLICATE_RECV_PROMOTE_EMPTY;
  http_json_member_string(w, "code", empty ? "PROMOTE_EMPTY" : "PROMOTE_BEHIND");
  http_json_member_string(w, "reason", empty ? "this standby never received anything: promoting "
                         "it would start an empty history and fence the "
                         "real primary"
                       : "this standby is further behind the primary seq it "
                         "last heard than --promote-max-lag allows");
  http_json_member_uint(w, "primary_seq", o->primary_seq);
}

static void frame_before_json(http_json_writer *w, const replicate_recv_outcome *o)
{
  http_json_key(w, "frame_before");
  http_json_object_begin(w);
  http_json_member_uint(w, "epoch", o->frame_epoch);
  http_json_member_uint(w, "seq", o->frame_before.seq);
  http_json_member_hex64(w, "checksum", o->frame_before.checksum);
  http_json_member_uint(w, "pages", o->frame_before.pages);
  http_json_object_end(w);
}

/* The keys after "error" that shape asks for, in order. */
static void shape_keys(unsigned keys, const replicate_recv_outcome *o,
                       http_json_writer *w)
{
  if (keys & K_CODE) {
    http_json_member_string(w, "code", http_error_name(o->code));
  }
  if (keys & (K_DETAIL | K_REASON)) {
    http_json_key(w, keys & K_DETAIL ? "detail" : "reason");
    http_json_string(w, replicate_strerror(o->code));
  }
  if (keys & (K_FRAME_EPOCH | K_IMAGE_EPOCH)) {
    http_json_key(w, keys & K_FRAME_EPOCH ? "frame_epoch" : "image_epoch");
    http_json_uint(w, o->input_epoch);
  }
  if (keys & K_ROLE) {
    http_json_member_string(w, "role", o->promoted ? "primary" : "standby");
  }
  if (keys & K_FRAME_BEFORE)
    frame_before_json(w, o);
  if (keys & K_PROMOTE)
    promote_refusal_json(w, o);
  if (keys & K_NEW_EPOCH) {
    http_json_member_uint(w, "epoch", o->applied.epoch);
    json_point(w, "applied", &o->applied);
  }
  if (keys & K_POSITIONS) {
    json_point(w, "received", &o->received);
    json_point(w, "applied", &o->applied);
    json_point(w, "computed", &o->computed);
    http_json_member_uint(w, "epoch", o->received.epoch);
    http_json_history(w, &o->history);
    if (o->single_frames) { /* a delayed standby: no merged frames */
      http_json_key(w, "single_frames");
      http_json_bool(w, true);
    }
  }
  if (keys & K_DUPLICATE) {
    http_json_key(w, "duplicate");
    http_json_bool(w, o->result == REPLICATE_RECV_DUPLICATE);
  }
}

/* Write the answer to outcome o from the endpoint's table. */
static void reply_outcome(const reply_shape table[REPLICATE_RECV_LAST],
                          const replicate_recv_outcome *o, http_reply *reply)
{
  const reply_shape *shape = o->result < REPLICATE_RECV_LAST
                                 ? &table[o->result] : NULL;
  if (!shape || shape->status == 0) {
    /* A bug: the receiver gave an outcome this endpoint does not know. */
    http_reply_error(reply, 500, "internal error");
    http_json_key(&reply->body, "outcome");
    http_json_string(&reply->body, replicate_recv_result_name(o->result));
    return;
  }
  const char *error;
  unsigned status = shape_status(shape, o, &error);
  if (status == 200)
    http_reply_object(reply, 200);
  else
    http_reply_error(reply, status, error);
  reply->retry_after = o->retry_after;
  shape_keys(shape->keys, o, &reply->body);
}

/* ---------------------------------------------------------------------- */
/* The endpoints */

int http_standby_open(const http_server_options *opt, const http_logger *logger,
                      void (*on_bad_pages)(void *ctx, const uint64_t *pages,
                                           uint64_t count),
                      void *ctx, http_standby **out)
{
  replicate_limits limits = http_limits_of(opt);
  replicate_receiver_options ro = {
      .dir = opt->dir,
      .io = opt->io,
      .limits = &limits,
      .max_unapplied_bytes = opt->max_unapplied_bytes,
      .promote_max_lag = opt->promote_max_lag,
      .apply_delay_seconds = opt->apply_delay_seconds,
      .commit_log_bytes = opt->commit_log_bytes,
      .log_segment_bytes = opt->receive_log_segment_bytes,
      .now_ns = http_now_ns,
      .log_fn = logger ? logger->fn : NULL,
      .log_ctx = logger ? logger->ctx : NULL,
      .on_bad_pages = on_bad_pages,
      .bad_pages_ctx = ctx,
      .on_received = opt->on_received,
      .received_ctx = opt->received_ctx,
      .on_position = opt->on_position,
      .position_ctx = opt->position_ctx,
  };
  return replicate_receiver_open(&ro, out);
}

int http_standby_close(http_standby *sb)
{
  return replicate_receiver_close(sb);
}

void http_standby_receive_frame(http_standby *sb, const uint8_t *body,
                                size_t len, http_reply *reply)
{
  replicate_recv_outcome o;
  replicate_receiver_frame(sb, body, len, &o);
  reply_outcome(frame_shapes, &o, reply);
}

void http_standby_promote(http_standby *sb, bool force, http_reply *reply)
{
  replicate_recv_outcome o;
  replicate_receiver_promote(sb, force, &o);
  reply_outcome(promote_shapes, &o, reply);
}

/* X-Loomship-If-Position: "EPOCH SEQ CHECKSUM" (checksum in hex). */
static bool parse_if_position(const char *text, loom_position *out)
{
  unsigned long long epoch, seq, checksum;
  char end;
  if (!text || sscanf(text, "%llu %llu %llx%c", &epoch, &seq, &checksum, &end) != 3)
    return false;
  *out = (loom_position){.epoch = epoch, .seq = seq, .checksum = checksum};
  return true;
}

int http_standby_base_begin(http_standby *sb, uint64_t content_length,
                            const char *if_position, http_base_upload **out,
                            http_reply *reply)
{
  replicate_recv_outcome o;
  loom_position expected;
  bool expect = parse_if_position(if_position, &expected);
  int rc = replicate_receiver_base_begin(sb, content_length,
                                         expect ? &expected : NULL, out, &o);
  if (rc)
    reply_outcome(base_shapes, &o, reply);
  return rc;
}

int http_standby_base_feed(http_base_upload *up, const uint8_t *data,
                           size_t len)
{
  return replicate_receiver_base_feed(up, data, len);
}

void http_standby_base_finish(http_base_upload *up, http_reply *reply)
{
  replicate_recv_outcome o;
  replicate_receiver_base_finish(up, &o);
  reply_outcome(base_shapes, &o, reply);
}

void http_standby_base_abort(http_base_upload *up)
{
  replicate_receiver_base_abort(up);
}

/* ---------------------------------------------------------------------- */
/* Snapshots and status */

int http_standby_snapshot_open(http_standby *sb, loom_snapshot **out)
{
  return replicate_receiver_snapshot_open(sb, out);
}

void http_standby_snapshot_close(http_standby *sb, loom_snapshot *snap)
{
  replicate_receiver_snapshot_close(sb, snap);
}

bool http_standby_promoted(http_standby *sb)
{
  return replicate_receiver_promoted(sb);
}

void http_standby_view_get(http_standby *sb, http_standby_view *out)
{
  replicate_receiver_status r;
  replicate_receiver_get_status(sb, &r);
  memset(out, 0, sizeof *out);
  http_server_status *s = &out->status;
  s->role = r.promoted ? HTTP_ROLE_PRIMARY : HTTP_ROLE_STANDBY;
  s->applied = r.applied;
  s->received = r.received;
  s->computed = r.computed;
  s->primary_seq = r.primary_seq;
  s->lag_frames = r.lag_frames;
  s->lag_bytes = r.lag_bytes;
  s->lag_seconds = r.lag_seconds;
  s->apply_delay_seconds = r.apply_delay_seconds;
  s->delay_waiting_frames = r.delay_waiting_frames;
  s->delay_discarded = r.delay_discarded;
  s->commit_log_known = true;
  s->commit_log = r.commit_log;
  s->replay_paused = r.base_active;
  s->frames_received = r.frames_received;
  s->frames_applied = r.frames_applied;
  s->apply_commits = r.apply_commits;
  s->duplicates = r.duplicates;
  s->last_apply_error = r.last_apply_error;
  s->fatal_error = r.fatal_error;
  s->history = r.history;
  s->diverged = r.diverged;
  s->diverged_at_ns = r.diverged_at_ns;
  s->divergences = r.divergences;
  /* ready is decided by the server (it knows the threshold); a standby
   * stuck on a failed apply is never ready. */
  s->ready = !r.apply_stopped && !r.fatal_error;
  out->primary_epoch = r.primary_epoch;
  out->primary_commit_ns = r.primary_commit_ns;
  out->last_contact_ns = r.last_contact_ns;
  out->apply_durations = r.apply_durations;
  out->append_durations = r.append_durations;
  out->last_apply_error_at_ns = r.last_apply_error_at_ns;
  out->promoted_at_ns = r.promoted_at_ns;
  out->heartbeats = r.heartbeats;
  out->bases = r.bases;
  out->bytes_received = r.bytes_received;
  out->apply_failures = r.apply_failures;
  out->receive_log_bytes = r.receive_log_bytes;
  out->clock_skew_known = r.clock_skew_known;
  out->clock_skew_seconds = r.clock_skew_seconds;
}
