/* cli.h: what the subcommands of the loomship command share. */
#ifndef LOOMSHIP_CLI_H
#define LOOMSHIP_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "loom.h"
#include "replicate.h"

/*
 * Options: each subcommand declares a table of its options (name, value,
 * help text, default) and an argument struct; options.c parses argv into
 * that struct with getopt_long, prints --help from the table, and names an
 * unknown or malformed option in one line (exit 2). Options are matched by
 * their whole name (no abbreviations), "--name VALUE" or "--name=VALUE", in
 * any order among the positional argument; "--" ends the options.
 */
typedef enum cli_kind {
  CLI_FLAG,   /* no value: the int at offset becomes 1 */
  CLI_TEXT,   /* the const char * at offset points at the value */
  CLI_NUMBER, /* a whole number in [min, max] into the uint64_t at offset */
  CLI_CALL,   /* set() stores the value; for repeated or checked values */
} cli_kind;

typedef struct cli_option {
  const char *name;   /* without the leading "--"; NULL ends a table */
  const char *arg;    /* the value's name in --help ("DIR"); NULL for a flag */
  cli_kind kind;
  size_t offset;      /* of the destination in the argument struct */
  uint64_t min, max;  /* CLI_NUMBER: the accepted range */
  /* CLI_CALL: store value into args; 0, or an exit code after an error
   * line. */
  int (*set)(const char *cmd, const char *value, void *args);
  /* The default, shown by --help as "[dflt]". For a CLI_NUMBER, a default
   * that is a number is also the value before argv is read (so help and
   * behaviour agree); other text is only shown, the field then stays 0,
   * which the command reads as "not given". NULL: none shown. */
  const char *dflt;
  bool required;      /* CLI_TEXT: the command refuses to run without it */
  const char *help;
} cli_option;

/* Rows of an option table, for a file that defines AT(field) as the
 * offsetof its argument struct. */
#define CLI_NUMBER_ROW(opt, ARG, field, lo, hi, dflt_, help_)                      \
  {.name = opt, .arg = ARG, .kind = CLI_NUMBER, .offset = AT(field), .min = lo,    \
   .max = hi, .dflt = dflt_, .help = help_}
#define CLI_TEXT_ROW(opt, ARG, field, dflt_, help_)                                \
  {.name = opt, .arg = ARG, .kind = CLI_TEXT, .offset = AT(field), .dflt = dflt_,  \
   .help = help_}

/* A subcommand. argv is parsed into a zeroed struct of args_size bytes,
 * which run() receives; run returns the process exit code. */
typedef struct cli_command {
  const char *name;
  const char *summary;
  const cli_option *options;
  const char *positional;     /* its one positional argument ("URL"), or NULL */
  size_t positional_offset;   /* where that goes (a const char *) */
  const char *positional2;    /* a second one, required too ("URL"), or
                                 NULL */
  size_t positional2_offset;
  size_t args_size;
  int (*run)(void *args);
} cli_command;

/* Parse argv (argv[0] is the subcommand's name) into args. Returns true
 * when the command is to run; false with *exit_code 0 after --help or
 * --version (printed on stdout), or 2 after a one-line usage error (or the
 * exit code a set() callback returned). */
bool cli_parse(const cli_command *c, int argc, char **argv, void *args, int *exit_code);
/* A one-line usage error on stderr, "loomship NAME: ...; see 'loomship
 * NAME --help'"; returns 2. */
