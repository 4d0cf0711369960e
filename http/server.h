/*
 * server.h: the loomship HTTP server (libmicrohttpd): the standby node, and
 * the read endpoints a primary also serves.
 *
 * INTRODUCTION
 *
 * One server type, in one of two roles:
 *
 *   HTTP_ROLE_STANDBY  the server owns a standby's image directory: it
 *                      opens its loom_store (created if missing), its
 *                      *receive log* (a replicate_log in DIR/replog/) and an
 *                      *applier thread*. Frames posted by the primary are
 *                      made durable in the receive log, answered, and then
 *                      applied to the store in order by the applier. A full
 *                      base image can be streamed in; the standby can be
 *                      promoted to a primary at a new epoch.
 *   HTTP_ROLE_PRIMARY  the server serves a primary that lives in the same
 *                      process (the `loomship primary` workload): its
 *                      position, backups and the state of its peers (the
 *                      standbys it ships to) come from callbacks the
 *                      primary registers (http_primary_source). The server
 *                      never touches the primary's loom itself.
 *
 * The endpoints (docs/HTTP.md is the reference: bodies, codes, headers):
 *
 *   POST /v1/frames    standby   one frame; answers the standby's position
 *   PUT  /v1/base      standby   a full image stream (loom.h), streamed in
 *   POST /v1/promote   standby   become a primary at epoch + 1 (409
 *                                CLUSTER_MEMBER on a cluster member)
 *   GET  /v1/backup    both      the image stream at one position; HEAD,
 *                                ETag, Range, If-Range
 *   GET  /v1/status    both      JSON (DESIGN.md section 5)
 *   GET  /metrics      both      Prometheus text format 0.0.4
 *   GET  /healthz      both      200 while the process answers
 *   GET  /readyz       both      200 when ready (see below), else 503
 *
 * Writes (frames, base, promote) and backups require the bearer token when
 * one is configured ("Authorization: Bearer <token>", compared in constant
 * time). Status, metrics and the health checks do not.
 *
 * POSITIONS ON A STANDBY
 *
 *   received   the newest frame durable in the receive log (or the store's
 *              position when the log holds nothing newer)
 *   applied    the store's committed position
 *
 * A frame is answered 200 only once it is durable in the receive log; the
 * applier then applies it with replicate_frame_apply() and trims the log
 * (replicate_log_retain) behind it. After a restart, received is recovered
 * from the log and the applier catches up. Should a received frame fail to
 * apply (its pages do not give its after checksum: a faulty primary), the
 * standby forgets every frame past applied (the receive log is reset, and
 * received falls back to applied); the primary's next frame is then
 * answered 409 with that position and the primary resends from there. The
 * failure is shown in status as last_apply_error.
 *
 * READINESS
 *
 * A standby is ready when no base image is being received, the last apply
 * did not fail, and its lag in seconds (the age of the oldest commit it
 * has heard of and not applied) is at most ready_max_lag_seconds. A primary
 * is ready unless it is fenced.
 *
 * LOAD BOUNDS
 *
 * Connections are limited in number (overall, and per client address to
 * a small part of that) and time out when idle; request headers must be
 * complete within header_timeout_seconds (else the connection is closed).
 * At most max_uploads frame and base uploads run at once (503 beyond);
 * without a token, the last slot is kept for a frame whose header proved
 * valid. A frame body larger than max_frame_bytes is refused with 413 (at
 * once when Content-Length says so, else as soon as the bytes or the
 * frame's header say so). A base image longer than max_image_pages is
 * refused with 413; a base is never held in memory (one page at a time).
 * A body refused midway is read to its declared Content-Length, if any,
 * and answered; without one (chunked), or past it, the connection is
 * closed at once. An upload slower than upload_min_bytes_per_second after
 * upload_grace_seconds, or longer than its duration cap, is answered 408
 * (plain HTTP: written on the socket, best effort) and closed. A path with
 * a NUL byte, a Content-Length given twice or with Transfer-Encoding, are
 * refused 400 before anything else. A standby whose applier is more than
 * max_unapplied_bytes behind answers frames 503 until it catches up.
 *
 * ERRORS
 *
 * Functions return 0, a positive errno value, a negative LOOM_E* (loom.h)
 * or REPLICATE_E* (replicate.h) code passed through, or one of the
 * HTTP_E* codes below. http_strerror() describes all of them. The library
 * never prints: diagnostics (refused tokens, failed applies) go to the log
 * callback of the options, if any, one line each, never with a secret in it.
 *
 * THREADS
 *
 * libmicrohttpd runs one thread per connection; the standby role adds the
 * applier thread. Every function below may be called from any thread, but
 * http_server_stop() only once, and not from a callback of the server.
 * The primary_source callbacks are called from connection threads, several
 * at a time: they must be thread-safe.
 */
