/*
 * store.c: the image directory. Locking, recovery, the commit protocol.
 * Snapshots (loom_store_snapshot_*) are in snapshot.c; the read-only and
 * copying tools (backup, inspect, verify) and the image stream header in
 * tools.c; what they share of the store is in store_internal.h.
 *
 * FILES (byte tables in docs/FORMAT.md)
 *
 *   image    page n at offset n * LOOM_PAGE_SIZE; length = the
 *            checkpoint's pages
 *   hashes   u64 LE per image page: loom_page_hash(n, page n)
 *   meta     two 512-byte slots; the valid one with the higher generation
 *            is the checkpoint: the position the image is durably at, the
 *            lineage (history id and branch points, history.c) and the
 *            log's geometry (origin, size) and head (the checkpoint lsn)
 *   log      the commit log: a ring of log_size bytes holding records (a
 *            patch each: header, pages, entries, trailer) at increasing
 *            log sequence numbers (lsn); the record at lsn sits at byte
 *            (lsn - origin) mod log_size and never wraps
 *   lock     flock(LOCK_EX) by the one writer
 *
 * THE COMMIT LOG
 *
 *   The committed position is the checkpoint plus every record from the
 *   head on that verifies, carries its own lsn and continues from the
 *   position before it. A save appends one record at the tail and
 *   returns at one fdatasync; the checkpoint (a thread with
 *   LOOM_APPLY_ASYNC, else inline after each commit, or only when the log
 *   is full with LOOM_CHECKPOINT_DEFER) merges the queued records into
 *   the image, each page written once at its newest version, and moves
 *   the head past them. The image may thus lag the committed position by
 *   up to a log's worth; reads at the committed position (read_page,
 *   set_epoch, lineage writes, close) first wait for the checkpoint to
 *   catch up (store_apply_wait; the commit hook's old versions do only
 *   when the arena's RECENT PAGES cannot give them, loom.c, and
 *   loom_store_read_committed_page reads queued records from the log
 *   instead: read_page_without_wait), and
 *   snapshots open after it caught up with what was queued when they
 *   were asked for, at its position: a committed one (I1).
 *
 * INVARIANTS
 *
 *   I1. The checkpoint (meta) describes image and hashes exactly, except
 *       while records after its head are durable: then the image may hold
 *       any mix of the checkpoint's pages and those records' pages, and
 *       recovery re-applies the records in order (applying is
 *       idempotent: each batch sets the length and writes whole pages and
 *       whole hash blocks, so re-applying from the head converges). The
 *       image file is always at some committed position once a checkpoint
 *       finished (image_pos), which is what snapshots read.
 *   I2. The meta is rewritten only after the image is fsynced at the
 *       batch's after-position (so the head never runs ahead of the
 *       image). The hashes may lag after a power loss; R3 rebuilds them.
 *   I3. Log space is reused only behind the durable head: a record is
 *       written only where it overlaps no record at or after the head
 *       (log_room), and the head moves only after the meta that records
 *       it is durable. A record is written at a fresh lsn, or at the lsn
 *       of a save that failed or of a torn tail, whose header was zeroed
 *       durably first (the failed write's undo; log_clear_tail at open):
 *       stale bytes of an older lap or of a failed write never carry the
 *       lsn recovery looks for under a header that verifies.
 *   I4. Every byte of a record and of the meta is covered by a checksum:
 *       a torn or partly written record fails verification and ends the
 *       log there (the torn tail: never acknowledged, since its save had
 *       not returned). The header's checksum covers the header (its lsn
 *       included), the trailer's (seeded with it) the entry table, and
 *       each entry's hash its page: so whatever subset of the record's one
 *       write reached the disk before a power cut, only all of it
 *       verifies, and the order of its parts does not matter.
 *   I5. A missing log is never taken for an empty one while records may
 *       follow the head: every meta a writer writes while it has the log
 *       open says so (META_LOG_LIVE); only close, after its last
 *       checkpoint, writes one that does not. Else LOOM_ELOGLOST.
 *   I6. A record recovery rejected stays rejected: before the first
 *       append reuses its lsn, its header is zeroed (R4).
 *
 * THE COMMIT PROTOCOL (store_patch_make_durable, then checkpoint_batch)
 *
 *   1. Make room in the log (log_make_room: wait for the checkpoint while
 *      the record would overlap the head, I3; a record larger than the
 *      ring waits for an empty log and grows the ring, recorded in the
 *      meta first; the next that fits the configured ring shrinks it back
 *      the same way, then cuts the file). If the image grows, reserve the new blocks of image
 *      and hashes (loom_io.reserve: ENOSPC here, not in step 4 where it
 *      would poison), after the checkpoint of any queued record that cuts
 *      the image (it would free them again: reserve_growth). Write the
 *      record at its lsn, header block, pages, entry table and trailer,
 *      in one pwritev (record_write; a patch of more than STAGING_PAGES
 *      that is not deferred writes its earlier pages as they come).
 *   2. fsync (fdatasync) the log.  <- the local commit point: from here on
 *      a crash recovers to the new position. (The log exists since the
 *      store was opened and its directory was fsynced then, so no
 *      directory fsync is needed per commit. Its first lap extends the
 *      file: fdatasync makes the new length durable too.)
 *   3. The store's position is now the record's after; the record is
 *      queued for the checkpoint; the commit hook runs. (No read-back of
 *      the header: the fdatasync returned, and a read would come from
 *      the page cache, not the disk. Whether it reached the disk whole
 *      is R2's question after a crash: I4.)
 *   4. Checkpoint (one batch: the queued records up to the next one that
 *      shrinks the image or is a base image): cut the image to the first
 *      record's length if it shrinks, set the final length, copy each
 *      page's newest version from the log into the image; rewrite the
 *      touched blocks of the hashes file.
 *   5. fsync the image. (Not the hashes: they are derived data, see R3; a
 *      stale hashes file after a power loss is rebuilt from the image,
 *      which is durable, so the fsync would buy only latency.)
 *   6. Write the next meta slot with the batch's after-position and the
 *      lsn past its last record as the head; fsync the meta. The batch's
 *      log space is free (I3).
 *   A page repair (LOOM_PATCH_REPAIR) is a record with after = before:
 *   its pages match the recorded hashes, so step 4 rewrites rotted image
 *   pages and leaves hashes and position as they were.
 *   A rewind (LOOM_PATCH_REWIND) is an ordinary record whose after is at
 *   a newer epoch and any seq (a cluster member taking the leader's
 *   position sideways): the same steps, so a crash leaves the old or the
 *   new position, never pages of both.
 *   A failure of step 1's record write (ENOSPC, EIO, a short write) may
 *   have written any part of the record, header included: the header
 *   block is zeroed again and synced (header_unwrite), and the save fails
 *   with nothing changed. If that fails too, or in 2, 4-6, the handle is
 *   poisoned: the durable state is unknown until recovery (never retry an
 *   fsync: the kernel may have dropped the dirty pages). In the first lap
 *   the header block is written as zeros alone before the record
 *   (header_block_allocate), so that header_unwrite meets an allocated
 *   block.
 *
 * RECOVERY (store_open)
 *
 *   R1. Read both meta slots, take the valid one with the higher generation.
 *   R2. From the head, read the record at each lsn (or, when the bytes
 *       there are no such record and the lsn is not at the ring's start,
 *       at the next lap's start: the writer skips a lap's end that a
 *       record does not fit in), verify it whole (header, lsn, before =
 *       the position so far, trailer, every page's hash), and queue it;
 *       the first that does not verify ends the log (a torn tail is
 *       ignored). Then checkpoint everything queued (steps 4-6). (Pages
 *       are hashed after the headers and entry tables, in two threads:
 *       log_scan; the log ends at the first record in log order that
 *       failed either, as one pass in order would end it.)
 *   R3. Load the hashes; check their sum against the position's checksum
 *       and the image's length against its pages. Hashes that disagree (or
 *       a hashes file too short, or none: it is made anew and the
 *       directory fsynced) are rebuilt from the image, and kept only if
 *       the image agrees with the position (else LOOM_ECORRUPT).
 *
 *   R4. Before the first append (settle): a header at the tail's lsn that
 *       recovery rejected is zeroed and the log fsynced (log_clear_tail).
 *
 *   A version 1 directory (a single `patch` file) is upgraded at open
 *   (its meta rewritten as version 2 with an empty log), unless its patch
 *   still counts: LOOM_EVERSION (open it once with the previous release).
 *   A torn patch or a page repair never counts (v1_patch_pending).
 *
 *   A meta with no valid slot is a store that never recorded a position
 *   (a crash while creating it) when the image is empty or absent
 *   (LOOM_ENOIMAGE, or made anew with LOOM_CREATE); when the image holds
 *   pages, the position is lost: LOOM_EMETA, never a new empty store.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "loom.h"
#include "loom_io.h"
#include "store_internal.h"
#include "array.h"
#include "bytes.h"
#include "clock.h"

#define META_MAGIC "LOOMMETA"
#define META_LINEAGE_OFFSET 64u
#define META_LOG_OFFSET 280u
#define META_LOG_FLAGS 304u /* u32: META_LOG_LIVE */
#define META_LOG_LIVE 0x1u  /* a writer had the log open: records may follow */
#define PATCH_MAGIC "LOOMPTCH"
#define FORMAT_VERSION 2u
#define FORMAT_VERSION_V1 1u /* before the commit log: upgraded at open */
#define PATCH_HEADER_BLOCK 4096u
#define PATCH_HEADER_SUM 112u /* the header checksum's offset */
#define PATCH_ENTRY_BYTES 16u
#define PATCH_FLAGS (LOOM_PATCH_BASE | LOOM_PATCH_REPAIR | LOOM_PATCH_REWIND)
/* At most one of them. */
#define PATCH_FLAGS_BAD(f) (((f) & ~PATCH_FLAGS) || ((f) & ((f) - 1)))
#define LOG_ALIGN 4096u /* records start at multiples of it */

static const uint8_t zero_page[LOOM_PAGE_SIZE];
static const uint8_t zero_block[PATCH_HEADER_BLOCK];

uint64_t store_zero_hash(uint64_t n) { return loom_page_hash(n, zero_page); }

int store_poisoned(const loom_store *s) { return s->poison != 0; }

void store_poison(loom_store *s, int rc)
{
  int none = 0; /* the first error stays, whichever thread meets one */
  atomic_compare_exchange_strong(&s->poison, &none, rc ? rc : LOOM_EPANIC);
}

/* ---------------------------------------------------------------------- */
/* Small I/O helpers: exact transfers, errors as codes. */

int store_read_exact(loom_store *s, int fd, void *buf, size_t len, off_t off)
{
  ssize_t n = s->io->pread(s->io->ctx, fd, buf, len, off);
  if (n < 0)
    return (int)-n;
  return (size_t)n == len ? 0 : LOOM_ECORRUPT;
}

int store_write_exact(loom_store *s, int fd, const void *buf, size_t len,
                      off_t off)
{
  ssize_t n = s->io->pwrite(s->io->ctx, fd, buf, len, off);
  if (n < 0)
    return (int)-n;
  return (size_t)n == len ? 0 : EIO;
}

int store_fsync(loom_store *s, int fd)
{
  return -s->io->fsync(s->io->ctx, fd);
}

static int io_truncate(loom_store *s, int fd, uint64_t len)
{
  return -s->io->ftruncate(s->io->ctx, fd, (off_t)len);
}

int store_file_size(int fd, uint64_t *out);

/* Set a file's length unless it already has it (a commit that neither
 * grows nor shrinks the image changes no metadata). */
static int io_set_length(loom_store *s, int fd, uint64_t len)
{
  uint64_t size = 0;
  int rc = store_file_size(fd, &size);
  return rc ? rc : size == len ? 0 : io_truncate(s, fd, len);
}

void store_close_fd(loom_store *s, int *fd)
{
  if (*fd >= 0)
    s->io->close(s->io->ctx, *fd);
  *fd = -1;
}

int store_file_size(int fd, uint64_t *out)
{
  *out = 0;
  return io_stat_untimed(fd, NULL, out); /* (io_posix.c says why) */
}

/* ---------------------------------------------------------------------- */
/* Meta slots. */

void store_position_put(uint8_t out[POSITION_BYTES], const loom_position *p)
{
  put_le64(out, p->epoch);
  put_le64(out + 8, p->seq);
  put_le64(out + 16, p->checksum);
  put_le64(out + 24, p->pages);
  put_le64(out + 32, (uint64_t)p->commit_time_ns);
}

void store_position_get(const uint8_t in[POSITION_BYTES], loom_position *p)
{
  p->epoch = get_le64(in);
  p->seq = get_le64(in + 8);
  p->checksum = get_le64(in + 16);
  p->pages = get_le64(in + 24);
  p->commit_time_ns = (int64_t)get_le64(in + 32);
}

/* The log's place in a meta slot: where lsns start, the ring's size, and
 * the checkpoint (the first lsn the image does not hold). */
typedef struct meta_log {
  uint64_t origin, size, head;
  uint32_t flags; /* META_LOG_LIVE, or 0: nothing past the head */
} meta_log;

static void meta_encode_log(uint8_t slot[META_SLOT_SIZE], uint64_t generation,
                            const loom_position *p, const loom_lineage *lineage,
                            const meta_log *log)
{
  memset(slot, 0, META_SLOT_SIZE);
  memcpy(slot, META_MAGIC, 8);
  put_le32(slot + 8, FORMAT_VERSION);
  put_le32(slot + 12, LOOM_PAGE_SIZE);
  put_le64(slot + 16, generation);
  store_position_put(slot + 24, p);
  lineage_encode(slot + META_LINEAGE_OFFSET, lineage);
  put_le64(slot + META_LOG_OFFSET, log->origin);
  put_le64(slot + META_LOG_OFFSET + 8, log->size);
  put_le64(slot + META_LOG_OFFSET + 16, log->head);
  put_le32(slot + META_LOG_FLAGS, log->flags);
  put_le64(slot + META_SLOT_SIZE - 8, XXH3_64bits(slot, META_SLOT_SIZE - 8));
}

