/* cmd_archive.c: the commands that read an archive (DESIGN section 7):
 *
 *   loomship restore --from ARCHIVE --out DIR [--seq N | --time T] [--epoch E]
 *   loomship archive list ARCHIVE
 *   loomship archive verify ARCHIVE
 *
 * and the access options every command that reads or writes an archive
 * takes (CLI_ARCHIVE_OPTIONS, cli_archive_options). The work is
 * replicate/archive.h's. Exit: 0 done, 1 refused or failed (one line naming
 * the object), 2 usage. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "archive.h"
#include "cli.h"
#include "faultio.h"

void cli_archive_options(const cli_archive_access *access, const char *url,
                         replicate_archive_options *out)
{
  memset(out, 0, sizeof *out);
  out->url = url;
  out->store.endpoint = access->endpoint;
  out->store.region = access->region;
  out->store.credentials_file = access->credentials;
  out->key_file = access->key_file;
}

/* "2026-12-06T20:00:00[.123]Z" or Unix seconds ("1765051200.5"): ns. */
static int parse_time(const char *text, int64_t *out)
{
  char *end;
  double secs = strtod(text, &end);
  if (end != text && *end == '\0' && secs >= 0) {
    *out = (int64_t)(secs * 1e9);
    return 0;
  }
  struct tm tm = {0};
  const char *rest = strptime(text, "%Y-%m-%dT%H:%M:%S", &tm);
  if (rest == NULL)
    return -1;
  double frac = 0;
  if (*rest == '.') {
    frac = strtod(rest, &end);
    rest = end;
  }
  if (strcmp(rest, "Z") != 0)
    return -1;
  *out = (int64_t)timegm(&tm) * 1000000000 + (int64_t)(frac * 1e9);
  return 0;
}

static void format_time(int64_t ns, char out[40])
{
  time_t s = (time_t)(ns / 1000000000);
  struct tm tm;
  gmtime_r(&s, &tm);
  size_t n = strftime(out, 40, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out + n, 40 - n, ".%03dZ", (int)(ns % 1000000000 / 1000000));
}

/* ---------------------------------------------------------------------- */
/* standby --bootstrap */

int cli_standby_bootstrap(const char *dir, const char *url,
                          const cli_archive_access *access)
{
  DIR *d = opendir(dir);
  bool empty = true, work = false, meta = false;
  for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
      empty = false;
    work = work || !strcmp(e->d_name, REPLICATE_RESTORE_WORK_DIR);
    meta = meta || !strcmp(e->d_name, "meta");
  }
  if (d)
    closedir(d);
  if (work && !meta)
    empty = true; /* a bootstrap killed midway: the restore starts again */
  char line[1200];
  if (!empty) {
    snprintf(line, sizeof line,
             "--bootstrap: %s holds an image already: streaming "
             "from its position, nothing is read from %s",
             dir, url);
    cli_log("standby", line);
    return 0;
  }
  replicate_archive_options o;
  cli_archive_options(access, url, &o);
  o.io = faultio_from_env(); /* NULL (POSIX) unless a crash test asks */
  replicate_archive *ar = NULL;
  replicate_restore_target t = {.kind = REPLICATE_RESTORE_NEWEST, .epoch = -1};
  loom_position pos;
  int rc = replicate_archive_open(&o, &ar);
  if (rc == 0)
    rc = replicate_archive_restore(ar, &t, dir, &pos);
  if (rc) {
    cli_fail("standby", "--bootstrap %s: %s (%s)", url,
             ar ? replicate_archive_last_error(ar) : "",
             replicate_error_name(rc));
    replicate_archive_close(ar);
    return 1;
  }
  replicate_archive_close(ar);
  char sum[17];
  snprintf(line, sizeof line,
           "--bootstrap: %s seeded from %s at epoch %" PRIu64 " seq %" PRIu64
           " (checksum %s); the primary sends only what follows",
           dir, url, pos.epoch, pos.seq, cli_hex64(pos.checksum, sum));
  cli_log("standby", line);
  return 0;
}

/* ---------------------------------------------------------------------- */
/* restore */

typedef struct restore_args {
  const char *from, *out, *seq, *time;
  uint64_t epoch; /* 0: the newest */
  cli_archive_access access;
} restore_args;

