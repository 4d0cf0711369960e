/*
 * receiver.h: the standby side of replication, without a server in it.
 *
 * INTRODUCTION
 *
 * A replicate_receiver owns a standby's image directory: its loom_store,
 * a *receive log* (a replicate_log in DIR/replog/) and an *applier thread*
 * that applies what was received, several frames per commit when it falls
 * behind (group apply). Its callers hand it what the primary sent and get
 * back an *outcome*: what happened, in terms that do not depend on HTTP
 * (a replicate_recv_result, the error code behind it, the positions after
 * it). http/standby.c turns outcomes into the JSON answers of docs/HTTP.md;
 * the tests in tests/replicate drive a receiver directly.
 *
 *   replicate_receiver_frame     one frame or heartbeat (POST /v1/frames)
 *   replicate_receiver_promote   become a primary (POST /v1/promote)
 *   replicate_receiver_base_*    a base image, streamed (PUT /v1/base)
 *   replicate_receiver_status    positions, lag, counters (status, metrics)
 *   replicate_receiver_snapshot_* a consistent view of the store (backups)
 *
 * This header is the receiver's manual; the frames, the log and the
 * placement rules it builds on are in replicate.h. The design (steps,
 * group apply, invariants, recovery, the primary's clock, locks) is the
 * comment at the top of receiver.c.
 *
 * ERRORS
 *
 * replicate_receiver_open and the begin of a base image return 0 or an
 * error code (errno values, LOOM_E*, REPLICATE_E*; replicate_strerror()).
 * Everything else reports through its outcome: nothing aborts on bad input
 * or failed I/O. A failed fsync of the store or of the receive log is
 * fatal to the receiver (REPLICATE_RECV_STORAGE_FAILED, and status's
 * fatal_error): it applies nothing more, keeps what it received, and a
 * restart recovers.
 *
 * THREADS
 *
 * Every call may come from any thread; the receiver serialises receipt
 * (frames, promotion, the start of a base image) itself. One base image
 * at a time; its feed and finish calls come from one thread at a time.
 */
#ifndef REPLICATE_RECEIVER_H
#define REPLICATE_RECEIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loom.h"
#include "replicate.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct replicate_receiver replicate_receiver;

/*
 * DELAYED STANDBY (DESIGN section 7; apply_delay_seconds > 0)
 *
 * Frames are received and made durable in the receive log at once, as
 * always; the applier applies a commit only once its commit time (on the
 * primary's clock, receiver.c PRIMARY'S CLOCK) is older than the delay,
 * and sleeps until the next one is due. So:
 *   - closing applies what is due and leaves the rest in the receive log;
 *     the next open finds it there (RECOVERY) and keeps delaying it: the
 *     delay holds across a restart;
 *   - the receive log holds every commit of the last apply_delay_seconds
 *     (its size follows from the delay and the primary's write rate:
 *     status receive_log_bytes); max_unapplied_bytes bounds only the
 *     commits already due and not yet applied;
 *   - promotion without force applies only the commits already due and
 *     discards the younger ones (logged); with force it applies all;
 *   - a merged frame (several commits, REPLICATE_FRAME_COALESCED) cannot
 *     wait in the receive log: one whose newest commit is due is applied
 *     at once, a younger one is refused (SINGLE_FRAMES), and every answer
 *     says single_frames so the primary sends commits one at a time;
 *   - a base image is applied when it arrives (it has no commit times):
 *     the delay starts again from its position.
 */

/* One line of diagnostics, no trailing newline ("standby: ..."). Called
 * from the caller's thread or the applier thread. */
typedef void (*replicate_receiver_log_fn)(void *ctx, const char *line);

/* Zero-initialise, then set what you need: 0 (or NULL) means the default
 * given in brackets. */
