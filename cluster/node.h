/* node.h: a cluster member's life cycle (libloomship-cluster): a standby of
 * the current leader, or the leader, with etcd as the one source of truth
 * about who leads (DESIGN section 6; the keys are docs/CLUSTER.md "Keys in
 * etcd", the life cycle docs/CLUSTER.md "The life cycle").
 *
 * WHAT THE NODE DOES, AND WHAT THE APPLICATION DOES
 * The node owns the directory while it is a standby: it runs the standby's
 * HTTP server (receive, apply, serve status, metrics, backups) on the
 * listen address, holds one etcd lease, publishes its member key, watches
 * the leader key and campaigns when it is gone. When it wins it stops the
 * standby side, makes the new epoch durable in the directory, and calls
 * on_lead: the application then opens its loom on the directory, ships
 * every commit with a replicate_shipper (started with max_peers, no
 * standby URLs: the node adds and removes the members as peers) that it
 * hands over with cluster_node_attach_shipper, and serves what it likes on
 * the listen address. When the node must stop leading (its lease may have
 * expired, another member holds the leader key, a planned stop or
 * switchover) it calls on_stop_writing: the application closes its loom
 * and its server, and the node becomes a standby again, with no restart.
 *
 * THE CALLING SEQUENCE OF AN APPLICATION'S WRITER THREAD
 *
 *     while (running) {
 *       if (!cluster_node_write_begin(node, 0.2))   // not leading: wait
 *         continue;
 *       rc = save(...);                             // loom_save
 *       if (rc == 0 && cluster_node_may_ack(node, &position_saved))
 *         acknowledge(...);                         // e.g. the ack-log line
 *       cluster_node_write_end(node);
 *     }
 *
 * write_begin/write_end bracket one save: the node never calls
 * on_stop_writing while a save is between them, so the loom can be closed
 * safely. cluster_node_may_ack is the self-fencing check (DESIGN section
 * 6): true only while the lease is surely alive, measured on the monotonic
 * clock from the send time of its last successful renewal, minus a margin
 * (ttl/4, at most 1 s), checked right before the acknowledgement, so a
 * process frozen past its ttl acknowledges nothing when it wakes; with
 * --sync N, only once every member of the sync set published in etcd holds
 * the save (waiting up to sync_timeout_seconds; a node never degrades to
 * async).
 *
 * THREADS
 * The node runs three threads of its own: the HA loop (one decision per
 * cycle, logged as one sentence when it changes), the lease keeper (a
 * keep-alive every ttl/3) and the leader-key watch. on_lead and
 * on_stop_writing are called from the HA loop. Every function below may be
 * called from any thread, except cluster_node_stop (once, not from a
 * callback).
 *
 * ERRORS
 * 0 or a negative CLUSTER_E* (etcd.h), LOOM_E*, REPLICATE_E*, HTTP_E* code,
 * or a positive errno value; cluster_strerror() describes them all. Nothing
 * aborts or exits. */
#ifndef LOOMSHIP_CLUSTER_NODE_H
#define LOOMSHIP_CLUSTER_NODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "etcd.h"
#include "loom.h"
#include "replicate.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cluster_node cluster_node;

/* Zero-initialise, then set what you need; [defaults] in brackets. */
struct cluster_node_options {
  const char *name;          /* required: this member, 1-63 bytes of
                                [A-Za-z0-9._-] */
  const char *dir;           /* required: the image directory */
  const char *listen_host;   /* required: the standby server's address */
  uint16_t listen_port;      /* required: a fixed port (it is advertised) */
  const char *url;           /* the advertised URL [http://HOST:PORT] */
  const char *etcd;          /* required: "http://h:p,http://h:p,..." */
  const char *cluster;       /* [CLUSTER_DEFAULT_NAME] */
  unsigned ttl;              /* lease ttl in seconds, >= 2 [5] */
  unsigned sync;             /* members that must hold every acknowledged
                                save (the sync set); 0: asynchronous */
  uint64_t max_lag_on_failover; /* without sync, a member further behind
                                the primary seq it heard never wins
                                [1000] */
  double sync_timeout_seconds;  /* the longest may_ack waits for the sync
                                set [10] */
  double drain_timeout_seconds; /* a planned stop waits this long for the
                                target to hold everything [30] */
  const char *token;         /* bearer token: the standby server's writes,
                                and the rewind's backup pull [none] */
  const char *ca_file;       /* for an https leader URL [the system's] */
  uint64_t promote_max_lag;  /* passed to the standby server [100] */
  uint64_t commit_log_bytes; /* the directory's commit log ring, on both
                                sides (loom_store_open_with)
                                [LOOM_LOG_BYTES_DEFAULT]; on_lead opens
                                the loom with it */
  const struct replicate_frame_key *frame_key; /* the standby server checks
                                frame tags under it (replicate.h; not
                                copied: it must outlive the node) [none] */
  const char *tls_cert;      /* PEM files: the standby server serves HTTPS
                                (both or neither), and the advertised URL
                                defaults to https://HOST:PORT [plain] */
  const char *tls_key;
  double scrub_interval_seconds; /* the standby server's scrubber
                                (replicate.h "The scrubber") [0: none];
                                the bad pages it finds (and those of a
                                frame that no longer applies) are
                                repaired from the leader, with the
                                token, CA file and frame key above */
  double scrub_mbps;         /* its read cap, MiB/s [64] */

