/*
 * workload.c: the workloads of the crash, power-loss and I/O-error suites,
 * their model, and the recovery check (see workload.h).
 *
 * The model is written independently of the engine: a page's hash is
 * XXH3-64 of its bytes seeded with the page number, and the whole-image
 * checksum their sum modulo 2^64, as loom.h defines them.
 */
#include "workload.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <setjmp.h>
#include <cmocka.h>

#define PS ((size_t)LOOM_PAGE_SIZE)
#define ALL(n) ((uint32_t)((UINT64_C(1) << (n)) - 1))
#define BIT(n) (UINT32_C(1) << (n))

/* ---------------------------------------------------------------------- */
/* The workloads. Small images (a handful of 16 KiB pages) keep every suite
 * fast; together they cover each shape of commit the engine has. */

const wl_workload wl_workloads[] = {
  {.name = "store_small_patch",
   .nsetup = 1, .setup = {{WL_PATCH, 4, ALL(4)}},
   .nsteps = 1, .steps = {{WL_PATCH, 4, BIT(2)}}},
  {.name = "store_growth",
   .nsetup = 1, .setup = {{WL_PATCH, 2, ALL(2)}},
   /* pages 4 and 5 grow as zeros without being listed */
   .nsteps = 1, .steps = {{WL_PATCH, 6, BIT(0) | BIT(2) | BIT(3)}}},
  {.name = "store_truncation",
   .nsetup = 1, .setup = {{WL_PATCH, 6, ALL(6)}},
   .nsteps = 1, .steps = {{WL_PATCH, 2, BIT(1)}}},
  {.name = "store_large_patch",
   .nsetup = 1, .setup = {{WL_PATCH, 4, ALL(4)}},
   .nsteps = 1, .steps = {{WL_PATCH, 24, ALL(24)}}},
  {.name = "store_several_commits",
   .nsetup = 1, .setup = {{WL_PATCH, 3, ALL(3)}},
   .nsteps = 4, .steps = {{WL_PATCH, 3, BIT(0)},
                          {WL_PATCH, 5, BIT(1) | BIT(4)},
                          {WL_PATCH, 2, 0},
                          {WL_PATCH, 4, BIT(3)}}},
  {.name = "store_base_replace",
   .nsetup = 2, .setup = {{WL_PATCH, 4, ALL(4)}, {WL_PATCH, 4, BIT(1)}},
   .nsteps = 2, .steps = {{WL_BASE, 3, BIT(0) | BIT(2)},
                          {WL_PATCH, 3, BIT(1)}}},
  {.name = "store_hash_blocks",
   .nsetup = 1, .setup = {{WL_PATCH, 3, ALL(3)}},
   /* grow past the first 512-page block of the hashes file (zero pages and
    * one far page), truncate inside the second block, then into the first */
   .nsteps = 3, .steps = {{WL_PATCH, 600, BIT(1), 540},
                          {WL_PATCH, 515, BIT(0), 513},
                          {WL_PATCH, 2, BIT(1), 0}}},
  {.name = "store_promotion",
   .nsetup = 1, .setup = {{WL_PATCH, 3, ALL(3)}},
   .nsteps = 3, .steps = {{WL_PATCH, 3, BIT(2)},
                          {WL_EPOCH, 3, 0},
                          {WL_PATCH, 4, BIT(0) | BIT(3)}}},
  {.name = "store_reopen_after_failed_sync",
   .nsetup = 1, .setup = {{WL_PATCH, 3, ALL(3), 0, NULL}},
   /* the apply's meta fsync fails: committed, handle poisoned; a restart
    * finds the unsynced meta slot in the page cache; later commits must
    * survive a power cut all the same */
   .nsteps = 4, .steps = {{WL_PATCH, 3, BIT(0), 0, "meta"},
                          {WL_REOPEN, 3, 0, 0, NULL},
                          {WL_PATCH, 4, BIT(1) | BIT(3), 0, NULL},
                          {WL_PATCH, 4, BIT(2), 0, NULL}}},
  {.name = "store_create_after_failed_sync",
   .create = 1, .open_fail_dir_fsync = 1,
   .nsteps = 1, .steps = {{WL_PATCH, 2, ALL(2), 0, NULL}}},
  {.name = "store_create_first_commit",
   .create = 1,
   .nsteps = 1, .steps = {{WL_PATCH, 3, ALL(3)}}},
  {.name = "store_backup",
   .nsetup = 1, .setup = {{WL_PATCH, 3, ALL(3)}},
   .nsteps = 3, .steps = {{WL_PATCH, 3, BIT(1)},
                          {WL_BACKUP, 3, 0},
                          {WL_PATCH, 4, BIT(3)}}},
  {.name = "arena_empty_first_save",
   .create = 1, .arena = 1, .arena_flags = LOOM_COPY_IN,
   .tracker = LOOM_TRACK_MPROTECT,
   .nsteps = 1, .steps = {{WL_SAVE, 3, ALL(3)}}},
  {.name = "arena_several_saves",
   .arena = 1, .arena_flags = LOOM_COPY_IN, .tracker = LOOM_TRACK_AUTO,
   .nsetup = 1, .setup = {{WL_PATCH, 3, ALL(3)}},
   /* grow (page 6 written past the new length stays in the arena),
    * truncate, grow again over the old contents */
   .nsteps = 3, .steps = {{WL_SAVE, 5, BIT(0) | BIT(4) | BIT(6)},
                          {WL_SAVE, 2, BIT(1)},
                          {WL_SAVE, 7, BIT(0)}}},
  {.name = "arena_demand_paged",
   .arena = 1, .arena_flags = 0, .tracker = LOOM_TRACK_MPROTECT,
   .nsetup = 1, .setup = {{WL_PATCH, 4, ALL(4)}},
   .nsteps = 3, .steps = {{WL_SAVE, 4, BIT(1)},
                          {WL_SAVE, 2, BIT(0)},
                          {WL_SAVE, 5, BIT(4)}}},
  {.name = "arena_apply_async",
   .arena = 1, .arena_flags = LOOM_COPY_IN | LOOM_APPLY_ASYNC,
   .tracker = LOOM_TRACK_MPROTECT,
   .nsetup = 1, .setup = {{WL_PATCH, 3, ALL(3)}},
   .nsteps = 3, .steps = {{WL_SAVE, 3, BIT(0)},
                          {WL_SAVE, 4, BIT(1) | BIT(3)},
                          {WL_SAVE, 4, BIT(2)}}},
  /* The commit log with checkpoints deferred: several records wait in the
   * log (recovery replays them all, in order, merging a shrink and the
   * growth after it, and a base image), until the epoch's meta write
   * drains them. */
  {.name = "store_log_deferred",
   .store_flags = LOOM_CHECKPOINT_DEFER,
   .nsetup = 1, .setup = {{WL_PATCH, 3, ALL(3)}},
   .nsteps = 6, .steps = {{WL_PATCH, 3, BIT(0)},
                          {WL_PATCH, 5, BIT(1) | BIT(4)},
                          {WL_PATCH, 2, BIT(0)},
                          {WL_PATCH, 4, BIT(3)},
                          {WL_BASE, 3, 0},
                          {WL_PATCH, 4, BIT(1) | BIT(3)}}},
  /* A 96 KiB ring: the fourth record does not fit before the ring's end
   * (the log is full: the save checkpoints inline, then the record goes
   * at the next lap's start), and so does the sixth. */
  {.name = "arena_log_wrap",
   .arena = 1, .arena_flags = LOOM_COPY_IN | LOOM_CHECKPOINT_DEFER,
   .tracker = LOOM_TRACK_MPROTECT, .log_bytes = 98304,
   .nsetup = 1, .setup = {{WL_PATCH, 3, ALL(3)}},
   .nsteps = 6, .steps = {{WL_SAVE, 3, BIT(0)},
                          {WL_SAVE, 4, BIT(1) | BIT(3)},
                          {WL_SAVE, 4, BIT(2)},
                          {WL_SAVE, 2, BIT(0)},
                          {WL_SAVE, 5, BIT(0) | BIT(1) | BIT(4)},
                          {WL_SAVE, 5, BIT(2)}}},
};
const size_t wl_workload_count = sizeof wl_workloads / sizeof wl_workloads[0];

