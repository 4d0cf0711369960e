/*
 * server_internal.h: what the files of the server share: the server
 * object, the endpoints, sending and counting replies, the node's figures
 * and the handlers of the read endpoints. Internal.
 *
 *   server.c     the daemon: start, stop, listen, TLS files
 *   dispatch.c   requests: the access handler, connection callbacks,
 *                authentication, load bounds, uploads, one handler per
 *                endpoint, sending and counting replies
 *   status.c     the node's figures; GET /v1/status and /readyz
 *   metrics.c    GET /metrics
 *   json.c       the JSON writer (json.h)
 *   reply.c      replies, shared JSON pieces, error names (reply.h)
 *   util.c       ranges, ETags, tokens, limits, clocks, the log (util.h)
 *   backup.c     GET /v1/backup from a shared snapshot (backup.h)
 *   guard.c      deadlines for headers and uploads (guard.h)
 *   standby.c    the standby: receive log, applier thread, frames, base,
 *                promotion (standby.h)
 */
#ifndef HTTP_SERVER_INTERNAL_H
#define HTTP_SERVER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <pthread.h>
#include <stdint.h>

#include <microhttpd.h>

#include "auth.h"
#include "backup.h"
#include "integrity.h"
#include "guard.h"
#include "json.h"
#include "loom.h"
#include "replicate.h"
#include "reply.h"
#include "server.h"
#include "standby.h"
#include "util.h"

#ifndef LOOMSHIP_VERSION
#define LOOMSHIP_VERSION "unknown"
#endif

/* ---------------------------------------------------------------------- */
/* The server (server.c) */

typedef enum http_endpoint {
  HTTP_EP_FRAMES = 0,
  HTTP_EP_BASE,
  HTTP_EP_PROMOTE,
  HTTP_EP_BACKUP,
  HTTP_EP_STATUS,
  HTTP_EP_METRICS,
  HTTP_EP_HEALTHZ,
  HTTP_EP_READYZ,
  HTTP_EP_TREE,                 /* GET /v1/tree (integrity.c) */
  HTTP_EP_PAGES,                /* GET /v1/pages (integrity.c) */
  HTTP_EP_PAGE,                 /* GET /: the status page (page.c) */
  HTTP_EP_OTHER,
  HTTP_EP_COUNT
} http_endpoint;

/* The status codes counted one by one in /metrics; others go to "other". */
#define HTTP_CODE_SLOTS 15
extern const unsigned http_counted_codes[HTTP_CODE_SLOTS - 1];

const char *http_endpoint_path(http_endpoint ep);

struct http_server {
  http_role role;               /* the configured role */
  http_primary_source primary;  /* primary role */
  http_cluster_source cluster;  /* a cluster member when cluster.get */
  uint8_t *token;               /* NULL: no authentication; under
                                   token_mu once running */
  size_t token_len;
  pthread_mutex_t token_mu;     /* http_server_set_token vs requests */
  bool auth;                    /* a token is required (fixed at start) */
  bool tls;                     /* HTTPS (fixed at start; the certificate
                                   may change, reload.c) */
  int listen_fd;                /* the listening socket daemon accepts on */
  unsigned connection_limit, per_ip_connection_limit;
  pthread_mutex_t reload_mu;    /* TLS reloads, one at a time (reload.c) */
  struct http_retired *retired; /* daemons a TLS reload replaced: they end
                                   their connections, stopped at stop */
  char *tls_cert;               /* PEM contents, or NULL */
  char *tls_key;
  uint64_t max_frame_bytes;
  uint64_t max_image_pages;
  replicate_limits limits;      /* what a frame may declare */
  unsigned max_uploads;
  unsigned upload_stall_seconds;   /* per-connection timeout while uploading */
  unsigned frame_upload_max_seconds; /* duration caps (guard.c, G3) */
  unsigned base_upload_max_seconds;
  http_guard *guard;
  unsigned connection_timeout;     /* the daemon's, restored after an upload */
  double ready_max_lag_seconds;
  http_logger logger;

  http_standby *standby;        /* standby role (also once promoted) */
  void (*archive)(void *ctx, replicate_archive_status *out); /* standby */
  void *archive_ctx;
  struct MHD_Daemon *daemon;
  uint16_t port;
  int64_t started_ns;
  int64_t started_mono_ns;

  pthread_mutex_t stats_mu;     /* the figures below */
  bool stopping;
  unsigned uploads;             /* frame and base uploads in progress */
  uint64_t requests[HTTP_EP_COUNT][HTTP_CODE_SLOTS];
  uint64_t auth_failures;

