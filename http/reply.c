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
  json_free(&reply->body);
  reply->status = status;
  json_object_begin(&reply->body);
  json_key(&reply->body, "error");
  json_string(&reply->body, message);
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
  json_free(&reply->body);
  reply->status = status;
  json_object_begin(&reply->body);
}

void http_json_position(json_writer *w, const loom_position *pos)
{
  json_object_begin(w);
  json_key(w, "epoch");
  json_uint(w, pos->epoch);
  json_key(w, "seq");
  json_uint(w, pos->seq);
  json_key(w, "checksum");
  json_hex64(w, pos->checksum);
  json_key(w, "pages");
  json_uint(w, pos->pages);
  json_key(w, "at");
  json_time_ns(w, pos->commit_time_ns);
  json_object_end(w);
}

void http_json_history(json_writer *w, const loom_history *h)
{
  json_key(w, "history");
  if (loom_history_is_none(h)) {
    json_string(w, NULL);
    return;
  }
  char hex[2 * LOOM_HISTORY_SIZE + 1];
  loom_history_hex(h, hex);
  json_string(w, hex);
}

/* ---------------------------------------------------------------------- */
/* Error names */

static const char *loom_error_name(enum loom_error e)
{
  switch (e) {
  case LOOM_OK: return "OK";
  case LOOM_ELOCKED: return "LOOM_ELOCKED";
  case LOOM_ECORRUPT: return "LOOM_ECORRUPT";
  case LOOM_EVERSION: return "LOOM_EVERSION";
  case LOOM_EPANIC: return "LOOM_EPANIC";
  case LOOM_EEXHAUSTED: return "LOOM_EEXHAUSTED";
  case LOOM_EPAGESIZE: return "LOOM_EPAGESIZE";
  case LOOM_EPOSITION: return "LOOM_EPOSITION";
  case LOOM_ETOOBIG: return "LOOM_ETOOBIG";
  case LOOM_EBUG: return "LOOM_EBUG";
  case LOOM_EINVAL: return "LOOM_EINVAL";
  case LOOM_ENOIMAGE: return "LOOM_ENOIMAGE";
  case LOOM_ETRACKER: return "LOOM_ETRACKER";
  case LOOM_EHISTORY: return "LOOM_EHISTORY";
  case LOOM_EMETA: return "LOOM_EMETA";
  case LOOM_ELAST: break;
  }
  return NULL;
}

