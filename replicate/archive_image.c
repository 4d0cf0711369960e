/*
 * archive_image.c: a restore's image, streamed (archive_internal.h
 * arc_image_*): the archived frames up to the target are taken first and
 * indexed by page; then the base's image stream is decompressed chunk by
 * chunk, straight into the buffer the new directory's image is written
 * from (loom_store_create_from_pages), each chunk's pages rebuilt through
 * the frames' versions of them, in seq order, and the chunk written by
 * the importer's thread while the next one is made here.
 *
 * The memory is the frames (their pages' non-zero runs, copied out of the
 * segments, and one index entry per page version or resize), the base's
 * pieces in flight (archive_stream.c), the importer's two 8 MiB chunks
 * and its hash table (8 bytes a page): not the image. arc_image_memory
 * says how much.
 *
 * The checks are the ones replicate_frame_apply makes against a store,
 * made where each fact becomes known:
 *   S1 when a frame is taken: a commit frame, of one history (the caller),
 *      starting where the frame before it ended (seq, checksum, pages) at
 *      an epoch not below it, every page it carries below its after pages;
 *   S2 when the base's stream header is read: the first frame starts at
 *      the base's position;
 *   S3 per page, in each chunk: the base's version hashed once (the sum
 *      of the base's hashes is checked at S4), each frame's version rebuilt
 *      over the one before it (a delta XORed in, a whole page copied; a
 *      page grown by a frame starts as a zero page) and hashed once, and
 *      checked against the hash the frame carries (REPLICATE_EPAGE_HASH
 *      naming the frame and its object); each version's change of hash is
 *      added to its frame's change of checksum;
 *   S4 after the last page of the last chunk (and the pages only frames on
 *      the way had, past the target's size): the base's stream ends where
 *      its header says and its pages hash to its checksum
 *      (REPLICATE_EARCHIVE_OBJECT naming the base), and every frame's
 *      change of checksum is its after checksum minus its before one
 *      (REPLICATE_EAFTER_CHECKSUM naming the frame). Only then does the
 *      importer write the meta: a restore refused at S3 or S4 leaves no
 *      store (the caller clears the directory).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "archive_internal.h"
#include "array.h"
#include "frame.h"

/* What an index entry does to its page at its frame: a resize first (a
 * page grown is a zero page, one dropped leaves the checksum), then the
 * frame's version of it. */
enum { V_GROW = 0, V_DROP = 1, V_WRITE = 2 };

struct arc_version {
  uint64_t page;
  uint32_t frame;
  uint8_t op;       /* V_* */
  uint8_t encoding; /* V_WRITE: replicate_encoding */
  uint16_t runs;    /* V_WRITE: bytes of runs at contents; 0: a whole page */
  uint64_t hash;    /* V_WRITE: the hash the frame carries */
  const uint8_t *contents;
};

struct arc_frame_rec {
  loom_position before, after;
  uint64_t epoch;
  uint64_t delta;    /* S3: the change of checksum found so far */
  uint32_t object;   /* index into objects: the segment it came from */
};

/* The frames' page versions are kept as runs: a delta (or a whole page)
 * is mostly zeros, and a restore of 10,000 commits carries GiBs of them
 * decoded (docs/BENCHMARKS.md 13), so each version keeps only its
 * non-zero stretches, [2-byte offset, 2-byte length, the bytes] each
 * (stretches with no all-zero 8-byte word between them merged), or the
 * whole page where that is not shorter. They are stored in blocks of
 * RUN_BLOCK bytes (pointers into them stay valid). */
#define RUN_BLOCK ((size_t)1 << 20)

struct arc_run_block {
  struct arc_run_block *next;
  size_t used;
  uint8_t data[];
};

static const uint8_t zero_page[LOOM_PAGE_SIZE];

void arc_image_init(arc_image *img, replicate_archive *a)
{
  memset(img, 0, sizeof *img);
  img->a = a;
}

static int add_object(arc_image *img, const char *key)
{
  if (img->nobjects > 0 && !strcmp(img->objects[img->nobjects - 1], key))
    return 0;
  int rc = loom_array_reserve(&img->objects, &img->objects_cap,
                              img->nobjects + 1, sizeof *img->objects);
  if (rc == 0)
    snprintf(img->objects[img->nobjects++], ARC_KEY_MAX, "%s", key);
  return rc;
}

static const char *frame_object(const arc_image *img, uint32_t frame)
{
  return img->objects[img->frames[frame].object];
}

