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
#include "json_get.h"
#include "loom.h"
#include "replicate.h"
#include "status_check.h"

/* Options shared by the remote subcommands. */
typedef struct remote_args {
  const char *url;        /* status and promote: the positional URL; backup: --from */
  const char *out;
  const char *token_file;
  const char *ca_file;
  int json;
  int force;
  uint64_t retries;
  int check;              /* status --check */
  const char *max_lag;    /* status --max-lag SECONDS, or NULL */
  const char *frame_key_file; /* backup: check the stream's tag */
} remote_args;

#define TOKEN_FILE_OPTION                                                        \
  {.name = "token-file", .arg = "F", .kind = CLI_TEXT,                          \
   .offset = offsetof(remote_args, token_file), .dflt = "none",                 \
   .help = "the bearer token, on the file's first line"}
#define CA_FILE_OPTION                                                           \
  {.name = "ca-file", .arg = "F", .kind = CLI_TEXT,                             \
   .offset = offsetof(remote_args, ca_file), .dflt = "the system's CAs",        \
   .help = "CA certificates to verify the node's TLS certificate"}

static const cli_option backup_options[] = {
    {.name = "from", .arg = "URL", .kind = CLI_TEXT, .offset = offsetof(remote_args, url),
     .required = true, .help = "the node to pull from (a primary or a standby)"},
    {.name = "out", .arg = "DIR", .kind = CLI_TEXT, .offset = offsetof(remote_args, out),
     .required = true, .help = "the new directory; it must not exist"},
    TOKEN_FILE_OPTION,
    CA_FILE_OPTION,
    {.name = "retries", .arg = "N", .kind = CLI_NUMBER,
     .offset = offsetof(remote_args, retries), .min = 0, .max = 1000, .dflt = "8",
     .help = "times a broken download is resumed (Range + If-Range; with "
             "--frame-key-file, downloaded again from the start)"},
    {.name = "frame-key-file", .arg = "F", .kind = CLI_TEXT,
     .offset = offsetof(remote_args, frame_key_file), .dflt = "none",
     .help = "the node's frame key file (docs/AUTH.md): ask for the tagged backup and "
             "refuse it (exit 1, nothing written) unless it carries a valid "
             "HMAC-SHA256 tag under one of the file's keys"},
    {0},
};

static const cli_option status_options[] = {
    {.name = "json", .kind = CLI_FLAG, .offset = offsetof(remote_args, json),
     .help = "print the status document as the node sent it"},
    {.name = "check", .kind = CLI_FLAG, .offset = offsetof(remote_args, check),
     .help = "a health check: one line, exit 0 healthy, 1 degraded (not ready, "
             "fenced, integrity not ok, or lag over --max-lag), 2 unreachable or error"},
    {.name = "max-lag", .arg = "SECONDS", .kind = CLI_TEXT,
     .offset = offsetof(remote_args, max_lag), .dflt = "no limit",
     .help = "with --check: degraded when the lag in seconds exceeds this (on a "
             "primary, its largest standby lag)"},
    TOKEN_FILE_OPTION,
    CA_FILE_OPTION,
    {0},
};

static const cli_option promote_options[] = {
    {.name = "force", .kind = CLI_FLAG, .offset = offsetof(remote_args, force),
     .help = "promote even a standby that never applied anything or lags more than "
             "its --promote-max-lag"},
    TOKEN_FILE_OPTION,
    CA_FILE_OPTION,
    {0},
};

/* The node's URL checked (2 after a line naming it, when its scheme is
 * not http or https), then the token named by --token-file into *token
 * (NULL when none): 0, or an exit code after an error line. */
static int load_token(const char *cmd, const remote_args *a, char **token)
{
  char why[128];
  *token = NULL;
  if (client_url_check(a->url, why, sizeof why)) {
    cli_fail(cmd, "%s: %s", a->url, why);
    return 2;
  }
  return a->token_file ? cli_token_file_read(cmd, a->token_file, token) : 0;
}

