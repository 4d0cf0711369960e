/*
 * store_log_test.c: the commit log through the public API (core/store.c,
 * "THE COMMIT LOG"; docs/FORMAT.md "`log`"):
 *   - with LOOM_CHECKPOINT_DEFER, commits wait in the log: its fill grows
 *     record by record, the image file stays at the checkpoint, and
 *     loom_store_sync brings it to the committed position;
 *   - a process that dies with records in the log: loom_inspect reports
 *     the committed position, and open replays them all;
 *   (a ring too small for the next record, through the arena's
 *     loom_options.log_bytes, is test_arena.c's test_log_ring: the arena
 *     suites do not run under valgrind);
 *   - a version 1 directory (no log) is upgraded at open; one whose patch
 *     still counts is refused with LOOM_EVERSION, one whose patch is torn
 *     or a page repair is upgraded;
 *   - a log lost while records may follow the checkpoint: LOOM_ELOGLOST;
 *   - a growth behind a queued shrink reserves after the shrink's cut;
 *   - ENOSPC on a first-lap header write fails that save cleanly;
 *   - commits and checkpoints ask no file for its times;
 *   - recovery's two threads still end the log at its first bad record;
 *   - loom_store_read_committed_page reads queued records from the log;
 *   - a forged meta and record size nothing past what the files hold;
 *   - loom_store_open_with: the ring's size follows the opener, records
 *     of another size are replayed; the merge state's memory is counted
 *     and stays within 1/16 of the ring;
 *   - a torn record recovery rejected is not brought back by a retried
 *     save at its lsn that crashes too (by hand, and with the I/O
 *     simulator's power cuts: test_two_power_cuts);
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <xxhash.h>

#include "iosim.h"
#include "loom.h"

#define PS ((uint64_t)LOOM_PAGE_SIZE)

typedef struct fixture {
  char dir[64];
} fixture;

static int setup(void **state)
{
  fixture *fx = calloc(1, sizeof *fx);
  if (!fx)
    return -1;
  strcpy(fx->dir, "/tmp/store-log-XXXXXX");
  if (!mkdtemp(fx->dir))
    return -1;
  *state = fx;
  return 0;
}

static int teardown(void **state)
{
  fixture *fx = *state;
  const char *names[] = {"image", "hashes", "meta", "log", "patch", "lock",
                         "positions"};
  char path[128];
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    snprintf(path, sizeof path, "%s/%s", fx->dir, names[i]);
    unlink(path);
  }
  rmdir(fx->dir);
  free(fx);
  return 0;
}

static void put64(uint8_t *b, uint64_t v)
{
  for (int j = 0; j < 8; j++)
    b[j] = (uint8_t)(v >> (8 * j));
}

static void fill(uint8_t *page, uint64_t n, unsigned v)
{
  memset(page, (int)((n * 7 + v) & 0xff), PS);
}

/* The hash of page n filled at version v. */
static uint64_t filled_hash(uint64_t n, unsigned v)
{
  uint8_t *page = malloc(PS);
  fill(page, n, v);
  uint64_t hash = loom_page_hash(n, page);
  free(page);
  return hash;
}

/* Commit a patch with header h: its pages from first on, filled at
 * version v. */
static int commit_filled(loom_store *s, const loom_patch_header *h,
                         uint64_t first, unsigned v)
{
  loom_patch *p;
  int rc = loom_store_patch_begin(s, h, &p);
  uint8_t *page = malloc(PS);
  for (uint64_t n = first; !rc && n < first + h->page_count; n++) {
    fill(page, n, v);
    rc = loom_patch_add(p, n, page);
  }
  free(page);
  return rc ? rc : loom_patch_commit(p);
}

/* Commit pages [0, k) with contents version v, growing to k pages (a base
 * image when base). */
static int commit_at(loom_store *s, uint64_t k, unsigned v, int base,
                     int64_t time_ns)
{
  loom_patch_header h = {.page_count = k};
  loom_store_position(s, &h.before);
  h.after = h.before;
  h.after.seq++;
  h.after.commit_time_ns = time_ns;
  h.after.pages = k;
  h.after.checksum = 0;
  h.flags = base ? LOOM_PATCH_BASE : 0;
  for (uint64_t n = 0; n < k; n++)
    h.after.checksum += filled_hash(n, v);
  if (h.before.pages > k && !base)
    return LOOM_EINVAL; /* (these tests only grow or replace) */
  return commit_filled(s, &h, 0, v);
}

static int commit(loom_store *s, uint64_t k, unsigned v, int base)
{
  return commit_at(s, k, v, base, 0);
}

/* Pages [0, count) read back at the committed position: version v. */
static void assert_pages_are(loom_store *s, uint64_t count, unsigned v)
{
  uint8_t *page = malloc(PS), *want = malloc(PS);
  for (uint64_t n = 0; n < count; n++) {
    assert_int_equal(loom_store_read_page(s, n, page), 0);
    fill(want, n, v);
    assert_memory_equal(page, want, PS);
  }
  free(page);
  free(want);
}

static off_t file_size(const fixture *fx, const char *name)
{
  char path[128];
  snprintf(path, sizeof path, "%s/%s", fx->dir, name);
  struct stat st;
  return stat(path, &st) == 0 ? st.st_size : -1;
}

static void test_deferred_fill_and_sync(void **state)
{
  fixture *fx = *state;
  loom_store *s;
  assert_int_equal(loom_store_open(fx->dir, LOOM_CREATE | LOOM_CHECKPOINT_DEFER,
                                   NULL, &s), 0);
  loom_log_stats st;
  loom_store_log_stats(s, &st);
  assert_int_equal(st.used, 0);
  assert_int_equal(st.size, LOOM_LOG_BYTES_DEFAULT);
  uint64_t last = 0;
  for (unsigned v = 1; v <= 3; v++) {
    assert_int_equal(commit(s, 2 + v, v, 0), 0);
    loom_store_log_stats(s, &st);
    assert_true(st.used > last); /* one more record waits */
    last = st.used;
    assert_int_equal(st.queued, v);
    assert_int_equal(st.checkpoint.seq, 0); /* the image is not touched */
  }
  assert_int_equal(file_size(fx, "image"), 0);
  assert_int_equal(loom_store_sync(s), 0);
  loom_store_log_stats(s, &st);
  assert_int_equal(st.used, 0);
  assert_int_equal(st.queued, 0);
  assert_int_equal(st.checkpoint.seq, 3);
  assert_int_equal(file_size(fx, "image"), (off_t)(5 * PS));
  assert_pages_are(s, 5, 3);
  assert_int_equal(loom_store_close(s), 0);
}

/* loom_store_read_committed_page without a checkpoint: a page a queued
 * record lists from the log (the newest such record), one a queued growth
 * added without listing it as zeros (also after a queued shrink), the
 * others from the image. */
