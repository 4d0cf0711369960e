/*
 * ioerror_test.c: every I/O op of every workload fails in turn.
 *
 * For each workload (workload.c) the ops are counted once; then for every
 * op index K the workload runs in a forked child whose op K fails:
 *
 *   eio         the op fails with EIO and is not performed
 *   enospc      the op fails with ENOSPC and is not performed
 *   short       (pwrite only) half the bytes are written, then ENOSPC
 *   full        (pwrite only) this and every later pwrite fail with ENOSPC:
 *               a disk that stays full
 *
 * The workload retries a failed step once (WL_RETRY): a step that failed
 * before its commit point must be retryable, one that failed after it
 * already holds the new position. Checked:
 *
 *   - the child never crashes (no abort, no signal) whatever fails;
 *   - a failed op makes some call return an error (close(2) failures the
 *     engine may ignore: it closes only after fsync or for reading);
 *   - recovering the directory with the POSIX io gives the last
 *     acknowledged state or the next one (nothing acknowledged is lost),
 *     the pages match, loom_verify passes; a run that acknowledged every
 *     step (thanks to its retry) ends at the last state.
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

#define MAX_TRACE 4096
#define MAX_REPORTED 10

typedef enum fault_kind { F_EIO, F_ENOSPC, F_SHORT, F_FULL, F_KINDS } fault_kind;

static const char *const kind_names[F_KINDS] = {"eio", "enospc", "short", "full"};

typedef struct trace_entry {
  loom_io_op op;
  char path[56];
} trace_entry;

typedef struct shared {
  wl_progress progress;
  uint64_t ops;
  uint64_t injected;
  uint64_t first_fault;
  uint64_t ntrace;
  trace_entry trace[MAX_TRACE];
} shared;

static shared *shm;
static uint64_t total_runs;

/* Run w in a child with fault kind at op k (UINT64_MAX: none); nth_write
 * is k's ordinal among pwrites for F_FULL. 0 if the child exited. */
static int run_child(const wl_workload *w, const wl_model *m, const char *dir,
                     fault_kind kind, uint64_t k, uint64_t nth_write,
                     int trace, char *why, size_t size)
{
  memset(&shm->progress, 0, sizeof shm->progress);
  shm->ops = shm->injected = 0;
  shm->first_fault = UINT64_MAX;
  pid_t pid = fork();
  if (pid < 0) {
    snprintf(why, size, "fork: %s", strerror(errno));
    return -1;
  }
  if (pid == 0) {
    iosim *sim;
    if (iosim_create(NULL, &sim))
      _exit(3);
    if (k != UINT64_MAX) {
      iosim_fault f = {.kind = IOSIM_FAIL, .err = EIO, .index = k};
      if (kind == F_ENOSPC)
        f.err = ENOSPC;
      if (kind == F_SHORT) {
        f.kind = IOSIM_SHORT_WRITE;
        f.err = ENOSPC;
      }
      if (kind == F_FULL) {
        f.err = ENOSPC;
        f.by_type = 1;
        f.op = LOOM_IO_PWRITE;
        f.index = nth_write;
        f.sticky = 1;
      }
      if (iosim_fault_add(sim, &f))
        _exit(3);
    }
    wl_run(w, m, dir, sim, WL_RETRY, &shm->progress);
    shm->ops = iosim_count(sim);
    shm->injected = iosim_faults_injected(sim);
    shm->first_fault = iosim_fault_fired(sim, 0); /* ours, not the workload's */
    if (trace) {
      shm->ntrace = shm->ops < MAX_TRACE ? shm->ops : MAX_TRACE;
      for (uint64_t i = 0; i < shm->ntrace; i++)
        iosim_trace_op(sim, i, &shm->trace[i].op, shm->trace[i].path,
                       sizeof shm->trace[i].path);
    }
    iosim_destroy(sim);
    _exit(0);
  }
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) {
      snprintf(why, size, "waitpid: %s", strerror(errno));
      return -1;
    }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
    return 0;
  if (WIFSIGNALED(status))
    snprintf(why, size, "the process died of signal %d (%s)", WTERMSIG(status),
             strsignal(WTERMSIG(status)));
  else
    snprintf(why, size, "the process exited with %d", WEXITSTATUS(status));
  return -1;
}

static int fresh_copy(const char *src, const char *dst)
{
  char backup[160];
  wl_path(backup, sizeof backup, "%s.backup", dst);
  wl_remove_tree(backup);
  int rc = wl_remove_tree(dst);
  if (!rc && access(src, F_OK) == 0)
    rc = wl_copy_tree(src, dst);
  return rc;
}

typedef struct tally {
  uint64_t runs, errors_returned, retried_ok, poisoned, old_state, new_state;
} tally;

