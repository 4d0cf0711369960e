/*
 * archive_object.c: one archived object, sealed and unsealed (byte table:
 * docs/ARCHIVE.md "Objects"), the keys objects live under, and the key
 * file of --archive-key-file.
 *
 * SEALING, in this order (unsealing checks the same, backwards):
 *   1. the payload is zstd-compressed when the kind asks for it;
 *   2. the header is filled in: kind, archive id, epoch, seqs, key id, the
 *      stored length, and with a key a fresh random 12-byte nonce;
 *   3. with a key, the payload is encrypted with AES-256-GCM under the
 *      current key, header bytes [0, 88) as associated data, and the
 *      16-byte tag appended: the header cannot be changed either;
 *   4. XXH3-64 over header bytes [0, 88) and the stored payload goes to
 *      offset 88: damage is found without the key, tampering with it.
 * There is no path from a configured key to a plaintext object: seal
 * encrypts whenever keys->count > 0, and the archive refuses to open with
 * a key file it cannot use (arc_keys_load).
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <xxhash.h>
#include <zstd.h>

#include "archive_internal.h"

/* ---------------------------------------------------------------------- */
/* The key file: one or two lines of 64 hex digits (32 bytes), the current
 * key first, the previous one second. */

static int hex_key(const char *line, uint8_t out[ARC_KEY_SIZE])
{
  for (unsigned i = 0; i < ARC_KEY_SIZE; i++) {
    unsigned v;
    if (!isxdigit((unsigned char)line[2 * i]) ||
        !isxdigit((unsigned char)line[2 * i + 1]) ||
        sscanf(line + 2 * i, "%2x", &v) != 1)
      return -1;
    out[i] = (uint8_t)v;
  }
  return line[2 * ARC_KEY_SIZE] == '\0' ? 0 : -1;
}

static uint32_t key_id(const uint8_t key[ARC_KEY_SIZE])
{
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(key, ARC_KEY_SIZE, digest);
  uint32_t id = arc_get32(digest);
  return id ? id : 1; /* 0 means plaintext */
}

int arc_keys_load(const char *path, arc_keys *out, char *err, size_t errlen)
{
  memset(out, 0, sizeof *out);
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    snprintf(err, errlen, "--archive-key-file %s: %s", path, strerror(errno));
    return REPLICATE_EARCHIVE_KEY;
  }
  char line[256];
  int rc = 0, lineno = 0;
  while (rc == 0 && fgets(line, sizeof line, f) != NULL) {
    lineno++;
    size_t n = strlen(line);
    while (n > 0 && isspace((unsigned char)line[n - 1]))
      line[--n] = '\0';
    if (n == 0)
      continue;
    if (out->count == 2 || hex_key(line, out->key[out->count]) != 0) {
      snprintf(err, errlen,
               "--archive-key-file %s: line %d is not a key (each of at most "
               "two lines holds 64 hex digits: 32 bytes)",
               path, lineno);
      rc = REPLICATE_EARCHIVE_KEY;
      break;
    }
    out->id[out->count] = key_id(out->key[out->count]);
    out->count++;
  }
  fclose(f);
  if (rc == 0 && out->count == 0) {
    snprintf(err, errlen, "--archive-key-file %s: no key in it", path);
    rc = REPLICATE_EARCHIVE_KEY;
  }
  memset(line, 0, sizeof line);
  if (rc != 0)
    memset(out, 0, sizeof *out);
  return rc;
}

/* ---------------------------------------------------------------------- */
/* AES-256-GCM in place, in parts: gcm_begin with the associated data,
 * gcm_update over the data in order (EVP takes int lengths: in chunks),
 * gcm_end with the tag (made when encrypting, checked when decrypting),
 * which frees ctx whatever happened. */

static int gcm_begin(int enc, const uint8_t *key, const uint8_t *nonce,
                     const uint8_t *aad, size_t aad_len, EVP_CIPHER_CTX **out)
{
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  if (ctx == NULL)
    return ENOMEM;
  int outl;
  int ok = EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) &&
           EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, ARC_NONCE, NULL) &&
           EVP_CipherInit_ex(ctx, NULL, NULL, key, nonce, enc) &&
           EVP_CipherUpdate(ctx, NULL, &outl, aad, (int)aad_len);
  if (!ok) {
    EVP_CIPHER_CTX_free(ctx);
    return REPLICATE_EARCHIVE_OBJECT;
  }
  *out = ctx;
  return 0;
}

static int gcm_update(EVP_CIPHER_CTX *ctx, uint8_t *data, size_t len)
{
  int ok = 1, outl;
  for (size_t off = 0; ok && off < len;) {
    size_t chunk = len - off > (1u << 30) ? (1u << 30) : len - off;
    ok = EVP_CipherUpdate(ctx, data + off, &outl, data + off, (int)chunk);
    off += chunk;
  }
  return ok ? 0 : REPLICATE_EARCHIVE_OBJECT;
}

static int gcm_end(EVP_CIPHER_CTX *ctx, int enc, uint8_t tag[ARC_TAG])
{
  uint8_t none[16];
  int outl;
  int ok = enc || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, ARC_TAG, tag);
  ok = ok && EVP_CipherFinal_ex(ctx, none, &outl) > 0; /* (GCM: no bytes) */
  if (ok && enc)
    ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, ARC_TAG, tag);
  EVP_CIPHER_CTX_free(ctx);
  return ok ? 0 : REPLICATE_EARCHIVE_OBJECT;
}

/* The three over one buffer. */
static int gcm(int enc, const uint8_t *key, const uint8_t *nonce,
               const uint8_t *aad, size_t aad_len, uint8_t *data, size_t len,
               uint8_t tag[ARC_TAG])
{
  EVP_CIPHER_CTX *ctx;
  int rc = gcm_begin(enc, key, nonce, aad, aad_len, &ctx);
  if (rc == 0 && (rc = gcm_update(ctx, data, len)) != 0)
    EVP_CIPHER_CTX_free(ctx);
  return rc != 0 ? rc : gcm_end(ctx, enc, tag);
}