static void test_read_committed_without_checkpoint(void **state)
{
  fixture *fx = *state;
  loom_store *s;
  assert_int_equal(loom_store_open(fx->dir, LOOM_CREATE | LOOM_CHECKPOINT_DEFER,
                                   NULL, &s), 0);
  assert_int_equal(commit(s, 8, 1, 1), 0); /* a base: 8 pages at v1 */
  assert_int_equal(loom_store_sync(s), 0);
  uint8_t *page = malloc(PS), *want = calloc(1, PS);
  /* pages 0-3 at v2; 0-1 at v3; 0 at v4 and a ninth page, zero */
  for (unsigned v = 2; v <= 4; v++) {
    loom_patch_header h = {.page_count = v == 2 ? 4 : v == 3 ? 2 : 1};
    loom_store_position(s, &h.before);
    h.after = h.before;
    h.after.seq++;
    for (uint64_t n = 0; n < h.page_count; n++)
      h.after.checksum += filled_hash(n, v) - loom_store_page_hash(s, n);
    if (v == 4) {
      h.after.pages = 9;
      h.after.checksum += loom_page_hash(8, want);
    }
    assert_int_equal(commit_filled(s, &h, 0, v), 0);
  }
  assert_int_equal(loom_store_read_committed_page(s, 8, page), 0);
  assert_memory_equal(page, want, PS); /* (want is still zeros) */
  unsigned expect[8] = {4, 3, 2, 2, 1, 1, 1, 1};
  for (uint64_t n = 0; n < 8; n++) {
    assert_int_equal(loom_store_read_committed_page(s, n, page), 0);
    fill(want, n, expect[n]);
    assert_memory_equal(page, want, PS);
  }
  assert_int_equal(loom_store_read_committed_page(s, 9, page), LOOM_EINVAL);
  loom_log_stats st;
  loom_store_log_stats(s, &st);
  assert_int_equal(st.queued, 3); /* nothing was checkpointed */
  assert_int_equal(st.checkpoint.seq, 1);
  assert_int_equal(loom_store_queued(s), 3);
  /* A shrink to 6 pages, then a growth to 9 listing page 6 only (its
   * commit waits for the shrink's checkpoint, core/store.c
   * reserve_growth): 7 and 8 are zeros again, read while the growth is
   * queued, whatever the image file holds there. */
  loom_patch_header h = {.page_count = 0};
  loom_store_position(s, &h.before);
  h.after = h.before;
  h.after.seq++;
  h.after.pages = 6;
  for (uint64_t n = 6; n < 9; n++)
    h.after.checksum -= loom_store_page_hash(s, n);
  assert_int_equal(commit_filled(s, &h, 0, 5), 0);
  memset(want, 0, PS);
  h.page_count = 1;
  loom_store_position(s, &h.before);
  h.after = h.before;
  h.after.seq++;
  h.after.pages = 9;
  h.after.checksum += filled_hash(6, 5) + loom_page_hash(7, want) +
                      loom_page_hash(8, want);
  assert_int_equal(commit_filled(s, &h, 6, 5), 0);
  for (uint64_t n = 6; n < 9; n++) {
    assert_int_equal(loom_store_read_committed_page(s, n, page), 0);
    if (n == 6)
      fill(want, n, 5);
    else
      memset(want, 0, PS);
    assert_memory_equal(page, want, PS);
  }
  assert_int_equal(loom_store_queued(s), 1); /* the growth */
  assert_int_equal(loom_store_sync(s), 0); /* and the image agrees */
  for (uint64_t n = 0; n < 9; n++) {
    assert_int_equal(loom_store_read_page(s, n, page), 0);
    assert_int_equal(loom_page_hash(n, page), loom_store_page_hash(s, n));
  }
  free(page);
  free(want);
  assert_int_equal(loom_store_close(s), 0);
}

/* A child commits n records (version v: 3 + v pages) with checkpoints
 * deferred, in a ring of log_bytes (0: the default), and dies without
 * closing: they wait in the log. */
static void die_with_records_in(const fixture *fx, unsigned n, uint64_t log_bytes)
{
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    loom_store *s;
    loom_store_options o = {.flags = LOOM_CREATE | LOOM_CHECKPOINT_DEFER,
                            .log_bytes = log_bytes};
    if (loom_store_open_with(fx->dir, &o, &s))
      _exit(1);
    for (unsigned v = 1; v <= n; v++)
      if (commit(s, 3 + v, v, 0))
        _exit(2);
    _exit(0);
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void die_with_records(const fixture *fx, unsigned n)
{
  die_with_records_in(fx, n, 0);
}

static void test_died_with_records(void **state)
{
  fixture *fx = *state;
  die_with_records(fx, 4);
  loom_position pos;
  assert_int_equal(loom_inspect(fx->dir, &pos), 0);
  assert_int_equal(pos.seq, 4); /* the committed position, not the meta's */
  assert_int_equal(pos.pages, 7);
  loom_store *s;
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &s), 0);
  loom_store_position(s, &pos);
  assert_int_equal(pos.seq, 4);
  loom_log_stats st;
  loom_store_log_stats(s, &st);
  assert_int_equal(st.checkpoint.seq, 4);
  assert_int_equal(st.used, 0);
  assert_int_equal(loom_store_close(s), 0);
  uint64_t computed;
  assert_int_equal(loom_verify(fx->dir, &pos, &computed), 0);
  assert_int_equal(pos.seq, 4);
}

static void remove_file(const fixture *fx, const char *name)
{
  char path[128];
  snprintf(path, sizeof path, "%s/%s", fx->dir, name);
  assert_int_equal(unlink(path), 0);
}

/* Fix 1 of the review: a log lost while it may hold records past the
 * checkpoint is refused (LOOM_ELOGLOST), never opened at the checkpoint;
 * one lost after a clean close (everything checkpointed), or a backup's
 * copy without it, opens. */
static void test_log_lost(void **state)
{
  fixture *fx = *state;
  die_with_records(fx, 3); /* three records past the checkpoint */
  char saved[160], path[128];
  snprintf(path, sizeof path, "%s/log", fx->dir);
  snprintf(saved, sizeof saved, "%s.saved", fx->dir);
  assert_int_equal(rename(path, saved), 0);
  loom_store *s;
  loom_position pos;
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &s), LOOM_ELOGLOST);
  assert_int_equal(loom_inspect(fx->dir, &pos), LOOM_ELOGLOST);
  assert_int_equal(rename(saved, path), 0); /* found again: all is there */
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &s), 0);
  loom_store_position(s, &pos);
  assert_int_equal(pos.seq, 3);
  char copy[160];
  snprintf(copy, sizeof copy, "%s/copy", fx->dir);
  assert_int_equal(loom_store_backup(s, copy), 0);
  assert_int_equal(loom_store_close(s), 0);
  /* Closed cleanly: nothing past the checkpoint, a lost log is no loss. */
  remove_file(fx, "log");
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &s), 0);
  loom_position got;
  loom_store_position(s, &got);
  assert_true(loom_position_same(&got, &pos));
  assert_int_equal(loom_store_close(s), 0);
  /* The backup's copy, without its (empty) log. */
  snprintf(path, sizeof path, "%s/copy/log", fx->dir);
  assert_int_equal(unlink(path), 0);
  assert_int_equal(loom_store_open(copy, 0, NULL, &s), 0);
  loom_store_position(s, &got);
  assert_true(loom_position_same(&got, &pos));
  assert_int_equal(loom_store_close(s), 0);
  const char *names[] = {"image", "hashes", "meta", "log", "lock", "positions"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    snprintf(path, sizeof path, "%s/copy/%s", fx->dir, names[i]);
    unlink(path);
  }
  assert_int_equal(rmdir(copy), 0);
}

