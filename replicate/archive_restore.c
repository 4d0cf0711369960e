/*
 * archive_restore.c: reading an archive back: the epochs, one epoch's
 * plan (its bases, segments and gaps from one listing), restore, list and
 * verify (archive.h).
 *
 * RESTORE, for a target (newest, seq or time) at epoch E:
 *   R1 the archive's id is read; every later object must carry it;
 *   R2 "epochs/" is listed and each epoch's record read (its parent and
 *      branch point); E is the newest unless the caller picked one;
 *   R3 "e/E/" is listed once: bases, segments, gaps; segments must not
 *      overlap (a duplicated or reordered object) and E's head is read;
 *   R4 the base: the newest at or below the target; none at E (the target
 *      lies before E's first base) continues at E's parent, limited to E's
 *      branch point;
 *   R5 the frames after the base up to the target are read and checked
 *      seq after seq (contiguous, one history, not coalesced, each
 *      starting where the last ended) and kept, indexed by page
 *      (archive_image.c S1); then the base is opened (its header checked,
 *      a thread reading it ahead in pieces) and the image is streamed
 *      into a new directory inside out_dir (loom_store_create_from_pages):
 *      chunk by chunk, the base's pages decompressed and every frame's
 *      versions of them applied and checked (S2-S4: each page's hash, each
 *      frame's after checksum, the base's sum, checksum and tag), its
 *      meta last; then moved into out_dir (O1-O4 below);
 *   R6 a seq target must be reached exactly (a gap: REPLICATE_EARCHIVE_GAP;
 *      a missing frame: NOPOS); newest must reach the head's seq: an
 *      archive that claims a seq it cannot give is refused, not shortened.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "archive_internal.h"
#include "loom_io.h"

/* ---------------------------------------------------------------------- */
/* R2: the epochs */

typedef struct arc_epoch {
  uint64_t epoch, parent, branch_seq, branch_checksum;
  loom_history history;
} arc_epoch;

typedef struct epoch_list {
  replicate_archive *a;
  arc_epoch *items;
  size_t n;
  int rc;
} epoch_list;

static int epoch_payload(const replicate_buf *p, uint64_t epoch, arc_epoch *out)
{
  if (p->len != 40)
    return REPLICATE_EARCHIVE_OBJECT;
  out->epoch = epoch;
  memcpy(out->history.id, p->data, LOOM_HISTORY_SIZE);
  out->parent = arc_get64(p->data + 16);
  out->branch_seq = arc_get64(p->data + 24);
  out->branch_checksum = arc_get64(p->data + 32);
  return 0;
}

static int each_epoch(void *ctx, const char *key, uint64_t size)
{
  (void)size;
  epoch_list *l = ctx;
  arc_header h;
  replicate_buf p = {0};
  arc_epoch e;
  int rc = arc_get(l->a, key, &h, &p);
  if (rc == 0 && (rc = epoch_payload(&p, h.epoch, &e)) != 0)
    arc_fail(l->a, rc, "object %s: an epoch record of %zu bytes", key, p.len);
  replicate_buf_free(&p);
  if (rc != 0)
    return rc;
  arc_epoch *items = realloc(l->items, (l->n + 1) * sizeof *items);
  if (items == NULL)
    return ENOMEM;
  l->items = items;
  l->items[l->n++] = e;
  return 0;
}

static int load_epochs(replicate_archive *a, epoch_list *out)
{
  memset(out, 0, sizeof *out);
  out->a = a;
  int rc = a->have_id ? 0 : arc_load_id(a); /* R1 */
  if (rc == REPLICATE_ESTORE_MISSING)
    return arc_fail(a, REPLICATE_EARCHIVE_NOPOS, "%s: no archive there (%s)",
                    objstore_url(a->store), objstore_last_error(a->store));
  if (rc == 0)
    rc = objstore_list(a->store, "epochs/", each_epoch, out);
  if (rc != 0 && a->error[0] == '\0')
    arc_fail(a, rc, "%s", objstore_last_error(a->store));
  return rc;
}

