/*
 * ship.h: the shipper: the primary side of replication. It ships every
 * committed frame to the standbys over HTTP (libcurl multi interface), in
 * order, each standby at its own pace, and accounts for their lag.
 * (To be folded into replicate.h; it builds on the frames, the coalescer and
 * the replication log declared there.)
 *
 * INTRODUCTION
 *
 * The primary's loom calls replicate_shipper_on_commit() from its commit
 * hook, right after the local commit point. The shipper encodes the commit
 * into a frame, appends it durably to the replication log (file and
 * directory fsynced) and only then lets its shipping thread send it. In
 * sync mode the hook then waits until N standbys hold the frame durably.
 *
 * One shipping thread runs one curl multi loop. Every standby has one
 * ordered pipeline with at most one request in flight and its own easy
 * handle, reused so the connection is kept alive. A slow or dead standby
 * never blocks the others, nor the application (in async mode).
 *
 * THE WIRE (the standby side is http/; docs/HTTP.md)
 *
 *   POST /v1/frames   one frame (commit, coalesced or heartbeat) as the
 *                     body, Content-Type: application/octet-stream,
 *                     "Authorization: Bearer TOKEN" when a token is set.
 *   PUT  /v1/base     the image stream of a snapshot (loom.h:
 *                     loom_stream_header_encode, then the pages), streamed
 *                     from the snapshot, never whole in memory.
 *
 *   200  {"received": POINT, "applied": POINT, ...}   POINT = {"epoch": E,
 *        "seq": S, "checksum": "16 hex digits", "pages": P, ...}
 *   409  {"error": "gap" | "checksum mismatch" | "stale epoch" | ...,
 *        "received": POINT, "applied": POINT, ...}
 *   400 malformed, 401/403 token refused, 413 too large, 507 disk full,
 *   503 busy (Retry-After honoured), other 5xx.
 *
 * Answers are read with a small strict JSON reader that extracts only
 * these fields; anything that is not well-formed JSON, or a POINT missing
 * a field, is treated as a failed request.
 *
 * STATES OF A STANDBY
 *
 *   (start)  its position is unknown: a heartbeat is sent, the answer
 *            gives its received position. The state shows catching_up
 *            until then.
 *   streaming     it holds the primary's latest frame, or lacks only the
 *                 newest one, which is sent as it is.
 *   catching_up   it is further behind and the log still holds the frame
 *                 after its received position: the frames it lacks are
 *                 merged (replicate_coalescer) into pieces of at most
 *                 coalesce_max_pages pages and coalesce_max_bytes input
 *                 bytes, one piece per request.
 *   base_sync     the log no longer reaches back (REPLICATE_ELOG_GONE),
 *                 or its received position is not in the primary's history
 *                 (409 "checksum mismatch", a checksum that differs from
 *                 the frame that should follow it, a seq ahead of the
 *                 primary's): PUT /v1/base from a snapshot of the store,
 *                 then continue from the snapshot's seq. Standbys that
 *                 need a base at the same time share one snapshot.
 *   unreachable   a connection error, a timeout, a 5xx, 507, 400 or an
 *                 unreadable answer: retried with exponential backoff with
 *                 jitter (backoff_base_seconds doubling up to
 *                 backoff_max_seconds; a Retry-After is honoured). Frames
 *                 lost to a connection error or a timeout are resent as
 *                 they were (a standby that had them answers 200: a
 *                 duplicate); after anything else its position is asked
 *                 again first, with a heartbeat.
 *   unauthorized  401 or 403: nothing is shipped to it; its position is
 *                 asked again every unauthorized_retry_seconds, so a token
 *                 rotation (replicate_shipper_set_token, or on the
 *                 standby) heals it.
 *   fenced        a 409 "stale epoch" (or any answer with a newer epoch
 *                 than the primary's): a promotion fenced this primary.
 *                 Shipping stops to every standby, for good.
 *
 * A 409 other than "stale epoch" (a gap) carries the standby's position:
 * shipping resumes from there. A 413 on a merged piece halves that
 * standby's piece size; on a single frame it sends a base image instead.
 * A standby idle for heartbeat_seconds gets a heartbeat (the primary's
 * latest position and commit time), so it can report its own lag.
 *
 * LOG RETENTION
 *
 * After acknowledgements the shipper calls replicate_log_retain() with the
 * oldest seq still needed: the lowest received seq + 1 over the standbys
 * (a standby in base_sync counts with its snapshot's seq + 1 once the
 * snapshot is open, and not at all before; a standby never heard from
 * since start holds everything). The log's byte cap (its max_bytes option)
 * drops older frames regardless: a standby that falls past it gets a base
 * image.
 *
 * START
 *
 * At start the log is reconciled with the store: if its newest frame is not
 * the store's current position (a crash between the commit point and the
 * append, or a failed append) the log is reset, so the chain of frames is
 * never broken; standbys that needed the lost frames get base images.
 *
 * SECRETS
 *
 * The token is copied, zeroed when replaced or freed, and never appears in
 * status, errors or diagnostics.
 *
 * ERRORS
 *
 * 0 on success, a positive errno value, a negative LOOM_E* or REPLICATE_E*
 * code passed through, or one of the codes below.
 * replicate_shipper_strerror() describes all of them.
 *
 * THREADS
 *
 * replicate_shipper_on_commit() is called by the thread that saves the
 * loom (one at a time). replicate_shipper_status(),
 * replicate_shipper_get_summary() and replicate_shipper_set_token() may be
 * called from any thread at any time. replicate_shipper_drain() and
 * replicate_shipper_stop() by the owner, not while on_commit runs.
 * libcurl must not be used with curl_global_cleanup() by another part of
 * the process while a shipper runs.
 */
