/* store_internal.h: what the arena (loom.c), the snapshots (snapshot.c)
 * and the tools (tools.c) need of the store beyond the public API. The
 * store's design (FILES, INVARIANTS, THE COMMIT PROTOCOL, RECOVERY) is at
 * the top of store.c. Not installed. */
#ifndef LOOM_STORE_INTERNAL_H
#define LOOM_STORE_INTERNAL_H

#include "loom.h"
#include "loom_io.h"
#include "tree.h"
#include <pthread.h>
#include <stdatomic.h>
#include <sys/types.h>
#include <sys/uio.h>

#define PS ((uint64_t)LOOM_PAGE_SIZE)
#define META_SLOT_SIZE 512u
#define STAGING_PAGES 64u
#define MAX_SNAPSHOTS 8
#define MAX_PAGES (UINT64_C(1) << 32) /* 64 TiB: keeps offsets in range */
#define HASH_BLOCK 4096u
#define HASHES_PER_BLOCK (HASH_BLOCK / 8u)

/* The checkpointer: committed records waiting to be merged into the image
 * (store.c, steps 4-6), in commit order. With LOOM_APPLY_ASYNC a thread
 * runs it; else it runs inline. The owner appends at the back, the
 * checkpointer removes from the front (both under mutex). */
typedef struct apply_thread {
  pthread_t thread;
  pthread_mutex_t mutex;
  pthread_cond_t cond;
  loom_patch **queue;  /* committed, not yet checkpointed */
  size_t queued, queue_cap;
  uint64_t queued_bytes; /* their log bytes */
  uint64_t pushed;     /* records queued since open */
  int want;            /* threads waiting for the checkpoint to progress */
  int busy;            /* a batch is being checkpointed */
  int stop;
  int started;
  uint64_t batches;    /* checkpoints done since open */
  uint64_t waits;      /* saves that waited for log space */
  uint64_t merge_bytes; /* THE MERGE STATE's memory now (store.c) */
  uint64_t merge_peak;  /* its highest since open */
} apply_thread;

struct loom_store {
  const loom_io *io;
  unsigned flags;
  int dirfd, lockfd, image_fd, hashes_fd, meta_fd, log_fd;
  int positions_fd;        /* DIR/positions (positions.c), or -1 */
  loom_position pos;       /* committed (the patch is durable) */
  loom_position applied;   /* durable in the meta */
  loom_lineage lineage;    /* durable in the meta (history, branches) */
  uint64_t generation;     /* of the meta slot last written */
  uint64_t *hashes;        /* [pos.pages], committed */
  size_t hashes_cap;
  uint8_t *staging;        /* STAGING_PAGES pages (the owner's) */
  uint8_t *ckpt_buf;       /* STAGING_PAGES pages (the checkpoint's) */
  struct iovec staging_iov[STAGING_PAGES]; /* the writer's pages waiting
                              to be written: each a staging slot, or a page
                              that stays valid until the patch is durable */
  loom_patch *writer;      /* open patch, if any */
  /* 0, or the error that poisoned the handle: set by the owner or the
   * checkpoint thread, read by any (status, snapshots), so atomic. */
  _Atomic int poison;
  apply_thread apply;
  pthread_mutex_t snap_lock; /* snaps, image_pos, snapshot reads vs apply */
  loom_snapshot *snaps[MAX_SNAPSHOTS]; /* open snapshots */
  loom_position image_pos; /* the position the image file's pages are at */
  loom_lineage image_lineage; /* the lineage snapshots carry (snap_lock) */
  store_tree tree;         /* over the image at image_pos (snap_lock) */
  /* The commit log (a ring; store.c "THE COMMIT LOG"). A record at log
   * sequence number lsn sits at byte (lsn - log_origin) mod log_size. */
  uint64_t log_origin;     /* lsn at byte 0 (durable in the meta) */
  uint64_t log_size;       /* ring bytes (durable in the meta); 0: none yet */
  uint64_t log_head;       /* first lsn not checkpointed (apply.mutex) */
  uint64_t log_tail;       /* next record's lsn (the owner's) */
  uint64_t log_want;       /* the configured ring size (log_bytes) */
  int log_live;            /* the metas we write say META_LOG_LIVE */
  int log_was_live;        /* the meta read at open said it */
  int v1_pending;          /* read-only: a version 1 patch still counts */
  loom_position v1_after;  /* and would move the position here */
  pthread_mutex_t hash_lock; /* s->hashes: owner's writes vs checkpoint */
  int image_broken;        /* an apply failed midway: image_pos is unknown */
};

