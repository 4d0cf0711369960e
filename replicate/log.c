/*
 * log.c: the replication log, frames kept on disk in segment files.
 *
 * DESIGN
 *
 * <image dir>/replog/ holds segment files seg-<first seq, 20 digits>.log:
 *
 *     segment header (32 bytes)   magic "LSREPLOG", version, first seq,
 *                                 XXH3-64 of the bytes before it
 *     record, record, ...         each: magic "LSRC", frame length, seq,
 *                                 epoch, XXH3-64 of its first 24 bytes and
 *                                 the frame; then the frame
 *
 * (byte tables in docs/FRAME.md). Records are in seq order without gaps,
 * across segments too; epochs never decrease.
 *
 * Invariants:
 *   1. Every record in the index is durable: it was fsynced before it was
 *      indexed, in a file whose directory entry was fsynced when the file
 *      was created.
 *   2. Only the newest segment grows, and only it can end in a torn record
 *      (older segments were complete before the next one was created).
 *   3. The index lists the segments in first-seq order; only the newest
 *      may be empty.
 *
 * Appending (one record):
 *   1. If the newest segment would pass segment_bytes (and holds a
 *      record), create the next: write its header, fsync the directory,
 *      or a crash could lose the file with its records. The header is
 *      made durable by the first record's fsync (step 3).
 *   2. pwrite the record at the segment's end. On failure, truncate the
 *      half-written record away; if even that fails, poison the handle.
 *   3. fsync the segment. On failure, poison the handle: after a failed
 *      fsync the kernel may have dropped the dirty pages, so what is on
 *      disk is unknown until the log is opened (and scanned) again.
 *   4. Index the record; drop the oldest segments while over max_bytes.
 *
 * Opening scans every segment, checking every record. The log is a cache
 * of what the store holds, so damage costs frames, never the open:
 *   O1. In the newest segment, the first record that is cut short or
 *       fails its checks ends the log (a crash during step 2 or 3 left
 *       it, or the disk damaged it): the file is truncated there and
 *       fsynced. A newest segment whose header fails its checks (a crash
 *       during step 1) is removed.
 *   O2. An older segment that fails its checks anywhere is removed whole,
 *       with every segment older than it: what is kept is the contiguous
 *       chain that ends at the newest good record.
 *   O3. Segments that do not chain (a seq gap, a decreasing epoch, an
 *       empty older segment) are resolved the same way: the older side
 *       goes.
 * Each removal or cut is reported through opt->on_repair (library code
 * does not print). A standby that needs a dropped frame gets a base
 * image (REPLICATE_ELOG_GONE). Only a segment of an unknown version
 * (REPLICATE_ELOG_VERSION) and I/O errors stop the open.
 *
 * Dropping a segment: unlink it, fsync the directory (a crash may bring
 * it back, which is harmless: its records are still contiguous).
 *
 * LOG SYNC (replicate_log_options.sync). With REPLICATE_LOG_SYNC_EACH,
 * the default, appending is the four steps above. With _DEFERRED (and
 * _BACKGROUND, where a thread of the log calls replicate_log_sync), step 3
 * is left out and invariant 1 reads: every record in the index was
 * written, and is durable once a replicate_log_sync that started after
 * its append has returned. Invariant 2 is kept by step 1, which fsyncs the
 * newest segment before creating the next one when records of it wait:
 * only the newest segment can lose records in a power cut, and O1 cuts it
 * at its first torn record, as after a crash during step 3. The log is
 * then a cache that may end before the store (the primary's case: the
 * store's commit is durable before the frame is appended); what it lost
 * costs a base image, never a wrong frame (every record is checksummed).
 * replicate_log_sync fsyncs the newest segment outside the lock, so that
 * appends (the save path) never wait for it: it notes which segment it
 * syncs, and dropping that segment meanwhile leaves its descriptor open
 * until the fsync has returned (closing it could hand its number to a
 * file opened meanwhile).
 *
 * The directory is listed with readdir() on the descriptor the loom_io
 * opened: loom_io has no listing operation. Everything else goes through
 * the loom_io.
 */
#include "array.h"
#include "frame.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#include "clock.h"
#include "loom_io.h"

#define LOG_DIR "replog"
#define SEGMENT_MAGIC "LSREPLOG"
#define SEGMENT_VERSION 1u
#define SEGMENT_HEADER_SIZE 32u
#define RECORD_MAGIC "LSRC"
#define RECORD_HEADER_SIZE 32u
#define RECORD_CHECKSUM_OFF 24u
#define SEGMENT_NAME_LEN 28u /* "seg-" + 20 digits + ".log" */
#define SCAN_CHUNK (1u << 20)

#define DEFAULT_SEGMENT_BYTES (16ull << 20)
#define DEFAULT_MAX_BYTES REPLICATE_LOG_MAX_BYTES_DEFAULT
#define MIN_SEGMENT_BYTES (64ull << 10)

typedef struct log_segment {
  uint64_t first_seq;
  uint64_t count;      /* records */
  uint64_t *offsets;   /* offsets[i]: record of seq first_seq + i */
  size_t offsets_cap;
  uint64_t size;       /* bytes, header included: where the next record goes */
  uint64_t first_epoch;/* of its oldest record; 0 if empty */
  uint64_t last_epoch; /* of its newest record; 0 if empty */
  int fd;
} log_segment;

