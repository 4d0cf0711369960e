/*
 * replicate.h: frames, the replication log, coalescing.
 *
 * INTRODUCTION
 *
 * Every commit of a loom (see core/loom.h) that changed something becomes one
 * *frame*: a self-checking byte string that a standby applies to its own
 * image to move from the commit's *before* position to its *after* position.
 *
 *     header   144 bytes: magic, format version, kind, flags, epoch,
 *              before (seq, checksum, pages), after (seq, checksum, pages),
 *              commit times, page count, payload sizes, payload checksum,
 *              history id, header checksum
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

/* The list, one X(name, value, text) per code: the enum below, the texts
 * (replicate_strerror) and the stable names (replicate_error_name) are
 * generated from it (errors.c). */
#define REPLICATE_ERROR_LIST(X)                                               \
  /* Decoding a frame (the peer sent something malformed: HTTP 400; ETOOBIG \
   * 413, before anything is allocated). */                                  \
  X(REPLICATE_ETRUNCATED, -31000, "frame is shorter than its header says")    \
  X(REPLICATE_EMAGIC, -31001, "not a loomship frame (bad magic)")             \
  X(REPLICATE_EVERSION, -31002, "unsupported frame format version")           \
  X(REPLICATE_EHEADER_CHECKSUM, -31003, "frame header fails its checksum")    \
  X(REPLICATE_EMALFORMED, -31004, "frame header fields are inconsistent")     \
  X(REPLICATE_ETOOBIG, -31005, "frame exceeds the configured limits")         \
  X(REPLICATE_ETRAILING, -31006, "bytes follow the end of the frame")         \
  X(REPLICATE_EPAYLOAD_CHECKSUM, -31007, "frame payload fails its checksum")  \
  X(REPLICATE_EDECOMPRESS, -31008,                                            \
    "frame payload does not decompress to its declared size")                 \
  X(REPLICATE_EPAGES, -31009,                                                 \
    "frame page entries are out of order, out of range or unknown")           \
  /* Applying a frame to a store: EDUPLICATE is answered 200 (nothing       \
   * done), EPOSITION and ESTALE_EPOCH 409 with the store's position. */     \
  X(REPLICATE_EDUPLICATE, -31010, "frame already applied")                    \
  X(REPLICATE_EPOSITION, -31011,                                              \
    "frame does not apply to this image's position")                          \
  X(REPLICATE_ESTALE_EPOCH, -31012,                                           \
    "frame is from an older epoch (its primary was fenced)")                  \
  X(REPLICATE_EPAGE_HASH, -31013, "a rebuilt page does not match its hash")   \
  X(REPLICATE_EAFTER_CHECKSUM, -31014,                                        \
    "frame's after checksum does not follow from its pages")                  \
  X(REPLICATE_EKIND, -31015, "a commit frame is needed, not a heartbeat")     \
  /* Building frames. */                                                      \
  X(REPLICATE_EINVAL, -31016, "invalid argument")                             \
  X(REPLICATE_ECOMPRESS, -31017, "zstd compression failed")                   \
  X(REPLICATE_ENOT_CONTIGUOUS, -31018,                                        \
    "frames do not follow each other (seq or epoch)")                         \
  /* The replication log, and shipping (ESYNC_TIMEOUT and EFENCED: the      \
   * commit stands locally). */                                              \
  X(REPLICATE_ELOG_GONE, -31019,                                              \
    "the replication log no longer reaches back to that seq")                 \
  X(REPLICATE_ELOG_AHEAD, -31020, "no frame that new in the replication log") \
  X(REPLICATE_ELOG_CORRUPT, -31021, "replication log is corrupt")             \
  X(REPLICATE_ELOG_VERSION, -31022,                                           \
    "unsupported replication log format version")                             \
  X(REPLICATE_EPANIC, -31023,                                                 \
    "replication log handle is poisoned after a failed write")                \
  X(REPLICATE_ESYNC_TIMEOUT, -31024,                                          \
    "too few standbys acknowledged the commit in time (it stands "            \
    "locally)")                                                               \
  X(REPLICATE_EFENCED, -31025,                                                \
    "this primary is fenced: a standby has a newer epoch")                    \
  X(REPLICATE_ECURL, -31026, "libcurl could not be initialised")              \
  /* Placing input against a node's position (replicate_place_*): the      \
   * input would move the node sideways or backwards; refused (409). */     \
  X(REPLICATE_EHISTORY, -31027,                                               \
    "another history: this node follows a different one")                     \
  X(REPLICATE_EBEHIND, -31028,                                                \
    "it would move this node backwards, below its own position")              \
  X(REPLICATE_EFORK, -31029,                                                  \
    "another checksum at a seq this node holds: the histories forked")        \
  X(REPLICATE_EPAST_BRANCH, -31030,                                           \
    "this node holds commits of an older epoch past the point where the "     \
    "newer epoch branched off")                                               \
  /* Integrity (DESIGN section 8). */                                         \
  X(REPLICATE_ECHECKSUM_MISMATCH, -31031,                                     \
    "the standby's own image checksum differs from this primary's at the "    \
    "same seq")                                                               \
  X(REPLICATE_EIMAGE_ROT, -31032,                                             \
    "an image page read back does not match its recorded hash")              \
  X(REPLICATE_EREQUEST, -31033, "malformed tree or pages request")            \
  X(REPLICATE_EANSWER, -31034, "malformed tree or pages answer")              \
  X(REPLICATE_EUNPINNED, -31035,                                              \
    "that position is not the one this node serves trees and pages at")      \
  /* Object stores (objstore.h): S3-compatible or a mounted directory. */     \
  X(REPLICATE_ESTORE, -31036,                                                 \
    "the object store failed the request (unreachable or 5xx)")             \
  X(REPLICATE_ESTORE_AUTH, -31037,                                            \
    "the object store refused the credentials (403)")                        \
  X(REPLICATE_ESTORE_MISSING, -31038, "no such object or bucket")             \
  X(REPLICATE_ESTORE_EXISTS, -31039,                                          \
    "the object already exists (a conditional put was refused)")            \
  /* The archive (DESIGN section 7). */                                       \
  X(REPLICATE_EARCHIVE_OBJECT, -31040,                                        \
    "an archived object is malformed, truncated or tampered with")          \
  X(REPLICATE_EARCHIVE_KEY, -31041,                                           \
    "the archive key is unusable, or an object is under an unknown key")    \
  X(REPLICATE_EARCHIVE_FOREIGN, -31042,                                       \
    "an object belongs to another archive or another position")             \
  X(REPLICATE_EARCHIVE_GAP, -31043,                                           \
    "that seq lies in a gap the archive recorded")                           \
  X(REPLICATE_EARCHIVE_WRITER, -31044,                                        \
    "another node writes to this archive")                                   \
  X(REPLICATE_EARCHIVE_BEHIND, -31045,                                        \
    "this node is behind the archive's newest position on its branch")      \
  X(REPLICATE_EARCHIVE_NOPOS, -31046,                                         \
    "the archive holds no such position")                                    \
  X(REPLICATE_EKEY_FILE, -31047,                                              \
    "the frame key file is unreadable, malformed, or open to group or others") \
  X(REPLICATE_ETAG_MISSING, -31048,                                           \
    "the input carries no frame tag, and this node has a frame key")         \
  X(REPLICATE_ETAG_KEY, -31049,                                               \
    "the input is tagged under a key id this node does not hold")            \
  X(REPLICATE_ETAG_BAD, -31050,                                               \
    "the frame tag does not match the input (tampered with, or another key)")  \
  X(REPLICATE_ENO_UPSTREAM, -31051,                                           \
    "no upstream to repair from (none given, none learned from frames)")

enum replicate_error {
  REPLICATE_OK = 0,
#define REPLICATE_ERROR_ENUM_(name, value, text) name = value,
  REPLICATE_ERROR_LIST(REPLICATE_ERROR_ENUM_)
#undef REPLICATE_ERROR_ENUM_
  REPLICATE_ELAST = -31052        /* sentinel: one past the lowest code */
};

/* A description of rc: 0, an errno value, a LOOM_E* or a REPLICATE_E*
 * code. Never NULL. */
const char *replicate_strerror(int rc);
/* The stable name of rc ("REPLICATE_EPOSITION"; loom_error_name for every
 * value outside the REPLICATE_E* range). Never NULL. */
const char *replicate_error_name(int rc);