#ifndef HTTP_SERVER_H
#define HTTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "archive.h"
#include "loom.h"
#include "replicate.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------- */
/* Errors: append-only, never reused. */

/* The list, one X(name, value, text) per code: the enum below, the texts
 * (http_strerror) and the stable names (http_error_name) are generated
 * from it (util.c). */
#define HTTP_ERROR_LIST(X)                                                    \
  X(HTTP_EINVAL, -31100,                                                      \
    "an option is missing, out of range, or does not fit the role")           \
  X(HTTP_ETLS, -31101, /* not built into libmicrohttpd */                     \
    "TLS is not available, or only one of certificate and key given")         \
  X(HTTP_EDAEMON, -31102, /* e.g. a certificate or key it cannot parse */     \
    "libmicrohttpd refused to start (certificate or key unreadable?)")        \
  X(HTTP_EADDRESS, -31103, "the listen address does not resolve")             \
  X(HTTP_EPATH, -31104, /* raw or %00 */                                      \
    "the request path holds a NUL byte")                                      \
  X(HTTP_ELENGTH, -31105,                                                     \
    "Content-Length given twice, or with Transfer-Encoding")                  \
  X(HTTP_ESLOW_UPLOAD, -31106, "the upload is slower than the minimum rate")  \
  X(HTTP_ELONG_UPLOAD, -31107, "the upload took longer than its duration cap") \
  X(HTTP_EINUSE, -31108, /* bind: EADDRINUSE */                               \
    "the listen port is in use by another process")                           \
  X(HTTP_ELISTEN, -31109, /* bind or listen: any other errno */               \
    "cannot listen there (a port below 1024 without the privilege, or not "   \
    "an address of this host)")                                               \
  X(HTTP_ETLS_FILE, -31110, /* open or read of tls_cert_file/tls_key_file */  \
    "a TLS certificate or key file cannot be read")

enum http_error {
  HTTP_OK = 0,
#define HTTP_ERROR_ENUM_(name, value, text) name = value,
  HTTP_ERROR_LIST(HTTP_ERROR_ENUM_)
#undef HTTP_ERROR_ENUM_
  HTTP_ELAST = -31111     /* sentinel: one past the lowest code */
};

/* A description of rc: 0, an errno value, a LOOM_E*, REPLICATE_E* or
 * HTTP_E* code. Never NULL. */
const char *http_strerror(int rc);

/* ---------------------------------------------------------------------- */
/* What a primary tells the server about its peers (the standbys it ships
 * to) and its synchronous replication. Each peer is shown as the shipper
 * reports it: replicate_peer_status (replicate.h), one per configured
 * standby, under the status key "standbys" and the metrics
 * loomship_standby_*. */

/* Synchronous replication as the primary runs it (status "sync"). */
typedef struct http_sync_status {
  unsigned required;                /* standbys each save waits for; 0:
                                       asynchronous */
  bool degraded;                    /* a save timed out and fewer than
                                       required standbys hold the latest
                                       commit since */
  int64_t degraded_since_ns;        /* CLOCK_REALTIME; 0 when not degraded */
} http_sync_status;

