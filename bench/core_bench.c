/*
 * core_bench.c: the engine against the physical limits measured in the same
 * run. Prints one table; every figure is a median over repeats, with min and
 * max, and a ratio to its reference.
 *
 *   first write   ns per first write to a clean page, per tracker, against
 *                 (a) a write to an untracked, populated page and (b) the bare
 *                 userfaultfd WP_ASYNC mechanism (no loom around it)
 *   collect       time to find and re-arm the dirty pages at save
 *   save          loom_save latency for 1 / 64 / 4,096 / 65,536 dirty pages
 *                 (inline apply, and LOOM_APPLY_ASYNC returning at the commit
 *                 point) against pwrite + fdatasync of the same bytes
 *   commit log    back-to-back saves of 1 and 64 pages (checkpoint thread)
 *                 against a back-to-back pwrite + fdatasync loop (in place,
 *                 and a record's bytes around a 64 MiB ring): p50 and
 *                 rate; recovery of a full log against reading it once
 *   open          opening a 1 GiB image, demand-paged and copied in
 *
 * Usage: core_bench [--quick] [--log] [--dir DIR]   (--log: the commit log's
 * benches only)   (DIR: a scratch directory on the
 * disk to measure; default $TMPDIR or /tmp)
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "loom.h"
#include "benchloom.h"
#include "benchutil.h"

#define PS ((uint64_t)LOOM_PAGE_SIZE)
#define MAXREP 32

static const char *scratch_root;
static int quick, log_only;

static char *scratch(const char *tag)
{
  size_t len = strlen(scratch_root) + 64;
  char *p = malloc(len);
  if (!p) {
    perror("malloc");
    exit(1);
  }
  snprintf(p, len, "%s/loombench-%s-XXXXXX", scratch_root, tag);
  if (!mkdtemp(p)) {
    perror("mkdtemp");
    exit(1);
  }
  return p;
}

static void rmrf(char *p)
{
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", p);
  if (system(cmd) != 0)
    fprintf(stderr, "cannot remove %s\n", p);
  free(p);
}

static void die(const char *what, int rc)
{
  fprintf(stderr, "core_bench: %s: %s\n", what, loom_strerror(rc));
  exit(1);
}

static void row(const char *what, const char *unit, stat3 s, const char *ref,
                double ref_median)
{
  printf("| %-44s | %10.2f | %10.2f | %10.2f | %-6s |", what, s.median, s.min,
         s.max, unit);
  if (ref)
    printf(" %8.2fx %-26s |\n", ref_median > 0 ? s.median / ref_median : 0, ref);
  else
    printf(" %9s %-26s |\n", "", "");
}

/* ---------------------------------------------------------------------- */
/* The bare mechanism: userfaultfd WP_ASYNC on populated anonymous memory. */

#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif

