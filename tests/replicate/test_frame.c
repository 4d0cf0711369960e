/*
 * test_frame.c: the frame codec on its own: round trips of the three
 * workloads, heartbeats, and the decoder refusing every kind of damage
 * with the right code.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "replicate_testlib.h"

/* ---------------------------------------------------------------------- */
/* Round trips */

static void round_trip(workload w, size_t n)
{
  test_rng r = {0x5eed + (uint64_t)w * 1000 + n};
  model primary;
  model_init(&primary, 3, 41, 0);
  if (w != WL_APPEND) model_fill_random(&primary, n + n / 2 + 1, &r);
  model standby;
  model_copy(&standby, &primary);

  uint64_t *nums = xmalloc(n * sizeof *nums);
  uint8_t *news = xmalloc(n * PS);
  uint64_t after_pages;
  workload_make(&primary, w, n, &r, nums, news, &after_pages);

  replicate_encoder *enc;
  assert_int_equal(replicate_encoder_new(1, &enc), 0);
  replicate_buf buf = {0};
  replicate_frame_info info;
  replicate_page_src *srcs = xmalloc(n * sizeof *srcs);
  model_commit_info(&primary, after_pages, n, nums, news, &info, srcs);
  assert_int_equal(replicate_frame_encode(enc, &info, srcs, n, &buf), 0);

  replicate_limits limits = replicate_limits_default();
  replicate_decoder *dec;
  assert_int_equal(replicate_decoder_new(&limits, &dec), 0);
  replicate_frame f;
  assert_int_equal(replicate_frame_decode(dec, buf.data, buf.len, &f), 0);

  assert_int_equal(f.info.kind, REPLICATE_KIND_COMMIT);
  assert_int_equal(f.info.flags, 0);
  assert_int_equal(f.info.epoch, 3);
  assert_int_equal(f.info.before.seq, 41);
  assert_int_equal(f.info.after.seq, 42);
  assert_int_equal(f.info.before.checksum, primary.checksum);
  assert_int_equal(f.info.after.checksum, info.after.checksum);
  assert_int_equal(f.info.before.pages, primary.pages);
  assert_int_equal(f.info.after.pages, after_pages);
  assert_int_equal(f.info.page_count, n);
  assert_int_equal(f.info.commit_time_ns, info.commit_time_ns);
  assert_int_equal(f.info.frame_size, buf.len);

  for (size_t i = 0; i < n; i++) {
    replicate_page page;
    replicate_frame_get_page(&f, i, &page);
    assert_int_equal(page.page_number, nums[i]);
    assert_int_equal(page.hash, srcs[i].new_hash);
    /* Sparse changes go as deltas, random rewrites and new pages whole. */
    assert_int_equal(page.encoding,
                     w == WL_SPARSE ? REPLICATE_PAGE_XOR : REPLICATE_PAGE_WHOLE);
  }
  /* The standby rebuilds exactly the primary's image. */
  assert_int_equal(model_apply_frame(&standby, &f), 0);
  model_commit_apply(&primary, &info, n, nums, news);
  assert_true(model_equal(&standby, &primary));
  assert_int_equal(model_recompute(&standby), f.info.after.checksum);

  /* Sparse deltas compress far below the raw pages. */
  if (w == WL_SPARSE) assert_true(buf.len < n * PS / 20 + 256);

  free(srcs);
  free(nums);
  free(news);
  replicate_buf_free(&buf);
  replicate_encoder_free(enc);
  replicate_decoder_free(dec);
  model_free(&primary);
  model_free(&standby);
}

static void test_round_trip_sparse(void **state)
{
  (void)state;
  round_trip(WL_SPARSE, 1);
  round_trip(WL_SPARSE, 64);
  round_trip(WL_SPARSE, 4096);
}

static void test_round_trip_rewrite(void **state)
{
  (void)state;
  round_trip(WL_REWRITE, 1);
  round_trip(WL_REWRITE, 64);
  round_trip(WL_REWRITE, 4096);
}