/* The file offset of the n-th (0-based) record header in the log: the
 * magic at a multiple of 4,096. */
static off_t record_at(const fixture *fx, int n)
{
  char path[128];
  snprintf(path, sizeof path, "%s/log", fx->dir);
  int fd = open(path, O_RDONLY);
  assert_true(fd >= 0);
  uint8_t magic[8];
  off_t found = -1;
  for (off_t at = 0; pread(fd, magic, 8, at) == 8; at += 4096)
    if (memcmp(magic, "LOOMPTCH", 8) == 0 && n-- == 0) {
      found = at;
      break;
    }
  close(fd);
  assert_true(found >= 0);
  return found;
}

static void flip_byte(const fixture *fx, off_t at)
{
  char path[128];
  snprintf(path, sizeof path, "%s/log", fx->dir);
  int fd = open(path, O_RDWR);
  assert_true(fd >= 0);
  uint8_t b;
  assert_int_equal(pread(fd, &b, 1, at), 1);
  b ^= 0x5a;
  assert_int_equal(pwrite(fd, &b, 1, at), 1);
  close(fd);
}

/* Fix 2 of the review, two crashes at one lsn. The first leaves record 2
 * torn (its header durable, a page not): recovery opens at seq 1. The
 * second is a retried save at the same lsn whose pages reached the disk
 * and whose header did not (here: the torn page's byte is as it was
 * meant to be): the old header must not make record 2 count now. */
static void test_torn_tail_not_resurrected(void **state)
{
  fixture *fx = *state;
  die_with_records(fx, 2);
  off_t page = record_at(fx, 1) + 4096 + 100; /* record 2's first page */
  flip_byte(fx, page); /* crash 1 tore it */
  loom_store *s;
  loom_position pos;
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &s), 0);
  loom_store_position(s, &pos);
  assert_int_equal(pos.seq, 1);
  assert_int_equal(loom_store_close(s), 0);
  flip_byte(fx, page); /* crash 2: the retried save's pages, no header */
  assert_int_equal(loom_inspect(fx->dir, &pos), 0);
  assert_int_equal(pos.seq, 1);
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &s), 0);
  loom_store_position(s, &pos);
  assert_int_equal(pos.seq, 1); /* never committed: not resurrected */
  assert_int_equal(commit(s, 6, 3, 0), 0); /* and the lsn is usable */
  assert_int_equal(loom_store_close(s), 0);
  uint64_t computed;
  assert_int_equal(loom_verify(fx->dir, &pos, &computed), 0);
  assert_int_equal(pos.seq, 2);
}

/* Recovery hashes the records' pages in two threads (core/store.c,
 * verify_pages_all), and the log still ends at the first record that
 * does not verify, whichever thread saw which first: with a page of
 * record 20 of 40 torn (940 pages in all: the helper runs), open settles
 * at seq 19, with the pages record 19 left, and the records after 20
 * stay out (those that verify, and record 34, torn too). */
static void test_scan_ends_at_first_bad_record(void **state)
{
  fixture *fx = *state;
  die_with_records(fx, 40);
  flip_byte(fx, record_at(fx, 19) + 4096 + (off_t)(5 * PS) + 7);
  flip_byte(fx, record_at(fx, 33) + 4096 + 11); /* a later one too */
  loom_position pos;
  assert_int_equal(loom_inspect(fx->dir, &pos), 0);
  assert_int_equal(pos.seq, 19);
  loom_store *s;
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &s), 0);
  loom_store_position(s, &pos);
  assert_int_equal(pos.seq, 19);
  assert_int_equal(pos.pages, 22);
  assert_pages_are(s, 22, 19);
  assert_int_equal(loom_store_close(s), 0);
}

/* Fix 4 of the review: a growth committed behind a queued shrink (here a
 * smaller base image) reserves its blocks only after that shrink's
 * checkpoint cut the image, which would otherwise free them again. */
static void test_growth_after_queued_shrink(void **state)
{
  fixture *fx = *state;
  loom_store *s;
  assert_int_equal(loom_store_open(fx->dir, LOOM_CREATE | LOOM_CHECKPOINT_DEFER,
                                   NULL, &s), 0);
  assert_int_equal(commit(s, 8, 1, 0), 0);
  assert_int_equal(loom_store_sync(s), 0);
  assert_int_equal(commit(s, 2, 2, 1), 0); /* queued: cuts to 2 pages */
  loom_log_stats st;
  loom_store_log_stats(s, &st);
  assert_int_equal(st.checkpoint.seq, 1);
  assert_int_equal(file_size(fx, "image"), (off_t)(8 * PS));
  assert_int_equal(commit(s, 6, 3, 0), 0); /* grows past 2 */
  loom_store_log_stats(s, &st);
  assert_int_equal(st.checkpoint.seq, 2); /* the cut came first */
  assert_int_equal(st.queued, 1);
  assert_int_equal(file_size(fx, "image"), (off_t)(2 * PS));
  assert_int_equal(commit(s, 7, 4, 0), 0); /* growth behind growth: */
  loom_store_log_stats(s, &st);
  assert_int_equal(st.queued, 2);          /* no wait */
  assert_int_equal(loom_store_close(s), 0);
  loom_position pos;
  uint64_t computed;
  assert_int_equal(loom_verify(fx->dir, &pos, &computed), 0);
  assert_int_equal(pos.seq, 4);
  assert_int_equal(pos.pages, 7);
}

/* Two commits through sim, the second's op fail_at failing (UINT64_MAX:
 * none); with a fault, the second is retried. Returns the op index of
 * the last pwrite of the log before its last fsync (the second commit's
 * header). */
/* Op i of sim, if it is on the log file: 1 and *op. */
static int log_op(iosim *sim, uint64_t i, loom_io_op *op)
{
  char path[256];
  assert_int_equal(iosim_trace_op(sim, i, op, path, sizeof path), 0);
  size_t n = strlen(path);
  return n >= 4 && strcmp(path + n - 4, "/log") == 0;
}

static uint64_t header_run(const char *dir, int fail_at, uint64_t k,
                           int *first_rc, int *retry_rc)
{
  iosim *sim;
  assert_int_equal(iosim_create(NULL, &sim), 0);
  if (fail_at)
    assert_int_equal(iosim_fail_at(sim, k, ENOSPC), 0);
  loom_store *s;
  assert_int_equal(loom_store_open(dir, LOOM_CREATE, iosim_io(sim), &s), 0);
  assert_int_equal(commit(s, 2, 1, 0), 0);
  *first_rc = commit(s, 3, 2, 0);
  *retry_rc = *first_rc ? commit(s, 3, 2, 0) : 0;
  assert_int_equal(loom_store_close(s), 0);
  uint64_t header = UINT64_MAX, last_write = UINT64_MAX;
  for (uint64_t i = 0; i < iosim_count(sim); i++) {
    loom_io_op op;
    if (!log_op(sim, i, &op))
      continue;
    if (op == LOOM_IO_PWRITE)
      last_write = i;
    else if (op == LOOM_IO_FSYNC)
      header = last_write;
  }
  iosim_destroy(sim);
  return header;
}

