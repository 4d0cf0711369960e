/*
 * frame.h: internals of the frame codec shared by frame.c, coalesce.c and
 * log.c. Not installed; the module's manual is replicate.h.
 *
 * The header layout (docs/FRAME.md has the byte table):
 *
 *     0  magic "LSFR"                  56  after.pages
 *     4  version (u16, 2)              64  commit_time_ns (i64)
 *     6  kind (u8)                     72  first_commit_time_ns (i64)
 *     7  flags (u8)                    80  heartbeat_time_ns (i64)
 *     8  epoch                         88  page_count (u32)
 *    16  before.seq                    92  reserved (u32, 0)
 *    24  before.checksum               96  compressed payload size
 *    32  before.pages                 104  uncompressed payload size
 *    40  after.seq                    112  payload checksum
 *    48  after.checksum               120  history id (16 bytes)
 *                                     136  header checksum
 *
 * Every integer little-endian; the header checksum is XXH3-64 (seed 0) of
 * bytes [0, 136), the payload checksum XXH3-64 (seed 0) of the compressed
 * payload.
 */
#ifndef REPLICATE_FRAME_H
#define REPLICATE_FRAME_H

#include <stdint.h>
#include <string.h>

#include "bytes.h"
#include "replicate.h"

#define FRAME_MAGIC "LSFR"

enum frame_offset {
  FRAME_OFF_MAGIC = 0,
  FRAME_OFF_VERSION = 4,
  FRAME_OFF_KIND = 6,
  FRAME_OFF_FLAGS = 7,
  FRAME_OFF_EPOCH = 8,
  FRAME_OFF_BEFORE_SEQ = 16,
  FRAME_OFF_BEFORE_CHECKSUM = 24,
  FRAME_OFF_BEFORE_PAGES = 32,
  FRAME_OFF_AFTER_SEQ = 40,
  FRAME_OFF_AFTER_CHECKSUM = 48,
  FRAME_OFF_AFTER_PAGES = 56,
  FRAME_OFF_COMMIT_TIME = 64,
  FRAME_OFF_FIRST_COMMIT_TIME = 72,
  FRAME_OFF_HEARTBEAT_TIME = 80,
  FRAME_OFF_PAGE_COUNT = 88,
  FRAME_OFF_RESERVED = 92,
  FRAME_OFF_COMPRESSED = 96,
  FRAME_OFF_UNCOMPRESSED = 104,
  FRAME_OFF_PAYLOAD_CHECKSUM = 112,
  FRAME_OFF_HISTORY = 120,
  FRAME_OFF_HEADER_CHECKSUM = 136
};

/* Offsets inside one payload entry. */
enum entry_offset {
  ENTRY_OFF_PAGE = 0,
  ENTRY_OFF_HASH = 8,
  ENTRY_OFF_ENCODING = 16,
  ENTRY_OFF_CONTENTS = 17
};

/* put_le16..64 and get_le16..64: core/bytes.h. */

/*
 * The encoder's streaming interface, for callers that already hold each
 * entry's final contents (the coalescer):
 *
 *   frame_encode_begin(enc, info, n, out);         info->page_count ignored
 *   n times: frame_encode_entry(enc, page, hash, encoding, contents, out);
 *   frame_encode_end(enc, out);
 *
 * The caller guarantees ascending pages below info->after.pages and deltas
 * only below info->before.pages (the decoder refuses anything else).
 */
int frame_encode_begin(replicate_encoder *enc, const replicate_frame_info *info,
                       uint64_t n, replicate_buf *out);
int frame_encode_entry(replicate_encoder *enc, uint64_t page_number,
                       uint64_t hash, replicate_encoding encoding,
                       const void *contents, replicate_buf *out);
int frame_encode_end(replicate_encoder *enc, replicate_buf *out);

/*
 * A decoded frame built in place, without compression (the coalescer's
 * replicate_coalescer_finish_frame): frame_decoded_begin checks info (as
 * frame_encode_begin does) and dec's limits, makes room for n entries in
 * dec's buffer and points *entries at them; the caller writes the n
 * entries; frame_decoded_end checks them (as replicate_frame_decode does)
 * and describes the frame in *out.
 */
int frame_decoded_begin(replicate_decoder *dec, const replicate_frame_info *info,
                        uint64_t n, uint8_t **entries);
int frame_decoded_end(replicate_decoder *dec, const replicate_frame_info *info,
                      uint64_t n, replicate_frame *out);

/* Check that info describes a valid frame (kind, flags, positions). */
int frame_info_check(const replicate_frame_info *info);

/* Make room for at least need bytes in buf (contents kept). 0 or ENOMEM. */
int frame_buf_reserve(replicate_buf *buf, size_t need);
/* dst ^= src, a page (a delta applied to, or made from, its old version). */
void frame_page_xor_into(uint8_t *restrict dst, const uint8_t *restrict src);

#endif /* REPLICATE_FRAME_H */
