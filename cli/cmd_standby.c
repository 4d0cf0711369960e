/* cmd_standby.c: loomship standby, a hot standby serving the HTTP API until
 * SIGTERM, when it applies everything it has received and exits. */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "faultio.h"
#include "replicate.h"
#include "server.h"

/* "HOST:PORT" (IPv6 as "[addr]:port") into host (malloc'd) and port. */
int cli_parse_listen(const char *cmd, const char *text, char **host, uint16_t *port)
{
  const char *colon = strrchr(text, ':');
  if (!colon || colon == text)
    return cli_fail(cmd, "--listen takes HOST:PORT, not '%s'", text);
  uint64_t p;
  if (cli_parse_u64(cmd, "the port", colon + 1, 0, 65535, &p))
    return 1;
  const char *h = text;
  size_t n = (size_t)(colon - text);
  if (h[0] == '[' && n >= 2 && h[n - 1] == ']')
    h++, n -= 2;
  *host = strndup(h, n);
  *port = (uint16_t)p;
  return 0;
}

void cli_log(void *ctx, const char *message)
{
  const char *who = ctx;
  char stamp[32];
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
  fprintf(stderr, "%s.%03ldZ %s: %s\n", stamp, ts.tv_nsec / 1000000, who, message);
}

/* Block the stop signals in every thread, so that only sigwait sees them. */
void cli_block_stop_signals(sigset_t *set)
{
  sigemptyset(set);
  sigaddset(set, SIGTERM);
  sigaddset(set, SIGINT);
  pthread_sigmask(SIG_BLOCK, set, NULL);
  signal(SIGPIPE, SIG_IGN);
}

static int run_standby(int argc, char **argv)
{
  const char *dir = NULL, *listen = NULL, *token_file = NULL, *cert = NULL, *key = NULL;
  uint64_t ready_lag_ms = 5000, promote_max_lag = 100;
  for (int i = 1; i < argc; i++) {
    const char **slot = cli_is_option(argv[i], "--dir")          ? &dir
                        : cli_is_option(argv[i], "--listen")     ? &listen
                        : cli_is_option(argv[i], "--token-file") ? &token_file
                        : cli_is_option(argv[i], "--tls-cert")   ? &cert
                        : cli_is_option(argv[i], "--tls-key")    ? &key
                                                                 : NULL;
    const char *v;
    if (slot) {
      if (!(*slot = cli_option_value("standby", argc, argv, &i, argv[i])))
        return 2;
    } else if (cli_is_option(argv[i], "--promote-max-lag")) {
      if (!(v = cli_option_value("standby", argc, argv, &i, "--promote-max-lag")) ||
          cli_parse_u64("standby", "--promote-max-lag", v, 1, UINT64_MAX,
                        &promote_max_lag))
        return 2;
    } else if (cli_is_option(argv[i], "--ready-lag-ms")) {
      if (!(v = cli_option_value("standby", argc, argv, &i, "--ready-lag-ms")) ||
          cli_parse_u64("standby", "--ready-lag-ms", v, 0, 86400000, &ready_lag_ms))
        return 2;
    } else {
      return cli_usage(&cmd_standby);
    }
  }
  if (!dir || !listen || (!cert != !key))
    return cli_usage(&cmd_standby);
  char *host;
  uint16_t port;
  if (cli_parse_listen("standby", listen, &host, &port))
    return 2;
  char *token = NULL;
  int trc = token_file ? cli_token_file_read("standby", token_file, &token) : 0;
  if (trc) {
    free(host);
    return trc;
  }
  sigset_t stop;
  cli_block_stop_signals(&stop);
  http_server_options o = {
      .role = HTTP_ROLE_STANDBY,
      .dir = dir,
      .io = faultio_from_env(), /* NULL (POSIX) unless a crash test asks */
      .listen_host = host,
      .listen_port = port,
      .token = (const uint8_t *)token,
      .token_len = token ? strlen(token) : 0,
      .tls_cert_file = cert,
      .tls_key_file = key,
      .ready_max_lag_seconds = (double)ready_lag_ms / 1000.0,
      .promote_max_lag = promote_max_lag,
      .log = cli_log,
      .log_ctx = (void *)"standby",
  };
  http_server *server;
  int rc = http_server_start(&o, &server);
  cli_token_forget(token);
  if (rc) {
    free(host);
    return cli_fail("standby", "%s: %s", dir, http_strerror(rc));
  }
  printf("listening on %s://%s:%u\n", cert ? "https" : "http", host,
         (unsigned)http_server_port(server));
  fflush(stdout);
  free(host);
  cli_notify_ready("receiving");
  /* Wait for a stop signal; once a second, see whether storage failed (a
   * failed fsync poisons the store): then the node stops, and its restart
   * recovers from what is durable (PostgreSQL's answer to fsync errors). */
  int sig = 0;
  struct timespec second = {1, 0};
  http_server_status st;
  for (;;) {
    sig = sigtimedwait(&stop, NULL, &second);
    if (sig > 0)
      break;
    http_server_get_status(server, &st);
    if (st.fatal_error)
      break;
  }
  cli_notify("STOPPING=1");
  if (sig <= 0) {
    cli_log("standby", "storage failed: stopping; restart to recover");
    http_server_stop(server);
    return cli_fail("standby", "storage failed: %s", replicate_strerror(st.fatal_error));
  }
  cli_log("standby", sig == SIGTERM ? "SIGTERM: applying what was received, then stopping"
                                    : "SIGINT: applying what was received, then stopping");
  rc = http_server_stop(server);
  if (rc)
    return cli_fail("standby", "stop: %s", http_strerror(rc));
  return 0;
}

const cli_command cmd_standby = {
    "standby", "run a hot standby: receive, apply, serve the HTTP API",
    "standby --dir DIR --listen HOST:PORT [--token-file F] "
    "[--tls-cert F --tls-key F] [--ready-lag-ms MS] [--promote-max-lag FRAMES]",
    run_standby};