/* Fix 6 of the review: ENOSPC on the record's last write before its
 * fdatasync (the entry table: without pwritev the header goes first) in
 * the log's first lap fails that save with nothing changed (the header is
 * zeroed again); the handle is not poisoned, and the retried save
 * commits. */
static void test_header_enospc(void **state)
{
  fixture *fx = *state;
  char counted[160], faulted[160];
  snprintf(counted, sizeof counted, "%s/counted", fx->dir);
  snprintf(faulted, sizeof faulted, "%s/faulted", fx->dir);
  int first_rc, retry_rc;
  uint64_t k = header_run(counted, 0, 0, &first_rc, &retry_rc);
  assert_int_equal(first_rc, 0);
  assert_true(k != UINT64_MAX);
  header_run(faulted, 1, k, &first_rc, &retry_rc);
  assert_int_equal(first_rc, ENOSPC);
  assert_int_equal(retry_rc, 0); /* (before the fix: LOOM_EPANIC) */
  loom_position pos;
  uint64_t computed;
  assert_int_equal(loom_verify(faulted, &pos, &computed), 0);
  assert_int_equal(pos.seq, 2);
  assert_int_equal(pos.pages, 3);
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf %s %s", counted, faulted);
  assert_int_equal(system(cmd), 0);
}

/* The log's writes and reads from op from to the log's next fsync. */
static void log_ops_of_commit(iosim *sim, uint64_t from, uint64_t *writes,
                              uint64_t *reads)
{
  *writes = *reads = 0;
  for (uint64_t i = from; i < iosim_count(sim); i++) {
    loom_io_op op;
    if (!log_op(sim, i, &op))
      continue;
    if (op == LOOM_IO_FSYNC)
      break; /* step 2 (the inline checkpoint then reads the pages) */
    *writes += op == LOOM_IO_PWRITE;
    *reads += op == LOOM_IO_PREAD;
  }
}

/* Close s and sim; the directory verifies at seq; its position in *pos. */
static void close_verify(loom_store *s, iosim *sim, const char *dir,
                         uint64_t seq, loom_position *pos)
{
  assert_int_equal(loom_store_close(s), 0);
  iosim_destroy(sim);
  uint64_t computed;
  assert_int_equal(loom_verify(dir, pos, &computed), 0);
  assert_int_equal(pos->seq, seq);
}

/* A commit of version 2 of the even pages 0, 2, ..., 30 over s's
 * position (scattered: no two adjacent in the image). */
static loom_patch_header even_pages_header(loom_store *s)
{
  loom_patch_header h = {.page_count = 16};
  loom_store_position(s, &h.before);
  h.after = h.before;
  h.after.seq++;
  for (uint64_t n = 0; n < 32; n += 2)
    h.after.checksum += filled_hash(n, 2) - loom_store_page_hash(s, n);
  return h;
}

static void add_even_pages(loom_patch *p)
{
  uint8_t *page = malloc(PS);
  assert_non_null(page);
  for (uint64_t n = 0; n < 32; n += 2) {
    fill(page, n, 2);
    assert_int_equal(loom_patch_add(p, n, page), 0);
  }
  free(page);
}

/* Step 1 writes a record of up to STAGING_PAGES pages (header, pages,
 * entries, trailer) with one pwritev, and step 3 reads nothing back: a
 * 64-page commit in the log's first lap is the header block's zeros and
 * the record (before: zeros, pages, entries, header, and the header's
 * read-back after the fsync). Recovery then finds both commits whole. */
static void test_record_one_write(void **state)
{
  fixture *fx = *state;
  iosim *sim;
  setenv("LOOM_IOSIM_PWRITEV", "1", 1);
  assert_int_equal(iosim_create(NULL, &sim), 0);
  unsetenv("LOOM_IOSIM_PWRITEV");
  assert_non_null(iosim_io(sim)->pwritev);
  loom_store *s;
  assert_int_equal(loom_store_open(fx->dir, LOOM_CREATE, iosim_io(sim), &s), 0);
  for (unsigned v = 1; v <= 2; v++) {
    uint64_t from = iosim_count(sim), writes, reads;
    assert_int_equal(commit(s, 64, v, 1), 0);
    log_ops_of_commit(sim, from, &writes, &reads);
    assert_int_equal(writes, 2);
    assert_int_equal(reads, 0);
  }
  loom_position pos;
  close_verify(s, sim, fx->dir, 2, &pos);
  assert_int_equal(pos.pages, 64);
}

/* Commits and checkpoints ask no file for its times (core/io_posix.c,
 * io_stat_untimed). On a file system with multigrain timestamps a stat
 * that reports them makes the next write stamp a new fine-grained time,
 * so the inode is dirty again and each record's fdatasync must write it
 * too. The store is linked in statically, so these definitions stand for
 * libc's in every stat it makes; they count the ones that ask for times. */
/* (Since glibc 2.33 fstat is a function of its own, not a wrapper of
 * __fxstat; SYS_newfstatat: 64-bit Linux.) */
#if defined(__GLIBC__) && defined(SYS_newfstatat)
#if __GLIBC_PREREQ(2, 33)
#define STATS_COUNTED 1
#endif
#endif
#ifdef STATS_COUNTED
static int stat_counting, stat_calls, times_asked;
static int statx_failures; /* the next ones fail with EIO */

static void stat_seen(int times)
{
  if (stat_counting) {
    stat_calls++;
    times_asked += times;
  }
}

int fstat(int fd, struct stat *st)
{
  stat_seen(1);
  return (int)syscall(SYS_newfstatat, fd, "", st, AT_EMPTY_PATH);
}

int fstatat(int dirfd, const char *path, struct stat *st, int flags)
{
  stat_seen(1);
  return (int)syscall(SYS_newfstatat, dirfd, path, st, flags);
}

int statx(int dirfd, const char *path, int flags, unsigned int mask,
          struct statx *sx)
{
  stat_seen((mask & (STATX_ATIME | STATX_MTIME | STATX_CTIME | STATX_BTIME)) != 0);
  if (statx_failures > 0) {
    statx_failures--;
    errno = EIO;
    return -1;
  }
  return (int)syscall(SYS_statx, dirfd, path, flags, mask, sx);
}

/* 38 commits and their checkpoints ask no file for its times; with
 * statx_fails, the first of them meets one statx failing for a passing
 * reason (EIO): that one stat falls back to a stat that asks for times,
 * and the rest of the commits ask for none again. (Before, any failure
 * but EBADF made every later stat of the process an fstat.) */
static void commits_ask_no_times(const char *dir, int statx_fails)
{
  loom_store *s;
  assert_int_equal(loom_store_open(dir, LOOM_CREATE, NULL, &s), 0);
  assert_int_equal(commit(s, 4, 1, 1), 0);
  stat_counting = 1;
  unsigned v = 2;
  if (statx_fails) {
    statx_failures = 1;
    assert_int_equal(commit(s, 4, v++, 0), 0);
    assert_int_equal(statx_failures, 0);
    assert_int_equal(times_asked, 1);
    stat_calls = times_asked = 0;
  }
  for (; v < 40; v++)
    assert_int_equal(commit(s, 4, v, 0), 0);
  assert_int_equal(loom_store_sync(s), 0); /* and the checkpoints */
  stat_counting = 0;
  assert_int_equal(loom_store_close(s), 0);
  assert_true(stat_calls > 0); /* the store's stats did come here */
  assert_int_equal(times_asked, 0);
}

