/*
 * repair.c: writing the good copies of rotted pages that a standby fetched
 * from its upstream (replicate.h, "Self-repair"; DESIGN section 8; the
 * protocol in docs/INTEGRITY.md).
 *
 * A pages answer is trusted only as far as it agrees with the standby's
 * own record: its history and position must be the store's (the upstream
 * answered at the position the standby is at), it must hold exactly the
 * pages asked for, and each page's contents must hash to the hash the
 * answer gives and to the hash the standby recorded when it wrote that page
 * at this position. Only then are the pages written, as one
 * LOOM_PATCH_REPAIR patch (durable through the store's commit protocol,
 * position unchanged), and read back once the apply is done.
 *
 * replicate_repair_from fetches by itself, through a source's GET, and
 * takes the upstream at its own position (a standby that a frame no longer
 * applies to is behind its primary by that frame at least):
 *   R1. pin the upstream (a tree request): same history and epoch (one
 *       line of commits), at or past our position;
 *   R2. read its page hashes at the pin, which must add up to its checksum
 *       (at our own position they are ours: nothing is fetched);
 *   R3. the pages to move: where its hash is not ours (changed since our
 *       position, or new) and the bad pages; more than half the image (or
 *       REPLICATE_REPAIR_MAX_PAGES) is a base image's job (REPLICATE_ETOOBIG);
 *   R4. fetch them at the pin, each hashing to its hash there;
 *   R5. write them as one patch from our position to the pin (a repair
 *       patch when the two are the same), and read them back.
 * The store's own check at commit (the after checksum from the pages)
 * holds the pieces together: nothing is written unless every page hashes
 * to the upstream's and the sum is its checksum.
 *
 * replicate_rewind_from is the same walk for a cluster member whose
 * history went past the branch point of its leader's epoch (DESIGN
 * section 3's one exception, section 6 "Rejoin"):
 *   W1. pin the leader; the rule of place.c (P5) must allow the move
 *       (the leader's lineage, handed in, of our history, its newest
 *       branch the pin's epoch; the pin at the allowed epoch or newer);
 *   W2-W4. as R2-R4, the pages compared with ours at our position;
 *   W5. adopt the leader's lineage, then write one LOOM_PATCH_REWIND
 *       patch from our position to the pin (sideways: any seq), and read
 *       the pages back. One commit: a crash leaves the old position or
 *       the leader's, never pages of both.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "replicate.h"

/* The answer's head against the store and the request: 0 or an error. */
static int repair_head_ok(loom_store *store, const replicate_answer_head *h,
                          uint64_t count)
{
  loom_position pos;
  loom_lineage lineage;
  loom_store_position(store, &pos);
  loom_store_lineage(store, &lineage);
  if (h->kind != REPLICATE_ANSWER_PAGES || h->count != count)
    return REPLICATE_EANSWER;
  if (!loom_history_equal(&h->history, &lineage.history))
    return REPLICATE_EHISTORY;
  if (!loom_position_same(&h->position, &pos))
    return REPLICATE_EPOSITION;
  return 0;
}

/* Entry i against pages[i] and the store's record: 0 or an error. */
static int repair_entry_ok(loom_store *store, const uint8_t *answer, uint64_t i,
                           uint64_t want, const uint8_t **contents)
{
  uint64_t n, hash;
  replicate_answer_page(answer, i, &n, &hash, contents);
  if (n != want)
    return REPLICATE_EANSWER;
  if (loom_page_hash(n, *contents) != hash || hash != loom_store_page_hash(store, n))
    return REPLICATE_EPAGE_HASH;
  return 0;
}

/* Every page read back from the image matches its recorded hash. */
static int repair_readback(loom_store *store, const uint64_t *pages, uint64_t count)
{
  uint64_t checksum, bad;
  loom_position pos;
  int rc = loom_store_sync(store);
  if (!rc)
    rc = replicate_pages_readback(store, pages, count, &checksum, &bad);
  if (rc)
    return rc;
  loom_store_position(store, &pos);
  return bad == UINT64_MAX && checksum == pos.checksum ? 0 : REPLICATE_EPAGE_HASH;
}

