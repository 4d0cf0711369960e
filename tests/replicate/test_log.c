/*
 * test_log.c: the replication log: append, read back, reopen, torn tails,
 * damage, retention, the byte cap, and I/O faults injected through a
 * loom_io wrapper.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "loom_io.h"
#include "replicate_testlib.h"

/* ---------------------------------------------------------------------- */
/* A loom_io that counts operations and fails the one we choose. */

typedef struct fault_io {
  loom_io io;
  const loom_io *base;
  int fail_at[LOOM_IO_OP_COUNT];    /* calls to let pass before failing; -1 */
  int fail_errno[LOOM_IO_OP_COUNT];
  bool short_write;                 /* a failing pwrite writes half first */
  int counts[LOOM_IO_OP_COUNT];
  int dir_fsyncs;                   /* fsyncs of directories */
  /* The next fsync of a file blocks until released (fio_release). */
  pthread_mutex_t gate;
  pthread_cond_t gate_cond;
  bool block_next, blocked, released;
  int blocked_fd;
} fault_io;

static bool should_fail(fault_io *f, loom_io_op op, int *err)
{
  f->counts[op]++;
  if (f->fail_at[op] < 0) return false;
  if (f->fail_at[op]-- != 0) return false;
  *err = f->fail_errno[op];
  return true;
}

static int fio_open(void *ctx, int dirfd, const char *name, int flags, mode_t mode)
{
  fault_io *f = ctx;
  int err;
  if (should_fail(f, LOOM_IO_OPEN, &err)) return -err;
  return f->base->open(f->base->ctx, dirfd, name, flags, mode);
}
static ssize_t fio_pread(void *ctx, int fd, void *buf, size_t len, off_t off)
{
  fault_io *f = ctx;
  int err;
  if (should_fail(f, LOOM_IO_PREAD, &err)) return -err;
  return f->base->pread(f->base->ctx, fd, buf, len, off);
}
static ssize_t fio_pwrite(void *ctx, int fd, const void *buf, size_t len, off_t off)
{
  fault_io *f = ctx;
  int err;
  if (should_fail(f, LOOM_IO_PWRITE, &err)) {
    if (f->short_write && len > 1)
      f->base->pwrite(f->base->ctx, fd, buf, len / 2, off);
    return -err;
  }
  return f->base->pwrite(f->base->ctx, fd, buf, len, off);
}
static int fio_fsync(void *ctx, int fd)
{
  fault_io *f = ctx;
  struct stat st;
  if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) f->dir_fsyncs++;
  int err;
  if (should_fail(f, LOOM_IO_FSYNC, &err)) return -err;
  pthread_mutex_lock(&f->gate);
  if (f->block_next && !S_ISDIR(st.st_mode)) {
    f->block_next = false;
    f->blocked = true;
    f->blocked_fd = fd;
    pthread_cond_broadcast(&f->gate_cond);
    while (!f->released) pthread_cond_wait(&f->gate_cond, &f->gate);
  }
  pthread_mutex_unlock(&f->gate);
  return f->base->fsync(f->base->ctx, fd);
}
static int fio_ftruncate(void *ctx, int fd, off_t len)
{
  fault_io *f = ctx;
  int err;
  if (should_fail(f, LOOM_IO_FTRUNCATE, &err)) return -err;
  return f->base->ftruncate(f->base->ctx, fd, len);
}
static int fio_rename(void *ctx, int a, const char *b, int c, const char *d)
{
  fault_io *f = ctx;
  int err;
  if (should_fail(f, LOOM_IO_RENAME, &err)) return -err;
  return f->base->rename(f->base->ctx, a, b, c, d);
}
static int fio_unlink(void *ctx, int dirfd, const char *name, int flags)
{
  fault_io *f = ctx;
  int err;
  if (should_fail(f, LOOM_IO_UNLINK, &err)) return -err;
  return f->base->unlink(f->base->ctx, dirfd, name, flags);
}
static int fio_close(void *ctx, int fd)
{
  fault_io *f = ctx;
  int err;
  if (should_fail(f, LOOM_IO_CLOSE, &err)) return -err;
  return f->base->close(f->base->ctx, fd);
}
static int fio_mkdir(void *ctx, int dirfd, const char *name, mode_t mode)
{
  fault_io *f = ctx;
  int err;
  if (should_fail(f, LOOM_IO_MKDIR, &err)) return -err;
  return f->base->mkdir(f->base->ctx, dirfd, name, mode);
}

static void fault_io_init(fault_io *f)
{
  memset(f, 0, sizeof *f);
  pthread_mutex_init(&f->gate, NULL);
  pthread_cond_init(&f->gate_cond, NULL);
  f->base = loom_io_posix();
  for (int op = 0; op < LOOM_IO_OP_COUNT; op++) f->fail_at[op] = -1;
  f->io = (loom_io){f, fio_open, fio_pread, fio_pwrite, fio_fsync,
                    fio_ftruncate, fio_rename, fio_unlink, fio_close, fio_mkdir,
                    NULL, NULL};
}

/* Fail the op's call after `countdown` more calls pass, with err. */
static void fault_arm(fault_io *f, loom_io_op op, int countdown, int err)
{
  f->fail_at[op] = countdown;
  f->fail_errno[op] = err;
}

/* ---------------------------------------------------------------------- */
/* Fixtures: a temporary image directory and a chain of small frames. */

typedef struct fixture {
  char dir[64];
  char replog[96];
  replicate_buf *frames; /* frames[i] has seq i + 1 */
  size_t count;
} fixture;

static void make_frames(fixture *fx, size_t count, uint64_t epoch)
{
  test_rng r = {count};
  model m;
  model_init(&m, epoch, 0, 0);
  model_fill_random(&m, 4, &r);
  replicate_encoder *enc;
  assert_int_equal(replicate_encoder_new(1, &enc), 0);
  fx->frames = xcalloc(count * sizeof *fx->frames);
  fx->count = count;
  uint64_t nums[1];
  uint8_t *news = xmalloc(PS);
  for (size_t i = 0; i < count; i++) {
    uint64_t after;
    workload_make(&m, WL_SPARSE, 1, &r, nums, news, &after);
    nums[0] = i % 4;
    memcpy(news, model_page(&m, nums[0]), PS);
    for (int k = 0; k < 64; k++) news[rng_below(&r, PS)] ^= 0x11;
    assert_int_equal(model_commit(&m, enc, after, 1, nums, news, &fx->frames[i]), 0);
  }
  free(news);
  replicate_encoder_free(enc);
  model_free(&m);
}

static int setup(void **state)
{
  fixture *fx = xcalloc(sizeof *fx);
  strcpy(fx->dir, "/tmp/replog-test-XXXXXX");
  if (mkdtemp(fx->dir) == NULL) return -1;
  snprintf(fx->replog, sizeof fx->replog, "%s/replog", fx->dir);
  make_frames(fx, 200, 1);
  *state = fx;
  return 0;
}

static int teardown(void **state)
{
  fixture *fx = *state;
  test_remove_tree(fx->dir);
  for (size_t i = 0; i < fx->count; i++) replicate_buf_free(&fx->frames[i]);
  free(fx->frames);
  free(fx);
  return 0;
}

