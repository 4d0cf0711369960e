/*
 * backup.c: GET /v1/backup, the image stream at one position.
 *
 * The body is the image stream of loom.h: a LOOM_STREAM_HEADER-byte header
 * (loom_stream_header_encode) and then the pages, read from a loom_snapshot
 * as libmicrohttpd asks for them (a callback response), never the whole
 * image in memory. Applying goes on meanwhile: the snapshot keeps the old
 * version of each page it still needs.
 *
 * A store has at most one snapshot open, so every download in progress
 * shares one (backup_share, counted); the last response to finish
 * closes it, and the next download opens a new one at the then current
 * position. The ETag names the position ("epoch-seq-checksum"), so a
 * resumed download (Range with If-Range) continues only while the same
 * snapshot is open or the image has not moved; otherwise the whole stream
 * is sent again from the start (200), never spliced across positions.
 *
 * Tagged (a client with a frame key asks, REPLICATE_WANT_TAG_HEADER, and
 * this node has one): the whole stream, never a range, then its
 * HMAC-SHA256 (REPLICATE_TAG_BACKUP) as a 32-byte trailer, made as the
 * bytes go out (libmicrohttpd reads a callback response in order); the
 * header says "KEYID trailer" and Content-Length counts the trailer.
 *
 * The backups are an object of their own (http_backups, backup.h): the
 * share, the figures and the lock that guards them live here, and the
 * snapshots come from a source the server names at creation (the standby,
 * or the primary's callbacks); this file knows nothing of the server.
 */
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backup.h"
#include "util.h"

/* The snapshot every backup response in progress reads from: one per store
 * (loom.h), shared, closed with its last response. */
typedef struct backup_share {
  loom_snapshot *snap;
  loom_position position;
  char etag[HTTP_ETAG_MAX];
  uint8_t header[LOOM_STREAM_HEADER];
  unsigned refs;                /* mu */
} backup_share;

struct http_backups {
  http_backup_source source;
  pthread_mutex_t mu;           /* the fields below; held around opening a
                                   snapshot */
  backup_share *share;
  unsigned in_progress;
  uint64_t started;
  uint64_t bytes_sent;
};

typedef struct backup_stream {
  http_backups *backups;
  backup_share *share;
  uint64_t start;               /* stream offset of the body's first byte */
  uint64_t len;                 /* body length (tagged: with the trailer) */
  replicate_tag_stream *tag;    /* tagged: the stream's tag, being made */
  uint8_t trailer[REPLICATE_TAG_SIZE];
} backup_stream;

int http_backups_create(const http_backup_source *source, http_backups **out)
{
  http_backups *b = calloc(1, sizeof *b);
  if (!b)
    return ENOMEM;
  b->source = *source;
  pthread_mutex_init(&b->mu, NULL);
  *out = b;
  return 0;
}

void http_backups_free(http_backups *b)
{
  if (!b)
    return;
  pthread_mutex_destroy(&b->mu);
  free(b);
}

static int snapshot_open(http_backups *b, loom_snapshot **out)
{
  if (!b->source.open)
    return ENOTSUP;
  return b->source.open(b->source.ctx, out);
}

/* The open snapshot, or a new one. NULL with *rc set on failure. */
static backup_share *share_acquire(http_backups *b, int *rc)
{
  pthread_mutex_lock(&b->mu);
  backup_share *share = b->share;
  if (share) {
    share->refs++;
    pthread_mutex_unlock(&b->mu);
    return share;
  }
  share = calloc(1, sizeof *share);
  if (!share) {
    pthread_mutex_unlock(&b->mu);
    *rc = ENOMEM;
    return NULL;
  }
  *rc = snapshot_open(b, &share->snap);
  if (*rc) {
    pthread_mutex_unlock(&b->mu);
    free(share);
    return NULL;
  }
  loom_snapshot_position(share->snap, &share->position);
  loom_lineage lineage;
  loom_snapshot_lineage(share->snap, &lineage);
  loom_stream_header_encode(share->header, &share->position, &lineage);
  http_etag_format(&share->position, share->etag);
  share->refs = 1;
  b->share = share;
  pthread_mutex_unlock(&b->mu);
  return share;
}

