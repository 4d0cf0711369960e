/*
 * test_stream.c: the image stream's reader (replicate/stream.c): the
 * header and each page come out whole whatever the pieces, a bad header
 * and bytes past the last page stop it, a reset starts over.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "replicate.h"

#define PAGES 3u

/* A stream of PAGES pages, page i filled with the byte 'a' + i; *len gets
 * its length plus extra trailing bytes (0xee). */
static uint8_t *make_stream(size_t extra, size_t *len, loom_position *pos)
{
  *pos = (loom_position){.epoch = 2, .seq = 9, .checksum = 0x1234,
                         .pages = PAGES};
  loom_lineage lineage;
  memset(&lineage, 0, sizeof lineage);
  memset(lineage.history.id, 7, sizeof lineage.history.id);
  *len = (size_t)replicate_stream_length(pos) + extra;
  uint8_t *s = malloc(*len);
  assert_non_null(s);
  loom_stream_header_encode(s, pos, &lineage);
  for (unsigned i = 0; i < PAGES; i++)
    memset(s + LOOM_STREAM_HEADER + (size_t)i * LOOM_PAGE_SIZE, 'a' + i,
           LOOM_PAGE_SIZE);
  memset(s + *len - extra, 0xee, extra);
  return s;
}

typedef struct counts {
  unsigned headers, pages, bad, trailing;
} counts;

/* Feed s in pieces of `piece` bytes; count the events; check each page. */
static void feed(replicate_stream_reader *r, const uint8_t *s, size_t len,
                 size_t piece, counts *c)
{
  for (size_t off = 0; off < len; off += piece) {
    const uint8_t *p = s + off;
    size_t left = len - off < piece ? len - off : piece;
    while (left > 0) {
      switch (replicate_stream_reader_take(r, &p, &left)) {
      case REPLICATE_STREAM_MORE:
        assert_int_equal(left, 0);
        break;
      case REPLICATE_STREAM_HEADER:
        c->headers++;
        break;
      case REPLICATE_STREAM_BAD_HEADER:
        c->bad++;
        return;
      case REPLICATE_STREAM_PAGE:
        assert_int_equal(r->page[0], 'a' + (r->pages - 1));
        assert_int_equal(r->page[LOOM_PAGE_SIZE - 1], 'a' + (r->pages - 1));
        c->pages++;
        break;
      case REPLICATE_STREAM_TRAILING:
        assert_int_equal(*p, 0xee);
        c->trailing++;
        return;
      }
    }
  }
}

/* Each test's stream (PAGES pages and 5 trailing bytes, which only
 * test_trailing_bytes_stop feeds) and a reader. */
typedef struct fixture {
  uint8_t *s;
  size_t len; /* without the trailing bytes */
  loom_position pos;
  replicate_stream_reader r;
  counts c;
} fixture;

static int setup(void **state)
{
  fixture *fx = calloc(1, sizeof *fx);
  assert_non_null(fx);
  fx->s = make_stream(5, &fx->len, &fx->pos);
  fx->len -= 5;
  assert_int_equal(replicate_stream_reader_init(&fx->r), 0);
  *state = fx;
  return 0;
}

static int teardown(void **state)
{
  fixture *fx = *state;
  replicate_stream_reader_free(&fx->r);
  free(fx->s);
  free(fx);
  return 0;
}

static void test_whole_in_any_pieces(void **state)
{
  fixture *fx = *state;
  const size_t pieces[] = {1, 7, 511, 512, 513, LOOM_PAGE_SIZE,
                           LOOM_PAGE_SIZE + 1, 100000};
  for (size_t i = 0; i < sizeof pieces / sizeof *pieces; i++) {
    replicate_stream_reader_reset(&fx->r);
    counts c = {0};
    feed(&fx->r, fx->s, fx->len, pieces[i], &c);
    assert_int_equal(c.headers, 1);
    assert_int_equal(c.pages, PAGES);
    assert_int_equal(c.bad + c.trailing, 0);
    assert_true(loom_position_same(&fx->r.position, &fx->pos));
    assert_int_equal(fx->r.lineage.history.id[0], 7);
    assert_true(replicate_stream_reader_complete(&fx->r));
  }
}

static void test_truncated_is_not_complete(void **state)
{
  fixture *fx = *state;
  feed(&fx->r, fx->s, LOOM_STREAM_HEADER - 1, 64, &fx->c);
  assert_int_equal(fx->c.headers, 0);
  assert_false(replicate_stream_reader_complete(&fx->r));
  feed(&fx->r, fx->s + LOOM_STREAM_HEADER - 1, fx->len - LOOM_STREAM_HEADER,
       4096, &fx->c);
  assert_int_equal(fx->c.headers, 1);
  assert_int_equal(fx->c.pages, PAGES - 1);
  assert_false(replicate_stream_reader_complete(&fx->r)); /* a byte short */
}

static void test_bad_header_stops(void **state)
{
  fixture *fx = *state;
  fx->s[0] ^= 0xff; /* the magic */
  feed(&fx->r, fx->s, fx->len, 1000, &fx->c);
  assert_int_equal(fx->c.bad, 1);
  assert_int_equal(fx->c.headers + fx->c.pages, 0);
  assert_int_not_equal(fx->r.header_rc, 0);
  /* It repeats and takes nothing. */
  const uint8_t *p = fx->s + LOOM_STREAM_HEADER;
  size_t left = 10;
  assert_int_equal(replicate_stream_reader_take(&fx->r, &p, &left),
                   REPLICATE_STREAM_BAD_HEADER);
  assert_int_equal(left, 10);
  assert_false(replicate_stream_reader_complete(&fx->r));
}

static void test_trailing_bytes_stop(void **state)
{
  fixture *fx = *state;
  feed(&fx->r, fx->s, fx->len + 5, fx->len + 5, &fx->c);
  assert_int_equal(fx->c.pages, PAGES);
  assert_int_equal(fx->c.trailing, 1);
}

static void test_reset_starts_over(void **state)
{
  fixture *fx = *state;
  feed(&fx->r, fx->s, LOOM_STREAM_HEADER + LOOM_PAGE_SIZE + 10, 3000, &fx->c);
  assert_int_equal(fx->c.pages, 1);
  replicate_stream_reader_reset(&fx->r);
  memset(&fx->c, 0, sizeof fx->c);
  feed(&fx->r, fx->s, fx->len, 3000, &fx->c);
  assert_int_equal(fx->c.headers, 1);
  assert_int_equal(fx->c.pages, PAGES);
  assert_true(replicate_stream_reader_complete(&fx->r));
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_whole_in_any_pieces, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_truncated_is_not_complete, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_bad_header_stops, setup, teardown),
      cmocka_unit_test_setup_teardown(test_trailing_bytes_stop, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_reset_starts_over, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