static int append_range(replicate_log *log, fixture *fx, uint64_t from_seq,
                        uint64_t to_seq)
{
  for (uint64_t s = from_seq; s <= to_seq; s++) {
    int rc = replicate_log_append(log, fx->frames[s - 1].data, fx->frames[s - 1].len);
    if (rc != 0) return rc;
  }
  return 0;
}

static void expect_frame(replicate_log *log, fixture *fx, uint64_t seq)
{
  replicate_buf buf = {0};
  int rc = replicate_log_read(log, seq, &buf);
  if (rc != 0) fail_msg("read %" PRIu64 ": %s", seq, replicate_strerror(rc));
  assert_int_equal(buf.len, fx->frames[seq - 1].len);
  assert_memory_equal(buf.data, fx->frames[seq - 1].data, buf.len);
  replicate_buf_free(&buf);
}

static int read_code(replicate_log *log, uint64_t seq)
{
  replicate_buf buf = {0};
  int rc = replicate_log_read(log, seq, &buf);
  replicate_buf_free(&buf);
  return rc;
}

/* The segment files, sorted; returns how many (at most max). */
static int list_segments(fixture *fx, char names[][64], int max)
{
  DIR *d = opendir(fx->replog);
  assert_non_null(d);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL)
    if (strncmp(e->d_name, "seg-", 4) == 0 && n < max &&
        strlen(e->d_name) < 64)
      memcpy(names[n++], e->d_name, strlen(e->d_name) + 1);
  closedir(d);
  qsort(names, (size_t)n, 64, (int (*)(const void *, const void *))strcmp);
  return n;
}

static off_t file_size(fixture *fx, const char *name)
{
  char path[256];
  join_path(path, sizeof path, fx->replog, name);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  return st.st_size;
}

static void file_truncate(fixture *fx, const char *name, off_t len)
{
  char path[256];
  join_path(path, sizeof path, fx->replog, name);
  assert_int_equal(truncate(path, len), 0);
}

static void file_write(fixture *fx, const char *name, off_t off,
                       const void *buf, size_t len)
{
  char path[256];
  join_path(path, sizeof path, fx->replog, name);
  int fd = open(path, O_WRONLY | O_CREAT, 0644);
  assert_true(fd >= 0);
  assert_int_equal(pwrite(fd, buf, len, off), (ssize_t)len);
  close(fd);
}

static void file_flip(fixture *fx, const char *name, off_t off)
{
  char path[256];
  join_path(path, sizeof path, fx->replog, name);
  int fd = open(path, O_RDWR);
  assert_true(fd >= 0);
  uint8_t b;
  assert_int_equal(pread(fd, &b, 1, off), 1);
  b ^= 0x40;
  assert_int_equal(pwrite(fd, &b, 1, off), 1);
  close(fd);
}

static void expect_range(replicate_log *log, uint64_t oldest, uint64_t newest)
{
  replicate_log_stats st;
  replicate_log_get_stats(log, &st);
  if (st.oldest_seq != oldest || st.newest_seq != newest)
    fail_msg("log holds [%" PRIu64 ", %" PRIu64 "], expected [%" PRIu64
             ", %" PRIu64 "]", st.oldest_seq, st.newest_seq, oldest, newest);
}

/* ---------------------------------------------------------------------- */

static void test_append_read_reopen(void **state)
{
  fixture *fx = *state;
  replicate_log *log;
  assert_int_equal(replicate_log_open(fx->dir, NULL, NULL, &log), 0);
  replicate_log_stats st;
  replicate_log_get_stats(log, &st);
  assert_int_equal(st.records, 0);
  assert_int_equal(st.newest_seq, 0);
  assert_int_equal(read_code(log, 1), REPLICATE_ELOG_AHEAD);

  assert_int_equal(append_range(log, fx, 1, 50), 0);
  replicate_log_get_stats(log, &st);
  assert_int_equal(st.records, 50);
  assert_int_equal(st.oldest_seq, 1);
  assert_int_equal(st.newest_seq, 50);
  assert_int_equal(st.newest_epoch, 1);
  assert_int_equal(st.segments, 1);
  for (uint64_t s = 1; s <= 50; s++) expect_frame(log, fx, s);
  assert_int_equal(read_code(log, 51), REPLICATE_ELOG_AHEAD);
  assert_int_equal(read_code(log, 0), REPLICATE_ELOG_GONE);
  uint64_t bytes;
  assert_int_equal(replicate_log_bytes_after(log, 50, &bytes), 0);
  assert_int_equal(bytes, 0);
  assert_int_equal(replicate_log_bytes_after(log, 49, &bytes), 0);
  assert_int_equal(bytes, 32 + fx->frames[49].len);
  assert_int_equal(replicate_log_close(log), 0);

  assert_int_equal(replicate_log_open(fx->dir, NULL, NULL, &log), 0);
  expect_range(log, 1, 50);
  /* Iterate from the middle to the end, then catch up with appends. */
  replicate_log_iter it;
  replicate_log_iter_init(&it, log, 20);
  replicate_buf buf = {0};
  uint64_t seq = 20;
  int rc;
  while ((rc = replicate_log_iter_next(&it, &buf)) == 0) {
    assert_memory_equal(buf.data, fx->frames[seq - 1].data, buf.len);
    seq++;
  }
  assert_int_equal(rc, REPLICATE_ELOG_AHEAD);
  assert_int_equal(seq, 51);
  assert_int_equal(append_range(log, fx, 51, 60), 0);
  while ((rc = replicate_log_iter_next(&it, &buf)) == 0) seq++;
  assert_int_equal(rc, REPLICATE_ELOG_AHEAD);
  assert_int_equal(seq, 61);
  replicate_buf_free(&buf);
  assert_int_equal(replicate_log_close(log), 0);
}

static void test_segments(void **state)
{
  fixture *fx = *state;
  replicate_log_options opt = {.segment_bytes = 2048};
  replicate_log *log;
  assert_int_equal(replicate_log_open(fx->dir, &opt, NULL, &log), 0);
  assert_int_equal(append_range(log, fx, 1, 120), 0);
  replicate_log_stats st;
  replicate_log_get_stats(log, &st);
  char names[256][64];
  int files = list_segments(fx, names, 256);
  assert_true(st.segments > 10);
  assert_int_equal(files, (int)st.segments);
  /* No segment grows past the limit (each holds at least one record). */
  uint64_t total = 0;
  for (int i = 0; i < files; i++) {
    assert_true(file_size(fx, names[i]) <= 2048);
    total += (uint64_t)file_size(fx, names[i]);
  }
  assert_int_equal(total, st.bytes);
  assert_string_equal(names[0], "seg-00000000000000000001.log");
  assert_int_equal(replicate_log_close(log), 0);
  assert_int_equal(replicate_log_open(fx->dir, &opt, NULL, &log), 0);
  expect_range(log, 1, 120);
  for (uint64_t s = 1; s <= 120; s++) expect_frame(log, fx, s);
  assert_int_equal(append_range(log, fx, 121, 130), 0);
  expect_frame(log, fx, 130);
  assert_int_equal(replicate_log_close(log), 0);
}

/* Cut the newest segment at every length within its last record: the log
 * comes back at the record before, and appending resumes from there. */
