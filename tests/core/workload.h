/*
 * workload.h: deterministic workloads against the core engine, and the
 * model of what the image holds at each position, shared by the crash,
 * power-loss and I/O-error suites (tests/core/).
 *
 * A workload is a *template* (an image directory built once, through the
 * plain POSIX io, by its setup steps; or nothing, when the workload creates
 * the store itself) and a list of *steps* run through any loom_io:
 *
 *   WL_PATCH   a streamed patch (loom_store_patch_begin/add/commit) listing
 *              the pages in `written`; pages grown but not listed are zeros
 *   WL_BASE    a base image (LOOM_PATCH_BASE) of `pages` pages, the epoch
 *              raised by one and seq by five
 *   WL_SAVE    arena workloads: write the pages in `written` (some may lie
 *              past the new length: they are not saved but stay in the
 *              arena), then loom_save(low = pages, high = arena)
 *   WL_BACKUP  loom_store_backup() to "<dir>.backup"
 *   WL_EPOCH   loom_store_set_epoch(epoch + 1): a promotion
 *   WL_REOPEN  close the store (whatever it returns) and open it again
 *              through the same io: a process that died and restarted
 *              without a power loss (the page cache kept everything)
 *
 * A step with fail_fsync set arms a fault first: the next fsync of that
 * file fails with EIO. The step must then fail after its commit point (the
 * handle already holds the new position): that failure is expected, not
 * recorded, and the step counts as acknowledged.
 *
 * Page contents are a pure function of (step number, page number), so the
 * model (wl_model_build) knows every position's bytes: states[0] is the
 * template's position (the empty position for a creating workload) and
 * states[i] the position after step i.
 *
 * wl_run() reports its progress in a wl_progress (put it in shared memory
 * when running in a forked child): `acked` is the index of the last state
 * the engine acknowledged (a step's call returned 0), -1 while a creating
 * workload has not opened its store yet. A crash at any instant must then
 * recover to states[acked] or states[acked + 1].
 */
#ifndef WORKLOAD_H
#define WORKLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "iosim.h"
#include "loom.h"
#include "loom_io.h"

#define WL_MAX_STEPS 6
#define WL_MAX_PAGES 640u /* image pages (past one 512-page hash block) */
#define WL_ARENA_PAGES 64u /* arena workloads keep their image under 32 */
#define WL_MAX_STATES (WL_MAX_STEPS + 1)

typedef enum wl_kind {
  WL_PATCH, WL_BASE, WL_SAVE, WL_BACKUP, WL_EPOCH, WL_REOPEN
} wl_kind;

typedef struct wl_step {
  wl_kind kind;
  uint64_t pages;    /* image length after the step */
  uint32_t written;  /* bit n: page n gets new contents */
  uint64_t far_page; /* WL_PATCH: one more page (>= 32) written; 0: none */
  const char *fail_fsync; /* see above; NULL: none */
} wl_step;

typedef struct wl_workload {
  const char *name;
  int create;              /* the workload creates the store (no template) */
  int open_fail_dir_fsync; /* the first open's first fsync of the image
                              directory fails with EIO: that open must
                              fail, and the workload opens again (a
                              restart without a power loss) */
  int arena;               /* steps are loom_save on an arena */
  unsigned arena_flags;    /* loom_options.flags besides LOOM_CREATE */
  unsigned store_flags;    /* loom_store_open flags besides LOOM_CREATE */
  uint64_t log_bytes;      /* arena workloads: loom_options.log_bytes */
  loom_tracker tracker;
  size_t nsetup;
  wl_step setup[WL_MAX_STEPS];
  size_t nsteps;
  wl_step steps[WL_MAX_STEPS];
} wl_workload;

extern const wl_workload wl_workloads[];
extern const size_t wl_workload_count;

typedef struct wl_state {
  loom_position pos;         /* commit_time_ns not modelled */
  uint8_t *bytes;            /* pos.pages * LOOM_PAGE_SIZE */
  uint64_t *hashes;          /* pos.pages page hashes */
  int backup;                /* the step that led here was a backup */
} wl_state;

