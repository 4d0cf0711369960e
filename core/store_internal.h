/* store_internal.h: what the arena (loom.c) needs of the store beyond the
 * public API. Not installed. */
#ifndef LOOM_STORE_INTERNAL_H
#define LOOM_STORE_INTERNAL_H

#include "loom.h"
#include "loom_io.h"
#include <sys/uio.h>

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
  uint64_t staged;         /* pages waiting in iov[] to be written */
  struct iovec iov[64];    /* each: a staging slot, or a page that stays
                              valid until the patch is durable */
  uint64_t flushed;        /* pages written to the patch file */
  int error;               /* sticky: the first failure */
  /* Deferred (stable pages and pwritev): nothing is written until
   * store_patch_make_durable, which writes header, pages and entries with
   * pwritev in one pass (one contiguous extent to fsync). */
  const void **deferred;   /* [header.page_count] page pointers, or NULL */
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
/* Open with the arena's flags (LOOM_APPLY_ASYNC honoured). */
int store_open_flags(const char *dir, unsigned flags, const loom_io *io,
                     loom_store **out);
int store_poisoned(const loom_store *s);
void store_poison(loom_store *s, int rc);
uint64_t store_zero_hash(uint64_t n);

/* The positions ring (positions.c): best effort, never fails a commit. */
/* Open (create) DIR/positions: a descriptor, or -1 (the ring is off). */
int positions_open(int dirfd);
/* Record that the directory's commit p.seq has p's epoch and checksum. */
void positions_note(int fd, const loom_position *p);
/* 1 and *epoch, *checksum when the ring knows seq, else 0. */
int positions_lookup(int fd, uint64_t seq, uint64_t *epoch, uint64_t *checksum);

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