static const arc_epoch *find_epoch(const epoch_list *l, uint64_t epoch)
{
  for (size_t i = 0; i < l->n; i++)
    if (l->items[i].epoch == epoch)
      return &l->items[i];
  return NULL;
}

/* ---------------------------------------------------------------------- */
/* R3: one epoch's plan */

typedef struct arc_obj {
  char key[ARC_KEY_MAX];
  arc_name name;
  uint64_t size;
} arc_obj;

typedef struct plan {
  replicate_archive *a;
  uint64_t epoch;
  arc_obj *objs; /* bases, segments, gaps, in key order */
  size_t n;
  bool have_head;
  loom_position head;
} plan;

static int each_obj(void *ctx, const char *key, uint64_t size)
{
  plan *p = ctx;
  arc_obj o = {.size = size};
  if (arc_key_parse(key, &o.name) != 0 || strlen(key) >= ARC_KEY_MAX)
    return 0; /* not ours: ignored */
  if (o.name.kind != ARC_BASE && o.name.kind != ARC_SEGMENT &&
      o.name.kind != ARC_GAP)
    return 0;
  snprintf(o.key, sizeof o.key, "%s", key);
  arc_obj *objs = realloc(p->objs, (p->n + 1) * sizeof *objs);
  if (objs == NULL)
    return ENOMEM;
  p->objs = objs;
  p->objs[p->n++] = o;
  return 0;
}

/* Segments in key order must not overlap. */
static int check_overlaps(plan *p)
{
  const arc_obj *prev = NULL;
  for (size_t i = 0; i < p->n; i++) {
    const arc_obj *o = &p->objs[i];
    if (o->name.kind != ARC_SEGMENT)
      continue;
    if (o->name.last_seq < o->name.first_seq ||
        (prev && o->name.first_seq <= prev->name.last_seq))
      return arc_fail(p->a, REPLICATE_EARCHIVE_OBJECT,
                      "object %s overlaps %s: duplicated or reordered", o->key,
                      prev ? prev->key : "itself");
    prev = o;
  }
  return 0;
}

static int read_head(plan *p)
{
  return arc_get_head(p->a, p->epoch, &p->have_head, &p->head);
}

static void plan_free(plan *p) { free(p->objs); }

static int plan_load(replicate_archive *a, uint64_t epoch, plan *p)
{
  memset(p, 0, sizeof *p);
  p->a = a;
  p->epoch = epoch;
  char prefix[ARC_KEY_MAX];
  arc_key_prefix(prefix, epoch);
  int rc = objstore_list(a->store, prefix, each_obj, p);
  if (rc != 0)
    return arc_fail(a, rc, "%s", objstore_last_error(a->store));
  rc = check_overlaps(p);
  return rc ? rc : read_head(p);
}

/* ---------------------------------------------------------------------- */
/* R5: the image, streamed (archive_image.c): a restore needs the result
 * durable, not every seq on the way, so the frames are taken first (small:
 * copied and indexed by page), then the base is decompressed chunk by
 * chunk with the frames' versions of each chunk's pages applied, and the
 * image is written once, at the target, as it is made. */

typedef struct restorer {
  replicate_archive *a;
  const replicate_restore_target *t;
  replicate_decoder *dec; /* segments' frames */
  arc_image img;
  bool have_history;
  loom_history history; /* of the frames read */
  char history_key[ARC_KEY_MAX];
  loom_position pos; /* after the last frame taken (seq: the base's first) */
  char base_key[ARC_KEY_MAX]; /* once open_base succeeded */
  uint64_t base_size;         /* its size in the listing */
} restorer;

/* Whether rc, found while the base was read in pieces, may come from a
 * damaged base whose checksum or tag (checked at its end) would have
 * refused it first. */
