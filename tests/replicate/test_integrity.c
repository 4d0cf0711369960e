/*
 * test_integrity.c: the tree and pages requests and answers on the wire
 * (replicate/integrity.c): what is accepted, and that anything malformed,
 * truncated, extended or flipped is one clear error, never a crash (run
 * under ASan in the sanitizer build).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "replicate.h"

static void test_numbers(void **state)
{
  (void)state;
  uint64_t v = 7;
  assert_int_equal(replicate_parse_u64("0", &v), 0);
  assert_int_equal(v, 0);
  assert_int_equal(replicate_parse_u64("18446744073709551615", &v), 0);
  assert_true(v == UINT64_MAX);
  static const char *const bad[] = {"", "01", "-1", "+1", " 1", "1 ", "1x",
                                    "18446744073709551616", "99999999999999999999",
                                    "0x10", "1e3"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    if (replicate_parse_u64(bad[i], &v) != REPLICATE_EREQUEST)
      fail_msg("accepted %s", bad[i]);
  assert_int_equal(replicate_parse_u64(NULL, &v), REPLICATE_EREQUEST);
}

static void test_ranges(void **state)
{
  (void)state;
  replicate_page_run r[8];
  size_t n = 0;
  assert_int_equal(replicate_parse_ranges("0-3,5,7-7,100", r, 8, &n, 256), 0);
  assert_int_equal(n, 4);
  assert_int_equal(r[0].first, 0);
  assert_int_equal(r[0].last, 3);
  assert_int_equal(r[1].first, 5);
  assert_int_equal(r[1].last, 5);
  assert_int_equal(r[3].first, 100);
  assert_int_equal(replicate_parse_ranges("0-255", r, 8, &n, 256), 0);
  static const char *const bad[] = {
      "", ",", "1,", ",1", "1,,2", "3-1", "1-", "-1", "1--2", "2,1", "1,1",
      "0-3,3", "0-256", "0-200,300-400", "1-2-3", "a", "1;2", "0-3 ",
      "1,2,3,4,5,6,7,8,9", "18446744073709551615-18446744073709551615,1",
      "18446744073709551616"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    if (replicate_parse_ranges(bad[i], r, 8, &n, 256) != REPLICATE_EREQUEST)
      fail_msg("accepted %s", bad[i]);
  assert_int_equal(replicate_parse_ranges(NULL, r, 8, &n, 256), REPLICATE_EREQUEST);
}

/* A valid answer of kind with count entries over an image of pages. */
static uint8_t *make_answer(replicate_answer_kind kind, uint64_t count,
                            uint64_t pages, size_t *len)
{
  replicate_answer_head h = {.kind = kind, .count = count,
                             .position = {.epoch = 2, .seq = 9, .checksum = 77,
                                          .pages = pages}};
  h.history.id[0] = 0xab;
  *len = replicate_answer_size(kind, count);
  uint8_t *buf = calloc(1, *len);
  assert_non_null(buf);
  replicate_answer_begin(&h, buf);
  uint8_t page[LOOM_PAGE_SIZE];
  for (uint64_t i = 0; i < count; i++) {
    memset(page, (int)i, sizeof page);
    if (kind == REPLICATE_ANSWER_TREE)
      replicate_answer_put_node(buf, i, 1000 + i);
    else
      replicate_answer_put_page(buf, i, 2 * i, loom_page_hash(2 * i, page), page);
  }
  replicate_answer_seal(buf, *len);
  return buf;
}

static void test_answers(void **state)
{
  (void)state;
  size_t len;
  replicate_answer_head h;
  uint8_t *t = make_answer(REPLICATE_ANSWER_TREE, 5, 5, &len);
  assert_int_equal(replicate_answer_decode(t, len, &h), 0);
  assert_int_equal(h.kind, REPLICATE_ANSWER_TREE);
  assert_int_equal(h.count, 5);
  assert_int_equal(h.position.seq, 9);
  assert_int_equal(h.history.id[0], 0xab);
  assert_int_equal(replicate_answer_node(t, 4), 1004);
  /* Every truncation, every single bit flipped: refused. */
  for (size_t cut = 0; cut < len; cut++)
    assert_int_equal(replicate_answer_decode(t, cut, &h), REPLICATE_EANSWER);
  for (size_t bit = 0; bit < len * 8; bit++) {
    t[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    assert_int_equal(replicate_answer_decode(t, len, &h), REPLICATE_EANSWER);
    t[bit / 8] ^= (uint8_t)(1u << (bit % 8));
  }
  free(t);
  /* More nodes than the level has: refused even when sealed. */
  t = make_answer(REPLICATE_ANSWER_TREE, 6, 5, &len);
  assert_int_equal(replicate_answer_decode(t, len, &h), REPLICATE_EANSWER);
  free(t);

  uint8_t *p = make_answer(REPLICATE_ANSWER_PAGES, 3, 6, &len);
  assert_int_equal(replicate_answer_decode(p, len, &h), 0);
  uint64_t n, hash;
  const uint8_t *contents;
  replicate_answer_page(p, 2, &n, &hash, &contents);
  assert_int_equal(n, 4);
  assert_int_equal(contents[100], 2);
  assert_int_equal(hash, loom_page_hash(4, contents));
  free(p);
  /* A page past the image's end, or pages out of order: refused. */
  p = make_answer(REPLICATE_ANSWER_PAGES, 3, 4, &len);
  assert_int_equal(replicate_answer_decode(p, len, &h), REPLICATE_EANSWER);
  free(p);
  assert_int_equal(replicate_answer_decode(NULL, 0, &h), REPLICATE_EANSWER);
}

/* Random bytes, and random changes of a valid answer: never accepted
 * unless valid, never a crash. */
static void test_random(void **state)
{
  (void)state;
  uint64_t x = 88172645463325252ull;
  size_t len;
  uint8_t *good = make_answer(REPLICATE_ANSWER_PAGES, 2, 4, &len);
  uint8_t *buf = malloc(len);
  replicate_answer_head h;
  for (int round = 0; round < 2000; round++) {
    memcpy(buf, good, len);
    for (int k = 0; k < 1 + round % 5; k++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      buf[x % len] = (uint8_t)(x >> 32);
    }
    size_t cut = round % 3 ? len : (size_t)(x % (len + 1));
    int rc = replicate_answer_decode(buf, cut, &h);
    assert_true(rc == 0 || rc == REPLICATE_EANSWER);
    if (rc == 0)
      assert_memory_equal(buf, good, len); /* only the original passes */
  }
  free(buf);
  free(good);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_numbers),
      cmocka_unit_test(test_ranges),
      cmocka_unit_test(test_answers),
      cmocka_unit_test(test_random),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