static void test_round_trip_append(void **state)
{
  (void)state;
  round_trip(WL_APPEND, 1);
  round_trip(WL_APPEND, 64);
  round_trip(WL_APPEND, 4096);
}

/* A commit that only shrinks the image has no pages and no payload. */
static void test_round_trip_shrink_only(void **state)
{
  (void)state;
  test_rng r = {11};
  model primary, standby;
  model_init(&primary, 1, 5, 0);
  model_fill_random(&primary, 10, &r);
  model_copy(&standby, &primary);
  replicate_encoder *enc;
  replicate_decoder *dec;
  assert_int_equal(replicate_encoder_new(3, &enc), 0);
  assert_int_equal(replicate_decoder_new(NULL, &dec), 0);
  replicate_buf buf = {0};
  assert_int_equal(model_commit(&primary, enc, 4, 0, NULL, NULL, &buf), 0);
  assert_int_equal(buf.len, REPLICATE_HEADER_SIZE);
  replicate_frame f;
  assert_int_equal(replicate_frame_decode(dec, buf.data, buf.len, &f), 0);
  assert_int_equal(f.info.page_count, 0);
  assert_int_equal(f.info.after.pages, 4);
  assert_int_equal(model_apply_frame(&standby, &f), 0);
  assert_true(model_equal(&standby, &primary));
  replicate_buf_free(&buf);
  replicate_encoder_free(enc);
  replicate_decoder_free(dec);
  model_free(&primary);
  model_free(&standby);
}

/* A page that changed in most of its words goes whole even with an old
 * version; one that changed in few goes as a delta. */
static void test_encoding_choice(void **state)
{
  (void)state;
  uint8_t *old_page = xcalloc(PS), *few = xcalloc(PS), *most = xcalloc(PS);
  for (size_t i = 0; i < PS; i += 8) {
    few[i] = i < PS / 4 ? 1 : 0;   /* a quarter of the words */
    most[i] = i < 3 * PS / 4 ? 1 : 0; /* three quarters */
  }
  replicate_page_src srcs[2] = {
      {0, loom_page_hash(0, few), few, old_page},
      {1, loom_page_hash(1, most), most, old_page},
  };
  replicate_frame_info info = {
      .kind = REPLICATE_KIND_COMMIT, .epoch = 1,
      .before = {.epoch = 1, .seq = 0, .pages = 2},
      .after = {.epoch = 1, .seq = 1, .pages = 2}};
  replicate_encoder *enc;
  replicate_decoder *dec;
  assert_int_equal(replicate_encoder_new(1, &enc), 0);
  assert_int_equal(replicate_decoder_new(NULL, &dec), 0);
  replicate_buf buf = {0};
  assert_int_equal(replicate_frame_encode(enc, &info, srcs, 2, &buf), 0);
  replicate_frame f;
  assert_int_equal(replicate_frame_decode(dec, buf.data, buf.len, &f), 0);
  replicate_page page;
  replicate_frame_get_page(&f, 0, &page);
  assert_int_equal(page.encoding, REPLICATE_PAGE_XOR);
  replicate_frame_get_page(&f, 1, &page);
  assert_int_equal(page.encoding, REPLICATE_PAGE_WHOLE);
  assert_memory_equal(page.contents, most, PS);
  replicate_buf_free(&buf);
  replicate_encoder_free(enc);
  replicate_decoder_free(dec);
  free(old_page);
  free(few);
  free(most);
}

