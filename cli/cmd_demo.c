/* cmd_demo.c: loomship demo, the main job on defaults. */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "kv.h"
#include "loom.h"

static double now_s(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int run_demo(int argc, char **argv)
{
  double seconds = 3;
  for (int i = 1; i < argc; i++) {
    uint64_t v;
    if (cli_is_option(argv[i], "--seconds")) {
      const char *s = cli_option_value("demo", argc, argv, &i, "--seconds");
      if (!s || cli_parse_u64("demo", "--seconds", s, 1, 3600, &v))
        return 2;
      seconds = (double)v;
    } else {
      return cli_usage(&cmd_demo);
    }
  }
  char root[] = "/tmp/loomship-demo-XXXXXX";
  if (!mkdtemp(root))
    return cli_fail("demo", "cannot make a temporary directory");
  char primary[sizeof root + 16], backup[sizeof root + 16];
  snprintf(primary, sizeof primary, "%s/primary", root);
  snprintf(backup, sizeof backup, "%s/backup", root);
  kv *t;
  int rc = kv_open(primary, 4096, 2048, NULL, NULL, &t);
  if (rc)
    return cli_fail("demo", "open %s: %s", primary, loom_strerror(rc));
  uint64_t rng = 88172645463325252u, saves = 0;
  double start = now_s(), last = 0;
  /* Redraw one line on a terminal; elsewhere a plain line a second. */
  int tty = isatty(STDOUT_FILENO);
  double every = tty ? 0.25 : 1.0;
  while (now_s() - start < seconds) {
    for (int k = 0; k < 64; k++) {
      rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
      uint64_t v = rng;
      rc = kv_poke(t, rng % 1000, (size_t)(rng >> 20) % (LOOM_PAGE_SIZE - 8), &v, 8);
      if (rc)
        return cli_fail("demo", "write: %s", loom_strerror(rc));
    }
    if ((rc = kv_save(t)))
      return cli_fail("demo", "save: %s", loom_strerror(rc));
    saves++;
    double el = now_s() - start;
    if (el - last >= every) {
      printf("%s%6.1f s  %8llu saves  %7.0f saves/s  keys %u%s", tty ? "\r" : "", el,
             (unsigned long long)saves, (double)saves / el, kv_count(t),
             tty ? "" : "\n");
      fflush(stdout);
      last = el;
    }
  }
  if (tty)
    printf("\n");
  rc = loom_store_backup(loom_get_store(kv_loom(t)), backup);
  if (rc)
    return cli_fail("demo", "backup: %s", loom_strerror(rc));
  if ((rc = kv_close(t)))
    return cli_fail("demo", "close: %s", loom_strerror(rc));
  const char *dirs[2] = {primary, backup};
  const char *names[2] = {"primary", "backup"};
  loom_position pos[2];
  printf("\n%-8s %6s %8s %18s %7s  %s\n", "node", "epoch", "seq", "checksum", "pages", "verify");
  int bad = 0;
  for (int i = 0; i < 2; i++) {
    uint64_t computed;
    rc = loom_verify(dirs[i], &pos[i], &computed);
    char hex[17];
    printf("%-8s %6llu %8llu %18s %7llu  %s\n", names[i], (unsigned long long)pos[i].epoch,
           (unsigned long long)pos[i].seq, cli_hex64(pos[i].checksum, hex),
           (unsigned long long)pos[i].pages, rc ? loom_strerror(rc) : "ok");
    bad |= rc != 0;
  }
  bad |= pos[0].seq != pos[1].seq || pos[0].checksum != pos[1].checksum;
  printf("\n%s\n", bad ? "MISMATCH" : "primary and backup are identical");
  char cmd[sizeof root + 16];
  snprintf(cmd, sizeof cmd, "rm -rf %s", root);
  if (system(cmd) != 0)
    fprintf(stderr, "loomship demo: could not remove %s\n", root);
  return bad;
}

const cli_command cmd_demo = {
    "demo", "the main job: a workload, a backup, and a check that they agree",
    "demo [--seconds N]", run_demo};
