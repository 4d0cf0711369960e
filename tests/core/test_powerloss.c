/*
 * powerloss_test.c: seeded power cuts against the core engine.
 *
 * A run is one 64-bit seed. It picks a workload (workload.c), an op index K
 * of that workload (K = T, the op count, cuts after the workload closed),
 * a cut mode (every unsynced write dropped, every one kept, or each kept,
 * dropped or torn at 512 B or 4 KiB), whether unsynced directory changes
 * may survive (IOSIM_CUT_DIR_RANDOM), and whether power is cut a second
 * time while the first cut's state is being recovered.
 *
 * The workload runs in a forked child through the simulator (iosim.h),
 * which models what is durable; right before op K it writes the post-cut
 * directory. The parent then recovers it with the POSIX io and checks:
 *
 *   - the position is states[acked] or states[acked + 1], where acked is
 *     the last step the engine acknowledged before the cut (a commit or
 *     save that returned 0 must survive every later cut);
 *   - every page's bytes are those the model gives that position;
 *   - loom_verify passes; an acknowledged backup exists and verifies;
 *   - with a second cut during recovery: recovering that state again ends
 *     exactly where an uninterrupted recovery of the first cut ends.
 *
 * Runs of one workload are batched: one child execution serves up to
 * BATCH cuts (the workload is deterministic, so a cut depends only on its
 * run's seed).
 *
 * Environment:
 *   LOOM_POWERLOSS_RUNS=N       runs (default 10000); the long form: 200000
 *   LOOM_POWERLOSS_SEED=S       the master seed (default 0x5eed)
 *   LOOM_POWERLOSS_REPRO=S      run only the run with seed S, keep its
 *                               directories and print them
 *   LOOM_POWERLOSS_WORKLOAD=W   only workload W (a name)
 *   LOOM_POWERLOSS_DIR_RANDOM=0 never let unsynced directory changes
 *                               survive (the strict model only)
 *   LOOM_POWERLOSS_LIST_FSYNCS=1  print each workload's fsync ops, by
 *                               ordinal (for fsync_mutants.sh)
 *   LOOM_IOSIM_DROP_FSYNC=N     the mutation knob (iosim.h)
 */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "iosim.h"
#include "loom.h"
#include "workload.h"

#define BATCH 64
#define MAX_TRACE 4096
#define MAX_REPORTED 10

typedef struct trace_entry {
  loom_io_op op;
  char path[56];
} trace_entry;

/* One run's plan, derived from its seed. */
typedef struct run_plan {
  uint64_t seed;
  size_t workload;
  uint64_t k;          /* cut before op k; k >= ops: after the workload */
  unsigned mode;       /* iosim_cut_mode | IOSIM_CUT_DIR_RANDOM */
  int double_cut;      /* cut again during the recovery */
} run_plan;

/* What the child reports per cut. */
typedef struct cut_record {
  int done;
  int cut_rc;
  int acked;
  int backups;
} cut_record;

typedef struct shared {
  wl_progress progress;
  uint64_t ops;
  uint64_t model_errors;
  uint64_t adopted;
  uint64_t ntrace;
  trace_entry trace[MAX_TRACE];
  cut_record cuts[BATCH];
} shared;

/* Per workload: its model and counting run. */
typedef struct workload_info {
  wl_model model;
  uint64_t ops;
  uint64_t ntrace;
  trace_entry *trace;
  char tmpl[PATH_MAX];
  int selected;
  uint64_t runs, failures, old_state, new_state;
} workload_info;

static shared *shm;
static workload_info info[32];
static char base_dir[64];
static int keep_dirs;

static uint64_t mix64(uint64_t x)
{
  x += UINT64_C(0x9e3779b97f4a7c15);
  x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
  return x ^ (x >> 31);
}

static const char *mode_name(unsigned mode)
{
  switch ((iosim_cut_mode)(mode & IOSIM_CUT_MODE_MASK)) {
  case IOSIM_CUT_DROP: return "drop";
  case IOSIM_CUT_KEEP: return "keep";
  case IOSIM_CUT_RANDOM_512: return "random-512";
  case IOSIM_CUT_RANDOM_4K: return "random-4k";
  }
  return "?";
}

static int dir_random_allowed = 1;

