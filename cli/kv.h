/*
 * kv.h: the bundled example application, a key-value table kept in a loom.
 *
 * It shows how an application embeds the library (kv.c, under 150 lines):
 * open, write, save, close, and react to exhaustion. The table and its
 * allocator live in the arena, so they persist with it:
 *
 *   page 0              header and the free-page bitmap
 *   pages [1, 1+T)      the slot table: key, value page, value length
 *   pages [1+T, low)    values, one page each, handed out by the allocator
 *
 * The allocator reports free pages to the save (they are not written) and
 * its bump pointer is the low watermark: the image ends there.
 */
#ifndef LOOMSHIP_KV_H
#define LOOMSHIP_KV_H

#include <stddef.h>
#include <stdint.h>

#include "loom.h"

typedef struct kv kv;

/* Open (or create) the table in dir with an arena of arena_pages pages and
 * slots keys at most. tweak, if not NULL, is called on the options before
 * the open (to set a commit hook, flags...). Returns 0 or a loom error. */
int kv_open(const char *dir, uint64_t arena_pages, uint32_t slots,
            void (*tweak)(loom_options *, void *), void *tweak_ctx, kv **out);
int kv_close(kv *t);

/* Set key's value (at most LOOM_PAGE_SIZE bytes): LOOM_EEXHAUSTED when no
 * page is left, LOOM_EINVAL when the table is full or len too big. */
int kv_put(kv *t, uint64_t key, const void *value, size_t len);
/* Change len bytes at offset off of key's value in place (allocates a
 * zeroed value page if the key is new). */
int kv_poke(kv *t, uint64_t key, size_t off, const void *bytes, size_t len);
/* A pointer to key's value and its length, or NULL. */
const void *kv_get(kv *t, uint64_t key, size_t *len);
int kv_del(kv *t, uint64_t key);
/* Commit every change since the last save (loom_save with the watermarks). */
int kv_save(kv *t);

uint32_t kv_count(const kv *t);
loom *kv_loom(kv *t);

#endif
