/*
 * frame.c: the frame codec: encoding, strict decoding, applying a frame
 * to a standby's store.
 *
 * DESIGN
 *
 * A frame is built in one pass and never re-reads anything: the header's
 * 128 bytes are reserved at the front of the output buffer, each page entry
 * is streamed into one zstd frame whose content size is pledged up front
 * (so the decoder can check it before decompressing), and the header is
 * filled in and checksummed last.
 *
 * Decoding trusts nothing and allocates nothing before the header has been
 * checked: checksum, version, field consistency, limits. Only then is the
 * payload's checksum checked, the zstd frame's own content size compared
 * with the declared one, and the payload decompressed into a buffer of
 * exactly that size; a zstd frame that would expand further fails to
 * decompress instead of growing anything. The page entries are then
 * checked once, so that replicate_frame_get_page() and the apply need no
 * further checks of their own.
 *
 * Invariants of a decoded frame (relied on by apply and the coalescer):
 *   1. page numbers strictly ascending, each < after.pages;
 *   2. encodings are WHOLE or XOR, and XOR only for pages < before.pages;
 *   3. page_count * REPLICATE_ENTRY_SIZE bytes of entries exist.
 *
 * Applying reads every old version it needs and checks every page before
 * it begins the store's patch (the store refuses reads while a patch is
 * open, and a bad frame then writes nothing). It rebuilds each delta in
 * place, in the decoder's buffer, and marks its entry WHOLE: the frame
 * keeps its meaning and its invariants, and no page-sized buffer per page
 * is needed.
 */
#include "frame.h"

#include "array.h"

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>
#include <zstd.h>

/* ---------------------------------------------------------------------- */
/* Buffers and limits */

void replicate_buf_free(replicate_buf *buf)
{
  if (buf == NULL) return;
  free(buf->data);
  buf->data = NULL;
  buf->len = 0;
  buf->cap = 0;
}

int frame_buf_reserve(replicate_buf *buf, size_t need)
{
  return loom_array_reserve(&buf->data, &buf->cap, need, 1);
}

int replicate_buf_append(replicate_buf *buf, const void *data, size_t len)
{
  if (len > SIZE_MAX - buf->len)
    return ENOMEM;
  int rc = frame_buf_reserve(buf, buf->len + len);
  if (rc)
    return rc;
  if (len)
    memcpy(buf->data + buf->len, data, len);
  buf->len += len;
  return 0;
}

#define DEFAULT_MAX_FRAME_PAGES 16384u
#define DEFAULT_MAX_IMAGE_PAGES (1ull << 30)

replicate_limits replicate_limits_default(void)
{
  replicate_limits limits = {
      .max_frame_pages = DEFAULT_MAX_FRAME_PAGES,
      .max_image_pages = DEFAULT_MAX_IMAGE_PAGES,
      .max_payload_bytes = ZSTD_compressBound(
          (size_t)DEFAULT_MAX_FRAME_PAGES * REPLICATE_ENTRY_SIZE),
  };
  return limits;
}

/* ---------------------------------------------------------------------- */
/* Header checks, shared by encoding and decoding */

int frame_info_check(const replicate_frame_info *info)
{
  if (info->epoch == 0) return REPLICATE_EMALFORMED;
  switch (info->kind) {
  case REPLICATE_KIND_COMMIT:
    if ((info->flags & ~REPLICATE_FRAME_COALESCED) != 0)
      return REPLICATE_EMALFORMED;
    if (info->after.seq <= info->before.seq) return REPLICATE_EMALFORMED;
    /* One commit advances seq by one; a coalesced frame merges several. */
    if ((info->after.seq - info->before.seq == 1) ==
        ((info->flags & REPLICATE_FRAME_COALESCED) != 0))
      return REPLICATE_EMALFORMED;
    if (info->page_count > info->after.pages) return REPLICATE_EMALFORMED;
    if (info->heartbeat_time_ns != 0) return REPLICATE_EMALFORMED;
    return 0;
  case REPLICATE_KIND_HEARTBEAT:
    if (info->flags != 0 || info->page_count != 0) return REPLICATE_EMALFORMED;
    if (info->before.seq != 0 || info->before.checksum != 0 ||
        info->before.pages != 0 || info->first_commit_time_ns != 0)
      return REPLICATE_EMALFORMED;
    return 0;
  }
  return REPLICATE_EMALFORMED;
}

