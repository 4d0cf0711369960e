/*
 * cmd_demo.c: loomship demo, the main job on defaults (DESIGN.md section 5):
 *   1. a standby (a child process: loomship standby) and a primary (this
 *      process: the example application) on 127.0.0.1, ephemeral ports;
 *   2. a few seconds of workload with a live progress line: saves/s, bytes
 *      changed and shipped, the standby's lag;
 *   3. the primary drains: the standby holds everything committed, and has
 *      applied it;
 *   4. a backup pulled over HTTP from the standby (GET /v1/backup);
 *   5. the standby stops (SIGTERM: applies what it received);
 *   6. primary, standby and backup images compared: positions, checksums
 *      recomputed from the pages, and the bytes. Exit 1 if anything differs.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "clock.h"
#include "client.h"
#include "json_get.h"
#include "logging.h"
#include "primary.h"
#include "replicate.h"
#include "signals.h"

/* Start `loomship standby` as a child (with the demo's log options); read
 * its URL from its first line. */
static pid_t start_standby(const char *dir, const cli_log_args *log,
                           const char *frame_key_file, char *url, size_t url_len)
{
  int out[2];
  if (pipe(out) < 0)
    return -1;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], STDOUT_FILENO);
    close(out[0]);
    close(out[1]);
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, NULL);
    const char *argv[] = {"loomship", "standby", "--dir", dir, "--listen", "127.0.0.1:0",
                          "--log-format", log->format ? log->format : "text",
                          "--log-level", log->level ? log->level : "info",
                          frame_key_file ? "--frame-key-file" : NULL, frame_key_file,
                          NULL};
    execv("/proc/self/exe", (char *const *)argv);
    _exit(127);
  }
  close(out[1]);
  char line[256];
  size_t n = 0;
  while (pid > 0 && n < sizeof line - 1) {
    ssize_t k = read(out[0], line + n, 1);
    if (k <= 0 || line[n] == '\n')
      break;
    n++;
  }
  line[n] = '\0';
  close(out[0]);
  const char *at = strstr(line, "http://");
  if (pid < 0 || !at) {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, NULL, 0);
    }
    return -1;
  }
  snprintf(url, url_len, "%s", at);
  return pid;
}

