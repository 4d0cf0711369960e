/*
 * ship_internal.h: internals of the shipper shared by ship*.c, ship_json.c
 * and the tests. Not installed; the module's manual is replicate.h.
 */
#ifndef REPLICATE_SHIP_INTERNAL_H
#define REPLICATE_SHIP_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loom.h"
#include "replicate.h"

#define SHIP_ANSWER_ERROR_MAX 64

/* What the shipper reads from a standby's JSON answer. */
typedef struct ship_answer {
  bool has_error;
  char error[SHIP_ANSWER_ERROR_MAX]; /* top-level "error", truncated,
                                        control characters replaced */
  bool has_code;
  char code[SHIP_ANSWER_ERROR_MAX];  /* top-level "code" (a stable error
                                        name such as "REPLICATE_EFORK") */
  bool has_history;
  loom_history history;              /* top-level "history": 32 hex digits,
                                        or null (none: all zero) */
  bool has_epoch;
  uint64_t epoch;                    /* top-level "epoch" */
  /* "received" and "applied": positions as a standby reports them,
   * {"epoch", "seq", "checksum" (16 hex digits), "pages"}; other keys
   * (such as "at") are allowed and ignored. commit_time_ns is 0. */
  bool has_received;
  loom_position received;
  bool has_applied;
  loom_position applied;
  /* "computed": the applied position with the checksum the standby
   * computed itself by reading back what it wrote (DESIGN section 8). */
  bool has_computed;
  loom_position computed;
  /* "single_frames": true: a delayed standby takes commits one at a time
   * (false when absent). */
  bool single_frames;
} ship_answer;

/* The longest answer read; a longer one is a failed request. */
#define SHIP_ANSWER_MAX 65536u

/*
 * ship_answer_parse: read text[0, len) as exactly one JSON object (RFC 8259,
 * read by jansson; nesting at most 16 deep, whitespace around it allowed)
 * and extract the fields above. Returns 0, or REPLICATE_EMALFORMED when the
 * text is not well-formed JSON, is not an object, repeats a key in any of
 * its objects, holds an integer jansson cannot represent (below -2^63 or
 * from 2^63 on, anywhere), gives an extracted field a value of the wrong
 * type (a number that is not a non-negative integer, so below 2^63; a
 * checksum that is not 16 hex digits; a history that is neither null nor
 * 32 hex digits; an error or code that is not a string; a single_frames
 * that is not a boolean), or holds a
 * "received", "applied" or "computed" object missing one of its four
 * fields.
 */
int ship_answer_parse(const char *text, size_t len, ship_answer *out);

/* ====================================================================== */
/* The shipper's state, shared by ship.c (start, stop, the shipping
 * thread, the commit side), ship_ring.c (the commit ring and frame cache,
 * retention), ship_request.c (curl requests and answers), ship_standby.c
 * (each standby's state machine) and ship_status.c (status, lag, drain).
 * The design and invariants I1-I5 are at the top of ship.c. */

#include <pthread.h>
#include <time.h>

#include <curl/curl.h>

#define NS_PER_S INT64_C(1000000000)
#define RING_MAX_ENTRIES (1u << 18)
#define CONFLICTS_BEFORE_BASE 3u

/* A frame kept in memory, shared by the ring and the requests sending it;
 * refs is changed under mu. */
typedef struct ship_frame {
  unsigned refs;
  size_t len;
  uint8_t data[];
} ship_frame;

typedef struct commit_entry {
  uint64_t seq;
  int64_t commit_time_ns;
  uint64_t bytes;       /* frame bytes */
  uint64_t cum_bytes;   /* bytes of every entry up to this one */
  ship_frame *frame;    /* NULL when not (or no longer) in memory */
} commit_entry;

typedef struct commit_ring {
  commit_entry *v;
  size_t cap;
  size_t head;
  size_t len;
  size_t first_cached;  /* offset from head of the oldest entry that may
                           still hold a frame */
} commit_ring;

typedef enum request_kind {
  REQ_NONE = 0,
  REQ_HEARTBEAT,
  REQ_FRAME,
  REQ_COALESCED,
  REQ_BASE
} request_kind;

/* A peer: a standby as this primary sees it (its URL, the request in
 * flight, what it holds; replicate_peer_status is what it shows). */
