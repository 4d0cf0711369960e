/*
 * import.c: a new image directory made from an image stream
 * (loom_store_create_from_stream): what a restore from an archive, or any
 * caller holding a whole image, writes instead of a base-image patch.
 *
 * A base-image patch (LOOM_PATCH_BASE) writes every page twice (into the
 * commit log, then into the image, each fsynced) and keeps the directory a
 * valid store all along, which a store in use needs. A directory being
 * made needs neither, so the stream's pages go straight into the image
 * file, as a backup's do (tools.c), each hashed once:
 *
 *   C1. dir: made (0700) or found empty; its lock taken.
 *   C2. image, hashes and log made (empty); the image's blocks reserved
 *       (loom_io.reserve: ENOSPC now, and one extent).
 *   C3. The pages, in chunks of 8 MiB: each chunk filled by the caller
 *       (loom_store_create_from_pages: straight into an aligned buffer,
 *       hashed by the caller) or copied from next() and hashed
 *       (loom_store_create_from_stream, whose header is read first), and
 *       written where it belongs in the image by the importer's writer
 *       thread while the next chunk is filled into the other buffer.
 *   C4. The hashes' sum must be the header's checksum (else LOOM_ECORRUPT:
 *       the stream is damaged, and no meta is written).
 *   C5. fsync the image; the hashes written and fsynced; fsync dir (the
 *       entries of image, hashes and log).
 *   C6. The meta last (one slot: the position, the lineage, an empty log),
 *       fsynced, then dir and its parent: from here on dir opens at the
 *       stream's position.
 *
 * Before C6's meta is durable, dir holds no meta (a C6 that fails removes
 * the one it made): loom_store_open refuses
 * it (LOOM_ENOIMAGE; with LOOM_CREATE, LOOM_EMETA once the image holds
 * pages), loom_verify and loom_inspect too, so a crash never leaves a
 * store at a position the stream did not carry. (An image of no pages is
 * the exception: a crash before C6 leaves a directory that LOOM_CREATE
 * makes an empty store, at seq 0.)
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loom.h"
#include "loom_io.h"
#include "store_internal.h"

/* Pages per chunk filled and written with one pwrite: 8 MiB. */
#define IMPORT_CHUNK_PAGES LOOM_IMPORT_CHUNK_PAGES
/* O_DIRECT's alignment of the buffer (file offsets are page multiples). */
#define IMPORT_ALIGN 4096u

/* C1: 0 when dir is absent (then made) or empty, else LOOM_EINVAL. */
static int import_dir(loom_store *s, const char *dir)
{
  const loom_io *io = s->io;
  int rc = -io->mkdir(io->ctx, AT_FDCWD, dir, 0700);
  if (rc == EEXIST) {
    DIR *d = opendir(dir);
    if (!d)
      return errno;
    rc = 0;
    for (struct dirent *e; !rc && (e = readdir(d)) != NULL;)
      if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
        rc = LOOM_EINVAL;
    closedir(d);
  }
  if (!rc) {
    s->dirfd = io->open(io->ctx, AT_FDCWD, dir, O_RDONLY | O_DIRECTORY, 0);
    rc = s->dirfd < 0 ? -s->dirfd : 0;
  }
  if (!rc) {
    s->lockfd = io->open(io->ctx, s->dirfd, "lock", O_RDWR | O_CREAT, 0600);
    rc = s->lockfd < 0 ? -s->lockfd : 0;
  }
  if (!rc && flock(s->lockfd, LOCK_EX | LOCK_NB) < 0)
    rc = errno == EWOULDBLOCK ? LOOM_ELOCKED : errno;
  return rc;
}

static int import_file(loom_store *s, const char *name, int *fd)
{
  *fd =
      s->io->open(s->io->ctx, s->dirfd, name, O_RDWR | O_CREAT | O_TRUNC, 0600);
  return *fd < 0 ? -*fd : 0;
}

