/*
 * iosim_test.c: unit tests of the test I/O simulator itself: counting,
 * fault injection, crash points, and each rule of the power-loss model.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "iosim.h"
#include "testlib.h"

/* ---------------------------------------------------------------------- */
/* Helpers */

typedef struct fixture {
  char root[96];    /* tracked */
  char out[128];    /* where cuts are written: a sibling of root */
  char base[64];    /* holds both */
  iosim *sim;
  const loom_io *io;
  int rootfd;
} fixture;


static void fixture_init(fixture *f)
{
  snprintf(f->base, sizeof f->base, "/tmp/iosim-test-XXXXXX");
  assert_non_null(mkdtemp(f->base));
  snprintf(f->root, sizeof f->root, "%s/root", f->base);
  assert_int_equal(mkdir(f->root, 0755), 0);
  assert_int_equal(iosim_create(f->root, &f->sim), 0);
  f->io = iosim_io(f->sim);
  f->rootfd = f->io->open(f->io->ctx, AT_FDCWD, f->root, O_RDONLY | O_DIRECTORY, 0);
  assert_true(f->rootfd >= 0);
}

static void fixture_done(fixture *f)
{
  assert_int_equal(f->io->close(f->io->ctx, f->rootfd), 0);
  assert_int_equal(iosim_model_errors(f->sim), 0);
  iosim_destroy(f->sim);
  assert_int_equal(test_remove_tree(f->base), 0);
}

/* Write a cut into a fresh directory under base; its path into f->out. */
static void cut(fixture *f, uint64_t seed, unsigned mode)
{
  static unsigned n;
  snprintf(f->out, sizeof f->out, "%s/cut%u", f->base, n++);
  assert_int_equal(iosim_powercut(f->sim, seed, f->out, mode), 0);
}

/* Read dir/name; returns its length, -1 if it does not exist. */
static long read_file(const char *dir, const char *name, char *buf, size_t cap)
{
  char path[256];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  int fd = open(path, O_RDONLY);
  if (fd < 0) {
    assert_int_equal(errno, ENOENT);
    return -1;
  }
  ssize_t n = read(fd, buf, cap);
  assert_true(n >= 0);
  close(fd);
  return (long)n;
}

static int exists(const char *dir, const char *name)
{
  char path[256];
  struct stat st;
  snprintf(path, sizeof path, "%s/%s", dir, name);
  return stat(path, &st) == 0;
}

static int create_file(fixture *f, int dirfd, const char *name)
{
  int fd = f->io->open(f->io->ctx, dirfd, name, O_RDWR | O_CREAT, 0644);
  assert_true(fd >= 0);
  return fd;
}

static void put(fixture *f, int fd, const char *s, off_t off)
{
  assert_int_equal(f->io->pwrite(f->io->ctx, fd, s, strlen(s), off),
                   (ssize_t)strlen(s));
}

/* A durable file root/name holding s (file and directory fsynced). */
static void durable_file(fixture *f, const char *name, const char *s)
{
  int fd = create_file(f, f->rootfd, name);
  put(f, fd, s, 0);
  assert_int_equal(f->io->fsync(f->io->ctx, fd), 0);
  assert_int_equal(f->io->close(f->io->ctx, fd), 0);
  assert_int_equal(f->io->fsync(f->io->ctx, f->rootfd), 0);
}

/* ---------------------------------------------------------------------- */
/* Counting and tracing */

