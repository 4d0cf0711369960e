/*
 * integrity.c: GET /v1/tree and GET /v1/pages (DESIGN section 8; formats
 * in replicate.h and docs/INTEGRITY.md), at one pinned position.
 *
 * THE PIN. A tree request without seq opens a snapshot at the image's
 * current position and pins it; requests naming its seq read from it (the
 * tree from the snapshot's copy, pages from its pages) while applies go
 * on, as backups do. One pin per server: a new one replaces the old, which
 * closes when its last request ends. A pin unused for HTTP_PIN_IDLE_S is
 * closed by the reaper thread, so a forgotten compare does not keep a
 * snapshot (which copies every page an apply overwrites) for long.
 * A request naming another seq is answered 409 REPLICATE_EUNPINNED with
 * the pinned position, if any: the client pins again.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "integrity.h"
#include "replicate.h"
#include "util.h"

typedef struct pin {
  loom_snapshot *snap;
  loom_position pos;
  loom_lineage lineage;
  unsigned refs;                /* requests reading it, plus 1 while pinned */
  int64_t used_ns;              /* CLOCK_MONOTONIC, last request */
} pin;

struct http_integrity {
  http_backup_source source;
  pthread_mutex_t mu;
  pthread_cond_t cond;
  pin *current;                 /* mu */
  bool stopping;                /* mu */
  pthread_t reaper;
};

static int64_t mono_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Under mu: one reference less; the last closes the snapshot. */
static void pin_release_locked(http_integrity *in, pin *p)
{
  if (--p->refs > 0)
    return;
  in->source.close(in->source.ctx, p->snap);
  free(p);
}

/* Under mu: the current pin is no longer current. */
static void unpin_locked(http_integrity *in)
{
  if (!in->current)
    return;
  pin *p = in->current;
  in->current = NULL;
  pin_release_locked(in, p);
}

static void *reaper_main(void *arg)
{
  http_integrity *in = arg;
  pthread_mutex_lock(&in->mu);
  while (!in->stopping) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 1;
    pthread_cond_timedwait(&in->cond, &in->mu, &until);
    if (in->current &&
        mono_ns() - in->current->used_ns > HTTP_PIN_IDLE_S * INT64_C(1000000000))
      unpin_locked(in);
  }
  unpin_locked(in);
  pthread_mutex_unlock(&in->mu);
  return NULL;
}

int http_integrity_create(const http_backup_source *source, http_integrity **out)
{
  http_integrity *in = calloc(1, sizeof *in);
  if (!in)
    return ENOMEM;
  in->source = *source;
  pthread_mutex_init(&in->mu, NULL);
  pthread_cond_init(&in->cond, NULL);
  int rc = pthread_create(&in->reaper, NULL, reaper_main, in);
  if (rc) {
    pthread_mutex_destroy(&in->mu);
    pthread_cond_destroy(&in->cond);
    free(in);
    return rc;
  }
  *out = in;
  return 0;
}

void http_integrity_free(http_integrity *in)
{
  if (!in)
    return;
  pthread_mutex_lock(&in->mu);
  in->stopping = true;
  pthread_cond_broadcast(&in->cond);
  pthread_mutex_unlock(&in->mu);
  pthread_join(in->reaper, NULL);
  pthread_mutex_destroy(&in->mu);
  pthread_cond_destroy(&in->cond);
  free(in);
}

/* A new pin at the current position, replacing the old: 0 or the
 * snapshot's error. */
static int pin_anew(http_integrity *in, pin **out)
{
  if (!in->source.open)
    return ENOTSUP;
  pin *p = calloc(1, sizeof *p);
  if (!p)
    return ENOMEM;
  int rc = in->source.open(in->source.ctx, &p->snap);
  if (rc) {
    free(p);
    return rc;
  }
  loom_snapshot_position(p->snap, &p->pos);
  loom_snapshot_lineage(p->snap, &p->lineage);
  p->refs = 2; /* pinned, and this request */
  p->used_ns = mono_ns();
  pthread_mutex_lock(&in->mu);
  unpin_locked(in);
  in->current = p;
  pthread_mutex_unlock(&in->mu);
  *out = p;
  return 0;
}