static bool pieces_may_lie(int rc)
{
  return rc == REPLICATE_EARCHIVE_OBJECT || rc == REPLICATE_EARCHIVE_FOREIGN ||
         rc == REPLICATE_EARCHIVE_KEY || rc == REPLICATE_EPAGE_HASH ||
         rc == REPLICATE_EAFTER_CHECKSUM || rc == REPLICATE_EPOSITION;
}

/* Why the base cannot be used, once reading it in pieces failed with rc:
 * the refusal its checksum and tag give (the checks in docs/ARCHIVE.md's
 * order: a damaged header is EARCHIVE_OBJECT before it is FOREIGN), else
 * rc with its own message (the store failed, or the image inside is
 * wrong). The base is read again piece by piece to its end, each piece
 * dropped once hashed and decrypted: memory stays a piece, whatever the
 * base's size. Not when the stream already ended: every check passed. */
static int base_refusal(restorer *r, const char *key, int rc)
{
  bool verified = r->img.src != NULL && r->img.src_done;
  arc_image_stop_reading(&r->img); /* its thread and store end here */
  if (verified)
    return rc;
  char why[sizeof r->a->error];
  snprintf(why, sizeof why, "%s", r->a->error);
  int again = arc_pieces_verify(r->a, r->a->store, key, r->base_size);
  if (again == 0 || again == REPLICATE_ESTORE || again == ENOMEM)
    snprintf(r->a->error, sizeof r->a->error, "%s", why);
  else
    rc = again; /* a->error names the base */
  return rc;
}

/* The base, once the frames are taken: its header, read and checked
 * (R1's id, the key) by the thread that reads the rest ahead in pieces
 * (hashed, decrypted; the checksum and the tag checked at the end) since
 * restore_from picked it; then the image stream's header; the image's
 * pages are made later, while they are written. */
static int open_base(restorer *r, const arc_obj *o)
{
  arc_header h;
  r->base_size = o->size;
  int rc = arc_ahead_header(r->img.src, &h);
  if (rc != 0) {
    arc_fail(r->a, rc, "%s", arc_ahead_error(r->img.src));
    return pieces_may_lie(rc) ? base_refusal(r, o->key, rc) : rc;
  }
  rc = arc_image_open_base(&r->img, r->img.src, h.flags & ARC_FLAG_ZSTD,
                           o->key);
  if (rc == 0 && (r->img.base.seq != o->name.first_seq ||
                  r->img.base.epoch != h.epoch))
    rc = arc_fail(r->a, REPLICATE_EARCHIVE_OBJECT,
                  "object %s: the image inside is at another position "
                  "(seq %" PRIu64 ", epoch %" PRIu64 ")",
                  o->key, r->img.base.seq, r->img.base.epoch);
  if (rc == 0 && r->have_history &&
      !loom_history_equal(&r->history, &r->img.lineage.history))
    rc = arc_fail(r->a, REPLICATE_EARCHIVE_FOREIGN,
                  "object %s is of another history than the base %s",
                  r->history_key, o->key);
  if (rc == 0) {
    r->pos = r->img.pos;
    snprintf(r->base_key, sizeof r->base_key, "%s", o->key);
  } else if (pieces_may_lie(rc)) {
    rc = base_refusal(r, o->key, rc);
  }
  return rc;
}

/* Whether the frame at seq should be applied: SEQ stops at seq, TIME at
 * the first commit after time_ns; limit is a branch point (or none). */
static bool wanted(const restorer *r, const replicate_frame_info *f,
                   uint64_t limit)
{
  if (f->after.seq > limit)
    return false;
  if (r->t->kind == REPLICATE_RESTORE_SEQ)
    return f->after.seq <= r->t->seq;
  if (r->t->kind == REPLICATE_RESTORE_TIME)
    return f->commit_time_ns <= r->t->time_ns;
  return true;
}