/* ---------------------------------------------------------------------- */
/* The model */

static uint64_t mix64(uint64_t x)
{
  x += UINT64_C(0x9e3779b97f4a7c15);
  x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
  return x ^ (x >> 31);
}

/* The contents step `tag` gives page n. */
static void fill_page(uint8_t *page, unsigned tag, uint64_t n)
{
  uint64_t x = mix64(((uint64_t)tag << 32) ^ n ^ UINT64_C(0x10035));
  for (size_t i = 0; i < PS; i += 8) {
    x = mix64(x);
    memcpy(page + i, &x, 8);
  }
}

static uint64_t image_checksum(const uint8_t *image, uint64_t pages)
{
  uint64_t sum = 0;
  for (uint64_t n = 0; n < pages; n++)
    sum += XXH3_64bits_withSeed(image + n * PS, PS, n);
  return sum;
}

typedef struct image_model {
  uint8_t *image;   /* WL_MAX_PAGES pages */
  uint8_t *arena;   /* WL_ARENA_PAGES pages, arena workloads */
  uint64_t pages;
  loom_position pos;
} image_model;

static void image_resize(image_model *im, uint64_t pages)
{
  if (pages > im->pages)
    memset(im->image + im->pages * PS, 0, (pages - im->pages) * PS);
  else
    memset(im->image + pages * PS, 0, (im->pages - pages) * PS);
  im->pages = pages;
}

