/*
 * tools.c: what reads or copies a store directory as a whole: the backup
 * (loom_store_backup, a live store's committed position copied and fsynced
 * into a new directory renamed into place), the read-only inspection
 * (loom_inspect: the position recovery would open, nothing applied), the
 * verification (loom_verify: every page re-hashed against the position),
 * and the image stream header (loom_stream_header_*, the first
 * LOOM_STREAM_HEADER bytes of a backup or base image on the wire; the byte
 * table is in docs/FORMAT.md).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "loom.h"
#include "loom_io.h"
#include "store_internal.h"
#include "bytes.h"

/* Copy len bytes of fd_in to fd_out through the staging buffer. */
static int copy_bytes(loom_store *s, int fd_in, int fd_out, uint64_t len)
{
  int rc = 0;
  for (uint64_t off = 0; !rc && off < len; off += STAGING_PAGES * PS) {
    size_t k = (size_t)(len - off < STAGING_PAGES * PS ? len - off : STAGING_PAGES * PS);
    rc = store_read_exact(s, fd_in, s->staging, k, (off_t)off);
    if (!rc)
      rc = store_write_exact(s, fd_out, s->staging, k, (off_t)off);
  }
  return rc;
}

int loom_store_backup(loom_store *s, const char *dest)
{
  if (!s || !dest || s->writer)
    return LOOM_EINVAL;
  int rc = store_apply_wait(s);
  if (rc)
    return rc;
  size_t len = strlen(dest);
  char *tmp = malloc(len + 16);
  if (!tmp)
    return ENOMEM;
  snprintf(tmp, len + 16, "%s.tmp%d", dest, (int)getpid());
  const loom_io *io = s->io;
  int tdir = -1, fd = -1, parent = -1;
  rc = -io->mkdir(io->ctx, AT_FDCWD, tmp, 0700);
  if (!rc) {
    tdir = io->open(io->ctx, AT_FDCWD, tmp, O_RDONLY | O_DIRECTORY, 0);
    rc = tdir < 0 ? -tdir : 0;
  }
  /* image, hashes, meta, patch: each written and fsynced. */
  if (!rc && (fd = io->open(io->ctx, tdir, "image", O_RDWR | O_CREAT | O_TRUNC, 0600)) < 0)
    rc = -fd;
  if (!rc)
    rc = copy_bytes(s, s->image_fd, fd, s->pos.pages * PS);
  if (!rc)
    rc = store_fsync(s, fd);
  if (fd >= 0)
    store_close_fd(s, &fd);
  if (!rc && (fd = io->open(io->ctx, tdir, "hashes", O_RDWR | O_CREAT | O_TRUNC, 0600)) < 0)
    rc = -fd;
  if (!rc) {
    int wfd = s->hashes_fd;
    s->hashes_fd = fd;
    for (uint64_t b = 0; !rc && b * HASHES_PER_BLOCK < s->pos.pages; b++)
      rc = store_hashes_write_block(s, b, s->pos.pages);
    s->hashes_fd = wfd;
  }
  if (!rc)
    rc = store_fsync(s, fd);
  if (fd >= 0)
    store_close_fd(s, &fd);
  if (!rc && (fd = io->open(io->ctx, tdir, "meta", O_RDWR | O_CREAT | O_TRUNC, 0600)) < 0)
    rc = -fd;
  if (!rc) {
    uint8_t slot[META_SLOT_SIZE];
    store_meta_encode(slot, 1, &s->pos, &s->lineage);
    rc = store_write_exact(s, fd, slot, sizeof slot, META_SLOT_SIZE);
  }
  if (!rc)
    rc = store_fsync(s, fd);
  if (fd >= 0)
    store_close_fd(s, &fd);
  if (!rc && (fd = io->open(io->ctx, tdir, "log", O_RDWR | O_CREAT | O_TRUNC, 0600)) < 0)
    rc = -fd;
  if (fd >= 0)
    store_close_fd(s, &fd);
  if (!rc)
    rc = store_fsync(s, tdir);
  if (!rc)
    rc = -io->rename(io->ctx, AT_FDCWD, tmp, AT_FDCWD, dest);
  if (!rc) {
    /* The rename is durable only once the parent directory is. */
    char *slash = strrchr(tmp, '/');
    if (slash)
      *slash = '\0';
    parent = io->open(io->ctx, AT_FDCWD, slash ? (slash == tmp ? "/" : tmp) : ".",
                      O_RDONLY | O_DIRECTORY, 0);
    rc = parent < 0 ? -parent : store_fsync(s, parent);
    if (parent >= 0)
      store_close_fd(s, &parent);
  } else if (tdir >= 0) {
    const char *names[] = {"image", "hashes", "meta", "log"};
    for (int i = 0; i < 4; i++)
      io->unlink(io->ctx, tdir, names[i], 0);
    io->unlink(io->ctx, AT_FDCWD, tmp, AT_REMOVEDIR);
  }
  if (tdir >= 0)
    store_close_fd(s, &tdir);
  free(tmp);
  return rc;
}