static void ioerror_workload(const wl_workload *w)
{
  wl_model m;
  wl_model_build(w, &m);
  char base[64], tmpl[128], work[128], why[1024];
  assert_int_equal(wl_tempdir("loom-ioerror", base, sizeof base), 0);
  wl_path(tmpl, sizeof tmpl, "%s/template", base);
  wl_path(work, sizeof work, "%s/work", base);
  assert_int_equal(wl_template(w, tmpl), 0);

  assert_int_equal(fresh_copy(tmpl, work), 0);
  if (run_child(w, &m, work, F_EIO, UINT64_MAX, 0, 1, why, sizeof why))
    fail_msg("%s: counting run: %s", w->name, why);
  if (!shm->progress.finished)
    fail_msg("%s: counting run failed: %s", w->name,
             loom_strerror(shm->progress.rc));
  uint64_t total = shm->ops, ntrace = shm->ntrace;
  trace_entry *trace = malloc(ntrace * sizeof *trace + 1);
  assert_non_null(trace);
  memcpy(trace, shm->trace, ntrace * sizeof *trace);

  tally t = {0};
  int verbose = (int)wl_env_u64("LOOM_IOERROR_VERBOSE", 0);
  int failures = 0;
  uint64_t nth_write = 0;
  for (uint64_t k = 0; k < total && k < ntrace; k++) {
    int is_write = trace[k].op == LOOM_IO_PWRITE;
    for (int kind = 0; kind < F_KINDS; kind++) {
      if ((kind == F_SHORT || kind == F_FULL) && !is_write)
        continue;
      char what[256];
      snprintf(what, sizeof what, "%s: %s at op %llu (%s %s)", w->name,
               kind_names[kind], (unsigned long long)k,
               loom_io_op_name(trace[k].op), trace[k].path);
      assert_int_equal(fresh_copy(tmpl, work), 0);
      t.runs++;
      const wl_progress *pr = &shm->progress;
      const char *problem = NULL;
      if (run_child(w, &m, work, (fault_kind)kind, k, nth_write, 0, why,
                    sizeof why)) {
        problem = why;
      } else if ((w->arena_flags & LOOM_APPLY_ASYNC) && !shm->injected) {
        /* With a checkpoint thread the number of checkpoints (and so of
         * ops) depends on timing: this run ended before op k. */
        continue;
      } else if (shm->first_fault != k &&
                 !(w->arena_flags & LOOM_APPLY_ASYNC)) {
        /* (With a checkpoint thread the two threads' ops interleave
         * differently from run to run: the nth write may be another op.) */
        snprintf(why, sizeof why, "the fault landed on op %llu",
                 (unsigned long long)shm->first_fault);
        problem = why;
      } else if (!pr->rc && trace[k].op != LOOM_IO_CLOSE &&
                 !(w->arena_flags & LOOM_APPLY_ASYNC)) {
        /* (async: op k of this run may be another op than the counted
         * run's, e.g. a close whose failure the engine ignores) */
        problem = "no call returned an error";
      } else {
        if (pr->rc)
          t.errors_returned++;
        if (pr->rc && pr->finished)
          t.retried_ok++;
        if (pr->retried_rc == LOOM_EPANIC)
          t.poisoned++;
        int lo = pr->finished ? (int)w->nsteps : pr->acked;
        int hi = pr->finished ? (int)w->nsteps : pr->acked + 1;
        int got = wl_check(&m, work, lo, hi, pr->backups > 0, why, sizeof why);
        if (got < 0)
          problem = why;
        else
          *(got == (lo < 0 ? 0 : lo) ? &t.old_state : &t.new_state) += 1;
      }
      if (verbose)
        printf("ioerror_test: %s: first error step %d %s; retry %s; moved %d; "
               "acknowledged %d; finished %d; %s\n", what, pr->failed_step,
               loom_strerror(pr->rc), loom_strerror(pr->retried_rc), pr->moved,
               pr->acked, pr->finished, problem ? problem : "ok");
      if (problem && failures++ < MAX_REPORTED)
        print_error("ioerror_test: FAIL %s: %s (first error: step %d, %s; "
                    "retry: %s; acknowledged state %d)\n", what, problem,
                    pr->failed_step, loom_strerror(pr->rc),
                    loom_strerror(pr->retried_rc), pr->acked);
    }
    if (is_write)
      nth_write++;
  }
  printf("ioerror_test: %-26s %3llu ops, %4llu faults: %llu returned an "
         "error, %llu runs completed after a retry, %llu retries found the "
         "handle poisoned; recovered to the acknowledged state %llu times, "
         "to the next %llu\n", w->name, (unsigned long long)total,
         (unsigned long long)t.runs, (unsigned long long)t.errors_returned,
         (unsigned long long)t.retried_ok, (unsigned long long)t.poisoned,
         (unsigned long long)t.old_state, (unsigned long long)t.new_state);
  fflush(stdout);
  total_runs += t.runs;
  free(trace);
  wl_remove_tree(base);
  wl_model_free(&m);
  if (failures)
    fail_msg("%s: %d fault runs failed (the first %d are listed above)",
             w->name, failures, MAX_REPORTED);
}

static void test_workload(void **state)
{
  ioerror_workload((const wl_workload *)*state);
}

static void test_total(void **state)
{
  (void)state;
  printf("ioerror_test: %llu fault runs\n", (unsigned long long)total_runs);
  assert_true(total_runs > 0);
}

int main(void)
{
  shm = mmap(NULL, sizeof *shm, PROT_READ | PROT_WRITE,
             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shm == MAP_FAILED)
    return 1;
  return wl_run_group("ioerror_test", test_workload, test_total);
}