/* Write the header for info with the given payload facts into p. */
static void header_write(uint8_t *p, const replicate_frame_info *info,
                         uint64_t page_count, uint64_t compressed,
                         uint64_t payload_checksum)
{
  memcpy(p + FRAME_OFF_MAGIC, FRAME_MAGIC, 4);
  put_le16(p + FRAME_OFF_VERSION, REPLICATE_FRAME_VERSION);
  p[FRAME_OFF_KIND] = (uint8_t)info->kind;
  p[FRAME_OFF_FLAGS] = (uint8_t)info->flags;
  put_le64(p + FRAME_OFF_EPOCH, info->epoch);
  put_le64(p + FRAME_OFF_BEFORE_SEQ, info->before.seq);
  put_le64(p + FRAME_OFF_BEFORE_CHECKSUM, info->before.checksum);
  put_le64(p + FRAME_OFF_BEFORE_PAGES, info->before.pages);
  put_le64(p + FRAME_OFF_AFTER_SEQ, info->after.seq);
  put_le64(p + FRAME_OFF_AFTER_CHECKSUM, info->after.checksum);
  put_le64(p + FRAME_OFF_AFTER_PAGES, info->after.pages);
  put_le64(p + FRAME_OFF_COMMIT_TIME, (uint64_t)info->commit_time_ns);
  put_le64(p + FRAME_OFF_FIRST_COMMIT_TIME,
           (uint64_t)info->first_commit_time_ns);
  put_le64(p + FRAME_OFF_HEARTBEAT_TIME, (uint64_t)info->heartbeat_time_ns);
  put_le32(p + FRAME_OFF_PAGE_COUNT, (uint32_t)page_count);
  put_le32(p + FRAME_OFF_RESERVED, 0);
  put_le64(p + FRAME_OFF_COMPRESSED, compressed);
  put_le64(p + FRAME_OFF_UNCOMPRESSED, page_count * REPLICATE_ENTRY_SIZE);
  put_le64(p + FRAME_OFF_PAYLOAD_CHECKSUM, payload_checksum);
  memcpy(p + FRAME_OFF_HISTORY, info->history.id, LOOM_HISTORY_SIZE);
  put_le64(p + FRAME_OFF_HEADER_CHECKSUM,
           XXH3_64bits(p, FRAME_OFF_HEADER_CHECKSUM));
}

int replicate_frame_parse_header(const void *bytes, size_t len,
                                 const replicate_limits *limits,
                                 replicate_frame_info *out)
{
  const uint8_t *p = bytes;
  replicate_limits defaults;
  if (limits == NULL) {
    defaults = replicate_limits_default();
    limits = &defaults;
  }
  if (len < REPLICATE_HEADER_SIZE) return REPLICATE_ETRUNCATED;
  if (memcmp(p + FRAME_OFF_MAGIC, FRAME_MAGIC, 4) != 0) return REPLICATE_EMAGIC;
  if (get_le16(p + FRAME_OFF_VERSION) != REPLICATE_FRAME_VERSION)
    return REPLICATE_EVERSION;
  if (get_le64(p + FRAME_OFF_HEADER_CHECKSUM) !=
      XXH3_64bits(p, FRAME_OFF_HEADER_CHECKSUM))
    return REPLICATE_EHEADER_CHECKSUM;

  replicate_frame_info info = {
      .kind = (replicate_frame_kind)p[FRAME_OFF_KIND],
      .flags = p[FRAME_OFF_FLAGS],
      .epoch = get_le64(p + FRAME_OFF_EPOCH),
      .before = {.seq = get_le64(p + FRAME_OFF_BEFORE_SEQ),
                 .checksum = get_le64(p + FRAME_OFF_BEFORE_CHECKSUM),
                 .pages = get_le64(p + FRAME_OFF_BEFORE_PAGES)},
      .after = {.epoch = get_le64(p + FRAME_OFF_EPOCH),
                .seq = get_le64(p + FRAME_OFF_AFTER_SEQ),
                .checksum = get_le64(p + FRAME_OFF_AFTER_CHECKSUM),
                .pages = get_le64(p + FRAME_OFF_AFTER_PAGES)},
      .commit_time_ns = (int64_t)get_le64(p + FRAME_OFF_COMMIT_TIME),
      .first_commit_time_ns =
          (int64_t)get_le64(p + FRAME_OFF_FIRST_COMMIT_TIME),
      .heartbeat_time_ns = (int64_t)get_le64(p + FRAME_OFF_HEARTBEAT_TIME),
      .page_count = get_le32(p + FRAME_OFF_PAGE_COUNT),
      .compressed_size = get_le64(p + FRAME_OFF_COMPRESSED),
  };
  memcpy(info.history.id, p + FRAME_OFF_HISTORY, LOOM_HISTORY_SIZE);
  if (info.kind == REPLICATE_KIND_COMMIT) info.before.epoch = info.epoch;
  uint64_t uncompressed = get_le64(p + FRAME_OFF_UNCOMPRESSED);

  if (info.kind != REPLICATE_KIND_COMMIT && info.kind != REPLICATE_KIND_HEARTBEAT)
    return REPLICATE_EMALFORMED;
  int rc = frame_info_check(&info);
  if (rc != 0) return rc;
  if (get_le32(p + FRAME_OFF_RESERVED) != 0) return REPLICATE_EMALFORMED;
  /* page_count < 2^32, so the product cannot overflow. */
  if (uncompressed != info.page_count * REPLICATE_ENTRY_SIZE)
    return REPLICATE_EMALFORMED;
  if ((info.page_count == 0) != (info.compressed_size == 0))
    return REPLICATE_EMALFORMED;

  if (info.page_count > limits->max_frame_pages) return REPLICATE_ETOOBIG;
  if (info.before.pages > limits->max_image_pages ||
      info.after.pages > limits->max_image_pages)
    return REPLICATE_ETOOBIG;
  if (info.compressed_size > limits->max_payload_bytes ||
      info.compressed_size > SIZE_MAX - REPLICATE_HEADER_SIZE)
    return REPLICATE_ETOOBIG;
  info.frame_size = REPLICATE_HEADER_SIZE + info.compressed_size;
  *out = info;
  return 0;
}