#define AT(f) offsetof(restore_args, f)
static const cli_option restore_options[] = {
    {.name = "from",
     .arg = "ARCHIVE",
     .kind = CLI_TEXT,
     .offset = AT(from),
     .required = true,
     .help = "the archive: s3://BUCKET/PREFIX or file:///DIR"},
    {.name = "out",
     .arg = "DIR",
     .kind = CLI_TEXT,
     .offset = AT(out),
     .required = true,
     .help = "the image directory to write (must not exist, or be empty)"},
    {.name = "seq",
     .arg = "N",
     .kind = CLI_TEXT,
     .offset = AT(seq),
     .help = "restore exactly seq N (default: the newest)"},
    {.name = "time",
     .arg = "T",
     .kind = CLI_TEXT,
     .offset = AT(time),
     .help = "restore the highest seq committed at or before T "
             "(2026-12-06T20:00:00Z, or Unix seconds)"},
    {.name = "epoch",
     .arg = "E",
     .kind = CLI_NUMBER,
     .offset = AT(epoch),
     .min = 1,
     .max = UINT64_MAX,
     .dflt = "the newest",
     .help = "follow epoch E's branch instead of the newest epoch's"},
    CLI_ARCHIVE_OPTIONS(restore_args, access),
    {0},
};
#undef AT

static int run_restore(void *args)
{
  const restore_args *a = args;
  replicate_restore_target t = {.kind = REPLICATE_RESTORE_NEWEST,
                                .epoch = a->epoch ? (int64_t)a->epoch : -1};
  if (a->seq && a->time)
    return cli_fail("restore", "--seq and --time exclude each other"), 2;
  if (a->seq) {
    t.kind = REPLICATE_RESTORE_SEQ;
    if (cli_parse_u64("restore", "--seq", a->seq, 0, UINT64_MAX, &t.seq))
      return 2;
  }
  if (a->time) {
    t.kind = REPLICATE_RESTORE_TIME;
    if (parse_time(a->time, &t.time_ns))
      return cli_fail("restore",
                      "--time must be like 2026-12-06T20:00:00Z or Unix "
                      "seconds, not '%s'",
                      a->time),
             2;
  }
  replicate_archive_options o;
  cli_archive_options(&a->access, a->from, &o);
  o.io = faultio_from_env(); /* NULL (POSIX) unless a crash test asks */
  replicate_archive *ar = NULL;
  loom_position pos;
  int rc = replicate_archive_open(&o, &ar);
  if (rc == 0)
    rc = replicate_archive_restore(ar, &t, a->out, &pos);
  if (rc) {
    cli_fail("restore", "%s (%s)", ar ? replicate_archive_last_error(ar) : "",
             replicate_error_name(rc));
    replicate_archive_close(ar);
    return 1;
  }
  uint64_t held = replicate_archive_restore_memory(ar);
  replicate_archive_close(ar);
  char sum[17], when[40];
  format_time(pos.commit_time_ns, when);
  printf("restored %s: epoch %" PRIu64 " seq %" PRIu64
         " checksum %s pages %" PRIu64 " committed %s (held %.1f MiB)\n",
         a->out, pos.epoch, pos.seq, cli_hex64(pos.checksum, sum), pos.pages,
         when, (double)held / (1 << 20));
  return 0;
}

const cli_command cmd_restore = {
    .name = "restore",
    .summary =
        "restore an image directory from an archive (newest, --seq or --time)",
    .options = restore_options,
    .args_size = sizeof(restore_args),
    .run = run_restore};

/* ---------------------------------------------------------------------- */
/* archive list | verify */

typedef struct archive_args {
  const char *action, *url;
  const char *scratch;
  int json;
  cli_archive_access access;
} archive_args;

#define AT(f) offsetof(archive_args, f)
static const cli_option archive_options[] = {
    {.name = "from", .arg = "ARCHIVE", .kind = CLI_TEXT, .offset = AT(url),
     .help = "the archive (s3://BUCKET/PREFIX or file:///DIR), as restore "
             "takes it; or given after list|verify"},
    {.name = "scratch",
     .arg = "DIR",
     .kind = CLI_TEXT,
     .offset = AT(scratch),
     .dflt = "$TMPDIR or /tmp",
     .help = "verify: where the restore drill writes (removed after)"},
    {.name = "json", .kind = CLI_FLAG, .offset = AT(json),
     .help = "one JSON document: list {\"objects\": [...]}, verify {\"ok\", "
             "\"objects\", \"bytes\", \"newest\"} (with \"error\" when not ok)"},
    CLI_ARCHIVE_OPTIONS(archive_args, access),
    {0},
};
#undef AT

static const char *kind_name(replicate_archive_object_kind k)
{
  switch (k) {
  case REPLICATE_ARCHIVE_BASE: return "base";
  case REPLICATE_ARCHIVE_SEGMENT: return "segment";
  case REPLICATE_ARCHIVE_GAP: return "gap";
  }
  return "?";
}

/* --json: the entry as an object of the "objects" array ctx. The time is
 * null for a gap; key_id 0 is a plaintext object. */