/* Apply step s (numbered tag) to the model. */
static void model_apply(image_model *im, const wl_step *s, unsigned tag)
{
  switch (s->kind) {
  case WL_PATCH:
  case WL_BASE:
    image_resize(im, s->pages);
    for (uint64_t n = 0; n < s->pages && n < 32; n++)
      if (s->written & BIT(n))
        fill_page(im->image + n * PS, tag, n);
    if (s->far_page)
      fill_page(im->image + s->far_page * PS, tag, s->far_page);
    if (s->kind == WL_BASE) {
      im->pos.epoch++;
      im->pos.seq += 5;
    } else {
      im->pos.seq++;
    }
    break;
  case WL_SAVE: {
    for (uint64_t n = 0; n < 32; n++)
      if (s->written & BIT(n))
        fill_page(im->arena + n * PS, tag, n);
    int changed = s->pages != im->pages ||
                  memcmp(im->image, im->arena, (size_t)s->pages * PS) != 0;
    if (changed) {
      image_resize(im, s->pages);
      memcpy(im->image, im->arena, (size_t)s->pages * PS);
      im->pos.seq++;
    }
    break;
  }
  case WL_BACKUP:
    break;
  case WL_EPOCH:
    im->pos.epoch++;
    break;
  case WL_REOPEN:
    break;
  }
  im->pos.pages = im->pages;
  im->pos.checksum = image_checksum(im->image, im->pages);
}

static int model_init(image_model *im)
{
  memset(im, 0, sizeof *im);
  im->image = calloc(WL_MAX_PAGES, PS);
  im->arena = calloc(WL_ARENA_PAGES, PS);
  im->pos.epoch = 1;
  return im->image && im->arena ? 0 : ENOMEM;
}

static void model_free(image_model *im)
{
  free(im->image);
  free(im->arena);
}

static void snapshot(const image_model *im, wl_state *st, int backup)
{
  st->pos = im->pos;
  st->bytes = malloc(im->pages ? im->pages * PS : 1);
  st->hashes = malloc(im->pages ? im->pages * 8 : 1);
  if (!st->bytes || !st->hashes)
    abort();
  memcpy(st->bytes, im->image, im->pages * PS);
  for (uint64_t n = 0; n < im->pages; n++)
    st->hashes[n] = XXH3_64bits_withSeed(im->image + n * PS, PS, n);
  st->backup = backup;
}

