/*
 * auth.c: frame tags at the server (auth.h). A node with a frame key
 * refuses (401, the code naming why, the key ids in the message) a frame
 * or base image whose tag is missing, under a key id it does not hold, or
 * wrong; without a key, tags are not checked (a base image's trailer is
 * still cut off). Refusals are counted for status and metrics.
 */
#include "auth.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "server_internal.h"

/* Count a refusal and fill reply: 401 {"error", "code", "key_id"}. */
static void refuse(http_server *s, http_endpoint ep, int rc, const char *key_id,
                   http_reply *reply)
{
  const replicate_frame_key *k = s->frame_key;
  const char *prev = replicate_frame_key_id(k, 1);
  char msg[320];
  snprintf(msg, sizeof msg,
           "%s refused: %s (tag key id %s; this node holds %s%s%s)",
           http_endpoint_path(ep), replicate_strerror(rc),
           key_id && key_id[0] ? key_id : "none", replicate_frame_key_id(k, 0),
           prev ? " and " : "", prev ? prev : "");
  pthread_mutex_lock(&s->stats_mu);
  s->tag_refusals++;
  s->last_tag_refusal_ns = http_now_ns();
  snprintf(s->last_tag_refusal, sizeof s->last_tag_refusal, "%s", msg);
  s->last_tag_refusal_code = rc;
  pthread_mutex_unlock(&s->stats_mu);
  http_logf(&s->logger, "401 %s", msg);
  http_reply_error(reply, 401, msg);
  http_json_key(&reply->body, "code");
  http_json_string(&reply->body, http_error_name(rc));
  http_json_key(&reply->body, "key_id");
  http_json_string(&reply->body, key_id && key_id[0] ? key_id : NULL);
}

static const char *tag_header(struct MHD_Connection *conn)
{
  return MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                     REPLICATE_TAG_HEADER);
}

bool http_auth_frames_refused(http_server *s, struct MHD_Connection *conn,
                              const uint8_t *body, size_t len,
                              http_reply *reply)
{
  if (!s->frame_key)
    return false;
  const char *header = tag_header(conn);
  int rc = replicate_tag_check(s->frame_key, REPLICATE_TAG_FRAMES, header, body,
                               len);
  if (!rc)
    return false;
  replicate_tag t;
  (void)replicate_tag_parse(header, &t);
  refuse(s, HTTP_EP_FRAMES, rc, t.key_id, reply);
  return true;
}

bool http_auth_base_begin(http_server *s, struct MHD_Connection *conn,
                          http_tag_upload *t, uint64_t *length,
                          http_reply *reply)
{
  replicate_tag tag;
  int rc = replicate_tag_parse(tag_header(conn), &tag);
  if (rc == 0 && tag.trailer) {
    if (*length == UINT64_MAX ||
        *length < LOOM_STREAM_HEADER + REPLICATE_TAG_SIZE) {
      http_reply_error(reply, 400, "a tag trailer needs a Content-Length");
      return true;
    }
    t->trailer = true;
    *length -= REPLICATE_TAG_SIZE;
    t->image_bytes = *length;
  }
  memcpy(t->key_id, tag.key_id, sizeof t->key_id);
  if (!s->frame_key)
    return false;
  if (rc == 0 && !tag.trailer)
    rc = REPLICATE_ETAG_BAD; /* an image's tag can only follow it */
  if (rc == 0)
    rc = replicate_tag_stream_begin(s->frame_key, REPLICATE_TAG_BASE,
                                    tag.key_id, &t->stream);
  if (rc == 0)
    return false;
  refuse(s, HTTP_EP_BASE, rc, tag.key_id, reply);
  return true;
}

size_t http_auth_base_feed(http_tag_upload *t, const uint8_t *data, size_t n)
{
  if (!t->trailer)
    return n;
  size_t image = 0;
  if (t->fed < t->image_bytes)
    image = t->image_bytes - t->fed < n ? (size_t)(t->image_bytes - t->fed) : n;
  for (size_t i = image; i < n && t->tag_len < REPLICATE_TAG_SIZE; i++)
    t->tag[t->tag_len++] = data[i];
  t->fed += n;
  if (t->stream && image)
    (void)replicate_tag_stream_update(t->stream, data, image);
  return image;
}

bool http_auth_base_refused(http_server *s, http_tag_upload *t,
                            http_reply *reply)
{
  if (!s->frame_key)
    return false;
  int rc = REPLICATE_ETAG_BAD;
  if (t->stream && t->tag_len == REPLICATE_TAG_SIZE &&
      t->fed == t->image_bytes + REPLICATE_TAG_SIZE)
    rc = replicate_tag_stream_check(t->stream, t->tag);
  replicate_tag_stream_free(t->stream);
  t->stream = NULL;
  if (!rc)
    return false;
  refuse(s, HTTP_EP_BASE, rc, t->key_id, reply);
  return true;
}

void http_auth_base_free(http_tag_upload *t)
{
  replicate_tag_stream_free(t->stream);
  t->stream = NULL;
}

void http_auth_tag_answer(http_server *s, struct MHD_Response *resp,
                          replicate_tag_kind kind, const uint8_t *body,
                          size_t len)
{
  char value[REPLICATE_TAG_TEXT];
  if (s->frame_key &&
      replicate_tag_make(s->frame_key, kind, body, len, value) == 0)
    MHD_add_response_header(resp, REPLICATE_TAG_HEADER, value);
}

void http_auth_figures(http_server *s, http_tag_figures *out)
{
  memset(out, 0, sizeof *out);
  const char *id = replicate_frame_key_id(s->frame_key, 0);
  const char *prev = replicate_frame_key_id(s->frame_key, 1);
  out->keyed = id != NULL;
  snprintf(out->key_id, sizeof out->key_id, "%s", id ? id : "");
  snprintf(out->previous_key_id, sizeof out->previous_key_id, "%s",
           prev ? prev : "");
  pthread_mutex_lock(&s->stats_mu);
  out->refused = s->tag_refusals;
  out->last_code = s->last_tag_refusal_code;
  out->last_at_ns = s->last_tag_refusal_ns;
  memcpy(out->last_reason, s->last_tag_refusal, sizeof out->last_reason);
  pthread_mutex_unlock(&s->stats_mu);
}