#ifndef REPLICATE_SHIP_H
#define REPLICATE_SHIP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loom.h"
#include "replicate.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------- */
/* Errors: append-only, never reused (the range -31080..-31099 is the
 * shipper's until they join enum replicate_error). */

enum replicate_ship_error {
  REPLICATE_ESYNC_TIMEOUT = -31080, /* sync mode: fewer than sync_count
                                       standbys acknowledged the frame in
                                       time; the commit stands locally */
  REPLICATE_EFENCED = -31081,       /* a standby has a newer epoch: this
                                       primary is fenced and ships nothing;
                                       the commit stands locally */
  REPLICATE_ECURL = -31082,         /* libcurl could not be initialised */
  REPLICATE_SHIP_ELAST = -31083     /* sentinel: one past the lowest code */
};

/* A description of rc: 0, an errno value, LOOM_E*, REPLICATE_E* or one of
 * the codes above. Never NULL. */
const char *replicate_shipper_strerror(int rc);

/* ---------------------------------------------------------------------- */
/* Options */

typedef enum replicate_sync_outcome {
  REPLICATE_SYNC_FAIL = 0,    /* on_commit returns REPLICATE_ESYNC_TIMEOUT */
  REPLICATE_SYNC_DEGRADE = 1  /* on_commit returns 0 and the shipper runs
                                 asynchronously (summary.sync_degraded)
                                 until sync_count standbys hold the latest
                                 frame again */
} replicate_sync_outcome;

/* One line of diagnostics (state changes, errors), no trailing newline,
 * never with the token in it. Called from the shipping thread. */
typedef void (*replicate_ship_log_fn)(void *ctx, const char *line);

/* Zero-initialise, then set what you need: 0 (or NULL) means the default
 * given in brackets. */
typedef struct replicate_shipper_options {
  loom_store *store;              /* required: the primary's store, for
                                     its position and base images */
  replicate_log *log;             /* required: the primary's replication
                                     log (its max_bytes is the cap) */
  const char *const *standby_urls;/* "http://host:port" or "https://...",
                                     a path prefix allowed (copied) */
  size_t standby_count;           /* at least 1 */
  const char *token;              /* bearer token (copied), or NULL */
  const char *ca_file;            /* CA bundle for https (CURLOPT_CAINFO)
                                     [the system's]; verification is
                                     always on */
  unsigned sync_count;            /* N standbys to wait for; 0: async */
  double sync_timeout_seconds;    /* [10] */
  replicate_sync_outcome on_sync_timeout; /* [REPLICATE_SYNC_FAIL] */
  double heartbeat_seconds;       /* idle standby heartbeat [1] */
  int zstd_level;                 /* frame compression [1] */
  double connect_timeout_seconds; /* [5] */
  double request_timeout_seconds; /* one frame request [30] */
  double base_stall_seconds;      /* a base upload with no progress for
                                     this long is abandoned [120] */
  double backoff_base_seconds;    /* [0.1] */
  double backoff_max_seconds;     /* [5] */
  double unauthorized_retry_seconds; /* [30] */
  uint64_t coalesce_max_pages;    /* pages in one merged piece [2048] */
  uint64_t coalesce_max_bytes;    /* frame bytes merged into one piece
                                     [32 MiB] */
  uint64_t cache_bytes;           /* recent frames kept in memory for
                                     streaming (older ones are read from
                                     the log) [64 MiB] */
  replicate_ship_log_fn log_fn;   /* optional diagnostics */
  void *log_ctx;
} replicate_shipper_options;

typedef struct replicate_shipper replicate_shipper;

/*
 * replicate_shipper_start: check the options, reconcile the log with the
 * store (see START), and start the shipping thread, which at once asks
 * every standby its position. Call it from the thread that owns the store,
 * before the next save. The store and the log must outlive the shipper.
 * Errors: REPLICATE_EINVAL (a required option missing, a URL that is not
 * http:// or https://, a token with a control character, sync_count above
 * standby_count, a negative duration), REPLICATE_ECURL, ENOMEM, errno
 * values (the thread), the errors of replicate_log_reset/read.
 */
int replicate_shipper_start(const replicate_shipper_options *opt,
                            replicate_shipper **out);