/* A copy's meta (a backup): an empty log, sized at its first open. */
void store_meta_encode(uint8_t slot[META_SLOT_SIZE], uint64_t generation,
                       const loom_position *p, const loom_lineage *lineage)
{
  meta_encode_log(slot, generation, p, lineage, &(meta_log){0, 0, 0, 0});
}

/* 0 valid, LOOM_ECORRUPT torn/garbage, LOOM_EVERSION unknown version. A
 * version 1 slot (no log fields: they read as an empty log) sets *v1. */
static int meta_decode(const uint8_t slot[META_SLOT_SIZE], uint64_t *generation,
                       loom_position *p, loom_lineage *lineage, meta_log *log,
                       int *v1)
{
  if (memcmp(slot, META_MAGIC, 8) != 0 ||
      get_le64(slot + META_SLOT_SIZE - 8) !=
          XXH3_64bits(slot, META_SLOT_SIZE - 8))
    return LOOM_ECORRUPT;
  uint32_t version = get_le32(slot + 8);
  if ((version != FORMAT_VERSION && version != FORMAT_VERSION_V1) ||
      get_le32(slot + 12) != LOOM_PAGE_SIZE)
    return LOOM_EVERSION;
  *v1 = version == FORMAT_VERSION_V1;
  *generation = get_le64(slot + 16);
  *log = (meta_log){0, 0, 0, 0};
  if (!*v1) {
    log->origin = get_le64(slot + META_LOG_OFFSET);
    log->size = get_le64(slot + META_LOG_OFFSET + 8);
    log->head = get_le64(slot + META_LOG_OFFSET + 16);
    log->flags = get_le32(slot + META_LOG_FLAGS) & META_LOG_LIVE;
  }
  if (log->head < log->origin || log->size % LOG_ALIGN)
    return LOOM_ECORRUPT;
  store_position_get(slot + 24, p);
  if (p->pages > MAX_PAGES)
    return LOOM_ECORRUPT;
  return lineage_decode(slot + META_LINEAGE_OFFSET, lineage);
}

/* R1: the valid slot with the higher generation. LOOM_ENOIMAGE when the
 * file holds no valid slot at all. */
static int meta_read(loom_store *s, uint64_t *generation, loom_position *p,
                     loom_lineage *lineage, meta_log *log, int *v1)
{
  uint8_t buf[2 * META_SLOT_SIZE];
  ssize_t n = s->io->pread(s->io->ctx, s->meta_fd, buf, sizeof buf, 0);
  if (n < 0)
    return (int)-n;
  int found = 0, version_error = 0;
  for (unsigned i = 0; i < 2; i++) {
    if ((size_t)n < (i + 1) * META_SLOT_SIZE)
      break;
    uint64_t g;
    loom_position q;
    loom_lineage l;
    meta_log ml;
    int old;
    int rc = meta_decode(buf + i * META_SLOT_SIZE, &g, &q, &l, &ml, &old);
    if (rc == LOOM_EVERSION)
      version_error = 1;
    if (rc == 0 && (!found || g > *generation)) {
      *generation = g;
      *p = q;
      *lineage = l;
      *log = ml;
      *v1 = old;
      found = 1;
    }
  }
  if (found)
    return 0;
  return version_error ? LOOM_EVERSION : LOOM_ENOIMAGE;
}

/* Step 6: the next slot, then fsync; with lineage (on success the store's
 * lineage) and head, the checkpoint it records. */
static int meta_write_at(loom_store *s, const loom_position *p,
                         const loom_lineage *lineage, uint64_t head)
{
  uint8_t slot[META_SLOT_SIZE];
  uint64_t g = s->generation + 1;
  meta_encode_log(slot, g, p, lineage,
                  &(meta_log){s->log_origin, s->log_size, head,
                              s->log_live ? META_LOG_LIVE : 0});
  int rc = store_write_exact(s, s->meta_fd, slot, sizeof slot,
                             (off_t)((g % 2) * META_SLOT_SIZE));
  if (!rc)
    rc = store_fsync(s, s->meta_fd);
  if (!rc) {
    s->generation = g;
    s->applied = *p;
    /* Only a new lineage is stored: step 6 on the apply thread passes the
     * store's own, which other threads read meanwhile (a lineage changes
     * only after apply_wait). */
    if (lineage != &s->lineage)
      s->lineage = *lineage;
  }
  return rc;
}

/* Outside a checkpoint: every committed record is checkpointed (the
 * callers drained the log first), so the checkpoint is the tail. */
static int meta_write_lineage(loom_store *s, const loom_position *p,
                              const loom_lineage *lineage)
{
  return meta_write_at(s, p, lineage, s->log_tail);
}

static int meta_write(loom_store *s, const loom_position *p)
{
  return meta_write_lineage(s, p, &s->lineage);
}

/* ---------------------------------------------------------------------- */
/* Log records: a patch at its lsn. */

static void patch_header_encode(uint8_t block[PATCH_HEADER_BLOCK],
                                const loom_patch_header *h, uint64_t lsn)
{
  memset(block, 0, PATCH_HEADER_BLOCK);
  memcpy(block, PATCH_MAGIC, 8);
  put_le32(block + 8, FORMAT_VERSION);
  put_le32(block + 12, LOOM_PAGE_SIZE);
  put_le32(block + 16, h->flags);
  put_le64(block + 24, h->before.epoch);
  put_le64(block + 32, h->before.seq);
  put_le64(block + 40, h->before.checksum);
  put_le64(block + 48, h->before.pages);
  put_le64(block + 56, h->after.epoch);
  put_le64(block + 64, h->after.seq);
  put_le64(block + 72, h->after.checksum);
  put_le64(block + 80, h->after.pages);
  put_le64(block + 88, (uint64_t)h->after.commit_time_ns);
  put_le64(block + 96, h->page_count);
  put_le64(block + 104, lsn);
  put_le64(block + PATCH_HEADER_SUM, XXH3_64bits(block, PATCH_HEADER_SUM));
}

/* The fields a record header shares with a version 1 patch header: bytes
 * [16, 104). */
static int header_fields_decode(const uint8_t block[PATCH_HEADER_BLOCK],
                                loom_patch_header *h)
{
  memset(h, 0, sizeof *h);
  h->flags = get_le32(block + 16);
  h->before.epoch = get_le64(block + 24);
  h->before.seq = get_le64(block + 32);
  h->before.checksum = get_le64(block + 40);
  h->before.pages = get_le64(block + 48);
  h->after.epoch = get_le64(block + 56);
  h->after.seq = get_le64(block + 64);
  h->after.checksum = get_le64(block + 72);
  h->after.pages = get_le64(block + 80);
  h->after.commit_time_ns = (int64_t)get_le64(block + 88);
  h->page_count = get_le64(block + 96);
  if (PATCH_FLAGS_BAD(h->flags) || h->after.pages > MAX_PAGES ||
      h->before.pages > MAX_PAGES || h->page_count > h->after.pages)
    return LOOM_ECORRUPT;
  return 0;
}

/* A header of the given version whose checksum sits at sum_at. */
static int header_check(const uint8_t block[PATCH_HEADER_BLOCK],
                        uint32_t version, size_t sum_at)
{
  if (memcmp(block, PATCH_MAGIC, 8) != 0 ||
      get_le64(block + sum_at) != XXH3_64bits(block, sum_at))
    return LOOM_ECORRUPT;
  if (get_le32(block + 8) != version || get_le32(block + 12) != LOOM_PAGE_SIZE)
    return LOOM_EVERSION;
  return 0;
}

static int patch_header_decode(const uint8_t block[PATCH_HEADER_BLOCK],
                               loom_patch_header *h, uint64_t *header_sum,
                               uint64_t *lsn)
{
  int rc = header_check(block, FORMAT_VERSION, PATCH_HEADER_SUM);
  if (rc)
    return rc;
  *lsn = get_le64(block + 104);
  *header_sum = get_le64(block + PATCH_HEADER_SUM);
  return header_fields_decode(block, h);
}

/* Where a record's byte at is in the log file: records never wrap. */
static off_t log_offset(const loom_store *s, uint64_t lsn, uint64_t at)
{
  return (off_t)((lsn - s->log_origin) % s->log_size + at);
}

static off_t patch_page_offset(const loom_patch *p, uint64_t i)
{
  return log_offset(p->store, p->lsn, PATCH_HEADER_BLOCK + i * PS);
}

static off_t patch_entries_offset(const loom_patch *p)
{
  return patch_page_offset(p, p->header.page_count);
}

/* The log bytes a record of count pages takes: header, pages, entry table
 * and trailer, rounded up to LOG_ALIGN. */
static uint64_t record_bytes(uint64_t count)
{
  uint64_t n = PATCH_HEADER_BLOCK + count * PS + count * PATCH_ENTRY_BYTES + 8;
  return (n + LOG_ALIGN - 1) / LOG_ALIGN * LOG_ALIGN;
}

/* The lsn a record of bytes bytes goes at when the tail is lsn: there, or
 * at the ring's next lap when it does not fit before the ring's end. */
static uint64_t log_place(const loom_store *s, uint64_t lsn, uint64_t bytes)
{
  uint64_t off = (lsn - s->log_origin) % s->log_size;
  return off + bytes <= s->log_size ? lsn : lsn + (s->log_size - off);
}

void store_patch_free(loom_patch *p)
{
  if (!p)
    return;
  free(p->deferred);
  free(p->page_numbers);
  free(p->new_hashes);
  free(p->old_hashes);
  free(p);
}

static loom_patch *patch_alloc(loom_store *s, const loom_patch_header *h)
{
  loom_patch *p = calloc(1, sizeof *p);
  if (!p)
    return NULL;
  size_t n = h->page_count ? (size_t)h->page_count : 1;
  p->store = s;
  p->header = *h;
  p->page_numbers = malloc(n * sizeof(uint64_t));
  p->new_hashes = malloc(n * sizeof(uint64_t));
  p->old_hashes = malloc(n * sizeof(uint64_t));
  if (!p->page_numbers || !p->new_hashes || !p->old_hashes) {
    store_patch_free(p);
    return NULL;
  }
  return p;
}

/* The entry table and trailer: entries, then XXH3 over them seeded with the
 * header checksum. Returns a malloc'd buffer of *len bytes. */
static uint8_t *patch_entries_encode(const loom_patch *p, uint64_t header_sum,
                                     size_t *len)
{
  uint64_t n = p->header.page_count;
  *len = (size_t)n * PATCH_ENTRY_BYTES + 8;
  uint8_t *buf = malloc(*len);
  if (!buf)
    return NULL;
  for (uint64_t i = 0; i < n; i++) {
    put_le64(buf + i * PATCH_ENTRY_BYTES, p->page_numbers[i]);
    put_le64(buf + i * PATCH_ENTRY_BYTES + 8, p->new_hashes[i]);
  }
  put_le64(buf + *len - 8, XXH3_64bits_withSeed(buf, *len - 8, header_sum));
  return buf;
}

/* R2: the entry table of p verifies (its trailer, page numbers in order
 * and below the image's size), its header block at byte at of fd (the
 * log, or a version 1 patch file); p's page lists are filled from it. */
static int record_verify_entries(loom_store *s, int fd, off_t at, loom_patch *p,
                                 uint64_t header_sum)
{
  const loom_patch_header *h = &p->header;
  size_t len = (size_t)h->page_count * PATCH_ENTRY_BYTES + 8;
  uint8_t *buf = malloc(len);
  if (!buf)
    return ENOMEM;
  off_t pages = at + PATCH_HEADER_BLOCK;
  int rc = store_read_exact(s, fd, buf, len, pages + (off_t)(h->page_count * PS));
  if (!rc && get_le64(buf + len - 8) !=
                 XXH3_64bits_withSeed(buf, len - 8, header_sum))
    rc = LOOM_ECORRUPT;
  for (uint64_t i = 0; !rc && i < h->page_count; i++) {
    uint64_t n = get_le64(buf + i * PATCH_ENTRY_BYTES);
    p->page_numbers[i] = n;
    p->new_hashes[i] = get_le64(buf + i * PATCH_ENTRY_BYTES + 8);
    if (n >= h->after.pages || (i > 0 && n <= p->page_numbers[i - 1]) ||
        ((h->flags & LOOM_PATCH_BASE) && n != i))
      rc = LOOM_ECORRUPT;
  }
  if (!rc && (h->flags & LOOM_PATCH_BASE) && h->page_count != h->after.pages)
    rc = LOOM_ECORRUPT;
  free(buf);
  p->added = p->flushed = h->page_count;
  return rc;
}

/* R2: every page of p (its entries verified) hashes to its entry, read
 * through staging (STAGING_PAGES pages: any thread's own). */
static int record_verify_pages(loom_store *s, int fd, off_t at,
                               const loom_patch *p, uint8_t *staging)
{
  const loom_patch_header *h = &p->header;
  off_t pages = at + PATCH_HEADER_BLOCK;
  int rc = 0;
  for (uint64_t i = 0; !rc && i < h->page_count; i += STAGING_PAGES) {
    uint64_t k = h->page_count - i < STAGING_PAGES ? h->page_count - i : STAGING_PAGES;
    rc = store_read_exact(s, fd, staging, (size_t)(k * PS), pages + (off_t)(i * PS));
    for (uint64_t j = 0; !rc && j < k; j++)
      if (loom_page_hash(p->page_numbers[i + j], staging + j * PS) !=
          p->new_hashes[i + j])
        rc = LOOM_ECORRUPT;
  }
  return rc;
}