static void test_commit_asks_no_times(void **state)
{
  commits_ask_no_times(((fixture *)*state)->dir, 0);
}

static void test_statx_failure_passes(void **state)
{
  commits_ask_no_times(((fixture *)*state)->dir, 1);
}
#else
static void test_commit_asks_no_times(void **state)
{
  (void)state;
  skip(); /* the store's stats cannot be counted from here */
}

static void test_statx_failure_passes(void **state)
{
  (void)state;
  skip(); /* as above */
}
#endif

/* The checkpoint copies a record's scattered pages with one read of the
 * log (their span in the record), not one read per page: 16 pages 0, 2,
 * ..., 30 of a 64-page image are one log read between the commit's fsync
 * and the image's (before: 16), and the image holds them. */
static void test_checkpoint_one_log_read(void **state)
{
  fixture *fx = *state;
  iosim *sim;
  assert_int_equal(iosim_create(NULL, &sim), 0);
  loom_store *s;
  assert_int_equal(loom_store_open(fx->dir, LOOM_CREATE, iosim_io(sim), &s), 0);
  assert_int_equal(commit(s, 64, 1, 1), 0);
  loom_patch_header h = even_pages_header(s);
  loom_patch *p;
  assert_int_equal(loom_store_patch_begin(s, &h, &p), 0);
  uint64_t from = iosim_count(sim);
  add_even_pages(p);
  assert_int_equal(loom_patch_commit(p), 0); /* checkpointed inline */
  uint64_t reads = 0, synced = 0;
  for (uint64_t i = from; i < iosim_count(sim); i++) {
    loom_io_op op;
    int on_log = log_op(sim, i, &op);
    synced += on_log && op == LOOM_IO_FSYNC;
    reads += on_log && synced && op == LOOM_IO_PREAD;
  }
  assert_int_equal(synced, 1);
  assert_int_equal(reads, 1);
  loom_position pos;
  close_verify(s, sim, fx->dir, 2, &pos);
  assert_true(pos.checksum == h.after.checksum);
}

/* loom_patch_add_stable writes pages from the caller's memory at the
 * commit: what the commit found there is what the store holds, whatever
 * the caller does with the memory afterwards; out-of-order pages and NULL
 * are refused as with loom_patch_add. */
static void test_patch_add_stable(void **state)
{
  fixture *fx = *state;
  loom_store *s;
  assert_int_equal(loom_store_open(fx->dir, LOOM_CREATE, NULL, &s), 0);
  assert_int_equal(commit(s, 8, 1, 1), 0);
  uint8_t *pages = malloc(3 * PS);
  assert_non_null(pages);
  loom_patch_header h = {.page_count = 3};
  loom_store_position(s, &h.before);
  h.after = h.before;
  h.after.seq++;
  for (uint64_t n = 1; n <= 3; n++) {
    fill(pages + (n - 1) * PS, n, 2);
    h.after.checksum += filled_hash(n, 2) - loom_store_page_hash(s, n);
  }
  loom_patch *p;
  assert_int_equal(loom_store_patch_begin(s, &h, &p), 0);
  assert_int_equal(loom_patch_add_stable(p, 1, NULL, 0), LOOM_EINVAL);
  loom_patch_abort(p);
  assert_int_equal(loom_store_patch_begin(s, &h, &p), 0);
  for (uint64_t n = 1; n <= 3; n++)
    assert_int_equal(loom_patch_add_stable(p, n, pages + (n - 1) * PS,
                                           filled_hash(n, 2)), 0);
  assert_int_equal(loom_patch_add_stable(p, 2, pages, filled_hash(2, 2)),
                   LOOM_EINVAL);
  loom_patch_abort(p);
  assert_int_equal(loom_store_patch_begin(s, &h, &p), 0);
  for (uint64_t n = 1; n <= 3; n++)
    assert_int_equal(loom_patch_add_stable(p, n, pages + (n - 1) * PS,
                                           filled_hash(n, 2)), 0);
  assert_int_equal(loom_patch_commit(p), 0);
  memset(pages, 0xee, 3 * PS); /* the caller reuses its buffer */
  uint8_t *page = malloc(PS), *want = malloc(PS);
  assert_non_null(page);
  assert_non_null(want);
  for (uint64_t n = 0; n < 8; n++) {
    assert_int_equal(loom_store_read_page(s, n, page), 0);
    fill(want, n, n >= 1 && n <= 3 ? 2 : 1);
    assert_memory_equal(page, want, PS);
  }
  assert_int_equal(loom_store_close(s), 0);
  loom_position pos;
  uint64_t computed;
  assert_int_equal(loom_verify(fx->dir, &pos, &computed), 0);
  assert_int_equal(pos.seq, 2);
  assert_true(computed == h.after.checksum);
  free(pages);
  free(page);
  free(want);
}

/* Rewrite both meta slots: the valid one with the higher generation, with
 * pages, ring size and head replaced (UINT64_MAX: kept). Returns the
 * head's file offset under the new ring and, in *pos, the slot's
 * position. */
static uint64_t forge_meta(const fixture *fx, uint64_t pages, uint64_t ring,
                           loom_position *pos)
{
  char path[128];
  snprintf(path, sizeof path, "%s/meta", fx->dir);
  int fd = open(path, O_RDWR);
  assert_true(fd >= 0);
  uint8_t m[1024], *best = NULL;
  assert_int_equal(pread(fd, m, sizeof m, 0), (ssize_t)sizeof m);
  uint64_t g = 0;
  for (int i = 0; i < 2; i++) {
    uint8_t *slot = m + i * 512;
    uint64_t sum = 0, gen = 0;
    for (int j = 7; j >= 0; j--) {
      sum = sum << 8 | slot[504 + j];
      gen = gen << 8 | slot[16 + j];
    }
    if (sum == XXH3_64bits(slot, 504) && (!best || gen > g)) {
      best = slot;
      g = gen;
    }
  }
  assert_non_null(best);
  if (pages != UINT64_MAX)
    put64(best + 48, pages);
  if (ring != UINT64_MAX)
    put64(best + 288, ring);
  put64(best + 504, XXH3_64bits(best, 504));
  uint64_t f[5], origin = 0, size = 0, head = 0;
  for (int k = 0; k < 5; k++) {
    f[k] = 0;
    for (int j = 7; j >= 0; j--)
      f[k] = f[k] << 8 | best[24 + 8 * k + j];
  }
  for (int j = 7; j >= 0; j--) {
    origin = origin << 8 | best[280 + j];
    size = size << 8 | best[288 + j];
    head = head << 8 | best[296 + j];
  }
  *pos = (loom_position){f[0], f[1], f[2], f[3], (int64_t)f[4]};
  memcpy(m + (best == m ? 512 : 0), best, 512);
  assert_int_equal(pwrite(fd, m, sizeof m, 0), (ssize_t)sizeof m);
  close(fd);
  return (head - origin) % size;
}

/* A record header at file offset off: from before to after.pages pages,
 * listing k pages, at lsn, its checksums right (and, with k = 0, its
 * trailer). */
