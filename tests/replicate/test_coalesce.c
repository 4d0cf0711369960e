/*
 * test_coalesce.c: merging consecutive frames into one. A standby that
 * applies the merged frame must end with exactly the image it would have
 * after applying each frame in turn, through growth, shrinking, pages
 * re-grown without being sent, and deltas composed over whole pages.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "replicate_testlib.h"

typedef struct chain {
  replicate_buf *frames;
  size_t count;
  model start;  /* the image before the first frame */
  model end;    /* after the last */
} chain;

static void chain_free(chain *c)
{
  for (size_t i = 0; i < c->count; i++) replicate_buf_free(&c->frames[i]);
  free(c->frames);
  model_free(&c->start);
  model_free(&c->end);
}

static void random_chain(chain *c, size_t count, test_rng *r,
                         uint64_t max_pages, replicate_encoder *enc)
{
  model_init(&c->start, 2, 100, 0);
  model_fill_random(&c->start, rng_below(r, max_pages + 1), r);
  model_copy(&c->end, &c->start);
  c->frames = xcalloc(count * sizeof *c->frames);
  c->count = count;
  for (size_t i = 0; i < count; i++)
    assert_int_equal(model_random_commit(&c->end, enc, r, max_pages, &c->frames[i]), 0);
}

/* Coalesce frames [from, to) of c into out. */
static int coalesce(const chain *c, size_t from, size_t to,
                    replicate_coalescer *co, replicate_encoder *enc,
                    replicate_decoder *dec, replicate_buf *out)
{
  for (size_t i = from; i < to; i++) {
    replicate_frame f;
    int rc = replicate_frame_decode(dec, c->frames[i].data, c->frames[i].len, &f);
    if (rc != 0) return rc;
    rc = replicate_coalescer_add(co, &f);
    if (rc != 0) return rc;
  }
  return replicate_coalescer_finish(co, enc, out);
}

/* The merged frame built without compression (finish_frame, for a
 * standby's group apply) says exactly what the encoded one decodes to. */
static void assert_finish_frame_matches(const chain *c, size_t from, size_t to,
                                        replicate_coalescer *co,
                                        replicate_decoder *dec,
                                        replicate_decoder *raw_dec,
                                        const replicate_frame *decoded)
{
  for (size_t i = from; i < to; i++) {
    replicate_frame f;
    assert_int_equal(replicate_frame_decode(dec, c->frames[i].data,
                                            c->frames[i].len, &f), 0);
    assert_int_equal(replicate_coalescer_add(co, &f), 0);
  }
  replicate_frame raw;
  assert_int_equal(replicate_coalescer_finish_frame(co, raw_dec, &raw), 0);
  assert_int_equal(replicate_coalescer_frames(co), 0);
  assert_int_equal(raw.info.flags, decoded->info.flags);
  assert_int_equal(raw.info.epoch, decoded->info.epoch);
  assert_memory_equal(&raw.info.before, &decoded->info.before,
                      sizeof raw.info.before);
  assert_memory_equal(&raw.info.after, &decoded->info.after,
                      sizeof raw.info.after);
  assert_int_equal(raw.info.commit_time_ns, decoded->info.commit_time_ns);
  assert_int_equal(raw.info.page_count, decoded->info.page_count);
  for (uint64_t i = 0; i < raw.info.page_count; i++) {
    replicate_page a, b;
    replicate_frame_get_page(&raw, i, &a);
    replicate_frame_get_page(decoded, i, &b);
    assert_int_equal(a.page_number, b.page_number);
    assert_int_equal(a.hash, b.hash);
    assert_int_equal(a.encoding, b.encoding);
    assert_memory_equal(a.contents, b.contents, LOOM_PAGE_SIZE);
  }
}