typedef struct ship_peer {
  struct replicate_shipper *sh;
  char *url;                  /* as configured */
  char *frames_url;
  char *base_url;
  CURL *easy;
  struct curl_slist *headers;
  uint64_t headers_token_gen;
  char errbuf[CURL_ERROR_SIZE];

  /* The request in flight (I2); shipping thread only. */
  bool in_flight;
  request_kind req;
  ship_frame *req_frame;      /* a ring frame being sent, or NULL */
  replicate_buf body_buf;     /* the standby's own body bytes */
  const uint8_t *body;
  size_t body_len;
  uint64_t req_epoch;
  uint64_t req_after_seq;
  uint64_t req_after_checksum;
  uint64_t req_frames;
  uint64_t req_raw_bytes;
  uint64_t req_pages;
  bool holds_snapshot;
  struct curl_slist *base_headers; /* this request's headers when it has
                                      its own: ours plus a base image's
                                      X-Loomship-If-Position, or a frame
                                      tag (copies) */
  replicate_tag_stream *base_tag;  /* a tagged base image's tag so far */
  uint64_t base_image_end;         /* base_total without the tag trailer */
  uint8_t base_trailer[REPLICATE_TAG_SIZE];
  uint8_t base_header[LOOM_STREAM_HEADER];
  uint64_t base_off;
  uint64_t base_total;
  int base_read_error;
  char *answer;               /* SHIP_ANSWER_MAX + 1 bytes */
  size_t answer_len;
  bool answer_overflow;
  int64_t progress_ns;        /* CLOCK_MONOTONIC: launch, or the last time
                                 a byte moved either way */
  curl_off_t seen_up, seen_down; /* bytes moved, as last reported */
  bool stalled;               /* this request was shown as stalled */

  /* Scheduling; shipping thread only. */
  bool known;                 /* received is this connection's truth */
  bool need_base;
  bool says_damaged;          /* its last refusal said its own image is
                                 damaged (REPLICATE_EPAGE_HASH or
                                 REPLICATE_EAFTER_CHECKSUM): a checksum
                                 mismatch it explains itself (rot), which
                                 a base image of our history mends */
  bool mending;               /* the base image in flight is a mend */
  uint64_t mended_seq;        /* the seq of the last base image sent over
                                 a checksum mismatch (a mend), counted once
                                 its body was sent whole, so that an answer
                                 lost allows no second one; 0 none */
  int64_t mended_ns;          /* CLOCK_MONOTONIC, when it was sent */
  bool has_history;           /* its answers carry a history */
  loom_history history;       /* the history it follows, as last heard */
  int diverged;               /* 0, or why it is refused (REPLICATE_E*):
                                 nothing is sent but a periodic heartbeat
                                 to see whether that changed */
  unsigned consecutive_failures;
  unsigned unreachable_run;   /* under mu: failed requests in a row that
                                 left it unreachable (0 after a 200) */
  unsigned consecutive_conflicts;
  int64_t next_attempt_ns;    /* CLOCK_MONOTONIC */
  uint64_t refused_token_gen; /* the token generation a 401 refused */
  unsigned unauthorized_run;  /* 401s in a row (0 after a 200): the wait
                                 before the next ask doubles from
                                 UNAUTHORIZED_FIRST_RETRY_S */
  int64_t last_activity_ns;
  uint64_t coalesce_pages;    /* this standby's piece size (413 halves) */
  bool single_frames;         /* its last answer asked for single commits
                                 (a delayed standby): no merged frames */
  replicate_buf scratch;      /* frames read while coalescing */

  /* Shared (I3): written under mu by the shipping thread. */
  replicate_peer_state state;
  bool has_position;          /* heard from at least once */
  bool on_chain;              /* received is known to be in this primary's
                                 history (it accepted our frames, or the
                                 frame after it follows it) */
  loom_position received;     /* commit_time_ns 0 (not reported) */
  loom_position applied;
  uint64_t sent_seq;
  uint64_t verified_seq;      /* highest seq its computed checksum equalled
                                 ours at */
  bool mismatch;              /* its computed checksum differed from ours:
                                 diverged until one equals ours again */
  loom_position mismatch_at;  /* the standby's computed position then */
  uint64_t mismatch_ours;     /* our checksum at that seq */
  uint64_t checksum_mismatches;
  char last_error[REPLICATE_ERROR_MAX];
  int64_t last_error_ns;
  int64_t last_reply_ns;        /* CLOCK_REALTIME of the last answer */
  uint64_t bytes_raw, bytes_wire, frames_sent, requests, heartbeats_sent,
      coalesced_sent, base_images_sent, failures;
  uint64_t errors[REPLICATE_PEER_ERROR_KINDS]; /* failures by kind */
} ship_peer;