static void test_torn_tail(void **state)
{
  fixture *fx = *state;
  replicate_log *log;
  assert_int_equal(replicate_log_open(fx->dir, NULL, NULL, &log), 0);
  assert_int_equal(append_range(log, fx, 1, 10), 0);
  assert_int_equal(replicate_log_close(log), 0);
  char names[4][64];
  assert_int_equal(list_segments(fx, names, 4), 1);
  off_t full = file_size(fx, names[0]);
  off_t last = 32 + (off_t)fx->frames[9].len;
  for (off_t cut = 1; cut <= last; cut += cut < 40 ? 1 : 97) {
    file_truncate(fx, names[0], full - cut);
    assert_int_equal(replicate_log_open(fx->dir, NULL, NULL, &log), 0);
    expect_range(log, 1, 9);
    assert_int_equal(file_size(fx, names[0]), full - last);
    assert_int_equal(append_range(log, fx, 10, 10), 0);
    expect_frame(log, fx, 10);
    assert_int_equal(replicate_log_close(log), 0);
    assert_int_equal(file_size(fx, names[0]), full);
  }
  /* Garbage after the last record (a record's first bytes, or noise). */
  uint8_t junk[100];
  memset(junk, 0xee, sizeof junk);
  memcpy(junk, "LSRC", 4);
  file_write(fx, names[0], full, junk, sizeof junk);
  assert_int_equal(replicate_log_open(fx->dir, NULL, NULL, &log), 0);
  expect_range(log, 1, 10);
  assert_int_equal(file_size(fx, names[0]), full);
  assert_int_equal(replicate_log_close(log), 0);
  /* The last record damaged (a torn write that reached its full length). */
  file_flip(fx, names[0], full - 5);
  assert_int_equal(replicate_log_open(fx->dir, NULL, NULL, &log), 0);
  expect_range(log, 1, 9);
  assert_int_equal(replicate_log_close(log), 0);
}

/* A crash while creating a segment: its header is torn; it is removed. A
 * segment created but never written to is kept and used. */
static void test_torn_segment(void **state)
{
  fixture *fx = *state;
  replicate_log_options opt = {.segment_bytes = 1024};
  replicate_log *log;
  assert_int_equal(replicate_log_open(fx->dir, &opt, NULL, &log), 0);
  assert_int_equal(append_range(log, fx, 1, 20), 0);
  assert_int_equal(replicate_log_close(log), 0);
  char names[64][64];
  int before = list_segments(fx, names, 64);

  char torn[64];
  snprintf(torn, sizeof torn, "seg-%020d.log", 21);
  file_write(fx, torn, 0, "LSREPLOG\x01\x00", 10);
  assert_int_equal(replicate_log_open(fx->dir, &opt, NULL, &log), 0);
  expect_range(log, 1, 20);
  assert_int_equal(list_segments(fx, names, 64), before);
  /* Now a whole header, but no record: the segment stays and is used. */
  assert_int_equal(replicate_log_close(log), 0);
  uint8_t h[32];
  memcpy(h, "LSREPLOG", 8);
  forge_le(h + 8, 1, 4);
  forge_le(h + 12, 0, 4);
  forge_le(h + 16, 21, 8);
  forge_le(h + 24, XXH3_64bits(h, 24), 8);
  file_write(fx, torn, 0, h, sizeof h);
  assert_int_equal(replicate_log_open(fx->dir, &opt, NULL, &log), 0);
  expect_range(log, 1, 20);
  assert_int_equal(list_segments(fx, names, 64), before + 1);
  assert_int_equal(append_range(log, fx, 21, 21), 0);
  assert_int_equal(list_segments(fx, names, 64), before + 1);
  expect_frame(log, fx, 21);
  assert_int_equal(replicate_log_close(log), 0);
  /* A header of an unknown version is not taken for a torn one. */
  forge_le(h + 8, 2, 4);
  forge_le(h + 16, 22, 8);
  forge_le(h + 24, XXH3_64bits(h, 24), 8);
  snprintf(torn, sizeof torn, "seg-%020d.log", 22);
  file_write(fx, torn, 0, h, sizeof h);
  assert_int_equal(replicate_log_open(fx->dir, &opt, NULL, &log),
                   REPLICATE_ELOG_VERSION);
}

/* The repairs an open reported. */
typedef struct repairs {
  int n;
  replicate_log_repair_kind kind[16];
  char file[16][64];
  uint64_t first[16], last[16];
} repairs;

static void note_repair(void *ctx, const replicate_log_repair *r)
{
  repairs *rs = ctx;
  char line[256];
  assert_non_null(replicate_log_repair_describe(r, line, sizeof line));
  assert_non_null(strstr(line, r->file)); /* the sentence names the file */
  if (rs->n == 16) return;
  rs->kind[rs->n] = r->kind;
  snprintf(rs->file[rs->n], 64, "%s", r->file);
  rs->first[rs->n] = r->first_seq;
  rs->last[rs->n] = r->last_seq;
  rs->n++;
}

/* Options that collect the repairs into rs. */
static replicate_log_options repair_options(repairs *rs, uint64_t segment_bytes)
{
  return (replicate_log_options){.segment_bytes = segment_bytes,
                                 .on_repair = note_repair, .repair_ctx = rs};
}

/* Report i was of kind, about file (unless NULL), for seqs first-last. */
static void expect_repair(const repairs *rs, int i, replicate_log_repair_kind kind,
                          const char *file, uint64_t first, uint64_t last)
{
  assert_true(i < rs->n);
  assert_int_equal(rs->kind[i], kind);
  if (file != NULL) assert_string_equal(rs->file[i], file);
  assert_int_equal(rs->first[i], first);
  assert_int_equal(rs->last[i], last);
}

static uint64_t first_seq_of(const char *name)
{
  uint64_t seq = 0;
  assert_int_equal(sscanf(name, "seg-%" SCNu64 ".log", &seq), 1);
  return seq;
}

/* 30 records in several small segments, closed; names[] gets the files. */
static int make_segmented(fixture *fx, replicate_log_options *opt,
                          char names[][64])
{
  replicate_log *log;
  assert_int_equal(replicate_log_open(fx->dir, opt, NULL, &log), 0);
  assert_int_equal(append_range(log, fx, 1, 30), 0);
  assert_int_equal(replicate_log_close(log), 0);
  int n = list_segments(fx, names, 64);
  assert_true(n >= 4);
  return n;
}

static bool file_exists(fixture *fx, const char *name)
{
  char path[256];
  join_path(path, sizeof path, fx->replog, name);
  return access(path, F_OK) == 0;
}

/* A damaged record in an older segment: that segment and every older one
 * are removed (and reported), the chain from the next segment on is kept,
 * a read of a removed seq says ELOG_GONE (a base image), appends go on. */