/* ---------------------------------------------------------------------- */
/* The header (docs/ARCHIVE.md "Objects"). */

static void header_write(uint8_t *p, const arc_header *h)
{
  memset(p, 0, ARC_HEADER);
  memcpy(p, ARC_MAGIC, 8);
  arc_put32(p + 8, ARC_VERSION);
  arc_put32(p + 12, (uint32_t)h->kind);
  memcpy(p + 16, h->archive_id, ARC_ID_SIZE);
  arc_put64(p + 32, h->epoch);
  arc_put64(p + 40, h->first_seq);
  arc_put64(p + 48, h->last_seq);
  arc_put32(p + 56, h->key_id);
  arc_put32(p + 60, h->flags);
  arc_put64(p + 64, h->stored_len);
  memcpy(p + 72, h->nonce, ARC_NONCE);
}

static void header_read(const uint8_t *p, arc_header *h)
{
  h->kind = (arc_kind)arc_get32(p + 12);
  memcpy(h->archive_id, p + 16, ARC_ID_SIZE);
  h->epoch = arc_get64(p + 32);
  h->first_seq = arc_get64(p + 40);
  h->last_seq = arc_get64(p + 48);
  h->key_id = arc_get32(p + 56);
  h->flags = arc_get32(p + 60);
  h->stored_len = arc_get64(p + 64);
  memcpy(h->nonce, p + 72, ARC_NONCE);
}

static int buf_reserve(replicate_buf *b, size_t cap)
{
  if (b->cap >= cap)
    return 0;
  uint8_t *p = realloc(b->data, cap);
  if (p == NULL)
    return ENOMEM;
  b->data = p;
  b->cap = cap;
  return 0;
}

/* 1: the payload, compressed into out after the header. */
static int stage_payload(const arc_header *h, const void *payload, size_t len,
                         replicate_buf *out)
{
  size_t bound = h->flags & ARC_FLAG_ZSTD ? ZSTD_compressBound(len) : len;
  if (buf_reserve(out, ARC_HEADER + bound + ARC_TAG) != 0)
    return ENOMEM;
  if (!(h->flags & ARC_FLAG_ZSTD)) {
    if (len > 0)
      memcpy(out->data + ARC_HEADER, payload, len);
    out->len = ARC_HEADER + len;
    return 0;
  }
  size_t n = ZSTD_compress(out->data + ARC_HEADER, bound, payload, len, 3);
  if (ZSTD_isError(n))
    return REPLICATE_ECOMPRESS;
  out->len = ARC_HEADER + n;
  return 0;
}

/* out's capacity at least need, doubling (a payload compressed as it is
 * read grows its object by what each piece adds). */
static int buf_grow(replicate_buf *b, size_t need)
{
  return need <= b->cap ? 0 : buf_reserve(b, need > 2 * b->cap ? need : 2 * b->cap);
}

/* Where stage_read puts the compressed payload: into out after the
 * header (fd < 0), or into the file fd at offset ARC_HEADER + written,
 * out then being only the staging window of each write. */
typedef struct seal_sink {
  replicate_buf *out;
  int fd;
  uint64_t written;
  uint64_t reserve; /* file: bytes its file system keeps free */
} seal_sink;

#define SEAL_FILE_WINDOW ((size_t)1 << 20)

/* The room the next zstd call writes into (ARC_TAG kept free behind it). */
static int sink_window(seal_sink *k, ZSTD_outBuffer *o)
{
  replicate_buf *out = k->out;
  int rc = k->fd < 0 ? buf_grow(out, out->len + ZSTD_CStreamOutSize() + ARC_TAG)
                     : buf_reserve(out, SEAL_FILE_WINDOW + ARC_TAG);
  if (rc != 0)
    return rc;
  if (k->fd >= 0)
    out->len = 0;
  *o = (ZSTD_outBuffer){out->data + out->len, out->cap - out->len - ARC_TAG, 0};
  return 0;
}

/* All of buf[0, n) at off of fd, written (or read: a short read is the
 * file's end, EIO): 0, or why not (a short write that cannot go on is
 * ENOSPC's or EIO). */
static int sink_io(bool write, int fd, uint8_t *buf, size_t n, off_t off)
{
  for (size_t done = 0; done < n;) {
    ssize_t r = write ? pwrite(fd, buf + done, n - done, off + (off_t)done)
                      : pread(fd, buf + done, n - done, off + (off_t)done);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return r < 0 ? errno : EIO;
    done += (size_t)r;
  }
  return 0;
}

static int sink_write(int fd, const void *buf, size_t n, off_t off)
{
  return sink_io(true, fd, (uint8_t *)(uintptr_t)buf, n, off);
}

/* ENOSPC when n more bytes in fd would leave its file system less than
 * reserve bytes free (the node's own files need them), else 0 (also when
 * the file system does not say). */
static int file_room(int fd, size_t n, uint64_t reserve)
{
  struct statvfs v;
  uint64_t avail;
  if (reserve == 0 || fstatvfs(fd, &v) != 0)
    return 0;
  if (__builtin_mul_overflow((uint64_t)v.f_bavail, (uint64_t)v.f_frsize, &avail))
    avail = UINT64_MAX; /* (a file system that says "unlimited") */
  return avail >= reserve && avail - reserve >= n ? 0 : ENOSPC;
}

/* The window's n new bytes taken: kept in out, or written to the file. */
static int sink_take(seal_sink *k, size_t n)
{
  if (k->fd < 0) {
    k->out->len += n;
    return 0;
  }
  int rc = file_room(k->fd, n, k->reserve);
  if (rc == 0)
    rc = sink_write(k->fd, k->out->data, n, (off_t)(ARC_HEADER + k->written));
  k->written += n;
  return rc;
}