void wl_model_build(const wl_workload *w, wl_model *m)
{
  image_model im;
  if (model_init(&im))
    abort();
  memset(m, 0, sizeof *m);
  m->w = w;
  unsigned tag = 1;
  for (size_t i = 0; i < w->nsetup; i++)
    model_apply(&im, &w->setup[i], tag++);
  snapshot(&im, &m->states[0], 0);
  if (w->arena) /* the arena opens on the image */
    memcpy(im.arena, im.image, im.pages * PS);
  for (size_t i = 0; i < w->nsteps; i++) {
    model_apply(&im, &w->steps[i], tag++);
    snapshot(&im, &m->states[i + 1], w->steps[i].kind == WL_BACKUP);
  }
  m->nstates = w->nsteps + 1;
  model_free(&im);
}

void wl_model_free(wl_model *m)
{
  for (size_t i = 0; i < m->nstates; i++) {
    free(m->states[i].bytes);
    free(m->states[i].hashes);
  }
  m->nstates = 0;
}

static int same_position(const loom_position *a, const loom_position *b)
{
  return a->epoch == b->epoch && a->seq == b->seq &&
         a->checksum == b->checksum && a->pages == b->pages;
}

/* ---------------------------------------------------------------------- */
/* Running */

static int listed(const wl_step *step, uint64_t n)
{
  return (n < 32 && (step->written & BIT(n))) ||
         (step->far_page && n == step->far_page);
}

/* Commit a patch (or base image) taking the store from its position to
 * `after`, with the pages listed in `written` (all pages for a base) taken
 * from bytes. */
static int commit_patch(loom_store *s, const wl_step *step,
                        const loom_position *after, const uint8_t *bytes)
{
  loom_patch_header h;
  memset(&h, 0, sizeof h);
  loom_store_position(s, &h.before);
  h.after = *after;
  h.after.commit_time_ns = 0;
  h.flags = step->kind == WL_BASE ? LOOM_PATCH_BASE : 0;
  uint64_t count = 0;
  for (uint64_t n = 0; n < step->pages; n++)
    if (step->kind == WL_BASE || listed(step, n))
      count++;
  h.page_count = count;
  loom_patch *p;
  int rc = loom_store_patch_begin(s, &h, &p);
  if (rc)
    return rc;
  for (uint64_t n = 0; n < step->pages; n++) {
    if (step->kind != WL_BASE && !listed(step, n))
      continue;
    rc = loom_patch_add(p, n, bytes + n * PS);
    if (rc) {
      loom_patch_abort(p);
      return rc;
    }
  }
  return loom_patch_commit(p); /* consumes p, success or not */
}

static void backup_path(const char *dir, char *out, size_t size)
{
  snprintf(out, size, "%s.backup", dir);
}

static int run_step(const wl_workload *w, const wl_model *m, size_t i,
                    loom *l, loom_store **sp, const char *dir, iosim *sim)
{
  const wl_step *step = &w->steps[i];
  loom_store *s = *sp;
  switch (step->kind) {
  case WL_PATCH:
  case WL_BASE:
    return commit_patch(s, step, &m->states[i + 1].pos, m->states[i + 1].bytes);
  case WL_SAVE: {
    unsigned tag = (unsigned)(w->nsetup + i + 1);
    for (uint64_t n = 0; n < 32; n++)
      if (step->written & BIT(n))
        fill_page(loom_page(l, n), tag, n);
    return loom_save(l, step->pages, WL_ARENA_PAGES);
  }
  case WL_BACKUP: {
    char dest[PATH_MAX];
    backup_path(dir, dest, sizeof dest);
    return loom_store_backup(s, dest);
  }
  case WL_EPOCH:
    return loom_store_set_epoch(s, m->states[i + 1].pos.epoch);
  case WL_REOPEN:
    if (l)
      return LOOM_EINVAL; /* store workloads only */
    loom_store_close(s); /* poisoned, maybe: its error is expected */
    *sp = NULL;
    return loom_store_open(dir, 0, iosim_io(sim), sp);
  }
  return LOOM_EINVAL;
}

