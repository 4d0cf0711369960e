/*
 * receiver_internal.h: what the files of the receiver share; not part of
 * the API (receiver.h is). The design is the comment at the top of
 * receiver.c.
 *
 *   receiver.c        open and close, recovery, frames, promotion, lag
 *                     (pending ring, the primary's clock), status
 *   receiver_apply.c  the applier thread, group apply, the apply error
 *                     classes, coalesced frames, rollback
 *   receiver_base.c   base images (PUT /v1/base)
 */
#ifndef REPLICATE_RECEIVER_INTERNAL_H
#define REPLICATE_RECEIVER_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "loom.h"
#include "receiver.h"
#include "replicate.h"

#define RX_SKEW_SAMPLES 32
#define RX_NS_PER_S INT64_C(1000000000)
/* Group apply bounds: frames merged into one commit, and their distinct
 * pages (the merge holds LOOM_PAGE_SIZE bytes per page, twice). */
#define RX_APPLY_MERGE_FRAMES 256u
#define RX_APPLY_MERGE_PAGES 2048u

/* The primary's clock as seen from here (PRIMARY'S CLOCK). Under mu. */
typedef struct rx_primary_clock {
  bool known;
  int64_t primary_ns;           /* a time on the primary's clock */
  int64_t mono_ns;              /* our CLOCK_MONOTONIC when it arrived */
  int64_t skew_ns[RX_SKEW_SAMPLES]; /* our realtime minus the primary's */
  unsigned skew_len, skew_next;
} rx_primary_clock;

typedef struct rx_pending_frame {
  uint64_t seq;                 /* its after.seq */
  int64_t commit_ns;            /* its first commit's time */
  uint64_t bytes;               /* the frame's size */
} rx_pending_frame;

struct replicate_receiver {
  replicate_receiver_log_fn log_fn;
  void *log_ctx;
  void (*on_bad_pages)(void *ctx, const uint64_t *pages, uint64_t count);
  void *bad_pages_ctx;
  void (*on_received)(void *ctx, const void *frame, size_t len);
  void *received_ctx;
  void (*on_position)(void *ctx, const loom_position *received,
                      const loom_position *applied);
  void *position_ctx;
  int64_t (*now_ns)(void);
  const struct loom_io *io;
  uint64_t commit_log_bytes;    /* the store's ring (0: the default) */
  uint64_t log_segment_bytes;   /* the receive log's segments */
  uint64_t apply_merge_pages;   /* group apply's page cap: RX_APPLY_MERGE_PAGES,
                                   or half the store's ring (set at open) */
  char *dir;
  replicate_limits limits;
  uint64_t max_unapplied_bytes;

  loom_store *store;            /* store_mu */
  replicate_log *log;           /* its own lock; appends under recv_mu */
  replicate_decoder *recv_dec;  /* recv_mu */
  replicate_decoder *apply_dec; /* the applier thread */
  replicate_coalescer *apply_merge; /* the applier thread: group apply */
  uint64_t single_through;      /* the applier thread: apply frames up to
                                   this seq one at a time (a merged apply
                                   failed: find the culprit) */
  pthread_t applier;
  bool applier_started;

  pthread_mutex_t recv_mu;
  pthread_mutex_t store_mu;
  pthread_mutex_t mu;
  pthread_cond_t cond;

  /* mu: */
  loom_position received;
  loom_position applied;
  loom_lineage lineage;         /* the history followed (none: holds
                                   nothing yet, and the store adopts the
                                   first one it applies) */
  int diverged;                 /* last refusal as backwards or sideways */
  int64_t diverged_at_ns, diverged_mono_ns;
  uint64_t divergences;
  uint64_t promote_max_lag;
  rx_pending_frame *pending;    /* a ring */
  size_t pending_head, pending_len, pending_cap;
  uint64_t pending_bytes;
  /* DELAYED STANDBY (receiver.h): the pending frames [head, head +
   * due_len) are due (their commit older than delay_ns); the applier
   * applies only those, and, while holding, none past hold_seq. */
  int64_t delay_ns;             /* 0: no delay */
  size_t due_len;
  uint64_t due_bytes;
  bool apply_all;               /* a forced promotion: the delay is over */
  bool holding;
  uint64_t hold_seq;
  uint64_t delay_discarded;
  uint64_t primary_epoch;
  uint64_t primary_seq;
  int64_t primary_commit_ns;
  int64_t last_contact_ns;
  rx_primary_clock clock;
  bool promoted;
  int64_t promoted_at_ns;
  uint64_t rewind_epoch;        /* replicate_receiver_allow_rewind; 0 off */
  uint64_t rewound_frames, rewound_from_seq;
  int64_t rewound_at_ns;        /* 0: never rewound */
  bool base_active;
  bool applier_busy;
  bool stopping;
  bool apply_failed;
  bool want_base;               /* replicate_receiver_want_base: frames are
                                   answered EPAGE_HASH until a base image */
  int fatal;                    /* storage failed (store or log poisoned):
                                   no more applies; received frames are
                                   kept and a restart recovers */
  bool need_sync;               /* an apply since the last idle sync */
  int64_t need_sync_ns;         /* the newest such apply (rx_mono_ns) */
  int last_apply_error;
  int64_t last_apply_error_at_ns;
  unsigned snapshots_open;
  replicate_duration_histogram apply_durations; /* under mu */
  replicate_duration_histogram append_durations; /* under mu */
  uint64_t frames_received, frames_applied, apply_commits, duplicates,
      heartbeats, bases;
  uint64_t bytes_received, apply_failures;
  loom_position computed;       /* replicate_recv_outcome.computed */
  uint64_t rot_page;            /* UINT64_MAX: no read-back differed */
  uint64_t readback_mismatches;