static int stop_child(pid_t pid)
{
  int status = 0;
  kill(pid, SIGTERM);
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
    ;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Whether two image files hold the same bytes. */
static int same_image(const char *a, const char *b)
{
  char pa[4200], pb[4200];
  snprintf(pa, sizeof pa, "%s/image", a);
  snprintf(pb, sizeof pb, "%s/image", b);
  FILE *fa = fopen(pa, "rb"), *fb = fopen(pb, "rb");
  int same = fa && fb;
  char ba[65536], bb[65536];
  while (same) {
    size_t na = fread(ba, 1, sizeof ba, fa), nb = fread(bb, 1, sizeof bb, fb);
    same = na == nb && !memcmp(ba, bb, na);
    if (na == 0 || na != nb)
      break;
  }
  if (fa)
    fclose(fa);
  if (fb)
    fclose(fb);
  return same;
}

static void human(double bytes, char *buf, size_t len)
{
  const char *unit[] = {"B", "KiB", "MiB", "GiB"};
  int u = 0;
  while (bytes >= 1024 && u < 3)
    bytes /= 1024, u++;
  snprintf(buf, len, "%.1f %s", bytes, unit[u]);
}

/* Wait, up to seconds, until the standby at url says it applied seq (a
 * drain waits for received; a backup holds what is applied). */
static int wait_applied(const char *url, uint64_t seq, double seconds)
{
  double until = loom_mono_s() + seconds;
  client_options o = {.timeout_s = 5};
  do {
    client_reply r;
    uint64_t applied = 0;
    bool known = false;
    if (client_request("GET", url, "/v1/status", &o, &r) == 0 && r.status == 200) {
      json_t *j = cli_json_parse(r.body, r.len);
      known = cli_json_uint(j, "applied.seq", &applied);
      json_decref(j);
    }
    client_reply_free(&r);
    if (known && applied >= seq)
      return 1;
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  } while (loom_mono_s() < until);
  return 0;
}

typedef struct demo_args {
  uint64_t seconds, rate, pages;
  const char *frame_key_file;
  cli_log_args log;
} demo_args;

static const cli_option demo_options[] = {
    {.name = "seconds", .arg = "N", .kind = CLI_NUMBER, .offset = offsetof(demo_args, seconds),
     .min = 1, .max = 100000, .dflt = "5", .help = "how long the workload runs"},
    {.name = "rate", .arg = "HZ", .kind = CLI_NUMBER, .offset = offsetof(demo_args, rate),
     .min = 0, .max = 100000, .dflt = "0",
     .help = "saves a second; 0: as fast as it goes"},
    {.name = "pages", .arg = "K", .kind = CLI_NUMBER, .offset = offsetof(demo_args, pages),
     .min = 1, .max = 100000, .dflt = "64", .help = "values of 64 bytes changed per save"},
    CLI_FRAME_KEY_ROW(demo_args, frame_key_file),
    CLI_LOG_OPTIONS(demo_args, log),
    {0},
};

/* One progress line: saves, rate, bytes changed and shipped, lag. */
static void print_progress(primary_node *n, double start, double t, int tty)
{
  replicate_peer_status st;
  size_t count;
  replicate_shipper_status(n->shipper, &st, 1, &count);
  char raw[32], wire[32];
  human((double)n->bytes_raw, raw, sizeof raw);
  human((double)st.bytes_wire, wire, sizeof wire);
  printf("%s%5.1f s  %6llu saves  %5.0f saves/s  changed %s  shipped %s  "
         "lag %llu frames %.3f s  [%s]%s",
         tty ? "\r" : "", t - start, (unsigned long long)n->saves,
         (double)n->saves / (t - start), raw, wire, (unsigned long long)st.lag_frames,
         st.lag_seconds, st.state_name, tty ? "  " : "\n");
  fflush(stdout);
}

/* The workload, with a live progress line, until the time is up or a
 * stop signal comes. 1 when a save failed. */
static int run_workload(primary_node *n, const sigset_t *stop, uint64_t seconds,
                        uint64_t rate)
{
  int tty = isatty(STDOUT_FILENO);
  double start = loom_mono_s(), last = start, every = tty ? 0.2 : 1.0;
  double period = rate ? 1.0 / (double)rate : 0, next = start;
  n->rng = 0x9e3779b97f4a7c15u;
  int failed = 0;
  while (loom_mono_s() - start < (double)seconds) {
    if (cli_wait_stop(stop, 0, NULL) > 0) /* SIGHUP: nothing to re-read */
      break;
    if (period) {
      next += period;
      double wait = next - loom_mono_s();
      if (wait > 0)
        usleep((useconds_t)(wait * 1e6));
    }
    int rc = primary_step(n);
    if (rc) {
      cli_fail("demo", "save: %s", replicate_strerror(rc));
      failed = 1;
      break;
    }
    double t = loom_mono_s();
    if (t - last >= every) {
      print_progress(n, start, t, tty);
      last = t;
    }
  }
  if (tty)
    printf("\n");
  return failed;
}

/* Drain the shipper, wait for the standby to apply what was committed,
 * and say what was shipped. */
static void drain_and_report(primary_node *n, const char *url,
                             const loom_position *committed, uint64_t seconds)
{
  replicate_peer_status st;
  size_t count;
  int drained = replicate_shipper_drain(n->shipper, 30) &&
                wait_applied(url, committed->seq, 30);
  replicate_shipper_status(n->shipper, &st, 1, &count);
  char raw[32], wire[32];
  human((double)n->bytes_raw, raw, sizeof raw);
  human((double)st.bytes_wire, wire, sizeof wire);
  printf("\n%llu saves in %llu s; pages changed %s, shipped %s (%.0fx less)%s\n",
         (unsigned long long)n->saves, (unsigned long long)seconds, raw, wire,
         st.bytes_wire ? (double)n->bytes_raw / (double)st.bytes_wire : 0.0,
         drained ? "" : "; the standby did not catch up in 30 s");
}

/* The check: the three images verify, are identical, and are at the
 * committed position. 1 when not. */
static int check_images(const char *const dirs[3], const loom_position *committed)
{
  const char *names[3] = {"primary", "standby", "backup"};
  loom_position pos[3];
  int failed = 0;
  printf("\n%-8s %6s %8s %18s %7s  %-8s %s\n", "image", "epoch", "seq", "checksum", "pages",
         "verify", "bytes");
  for (int i = 0; i < 3; i++) {
    uint64_t computed = 0;
    memset(&pos[i], 0, sizeof pos[i]);
    int vr = loom_verify(dirs[i], &pos[i], &computed);
    int same = i == 0 || same_image(dirs[0], dirs[i]);
    char hex[17];
    printf("%-8s %6llu %8llu %18s %7llu  %-8s %s\n", names[i],
           (unsigned long long)pos[i].epoch, (unsigned long long)pos[i].seq,
           cli_hex64(pos[i].checksum, hex), (unsigned long long)pos[i].pages,
           vr ? loom_strerror(vr) : "ok", i == 0 ? "-" : same ? "identical" : "DIFFER");
    failed |= vr != 0 || !same || pos[i].seq != committed->seq ||
              pos[i].checksum != committed->checksum;
  }
  return failed;
}

static int run_demo(void *args)
{
  const demo_args *a = args;
  uint64_t seconds = a->seconds, rate = a->rate, pages = a->pages;
  int lrc = cli_logging_setup(&cmd_demo, &a->log);
  if (lrc)
    return lrc;
  char root[] = "/tmp/loomship-demo-XXXXXX";
  if (!mkdtemp(root))
    return cli_fail("demo", "cannot make a temporary directory: %s", strerror(errno));
  char primary_dir[64], standby_dir[64], backup_dir[64];
  snprintf(primary_dir, sizeof primary_dir, "%s/primary", root);
  snprintf(standby_dir, sizeof standby_dir, "%s/standby", root);
  snprintf(backup_dir, sizeof backup_dir, "%s/backup", root);
  printf("loomship demo: a standby and a primary on 127.0.0.1, in %s\n\n", root);

  replicate_frame_key *frame_key = NULL;
  int krc = cli_frame_key_read("demo", a->frame_key_file, &frame_key);
  if (krc)
    return krc;
  sigset_t stop;
  cli_block_stop_signals(&stop);
  char url[256];
  pid_t standby = start_standby(standby_dir, &a->log, a->frame_key_file, url, sizeof url);
  if (standby < 0) {
    replicate_frame_key_free(frame_key);
    return cli_fail("demo", "the standby did not start");
  }
  printf("standby    %s  (pid %d)\n", url, (int)standby);
  printf("page       %s/  (the standby's status page, while the demo runs)\n", url);

  const char *urls[1] = {url};
  primary_config cfg = {.who = "demo primary", .dir = primary_dir, .arena_pages = 8192,
                        .keys = 2048, .pages = pages, .standbys = urls,
                        .standby_count = 1, .sync_timeout_seconds = 10,
                        .zstd_level = 1, .quiet = 1, .frame_key = frame_key};
  primary_node n;
  int rc = primary_open(&n, &cfg);
  if (rc) {
    primary_close(&n, 0);
    stop_child(standby);
    replicate_frame_key_free(frame_key);
    return rc;
  }
  printf("primary    %s, %llu values of 64 bytes changed per save\n\n", primary_dir,
         (unsigned long long)pages);

  int failed = run_workload(&n, &stop, seconds, rate);
  loom_position committed = n.committed;

  /* Drain, then a backup over HTTP from the standby, then stop both. */
  drain_and_report(&n, url, &committed, seconds);
  printf("backup     GET %s/v1/backup -> %s\n", url, backup_dir);
  /* With a frame key, the backup's tag is checked too. */
  rc = cli_backup_pull_keyed(url, backup_dir, NULL, NULL, frame_key, 3, 1);
  failed |= rc != 0;
  int standby_rc = stop_child(standby);
  failed |= standby_rc != 0;
  failed |= primary_close(&n, 0) == 1;
  replicate_frame_key_free(frame_key);

  const char *const dirs[3] = {primary_dir, standby_dir, backup_dir};
  failed |= check_images(dirs, &committed);
  printf("\n%s\n", failed ? "FAILED: the images differ (kept for inspection in the "
                            "directory above)"
                          : "primary, standby and backup are identical");
  if (!failed) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0)
      fprintf(stderr, "loomship demo: could not remove %s\n", root);
  }
  return failed;
}

const cli_command cmd_demo = {
    .name = "demo",
    .summary = "the main job: a standby and a primary on 127.0.0.1, a workload, a backup "
               "over HTTP, and a check that the three images are identical",
    .options = demo_options, .args_size = sizeof(demo_args), .run = run_demo};
