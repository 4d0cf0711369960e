/*
 * repair_bench.c: what self-repair moves (replicate_repair_from, DESIGN
 * section 8, docs/INTEGRITY.md section 5) against a full base image, in
 * the same run.
 *
 * An image of N pages (default 65,536: 1 GiB) of random bytes is written
 * to directory A and copied to B (same history, same position). A is
 * served by a standby's HTTP server on 127.0.0.1 (GET /v1/tree, /v1/pages,
 * /v1/backup). For each k, k random pages of B's image file get one byte
 * flipped and B repairs them from A over HTTP: bytes of the answers,
 * requests and seconds (pin, page hashes, pages, the patch, its fsync and
 * read-back). Then the whole image is pulled once from A (GET /v1/backup,
 * what a base image moves). A k over REPLICATE_REPAIR_MAX_PAGES is
 * refused (a base image's job) and shown so.
 *
 *   repair_bench [--pages N] [--dir DIR] [--k K,K,...]
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "loom.h"
#include "replicate.h"
#include "server.h"
#include "benchutil.h"

#define PS LOOM_PAGE_SIZE

typedef struct upstream {
  char url[64];
  uint64_t bytes;    /* answer bodies */
  uint64_t requests;
} upstream;

typedef replicate_buf body;

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t rng_next(void)
{
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static void die(const char *what, int rc)
{
  fprintf(stderr, "repair_bench: %s: %s\n", what, replicate_strerror(rc));
  exit(2);
}

static size_t collect(char *data, size_t size, size_t n, void *ud)
{
  return replicate_buf_append(ud, data, size * n) ? 0 : size * n;
}

/* GET url + path into *b: the HTTP status, or 0. */
static long http_get(const char *url, const char *path, body *b)
{
  char full[8192];
  snprintf(full, sizeof full, "%s%s", url, path);
  CURL *c = curl_easy_init();
  long status = 0;
  curl_easy_setopt(c, CURLOPT_URL, full);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, b);
  if (curl_easy_perform(c) == CURLE_OK)
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(c);
  return status;
}

/* The repair source: GET from A, counting what comes back. */
static int source_get(void *ctx, const char *path, replicate_tag_kind kind, uint8_t **out,
                      size_t *len, char *why, size_t why_len)
{
  (void)kind;
  upstream *u = ctx;
  body b = {0};
  long status = http_get(u->url, path, &b);
  u->requests++;
  u->bytes += b.len;
  if (status != 200) {
    snprintf(why, why_len, "HTTP %ld for %s", status, path);
    free(b.data);
    return EIO;
  }
  *out = b.data;
  *len = b.len;
  return 0;
}

/* Directory a: one base patch of n random pages. */
static void make_image(const char *a, uint64_t n)
{
  loom_store *s;
  int rc = loom_store_open(a, LOOM_CREATE, NULL, &s);
  if (!rc)
    rc = loom_store_ensure_history(s);
  if (rc)
    die(a, rc);
  uint8_t *page = malloc(PS);
  loom_patch_header h = {.page_count = n, .flags = LOOM_PATCH_BASE};
  loom_store_position(s, &h.before);
  h.after = (loom_position){.epoch = h.before.epoch, .seq = 1, .pages = n};
  uint64_t seed = rng;
  for (uint64_t i = 0; i < n; i++) { /* the checksum first: the same pages twice */
    for (size_t b = 0; b < PS; b += 8) {
      uint64_t v = rng_next();
      memcpy(page + b, &v, 8);
    }
    h.after.checksum += loom_page_hash(i, page);
  }
  rng = seed;
  loom_patch *p;
  if ((rc = loom_store_patch_begin(s, &h, &p)))
    die("patch", rc);
  for (uint64_t i = 0; i < n && !rc; i++) {
    for (size_t b = 0; b < PS; b += 8) {
      uint64_t v = rng_next();
      memcpy(page + b, &v, 8);
    }
    rc = loom_patch_add(p, i, page);
  }
  if (rc || (rc = loom_patch_commit(p)) || (rc = loom_store_sync(s)))
    die("base patch", rc);
  char b[512];
  snprintf(b, sizeof b, "%s.b", a);
  if ((rc = loom_store_backup(s, b)))
    die("copy to B", rc);
  loom_store_close(s);
  free(page);
}