static void test_damaged_older_record(void **state)
{
  fixture *fx = *state;
  repairs rs = {0};
  replicate_log_options opt = repair_options(&rs, 1024);
  char names[64][64];
  int n = make_segmented(fx, &opt, names);
  uint64_t second = first_seq_of(names[1]), third = first_seq_of(names[2]);
  file_flip(fx, names[1], 32 + 40);
  replicate_log *log;
  assert_int_equal(replicate_log_open(fx->dir, &opt, NULL, &log), 0);
  expect_range(log, third, 30);
  assert_int_equal(rs.n, 2);
  expect_repair(&rs, 0, REPLICATE_LOG_UNCHAINED, names[0], 1, second - 1);
  expect_repair(&rs, 1, REPLICATE_LOG_DAMAGED, names[1], second, third - 1);
  assert_false(file_exists(fx, names[0]));
  assert_false(file_exists(fx, names[1]));
  assert_int_equal(list_segments(fx, names, 64), n - 2);
  assert_int_equal(read_code(log, second), REPLICATE_ELOG_GONE);
  for (uint64_t s = third; s <= 30; s++) expect_frame(log, fx, s);
  assert_int_equal(append_range(log, fx, 31, 32), 0);
  assert_int_equal(replicate_log_close(log), 0);
  /* Repaired for good: the next open finds nothing to report. */
  rs.n = 0;
  assert_int_equal(replicate_log_open(fx->dir, &opt, NULL, &log), 0);
  expect_range(log, third, 32);
  assert_int_equal(rs.n, 0);
  assert_int_equal(replicate_log_close(log), 0);
}

/* The oldest segment's header damaged: it alone goes. */
static void test_damaged_older_header(void **state)
{
  fixture *fx = *state;
  repairs rs = {0};
  replicate_log_options opt = repair_options(&rs, 1024);
  char names[64][64];
  make_segmented(fx, &opt, names);
  uint64_t second = first_seq_of(names[1]);
  file_flip(fx, names[0], 3);
  replicate_log *log;
  assert_int_equal(replicate_log_open(fx->dir, &opt, NULL, &log), 0);
  expect_range(log, second, 30);
  assert_int_equal(rs.n, 1);
  expect_repair(&rs, 0, REPLICATE_LOG_DAMAGED, names[0], 1, second - 1);
  assert_int_equal(replicate_log_close(log), 0);
}

/* A missing segment in the middle breaks the chain: the older side goes. */
static void test_missing_segment(void **state)
{
  fixture *fx = *state;
  repairs rs = {0};
  replicate_log_options opt = repair_options(&rs, 1024);
  char names[64][64];
  make_segmented(fx, &opt, names);
  uint64_t third = first_seq_of(names[2]);
  char path[256];
  join_path(path, sizeof path, fx->replog, names[1]);
  assert_int_equal(unlink(path), 0);
  replicate_log *log;
  assert_int_equal(replicate_log_open(fx->dir, &opt, NULL, &log), 0);
  expect_range(log, third, 30);
  assert_int_equal(rs.n, 1);
  expect_repair(&rs, 0, REPLICATE_LOG_UNCHAINED, names[0], 1,
                first_seq_of(names[1]) - 1);
  assert_false(file_exists(fx, names[0]));
  assert_int_equal(read_code(log, 1), REPLICATE_ELOG_GONE);
  assert_int_equal(replicate_log_close(log), 0);
}

/* Damage in the middle of the newest segment (not its tail): the log is
 * cut to the last good record before it, and appends resume there. */
static void test_damaged_newest_middle(void **state)
{
  fixture *fx = *state;
  repairs rs = {0};
  replicate_log_options opt = repair_options(&rs, 1 << 20);
  replicate_log *log;
  assert_int_equal(replicate_log_open(fx->dir, &opt, NULL, &log), 0);
  assert_int_equal(append_range(log, fx, 1, 10), 0);
  assert_int_equal(replicate_log_close(log), 0);
  char names[4][64];
  assert_int_equal(list_segments(fx, names, 4), 1);
  off_t at = 32; /* record 4's header */
  for (int i = 0; i < 3; i++) at += 32 + (off_t)fx->frames[i].len;
  file_flip(fx, names[0], at + 40);
  assert_int_equal(replicate_log_open(fx->dir, &opt, NULL, &log), 0);
  expect_range(log, 1, 3);
  assert_int_equal(rs.n, 1);
  expect_repair(&rs, 0, REPLICATE_LOG_CUT, names[0], 4, 0);
  assert_int_equal(file_size(fx, names[0]), at);
  assert_int_equal(append_range(log, fx, 4, 5), 0);
  expect_frame(log, fx, 5);
  assert_int_equal(replicate_log_close(log), 0);
}

/* An epoch that goes down from one segment to the next breaks the chain. */
static void test_epoch_break(void **state)
{
  fixture *fx = *state;
  repairs rs = {0};
  replicate_log_options opt = repair_options(&rs, 1024);
  fixture later = {0};
  make_frames(&later, 12, 3); /* seqs 1..12 at epoch 3 */
  replicate_log *log;
  assert_int_equal(replicate_log_open(fx->dir, &opt, NULL, &log), 0);
  for (int i = 0; i < 6; i++)
    assert_int_equal(replicate_log_append(log, later.frames[i].data,
                                          later.frames[i].len), 0);
  assert_int_equal(replicate_log_close(log), 0);
  /* A segment at epoch 1 that claims to continue it. */
  fixture other = {0};
  strcpy(other.dir, "/tmp/replog-other-XXXXXX");
  assert_non_null(mkdtemp(other.dir));
  snprintf(other.replog, sizeof other.replog, "%s/replog", other.dir);
  assert_int_equal(replicate_log_open(other.dir, &opt, NULL, &log), 0);
  assert_int_equal(append_range(log, fx, 7, 9), 0);
  assert_int_equal(replicate_log_close(log), 0);
  char names[64][64], src[256], dst[256];
  int moved = list_segments(&other, names, 64);
  for (int i = 0; i < moved; i++) {
    join_path(src, sizeof src, other.replog, names[i]);
    join_path(dst, sizeof dst, fx->replog, names[i]);
    assert_int_equal(rename(src, dst), 0);
  }
  rs.n = 0;
  assert_int_equal(replicate_log_open(fx->dir, &opt, NULL, &log), 0);
  expect_range(log, 7, 9);
  assert_true(rs.n >= 1);
  expect_repair(&rs, rs.n - 1, REPLICATE_LOG_UNCHAINED, NULL, rs.first[rs.n - 1], 6);
  expect_repair(&rs, 0, REPLICATE_LOG_UNCHAINED, NULL, 1, rs.last[0]);
  assert_int_equal(replicate_log_close(log), 0);
  test_remove_tree(other.dir);
  for (size_t i = 0; i < later.count; i++) replicate_buf_free(&later.frames[i]);
  free(later.frames);
}

/* Damage found while reading (after open) is reported as corruption. */
static void test_corrupt_read(void **state)
{
  fixture *fx = *state;
  replicate_log_options opt = {.segment_bytes = 1024};
  char names[64][64];
  make_segmented(fx, &opt, names);
  replicate_log *log;
  assert_int_equal(replicate_log_open(fx->dir, &opt, NULL, &log), 0);
  expect_range(log, 1, 30);
  file_flip(fx, names[1], 32 + 40);
  assert_int_equal(read_code(log, first_seq_of(names[1])), REPLICATE_ELOG_CORRUPT);
  assert_int_equal(replicate_log_close(log), 0);
}

/* The archive's floor: retention keeps every frame from the held seq
 * whatever the standbys acknowledged; lifted, the next retention drops. */
