/*
 * reload.c: serving a new TLS certificate and key without a restart
 * (SIGHUP, DESIGN.md section 3), and without cutting a connection.
 *
 *   T1. Read both files; nothing changes if either cannot be read.
 *   T2. Start a second daemon with them on a duplicate of the listening
 *       socket: both accept for a moment; if it refuses (not a PEM
 *       certificate and its key), nothing changes.
 *   T3. Quiesce the old daemon: it accepts nothing more, and finishes the
 *       connections it has (an upload in flight completes). It is kept,
 *       with the socket quiesce returned and the old certificate and key
 *       it may still use, until http_server_stop stops it (libmicrohttpd:
 *       the socket must stay open until then).
 * Requests see no gap: from T2 on the new daemon accepts.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server_internal.h"

struct http_retired {
  struct MHD_Daemon *daemon;
  MHD_socket fd;                /* from MHD_quiesce_daemon */
  char *cert, *key;
  struct http_retired *next;
};

static void secret_free(char *text)
{
  if (text) {
    memset(text, 0, strlen(text));
    free(text);
  }
}

int http_server_reload_tls(http_server *s, const char *cert_file, const char *key_file)
{
  if (!s || !cert_file || !key_file)
    return HTTP_EINVAL;
  pthread_mutex_lock(&s->reload_mu);
  char *cert = NULL, *key = NULL;
  int rc = s->tls_cert ? 0 : HTTP_ETLS; /* plain HTTP stays plain */
  if (!rc && (http_read_file(cert_file, &cert) || http_read_file(key_file, &key))) /* T1 */
    rc = HTTP_ETLS_FILE;
  struct http_retired *old = rc ? NULL : calloc(1, sizeof *old);
  if (!rc && !old)
    rc = ENOMEM;
  int fd = rc ? -1 : dup(s->listen_fd);
  struct MHD_Daemon *next = fd < 0 ? NULL : http_daemon_new(s, fd, cert, key); /* T2 */
  if (!rc && !next) {
    rc = fd < 0 ? HTTP_ELISTEN : HTTP_EDAEMON;
    if (fd >= 0)
      close(fd);
  }
  if (rc) {
    free(old);
    free(cert);
    secret_free(key);
    pthread_mutex_unlock(&s->reload_mu);
    return rc;
  }
  *old = (struct http_retired){.daemon = s->daemon, .cert = s->tls_cert, .key = s->tls_key,
                               .next = s->retired};
  old->fd = MHD_quiesce_daemon(old->daemon); /* T3 */
  s->daemon = next;
  s->listen_fd = fd;
  s->tls_cert = cert;
  s->tls_key = key;
  s->retired = old;
  pthread_mutex_unlock(&s->reload_mu);
  return 0;
}

void http_retired_stop(http_server *s)
{
  while (s->retired) {
    struct http_retired *r = s->retired;
    s->retired = r->next;
    MHD_stop_daemon(r->daemon);
    if (r->fd != MHD_INVALID_SOCKET)
      close(r->fd);
    free(r->cert);
    secret_free(r->key);
    free(r);
  }
}
