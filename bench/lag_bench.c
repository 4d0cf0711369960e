/*
 * lag_bench.c: replication lag, sustained rate and catch-up, measured on
 * 127.0.0.1 with an in-process primary (loom + replication log + shipper)
 * and in-process standbys (http/ server in the standby role, each with its
 * own directory, receive log and applier thread).
 *
 * The image is a table of P pages of random bytes (default 4,096: 64 MiB);
 * each save changes a run of 64 random bytes at a random offset in K
 * distinct random pages (what `loomship primary` does, and what the
 * PostgreSQL comparison does to its 16 KiB values). The standby starts from
 * a backup of the primary's image (loom_store_backup), so no base image is
 * shipped during the measurement.
 *
 * Timestamps: the commit hook records the local commit point of each seq;
 * each standby's on_position (receiver.h, through http_server_options)
 * records when each seq became received (durable in the standby's receive
 * log) and applied (in its image: visible), as it happens. (Before, a
 * thread polled the status every 20 us: 0.3-0.4 of this machine's two
 * cores, and up to its period late.) The
 * reference is the local save latency (loom_save, LOOM_APPLY_ASYNC as in
 * `loomship primary`) measured in the same run.
 *
 * Modes:
 *   lag_bench [opts] lag       open-loop saves at each --rates value for
 *                              --seconds, --repeats times: lag p50/p99
 *   lag_bench [opts] maxrate   open-loop at 100, 200, 400, ... saves/s until
 *                              the standby no longer keeps up (see below)
 *   lag_bench [opts] catchup   (--repeats times) a standby stopped while the primary changes
 *                              1 % of its pages (64 bytes each) in 10
 *                              saves, then restarted: time until applied
 *                              and bytes on the wire; with --rsync-dir D it
 *                              also writes D/old.img and D/new.img (the
 *                              image before and after) for rsync_bench.sh
 *   lag_bench [opts] absorb    (--repeats times) the standby stopped while
 *                              the primary makes --count saves (1000), then
 *                              restarted and sent those frames back to back
 *                              by one client: how fast one standby takes
 *                              frames, apart from how fast the primary
 *                              makes them
 * Options: --pages K (changed per save, 64) --image-pages P (4096)
 *   --rates R1,R2 (10,100,1000) --seconds S (3) --repeats N (3) --sync N (0)
 *   --standbys M (1) --dir DIR ($TMPDIR or /tmp) --rsync-dir D
 *   --backoff-max S (0.05: the shipper's retry backoff, base 0.01 s; the
 *   shipper's own default is 0.1 s doubling up to 5 s, which would make
 *   the catch-up time mostly the wait for the next retry)
 *
 * Output: human-readable lines, and one "RESULT name median min max unit
 * reference ratio" line per figure for ./bench to collect.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "loom.h"
#include "receiver.h"
#include "replicate.h"
#include "server.h"

#define PS ((uint64_t)LOOM_PAGE_SIZE)
#include "benchutil.h"

#define RING (1u << 20)
#define MAX_STANDBYS 8
#define MAXREP 16

static void sleep_until(double t)
{
  double d = t - now_s();
  if (d <= 0)
    return;
  struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
  nanosleep(&ts, NULL);
}

static void result(const char *name, stat3 s, const char *unit, double ref, const char *refname)
{
  printf("RESULT %s %.6g %.6g %.6g %s %s=%.6g %.3g\n", name, s.median, s.min, s.max, unit,
         refname, ref, ref > 0 ? s.median / ref : 0.0);
  fflush(stdout);
}

static void die(const char *what, int rc)
{
  fprintf(stderr, "lag_bench: %s: %s (%d)\n", what, http_strerror(rc), rc);
  exit(1);
}

/* ---------------------------------------------------------------------- */

typedef struct bench {
  loom *l;
  replicate_log *log;
  replicate_shipper *shipper;
  http_server *standby[MAX_STANDBYS];
  uint16_t port[MAX_STANDBYS];
  char sdir[MAX_STANDBYS][600];
  char url[MAX_STANDBYS][64];
  const char *urlp[MAX_STANDBYS];
  int standbys;
  uint64_t image_pages, arena_pages;
  double *t_commit;                    /* [RING] by seq */
  double *t_hook;                      /* [RING] by seq: time in the shipper's
                                          on_commit (encode, log append
                                          (its fsync runs off the save
                                          path), sync wait) */
  double *t_recv[MAX_STANDBYS];        /* [RING] by seq */
  double *t_appl[MAX_STANDBYS];
  _Atomic uint64_t seen_recv[MAX_STANDBYS], seen_appl[MAX_STANDBYS];
  pthread_mutex_t srv_lock;            /* standby[] replaced in catchup */
  int index[MAX_STANDBYS];             /* on_standby_position's ctx */
  uint64_t rng;
  replicate_encoder *record_enc;       /* absorb: frames made in on_commit */
  replicate_buf *recorded;
  size_t nrecorded, record_cap;
} bench;

static bench B;

static uint64_t rnd(void)
{
  B.rng ^= B.rng << 13, B.rng ^= B.rng >> 7, B.rng ^= B.rng << 17;
  return B.rng;
}

static int on_commit(void *ctx, loom *l, const loom_commit *c)
{
  (void)ctx;
  double t = now_s();
  B.t_commit[c->after.seq % RING] = t;
  if (B.record_enc && B.nrecorded < B.record_cap) {
    replicate_buf *f = &B.recorded[B.nrecorded++];
    int rc = replicate_frame_encode_commit(B.record_enc, l, c, f);
    if (rc)
      return rc;
  }
  if (!B.shipper)
    return 0;
  int rc = replicate_shipper_on_commit(B.shipper, l, c);
  B.t_hook[c->after.seq % RING] = now_s() - t;
  return rc;
}