static void test_retention_hold(void **state)
{
  fixture *fx = *state;
  replicate_log_options opt = {.segment_bytes = 2048};
  replicate_log *log;
  assert_int_equal(replicate_log_open(fx->dir, &opt, NULL, &log), 0);
  assert_int_equal(append_range(log, fx, 1, 100), 0);
  assert_int_equal(replicate_log_held_from(log), 0);
  replicate_log_hold(log, 20);
  assert_int_equal(replicate_log_held_from(log), 20);
  assert_int_equal(replicate_log_retain(log, 101), 0);
  replicate_log_stats st;
  replicate_log_get_stats(log, &st);
  assert_true(st.oldest_seq > 1 && st.oldest_seq <= 20);
  for (uint64_t s = 20; s <= 100; s++) expect_frame(log, fx, s);
  replicate_log_hold(log, 0);
  assert_int_equal(replicate_log_held_from(log), 0);
  assert_int_equal(replicate_log_retain(log, 101), 0);
  replicate_log_get_stats(log, &st);
  assert_int_equal(st.segments, 1);
  assert_true(st.oldest_seq > 20);
  assert_int_equal(replicate_log_close(log), 0);
}

static void test_retention(void **state)
{
  fixture *fx = *state;
  replicate_log_options opt = {.segment_bytes = 2048};
  replicate_log *log;
  assert_int_equal(replicate_log_open(fx->dir, &opt, NULL, &log), 0);
  assert_int_equal(append_range(log, fx, 1, 100), 0);
  replicate_log_stats st;
  replicate_log_get_stats(log, &st);
  uint64_t segments = st.segments;

  /* A standby acknowledged 49: it needs 50 onwards. */
  assert_int_equal(replicate_log_retain(log, 50), 0);
  replicate_log_get_stats(log, &st);
  assert_true(st.oldest_seq > 1 && st.oldest_seq <= 50);
  assert_true(st.segments < segments);
  assert_int_equal(st.segments_dropped, segments - st.segments);
  for (uint64_t s = st.oldest_seq; s <= 100; s++) expect_frame(log, fx, s);
  assert_int_equal(read_code(log, st.oldest_seq - 1), REPLICATE_ELOG_GONE);
  uint64_t bytes;
  assert_int_equal(replicate_log_bytes_after(log, st.oldest_seq - 2, &bytes),
                   REPLICATE_ELOG_GONE);
  assert_int_equal(replicate_log_bytes_after(log, st.oldest_seq - 1, &bytes), 0);
  assert_int_equal(bytes, st.bytes - 32 * st.segments);
  char names[256][64];
  assert_int_equal(list_segments(fx, names, 256), (int)st.segments);

  /* Everyone has everything: only the newest segment stays. */
  assert_int_equal(replicate_log_retain(log, 101), 0);
  replicate_log_get_stats(log, &st);
  assert_int_equal(st.segments, 1);
  assert_int_equal(st.newest_seq, 100);
  assert_int_equal(list_segments(fx, names, 256), 1);
  assert_int_equal(replicate_log_close(log), 0);
  assert_int_equal(replicate_log_open(fx->dir, &opt, NULL, &log), 0);
  replicate_log_get_stats(log, &st);
  assert_int_equal(st.newest_seq, 100);
  assert_int_equal(append_range(log, fx, 101, 101), 0);
  assert_int_equal(replicate_log_close(log), 0);
}

/* The byte cap drops the oldest segments even if a standby needs them. */
static void test_cap(void **state)
{
  fixture *fx = *state;
  replicate_log_options opt = {.segment_bytes = 2048, .max_bytes = 8192};
  replicate_log *log;
  assert_int_equal(replicate_log_open(fx->dir, &opt, NULL, &log), 0);
  assert_int_equal(append_range(log, fx, 1, 200), 0);
  replicate_log_stats st;
  replicate_log_get_stats(log, &st);
  assert_true(st.bytes <= 8192);
  assert_true(st.oldest_seq > 150);
  assert_int_equal(st.newest_seq, 200);
  assert_true(st.segments_dropped > 0);
  assert_int_equal(read_code(log, 1), REPLICATE_ELOG_GONE);
  replicate_log_iter it;
  replicate_log_iter_init(&it, log, 100);
  replicate_buf buf = {0};
  assert_int_equal(replicate_log_iter_next(&it, &buf), REPLICATE_ELOG_GONE);
  replicate_buf_free(&buf);
  for (uint64_t s = st.oldest_seq; s <= 200; s++) expect_frame(log, fx, s);
  assert_int_equal(replicate_log_close(log), 0);
}

/* Without segment_bytes, segments are an eighth of the cap (at least
 * 64 KiB): the cap then drops whole segments well before the log is
 * empty. */
static void test_derived_segments(void **state)
{
  fixture *fx = *state;
  replicate_log_options opt = {.max_bytes = 1024 * 1024};
  replicate_log *log;
  assert_int_equal(replicate_log_open(fx->dir, &opt, NULL, &log), 0);
  assert_int_equal(append_range(log, fx, 1, 200), 0);
  replicate_log_stats st;
  replicate_log_get_stats(log, &st);
  char names[256][64];
  int files = list_segments(fx, names, 256);
  assert_int_equal(files, (int)st.segments);
  for (int i = 0; i < files; i++)
    assert_true(file_size(fx, names[i]) <= 128 * 1024);
  assert_true(st.bytes <= 1024 * 1024);
  if (st.bytes > 128 * 1024) assert_true(st.segments > 1);
  assert_int_equal(replicate_log_close(log), 0);
}

/* The policy: the slowest standby's next seq; an unknown one keeps
 * everything; one that needs a base image holds nothing back. */
static void test_oldest_needed(void **state)
{
  (void)state;
  replicate_log_reader r[3] = {
      {REPLICATE_LOG_READER_AT, 40},
      {REPLICATE_LOG_READER_NEEDS_BASE, 0},
      {REPLICATE_LOG_READER_AT, 12},
  };
  assert_int_equal(replicate_log_oldest_needed(r, 3), 13);
  assert_int_equal(replicate_log_oldest_needed(r, 2), 41);
  assert_int_equal(replicate_log_oldest_needed(r + 1, 1), UINT64_MAX);
  assert_int_equal(replicate_log_oldest_needed(r, 0), UINT64_MAX);
  r[1].state = REPLICATE_LOG_READER_UNKNOWN;
  assert_int_equal(replicate_log_oldest_needed(r, 3), 0);
}