static void record_error(wl_progress *pr, int step, int rc)
{
  if (!pr->rc) {
    pr->rc = rc;
    pr->failed_step = step;
  }
}

static int open_handle(const wl_workload *w, const char *dir,
                       const loom_io *io, loom **l, loom_store **s)
{
  *l = NULL;
  *s = NULL;
  if (!w->arena)
    return loom_store_open(dir, w->store_flags | (w->create ? LOOM_CREATE : 0u),
                           io, s);
  loom_options o;
  memset(&o, 0, sizeof o);
  o.arena_pages = WL_ARENA_PAGES;
  o.flags = w->arena_flags | (w->create ? LOOM_CREATE : 0u);
  o.tracker = w->tracker;
  o.io = io;
  o.log_bytes = w->log_bytes;
  int rc = loom_open(dir, &o, l);
  if (!rc)
    *s = loom_get_store(*l);
  return rc;
}

int wl_run(const wl_workload *w, const wl_model *m, const char *dir,
           iosim *sim, unsigned flags, wl_progress *pr)
{
  const loom_io *io = iosim_io(sim);
  pr->acked = w->create ? -1 : 0;
  pr->step = -1;
  pr->rc = 0;
  pr->failed_step = -2;
  pr->moved = 0;
  pr->retried_rc = 0;
  pr->finished = 0;
  pr->backups = 0;
  loom *l = NULL;
  loom_store *s = NULL;
  int rc;
  if (w->open_fail_dir_fsync) {
    const char *base = strrchr(dir, '/');
    iosim_fault f = {.kind = IOSIM_FAIL, .err = EIO, .by_type = 1,
                     .op = LOOM_IO_FSYNC, .path = base ? base + 1 : dir};
    iosim_fault_add(sim, &f);
    rc = open_handle(w, dir, io, &l, &s);
    if (!rc) {
      record_error(pr, -1, LOOM_EBUG); /* the expected failure did not come */
      if (l)
        loom_close(l);
      else
        loom_store_close(s);
      return pr->rc;
    }
  }
  rc = open_handle(w, dir, io, &l, &s);
  if (rc) {
    record_error(pr, -1, rc);
    return rc;
  }
  pr->acked = 0;
  size_t i;
  for (i = 0; i < w->nsteps; i++) {
    pr->step = (int)i;
    const wl_step *step = &w->steps[i];
    if (step->fail_fsync) {
      iosim_fault f = {.kind = IOSIM_FAIL, .err = EIO, .by_type = 1,
                       .op = LOOM_IO_FSYNC, .path = step->fail_fsync};
      iosim_fault_add(sim, &f);
    }
    rc = run_step(w, m, i, l, &s, dir, sim);
    if (!s) {
      record_error(pr, (int)i, rc ? rc : LOOM_EBUG);
      pr->acked = (int)i; /* the reopen failed: nothing left to close */
      pr->finished = 0;
      return pr->rc;
    }
    if (step->fail_fsync) {
      /* Expected: an error after the commit point. Anything else is a
       * failure of this step (LOOM_EBUG if it succeeded). */
      loom_position now;
      loom_store_position(s, &now);
      if (rc && same_position(&now, &m->states[i + 1].pos)) {
        pr->acked = (int)i + 1;
        continue;
      }
      if (!rc)
        rc = LOOM_EBUG;
    }
    if (rc) {
      record_error(pr, (int)i, rc);
      loom_position now;
      loom_store_position(s, &now);
      /* Past the commit point the handle already holds the new position:
       * the step is durable, whatever the call returned. */
      if (!same_position(&m->states[i].pos, &m->states[i + 1].pos) &&
          same_position(&now, &m->states[i + 1].pos)) {
        pr->moved = 1;
        pr->acked = (int)i + 1;
        if (flags & WL_RETRY)
          continue;
        break;
      }
      if (!(flags & WL_RETRY))
        break;
      rc = run_step(w, m, i, l, &s, dir, sim);
      if (!s) {
        pr->retried_rc = rc ? rc : LOOM_EBUG;
        pr->finished = 0;
        return pr->rc;
      }
      pr->retried_rc = rc;
      if (rc)
        break;
    }
    pr->acked = (int)i + 1;
    if (w->steps[i].kind == WL_BACKUP)
      pr->backups++;
  }
  int crc = l ? loom_close(l) : loom_store_close(s);
  if (crc)
    record_error(pr, (int)w->nsteps, crc);
  pr->finished = pr->acked == (int)w->nsteps && crc == 0;
  return pr->rc;
}