/* Takes one frame (applied later, per chunk of the base). */
static int take(restorer *r, const replicate_frame *f, const char *key)
{
  int rc = arc_image_add_frame(&r->img, f, key);
  if (rc != 0)
    return arc_fail(r->a, rc, "object %s: frame %" PRIu64 " does not apply: %s",
                    key, f->info.after.seq, replicate_strerror(rc));
  r->pos = r->img.pos;
  return 0;
}

/* All frames read must be of one history (the base's: open_base). */
static bool same_history(restorer *r, const replicate_frame_info *f,
                         const char *key)
{
  if (!r->have_history) {
    r->have_history = true;
    r->history = f->history;
    snprintf(r->history_key, sizeof r->history_key, "%s", key);
  }
  return loom_history_equal(&f->history, &r->history);
}

/* *stop: the segment's frames ran past what is wanted. */
static int apply_segment(restorer *r, const arc_obj *o, uint64_t limit,
                         bool *stop)
{
  arc_header h;
  replicate_buf b = {0};
  int rc = arc_get(r->a, o->key, &h, &b);
  size_t off = 0;
  uint64_t expect = o->name.first_seq;
  while (rc == 0 && !*stop && off < b.len) {
    uint64_t len = b.len - off >= 8 ? arc_get64(b.data + off) : UINT64_MAX;
    replicate_frame f;
    if (len > b.len - off - 8 ||
        replicate_frame_decode(r->dec, b.data + off + 8, len, &f) != 0 ||
        f.info.after.seq != expect || f.info.epoch != h.epoch ||
        (f.info.flags & REPLICATE_FRAME_COALESCED))
      rc = arc_fail(r->a, REPLICATE_EARCHIVE_OBJECT,
                    "object %s: frame %" PRIu64 " is malformed or out of order",
                    o->key, expect);
    else if (!same_history(r, &f.info, o->key))
      rc = arc_fail(r->a, REPLICATE_EARCHIVE_FOREIGN,
                    "object %s: frame %" PRIu64 " is of another history",
                    o->key, expect);
    else if (!wanted(r, &f.info, limit))
      *stop = true;
    else if (f.info.after.seq > r->pos.seq)
      rc = take(r, &f, o->key);
    off += 8 + (len == UINT64_MAX ? 0 : len);
    expect++;
  }
  if (rc == 0 && !*stop && expect != o->name.last_seq + 1)
    rc = arc_fail(r->a, REPLICATE_EARCHIVE_OBJECT,
                  "object %s holds seqs up to %" PRIu64 ", not %" PRIu64,
                  o->key, expect - 1, o->name.last_seq);
  replicate_buf_free(&b);
  return rc;
}

/* R4: the base to start from at this epoch, or NULL. */
static const arc_obj *
pick_base(const plan *p, const replicate_restore_target *t, uint64_t limit)
{
  const arc_obj *best = NULL;
  for (size_t i = 0; i < p->n; i++) {
    const arc_obj *o = &p->objs[i];
    if (o->name.kind != ARC_BASE || o->name.first_seq > limit)
      continue;
    if (t->kind == REPLICATE_RESTORE_SEQ && o->name.first_seq > t->seq)
      continue;
    if (t->kind == REPLICATE_RESTORE_TIME && o->name.time_ns > t->time_ns)
      continue;
    if (!best || o->name.first_seq >= best->name.first_seq)
      best = o;
  }
  return best;
}

static const arc_obj *gap_at(const plan *p, uint64_t seq)
{
  for (size_t i = 0; i < p->n; i++)
    if (p->objs[i].name.kind == ARC_GAP && p->objs[i].name.first_seq <= seq &&
        seq <= p->objs[i].name.last_seq)
      return &p->objs[i];
  return NULL;
}