/* ---------------------------------------------------------------------- */
/* Encoding */

struct replicate_encoder {
  ZSTD_CCtx *cctx;
  int level;
  uint8_t *old_page;   /* loom_commit_old_page_view() may land here */
  uint8_t *delta;      /* new XOR old */
  /* The frame being built (between begin and end). */
  replicate_frame_info info;
  uint64_t expected;   /* entries announced */
  uint64_t written;    /* entries streamed so far */
  uint64_t rot_page;   /* the last old version that failed its hash */
};

uint64_t replicate_encoder_rot_page(const replicate_encoder *enc)
{
  return enc->rot_page;
}

int replicate_encoder_new(int level, replicate_encoder **out)
{
  if (level < 0 || level > ZSTD_maxCLevel()) return REPLICATE_EINVAL;
  replicate_encoder *enc = calloc(1, sizeof *enc);
  if (enc == NULL) return ENOMEM;
  enc->level = level;
  enc->rot_page = UINT64_MAX;
  enc->cctx = ZSTD_createCCtx();
  enc->old_page = malloc(LOOM_PAGE_SIZE);
  enc->delta = malloc(LOOM_PAGE_SIZE);
  if (enc->cctx == NULL || enc->old_page == NULL || enc->delta == NULL) {
    replicate_encoder_free(enc);
    return ENOMEM;
  }
  *out = enc;
  return 0;
}

void replicate_encoder_free(replicate_encoder *enc)
{
  if (enc == NULL) return;
  ZSTD_freeCCtx(enc->cctx);
  free(enc->old_page);
  free(enc->delta);
  free(enc);
}

/* info as a COMMIT frame of n pages, checked: 0 or REPLICATE_EINVAL. */
static int commit_info_with_count(const replicate_frame_info *info, uint64_t n,
                                  replicate_frame_info *checked)
{
  *checked = *info;
  checked->page_count = n;
  if (info->kind != REPLICATE_KIND_COMMIT || n > UINT32_MAX ||
      frame_info_check(checked) != 0)
    return REPLICATE_EINVAL;
  return 0;
}

