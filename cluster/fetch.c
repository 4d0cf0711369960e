/*
 * fetch.c: a member's GETs of its leader for the page-hash tree (DESIGN
 * section 8): the tree and pages answers of a self-repair or a rewind (a
 * replicate_repair_source, and the standby server's repair_get hook), and
 * the leader's lineage, read from the header of its GET /v1/backup (one
 * Range request: no page moves). With a frame key, tree and pages answers
 * must carry a valid tag. What to ask and whether to believe the answers
 * is replicate/'s (repair.c): nothing here is trusted.
 */
#include "node_internal.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define FETCH_TIMEOUT_MS 30000L

typedef struct fetch_buf {
  replicate_buf body;
  size_t max;
  char tag[REPLICATE_TAG_TEXT];
} fetch_buf;

static size_t fetch_write(char *data, size_t size, size_t nmemb, void *ctx)
{
  fetch_buf *b = ctx;
  size_t n = size * nmemb;
  if (n > b->max - b->body.len)
    return 0; /* larger than any answer asked for */
  return replicate_buf_append(&b->body, data, n) ? 0 : n;
}

/* The frame tag's header, kept for replicate_tag_check. */
static size_t fetch_header(char *data, size_t size, size_t nmemb, void *ctx)
{
  fetch_buf *b = ctx;
  size_t n = size * nmemb, name = strlen(REPLICATE_TAG_HEADER);
  if (n > name + 1 && strncasecmp(data, REPLICATE_TAG_HEADER, name) == 0 &&
      data[name] == ':') {
    size_t at = name + 1, end = n;
    while (at < end && data[at] == ' ')
      at++;
    while (end > at && (data[end - 1] == '\r' || data[end - 1] == '\n' || data[end - 1] == ' '))
      end--;
    if (end - at < sizeof b->tag) {
      memcpy(b->tag, data + at, end - at);
      b->tag[end - at] = '\0';
    }
  }
  return n;
}

void *node_curl_open(cluster_node *n, const char *url, struct curl_slist **headers)
{
  CURL *c = curl_easy_init();
  *headers = NULL;
  if (!c)
    return NULL;
  char auth[512];
  pthread_mutex_lock(&n->server_mu); /* SIGHUP may replace the token */
  if (n->token) {
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", n->token);
    *headers = curl_slist_append(NULL, auth);
    explicit_bzero(auth, sizeof auth);
  }
  pthread_mutex_unlock(&n->server_mu);
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, *headers);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  if (n->ca_file)
    curl_easy_setopt(c, CURLOPT_CAINFO, n->ca_file);
  return c;
}

void node_curl_close(void *c, struct curl_slist *headers)
{
  for (struct curl_slist *q = headers; q; q = q->next)
    explicit_bzero(q->data, strlen(q->data));
  curl_slist_free_all(headers);
  curl_easy_cleanup(c);
}

/* GET base + path (with range, "first-last", when not NULL) into *b: 0,
 * or an error with why filled. */
static int fetch(cluster_node *n, const char *base, const char *path, const char *range,
                 fetch_buf *b, char *why, size_t why_len)
{
  char url[REPLICATE_URL_MAX + 1024];
  snprintf(url, sizeof url, "%s%s", base, path);
  struct curl_slist *h;
  CURL *c = node_curl_open(n, url, &h);
  if (!c)
    return REPLICATE_ECURL;
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, fetch_write);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, b);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, fetch_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, b);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, FETCH_TIMEOUT_MS);
  if (range)
    curl_easy_setopt(c, CURLOPT_RANGE, range);
  CURLcode cc = curl_easy_perform(c);
  long status = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  node_curl_close(c, h);
  if (cc != CURLE_OK) {
    snprintf(why, why_len, "%s: %s", url, curl_easy_strerror(cc));
    return EIO;
  }
  if (status != 200 && status != 206) {
    snprintf(why, why_len, "%s: HTTP %ld", url, status);
    return REPLICATE_EANSWER;
  }
  return 0;
}

/* GET a tree or pages answer from base: 0 and the body (malloc'd), or an
 * error with why. With a frame key the answer's tag must be valid. */
static int fetch_answer(cluster_node *n, const char *base, const char *path,
                        replicate_tag_kind kind, uint8_t **body, size_t *len, char *why,
                        size_t why_len)
{
  fetch_buf b = {.max = replicate_answer_size(REPLICATE_ANSWER_PAGES, REPLICATE_PAGES_MAX)};
  size_t tree = replicate_answer_size(REPLICATE_ANSWER_TREE, REPLICATE_TREE_MAX_NODES);
  if (tree > b.max)
    b.max = tree;
  int rc = fetch(n, base, path, NULL, &b, why, why_len);
  if (!rc && n->o.frame_key) {
    rc = replicate_tag_check(n->o.frame_key, kind, b.tag[0] ? b.tag : NULL, b.body.data, b.body.len);
    if (rc)
      snprintf(why, why_len, "%s: answer refused: %s", base, replicate_strerror(rc));
  }
  if (rc) {
    free(b.body.data);
    return rc;
  }
  *body = b.body.data;
  *len = b.body.len;
  return 0;
}

/* replicate_repair_source's get: ctx is a node_leader_source. */
static int source_get(void *ctx, const char *path, replicate_tag_kind kind, uint8_t **body,
                      size_t *len, char *why, size_t why_len)
{
  node_leader_source *s = ctx;
  return fetch_answer(s->node, s->url, path, kind, body, len, why, why_len);
}

void node_leader_source_init(node_leader_source *s, cluster_node *n, const char *url)
{
  s->node = n;
  snprintf(s->url, sizeof s->url, "%s", url);
  s->src.get = source_get;
  s->src.ctx = s;
}

int node_repair_get(void *ctx, const char *upstream, const char *path,
                    replicate_tag_kind kind, uint8_t **body, size_t *len, char *why,
                    size_t why_len)
{
  cluster_node *n = ctx;
  char leader[REPLICATE_URL_MAX] = "";
  pthread_mutex_lock(&n->mu);
  if (n->view.has_leader && strcmp(n->view.leader.name, n->name))
    snprintf(leader, sizeof leader, "%s", n->view.leader.url);
  pthread_mutex_unlock(&n->mu);
  /* The upstream the frames advertise is the leader that ships to us;
   * before any frame came, the leader etcd names. */
  const char *from = upstream && upstream[0] ? upstream : leader;
  if (!from[0]) {
    snprintf(why, why_len, "no leader to repair from (none in etcd, no frame yet)");
    return REPLICATE_ENO_UPSTREAM;
  }
  return fetch_answer(n, from, path, kind, body, len, why, why_len);
}

int node_leader_lineage(cluster_node *n, const char *url, loom_lineage *out, char *why,
                        size_t why_len)
{
  fetch_buf b = {.max = LOOM_STREAM_HEADER};
  char range[32];
  snprintf(range, sizeof range, "0-%u", LOOM_STREAM_HEADER - 1);
  int rc = fetch(n, url, "/v1/backup", range, &b, why, why_len);
  loom_position pos;
  if (!rc && (b.body.len != LOOM_STREAM_HEADER ||
              loom_stream_header_decode(b.body.data, &pos, out) != 0)) {
    snprintf(why, why_len, "%s/v1/backup: not an image stream's header", url);
    rc = REPLICATE_EANSWER;
  }
  free(b.body.data);
  return rc;
}