/* 1, for a payload read piece by piece: compressed (one zstd frame, its
 * content size in the frame's header, as ZSTD_compress makes it) after
 * the header as each piece comes, so that neither out nor the file holds
 * the payload whole. */
static int stage_read(arc_read_fn read, void *ctx, uint64_t len,
                      seal_sink *sink)
{
  ZSTD_CCtx *cc = ZSTD_createCCtx();
  uint8_t *piece = malloc(ARC_SEAL_PIECE);
  int rc = cc && piece ? 0 : ENOMEM;
  if (rc == 0 &&
      (ZSTD_isError(ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, 3)) ||
       ZSTD_isError(ZSTD_CCtx_setPledgedSrcSize(cc, len))))
    rc = REPLICATE_ECOMPRESS;
  sink->out->len = ARC_HEADER;
  for (uint64_t off = 0; rc == 0;) {
    size_t n = len - off < ARC_SEAL_PIECE ? (size_t)(len - off) : ARC_SEAL_PIECE;
    if (n > 0)
      rc = read(ctx, off, piece, n);
    off += n;
    bool last = off == len;
    ZSTD_inBuffer in = {piece, n, 0};
    for (bool done = false; rc == 0 && !done;) {
      ZSTD_outBuffer o;
      rc = sink_window(sink, &o);
      if (rc != 0)
        break;
      size_t left =
          ZSTD_compressStream2(cc, &o, &in, last ? ZSTD_e_end : ZSTD_e_continue);
      if (ZSTD_isError(left))
        rc = REPLICATE_ECOMPRESS;
      else
        rc = sink_take(sink, o.pos);
      done = last ? left == 0 : in.pos == in.size;
    }
    if (last)
      break;
  }
  free(piece);
  ZSTD_freeCCtx(cc);
  return rc;
}

/* 2: h's flags, key id, stored length and nonce for a body of body bytes
 * (compressed, not yet encrypted), and its header into p (the checksum at
 * ARC_OFF_CHECKSUM comes last: 4). */
static int seal_header(const arc_keys *keys, arc_header *h, uint64_t body,
                       uint8_t *p)
{
  bool enc = keys != NULL && keys->count > 0;
  h->flags = (h->flags & ARC_FLAG_ZSTD) | (enc ? ARC_FLAG_ENCRYPTED : 0);
  h->key_id = enc ? keys->id[0] : 0;
  h->stored_len = body + (enc ? ARC_TAG : 0);
  memset(h->nonce, 0, sizeof h->nonce);
  if (enc && RAND_bytes(h->nonce, ARC_NONCE) != 1)
    return REPLICATE_EARCHIVE_KEY;
  header_write(p, h);
  return 0;
}

/* 2-4: the header, the encryption and the checksum around the payload
 * staged in out after the header. */
static int seal_staged(const arc_keys *keys, arc_header *h, replicate_buf *out)
{
  size_t body = out->len - ARC_HEADER;
  int rc = seal_header(keys, h, body, out->data); /* 2 */
  if (rc != 0)
    return rc;
  if (h->flags & ARC_FLAG_ENCRYPTED) { /* 3 */
    rc = gcm(1, keys->key[0], h->nonce, out->data, ARC_OFF_CHECKSUM,
             out->data + ARC_HEADER, body, out->data + ARC_HEADER + body);
    if (rc != 0)
      return rc;
    out->len += ARC_TAG;
  }
  XXH3_state_t *st = XXH3_createState(); /* 4 */
  if (st == NULL)
    return ENOMEM;
  XXH3_64bits_reset(st);
  XXH3_64bits_update(st, out->data, ARC_OFF_CHECKSUM);
  XXH3_64bits_update(st, out->data + ARC_HEADER, out->len - ARC_HEADER);
  arc_put64(out->data + ARC_OFF_CHECKSUM, XXH3_64bits_digest(st));
  XXH3_freeState(st);
  return 0;
}

/* 2-4 for a body of body bytes staged in fd after the header, through
 * reads and writes of the file (never a store into a mapping of it: on a
 * full file system that copies on write, or any that allocates at the
 * first store into a page, that would be a SIGBUS where a write is
 * ENOSPC). Encryption reads, encrypts and writes back each window; the
 * checksum reads the stored payload as it goes; the header is written
 * last. (The rewrite takes no new space but where the file system copies
 * on write: there it may take up to the body's size out of the reserve
 * that the compression kept; its writes still fail with ENOSPC, not
 * worse. A check per window would refuse, on every other file system, a
 * base that left the reserve just met.) */
static int seal_file(const arc_keys *keys, arc_header *h, int fd, uint64_t body)
{
  uint8_t hdr[ARC_HEADER];
  int rc = seal_header(keys, h, body, hdr); /* 2 */
  bool enc = rc == 0 && (h->flags & ARC_FLAG_ENCRYPTED);
  EVP_CIPHER_CTX *gc = NULL;
  XXH3_state_t *st = XXH3_createState();
  uint8_t *window = malloc(SEAL_FILE_WINDOW);
  if (rc == 0 && (st == NULL || window == NULL))
    rc = ENOMEM;
  if (rc == 0 && enc) /* 3 */
    rc = gcm_begin(1, keys->key[0], h->nonce, hdr, ARC_OFF_CHECKSUM, &gc);
  if (rc == 0) { /* 4 */
    XXH3_64bits_reset(st);
    XXH3_64bits_update(st, hdr, ARC_OFF_CHECKSUM);
  }
  for (uint64_t off = 0; rc == 0 && off < body;) {
    size_t n = body - off < SEAL_FILE_WINDOW ? (size_t)(body - off) : SEAL_FILE_WINDOW;
    off_t at = (off_t)(ARC_HEADER + off);
    rc = sink_io(false, fd, window, n, at);
    if (rc == 0 && enc && (rc = gcm_update(gc, window, n)) == 0)
      rc = sink_write(fd, window, n, at);
    if (rc == 0)
      XXH3_64bits_update(st, window, n);
    off += n;
  }
  if (gc != NULL) {
    uint8_t tag[ARC_TAG];
    int end = gcm_end(gc, 1, tag); /* frees gc */
    if (rc == 0 && (rc = end) == 0 &&
        (rc = sink_write(fd, tag, ARC_TAG, (off_t)(ARC_HEADER + body))) == 0)
      XXH3_64bits_update(st, tag, ARC_TAG);
  }
  if (rc == 0) {
    arc_put64(hdr + ARC_OFF_CHECKSUM, XXH3_64bits_digest(st));
    rc = sink_write(fd, hdr, ARC_HEADER, 0);
  }
  /* On the disk before the PUT reads it back: a page whose writeback
   * failed could otherwise be dropped clean and read back stale, under a
   * checksum made before; and clean pages are what the kernel may drop. */
  if (rc == 0 && fdatasync(fd) != 0)
    rc = errno;
  free(window);
  XXH3_freeState(st);
  return rc;
}