/* R2: the entry table and every page of p verify. */
static int record_verify(loom_store *s, int fd, off_t at, loom_patch *p,
                         uint64_t header_sum)
{
  int rc = record_verify_entries(s, fd, at, p, header_sum);
  return rc ? rc : record_verify_pages(s, fd, at, p, s->staging);
}

/* R2: the header at exactly lsn, if one is there that carries that lsn,
 * continues from cur and whose record fits before the ring's end and
 * inside the log file as it really is (a meta's ring size is only a
 * number: nothing is sized by a record the file cannot hold). Nothing is
 * allocated. LOOM_ECORRUPT: none, or an I/O error. */
static int header_read_at(loom_store *s, uint64_t lsn, const loom_position *cur,
                          loom_patch_header *h, uint64_t *header_sum)
{
  uint8_t block[PATCH_HEADER_BLOCK];
  uint64_t at, file = 0, off = (uint64_t)log_offset(s, lsn, 0);
  int rc = store_file_size(s->log_fd, &file);
  if (rc)
    return rc;
  uint64_t end = file < s->log_size ? file : s->log_size;
  if (off + PATCH_HEADER_BLOCK > end)
    return LOOM_ECORRUPT;
  rc = store_read_exact(s, s->log_fd, block, sizeof block, (off_t)off);
  if (!rc)
    rc = patch_header_decode(block, h, header_sum, &at);
  if (rc == LOOM_EVERSION)
    rc = LOOM_ECORRUPT;
  if (rc)
    return rc;
  uint64_t len = PATCH_HEADER_BLOCK + h->page_count * (PS + PATCH_ENTRY_BYTES) + 8;
  if (at != lsn || !loom_position_same_epoch(&h->before, cur) ||
      off + record_bytes(h->page_count) > s->log_size || off + len > file)
    return LOOM_ECORRUPT;
  return 0;
}

/* R2: the record at exactly lsn, if one is there whose header and entry
 * table verify and that continues from cur (header_read_at); its pages
 * are verify_pages's. LOOM_ECORRUPT: none (stale bytes of an older lap, a
 * torn record, or nothing yet), or an I/O error. */
static int record_read_at(loom_store *s, uint64_t lsn, const loom_position *cur,
                          loom_patch **out)
{
  loom_patch_header h;
  uint64_t header_sum;
  *out = NULL;
  int rc = header_read_at(s, lsn, cur, &h, &header_sum);
  if (rc)
    return rc;
  loom_patch *p = patch_alloc(s, &h);
  if (!p)
    return ENOMEM;
  p->lsn = lsn;
  rc = record_verify_entries(s, s->log_fd, log_offset(s, lsn, 0), p, header_sum);
  if (rc) {
    store_patch_free(p);
    return rc;
  }
  *out = p;
  return 0;
}

/* R2: the next record from lsn: there, or at the next lap's start when the
 * writer found no room before the ring's end (log_place). A later lap's
 * lsn is only ever written after the one at lsn was skipped, so a record
 * that verifies there with that lsn is the next. (Its pages: below. That
 * a record at lsn whose header and entries verify rules the next lap out,
 * also when its pages then fail, is I6's: settle zeroes both headers of a
 * rejected tail before the first append.) */
static int record_read_next(loom_store *s, uint64_t lsn, const loom_position *cur,
                            loom_patch **out)
{
  int rc = record_read_at(s, lsn, cur, out);
  uint64_t off = (uint64_t)log_offset(s, lsn, 0);
  if (rc == LOOM_ECORRUPT && off != 0)
    rc = record_read_at(s, lsn + (s->log_size - off), cur, out);
  return rc;
}

/* ---------------------------------------------------------------------- */
/* The hash table. */

int store_hashes_reserve(loom_store *s, uint64_t pages)
{
  if (pages > SIZE_MAX / sizeof *s->hashes)
    return ENOMEM;
  return loom_array_reserve(&s->hashes, &s->hashes_cap, (size_t)pages,
                            sizeof *s->hashes);
}

/* The committed table moves from p's before to its after: listed pages get
 * their new hash, pages grown but not listed are zero pages. */
static int hashes_apply(loom_store *s, const loom_patch *p)
{
  const loom_patch_header *h = &p->header;
  pthread_mutex_lock(&s->hash_lock); /* the checkpoint reads the table */
  int rc = store_hashes_reserve(s, h->after.pages);
  uint64_t old_pages = (h->flags & LOOM_PATCH_BASE) ? 0 : h->before.pages;
  for (uint64_t n = old_pages; !rc && n < h->after.pages; n++)
    s->hashes[n] = store_zero_hash(n);
  for (uint64_t i = 0; !rc && i < h->page_count; i++)
    s->hashes[p->page_numbers[i]] = p->new_hashes[i];
  pthread_mutex_unlock(&s->hash_lock);
  return rc;
}


int store_hashes_write_block(loom_store *s, uint64_t block, uint64_t pages)
{
  uint8_t buf[HASH_BLOCK];
  uint64_t first = block * HASHES_PER_BLOCK;
  uint64_t count = pages - first < HASHES_PER_BLOCK ? pages - first : HASHES_PER_BLOCK;
  pthread_mutex_lock(&s->hash_lock);
  for (uint64_t i = 0; i < count; i++)
    put_le64(buf + i * 8, s->hashes[first + i]);
  pthread_mutex_unlock(&s->hash_lock);
  return store_write_exact(s, s->hashes_fd, buf, (size_t)count * 8,
                           (off_t)(first * 8));
}

static uint64_t hashes_sum(const loom_store *s, uint64_t pages)
{
  uint64_t sum = 0;
  for (uint64_t n = 0; n < pages; n++)
    sum += s->hashes[n];
  return sum;
}

/* ---------------------------------------------------------------------- */
/* Steps 4-6: the checkpoint merges committed records into image, hashes
 * and meta. */

/* One page of a checkpoint batch: the newest version, record rec's i-th. */
typedef struct ckpt_page {
  uint64_t n;
  uint32_t rec, i;
} ckpt_page;

/* A batch: a prefix of the queue. Its first record may shrink the image or
 * be a base image; no later one does, so the image only grows after the
 * first record and each page's newest version is its final content. */
typedef struct ckpt_batch {
  loom_patch **recs;
  size_t count;
  /* One per page: ascending page numbers, then log order
   * (batch_copy_pages). */
  ckpt_page *pages;
  uint64_t *numbers, *hashes; /* theirs, in page order (tree, hashes) */
  uint64_t npages;
  uint64_t cut;      /* pages the first record leaves */
  const loom_position *after;
  uint64_t head;     /* the first lsn past the batch */
  uint64_t memory;   /* batch_memory, counted in the merge state */
} ckpt_batch;

/* THE MERGE STATE: the memory the checkpoint holds for records it has not
 * merged yet: each queued record (its struct and page lists: record_memory),
 * the queue's slots, and a batch's merge arrays (batch_memory). Every
 * record in the queue is in the ring (queued only once durable, removed
 * when the head moves past it), and a record takes at least 8 KiB of the
 * ring and 16 KiB more per page, so the merge state is at most 1/16 of
 * the ring: MERGE_SHARE bytes of memory per byte of ring a record takes,
 * which the asserts below check for the smallest record and per page (a
 * queue slot may be doubled by the array's growth: 16 bytes a record).
 * Counted under apply.mutex (loom_log_stats.merge_bytes). */
#define MERGE_SHARE 16u
#define RECORD_MIN_BYTES 8192u /* record_bytes(0) */

static uint64_t record_memory(const loom_patch *p)
{
  uint64_t n = p->header.page_count ? p->header.page_count : 1;
  return sizeof *p + 3 * sizeof(uint64_t) * n;
}

/* A batch of count records listing total pages: recs, pages, numbers,
 * hashes. */
static uint64_t batch_memory(uint64_t count, uint64_t total)
{
  return count * sizeof(loom_patch *) +
         total * (sizeof(ckpt_page) + 2 * sizeof(uint64_t));
}

_Static_assert(sizeof(loom_patch) + 3 * sizeof(uint64_t) + 8 + 16 +
                       sizeof(ckpt_page) + 2 * sizeof(uint64_t) <=
                   RECORD_MIN_BYTES / MERGE_SHARE,
               "the merge state of a one-page record exceeds its share");
_Static_assert(3 * sizeof(uint64_t) + sizeof(ckpt_page) +
                       2 * sizeof(uint64_t) <=
                   LOOM_PAGE_SIZE / MERGE_SHARE,
               "the merge state of a page exceeds its share");

static void merge_account_locked(apply_thread *t, uint64_t add, uint64_t sub)
{
  t->merge_bytes = t->merge_bytes + add - sub;
  if (t->merge_bytes > t->merge_peak)
    t->merge_peak = t->merge_bytes;
}

static int starts_batch(const loom_patch *p)
{
  const loom_patch_header *h = &p->header;
  return (h->flags & LOOM_PATCH_BASE) || h->after.pages < h->before.pages;
}

static int ckpt_page_cmp(const void *a, const void *b)
{
  const ckpt_page *x = a, *y = b;
  if (x->n != y->n)
    return x->n < y->n ? -1 : 1;
  return x->rec > y->rec ? -1 : x->rec < y->rec; /* newest first */
}

/* The batch's pages, each once at its newest version (in THE MERGE
 * STATE: batch_memory). */
static int batch_merge(loom_store *s, ckpt_batch *b)
{
  uint64_t total = 0;
  for (size_t r = 0; r < b->count; r++)
    total += b->recs[r]->header.page_count;
  b->pages = malloc((size_t)(total ? total : 1) * sizeof *b->pages);
  b->numbers = malloc((size_t)(total ? total : 1) * sizeof *b->numbers);
  b->hashes = malloc((size_t)(total ? total : 1) * sizeof *b->hashes);
  if (!b->pages || !b->numbers || !b->hashes)
    return ENOMEM;
  pthread_mutex_lock(&s->apply.mutex);
  b->memory = batch_memory(b->count, total);
  merge_account_locked(&s->apply, b->memory, 0);
  pthread_mutex_unlock(&s->apply.mutex);
  uint64_t k = 0;
  for (size_t r = 0; r < b->count; r++)
    for (uint64_t i = 0; i < b->recs[r]->header.page_count; i++)
      b->pages[k++] = (ckpt_page){b->recs[r]->page_numbers[i], (uint32_t)r,
                                  (uint32_t)i};
  qsort(b->pages, (size_t)total, sizeof *b->pages, ckpt_page_cmp);
  b->npages = 0;
  for (uint64_t j = 0; j < total; j++) {
    if (b->npages && b->pages[b->npages - 1].n == b->pages[j].n)
      continue;
    ckpt_page c = b->pages[j];
    b->pages[b->npages] = c;
    b->numbers[b->npages] = c.n;
    b->hashes[b->npages++] = b->recs[c.rec]->new_hashes[c.i];
  }
  return 0;
}

static int ckpt_log_order_cmp(const void *a, const void *b)
{
  const ckpt_page *x = a, *y = b;
  if (x->rec != y->rec)
    return x->rec < y->rec ? -1 : 1;
  return x->i < y->i ? -1 : x->i > y->i;
}

/* Copy o[j, k) (one record's, in log order) into the image: one read of
 * their span in the record, then one write per run of pages adjacent in
 * both. Not copy_file_range: on a file system that clones (XFS, Btrfs) it
 * shares the log's blocks with the image, so every later lap of the ring
 * must allocate before it overwrites them, and on a full disk a failed
 * record's header can no longer be zeroed without space (FORMAT.md): the
 * handle is poisoned where a save would only fail. */
static int copy_span(loom_store *s, const ckpt_batch *b, uint64_t j, uint64_t k)
{
  const ckpt_page *o = b->pages;
  const loom_patch *r = b->recs[o[j].rec];
  int rc = store_read_exact(s, s->log_fd, s->ckpt_buf,
                            (size_t)((o[k - 1].i - o[j].i + 1) * PS),
                            patch_page_offset(r, o[j].i));
  for (uint64_t m = j, run; !rc && m < k; m += run) {
    run = 1; /* adjacent in both the record and the image */
    while (m + run < k && o[m + run].i == o[m].i + run &&
           o[m + run].n == o[m].n + run)
      run++;
    rc = store_write_exact(s, s->image_fd, s->ckpt_buf + (o[m].i - o[j].i) * PS,
                           (size_t)(run * PS), (off_t)(o[m].n * PS));
  }
  return rc;
}

/* Copy the batch's pages (b->pages, sorted here into log order) from the
 * log into the image: one read per record's span of up to STAGING_PAGES
 * pages that holds newest versions (a record's pages are contiguous in the
 * log; superseded ones between them are read and skipped), then one write
 * per run of pages adjacent in both. A record of 64 scattered pages is one
 * read, not 64 (docs/BENCHMARKS.md section 9). The order of the image's
 * writes is no part of I1: nothing counts before step 6. */
static int batch_copy_pages(loom_store *s, const ckpt_batch *b)
{
  ckpt_page *o = b->pages;
  qsort(o, (size_t)b->npages, sizeof *o, ckpt_log_order_cmp);
  int rc = 0;
  for (uint64_t j = 0, k; !rc && j < b->npages; j = k) {
    k = j + 1; /* the span: same record, within STAGING_PAGES */
    while (k < b->npages && o[k].rec == o[j].rec &&
           o[k].i < o[j].i + STAGING_PAGES)
      k++;
    rc = copy_span(s, b, j, k);
  }
  return rc;
}