static const char *replicate_error_name(enum replicate_error e)
{
  switch (e) {
  case REPLICATE_OK: return "OK";
  case REPLICATE_ETRUNCATED: return "REPLICATE_ETRUNCATED";
  case REPLICATE_EMAGIC: return "REPLICATE_EMAGIC";
  case REPLICATE_EVERSION: return "REPLICATE_EVERSION";
  case REPLICATE_EHEADER_CHECKSUM: return "REPLICATE_EHEADER_CHECKSUM";
  case REPLICATE_EMALFORMED: return "REPLICATE_EMALFORMED";
  case REPLICATE_ETOOBIG: return "REPLICATE_ETOOBIG";
  case REPLICATE_ETRAILING: return "REPLICATE_ETRAILING";
  case REPLICATE_EPAYLOAD_CHECKSUM: return "REPLICATE_EPAYLOAD_CHECKSUM";
  case REPLICATE_EDECOMPRESS: return "REPLICATE_EDECOMPRESS";
  case REPLICATE_EPAGES: return "REPLICATE_EPAGES";
  case REPLICATE_EDUPLICATE: return "REPLICATE_EDUPLICATE";
  case REPLICATE_EPOSITION: return "REPLICATE_EPOSITION";
  case REPLICATE_ESTALE_EPOCH: return "REPLICATE_ESTALE_EPOCH";
  case REPLICATE_EPAGE_HASH: return "REPLICATE_EPAGE_HASH";
  case REPLICATE_EAFTER_CHECKSUM: return "REPLICATE_EAFTER_CHECKSUM";
  case REPLICATE_EKIND: return "REPLICATE_EKIND";
  case REPLICATE_EINVAL: return "REPLICATE_EINVAL";
  case REPLICATE_ECOMPRESS: return "REPLICATE_ECOMPRESS";
  case REPLICATE_ENOT_CONTIGUOUS: return "REPLICATE_ENOT_CONTIGUOUS";
  case REPLICATE_ELOG_GONE: return "REPLICATE_ELOG_GONE";
  case REPLICATE_ELOG_AHEAD: return "REPLICATE_ELOG_AHEAD";
  case REPLICATE_ELOG_CORRUPT: return "REPLICATE_ELOG_CORRUPT";
  case REPLICATE_ELOG_VERSION: return "REPLICATE_ELOG_VERSION";
  case REPLICATE_EPANIC: return "REPLICATE_EPANIC";
  case REPLICATE_ESYNC_TIMEOUT: return "REPLICATE_ESYNC_TIMEOUT";
  case REPLICATE_EFENCED: return "REPLICATE_EFENCED";
  case REPLICATE_ECURL: return "REPLICATE_ECURL";
  case REPLICATE_EHISTORY: return "REPLICATE_EHISTORY";
  case REPLICATE_EBEHIND: return "REPLICATE_EBEHIND";
  case REPLICATE_EFORK: return "REPLICATE_EFORK";
  case REPLICATE_EPAST_BRANCH: return "REPLICATE_EPAST_BRANCH";
  case REPLICATE_ELAST: break;
  }
  return NULL;
}

static const char *http_own_error_name(enum http_error e)
{
  switch (e) {
  case HTTP_OK: return "OK";
  case HTTP_EINVAL: return "HTTP_EINVAL";
  case HTTP_ETLS: return "HTTP_ETLS";
  case HTTP_EDAEMON: return "HTTP_EDAEMON";
  case HTTP_EADDRESS: return "HTTP_EADDRESS";
  case HTTP_EPATH: return "HTTP_EPATH";
  case HTTP_ELENGTH: return "HTTP_ELENGTH";
  case HTTP_ESLOW_UPLOAD: return "HTTP_ESLOW_UPLOAD";
  case HTTP_ELONG_UPLOAD: return "HTTP_ELONG_UPLOAD";
  case HTTP_ELAST: break;
  }
  return NULL;
}

const char *http_error_name(int rc)
{
  const char *name = NULL;
  if (rc == 0)
    return "OK";
  if (rc > 0) {
    name = strerrorname_np(rc);
    return name ? name : "ERRNO";
  }
  if (rc <= LOOM_ELOCKED && rc > LOOM_ELAST)
    name = loom_error_name((enum loom_error)rc);
  else if (rc <= REPLICATE_ETRUNCATED && rc > REPLICATE_ELAST)
    name = replicate_error_name((enum replicate_error)rc);
  else if (rc <= HTTP_EINVAL && rc > HTTP_ELAST)
    name = http_own_error_name((enum http_error)rc);
  return name ? name : "UNKNOWN";
}

const char *http_strerror(int rc)
{
  switch (rc) {
  case HTTP_EINVAL:
    return "an option is missing, out of range, or does not fit the role";
  case HTTP_ETLS:
    return "TLS is not available, or only one of certificate and key given";
  case HTTP_EDAEMON:
    return "libmicrohttpd refused to start (certificate or key unreadable?)";
  case HTTP_EADDRESS:
    return "the listen address does not resolve";
  case HTTP_EPATH:
    return "the request path holds a NUL byte";
  case HTTP_ELENGTH:
    return "Content-Length given twice, or with Transfer-Encoding";
  case HTTP_ESLOW_UPLOAD:
    return "the upload is slower than the minimum rate";
  case HTTP_ELONG_UPLOAD:
    return "the upload took longer than its duration cap";
  default:
    return replicate_strerror(rc);
  }
}