int wl_template(const wl_workload *w, const char *dir)
{
  if (w->create)
    return 0;
  image_model im;
  int rc = model_init(&im);
  loom_store *s = NULL;
  if (!rc)
    rc = loom_store_open(dir, LOOM_CREATE, NULL, &s);
  for (size_t i = 0; !rc && i < w->nsetup; i++) {
    model_apply(&im, &w->setup[i], (unsigned)i + 1);
    rc = commit_patch(s, &w->setup[i], &im.pos, im.image);
  }
  int crc = s ? loom_store_close(s) : 0;
  model_free(&im);
  return rc ? rc : crc;
}

/* ---------------------------------------------------------------------- */
/* Checking */

static void describe(char *out, size_t size, const loom_position *p)
{
  snprintf(out, size, "(epoch %llu, seq %llu, pages %llu, checksum %016llx)",
           (unsigned long long)p->epoch, (unsigned long long)p->seq,
           (unsigned long long)p->pages, (unsigned long long)p->checksum);
}

static int check_hashes_file(const char *dir, const wl_state *st, char *why,
                             size_t size)
{
  char path[PATH_MAX];
  wl_path(path, sizeof path, "%s/hashes", dir);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(why, size, "%s: %s", path, strerror(errno));
    return -1;
  }
  struct stat sb;
  int rc = fstat(fd, &sb) == 0 && (uint64_t)sb.st_size == st->pos.pages * 8 ? 0 : -1;
  if (rc)
    snprintf(why, size, "%s: %lld bytes for %llu pages", path,
             (long long)sb.st_size, (unsigned long long)st->pos.pages);
  uint8_t *b = rc ? NULL : malloc(st->pos.pages * 8 + 1);
  if (!rc && (!b || pread(fd, b, st->pos.pages * 8, 0) != (ssize_t)(st->pos.pages * 8))) {
    rc = -1;
    snprintf(why, size, "%s: cannot read", path);
  }
  for (uint64_t n = 0; !rc && n < st->pos.pages; n++) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
      v |= (uint64_t)b[n * 8 + i] << (8 * i);
    if (v != st->hashes[n]) {
      rc = -1;
      snprintf(why, size, "%s: wrong for page %llu", path, (unsigned long long)n);
    }
  }
  free(b);
  close(fd);
  return rc;
}

/* Open dir, find its position among states[lo..hi], compare its pages,
 * close, verify. */
