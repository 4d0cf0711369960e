/* etcd.h: a small etcd v3 client over its JSON gateway, and the
 * cluster's records in etcd (libloomship-cluster).
 *
 * WHAT IT IS
 * etcd decides who leads a loomship cluster (DESIGN section 6; the keys are
 * in docs/CLUSTER.md "Keys in etcd"). This client speaks the v3 JSON
 * gateway (POST /v3/... on every client URL of etcd 3.4) with libcurl and
 * jansson: leases, put, get, range over a prefix, delete, transactions with
 * compares, and a streaming watch. Nothing else: no gRPC, no auth, no TLS
 * client certificates.
 *
 * OBJECTS AND THREADS
 * - struct cluster_etcd: one client, one libcurl easy handle. Use it from
 *   one thread at a time (it is not locked); open one per thread.
 * - struct cluster_watch: one watch stream, its own connection, meant to run
 *   on its own thread (cluster_watch_run blocks). cluster_watch_cancel is
 *   the one call safe from any other thread.
 * - libcurl: call curl_global_init(CURL_GLOBAL_DEFAULT) once before the
 *   first client or watch is opened while other threads run (libcurl would
 *   otherwise do it on first use, and older builds do not do that safely).
 *
 * ENDPOINTS AND FAILOVER
 * A client holds a list of endpoints ("http://127.0.0.1:2379,http://...").
 * A request goes to the current endpoint; on a connection error, a
 * timeout or an HTTP 5xx (a member without quorum says "no leader" or
 * "request timed out") it is sent once to each next endpoint in turn, and
 * the first that answers becomes the current one. A 4xx or a garbage
 * answer is not retried elsewhere: etcd answered, and said no. Each attempt
 * is bounded by timeout_ms, so one call takes at most (endpoints x
 * timeout_ms); the error returned is the last endpoint's.
 *
 * A request that timed out may still have been applied by etcd. Every call
 * here is safe to repeat in the way this project uses it (a put writes the
 * same value; a txn guarded by compares fails its compares the second time;
 * a lease granted twice leaves an orphan that expires by its ttl), but a
 * caller that gets CLUSTER_ETIMEDOUT or CLUSTER_EUNREACHABLE from a txn must
 * re-read the keys to learn what happened.
 *
 * NUMBERS, KEYS, VALUES
 * Lease ids, revisions and versions are int64_t. etcd sends them as JSON
 * strings; they are parsed as integers, never through a double. Keys and
 * values are bytes (base64 on the wire, done here); values need not be
 * NUL-terminated, but every value this client returns is followed by a NUL
 * byte not counted in its length, so text values can be used as strings.
 *
 * ERRORS
 * Every fallible call returns 0 or a negative CLUSTER_E* code below (never
 * aborts or exits). cluster_etcd_error() gives the details of the last
 * failure of a client (the endpoint, libcurl's message, the HTTP status,
 * etcd's own error text). */
#ifndef LOOMSHIP_CLUSTER_ETCD_H
#define LOOMSHIP_CLUSTER_ETCD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------
 * Errors: one list, pinned values (-31300 ...), append only.
 * ------------------------------------------------------------------- */
#define CLUSTER_ERROR_LIST(X)                                                 \
  X(CLUSTER_EUNREACHABLE, -31300,                                             \
    "no etcd endpoint could be reached (connection refused or failed)")     \
  X(CLUSTER_ETIMEDOUT, -31301, "etcd did not answer within the timeout")     \
  X(CLUSTER_EHTTP, -31302, "etcd answered with an HTTP server error (5xx)")  \
  X(CLUSTER_EPROTOCOL, -31303,                                                \
    "etcd's answer is not what the v3 JSON gateway sends (garbage)")         \
  X(CLUSTER_ELEASE_GONE, -31304, "the lease has expired or was revoked")     \
  X(CLUSTER_ECOMPACTED, -31305,                                               \
    "the watch's start revision has been compacted away")                    \
  X(CLUSTER_ENOTFOUND, -31306, "no such key in etcd")                        \
  X(CLUSTER_ENOMEM, -31307, "out of memory")                                 \
  X(CLUSTER_EINVAL, -31308, "invalid argument")                              \
  X(CLUSTER_ECANCELLED, -31309, "the watch was cancelled")                   \
  X(CLUSTER_EREFUSED, -31310,                                                 \
    "etcd refused the request (an HTTP 4xx answer)")

enum cluster_error {
  CLUSTER_OK = 0,
#define CLUSTER_ERROR_ENUM_(name, value, text) name = value,
  CLUSTER_ERROR_LIST(CLUSTER_ERROR_ENUM_)
#undef CLUSTER_ERROR_ENUM_
  CLUSTER_ELAST = -31311 /* sentinel: one past the lowest code */
};