static void share_release(http_backups *b, backup_share *share)
{
  pthread_mutex_lock(&b->mu);
  bool last = --share->refs == 0;
  if (last)
    b->share = NULL;
  pthread_mutex_unlock(&b->mu);
  if (last) {
    b->source.close(b->source.ctx, share->snap);
    free(share);
  }
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
  backup_stream *st = cls;
  if (pos >= st->len)
    return MHD_CONTENT_READER_END_OF_STREAM;
  size_t n = st->len - pos < max ? (size_t)(st->len - pos) : max;
  uint64_t off = st->start + pos;
  size_t done = 0;
  if (off < LOOM_STREAM_HEADER) {
    size_t h = LOOM_STREAM_HEADER - (size_t)off;
    if (h > n)
      h = n;
    memcpy(buf, st->share->header + off, h);
    done = h;
  }
  if (done < n) {
    int rc = loom_snapshot_read(st->share->snap,
                                off + done - LOOM_STREAM_HEADER, buf + done,
                                n - done);
    if (rc)
      return MHD_CONTENT_READER_END_WITH_ERROR;
  }
  pthread_mutex_lock(&st->backups->mu);
  st->backups->bytes_sent += n;
  pthread_mutex_unlock(&st->backups->mu);
  return (ssize_t)n;
}

/* Tagged: the stream's bytes fed to the tag as they go out, then the
 * trailer. */
static ssize_t stream_read_tagged(void *cls, uint64_t pos, char *buf, size_t max)
{
  backup_stream *st = cls;
  const uint64_t body = st->len - REPLICATE_TAG_SIZE;
  if (pos >= st->len)
    return MHD_CONTENT_READER_END_OF_STREAM;
  if (pos >= body) {
    if (pos == body && replicate_tag_stream_end(st->tag, st->trailer) != 0)
      return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t n = (size_t)(st->len - pos) < max ? (size_t)(st->len - pos) : max;
    memcpy(buf, st->trailer + (pos - body), n);
    return (ssize_t)n;
  }
  size_t room = body - pos < max ? (size_t)(body - pos) : max;
  ssize_t n = stream_read(cls, pos, buf, room);
  if (n > 0 && replicate_tag_stream_update(st->tag, buf, (size_t)n) != 0)
    return MHD_CONTENT_READER_END_WITH_ERROR;
  return n;
}

static void stream_free(void *cls)
{
  backup_stream *st = cls;
  replicate_tag_stream_free(st->tag);
  http_backups *b = st->backups;
  share_release(b, st->share);
  pthread_mutex_lock(&b->mu);
  b->in_progress--;
  pthread_mutex_unlock(&b->mu);
  free(st);
}

/* 503: no snapshot to read from. */
static unsigned refuse_unavailable(int rc, http_reply *reply)
{
  http_reply_error(reply, 503, rc == EBUSY ? "base image in progress"
                                           : "backup unavailable");
  http_json_key(&reply->body, "code");
  http_json_string(&reply->body, http_error_name(rc));
  http_json_key(&reply->body, "detail");
  http_json_string(&reply->body, http_strerror(rc));
  reply->retry_after = 1;
  return reply->status;
}

/* 416: the range lies past the stream's end. */
static unsigned refuse_range(const backup_share *share, uint64_t total,
                             http_reply *reply)
{
  char content_range[80];
  http_reply_error(reply, 416, "range not satisfiable");
  http_json_key(&reply->body, "size");
  http_json_uint(&reply->body, total);
  snprintf(content_range, sizeof content_range, "bytes */%" PRIu64, total);
  http_reply_header(reply, MHD_HTTP_HEADER_CONTENT_RANGE, content_range);
  http_reply_header(reply, MHD_HTTP_HEADER_ETAG, share->etag);
  return reply->status;
}

/* The response streaming bytes [first, last] of share's stream: 200 for
 * the whole of it, 206 for a range. NULL when out of memory (the share is
 * released then). */