/*
 * The primary role's view of the primary. Every callback may be called from
 * several connection threads at once.
 *   position       required: the primary's committed position (applied).
 *   snapshot_open  required for GET /v1/backup (else 503): open a snapshot
 *                  of the primary's store (loom_store_snapshot_open, from
 *                  or coordinated with the thread that owns the store).
 *                  Returns 0 or an error code (503 is answered). The server
 *                  closes it with loom_snapshot_close(), from any thread,
 *                  before http_server_stop() returns; the store must
 *                  outlive the server.
 *   fenced         optional: true once a peer answered with a newer
 *                  epoch (this primary stopped shipping).
 *   peers          optional: fill out[0, min(cap, n)) and return n, the
 *                  number of peers (called again with a larger array
 *                  when n > cap); replicate_shipper_status() does it.
 *   sync_state     optional: fill out (status "sync": {"required": N,
 *                  "count": N (the same, for older readers), "degraded":
 *                  bool, "degraded_since": time or null}).
 *   log_stats      optional: the replication log's figures
 *                  (replicate_log_get_stats), for the metrics
 *                  loomship_replication_log_*.
 *   save_durations optional: how long the application's saves took
 *                  (loomship_save_duration_seconds).
 *   commit_log     optional: the store's commit log (loom_store_log_stats,
 *                  or loom_get_log_stats with the arena's recent_bytes),
 *                  for status "checkpoint_seq" and "commit_log" and the
 *                  loomship_commit_log_* metrics.
 *   archive        optional: the archiver's status (--archive;
 *                  replicate_archiver_status), for status "archive" and
 *                  the loomship_archive_* metrics; without it "archive"
 *                  is null.
 */
typedef struct http_primary_source {
  void *ctx;
  void (*position)(void *ctx, loom_position *out);
  int (*snapshot_open)(void *ctx, loom_snapshot **out);
  bool (*fenced)(void *ctx);
  size_t (*peers)(void *ctx, replicate_peer_status *out, size_t cap);
  void (*sync_state)(void *ctx, http_sync_status *out);
  void (*history)(void *ctx, loom_history *out); /* optional */
  void (*log_stats)(void *ctx, replicate_log_stats *out); /* optional */
  void (*save_durations)(void *ctx, replicate_duration_histogram *out); /* optional */
  void (*archive)(void *ctx, replicate_archive_status *out); /* optional */
  void (*commit_log)(void *ctx, loom_log_stats *out); /* optional */
} http_primary_source;

/* ---------------------------------------------------------------------- */
/* A cluster member (cluster/, DESIGN.md section 6): what the node's life
 * cycle tells the server. With it, status gains "cluster" and "rewound",
 * metrics the loomship_cluster_* gauges, and POST /v1/promote is answered
 * 409 CLUSTER_MEMBER (a member is promoted through etcd: use `loomship
 * switchover`). */

#define HTTP_CLUSTER_NAME_MAX 64
#define HTTP_CLUSTER_MEMBERS_MAX 32

/* One member as its key in etcd shows it (status "cluster.members"). */
typedef struct http_cluster_member {
  char name[HTTP_CLUSTER_NAME_MAX];
  char url[REPLICATE_URL_MAX];
  bool leader;                      /* "role": "leader" | "standby" */
  uint64_t epoch, received_seq, applied_seq;
  uint64_t lag_frames;
  double lag_seconds;
  char state[32];                   /* "streaming", "catching_up", ... */
} http_cluster_member;

typedef struct http_cluster_status {
  char name[HTTP_CLUSTER_NAME_MAX];   /* the cluster (--cluster) */
  char member[HTTP_CLUSTER_NAME_MAX]; /* this node (--name) */
  char leader[HTTP_CLUSTER_NAME_MAX]; /* "" (JSON null): no leader */
  char leader_url[REPLICATE_URL_MAX];
  uint64_t epoch;                   /* the leader's, as etcd says; 0 none */
  unsigned lease_ttl;               /* seconds, as etcd granted */
  bool etcd_ok;                     /* "etcd": "ok" | "unreachable" */
  char etcd_error[256];             /* "etcd_error": why not ok (the last
                                       failed request), "" (null) when ok */
  size_t sync_count;                /* "sync_set": sync_set[0, sync_count) */
  char sync_set[HTTP_CLUSTER_MEMBERS_MAX][HTTP_CLUSTER_NAME_MAX];
  size_t member_count;
  http_cluster_member members[HTTP_CLUSTER_MEMBERS_MAX];
  /* metrics */
  bool is_leader;
  double lease_remaining_seconds;   /* 0 without a live lease */
  uint64_t elections_total;         /* elections this node won */
  uint64_t self_fence_total;        /* times it stopped acknowledging as
                                       leader because its lease may have
                                       expired */
  /* "rewound": null, or {"frames", "from_seq", "at"}: the last time this
   * node discarded what lay past the branch point of the leader's epoch
   * (DESIGN.md section 3's one exception). */
  bool rewound;
  uint64_t rewound_frames, rewound_from_seq;
  int64_t rewound_at_ns;            /* CLOCK_REALTIME */
  /* Beside them, "pages" and "image_pages": the pages that rewind wrote
   * (through the page-hash tree, only those that differed; a base image
   * writes them all) of the image's. */
  uint64_t rewound_pages, rewound_image_pages;
} http_cluster_status;