int frame_encode_begin(replicate_encoder *enc, const replicate_frame_info *info,
                       uint64_t n, replicate_buf *out)
{
  replicate_frame_info checked;
  if (commit_info_with_count(info, n, &checked) != 0) return REPLICATE_EINVAL;

  out->len = 0;
  int rc = frame_buf_reserve(out, REPLICATE_HEADER_SIZE + ZSTD_CStreamOutSize());
  if (rc != 0) return rc;
  out->len = REPLICATE_HEADER_SIZE;

  size_t zrc = ZSTD_CCtx_reset(enc->cctx, ZSTD_reset_session_and_parameters);
  if (!ZSTD_isError(zrc))
    zrc = ZSTD_CCtx_setParameter(enc->cctx, ZSTD_c_compressionLevel, enc->level);
  if (!ZSTD_isError(zrc))
    zrc = ZSTD_CCtx_setParameter(enc->cctx, ZSTD_c_checksumFlag, 0);
  if (!ZSTD_isError(zrc))
    zrc = ZSTD_CCtx_setParameter(enc->cctx, ZSTD_c_contentSizeFlag, 1);
  if (!ZSTD_isError(zrc))
    zrc = ZSTD_CCtx_setPledgedSrcSize(enc->cctx, n * REPLICATE_ENTRY_SIZE);
  if (ZSTD_isError(zrc)) return REPLICATE_ECOMPRESS;

  enc->info = checked;
  enc->expected = n;
  enc->written = 0;
  return 0;
}

/* Feed bytes to the compressor (mode ZSTD_e_continue or ZSTD_e_end),
 * growing out as the compressed output needs. */
static int compress_feed(replicate_encoder *enc, const void *src, size_t len,
                         ZSTD_EndDirective mode, replicate_buf *out)
{
  ZSTD_inBuffer in = {src, len, 0};
  for (;;) {
    size_t room_wanted = ZSTD_CStreamOutSize();
    if (out->cap - out->len < room_wanted) {
      int rc = frame_buf_reserve(out, out->len + room_wanted);
      if (rc != 0) return rc;
    }
    ZSTD_outBuffer zout = {out->data + out->len, out->cap - out->len, 0};
    size_t remaining = ZSTD_compressStream2(enc->cctx, &zout, &in, mode);
    if (ZSTD_isError(remaining)) return REPLICATE_ECOMPRESS;
    out->len += zout.pos;
    if (mode == ZSTD_e_end ? remaining == 0 : in.pos == in.size) return 0;
  }
}

int frame_encode_entry(replicate_encoder *enc, uint64_t page_number,
                       uint64_t hash, replicate_encoding encoding,
                       const void *contents, replicate_buf *out)
{
  assert(enc->written < enc->expected);
  uint8_t head[ENTRY_OFF_CONTENTS];
  put_le64(head + ENTRY_OFF_PAGE, page_number);
  put_le64(head + ENTRY_OFF_HASH, hash);
  head[ENTRY_OFF_ENCODING] = (uint8_t)encoding;
  int rc = compress_feed(enc, head, sizeof head, ZSTD_e_continue, out);
  if (rc == 0)
    rc = compress_feed(enc, contents, LOOM_PAGE_SIZE, ZSTD_e_continue, out);
  if (rc != 0) return rc;
  enc->written++;
  return 0;
}

int frame_encode_end(replicate_encoder *enc, replicate_buf *out)
{
  assert(enc->written == enc->expected);
  if (enc->expected > 0) {
    int rc = compress_feed(enc, NULL, 0, ZSTD_e_end, out);
    if (rc != 0) return rc;
  }
  uint64_t compressed = out->len - REPLICATE_HEADER_SIZE;
  uint64_t payload_checksum =
      XXH3_64bits(out->data + REPLICATE_HEADER_SIZE, (size_t)compressed);
  header_write(out->data, &enc->info, enc->expected, compressed,
               payload_checksum);
  return 0;
}

/* Words of a page, for the XOR. */
#define PAGE_WORDS (LOOM_PAGE_SIZE / sizeof(uint64_t))

/* delta = a XOR b, if at most half of the page's 8-byte words differ
 * (true); false as soon as more do (delta is then incomplete). */
static bool page_delta(uint8_t *restrict delta, const uint8_t *restrict a,
                       const uint8_t *restrict b)
{
  size_t differing = 0;
  for (size_t chunk = 0; chunk < PAGE_WORDS; chunk += 64) {
    for (size_t i = chunk; i < chunk + 64; i++) {
      uint64_t x, y;
      memcpy(&x, a + i * sizeof x, sizeof x);
      memcpy(&y, b + i * sizeof y, sizeof y);
      uint64_t d = x ^ y;
      memcpy(delta + i * sizeof d, &d, sizeof d);
      differing += d != 0;
    }
    if (differing * 2 > PAGE_WORDS) return false;
  }
  return true;
}