  /* store_mu: the pages of the applies since the last read-back (READ-
   * BACK, GATHERED in receiver_apply.c): read back together before an
   * apply once due, or when idle (a read waits for the store's checkpoint
   * of those commits: applied moves as soon as a commit is durable,
   * computed when they are read back). rb_since_ns: the oldest's apply. */
  uint64_t *rb_pages;
  size_t rb_len, rb_cap;
  loom_position rb_pos;
  int64_t rb_since_ns;
  bool rb_pending;
  bool rb_whole;                /* some applied pages went unlisted (no
                                   memory): read the whole image back */
};

/* What reading back the last apply's pages gave. */
typedef struct rx_readback {
  bool done;
  loom_position pos;            /* the position they were read back at */
  uint64_t checksum, bad_page;
} rx_readback;

/* receiver.c */
void rx_logf(replicate_receiver *rx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int64_t rx_now_ns(const replicate_receiver *rx);
int64_t rx_mono_ns(void);
bool rx_is_disk_full(int rc);
/* Under mu: result and code, with the positions as they are now. */
void rx_outcome(replicate_receiver *rx, replicate_recv_result result, int code,
                replicate_recv_outcome *out);
/* Under mu: input was refused as moving this node backwards or sideways. */
/* Under mu: sound input came in; clears an old divergence. */
void rx_note_sound_input(replicate_receiver *rx);
void rx_note_divergence(replicate_receiver *rx, int rc,
                        const loom_history *theirs);
/* Under mu: lag accounting for the frames received and not applied. */
int rx_pending_push(replicate_receiver *rx, uint64_t seq, int64_t commit_ns,
                    uint64_t bytes);
void rx_pending_pop_through(replicate_receiver *rx, uint64_t seq);
void rx_pending_clear(replicate_receiver *rx);
/* Under mu: the last seq the applier may apply now (DELAYED STANDBY):
 * received.seq without a delay, else the newest due frame's (applied.seq
 * when none is due, and never past hold_seq while holding). *wait_ns: how
 * long until the next frame is due, 0 when none waits. */
uint64_t rx_apply_limit(replicate_receiver *rx, int64_t *wait_ns);
/* Under recv_mu, reset the receive log, saying so if that fails. */
void rx_log_reset(replicate_receiver *rx);
/* Under mu, after received or applied moved: tell on_position. */
void rx_positions_moved(replicate_receiver *rx);

/* receiver_base.c */
/* Under mu: a rewind (base image or replicate_receiver_rewind_from)
 * discarded frames commits held from from_seq: record and log it, and
 * withdraw the permission. */
void rx_note_rewound(replicate_receiver *rx, uint64_t frames, uint64_t from_seq);

/* receiver_apply.c */
void *rx_applier_main(void *arg);
/* Under mu: wait until everything received is applied, or an apply
 * failed; returns apply_failed. */
bool rx_wait_applied(replicate_receiver *rx);
/* Under recv_mu (not mu): forget the frames past applied after an apply
 * failed. */
void rx_rollback(replicate_receiver *rx);
/* Under recv_mu (not mu): a coalesced frame, applied at once. */
void rx_apply_coalesced(replicate_receiver *rx, const replicate_frame *frame,
                        size_t len, replicate_recv_outcome *out);
/* Under mu: pos was applied; checksum is what the read-back of its pages
 * gave (replicate_pages_readback), bad_page the first that differed
 * (UINT64_MAX: none). With read_back false (a base image, nothing to read
 * back) the store's own checksum stands. */
void rx_note_computed(replicate_receiver *rx, const loom_position *pos,
                      bool read_back, uint64_t checksum, uint64_t bad_page);
/* Under store_mu: frame was just applied, at pos; its pages join those
 * to read back later (rx_readback_flush). */
void rx_readback_defer(replicate_receiver *rx, const replicate_frame *frame,
                       const loom_position *pos);
/* Under store_mu: read back the gathered pages, if any, the store is still
 * at their position and (unless now) they are due (out->done says); then,
 * under mu, give *out to rx_note_readback. */
void rx_readback_flush(replicate_receiver *rx, rx_readback *out, bool now);
void rx_note_readback(replicate_receiver *rx, const rx_readback *rb);
/* Under mu: storage failed; say it once. */
void rx_set_fatal(replicate_receiver *rx, int rc);
/* A poisoned store or log (after a failed fsync). */
bool rx_is_fatal(int rc);

#endif /* REPLICATE_RECEIVER_INTERNAL_H */