static int add_version(arc_image *img, arc_version v)
{
  int rc = loom_array_reserve(&img->versions, &img->versions_cap,
                              img->nversions + 1, sizeof *img->versions);
  if (rc == 0)
    img->versions[img->nversions++] = v;
  return rc;
}

/* S1's resize: the pages a frame grows or drops, one entry each. */
static int add_resize(arc_image *img, uint32_t frame, uint64_t from,
                      uint64_t to)
{
  int rc = 0;
  uint8_t op = to > from ? V_GROW : V_DROP;
  uint64_t lo = to > from ? from : to, hi = to > from ? to : from;
  for (uint64_t n = lo; rc == 0 && n < hi; n++)
    rc = add_version(img, (arc_version){.page = n, .frame = frame, .op = op});
  return rc;
}

/* S1: the frame's position follows the one before it. */
static int check_chain(const arc_image *img, const replicate_frame_info *info)
{
  if (info->kind != REPLICATE_KIND_COMMIT)
    return REPLICATE_EKIND;
  if (img->nframes == 0)
    return 0;
  const arc_frame_rec *prev = &img->frames[img->nframes - 1];
  if (!loom_position_same(&info->before, &prev->after) ||
      info->epoch < prev->epoch)
    return REPLICATE_EPOSITION;
  return 0;
}

/* Room for len bytes in the current block (a new one when full). */
static uint8_t *runs_room(arc_image *img, size_t len)
{
  struct arc_run_block *b = img->blocks;
  if (b == NULL || RUN_BLOCK - b->used < len) {
    b = malloc(sizeof *b + RUN_BLOCK);
    if (b == NULL)
      return NULL;
    b->next = img->blocks;
    b->used = 0;
    img->blocks = b;
    img->frame_bytes += sizeof *b + RUN_BLOCK;
  }
  uint8_t *at = b->data + b->used;
  b->used += len;
  return at;
}

/* w as loaded from memory, with its first byte the least significant
 * (ctz/clz then count zero bytes from the first/last address). */
static uint64_t le64(uint64_t w)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  return __builtin_bswap64(w);
#else
  return w;
#endif
}

static uint64_t word_at(const uint8_t *page, size_t i)
{
  uint64_t w;
  memcpy(&w, page + i, 8);
  return w;
}

/* The non-zero stretches of page into out (at most LOOM_PAGE_SIZE bytes),
 * found a word at a time (a run ends at an all-zero 8-byte word): their
 * length, or 0 when runs would not be shorter than the page. */
static size_t runs_encode(const uint8_t *page, uint8_t *out)
{
  size_t len = 0;
  for (size_t i = 0; i < LOOM_PAGE_SIZE; i += 8) {
    uint64_t w = word_at(page, i);
    if (w == 0)
      continue;
    size_t start = i + (size_t)__builtin_ctzll(le64(w)) / 8;
    while (i + 8 < LOOM_PAGE_SIZE && (w = word_at(page, i + 8)) != 0)
      i += 8;
    size_t last = i + 8 - (size_t)__builtin_clzll(le64(word_at(page, i))) / 8;
    size_t n = last - start;
    if (len + 4 + n >= LOOM_PAGE_SIZE)
      return 0;
    out[len] = (uint8_t)start;
    out[len + 1] = (uint8_t)(start >> 8);
    out[len + 2] = (uint8_t)n;
    out[len + 3] = (uint8_t)(n >> 8);
    memcpy(out + len + 4, page + start, n);
    len += 4 + n;
  }
  return len;
}

/* Applies a version kept as runs to dst: XORed in (a delta) or written
 * over a zero page (a whole page). */
static void runs_apply(const arc_version *v, uint8_t *dst)
{
  bool xor = v->encoding == REPLICATE_PAGE_XOR;
  if (!xor)
    memset(dst, 0, LOOM_PAGE_SIZE);
  for (size_t at = 0; at < v->runs;) {
    const uint8_t *r = v->contents + at;
    size_t off = r[0] | (size_t)r[1] << 8, len = r[2] | (size_t)r[3] << 8;
    for (size_t i = 0; i < len; i++)
      dst[off + i] = xor ? dst[off + i] ^ r[4 + i] : r[4 + i];
    at += 4 + len;
  }
}

