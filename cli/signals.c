/*
 * signals.c: the long-running commands' signals (DESIGN.md section 5).
 * SIGTERM and SIGINT stop (the same graceful way); SIGHUP never stops: it
 * re-reads the token file, the TLS certificate and key and the frame key
 * file, and goes on. All three
 * are blocked in every thread and taken only by the main loop's sigwait,
 * so no handler runs in the middle of anything.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli.h"
#include "logging.h"
#include "signals.h"

void cli_block_stop_signals(sigset_t *set)
{
  sigemptyset(set);
  sigaddset(set, SIGTERM);
  sigaddset(set, SIGINT);
  sigaddset(set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, set, NULL);
  signal(SIGPIPE, SIG_IGN);
}

int cli_wait_stop(const sigset_t *set, double seconds, const cli_reload *reload)
{
  struct timespec ts = {0, 0};
  if (seconds > 0) {
    ts.tv_sec = (time_t)seconds;
    ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
  }
  int sig = sigtimedwait(set, NULL, &ts);
  if (sig == SIGHUP) {
    cli_reload_now(reload);
    return 0;
  }
  return sig > 0 ? sig : 0;
}

/* The TLS certificate and key read again, served to new connections
 * (connections already open finish on the old ones). */
static void reload_tls(const cli_reload *r)
{
  if (!r->tls_cert || (!r->server && !r->reload_tls))
    return;
  int rc = r->server ? http_server_reload_tls(r->server, r->tls_cert, r->tls_key) : 0;
  const char *why = rc ? http_strerror(rc) : r->reload_tls ? r->reload_tls(r->ctx) : NULL;
  if (why)
    cli_log_at(CLI_ERROR, r->who, "SIGHUP: --tls-cert %s / --tls-key %s not used (%s); the "
               "old certificate stays", r->tls_cert, r->tls_key, why);
  else
    cli_log_fields(CLI_INFO, r->who, "SIGHUP: TLS certificate re-read",
                   (const char *const[]){"cert", r->tls_cert, "key", r->tls_key, NULL});
}

/* The frame keys read again (replicate_frame_key_reload): a file that
 * became unreadable or malformed keeps the old keys, never none. */
static void reload_frame_key(const cli_reload *r)
{
  if (!r->frame_key_file || !r->frame_key)
    return;
  char why[512];
  int rc = replicate_frame_key_reload(r->frame_key, r->frame_key_file, why, sizeof why);
  if (rc) {
    cli_log_at(CLI_ERROR, r->who, "SIGHUP: --frame-key-file not used (%s); the old "
               "keys stay (key id %s)", why[0] ? why : replicate_strerror(rc),
               replicate_frame_key_id(r->frame_key, 0));
    return;
  }
  const char *prev = replicate_frame_key_id(r->frame_key, 1);
  cli_log_fields(CLI_INFO, r->who, "SIGHUP: frame keys re-read",
                 (const char *const[]){"file", r->frame_key_file, "key_id",
                                       replicate_frame_key_id(r->frame_key, 0),
                                       "previous_key_id", prev ? prev : "none", NULL});
}

void cli_reload_now(const cli_reload *r)
{
  if (!r) {
    return;
  }
  if (!r->token_file) {
    cli_log_at(CLI_INFO, r->who, "SIGHUP: no --token-file to re-read");
  } else {
    char *token = NULL;
    int rc = cli_token_file_read(r->who, r->token_file, &token);
    if (rc) {
      cli_log_at(CLI_ERROR, r->who, "SIGHUP: token file %s not used; the old token stays",
                 r->token_file);
    } else {
      int src = r->server ? http_server_set_token(r->server, (const uint8_t *)token,
                                                  strlen(token)) : 0;
      int shrc = r->shipper ? replicate_shipper_set_token(r->shipper, token) : 0;
      const char *why = src ? http_strerror(src) : shrc ? replicate_strerror(shrc) : NULL;
      if (!why && r->set_token)
        why = r->set_token(r->ctx, token);
      if (why)
        cli_log_at(CLI_ERROR, r->who, "SIGHUP: the new token from %s was not taken: %s",
                   r->token_file, why);
      else
        cli_log_fields(CLI_INFO, r->who, "SIGHUP: token re-read",
                       (const char *const[]){"file", r->token_file, NULL});
    }
    cli_token_forget(token);
  }
  reload_tls(r);
  reload_frame_key(r);
}
