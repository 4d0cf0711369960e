/*
 * archive.h: history in object storage (DESIGN section 7): the archiver
 * that uploads a node's commits, and restore, list and verify, which read
 * them back. Objects and their byte tables: docs/ARCHIVE.md.
 *
 * INTRODUCTION
 *
 * An archive is a set of objects in an objstore (objstore.h: s3:// or
 * file://), keyed by (epoch, seq):
 *
 *   id                         the archive's random id (every object of
 *                              the archive carries it; another archive's
 *                              objects are refused)
 *   epochs/E                   epoch E: the history id and the branch
 *                              point it started from
 *   e/E/head                   the newest position uploaded at E
 *   e/E/writer                 who writes at E (one writer per archive)
 *   e/E/b/SEQ.TIME.KEY         a base image at SEQ (compressed)
 *   e/E/s/FIRST-LAST.TIME.KEY  the single-commit frames FIRST..LAST
 *   e/E/g/FIRST-LAST.KEY       seqs the archive does not hold (a gap)
 *
 * (TIME: the last commit's, ns; KEY: the id of the key the object is
 * sealed with, 00000000 for plaintext: `archive list` shows which objects
 * still need a previous key without reading them)
 *
 * so a restore lists only "epochs/" and one epoch's "e/E/", never the
 * whole bucket, and the writer lists nothing in steady state. Every
 * object has a header (magic, version, kind, archive id, epoch, seqs, key
 * id, length, nonce) and an XXH3-64 over header and payload; with a key
 * file the payload is AES-256-GCM encrypted with the header as associated
 * data. A reader checks every object against its key: a header that names
 * another position than the key (a renamed, copied or reordered object)
 * is refused like a damaged one, and every refusal names the key.
 *
 * Each epoch's objects start with a base: the writer uploads one before
 * its first segment at an epoch, so a restore at E needs only E's objects
 * unless it asks for a seq before E's first base (then E's parent epoch is
 * used, up to E's branch point). Objects of an older epoch past a newer
 * epoch's branch point stay, and `archive list` shows them abandoned.
 *
 * THE KEY FILE (--archive-key-file)
 *
 * One or two lines, each 64 hex digits (a 32-byte AES-256 key); blank
 * lines and surrounding white space are ignored. The first line is the
 * current key (new objects), the second the previous one (still read). A
 * key's id is the first 4 bytes of its SHA-256, little-endian. A file that
 * is missing, empty or holds anything else is REPLICATE_EARCHIVE_KEY, and
 * nothing is written: there is no fallback to plaintext.
 *
 * THREADS
 *
 * A replicate_archive (an opened archive) is used by one thread at a
 * time. The archiver runs its own thread with its own.
 *
 * ERRORS
 *
 * Those of objstore.h, and REPLICATE_EARCHIVE_* (replicate.h): OBJECT
 * (malformed, truncated, tampered), KEY (unusable key file, or an object
 * under a key not in it, or plaintext where a key is configured), FOREIGN
 * (another archive's object, or one under another position's key), GAP
 * (a seq inside a recorded gap), WRITER (another node writes here), BEHIND
 * (this node is behind the archive's newest position on its branch), NOPOS
 * (no such position archived). replicate_archive_last_error() then names
 * the object's key.
 */
#ifndef REPLICATE_ARCHIVE_H
#define REPLICATE_ARCHIVE_H

#include <stdbool.h>
#include <stdint.h>

#include "loom.h"
#include "objstore.h"
#include "replicate.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How to reach an archive: every command that reads or writes one takes
 * these (--archive-endpoint, --archive-region, --archive-credentials into
 * store; --archive-key-file). Zero-initialise, then set what you need. */
typedef struct replicate_archive_options {
  const char *url;        /* "s3://BUCKET/PREFIX" or "file:///DIR" */
  objstore_options store; /* [all defaults] */
  const char *key_file;   /* [NULL: plaintext objects] */
  const struct loom_io *io; /* [NULL: POSIX] the I/O under a restore's
                               directory (tests: a crash hook) */
} replicate_archive_options;

