/*
 * history.c: history ids and lineages (loom.h, "History identity"), and
 * their byte layout, shared by the meta and the image stream header.
 *
 * LINEAGE BYTES (LINEAGE_BYTES = 216; docs/FORMAT.md)
 *
 *     0   16  history id (all zero: none)
 *    16    4  branch count (<= LOOM_MAX_BRANCHES)
 *    20    4  zero
 *    24  192  LOOM_MAX_BRANCHES entries of (epoch, seq, checksum), u64 LE
 *             each; entries past the count are zero
 */
#include <errno.h>
#include <string.h>
#include <sys/random.h>

#include "loom.h"
#include "store_internal.h"
#include "bytes.h"
#include "hex.h"

int loom_history_is_none(const loom_history *h)
{
  for (unsigned i = 0; i < LOOM_HISTORY_SIZE; i++)
    if (h->id[i])
      return 0;
  return 1;
}

int loom_history_equal(const loom_history *a, const loom_history *b)
{
  return memcmp(a->id, b->id, LOOM_HISTORY_SIZE) == 0;
}

void loom_history_hex(const loom_history *h, char out[2 * LOOM_HISTORY_SIZE + 1])
{
  static const char digits[] = "0123456789abcdef";
  for (unsigned i = 0; i < LOOM_HISTORY_SIZE; i++) {
    out[2 * i] = digits[h->id[i] >> 4];
    out[2 * i + 1] = digits[h->id[i] & 15];
  }
  out[2 * LOOM_HISTORY_SIZE] = '\0';
}

int loom_history_parse(const char *hex, loom_history *out)
{
  if (!hex || strlen(hex) != 2 * LOOM_HISTORY_SIZE)
    return LOOM_EINVAL;
  for (unsigned i = 0; i < LOOM_HISTORY_SIZE; i++) {
    int hi = loom_hex_digit((unsigned char)hex[2 * i]),
        lo = loom_hex_digit((unsigned char)hex[2 * i + 1]);
    if (hi < 0 || lo < 0)
      return LOOM_EINVAL;
    out->id[i] = (uint8_t)(hi << 4 | lo);
  }
  return 0;
}

int loom_lineage_branch_after(const loom_lineage *lineage, uint64_t epoch,
                              loom_branch *out)
{
  for (uint32_t i = 0; i < lineage->branch_count; i++) {
    if (lineage->branches[i].epoch > epoch) {
      *out = lineage->branches[i];
      return 1;
    }
  }
  return 0;
}

void lineage_add_branch(loom_lineage *lineage, const loom_branch *branch)
{
  uint32_t n = lineage->branch_count;
  while (n > 0 && lineage->branches[n - 1].epoch >= branch->epoch)
    n--;
  if (n == LOOM_MAX_BRANCHES) {
    memmove(&lineage->branches[0], &lineage->branches[1],
            (LOOM_MAX_BRANCHES - 1) * sizeof lineage->branches[0]);
    n--;
  }
  lineage->branches[n] = *branch;
  lineage->branch_count = n + 1;
  memset(&lineage->branches[n + 1], 0,
         (LOOM_MAX_BRANCHES - n - 1) * sizeof lineage->branches[0]);
}

int lineage_new_history(loom_lineage *lineage)
{
  size_t got = 0;
  while (got < LOOM_HISTORY_SIZE) {
    ssize_t n = getrandom(lineage->history.id + got, LOOM_HISTORY_SIZE - got, 0);
    if (n < 0 && errno != EINTR)
      return errno;
    if (n > 0)
      got += (size_t)n;
  }
  return loom_history_is_none(&lineage->history) ? lineage_new_history(lineage) : 0;
}

void lineage_encode(uint8_t out[LINEAGE_BYTES], const loom_lineage *lineage)
{
  memset(out, 0, LINEAGE_BYTES);
  memcpy(out, lineage->history.id, LOOM_HISTORY_SIZE);
  put_le32(out + 16, lineage->branch_count);
  for (uint32_t i = 0; i < lineage->branch_count && i < LOOM_MAX_BRANCHES; i++) {
    uint8_t *b = out + 24 + 24 * i;
    put_le64(b, lineage->branches[i].epoch);
    put_le64(b + 8, lineage->branches[i].seq);
    put_le64(b + 16, lineage->branches[i].checksum);
  }
}

int lineage_decode(const uint8_t in[LINEAGE_BYTES], loom_lineage *lineage)
{
  memset(lineage, 0, sizeof *lineage);
  memcpy(lineage->history.id, in, LOOM_HISTORY_SIZE);
  lineage->branch_count = get_le32(in + 16);
  if (lineage->branch_count > LOOM_MAX_BRANCHES || get_le32(in + 20) != 0)
    return LOOM_ECORRUPT;
  for (uint32_t i = 0; i < lineage->branch_count; i++) {
    const uint8_t *b = in + 24 + 24 * i;
    lineage->branches[i] = (loom_branch){get_le64(b), get_le64(b + 8),
                                         get_le64(b + 16)};
    if (i > 0 && lineage->branches[i].epoch <= lineage->branches[i - 1].epoch)
      return LOOM_ECORRUPT;
  }
  return 0;
}