/* Step 4 for the image: preserve what open snapshots still need, cut and
 * extend, then copy each page's newest version from the log. */
static int batch_write_pages(loom_store *s, const ckpt_batch *b)
{
  uint64_t size = 0;
  int rc = store_file_size(s->image_fd, &size);
  if (!rc && store_snapshots_open(s)) {
    for (uint64_t n = b->cut; !rc && n < size / PS; n++)
      rc = store_snapshot_preserve(s, n);
    for (uint64_t j = 0; !rc && j < b->npages; j++)
      if (b->pages[j].n < size / PS)
        rc = store_snapshot_preserve(s, b->pages[j].n);
  }
  if (!rc && size > b->cut * PS)
    rc = io_set_length(s, s->image_fd, b->cut * PS);
  if (!rc)
    rc = io_set_length(s, s->image_fd, b->after->pages * PS);
  return rc ? rc : batch_copy_pages(s, b);
}

static int batch_apply_pages(loom_store *s, const ckpt_batch *b)
{
  pthread_mutex_lock(&s->snap_lock);
  int rc = batch_write_pages(s, b);
  if (!rc) {
    s->image_pos = *b->after;
    if (b->cut < s->tree.pages)
      store_tree_update(&s->tree, b->cut, NULL, NULL, 0, store_zero_hash);
    store_tree_update(&s->tree, b->after->pages, b->numbers, b->hashes,
                      b->npages, store_zero_hash);
  } else {
    s->image_broken = rc; /* no snapshot may open over a half-applied image */
  }
  pthread_mutex_unlock(&s->snap_lock);
  return rc;
}

/* Step 4 for the hashes file: its length, and every block a listed page or
 * a page past the cut falls in, from the committed table (at or past the
 * batch: a value past it belongs to a durable record that recovery
 * replays, and R3 rebuilds a table that does not sum up). */
static int batch_write_hashes(loom_store *s, const ckpt_batch *b)
{
  uint64_t pages = b->after->pages;
  int rc = io_set_length(s, s->hashes_fd, pages * 8);
  uint64_t last = UINT64_MAX;
  for (uint64_t j = 0; !rc && j < b->npages; j++) {
    uint64_t blk = b->numbers[j] / HASHES_PER_BLOCK; /* (in page order) */
    if (blk != last)
      rc = store_hashes_write_block(s, blk, pages);
    last = blk;
  }
  uint64_t from = b->cut < b->recs[0]->header.before.pages
                      ? b->cut : b->recs[0]->header.before.pages;
  if (b->recs[0]->header.flags & LOOM_PATCH_BASE)
    from = 0;
  for (uint64_t blk = from / HASHES_PER_BLOCK;
       !rc && blk * HASHES_PER_BLOCK < pages; blk++)
    if (blk != last)
      rc = store_hashes_write_block(s, blk, pages);
  return rc;
}

/* Take the next batch off the front of the queue (not removed yet). */
static int batch_take(loom_store *s, ckpt_batch *b)
{
  apply_thread *t = &s->apply;
  memset(b, 0, sizeof *b);
  pthread_mutex_lock(&t->mutex);
  size_t n = t->queued ? 1 : 0;
  while (n < t->queued && !starts_batch(t->queue[n]))
    n++;
  b->recs = n ? malloc(n * sizeof *b->recs) : NULL;
  if (b->recs) {
    memcpy(b->recs, t->queue, n * sizeof *b->recs);
    b->count = n;
  }
  pthread_mutex_unlock(&t->mutex);
  if (!n)
    return 0;
  if (!b->recs)
    return ENOMEM;
  loom_patch *last = b->recs[n - 1];
  b->after = &last->header.after;
  b->head = last->lsn + record_bytes(last->header.page_count);
  b->cut = b->recs[0]->header.after.pages;
  return batch_merge(s, b);
}

/* One checkpoint (steps 4-6) of the queue's next batch, then free its log
 * space. 0 with nothing queued. */
static int checkpoint_batch(loom_store *s)
{
  ckpt_batch b;
  int rc = batch_take(s, &b);
  if (!rc && b.count)
    rc = batch_apply_pages(s, &b);                 /* 4 */
  if (!rc && b.count)
    rc = batch_write_hashes(s, &b);                /* 4 */
  if (!rc && b.count)
    rc = store_fsync(s, s->image_fd);              /* 5 */
  if (!rc && b.count)
    rc = meta_write_at(s, b.after, &s->lineage, b.head); /* 6 */
  if (!rc && b.count) {
    apply_thread *t = &s->apply;
    pthread_mutex_lock(&t->mutex);
    memmove(t->queue, t->queue + b.count, (t->queued - b.count) * sizeof *t->queue);
    t->queued -= b.count;
    for (size_t r = 0; r < b.count; r++) {
      t->queued_bytes -= record_bytes(b.recs[r]->header.page_count);
      merge_account_locked(t, 0, record_memory(b.recs[r]));
    }
    s->log_head = b.head;                          /* the space is free */
    t->batches++;
    pthread_cond_broadcast(&t->cond);
    pthread_mutex_unlock(&t->mutex);
    for (size_t r = 0; r < b.count; r++)
      store_patch_free(b.recs[r]);
  }
  free(b.recs);
  free(b.pages);
  free(b.numbers);
  free(b.hashes);
  if (b.memory) {
    pthread_mutex_lock(&s->apply.mutex);
    merge_account_locked(&s->apply, 0, b.memory);
    pthread_mutex_unlock(&s->apply.mutex);
  }
  return rc;
}

/* After a failed checkpoint: the handle is poisoned and the queued records
 * are dropped (recovery re-applies them from the log). */
static void queue_drop_locked(loom_store *s)
{
  apply_thread *t = &s->apply;
  for (size_t r = 0; r < t->queued; r++) {
    merge_account_locked(t, 0, record_memory(t->queue[r]));
    store_patch_free(t->queue[r]);
  }
  t->queued = 0;
  t->queued_bytes = 0;
  pthread_cond_broadcast(&t->cond);
}

/* Inline (no checkpoint thread): checkpoint everything queued. */
static int checkpoint_drain(loom_store *s)
{
  int rc = 0;
  while (!rc && !s->poison && s->apply.queued)
    rc = checkpoint_batch(s);
  if (rc) {
    store_poison(s, rc);
    queue_drop_locked(s);
  }
  return s->poison ? LOOM_EPANIC : 0;
}

/* The thread lets records gather before a checkpoint, so that it merges
 * many commits (each page written once) and its fsyncs compete less with
 * the saves': it starts one when the queued records fill a quarter of the
 * ring, when a thread waits for it (a full log, a read, a sync, a
 * snapshot, close), or when no record came for CKPT_IDLE_NS (seen at
 * the timeout: a save does not wake it for that, queue_push; so an idle
 * stretch is noticed after 20 to 40 ms). */
#define CKPT_IDLE_NS (INT64_C(20) * 1000 * 1000)

static void checkpoint_gather_locked(loom_store *s)
{
  apply_thread *t = &s->apply;
  while (!t->stop && !t->want && !s->poison &&
         t->queued_bytes < s->log_size / 4) {
    uint64_t seen = t->pushed;
    struct timespec at = loom_deadline(CLOCK_MONOTONIC, CKPT_IDLE_NS);
    if (pthread_cond_timedwait(&t->cond, &t->mutex, &at) == ETIMEDOUT &&
        t->pushed == seen)
      break;
  }
}

static void *apply_thread_main(void *arg)
{
  loom_store *s = arg;
  apply_thread *t = &s->apply;
  pthread_mutex_lock(&t->mutex);
  for (;;) {
    while (!t->queued && !t->stop)
      pthread_cond_wait(&t->cond, &t->mutex);
    if (!t->queued)
      break;
    checkpoint_gather_locked(s);
    t->busy = 1;
    pthread_mutex_unlock(&t->mutex);
    int rc = s->poison ? LOOM_EPANIC : checkpoint_batch(s);
    pthread_mutex_lock(&t->mutex);
    if (rc) {
      store_poison(s, rc);
      queue_drop_locked(s);
    }
    t->busy = 0;
    pthread_cond_broadcast(&t->cond);
  }
  pthread_mutex_unlock(&t->mutex);
  return NULL;
}

/* Wait until every committed record is checkpointed; a failure poisons the
 * store. */
int store_apply_wait(loom_store *s)
{
  apply_thread *t = &s->apply;
  if (!t->started)
    return checkpoint_drain(s);
  pthread_mutex_lock(&t->mutex);
  if (t->queued || t->busy) {
    /* Only then: a broadcast with nothing queued wakes the idle thread
     * for nothing, and a standby reads pages one by one (a frame's old
     * versions, the read-back), so that was two context switches a page
     * (docs/BENCHMARKS.md section 9, "CPU per save"). */
    t->want++;
    pthread_cond_broadcast(&t->cond);
    while ((t->queued || t->busy) && !s->poison)
      pthread_cond_wait(&t->cond, &t->mutex);
    t->want--;
  }
  pthread_mutex_unlock(&t->mutex);
  return s->poison ? LOOM_EPANIC : 0;
}

/* Any thread: wait until the checkpoint thread has merged every record
 * queued at the call (later ones may follow in the meantime). Without the
 * thread, nothing: the owner's own calls drain inline. */
void store_checkpoint_catch_up(loom_store *s)
{
  apply_thread *t = &s->apply;
  if (!t->started)
    return;
  pthread_mutex_lock(&t->mutex);
  if (t->queued) {
    const loom_patch *last = t->queue[t->queued - 1];
    uint64_t target = last->lsn + record_bytes(last->header.page_count);
    t->want++;
    pthread_cond_broadcast(&t->cond);
    while (s->log_head < target && !s->poison && (t->queued || t->busy))
      pthread_cond_wait(&t->cond, &t->mutex);
    t->want--;
  }
  pthread_mutex_unlock(&t->mutex);
}

/* Step 1: room in the ring for a record of bytes bytes; *lsn is where it
 * goes. Waits for the checkpoint while the log is full (or, inline, runs
 * it). A record larger than the ring waits for an empty log and grows the
 * ring to fit it (log_resize). */
static int log_resize(loom_store *s, uint64_t bytes);

static int log_room(const loom_store *s, uint64_t place, uint64_t bytes)
{
  return s->log_head == s->log_tail || place + bytes <= s->log_head + s->log_size;
}

static int log_make_room(loom_store *s, uint64_t bytes, uint64_t *lsn)
{
  apply_thread *t = &s->apply;
  int rc = 0;
  /* Larger than the ring: grow it. A ring grown so that fits the
   * configured size again: shrink it back, once the log is empty. */
  uint64_t want = bytes > s->log_size ? bytes
                  : s->log_size > s->log_want && bytes <= s->log_want ? s->log_want
                                                                      : 0;
  if (want) {
    rc = store_apply_wait(s);
    if (!rc)
      rc = log_resize(s, want);
    if (rc)
      return rc;
  }
  for (;;) {
    uint64_t place = log_place(s, s->log_tail, bytes);
    pthread_mutex_lock(&t->mutex);
    int room = log_room(s, place, bytes);
    if (!room && t->started) {
      t->waits++;
      t->want++;
      pthread_cond_broadcast(&t->cond);
      while (!room && !s->poison && (t->queued || t->busy)) {
        pthread_cond_wait(&t->cond, &t->mutex);
        room = log_room(s, place, bytes);
      }
      t->want--;
    }
    if (!room && !t->started)
      t->waits++;
    rc = room ? 0 : s->poison ? LOOM_EPANIC : 0;
    pthread_mutex_unlock(&t->mutex);
    if (room) {
      *lsn = place;
      return 0;
    }
    if (rc)
      return rc;
    if (!t->started && (rc = checkpoint_drain(s)))
      return rc;
  }
}

/* Queue a committed record for the checkpoint (never fails: begin made
 * room in the queue). The checkpoint thread is woken only when this
 * changes what it waits for: the first record of an empty queue, or the
 * one that fills the quarter checkpoint_gather_locked gathers (it sees
 * the others at its idle timeout, through t->pushed). A wake per save
 * cost the saver about 0.1 ms on a busy machine (docs/BENCHMARKS.md
 * section 9). Signalled after the unlock, so that the woken thread does
 * not block on the mutex at once. */
static void queue_push(loom_store *s, loom_patch *p)
{
  apply_thread *t = &s->apply;
  uint64_t quarter = s->log_size / 4,
           bytes = record_bytes(p->header.page_count);
  pthread_mutex_lock(&t->mutex);
  int wake = t->queued == 0 ||
             (t->queued_bytes < quarter && t->queued_bytes + bytes >= quarter);
  t->queue[t->queued++] = p;
  t->queued_bytes += bytes;
  merge_account_locked(t, record_memory(p), 0);
  t->pushed++;
  pthread_mutex_unlock(&t->mutex);
  if (wake)
    pthread_cond_broadcast(&t->cond);
}

static int queue_reserve(loom_store *s)
{
  apply_thread *t = &s->apply;
  pthread_mutex_lock(&t->mutex);
  size_t cap = t->queue_cap;
  int rc = loom_array_reserve(&t->queue, &t->queue_cap, t->queued + 1,
                              sizeof *t->queue);
  merge_account_locked(t, (t->queue_cap - cap) * sizeof *t->queue, 0);
  pthread_mutex_unlock(&t->mutex);
  return rc;
}

int store_apply_start(loom_patch *p)
{
  loom_store *s = p->store;
  if (s->writer == p)
    s->writer = NULL;
  if (s->poison) {
    store_patch_free(p);
    return LOOM_EPANIC;
  }
  queue_push(s, p);
  if (s->apply.started || (s->flags & LOOM_CHECKPOINT_DEFER))
    return 0;
  return checkpoint_drain(s);
}

