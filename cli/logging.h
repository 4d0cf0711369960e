/* logging.h: the log lines of the long-running commands (standby, primary,
 * demo, and any later one: add CLI_LOG_OPTIONS to its option table and
 * call cli_logging_setup before it starts threads).
 *
 * A line has a time, a level, who (the command) and a message, then
 * key=value fields. --log-format text (default):
 *     2026-12-06T17:00:00.123Z info standby: message key=value ...
 * and under systemd's journal (JOURNAL_STREAM names our stderr) the time
 * is left to the journal and the level becomes a priority prefix
 * (sd-daemon(3)): "<6>standby: message key=value".
 * --log-format json: one object a line,
 *     {"time": "...", "level": "info", "who": "standby", "msg": "...", "key": "value"}
 * --log-level debug|info|warning|error leaves out the lines below it.
 * A message that starts with its own "who: " (a library line that names
 * its side) is not prefixed twice. */
#ifndef LOOMSHIP_CLI_LOGGING_H
#define LOOMSHIP_CLI_LOGGING_H

#include <stddef.h>

typedef enum cli_level { CLI_DEBUG = 0, CLI_INFO, CLI_WARNING, CLI_ERROR } cli_level;

/* Where a command keeps the two options' values (embed it in its args). */
typedef struct cli_log_args {
  const char *format; /* "text" or "json"; NULL: text */
  const char *level;  /* NULL: info */
} cli_log_args;

/* The two options, for a command's table: type is its argument struct,
 * member the cli_log_args in it. */
#define CLI_LOG_OPTIONS(type, member)                                              \
  {.name = "log-format", .arg = "text|json", .kind = CLI_TEXT,                     \
   .offset = offsetof(type, member.format), .dflt = "text",                        \
   .help = "log lines as text (a journald priority prefix under systemd) or one "  \
           "JSON object a line"},                                                  \
  {.name = "log-level", .arg = "LEVEL", .kind = CLI_TEXT,                          \
   .offset = offsetof(type, member.level), .dflt = "info",                         \
   .help = "debug, info, warning or error: lines below it are left out"}

struct cli_command;
/* Check and apply the options (once, before threads start): 0, or 2 after
 * a usage error naming the bad value. */
int cli_logging_setup(const struct cli_command *c, const cli_log_args *a);

/* One line at level from who: message, then fields, pairs of key and value
 * ended by NULL (or fields NULL). Thread-safe (one write per line). */
void cli_log_fields(cli_level level, const char *who, const char *message,
                    const char *const *fields);
/* The same with a printf message and no fields. */
void cli_log_at(cli_level level, const char *who, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