static void plan_run(uint64_t seed, run_plan *p)
{
  p->seed = seed;
  p->workload = (size_t)(mix64(seed ^ 1) % wl_workload_count);
  uint64_t ops = info[p->workload].ops;
  p->k = mix64(seed ^ 2) % (ops + 1);
  p->mode = (unsigned)(mix64(seed ^ 3) % 4);
  if (dir_random_allowed && mix64(seed ^ 4) % 4 == 0)
    p->mode |= IOSIM_CUT_DIR_RANDOM;
  p->double_cut = mix64(seed ^ 5) % 4 == 0;
}

static void describe_run(const run_plan *p, char *out, size_t size)
{
  const workload_info *wi = &info[p->workload];
  char at[128];
  if (p->k < wi->ntrace)
    snprintf(at, sizeof at, "before op %llu (%s %s)", (unsigned long long)p->k,
             loom_io_op_name(wi->trace[p->k].op), wi->trace[p->k].path);
  else
    snprintf(at, sizeof at, "after the workload (op %llu)",
             (unsigned long long)p->k);
  snprintf(out, size, "seed 0x%016llx: %s, cut %s, mode %s%s%s",
           (unsigned long long)p->seed, wl_workloads[p->workload].name, at,
           mode_name(p->mode),
           (p->mode & IOSIM_CUT_DIR_RANDOM) ? " + directory changes" : "",
           p->double_cut ? ", cut again in recovery" : "");
}

static int wait_child(pid_t pid)
{
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR)
      return -1;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

/* ---------------------------------------------------------------------- */
/* The child: run the workload, cutting where the batch says. */

typedef struct batch {
  const run_plan *runs;
  size_t n;
  char dir[PATH_MAX];   /* holds root/ and the cuts */
} batch;

static void cut_dir_path(const batch *b, size_t j, char *out, size_t size)
{
  wl_path(out, size, "%s/cut%zu", b->dir, j);
}

static void take_cut(batch *b, iosim *sim, size_t j)
{
  char out[PATH_MAX];
  cut_dir_path(b, j, out, sizeof out);
  cut_record *c = &shm->cuts[j];
  c->cut_rc = iosim_powercut(sim, b->runs[j].seed, out, b->runs[j].mode);
  c->acked = shm->progress.acked;
  c->backups = shm->progress.backups;
  c->done = 1;
}

static void cut_hook(void *ctx, iosim *sim, uint64_t k, loom_io_op op)
{
  (void)op;
  batch *b = ctx;
  for (size_t j = 0; j < b->n; j++)
    if (!shm->cuts[j].done && b->runs[j].k == k)
      take_cut(b, sim, j);
}

/* Run workload wi once in a child through a simulator rooted at
 * b->dir/root, taking b's cuts. With trace, record the ops. */
static int run_batch_child(size_t w, batch *b, int trace)
{
  const wl_workload *wl = &wl_workloads[w];
  char root[PATH_MAX], img[PATH_MAX];
  wl_path(root, sizeof root, "%s/root", b->dir);
  wl_path(img, sizeof img, "%s/img", root);
  if (mkdir(root, 0755) < 0)
    return errno;
  if (!wl->create) {
    int rc = wl_copy_tree(info[w].tmpl, img);
    if (rc)
      return rc;
  }
  memset(shm->cuts, 0, sizeof shm->cuts);
  memset(&shm->progress, 0, sizeof shm->progress);
  pid_t pid = fork();
  if (pid < 0)
    return errno;
  if (pid == 0) {
    iosim *sim;
    if (iosim_create(root, &sim))
      _exit(3);
    iosim_hook_set(sim, cut_hook, b);
    wl_run(wl, &info[w].model, img, sim, 0, &shm->progress);
    iosim_hook_set(sim, NULL, NULL);
    for (size_t j = 0; j < b->n; j++)
      if (!shm->cuts[j].done)
        take_cut(b, sim, j);
    shm->ops = iosim_count(sim);
    shm->model_errors = iosim_model_errors(sim);
    shm->adopted = iosim_adopted(sim);
    if (trace) {
      shm->ntrace = shm->ops < MAX_TRACE ? shm->ops : MAX_TRACE;
      for (uint64_t k = 0; k < shm->ntrace; k++)
        iosim_trace_op(sim, k, &shm->trace[k].op, shm->trace[k].path,
                       sizeof shm->trace[k].path);
    }
    iosim_destroy(sim);
    _exit(0);
  }
  return wait_child(pid) ? ECHILD : 0;
}

