/* loomship.c: the loomship command; one subcommand per DESIGN.md section 5. */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const cli_command *const commands[] = {
    &cmd_demo, &cmd_standby, &cmd_primary, &cmd_backup, &cmd_status, &cmd_inspect, &cmd_verify, &cmd_promote,
    &cmd_node, &cmd_switchover,
    &cmd_cluster,
    &cmd_compare,
    &cmd_restore, &cmd_archive,
};
#define NCOMMANDS (sizeof commands / sizeof *commands)

int cli_fail(const char *cmd, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "loomship %s: ", cmd);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return 1;
}

int cli_parse_u64(const char *cmd, const char *what, const char *text,
                  uint64_t min, uint64_t max, uint64_t *out)
{
  char *end;
  errno = 0;
  unsigned long long v = strtoull(text, &end, 10);
  if (errno || end == text || *end || text[0] == '-' || v < min || v > max) {
    cli_fail(cmd, "%s must be a whole number from %llu to %llu, not '%s'", what,
             (unsigned long long)min, (unsigned long long)max, text);
    return 1;
  }
  *out = v;
  return 0;
}

const char *cli_hex64(uint64_t v, char buf[17])
{
  snprintf(buf, 17, "%016llx", (unsigned long long)v);
  return buf;
}

static void usage_all(FILE *out)
{
  fprintf(out, "usage: loomship COMMAND [OPTIONS]  (loomship COMMAND --help)\n"
               "       loomship --version\n\n");
  for (size_t i = 0; i < NCOMMANDS; i++)
    fprintf(out, "  %-10s %s\n", commands[i]->name, commands[i]->summary);
}

/* The subcommand c on its arguments (argv[0] its name). */
static int run_command(const cli_command *c, int argc, char **argv)
{
  void *args = calloc(1, c->args_size);
  if (!args)
    return cli_fail(c->name, "out of memory");
  int rc;
  if (cli_parse(c, argc, argv, args, &rc))
    rc = c->run(args);
  free(args);
  return rc;
}

int main(int argc, char **argv)
{
  if (argc < 2) {
    usage_all(stderr);
    return 2;
  }
  if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
    usage_all(stdout);
    return 0;
  }
  if (!strcmp(argv[1], "--version")) {
    cli_version(stdout);
    return 0;
  }
  for (size_t i = 0; i < NCOMMANDS; i++)
    if (!strcmp(argv[1], commands[i]->name))
      return run_command(commands[i], argc - 1, argv + 1);
  fprintf(stderr, "loomship: unknown command '%s'\n", argv[1]);
  usage_all(stderr);
  return 2;
}