static void test_random_chains(void **state)
{
  (void)state;
  replicate_encoder *enc;
  replicate_decoder *dec, *merged_dec, *raw_dec;
  replicate_coalescer *co;
  assert_int_equal(replicate_encoder_new(1, &enc), 0);
  assert_int_equal(replicate_decoder_new(NULL, &dec), 0);
  assert_int_equal(replicate_decoder_new(NULL, &merged_dec), 0);
  assert_int_equal(replicate_decoder_new(NULL, &raw_dec), 0);
  assert_int_equal(replicate_coalescer_new(0, &co), 0);
  test_rng r = {2024};
  replicate_buf merged = {0};
  for (int round = 0; round < 150; round++) {
    chain c;
    size_t count = 1 + rng_below(&r, 10);
    random_chain(&c, count, &r, 24, enc);
    /* Every sub-range [from, to) merges into a frame that takes the
     * standby from the image before `from` to the image after `to - 1`. */
    model standby;
    model_copy(&standby, &c.start);
    for (size_t from = 0; from < count; from++) {
      size_t to = from + 1 + rng_below(&r, count - from);
      assert_int_equal(coalesce(&c, from, to, co, enc, dec, &merged), 0);
      assert_int_equal(replicate_coalescer_frames(co), 0);
      replicate_frame f;
      assert_int_equal(replicate_frame_decode(merged_dec, merged.data,
                                              merged.len, &f), 0);
      assert_int_equal(f.info.flags,
                       to - from > 1 ? REPLICATE_FRAME_COALESCED : 0u);
      assert_finish_frame_matches(&c, from, to, co, dec, raw_dec, &f);
      model target;
      model_copy(&target, &standby);
      assert_int_equal(model_apply_frame(&target, &f), 0);
      /* Apply the same frames one by one to compare. */
      for (size_t i = from; i < to; i++) {
        replicate_frame g;
        assert_int_equal(replicate_frame_decode(dec, c.frames[i].data,
                                                c.frames[i].len, &g), 0);
        assert_int_equal(model_apply_frame(&standby, &g), 0);
      }
      assert_true(model_equal(&target, &standby));
      assert_int_equal(model_recompute(&target), target.checksum);
      model_free(&target);
      from = to - 1;
    }
    assert_true(model_equal(&standby, &c.end));
    model_free(&standby);
    chain_free(&c);
  }
  replicate_buf_free(&merged);
  replicate_coalescer_free(co);
  replicate_decoder_free(raw_dec);
  replicate_decoder_free(merged_dec);
  replicate_decoder_free(dec);
  replicate_encoder_free(enc);
}

/* The hard cases, spelled out: a page shrunk away and grown back unsent
 * (the standby must get zeros, not its old version), a delta over a page
 * that came whole, and a delta of a page grown unsent (base zero). */
static void test_shrink_regrow(void **state)
{
  (void)state;
  replicate_encoder *enc;
  replicate_decoder *dec;
  replicate_coalescer *co;
  assert_int_equal(replicate_encoder_new(1, &enc), 0);
  assert_int_equal(replicate_decoder_new(NULL, &dec), 0);
  assert_int_equal(replicate_coalescer_new(0, &co), 0);
  test_rng r = {7};
  chain c = {0};
  model_init(&c.start, 1, 10, 0);
  model_fill_random(&c.start, 8, &r);
  model_copy(&c.end, &c.start);
  c.frames = xcalloc(4 * sizeof *c.frames);
  c.count = 4;
  uint8_t *news = xmalloc(2 * PS);
  uint64_t nums[2];

  /* 1: page 2 rewritten whole, shrink to 5 pages. */
  rng_fill(&r, news, PS);
  nums[0] = 2;
  assert_int_equal(model_commit(&c.end, enc, 5, 1, nums, news, &c.frames[0]), 0);
  /* 2: page 2 changed sparsely (a delta over the whole version), grow to
   * 10 pages sending only page 9: pages 5..8 are zero pages now. */
  memcpy(news, model_page(&c.end, 2), PS);
  news[100] ^= 0xff;
  rng_fill(&r, news + PS, PS);
  nums[0] = 2;
  nums[1] = 9;
  assert_int_equal(model_commit(&c.end, enc, 10, 2, nums, news, &c.frames[1]), 0);
  /* 3: page 6 (grown unsent, zeros) changed sparsely: a delta over zeros. */
  memset(news, 0, PS);
  news[5] = 42;
  nums[0] = 6;
  assert_int_equal(model_commit(&c.end, enc, 10, 1, nums, news, &c.frames[2]), 0);
  /* 4: nothing but a shrink to 9. */
  assert_int_equal(model_commit(&c.end, enc, 9, 0, nums, news, &c.frames[3]), 0);

  replicate_buf merged = {0};
  assert_int_equal(coalesce(&c, 0, 4, co, enc, dec, &merged), 0);
  replicate_frame f;
  assert_int_equal(replicate_frame_decode(dec, merged.data, merged.len, &f), 0);
  assert_int_equal(f.info.before.seq, 10);
  assert_int_equal(f.info.after.seq, 14);
  assert_int_equal(f.info.before.pages, 8);
  assert_int_equal(f.info.after.pages, 9);
  /* Pages 2 (whole), 5, 7 (zero), 6 (whole: its base was zero); page 9
   * was dropped again, page 8 never existed at the start (zero, unsent). */
  uint64_t want[] = {2, 5, 6, 7};
  assert_int_equal(f.info.page_count, 4);
  for (uint64_t i = 0; i < 4; i++) {
    replicate_page page;
    replicate_frame_get_page(&f, i, &page);
    assert_int_equal(page.page_number, want[i]);
    assert_int_equal(page.encoding, REPLICATE_PAGE_WHOLE);
  }
  model standby;
  model_copy(&standby, &c.start);
  assert_int_equal(model_apply_frame(&standby, &f), 0);
  assert_true(model_equal(&standby, &c.end));
  model_free(&standby);
  free(news);
  chain_free(&c);
  replicate_buf_free(&merged);
  replicate_coalescer_free(co);
  replicate_decoder_free(dec);
  replicate_encoder_free(enc);
}

