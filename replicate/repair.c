/*
 * repair.c: writing the good copies of rotted pages that a standby fetched
 * from its upstream (replicate.h, "Self-repair"; DESIGN section 8; the
 * protocol in docs/INTEGRITY.md).
 *
 * A pages answer is trusted only as far as it agrees with the standby's
 * own record: its history and position must be the store's (the upstream
 * answered at the position the standby is at), it must hold exactly the
 * pages asked for, and each page's contents must hash to the hash the
 * answer gives and to the hash the standby recorded when it wrote that page
 * at this position. Only then are the pages written, as one
 * LOOM_PATCH_REPAIR patch (durable through the store's commit protocol,
 * position unchanged), and read back once the apply is done.
 */
#include <errno.h>
#include <stdlib.h>

#include "replicate.h"

/* The answer's head against the store and the request: 0 or an error. */
static int repair_head_ok(loom_store *store, const replicate_answer_head *h,
                          uint64_t count)
{
  loom_position pos;
  loom_lineage lineage;
  loom_store_position(store, &pos);
  loom_store_lineage(store, &lineage);
  if (h->kind != REPLICATE_ANSWER_PAGES || h->count != count)
    return REPLICATE_EANSWER;
  if (!loom_history_equal(&h->history, &lineage.history))
    return REPLICATE_EHISTORY;
  if (!loom_position_same(&h->position, &pos))
    return REPLICATE_EPOSITION;
  return 0;
}

/* Entry i against pages[i] and the store's record: 0 or an error. */
static int repair_entry_ok(loom_store *store, const uint8_t *answer, uint64_t i,
                           uint64_t want, const uint8_t **contents)
{
  uint64_t n, hash;
  replicate_answer_page(answer, i, &n, &hash, contents);
  if (n != want)
    return REPLICATE_EANSWER;
  if (loom_page_hash(n, *contents) != hash || hash != loom_store_page_hash(store, n))
    return REPLICATE_EPAGE_HASH;
  return 0;
}

/* Every page read back from the image matches its recorded hash. */
static int repair_readback(loom_store *store, const uint64_t *pages, uint64_t count)
{
  uint64_t checksum, bad;
  loom_position pos;
  int rc = loom_store_sync(store);
  if (!rc)
    rc = replicate_pages_readback(store, pages, count, &checksum, &bad);
  if (rc)
    return rc;
  loom_store_position(store, &pos);
  return bad == UINT64_MAX && checksum == pos.checksum ? 0 : REPLICATE_EPAGE_HASH;
}

int replicate_repair_pages(loom_store *store, const uint8_t *answer, size_t len,
                           const uint64_t *pages, uint64_t count)
{
  if (!store || !answer || !pages || count == 0)
    return REPLICATE_EINVAL;
  replicate_answer_head h;
  int rc = replicate_answer_decode(answer, len, &h);
  if (!rc)
    rc = repair_head_ok(store, &h, count);
  for (uint64_t i = 0; !rc && i < count; i++) {
    const uint8_t *contents;
    rc = repair_entry_ok(store, answer, i, pages[i], &contents);
  }
  if (rc)
    return rc;
  loom_patch_header ph = {.page_count = count, .flags = LOOM_PATCH_REPAIR};
  loom_store_position(store, &ph.before);
  ph.after = ph.before;
  loom_patch *p;
  if ((rc = loom_store_patch_begin(store, &ph, &p)))
    return rc;
  for (uint64_t i = 0; !rc && i < count; i++) {
    uint64_t n, hash;
    const uint8_t *contents;
    replicate_answer_page(answer, i, &n, &hash, &contents);
    rc = loom_patch_add(p, n, contents);
  }
  if (rc) {
    loom_patch_abort(p);
    return rc;
  }
  if ((rc = loom_patch_commit(p)))
    return rc;
  return repair_readback(store, pages, count);
}