static void watermarks(void *ctx, uint64_t *low, uint64_t *high)
{
  (void)ctx;
  *low = B.image_pages;
  *high = B.arena_pages;
}

/* on_position (receiver.h) of standby *ctx, under its receiver's lock:
 * when each seq became received and applied. Calls for one standby never
 * overlap (that lock); a restarted standby starts where it was. */
static void on_standby_position(void *ctx, const loom_position *received,
                                const loom_position *applied)
{
  int s = *(const int *)ctx;
  double t = now_s();
  uint64_t r = atomic_load(&B.seen_recv[s]);
  for (uint64_t q = r + 1; q <= received->seq; q++)
    B.t_recv[s][q % RING] = t;
  if (received->seq > r)
    atomic_store(&B.seen_recv[s], received->seq);
  uint64_t a = atomic_load(&B.seen_appl[s]);
  for (uint64_t q = a + 1; q <= applied->seq; q++)
    B.t_appl[s][q % RING] = t;
  if (applied->seq > a)
    atomic_store(&B.seen_appl[s], applied->seq);
}

static uint64_t seq_now(void)
{
  loom_position p;
  loom_store_position(loom_get_store(B.l), &p);
  return p.seq;
}

static void start_standby(int s, uint16_t port)
{
  B.index[s] = s;
  http_server_options o = {.role = HTTP_ROLE_STANDBY, .dir = B.sdir[s],
                           .listen_host = "127.0.0.1", .listen_port = port,
                           .on_position = on_standby_position,
                           .position_ctx = &B.index[s]};
  http_server *srv;
  int rc = http_server_start(&o, &srv);
  if (rc)
    die("standby start", rc);
  pthread_mutex_lock(&B.srv_lock);
  B.standby[s] = srv;
  B.port[s] = http_server_port(srv);
  pthread_mutex_unlock(&B.srv_lock);
}

static void stop_standby(int s)
{
  pthread_mutex_lock(&B.srv_lock);
  http_server *srv = B.standby[s];
  B.standby[s] = NULL;
  pthread_mutex_unlock(&B.srv_lock);
  http_server_stop(srv);
}

/* Wait until every standby has applied seq (or timeout): seconds waited. */
static double wait_applied(uint64_t seq, double timeout)
{
  double t0 = now_s();
  for (;;) {
    int ok = 1;
    for (int s = 0; s < B.standbys; s++)
      ok &= atomic_load(&B.seen_appl[s]) >= seq;
    if (ok)
      return now_s() - t0;
    if (now_s() - t0 > timeout)
      return -1;
    struct timespec ts = {0, 20000};
    nanosleep(&ts, NULL);
  }
}

static void wire_totals(uint64_t *wire, uint64_t *raw, uint64_t *frames)
{
  replicate_peer_status st[MAX_STANDBYS];
  size_t n = 0;
  replicate_shipper_status(B.shipper, st, MAX_STANDBYS, &n);
  *wire = *raw = *frames = 0;
  for (size_t i = 0; i < n; i++)
    *wire += st[i].bytes_wire, *raw += st[i].bytes_raw, *frames += st[i].frames_sent;
}

/* Change 64 random bytes (one run at a random offset) in k distinct random
 * pages of the image, from the pages in [first, first + span). */
static void dirty(uint64_t k, uint64_t first, uint64_t span, uint8_t *mark)
{
  for (uint64_t i = 0; i < k; i++) {
    uint64_t p;
    do
      p = first + rnd() % span;
    while (mark[p]);
    mark[p] = 1;
    uint8_t *page = loom_page(B.l, p);
    uint64_t off = rnd() % (PS - 64);
    for (int j = 0; j < 64; j += 8) {
      uint64_t x = rnd();
      memcpy(page + off + (uint64_t)j, &x, 8);
    }
  }
}

static uint8_t *marks;

static double save(uint64_t k)
{
  memset(marks, 0, B.image_pages);
  dirty(k, 0, B.image_pages, marks);
  double t0 = now_s();
  int rc = loom_save(B.l, B.image_pages, B.arena_pages);
  double t = now_s() - t0;
  if (rc) {
    fprintf(stderr, "lag_bench: save: %s\n",
            replicate_strerror(rc));
    if (rc != REPLICATE_ESYNC_TIMEOUT)
      exit(1);
  }
  return t;
}

static void copy_file(const char *from, const char *to)
{
  int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (in < 0 || out < 0) {
    perror("copy_file");
    exit(1);
  }
  static char buf[1 << 20];
  ssize_t n;
  while ((n = read(in, buf, sizeof buf)) > 0)
    if (write(out, buf, (size_t)n) != n) {
      perror("copy_file write");
      exit(1);
    }
  fsync(out);
  close(in);
  close(out);
}

/* ---------------------------------------------------------------------- */

typedef struct phase {
  double rate_done;     /* saves/s achieved */
  double save_p50, save_p99, hook_p50;
  double recv_p50, recv_p99, appl_p50, appl_p99; /* worst standby */
  uint64_t behind_end;  /* frames not received at the end of the phase */
  bool incomplete;      /* a standby did not take every seq within 60 s:
                           its figures leave the slowest out */
  double wire_per_save, raw_per_save;
  uint64_t saves;
  double probe_p50;     /* the in-run fdatasync probe's p50, ms */
  double append_p50;    /* the first standby's receive-log appends
                           (fdatasync included): their p50, ms,
                           interpolated in the histogram's bucket */
} phase;

/* The first standby's receive-log append durations so far (receiver.h
 * append_durations). */
