/*
 * replicate.h: frames, the replication log, coalescing.
 *
 * INTRODUCTION
 *
 * Every commit of a loom (see core/loom.h) that changed something becomes one
 * *frame*: a self-checking byte string that a standby applies to its own
 * image to move from the commit's *before* position to its *after* position.
 *
 *     header   128 bytes: magic, format version, kind, flags, epoch,
 *              before (seq, checksum, pages), after (seq, checksum, pages),
 *              commit times, page count, payload sizes, payload checksum,
 *              header checksum
 *     payload  zstd-compressed, one zstd frame: per page, in ascending page
 *              order, its number, the hash of its new contents
 *              (loom_page_hash), an encoding and 16 KiB of contents
 *
 * A page's contents are either the page itself (*whole*) or the XOR of its
 * new and previous versions (*delta*): a page of which 64 bytes changed
 * becomes a page of zeros with 64 bytes set, which zstd turns into a few
 * hundred bytes. A delta is only meaningful against exactly the previous
 * version: the standby proves it holds that version by having the frame's
 * before checksum (the whole-image checksum) as its own. Pages that did not
 * exist before the commit, and pages whose delta would be mostly non-zero,
 * are sent whole. Byte tables: docs/FRAME.md.
 *
 * There are three kinds of objects:
 *
 *   replicate_encoder    turns page versions (or a loom commit, from the
 *                        commit hook) into a frame; owns its zstd context
 *                        and scratch pages, reused from frame to frame.
 *   replicate_decoder    checks a frame strictly (checksums, version,
 *                        sizes against limits before anything is allocated
 *                        or decompressed) and decompresses it into a
 *                        bounded buffer; replicate_frame_apply() then
 *                        applies it to a standby's loom_store.
 *   replicate_log        the primary's on-disk replication log: frames kept
 *                        in segment files under <image dir>/replog/, so a
 *                        standby that was away catches up without a base
 *                        image.
 *
 * and a replicate_coalescer, which merges consecutive frames into one (the
 * newest version of each distinct page) for a standby that is many frames
 * behind.
 *
 * A *heartbeat* is a header-only frame (no payload) that an idle primary
 * sends so a standby knows the primary's latest position and can report its
 * own lag.
 *
 * PROTOCOL
 *
 * Primary, in the loom commit hook (the patch is durable at that point):
 *
 *     replicate_frame_encode_commit(enc, l, commit, &buf);
 *     replicate_log_append(log, buf.data, buf.len);
 *     ... hand buf to the shipper ...
 *
 * If the process died between a commit point and its append, the next
 * append finds a gap (REPLICATE_ENOT_CONTIGUOUS): the lost frame cannot be
 * rebuilt (its old page versions are gone), so replicate_log_reset() and
 * append again; a standby still behind that commit needs a base image.
 *
 * Standby, for each frame received:
 *
 *     rc = replicate_frame_decode(dec, bytes, len, &frame);     400/413
 *     rc = replicate_frame_apply(&frame, store);
 *         0                        applied
 *         REPLICATE_EDUPLICATE     already applied: answer 200
 *         REPLICATE_EPOSITION,     gap or mismatch, or a fenced primary:
 *         REPLICATE_ESTALE_EPOCH   answer 409 with the store's position
 *         REPLICATE_EAFTER_CHECKSUM, REPLICATE_EPAGE_HASH
 *                                  the frame does not rebuild this image
 *                                  although its before matched: a mismatch
 *                                  too (409), nothing was written
 *
 * A receiver that sees only the first bytes of a request can call
 * replicate_frame_parse_header() on the first REPLICATE_HEADER_SIZE bytes
 * to learn the frame's length and positions, and refuse an oversized frame
 * (REPLICATE_ETOOBIG, 413) before reading the rest.
 *
 * ERRORS
 *
 * Every fallible call returns 0 on success, a positive errno value for a
 * failed system call or allocation (ENOMEM), a negative LOOM_E* code passed
 * through from core/, or one of the negative REPLICATE_E* codes below.
 * replicate_strerror() describes all of them. Nothing here prints, aborts
 * on bad input or on I/O errors, or calls exit(). Asserts guard only
 * against programming errors (a NULL handle).
 *
 * THREADS
 *
 * An encoder, a decoder, a coalescer and the frames a decoder produced are
 * used by one thread at a time. A replicate_log may be shared between
 * threads (the commit hook appends, the shipper reads): every call on it
 * takes the log's lock.
 */
