/*
 * loom.h: a persistent memory arena with crash-safe, incremental snapshots.
 *
 * INTRODUCTION
 *
 * A *loom* is one contiguous region of virtual memory made of 16 KiB pages,
 * backed by an *image directory* on disk. The application keeps its state in
 * the arena and, at quiescent points, calls loom_save(): the pages written
 * since the last save are collected into one checksummed *patch*, the patch is
 * made durable (the commit point), and then applied to the on-disk *image*.
 *
 * Every commit that changes something gets a *position*
 *
 *     (epoch, seq, checksum, pages)
 *
 * where seq grows by one per commit, epoch changes only on promotion
 * (loom_store_set_epoch), and checksum is a 64-bit whole-image checksum: the
 * sum, modulo 2^64, of XXH3-64(page contents, seed = page number) over every
 * page of the image. It is kept incrementally, at a cost proportional to the
 * pages in a patch. A crash at any instant leaves the image at the old or the
 * new position, never between; loom_open() says which.
 *
 * There are two layers, usable on their own:
 *
 *   loom_store  an image directory: lock, recovery, positions, applying
 *               patches (from a save, or received from a primary), backup,
 *               verification. No memory mapping. A standby uses only this.
 *   loom        the arena on top of a store: mapping, dirty-page tracking,
 *               guard page, save.
 *
 * THE IMAGE DIRECTORY (byte tables in docs/FORMAT.md)
 *
 *     image    the pages, page n at offset n * LOOM_PAGE_SIZE
 *     hashes   one little-endian u64 per image page: its XXH3 hash
 *     meta     two 512-byte position slots, written alternately
 *     patch    the last commit; counts only while its before is the meta's
 *              position (docs/DEVIATIONS.md)
 *     lock     taken with flock(LOCK_EX) by the one writer
 *
 * ERRORS
 *
 * Every fallible call returns 0 on success, a positive errno value for a
 * failed system call, or one of the negative LOOM_E* codes below.
 * loom_strerror() describes both. The library never prints, never aborts on
 * I/O errors or bad input, and never calls exit(). A failure while a commit
 * is being applied poisons the handle: every later call returns
 * LOOM_EPANIC, and the next open recovers from the durable patch.
 *
 * THREADS AND SIGNALS
 *
 * A loom or store handle is used by one thread at a time. loom_save() must
 * not run while another thread writes to the arena. The arena's fault
 * handling installs one process-wide SIGSEGV handler; faults outside every
 * open arena are passed to the handler that was installed before. Do not
 * fork() while a loom is open and use it in the child.
 */
#ifndef LOOM_H
#define LOOM_H

#include <stddef.h>
#include <stdint.h>

#include "loom_version.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The version of the library linked at run time ("X.Y.Z", and as
 * LOOMSHIP_VERSION_NUMBER computes it); LOOMSHIP_VERSION_* (loom_version.h)
 * are those of the headers compiled against. */
const char *loom_version(void);
int loom_version_number(void);

/* A loom page. Must be a multiple of the system page size (checked). */
#define LOOM_PAGE_SIZE 16384u

/* ---------------------------------------------------------------------- */
/* Errors: append-only, never reused. */

/* The list, one X(name, value, text) per code: the enum below, the texts
 * (loom_strerror) and the stable names (loom_error_name) are generated
 * from it (errors.c). */
#define LOOM_ERROR_LIST(X)                                                    \
  X(LOOM_ELOCKED, -30900,                                                     \
    "the directory is in use by another process or handle")                   \
  X(LOOM_ECORRUPT, -30901, "on-disk data fails its checksum or is malformed") \
  X(LOOM_EVERSION, -30902, "unsupported on-disk format version")              \
  X(LOOM_EPANIC, -30903, /* close the handle and reopen */                    \
    "the handle is poisoned after a failed commit; reopen to recover")        \
  X(LOOM_EEXHAUSTED, -30904, "the arena is exhausted: no free page left")     \
  X(LOOM_EPAGESIZE, -30905,                                                   \
    "the loom page size is not a multiple of the system page size")           \
  X(LOOM_EPOSITION, -30906,                                                   \
    "the patch does not apply to the current position")                       \
  X(LOOM_ETOOBIG, -30907, /* the image (or a request) exceeds the arena */    \
    "the image is larger than the arena")                                     \
  X(LOOM_EBUG, -30908, "an invariant was violated (a bug was caught)")        \
  X(LOOM_EINVAL, -30909, "an argument is out of range")                       \
  X(LOOM_ENOIMAGE, -30910, /* and no LOOM_CREATE */                           \
    "no image in that directory")                                             \
  X(LOOM_ETRACKER, -30911,                                                    \
    "the requested dirty-page tracker is not available")                      \
  X(LOOM_EHISTORY, -30912,                                                    \
    "the image directory already follows another history")                    \
  X(LOOM_EMETA, -30913, /* restore the directory */                           \
    "the meta file (the recorded position) is missing or damaged: "           \
    "no slot passes its checks, though the image holds pages")            \
  X(LOOM_ELOGLOST, -30914, /* restore the directory */                        \
    "the commit log is missing, though its meta says records past the "       \
    "checkpoint may be in it")