/* Ten frames changing the same bytes of the same 64 pages merge into one
 * frame of 64 pages, far smaller than the ten. */
static void test_merged_is_smaller(void **state)
{
  (void)state;
  replicate_encoder *enc;
  replicate_decoder *dec;
  replicate_coalescer *co;
  assert_int_equal(replicate_encoder_new(1, &enc), 0);
  assert_int_equal(replicate_decoder_new(NULL, &dec), 0);
  assert_int_equal(replicate_coalescer_new(0, &co), 0);
  test_rng r = {8};
  chain c = {0};
  model_init(&c.start, 1, 0, 0);
  model_fill_random(&c.start, 128, &r);
  model_copy(&c.end, &c.start);
  c.count = 10;
  c.frames = xcalloc(c.count * sizeof *c.frames);
  uint64_t nums[64];
  uint8_t *news = xmalloc(64 * PS);
  size_t total = 0;
  /* Each page has 64 hot bytes (counters, say) that every commit changes. */
  uint16_t hot[64][64];
  for (int p = 0; p < 64; p++)
    for (int k = 0; k < 64; k++) hot[p][k] = (uint16_t)rng_below(&r, PS);
  for (size_t i = 0; i < c.count; i++) {
    for (uint64_t p = 0; p < 64; p++) {
      nums[p] = 2 * p;
      memcpy(news + p * PS, model_page(&c.end, nums[p]), PS);
      for (int k = 0; k < 64; k++) news[p * PS + hot[p][k]] += 1 + (uint8_t)i;
    }
    assert_int_equal(model_commit(&c.end, enc, 128, 64, nums, news, &c.frames[i]), 0);
    total += c.frames[i].len;
  }
  replicate_buf merged = {0};
  assert_int_equal(coalesce(&c, 0, c.count, co, enc, dec, &merged), 0);
  replicate_frame f;
  assert_int_equal(replicate_frame_decode(dec, merged.data, merged.len, &f), 0);
  assert_int_equal(f.info.page_count, 64);
  assert_int_equal(f.info.first_commit_time_ns, c.start.time_ns + 1000);
  assert_int_equal(f.info.commit_time_ns, c.end.time_ns);
  for (uint64_t i = 0; i < 64; i++) {
    replicate_page page;
    replicate_frame_get_page(&f, i, &page);
    assert_int_equal(page.encoding, REPLICATE_PAGE_XOR);
  }
  assert_true(merged.len < total / 4);
  model standby;
  model_copy(&standby, &c.start);
  assert_int_equal(model_apply_frame(&standby, &f), 0);
  assert_true(model_equal(&standby, &c.end));
  model_free(&standby);
  free(news);
  chain_free(&c);
  replicate_buf_free(&merged);
  replicate_coalescer_free(co);
  replicate_decoder_free(dec);
  replicate_encoder_free(enc);
}