/* ---------------------------------------------------------------------- */
/* Trees and pages on the wire (DESIGN section 8; byte tables in
 * docs/INTEGRITY.md). Pure functions: no I/O.
 *
 *   GET /v1/tree?level=L&first=I&count=N[&seq=S]
 *   GET /v1/pages?seq=S&pages=A-B,C,...
 *
 * A tree answer holds nodes [first, first + count) of one level of the
 * page-hash tree (loom.h) at one position; a pages answer the listed pages
 * with their recorded hashes at one position. Both start with a 72-byte
 * head and end with an XXH3-64 of every byte before it. */

#define REPLICATE_TREE_MAX_NODES 65536u  /* nodes in one tree answer */
#define REPLICATE_PAGES_MAX 256u         /* pages in one pages answer */
#define REPLICATE_INTEGRITY_HEAD 72u
#define REPLICATE_PAGE_ENTRY (16u + LOOM_PAGE_SIZE)

typedef enum replicate_answer_kind {
  REPLICATE_ANSWER_TREE = 1,
  REPLICATE_ANSWER_PAGES = 2
} replicate_answer_kind;

/* What both answers begin with. */
typedef struct replicate_answer_head {
  replicate_answer_kind kind;
  loom_history history;
  loom_position position;  /* epoch, seq, checksum, pages (no time) */
  unsigned level;          /* tree: the level; pages: 0 */
  uint64_t first;          /* tree: the first node; pages: 0 */
  uint64_t count;          /* nodes, or pages */
} replicate_answer_head;

/* A run of page numbers, first <= last. */
typedef struct replicate_page_run {
  uint64_t first, last;
} replicate_page_run;

/* A decimal number, digits only, no leading zero (but "0"), below 2^64:
 * 0 or REPLICATE_EREQUEST. */
int replicate_parse_u64(const char *text, uint64_t *out);
/* "A-B,C,...": ascending, not overlapping, each A <= B, at most cap runs
 * and max_pages pages in all; *n runs into out. 0 or REPLICATE_EREQUEST. */
int replicate_parse_ranges(const char *text, replicate_page_run *out, size_t cap,
                           size_t *n, uint64_t max_pages);

/* Bytes of an answer of that kind with count entries. */
size_t replicate_answer_size(replicate_answer_kind kind, uint64_t count);
/* Write the head into buf (replicate_answer_size bytes), then the caller
 * the entries (replicate_answer_put_node / _put_page), then seal. */
void replicate_answer_begin(const replicate_answer_head *head, uint8_t *buf);
void replicate_answer_put_node(uint8_t *buf, uint64_t i, uint64_t hash);
void replicate_answer_put_page(uint8_t *buf, uint64_t i, uint64_t page_number,
                               uint64_t hash, const void *contents);
/* Where entry i's contents go (to read a page in place; then pass it as
 * contents to replicate_answer_put_page). */
uint8_t *replicate_answer_page_slot(uint8_t *buf, uint64_t i);
void replicate_answer_seal(uint8_t *buf, size_t len);
/* Check bytes[0, len) strictly (magic, version, kind, sizes, checksum,
 * count limits, pages ascending and below position.pages) and read the
 * head: 0 or REPLICATE_EANSWER. Entries are then read in place: */
int replicate_answer_decode(const uint8_t *bytes, size_t len,
                            replicate_answer_head *head);
uint64_t replicate_answer_node(const uint8_t *bytes, uint64_t i);
void replicate_answer_page(const uint8_t *bytes, uint64_t i,
                           uint64_t *page_number, uint64_t *hash,
                           const uint8_t **contents);

/* ---------------------------------------------------------------------- */
/* Authenticated frames (DESIGN section 8; replicate/auth.c; docs/AUTH.md).
 * With a frame key (--frame-key-file), every frame body and heartbeat
 * (POST /v1/frames), base image (PUT /v1/base) and tree and pages answer
 * (GET /v1/tree, /v1/pages; GET /v1/backup when asked,
 * REPLICATE_WANT_TAG_HEADER) carries an HMAC-SHA256 tag in the
 * REPLICATE_TAG_HEADER header: "KEYID TAG" (16 and 64 lowercase hex
 * digits). A base image is streamed, so its tag follows the image in the
 * body as REPLICATE_TAG_SIZE raw bytes, and the header says "KEYID
 * trailer". A node with a key refuses input without a valid tag
 * (REPLICATE_ETAG_MISSING, _KEY, _BAD; HTTP 401); a node without one
 * ignores tags. Share a key between threads freely; a reload
 * (replicate_frame_key_reload) is safe against them. */

#define REPLICATE_TAG_HEADER "X-Loomship-Tag"
#define REPLICATE_TAG_SIZE 32u       /* HMAC-SHA256 */
#define REPLICATE_KEY_ID_BYTES 8u    /* a key id: its SHA-256's first bytes */
#define REPLICATE_KEY_ID_TEXT 17u    /* 16 hex digits and a NUL */
#define REPLICATE_TAG_TEXT 82u       /* a header value and its NUL */

/* What a tag covers, bound into it (a tag for one never passes for
 * another). */
typedef enum replicate_tag_kind {
  REPLICATE_TAG_FRAMES = 0,          /* a POST /v1/frames body */
  REPLICATE_TAG_BASE,                /* a base image stream (PUT /v1/base) */
  REPLICATE_TAG_TREE,                /* a GET /v1/tree answer */
  REPLICATE_TAG_PAGES,               /* a GET /v1/pages answer */
  REPLICATE_TAG_BACKUP               /* a GET /v1/backup answer's stream */
} replicate_tag_kind;

/* A GET /v1/backup request carrying this header (value "trailer") asks a
 * node with a frame key for the tagged form: the whole image stream (no
 * range), then its REPLICATE_TAG_BACKUP tag as a trailer, as a base image
 * carries one. A node without a key answers the plain stream, untagged. */
#define REPLICATE_WANT_TAG_HEADER "X-Loomship-Want-Tag"

typedef struct replicate_frame_key replicate_frame_key;

/* Read a key file: 64 hex digits (32 bytes) on its first line, optionally
 * the previous key on its second (accepted to check tags during a
 * rotation). Trailing spaces and CR are trimmed. REPLICATE_EKEY_FILE with
 * the reason in why (naming path) when it cannot be read, is readable by
 * group or others, or a line is not 64 hex digits; ENOMEM. The caller
 * frees *out with replicate_frame_key_free (which wipes it). */
int replicate_frame_key_load(const char *path, replicate_frame_key **out,
                             char *why, size_t why_len);
void replicate_frame_key_free(replicate_frame_key *key);
/* Read path again into key (SIGHUP): its holders tag and check under the
 * new keys from their next use. The same errors as replicate_frame_key_load;
 * on any of them key is unchanged (it never drops to no key). Safe against
 * concurrent tags and checks. */
int replicate_frame_key_reload(replicate_frame_key *key, const char *path,
                               char *why, size_t why_len);
/* The id of the current key (which 0) or the previous one (1), 16 hex
 * digits; NULL when there is no such key (or key is NULL). The string
 * stays valid until replicate_frame_key_free, across reloads. */
const char *replicate_frame_key_id(const replicate_frame_key *key, unsigned which);

/* The tag of data[0, len) under the current key, as the header value
 * "KEYID TAG" into out. 0, EINVAL or ENOMEM. */
int replicate_tag_make(const replicate_frame_key *key, replicate_tag_kind kind,
                       const void *data, size_t len, char out[REPLICATE_TAG_TEXT]);
/* Check header (the REPLICATE_TAG_HEADER value, NULL when absent) against
 * data[0, len): 0, REPLICATE_ETAG_MISSING (no header),
 * REPLICATE_ETAG_KEY (a key id neither of key's), REPLICATE_ETAG_BAD
 * (malformed, "trailer", or not the tag of this data), ENOMEM. */
int replicate_tag_check(const replicate_frame_key *key, replicate_tag_kind kind,
                        const char *header, const void *data, size_t len);

/* A header value read: the key id, and the tag or "trailer". */
typedef struct replicate_tag {
  char key_id[REPLICATE_KEY_ID_TEXT];
  bool trailer;
  uint8_t tag[REPLICATE_TAG_SIZE];   /* when not trailer */
} replicate_tag;
/* 0, REPLICATE_ETAG_MISSING (header NULL) or REPLICATE_ETAG_BAD. */
int replicate_tag_parse(const char *header, replicate_tag *out);

/* A tag computed over a stream (a base image): begin under key_id (NULL:
 * the current key; REPLICATE_ETAG_KEY when key holds no such id), update
 * with each piece, then end (the tag) or check (0 or REPLICATE_ETAG_BAD,
 * compared in constant time); free in every case. */