static void test_encode_refuses_bad_input(void **state)
{
  (void)state;
  uint8_t *page = xcalloc(PS);
  replicate_encoder *enc;
  assert_int_equal(replicate_encoder_new(1, &enc), 0);
  replicate_buf buf = {0};
  replicate_frame_info info = {
      .kind = REPLICATE_KIND_COMMIT, .epoch = 1,
      .before = {.epoch = 1, .seq = 4, .pages = 8},
      .after = {.epoch = 1, .seq = 5, .pages = 8}};
  replicate_page_src srcs[2] = {{3, 0, page, NULL}, {3, 0, page, NULL}};
  /* Pages not strictly ascending. */
  assert_int_equal(replicate_frame_encode(enc, &info, srcs, 2, &buf),
                   REPLICATE_EINVAL);
  /* A page past the new length. */
  srcs[1].page_number = 8;
  assert_int_equal(replicate_frame_encode(enc, &info, srcs, 2, &buf),
                   REPLICATE_EINVAL);
  srcs[1].page_number = 7;
  /* A gap in seq without the coalesced flag, an epoch 0, a heartbeat. */
  info.after.seq = 6;
  assert_int_equal(replicate_frame_encode(enc, &info, srcs, 2, &buf),
                   REPLICATE_EINVAL);
  info.flags = REPLICATE_FRAME_COALESCED;
  assert_int_equal(replicate_frame_encode(enc, &info, srcs, 2, &buf), 0);
  info.epoch = 0;
  assert_int_equal(replicate_frame_encode(enc, &info, srcs, 2, &buf),
                   REPLICATE_EINVAL);
  info.epoch = 1;
  info.kind = REPLICATE_KIND_HEARTBEAT;
  assert_int_equal(replicate_frame_encode(enc, &info, srcs, 2, &buf),
                   REPLICATE_EINVAL);
  replicate_encoder *bad;
  assert_int_equal(replicate_encoder_new(-1, &bad), REPLICATE_EINVAL);
  assert_int_equal(replicate_encoder_new(ZSTD_maxCLevel() + 1, &bad),
                   REPLICATE_EINVAL);
  replicate_buf_free(&buf);
  replicate_encoder_free(enc);
  free(page);
}

static void test_heartbeat(void **state)
{
  (void)state;
  replicate_buf buf = {0};
  loom_position latest = {.epoch = 3, .seq = 1045, .checksum = 0x9f3c,
                          .pages = 77, .commit_time_ns = 123};
  assert_int_equal(replicate_frame_encode_heartbeat(&no_history, &latest, 456, &buf), 0);
  assert_int_equal(buf.len, REPLICATE_HEADER_SIZE);
  replicate_decoder *dec;
  assert_int_equal(replicate_decoder_new(NULL, &dec), 0);
  replicate_frame f;
  assert_int_equal(replicate_frame_decode(dec, buf.data, buf.len, &f), 0);
  assert_int_equal(f.info.kind, REPLICATE_KIND_HEARTBEAT);
  assert_int_equal(f.info.epoch, 3);
  assert_int_equal(f.info.after.seq, 1045);
  assert_int_equal(f.info.after.checksum, 0x9f3c);
  assert_int_equal(f.info.after.pages, 77);
  assert_int_equal(f.info.commit_time_ns, 123);
  assert_int_equal(f.info.heartbeat_time_ns, 456);
  assert_int_equal(f.info.page_count, 0);
  replicate_frame_info info;
  assert_int_equal(replicate_frame_parse_header(buf.data, buf.len, NULL, &info), 0);
  assert_int_equal(info.frame_size, REPLICATE_HEADER_SIZE);
  latest.epoch = 0;
  assert_int_equal(replicate_frame_encode_heartbeat(&no_history, &latest, 2, &buf),
                   REPLICATE_EINVAL);
  replicate_buf_free(&buf);
  replicate_decoder_free(dec);
}

/* ---------------------------------------------------------------------- */
/* Refusals */

/* A small frame: two pages, one delta and one whole, 64 bytes changed. */
static void small_frame(replicate_buf *buf)
{
  test_rng r = {99};
  model m;
  model_init(&m, 2, 10, 0);
  model_fill_random(&m, 4, &r);
  uint64_t nums[2] = {1, 4};
  uint8_t *news = xmalloc(2 * PS);
  memcpy(news, model_page(&m, 1), PS);
  for (int k = 0; k < 64; k++) news[rng_below(&r, PS)] ^= 0x5a;
  memset(news + PS, 0x33, PS);
  replicate_encoder *enc;
  assert_int_equal(replicate_encoder_new(1, &enc), 0);
  assert_int_equal(model_commit(&m, enc, 5, 2, nums, news, buf), 0);
  replicate_encoder_free(enc);
  free(news);
  model_free(&m);
}