/* A description of rc: 0, a CLUSTER_E* code, or (passed on to
 * replicate_strerror) an errno value, a LOOM_E* or a REPLICATE_E* code.
 * Never NULL. */
const char *cluster_strerror(int rc);

/* The stable name of rc ("CLUSTER_ELEASE_GONE"; replicate_error_name for
 * every value outside the CLUSTER_E* range). Never NULL. */
const char *cluster_error_name(int rc);

/* ---------------------------------------------------------------------
 * The client
 * ------------------------------------------------------------------- */

/* Zero-initialise, then set what you need; [defaults] in brackets. */
struct cluster_etcd_options {
  /* Comma-separated client URLs, "http://127.0.0.1:2379,http://...".
   * Required; at most 16. */
  const char *endpoints;
  /* Bound on one attempt at one endpoint, connect included [2000]. */
  long timeout_ms;
  /* Bound on the connect phase alone [min(timeout_ms, 1000)]. */
  long connect_timeout_ms;
};

struct cluster_etcd;

/* Open a client (no request is sent yet). 0, CLUSTER_EINVAL (no endpoint,
 * an endpoint that is not http(s)://, too many), CLUSTER_ENOMEM. */
int cluster_etcd_open(const struct cluster_etcd_options *options,
                      struct cluster_etcd **out);

/* Close a client (NULL is fine). */
void cluster_etcd_close(struct cluster_etcd *etcd);

/* The revision in the header of the last answer etcd gave this client (the
 * cluster's revision then), 0 before the first. */
int64_t cluster_etcd_revision(const struct cluster_etcd *etcd);

/* The endpoint the next request goes to first (the last that answered). */
const char *cluster_etcd_endpoint(const struct cluster_etcd *etcd);

/* What went wrong in the last failed call, one line ("" after a success);
 * valid until the next call on this client. */
const char *cluster_etcd_error(const struct cluster_etcd *etcd);

/* ---- Leases ---------------------------------------------------------- */

/* Grant a lease of ttl_seconds (>= 1). *id is the lease, *granted_ttl the
 * ttl etcd granted (it may differ; self-fencing must use this one). */
int cluster_etcd_lease_grant(struct cluster_etcd *etcd, int64_t ttl_seconds,
                             int64_t *id, int64_t *granted_ttl);

/* One keep-alive round for lease id: *ttl is the remaining ttl etcd
 * reports. A lease that expired or was revoked (etcd reports ttl 0 or no
 * ttl) is CLUSTER_ELEASE_GONE. */
int cluster_etcd_lease_keepalive(struct cluster_etcd *etcd, int64_t id,
                                 int64_t *ttl);

/* Revoke lease id: every key on it is deleted. A lease already gone is
 * CLUSTER_ELEASE_GONE (the keys are gone too). */
int cluster_etcd_lease_revoke(struct cluster_etcd *etcd, int64_t id);

/* ---- Keys ------------------------------------------------------------ */

/* One key as etcd holds it. key and value are malloc'd and NUL-terminated
 * (the NUL not counted in the lengths). */
struct cluster_kv {
  char *key;
  size_t key_len;
  char *value;
  size_t value_len;
  int64_t create_revision; /* when the key was created (0: absent) */
  int64_t mod_revision;    /* its last change */
  int64_t version;         /* changes since creation */
  int64_t lease;           /* the lease it is on, 0 for none */
};

/* Free what a cluster_kv holds and zero it (NULL is fine). */
void cluster_kv_free(struct cluster_kv *kv);

/* Keys in key order; revision is the answer's header revision. */
struct cluster_kv_list {
  struct cluster_kv *items;
  size_t count;
  int64_t revision;
};

/* Free the list's items and zero it (NULL is fine). */
void cluster_kv_list_free(struct cluster_kv_list *list);

/* Put key = value (value_len bytes), on lease (0: none). A lease that is
 * gone is CLUSTER_ELEASE_GONE. */
int cluster_etcd_put(struct cluster_etcd *etcd, const char *key,
                     const void *value, size_t value_len, int64_t lease);

/* Get one key into *out (free it with cluster_kv_free). An absent key is
 * CLUSTER_ENOTFOUND (and *out is zeroed). */
int cluster_etcd_get(struct cluster_etcd *etcd, const char *key,
                     struct cluster_kv *out);

/* Every key that starts with prefix (a non-empty string), into *out (free
 * it with cluster_kv_list_free); an empty list when there is none. */
int cluster_etcd_range_prefix(struct cluster_etcd *etcd, const char *prefix,
                              struct cluster_kv_list *out);

/* Delete key; *deleted (may be NULL) says how many keys went (0 or 1). */
int cluster_etcd_delete(struct cluster_etcd *etcd, const char *key,
                        int64_t *deleted);