static void test_counting(void **state)
{
  (void)state;
  fixture f;
  fixture_init(&f);
  assert_int_equal(iosim_count(f.sim), 1); /* the open of the root */
  int fd = create_file(&f, f.rootfd, "a");
  put(&f, fd, "hello", 0);
  put(&f, fd, "world", 5);
  char buf[16];
  assert_int_equal(f.io->pread(f.io->ctx, fd, buf, 10, 0), 10);
  assert_memory_equal(buf, "helloworld", 10);
  assert_int_equal(f.io->pread(f.io->ctx, fd, buf, 10, 8), 2); /* at EOF */
  assert_int_equal(f.io->fsync(f.io->ctx, fd), 0);
  assert_int_equal(f.io->ftruncate(f.io->ctx, fd, 3), 0);
  assert_int_equal(f.io->close(f.io->ctx, fd), 0);
  assert_int_equal(f.io->mkdir(f.io->ctx, f.rootfd, "d", 0755), 0);
  assert_int_equal(f.io->rename(f.io->ctx, f.rootfd, "a", f.rootfd, "d/b"), 0);
  assert_int_equal(f.io->unlink(f.io->ctx, f.rootfd, "d/b", 0), 0);
  assert_int_equal(iosim_count(f.sim), 12);
  assert_int_equal(iosim_count_op(f.sim, LOOM_IO_OPEN), 2);
  assert_int_equal(iosim_count_op(f.sim, LOOM_IO_PWRITE), 2);
  assert_int_equal(iosim_count_op(f.sim, LOOM_IO_PREAD), 2);
  assert_int_equal(iosim_count_op(f.sim, LOOM_IO_FSYNC), 1);
  assert_int_equal(iosim_count_op(f.sim, LOOM_IO_FTRUNCATE), 1);
  assert_int_equal(iosim_count_op(f.sim, LOOM_IO_CLOSE), 1);
  assert_int_equal(iosim_count_op(f.sim, LOOM_IO_MKDIR), 1);
  assert_int_equal(iosim_count_op(f.sim, LOOM_IO_RENAME), 1);
  assert_int_equal(iosim_count_op(f.sim, LOOM_IO_UNLINK), 1);

  loom_io_op op;
  char path[128];
  assert_int_equal(iosim_trace_op(f.sim, 0, &op, path, sizeof path), 0);
  assert_int_equal(op, LOOM_IO_OPEN);
  assert_string_equal(path, ".");
  assert_int_equal(iosim_trace_op(f.sim, 2, &op, path, sizeof path), 0);
  assert_int_equal(op, LOOM_IO_PWRITE);
  assert_string_equal(path, "a");
  assert_int_equal(iosim_trace_op(f.sim, 10, &op, path, sizeof path), 0);
  assert_int_equal(op, LOOM_IO_RENAME);
  assert_string_equal(path, "a -> d/b");
  assert_int_equal(iosim_trace_op(f.sim, 12, &op, path, sizeof path), ERANGE);
  fixture_done(&f);
}

/* Untracked paths pass through: counted, performed, not modelled. */
static void test_untracked_passthrough(void **state)
{
  (void)state;
  fixture f;
  fixture_init(&f);
  char other[128];
  snprintf(other, sizeof other, "%s/outside", f.base);
  int fd = f.io->open(f.io->ctx, AT_FDCWD, other, O_RDWR | O_CREAT, 0644);
  assert_true(fd >= 0);
  put(&f, fd, "x", 0);
  assert_int_equal(f.io->fsync(f.io->ctx, fd), 0);
  assert_int_equal(f.io->close(f.io->ctx, fd), 0);
  assert_int_equal(iosim_count(f.sim), 5);
  assert_int_equal(iosim_unsynced(f.sim), 0);
  char buf[8];
  assert_int_equal(read_file(f.base, "outside", buf, sizeof buf), 1);
  /* Tracked through an absolute path and through "..": same inode. */
  char abs[256];
  snprintf(abs, sizeof abs, "%s/../root/./viaabs", f.root);
  fd = f.io->open(f.io->ctx, AT_FDCWD, abs, O_RDWR | O_CREAT, 0644);
  assert_true(fd >= 0);
  put(&f, fd, "abs", 0);
  assert_int_equal(f.io->fsync(f.io->ctx, fd), 0);
  assert_int_equal(f.io->close(f.io->ctx, fd), 0);
  assert_int_equal(f.io->fsync(f.io->ctx, f.rootfd), 0);
  cut(&f, 1, IOSIM_CUT_DROP);
  assert_int_equal(read_file(f.out, "viaabs", buf, sizeof buf), 3);
  assert_memory_equal(buf, "abs", 3);
  assert_false(exists(f.out, "outside"));
  fixture_done(&f);
}

/* ---------------------------------------------------------------------- */
/* The durability model */

static void test_unsynced_write_dropped(void **state)
{
  (void)state;
  fixture f;
  fixture_init(&f);
  durable_file(&f, "a", "old!");
  int fd = f.io->open(f.io->ctx, f.rootfd, "a", O_RDWR, 0);
  assert_true(fd >= 0);
  put(&f, fd, "NEW!more", 0);
  cut(&f, 7, IOSIM_CUT_DROP);
  char buf[64];
  assert_int_equal(read_file(f.out, "a", buf, sizeof buf), 4);
  assert_memory_equal(buf, "old!", 4);
  /* The same history with every unsynced write kept. */
  cut(&f, 7, IOSIM_CUT_KEEP);
  assert_int_equal(read_file(f.out, "a", buf, sizeof buf), 8);
  assert_memory_equal(buf, "NEW!more", 8);
  /* And the real file was written. */
  assert_int_equal(read_file(f.root, "a", buf, sizeof buf), 8);
  assert_int_equal(f.io->close(f.io->ctx, fd), 0);
  fixture_done(&f);
}

static void test_fsync_keeps(void **state)
{
  (void)state;
  fixture f;
  fixture_init(&f);
  durable_file(&f, "a", "first");
  int fd = f.io->open(f.io->ctx, f.rootfd, "a", O_RDWR, 0);
  put(&f, fd, "SECOND", 0);
  assert_int_equal(f.io->fsync(f.io->ctx, fd), 0);
  put(&f, fd, "third", 0); /* unsynced again */
  assert_int_equal(iosim_unsynced(f.sim), 1);
  char buf[64];
  for (uint64_t seed = 0; seed < 20; seed++) {
    cut(&f, seed, IOSIM_CUT_DROP);
    assert_int_equal(read_file(f.out, "a", buf, sizeof buf), 6);
    assert_memory_equal(buf, "SECOND", 6);
  }
  assert_int_equal(f.io->close(f.io->ctx, fd), 0);
  fixture_done(&f);
}

