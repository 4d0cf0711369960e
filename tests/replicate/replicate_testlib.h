/*
 * replicate_testlib.h: helpers shared by the replicate/ tests and the
 * bench: (with tests/lib/testlib.h: the RNG, xmalloc) an in-memory model of an image (the
 * primary's pages, hashes and position), the three workloads, and a frame
 * forger that builds frames byte by byte from docs/FRAME.md (independently
 * of frame.c) so that tests can send any field value with valid checksums.
 */
#ifndef REPLICATE_TESTLIB_H
#define REPLICATE_TESTLIB_H

#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xxhash.h>
#include <zstd.h>

#include "loom.h"
#include "replicate.h"
#include "testlib.h"

#define PS LOOM_PAGE_SIZE

/* Frames built by hand carry no history (a store that holds nothing, or
 * follows none, takes them). */
static const loom_history no_history;


/* ---------------------------------------------------------------------- */
/* A model image: what a store holds, in memory. */

typedef struct model {
  uint64_t epoch;
  uint64_t seq;
  uint64_t checksum;
  uint64_t pages;
  uint64_t cap;
  uint8_t *data;     /* cap pages */
  uint64_t *hashes;  /* cap entries */
  int64_t time_ns;
} model;

static inline uint64_t zero_page_hash(uint64_t n)
{
  static uint8_t *zero;
  if (zero == NULL) zero = xcalloc(PS);
  return loom_page_hash(n, zero);
}

static inline void model_init(model *m, uint64_t epoch, uint64_t seq,
                              uint64_t checksum)
{
  memset(m, 0, sizeof *m);
  m->epoch = epoch;
  m->seq = seq;
  m->checksum = checksum;
  m->time_ns = 1700000000000000000ll;
}

static inline void model_free(model *m)
{
  free(m->data);
  free(m->hashes);
  memset(m, 0, sizeof *m);
}

static inline uint8_t *model_page(const model *m, uint64_t n)
{
  return m->data + n * PS;
}

static inline void model_reserve(model *m, uint64_t pages)
{
  if (pages <= m->cap) return;
  uint64_t cap = m->cap ? m->cap : 16;
  while (cap < pages) cap *= 2;
  m->data = realloc(m->data, cap * PS);
  m->hashes = realloc(m->hashes, cap * sizeof *m->hashes);
  if (m->data == NULL || m->hashes == NULL) abort();
  m->cap = cap;
}

static inline uint64_t model_recompute(const model *m)
{
  uint64_t sum = 0;
  for (uint64_t n = 0; n < m->pages; n++)
    sum += loom_page_hash(n, model_page(m, n));
  return sum;
}

static inline void model_copy(model *dst, const model *src)
{
  model_init(dst, src->epoch, src->seq, src->checksum);
  model_reserve(dst, src->pages);
  dst->pages = src->pages;
  dst->time_ns = src->time_ns;
  if (src->pages) {
    memcpy(dst->data, src->data, src->pages * PS);
    memcpy(dst->hashes, src->hashes, src->pages * sizeof *src->hashes);
  }
}

static inline bool model_equal(const model *a, const model *b)
{
  return a->epoch == b->epoch && a->seq == b->seq &&
         a->checksum == b->checksum && a->pages == b->pages &&
         (a->pages == 0 || memcmp(a->data, b->data, a->pages * PS) == 0);
}

/*
 * A commit on the model: the image becomes after_pages long, and pages
 * nums[i] (ascending) get contents news + i * PS. model_commit_info fills
 * the frame info and the page sources (old versions point into the model,
 * so encode before model_commit_apply).
 */
static inline void model_commit_info(const model *m, uint64_t after_pages,
                                     size_t n, const uint64_t *nums,
                                     const uint8_t *news,
                                     replicate_frame_info *info,
                                     replicate_page_src *srcs)
{
  uint64_t sum = m->checksum;
  for (uint64_t p = after_pages; p < m->pages; p++) sum -= m->hashes[p];
  for (uint64_t p = m->pages; p < after_pages; p++) sum += zero_page_hash(p);
  for (size_t i = 0; i < n; i++) {
    uint64_t p = nums[i];
    uint64_t h = loom_page_hash(p, news + i * PS);
    sum -= p < m->pages ? m->hashes[p] : zero_page_hash(p);
    sum += h;
    if (srcs != NULL)
      srcs[i] = (replicate_page_src){
          .page_number = p,
          .new_hash = h,
          .new_page = news + i * PS,
          .old_page = p < m->pages ? model_page(m, p) : NULL,
      };
  }
  *info = (replicate_frame_info){
      .kind = REPLICATE_KIND_COMMIT,
      .epoch = m->epoch,
      .before = {.epoch = m->epoch, .seq = m->seq, .checksum = m->checksum,
                 .pages = m->pages},
      .after = {.epoch = m->epoch, .seq = m->seq + 1, .checksum = sum,
                .pages = after_pages},
      .commit_time_ns = m->time_ns + 1000,
      .first_commit_time_ns = m->time_ns + 1000,
  };
}