/* get fills out (zeroed by the server first); called from connection
 * threads, several at a time: it must be thread-safe. */
typedef struct http_cluster_source {
  void *ctx;
  void (*get)(void *ctx, http_cluster_status *out);
} http_cluster_source;

/* ---------------------------------------------------------------------- */
/* The server */

typedef enum http_role {
  HTTP_ROLE_STANDBY = 1,
  HTTP_ROLE_PRIMARY = 2
} http_role;

/* One line of diagnostics (no trailing newline). */
typedef void (*http_log_fn)(void *ctx, const char *message);

/* Zero-initialise, then set what you need: 0 (or NULL) means the default
 * given in brackets. */
typedef struct http_server_options {
  http_role role;                   /* required */
  const char *dir;                  /* standby: the image directory
                                       (created with LOOM_CREATE) */
  const struct loom_io *io;         /* standby: store and receive log I/O
                                       [POSIX]; must outlive the server */
  const http_primary_source *primary; /* primary: required (copied) */

  const char *listen_host;          /* numeric address or name ["127.0.0.1"] */
  uint16_t listen_port;             /* [0: an ephemeral port, see
                                       http_server_port()] */

  const uint8_t *token;             /* the bearer token (copied), or NULL:
                                       no authentication */
  size_t token_len;
  const char *tls_cert_file;        /* PEM files; both or neither [plain
                                       HTTP] */
  const char *tls_key_file;

  uint64_t max_frame_bytes;         /* one frame body [64 MiB] */
  uint64_t max_frame_pages;         /* pages in one frame [4096] */
  uint64_t max_image_pages;         /* a base image, and any frame's image
                                       [2^30] */
  uint64_t max_unapplied_bytes;     /* standby back-pressure [1 GiB] */
  unsigned max_uploads;             /* concurrent frame/base uploads [4];
                                       without a token, the last one is
                                       kept for a frame whose header is
                                       valid */
  unsigned connection_limit;        /* concurrent connections [128] */
  unsigned per_ip_connection_limit; /* per client address [8] */
  unsigned connection_timeout_seconds; /* idle connections closed [30] */
  unsigned header_timeout_seconds;  /* request headers complete within
                                       this of the connection's start (or
                                       of the previous request's end) [5] */
  unsigned upload_stall_seconds;    /* an upload (frame, base) that sends
                                       nothing for this long is closed and
                                       gives its slot back [5] */
  uint64_t upload_min_bytes_per_second; /* a body slower than this on
                                       average is answered 408 and closed
                                       [16384] */
  unsigned upload_grace_seconds;    /* ... once older than this [3] */
  unsigned frame_upload_max_seconds;/* a frame body's duration cap [60] */
  unsigned base_upload_max_seconds; /* a base image's duration cap [3600] */
  double ready_max_lag_seconds;     /* /readyz threshold [5.0] */
  double apply_delay_seconds;       /* standby: apply each commit only once
                                       it is this old (receiver.h DELAYED
                                       STANDBY) [0: at once] */
  uint64_t promote_max_lag;         /* standby: promotion refused (409
                                       PROMOTE_BEHIND, unless forced) when
                                       more frames behind the primary seq
                                       last heard [100; UINT64_MAX: off] */
  uint64_t commit_log_bytes;        /* standby: the store's commit log
                                       ring (replicate_receiver_options)
                                       [LOOM_LOG_BYTES_DEFAULT] */
  uint64_t receive_log_segment_bytes; /* standby: the receive log's
                                       segments (replicate_receiver_options
                                       log_segment_bytes; tests) [16 MiB] */

  const http_cluster_source *cluster; /* a cluster member (copied; get
                                       required) [not a member] */
  double scrub_interval_seconds;    /* a full scrub of the image this often
                                       (replicate.h, "The scrubber") [0: no
                                       scrubber] */
  double scrub_mbps;                /* its read cap, MiB/s [64] */
  /* Standby self-repair (optional; docs/INTEGRITY.md section 5): GET
   * path (a /v1/tree or /v1/pages request) from the upstream, the answer's
   * body malloc'd into *body, *len, checked against kind's frame tag when
   * the node holds a frame key: 0, or an error code with the reason in
   * why. upstream is the URL the primary advertised in its last frames
   * (X-Loomship-Upstream), or NULL when none came; the hook may use its
   * own (--repair-from) instead, and answers REPLICATE_ENO_UPSTREAM when
   * it has neither. The scrubber calls it (replicate_repair_from) with
   * the bad pages it found, and so do frames that no longer apply and the
   * read-back of applies (a scrubber that makes no passes is started for
   * them when scrub_interval_seconds is 0). NULL: bad pages make the
   * state corrupt. */
  int (*repair_get)(void *ctx, const char *upstream, const char *path,
                    replicate_tag_kind kind, uint8_t **body, size_t *len, char *why,
                    size_t why_len);
  void *repair_ctx;
  /* Authenticated frames (replicate.h; docs/AUTH.md): with a key, frames,
   * heartbeats and base images must carry a valid tag (401 otherwise), and
   * tree and pages answers are tagged. Not copied: it must outlive the
   * server. [NULL: tags are not checked, answers not tagged] */
  const replicate_frame_key *frame_key;
  /* An archiving standby (DESIGN section 7; optional): on_received gets
   * every commit frame once it is durable in the receive log (receiver.h,
   * replicate_receiver_options.on_received: in seq order, under the
   * receipt lock, single commits only), archive the "archive" object of
   * status and metrics. Both with received_ctx. [NULL: none] */
  void (*on_received)(void *ctx, const void *frame, size_t len);
  void (*archive)(void *ctx, replicate_archive_status *out);
  void *received_ctx;
  /* A standby's received and applied positions each time either moves
   * (receiver.h, replicate_receiver_options.on_position, whose rules
   * hold: under the receiver's locks, not to call into the receiver or
   * this server, nor wait), with position_ctx: lag figures without
   * polling the status. [NULL: none] */
  void (*on_position)(void *ctx, const loom_position *received,
                      const loom_position *applied);
  void *position_ctx;

  http_log_fn log;                  /* optional diagnostics */
  void *log_ctx;
} http_server_options;