/* A file created and fsynced, but its directory entry never made durable,
 * is gone; once the directory is fsynced it is there. */
static void test_unsynced_create_rolled_back(void **state)
{
  (void)state;
  fixture f;
  fixture_init(&f);
  int fd = create_file(&f, f.rootfd, "new");
  put(&f, fd, "data", 0);
  assert_int_equal(f.io->fsync(f.io->ctx, fd), 0);
  cut(&f, 1, IOSIM_CUT_KEEP);
  assert_false(exists(f.out, "new"));
  assert_int_equal(f.io->fsync(f.io->ctx, f.rootfd), 0);
  cut(&f, 1, IOSIM_CUT_DROP);
  char buf[16];
  assert_int_equal(read_file(f.out, "new", buf, sizeof buf), 4);
  assert_memory_equal(buf, "data", 4);
  /* Entry durable, content not: the file exists, empty. */
  int fd2 = create_file(&f, f.rootfd, "empty");
  put(&f, fd2, "unsynced", 0);
  assert_int_equal(f.io->fsync(f.io->ctx, f.rootfd), 0);
  cut(&f, 1, IOSIM_CUT_DROP);
  assert_int_equal(read_file(f.out, "empty", buf, sizeof buf), 0);
  /* An unsynced unlink is rolled back too. */
  assert_int_equal(f.io->unlink(f.io->ctx, f.rootfd, "new", 0), 0);
  cut(&f, 1, IOSIM_CUT_DROP);
  assert_int_equal(read_file(f.out, "new", buf, sizeof buf), 4);
  assert_int_equal(f.io->fsync(f.io->ctx, f.rootfd), 0);
  cut(&f, 1, IOSIM_CUT_DROP);
  assert_false(exists(f.out, "new"));
  assert_int_equal(f.io->close(f.io->ctx, fd), 0);
  assert_int_equal(f.io->close(f.io->ctx, fd2), 0);
  fixture_done(&f);
}

/* The write-temp, fsync, rename pattern: until the directory is fsynced
 * the old name keeps the old file. */
static void test_rename_rolled_back(void **state)
{
  (void)state;
  fixture f;
  fixture_init(&f);
  durable_file(&f, "a", "old");
  durable_file(&f, "tmp", "new");
  assert_int_equal(f.io->rename(f.io->ctx, f.rootfd, "tmp", f.rootfd, "a"), 0);
  char buf[16];
  cut(&f, 3, IOSIM_CUT_KEEP);
  assert_int_equal(read_file(f.out, "a", buf, sizeof buf), 3);
  assert_memory_equal(buf, "old", 3);
  assert_int_equal(read_file(f.out, "tmp", buf, sizeof buf), 3);
  assert_memory_equal(buf, "new", 3);
  /* Writes through the renamed file follow it (the inode moved). */
  int fd = f.io->open(f.io->ctx, f.rootfd, "a", O_RDWR, 0);
  put(&f, fd, "NEW", 0);
  assert_int_equal(f.io->fsync(f.io->ctx, fd), 0);
  cut(&f, 3, IOSIM_CUT_DROP);
  assert_int_equal(read_file(f.out, "tmp", buf, sizeof buf), 3);
  assert_memory_equal(buf, "NEW", 3);
  assert_int_equal(read_file(f.out, "a", buf, sizeof buf), 3);
  assert_memory_equal(buf, "old", 3);
  assert_int_equal(f.io->fsync(f.io->ctx, f.rootfd), 0);
  cut(&f, 3, IOSIM_CUT_DROP);
  assert_int_equal(read_file(f.out, "a", buf, sizeof buf), 3);
  assert_memory_equal(buf, "NEW", 3);
  assert_false(exists(f.out, "tmp"));
  assert_int_equal(f.io->close(f.io->ctx, fd), 0);
  fixture_done(&f);
}

/* A backup: a temporary directory filled, fsynced, renamed, parent
 * fsynced. Every missing step loses the backup. */