typedef struct wl_model {
  const wl_workload *w;
  size_t nstates;            /* nsteps + 1 */
  wl_state states[WL_MAX_STATES];
} wl_model;

/* Build the model of w (aborts the test on allocation failure). */
void wl_model_build(const wl_workload *w, wl_model *m);
void wl_model_free(wl_model *m);

/* Progress of a run; all fields written by wl_run only. */
typedef struct wl_progress {
  volatile int acked;        /* see above */
  volatile int step;         /* the step under way, -1 before the first */
  volatile int rc;           /* the first error a call returned, else 0 */
  volatile int failed_step;  /* its step (-1: open; nsteps: close) */
  volatile int moved;        /* after that error, the handle's position was
                                already the step's new one */
  volatile int retried_rc;   /* the retry's result (with WL_RETRY) */
  volatile int finished;     /* every step acknowledged, close returned 0 */
  volatile int backups;      /* backups acknowledged */
} wl_progress;

#define WL_RETRY 0x1u  /* after a failed step, retry it once (see wl_run) */

/* Run w's steps on the image directory dir through the simulator sim. On
 * an error the
 * run records it; with WL_RETRY, a step whose error left the position
 * unchanged is tried once more and the run goes on if it succeeds (a
 * step whose position moved counts as done). The handle is closed at the
 * end either way. Returns progress->rc. Runs arena workloads: call it in
 * a forked child or a test body, never in a cmocka fixture. */
int wl_run(const wl_workload *w, const wl_model *m, const char *dir,
           iosim *sim, unsigned flags, wl_progress *progress);

/* Build w's template directory at dir (it must not exist) with the POSIX
 * io. For a creating workload, nothing is made. 0 or an error code. */
int wl_template(const wl_workload *w, const char *dir);

/*
 * Recover dir (loom_store_open with the POSIX io) and check it: the
 * position is states[i] for some i in [lo, hi] (lo = -1: the store may not
 * exist yet; it is opened with LOOM_CREATE and must be states[0]), every
 * page's bytes match, and loom_verify passes. Returns i, or -1 with the
 * reason in why. After that recovery the hashes file must hold every
 * page's hash (docs/FORMAT.md): consistent at rest, nothing left to
 * rebuild. A backup at "<dir>.backup", when
 * present, must verify and hold a backed-up state; must_backup says it
 * must be present.
 */
int wl_check(const wl_model *m, const char *dir, int lo, int hi,
             int must_backup, char *why, size_t why_size);

/* ---------------------------------------------------------------------- */
/* Directory helpers for the suites. */

/* A digest of a directory tree's names and contents (subdirectories
 * included; the lock file left out): equal trees, equal digests. */
uint64_t wl_tree_digest(const char *path);

/* mkdtemp("<dir>/<prefix>-XXXXXX") into out, where dir is $TMPDIR, else
 * /dev/shm when writable, else /tmp. The suites make thousands of small
 * directories: on a tmpfs that costs microseconds, on a disk file system
 * mounted with discard several milliseconds each (the simulator, not the
 * file system, decides what survives a power cut, so no disk is needed).
 * 0 or errno. */
int wl_tempdir(const char *prefix, char *out, size_t size);
/* Copy the tree src to dst (dst must not exist). 0 or errno. */
int wl_copy_tree(const char *src, const char *dst);
/* Remove a tree; missing is fine. 0 or errno. */
int wl_remove_tree(const char *path);

/* snprintf for paths: aborts if the result does not fit. */
__attribute__((format(printf, 3, 4)))
void wl_path(char *out, size_t size, const char *fmt, ...);

/* An environment variable as an unsigned number, or def. */
uint64_t wl_env_u64(const char *name, uint64_t def);

/* Run the cmocka group `group`: one test per workload, named after it,
 * calling each(state) with state pointing at the workload, then total.
 * Returns what cmocka returns (the number of failed tests). */
int wl_run_group(const char *group, void (*each)(void **state),
                 void (*total)(void **state));

#endif /* WORKLOAD_H */