static void test_append_refusals(void **state)
{
  fixture *fx = *state;
  replicate_log *log;
  assert_int_equal(replicate_log_open(fx->dir, NULL, NULL, &log), 0);
  assert_int_equal(append_range(log, fx, 1, 5), 0);
  /* A gap, and a repeat. */
  assert_int_equal(replicate_log_append(log, fx->frames[6].data, fx->frames[6].len),
                   REPLICATE_ENOT_CONTIGUOUS);
  assert_int_equal(replicate_log_append(log, fx->frames[4].data, fx->frames[4].len),
                   REPLICATE_ENOT_CONTIGUOUS);
  /* Cut short, or with bytes after it. */
  assert_int_equal(replicate_log_append(log, fx->frames[5].data, fx->frames[5].len - 1),
                   REPLICATE_ETRUNCATED);
  uint8_t *longer = xmalloc(fx->frames[5].len + 1);
  memcpy(longer, fx->frames[5].data, fx->frames[5].len);
  assert_int_equal(replicate_log_append(log, longer, fx->frames[5].len + 1),
                   REPLICATE_ETRAILING);
  free(longer);
  assert_int_equal(replicate_log_append(log, "junk", 4), REPLICATE_ETRUNCATED);
  /* A heartbeat. */
  replicate_buf hb = {0};
  loom_position latest = {.epoch = 1, .seq = 5, .pages = 4};
  assert_int_equal(replicate_frame_encode_heartbeat(&no_history, &latest, 0, &hb), 0);
  assert_int_equal(replicate_log_append(log, hb.data, hb.len), REPLICATE_EKIND);
  replicate_buf_free(&hb);
  /* A coalesced frame. */
  replicate_decoder *dec;
  replicate_encoder *enc;
  replicate_coalescer *co;
  assert_int_equal(replicate_decoder_new(NULL, &dec), 0);
  assert_int_equal(replicate_encoder_new(1, &enc), 0);
  assert_int_equal(replicate_coalescer_new(0, &co), 0);
  for (int i = 5; i < 7; i++) {
    replicate_frame f;
    assert_int_equal(replicate_frame_decode(dec, fx->frames[i].data, fx->frames[i].len, &f), 0);
    assert_int_equal(replicate_coalescer_add(co, &f), 0);
  }
  replicate_buf merged = {0};
  assert_int_equal(replicate_coalescer_finish(co, enc, &merged), 0);
  assert_int_equal(replicate_log_append(log, merged.data, merged.len), REPLICATE_EINVAL);
  replicate_buf_free(&merged);
  replicate_coalescer_free(co);
  replicate_encoder_free(enc);
  replicate_decoder_free(dec);
  /* Nothing of that reached the disk. */
  assert_int_equal(replicate_log_close(log), 0);
  assert_int_equal(replicate_log_open(fx->dir, NULL, NULL, &log), 0);
  expect_range(log, 1, 5);
  assert_int_equal(append_range(log, fx, 6, 6), 0);
  assert_int_equal(replicate_log_close(log), 0);
}

/* Epochs: a newer one continues the chain, an older one is refused. */
static void test_epochs(void **state)
{
  fixture *fx = *state;
  fixture other = {0};
  make_frames(&other, 3, 2); /* the same seqs 1..3, at epoch 2 */
  replicate_log *log;
  assert_int_equal(replicate_log_open(fx->dir, NULL, NULL, &log), 0);
  assert_int_equal(append_range(log, fx, 1, 1), 0);
  assert_int_equal(replicate_log_append(log, other.frames[1].data, other.frames[1].len), 0);
  replicate_log_stats st;
  replicate_log_get_stats(log, &st);
  assert_int_equal(st.newest_epoch, 2);
  assert_int_equal(replicate_log_append(log, fx->frames[2].data, fx->frames[2].len),
                   REPLICATE_ENOT_CONTIGUOUS);
  assert_int_equal(replicate_log_close(log), 0);
  assert_int_equal(replicate_log_open(fx->dir, NULL, NULL, &log), 0);
  replicate_log_get_stats(log, &st);
  assert_int_equal(st.newest_epoch, 2);
  assert_int_equal(st.newest_seq, 2);
  /* Reset: the chain may start anywhere. */
  assert_int_equal(replicate_log_reset(log), 0);
  replicate_log_get_stats(log, &st);
  assert_int_equal(st.records, 0);
  assert_int_equal(st.segments, 0);
  assert_int_equal(append_range(log, fx, 150, 151), 0);
  expect_range(log, 150, 151);
  assert_int_equal(replicate_log_close(log), 0);
  for (size_t i = 0; i < other.count; i++) replicate_buf_free(&other.frames[i]);
  free(other.frames);
}

/* ---------------------------------------------------------------------- */
/* Faults */

static void test_fault_write(void **state)
{
  fixture *fx = *state;
  fault_io fio;
  fault_io_init(&fio);
  replicate_log *log;
  assert_int_equal(replicate_log_open(fx->dir, NULL, &fio.io, &log), 0);
  assert_int_equal(append_range(log, fx, 1, 5), 0);
  /* The frame's write fails with ENOSPC after writing half of it. */
  fio.short_write = true;
  fault_arm(&fio, LOOM_IO_PWRITE, 1, ENOSPC);
  assert_int_equal(append_range(log, fx, 6, 6), ENOSPC);
  expect_range(log, 1, 5);
  /* The half-written record was cut away; the same append now works. */
  assert_int_equal(append_range(log, fx, 6, 8), 0);
  assert_int_equal(replicate_log_close(log), 0);
  assert_int_equal(replicate_log_open(fx->dir, NULL, &fio.io, &log), 0);
  expect_range(log, 1, 8);
  for (uint64_t s = 1; s <= 8; s++) expect_frame(log, fx, s);
  assert_int_equal(replicate_log_close(log), 0);
}

/* The write fails half-way and so does the truncate that would undo it:
 * the handle is poisoned, and reopening cuts the torn record away. */
static void test_fault_undo_fails(void **state)
{
  fixture *fx = *state;
  fault_io fio;
  fault_io_init(&fio);
  replicate_log *log;
  assert_int_equal(replicate_log_open(fx->dir, NULL, &fio.io, &log), 0);
  assert_int_equal(append_range(log, fx, 1, 3), 0);
  fio.short_write = true;
  fault_arm(&fio, LOOM_IO_PWRITE, 1, EIO);
  fault_arm(&fio, LOOM_IO_FTRUNCATE, 0, EIO);
  assert_int_equal(append_range(log, fx, 4, 4), EIO);
  assert_int_equal(append_range(log, fx, 4, 4), REPLICATE_EPANIC);
  assert_int_equal(replicate_log_close(log), 0);
  char names[4][64];
  assert_int_equal(list_segments(fx, names, 4), 1);
  off_t torn = file_size(fx, names[0]);
  assert_int_equal(replicate_log_open(fx->dir, NULL, &fio.io, &log), 0);
  expect_range(log, 1, 3);
  assert_true(file_size(fx, names[0]) < torn);
  assert_int_equal(append_range(log, fx, 4, 5), 0);
  for (uint64_t s = 1; s <= 5; s++) expect_frame(log, fx, s);
  assert_int_equal(replicate_log_close(log), 0);
}

/* fsync failing poisons the handle; reopening recovers a contiguous log. */
static void test_fault_fsync(void **state)
{
  fixture *fx = *state;
  fault_io fio;
  fault_io_init(&fio);
  replicate_log *log;
  assert_int_equal(replicate_log_open(fx->dir, NULL, &fio.io, &log), 0);
  assert_int_equal(append_range(log, fx, 1, 4), 0);
  fault_arm(&fio, LOOM_IO_FSYNC, 0, EIO);
  assert_int_equal(append_range(log, fx, 5, 5), EIO);
  assert_int_equal(append_range(log, fx, 5, 5), REPLICATE_EPANIC);
  assert_int_equal(read_code(log, 1), REPLICATE_EPANIC);
  assert_int_equal(replicate_log_retain(log, 1), REPLICATE_EPANIC);
  assert_int_equal(replicate_log_close(log), 0);
  assert_int_equal(replicate_log_open(fx->dir, NULL, &fio.io, &log), 0);
  /* The record reached the page cache, so here it is there; either way
   * the log is whole and goes on. */
  replicate_log_stats st;
  replicate_log_get_stats(log, &st);
  assert_int_equal(st.oldest_seq, 1);
  assert_true(st.newest_seq == 4 || st.newest_seq == 5);
  assert_int_equal(append_range(log, fx, st.newest_seq + 1, 7), 0);
  for (uint64_t s = 1; s <= 7; s++) expect_frame(log, fx, s);
  assert_int_equal(replicate_log_close(log), 0);
}