  /* You lead at epoch: the directory is durably at that epoch (its standby
   * side closed). Open the loom, start a shipper and call
   * cluster_node_attach_shipper, then return 0; an error gives the leader
   * key back. Saves go between cluster_node_write_begin/_end from then on. */
  int (*on_lead)(void *ctx, cluster_node *node, uint64_t epoch);
  /* Stop writing: close the loom, the shipper and anything serving on the
   * listen address, and return once they are closed. */
  void (*on_stop_writing)(void *ctx, cluster_node *node);
  void *ctx;

  /* Diagnostics and decisions, one line each, no newline [none]. */
  void (*log)(void *ctx, const char *line);
  void *log_ctx;
};

/* Check the options, open the etcd clients, start the standby server and
 * the node's threads. 0 or: CLUSTER_EINVAL (a missing or invalid option),
 * the errors of http_server_start (the directory, the listen address),
 * CLUSTER_ENOMEM, errno values (threads). */
int cluster_node_start(const struct cluster_node_options *options,
                       cluster_node **out);

/* The bound port of the standby server (the options' port). */
uint16_t cluster_node_port(const cluster_node *node);

/* ---- The leader's writer (see THE CALLING SEQUENCE) ----------------- */

/* Wait up to timeout_seconds for this node to lead and want saves: true
 * with the write bracket held (call cluster_node_write_end), false
 * otherwise (not leading, stopping). */
bool cluster_node_write_begin(cluster_node *node, double timeout_seconds);
void cluster_node_write_end(cluster_node *node);

/* Right before acknowledging the save that reached saved: true when it may
 * be acknowledged (see above). Call inside the write bracket. */
bool cluster_node_may_ack(cluster_node *node, const loom_position *saved);

/* From on_lead: the shipper the leader ships with (started with max_peers
 * >= the cluster's size and no standby URL; the node adds every other
 * member as a peer and removes those that leave). NULL detaches (before
 * the shipper stops). */
void cluster_node_attach_shipper(cluster_node *node, replicate_shipper *shipper);

/* ---- Status ---------------------------------------------------------- */

struct cluster_node_state {
  bool leading;               /* holds the leader key and writes */
  uint64_t epoch;             /* the leader's epoch as etcd says; 0 none */
  char leader[64];            /* "" when none */
  bool etcd_ok;
  double lease_remaining_seconds;
  uint64_t elections_total, self_fence_total, rewinds_total;
  uint64_t leader_saves;      /* saves acknowledged while leading */
};
void cluster_node_get_state(cluster_node *node, struct cluster_node_state *out);

/* The http_cluster_source (http/server.h) that shows this node's "cluster"
 * and "rewound" in status and its loomship_cluster_* metrics: pass it to
 * the server the application runs while it leads. Valid while the node
 * is. (A const void * to keep http/ out of this header.) */
const void *cluster_node_http_source(cluster_node *node);

/* ---- Reloading (SIGHUP) --------------------------------------------- */

/* Use token (copied; the node must have been started with one) from now
 * on: the standby server takes it for the requests that arrive next, and
 * the standby servers and rewinds to come use it. The application hands
 * it to its own server and shipper. 0, CLUSTER_EINVAL (started without a
 * token, or token NULL), CLUSTER_ENOMEM, or http_server_set_token's error
 * (the old token then stays). */
int cluster_node_set_token(cluster_node *node, const char *token);

/* Re-read the tls_cert and tls_key files into the standby server, if one
 * is running (connections already open finish on the old ones; the next
 * standby server reads them anyway). 0 (also: no TLS, no standby server
 * now), or http_server_reload_tls's error (the old certificate stays). */
int cluster_node_reload_tls(cluster_node *node);

/* ---- Stopping -------------------------------------------------------- */

/* Stop. A leader makes a planned stop first: it stops writing
 * (on_stop_writing is called only after the target holds everything),
 * waits up to drain_timeout_seconds until the most advanced member (or the
 * one a switchover names) holds everything it committed, and hands the
 * leader key over (with sync, after naming the target and itself the sync
 * set); if the drain cannot finish it keeps the key (and its
 * lease runs out). Then the lease is revoked (the member key goes), the
 * standby side is closed (everything received applied) and the node
 * freed. Returns 0, 1 when a leader could not hand over, or an error of
 * closing. NULL: 0. */
int cluster_node_stop(cluster_node *node);

#ifdef __cplusplus
}
#endif
#endif
