/*
 * crash_test.c: crash-point enumeration against the core engine.
 *
 * For each workload (workload.c): run it once counting its I/O ops (T),
 * then for every op index K < T run it in a forked child that is killed
 * (SIGKILL) right before op K, and recover the directory in the parent
 * with the plain POSIX io. The recovered position must be exactly the last
 * acknowledged one or the one after it, with every page's bytes as the
 * model says, and loom_verify must pass.
 *
 * Crashes during recovery: for every K whose crash state makes recovery do
 * more I/O than a clean open (a patch to apply again, hashes to rebuild),
 * recovery itself is killed before each of its ops J, and recovering again
 * must give exactly what an uninterrupted recovery of that crash state
 * gives.
 *
 * A process crash keeps the page cache, so every op before K is visible:
 * what is tested here is the order of the engine's writes and its recovery
 * logic. powerloss_test.c tests what fsync makes durable.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "iosim.h"
#include "loom.h"
#include "workload.h"

#define MAX_TRACE 8192
#define MAX_REPORTED 10

typedef struct trace_entry {
  loom_io_op op;
  char path[56];
} trace_entry;

/* Shared with the forked children. */
typedef struct shared {
  wl_progress progress;
  uint64_t ops;
  uint64_t ntrace;
  trace_entry trace[MAX_TRACE];
} shared;

static shared *shm;
static uint64_t total_points, total_recovery_points;

typedef enum child_end { CHILD_KILLED, CHILD_EXITED, CHILD_BROKEN } child_end;

static child_end wait_child(pid_t pid, char *why, size_t size)
{
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) {
      snprintf(why, size, "waitpid: %s", strerror(errno));
      return CHILD_BROKEN;
    }
  if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
    return CHILD_KILLED;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
    return CHILD_EXITED;
  if (WIFSIGNALED(status))
    snprintf(why, size, "the child died of signal %d (%s)", WTERMSIG(status),
             strsignal(WTERMSIG(status)));
  else
    snprintf(why, size, "the child exited with %d", WEXITSTATUS(status));
  return CHILD_BROKEN;
}

/* Run the workload in a child killed before op kill_at (UINT64_MAX: never);
 * with trace, record its ops in shm->trace. */
static child_end run_workload(const wl_workload *w, const wl_model *m,
                              const char *dir, uint64_t kill_at, int trace,
                              char *why, size_t size)
{
  memset(&shm->progress, 0, sizeof shm->progress);
  shm->ops = 0;
  pid_t pid = fork();
  if (pid < 0) {
    snprintf(why, size, "fork: %s", strerror(errno));
    return CHILD_BROKEN;
  }
  if (pid == 0) {
    iosim *sim;
    if (iosim_create(NULL, &sim))
      _exit(3);
    iosim_kill_before(sim, kill_at);
    wl_run(w, m, dir, sim, 0, &shm->progress);
    shm->ops = iosim_count(sim);
    if (trace) {
      shm->ntrace = shm->ops < MAX_TRACE ? shm->ops : MAX_TRACE;
      for (uint64_t k = 0; k < shm->ntrace; k++)
        iosim_trace_op(sim, k, &shm->trace[k].op, shm->trace[k].path,
                       sizeof shm->trace[k].path);
    }
    iosim_destroy(sim);
    _exit(0);
  }
  return wait_child(pid, why, size);
}

/* Open (recover) and close dir in a child killed before op kill_at;
 * *ops receives the ops a complete recovery took. */
static child_end run_recovery(const char *dir, unsigned flags, uint64_t kill_at,
                              uint64_t *ops, char *why, size_t size)
{
  shm->ops = 0;
  pid_t pid = fork();
  if (pid < 0) {
    snprintf(why, size, "fork: %s", strerror(errno));
    return CHILD_BROKEN;
  }
  if (pid == 0) {
    iosim *sim;
    if (iosim_create(NULL, &sim))
      _exit(3);
    iosim_kill_before(sim, kill_at);
    loom_store *s;
    int rc = loom_store_open(dir, flags, iosim_io(sim), &s);
    if (!rc)
      rc = loom_store_close(s);
    shm->ops = iosim_count(sim);
    iosim_destroy(sim);
    _exit(rc ? 4 : 0);
  }
  child_end end = wait_child(pid, why, size);
  if (ops)
    *ops = shm->ops;
  return end;
}