int replicate_repair_pages(loom_store *store, const uint8_t *answer, size_t len,
                           const uint64_t *pages, uint64_t count)
{
  if (!store || !answer || !pages || count == 0)
    return REPLICATE_EINVAL;
  replicate_answer_head h;
  int rc = replicate_answer_decode(answer, len, &h);
  if (!rc)
    rc = repair_head_ok(store, &h, count);
  for (uint64_t i = 0; !rc && i < count; i++) {
    const uint8_t *contents;
    rc = repair_entry_ok(store, answer, i, pages[i], &contents);
  }
  if (rc)
    return rc;
  loom_patch_header ph = {.page_count = count, .flags = LOOM_PATCH_REPAIR};
  loom_store_position(store, &ph.before);
  ph.after = ph.before;
  loom_patch *p;
  if ((rc = loom_store_patch_begin(store, &ph, &p)))
    return rc;
  for (uint64_t i = 0; !rc && i < count; i++) {
    uint64_t n, hash;
    const uint8_t *contents;
    replicate_answer_page(answer, i, &n, &hash, &contents);
    rc = loom_patch_add(p, n, contents);
  }
  if (rc) {
    loom_patch_abort(p);
    return rc;
  }
  if ((rc = loom_patch_commit(p)))
    return rc;
  return repair_readback(store, pages, count);
}

/* ---------------------------------------------------------------------- */
/* Repair from an upstream at its own position (replicate_repair_from) */

/* A fetch in progress: the upstream's pinned position, its page hashes,
 * the pages to move and the answers holding them. */
typedef struct repair_job {
  loom_store *store;
  const replicate_repair_source *src;
  char *why;
  size_t why_len;
  loom_position ours;
  loom_lineage lineage;
  replicate_answer_head pin;
  uint64_t *hashes;             /* the upstream's, pin.position.pages */
  uint64_t *move;               /* pages to write, ascending */
  uint64_t nmove;
  uint8_t **answers;            /* one per REPLICATE_PAGES_MAX pages */
  size_t *lens;
  uint64_t nanswers;
  unsigned flags;               /* the patch's: 0, or LOOM_PATCH_REWIND */
  const loom_lineage *adopt;    /* a rewind: the lineage adopted first */
} repair_job;

static void job_free(repair_job *j)
{
  for (uint64_t i = 0; i < j->nanswers; i++)
    free(j->answers[i]);
  free(j->answers);
  free(j->lens);
  free(j->hashes);
  free(j->move);
}

/* GET path, decoded into *head: 0 or an error (why filled). */
static int job_get(repair_job *j, const char *path, replicate_tag_kind kind,
                   uint8_t **body, size_t *len, replicate_answer_head *head)
{
  *body = NULL;
  int rc = j->src->get(j->src->ctx, path, kind, body, len, j->why, j->why_len);
  if (!rc && replicate_answer_decode(*body, *len, head) != 0) {
    snprintf(j->why, j->why_len, "the upstream's answer to %s is malformed", path);
    rc = REPLICATE_EANSWER;
  }
  if (rc) {
    free(*body);
    *body = NULL;
  }
  return rc;
}

/* R1: the upstream's position and history now (a tree request). */
static int job_pin_get(repair_job *j)
{
  uint8_t *body;
  size_t len;
  int rc = job_get(j, "/v1/tree?level=0&first=0&count=0", REPLICATE_TAG_TREE, &body,
                   &len, &j->pin);
  free(body);
  return rc;
}

/* R1: pin the upstream; it must be on our history and epoch, at or past
 * our position (one epoch of one history is one line of commits, so a
 * position past ours includes ours). */
static int job_pin(repair_job *j)
{
  int rc = job_pin_get(j);
  if (rc)
    return rc;
  const loom_position *p = &j->pin.position;
  if (!loom_history_equal(&j->pin.history, &j->lineage.history))
    rc = REPLICATE_EHISTORY;
  else if (p->epoch != j->ours.epoch || p->seq < j->ours.seq || p->pages < j->ours.pages ||
           (p->seq == j->ours.seq && !loom_position_same(p, &j->ours)))
    rc = REPLICATE_EPOSITION;
  if (rc)
    snprintf(j->why, j->why_len, "the upstream is at epoch %" PRIu64 " seq %" PRIu64
             " of %s history; this node at epoch %" PRIu64 " seq %" PRIu64,
             p->epoch, p->seq, rc == REPLICATE_EHISTORY ? "another" : "our",
             j->ours.epoch, j->ours.seq);
  return rc;
}