#ifndef REPLICATE_H
#define REPLICATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loom.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------- */
/* Errors: append-only, never reused. */

enum replicate_error {
  REPLICATE_OK = 0,
  /* Decoding a frame (the peer sent something malformed: HTTP 400). */
  REPLICATE_ETRUNCATED = -31000,  /* shorter than its header says */
  REPLICATE_EMAGIC = -31001,      /* does not start with the frame magic */
  REPLICATE_EVERSION = -31002,    /* a format version this build cannot read */
  REPLICATE_EHEADER_CHECKSUM = -31003, /* the header fails its checksum */
  REPLICATE_EMALFORMED = -31004,  /* header fields contradict each other */
  REPLICATE_ETOOBIG = -31005,     /* declared sizes exceed the limits (413) */
  REPLICATE_ETRAILING = -31006,   /* bytes follow the end of the frame */
  REPLICATE_EPAYLOAD_CHECKSUM = -31007, /* the payload fails its checksum */
  REPLICATE_EDECOMPRESS = -31008, /* the zstd payload is invalid, or does not
                                     decompress to exactly the declared size */
  REPLICATE_EPAGES = -31009,      /* page entries out of order, out of range,
                                     or with an unknown encoding */
  /* Applying a frame to a store. */
  REPLICATE_EDUPLICATE = -31010,  /* already applied: nothing done (HTTP 200) */
  REPLICATE_EPOSITION = -31011,   /* the frame's before is not the store's
                                     position: a gap or a divergence (409) */
  REPLICATE_ESTALE_EPOCH = -31012,/* the frame is from an older epoch: its
                                     sender was fenced by a promotion (409) */
  REPLICATE_EPAGE_HASH = -31013,  /* a rebuilt page does not match its hash */
  REPLICATE_EAFTER_CHECKSUM = -31014, /* the frame's after checksum does not
                                     follow from its pages and the image */
  REPLICATE_EKIND = -31015,       /* a heartbeat where a commit frame is
                                     needed (apply, log, coalesce) */
  /* Building frames. */
  REPLICATE_EINVAL = -31016,      /* an argument is out of range or
                                     inconsistent (positions, page order) */
  REPLICATE_ECOMPRESS = -31017,   /* zstd failed to compress */
  REPLICATE_ENOT_CONTIGUOUS = -31018, /* frames to coalesce or append do not
                                     follow each other (seq or epoch) */
  /* The replication log. */
  REPLICATE_ELOG_GONE = -31019,   /* the log no longer reaches back to that
                                     seq: the standby needs a base image */
  REPLICATE_ELOG_AHEAD = -31020,  /* no frame that new in the log (yet) */
  REPLICATE_ELOG_CORRUPT = -31021,/* a log segment fails its checksum, or is
                                     malformed, before its last record */
  REPLICATE_ELOG_VERSION = -31022,/* a log segment of an unknown version */
  REPLICATE_EPANIC = -31023,      /* the log handle is poisoned after a write
                                     or fsync failed: close and reopen it */
  REPLICATE_ELAST = -31024        /* sentinel: one past the lowest code */
};

/* A description of rc: 0, an errno value, a LOOM_E* or a REPLICATE_E*
 * code. Never NULL. */
const char *replicate_strerror(int rc);

/* ---------------------------------------------------------------------- */
/* Buffers */

/* A growable byte buffer. Zero-initialise it; the functions that fill one
 * replace its contents (len) and grow it as needed (data, cap). The caller
 * owns it and frees it with replicate_buf_free(). */
typedef struct replicate_buf {
  uint8_t *data;
  size_t len;
  size_t cap;
} replicate_buf;

void replicate_buf_free(replicate_buf *buf);

/* ---------------------------------------------------------------------- */
/* Frames: what they say */

#define REPLICATE_FRAME_VERSION 1u
#define REPLICATE_HEADER_SIZE 128u
/* One payload entry: page number (8), hash (8), encoding (1), contents. */
#define REPLICATE_ENTRY_SIZE (17u + LOOM_PAGE_SIZE)

