/*
 * server_errors.c: one error line for a server that did not start, naming
 * the thing that is wrong and what to do: the listen address (a port in
 * use), a TLS file (missing, unreadable, not a certificate or key), or the
 * image directory. A port in use or a missing certificate is never blamed
 * on the data directory.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "server.h"

/* The TLS file of the two that cannot be opened: 1 after a line naming
 * it, 0 when both open. */
static int tls_file_unreadable(const char *cmd, const char *cert, const char *key)
{
  const char *opt[2] = {"--tls-cert", "--tls-key"}, *file[2] = {cert, key};
  for (int i = 0; i < 2; i++) {
    if (!file[i])
      continue;
    int fd = open(file[i], O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      return cli_fail(cmd, "%s %s: %s", opt[i], file[i], strerror(errno));
    close(fd);
  }
  return 0;
}

int cli_fail_server(const char *cmd, int rc, const char *host, uint16_t port,
                    const char *dir, const char *cert, const char *key)
{
  switch (rc) {
  case HTTP_EINUSE:
    return cli_fail(cmd, "--listen %s:%u: the port is in use by another process; stop it "
                         "or choose another port", host, (unsigned)port);
  case HTTP_ELISTEN:
  case HTTP_EADDRESS:
    return cli_fail(cmd, "--listen %s:%u: %s", host, (unsigned)port, http_strerror(rc));
  case HTTP_ETLS_FILE:
    if (tls_file_unreadable(cmd, cert, key))
      return 1;
    return cli_fail(cmd, "--tls-cert %s / --tls-key %s: %s", cert, key, http_strerror(rc));
  case HTTP_EDAEMON:
    if (cert && tls_file_unreadable(cmd, cert, key))
      return 1;
    if (cert)
      return cli_fail(cmd, "--tls-cert %s / --tls-key %s: not accepted (not a PEM "
                           "certificate and its private key?)", cert, key);
    return cli_fail(cmd, "%s", http_strerror(rc));
  default:
    break;
  }
  if (dir)
    return cli_fail(cmd, "%s: %s", dir, http_strerror(rc));
  return cli_fail(cmd, "%s", http_strerror(rc));
}