typedef struct http_server http_server;

/*
 * http_server_start: open the standby's directory (standby role), bind
 * listen_host:listen_port, and start serving. Returns 0 and the server in
 * *out, or:
 *   HTTP_EINVAL     no role, no dir (standby), no primary->position
 *                   (primary), a token of length 0 with a non-NULL pointer
 *   HTTP_ETLS       TLS asked for but unavailable, or only cert or key
 *   HTTP_EADDRESS   listen_host does not resolve
 *   HTTP_EDAEMON    libmicrohttpd refused to start
 *   HTTP_EINUSE     the port is in use (bind: EADDRINUSE)
 *   HTTP_ELISTEN    any other failure to bind or listen
 *   HTTP_ETLS_FILE  a TLS file cannot be opened or read
 *   errno values    threads, ENOMEM
 *   the errors of loom_store_open (LOOM_ELOCKED: another process has the
 *   directory) and of replicate_log_open.
 * On error nothing is left open.
 */
int http_server_start(const http_server_options *opt, http_server **out);

/* The standby's receiver (standby role, also once promoted), for what
 * receiver.h offers beyond these endpoints (snapshots, its lineage);
 * NULL for the primary role. Valid until http_server_stop. */
struct replicate_receiver *http_server_receiver(http_server *server);

/* The port the server listens on (the bound one when listen_port was 0). */
uint16_t http_server_port(const http_server *server);

/* What the scrubber found (running false when there is none). */
void http_server_integrity(http_server *server, replicate_scrub_status *out);