typedef enum replicate_frame_kind {
  REPLICATE_KIND_COMMIT = 1,    /* one commit, or several coalesced */
  REPLICATE_KIND_HEARTBEAT = 2  /* no payload: the primary's latest position */
} replicate_frame_kind;

/* Frame flags. */
#define REPLICATE_FRAME_COALESCED 0x1u /* several commits merged into one */

typedef enum replicate_encoding {
  REPLICATE_PAGE_WHOLE = 0,     /* the contents are the new page */
  REPLICATE_PAGE_XOR = 1        /* the contents are new XOR previous */
} replicate_encoding;

/* A point in an image's history, within one epoch. */
typedef struct replicate_point {
  uint64_t seq;
  uint64_t checksum;            /* whole-image checksum (loom.h) */
  uint64_t pages;               /* image length in pages */
} replicate_point;

/*
 * What a frame header says.
 *   COMMIT: the frame moves an image from before to after (epoch is both
 *     positions' epoch). after.seq == before.seq + 1, unless COALESCED, when
 *     after.seq >= before.seq + 2. commit_time_ns is after's commit time,
 *     first_commit_time_ns that of the first commit merged (equal unless
 *     coalesced). heartbeat_time_ns is 0.
 *   HEARTBEAT: after is the primary's latest position, commit_time_ns its
 *     commit time, heartbeat_time_ns when the heartbeat was made; before,
 *     first_commit_time_ns, flags and page_count are 0.
 * Times are CLOCK_REALTIME in nanoseconds.
 */
typedef struct replicate_frame_info {
  replicate_frame_kind kind;
  unsigned flags;
  uint64_t epoch;
  replicate_point before;
  replicate_point after;
  int64_t commit_time_ns;
  int64_t first_commit_time_ns;
  int64_t heartbeat_time_ns;
  uint64_t page_count;          /* set by decoding; encoders count for you */
  uint64_t compressed_size;     /* payload bytes on the wire (decoding) */
  uint64_t frame_size;          /* header + payload (decoding) */
} replicate_frame_info;

/* What a decoder accepts. A frame over a limit is refused with
 * REPLICATE_ETOOBIG before anything is allocated or decompressed. */
typedef struct replicate_limits {
  uint64_t max_frame_pages;     /* pages in one frame */
  uint64_t max_image_pages;     /* before.pages and after.pages */
  uint64_t max_payload_bytes;   /* compressed payload */
} replicate_limits;

/* Defaults: 16384 pages per frame (256 MiB of pages), images up to 2^30
 * pages (16 TiB), and payloads up to the size zstd can need for 16384
 * incompressible pages (ZSTD_compressBound, about 257 MiB). A receiver
 * with less memory to spare lowers them. */
replicate_limits replicate_limits_default(void);

/*
 * replicate_frame_parse_header: check the header in bytes[0, len) and
 * describe it in *out, without looking at the payload. len must be at least
 * REPLICATE_HEADER_SIZE (more is ignored). Checks, in this order: length
 * (REPLICATE_ETRUNCATED), magic (EMAGIC), version (EVERSION), header
 * checksum (EHEADER_CHECKSUM), fields (EMALFORMED), limits (ETOOBIG; limits
 * may be NULL for the defaults). out->frame_size is then the length of the
 * whole frame.
 */
int replicate_frame_parse_header(const void *bytes, size_t len,
                                 const replicate_limits *limits,
                                 replicate_frame_info *out);

/* ---------------------------------------------------------------------- */
/* Encoding */

typedef struct replicate_encoder replicate_encoder;

/* A new encoder compressing at zstd level `level` (1 is fast and, for
 * deltas, nearly as small as higher levels; 0 means zstd's default; at most
 * ZSTD_maxCLevel()). Errors: REPLICATE_EINVAL, ENOMEM. */
int replicate_encoder_new(int level, replicate_encoder **out);
void replicate_encoder_free(replicate_encoder *enc);

/* One page of a commit, as the caller has it. The encoder reads only the
 * bytes pointed to (LOOM_PAGE_SIZE each), during the call. */