static void op_name(uint64_t k, char *out, size_t size)
{
  if (k < shm->ntrace)
    snprintf(out, size, "op %llu (%s %s)", (unsigned long long)k,
             loom_io_op_name(shm->trace[k].op), shm->trace[k].path);
  else
    snprintf(out, size, "op %llu", (unsigned long long)k);
}

typedef struct suite_dirs {
  char base[64];
  char tmpl[128];
  char work[128];
  char state[128];
  char scratch[128];
} suite_dirs;

/* dst := a fresh copy of src (src missing: dst missing too). */
static int fresh_copy(const char *src, const char *dst)
{
  char backup[160];
  snprintf(backup, sizeof backup, "%s.backup", dst);
  wl_remove_tree(backup);
  int rc = wl_remove_tree(dst);
  if (!rc && access(src, F_OK) == 0)
    rc = wl_copy_tree(src, dst);
  snprintf(backup, sizeof backup, "%s.backup", src);
  if (!rc && access(backup, F_OK) == 0) {
    char dbackup[160];
    snprintf(dbackup, sizeof dbackup, "%s.backup", dst);
    rc = wl_copy_tree(backup, dbackup);
  }
  return rc;
}

/* Crash states whose recovery was already enumerated (a kill before an op
 * that changes nothing, a pread or a close, leaves the same state). */
#define MAX_SEEN 1024
static uint64_t seen[MAX_SEEN];
static size_t nseen;

static int seen_before(uint64_t digest)
{
  for (size_t i = 0; i < nseen; i++)
    if (seen[i] == digest)
      return 1;
  if (nseen < MAX_SEEN)
    seen[nseen++] = digest;
  return 0;
}

/* Crash recovery of the crash state in d->state at every op; each must
 * end where an uninterrupted recovery ends. Returns failures. */
static int crash_recovery(const wl_model *m, suite_dirs *d, int lo, int hi,
                          uint64_t clean_ops, uint64_t k, uint64_t *points)
{
  char why[512];
  /* The same state with the same acknowledged range: already done. */
  if (seen_before(wl_tree_digest(d->state) ^ (uint64_t)(lo + 7) * 0x9e37))
    return 0;
  unsigned flags = lo < 0 ? LOOM_CREATE : 0;
  uint64_t ops = 0;
  assert_int_equal(fresh_copy(d->state, d->scratch), 0);
  child_end end = run_recovery(d->scratch, flags, UINT64_MAX, &ops, why, sizeof why);
  if (end != CHILD_EXITED || ops == clean_ops)
    return 0; /* nothing more than a clean open (errors: the main check) */
  assert_int_equal(fresh_copy(d->state, d->scratch), 0);
  int expected = wl_check(m, d->scratch, lo, hi, 0, why, sizeof why);
  if (expected < 0)
    return 0; /* reported by the main check of this crash point */
  int failures = 0;
  for (uint64_t j = 0; j < ops; j++) {
    assert_int_equal(fresh_copy(d->state, d->scratch), 0);
    end = run_recovery(d->scratch, flags, j, NULL, why, sizeof why);
    int got = end == CHILD_BROKEN ? -1
              : wl_check(m, d->scratch, lo, hi, 0, why, sizeof why);
    (*points)++;
    if (got != expected) {
      char at[128];
      op_name(k, at, sizeof at);
      if (failures++ < MAX_REPORTED)
        print_error("crash_test: %s: crash before %s, then recovery killed "
                    "before its op %llu: expected state %d, got %d: %s\n",
                    m->w->name, at, (unsigned long long)j, expected, got, why);
    }
  }
  return failures;
}