static inline void model_resize(model *m, uint64_t pages)
{
  model_reserve(m, pages);
  for (uint64_t p = m->pages; p < pages; p++) {
    memset(model_page(m, p), 0, PS);
    m->hashes[p] = zero_page_hash(p);
  }
  m->pages = pages;
}

static inline void model_commit_apply(model *m, const replicate_frame_info *info,
                                      size_t n, const uint64_t *nums,
                                      const uint8_t *news)
{
  model_resize(m, info->after.pages);
  for (size_t i = 0; i < n; i++) {
    memcpy(model_page(m, nums[i]), news + i * PS, PS);
    m->hashes[nums[i]] = loom_page_hash(nums[i], news + i * PS);
  }
  m->seq = info->after.seq;
  m->checksum = info->after.checksum;
  m->time_ns = info->commit_time_ns;
}

/* Encode a commit on m and apply it to m. Returns the encoder's code. */
static inline int model_commit(model *m, replicate_encoder *enc,
                               uint64_t after_pages, size_t n,
                               const uint64_t *nums, const uint8_t *news,
                               replicate_buf *out)
{
  replicate_frame_info info;
  replicate_page_src *srcs = xmalloc(n * sizeof *srcs);
  model_commit_info(m, after_pages, n, nums, news, &info, srcs);
  int rc = replicate_frame_encode(enc, &info, srcs, n, out);
  free(srcs);
  if (rc == 0) model_commit_apply(m, &info, n, nums, news);
  return rc;
}

/* Apply a decoded frame to a model as a standby would (returns the
 * replicate code apply would). */
static inline int model_apply_frame(model *m, const replicate_frame *f)
{
  const replicate_frame_info *info = &f->info;
  if (info->kind != REPLICATE_KIND_COMMIT) return REPLICATE_EKIND;
  if (info->epoch < m->epoch) return REPLICATE_ESTALE_EPOCH;
  if (info->epoch == m->epoch && info->after.seq <= m->seq)
    return REPLICATE_EDUPLICATE;
  if (info->before.seq != m->seq || info->before.checksum != m->checksum ||
      info->before.pages != m->pages)
    return REPLICATE_EPOSITION;
  uint64_t n = info->page_count;
  uint64_t *nums = xmalloc(n * sizeof *nums);
  uint8_t *news = xmalloc(n * PS);
  for (uint64_t i = 0; i < n; i++) {
    replicate_page page;
    replicate_frame_get_page(f, i, &page);
    nums[i] = page.page_number;
    memcpy(news + i * PS, page.contents, PS);
    if (page.encoding == REPLICATE_PAGE_XOR)
      for (size_t b = 0; b < PS; b++) news[i * PS + b] ^= model_page(m, page.page_number)[b];
    if (loom_page_hash(page.page_number, news + i * PS) != page.hash) {
      free(nums);
      free(news);
      return REPLICATE_EPAGE_HASH;
    }
  }
  replicate_frame_info check;
  model_commit_info(m, info->after.pages, n, nums, news, &check, NULL);
  int rc = 0;
  if (check.after.checksum != info->after.checksum) rc = REPLICATE_EAFTER_CHECKSUM;
  else {
    m->epoch = info->epoch;
    model_commit_apply(m, info, n, nums, news);
  }
  free(nums);
  free(news);
  return rc;
}

/* Fill the model with `pages` pages of random data (no frame). */
static inline void model_fill_random(model *m, uint64_t pages, test_rng *r)
{
  model_resize(m, pages);
  for (uint64_t p = 0; p < pages; p++) {
    rng_fill(r, model_page(m, p), PS);
    m->hashes[p] = loom_page_hash(p, model_page(m, p));
  }
  m->checksum = 0;
  for (uint64_t p = 0; p < pages; p++) m->checksum += m->hashes[p];
}