void frame_page_xor_into(uint8_t *restrict dst, const uint8_t *restrict src)
{
  for (size_t i = 0; i < PAGE_WORDS; i++) {
    uint64_t x, y;
    memcpy(&x, dst + i * sizeof x, sizeof x);
    memcpy(&y, src + i * sizeof y, sizeof y);
    x ^= y;
    memcpy(dst + i * sizeof x, &x, sizeof x);
  }
}

/* Stream one page: a delta against old_page when there is one and it is
 * mostly zeros, else the page whole. */
static int encode_page(replicate_encoder *enc, uint64_t page_number,
                       uint64_t hash, const void *new_page,
                       const void *old_page, replicate_buf *out)
{
  if (old_page != NULL && page_number < enc->info.before.pages &&
      page_delta(enc->delta, new_page, old_page))
    return frame_encode_entry(enc, page_number, hash, REPLICATE_PAGE_XOR,
                              enc->delta, out);
  return frame_encode_entry(enc, page_number, hash, REPLICATE_PAGE_WHOLE,
                            new_page, out);
}

int replicate_frame_encode(replicate_encoder *enc,
                           const replicate_frame_info *info,
                           const replicate_page_src *pages, size_t n,
                           replicate_buf *out)
{
  assert(enc != NULL && info != NULL && out != NULL);
  for (size_t i = 0; i < n; i++) {
    if (pages[i].new_page == NULL) return REPLICATE_EINVAL;
    if (pages[i].page_number >= info->after.pages) return REPLICATE_EINVAL;
    if (i > 0 && pages[i].page_number <= pages[i - 1].page_number)
      return REPLICATE_EINVAL;
  }
  int rc = frame_encode_begin(enc, info, n, out);
  for (size_t i = 0; rc == 0 && i < n; i++)
    rc = encode_page(enc, pages[i].page_number, pages[i].new_hash,
                     pages[i].new_page, pages[i].old_page, out);
  if (rc == 0) rc = frame_encode_end(enc, out);
  if (rc != 0) out->len = 0;
  return rc;
}

int replicate_frame_encode_commit(replicate_encoder *enc, loom *l,
                                  const loom_commit *c, replicate_buf *out)
{
  assert(enc != NULL && l != NULL && c != NULL && out != NULL);
  if (c->before.epoch != c->after.epoch) return REPLICATE_EINVAL;
  loom_lineage lineage;
  loom_store_lineage(loom_get_store(l), &lineage);
  replicate_frame_info info = {
      .kind = REPLICATE_KIND_COMMIT,
      .history = lineage.history,
      .epoch = c->after.epoch,
      .before = c->before,
      .after = c->after,
      .commit_time_ns = c->after.commit_time_ns,
      .first_commit_time_ns = c->after.commit_time_ns,
  };
  info.before.commit_time_ns = info.after.commit_time_ns = 0;
  for (uint64_t i = 0; i < c->page_count; i++) {
    if (c->page_numbers[i] >= c->after.pages) return REPLICATE_EINVAL;
    if (i > 0 && c->page_numbers[i] <= c->page_numbers[i - 1])
      return REPLICATE_EINVAL;
  }
  int rc = frame_encode_begin(enc, &info, c->page_count, out);
  for (uint64_t i = 0; rc == 0 && i < c->page_count; i++) {
    uint64_t n = c->page_numbers[i];
    const void *old_page = NULL;
    if (n < c->before.pages) {
      rc = loom_commit_old_page_view(l, c, i, enc->old_page, &old_page);
      if (rc != 0) break;
      if (loom_page_hash(n, old_page) != c->old_hashes[i]) {
        enc->rot_page = n; /* the image does not hold what was committed */
        rc = REPLICATE_EIMAGE_ROT;
        break;
      }
    }
    rc = encode_page(enc, n, c->new_hashes[i], loom_page(l, n), old_page, out);
  }
  if (rc == 0) rc = frame_encode_end(enc, out);
  if (rc != 0) out->len = 0;
  return rc;
}

