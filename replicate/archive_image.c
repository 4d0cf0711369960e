/*
 * archive_image.c: a restore's image, whole in memory (archive_internal.h
 * arc_image_*): the base's image stream, every archived frame applied to
 * it in place, then written once into a new directory.
 *
 * A restore needs the image durable at its target only, not at every seq
 * on the way there, so the frames are not committed to a store one batch
 * at a time (each batch written to the commit log, fsynced, then into the
 * image, fsynced, the meta rewritten): they are applied here, where the
 * base already is, and the result goes to disk once
 * (loom_store_create_from_stream). Each page is hashed once per version:
 * the base's pages when taken (their sum checked against the base's
 * checksum), a frame's pages as they are rebuilt (each checked against the
 * hash the frame carries); the hashes are handed to the store, which does
 * not compute them again. A frame must start at the image's position (seq,
 * checksum, pages) and end at the checksum it names: the checks
 * replicate_frame_apply makes against a store.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "archive_internal.h"
#include "array.h"
#include "frame.h"

static uint8_t *page_at(arc_image *img, uint64_t n)
{
  return img->stream.data + LOOM_STREAM_HEADER + n * LOOM_PAGE_SIZE;
}

static int hashes_reserve(arc_image *img, uint64_t pages)
{
  if (pages > SIZE_MAX / sizeof *img->hashes)
    return ENOMEM;
  return loom_array_reserve(&img->hashes, &img->hashes_cap, (size_t)pages,
                            sizeof *img->hashes);
}

int arc_image_take(arc_image *img, replicate_buf *stream)
{
  memset(img, 0, sizeof *img);
  img->stream = *stream;
  *stream = (replicate_buf){0};
  if (img->stream.len < LOOM_STREAM_HEADER ||
      loom_stream_header_decode(img->stream.data, &img->pos, &img->lineage) ||
      img->stream.len !=
          LOOM_STREAM_HEADER + img->pos.pages * (uint64_t)LOOM_PAGE_SIZE)
    return REPLICATE_EARCHIVE_OBJECT;
  int rc = hashes_reserve(img, img->pos.pages);
  uint64_t sum = 0;
  for (uint64_t n = 0; rc == 0 && n < img->pos.pages; n++) {
    img->hashes[n] = loom_page_hash(n, page_at(img, n));
    sum += img->hashes[n];
  }
  if (rc == 0 && sum != img->pos.checksum)
    rc = REPLICATE_EARCHIVE_OBJECT;
  return rc;
}

/* The image's length becomes pages: pages dropped leave the sum, pages
 * grown are zero pages. */
static int resize(arc_image *img, uint64_t pages, uint64_t *sum)
{
  uint64_t old = img->pos.pages;
  for (uint64_t n = pages; n < old; n++)
    *sum -= img->hashes[n];
  if (pages > old) {
    int rc = hashes_reserve(img, pages);
    if (rc == 0)
      rc = frame_buf_reserve(&img->stream,
                             LOOM_STREAM_HEADER + pages * LOOM_PAGE_SIZE);
    if (rc != 0)
      return rc;
    memset(page_at(img, old), 0, (pages - old) * LOOM_PAGE_SIZE);
    for (uint64_t n = old; n < pages; n++) {
      img->hashes[n] = loom_page_hash(n, page_at(img, old));
      *sum += img->hashes[n];
    }
  }
  img->stream.len = LOOM_STREAM_HEADER + pages * LOOM_PAGE_SIZE;
  img->pos.pages = pages;
  return 0;
}

/* Page i of f rebuilt in place over the image's version (a delta XORed
 * into it, a whole page copied) and checked against its hash. A page that
 * fails is left rebuilt wrong: the restore stops there, and the image is
 * never written. */
static int apply_page(arc_image *img, const replicate_frame *f, uint64_t i,
                      uint64_t *sum)
{
  replicate_page p;
  replicate_frame_get_page(f, i, &p);
  if (p.page_number >= img->pos.pages)
    return REPLICATE_EPOSITION;
  uint8_t *dst = page_at(img, p.page_number);
  if (p.encoding == REPLICATE_PAGE_XOR) {
    frame_page_xor_into(dst, p.contents);
  } else {
    memcpy(dst, p.contents, LOOM_PAGE_SIZE);
  }
  uint64_t h = loom_page_hash(p.page_number, dst);
  if (h != p.hash)
    return REPLICATE_EPAGE_HASH;
  *sum += h - img->hashes[p.page_number];
  img->hashes[p.page_number] = h;
  return 0;
}

int arc_image_apply(arc_image *img, const replicate_frame *f)
{
  const replicate_frame_info *info = &f->info;
  if (info->kind != REPLICATE_KIND_COMMIT)
    return REPLICATE_EKIND;
  if (!loom_position_same(&info->before, &img->pos) ||
      info->epoch < img->pos.epoch)
    return REPLICATE_EPOSITION;
  uint64_t sum = img->pos.checksum;
  int rc = resize(img, info->after.pages, &sum);
  for (uint64_t i = 0; rc == 0 && i < info->page_count; i++)
    rc = apply_page(img, f, i, &sum);
  if (rc == 0 && sum != info->after.checksum)
    rc = REPLICATE_EAFTER_CHECKSUM;
  if (rc == 0)
    img->pos = (loom_position){.epoch = info->epoch,
                               .seq = info->after.seq,
                               .checksum = info->after.checksum,
                               .pages = info->after.pages,
                               .commit_time_ns = info->commit_time_ns};
  return rc;
}

/* Hands out the stream buffer in order (loom_stream_next_fn). */
static int next_bytes(void *ctx, size_t len, const void **data)
{
  arc_image *img = ctx;
  if (len > img->stream.len - img->handed)
    return LOOM_ECORRUPT;
  *data = img->stream.data + img->handed;
  img->handed += len;
  return 0;
}

int arc_image_write(arc_image *img, const char *dir, const struct loom_io *io)
{
  loom_stream_header_encode(img->stream.data, &img->pos, &img->lineage);
  img->handed = 0;
  return loom_store_create_from_stream(dir, io, next_bytes, img, img->hashes,
                                       NULL);
}

void arc_image_free(arc_image *img)
{
  replicate_buf_free(&img->stream);
  free(img->hashes);
  memset(img, 0, sizeof *img);
}
