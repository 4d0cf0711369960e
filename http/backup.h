/*
 * backup.h: GET /v1/backup (backup.c). Internal.
 */
#ifndef HTTP_BACKUP_H
#define HTTP_BACKUP_H

#include <stdbool.h>
#include <stdint.h>

#include <microhttpd.h>

#include "loom.h"
#include "replicate.h"
#include "reply.h"

/* ---------------------------------------------------------------------- */
/* Backups (backup.c): GET /v1/backup from a snapshot shared by every
 * download in progress. An object of its own, with its own lock: the
 * server creates it with a source of snapshots, asks it to answer and for
 * its figures, and frees it once the daemon stopped (no response left). */

typedef struct http_backups http_backups;

/* Where snapshots come from. open: 0 or an error code (503 is answered;
 * EBUSY says a base image is coming in); NULL open: ENOTSUP. close: gives
 * back what open gave, from any thread. */
typedef struct http_backup_source {
  void *ctx;
  int (*open)(void *ctx, loom_snapshot **out);
  void (*close)(void *ctx, loom_snapshot *snap);
} http_backup_source;

/* 0 or ENOMEM. source is copied. */
int http_backups_create(const http_backup_source *source, http_backups **out);
/* Once no response is left (after MHD_stop_daemon). NULL is a no-op. */
void http_backups_free(http_backups *backups);

/*
 * Answer GET or HEAD /v1/backup (the token was checked); range and
 * if_range are the request's headers (NULL when absent). Returns the
 * status to answer with:
 *   200, 206  *resp is the image stream to queue (whole, or the range);
 *             the caller queues it and destroys its reference
 *   503, 416  reply is filled (no snapshot; a range past the end); the
 *             caller sends it
 *   0         out of memory: nothing to send (close the connection)
 */
unsigned http_backups_respond(http_backups *backups, const char *range,
                              const char *if_range, http_reply *reply,
                              struct MHD_Response **resp);

/*
 * The same, tagged (the request carried REPLICATE_WANT_TAG_HEADER and this
 * node has key): the whole stream, whatever the request's Range, then its
 * REPLICATE_TAG_BACKUP tag as a REPLICATE_TAG_SIZE-byte trailer; the
 * answer's REPLICATE_TAG_HEADER says "KEYID trailer". 200, 503, or 0.
 */
unsigned http_backups_respond_tagged(http_backups *backups, const replicate_frame_key *key,
                                     http_reply *reply, struct MHD_Response **resp);

/* The figures status and metrics show about backups. */
typedef struct http_backup_figures {
  unsigned in_progress;
  uint64_t started;
  uint64_t bytes_sent;
  bool open;                    /* a snapshot is open */
  loom_position position;       /* its position */
} http_backup_figures;

void http_backups_figures(http_backups *backups, http_backup_figures *out);

#endif /* HTTP_BACKUP_H */