int arc_seal(const arc_keys *keys, arc_header *h, const void *payload,
             size_t len, replicate_buf *out)
{
  int rc = stage_payload(h, payload, len, out); /* 1 */
  return rc != 0 ? rc : seal_staged(keys, h, out);
}

int arc_seal_read(const arc_keys *keys, arc_header *h, arc_read_fn read,
                  void *ctx, uint64_t len, replicate_buf *out)
{
  h->flags |= ARC_FLAG_ZSTD;
  seal_sink sink = {out, -1, 0, 0};
  int rc = stage_read(read, ctx, len, &sink); /* 1 */
  return rc != 0 ? rc : seal_staged(keys, h, out);
}

int arc_seal_read_file(const arc_keys *keys, arc_header *h, arc_read_fn read,
                       void *ctx, uint64_t len, int fd, uint64_t reserve,
                       replicate_buf *out)
{
  h->flags |= ARC_FLAG_ZSTD;
  replicate_buf window = {0};
  seal_sink sink = {&window, fd, 0, reserve};
  int rc = stage_read(read, ctx, len, &sink); /* 1 */
  replicate_buf_free(&window);
  if (rc == 0)
    rc = seal_file(keys, h, fd, sink.written); /* 2-4 */
  if (rc != 0)
    return rc;
  /* Mapped for reading only (the PUT's body): every byte of the file is
   * written and nobody else has it, so a read faults only where a read()
   * would fail (an I/O error reading a page back: a SIGBUS, as for any
   * mapped file). */
  size_t size = ARC_HEADER + (size_t)h->stored_len;
  void *map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED)
    return errno;
  *out = (replicate_buf){map, size, size};
  return 0;
}

void arc_sealed_free(replicate_buf *obj, int fd)
{
  if (fd < 0)
    replicate_buf_free(obj);
  else if (obj->data != NULL)
    munmap(obj->data, obj->cap);
  *obj = (replicate_buf){0};
}

static uint64_t object_checksum(const uint8_t *obj, size_t len)
{
  XXH3_state_t *st = XXH3_createState();
  if (st == NULL)
    return 0;
  XXH3_64bits_reset(st);
  XXH3_64bits_update(st, obj, ARC_OFF_CHECKSUM);
  XXH3_64bits_update(st, obj + ARC_HEADER, len - ARC_HEADER);
  uint64_t sum = XXH3_64bits_digest(st);
  XXH3_freeState(st);
  return sum;
}

/* Decompresses (or copies) stored[0, n) into out. */
static int take_payload(const arc_header *h, const uint8_t *stored, size_t n,
                        replicate_buf *out)
{
  if (!(h->flags & ARC_FLAG_ZSTD)) {
    if (buf_reserve(out, n ? n : 1) != 0)
      return ENOMEM;
    if (n > 0)
      memcpy(out->data, stored, n);
    out->len = n;
    return 0;
  }
  unsigned long long size = ZSTD_getFrameContentSize(stored, n);
  if (size == ZSTD_CONTENTSIZE_ERROR || size == ZSTD_CONTENTSIZE_UNKNOWN ||
      size > ARC_MAX_OBJECT)
    return REPLICATE_EARCHIVE_OBJECT;
  if (buf_reserve(out, size ? (size_t)size : 1) != 0)
    return ENOMEM;
  size_t got = ZSTD_decompress(out->data, (size_t)size, stored, n);
  if (ZSTD_isError(got) || got != size)
    return REPLICATE_EARCHIVE_OBJECT;
  out->len = got;
  return 0;
}

static int find_key(const arc_keys *keys, uint32_t id)
{
  for (unsigned i = 0; keys != NULL && i < keys->count; i++)
    if (keys->id[i] == id)
      return (int)i;
  return -1;
}

/* Checks 1 and 2 of docs/ARCHIVE.md on an object of size bytes whose
 * first ARC_HEADER bytes are p (size at least that); fills *h. */
static int header_ok(const uint8_t *p, uint64_t size, arc_header *h)
{
  if (size < ARC_HEADER || memcmp(p, ARC_MAGIC, 8) != 0 ||
      arc_get32(p + 8) != ARC_VERSION)
    return REPLICATE_EARCHIVE_OBJECT;
  header_read(p, h);
  return h->stored_len == size - ARC_HEADER ? 0 : REPLICATE_EARCHIVE_OBJECT;
}

/* Checks 4 and 5: *k the reader's key that opens it, -1 for plaintext. */
static int reader_ok(const arc_keys *keys, const uint8_t *archive_id,
                     const arc_header *h, int *k)
{
  *k = -1;
  if (archive_id != NULL && memcmp(h->archive_id, archive_id, ARC_ID_SIZE))
    return REPLICATE_EARCHIVE_FOREIGN;
  bool enc = h->flags & ARC_FLAG_ENCRYPTED;
  bool want = keys != NULL && keys->count > 0;
  if (enc != want || (h->key_id != 0) != enc)
    return REPLICATE_EARCHIVE_KEY;
  if (!enc)
    return 0;
  *k = find_key(keys, h->key_id);
  if (*k < 0 || h->stored_len < ARC_TAG)
    return REPLICATE_EARCHIVE_KEY;
  return 0;
}