struct replicate_shipper {
  /* Options, with defaults applied (immutable after start). */
  loom_store *store;
  loom_lineage lineage;       /* the store's history and branch points */
  replicate_log *log;
  char *ca_file;
  const replicate_frame_key *frame_key; /* the options' (replicate.h) */
  unsigned sync_count;
  double sync_timeout_s;
  replicate_sync_outcome on_sync_timeout;
  int64_t heartbeat_ns;
  long connect_timeout_ms;
  long request_timeout_ms;
  long base_stall_s;
  int64_t stall_ns;
  double backoff_base_s;
  double backoff_max_s;
  int64_t unauthorized_retry_ns;
  uint64_t coalesce_max_pages;
  uint64_t coalesce_max_bytes;
  uint64_t cache_bytes;
  replicate_ship_log_fn log_fn;
  void *log_ctx;

  ship_peer *peers;
  size_t n;
  size_t cap;                 /* slots in peer and readers (max_peers) */

  /* Peers added or removed at run time (replicate_shipper_add_peer,
   * _remove_peer): queued under mu, applied by the shipping thread at the
   * top of its loop (it alone changes peer and n, under mu). */
  struct peer_op {
    bool add;
    char *url;
  } *peer_ops;
  size_t peer_op_count;

  /* The commit side's own. */
  replicate_encoder *commit_enc;
  replicate_buf commit_buf;
  bool log_failing;     /* the last log append failed */

  /* The shipping thread's own. */
  CURLM *multi;
  replicate_encoder *ship_enc;
  replicate_decoder *dec;
  replicate_coalescer *coal;
  loom_snapshot *snap;
  unsigned snap_refs;
  loom_position snap_pos;
  loom_position committed_floor; /* the newest snapshot position: committed,
                                    though latest may not show it yet */
  uint64_t retained_from;
  replicate_log_reader *readers; /* retention: one per ship_peer */
  uint64_t rng;
  pthread_t thread;
  bool thread_started;
  bool curl_initialised;

  /* Shared, under mu. */
  pthread_mutex_t mu;
  pthread_mutex_t ops_mu;       /* taken before mu: queueing a peer op waits
                                   while the shipping thread applies them, so
                                   a count never misses one half applied */
  pthread_cond_t cond;
  loom_position latest;
  commit_ring ring;
  uint64_t cached_bytes;
  bool fenced;
  bool degraded;              /* sync mode: a save timed out, and fewer
                                 than sync_count standbys hold the latest
                                 frame since */
  int64_t degraded_since_ns;  /* CLOCK_REALTIME, when degraded was set */
  bool stopping;
  char *token;
  char *upstream;             /* X-Loomship-Upstream, or NULL */
  uint64_t token_gen;         /* the token or upstream changed: headers are
                                 built again */
};


/* ship.c: helpers, the commit side */
int64_t ship_mono_ns(void);
int64_t ship_real_ns(void);
int64_t ship_seconds_to_ns(double s);
void ship_free_secret(char *s);
void ship_diag(replicate_shipper *sh, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
double ship_random_unit(replicate_shipper *sh);
void ship_deadline_after(struct timespec *ts, double seconds);

/* ship_ring.c */
void ship_frame_release_locked(replicate_shipper *sh, ship_frame *f);
commit_entry *ship_ring_at(commit_ring *r, size_t i);
commit_entry *ship_ring_find(commit_ring *r, uint64_t seq);
void ship_ring_clear(replicate_shipper *sh);
int ship_ring_push(replicate_shipper *sh, uint64_t seq, int64_t time_ns,
                   uint64_t bytes, ship_frame *frame);
void ship_ring_forget_before(replicate_shipper *sh, uint64_t oldest_seq);
int ship_fetch_frame(replicate_shipper *sh, uint64_t seq, ship_frame **ref,
                     replicate_buf *buf, const uint8_t **data, size_t *len);
void ship_drop_ref(replicate_shipper *sh, ship_frame **ref);
void ship_retain_log(replicate_shipper *sh);

/* ship_request.c */
size_t ship_read_base(char *buf, size_t size, size_t nitems, void *ud);
int ship_prepare_easy(ship_peer *peer, const char *url);
int ship_launch(ship_peer *peer);
int ship_post_body(ship_peer *peer);
CURLcode ship_request_headers(ship_peer *peer, const char *extra1, const char *extra2);
void ship_release_request(ship_peer *peer);
const char *ship_request_name(request_kind k);
void ship_check_stall(ship_peer *peer, int64_t now);

/* ship_standby.c */
void ship_publish_state(ship_peer *peer, replicate_peer_state state);
void ship_set_error(ship_peer *peer, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
unsigned ship_acked_locked(replicate_shipper *sh, uint64_t epoch,
                           uint64_t seq);
void ship_fail(ship_peer *peer, bool unreachable, double retry_after_s,
               const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void ship_schedule(ship_peer *peer, int64_t now);
void ship_after_ack(replicate_shipper *sh);
void ship_finish(ship_peer *peer, CURLcode result);

#endif /* REPLICATE_SHIP_INTERNAL_H */