static replicate_duration_histogram append_totals(void)
{
  replicate_receiver_status st;
  pthread_mutex_lock(&B.srv_lock);
  replicate_receiver_get_status(http_server_receiver(B.standby[0]), &st);
  pthread_mutex_unlock(&B.srv_lock);
  return st.append_durations;
}

/* The p50 in ms of what histogram b holds beyond a, interpolated within
 * its bucket as Prometheus's histogram_quantile does (the buckets around
 * it: 0.25-0.5 ms, 0.5-1 ms); 0 when none. */
static double append_p50_ms(const replicate_duration_histogram *a,
                            const replicate_duration_histogram *b)
{
  uint64_t n = b->count - a->count, seen = 0;
  if (n == 0)
    return 0;
  for (unsigned i = 0; i < REPLICATE_DURATION_BUCKETS; i++) {
    uint64_t in = b->counts[i] - a->counts[i];
    if (2 * (seen + in) >= n) {
      double lo = i ? replicate_duration_bounds[i - 1] : 0, hi = replicate_duration_bounds[i];
      double frac = in ? ((double)n / 2 - (double)seen) / (double)in : 0;
      return (lo + (hi - lo) * frac) * 1e3;
    }
    seen += in;
  }
  return replicate_duration_bounds[REPLICATE_DURATION_BUCKETS - 1] * 1e3;
}

/* THE IN-RUN LIMIT (issue 14): while a lag phase runs, this thread
 * appends records of a frame's size to a file of its own in the first
 * standby's directory (growing, as the receive log does), pwrite +
 * fdatasync each, halfway between two saves: one fdatasync of a frame's
 * bytes on the same disk, at the same pace and under the same load as the
 * receive log's, in the same run. Back to back after the run (the first
 * form) the same append is cheaper: an fdatasync after an idle gap costs
 * about twice one right after another here (bench/fsync_pace_bench.py).
 * Its own fdatasyncs share the disk with the measured path, and shorten
 * the idle gaps the receive log sees: docs/BENCHMARKS.md section 9 gives
 * the caveats both ways. */
typedef struct fsync_probe {
  pthread_t thread;
  double t0, rate, t_end;
  size_t bytes;
  double *ms;           /* each append's pwrite + fdatasync */
  size_t n, cap;
  int fd;
} fsync_probe;

/* One pwrite of bytes at `at` and an fdatasync of fd: how long, in ms. */
static double timed_append_ms(int fd, const void *buf, size_t bytes, off_t at,
                              const char *what)
{
  char why[160];
  double t = now_s();
  for (size_t done = 0; done < bytes;) { /* a short write: the rest, or why */
    ssize_t w = pwrite(fd, (const char *)buf + done, bytes - done, at + (off_t)done);
    if (w <= 0) {
      snprintf(why, sizeof why, "%s: pwrite", what);
      die(why, w < 0 ? errno : EIO);
    }
    done += (size_t)w;
  }
  if (fdatasync(fd) != 0) {
    snprintf(why, sizeof why, "%s: fdatasync", what);
    die(why, errno);
  }
  return (now_s() - t) * 1e3;
}

static void *fsync_probe_main(void *arg)
{
  fsync_probe *p = arg;
  void *buf = calloc(1, p->bytes);
  off_t at = 0;
  for (size_t i = 0; buf && p->n < p->cap; i++) {
    double slot = p->t0 + ((double)i + 0.5) / p->rate;
    if (slot >= p->t_end)
      break;
    if (slot < now_s())
      continue; /* behind: this slot is gone */
    sleep_until(slot);
    p->ms[p->n++] = timed_append_ms(p->fd, buf, p->bytes, at, "the in-run fdatasync probe");
    at += (off_t)p->bytes;
  }
  free(buf);
  return NULL;
}

/* Size of the frames the probe writes: the last phase's wire bytes per
 * save (the warm-up's before the first: main). */
static size_t probe_bytes = 6000;

static int fsync_probe_start(fsync_probe *p, double t0, double rate, double seconds)
{
  char path[700];
  snprintf(path, sizeof path, "%s/fdatasync-probe", B.sdir[0]);
  *p = (fsync_probe){.t0 = t0, .rate = rate, .t_end = t0 + seconds,
                     .bytes = probe_bytes, .cap = (size_t)(rate * seconds) + 16};
  p->fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  p->ms = calloc(p->cap, sizeof *p->ms);
  if (p->fd < 0 || !p->ms)
    die("the in-run fdatasync probe", errno);
  unlink(path); /* the descriptor keeps it while the phase runs */
  return pthread_create(&p->thread, NULL, fsync_probe_main, p);
}

/* The probe's p50 in ms (0 when it made none). */
static double fsync_probe_stop(fsync_probe *p)
{
  pthread_join(p->thread, NULL);
  double p50 = p->n ? percentile(p->ms, p->n, 0.5) : 0;
  close(p->fd);
  free(p->ms);
  return p50;
}