static void test_truncated(void **state)
{
  (void)state;
  replicate_buf buf = {0};
  small_frame(&buf);
  replicate_decoder *dec;
  assert_int_equal(replicate_decoder_new(NULL, &dec), 0);
  replicate_frame f;
  for (size_t len = 0; len < buf.len; len++)
    assert_int_equal(replicate_frame_decode(dec, buf.data, len, &f),
                     REPLICATE_ETRUNCATED);
  assert_int_equal(replicate_frame_decode(dec, buf.data, buf.len, &f), 0);
  /* One byte too many. */
  uint8_t *longer = xmalloc(buf.len + 1);
  memcpy(longer, buf.data, buf.len);
  longer[buf.len] = 0;
  assert_int_equal(replicate_frame_decode(dec, longer, buf.len + 1, &f),
                   REPLICATE_ETRAILING);
  free(longer);
  replicate_buf_free(&buf);
  replicate_decoder_free(dec);
}

/* Flip every bit of every byte of small frames: each is refused, with the
 * code of the part it hit. */
static void flip_every_bit(const replicate_buf *buf)
{
  replicate_decoder *dec;
  assert_int_equal(replicate_decoder_new(NULL, &dec), 0);
  uint8_t *copy = xmalloc(buf->len);
  replicate_frame f;
  for (size_t i = 0; i < buf->len; i++) {
    for (int bit = 0; bit < 8; bit++) {
      memcpy(copy, buf->data, buf->len);
      copy[i] ^= (uint8_t)(1u << bit);
      int rc = replicate_frame_decode(dec, copy, buf->len, &f);
      int want = i < 4                         ? REPLICATE_EMAGIC
                 : i < 6                       ? REPLICATE_EVERSION
                 : i < REPLICATE_HEADER_SIZE   ? REPLICATE_EHEADER_CHECKSUM
                                               : REPLICATE_EPAYLOAD_CHECKSUM;
      if (rc != want)
        fail_msg("byte %zu bit %d: got %d (%s), want %d", i, bit, rc,
                 replicate_strerror(rc), want);
    }
  }
  free(copy);
  replicate_decoder_free(dec);
}

static void test_bit_flips(void **state)
{
  (void)state;
  replicate_buf buf = {0};
  small_frame(&buf);
  assert_true(buf.len < 2048);
  flip_every_bit(&buf);
  loom_position latest = {.epoch = 4, .seq = 9, .checksum = 9, .pages = 9,
                          .commit_time_ns = 1};
  assert_int_equal(replicate_frame_encode_heartbeat(&no_history, &latest, 2, &buf), 0);
  flip_every_bit(&buf);
  replicate_buf_free(&buf);
}

static void test_garbage(void **state)
{
  (void)state;
  test_rng r = {1234};
  replicate_limits limits = {64, 1u << 20, 1u << 20};
  replicate_decoder *dec;
  assert_int_equal(replicate_decoder_new(&limits, &dec), 0);
  uint8_t *junk = xmalloc(4096);
  replicate_frame f;
  for (int round = 0; round < 20000; round++) {
    size_t len = rng_below(&r, 4096);
    rng_fill(&r, junk, len);
    if (round % 2 && len >= 6) { /* past the magic and version checks */
      memcpy(junk, "LSFR\x02\x00", 6);
    }
    int rc = replicate_frame_decode(dec, junk, len, &f);
    assert_true(rc < 0 && rc > REPLICATE_ELAST);
  }
  free(junk);
  replicate_decoder_free(dec);
}

