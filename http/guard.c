/*
 * guard.c: the deadlines libmicrohttpd does not keep.
 *
 * libmicrohttpd (0.9.75) closes a connection only once it has been idle for
 * the connection timeout, and any byte restarts that clock. So a client that
 * trickles its request headers (slowloris), or an upload body, one byte
 * every few seconds holds its connection, and an upload slot or the base
 * image, for as long as it likes. The guard keeps one entry per connection
 * (registered by the daemon's connection notifications) and closes
 *
 *   G1  a connection whose request headers are not complete within
 *       header_timeout_seconds of its start, or of the end of its previous
 *       request when it is kept alive;
 *   G2  an upload slower than upload_min_bytes_per_second on average once
 *       it is older than upload_grace_seconds;
 *   G3  an upload older than its own duration cap.
 *
 * The access handler checks G2 and G3 itself whenever body bytes arrive
 * (http_guard_upload_progress) and then answers and closes at once; the
 * guard's thread, every GUARD_TICK_MS, catches the connections that send
 * nothing the handler sees (header bytes, chunk framing, silence).
 *
 * The thread closes a connection with shutdown(2): the connection's own
 * thread then reads the end of the stream, and libmicrohttpd closes the
 * connection as usual (the completion callback gives back its upload slot
 * or aborts its base image). The descriptor cannot have been reused by then:
 * the entry leaves the list under the guard's lock in the CLOSED
 * notification, which libmicrohttpd sends before it closes the socket.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "clock.h"
#include "guard.h"

#define GUARD_TICK_MS 200

/* One connection. All fields: the guard's lock. */
typedef struct guard_entry {
  struct guard_entry *prev, *next;
  int fd;
  int64_t waiting_since_ns;     /* for headers (G1); 0 while in a request */
  int64_t upload_start_ns;      /* 0: no upload */
  uint64_t upload_bytes;
  unsigned upload_max_seconds;
  bool shut;                    /* the guard closed it */
} guard_entry;

struct http_guard {
  http_guard_limits limits;
  http_logger logger;
  pthread_mutex_t mu;
  pthread_cond_t wake;
  bool stop;
  guard_entry *head;
  uint64_t closed[HTTP_GUARD_REASONS];
  pthread_t thread;
};

static int64_t seconds_ns(unsigned s) { return (int64_t)s * 1000000000; }

static http_guard_verdict upload_verdict(const http_guard *g,
                                         const guard_entry *e, int64_t now)
{
  if (!e->upload_start_ns)
    return HTTP_GUARD_OK;
  int64_t age = now - e->upload_start_ns;
  if (e->upload_max_seconds && age > seconds_ns(e->upload_max_seconds))
    return HTTP_GUARD_TOO_LONG;
  if (g->limits.upload_min_bytes_per_second &&
      age > seconds_ns(g->limits.upload_grace_seconds) &&
      (double)e->upload_bytes <
          (double)g->limits.upload_min_bytes_per_second * ((double)age / 1e9))
    return HTTP_GUARD_TOO_SLOW;
  return HTTP_GUARD_OK;
}

static http_guard_verdict entry_verdict(const http_guard *g,
                                        const guard_entry *e, int64_t now)
{
  if (e->waiting_since_ns &&
      now - e->waiting_since_ns > seconds_ns(g->limits.header_timeout_seconds))
    return HTTP_GUARD_HEADERS_LATE;
  return upload_verdict(g, e, now);
}

const char *http_guard_reason_name(http_guard_verdict v)
{
  switch (v) {
  case HTTP_GUARD_OK: return "ok";
  case HTTP_GUARD_HEADERS_LATE: return "headers_late";
  case HTTP_GUARD_TOO_SLOW: return "upload_too_slow";
  case HTTP_GUARD_TOO_LONG: return "upload_too_long";
  case HTTP_GUARD_REASONS: break;
  }
  return "unknown";
}

/* One pass over the connections (G1-G3); the lock is held. */
static void guard_sweep(http_guard *g)
{
  int64_t now = http_monotonic_ns();
  for (guard_entry *e = g->head; e; e = e->next) {
    if (e->shut)
      continue;
    http_guard_verdict v = entry_verdict(g, e, now);
    if (v == HTTP_GUARD_OK)
      continue;
    e->shut = true;
    g->closed[v]++;
    shutdown(e->fd, SHUT_RDWR);
    http_logf(&g->logger, "closed a connection: %s",
              http_guard_reason_name(v));
  }
}

static void *guard_main(void *arg)
{
  http_guard *g = arg;
  pthread_mutex_lock(&g->mu);
  while (!g->stop) {
    struct timespec until =
        loom_deadline(CLOCK_MONOTONIC, GUARD_TICK_MS * INT64_C(1000000));
    pthread_cond_timedwait(&g->wake, &g->mu, &until);
    if (!g->stop)
      guard_sweep(g);
  }
  pthread_mutex_unlock(&g->mu);
  return NULL;
}