/* One byte of each of the k pages bad[] flipped in B's image file. */
static void rot(const char *bdir, uint64_t *bad, uint64_t k, uint64_t n)
{
  char path[512];
  snprintf(path, sizeof path, "%s/image", bdir);
  int fd = open(path, O_RDWR);
  if (fd < 0)
    die(path, errno);
  for (uint64_t i = 0; i < k; i++) {
    uint64_t p;
    bool again;
    do { /* distinct pages */
      p = rng_next() % n;
      again = false;
      for (uint64_t j = 0; j < i; j++)
        again |= bad[j] == p;
    } while (again);
    bad[i] = p;
    uint8_t byte;
    off_t off = (off_t)(p * PS + rng_next() % PS);
    if (pread(fd, &byte, 1, off) != 1)
      die("pread", errno);
    byte ^= 0x10;
    if (pwrite(fd, &byte, 1, off) != 1)
      die("pwrite", errno);
  }
  fsync(fd);
  close(fd);
}

static int cmp_u64(const void *x, const void *y)
{
  uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
  return a < b ? -1 : a > b;
}

static void repair_k(upstream *u, const char *bdir, uint64_t k, uint64_t n)
{
  uint64_t *bad = malloc((size_t)k * sizeof *bad);
  rot(bdir, bad, k, n);
  qsort(bad, (size_t)k, sizeof *bad, cmp_u64);
  loom_store *b;
  int rc = loom_store_open(bdir, 0, NULL, &b);
  if (rc)
    die(bdir, rc);
  u->bytes = u->requests = 0;
  char why[256] = "";
  uint64_t moved = 0;
  double t0 = now_s();
  rc = replicate_repair_from(b, &(replicate_repair_source){source_get, u}, bad, k, &moved,
                             why, sizeof why);
  double took = now_s() - t0;
  uint64_t checksum, first_bad = UINT64_MAX;
  if (!rc)
    rc = replicate_pages_readback(b, bad, k, &checksum, &first_bad);
  if (rc == REPLICATE_ETOOBIG)
    printf("%7" PRIu64 " | refused: %s\n", k, why);
  else if (rc || first_bad != UINT64_MAX)
    die(why[0] ? why : "repair", rc ? rc : REPLICATE_EPAGE_HASH);
  else
    printf("%7" PRIu64 " | %7" PRIu64 " | %13" PRIu64 " | %7.3f | %8" PRIu64 " | %8.2f\n", k,
           moved, u->bytes, took, u->requests,
           (double)u->bytes / ((double)k * PS));
  loom_store_close(b);
  free(bad);
}

int main(int argc, char **argv)
{
  uint64_t n = 65536;
  const char *dir = "/tmp";
  char ks[256] = "1,100,4096,10000";
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--pages") && i + 1 < argc)
      n = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
      dir = argv[++i];
    else if (!strcmp(argv[i], "--k") && i + 1 < argc)
      snprintf(ks, sizeof ks, "%s", argv[++i]);
    else {
      fprintf(stderr, "usage: repair_bench [--pages N] [--dir DIR] [--k K,K,...]\n");
      return 2;
    }
  }
  curl_global_init(CURL_GLOBAL_ALL);
  char a[256], b[300];
  snprintf(a, sizeof a, "%s/repair_bench.%d", dir, (int)getpid());
  snprintf(b, sizeof b, "%s.b", a);
  double t0 = now_s();
  make_image(a, n);
  printf("image: %" PRIu64 " pages (%.0f MiB), written and copied in %.1f s\n", n,
         (double)n * PS / 1048576.0, now_s() - t0);

  http_server_options o = {.role = HTTP_ROLE_STANDBY, .dir = a, .listen_host = "127.0.0.1"};
  http_server *server;
  int rc = http_server_start(&o, &server);
  if (rc)
    die("server", rc);
  upstream u;
  snprintf(u.url, sizeof u.url, "http://127.0.0.1:%u", (unsigned)http_server_port(server));

  printf("\n      k |   moved |  bytes (wire) | seconds | requests | bytes/(k x 16 KiB)\n");
  for (char *t = strtok(ks, ","); t; t = strtok(NULL, ","))
    repair_k(&u, b, strtoull(t, NULL, 10), n);

  body whole = {0};
  t0 = now_s();
  long status = http_get(u.url, "/v1/backup", &whole);
  double took = now_s() - t0;
  printf("\nfull image (GET /v1/backup, what a base image moves): %zu bytes in %.3f s "
         "(HTTP %ld)\n", whole.len, took, status);
  free(whole.data);
  http_server_stop(server);
  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", a, b);
  if (system(cmd) != 0)
    fprintf(stderr, "repair_bench: could not remove %s\n", a);
  curl_global_cleanup();
  return 0;
}