int loom_store_sync(loom_store *s) { return store_apply_wait(s); }

uint64_t loom_store_queued(loom_store *s)
{
  pthread_mutex_lock(&s->apply.mutex);
  uint64_t queued = s->apply.queued;
  pthread_mutex_unlock(&s->apply.mutex);
  return queued;
}

void loom_store_log_stats(loom_store *s, loom_log_stats *out)
{
  apply_thread *t = &s->apply;
  pthread_mutex_lock(&t->mutex);
  out->used = s->log_tail - s->log_head;
  out->size = s->log_size;
  out->queued = t->queued;
  out->checkpoints = t->batches;
  out->waits = t->waits;
  out->merge_bytes = t->merge_bytes;
  out->merge_peak_bytes = t->merge_peak;
  out->recent_bytes = 0; /* the arena's: loom_get_log_stats */
  pthread_mutex_unlock(&t->mutex);
  pthread_mutex_lock(&s->snap_lock);
  out->checkpoint = s->image_pos;
  pthread_mutex_unlock(&s->snap_lock);
}

/* ---------------------------------------------------------------------- */
/* Writing a patch: begin, add, make durable. */

/* A base image (or a rewind) at after, of the lineage the store adopted
 * for it, leaves the branch the store is on (a cluster member's rewind: the store holds
 * commits past the point where after's epoch branched off, or another
 * checksum there): the positions ring's slots of those commits would say
 * a wrong checksum, so it forgets them all. */
static int base_leaves_branch(const loom_store *s, const loom_position *after)
{
  loom_branch b;
  if (after->epoch <= s->pos.epoch || s->pos.seq == 0 ||
      !loom_lineage_branch_after(&s->lineage, s->pos.epoch, &b))
    return 0;
  return b.seq < s->pos.seq || (b.seq == s->pos.seq && b.checksum != s->pos.checksum);
}

static int positions_chain(const loom_position *store, const loom_patch_header *h)
{
  if (h->flags & LOOM_PATCH_BASE)
    return h->after.epoch >= store->epoch;
  if (h->flags & LOOM_PATCH_REPAIR)
    return loom_position_same(&h->before, store) &&
           loom_position_same(&h->after, store) && h->after.epoch == store->epoch;
  if (h->flags & LOOM_PATCH_REWIND) /* sideways, onto a newer epoch */
    return loom_position_same(&h->before, store) && h->after.epoch > store->epoch;
  return loom_position_same(&h->before, store) && h->after.seq > h->before.seq &&
         h->after.epoch >= store->epoch;
}

/* Step 1 in the log's first lap (the file ends before the record's header
 * block ends): the header block is written as zeros first, alone (a
 * failure changes nothing), so that a record write that then fails part
 * way (ENOSPC past the file's end) leaves the header in an allocated
 * block that header_unwrite can zero without needing space. */
static int header_block_allocate(loom_store *s, uint64_t lsn)
{
  uint64_t size = 0, at = (uint64_t)log_offset(s, lsn, 0);
  int rc = store_file_size(s->log_fd, &size);
  if (rc || at + PATCH_HEADER_BLOCK <= size)
    return rc;
  return store_write_exact(s, s->log_fd, zero_block, sizeof zero_block, (off_t)at);
}

/* A record write that failed may have written any part of it, the header
 * included (a short write, or pages of a pwritev after it): zeroed and
 * synced, no header of this record can be durable, and the save fails with
 * nothing changed. 0 on success (else the caller poisons). */
static int header_unwrite(loom_store *s, off_t at)
{
  int rc = store_write_exact(s, s->log_fd, zero_block, sizeof zero_block, at);
  return rc ? rc : store_fsync(s, s->log_fd);
}

int store_patch_begin(loom_store *s, const loom_patch_header *h, int fill_after,
                      loom_patch **out)
{
  *out = NULL;
  if (s->flags & LOOM_READONLY)
    return LOOM_EINVAL;
  if (s->writer)
    return LOOM_EINVAL;
  if (s->poison)
    return LOOM_EPANIC;
  if (h->after.pages > MAX_PAGES || h->page_count > h->after.pages ||
      PATCH_FLAGS_BAD(h->flags) ||
      ((h->flags & LOOM_PATCH_BASE) && h->page_count != h->after.pages))
    return LOOM_EINVAL;
  if (!positions_chain(&s->pos, h))
    return LOOM_EPOSITION;
  uint64_t lsn = 0;
  int deferred = fill_after && s->io->pwritev;
  int rc = queue_reserve(s);
  if (!rc)
    rc = log_make_room(s, record_bytes(h->page_count), &lsn); /* 1 */
  if (!rc)
    rc = header_block_allocate(s, lsn);                       /* 1 */
  if (rc)
    return rc;
  loom_patch *p = patch_alloc(s, h);
  if (!p)
    return ENOMEM;
  p->lsn = lsn;
  p->fill_after = fill_after;
  p->header.before = s->pos;
  if (deferred) {
    p->deferred = malloc((size_t)(h->page_count ? h->page_count : 1) * sizeof(void *));
    if (!p->deferred) {
      store_patch_free(p);
      return ENOMEM;
    }
  }
  s->writer = p;
  *out = p;
  return 0;
}

int loom_store_patch_begin(loom_store *s, const loom_patch_header *h,
                           loom_patch **out)
{
  if (!s || !h || !out)
    return LOOM_EINVAL;
  return store_patch_begin(s, h, 0, out);
}

/* Write the pages waiting in the store's staging_iov: with pwritev
 * straight from where they are, else gathered into the staging buffer. */
static int patch_flush(loom_patch *p)
{
  if (!p->staged)
    return 0;
  loom_store *s = p->store;
  off_t off = patch_page_offset(p, p->flushed);
  size_t len = (size_t)(p->staged * PS);
  int rc;
  if (s->io->pwritev) {
    ssize_t n = s->io->pwritev(s->io->ctx, s->log_fd, s->staging_iov,
                               (int)p->staged, off);
    rc = n < 0 ? (int)-n : (size_t)n == len ? 0 : EIO;
  } else {
    for (uint64_t i = 0; i < p->staged; i++)
      if (s->staging_iov[i].iov_base != s->staging + i * PS)
        memcpy(s->staging + i * PS, s->staging_iov[i].iov_base, PS);
    rc = store_write_exact(s, s->log_fd, s->staging, len, off);
  }
  p->flushed += p->staged;
  p->staged = 0;
  return rc;
}

/* Write iov[0..k) from *off with pwritev and move *off past them. */
static int iov_write(loom_store *s, const struct iovec *iov, int k, off_t *off)
{
  size_t len = 0;
  for (int i = 0; i < k; i++)
    len += iov[i].iov_len;
  ssize_t w = s->io->pwritev(s->io->ctx, s->log_fd, iov, k, *off);
  *off += (off_t)len;
  return w < 0 ? (int)-w : (size_t)w == len ? 0 : EIO;
}

/* Step 1's write of the record: the header block, the pages not written
 * yet (p->deferred's, or the staged ones) and the entry table with its
 * trailer, contiguous from the record's start, in one pwritev (more only
 * past IOV_BATCH - 2 pages). A patch that already wrote pages (more than
 * STAGING_PAGES, not deferred) writes its header alone first. Without
 * pwritev: header, pages (through the staging buffer), entries, a pwrite
 * each. The order is no part of the argument: nothing of it is durable
 * before step 2, and a record any part of which did not reach the disk
 * fails R2's verification (I4). An error: any part may have been written,
 * the header included. */
#define IOV_BATCH 1024
static int record_write(loom_store *s, loom_patch *p, const uint8_t *block,
                        const uint8_t *entries, size_t elen)
{
  off_t off = log_offset(s, p->lsn, 0);
  int rc = 0, k = 0;
  if (!s->io->pwritev || p->flushed) {
    rc = store_write_exact(s, s->log_fd, block, PATCH_HEADER_BLOCK, off);
    if (!rc && !s->io->pwritev)
      rc = patch_flush(p);
    if (rc || !s->io->pwritev)
      return rc ? rc
                : store_write_exact(s, s->log_fd, entries, elen,
                                    patch_entries_offset(p));
    off = patch_page_offset(p, p->flushed);
  }
  struct iovec iov[IOV_BATCH];
  if (!p->flushed)
    iov[k++] = (struct iovec){(void *)block, PATCH_HEADER_BLOCK};
  uint64_t n = p->deferred ? p->header.page_count : p->staged;
  for (uint64_t i = 0; !rc && i <= n; i++) {
    if (i == n)
      iov[k++] = (struct iovec){(void *)entries, elen};
    else if (p->deferred)
      iov[k++] = (struct iovec){(void *)p->deferred[i], PS};
    else
      iov[k++] = s->staging_iov[i];
    if (k == IOV_BATCH || i == n) {
      rc = iov_write(s, iov, k, &off);
      k = 0;
    }
  }
  p->flushed += p->deferred ? 0 : p->staged;
  p->staged = 0;
  return rc;
}

int store_patch_add_hashed(loom_patch *p, uint64_t n, const void *page,
                           uint64_t hash, int stable)
{
  if (p->error)
    return p->error;
  const loom_patch_header *h = &p->header;
  int base = (h->flags & LOOM_PATCH_BASE) != 0;
  if (p->added >= h->page_count || n >= h->after.pages ||
      (p->added > 0 && n <= p->page_numbers[p->added - 1]) ||
      (base && n != p->added) ||
      (p->deferred && !stable)) /* record_write reads a deferred patch's
                                   pages where they are: stable until then */
    return p->error = LOOM_EINVAL;
  loom_store *s = p->store;
  if ((h->flags & LOOM_PATCH_REPAIR) && loom_page_hash(n, page) != s->hashes[n])
    return p->error = LOOM_EPOSITION; /* not the page that was written */
  uint64_t old = (!base && n < h->before.pages) ? s->hashes[n] : 0;
  p->page_numbers[p->added] = n;
  p->new_hashes[p->added] = hash;
  p->old_hashes[p->added] = old;
  p->sum_old += old;
  p->sum_new += hash;
  if (p->deferred && stable) {
    p->deferred[p->added++] = page;
    return 0;
  }

  p->added++;
  if (p->staged == STAGING_PAGES) { /* full: written before the record's */
    int rc = patch_flush(p);        /* one write (the last STAGING_PAGES */
    if (rc)                         /* go with the header) */
      return p->error = rc;
  }
  uint8_t *slot = s->staging + p->staged * PS;
  if (!stable)
    memcpy(slot, page, PS);
  s->staging_iov[p->staged].iov_base = stable ? (void *)page : slot;
  s->staging_iov[p->staged].iov_len = PS;
  p->staged++;
  return 0;
}

int loom_patch_add_hashed(loom_patch *p, uint64_t n, const void *page,
                          uint64_t hash)
{
  if (!p || !page)
    return LOOM_EINVAL;
  return store_patch_add_hashed(p, n, page, hash, 0);
}

int loom_patch_add_stable(loom_patch *p, uint64_t n, const void *page,
                          uint64_t hash)
{
  if (!p || !page)
    return LOOM_EINVAL;
  return store_patch_add_hashed(p, n, page, hash, 1);
}

int loom_patch_add(loom_patch *p, uint64_t n, const void *page)
{
  if (!p || !page)
    return LOOM_EINVAL;
  return store_patch_add_hashed(p, n, page, loom_page_hash(n, page), 0);
}

/* The after-checksum the added pages give: the before's, less the old hashes
 * of listed and truncated pages, plus the new hashes and zero pages grown. */
static uint64_t patch_after_checksum(const loom_patch *p)
{
  const loom_patch_header *h = &p->header;
  if (h->flags & LOOM_PATCH_BASE)
    return p->sum_new;
  const loom_store *s = p->store;
  uint64_t sum = h->before.checksum - p->sum_old + p->sum_new;
  for (uint64_t n = h->after.pages; n < h->before.pages; n++)
    sum -= s->hashes[n];
  uint64_t i = 0;
  for (uint64_t n = h->before.pages; n < h->after.pages; n++) {
    while (i < p->added && p->page_numbers[i] < n)
      i++;
    if (i == p->added || p->page_numbers[i] != n)
      sum += store_zero_hash(n);
  }
  return sum;
}

/* Step 1, before the header is written: a commit that grows the image
 * reserves the blocks its apply will write past the files' ends (the
 * patch's pages at or past pos.pages, in runs, and the hashes of every new
 * page), so that the apply, after the commit point where a failure poisons
 * the handle, does not meet a full disk: ENOSPC comes here instead and
 * changes nothing. Grown pages the patch does not hold stay holes. The
 * image file may lag pos by queued records: growths only reserve past
 * what earlier ones reserved, but a queued shrink (or base image) would
 * cut the file below pos.pages and free these blocks again before this
 * record's checkpoint, so with one queued the checkpoint runs first and
 * the files are at pos. (Blocks reserved by a commit that then fails stay
 * allocated past the end until a later commit uses or truncates them.) */
static int queue_has_cut(loom_store *s)
{
  apply_thread *t = &s->apply;
  int cut = 0;
  pthread_mutex_lock(&t->mutex);
  for (size_t i = 0; i < t->queued && !cut; i++) /* (the batch being */
    cut = starts_batch(t->queue[i]);  /* checkpointed stays queued) */
  pthread_mutex_unlock(&t->mutex);
  return cut;
}