static void forge_record(const fixture *fx, uint64_t off, uint64_t lsn,
                         const loom_position *before, uint64_t after_pages,
                         uint64_t k)
{
  uint8_t b[4096 + 8];
  memset(b, 0, sizeof b);
  memcpy(b, "LOOMPTCH", 8);
  b[8] = 2;
  b[13] = LOOM_PAGE_SIZE >> 8;
  uint64_t f[] = {before->epoch, before->seq, before->checksum, before->pages,
                  before->epoch, before->seq + 1, 1, after_pages, 0, k, lsn};
  for (int i = 0; i < 11; i++)
    put64(b + 24 + 8 * i, f[i]);
  uint64_t sum = XXH3_64bits(b, 112);
  put64(b + 112, sum);
  put64(b + 4096, XXH3_64bits_withSeed(b, 0, sum));
  char path[128];
  snprintf(path, sizeof path, "%s/log", fx->dir);
  int fd = open(path, O_RDWR);
  assert_true(fd >= 0);
  assert_int_equal(pwrite(fd, b, sizeof b, (off_t)off), (ssize_t)sizeof b);
  close(fd);
}

/* Open in a child whose address space is bounded (unless sanitized:
 * ASan reserves its shadow first): 0 LOOM_ECORRUPT, 10 opened, 2 ENOMEM,
 * 3 another error, 1 when the child did not exit by itself. */
static int open_bounded(const fixture *fx)
{
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
#if !defined(__SANITIZE_ADDRESS__)
    struct rlimit r = {UINT64_C(1) << 30, UINT64_C(1) << 30};
    setrlimit(RLIMIT_AS, &r);
#endif
    loom_store *s;
    int rc = loom_store_open(fx->dir, 0, NULL, &s);
    if (rc == 0)
      loom_store_close(s);
    _exit(rc == LOOM_ECORRUPT ? 0 : rc == 0 ? 10 : rc == ENOMEM ? 2 : 3);
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

/* Fix 7 of the review: a forged meta and record size nothing beyond what
 * the files hold. A ring of 2^40 bytes in the meta lets a record claim 2^25
 * pages (1.5 GiB of page lists), though the log file holds one header;
 * and a meta claiming 2^31 pages (a 16 GiB hash table) with a record that
 * follows it used to skip the image size check. The first record is a
 * torn tail (opened at the meta's position), the second directory
 * LOOM_ECORRUPT, both allocating nothing large (before the fix: ENOMEM
 * under a 1 GiB limit). */
static void test_forged_sizes(void **state)
{
  fixture *fx = *state;
  loom_store *s;
  assert_int_equal(loom_store_open(fx->dir, LOOM_CREATE, NULL, &s), 0);
  assert_int_equal(commit(s, 2, 1, 0), 0);
  assert_int_equal(loom_store_close(s), 0);
  char path[128], saved[160];
  snprintf(path, sizeof path, "%s/meta", fx->dir);
  snprintf(saved, sizeof saved, "%s.meta", fx->dir);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "cp %s %s", path, saved);
  assert_int_equal(system(cmd), 0);
  loom_position pos;
  uint64_t ring = UINT64_C(1) << 40;
  uint64_t off = forge_meta(fx, UINT64_MAX, ring, &pos);
  forge_record(fx, off, off, &pos, UINT64_C(1) << 25, UINT64_C(1) << 25);
  assert_int_equal(open_bounded(fx), 10); /* a torn tail: ignored */
  snprintf(cmd, sizeof cmd, "cp %s %s && rm %s", saved, path, saved);
  assert_int_equal(system(cmd), 0);
  off = forge_meta(fx, UINT64_C(1) << 31, UINT64_MAX, &pos);
  forge_record(fx, off, off, &pos, UINT64_C(1) << 31, 0);
  assert_int_equal(open_bounded(fx), 0);
}

/* The power-loss form of the same: real cuts by the I/O simulator, at the
 * commit point (the log's fsync) of a save of seq 2. */
typedef struct cut_ctx {
  int armed;
  uint64_t seed;
  char out[200];
} cut_ctx;

static void cut_at_fsync(void *ctx, iosim *sim, uint64_t k, loom_io_op op)
{
  cut_ctx *c = ctx;
  (void)k;
  if (c->armed && op == LOOM_IO_FSYNC) {
    c->armed = 0;
    assert_int_equal(iosim_powercut(sim, c->seed, c->out, IOSIM_CUT_RANDOM_4K), 0);
  }
}

/* Copy dir to out, open it through the simulator, commit seq 2 (the same
 * pages every time, at commit time t) and cut power at its commit point
 * into out. */
static void save_and_cut(const char *dir, const char *out, uint64_t seed,
                         int64_t t)
{
  iosim *sim;
  cut_ctx c = {0, seed, ""};
  snprintf(c.out, sizeof c.out, "%s", out);
  assert_int_equal(iosim_create(dir, &sim), 0);
  iosim_hook_set(sim, cut_at_fsync, &c);
  loom_store *s;
  assert_int_equal(loom_store_open(dir, LOOM_CHECKPOINT_DEFER, iosim_io(sim), &s), 0);
  c.armed = 1; /* the save's first fsync: the log's, its commit point */
  assert_int_equal(commit_at(s, 3, 2, 0, t), 0);
  assert_int_equal(loom_store_close(s), 0);
  iosim_destroy(sim);
  assert_int_equal(c.armed, 0);
}

/* rm -rf the directories a and b (b may be NULL); with copy, cp -a a b. */
static void run_cmd(int copy, const char *a, const char *b)
{
  char cmd[600];
  if (copy)
    snprintf(cmd, sizeof cmd, "cp -a %s %s", a, b);
  else
    snprintf(cmd, sizeof cmd, "rm -rf %s %s", a, b ? b : "");
  assert_int_equal(system(cmd), 0);
}

/* Whether dir's log holds, at the second record's place, a header. */
static int second_header(const char *dir)
{
  char path[256];
  snprintf(path, sizeof path, "%s/log", dir);
  int fd = open(path, O_RDONLY);
  assert_true(fd >= 0);
  uint8_t magic[8];
  int found = 0;
  for (off_t at = 4096; pread(fd, magic, 8, at) == 8 && !found; at += 4096)
    found = memcmp(magic, "LOOMPTCH", 8) == 0;
  close(fd);
  return found;
}

/* Fix 2 with real power cuts: cut 1 tears save R (its header durable, a
 * page not), recovery opens at seq 1; the retried save R' (same pages,
 * another commit time) is cut too. Over many seed pairs, recovery never
 * opens at R (its commit time 111): at seq 1, or at R' (222). */