/* Decode a forged frame (compressed payload of raw entries). */
static int decode_forged(forge_header *h, const void *raw, size_t raw_len,
                         const replicate_limits *limits)
{
  size_t len;
  uint8_t *frame = raw_len ? forge_frame_entries(h, raw, raw_len, &len)
                           : forge_frame(h, NULL, 0, true, &len);
  replicate_decoder *dec;
  assert_int_equal(replicate_decoder_new(limits, &dec), 0);
  replicate_frame f;
  int rc = replicate_frame_decode(dec, frame, len, &f);
  replicate_decoder_free(dec);
  free(frame);
  return rc;
}

static void test_forged_baseline(void **state)
{
  (void)state;
  /* The forger matches the decoder: a forged valid frame decodes. */
  uint8_t *raw = xmalloc(REPLICATE_ENTRY_SIZE);
  forge_entry(raw, 3, 77, REPLICATE_PAGE_XOR, NULL);
  forge_header h = forge_default(1);
  assert_int_equal(decode_forged(&h, raw, REPLICATE_ENTRY_SIZE, NULL), 0);
  free(raw);
}

static void test_wrong_version(void **state)
{
  (void)state;
  uint8_t *raw = xmalloc(REPLICATE_ENTRY_SIZE);
  forge_entry(raw, 3, 77, REPLICATE_PAGE_WHOLE, NULL);
  forge_header h = forge_default(1);
  h.version = REPLICATE_FRAME_VERSION + 1;
  assert_int_equal(decode_forged(&h, raw, REPLICATE_ENTRY_SIZE, NULL),
                   REPLICATE_EVERSION);
  h.version = 1; /* frames of format 1 carried no history */
  assert_int_equal(decode_forged(&h, raw, REPLICATE_ENTRY_SIZE, NULL),
                   REPLICATE_EVERSION);
  h.version = 0;
  assert_int_equal(decode_forged(&h, raw, REPLICATE_ENTRY_SIZE, NULL),
                   REPLICATE_EVERSION);
  free(raw);
}

