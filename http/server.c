/*
 * server.c: the daemon: start (options and their defaults, the token, the
 * TLS files, the listening socket, the guard, the standby, the backups and
 * libmicrohttpd) and stop. Requests are dispatch.c's.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server_internal.h"

/* libmicrohttpd's error logger: fmt is its own format string. */
__attribute__((format(printf, 2, 0)))
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
  http_server *s = cls;
  if (!s->logger.fn)
    return;
  char line[512];
  vsnprintf(line, sizeof line, fmt, ap);
  size_t n = strlen(line);
  while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
    line[--n] = '\0';
  char msg[560];
  snprintf(msg, sizeof msg, "libmicrohttpd: %s", line);
  s->logger.fn(s->logger.ctx, msg);
}

/* ---------------------------------------------------------------------- */
/* Start and stop */

/* Read a whole (small) file into a NUL-terminated buffer. */
int http_read_file(const char *path, char **out)
{
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return errno;
  struct stat st;
  if (fstat(fd, &st) != 0 || st.st_size > (1 << 20)) {
    int rc = errno ? errno : EFBIG;
    close(fd);
    return rc;
  }
  char *buf = malloc((size_t)st.st_size + 1);
  if (!buf) {
    close(fd);
    return ENOMEM;
  }
  size_t done = 0;
  while (done < (size_t)st.st_size) {
    ssize_t n = read(fd, buf + done, (size_t)st.st_size - done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      int rc = n < 0 ? errno : EIO;
      free(buf);
      close(fd);
      return rc;
    }
    done += (size_t)n;
  }
  close(fd);
  buf[done] = '\0';
  *out = buf;
  return 0;
}

static int listen_on(const char *host, uint16_t port, int *fd_out,
                     uint16_t *bound)
{
  struct addrinfo hints = {.ai_family = AF_UNSPEC,
                           .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
  struct addrinfo *res = NULL;
  char service[8];
  snprintf(service, sizeof service, "%u", (unsigned)port);
  if (getaddrinfo(host, service, &hints, &res) != 0 || !res)
    return HTTP_EADDRESS;
  int rc = EADDRNOTAVAIL;
  int fd = -1;
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      rc = errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* A deep backlog: a flood of connects (closed at once past the
     * per-address limit) must not crowd out other clients' SYNs. */
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 1024) == 0)
      break;
    rc = errno;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0)
    return rc == EADDRINUSE ? HTTP_EINUSE : HTTP_ELISTEN;
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) {
    rc = errno;
    close(fd);
    return rc;
  }
  if (ss.ss_family == AF_INET)
    *bound = ntohs(((struct sockaddr_in *)&ss)->sin_port);
  else
    *bound = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  *fd_out = fd;
  return 0;
}

/* Snapshots for backups: the standby's store, or the primary's. */
static int snapshot_open(void *ctx, loom_snapshot **out)
{
  http_server *s = ctx;
  if (s->standby)
    return http_standby_snapshot_open(s->standby, out);
  if (!s->primary.snapshot_open)
    return ENOTSUP;
  return s->primary.snapshot_open(s->primary.ctx, out);
}

static void snapshot_close(void *ctx, loom_snapshot *snap)
{
  http_server *s = ctx;
  if (s->standby)
    http_standby_snapshot_close(s->standby, snap);
  else
    loom_snapshot_close(snap);
}

static int backups_create(http_server *s)
{
  http_backup_source source = {s, snapshot_open, snapshot_close};
  int rc = http_backups_create(&source, &s->backups);
  if (rc == 0)
    rc = http_integrity_create(&source, &s->integrity);
  return rc;
}

static void scrub_log(void *ctx, const char *message)
{
  http_server *s = ctx;
  if (s->logger.fn)
    s->logger.fn(s->logger.ctx, message);
}

/* The repair source's GET: the options' hook, with the upstream the
 * frames advertised. */
static int repair_get(void *ctx, const char *path, replicate_tag_kind kind,
                      uint8_t **body, size_t *len, char *why, size_t why_len)
{
  http_server *s = ctx;
  char upstream[sizeof s->upstream];
  pthread_mutex_lock(&s->stats_mu);
  memcpy(upstream, s->upstream, sizeof upstream);
  pthread_mutex_unlock(&s->stats_mu);
  return s->repair_get(s->repair_ctx, upstream[0] ? upstream : NULL, path, kind, body,
                       len, why, why_len);
}

