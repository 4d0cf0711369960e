/*
 * frame_bench.c: what the frame codec costs and saves.
 *
 * For each workload (64 random bytes changed per page at random offsets;
 * whole pages rewritten with random data; new pages of random data
 * appended) and each frame size (64 and 4096 pages), it encodes the
 * commit as replication does (XOR deltas against the previous versions,
 * then zstd) and as whole pages through the same zstd at the same level,
 * in the same run, and decodes both (decompress, check, rebuild each page
 * as a standby would: XOR with its old version). Speeds are raw dirty bytes
 * (pages * 16 KiB) per second; every figure is the median of the repeats.
 * The HMAC-SHA256 tag of each encoded frame (--frame-key-file, docs/AUTH.md)
 * is timed in the same loop: "tag us" and its share of the encode time
 * (goal: <= 5 %).
 *
 *   frame_bench [--level N] [--repeats N] [--check]
 *
 * --check exits 1 unless the 64-bytes workload meets its targets: wire
 * bytes <= raw / 40, >= 15x fewer wire bytes than whole pages, encoding
 * faster than 1 GB/s.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "replicate.h"

#define PS LOOM_PAGE_SIZE

static uint64_t rng_state = 0x5eed;

static uint64_t rng_next(void)
{
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static void rng_fill(uint8_t *p, size_t len)
{
  for (size_t i = 0; i + 8 <= len; i += 8) {
    uint64_t v = rng_next();
    memcpy(p + i, &v, 8);
  }
}

static void *xmalloc(size_t n)
{
  void *p = malloc(n);
  if (p == NULL) {
    fprintf(stderr, "frame_bench: out of memory\n");
    exit(2);
  }
  return p;
}

static double now_s(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int compare_double(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
  qsort(v, (size_t)n, sizeof *v, compare_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void die(const char *what, int rc)
{
  fprintf(stderr, "frame_bench: %s: %s\n", what, replicate_strerror(rc));
  exit(2);
}

typedef enum workload { WL_SPARSE, WL_REWRITE, WL_APPEND } workload;
static const char *const workload_names[] = {"64 bytes/page", "rewrite",
                                             "append"};

/* One commit of n pages: old and new versions, hashes, sources. */
typedef struct commit {
  size_t n;
  uint8_t *old_pages;
  uint8_t *new_pages;
  replicate_page_src *deltas; /* with old versions where they exist */
  replicate_page_src *wholes; /* without: every page whole */
  replicate_frame_info info;
} commit;

static void commit_make(commit *c, workload w, size_t n)
{
  c->n = n;
  c->old_pages = xmalloc(n * PS);
  c->new_pages = xmalloc(n * PS);
  c->deltas = xmalloc(n * sizeof *c->deltas);
  c->wholes = xmalloc(n * sizeof *c->wholes);
  rng_fill(c->old_pages, n * PS);
  uint64_t before_pages = w == WL_APPEND ? n : 2 * n;
  for (size_t i = 0; i < n; i++) {
    uint8_t *page = c->new_pages + i * PS;
    const uint8_t *old_page = c->old_pages + i * PS;
    switch (w) {
    case WL_SPARSE:
      memcpy(page, old_page, PS);
      for (int k = 0; k < 64; k++)
        page[rng_next() % PS] ^= (uint8_t)(1 + rng_next() % 255);
      break;
    case WL_REWRITE:
    case WL_APPEND:
      rng_fill(page, PS);
      break;
    }
    uint64_t number = w == WL_APPEND ? before_pages + i : 2 * i;
    uint64_t hash = loom_page_hash(number, page);
    c->deltas[i] = (replicate_page_src){number, hash, page,
                                        w == WL_APPEND ? NULL : old_page};
    c->wholes[i] = (replicate_page_src){number, hash, page, NULL};
  }
  c->info = (replicate_frame_info){
      .kind = REPLICATE_KIND_COMMIT,
      .epoch = 1,
      .before = {.epoch = 1, .seq = 41, .checksum = 0x1234,
                 .pages = before_pages},
      .after = {.epoch = 1, .seq = 42, .checksum = 0x5678,
                .pages = w == WL_APPEND ? before_pages + n : before_pages},
      .commit_time_ns = 1,
      .first_commit_time_ns = 1,
  };
}

static void commit_free(commit *c)
{
  free(c->old_pages);
  free(c->new_pages);
  free(c->deltas);
  free(c->wholes);
}

typedef struct measure {
  size_t wire;
  double encode_s;
  double decode_s;
  double tag_s;      /* the frame's HMAC tag, when a key is given */
} measure;

/* A random frame key in a private temporary file, loaded. */
static replicate_frame_key *bench_key(void)
{
  char path[] = "/tmp/frame_bench_key_XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) die("key file", 5);
  char text[66];
  for (int i = 0; i < 32; i++) snprintf(text + 2 * i, 3, "%02x", (unsigned)(rng_next() & 255));
  text[64] = '\n';
  if (write(fd, text, 65) != 65) die("key file", 5);
  close(fd);
  replicate_frame_key *k = NULL;
  char why[256];
  int rc = replicate_frame_key_load(path, &k, why, sizeof why);
  unlink(path);
  if (rc != 0) die(why, rc);
  return k;
}