/* The store being made, and how its image is written: chunks are filled
 * (by the caller: decompressed, rebuilt, hashed) into one aligned buffer
 * while the writer thread writes the other, so the disk's time overlaps
 * the caller's (C3). */
typedef struct importer {
  loom_store *s;
  int direct;         /* the image is open with O_DIRECT */
  uint8_t *bufs[2];   /* one chunk each, aligned for O_DIRECT */
  pthread_t thread;   /* the writer */
  bool threaded;      /* the writer runs (else chunks are written inline) */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  const uint8_t *job; /* the chunk handed to the writer, NULL: none */
  uint64_t job_k, job_n;
  bool quit;
  int rc;             /* the writer's first error */
} importer;

/* C2: the image, written around the page cache (O_DIRECT) where the file
 * system allows: the pages are written once and not read back, and a
 * buffered write of a large image costs more in copies into the page cache
 * and their writeback at the fsync than the disk's own time (measured:
 * docs/BENCHMARKS.md section 13). Elsewhere (EINVAL: tmpfs, some network
 * file systems), a plain file. */
static int import_image(importer *im)
{
  loom_store *s = im->s;
  int fd = s->io->open(s->io->ctx, s->dirfd, "image",
                       O_RDWR | O_CREAT | O_TRUNC | O_DIRECT, 0600);
  if (fd == -EINVAL)
    fd = s->io->open(s->io->ctx, s->dirfd, "image", O_RDWR | O_CREAT | O_TRUNC,
                     0600);
  s->image_fd = fd;
  if (fd < 0)
    return -fd;
  int flags = fcntl(fd, F_GETFL); /* a test's loom_io may drop the flag */
  im->direct = flags >= 0 && (flags & O_DIRECT);
  for (int i = 0; i < 2; i++) {
    void *b = NULL;
    if (posix_memalign(&b, IMPORT_ALIGN, IMPORT_CHUNK_PAGES * PS))
      return ENOMEM;
    im->bufs[i] = b;
  }
  return 0;
}

/* k pages from data (aligned) into the image at page n. */
static int import_write(importer *im, const uint8_t *data, uint64_t k,
                        uint64_t n)
{
  int fd = im->s->image_fd;
  int rc =
      store_write_exact(im->s, fd, data, (size_t)(k * PS), (off_t)(n * PS));
  if (rc == EINVAL && im->direct) {
    /* A file system that took O_DIRECT at open but not this write (its
     * alignment is larger): buffered from here on. */
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_DIRECT) < 0)
      return errno;
    im->direct = 0;
    rc = store_write_exact(im->s, fd, data, (size_t)(k * PS), (off_t)(n * PS));
  }
  return rc;
}

/* The writer thread: one chunk at a time, in the order handed over (the
 * I/O sequence is the same as written inline: the crash tests count it). */
static void *import_writer(void *arg)
{
  importer *im = arg;
  pthread_mutex_lock(&im->mu);
  for (;;) {
    while (!im->job && !im->quit)
      pthread_cond_wait(&im->cv, &im->mu);
    if (!im->job)
      break;
    const uint8_t *data = im->job;
    uint64_t k = im->job_k, n = im->job_n;
    int failed = im->rc;
    pthread_mutex_unlock(&im->mu);
    int rc = failed ? failed : import_write(im, data, k, n);
    pthread_mutex_lock(&im->mu);
    if (!im->rc)
      im->rc = rc;
    im->job = NULL;
    pthread_cond_broadcast(&im->cv);
  }
  pthread_mutex_unlock(&im->mu);
  return NULL;
}

/* Waits until the writer holds no chunk: its first error, or 0. */
static int import_wait(importer *im)
{
  if (!im->threaded)
    return im->rc;
  pthread_mutex_lock(&im->mu);
  while (im->job)
    pthread_cond_wait(&im->cv, &im->mu);
  int rc = im->rc;
  pthread_mutex_unlock(&im->mu);
  return rc;
}