/* Checks 1-5 on obj[0, len). */
static int unseal_check(const arc_keys *keys, const uint8_t *archive_id,
                        const uint8_t *p, size_t len, arc_header *h, int *k)
{
  *k = -1;
  if (len < ARC_HEADER || header_ok(p, len, h) != 0 ||
      arc_get64(p + ARC_OFF_CHECKSUM) != object_checksum(p, len))
    return REPLICATE_EARCHIVE_OBJECT;
  return reader_ok(keys, archive_id, h, k);
}

int arc_unseal(const arc_keys *keys, const uint8_t *archive_id, const void *obj,
               size_t len, arc_header *h, replicate_buf *payload)
{
  const uint8_t *p = obj;
  int k;
  int rc = unseal_check(keys, archive_id, p, len, h, &k);
  if (rc != 0 || k < 0)
    return rc ? rc : take_payload(h, p + ARC_HEADER, len - ARC_HEADER, payload);
  size_t body = len - ARC_HEADER - ARC_TAG;
  uint8_t *plain = malloc(body ? body : 1);
  if (plain == NULL)
    return ENOMEM;
  memcpy(plain, p + ARC_HEADER, body);
  uint8_t tag[ARC_TAG];
  memcpy(tag, p + ARC_HEADER + body, ARC_TAG);
  rc = gcm(0, keys->key[k], h->nonce, p, ARC_OFF_CHECKSUM, plain, body, tag);
  if (rc == 0)
    rc = take_payload(h, plain, body, payload);
  free(plain);
  return rc;
}

/* ---------------------------------------------------------------------- */
/* Keys: fixed-width hex, so that byte order is numeric order. */

void arc_key_epoch(char *buf, uint64_t epoch)
{
  snprintf(buf, ARC_KEY_MAX, "epochs/%016" PRIx64, epoch);
}
void arc_key_prefix(char *buf, uint64_t epoch)
{
  snprintf(buf, ARC_KEY_MAX, "e/%016" PRIx64 "/", epoch);
}
void arc_key_head(char *buf, uint64_t epoch)
{
  snprintf(buf, ARC_KEY_MAX, "e/%016" PRIx64 "/head", epoch);
}
void arc_key_writer(char *buf, uint64_t epoch)
{
  snprintf(buf, ARC_KEY_MAX, "e/%016" PRIx64 "/writer", epoch);
}
void arc_key_base(char *buf, uint64_t epoch, uint64_t seq, int64_t time_ns,
                  uint32_t key_id)
{
  snprintf(buf, ARC_KEY_MAX,
           "e/%016" PRIx64 "/b/%016" PRIx64 ".%016" PRIx64 ".%08" PRIx32, epoch,
           seq, (uint64_t)time_ns, key_id);
}
void arc_key_segment(char *buf, uint64_t epoch, uint64_t first, uint64_t last,
                     int64_t time_ns, uint32_t key_id)
{
  snprintf(buf, ARC_KEY_MAX,
           "e/%016" PRIx64 "/s/%016" PRIx64 "-%016" PRIx64 ".%016" PRIx64
           ".%08" PRIx32,
           epoch, first, last, (uint64_t)time_ns, key_id);
}
void arc_key_gap(char *buf, uint64_t epoch, uint64_t first, uint64_t last,
                 uint32_t key_id)
{
  snprintf(buf, ARC_KEY_MAX,
           "e/%016" PRIx64 "/g/%016" PRIx64 "-%016" PRIx64 ".%08" PRIx32, epoch,
           first, last, key_id);
}

/* Reads exactly `digits` hex digits at *p, then expects sep ('\0': the
 * end). */
static int hexn(const char **p, int digits, char sep, uint64_t *out)
{
  uint64_t v = 0;
  for (int i = 0; i < digits; i++) {
    char c = (*p)[i];
    int d = c >= '0' && c <= '9'   ? c - '0'
            : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                   : -1;
    if (d < 0)
      return -1;
    v = v << 4 | (uint64_t)d;
  }
  if ((*p)[digits] != sep)
    return -1;
  *p += digits + (sep ? 1 : 0);
  *out = v;
  return 0;
}

static int hex16(const char **p, char sep, uint64_t *out)
{
  return hexn(p, 16, sep, out);
}

/* ".KEYID" at the end of a data object's key. */
static int key_id_part(const char **p, uint32_t *out)
{
  uint64_t v;
  if (hexn(p, 8, '\0', &v) != 0)
    return -1;
  *out = (uint32_t)v;
  return 0;
}

/* The rest of "e/E/" for a base, a segment or a gap: 0 or -1. */
static int parse_data_key(const char *p, arc_name *out, uint64_t *t)
{
  if (strncmp(p, "b/", 2) == 0) {
    p += 2;
    out->kind = ARC_BASE;
    if (hex16(&p, '.', &out->first_seq) || hex16(&p, '.', t))
      return -1;
    out->last_seq = out->first_seq;
  } else if (strncmp(p, "s/", 2) == 0) {
    p += 2;
    out->kind = ARC_SEGMENT;
    if (hex16(&p, '-', &out->first_seq) || hex16(&p, '.', &out->last_seq) ||
        hex16(&p, '.', t))
      return -1;
  } else if (strncmp(p, "g/", 2) == 0) {
    p += 2;
    out->kind = ARC_GAP;
    if (hex16(&p, '-', &out->first_seq) || hex16(&p, '.', &out->last_seq))
      return -1;
  } else {
    return -1;
  }
  return key_id_part(&p, &out->key_id);
}