static int check_store(const wl_model *m, const char *dir, unsigned open_flags,
                       int lo, int hi, int backups_only, char *why,
                       size_t size)
{
  loom_store *s;
  int rc = loom_store_open(dir, open_flags, NULL, &s);
  if (rc) {
    snprintf(why, size, "%s: recovery failed: %s (%d)", dir,
             loom_strerror(rc), rc);
    return -1;
  }
  loom_position pos;
  loom_store_position(s, &pos);
  int found = -1;
  /* Prefer the newest match (a backup step repeats its predecessor). */
  for (int i = hi; i >= lo && found < 0; i--)
    if (same_position(&pos, &m->states[i].pos) &&
        (!backups_only || m->states[i].backup))
      found = i;
  if (found < 0) {
    char got[128], a[128], b[128];
    describe(got, sizeof got, &pos);
    describe(a, sizeof a, &m->states[lo].pos);
    describe(b, sizeof b, &m->states[hi].pos);
    snprintf(why, size, "%s: position %s is none of states %d..%d: %s .. %s",
             dir, got, lo, hi, a, b);
    loom_store_close(s);
    return -1;
  }
  uint8_t *page = malloc(PS);
  if (!page)
    abort();
  for (uint64_t n = 0; n < pos.pages && found >= 0; n++) {
    rc = loom_store_read_page(s, n, page);
    if (rc || memcmp(page, m->states[found].bytes + n * PS, PS) != 0) {
      snprintf(why, size, "%s: state %d: page %llu %s", dir, found,
               (unsigned long long)n, rc ? loom_strerror(rc) : "differs");
      found = -1;
    }
  }
  free(page);
  rc = loom_store_close(s);
  if (rc && found >= 0) {
    snprintf(why, size, "%s: close after recovery: %s", dir, loom_strerror(rc));
    found = -1;
  }
  if (found < 0)
    return -1;
  /* At rest, after recovery: the hashes file (docs/FORMAT.md: one
   * little-endian u64 per page) agrees with the pages, so the next open
   * has nothing to rebuild. */
  if (check_hashes_file(dir, &m->states[found], why, size) < 0)
    return -1;
  loom_position recorded;
  uint64_t computed = 0;
  rc = loom_verify(dir, &recorded, &computed);
  if (rc || !same_position(&recorded, &m->states[found].pos)) {
    snprintf(why, size, "%s: loom_verify: %s (%d), computed %016llx", dir,
             loom_strerror(rc), rc, (unsigned long long)computed);
    return -1;
  }
  return found;
}

int wl_check(const wl_model *m, const char *dir, int lo, int hi,
             int must_backup, char *why, size_t why_size)
{
  why[0] = 0;
  if (hi >= (int)m->nstates)
    hi = (int)m->nstates - 1;
  unsigned open_flags = lo < 0 ? LOOM_CREATE : 0;
  if (lo < 0) {
    lo = 0;
    hi = 0;
  }
  int found = check_store(m, dir, open_flags, lo, hi, 0, why, why_size);
  if (found < 0)
    return -1;
  char dest[PATH_MAX];
  backup_path(dir, dest, sizeof dest);
  struct stat st;
  if (stat(dest, &st) == 0) {
    if (check_store(m, dest, 0, 0, (int)m->nstates - 1, 1, why, why_size) < 0)
      return -1;
  } else if (must_backup) {
    snprintf(why, why_size, "%s: the acknowledged backup is missing", dest);
    return -1;
  }
  return found;
}

/* ---------------------------------------------------------------------- */
/* Directories */

int wl_tempdir(const char *prefix, char *out, size_t size)
{
  const char *tmp = getenv("TMPDIR");
  if (!tmp || !*tmp)
    tmp = access("/dev/shm", W_OK | X_OK) == 0 ? "/dev/shm" : "/tmp";
  wl_path(out, size, "%s/%s-XXXXXX", tmp, prefix);
  return mkdtemp(out) ? 0 : errno;
}

static int copy_file(const char *src, const char *dst, mode_t mode)
{
  int in = open(src, O_RDONLY | O_CLOEXEC);
  if (in < 0)
    return errno;
  int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode & 0777);
  if (out < 0) {
    int e = errno;
    close(in);
    return e;
  }
  /* Sparse: all-zero blocks are skipped (images grow by zero pages). */
  static __thread char buf[1 << 16];
  static const char zeros[4096];
  int rc = 0;
  off_t pos = 0;
  for (;;) {
    ssize_t n = read(in, buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      rc = errno;
      break;
    }
    if (n == 0)
      break;
    for (ssize_t done = 0; !rc && done < n;) {
      size_t len = (size_t)(n - done) < sizeof zeros ? (size_t)(n - done)
                                                     : sizeof zeros;
      if (memcmp(buf + done, zeros, len) != 0) {
        ssize_t k = pwrite(out, buf + done, len, pos + done);
        if (k < 0 && errno == EINTR)
          continue;
        if (k <= 0) {
          rc = k < 0 ? errno : EIO;
          break;
        }
        len = (size_t)k;
      }
      done += (ssize_t)len;
    }
    pos += n;
    if (rc)
      break;
  }
  if (!rc && ftruncate(out, pos) < 0)
    rc = errno;
  close(in);
  if (close(out) < 0 && !rc)
    rc = errno;
  return rc;
}

