/*
 * coalesce.c: merge consecutive commit frames into one.
 *
 * DESIGN
 *
 * A standby at position B (the first frame's before) holds version v0 of
 * every page below B.pages. For each page the coalescer keeps what the
 * merged frame must say about it, as an *entry*:
 *
 *   DELTA  contents = v0 XOR newest    (the page existed at B and every
 *                                       change since came as a delta)
 *   WHOLE  contents = newest           (it was sent whole at least once, or
 *                                       its base was a zero page)
 *
 * A page without an entry is unchanged since B, except that a page at or
 * past B.pages, or at or past zero_from (the lowest image length any frame
 * shrank to), is a *zero page*: it did not exist at B, or was dropped and
 * reads as zeros if the image grows over it again unsent.
 *
 * Each frame is folded in with one merge of two ascending lists:
 *   whole page p:  entry(p) = WHOLE(contents)
 *   delta d of p:  an entry's contents ^= d (DELTA stays DELTA, WHOLE
 *                  stays WHOLE); without one, DELTA(d) if p's base is v0,
 *                  WHOLE(d) if its base is a zero page (0 ^ d = d).
 * then the frame's shrink is applied: entries at or past after.pages are
 * dropped and zero_from lowered to after.pages.
 *
 * The merged frame lists every entry, plus a whole zero page for each page
 * in [zero_from, min(B.pages, after.pages)) without an entry: the standby
 * still holds v0 there, which the primary dropped. Deltas are only of pages
 * below B.pages and zero_from, so the frame decodes (invariant 2 of
 * frame.c).
 */
#include "array.h"
#include "frame.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum entry_state { ENTRY_DELTA, ENTRY_WHOLE };

typedef struct coalesce_entry {
  uint64_t page_number;
  uint64_t hash;
  enum entry_state state;
  uint8_t *contents; /* LOOM_PAGE_SIZE bytes, from the pool */
} coalesce_entry;

struct replicate_coalescer {
  uint64_t max_pages;
  uint64_t frames;
  replicate_frame_info first;
  replicate_frame_info last;
  uint64_t zero_from;
  coalesce_entry *entries; /* ascending page_number */
  size_t count;
  size_t cap;
  coalesce_entry *merged;  /* scratch for one merge, at least count */
  size_t merged_cap;
  uint8_t **pool;          /* free page buffers */
  size_t pool_count;
  size_t pool_cap;         /* >= every page buffer allocated */
  size_t pages_allocated;
  uint8_t *zero_page;
};

int replicate_coalescer_new(uint64_t max_pages, replicate_coalescer **out)
{
  replicate_coalescer *c = calloc(1, sizeof *c);
  if (c == NULL) return ENOMEM;
  c->max_pages = max_pages ? max_pages
                           : replicate_limits_default().max_frame_pages;
  c->zero_page = calloc(1, LOOM_PAGE_SIZE);
  if (c->zero_page == NULL) {
    free(c);
    return ENOMEM;
  }
  *out = c;
  return 0;
}

static void page_release(replicate_coalescer *c, uint8_t *page)
{
  /* The pool can hold every buffer ever handed out (see page_take). */
  assert(c->pool_count < c->pool_cap);
  c->pool[c->pool_count++] = page;
}

static uint8_t *page_take(replicate_coalescer *c)
{
  if (c->pool_count > 0) return c->pool[--c->pool_count];
  /* Grow the pool's capacity first, so that releasing never fails. */
  if (loom_array_reserve(&c->pool, &c->pool_cap, c->pages_allocated + 1,
                         sizeof *c->pool) != 0)
    return NULL;
  uint8_t *page = malloc(LOOM_PAGE_SIZE);
  if (page != NULL) c->pages_allocated++;
  return page;
}

static void coalescer_clear(replicate_coalescer *c)
{
  for (size_t i = 0; i < c->count; i++) page_release(c, c->entries[i].contents);
  c->count = 0;
  c->frames = 0;
  c->zero_from = UINT64_MAX;
}

void replicate_coalescer_free(replicate_coalescer *c)
{
  if (c == NULL) return;
  coalescer_clear(c);
  for (size_t i = 0; i < c->pool_count; i++) free(c->pool[i]);
  free(c->pool);
  free(c->entries);
  free(c->merged);
  free(c->zero_page);
  free(c);
}

uint64_t replicate_coalescer_frames(const replicate_coalescer *c)
{
  return c->frames;
}

static void xor_into(uint8_t *restrict dst, const uint8_t *restrict src)
{
  for (size_t i = 0; i < LOOM_PAGE_SIZE; i += sizeof(uint64_t)) {
    uint64_t a, b;
    memcpy(&a, dst + i, sizeof a);
    memcpy(&b, src + i, sizeof b);
    a ^= b;
    memcpy(dst + i, &a, sizeof a);
  }
}