static void test_directory_rename(void **state)
{
  (void)state;
  fixture f;
  fixture_init(&f);
  assert_int_equal(f.io->mkdir(f.io->ctx, f.rootfd, "tmp", 0755), 0);
  int dfd = f.io->open(f.io->ctx, f.rootfd, "tmp", O_RDONLY | O_DIRECTORY, 0);
  assert_true(dfd >= 0);
  int fd = create_file(&f, dfd, "image");
  put(&f, fd, "pages", 0);
  assert_int_equal(f.io->fsync(f.io->ctx, fd), 0);
  cut(&f, 1, IOSIM_CUT_KEEP);
  assert_false(exists(f.out, "tmp")); /* mkdir not durable */
  assert_int_equal(f.io->fsync(f.io->ctx, f.rootfd), 0);
  cut(&f, 1, IOSIM_CUT_KEEP);
  assert_true(exists(f.out, "tmp"));
  assert_false(exists(f.out, "tmp/image")); /* tmp not fsynced */
  assert_int_equal(f.io->fsync(f.io->ctx, dfd), 0);
  assert_int_equal(f.io->rename(f.io->ctx, f.rootfd, "tmp", f.rootfd, "backup"), 0);
  cut(&f, 1, IOSIM_CUT_DROP);
  assert_true(exists(f.out, "tmp/image"));
  assert_false(exists(f.out, "backup"));
  assert_int_equal(f.io->fsync(f.io->ctx, f.rootfd), 0);
  cut(&f, 1, IOSIM_CUT_DROP);
  char buf[16];
  assert_int_equal(read_file(f.out, "backup/image", buf, sizeof buf), 5);
  assert_memory_equal(buf, "pages", 5);
  assert_false(exists(f.out, "tmp"));
  /* A name opened relative to the (renamed) directory fd still resolves. */
  int fd2 = create_file(&f, dfd, "late");
  assert_int_equal(f.io->fsync(f.io->ctx, dfd), 0);
  cut(&f, 1, IOSIM_CUT_DROP);
  assert_true(exists(f.out, "backup/late"));
  assert_int_equal(f.io->close(f.io->ctx, fd2), 0);
  assert_int_equal(f.io->close(f.io->ctx, fd), 0);
  assert_int_equal(f.io->close(f.io->ctx, dfd), 0);
  fixture_done(&f);
}

static void test_truncate(void **state)
{
  (void)state;
  fixture f;
  fixture_init(&f);
  durable_file(&f, "a", "0123456789");
  int fd = f.io->open(f.io->ctx, f.rootfd, "a", O_RDWR, 0);
  assert_int_equal(f.io->ftruncate(f.io->ctx, fd, 4), 0);
  char buf[64];
  cut(&f, 1, IOSIM_CUT_DROP);
  assert_int_equal(read_file(f.out, "a", buf, sizeof buf), 10);
  cut(&f, 1, IOSIM_CUT_KEEP);
  assert_int_equal(read_file(f.out, "a", buf, sizeof buf), 4);
  assert_int_equal(f.io->fsync(f.io->ctx, fd), 0);
  cut(&f, 1, IOSIM_CUT_DROP);
  assert_int_equal(read_file(f.out, "a", buf, sizeof buf), 4);
  assert_memory_equal(buf, "0123", 4);
  /* Growing by truncate reads as zeros. */
  assert_int_equal(f.io->ftruncate(f.io->ctx, fd, 8), 0);
  cut(&f, 1, IOSIM_CUT_KEEP);
  assert_int_equal(read_file(f.out, "a", buf, sizeof buf), 8);
  assert_memory_equal(buf, "0123\0\0\0\0", 8);
  /* O_TRUNC is an unsynced truncate to 0. */
  int fd2 = f.io->open(f.io->ctx, f.rootfd, "a", O_RDWR | O_TRUNC, 0);
  assert_true(fd2 >= 0);
  cut(&f, 1, IOSIM_CUT_DROP);
  assert_int_equal(read_file(f.out, "a", buf, sizeof buf), 4);
  cut(&f, 1, IOSIM_CUT_KEEP);
  assert_int_equal(read_file(f.out, "a", buf, sizeof buf), 0);
  assert_int_equal(f.io->close(f.io->ctx, fd), 0);
  assert_int_equal(f.io->close(f.io->ctx, fd2), 0);
  fixture_done(&f);
}

/* Torn writes keep whole sectors (aligned to file offsets), each taken
 * from either the old or the new bytes; across seeds every outcome
 * happens: fully kept, dropped, and a mix. */