/* ---------------------------------------------------------------------- */
/* Workloads */

typedef enum workload {
  WL_SPARSE,  /* 64 random bytes changed in each page, at random offsets */
  WL_REWRITE, /* whole pages rewritten with random data */
  WL_APPEND   /* new pages of random data appended */
} workload;

static inline const char *workload_name(workload w)
{
  switch (w) {
  case WL_SPARSE: return "64 bytes/page";
  case WL_REWRITE: return "rewrite";
  case WL_APPEND: return "append";
  }
  return "?";
}

/* n changed pages for workload w on m: nums, news (n pages), after_pages.
 * SPARSE and REWRITE need m->pages >= n. */
static inline void workload_make(const model *m, workload w, size_t n,
                                 test_rng *r, uint64_t *nums, uint8_t *news,
                                 uint64_t *after_pages)
{
  *after_pages = m->pages;
  uint64_t stride = w == WL_APPEND || n == 0 ? 1 : m->pages / n;
  for (size_t i = 0; i < n; i++) {
    uint8_t *page = news + i * PS;
    switch (w) {
    case WL_SPARSE:
      nums[i] = i * stride;
      memcpy(page, model_page(m, nums[i]), PS);
      for (int k = 0; k < 64; k++)
        page[rng_below(r, PS)] ^= (uint8_t)(1 + rng_below(r, 255));
      break;
    case WL_REWRITE:
      nums[i] = i * stride;
      rng_fill(r, page, PS);
      break;
    case WL_APPEND:
      nums[i] = m->pages + i;
      rng_fill(r, page, PS);
      break;
    }
  }
  if (w == WL_APPEND) *after_pages = m->pages + n;
}

/* A random commit on m: a new length near the old one, and a random set
 * of pages changed, sparsely or whole. */
static inline int model_random_commit(model *m, replicate_encoder *enc, test_rng *r,
                         uint64_t max_pages, replicate_buf *out)
{
  uint64_t after = m->pages;
  switch (rng_below(r, 5)) {
  case 0: after = rng_below(r, max_pages + 1); break;           /* anything */
  case 1: after = m->pages > 3 ? m->pages - 1 - rng_below(r, 3) : 0; break;
  case 2: after = m->pages + rng_below(r, 4); break;            /* grow */
  default: break;                                               /* same */
  }
  if (after > max_pages) after = max_pages;
  uint64_t *nums = xmalloc((after + 1) * sizeof *nums);
  uint8_t *news = xmalloc((after + 1) * PS);
  size_t n = 0;
  for (uint64_t p = 0; p < after; p++) {
    /* Grown pages are usually sent, but not always (they read as zeros). */
    bool grown = p >= m->pages;
    if (rng_below(r, 100) >= (grown ? 80u : 30u)) continue;
    uint8_t *page = news + n * PS;
    if (!grown && rng_below(r, 3) != 0) {
      memcpy(page, model_page(m, p), PS);
      for (int k = 0; k < 64; k++) page[rng_below(r, PS)] ^= (uint8_t)(1 + rng_below(r, 255));
    } else if (rng_below(r, 4) == 0) {
      memset(page, 0, PS);
      page[rng_below(r, PS)] = 1;
    } else {
      rng_fill(r, page, PS);
    }
    nums[n++] = p;
  }
  int rc = model_commit(m, enc, after, n, nums, news, out);
  free(nums);
  free(news);
  return rc;
}

/* ---------------------------------------------------------------------- */
/* Files */

/* dir/name into out (cap bytes). */
static inline void join_path(char *out, size_t cap, const char *dir,
                             const char *name)
{
  size_t a = strlen(dir), b = strlen(name);
  if (a + 1 + b >= cap) abort();
  memcpy(out, dir, a);
  out[a] = '/';
  memcpy(out + a + 1, name, b + 1);
}

/* test_remove_tree (rm -r): tests/lib/testlib.h. */

/* ---------------------------------------------------------------------- */
/* The forger: frames built from the byte table of docs/FRAME.md. */

