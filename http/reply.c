/*
 * reply.c: what every handler of http/ answers with: a status, a JSON
 * object and a few headers (http_reply), and the JSON pieces several
 * documents share (positions, the history), and the stable names and
 * texts of error codes that replies carry ("code", "detail").
 */
#include <stdio.h>
#include <string.h>

#include "reply.h"
#include "replicate.h"
#include "server.h"

void http_reply_error(http_reply *reply, unsigned status, const char *message)
{
  http_json_free(&reply->body);
  reply->status = status;
  http_json_object_begin(&reply->body);
  http_json_key(&reply->body, "error");
  http_json_string(&reply->body, message);
}

void http_reply_header(http_reply *reply, const char *name, const char *value)
{
  if (reply->header_count >= HTTP_REPLY_HEADERS)
    return;
  reply->headers[reply->header_count].name = name;
  snprintf(reply->headers[reply->header_count].value,
           sizeof reply->headers[0].value, "%s", value);
  reply->header_count++;
}

void http_reply_object(http_reply *reply, unsigned status)
{
  http_json_free(&reply->body);
  reply->status = status;
  http_json_object_begin(&reply->body);
}

void http_json_position(http_json_writer *w, const loom_position *pos)
{
  http_json_object_begin(w);
  http_json_member_uint(w, "epoch", pos->epoch);
  http_json_member_uint(w, "seq", pos->seq);
  http_json_member_hex64(w, "checksum", pos->checksum);
  http_json_member_uint(w, "pages", pos->pages);
  http_json_member_time_ns(w, "at", pos->commit_time_ns);
  http_json_object_end(w);
}

void http_json_history(http_json_writer *w, const loom_history *h)
{
  http_json_key(w, "history");
  if (loom_history_is_none(h)) {
    http_json_string(w, NULL);
    return;
  }
  char hex[2 * LOOM_HISTORY_SIZE + 1];
  loom_history_hex(h, hex);
  http_json_string(w, hex);
}

/* ---------------------------------------------------------------------- */
/* Error names */

static int http_range(int rc) { return rc < HTTP_OK && rc > HTTP_ELAST; }

/* A switch without default: -Wswitch-enum names a code HTTP_ERROR_LIST
 * gains and a switch misses. */
const char *http_error_name(int rc)
{
  if (http_range(rc)) {
    switch ((enum http_error)rc) {
#define HTTP_ERROR_NAME_(name, value, text) case name: return #name;
      HTTP_ERROR_LIST(HTTP_ERROR_NAME_)
#undef HTTP_ERROR_NAME_
    case HTTP_OK:
    case HTTP_ELAST:
      break;
    }
  }
  return replicate_error_name(rc); /* REPLICATE_E*, LOOM_E*, errno, 0 */
}

const char *http_strerror(int rc)
{
  if (http_range(rc)) {
    switch ((enum http_error)rc) {
#define HTTP_ERROR_TEXT_(name, value, text) case name: return text;
      HTTP_ERROR_LIST(HTTP_ERROR_TEXT_)
#undef HTTP_ERROR_TEXT_
    case HTTP_OK:
    case HTTP_ELAST:
      break;
    }
  }
  return replicate_strerror(rc); /* REPLICATE_E*, LOOM_E*, errno, 0 */
}
