/* primary.h: a primary node (the example application + replication log +
 * shipper + read endpoints), shared by `loomship primary` and `loomship
 * demo`. */
#ifndef LOOMSHIP_PRIMARY_H
#define LOOMSHIP_PRIMARY_H

#include <pthread.h>
#include <stdint.h>

#include "archive.h"
#include "kv.h"
#include "loom.h"
#include "replicate.h"
#include "server.h"


typedef struct primary_config {
  const char *who;              /* log prefix */
  const char *dir;
  uint64_t arena_pages, keys;   /* the table */
  uint64_t pages;               /* values changed per save */
  const char *const *standbys;
  size_t standby_count;
  const char *token;            /* or NULL */
  const char *ca_file;
  unsigned sync_count;
  double sync_timeout_seconds;
  int sync_degrade;             /* on timeout: degrade to async (else fail) */
  int zstd_level;
  uint64_t log_max_bytes;       /* 0: default */
  uint64_t commit_log_bytes;    /* the store's commit log ring (0: the
                                   default, LOOM_LOG_BYTES_DEFAULT) */
  const char *listen_host;      /* NULL: no server */
  uint16_t listen_port;
  const char *tls_cert, *tls_key;
  int quiet;                    /* no log lines */
  size_t max_peers;             /* peers added at run time (a cluster
                                   leader); with it, no --standby needed */
  const void *cluster;          /* a cluster member's http_cluster_source
                                   for the server, or NULL */
  double scrub_interval_seconds;/* the scrubber (needs listen_host): 0 off */
  double scrub_mbps;
  const replicate_archiver_options *archive; /* --archive, or NULL (store
                                   and log are filled in by primary_open) */
  const char *advertise_url;    /* sent to the standbys as where trees and
                                   pages are served [http(s)://HOST:PORT of
                                   listen_host, when it names a host] */
  const struct replicate_frame_key *frame_key; /* tag what is shipped and
                                  served, check what is received, or NULL */
} primary_config;

typedef struct primary_node {
  primary_config cfg;
  kv *table;
  replicate_log *log;
  replicate_shipper *shipper;
  replicate_archiver *archiver; /* --archive, or NULL */
  http_server *server;
  http_primary_source source;
  pthread_mutex_t lock;         /* committed */
  loom_position committed;
  replicate_duration_histogram save_durations; /* under lock: kv_save */
  uint64_t saves, bytes_raw, rng;
} primary_node;

/* 0, or an exit code after an error line (then call primary_close). */
int primary_open(primary_node *n, const primary_config *cfg);
/* Change cfg.pages values and save: 0, a replicate or loom error. */
int primary_step(primary_node *n);
/* Drain up to drain_timeout seconds, stop: 0, 2 (not drained) or 1. */
int primary_close(primary_node *n, double drain_timeout);
/* SIGHUP: the node's archiver (if any) reads --archive-key-file again
 * (ctx: the primary_node; cli_reload's reload_archive_key). */
int primary_reload_archive_key(void *ctx, char *why, size_t why_len);
/* The same, and each standby's state after the drain into line (cap
 * bytes; "" without standbys). */
int primary_close_report(primary_node *n, double drain_timeout, char *line,
                         size_t cap);

/* The example workload's table options, shared by `primary` and `node`
 * (their argument structs name the fields alike; AT as for CLI_*_ROW). */
#define PRIMARY_TABLE_OPTIONS                                                      \
  CLI_NUMBER_ROW("pages", "K", pages, 1, 65536, "16",                              \
                 "values of 64 bytes changed per save"),                           \
  CLI_NUMBER_ROW("keys", "N", keys, 1, 1000000, "4096",                            \
                 "values in the key-value table"),                                 \
  CLI_NUMBER_ROW("arena-pages", "N", arena_pages, 64, 130000, "16384",             \
                 "the arena's size in 16 KiB pages"),                              \
  CLI_NUMBER_ROW("seed", "N", seed, 1, UINT64_MAX, "from the time and pid",        \
                 "the workload's random seed, to repeat a run")

/* HTTPS on --listen, shared by `primary` and `node` (fields tls_cert,
 * tls_key). */
#define PRIMARY_TLS_OPTIONS                                                        \
  CLI_TEXT_ROW("tls-cert", "F", tls_cert, "none",                                  \
               "serve HTTPS with this certificate (with --tls-key)"),              \
  CLI_TEXT_ROW("tls-key", "F", tls_key, "none", "the private key of --tls-cert")

/* The frames, the replication log and the commit log (fields level,
 * log_max_mb, commit_log_mb). */
#define PRIMARY_FRAME_OPTIONS                                                      \
  CLI_NUMBER_ROW("level", "L", level, 1, 19, "1", "the frames' zstd compression level"), \
  CLI_NUMBER_ROW("log-max-mb", "MB", log_max_mb, 1, 1048576,                       \
                 "the replication log's own, 1024", "the replication log's size cap"), \
  CLI_COMMIT_LOG_ROW(commit_log_mb)

/* The scrubber (fields scrub_interval, scrub_mbps); PREFIX and FOUND frame
 * the interval's help with what the command does first and with a find. */
#define PRIMARY_SCRUB_OPTIONS(PREFIX, FOUND)                                       \
  CLI_NUMBER_ROW("scrub-interval", "SECONDS", scrub_interval, 0, UINT64_C(1) << 32, \
                 "86400",                                                          \
                 PREFIX "re-read every image page and check it against its "       \
                 "recorded hash this often (the first pass after one interval "    \
                 "or 10 minutes, whichever is shorter); " FOUND "; 0: never"),     \
  CLI_NUMBER_ROW("scrub-mbps", "M", scrub_mbps, 1, 1 << 20, "64",                  \
                 "the scrubber reads at most this many MiB a second")

/* `loomship primary` exit codes beside 0, 1 and 2 (DESIGN section 5). */
#define PRIMARY_EXIT_FENCED 3      /* fenced: saves stopped */
#define PRIMARY_EXIT_NOT_DRAINED 4 /* stopped with a standby missing commits */
int primary_on_commit(void *ctx, loom *l, const loom_commit *c);
/* One --ack-log line "EPOCH SEQ CHECKSUM" in one write(2) (fd < 0: none). */
void primary_ack_log_write(int fd, const loom_position *p);

#endif
