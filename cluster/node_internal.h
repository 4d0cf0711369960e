/* node_internal.h: the node's state, shared by node.c (start, stop, the
 * lease keeper, the watch, the writer's bracket, status) and node_loop.c
 * (the HA loop: what etcd says, the decision, the role changes). Not
 * installed; the manual is node.h. */
#ifndef LOOMSHIP_CLUSTER_NODE_INTERNAL_H
#define LOOMSHIP_CLUSTER_NODE_INTERNAL_H

#include <pthread.h>

#include "etcd.h"
#include "node.h"
#include "server.h"

#define NODE_MEMBERS_MAX HTTP_CLUSTER_MEMBERS_MAX
#define NODE_KEY_MAX 256

/* What etcd holds, read once per cycle (Patroni: decide from one snapshot). */
typedef struct node_view {
  bool ok;                          /* the read succeeded */
  bool has_leader;
  struct cluster_leader leader;
  int64_t leader_mod_revision;
  int64_t leader_lease;
  int64_t epoch;                    /* the counter; 0 absent */
  int64_t epoch_mod_revision;       /* 0 absent */
  bool has_sync;
  uint64_t sync_epoch;
  size_t sync_count;
  char sync[NODE_MEMBERS_MAX][64];
  bool has_switchover;
  bool switchover_drained;          /* written by the leader after the drain */
  char switchover_from[64], switchover_to[64];
  size_t member_count;
  struct cluster_member members[NODE_MEMBERS_MAX];
} node_view;

struct cluster_node {
  struct cluster_node_options o;    /* strings point into the copies below */
  char *name, *dir, *host, *url, *endpoints, *cluster_name, *token, *ca_file;
  char *tls_cert, *tls_key;
  /* server_mu: the token and the standby server's pointer change under it
   * (the HA loop starts and stops the server; SIGHUP's reload uses it). */
  pthread_mutex_t server_mu;
  char key_member[NODE_KEY_MAX], key_leader[NODE_KEY_MAX],
      key_epoch[NODE_KEY_MAX], key_sync[NODE_KEY_MAX],
      key_switchover[NODE_KEY_MAX], key_prefix[NODE_KEY_MAX],
      key_members[NODE_KEY_MAX];
  double margin_s;                  /* self-fencing margin */

  struct cluster_etcd *etcd;        /* the HA loop's */
  struct cluster_etcd *lease_etcd;  /* the lease keeper's */
  struct cluster_watch *watch;
  pthread_t loop_thread, lease_thread, watch_thread;
  bool loop_started, lease_started, watch_started;

  pthread_mutex_t mu;
  pthread_cond_t cond;              /* wakes the loop, the writer, may_ack */
  /* under mu: */
  bool stopping;                    /* cluster_node_stop was called */
  bool done;                        /* the loop finished its planned stop */
  int stop_result;
  bool wake;                        /* the loop has something to look at */
  int64_t lease_id;                 /* 0: none */
  int64_t lease_ttl;                /* as granted */
  int64_t lease_deadline_ns;        /* CLOCK_MONOTONIC: renewal sent + ttl */
  bool etcd_ok;
  char etcd_error[256];             /* the last failed request, while not ok */
  bool leading;                     /* holds the key, the app has the dir */
  bool writing;                     /* saves wanted */
  bool in_save;                     /* the writer is between begin and end */
  uint64_t epoch;                   /* ours while leading */
  uint64_t epoch_start_seq;
  replicate_shipper *shipper;
  uint64_t last_acked_seq;
  size_t sync_count;                /* the sync set in etcd for our epoch */
  char sync_names[NODE_MEMBERS_MAX][64];
  char sync_urls[NODE_MEMBERS_MAX][REPLICATE_URL_MAX];
  bool sync_wanted;                 /* may_ack waits for a sync set */
  node_view view;                   /* the last snapshot (status) */
  int64_t view_ns;                  /* mono, when it was read */
  uint64_t elections, self_fences, rewinds, leader_saves;
  uint64_t rewound_frames, rewound_from_seq;
  int64_t rewound_at_ns;
  uint64_t rewound_pages, rewound_image_pages; /* written, of the image */

  /* The HA loop's own. */
  http_server *standby;             /* the standby side, or NULL; set and
                                       cleared under server_mu */
  char published[1024];             /* the member record last put */
  int64_t published_lease;
  int64_t published_ns;             /* mono, the last put */
  char sentence[320];               /* the last decision logged */
  bool sync_short_said;             /* "fewer than N hold..." logged */
  int64_t sync_wake_ns;             /* may_ack woke the loop (mono) */
  struct cluster_backoff backoff;

  http_cluster_source source;
};

/* node.c */
void node_logf(cluster_node *n, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
bool node_lease_alive(cluster_node *n, int64_t now_ns);
/* Sleep up to seconds; true when the node is done (stop). */
bool node_sleep(cluster_node *n, double seconds);
int node_standby_start(cluster_node *n);
int node_standby_stop(cluster_node *n);

/* node_loop.c */
void *node_loop_main(void *arg);

/* fetch.c: the leader's tree, pages and lineage over HTTP. */
struct curl_slist;
/* A curl easy handle (a CURL *) for url with the node's token (headers:
 * free with node_curl_close), CA file, a 2 s connect timeout, no
 * signals; NULL when out of memory. */
void *node_curl_open(cluster_node *n, const char *url, struct curl_slist **headers);
void node_curl_close(void *c, struct curl_slist *headers);
typedef struct node_leader_source {
  replicate_repair_source src;      /* get and ctx: this */
  cluster_node *node;
  char url[REPLICATE_URL_MAX];
} node_leader_source;
/* A repair source of the leader at url (copied), for replicate/. */
void node_leader_source_init(node_leader_source *s, cluster_node *n, const char *url);
/* The standby server's repair_get hook (http/server.h), ctx the node:
 * from the upstream the frames advertise, else the leader etcd names. */
int node_repair_get(void *ctx, const char *upstream, const char *path,
                    replicate_tag_kind kind, uint8_t **body, size_t *len, char *why,
                    size_t why_len);
/* The lineage in the header of url's GET /v1/backup (a Range request of
 * its first LOOM_STREAM_HEADER bytes): 0, or an error with why. */
int node_leader_lineage(cluster_node *n, const char *url, loom_lineage *out, char *why,
                        size_t why_len);

#endif
