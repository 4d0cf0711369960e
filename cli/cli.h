/* cli.h: what the subcommands of the loomship command share. */
#ifndef LOOMSHIP_CLI_H
#define LOOMSHIP_CLI_H

#include <stdint.h>
#include <stdio.h>

/* A subcommand: run(argc, argv) with argv[0] the subcommand's name;
 * returns the process exit code. */
typedef struct cli_command {
  const char *name;
  const char *summary;
  const char *usage; /* printed by --help, after "usage: loomship " */
  int (*run)(int argc, char **argv);
} cli_command;

/* One-line error on stderr ("loomship NAME: ..."), returns 1. */
int cli_fail(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* 1 if argv holds -h or --help (and the usage was printed). */
int cli_help_requested(const cli_command *c, int argc, char **argv);
/* Print usage to stderr and return 2. */
int cli_usage(const cli_command *c);
/* The argument of an option at argv[*i] ("--x V" or "--x=V"), advancing
 * *i; NULL (after an error line) when missing. */
const char *cli_option_value(const char *cmd, int argc, char **argv, int *i,
                             const char *name);
/* Whether argv[i] is the option name (alone or as "name=..."). */
int cli_is_option(const char *arg, const char *name);
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
/* Hex of a 64-bit checksum into buf (17 bytes). */
const char *cli_hex64(uint64_t v, char buf[17]);

/* "HOST:PORT" for --listen; 0 or an exit code (after an error line). */
int cli_parse_listen(const char *cmd, const char *text, char **host, uint16_t *port);
/* A log line on stderr: UTC time, who (ctx, a string), message. */
void cli_log(void *ctx, const char *message);
/* Block SIGTERM and SIGINT in all threads (sigwait them); ignore SIGPIPE. */
#include <signal.h>
void cli_block_stop_signals(sigset_t *set);

/* systemd: a notification (no-op outside systemd); ready also starts the
 * watchdog pings when the unit asks for them. */
void cli_notify(const char *message);
void cli_notify_ready(const char *status);

/* Pull GET from/v1/backup into the new directory out (see cmd_remote.c):
 * 0, or an exit code after an error line. */
int cli_backup_pull(const char *from, const char *out, const char *token,
                    const char *ca_file, uint64_t retries, int quiet);

extern const cli_command cmd_standby, cmd_primary;
extern const cli_command cmd_inspect, cmd_verify, cmd_demo, cmd_backup, cmd_status,
    cmd_promote;

#endif