/* R5, R6 at one epoch whose base was found. */
static int restore_from(restorer *r, const plan *p, const arc_obj *base,
                        uint64_t limit)
{
  r->pos = (loom_position){.seq = base->name.first_seq};
  /* The base's GETs start now, on a store of their own, while the
   * segments are read on the archive's. */
  int rc = arc_ahead_begin(r->a, base->key, base->size, &r->img.src);
  bool stop = false;
  for (size_t i = 0; rc == 0 && !stop && i < p->n; i++) {
    const arc_obj *o = &p->objs[i];
    if (o->name.kind != ARC_SEGMENT || o->name.last_seq <= r->pos.seq)
      continue;
    if (o->name.first_seq > r->pos.seq + 1)
      break; /* a hole: R6 says */
    rc = apply_segment(r, o, limit, &stop);
  }
  if (rc == 0)
    rc = open_base(r, base);
  if (rc != 0)
    return rc;
  uint64_t want = r->t->kind == REPLICATE_RESTORE_SEQ ? r->t->seq
                  : r->t->kind == REPLICATE_RESTORE_NEWEST && p->have_head
                      ? (p->head.seq < limit ? p->head.seq : limit)
                      : r->pos.seq;
  if (r->pos.seq == want && p->have_head && want == p->head.seq &&
      !loom_position_same(&r->pos, &p->head))
    return arc_fail(r->a, REPLICATE_EARCHIVE_OBJECT,
                    "epoch %" PRIu64 ": the image at seq %" PRIu64
                    " differs from the one its head object names",
                    p->epoch, want);
  if (r->pos.seq == want)
    return 0;
  const arc_obj *gap = gap_at(p, r->pos.seq + 1);
  if (gap != NULL && r->t->kind == REPLICATE_RESTORE_SEQ)
    return arc_fail(r->a, REPLICATE_EARCHIVE_GAP,
                    "seq %" PRIu64 " lies in the gap %s the archive recorded",
                    want, gap->key);
  return arc_fail(
      r->a, REPLICATE_EARCHIVE_NOPOS,
      "epoch %" PRIu64 ": the archived frames stop at seq %" PRIu64
      " but seq %" PRIu64 " is wanted%s (an object is missing)",
      p->epoch, r->pos.seq, want,
      r->t->kind == REPLICATE_RESTORE_NEWEST ? " (its head claims it)" : "");
}

/* R3, R4 at epoch, then the parent when no base of epoch fits. */
static int restore_epoch(restorer *r, const epoch_list *el, uint64_t epoch,
                         uint64_t limit)
{
  const arc_epoch *e = find_epoch(el, epoch);
  if (e == NULL)
    return arc_fail(r->a, REPLICATE_EARCHIVE_NOPOS,
                    "the archive has no epoch %" PRIu64, epoch);
  plan p;
  int rc = plan_load(r->a, epoch, &p);
  /* The newest is what the head claims: a segment or base stored past it
   * (the writer stopped before its head was written) is not claimed. */
  if (rc == 0 && r->t->kind == REPLICATE_RESTORE_NEWEST && p.have_head &&
      p.head.seq < limit)
    limit = p.head.seq;
  const arc_obj *base = rc ? NULL : pick_base(&p, r->t, limit);
  if (rc == 0 && base != NULL)
    rc = restore_from(r, &p, base, limit);
  else if (rc == 0 && e->parent != 0 && e->parent < epoch)
    rc = restore_epoch(r, el, e->parent,
                       e->branch_seq < limit ? e->branch_seq : limit);
  else if (rc == 0)
    rc = arc_fail(r->a, REPLICATE_EARCHIVE_NOPOS,
                  "the archive holds no base image at or before that position "
                  "(epoch %" PRIu64 ")",
                  epoch);
  plan_free(&p);
  return rc;
}