static phase run_phase(uint64_t k, double rate, double seconds, bool probe)
{
  phase ph = {0};
  size_t cap = (size_t)(rate * seconds) + 16;
  double *lat = calloc(cap, sizeof *lat);
  double *v = calloc(cap, sizeof *v);
  uint64_t w0, r0, f0;
  wire_totals(&w0, &r0, &f0);
  replicate_duration_histogram appends0 = append_totals();
  uint64_t first = seq_now() + 1;
  double t0 = now_s(), t_end = t0 + seconds;
  fsync_probe fp;
  int prc = probe ? fsync_probe_start(&fp, t0, rate, seconds) : 0;
  if (prc)
    die("the in-run fdatasync probe's thread", prc);
  size_t n = 0;
  for (size_t i = 0; n < cap; i++) {
    double at = t0 + (double)i / rate;
    if (at >= t_end)
      break;
    sleep_until(at);
    lat[n++] = save(k);
  }
  double elapsed = now_s() - t0;
  if (probe)
    ph.probe_p50 = fsync_probe_stop(&fp);
  uint64_t last = seq_now();
  ph.saves = n;
  ph.rate_done = (double)n / elapsed;
  uint64_t minr = UINT64_MAX;
  for (int s = 0; s < B.standbys; s++) {
    uint64_t r = atomic_load(&B.seen_recv[s]);
    minr = r < minr ? r : minr;
  }
  ph.behind_end = last > minr ? last - minr : 0;
  double wait = wait_applied(last, 60);
  ph.incomplete = wait < 0;
  if (wait < 0)
    fprintf(stderr, "lag_bench: standby did not catch up within 60 s\n");
  uint64_t w1, r1, f1;
  wire_totals(&w1, &r1, &f1);
  replicate_duration_histogram appends1 = append_totals();
  ph.append_p50 = append_p50_ms(&appends0, &appends1);
  ph.wire_per_save = (double)(w1 - w0) / (double)n / B.standbys;
  ph.raw_per_save = (double)(r1 - r0) / (double)n / B.standbys;
  ph.save_p50 = percentile(lat, n, 0.5);
  ph.save_p99 = percentile(lat, n, 0.99);
  {
    size_t m = 0;
    for (uint64_t q = first; q <= last; q++)
      v[m++] = B.t_hook[q % RING];
    ph.hook_p50 = percentile(v, m, 0.5);
  }
  for (int s = 0; s < B.standbys; s++) {
    /* Only the seqs a standby was seen to take (all of them, unless the
     * wait above timed out): a later one's slot is not written yet. */
    uint64_t recv_last = atomic_load(&B.seen_recv[s]), appl_last = atomic_load(&B.seen_appl[s]);
    size_t m = 0;
    for (uint64_t q = first; q <= last && q <= recv_last; q++)
      v[m++] = B.t_recv[s][q % RING] - B.t_commit[q % RING];
    double p50 = percentile(v, m, 0.5), p99 = percentile(v, m, 0.99);
    ph.recv_p50 = p50 > ph.recv_p50 ? p50 : ph.recv_p50;
    ph.recv_p99 = p99 > ph.recv_p99 ? p99 : ph.recv_p99;
    m = 0;
    for (uint64_t q = first; q <= last && q <= appl_last; q++)
      v[m++] = B.t_appl[s][q % RING] - B.t_commit[q % RING];
    p50 = percentile(v, m, 0.5), p99 = percentile(v, m, 0.99);
    ph.appl_p50 = p50 > ph.appl_p50 ? p50 : ph.appl_p50;
    ph.appl_p99 = p99 > ph.appl_p99 ? p99 : ph.appl_p99;
  }
  free(lat);
  free(v);
  return ph;
}