int wl_copy_tree(const char *src, const char *dst)
{
  struct stat st;
  if (lstat(src, &st) < 0)
    return errno;
  if (!S_ISDIR(st.st_mode))
    return S_ISREG(st.st_mode) ? copy_file(src, dst, st.st_mode) : 0;
  if (mkdir(dst, 0755) < 0)
    return errno;
  DIR *d = opendir(src);
  if (!d)
    return errno;
  int rc = 0;
  struct dirent *e;
  while (!rc && (e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
      continue;
    char a[PATH_MAX], b[PATH_MAX];
    snprintf(a, sizeof a, "%s/%s", src, e->d_name);
    snprintf(b, sizeof b, "%s/%s", dst, e->d_name);
    rc = wl_copy_tree(a, b);
  }
  closedir(d);
  return rc;
}

static uint64_t digest_tree(const char *path, uint64_t h, int depth)
{
  struct stat st;
  if (depth > 16 || lstat(path, &st) < 0)
    return h;
  if (S_ISREG(st.st_mode)) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      return h;
    static __thread uint8_t buf[1 << 16];
    XXH3_state_t *x = XXH3_createState();
    XXH3_64bits_reset_withSeed(x, h);
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
      XXH3_64bits_update(x, buf, (size_t)n);
    close(fd);
    h = XXH3_64bits_digest(x) ^ (uint64_t)st.st_size;
    XXH3_freeState(x);
    return h;
  }
  if (!S_ISDIR(st.st_mode))
    return h;
  /* Entries in name order: readdir's order is not the tree's. */
  struct dirent **names;
  int n = scandir(path, &names, NULL, alphasort);
  for (int i = 0; i < n; i++) {
    const char *e = names[i]->d_name;
    if (strcmp(e, ".") && strcmp(e, "..") && strcmp(e, "lock")) {
      char child[PATH_MAX];
      wl_path(child, sizeof child, "%s/%s", path, e);
      h = mix64(h ^ XXH3_64bits(e, strlen(e)));
      h = digest_tree(child, h, depth + 1);
    }
    free(names[i]);
  }
  if (n >= 0)
    free(names);
  return mix64(h ^ 0xd1);
}

uint64_t wl_tree_digest(const char *path)
{
  return digest_tree(path, 0x7ee, 0);
}

static int remove_one(const char *path, const struct stat *st, int type,
                      struct FTW *ftw)
{
  (void)st;
  (void)ftw;
  int rc = type == FTW_DP ? rmdir(path) : unlink(path);
  return rc < 0 && errno != ENOENT ? errno : 0;
}

int wl_remove_tree(const char *path)
{
  struct stat st;
  if (lstat(path, &st) < 0)
    return errno == ENOENT ? 0 : errno;
  return nftw(path, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

uint64_t wl_env_u64(const char *name, uint64_t def)
{
  const char *v = getenv(name);
  if (!v || !*v)
    return def;
  char *end;
  errno = 0;
  unsigned long long n = strtoull(v, &end, 0);
  return errno || *end ? def : (uint64_t)n;
}

void wl_path(char *out, size_t size, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(out, size, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= size)
    abort();
}

int wl_run_group(const char *group, void (*each)(void **state),
                 void (*total)(void **state))
{
  struct CMUnitTest tests[32];
  size_t n = 0;
  for (size_t i = 0; i < wl_workload_count && n < 31; i++) {
    tests[n] = (struct CMUnitTest)cmocka_unit_test_prestate(
        each, (void *)&wl_workloads[i]);
    tests[n].name = wl_workloads[i].name;
    n++;
  }
  tests[n++] = (struct CMUnitTest)cmocka_unit_test(total);
  return _cmocka_run_group_tests(group, tests, n, NULL, NULL);
}
