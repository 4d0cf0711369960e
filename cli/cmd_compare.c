/*
 * cmd_compare.c: loomship compare URL URL (DESIGN sections 5 and 8).
 *
 * Two nodes' images at one common seq, compared through their page-hash
 * trees (GET /v1/tree, docs/INTEGRITY.md) from the top down, so only the
 * differing parts are fetched:
 *   1. pin both (a tree request without seq pins the node's current
 *      position) until they are at the same seq, up to 10 s, re-pinning
 *      the one behind;
 *   2. fetch, from both, the whole of the lowest level that has at most
 *      START_NODES nodes; the nodes that differ (or exist on one side
 *      only) are the suspects;
 *   3. one level down, fetch the children of the suspects (in runs, each
 *      request at most REPLICATE_TREE_MAX_NODES), keep those that differ;
 *      at level 0 they are the differing pages.
 * Exit 0 identical (same page count, no page differs), 1 different, 2 no
 * common seq or an error.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "client.h"
#include "loom.h"
#include "replicate.h"

#define START_NODES 1024u
#define COMMON_SEQ_WAIT_S 10.0
#define GAP_NODES 256u /* suspects this close are fetched in one run */

typedef struct compare_args {
  const char *a, *b;
  int json;
  const char *token_file;
  const char *ca_file;
  const char *frame_key_file;
} compare_args;

static const cli_option compare_options[] = {
    {.name = "json", .kind = CLI_FLAG, .offset = offsetof(compare_args, json),
     .help = "print {\"seq\", \"identical\", \"ranges\": [[first, last], ...]}"},
    {.name = "token-file", .arg = "F", .kind = CLI_TEXT,
     .offset = offsetof(compare_args, token_file), .dflt = "none",
     .help = "the bearer token (both nodes), on the file's first line"},
    {.name = "ca-file", .arg = "F", .kind = CLI_TEXT,
     .offset = offsetof(compare_args, ca_file), .dflt = "the system's CAs",
     .help = "CA certificates to verify the nodes' TLS certificates"},
    {.name = "frame-key-file", .arg = "F", .kind = CLI_TEXT,
     .offset = offsetof(compare_args, frame_key_file), .dflt = "none",
     .help = "the nodes' frame key file (docs/AUTH.md): refuse (exit 2) any tree "
             "answer without a valid HMAC-SHA256 tag under one of the file's keys"},
    {0},
};

typedef struct side {
  const char *url;
  client_options opt;
  const replicate_frame_key *key; /* answers must carry its tag, or NULL */
  replicate_answer_head pinned;
} side;

/* A growable list of node indexes. */
typedef struct index_list {
  uint64_t *v;
  size_t n, cap;
} index_list;

static bool list_push(index_list *l, uint64_t i)
{
  if (l->n == l->cap) {
    size_t cap = l->cap ? 2 * l->cap : 256;
    uint64_t *v = realloc(l->v, cap * sizeof *v);
    if (!v)
      return false;
    l->v = v;
    l->cap = cap;
  }
  l->v[l->n++] = i;
  return true;
}

