/*
 * standby.h: the standby's endpoints (standby.c), thin adapters over the
 * receiver of replicate/ (receiver.h). Internal.
 *
 * Lock order: the server's own lock (stats_mu, server_internal.h) is never
 * held while taking another; the backups' lock (backup.c) is held around
 * opening a snapshot (which, on a standby, takes the receiver's locks),
 * never while taking stats_mu.
 */
#ifndef HTTP_STANDBY_H
#define HTTP_STANDBY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loom.h"
#include "reply.h"
#include "server.h"
#include "util.h"

/* ---------------------------------------------------------------------- */
/* The standby (standby.c) */

/* Its replication logic is the receiver of replicate/ (receiver.h: the
 * receive log, the applier, promotion, base images, lag, and its locks);
 * standby.c only turns the receiver's outcomes into answers. */
#include "receiver.h"

typedef replicate_receiver http_standby;

/* More than the public status: what /v1/status and /metrics show. */
typedef struct http_standby_view {
  http_server_status status;
  uint64_t primary_epoch;
  int64_t primary_commit_ns;    /* commit time of primary_seq, 0 unknown */
  int64_t last_contact_ns;      /* last frame or heartbeat, 0 never */
  int64_t last_apply_error_at_ns;
  int64_t promoted_at_ns;       /* 0 unless promoted */
  uint64_t heartbeats;
  uint64_t bases;
  uint64_t bytes_received;      /* commit frame bytes made durable */
  uint64_t apply_failures;
  uint64_t receive_log_bytes;
  replicate_duration_histogram apply_durations;
  replicate_duration_histogram append_durations;
  bool clock_skew_known;        /* a frame or heartbeat arrived */
  double clock_skew_seconds;    /* our clock minus the primary's, estimated
                                   (replicate/receiver.c, PRIMARY'S CLOCK) */
} http_standby_view;

/* on_bad_pages(ctx, ...): the receiver's bad pages hook (receiver.h), or
 * NULL. */
int http_standby_open(const http_server_options *opt, const http_logger *logger,
                      void (*on_bad_pages)(void *ctx, const uint64_t *pages,
                                           uint64_t count),
                      void *ctx, http_standby **out);
/* Apply everything received, sync, close. Returns the first error. */
int http_standby_close(http_standby *sb);

/* POST /v1/frames with the whole body. */
void http_standby_receive_frame(http_standby *sb, const uint8_t *body,
                                size_t len, http_reply *reply);
/* POST /v1/promote[?force=1]: refused (409) when the standby never
 * applied anything (PROMOTE_EMPTY) or is more than promote_max_lag frames
 * behind the primary seq it last heard (PROMOTE_BEHIND), unless forced. */
void http_standby_promote(http_standby *sb, bool force, http_reply *reply);

/* PUT /v1/base, streamed: begin (0, or non-zero with reply filled), feed
 * chunks (0, or non-zero once refused: the reply to send is then kept in
 * the upload and given by finish), finish (commit, free) or abort (free,
 * the old image stays). content_length is UINT64_MAX when unknown. */
typedef replicate_receiver_base http_base_upload;
int http_standby_base_begin(http_standby *sb, uint64_t content_length,
                            const char *if_position, http_base_upload **out,
                            http_reply *reply);
int http_standby_base_feed(http_base_upload *up, const uint8_t *data,
                           size_t len);
void http_standby_base_finish(http_base_upload *up, http_reply *reply);
void http_standby_base_abort(http_base_upload *up);

/* A snapshot of the standby's store: 0, EBUSY (a base image is coming in),
 * or the errors of loom_store_snapshot_open. Close it with
 * http_standby_snapshot_close. */
int http_standby_snapshot_open(http_standby *sb, loom_snapshot **out);
void http_standby_snapshot_close(http_standby *sb, loom_snapshot *snap);
void http_standby_view_get(http_standby *sb, http_standby_view *out);
bool http_standby_promoted(http_standby *sb);

#endif /* HTTP_STANDBY_H */