int cli_usage_error(const cli_command *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* "loomship X.Y.Z (commit abcdef0)" on out: the commit is the build's, from
 * git (meson's vcs_tag), or "unknown" outside a checkout. */
void cli_version(FILE *out);

/* One-line error on stderr ("loomship NAME: ..."), returns 1. */
int cli_fail(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Parse an unsigned integer in [min, max]; 0 on success. */
int cli_parse_u64(const char *cmd, const char *what, const char *text,
                  uint64_t min, uint64_t max, uint64_t *out);
/* The bearer token in the file path (token.c says what is accepted):
 * 0 and *token (malloc'd; give it to cli_token_forget), or an exit code
 * after an error line naming the file (2: an unusable token, 1: the file
 * cannot be read). Warnings (short token, file readable by group or
 * others) go to stderr. */
int cli_token_file_read(const char *cmd, const char *path, char **token);
/* Zero and free a token (NULL allowed). */
void cli_token_forget(char *token);

/* --frame-key-file F, the same row in every command that ships or
 * receives (standby, primary, node, demo): field is a const char *. */
#define CLI_FRAME_KEY_ROW(type, field)                                             \
  {.name = "frame-key-file", .arg = "F", .kind = CLI_TEXT,                         \
   .offset = offsetof(type, field), .dflt = "none",                                \
   .help = "authenticated frames: 64 hex digits (a 32-byte key) on the first "     \
           "line, the previous key optionally on the second (a rotation); every "  \
           "frame, base image and repair answer is tagged with HMAC-SHA256 under " \
           "it, and input without a valid tag is refused (401); must not be "      \
           "readable by group or others"}
/* --commit-log-mb MB, the same row in every command that runs a writable
 * store for long (primary, standby, node): field is a uint64_t, in MiB
 * (for a file that defines AT(field), as CLI_NUMBER_ROW).
 * The ring is the store's commit log (loom_store_open_with; docs/FORMAT.md
 * "The commit log"); 1 MiB at least (CLI_COMMIT_LOG_MIN_MB), at most
 * 16 GiB: the checkpoint's memory grows with it (1/16 at most). */
#define CLI_COMMIT_LOG_MIN_MB 1
#define CLI_COMMIT_LOG_MAX_MB 16384
#define CLI_COMMIT_LOG_ROW(field)                                                  \
  {.name = "commit-log-mb", .arg = "MB", .kind = CLI_NUMBER,                       \
   .offset = AT(field), .min = CLI_COMMIT_LOG_MIN_MB,                  \
   .max = CLI_COMMIT_LOG_MAX_MB, .dflt = "64",                                     \
   .help = "the commit log's size (DIR/log, a ring of saves not yet written "      \
           "into the image): a save waits only when it is full (status "          \
           "commit_log.waits); a directory made with another size takes this "    \
           "one at start; from 1 to 16384"}
struct replicate_frame_key;
/* The key in path (replicate_frame_key_load): 0 and *key (free it with
 * replicate_frame_key_free), or 2 after an error line naming the file.
 * path NULL: 0 and *key NULL. */
int cli_frame_key_read(const char *cmd, const char *path, struct replicate_frame_key **key);
/* Hex of a 64-bit checksum into buf (17 bytes). */
const char *cli_hex64(uint64_t v, char buf[17]);

/* One error line about the image directory dir that could not be opened
 * (rc from loom_store_open, loom_inspect, loom_verify...); a lost meta
 * (LOOM_EMETA) names DIR/meta and what to do, remedy being the command's
 * own way out (or NULL). Returns 1. */
int cli_fail_store(const char *cmd, const char *dir, int rc, const char *remedy);

/* One error line for an HTTP server that did not start (rc from
 * http_server_start), naming what is wrong: the listen address, a TLS file
 * or the directory dir (NULL: none of its own). Returns 1. */
int cli_fail_server(const char *cmd, int rc, const char *host, uint16_t port,
                    const char *dir, const char *cert, const char *key);
/* "HOST:PORT" for --listen; 0 or an exit code (after an error line). */
int cli_parse_listen(const char *cmd, const char *text, char **host, uint16_t *port);
/* A log line on stderr: UTC time, who (ctx, a string), message. */
void cli_log(void *ctx, const char *message);
/* Block SIGTERM, SIGINT and SIGHUP in all threads (sigwait them; see
 * signals.h); ignore SIGPIPE. */
#include <signal.h>
void cli_block_stop_signals(sigset_t *set);

/* systemd (notify.c): a notification (no-op outside systemd); ready also
 * reads the watchdog period the unit asks for. */
void cli_notify(const char *message);
void cli_notify_ready(const char *status);
/* From a main loop, as often as it likes: STATUS=status (at most once a
 * second), with WATCHDOG=1 only when progress is true. */
void cli_notify_progress(bool progress, const char *status);
/* The watchdog period in seconds ($WATCHDOG_USEC), 0 when none. */
double cli_watchdog_seconds(void);
/* Whether the server at host:port accepts a connection and (plain HTTP)
 * answers GET /healthz with 200 within timeout_s. */
bool cli_probe_server(const char *host, uint16_t port, bool tls, double timeout_s);

/* fsync a directory by path: 0 or an errno value. */
int cli_sync_dir(const char *path);

/* Pull GET from/v1/backup into the new directory out (see cmd_remote.c):
 * 0, or an exit code after an error line. */
int cli_backup_pull(const char *from, const char *out, const char *token,
                    const char *ca_file, uint64_t retries, int quiet);
/* The same with a frame key (NULL: as cli_backup_pull): the tagged
 * stream is asked for (REPLICATE_WANT_TAG_HEADER), and refused unless its
 * trailer is its tag under one of key's keys (docs/AUTH.md); a break
 * downloads again from the start. */
int cli_backup_pull_keyed(const char *from, const char *out, const char *token,
                          const char *ca_file, const struct replicate_frame_key *key,
                          uint64_t retries, int quiet);

/* loomship standby --resync-from: replace the image directory dir with a
 * verified backup pulled from from (tagged under key when not NULL),
 * atomically (see resync.c): 0, or an
 * exit code after an error line (dir is then as it was). */
int cli_standby_resync(const char *dir, const char *from, const char *token,
                       const char *ca_file, const struct replicate_frame_key *key);

/* loomship standby's self-repair (repair.c): the server's repair_get hook
 * (http/server.h), ctx a cli_repair_source: url is --repair-from, or NULL
 * to use the upstream the frames advertised. */
typedef struct cli_repair_source {
  const char *url, *token, *ca_file;
  const struct replicate_frame_key *frame_key; /* answers must be tagged
                                                  under it, or NULL */
} cli_repair_source;
int cli_repair_get(void *ctx, const char *upstream, const char *path,
                   replicate_tag_kind kind, uint8_t **body, size_t *len, char *why,
                   size_t why_len);

extern const cli_command cmd_standby, cmd_primary;
extern const cli_command cmd_node, cmd_switchover;
extern const cli_command cmd_cluster;
extern const cli_command cmd_inspect, cmd_verify, cmd_demo, cmd_backup, cmd_status,
    cmd_promote;
extern const cli_command cmd_compare;
extern const cli_command cmd_restore, cmd_archive;

/* The archive's access options (DESIGN section 7), taken alike by every
 * command that reads or writes an archive (cmd_archive.c). */
typedef struct cli_archive_access {
  const char *endpoint, *region, *credentials, *key_file;
} cli_archive_access;

#define CLI_ARCHIVE_OPTIONS(type, member)                                          \
  {.name = "archive-endpoint", .arg = "URL", .kind = CLI_TEXT,                     \
   .offset = offsetof(type, member.endpoint),                                      \
   .help = "s3:// archives: the store's address (http://HOST:PORT)"},             \
  {.name = "archive-region", .arg = "R", .kind = CLI_TEXT,                         \
   .offset = offsetof(type, member.region), .dflt = "us-east-1",                   \
   .help = "s3:// archives: the region requests are signed for"},                 \
  {.name = "archive-credentials", .arg = "FILE", .kind = CLI_TEXT,                 \
   .offset = offsetof(type, member.credentials),                                   \
   .help = "s3:// archives: the access key id and the secret, on two lines"},     \
  {.name = "archive-key-file", .arg = "F", .kind = CLI_TEXT,                       \
   .offset = offsetof(type, member.key_file),                                      \
   .help = "encrypt (and read) objects with AES-256-GCM: one or two lines of 64 "  \
           "hex digits, the current key first"}

struct replicate_archive_options;
/* loomship standby --bootstrap ARCHIVE: seed the empty (or missing)
 * directory dir with the archive's newest position; a directory that
 * holds anything is left as it is. 0, or an exit code after an error
 * line. */
int cli_standby_bootstrap(const char *dir, const char *url,
                          const cli_archive_access *access);
/* The archive options of url with access's settings (strings not copied). */
void cli_archive_options(const cli_archive_access *access, const char *url,
                         struct replicate_archive_options *out);

/* --archive and the writer's options (DESIGN section 7), taken alike by
 * every command that archives: primary, standby, node (archiver.c). */
typedef struct cli_archiver_args {
  const char *url;
  uint64_t interval, base_interval, keep_bases, max_backlog_mb;
  cli_archive_access access;
} cli_archiver_args;

#define CLI_ARCHIVER_OPTIONS(type, member)                                         \
  {.name = "archive", .arg = "URL", .kind = CLI_TEXT,                              \
   .offset = offsetof(type, member.url), .dflt = "none",                           \
   .help = "archive every commit to s3://BUCKET/PREFIX or file:///DIR (restore "   \
           "with loomship restore)"},                                              \
  {.name = "archive-interval", .arg = "SECONDS", .kind = CLI_NUMBER,               \
   .offset = offsetof(type, member.interval), .min = 1, .max = 86400, .dflt = "1", \
   .help = "upload the commits of the last SECONDS as one segment (the longest a " \
           "commit waits to be archived; nothing is sent while idle)"},            \
  {.name = "archive-base-interval", .arg = "SECONDS", .kind = CLI_NUMBER,          \
   .offset = offsetof(type, member.base_interval), .min = 1,                       \
   .max = UINT64_C(1) << 32, .dflt = "86400",                                      \
   .help = "upload a base image this often, if something was committed since "     \
           "the last"},                                                            \
  {.name = "archive-keep-bases", .arg = "N", .kind = CLI_NUMBER,                   \
   .offset = offsetof(type, member.keep_bases), .min = 1, .max = 1000000,          \
   .dflt = "7",                                                                    \
   .help = "keep N base images (and the segments they need); older ones are "      \
           "deleted"},                                                             \
  {.name = "archive-max-backlog-mb", .arg = "MB", .kind = CLI_NUMBER,              \
   .offset = offsetof(type, member.max_backlog_mb), .min = 1, .max = 1048576,      \
   .dflt = "4096",                                                                 \
   .help = "commits not yet archived kept in memory (a primary's also held in "  \
           "its replication log: a restart uploads them); past it a gap is "       \
           "recorded and a base follows (saves never wait for the archive)"},      \
  CLI_ARCHIVE_OPTIONS(type, member.access)

struct replicate_archiver_options;
struct replicate_archive_status;
/* The archiver's options from a (NULL url: none), its writer id (into
 * writer[size]) "ROLE HOST:DIR" with DIR made absolute, the same from any
 * working directory: a node restarted on its directory continues. */
void cli_archiver_configure(const cli_archiver_args *a, const char *role,
                            const char *dir, struct replicate_archiver_options *out,
                            char *writer, size_t size);
/* Opens the archive's access options without a request, to name what is
 * wrong before anything starts (an unusable key file: nothing is ever
 * uploaded without it): 0, or 1 after an error line. */
int cli_archiver_check(const char *who, const struct replicate_archive_options *access);

/* An archiving standby (archiver.c): the server's on_received and archive
 * hooks (received_ctx: the cli_standby_archive). cli_standby_archive_tick
 * (after the server started, then once a second from the serving loop)
 * starts the archiver when there is none, and again after the node
 * follows a new epoch; its objects are keyed by the primary's history and
 * epochs. */
struct http_server;
typedef struct cli_standby_archive cli_standby_archive;
int cli_standby_archive_new(const cli_archiver_args *a, const char *dir,
                            cli_standby_archive **out);
void cli_standby_archive_on_received(void *ctx, const void *frame, size_t len);
void cli_standby_archive_status(void *ctx, struct replicate_archive_status *out);
/* SIGHUP: the running archiver reads --archive-key-file again (cli_reload's
 * reload_archive_key). */
int cli_standby_archive_reload_key(void *ctx, char *why, size_t why_len);
void cli_standby_archive_tick(cli_standby_archive *sa, struct http_server *server);
/* Uploads what was received within timeout_seconds (--drain-timeout),
 * then stops the archiver, cutting a request still in progress (before
 * the server stops: its bases read the receiver's store; the status hook
 * still answers); when not everything was uploaded, a log line names the
 * seqs missing and why. NULL: nothing. 1 when everything was uploaded.
 * free (after the server stopped) closes it if need be. */
int cli_standby_archive_close(cli_standby_archive *sa, double timeout_seconds);
void cli_standby_archive_free(cli_standby_archive *sa);

/* Which pages of the image at url, at position at, do not hash to
 * hashes[0, at->pages) (what a download of it gave): the node's recorded
 * page hashes (GET /v1/tree level 0) are compared with them. 0 with the
 * first min(*n, cap) page numbers in bad and their count in *n (with key,
 * only from answers tagged under it); -1 when the node cannot tell (not at that position any more, unreachable; an
 * error line may have been printed). */
int cli_tree_find_bad_pages(const char *url, const char *token, const char *ca_file,
                            const struct replicate_frame_key *key,
                            const loom_position *at, const uint64_t *hashes,
                            uint64_t *bad, size_t cap, size_t *n);

#endif