static void check_tearing(unsigned mode, size_t sector)
{
  fixture f;
  fixture_init(&f);
  enum { LEN = 16384, OFF = 1024 };
  static char old_bytes[LEN], new_bytes[LEN], buf[LEN + OFF + 1];
  memset(old_bytes, 'a', LEN);
  memset(new_bytes, 'b', LEN);
  int fd = create_file(&f, f.rootfd, "a");
  assert_int_equal(f.io->pwrite(f.io->ctx, fd, old_bytes, LEN, 0), LEN);
  assert_int_equal(f.io->fsync(f.io->ctx, fd), 0);
  assert_int_equal(f.io->fsync(f.io->ctx, f.rootfd), 0);
  /* Unaligned write: [OFF, OFF + LEN), growing the file by OFF bytes. */
  assert_int_equal(f.io->pwrite(f.io->ctx, fd, new_bytes, LEN, OFF), LEN);
  int all_old = 0, all_new = 0, mixed = 0;
  for (uint64_t seed = 0; seed < 200; seed++) {
    cut(&f, seed, mode);
    long n = read_file(f.out, "a", buf, sizeof buf);
    assert_true(n == LEN || (n > LEN && n <= LEN + OFF));
    /* Bytes before the write are never touched. */
    for (size_t i = 0; i < OFF; i++)
      assert_int_equal(buf[i], 'a');
    size_t olds = 0, news = 0;
    for (size_t s = OFF / sector * sector; s < (size_t)n; s += sector) {
      size_t lo = s < OFF ? OFF : s;
      size_t hi = s + sector < (size_t)n ? s + sector : (size_t)n;
      char first = buf[lo];
      /* Past the old end, an unkept sector below a kept one is zeros. */
      assert_true(first == 'a' || first == 'b' || (first == 0 && lo >= LEN));
      for (size_t i = lo; i < hi; i++)
        assert_int_equal(buf[i], first);
      if (first == 'b')
        news++;
      else
        olds++;
    }
    if (news == 0)
      all_old++;
    else if (olds == 0)
      all_new++;
    else
      mixed++;
  }
  assert_true(all_old > 0);
  assert_true(all_new > 0);
  assert_true(mixed > 0);
  assert_int_equal(f.io->close(f.io->ctx, fd), 0);
  fixture_done(&f);
}

static void test_torn_write_512(void **state)
{
  (void)state;
  check_tearing(IOSIM_CUT_RANDOM_512, 512);
}

static void test_torn_write_4k(void **state)
{
  (void)state;
  check_tearing(IOSIM_CUT_RANDOM_4K, 4096);
}

/* The same seed gives the same cut; a 512-byte write aligned to 512 is
 * atomic in both tearing modes. */
static void test_cut_reproducible(void **state)
{
  (void)state;
  fixture f;
  fixture_init(&f);
  durable_file(&f, "a", "");
  int fd = f.io->open(f.io->ctx, f.rootfd, "a", O_RDWR, 0);
  static char sector[512], buf1[8192], buf2[8192];
  for (int i = 0; i < 8; i++) {
    memset(sector, 'A' + i, sizeof sector);
    assert_int_equal(f.io->pwrite(f.io->ctx, fd, sector, 512, i * 512), 512);
  }
  for (uint64_t seed = 0; seed < 50; seed++) {
    cut(&f, seed, IOSIM_CUT_RANDOM_4K);
    long n1 = read_file(f.out, "a", buf1, sizeof buf1);
    cut(&f, seed, IOSIM_CUT_RANDOM_4K);
    long n2 = read_file(f.out, "a", buf2, sizeof buf2);
    assert_int_equal(n1, n2);
    assert_memory_equal(buf1, buf2, (size_t)n1);
    for (long s = 0; s < n1; s += 512)
      for (long i = s; i < s + 512; i++)
        assert_true(buf1[i] == buf1[s] && (buf1[s] == 0 || buf1[s] == 'A' + s / 512));
  }
  assert_int_equal(f.io->close(f.io->ctx, fd), 0);
  fixture_done(&f);
}

/* With IOSIM_CUT_DIR_RANDOM an in-order prefix of the unsynced directory
 * changes survives: a later change never without an earlier one, and a
 * rename is never half done. */
static void test_dir_random_prefix(void **state)
{
  (void)state;
  fixture f;
  fixture_init(&f);
  durable_file(&f, "old", "o");
  int fd1 = create_file(&f, f.rootfd, "one");
  int fd2 = create_file(&f, f.rootfd, "two");
  assert_int_equal(f.io->rename(f.io->ctx, f.rootfd, "old", f.rootfd, "moved"), 0);
  int seen[4] = {0};
  for (uint64_t seed = 0; seed < 100; seed++) {
    cut(&f, seed, IOSIM_CUT_DROP | IOSIM_CUT_DIR_RANDOM);
    int one = exists(f.out, "one"), two = exists(f.out, "two");
    int moved = exists(f.out, "moved"), old = exists(f.out, "old");
    assert_true(moved != old);
    assert_true(one || !two);
    assert_true(two || !moved);
    seen[one + two + moved]++;
  }
  for (int i = 0; i < 4; i++)
    assert_true(seen[i] > 0);
  assert_int_equal(f.io->close(f.io->ctx, fd1), 0);
  assert_int_equal(f.io->close(f.io->ctx, fd2), 0);
  fixture_done(&f);
}