enum loom_error {
  LOOM_OK = 0,
#define LOOM_ERROR_ENUM_(name, value, text) name = value,
  LOOM_ERROR_LIST(LOOM_ERROR_ENUM_)
#undef LOOM_ERROR_ENUM_
  LOOM_ELAST = -30915      /* sentinel: one past the lowest code */
};

/* A description of rc (0, an errno value, or a LOOM_E* code). Never NULL. */
const char *loom_strerror(int rc);
/* The stable name of rc, for machines (logs, JSON "code" fields): "OK",
 * the errno symbol ("ENOSPC"; "ERRNO" if the C library has none), or the
 * code's own name ("LOOM_ECORRUPT"); "UNKNOWN" for any other value.
 * Never NULL. */
const char *loom_error_name(int rc);

/* ---------------------------------------------------------------------- */
/* Positions */

typedef struct loom_position {
  uint64_t epoch;          /* changes only on promotion; starts at 1 */
  uint64_t seq;            /* commits so far; 0 for a new image */
  uint64_t checksum;       /* whole-image checksum (see INTRODUCTION) */
  uint64_t pages;          /* image length in pages */
  int64_t commit_time_ns;  /* CLOCK_REALTIME of the commit, 0 if none */
} loom_position;

/* Whether a and b are the same image: equal seq, checksum and pages. The
 * epoch is not compared: a promotion continues the same image at a new
 * epoch, so one image can be reached at two epochs (and a frame's before is
 * the standby's position even when the standby has not yet heard of the
 * frame's epoch). loom_position_same_epoch also compares the epoch;
 * commit_time_ns is never compared. */
static inline int loom_position_same(const loom_position *a,
                                      const loom_position *b)
{
  return a->seq == b->seq && a->checksum == b->checksum &&
         a->pages == b->pages;
}

static inline int loom_position_same_epoch(const loom_position *a,
                                            const loom_position *b)
{
  return a->epoch == b->epoch && loom_position_same(a, b);
}

/* The hash of one page as the whole-image checksum counts it. */
uint64_t loom_page_hash(uint64_t page_number, const void *page);

/*
 * History identity (DESIGN section 3). A directory first created as a
 * primary (loom_open) gets a random 128-bit *history id*; a standby's store
 * has none until it takes in its first frame or base image, and then keeps
 * the history it follows. A promotion starts a new epoch *of the same
 * history* and records where it branched: the position (seq, checksum) the
 * new epoch starts from. The history id and the newest LOOM_MAX_BRANCHES
 * branch points are kept in the meta (docs/FORMAT.md), and travel in every
 * frame, base image and status document, so that no node moves backwards
 * or sideways by itself (replicate.h: replicate_place_frame and friends).
 */
#define LOOM_HISTORY_SIZE 16u
#define LOOM_MAX_BRANCHES 8u

typedef struct loom_history {
  uint8_t id[LOOM_HISTORY_SIZE];  /* all zero: no history yet */
} loom_history;

/* Epoch `epoch` began at (seq, checksum): its first commit is seq + 1. */
typedef struct loom_branch {
  uint64_t epoch;
  uint64_t seq;
  uint64_t checksum;
} loom_branch;

typedef struct loom_lineage {
  loom_history history;
  uint32_t branch_count;                  /* <= LOOM_MAX_BRANCHES */
  loom_branch branches[LOOM_MAX_BRANCHES];/* ascending epochs; the oldest
                                             are dropped past the limit */
} loom_lineage;

/* 1 when h is the empty (all-zero) history, else 0. */
int loom_history_is_none(const loom_history *h);
/* 1 when a and b are the same history, else 0. */
int loom_history_equal(const loom_history *a, const loom_history *b);
/* 32 lowercase hex digits and a NUL. */
void loom_history_hex(const loom_history *h, char out[2 * LOOM_HISTORY_SIZE + 1]);
/* Parse 32 hex digits (exactly); 0 or LOOM_EINVAL. */
int loom_history_parse(const char *hex, loom_history *out);
/* The branch point at which the first epoch newer than `epoch` began, per
 * lineage: 1 and *out when the lineage knows one, else 0. */
int loom_lineage_branch_after(const loom_lineage *lineage, uint64_t epoch,
                              loom_branch *out);

/* ---------------------------------------------------------------------- */
/* The store: an image directory. */

typedef struct loom_store loom_store;
struct loom_io; /* loom_io.h: the I/O interface, replaceable for tests */

/* Flags for loom_store_open() and loom_options.flags. */
#define LOOM_CREATE 0x1u     /* create an empty image if there is none */
#define LOOM_READONLY 0x2u   /* no lock, no recovery, no writes (inspect) */
/* Without LOOM_APPLY_ASYNC, checkpoint only when the commit log is full or
 * on loom_store_sync, a read, or close (else after every commit). */