typedef struct replicate_archive replicate_archive;

/* Opens (sends no request). On an error *out is still set when memory
 * allowed, for replicate_archive_last_error(); close it either way.
 * Errors: REPLICATE_EARCHIVE_KEY, REPLICATE_EINVAL (the URL), ENOMEM. */
int replicate_archive_open(const replicate_archive_options *o,
                           replicate_archive **out);
void replicate_archive_close(replicate_archive *a);
/* The last failure in words, naming the object's key. */
const char *replicate_archive_last_error(const replicate_archive *a);
/* The store under it (request counters: objstore_get_stats). */
objstore *replicate_archive_store(replicate_archive *a);

/* ---------------------------------------------------------------------- */
/* Restore */

typedef enum replicate_restore_kind {
  REPLICATE_RESTORE_NEWEST = 0, /* the highest seq on the epoch's branch */
  REPLICATE_RESTORE_SEQ = 1,    /* exactly seq */
  REPLICATE_RESTORE_TIME = 2    /* the highest seq committed at or before
                                   time_ns */
} replicate_restore_kind;

typedef struct replicate_restore_target {
  replicate_restore_kind kind;
  uint64_t seq;    /* SEQ */
  int64_t time_ns; /* TIME: CLOCK_REALTIME nanoseconds */
  int64_t epoch;   /* -1: the newest epoch's branch */
} replicate_restore_target;

/*
 * replicate_archive_restore: build the image at the target in out_dir
 * (which must not exist, or be empty, or hold an interrupted restore:
 * REPLICATE_RESTORE_WORK_DIR; missing parents are made 0700), streamed:
 * the archived frames from the newest base at or below the target up to
 * it are read and checked first (kept as their pages' non-zero runs,
 * indexed by page), then the base is read in ranged GETs by a thread,
 * decompressed 8 MiB at a time straight into the buffer the new image
 * file is written from, each page rebuilt through the frames' versions of
 * it in seq order and checked against their hashes, and written (with
 * O_DIRECT where the file system takes it) while the next chunk is made
 * (loom_store_create_from_pages: no commit log, each page version hashed
 * once). The memory is the frames, a few pieces and chunks and the hash
 * table (8 bytes a page), not the image (replicate_archive_restore_memory).
 * The restored directory's positions ring (loom.h loom_store_checksum_at)
 * knows the target's seq only. All of it happens in out_dir/
 * REPLICATE_RESTORE_WORK_DIR; the files are moved into out_dir at the
 * end, the meta last, so out_dir never opens as a store at any other
 * position than the target, even after a crash (then it holds no meta:
 * loom_store_open refuses it, and a restore into it starts again).
 * Every object is checked (header, checksum, tag, archive id, its key's
 * position; the base's checksum and tag once its last piece is read,
 * before the meta is written) and the frames must follow each other
 * without a hole; the result keeps the archived epoch, seq, checksum and
 * history, and is fsynced (loom_verify passes on it). *restored gets its
 * position. On an error nothing usable is left in out_dir (it is removed
 * when this call made it). Errors: REPLICATE_EARCHIVE_NOPOS (no such
 * position), REPLICATE_EARCHIVE_GAP, _OBJECT, _FOREIGN, _KEY, store
 * errors, REPLICATE_EPOSITION, _EPAGE_HASH, _EAFTER_CHECKSUM (a frame
 * that does not apply: the checks replicate_frame_apply makes), and
 * core's errors writing the directory.
 */
/* The directory inside out_dir where a restore builds the store before
 * moving it in (its meta last): out_dir holding only this, and no meta, is
 * an interrupted restore, which the next restore into out_dir clears. */
#define REPLICATE_RESTORE_WORK_DIR "restoring"

int replicate_archive_restore(replicate_archive *a,
                              const replicate_restore_target *target,
                              const char *out_dir, loom_position *restored);