int replicate_frame_encode_heartbeat(const loom_history *history,
                                     const loom_position *latest,
                                     int64_t now_ns, replicate_buf *out)
{
  assert(latest != NULL && out != NULL);
  replicate_frame_info info = {
      .kind = REPLICATE_KIND_HEARTBEAT,
      .history = *history,
      .epoch = latest->epoch,
      .after = *latest,
      .commit_time_ns = latest->commit_time_ns,
      .heartbeat_time_ns = now_ns,
  };
  info.after.commit_time_ns = 0;
  if (frame_info_check(&info) != 0) return REPLICATE_EINVAL;
  int rc = frame_buf_reserve(out, REPLICATE_HEADER_SIZE);
  if (rc != 0) return rc;
  header_write(out->data, &info, 0, 0, XXH3_64bits(NULL, 0));
  out->len = REPLICATE_HEADER_SIZE;
  return 0;
}

/* ---------------------------------------------------------------------- */
/* Decoding */

struct replicate_decoder {
  replicate_limits limits;
  ZSTD_DCtx *dctx;
  replicate_buf payload;  /* decompressed entries */
  uint8_t *old_page;      /* apply: the store's version */
  uint8_t *zero_page;     /* apply: hashes of pages grown but not sent */
};

int replicate_decoder_new(const replicate_limits *limits,
                          replicate_decoder **out)
{
  replicate_limits chosen = limits ? *limits : replicate_limits_default();
  if (chosen.max_frame_pages == 0 || chosen.max_image_pages == 0 ||
      chosen.max_payload_bytes == 0)
    return REPLICATE_EINVAL;
  replicate_decoder *dec = calloc(1, sizeof *dec);
  if (dec == NULL) return ENOMEM;
  dec->limits = chosen;
  dec->dctx = ZSTD_createDCtx();
  dec->old_page = malloc(LOOM_PAGE_SIZE);
  dec->zero_page = calloc(1, LOOM_PAGE_SIZE);
  if (dec->dctx == NULL || dec->old_page == NULL || dec->zero_page == NULL) {
    replicate_decoder_free(dec);
    return ENOMEM;
  }
  *out = dec;
  return 0;
}

void replicate_decoder_free(replicate_decoder *dec)
{
  if (dec == NULL) return;
  ZSTD_freeDCtx(dec->dctx);
  replicate_buf_free(&dec->payload);
  free(dec->old_page);
  free(dec->zero_page);
  free(dec);
}

/* Invariants 1 and 2 of a decoded frame (see DESIGN). */
static int entries_check(const replicate_frame_info *info,
                         const uint8_t *entries)
{
  uint64_t previous = 0;
  for (uint64_t i = 0; i < info->page_count; i++) {
    const uint8_t *e = entries + i * REPLICATE_ENTRY_SIZE;
    uint64_t n = get_le64(e + ENTRY_OFF_PAGE);
    uint8_t encoding = e[ENTRY_OFF_ENCODING];
    if (i > 0 && n <= previous) return REPLICATE_EPAGES;
    if (n >= info->after.pages) return REPLICATE_EPAGES;
    if (encoding == REPLICATE_PAGE_XOR) {
      if (n >= info->before.pages) return REPLICATE_EPAGES;
    } else if (encoding != REPLICATE_PAGE_WHOLE) {
      return REPLICATE_EPAGES;
    }
    previous = n;
  }
  return 0;
}

int replicate_frame_decode(replicate_decoder *dec, const void *bytes,
                           size_t len, replicate_frame *out)
{
  assert(dec != NULL && out != NULL && (bytes != NULL || len == 0));
  replicate_frame_info info;
  int rc = replicate_frame_parse_header(bytes, len, &dec->limits, &info);
  if (rc != 0) return rc;
  if (len < info.frame_size) return REPLICATE_ETRUNCATED;
  if (len > info.frame_size) return REPLICATE_ETRAILING;

  const uint8_t *payload = (const uint8_t *)bytes + REPLICATE_HEADER_SIZE;
  size_t compressed = (size_t)info.compressed_size;
  if (get_le64((const uint8_t *)bytes + FRAME_OFF_PAYLOAD_CHECKSUM) !=
      XXH3_64bits(payload, compressed))
    return REPLICATE_EPAYLOAD_CHECKSUM;

  const uint8_t *entries = NULL;
  if (info.page_count > 0) {
    size_t uncompressed = (size_t)(info.page_count * REPLICATE_ENTRY_SIZE);
    /* The zstd frame must state its size, the declared one, and end
     * exactly where the payload ends. */
    unsigned long long content = ZSTD_getFrameContentSize(payload, compressed);
    if (content == ZSTD_CONTENTSIZE_ERROR ||
        content == ZSTD_CONTENTSIZE_UNKNOWN || content != uncompressed)
      return REPLICATE_EDECOMPRESS;
    size_t frame_len = ZSTD_findFrameCompressedSize(payload, compressed);
    if (ZSTD_isError(frame_len) || frame_len != compressed)
      return REPLICATE_EDECOMPRESS;
    rc = frame_buf_reserve(&dec->payload, uncompressed);
    if (rc != 0) return rc;
    size_t got = ZSTD_decompressDCtx(dec->dctx, dec->payload.data, uncompressed,
                                     payload, compressed);
    if (ZSTD_isError(got) || got != uncompressed) return REPLICATE_EDECOMPRESS;
    dec->payload.len = uncompressed;
    entries = dec->payload.data;
    rc = entries_check(&info, entries);
    if (rc != 0) return rc;
  }
  out->info = info;
  out->decoder = dec;
  out->entries = entries;
  return 0;
}