/* R2: the upstream's page hashes at the pin, which must add up to its
 * checksum; at our own position they are ours (nothing to fetch). */
static int job_hashes(repair_job *j)
{
  const loom_position *p = &j->pin.position;
  j->hashes = malloc((size_t)(p->pages ? p->pages : 1) * sizeof *j->hashes);
  if (!j->hashes)
    return ENOMEM;
  uint64_t sum = 0;
  if (loom_position_same(p, &j->ours)) { /* the same position: ours are its hashes */
    for (uint64_t n = 0; n < p->pages; n++)
      j->hashes[n] = loom_store_page_hash(j->store, n);
    return 0;
  }
  for (uint64_t first = 0; first < p->pages; first += REPLICATE_TREE_MAX_NODES) {
    uint64_t count = p->pages - first < REPLICATE_TREE_MAX_NODES ? p->pages - first
                                                                 : REPLICATE_TREE_MAX_NODES;
    char path[160];
    snprintf(path, sizeof path, "/v1/tree?seq=%" PRIu64 "&level=0&first=%" PRIu64
             "&count=%" PRIu64, p->seq, first, count);
    uint8_t *body;
    size_t len;
    replicate_answer_head h;
    int rc = job_get(j, path, REPLICATE_TAG_TREE, &body, &len, &h);
    if (!rc && (h.kind != REPLICATE_ANSWER_TREE || h.count != count ||
                !loom_position_same(&h.position, p))) {
      snprintf(j->why, j->why_len, "the upstream answered %s at another position", path);
      rc = REPLICATE_EANSWER;
    }
    for (uint64_t i = 0; !rc && i < count; i++)
      sum += j->hashes[first + i] = replicate_answer_node(body, i);
    free(body);
    if (rc)
      return rc;
  }
  if (sum != p->checksum) {
    snprintf(j->why, j->why_len, "the upstream's page hashes do not add up to its checksum");
    return REPLICATE_EANSWER;
  }
  return 0;
}

static bool listed(const uint64_t *v, uint64_t n, uint64_t x)
{
  for (uint64_t i = 0; i < n; i++)
    if (v[i] == x)
      return true;
  return false;
}

/* R3: the pages to move: those whose upstream hash is not ours (changed
 * since our position, or new), and the bad ones. */
static int job_plan(repair_job *j, const uint64_t *bad, uint64_t nbad)
{
  const loom_position *p = &j->pin.position;
  /* Most of the image (bad pages included), or more than the limit: a
   * base image moves it for less (DESIGN section 8). */
  uint64_t cap = p->pages / 2 > REPLICATE_REPAIR_MAX_PAGES ? REPLICATE_REPAIR_MAX_PAGES
                                                          : p->pages / 2;
  j->move = malloc((size_t)(cap ? cap : 1) * sizeof *j->move);
  if (!j->move)
    return ENOMEM;
  for (uint64_t n = 0; n < p->pages; n++) {
    if (n < j->ours.pages && j->hashes[n] == loom_store_page_hash(j->store, n) &&
        !listed(bad, nbad, n))
      continue;
    if (j->nmove == cap) {
      snprintf(j->why, j->why_len, "more than %" PRIu64 " of %" PRIu64 " pages differ "
               "from the upstream's: a base image replaces the image", cap, p->pages);
      return REPLICATE_ETOOBIG;
    }
    j->move[j->nmove++] = n;
  }
  return 0;
}