static double cpu_seconds(void)
{
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

/* The limit of commit to received (issue 14), as first measured: one
 * pwrite + fdatasync of bytes appended to a file in dir (as a receive log
 * appends a frame), median of 31 back to back, in ms, after the run. */
static double frame_fdatasync_ms(const char *dir, size_t bytes)
{
  char path[700];
  snprintf(path, sizeof path, "%s/fdatasync-limit", dir);
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  void *buf = calloc(1, bytes ? bytes : 1);
  double v[31];
  for (int i = 0; fd >= 0 && buf && i < 31; i++)
    v[i] = timed_append_ms(fd, buf, bytes, (off_t)(i * bytes), "the fdatasync limit");
  if (fd < 0 || !buf)
    die("the fdatasync limit", errno);
  close(fd);
  unlink(path);
  free(buf);
  return summarize(v, 31).median;
}

static void mode_lag(uint64_t k, const double *rates, int nrates, double seconds, int repeats,
                     unsigned sync)
{
  char tag[96];
  for (int r = 0; r < nrates; r++) {
    double s50[MAXREP], s99[MAXREP], h50[MAXREP], r50[MAXREP], r99[MAXREP], a50[MAXREP], a99[MAXREP],
        wire[MAXREP], raw[MAXREP], done[MAXREP], probe[MAXREP], append[MAXREP];
    bool incomplete = false;
    double c0 = cpu_seconds(), w0 = now_s();
    for (int i = 0; i < repeats; i++) {
      phase ph = run_phase(k, rates[r], seconds, sync == 0);
      printf("# K=%llu rate=%g sync=%u standbys=%d rep %d: %.1f saves/s, save p50 %.3f ms "
             "p99 %.3f ms (in the shipper hook p50 %.3f ms); received p50 %.3f p99 %.3f ms; applied p50 %.3f p99 %.3f ms; "
             "%.0f wire B/save (%.0f raw); %llu frames behind at end\n",
             (unsigned long long)k, rates[r], sync, B.standbys, i, ph.rate_done,
             ph.save_p50 * 1e3, ph.save_p99 * 1e3, ph.hook_p50 * 1e3, ph.recv_p50 * 1e3, ph.recv_p99 * 1e3,
             ph.appl_p50 * 1e3, ph.appl_p99 * 1e3, ph.wire_per_save, ph.raw_per_save,
             (unsigned long long)ph.behind_end);
      s50[i] = ph.save_p50 * 1e3, s99[i] = ph.save_p99 * 1e3, h50[i] = ph.hook_p50 * 1e3;
      r50[i] = ph.recv_p50 * 1e3, r99[i] = ph.recv_p99 * 1e3;
      a50[i] = ph.appl_p50 * 1e3, a99[i] = ph.appl_p99 * 1e3;
      wire[i] = ph.wire_per_save, raw[i] = ph.raw_per_save, done[i] = ph.rate_done;
      probe[i] = ph.probe_p50, append[i] = ph.append_p50;
      incomplete |= ph.incomplete;
      if (ph.wire_per_save >= 1)
        probe_bytes = (size_t)ph.wire_per_save; /* the next phase's probe */
    }
    double cpu = (cpu_seconds() - c0) / (now_s() - w0);
    stat3 ref = summarize(s50, repeats);
    snprintf(tag, sizeof tag, "K%llu_r%g_sync%u_sb%d", (unsigned long long)k, rates[r], sync,
             B.standbys);
    char name[160];
    snprintf(name, sizeof name, "save_p50_%s", tag);
    result(name, ref, "ms", 0, "-");
    snprintf(name, sizeof name, "save_p99_%s", tag);
    result(name, summarize(s99, repeats), "ms", ref.median, "save_p50");
    snprintf(name, sizeof name, "hook_p50_%s", tag);
    result(name, summarize(h50, repeats), "ms", ref.median, "save_p50");
    snprintf(name, sizeof name, "received_p50_%s", tag);
    result(name, summarize(r50, repeats), "ms", ref.median, "save_p50");
    snprintf(name, sizeof name, "received_p99_%s", tag);
    result(name, summarize(r99, repeats), "ms", ref.median, "save_p50");
    snprintf(name, sizeof name, "applied_p50_%s", tag);
    result(name, summarize(a50, repeats), "ms", ref.median, "save_p50");
    snprintf(name, sizeof name, "applied_p99_%s", tag);
    result(name, summarize(a99, repeats), "ms", ref.median, "save_p50");
    stat3 rw = summarize(raw, repeats);
    snprintf(name, sizeof name, "wire_bytes_per_save_%s", tag);
    result(name, summarize(wire, repeats), "B", rw.median, "raw_dirty_bytes");
    snprintf(name, sizeof name, "achieved_rate_%s", tag);
    result(name, summarize(done, repeats), "saves/s", rates[r], "target_rate");
    /* Issue 14: commit to received against the shipper's hook (encode and
     * log append) plus one fdatasync of the frame's bytes: back to back
     * after the run (the figure's first form), and in the run (THE IN-RUN
     * LIMIT). With
     * --sync the hook waits for the standbys: the limit would hold what
     * it measures, so there is none. */
    double hook = summarize(h50, repeats).median;
    stat3 in_run = summarize(probe, repeats);
    if (incomplete) /* the received figures leave the slowest seqs out */
      printf("# K=%llu rate=%g: a standby fell behind for good: no limit ratios\n",
             (unsigned long long)k, rates[r]);
    if (sync == 0 && !incomplete) {
      double limit =
          hook + frame_fdatasync_ms(B.sdir[0], (size_t)summarize(wire, repeats).median);
      snprintf(name, sizeof name, "received_p50_vs_limit_%s", tag);
      result(name, summarize(r50, repeats), "ms", limit, "hook_p50+fdatasync(frame)");
    }
    if (sync == 0 && !incomplete && in_run.min > 0) {
      snprintf(name, sizeof name, "fdatasync_in_run_p50_%s", tag);
      result(name, in_run, "ms", 0, "-");
      snprintf(name, sizeof name, "received_p50_vs_in_run_limit_%s", tag);
      result(name, summarize(r50, repeats), "ms", hook + in_run.median,
             "hook_p50+fdatasync(frame,in_run)");
    } else if (sync == 0 && !incomplete) {
      printf("# K=%llu rate=%g: the in-run fdatasync probe made no append in some phase\n",
             (unsigned long long)k, rates[r]);
    }
    /* Beside the probe: the receive log's own appends in the run, their
     * p50 from the standby's histogram (coarse: its buckets). */
    snprintf(name, sizeof name, "receive_log_append_p50_%s", tag);
    result(name, summarize(append, repeats), "ms", 0, "-");
    printf("RESULT process_cpu_%s %.3g %.3g %.3g cores -=0 0\n", tag, cpu, cpu, cpu);
  }
}

static void mode_maxrate(uint64_t k, double seconds)
{
  double best = 0;
  for (double rate = 100; rate <= 12800; rate *= 2) {
    phase ph = run_phase(k, rate, seconds, false);
    int primary_ok = ph.rate_done >= 0.95 * rate;
    int kept = ph.behind_end <= (uint64_t)(0.1 * rate) + 2 && ph.recv_p99 < 0.25;
    printf("# maxrate K=%llu target %g: primary did %.1f saves/s (save p50 %.3f ms), received "
           "p99 %.3f ms, applied p99 %.3f ms, %llu frames behind at end: %s\n",
           (unsigned long long)k, rate, ph.rate_done, ph.save_p50 * 1e3, ph.recv_p99 * 1e3,
           ph.appl_p99 * 1e3, (unsigned long long)ph.behind_end,
           !primary_ok ? "primary cannot save this fast" : kept ? "kept up" : "fell behind");
    if (kept)
      best = ph.rate_done;
    if (!primary_ok || !kept)
      break;
  }
  printf("RESULT max_kept_up_rate_K%llu %.6g %.6g %.6g saves/s target=300 %.3g\n",
         (unsigned long long)k, best, best, best, best / 300);
}

/* One catch-up: the standby stopped, 1 % of the pages changed in 10 saves,
 * the standby restarted; *seconds from the restart until it applied the
 * last save, *wire the bytes shipped meanwhile. With rsync_dir, the image
 * before and after is written there too. */
static void catchup_once(const char *rsync_dir, const char *pdir,
                         double *seconds, uint64_t *wire)
{
  char img[700], path[700];
  snprintf(img, sizeof img, "%s/image", pdir);
  if (rsync_dir) {
    loom_store_sync(loom_get_store(B.l));
    snprintf(path, sizeof path, "%s/old.img", rsync_dir);
    copy_file(img, path);
  }
  uint16_t port = B.port[0];
  stop_standby(0);
  uint64_t w0, r0, f0;
  wire_totals(&w0, &r0, &f0);
  uint64_t pages = B.image_pages / 100; /* 1 % */
  memset(marks, 0, B.image_pages);
  for (int i = 0; i < 10; i++) {
    uint64_t k = pages / 10 + (i < (int)(pages % 10));
    dirty(k, 0, B.image_pages, marks); /* distinct over all ten saves */
    int rc = loom_save(B.l, B.image_pages, B.arena_pages);
    if (rc) {
      fprintf(stderr, "lag_bench: save: %s\n", loom_strerror(rc));
      exit(1);
    }
  }
  uint64_t last = seq_now();
  if (rsync_dir) {
    loom_store_sync(loom_get_store(B.l));
    snprintf(path, sizeof path, "%s/new.img", rsync_dir);
    copy_file(img, path);
  }
  sleep(1); /* let the shipper find the standby gone */
  uint64_t w1, r1, f1;
  wire_totals(&w1, &r1, &f1);
  double t0 = now_s();
  start_standby(0, port);
  double t_started = now_s() - t0;
  double t = wait_applied(last, 120);
  for (int i = 0; i < 5000; i++) { /* the shipper reads the answer after the standby has it */
    replicate_peer_status st[MAX_STANDBYS];
    size_t n = 0;
    replicate_shipper_status(B.shipper, st, MAX_STANDBYS, &n);
    if (st[0].received_seq >= last)
      break;
    usleep(1000);
  }
  uint64_t w2, r2, f2;
  wire_totals(&w2, &r2, &f2);
  {
    replicate_peer_status st[MAX_STANDBYS];
    size_t n = 0;
    replicate_shipper_status(B.shipper, st, MAX_STANDBYS, &n);
    printf("# shipper: state %s, requests %llu, frames %llu, merged pieces %llu, heartbeats "
           "%llu, failures %llu, bytes_wire %llu\n",
           st[0].state_name, (unsigned long long)st[0].requests,
           (unsigned long long)st[0].frames_sent, (unsigned long long)st[0].coalesced_sent,
           (unsigned long long)st[0].heartbeats_sent, (unsigned long long)st[0].failures,
           (unsigned long long)st[0].bytes_wire);
  }
  printf("# catch-up phases from the restart: standby server started (store + receive log "
         "opened) %.3f s, last save received %.3f s, applied %.3f s\n",
         t_started, B.t_recv[0][last % RING] - t0, B.t_appl[0][last % RING] - t0);
  printf("# catch-up: %llu pages changed in 10 saves while the standby was down; restart to "
         "applied %.3f s; %llu bytes on the wire (%llu while down: failed attempts and "
         "heartbeats); %llu raw page bytes\n",
         (unsigned long long)pages, t, (unsigned long long)(w2 - w1),
         (unsigned long long)(w1 - w0), (unsigned long long)(r2 - r1));
  *seconds = t;
  *wire = w2 - w1;
}

/* catchup_once, repeats times (the rsync images from the first). */
static void mode_catchup(const char *rsync_dir, const char *pdir, int repeats)
{
  double secs[MAXREP], bytes[MAXREP];
  for (int i = 0; i < repeats; i++) {
    uint64_t wire;
    catchup_once(i == 0 ? rsync_dir : NULL, pdir, &secs[i], &wire);
    bytes[i] = (double)wire;
  }
  stat3 t = summarize(secs, repeats), b = summarize(bytes, repeats);
  double dirty_bytes = (double)(B.image_pages / 100 * PS);
  printf("RESULT catchup_seconds %.6g %.6g %.6g s rsync_target=1.3 %.3g\n", t.median,
         t.min, t.max, t.median / 1.3);
  printf("RESULT catchup_wire_bytes %.6g %.6g %.6g B dirty_bytes=%.6g %.3g\n", b.median,
         b.min, b.max, dirty_bytes, b.median / dirty_bytes);
}

/* ---------------------------------------------------------------------- */
/* absorb: how fast one standby takes frames, apart from how fast the
 * primary makes them. The standby is stopped, the primary makes `count`
 * saves (their frames are kept in memory; the shipper is stopped first);
 * the standby restarts and a client posts the frames one after another on
 * one kept-alive connection, each as soon as the previous one is answered
 * (received: durable in the receive log). Figures: frames received per
 * second, and frames applied per second (until the last is applied), with
 * the store commits they took (the applier merges frames that wait). */

static size_t discard_body(char *p, size_t size, size_t n, void *ctx)
{
  (void)p, (void)ctx;
  return size * n;
}

static void mode_absorb(uint64_t k, uint64_t count, int repeats)
{
  double recv_rate[MAXREP], appl_rate[MAXREP], merged[MAXREP];
  replicate_shipper_drain(B.shipper, 10);
  replicate_shipper_stop(B.shipper);
  B.shipper = NULL;
  CURL *curl = curl_easy_init();
  if (!curl)
    die("curl_easy_init", ENOMEM);
  struct curl_slist *headers =
      curl_slist_append(NULL, "Content-Type: application/octet-stream");
  int rc = replicate_encoder_new(1, &B.record_enc);
  B.recorded = calloc(count, sizeof *B.recorded);
  B.record_cap = count;
  if (rc || !B.recorded)
    die("absorb: encoder", rc ? rc : ENOMEM);
  for (int r = 0; r < repeats; r++) {
    uint16_t port = B.port[0];
    stop_standby(0);
    B.nrecorded = 0;
    for (uint64_t i = 0; i < count; i++)
      save(k);
    uint64_t last = seq_now();
    start_standby(0, port);
    http_server_status st0;
    http_server_get_status(B.standby[0], &st0);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/v1/frames", (unsigned)B.port[0]);
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, discard_body);
    double t0 = now_s();
    for (size_t q = 0; q < B.nrecorded; q++) {
      const replicate_buf *frame = &B.recorded[q];
      curl_easy_setopt(curl, CURLOPT_POSTFIELDS, frame->data);
      curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)frame->len);
      long status = 0;
      if (curl_easy_perform(curl) != CURLE_OK ||
          curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK ||
          status != 200) {
        fprintf(stderr, "lag_bench: frame %zu answered %ld\n", q, status);
        exit(1);
      }
    }
    double t_recv = now_s() - t0;
    if (wait_applied(last, 120) < 0)
      die("absorb: standby did not apply", 0);
    double t_appl = now_s() - t0;
    http_server_status st;
    http_server_get_status(B.standby[0], &st);
    uint64_t commits = st.apply_commits - st0.apply_commits;
    recv_rate[r] = (double)count / t_recv;
    appl_rate[r] = (double)count / t_appl;
    merged[r] = commits ? (double)count / (double)commits : 0;
    printf("# absorb K=%llu rep %d: %llu frames posted one after another: all received in "
           "%.3f s (%.0f/s), all applied in %.3f s (%.0f/s) in %llu store commits\n",
           (unsigned long long)k, r, (unsigned long long)count, t_recv, recv_rate[r], t_appl,
           appl_rate[r], (unsigned long long)commits);
    fflush(stdout);
  }
  for (size_t i = 0; i < B.record_cap; i++)
    replicate_buf_free(&B.recorded[i]);
  free(B.recorded);
  replicate_encoder_free(B.record_enc);
  B.record_enc = NULL;
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  char name[96];
  snprintf(name, sizeof name, "standby_received_rate_K%llu", (unsigned long long)k);
  result(name, summarize(recv_rate, repeats), "frames/s", 300, "target");
  snprintf(name, sizeof name, "standby_applied_rate_K%llu", (unsigned long long)k);
  result(name, summarize(appl_rate, repeats), "frames/s", 300, "target");
  snprintf(name, sizeof name, "standby_frames_per_commit_K%llu", (unsigned long long)k);
  result(name, summarize(merged, repeats), "frames", 1, "unmerged");
}