int frame_decoded_begin(replicate_decoder *dec, const replicate_frame_info *info,
                        uint64_t n, uint8_t **entries)
{
  replicate_frame_info checked;
  if (commit_info_with_count(info, n, &checked) != 0) return REPLICATE_EINVAL;
  if (n > dec->limits.max_frame_pages) return REPLICATE_ETOOBIG;
  int rc = frame_buf_reserve(&dec->payload, (size_t)n * REPLICATE_ENTRY_SIZE);
  if (rc != 0) return rc;
  dec->payload.len = (size_t)n * REPLICATE_ENTRY_SIZE;
  *entries = dec->payload.data;
  return 0;
}

int frame_decoded_end(replicate_decoder *dec, const replicate_frame_info *info,
                      uint64_t n, replicate_frame *out)
{
  replicate_frame_info checked = *info;
  checked.page_count = n;
  checked.compressed_size = 0;
  checked.frame_size = 0;
  int rc = entries_check(&checked, dec->payload.data);
  if (rc != 0) return rc;
  out->info = checked;
  out->decoder = dec;
  out->entries = n > 0 ? dec->payload.data : NULL;
  return 0;
}

void replicate_frame_get_page(const replicate_frame *frame, uint64_t i,
                              replicate_page *out)
{
  assert(i < frame->info.page_count);
  const uint8_t *e = frame->entries + i * REPLICATE_ENTRY_SIZE;
  out->page_number = get_le64(e + ENTRY_OFF_PAGE);
  out->hash = get_le64(e + ENTRY_OFF_HASH);
  out->encoding = (replicate_encoding)e[ENTRY_OFF_ENCODING];
  out->contents = e + ENTRY_OFF_CONTENTS;
}

/* ---------------------------------------------------------------------- */
/* Applying to a standby's store */

/*
 * The whole-image checksum the store will have after the frame, from the
 * store's page hashes and the frame's: pages dropped by a shrink leave the
 * sum, replaced pages swap their hash, pages grown but not sent count as
 * zero pages (they read as zeros once the image is longer).
 */
static uint64_t expected_after_checksum(const replicate_frame *frame,
                                        const loom_store *store,
                                        const loom_position *position,
                                        const uint8_t *zero_page)
{
  const replicate_frame_info *info = &frame->info;
  uint64_t sum = position->checksum;
  uint64_t kept = info->after.pages < position->pages ? info->after.pages
                                                       : position->pages;
  for (uint64_t n = kept; n < position->pages; n++)
    sum -= loom_store_page_hash(store, n);

  uint64_t grow_next = position->pages; /* next grown page not yet counted */
  for (uint64_t i = 0; i < info->page_count; i++) {
    replicate_page page;
    replicate_frame_get_page(frame, i, &page);
    if (page.page_number < position->pages) {
      sum -= loom_store_page_hash(store, page.page_number);
    } else {
      for (; grow_next < page.page_number; grow_next++)
        sum += loom_page_hash(grow_next, zero_page);
      grow_next = page.page_number + 1;
    }
    sum += page.hash;
  }
  for (; grow_next < info->after.pages; grow_next++)
    sum += loom_page_hash(grow_next, zero_page);
  return sum;
}