static int reserve_growth(loom_store *s, const loom_patch *p)
{
  const loom_patch_header *h = &p->header;
  if (!s->io->reserve || h->after.pages <= s->pos.pages)
    return 0;
  int rc = queue_has_cut(s) ? store_apply_wait(s) : 0;
  if (rc)
    return rc;
  uint64_t from = s->pos.pages;
  rc = s->io->reserve(s->io->ctx, s->hashes_fd, (off_t)(from * 8),
                      (off_t)((h->after.pages - from) * 8));
  for (uint64_t i = 0; !rc && i < h->page_count; i++) {
    uint64_t first = p->page_numbers[i];
    if (first < from)
      continue;
    uint64_t count = 1;
    while (i + 1 < h->page_count && p->page_numbers[i + 1] == first + count)
      i++, count++;
    rc = s->io->reserve(s->io->ctx, s->image_fd, (off_t)(first * PS),
                        (off_t)(count * PS));
  }
  return rc == -EOPNOTSUPP ? 0 : -rc;
}

int store_patch_make_durable(loom_patch *p)
{
  loom_store *s = p->store;
  loom_patch_header *h = &p->header;
  int rc = p->error;
  if (!rc)
    rc = reserve_growth(s, p);                              /* 1 */
  if (!rc && p->added != h->page_count)
    rc = LOOM_EINVAL;
  if (!rc) {
    uint64_t sum = patch_after_checksum(p);
    if (p->fill_after)
      h->after.checksum = sum;
    else if (sum != h->after.checksum)
      rc = LOOM_EPOSITION;
  }
  uint8_t block[PATCH_HEADER_BLOCK];
  patch_header_encode(block, h, p->lsn);
  size_t elen = 0;
  uint8_t *entries =
      rc ? NULL
         : patch_entries_encode(p, get_le64(block + PATCH_HEADER_SUM), &elen);
  if (!rc && !entries)
    rc = ENOMEM;
  if (rc) {
    /* At most pages were written (a patch of more than STAGING_PAGES),
     * no header: nothing changed. */
    p->error = rc;
    return rc;
  }
  rc = record_write(s, p, block, entries, elen);            /* 1 */
  free(entries);
  off_t at = log_offset(s, p->lsn, 0);
  if (rc && header_unwrite(s, at) == 0) {
    p->error = rc; /* e.g. a full disk: this save fails, the handle lives */
    return rc;
  }
  if (!rc)
    rc = store_fsync(s, s->log_fd);                         /* 2 */
  if (rc) {
    /* The header may or may not be durable: poison, recovery decides. */
    store_poison(s, rc);
    p->error = rc;
    return rc;
  }
  /* 3: the fdatasync returned, so the record is durable as written (no
   * read-back: it would read the page cache, not the disk). */
  rc = hashes_apply(s, p);
  if (rc) {
    store_poison(s, rc);
    return rc;
  }
  pthread_mutex_lock(&s->apply.mutex); /* loom_store_log_stats reads it */
  s->log_tail = p->lsn + record_bytes(h->page_count);
  pthread_mutex_unlock(&s->apply.mutex);
  if ((h->flags & (LOOM_PATCH_BASE | LOOM_PATCH_REWIND)) &&
      base_leaves_branch(s, &h->after))
    positions_forget(s->positions_fd);
  s->pos = h->after;
  if (!(h->flags & LOOM_PATCH_REPAIR)) /* a repair stays at its position */
    positions_note(s->positions_fd, &s->pos);
  free(p->deferred); /* written: the queued record keeps its lists only */
  p->deferred = NULL;
  return 0;
}

int loom_patch_commit(loom_patch *p)
{
  if (!p)
    return LOOM_EINVAL;
  int rc = store_patch_make_durable(p);
  if (rc) {
    loom_patch_abort(p);
    return rc;
  }
  return store_apply_start(p);
}

void loom_patch_abort(loom_patch *p)
{
  if (!p)
    return;
  if (p->store->writer == p)
    p->store->writer = NULL;
  store_patch_free(p);
}

/* ---------------------------------------------------------------------- */
/* Open, recover, close. */

void store_free(loom_store *s)
{
  if (s->apply.started) {
    pthread_mutex_lock(&s->apply.mutex);
    s->apply.stop = 1;
    pthread_cond_broadcast(&s->apply.cond);
    pthread_mutex_unlock(&s->apply.mutex);
    pthread_join(s->apply.thread, NULL);
  }
  pthread_mutex_lock(&s->apply.mutex);
  queue_drop_locked(s); /* a poisoned store's, or after a failed open */
  pthread_mutex_unlock(&s->apply.mutex);
  free(s->apply.queue);
  pthread_mutex_destroy(&s->apply.mutex);
  pthread_cond_destroy(&s->apply.cond);
  pthread_mutex_destroy(&s->hash_lock);
  store_close_fd(s, &s->image_fd);
  store_close_fd(s, &s->hashes_fd);
  store_close_fd(s, &s->meta_fd);
  store_close_fd(s, &s->log_fd);
  if (s->positions_fd >= 0)
    close(s->positions_fd);
  if (s->lockfd >= 0)
    store_close_fd(s, &s->lockfd); /* releases the flock */
  store_close_fd(s, &s->dirfd);
  free(s->hashes);
  free(s->staging);
  free(s->ckpt_buf);
  store_tree_free(&s->tree);
  pthread_mutex_destroy(&s->snap_lock);
  free(s);
}

/* fsync the directory that holds dir (its entry for dir). */
static int sync_parent(loom_store *s, const char *dir)
{
  size_t len = strlen(dir);
  char *parent = malloc(len + 4);
  if (!parent)
    return ENOMEM;
  memcpy(parent, dir, len);
  memcpy(parent + len, "/..", 4);
  int fd = s->io->open(s->io->ctx, AT_FDCWD, parent, O_RDONLY | O_DIRECTORY, 0);
  free(parent);
  if (fd < 0)
    return -fd;
  int rc = store_fsync(s, fd);
  store_close_fd(s, &fd);
  return rc;
}

static int open_file(loom_store *s, const char *name, int flags, int *fd)
{
  int rc = s->io->open(s->io->ctx, s->dirfd, name, flags, 0600);
  if (rc < 0)
    return -rc;
  *fd = rc;
  return 0;
}

/* mkdir -p dir, each directory made 0700 (DESIGN section 5: data
 * directories are private), each new entry made durable in its parent. */
static int mkdir_with_parents(loom_store *s, const char *dir)
{
  size_t len = strlen(dir);
  char *path = malloc(len + 1);
  if (!path)
    return ENOMEM;
  memcpy(path, dir, len + 1);
  int rc = 0;
  for (size_t i = 1; i <= len && !rc; i++) {
    if (path[i] != '/' && path[i] != '\0')
      continue;
    char saved = path[i];
    path[i] = '\0';
    int m = s->io->mkdir(s->io->ctx, AT_FDCWD, path, 0700);
    if (m == 0)
      rc = sync_parent(s, path);
    else if (m != -EEXIST)
      rc = -m;
    path[i] = saved;
  }
  free(path);
  return rc;
}

/* Make a new, empty image: the data files and their directory entries,
 * then the meta, then the directory again. */
static int store_create(loom_store *s)
{
  int rc = 0;
  int *fds[] = {&s->image_fd, &s->hashes_fd, &s->log_fd};
  const char *names[] = {"image", "hashes", "log"};
  for (int i = 0; i < 3 && !rc; i++) {
    store_close_fd(s, fds[i]);
    rc = open_file(s, names[i], O_RDWR | O_CREAT | O_TRUNC, fds[i]);
  }
  for (int i = 0; i < 3 && !rc; i++)
    rc = store_fsync(s, *fds[i]);
  /* The data files' entries are durable before the meta has a valid slot:
   * a crash before this leaves no position (an empty image is made anew),
   * a crash after it a complete, empty store. */
  if (!rc)
    rc = store_fsync(s, s->dirfd);
  loom_position p = {.epoch = 1};
  s->generation = 0;
  if (!rc)
    rc = io_truncate(s, s->meta_fd, 0);
  if (!rc)
    rc = meta_write(s, &p);
  if (!rc)
    rc = store_fsync(s, s->dirfd);
  if (!rc) {
    s->pos = p;
    s->applied = p;
  }
  return rc;
}

/* Load the hash table for pages [0, pages) from the file as far as it goes. */
static int hashes_load(loom_store *s, uint64_t pages)
{
  int rc = store_hashes_reserve(s, pages ? pages : 1);
  if (rc)
    return rc;
  uint64_t size;
  if ((rc = store_file_size(s->hashes_fd, &size)))
    return rc;
  uint64_t have = size / 8 < pages ? size / 8 : pages;
  uint8_t buf[HASH_BLOCK];
  for (uint64_t n = 0; n < have; n += HASHES_PER_BLOCK) {
    uint64_t k = have - n < HASHES_PER_BLOCK ? have - n : HASHES_PER_BLOCK;
    if ((rc = store_read_exact(s, s->hashes_fd, buf, (size_t)k * 8, (off_t)(n * 8))))
      return rc;
    for (uint64_t i = 0; i < k; i++)
      s->hashes[n + i] = get_le64(buf + i * 8);
  }
  for (uint64_t n = have; n < pages; n++)
    s->hashes[n] = 0;
  return 0;
}

/* Recompute every page's hash from the image; returns the sum. */
int store_hashes_rebuild(loom_store *s, uint64_t pages, uint64_t *sum)
{
  *sum = 0;
  for (uint64_t n = 0; n < pages; n += STAGING_PAGES) {
    uint64_t k = pages - n < STAGING_PAGES ? pages - n : STAGING_PAGES;
    int rc = store_read_exact(s, s->image_fd, s->staging, (size_t)(k * PS),
                              (off_t)(n * PS));
    if (rc)
      return rc;
    for (uint64_t i = 0; i < k; i++) {
      s->hashes[n + i] = loom_page_hash(n + i, s->staging + i * PS);
      *sum += s->hashes[n + i];
    }
  }
  return 0;
}

/* R3: the table and the image agree with the position, or are rebuilt; the
 * hashes file ends up exactly pages * 8 bytes. */
static int store_check(loom_store *s)
{
  uint64_t size = 0, hashes_size = 0;
  int rc = store_file_size(s->image_fd, &size);
  if (!rc)
    rc = store_file_size(s->hashes_fd, &hashes_size);
  if (rc)
    return rc;
  if (size != s->pos.pages * PS)
    return LOOM_ECORRUPT;
  int table_ok = hashes_size >= s->pos.pages * 8 &&
                 hashes_sum(s, s->pos.pages) == s->pos.checksum;
  if (table_ok && hashes_size == s->pos.pages * 8)
    return 0;
  if (s->flags & LOOM_READONLY)
    return LOOM_ECORRUPT;
  if (!table_ok) {
    uint64_t sum;
    if ((rc = store_hashes_rebuild(s, s->pos.pages, &sum)))
      return rc;
    if (sum != s->pos.checksum)
      return LOOM_ECORRUPT;
  }
  rc = io_truncate(s, s->hashes_fd, s->pos.pages * 8);
  for (uint64_t b = 0; !rc && !table_ok && b * HASHES_PER_BLOCK < s->pos.pages; b++)
    rc = store_hashes_write_block(s, b, s->pos.pages);
  if (!rc)
    rc = store_fsync(s, s->hashes_fd);
  return rc;
}

/* R2's pages, in two threads. Recovery's time is reading the log and
 * hashing every page of it, which one thread does one after the other;
 * so the records whose headers and entries verified are handed out one
 * by one to this thread and a helper, each reading and hashing whole
 * records through its own staging buffer. Which record fails first is
 * decided by position in the log, not by which thread saw it first: a
 * failure only makes the threads skip the records after it. */
typedef struct verify_work {
  loom_store *s;
  loom_patch **recs;
  int *rcs;
  size_t count;
  atomic_size_t next;
  atomic_size_t first_bad; /* count while none failed */
} verify_work;

/* Helpers only for a log with at least this many pages to hash: a thread
 * costs tens of microseconds, a page a few. */
#define VERIFY_HELPER_PAGES 256u

static void verify_records(verify_work *w, uint8_t *staging)
{
  for (;;) {
    size_t i = atomic_fetch_add(&w->next, 1);
    if (i >= w->count || i > atomic_load(&w->first_bad))
      return;
    const loom_patch *p = w->recs[i];
    w->rcs[i] = record_verify_pages(w->s, w->s->log_fd,
                                    log_offset(w->s, p->lsn, 0), p, staging);
    size_t bad = atomic_load(&w->first_bad);
    while (w->rcs[i] && i < bad &&
           !atomic_compare_exchange_weak(&w->first_bad, &bad, i))
      ;
  }
}

static void *verify_helper_main(void *arg)
{
  verify_work *w = arg;
  uint8_t *staging = malloc((size_t)STAGING_PAGES * PS);
  if (staging) /* else this thread does nothing: the caller does it all */
    verify_records(w, staging);
  free(staging);
  return NULL;
}

/* rcs[i]: record i's pages verify (0), or why not; records after the
 * first that failed are left at LOOM_ECORRUPT, unread. */
static void verify_pages_all(loom_store *s, loom_patch **recs, int *rcs,
                             size_t count)
{
  verify_work w = {.s = s, .recs = recs, .rcs = rcs, .count = count};
  atomic_init(&w.next, 0);
  atomic_init(&w.first_bad, count);
  uint64_t pages = 0;
  for (size_t i = 0; i < count; i++) {
    rcs[i] = LOOM_ECORRUPT;
    pages += recs[i]->header.page_count;
  }
  pthread_t helper;
  int helped = count > 1 && pages >= VERIFY_HELPER_PAGES &&
               pthread_create(&helper, NULL, verify_helper_main, &w) == 0;
  verify_records(&w, s->staging);
  if (helped)
    pthread_join(helper, NULL);
}