/* LOG SYNC, deferred: appends write and index without an fsync, one
 * replicate_log_sync makes them all durable, and a new segment fsyncs the
 * one before it first (only the newest may hold records not durable). */
static void test_deferred_sync(void **state)
{
  fixture *fx = *state;
  fault_io fio;
  fault_io_init(&fio);
  replicate_log_options opt = {.segment_bytes = 4096, .sync = REPLICATE_LOG_SYNC_DEFERRED};
  replicate_log *log;
  assert_int_equal(replicate_log_open(fx->dir, &opt, &fio.io, &log), 0);
  int fsyncs0 = fio.counts[LOOM_IO_FSYNC] - fio.dir_fsyncs;
  assert_int_equal(append_range(log, fx, 1, 3), 0);
  assert_int_equal(fio.counts[LOOM_IO_FSYNC] - fio.dir_fsyncs, fsyncs0);
  for (uint64_t s = 1; s <= 3; s++) expect_frame(log, fx, s); /* readable */
  replicate_log_stats st;
  replicate_log_get_stats(log, &st);
  assert_int_equal(st.unsynced, 3);
  assert_int_equal(replicate_log_sync(log), 0);
  replicate_log_get_stats(log, &st);
  assert_int_equal(st.unsynced, 0);
  assert_int_equal(st.syncs, 1);
  assert_int_equal(fio.counts[LOOM_IO_FSYNC] - fio.dir_fsyncs, fsyncs0 + 1);
  assert_int_equal(replicate_log_sync(log), 0); /* nothing waits: no fsync */
  assert_int_equal(fio.counts[LOOM_IO_FSYNC] - fio.dir_fsyncs, fsyncs0 + 1);
  /* Past a few segments: each roll-over fsyncs the segment it leaves. */
  assert_int_equal(append_range(log, fx, 4, 60), 0);
  replicate_log_get_stats(log, &st);
  assert_true(st.segments > 3);
  int file_fsyncs = fio.counts[LOOM_IO_FSYNC] - fio.dir_fsyncs - fsyncs0 - 1;
  assert_int_equal((uint64_t)file_fsyncs, st.segments - 1);
  assert_true(st.unsynced > 0);
  /* A failed sync poisons the handle, as a failed append fsync does. */
  fault_arm(&fio, LOOM_IO_FSYNC, 0, EIO);
  assert_int_equal(replicate_log_sync(log), EIO);
  assert_int_equal(append_range(log, fx, 61, 61), REPLICATE_EPANIC);
  assert_int_equal(replicate_log_close(log), EIO); /* said again at close */
  assert_int_equal(replicate_log_open(fx->dir, &opt, &fio.io, &log), 0);
  expect_range(log, 1, 60);
  /* Close syncs what waits. */
  assert_int_equal(append_range(log, fx, 61, 62), 0);
  fsyncs0 = fio.counts[LOOM_IO_FSYNC] - fio.dir_fsyncs;
  assert_int_equal(replicate_log_close(log), 0);
  assert_int_equal(fio.counts[LOOM_IO_FSYNC] - fio.dir_fsyncs, fsyncs0 + 1);
}

/* LOG SYNC, concurrent: appends go on while a sync is in its fsync (the
 * lock is not held); records appended meanwhile stay counted as not
 * durable; dropping the segment being fsynced keeps its descriptor open
 * until the fsync returns. */
typedef struct sync_call {
  replicate_log *log;
  int rc;
} sync_call;

static void *sync_in_thread(void *arg)
{
  sync_call *c = arg;
  c->rc = replicate_log_sync(c->log);
  return NULL;
}

static void test_sync_concurrent(void **state)
{
  fixture *fx = *state;
  fault_io fio;
  fault_io_init(&fio);
  replicate_log_options opt = {.segment_bytes = 4096, .sync = REPLICATE_LOG_SYNC_DEFERRED};
  replicate_log *log;
  assert_int_equal(replicate_log_open(fx->dir, &opt, &fio.io, &log), 0);
  assert_int_equal(append_range(log, fx, 1, 2), 0);
  fio.block_next = true;
  sync_call call = {log, -1};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, sync_in_thread, &call), 0);
  pthread_mutex_lock(&fio.gate);
  while (!fio.blocked) pthread_cond_wait(&fio.gate_cond, &fio.gate);
  pthread_mutex_unlock(&fio.gate);
  /* The sync is inside its fsync: appends and reads go on. */
  assert_int_equal(append_range(log, fx, 3, 3), 0);
  expect_frame(log, fx, 3);
  replicate_log_stats st;
  replicate_log_get_stats(log, &st);
  assert_int_equal(st.unsynced, 3);
  /* Past two roll-overs, then retention drops the segment being synced. */
  uint64_t s = 4;
  while (st.segments < 3) {
    assert_int_equal(append_range(log, fx, s, s), 0);
    s++;
    replicate_log_get_stats(log, &st);
  }
  assert_int_equal(replicate_log_retain(log, s - 1), 0);
  replicate_log_get_stats(log, &st);
  assert_true(st.oldest_seq > 2);
  assert_true(fcntl(fio.blocked_fd, F_GETFD) >= 0); /* not closed yet */
  uint64_t waiting = st.unsynced; /* appended since the last roll-over */
  assert_true(waiting > 0);
  pthread_mutex_lock(&fio.gate);
  fio.released = true;
  pthread_cond_broadcast(&fio.gate_cond);
  pthread_mutex_unlock(&fio.gate);
  pthread_join(t, NULL);
  assert_int_equal(call.rc, 0);
  assert_true(fcntl(fio.blocked_fd, F_GETFD) < 0); /* closed after it */
  replicate_log_get_stats(log, &st);
  assert_int_equal(st.unsynced, waiting); /* not made durable by that fsync */
  assert_int_equal(replicate_log_sync(log), 0);
  replicate_log_get_stats(log, &st);
  assert_int_equal(st.unsynced, 0);
  assert_int_equal(replicate_log_close(log), 0);
}

/* Wait (10 s at most) until the log's thread has synced every append; its
 * stats then. */
static replicate_log_stats wait_synced(replicate_log *log)
{
  replicate_log_stats st;
  int64_t deadline = test_now_ms() + 10000;
  do {
    replicate_log_get_stats(log, &st);
  } while (st.unsynced > 0 && test_now_ms() < deadline && usleep(1000) == 0);
  assert_int_equal(st.unsynced, 0);
  return st;
}