/* M1: with everything kept, a cut equals the real tree. */
static void test_keep_matches_real(void **state)
{
  (void)state;
  fixture f;
  fixture_init(&f);
  durable_file(&f, "a", "alpha");
  int fd = f.io->open(f.io->ctx, f.rootfd, "a", O_RDWR, 0);
  put(&f, fd, "ALPHA-beta", 3);
  assert_int_equal(f.io->ftruncate(f.io->ctx, fd, 9), 0);
  put(&f, fd, "z", 20);
  assert_int_equal(f.io->mkdir(f.io->ctx, f.rootfd, "d", 0755), 0);
  int fd2 = create_file(&f, f.rootfd, "d/x");
  put(&f, fd2, "xx", 0);
  assert_int_equal(f.io->fsync(f.io->ctx, f.rootfd), 0);
  int dfd = f.io->open(f.io->ctx, f.rootfd, "d", O_RDONLY | O_DIRECTORY, 0);
  assert_int_equal(f.io->fsync(f.io->ctx, dfd), 0);
  cut(&f, 9, IOSIM_CUT_KEEP);
  char a[64], b[64];
  long n = read_file(f.root, "a", a, sizeof a);
  assert_int_equal(n, 21);
  assert_int_equal(read_file(f.out, "a", b, sizeof b), n);
  assert_memory_equal(a, b, (size_t)n);
  assert_int_equal(read_file(f.out, "d/x", b, sizeof b), 2);
  assert_int_equal(f.io->close(f.io->ctx, fd), 0);
  assert_int_equal(f.io->close(f.io->ctx, fd2), 0);
  assert_int_equal(f.io->close(f.io->ctx, dfd), 0);
  fixture_done(&f);
}

/* ---------------------------------------------------------------------- */
/* Faults, crash points, hooks, the mutation knob */

static void test_fault_returns_errno(void **state)
{
  (void)state;
  fixture f;
  fixture_init(&f);
  uint64_t k = iosim_count(f.sim);
  assert_int_equal(iosim_fail_at(f.sim, k, EIO), 0);
  assert_int_equal(f.io->open(f.io->ctx, f.rootfd, "a", O_RDWR | O_CREAT, 0644), -EIO);
  assert_false(exists(f.root, "a")); /* not performed */
  assert_int_equal(iosim_faults_injected(f.sim), 1);
  assert_int_equal(iosim_first_fault(f.sim), k);
  assert_int_equal(iosim_fault_fired(f.sim, 0), k);
  assert_int_equal(iosim_fault_fired(f.sim, 1), UINT64_MAX);
  int fd = create_file(&f, f.rootfd, "a"); /* next op succeeds */

  /* The 2nd pwrite (by type) fails with ENOSPC, nothing written. */
  iosim_fault nth = {.kind = IOSIM_FAIL, .err = ENOSPC, .by_type = 1,
                     .op = LOOM_IO_PWRITE, .index = 1};
  assert_int_equal(iosim_fault_add(f.sim, &nth), 0);
  put(&f, fd, "0123", 0);
  assert_int_equal(f.io->pwrite(f.io->ctx, fd, "abcdefgh", 8, 4), -ENOSPC);
  char buf[32];
  assert_int_equal(read_file(f.root, "a", buf, sizeof buf), 4);

  /* A short write: the first half lands, the call fails. */
  assert_int_equal(iosim_short_write_at(f.sim, iosim_count(f.sim), EIO), 0);
  assert_int_equal(f.io->pwrite(f.io->ctx, fd, "abcdefgh", 8, 4), -EIO);
  assert_int_equal(read_file(f.root, "a", buf, sizeof buf), 8);
  assert_memory_equal(buf, "0123abcd", 8);
  /* ... and the model holds the prefix as an unsynced write. */
  assert_int_equal(f.io->fsync(f.io->ctx, fd), 0);
  assert_int_equal(f.io->fsync(f.io->ctx, f.rootfd), 0);
  cut(&f, 1, IOSIM_CUT_DROP);
  assert_int_equal(read_file(f.out, "a", buf, sizeof buf), 8);
  assert_memory_equal(buf, "0123abcd", 8);

  /* Failed fsync: nothing becomes durable. */
  put(&f, fd, "XXXX", 0);
  assert_int_equal(iosim_fail_at(f.sim, iosim_count(f.sim), EIO), 0);
  assert_int_equal(f.io->fsync(f.io->ctx, fd), -EIO);
  cut(&f, 1, IOSIM_CUT_DROP);
  assert_int_equal(read_file(f.out, "a", buf, sizeof buf), 8);
  assert_memory_equal(buf, "0123abcd", 8);

  /* Sticky: a full disk stays full. */
  iosim_fault full = {.kind = IOSIM_FAIL, .err = ENOSPC, .by_type = 1,
                      .op = LOOM_IO_FTRUNCATE, .index = 0, .sticky = 1};
  assert_int_equal(iosim_fault_add(f.sim, &full), 0);
  for (int i = 0; i < 3; i++)
    assert_int_equal(f.io->ftruncate(f.io->ctx, fd, 100), -ENOSPC);
  assert_int_equal(iosim_faults_injected(f.sim), 7);
  /* By path, counted from now: the 2nd fsync of "b" fails, whatever else
   * is fsynced in between. */
  int fb = create_file(&f, f.rootfd, "b");
  iosim_fault bypath = {.kind = IOSIM_FAIL, .err = EIO, .by_type = 1,
                        .op = LOOM_IO_FSYNC, .path = "b", .index = 1};
  assert_int_equal(iosim_fault_add(f.sim, &bypath), 0);
  assert_int_equal(f.io->fsync(f.io->ctx, fb), 0);
  assert_int_equal(f.io->fsync(f.io->ctx, fd), 0);
  assert_int_equal(f.io->fsync(f.io->ctx, fb), -EIO);
  assert_int_equal(f.io->fsync(f.io->ctx, fb), 0);
  assert_int_equal(f.io->close(f.io->ctx, fb), 0);
  assert_int_equal(iosim_faults_injected(f.sim), 8);
  /* Bad arguments. */
  iosim_fault bad = {.kind = IOSIM_FAIL, .err = 0};
  assert_int_equal(iosim_fault_add(f.sim, &bad), EINVAL);
  assert_int_equal(f.io->close(f.io->ctx, fd), 0);
  fixture_done(&f);
}