/* ---------------------------------------------------------------------- */
/* The parent: check each cut. */

typedef struct recovery_cut {
  uint64_t at;
  const char *out;
  uint64_t seed;
  unsigned mode;
  int done;
} recovery_cut;

static void recovery_hook(void *ctx, iosim *sim, uint64_t k, loom_io_op op)
{
  (void)op;
  recovery_cut *rc = ctx;
  if (!rc->done && k == rc->at) {
    iosim_powercut(sim, rc->seed, rc->out, rc->mode);
    rc->done = 1;
  }
}

/* Recover root/img through a simulator rooted at root; with cut, cut power
 * at cut->at (or after the recovery). Returns the ops taken. */
static uint64_t recover_with_sim(const char *root, unsigned flags,
                                 recovery_cut *cut)
{
  iosim *sim;
  if (iosim_create(root, &sim))
    return 0;
  /* The mutation applies to the recorded workload only. */
  iosim_drop_fsync_set(sim, UINT64_MAX);
  if (cut)
    iosim_hook_set(sim, recovery_hook, cut);
  char img[PATH_MAX];
  wl_path(img, sizeof img, "%s/img", root);
  loom_store *s;
  if (loom_store_open(img, flags, iosim_io(sim), &s) == 0)
    loom_store_close(s);
  iosim_hook_set(sim, NULL, NULL);
  if (cut && !cut->done) {
    iosim_powercut(sim, cut->seed, cut->out, cut->mode);
    cut->done = 1;
  }
  uint64_t ops = iosim_count(sim);
  iosim_destroy(sim);
  return ops;
}

/* Check run j of batch b; returns 0 or -1 with why. */
static int check_run(const batch *b, size_t j, char *why, size_t size)
{
  const run_plan *p = &b->runs[j];
  workload_info *wi = &info[p->workload];
  const cut_record *c = &shm->cuts[j];
  if (!c->done || c->cut_rc) {
    snprintf(why, size, "the cut was not taken: %s", strerror(c->cut_rc));
    return -1;
  }
  char cut[PATH_MAX], img[PATH_MAX];
  cut_dir_path(b, j, cut, sizeof cut);
  wl_path(img, sizeof img, "%s/img", cut);
  int lo = c->acked, hi = c->acked + 1;
  if (!p->double_cut) {
    int got = wl_check(&wi->model, img, lo, hi, c->backups > 0, why, size);
    if (got >= 0)
      *(got == (lo < 0 ? 0 : lo) ? &wi->old_state : &wi->new_state) += 1;
    return got < 0 ? -1 : 0;
  }
  /* Where an uninterrupted recovery ends. */
  char first[PATH_MAX], count[PATH_MAX], second[PATH_MAX];
  wl_path(first, sizeof first, "%s.first", cut);
  wl_path(count, sizeof count, "%s.count", cut);
  wl_path(second, sizeof second, "%s.second", cut);
  if (wl_copy_tree(cut, first) || wl_copy_tree(cut, count)) {
    snprintf(why, size, "copying the cut failed");
    return -1;
  }
  char first_img[PATH_MAX], second_img[PATH_MAX];
  wl_path(first_img, sizeof first_img, "%s/img", first);
  wl_path(second_img, sizeof second_img, "%s/img", second);
  int expected = wl_check(&wi->model, first_img, lo, hi, c->backups > 0, why, size);
  if (expected < 0)
    return -1;
  *(expected == (lo < 0 ? 0 : lo) ? &wi->old_state : &wi->new_state) += 1;
  unsigned flags = lo < 0 ? LOOM_CREATE : 0;
  uint64_t ops = recover_with_sim(count, flags, NULL);
  recovery_cut rcut = {
      .at = mix64(p->seed ^ 6) % (ops + 1),
      .out = second,
      .seed = mix64(p->seed ^ 7),
      .mode = (unsigned)(mix64(p->seed ^ 8) % 4),
  };
  recover_with_sim(cut, flags, &rcut);
  char why2[512];
  int got = wl_check(&wi->model, second_img, lo, hi, c->backups > 0, why2,
                     sizeof why2);
  if (got != expected) {
    if (got < 0)
      snprintf(why, size, "second cut before recovery op %llu of %llu (mode "
               "%s), then: %s", (unsigned long long)rcut.at,
               (unsigned long long)ops, mode_name(rcut.mode), why2);
    else
      snprintf(why, size, "second cut before recovery op %llu of %llu (mode "
               "%s): recovered to state %d, an uninterrupted recovery gives %d",
               (unsigned long long)rcut.at, (unsigned long long)ops,
               mode_name(rcut.mode), got, expected);
    return -1;
  }
  return 0;
}

