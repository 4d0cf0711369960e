/*
 * archive_internal.h: what the archive's files share (archive.h is the
 * manual): the object codec (archive_object.c), the keys objects live
 * under, and the opened archive. Byte tables: docs/ARCHIVE.md.
 */
#ifndef REPLICATE_ARCHIVE_INTERNAL_H
#define REPLICATE_ARCHIVE_INTERNAL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#include "archive.h"
#include "objstore.h"
#include "replicate.h"

#define ARC_MAGIC "LOOMARC1"
#define ARC_VERSION 1u
#define ARC_HEADER 96u
#define ARC_OFF_CHECKSUM 88u
#define ARC_NONCE 12u
#define ARC_TAG 16u
#define ARC_ID_SIZE 16u
#define ARC_KEY_SIZE 32u
#define ARC_FLAG_ENCRYPTED 0x1u
#define ARC_FLAG_ZSTD 0x2u
#define ARC_MAX_OBJECT ((size_t)8 << 30) /* refused above (a get's limit) */

typedef enum arc_kind {
  ARC_ID = 1,      /* "id": the archive's identity */
  ARC_EPOCH = 2,   /* "epochs/E": an epoch's branch point */
  ARC_HEAD = 3,    /* "e/E/head": the newest position uploaded at E */
  ARC_BASE = 4,    /* "e/E/b/SEQ.TIME.KEY": an image */
  ARC_SEGMENT = 5, /* "e/E/s/FIRST-LAST.TIME.KEY": single-commit frames */
  ARC_GAP = 6,     /* "e/E/g/FIRST-LAST.KEY": seqs the archive does not hold */
  ARC_WRITER = 7   /* "e/E/writer": who writes at E */
} arc_kind;

/* The keys of --archive-key-file: the current one first. */
typedef struct arc_keys {
  unsigned count; /* 0: plaintext archive */
  uint8_t key[2][ARC_KEY_SIZE];
  uint32_t id[2]; /* first 4 bytes of SHA-256(key), little-endian */
} arc_keys;

typedef struct arc_header {
  arc_kind kind;
  uint8_t archive_id[ARC_ID_SIZE];
  uint64_t epoch, first_seq, last_seq;
  uint32_t key_id;     /* 0: plaintext */
  uint32_t flags;      /* ARC_FLAG_* */
  uint64_t stored_len; /* payload bytes as stored (tag included) */
  uint8_t nonce[ARC_NONCE];
} arc_header;

/* What a key names (parsed from the key alone, before reading it). */
typedef struct arc_name {
  arc_kind kind;
  uint64_t epoch, first_seq, last_seq;
  int64_t time_ns; /* BASE, SEGMENT: the last commit's time */
  uint32_t key_id; /* BASE, SEGMENT, GAP: the key it is sealed with */
} arc_name;

/* The opened archive: the store, the keys, the archive id once known. */
struct replicate_archive {
  objstore *store;
  const struct loom_io *io; /* under a restore's directory (NULL: POSIX) */
  arc_keys keys;
  bool have_id;
  uint8_t id[ARC_ID_SIZE];
  uint64_t restore_memory; /* replicate_archive_restore_memory */
  char *url;                        /* as opened (for another store) */
  objstore_options store_options;   /* as opened; strings the caller's */
  char error[768];
};

int arc_keys_load(const char *path, arc_keys *out, char *err, size_t errlen);

/* Builds the object of h's kind/epoch/seqs around payload[0, len):
 * compressed if h->flags has ARC_FLAG_ZSTD, encrypted with keys' current
 * key when keys->count > 0 (a fresh nonce). Fills the rest of h. */
int arc_seal(const arc_keys *keys, arc_header *h, const void *payload,
             size_t len, replicate_buf *out);

/* A payload read in pieces: fills buf with its bytes [off, off + len).
 * 0, or an error code that the caller passes on. */
typedef int (*arc_read_fn)(void *ctx, uint64_t off, void *buf, size_t len);
#define ARC_SEAL_PIECE ((size_t)8 << 20) /* arc_seal_read's reads */

/* arc_seal of a payload of len bytes read through read, ARC_SEAL_PIECE
 * bytes at a time, each compressed as it comes (ARC_FLAG_ZSTD is set):
 * out holds the object, never the payload whole (a base: its compressed
 * size, not the image's). */
int arc_seal_read(const arc_keys *keys, arc_header *h, arc_read_fn read,
                  void *ctx, uint64_t len, replicate_buf *out);

/* arc_seal_read into fd, an empty file open for reading and writing: the
 * object is written there (compressed, then encrypted and summed a 1 MiB
 * window at a time through reads and writes of the file, the header
 * last), fdatasync'ed, then mapped read-only: out->data is that mapping,
 * out->len and out->cap its size. The process holds a piece being
 * compressed, not the object; its pages are the page cache's. A write
 * that fails is that errno, and a write of the compressed payload that
 * would leave fd's file system less than reserve bytes free (0: no check)
 * is ENOSPC; nothing is ever stored through the mapping. Free out with arc_sealed_free(out, fd),
 * then close fd. */