static void test_two_power_cuts(void **state)
{
  fixture *fx = *state;
  char base[160], one[160], two[160], cut1[160], cut2[160];
  snprintf(base, sizeof base, "%s/base", fx->dir);
  snprintf(one, sizeof one, "%s/one", fx->dir);
  snprintf(two, sizeof two, "%s/two", fx->dir);
  snprintf(cut1, sizeof cut1, "%s/cut1", fx->dir);
  snprintf(cut2, sizeof cut2, "%s/cut2", fx->dir);
  loom_store *s;
  assert_int_equal(loom_store_open(base, LOOM_CREATE, NULL, &s), 0);
  assert_int_equal(commit(s, 2, 1, 0), 0);
  assert_int_equal(loom_store_close(s), 0);
  int torn = 0, second = 0, resurrected = 0;
  for (uint64_t seed1 = 1; seed1 < 400 && torn < 5; seed1++) {
    run_cmd(0, one, cut1);
    run_cmd(1, base, one);
    save_and_cut(one, cut1, seed1, 111);
    if (!second_header(cut1))
      continue;
    loom_position pos;
    assert_int_equal(loom_store_open(cut1, 0, NULL, &s), 0);
    loom_store_position(s, &pos);
    assert_int_equal(loom_store_close(s), 0);
    if (pos.seq != 1)
      continue; /* R survived whole: not the case looked for */
    torn++;
    for (uint64_t seed2 = 1; seed2 < 80; seed2++) {
      run_cmd(0, two, cut2);
      run_cmd(1, cut1, two);
      save_and_cut(two, cut2, seed1 * 1000 + seed2, 222);
      assert_int_equal(loom_store_open(cut2, 0, NULL, &s), 0);
      loom_store_position(s, &pos);
      assert_int_equal(loom_store_close(s), 0);
      if (pos.seq == 2)
        second++;
      if (pos.seq == 2 && pos.commit_time_ns == 111)
        resurrected++;
    }
  }
  run_cmd(0, one, cut1);
  run_cmd(0, two, cut2);
  run_cmd(0, base, NULL);
  print_message("two power cuts: %d torn first saves, %d recoveries at seq 2, "
                "%d of them at the rejected record\n", torn, second, resurrected);
  assert_true(torn > 0);
  assert_int_equal(resurrected, 0);
}

/* Rewrite both meta slots as format version 1 (no log fields). */
static void make_v1(const fixture *fx)
{
  char path[128];
  snprintf(path, sizeof path, "%s/meta", fx->dir);
  int fd = open(path, O_RDWR);
  assert_true(fd >= 0);
  uint8_t slot[512];
  for (int i = 0; i < 2; i++) {
    if (pread(fd, slot, sizeof slot, i * 512) != (ssize_t)sizeof slot)
      continue;
    if (memcmp(slot, "LOOMMETA", 8) != 0)
      continue;
    slot[8] = 1;
    memset(slot + 280, 0, 24);
    uint64_t sum = XXH3_64bits(slot, 504);
    for (int j = 0; j < 8; j++)
      slot[504 + j] = (uint8_t)(sum >> (8 * j));
    assert_int_equal(pwrite(fd, slot, sizeof slot, i * 512), (ssize_t)sizeof slot);
  }
  close(fd);
}

/* A version 1 patch from before to after holding pages [0, k) at version
 * v (header at 0 with its checksum at 104; pages at 4,096; entries and the
 * trailer seeded with the header checksum), cut to len bytes when len is
 * not 0. */
static void write_v1_patch_full(const fixture *fx, const loom_position *before,
                                const loom_position *after, uint32_t flags,
                                uint64_t k, unsigned v, size_t len)
{
  size_t total = 4096 + k * PS + k * 16 + 8;
  uint8_t *b = calloc(1, total);
  memcpy(b, "LOOMPTCH", 8);
  b[8] = 1;
  put64(b + 12, LOOM_PAGE_SIZE); /* u32 page size, then the flags' u32 */
  b[16] = (uint8_t)flags;
  b[17] = b[18] = b[19] = 0;
  uint64_t f[] = {before->epoch, before->seq, before->checksum, before->pages,
                  after->epoch, after->seq, after->checksum, after->pages,
                  (uint64_t)after->commit_time_ns, k};
  for (int i = 0; i < 10; i++)
    put64(b + 24 + 8 * i, f[i]);
  uint64_t sum = XXH3_64bits(b, 104);
  put64(b + 104, sum);
  uint8_t *entries = b + 4096 + k * PS;
  for (uint64_t n = 0; n < k; n++) {
    fill(b + 4096 + n * PS, n, v);
    put64(entries + n * 16, n);
    put64(entries + n * 16 + 8, loom_page_hash(n, b + 4096 + n * PS));
  }
  put64(entries + k * 16, XXH3_64bits_withSeed(entries, k * 16, sum));
  char path[128];
  snprintf(path, sizeof path, "%s/patch", fx->dir);
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  assert_true(fd >= 0);
  len = len ? len : total;
  assert_int_equal(write(fd, b, len), (ssize_t)len);
  close(fd);
  free(b);
}

/* A version 1 patch header (no body) whose before is pos. */
static void write_v1_patch(const fixture *fx, const loom_position *pos)
{
  loom_position after = *pos;
  after.seq++;
  write_v1_patch_full(fx, pos, &after, 0, 0, 0, 4096);
}

/* The position pos's pages [0, 4) at version 1 reach with page 0 at
 * version v instead. */
static loom_position v1_after(const loom_position *pos, unsigned v)
{
  loom_position after = *pos;
  uint8_t *page = malloc(PS);
  fill(page, 0, 1);
  after.checksum -= loom_page_hash(0, page);
  fill(page, 0, v);
  after.checksum += loom_page_hash(0, page);
  free(page);
  after.seq++;
  return after;
}

/* Open the version 1 directory: upgraded (0) at pos, or refused. */
static void expect_upgrade(const fixture *fx, const loom_position *pos)
{
  loom_store *s;
  loom_position got;
  assert_int_equal(loom_inspect(fx->dir, &got), 0);
  assert_true(loom_position_same_epoch(&got, pos));
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &s), 0);
  loom_store_position(s, &got);
  assert_true(loom_position_same_epoch(&got, pos));
  assert_int_equal(loom_store_close(s), 0);
}

static void test_version_1(void **state)
{
  fixture *fx = *state;
  loom_store *s;
  assert_int_equal(loom_store_open(fx->dir, LOOM_CREATE, NULL, &s), 0);
  assert_int_equal(commit(s, 4, 1, 0), 0);
  loom_position pos;
  loom_store_position(s, &pos);
  assert_int_equal(loom_store_close(s), 0);
  /* Its patch still counts (it verifies whole and moves the position):
   * refused, nothing changed. */
  make_v1(fx);
  loom_position after = v1_after(&pos, 9);
  write_v1_patch_full(fx, &pos, &after, 0, 1, 9, 0);
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &s), LOOM_EVERSION);
  /* Fix 8: inspect describes it (the previous release's recovery). */
  loom_position seen;
  assert_int_equal(loom_inspect(fx->dir, &seen), 0);
  assert_true(loom_position_same_epoch(&seen, &after));
  /* Fix 3 of the review: a patch the previous release would discard and
   * leave in place never counts. A torn one (a page, or all but the
   * header) never committed; a page repair keeps the position. */
  write_v1_patch_full(fx, &pos, &after, 0, 1, 9, 4096 + PS + 16);
  expect_upgrade(fx, &pos);
  make_v1(fx);
  write_v1_patch(fx, &pos);
  expect_upgrade(fx, &pos);
  make_v1(fx);
  write_v1_patch_full(fx, &pos, &pos, LOOM_PATCH_REPAIR, 1, 1, 0);
  expect_upgrade(fx, &pos);
  /* Its patch no longer counts (applied: its before is older): upgraded. */
  make_v1(fx);
  loom_position older = pos;
  older.seq--;
  write_v1_patch(fx, &older);
  char path[128];
  snprintf(path, sizeof path, "%s/log", fx->dir);
  unlink(path); /* a version 1 directory has none */
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &s), 0);
  loom_position got;
  loom_store_position(s, &got);
  assert_true(loom_position_same_epoch(&got, &pos));
  assert_int_equal(commit(s, 5, 2, 0), 0);
  assert_int_equal(loom_store_close(s), 0);
  uint64_t computed;
  assert_int_equal(loom_verify(fx->dir, &got, &computed), 0);
  assert_int_equal(got.seq, pos.seq + 1);
}