/* Does page n, absent from the entries, read as zeros (rather than as the
 * standby's version at the first before)? */
static bool base_is_zero(const replicate_coalescer *c, uint64_t n)
{
  return n >= c->first.before.pages || n >= c->zero_from;
}

static int ensure_capacity(replicate_coalescer *c, size_t need)
{
  int rc = loom_array_reserve(&c->entries, &c->cap, need, sizeof *c->entries);
  if (rc != 0) return rc;
  return loom_array_reserve(&c->merged, &c->merged_cap, need,
                            sizeof *c->merged);
}

/* Fold the frame's pages into the entries (one merge). */
static int fold_pages(replicate_coalescer *c, const replicate_frame *frame)
{
  uint64_t n = frame->info.page_count;
  if (n > SIZE_MAX - c->count) return ENOMEM;
  int rc = ensure_capacity(c, c->count + (size_t)n);
  if (rc != 0) return rc;

  size_t i = 0, out = 0;
  uint64_t j = 0;
  while (i < c->count || j < n) {
    replicate_page page;
    if (j < n) replicate_frame_get_page(frame, j, &page);
    if (j == n || (i < c->count && c->entries[i].page_number < page.page_number)) {
      c->merged[out++] = c->entries[i++];
      continue;
    }
    coalesce_entry e;
    if (i < c->count && c->entries[i].page_number == page.page_number) {
      e = c->entries[i++];
      if (page.encoding == REPLICATE_PAGE_WHOLE) {
        memcpy(e.contents, page.contents, LOOM_PAGE_SIZE);
        e.state = ENTRY_WHOLE;
      } else {
        xor_into(e.contents, page.contents);
      }
    } else {
      if ((uint64_t)(out + (c->count - i)) >= c->max_pages) {
        rc = REPLICATE_ETOOBIG;
      } else {
        e.contents = page_take(c);
        if (e.contents == NULL) rc = ENOMEM;
      }
      if (rc != 0) {
        /* Keep every buffer in the entries, for coalescer_clear(). */
        while (i < c->count) c->merged[out++] = c->entries[i++];
        break;
      }
      e.page_number = page.page_number;
      memcpy(e.contents, page.contents, LOOM_PAGE_SIZE);
      e.state = page.encoding == REPLICATE_PAGE_XOR &&
                        !base_is_zero(c, page.page_number)
                    ? ENTRY_DELTA
                    : ENTRY_WHOLE;
    }
    e.hash = page.hash;
    c->merged[out++] = e;
    j++;
  }
  coalesce_entry *swap = c->entries;
  c->entries = c->merged;
  c->merged = swap;
  c->count = out;
  return rc;
}

/* A shrink to `pages`: drop the entries past it; they are zero pages now. */
static void apply_shrink(replicate_coalescer *c, uint64_t pages)
{
  while (c->count > 0 && c->entries[c->count - 1].page_number >= pages)
    page_release(c, c->entries[--c->count].contents);
  if (pages < c->zero_from) c->zero_from = pages;
}

int replicate_coalescer_add(replicate_coalescer *c,
                            const replicate_frame *frame)
{
  assert(c != NULL && frame != NULL);
  const replicate_frame_info *info = &frame->info;
  if (info->kind != REPLICATE_KIND_COMMIT) {
    coalescer_clear(c);
    return REPLICATE_EKIND;
  }
  if (c->frames == 0) {
    c->first = *info;
    c->zero_from = UINT64_MAX;
  } else if (info->epoch != c->last.epoch ||
             !loom_history_equal(&info->history, &c->last.history) ||
             !loom_position_same(&info->before, &c->last.after)) {
    coalescer_clear(c);
    return REPLICATE_ENOT_CONTIGUOUS;
  }
  int rc = fold_pages(c, frame);
  if (rc != 0) {
    coalescer_clear(c);
    return rc;
  }
  apply_shrink(c, info->after.pages);
  c->last = *info;
  c->frames++;
  return 0;
}

uint64_t replicate_coalescer_pages(const replicate_coalescer *c)
{
  return c->count;
}

/* Where the merged frame's entries go: through an encoder into a frame's
 * bytes (finish), or straight into a decoder's buffer (finish_frame). */
typedef struct entry_sink {
  replicate_encoder *enc;  /* finish */
  replicate_buf *out;
  uint8_t *entries;        /* finish_frame */
  uint64_t written;
} entry_sink;