static struct MHD_Response *stream_response(http_backups *b,
                                            backup_share *share,
                                            uint64_t first, uint64_t last,
                                            bool partial,
                                            replicate_tag_stream *tag)
{
  backup_stream *st = calloc(1, sizeof *st);
  if (!st) {
    replicate_tag_stream_free(tag);
    share_release(b, share);
    return NULL;
  }
  *st = (backup_stream){b, share, first, last - first + 1, tag, {0}};
  if (tag)
    st->len += REPLICATE_TAG_SIZE;
  pthread_mutex_lock(&b->mu);
  b->in_progress++;
  b->started++;
  pthread_mutex_unlock(&b->mu);
  struct MHD_Response *resp = MHD_create_response_from_callback(
      st->len, 64 * 1024, tag ? stream_read_tagged : stream_read, st, stream_free);
  if (!resp) {
    stream_free(st);
    return NULL;
  }
  char pos_header[96];
  snprintf(pos_header, sizeof pos_header,
           "epoch=%" PRIu64 " seq=%" PRIu64 " checksum=%016" PRIx64
           " pages=%" PRIu64,
           share->position.epoch, share->position.seq,
           share->position.checksum, share->position.pages);
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                          "application/octet-stream");
  MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, share->etag);
  MHD_add_response_header(resp, MHD_HTTP_HEADER_ACCEPT_RANGES, "bytes");
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
  MHD_add_response_header(resp, "X-Loomship-Position", pos_header);
  if (partial) {
    const uint64_t total = LOOM_STREAM_HEADER +
                           share->position.pages * (uint64_t)LOOM_PAGE_SIZE;
    char content_range[80];
    snprintf(content_range, sizeof content_range,
             "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, first, last, total);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_RANGE, content_range);
  }
  return resp;
}

unsigned http_backups_respond(http_backups *b, const char *range,
                              const char *if_range, http_reply *reply,
                              struct MHD_Response **resp)
{
  *resp = NULL;
  int rc = 0;
  backup_share *share = share_acquire(b, &rc);
  if (!share)
    return refuse_unavailable(rc, reply);

  const uint64_t total =
      LOOM_STREAM_HEADER + share->position.pages * (uint64_t)LOOM_PAGE_SIZE;
  uint64_t first = 0, last = total - 1;
  http_range_result rr = HTTP_RANGE_NONE;
  /* If-Range names what the client holds: another position (or a date,
   * which we never gave) means the whole stream again. */
  if (range && (!if_range || strcmp(if_range, share->etag) == 0))
    rr = http_range_parse(range, total, &first, &last);
  if (rr == HTTP_RANGE_UNSATISFIABLE) {
    unsigned status = refuse_range(share, total, reply);
    share_release(b, share);
    return status;
  }
  if (rr == HTTP_RANGE_NONE) {
    first = 0;
    last = total - 1;
  }
  *resp = stream_response(b, share, first, last, rr == HTTP_RANGE_SINGLE, NULL);
  if (!*resp)
    return 0;
  return rr == HTTP_RANGE_SINGLE ? 206 : 200;
}

unsigned http_backups_respond_tagged(http_backups *b, const replicate_frame_key *key,
                                     http_reply *reply, struct MHD_Response **resp)
{
  *resp = NULL;
  /* The header names the key the tag is begun under: a reload between the
   * two leaves it a previous key (still good) or fails the begin. */
  const char *id = replicate_frame_key_id(key, 0);
  char value[REPLICATE_TAG_TEXT];
  snprintf(value, sizeof value, "%s trailer", id ? id : "");
  replicate_tag_stream *tag = NULL;
  int rc = replicate_tag_stream_begin(key, REPLICATE_TAG_BACKUP, id, &tag);
  if (rc)
    return 0;
  backup_share *share = share_acquire(b, &rc);
  if (!share) {
    replicate_tag_stream_free(tag);
    return refuse_unavailable(rc, reply);
  }
  const uint64_t total =
      LOOM_STREAM_HEADER + share->position.pages * (uint64_t)LOOM_PAGE_SIZE;
  *resp = stream_response(b, share, 0, total - 1, false, tag);
  if (!*resp)
    return 0;
  MHD_add_response_header(*resp, REPLICATE_TAG_HEADER, value);
  return 200;
}

void http_backups_figures(http_backups *b, http_backup_figures *out)
{
  memset(out, 0, sizeof *out);
  pthread_mutex_lock(&b->mu);
  out->in_progress = b->in_progress;
  out->started = b->started;
  out->bytes_sent = b->bytes_sent;
  if (b->share) {
    out->open = true;
    out->position = b->share->position;
  }
  pthread_mutex_unlock(&b->mu);
}
