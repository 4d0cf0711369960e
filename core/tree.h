/*
 * tree.h: the page-hash tree kept with the image (tree.c; DESIGN section
 * 8). Internal to core/; its reader is loom_snapshot_tree (loom.h), its
 * layout docs/INTEGRITY.md.
 */
#ifndef LOOM_TREE_H
#define LOOM_TREE_H

#include <stdint.h>

#include "loom.h"

typedef struct store_tree {
  uint64_t pages;                     /* leaves */
  uint64_t *level[LOOM_TREE_LEVELS];  /* [loom_tree_nodes(pages, l)] */
  uint64_t cap[LOOM_TREE_LEVELS];     /* entries allocated */
  int error;                          /* 0, or why the tree is unusable
                                         (ENOMEM): it says so, the store
                                         goes on */
} store_tree;

/* The whole tree anew over hashes[0, pages). 0 or ENOMEM (also kept in
 * t->error). */
int store_tree_build(store_tree *t, const uint64_t *hashes, uint64_t pages);
/* A commit brought the image to pages pages, page numbers[i] (ascending)
 * to hashes[i]; pages grown and not listed hash as zero pages (zero_hash).
 * Only the paths of the listed pages are rehashed while the page count
 * stays; a count that changes rehashes the inner levels. */
void store_tree_update(store_tree *t, uint64_t pages, const uint64_t *numbers,
                       const uint64_t *hashes, uint64_t count,
                       uint64_t (*zero_hash)(uint64_t));
/* dst becomes a copy of src (dst zeroed before the first use). 0 or
 * ENOMEM. */
int store_tree_copy(store_tree *dst, const store_tree *src);
void store_tree_free(store_tree *t);

#endif