/* ns per first write to n pages; -1 if the kernel lacks the feature. */
static double bare_uffd_write_ns(uint64_t n)
{
  int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (fd < 0)
    return -1;
  struct uffdio_api api = {.api = UFFD_API,
                           .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED};
  if (ioctl(fd, UFFDIO_API, &api) < 0) {
    close(fd);
    return -1;
  }
  uint8_t *p = mmap(NULL, n * PS, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  memset(p, 1, n * PS);
  struct uffdio_register reg = {.range = {(uintptr_t)p, n * PS},
                                .mode = UFFDIO_REGISTER_MODE_WP};
  struct uffdio_writeprotect wp = {.range = {(uintptr_t)p, n * PS},
                                   .mode = UFFDIO_WRITEPROTECT_MODE_WP};
  double ns = -1;
  if (ioctl(fd, UFFDIO_REGISTER, &reg) == 0 &&
      ioctl(fd, UFFDIO_WRITEPROTECT, &wp) == 0) {
    double t0 = now_s();
    for (uint64_t i = 0; i < n; i++)
      p[i * PS + 64] = 2;
    ns = (now_s() - t0) * 1e9 / (double)n;
  }
  munmap(p, n * PS);
  close(fd);
  return ns;
}

static double plain_write_ns(uint64_t n)
{
  uint8_t *p = mmap(NULL, n * PS, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  memset(p, 1, n * PS);
  double t0 = now_s();
  for (uint64_t i = 0; i < n; i++)
    ((volatile uint8_t *)p)[i * PS + 64] = 2;
  double ns = (now_s() - t0) * 1e9 / (double)n;
  munmap(p, n * PS);
  return ns;
}

/* An arena whose first n pages are a copied-in, populated image. */
static loom *arena_with_image(const char *dir, uint64_t n, loom_tracker t,
                              unsigned flags)
{
  loom *l;
  int rc = bench_loom_with_image(dir, (loom_options){.flags = flags, .tracker = t}, n, 64, &l);
  if (rc)
    die("an arena with its image", rc);
  return l;
}

static void bench_first_write(void)
{
  uint64_t sizes[] = {1000, 10000, 100000};
  int reps = quick ? 3 : 7;
  printf("\n### First write to a clean page (ns/page; copied-in image, populated)\n\n");
  printf("| %-44s | %10s | %10s | %10s | %-6s | %9s %-26s |\n", "what", "median",
         "min", "max", "unit", "ratio", "to");
  printf("|---|---:|---:|---:|---|---:|---|\n");
  for (unsigned si = 0; si < sizeof sizes / sizeof *sizes; si++) {
    uint64_t n = sizes[si];
    if (quick && n > 10000)
      continue;
    double plain[MAXREP], bare[MAXREP], tr[2][MAXREP], collect[2][MAXREP];
    for (int r = 0; r < reps; r++) {
      plain[r] = plain_write_ns(n);
      bare[r] = bare_uffd_write_ns(n);
    }
    stat3 sp = summarize(plain, reps), sb = summarize(bare, reps);
    char what[128];
    snprintf(what, sizeof what, "untracked write, %llu pages", (unsigned long long)n);
    row(what, "ns", sp, NULL, 0);
    snprintf(what, sizeof what, "bare uffd WP_ASYNC, %llu pages", (unsigned long long)n);
    row(what, "ns", sb, "untracked", sp.median);
    loom_tracker ts[2] = {LOOM_TRACK_UFFD_ASYNC, LOOM_TRACK_MPROTECT};
    for (int t = 0; t < 2; t++) {
      char *dir = scratch("fw");
      loom *l = arena_with_image(dir, n, ts[t], LOOM_COPY_IN);
      uint8_t *b = loom_base(l);
      for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        for (uint64_t i = 0; i < n; i++)
          b[i * PS + 64] = (uint8_t)(r + 7);
        tr[t][r] = (now_s() - t0) * 1e9 / (double)n;
        /* The save collects and re-arms; time it as the collect cost
         * (it includes the commit of n pages, so only the uffd scan part
         * is reported below through a no-change save). */
        int rc = loom_save(l, n, n + 64);
        if (rc)
          die("save", rc);
        double t1 = now_s();
        rc = loom_save(l, n, n + 64); /* nothing written: scan + re-arm only */
        if (rc)
          die("save", rc);
        collect[t][r] = (now_s() - t1) * 1e6;
      }
      loom_close(l);
      rmrf(dir);
      stat3 s = summarize(tr[t], reps);
      snprintf(what, sizeof what, "loom %s, %llu pages", loom_tracker_name(ts[t]),
               (unsigned long long)n);
      row(what, "ns", s, "bare uffd", sb.median);
      stat3 c = summarize(collect[t], reps);
      snprintf(what, sizeof what, "  empty save (scan %s), %llu-page image",
               loom_tracker_name(ts[t]), (unsigned long long)n);
      row(what, "us", c, NULL, 0);
    }
  }
}

/* ---------------------------------------------------------------------- */
/* Save latency against pwrite + fdatasync of the same bytes. */

static double write_fdatasync_ms(int fd, const uint8_t *buf, uint64_t bytes)
{
  double t0 = now_s();
  if (pwrite(fd, buf, bytes, 0) != (ssize_t)bytes || fdatasync(fd) != 0) {
    perror("pwrite/fdatasync");
    exit(1);
  }
  return (now_s() - t0) * 1e3;
}

static void bench_save(void)
{
  uint64_t counts[] = {1, 64, 4096, 65536};
  printf("\n### Save latency (ms) against pwrite + fdatasync of the same bytes\n\n");
  printf("| %-44s | %10s | %10s | %10s | %-6s | %9s %-26s |\n", "what", "median",
         "min", "max", "unit", "ratio", "to");
  printf("|---|---:|---:|---:|---|---:|---|\n");
  for (unsigned ci = 0; ci < sizeof counts / sizeof *counts; ci++) {
    uint64_t k = counts[ci];
    if (quick && k > 4096)
      continue;
    int reps = k >= 65536 ? 3 : k >= 4096 ? 5 : 15;
    uint64_t image = k < 1024 ? 1024 : k + 64;
    /* The limit: the same bytes, written and made durable in one call. */
    char *ldir = scratch("limit");
    char path[4200];
    snprintf(path, sizeof path, "%s/f", ldir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    uint8_t *buf = malloc(k * PS);
    memset(buf, 0x5a, k * PS);
    double lim[MAXREP];
    write_fdatasync_ms(fd, buf, k * PS); /* allocate the blocks first */
    for (int r = 0; r < reps; r++) {
      buf[r] ^= 1;
      lim[r] = write_fdatasync_ms(fd, buf, k * PS);
    }
    close(fd);
    free(buf);
    rmrf(ldir);
    stat3 sl = summarize(lim, reps);
    char what[128];
    snprintf(what, sizeof what, "pwrite+fdatasync %llu x 16 KiB", (unsigned long long)k);
    row(what, "ms", sl, NULL, 0);
    unsigned modes[2] = {0, LOOM_APPLY_ASYNC};
    const char *names[2] = {"inline apply", "async apply"};
    for (int m = 0; m < 2; m++) {
      char *dir = scratch("save");
      loom *l = arena_with_image(dir, image, LOOM_TRACK_AUTO, LOOM_COPY_IN | modes[m]);
      uint8_t *b = loom_base(l);
      double lat[MAXREP], cycle[MAXREP];
      for (int r = 0; r < reps + 1; r++) {
        uint64_t stride = image / k;
        for (uint64_t i = 0; i < k; i++)
          b[i * stride * PS + (uint64_t)r * 8] ^= 0xff;
        double t0 = now_s();
        int rc = loom_save(l, image, image + 64);
        double t1 = now_s();
        if (!rc)
          rc = loom_store_sync(loom_get_store(l));
        double t2 = now_s();
        if (rc)
          die("save", rc);
        if (r > 0) { /* the first one warms the patch file's blocks */
          lat[r - 1] = (t1 - t0) * 1e3;
          cycle[r - 1] = (t2 - t0) * 1e3;
        }
      }
      loom_close(l);
      rmrf(dir);
      stat3 s = summarize(lat, reps);
      snprintf(what, sizeof what, "loom_save %llu pages, %s", (unsigned long long)k,
               names[m]);
      row(what, "ms", s, "write+fdatasync", sl.median);
      if (m == 1) {
        stat3 c = summarize(cycle, reps);
        snprintf(what, sizeof what, "  ... until the apply is durable too");
        row(what, "ms", c, "write+fdatasync", sl.median);
      }
    }
  }
}

/* ---------------------------------------------------------------------- */
/* The commit log (issue 14): back-to-back saves with the checkpoint thread
 * against a back-to-back pwrite + fdatasync loop of the same bytes, and
 * recovery of a full log against reading the log once. */

#define LOG_SAVES_MAX 4000

/* The two loops run in alternating chunks of LOG_CHUNK calls, so that a
 * shared disk's changing load weighs on both alike. */
#define LOG_CHUNK 50

typedef struct log_pair {
  int fd;            /* the limit's file */
  int ring_fd;       /* the ring limit's file (LOG_RING bytes) */
  uint8_t *buf;      /* a record's bytes (>= k pages) */
  uint64_t k, rec;   /* pages; a record's bytes, as the store lays it */
  uint64_t ring_at;  /* where the ring limit writes next */
  loom *l;
  double lim_s, save_s; /* time spent in each loop */
} log_pair;

/* The second limit: the same write + fdatasync, but of a record's bytes
 * (header block, pages, entries, rounded to 4 KiB) moving around a ring
 * the size of the store's log, as the commit log writes; the first
 * rewrites k pages in place, which this virtual disk flushes faster. */
#define LOG_RING (UINT64_C(64) << 20)

static double ring_write_fdatasync_ms(log_pair *p)
{
  if (p->ring_at + p->rec > LOG_RING)
    p->ring_at = 0;
  double t0 = now_s();
  if (pwrite(p->ring_fd, p->buf, p->rec, (off_t)p->ring_at) !=
          (ssize_t)p->rec ||
      fdatasync(p->ring_fd) != 0) {
    perror("ring pwrite/fdatasync");
    exit(1);
  }
  p->ring_at += p->rec;
  return (now_s() - t0) * 1e3;
}

static void log_pair_open(log_pair *p, const char *ldir, const char *dir,
                          uint64_t k)
{
  char path[4200], ring[4200];
  snprintf(path, sizeof path, "%s/f", ldir);
  snprintf(ring, sizeof ring, "%s/ring", ldir);
  p->k = k;
  p->rec = (4096 + k * PS + k * 16 + 8 + 4095) / 4096 * 4096;
  p->ring_at = 0;
  p->fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  p->ring_fd = open(ring, O_RDWR | O_CREAT | O_TRUNC, 0644);
  p->buf = malloc(p->rec);
  if (p->fd < 0 || p->ring_fd < 0 || !p->buf) {
    perror("limit");
    exit(1);
  }
  memset(p->buf, 0x5a, p->rec);
  write_fdatasync_ms(p->fd, p->buf, k * PS); /* allocate the blocks first */
  for (uint64_t at = 0; at + p->rec <= LOG_RING; at += p->rec)
    (void)ring_write_fdatasync_ms(p); /* and a lap of the ring's */
  p->ring_at = 0;
  p->l = arena_with_image(dir, 1024, LOOM_TRACK_AUTO,
                          LOOM_COPY_IN | LOOM_APPLY_ASYNC);
  p->lim_s = p->save_s = 0;
}

/* Save number r: k pages spread over the 1,024-page image. */
static double log_save_ms(log_pair *p, int r)
{
  uint8_t *b = loom_base(p->l);
  uint64_t stride = 1024 / p->k;
  for (uint64_t i = 0; i < p->k; i++)
    b[i * stride * PS + (uint64_t)(r % 2048) * 8] ^= 0xff;
  double t0 = now_s();
  int rc = loom_save(p->l, 1024, 1024 + 64);
  double ms = (now_s() - t0) * 1e3;
  if (rc)
    die("save", rc);
  return ms;
}

/* n of each, alternating chunks; per-call ms into lim, ring and lat. */
static void log_pair_run(log_pair *p, int n, double *lim, double *ring,
                         double *lat)
{
  /* A lap of the ring first: later records rewrite allocated blocks. */
  uint64_t lap = (UINT64_C(64) << 20) / (p->k * PS + 8192) + 1;
  for (uint64_t r = 0; r < lap; r++)
    (void)log_save_ms(p, (int)r);
  for (int at = 0; at < n; at += LOG_CHUNK) {
    int m = n - at < LOG_CHUNK ? n - at : LOG_CHUNK;
    double t0 = now_s();
    for (int r = at; r < at + m; r++) {
      p->buf[r % (p->k * PS)] ^= 1;
      lim[r] = write_fdatasync_ms(p->fd, p->buf, p->k * PS);
    }
    p->lim_s += now_s() - t0; /* (the rates: in place, and the saves) */
    for (int r = at; r < at + m; r++)
      ring[r] = ring_write_fdatasync_ms(p);
    double t1 = now_s();
    for (int r = at; r < at + m; r++)
      lat[r] = log_save_ms(p, r);
    p->save_s += now_s() - t1;
  }
}

static void bench_log_saves(void)
{
  uint64_t counts[] = {1, 64};
  int n = quick ? 300 : 1500;
  static double lim[LOG_SAVES_MAX], ring[LOG_SAVES_MAX], lat[LOG_SAVES_MAX];
  printf("\n### Commit log: back-to-back saves against a back-to-back "
         "pwrite + fdatasync loop (same bytes, alternating chunks of %d)\n\n",
         LOG_CHUNK);
  printf("| %-44s | %10s | %10s | %10s | %-6s | %9s %-26s |\n", "what", "median",
         "min", "max", "unit", "ratio", "to");
  printf("|---|---:|---:|---:|---|---:|---|\n");
  for (unsigned ci = 0; ci < sizeof counts / sizeof *counts; ci++) {
    uint64_t k = counts[ci];
    char *ldir = scratch("loglimit"), *dir = scratch("logsave");
    log_pair p;
    log_pair_open(&p, ldir, dir, k);
    log_pair_run(&p, n, lim, ring, lat);
    loom_log_stats st;
    loom_store_log_stats(loom_get_store(p.l), &st);
    loom_close(p.l);
    close(p.fd);
    close(p.ring_fd);
    free(p.buf);
    rmrf(ldir);
    rmrf(dir);
    stat3 sl = summarize(lim, n), sg = summarize(ring, n),
          ss = summarize(lat, n);
    char what[128];
    snprintf(what, sizeof what, "pwrite+fdatasync %llu x 16 KiB, p50",
             (unsigned long long)k);
    row(what, "ms", sl, NULL, 0);
    snprintf(what, sizeof what, "pwrite+fdatasync record, 64 MiB ring, p50");
    row(what, "ms", sg, "write+fdatasync p50", sl.median);
    snprintf(what, sizeof what, "loom_save %llu pages back to back, p50",
             (unsigned long long)k);
    row(what, "ms", ss, "write+fdatasync p50", sl.median);
    row(what, "ms", ss, "the ring's p50", sg.median);
    double lr = n / p.lim_s, sr = n / p.save_s;
    stat3 rl = {lr, lr, lr}, rs = {sr, sr, sr};
    snprintf(what, sizeof what, "pwrite+fdatasync %llu x 16 KiB, rate",
             (unsigned long long)k);
    row(what, "/s", rl, NULL, 0);
    snprintf(what, sizeof what, "loom_save %llu pages, sustained rate",
             (unsigned long long)k);
    row(what, "/s", rs, "write+fdatasync rate", lr);
    printf("|   (%llu checkpoints since open; %llu waits for log space) | | | | | | |\n",
           (unsigned long long)st.checkpoints, (unsigned long long)st.waits);
  }
}

/* A child fills the log (checkpoints deferred) and dies without closing,
 * as kill -9 would leave it; the parent times reading the log file once,
 * then the open that recovers it (replay: verify every record, merge them
 * into the image, fsync image and meta). One sample of each per round;
 * rounds: 3 (--quick) or 7, medians and the median of the ratios. */
static void log_recovery_round(char *dir, double *t_read, double *t_open,
                               uint64_t *bytes_read, uint64_t *commits)
{
  uint64_t k = 64, log_bytes = UINT64_C(64) << 20;
  pid_t pid = fork();
  if (pid == 0) {
    loom_options o = {.arena_pages = 1024 + 64, .tracker = LOOM_TRACK_AUTO,
                      .flags = LOOM_CREATE | LOOM_COPY_IN | LOOM_CHECKPOINT_DEFER,
                      .log_bytes = log_bytes};
    loom *l;
    if (loom_open(dir, &o, &l))
      _exit(1);
    uint8_t *b = loom_base(l);
    loom_log_stats st = {0};
    for (int r = 0; st.used + 2 * (k * PS + 8192) < log_bytes; r++) {
      for (uint64_t i = 0; i < k; i++)
        b[i * 16 * PS + (uint64_t)(r % 2048) * 8] ^= 0xff;
      if (loom_save(l, 1024, 1024 + 64))
        _exit(1);
      loom_store_log_stats(loom_get_store(l), &st);
    }
    _exit(0); /* no close: the records wait in the log */
  }
  int status;
  if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status))
    die("log fill", EIO);
  char path[4200];
  snprintf(path, sizeof path, "%s/log", dir);
  int fd = open(path, O_RDONLY);
  uint8_t *buf = malloc(1 << 20);
  double t0 = now_s();
  ssize_t got;
  *bytes_read = 0;
  while ((got = read(fd, buf, 1 << 20)) > 0)
    *bytes_read += (uint64_t)got;
  *t_read = (now_s() - t0) * 1e3;
  close(fd);
  free(buf);
  loom_store *s;
  t0 = now_s();
  int rc = loom_store_open(dir, 0, NULL, &s);
  *t_open = (now_s() - t0) * 1e3;
  if (rc)
    die("recover", rc);
  loom_position pos;
  loom_store_position(s, &pos);
  *commits = pos.seq;
  loom_store_close(s);
  rmrf(dir);
}

