/* signals.h: the signals of the long-running commands (signals.c). */
#ifndef LOOMSHIP_CLI_SIGNALS_H
#define LOOMSHIP_CLI_SIGNALS_H

#include <signal.h>

#include "replicate.h"
#include "server.h"

/* What SIGHUP re-reads, and into what (any member NULL: none). */
typedef struct cli_reload {
  const char *who;              /* the log's "who" */
  const char *token_file;
  const char *tls_cert, *tls_key;
  http_server *server;          /* takes the new token */
  replicate_shipper *shipper;   /* sends the new token */
  /* Targets that come and go (a cluster member's servers and shipper):
   * given the new token after server and shipper took it, then asked to
   * re-read tls_cert and tls_key; each returns NULL when done, or what
   * went wrong (a static text) [none]. */
  const char *(*set_token)(void *ctx, const char *token);
  /* --frame-key-file: re-read into frame_key, which every holder of the
   * pointer (server, shipper, repair, a cluster member's) uses [none]. */
  const char *frame_key_file;
  replicate_frame_key *frame_key;
  const char *(*reload_tls)(void *ctx);
  void *ctx;
} cli_reload;

/* Wait up to seconds (0: only look) for a signal of set (from
 * cli_block_stop_signals): SIGTERM or SIGINT is returned; SIGHUP is
 * handled (cli_reload_now) and 0 returned, as on a timeout. */
int cli_wait_stop(const sigset_t *set, double seconds, const cli_reload *reload);
/* Re-read the token file into the server and the shipper, the TLS
 * certificate and key into the server, and the frame key file. Logs what
 * it did; a file that cannot be used leaves the old token, certificate or
 * keys in place. */
void cli_reload_now(const cli_reload *reload);

#endif