/* R2: walk the log from the checkpoint: every record that verifies and
 * continues from the position before it, in order, until one does not (a
 * torn tail, or stale bytes of an older lap). First the headers and entry
 * tables, in order (each names where the next one is), then the pages of
 * all of them (verify_pages_all); the log ends at the first record that
 * failed either. With keep, each is queued for the checkpoint and its
 * hashes go into the table; else it is freed. */
static int log_scan(loom_store *s, int keep, loom_position *end)
{
  *end = s->pos;
  s->log_tail = s->log_head;
  if (!s->log_size || s->log_fd < 0)
    return 0;
  loom_patch **recs = NULL;
  size_t count = 0, cap = 0;
  uint64_t lsn = s->log_head;
  loom_position at = s->pos;
  /* An error past the candidates (not the log's end) counts only if they
   * all verify: the scan one record at a time would have met it there. */
  int past = 0;
  for (;;) {
    loom_patch *p = NULL;
    if (count == cap) {
      size_t more = cap ? 2 * cap : 64;
      loom_patch **grown = realloc(recs, more * sizeof *recs);
      if (!grown) {
        past = ENOMEM;
        break;
      }
      recs = grown;
      cap = more;
    }
    past = record_read_next(s, lsn, &at, &p);
    if (past)
      break;
    recs[count++] = p;
    at = p->header.after;
    lsn = p->lsn + record_bytes(p->header.page_count);
  }
  if (past == LOOM_ECORRUPT)
    past = 0; /* the log's end */
  int rc = 0, *rcs = count ? malloc(count * sizeof *rcs) : NULL;
  if (count && !rcs)
    rc = ENOMEM;
  if (rcs)
    verify_pages_all(s, recs, rcs, count);
  size_t i = 0;
  for (; !rc && i < count && rcs[i] == 0; i++) {
    loom_patch *p = recs[i];
    if (keep && !(rc = queue_reserve(s)))
      rc = hashes_apply(s, p);
    if (rc)
      break;
    *end = p->header.after;
    s->log_tail = p->lsn + record_bytes(p->header.page_count);
    if (keep)
      queue_push(s, p);
    else
      store_patch_free(p);
  }
  if (!rc && i < count && rcs[i] != LOOM_ECORRUPT)
    rc = rcs[i]; /* an I/O error, not the log's end */
  if (!rc && i == count)
    rc = past;
  for (; i < count; i++)
    store_patch_free(recs[i]);
  free(rcs);
  free(recs);
  return rc;
}

int store_log_end(loom_store *s, loom_position *out)
{
  if (s->v1_pending) { /* a version 1 directory: no log, its patch */
    *out = s->v1_after;
    return 0;
  }
  return log_scan(s, 0, out);
}

/* Before anything is sized by the meta's page count (a damaged or hostile
 * meta must not size the hash table: the fuzzer's meta with 2^31 pages
 * asked for 16 GiB): the image file must be at that size, or a record
 * must follow the head (headers only here, each carrying its lsn and
 * continuing from the one before; log_scan verifies them whole) that
 * explains the file's size: a longer file was grown by a checkpoint cut
 * short, a shorter one was cut by one, to a record's size at or below
 * the file's (later writes of the batch may have extended it again). */
static int recover_check_size(loom_store *s)
{
  uint64_t image_size = 0;
  int rc = store_file_size(s->image_fd, &image_size);
  if (rc || image_size == s->pos.pages * PS)
    return rc;
  loom_position cur = s->pos;
  uint64_t lsn = s->log_head;
  while (s->log_size && s->log_fd >= 0) {
    loom_patch_header h;
    uint64_t sum, off = (uint64_t)log_offset(s, lsn, 0);
    rc = header_read_at(s, lsn, &cur, &h, &sum);
    if (rc == LOOM_ECORRUPT && off != 0) {
      lsn += s->log_size - off; /* the writer skipped the lap's end */
      rc = header_read_at(s, lsn, &cur, &h, &sum);
    }
    if (rc)
      return rc;
    if (image_size > s->pos.pages * PS || h.after.pages * PS <= image_size)
      return 0;
    cur = h.after;
    lsn += record_bytes(h.page_count);
  }
  return LOOM_ECORRUPT;
}

/* R2 and R3. The table is loaded at the checkpoint's position, the
 * records found move it (and the position) on, the checkpoint brings the
 * files there. */
static int store_recover(loom_store *s)
{
  int rc = recover_check_size(s);
  if (!rc)
    rc = hashes_load(s, s->pos.pages);
  loom_position end;
  if (!rc)
    rc = log_scan(s, 1, &end);
  if (rc)
    return rc;
  if (!s->apply.queued) {
    /* Nothing to re-apply: the image must already match the position. */
    uint64_t image_size = 0;
    if ((rc = store_file_size(s->image_fd, &image_size)))
      return rc;
    if (image_size != s->pos.pages * PS)
      return LOOM_ECORRUPT; /* (a short hashes file is rebuilt, R3) */
  }
  s->pos = end;
  rc = checkpoint_drain(s);
  if (rc)
    return s->poison > 0 ? s->poison : rc;
  return store_check(s);
}

/* A version 1 directory (a single patch slot): upgraded at open, unless its
 * patch still counts (a crash left a commit not yet applied): then the
 * previous release must open it once. A patch counts only when it is one
 * that release would apply and that changes the position: its header
 * verifies, its before is the meta's position, it is no page repair (a
 * repair keeps the position: discarding it leaves rotted pages for the
 * scrubber, as before it was written) and its whole body verifies (else
 * it never committed, and that release discarded it without removing
 * it). */
static int v1_patch_pending(loom_store *s, loom_position *after)
{
  int fd = -1, pending = 0;
  uint8_t b[PATCH_HEADER_BLOCK];
  loom_patch_header h;
  uint64_t size = 0;
  if (open_file(s, "patch", O_RDONLY, &fd))
    return 0;
  int rc = store_read_exact(s, fd, b, sizeof b, 0);
  if (!rc)
    rc = header_check(b, FORMAT_VERSION_V1, 104);
  if (!rc)
    rc = header_fields_decode(b, &h);
  if (!rc)
    rc = store_file_size(fd, &size);
  if (!rc && loom_position_same_epoch(&h.before, &s->pos) &&
      !(h.flags & LOOM_PATCH_REPAIR) && !loom_position_same(&h.after, &h.before) &&
      size >= PATCH_HEADER_BLOCK + h.page_count * (PS + PATCH_ENTRY_BYTES) + 8) {
    loom_patch *p = patch_alloc(s, &h);
    pending = p ? record_verify(s, fd, 0, p, get_le64(b + 104)) == 0 : 1;
    store_patch_free(p);
    *after = h.after;
  }
  store_close_fd(s, &fd);
  return pending;
}

/* R3 for a hashes file that is gone: derived data, made anew (empty) and
 * rebuilt from the image by store_check. A read-only open goes without. */
static int open_hashes(loom_store *s, int readonly)
{
  int rc = open_file(s, "hashes", readonly ? O_RDONLY : O_RDWR, &s->hashes_fd);
  if (rc != ENOENT)
    return rc;
  if (readonly)
    return 0;
  rc = open_file(s, "hashes", O_RDWR | O_CREAT, &s->hashes_fd);
  /* Or the new entry may vanish in a crash (then it is made again). */
  return rc ? rc : store_fsync(s, s->dirfd);
}

/* Whether the directory's image file holds pages: with no valid meta, the
 * difference between a store that never recorded a position (a crash
 * while creating it) and one whose meta was lost (LOOM_EMETA). */
static int image_has_pages(loom_store *s)
{
  struct stat st;
  return fstatat(s->dirfd, "image", &st, 0) == 0 && st.st_size > 0;
}

/* The directory (made first with LOOM_CREATE), and its lock unless
 * read-only. */
static int open_dir_locked(loom_store *s, const char *dir, unsigned flags)
{
  int readonly = (flags & LOOM_READONLY) != 0;
  int rc = 0;
  if ((flags & LOOM_CREATE) && !readonly)
    rc = mkdir_with_parents(s, dir);
  if (!rc) {
    int fd = s->io->open(s->io->ctx, AT_FDCWD, dir, O_RDONLY | O_DIRECTORY, 0);
    if (fd < 0)
      rc = fd == -ENOENT ? LOOM_ENOIMAGE : -fd;
    else
      s->dirfd = fd;
  }
  /* Without LOOM_CREATE, a directory with no meta is no store: say so
   * before making a lock file in it. */
  if (!rc && !(flags & LOOM_CREATE) && faccessat(s->dirfd, "meta", F_OK, 0) != 0)
    rc = errno == ENOENT ? LOOM_ENOIMAGE : errno;
  if (!rc && !readonly) {
    rc = open_file(s, "lock", O_RDWR | O_CREAT, &s->lockfd);
    if (!rc && flock(s->lockfd, LOCK_EX | LOCK_NB) < 0)
      rc = errno == EWOULDBLOCK ? LOOM_ELOCKED : errno;
  }
  return rc;
}

/* The position from the open meta file; with create, a new store where
 * none was recorded. */
static int read_meta(loom_store *s, int create)
{
  meta_log log = {0, 0, 0, 0};
  int v1 = 0;
  int rc = meta_read(s, &s->generation, &s->pos, &s->lineage, &log, &v1);
  s->applied = s->pos;
  s->log_origin = log.origin;
  s->log_size = log.size;
  s->log_head = s->log_tail = log.head;
  s->log_was_live = log.size && (log.flags & META_LOG_LIVE);
  if (!rc && v1 && v1_patch_pending(s, &s->v1_after)) {
    /* A read-only open (inspect) describes it: the position the previous
     * release would recover to. */
    s->v1_pending = 1;
    rc = (s->flags & LOOM_READONLY) ? 0 : LOOM_EVERSION;
  }
  if (rc == LOOM_ENOIMAGE && create) {
    /* No position recorded: only an empty (or absent) image may be
     * replaced by a new one. */
    int img = -1;
    uint64_t size = 0;
    int orc = open_file(s, "image", O_RDONLY, &img);
    if (!orc) {
      orc = store_file_size(img, &size);
      store_close_fd(s, &img);
    }
    rc = (orc && orc != ENOENT) ? orc : size ? LOOM_EMETA : store_create(s);
  }
  return rc;
}

/* The image and hashes files, unless store_create opened them. */
static int open_image_and_hashes(loom_store *s, int readonly)
{
  int rc = 0;
  if (s->image_fd < 0)
    rc = open_file(s, "image", readonly ? O_RDONLY : O_RDWR, &s->image_fd);
  if (!rc && s->hashes_fd < 0)
    rc = open_hashes(s, readonly);
  return rc;
}

/* The log file, made anew (empty) when gone unless read-only (a version 1
 * directory, a copy, or one closed cleanly); a read-only open goes
 * without. Gone while the meta says a writer had it open (META_LOG_LIVE:
 * records past the checkpoint may have been in it): LOOM_ELOGLOST, never
 * a silent open at the checkpoint. */
static int open_log(loom_store *s, int readonly)
{
  int rc = open_file(s, "log", readonly ? O_RDONLY : O_RDWR, &s->log_fd);
  if (rc == ENOENT && s->log_was_live)
    return LOOM_ELOGLOST;
  if (rc == ENOENT && readonly)
    return 0;
  if (rc == ENOENT) {
    rc = open_file(s, "log", O_RDWR | O_CREAT, &s->log_fd);
    if (!rc)
      rc = store_fsync(s, s->dirfd);
  }
  return rc;
}

/* Settling on the configured ring size, with the log empty (recovery
 * checkpointed everything): the lsns go on from the tail, so no stale
 * record of the old geometry can pass for a new one. Durable with the
 * meta that settle writes next. */
static void log_settle_size(loom_store *s)
{
  if (s->log_size == s->log_want)
    return;
  s->log_origin = s->log_head = s->log_tail;
  s->log_size = s->log_want;
}

/* The log file cut to the ring (a larger ring's bytes, never read once
 * the meta with the smaller size is durable). Not synced: a cut lost in a
 * crash leaves bytes that are still never read, and the next open or
 * shrink cuts them again. */
static int log_trim_file(loom_store *s)
{
  uint64_t size = 0;
  int rc = store_file_size(s->log_fd, &size);
  return !rc && size > s->log_size ? io_truncate(s, s->log_fd, s->log_size) : rc;
}

/* Resize the ring to hold one record of bytes bytes, or back to the
 * configured size (the log is empty: log_make_room drained it), durable
 * in the meta before anything is written at the new geometry; a smaller
 * ring then cuts the file. */
static int log_resize(loom_store *s, uint64_t bytes)
{
  uint64_t origin = s->log_origin, size = s->log_size;
  pthread_mutex_lock(&s->apply.mutex); /* loom_store_log_stats reads them */
  s->log_origin = s->log_head = s->log_tail;
  s->log_size = (bytes + LOG_ALIGN - 1) / LOG_ALIGN * LOG_ALIGN;
  pthread_mutex_unlock(&s->apply.mutex);
  int rc = meta_write(s, &s->pos);
  if (rc) {
    pthread_mutex_lock(&s->apply.mutex);
    s->log_origin = origin;
    s->log_size = size;
    pthread_mutex_unlock(&s->apply.mutex);
    store_poison(s, rc);
  }
  return rc ? rc : log_trim_file(s);
}

/* After recovery, before the first append: a record recovery rejected at
 * the tail (torn: its header durable, some of the rest not) carries the
 * lsn the next append reuses, with the same before-position. Were that
 * append's pages to reach the disk and not its header (a second crash),
 * the old header would find pages that verify, and recovery would open at
 * a position never committed. So the header block at the tail's place (and
 * at the next lap's start, where recovery also looks) is zeroed when it
 * holds a header with that lsn, and the log fsynced before any append. */
