/*
 * verify.c: what a standby computes itself to prove its image (DESIGN
 * section 8, "Checksums in acks"): after a frame is applied, the pages it
 * wrote are read back from the image and hashed, and the whole-image
 * checksum follows from those hashes, not from the frame's after checksum
 * (replicate.h, replicate_frame_readback). The primary compares it with
 * its own at the same seq (ship_standby.c, "Verified positions").
 */
#include <errno.h>
#include <stdlib.h>

#include "replicate.h"

int replicate_frame_readback(const replicate_frame *frame, loom_store *store,
                             uint64_t *checksum, uint64_t *bad_page)
{
  loom_position pos;
  loom_store_position(store, &pos);
  uint8_t *page = malloc(LOOM_PAGE_SIZE);
  if (!page)
    return ENOMEM;
  uint64_t sum = pos.checksum, first_bad = UINT64_MAX;
  int rc = 0;
  for (uint64_t i = 0; i < frame->info.page_count; i++) {
    replicate_page p;
    replicate_frame_get_page(frame, i, &p);
    if (p.page_number >= pos.pages)
      continue; /* a later shrink dropped it */
    rc = loom_store_read_page(store, p.page_number, page);
    if (rc)
      break;
    uint64_t recorded = loom_store_page_hash(store, p.page_number);
    uint64_t found = loom_page_hash(p.page_number, page);
    if (found != recorded && first_bad == UINT64_MAX)
      first_bad = p.page_number;
    sum = sum - recorded + found;
  }
  free(page);
  if (rc)
    return rc;
  *checksum = sum;
  *bad_page = first_bad;
  return 0;
}