static void test_malformed_header(void **state)
{
  (void)state;
  uint8_t *raw = xmalloc(REPLICATE_ENTRY_SIZE);
  forge_entry(raw, 3, 77, REPLICATE_PAGE_WHOLE, NULL);
  forge_header base = forge_default(1), h;
#define EXPECT_MALFORMED(statement)                                          \
  do {                                                                       \
    h = base;                                                                \
    statement;                                                               \
    int rc_ = decode_forged(&h, raw, REPLICATE_ENTRY_SIZE, NULL);            \
    if (rc_ != REPLICATE_EMALFORMED)                                         \
      fail_msg("%s: got %d (%s)", #statement, rc_, replicate_strerror(rc_)); \
  } while (0)
  EXPECT_MALFORMED(h.kind = 0);
  EXPECT_MALFORMED(h.kind = 3);
  EXPECT_MALFORMED(h.flags = 2);
  EXPECT_MALFORMED(h.flags = 0x80);
  EXPECT_MALFORMED(h.epoch = 0);
  EXPECT_MALFORMED(h.reserved = 1);
  EXPECT_MALFORMED(h.after_seq = h.before_seq);
  EXPECT_MALFORMED(h.after_seq = h.before_seq - 1);
  EXPECT_MALFORMED(h.after_seq = h.before_seq + 2); /* not coalesced */
  EXPECT_MALFORMED((h.before_seq = UINT64_MAX, h.after_seq = 0));
  EXPECT_MALFORMED(h.after_pages = 0);              /* fewer than pages */
  EXPECT_MALFORMED(h.heartbeat_time = 1);
  EXPECT_MALFORMED(h.uncompressed += 1);
  EXPECT_MALFORMED(h.uncompressed = 0);
  /* A heartbeat carrying what only commits carry. */
  EXPECT_MALFORMED(h.kind = 2);
  /* A coalesced frame merges at least two commits. */
  EXPECT_MALFORMED(h.flags = REPLICATE_FRAME_COALESCED);
#undef EXPECT_MALFORMED
  /* ... and may skip seqs. */
  h = base;
  h.flags = REPLICATE_FRAME_COALESCED;
  h.after_seq = h.before_seq + 5;
  assert_int_equal(decode_forged(&h, raw, REPLICATE_ENTRY_SIZE, NULL), 0);
  /* Zero pages with a payload, pages without one. */
  h = forge_default(0);
  assert_int_equal(decode_forged(&h, raw, REPLICATE_ENTRY_SIZE, NULL),
                   REPLICATE_EMALFORMED);
  h = forge_default(1);
  assert_int_equal(decode_forged(&h, NULL, 0, NULL), REPLICATE_EMALFORMED);
  /* Heartbeats with commit fields. */
  forge_header hb = forge_default(0);
  hb.kind = 2;
  hb.before_seq = hb.before_checksum = hb.before_pages = 0;
  hb.first_commit_time = 0;
  hb.heartbeat_time = 99;
  assert_int_equal(decode_forged(&hb, NULL, 0, NULL), 0);
  h = hb;
  h.before_seq = 1;
  assert_int_equal(decode_forged(&h, NULL, 0, NULL), REPLICATE_EMALFORMED);
  h = hb;
  h.flags = REPLICATE_FRAME_COALESCED;
  assert_int_equal(decode_forged(&h, NULL, 0, NULL), REPLICATE_EMALFORMED);
  h = hb;
  h.first_commit_time = 3;
  assert_int_equal(decode_forged(&h, NULL, 0, NULL), REPLICATE_EMALFORMED);
  free(raw);
}

static void test_oversized(void **state)
{
  (void)state;
  replicate_limits limits = {.max_frame_pages = 8,
                             .max_image_pages = 1000,
                             .max_payload_bytes = 4096};
  uint8_t *raw = xmalloc(REPLICATE_ENTRY_SIZE);
  forge_entry(raw, 3, 77, REPLICATE_PAGE_WHOLE, NULL);

  /* Declared sizes are checked against the limits from the header alone:
   * the payload is not even present. */
  forge_header h = forge_default(9);
  h.after_pages = 100;
  size_t len;
  uint8_t *frame = forge_frame(&h, NULL, 0, false, &len);
  replicate_decoder *dec;
  assert_int_equal(replicate_decoder_new(&limits, &dec), 0);
  replicate_frame f;
  replicate_frame_info info;
  h.compressed = 10;
  forge_write_header(&h, frame);
  assert_int_equal(replicate_frame_decode(dec, frame, len, &f), REPLICATE_ETOOBIG);
  assert_int_equal(replicate_frame_parse_header(frame, len, &limits, &info),
                   REPLICATE_ETOOBIG);
  /* The largest page count the format can state. */
  h.page_count = UINT32_MAX;
  h.after_pages = UINT64_MAX;
  h.uncompressed = (uint64_t)UINT32_MAX * REPLICATE_ENTRY_SIZE;
  forge_write_header(&h, frame);
  assert_int_equal(replicate_frame_decode(dec, frame, len, &f), REPLICATE_ETOOBIG);
  /* An image longer than allowed. */
  h = forge_default(1);
  h.before_pages = 1001;
  h.compressed = 10;
  forge_write_header(&h, frame);
  assert_int_equal(replicate_frame_decode(dec, frame, len, &f), REPLICATE_ETOOBIG);
  h = forge_default(1);
  h.after_pages = 1001;
  h.compressed = 10;
  forge_write_header(&h, frame);
  assert_int_equal(replicate_frame_decode(dec, frame, len, &f), REPLICATE_ETOOBIG);
  /* A payload larger than allowed, and the largest one the format can
   * state (no overflow computing the frame's length). */
  h = forge_default(1);
  h.compressed = 4097;
  forge_write_header(&h, frame);
  assert_int_equal(replicate_frame_decode(dec, frame, len, &f), REPLICATE_ETOOBIG);
  h.compressed = UINT64_MAX;
  forge_write_header(&h, frame);
  assert_int_equal(replicate_frame_decode(dec, frame, len, &f), REPLICATE_ETOOBIG);
  replicate_limits unlimited = {UINT64_MAX, UINT64_MAX, UINT64_MAX};
  assert_int_equal(replicate_frame_parse_header(frame, len, &unlimited, &info),
                   REPLICATE_ETOOBIG);
  /* Within the limits, the frame is merely truncated. */
  h.compressed = 4096;
  forge_write_header(&h, frame);
  assert_int_equal(replicate_frame_decode(dec, frame, len, &f), REPLICATE_ETRUNCATED);
  replicate_decoder_free(dec);
  free(frame);
  free(raw);
}

/* A small zstd payload that expands far beyond what the header declares:
 * refused before decompressing, and even when the header declares the
 * truth, by the limits. */
static void test_zstd_bomb(void **state)
{
  (void)state;
  size_t big = 256u << 20;
  uint8_t *zeros = xcalloc(big);
  size_t bound = ZSTD_compressBound(big);
  uint8_t *z = xmalloc(bound);
  size_t zlen = ZSTD_compress(z, bound, zeros, big, 1);
  assert_false(ZSTD_isError(zlen));
  assert_true(zlen < 64 * 1024);
  free(zeros);

  /* The header says one page; the zstd frame says 256 MiB. */
  forge_header h = forge_default(1);
  size_t len;
  uint8_t *frame = forge_frame(&h, z, zlen, true, &len);
  replicate_decoder *dec;
  assert_int_equal(replicate_decoder_new(NULL, &dec), 0);
  replicate_frame f;
  assert_int_equal(replicate_frame_decode(dec, frame, len, &f),
                   REPLICATE_EDECOMPRESS);
  free(frame);

  /* The header tells the truth (as many pages as the bytes make): over
   * a receiver's page limit, refused from the header alone. */
  replicate_limits limits = {1024, 1u << 20, 1u << 20};
  replicate_decoder *small;
  assert_int_equal(replicate_decoder_new(&limits, &small), 0);
  h = forge_default((uint32_t)(big / REPLICATE_ENTRY_SIZE));
  h.after_pages = h.before_pages = 1u << 20;
  frame = forge_frame(&h, z, zlen, true, &len);
  assert_int_equal(replicate_frame_decode(small, frame, len, &f),
                   REPLICATE_ETOOBIG);
  replicate_decoder_free(small);
  free(frame);
  free(z);

  /* A zstd frame that does not state its size at all. */
  uint8_t *raw = xcalloc(REPLICATE_ENTRY_SIZE);
  forge_entry(raw, 3, 77, REPLICATE_PAGE_WHOLE, NULL);
  ZSTD_CCtx *cctx = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 0);
  z = xmalloc(ZSTD_compressBound(REPLICATE_ENTRY_SIZE));
  size_t zcap = ZSTD_compressBound(REPLICATE_ENTRY_SIZE);
  size_t unsized = ZSTD_compress2(cctx, z, zcap, raw, REPLICATE_ENTRY_SIZE);
  assert_false(ZSTD_isError(unsized));
  ZSTD_freeCCtx(cctx);
  assert_true(ZSTD_getFrameContentSize(z, unsized) == ZSTD_CONTENTSIZE_UNKNOWN);
  h = forge_default(1);
  frame = forge_frame(&h, z, unsized, true, &len);
  assert_int_equal(replicate_frame_decode(dec, frame, len, &f),
                   REPLICATE_EDECOMPRESS);
  free(frame);

  /* Two zstd frames back to back: the payload must be exactly one. */
  size_t one = ZSTD_compress(z, ZSTD_compressBound(REPLICATE_ENTRY_SIZE), raw,
                             REPLICATE_ENTRY_SIZE, 1);
  assert_false(ZSTD_isError(one));
  uint8_t *two = xmalloc(2 * one);
  memcpy(two, z, one);
  memcpy(two + one, z, one);
  frame = forge_frame(&h, two, 2 * one, true, &len);
  assert_int_equal(replicate_frame_decode(dec, frame, len, &f),
                   REPLICATE_EDECOMPRESS);
  free(frame);
  /* Not zstd at all. */
  memset(two, 0xab, one);
  frame = forge_frame(&h, two, one, true, &len);
  assert_int_equal(replicate_frame_decode(dec, frame, len, &f),
                   REPLICATE_EDECOMPRESS);
  free(frame);
  /* A zstd frame cut short. */
  frame = forge_frame(&h, z, one - 1, true, &len);
  assert_int_equal(replicate_frame_decode(dec, frame, len, &f),
                   REPLICATE_EDECOMPRESS);
  free(frame);
  free(two);
  free(z);
  free(raw);
  replicate_decoder_free(dec);
}