int arc_seal_read_file(const arc_keys *keys, arc_header *h, arc_read_fn read,
                       void *ctx, uint64_t len, int fd, uint64_t reserve,
                       replicate_buf *out);
/* Frees an object sealed by arc_seal_read (fd < 0) or arc_seal_read_file
 * into fd: its buffer, or its mapping. */
void arc_sealed_free(replicate_buf *obj, int fd);

/* Checks obj[0, len) (size, magic, version, checksum, archive id when
 * archive_id is non-NULL, key, tag) and decrypts/decompresses its payload
 * into *payload. Errors: REPLICATE_EARCHIVE_OBJECT, _FOREIGN, _KEY,
 * ENOMEM. */
int arc_unseal(const arc_keys *keys, const uint8_t *archive_id, const void *obj,
               size_t len, arc_header *h, replicate_buf *payload);

/* Keys: arc_key_* write into buf (ARC_KEY_MAX bytes). */
#define ARC_KEY_MAX 96u
void arc_key_epoch(char *buf, uint64_t epoch);
void arc_key_head(char *buf, uint64_t epoch);
void arc_key_writer(char *buf, uint64_t epoch);
void arc_key_base(char *buf, uint64_t epoch, uint64_t seq, int64_t time_ns,
                  uint32_t key_id);
void arc_key_segment(char *buf, uint64_t epoch, uint64_t first, uint64_t last,
                     int64_t time_ns, uint32_t key_id);
void arc_key_gap(char *buf, uint64_t epoch, uint64_t first, uint64_t last,
                 uint32_t key_id);
/* The key id new objects are sealed with: 0 without a key. */
static inline uint32_t arc_keys_current(const arc_keys *k)
{
  return k->count ? k->id[0] : 0;
}
void arc_key_prefix(char *buf, uint64_t epoch); /* "e/E/" */
/* 0 and *out, or REPLICATE_EARCHIVE_OBJECT (not an archive key). */
int arc_key_parse(const char *key, arc_name *out);