/* The message of a JSON error answer, or the status line. */
static const char *error_text(const client_reply *r, char *buf, size_t len)
{
  json_t *j = cli_json_parse(r->body, r->len);
  const char *msg = cli_json_string(j, "error", NULL);
  snprintf(buf, len, "HTTP %ld%s%s", r->status, msg ? ": " : "", msg ? msg : "");
  json_decref(j);
  return buf;
}

/* One request to the node at a->url with the token, answered 2xx: 0 with
 * the answer in *r. Else an exit code after a line naming the URL, with
 * r->status 0, or the refusal's status and body kept in *r for the caller
 * to read more of. The caller frees *r either way. */
static int remote_call(const char *cmd, const remote_args *a, const char *method,
                       const char *path, long timeout_s, client_reply *r)
{
  char *token;
  int rc;
  memset(r, 0, sizeof *r);
  if ((rc = load_token(cmd, a, &token)))
    return rc;
  client_options o = {.token = token, .ca_file = a->ca_file, .timeout_s = timeout_s};
  rc = client_request(method, a->url, path, &o, r);
  cli_token_forget(token);
  char buf[512];
  if (rc) {
    r->status = 0;
    return cli_fail(cmd, "%s: %s", a->url, r->error);
  }
  if (r->status < 200 || r->status > 299) {
    cli_fail(cmd, "%s: %s", a->url, error_text(r, buf, sizeof buf));
    return 1;
  }
  return 0;
}

/* ---------------------------------------------------------------------- */
/* status */

/* A seq, an epoch or a count at path, for printing (0 when absent). */
static unsigned long long count_at(const json_t *j, const char *path)
{
  return (unsigned long long)cli_json_uint_or(j, path, 0);
}

static void print_lag(const char *indent, const json_t *lag)
{
  printf("%slag        %llu frames, %llu bytes, %.3f s\n", indent, count_at(lag, "frames"),
         count_at(lag, "bytes"), cli_json_real(lag, "seconds", 0));
}

/* One block per standby of a primary's status. */
static void print_standbys(const json_t *standbys)
{
  size_t i;
  const json_t *s;
  json_array_foreach(standbys, i, s) {
    printf("standby    %s  %s\n", cli_json_string(s, "url", "?"),
           cli_json_string(s, "state", "?"));
    print_lag("  ", cli_json_get(s, "lag"));
    printf("  sent %llu  received %llu  applied %llu\n", count_at(s, "sent_seq"),
           count_at(s, "received_seq"), count_at(s, "applied_seq"));
    if (cli_json_string(s, "last_reply_at", NULL))
      printf("  as of its last answer at %s\n", cli_json_string(s, "last_reply_at", ""));
    if (cli_json_string(s, "last_error", NULL))
      printf("  last error %s\n", cli_json_string(s, "last_error", ""));
  }
}

/* The status document j, lag first: it is what one looks at a status for. */
static void print_status(const json_t *j)
{
  if (cli_json_get(j, "lag"))
    print_lag("", cli_json_get(j, "lag"));
  const json_t *sb = cli_json_get(j, "standbys");
  if (json_is_array(sb)) {
    double worst = 0;
    size_t i;
    const json_t *s;
    json_array_foreach(sb, i, s)
      worst = fmax(worst, cli_json_real(s, "lag.seconds", 0));
    printf("lag        worst standby %.3f s\n", worst);
  }
  printf("role       %s, epoch %llu%s%s\n", cli_json_string(j, "role", "?"),
         count_at(j, "epoch"), cli_json_bool(j, "fenced", false) ? ", FENCED" : "",
         cli_json_bool(j, "replay_paused", false) ? ", replay paused" : "");
  printf("applied    seq %llu  checksum %s  at %s\n", count_at(j, "applied.seq"),
         cli_json_string(j, "applied.checksum", "?"), cli_json_string(j, "applied.at", "-"));
  if (cli_json_get(j, "received"))
    printf("received   seq %llu  checksum %s\n", count_at(j, "received.seq"),
           cli_json_string(j, "received.checksum", "?"));
  if (cli_json_get(j, "primary_seq"))
    printf("primary    seq %llu\n", count_at(j, "primary_seq"));
  print_standbys(sb);
  cli_status_print_health(j);
}