static void test_bad_entries(void **state)
{
  (void)state;
  uint8_t *raw = xmalloc(2 * REPLICATE_ENTRY_SIZE);
  forge_header h = forge_default(2);
  h.before_pages = 10;
  h.after_pages = 12;
#define ENTRIES(p0, e0, p1, e1)                                   \
  do {                                                            \
    forge_entry(raw, p0, 1, e0, NULL);                            \
    forge_entry(raw + REPLICATE_ENTRY_SIZE, p1, 1, e1, NULL);     \
  } while (0)
  ENTRIES(3, 1, 11, 0);
  assert_int_equal(decode_forged(&h, raw, 2 * REPLICATE_ENTRY_SIZE, NULL), 0);
  ENTRIES(3, 1, 3, 0); /* repeated */
  assert_int_equal(decode_forged(&h, raw, 2 * REPLICATE_ENTRY_SIZE, NULL),
                   REPLICATE_EPAGES);
  ENTRIES(5, 1, 3, 0); /* descending */
  assert_int_equal(decode_forged(&h, raw, 2 * REPLICATE_ENTRY_SIZE, NULL),
                   REPLICATE_EPAGES);
  ENTRIES(3, 1, 12, 0); /* past after.pages */
  assert_int_equal(decode_forged(&h, raw, 2 * REPLICATE_ENTRY_SIZE, NULL),
                   REPLICATE_EPAGES);
  ENTRIES(3, 2, 5, 0); /* unknown encoding */
  assert_int_equal(decode_forged(&h, raw, 2 * REPLICATE_ENTRY_SIZE, NULL),
                   REPLICATE_EPAGES);
  ENTRIES(3, 1, 10, 1); /* delta of a page that did not exist */
  assert_int_equal(decode_forged(&h, raw, 2 * REPLICATE_ENTRY_SIZE, NULL),
                   REPLICATE_EPAGES);
#undef ENTRIES
  free(raw);
}