typedef struct forge_header {
  uint8_t magic[4];
  uint16_t version;
  uint8_t kind;
  uint8_t flags;
  uint64_t epoch;
  uint64_t before_seq, before_checksum, before_pages;
  uint64_t after_seq, after_checksum, after_pages;
  int64_t commit_time, first_commit_time, heartbeat_time;
  uint32_t page_count;
  uint32_t reserved;
  uint64_t compressed;
  uint64_t uncompressed;
  uint64_t payload_checksum;
  uint8_t history[LOOM_HISTORY_SIZE];
} forge_header;

static inline void forge_le(uint8_t *p, uint64_t v, int bytes)
{
  for (int i = 0; i < bytes; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* A header with sensible defaults for one commit of page_count pages. */
static inline forge_header forge_default(uint32_t page_count)
{
  forge_header h = {
      .magic = {'L', 'S', 'F', 'R'},
      .version = REPLICATE_FRAME_VERSION,
      .kind = 1,
      .epoch = 1,
      .before_seq = 7,
      .before_checksum = 0x1111,
      .before_pages = 100,
      .after_seq = 8,
      .after_checksum = 0x2222,
      .after_pages = 100,
      .commit_time = 5,
      .first_commit_time = 5,
      .page_count = page_count,
      .uncompressed = (uint64_t)page_count * REPLICATE_ENTRY_SIZE,
  };
  return h;
}

/* Write h (with its header checksum) into out[0, REPLICATE_HEADER_SIZE). */
static inline void forge_write_header(const forge_header *h, uint8_t *out)
{
  memcpy(out, h->magic, 4);
  forge_le(out + 4, h->version, 2);
  out[6] = h->kind;
  out[7] = h->flags;
  forge_le(out + 8, h->epoch, 8);
  forge_le(out + 16, h->before_seq, 8);
  forge_le(out + 24, h->before_checksum, 8);
  forge_le(out + 32, h->before_pages, 8);
  forge_le(out + 40, h->after_seq, 8);
  forge_le(out + 48, h->after_checksum, 8);
  forge_le(out + 56, h->after_pages, 8);
  forge_le(out + 64, (uint64_t)h->commit_time, 8);
  forge_le(out + 72, (uint64_t)h->first_commit_time, 8);
  forge_le(out + 80, (uint64_t)h->heartbeat_time, 8);
  forge_le(out + 88, h->page_count, 4);
  forge_le(out + 92, h->reserved, 4);
  forge_le(out + 96, h->compressed, 8);
  forge_le(out + 104, h->uncompressed, 8);
  forge_le(out + 112, h->payload_checksum, 8);
  memcpy(out + 120, h->history, LOOM_HISTORY_SIZE);
  forge_le(out + 136, XXH3_64bits(out, 136), 8);
}

/* One raw payload entry. */
static inline void forge_entry(uint8_t *e, uint64_t page, uint64_t hash,
                               uint8_t encoding, const void *contents)
{
  forge_le(e, page, 8);
  forge_le(e + 8, hash, 8);
  e[16] = encoding;
  if (contents) memcpy(e + 17, contents, PS);
  else memset(e + 17, 0, PS);
}

/* A frame of header h and the given compressed payload; sets h's sizes
 * and payload checksum only where fix_sizes says so. Caller frees. */
static inline uint8_t *forge_frame(forge_header *h, const void *payload,
                                   size_t payload_len, bool fix_sizes,
                                   size_t *frame_len)
{
  if (fix_sizes) h->compressed = payload_len;
  h->payload_checksum = XXH3_64bits(payload, payload_len);
  uint8_t *f = xmalloc(REPLICATE_HEADER_SIZE + payload_len);
  forge_write_header(h, f);
  if (payload_len) memcpy(f + REPLICATE_HEADER_SIZE, payload, payload_len);
  *frame_len = REPLICATE_HEADER_SIZE + payload_len;
  return f;
}

/* Compress raw entries and forge a frame around them. */
static inline uint8_t *forge_frame_entries(forge_header *h, const void *raw,
                                           size_t raw_len, size_t *frame_len)
{
  size_t bound = ZSTD_compressBound(raw_len);
  uint8_t *z = xmalloc(bound);
  size_t zlen = ZSTD_compress(z, bound, raw, raw_len, 1);
  if (ZSTD_isError(zlen)) abort();
  uint8_t *f = forge_frame(h, z, zlen, true, frame_len);
  free(z);
  return f;
}

#endif /* REPLICATE_TESTLIB_H */
