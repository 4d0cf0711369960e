/* track_mprotect.c: the seed's tracker. Clean pages are read-only; the first
 * write faults, and the fault handler (loom.c) calls
 * tracker_mprotect_fault(), which makes the page writable and sets its bit.
 * Each dirtied page splits the mapping; past vm.max_map_count mprotect fails
 * with ENOMEM, and the handler then unprotects a whole aligned block (more
 * pages are saved, but nothing fails). */
#include <errno.h>
#include <sys/mman.h>

#include "arena.h"

#define PS ((uint64_t)LOOM_PAGE_SIZE)
#define WIDEN_PAGES 64u

static int mp_set(loom *l, uint64_t first, uint64_t count, int prot)
{
  if (!count)
    return 0;
  return mprotect(page_addr(l, first), count * PS, prot) < 0 ? errno : 0;
}

static int mp_init(loom *l)
{
  return mp_set(l, 0, l->image_pages, PROT_READ);
}

static int mp_collect(loom *l)
{
  (void)l;
  return 0;
}

static int mp_protect(loom *l, uint64_t first, uint64_t count)
{
  return mp_set(l, first, count, PROT_READ);
}

static int mp_unprotect(loom *l, uint64_t first, uint64_t count)
{
  return mp_set(l, first, count, PROT_READ | PROT_WRITE);
}

static int mp_remapped(loom *l, uint64_t first, uint64_t count)
{
  (void)l, (void)first, (void)count;
  return 0;
}

static void mp_fini(loom *l) { (void)l; }

/* From the SIGSEGV handler: async-signal-safe. 0 when handled. */
int tracker_mprotect_fault(loom *l, uint64_t n);
int tracker_mprotect_fault(loom *l, uint64_t n)
{
  uint64_t image = l->image_pages;
  if (n >= image)
    return -1;
  /* Already dirty: another thread's first write got there first (its
   * handler made the page writable after this fault was raised). Making it
   * writable again is always right for a dirty page. */
  if (mp_set(l, n, 1, PROT_READ | PROT_WRITE) == 0) {
    page_set_dirty(l, n);
    return 0;
  }
  /* Out of mappings: unprotect an aligned block, then the whole image. */
  uint64_t first = n - n % WIDEN_PAGES;
  uint64_t count = first + WIDEN_PAGES > image ? image - first : WIDEN_PAGES;
  if (mp_set(l, first, count, PROT_READ | PROT_WRITE) != 0) {
    first = 0;
    count = image;
    if (mp_set(l, first, count, PROT_READ | PROT_WRITE) != 0)
      return -1;
  }
  for (uint64_t i = first; i < first + count; i++)
    page_set_dirty(l, i);
  return 0;
}

const tracker_ops tracker_mprotect = {
  .kind = LOOM_TRACK_MPROTECT,
  .init = mp_init,
  .collect = mp_collect,
  .protect = mp_protect,
  .unprotect = mp_unprotect,
  .remapped = mp_remapped,
  .fini = mp_fini,
};