/* ---------------------------------------------------------------------- */
/* The output directory
 *
 * The store is written in out_dir/REPLICATE_RESTORE_WORK_DIR (the work
 * directory) as the image is made, and moved into out_dir:
 *
 *   O1 out_dir is made, or found empty, or found holding an interrupted
 *      restore (no meta, a work directory whose lock nobody holds), which
 *      is cleared;
 *   O2 R4-R6; the image streamed into the work directory
 *      (loom_store_create_from_pages: fsynced, its meta last, only after
 *      every check of S4 passed);
 *   O3 each of its files but the meta renamed into out_dir; fsync out_dir;
 *   O4 the meta renamed into out_dir (from here on out_dir opens at the
 *      target); fsync out_dir; the work directory removed; fsync out_dir
 *      and its parent.
 *
 * Killed before O4, out_dir holds no meta: no store opens there
 * (loom_store_open: LOOM_ENOIMAGE, LOOM_EMETA with LOOM_CREATE), and the
 * next restore into it clears it and starts again (O1). It never holds a
 * store at any position on the way to the target. */

static int rm_one(const char *path, const struct stat *st, int flag,
                  struct FTW *ftw)
{
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

/* Everything inside dir removed (dir stays: it may be a mount point). */
static void clear_dir(const char *dir)
{
  DIR *d = opendir(dir);
  for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
    char *path = NULL;
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
        asprintf(&path, "%s/%s", dir, e->d_name) >= 0)
      nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(path);
  }
  if (d)
    closedir(d);
}

/* mkdir -p of dir's parents, each made 0700 (data directories). */
static int make_parents(const char *dir)
{
  char *path = strdup(dir);
  if (path == NULL)
    return ENOMEM;
  int rc = 0;
  for (char *p = path + 1; rc == 0 && (p = strchr(p, '/')) != NULL; p++) {
    *p = '\0';
    if (mkdir(path, 0700) != 0 && errno != EEXIST)
      rc = errno;
    *p = '/';
  }
  free(path);
  return rc;
}

/* O1 for a directory that exists: 0 when it may be restored into
 * (cleared if it held an interrupted restore), else why not. */
static int check_out_dir(replicate_archive *a, const char *dir)
{
  DIR *d = opendir(dir);
  if (d == NULL)
    return arc_fail(a, errno, "%s: %s", dir, strerror(errno));
  bool other = false, work = false, meta = false;
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
      continue;
    work = work || !strcmp(e->d_name, REPLICATE_RESTORE_WORK_DIR);
    meta = meta || !strcmp(e->d_name, "meta");
    other = true;
  }
  closedir(d);
  if (!other)
    return 0;
  if (!work || meta)
    return arc_fail(a, REPLICATE_EINVAL,
                    "%s is not empty: restore writes a new directory", dir);
  char *lock = NULL;
  if (asprintf(&lock, "%s/%s/lock", dir, REPLICATE_RESTORE_WORK_DIR) < 0)
    return ENOMEM;
  int fd = open(lock, O_RDWR | O_CLOEXEC);
  free(lock);
  if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) != 0) {
    close(fd);
    return arc_fail(a, REPLICATE_EINVAL,
                    "%s: another restore is writing into it", dir);
  }
  clear_dir(dir); /* an interrupted restore: started again */
  if (fd >= 0)
    close(fd);
  return 0;
}

static int make_out_dir(replicate_archive *a, const char *dir, bool *made)
{
  *made = false;
  int rc = make_parents(dir);
  if (rc == 0 && mkdir(dir, 0700) == 0) {
    *made = true;
    return 0;
  }
  if (rc == 0 && errno != EEXIST)
    rc = errno;
  if (rc != 0)
    return arc_fail(a, rc, "%s: %s", dir, strerror(rc));
  return check_out_dir(a, dir);
}

/* O3: every file of the work directory but the meta into out_dir. */
static int move_files(const loom_io *io, int work, int out)
{
  int dup = io->open(io->ctx, work, ".", O_RDONLY | O_DIRECTORY, 0);
  DIR *d = dup >= 0 ? fdopendir(dup) : NULL;
  if (d == NULL)
    return dup < 0 ? -dup : errno;
  int rc = 0;
  for (struct dirent *e; rc == 0 && (e = readdir(d)) != NULL;)
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
        strcmp(e->d_name, "meta"))
      rc = -io->rename(io->ctx, work, e->d_name, out, e->d_name);
  closedir(d);
  return rc;
}

