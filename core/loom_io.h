/*
 * loom_io.h: the I/O interface every file operation of the engine goes
 * through.
 *
 * The engine's store never calls open/mkdir/pwrite/fsync/... on the image
 * directory directly: it calls the functions of a loom_io, so that tests can
 * count operations, fail any one of them (EIO, ENOSPC, a short write), kill
 * the process before it, or record what was made durable to simulate a
 * power loss (tests/core/iosim.c). The exceptions hold nothing durable:
 * flock on the lock file, and the unlinked scratch files of swap mode and
 * of snapshots (O_TMPFILE; gone after a crash by construction).
 *
 * Every function returns >= 0 on success and -errno on failure. Names are
 * relative to dirfd. A directory is opened with O_DIRECTORY and made durable
 * with fsync like a file (the POSIX one uses fdatasync for regular files).
 * The default, loom_io_posix(), maps each onto the
 * system call of the same name, retrying EINTR and completing short
 * transfers.
 *
 * Calls may come from more than one thread at once: the checkpoint thread
 * (LOOM_APPLY_ASYNC) beside the owner's, and during open two threads that
 * pread the log to verify it (recovery hashes its pages in two threads).
 */
#ifndef LOOM_IO_H
#define LOOM_IO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum loom_io_op {
  LOOM_IO_OPEN,
  LOOM_IO_PREAD,
  LOOM_IO_PWRITE,
  LOOM_IO_FSYNC,
  LOOM_IO_FTRUNCATE,
  LOOM_IO_RENAME,
  LOOM_IO_UNLINK,
  LOOM_IO_CLOSE,
  LOOM_IO_MKDIR,
  LOOM_IO_OP_COUNT
} loom_io_op;

typedef struct loom_io {
  void *ctx;
  int (*open)(void *ctx, int dirfd, const char *name, int flags, mode_t mode);
  /* Transfer exactly len bytes (a short transfer at end of file returns
   * the bytes read for pread; pwrite returns len or -errno). */
  ssize_t (*pread)(void *ctx, int fd, void *buf, size_t len, off_t off);
  ssize_t (*pwrite)(void *ctx, int fd, const void *buf, size_t len, off_t off);
  int (*fsync)(void *ctx, int fd);
  int (*ftruncate)(void *ctx, int fd, off_t len);
  int (*rename)(void *ctx, int olddirfd, const char *oldname, int newdirfd,
                const char *newname);
  int (*unlink)(void *ctx, int dirfd, const char *name, int flags);
  int (*close)(void *ctx, int fd);
  int (*mkdir)(void *ctx, int dirfd, const char *name, mode_t mode);
  /* Optional (may be NULL): write the iovcnt buffers, in order, from off;
   * returns their total length or -errno. Lets a save write pages straight
   * from the arena; without it the store copies them into a buffer and
   * calls pwrite. Counted as LOOM_IO_PWRITE. */
  ssize_t (*pwritev)(void *ctx, int fd, const struct iovec *iov, int iovcnt,
                     off_t off);
  /* Optional (may be NULL): allocate the blocks of [off, off + len)
   * without changing the file's length (fallocate FALLOC_FL_KEEP_SIZE), so
   * that writing there later cannot fail for lack of space. 0, -ENOSPC,
   * or -EOPNOTSUPP where the file system cannot (the caller goes on). A
   * commit that grows the image reserves its blocks this way before its
   * commit point. Not counted by the test simulator, which leaves it NULL. */
  int (*reserve)(void *ctx, int fd, off_t off, off_t len);
} loom_io;

/* The plain POSIX implementation (ctx unused). */
const loom_io *loom_io_posix(void);

/* Name of an operation, for test output. */
const char *loom_io_op_name(loom_io_op op);

#ifdef __cplusplus
}
#endif
#endif /* LOOM_IO_H */