/* Run and check one batch of runs of workload w. Returns failures. */
static uint64_t do_batch(size_t w, const run_plan *runs, size_t n, uint64_t id)
{
  batch b = {.runs = runs, .n = n};
  wl_path(b.dir, sizeof b.dir, "%s/batch%llu", base_dir, (unsigned long long)id);
  assert_int_equal(mkdir(b.dir, 0755), 0);
  int rc = run_batch_child(w, &b, 0);
  uint64_t failures = 0;
  char why[1024], what[512];
  if (rc || !shm->progress.finished || shm->model_errors) {
    print_error("powerloss_test: %s: the recorded run failed: %s, step %d: "
                "%s, model errors %llu\n", wl_workloads[w].name,
                rc ? strerror(rc) : "", shm->progress.failed_step,
                loom_strerror(shm->progress.rc),
                (unsigned long long)shm->model_errors);
    failures = n;
  } else {
    for (size_t j = 0; j < n; j++) {
      info[w].runs++;
      if (check_run(&b, j, why, sizeof why) == 0)
        continue;
      failures++;
      if (info[w].failures++ < MAX_REPORTED) {
        describe_run(&runs[j], what, sizeof what);
        print_error("powerloss_test: FAIL %s (acknowledged state %d): %s\n"
                    "  reproduce: LOOM_POWERLOSS_REPRO=0x%016llx\n", what,
                    shm->cuts[j].acked, why, (unsigned long long)runs[j].seed);
      }
    }
  }
  if (keep_dirs)
    printf("powerloss_test: directories kept in %s\n", b.dir);
  else
    wl_remove_tree(b.dir);
  return failures;
}

/* ---------------------------------------------------------------------- */
/* Tests */

static int group_setup(void **state)
{
  (void)state;
  shm = mmap(NULL, sizeof *shm, PROT_READ | PROT_WRITE,
             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shm == MAP_FAILED || wl_tempdir("loom-powerloss", base_dir, sizeof base_dir))
    return -1;
  const char *only = getenv("LOOM_POWERLOSS_WORKLOAD");
  for (size_t w = 0; w < wl_workload_count; w++) {
    workload_info *wi = &info[w];
    wi->selected = !only || !*only || !strcmp(only, wl_workloads[w].name);
    wl_model_build(&wl_workloads[w], &wi->model);
    snprintf(wi->tmpl, sizeof wi->tmpl, "%s/template%zu", base_dir, w);
    if (wl_template(&wl_workloads[w], wi->tmpl))
      return -1;
  }
  return 0;
}

static int group_teardown(void **state)
{
  (void)state;
  for (size_t w = 0; w < wl_workload_count; w++) {
    wl_model_free(&info[w].model);
    free(info[w].trace);
  }
  if (!keep_dirs)
    wl_remove_tree(base_dir);
  return 0;
}

/* Each workload once, whole, through the simulator: it must succeed, the
 * model must follow every op, and the end state must check. */
