/*
 * loom.c: the arena. Mapping, fault handling, guard page, save.
 *
 * DESIGN
 *
 * The arena is one mapping of arena_pages pages. Pages [0, image_pages) are
 * the image: demand-paged (a private file mapping of the image file, so
 * nothing is read until touched) or copied in. The rest is anonymous memory
 * (or, with LOOM_SWAP, a shared mapping of an unlinked scratch file, so the
 * arena can exceed RAM).
 *
 * INVARIANTS AT REST (after open, after every save; loom_check() checks them)
 *
 *   A1. Every image page is clean (dirty bit 0, writes noticed by the
 *       tracker), except a page the allocator reported free at the last save:
 *       it stays dirty, since its memory may differ from the image.
 *   A2. Every other page is dirty (bit 1) and writable.
 *   A3. There is at most one guard page, outside the image, with no access
 *       and bit 1; there is none only in yolo mode or when the arena is
 *       exhausted.
 *   A4. A clean page's memory equals its image page (LOOM_VALIDATE checks).
 *
 * THE SAVE (loom_save), around the store's commit protocol (store.c):
 *
 *   S1. Collect: the tracker sets the bits of written image pages. A guard
 *       page below low is lifted (the low region grew over it).
 *   S2. Compose: dirty pages below low that the allocator does not report
 *       free and whose contents changed (hash differs from the image's).
 *       With LOOM_CHECK_PREVIOUS, the previous version of each changed
 *       image page the arena took from the image file (the first change
 *       after open) is read back and must match its recorded hash, or the
 *       save fails with LOOM_ECORRUPT before anything is written
 *       (check_previous).
 *   S3. Commit: store steps 1-3; the patch is durable (commit point).
 *   S4. Commit hook: replication reads the changes (new versions in the
 *       arena, previous ones through loom_commit_old_page).
 *   S5. Demand-paged shrink: pages [low, image) still backed by the image
 *       file move to anonymous memory, since the apply shrinks the file.
 *   S6. Checkpoint: the record is queued for store steps 4-6 (inline,
 *       deferred with LOOM_CHECKPOINT_DEFER, or on the checkpoint thread).
 *   Before S4, the hook's old versions are made readable: those that
 *   commits not yet checkpointed wrote come from RECENT PAGES (below), the
 *   others from the image file; when RECENT PAGES cannot cover every such
 *   commit, the records before this one are checkpointed first
 *   (store_apply_wait) and the image file has them all.
 *   With an apply thread and at most EARLY_MAX_PAGES pages, S4 runs after
 *   S6 so that the hook overlaps the apply: the previous versions and the
 *   commit's arrays are copied first (the image file is changing while the
 *   hook runs). Otherwise S4 runs before S5 and S6, this commit's record
 *   not yet queued for the checkpoint. Either way the hook's commit joins
 *   RECENT PAGES right after its hook, while its arrays are alive.
 *   S7. Re-protect: composed and unchanged dirty pages below low become
 *       clean; pages past low become dirty; the guard is placed (ward).
 *   S8. Validate (LOOM_VALIDATE): every clean page equals the image.
 *   If S2 finds nothing and the image length is unchanged, S3-S6 are
 *   skipped: nothing is written.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "arena.h"
#include "array.h"
#include "loom.h"
#include "loom_io.h"
#include "store_internal.h"
#include "clock.h"

#define PS ((uint64_t)LOOM_PAGE_SIZE)

int tracker_mprotect_fault(loom *l, uint64_t n);

/* ---------------------------------------------------------------------- */
/* The process-wide fault handler and the registry of open arenas. */

#define MAX_LOOMS 16
static loom *volatile registry[MAX_LOOMS];
static struct sigaction previous_segv;

static loom *registry_find(const void *addr)
{
  for (int i = 0; i < MAX_LOOMS; i++) {
    loom *l = registry[i];
    if (l && (const uint8_t *)addr >= l->base &&
        (const uint8_t *)addr < l->base + l->pages * PS)
      return l;
  }
  return NULL;
}

static int guard_pick(const loom *l, uint64_t low, uint64_t high, uint64_t *out);
static int guard_move(loom *l, uint64_t to);

/* A write reached the guard page: recentre it, or report exhaustion. */
static int fault_guard(loom *l, uint64_t n)
{
  /* Without the application's watermarks, the write says that the low
   * region now reaches past the guard: free space is above it. */
  uint64_t low = n + 1, high = l->pages, to;
  if (l->opt.watermarks)
    l->opt.watermarks(l->opt.watermarks_ctx, &low, &high);
  if (!guard_pick(l, low, high, &to) && to != n) {
    __atomic_fetch_add(&l->stats.guard_moves, 1, __ATOMIC_RELAXED);
    return guard_move(l, to) ? -1 : 0;
  }
  if (l->opt.on_exhausted)
    l->opt.on_exhausted(l->opt.exhausted_ctx); /* may siglongjmp away */
  l->exhausted = 1;
  return guard_move(l, NO_GUARD) ? -1 : 0;
}