typedef struct replicate_tag_stream replicate_tag_stream;
int replicate_tag_stream_begin(const replicate_frame_key *key,
                               replicate_tag_kind kind, const char *key_id,
                               replicate_tag_stream **out);
int replicate_tag_stream_update(replicate_tag_stream *s, const void *data, size_t len);
int replicate_tag_stream_end(replicate_tag_stream *s, uint8_t tag[REPLICATE_TAG_SIZE]);
int replicate_tag_stream_check(replicate_tag_stream *s,
                               const uint8_t tag[REPLICATE_TAG_SIZE]);
void replicate_tag_stream_free(replicate_tag_stream *s);

/* ---------------------------------------------------------------------- */
/* Self-repair (DESIGN section 8; replicate/repair.c; the protocol in
 * docs/INTEGRITY.md). A standby that found pages[0, count) (ascending)
 * rotted fetches them from its upstream with GET /v1/pages at its own
 * position and hands the answer here. The answer is refused, and nothing
 * written, unless it is well formed (REPLICATE_EANSWER), of the store's
 * history (REPLICATE_EHISTORY) and position (REPLICATE_EPOSITION), lists
 * exactly those pages (REPLICATE_EANSWER), and every page hashes both to
 * the answer's hash and to the hash the store recorded for it
 * (REPLICATE_EPAGE_HASH). Then the pages are written durably as one
 * LOOM_PATCH_REPAIR patch (the position does not move) and read back after
 * the apply (REPLICATE_EPAGE_HASH when one still does not match). The
 * caller keeps every other writer of the store out meanwhile (the
 * standby's applier is paused). 0, or the error; errno values and LOOM_E*
 * from the store pass through. */
int replicate_repair_pages(loom_store *store, const uint8_t *answer, size_t len,
                           const uint64_t *pages, uint64_t count);

/* Where a standby repairs from: get sends "GET path" (a /v1/tree or
 * /v1/pages request, docs/INTEGRITY.md) to its upstream and returns 0 with
 * the 200 answer's body in *body (malloc'd; the caller frees it), checked
 * against kind's frame tag when the node holds a frame key; or an error
 * code, with why filled (REPLICATE_ENO_UPSTREAM: it knows no upstream). */
typedef struct replicate_repair_source {
  int (*get)(void *ctx, const char *path, replicate_tag_kind kind, uint8_t **body,
             size_t *len, char *why, size_t why_len);
  void *ctx;
} replicate_repair_source;

/* The most pages replicate_repair_from moves (64 MiB). */
#define REPLICATE_REPAIR_MAX_PAGES 4096u

/* Repair the store from its upstream at the upstream's own position
 * (steps R1-R5 in repair.c, docs/INTEGRITY.md section 5): the bad pages
 * bad[0, nbad) and every page that changed between the store's position
 * and the upstream's are fetched, checked against the upstream's page
 * hashes (which must add up to its checksum) and written as one patch
 * that moves the store to the upstream's position (a LOOM_PATCH_REPAIR
 * patch at the same position when the two are the same). The upstream
 * must be of the store's history and epoch and not behind it
 * (REPLICATE_EHISTORY, REPLICATE_EPOSITION); more than half the image to
 * move is REPLICATE_ETOOBIG (a base image's job); a page that does not
 * hash to the upstream's hash is REPLICATE_EPAGE_HASH; a malformed or
 * unexpected answer REPLICATE_EANSWER; the source's errors pass through.
 * 0 and *moved, the pages written (0: nothing to do). The caller keeps
 * every other writer of the store out meanwhile. */
int replicate_repair_from(loom_store *store, const replicate_repair_source *src,
                          const uint64_t *bad, uint64_t nbad, uint64_t *moved,
                          char *why, size_t why_len);

/* Rewind through the page-hash tree (DESIGN section 3's one exception,
 * section 6 "Rejoin"; steps W1-W5 in repair.c): a cluster member whose
 * history goes past the branch point of its leader's epoch takes the
 * leader's position by moving only the pages that differ. lineage is the
 * leader's (the header of its GET /v1/backup: replicate_stream_reader),
 * allowed_epoch the leader's epoch as the node learned it (0: refused).
 * The move must be a rewind P5 of place.c allows (the leader on our
 * history at allowed_epoch or newer, newer than ours, and we diverged
 * from it), else that placement's code (REPLICATE_EPOSITION when we had
 * not diverged); lineage must be of the pinned leader's history with its
 * epoch as the newest branch (REPLICATE_EANSWER). The pages are checked
 * as replicate_repair_from checks them (REPLICATE_EPAGE_HASH,
 * REPLICATE_EANSWER; more than half the image is REPLICATE_ETOOBIG: a
 * base image's job). Then lineage is adopted and the pages written as one
 * LOOM_PATCH_REWIND patch from our position to the leader's: a crash
 * leaves the one or the other. 0 and *moved (pages written), or the error
 * with why filled; nothing is written on an error before the patch. The
 * caller keeps every other writer of the store out meanwhile
 * (replicate_receiver_rewind_from does). */
int replicate_rewind_from(loom_store *store, const replicate_repair_source *src,
                          const loom_lineage *lineage, uint64_t allowed_epoch,
                          uint64_t *moved, char *why, size_t why_len);

/* ---------------------------------------------------------------------- */
/* The scrubber (DESIGN section 8; replicate/scrub.c): a background thread
 * that re-reads every image page through short-lived snapshots and
 * compares it with the hash recorded when it was written (level 0 of the
 * snapshot's tree), a full pass every interval, its reads capped. Every
 * node runs one. Zero-initialise the options, then set what you need. */

typedef enum replicate_integrity_state {
  REPLICATE_INTEGRITY_OK = 0,
  REPLICATE_INTEGRITY_REPAIRING = 1, /* bad pages being fetched again */
  REPLICATE_INTEGRITY_CORRUPT = 2    /* bad pages found, not repaired */
} replicate_integrity_state;

/* "ok", "repairing", "corrupt" (status and metrics: a public contract). */
const char *replicate_integrity_state_name(replicate_integrity_state state);

typedef struct replicate_scrub_options {
  /* Snapshots of the image (required): open gives 0 or an error code
   * (the pass waits and tries again), close gives it back. */
  int (*snapshot_open)(void *ctx, loom_snapshot **out);
  void (*snapshot_close)(void *ctx, loom_snapshot *snap);
  void *ctx;
  double interval_seconds;       /* a full pass starts this often; the
                                    first after one interval or 600 s,
                                    whichever is shorter [86400; < 0:
                                    off] */
  double mbps;                   /* read cap, MiB/s [64] */
  void (*log)(void *log_ctx, const char *message); /* optional */
  void *log_ctx;
  /* Self-repair (optional; docs/INTEGRITY.md section 5): called on the
   * scrubber's thread at the end of a pass that found bad pages, with
   * them (pages[0, count), ascending, count <= REPLICATE_PAGES_MAX): 0
   * when they were repaired (a standby: fetched from its upstream and
   * written by replicate_receiver_repair), else an error code and the
   * reason, NUL-terminated, in why. The state is repairing meanwhile; a
   * failed round is tried again repair_retry_seconds later, up to
   * REPLICATE_REPAIR_TRIES rounds, then the state is corrupt (and stays
   * so while each later pass tries again, until one succeeds). A pass that
   * finds more than REPLICATE_PAGES_MAX bad pages, or a round refused as
   * REPLICATE_ETOOBIG, is corrupt at once (a base image is the way back:
   * want_base). Pages asked for (replicate_scrubber_request_repair: a
   * frame that no longer applies, or a read-back) hold the standby up
   * until they are mended: with want_base, up to
   * REPLICATE_REPAIR_TRIES_ASKED rounds, the wait doubling (31 s of waits
   * at the default, plus the tries' own time: an upstream that restarts
   * is waited for), then a
   * base image is asked for. A round the receiver answers EBUSY (a base
   * image being installed) is not counted, and one during which a base
   * image was installed ends (replicate_scrubber_base_installed).
   * Without it, a bad page is corrupt at once. */
  int (*repair)(void *repair_ctx, const uint64_t *pages, uint64_t count,
                char *why, size_t why_len);
  void *repair_ctx;
  /* The way back when a repair cannot move the pages one by one (more
   * than REPLICATE_PAGES_MAX bad pages in a pass, a round refused as
   * REPLICATE_ETOOBIG: more than half the image or
   * REPLICATE_REPAIR_MAX_PAGES to move, or the last failed round of
   * pages asked for): called at once (no further
   * rounds) with repair_ctx and the reason; a standby asks its primary
   * for a base image (replicate_receiver_want_base). The state is corrupt
   * until replicate_scrubber_base_installed. Optional [none: corrupt, as
   * before]. */
  void (*want_base)(void *repair_ctx, const char *why);
  double repair_retry_seconds;   /* the wait after a failed round (doubled
                                    each time for pages asked for) [1] */
  bool repair_only;              /* no passes: the thread only runs the
                                    repairs asked for with
                                    replicate_scrubber_request_repair
                                    (a standby with --scrub-interval 0)
                                    [false] */
} replicate_scrub_options;