int arc_key_parse(const char *key, arc_name *out)
{
  memset(out, 0, sizeof *out);
  const char *p = key;
  uint64_t t = 0;
  int bad = 0;
  if (strcmp(key, "id") == 0) {
    out->kind = ARC_ID;
  } else if (strncmp(p, "epochs/", 7) == 0) {
    p += 7;
    out->kind = ARC_EPOCH;
    bad = hex16(&p, '\0', &out->epoch);
  } else if (strncmp(p, "e/", 2) != 0 ||
             (p += 2, hex16(&p, '/', &out->epoch) != 0)) {
    bad = 1;
  } else if (strcmp(p, "head") == 0) {
    out->kind = ARC_HEAD;
  } else if (strcmp(p, "writer") == 0) {
    out->kind = ARC_WRITER;
  } else {
    bad = parse_data_key(p, out, &t);
  }
  out->time_ns = (int64_t)t;
  return bad ? REPLICATE_EARCHIVE_OBJECT : 0;
}

/* ---------------------------------------------------------------------- */
/* Reading and writing objects of an opened archive. */

int arc_fail(replicate_archive *a, int rc, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(a->error, sizeof a->error, fmt, ap);
  va_end(ap);
  return rc;
}

static const char *unseal_text(int rc)
{
  switch (rc) {
  case REPLICATE_EARCHIVE_FOREIGN: return "belongs to another archive";
  case REPLICATE_EARCHIVE_KEY:
    return "is under a key that is not in --archive-key-file (or is "
           "plaintext where a key is configured, or the reverse)";
  case REPLICATE_EARCHIVE_OBJECT:
    return "is malformed, truncated or tampered with (checksum or tag)";
  default: return replicate_strerror(rc);
  }
}

/* The header must say what the key says. */
static bool header_matches(const arc_header *h, const arc_name *n)
{
  if (h->kind != n->kind || h->epoch != n->epoch)
    return false;
  if (n->kind == ARC_BASE || n->kind == ARC_SEGMENT || n->kind == ARC_GAP)
    return h->first_seq == n->first_seq && h->last_seq == n->last_seq &&
           h->key_id == n->key_id;
  return true;
}

int arc_get(replicate_archive *a, const char *key, arc_header *h,
            replicate_buf *payload)
{
  arc_name name;
  if (arc_key_parse(key, &name) != 0)
    return arc_fail(a, REPLICATE_EARCHIVE_OBJECT, "%s: not an archive key",
                    key);
  void *obj = NULL;
  size_t len = 0;
  int rc = objstore_get(a->store, key, ARC_MAX_OBJECT, &obj, &len);
  if (rc != 0)
    return arc_fail(a, rc, "%s: %s", key, objstore_last_error(a->store));
  rc = arc_unseal(&a->keys, a->have_id ? a->id : NULL, obj, len, h, payload);
  free(obj);
  if (rc != 0)
    return arc_fail(a, rc, "object %s %s", key, unseal_text(rc));
  if (!header_matches(h, &name))
    return arc_fail(a, REPLICATE_EARCHIVE_FOREIGN,
                    "object %s holds another position than its key names "
                    "(kind %d, epoch %" PRIu64 ", seqs %" PRIu64 "-%" PRIu64
                    "): renamed, copied or reordered",
                    key, (int)h->kind, h->epoch, h->first_seq, h->last_seq);
  return 0;
}

/* ---------------------------------------------------------------------- */
/* An object read in pieces (arc_pieces_*): ranged GETs; each piece hashed
 * into the object's XXH3 and decrypted as it comes; the checksum and the
 * tag checked once the last piece came. */

struct arc_pieces {
  objstore *store;
  const arc_keys *keys;
  char key[ARC_KEY_MAX];
  uint64_t size, off;   /* the object's size; the next offset to read */
  uint64_t payload_end; /* where the tag starts (size when plaintext) */
  size_t piece;         /* bytes per GET */
  uint64_t checksum;    /* the header's */
  uint8_t tag[ARC_TAG];
  XXH3_state_t *xxh;
  EVP_CIPHER_CTX *evp; /* NULL: plaintext */
  replicate_buf first; /* the first piece's payload, handed out first */
  bool defer;           /* checks 4, 5, 7 after the checksum (a refusal) */
  int deferred;         /* what they found, reported at the end */
  const char *deferred_what;
  char error[512];
};

static int pieces_fail(arc_pieces *p, int rc, const char *what)
{
  snprintf(p->error, sizeof p->error, "object %s %s", p->key, what);
  return rc;
}

/* The bytes [at, at + n) of the stored payload (offsets in the object):
 * hashed, the payload's decrypted in place, the tag's kept; *out_len the
 * payload bytes among them. */
static int pieces_take(arc_pieces *p, uint8_t *d, size_t n, uint64_t at,
                       size_t *out_len)
{
  XXH3_64bits_update(p->xxh, d, n);
  size_t m = at >= p->payload_end ? 0
             : p->payload_end - at < n ? (size_t)(p->payload_end - at)
                                       : n;
  if (m < n)
    memcpy(p->tag + (at + m - p->payload_end), d + m, n - m);
  int outl = 0;
  if (p->evp != NULL && m > 0 &&
      !EVP_DecryptUpdate(p->evp, d, &outl, d, (int)m))
    return pieces_fail(p, REPLICATE_EARCHIVE_OBJECT, "could not be decrypted");
  *out_len = m;
  return 0;
}

static int pieces_get(arc_pieces *p, uint64_t end, uint8_t **d, size_t *n)
{
  void *data = NULL;
  int rc = objstore_get_range(p->store, p->key, p->off, (size_t)(end - p->off),
                              &data, n);
  if (rc == 0 && *n != end - p->off) {
    free(data);
    return pieces_fail(p, REPLICATE_EARCHIVE_OBJECT,
                       "is shorter than its listing says");
  }
  if (rc != 0)
    return pieces_fail(p, rc, objstore_last_error(p->store));
  *d = data;
  return 0;
}