#define LOOM_CHECKPOINT_DEFER 0x100u

/* The commit log: each commit appends one record and returns at its
 * fdatasync; a checkpoint (a thread with LOOM_APPLY_ASYNC, else inline)
 * merges committed records into the image and frees their log space. A
 * commit waits only when the log is full. The ring's size in bytes: */
#define LOOM_LOG_BYTES_DEFAULT (UINT64_C(64) << 20)

/*
 * loom_store_open: open (or with LOOM_CREATE create) the image directory dir.
 * Takes the directory's lock, then recovers: every record of the commit log
 * after the checkpoint that verifies and continues the position is applied
 * again, in order; the first that does not (a torn tail) ends the log. A
 * version 1 directory (before the commit log) is upgraded, unless a crash
 * left its patch counting: LOOM_EVERSION (docs/FORMAT.md).
 *   io   the I/O interface, or NULL for the plain POSIX one.
 * Returns 0 and a handle in *out, or: LOOM_ELOCKED (another opener holds
 * it), LOOM_ENOIMAGE, LOOM_ECORRUPT, LOOM_EMETA (DIR/meta is missing or
 * both its slots fail their checks while the image holds pages: the
 * position is lost; the directory must be restored or resynced),
 * LOOM_ELOGLOST (DIR/log is missing while the meta says records past the
 * checkpoint may have been in it: a writer had it open and did not close
 * cleanly; put the log back, or restore or resync the directory; a
 * directory closed cleanly, or a backup's copy, opens without one),
 * LOOM_EVERSION, or an errno value. A missing hashes file (derived data)
 * is made anew and rebuilt from the image, like a short one, and kept
 * only if the image agrees with the recorded position (else
 * LOOM_ECORRUPT); a read-only open goes without it.
 * With LOOM_READONLY, no lock is taken: the position read is the last one
 * durably recorded (a live writer may be ahead of it, never behind).
 */
int loom_store_open(const char *dir, unsigned flags, const struct loom_io *io,
                    loom_store **out);

/* Options for loom_store_open_with. Zero-initialise, then set what you
 * need: 0 (or NULL) means the default in brackets. */
typedef struct loom_store_options {
  unsigned flags;             /* LOOM_CREATE, LOOM_READONLY, LOOM_APPLY_ASYNC,
                                 LOOM_CHECKPOINT_DEFER, as loom_store_open's
                                 [0] */
  const struct loom_io *io;   /* [the plain POSIX one] */
  uint64_t log_bytes;         /* the commit log's ring, rounded up to 4 KiB
                                 [LOOM_LOG_BYTES_DEFAULT] */
} loom_store_options;

/*
 * loom_store_open_with: loom_store_open with the commit log's ring size.
 * The size is the directory's own (recorded in its meta), and follows the
 * opener: a directory whose ring has another size gets opt->log_bytes at
 * open, once recovery has checkpointed every record (the log is empty
 * then), recorded in the meta before anything is written at the new
 * geometry; a smaller ring cuts the log file (docs/FORMAT.md "The commit
 * log"). Any size works: a record larger than the ring grows the ring for
 * itself and the next record that fits shrinks it back. A read-only open
 * ignores log_bytes. Errors: those of loom_store_open; LOOM_EINVAL when
 * dir, opt or out is NULL or opt->flags holds other flags.
 */
int loom_store_open_with(const char *dir, const loom_store_options *opt,
                         loom_store **out);

/* Close; checkpoints every committed record first. Returns its error, if
 * any. */
int loom_store_close(loom_store *store);

/* The current (committed) position. */
void loom_store_position(const loom_store *store, loom_position *out);

/* The per-page hash of image page n (n < position.pages). */
uint64_t loom_store_page_hash(const loom_store *store, uint64_t n);

/* Read image page n as of the current position into buf (LOOM_PAGE_SIZE
 * bytes). Waits for the checkpoint to reach the position first. LOOM_EINVAL inside a commit hook
 * (use loom_commit_old_page there). */
int loom_store_read_page(loom_store *store, uint64_t n, void *buf);

/* Page n as committed (the current position), without waiting for the
 * checkpoint: from the commit log while a record not yet checkpointed
 * lists it, else from the image. Waits as loom_store_read_page while a
 * rewind is queued. Same errors, and LOOM_EPANIC on a poisoned handle.
 * Not the image's bytes: a read-back of what the image holds uses
 * loom_store_read_page. The store's owner only (the thread that commits),
 * as the other readers. */
int loom_store_read_committed_page(loom_store *store, uint64_t n, void *buf);

/* The image file's descriptor, for serving it (read only; see
 * loom_store_sync: the file is at the current position only after it). */
int loom_store_image_fd(const loom_store *store);

/* Wait until every committed record is checkpointed: the image file, the
 * hashes and the meta record are then durably at the current position. */
int loom_store_sync(loom_store *store);