typedef struct replicate_page_src {
  uint64_t page_number;
  uint64_t new_hash;            /* loom_page_hash(page_number, new_page) */
  const void *new_page;
  const void *old_page;         /* the previous version, or NULL: the page
                                   is sent whole (it must be NULL or is
                                   ignored for page_number >= before.pages) */
} replicate_page_src;

/*
 * replicate_frame_encode: build the frame of one commit (info->kind COMMIT;
 * page_count is ignored and taken from n) from its n changed pages, in
 * strictly ascending page order, each below info->after.pages. Each page
 * with an old version is XORed with it, and sent whole instead when more
 * than half its 8-byte words changed. The frame replaces out's contents.
 * Errors: REPLICATE_EINVAL (positions or pages inconsistent), ENOMEM,
 * REPLICATE_ECOMPRESS.
 */
int replicate_frame_encode(replicate_encoder *enc,
                           const replicate_frame_info *info,
                           const replicate_page_src *pages, size_t n,
                           replicate_buf *out);

/*
 * replicate_frame_encode_commit: the same, from inside a loom commit hook:
 * the new pages are read at loom_page(l, n), the old ones with
 * loom_commit_old_page() into the encoder's scratch page, the hashes and
 * positions come from c. Errors: those of replicate_frame_encode and of
 * loom_commit_old_page.
 */
int replicate_frame_encode_commit(replicate_encoder *enc, loom *l,
                                  const loom_commit *c, replicate_buf *out);

/* replicate_frame_encode_heartbeat: a heartbeat saying the primary is at
 * (epoch, latest) since commit_time_ns, made at now_ns. Errors:
 * REPLICATE_EINVAL (epoch 0), ENOMEM. */
int replicate_frame_encode_heartbeat(uint64_t epoch,
                                     const replicate_point *latest,
                                     int64_t commit_time_ns, int64_t now_ns,
                                     replicate_buf *out);

/* ---------------------------------------------------------------------- */
/* Decoding and applying */

typedef struct replicate_decoder replicate_decoder;

/* A decoder enforcing limits (NULL: the defaults). It keeps one buffer,
 * as large as the largest frame it decoded (at most max_frame_pages
 * entries), until it is freed. Errors: ENOMEM, REPLICATE_EINVAL (a zero
 * limit). */
int replicate_decoder_new(const replicate_limits *limits,
                          replicate_decoder **out);
void replicate_decoder_free(replicate_decoder *dec);

/* A decoded frame. Its pages live in the decoder's buffer: valid until the
 * next replicate_frame_decode() on the same decoder, or its free. */
typedef struct replicate_frame {
  replicate_frame_info info;
  replicate_decoder *decoder;   /* internal */
  const uint8_t *entries;       /* internal: page_count entries */
} replicate_frame;

/* One page of a decoded frame. */
typedef struct replicate_page {
  uint64_t page_number;
  uint64_t hash;                /* of the new contents */
  replicate_encoding encoding;
  const uint8_t *contents;      /* LOOM_PAGE_SIZE bytes */
} replicate_page;

/*
 * replicate_frame_decode: check and decompress the frame bytes[0, len) (the
 * whole frame, nothing more). Nothing in bytes is referenced afterwards.
 * Errors: those of replicate_frame_parse_header, then REPLICATE_ETRUNCATED
 * (len below the declared size), ETRAILING (len above it),
 * EPAYLOAD_CHECKSUM, EDECOMPRESS (includes a zstd frame whose own content
 * size is not the declared one: no decompression bomb gets past the
 * limits), EPAGES (pages not strictly ascending, not below after.pages, an
 * unknown encoding, or a delta of a page that did not exist before), ENOMEM.
 * A heartbeat decodes with page_count 0.
 */
int replicate_frame_decode(replicate_decoder *dec, const void *bytes,
                           size_t len, replicate_frame *out);

/* The i-th page (i < frame->info.page_count) of a decoded frame. */
void replicate_frame_get_page(const replicate_frame *frame, uint64_t i,
                              replicate_page *out);