/* Open a store with a ring of log_bytes (flags as loom_store_open's). */
static loom_store *open_sized(const fixture *fx, unsigned flags, uint64_t log_bytes)
{
  loom_store *s = NULL;
  loom_store_options o = {.flags = flags, .log_bytes = log_bytes};
  assert_int_equal(loom_store_open_with(fx->dir, &o, &s), 0);
  return s;
}

static uint64_t ring_size(loom_store *s)
{
  loom_log_stats st;
  loom_store_log_stats(s, &st);
  return st.size;
}

/* loom_store_open_with: the ring's size is the opener's. Records left in a
 * 1 MiB ring by a process that died are replayed by an open that asks for
 * 2 MiB, which then has it; a read-only open reads the size it finds; the
 * default comes back with loom_store_open, and 1 MiB again cuts the file. */
static void test_open_with_size(void **state)
{
  fixture *fx = *state;
  loom_store *s = NULL;
  loom_store_options bad = {.flags = 0x1000u};
  assert_int_equal(loom_store_open_with(fx->dir, NULL, &s), LOOM_EINVAL);
  assert_int_equal(loom_store_open_with(fx->dir, &bad, &s), LOOM_EINVAL);
  assert_null(s);
  const uint64_t mib = UINT64_C(1) << 20;
  die_with_records_in(fx, 4, mib);
  assert_true(file_size(fx, "log") > 0 && file_size(fx, "log") <= (off_t)mib);
  s = open_sized(fx, 0, 2 * mib);
  loom_position pos;
  loom_store_position(s, &pos);
  assert_int_equal(pos.seq, 4); /* every record replayed */
  assert_int_equal(ring_size(s), 2 * mib);
  assert_int_equal(commit(s, 8, 5, 0), 0);
  assert_int_equal(loom_store_close(s), 0);
  s = open_sized(fx, LOOM_READONLY, 4 * mib);
  assert_int_equal(ring_size(s), 2 * mib); /* read-only: as recorded */
  assert_int_equal(loom_store_close(s), 0);
  assert_int_equal(loom_store_open(fx->dir, 0, NULL, &s), 0);
  assert_int_equal(ring_size(s), LOOM_LOG_BYTES_DEFAULT);
  assert_int_equal(loom_store_close(s), 0);
  s = open_sized(fx, 0, mib + 1); /* rounded up to 4 KiB */
  assert_int_equal(ring_size(s), mib + 4096);
  assert_pages_are(s, 8, 5);
  assert_int_equal(loom_store_close(s), 0);
  assert_true(file_size(fx, "log") <= (off_t)(mib + 4096));
}

/* Commit count pages from first (inside the image) at version v; count 0
 * is a record with no pages. */
static int commit_some(loom_store *s, uint64_t first, uint64_t count, unsigned v)
{
  loom_patch_header h = {.page_count = count};
  loom_store_position(s, &h.before);
  h.after = h.before;
  h.after.seq++;
  for (uint64_t n = first; n < first + count; n++)
    h.after.checksum += filled_hash(n, v) - loom_store_page_hash(s, n);
  return commit_filled(s, &h, first, v);
}

/* THE MERGE STATE (store.c; FORMAT.md "The commit log's memory"): what the
 * checkpoint holds for records not yet merged grows with each record
 * queued, stays within 1/16 of the ring through hundreds of commits of
 * no, one and several pages with the checkpoint thread, and falls back to
 * the queue's slots once everything is checkpointed. */
static void test_merge_state_bounded(void **state)
{
  fixture *fx = *state;
  const uint64_t ring = 256 * 1024;
  loom_store *s = open_sized(fx, LOOM_CREATE | LOOM_CHECKPOINT_DEFER, ring);
  assert_int_equal(commit(s, 8, 1, 0), 0);
  assert_int_equal(loom_store_sync(s), 0);
  loom_log_stats st;
  loom_store_log_stats(s, &st);
  uint64_t last = st.merge_bytes;
  for (unsigned v = 2; v < 6; v++) { /* deferred: each record waits */
    assert_int_equal(commit_some(s, v, 1, v), 0);
    loom_store_log_stats(s, &st);
    assert_int_equal(st.queued, v - 1);
    assert_true(st.merge_bytes > last);
    last = st.merge_bytes;
  }
  assert_int_equal(loom_store_close(s), 0);

  s = open_sized(fx, LOOM_APPLY_ASYNC, ring);
  uint64_t seen = 0;
  for (unsigned v = 0; v < 400; v++) {
    uint64_t count = v % 3 == 0 ? 0 : v % 3 == 1 ? 1 : 5;
    assert_int_equal(commit_some(s, v % 3, count, v), 0);
    loom_store_log_stats(s, &st);
    assert_true(st.merge_bytes <= st.size / 16);
    if (st.merge_bytes > seen)
      seen = st.merge_bytes;
  }
  assert_int_equal(loom_store_sync(s), 0);
  loom_store_log_stats(s, &st);
  assert_int_equal(st.size, ring);
  assert_true(seen > 0);
  assert_true(st.merge_peak_bytes >= seen);
  assert_true(st.merge_peak_bytes <= ring / 16);
  assert_true(st.merge_bytes < st.merge_peak_bytes);
  assert_true(st.merge_bytes <= 64 * sizeof(void *)); /* the queue's slots */
  assert_int_equal(st.recent_bytes, 0); /* the arena's, not the store's */
  assert_int_equal(loom_store_close(s), 0);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_deferred_fill_and_sync, setup, teardown),
      cmocka_unit_test_setup_teardown(test_read_committed_without_checkpoint,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_died_with_records, setup, teardown),
      cmocka_unit_test_setup_teardown(test_version_1, setup, teardown),
      cmocka_unit_test_setup_teardown(test_log_lost, setup, teardown),
      cmocka_unit_test_setup_teardown(test_header_enospc, setup, teardown),
      cmocka_unit_test_setup_teardown(test_record_one_write, setup, teardown),
      cmocka_unit_test_setup_teardown(test_commit_asks_no_times, setup, teardown),
      cmocka_unit_test_setup_teardown(test_statx_failure_passes, setup, teardown),
      cmocka_unit_test_setup_teardown(test_checkpoint_one_log_read, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_patch_add_stable, setup, teardown),
      cmocka_unit_test_setup_teardown(test_forged_sizes, setup, teardown),
      cmocka_unit_test_setup_teardown(test_growth_after_queued_shrink, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_torn_tail_not_resurrected, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_two_power_cuts, setup, teardown),
      cmocka_unit_test_setup_teardown(test_scan_ends_at_first_bad_record, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_open_with_size, setup, teardown),
      cmocka_unit_test_setup_teardown(test_merge_state_bounded, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