/*
 * replicate_shipper_on_commit: call from the loom's commit hook (l and c
 * as the hook received them). Encodes the frame, appends it durably to the
 * replication log, hands it to the shipping thread, and in sync mode waits
 * until sync_count standbys answered 200 with a received seq at or past
 * it, up to sync_timeout_seconds. The commit stands locally whatever this
 * returns (loom_save() returns it).
 * Only a received position known to be in this primary's history counts
 * (one that accepted our frames, or that the next frame follows).
 * Returns 0, REPLICATE_ESYNC_TIMEOUT (sync mode, REPLICATE_SYNC_FAIL),
 * REPLICATE_EFENCED (after fencing; the frame is still logged), or the
 * errors of replicate_frame_encode_commit and replicate_log_append (the
 * frame is then not shipped; standbys that need it later get a base
 * image).
 */
int replicate_shipper_on_commit(replicate_shipper *shipper, loom *l,
                                const loom_commit *c);

/* Replace the bearer token (NULL: none); used from the next request on. A
 * standby that was unauthorized is asked again at once. Errors:
 * REPLICATE_EINVAL (a control character), ENOMEM. */
int replicate_shipper_set_token(replicate_shipper *shipper, const char *token);

/* ---------------------------------------------------------------------- */
/* Status (GET /v1/status, /metrics) */

typedef enum replicate_standby_state {
  REPLICATE_STANDBY_STREAMING = 0,
  REPLICATE_STANDBY_CATCHING_UP = 1,
  REPLICATE_STANDBY_BASE_SYNC = 2,
  REPLICATE_STANDBY_UNREACHABLE = 3,
  REPLICATE_STANDBY_UNAUTHORIZED = 4,
  REPLICATE_STANDBY_FENCED = 5
} replicate_standby_state;

/* "streaming", "catching_up", "base_sync", "unreachable", "unauthorized",
 * "fenced"; "unknown" outside the enum. */
const char *replicate_standby_state_name(replicate_standby_state state);

#define REPLICATE_URL_MAX 512
#define REPLICATE_ERROR_MAX 256

typedef struct replicate_standby_status {
  char url[REPLICATE_URL_MAX];      /* as configured (truncated if longer) */
  replicate_standby_state state;
  const char *state_name;           /* replicate_standby_state_name(state) */
  uint64_t sent_seq;                /* newest seq sent (0: none yet) */
  uint64_t received_seq;            /* newest seq it holds durably, as last
                                       heard */
  uint64_t applied_seq;             /* newest seq in its image, as heard */
  uint64_t received_epoch;
  uint64_t lag_frames;              /* commits it has not applied */
  uint64_t lag_bytes;               /* frame bytes it has not applied */
  double lag_seconds;               /* age of the oldest commit it has not
                                       applied; 0 when it has everything */
  char last_error[REPLICATE_ERROR_MAX]; /* "" when none (JSON null) */
  int64_t last_error_at;            /* unix seconds; 0 when none */
  int64_t last_error_at_ns;         /* CLOCK_REALTIME ns; 0 when none */
  uint64_t bytes_raw;               /* page bytes shipped, uncompressed */
  uint64_t bytes_wire;              /* request body bytes shipped */
  uint64_t frames_sent;             /* commits shipped (a merged piece
                                       counts its commits) */
  uint64_t requests;                /* requests answered */
  uint64_t heartbeats_sent;
  uint64_t coalesced_sent;          /* merged pieces */
  uint64_t base_images_sent;        /* base images acknowledged */
  uint64_t failures;                /* failed requests */
} replicate_standby_status;

/*
 * replicate_shipper_status: copy the state of the first min(cap, n)
 * standbys into array (in configuration order) and set *n to their
 * number. Thread-safe; lag is computed at the call from the positions last
 * heard (heartbeats refresh them) and the commits this shipper saw: for
 * commits older than its start (or than the newest 2^18) lag in bytes and
 * seconds is a lower bound.
 */
void replicate_shipper_status(replicate_shipper *shipper,
                              replicate_standby_status *array, size_t cap,
                              size_t *n);

typedef struct replicate_shipper_summary {
  uint64_t epoch;                   /* the primary's */
  uint64_t latest_seq;              /* newest frame committed */
  int64_t latest_commit_time_ns;
  bool fenced;
  bool sync_degraded;               /* sync mode running as async after a
                                       timeout (REPLICATE_SYNC_DEGRADE) */
  unsigned sync_count;
  size_t standby_count;
} replicate_shipper_summary;

/* Thread-safe. */
void replicate_shipper_get_summary(replicate_shipper *shipper,
                                   replicate_shipper_summary *out);

/* ---------------------------------------------------------------------- */
/* Stopping */

/*
 * replicate_shipper_drain: wait, up to timeout_seconds, until every
 * standby that is not unreachable, unauthorized or fenced has received
 * everything committed (like PostgreSQL's smart shutdown waiting for its
 * WAL senders). Returns true when that was reached; false on timeout, and
 * at once once the primary is fenced.
 */
bool replicate_shipper_drain(replicate_shipper *shipper,
                             double timeout_seconds);

/* Stop the shipping thread (requests in flight are abandoned), free
 * everything. NULL is allowed. */
void replicate_shipper_stop(replicate_shipper *shipper);

#ifdef __cplusplus
}
#endif
#endif /* REPLICATE_SHIP_H */
