/*
 * repair.c: the standby's side of self-repair that talks to its upstream
 * (--repair-from URL; docs/INTEGRITY.md section 5, steps 2 and 3): pin the
 * upstream's position with a tree request, then fetch the bad pages at that
 * position with GET /v1/pages. The answer is checked and written by the
 * server (replicate_repair_pages): nothing here is trusted.
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

/* pages[0, count) (ascending) as runs "A-B,C,..." into out. */
static void page_ranges(const uint64_t *pages, uint64_t count, char *out, size_t cap)
{
  size_t at = 0;
  out[0] = '\0';
  for (uint64_t i = 0; i < count && at < cap; i++) {
    uint64_t first = pages[i];
    while (i + 1 < count && pages[i + 1] == pages[i] + 1)
      i++;
    int n = pages[i] == first
                ? snprintf(out + at, cap - at, "%s%" PRIu64, at ? "," : "", first)
                : snprintf(out + at, cap - at, "%s%" PRIu64 "-%" PRIu64, at ? "," : "",
                           first, pages[i]);
    at += n > 0 ? (size_t)n : 0;
  }
}

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

int cli_repair_fetch(void *ctx, const uint64_t *pages, uint64_t count,
                     uint8_t **answer, size_t *len, char *why, size_t why_len)
{
  const cli_repair_source *src = ctx;
  client_reply r;
  replicate_answer_head pin;
  int rc = repair_get(src, "/v1/tree?level=0&first=0&count=0", REPLICATE_TAG_TREE, &r,
                      why, why_len);
  if (!rc && replicate_answer_decode((const uint8_t *)r.body, r.len, &pin) != 0) {
    snprintf(why, why_len, "%s: the pinning tree answer is malformed", src->url);
    rc = REPLICATE_EANSWER;
  }
  client_reply_free(&r);
  if (rc)
    return rc;
  size_t cap = 64 + (size_t)count * 42;
  char *path = malloc(cap);
  if (!path)
    return ENOMEM;
  int n = snprintf(path, cap, "/v1/pages?seq=%" PRIu64 "&pages=", pin.position.seq);
  page_ranges(pages, count, path + n, cap - (size_t)n);
  rc = repair_get(src, path, REPLICATE_TAG_PAGES, &r, why, why_len);
  free(path);
  if (rc == 0) {
    *answer = (uint8_t *)r.body;
    *len = r.len;
    r.body = NULL;
  }
  client_reply_free(&r);
  return rc;
}
