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
 * shares one (http_backup_share, counted); the last response to finish
 * closes it, and the next download opens a new one at the then current
 * position. The ETag names the position ("epoch-seq-checksum"), so a
 * resumed download (Range with If-Range) continues only while the same
 * snapshot is open or the image has not moved; otherwise the whole stream
 * is sent again from the start (200), never spliced across positions.
 */
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct backup_stream {
  http_server *server;
  http_backup_share *share;
  uint64_t start;               /* stream offset of the body's first byte */
  uint64_t len;                 /* body length */
} backup_stream;

static int snapshot_open(http_server *s, loom_snapshot **out)
{
  if (s->standby)
    return http_standby_snapshot_open(s->standby, out);
  if (!s->primary.snapshot_open)
    return ENOTSUP;
  return s->primary.snapshot_open(s->primary.ctx, out);
}

static void snapshot_close(http_server *s, loom_snapshot *snap)
{
  if (s->standby)
    http_standby_snapshot_close(s->standby, snap);
  else
    loom_snapshot_close(snap);
}

/* The open snapshot, or a new one. NULL with *rc set on failure. */
static http_backup_share *share_acquire(http_server *s, int *rc)
{
  pthread_mutex_lock(&s->backup_mu);
  http_backup_share *share = s->share;
  if (share) {
    share->refs++;
    pthread_mutex_unlock(&s->backup_mu);
    return share;
  }
  share = calloc(1, sizeof *share);
  if (!share) {
    pthread_mutex_unlock(&s->backup_mu);
    *rc = ENOMEM;
    return NULL;
  }
  *rc = snapshot_open(s, &share->snap);
  if (*rc) {
    pthread_mutex_unlock(&s->backup_mu);
    free(share);
    return NULL;
  }
  loom_snapshot_position(share->snap, &share->position);
  loom_lineage lineage;
  loom_snapshot_lineage(share->snap, &lineage);
  loom_stream_header_encode(share->header, &share->position, &lineage);
  http_etag_format(&share->position, share->etag);
  share->refs = 1;
  s->share = share;
  pthread_mutex_unlock(&s->backup_mu);
  return share;
}

static void share_release(http_server *s, http_backup_share *share)
{
  pthread_mutex_lock(&s->backup_mu);
  bool last = --share->refs == 0;
  if (last)
    s->share = NULL;
  pthread_mutex_unlock(&s->backup_mu);
  if (last) {
    snapshot_close(s, share->snap);
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
  pthread_mutex_lock(&st->server->backup_mu);
  st->server->backup_bytes += n;
  pthread_mutex_unlock(&st->server->backup_mu);
  return (ssize_t)n;
}

static void stream_free(void *cls)
{
  backup_stream *st = cls;
  http_server *s = st->server;
  share_release(s, st->share);
  pthread_mutex_lock(&s->backup_mu);
  s->backups_in_progress--;
  pthread_mutex_unlock(&s->backup_mu);
  free(st);
}

int http_backup_answer(http_server *s, struct MHD_Connection *conn)
{
  int rc = 0;
  http_backup_share *share = share_acquire(s, &rc);
  if (!share) {
    http_reply reply = {0};
    http_reply_error(&reply, 503, rc == EBUSY ? "base image in progress"
                                              : "backup unavailable");
    json_key(&reply.body, "code");
    json_string(&reply.body, http_error_name(rc));
    json_key(&reply.body, "detail");
    json_string(&reply.body, http_strerror(rc));
    reply.retry_after = 1;
    return http_server_send(s, conn, HTTP_EP_BACKUP, &reply);
  }

  const uint64_t total =
      LOOM_STREAM_HEADER + share->position.pages * (uint64_t)LOOM_PAGE_SIZE;
  const char *range = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                  MHD_HTTP_HEADER_RANGE);
  const char *if_range = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_IF_RANGE);
  uint64_t first = 0, last = total - 1;
  http_range_result rr = HTTP_RANGE_NONE;
  /* If-Range names what the client holds: another position (or a date,
   * which we never gave) means the whole stream again. */
  if (range && (!if_range || strcmp(if_range, share->etag) == 0))
    rr = http_range_parse(range, total, &first, &last);

  char content_range[80];
  if (rr == HTTP_RANGE_UNSATISFIABLE) {
    http_reply reply = {0};
    http_reply_error(&reply, 416, "range not satisfiable");
    json_key(&reply.body, "size");
    json_uint(&reply.body, total);
    snprintf(content_range, sizeof content_range, "bytes */%" PRIu64, total);
    http_reply_header(&reply, MHD_HTTP_HEADER_CONTENT_RANGE, content_range);
    http_reply_header(&reply, MHD_HTTP_HEADER_ETAG, share->etag);
    share_release(s, share);
    return http_server_send(s, conn, HTTP_EP_BACKUP, &reply);
  }
  if (rr == HTTP_RANGE_NONE) {
    first = 0;
    last = total - 1;
  }

  backup_stream *st = calloc(1, sizeof *st);
  if (!st) {
    share_release(s, share);
    return MHD_NO;
  }
  st->server = s;
  st->share = share;
  st->start = first;
  st->len = last - first + 1;
  pthread_mutex_lock(&s->backup_mu);
  s->backups_in_progress++;
  s->backups_started++;
  pthread_mutex_unlock(&s->backup_mu);

  struct MHD_Response *resp = MHD_create_response_from_callback(
      st->len, 64 * 1024, stream_read, st, stream_free);
  if (!resp) {
    stream_free(st);
    return MHD_NO;
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
  unsigned status = 200;
  if (rr == HTTP_RANGE_SINGLE) {
    status = 206;
    snprintf(content_range, sizeof content_range,
             "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, first, last, total);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_RANGE, content_range);
  }
  enum MHD_Result r = MHD_queue_response(conn, status, resp);
  MHD_destroy_response(resp);
  http_server_count(s, HTTP_EP_BACKUP, status);
  return r;
}

void http_backup_figures_get(http_server *s, http_backup_figures *out)
{
  memset(out, 0, sizeof *out);
  pthread_mutex_lock(&s->backup_mu);
  out->in_progress = s->backups_in_progress;
  out->started = s->backups_started;
  out->bytes_sent = s->backup_bytes;
  if (s->share) {
    out->open = true;
    out->position = s->share->position;
  }
  pthread_mutex_unlock(&s->backup_mu);
}
