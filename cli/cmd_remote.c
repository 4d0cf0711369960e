/* cmd_remote.c: the subcommands that talk to a running node over HTTP:
 * backup, status, promote. */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "clock.h"
#include "client.h"
#include "jsonread.h"
#include "loom.h"

#define PS ((uint64_t)LOOM_PAGE_SIZE)

/* Options shared by the remote subcommands. */
typedef struct remote_args {
  const char *url;
  const char *out;
  const char *token_file;
  const char *ca_file;
  int json;
  int force;
  uint64_t retries;
} remote_args;

/* Parse argv; positional is the name of a positional URL argument or NULL
 * (then --from gives it). Returns 0, or an exit code. */
static int parse_remote(const cli_command *c, int argc, char **argv, int positional,
                        remote_args *a)
{
  memset(a, 0, sizeof *a);
  a->retries = 8;
  for (int i = 1; i < argc; i++) {
    const char *v;
    if (cli_is_option(argv[i], "--token-file")) {
      if (!(v = cli_option_value(c->name, argc, argv, &i, "--token-file")))
        return 2;
      a->token_file = v;
    } else if (cli_is_option(argv[i], "--ca-file")) {
      if (!(v = cli_option_value(c->name, argc, argv, &i, "--ca-file")))
        return 2;
      a->ca_file = v;
    } else if (cli_is_option(argv[i], "--from") && !positional) {
      if (!(v = cli_option_value(c->name, argc, argv, &i, "--from")))
        return 2;
      a->url = v;
    } else if (cli_is_option(argv[i], "--out") && !positional) {
      if (!(v = cli_option_value(c->name, argc, argv, &i, "--out")))
        return 2;
      a->out = v;
    } else if (cli_is_option(argv[i], "--retries") && !positional) {
      if (!(v = cli_option_value(c->name, argc, argv, &i, "--retries")) ||
          cli_parse_u64(c->name, "--retries", v, 0, 1000, &a->retries))
        return 2;
    } else if (!strcmp(argv[i], "--json") && c == &cmd_status) {
      a->json = 1;
    } else if (!strcmp(argv[i], "--force") && c == &cmd_promote) {
      a->force = 1;
    } else if (positional && argv[i][0] != '-' && !a->url) {
      a->url = argv[i];
    } else {
      return cli_usage(c);
    }
  }
  if (!a->url || (!positional && !a->out))
    return cli_usage(c);
  return 0;
}

/* The token named by --token-file into *token (NULL when none): 0, or an
 * exit code after an error line. */
static int load_token(const char *cmd, const remote_args *a, char **token)
{
  *token = NULL;
  return a->token_file ? cli_token_file_read(cmd, a->token_file, token) : 0;
}

/* The message of a JSON error answer, or the status line. */
static const char *error_text(const client_reply *r, char *buf, size_t len)
{
  json *j = jsonread_parse(r->body, r->len);
  const char *msg = jsonread_string(j, "error", NULL);
  snprintf(buf, len, "HTTP %ld%s%s", r->status, msg ? ": " : "", msg ? msg : "");
  jsonread_free(j);
  return buf;
}

/* ---------------------------------------------------------------------- */
/* status */

static void print_lag(const char *indent, const json *lag)
{
  printf("%slag        %.0f frames, %.0f bytes, %.3f s\n", indent,
         jsonread_number(lag, "frames", 0), jsonread_number(lag, "bytes", 0),
         jsonread_number(lag, "seconds", 0));
}