/* ---------------------------------------------------------------------- */

static void rm_rf(const char *dir)
{
  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "lag_bench: could not remove %s\n", dir);
}

/* The command line (usage below). */
typedef struct lag_args {
  uint64_t k;
  double rates[16];
  int nrates, repeats;
  double seconds, backoff_max;
  unsigned sync;
  const char *root, *rsync_dir, *mode;
  uint64_t count;
  replicate_log_sync_mode log_sync;
} lag_args;

/* Parse argv into *a and B's sizes: 0, or 2 after printing the usage. */
static int parse_args(int argc, char **argv, lag_args *a)
{
  *a = (lag_args){.k = 64, .rates = {10, 100, 1000}, .nrates = 3, .repeats = 3,
                  .seconds = 3, .backoff_max = 0.05, .mode = "lag", .count = 1000,
                  .log_sync = REPLICATE_LOG_SYNC_BACKGROUND /* as cmd_primary */};
  a->root = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  B.standbys = 1;
  B.image_pages = 4096;
  for (int i = 1; i < argc; i++) {
    const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(o, "--pages") && v)
      a->k = strtoull(v, NULL, 10), i++;
    else if (!strcmp(o, "--image-pages") && v)
      B.image_pages = strtoull(v, NULL, 10), i++;
    else if (!strcmp(o, "--rates") && v) {
      a->nrates = 0;
      for (char *s = argv[++i], *e; *s && a->nrates < 16; s = *e ? e + 1 : e)
        a->rates[a->nrates++] = strtod(s, &e);
    } else if (!strcmp(o, "--seconds") && v)
      a->seconds = strtod(v, NULL), i++;
    else if (!strcmp(o, "--repeats") && v)
      a->repeats = atoi(v), i++;
    else if (!strcmp(o, "--sync") && v)
      a->sync = (unsigned)atoi(v), i++;
    else if (!strcmp(o, "--standbys") && v)
      B.standbys = atoi(v), i++;
    else if (!strcmp(o, "--backoff-max") && v)
      a->backoff_max = strtod(v, NULL), i++;
    else if (!strcmp(o, "--dir") && v)
      a->root = v, i++;
    else if (!strcmp(o, "--rsync-dir") && v)
      a->rsync_dir = v, i++;
    else if (!strcmp(o, "--count") && v)
      a->count = strtoull(v, NULL, 10), i++;
    else if (!strcmp(o, "--log-sync") && v && (!strcmp(v, "each") || !strcmp(v, "background")))
      a->log_sync = !strcmp(v, "each") ? REPLICATE_LOG_SYNC_EACH : REPLICATE_LOG_SYNC_BACKGROUND,
      i++;
    else if (o[0] != '-')
      a->mode = o;
    else {
      fprintf(stderr, "usage: lag_bench [lag|maxrate|catchup|absorb] [--pages K] "
                      "[--image-pages P] [--rates R,..] [--seconds S] [--repeats N] [--sync N] "
                      "[--standbys M] [--dir DIR] [--rsync-dir D] [--backoff-max S] "
                      "[--count N] [--log-sync each|background]\n");
      return 2;
    }
  }
  if (a->repeats < 1 || a->repeats > MAXREP || B.standbys < 1 || B.standbys > MAX_STANDBYS ||
      a->k > B.image_pages / 2) {
    fprintf(stderr, "lag_bench: option out of range\n");
    return 2;
  }
  return 0;
}