static int json_entry(void *ctx, const replicate_archive_entry *e)
{
  char when[40];
  format_time(e->time_ns, when);
  json_t *o = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:b, s:s}",
      "kind", kind_name(e->kind), "epoch", (json_int_t)e->epoch,
      "first_seq", (json_int_t)e->first_seq, "last_seq", (json_int_t)e->last_seq,
      "time_ns", (json_int_t)(e->kind == REPLICATE_ARCHIVE_GAP ? 0 : e->time_ns),
      "size", (json_int_t)e->size, "key_id", (json_int_t)e->key_id,
      "abandoned", e->abandoned, "key", e->key);
  if (o && e->kind != REPLICATE_ARCHIVE_GAP)
    json_object_set_new(o, "time", json_pack("s", when));
  else if (o)
    json_object_set_new(o, "time", json_pack("n"));
  return o && json_array_append_new(ctx, o) == 0 ? 0 : ENOMEM;
}

static int print_entry(void *ctx, const replicate_archive_entry *e)
{
  (void)ctx;
  char when[40] = "-";
  if (e->kind != REPLICATE_ARCHIVE_GAP)
    format_time(e->time_ns, when);
  char key[24] = "plaintext";
  if (e->key_id)
    snprintf(key, sizeof key, "key %08" PRIx32, e->key_id);
  printf("%-7s epoch %-4" PRIu64 " seq %" PRIu64 "-%" PRIu64 "  %s  %" PRIu64
         " bytes  %s%s  %s\n",
         kind_name(e->kind), e->epoch, e->first_seq, e->last_seq, when, e->size,
         key, e->abandoned ? "  abandoned" : "", e->key);
  return 0;
}

/* DESIGN section 5: 2 when the archive cannot be reached (the store
 * failed, refused the credentials, or has no such bucket), 1 for anything
 * wrong inside it. */
static int archive_exit_code(int rc)
{
  return rc == REPLICATE_ESTORE || rc == REPLICATE_ESTORE_AUTH ||
                 rc == REPLICATE_ESTORE_MISSING
             ? 2
             : 1;
}

/* Print one JSON document (taken) on stdout. */
static int json_print(json_t *root)
{
  char *text = root ? json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
  json_decref(root);
  if (!text)
    return cli_fail("archive", "out of memory"), 1;
  puts(text);
  free(text);
  return 0;
}

static int run_archive(void *args)
{
  const archive_args *a = args;
  bool list = strcmp(a->action, "list") == 0,
       verify = strcmp(a->action, "verify") == 0;
  if (!list && !verify)
    return cli_fail("archive", "the action is list or verify, not '%s'",
                    a->action),
           2;
  replicate_archive_options o;
  cli_archive_options(&a->access, a->url, &o);
  replicate_archive *ar = NULL;
  int rc = replicate_archive_open(&o, &ar);
  replicate_archive_verify_report rep;
  const char *scratch = a->scratch         ? a->scratch
                        : getenv("TMPDIR") ? getenv("TMPDIR")
                                           : "/tmp";
  json_t *objects = a->json && list ? json_array() : NULL;
  if (rc == 0 && list)
    rc = replicate_archive_list(ar, a->json ? json_entry : print_entry, objects);
  else if (rc == 0)
    rc = replicate_archive_verify(ar, scratch, &rep);
  if (rc) {
    const char *why = ar ? replicate_archive_last_error(ar) : "";
    cli_fail("archive", "%s: %s (%s)", a->action, why, replicate_error_name(rc));
    if (a->json)
      json_print(json_pack("{s:b, s:s, s:s}", "ok", 0, "error", why, "code",
                           replicate_error_name(rc)));
    replicate_archive_close(ar);
    json_decref(objects);
    return archive_exit_code(rc);
  }
  replicate_archive_close(ar);
  if (list && a->json)
    return json_print(json_pack("{s:o}", "objects", objects));
  if (verify && a->json) {
    char sum[17];
    return json_print(json_pack("{s:b, s:I, s:I, s:{s:I, s:I, s:s}}", "ok", 1,
        "objects", (json_int_t)rep.objects, "bytes", (json_int_t)rep.bytes,
        "newest", "epoch", (json_int_t)rep.newest.epoch, "seq",
        (json_int_t)rep.newest.seq, "checksum", cli_hex64(rep.newest.checksum, sum)));
  }
  if (verify) {
    char sum[17];
    printf("verified %" PRIu64 " objects (%" PRIu64
           " bytes): checksums and tags good; "
           "restore drill of epoch %" PRIu64 " seq %" PRIu64
           ": checksum %s matches\n",
           rep.objects, rep.bytes, rep.newest.epoch, rep.newest.seq,
           cli_hex64(rep.newest.checksum, sum));
  }
  return 0;
}

const cli_command cmd_archive = {
    .name = "archive",
    .summary =
        "list an archive's objects, or verify every one and drill a restore",
    .options = archive_options,
    .positional = "list|verify",
    .positional_offset = offsetof(archive_args, action),
    .positional2 = "ARCHIVE",
    .positional2_offset = offsetof(archive_args, url),
    .args_size = sizeof(archive_args),
    .run = run_archive};
