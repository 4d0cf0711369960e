/*
 * integrity.h: GET /v1/tree and GET /v1/pages (integrity.c; DESIGN section
 * 8, docs/INTEGRITY.md). Internal.
 */
#ifndef HTTP_INTEGRITY_H
#define HTTP_INTEGRITY_H

#include <stddef.h>
#include <stdint.h>

#include "backup.h"

typedef struct http_integrity http_integrity;

/* A pin unused this long is closed (seconds). */
#define HTTP_PIN_IDLE_S 10

/* 0, ENOMEM or a pthread error. Snapshots come from source (the same as
 * backups'). */
int http_integrity_create(const http_backup_source *source,
                          http_integrity **out);
/* Once no request is left (after MHD_stop_daemon). NULL is a no-op. */
void http_integrity_free(http_integrity *integrity);

/* An answer: 200 with body[0, len) (malloc'd, the caller frees it) as
 * application/octet-stream, or another status with reply filled. The query
 * values are the request's arguments (NULL when absent). */
typedef struct http_integrity_query {
  const char *seq, *level, *first, *count, *pages;
} http_integrity_query;

unsigned http_integrity_tree(http_integrity *integrity,
                             const http_integrity_query *q, http_reply *reply,
                             uint8_t **body, size_t *len);
unsigned http_integrity_pages(http_integrity *integrity,
                              const http_integrity_query *q, http_reply *reply,
                              uint8_t **body, size_t *len);

#endif