/* The scrubber's repair hook on a standby: fetch from the upstream at its
 * position, check and write (replicate_receiver_repair_from). */
static int scrub_repair(void *ctx, const uint64_t *pages, uint64_t count,
                        char *why, size_t why_len)
{
  http_server *s = ctx;
  if (!s->standby || http_standby_promoted(s->standby)) {
    snprintf(why, why_len, "not a standby");
    return REPLICATE_EINVAL;
  }
  replicate_repair_source src = {repair_get, s};
  uint64_t moved = 0;
  return replicate_receiver_repair_from(s->standby, &src, pages, count, &moved, why,
                                        why_len);
}

/* Too many bad pages to repair one by one: the standby asks its primary
 * for a base image (its frames are answered 409 until one comes). */
static void scrub_want_base(void *ctx, const char *why)
{
  http_server *s = ctx;
  (void)why; /* the scrubber logs it and shows it in integrity.last_error */
  if (s->standby && !http_standby_promoted(s->standby))
    replicate_receiver_want_base(s->standby);
}

void http_server_base_installed(http_server *s)
{
  /* The base image's own read-back (receiver_base.c) may have found a
   * page that did not land as written: its repair, asked for before the
   * base's end cleared the asked pages, is asked for again. */
  replicate_receiver_status st;
  uint64_t still_bad = UINT64_MAX;
  if (s->standby) {
    replicate_receiver_get_status(s->standby, &st);
    still_bad = st.rot_page;
  }
  replicate_scrubber_base_installed(s->scrubber, &still_bad,
                                    still_bad != UINT64_MAX ? 1 : 0);
}

/* The receiver's bad pages (a frame that no longer applies, a read-back)
 * go to the scrubber's repair. */
static void standby_bad_pages(void *ctx, const uint64_t *pages, uint64_t count)
{
  http_server *s = ctx;
  replicate_scrubber_request_repair(s->scrubber, pages, count);
}

static int scrubber_start(http_server *s, const http_server_options *opt)
{
  bool repair = opt->repair_get && opt->role == HTTP_ROLE_STANDBY;
  if (opt->scrub_interval_seconds <= 0 && !repair)
    return 0;
  replicate_scrub_options so = {.snapshot_open = snapshot_open,
                                .snapshot_close = snapshot_close, .ctx = s,
                                .interval_seconds = opt->scrub_interval_seconds,
                                .mbps = opt->scrub_mbps, .log = scrub_log,
                                .log_ctx = s,
                                .repair_only = opt->scrub_interval_seconds <= 0};
  if (repair) {
    s->repair_get = opt->repair_get;
    s->repair_ctx = opt->repair_ctx;
    so.repair = scrub_repair;
    so.repair_ctx = s;
    so.want_base = scrub_want_base;
  }
  return replicate_scrubber_start(&so, &s->scrubber);
}

replicate_receiver *http_server_receiver(http_server *s)
{
  return s ? s->standby : NULL;
}

void http_server_integrity(http_server *s, replicate_scrub_status *out)
{
  replicate_scrubber_status(s ? s->scrubber : NULL, out);
}

/* The pinned snapshot and the scrubber's go before the store they read. */
static void integrity_stop(http_server *s)
{
  replicate_scrubber_stop(s->scrubber);
  s->scrubber = NULL;
  http_integrity_free(s->integrity);
  s->integrity = NULL;
}

static void server_free(http_server *s)
{
  if (s->token) {
    memset(s->token, 0, s->token_len);
    free(s->token);
  }
  if (s->tls_key) {
    memset(s->tls_key, 0, strlen(s->tls_key));
    free(s->tls_key);
  }
  free(s->tls_cert);
  http_guard_stop(s->guard);
  pthread_mutex_destroy(&s->stats_mu);
  integrity_stop(s);
  pthread_mutex_destroy(&s->token_mu);
  pthread_mutex_destroy(&s->reload_mu);
  http_backups_free(s->backups);
  free(s);
}

/* The options http_server_start refuses: HTTP_EINVAL, HTTP_ETLS, or 0. */
static int options_check(const http_server_options *opt)
{
  if (opt->role == HTTP_ROLE_STANDBY ? !opt->dir
      : opt->role == HTTP_ROLE_PRIMARY ? !opt->primary || !opt->primary->position
                                       : true)
    return HTTP_EINVAL;
  if (opt->token && opt->token_len == 0)
    return HTTP_EINVAL;
  bool tls = opt->tls_cert_file || opt->tls_key_file;
  if (tls && (!opt->tls_cert_file || !opt->tls_key_file ||
              MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES))
    return HTTP_ETLS;
  return 0;
}