static void segv_handler(int sig, siginfo_t *info, void *uctx)
{
  loom *l = registry_find(info->si_addr);
  if (l) {
    uint64_t n = (uint64_t)((uint8_t *)info->si_addr - l->base) / PS;
    int rc = n == l->guard ? fault_guard(l, n)
             : l->tracker == &tracker_mprotect ? tracker_mprotect_fault(l, n)
                                               : -1;
    if (rc == 0) {
      __atomic_fetch_add(&l->stats.faults, 1, __ATOMIC_RELAXED);
      return;
    }
    l->bug = 1; /* a fault we cannot explain: never write through it */
  }
  if (previous_segv.sa_flags & SA_SIGINFO) {
    previous_segv.sa_sigaction(sig, info, uctx);
  } else if (previous_segv.sa_handler != SIG_DFL &&
             previous_segv.sa_handler != SIG_IGN) {
    previous_segv.sa_handler(sig);
  } else {
    /* Restore the default and return: the access faults again and the
     * process dies with SIGSEGV where the bug is. */
    signal(SIGSEGV, SIG_DFL);
  }
}

/* (Re)install the handler if someone else's is current (a test framework
 * or the application may have replaced it since), keeping theirs to chain
 * to. */
static int handler_install(void)
{
  struct sigaction cur;
  if (sigaction(SIGSEGV, NULL, &cur) < 0)
    return errno;
  if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == segv_handler)
    return 0;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = segv_handler;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGSEGV, &sa, &previous_segv) < 0)
    return errno;
  return 0;
}

static int registry_add(loom *l)
{
  int rc = handler_install();
  if (rc)
    return rc;
  for (int i = 0; i < MAX_LOOMS; i++)
    if (__sync_bool_compare_and_swap(&registry[i], NULL, l))
      return 0;
  return EMFILE;
}

static void registry_remove(loom *l)
{
  for (int i = 0; i < MAX_LOOMS; i++)
    __sync_bool_compare_and_swap(&registry[i], l, NULL);
}

/* ---------------------------------------------------------------------- */
/* Guard page. */

/* The middle of the free pages [max(low, image), high), or 1 if none. */
static int guard_pick(const loom *l, uint64_t low, uint64_t high, uint64_t *out)
{
  if (low < l->image_pages)
    low = l->image_pages;
  if (high > l->pages)
    high = l->pages;
  if (low >= high)
    return 1;
  *out = low + (high - low) / 2;
  return 0;
}

/* Lift the current guard (the page becomes dirty and writable) and place one
 * at to (or none). Async-signal-safe. */
static int guard_move(loom *l, uint64_t to)
{
  uint64_t from = l->guard;
  if (from == to)
    return 0;
  if (to != NO_GUARD) {
    page_set_dirty(l, to);
    if (mprotect(page_addr(l, to), PS, PROT_NONE) < 0)
      return errno;
  }
  l->guard = to;
  if (from != NO_GUARD &&
      mprotect(page_addr(l, from), PS, PROT_READ | PROT_WRITE) < 0)
    return errno;
  return 0;
}

int loom_ward(loom *l, uint64_t low, uint64_t high)
{
  if (!l || low > high || high > l->pages)
    return LOOM_EINVAL;
  if (store_poisoned(l->store))
    return LOOM_EPANIC;
  /* The fault handler ran out of free pages since the last call: say so
   * once, after placing the guard again if the application freed some. */
  int reported = l->exhausted ? LOOM_EEXHAUSTED : 0;
  l->exhausted = 0;
  uint64_t to;
  int rc;
  if (guard_pick(l, low, high, &to)) {
    rc = guard_move(l, NO_GUARD);
    /* No free page above the image: exhausted only if none below either. */
    if (low >= high)
      reported = LOOM_EEXHAUSTED;
  } else if (l->guard != NO_GUARD && l->guard >= low && l->guard < high &&
             l->guard >= l->image_pages) {
    rc = 0;
  } else {
    l->stats.guard_moves++;
    rc = guard_move(l, to);
  }
  return rc ? rc : reported;
}

/* ---------------------------------------------------------------------- */
/* Mapping. */

/* Map [first, first + count) as plain dirty memory: anonymous, or the
 * scratch file's pages with LOOM_SWAP. */
static int map_dirty(loom *l, uint64_t first, uint64_t count)
{
  if (!count)
    return 0;
  void *want = page_addr(l, first);
  void *got = l->swap_fd >= 0
                  ? mmap(want, count * PS, PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_FIXED, l->swap_fd, (off_t)(first * PS))
                  : mmap(want, count * PS, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE,
                         -1, 0);
  return got == MAP_FAILED ? errno : 0;
}

static int map_arena(loom *l, const char *dir)
{
  size_t len = l->pages * PS;
  if (l->opt.flags & LOOM_SWAP) {
    l->swap_fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (l->swap_fd < 0)
      return errno;
    if (ftruncate(l->swap_fd, (off_t)len) < 0)
      return errno;
  }
  void *base = l->swap_fd >= 0
                   ? mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED,
                          l->swap_fd, 0)
                   : mmap(NULL, len, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED)
    return errno;
  l->base = base;
  uint64_t image = l->image_pages;
  if (!image)
    return 0;
  int fd = loom_store_image_fd(l->store);
  if (!(l->opt.flags & LOOM_COPY_IN)) {
    /* Demand-paged: a private mapping of the image file. Writes go to
     * private copies; the file changes only through the store. */
    void *got = mmap(base, image * PS, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_FIXED, fd, 0);
    return got == MAP_FAILED ? errno : 0;
  }
  for (uint64_t n = 0; n < image; n++) {
    int rc = loom_store_read_page(l->store, n, page_addr(l, n));
    if (rc)
      return rc;
  }
  return 0;
}