static int run_status(int argc, char **argv)
{
  remote_args a;
  int rc = parse_remote(&cmd_status, argc, argv, 1, &a);
  if (rc)
    return rc;
  char *token;
  if ((rc = load_token("status", &a, &token)))
    return rc;
  client_options o = {.token = token, .ca_file = a.ca_file, .timeout_s = 10};
  client_reply r;
  rc = client_request("GET", a.url, "/v1/status", &o, &r);
  cli_token_forget(token);
  char buf[512];
  if (rc) {
    client_reply_free(&r);
    return cli_fail("status", "%s: %s", a.url, r.error);
  }
  if (r.status != 200) {
    cli_fail("status", "%s: %s", a.url, error_text(&r, buf, sizeof buf));
    client_reply_free(&r);
    return 1;
  }
  if (a.json) {
    fwrite(r.body, 1, r.len, stdout);
    if (r.len && r.body[r.len - 1] != '\n')
      putchar('\n');
    client_reply_free(&r);
    return 0;
  }
  json *j = jsonread_parse(r.body, r.len);
  client_reply_free(&r);
  if (!j)
    return cli_fail("status", "%s: the answer is not JSON", a.url);
  const char *role = jsonread_string(j, "role", "?");
  /* Lag first: it is what one looks at a status for. */
  if (jsonread_get(j, "lag"))
    print_lag("", jsonread_get(j, "lag"));
  const json *sb = jsonread_get(j, "standbys");
  if (sb && sb->type == JSON_ARRAY) {
    double worst = 0;
    for (const json *s = sb->child; s; s = s->next)
      worst = fmax(worst, jsonread_number(s, "lag.seconds", 0));
    printf("lag        worst standby %.3f s\n", worst);
  }
  printf("role       %s, epoch %.0f%s%s\n", role, jsonread_number(j, "epoch", 0),
         jsonread_bool(j, "fenced", 0) ? ", FENCED" : "",
         jsonread_bool(j, "replay_paused", 0) ? ", replay paused" : "");
  printf("applied    seq %.0f  checksum %s  at %s\n", jsonread_number(j, "applied.seq", 0),
         jsonread_string(j, "applied.checksum", "?"), jsonread_string(j, "applied.at", "-"));
  if (jsonread_get(j, "received"))
    printf("received   seq %.0f  checksum %s\n", jsonread_number(j, "received.seq", 0),
           jsonread_string(j, "received.checksum", "?"));
  if (jsonread_get(j, "primary_seq"))
    printf("primary    seq %.0f\n", jsonread_number(j, "primary_seq", 0));
  if (sb && sb->type == JSON_ARRAY)
    for (const json *s = sb->child; s; s = s->next) {
      printf("standby    %s  %s\n", jsonread_string(s, "url", "?"), jsonread_string(s, "state", "?"));
      print_lag("  ", jsonread_get(s, "lag"));
      printf("  sent %.0f  received %.0f  applied %.0f\n", jsonread_number(s, "sent_seq", 0),
             jsonread_number(s, "received_seq", 0), jsonread_number(s, "applied_seq", 0));
      if (jsonread_string(s, "last_error", NULL))
        printf("  last error %s\n", jsonread_string(s, "last_error", ""));
    }
  jsonread_free(j);
  return 0;
}

/* ---------------------------------------------------------------------- */
/* promote */

static int run_promote(int argc, char **argv)
{
  remote_args a;
  int rc = parse_remote(&cmd_promote, argc, argv, 1, &a);
  if (rc)
    return rc;
  char *token;
  if ((rc = load_token("promote", &a, &token)))
    return rc;
  client_options o = {.token = token, .ca_file = a.ca_file, .timeout_s = 120};
  client_reply r;
  rc = client_request("POST", a.url, a.force ? "/v1/promote?force=1" : "/v1/promote",
                      &o, &r);
  cli_token_forget(token);
  char buf[512];
  if (rc) {
    client_reply_free(&r);
    return cli_fail("promote", "%s: %s", a.url, r.error);
  }
  if (r.status != 200) {
    cli_fail("promote", "%s: %s", a.url, error_text(&r, buf, sizeof buf));
    json *e = jsonread_parse(r.body, r.len);
    const char *code = jsonread_string(e, "code", "");
    if (!strcmp(code, "PROMOTE_EMPTY") || !strcmp(code, "PROMOTE_BEHIND"))
      fprintf(stderr, "promote: %s (code %s); --force promotes it anyway\n",
              jsonread_string(e, "reason", ""), code);
    jsonread_free(e);
    client_reply_free(&r);
    return 1;
  }
  json *j = jsonread_parse(r.body, r.len);
  printf("promoted: %s is primary at epoch %.0f (seq %.0f)\n", a.url,
         jsonread_number(j, "epoch", 0), jsonread_number(j, "applied.seq", 0));
  jsonread_free(j);
  client_reply_free(&r);
  return 0;
}

