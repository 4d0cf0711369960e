/*
 * fuzz_integrity.c: a libFuzzer target for what travels between nodes for
 * trees, pages and repairs (docs/INTEGRITY.md section 3): the requests'
 * numbers and page ranges (replicate_parse_u64, replicate_parse_ranges,
 * what GET /v1/tree and /v1/pages take from their query) and the answers
 * (replicate_answer_decode and the entries read in place, what compare,
 * backup's say_where and a repairing standby read from another node).
 *
 * The first byte picks what the rest is: even, an answer, decoded as it
 * is and again with its trailer fixed up (so that the fuzzer gets past the
 * checksum to the field checks); odd, a request's text (NUL-terminated
 * copy), parsed as a number and as page ranges. Whatever is accepted must
 * keep the promises of replicate.h; a broken one aborts.
 *
 * Built like every target here (tests/fuzz/meson.build): with clang,
 * `fuzz_integrity` (libFuzzer's main):
 *         ./fuzz_integrity -max_len=70000 tests/fuzz/corpus/integrity
 * and always `fuzz_integrity_replay` (replay_main.c).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "fuzz_common.h"
#include "replicate.h"

const int fuzz_replay_mutations = 2000;

/* The promises of an accepted answer (replicate.h "Trees and pages"). */
static void check_answer(const uint8_t *bytes, size_t len, const replicate_answer_head *h)
{
  CHECK(h->kind == REPLICATE_ANSWER_TREE || h->kind == REPLICATE_ANSWER_PAGES);
  CHECK(len == replicate_answer_size(h->kind, h->count));
  if (h->kind == REPLICATE_ANSWER_TREE) {
    CHECK(h->level < LOOM_TREE_LEVELS && h->count <= REPLICATE_TREE_MAX_NODES);
    uint64_t nodes = loom_tree_nodes(h->position.pages, h->level);
    CHECK(h->first <= nodes && h->count <= nodes - h->first);
    uint64_t sum = 0;
    for (uint64_t i = 0; i < h->count; i++)
      sum ^= replicate_answer_node(bytes, i);
    (void)sum;
    return;
  }
  CHECK(h->level == 0 && h->first == 0 && h->count <= REPLICATE_PAGES_MAX);
  uint64_t prev = 0;
  for (uint64_t i = 0; i < h->count; i++) {
    uint64_t n, hash;
    const uint8_t *contents;
    replicate_answer_page(bytes, i, &n, &hash, &contents);
    CHECK(n < h->position.pages && (i == 0 || n > prev));
    CHECK(contents >= bytes && contents + LOOM_PAGE_SIZE <= bytes + len - 8);
    (void)loom_page_hash(n, contents); /* what a reader does next */
    prev = n;
  }
}

static void answer(const uint8_t *data, size_t size)
{
  replicate_answer_head h;
  if (replicate_answer_decode(data, size, &h) == 0)
    check_answer(data, size, &h);
  if (size < 8)
    return;
  uint8_t *fixed = malloc(size);
  CHECK(fixed != NULL);
  memcpy(fixed, data, size);
  replicate_answer_seal(fixed, size);
  if (replicate_answer_decode(fixed, size, &h) == 0)
    check_answer(fixed, size, &h);
  free(fixed);
}

static void request(const uint8_t *data, size_t size)
{
  char *text = malloc(size + 1);
  CHECK(text != NULL);
  memcpy(text, data, size);
  text[size] = '\0';
  uint64_t v;
  if (replicate_parse_u64(text, &v) == 0) {
    char back[24];
    snprintf(back, sizeof back, "%llu", (unsigned long long)v);
    CHECK(strcmp(back, text) == 0); /* digits only, no leading zero */
  }
  replicate_page_run runs[REPLICATE_PAGES_MAX];
  size_t n = 0;
  if (replicate_parse_ranges(text, runs, REPLICATE_PAGES_MAX, &n, REPLICATE_PAGES_MAX) == 0) {
    uint64_t total = 0;
    CHECK(n >= 1 && n <= REPLICATE_PAGES_MAX);
    for (size_t i = 0; i < n; i++) {
      CHECK(runs[i].first <= runs[i].last);
      CHECK(i == 0 || runs[i].first > runs[i - 1].last);
      total += runs[i].last - runs[i].first + 1;
    }
    CHECK(total <= REPLICATE_PAGES_MAX);
  }
  free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size == 0)
    return 0;
  if (data[0] & 1)
    request(data + 1, size - 1);
  else
    answer(data + 1, size - 1);
  return 0;
}

/* A seed: the selector byte, then bytes. */
static void seed(const char *dir, const char *name, uint8_t kind, const void *bytes,
                 size_t len)
{
  uint8_t *buf = malloc(len + 1);
  CHECK(buf != NULL);
  buf[0] = kind;
  memcpy(buf + 1, bytes, len);
  fuzz_write_file(dir, name, buf, len + 1);
  free(buf);
}

int fuzz_make_seeds(const char *dir)
{
  replicate_answer_head h = {.kind = REPLICATE_ANSWER_TREE,
                             .position = {.epoch = 2, .seq = 7, .checksum = 0x1234, .pages = 130},
                             .level = 1, .first = 0, .count = 3};
  memset(h.history.id, 0xab, sizeof h.history.id);
  size_t len = replicate_answer_size(h.kind, h.count);
  uint8_t *buf = calloc(1, replicate_answer_size(REPLICATE_ANSWER_PAGES, 2));
  CHECK(buf != NULL);
  replicate_answer_begin(&h, buf);
  for (uint64_t i = 0; i < h.count; i++)
    replicate_answer_put_node(buf, i, 0x9e3779b97f4a7c15ull * (i + 1));
  replicate_answer_seal(buf, len);
  seed(dir, "tree-level1", 0, buf, len);
  h.level = 0, h.first = 0, h.count = 0; /* the pin: no nodes */
  len = replicate_answer_size(h.kind, 0);
  replicate_answer_begin(&h, buf);
  replicate_answer_seal(buf, len);
  seed(dir, "tree-pin", 0, buf, len);
  h = (replicate_answer_head){.kind = REPLICATE_ANSWER_PAGES, .position = h.position,
                              .history = h.history, .count = 2};
  len = replicate_answer_size(h.kind, h.count);
  replicate_answer_begin(&h, buf);
  uint8_t page[LOOM_PAGE_SIZE];
  for (uint64_t i = 0; i < 2; i++) {
    memset(page, (int)('a' + i), sizeof page);
    replicate_answer_put_page(buf, i, 3 + 2 * i, loom_page_hash(3 + 2 * i, page), page);
  }
  replicate_answer_seal(buf, len);
  seed(dir, "pages-3-5", 0, buf, len);
  free(buf);
  static const char *const texts[][2] = {
      {"ranges", "0-3,5,7-9"}, {"one", "1"}, {"backwards", "3-1"}, {"overlap", "1-4,4"},
      {"max", "0-255"}, {"too-many", "0-256"}, {"big", "18446744073709551615"},
      {"leading-zero", "007"}, {"empty-run", "1,,2"}, {"trailing-comma", "1,"}};
  for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
    char name[64];
    snprintf(name, sizeof name, "request-%s", texts[i][0]);
    seed(dir, name, 1, texts[i][1], strlen(texts[i][1]));
  }
  return 0;
}