/* Hands a filled chunk to the writer (or writes it here). */
static int import_submit(importer *im, const uint8_t *data, uint64_t k,
                         uint64_t n)
{
  if (!im->threaded)
    return im->rc = import_write(im, data, k, n);
  int rc = import_wait(im);
  if (rc)
    return rc;
  pthread_mutex_lock(&im->mu);
  im->job = data;
  im->job_k = k;
  im->job_n = n;
  pthread_cond_broadcast(&im->cv);
  pthread_mutex_unlock(&im->mu);
  return 0;
}

static void import_start_writer(importer *im)
{
  if (pthread_mutex_init(&im->mu, NULL))
    return;
  if (pthread_cond_init(&im->cv, NULL)) {
    pthread_mutex_destroy(&im->mu);
    return;
  }
  im->threaded = !pthread_create(&im->thread, NULL, import_writer, im);
  if (!im->threaded) {
    pthread_cond_destroy(&im->cv);
    pthread_mutex_destroy(&im->mu);
  }
}

static void import_stop_writer(importer *im)
{
  if (!im->threaded)
    return;
  pthread_mutex_lock(&im->mu);
  im->quit = true;
  pthread_cond_broadcast(&im->cv);
  pthread_mutex_unlock(&im->mu);
  pthread_join(im->thread, NULL);
  pthread_cond_destroy(&im->cv);
  pthread_mutex_destroy(&im->mu);
  im->threaded = false;
}

/* C3: the pages, filled chunk by chunk into the buffer the writer is not
 * writing, hashed by fill, written; *sum their hashes' sum. */
static int import_pages(importer *im, loom_page_fill_fn fill, void *ctx,
                        uint64_t *sum)
{
  loom_store *s = im->s;
  uint64_t pages = s->pos.pages;
  *sum = 0;
  import_start_writer(im);
  int rc = 0;
  for (uint64_t n = 0, c = 0; !rc && n < pages; n += IMPORT_CHUNK_PAGES, c++) {
    uint64_t k =
        pages - n < IMPORT_CHUNK_PAGES ? pages - n : IMPORT_CHUNK_PAGES;
    uint8_t *buf = im->bufs[c % 2]; /* the writer holds the other, if any */
    rc = fill(ctx, n, k, buf, s->hashes + n);
    for (uint64_t i = 0; !rc && i < k; i++)
      *sum += s->hashes[n + i];
    if (!rc)
      rc = import_submit(im, buf, k, n);
  }
  int wrc = import_wait(im);
  import_stop_writer(im);
  return rc ? rc : wrc;
}

/* C5, C6: everything durable, the meta last. */
static int import_finish(loom_store *s, const char *dir)
{
  int rc = store_fsync(s, s->image_fd);
  for (uint64_t b = 0; !rc && b * HASHES_PER_BLOCK < s->pos.pages; b++)
    rc = store_hashes_write_block(s, b, s->pos.pages);
  if (!rc)
    rc = store_fsync(s, s->hashes_fd);
  if (!rc)
    rc = store_fsync(s, s->log_fd);
  if (!rc)
    rc = store_fsync(s, s->dirfd);
  if (!rc)
    rc = import_file(s, "meta", &s->meta_fd);
  bool meta_made = !rc;
  if (!rc) {
    uint8_t slot[META_SLOT_SIZE];
    store_meta_encode(slot, 1, &s->pos, &s->lineage);
    rc = store_write_exact(s, s->meta_fd, slot, sizeof slot, META_SLOT_SIZE);
  }
  if (!rc)
    rc = store_fsync(s, s->meta_fd);
  if (!rc)
    rc = store_fsync(s, s->dirfd);
  if (!rc)
    rc = store_sync_parent(s, dir);
  if (rc && meta_made) {
    /* A failed C6 leaves no meta, as a failure before it does: not an
     * empty or unsynced one that an open would take for a damaged store
     * (LOOM_EMETA). Best effort: the caller has the first error. */
    s->io->unlink(s->io->ctx, s->dirfd, "meta", 0);
    s->io->fsync(s->io->ctx, s->dirfd);
  }
  return rc;
}