/* The commit log's figures. used/size: bytes of the ring that hold
 * records not yet checkpointed (the fill); checkpoint: the position the
 * image file is durably at (its seq is status's `checkpoint_seq`);
 * queued: records waiting for the checkpoint; checkpoints: batches merged
 * since open; waits: commits that waited for log space since open.
 * Memory (docs/FORMAT.md "The commit log's memory"): merge_bytes, what the
 * checkpoint holds now for records not yet merged (each queued record's
 * page lists, the queue, a batch's merge arrays), at most size / 16 (the
 * largest ring since open); merge_peak_bytes, its highest since open;
 * recent_bytes, the arena's RECENT PAGES index (loom_get_log_stats only:
 * 0 from loom_store_log_stats). */
typedef struct loom_log_stats {
  uint64_t used, size;
  loom_position checkpoint;
  uint64_t queued, checkpoints, waits;
  uint64_t merge_bytes, merge_peak_bytes, recent_bytes;
} loom_log_stats;
void loom_store_log_stats(loom_store *store, loom_log_stats *out);
/* The records committed and not yet checkpointed (loom_log_stats.queued),
 * without waiting for a checkpoint's image writes as the stats may. */
uint64_t loom_store_queued(loom_store *store);

/* Make epoch (> the current one) durable as this store's epoch: promotion,
 * or a standby taking the first frame of a promoted primary. seq and
 * checksum are unchanged; the branch (epoch, seq, checksum) is recorded in
 * the lineage (branches of epochs >= epoch are dropped first). A store
 * being promoted that has no history yet is given one first
 * (loom_store_ensure_history). */
int loom_store_set_epoch(loom_store *store, uint64_t epoch);

/* The store's history id and branch points. */
void loom_store_lineage(const loom_store *store, loom_lineage *out);

/*
 * loom_store_checksum_at: the epoch and whole-image checksum this
 * directory had at seq, from DIR/positions, a ring over its last 2^20
 * commits written after each commit point (best effort: not synced, so a
 * crash may lose the newest slots). Returns 1 and fills *epoch and
 * *checksum when it knows, 0 when it does not (a seq older than the ring,
 * lost, or merged into one commit by a standby's group apply). Callable
 * from any thread; ask only for seqs known to be committed (at or below a
 * position read before): a slot above the position may be left from
 * before a rollback. A primary uses it to tell a standby that forked from
 * one that is only behind. A read-only open (LOOM_READONLY) reads the ring
 * without writing it (loomship inspect --at).
 */
int loom_store_checksum_at(const loom_store *store, uint64_t seq,
                           uint64_t *epoch, uint64_t *checksum);

/*
 * loom_store_adopt_lineage: make lineage durable as this store's (in the
 * meta, position unchanged): a standby taking its first frame, or a base
 * image, of the history it will follow from then on. Allowed when the
 * store has no history, when its position is still seq 0 (it holds
 * nothing), or when lineage is of the store's own history (its branch
 * points then replace the store's). Errors: LOOM_EHISTORY (another
 * history: the store holds commits of its own), errno values.
 */
int loom_store_adopt_lineage(loom_store *store, const loom_lineage *lineage);

/* Give a store that has none a new random history id (durable). A
 * primary's open does this (loom_open); 0 when it already has one. */
int loom_store_ensure_history(loom_store *store);

/*
 * Committing a patch built outside an arena (a standby applying a frame, or
 * a full base image), streamed page by page:
 *
 *   loom_patch *p;
 *   loom_store_patch_begin(store, &header, &p);
 *   for each page, in ascending page order:
 *       loom_patch_add(p, page_number, page_bytes);
 *   loom_patch_commit(p);        (or loom_patch_abort(p))
 *
 * header->before must equal the store's position in seq, checksum and
 * pages (its epoch is not compared: a primary promoted at the same seq
 * continues the timeline; header->after.epoch must not be older than the
 * store's); header->after gives the new position, which is checked against
 * the pages once they are all added.
 * A base image (LOOM_PATCH_BASE) lists every page [0, after.pages) and
 * replaces the image whatever it was. Commit returns at the local commit
 * point (the record durable in the commit log); the checkpoint follows
 * (inline, deferred, or on the checkpoint thread: LOOM_APPLY_ASYNC), or in
 * loom_store_sync(). An error before the commit point changes nothing; an
 * I/O error at or after it poisons the handle (LOOM_EPANIC from then on),
 * and the next open recovers to the old or the new position. (The record
 * is one write; when that write fails, its header block is zeroed and
 * synced before the error returns, and only if that fails too is the
 * handle poisoned.)
 * Errors: LOOM_EPOSITION (before is not the current position, or after does
 * not match the pages), LOOM_EINVAL (pages out of order or out of range),
 * errno values (ENOSPC...).
 *
 * A repair (LOOM_PATCH_REPAIR) rewrites pages whose bytes on disk no longer
 * match their recorded hashes (bit rot found by a scrub) with good copies,
 * at the same position: header->after must equal header->before and the
 * store's position (seq, checksum, pages, epoch), else LOOM_EPOSITION; a
 * page past the end is LOOM_EINVAL; each added page must hash to the hash
 * recorded for it (the store computes it, also for loom_patch_add_hashed),
 * else LOOM_EPOSITION. A refused repair changes nothing. It follows the same numbered steps (the patch is
 * durable, then applied, then the meta rewritten at the same position), so
 * a crash at any point leaves the rotten or the good page, never another.
 *
 * A rewind (LOOM_PATCH_REWIND) is an ordinary patch (the pages that
 * differ, the rest kept) that moves the store sideways: header->after
 * must be at a newer epoch than the store's, at any seq (below its own
 * too), else LOOM_EPOSITION. A cluster member uses it to take the
 * leader's image in one commit after adopting the leader's lineage
 * (loom_store_adopt_lineage), as a base image does; the positions ring
 * forgets the commits it leaves behind. At most one flag per patch.
 */
