/*
 * snapshot.c: snapshots of the image (loom_store_snapshot_open and
 * loom_snapshot_*), the consistent reads behind backups and base images.
 *
 * A snapshot takes the position the image file holds when it opens
 * (image_pos, under snap_lock). Every apply (store.c, steps 4-6) takes
 * snap_lock too, and before it overwrites or truncates away a page that an
 * open snapshot still needs, it copies the page's current version to that
 * snapshot's side file (an unnamed O_TMPFILE in the store's directory) and
 * marks it in the snapshot's bitmap. A read takes each page from the side
 * file if it was preserved, else from the image. A side file that cannot
 * be written breaks its snapshot (its reads fail), never the store.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loom.h"
#include "store_internal.h"

/* Every open snapshot that still needs page n's current version gets a
 * copy in its side file first (under snap_lock). */
int store_snapshot_preserve(loom_store *s, uint64_t n)
{
  uint8_t *buf = s->staging + STAGING_PAGES * PS;
  int have = 0;
  for (int i = 0; i < MAX_SNAPSHOTS; i++) {
    loom_snapshot *snap = s->snaps[i];
    if (!snap || snap->error || n >= snap->pos.pages ||
        (snap->preserved[n / 64] >> (n % 64)) & 1)
      continue;
    if (!have) {
      int rc = store_read_exact(s, s->image_fd, buf, PS, (off_t)(n * PS));
      if (rc)
        return rc; /* the image itself cannot be read: the apply fails */
      have = 1;
    }
    ssize_t w = pwrite(snap->side_fd, buf, PS, (off_t)(n * PS));
    if (w != (ssize_t)PS)
      snap->error = w < 0 ? errno : ENOSPC; /* the snapshot breaks, not the store */
    else
      snap->preserved[n / 64] |= UINT64_C(1) << (n % 64);
  }
  return 0;
}

int store_snapshots_open(const loom_store *s)
{
  for (int i = 0; i < MAX_SNAPSHOTS; i++)
    if (s->snaps[i])
      return 1;
  return 0;
}

/* Any thread: the snapshot takes the position the image file holds at the
 * instant it is registered, under the lock every apply takes. Up to
 * MAX_SNAPSHOTS at once (a backup and a base image being shipped). */
int loom_store_snapshot_open(loom_store *s, loom_snapshot **out)
{
  if (!s || !out)
    return LOOM_EINVAL;
  *out = NULL;
  if (s->poison)
    return LOOM_EPANIC;
  /* The image file holds the checkpoint's position: a committed one (I1),
   * but up to a log's worth behind. Let the checkpoint catch up first. */
  store_checkpoint_catch_up(s);
  loom_snapshot *snap = calloc(1, sizeof *snap);
  if (!snap)
    return ENOMEM;
  snap->store = s;
  snap->side_fd = openat(s->dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  int rc = snap->side_fd < 0 ? errno : 0;
  pthread_mutex_lock(&s->snap_lock);
  if (!rc && s->image_broken)
    rc = LOOM_EPANIC;
  int slot = -1;
  for (int i = 0; !rc && i < MAX_SNAPSHOTS && slot < 0; i++)
    if (!s->snaps[i])
      slot = i;
  if (!rc && slot < 0)
    rc = LOOM_EINVAL;
  if (!rc) {
    snap->pos = s->image_pos;
    snap->lineage = s->image_lineage;
    /* The tree as of this position; one that cannot be copied leaves the
     * snapshot without a tree (loom_snapshot_tree says so), not failed. */
    (void)store_tree_copy(&snap->tree, &s->tree);
    snap->preserved = calloc((size_t)(snap->pos.pages + 63) / 64 + 1, sizeof(uint64_t));
    if (!snap->preserved)
      rc = ENOMEM;
    else
      s->snaps[slot] = snap;
  }
  pthread_mutex_unlock(&s->snap_lock);
  if (rc) {
    if (snap->side_fd >= 0)
      close(snap->side_fd);
    free(snap->preserved);
    store_tree_free(&snap->tree);
    free(snap);
    return rc;
  }
  *out = snap;
  return 0;
}

void loom_snapshot_position(const loom_snapshot *snap, loom_position *out)
{
  *out = snap->pos;
}

void loom_snapshot_lineage(const loom_snapshot *snap, loom_lineage *out)
{
  *out = snap->lineage;
}

int loom_snapshot_read(loom_snapshot *snap, uint64_t off, void *buf, size_t len)
{
  if (!snap || (!buf && len) || off > snap->pos.pages * PS ||
      len > snap->pos.pages * PS - off)
    return LOOM_EINVAL;
  loom_store *s = snap->store;
  uint8_t *out = buf;
  int rc = 0;
  pthread_mutex_lock(&s->snap_lock);
  rc = snap->error;
  while (!rc && len > 0) {
    uint64_t n = off / PS;
    size_t k = (size_t)(PS - off % PS);
    if (k > len)
      k = len;
    int side = (snap->preserved[n / 64] >> (n % 64)) & 1;
    ssize_t got = pread(side ? snap->side_fd : s->image_fd, out, k, (off_t)off);
    if (got != (ssize_t)k)
      rc = got < 0 ? errno : LOOM_ECORRUPT;
    off += k;
    out += k;
    len -= k;
  }
  pthread_mutex_unlock(&s->snap_lock);
  return rc;
}

void loom_snapshot_close(loom_snapshot *snap)
{
  if (!snap)
    return;
  loom_store *s = snap->store;
  pthread_mutex_lock(&s->snap_lock);
  for (int i = 0; i < MAX_SNAPSHOTS; i++)
    if (s->snaps[i] == snap)
      s->snaps[i] = NULL;
  pthread_mutex_unlock(&s->snap_lock);
  close(snap->side_fd);
  free(snap->preserved);
  store_tree_free(&snap->tree);
  free(snap);
}

int loom_snapshot_tree(const loom_snapshot *snap, unsigned level,
                       uint64_t first, uint64_t count, uint64_t *out)
{
  if (!snap || (!out && count))
    return LOOM_EINVAL;
  if (snap->tree.error)
    return snap->tree.error;
  uint64_t nodes = loom_tree_nodes(snap->tree.pages, level);
  if (level >= LOOM_TREE_LEVELS || first > nodes || count > nodes - first)
    return LOOM_EINVAL;
  if (count)
    memcpy(out, snap->tree.level[level] + first, (size_t)count * sizeof *out);
  return 0;
}