#define REPLICATE_REPAIR_TRIES 3
#define REPLICATE_REPAIR_TRIES_ASKED 6

typedef struct replicate_scrub_status {
  bool running;                  /* a scrubber exists (not off) */
  replicate_integrity_state state;
  int64_t last_scrub_at_ns;      /* CLOCK_REALTIME, the end of the last
                                    full pass; 0 before the first */
  uint64_t passes;               /* full passes ended */
  uint64_t pages_scrubbed;       /* since start */
  uint64_t pages_repaired;       /* since start, by the repair hook */
  uint64_t bad_pages;            /* found since start (a page found again
                                    while its repair is asked for or
                                    running: once) */
  uint64_t bad_page;             /* the last found; UINT64_MAX: none */
  char last_error[256];          /* "" when none */
} replicate_scrub_status;

typedef struct replicate_scrubber replicate_scrubber;

/* 0 and *out (NULL when interval_seconds < 0 and not repair_only: off),
 * REPLICATE_EINVAL,
 * ENOMEM or a pthread error. */
int replicate_scrubber_start(const replicate_scrub_options *opt,
                             replicate_scrubber **out);
/* Stops the thread (within one read) and frees. NULL is a no-op. */
void replicate_scrubber_stop(replicate_scrubber *scrubber);
/* Thread-safe; a NULL scrubber reports running false, state ok. */
void replicate_scrubber_status(replicate_scrubber *scrubber,
                               replicate_scrub_status *out);
/* Bad pages found outside a pass (a frame that no longer applies, the
 * read-back of an apply): the state is repairing at once, and the thread
 * runs a repair round (as at a pass's end) for them, and any asked for
 * before it started, within a moment. Pages past the first
 * REPLICATE_PAGES_MAX waiting are dropped (a later pass finds them).
 * Thread-safe, never blocks on I/O; a NULL scrubber or one without a
 * repair hook ignores it. */
void replicate_scrubber_request_repair(replicate_scrubber *scrubber,
                                       const uint64_t *pages, uint64_t count);
/* A base image replaced the whole image (checked against its checksum):
 * the state is ok again, last_error cleared, repairs asked for dropped,
 * except still_bad[0, count): pages the base image's own read-back found
 * not as written (already reported, so not counted in bad_pages again),
 * asked for again (state repairing). Thread-safe; NULL is a no-op. */
void replicate_scrubber_base_installed(replicate_scrubber *scrubber,
                                       const uint64_t *still_bad, uint64_t count);

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
/* Append len bytes of data after buf->len (a curl write callback's body):
 * 0, or ENOMEM with buf unchanged. */
int replicate_buf_append(replicate_buf *buf, const void *data, size_t len);

/* ---------------------------------------------------------------------- */
/* Frames: what they say */

#define REPLICATE_FRAME_VERSION 2u
#define REPLICATE_HEADER_SIZE 144u
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

/*
 * What a frame header says.
 *   before and after are positions (loom.h); the frame carries their seq,
 *     checksum and pages. Their epoch is the frame's epoch (a heartbeat's
 *     before is all 0), and their commit_time_ns is 0: a frame's times are
 *     the fields below.
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
  loom_history history;         /* the sender's history (loom.h) */
  uint64_t epoch;
  loom_position before;
  loom_position after;
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
/* Placing input against a position: a node never moves backwards or
 * sideways by itself (DESIGN section 3)
 *
 * A node (a standby, or a primary deciding what to send one) holds a
 * position (epoch, seq, checksum) of a history (loom.h). Input that would
 * move it is placed against that position first:
 *
 *   replicate_place_frame   a frame or a heartbeat
 *   replicate_place_base    a base image at position base, of lineage
 *   replicate_place_peer    a primary (ours, at latest) looking at a
 *                           standby's reported position
 *
 * They return 0 (go on), REPLICATE_EDUPLICATE (already held: nothing to
 * do), REPLICATE_EPOSITION (not contiguous: a gap, or an overlap that
 * begins behind the position; the sender resends from the position), or
 * a refusal: REPLICATE_ESTALE_EPOCH (the sender was fenced), and the four
 * divergences REPLICATE_EHISTORY, REPLICATE_EBEHIND, REPLICATE_EFORK,
 * REPLICATE_EPAST_BRANCH (replicate_is_divergence). A node with no
 * history, or at seq 0, holds nothing and takes input of any history.
 * Equal whole-image checksums at the same seq mean the same image, so
 * input whose before is the node's exact position is always safe.
 */

/* 1 for the four divergence codes, else 0. */
int replicate_is_divergence(int rc);

int replicate_place_frame(const loom_history *ours, const loom_position *pos,
                          const replicate_frame_info *frame);
int replicate_place_base(const loom_history *ours, const loom_position *pos,
                         const loom_position *base,
                         const loom_lineage *lineage);
/* peer_history may be NULL (unknown). 0: the peer is on our history at or
 * behind latest (send it frames or a base); REPLICATE_EDUPLICATE: it holds
 * latest; a divergence code otherwise (REPLICATE_EBEHIND: the peer is
 * ahead of this primary). A peer of a newer epoch is not judged here (it
 * fences the primary). */
int replicate_place_peer(const loom_lineage *ours, const loom_position *latest,
                         const loom_history *peer_history,
                         const loom_position *peer);
/* P5 (place.c), a cluster member's rewind: 1 when input at target, of
 * lineage, that replicate_place_base refused with place (EPAST_BRANCH,
 * EFORK or EBEHIND) may still replace what the node (history ours, at
 * pos) holds, because it was allowed to rewind to allowed_epoch (0: not
 * allowed) and target is of its own history at that epoch or newer and
 * newer than pos; else 0. */
int replicate_place_rewind(int place, const loom_history *ours,
                           const loom_position *pos, uint64_t allowed_epoch,
                           const loom_position *target, const loom_lineage *lineage);
/* The commits held at pos that a rewind to target discards: those past
 * the branch point of lineage's first epoch newer than pos's (or past
 * target, when that is lower or the lineage knows no branch). */