static void test_counting_runs(void **state)
{
  (void)state;
  int list = (int)wl_env_u64("LOOM_POWERLOSS_LIST_FSYNCS", 0);
  for (size_t w = 0; w < wl_workload_count; w++) {
    if (!info[w].selected)
      continue;
    run_plan p = {.seed = 1, .workload = w, .k = UINT64_MAX,
                  .mode = IOSIM_CUT_DROP};
    batch b = {.runs = &p, .n = 1};
    wl_path(b.dir, sizeof b.dir, "%s/count%zu", base_dir, w);
    assert_int_equal(mkdir(b.dir, 0755), 0);
    assert_int_equal(run_batch_child(w, &b, 1), 0);
    workload_info *wi = &info[w];
    if (!shm->progress.finished)
      fail_msg("%s: the recorded run failed at step %d: %s",
               wl_workloads[w].name, shm->progress.failed_step,
               loom_strerror(shm->progress.rc));
    assert_int_equal(shm->model_errors, 0);
    /* Only the image directory of a creating workload appears behind the
     * simulator's back (store_open makes it with mkdir(2)). */
    assert_true(shm->adopted <= (uint64_t)wl_workloads[w].create);
    wi->ops = shm->ops;
    wi->ntrace = shm->ntrace;
    wi->trace = malloc(wi->ntrace * sizeof *wi->trace + 1);
    assert_non_null(wi->trace);
    memcpy(wi->trace, shm->trace, wi->ntrace * sizeof *wi->trace);
    if (list && wi->selected) {
      uint64_t ordinal = 0;
      for (uint64_t k = 0; k < wi->ntrace; k++)
        if (wi->trace[k].op == LOOM_IO_FSYNC)
          printf("fsync %llu %s op %llu %s\n", (unsigned long long)ordinal++,
                 wl_workloads[w].name, (unsigned long long)k, wi->trace[k].path);
    }
    /* The end state, after a clean shutdown, with nothing lost. */
    char why[1024], img[PATH_MAX];
    wl_path(img, sizeof img, "%s/cut0/img", b.dir);
    int last = (int)wi->model.nstates - 1;
    if (wl_check(&wi->model, img, last, last, shm->cuts[0].backups > 0, why,
                 sizeof why) != last)
      fail_msg("%s: cut after a clean close: %s", wl_workloads[w].name, why);
    wl_remove_tree(b.dir);
  }
}

static void test_power_cuts(void **state)
{
  (void)state;
  uint64_t repro = wl_env_u64("LOOM_POWERLOSS_REPRO", 0);
  uint64_t runs = repro ? 1 : wl_env_u64("LOOM_POWERLOSS_RUNS", 10000);
  uint64_t master = wl_env_u64("LOOM_POWERLOSS_SEED", 0x5eed);
  keep_dirs = repro != 0;
  dir_random_allowed = (int)wl_env_u64("LOOM_POWERLOSS_DIR_RANDOM", 1);
  run_plan *plans = calloc(runs ? runs : 1, sizeof *plans);
  assert_non_null(plans);
  uint64_t n = 0;
  for (uint64_t r = 0; r < runs; r++) {
    run_plan p;
    plan_run(repro ? repro : mix64(master + r), &p);
    if (repro || info[p.workload].selected)
      plans[n++] = p;
  }
  if (repro) {
    char what[512];
    describe_run(&plans[0], what, sizeof what);
    printf("powerloss_test: reproducing %s\n", what);
  }
  uint64_t failures = 0, batches = 0;
  run_plan group[BATCH];
  for (size_t w = 0; w < wl_workload_count; w++) {
    size_t g = 0;
    for (uint64_t r = 0; r < n; r++) {
      if (plans[r].workload != w)
        continue;
      group[g++] = plans[r];
      if (g == BATCH) {
        failures += do_batch(w, group, g, batches++);
        g = 0;
      }
    }
    if (g)
      failures += do_batch(w, group, g, batches++);
  }
  uint64_t total = 0;
  for (size_t w = 0; w < wl_workload_count; w++) {
    const workload_info *wi = &info[w];
    if (!wi->runs)
      continue;
    total += wi->runs;
    printf("powerloss_test: %-26s %5llu runs over %3llu ops: %5llu recovered "
           "to the acknowledged state, %5llu to the next, %llu failed\n",
           wl_workloads[w].name, (unsigned long long)wi->runs,
           (unsigned long long)wi->ops, (unsigned long long)wi->old_state,
           (unsigned long long)wi->new_state, (unsigned long long)wi->failures);
  }
  printf("powerloss_test: %llu runs in %llu batches, %llu failed (master seed "
         "0x%llx)\n", (unsigned long long)total, (unsigned long long)batches,
         (unsigned long long)failures, (unsigned long long)master);
  int reached = 0;
  char path[128];
  iosim *probe;
  assert_int_equal(iosim_create(NULL, &probe), 0);
  uint64_t dropped = iosim_dropped_fsync(probe, &reached, path, sizeof path);
  iosim_destroy(probe);
  if (dropped != UINT64_MAX)
    printf("powerloss_test: mutation LOOM_IOSIM_DROP_FSYNC=%llu active\n",
           (unsigned long long)dropped);
  fflush(stdout);
  free(plans);
  assert_int_equal(failures, 0);
  if (!repro && !getenv("LOOM_POWERLOSS_WORKLOAD"))
    assert_true(total >= runs);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_counting_runs),
    cmocka_unit_test(test_power_cuts),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