int http_guard_start(const http_guard_limits *limits,
                     const http_logger *logger, http_guard **out)
{
  http_guard *g = calloc(1, sizeof *g);
  if (!g)
    return ENOMEM;
  g->limits = *limits;
  g->logger = *logger;
  loom_cond_init_mono(&g->wake);
  pthread_mutex_init(&g->mu, NULL);
  int rc = pthread_create(&g->thread, NULL, guard_main, g);
  if (rc) {
    pthread_cond_destroy(&g->wake);
    pthread_mutex_destroy(&g->mu);
    free(g);
    return rc;
  }
  *out = g;
  return 0;
}

void http_guard_stop(http_guard *g)
{
  if (!g)
    return;
  pthread_mutex_lock(&g->mu);
  g->stop = true;
  pthread_cond_signal(&g->wake);
  pthread_mutex_unlock(&g->mu);
  pthread_join(g->thread, NULL);
  while (g->head) { /* connections the daemon never reported closed */
    guard_entry *e = g->head;
    g->head = e->next;
    free(e);
  }
  pthread_cond_destroy(&g->wake);
  pthread_mutex_destroy(&g->mu);
  free(g);
}

void http_guard_notify(void *cls, struct MHD_Connection *conn,
                       void **socket_context,
                       enum MHD_ConnectionNotificationCode code)
{
  http_guard *g = cls;
  if (code == MHD_CONNECTION_NOTIFY_STARTED) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    guard_entry *e = ci ? calloc(1, sizeof *e) : NULL;
    *socket_context = e;
    if (!e) /* unguarded: the idle timeout still applies */
      return;
    e->fd = ci->connect_fd;
    e->waiting_since_ns = http_monotonic_ns();
    pthread_mutex_lock(&g->mu);
    e->next = g->head;
    if (g->head)
      g->head->prev = e;
    g->head = e;
    pthread_mutex_unlock(&g->mu);
    return;
  }
  guard_entry *e = *socket_context;
  if (!e)
    return;
  pthread_mutex_lock(&g->mu);
  if (e->prev)
    e->prev->next = e->next;
  else
    g->head = e->next;
  if (e->next)
    e->next->prev = e->prev;
  pthread_mutex_unlock(&g->mu);
  free(e);
  *socket_context = NULL;
}

static guard_entry *entry_of(struct MHD_Connection *conn)
{
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  return ci ? ci->socket_context : NULL;
}

void http_guard_request_begin(http_guard *g, struct MHD_Connection *conn)
{
  guard_entry *e = entry_of(conn);
  if (!e)
    return;
  pthread_mutex_lock(&g->mu);
  e->waiting_since_ns = 0;
  pthread_mutex_unlock(&g->mu);
}

void http_guard_request_end(http_guard *g, struct MHD_Connection *conn)
{
  guard_entry *e = conn ? entry_of(conn) : NULL;
  if (!e)
    return;
  pthread_mutex_lock(&g->mu);
  e->waiting_since_ns = http_monotonic_ns();
  e->upload_start_ns = 0;
  e->upload_bytes = 0;
  pthread_mutex_unlock(&g->mu);
}

void http_guard_upload_begin(http_guard *g, struct MHD_Connection *conn,
                             unsigned max_seconds)
{
  guard_entry *e = entry_of(conn);
  if (!e)
    return;
  pthread_mutex_lock(&g->mu);
  e->upload_start_ns = http_monotonic_ns();
  e->upload_bytes = 0;
  e->upload_max_seconds = max_seconds;
  pthread_mutex_unlock(&g->mu);
}

http_guard_verdict http_guard_upload_progress(http_guard *g,
                                              struct MHD_Connection *conn,
                                              size_t bytes)
{
  guard_entry *e = entry_of(conn);
  if (!e)
    return HTTP_GUARD_OK;
  pthread_mutex_lock(&g->mu);
  e->upload_bytes += bytes;
  http_guard_verdict v = upload_verdict(g, e, http_monotonic_ns());
  if (v != HTTP_GUARD_OK && !e->shut) {
    e->shut = true; /* the caller closes it */
    g->closed[v]++;
  }
  pthread_mutex_unlock(&g->mu);
  return v;
}

void http_guard_closed_counts(http_guard *g,
                              uint64_t out[HTTP_GUARD_REASONS])
{
  pthread_mutex_lock(&g->mu);
  memcpy(out, g->closed, sizeof g->closed);
  pthread_mutex_unlock(&g->mu);
}
