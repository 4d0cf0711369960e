/*
 * token.c: the one reader of --token-file, for every command (DESIGN.md
 * section 5). The token is the file's first line with trailing spaces,
 * tabs, CR and LF trimmed. Refused (exit 2, the file named): an empty
 * line, a NUL byte, a character outside RFC 6750's b64token (letters,
 * digits, - . _ ~ + / and trailing =), a line over TOKEN_MAX bytes. Warned
 * about on stderr (the command still runs): under TOKEN_MIN bytes, or a
 * file readable by group or others.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "replicate.h"

#define TOKEN_MAX 4096
#define TOKEN_MIN 16

static int b64token_char(unsigned char c)
{
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
         c == '~' || c == '+' || c == '/';
}

/* Why line[0, len) is not a usable token, or NULL. */
static const char *token_refusal(const char *line, size_t len)
{
  if (len == 0)
    return "its first line is empty (or only blanks)";
  if (memchr(line, '\0', len))
    return "its first line holds a NUL byte";
  size_t i = 0;
  while (i < len && b64token_char((unsigned char)line[i]))
    i++;
  if (i == 0)
    return "the token must start with a letter, digit, or one of - . _ ~ + /";
  while (i < len && line[i] == '=')
    i++;
  if (i < len)
    return "the token holds a character other than letters, digits, "
           "- . _ ~ + / and trailing = (RFC 6750)";
  return NULL;
}

/* Read up to cap bytes of fd; the count, or -1 (errno). */
static ssize_t read_some(int fd, char *buf, size_t cap)
{
  size_t got = 0;
  while (got < cap) {
    ssize_t n = read(fd, buf + got, cap - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return -1;
    if (n == 0)
      break;
    got += (size_t)n;
  }
  return (ssize_t)got;
}

static void token_warnings(const char *cmd, const char *path, size_t len,
                           mode_t mode)
{
  if (len < TOKEN_MIN)
    fprintf(stderr, "loomship %s: warning: the token in %s is only %zu bytes; "
            "use at least %d (for example: head -c 32 /dev/urandom | base64 | "
            "tr -d '=+/')\n", cmd, path, len, TOKEN_MIN);
  if (mode & (S_IRGRP | S_IROTH))
    fprintf(stderr, "loomship %s: warning: token file %s is readable by group "
            "or others (mode %04o): chmod 600 %s\n", cmd, path,
            (unsigned)(mode & 07777), path);
}

int cli_token_file_read(const char *cmd, const char *path, char **out)
{
  *out = NULL;
  char buf[TOKEN_MAX + 2];
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    int e = errno;
    if (fd >= 0)
      close(fd);
    cli_fail(cmd, "cannot read token file %s: %s", path, strerror(e));
    return 1;
  }
  ssize_t n = read_some(fd, buf, sizeof buf - 1);
  int e = errno;
  close(fd);
  if (n < 0) {
    cli_fail(cmd, "cannot read token file %s: %s", path, strerror(e));
    return 1;
  }
  const char *nl = memchr(buf, '\n', (size_t)n);
  size_t len = nl ? (size_t)(nl - buf) : (size_t)n;
  int too_long = len > TOKEN_MAX;
  while (len > 0 && (buf[len - 1] == ' ' || buf[len - 1] == '\t' ||
                     buf[len - 1] == '\r'))
    len--;
  const char *why = too_long ? "its first line is longer than 4096 bytes"
                             : token_refusal(buf, len);
  if (why) {
    explicit_bzero(buf, sizeof buf);
    cli_fail(cmd, "token file %s refused: %s", path, why);
    return 2;
  }
  token_warnings(cmd, path, len, st.st_mode);
  *out = strndup(buf, len);
  explicit_bzero(buf, sizeof buf);
  if (!*out) {
    cli_fail(cmd, "token file %s: out of memory", path);
    return 1;
  }
  return 0;
}

void cli_token_forget(char *token)
{
  if (token) {
    explicit_bzero(token, strlen(token));
    free(token);
  }
}

int cli_frame_key_read(const char *cmd, const char *path, replicate_frame_key **key)
{
  *key = NULL;
  if (!path)
    return 0;
  char why[512];
  int rc = replicate_frame_key_load(path, key, why, sizeof why);
  if (rc == 0)
    return 0;
  cli_fail(cmd, "--frame-key-file %s", why[0] ? why : replicate_strerror(rc));
  return 2;
}