typedef struct replicate_receiver_options {
  const char *dir;                  /* required: the image directory
                                       (created if missing) */
  const struct loom_io *io;         /* [loom_io_posix()]; must outlive the
                                       receiver */
  const replicate_limits *limits;   /* what a frame may declare
                                       [replicate_limits_default()] */
  uint64_t max_unapplied_bytes;     /* received frames not yet applied
                                       before frames are refused
                                       (REPLICATE_RECV_BEHIND) [1 GiB] */
  uint64_t promote_max_lag;         /* frames behind the primary's seq
                                       last heard before promotion is
                                       refused [100] */
  int64_t (*now_ns)(void);          /* this node's CLOCK_REALTIME in ns
                                       (a seam for tests) [clock_gettime] */
  double apply_delay_seconds;       /* a delayed standby (see DELAYED
                                       STANDBY below) [0: apply at once] */
  uint64_t commit_log_bytes;        /* the store's commit log ring
                                       (loom_store_open_with: a directory
                                       of another size takes this one at
                                       open); group apply merges at most
                                       half of it (GROUP APPLY in
                                       receiver.c) [LOOM_LOG_BYTES_DEFAULT] */
  replicate_receiver_log_fn log_fn; /* optional diagnostics */
  void *log_ctx;
  /* Bad pages found while applying (optional; DESIGN section 8): a frame
   * whose before matched no longer applies (REPLICATE_EPAGE_HASH or
   * REPLICATE_EAFTER_CHECKSUM) and some of its pages do not match their
   * recorded hashes on disk, or the read-back of an apply found one. Called
   * on the applier's thread, under the receiver's lock: it must not call
   * back into the receiver (hand the pages to the scrubber's
   * replicate_scrubber_request_repair, which then calls
   * replicate_receiver_repair_from). */
  void (*on_bad_pages)(void *ctx, const uint64_t *pages, uint64_t count);
  void *bad_pages_ctx;
  /* Each commit frame once it is durable in the receive log (optional;
   * an archiving standby, DESIGN section 7): frame is one single-commit
   * frame (len bytes, valid during the call), in seq order; seqs that
   * arrive inside a base image are not passed (the next frame then skips
   * them). Called on the thread that hands the frame in, under the
   * receipt lock: it must not call back into the receiver, nor wait for
   * long. With it, merged frames are refused (SINGLE_FRAMES) and every
   * answer says single_frames, so the primary sends commits one at a
   * time, as for a delayed standby.
   * With it, the receive log also keeps every frame received, applied or
   * not, from open on (replicate_log_hold(log, 1), set before the applier
   * starts, so a restart trims nothing its consumer has not seen): the
   * consumer (an archiver, archive.h) moves or lifts that hold through
   * replicate_receiver_log. */
  void (*on_received)(void *ctx, const void *frame, size_t len);
  void *received_ctx;
  /* Told each time received or applied moves (optional), with both
   * positions after the move: a frame made durable (on the thread that
   * handed it in, before its answer), an apply or a merged frame's apply,
   * a base image, a rollback after a failed apply, a promotion, a repair
   * or rewind that moved the store to another epoch, and once at open
   * (after the applier started, so possibly with a newer position than
   * open recovered, and not necessarily first: the applier may call it
   * before; both before replicate_receiver_open returns, so position_ctx
   * must be ready before the open and cannot rely on its handle). Positions
   * may go back (a rollback, a base image or rewind to a lower seq) and a
   * call may repeat the last ones. Called under the receiver's state lock,
   * and for frames, rollbacks and promotions under its receipt lock too:
   * it must not call into the receiver or its server, nor wait, nor take
   * a lock that a thread holds while it calls into them (a deadlock), and
   * must not keep the pointers. For an embedder's own lag figures without
   * polling the status (bench/lag_bench.c). */
  void (*on_position)(void *ctx, const loom_position *received,
                      const loom_position *applied);
  void *position_ctx;
  uint64_t log_segment_bytes;       /* the receive log's segments
                                       (replicate_log_options.segment_bytes:
                                       retention drops whole ones; tests
                                       make them small) [16 MiB] */
} replicate_receiver_options;

/*
 * replicate_receiver_open: open (or create) the store of opt->dir with
 * asynchronous image writes, open its receive log (repairing damage:
 * reported through log_fn), recover the received position (receiver.c,
 * RECOVERY) and start the applier thread. Errors: REPLICATE_EINVAL (no
 * dir), ENOMEM, the errors of loom_store_open and replicate_log_open,
 * errno values (the thread).
 */
int replicate_receiver_open(const replicate_receiver_options *opt,
                            replicate_receiver **out);

/* Apply everything received (not after a failed apply, nor while the disk
 * is full), sync the store, close, free. Returns the first error: the last
 * apply error when frames stayed unapplied, or one of closing. NULL: 0. */
int replicate_receiver_close(replicate_receiver *rx);

