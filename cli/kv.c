/* kv.c: the example application (see kv.h): how to embed loom. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kv.h"

#define PAGE LOOM_PAGE_SIZE
#define MAGIC UINT64_C(0x31766b70696873) /* "shipkv1" */
#define SLOTS_PER_PAGE (PAGE / sizeof(struct slot))

struct header { uint64_t magic, slots, slot_pages, next_page, count; }; /* + bitmap */
struct slot { uint64_t key; uint32_t page, len; }; /* page 0: empty */
struct kv { loom *l; uint8_t *base; uint64_t arena_pages; };

static struct header *head(kv *t) { return (struct header *)t->base; }
static uint8_t *bitmap(kv *t) { return t->base + sizeof(struct header); }
static struct slot *slots(kv *t) { return (struct slot *)(t->base + PAGE); }

/* The save asks the allocator which pages need no saving. */
static int page_is_free(void *ctx, uint64_t n)
{
  kv *t = ctx;
  return n < t->arena_pages && (bitmap(t)[n / 8] >> (n % 8)) & 1;
}

/* The fault handler asks where the free space is (for the guard page). */
static void watermarks(void *ctx, uint64_t *low, uint64_t *high)
{
  kv *t = ctx;
  *low = head(t)->next_page, *high = t->arena_pages;
}

int kv_open(const char *dir, uint64_t arena_pages, uint32_t nslots,
            void (*tweak)(loom_options *, void *), void *tweak_ctx, kv **out)
{
  uint64_t slot_pages = (nslots + SLOTS_PER_PAGE - 1) / SLOTS_PER_PAGE;
  if (arena_pages > (PAGE - sizeof(struct header)) * 8 || arena_pages < slot_pages + 4)
    return LOOM_EINVAL;
  kv *t = calloc(1, sizeof *t);
  if (!t)
    return ENOMEM;
  t->arena_pages = arena_pages;
  loom_options o = {.arena_pages = arena_pages, .flags = LOOM_CREATE,
                    .page_is_free = page_is_free, .free_ctx = t,
                    .watermarks = watermarks, .watermarks_ctx = t};
  if (tweak)
    tweak(&o, tweak_ctx);
  int rc = loom_open(dir, &o, &t->l);
  if (rc)
    return free(t), rc;
  t->base = loom_base(t->l);
  struct header *h = head(t);
  if (h->magic != MAGIC) /* a new table: the first save makes it durable */
    *h = (struct header){MAGIC, slot_pages * SLOTS_PER_PAGE, slot_pages, 1 + slot_pages, 0};
  *out = t;
  return 0;
}

int kv_close(kv *t)
{
  int rc = loom_close(t->l);
  return free(t), rc;
}

#define TOMBSTONE UINT32_MAX /* a deleted slot: probing goes on past it */

/* Linear probing; with create, an empty (or deleted) slot for a new key. */
static struct slot *find(kv *t, uint64_t key, int create)
{
  struct header *h = head(t);
  struct slot *reuse = NULL;
  for (uint64_t i = 0, at = key * 0x9e3779b97f4a7c15u % h->slots; i < h->slots;
       i++, at = (at + 1) % h->slots) {
    struct slot *s = &slots(t)[at];
    if (s->page == TOMBSTONE && !reuse)
      reuse = s;
    else if (!s->page && (reuse = reuse ? reuse : s))
      break;
    else if (s->page != TOMBSTONE && s->key == key)
      return s;
  }
  if (!create || !reuse)
    return NULL;
  reuse->key = key;
  return reuse;
}

/* A free page from the bitmap, else the bump pointer (the low watermark). */
static uint32_t page_alloc(kv *t)
{
  struct header *h = head(t);
  for (uint64_t n = 1 + h->slot_pages; n < h->next_page; n++)
    if (page_is_free(t, n)) {
      bitmap(t)[n / 8] &= (uint8_t)~(1u << (n % 8));
      return (uint32_t)n;
    }
  if (h->next_page + 2 >= t->arena_pages) /* keep room for the guard */
    return 0;
  return (uint32_t)h->next_page++;
}

int kv_poke(kv *t, uint64_t key, size_t off, const void *bytes, size_t len)
{
  if (off + len > PAGE)
    return LOOM_EINVAL;
  struct slot *s = find(t, key, 0);
  if (!s) {
    if (!(s = find(t, key, 1)))
      return LOOM_EINVAL;
    uint32_t page = page_alloc(t);
    if (!page)
      return LOOM_EEXHAUSTED; /* the application's own exhaustion: refuse */
    memset(t->base + (uint64_t)page * PAGE, 0, PAGE);
    s->page = page;
    s->len = PAGE;
    head(t)->count++;
  }
  memcpy(t->base + (uint64_t)s->page * PAGE + off, bytes, len);
  return 0;
}

int kv_put(kv *t, uint64_t key, const void *value, size_t len)
{
  int rc = kv_poke(t, key, 0, value, len);
  return rc ? rc : (find(t, key, 0)->len = (uint32_t)len, 0);
}

const void *kv_get(kv *t, uint64_t key, size_t *len)
{
  struct slot *s = find(t, key, 0);
  return s ? (*len = s->len, t->base + (uint64_t)s->page * PAGE) : NULL;
}

int kv_del(kv *t, uint64_t key)
{
  struct slot *s = find(t, key, 0);
  if (!s)
    return LOOM_EINVAL;
  bitmap(t)[s->page / 8] |= (uint8_t)(1u << (s->page % 8));
  s->page = TOMBSTONE;
  head(t)->count--;
  return 0;
}

int kv_save(kv *t) { return loom_save(t->l, head(t)->next_page, t->arena_pages); }

uint32_t kv_count(const kv *t) { return (uint32_t)((struct header *)t->base)->count; }
loom *kv_loom(kv *t) { return t->l; }
