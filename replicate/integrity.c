/*
 * integrity.c: the tree and pages requests and answers on the wire
 * (replicate.h, "Trees and pages on the wire"; byte tables in
 * docs/INTEGRITY.md). Pure functions, strict readers: anything malformed is
 * one error code, never a crash or a read past len.
 *
 *   head (72 bytes, little-endian)
 *      0  magic "LSIT"            32  position.pages
 *      4  version (u16, 1)        40  first (tree) / 0
 *      6  kind (u8: 1 tree, 2 pages)  48  count
 *      7  level (u8)              56  history id (16 bytes)
 *      8  position.epoch
 *     16  position.seq
 *     24  position.checksum
 *   entries: tree: count x hash (u64); pages: count x (page number u64,
 *   recorded hash u64, LOOM_PAGE_SIZE bytes)
 *   trailer: XXH3-64 (seed 0) of every byte before it (u64)
 */
#include <stdbool.h>
#include <string.h>
#include <xxhash.h>

#include "frame.h"
#include "replicate.h"

#define MAGIC "LSIT"
#define VERSION 1u

int replicate_parse_u64(const char *text, uint64_t *out)
{
  if (!text || !*text || (text[0] == '0' && text[1]))
    return REPLICATE_EREQUEST;
  uint64_t v = 0;
  for (const char *p = text; *p; p++) {
    if (*p < '0' || *p > '9')
      return REPLICATE_EREQUEST;
    unsigned d = (unsigned)(*p - '0');
    if (v > (UINT64_MAX - d) / 10)
      return REPLICATE_EREQUEST;
    v = v * 10 + d;
  }
  *out = v;
  return 0;
}

/* One number of a range list ending at one of ends (or the string's end):
 * *p moves past it. */
static int range_number(const char **p, const char *ends, uint64_t *out)
{
  char digits[24];
  size_t n = strcspn(*p, ends);
  if (n == 0 || n >= sizeof digits)
    return REPLICATE_EREQUEST;
  memcpy(digits, *p, n);
  digits[n] = '\0';
  *p += n;
  return replicate_parse_u64(digits, out);
}

int replicate_parse_ranges(const char *text, replicate_page_run *out, size_t cap,
                           size_t *n, uint64_t max_pages)
{
  if (!text || !*text || !out || !n)
    return REPLICATE_EREQUEST;
  size_t k = 0;
  uint64_t total = 0;
  const char *p = text;
  for (;;) {
    replicate_page_run r;
    if (k == cap || range_number(&p, "-,", &r.first))
      return REPLICATE_EREQUEST;
    r.last = r.first;
    if (*p == '-') {
      p++;
      if (range_number(&p, ",", &r.last))
        return REPLICATE_EREQUEST;
    }
    if (r.last < r.first || (k > 0 && r.first <= out[k - 1].last) ||
        r.last - r.first >= max_pages - total)
      return REPLICATE_EREQUEST;
    total += r.last - r.first + 1;
    out[k++] = r;
    if (!*p)
      break;
    if (*p++ != ',' || !*p)
      return REPLICATE_EREQUEST;
  }
  *n = k;
  return 0;
}

static size_t entry_size(replicate_answer_kind kind)
{
  return kind == REPLICATE_ANSWER_TREE ? 8u : REPLICATE_PAGE_ENTRY;
}

size_t replicate_answer_size(replicate_answer_kind kind, uint64_t count)
{
  return REPLICATE_INTEGRITY_HEAD + (size_t)count * entry_size(kind) + 8u;
}

void replicate_answer_begin(const replicate_answer_head *h, uint8_t *buf)
{
  memcpy(buf, MAGIC, 4);
  put_le16(buf + 4, VERSION);
  buf[6] = (uint8_t)h->kind;
  buf[7] = (uint8_t)h->level;
  put_le64(buf + 8, h->position.epoch);
  put_le64(buf + 16, h->position.seq);
  put_le64(buf + 24, h->position.checksum);
  put_le64(buf + 32, h->position.pages);
  put_le64(buf + 40, h->first);
  put_le64(buf + 48, h->count);
  memcpy(buf + 56, h->history.id, LOOM_HISTORY_SIZE);
}

