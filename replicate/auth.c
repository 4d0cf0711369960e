/*
 * auth.c: authenticated frames (DESIGN section 8, docs/AUTH.md): the frame
 * key file, and the HMAC-SHA256 tags that frames, heartbeats, base images
 * and tree and pages answers carry when a node has a frame key.
 *
 * A1. A tag is HMAC-SHA256(key, label || bytes), the label naming what the
 *     bytes are ("loomship-tag-v1 frames\n", ... base, tree, pages), so a
 *     tag made for one kind of input never passes for another.
 * A2. A tag names its key by id: the first 8 bytes of the key's SHA-256.
 *     A key file holds the current key and optionally the previous one:
 *     tags are made under the current key, and checked under whichever of
 *     the two the tag names (a rotation).
 * A3. Fail closed: with a key, input without a tag, under another key id,
 *     or whose tag does not match is refused (each its own code). Tags are
 *     compared in constant time.
 * A4. Key material is wiped when freed; a key file readable by group or
 *     others is refused.
 * A5. SIGHUP re-reads the file (replicate_frame_key_reload): the new keys
 *     replace the old ones in the same object, under one lock that every
 *     use of the key bytes takes, so every holder of the pointer (server,
 *     shipper, repair) uses them from its next tag on. A file that cannot
 *     be used changes nothing: a node with a key never drops to none. The
 *     ids of replaced keys stay allocated (a few bytes a reload) so the
 *     strings replicate_frame_key_id returned stay valid until the free.
 */
#include "replicate.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "hex.h"

#define KEY_BYTES 32
#define KEY_FILE_MAX 4096

/* One reading of the key file. */
typedef struct key_set {
  unsigned count;                    /* 1 or 2 */
  uint8_t key[2][KEY_BYTES];         /* current, previous */
  char id[2][REPLICATE_KEY_ID_TEXT]; /* 16 hex digits each */
  struct key_set *older;             /* replaced sets: ids only (A5) */
} key_set;

struct replicate_frame_key {
  EVP_MAC *mac;
  key_set *cur;                      /* under keys_mu */
};

/* A5: guards every key's cur and the key bytes in it (held only while a
 * key id is looked up and an HMAC context initialised). */
static pthread_mutex_t keys_mu = PTHREAD_MUTEX_INITIALIZER;

struct replicate_tag_stream {
  EVP_MAC_CTX *ctx;
};

static const char *const labels[] = {
    [REPLICATE_TAG_FRAMES] = "loomship-tag-v1 frames\n",
    [REPLICATE_TAG_BASE] = "loomship-tag-v1 base\n",
    [REPLICATE_TAG_TREE] = "loomship-tag-v1 tree\n",
    [REPLICATE_TAG_PAGES] = "loomship-tag-v1 pages\n",
    [REPLICATE_TAG_BACKUP] = "loomship-tag-v1 backup\n",
};

/* ---------------------------------------------------------------------- */
/* The key file */

/* bytes[0, n) as 2n lowercase hex digits and a NUL. */
static void hex_encode(const uint8_t *bytes, size_t n, char *out)
{
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[bytes[i] >> 4];
    out[2 * i + 1] = digits[bytes[i] & 15];
  }
  out[2 * n] = '\0';
}

/* Exactly 2n hex digits into out[0, n). */
static bool hex_decode(const char *text, size_t len, uint8_t *out, size_t n)
{
  if (len != 2 * n)
    return false;
  for (size_t i = 0; i < n; i++) {
    int hi = loom_hex_digit(text[2 * i]), lo = loom_hex_digit(text[2 * i + 1]);
    if (hi < 0 || lo < 0)
      return false;
    out[i] = (uint8_t)(hi << 4 | lo);
  }
  return true;
}

/* The length of line [text, end) without trailing spaces, tabs and CR. */
static size_t trimmed(const char *text, const char *end)
{
  while (end > text && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
    end--;
  return (size_t)(end - text);
}

static int read_key_file(const char *path, char *buf, size_t cap, size_t *len,
                         char *why, size_t why_len)
{
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(why, why_len, "%s: %s", path, strerror(errno));
    return REPLICATE_EKEY_FILE;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || (st.st_mode & 077)) {
    snprintf(why, why_len, "%s: readable by group or others (chmod 600 it)",
             path);
    close(fd);
    return REPLICATE_EKEY_FILE;
  }
  ssize_t n = read(fd, buf, cap - 1);
  close(fd);
  if (n < 0 || (size_t)n == cap - 1) {
    snprintf(why, why_len, "%s: %s", path,
             n < 0 ? strerror(errno) : "too long");
    return REPLICATE_EKEY_FILE;
  }
  buf[n] = '\0';
  *len = (size_t)n;
  return 0;
}