static int log_clear_tail(loom_store *s)
{
  uint64_t size = 0;
  int rc = store_file_size(s->log_fd, &size), cleared = 0;
  uint64_t off = s->log_size ? (uint64_t)log_offset(s, s->log_tail, 0) : 0;
  uint64_t lsns[2] = {s->log_tail, s->log_tail + (s->log_size - off)};
  for (int i = 0; !rc && s->log_size && i < (off ? 2 : 1); i++) {
    uint8_t block[PATCH_HEADER_BLOCK];
    loom_patch_header h;
    uint64_t sum, at = (uint64_t)log_offset(s, lsns[i], 0), lsn = 0;
    if (at + PATCH_HEADER_BLOCK > size)
      continue;
    rc = store_read_exact(s, s->log_fd, block, sizeof block, (off_t)at);
    if (rc || patch_header_decode(block, &h, &sum, &lsn) || lsn != lsns[i])
      continue;
    memset(block, 0, sizeof block);
    rc = store_write_exact(s, s->log_fd, block, sizeof block, (off_t)at);
    cleared = 1;
  }
  return !rc && cleared ? store_fsync(s, s->log_fd) : rc;
}

/* Before any commit can be acknowledged: the position this open settled
 * on is rewritten and synced (a slot read back from the page cache after
 * a failed fsync may never have reached the disk), and the directory's
 * entries (and the directory's in its parent) are made durable, whoever
 * created them and whenever. */
static int settle(loom_store *s, const char *dir, int readonly, int create)
{
  int rc = 0;
  s->log_live = !readonly; /* records may follow the head from now on */
  if (!readonly)
    log_settle_size(s);
  if (!readonly)
    rc = meta_write(s, &s->pos);
  if (!rc && !readonly && s->log_fd >= 0)
    rc = log_clear_tail(s);
  if (!rc && !readonly && s->log_fd >= 0)
    rc = log_trim_file(s); /* a ring settled back to the configured size */
  if (!rc && !readonly)
    rc = store_fsync(s, s->dirfd);
  if (!rc && create)
    rc = sync_parent(s, dir);
  return rc;
}

static int start_apply_thread(loom_store *s)
{
  apply_thread *t = &s->apply;
  int rc = pthread_create(&t->thread, NULL, apply_thread_main, s);
  if (!rc)
    t->started = 1;
  return rc;
}

int store_alloc(const loom_io *io, loom_store **out)
{
  loom_store *s = calloc(1, sizeof *s);
  if (!s)
    return ENOMEM;
  s->io = io ? io : loom_io_posix();
  s->dirfd = s->lockfd = s->image_fd = s->hashes_fd = s->meta_fd = s->log_fd = -1;
  s->positions_fd = -1;
  pthread_mutex_init(&s->hash_lock, NULL);
  pthread_mutex_init(&s->apply.mutex, NULL);
  int rc = loom_cond_init_mono(&s->apply.cond);
  s->staging = malloc((STAGING_PAGES + 1) * PS); /* +1: snapshot copies */
  s->ckpt_buf = malloc(STAGING_PAGES * PS);
  pthread_mutex_init(&s->snap_lock, NULL);
  if (!rc && !(s->staging && s->ckpt_buf))
    rc = ENOMEM;
  if (rc)
    store_free(s);
  else
    *out = s;
  return rc;
}

int store_sync_parent(loom_store *s, const char *dir)
{
  return sync_parent(s, dir);
}

int store_open_flags(const char *dir, unsigned flags, const loom_io *io,
                     loom_store **out)
{
  return store_open_log(dir, flags, io, 0, out);
}

int store_open_log(const char *dir, unsigned flags, const loom_io *io,
                   uint64_t log_bytes, loom_store **out)
{
  *out = NULL;
  if (!dir)
    return LOOM_EINVAL;
  loom_store *s;
  int rc = store_alloc(io, &s);
  if (rc)
    return rc;
  s->flags = flags;
  s->log_want = log_bytes ? (log_bytes + LOG_ALIGN - 1) / LOG_ALIGN * LOG_ALIGN
                          : LOOM_LOG_BYTES_DEFAULT;
  int readonly = (flags & LOOM_READONLY) != 0;
  int create = (flags & LOOM_CREATE) && !readonly;

  if (!rc)
    rc = open_dir_locked(s, dir, flags);
  if (!rc)
    rc = open_file(s, "meta", readonly ? O_RDONLY : O_RDWR | (create ? O_CREAT : 0),
                   &s->meta_fd);
  if (rc == ENOENT)
    rc = LOOM_ENOIMAGE;
  if (!rc)
    rc = read_meta(s, create);
  if (rc == LOOM_ENOIMAGE && image_has_pages(s))
    rc = LOOM_EMETA; /* a position was lost, not never recorded */
  if (!rc)
    rc = open_image_and_hashes(s, readonly);
  if (rc == ENOENT)
    rc = LOOM_ECORRUPT;
  if (!rc && s->log_fd < 0)
    rc = open_log(s, readonly);
  if (!rc && !readonly)
    rc = store_recover(s); /* read-only tools need the position only */
  if (!rc)
    rc = settle(s, dir, readonly, create);
  s->image_pos = s->pos;
  s->image_lineage = s->lineage;
  if (!rc && !readonly) /* no tree: the store is usable, snapshots say so */
    (void)store_tree_build(&s->tree, s->hashes, s->pos.pages);
  if (!rc && !readonly) {
    s->positions_fd = positions_open(s->dirfd);
    positions_note(s->positions_fd, &s->pos);
  } else if (!rc) { /* read it only (inspect --at); absent: -1, "unknown" */
    s->positions_fd = positions_open_readonly(s->dirfd);
  }
  if (!rc && (flags & LOOM_APPLY_ASYNC) && !readonly)
    rc = start_apply_thread(s);
  if (rc) {
    store_free(s);
    return rc;
  }
  *out = s;
  return 0;
}

int loom_store_open(const char *dir, unsigned flags, const loom_io *io,
                    loom_store **out)
{
  if (!out)
    return LOOM_EINVAL;
  return store_open_flags(dir, flags & (LOOM_CREATE | LOOM_READONLY |
                                        LOOM_APPLY_ASYNC |
                                        LOOM_CHECKPOINT_DEFER), io, out);
}

int loom_store_open_with(const char *dir, const loom_store_options *opt,
                         loom_store **out)
{
  const unsigned known = LOOM_CREATE | LOOM_READONLY | LOOM_APPLY_ASYNC |
                         LOOM_CHECKPOINT_DEFER;
  if (!out)
    return LOOM_EINVAL;
  *out = NULL;
  if (!opt || (opt->flags & ~known))
    return LOOM_EINVAL;
  return store_open_log(dir, opt->flags, opt->io, opt->log_bytes, out);
}

int loom_store_close(loom_store *s)
{
  if (!s)
    return 0;
  int rc = store_apply_wait(s);
  if (s->writer)
    loom_patch_abort(s->writer);
  if (!rc && s->log_live) {
    /* Every record is checkpointed: the meta says the log holds nothing
     * past the head, so a copy without the log (or one whose log is lost
     * after this) opens at the checkpoint, which is everything. */
    s->log_live = 0;
    rc = meta_write(s, &s->pos);
    if (rc)
      store_poison(s, rc);
  }
  int poison = s->poison;
  store_free(s);
  return rc ? (poison > 0 ? poison : rc) : 0;
}

void loom_store_position(const loom_store *s, loom_position *out)
{
  *out = s->pos;
}

uint64_t loom_store_page_hash(const loom_store *s, uint64_t n)
{
  return s->hashes && n < s->pos.pages ? s->hashes[n] : 0;
}

int store_read_image_page(loom_store *s, uint64_t n, void *buf)
{
  return store_read_exact(s, s->image_fd, buf, PS, (off_t)(n * PS));
}

int store_read_record_page(loom_store *s, uint64_t lsn, uint64_t i, void *buf)
{
  return store_read_exact(s, s->log_fd, buf, PS,
                          log_offset(s, lsn, PATCH_HEADER_BLOCK + i * PS));
}

int loom_store_read_page(loom_store *s, uint64_t n, void *buf)
{
  if (s->writer)
    return LOOM_EINVAL; /* inside a commit hook: use loom_commit_old_page */
  int rc = store_apply_wait(s);
  if (rc)
    return rc;
  if (n >= s->pos.pages)
    return LOOM_EINVAL;
  return store_read_image_page(s, n, buf);
}

/* THE COMMIT LOG, for a reader that need not see the image (a standby
 * rebuilding a frame's deltas on the versions its previous commits left:
 * with a wait, each apply waited for the previous one's image writes and
 * two fsyncs). Page n as committed, looked for from the newest queued
 * record back: a record that lists it has it (read from the log while
 * apply.mutex keeps the record's bytes there: a checkpoint frees them
 * under it); a record that grew the image past it without listing it
 * made it a zero page; else the image has it at the oldest record's
 * start, and no queued record will write it there. (Going back, n stays
 * below each record's after.pages: the one after it grew no further than
 * its before.) 0 (and *rc) when read so; 1 before a rewind, which the
 * caller waits for instead. */
static int read_page_without_wait(loom_store *s, uint64_t n, void *buf, int *rc)
{
  apply_thread *t = &s->apply;
  pthread_mutex_lock(&t->mutex);
  if (s->poison) { /* a failed checkpoint dropped the queue under the
                      mutex, after poisoning: the image may miss it */
    pthread_mutex_unlock(&t->mutex);
    *rc = LOOM_EPANIC;
    return 0;
  }
  for (size_t r = t->queued; r-- > 0;) {
    const loom_patch *p = t->queue[r];
    const loom_patch_header *h = &p->header;
    if (h->flags & LOOM_PATCH_REWIND) {
      pthread_mutex_unlock(&t->mutex);
      return 1;
    }
    uint64_t lo = loom_sorted_at(p->page_numbers, h->page_count, n);
    if (lo < h->page_count && p->page_numbers[lo] == n) {
      *rc = store_read_record_page(s, p->lsn, lo, buf);
      pthread_mutex_unlock(&t->mutex);
      return 0;
    }
    if (n >= h->before.pages) { /* new in this record, and not listed */
      pthread_mutex_unlock(&t->mutex);
      memset(buf, 0, PS);
      *rc = 0;
      return 0;
    }
  }
  pthread_mutex_unlock(&t->mutex);
  *rc = store_read_image_page(s, n, buf);
  return 0;
}

int loom_store_read_committed_page(loom_store *s, uint64_t n, void *buf)
{
  if (s->writer)
    return LOOM_EINVAL; /* inside a commit hook: use loom_commit_old_page */
  if (s->poison)
    return LOOM_EPANIC;
  if (n >= s->pos.pages)
    return LOOM_EINVAL;
  int rc = 0;
  if (read_page_without_wait(s, n, buf, &rc) == 0)
    return rc;
  return loom_store_read_page(s, n, buf);
}

int loom_store_image_fd(const loom_store *s) { return s->image_fd; }

int loom_store_set_epoch(loom_store *s, uint64_t epoch)
{
  int rc = store_apply_wait(s);
  if (rc)
    return rc;
  if (s->flags & LOOM_READONLY)
    return LOOM_EINVAL;
  if (epoch <= s->pos.epoch)
    return LOOM_EINVAL;
  loom_position p = s->pos;
  p.epoch = epoch;
  loom_lineage lineage = s->lineage;
  lineage_add_branch(&lineage, &(loom_branch){epoch, p.seq, p.checksum});
  rc = meta_write_lineage(s, &p, &lineage);
  if (rc) {
    store_poison(s, rc);
    return rc;
  }
  s->pos = p;
  pthread_mutex_lock(&s->snap_lock);
  s->image_pos.epoch = epoch; /* snapshots from now on carry the new epoch */
  s->image_lineage = s->lineage;
  pthread_mutex_unlock(&s->snap_lock);
  return 0;
}

void loom_store_lineage(const loom_store *s, loom_lineage *out)
{
  *out = s->lineage;
}

int loom_store_checksum_at(const loom_store *s, uint64_t seq, uint64_t *epoch,
                           uint64_t *checksum)
{
  /* positions_fd is set once at open: no lock, any thread. */
  return positions_lookup(s->positions_fd, seq, epoch, checksum);
}

/* Write lineage with the current position (durable, or the handle is
 * poisoned). */
static int lineage_write(loom_store *s, const loom_lineage *lineage)
{
  int rc = store_apply_wait(s);
  if (rc)
    return rc;
  if (s->flags & LOOM_READONLY)
    return LOOM_EINVAL;
  rc = meta_write_lineage(s, &s->pos, lineage);
  if (rc) {
    store_poison(s, rc);
    return rc;
  }
  pthread_mutex_lock(&s->snap_lock);
  s->image_lineage = s->lineage;
  pthread_mutex_unlock(&s->snap_lock);
  return 0;
}

int loom_store_adopt_lineage(loom_store *s, const loom_lineage *lineage)
{
  if (!lineage || lineage->branch_count > LOOM_MAX_BRANCHES ||
      loom_history_is_none(&lineage->history))
    return LOOM_EINVAL;
  if (!loom_history_is_none(&s->lineage.history) && s->pos.seq != 0 &&
      !loom_history_equal(&s->lineage.history, &lineage->history))
    return LOOM_EHISTORY;
  if (memcmp(&s->lineage, lineage, sizeof *lineage) == 0)
    return 0;
  return lineage_write(s, lineage);
}

int loom_store_ensure_history(loom_store *s)
{
  if (!loom_history_is_none(&s->lineage.history))
    return 0;
  loom_lineage lineage = s->lineage;
  int rc = lineage_new_history(&lineage);
  return rc ? rc : lineage_write(s, &lineage);
}