/* ---------------------------------------------------------------------- */
/* Outcomes */

/* What became of an input. Append-only; REPLICATE_RECV_LAST closes it. */
typedef enum replicate_recv_result {
  /* Taken. */
  REPLICATE_RECV_OK = 0,            /* frame: durable in the receive log
                                       (a coalesced one: applied); base:
                                       committed; promote: promoted */
  REPLICATE_RECV_DUPLICATE = 1,     /* frame held already: nothing changed */
  REPLICATE_RECV_HEARTBEAT = 2,     /* a heartbeat: the primary's position
                                       noted */
  /* Refused: the input. */
  REPLICATE_RECV_MALFORMED = 3,     /* code: the decoder's error
                                       (REPLICATE_ETOOBIG: over the limits;
                                       ENOMEM: retry) */
  REPLICATE_RECV_STALE_EPOCH = 4,   /* input_epoch: older than ours (its
                                       sender was fenced) */
  REPLICATE_RECV_DIVERGED = 5,      /* code: the replicate_place_* refusal;
                                       status shows it as diverged */
  REPLICATE_RECV_GAP = 6,           /* frame_before is past received */
  REPLICATE_RECV_OVERLAP = 7,       /* frame_before is behind received and
                                       the frame ends past it */
  /* Refused: this node's state. */
  REPLICATE_RECV_PROMOTED = 8,      /* not a standby any more */
  REPLICATE_RECV_BASE_ACTIVE = 9,   /* a base image is coming in */
  REPLICATE_RECV_BEHIND = 10,       /* max_unapplied_bytes wait to be
                                       applied: retry_after */
  REPLICATE_RECV_NO_MEMORY = 11,    /* retry_after */
  REPLICATE_RECV_PROMOTE_EMPTY = 12,/* nothing received: promoting would
                                       start an empty history */
  REPLICATE_RECV_PROMOTE_BEHIND = 13, /* further than promote_max_lag
                                       behind primary_seq */
  REPLICATE_RECV_ALREADY_PRIMARY = 14,
  /* Failed: storage (code says why). */
  REPLICATE_RECV_DISK_FULL = 15,    /* ENOSPC, EDQUOT, EFBIG */
  REPLICATE_RECV_STORAGE_FAILED = 16, /* fatal: the node must restart */
  REPLICATE_RECV_WRITE_FAILED = 17, /* the receive log append failed */
  REPLICATE_RECV_PROMOTE_FAILED = 18, /* the store refused the new epoch */
  /* A coalesced frame, applied at once: what its apply said. */
  REPLICATE_RECV_APPLY_STOPPED = 19,/* an earlier frame failed to apply:
                                       received rolled back to applied;
                                       code is that failure's */
  REPLICATE_RECV_APPLY_STALE_EPOCH = 20,
  REPLICATE_RECV_APPLY_GAP = 21,
  REPLICATE_RECV_APPLY_DISK_FULL = 22,
  REPLICATE_RECV_APPLY_STORAGE_FAILED = 23,
  REPLICATE_RECV_APPLY_REFUSED = 24,/* the frame does not apply (code < 0) */
  REPLICATE_RECV_APPLY_FAILED = 25, /* a system error (code > 0) */
  /* A base image. */
  REPLICATE_RECV_BASE_RUNNING = 26, /* another base image is coming in */
  REPLICATE_RECV_BASE_HEADER = 27,  /* code: loom_stream_header_decode's */
  REPLICATE_RECV_BASE_TOO_LARGE = 28, /* over limits->max_image_pages */
  REPLICATE_RECV_BASE_LENGTH = 29,  /* the length announced does not match
                                       the header */
  REPLICATE_RECV_BASE_TRAILING = 30,/* bytes after the last page */
  REPLICATE_RECV_BASE_TRUNCATED = 31,
  REPLICATE_RECV_BASE_STORE = 32,   /* code: the store refused a step */
  REPLICATE_RECV_BASE_COMMIT = 33,  /* code: the commit failed
                                       (LOOM_EPOSITION: the pages do not
                                       give the header's checksum) */
  REPLICATE_RECV_BASE_MOVED = 34,   /* the sender chose the base image for
                                       a position (if_position) that is no
                                       longer the received one */
  /* A delayed standby. */
  REPLICATE_RECV_SINGLE_FRAMES = 35,/* a merged frame younger than the apply
                                       delay: send its commits one at a
                                       time */
  REPLICATE_RECV_LAST = 36
} replicate_recv_result;