/* Keeps one page of a frame (as runs, or whole) and indexes it. */
static int take_page(arc_image *img, const replicate_page *p, uint32_t frame)
{
  uint8_t tmp[LOOM_PAGE_SIZE];
  size_t runs = runs_encode(p->contents, tmp);
  size_t len = runs ? runs : LOOM_PAGE_SIZE;
  uint8_t *dst = runs_room(img, len);
  if (dst == NULL)
    return ENOMEM;
  memcpy(dst, runs ? tmp : p->contents, len);
  return add_version(img, (arc_version){.page = p->page_number,
                                        .frame = frame,
                                        .op = V_WRITE,
                                        .encoding = (uint8_t)p->encoding,
                                        .runs = (uint16_t)runs,
                                        .hash = p->hash,
                                        .contents = dst});
}

/* Keeps the frame's pages (out of the decoder's buffer) and indexes them. */
static int take_pages(arc_image *img, const replicate_frame *f, uint32_t frame)
{
  int rc = 0;
  for (uint64_t i = 0; rc == 0 && i < f->info.page_count; i++) {
    replicate_page p;
    replicate_frame_get_page(f, i, &p);
    if (p.page_number >= f->info.after.pages)
      return REPLICATE_EPOSITION;
    rc = take_page(img, &p, frame);
  }
  return rc;
}

int arc_image_add_frame(arc_image *img, const replicate_frame *f,
                        const char *key)
{
  const replicate_frame_info *info = &f->info;
  int rc = check_chain(img, info);
  if (rc == 0 && img->nframes >= UINT32_MAX)
    rc = ENOMEM;
  if (rc == 0)
    rc = add_object(img, key);
  if (rc == 0)
    rc = loom_array_reserve(&img->frames, &img->frames_cap, img->nframes + 1,
                            sizeof *img->frames);
  if (rc != 0)
    return rc;
  uint32_t n = (uint32_t)img->nframes;
  arc_frame_rec *rec = &img->frames[n];
  *rec = (arc_frame_rec){.before = info->before,
                         .after = info->after,
                         .epoch = info->epoch,
                         .object = (uint32_t)(img->nobjects - 1)};
  rec->after.epoch = info->epoch;
  rec->after.commit_time_ns = info->commit_time_ns;
  img->nframes++;
  rc = add_resize(img, n, info->before.pages, info->after.pages);
  if (rc == 0)
    rc = take_pages(img, f, n);
  if (rc == 0)
    img->pos = rec->after;
  return rc;
}

/* ---------------------------------------------------------------------- */
/* The base's stream: its stored bytes decompressed on demand. */

/* The next piece of the base's stored payload (read ahead by a thread). */
static int next_piece(arc_image *img)
{
  int rc = arc_ahead_next(img->src, &img->piece);
  img->in_pos = 0;
  if (rc != 0)
    return arc_fail(img->a, rc, "%s", arc_ahead_error(img->src));
  img->src_done = img->piece.len == 0;
  return 0;
}

/* Exactly len bytes of the base's image stream into dst, decompressed (or
 * copied) from the pieces as they come. */
static int stream_read(arc_image *img, uint8_t *dst, size_t len)
{
  ZSTD_outBuffer out = {dst, len, 0};
  while (out.pos < out.size) {
    if (img->in_pos == img->piece.len && !img->src_done) {
      int rc = next_piece(img);
      if (rc != 0)
        return rc;
      continue;
    }
    size_t was_in = img->in_pos, was_out = out.pos;
    ZSTD_inBuffer in = {img->piece.data, img->piece.len, img->in_pos};
    if (img->zstd) {
      size_t r = ZSTD_decompressStream(img->dctx, &out, &in);
      if (ZSTD_isError(r))
        return REPLICATE_EARCHIVE_OBJECT;
      img->zstd_left = r;
    } else {
      size_t n = in.size - in.pos < out.size - out.pos ? in.size - in.pos
                                                        : out.size - out.pos;
      memcpy((uint8_t *)out.dst + out.pos, (const uint8_t *)in.src + in.pos,
             n);
      in.pos += n;
      out.pos += n;
    }
    img->in_pos = in.pos;
    if (in.pos == was_in && out.pos == was_out)
      return REPLICATE_EARCHIVE_OBJECT; /* the stream ends short */
  }
  return 0;
}

/* S4's first half: nothing after the stream's last page, and every piece
 * read (the object's checksum and tag checked with the last). */
static bool stream_ended(arc_image *img)
{
  for (;;) {
    bool drained = img->in_pos == img->piece.len;
    if (drained && !img->src_done) {
      if (next_piece(img) != 0)
        return false;
      continue;
    }
    if (!img->zstd || (drained && img->zstd_left == 0))
      return drained;
    uint8_t extra;
    ZSTD_outBuffer out = {&extra, 1, 0};
    ZSTD_inBuffer in = {img->piece.data, img->piece.len, img->in_pos};
    size_t r = ZSTD_decompressStream(img->dctx, &out, &in);
    if (ZSTD_isError(r) || out.pos > 0)
      return false;
    bool moved = in.pos != img->in_pos || r != img->zstd_left;
    img->in_pos = in.pos;
    img->zstd_left = r;
    if (!moved)
      return drained && r == 0;
  }
}