/* The header's checks that need no more than the header (1, 2, 4, 5, 7);
 * the cipher and the hash started. */
static int pieces_start(arc_pieces *p, const uint8_t *archive_id,
                        const uint8_t *hd, arc_header *h)
{
  arc_name name;
  int k;
  if (arc_key_parse(p->key, &name) != 0 || header_ok(hd, p->size, h) != 0)
    return pieces_fail(p, REPLICATE_EARCHIVE_OBJECT, unseal_text(
                                                         REPLICATE_EARCHIVE_OBJECT));
  int rc = reader_ok(p->keys, archive_id, h, &k);
  const char *what = unseal_text(rc);
  if (rc == 0 && !header_matches(h, &name))
    rc = REPLICATE_EARCHIVE_FOREIGN,
    what = "holds another position than its key names";
  if (rc != 0 && !p->defer)
    return pieces_fail(p, rc, what);
  if (rc != 0) /* only hashed from here: no key to decrypt with */
    p->deferred = rc, p->deferred_what = what, k = -1;
  p->checksum = arc_get64(hd + ARC_OFF_CHECKSUM);
  p->payload_end = p->size - (k >= 0 ? ARC_TAG : 0);
  if ((p->xxh = XXH3_createState()) == NULL)
    return ENOMEM;
  XXH3_64bits_reset(p->xxh);
  XXH3_64bits_update(p->xxh, hd, ARC_OFF_CHECKSUM);
  if (k < 0)
    return 0;
  if ((p->evp = EVP_CIPHER_CTX_new()) == NULL)
    return ENOMEM;
  int outl;
  bool ok =
      EVP_DecryptInit_ex(p->evp, EVP_aes_256_gcm(), NULL, NULL, NULL) &&
      EVP_CIPHER_CTX_ctrl(p->evp, EVP_CTRL_GCM_SET_IVLEN, ARC_NONCE, NULL) &&
      EVP_DecryptInit_ex(p->evp, NULL, NULL, p->keys->key[k], h->nonce) &&
      EVP_DecryptUpdate(p->evp, NULL, &outl, hd, ARC_OFF_CHECKSUM);
  return ok ? 0 : pieces_fail(p, REPLICATE_EARCHIVE_OBJECT,
                              "could not be decrypted");
}

/* The end of the range starting at p->off: a piece, or the rest when
 * less than a tag would be left after it. */
static uint64_t pieces_end(const arc_pieces *p)
{
  uint64_t end = p->size - p->off > p->piece ? p->off + p->piece : p->size;
  return p->size - end < ARC_TAG ? p->size : end;
}

static int pieces_open(replicate_archive *a, objstore *store, const char *key,
                       uint64_t size, size_t piece, bool defer, arc_header *h,
                       arc_pieces **out)
{
  *out = NULL;
  arc_pieces *p = calloc(1, sizeof *p);
  if (p == NULL)
    return ENOMEM;
  *out = p;
  p->defer = defer;
  p->store = store;
  p->keys = &a->keys;
  p->size = size;
  p->piece = piece > ARC_HEADER + ARC_TAG ? piece : ARC_HEADER + ARC_TAG;
  snprintf(p->key, sizeof p->key, "%s", key);
  if (size < ARC_HEADER)
    return pieces_fail(p, REPLICATE_EARCHIVE_OBJECT,
                       unseal_text(REPLICATE_EARCHIVE_OBJECT));
  uint8_t *d = NULL;
  size_t n = 0, m = 0;
  int rc = pieces_get(p, pieces_end(p), &d, &n);
  if (rc == 0)
    rc = pieces_start(p, a->have_id ? a->id : NULL, d, h);
  if (rc == 0)
    rc = pieces_take(p, d + ARC_HEADER, n - ARC_HEADER, ARC_HEADER, &m);
  if (rc == 0) {
    memmove(d, d + ARC_HEADER, m);
    p->first = (replicate_buf){.data = d, .len = m, .cap = n};
    p->off = n;
    d = NULL;
  }
  free(d);
  return rc;
}

int arc_pieces_open(replicate_archive *a, objstore *store, const char *key,
                    uint64_t size, size_t piece, arc_header *h,
                    arc_pieces **out)
{
  return pieces_open(a, store, key, size, piece, false, h, out);
}

/* The end: the checksum over everything read, then the tag. */
static int pieces_finish(arc_pieces *p)
{
  if (XXH3_64bits_digest(p->xxh) != p->checksum)
    return pieces_fail(p, REPLICATE_EARCHIVE_OBJECT,
                       unseal_text(REPLICATE_EARCHIVE_OBJECT));
  if (p->deferred != 0)
    return pieces_fail(p, p->deferred, p->deferred_what);
  uint8_t last[16];
  int outl = 0;
  if (p->evp != NULL &&
      (!EVP_CIPHER_CTX_ctrl(p->evp, EVP_CTRL_GCM_SET_TAG, ARC_TAG, p->tag) ||
       EVP_DecryptFinal_ex(p->evp, last, &outl) <= 0))
    return pieces_fail(p, REPLICATE_EARCHIVE_OBJECT,
                       unseal_text(REPLICATE_EARCHIVE_OBJECT));
  return 0;
}

int arc_pieces_next(arc_pieces *p, replicate_buf *out)
{
  replicate_buf_free(out);
  if (p->first.data != NULL) {
    *out = p->first;
    p->first = (replicate_buf){0};
    if (out->len > 0)
      return 0;
    replicate_buf_free(out);
  }
  while (p->off < p->size) {
    uint8_t *d = NULL;
    size_t n = 0, m = 0;
    int rc = pieces_get(p, pieces_end(p), &d, &n);
    if (rc == 0)
      rc = pieces_take(p, d, n, p->off, &m);
    if (rc != 0) {
      free(d);
      return rc;
    }
    p->off += n;
    if (m > 0) {
      *out = (replicate_buf){.data = d, .len = m, .cap = n};
      return 0;
    }
    free(d); /* the tag alone */
  }
  return pieces_finish(p);
}