#define LOOM_PATCH_BASE 0x1u
#define LOOM_PATCH_REPAIR 0x2u
#define LOOM_PATCH_REWIND 0x4u

typedef struct loom_patch_header {
  loom_position before;
  loom_position after;
  uint64_t page_count;      /* pages that will be added */
  unsigned flags;           /* LOOM_PATCH_BASE, _REPAIR, _REWIND or 0 */
} loom_patch_header;

typedef struct loom_patch loom_patch;

int loom_store_patch_begin(loom_store *store, const loom_patch_header *header,
                           loom_patch **out);
int loom_patch_add(loom_patch *patch, uint64_t page_number, const void *page);
/* The same, for a caller that has already computed (and checked) the
 * page's hash: hash must be loom_page_hash(page_number, page); the store
 * does not compute it again. */
int loom_patch_add_hashed(loom_patch *patch, uint64_t page_number,
                          const void *page, uint64_t hash);
/* loom_patch_add_hashed for a page that stays unchanged at the same
 * address until loom_patch_commit (or loom_patch_abort) returns: the store
 * writes it to the log from there instead of copying it into its staging
 * buffer first (a standby's decoded frame, applied in one call). */
int loom_patch_add_stable(loom_patch *patch, uint64_t page_number,
                          const void *page, uint64_t hash);
/* loom_patch_commit frees the patch whether it succeeds or fails;
 * loom_patch_abort frees it without committing. */
int loom_patch_commit(loom_patch *patch);
void loom_patch_abort(loom_patch *patch);

/* Copy the image at the current position into dest (created if missing),
 * atomically (a temporary directory renamed into place) and fsynced. */
int loom_store_backup(loom_store *store, const char *dest);

/*
 * Snapshots: a consistent image at one position, readable from another
 * thread while commits and applies go on (a backup served over HTTP).
 *
 * While a snapshot is open, the apply step first copies the old version of
 * each page it is about to overwrite or truncate (and that the snapshot
 * still needs) into a side file (DIR/snapshot, unlinked), so the cost is one
 * extra page copy per page changed during the snapshot (per snapshot), and
 * nothing when none is open. Up to 8 snapshots at once per store.
 *
 *   loom_store_snapshot_open     any thread; the position is the one the
 *                                image file holds at that instant (a commit
 *                                still being applied is not in it), once
 *                                the checkpoint thread merged what was
 *                                committed at the call. Without that thread
 *                                and with LOOM_CHECKPOINT_DEFER, nothing
 *                                checkpoints for another thread: the image
 *                                (and so the snapshot) is at the last
 *                                checkpoint, up to a log's worth behind the
 *                                committed position; call loom_store_sync
 *                                on the owner's thread first to open at
 *                                the committed one; errors:
 *                                LOOM_EINVAL (8 are already open),
 *                                LOOM_EPANIC, errno values
 *   loom_snapshot_position       its position
 *   loom_snapshot_read           any thread: len bytes of the image as of
 *                                the snapshot, from byte offset off
 *                                (off + len <= pages * LOOM_PAGE_SIZE)
 *   loom_snapshot_close          any thread; the store must outlive it
 */
typedef struct loom_snapshot loom_snapshot;

int loom_store_snapshot_open(loom_store *store, loom_snapshot **out);
void loom_snapshot_position(const loom_snapshot *snap, loom_position *out);
/* The history and branch points the snapshot's image belongs to. */
void loom_snapshot_lineage(const loom_snapshot *snap, loom_lineage *out);
int loom_snapshot_read(loom_snapshot *snap, uint64_t off, void *buf, size_t len);
void loom_snapshot_close(loom_snapshot *snap);

/*
 * The page-hash tree (DESIGN section 8; layout and hashes in
 * docs/INTEGRITY.md). Level 0 is the recorded hash of every image page;
 * node i of level l >= 1 is loom_tree_node_hash(l, children) over nodes
 * [i * F, (i + 1) * F) of level l - 1 (fewer at the end), F =
 * LOOM_TREE_FANOUT; node i of level l covers pages [i * F^l, (i + 1) * F^l).
 * The store keeps it at the image file's position, updated by each apply
 * along the paths of the commit's pages, and a snapshot a copy taken as it
 * opens: two nodes compare their trees top down and find the pages that
 * differ in a few round trips.
 *
 *   loom_tree_nodes        nodes of level on an image of pages pages
 *   loom_tree_node_hash    the hash of a level's node from its children
 *                          (count <= LOOM_TREE_FANOUT)
 *   loom_snapshot_tree     nodes [first, first + count) of level of the
 *                          snapshot's tree into out: 0, LOOM_EINVAL (out
 *                          of range), ENOMEM (the tree could not be kept)
 */