/* Encode with srcs, then decode and rebuild every page; median times. */
static measure run(const commit *c, const replicate_page_src *srcs,
                   replicate_encoder *enc, replicate_decoder *dec,
                   const replicate_frame_key *key, int repeats, uint8_t *rebuilt)
{
  double *enc_t = xmalloc((size_t)repeats * sizeof *enc_t);
  double *dec_t = xmalloc((size_t)repeats * sizeof *dec_t);
  double *tag_t = xmalloc((size_t)repeats * sizeof *tag_t);
  replicate_buf buf = {0};
  measure m = {0};
  for (int r = 0; r < repeats; r++) {
    double t0 = now_s();
    int rc = replicate_frame_encode(enc, &c->info, srcs, c->n, &buf);
    double t1 = now_s();
    if (rc != 0) die("encode", rc);
    char tag[REPLICATE_TAG_TEXT];
    if (key && (rc = replicate_tag_make(key, REPLICATE_TAG_FRAMES, buf.data, buf.len, tag)))
      die("tag", rc);
    tag_t[r] = now_s() - t1;
    t1 = now_s();
    replicate_frame f;
    rc = replicate_frame_decode(dec, buf.data, buf.len, &f);
    if (rc != 0) die("decode", rc);
    for (uint64_t i = 0; i < f.info.page_count; i++) {
      replicate_page page;
      replicate_frame_get_page(&f, i, &page);
      uint8_t *out = rebuilt + i * PS;
      if (page.encoding == REPLICATE_PAGE_XOR) {
        const uint8_t *old_page = c->old_pages + i * PS;
        for (size_t b = 0; b < PS; b += 8) {
          uint64_t x, y;
          memcpy(&x, page.contents + b, 8);
          memcpy(&y, old_page + b, 8);
          x ^= y;
          memcpy(out + b, &x, 8);
        }
      } else {
        memcpy(out, page.contents, PS);
      }
    }
    double t2 = now_s();
    if (memcmp(rebuilt, c->new_pages, c->n * PS) != 0) {
      fprintf(stderr, "frame_bench: rebuilt pages differ\n");
      exit(2);
    }
    enc_t[r] = t1 - t0;
    dec_t[r] = t2 - t1;
    m.wire = buf.len;
  }
  m.encode_s = median(enc_t, repeats);
  m.decode_s = median(dec_t, repeats);
  m.tag_s = median(tag_t, repeats);
  free(enc_t);
  free(dec_t);
  free(tag_t);
  replicate_buf_free(&buf);
  return m;
}

int main(int argc, char **argv)
{
  int level = 1, repeats = 0;
  bool check = false;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--level") && i + 1 < argc) level = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--repeats") && i + 1 < argc) repeats = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--check")) check = true;
    else {
      fprintf(stderr, "usage: frame_bench [--level N] [--repeats N] [--check]\n");
      return 2;
    }
  }
  replicate_encoder *enc;
  replicate_decoder *dec;
  int rc = replicate_encoder_new(level, &enc);
  if (rc != 0) die("encoder", rc);
  rc = replicate_decoder_new(NULL, &dec);
  if (rc != 0) die("decoder", rc);

  replicate_frame_key *key = bench_key();
  printf("frame codec, zstd level %d; medians; MB/s of raw dirty bytes\n\n", level);
  printf("%-14s %5s %11s | %10s %7s %9s %9s | %10s %9s %9s | %7s | %8s %7s\n",
         "workload", "pages", "raw bytes", "wire", "raw/wire", "enc MB/s",
         "dec MB/s", "whole wire", "enc MB/s", "dec MB/s", "whole/wire", "tag us",
         "tag/enc");
  bool ok = true;
  static const size_t sizes[] = {64, 4096};
  for (int w = WL_SPARSE; w <= WL_APPEND; w++) {
    for (size_t s = 0; s < 2; s++) {
      size_t n = sizes[s];
      int reps = repeats > 0 ? repeats : n <= 64 ? 101 : 11;
      commit c;
      commit_make(&c, (workload)w, n);
      uint8_t *rebuilt = xmalloc(n * PS);
      measure delta = run(&c, c.deltas, enc, dec, key, reps, rebuilt);
      measure whole = run(&c, c.wholes, enc, dec, NULL, reps, rebuilt);
      double raw = (double)(n * PS);
      double enc_mbs = raw / delta.encode_s / 1e6;
      printf("%-14s %5zu %11.0f | %10zu %7.1f %9.0f %9.0f | %10zu %9.0f %9.0f | %7.1f | "
             "%8.1f %6.2f%%\n",
             workload_names[w], n, raw, delta.wire, raw / (double)delta.wire,
             enc_mbs, raw / delta.decode_s / 1e6, whole.wire,
             raw / whole.encode_s / 1e6, raw / whole.decode_s / 1e6,
             (double)whole.wire / (double)delta.wire, delta.tag_s * 1e6,
             100.0 * delta.tag_s / delta.encode_s);
      if (w == WL_SPARSE) {
        ok &= (double)delta.wire * 40 <= raw;
        ok &= whole.wire >= 15 * delta.wire;
        ok &= enc_mbs > 1000;
      }
      free(rebuilt);
      commit_free(&c);
    }
  }
  printf("\ntargets (64 bytes/page): wire <= raw/40, whole/wire >= 15, "
         "encode > 1000 MB/s: %s\n", ok ? "met" : "NOT met");
  replicate_encoder_free(enc);
  replicate_decoder_free(dec);
  replicate_frame_key_free(key);
  return check && !ok ? 1 : 0;
}