/* The primary's loom in pdir: every page random bytes (incompressible,
 * like PG's values), saved once and synced. */
static loom_store *open_primary(const char *pdir)
{
  B.rng = 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
  B.arena_pages = B.image_pages + 16;
  marks = calloc(B.image_pages, 1);
  B.t_commit = calloc(RING, sizeof(double));
  B.t_hook = calloc(RING, sizeof(double));
  pthread_mutex_init(&B.srv_lock, NULL);
  loom_options o = {.arena_pages = B.arena_pages, .flags = LOOM_CREATE | LOOM_APPLY_ASYNC,
                    .on_commit = on_commit, .watermarks = watermarks};
  int rc = loom_open(pdir, &o, &B.l);
  if (rc)
    die("loom_open", rc);
  if ((rc = loom_ward(B.l, B.image_pages, B.arena_pages)))
    die("loom_ward", rc);
  for (uint64_t p = 0; p < B.image_pages; p++) {
    uint64_t *w = loom_page(B.l, p);
    for (uint64_t j = 0; j < PS / 8; j++)
      w[j] = rnd();
  }
  if ((rc = loom_save(B.l, B.image_pages, B.arena_pages)))
    die("first save", rc);
  loom_store *store = loom_get_store(B.l);
  loom_store_sync(store);
  return store;
}