#define LOOM_TREE_FANOUT 64u
#define LOOM_TREE_LEVELS 6u
uint64_t loom_tree_nodes(uint64_t pages, unsigned level);
uint64_t loom_tree_node_hash(unsigned level, const uint64_t *children,
                             uint64_t count);
int loom_snapshot_tree(const loom_snapshot *snap, unsigned level,
                       uint64_t first, uint64_t count, uint64_t *out);

/*
 * The image stream: one image at one position as a byte stream, what
 * GET /v1/backup serves and PUT /v1/base takes (docs/FORMAT.md):
 * a LOOM_STREAM_HEADER-byte header, then the pages in order.
 */
#define LOOM_STREAM_HEADER 512u
void loom_stream_header_encode(uint8_t out[LOOM_STREAM_HEADER],
                               const loom_position *pos,
                               const loom_lineage *lineage);
/* 0, LOOM_ECORRUPT (bad magic or checksum) or LOOM_EVERSION. lineage may
 * be NULL when the caller needs only the position. */
int loom_stream_header_decode(const uint8_t in[LOOM_STREAM_HEADER],
                              loom_position *pos, loom_lineage *lineage);

/* Hands a stream's bytes to its reader: sets *data to the next len bytes
 * (the callee's memory, valid until the next call). 0, or an error, which
 * the reader returns as it is. */
typedef int (*loom_stream_next_fn)(void *ctx, size_t len, const void **data);

/*
 * loom_store_create_from_stream: make a new image directory dir holding
 * the image stream that next() hands out (the header, then every page),
 * at the stream's position and lineage, the way a backup is written: the
 * pages go straight into the image file (no commit log, no second copy;
 * with O_DIRECT where the file system takes it, so the page cache holds
 * none of them afterwards), each is hashed once, and the meta is written
 * last (the steps C1-C6 are in core/import.c). dir must be absent (it is made 0700; its parent must
 * exist) or an empty directory. Until the meta is durable, dir is no
 * store (loom_store_open, loom_inspect and loom_verify refuse it), so a
 * crash never leaves one at a position the stream did not carry; on an
 * error the caller removes what is there. Open it with loom_store_open
 * afterwards. *out (may be NULL) gets the position.
 *   io      the I/O interface, or NULL for the plain POSIX one.
 *   hashes  NULL: every page is hashed here. Else hashes[n] is
 *           loom_page_hash(n, page n) for every page, as the caller
 *           computed it from the same bytes (a restore that applied frames
 *           to the image in memory); it is not computed again (the caller
 *           vouches for it, as with loom_patch_add_hashed). The sum is
 *           checked against the header's checksum either way.
 * Errors: LOOM_EINVAL (dir holds something), LOOM_ELOCKED, LOOM_ECORRUPT
 * (a bad header, or pages that do not hash to its checksum: no meta is
 * written), LOOM_EVERSION, next()'s errors, errno values (ENOSPC...).
 */
int loom_store_create_from_stream(const char *dir, const struct loom_io *io,
                                  loom_stream_next_fn next, void *ctx,
                                  const uint64_t *hashes, loom_position *out);

/* The pages loom_store_create_from_pages asks for at once (8 MiB). */
#define LOOM_IMPORT_CHUNK_PAGES 512u

/* Fills buf (LOOM_PAGE_SIZE * k bytes, aligned for O_DIRECT) with pages
 * [first, first + k) of the image and hashes[0, k) with their
 * loom_page_hash; k <= LOOM_IMPORT_CHUNK_PAGES, first a multiple of it,
 * called in ascending order. 0, or an error the importer returns as it is
 * (no meta is written). */
typedef int (*loom_page_fill_fn)(void *ctx, uint64_t first, uint64_t k,
                                 uint8_t *buf, uint64_t *hashes);

/*
 * loom_store_create_from_pages: loom_store_create_from_stream for a
 * caller that knows the position first and makes the pages chunk by chunk
 * (a restore that decompresses its base and applies frames per chunk):
 * fill() writes each chunk straight into the buffer that is written (no
 * copy), and the chunk before it is written by a thread of the importer
 * meanwhile, so filling and writing overlap; the memory is two chunks and
 * the hash table, whatever the image's size. The hashes fill() gives are
 * the ones stored; their sum must be pos->checksum (else LOOM_ECORRUPT, no
 * meta). The same steps, guarantees and errors as
 * loom_store_create_from_stream (C1-C6), and fill()'s errors.
 */