/* LOG SYNC, background: the log's thread syncs what the appends wrote. */
static void test_background_sync(void **state)
{
  fixture *fx = *state;
  replicate_log_options opt = {.sync = REPLICATE_LOG_SYNC_BACKGROUND};
  replicate_log *log;
  assert_int_equal(replicate_log_open(fx->dir, &opt, NULL, &log), 0);
  replicate_log_stats st;
  for (uint64_t s = 1; s <= 100; s++) {
    assert_int_equal(append_range(log, fx, s, s), 0);
    if (s % 25 == 0) { /* retention drops segments a sync may be in */
      assert_int_equal(replicate_log_retain(log, s - 10), 0);
    }
  }
  st = wait_synced(log);
  assert_true(st.syncs >= 1 && st.syncs <= 100);
  for (uint64_t s = st.oldest_seq; s <= 100; s++) expect_frame(log, fx, s);
  assert_int_equal(replicate_log_reset(log), 0);
  assert_int_equal(append_range(log, fx, 150, 150), 0);
  assert_int_equal(replicate_log_close(log), 0);
  assert_int_equal(replicate_log_open(fx->dir, NULL, NULL, &log), 0);
  expect_range(log, 150, 150);
  assert_int_equal(replicate_log_close(log), 0);
}

/* The background thread gathers appends for 5 ms after each fsync
 * (log.c SYNC_GATHER_NS): appends paced 1 ms apart for about 60 ms are
 * made durable by at most one fsync per 5 ms of it, where syncing at once
 * took one per append; all of them are durable soon after. */
static void test_background_sync_gathers(void **state)
{
  fixture *fx = *state;
  replicate_log_options opt = {.sync = REPLICATE_LOG_SYNC_BACKGROUND};
  replicate_log *log;
  assert_int_equal(replicate_log_open(fx->dir, &opt, NULL, &log), 0);
  int64_t start = test_now_ms();
  for (uint64_t s = 1; s <= 60; s++) {
    assert_int_equal(append_range(log, fx, s, s), 0);
    usleep(1000); /* the pace of the appends: the workload, not a wait */
  }
  int64_t took = test_now_ms() - start;
  replicate_log_stats st;
  st = wait_synced(log);
  print_message("60 appends in %lld ms: %llu fsyncs\n", (long long)took,
                (unsigned long long)st.syncs);
  assert_true(st.syncs >= 1);
  assert_true(st.syncs <= (uint64_t)(took / 5) + 2);
  assert_int_equal(replicate_log_close(log), 0);
}

/* Creating a segment: each failing step leaves the log as it was, and the
 * directory is fsynced when a segment is created or dropped. */
static void test_fault_segment_create(void **state)
{
  fixture *fx = *state;
  replicate_log_options opt = {.segment_bytes = 1024};
  static const loom_io_op ops[] = {LOOM_IO_OPEN, LOOM_IO_PWRITE, LOOM_IO_FSYNC};
  for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++) {
    for (int countdown = 0; countdown < 2; countdown++) {
      test_remove_tree(fx->replog);
      fault_io fio;
      fault_io_init(&fio);
      replicate_log *log;
      assert_int_equal(replicate_log_open(fx->dir, &opt, &fio.io, &log), 0);
      int dir_fsyncs = fio.dir_fsyncs;
      assert_int_equal(append_range(log, fx, 1, 1), 0);
      /* The first segment: its file and the directory were fsynced. */
      assert_true(fio.dir_fsyncs > dir_fsyncs);
      assert_int_equal(append_range(log, fx, 2, 3), 0);
      fault_arm(&fio, ops[k], countdown, EIO);
      /* Append until a new segment is needed and the fault hits. */
      uint64_t seq = 4;
      int rc = 0;
      while (rc == 0 && seq < 40) {
        rc = append_range(log, fx, seq, seq);
        if (rc == 0) seq++;
      }
      assert_int_equal(rc, EIO);
      rc = append_range(log, fx, seq, seq);
      if (rc == REPLICATE_EPANIC) {
        /* Only an fsync of the record itself poisons the handle. */
        assert_int_equal(ops[k], LOOM_IO_FSYNC);
        assert_int_equal(replicate_log_close(log), 0);
        assert_int_equal(replicate_log_open(fx->dir, &opt, &fio.io, &log), 0);
        replicate_log_stats st;
        replicate_log_get_stats(log, &st);
        seq = st.newest_seq + 1;
      } else {
        assert_int_equal(rc, 0);
        seq++;
      }
      assert_int_equal(append_range(log, fx, seq, 40), 0);
      for (uint64_t s = 1; s <= 40; s++) expect_frame(log, fx, s);
      assert_int_equal(replicate_log_close(log), 0);
      assert_int_equal(replicate_log_open(fx->dir, &opt, &fio.io, &log), 0);
      expect_range(log, 1, 40);
      dir_fsyncs = fio.dir_fsyncs;
      assert_int_equal(replicate_log_retain(log, 30), 0);
      assert_true(fio.dir_fsyncs > dir_fsyncs);
      assert_int_equal(replicate_log_close(log), 0);
    }
  }
}

/* Opening when the directory cannot be created. */
static void test_fault_open(void **state)
{
  fixture *fx = *state;
  fault_io fio;
  fault_io_init(&fio);
  replicate_log *log;
  fault_arm(&fio, LOOM_IO_MKDIR, 0, EACCES);
  assert_int_equal(replicate_log_open(fx->dir, NULL, &fio.io, &log), EACCES);
  fault_arm(&fio, LOOM_IO_FSYNC, 0, EIO);
  assert_int_equal(replicate_log_open(fx->dir, NULL, &fio.io, &log), EIO);
  assert_int_equal(replicate_log_open("/nonexistent/dir", NULL, &fio.io, &log),
                   ENOENT);
  assert_int_equal(replicate_log_open(fx->dir, NULL, &fio.io, &log), 0);
  assert_int_equal(replicate_log_close(log), 0);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_append_read_reopen, setup, teardown),
      cmocka_unit_test_setup_teardown(test_segments, setup, teardown),
      cmocka_unit_test_setup_teardown(test_derived_segments, setup, teardown),
      cmocka_unit_test(test_oldest_needed),
      cmocka_unit_test_setup_teardown(test_torn_tail, setup, teardown),
      cmocka_unit_test_setup_teardown(test_torn_segment, setup, teardown),
      cmocka_unit_test_setup_teardown(test_damaged_older_record, setup, teardown),
      cmocka_unit_test_setup_teardown(test_damaged_older_header, setup, teardown),
      cmocka_unit_test_setup_teardown(test_missing_segment, setup, teardown),
      cmocka_unit_test_setup_teardown(test_damaged_newest_middle, setup, teardown),
      cmocka_unit_test_setup_teardown(test_epoch_break, setup, teardown),
      cmocka_unit_test_setup_teardown(test_corrupt_read, setup, teardown),
      cmocka_unit_test_setup_teardown(test_retention_hold, setup, teardown),
      cmocka_unit_test_setup_teardown(test_retention, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cap, setup, teardown),
      cmocka_unit_test_setup_teardown(test_append_refusals, setup, teardown),
      cmocka_unit_test_setup_teardown(test_epochs, setup, teardown),
      cmocka_unit_test_setup_teardown(test_fault_write, setup, teardown),
      cmocka_unit_test_setup_teardown(test_fault_undo_fails, setup, teardown),
      cmocka_unit_test_setup_teardown(test_fault_fsync, setup, teardown),
      cmocka_unit_test_setup_teardown(test_fault_segment_create, setup, teardown),
      cmocka_unit_test_setup_teardown(test_deferred_sync, setup, teardown),
      cmocka_unit_test_setup_teardown(test_background_sync, setup, teardown),
      cmocka_unit_test_setup_teardown(test_background_sync_gathers, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sync_concurrent, setup, teardown),
      cmocka_unit_test_setup_teardown(test_fault_open, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