/* What the last replicate_archive_restore on a held for the image it
 * built, in bytes, by its own accounting: the frames' page versions (as
 * runs) and their index, the base's pieces read ahead, the importer's two
 * chunks and its hash table (8 bytes a page). Not the image: a restore of
 * a larger image holds 8 bytes a page more. 0 before any restore. */
uint64_t replicate_archive_restore_memory(const replicate_archive *a);

/* ---------------------------------------------------------------------- */
/* Listing and verifying */

typedef enum replicate_archive_object_kind {
  REPLICATE_ARCHIVE_BASE = 4,
  REPLICATE_ARCHIVE_SEGMENT = 5,
  REPLICATE_ARCHIVE_GAP = 6
} replicate_archive_object_kind;

/* One object as `archive list` shows it (from its key, nothing read). */
typedef struct replicate_archive_entry {
  const char *key; /* valid during the callback */
  replicate_archive_object_kind kind;
  uint64_t epoch, first_seq, last_seq;
  int64_t time_ns; /* BASE, SEGMENT: the last commit's time */
  uint64_t size;   /* bytes stored */
  uint32_t key_id; /* 0: plaintext */
  bool abandoned;  /* past a newer epoch's branch point */
} replicate_archive_entry;

typedef int (*replicate_archive_each_fn)(void *ctx,
                                         const replicate_archive_entry *e);

/* Calls each for the bases, segments and gaps, epoch by epoch, in key
 * order. Reads "id" and every "epochs/E" (checked); lists the rest. */
int replicate_archive_list(replicate_archive *a, replicate_archive_each_fn each,
                           void *ctx);

typedef struct replicate_archive_verify_report {
  uint64_t objects; /* read and checked */
  uint64_t bytes;
  loom_position newest; /* the drill's position */
} replicate_archive_verify_report;

/* Reads every object and checks it (checksum, tag, archive id, key), then
 * restores the newest position into a fresh directory under scratch_dir
 * and compares its recomputed checksum with the archived one (removed
 * after). 0 when all is well; the first failure otherwise. */
int replicate_archive_verify(replicate_archive *a, const char *scratch_dir,
                             replicate_archive_verify_report *out);

/* ---------------------------------------------------------------------- */
/*
 * The archiver: the writing side. Fed every commit of the node (from the
 * loom commit hook), it keeps the frames in memory, up to
 * max_backlog_bytes, and its thread uploads them as one segment every
 * interval_seconds when something was committed (no request at all while
 * idle), and a base every base_interval_seconds when something was
 * committed since the last. The store being down or slow never blocks a
 * commit: past the backlog cap the frames are dropped, a gap recorded and
 * a new base uploaded once the store is back.
 *
 * At start it reads the archive's "id" (creating the archive when there is
 * none), its epoch's head and writer objects: another writer's object is
 * REPLICATE_EARCHIVE_WRITER, a head ahead of the node is
 * REPLICATE_EARCHIVE_BEHIND, a head that is not on the node's history is
 * REPLICATE_EARCHIVE_FOREIGN; these stop archiving (last_error). Commits
 * between the head and the node's position come from the replication log
 * when it still has them; otherwise they are a gap and a base follows.
 * The log keeps them: the archiver holds its retention at the uploaded
 * seq + 1 (replicate_log_hold; a kill -9 with the store down loses no
 * frame the log's byte cap kept), moves the hold past the frames it drops
 * beyond max_backlog_bytes (a gap), and lifts it when it stops (unless
 * hold_after_stop). A standby's log is its receive log
 * (replicate_receiver_log), which its receiver holds from open on.
 *
 *   replicate_archiver_start     opens the archive, starts the thread
 *                                (store errors at start are not fatal:
 *                                the thread retries); call it from the
 *                                thread that commits (it reads the
 *                                store's position and lineage there; the
 *                                archiver's thread then uses only what the
 *                                commit hook feeds it, snapshots and
 *                                loom_store_checksum_at). It archives the
 *                                store's epoch at start: after a
 *                                promotion, start a new archiver.
 *   replicate_archiver_on_commit from the commit hook: encodes the frame
 *                                (never blocks on the store)
 *   replicate_archiver_on_frame  a standby's: the frame as received
 *   replicate_archiver_drain     uploads everything committed so far;
 *                                1 when done within timeout_seconds
 *   replicate_archiver_stop      stops the thread and frees; a request
 *                                still in progress is cancelled
 *                                (objstore_cancel), so it returns at once
 *                                even when the store hangs: drain first
 *   replicate_archiver_status    the "archive" object of the status
 */