static void test_strerror(void **state)
{
  (void)state;
  for (int rc = REPLICATE_ETRUNCATED; rc > REPLICATE_ELAST; rc--) {
    const char *text = replicate_strerror(rc);
    assert_non_null(text);
    assert_true(strlen(text) > 5);
    /* Every code has its own text. */
    for (int other = REPLICATE_ETRUNCATED; other > rc; other--)
      assert_string_not_equal(text, replicate_strerror(other));
  }
  assert_non_null(replicate_strerror(ENOSPC));
  assert_non_null(replicate_strerror(LOOM_EPOSITION));
  assert_non_null(replicate_strerror(-1));
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip_sparse),
      cmocka_unit_test(test_round_trip_rewrite),
      cmocka_unit_test(test_round_trip_append),
      cmocka_unit_test(test_round_trip_shrink_only),
      cmocka_unit_test(test_encoding_choice),
      cmocka_unit_test(test_encode_refuses_bad_input),
      cmocka_unit_test(test_heartbeat),
      cmocka_unit_test(test_truncated),
      cmocka_unit_test(test_bit_flips),
      cmocka_unit_test(test_garbage),
      cmocka_unit_test(test_forged_baseline),
      cmocka_unit_test(test_wrong_version),
      cmocka_unit_test(test_malformed_header),
      cmocka_unit_test(test_oversized),
      cmocka_unit_test(test_zstd_bomb),
      cmocka_unit_test(test_bad_entries),
      cmocka_unit_test(test_strerror),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
