/* notify.c: the systemd notification protocol (sd_notify(3)) without
 * libsystemd: one datagram per message to $NOTIFY_SOCKET, and a thread
 * that pings the watchdog at half of $WATCHDOG_USEC. Quietly does nothing
 * when not started by systemd. */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

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

static void *watchdog_main(void *arg)
{
  useconds_t half = (useconds_t)(uintptr_t)arg;
  for (;;) {
    usleep(half);
    cli_notify("WATCHDOG=1");
  }
  return NULL;
}

void cli_notify_ready(const char *status)
{
  char msg[512];
  snprintf(msg, sizeof msg, "READY=1\nSTATUS=%s", status);
  cli_notify(msg);
  const char *usec = getenv("WATCHDOG_USEC");
  unsigned long long us = usec ? strtoull(usec, NULL, 10) : 0;
  if (us >= 2) {
    pthread_t t;
    if (pthread_create(&t, NULL, watchdog_main, (void *)(uintptr_t)(us / 2)) == 0)
      pthread_detach(t);
  }
}