struct replicate_log {
  pthread_mutex_t lock;
  const loom_io *io;
  int dirfd;
  uint64_t segment_bytes;
  uint64_t max_bytes;
  uint64_t hold;           /* replicate_log_hold: retain keeps seqs >= it (0: none) */
  log_segment *segs;
  size_t nsegs;
  size_t segs_cap;
  uint64_t bytes;
  uint64_t dropped;
  bool poisoned;
  replicate_log_repair_fn on_repair;
  void *repair_ctx;
  XXH3_state_t *hash;
  uint8_t *chunk;      /* SCAN_CHUNK bytes */
  /* LOG SYNC */
  replicate_log_sync_mode sync_mode;
  uint64_t written;        /* deferred appends since open */
  uint64_t synced;         /* how many of them are durable */
  uint64_t syncs;
  bool syncing;            /* a replicate_log_sync is in its fsync */
  int syncing_fd;          /* of the segment it fsyncs */
  int syncing_closed_fd;   /* that fd, its segment dropped meanwhile (or -1) */
  int sync_error;          /* errno of the fsync that poisoned the handle */
  pthread_cond_t cond;     /* records wait for a sync; a sync ended */
  pthread_cond_t gather;   /* the sync thread's pause (CLOCK_MONOTONIC):
                              only stopping ends it early */
  pthread_t thread;        /* REPLICATE_LOG_SYNC_BACKGROUND */
  bool thread_started, stopping;
};

/* ---------------------------------------------------------------------- */
/* I/O helpers: loom_io returns -errno; these return errno values. */

static void segment_name(char name[SEGMENT_NAME_LEN + 1], uint64_t first_seq)
{
  snprintf(name, SEGMENT_NAME_LEN + 1, "seg-%020" PRIu64 ".log", first_seq);
}

/* Parse a segment file name; false for any other name. */
static bool segment_name_parse(const char *name, uint64_t *first_seq)
{
  if (strlen(name) != SEGMENT_NAME_LEN) return false;
  if (strncmp(name, "seg-", 4) != 0 || strcmp(name + 24, ".log") != 0)
    return false;
  uint64_t v = 0;
  for (int i = 4; i < 24; i++) {
    if (name[i] < '0' || name[i] > '9') return false;
    uint64_t digit = (uint64_t)(name[i] - '0');
    if (v > (UINT64_MAX - digit) / 10) return false;
    v = v * 10 + digit;
  }
  *first_seq = v;
  return true;
}

/* Read len bytes at off: 0 if all were read, REPLICATE_ELOG_CORRUPT if the
 * file ends first, or an errno value. */
static int read_exact(replicate_log *log, int fd, void *buf, size_t len,
                      uint64_t off)
{
  ssize_t got = log->io->pread(log->io->ctx, fd, buf, len, (off_t)off);
  if (got < 0) return (int)-got;
  return (size_t)got == len ? 0 : REPLICATE_ELOG_CORRUPT;
}

static int write_exact(replicate_log *log, int fd, const void *buf, size_t len,
                       uint64_t off)
{
  ssize_t put = log->io->pwrite(log->io->ctx, fd, buf, len, (off_t)off);
  if (put < 0) return (int)-put;
  return (size_t)put == len ? 0 : EIO;
}

static int io_result(int rc) { return rc < 0 ? -rc : 0; }

/* ---------------------------------------------------------------------- */
/* Formats */

static void segment_header_write(uint8_t h[SEGMENT_HEADER_SIZE],
                                 uint64_t first_seq)
{
  memcpy(h, SEGMENT_MAGIC, 8);
  put_le32(h + 8, SEGMENT_VERSION);
  put_le32(h + 12, 0);
  put_le64(h + 16, first_seq);
  put_le64(h + 24, XXH3_64bits(h, 24));
}

/* 0, REPLICATE_ELOG_CORRUPT (not a segment header: torn or damaged) or
 * REPLICATE_ELOG_VERSION. */
static int segment_header_check(const uint8_t h[SEGMENT_HEADER_SIZE],
                                uint64_t first_seq)
{
  if (memcmp(h, SEGMENT_MAGIC, 8) != 0) return REPLICATE_ELOG_CORRUPT;
  if (get_le64(h + 24) != XXH3_64bits(h, 24)) return REPLICATE_ELOG_CORRUPT;
  if (get_le32(h + 8) != SEGMENT_VERSION) return REPLICATE_ELOG_VERSION;
  if (get_le32(h + 12) != 0 || get_le64(h + 16) != first_seq)
    return REPLICATE_ELOG_CORRUPT;
  return 0;
}

static void record_header_fill(uint8_t h[RECORD_HEADER_SIZE], uint32_t len,
                               uint64_t seq, uint64_t epoch)
{
  memcpy(h, RECORD_MAGIC, 4);
  put_le32(h + 4, len);
  put_le64(h + 8, seq);
  put_le64(h + 16, epoch);
}

/* ---------------------------------------------------------------------- */
/* The segment index */

static log_segment *newest(replicate_log *log)
{
  return log->nsegs ? &log->segs[log->nsegs - 1] : NULL;
}

static bool log_empty(const replicate_log *log)
{
  for (size_t i = 0; i < log->nsegs; i++)
    if (log->segs[i].count > 0) return false;
  return true;
}

static uint64_t oldest_seq(const replicate_log *log)
{
  return log->segs[0].first_seq;
}

static uint64_t newest_seq(const replicate_log *log)
{
  const log_segment *s = &log->segs[log->nsegs - 1];
  return s->first_seq + s->count - 1;
}