/* --max-lag's value into *out (-1 when not given): 0, or 2 after a line. */
static int max_lag_seconds(const remote_args *a, double *out)
{
  *out = -1;
  if (!a->max_lag)
    return 0;
  char *end;
  double v = strtod(a->max_lag, &end);
  if (end == a->max_lag || *end || !(v >= 0) || !isfinite(v))
    return cli_usage_error(&cmd_status, "--max-lag must be a number of seconds >= 0, "
                                        "not '%s'", a->max_lag);
  if (!a->check)
    return cli_usage_error(&cmd_status, "--max-lag goes with --check");
  *out = v;
  return 0;
}

static int run_status(void *args)
{
  const remote_args a = *(const remote_args *)args;
  int rc;
  double max_lag;
  if ((rc = max_lag_seconds(&a, &max_lag)))
    return rc;
  if (a.check) {
    char *token;
    if ((rc = load_token("status", &a, &token)))
      return rc == 1 ? 2 : rc;
    client_options o = {.token = token, .ca_file = a.ca_file, .timeout_s = 10};
    rc = cli_status_check(a.url, &o, max_lag);
    cli_token_forget(token);
    return rc;
  }
  client_reply r;
  if ((rc = remote_call("status", &a, "GET", "/v1/status", 10, &r))) {
    client_reply_free(&r);
    return rc;
  }
  if (a.json) {
    fwrite(r.body, 1, r.len, stdout);
    if (r.len && r.body[r.len - 1] != '\n')
      putchar('\n');
    client_reply_free(&r);
    return 0;
  }
  json_t *j = cli_json_parse(r.body, r.len);
  client_reply_free(&r);
  if (!j)
    return cli_fail("status", "%s: the answer is not JSON", a.url);
  print_status(j);
  json_decref(j);
  return 0;
}

/* ---------------------------------------------------------------------- */
/* promote */

static int run_promote(void *args)
{
  const remote_args a = *(const remote_args *)args;
  client_reply r;
  int rc = remote_call("promote", &a, "POST",
                       a.force ? "/v1/promote?force=1" : "/v1/promote", 120, &r);
  if (rc) {
    json_t *e = r.status ? cli_json_parse(r.body, r.len) : NULL;
    const char *code = cli_json_string(e, "code", "");
    if (!strcmp(code, "PROMOTE_EMPTY") || !strcmp(code, "PROMOTE_BEHIND"))
      fprintf(stderr, "promote: %s (code %s); --force promotes it anyway\n",
              cli_json_string(e, "reason", ""), code);
    json_decref(e);
    client_reply_free(&r);
    return rc;
  }
  json_t *j = cli_json_parse(r.body, r.len);
  printf("promoted: %s is primary at epoch %llu (seq %llu)\n", a.url,
         count_at(j, "epoch"), count_at(j, "applied.seq"));
  json_decref(j);
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
  replicate_stream_reader stream;
  uint64_t *hashes;     /* [pages]: each page's hash as it came */
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
  /* With a frame key: the tagged form, checked (docs/AUTH.md). */
  const replicate_frame_key *key;
  replicate_tag_stream *tag;    /* begun at the body's first byte */
  char tag_header[96];          /* the answer's X-Loomship-Tag */
  uint8_t trailer[REPLICATE_TAG_SIZE];
  size_t trailer_len;
} download;

static void download_reset(download *d)
{
  if (d->patch)
    loom_patch_abort(d->patch);
  d->patch = NULL;
  replicate_stream_reader_reset(&d->stream);
  d->offset = 0;
  d->etag[0] = '\0';
  replicate_tag_stream_free(d->tag);
  d->tag = NULL;
  d->trailer_len = 0;
}

/* The value of header line "Name: value\r\n" into out when its name is
 * name (name ends in ':'). */
static void header_value(const char *line, size_t len, const char *name, char *out,
                         size_t cap)
{
  size_t n = strlen(name);
  if (len <= n || strncasecmp(line, name, n) != 0)
    return;
  const char *v = line + n;
  while (*v == ' ')
    v++;
  size_t k = strcspn(v, "\r\n");
  if (k < cap) {
    memcpy(out, v, k);
    out[k] = '\0';
  }
}