uint64_t replicate_rewound_commits(const loom_position *pos, const loom_position *target,
                                   const loom_lineage *lineage);

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
 * loom_commit_old_page_view() (in place when the store holds them in
 * memory, else into the encoder's scratch page), the hashes and
 * positions come from c. Each old version read is checked against its
 * recorded hash (c->old_hashes; DESIGN section 8: a rotted page is never
 * shipped): REPLICATE_EIMAGE_ROT, with the page named by
 * replicate_encoder_rot_page. Other errors: those of replicate_frame_encode
 * and of loom_commit_old_page.
 */
/* The page the last REPLICATE_EIMAGE_ROT named (UINT64_MAX: none yet). */
uint64_t replicate_encoder_rot_page(const replicate_encoder *enc);
int replicate_frame_encode_commit(replicate_encoder *enc, loom *l,
                                  const loom_commit *c, replicate_buf *out);

/* replicate_frame_encode_heartbeat: a heartbeat saying the primary of
 * history is at latest (its epoch, seq, checksum and pages) since
 * latest->commit_time_ns, made at now_ns. Errors: REPLICATE_EINVAL (epoch
 * 0), ENOMEM. */
int replicate_frame_encode_heartbeat(const loom_history *history,
                                     const loom_position *latest,
                                     int64_t now_ns, replicate_buf *out);

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
 *   5. each delta page is rebuilt (XORed with the committed version,
 *      loom_store_read_committed_page(): no wait for the checkpoint) in
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

/*
 * replicate_frame_readback: after replicate_frame_apply(frame, store)
 * returned 0, read every page the frame wrote back from the store's image
 * (loom_store_read_page: it waits for the store's checkpoint), hash it, and set
 * *checksum to the whole-image checksum those pages give: the store's
 * position checksum with each page's recorded hash swapped for the hash of
 * what the image now holds. It is the checksum a standby computed itself
 * from the pages it wrote (DESIGN section 8), never one copied from the
 * frame: equal to the store's checksum when every page landed as written.
 * *bad_page is the first page that did not, UINT64_MAX when none. Returns
 * 0, or the store's read error (*checksum and *bad_page untouched). Cost:
 * one page read (from the page cache, usually) and one page hash per page.
 */
int replicate_frame_readback(const replicate_frame *frame, loom_store *store,
                             uint64_t *checksum, uint64_t *bad_page);
/* The same for pages[0, count) written by the store's last commit. */
int replicate_pages_readback(loom_store *store, const uint64_t *pages,
                             uint64_t count, uint64_t *checksum,
                             uint64_t *bad_page);
/* The same for every page of the image (after a base image, which wrote
 * them all): one read of the whole image. */
int replicate_image_readback(loom_store *store, uint64_t *checksum, uint64_t *bad_page);

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

/* The number of frames added since the last finish, and the number of
 * distinct pages they changed (the memory held: LOOM_PAGE_SIZE each). */
uint64_t replicate_coalescer_frames(const replicate_coalescer *c);
uint64_t replicate_coalescer_pages(const replicate_coalescer *c);

/* Encode the merged frame into out and empty the coalescer. Errors:
 * REPLICATE_EINVAL (no frame added), those of replicate_frame_encode. */
int replicate_coalescer_finish(replicate_coalescer *c,
                               replicate_encoder *enc, replicate_buf *out);

/* The merged frame, decoded, without compressing it: its entries are
 * written into dec's buffer and *out describes them as
 * replicate_frame_decode() would (valid until dec is used again; its
 * compressed_size and frame_size are 0). For a standby applying several
 * received frames with one commit. Empties the coalescer. Errors:
 * REPLICATE_EINVAL (no frame added), REPLICATE_ETOOBIG (more pages than
 * max_pages or than dec's max_frame_pages), ENOMEM. */
int replicate_coalescer_finish_frame(replicate_coalescer *c,
                                     replicate_decoder *dec,
                                     replicate_frame *out);

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
 * needs (replicate_log_oldest_needed says which), and every append drops the oldest segments while the log exceeds
 * max_bytes, needed or not. A standby that then asks for a dropped frame
 * gets REPLICATE_ELOG_GONE: it needs a base image. The newest segment is
 * never dropped.
 *
 * Opening scans every segment and checks every record. The log is a cache
 * of what the store holds, so damage costs frames, never the open: the
 * newest segment is cut at its first torn or damaged record (a crash
 * during an append leaves one), and an older segment that is damaged, or
 * does not chain with the next, is removed with every segment older than
 * it. What is kept is the contiguous chain ending at the newest good
 * record; a standby that needs a removed frame gets a base image. Each
 * cut or removal is reported to on_repair.
 */
typedef struct replicate_log replicate_log;

/* What opening the log repaired, one report per segment file. */
typedef enum replicate_log_repair_kind {
  REPLICATE_LOG_CUT = 1,        /* the newest segment was cut at offset (0:
                                   its header failed, the file was removed):
                                   seq first_seq and any after it in the
                                   file are gone (last_seq is 0: unknown) */
  REPLICATE_LOG_DAMAGED = 2,    /* an older segment failed its checks at
                                   offset: removed, with seqs first_seq to
                                   last_seq */
  REPLICATE_LOG_UNCHAINED = 3   /* older than a damaged segment or than a
                                   break in the chain: removed, with seqs
                                   first_seq to last_seq (none if last_seq <
                                   first_seq) */
} replicate_log_repair_kind;

typedef struct replicate_log_repair {
  replicate_log_repair_kind kind;
  const char *file;             /* the segment's name in replog/; valid only
                                   during the callback */
  uint64_t offset;              /* CUT, DAMAGED: where the damage starts */
  uint64_t first_seq;
  uint64_t last_seq;
} replicate_log_repair;

typedef void (*replicate_log_repair_fn)(void *ctx, const replicate_log_repair *r);

/* One sentence for a log line, e.g. "replog/seg-...log: damaged at byte 72:
 * removed with seqs 9-16"; returns buf. */
const char *replicate_log_repair_describe(const replicate_log_repair *r,
                                          char *buf, size_t len);

/* When an append is durable (LOG SYNC in log.c). */
typedef enum replicate_log_sync_mode {
  /* Each append fsyncs before it returns: a standby's receive log, whose
   * records are acknowledged as received. */
  REPLICATE_LOG_SYNC_EACH = 0,
  /* Appends return once written; replicate_log_sync makes every record
   * written so far durable. For a log that is a cache of a store that is
   * itself durable (the primary's: its commit is durable before the
   * commit hook appends the frame), so that a save pays one fsync, not
   * two. After a power loss the log may end before the store: a standby
   * that needs the lost frames gets a base image. */
  REPLICATE_LOG_SYNC_DEFERRED = 1,
  /* DEFERRED, and a thread of the log calls replicate_log_sync whenever
   * records wait for it, at most once per 5 ms (appends arriving
   * meanwhile share its fsync). */
  REPLICATE_LOG_SYNC_BACKGROUND = 2
} replicate_log_sync_mode;

#define REPLICATE_LOG_MAX_BYTES_DEFAULT (UINT64_C(1) << 30) /* the log's byte cap: 1 GiB */

typedef struct replicate_log_options {
  uint64_t segment_bytes;       /* 0: derived from max_bytes, so that
                                   retention, which drops whole segments,
                                   keeps the log well under its cap: an
                                   eighth of max_bytes, at least 64 KiB and
                                   at most 16 MiB */
  uint64_t max_bytes;           /* 0: REPLICATE_LOG_MAX_BYTES_DEFAULT */
  replicate_log_repair_fn on_repair; /* NULL: repairs are not reported */
  void *repair_ctx;
  replicate_log_sync_mode sync; /* 0: REPLICATE_LOG_SYNC_EACH */
} replicate_log_options;

/* Open (creating replog/ if missing) the log of the image directory
 * image_dir, repairing damage as described above (on_repair is called
 * from inside this call). opt and io may be NULL (defaults;
 * loom_io_posix()). The io must stay valid until close. Errors:
 * REPLICATE_ELOG_VERSION (a segment of an unknown version: nothing is
 * removed), errno values. */
int replicate_log_open(const char *image_dir, const replicate_log_options *opt,
                       const struct loom_io *io, replicate_log **out);

/* Close (a deferred log syncs first); returns the first error of syncing
 * and closing its files. */
int replicate_log_close(replicate_log *log);

/* Append one frame (a COMMIT frame, not coalesced, whose before.seq is the
 * newest seq in the log unless the log is empty, and whose epoch is not
 * older than the newest record's). Durable when it returns 0. Errors:
 * those of replicate_frame_parse_header, REPLICATE_EKIND, REPLICATE_EINVAL
 * (coalesced), REPLICATE_ENOT_CONTIGUOUS, errno values (ENOSPC...), and
 * REPLICATE_EPANIC once a failed fsync (or a failed undo of a half-written
 * record) poisoned the handle. With REPLICATE_LOG_SYNC_DEFERRED or
 * _BACKGROUND the record is written and readable when it returns 0, and
 * durable after the next replicate_log_sync. */
int replicate_log_append(replicate_log *log, const void *frame, size_t len);

/* Make every record written so far durable (one fsync, outside the lock:
 * appends and reads go on meanwhile). 0 at once when nothing waits (and
 * always with REPLICATE_LOG_SYNC_EACH); a failed fsync poisons the handle
 * (REPLICATE_EPANIC from then on) and is returned. */
int replicate_log_sync(replicate_log *log);

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
  uint64_t unsynced;            /* records written, not yet durable
                                   (deferred sync modes) */
  uint64_t syncs;               /* replicate_log_sync fsyncs since open */
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

/* A second reader's floor (the archive's, DESIGN section 7): from now on
 * replicate_log_retain keeps every frame with seq >= from_seq, whatever
 * oldest_needed it is given; 0 lifts it. The byte cap (max_bytes) still
 * drops the oldest segments: the floor holds frames back from retention,
 * not from the cap. Thread-safe. */
void replicate_log_hold(replicate_log *log, uint64_t from_seq);
/* The floor replicate_log_hold set last (0: none). Thread-safe. */
uint64_t replicate_log_held_from(replicate_log *log);

/*
 * The retention policy of a log read by several standbys (the shipper's,
 * replicate.h LOG RETENTION): what each one holds back.
 */
typedef enum replicate_log_reader_state {
  REPLICATE_LOG_READER_UNKNOWN = 0,   /* never heard from: it may need
                                         every frame kept */
  REPLICATE_LOG_READER_AT = 1,        /* it holds every frame up to seq (its
                                         received seq, or the seq of the
                                         base snapshot it is being sent) */
  REPLICATE_LOG_READER_NEEDS_BASE = 2 /* it gets a base image, whose
                                         snapshot is not open yet: it holds
                                         nothing back */
} replicate_log_reader_state;

typedef struct replicate_log_reader {
  replicate_log_reader_state state;
  uint64_t seq;                 /* AT */
} replicate_log_reader;

/* The oldest seq one of readers[0, n) still needs, for
 * replicate_log_retain; 0 when nothing may be dropped (a reader of unknown
 * position) and UINT64_MAX when no reader needs any frame (n == 0, or
 * every one needs a base image: keep the log as it is for the next). */
uint64_t replicate_log_oldest_needed(const replicate_log_reader *readers,
                                     size_t n);

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

/* ====================================================================== */
/*
 * Shipping: the primary side of replication. It ships every
 * committed frame to the standbys over HTTP (libcurl multi interface), in
 * order, each standby at its own pace, and accounts for their lag.
 * (To be folded into replicate.h; it builds on the frames, the coalescer and
 * the replication log declared there.)
 *
 * INTRODUCTION
 *
 * The primary's loom calls replicate_shipper_on_commit() from its commit
 * hook, right after the local commit point. The shipper encodes the commit
 * into a frame, hands it to its shipping thread (the store holds the
 * commit durably already, so it may ship at once) and appends it durably
 * to the replication log (file and directory fsynced), which serves
 * standbys further behind. In sync mode the hook then waits until N
 * standbys hold the frame durably.
 *
 * One shipping thread runs one curl multi loop. Every standby has one
 * ordered pipeline with at most one request in flight and its own easy
 * handle, reused so the connection is kept alive. A slow or dead standby
 * never blocks the others, nor the application (in async mode).
 *
 * THE WIRE (the standby side is http/; docs/HTTP.md)
 *
 *   POST /v1/frames   one frame (commit, coalesced or heartbeat) as the
 *                     body, Content-Type: application/octet-stream,
 *                     "Authorization: Bearer TOKEN" when a token is set.
 *   PUT  /v1/base     the image stream of a snapshot (loom.h:
 *                     loom_stream_header_encode, then the pages), streamed
 *                     from the snapshot, never whole in memory.
 *
 *   200  {"received": POINT, "applied": POINT, ...}   POINT = {"epoch": E,
 *        "seq": S, "checksum": "16 hex digits", "pages": P, ...}
 *   409  {"error": "gap" | "checksum mismatch" | "stale epoch" | ...,
 *        "received": POINT, "applied": POINT, ...}
 *   400 malformed, 401/403 token refused, 413 too large, 507 disk full,
 *   503 busy (Retry-After honoured), other 5xx.
 *
 * Answers are read with a small strict JSON reader that extracts only
 * these fields; anything that is not well-formed JSON, or a POINT missing
 * a field, is treated as a failed request.
 *
 * STATES OF A STANDBY
 *
 *   (start)  its position is unknown: a heartbeat is sent, the answer
 *            gives its received position. The state shows catching_up
 *            until then.
 *   streaming     it holds the primary's latest frame, or lacks only the
 *                 newest one, which is sent as it is.
 *   catching_up   it is further behind and the log still holds the frame
 *                 after its received position: the frames it lacks are
 *                 merged (replicate_coalescer) into pieces of at most
 *                 coalesce_max_pages pages and coalesce_max_bytes input
 *                 bytes, one piece per request.
 *   base_sync     the log no longer reaches back (REPLICATE_ELOG_GONE),
 *                 or its received position is not in the primary's history
 *                 (409 "checksum mismatch", a checksum that differs from
 *                 the frame that should follow it, a seq ahead of the
 *                 primary's): PUT /v1/base from a snapshot of the store,
 *                 then continue from the snapshot's seq. Standbys that
 *                 need a base at the same time share one snapshot.
 *   unreachable   no connection (refused, reset, a connect or request
 *                 timeout before it stalled) or an unreadable answer:
 *                 retried with exponential backoff with jitter
 *                 (backoff_base_seconds doubling up to backoff_max_seconds;
 *                 a Retry-After is honoured). Frames lost to a connection
 *                 error or a timeout are resent as they were (a standby
 *                 that had them answers 200: a duplicate); after anything
 *                 else its position is asked again first, with a heartbeat.
 *   stalled       a request is in flight on an open connection and no byte
 *                 moved either way for stall_seconds (a stopped process
 *                 whose kernel still accepts): shown at once, while the
 *                 request waits for its timeout; it stays stalled when that
 *                 timeout ends it, and is retried like unreachable.
 *   refused       an HTTP error answer with no state of its own (400, 503,
 *                 507, other 5xx, 413 on a base image): last_error says
 *                 "HTTP CODE (the standby's error text)"; retried like
 *                 unreachable.
 *   unauthorized  401 or 403: nothing is shipped to it; its position is
 *                 asked again after 0.5 s, the wait doubling while it keeps
 *                 refusing up to unauthorized_retry_seconds, so a token or
 *                 frame-key rotation (replicate_shipper_set_token at once,
 *                 or on the standby, which may re-read its files after
 *                 the primary did) heals it.
 *   fenced        a 409 "stale epoch" (or any answer with a newer epoch
 *                 than the primary's): a promotion fenced this primary.
 *                 Shipping stops to every standby, for good.
 *
 * A 409 other than "stale epoch" (a gap) carries the standby's position:
 * shipping resumes from there. A 413 on a merged piece halves that
 * standby's piece size; on a single frame it sends a base image instead.
 * A standby idle for heartbeat_seconds gets a heartbeat (the primary's
 * latest position and commit time), so it can report its own lag.
 *
 * LOG RETENTION
 *
 * After acknowledgements the shipper calls replicate_log_retain() with the
 * oldest seq still needed: the lowest received seq + 1 over the standbys
 * (a standby in base_sync counts with its snapshot's seq + 1 once the
 * snapshot is open, and not at all before; a standby never heard from
 * since start holds everything). The log's byte cap (its max_bytes option)
 * drops older frames regardless: a standby that falls past it gets a base
 * image.
 *
 * START
 *
 * At start the log is reconciled with the store: if its newest frame is not
 * the store's current position (a crash between the commit point and the
 * append, or a failed append) the log is reset, so the chain of frames is
 * never broken; standbys that needed the lost frames get base images.
 *
 * SECRETS
 *
 * The token is copied, zeroed when replaced or freed, and never appears in
 * status, errors or diagnostics.
 *
 * ERRORS
 *
 * 0 on success, a positive errno value, a negative LOOM_E* or REPLICATE_E*
 * code passed through, or one of the codes below.
 * replicate_strerror() describes all of them.
 *
 * THREADS
 *
 * replicate_shipper_on_commit() is called by the thread that saves the
 * loom (one at a time). replicate_shipper_status(),
 * replicate_shipper_get_summary(), replicate_shipper_set_token(),
 * replicate_shipper_add_peer() and replicate_shipper_remove_peer() may be
 * called from any thread at any time. replicate_shipper_drain() and
 * replicate_shipper_stop() by the owner, not while on_commit runs.
 * libcurl must not be used with curl_global_cleanup() by another part of
 * the process while a shipper runs.
 */

/* ---------------------------------------------------------------------- */
/* Options */

typedef enum replicate_sync_outcome {
  REPLICATE_SYNC_FAIL = 0,    /* on_commit returns REPLICATE_ESYNC_TIMEOUT
                                 (summary.sync_degraded until sync_count
                                 standbys hold the latest frame again) */
  REPLICATE_SYNC_DEGRADE = 1  /* on_commit returns 0 and the shipper runs
                                 asynchronously (summary.sync_degraded)
                                 until sync_count standbys hold the latest
                                 frame again */
} replicate_sync_outcome;

/* One line of diagnostics (state changes, errors), no trailing newline,
 * never with the token in it. Called from the shipping thread. */
typedef void (*replicate_ship_log_fn)(void *ctx, const char *line);

/* Zero-initialise, then set what you need: 0 (or NULL) means the default
 * given in brackets. */
typedef struct replicate_shipper_options {
  loom_store *store;              /* required: the primary's store, for
                                     its position and base images */
  replicate_log *log;             /* required: the primary's replication
                                     log (its max_bytes is the cap) */
  const char *const *standby_urls;/* "http://host:port" or "https://...",
                                     a path prefix allowed (copied) */
  size_t standby_count;           /* at least 1, unless max_peers */
  size_t max_peers;               /* room for peers added at run time
                                     (replicate_shipper_add_peer): the
                                     most peers at once; with it,
                                     standby_count may be 0 (a cluster
                                     leader alone) [standby_count] */
  const char *token;              /* bearer token (copied), or NULL */
  const char *ca_file;            /* CA bundle for https (CURLOPT_CAINFO)
                                     [the system's]; verification is
                                     always on */
  const replicate_frame_key *frame_key; /* tag every frame, heartbeat and
                                     base image ("Authenticated frames";
                                     not copied: it must outlive the
                                     shipper) [NULL: untagged] */
  unsigned sync_count;            /* N standbys to wait for; 0: async
                                     (at most max_peers) */
  double sync_timeout_seconds;    /* [10] */
  replicate_sync_outcome on_sync_timeout; /* [REPLICATE_SYNC_FAIL] */
  double heartbeat_seconds;       /* idle standby heartbeat [1] */
  int zstd_level;                 /* frame compression [1] */
  double connect_timeout_seconds; /* [5] */
  double request_timeout_seconds; /* one frame request [30] */
  double base_stall_seconds;      /* a base upload with no progress for
                                     this long is abandoned [120] */
  double stall_seconds;           /* a request with no byte moving either
                                     way for this long shows the standby
                                     as stalled (it goes on until its
                                     timeout) [5] */
  double backoff_base_seconds;    /* [0.1] */
  double backoff_max_seconds;     /* [5] */
  double unauthorized_retry_seconds; /* [30] the longest wait between asks
                                       of a standby that answers 401 */
  uint64_t coalesce_max_pages;    /* pages in one merged piece [2048] */
  uint64_t coalesce_max_bytes;    /* frame bytes merged into one piece
                                     [32 MiB] */
  uint64_t cache_bytes;           /* recent frames kept in memory for
                                     streaming (older ones are read from
                                     the log) [64 MiB] */
  replicate_ship_log_fn log_fn;   /* optional diagnostics */
  void *log_ctx;
} replicate_shipper_options;

typedef struct replicate_shipper replicate_shipper;

/*
 * replicate_shipper_start: check the options, reconcile the log with the
 * store (see START), and start the shipping thread, which at once asks
 * every standby its position. Call it from the thread that owns the store,
 * before the next save. The store and the log must outlive the shipper.
 * Errors: REPLICATE_EINVAL (a required option missing, a URL that is not
 * http:// or https://, a token with a control character, sync_count above
 * standby_count, a negative duration), REPLICATE_ECURL, ENOMEM, errno
 * values (the thread), the errors of replicate_log_reset/read.
 */
int replicate_shipper_start(const replicate_shipper_options *opt,
                            replicate_shipper **out);

/*
 * replicate_shipper_on_commit: call from the loom's commit hook (l and c
 * as the hook received them). Encodes the frame, hands it to the shipping
 * thread, appends it durably to the replication log, and in sync mode waits
 * until sync_count standbys answered 200 with a received seq at or past
 * it, up to sync_timeout_seconds. The commit stands locally whatever this
 * returns (loom_save() returns it).
 * Only a received position known to be in this primary's history counts
 * (one that accepted our frames, or that the next frame follows).
 * Returns 0, REPLICATE_ESYNC_TIMEOUT (sync mode, REPLICATE_SYNC_FAIL),
 * REPLICATE_EFENCED (after fencing; the frame is still logged), or the
 * errors of replicate_frame_encode_commit (the frame is then not shipped;
 * standbys that need it later get a base image). A failed log append
 * (ENOSPC...) is not an error of the save: the log is a cache of the
 * store; the frame still ships from memory while the shipper keeps it,
 * a standby that needs it later gets a base image, the log starts afresh
 * at the next commit, and log_fn says when appends start failing and
 * when they work again.
 */
int replicate_shipper_on_commit(replicate_shipper *shipper, loom *l,
                                const loom_commit *c);

/* Replace the bearer token (NULL: none); used from the next request on. A
 * standby that was unauthorized is asked again at once. Errors:
 * REPLICATE_EINVAL (a control character), ENOMEM. */
int replicate_shipper_set_token(replicate_shipper *shipper, const char *token);

/* The URL where this primary serves trees and pages (its --listen or
 * --advertise), sent to the standbys with every request as
 * X-Loomship-Upstream (DESIGN section 4): a standby repairs from it
 * (docs/INTEGRITY.md section 5). NULL: none. From the next request on.
 * Errors: REPLICATE_EINVAL (not http:// or https://, or a space or control
 * character), ENOMEM. */
int replicate_shipper_set_upstream(replicate_shipper *shipper, const char *url);

/*
 * Peers that come and go (a cluster leader ships to every member found in
 * etcd, and members join and leave while it runs):
 *
 * replicate_shipper_add_peer: ship to url too, from the shipping thread's
 * next turn (within milliseconds): it is asked its position, then sent
 * frames or a base image like any configured standby. Errors:
 * REPLICATE_EINVAL (not http:// or https://, a control character or
 * space, REPLICATE_URL_MAX bytes or more), EEXIST (already a peer, or
 * queued to be one), ENOSPC (max_peers peers already), ENOMEM.
 *
 * replicate_shipper_remove_peer: stop shipping to url from the shipping
 * thread's next turn: its request in flight is abandoned, it leaves
 * status, and sync waits and drains stop counting it (a sync wait then
 * needs sync_count of the peers left). Errors: REPLICATE_EINVAL, ENOENT
 * (not a peer, or queued to be removed), ENOMEM.
 *
 * Both may be called from any thread, also while on_commit waits. Peers
 * keep no fixed order in status: removing one moves the last into its
 * place.
 */
int replicate_shipper_add_peer(replicate_shipper *shipper, const char *url);
int replicate_shipper_remove_peer(replicate_shipper *shipper, const char *url);

/* ---------------------------------------------------------------------- */
/* Status (GET /v1/status, /metrics)
 *
 * A *peer* is a standby as this primary sees it: one per configured
 * standby URL. (The word "standby" alone names a node that receives; the
 * status document and the metrics keep their public names, "standbys" and
 * loomship_standby_*.) http/ shows these types as they are. */

typedef enum replicate_peer_state {
  REPLICATE_PEER_STREAMING = 0,    /* caught up, frames flow as they commit */
  REPLICATE_PEER_CATCHING_UP = 1,  /* behind, resending from the replication
                                      log */
  REPLICATE_PEER_BASE_SYNC = 2,    /* receiving a full base image */
  REPLICATE_PEER_UNREACHABLE = 3,  /* connection failed or timed out */
  REPLICATE_PEER_UNAUTHORIZED = 4, /* it refused our token (401) */
  REPLICATE_PEER_FENCED = 5,       /* it has a newer epoch: this primary
                                      was fenced by a promotion */
  REPLICATE_PEER_STALLED = 6,      /* a request on an open connection got
                                      no byte back for stall_seconds */
  REPLICATE_PEER_REFUSED = 7,      /* an HTTP error answer without a state
                                      of its own (400, 413 on a base image,
                                      503, 507, other 5xx): last_error says
                                      the code and the standby's text */
  REPLICATE_PEER_DIVERGED = 8      /* another history, another checksum at a
                                      seq it holds, or ahead of this primary:
                                      nothing is sent that would move it */
} replicate_peer_state;

/* The name status and metrics show (part of the public contract, never
 * changed): "streaming", "catching_up", "base_sync", "unreachable",
 * "unauthorized", "fenced", "stalled", "refused", "diverged"; "unknown"
 * outside the enum. */
const char *replicate_peer_state_name(replicate_peer_state state);

/* ---------------------------------------------------------------------- */
/* Durations */

/*
 * A duration histogram, as Prometheus shows one: counts[i] is the number
 * of observations in (bounds[i-1], bounds[i]] seconds (not cumulative),
 * counts[REPLICATE_DURATION_BUCKETS] those above the last bound; count and
 * sum_seconds over all. Zero-initialise; replicate_duration_observe adds
 * one observation (the caller serialises access). Used for a standby's
 * group applies and receive-log appends (receiver.h) and the example
 * application's saves.
 */
#define REPLICATE_DURATION_BUCKETS 15
extern const double replicate_duration_bounds[REPLICATE_DURATION_BUCKETS]; /* 100 us .. 10 s */
typedef struct replicate_duration_histogram {
  uint64_t counts[REPLICATE_DURATION_BUCKETS + 1];
  uint64_t count;
  double sum_seconds;
} replicate_duration_histogram;

void replicate_duration_observe(replicate_duration_histogram *h, double seconds);

/* What a failed request to a standby came to, for the per-kind error
 * counters of its status (metrics: loomship_standby_errors_total{kind}). */
typedef enum replicate_peer_error_kind {
  REPLICATE_PEER_ERROR_UNREACHABLE = 0, /* no connection, or it timed out */
  REPLICATE_PEER_ERROR_STALLED = 1,     /* no byte back on an open connection */
  REPLICATE_PEER_ERROR_REFUSED = 2,     /* an HTTP error answer (400, 503, 507...) */
  REPLICATE_PEER_ERROR_UNAUTHORIZED = 3,/* 401 or 403: our token refused */
  REPLICATE_PEER_ERROR_LOCAL = 4,       /* on this side (reading the log, memory) */
  REPLICATE_PEER_ERROR_KINDS = 5
} replicate_peer_error_kind;

/* The kind's name in metrics: "unreachable", "stalled", "refused",
 * "unauthorized", "local" (a public contract). */
const char *replicate_peer_error_kind_name(replicate_peer_error_kind kind);

#define REPLICATE_URL_MAX 512
#define REPLICATE_ERROR_MAX 256

/* One peer, as replicate_shipper_status() copies it out. */
typedef struct replicate_peer_status {
  char url[REPLICATE_URL_MAX];      /* as configured (truncated if longer) */
  replicate_peer_state state;
  const char *state_name;           /* replicate_peer_state_name(state) */
  uint64_t sent_seq;                /* newest seq sent (0: none yet) */
  uint64_t received_seq;            /* newest seq it holds durably, as last
                                       heard */
  uint64_t applied_seq;             /* newest seq in its image, as heard */
  uint64_t received_epoch;
  uint64_t lag_frames;              /* commits it has not applied */
  uint64_t lag_bytes;               /* frame bytes it has not applied */
  double lag_seconds;               /* age of the oldest commit it has not
                                       applied; 0 when it has everything */
  int64_t last_reply_at_ns;         /* CLOCK_REALTIME ns of its last
                                       answer, which the positions and lag
                                       above are as of; 0 when none yet */
  char last_error[REPLICATE_ERROR_MAX]; /* "" when none (JSON null) */
  int64_t last_error_at;            /* unix seconds; 0 when none */
  int64_t last_error_at_ns;         /* CLOCK_REALTIME ns; 0 when none */
  uint64_t bytes_raw;               /* page bytes shipped, uncompressed */
  uint64_t bytes_wire;              /* request body bytes shipped */
  uint64_t frames_sent;             /* commits shipped (a merged piece
                                       counts its commits) */
  uint64_t requests;                /* requests answered */
  uint64_t heartbeats_sent;
  uint64_t coalesced_sent;          /* merged pieces */
  uint64_t base_images_sent;        /* base images acknowledged */
  uint64_t failures;                /* failed requests */
  uint64_t verified_seq;            /* highest seq at which the checksum
                                       the standby computed itself from its
                                       image equalled this primary's (0:
                                       none yet) */
  uint64_t checksum_mismatches;     /* answers whose computed checksum
                                       differed from ours at its seq (each
                                       makes the standby diverged) */
  uint64_t errors[REPLICATE_PEER_ERROR_KINDS]; /* the same by kind (their
                                       sum is failures) */
} replicate_peer_status;

/*
 * replicate_shipper_status: copy the state of the first min(cap, n)
 * peers into array (in configuration order) and set *n to their
 * number. Thread-safe; lag is computed at the call from the positions last
 * heard (heartbeats refresh them) and the commits this shipper saw: for
 * commits older than its start (or than the newest 2^18) lag in bytes and
 * seconds is a lower bound.
 */
void replicate_shipper_status(replicate_shipper *shipper,
                              replicate_peer_status *array, size_t cap,
                              size_t *n);

typedef struct replicate_shipper_summary {
  uint64_t epoch;                   /* the primary's */
  uint64_t latest_seq;              /* newest frame committed */
  int64_t latest_commit_time_ns;
  bool fenced;
  bool sync_degraded;               /* sync mode: a save timed out and
                                       fewer than sync_count standbys hold
                                       the latest frame since (DEGRADE:
                                       saves run asynchronously; FAIL:
                                       saves return ESYNC_TIMEOUT) */
  int64_t sync_degraded_since_ns;   /* CLOCK_REALTIME when it became
                                       degraded; 0 when not degraded */
  unsigned sync_count;
  size_t standby_count;
} replicate_shipper_summary;

/* Thread-safe. */
void replicate_shipper_get_summary(replicate_shipper *shipper,
                                   replicate_shipper_summary *out);

/* ---------------------------------------------------------------------- */
/* Stopping */

/*
 * replicate_shipper_drain: wait, up to timeout_seconds, until every
 * standby has received everything committed (like PostgreSQL's smart
 * shutdown waiting for its WAL senders). Returns true when that was
 * reached; false on timeout, at once once the primary is fenced, and as
 * soon as every standby still missing something is one that waiting will
 * not help: unreachable, stalled or refused (four failed attempts in a
 * row, about 1.5 s: one reset connection does not count), unauthorized,
 * fenced or diverged.
 */
bool replicate_shipper_drain(replicate_shipper *shipper,
                             double timeout_seconds);

/* Stop the shipping thread (requests in flight are abandoned), free
 * everything. NULL is allowed. */
void replicate_shipper_stop(replicate_shipper *shipper);

/* ---------------------------------------------------------------------- */
/* Reading an image stream
 *
 * The image stream of loom.h (a LOOM_STREAM_HEADER-byte header, then the
 * image's pages in order: GET /v1/backup, PUT /v1/base) arrives in pieces
 * of any size. The reader gathers the header, then one page at a time, and
 * stops at each so the caller can act on it:
 *
 *     replicate_stream_reader r;
 *     if (replicate_stream_reader_init(&r)) ...         ENOMEM
 *     for each piece (data, len):
 *       while (len > 0)
 *         switch (replicate_stream_reader_take(&r, &data, &len)) {
 *         case REPLICATE_STREAM_MORE:        all of the piece taken
 *         case REPLICATE_STREAM_HEADER:      r.position, r.lineage decoded
 *         case REPLICATE_STREAM_BAD_HEADER:  r.header_rc: LOOM_ECORRUPT or
 *                                            LOOM_EVERSION; stop
 *         case REPLICATE_STREAM_PAGE:        r.page holds page r.pages - 1
 *         case REPLICATE_STREAM_TRAILING:    bytes after the last page
 *                                            (left in data); stop
 *         }
 *     replicate_stream_reader_complete(&r)      the whole stream came?
 *     replicate_stream_reader_free(&r);
 *
 * BAD_HEADER and TRAILING repeat on every later call (nothing is taken);
 * replicate_stream_reader_reset() starts over at byte 0 (a download that
 * restarted), keeping the page buffer. The reader checks only the header:
 * the pages are checked where they are committed (the store checks a base
 * patch against the position's checksum). Owned by one thread at a time.
 */
typedef enum replicate_stream_event {
  REPLICATE_STREAM_MORE = 0,
  REPLICATE_STREAM_HEADER,
  REPLICATE_STREAM_BAD_HEADER,
  REPLICATE_STREAM_PAGE,
  REPLICATE_STREAM_TRAILING
} replicate_stream_event;

typedef struct replicate_stream_reader {
  uint8_t header[LOOM_STREAM_HEADER];
  size_t header_have;
  int header_rc;              /* loom_stream_header_decode's result */
  loom_position position;     /* from the header */
  loom_lineage lineage;       /* from the header */
  uint8_t *page;              /* LOOM_PAGE_SIZE bytes, owned by the reader */
  size_t page_have;
  uint64_t pages;             /* whole pages delivered so far */
} replicate_stream_reader;

/* 0 or ENOMEM. */
int replicate_stream_reader_init(replicate_stream_reader *r);
void replicate_stream_reader_reset(replicate_stream_reader *r);
/* Takes from the input (data and len, advancing both) up to the next
 * event. */
replicate_stream_event replicate_stream_reader_take(replicate_stream_reader *r,
                                                    const uint8_t **data,
                                                    size_t *len);
/* The header was good and exactly its pages followed. */
bool replicate_stream_reader_complete(const replicate_stream_reader *r);
void replicate_stream_reader_free(replicate_stream_reader *r);
/* The stream's length in bytes for an image at pos. */
uint64_t replicate_stream_length(const loom_position *pos);

#ifdef __cplusplus
}
#endif
#endif /* REPLICATE_H */