/* The newest record's epoch (the newest segment may be empty). */
static uint64_t newest_epoch(const replicate_log *log)
{
  for (size_t i = log->nsegs; i > 0; i--)
    if (log->segs[i - 1].count > 0) return log->segs[i - 1].last_epoch;
  return 0;
}

static int offsets_reserve(log_segment *s, uint64_t need)
{
  if (need > SIZE_MAX) return ENOMEM;
  return loom_array_reserve(&s->offsets, &s->offsets_cap, (size_t)need,
                            sizeof *s->offsets);
}

static int segs_reserve(replicate_log *log, size_t need)
{
  return loom_array_reserve(&log->segs, &log->segs_cap, need,
                            sizeof *log->segs);
}

/* The segment holding seq (which the log holds). */
static log_segment *segment_of(replicate_log *log, uint64_t seq)
{
  size_t lo = 0, hi = log->nsegs;
  while (hi - lo > 1) {
    size_t mid = lo + (hi - lo) / 2;
    if (log->segs[mid].first_seq <= seq) lo = mid;
    else hi = mid;
  }
  return &log->segs[lo];
}

/* Remove the oldest segment (its file, then its entry). */
static int drop_oldest(replicate_log *log)
{
  log_segment *s = &log->segs[0];
  char name[SEGMENT_NAME_LEN + 1];
  segment_name(name, s->first_seq);
  int rc = io_result(log->io->unlink(log->io->ctx, log->dirfd, name, 0));
  if (rc != 0) return rc;
  if (log->syncing && log->syncing_fd == s->fd)
    log->syncing_closed_fd = s->fd; /* closed when its fsync returns */
  else
    log->io->close(log->io->ctx, s->fd);
  free(s->offsets);
  log->bytes -= s->size;
  memmove(log->segs, log->segs + 1, (log->nsegs - 1) * sizeof *log->segs);
  log->nsegs--;
  log->dropped++;
  /* Or the file may come back after a crash (harmless, but not dropped). */
  return io_result(log->io->fsync(log->io->ctx, log->dirfd));
}

/* ---------------------------------------------------------------------- */
/* Opening: scanning the segments */

/* Check the record at off in s (0), or say why not: REPLICATE_ELOG_CORRUPT
 * the record is damaged or cut short, or an errno value. On 0, *next is
 * the offset after it, or off itself when the file ends there cleanly. */
static int scan_record(replicate_log *log, log_segment *s, uint64_t off,
                       uint64_t *next)
{
  uint8_t h[RECORD_HEADER_SIZE];
  ssize_t got = log->io->pread(log->io->ctx, s->fd, h, sizeof h, (off_t)off);
  if (got < 0) return (int)-got;
  *next = off;
  if (got == 0) return 0;
  if ((size_t)got < sizeof h) return REPLICATE_ELOG_CORRUPT;
  uint32_t len = get_le32(h + 4);
  uint64_t seq = get_le64(h + 8);
  uint64_t epoch = get_le64(h + 16);
  if (memcmp(h, RECORD_MAGIC, 4) != 0 || len < REPLICATE_HEADER_SIZE ||
      seq != s->first_seq + s->count || epoch < s->last_epoch)
    return REPLICATE_ELOG_CORRUPT;

  XXH3_64bits_reset(log->hash);
  XXH3_64bits_update(log->hash, h, RECORD_CHECKSUM_OFF);
  uint64_t pos = off + RECORD_HEADER_SIZE;
  for (uint32_t left = len; left > 0;) {
    size_t step = left < SCAN_CHUNK ? left : SCAN_CHUNK;
    int rc = read_exact(log, s->fd, log->chunk, step, pos);
    if (rc != 0) return rc;
    XXH3_64bits_update(log->hash, log->chunk, step);
    pos += step;
    left -= (uint32_t)step;
  }
  if (XXH3_64bits_digest(log->hash) != get_le64(h + RECORD_CHECKSUM_OFF))
    return REPLICATE_ELOG_CORRUPT;
  s->last_epoch = epoch;
  *next = pos;
  return 0;
}

/* Tell the caller about a repair made while opening (O1-O3). */
static void report(replicate_log *log, replicate_log_repair_kind kind,
                   uint64_t file_seq, uint64_t offset, uint64_t first_seq,
                   uint64_t last_seq)
{
  if (log->on_repair == NULL) return;
  char name[SEGMENT_NAME_LEN + 1];
  segment_name(name, file_seq);
  replicate_log_repair r = {.kind = kind, .file = name, .offset = offset,
                            .first_seq = first_seq, .last_seq = last_seq};
  log->on_repair(log->repair_ctx, &r);
}

/* Scan segment s (already opened). Damage at a record ends an older
 * segment's scan with REPLICATE_ELOG_CORRUPT (*damage: its offset); the
 * newest segment is cut there instead (O1). */
static int scan_segment(replicate_log *log, log_segment *s, bool is_newest,
                        uint64_t *damage)
{
  uint64_t off = SEGMENT_HEADER_SIZE;
  for (;;) {
    uint64_t next = 0;
    int rc = scan_record(log, s, off, &next);
    if (rc == 0 && next == off) break; /* the end */
    if (rc == REPLICATE_ELOG_CORRUPT) {
      *damage = off;
      if (!is_newest) return rc;
      rc = io_result(log->io->ftruncate(log->io->ctx, s->fd, (off_t)off));
      if (rc == 0) rc = io_result(log->io->fsync(log->io->ctx, s->fd));
      if (rc != 0) return rc;
      report(log, REPLICATE_LOG_CUT, s->first_seq, off, s->first_seq + s->count,
             0);
      break;
    }
    if (rc != 0) return rc;
    rc = offsets_reserve(s, s->count + 1);
    if (rc != 0) return rc;
    if (s->count == 0) s->first_epoch = s->last_epoch;
    s->offsets[s->count++] = off;
    off = next;
  }
  s->size = off;
  return 0;
}