/* ---------------------------------------------------------------------- */
/* backup: GET /v1/backup, streamed into a new image directory through the
 * store (a base patch: every page checked against the stream's checksum),
 * resumed with Range + If-Range after a break, renamed into place. */

typedef struct download {
  const char *tmp;
  loom_store *store;
  loom_patch *patch;
  uint8_t header[LOOM_STREAM_HEADER];
  size_t header_have;
  loom_position pos;
  loom_lineage lineage;
  uint8_t *page;
  size_t page_have;
  uint64_t pages_added;
  uint64_t offset;      /* bytes of the stream consumed */
  char etag[256];
  char new_etag[256];
  long status;
  int failed;           /* a store error: stop */
  int restarted;        /* the last answer restarted from byte 0 */
  int quiet;            /* no progress line */
  char error[256];
  /* progress */
  int tty;
  double start, last_print;
  uint64_t total;
} download;

static void download_reset(download *d)
{
  if (d->patch)
    loom_patch_abort(d->patch);
  d->patch = NULL;
  d->header_have = d->page_have = 0;
  d->pages_added = d->offset = 0;
  d->etag[0] = '\0';
}

static size_t on_header(char *line, size_t size, size_t n, void *arg)
{
  download *d = arg;
  size_t len = size * n;
  if (len > 5 && !strncmp(line, "HTTP/", 5)) {
    d->status = strtol(strchr(line, ' ') ? strchr(line, ' ') + 1 : "0", NULL, 10);
    d->new_etag[0] = '\0';
    if (d->status == 200 && d->offset > 0) {
      /* If-Range did not match: the backup moved to another position, and
       * the whole new one follows. Never splice the two. */
      download_reset(d);
      d->restarted = 1;
    }
  } else if (len > 5 && !strncasecmp(line, "ETag:", 5)) {
    const char *v = line + 5;
    while (*v == ' ')
      v++;
    size_t k = strcspn(v, "\r\n");
    if (k < sizeof d->new_etag) {
      memcpy(d->new_etag, v, k);
      d->new_etag[k] = '\0';
    }
  }
  return len;
}

static int on_stream_header(download *d)
{
  int rc = loom_stream_header_decode(d->header, &d->pos, &d->lineage);
  if (rc) {
    snprintf(d->error, sizeof d->error, "the backup stream's header: %s", loom_strerror(rc));
    return rc;
  }
  d->total = LOOM_STREAM_HEADER + d->pos.pages * PS;
  if (!d->store &&
      (rc = loom_store_open(d->tmp, LOOM_CREATE, NULL, &d->store)) != 0) {
    snprintf(d->error, sizeof d->error, "%s: %s", d->tmp, loom_strerror(rc));
    return rc;
  }
  /* The backup keeps the history it was taken from (a new directory has
   * none of its own yet). */
  if (!loom_history_is_none(&d->lineage.history) &&
      (rc = loom_store_adopt_lineage(d->store, &d->lineage)) != 0) {
    snprintf(d->error, sizeof d->error, "%s: %s", d->tmp, loom_strerror(rc));
    return rc;
  }
  loom_position cur;
  loom_store_position(d->store, &cur);
  loom_patch_header h = {.before = cur, .after = d->pos, .page_count = d->pos.pages,
                         .flags = LOOM_PATCH_BASE};
  if (h.after.epoch < cur.epoch)
    h.after.epoch = cur.epoch; /* a new directory starts at epoch 1 */
  rc = loom_store_patch_begin(d->store, &h, &d->patch);
  if (rc)
    snprintf(d->error, sizeof d->error, "begin: %s", loom_strerror(rc));
  return rc;
}

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
  download *d = arg;
  size_t len = size * n, used = 0;
  if (d->status != 200 && d->status != 206)
    return len; /* an error document: read and ignore */
  while (used < len) {
    if (d->header_have < LOOM_STREAM_HEADER) {
      size_t k = LOOM_STREAM_HEADER - d->header_have;
      k = k < len - used ? k : len - used;
      memcpy(d->header + d->header_have, data + used, k);
      d->header_have += k;
      used += k;
      if (d->header_have == LOOM_STREAM_HEADER && on_stream_header(d)) {
        d->failed = 1;
        return 0;
      }
      continue;
    }
    if (d->pages_added >= d->pos.pages) {
      snprintf(d->error, sizeof d->error, "the stream is longer than its header says");
      d->failed = 1;
      return 0;
    }
    size_t k = PS - d->page_have;
    k = k < len - used ? k : len - used;
    memcpy(d->page + d->page_have, data + used, k);
    d->page_have += k;
    used += k;
    if (d->page_have == PS) {
      int rc = loom_patch_add(d->patch, d->pages_added, d->page);
      if (rc) {
        snprintf(d->error, sizeof d->error, "write: %s", loom_strerror(rc));
        d->failed = 1;
        return 0;
      }
      d->pages_added++;
      d->page_have = 0;
    }
  }
  d->offset += len;
  return len;
}