/* "ok", "duplicate", ..., "base_commit": a name for logs and tests;
 * "unknown" outside the enum. */
const char *replicate_recv_result_name(replicate_recv_result r);

/* What an input came to, and the positions right after it. */
typedef struct replicate_recv_outcome {
  replicate_recv_result result;
  int code;                     /* the error behind the result; 0: none */
  unsigned retry_after;         /* seconds to wait before sending again;
                                   0: no advice */
  bool promoted;                /* this node is a primary now */
  loom_position received;       /* durable in the receive log */
  loom_position applied;        /* committed in the store */
  loom_history history;         /* the history followed (none: nothing
                                   held yet) */
  uint64_t input_epoch;         /* STALE_EPOCH: the frame's or image's */
  uint64_t frame_epoch;         /* GAP, OVERLAP: the frame's epoch and */
  loom_position frame_before;   /* its before */
  uint64_t primary_seq;         /* the primary's newest seq last heard */
  loom_position computed;       /* applied, with the checksum this standby
                                   computed itself by reading back the pages
                                   it wrote (replicate_frame_readback); its
                                   answers carry it (DESIGN section 8) */
  bool single_frames;           /* a delayed standby: send single commits,
                                   not merged frames */
} replicate_recv_outcome;

/* ---------------------------------------------------------------------- */
/* Frames */

/*
 * replicate_receiver_frame: take one frame or heartbeat, the bytes[0, len)
 * the primary sent. In order:
 *   1. decode strictly (MALFORMED);
 *   2. place it against the received position (replicate_place_frame):
 *      STALE_EPOCH, DIVERGED; PROMOTED once promoted; a heartbeat updates
 *      what is known of the primary (HEARTBEAT); DUPLICATE; BASE_ACTIVE;
 *      GAP or OVERLAP (the sender resends from received);
 *   3. a coalesced frame is applied at once, after the applier drained
 *      (OK, DUPLICATE, DIVERGED or APPLY_*); others:
 *   4. BEHIND when max_unapplied_bytes already wait;
 *   5. append durably to the receive log (DISK_FULL, STORAGE_FAILED,
 *      WRITE_FAILED): received moves to the frame's after, OK; the applier
 *      applies it later.
 */
void replicate_receiver_frame(replicate_receiver *rx, const void *bytes,
                              size_t len, replicate_recv_outcome *out);

/*
 * replicate_receiver_promote: refuse (PROMOTE_EMPTY, PROMOTE_BEHIND:
 * unless force; ALREADY_PRIMARY; BASE_ACTIVE), or apply everything
 * received (a delayed standby without force: what is due, the rest
 * discarded; DELAYED STANDBY), start a new epoch of the history (a new history when forced
 * at seq 0) and refuse every frame from then on (OK; PROMOTE_FAILED with
 * the store's error). primary_seq is set in every outcome.
 */
void replicate_receiver_promote(replicate_receiver *rx, bool force,
                                replicate_recv_outcome *out);

/* ---------------------------------------------------------------------- */
/* A base image (PUT /v1/base), streamed */

/*
 * The image stream of loom_stream_header_encode (the header, then the
 * pages) in chunks of any size:
 *
 *     rc = replicate_receiver_base_begin(rx, length, if_position, &up,
 *                                        &outcome);
 *     while (chunks && replicate_receiver_base_feed(up, data, n) == 0)
 *         ;
 *     replicate_receiver_base_finish(up, &outcome);  (or _abort(up))
 *
 * begin pauses the applier (frames get BASE_ACTIVE) and returns 0, or
 * ENOMEM (NO_MEMORY), EPERM (PROMOTED), EBUSY (BASE_RUNNING), EAGAIN
 * (BASE_MOVED: if_position, the position the sender checked before it
 * chose to send a base image, or NULL, is not the received one any more:
 * the sender decides again) with the outcome filled. length is the stream's announced length, UINT64_MAX when
 * unknown. Once the header is complete it is placed
 * (replicate_place_base): STALE_EPOCH, DIVERGED, and the history is
 * adopted before any page is written. feed returns 0, or non-zero once the
 * upload is refused (feeding more does nothing; the refusal is given by
 * finish). finish commits (OK: applied == received == the image's
 * position, the receive log emptied) or gives the refusal, and frees the
 * upload; abort frees it and keeps the old image.
 */