/* The pin at seq, referenced for this request; NULL when none. */
static pin *pin_at(http_integrity *in, uint64_t seq, loom_position *pinned,
                   bool *has_pinned)
{
  pthread_mutex_lock(&in->mu);
  pin *p = in->current;
  *has_pinned = p != NULL;
  if (p)
    *pinned = p->pos;
  if (p && p->pos.seq == seq) {
    p->refs++;
    p->used_ns = mono_ns();
  } else {
    p = NULL;
  }
  pthread_mutex_unlock(&in->mu);
  return p;
}

static void pin_done(http_integrity *in, pin *p)
{
  pthread_mutex_lock(&in->mu);
  pin_release_locked(in, p);
  pthread_mutex_unlock(&in->mu);
}

/* 400 with the code, naming what was wrong. */
static unsigned refuse(http_reply *reply, unsigned status, int rc,
                       const char *detail)
{
  http_reply_error(reply, status, replicate_strerror(rc));
  http_json_key(&reply->body, "code");
  http_json_string(&reply->body, http_error_name(rc));
  http_json_key(&reply->body, "detail");
  http_json_string(&reply->body, detail);
  return reply->status;
}

/* The pin a request names (seq), or a new one (no seq, allow_new): NULL
 * with the reply filled when there is none. */
static pin *take_pin(http_integrity *in, const char *seq_text, bool allow_new,
                     http_reply *reply, unsigned *status)
{
  pin *p = NULL;
  if (!seq_text) {
    int rc = allow_new ? pin_anew(in, &p) : REPLICATE_EREQUEST;
    if (rc == REPLICATE_EREQUEST)
      *status = refuse(reply, 400, rc, "seq is required");
    else if (rc) {
      *status = refuse(reply, 503, rc, "no snapshot of the image to read from");
      reply->retry_after = 1;
    }
    return p;
  }
  uint64_t seq;
  if (replicate_parse_u64(seq_text, &seq)) {
    *status = refuse(reply, 400, REPLICATE_EREQUEST, "seq is not a number");
    return NULL;
  }
  loom_position pinned;
  bool has_pinned;
  p = pin_at(in, seq, &pinned, &has_pinned);
  if (!p) {
    *status = refuse(reply, 409, REPLICATE_EUNPINNED,
                     "ask for the tree without seq to pin the current position");
    http_json_key(&reply->body, "pinned");
    if (has_pinned)
      http_json_position(&reply->body, &pinned);
    else
      http_json_null(&reply->body);
  }
  return p;
}

static void head_of(const pin *p, replicate_answer_kind kind,
                    replicate_answer_head *h)
{
  memset(h, 0, sizeof *h);
  h->kind = kind;
  h->history = p->lineage.history;
  h->position = p->pos;
}

/* level, first, count of a tree request against the pinned tree. */
static int tree_args(const http_integrity_query *q, const pin *p,
                     replicate_answer_head *h, const char **why)
{
  uint64_t level, first, count;
  *why = "level, first and count are required decimal numbers";
  if (replicate_parse_u64(q->level ? q->level : "", &level) ||
      replicate_parse_u64(q->first ? q->first : "", &first) ||
      replicate_parse_u64(q->count ? q->count : "", &count))
    return REPLICATE_EREQUEST;
  *why = "no such level, or nodes past the level's end, or more than "
         "65536 nodes";
  if (level >= LOOM_TREE_LEVELS || count > REPLICATE_TREE_MAX_NODES)
    return REPLICATE_EREQUEST;
  uint64_t nodes = loom_tree_nodes(p->pos.pages, (unsigned)level);
  if (first > nodes || count > nodes - first)
    return REPLICATE_EREQUEST;
  h->level = (unsigned)level;
  h->first = first;
  h->count = count;
  return 0;
}

/* The answer buf[0, size) sealed into *body (rc 0), or the refusal: 400
 * saying why for a malformed request, 503 otherwise. */