struct loom_snapshot {
  loom_store *store;
  loom_position pos;
  loom_lineage lineage;
  int error;               /* a page could not be preserved: reads fail */
  int side_fd;             /* old versions of pages changed since open */
  store_tree tree;         /* the store's, copied at open */
  uint64_t *preserved;     /* bitmap over [0, pos.pages): in side_fd */
};

/* The patch being written, and after its commit point the record handed to
 * the apply step. */
struct loom_patch {
  loom_store *store;
  loom_patch_header header;
  int fill_after;          /* compute header.after.checksum at commit */
  uint64_t added;
  uint64_t *page_numbers;  /* [header.page_count] */
  uint64_t *new_hashes;
  uint64_t *old_hashes;
  uint64_t sum_old;        /* over added pages inside the old image */
  uint64_t sum_new;
  uint64_t staged;         /* pages waiting in the store's staging_iov[]
                              (one writer at a time) */
  uint64_t flushed;        /* pages written to the patch file */
  int error;               /* sticky: the first failure */
  /* Deferred (stable pages and pwritev): nothing is written until
   * store_patch_make_durable, which writes header, pages and entries with
   * one pwritev (one contiguous extent to fsync). Not deferred: the same,
   * for up to STAGING_PAGES pages (record_write). */
  const void **deferred;   /* [header.page_count] page pointers, or NULL;
                              freed once the patch is durable */
  uint64_t lsn;            /* where the record sits in the log */
};

/* Begin a patch whose after.checksum the store computes (fill_after). */
int store_patch_begin(loom_store *s, const loom_patch_header *h, int fill_after,
                      loom_patch **out);
/* Add a page whose hash the caller already computed. With stable, the
 * page's memory stays unchanged until store_patch_make_durable returns, and
 * is written from where it is (no copy). */
int store_patch_add_hashed(loom_patch *p, uint64_t n, const void *page,
                           uint64_t hash, int stable);
/* Steps 1-3 of the commit protocol: the patch is durable on return (the
 * commit point) and the store's position is the patch's after. The patch
 * stays readable (page lists) until store_apply_start(). */
int store_patch_make_durable(loom_patch *p);
/* Steps 4-8: apply now, or hand to the apply thread (LOOM_APPLY_ASYNC).
 * Frees p. */
int store_apply_start(loom_patch *p);
/* Read image page n as the image file holds it now (no waiting). */
int store_read_image_page(loom_store *s, uint64_t n, void *buf);
/* Page i of the record at lsn, read from the commit log (the arena's
 * RECENT PAGES, core/loom.c): the caller knows the record is still in the
 * ring (not checkpointed, so its space is not free). */
int store_read_record_page(loom_store *s, uint64_t lsn, uint64_t i, void *buf);
/* Open with the arena's flags (LOOM_APPLY_ASYNC honoured). */
int store_open_flags(const char *dir, unsigned flags, const loom_io *io,
                     loom_store **out);
/* The same with a ring size for the commit log (0: the default). */
int store_open_log(const char *dir, unsigned flags, const loom_io *io,
                   uint64_t log_bytes, loom_store **out);
int store_poisoned(const loom_store *s);
void store_poison(loom_store *s, int rc);
uint64_t store_zero_hash(uint64_t n);

/* The positions ring (positions.c): best effort, never fails a commit. */
/* Open (create) DIR/positions: a descriptor, or -1 (the ring is off). */
int positions_open(int dirfd);
/* The same for reading only (a read-only open); -1 when absent. */
int positions_open_readonly(int dirfd);
/* Record that the directory's commit p.seq has p's epoch and checksum. */
void positions_note(int fd, const loom_position *p);
/* Forget every slot (a base image replaced the image: the slots below its
 * seq may be of a branch it does not continue, e.g. a cluster rewind). */