/* Lines 1 and 2 of text (64 hex digits each, the second optional) into k. */
static int parse_keys(key_set *k, const char *text, size_t len,
                      const char *path, char *why, size_t why_len)
{
  const char *at = text, *end = text + len;
  while (at < end && k->count < 2) {
    const char *nl = memchr(at, '\n', (size_t)(end - at));
    const char *line_end = nl ? nl : end;
    size_t n = trimmed(at, line_end);
    if (n == 0 && k->count == 1)
      break; /* an empty second line: no previous key */
    if (!hex_decode(at, n, k->key[k->count], KEY_BYTES)) {
      snprintf(why, why_len, "%s: line %u is not 64 hex digits", path,
               k->count + 1);
      return REPLICATE_EKEY_FILE;
    }
    k->count++;
    at = nl ? nl + 1 : end;
  }
  if (k->count == 0) {
    snprintf(why, why_len, "%s: no key on its first line", path);
    return REPLICATE_EKEY_FILE;
  }
  return 0;
}

/* A2: the id of each key. */
static int name_keys(key_set *k)
{
  for (unsigned i = 0; i < k->count; i++) {
    uint8_t digest[32];
    unsigned int dlen = 0;
    if (!EVP_Digest(k->key[i], KEY_BYTES, digest, &dlen, EVP_sha256(), NULL))
      return ENOMEM;
    hex_encode(digest, REPLICATE_KEY_ID_BYTES, k->id[i]);
  }
  return 0;
}

static void key_set_free(key_set *set)
{
  while (set) {
    key_set *older = set->older;
    OPENSSL_cleanse(set, sizeof *set);
    free(set);
    set = older;
  }
}

/* Read and check path into a new set (the reason in why). */
static int key_set_read(const char *path, key_set **out, char *why, size_t why_len)
{
  *out = NULL;
  if (why_len)
    why[0] = '\0';
  char buf[KEY_FILE_MAX];
  size_t len = 0;
  int rc = read_key_file(path, buf, sizeof buf, &len, why, why_len);
  if (rc)
    return rc;
  key_set *set = calloc(1, sizeof *set);
  rc = set ? parse_keys(set, buf, len, path, why, why_len) : ENOMEM;
  OPENSSL_cleanse(buf, sizeof buf);
  if (!rc && name_keys(set) != 0) {
    rc = ENOMEM;
    snprintf(why, why_len, "%s: libcrypto has no SHA-256", path);
  }
  if (rc) {
    key_set_free(set);
    return rc;
  }
  *out = set;
  return 0;
}

int replicate_frame_key_load(const char *path, replicate_frame_key **out,
                             char *why, size_t why_len)
{
  *out = NULL;
  key_set *set = NULL;
  int rc = key_set_read(path, &set, why, why_len);
  if (rc)
    return rc;
  replicate_frame_key *k = calloc(1, sizeof *k);
  if (k)
    k->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
  if (!k || !k->mac) {
    snprintf(why, why_len, "%s: libcrypto has no HMAC-SHA256", path);
    key_set_free(set);
    replicate_frame_key_free(k);
    return ENOMEM;
  }
  k->cur = set;
  *out = k;
  return 0;
}

int replicate_frame_key_reload(replicate_frame_key *k, const char *path,
                               char *why, size_t why_len)
{
  if (!k || !path)
    return EINVAL;
  key_set *set = NULL;
  int rc = key_set_read(path, &set, why, why_len);
  if (rc)
    return rc; /* A5: the old keys stay */
  pthread_mutex_lock(&keys_mu);
  key_set *old = k->cur;
  OPENSSL_cleanse(old->key, sizeof old->key); /* only its ids are kept */
  set->older = old;
  k->cur = set;
  pthread_mutex_unlock(&keys_mu);
  return 0;
}

void replicate_frame_key_free(replicate_frame_key *k)
{
  if (!k)
    return;
  EVP_MAC_free(k->mac);
  key_set_free(k->cur);
  free(k);
}

const char *replicate_frame_key_id(const replicate_frame_key *k, unsigned which)
{
  if (!k)
    return NULL;
  pthread_mutex_lock(&keys_mu);
  const key_set *set = k->cur;
  const char *id = which < set->count ? set->id[which] : NULL;
  pthread_mutex_unlock(&keys_mu);
  return id;
}

/* ---------------------------------------------------------------------- */
/* Tags */

/* The key a tag under key_id is checked with, or -1. */
static int key_index(const key_set *k, const char *key_id)
{
  for (unsigned i = 0; i < k->count; i++)
    if (strcmp(k->id[i], key_id) == 0)
      return (int)i;
  return -1;
}

/* Begin a stream under key_id (NULL: the current key), its id into
 * used_id when not NULL. */