/* A server with the options' settings, defaults filled in (server.h);
 * nothing opened yet. NULL when out of memory. */
static http_server *server_new(const http_server_options *opt)
{
  http_server *s = calloc(1, sizeof *s);
  if (!s)
    return NULL;
  pthread_mutex_init(&s->stats_mu, NULL);
  pthread_mutex_init(&s->token_mu, NULL);
  pthread_mutex_init(&s->reload_mu, NULL);
  s->role = opt->role;
  if (opt->primary)
    s->primary = *opt->primary;
  if (opt->cluster)
    s->cluster = *opt->cluster;
  s->archive = opt->role == HTTP_ROLE_STANDBY ? opt->archive : NULL;
  s->archive_ctx = opt->received_ctx;
  s->logger = (http_logger){opt->log, opt->log_ctx};
  s->frame_key = opt->frame_key;
  s->max_frame_bytes = opt->max_frame_bytes ? opt->max_frame_bytes
                                            : (UINT64_C(64) << 20);
  s->max_image_pages = opt->max_image_pages ? opt->max_image_pages
                                            : (UINT64_C(1) << 30);
  s->limits = http_limits_of(opt);
  s->max_uploads = opt->max_uploads ? opt->max_uploads : 4;
  s->connection_timeout =
      opt->connection_timeout_seconds ? opt->connection_timeout_seconds : 30;
  s->upload_stall_seconds = opt->upload_stall_seconds ? opt->upload_stall_seconds : 5;
  if (s->upload_stall_seconds > s->connection_timeout)
    s->upload_stall_seconds = s->connection_timeout;
  s->frame_upload_max_seconds =
      opt->frame_upload_max_seconds ? opt->frame_upload_max_seconds : 60;
  s->base_upload_max_seconds =
      opt->base_upload_max_seconds ? opt->base_upload_max_seconds : 3600;
  s->ready_max_lag_seconds =
      opt->ready_max_lag_seconds > 0 ? opt->ready_max_lag_seconds : 5.0;
  s->started_ns = http_now_ns();
  s->started_mono_ns = http_monotonic_ns();
  return s;
}

/* Copy the token, read the TLS files, start the guard. */
static int server_secrets_and_guard(http_server *s,
                                    const http_server_options *opt)
{
  if (opt->token) {
    s->token = malloc(opt->token_len);
    if (!s->token)
      return ENOMEM;
    memcpy(s->token, opt->token, opt->token_len);
    s->token_len = opt->token_len;
    s->auth = true;
  }
  if (opt->tls_cert_file) {
    s->tls = true;
    int rc = http_read_file(opt->tls_cert_file, &s->tls_cert);
    if (rc == 0)
      rc = http_read_file(opt->tls_key_file, &s->tls_key);
    if (rc)
      return rc == ENOMEM ? rc : HTTP_ETLS_FILE;
  }
  http_guard_limits gl = {
      .header_timeout_seconds =
          opt->header_timeout_seconds ? opt->header_timeout_seconds : 5,
      .upload_grace_seconds =
          opt->upload_grace_seconds ? opt->upload_grace_seconds : 3,
      .upload_min_bytes_per_second = opt->upload_min_bytes_per_second
                                         ? opt->upload_min_bytes_per_second
                                         : 16384,
  };
  return http_guard_start(&gl, &s->logger, &s->guard);
}

/* A libmicrohttpd daemon on the listening socket fd serving cert and key
 * (NULL: plain HTTP), or NULL if it refuses (fd is then still the
 * caller's). A TLS reload (reload.c) starts a second one on the same
 * socket. */
