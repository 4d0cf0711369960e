/* io_posix.c: the plain POSIX loom_io. Retries EINTR, completes short
 * transfers, returns -errno. */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "loom_io.h"
#include "store_internal.h"

/* A file's type and size, without asking for its times. Why it matters:
 * on a file system with multigrain timestamps (ext4, XFS, Btrfs, tmpfs
 * since Linux 6.13) a stat that reports ctime or mtime marks them queried,
 * so the next write stamps a fine-grained time and dirties the inode; an
 * fdatasync must then write the inode too (on ext4 without a journal,
 * every fdatasync writes a dirty inode table block: a second I/O and a
 * second wait). An fstat before each record's write and fdatasync cost a
 * one-page save 40-60 us of its 110 (docs/BENCHMARKS.md section 9). So
 * nothing on the save path asks for times: statx with the mask it needs. */
int io_stat_untimed(int fd, int *is_regular, uint64_t *size)
{
  static atomic_int statx_unusable; /* a kernel before 4.11, or a seccomp
                                       filter refusing statx */
  struct statx sx;
  unsigned need = STATX_TYPE | STATX_SIZE;
  if (!atomic_load(&statx_unusable)) {
    int rc = statx(fd, "", AT_EMPTY_PATH, need, &sx);
    if (rc == 0 && (sx.stx_mask & need) == need) {
      if (is_regular)
        *is_regular = S_ISREG(sx.stx_mode);
      if (size)
        *size = (uint64_t)sx.stx_size;
      return 0;
    }
    if (rc != 0 && errno == EBADF)
      return errno;
    /* Only a refusal of the call itself stops asking statx; anything else
     * (EIO, ENOMEM, a file system that left type or size out) falls back
     * for this call alone, so that one transient failure does not cost
     * every later fdatasync the inode write statx avoids. */
    if (rc != 0 && (errno == ENOSYS || errno == EPERM || errno == EACCES))
      atomic_store(&statx_unusable, 1);
  }
  struct stat st; /* (it asks for times: once after a transient failure,
                     every time only where statx is refused) */
  if (fstat(fd, &st) < 0)
    return errno;
  if (is_regular)
    *is_regular = S_ISREG(st.st_mode);
  if (size)
    *size = (uint64_t)st.st_size;
  return 0;
}

static int posix_open(void *ctx, int dirfd, const char *name, int flags,
                      mode_t mode)
{
  (void)ctx;
  int fd;
  do
    fd = openat(dirfd, name, flags | O_CLOEXEC, mode);
  while (fd < 0 && errno == EINTR);
  return fd < 0 ? -errno : fd;
}

static ssize_t posix_pread(void *ctx, int fd, void *buf, size_t len, off_t off)
{
  (void)ctx;
  size_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd, (char *)buf + done, len - done, off + (off_t)done);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (n == 0)
      break;
    done += (size_t)n;
  }
  return (ssize_t)done;
}

static ssize_t posix_pwrite(void *ctx, int fd, const void *buf, size_t len,
                            off_t off)
{
  (void)ctx;
  size_t done = 0;
  while (done < len) {
    ssize_t n = pwrite(fd, (const char *)buf + done, len - done,
                       off + (off_t)done);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (n == 0)
      return -EIO;
    done += (size_t)n;
  }
  return (ssize_t)done;
}

static ssize_t posix_pwritev(void *ctx, int fd, const struct iovec *iov,
                             int iovcnt, off_t off)
{
  size_t total = 0;
  for (int i = 0; i < iovcnt; i++)
    total += iov[i].iov_len;
  ssize_t n;
  do
    n = pwritev(fd, iov, iovcnt, off);
  while (n < 0 && errno == EINTR);
  if (n < 0)
    return -errno;
  if ((size_t)n == total)
    return n;
  /* Short: finish buffer by buffer. */
  size_t done = (size_t)n, at = 0;
  for (int i = 0; i < iovcnt; i++) {
    size_t len = iov[i].iov_len;
    if (done < at + len) {
      size_t skip = done > at ? done - at : 0;
      ssize_t w = posix_pwrite(ctx, fd, (const char *)iov[i].iov_base + skip,
                               len - skip, off + (off_t)(at + skip));
      if (w < 0)
        return w;
      done = at + len;
    }
    at += len;
  }
  return (ssize_t)total;
}

/* Regular files get fdatasync: it makes the data and everything needed to
 * read it back (the size) durable, and skips the journal commit a
 * timestamp-only change would cost. Directories get fsync. */
static int posix_fsync(void *ctx, int fd)
{
  (void)ctx;
  int regular = 0, err = io_stat_untimed(fd, &regular, NULL);
  if (err)
    return -err;
  int rc = regular ? fdatasync(fd) : fsync(fd);
  return rc < 0 ? -errno : 0;
}

static int posix_ftruncate(void *ctx, int fd, off_t len)
{
  (void)ctx;
  int rc;
  do
    rc = ftruncate(fd, len);
  while (rc < 0 && errno == EINTR);
  return rc < 0 ? -errno : 0;
}

static int posix_rename(void *ctx, int olddirfd, const char *oldname,
                        int newdirfd, const char *newname)
{
  (void)ctx;
  return renameat(olddirfd, oldname, newdirfd, newname) < 0 ? -errno : 0;
}

static int posix_unlink(void *ctx, int dirfd, const char *name, int flags)
{
  (void)ctx;
  return unlinkat(dirfd, name, flags) < 0 ? -errno : 0;
}

static int posix_close(void *ctx, int fd)
{
  (void)ctx;
  /* Linux releases the descriptor even when close fails: never retry. */
  return close(fd) < 0 && errno != EINTR ? -errno : 0;
}

static int posix_mkdir(void *ctx, int dirfd, const char *name, mode_t mode)
{
  (void)ctx;
  return mkdirat(dirfd, name, mode) < 0 ? -errno : 0;
}

static int posix_reserve(void *ctx, int fd, off_t off, off_t len)
{
  (void)ctx;
  int rc;
  do
    rc = fallocate(fd, FALLOC_FL_KEEP_SIZE, off, len) < 0 ? -errno : 0;
  while (rc == -EINTR);
  return rc == -ENOSYS ? -EOPNOTSUPP : rc;
}

static const loom_io posix_io = {
  .ctx = NULL,
  .open = posix_open,
  .pread = posix_pread,
  .pwrite = posix_pwrite,
  .fsync = posix_fsync,
  .ftruncate = posix_ftruncate,
  .rename = posix_rename,
  .unlink = posix_unlink,
  .close = posix_close,
  .mkdir = posix_mkdir,
  .pwritev = posix_pwritev,
  .reserve = posix_reserve,
};

const loom_io *loom_io_posix(void) { return &posix_io; }

const char *loom_io_op_name(loom_io_op op)
{
  switch (op) {
  case LOOM_IO_OPEN: return "open";
  case LOOM_IO_PREAD: return "pread";
  case LOOM_IO_PWRITE: return "pwrite";
  case LOOM_IO_FSYNC: return "fsync";
  case LOOM_IO_FTRUNCATE: return "ftruncate";
  case LOOM_IO_RENAME: return "rename";
  case LOOM_IO_UNLINK: return "unlink";
  case LOOM_IO_CLOSE: return "close";
  case LOOM_IO_MKDIR: return "mkdir";
  case LOOM_IO_OP_COUNT: break;
  }
  return "?";
}