static void bench_log_recovery(void)
{
  enum { ROUNDS_MAX = 7 };
  int rounds = quick ? 3 : ROUNDS_MAX;
  double t_read[ROUNDS_MAX], t_open[ROUNDS_MAX], ratio[ROUNDS_MAX];
  uint64_t bytes = 0, commits = 0;
  for (int r = 0; r < rounds; r++) {
    char *dir = scratch("logrecover");
    log_recovery_round(dir, &t_read[r], &t_open[r], &bytes, &commits);
    ratio[r] = t_open[r] / t_read[r];
  }
  printf("\n### Commit log: recovery of a full 64 MiB log (kill without close; %d rounds)\n\n",
         rounds);
  printf("| %-44s | %10s | %10s | %10s | %-6s | %9s %-26s |\n", "what", "median",
         "min", "max", "unit", "ratio", "to");
  printf("|---|---:|---:|---:|---|---:|---|\n");
  stat3 r = summarize(t_read, rounds), o = summarize(t_open, rounds),
        q = summarize(ratio, rounds);
  char what[128];
  snprintf(what, sizeof what, "read the log once (%.0f MiB, cached)",
           (double)bytes / 1048576);
  row(what, "ms", r, NULL, 0);
  snprintf(what, sizeof what, "open: recover %llu commits", (unsigned long long)commits);
  row(what, "ms", o, "reading the log", r.median);
  row("  open / read, each round", "x", q, NULL, 0);
}