static int compare_versions(const void *x, const void *y)
{
  const arc_version *a = x, *b = y;
  if (a->page != b->page)
    return a->page < b->page ? -1 : 1;
  if (a->frame != b->frame)
    return a->frame < b->frame ? -1 : 1;
  return (a->op > b->op) - (a->op < b->op);
}

/* The target's size, and the largest any frame on the way had. */
static void plan_pages(arc_image *img)
{
  img->max_pages = img->base.pages;
  for (size_t i = 0; i < img->nframes; i++)
    if (img->frames[i].after.pages > img->max_pages)
      img->max_pages = img->frames[i].after.pages;
}

int arc_image_open_base(arc_image *img, arc_ahead *src, bool zstd,
                        const char *key)
{
  img->src = src;
  img->zstd = zstd;
  snprintf(img->base_key, sizeof img->base_key, "%s", key);
  if (zstd && (img->dctx = ZSTD_createDCtx()) == NULL)
    return ENOMEM;
  uint8_t header[LOOM_STREAM_HEADER];
  int rc = stream_read(img, header, sizeof header);
  if (rc == REPLICATE_EARCHIVE_OBJECT ||
      (rc == 0 && loom_stream_header_decode(header, &img->base, &img->lineage)))
    return arc_fail(img->a, REPLICATE_EARCHIVE_OBJECT,
                    "object %s: the image stream inside is malformed", key);
  if (rc != 0)
    return rc;
  if (img->nframes > 0 &&
      (!loom_position_same(&img->frames[0].before, &img->base) ||
       img->frames[0].epoch < img->base.epoch)) /* S2 */
    return arc_fail(img->a, REPLICATE_EPOSITION,
                    "object %s: frame %" PRIu64
                    " does not start at the base's position",
                    frame_object(img, 0), img->frames[0].after.seq);
  if (img->nframes == 0)
    img->pos = img->base;
  plan_pages(img);
  if (img->nversions > 0) /* qsort's array must not be NULL */
    qsort(img->versions, img->nversions, sizeof *img->versions,
          compare_versions);
  return 0;
}

/* ---------------------------------------------------------------------- */
/* S3: one chunk's pages */

typedef struct page_state {
  bool exists;
  uint64_t hash;
} page_state;

static int page_fail(arc_image *img, uint32_t frame, uint64_t page, int rc)
{
  return arc_fail(img->a, rc,
                  "object %s: frame %" PRIu64 " does not apply (page %" PRIu64
                  "): %s",
                  frame_object(img, frame), img->frames[frame].after.seq, page,
                  replicate_strerror(rc));
}

/* One index entry applied to page n (its bytes at dst). */
static int apply_version(arc_image *img, const arc_version *v, uint8_t *dst,
                         page_state *st)
{
  arc_frame_rec *fr = &img->frames[v->frame];
  if (v->op == V_DROP) {
    fr->delta -= st->hash;
    *st = (page_state){0};
    return 0;
  }
  if (v->op == V_GROW) {
    memset(dst, 0, LOOM_PAGE_SIZE);
    *st = (page_state){true, loom_page_hash(v->page, zero_page)};
    fr->delta += st->hash;
    return 0;
  }
  if (!st->exists)
    return page_fail(img, v->frame, v->page, REPLICATE_EPOSITION);
  if (v->runs > 0)
    runs_apply(v, dst);
  else if (v->encoding == REPLICATE_PAGE_XOR)
    frame_page_xor_into(dst, v->contents);
  else
    memcpy(dst, v->contents, LOOM_PAGE_SIZE);
  uint64_t h = loom_page_hash(v->page, dst);
  if (h != v->hash)
    return page_fail(img, v->frame, v->page, REPLICATE_EPAGE_HASH);
  fr->delta += h - st->hash;
  st->hash = h;
  return 0;
}

/* Pages [first, first + k) into buf: the base's version, then every
 * frame's; hashes[i] the result's hash (0: a page the target lacks). */