/*
 * http_server_set_token: replace the bearer token (copied) for the
 * requests that arrive from now on (SIGHUP's token rotation). Only a
 * server started with a token takes a new one: turning authentication on
 * or off needs a restart (it changes the upload slots' policy too).
 * Thread-safe. Returns 0, HTTP_EINVAL (no token before, or token NULL or
 * empty) or ENOMEM (the old token is kept).
 */
int http_server_set_token(http_server *server, const uint8_t *token, size_t len);

/*
 * http_server_reload_tls: serve the certificate and key in these PEM files
 * to the connections that arrive from now on (SIGHUP's certificate
 * rotation); connections already open finish on the old ones, none is
 * cut. Only a server started with TLS takes new files. Thread-safe.
 * Returns 0, HTTP_EINVAL, HTTP_ETLS (the server is plain HTTP),
 * HTTP_ETLS_FILE (a file cannot be read), HTTP_EDAEMON (libmicrohttpd
 * refuses them: not a PEM certificate and its key) or ENOMEM; on error
 * the server goes on with the old ones.
 */
int http_server_reload_tls(http_server *server, const char *cert_file, const char *key_file);

/*
 * http_server_stop: stop gracefully and free the server. Stops accepting
 * connections and waits for the requests in flight (an upload in progress
 * is cut off; a base image cut off leaves the old image), then, on a
 * standby, applies everything received (so the image is at the received
 * position), syncs and closes the store and the receive log. Returns 0 or
 * the first error of those last steps (the server is freed either way).
 * NULL is a no-op.
 */
int http_server_stop(http_server *server);

/* A copy of the figures /v1/status shows. */
typedef struct http_server_status {
  http_role role;                   /* PRIMARY after a promotion */
  loom_position applied;            /* (epoch: the node's epoch) */
  loom_position received;           /* standby; = applied on a primary */
  loom_position computed;           /* standby: applied, with the checksum
                                       it computed by reading its pages
                                       back (docs/INTEGRITY.md section 1) */
  uint64_t primary_seq;             /* standby: newest seq heard of */
  uint64_t lag_frames;              /* standby */
  uint64_t lag_bytes;               /* standby */
  double lag_seconds;               /* standby */
  bool replay_paused;               /* standby: a base image is coming in */
  bool fenced;                      /* primary */
  bool ready;                       /* what /readyz answers */
  unsigned backups_in_progress;
  uint64_t frames_received;         /* since start: commit frames made durable */
  uint64_t frames_applied;          /* since start */
  uint64_t apply_commits;           /* standby, since start: store commits
                                       the frames were applied in (fewer
                                       than frames_applied when frames that
                                       waited in the receive log were
                                       merged into one commit) */
  uint64_t duplicates;              /* since start: frames already received */
  int last_apply_error;             /* 0 or the error of the last failed apply */
  int fatal_error;                  /* standby: 0, or the storage failure that
                                       stopped applies (the store or receive
                                       log is poisoned): the process should
                                       exit; a restart recovers */
  loom_history history;             /* the history the node follows (none
                                       on a standby that holds nothing) */
  int diverged;                     /* standby: 0, or the REPLICATE_E* code
                                       of the last input refused as moving
                                       it backwards or sideways (held while
                                       refusals go on, cleared by the first
                                       frame applied 10 s after the last) */
  int64_t diverged_at_ns;           /* standby: when, CLOCK_REALTIME */
  uint64_t divergences;             /* standby, since start: such refusals */
  double apply_delay_seconds;       /* standby: --apply-delay, 0 none; ready
                                       while lag_seconds minus it is within
                                       ready_max_lag_seconds */
  uint64_t delay_waiting_frames;    /* standby: received, not yet due */
  uint64_t delay_discarded;         /* standby: commits younger than the
                                       delay a promotion discarded */
  bool commit_log_known;            /* commit_log is filled in (a standby,
                                       or a primary source with commit_log) */
  loom_log_stats commit_log;        /* the store's commit log (DESIGN
                                       section 9): status checkpoint_seq and
                                       commit_log, loomship_commit_log_* */
} http_server_status;

void http_server_get_status(http_server *server, http_server_status *out);

#ifdef __cplusplus
}
#endif
#endif /* HTTP_SERVER_H */