static void test_refusals(void **state)
{
  (void)state;
  replicate_encoder *enc;
  replicate_decoder *dec;
  replicate_coalescer *co;
  assert_int_equal(replicate_encoder_new(1, &enc), 0);
  assert_int_equal(replicate_decoder_new(NULL, &dec), 0);
  assert_int_equal(replicate_coalescer_new(5, &co), 0);
  test_rng r = {9};
  chain c;
  random_chain(&c, 3, &r, 4, enc);
  replicate_buf out = {0};
  replicate_frame f;

  assert_int_equal(replicate_coalescer_finish(co, enc, &out), REPLICATE_EINVAL);
  assert_int_equal(replicate_coalescer_finish_frame(co, dec, &f), REPLICATE_EINVAL);
  /* A gap: frames 0 and 2. */
  assert_int_equal(replicate_frame_decode(dec, c.frames[0].data, c.frames[0].len, &f), 0);
  assert_int_equal(replicate_coalescer_add(co, &f), 0);
  assert_int_equal(replicate_coalescer_frames(co), 1);
  assert_int_equal(replicate_frame_decode(dec, c.frames[2].data, c.frames[2].len, &f), 0);
  assert_int_equal(replicate_coalescer_add(co, &f), REPLICATE_ENOT_CONTIGUOUS);
  assert_int_equal(replicate_coalescer_frames(co), 0);
  /* Another epoch. */
  assert_int_equal(replicate_frame_decode(dec, c.frames[0].data, c.frames[0].len, &f), 0);
  assert_int_equal(replicate_coalescer_add(co, &f), 0);
  assert_int_equal(replicate_frame_decode(dec, c.frames[1].data, c.frames[1].len, &f), 0);
  f.info.epoch++;
  assert_int_equal(replicate_coalescer_add(co, &f), REPLICATE_ENOT_CONTIGUOUS);
  /* A heartbeat. */
  loom_position latest = {.epoch = 1, .seq = 1, .checksum = 2, .pages = 3};
  assert_int_equal(replicate_frame_encode_heartbeat(&no_history, &latest, 0, &out), 0);
  assert_int_equal(replicate_frame_decode(dec, out.data, out.len, &f), 0);
  assert_int_equal(replicate_coalescer_add(co, &f), REPLICATE_EKIND);
  /* More distinct pages than allowed. */
  model m;
  model_init(&m, 1, 0, 0);
  model_fill_random(&m, 8, &r);
  uint64_t nums[8];
  uint8_t *news = xmalloc(8 * PS);
  uint64_t after;
  workload_make(&m, WL_REWRITE, 4, &r, nums, news, &after);
  replicate_buf a = {0}, b = {0};
  assert_int_equal(model_commit(&m, enc, after, 4, nums, news, &a), 0);
  for (int i = 0; i < 4; i++) nums[i] = 4 + (uint64_t)i;
  assert_int_equal(model_commit(&m, enc, after, 4, nums, news, &b), 0);
  assert_int_equal(replicate_frame_decode(dec, a.data, a.len, &f), 0);
  assert_int_equal(replicate_coalescer_add(co, &f), 0);
  assert_int_equal(replicate_frame_decode(dec, b.data, b.len, &f), 0);
  assert_int_equal(replicate_coalescer_add(co, &f), REPLICATE_ETOOBIG);
  assert_int_equal(replicate_coalescer_frames(co), 0);
  /* Still usable. */
  assert_int_equal(replicate_frame_decode(dec, a.data, a.len, &f), 0);
  assert_int_equal(replicate_coalescer_add(co, &f), 0);
  assert_int_equal(replicate_coalescer_finish(co, enc, &out), 0);
  assert_int_equal(replicate_frame_decode(dec, out.data, out.len, &f), 0);
  assert_int_equal(f.info.page_count, 4);
  /* Built in place: a decoder's page limit holds as in decoding. */
  replicate_limits small = replicate_limits_default();
  small.max_frame_pages = 3;
  replicate_decoder *small_dec;
  assert_int_equal(replicate_decoder_new(&small, &small_dec), 0);
  assert_int_equal(replicate_frame_decode(dec, a.data, a.len, &f), 0);
  assert_int_equal(replicate_coalescer_add(co, &f), 0);
  assert_int_equal(replicate_coalescer_finish_frame(co, small_dec, &f),
                   REPLICATE_ETOOBIG);
  assert_int_equal(replicate_coalescer_frames(co), 0);
  replicate_decoder_free(small_dec);

  free(news);
  model_free(&m);
  replicate_buf_free(&a);
  replicate_buf_free(&b);
  replicate_buf_free(&out);
  chain_free(&c);
  replicate_coalescer_free(co);
  replicate_decoder_free(dec);
  replicate_encoder_free(enc);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_random_chains),
      cmocka_unit_test(test_shrink_regrow),
      cmocka_unit_test(test_merged_is_smaller),
      cmocka_unit_test(test_refusals),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