/* O3, O4. */
static int publish(replicate_archive *a, const char *out_dir)
{
  const loom_io *io = a->io ? a->io : loom_io_posix();
  int out = io->open(io->ctx, AT_FDCWD, out_dir, O_RDONLY | O_DIRECTORY, 0);
  int work = out < 0 ? out
                     : io->open(io->ctx, out, REPLICATE_RESTORE_WORK_DIR,
                                O_RDONLY | O_DIRECTORY, 0);
  int rc = work < 0 ? -work : move_files(io, work, out);
  if (rc == 0)
    rc = -io->fsync(io->ctx, out); /* O3 */
  if (rc == 0)
    rc = -io->rename(io->ctx, work, "meta", out, "meta");
  if (rc == 0)
    rc = -io->fsync(io->ctx, out); /* O4: the target, durable */
  if (rc == 0)
    rc = -io->unlink(io->ctx, out, REPLICATE_RESTORE_WORK_DIR, AT_REMOVEDIR);
  if (rc == 0)
    rc = -io->fsync(io->ctx, out);
  int parent = -1;
  if (rc == 0)
    parent = io->open(io->ctx, out, "..", O_RDONLY | O_DIRECTORY, 0);
  if (rc == 0)
    rc = parent < 0 ? -parent : -io->fsync(io->ctx, parent);
  int fds[] = {parent, work, out};
  for (int i = 0; i < 3; i++)
    if (fds[i] >= 0)
      io->close(io->ctx, fds[i]);
  return rc ? arc_fail(a, rc, "%s: moving the restored store in: %s", out_dir,
                       strerror(rc))
            : 0;
}

int replicate_archive_restore(replicate_archive *a,
                              const replicate_restore_target *t,
                              const char *out_dir, loom_position *restored)
{
  a->error[0] = '\0';
  epoch_list el;
  int rc = load_epochs(a, &el);
  uint64_t epoch = 0;
  for (size_t i = 0; rc == 0 && i < el.n; i++)
    if (el.items[i].epoch > epoch)
      epoch = el.items[i].epoch;
  if (rc == 0 && t->epoch >= 0)
    epoch = (uint64_t)t->epoch;
  if (rc == 0 && epoch == 0)
    rc = arc_fail(a, REPLICATE_EARCHIVE_NOPOS, "the archive holds no epoch");
  bool made = false, touched = false;
  char *work = NULL;
  restorer r = {.a = a, .t = t};
  arc_image_init(&r.img, a);
  if (rc == 0 && (rc = make_out_dir(a, out_dir, &made)) == 0)
    touched = true;
  if (rc == 0 &&
      asprintf(&work, "%s/%s", out_dir, REPLICATE_RESTORE_WORK_DIR) < 0)
    rc = ENOMEM;
  if (rc == 0 && (rc = replicate_decoder_new(NULL, &r.dec)) != 0)
    arc_fail(a, rc, "decoder: %s", replicate_strerror(rc));
  if (rc == 0)
    rc = restore_epoch(&r, &el, epoch, UINT64_MAX); /* O2 */
  if (rc == 0)
    a->error[0] = '\0'; /* the image's refusals name their object */
  if (rc == 0 && (rc = arc_image_write(&r.img, work, a->io)) != 0 &&
      a->error[0] == '\0')
    arc_fail(a, rc, "%s: writing the image: %s", work, replicate_strerror(rc));
  if (rc != 0 && r.base_key[0] != '\0' && pieces_may_lie(rc))
    rc = base_refusal(&r, r.base_key, rc); /* a damaged base names itself */
  if (rc == 0)
    rc = publish(a, out_dir);
  if (rc == 0)
    *restored = r.img.pos;
  a->restore_memory = arc_image_memory(&r.img);
  replicate_decoder_free(r.dec);
  arc_image_free(&r.img);
  free(el.items);
  free(work);
  if (rc != 0 && touched)
    clear_dir(out_dir); /* it was empty, or held an interrupted restore */
  if (rc != 0 && made)
    rmdir(out_dir);
  return rc;
}