/* Sets a->error from a format; returns rc. */
int arc_fail(replicate_archive *a, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Reads and checks the object under key: a header that disagrees with
 * the key (kind, epoch, seqs) is REPLICATE_EARCHIVE_FOREIGN; every error
 * names the key in a->error. The archive id must be known (arc_load_id). */
int arc_get(replicate_archive *a, const char *key, arc_header *h,
            replicate_buf *payload);
/* An object read in pieces, for one too large to hold (a restore's base):
 * arc_pieces_open reads its first piece (ranged GETs of piece bytes, from
 * the object's size in the listing) and makes the checks its header
 * allows (1, 2, 4, 5, 7); each arc_pieces_next replaces *out (freed) with
 * the next piece of the stored payload, decrypted (len 0: the end, after
 * checks 3 and 6 passed: the XXH3 over everything read, the tag). Every
 * error is REPLICATE_EARCHIVE_* or the store's, with arc_pieces_error
 * naming the object; a bad object found at the end has already handed out
 * its bytes: the caller discards what it made of them. Uses a's store and
 * keys and nothing else of a (another thread may use it meanwhile, not
 * the store). */
typedef struct arc_pieces arc_pieces;
int arc_pieces_open(replicate_archive *a, objstore *store, const char *key,
                    uint64_t size, size_t piece, arc_header *h,
                    arc_pieces **out);
/* Another store on the archive's URL and options (objstore_open: no
 * request sent), for a thread of its own. */
int arc_store_open_another(const replicate_archive *a, objstore **out);
int arc_pieces_next(arc_pieces *p, replicate_buf *out);
const char *arc_pieces_error(const arc_pieces *p);
void arc_pieces_close(arc_pieces *p);
/* The object under key (size bytes) read to its end in pieces, each
 * dropped once hashed (and decrypted): 0 when every check passes, else the
 * first refusal in a whole read's order (the checksum before the archive
 * id, the key and the key's name; then the tag) with a->error naming the
 * object. For a refusal that must not hold the object in memory. */
int arc_pieces_verify(replicate_archive *a, objstore *store, const char *key,
                      uint64_t size);
/* A restore's base read ahead (archive_stream.c): arc_ahead_begin starts
 * a thread that opens the object key (size bytes, from the listing) on a
 * store of its own (arc_pieces_open) and reads its pieces up to
 * ARC_AHEAD_DEPTH ahead, while the restore reads its segments on a's
 * store. arc_ahead_header waits for the open: 0 and the header, or its
 * error. arc_ahead_next replaces *out (freed) with the next piece (len 0:
 * the end, every check passed) or returns the reader's error
 * (arc_ahead_error names the object). Without a thread (pthread_create
 * failed) the same happens when asked. arc_ahead_stop cancels a request
 * in progress, joins the thread, closes its store. */
#define ARC_PIECE_BYTES ((size_t)4 << 20) /* a restore's ranged GETs */
#define ARC_AHEAD_DEPTH 4u
typedef struct arc_ahead arc_ahead;
int arc_ahead_begin(replicate_archive *a, const char *key, uint64_t size,
                    arc_ahead **out);
int arc_ahead_header(arc_ahead *ah, arc_header *h);
int arc_ahead_next(arc_ahead *ah, replicate_buf *out);
const char *arc_ahead_error(const arc_ahead *ah);
void arc_ahead_stop(arc_ahead *ah);
/* Puts an object (sealed with a's keys and id). */
int arc_put(replicate_archive *a, arc_header *h, const char *key,
            const void *payload, size_t len, unsigned flags);
/* Seals an object whose payload is read through read (arc_seal_read, or
 * arc_seal_read_file into fd, keeping reserve bytes free, when fd >= 0)
 * with a's keys and id, into *obj for arc_put_sealed; free it with
 * arc_sealed_free(obj, fd). */
int arc_seal_object(replicate_archive *a, arc_header *h, const char *key,
                    arc_read_fn read, void *ctx, uint64_t len, int fd,
                    uint64_t reserve, replicate_buf *obj);
/* Puts an object sealed by arc_seal_object. */
int arc_put_sealed(replicate_archive *a, const char *key,
                   const replicate_buf *obj, unsigned flags);
/* Reads e/E/head: *found false (and 0) when there is none. The head's
 * payload: seq, checksum, pages, commit time (8 bytes each). */
int arc_get_head(replicate_archive *a, uint64_t epoch, bool *found,
                 loom_position *out);
/* Reads "id" into a->id: REPLICATE_ESTORE_MISSING when there is none. */
int arc_load_id(replicate_archive *a);

/* Little-endian fields. */
static inline void arc_put64(uint8_t *p, uint64_t v)
{
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}
/* A restore's image, streamed (archive_image.c): the frames up to the
 * target taken first (copied, indexed by page), then the base's stream
 * decompressed chunk by chunk into the new directory's image with the
 * frames' versions of each chunk's pages applied. Memory: the frames, the
 * base's stored bytes, two chunks and the hash table, not the image. */
typedef struct arc_version arc_version;
typedef struct arc_frame_rec arc_frame_rec;
typedef struct arc_image {
  replicate_archive *a;  /* errors name objects in a->error */
  arc_frame_rec *frames; /* in seq order */
  size_t nframes, frames_cap;
  arc_version *versions; /* sorted by page, frame, op once the base is open */
  size_t nversions, versions_cap, next_version;
  char (*objects)[ARC_KEY_MAX]; /* the segments' keys */
  size_t nobjects, objects_cap;
  struct arc_run_block *blocks; /* the frames' pages, as runs */
  uint64_t frame_bytes;  /* the blocks' bytes */
  loom_position base;    /* the base's stream header */
  loom_position pos;     /* the target: the last frame's after, or base */
  loom_lineage lineage;
  uint64_t max_pages;    /* the most pages at any seq on the way */
  uint64_t base_sum;     /* the base's page hashes, as read */
  struct arc_ahead *src; /* the base's stored payload, read ahead */
  replicate_buf piece;    /* the piece being decompressed */
  bool src_done, zstd;
  size_t in_pos, zstd_left;
  struct ZSTD_DCtx_s *dctx;
  char base_key[ARC_KEY_MAX];
} arc_image;

void arc_image_init(arc_image *img, replicate_archive *a);
/* Takes the next frame (read from the segment key), after the ones taken:
 * a commit frame (REPLICATE_EKIND) starting where the last one ended
 * (REPLICATE_EPOSITION), its pages below its after pages; its pages are
 * copied. ENOMEM. The caller names key in its error. */
int arc_image_add_frame(arc_image *img, const replicate_frame *f,
                        const char *key);
/* Takes src (the base's stored payload read ahead: zstd-compressed when
 * zstd; stopped by arc_image_free), reads the stream header and checks
 * that the first frame taken starts at it: 0, REPLICATE_EARCHIVE_OBJECT,
 * REPLICATE_EPOSITION, the store's errors, ENOMEM, with a->error naming
 * the object. Then img->pos is the target's position. */
int arc_image_open_base(arc_image *img, struct arc_ahead *src, bool zstd,
                        const char *key);
/* Streams the image at img->pos into the new directory dir
 * (loom_store_create_from_pages): the base's pages decompressed and each
 * frame's versions applied and checked per chunk (archive_image.c S3,
 * S4). A refusal (REPLICATE_EPAGE_HASH, _EAFTER_CHECKSUM, _EPOSITION,
 * _EARCHIVE_OBJECT) names the object in a->error; no meta is written. */
int arc_image_write(arc_image *img, const char *dir, const struct loom_io *io);
/* The bytes the restore holds (frames, index, stored base, the importer's
 * chunks and hash table): what a restore reports as its memory. */
uint64_t arc_image_memory(const arc_image *img);
/* Stops the thread reading the base (before the caller uses the store
 * again). */
void arc_image_stop_reading(arc_image *img);
void arc_image_free(arc_image *img);

static inline uint64_t arc_get64(const uint8_t *p)
{
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}
static inline void arc_put32(uint8_t *p, uint32_t v)
{
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint32_t arc_get32(const uint8_t *p)
{
  return (uint32_t)arc_get64((const uint8_t[8]){p[0], p[1], p[2], p[3]});
}

#endif
