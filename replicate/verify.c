/*
 * verify.c: what a standby computes itself to prove its image (DESIGN
 * section 8, "Checksums in acks"): after a frame is applied, the pages it
 * wrote are read back from the image and hashed, and the whole-image
 * checksum follows from those hashes, not from the frame's after checksum
 * (replicate.h, replicate_frame_readback, replicate_pages_readback). The
 * primary compares it with its own at the same seq (ship_standby.c,
 * "Verified positions").
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

#include "replicate.h"

/* Page n read back: sum swaps its recorded hash for the one found. */
static int readback_page(loom_store *store, uint64_t n, uint8_t *page,
                         uint64_t *sum, uint64_t *first_bad)
{
  int rc = loom_store_read_page(store, n, page);
  if (rc)
    return rc;
  uint64_t recorded = loom_store_page_hash(store, n);
  uint64_t found = loom_page_hash(n, page);
  if (found != recorded && *first_bad == UINT64_MAX)
    *first_bad = n;
  *sum = *sum - recorded + found;
  return 0;
}

/* pages[0, count), or every page of the image when all. */
static int readback(loom_store *store, bool all, const uint64_t *pages, uint64_t count,
                    uint64_t *checksum, uint64_t *bad_page)
{
  loom_position pos;
  loom_store_position(store, &pos);
  uint8_t *page = malloc(LOOM_PAGE_SIZE);
  if (!page)
    return ENOMEM;
  uint64_t sum = pos.checksum, first_bad = UINT64_MAX;
  int rc = 0;
  if (all)
    count = pos.pages;
  for (uint64_t i = 0; !rc && i < count; i++) {
    uint64_t n = all ? i : pages[i];
    if (n < pos.pages) /* else a later shrink dropped it */
      rc = readback_page(store, n, page, &sum, &first_bad);
  }
  free(page);
  if (rc)
    return rc;
  *checksum = sum;
  *bad_page = first_bad;
  return 0;
}

int replicate_pages_readback(loom_store *store, const uint64_t *pages,
                             uint64_t count, uint64_t *checksum,
                             uint64_t *bad_page)
{
  return readback(store, false, pages, count, checksum, bad_page);
}

int replicate_image_readback(loom_store *store, uint64_t *checksum, uint64_t *bad_page)
{
  return readback(store, true, NULL, 0, checksum, bad_page);
}

int replicate_frame_readback(const replicate_frame *frame, loom_store *store,
                             uint64_t *checksum, uint64_t *bad_page)
{
  uint64_t n = frame->info.page_count;
  uint64_t *pages = malloc((size_t)(n ? n : 1) * sizeof *pages);
  if (!pages)
    return ENOMEM;
  for (uint64_t i = 0; i < n; i++) {
    replicate_page p;
    replicate_frame_get_page(frame, i, &p);
    pages[i] = p.page_number;
  }
  int rc = replicate_pages_readback(store, pages, n, checksum, bad_page);
  free(pages);
  return rc;
}