typedef void (*replicate_archive_log_fn)(void *ctx, const char *line);

#define REPLICATE_ARCHIVE_BACKLOG_DEFAULT (UINT64_C(4) << 30) /* 4 GiB */
#define REPLICATE_ARCHIVE_SEGMENT_DEFAULT (UINT64_C(64) << 20) /* 64 MiB */
#define REPLICATE_ARCHIVE_BASE_MEMORY_DEFAULT (UINT64_C(64) << 20) /* 64 MiB */
#define REPLICATE_ARCHIVE_SCRATCH_RESERVE_DEFAULT (UINT64_C(256) << 20) /* 256 MiB */

typedef struct replicate_archiver_options {
  replicate_archive_options access; /* required: url */
  loom_store *store;                /* the node's store (bases); required
                                   unless snapshot_open (a standby) */
  replicate_log *log;               /* [NULL]: where frames not uploaded are
                                   read back (after a restart, or past the
                                   memory queue). The archiver holds it
                                   (replicate_log_hold) from its uploaded
                                   seq + 1, so retention keeps them */
  const char *position_file;        /* [NULL]: where the uploaded position
                                   is remembered after every head (not
                                   synced: a cache), so that a restart
                                   takes the frames after it from log into
                                   memory before anything resets the log
                                   (a log that ends a commit short of the
                                   store is started afresh by its writer);
                                   an archiver fed frames (no store) reads
                                   them from log at its first upload */
  bool hold_after_stop;             /* [false]: replicate_archiver_stop
                                   leaves log's hold at the uploaded seq + 1
                                   instead of lifting it (a standby about
                                   to exit: what a drain did not upload
                                   stays for the next start, not trimmed by
                                   the applies until the process ends) */
  bool log_writer;                  /* [false]: nobody else appends to or
                                   trims log (a primary with no standby):
                                   the commit hook appends each frame and
                                   the thread trims behind the upload */
  double interval_seconds;          /* [1]: --archive-interval */
  double base_interval_seconds;     /* [86400]: --archive-base-interval */
  unsigned keep_bases;              /* [7]: --archive-keep-bases */
  uint64_t max_backlog_bytes;       /* [REPLICATE_ARCHIVE_BACKLOG_DEFAULT]:
                                   --archive-max-backlog-mb */
  uint64_t segment_max_bytes;       /* [REPLICATE_ARCHIVE_SEGMENT_DEFAULT]:
                                   a segment ends once its frames reach
                                   this many bytes, and the next follows at
                                   once (a backlog is uploaded in pieces,
                                   never held whole in memory twice) */
  const char *scratch_dir;          /* [NULL]: a base of an image larger
                                   than base_memory_max_bytes is sealed
                                   into an unlinked file here (the node's
                                   directory: on disk, not tmpfs) and sent
                                   from its mapping, so that the process
                                   holds pieces of it, not the compressed
                                   image; NULL: in memory */
  uint64_t base_memory_max_bytes;   /* [REPLICATE_ARCHIVE_BASE_MEMORY_DEFAULT]:
                                   the largest image whose base is sealed
                                   in memory when scratch_dir is set */
  uint64_t scratch_reserve_bytes;   /* [REPLICATE_ARCHIVE_SCRATCH_RESERVE_DEFAULT]:
                                   a base's scratch file never takes its
                                   file system below this much free (the
                                   node's log and image need it): the base
                                   fails with ENOSPC instead, and is tried
                                   again */
  const char *writer_id;            /* [host:pid]: who writes, in e/E/writer;
                                   a node restarted with the same id
                                   continues */
  replicate_archive_log_fn log_fn;  /* [NULL] */
  void *log_ctx;
  /* A standby (its receiver owns the store, receiver.h): store NULL, fed
   * with replicate_archiver_on_frame, and bases from these snapshots
   * (replicate_receiver_snapshot_open/close). position is what the fed
   * frames follow (the received position at start), lineage the node's
   * (replicate_receiver_lineage); at seq 0 (the standby holds nothing)
   * W1 waits for the first frame fed and takes its epoch and history.
   * Ignored when store is set. Its log is the receive log
   * (replicate_receiver_log: held by the receiver from its open on, so
   * give it position_file and hold_after_stop too): after a kill -9 the
   * frames received but not uploaded are read back from it. */
  int (*snapshot_open)(void *ctx, loom_snapshot **out);
  void (*snapshot_close)(void *ctx, loom_snapshot *snap);
  void *snapshot_ctx;
  loom_position position;
  loom_lineage lineage;
} replicate_archiver_options;