/* The position an open would recover to, read-only: the meta's, or the
 * after-position of a committed patch that chains from it and verifies
 * (nothing is applied). */
int loom_inspect(const char *dir, loom_position *out)
{
  return loom_inspect_lineage(dir, out, NULL);
}

int loom_inspect_lineage(const char *dir, loom_position *out,
                         loom_lineage *lineage)
{
  loom_store *s;
  int rc = store_open_flags(dir, LOOM_READONLY, NULL, &s);
  if (rc)
    return rc;
  *out = s->pos;
  if (lineage)
    *lineage = s->lineage;
  rc = store_log_end(s, out);
  store_free(s);
  return rc;
}

/* A store directory that a crash left before its first position was
 * recorded: some of the store's own files, no valid meta, an empty or no
 * image. Opening it with LOOM_CREATE makes the empty store it was becoming. */
static int never_committed(const char *dir)
{
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0)
    return 0;
  const char *ours[] = {"lock", "meta", "image", "hashes", "log", "patch",
                        "positions"};
  int found = 0;
  for (size_t i = 0; i < sizeof ours / sizeof *ours; i++)
    found += faccessat(dfd, ours[i], F_OK, 0) == 0;
  struct stat st;
  int image_empty = fstatat(dfd, "image", &st, 0) != 0 || st.st_size == 0;
  close(dfd);
  return found > 0 && image_empty;
}

int loom_verify(const char *dir, loom_position *recorded, uint64_t *computed)
{
  loom_store *s;
  int rc = store_open_flags(dir, 0, NULL, &s);
  if (rc == LOOM_ENOIMAGE && never_committed(dir)) {
    /* Nothing was ever committed here: an empty image agrees with the
     * empty position. */
    if (recorded)
      *recorded = (loom_position){0};
    if (computed)
      *computed = 0;
    return 0;
  }
  if (rc == LOOM_ECORRUPT) {
    /* Report what is recorded and what the pages say. */
    if (store_open_flags(dir, LOOM_READONLY, NULL, &s) != 0)
      return rc;
    if (recorded)
      *recorded = s->pos;
    uint64_t sum = 0;
    uint64_t size = 0;
    if (!store_file_size(s->image_fd, &size) && !store_hashes_reserve(s, size / PS + 1))
      store_hashes_rebuild(s, size / PS, &sum);
    if (computed)
      *computed = sum;
    store_free(s);
    return LOOM_ECORRUPT;
  }
  if (rc)
    return rc;
  uint64_t sum;
  rc = store_hashes_rebuild(s, s->pos.pages, &sum);
  if (recorded)
    *recorded = s->pos;
  if (computed)
    *computed = sum;
  if (!rc && sum != s->pos.checksum)
    rc = LOOM_ECORRUPT;
  int crc = loom_store_close(s);
  return rc ? rc : crc;
}

/* ---------------------------------------------------------------------- */
/* The image stream header. */

#define STREAM_MAGIC "LOOMIMG1"
#define STREAM_VERSION 2u
#define STREAM_LINEAGE_OFFSET 56u
#define STREAM_CHECKSUM_OFFSET (LOOM_STREAM_HEADER - 8u)

void loom_stream_header_encode(uint8_t out[LOOM_STREAM_HEADER],
                               const loom_position *pos,
                               const loom_lineage *lineage)
{
  memset(out, 0, LOOM_STREAM_HEADER);
  memcpy(out, STREAM_MAGIC, 8);
  put_le32(out + 8, STREAM_VERSION);
  put_le32(out + 12, LOOM_PAGE_SIZE);
  store_position_put(out + 16, pos);
  lineage_encode(out + STREAM_LINEAGE_OFFSET, lineage);
  put_le64(out + STREAM_CHECKSUM_OFFSET, XXH3_64bits(out, STREAM_CHECKSUM_OFFSET));
}

int loom_stream_header_decode(const uint8_t in[LOOM_STREAM_HEADER],
                              loom_position *pos, loom_lineage *lineage)
{
  if (memcmp(in, STREAM_MAGIC, 8) != 0)
    return LOOM_ECORRUPT;
  if (get_le32(in + 8) != STREAM_VERSION || get_le32(in + 12) != LOOM_PAGE_SIZE)
    return LOOM_EVERSION;
  if (get_le64(in + STREAM_CHECKSUM_OFFSET) !=
      XXH3_64bits(in, STREAM_CHECKSUM_OFFSET))
    return LOOM_ECORRUPT;
  loom_lineage ignored;
  if (lineage_decode(in + STREAM_LINEAGE_OFFSET, lineage ? lineage : &ignored))
    return LOOM_ECORRUPT;
  store_position_get(in + 16, pos);
  return pos->pages > MAX_PAGES ? LOOM_ECORRUPT : 0;
}