/* C3's start: the hash table sized by the header's pages. With a
 * reserve in the I/O, the image's blocks too (ENOSPC now, before any
 * page). */
static int import_header(loom_store *s)
{
  int rc = store_hashes_reserve(s, s->pos.pages ? s->pos.pages : 1);
  if (!rc && s->io->reserve && s->pos.pages) {
    int r =
        -s->io->reserve(s->io->ctx, s->image_fd, 0, (off_t)(s->pos.pages * PS));
    rc = r == EOPNOTSUPP ? 0 : r;
  }
  return rc;
}

int loom_store_create_from_pages(const char *dir, const struct loom_io *io,
                                 const loom_position *pos,
                                 const loom_lineage *lineage,
                                 loom_page_fill_fn fill, void *ctx)
{
  if (!dir || !fill || !pos || !lineage)
    return LOOM_EINVAL;
  importer im = {0};
  int rc = store_alloc(io, &im.s);
  if (rc)
    return rc;
  loom_store *s = im.s;
  s->pos = *pos;
  s->lineage = *lineage;
  rc = import_dir(s, dir); /* C1 */
  if (!rc)
    rc = import_image(&im); /* C2 */
  if (!rc)
    rc = import_file(s, "hashes", &s->hashes_fd);
  if (!rc)
    rc = import_file(s, "log", &s->log_fd);
  if (!rc)
    rc = import_header(s); /* C3 */
  uint64_t sum = 0;
  if (!rc)
    rc = import_pages(&im, fill, ctx, &sum);
  if (!rc && sum != s->pos.checksum) /* C4 */
    rc = LOOM_ECORRUPT;
  if (!rc)
    rc = import_finish(s, dir);
  free(im.bufs[0]);
  free(im.bufs[1]);
  store_free(s);
  return rc;
}

/* loom_store_create_from_stream's source: next()'s bytes copied into the
 * importer's chunk, hashed here unless the caller gave the hashes. */
typedef struct stream_source {
  loom_stream_next_fn next;
  void *ctx;
  const uint64_t *given;
} stream_source;

static int stream_fill(void *ctx, uint64_t first, uint64_t k, uint8_t *buf,
                       uint64_t *hashes)
{
  stream_source *src = ctx;
  const uint8_t *data = NULL;
  int rc = src->next(src->ctx, (size_t)(k * PS), (const void **)&data);
  if (!rc && !data)
    rc = LOOM_EINVAL;
  if (rc)
    return rc;
  memcpy(buf, data, (size_t)(k * PS));
  for (uint64_t i = 0; i < k; i++)
    hashes[i] = src->given ? src->given[first + i]
                           : loom_page_hash(first + i, buf + i * PS);
  return 0;
}

int loom_store_create_from_stream(const char *dir, const struct loom_io *io,
                                  loom_stream_next_fn next, void *ctx,
                                  const uint64_t *hashes, loom_position *out)
{
  if (!dir || !next)
    return LOOM_EINVAL;
  const uint8_t *header = NULL;
  loom_position pos;
  loom_lineage lineage;
  int rc = next(ctx, LOOM_STREAM_HEADER, (const void **)&header);
  if (!rc && !header)
    rc = LOOM_EINVAL;
  if (!rc)
    rc = loom_stream_header_decode(header, &pos, &lineage);
  stream_source src = {.next = next, .ctx = ctx, .given = hashes};
  if (!rc)
    rc = loom_store_create_from_pages(dir, io, &pos, &lineage, stream_fill,
                                      &src);
  if (!rc && out)
    *out = pos;
  return rc;
}