static int sink_entry(entry_sink *sink, uint64_t page_number, uint64_t hash,
                      replicate_encoding encoding, const uint8_t *contents)
{
  if (sink->enc != NULL)
    return frame_encode_entry(sink->enc, page_number, hash, encoding, contents,
                              sink->out);
  uint8_t *e = sink->entries + sink->written++ * REPLICATE_ENTRY_SIZE;
  put_le64(e + ENTRY_OFF_PAGE, page_number);
  put_le64(e + ENTRY_OFF_HASH, hash);
  e[ENTRY_OFF_ENCODING] = (uint8_t)encoding;
  memcpy(e + ENTRY_OFF_CONTENTS, contents, LOOM_PAGE_SIZE);
  return 0;
}

/* The merged frame's header, and the number of entries it lists. */
static replicate_frame_info merged_info(const replicate_coalescer *c,
                                        uint64_t *zero_lo, uint64_t *zero_hi,
                                        uint64_t *n)
{
  replicate_frame_info info = {
      .kind = REPLICATE_KIND_COMMIT,
      .flags = c->last.after.seq - c->first.before.seq > 1
                   ? REPLICATE_FRAME_COALESCED
                   : 0,
      .history = c->first.history,
      .epoch = c->first.epoch,
      .before = c->first.before,
      .after = c->last.after,
      .commit_time_ns = c->last.commit_time_ns,
      .first_commit_time_ns = c->first.first_commit_time_ns,
  };
  /* Zero pages to send: [zero_lo, zero_hi), less the pages with entries. */
  *zero_hi = c->first.before.pages < info.after.pages ? c->first.before.pages
                                                      : info.after.pages;
  *zero_lo = c->zero_from < *zero_hi ? c->zero_from : *zero_hi;
  *n = *zero_hi - *zero_lo;
  for (size_t i = 0; i < c->count; i++) {
    uint64_t p = c->entries[i].page_number;
    if (p < *zero_lo || p >= *zero_hi) (*n)++;
  }
  return info;
}

/* Emit every entry of the merged frame, in page order. */
static int emit_entries(const replicate_coalescer *c, uint64_t zero_lo,
                        uint64_t zero_hi, entry_sink *sink)
{
  int rc = 0;
  size_t i = 0;
  uint64_t z = zero_lo;
  while (rc == 0 && (i < c->count || z < zero_hi)) {
    if (i < c->count && (z == zero_hi || c->entries[i].page_number <= z)) {
      const coalesce_entry *e = &c->entries[i++];
      if (z < zero_hi && e->page_number == z) z++;
      rc = sink_entry(
          sink, e->page_number, e->hash,
          e->state == ENTRY_DELTA ? REPLICATE_PAGE_XOR : REPLICATE_PAGE_WHOLE,
          e->contents);
    } else {
      rc = sink_entry(sink, z, loom_page_hash(z, c->zero_page),
                      REPLICATE_PAGE_WHOLE, c->zero_page);
      z++;
    }
  }
  return rc;
}

int replicate_coalescer_finish(replicate_coalescer *c, replicate_encoder *enc,
                               replicate_buf *out)
{
  assert(c != NULL && enc != NULL && out != NULL);
  if (c->frames == 0) return REPLICATE_EINVAL;
  uint64_t zero_lo, zero_hi, n;
  replicate_frame_info info = merged_info(c, &zero_lo, &zero_hi, &n);
  int rc = n > c->max_pages ? REPLICATE_ETOOBIG : 0;
  if (rc == 0) rc = frame_encode_begin(enc, &info, n, out);
  entry_sink sink = {.enc = enc, .out = out};
  if (rc == 0) rc = emit_entries(c, zero_lo, zero_hi, &sink);
  if (rc == 0) rc = frame_encode_end(enc, out);
  if (rc != 0) out->len = 0;
  coalescer_clear(c);
  return rc;
}

int replicate_coalescer_finish_frame(replicate_coalescer *c,
                                     replicate_decoder *dec,
                                     replicate_frame *out)
{
  assert(c != NULL && dec != NULL && out != NULL);
  if (c->frames == 0) return REPLICATE_EINVAL;
  uint64_t zero_lo, zero_hi, n;
  replicate_frame_info info = merged_info(c, &zero_lo, &zero_hi, &n);
  entry_sink sink = {0};
  int rc = n > c->max_pages ? REPLICATE_ETOOBIG : 0;
  if (rc == 0) rc = frame_decoded_begin(dec, &info, n, &sink.entries);
  if (rc == 0) rc = emit_entries(c, zero_lo, zero_hi, &sink);
  if (rc == 0) rc = frame_decoded_end(dec, &info, n, out);
  coalescer_clear(c);
  return rc;
}
