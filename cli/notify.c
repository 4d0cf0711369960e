/* notify.c: the systemd notification protocol (sd_notify(3)) without
 * libsystemd: one datagram per message to $NOTIFY_SOCKET. Quietly does
 * nothing when not started by systemd.
 *
 * The watchdog ($WATCHDOG_USEC) is pinged only from the main loop of a
 * command, and only when that loop saw progress (cli_notify_progress): the
 * loop itself ran, the HTTP server accepted a connection and answered
 * (cli_probe_server), and a standby's applier moved or had nothing to do.
 * A hung save, server or applier therefore stops the pings, and systemd
 * restarts the service (WatchdogSec= in the units). */
#include <netdb.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "clock.h"

void cli_notify(const char *message)
{
  const char *path = getenv("NOTIFY_SOCKET");
  if (!path || !path[0] || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
    return;
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  size_t len = strlen(path);
  memcpy(addr.sun_path, path, len);
  if (addr.sun_path[0] == '@')
    addr.sun_path[0] = '\0'; /* abstract namespace */
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return;
  sendto(fd, message, strlen(message), MSG_NOSIGNAL, (struct sockaddr *)&addr,
         (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len));
  close(fd);
}

/* The watchdog's period in seconds (0: none asked), read at ready. Only
 * the main thread reads and writes these. */
static double watchdog_s;
static double last_sent;

double cli_watchdog_seconds(void) { return watchdog_s; }

void cli_notify_ready(const char *status)
{
  char msg[512];
  snprintf(msg, sizeof msg, "READY=1\nSTATUS=%s", status);
  cli_notify(msg);
  const char *usec = getenv("WATCHDOG_USEC");
  unsigned long long us = usec ? strtoull(usec, NULL, 10) : 0;
  watchdog_s = (double)us / 1e6;
}

void cli_notify_progress(bool progress, const char *status)
{
  double now = loom_mono_s();
  /* At most once a second, or four times per watchdog period if that is
   * shorter (the loops call every third of a period: none is skipped). */
  double every = watchdog_s > 0 && watchdog_s / 4 < 1 ? watchdog_s / 4 : 1;
  if (now - last_sent < every || !getenv("NOTIFY_SOCKET"))
    return;
  last_sent = now;
  char msg[600];
  snprintf(msg, sizeof msg, "%sSTATUS=%s", progress && watchdog_s > 0 ? "WATCHDOG=1\n" : "",
           status);
  cli_notify(msg);
}

/* Read until "HTTP/1.x 200" is in, the peer closes, or the deadline. */
static bool answered_200(int fd, double deadline)
{
  char buf[64];
  size_t have = 0;
  while (have < sizeof buf - 1) {
    int left = (int)((deadline - loom_mono_s()) * 1000);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (left <= 0 || poll(&p, 1, left) <= 0)
      return false;
    ssize_t k = read(fd, buf + have, sizeof buf - 1 - have);
    if (k <= 0)
      break;
    have += (size_t)k;
    buf[have] = '\0';
    if (have >= 12)
      return !strncmp(buf, "HTTP/1.", 7) && !strncmp(buf + 8, " 200", 4);
  }
  return false;
}

bool cli_probe_server(const char *host, uint16_t port, bool tls, double timeout_s)
{
  char service[8];
  snprintf(service, sizeof service, "%u", (unsigned)port);
  /* A wildcard address is reached on loopback. */
  const char *to = !strcmp(host, "0.0.0.0") ? "127.0.0.1" : !strcmp(host, "::") ? "::1" : host;
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
  struct addrinfo *ai;
  if (getaddrinfo(to, service, &hints, &ai) != 0)
    return false;
  double deadline = loom_mono_s() + timeout_s;
  int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  bool ok = false;
  if (fd >= 0) {
    int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int err = 0;
    socklen_t len = sizeof err;
    if ((rc == 0 || poll(&p, 1, (int)(timeout_s * 1000)) == 1) &&
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) {
      /* TLS: the accepted connection is the sign of life (no handshake
       * here); plain HTTP: /healthz answers 200. */
      static const char req[] = "GET /healthz HTTP/1.0\r\n\r\n";
      ok = tls || (write(fd, req, sizeof req - 1) == (ssize_t)(sizeof req - 1) &&
                   answered_200(fd, deadline));
    }
    close(fd);
  }
  freeaddrinfo(ai);
  return ok;
}