  http_backups *backups;        /* GET /v1/backup (backup.c) */
  http_integrity *integrity;    /* GET /v1/tree, /v1/pages (integrity.c) */
  replicate_scrubber *scrubber; /* NULL: none */
  int (*repair_get)(void *ctx, const char *upstream, const char *path,
                    replicate_tag_kind kind, uint8_t **body, size_t *len, char *why,
                    size_t why_len);
  void *repair_ctx;             /* the options' (standby self-repair) */
  char upstream[256];           /* under stats_mu: the URL the primary
                                   advertised in its last frames, or "" */
  const replicate_frame_key *frame_key; /* the options' (auth.c); NULL: none */
  uint64_t tag_refusals;        /* under stats_mu: input refused for its tag */
  int last_tag_refusal_code;
  int64_t last_tag_refusal_ns;  /* CLOCK_REALTIME */
  char last_tag_refusal[320];
};

/* ---------------------------------------------------------------------- */
/* Requests (dispatch.c) */

/* libmicrohttpd's callbacks, with the server as closure: the URI log
 * callback (MHD_OPTION_URI_LOG_CALLBACK: allocates the request state),
 * the access handler, and the completion callback
 * (MHD_OPTION_NOTIFY_COMPLETED: frees it). */
void *http_dispatch_request_line(void *cls, const char *uri,
                                 struct MHD_Connection *conn);
enum MHD_Result http_dispatch_access(void *cls, struct MHD_Connection *conn,
                                     const char *url, const char *method,
                                     const char *version,
                                     const char *upload_data,
                                     size_t *upload_data_size, void **req_cls);
void http_dispatch_completed(void *cls, struct MHD_Connection *conn,
                             void **req_cls,
                             enum MHD_RequestTerminationCode toe);

/* Count a reply by endpoint and status (for /metrics). */
void http_server_count(http_server *server, http_endpoint ep, unsigned status);
/* Queue reply (closing its JSON object) and free it. Returns the
 * enum MHD_Result. */
int http_server_send(http_server *server, struct MHD_Connection *conn,
                     http_endpoint ep, http_reply *reply);
/* Queue a 200 with data (malloc'd, len bytes; freed here whatever happens)
 * as its body of content_type, and count it. Returns the enum MHD_Result. */
int http_server_send_body(http_server *server, struct MHD_Connection *conn,
                          http_endpoint ep, char *data, size_t len,
                          const char *content_type);

/* ---------------------------------------------------------------------- */
/* What the node knows (status.c), gathered once per request for status,
 * metrics and /readyz. */

typedef struct http_figures {
  http_standby_view view;       /* on a primary, view.status only */
  bool standby_role;            /* a standby not promoted */
  bool promoted;
  bool fenced;
  bool ready;
  const char *not_ready;        /* why, when not ready */
  replicate_peer_status *peers; /* primary: malloc'd */
  size_t peer_count;
  http_backup_figures backup;
  replicate_scrub_status integrity; /* the scrubber's */
  bool archiving;               /* the primary has an archiver */
  replicate_archive_status archive;
  unsigned uploads;
  uint64_t auth_failures;
  http_tag_figures tags;        /* "frame_auth" (auth.c) */
} http_figures;

/* A daemon on the listening socket fd (server.c); NULL if it refuses. */
struct MHD_Daemon *http_daemon_new(http_server *s, int fd, const char *cert,
                                   const char *key);
/* A file of at most 1 MiB, NUL-terminated, into *out (malloc'd): 0 or an
 * errno value (server.c; the TLS files). */
int http_read_file(const char *path, char **out);
/* Stop and free the daemons TLS reloads replaced (reload.c). */
void http_retired_stop(http_server *s);

/* The figures of the standard process_* metrics (metrics_process.c). */
typedef struct http_process_figures {
  bool cpu_known, memory_known, fds_known;
  double cpu_seconds;           /* user + system */
  uint64_t resident_bytes, virtual_bytes;
  uint64_t open_fds, max_fds;   /* max_fds 0: unlimited */
  int64_t start_time_ns;        /* CLOCK_REALTIME; 0 when unknown */
} http_process_figures;

void http_process_figures_read(http_process_figures *out);

void http_figures_collect(http_server *server, http_figures *out);

/* cluster.c: a member's "cluster" and "rewound" (status); nothing when
 * the server is not a member's. Heap-allocated: NULL when out of memory
 * or not a member (free it). */
http_cluster_status *http_cluster_collect(http_server *s);
void http_cluster_json(const http_cluster_status *c, http_json_writer *w);
void http_figures_free(http_figures *f);

/* The node's epoch: the newer of received and applied. */
uint64_t http_figures_epoch(const http_figures *f);

/* A base image was committed: the scrubber's state is ok again
 * (server.c). */
void http_server_base_installed(http_server *server);

/* The read endpoints (GET or HEAD; each queues its answer and returns the
 * enum MHD_Result). */
int http_answer_status(http_server *server, struct MHD_Connection *conn);
int http_answer_readyz(http_server *server, struct MHD_Connection *conn);
int http_answer_metrics(http_server *server, struct MHD_Connection *conn);
int http_answer_page(http_server *server, struct MHD_Connection *conn);

#endif /* HTTP_SERVER_INTERNAL_H */