static void progress_line(download *d, int final)
{
  if (d->quiet)
    return;
  double el = loom_mono_s() - d->start;
  if (!final && el - d->last_print < (d->tty ? 0.2 : 1.0))
    return;
  d->last_print = el;
  double rate = el > 0 ? (double)d->offset / el : 0;
  double eta = rate > 0 && d->total > d->offset ? (double)(d->total - d->offset) / rate : 0;
  fprintf(stderr, "%s%8.1f MiB of %.1f MiB  %7.1f MiB/s  ETA %4.0f s%s",
          d->tty ? "\r" : "", (double)d->offset / 1048576.0, (double)d->total / 1048576.0,
          rate / 1048576.0, eta, d->tty && !final ? "" : "\n");
}

static int on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ult,
                       curl_off_t ulnow)
{
  (void)dltotal, (void)dlnow, (void)ult, (void)ulnow;
  progress_line(arg, 0);
  return 0;
}

int cli_sync_dir(const char *path)
{
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return errno;
  int rc = fsync(fd) < 0 ? errno : 0;
  close(fd);
  return rc;
}

static void remove_tree(const char *path)
{
  const char *names[] = {"image", "hashes", "meta", "patch", "lock"};
  char p[4200 + 16]; /* path is at most 4200 bytes (cli_backup_pull's tmp) */
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    if (snprintf(p, sizeof p, "%s/%s", path, names[i]) >= (int)sizeof p)
      return;
    unlink(p);
  }
  rmdir(path);
}