/* The first seqs of the segment files in the directory, sorted. */
static int list_segments(replicate_log *log, uint64_t **out, size_t *count)
{
  int fd = dup(log->dirfd);
  if (fd < 0) return errno;
  DIR *dir = fdopendir(fd);
  if (dir == NULL) {
    int rc = errno;
    close(fd);
    return rc;
  }
  rewinddir(dir);
  uint64_t *seqs = NULL;
  size_t n = 0, cap = 0;
  int rc = 0;
  struct dirent *entry;
  errno = 0;
  while ((entry = readdir(dir)) != NULL) {
    uint64_t first_seq;
    if (!segment_name_parse(entry->d_name, &first_seq)) continue;
    if ((rc = loom_array_reserve(&seqs, &cap, n + 1, sizeof *seqs)) != 0)
      break;
    seqs[n++] = first_seq;
  }
  if (rc == 0 && errno != 0) rc = errno;
  closedir(dir);
  if (rc != 0) {
    free(seqs);
    return rc;
  }
  if (n > 0) qsort(seqs, n, sizeof *seqs, loom_u64_cmp);
  *out = seqs;
  *count = n;
  return 0;
}

/* Open, check and scan the segment of first_seq; is_newest as above.
 * Returns 0 with the segment added to the index, 1 if it was the newest
 * and its header failed its checks (O1: removed), REPLICATE_ELOG_CORRUPT
 * for an older segment damaged at *damage (closed, not indexed, still on
 * disk), or another error. */
static int load_segment(replicate_log *log, uint64_t first_seq, bool is_newest,
                        uint64_t *damage)
{
  char name[SEGMENT_NAME_LEN + 1];
  segment_name(name, first_seq);
  int fd = log->io->open(log->io->ctx, log->dirfd, name, O_RDWR | O_CLOEXEC, 0);
  if (fd < 0) return -fd;
  log_segment s = {.first_seq = first_seq, .fd = fd};
  uint8_t h[SEGMENT_HEADER_SIZE];
  *damage = 0;
  int rc = read_exact(log, fd, h, sizeof h, 0);
  if (rc == 0 || rc == REPLICATE_ELOG_CORRUPT) {
    int check = rc ? rc : segment_header_check(h, first_seq);
    if (check == REPLICATE_ELOG_CORRUPT && is_newest) {
      /* Created, then the crash came before its header was durable. */
      log->io->close(log->io->ctx, fd);
      rc = io_result(log->io->unlink(log->io->ctx, log->dirfd, name, 0));
      if (rc == 0) rc = io_result(log->io->fsync(log->io->ctx, log->dirfd));
      if (rc == 0) report(log, REPLICATE_LOG_CUT, first_seq, 0, first_seq, 0);
      return rc != 0 ? rc : 1;
    }
    rc = check;
  }
  if (rc == 0) rc = scan_segment(log, &s, is_newest, damage);
  if (rc == 0) rc = segs_reserve(log, log->nsegs + 1);
  if (rc != 0) {
    log->io->close(log->io->ctx, fd);
    free(s.offsets);
    return rc;
  }
  log->segs[log->nsegs++] = s;
  log->bytes += s.size;
  return 0;
}

/* Invariant 3, the seq chain and non-decreasing epochs: whether segment b
 * continues segment a. */
static bool chained(const log_segment *a, const log_segment *b)
{
  return a->count > 0 && b->first_seq == a->first_seq + a->count &&
         (b->count == 0 || b->first_epoch >= a->last_epoch);
}

/* O2, O3: remove the oldest indexed segments until keep are left. */
static int drop_unchained(replicate_log *log, size_t keep)
{
  while (log->nsegs > keep) {
    uint64_t first = log->segs[0].first_seq, count = log->segs[0].count;
    int rc = drop_oldest(log);
    if (rc != 0) return rc;
    report(log, REPLICATE_LOG_UNCHAINED, first, 0, first, first + count - 1);
  }
  return 0;
}

/* O2: remove the damaged segment of file_seq (not indexed), damaged at
 * offset, and every segment before it; next_seq is the next file's. */
static int drop_damaged(replicate_log *log, uint64_t file_seq, uint64_t offset,
                        uint64_t next_seq)
{
  int rc = drop_unchained(log, 0);
  if (rc != 0) return rc;
  char name[SEGMENT_NAME_LEN + 1];
  segment_name(name, file_seq);
  rc = io_result(log->io->unlink(log->io->ctx, log->dirfd, name, 0));
  /* Or the damaged file may come back after a crash (and be dropped again). */
  if (rc == 0) rc = io_result(log->io->fsync(log->io->ctx, log->dirfd));
  if (rc == 0)
    report(log, REPLICATE_LOG_DAMAGED, file_seq, offset, file_seq, next_seq - 1);
  return rc;
}

/* Load the segments of the sorted first seqs, oldest first, keeping the
 * chain that ends at the newest good record (O1-O3). */