/* ---------------------------------------------------------------------- */
/* How save cost grows with the arena's size, for the same image and the
 * same dirty set: 1,024-page image, 64 pages changed per save, async apply
 * (as loomship primary), arenas of 1, 4 and 16 GiB (reserved address space;
 * only the image is populated). Reference: the 1 GiB arena. */

static void bench_arena_size(void)
{
  uint64_t arenas[] = {UINT64_C(1) << 16, UINT64_C(1) << 18, UINT64_C(1) << 20};
  uint64_t image = 1024, k = 64;
  int reps = quick ? 7 : 15;
  printf("\n### Save cost against arena size (1,024-page image, 64 pages changed, async apply)\n\n");
  printf("| %-44s | %10s | %10s | %10s | %-6s | %9s %-26s |\n", "what", "median",
         "min", "max", "unit", "ratio", "to");
  printf("|---|---:|---:|---:|---|---:|---|\n");
  double ref_save = 0, ref_empty = 0;
  for (unsigned ai = 0; ai < sizeof arenas / sizeof *arenas; ai++) {
    char *dir = scratch("arena");
    loom *l;
    int rc = bench_loom_with_image(dir, (loom_options){.flags = LOOM_APPLY_ASYNC}, image,
                                   arenas[ai] - image, &l);
    if (rc)
      die("an arena with its image", rc);
    uint8_t *b = loom_base(l);
    double lat[MAXREP], empty[MAXREP];
    for (int r = 0; r < reps + 1; r++) {
      for (uint64_t i = 0; i < k; i++)
        b[i * (image / k) * PS + (uint64_t)r * 8] ^= 0xff;
      double t0 = now_s();
      rc = loom_save(l, image, arenas[ai]);
      double t1 = now_s();
      if (!rc)
        rc = loom_store_sync(loom_get_store(l));
      double t2 = now_s();
      if (!rc)
        rc = loom_save(l, image, arenas[ai]); /* nothing changed */
      double t3 = now_s();
      if (rc)
        die("save", rc);
      if (r > 0) {
        lat[r - 1] = (t1 - t0) * 1e3;
        empty[r - 1] = (t3 - t2) * 1e3;
      }
    }
    loom_close(l);
    rmrf(dir);
    stat3 s = summarize(lat, reps), e = summarize(empty, reps);
    if (ai == 0) {
      ref_save = s.median;
      ref_empty = e.median;
    }
    char what[128];
    snprintf(what, sizeof what, "save of 64 pages, %llu GiB arena",
             (unsigned long long)(arenas[ai] >> 16));
    row(what, "ms", s, "the 1 GiB arena", ref_save);
    snprintf(what, sizeof what, "empty save, %llu GiB arena",
             (unsigned long long)(arenas[ai] >> 16));
    row(what, "ms", e, "the 1 GiB arena", ref_empty);
  }
}