static void test_kill_before(void **state)
{
  (void)state;
  fixture f;
  fixture_init(&f);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    iosim_kill_before(f.sim, 3);
    int fd = f.io->open(f.io->ctx, f.rootfd, "a", O_RDWR | O_CREAT, 0644); /* 1 */
    f.io->pwrite(f.io->ctx, fd, "x", 1, 0);                               /* 2 */
    f.io->pwrite(f.io->ctx, fd, "y", 1, 1);                               /* 3 */
    _exit(0);
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFSIGNALED(status));
  assert_int_equal(WTERMSIG(status), SIGKILL);
  char buf[8];
  assert_int_equal(read_file(f.root, "a", buf, sizeof buf), 1);
  assert_int_equal(buf[0], 'x');
  fixture_done(&f);
}

typedef struct hook_log {
  uint64_t calls;
  uint64_t last;
  loom_io_op last_op;
  fixture *f;
  int cut_done;
} hook_log;

static void record_hook(void *ctx, iosim *sim, uint64_t k, loom_io_op op)
{
  hook_log *log = ctx;
  log->calls++;
  log->last = k;
  log->last_op = op;
  if (op == LOOM_IO_FSYNC && !log->cut_done) {
    /* A cut right before the fsync runs: the write is not durable yet. */
    snprintf(log->f->out, sizeof log->f->out, "%s/hookcut", log->f->base);
    assert_int_equal(iosim_powercut(sim, 5, log->f->out, IOSIM_CUT_DROP), 0);
    log->cut_done = 1;
  }
}

static void test_hook(void **state)
{
  (void)state;
  fixture f;
  fixture_init(&f);
  durable_file(&f, "a", "old");
  hook_log log = {.f = &f};
  iosim_hook_set(f.sim, record_hook, &log);
  uint64_t k = iosim_count(f.sim);
  int fd = f.io->open(f.io->ctx, f.rootfd, "a", O_RDWR, 0);
  put(&f, fd, "new", 0);
  assert_int_equal(f.io->fsync(f.io->ctx, fd), 0);
  assert_int_equal(log.calls, 3);
  assert_int_equal(log.last, k + 2);
  assert_int_equal(log.last_op, LOOM_IO_FSYNC);
  char buf[8];
  assert_int_equal(read_file(f.out, "a", buf, sizeof buf), 3);
  assert_memory_equal(buf, "old", 3);
  iosim_hook_set(f.sim, NULL, NULL);
  assert_int_equal(f.io->close(f.io->ctx, fd), 0);
  fixture_done(&f);
}

static void test_drop_fsync_knob(void **state)
{
  (void)state;
  assert_int_equal(setenv("LOOM_IOSIM_DROP_FSYNC", "1", 1), 0);
  fixture f;
  fixture_init(&f);
  assert_int_equal(unsetenv("LOOM_IOSIM_DROP_FSYNC"), 0);
  int fd = create_file(&f, f.rootfd, "a");
  assert_int_equal(f.io->fsync(f.io->ctx, f.rootfd), 0); /* fsync #0 */
  put(&f, fd, "data", 0);
  assert_int_equal(f.io->fsync(f.io->ctx, fd), 0);       /* #1: dropped */
  int reached = 0;
  char path[64];
  assert_int_equal(iosim_dropped_fsync(f.sim, &reached, path, sizeof path), 1);
  assert_true(reached);
  assert_string_equal(path, "a");
  char buf[8];
  cut(&f, 1, IOSIM_CUT_DROP);
  assert_int_equal(read_file(f.out, "a", buf, sizeof buf), 0);
  assert_int_equal(f.io->fsync(f.io->ctx, fd), 0);       /* #2: real */
  cut(&f, 1, IOSIM_CUT_DROP);
  assert_int_equal(read_file(f.out, "a", buf, sizeof buf), 4);
  assert_int_equal(f.io->close(f.io->ctx, fd), 0);
  fixture_done(&f);
}