/* "/v1/pages?seq=S&pages=A-B,C" for move[first, first + count). */
static char *pages_path(uint64_t seq, const uint64_t *move, uint64_t count)
{
  size_t cap = 64 + (size_t)count * 42;
  char *path = malloc(cap);
  if (!path)
    return NULL;
  size_t at = (size_t)snprintf(path, cap, "/v1/pages?seq=%" PRIu64 "&pages=", seq);
  const char *sep = "";
  for (uint64_t i = 0; i < count; i++) {
    uint64_t first = move[i];
    while (i + 1 < count && move[i + 1] == move[i] + 1)
      i++;
    int n = move[i] == first
                ? snprintf(path + at, cap - at, "%s%" PRIu64, sep, first)
                : snprintf(path + at, cap - at, "%s%" PRIu64 "-%" PRIu64, sep, first, move[i]);
    at += n > 0 ? (size_t)n : 0;
    sep = ",";
  }
  return path;
}

/* Answer a holds move[first, first + count) at the pin, each page hashing
 * to the upstream's hash for it: 0 or an error (why filled). */
static int answer_ok(repair_job *j, const uint8_t *a, const replicate_answer_head *h,
                     uint64_t first, uint64_t count)
{
  if (h->kind != REPLICATE_ANSWER_PAGES || h->count != count ||
      !loom_position_same(&h->position, &j->pin.position)) {
    snprintf(j->why, j->why_len, "the upstream's pages answer is not the one asked for");
    return REPLICATE_EANSWER;
  }
  for (uint64_t i = 0; i < count; i++) {
    uint64_t n, hash;
    const uint8_t *contents;
    replicate_answer_page(a, i, &n, &hash, &contents);
    if (n != j->move[first + i]) {
      snprintf(j->why, j->why_len, "the upstream's pages answer is not the one asked for");
      return REPLICATE_EANSWER;
    }
    if (loom_page_hash(n, contents) != hash || hash != j->hashes[n]) {
      snprintf(j->why, j->why_len, "page %" PRIu64 " from the upstream refused: it "
               "does not match its hash there (rotted upstream too?)", n);
      return REPLICATE_EPAGE_HASH;
    }
  }
  return 0;
}

/* R4: fetch the pages to move, REPLICATE_PAGES_MAX an answer. */
static int job_fetch(repair_job *j)
{
  uint64_t slots = (j->nmove + REPLICATE_PAGES_MAX - 1) / REPLICATE_PAGES_MAX;
  j->answers = calloc((size_t)(slots ? slots : 1), sizeof *j->answers);
  j->lens = calloc((size_t)(slots ? slots : 1), sizeof *j->lens);
  if (!j->answers || !j->lens)
    return ENOMEM;
  for (uint64_t first = 0; first < j->nmove; first += REPLICATE_PAGES_MAX) {
    uint64_t count = j->nmove - first < REPLICATE_PAGES_MAX ? j->nmove - first
                                                            : REPLICATE_PAGES_MAX;
    char *path = pages_path(j->pin.position.seq, j->move + first, count);
    if (!path)
      return ENOMEM;
    replicate_answer_head h;
    uint64_t k = j->nanswers;
    int rc = job_get(j, path, REPLICATE_TAG_PAGES, &j->answers[k], &j->lens[k], &h);
    free(path);
    if (rc)
      return rc;
    j->nanswers++;
    if ((rc = answer_ok(j, j->answers[k], &h, first, count)))
      return rc;
  }
  return 0;
}

/* R5: one patch from our position to the pin (a repair patch when they
 * are the same), then the pages read back. */
static int job_write(repair_job *j)
{
  bool same = loom_position_same(&j->pin.position, &j->ours) && !j->flags;
  loom_patch_header ph = {.before = j->ours, .after = j->pin.position,
                          .page_count = j->nmove,
                          .flags = same ? LOOM_PATCH_REPAIR : j->flags};
  if (same)
    ph.after = j->ours;
  loom_patch *p = NULL;
  /* A rewind: the lineage first (durable in the meta), then the pages,
   * as a base image does: a crash between leaves the old position under
   * the leader's lineage, which refuses the leader's frames as before
   * (the rewind is done again). */
  int rc = j->adopt ? loom_store_adopt_lineage(j->store, j->adopt) : 0;
  if (!rc)
    rc = loom_store_patch_begin(j->store, &ph, &p);
  for (uint64_t a = 0; !rc && a < j->nanswers; a++) {
    replicate_answer_head h;
    (void)replicate_answer_decode(j->answers[a], j->lens[a], &h);
    for (uint64_t i = 0; !rc && i < h.count; i++) {
      uint64_t n, hash;
      const uint8_t *contents;
      replicate_answer_page(j->answers[a], i, &n, &hash, &contents);
      rc = loom_patch_add_hashed(p, n, contents, hash);
    }
  }
  if (rc && p) {
    loom_patch_abort(p);
    return rc;
  }
  if (rc || (rc = loom_patch_commit(p)))
    return rc;
  rc = repair_readback(j->store, j->move, j->nmove);
  if (rc)
    snprintf(j->why, j->why_len, "a page written from the upstream does not read back");
  return rc;
}