static size_t on_header(char *line, size_t size, size_t n, void *arg)
{
  download *d = arg;
  size_t len = size * n;
  if (len > 5 && !strncmp(line, "HTTP/", 5)) {
    d->status = strtol(strchr(line, ' ') ? strchr(line, ' ') + 1 : "0", NULL, 10);
    d->new_etag[0] = '\0';
    d->tag_header[0] = '\0';
    if (d->status == 200 && d->offset > 0) {
      /* If-Range did not match: the backup moved to another position, and
       * the whole new one follows. Never splice the two. */
      download_reset(d);
      d->restarted = 1;
    }
  } else {
    header_value(line, len, "ETag:", d->new_etag, sizeof d->new_etag);
    header_value(line, len, REPLICATE_TAG_HEADER ":", d->tag_header, sizeof d->tag_header);
  }
  return len;
}

static int on_stream_header(download *d)
{
  const loom_position *pos = &d->stream.position;
  int rc;
  d->total = replicate_stream_length(pos);
  /* Each page's hash as it comes, to say which page a checksum that does
   * not match comes from (say_where); none for the largest images. */
  free(d->hashes);
  d->hashes = pos->pages <= (UINT64_C(1) << 26)
                  ? malloc((size_t)(pos->pages ? pos->pages : 1) * sizeof *d->hashes)
                  : NULL;
  if (!d->store &&
      (rc = loom_store_open(d->tmp, LOOM_CREATE, NULL, &d->store)) != 0) {
    snprintf(d->error, sizeof d->error, "%s: %s", d->tmp, loom_strerror(rc));
    return rc;
  }
  /* The backup keeps the history it was taken from (a new directory has
   * none of its own yet). */
  if (!loom_history_is_none(&d->stream.lineage.history) &&
      (rc = loom_store_adopt_lineage(d->store, &d->stream.lineage)) != 0) {
    snprintf(d->error, sizeof d->error, "%s: %s", d->tmp, loom_strerror(rc));
    return rc;
  }
  loom_position cur;
  loom_store_position(d->store, &cur);
  loom_patch_header h = {.before = cur, .after = *pos, .page_count = pos->pages,
                         .flags = LOOM_PATCH_BASE};
  if (h.after.epoch < cur.epoch)
    h.after.epoch = cur.epoch; /* a new directory starts at epoch 1 */
  rc = loom_store_patch_begin(d->store, &h, &d->patch);
  if (rc)
    snprintf(d->error, sizeof d->error, "begin: %s", loom_strerror(rc));
  return rc;
}

/* One event of the stream reader; nonzero stops the download. */
static int on_stream_event(download *d, replicate_stream_event ev)
{
  int rc = 0;
  switch (ev) {
  case REPLICATE_STREAM_MORE:
    break;
  case REPLICATE_STREAM_HEADER:
    rc = on_stream_header(d);
    break;
  case REPLICATE_STREAM_BAD_HEADER:
    rc = d->stream.header_rc;
    snprintf(d->error, sizeof d->error, "the backup stream's header: %s", loom_strerror(rc));
    break;
  case REPLICATE_STREAM_PAGE: {
    uint64_t n = d->stream.pages - 1, hash = loom_page_hash(n, d->stream.page);
    if (d->hashes)
      d->hashes[n] = hash;
    rc = loom_patch_add_hashed(d->patch, n, d->stream.page, hash);
    if (rc)
      snprintf(d->error, sizeof d->error, "write: %s", loom_strerror(rc));
    break;
  }
  case REPLICATE_STREAM_TRAILING:
    rc = EINVAL;
    snprintf(d->error, sizeof d->error, "the stream is longer than its header says");
    break;
  }
  return rc;
}

/* With a key, at the body's first byte: the answer must say it carries a
 * trailer under one of our keys. 0, or a REPLICATE_ETAG_* with d->error. */