int loom_store_create_from_pages(const char *dir, const struct loom_io *io,
                                 const loom_position *pos,
                                 const loom_lineage *lineage,
                                 loom_page_fill_fn fill, void *ctx);

/* ---------------------------------------------------------------------- */
/* Read-only tools: work on a directory whose owner stopped or died, and on
 * a live one (they read the last durably recorded position). */

/* The position of dir: the one an open would recover to (the recorded
 * position, or that of a committed patch not yet applied), read without
 * a lock and without changing anything. A version 1 directory whose
 * patch still counts (which loom_store_open refuses with LOOM_EVERSION)
 * is described at that patch's after-position, the one the previous
 * release would recover to. */
int loom_inspect(const char *dir, loom_position *out);
/* The same, with the directory's history and branch points. */
int loom_inspect_lineage(const char *dir, loom_position *out,
                         loom_lineage *lineage);

/* Recompute the image's checksum from its pages and compare it with the
 * recorded position: 0 when they agree, LOOM_ECORRUPT when not (computed
 * receives the recomputed value either way), LOOM_ELOCKED when a writer is
 * live and a consistent read cannot be had. A leftover committed patch is
 * applied first, as open would. A store directory that a crash left before
 * anything was recorded (its own files only, an empty image) verifies as
 * the empty position (all zero); LOOM_ENOIMAGE when dir holds no store;
 * LOOM_EMETA when its meta is lost (loom_store_open). */
int loom_verify(const char *dir, loom_position *recorded, uint64_t *computed);

/* ---------------------------------------------------------------------- */
/* The arena. */

typedef struct loom loom;

/* What a commit changed, for the commit hook (replication). */
typedef struct loom_commit {
  loom_position before;
  loom_position after;
  uint64_t page_count;
  const uint64_t *page_numbers; /* ascending */
  const uint64_t *old_hashes;   /* 0 for pages past before.pages */
  const uint64_t *new_hashes;
} loom_commit;

/*
 * The commit hook is called inside loom_save() right after the local commit
 * point (the patch is durable), before save returns. The new page contents
 * are at loom_page(); the previous versions are read with
 * loom_commit_old_page() (with LOOM_APPLY_ASYNC the image file may already
 * be changing while the hook runs: the apply and the hook overlap, so read
 * old versions only through loom_commit_old_page). With LOOM_APPLY_ASYNC
 * the hook does not wait for the checkpoint: the arena notes where in the
 * commit log the pages the commits not yet checkpointed wrote are, and
 * reads an old version from there (up to half the commit log's ring in
 * pages, an index of 64 bytes a page taken at the first such commit; past
 * that, or after a commit that shrank the image, the next hook waits for
 * the checkpoint first). Its return value is
 * returned by loom_save() (the commit stands either way: it is durable).
 */
typedef int (*loom_commit_fn)(void *ctx, loom *l, const loom_commit *c);

/* The allocator's view: is page n free (its contents need no saving)? */
typedef int (*loom_page_free_fn)(void *ctx, uint64_t n);

/* The allocator's watermarks, read by the fault handler (async-signal-safe):
 * low = first page above the low region, high = first page of the high
 * region. */
typedef void (*loom_watermarks_fn)(void *ctx, uint64_t *low, uint64_t *high);

/* Called (from the fault handler) when the arena is exhausted: low and high
 * met and a write hit the guard page. It may siglongjmp away; if it returns,
 * the guard is lifted so the write completes, and the next loom_ward() or
 * loom_save() returns LOOM_EEXHAUSTED. */
typedef void (*loom_exhausted_fn)(void *ctx);

typedef enum loom_tracker {
  LOOM_TRACK_AUTO = 0,      /* userfaultfd async WP if the kernel has it */
  LOOM_TRACK_MPROTECT = 1,  /* write-protect + SIGSEGV + unprotect per page */
  LOOM_TRACK_UFFD_ASYNC = 2 /* userfaultfd WP_ASYNC + PAGEMAP_SCAN */
} loom_tracker;

/* More flags for loom_options.flags (with LOOM_CREATE). */
#define LOOM_COPY_IN 0x10u     /* read the image in eagerly (else demand-paged) */
#define LOOM_SWAP 0x20u        /* back non-image pages with a scratch file */
#define LOOM_VALIDATE 0x40u    /* compare clean pages with the image per save */
/* A save reads the previous version of each image page it changes back
 * from the image and checks it against the hash recorded when it was
 * committed, before its commit point, the first time the page changes
 * after open (later, the arena's own copy is the page): a page that rotted
 * on disk while the arena was closed, or before it was first read, is
 * never hashed into a valid commit. loom_save then returns LOOM_ECORRUPT,
 * commits nothing, and loom_rotted_page names the page. Costs one page
 * read (normally from the page cache) and one hash per page, once per
 * open; rot under a page the arena already holds is the scrubber's. */
#define LOOM_CHECK_PREVIOUS 0x200u
#define LOOM_APPLY_ASYNC 0x80u /* save returns at the commit point; the checkpoint
                                  overlaps the application's work */