/* ---------------------------------------------------------------------- */
/* Open time of a 1 GiB image. */

static void bench_open(void)
{
  uint64_t pages = quick ? 4096 : 65536; /* 64 MiB / 1 GiB */
  int reps = 5;
  char *dir = scratch("open");
  loom *l = arena_with_image(dir, pages, LOOM_TRACK_AUTO, LOOM_COPY_IN);
  loom_close(l);
  printf("\n### Open a %llu MiB image (page cache warm)\n\n",
         (unsigned long long)(pages * PS >> 20));
  printf("| %-44s | %10s | %10s | %10s | %-6s | %9s %-26s |\n", "what", "median",
         "min", "max", "unit", "ratio", "to");
  printf("|---|---:|---:|---:|---|---:|---|\n");
  unsigned modes[2] = {0, LOOM_COPY_IN};
  const char *names[2] = {"demand-paged", "copied in"};
  stat3 first = {0};
  for (int m = 0; m < 2; m++) {
    double t[MAXREP];
    for (int r = 0; r < reps; r++) {
      loom_options o = {.arena_pages = pages + 64, .flags = modes[m]};
      double t0 = now_s();
      int rc = loom_open(dir, &o, &l);
      t[r] = (now_s() - t0) * 1e3;
      if (rc)
        die("open", rc);
      loom_close(l);
    }
    stat3 s = summarize(t, reps);
    char what[128];
    snprintf(what, sizeof what, "loom_open, %s", names[m]);
    row(what, "ms", s, m ? "demand-paged" : NULL, first.median);
    if (!m)
      first = s;
  }
  rmrf(dir);
}

int main(int argc, char **argv)
{
  scratch_root = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--quick"))
      quick = 1;
    else if (!strcmp(argv[i], "--log"))
      log_only = 1;
    else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
      scratch_root = argv[++i];
    else {
      fprintf(stderr, "usage: core_bench [--quick] [--log] [--dir DIR]\n");
      return 2;
    }
  }
  printf("## core_bench%s (scratch: %s)\n", quick ? " --quick" : "", scratch_root);
  if (log_only) {
    bench_log_saves();
    bench_log_recovery();
    return 0;
  }
  bench_first_write();
  bench_save();
  bench_log_saves();
  bench_log_recovery();
  bench_arena_size();
  bench_open();
  return 0;
}