struct MHD_Daemon *http_daemon_new(http_server *s, int fd, const char *cert, const char *key)
{
  bool tls = cert != NULL;
  struct MHD_OptionItem options[16];
  unsigned n = 0;
  options[n++] = (struct MHD_OptionItem){MHD_OPTION_EXTERNAL_LOGGER,
                                         (intptr_t)mhd_log, s};
  options[n++] = (struct MHD_OptionItem){
      MHD_OPTION_URI_LOG_CALLBACK, (intptr_t)http_dispatch_request_line, s};
  options[n++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_CONNECTION,
                                         (intptr_t)http_guard_notify, s->guard};
  options[n++] = (struct MHD_OptionItem){MHD_OPTION_LISTEN_SOCKET, fd, NULL};
  options[n++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_COMPLETED,
                                         (intptr_t)http_dispatch_completed, s};
  options[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_LIMIT,
                                         s->connection_limit, NULL};
  options[n++] = (struct MHD_OptionItem){
      MHD_OPTION_CONNECTION_TIMEOUT,
      s->connection_timeout,
      NULL};
  /* One client address cannot take more than a sixteenth of the
   * connections (a flood or a crowd of slow clients from one place leaves
   * room for the primary, monitoring and backups elsewhere): 8 by default,
   * far above what one primary needs (one connection per kind of upload). */
  options[n++] = (struct MHD_OptionItem){MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                                         s->per_ip_connection_limit, NULL};
  if (tls) {
    options[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0,
                                           (void *)cert};
    options[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0,
                                           (void *)key};
  }
  options[n++] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};

  /* ITC: a TLS reload can quiesce it (MHD_quiesce_daemon). */
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD |
                   MHD_USE_THREAD_PER_CONNECTION | MHD_USE_AUTO |
                   MHD_USE_ERROR_LOG | MHD_USE_ITC;
  if (tls)
    flags |= MHD_USE_TLS;
  return MHD_start_daemon(flags, 0, NULL, NULL, http_dispatch_access, s,
                          MHD_OPTION_ARRAY, options, MHD_OPTION_END);
}

static int daemon_start(http_server *s, const http_server_options *opt, int fd)
{
  s->connection_limit = opt->connection_limit ? opt->connection_limit : 128;
  s->per_ip_connection_limit =
      opt->per_ip_connection_limit ? opt->per_ip_connection_limit : 8;
  s->listen_fd = fd;
  s->daemon = http_daemon_new(s, fd, s->tls_cert, s->tls_key);
  return s->daemon ? 0 : HTTP_EDAEMON;
}

int http_server_start(const http_server_options *opt, http_server **out)
{
  if (!opt || !out)
    return HTTP_EINVAL;
  int rc = options_check(opt);
  if (rc)
    return rc;
  http_server *s = server_new(opt);
  if (!s)
    return ENOMEM;
  int fd = -1;
  rc = server_secrets_and_guard(s, opt);
  if (rc == 0)
    rc = listen_on(opt->listen_host ? opt->listen_host : "127.0.0.1",
                   opt->listen_port, &fd, &s->port);
  if (rc == 0 && opt->role == HTTP_ROLE_STANDBY)
    rc = http_standby_open(opt, &s->logger, standby_bad_pages, s, &s->standby);
  if (rc == 0)
    rc = backups_create(s);
  if (rc == 0)
    rc = scrubber_start(s, opt);
  if (rc == 0)
    rc = daemon_start(s, opt, fd);
  if (rc) {
    if (fd >= 0)
      close(fd);
    integrity_stop(s);
    http_standby_close(s->standby);
    server_free(s);
    return rc;
  }
  *out = s;
  return 0;
}

uint16_t http_server_port(const http_server *s)
{
  return s->port;
}

int http_server_set_token(http_server *s, const uint8_t *token, size_t len)
{
  if (!s || !token || len == 0)
    return HTTP_EINVAL;
  uint8_t *copy = malloc(len);
  if (!copy)
    return ENOMEM;
  memcpy(copy, token, len);
  pthread_mutex_lock(&s->token_mu);
  if (!s->token) {
    pthread_mutex_unlock(&s->token_mu);
    free(copy);
    return HTTP_EINVAL;
  }
  uint8_t *old = s->token;
  size_t old_len = s->token_len;
  s->token = copy;
  s->token_len = len;
  pthread_mutex_unlock(&s->token_mu);
  memset(old, 0, old_len);
  free(old);
  return 0;
}

int http_server_stop(http_server *s)
{
  if (!s)
    return 0;
  pthread_mutex_lock(&s->stats_mu);
  s->stopping = true;
  pthread_mutex_unlock(&s->stats_mu);
  /* Closes the listen socket and every connection, waits for their
   * threads; each request's completion callback runs (an unfinished base
   * image is aborted, backup responses release the snapshot). */
  MHD_stop_daemon(s->daemon);
  integrity_stop(s);
  http_retired_stop(s);
  int rc = http_standby_close(s->standby);
  server_free(s);
  return rc;
}
