/*
 * base_scratch_bench.c: the memory an archive base takes of an image that
 * does not compress (random pages), sealed in memory against sealed into
 * a scratch file (replicate_archiver_options.scratch_dir; docs/ARCHIVE.md
 * W2, docs/BENCHMARKS.md section 14).
 *
 *   base_scratch_bench [--pages N] [--rounds R] [--dir DIR]
 *
 * Each run is a child process of its own: it makes an image of N random
 * pages (default 16,384: 256 MiB), starts an archiver to file://DIR/arc
 * on it (one way or the other) and waits for its first base; a thread
 * samples the child's RssAnon (/proc/self/status) every 5 ms from before
 * the archiver starts, so the figure is the base's anonymous memory on
 * top of the arena (mapped and touched before). The two ways alternate,
 * R rounds; prints each run and the medians. (An image up to 64 MiB,
 * REPLICATE_ARCHIVE_BASE_MEMORY_DEFAULT, is sealed in memory either way.)
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "archive.h"
#include "loom.h"

static double now_s(void)
{
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static long rss_anon_kib(void)
{
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kib = -1;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "RssAnon: %ld kB", &kib) == 1)
      break;
  if (f)
    fclose(f);
  return kib;
}

static atomic_long peak_kib;
static atomic_bool sampling;

static void *sampler(void *arg)
{
  (void)arg;
  while (atomic_load(&sampling)) {
    long k = rss_anon_kib();
    if (k > atomic_load(&peak_kib))
      atomic_store(&peak_kib, k);
    struct timespec p = {0, 5 * 1000 * 1000}; /* the sampling period */
    nanosleep(&p, NULL);
  }
  return NULL;
}

static void die(const char *what, int rc)
{
  fprintf(stderr, "base_scratch_bench: %s: %s\n", what, replicate_strerror(rc));
  exit(1);
}

/* One run in this (child) process: prints "MiB-before MiB-peak seconds". */
static void run(const char *dir, uint64_t pages, int scratch)
{
  char img[700], arc[700], url[800];
  snprintf(img, sizeof img, "%s/img", dir);
  snprintf(arc, sizeof arc, "%s/arc", dir);
  snprintf(url, sizeof url, "file://%s", arc);
  if (mkdir(arc, 0700) != 0)
    die("mkdir", errno);
  loom *l;
  int rc = loom_open(img, &(loom_options){.flags = LOOM_CREATE, .arena_pages = pages + 64}, &l);
  if (rc)
    die("open", rc);
  uint8_t *b = loom_base(l);
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (uint64_t i = 0; i < pages * LOOM_PAGE_SIZE / 8; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    memcpy(b + i * 8, &x, 8);
  }
  if ((rc = loom_save(l, pages, pages + 64)))
    die("save", rc);
  replicate_archiver_options ao = {
      .access = {.url = url},
      .store = loom_get_store(l),
      .interval_seconds = 0.05,
      .writer_id = "bench",
      .scratch_dir = scratch ? img : NULL,
  };
  long before = rss_anon_kib();
  atomic_store(&peak_kib, before);
  atomic_store(&sampling, true);
  pthread_t t;
  if (pthread_create(&t, NULL, sampler, NULL) != 0)
    die("sampler", errno);
  double t0 = now_s();
  replicate_archiver *ar;
  if ((rc = replicate_archiver_start(&ao, &ar)))
    die("archiver", rc);
  replicate_archive_status st = {0};
  while (st.bases < 1 && now_s() - t0 < 120 && !st.stopped) {
    replicate_archiver_status(ar, &st);
    struct timespec p = {0, 10 * 1000 * 1000}; /* poll, deadline above */
    nanosleep(&p, NULL);
  }
  double secs = now_s() - t0;
  atomic_store(&sampling, false);
  pthread_join(t, NULL);
  if (st.bases < 1) {
    fprintf(stderr, "base_scratch_bench: no base: %s\n", st.last_error);
    exit(1);
  }
  replicate_archiver_stop(ar);
  loom_close(l);
  printf("%ld %ld %.2f\n", before >> 10, atomic_load(&peak_kib) >> 10, secs);
}

/* A run's directory, with what it left (the image, the archive). */
static void remove_dir(const char *dir)
{
  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf -- '%s'", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "base_scratch_bench: could not remove %s\n", dir);
}

static int cmp_long(const void *a, const void *b)
{
  long x = *(const long *)a, y = *(const long *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
  uint64_t pages = 16384;
  int rounds = 3;
  const char *base = "/tmp";
  for (int i = 1; i < argc; i += 2) {
    if (i + 1 == argc) {
      fprintf(stderr, "usage: base_scratch_bench [--pages N] [--rounds R] [--dir DIR]\n");
      return 2;
    } else if (!strcmp(argv[i], "--pages"))
      pages = strtoull(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--rounds"))
      rounds = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--dir"))
      base = argv[i + 1];
    else {
      fprintf(stderr, "usage: base_scratch_bench [--pages N] [--rounds R] [--dir DIR]\n");
      return 2;
    }
  }
  if (rounds < 1 || rounds > 50 || pages < 1) {
    fprintf(stderr, "base_scratch_bench: --rounds 1..50, --pages >= 1\n");
    return 2;
  }
  printf("# an image of %llu random pages (%llu MiB)\n", (unsigned long long)pages,
         (unsigned long long)(pages * LOOM_PAGE_SIZE >> 20));
  long extra[2][50];
  const char *names[2] = {"in memory", "scratch file"};
  for (int r = 0; r < rounds; r++)
    for (int way = 0; way < 2; way++) {
      char dir[600];
      snprintf(dir, sizeof dir, "%s/loomship-basescratch-XXXXXX", base);
      if (!mkdtemp(dir))
        die("mkdtemp", errno);
      int fds[2];
      if (pipe(fds) != 0) {
        int e = errno;
        remove_dir(dir);
        die("pipe", e);
      }
      fflush(stdout);
      pid_t pid = fork();
      if (pid < 0) {
        int e = errno;
        remove_dir(dir);
        die("fork", e);
      }
      if (pid == 0) {
        dup2(fds[1], 1);
        run(dir, pages, way);
        fflush(stdout);
        _exit(0);
      }
      close(fds[1]);
      char out[128] = "";
      FILE *f = fdopen(fds[0], "r");
      if (!f || !fgets(out, sizeof out, f))
        out[0] = '\0';
      if (f)
        fclose(f);
      int status = 0;
      pid_t waited = waitpid(pid, &status, 0);
      remove_dir(dir);
      long before, peak;
      double secs;
      if (waited != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0 ||
          sscanf(out, "%ld %ld %lf", &before, &peak, &secs) != 3) {
        fprintf(stderr, "base_scratch_bench: run failed\n");
        return 1;
      }
      extra[way][r] = peak - before;
      printf("%-12s anonymous before %5ld MiB, peak %5ld MiB: the base's %5ld MiB, %.1f s\n",
             names[way], before, peak, peak - before, secs);
    }
  for (int way = 0; way < 2; way++) {
    qsort(extra[way], (size_t)rounds, sizeof **extra, cmp_long);
    printf("# median, %s: %ld MiB of anonymous memory for the base\n", names[way],
           extra[way][rounds / 2]);
  }
  return 0;
}
