/*
 * iosim.h: a loom_io for tests. It performs every operation for real (so
 * the engine's mmap of real files keeps working) and adds four things:
 *
 *   1. Counting. Every call gets a global sequence number, its *op index*,
 *      starting at 0, whether it succeeds, fails or is failed on purpose;
 *      per-type counters too. iosim_trace_op() tells what op K was and on
 *      which path, for test output.
 *
 *   2. Fault injection. iosim_fault_add() fails a chosen op (by op index, or
 *      the n-th op of one type) with an errno without performing it, or
 *      makes a pwrite short: a prefix (half the bytes) is written for real,
 *      then the call fails (loom_io's pwrite returns len or -errno, so a
 *      short write is always reported as an error).
 *
 *   3. Crash points. iosim_kill_before(sim, K) raises SIGKILL right before
 *      op K would run: use it in a forked child. What the real file system
 *      then holds is the state a process crash leaves (the page cache
 *      survives a process crash, so every completed op is visible).
 *
 *   4. A power-loss model. Everything below a tracked root directory is
 *      modelled as inodes:
 *        - a file has its durable content (as of its last fsync) and the
 *          list of operations since (pwrite with its bytes, ftruncate,
 *          O_TRUNC), in order;
 *        - a directory has its current entries (name -> inode) and its
 *          durable entries (as of its last fsync); create, mkdir, rename
 *          and unlink change the current entries only.
 *      Renames move inodes, so a file is followed across renames. fsync of
 *      a file makes its content and size durable; fsync of a directory
 *      makes its entries durable (and nothing else: not the content of the
 *      files it names, not its own entry in its parent).
 *      iosim_powercut() writes one possible post-power-loss state of the
 *      tracked tree into a fresh directory: starting at the root, each
 *      durable entry (unsynced creates, renames and unlinks are rolled
 *      back: the old name keeps the old file, a file whose entry never
 *      became durable does not exist), each file with its durable content
 *      plus a seeded choice over its unsynced operations, taken in order:
 *      applied fully, dropped, or torn (some 512 B or 4 KiB sectors of the
 *      write kept, sectors aligned to file offsets). The tracked root
 *      itself is taken as durable. With IOSIM_CUT_DIR_RANDOM, a random
 *      in-order prefix of the unsynced directory changes (all directories,
 *      one global order) survives too, as a journaling file system commits
 *      them; a rename is one change, in both of its directories. Written
 *      files are sparse: all-zero 4 KiB blocks are holes.
 *
 * The tracked tree's content when iosim_create() is called is taken as
 * durable. Paths outside the root pass through, counted and faultable but
 * not modelled. Names are resolved through the directory fds opened
 * through the simulator, through absolute paths, or through /proc/self/fd
 * for descriptors the engine opened itself. What appears inside the tree
 * without passing through the simulator (a directory made with mkdir(2)
 * directly) is adopted as durable when first named: iosim_adopted() counts
 * those, since the model cannot know whether they really are durable.
 * Everything is serialized by one (recursive) mutex, so the order of ops is
 * the order they reached the file system even with an apply thread.
 *
 * The environment variable LOOM_IOSIM_DROP_FSYNC=N (read by iosim_create)
 * turns the N-th fsync call (0-based, counted per simulator) into a no-op
 * that returns 0: nothing is synced for real and nothing becomes durable in
 * the model. It is the mutation knob of tests/core/fsync_mutants.sh: a
 * suite that still passes with one of the engine's fsyncs removed is not
 * checking durability.
 *
 * The environment variable LOOM_IOSIM_PWRITEV=1 (read by iosim_create)
 * gives the simulator a pwritev (else NULL, and the store writes through
 * its staging buffer): the buffers are gathered and written as one
 * pwrite, so one record write of the store is one op for counting, faults,
 * crash points and power cuts. The suites run once without it and the
 * named *_pwritev tests with it (tests/core/meson.build).
 *
 * Ownership: the simulator owns copies of all data it records; the caller
 * owns the simulator and frees it with iosim_destroy() (which closes no
 * descriptor: the engine owns those).
 *
 * Errors: functions returning int return 0 or a positive errno value.
 */
#ifndef IOSIM_H
#define IOSIM_H

#include <stddef.h>
#include <stdint.h>

#include "loom_io.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct iosim iosim;

/* Create a simulator. root: the directory whose tree is modelled for power
 * loss (must exist), or NULL for counting, faults and crash points only.
 * Errors: ENOMEM, or the errno of reading the tree. */
int iosim_create(const char *root, iosim **out);
void iosim_destroy(iosim *sim);

/* The loom_io to hand to the engine; valid until iosim_destroy(). */
const loom_io *iosim_io(iosim *sim);

/* Ops so far (the op index the next call will get), and per type. */
uint64_t iosim_count(iosim *sim);
uint64_t iosim_count_op(iosim *sim, loom_io_op op);

