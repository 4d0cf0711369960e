/*
 * auth.h: frame tags at the server (auth.c; DESIGN section 8, docs/AUTH.md):
 * checking the tag of a frame body or a streamed base image, tagging tree
 * and pages answers, counting refusals. Internal; the policy (what a tag
 * covers, which key ids pass) is replicate/auth.c's.
 */
#ifndef HTTP_AUTH_H
#define HTTP_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <microhttpd.h>

#include "replicate.h"
#include "reply.h"

typedef struct http_server http_server;

/* A base image's tag while it streams (zero-initialised in the request). */
typedef struct http_tag_upload {
  bool trailer;         /* the body ends in REPLICATE_TAG_SIZE bytes */
  uint64_t image_bytes; /* the body's bytes before the trailer */
  uint64_t fed;         /* body bytes seen */
  uint8_t tag[REPLICATE_TAG_SIZE];
  size_t tag_len;
  char key_id[REPLICATE_KEY_ID_TEXT]; /* the header's, or empty */
  replicate_tag_stream *stream;       /* NULL without a frame key */
} http_tag_upload;

/* POST /v1/frames, the body complete: with a frame key, true and a 401
 * in reply unless the body's tag is valid. */
bool http_auth_frames_refused(http_server *s, struct MHD_Connection *conn,
                              const uint8_t *body, size_t len,
                              http_reply *reply);

/* PUT /v1/base, phase 1: read the tag header. *length (Content-Length, or
 * UINT64_MAX) loses the trailer's bytes. True and a reply (401 without a
 * valid header under a frame key; 400 for a trailer without a length)
 * when the upload is refused. */
bool http_auth_base_begin(http_server *s, struct MHD_Connection *conn,
                          http_tag_upload *t, uint64_t *length,
                          http_reply *reply);
/* Phase 2: the part of data[0, n) that is image (the rest is the
 * trailer, kept), the tag updated with it. */
size_t http_auth_base_feed(http_tag_upload *t, const uint8_t *data, size_t n);
/* Phase 3: true and a 401 in reply when the image's tag is not valid. */
bool http_auth_base_refused(http_server *s, http_tag_upload *t,
                            http_reply *reply);
void http_auth_base_free(http_tag_upload *t);

/* A 200 tree or pages answer: add its tag header under the frame key. */
void http_auth_tag_answer(http_server *s, struct MHD_Response *resp,
                          replicate_tag_kind kind, const uint8_t *body,
                          size_t len);

/* What status and metrics show ("frame_auth"). */
typedef struct http_tag_figures {
  bool keyed; /* a frame key is configured */
  char key_id[REPLICATE_KEY_ID_TEXT];
  char previous_key_id[REPLICATE_KEY_ID_TEXT]; /* empty: none */
  uint64_t refused;   /* inputs refused for their tag */
  int last_code;      /* the last refusal's REPLICATE_ETAG_* */
  int64_t last_at_ns; /* CLOCK_REALTIME; 0: none yet */
  char last_reason[320];
} http_tag_figures;

void http_auth_figures(http_server *s, http_tag_figures *out);

#endif /* HTTP_AUTH_H */