static int tag_begin(download *d)
{
  replicate_tag t;
  int rc = replicate_tag_parse(d->tag_header[0] ? d->tag_header : NULL, &t);
  if (!rc && !t.trailer)
    rc = REPLICATE_ETAG_BAD;
  if (!rc)
    rc = replicate_tag_stream_begin(d->key, REPLICATE_TAG_BACKUP, t.key_id, &d->tag);
  if (rc)
    snprintf(d->error, sizeof d->error, "the backup is refused: %s: %s (%s: \"%s\"; "
             "this key file's key id %s)", replicate_error_name(rc), replicate_strerror(rc),
             REPLICATE_TAG_HEADER,
             d->tag_header, replicate_frame_key_id(d->key, 0));
  return rc;
}

/* Tagged: the bytes past the stream are its tag (REPLICATE_TAG_SIZE). */
static int take_trailer(download *d, const uint8_t **p, size_t *left)
{
  size_t n = *left;
  if (d->trailer_len + n > sizeof d->trailer) {
    snprintf(d->error, sizeof d->error, "the stream is longer than its header and tag");
    return EINVAL;
  }
  memcpy(d->trailer + d->trailer_len, *p, n);
  d->trailer_len += n;
  d->offset += n;
  *p += n;
  *left = 0;
  return 0;
}

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
  download *d = arg;
  size_t len = size * n, left = len;
  if (d->status != 200 && d->status != 206)
    return len; /* an error document: read and ignore */
  const uint8_t *p = (const uint8_t *)data;
  if (d->key && !d->tag && (d->failed = tag_begin(d) != 0))
    return 0;
  while (left > 0) {
    size_t room = left; /* with a tag, what is left of the stream */
    if (d->key && d->total && d->offset >= d->total) {
      if ((d->failed = take_trailer(d, &p, &left) != 0))
        return 0;
      continue;
    }
    if (d->key && d->total && room > d->total - d->offset)
      room = (size_t)(d->total - d->offset);
    const uint8_t *at = p;
    size_t slice = room;
    replicate_stream_event ev = replicate_stream_reader_take(&d->stream, &p, &slice);
    size_t used = room - slice;
    if (d->tag && replicate_tag_stream_update(d->tag, at, used) != 0) {
      snprintf(d->error, sizeof d->error, "the backup's tag: %s", strerror(ENOMEM));
      d->failed = 1;
      return 0;
    }
    d->offset += used;
    left -= used;
    if (on_stream_event(d, ev)) {
      d->failed = 1;
      return 0;
    }
  }
  return len;
}

/* Tagged and complete: the trailer must be the stream's tag. 1 good, 0
 * not all of it yet, -1 refused (d->error). */
static int tag_outcome(download *d)
{
  if (d->trailer_len < sizeof d->trailer)
    return 0;
  int rc = replicate_tag_stream_check(d->tag, d->trailer);
  if (rc)
    snprintf(d->error, sizeof d->error, "the backup is refused: %s: its tag under key "
             "id %.16s does not match the stream (altered on the way, or another key "
             "under that id)", replicate_error_name(rc), d->tag_header);
  return rc ? -1 : 1;
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
  const char *names[] = {"image", "hashes", "meta", "log", "lock"};
  char p[4200 + 16]; /* path is at most 4200 bytes (cli_backup_pull's tmp) */
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    if (snprintf(p, sizeof p, "%s/%s", path, names[i]) >= (int)sizeof p)
      return;
    unlink(p);
  }
  rmdir(path);
}

/* One request for the backup: from the start, or resumed at d->offset
 * when the server named the stream (If-Range on its ETag). */
static CURLcode download_once(download *d, CURL *c, const char *url,
                              const struct curl_slist *base_headers,
                              const char *ca_file)
{
  struct curl_slist *headers = NULL;
  for (const struct curl_slist *h = base_headers; h; h = h->next)
    headers = curl_slist_append(headers, h->data);
  char range[128], ifrange[300];
  if (d->key) {
    /* The tag covers the whole stream: a break starts again from byte 0. */
    headers = curl_slist_append(headers, REPLICATE_WANT_TAG_HEADER ": trailer");
    download_reset(d);
  } else if (d->offset > 0 && d->etag[0]) {
    snprintf(range, sizeof range, "Range: bytes=%llu-", (unsigned long long)d->offset);
    snprintf(ifrange, sizeof ifrange, "If-Range: %s", d->etag);
    headers = curl_slist_append(headers, range);
    headers = curl_slist_append(headers, ifrange);
  } else {
    download_reset(d);
  }
  uint64_t resumed_from = d->offset;
  curl_easy_reset(c);
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, d);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, d);
  curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(c, CURLOPT_XFERINFODATA, d);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 30L);
  if (ca_file)
    curl_easy_setopt(c, CURLOPT_CAINFO, ca_file);
  d->status = 0;
  d->restarted = 0;
  CURLcode cr = curl_easy_perform(c);
  curl_slist_free_all(headers);
  if (d->restarted && resumed_from > 0)
    fprintf(stderr, "loomship backup: the backup moved to a new position; "
                    "it was downloaded again from the start\n");
  if (d->new_etag[0])
    strcpy(d->etag, d->new_etag);
  return cr;
}