void positions_forget(int fd);
/* 1 and *epoch, *checksum when the ring knows seq, else 0. */
int positions_lookup(int fd, uint64_t seq, uint64_t *epoch, uint64_t *checksum);
/* Shared by store.c, snapshot.c and tools.c (defined in store.c). */
/* Exact transfers through the store's I/O seam; errors as codes (a short
 * read is LOOM_ECORRUPT, a short write EIO). */
int store_read_exact(loom_store *s, int fd, void *buf, size_t len, off_t off);
int store_write_exact(loom_store *s, int fd, const void *buf, size_t len,
                      off_t off);
int store_fsync(loom_store *s, int fd);
void store_close_fd(loom_store *s, int *fd); /* sets *fd to -1 */
int store_file_size(int fd, uint64_t *out);
/* A file's type and size without asking for its times (io_posix.c): 0 or
 * an errno. Either output may be NULL. */
int io_stat_untimed(int fd, int *is_regular, uint64_t *size);
/* Hashes: room for pages entries; one 4 KiB block of the table written to
 * the hashes file; every page's hash recomputed from the image (*sum is
 * their sum). */
int store_hashes_reserve(loom_store *s, uint64_t pages);
int store_hashes_write_block(loom_store *s, uint64_t block, uint64_t pages);
int store_hashes_rebuild(loom_store *s, uint64_t pages, uint64_t *sum);
/* A position as the meta slot and the image stream header hold it: epoch,
 * seq, checksum, pages, commit time; u64 LE each. */
#define POSITION_BYTES 40u
void store_position_put(uint8_t out[POSITION_BYTES], const loom_position *p);
void store_position_get(const uint8_t in[POSITION_BYTES], loom_position *p);
/* A meta slot holding p and lineage at generation. */
void store_meta_encode(uint8_t slot[META_SLOT_SIZE], uint64_t generation,
                       const loom_position *p, const loom_lineage *lineage);
/* R2: the committed position the log's verified records lead to from the
 * meta's, without applying anything (a read-only open's inspect). */
int store_log_end(loom_store *s, loom_position *out);
void store_patch_free(loom_patch *p);
/* Wait until every committed record is checkpointed (the image file is at
 * the committed position): 0, or LOOM_EPANIC when the store is poisoned. */
int store_apply_wait(loom_store *s);
/* Any thread: wait until the checkpoint thread merged every record queued
 * now (snapshots open at a recent committed position). */
void store_checkpoint_catch_up(loom_store *s);
/* A handle with no file open (every descriptor -1), its locks and
 * buffers made, the I/O io (NULL: POSIX): what store_open_log and
 * loom_store_create_from_stream (import.c) start from. 0 or ENOMEM. */
int store_alloc(const loom_io *io, loom_store **out);
/* fsync the directory that holds dir (its entry for dir). */
int store_sync_parent(loom_store *s, const char *dir);
/* Close every file and free s, without waiting for anything but the apply
 * thread (the read-only tools' close). */
void store_free(loom_store *s);

/* Snapshots (snapshot.c), called by the apply step under snap_lock: whether
 * any is open, and copy page n's current version to the side file of every
 * open snapshot that still needs it (its failure breaks that snapshot, not
 * the store; an unreadable image page fails the apply). */
int store_snapshots_open(const loom_store *s);
int store_snapshot_preserve(loom_store *s, uint64_t n);

/* Lineage bytes (history.c; the layout is written there and in
 * docs/FORMAT.md), in the meta and the image stream header. */
#define LINEAGE_BYTES 216u
void lineage_encode(uint8_t out[LINEAGE_BYTES], const loom_lineage *lineage);
/* 0, or LOOM_ECORRUPT when the bytes are no valid lineage. */
int lineage_decode(const uint8_t in[LINEAGE_BYTES], loom_lineage *lineage);
/* Record that branch->epoch began at (seq, checksum): later epochs' entries
 * are dropped, and the oldest when the table is full. */
void lineage_add_branch(loom_lineage *lineage, const loom_branch *branch);
/* A new random history id in lineage->history: 0 or an errno value. */
int lineage_new_history(loom_lineage *lineage);

#endif