typedef struct replicate_archiver replicate_archiver;

int replicate_archiver_start(const replicate_archiver_options *o,
                             replicate_archiver **out);
int replicate_archiver_on_commit(replicate_archiver *ar, loom *l,
                                 const loom_commit *c);
/* A standby's feed (receiver.h on_received): one single-commit frame as
 * received (copied; never blocks on the store). A frame at or below the
 * position fed so far is ignored; one that skips seqs (they came inside a
 * base image), a merged frame or one that cannot be read is a gap (a base
 * follows); one of another epoch than the archiver's stops archiving
 * (last_error: the node follows a new epoch; start a new archiver for
 * it). Always 0. */
int replicate_archiver_on_frame(replicate_archiver *ar, const void *frame,
                                size_t len);
int replicate_archiver_drain(replicate_archiver *ar, double timeout_seconds);
void replicate_archiver_stop(replicate_archiver *ar);

typedef struct replicate_archive_status {
  char url[512];
  bool stopped;           /* archiving stopped for good (last_error) */
  uint64_t epoch;         /* the epoch it writes */
  uint64_t uploaded_seq;  /* the newest seq in the archive */
  uint64_t committed_seq; /* the newest seq fed */
  uint64_t lag_frames;    /* committed_seq - uploaded_seq */
  double lag_seconds;     /* age of the oldest commit not uploaded */
  uint64_t bases;         /* bases kept at this epoch */
  bool gap;               /* a gap was recorded since start */
  uint64_t gap_first, gap_last;
  uint64_t backlog_bytes;
  char last_error[512];     /* "" if none */
  int64_t last_error_at_ns; /* CLOCK_REALTIME, 0 if none */
  objstore_stats requests;
  uint64_t idle_wakeups;  /* wake-ups of its thread that found nothing to
                             do (and sent nothing): a test's observable */
} replicate_archive_status;

void replicate_archiver_status(replicate_archiver *ar,
                               replicate_archive_status *out);

/* SIGHUP: read the archiver's --archive-key-file (access.key_file) again:
 * its first key seals new objects from the thread's next request on, a
 * second one is still read (a rotation), and the small objects under the
 * previous key (id, epoch records, heads, writers) are sealed again under
 * the new one, as at start. A file that cannot be used is
 * REPLICATE_EARCHIVE_KEY with why filled, and the old keys stay (never
 * none: nothing is uploaded in plaintext by a reload). 0 also for a
 * plaintext archive (no key file: nothing to read). */
int replicate_archiver_reload_key(replicate_archiver *ar, char *why, size_t why_len);

#ifdef __cplusplus
}
#endif

#endif