static int make_pages(arc_image *img, uint64_t first, uint64_t k, uint8_t *buf,
                      uint64_t *hashes)
{
  uint64_t from_base =
      first < img->base.pages
          ? (img->base.pages - first < k ? img->base.pages - first : k)
          : 0;
  int rc = stream_read(img, buf, (size_t)(from_base * LOOM_PAGE_SIZE));
  if (rc == REPLICATE_EARCHIVE_OBJECT)
    return arc_fail(img->a, rc,
                    "object %s: the image stream inside is truncated or "
                    "damaged (page %" PRIu64 ")",
                    img->base_key, first);
  for (uint64_t i = 0; rc == 0 && i < k; i++) {
    uint64_t n = first + i;
    uint8_t *dst = buf + i * LOOM_PAGE_SIZE;
    page_state st = {i < from_base, 0};
    if (st.exists) {
      st.hash = loom_page_hash(n, dst);
      img->base_sum += st.hash;
    }
    for (; rc == 0 && img->next_version < img->nversions &&
           img->versions[img->next_version].page == n;
         img->next_version++)
      rc = apply_version(img, &img->versions[img->next_version], dst, &st);
    hashes[i] = st.exists ? st.hash : 0;
  }
  return rc;
}

/* S4: the pages past the target's size that frames on the way had, then
 * the base's end and sum, and every frame's checksum. */
static int finish(arc_image *img)
{
  uint64_t start = img->pos.pages;
  int rc = 0;
  if (start < img->max_pages) {
    uint8_t *buf = malloc((size_t)LOOM_IMPORT_CHUNK_PAGES * LOOM_PAGE_SIZE);
    uint64_t *hashes = malloc(LOOM_IMPORT_CHUNK_PAGES * sizeof *hashes);
    rc = buf && hashes ? 0 : ENOMEM;
    for (uint64_t n = start; rc == 0 && n < img->max_pages;) {
      uint64_t end = (n / LOOM_IMPORT_CHUNK_PAGES + 1) * LOOM_IMPORT_CHUNK_PAGES;
      uint64_t k = (end < img->max_pages ? end : img->max_pages) - n;
      rc = make_pages(img, n, k, buf, hashes);
      n += k;
    }
    free(buf);
    free(hashes);
  }
  if (rc == 0 && (!stream_ended(img) || img->base_sum != img->base.checksum))
    rc = arc_fail(img->a, REPLICATE_EARCHIVE_OBJECT,
                  "object %s: the image stream inside is longer than its "
                  "header says, or its pages do not hash to its checksum",
                  img->base_key);
  for (size_t i = 0; rc == 0 && i < img->nframes; i++) {
    const arc_frame_rec *fr = &img->frames[i];
    if (fr->delta != fr->after.checksum - fr->before.checksum)
      rc = page_fail(img, (uint32_t)i, fr->after.pages,
                     REPLICATE_EAFTER_CHECKSUM);
  }
  return rc;
}

/* loom_page_fill_fn: a chunk of the target's image, then S4 after its last
 * one (before the importer writes the meta). */
static int fill(void *ctx, uint64_t first, uint64_t k, uint8_t *buf,
                uint64_t *hashes)
{
  arc_image *img = ctx;
  int rc = make_pages(img, first, k, buf, hashes);
  if (rc == 0 && first + k == img->pos.pages)
    rc = finish(img);
  return rc;
}

int arc_image_write(arc_image *img, const char *dir, const struct loom_io *io)
{
  int rc = img->pos.pages == 0 ? finish(img) : 0;
  if (rc == 0)
    rc = loom_store_create_from_pages(dir, io, &img->pos, &img->lineage, fill,
                                      img);
  return rc;
}

uint64_t arc_image_memory(const arc_image *img)
{
  return img->frame_bytes + img->nversions * sizeof *img->versions +
         img->nframes * sizeof *img->frames +
         (ARC_AHEAD_DEPTH + 2) * (uint64_t)ARC_PIECE_BYTES +
         2 * (uint64_t)LOOM_IMPORT_CHUNK_PAGES * LOOM_PAGE_SIZE +
         img->pos.pages * sizeof(uint64_t);
}

void arc_image_stop_reading(arc_image *img)
{
  arc_ahead_stop(img->src);
  img->src = NULL;
  img->src_done = true;
}

void arc_image_free(arc_image *img)
{
  while (img->blocks != NULL) {
    struct arc_run_block *b = img->blocks;
    img->blocks = b->next;
    free(b);
  }
  free(img->frames);
  free(img->versions);
  free(img->objects);
  arc_ahead_stop(img->src);
  replicate_buf_free(&img->piece);
  ZSTD_freeDCtx(img->dctx);
  memset(img, 0, sizeof *img);
}