/* The tree present at creation is durable, including subdirectories. */
static void test_existing_tree_is_durable(void **state)
{
  (void)state;
  char base[64];
  snprintf(base, sizeof base, "/tmp/iosim-test-XXXXXX");
  assert_non_null(mkdtemp(base));
  char path[128];
  snprintf(path, sizeof path, "%s/root", base);
  assert_int_equal(mkdir(path, 0755), 0);
  snprintf(path, sizeof path, "%s/root/sub", base);
  assert_int_equal(mkdir(path, 0755), 0);
  snprintf(path, sizeof path, "%s/root/sub/f", base);
  FILE *fp = fopen(path, "w");
  assert_non_null(fp);
  fputs("content", fp);
  fclose(fp);
  snprintf(path, sizeof path, "%s/root", base);
  iosim *sim;
  assert_int_equal(iosim_create(path, &sim), 0);
  snprintf(path, sizeof path, "%s/out", base);
  assert_int_equal(iosim_powercut(sim, 1, path, IOSIM_CUT_DROP), 0);
  assert_int_equal(iosim_powercut(sim, 1, path, IOSIM_CUT_DROP), EEXIST);
  char buf[16];
  assert_int_equal(read_file(path, "sub/f", buf, sizeof buf), 7);
  assert_memory_equal(buf, "content", 7);
  iosim_destroy(sim);
  /* Without a root there is nothing to cut. */
  assert_int_equal(iosim_create(NULL, &sim), 0);
  snprintf(path, sizeof path, "%s/out2", base);
  assert_int_equal(iosim_powercut(sim, 1, path, IOSIM_CUT_DROP), EINVAL);
  iosim_destroy(sim);
  assert_int_equal(test_remove_tree(base), 0);
}

/* A directory made with mkdir(2) and opened with open(2), not through the
 * simulator (as the engine's store_open does), is adopted as durable, and
 * fsync through a descriptor the simulator never saw still counts. */
static void test_foreign_directory_adopted(void **state)
{
  (void)state;
  fixture f;
  fixture_init(&f);
  char img[160];
  snprintf(img, sizeof img, "%s/img", f.root);
  assert_int_equal(mkdir(img, 0755), 0);
  int dfd = open(img, O_RDONLY | O_DIRECTORY);
  assert_true(dfd >= 0);
  int fd = f.io->open(f.io->ctx, dfd, "meta", O_RDWR | O_CREAT, 0644);
  assert_true(fd >= 0);
  assert_int_equal(iosim_adopted(f.sim), 1);
  put(&f, fd, "slot", 0);
  assert_int_equal(f.io->fsync(f.io->ctx, fd), 0);
  cut(&f, 1, IOSIM_CUT_KEEP);
  assert_true(exists(f.out, "img"));
  assert_false(exists(f.out, "img/meta"));
  assert_int_equal(f.io->fsync(f.io->ctx, dfd), 0); /* fd unknown to the sim */
  cut(&f, 1, IOSIM_CUT_DROP);
  char buf[8];
  assert_int_equal(read_file(f.out, "img/meta", buf, sizeof buf), 4);
  loom_io_op op;
  char path[64];
  assert_int_equal(iosim_trace_op(f.sim, iosim_count(f.sim) - 1, &op, path, sizeof path), 0);
  assert_int_equal(op, LOOM_IO_FSYNC);
  assert_string_equal(path, "img");
  assert_int_equal(f.io->close(f.io->ctx, fd), 0);
  close(dfd);
  fixture_done(&f);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_counting),
    cmocka_unit_test(test_untracked_passthrough),
    cmocka_unit_test(test_unsynced_write_dropped),
    cmocka_unit_test(test_fsync_keeps),
    cmocka_unit_test(test_unsynced_create_rolled_back),
    cmocka_unit_test(test_rename_rolled_back),
    cmocka_unit_test(test_directory_rename),
    cmocka_unit_test(test_truncate),
    cmocka_unit_test(test_torn_write_512),
    cmocka_unit_test(test_torn_write_4k),
    cmocka_unit_test(test_cut_reproducible),
    cmocka_unit_test(test_dir_random_prefix),
    cmocka_unit_test(test_keep_matches_real),
    cmocka_unit_test(test_fault_returns_errno),
    cmocka_unit_test(test_kill_before),
    cmocka_unit_test(test_hook),
    cmocka_unit_test(test_drop_fsync_knob),
    cmocka_unit_test(test_existing_tree_is_durable),
    cmocka_unit_test(test_foreign_directory_adopted),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