int replicate_repair_from(loom_store *store, const replicate_repair_source *src,
                          const uint64_t *bad, uint64_t nbad, uint64_t *moved,
                          char *why, size_t why_len)
{
  *moved = 0;
  if (why_len)
    why[0] = '\0';
  if (!store || !src || !src->get || (nbad && !bad))
    return REPLICATE_EINVAL;
  repair_job j = {.store = store, .src = src, .why = why, .why_len = why_len};
  loom_store_position(store, &j.ours);
  loom_store_lineage(store, &j.lineage);
  int rc = job_pin(&j);
  if (!rc)
    rc = job_hashes(&j);
  if (!rc)
    rc = job_plan(&j, bad, nbad);
  if (!rc && j.nmove)
    rc = job_fetch(&j);
  if (!rc && j.nmove)
    rc = job_write(&j);
  if (!rc)
    *moved = j.nmove;
  job_free(&j);
  return rc;
}

/* ---------------------------------------------------------------------- */
/* Rewind to an upstream of a newer epoch (replicate_rewind_from) */

/* W1: the pinned leader against lineage and the store (P5 of place.c). */
static int rewind_pin_ok(repair_job *j, const loom_lineage *lineage, uint64_t allowed_epoch)
{
  const loom_position *p = &j->pin.position;
  const loom_lineage *l = lineage;
  if (!loom_history_equal(&j->pin.history, &l->history) || l->branch_count == 0 ||
      l->branches[l->branch_count - 1].epoch != p->epoch) {
    snprintf(j->why, j->why_len, "the leader's lineage is not the one of its position "
             "(epoch %" PRIu64 ")", p->epoch);
    return REPLICATE_EANSWER;
  }
  int place = replicate_place_base(&j->lineage.history, &j->ours, p, l);
  if (replicate_place_rewind(place, &j->lineage.history, &j->ours, allowed_epoch, p, l))
    return 0;
  snprintf(j->why, j->why_len, "no rewind to epoch %" PRIu64 " seq %" PRIu64 " from "
           "epoch %" PRIu64 " seq %" PRIu64 ": %s", p->epoch, p->seq, j->ours.epoch,
           j->ours.seq, place ? replicate_strerror(place) : "not diverged, or not allowed");
  return place && place != REPLICATE_EDUPLICATE ? place : REPLICATE_EPOSITION;
}

int replicate_rewind_from(loom_store *store, const replicate_repair_source *src,
                          const loom_lineage *lineage, uint64_t allowed_epoch,
                          uint64_t *moved, char *why, size_t why_len)
{
  *moved = 0;
  if (why_len)
    why[0] = '\0';
  if (!store || !src || !src->get || !lineage)
    return REPLICATE_EINVAL;
  repair_job j = {.store = store, .src = src, .why = why, .why_len = why_len,
                  .flags = LOOM_PATCH_REWIND, .adopt = lineage};
  loom_store_position(store, &j.ours);
  loom_store_lineage(store, &j.lineage);
  int rc = job_pin_get(&j);                               /* W1 */
  if (!rc)
    rc = rewind_pin_ok(&j, lineage, allowed_epoch);
  if (!rc)
    rc = job_hashes(&j);                                  /* W2 */
  if (!rc)
    rc = job_plan(&j, NULL, 0);                           /* W3 */
  if (!rc && j.nmove)
    rc = job_fetch(&j);                                   /* W4 */
  if (!rc)
    rc = job_write(&j);                                   /* W5 */
  if (!rc)
    *moved = j.nmove;
  job_free(&j);
  return rc;
}