static int load_segments(replicate_log *log, const uint64_t *seqs, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    bool is_newest = i + 1 == n;
    uint64_t damage;
    int rc = load_segment(log, seqs[i], is_newest, &damage);
    if (rc == REPLICATE_ELOG_CORRUPT && !is_newest)
      rc = drop_damaged(log, seqs[i], damage, seqs[i + 1]);
    else if (rc == 0 && log->nsegs > 1 &&
             !chained(&log->segs[log->nsegs - 2], newest(log)))
      rc = drop_unchained(log, 1);
    else if (rc == 1)
      rc = 0;
    if (rc != 0) return rc;
  }
  return 0;
}

static int open_directory(const loom_io *io, const char *image_dir,
                          int *out)
{
  int imgfd = io->open(io->ctx, AT_FDCWD, image_dir,
                       O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (imgfd < 0) return -imgfd;
  int flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
  int fd = io->open(io->ctx, imgfd, LOG_DIR, flags, 0);
  if (fd == -ENOENT) {
    int rc = io_result(io->mkdir(io->ctx, imgfd, LOG_DIR, 0700));
    /* The new directory's entry lives in the image directory. */
    if (rc == 0) rc = io_result(io->fsync(io->ctx, imgfd));
    fd = rc != 0 ? -rc : io->open(io->ctx, imgfd, LOG_DIR, flags, 0);
  }
  io->close(io->ctx, imgfd);
  if (fd < 0) return -fd;
  *out = fd;
  return 0;
}

static void *sync_thread(void *arg);

int replicate_log_close(replicate_log *log)
{
  if (log == NULL) return 0;
  if (log->thread_started) {
    pthread_mutex_lock(&log->lock);
    log->stopping = true;
    pthread_cond_broadcast(&log->cond);
    pthread_cond_broadcast(&log->gather);
    pthread_mutex_unlock(&log->lock);
    pthread_join(log->thread, NULL);
  }
  int first_error = log->dirfd >= 0 ? replicate_log_sync(log) : 0;
  /* A handle poisoned by a background fsync has not said so yet: its
   * records may not be durable. Another poison was returned when met. */
  if (first_error == REPLICATE_EPANIC) first_error = log->sync_error;
  for (size_t i = 0; i < log->nsegs; i++) {
    int rc = io_result(log->io->close(log->io->ctx, log->segs[i].fd));
    if (first_error == 0) first_error = rc;
    free(log->segs[i].offsets);
  }
  if (log->dirfd >= 0) {
    int rc = io_result(log->io->close(log->io->ctx, log->dirfd));
    if (first_error == 0) first_error = rc;
  }
  free(log->segs);
  free(log->chunk);
  XXH3_freeState(log->hash);
  pthread_cond_destroy(&log->cond);
  pthread_cond_destroy(&log->gather);
  pthread_mutex_destroy(&log->lock);
  free(log);
  return first_error;
}

/* Retention drops whole segments: keep them well under the cap (an
 * eighth of it, within [MIN_SEGMENT_BYTES, DEFAULT_SEGMENT_BYTES]). */
static uint64_t segment_bytes_for(uint64_t max_bytes)
{
  uint64_t eighth = max_bytes / 8;
  if (eighth >= DEFAULT_SEGMENT_BYTES) return DEFAULT_SEGMENT_BYTES;
  return eighth > MIN_SEGMENT_BYTES ? eighth : MIN_SEGMENT_BYTES;
}

int replicate_log_open(const char *image_dir, const replicate_log_options *opt,
                       const loom_io *io, replicate_log **out)
{
  assert(image_dir != NULL && out != NULL);
  replicate_log *log = calloc(1, sizeof *log);
  if (log == NULL) return ENOMEM;
  log->io = io ? io : loom_io_posix();
  log->dirfd = -1;
  log->max_bytes = opt && opt->max_bytes ? opt->max_bytes : DEFAULT_MAX_BYTES;
  log->segment_bytes = opt && opt->segment_bytes
                           ? opt->segment_bytes
                           : segment_bytes_for(log->max_bytes);
  log->on_repair = opt ? opt->on_repair : NULL;
  log->repair_ctx = opt ? opt->repair_ctx : NULL;
  log->sync_mode = opt ? opt->sync : REPLICATE_LOG_SYNC_EACH;
  log->syncing_closed_fd = -1;
  if (pthread_mutex_init(&log->lock, NULL) != 0) {
    free(log);
    return ENOMEM;
  }
  pthread_condattr_t monotonic;
  bool attr = pthread_condattr_init(&monotonic) == 0;
  if (!attr || pthread_condattr_setclock(&monotonic, CLOCK_MONOTONIC) != 0 ||
      pthread_cond_init(&log->gather, &monotonic) != 0) {
    if (attr) pthread_condattr_destroy(&monotonic);
    pthread_mutex_destroy(&log->lock);
    free(log);
    return ENOMEM;
  }
  pthread_condattr_destroy(&monotonic);
  if (pthread_cond_init(&log->cond, NULL) != 0) {
    pthread_cond_destroy(&log->gather);
    pthread_mutex_destroy(&log->lock);
    free(log);
    return ENOMEM;
  }
  log->hash = XXH3_createState();
  log->chunk = malloc(SCAN_CHUNK);
  int rc = log->hash && log->chunk ? 0 : ENOMEM;
  if (rc == 0) rc = open_directory(log->io, image_dir, &log->dirfd);

  uint64_t *seqs = NULL;
  size_t n = 0;
  if (rc == 0) rc = list_segments(log, &seqs, &n);
  if (rc == 0) rc = load_segments(log, seqs, n);
  free(seqs);
  if (rc == 0 && log->sync_mode == REPLICATE_LOG_SYNC_BACKGROUND) {
    rc = pthread_create(&log->thread, NULL, sync_thread, log);
    log->thread_started = rc == 0;
  }
  if (rc != 0) {
    replicate_log_close(log);
    return rc;
  }
  *out = log;
  return 0;
}

const char *replicate_log_repair_describe(const replicate_log_repair *r,
                                          char *buf, size_t len)
{
  snprintf(buf, len, "%s/%s: repaired", LOG_DIR, r->file);
  switch (r->kind) {
  case REPLICATE_LOG_CUT:
    if (r->offset == 0)
      snprintf(buf, len, "%s/%s: header torn or damaged: removed, with seq %"
               PRIu64 " and any after it in that file", LOG_DIR, r->file,
               r->first_seq);
    else
      snprintf(buf, len, "%s/%s: torn or damaged record at byte %" PRIu64
               ": cut there, dropping seq %" PRIu64 " and any after it in "
               "that file", LOG_DIR, r->file, r->offset, r->first_seq);
    break;
  case REPLICATE_LOG_DAMAGED:
    snprintf(buf, len, "%s/%s: damaged at byte %" PRIu64 ": removed, with "
             "seqs %" PRIu64 "-%" PRIu64, LOG_DIR, r->file, r->offset,
             r->first_seq, r->last_seq);
    break;
  case REPLICATE_LOG_UNCHAINED:
    if (r->last_seq < r->first_seq)
      snprintf(buf, len, "%s/%s: older than a damaged segment or a break in "
               "the chain: removed (it held no record)", LOG_DIR, r->file);
    else
      snprintf(buf, len, "%s/%s: older than a damaged segment or a break in "
               "the chain: removed, with seqs %" PRIu64 "-%" PRIu64, LOG_DIR,
               r->file, r->first_seq, r->last_seq);
    break;
  }
  return buf;
}

/* ---------------------------------------------------------------------- */
/* Appending */

/* Step 1 of appending: a new newest segment for records from first_seq. */
static int create_segment(replicate_log *log, uint64_t first_seq)
{
  int rc = segs_reserve(log, log->nsegs + 1);
  if (rc != 0) return rc;
  log_segment *old = newest(log);
  if (old != NULL && log->synced < log->written) {
    /* LOG SYNC: only the newest segment may hold records not durable. */
    rc = io_result(log->io->fsync(log->io->ctx, old->fd));
    if (rc != 0) {
      log->poisoned = true;
      return rc;
    }
    log->synced = log->written;
  }
  char name[SEGMENT_NAME_LEN + 1];
  segment_name(name, first_seq);
  int fd = log->io->open(log->io->ctx, log->dirfd, name,
                         O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return -fd;
  uint8_t h[SEGMENT_HEADER_SIZE];
  segment_header_write(h, first_seq);
  rc = write_exact(log, fd, h, sizeof h, 0);
  /* Or the file, and every record appended to it, may be gone after a
   * crash. (The header needs no fsync of its own: the first record's
   * fsync makes it durable, and a header torn before that is recognised
   * and its file removed when the log is opened.) */
  if (rc == 0) rc = io_result(log->io->fsync(log->io->ctx, log->dirfd));
  if (rc != 0) {
    log->io->close(log->io->ctx, fd);
    log->io->unlink(log->io->ctx, log->dirfd, name, 0);
    return rc;
  }
  log->segs[log->nsegs++] =
      (log_segment){.first_seq = first_seq, .size = SEGMENT_HEADER_SIZE, .fd = fd};
  log->bytes += SEGMENT_HEADER_SIZE;
  return 0;
}

/* Limits for frames the log accepts: anything a record can hold. */
static const replicate_limits log_frame_limits = {
    .max_frame_pages = UINT32_MAX,
    .max_image_pages = UINT64_MAX,
    .max_payload_bytes = UINT32_MAX - REPLICATE_HEADER_SIZE,
};

static int append_locked(replicate_log *log, const void *frame, size_t len)
{
  replicate_frame_info info;
  int rc = replicate_frame_parse_header(frame, len, &log_frame_limits, &info);
  if (rc != 0) return rc;
  if (len < info.frame_size) return REPLICATE_ETRUNCATED;
  if (len > info.frame_size) return REPLICATE_ETRAILING;
  if (info.kind != REPLICATE_KIND_COMMIT) return REPLICATE_EKIND;
  if (info.flags & REPLICATE_FRAME_COALESCED) return REPLICATE_EINVAL;
  uint64_t seq = info.after.seq;
  log_segment *s = newest(log);
  if (!log_empty(log)) {
    if (info.before.seq != newest_seq(log) || info.epoch < newest_epoch(log))
      return REPLICATE_ENOT_CONTIGUOUS;
  } else if (s != NULL && s->first_seq != seq) {
    /* An empty segment left by a failed append, for another seq. */
    rc = drop_oldest(log);
    if (rc != 0) return rc;
    s = NULL;
  }

  uint64_t record = RECORD_HEADER_SIZE + (uint64_t)len;
  if (s == NULL || (s->count > 0 && s->size + record > log->segment_bytes)) {
    rc = create_segment(log, seq);
    if (rc != 0) return rc;
    s = newest(log);
  }
  rc = offsets_reserve(s, s->count + 1);
  if (rc != 0) return rc;

  /* Step 2. */
  uint8_t h[RECORD_HEADER_SIZE];
  record_header_fill(h, (uint32_t)len, seq, info.epoch);
  XXH3_64bits_reset(log->hash);
  XXH3_64bits_update(log->hash, h, RECORD_CHECKSUM_OFF);
  XXH3_64bits_update(log->hash, frame, len);
  put_le64(h + RECORD_CHECKSUM_OFF, XXH3_64bits_digest(log->hash));
  rc = write_exact(log, s->fd, h, sizeof h, s->size);
  if (rc == 0) rc = write_exact(log, s->fd, frame, len, s->size + sizeof h);
  if (rc != 0) {
    if (log->io->ftruncate(log->io->ctx, s->fd, (off_t)s->size) < 0)
      log->poisoned = true;
    return rc;
  }
  /* Step 3 (LOG SYNC: left to replicate_log_sync when deferred). */
  if (log->sync_mode == REPLICATE_LOG_SYNC_EACH) {
    rc = io_result(log->io->fsync(log->io->ctx, s->fd));
    if (rc != 0) {
      log->poisoned = true;
      return rc;
    }
  } else {
    log->written++;
    pthread_cond_broadcast(&log->cond);
  }
  /* Step 4. */
  if (s->count == 0) s->first_epoch = info.epoch;
  s->offsets[s->count++] = s->size;
  s->size += record;
  s->last_epoch = info.epoch;
  log->bytes += record;
  /* The cap is kept on a best-effort basis here: the append is durable
   * whatever happens next, and a failed drop is retried next time. */
  while (log->bytes > log->max_bytes && log->nsegs > 1)
    if (drop_oldest(log) != 0) break;
  return 0;
}

int replicate_log_append(replicate_log *log, const void *frame, size_t len)
{
  assert(log != NULL && frame != NULL);
  pthread_mutex_lock(&log->lock);
  int rc = log->poisoned ? REPLICATE_EPANIC : append_locked(log, frame, len);
  pthread_mutex_unlock(&log->lock);
  return rc;
}

/* LOG SYNC: under the lock; fsyncs the newest segment with the lock
 * released, so appends and reads go on meanwhile. */
static int sync_locked(replicate_log *log)
{
  while (log->syncing) /* its fsync may have started before our records */
    pthread_cond_wait(&log->cond, &log->lock);
  if (log->poisoned) return REPLICATE_EPANIC;
  if (log->nsegs == 0) log->synced = log->written; /* reset: nothing left */
  if (log->synced >= log->written) return 0;
  uint64_t upto = log->written;
  log_segment *s = newest(log);
  int fd = s->fd;
  log->syncing = true;
  log->syncing_fd = fd;
  pthread_mutex_unlock(&log->lock);
  /* Records of older segments were made durable by step 1. */
  int rc = io_result(log->io->fsync(log->io->ctx, fd));
  pthread_mutex_lock(&log->lock);
  log->syncing = false;
  if (log->syncing_closed_fd >= 0) {
    log->io->close(log->io->ctx, log->syncing_closed_fd);
    log->syncing_closed_fd = -1;
  }
  pthread_cond_broadcast(&log->cond);
  if (rc != 0) {
    log->poisoned = true;
    log->sync_error = rc;
    return rc;
  }
  log->syncs++;
  if (upto > log->synced) log->synced = upto;
  return 0;
}

int replicate_log_sync(replicate_log *log)
{
  assert(log != NULL);
  pthread_mutex_lock(&log->lock);
  int rc = sync_locked(log);
  pthread_mutex_unlock(&log->lock);
  return rc;
}

/* REPLICATE_LOG_SYNC_BACKGROUND: sync whenever records wait, at most
 * once per SYNC_GATHER_NS. Syncing at once after each append made it one
 * fsync per save beside the store's own (a device flush each, on the same
 * disk as the commit record's), for nothing a standby waits for: frames
 * ship before they are logged (ship.c I1). What the gathering costs is a
 * power cut's window: up to 5 ms more of the log's tail, which a standby
 * that still needed it gets as a base image instead. */
#define SYNC_GATHER_NS (LOOM_NS_PER_S / 200) /* 5 ms */

static void *sync_thread(void *arg)
{
  replicate_log *log = arg;
  pthread_mutex_lock(&log->lock);
  while (!log->stopping) {
    if (log->poisoned || log->syncing || log->synced >= log->written) {
      pthread_cond_wait(&log->cond, &log->lock);
      continue;
    }
    sync_locked(log); /* a failure poisons the handle: appends say so */
    /* The pause: on a condition of its own, so that the appends' wake-ups
     * (on cond) do not end it one by one. */
    struct timespec until = loom_deadline(CLOCK_MONOTONIC, SYNC_GATHER_NS);
    while (!log->stopping &&
           pthread_cond_timedwait(&log->gather, &log->lock, &until) != ETIMEDOUT)
      ;
  }
  pthread_mutex_unlock(&log->lock);
  return NULL;
}

/* ---------------------------------------------------------------------- */
/* Reading */

static int read_locked(replicate_log *log, uint64_t seq, replicate_buf *out)
{
  if (log_empty(log) || seq > newest_seq(log)) return REPLICATE_ELOG_AHEAD;
  if (seq < oldest_seq(log)) return REPLICATE_ELOG_GONE;
  log_segment *s = segment_of(log, seq);
  uint64_t off = s->offsets[seq - s->first_seq];

  uint8_t h[RECORD_HEADER_SIZE];
  int rc = read_exact(log, s->fd, h, sizeof h, off);
  if (rc != 0) return rc;
  uint32_t len = get_le32(h + 4);
  if (memcmp(h, RECORD_MAGIC, 4) != 0 || get_le64(h + 8) != seq ||
      off + RECORD_HEADER_SIZE + len > s->size)
    return REPLICATE_ELOG_CORRUPT;
  rc = frame_buf_reserve(out, len);
  if (rc != 0) return rc;
  rc = read_exact(log, s->fd, out->data, len, off + RECORD_HEADER_SIZE);
  if (rc != 0) return rc;
  XXH3_64bits_reset(log->hash);
  XXH3_64bits_update(log->hash, h, RECORD_CHECKSUM_OFF);
  XXH3_64bits_update(log->hash, out->data, len);
  if (XXH3_64bits_digest(log->hash) != get_le64(h + RECORD_CHECKSUM_OFF))
    return REPLICATE_ELOG_CORRUPT;
  out->len = len;
  return 0;
}

int replicate_log_read(replicate_log *log, uint64_t seq, replicate_buf *out)
{
  assert(log != NULL && out != NULL);
  pthread_mutex_lock(&log->lock);
  int rc = log->poisoned ? REPLICATE_EPANIC : read_locked(log, seq, out);
  pthread_mutex_unlock(&log->lock);
  return rc;
}

void replicate_log_iter_init(replicate_log_iter *it, replicate_log *log,
                             uint64_t from_seq)
{
  it->log = log;
  it->next_seq = from_seq;
}

int replicate_log_iter_next(replicate_log_iter *it, replicate_buf *out)
{
  int rc = replicate_log_read(it->log, it->next_seq, out);
  if (rc == 0) it->next_seq++;
  return rc;
}

void replicate_log_get_stats(replicate_log *log, replicate_log_stats *out)
{
  assert(log != NULL && out != NULL);
  pthread_mutex_lock(&log->lock);
  *out = (replicate_log_stats){
      .bytes = log->bytes,
      .segments = log->nsegs,
      .segments_dropped = log->dropped,
      .unsynced = log->written - log->synced,
      .syncs = log->syncs,
  };
  if (!log_empty(log)) {
    out->oldest_seq = oldest_seq(log);
    out->newest_seq = newest_seq(log);
    out->newest_epoch = newest_epoch(log);
    out->records = out->newest_seq - out->oldest_seq + 1;
  }
  pthread_mutex_unlock(&log->lock);
}

int replicate_log_bytes_after(replicate_log *log, uint64_t after_seq,
                              uint64_t *bytes)
{
  assert(log != NULL && bytes != NULL);
  pthread_mutex_lock(&log->lock);
  int rc = log->poisoned ? REPLICATE_EPANIC : 0;
  *bytes = 0;
  if (rc == 0 && !log_empty(log) && after_seq < newest_seq(log)) {
    uint64_t seq = after_seq + 1;
    if (seq < oldest_seq(log)) {
      rc = REPLICATE_ELOG_GONE;
    } else {
      log_segment *s = segment_of(log, seq);
      uint64_t sum = s->size - s->offsets[seq - s->first_seq];
      for (log_segment *t = s + 1; t < log->segs + log->nsegs; t++)
        sum += t->size - SEGMENT_HEADER_SIZE;
      *bytes = sum;
    }
  }
  pthread_mutex_unlock(&log->lock);
  return rc;
}

/* ---------------------------------------------------------------------- */
/* Retention */

int replicate_log_retain(replicate_log *log, uint64_t oldest_needed)
{
  assert(log != NULL);
  pthread_mutex_lock(&log->lock);
  int rc = log->poisoned ? REPLICATE_EPANIC : 0;
  if (log->hold != 0 && log->hold < oldest_needed)
    oldest_needed = log->hold;
  while (rc == 0 && log->nsegs > 1 &&
         log->segs[0].first_seq + log->segs[0].count <= oldest_needed)
    rc = drop_oldest(log);
  pthread_mutex_unlock(&log->lock);
  return rc;
}

void replicate_log_hold(replicate_log *log, uint64_t from_seq)
{
  assert(log != NULL);
  pthread_mutex_lock(&log->lock);
  log->hold = from_seq;
  pthread_mutex_unlock(&log->lock);
}

uint64_t replicate_log_held_from(replicate_log *log)
{
  assert(log != NULL);
  pthread_mutex_lock(&log->lock);
  uint64_t hold = log->hold;
  pthread_mutex_unlock(&log->lock);
  return hold;
}

uint64_t replicate_log_oldest_needed(const replicate_log_reader *readers,
                                     size_t n)
{
  uint64_t need = UINT64_MAX;
  for (size_t i = 0; i < n; i++) {
    switch (readers[i].state) {
    case REPLICATE_LOG_READER_UNKNOWN:
      return 0;
    case REPLICATE_LOG_READER_AT:
      if (readers[i].seq + 1 < need) need = readers[i].seq + 1;
      break;
    case REPLICATE_LOG_READER_NEEDS_BASE:
      break;
    }
  }
  return need;
}

int replicate_log_reset(replicate_log *log)
{
  assert(log != NULL);
  pthread_mutex_lock(&log->lock);
  int rc = log->poisoned ? REPLICATE_EPANIC : 0;
  while (rc == 0 && log->nsegs > 0) rc = drop_oldest(log);
  log->synced = log->written; /* what waited is gone (a sync in flight
                                 only moves synced forward) */
  pthread_mutex_unlock(&log->lock);
  return rc;
}