uint64_t replicate_archive_restore_memory(const replicate_archive *a)
{
  return a->restore_memory;
}

/* ---------------------------------------------------------------------- */
/* List and verify */

/* Whether an object of epoch e lies past a newer epoch's branch point. */
static bool abandoned(const epoch_list *el, uint64_t epoch, uint64_t last)
{
  for (size_t i = 0; i < el->n; i++)
    if (el->items[i].parent == epoch && el->items[i].epoch > epoch &&
        last > el->items[i].branch_seq)
      return true;
  return false;
}

typedef struct walker {
  replicate_archive *a;
  const epoch_list *el;
  replicate_archive_each_fn each;
  void *ctx;
} walker;

static int walk_epoch(walker *w, uint64_t epoch)
{
  plan p;
  int rc = plan_load(w->a, epoch, &p);
  for (size_t i = 0; rc == 0 && i < p.n; i++) {
    const arc_obj *o = &p.objs[i];
    replicate_archive_entry e = {
        .key = o->key,
        .kind = (replicate_archive_object_kind)o->name.kind,
        .epoch = epoch,
        .first_seq = o->name.first_seq,
        .last_seq = o->name.last_seq,
        .time_ns = o->name.time_ns,
        .size = o->size,
        .key_id = o->name.key_id,
        .abandoned = abandoned(w->el, epoch, o->name.last_seq)};
    rc = w->each(w->ctx, &e);
  }
  plan_free(&p);
  return rc;
}

int replicate_archive_list(replicate_archive *a, replicate_archive_each_fn each,
                           void *ctx)
{
  a->error[0] = '\0';
  epoch_list el;
  int rc = load_epochs(a, &el);
  walker w = {.a = a, .el = &el, .each = each, .ctx = ctx};
  for (size_t i = 0; rc == 0 && i < el.n; i++)
    rc = walk_epoch(&w, el.items[i].epoch);
  free(el.items);
  return rc;
}

typedef struct checker {
  replicate_archive *a;
  replicate_archive_verify_report *out;
} checker;

static int check_one(void *ctx, const replicate_archive_entry *e)
{
  checker *c = ctx;
  arc_header h;
  replicate_buf b = {0};
  int rc = arc_get(c->a, e->key, &h, &b);
  replicate_buf_free(&b);
  if (rc == 0) {
    c->out->objects++;
    c->out->bytes += e->size;
  }
  return rc;
}

int replicate_archive_verify(replicate_archive *a, const char *scratch_dir,
                             replicate_archive_verify_report *out)
{
  memset(out, 0, sizeof *out);
  checker c = {.a = a, .out = out};
  int rc = replicate_archive_list(a, check_one, &c);
  char *dir = NULL;
  if (rc == 0 && asprintf(&dir, "%s/loomship-drill-XXXXXX", scratch_dir) < 0)
    return ENOMEM;
  if (rc == 0 && mkdtemp(dir) == NULL)
    rc = arc_fail(a, errno, "%s: %s", dir, strerror(errno));
  replicate_restore_target t = {.kind = REPLICATE_RESTORE_NEWEST, .epoch = -1};
  if (rc == 0)
    rc = replicate_archive_restore(a, &t, dir, &out->newest);
  loom_position recorded;
  uint64_t computed = 0;
  if (rc == 0 && (rc = loom_verify(dir, &recorded, &computed)) != 0)
    arc_fail(a, rc, "the restore drill's image fails loom verify: %s",
             replicate_strerror(rc));
  if (rc == 0 && computed != out->newest.checksum)
    rc = arc_fail(a, REPLICATE_EARCHIVE_OBJECT,
                  "the restore drill's checksum %016" PRIx64
                  " differs from the archived %016" PRIx64,
                  computed, out->newest.checksum);
  if (dir != NULL)
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
  free(dir);
  return rc;
}