/* Standbys from backups of the primary, its replication log and shipper. */
static void start_replication(loom_store *store, const char *base, const char *pdir,
                              const lag_args *a)
{
  int rc;
  for (int s = 0; s < B.standbys; s++) {
    snprintf(B.sdir[s], sizeof B.sdir[s], "%s/standby%d", base, s);
    if ((rc = loom_store_backup(store, B.sdir[s])))
      die("backup", rc);
    B.t_recv[s] = calloc(RING, sizeof(double));
    B.t_appl[s] = calloc(RING, sizeof(double));
    start_standby(s, 0);
    snprintf(B.url[s], sizeof B.url[s], "http://127.0.0.1:%u", (unsigned)B.port[s]);
    B.urlp[s] = B.url[s];
  }
  uint64_t start_seq = seq_now();
  for (int s = 0; s < B.standbys; s++)
    atomic_store(&B.seen_recv[s], start_seq), atomic_store(&B.seen_appl[s], start_seq);
  replicate_log_options lo = {.sync = a->log_sync};
  if ((rc = replicate_log_open(pdir, &lo, NULL, &B.log)))
    die("log open", rc);
  replicate_shipper_options so = {.store = store, .log = B.log, .standby_urls = B.urlp,
                                  .standby_count = (size_t)B.standbys, .sync_count = a->sync,
                                  .backoff_base_seconds = 0.01,
                                  .backoff_max_seconds = a->backoff_max};
  if ((rc = replicate_shipper_start(&so, &B.shipper)))
    die("shipper start", rc);
}

/* Run the mode a->mode names: 0, or 2 for an unknown one. */
static int run_mode(const lag_args *a, const char *pdir)
{
  if (!strcmp(a->mode, "lag"))
    mode_lag(a->k, a->rates, a->nrates, a->seconds, a->repeats, a->sync);
  else if (!strcmp(a->mode, "maxrate"))
    mode_maxrate(a->k, a->seconds);
  else if (!strcmp(a->mode, "catchup"))
    mode_catchup(a->rsync_dir, pdir, a->repeats);
  else if (!strcmp(a->mode, "absorb"))
    mode_absorb(a->k, a->count, a->repeats);
  else {
    fprintf(stderr, "lag_bench: unknown mode %s\n", a->mode);
    return 2;
  }
  return 0;
}

int main(int argc, char **argv)
{
  lag_args a;
  if (parse_args(argc, argv, &a))
    return 2;
  char pdir[600], base[400];
  snprintf(base, sizeof base, "%s/lag_bench.%d", a.root, (int)getpid());
  snprintf(pdir, sizeof pdir, "%s/primary", base);
  mkdir(base, 0755);
  loom_store *store = open_primary(pdir);
  start_replication(store, base, pdir, &a);
  /* Warm up: a few saves, every standby streaming. */
  for (int i = 0; i < 20; i++)
    save(a.k < 64 ? a.k : 64);
  if (wait_applied(seq_now(), 30) < 0)
    die("warm-up: standby not caught up", 0);
  uint64_t wire, raw, frames;
  wire_totals(&wire, &raw, &frames);
  if (frames > 0 && wire / frames > 0)
    probe_bytes = (size_t)(wire / frames); /* the in-run probe's first size */
  printf("# image %llu pages (%llu MiB), %d standby(s), tracker %s, sync %u\n",
         (unsigned long long)B.image_pages, (unsigned long long)(B.image_pages * PS >> 20),
         B.standbys, loom_tracker_name(loom_get_tracker(B.l)), a.sync);
  int rc = run_mode(&a, pdir);

  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  printf("# peak RSS of this process (primary + standbys): %ld MiB\n", ru.ru_maxrss / 1024);
  if (B.shipper) {
    replicate_shipper_drain(B.shipper, 10);
    replicate_shipper_stop(B.shipper);
  }
  for (int s = 0; s < B.standbys; s++)
    if (B.standby[s])
      stop_standby(s);
  replicate_log_close(B.log);
  loom_close(B.l);
  rm_rf(base);
  return rc;
}