static unsigned finish(int rc, uint8_t *buf, size_t size, const char *why,
                       http_reply *reply, uint8_t **body, size_t *len)
{
  if (rc) {
    free(buf);
    return rc == REPLICATE_EREQUEST ? refuse(reply, 400, rc, why)
                                    : refuse(reply, 503, rc, "the image cannot be read");
  }
  replicate_answer_seal(buf, size);
  *body = buf;
  *len = size;
  return 200;
}

unsigned http_integrity_tree(http_integrity *in, const http_integrity_query *q,
                             http_reply *reply, uint8_t **body, size_t *len)
{
  unsigned status = 0;
  pin *p = take_pin(in, q->seq, true, reply, &status);
  if (!p)
    return status;
  replicate_answer_head h;
  head_of(p, REPLICATE_ANSWER_TREE, &h);
  const char *why;
  int rc = tree_args(q, p, &h, &why);
  uint64_t *nodes = NULL;
  uint8_t *buf = NULL;
  size_t size = replicate_answer_size(REPLICATE_ANSWER_TREE, h.count);
  if (!rc && (!(nodes = malloc((size_t)h.count * 8 + 8)) || !(buf = malloc(size))))
    rc = ENOMEM;
  if (!rc)
    rc = loom_snapshot_tree(p->snap, h.level, h.first, h.count, nodes);
  if (!rc) {
    replicate_answer_begin(&h, buf);
    for (uint64_t i = 0; i < h.count; i++)
      replicate_answer_put_node(buf, i, nodes[i]);
  }
  status = finish(rc, buf, size, why, reply, body, len);
  free(nodes);
  pin_done(in, p);
  return status;
}

/* Fill a pages answer for runs from the pin. */
static int pages_fill(const pin *p, const replicate_page_run *runs, size_t n,
                      uint8_t *buf, uint64_t count)
{
  uint64_t i = 0;
  for (size_t r = 0; r < n; r++)
    for (uint64_t pg = runs[r].first; pg <= runs[r].last; pg++, i++) {
      uint8_t *slot = replicate_answer_page_slot(buf, i);
      uint64_t hash;
      int rc = loom_snapshot_tree(p->snap, 0, pg, 1, &hash);
      if (!rc)
        rc = loom_snapshot_read(p->snap, pg * LOOM_PAGE_SIZE, slot, LOOM_PAGE_SIZE);
      if (rc)
        return rc;
      replicate_answer_put_page(buf, i, pg, hash, slot);
    }
  return i == count ? 0 : REPLICATE_EREQUEST;
}

unsigned http_integrity_pages(http_integrity *in, const http_integrity_query *q,
                              http_reply *reply, uint8_t **body, size_t *len)
{
  unsigned status = 0;
  pin *p = take_pin(in, q->seq, false, reply, &status);
  if (!p)
    return status;
  replicate_page_run runs[REPLICATE_PAGES_MAX];
  size_t n = 0;
  int rc = replicate_parse_ranges(q->pages, runs, REPLICATE_PAGES_MAX, &n,
                                  REPLICATE_PAGES_MAX);
  uint64_t count = 0;
  for (size_t r = 0; !rc && r < n; r++)
    count += runs[r].last - runs[r].first + 1;
  if (!rc && n > 0 && runs[n - 1].last >= p->pos.pages)
    rc = REPLICATE_EREQUEST;
  replicate_answer_head h;
  head_of(p, REPLICATE_ANSWER_PAGES, &h);
  h.count = count;
  size_t size = replicate_answer_size(REPLICATE_ANSWER_PAGES, count);
  uint8_t *buf = rc ? NULL : malloc(size);
  if (!rc && !buf)
    rc = ENOMEM;
  if (!rc) {
    replicate_answer_begin(&h, buf);
    rc = pages_fill(p, runs, n, buf, count);
  }
  status = finish(rc, buf, size, "pages must be ascending runs A-B,C of at "
                  "most 256 pages, below the image's length", reply, body, len);
  pin_done(in, p);
  return status;
}
