/*
 * faultio.h: a crash hook for process-level tests (tests/system/), off
 * unless an environment variable asks for it.
 *
 * faultio_from_env() returns a loom_io that wraps the POSIX one and counts
 * every operation that goes through it: the store and the replication log
 * of `loomship primary`, the store and the receive log of `loomship
 * standby`. The count is process-wide (all threads, all files), 1-based,
 * in the order the operations start.
 *
 *   LOOMSHIP_CRASH_AT=K      raise SIGKILL on this process right before the
 *                            K-th counted operation (it never runs)
 *   LOOMSHIP_CRASH_OP=LIST   count only these operations, comma-separated
 *                            names of loom_io_op_name() (open, pread,
 *                            pwrite, fsync, ftruncate, rename, unlink,
 *                            close, mkdir); all of them by default
 *   LOOMSHIP_CRASH_COUNT=F   at a normal exit, write the number of counted
 *                            operations to F (one line)
 *   LOOMSHIP_CRASH_TRACE=F   append one line per counted operation to F
 *                            ("K op file"), written before the operation
 *                            runs (and before the kill), unbuffered
 *   LOOMSHIP_FLIP_IMAGE_PAGE=N  every write to the store's image file that
 *                            covers page N's first byte stores it with its
 *                            lowest bit flipped (a disk that stores
 *                            something else than it was given)
 *   LOOMSHIP_FLIP_IMAGE_TIMES=K  with it: only the first K such writes
 *                            (a write that landed wrong once, then a
 *                            sound disk) [every one]
 *   LOOMSHIP_ACK_LOG=F       faultio_note_ack() appends "seq S checksum C"
 *                            to F, unbuffered, for every save the primary
 *                            saw succeed (in --sync mode: acknowledged by
 *                            the standbys)
 *   LOOMSHIP_RECEIVE_LOG_SEGMENT_BYTES=N  a standby's receive log in
 *                            segments of N bytes
 *                            (faultio_receive_log_segment_bytes), so that a
 *                            test sees its trims with small frames
 *   LOOMSHIP_FAIL_ARCHIVER_STARTS=N  the first N starts of a standby's
 *                            archiver fail with EAGAIN
 *                            (faultio_archiver_start_fails), as a start
 *                            short of memory or threads would
 *
 *
 * The archive's object store requests (objstore.h on_request) have their
 * own count, 1-based, process-wide, in the order requests start:
 *
 *   LOOMSHIP_CRASH_STORE_AT=K     raise SIGKILL right before the K-th
 *                                 request (put, get, list, delete) goes out
 *   LOOMSHIP_CRASH_STORE_MATCH=P  ... counting only the requests whose
 *                                 "OP KEY" matches the fnmatch(3) pattern P
 *                                 ("put e/?*?head": the K-th head written)
 *   LOOMSHIP_CRASH_STORE_TRACE=F  append "N OP KEY" per request to F (N
 *                                 counts every request),
 *                                 before it goes out (and before the kill)
 *
 * With none of the first five set, faultio_from_env() returns NULL and the
 * callers use the default POSIX loom_io: nothing is wrapped or counted.
 * A malformed value is reported on stderr and the hook stays off.
 *
 * Built only with `meson setup -Dfault_hooks=true` (./test does; a release
 * build and ./demo do not): otherwise faultio.c is left out, the
 * functions below are empty inlines, and no variable has any effect.
 */
#ifndef LOOMSHIP_FAULTIO_H
#define LOOMSHIP_FAULTIO_H

#include "loom.h"
#include "loom_io.h"

#include <stdbool.h>

/* objstore_options.on_request's type. */
typedef void (*faultio_request_fn)(void *ctx, const char *op, const char *key);

#ifdef LOOMSHIP_FAULT_HOOKS
/* The object store's request hook, or NULL when no LOOMSHIP_CRASH_STORE_*
 * variable asks for it. */
faultio_request_fn faultio_store_hook(void);

/* The counting loom_io (a process-wide singleton, set up on the first
 * call), or NULL when no variable asks for it. */
const loom_io *faultio_from_env(void);

/* Record one successful save at position p in LOOMSHIP_ACK_LOG, if set. */
void faultio_note_ack(const loom_position *p);

/* LOOMSHIP_RECEIVE_LOG_SEGMENT_BYTES, or 0 (the default size). */
uint64_t faultio_receive_log_segment_bytes(void);

/* True for each of the first LOOMSHIP_FAIL_ARCHIVER_STARTS calls. */
bool faultio_archiver_start_fails(void);
#else
static inline faultio_request_fn faultio_store_hook(void) { return NULL; }
static inline const loom_io *faultio_from_env(void) { return NULL; }
static inline void faultio_note_ack(const loom_position *p) { (void)p; }
static inline uint64_t faultio_receive_log_segment_bytes(void) { return 0; }
static inline bool faultio_archiver_start_fails(void) { return false; }
#endif

#endif