/* What an attempt came to: 1 the whole stream is in, 0 try again (the
 * reason in message), -1 stop (d->failed, or retrying will not help). */
static int attempt_outcome(download *d, CURLcode cr, const char *url, char *message,
                           size_t size)
{
  if (d->failed)
    return -1;
  if (cr != CURLE_OK) {
    snprintf(message, size, "%s: %s", url, curl_easy_strerror(cr));
    /* Nothing came yet and the node cannot be reached at all (refused, no
     * such host, a URL curl cannot use): a wrong URL, not a break that a
     * retry mends. Fail now rather than after minutes of backoff. */
    bool unreachable = cr == CURLE_COULDNT_CONNECT || cr == CURLE_COULDNT_RESOLVE_HOST ||
                       cr == CURLE_UNSUPPORTED_PROTOCOL || cr == CURLE_URL_MALFORMAT;
    return d->offset == 0 && d->status == 0 && unreachable ? -1 : 0;
  }
  if (d->status == 416) {
    download_reset(d);
    snprintf(message, size, "range refused");
    return 0;
  }
  if (d->status != 200 && d->status != 206) {
    snprintf(message, size, "HTTP %ld from %s", d->status, url);
    if (d->status == 401 || d->status == 403 || d->status == 404)
      return -1; /* retrying will not help */
    return 0;
  }
  if (replicate_stream_reader_complete(&d->stream)) {
    int t = d->key ? tag_outcome(d) : 1;
    if (t < 0)
      d->failed = 1;
    if (t)
      return t;
  }
  snprintf(message, size, "the download ended early");
  return 0;
}

/* Download the backup into d, resuming up to retries times with backoff.
 * 1 when the whole stream is in. */
static int download_all(download *d, const char *from, const char *token,
                        const char *ca_file, uint64_t retries, char *message,
                        size_t size)
{
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
  for (uint64_t attempt = 0; !done && !d->failed && attempt <= retries; attempt++) {
    if (attempt > 0) {
      unsigned wait = attempt < 5 ? 1u << (attempt - 1) : 16u;
      fprintf(stderr, "loomship backup: %s; resuming at byte %llu in %u s\n", message,
              (unsigned long long)d->offset, wait);
      sleep(wait);
    }
    CURLcode cr = download_once(d, c, url, base_headers, ca_file);
    int outcome = attempt_outcome(d, cr, url, message, size);
    if (outcome < 0)
      break;
    done = outcome;
  }
  curl_easy_cleanup(c);
  curl_slist_free_all(base_headers);
  if (auth) {
    memset(auth, 0, strlen(auth));
    free(auth);
  }
  free(url);
  return done;
}

