/*
 * tree.c: the page-hash tree (DESIGN section 8, docs/INTEGRITY.md).
 *
 * Level 0 holds the recorded hash of every image page (loom_page_hash, the
 * whole-image checksum's building blocks); node i of level l >= 1 is the
 * XXH3-64, seeded with l, of the little-endian hashes of its children,
 * nodes [i * F, min((i + 1) * F, nodes of level l - 1)) of level l - 1,
 * F = LOOM_TREE_FANOUT. Every level exists (LOOM_TREE_LEVELS of them), so
 * two trees over different page counts have the same shape where their
 * pages overlap, and node i of level l always covers pages
 * [i * F^l, (i + 1) * F^l).
 *
 * The store keeps one at the image file's position (store.c, apply_pages,
 * under snap_lock), and every snapshot a copy taken when it opens
 * (snapshot.c): a commit rehashes only the paths of its pages, levels - 1
 * hashes of at most F * 8 bytes per page.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "bytes.h"
#include "tree.h"

uint64_t loom_tree_nodes(uint64_t pages, unsigned level)
{
  if (level >= LOOM_TREE_LEVELS)
    return 0;
  for (unsigned l = 0; l < level; l++)
    pages = (pages + LOOM_TREE_FANOUT - 1) / LOOM_TREE_FANOUT;
  return pages;
}

uint64_t loom_tree_node_hash(unsigned level, const uint64_t *children,
                             uint64_t count)
{
  uint8_t buf[LOOM_TREE_FANOUT * 8];
  for (uint64_t i = 0; i < count && i < LOOM_TREE_FANOUT; i++)
    put_le64(buf + i * 8, children[i]);
  return XXH3_64bits_withSeed(buf, (size_t)(count * 8), level);
}

/* Room for the levels of pages leaves. */
static int tree_reserve(store_tree *t, uint64_t pages)
{
  for (unsigned l = 0; l < LOOM_TREE_LEVELS; l++) {
    uint64_t need = loom_tree_nodes(pages, l);
    if (need <= t->cap[l])
      continue;
    uint64_t cap = need + need / 4 + 1;
    uint64_t *v = realloc(t->level[l], (size_t)cap * sizeof *v);
    if (!v)
      return t->error = ENOMEM;
    t->level[l] = v;
    t->cap[l] = cap;
  }
  return 0;
}

/* Node i of level l (>= 1) from its children. */
static void rehash(store_tree *t, unsigned l, uint64_t i)
{
  uint64_t below = loom_tree_nodes(t->pages, l - 1);
  uint64_t first = i * LOOM_TREE_FANOUT;
  uint64_t n = below - first < LOOM_TREE_FANOUT ? below - first : LOOM_TREE_FANOUT;
  t->level[l][i] = loom_tree_node_hash(l, t->level[l - 1] + first, n);
}

static void rehash_inner(store_tree *t)
{
  for (unsigned l = 1; l < LOOM_TREE_LEVELS; l++)
    for (uint64_t i = 0; i < loom_tree_nodes(t->pages, l); i++)
      rehash(t, l, i);
}

int store_tree_build(store_tree *t, const uint64_t *hashes, uint64_t pages)
{
  t->error = 0;
  if (tree_reserve(t, pages))
    return t->error;
  t->pages = pages;
  if (pages)
    memcpy(t->level[0], hashes, (size_t)pages * sizeof *hashes);
  rehash_inner(t);
  return 0;
}

void store_tree_update(store_tree *t, uint64_t pages, const uint64_t *numbers,
                       const uint64_t *hashes, uint64_t count,
                       uint64_t (*zero_hash)(uint64_t))
{
  if (t->error || tree_reserve(t, pages))
    return;
  uint64_t old = t->pages;
  for (uint64_t n = old; n < pages; n++)
    t->level[0][n] = zero_hash(n);
  t->pages = pages;
  for (uint64_t i = 0; i < count; i++)
    t->level[0][numbers[i]] = hashes[i];
  if (old != pages) {
    rehash_inner(t);
    return;
  }
  /* Only the paths: numbers are ascending, so each level's parents come
   * out ascending too, and a repeated parent is the one just done. */
  for (unsigned l = 1; l < LOOM_TREE_LEVELS; l++) {
    uint64_t span = 1, last = UINT64_MAX;
    for (unsigned k = 0; k < l; k++)
      span *= LOOM_TREE_FANOUT;
    for (uint64_t i = 0; i < count; i++) {
      uint64_t node = numbers[i] / span;
      if (node != last)
        rehash(t, l, node);
      last = node;
    }
  }
}

int store_tree_copy(store_tree *dst, const store_tree *src)
{
  dst->error = src->error;
  if (src->error || tree_reserve(dst, src->pages))
    return dst->error ? dst->error : src->error;
  dst->pages = src->pages;
  for (unsigned l = 0; l < LOOM_TREE_LEVELS; l++) {
    uint64_t n = loom_tree_nodes(src->pages, l);
    if (n)
      memcpy(dst->level[l], src->level[l], (size_t)n * sizeof *dst->level[l]);
  }
  return 0;
}

void store_tree_free(store_tree *t)
{
  for (unsigned l = 0; l < LOOM_TREE_LEVELS; l++) {
    free(t->level[l]);
    t->level[l] = NULL;
    t->cap[l] = 0;
  }
  t->pages = 0;
}