/* S5: pages [from, to) stop being backed by the image file. */
static int unmap_image_tail(loom *l, uint64_t from, uint64_t to)
{
  if ((l->opt.flags & LOOM_COPY_IN) || from >= to)
    return 0;
  uint64_t count = to - from;
  uint8_t *copy = mmap(NULL, count * PS, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (copy == MAP_FAILED)
    return errno;
  int rc = l->tracker->unprotect(l, from, count);
  if (!rc) {
    memcpy(copy, page_addr(l, from), count * PS);
    rc = map_dirty(l, from, count);
  }
  if (!rc) {
    memcpy(page_addr(l, from), copy, count * PS);
    rc = l->tracker->remapped(l, from, count);
  }
  munmap(copy, count * PS);
  return rc;
}

/* ---------------------------------------------------------------------- */
/* Open and close. */

const char *loom_tracker_name(loom_tracker t)
{
  switch (t) {
  case LOOM_TRACK_AUTO: return "auto";
  case LOOM_TRACK_MPROTECT: return "mprotect";
  case LOOM_TRACK_UFFD_ASYNC: return "uffd-async";
  }
  return "?";
}

static void loom_free(loom *l)
{
  registry_remove(l);
  if (l->tracker)
    l->tracker->fini(l);
  if (l->base)
    munmap(l->base, l->pages * PS);
  if (l->swap_fd >= 0)
    close(l->swap_fd);
  free(l->dirty);
  free(l->early_old);
  free(l->checked);
  free(l->early_arrays);
  free(l->recent);
  free(l);
}

int loom_open(const char *dir, const loom_options *opt, loom **out)
{
  if (!dir || !opt || !out || opt->arena_pages < 3 ||
      opt->arena_pages > (UINT64_C(1) << 32))
    return LOOM_EINVAL;
  *out = NULL;
  long sys = sysconf(_SC_PAGESIZE);
  if (sys <= 0 || LOOM_PAGE_SIZE % (uint64_t)sys != 0)
    return LOOM_EPAGESIZE;
  const tracker_ops *tracker;
  switch (opt->tracker) {
  case LOOM_TRACK_AUTO:
    tracker = tracker_uffd_async_available() ? &tracker_uffd_async
                                             : &tracker_mprotect;
    break;
  case LOOM_TRACK_MPROTECT:
    tracker = &tracker_mprotect;
    break;
  case LOOM_TRACK_UFFD_ASYNC:
    if (!tracker_uffd_async_available())
      return LOOM_ETRACKER;
    tracker = &tracker_uffd_async;
    break;
  default:
    return LOOM_EINVAL;
  }

  loom *l = calloc(1, sizeof *l);
  if (!l)
    return ENOMEM;
  l->opt = *opt;
  l->pages = opt->arena_pages;
  l->guard = NO_GUARD;
  l->rotted_page = UINT64_MAX;
  l->swap_fd = l->uffd = l->pagemap_fd = -1;
  l->recent_from = UINT64_MAX;
  l->dirty = calloc((size_t)(l->pages + 63) / 64, sizeof(uint64_t));
  int rc = l->dirty ? 0 : ENOMEM;
  if (!rc)
    rc = store_open_log(dir, opt->flags & (LOOM_CREATE | LOOM_APPLY_ASYNC |
                                           LOOM_CHECKPOINT_DEFER),
                        opt->io, opt->log_bytes, &l->store);
  /* A directory opened as a primary has a history from then on (loom.h:
   * "History identity"). */
  if (!rc)
    rc = loom_store_ensure_history(l->store);
  loom_position pos = {0};
  if (!rc) {
    loom_store_position(l->store, &pos);
    if (pos.pages > l->pages - 1)
      rc = LOOM_ETOOBIG;
  }
  if (!rc) {
    l->image_pages = pos.pages;
    l->file_pages = pos.pages;
    for (uint64_t n = pos.pages; n < l->pages; n++)
      page_set_dirty(l, n); /* A2 */
    rc = map_arena(l, dir);
  }
  if (!rc) {
    rc = tracker->init(l); /* A1 */
    if (!rc)
      l->tracker = tracker;
  }
  if (!rc)
    rc = registry_add(l);
  if (!rc)
    rc = loom_ward(l, pos.pages, l->pages); /* A3 */
  if (rc) {
    if (l->store)
      loom_store_close(l->store);
    loom_free(l);
    return rc;
  }
  *out = l;
  return 0;
}

int loom_close(loom *l)
{
  if (!l)
    return 0;
  int rc = loom_store_close(l->store);
  loom_free(l);
  return rc;
}

void *loom_base(const loom *l) { return l->base; }
void *loom_page(const loom *l, uint64_t n) { return page_addr(l, n); }
uint64_t loom_arena_pages(const loom *l) { return l->pages; }
loom_store *loom_get_store(loom *l) { return l->store; }
loom_tracker loom_get_tracker(const loom *l) { return l->tracker->kind; }

void loom_get_stats(const loom *l, loom_stats *out) { *out = l->stats; }

/* ---------------------------------------------------------------------- */
/* Save. */

/* Apply op to each maximal run of pages in [first, end) for which want()
 * holds; stops at the first error. */
static int for_runs(loom *l, uint64_t first, uint64_t end,
                    int (*want)(const loom *, uint64_t, const void *),
                    const void *arg,
                    int (*op)(loom *, uint64_t, uint64_t))
{
  uint64_t n = first;
  while (n < end) {
    while (n < end && !want(l, n, arg))
      n++;
    uint64_t start = n;
    while (n < end && want(l, n, arg))
      n++;
    if (n > start) {
      int rc = op(l, start, n - start);
      if (rc)
        return rc;
    }
  }
  return 0;
}

/* Pages S7 makes clean: marked in the `clean` bitmap by compose. */
static int want_clean(const loom *l, uint64_t n, const void *arg)
{
  (void)l;
  const uint64_t *clean = arg;
  return (clean[n / 64] >> (n % 64)) & 1;
}

static int clean_run(loom *l, uint64_t first, uint64_t count)
{
  int rc = l->tracker->protect(l, first, count);
  if (!rc)
    for (uint64_t n = first; n < first + count; n++)
      page_set_clean(l, n);
  return rc;
}

static int is_free(const loom *l, uint64_t n)
{
  return l->opt.page_is_free && l->opt.page_is_free(l->opt.free_ctx, n);
}

/* S2: the changed pages below low, in ascending order, with their hashes;
 * every page S7 makes clean is marked in clean[]. */
typedef struct changes {
  size_t count, numbers_cap, hashes_cap;
  uint64_t *numbers, *hashes;
} changes;

static int changes_push(changes *c, uint64_t n, uint64_t hash)
{
  int rc = loom_array_reserve(&c->numbers, &c->numbers_cap, c->count + 1,
                              sizeof *c->numbers);
  if (!rc)
    rc = loom_array_reserve(&c->hashes, &c->hashes_cap, c->count + 1,
                            sizeof *c->hashes);
  if (rc)
    return rc;
  c->numbers[c->count] = n;
  c->hashes[c->count] = hash;
  c->count++;
  return 0;
}

static int compose(loom *l, uint64_t low, uint64_t *clean, changes *out)
{
  uint64_t image = l->image_pages;
  for (uint64_t w = 0; w * 64 < low; w++) {
    uint64_t bits = __atomic_load_n(&l->dirty[w], __ATOMIC_RELAXED);
    while (bits) {
      uint64_t n = w * 64 + (uint64_t)__builtin_ctzll(bits);
      bits &= bits - 1;
      if (n >= low)
        break;
      if (n == l->guard || is_free(l, n))
        continue;
      clean[n / 64] |= UINT64_C(1) << (n % 64);
      uint64_t hash = loom_page_hash(n, page_addr(l, n));
      if (n < image ? hash == loom_store_page_hash(l->store, n)
                    : hash == store_zero_hash(n))
        continue; /* unchanged, or a new page of zeros (the grown file
                     reads as zeros) */
      int rc = changes_push(out, n, hash);
      if (rc)
        return rc;
    }
  }
  return 0;
}

/* LOOM_CHECK_PREVIOUS: the previous version of each changed image page
 * that the arena took from the image file (below l->file_pages: in the
 * image at open and never cut off since; demand-paged or copied in) and
 * that has not changed since open matches the hash it was committed with.
 * A page changed since open lives in the arena's own memory (a private
 * copy), which is what the store commits: it is not read again
 * (l->checked); nor is a page past file_pages (it came from memory: grown
 * in this session, zeros included, which the file may not hold yet). Any
 * other page is in no record the checkpoint still has to write, so the
 * image file holds its committed version: no wait for the checkpoint.
 * LOOM_ECORRUPT and l->rotted_page when one does not match. */
static int check_previous(loom *l, const changes *ch)
{
  if (!l->checked &&
      !(l->checked = calloc((size_t)(l->pages + 63) / 64, sizeof(uint64_t))))
    return ENOMEM;
  uint8_t *buf = NULL;
  int rc = 0;
  for (uint64_t i = 0; !rc && i < ch->count; i++) {
    uint64_t n = ch->numbers[i], bit = UINT64_C(1) << (n % 64);
    if (n >= l->file_pages || (l->checked[n / 64] & bit)) {
      l->checked[n / 64] |= bit; /* never taken from the file: the arena's copy is it */
      continue;
    }
    if (!buf && !(buf = malloc(PS)))
      return ENOMEM;
    rc = store_read_image_page(l->store, n, buf);
    if (!rc && loom_page_hash(n, buf) != loom_store_page_hash(l->store, n)) {
      l->rotted_page = n;
      rc = LOOM_ECORRUPT;
    }
    if (!rc)
      l->checked[n / 64] |= bit; /* from now on the arena's copy is the page */
  }
  free(buf);
  return rc;
}

uint64_t loom_rotted_page(const loom *l)
{
  return l ? l->rotted_page : UINT64_MAX;
}

/* ---------------------------------------------------------------------- */
/* RECENT PAGES: old versions without waiting for the checkpoint.
 *
 * A shipping primary's commit hook reads the previous version of every
 * page it commits. With an apply thread the image file lags the committed
 * position by the records the checkpoint has not merged yet, so the hook
 * used to wait for the checkpoint (image writes and two fsyncs) before
 * every commit. Instead, after each commit's hook the saving thread notes
 * where in the commit log each page it committed is (its record's lsn and
 * the page's place in it), and the hook reads a listed page's old version
 * from its record, which the log still holds (R3):
 *
 *   R1. recent lists, for every page that a commit with seq > recent_from
 *       wrote, the record of its newest committed version and that
 *       commit's seq.
 *   R2. No commit with seq > recent_from shrank the image (one that does
 *       empties recent and becomes recent_from): lengths only grew.
 *   R3. A listed record's bytes are in the log while it is listed: its
 *       space is free only once the checkpoint merged it, and the
 *       checkpoint moves ckpt (image_pos) before it frees the space
 *       (checkpoint_batch: step 4, then log_head), so a record whose
 *       space a later save may have taken has seq <= ckpt, and the entry
 *       is dropped (below) before any hook reads it; only the saving
 *       thread writes the log, so nothing overwrites it during a hook.
 *       (A resized ring is empty first: every entry is dropped then.)
 *
 * Before the hook of the commit after `before`, with ckpt the position
 * the image file has been written to (loom_store_log_stats): if
 * recent_from <= ckpt, every commit the checkpoint may still be writing is
 * covered; entries of seq <= ckpt are dropped (the image file holds them,
 * or newer versions of the same pages that recent lists), and a page's
 * old version is:
 *   - its record's in the log, if listed (R1, R3);
 *   - else, below ckpt.pages, the image file's: no pending record writes
 *     the page (R1), and none cuts the file (R2);
 *   - else zeros: no commit wrote it since it was past the image's end
 *     (one up to ckpt would have made ckpt.pages larger, R2; a later one
 *     would be listed, R1), and growth leaves pages zero.
 * Else the checkpoint catches up first (store_apply_wait), recent is
 * emptied, recent_from = before.seq, and the image file is at before. A
 * commit of more pages than recent has room for empties it and becomes
 * recent_from, so the next commit may wait. Whatever the version's
 * source, the hook checks it against the commit's old hash (the frame
 * encoder: REPLICATE_EIMAGE_ROT). The memory: an index of up to half the
 * commit log's ring in pages (32 bytes a page twice, 128 KiB by default;
 * before, a copy of every page: 32 MiB), taken at the first commit of an
 * arena with a hook and an apply thread; without the thread every hook
 * waits, as before. */

/* The pages recent may list: half the commit log's ring (the checkpoint
 * starts when a quarter of it is queued, and commits go on while it
 * runs), within [RECENT_MIN_PAGES, RECENT_MAX_PAGES]. */
#define RECENT_MIN_PAGES 256u
#define RECENT_MAX_PAGES 4096u

static uint32_t recent_pool_pages(loom *l)
{
  loom_log_stats st;
  loom_store_log_stats(l->store, &st);
  uint64_t pages = st.size / 2 / PS;
  if (pages < RECENT_MIN_PAGES)
    return RECENT_MIN_PAGES;
  return pages > RECENT_MAX_PAGES ? RECENT_MAX_PAGES : (uint32_t)pages;
}

typedef struct recent_page {
  uint64_t n, seq;
  uint64_t lsn; /* the record of seq, where page n is its index-th */
  uint64_t index;
} recent_page;

static void recent_clear(loom *l, uint64_t from)
{
  l->recent_count = 0;
  l->recent_from = from;
}

/* The entry of page n, or NULL. */
static const recent_page *recent_find(const loom *l, uint64_t n)
{
  uint64_t lo = 0, hi = l->recent_count;
  while (lo < hi) {
    uint64_t mid = lo + (hi - lo) / 2;
    if (l->recent[mid].n < n)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < l->recent_count && l->recent[lo].n == n ? &l->recent[lo] : NULL;
}

/* Before the hook of the commit after `before`: recent as the checkpoint
 * left the image file, or the checkpoint catches up (always when `use` is
 * false: no apply thread). */
static int recent_prepare(loom *l, const loom_position *before, int use)
{
  loom_log_stats st;
  loom_store_log_stats(l->store, &st);
  if (!use || l->recent_from > st.checkpoint.seq || st.checkpoint.seq > before->seq) {
    int rc = store_apply_wait(l->store);
    if (rc)
      return rc;
    recent_clear(l, before->seq);
    l->recent_image_pages = before->pages;
    return 0;
  }
  l->recent_image_pages = st.checkpoint.pages;
  uint64_t kept = 0;
  for (uint64_t j = 0; j < l->recent_count; j++)
    if (l->recent[j].seq > st.checkpoint.seq) /* else R3: maybe overwritten */
      l->recent[kept++] = l->recent[j];
  l->recent_count = kept;
  return 0;
}

/* The index's memory, at the first commit that needs it: recent_cap
 * entries and as many to merge into. */
static int recent_alloc(loom *l)
{
  l->recent_cap = recent_pool_pages(l);
  l->recent = malloc(l->recent_cap * 2 * sizeof *l->recent);
  if (!l->recent)
    return ENOMEM;
  l->recent_count = 0;
  __atomic_store_n(&l->recent_bytes,
                   (uint64_t)l->recent_cap * 2 * sizeof *l->recent,
                   __ATOMIC_RELAXED);
  return 0;
}

/* After the hook of commit c, whose record is at lsn: its pages join
 * recent (R1), or it becomes recent_from. */
static void recent_note(loom *l, const loom_commit *c, uint64_t lsn)
{
  uint64_t k = c->page_count;
  if (!l->recent && recent_alloc(l)) {
    l->recent_from = c->after.seq; /* no memory: the next hook waits */
    return;
  }
  if (c->after.pages < c->before.pages || l->recent_count + k > l->recent_cap) {
    recent_clear(l, c->after.seq); /* R2, or no room: the next hook waits */
    return;
  }
  /* Merge c's pages (ascending; the record holds them in that order)
   * into recent (ascending), into the second half, then back. */
  recent_page *merged = l->recent + l->recent_cap;
  uint64_t a = 0, b = 0, m = 0;
  while (a < l->recent_count || b < k) {
    uint64_t n = b < k ? c->page_numbers[b] : UINT64_MAX;
    if (a < l->recent_count && l->recent[a].n < n) {
      merged[m++] = l->recent[a++];
      continue;
    }
    if (a < l->recent_count && l->recent[a].n == n)
      a++; /* superseded by c's version */
    merged[m++] = (recent_page){n, c->after.seq, lsn, b++};
  }
  memcpy(l->recent, merged, m * sizeof *merged);
  l->recent_count = m;
}

void loom_get_log_stats(loom *l, loom_log_stats *out)
{
  loom_store_log_stats(l->store, out);
  out->recent_bytes = __atomic_load_n(&l->recent_bytes, __ATOMIC_RELAXED);
}

/* The version c's page i had at c->before, outside the early path. A
 * page whose recorded hash is the zero page's is zeros (an allocator's
 * fresh page, typically): no read. */
static int old_version(loom *l, const loom_commit *c, uint64_t i, void *buf)
{
  uint64_t n = c->page_numbers[i];
  const recent_page *r = n < c->before.pages ? recent_find(l, n) : NULL;
  if (r)
    return store_read_record_page(l->store, r->lsn, r->index, buf);
  if (n >= c->before.pages || n >= l->recent_image_pages ||
      c->old_hashes[i] == store_zero_hash(n)) {
    memset(buf, 0, PS);
    return 0;
  }
  return store_read_image_page(l->store, n, buf);
}

int loom_commit_old_page_view(loom *l, const loom_commit *c, uint64_t i,
                              void *buf, const void **page)
{
  if (page)
    *page = NULL;
  if (!l || !c || !buf || !page || i >= c->page_count)
    return LOOM_EINVAL;
  if (l->early && c->page_numbers == l->early->page_numbers) {
    *page = l->early_old + i * PS; /* early_capture's copy */
    return 0;
  }
  int rc = old_version(l, c, i, buf);
  if (!rc)
    *page = buf;
  return rc;
}

int loom_commit_old_page(loom *l, const loom_commit *c, uint64_t i, void *buf)
{
  const void *page;
  int rc = loom_commit_old_page_view(l, c, i, buf, &page);
  if (!rc && page != buf)
    memcpy(buf, page, PS);
  return rc;
}

/* The most pages whose old versions are copied so that the apply can start
 * before the hook runs (16 MiB); a larger commit runs the hook first. */
#define EARLY_MAX_PAGES 1024u

/* Before an early apply: copy c's old page versions (as old_version reads
 * them: the image file may lag c->before) and its arrays (the patch that holds them goes to the apply
 * thread) into l, and point c at the copies. ENOMEM or a read error: the
 * hook runs before the apply instead, reading the image itself. */
static int early_capture(loom *l, loom_commit *c)
{
  uint64_t n = c->page_count;
  if (n == 0)
    return 0; /* a length change alone: nothing to read or copy */
  if (n > l->early_cap) {
    uint8_t *old = realloc(l->early_old, n * PS);
    if (!old)
      return ENOMEM;
    l->early_old = old;
    uint64_t *arrays = realloc(l->early_arrays, 3 * n * sizeof *arrays);
    if (!arrays)
      return ENOMEM;
    l->early_arrays = arrays;
    l->early_cap = n;
  }
  for (uint64_t i = 0; i < n; i++) {
    int rc = old_version(l, c, i, l->early_old + i * PS);
    if (rc)
      return rc;
  }
  uint64_t *numbers = l->early_arrays, *old_hashes = numbers + n,
           *new_hashes = old_hashes + n;
  memcpy(numbers, c->page_numbers, n * sizeof *numbers);
  memcpy(old_hashes, c->old_hashes, n * sizeof *old_hashes);
  memcpy(new_hashes, c->new_hashes, n * sizeof *new_hashes);
  c->page_numbers = numbers;
  c->old_hashes = old_hashes;
  c->new_hashes = new_hashes;
  return 0;
}

static int validate(loom *l)
{
  int rc = loom_store_sync(l->store);
  uint8_t *buf = rc ? NULL : malloc(PS);
  if (!rc && !buf)
    rc = ENOMEM;
  for (uint64_t n = 0; !rc && n < l->image_pages; n++) {
    if (page_dirty(l, n))
      continue;
    rc = store_read_image_page(l->store, n, buf);
    if (!rc && memcmp(buf, page_addr(l, n), PS) != 0) {
      /* A tracking hole: report it, and make the page dirty so that the
       * next save writes it (the image is not left behind). */
      l->stats.validation_errors++;
      page_set_dirty(l, n);
      l->tracker->unprotect(l, n, 1);
      rc = LOOM_EBUG;
    }
  }
  free(buf);
  return rc;
}

/* S3-S6, once compose found something to commit. */
static int commit(loom *l, uint64_t low, const changes *ch, int *hook_rc)
{
  loom_position before;
  loom_store_position(l->store, &before);
  uint64_t image = l->image_pages;
  loom_patch_header h = {
      .before = before,
      .after = {.epoch = before.epoch, .seq = before.seq + 1, .pages = low,
                .commit_time_ns = loom_real_ns()},
      .page_count = ch->count,
  };
  loom_patch *p = NULL;
  int rc = store_patch_begin(l->store, &h, 1, &p);
  for (uint64_t i = 0; !rc && i < ch->count; i++)
    rc = store_patch_add_hashed(p, ch->numbers[i], page_addr(l, ch->numbers[i]),
                                ch->hashes[i], 1);
  if (!rc)
    rc = store_patch_make_durable(p);                        /* S3 */
  if (rc) {
    loom_patch_abort(p);
    return rc;
  }
  uint64_t lsn = p->lsn; /* for RECENT PAGES (p is the apply's after S6) */
  l->stats.saves++;
  l->stats.pages_saved += ch->count;
  /* The hook's old versions: RECENT PAGES and the image file, or the
   * records before this one are checkpointed first (this one is not
   * queued yet). */
  int recent = l->opt.on_commit && (l->opt.flags & LOOM_APPLY_ASYNC);
  if (l->opt.on_commit && (rc = recent_prepare(l, &before, recent))) {
    loom_patch_abort(p);
    return rc;
  }
  loom_commit c = {
      .before = p->header.before,
      .after = p->header.after,
      .page_count = p->header.page_count,
      .page_numbers = p->page_numbers,
      .old_hashes = p->old_hashes,
      .new_hashes = p->new_hashes,
  };
  /* With an apply thread, the apply starts before the hook (S4 after S6)
   * when the old page versions the hook may read fit in memory: the hook
   * (a shipper encoding and logging the commit) and the image's writes
   * and fsyncs then overlap instead of following each other. */
  int early = l->opt.on_commit && (l->opt.flags & LOOM_APPLY_ASYNC) &&
              c.page_count <= EARLY_MAX_PAGES && early_capture(l, &c) == 0;
  if (l->opt.on_commit && !early) {                          /* S4 */
    *hook_rc = l->opt.on_commit(l->opt.commit_ctx, l, &c);
    if (recent) /* c's arrays are the patch's, gone after S6 */
      recent_note(l, &c, lsn);
  }
  rc = unmap_image_tail(l, low, image);                      /* S5 */
  l->image_pages = low;
  if (low < l->file_pages)
    l->file_pages = low; /* pages past it come from memory from now on */
  if (rc) {
    /* Committed, but the image file cannot shrink under the mapping. */
    store_poison(l->store, rc);
    loom_patch_abort(p);
  } else {
    rc = store_apply_start(p);                               /* S6 */
  }
  if (early) {                  /* S4: the commit is durable either way */
    l->early = &c;
    *hook_rc = l->opt.on_commit(l->opt.commit_ctx, l, &c);
    l->early = NULL;
    if (recent) /* c's arrays are early_capture's copies */
      recent_note(l, &c, lsn);
  }
  return rc;
}

int loom_save(loom *l, uint64_t low, uint64_t high)
{
  if (!l || low > high || high > l->pages)
    return LOOM_EINVAL;
  if (low >= l->pages)
    return LOOM_EEXHAUSTED; /* an image must leave the guard a page */
  if (store_poisoned(l->store))
    return LOOM_EPANIC;
  if (l->bug)
    return LOOM_EBUG;
  int rc = handler_install(); /* the next writes fault again */
  if (!rc)
    rc = l->tracker->collect(l);                             /* S1 */
  if (!rc && l->guard != NO_GUARD && l->guard < low)
    rc = guard_move(l, NO_GUARD);
  if (rc)
    return rc;

  uint64_t image = l->image_pages;
  uint64_t *clean = calloc((size_t)(low + 63) / 64 + 1, sizeof(uint64_t));
  changes ch = {0};
  rc = clean ? compose(l, low, clean, &ch) : ENOMEM;         /* S2 */
  l->rotted_page = UINT64_MAX;
  if (!rc && (l->opt.flags & LOOM_CHECK_PREVIOUS))
    rc = check_previous(l, &ch);
  int hook_rc = 0;
  if (!rc && (ch.count || low != image))
    rc = commit(l, low, &ch, &hook_rc);                      /* S3-S6 */
  free(ch.numbers);
  free(ch.hashes);
  if (rc) {
    free(clean);
    if (!store_poisoned(l->store))
      loom_ward(l, low, high); /* failed before the commit point: the guard
                                  that S1 may have lifted goes back */
    return rc;
  }
  /* S7: pages past the image are dirty, the composed ones clean. */
  for (uint64_t n = l->image_pages; n < image; n++)
    page_set_dirty(l, n);
  if (image > l->image_pages)
    rc = l->tracker->unprotect(l, l->image_pages, image - l->image_pages);
  /* A tracker whose collect re-armed the written pages only needs the pages
   * that joined the image now. */
  uint64_t first = l->tracker->collect_rearms && image < l->image_pages ? image
                   : l->tracker->collect_rearms ? l->image_pages : 0;
  if (!rc)
    rc = for_runs(l, first, l->image_pages, want_clean, clean, clean_run);
  if (!rc && first)
    for (uint64_t n = 0; n < first; n++)
      if (want_clean(l, n, clean))
        page_set_clean(l, n);
  free(clean);
  l->yolo = 0;
  if (!rc)
    rc = loom_ward(l, low, high);
  if (rc == LOOM_EEXHAUSTED)
    return rc;
  if (rc) {
    store_poison(l->store, rc);
    return rc;
  }
  if (l->opt.flags & LOOM_VALIDATE)
    rc = validate(l);                                         /* S8 */
  return rc ? rc : hook_rc;
}

/* ---------------------------------------------------------------------- */
/* Toss, foul, yolo, check. */

static int want_free_middle(const loom *l, uint64_t n, const void *arg)
{
  (void)arg;
  return n != l->guard;
}

static int toss_run(loom *l, uint64_t first, uint64_t count)
{
  if (l->swap_fd >= 0 &&
      fallocate(l->swap_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                (off_t)(first * PS), (off_t)(count * PS)) < 0)
    return errno;
  return madvise(page_addr(l, first), count * PS, MADV_DONTNEED) < 0 ? errno : 0;
}

int loom_toss(loom *l, uint64_t low, uint64_t high)
{
  if (!l || low > high || high > l->pages)
    return LOOM_EINVAL;
  if (low < l->image_pages)
    low = l->image_pages; /* image pages are never tossed */
  return for_runs(l, low, high, want_free_middle, NULL, toss_run);
}

int loom_foul(loom *l)
{
  if (!l)
    return LOOM_EINVAL;
  int rc = l->tracker->unprotect(l, 0, l->image_pages);
  if (!rc)
    for (uint64_t n = 0; n < l->image_pages; n++)
      page_set_dirty(l, n);
  return rc;
}

int loom_yolo(loom *l)
{
  int rc = loom_foul(l);
  if (!rc)
    rc = guard_move(l, NO_GUARD);
  if (!rc)
    l->yolo = 1;
  return rc;
}

/* Read /proc/self/maps and check each page's protection against A1-A3 (for
 * the mprotect tracker; the uffd tracker leaves protections alone). */
typedef struct check_ctx {
  void (*report)(void *, const char *);
  void *ctx;
  int violations;
} check_ctx;

__attribute__((format(printf, 2, 3)))
static void violation(check_ctx *c, const char *fmt, ...)
{
  char msg[160];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (c->report)
    c->report(c->ctx, msg);
  c->violations++;
}

static void check_protections(loom *l, check_ctx *c)
{
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f) {
    violation(c, "cannot read /proc/self/maps (%s)", strerror(errno));
    return;
  }
  uintptr_t lo = (uintptr_t)l->base, hi = lo + l->pages * PS;
  char line[512];
  while (fgets(line, sizeof line, f)) {
    unsigned long start, end;
    char perms[5];
    if (sscanf(line, "%lx-%lx %4s", &start, &end, perms) != 3)
      continue;
    if (end <= lo || start >= hi)
      continue;
    if (start < lo)
      start = lo;
    if (end > hi)
      end = hi;
    for (uintptr_t a = start; a < end; a += PS) {
      uint64_t n = (a - lo) / PS;
      int readable = perms[0] == 'r', writable = perms[1] == 'w';
      if (n == l->guard) {
        if (readable || writable)
          violation(c, "guard page %llu is accessible", (unsigned long long)(n));
      } else if (page_dirty(l, n)) {
        if (!writable && !l->yolo)
          violation(c, "dirty page %llu is not writable", (unsigned long long)(n));
      } else if (writable && l->tracker == &tracker_mprotect) {
        violation(c, "clean page %llu is writable", (unsigned long long)(n));
      } else if (!readable) {
        violation(c, "page %llu is not readable", (unsigned long long)(n));
      }
    }
  }
  fclose(f);
}

int loom_check(loom *l, void (*report)(void *ctx, const char *msg), void *ctx)
{
  check_ctx c = {report, ctx, 0};
  if (!l)
    return 0;
  for (uint64_t n = l->image_pages; n < l->pages; n++)
    if (!page_dirty(l, n))
      violation(&c, "page %llu past the image is clean", (unsigned long long)(n));
  if (l->guard != NO_GUARD && l->guard < l->image_pages)
    violation(&c, "guard page %llu is inside the image", (unsigned long long)(l->guard));
  if (l->guard == NO_GUARD && !l->yolo && !l->exhausted)
    violation(&c, "no guard page (free pages: %llu)", (unsigned long long)(l->pages - l->image_pages));
  if (l->bug)
    violation(&c, "an unexplained fault was caught (%llu)", (unsigned long long)((uint64_t)l->bug));
  loom_position pos;
  loom_store_position(l->store, &pos);
  if (pos.pages != l->image_pages)
    violation(&c, "the store's image has %llu pages, the arena disagrees",
              (unsigned long long)(pos.pages));
  check_protections(l, &c);
  return c.violations;
}