/* What op index k was: its type, and its path relative to the root (or the
 * absolute path for an untracked one) copied into path. 0, or ERANGE if k
 * has not happened. */
int iosim_trace_op(iosim *sim, uint64_t k, loom_io_op *op, char *path,
                   size_t path_size);

/* ---------------------------------------------------------------------- */
/* Faults */

typedef enum iosim_fault_kind {
  IOSIM_FAIL = 0,        /* return -err without performing the op */
  IOSIM_SHORT_WRITE = 1  /* pwrite only: write the first half, return -err */
} iosim_fault_kind;

typedef struct iosim_fault {
  iosim_fault_kind kind;
  int err;               /* positive errno, e.g. EIO, ENOSPC */
  int by_type;           /* 0: index is a global op index;
                            1: index counts only ops of type op (0-based) */
  loom_io_op op;
  uint64_t index;
  int sticky;            /* 1: every later matching op fails too (a disk
                            that stays full); 0: only this one */
  const char *path;      /* NULL: any path. Else only ops whose path (as
                            iosim_trace_op gives it) ends with this string
                            match, and index counts the matching ops (of
                            type op, with by_type) since the fault was
                            added: 0 is the next one. Copied. */
} iosim_fault;

/* Arm a fault (up to 8). A SHORT_WRITE fault that lands on an op other
 * than pwrite acts as FAIL. Errors: ENOSPC (too many), EINVAL. */
int iosim_fault_add(iosim *sim, const iosim_fault *fault);
/* Shorthands: fail global op k with err; make global op k a short write. */
int iosim_fail_at(iosim *sim, uint64_t k, int err);
int iosim_short_write_at(iosim *sim, uint64_t k, int err);
/* The op index where the fault added as the n-th (0-based) first fired,
 * UINT64_MAX if it has not (or there is no such fault). */
uint64_t iosim_fault_fired(iosim *sim, size_t n);

/* How many ops were failed on purpose so far, and the op index of the
 * first (UINT64_MAX if none). */
uint64_t iosim_faults_injected(iosim *sim);
uint64_t iosim_first_fault(iosim *sim);

/* Raise SIGKILL right before op k runs (UINT64_MAX: never). */
void iosim_kill_before(iosim *sim, uint64_t k);

/* Call hook(ctx, sim, k, op) right before op k runs (after counting, before
 * the kill check and the faults). The hook may call iosim_powercut(). */
typedef void (*iosim_hook_fn)(void *ctx, iosim *sim, uint64_t k, loom_io_op op);
void iosim_hook_set(iosim *sim, iosim_hook_fn hook, void *ctx);

/* ---------------------------------------------------------------------- */
/* Power loss */

typedef enum iosim_cut_mode {
  IOSIM_CUT_DROP = 0,       /* every unsynced file op dropped */
  IOSIM_CUT_KEEP = 1,       /* every unsynced file op applied */
  IOSIM_CUT_RANDOM_512 = 2, /* each applied, dropped or torn at 512 B */
  IOSIM_CUT_RANDOM_4K = 3   /* each applied, dropped or torn at 4 KiB */
} iosim_cut_mode;
#define IOSIM_CUT_MODE_MASK 0xffu
/* Flag: a seeded in-order prefix of the unsynced directory changes
 * survives (default: all are rolled back). */
#define IOSIM_CUT_DIR_RANDOM 0x100u

/* Write one possible post-power-loss state of the tracked tree, as of now,
 * into outdir (created; it must not exist, its parent must). The choice is
 * a pure function of (recorded history, seed, mode). Errors: EINVAL (no
 * root tracked), EEXIST, or the errno of writing. */
int iosim_powercut(iosim *sim, uint64_t seed, const char *outdir,
                   unsigned mode);

/* Ops the model could not follow (e.g. a tracked file changed behind the
 * simulator's back): a non-zero value means the model may be wrong. */
uint64_t iosim_model_errors(iosim *sim);

/* Files and directories found on disk inside the tree but not made
 * through the simulator (e.g. a directory made with mkdir(2) directly),
 * adopted into the model as durable when first named. */
uint64_t iosim_adopted(iosim *sim);

/* The unsynced file ops and directory changes currently recorded (for the
 * simulator's own tests). */
uint64_t iosim_unsynced(iosim *sim);

/* Set the fsync ordinal to drop (UINT64_MAX: none), overriding
 * LOOM_IOSIM_DROP_FSYNC for this simulator. */
void iosim_drop_fsync_set(iosim *sim, uint64_t ordinal);

/* LOOM_IOSIM_DROP_FSYNC: the fsync ordinal dropped (UINT64_MAX: none) and
 * whether it was reached; its path in path when it was. */
uint64_t iosim_dropped_fsync(iosim *sim, int *reached, char *path,
                             size_t path_size);

#ifdef __cplusplus
}
#endif
#endif /* IOSIM_H */