typedef struct loom_options {
  uint64_t arena_pages;           /* arena size in pages (>= 3) */
  unsigned flags;
  loom_tracker tracker;
  const struct loom_io *io;       /* NULL: POSIX */
  loom_commit_fn on_commit;       /* optional */
  void *commit_ctx;
  loom_page_free_fn page_is_free; /* optional: NULL, no page is free */
  void *free_ctx;
  loom_watermarks_fn watermarks;  /* optional: for guard-page faults */
  void *watermarks_ctx;
  loom_exhausted_fn on_exhausted; /* optional */
  void *exhausted_ctx;
  uint64_t log_bytes;             /* commit log ring bytes [64 MiB] */
} loom_options;

/*
 * loom_open: open the image directory dir with an arena of
 * opt->arena_pages pages. Opens the store (lock, recovery), maps the arena,
 * loads the image (demand-paged, or copied in with LOOM_COPY_IN), and arms
 * dirty tracking: every image page clean (read-only), every other page
 * dirty (writable), one guard page (no access) in the middle of the free
 * space. Errors: those of loom_store_open, LOOM_ETOOBIG (image longer than
 * the arena), LOOM_EPAGESIZE, LOOM_ETRACKER, errno values.
 */
int loom_open(const char *dir, const loom_options *opt, loom **out);

/* Close: wait for a pending apply, unmap, unlock. Returns the first error. */
int loom_close(loom *l);

/* The arena's first byte, and page n's first byte. */
void *loom_base(const loom *l);
void *loom_page(const loom *l, uint64_t n);
uint64_t loom_arena_pages(const loom *l);
loom_store *loom_get_store(loom *l);
/* The store's commit log figures (loom_store_log_stats) with recent_bytes:
 * the memory the arena keeps of the pages the checkpoint has not merged
 * yet (see the commit hook; 0 until the first commit that needs it).
 * Callable from any thread. */
void loom_get_log_stats(loom *l, loom_log_stats *out);
loom_tracker loom_get_tracker(const loom *l);
const char *loom_tracker_name(loom_tracker t);

/*
 * loom_save: commit every dirty page below low that the allocator does not
 * report free; the image's new length is low. low <= high <= arena pages.
 * If nothing changed, nothing is written (0 is returned, seq unchanged).
 * The commit protocol is written out in core/loom.c. Returns 0, the commit
 * hook's non-zero value (committed), LOOM_EEXHAUSTED (low leaves no page
 * for the guard: nothing committed; or, after a commit, the arena ran out
 * of free pages since the last save), LOOM_EBUG (LOOM_VALIDATE found a
 * clean page that differs from the image: committed, and the page is made
 * dirty so the next save writes it), or an error: before the commit point
 * nothing changed; an I/O error at or after it poisons the handle.
 */
int loom_save(loom *l, uint64_t low, uint64_t high);

/* Read the previous version (before c was committed) of the i-th page of
 * c into buf. Only inside the commit hook. Pages past before.pages read as
 * zeros. */
int loom_commit_old_page(loom *l, const loom_commit *c, uint64_t i, void *buf);

/* The same without a copy where the arena already holds the version in
 * memory (with LOOM_APPLY_ASYNC it copies a commit's old versions before
 * the apply starts, and the hook then runs): *page points to it, read-only
 * and valid until the hook returns; else the version is read into buf and
 * *page is buf. Errors: those of loom_commit_old_page (*page is then
 * NULL). */
int loom_commit_old_page_view(loom *l, const loom_commit *c, uint64_t i,
                              void *buf, const void **page);

/* Return the memory of free pages in [low, high) to the OS (their contents
 * become zero). */
int loom_toss(loom *l, uint64_t low, uint64_t high);

/* Mark every page dirty (and writable). */
int loom_foul(loom *l);

/* Drop tracking: everything writable and dirty, no guard, until the next
 * save restores it. */
int loom_yolo(loom *l);

/* Re-place the guard page in the middle of [low, high) if it is not there.
 * LOOM_EEXHAUSTED if no page is free. */
int loom_ward(loom *l, uint64_t low, uint64_t high);

/* Check the at-rest invariants; report(ctx, message) is called once per
 * violation. Returns the number of violations. */
int loom_check(loom *l, void (*report)(void *ctx, const char *msg), void *ctx);

/* Counters since open. */
typedef struct loom_stats {
  uint64_t saves;           /* commits that changed something */
  uint64_t pages_saved;
  uint64_t faults;          /* first writes caught (mprotect tracker) */
  uint64_t guard_moves;
  uint64_t validation_errors;
} loom_stats;
void loom_get_stats(const loom *l, loom_stats *out);

/* The page whose previous version did not match its recorded hash when
 * the last loom_save returned LOOM_ECORRUPT (LOOM_CHECK_PREVIOUS), or
 * UINT64_MAX. */
uint64_t loom_rotted_page(const loom *l);

#ifdef __cplusplus
}
#endif
#endif /* LOOM_H */