/*
 * replicate_frame_apply: apply a decoded COMMIT frame to a standby's store,
 * through loom_store_patch_begin/add/commit. Steps:
 *   1. frame epoch older than the store's: REPLICATE_ESTALE_EPOCH.
 *   2. same epoch and after.seq <= the store's seq: REPLICATE_EDUPLICATE
 *      (nothing is checked or changed).
 *   3. before (seq, checksum, pages) differs from the store's position:
 *      REPLICATE_EPOSITION.
 *   4. the after checksum is recomputed from the store's page hashes and
 *      the frame's page hashes: REPLICATE_EAFTER_CHECKSUM if it differs.
 *   5. each delta page is rebuilt (XORed with loom_store_read_page()) in
 *      place, in the decoder's buffer: its entry then reads WHOLE, and the
 *      frame still describes the same commit (also when a later step
 *      fails). Every page's hash is checked with loom_page_hash():
 *      REPLICATE_EPAGE_HASH.
 *   6. frame epoch newer than the store's (the first frame from a promoted
 *      primary, which forked from this very position): the store adopts
 *      it durably with loom_store_set_epoch().
 *   7. the pages are streamed into a patch, which is committed.
 * Nothing is written before step 6. On an error in step 7 the patch is
 * aborted: the store keeps its pages and position (with the epoch adopted
 * in step 6). Other errors: REPLICATE_EKIND (a heartbeat), those of core/
 * (loom.h).
 */
int replicate_frame_apply(const replicate_frame *frame, loom_store *store);

/* ---------------------------------------------------------------------- */
/* Coalescing */

/*
 * A coalescer merges consecutive COMMIT frames (same epoch, each one's
 * before equal to the previous one's after) into one COALESCED frame:
 * before is the first one's, after the last one's, and each distinct page
 * appears once with its newest contents, as a delta against its version at
 * the first before (deltas compose by XOR) or whole. Pages dropped by a
 * shrinking commit and not written again are sent whole as zero pages.
 * No store is read: frames alone suffice.
 *
 *   replicate_coalescer_new(max_pages, &c);
 *   for each frame, decoded in seq order:  replicate_coalescer_add(c, &f);
 *   replicate_coalescer_finish(c, enc, &buf);   (c is then empty again)
 *   replicate_coalescer_free(c);
 */
typedef struct replicate_coalescer replicate_coalescer;

/* max_pages bounds the distinct pages of the result (and so its memory:
 * LOOM_PAGE_SIZE each); 0 means the default limit's max_frame_pages.
 * Errors: ENOMEM. */
int replicate_coalescer_new(uint64_t max_pages, replicate_coalescer **out);
void replicate_coalescer_free(replicate_coalescer *c);

/* Add the next frame (its pages are copied). Errors: REPLICATE_EKIND,
 * REPLICATE_ENOT_CONTIGUOUS, REPLICATE_ETOOBIG (more than max_pages
 * distinct pages), ENOMEM. After an error the coalescer is empty. */
int replicate_coalescer_add(replicate_coalescer *c,
                            const replicate_frame *frame);

/* The number of frames added since the last finish. */
uint64_t replicate_coalescer_frames(const replicate_coalescer *c);

/* Encode the merged frame into out and empty the coalescer. Errors:
 * REPLICATE_EINVAL (no frame added), those of replicate_frame_encode. */
int replicate_coalescer_finish(replicate_coalescer *c,
                               replicate_encoder *enc, replicate_buf *out);

/* ---------------------------------------------------------------------- */
/* The replication log */

/*
 * The primary keeps its frames in <image dir>/replog/, in segment files
 * named seg-<first seq, 20 digits>.log, each a header followed by records
 * (length, seq, epoch, checksum, frame). Records hold COMMIT frames that
 * are not coalesced, in seq order without gaps; a segment is closed when
 * the next record would take it past segment_bytes. Every append is
 * durable when it returns (pwrite, fsync of the segment; when a segment
 * is created or removed, the directory is fsynced too). All I/O goes
 * through a loom_io, except listing the directory (readdir on the
 * descriptor the loom_io opened: loom_io has no listing operation).
 *
 * Retention keeps the log bounded: replicate_log_retain() drops whole
 * segments whose frames are all older than what the slowest standby still
 * needs, and every append drops the oldest segments while the log exceeds
 * max_bytes, needed or not. A standby that then asks for a dropped frame
 * gets REPLICATE_ELOG_GONE: it needs a base image. The newest segment is
 * never dropped.
 *
 * Opening scans every segment and checks every record. A torn tail (the
 * last record of the last segment cut short or failing its checksum, as a
 * crash during an append leaves it) is truncated away: the log recovers to
 * its last whole record. Damage anywhere else is REPLICATE_ELOG_CORRUPT.
 */
