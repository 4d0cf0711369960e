/*
 * repair.c: the standby's side of self-repair that talks to its upstream
 * (--repair-from URL, or the URL its primary advertises in its frames;
 * docs/INTEGRITY.md section 5): one GET of a tree or pages request, the
 * answer's tag checked under the frame key. What to ask and whether to
 * believe the answers is replicate_repair_from's (replicate/repair.c):
 * nothing here is trusted.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "client.h"
#include "replicate.h"

#define REPAIR_TIMEOUT_S 30

/* GET url + path: 0 and the 200 answer's body in *r, or an error code and
 * why. With a frame key, the answer must carry a valid tag of kind (a
 * REPLICATE_ETAG_* otherwise: an upstream without the key, or a forged
 * answer, repairs nothing). */
static int repair_get(const cli_repair_source *src, const char *path,
                      replicate_tag_kind kind, client_reply *r, char *why, size_t why_len)
{
  client_options opt = {.token = src->token, .ca_file = src->ca_file,
                        .timeout_s = REPAIR_TIMEOUT_S};
  if (client_request("GET", src->url, path, &opt, r) != 0) {
    snprintf(why, why_len, "%s: %s", src->url, r->error);
    return EIO; /* no answer: why says what the transfer met */
  }
  if (r->status != 200) {
    snprintf(why, why_len, "%s: HTTP %ld: %.120s", src->url, r->status, r->body);
    return REPLICATE_EANSWER;
  }
  int rc = src->frame_key ? replicate_tag_check(src->frame_key, kind,
                                                r->tag[0] ? r->tag : NULL, r->body, r->len)
                          : 0;
  if (rc)
    snprintf(why, why_len, "%s: answer refused: %s (this node's key id %s)", src->url,
             replicate_strerror(rc), replicate_frame_key_id(src->frame_key, 0));
  return rc;
}

int cli_repair_get(void *ctx, const char *upstream, const char *path,
                   replicate_tag_kind kind, uint8_t **body, size_t *len, char *why,
                   size_t why_len)
{
  const cli_repair_source *src = ctx;
  cli_repair_source at = *src;
  if (!at.url)
    at.url = upstream;
  if (!at.url) {
    snprintf(why, why_len, "no --repair-from, and no frame has advertised its primary's URL");
    return REPLICATE_ENO_UPSTREAM;
  }
  client_reply r;
  int rc = repair_get(&at, path, kind, &r, why, why_len);
  if (rc == 0) {
    *body = (uint8_t *)r.body;
    *len = r.len;
    r.body = NULL;
  }
  client_reply_free(&r);
  return rc;
}
