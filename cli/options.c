/*
 * options.c: a subcommand's options, from its table (cli.h) to its argument
 * struct, with getopt_long; --help and --version; one-line usage errors.
 *
 * Parsing, in order:
 *   1. --help (-h) or --version anywhere before "--": print, exit 0.
 *   2. number defaults from the table into the struct.
 *   3. getopt_long over argv; each option must be spelled whole (getopt
 *      would take an unambiguous prefix: a script relying on one would break
 *      when a new option shares it, so prefixes are refused as unknown).
 *   4. the positional argument, then required options.
 */
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "version.h"

#define HELP_COLUMN 26 /* where help texts start */
#define LINE_WIDTH 79
#define FIRST_VAL 256  /* getopt values of table options: FIRST_VAL + index */

void cli_version(FILE *out)
{
  fprintf(out, "loomship %s (commit %s)\n", LOOMSHIP_VERSION, LOOMSHIP_COMMIT);
}

int cli_usage_error(const cli_command *c, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "loomship %s: ", c->name);
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "; see 'loomship %s --help'\n", c->name);
  va_end(ap);
  return 2;
}

/* "--dir DIR --listen HOST:PORT": the positional and required options. */
static void usage_line(const cli_command *c, FILE *out)
{
  fprintf(out, "usage: loomship %s", c->name);
  if (c->positional)
    fprintf(out, " %s", c->positional);
  if (c->positional2)
    fprintf(out, " %s", c->positional2);
  for (const cli_option *o = c->options; o->name; o++)
    if (o->required)
      fprintf(out, " --%s %s", o->name, o->arg);
  fprintf(out, " [OPTIONS]\n");
}

/* text after a left column of used characters, wrapped at LINE_WIDTH. */
static void wrapped(FILE *out, int used, const char *text)
{
  int col = used;
  if (col > HELP_COLUMN - 2) { /* at least two spaces, or the next line */
    fputc('\n', out);
    col = 0;
  }
  for (const char *w = text; *w;) {
    size_t n = strcspn(w, " ");
    if (col > HELP_COLUMN && col + 1 + (int)n > LINE_WIDTH) {
      fputc('\n', out);
      col = 0;
    }
    if (col < HELP_COLUMN) {
      fprintf(out, "%*s", HELP_COLUMN - col, "");
      col = HELP_COLUMN;
    } else {
      fputc(' ', out);
      col++;
    }
    fwrite(w, 1, n, out);
    col += (int)n;
    w += n;
    while (*w == ' ')
      w++;
  }
  fputc('\n', out);
}

static void option_help(FILE *out, const char *left, const char *help, const char *dflt)
{
  char text[1024];
  snprintf(text, sizeof text, "%s%s%s%s", help, dflt ? " [" : "", dflt ? dflt : "",
           dflt ? "]" : "");
  int used = fprintf(out, "  %s", left);
  wrapped(out, used, text);
}

static void print_help(const cli_command *c)
{
  printf("loomship %s: %s\n", c->name, c->summary);
  usage_line(c, stdout);
  printf("\noptions:\n");
  char left[128];
  for (const cli_option *o = c->options; o->name; o++) {
    snprintf(left, sizeof left, "--%s%s%s", o->name, o->arg ? " " : "", o->arg ? o->arg : "");
    option_help(stdout, left, o->help, o->required ? "required" : o->dflt);
  }
  option_help(stdout, "-h, --help", "print this help and exit", NULL);
  option_help(stdout, "--version", "print loomship's version and commit and exit", NULL);
}

/* Step 1: --help or --version before "--". */
static bool help_or_version(const cli_command *c, int argc, char **argv)
{
  for (int i = 1; i < argc && strcmp(argv[i], "--"); i++) {
    if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      print_help(c);
      return true;
    }
    if (!strcmp(argv[i], "--version")) {
      cli_version(stdout);
      return true;
    }
  }
  return false;
}

/* Step 2: the defaults that are numbers. */
static void apply_defaults(const cli_command *c, void *args)
{
  for (const cli_option *o = c->options; o->name; o++) {
    char *end;
    if (o->kind != CLI_NUMBER || !o->dflt)
      continue;
    unsigned long long v = strtoull(o->dflt, &end, 10);
    if (end != o->dflt && *end == '\0')
      *(uint64_t *)((char *)args + o->offset) = v;
  }
}