static double mono_s(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* GET a tree answer into out (count nodes from first of level; pin: no
 * seq). 0, or 2 after an error line. */
static int get_tree(side *s, bool pin, unsigned level, uint64_t first,
                    uint64_t count, uint64_t *out, replicate_answer_head *h)
{
  char path[160];
  if (pin)
    snprintf(path, sizeof path, "/v1/tree?level=%u&first=0&count=0", level);
  else
    snprintf(path, sizeof path, "/v1/tree?seq=%" PRIu64 "&level=%u&first=%" PRIu64
             "&count=%" PRIu64, s->pinned.position.seq, level, first, count);
  client_reply r;
  if (client_request("GET", s->url, path, &s->opt, &r) != 0) {
    client_reply_free(&r);
    return cli_fail("compare", "%s: %s", s->url, r.error) + 1;
  }
  int rc = 0, trc = 0;
  if (r.status != 200)
    rc = cli_fail("compare", "%s%s: HTTP %ld: %.200s", s->url, path, r.status,
                  r.body) + 1;
  else if (s->key && (trc = replicate_tag_check(s->key, REPLICATE_TAG_TREE,
                                                r.tag[0] ? r.tag : NULL, r.body, r.len)))
    rc = cli_fail("compare", "%s: the tree answer is refused: %s: %s (%s: \"%s\"; this "
                  "key file's key id %s)", s->url, replicate_error_name(trc),
                  replicate_strerror(trc),
                  REPLICATE_TAG_HEADER, r.tag, replicate_frame_key_id(s->key, 0)) + 1;
  else if (replicate_answer_decode((const uint8_t *)r.body, r.len, h) != 0 ||
           h->kind != REPLICATE_ANSWER_TREE || h->level != level ||
           (!pin && (h->first != first || h->count != count ||
                     !loom_position_same(&h->position, &s->pinned.position))))
    rc = cli_fail("compare", "%s: %s", s->url,
                  replicate_strerror(REPLICATE_EANSWER)) + 1;
  for (uint64_t i = 0; !rc && i < h->count && out; i++)
    out[i] = replicate_answer_node((const uint8_t *)r.body, i);
  client_reply_free(&r);
  return rc;
}

/* Step 1: both pinned at one seq. 0, or 2 after an error line. */
static int pin_common(side *a, side *b)
{
  double end = mono_s() + COMMON_SEQ_WAIT_S;
  int rc = get_tree(a, true, 0, 0, 0, NULL, &a->pinned);
  if (!rc)
    rc = get_tree(b, true, 0, 0, 0, NULL, &b->pinned);
  while (!rc && a->pinned.position.seq != b->pinned.position.seq) {
    if (mono_s() > end)
      return cli_fail("compare", "no common seq within %.0f s (%s at seq %" PRIu64
                      ", %s at seq %" PRIu64 ")", COMMON_SEQ_WAIT_S, a->url,
                      a->pinned.position.seq, b->url, b->pinned.position.seq) + 1;
    struct timespec pause = {0, 20 * 1000 * 1000}; /* a poll, not a sync */
    nanosleep(&pause, NULL);
    side *behind = a->pinned.position.seq < b->pinned.position.seq ? a : b;
    rc = get_tree(behind, true, 0, 0, 0, NULL, &behind->pinned);
  }
  return rc;
}

/* Nodes [first, first + count) of level from both sides into va, vb (a
 * side with fewer nodes gives fewer: *na, *nb). */
static int get_both(side *a, side *b, unsigned level, uint64_t first,
                    uint64_t count, uint64_t *va, uint64_t *vb, uint64_t *na,
                    uint64_t *nb)
{
  side *s[2] = {a, b};
  uint64_t *v[2] = {va, vb}, *n[2] = {na, nb};
  for (int k = 0; k < 2; k++) {
    uint64_t have = loom_tree_nodes(s[k]->pinned.position.pages, level);
    *n[k] = first >= have ? 0 : (have - first < count ? have - first : count);
    replicate_answer_head h;
    for (uint64_t done = 0; done < *n[k];) {
      uint64_t step = *n[k] - done < REPLICATE_TREE_MAX_NODES
                          ? *n[k] - done : REPLICATE_TREE_MAX_NODES;
      int rc = get_tree(s[k], false, level, first + done, step, v[k] + done, &h);
      if (rc)
        return rc;
      done += step;
    }
  }
  return 0;
}

/* Compare the run [first, first + count) of level; push the differing
 * indexes (present on one side only counts) onto out. */
static int compare_run(side *a, side *b, unsigned level, uint64_t first,
                       uint64_t count, index_list *out)
{
  uint64_t *va = malloc((size_t)count * 8 + 8), *vb = malloc((size_t)count * 8 + 8);
  uint64_t na = 0, nb = 0;
  int rc = va && vb ? get_both(a, b, level, first, count, va, vb, &na, &nb)
                    : cli_fail("compare", "out of memory") + 1;
  uint64_t n = na > nb ? na : nb;
  for (uint64_t i = 0; !rc && i < n; i++)
    if ((i >= na || i >= nb || va[i] != vb[i]) && !list_push(out, first + i))
      rc = cli_fail("compare", "out of memory") + 1;
  free(va);
  free(vb);
  return rc;
}

/* Step 3: the children at level of the suspects one level up. */
static int descend(side *a, side *b, unsigned level, const index_list *up,
                   index_list *out)
{
  for (size_t i = 0; i < up->n;) {
    uint64_t first = up->v[i] * LOOM_TREE_FANOUT;
    size_t j = i + 1;
    while (j < up->n && up->v[j] - up->v[j - 1] <= GAP_NODES / LOOM_TREE_FANOUT)
      j++;
    uint64_t end = (up->v[j - 1] + 1) * LOOM_TREE_FANOUT;
    int rc = compare_run(a, b, level, first, end - first, out);
    if (rc)
      return rc;
    i = j;
  }
  return 0;
}

/* Steps 2-3: the differing pages into pages. */
static int find_differences(side *a, side *b, index_list *pages)
{
  uint64_t most = a->pinned.position.pages > b->pinned.position.pages
                      ? a->pinned.position.pages : b->pinned.position.pages;
  unsigned level = 0;
  while (level + 1 < LOOM_TREE_LEVELS && loom_tree_nodes(most, level) > START_NODES)
    level++;
  index_list up = {0}, down = {0};
  int rc = compare_run(a, b, level, 0, loom_tree_nodes(most, level), &up);
  while (!rc && level > 0) {
    level--;
    down.n = 0;
    rc = descend(a, b, level, &up, &down);
    index_list t = up;
    up = down;
    down = t;
  }
  free(down.v);
  *pages = up;
  return rc;
}

int cli_tree_find_bad_pages(const char *url, const char *token, const char *ca_file,
                            const replicate_frame_key *key,
                            const loom_position *at, const uint64_t *hashes,
                            uint64_t *bad, size_t cap, size_t *n)
{
  side s = {.url = url, .opt = {.token = token, .ca_file = ca_file, .timeout_s = 30},
            .key = key};
  *n = 0;
  if (get_tree(&s, true, 0, 0, 0, NULL, &s.pinned) ||
      !loom_position_same(&s.pinned.position, at))
    return -1;
  uint64_t *v = malloc(REPLICATE_TREE_MAX_NODES * sizeof *v);
  int rc = v ? 0 : -1;
  for (uint64_t first = 0; !rc && first < at->pages; first += REPLICATE_TREE_MAX_NODES) {
    uint64_t k = at->pages - first < REPLICATE_TREE_MAX_NODES ? at->pages - first
                                                              : REPLICATE_TREE_MAX_NODES;
    replicate_answer_head h;
    rc = get_tree(&s, false, 0, first, k, v, &h) ? -1 : 0;
    for (uint64_t i = 0; !rc && i < k; i++)
      if (v[i] != hashes[first + i] && (*n)++ < cap)
        bad[*n - 1] = first + i;
  }
  free(v);
  return rc;
}

static void print_ranges(const compare_args *args, uint64_t seq, bool identical,
                         const index_list *pages)
{
  if (args->json)
    printf("{\"seq\": %" PRIu64 ", \"identical\": %s, \"ranges\": [", seq,
           identical ? "true" : "false");
  bool first = true;
  for (size_t i = 0; i < pages->n;) {
    size_t j = i;
    while (j + 1 < pages->n && pages->v[j + 1] == pages->v[j] + 1)
      j++;
    uint64_t lo = pages->v[i], hi = pages->v[j];
    if (args->json)
      printf("%s[%" PRIu64 ", %" PRIu64 "]", first ? "" : ", ", lo, hi);
    else if (lo == hi)
      printf("%" PRIu64 "\n", lo);
    else
      printf("%" PRIu64 "-%" PRIu64 "\n", lo, hi);
    first = false;
    i = j + 1;
  }
  if (args->json)
    printf("]}\n");
}

static int run_compare(void *p)
{
  compare_args *args = p;
  char *token = NULL;
  if (args->token_file) {
    int rc = cli_token_file_read("compare", args->token_file, &token);
    if (rc)
      return 2;
  }
  replicate_frame_key *key = NULL;
  if (cli_frame_key_read("compare", args->frame_key_file, &key)) {
    cli_token_forget(token);
    return 2;
  }
  client_options opt = {.token = token, .ca_file = args->ca_file, .timeout_s = 30};
  side a = {.url = args->a, .opt = opt, .key = key}, b = {.url = args->b, .opt = opt, .key = key};
  index_list pages = {0};
  int rc = pin_common(&a, &b);
  if (!rc)
    rc = find_differences(&a, &b, &pages);
  cli_token_forget(token);
  replicate_frame_key_free(key);
  if (rc) {
    free(pages.v);
    return 2;
  }
  uint64_t seq = a.pinned.position.seq;
  bool identical = pages.n == 0 && a.pinned.position.pages == b.pinned.position.pages;
  print_ranges(args, seq, identical, &pages);
  fprintf(stderr, "loomship compare: %s at seq %" PRIu64 " (%zu pages differ)\n",
          identical ? "identical" : "different", seq, pages.n);
  free(pages.v);
  return identical ? 0 : 1;
}

const cli_command cmd_compare = {
    .name = "compare",
    .summary = "compare two nodes' images at one common seq through their page-hash "
               "trees: exit 0 identical, 1 different (the differing page ranges "
               "printed), 2 no common seq within 10 s or an error",
    .options = compare_options,
    .positional = "URL", .positional_offset = offsetof(compare_args, a),
    .positional2 = "URL", .positional2_offset = offsetof(compare_args, b),
    .args_size = sizeof(compare_args),
    .run = run_compare};