/* ---- Transactions ---------------------------------------------------- */

enum cluster_cmp_target {
  CLUSTER_CMP_CREATE,  /* the key's create_revision (0: absent) vs number */
  CLUSTER_CMP_MOD,     /* its mod_revision vs number */
  CLUSTER_CMP_VERSION, /* its version vs number */
  CLUSTER_CMP_VALUE,   /* its value vs value/value_len */
  CLUSTER_CMP_LEASE    /* the lease it is on vs number */
};

enum cluster_cmp_result {
  CLUSTER_CMP_EQUAL,
  CLUSTER_CMP_NOT_EQUAL,
  CLUSTER_CMP_GREATER,
  CLUSTER_CMP_LESS
};

/* One compare of a txn. "Create if absent": target CREATE, EQUAL, 0.
 * "Unchanged since I read it": target MOD, EQUAL, the mod_revision read. */
struct cluster_compare {
  const char *key;
  enum cluster_cmp_target target;
  enum cluster_cmp_result result;
  int64_t number;    /* CREATE, MOD, VERSION, LEASE */
  const void *value; /* VALUE */
  size_t value_len;
};

enum cluster_op_kind { CLUSTER_OP_PUT, CLUSTER_OP_DELETE, CLUSTER_OP_RANGE };

/* One operation of a txn branch. PUT: key = value on lease (0: none).
 * DELETE: key (or, with prefix, every key under it). RANGE: key (or every
 * key under it); what it reads comes back in the result's range. */
struct cluster_op {
  enum cluster_op_kind kind;
  const char *key;
  const void *value;
  size_t value_len;
  int64_t lease;
  bool prefix;
};

/* What a txn did. succeeded: every compare held and the success branch ran
 * (else the failure branch ran). revision: the answer's header revision
 * (the new revision if the branch wrote). range: the keys every RANGE op of
 * the branch that ran read, op after op, in key order within one op. */
struct cluster_txn_result {
  bool succeeded;
  int64_t revision;
  struct cluster_kv_list range;
};

/* Free the result's range and zero it (NULL is fine). */
void cluster_txn_result_free(struct cluster_txn_result *result);

/* Run one txn: if every compare holds, the success ops, else the failure
 * ops (either list may be empty; at most 64 compares and 64 ops a branch).
 * A failed compare is not an error: 0 with result->succeeded false. A put
 * on a lease that is gone is CLUSTER_ELEASE_GONE (nothing was written). */
int cluster_etcd_txn(struct cluster_etcd *etcd,
                     const struct cluster_compare *compares, size_t ncompares,
                     const struct cluster_op *success, size_t nsuccess,
                     const struct cluster_op *failure, size_t nfailure,
                     struct cluster_txn_result *result);

/* ---------------------------------------------------------------------
 * Watch
 * ------------------------------------------------------------------- */

enum cluster_event_type { CLUSTER_EVENT_PUT, CLUSTER_EVENT_DELETE };

/* One change. kv.mod_revision is the revision of the change (also for a
 * DELETE); a DELETE's value is empty. Valid during the callback only. */
struct cluster_event {
  enum cluster_event_type type;
  struct cluster_kv kv;
};

/* Called on the watching thread for each event, in revision order. Return
 * 0 to go on; any other value stops the watch, and cluster_watch_run
 * returns it. */
typedef int (*cluster_watch_fn)(void *arg, const struct cluster_event *event);

struct cluster_watch;

/* Open a watch object with its own connection (same options as a client;
 * timeout_ms bounds the connect and the wait for the watch to be created,
 * not the stream). 0, CLUSTER_EINVAL, CLUSTER_ENOMEM. */
int cluster_watch_open(const struct cluster_etcd_options *options,
                       struct cluster_watch **out);

/* Watch key (or, with prefix, every key under it) from start_revision (0:
 * from now; else every change at or after it), calling fn for each event.
 * Blocks until:
 *   - fn returns non-zero: that value is returned;
 *   - cluster_watch_cancel: CLUSTER_ECANCELLED (within about 100 ms);
 *   - idle_timeout_ms > 0 passed with no byte from etcd: CLUSTER_ETIMEDOUT
 *     (a stream through a dead path says nothing; etcd 3.4 sends nothing on
 *     an idle watch either, so pick a bound the caller can afford to
 *     re-watch at, or 0 for none);
 *   - the stream ends, breaks, or carries garbage: CLUSTER_EUNREACHABLE /
 *     CLUSTER_ETIMEDOUT (connecting), CLUSTER_EPROTOCOL (garbage or an end
 *     mid-stream), CLUSTER_EHTTP;
 *   - start_revision was compacted: CLUSTER_ECOMPACTED
 *     (cluster_watch_compact_revision says from where etcd still has).
 * After any return, re-watch from cluster_watch_revision(w) + 1 to miss
 * nothing. Connects like a client: the next endpoint on a connection error.
 * A watch object runs one watch at a time. */
