/*
 * stream.c: the image stream's reader (replicate.h, "Reading an image
 * stream"): the header, then one page at a time, from pieces of any size.
 * The receiver's PUT /v1/base (receiver_base.c) and `loomship backup`
 * (cli/cmd_remote.c) both read the stream through it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "replicate.h"

int replicate_stream_reader_init(replicate_stream_reader *r)
{
  memset(r, 0, sizeof *r);
  r->page = malloc(LOOM_PAGE_SIZE);
  return r->page ? 0 : ENOMEM;
}

void replicate_stream_reader_reset(replicate_stream_reader *r)
{
  r->header_have = 0;
  r->header_rc = 0;
  r->page_have = 0;
  r->pages = 0;
  memset(&r->position, 0, sizeof r->position);
  memset(&r->lineage, 0, sizeof r->lineage);
}

void replicate_stream_reader_free(replicate_stream_reader *r)
{
  free(r->page);
  r->page = NULL;
}

/* Copy up to want - *have bytes from the input into buf. */
static void take_into(uint8_t *buf, size_t *have, size_t want,
                      const uint8_t **data, size_t *len)
{
  size_t n = want - *have;
  if (n > *len)
    n = *len;
  memcpy(buf + *have, *data, n);
  *have += n;
  *data += n;
  *len -= n;
}

replicate_stream_event replicate_stream_reader_take(replicate_stream_reader *r,
                                                    const uint8_t **data,
                                                    size_t *len)
{
  if (r->header_have == LOOM_STREAM_HEADER && r->header_rc)
    return REPLICATE_STREAM_BAD_HEADER;
  if (r->header_have < LOOM_STREAM_HEADER) {
    take_into(r->header, &r->header_have, LOOM_STREAM_HEADER, data, len);
    if (r->header_have < LOOM_STREAM_HEADER)
      return REPLICATE_STREAM_MORE;
    r->header_rc =
        loom_stream_header_decode(r->header, &r->position, &r->lineage);
    return r->header_rc ? REPLICATE_STREAM_BAD_HEADER
                        : REPLICATE_STREAM_HEADER;
  }
  if (*len == 0)
    return REPLICATE_STREAM_MORE;
  if (r->pages == r->position.pages)
    return REPLICATE_STREAM_TRAILING;
  take_into(r->page, &r->page_have, LOOM_PAGE_SIZE, data, len);
  if (r->page_have < LOOM_PAGE_SIZE)
    return REPLICATE_STREAM_MORE;
  r->page_have = 0;
  r->pages++;
  return REPLICATE_STREAM_PAGE;
}

bool replicate_stream_reader_complete(const replicate_stream_reader *r)
{
  return r->header_have == LOOM_STREAM_HEADER && r->header_rc == 0 &&
         r->pages == r->position.pages && r->page_have == 0;
}

uint64_t replicate_stream_length(const loom_position *pos)
{
  return LOOM_STREAM_HEADER + pos->pages * (uint64_t)LOOM_PAGE_SIZE;
}