/* The downloaded directory tmp, verified, becomes out (durably). */
static int install_backup(const char *tmp, const char *out, int quiet)
{
  loom_position rec;
  uint64_t computed;
  int rc;
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

/* The pages did not sum to the stream's checksum: the source's image does
 * not match its own checksum. Say where, when the source can tell (its
 * recorded page hashes at the same position, GET /v1/tree). */
static void say_where(const download *d, const char *from, const char *token,
                      const char *ca_file, char *message, size_t cap)
{
  uint64_t bad[8];
  size_t n = 0;
  int len = snprintf(message, cap, "the image at %s does not match its checksum "
                     "(epoch %llu, seq %llu): ", from, (unsigned long long)d->stream.position.epoch,
                     (unsigned long long)d->stream.position.seq);
  if (len < 0 || (size_t)len >= cap)
    return;
  if (!d->hashes || cli_tree_find_bad_pages(from, token, ca_file, d->key, &d->stream.position,
                                            d->hashes, bad, 8, &n) != 0 || n == 0) {
    snprintf(message + len, cap - (size_t)len, "its image is damaged, or the "
             "download was altered on the way (it moved on: no page can be named)");
    return;
  }
  for (size_t i = 0; i < n && i < 8; i++)
    len += snprintf(message + len, cap - (size_t)len, "%spage %llu", i ? ", " : "",
                    (unsigned long long)bad[i]);
  snprintf(message + len, cap - (size_t)len, "%s %s not match %s recorded hash "
           "(its disk changed %s): repair or resync that node", n > 8 ? " and more" : "",
           n == 1 ? "does" : "do", n == 1 ? "its" : "their", n == 1 ? "it" : "them");
}

int cli_backup_pull(const char *from, const char *out, const char *token,
                    const char *ca_file, uint64_t retries, int quiet)
{
  return cli_backup_pull_keyed(from, out, token, ca_file, NULL, retries, quiet);
}

int cli_backup_pull_keyed(const char *from, const char *out, const char *token,
                          const char *ca_file, const replicate_frame_key *key,
                          uint64_t retries, int quiet)
{
  int rc = 0;
  struct stat st;
  if (stat(out, &st) == 0)
    return cli_fail("backup", "%s exists: a backup never replaces a directory", out);
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.partial-%d", out, (int)getpid());
  download d = {.tmp = tmp, .tty = isatty(STDERR_FILENO), .start = loom_mono_s(),
                .quiet = quiet, .key = key};
  if (replicate_stream_reader_init(&d.stream))
    return cli_fail("backup", "%s", strerror(ENOMEM));
  char message[600] = "";
  int done = download_all(&d, from, token, ca_file, retries, message, sizeof message);
  if (done) {
    progress_line(&d, 1);
    rc = loom_patch_commit(d.patch); /* checks every page against the checksum */
    d.patch = NULL;
    if (rc == LOOM_EPOSITION)
      say_where(&d, from, token, ca_file, message, sizeof message);
    else if (rc)
      snprintf(message, sizeof message, "the backup does not verify: %s", loom_strerror(rc));
  } else if (d.failed) {
    snprintf(message, sizeof message, "%s", d.error);
  }
  int close_rc = d.store ? loom_store_close(d.store) : 0;
  if (d.patch)
    loom_patch_abort(d.patch);
  replicate_stream_reader_free(&d.stream);
  replicate_tag_stream_free(d.tag);
  free(d.hashes);
  if (!done || rc || close_rc) {
    remove_tree(tmp);
    return cli_fail("backup", "%s", message[0] ? message : loom_strerror(close_rc));
  }
  return install_backup(tmp, out, quiet);
}

static int run_backup(void *args)
{
  const remote_args a = *(const remote_args *)args;
  char *token;
  int rc;
  if ((rc = load_token("backup", &a, &token)))
    return rc;
  replicate_frame_key *key = NULL;
  rc = cli_frame_key_read("backup", a.frame_key_file, &key);
  if (!rc)
    rc = cli_backup_pull_keyed(a.url, a.out, token, a.ca_file, key, a.retries, 0);
  replicate_frame_key_free(key);
  cli_token_forget(token);
  return rc;
}

const cli_command cmd_backup = {
    .name = "backup",
    .summary = "pull a consistent backup over HTTP, verify it, write it atomically",
    .options = backup_options, .args_size = sizeof(remote_args), .run = run_backup};
const cli_command cmd_status = {
    .name = "status", .summary = "print a node's status, lag first",
    .options = status_options, .positional = "URL",
    .positional_offset = offsetof(remote_args, url), .args_size = sizeof(remote_args),
    .run = run_status};
const cli_command cmd_promote = {
    .name = "promote", .summary = "promote a standby to primary at a new epoch",
    .options = promote_options, .positional = "URL",
    .positional_offset = offsetof(remote_args, url), .args_size = sizeof(remote_args),
    .run = run_promote};