void replicate_answer_put_node(uint8_t *buf, uint64_t i, uint64_t hash)
{
  put_le64(buf + REPLICATE_INTEGRITY_HEAD + i * 8, hash);
}

void replicate_answer_put_page(uint8_t *buf, uint64_t i, uint64_t page_number,
                               uint64_t hash, const void *contents)
{
  uint8_t *e = buf + REPLICATE_INTEGRITY_HEAD + i * REPLICATE_PAGE_ENTRY;
  put_le64(e, page_number);
  put_le64(e + 8, hash);
  if (contents != e + 16) /* else read in place */
    memcpy(e + 16, contents, LOOM_PAGE_SIZE);
}

uint8_t *replicate_answer_page_slot(uint8_t *buf, uint64_t i)
{
  return buf + REPLICATE_INTEGRITY_HEAD + i * REPLICATE_PAGE_ENTRY + 16;
}

void replicate_answer_seal(uint8_t *buf, size_t len)
{
  put_le64(buf + len - 8, XXH3_64bits(buf, len - 8));
}

/* Pages answers: ascending page numbers below the image's length. */
static int pages_ok(const uint8_t *bytes, const replicate_answer_head *h)
{
  uint64_t prev = 0;
  for (uint64_t i = 0; i < h->count; i++) {
    uint64_t n = get_le64(bytes + REPLICATE_INTEGRITY_HEAD +
                          i * REPLICATE_PAGE_ENTRY);
    if (n >= h->position.pages || (i > 0 && n <= prev))
      return REPLICATE_EANSWER;
    prev = n;
  }
  return 0;
}

int replicate_answer_decode(const uint8_t *bytes, size_t len,
                            replicate_answer_head *h)
{
  memset(h, 0, sizeof *h);
  if (!bytes || len < REPLICATE_INTEGRITY_HEAD + 8u ||
      memcmp(bytes, MAGIC, 4) != 0 || get_le16(bytes + 4) != VERSION ||
      (bytes[6] != REPLICATE_ANSWER_TREE && bytes[6] != REPLICATE_ANSWER_PAGES))
    return REPLICATE_EANSWER;
  h->kind = (replicate_answer_kind)bytes[6];
  h->level = bytes[7];
  h->position.epoch = get_le64(bytes + 8);
  h->position.seq = get_le64(bytes + 16);
  h->position.checksum = get_le64(bytes + 24);
  h->position.pages = get_le64(bytes + 32);
  h->first = get_le64(bytes + 40);
  h->count = get_le64(bytes + 48);
  memcpy(h->history.id, bytes + 56, LOOM_HISTORY_SIZE);
  bool tree = h->kind == REPLICATE_ANSWER_TREE;
  uint64_t max = tree ? REPLICATE_TREE_MAX_NODES : REPLICATE_PAGES_MAX;
  int rc = 0;
  if (h->count > max || len != replicate_answer_size(h->kind, h->count) ||
      get_le64(bytes + len - 8) != XXH3_64bits(bytes, len - 8))
    rc = REPLICATE_EANSWER;
  else if (tree ? (h->level >= LOOM_TREE_LEVELS ||
                   h->first > loom_tree_nodes(h->position.pages, h->level) ||
                   h->count > loom_tree_nodes(h->position.pages, h->level) - h->first)
                : (h->level != 0 || h->first != 0))
    rc = REPLICATE_EANSWER;
  else if (!tree)
    rc = pages_ok(bytes, h);
  if (rc)
    memset(h, 0, sizeof *h);
  return rc;
}

uint64_t replicate_answer_node(const uint8_t *bytes, uint64_t i)
{
  return get_le64(bytes + REPLICATE_INTEGRITY_HEAD + i * 8);
}

void replicate_answer_page(const uint8_t *bytes, uint64_t i,
                           uint64_t *page_number, uint64_t *hash,
                           const uint8_t **contents)
{
  const uint8_t *e = bytes + REPLICATE_INTEGRITY_HEAD + i * REPLICATE_PAGE_ENTRY;
  *page_number = get_le64(e);
  *hash = get_le64(e + 8);
  *contents = e + 16;
}
