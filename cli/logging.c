/*
 * logging.c: log lines in text or JSON, levels, journald priorities
 * (logging.h is the manual). The settings are written once by
 * cli_logging_setup before any thread starts, read-only afterwards.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "logging.h"

static struct {
  bool json;
  bool journal;      /* stderr is the journal's stream: <N> prefixes */
  cli_level min;
} settings = {.min = CLI_INFO};

static const char *const level_names[] = {"debug", "info", "warning", "error"};
static const int journal_priority[] = {7, 6, 4, 3}; /* sd-daemon(3) */

/* Whether JOURNAL_STREAM ("DEV:INODE") names our stderr, as systemd.exec(5)
 * says to check (a child whose stderr was redirected must not prefix). */
static bool stderr_is_journal(void)
{
  const char *v = getenv("JOURNAL_STREAM");
  unsigned long long dev, ino;
  struct stat st;
  if (!v || sscanf(v, "%llu:%llu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st) != 0)
    return false;
  return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

int cli_logging_setup(const cli_command *c, const cli_log_args *a)
{
  if (a->format && strcmp(a->format, "text") && strcmp(a->format, "json"))
    return cli_usage_error(c, "--log-format is text or json, not '%s'", a->format);
  settings.json = a->format && !strcmp(a->format, "json");
  settings.min = CLI_INFO;
  if (a->level) {
    size_t i = 0;
    while (i < 4 && strcmp(a->level, level_names[i]))
      i++;
    if (i == 4)
      return cli_usage_error(c, "--log-level is debug, info, warning or error, not '%s'",
                             a->level);
    settings.min = (cli_level)i;
  }
  settings.journal = stderr_is_journal();
  return 0;
}

/* A growing line: appends are cut at the buffer's end. */
typedef struct line_buf {
  char text[4096];
  size_t len;
} line_buf;

static void put(line_buf *b, const char *s, size_t n)
{
  if (n > sizeof b->text - 2 - b->len)
    n = sizeof b->text - 2 - b->len;
  memcpy(b->text + b->len, s, n);
  b->len += n;
}

static void puts_(line_buf *b, const char *s) { put(b, s, strlen(s)); }

/* s as a JSON string, quotes included. */
static void put_json(line_buf *b, const char *s)
{
  put(b, "\"", 1);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    char esc[8];
    if (ch == '"' || ch == '\\') {
      esc[0] = '\\', esc[1] = (char)ch;
      put(b, esc, 2);
    } else if (ch < 0x20) {
      snprintf(esc, sizeof esc, "\\u%04x", ch);
      put(b, esc, 6);
    } else {
      put(b, s, 1);
    }
  }
  put(b, "\"", 1);
}

/* A text field's value: bare, or quoted when it holds a space or a quote. */
static void put_value(line_buf *b, const char *v)
{
  if (v[0] && !strpbrk(v, " \"=\t"))
    puts_(b, v);
  else
    put_json(b, v);
}

static void timestamp(char out[64])
{
  struct timespec ts;
  struct tm tm;
  char date[32];
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out, 64, "%s.%03dZ", date, (int)(ts.tv_nsec / 1000000));
}

/* The message without a leading "who: " of its own. */
static const char *unprefixed(const char *who, const char *message)
{
  size_t n = strlen(who);
  if (!strncmp(message, who, n) && message[n] == ':' && message[n + 1] == ' ')
    return message + n + 2;
  return message;
}

void cli_log_fields(cli_level level, const char *who, const char *message,
                    const char *const *fields)
{
  if (level < settings.min)
    return;
  line_buf b = {.len = 0};
  char stamp[64], prio[8];
  message = unprefixed(who, message);
  timestamp(stamp);
  if (settings.json) {
    puts_(&b, "{\"time\":\"");
    puts_(&b, stamp);
    puts_(&b, "\",\"level\":\"");
    puts_(&b, level_names[level]);
    puts_(&b, "\",\"who\":");
    put_json(&b, who);
    puts_(&b, ",\"msg\":");
    put_json(&b, message);
    for (size_t i = 0; fields && fields[i] && fields[i + 1]; i += 2) {
      puts_(&b, ",");
      put_json(&b, fields[i]);
      puts_(&b, ":");
      put_json(&b, fields[i + 1]);
    }
    puts_(&b, "}");
  } else {
    if (settings.journal) {
      snprintf(prio, sizeof prio, "<%d>", journal_priority[level]);
      puts_(&b, prio);
    } else {
      puts_(&b, stamp);
      puts_(&b, " ");
      puts_(&b, level_names[level]);
      puts_(&b, " ");
    }
    puts_(&b, who);
    puts_(&b, ": ");
    puts_(&b, message);
    for (size_t i = 0; fields && fields[i] && fields[i + 1]; i += 2) {
      puts_(&b, " ");
      puts_(&b, fields[i]);
      puts_(&b, "=");
      put_value(&b, fields[i + 1]);
    }
  }
  b.text[b.len++] = '\n';
  ssize_t w = write(STDERR_FILENO, b.text, b.len); /* one write: lines never mix */
  (void)w;
}

void cli_log_at(cli_level level, const char *who, const char *fmt, ...)
{
  char message[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  cli_log_fields(level, who, message, NULL);
}

/* The libraries' log callback (ctx: who). Their lines are info, or
 * warning when they say "warning: " first. A shipper line about one
 * standby ("standby URL: what") becomes the message "what" with the field
 * standby=URL. */
void cli_log(void *ctx, const char *message)
{
  const char *who = ctx;
  const char *m = unprefixed(who, message);
  cli_level level = CLI_INFO;
  if (!strncmp(m, "warning: ", 9)) {
    level = CLI_WARNING;
    m += 9;
  }
  const char *colon = !strncmp(m, "standby http", 12) ? strstr(m, ": ") : NULL;
  char url[512];
  if (colon && !memchr(m + 8, ' ', (size_t)(colon - m - 8)) &&
      (size_t)(colon - m - 8) < sizeof url) {
    memcpy(url, m + 8, (size_t)(colon - m - 8));
    url[colon - m - 8] = '\0';
    cli_log_fields(level, who, colon + 2, (const char *const[]){"standby", url, NULL});
    return;
  }
  cli_log_fields(level, who, m, NULL);
}