static void crash_workload(const wl_workload *w)
{
  wl_model m;
  wl_model_build(w, &m);
  suite_dirs d;
  assert_int_equal(wl_tempdir("loom-crash", d.base, sizeof d.base), 0);
  snprintf(d.tmpl, sizeof d.tmpl, "%s/template", d.base);
  snprintf(d.work, sizeof d.work, "%s/work", d.base);
  snprintf(d.state, sizeof d.state, "%s/state", d.base);
  snprintf(d.scratch, sizeof d.scratch, "%s/scratch", d.base);
  assert_int_equal(wl_template(w, d.tmpl), 0);
  char why[512];

  /* The counting run: completes, ends at the last state. */
  assert_int_equal(fresh_copy(d.tmpl, d.work), 0);
  child_end end = run_workload(w, &m, d.work, UINT64_MAX, 1, why, sizeof why);
  if (end != CHILD_EXITED)
    fail_msg("%s: counting run: %s", w->name, why);
  if (!shm->progress.finished)
    fail_msg("%s: counting run failed at step %d: %s (%d)", w->name,
             shm->progress.failed_step, loom_strerror(shm->progress.rc),
             shm->progress.rc);
  uint64_t total = shm->ops;
  if (wl_env_u64("LOOM_CRASH_TRACE", 0))
    for (uint64_t k = 0; k < shm->ntrace; k++)
      printf("crash_test: %s: op %3llu %-9s %s\n", w->name,
             (unsigned long long)k, loom_io_op_name(shm->trace[k].op),
             shm->trace[k].path);
  int last = (int)m.nstates - 1;
  if (wl_check(&m, d.work, last, last, shm->progress.backups > 0, why,
               sizeof why) != last)
    fail_msg("%s: after the complete run: %s", w->name, why);
  uint64_t clean_ops = 0;
  end = run_recovery(d.work, 0, UINT64_MAX, &clean_ops, why, sizeof why);
  assert_int_equal(end, CHILD_EXITED);

  int failures = 0;
  uint64_t points = 0, recovery_points = 0, old_state = 0, new_state = 0;
  nseen = 0;
  for (uint64_t k = 0; k < total; k++) {
    char at[128];
    op_name(k, at, sizeof at);
    assert_int_equal(fresh_copy(d.tmpl, d.work), 0);
    end = run_workload(w, &m, d.work, k, 0, why, sizeof why);
    points++;
    /* With a checkpoint thread the number of checkpoints (and so of ops)
     * depends on timing: a run may end before op k. */
    if (end == CHILD_EXITED && (w->arena_flags & LOOM_APPLY_ASYNC))
      continue;
    if (end != CHILD_KILLED) {
      if (failures++ < MAX_REPORTED)
        print_error("crash_test: %s: kill before %s: %s\n", w->name, at,
                    end == CHILD_EXITED ? "the run ended before that op"
                                        : why);
      continue;
    }
    const wl_progress *pr = &shm->progress;
    if (pr->rc) {
      if (failures++ < MAX_REPORTED)
        print_error("crash_test: %s: kill before %s: step %d had failed "
                    "first: %s\n", w->name, at, pr->failed_step,
                    loom_strerror(pr->rc));
      continue;
    }
    int lo = pr->acked, hi = pr->acked + 1, backups = pr->backups;
    assert_int_equal(fresh_copy(d.work, d.state), 0);
    failures += crash_recovery(&m, &d, lo, hi, clean_ops, k, &recovery_points);
    int got = wl_check(&m, d.work, lo, hi, backups > 0, why, sizeof why);
    if (got < 0 && failures++ < MAX_REPORTED)
      print_error("crash_test: %s: kill before %s (acknowledged state %d): "
                  "%s\n", w->name, at, lo, why);
    if (got >= 0 && got == (lo < 0 ? 0 : lo))
      old_state++;
    else if (got >= 0)
      new_state++;
  }
  printf("crash_test: %-26s %3llu ops, %4llu crash points (%llu recovered to "
         "the acknowledged state, %llu to the next), %5llu in recovery\n",
         w->name, (unsigned long long)total, (unsigned long long)points,
         (unsigned long long)old_state, (unsigned long long)new_state,
         (unsigned long long)recovery_points);
  fflush(stdout);
  total_points += points;
  total_recovery_points += recovery_points;
  wl_remove_tree(d.base);
  wl_model_free(&m);
  if (failures)
    fail_msg("%s: %d crash points failed (the first %d are listed above)",
             w->name, failures, MAX_REPORTED);
}

static void test_workload(void **state)
{
  crash_workload((const wl_workload *)*state);
}

static void test_total(void **state)
{
  (void)state;
  printf("crash_test: %llu crash points in workloads, %llu in recovery, "
         "%llu in all\n", (unsigned long long)total_points,
         (unsigned long long)total_recovery_points,
         (unsigned long long)(total_points + total_recovery_points));
  assert_true(total_points + total_recovery_points >= 1000);
}

int main(void)
{
  shm = mmap(NULL, sizeof *shm, PROT_READ | PROT_WRITE,
             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shm == MAP_FAILED)
    return 1;
  return wl_run_group("crash_test", test_workload, test_total);
}