int cluster_watch_run(struct cluster_watch *watch, const char *key,
                      bool prefix, int64_t start_revision,
                      long idle_timeout_ms, cluster_watch_fn fn, void *arg);

/* Make a running (or the next) cluster_watch_run return CLUSTER_ECANCELLED
 * promptly. Safe from any thread, and from a signal-free context only.
 * Sticky until cluster_watch_reset. */
void cluster_watch_cancel(struct cluster_watch *watch);

/* Clear a cancel, so the object can watch again. */
void cluster_watch_reset(struct cluster_watch *watch);

/* The highest revision this watch has seen: the mod_revision of the last
 * event delivered, or the header revision when the watch was created
 * (whichever is higher); 0 before anything. */
int64_t cluster_watch_revision(const struct cluster_watch *watch);

/* After CLUSTER_ECOMPACTED: the oldest revision etcd still holds. */
int64_t cluster_watch_compact_revision(const struct cluster_watch *watch);

/* What went wrong in the last failed run, one line. */
const char *cluster_watch_error(const struct cluster_watch *watch);

/* Close a watch (not while it runs: cancel, join the thread, then close;
 * NULL is fine). */
void cluster_watch_close(struct cluster_watch *watch);

/* ---------------------------------------------------------------------
 * Backoff for callers' retries: exponential, capped, with jitter.
 * ------------------------------------------------------------------- */

/* Zero-initialise, then cluster_backoff_init; not locked. */
struct cluster_backoff {
  uint32_t base_ms;
  uint32_t cap_ms;
  uint32_t attempt;
  uint64_t rng;
};

/* base_ms >= 1, cap_ms >= base_ms (else they are raised to fit); seed
 * picks the jitter sequence (0: one from the clock). */
void cluster_backoff_init(struct cluster_backoff *backoff, uint32_t base_ms,
                          uint32_t cap_ms, uint64_t seed);

/* The next delay in ms: d = min(cap, base * 2^attempt), then a random value
 * in [d/2, d]; attempt grows by one. */
uint32_t cluster_backoff_next(struct cluster_backoff *backoff);

/* Start again from base (after a success). */
void cluster_backoff_reset(struct cluster_backoff *backoff);

/* ---------------------------------------------------------------------
 * The cluster's keys (docs/CLUSTER.md "Keys in etcd")
 * ------------------------------------------------------------------- */

#define CLUSTER_DEFAULT_NAME "loomship"

/* Write "/loomship/CLUSTER/" + suffix into buf ("members/" + a name,
 * "leader", "epoch", "sync", "switchover"; suffix may be ""). cluster must be
 * a non-empty name of [A-Za-z0-9._-]. 0, CLUSTER_EINVAL (a bad name, or
 * buf too small). */
int cluster_key(char *buf, size_t size, const char *cluster,
                const char *suffix);

/* Whether name is a valid cluster or member name: 1-63 bytes of
 * [A-Za-z0-9._-]. */
bool cluster_name_valid(const char *name);

/* members/NAME: what each member publishes on its lease. */
struct cluster_member {
  char name[64];
  char url[256];
  char role[16];     /* "leader" | "standby" */
  int64_t epoch;
  char history[33];  /* 32 hex digits, "" when not known */
  int64_t received_seq;
  int64_t applied_seq;
  int64_t primary_seq;
  int64_t lag_frames;
  double lag_seconds;
  char state[32];      /* a node's own word: "streaming", "leading", ... */
  char updated_at[40]; /* RFC 3339, UTC */
};

/* Parse a member record (len bytes of JSON). Missing optional fields are
 * zero/""; a missing name, url or role, a wrong type, or a seq that is not
 * a JSON integer is CLUSTER_EPROTOCOL. */
int cluster_member_parse(const char *json, size_t len,
                         struct cluster_member *out);

/* The record as compact JSON, malloc'd into *json (free() it). */
int cluster_member_format(const struct cluster_member *member, char **json);

/* leader: {"name","url","epoch"}, on the leader's lease. */
struct cluster_leader {
  char name[64];
  char url[256];
  int64_t epoch;
};

int cluster_leader_parse(const char *json, size_t len,
                         struct cluster_leader *out);
int cluster_leader_format(const struct cluster_leader *leader, char **json);

/* epoch: decimal ASCII, no sign, no spaces, fits int64_t.
 * CLUSTER_EPROTOCOL otherwise. */
int cluster_epoch_parse(const char *text, size_t len, int64_t *epoch);

#ifdef __cplusplus
}
#endif
#endif