const char *arc_pieces_error(const arc_pieces *p) { return p->error; }

void arc_pieces_close(arc_pieces *p)
{
  if (p == NULL)
    return;
  replicate_buf_free(&p->first);
  XXH3_freeState(p->xxh);
  EVP_CIPHER_CTX_free(p->evp);
  free(p);
}

int arc_pieces_verify(replicate_archive *a, objstore *store, const char *key,
                      uint64_t size)
{
  arc_header h;
  arc_pieces *p = NULL;
  replicate_buf piece = {0};
  int rc = pieces_open(a, store, key, size, ARC_PIECE_BYTES, true, &h, &p);
  while (rc == 0 && (rc = arc_pieces_next(p, &piece)) == 0 && piece.len > 0)
    ;
  if (rc != 0)
    arc_fail(a, rc, "%s", p != NULL ? p->error : key);
  replicate_buf_free(&piece);
  arc_pieces_close(p);
  return rc;
}

int arc_put_sealed(replicate_archive *a, const char *key,
                   const replicate_buf *obj, unsigned flags)
{
  int rc = objstore_put(a->store, key, obj->data, obj->len, flags);
  return rc != 0 ? arc_fail(a, rc, "%s", objstore_last_error(a->store)) : 0;
}

int arc_put(replicate_archive *a, arc_header *h, const char *key,
            const void *payload, size_t len, unsigned flags)
{
  memcpy(h->archive_id, a->id, ARC_ID_SIZE);
  replicate_buf obj = {0};
  int rc = arc_seal(&a->keys, h, payload, len, &obj);
  if (rc != 0)
    arc_fail(a, rc, "%s: sealing: %s", key, replicate_strerror(rc));
  else
    rc = arc_put_sealed(a, key, &obj, flags);
  replicate_buf_free(&obj);
  return rc;
}

int arc_seal_object(replicate_archive *a, arc_header *h, const char *key,
                    arc_read_fn read, void *ctx, uint64_t len, int fd,
                    uint64_t reserve, replicate_buf *obj)
{
  memcpy(h->archive_id, a->id, ARC_ID_SIZE);
  int rc = fd < 0 ? arc_seal_read(&a->keys, h, read, ctx, len, obj)
                  : arc_seal_read_file(&a->keys, h, read, ctx, len, fd,
                                       reserve, obj);
  return rc != 0 ? arc_fail(a, rc, "%s: reading and sealing: %s", key,
                            replicate_strerror(rc))
                 : 0;
}

int arc_get_head(replicate_archive *a, uint64_t epoch, bool *found,
                 loom_position *out)
{
  char key[ARC_KEY_MAX];
  arc_key_head(key, epoch);
  arc_header h;
  replicate_buf b = {0};
  *found = false;
  int rc = arc_get(a, key, &h, &b);
  if (rc == REPLICATE_ESTORE_MISSING) {
    a->error[0] = '\0';
    replicate_buf_free(&b);
    return 0;
  }
  if (rc == 0 && (b.len != 32 || h.last_seq != arc_get64(b.data)))
    rc = arc_fail(a, REPLICATE_EARCHIVE_OBJECT, "object %s is malformed", key);
  if (rc == 0) {
    *found = true;
    *out = (loom_position){.epoch = epoch,
                           .seq = arc_get64(b.data),
                           .checksum = arc_get64(b.data + 8),
                           .pages = arc_get64(b.data + 16),
                           .commit_time_ns = (int64_t)arc_get64(b.data + 24)};
  }
  replicate_buf_free(&b);
  return rc;
}

int arc_load_id(replicate_archive *a)
{
  void *obj = NULL;
  size_t len = 0;
  int rc = objstore_get(a->store, "id", 4096, &obj, &len);
  if (rc != 0)
    return arc_fail(a, rc, "%s", objstore_last_error(a->store));
  arc_header h;
  replicate_buf payload = {0};
  rc = arc_unseal(&a->keys, NULL, obj, len, &h, &payload);
  free(obj);
  replicate_buf_free(&payload);
  if (rc == 0 && h.kind != ARC_ID)
    rc = REPLICATE_EARCHIVE_OBJECT;
  if (rc != 0)
    return arc_fail(a, rc, "object id %s", unseal_text(rc));
  memcpy(a->id, h.archive_id, ARC_ID_SIZE);
  a->have_id = true;
  return 0;
}

/* ---------------------------------------------------------------------- */
/* Opening */

int replicate_archive_open(const replicate_archive_options *o,
                           replicate_archive **out)
{
  *out = NULL;
  replicate_archive *a = calloc(1, sizeof *a);
  if (a == NULL)
    return ENOMEM;
  int rc = 0;
  a->io = o->io;
  if (o->key_file != NULL)
    rc = arc_keys_load(o->key_file, &a->keys, a->error, sizeof a->error);
  if (rc == 0 && (a->url = strdup(o->url ? o->url : "")) == NULL)
    rc = ENOMEM;
  a->store_options = o->store;
  if (rc == 0) {
    rc = objstore_open(o->url, &o->store, &a->store);
    if (rc != 0)
      arc_fail(a, rc, "%s: cannot open the archive: %s", o->url,
               replicate_strerror(rc));
  }
  *out = a; /* also on error: replicate_archive_last_error says why */
  return rc;
}

void replicate_archive_close(replicate_archive *a)
{
  if (a == NULL)
    return;
  objstore_close(a->store);
  free(a->url);
  memset(&a->keys, 0, sizeof a->keys);
  free(a);
}

int arc_store_open_another(const replicate_archive *a, objstore **out)
{
  return objstore_open(a->url, &a->store_options, out);
}

const char *replicate_archive_last_error(const replicate_archive *a)
{
  return a->error;
}

objstore *replicate_archive_store(replicate_archive *a) { return a->store; }