int cli_backup_pull(const char *from, const char *out, const char *token,
                    const char *ca_file, uint64_t retries, int quiet)
{
  int rc = 0;
  struct stat st;
  if (stat(out, &st) == 0)
    return cli_fail("backup", "%s exists: a backup never replaces a directory", out);
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.partial-%d", out, (int)getpid());
  download d = {.tmp = tmp, .tty = isatty(STDERR_FILENO), .start = loom_mono_s(), .quiet = quiet};
  d.page = malloc(PS);
  char *url = client_url(from, "/v1/backup");
  char *auth = NULL;
  struct curl_slist *base_headers = NULL;
  if (token) {
    auth = malloc(strlen(token) + 32);
    sprintf(auth, "Authorization: Bearer %s", token);
    base_headers = curl_slist_append(NULL, auth);
  }
  CURL *c = curl_easy_init();
  int done = 0;
  char message[600] = "";
  for (uint64_t attempt = 0; !done && !d.failed && attempt <= retries; attempt++) {
    if (attempt > 0) {
      unsigned wait = attempt < 5 ? 1u << (attempt - 1) : 16u;
      fprintf(stderr, "loomship backup: %s; resuming at byte %llu in %u s\n", message,
              (unsigned long long)d.offset, wait);
      sleep(wait);
    }
    struct curl_slist *headers = NULL;
    for (struct curl_slist *h = base_headers; h; h = h->next)
      headers = curl_slist_append(headers, h->data);
    char range[128], ifrange[300];
    if (d.offset > 0 && d.etag[0]) {
      snprintf(range, sizeof range, "Range: bytes=%llu-", (unsigned long long)d.offset);
      snprintf(ifrange, sizeof ifrange, "If-Range: %s", d.etag);
      headers = curl_slist_append(headers, range);
      headers = curl_slist_append(headers, ifrange);
    } else {
      download_reset(&d);
    }
    uint64_t resumed_from = d.offset;
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &d);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &d);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, &d);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 30L);
    if (ca_file)
      curl_easy_setopt(c, CURLOPT_CAINFO, ca_file);
    d.status = 0;
    d.restarted = 0;
    CURLcode cr = curl_easy_perform(c);
    curl_slist_free_all(headers);
    if (d.restarted && resumed_from > 0)
      fprintf(stderr, "loomship backup: the backup moved to a new position; "
                      "it was downloaded again from the start\n");
    if (d.new_etag[0])
      strcpy(d.etag, d.new_etag);
    if (d.failed)
      break;
    if (cr != CURLE_OK) {
      snprintf(message, sizeof message, "%s", curl_easy_strerror(cr));
      continue;
    }
    if (d.status == 416) {
      download_reset(&d);
      snprintf(message, sizeof message, "range refused");
      continue;
    }
    if (d.status != 200 && d.status != 206) {
      snprintf(message, sizeof message, "HTTP %ld from %s", d.status, url);
      if (d.status == 401 || d.status == 403 || d.status == 404)
        break; /* retrying will not help */
      continue;
    }
    if (d.header_have == LOOM_STREAM_HEADER && d.pages_added == d.pos.pages &&
        d.page_have == 0)
      done = 1;
    else
      snprintf(message, sizeof message, "the download ended early");
  }
  curl_easy_cleanup(c);
  curl_slist_free_all(base_headers);
  if (auth) {
    memset(auth, 0, strlen(auth));
    free(auth);
  }
  free(url);
  if (done) {
    progress_line(&d, 1);
    rc = loom_patch_commit(d.patch); /* checks every page against the checksum */
    d.patch = NULL;
    if (rc)
      snprintf(message, sizeof message, "the backup does not verify: %s", loom_strerror(rc));
  } else if (d.failed) {
    snprintf(message, sizeof message, "%s", d.error);
  }
  int close_rc = d.store ? loom_store_close(d.store) : 0;
  if (d.patch)
    loom_patch_abort(d.patch);
  free(d.page);
  if (!done || rc || close_rc) {
    remove_tree(tmp);
    return cli_fail("backup", "%s", message[0] ? message : loom_strerror(close_rc));
  }
  loom_position rec;
  uint64_t computed;
  if ((rc = loom_verify(tmp, &rec, &computed)) != 0) {
    remove_tree(tmp);
    return cli_fail("backup", "verify %s: %s", tmp, loom_strerror(rc));
  }
  if (rename(tmp, out) != 0) {
    rc = errno;
    remove_tree(tmp);
    return cli_fail("backup", "rename to %s: %s", out, strerror(rc));
  }
  char parent[4200];
  snprintf(parent, sizeof parent, "%s", out);
  char *slash = strrchr(parent, '/');
  if (slash)
    *(slash == parent ? slash + 1 : slash) = '\0';
  if ((rc = cli_sync_dir(slash ? parent : ".")) != 0)
    return cli_fail("backup", "fsync %s: %s", slash ? parent : ".", strerror(rc));
  char hex[17];
  if (!quiet)
    printf("backup %s: epoch %llu seq %llu checksum %s pages %llu, verified\n", out,
         (unsigned long long)rec.epoch, (unsigned long long)rec.seq,
         cli_hex64(rec.checksum, hex), (unsigned long long)rec.pages);
  return 0;
}

static int run_backup(int argc, char **argv)
{
  remote_args a;
  int rc = parse_remote(&cmd_backup, argc, argv, 0, &a);
  if (rc)
    return rc;
  char *token;
  if ((rc = load_token("backup", &a, &token)))
    return rc;
  rc = cli_backup_pull(a.url, a.out, token, a.ca_file, a.retries, 0);
  cli_token_forget(token);
  return rc;
}

const cli_command cmd_backup = {
    "backup", "pull a consistent backup over HTTP, verify it, write it atomically",
    "backup --from URL --out DIR [--token-file F] [--ca-file F] [--retries N]",
    run_backup};
const cli_command cmd_status = {
    "status", "print a node's status, lag first",
    "status URL [--json] [--token-file F] [--ca-file F]", run_status};
const cli_command cmd_promote = {
    "promote", "promote a standby to primary at a new epoch",
    "promote URL [--force] [--token-file F] [--ca-file F]", run_promote};