typedef struct replicate_log replicate_log;

typedef struct replicate_log_options {
  uint64_t segment_bytes;       /* 0: 16 MiB */
  uint64_t max_bytes;           /* 0: 1 GiB */
} replicate_log_options;

/* Open (creating replog/ if missing) the log of the image directory
 * image_dir. opt and io may be NULL (defaults; loom_io_posix()). The io
 * must stay valid until close. Errors: REPLICATE_ELOG_CORRUPT,
 * REPLICATE_ELOG_VERSION, errno values. */
int replicate_log_open(const char *image_dir, const replicate_log_options *opt,
                       const struct loom_io *io, replicate_log **out);

/* Close; returns the first error of closing its files. */
int replicate_log_close(replicate_log *log);

/* Append one frame (a COMMIT frame, not coalesced, whose before.seq is the
 * newest seq in the log unless the log is empty, and whose epoch is not
 * older than the newest record's). Durable when it returns 0. Errors:
 * those of replicate_frame_parse_header, REPLICATE_EKIND, REPLICATE_EINVAL
 * (coalesced), REPLICATE_ENOT_CONTIGUOUS, errno values (ENOSPC...), and
 * REPLICATE_EPANIC once a failed fsync (or a failed undo of a half-written
 * record) poisoned the handle. */
int replicate_log_append(replicate_log *log, const void *frame, size_t len);

/* Read the frame of seq into out (its record checksum is checked again).
 * Errors: REPLICATE_ELOG_GONE (seq older than the oldest frame kept),
 * REPLICATE_ELOG_AHEAD (newer than the newest, or the log is empty),
 * REPLICATE_ELOG_CORRUPT, errno values, ENOMEM. */
int replicate_log_read(replicate_log *log, uint64_t seq, replicate_buf *out);

/* Counters; oldest_seq = newest_seq = 0 when the log is empty. */
typedef struct replicate_log_stats {
  uint64_t oldest_seq;
  uint64_t newest_seq;
  uint64_t newest_epoch;
  uint64_t records;
  uint64_t bytes;               /* on disk, headers included */
  uint64_t segments;
  uint64_t segments_dropped;    /* since open */
} replicate_log_stats;

void replicate_log_get_stats(replicate_log *log, replicate_log_stats *out);

/* The bytes of the frames with seq > after_seq (record headers included):
 * what a standby at after_seq still has to receive. 0 if none.
 * REPLICATE_ELOG_GONE when seq after_seq + 1 is no longer kept. */
int replicate_log_bytes_after(replicate_log *log, uint64_t after_seq,
                              uint64_t *bytes);

/* Drop every segment, except the newest, whose frames are all older than
 * oldest_needed (the lowest seq a standby still has to be sent: its
 * acknowledged seq plus one). Errors: errno values (the segments before the
 * failing one are dropped), REPLICATE_EPANIC. */
int replicate_log_retain(replicate_log *log, uint64_t oldest_needed);

/* Drop every segment: the next append may have any seq (after a base image
 * or a promotion broke the chain). Errors: errno values, REPLICATE_EPANIC. */
int replicate_log_reset(replicate_log *log);

/*
 * Reading forward from a seq (a standby catching up):
 *
 *   replicate_log_iter it;
 *   replicate_log_iter_init(&it, log, from_seq);
 *   while ((rc = replicate_log_iter_next(&it, &buf)) == 0)
 *       ... buf holds the frame of seq it.next_seq - 1 ...
 *   rc == REPLICATE_ELOG_AHEAD: caught up; REPLICATE_ELOG_GONE: too far
 *   behind (retention dropped the frame); anything else: an error.
 *
 * The iterator holds no resources and sees frames appended meanwhile.
 */
typedef struct replicate_log_iter {
  replicate_log *log;
  uint64_t next_seq;
} replicate_log_iter;

void replicate_log_iter_init(replicate_log_iter *it, replicate_log *log,
                             uint64_t from_seq);
int replicate_log_iter_next(replicate_log_iter *it, replicate_buf *out);

#ifdef __cplusplus
}
#endif
#endif /* REPLICATE_H */