typedef struct replicate_receiver_base replicate_receiver_base;

int replicate_receiver_base_begin(replicate_receiver *rx, uint64_t length,
                                  const loom_position *if_position,
                                  replicate_receiver_base **out,
                                  replicate_recv_outcome *outcome);
int replicate_receiver_base_feed(replicate_receiver_base *up,
                                 const void *data, size_t len);
void replicate_receiver_base_finish(replicate_receiver_base *up,
                                    replicate_recv_outcome *out);
/* NULL is a no-op. */
void replicate_receiver_base_abort(replicate_receiver_base *up);

/*
 * replicate_receiver_allow_rewind: the one exception to the history rules
 * (DESIGN section 3), for a cluster node only (cluster/node.c), never for a
 * plain standby. Having learned from etcd that the current leader's epoch
 * is epoch, the node allows the next base image of its own history at
 * that epoch or newer (and newer than what it holds) to replace what it
 * holds although that lies past the image's branch point (EPAST_BRANCH),
 * differs at its seq (EFORK) or goes further (EBEHIND): what lay past the
 * branch point is discarded, logged, and reported in status (rewound_*).
 * Another history is still refused. One base image (or one
 * replicate_receiver_rewind_from) per permission; 0 withdraws it.
 * Thread-safe.
 */
void replicate_receiver_allow_rewind(replicate_receiver *rx, uint64_t epoch);

/*
 * replicate_receiver_want_base: the image has more bad pages than a repair
 * moves page by page (docs/INTEGRITY.md section 5): from now on every frame
 * and heartbeat is answered REPLICATE_RECV_APPLY_STOPPED with
 * REPLICATE_EPAGE_HASH (409, "checksum mismatch"), on which the primary
 * sends a base image of the same history (at or past this position: the
 * history rules take it); the next base image committed ends it.
 * replicate_receiver_wants_base says whether it is still waited for.
 * Thread-safe.
 */
void replicate_receiver_want_base(replicate_receiver *rx);
bool replicate_receiver_wants_base(replicate_receiver *rx);

/* ---------------------------------------------------------------------- */
/* Reading the store, status */

/* Self-repair: replicate_repair_pages (replicate.h) on the standby's
 * store, under the lock its applies take, so no frame is applied
 * meanwhile: its outcome, or EBUSY while a base image is coming in. */
int replicate_receiver_repair(replicate_receiver *rx, const uint8_t *answer,
                              size_t len, const uint64_t *pages, uint64_t count);

/* Self-repair from the upstream at its own position: replicate_repair_from
 * (replicate.h) with every apply held off (as a base image holds them:
 * frames are answered REPLICATE_RECV_BASE_RUNNING meanwhile). When it moved
 * the store (the upstream was ahead), the received frames are dropped and
 * received = applied = the new position (the primary resends from there);
 * a failed apply is forgiven (the frame that failed is tried again). Its
 * outcome, or EBUSY while a base image is coming in, EPERM once
 * promoted. */
int replicate_receiver_repair_from(replicate_receiver *rx,
                                   const replicate_repair_source *src,
                                   const uint64_t *bad, uint64_t nbad, uint64_t *moved,
                                   char *why, size_t why_len);

/* A cluster node's rewind through the page-hash tree: replicate_rewind_from
 * (replicate.h) under the permission of replicate_receiver_allow_rewind
 * (without it: refused, nothing written), every apply held off as above.
 * lineage is the leader's. Once done, the receiver is at the leader's
 * position, of its lineage, the frames it had received dropped, and the
 * rewind recorded and logged as a base image's is (rewound_* in status;
 * the permission is used up). Its outcome (REPLICATE_ETOOBIG: stream the
 * leader's backup as a base image instead), or EBUSY, EPERM as above. */
int replicate_receiver_rewind_from(replicate_receiver *rx,
                                   const replicate_repair_source *src,
                                   const loom_lineage *lineage, uint64_t *moved,
                                   char *why, size_t why_len);

/* A snapshot of the store at (or past) the applied position: 0, EBUSY (a
 * base image is coming in), or the errors of loom_store_sync and
 * loom_store_snapshot_open. Close it with replicate_receiver_snapshot_close. */
