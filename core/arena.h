/* arena.h: the loom handle and the dirty-page tracker interface, shared by
 * loom.c and the trackers. Not installed. */
#ifndef LOOM_ARENA_H
#define LOOM_ARENA_H

#include <signal.h>
#include <stdint.h>

#include "loom.h"

#define NO_GUARD UINT64_MAX

/*
 * A tracker knows which image pages were written since they were last made
 * clean. The loom's dirty bitmap is the source of truth; a tracker either
 * sets bits as writes happen (mprotect: in the fault handler) or when asked
 * (uffd: collect()).
 *
 *   init       arm tracking on image pages [0, image_pages)
 *   collect    set the dirty bit of every image page written (and re-arm
 *              them); no-op where faults set the bits
 *   protect    make pages [first, first + count) clean: writes get noticed
 *   unprotect  make pages writable without tracking (dirty pages)
 *   remapped   the range was mapped anew (MAP_FIXED): re-register it
 *   fini       release
 * All return 0 or an errno value.
 */
typedef struct tracker_ops {
  loom_tracker kind;
  int collect_rearms;   /* collect() protects again what it reports */
  int (*init)(loom *l);
  int (*collect)(loom *l);
  int (*protect)(loom *l, uint64_t first, uint64_t count);
  int (*unprotect)(loom *l, uint64_t first, uint64_t count);
  int (*remapped)(loom *l, uint64_t first, uint64_t count);
  void (*fini)(loom *l);
} tracker_ops;

extern const tracker_ops tracker_mprotect;
extern const tracker_ops tracker_uffd_async;
/* Whether the kernel offers userfaultfd WP_ASYNC and PAGEMAP_SCAN. */
int tracker_uffd_async_available(void);

struct loom {
  loom_store *store;
  loom_options opt;
  uint8_t *base;
  uint64_t pages;               /* arena length */
  volatile uint64_t image_pages;/* the image's length: pages below are image */
  uint64_t *dirty;              /* bitmap, one bit per page */
  volatile uint64_t guard;      /* guard page, or NO_GUARD */
  volatile sig_atomic_t exhausted;
  volatile sig_atomic_t bug;    /* a fault the handler could not explain */
  int yolo;
  int swap_fd;                  /* scratch file (LOOM_SWAP), or -1 */
  const tracker_ops *tracker;
  int uffd, pagemap_fd;         /* uffd tracker state */
  loom_stats stats;
  /* The commit being handed to the hook while its apply already runs
   * (LOOM_APPLY_ASYNC, see commit() in loom.c): its old page versions and
   * its arrays, copied before the apply started; grown as needed. */
  const loom_commit *early;     /* that commit, during the hook; else NULL */
  uint8_t *early_old;           /* page_count old versions */
  uint64_t *early_arrays;       /* page numbers, old hashes, new hashes */
  uint64_t early_cap;           /* pages both can hold */
  uint64_t rotted_page;         /* LOOM_CHECK_PREVIOUS: the last found, or
                                   UINT64_MAX */
  uint64_t *checked;            /* LOOM_CHECK_PREVIOUS: bitmap of pages
                                   checked (or saved) since open */
  uint64_t file_pages;          /* pages the arena may still take from the
                                   image file: the image's length at open,
                                   lowered by every shrink since */
  /* RECENT PAGES (loom.c): where in the commit log the newest committed
   * version of every page is that the commits after recent_from wrote,
   * while the checkpoint has not merged them into the image file;
   * ascending page numbers. */
  struct recent_page *recent;   /* [recent_count], and as many to merge */
  uint64_t recent_count;
  uint32_t recent_cap;          /* pages it may list */
  uint64_t recent_from;         /* UINT64_MAX: covers nothing */
  uint64_t recent_image_pages;  /* the image file's length as the hook reads
                                   it (pages past it read as zeros) */
  uint64_t recent_bytes;        /* its memory (loom_get_log_stats;
                                   __atomic: read from any thread) */
};

static inline int page_dirty(const loom *l, uint64_t n)
{
  return (__atomic_load_n(&l->dirty[n / 64], __ATOMIC_RELAXED) >> (n % 64)) & 1;
}

static inline void page_set_dirty(loom *l, uint64_t n)
{
  __atomic_fetch_or(&l->dirty[n / 64], UINT64_C(1) << (n % 64), __ATOMIC_RELAXED);
}

static inline void page_set_clean(loom *l, uint64_t n)
{
  __atomic_fetch_and(&l->dirty[n / 64], ~(UINT64_C(1) << (n % 64)), __ATOMIC_RELAXED);
}

static inline void *page_addr(const loom *l, uint64_t n)
{
  return l->base + n * (uint64_t)LOOM_PAGE_SIZE;
}

#endif
