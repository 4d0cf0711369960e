/* track_uffd.c: userfaultfd write-protection in asynchronous mode.
 *
 * The whole arena is registered for WP once; clean pages are
 * write-protected. A write to a protected page does not fault to user
 * space: the kernel lifts the protection itself and records the page as
 * written. At save, PAGEMAP_SCAN with PM_SCAN_WP_MATCHING returns the
 * written pages of the image and protects them again, atomically. No
 * mprotect per page, so the mapping never splits (no vm.max_map_count
 * limit), and a first write costs about a microsecond.
 *
 * Needs Linux 6.7+ (UFFD_FEATURE_WP_ASYNC, PAGEMAP_SCAN); the headers of
 * older distributions lack the definitions, so they are given here (the
 * kernel ABI is stable) and the kernel is asked at run time.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "arena.h"

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef PAGEMAP_SCAN
struct page_region {
  uint64_t start, end, categories;
};
struct pm_scan_arg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages,
      category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#define PAGE_IS_WRITTEN (1 << 1)
#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
#endif

#define PS ((uint64_t)LOOM_PAGE_SIZE)
#define SCAN_REGIONS 512

static const uint64_t wanted_features =
    UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;

/* A userfaultfd with the async WP API, or -errno. */
static int uffd_open(void)
{
  int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (fd < 0 && (errno == EPERM || errno == EACCES))
    fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
  if (fd < 0)
    return -errno;
  struct uffdio_api api = {.api = UFFD_API, .features = wanted_features};
  if (ioctl(fd, UFFDIO_API, &api) < 0 ||
      (api.features & wanted_features) != wanted_features) {
    close(fd);
    return -ENOTSUP;
  }
  return fd;
}

int tracker_uffd_async_available(void)
{
  int fd = uffd_open();
  if (fd < 0)
    return 0;
  close(fd);
  int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (pm < 0)
    return 0;
  /* An empty scan tells whether the ioctl exists. */
  struct pm_scan_arg arg = {.size = sizeof arg};
  int ok = ioctl(pm, PAGEMAP_SCAN, &arg) >= 0 || errno != ENOTTY;
  close(pm);
  return ok;
}

static int uffd_wp(loom *l, uint64_t first, uint64_t count, int protect)
{
  if (!count)
    return 0;
  struct uffdio_writeprotect wp = {
      .range = {.start = (uintptr_t)page_addr(l, first), .len = count * PS},
      .mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
  };
  return ioctl(l->uffd, UFFDIO_WRITEPROTECT, &wp) < 0 ? errno : 0;
}

static int uffd_register(loom *l, uint64_t first, uint64_t count)
{
  struct uffdio_register reg = {
      .range = {.start = (uintptr_t)page_addr(l, first), .len = count * PS},
      .mode = UFFDIO_REGISTER_MODE_WP,
  };
  return ioctl(l->uffd, UFFDIO_REGISTER, &reg) < 0 ? errno : 0;
}

static void uffd_fini(loom *l)
{
  if (l->uffd >= 0)
    close(l->uffd); /* unregisters every range */
  if (l->pagemap_fd >= 0)
    close(l->pagemap_fd);
  l->uffd = l->pagemap_fd = -1;
}

static int uffd_init(loom *l)
{
  int fd = uffd_open();
  if (fd < 0)
    return -fd;
  l->uffd = fd;
  l->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  int rc = l->pagemap_fd < 0 ? errno : 0;
  if (!rc)
    rc = uffd_register(l, 0, l->pages);
  if (!rc)
    rc = uffd_wp(l, 0, l->image_pages, 1);
  if (rc)
    uffd_fini(l);
  return rc;
}

/* The written pages of the image get their dirty bit, and are protected
 * again by the same scan. */
static int uffd_collect(loom *l)
{
  struct page_region regions[SCAN_REGIONS];
  uintptr_t start = (uintptr_t)l->base;
  uintptr_t end = start + l->image_pages * PS;
  while (start < end) {
    struct pm_scan_arg arg = {
        .size = sizeof arg,
        .flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
        .start = start,
        .end = end,
        .vec = (uintptr_t)regions,
        .vec_len = SCAN_REGIONS,
        .category_mask = PAGE_IS_WRITTEN,
        .return_mask = PAGE_IS_WRITTEN,
    };
    long n = ioctl(l->pagemap_fd, PAGEMAP_SCAN, &arg);
    if (n < 0)
      return errno;
    for (long i = 0; i < n; i++) {
      uint64_t first = (regions[i].start - (uintptr_t)l->base) / PS;
      uint64_t last = (regions[i].end - 1 - (uintptr_t)l->base) / PS;
      for (uint64_t p = first; p <= last; p++)
        page_set_dirty(l, p);
    }
    if (arg.walk_end <= start)
      return EIO;
    start = arg.walk_end;
  }
  return 0;
}

static int uffd_protect(loom *l, uint64_t first, uint64_t count)
{
  return uffd_wp(l, first, count, 1);
}

/* Writes to a protected page succeed by themselves: nothing to lift. */
static int uffd_unprotect(loom *l, uint64_t first, uint64_t count)
{
  (void)l, (void)first, (void)count;
  return 0;
}

static int uffd_remapped(loom *l, uint64_t first, uint64_t count)
{
  return uffd_register(l, first, count);
}

const tracker_ops tracker_uffd_async = {
  .kind = LOOM_TRACK_UFFD_ASYNC,
  .collect_rearms = 1,
  .init = uffd_init,
  .collect = uffd_collect,
  .protect = uffd_protect,
  .unprotect = uffd_unprotect,
  .remapped = uffd_remapped,
  .fini = uffd_fini,
};