int replicate_receiver_snapshot_open(replicate_receiver *rx,
                                     loom_snapshot **out);
void replicate_receiver_snapshot_close(replicate_receiver *rx,
                                       loom_snapshot *snap);

/* What status and metrics show. Times are CLOCK_REALTIME ns (now_ns's
 * clock), 0 when never. */
typedef struct replicate_receiver_status {
  bool promoted;
  int64_t promoted_at_ns;
  loom_position received;
  loom_position applied;
  loom_history history;         /* the history followed */
  uint64_t primary_epoch;       /* the primary's, as last heard */
  uint64_t primary_seq;         /* at least received.seq */
  int64_t primary_commit_ns;    /* commit time of primary_seq, 0 unknown */
  int64_t last_contact_ns;      /* last frame or heartbeat */
  uint64_t lag_frames;          /* primary_seq - applied.seq */
  uint64_t lag_bytes;           /* frame bytes received, not applied */
  double lag_seconds;           /* age of the oldest commit heard of and
                                   not applied, on the primary's clock */
  bool clock_skew_known;        /* a frame or heartbeat arrived */
  double clock_skew_seconds;    /* our clock minus the primary's,
                                   estimated (receiver.c, PRIMARY'S
                                   CLOCK) */
  bool base_active;             /* applies paused for a base image */
  bool apply_stopped;           /* a frame failed to apply: nothing more
                                   is applied until receipt rolls back */
  int fatal_error;              /* storage failed: 0 or its code */
  int last_apply_error;         /* 0 when none */
  int64_t last_apply_error_at_ns;
  int diverged;                 /* the last divergence refused (a
                                   REPLICATE_E* code), 0 once input is
                                   accepted 10 s after it */
  int64_t diverged_at_ns;
  uint64_t divergences;
  uint64_t frames_received, frames_applied, apply_commits, apply_failures;
  uint64_t duplicates, heartbeats, bases;
  uint64_t bytes_received;      /* commit frame bytes made durable */
  uint64_t receive_log_bytes;
  /* The last rewind (replicate_receiver_allow_rewind), since open:
   * rewound_at_ns 0 when none. */
  uint64_t rewound_frames;      /* commits past the branch point discarded */
  uint64_t rewound_from_seq;    /* the received seq before the rewind */
  int64_t rewound_at_ns;
  loom_position computed;       /* as in replicate_recv_outcome */
  uint64_t rot_page;            /* the first page whose read-back did not
                                   match its recorded hash; UINT64_MAX when
                                   none was met. Once met, computed stays
                                   where it was found until a restart */
  uint64_t readback_mismatches; /* applies whose read-back differed */
  replicate_duration_histogram apply_durations; /* each group apply: taking
                                   the frames from the receive log and
                                   committing them to the store */
  replicate_duration_histogram append_durations; /* each frame's append to
                                   the receive log, its fdatasync included
                                   (received at the end of it); failed
                                   appends too */
  double apply_delay_seconds;   /* the option; 0: none */
  uint64_t delay_waiting_frames;/* received frames whose delay has not
                                   passed yet */
  loom_log_stats commit_log;    /* the store's commit log: its fill and
                                   the checkpoint's position (core/loom.h) */
  uint64_t delay_discarded;     /* commits younger than the delay that a
                                   promotion without force discarded */
} replicate_receiver_status;

void replicate_receiver_get_status(replicate_receiver *rx,
                                   replicate_receiver_status *out);
bool replicate_receiver_promoted(replicate_receiver *rx);
/* The lineage (history and branch points) the receiver follows. */
void replicate_receiver_lineage(replicate_receiver *rx, loom_lineage *out);

/* The receive log, for the consumer of on_received (an archiving standby's
 * archiver, archive.h replicate_archiver_options.log): it may read it
 * (replicate_log_read, _iter_*) and set its hold (replicate_log_hold: the
 * applier's trims keep every frame from that seq on), nothing else: the
 * receiver alone appends, trims and resets it (a reset, after a base image
 * or a promotion, drops held frames too). Valid until
 * replicate_receiver_close. */
replicate_log *replicate_receiver_log(replicate_receiver *rx);

#ifdef __cplusplus
}
#endif
#endif /* REPLICATE_RECEIVER_H */