/*
 * Rebuild the frame's delta pages in place, in the decoder's buffer: each
 * becomes its new contents (XOR with the store's version), and its entry
 * says WHOLE, so the frame still describes the same commit. Then check
 * every page's hash: the only time the standby hashes a frame's page
 * before the read-back (replicate_frame_apply hands these hashes to the
 * store with loom_patch_add_hashed). Done before the patch is begun: the store refuses
 * reads while a patch is open, and a bad frame never starts one. A page
 * whose hash fails is turned back into its delta.
 */
static int rebuild_and_check(const replicate_frame *frame, loom_store *store)
{
  replicate_decoder *dec = frame->decoder;
  /* The entries live in dec->payload, which the decoder owns and may
   * change: only the pointer in the frame is const. */
  uint8_t *entries = dec->payload.data;
  assert(entries == frame->entries || frame->info.page_count == 0);
  for (uint64_t i = 0; i < frame->info.page_count; i++) {
    uint8_t *e = entries + i * REPLICATE_ENTRY_SIZE;
    uint8_t *contents = e + ENTRY_OFF_CONTENTS;
    uint64_t n = get_le64(e + ENTRY_OFF_PAGE);
    bool delta = e[ENTRY_OFF_ENCODING] == REPLICATE_PAGE_XOR;
    if (delta) {
      /* The version the previous commits left, from the commit log when
       * not checkpointed yet: an apply does not wait for the last one's
       * image writes and fsyncs. */
      int rc = loom_store_read_committed_page(store, n, dec->old_page);
      if (rc != 0) return rc;
      frame_page_xor_into(contents, dec->old_page);
      e[ENTRY_OFF_ENCODING] = REPLICATE_PAGE_WHOLE;
    }
    if (loom_page_hash(n, contents) != get_le64(e + ENTRY_OFF_HASH)) {
      if (delta) {
        frame_page_xor_into(contents, dec->old_page);
        e[ENTRY_OFF_ENCODING] = REPLICATE_PAGE_XOR;
      }
      return REPLICATE_EPAGE_HASH;
    }
  }
  return 0;
}

int replicate_frame_apply(const replicate_frame *frame, loom_store *store)
{
  assert(frame != NULL && store != NULL);
  const replicate_frame_info *info = &frame->info;
  replicate_decoder *dec = frame->decoder;
  if (info->kind != REPLICATE_KIND_COMMIT) return REPLICATE_EKIND;

  loom_position position;
  loom_store_position(store, &position);
  loom_lineage lineage;
  loom_store_lineage(store, &lineage);
  int rc = replicate_place_frame(&lineage.history, &position, info);
  if (rc != 0) return rc;
  if (info->after.checksum !=
      expected_after_checksum(frame, store, &position, dec->zero_page))
    return REPLICATE_EAFTER_CHECKSUM;
  rc = rebuild_and_check(frame, store);
  if (rc != 0) return rc;
  if (!loom_history_equal(&lineage.history, &info->history) &&
      !loom_history_is_none(&info->history)) {
    /* The store held nothing (place_frame): it follows this history now. */
    loom_lineage adopted = {.history = info->history};
    rc = loom_store_adopt_lineage(store, &adopted);
    if (rc != 0) return rc;
  }
  if (info->epoch > position.epoch) {
    rc = loom_store_set_epoch(store, info->epoch);
    if (rc != 0) return rc;
    loom_store_position(store, &position);
  }

  loom_patch_header header = {
      .before = position,
      .after = {.epoch = info->epoch,
                .seq = info->after.seq,
                .checksum = info->after.checksum,
                .pages = info->after.pages,
                .commit_time_ns = info->commit_time_ns},
      .page_count = info->page_count,
      .flags = 0,
  };
  loom_patch *patch;
  rc = loom_store_patch_begin(store, &header, &patch);
  if (rc != 0) return rc;
  for (uint64_t i = 0; i < info->page_count; i++) {
    replicate_page page;
    replicate_frame_get_page(frame, i, &page);
    /* rebuild_and_check hashed these contents and found page.hash: the
     * store need not hash them again; and they stay in the decoder's
     * buffer until the commit below returns: no copy either. */
    rc = loom_patch_add_stable(patch, page.page_number, page.contents,
                               page.hash);
    if (rc != 0) {
      loom_patch_abort(patch);
      return rc;
    }
  }
  return loom_patch_commit(patch);
}