static int stream_begin(const replicate_frame_key *k, replicate_tag_kind kind,
                        const char *key_id, replicate_tag_stream **out,
                        char used_id[REPLICATE_KEY_ID_TEXT])
{
  *out = NULL;
  if (!k || (unsigned)kind >= sizeof labels / sizeof labels[0])
    return EINVAL;
  replicate_tag_stream *s = calloc(1, sizeof *s);
  if (!s)
    return ENOMEM;
  s->ctx = EVP_MAC_CTX_new(k->mac);
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_end()};
  pthread_mutex_lock(&keys_mu);
  const key_set *set = k->cur;
  int which = key_id ? key_index(set, key_id) : 0;
  int rc = which < 0 ? REPLICATE_ETAG_KEY : 0;
  if (!rc && (!s->ctx || !EVP_MAC_init(s->ctx, set->key[which], KEY_BYTES, params)))
    rc = ENOMEM;
  if (!rc && used_id)
    memcpy(used_id, set->id[which], REPLICATE_KEY_ID_TEXT);
  pthread_mutex_unlock(&keys_mu);
  if (!rc && !EVP_MAC_update(s->ctx, (const unsigned char *)labels[kind],
                             strlen(labels[kind])))
    rc = ENOMEM;
  if (rc) {
    replicate_tag_stream_free(s);
    return rc;
  }
  *out = s;
  return 0;
}

int replicate_tag_stream_begin(const replicate_frame_key *k,
                               replicate_tag_kind kind, const char *key_id,
                               replicate_tag_stream **out)
{
  return stream_begin(k, kind, key_id, out, NULL);
}

int replicate_tag_stream_update(replicate_tag_stream *s, const void *data,
                                size_t len)
{
  if (len && !EVP_MAC_update(s->ctx, data, len))
    return ENOMEM;
  return 0;
}

int replicate_tag_stream_end(replicate_tag_stream *s,
                             uint8_t tag[REPLICATE_TAG_SIZE])
{
  size_t n = 0;
  if (!EVP_MAC_final(s->ctx, tag, &n, REPLICATE_TAG_SIZE) ||
      n != REPLICATE_TAG_SIZE)
    return ENOMEM;
  return 0;
}

int replicate_tag_stream_check(replicate_tag_stream *s,
                               const uint8_t tag[REPLICATE_TAG_SIZE])
{
  uint8_t mine[REPLICATE_TAG_SIZE];
  int rc = replicate_tag_stream_end(s, mine);
  if (!rc && CRYPTO_memcmp(mine, tag, REPLICATE_TAG_SIZE) != 0)
    rc = REPLICATE_ETAG_BAD;
  return rc;
}

void replicate_tag_stream_free(replicate_tag_stream *s)
{
  if (!s)
    return;
  EVP_MAC_CTX_free(s->ctx);
  free(s);
}

int replicate_tag_parse(const char *header, replicate_tag *out)
{
  memset(out, 0, sizeof *out);
  if (!header)
    return REPLICATE_ETAG_MISSING;
  const char *sp = strchr(header, ' ');
  if (!sp || sp - header != 2 * REPLICATE_KEY_ID_BYTES)
    return REPLICATE_ETAG_BAD;
  uint8_t id[REPLICATE_KEY_ID_BYTES];
  if (!hex_decode(header, (size_t)(sp - header), id, sizeof id))
    return REPLICATE_ETAG_BAD;
  hex_encode(id, sizeof id, out->key_id);
  const char *t = sp + 1;
  if (strcmp(t, "trailer") == 0) {
    out->trailer = true;
    return 0;
  }
  return hex_decode(t, strlen(t), out->tag, REPLICATE_TAG_SIZE)
             ? 0
             : REPLICATE_ETAG_BAD;
}

int replicate_tag_make(const replicate_frame_key *k, replicate_tag_kind kind,
                       const void *data, size_t len,
                       char out[REPLICATE_TAG_TEXT])
{
  replicate_tag_stream *s = NULL;
  uint8_t tag[REPLICATE_TAG_SIZE];
  char id[REPLICATE_KEY_ID_TEXT];
  int rc = stream_begin(k, kind, NULL, &s, id);
  if (!rc)
    rc = replicate_tag_stream_update(s, data, len);
  if (!rc)
    rc = replicate_tag_stream_end(s, tag);
  replicate_tag_stream_free(s);
  if (rc)
    return rc;
  memcpy(out, id, 2 * REPLICATE_KEY_ID_BYTES);
  out[2 * REPLICATE_KEY_ID_BYTES] = ' ';
  hex_encode(tag, sizeof tag, out + 2 * REPLICATE_KEY_ID_BYTES + 1);
  return 0;
}

int replicate_tag_check(const replicate_frame_key *k, replicate_tag_kind kind,
                        const char *header, const void *data, size_t len)
{
  replicate_tag t;
  int rc = replicate_tag_parse(header, &t);
  if (!rc && t.trailer)
    rc = REPLICATE_ETAG_BAD; /* a trailer is for streamed images only */
  replicate_tag_stream *s = NULL;
  if (!rc)
    rc = replicate_tag_stream_begin(k, kind, t.key_id, &s);
  if (!rc)
    rc = replicate_tag_stream_update(s, data, len);
  if (!rc)
    rc = replicate_tag_stream_check(s, t.tag);
  replicate_tag_stream_free(s);
  return rc;
}