/* Store one option's value; 0 or an exit code. */
static int store(const cli_command *c, const cli_option *o, const char *value, void *args)
{
  void *at = (char *)args + o->offset;
  char name[64];
  switch (o->kind) {
  case CLI_FLAG:
    *(int *)at = 1;
    return 0;
  case CLI_TEXT:
    *(const char **)at = value;
    return 0;
  case CLI_NUMBER:
    snprintf(name, sizeof name, "--%s", o->name);
    return cli_parse_u64(c->name, name, value, o->min, o->max, at) ? 2 : 0;
  case CLI_CALL:
    return o->set(c->name, value, args);
  }
  return 2;
}

/* The argv element getopt_long just took an option from: the option's own
 * text, whether its value was "=" joined or the next element. */
static const char *option_text(char **argv, int has_value)
{
  if (has_value && optarg == argv[optind - 1])
    return argv[optind - 2];
  return argv[optind - 1];
}

/* Whether text ("--name" or "--name=...") spells name whole. */
static bool spelled_whole(const char *text, const char *name)
{
  size_t n = strlen(name);
  return !strncmp(text, "--", 2) && !strncmp(text + 2, name, n) &&
         (text[2 + n] == '\0' || text[2 + n] == '=');
}

/* An error line for what getopt_long refused (ch '?' or ':'). */
static int refused(const cli_command *c, char **argv, int ch)
{
  const char *text = argv[optind - 1];
  if (optopt >= FIRST_VAL) {
    const char *name = c->options[optopt - FIRST_VAL].name;
    return cli_usage_error(c, ch == ':' ? "option '--%s' needs a value"
                                        : "option '--%s' takes no value", name);
  }
  if (optopt)
    return cli_usage_error(c, "unknown option '-%c'", optopt);
  return cli_usage_error(c, "unknown option '%.*s'", (int)strcspn(text, "="), text);
}

/* Step 3: getopt_long over the table. */
static int parse_options(const cli_command *c, int argc, char **argv, void *args)
{
  size_t count = 0;
  while (c->options[count].name)
    count++;
  struct option *longs = calloc(count + 1, sizeof *longs);
  if (!longs)
    return cli_fail(c->name, "out of memory");
  for (size_t i = 0; i < count; i++)
    longs[i] = (struct option){c->options[i].name,
                               c->options[i].arg ? required_argument : no_argument,
                               NULL, FIRST_VAL + (int)i};
  int ch, rc = 0;
  opterr = 0;
  optind = 0; /* GNU: start over */
  while (!rc && (ch = getopt_long(argc, argv, ":", longs, NULL)) != -1) {
    if (ch < FIRST_VAL) {
      rc = refused(c, argv, ch);
      continue;
    }
    const cli_option *o = &c->options[ch - FIRST_VAL];
    const char *text = option_text(argv, o->arg != NULL);
    if (!spelled_whole(text, o->name))
      rc = cli_usage_error(c, "unknown option '%.*s'", (int)strcspn(text, "="), text);
    else
      rc = store(c, o, optarg, args);
  }
  free(longs);
  return rc;
}

/* Step 4: the positional argument and the required options. */
static int check_arguments(const cli_command *c, int argc, char **argv, void *args)
{
  int rest = argc - optind;
  /* An option that stores where the second positional goes stands for it
   * (archive's --from ARCHIVE). */
  const char **second = c->positional2
      ? (const char **)((char *)args + c->positional2_offset) : NULL;
  bool second_given = second && *second;
  int wanted = (c->positional ? 1 : 0) + (c->positional2 && !second_given ? 1 : 0);
  if (c->positional && rest == 0)
    return cli_usage_error(c, "%s is missing", c->positional);
  if (c->positional2 && !second_given && rest == 1)
    return cli_usage_error(c, "a second %s is missing", c->positional2);
  if (rest > wanted)
    return cli_usage_error(c, "unexpected argument '%s'", argv[optind + wanted]);
  if (c->positional)
    *(const char **)((char *)args + c->positional_offset) = argv[optind];
  if (c->positional2 && !second_given)
    *second = argv[optind + 1];
  for (const cli_option *o = c->options; o->name; o++)
    if (o->required && !*(const char **)((char *)args + o->offset))
      return cli_usage_error(c, "--%s %s is required", o->name, o->arg);
  return 0;
}

bool cli_parse(const cli_command *c, int argc, char **argv, void *args, int *exit_code)
{
  *exit_code = 0;
  if (help_or_version(c, argc, argv))
    return false;
  apply_defaults(c, args);
  *exit_code = parse_options(c, argc, argv, args);
  if (!*exit_code)
    *exit_code = check_arguments(c, argc, argv, args);
  return *exit_code == 0;
}
