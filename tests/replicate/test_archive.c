/*
 * test_archive.c: the archive (replicate/archive*.c) on the file://
 * backend: the object format (round trip, every tamper refused, wrong key,
 * foreign archive id, no plaintext under a key), the key file, and a real
 * arena archived by the archiver then restored (newest, by seq, by time),
 * with damaged, duplicated, missing and foreign objects refused by name,
 * and forged objects (a frame's page bytes or after checksum, a base's
 * page, re-sealed with a good checksum) refused by the restore's own
 * checks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <unistd.h>

#include <cmocka.h>
#include <dirent.h>
#include <inttypes.h>
#include <sched.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <xxhash.h>

#include "archive.h"
#include "archive_internal.h"
#include "replicate.h"
#include "testlib.h"

#define ARENA_PAGES 256u
#define PS LOOM_PAGE_SIZE

static const char secret[] = "LOOMSHIP-SECRET-PAGE-BYTES";

/* ---------------------------------------------------------------------- */
/* Helpers */

static void write_text(const char *path, const char *text)
{
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static char *key_file(const char *dir, const char *name, const char *lines)
{
  char *path = xmalloc(strlen(dir) + strlen(name) + 2);
  sprintf(path, "%s/%s", dir, name);
  write_text(path, lines);
  return path;
}

static const char key_a[] =
    "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
static const char key_b[] =
    "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

/* ---------------------------------------------------------------------- */
/* The object format */

static void seal(const arc_keys *k, const uint8_t *id, const void *payload,
                 size_t len, replicate_buf *out)
{
  arc_header h = {
      .kind = ARC_SEGMENT, .epoch = 3, .first_seq = 5, .last_seq = 9};
  memcpy(h.archive_id, id, ARC_ID_SIZE);
  assert_int_equal(arc_seal(k, &h, payload, len, out), 0);
}

/* arc_seal_read's source: bytes [off, off + len) of a buffer, each read
 * checked to follow the last and to fit in ARC_SEAL_PIECE; fail_at: the
 * read at that offset fails with EIO (UINT64_MAX: none). */
typedef struct piece_source {
  const uint8_t *data;
  uint64_t next, reads, fail_at;
} piece_source;

static int read_piece(void *ctx, uint64_t off, void *buf, size_t len)
{
  piece_source *ps = ctx;
  assert_int_equal(off, ps->next);
  assert_true(len > 0 && len <= ARC_SEAL_PIECE);
  if (off == ps->fail_at)
    return EIO;
  memcpy(buf, ps->data + off, len);
  ps->next += len;
  ps->reads++;
  return 0;
}

/* The permissions /proc/self/maps gives the mapping that holds p ("" if
 * none): a sealed file is mapped for reading only, never stored into. */
static const char *mapping_perms(const void *p)
{
  static char perms[8];
  perms[0] = '\0';
  FILE *f = fopen("/proc/self/maps", "r");
  char line[512];
  unsigned long lo, hi;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3 &&
        (uintptr_t)p >= lo && (uintptr_t)p < hi)
      break;
    else
      perms[0] = '\0';
  if (f)
    fclose(f);
  return perms;
}

/* Seals len bytes of payload read in pieces, in memory (fd < 0) or into
 * the file fd (arc_seal_read_file); the rc. */
static uint64_t reserve; /* seal_pieces's: what the file system keeps */

/* The archive's free-space check (file_room) asks fstatvfs, which this
 * definition stands for in the test (the library is linked in
 * statically): the file system's own answer, or with huge_fs one that
 * says 2^62 blocks of 4 KiB are free (as some network and FUSE file
 * systems answer "unlimited"): their product does not fit in 64 bits. */
static bool huge_fs;

int fstatvfs(int fd, struct statvfs *v)
{
  struct statfs f;
  if (fstatfs(fd, &f) != 0)
    return -1;
  memset(v, 0, sizeof *v);
  v->f_bsize = (unsigned long)f.f_bsize;
  v->f_frsize = (unsigned long)(f.f_frsize ? f.f_frsize : f.f_bsize);
  v->f_blocks = f.f_blocks;
  v->f_bfree = f.f_bfree;
  v->f_bavail = f.f_bavail;
  if (huge_fs) {
    v->f_frsize = 4096;
    v->f_bavail = v->f_bfree = UINT64_C(1) << 62;
  }
  return 0;
}

static int seal_pieces(const arc_keys *k, const uint8_t *payload, size_t len,
                       uint64_t fail_at, int fd, replicate_buf *obj,
                       piece_source *ps)
{
  *ps = (piece_source){.data = payload, .fail_at = fail_at};
  arc_header h = {.kind = ARC_BASE, .epoch = 2, .first_seq = 4, .last_seq = 4};
  memcpy(h.archive_id, (uint8_t[ARC_ID_SIZE]){7}, ARC_ID_SIZE);
  return fd < 0 ? arc_seal_read(k, &h, read_piece, ps, len, obj)
                : arc_seal_read_file(k, &h, read_piece, ps, len, fd, reserve, obj);
}

/* A payload read in pieces (a base read from a snapshot) seals into an
 * object that unseals to the same bytes, plaintext and encrypted, of two
 * pieces and more, and of none, in memory and into a file (mapped); a
 * read that fails fails the seal, and so does a file that cannot take
 * the object (/dev/full: ENOSPC). */
static void test_format_sealed_in_pieces(void **state)
{
  (void)state;
  uint8_t id[ARC_ID_SIZE] = {7};
  size_t len = 2 * ARC_SEAL_PIECE + 12345;
  uint8_t *payload = malloc(len);
  assert_non_null(payload);
  uint64_t x = 88172645463325252ull;
  for (size_t i = 0; i < len; i++) { /* runs of zeros between noise */
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    payload[i] = (i / 4096) % 3 ? 0 : (uint8_t)x;
  }
  char *dir = test_tmpdir("arcpieces");
  char *kf = key_file(dir, "keys", key_a);
  char sealed[1100];
  snprintf(sealed, sizeof sealed, "%s/sealed", dir);
  arc_keys keys, none = {0};
  char err[256];
  assert_int_equal(arc_keys_load(kf, &keys, err, sizeof err), 0);
  for (int enc = 0; enc < 2; enc++) {
    const arc_keys *k = enc ? &keys : &none;
    for (int in_file = 0; in_file < 2; in_file++) {
      size_t lens[] = {len, 0};
      for (size_t l = 0; l < 2; l++) {
        int fd = in_file ? open(sealed, O_RDWR | O_CREAT | O_TRUNC, 0600) : -1;
        assert_true(!in_file || fd >= 0);
        piece_source ps;
        replicate_buf obj = {0}, out = {0};
        assert_int_equal(seal_pieces(k, payload, lens[l], UINT64_MAX, fd, &obj, &ps), 0);
        assert_int_equal(ps.next, lens[l]);
        assert_int_equal(ps.reads, (lens[l] + ARC_SEAL_PIECE - 1) / ARC_SEAL_PIECE);
        assert_true(obj.len < lens[l] / 2 + ARC_HEADER + 4096); /* compressed */
        if (in_file)
          assert_string_equal(mapping_perms(obj.data), "r--s");
        arc_header got;
        assert_int_equal(arc_unseal(k, id, obj.data, obj.len, &got, &out), 0);
        assert_true(got.flags & ARC_FLAG_ZSTD);
        assert_int_equal(got.kind, ARC_BASE);
        assert_int_equal(out.len, lens[l]);
        if (lens[l])
          assert_memory_equal(out.data, payload, lens[l]);
        arc_sealed_free(&obj, fd);
        replicate_buf_free(&out);
        if (fd >= 0)
          close(fd);
      }
      int fd = in_file ? open(sealed, O_RDWR | O_CREAT | O_TRUNC, 0600) : -1;
      piece_source ps;
      replicate_buf obj = {0};
      assert_int_equal(seal_pieces(k, payload, len, ARC_SEAL_PIECE, fd, &obj, &ps), EIO);
      arc_sealed_free(&obj, fd);
      if (fd >= 0)
        close(fd);
    }
    int full = open("/dev/full", O_RDWR);
    if (full >= 0) {
      piece_source ps;
      replicate_buf obj = {0};
      assert_int_equal(seal_pieces(k, payload, len, UINT64_MAX, full, &obj, &ps), ENOSPC);
      assert_null(obj.data);
      close(full);
    }
    /* A file system that would keep less than the reserve free: ENOSPC
     * before the first write. */
    int fd = open(sealed, O_RDWR | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    piece_source ps;
    replicate_buf obj = {0};
    reserve = UINT64_MAX / 2;
    assert_int_equal(seal_pieces(k, payload, len, UINT64_MAX, fd, &obj, &ps), ENOSPC);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal(st.st_size, 0);
    assert_null(obj.data);
    /* One that says more than 64 bits count is room, not none. */
    reserve = UINT64_C(256) << 20;
    huge_fs = true;
    assert_int_equal(seal_pieces(k, payload, len, UINT64_MAX, fd, &obj, &ps), 0);
    huge_fs = false;
    reserve = 0;
    arc_sealed_free(&obj, fd);
    close(fd);
  }
  free(payload);
  free(kf);
  test_rmtree(dir);
}

static void test_format_round_trip(void **state)
{
  (void)state;
  uint8_t id[ARC_ID_SIZE] = {1, 2, 3}, other[ARC_ID_SIZE] = {9};
  char payload[4096];
  for (size_t i = 0; i < sizeof payload; i += sizeof secret - 1)
    memcpy(payload + i, secret,
           sizeof payload - i < sizeof secret - 1 ? sizeof payload - i
                                                  : sizeof secret - 1);
  char *dir = test_tmpdir("arcfmt");
  char *kf = key_file(dir, "keys", key_a);
  arc_keys keys, none = {0};
  char err[256];
  assert_int_equal(arc_keys_load(kf, &keys, err, sizeof err), 0);
  assert_int_equal(keys.count, 1);

  for (int enc = 0; enc < 2; enc++) {
    const arc_keys *k = enc ? &keys : &none;
    replicate_buf obj = {0}, out = {0};
    seal(k, id, payload, sizeof payload, &obj);
    assert_true(obj.len > ARC_HEADER);
    assert_int_equal(memmem(obj.data, obj.len, secret, 8) != NULL, !enc);
    arc_header h;
    assert_int_equal(arc_unseal(k, id, obj.data, obj.len, &h, &out), 0);
    assert_int_equal(out.len, sizeof payload);
    assert_memory_equal(out.data, payload, sizeof payload);
    assert_int_equal(h.epoch, 3);
    assert_int_equal(h.first_seq, 5);
    assert_int_equal(h.last_seq, 9);
    /* Every byte matters: a flip anywhere is refused. */
    for (size_t at = 0; at < obj.len; at += at < ARC_HEADER ? 1 : 97) {
      obj.data[at] ^= 0x20;
      int rc = arc_unseal(k, id, obj.data, obj.len, &h, &out);
      assert_true(rc == REPLICATE_EARCHIVE_OBJECT ||
                  rc == REPLICATE_EARCHIVE_KEY ||
                  rc == REPLICATE_EARCHIVE_FOREIGN);
      obj.data[at] ^= 0x20;
    }
    /* Truncated, or with bytes added. */
    assert_int_equal(arc_unseal(k, id, obj.data, obj.len - 1, &h, &out),
                     REPLICATE_EARCHIVE_OBJECT);
    assert_int_equal(arc_unseal(k, id, obj.data, 40, &h, &out),
                     REPLICATE_EARCHIVE_OBJECT);
    /* Another archive's. */
    assert_int_equal(arc_unseal(k, other, obj.data, obj.len, &h, &out),
                     REPLICATE_EARCHIVE_FOREIGN);
    /* Plaintext read with a key, or encrypted read without: refused. */
    assert_int_equal(
        arc_unseal(enc ? &none : &keys, id, obj.data, obj.len, &h, &out),
        REPLICATE_EARCHIVE_KEY);
    replicate_buf_free(&obj);
    replicate_buf_free(&out);
  }

  /* A tampered ciphertext whose checksum is made good again: the tag. */
  replicate_buf obj = {0}, out = {0};
  seal(&keys, id, payload, sizeof payload, &obj);
  obj.data[ARC_HEADER + 10] ^= 1;
  XXH64_hash_t sum;
  {
    XXH3_state_t *st = XXH3_createState();
    XXH3_64bits_reset(st);
    XXH3_64bits_update(st, obj.data, ARC_OFF_CHECKSUM);
    XXH3_64bits_update(st, obj.data + ARC_HEADER, obj.len - ARC_HEADER);
    sum = XXH3_64bits_digest(st);
    XXH3_freeState(st);
  }
  arc_put64(obj.data + ARC_OFF_CHECKSUM, sum);
  arc_header h;
  assert_int_equal(arc_unseal(&keys, id, obj.data, obj.len, &h, &out),
                   REPLICATE_EARCHIVE_OBJECT);
  obj.data[ARC_HEADER + 10] ^= 1;
  arc_put64(obj.data + ARC_OFF_CHECKSUM, 0);
  replicate_buf_free(&obj);

  /* A rotation: sealed under a, read with "b then a"; not with "b" alone. */
  seal(&keys, id, payload, 100, &obj);
  char both[200];
  snprintf(both, sizeof both, "%s\n%s\n", key_b, key_a);
  char *kf2 = key_file(dir, "keys2", both),
       *kf3 = key_file(dir, "keys3", key_b);
  arc_keys rotated, only_b;
  assert_int_equal(arc_keys_load(kf2, &rotated, err, sizeof err), 0);
  assert_int_equal(rotated.count, 2);
  assert_int_equal(arc_unseal(&rotated, id, obj.data, obj.len, &h, &out), 0);
  assert_int_equal(arc_keys_load(kf3, &only_b, err, sizeof err), 0);
  assert_int_equal(arc_unseal(&only_b, id, obj.data, obj.len, &h, &out),
                   REPLICATE_EARCHIVE_KEY);
  replicate_buf_free(&obj);
  replicate_buf_free(&out);
  free(kf);
  free(kf2);
  free(kf3);
  test_rmtree(dir);
}

static void test_key_file_errors(void **state)
{
  (void)state;
  char *dir = test_tmpdir("arckey");
  arc_keys k;
  char err[256], *p;
  assert_int_equal(arc_keys_load("/nonexistent/keyfile", &k, err, sizeof err),
                   REPLICATE_EARCHIVE_KEY);
  assert_non_null(strstr(err, "/nonexistent/keyfile"));
  const char *bad[] = {
      "", "0011",
      "zz112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
      "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff00"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    p = key_file(dir, "bad", bad[i]);
    assert_int_equal(arc_keys_load(p, &k, err, sizeof err),
                     REPLICATE_EARCHIVE_KEY);
    assert_int_equal(k.count, 0);
    free(p);
  }
  char three[300];
  snprintf(three, sizeof three, "%s\n%s\n%s\n", key_a, key_b, key_a);
  p = key_file(dir, "three", three);
  assert_int_equal(arc_keys_load(p, &k, err, sizeof err),
                   REPLICATE_EARCHIVE_KEY);
  free(p);
  /* Opening an archive with an unusable key fails: nothing to write with. */
  replicate_archive *a = NULL;
  replicate_archive_options o = {.url = "file:///tmp",
                                 .key_file = "/nonexistent/k"};
  assert_int_equal(replicate_archive_open(&o, &a), REPLICATE_EARCHIVE_KEY);
  assert_non_null(strstr(replicate_archive_last_error(a), "/nonexistent/k"));
  replicate_archive_close(a);
  test_rmtree(dir);
}

static void test_key_names(void **state)
{
  (void)state;
  char key[ARC_KEY_MAX];
  arc_name n;
  arc_key_segment(key, 2, 10, 20, 12345, 0xabcdef01u);
  assert_int_equal(arc_key_parse(key, &n), 0);
  assert_int_equal(n.kind, ARC_SEGMENT);
  assert_int_equal(n.epoch, 2);
  assert_int_equal(n.first_seq, 10);
  assert_int_equal(n.last_seq, 20);
  assert_int_equal(n.time_ns, 12345);
  assert_int_equal(n.key_id, 0xabcdef01u);
  arc_key_base(key, 2, 7, 99, 0);
  assert_int_equal(arc_key_parse(key, &n), 0);
  assert_int_equal(n.kind, ARC_BASE);
  assert_int_equal(n.first_seq, 7);
  assert_int_equal(arc_key_parse("e/0000000000000002/s/junk", &n),
                   REPLICATE_EARCHIVE_OBJECT);
  assert_int_equal(arc_key_parse("epochs/00000000000000", &n),
                   REPLICATE_EARCHIVE_OBJECT);
}

/* ---------------------------------------------------------------------- */
/* A primary archiving */

typedef struct node {
  char *dir, *arc_dir, *url, *kf;
  loom *l;
  replicate_archiver *ar;
  uint64_t low;
  test_rng rng;
  /* As a standby's archiver is fed: frames (on_frame), not commits. */
  replicate_encoder *enc; /* non-NULL: feed frames */
  uint64_t skip_seq;      /* this seq's frame is not fed (0: none) */
  uint64_t arena;         /* pages (0: ARENA_PAGES) */
} node;

static uint64_t node_arena(const node *n)
{
  return n->arena ? n->arena : ARENA_PAGES;
}

static int hook(void *ctx, loom *l, const loom_commit *c)
{
  node *n = ctx;
  if (!n->ar)
    return 0;
  if (!n->enc)
    return replicate_archiver_on_commit(n->ar, l, c);
  replicate_buf f = {0};
  assert_int_equal(replicate_frame_encode_commit(n->enc, l, c, &f), 0);
  if (c->after.seq != n->skip_seq)
    replicate_archiver_on_frame(n->ar, f.data, f.len);
  replicate_buf_free(&f);
  return 0;
}

static void watermarks(void *ctx, uint64_t *low, uint64_t *high)
{
  node *n = ctx;
  *low = n->low;
  *high = node_arena(n);
}

static void node_open(node *n)
{
  loom_options o = {.arena_pages = node_arena(n),
                    .flags = LOOM_CREATE | LOOM_APPLY_ASYNC,
                    .on_commit = hook,
                    .commit_ctx = n,
                    .watermarks = watermarks,
                    .watermarks_ctx = n};
  assert_int_equal(loom_open(n->dir, &o, &n->l), 0);
  loom_position pos;
  loom_store_position(loom_get_store(n->l), &pos);
  n->low = pos.pages;
}

static replicate_archiver_options archiver_options(node *n, const char *who)
{
  replicate_archiver_options o = {
      .access = {.url = n->url, .key_file = n->kf},
      .store = loom_get_store(n->l),
      .interval_seconds = 0.05,
      .writer_id = who,
  };
  return o;
}

/* The node's directories and store, arena pages (0: ARENA_PAGES), no
 * archiver yet. */
static void node_prepare(node *n, bool encrypted, uint64_t arena)
{
  memset(n, 0, sizeof *n);
  n->arena = arena;
  n->rng.state = 7;
  n->dir = test_tmpdir("arcnode");
  n->arc_dir = test_tmpdir("arcstore");
  n->url = xmalloc(strlen(n->arc_dir) + 8);
  sprintf(n->url, "file://%s", n->arc_dir);
  if (encrypted)
    n->kf = key_file(n->dir, "archive.key", key_a);
  node_open(n);
}

static void node_archive(node *n)
{
  replicate_archiver_options o = archiver_options(n, "node-1");
  assert_int_equal(replicate_archiver_start(&o, &n->ar), 0);
}

static void node_start(node *n, bool encrypted)
{
  node_prepare(n, encrypted, 0);
  node_archive(n);
}

/* One save: some pages get the secret and random bytes. */
static void node_save(node *n)
{
  if (n->low < 8)
    n->low += 2;
  else if (rng_next(&n->rng) % 4 == 0 && n->low < node_arena(n) / 2)
    n->low++;
  for (int i = 0; i < 3; i++) {
    uint8_t *page = loom_page(n->l, rng_next(&n->rng) % n->low);
    size_t at = (size_t)(rng_next(&n->rng) % (PS - 256));
    memcpy(page + at, secret, sizeof secret - 1);
    for (int j = 0; j < 32; j++)
      page[rng_next(&n->rng) % PS] = (uint8_t)rng_next(&n->rng);
  }
  assert_int_equal(loom_save(n->l, n->low, node_arena(n)), 0);
}

static void node_position(node *n, loom_position *pos)
{
  loom_store_position(loom_get_store(n->l), pos);
}

static void node_stop(node *n)
{
  replicate_archiver_stop(n->ar);
  n->ar = NULL;
  assert_int_equal(loom_close(n->l), 0);
  test_rmtree(n->dir);
  test_rmtree(n->arc_dir);
  free(n->url);
  free(n->kf);
}

static replicate_archive *open_archive(node *n)
{
  replicate_archive *a = NULL;
  replicate_archive_options o = {.url = n->url, .key_file = n->kf};
  assert_int_equal(replicate_archive_open(&o, &a), 0);
  return a;
}

/* Restores target into a fresh directory: the rc, the position, and the
 * checksum loom_verify recomputes. */
static int restore(node *n, replicate_restore_target t, loom_position *pos,
                   char *err, size_t errlen)
{
  replicate_archive *a = open_archive(n);
  char *out = test_tmpdir("arcout");
  int rc = replicate_archive_restore(a, &t, out, pos);
  snprintf(err, errlen, "%s", replicate_archive_last_error(a));
  if (rc == 0) {
    loom_position rec;
    uint64_t computed;
    assert_int_equal(loom_verify(out, &rec, &computed), 0);
    assert_true(loom_position_same_epoch(&rec, pos));
    assert_int_equal(computed, pos->checksum);
  }
  replicate_archive_close(a);
  test_rmtree(out);
  return rc;
}

/* Polls ar's status until last_error holds text (and, with stopped,
 * archiving stopped), for up to 5 s; asserts it did. */
static void wait_error(replicate_archiver *ar, const char *text, bool stopped,
                       replicate_archive_status *st)
{
  int64_t deadline = test_now_ms() + 5000;
  do {
    test_pause_ms(10);
    replicate_archiver_status(ar, st);
  } while (
      (strstr(st->last_error, text) == NULL || (stopped && !st->stopped)) &&
      test_now_ms() < deadline);
  assert_non_null(strstr(st->last_error, text));
  assert_int_equal(st->stopped, stopped);
}

/* The newest restore is the node's position. */
static void assert_restores_newest(node *n)
{
  loom_position want, got;
  node_position(n, &want);
  char err[800];
  replicate_restore_target newest = {.kind = REPLICATE_RESTORE_NEWEST,
                                     .epoch = -1};
  assert_int_equal(restore(n, newest, &got, err, sizeof err), 0);
  assert_true(loom_position_same(&got, &want));
}

static int64_t real_now_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Polls CLOCK_REALTIME (commit times' clock) until it is past t. */
static void wait_realtime_past(int64_t t)
{
  TEST_WAIT_UNTIL(real_now_ns() > t, 1000);
  assert_true(real_now_ns() > t);
}

static void saves_and_drain(node *n, int count)
{
  for (int i = 0; i < count; i++)
    node_save(n);
  assert_int_equal(replicate_archiver_drain(n->ar, 10), 1);
}

static void archive_and_restore(bool encrypted)
{
  node n;
  node_start(&n, encrypted);
  saves_and_drain(&n, 5);
  uint64_t mid_seq = 5;
  uint64_t mid_epoch, mid_sum;
  assert_int_equal(loom_store_checksum_at(loom_get_store(n.l), mid_seq,
                                          &mid_epoch, &mid_sum),
                   1);
  /* A time between seq 5's commit and seq 6's: the clock past the one,
   * the next commits past it. */
  loom_position at5;
  node_position(&n, &at5);
  wait_realtime_past(at5.commit_time_ns);
  int64_t between = real_now_ns();
  wait_realtime_past(between);
  saves_and_drain(&n, 12);
  loom_position want;
  node_position(&n, &want);
  assert_int_equal(want.seq, 17);

  replicate_archive_status st;
  replicate_archiver_status(n.ar, &st);
  assert_int_equal(st.uploaded_seq, 17);
  assert_int_equal(st.lag_frames, 0);
  assert_true(st.bases >= 1);
  assert_string_equal(st.last_error, "");
  assert_true(st.requests.puts >= 3);
  /* Idle: no request at all over four wake-ups that found nothing to do. */
  replicate_archive_status idle = st;
  TEST_WAIT_UNTIL((replicate_archiver_status(n.ar, &idle),
                   idle.idle_wakeups >= st.idle_wakeups + 4),
                  5000);
  assert_true(idle.idle_wakeups >= st.idle_wakeups + 4);
  assert_memory_equal(&idle.requests, &st.requests, sizeof st.requests);

  char err[800];
  loom_position got;
  replicate_restore_target newest = {.kind = REPLICATE_RESTORE_NEWEST,
                                     .epoch = -1};
  assert_int_equal(restore(&n, newest, &got, err, sizeof err), 0);
  assert_true(loom_position_same_epoch(&got, &want));
  replicate_restore_target by_seq = {
      .kind = REPLICATE_RESTORE_SEQ, .seq = 5, .epoch = -1};
  assert_int_equal(restore(&n, by_seq, &got, err, sizeof err), 0);
  assert_int_equal(got.seq, 5);
  assert_int_equal(got.checksum, mid_sum);
  replicate_restore_target by_time = {
      .kind = REPLICATE_RESTORE_TIME, .time_ns = between, .epoch = -1};
  assert_int_equal(restore(&n, by_time, &got, err, sizeof err), 0);
  assert_int_equal(got.seq, 5);
  replicate_restore_target too_far = {
      .kind = REPLICATE_RESTORE_SEQ, .seq = 99, .epoch = -1};
  assert_int_equal(restore(&n, too_far, &got, err, sizeof err),
                   REPLICATE_EARCHIVE_NOPOS);

  /* Verify reads every object and drills a restore. */
  replicate_archive *a = open_archive(&n);
  replicate_archive_verify_report rep;
  assert_int_equal(replicate_archive_verify(a, n.dir, &rep), 0);
  assert_true(rep.objects >= 2);
  assert_int_equal(rep.newest.seq, 17);
  replicate_archive_close(a);

  /* Under a key, no object holds the page bytes in the clear. */
  if (encrypted) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "grep -rqa '%.12s' %s", secret, n.arc_dir);
    assert_int_not_equal(system(cmd), 0);
  } else {
    char cmd[1200]; /* the check above can see plaintext: segments hold it */
    snprintf(cmd, sizeof cmd, "grep -rqa '%.12s' %s/e", secret, n.arc_dir);
    assert_int_equal(system(cmd), 0);
  }
  node_stop(&n);
}

static void test_archive_restore_plain(void **state)
{
  (void)state;
  archive_and_restore(false);
}

static void test_archive_restore_encrypted(void **state)
{
  (void)state;
  archive_and_restore(true);
}

/* ---------------------------------------------------------------------- */
/* Restore writes the image once, straight into a new directory */

/* Restores t into out (kept): the rc and the position. */
static int restore_into(node *n, replicate_restore_target t, const char *out,
                        loom_position *pos)
{
  replicate_archive *a = open_archive(n);
  int rc = replicate_archive_restore(a, &t, out, pos);
  replicate_archive_close(a);
  return rc;
}

/* Whether files a and b hold the same bytes (compared 64 KiB at a time:
 * the streamed restore's tests compare images of tens of MiB). */
static bool same_bytes(const char *a, const char *b)
{
  FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
  bool same = fa && fb;
  static char ba[1 << 16], bb[1 << 16];
  for (size_t na = 1; same && na > 0;) {
    na = fread(ba, 1, sizeof ba, fa);
    size_t nb = fread(bb, 1, sizeof bb, fb);
    same = na == nb && memcmp(ba, bb, na) == 0;
  }
  if (fa)
    fclose(fa);
  if (fb)
    fclose(fb);
  return same;
}

static bool exists_in(const char *dir, const char *name)
{
  char path[1200];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  return access(path, F_OK) == 0;
}

/* The node's image as of now, copied (loom_store_backup) into a new
 * directory: the caller test_rmtree()s it. */
static char *image_now(node *n, const char *tag)
{
  char *dir = test_tmpdir(tag);
  assert_int_equal(loom_store_backup(loom_get_store(n->l), dir), 0);
  return dir;
}

/* A restore by seq and of the newest is byte for byte the primary's image
 * at that seq, though the image shrank and grew between (frames applied
 * in memory, the image written once), and no work directory is left. */
static void test_restore_byte_identical(void **state)
{
  (void)state;
  node n;
  node_start(&n, false);
  saves_and_drain(&n, 6);
  loom_position at6;
  node_position(&n, &at6);
  char *image6 = image_now(&n, "arcimg6");
  memset(loom_page(n.l, 0), 0x5a, 64); /* a change, and a shorter image */
  n.low -= 2;
  assert_int_equal(loom_save(n.l, n.low, ARENA_PAGES), 0);
  saves_and_drain(&n, 9);
  loom_position want;
  node_position(&n, &want);
  char *image_last = image_now(&n, "arcimglast");

  char *out = test_tmpdir("arcsame");
  loom_position got;
  replicate_restore_target by_seq = {
      .kind = REPLICATE_RESTORE_SEQ, .seq = at6.seq, .epoch = -1};
  assert_int_equal(restore_into(&n, by_seq, out, &got), 0);
  assert_true(loom_position_same_epoch(&got, &at6));
  char a[1200], b[1200];
  snprintf(a, sizeof a, "%s/image", out);
  snprintf(b, sizeof b, "%s/image", image6);
  assert_true(same_bytes(a, b));
  assert_false(exists_in(out, REPLICATE_RESTORE_WORK_DIR));
  loom_position rec;
  uint64_t computed;
  assert_int_equal(loom_verify(out, &rec, &computed), 0);
  assert_true(loom_position_same_epoch(&rec, &at6));
  test_rmtree(out);

  out = test_tmpdir("arcsame");
  replicate_restore_target newest = {.kind = REPLICATE_RESTORE_NEWEST,
                                     .epoch = -1};
  assert_int_equal(restore_into(&n, newest, out, &got), 0);
  assert_true(loom_position_same_epoch(&got, &want));
  snprintf(a, sizeof a, "%s/image", out);
  snprintf(b, sizeof b, "%s/image", image_last);
  assert_true(same_bytes(a, b));
  assert_int_equal(loom_verify(out, &rec, &computed), 0);
  test_rmtree(out);
  test_rmtree(image6);
  test_rmtree(image_last);
  node_stop(&n);
}

static void make_file(const char *dir, const char *name)
{
  char path[1200];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  write_text(path, "x");
}

static void make_work_dir(const char *out)
{
  char path[1200];
  snprintf(path, sizeof path, "%s/%s", out, REPLICATE_RESTORE_WORK_DIR);
  assert_int_equal(mkdir(path, 0700), 0);
  snprintf(path, sizeof path, "%s/%s/image", out, REPLICATE_RESTORE_WORK_DIR);
  write_text(path, "half an image");
}

/* What a restore writes into: an empty directory, or an interrupted
 * restore (its work directory, no meta), started again; never a directory
 * with anything else in it, a store, or a restore still running. */
static void test_restore_out_dir(void **state)
{
  (void)state;
  node n;
  node_start(&n, false);
  saves_and_drain(&n, 4);
  loom_position want, got;
  node_position(&n, &want);
  replicate_restore_target newest = {.kind = REPLICATE_RESTORE_NEWEST,
                                     .epoch = -1};
  /* Interrupted: the work directory and files moved out of it, no meta. */
  char *out = test_tmpdir("arcredo");
  make_work_dir(out);
  make_file(out, "hashes");
  assert_int_equal(restore_into(&n, newest, out, &got), 0);
  assert_true(loom_position_same_epoch(&got, &want));
  assert_false(exists_in(out, REPLICATE_RESTORE_WORK_DIR));
  assert_int_equal(loom_verify(out, NULL, NULL), 0);
  /* A store: refused, left as it was. */
  make_work_dir(out);
  assert_int_equal(restore_into(&n, newest, out, &got), REPLICATE_EINVAL);
  assert_true(exists_in(out, "meta"));
  test_rmtree(out);
  /* Anything else: refused, left as it was. */
  out = test_tmpdir("arcother");
  make_file(out, "notes");
  assert_int_equal(restore_into(&n, newest, out, &got), REPLICATE_EINVAL);
  assert_true(exists_in(out, "notes"));
  test_rmtree(out);
  /* A restore that holds its work directory's lock is running: refused. */
  out = test_tmpdir("arcbusy");
  make_work_dir(out);
  char lock[1200];
  snprintf(lock, sizeof lock, "%s/%s/lock", out, REPLICATE_RESTORE_WORK_DIR);
  int fd = open(lock, O_RDWR | O_CREAT, 0600);
  assert_true(fd >= 0);
  assert_int_equal(flock(fd, LOCK_EX), 0);
  assert_int_equal(restore_into(&n, newest, out, &got), REPLICATE_EINVAL);
  assert_true(exists_in(out, REPLICATE_RESTORE_WORK_DIR "/image"));
  close(fd);
  test_rmtree(out);
  node_stop(&n);
}

/* ---------------------------------------------------------------------- */
/* Damaged archives: refused by name, never a wrong image */

typedef struct found {
  char path[2048];
} found;

/* The first file under dir/sub whose name starts with prefix. */
static bool find_object(const char *dir, const char *sub, const char *prefix,
                        found *out)
{
  char path[900];
  snprintf(path, sizeof path, "%s/%s", dir, sub);
  DIR *d = opendir(path);
  if (d == NULL)
    return false;
  struct dirent *e;
  bool ok = false;
  while (!ok && (e = readdir(d)) != NULL)
    if (strncmp(e->d_name, prefix, strlen(prefix)) == 0 &&
        e->d_name[0] != '.') {
      snprintf(out->path, sizeof out->path, "%s/%s", path, e->d_name);
      ok = true;
    }
  closedir(d);
  return ok;
}

static void flip_byte(const char *path, long at)
{
  FILE *f = fopen(path, "r+b");
  assert_non_null(f);
  fseek(f, at, at < 0 ? SEEK_END : SEEK_SET);
  int c = fgetc(f);
  fseek(f, -1, SEEK_CUR);
  fputc(c ^ 0x40, f);
  fclose(f);
}

static void copy_file(const char *from, const char *to)
{
  char cmd[8192];
  snprintf(cmd, sizeof cmd, "cp '%s' '%s'", from, to);
  assert_int_equal(system(cmd), 0);
}

static void test_damaged_refused(void **state)
{
  (void)state;
  node n;
  node_start(&n, false);
  for (int round = 0; round < 3; round++)
    saves_and_drain(&n, 4);
  char sub[64];
  snprintf(sub, sizeof sub, "e/%016x/s", 1u);
  found seg;
  assert_true(find_object(n.arc_dir, sub, "", &seg));
  const char *name = strrchr(seg.path, '/') + 1;
  char err[800];
  loom_position got;
  replicate_restore_target newest = {.kind = REPLICATE_RESTORE_NEWEST,
                                     .epoch = -1};
  assert_int_equal(restore(&n, newest, &got, err, sizeof err), 0);

  /* Tampered: a flipped payload byte. */
  flip_byte(seg.path, -5);
  assert_int_equal(restore(&n, newest, &got, err, sizeof err),
                   REPLICATE_EARCHIVE_OBJECT);
  assert_non_null(strstr(err, name));
  flip_byte(seg.path, -5);
  assert_int_equal(restore(&n, newest, &got, err, sizeof err), 0);

  /* Truncated. */
  char saved[1100];
  snprintf(saved, sizeof saved, "%s.saved", n.dir);
  copy_file(seg.path, saved);
  assert_int_equal(truncate(seg.path, 150), 0);
  assert_int_equal(restore(&n, newest, &got, err, sizeof err),
                   REPLICATE_EARCHIVE_OBJECT);
  assert_non_null(strstr(err, name));
  copy_file(saved, seg.path);

  /* Duplicated: the same seqs under a second key. */
  char dup[2100];
  snprintf(dup, sizeof dup, "%s", seg.path);
  memcpy(strrchr(dup, '.') - 16, "0000000000000001", 16); /* its time */
  copy_file(seg.path, dup);
  assert_int_equal(restore(&n, newest, &got, err, sizeof err),
                   REPLICATE_EARCHIVE_OBJECT);
  assert_non_null(strstr(err, "overlaps"));
  assert_non_null(strstr(err, name));
  unlink(dup);
  /* Reordered: two segments' contents swapped. */
  char list[4200], *names[8];
  size_t count = 0;
  snprintf(list, sizeof list, "%s/%s", n.arc_dir, sub);
  DIR *d = opendir(list);
  assert_non_null(d);
  struct dirent *e;
  while ((e = readdir(d)) != NULL && count < 8)
    if (e->d_name[0] != '.') {
      names[count] = xmalloc(strlen(list) + strlen(e->d_name) + 2);
      sprintf(names[count++], "%s/%s", list, e->d_name);
    }
  closedir(d);
  assert_true(count >= 2);
  char tmp[2200];
  snprintf(tmp, sizeof tmp, "%s.swap", n.dir);
  assert_int_equal(rename(names[0], tmp), 0);
  assert_int_equal(rename(names[1], names[0]), 0);
  assert_int_equal(rename(tmp, names[1]), 0);
  assert_int_equal(restore(&n, newest, &got, err, sizeof err),
                   REPLICATE_EARCHIVE_FOREIGN);
  assert_non_null(strstr(err, "another position"));
  assert_int_equal(rename(names[0], tmp), 0);
  assert_int_equal(rename(names[1], names[0]), 0);
  assert_int_equal(rename(tmp, names[1]), 0);
  for (size_t i = 0; i < count; i++)
    free(names[i]);
  assert_int_equal(restore(&n, newest, &got, err, sizeof err), 0);

  /* Missing: the head claims a seq the objects cannot give. */
  assert_int_equal(rename(seg.path, saved), 0);
  assert_int_equal(restore(&n, newest, &got, err, sizeof err),
                   REPLICATE_EARCHIVE_NOPOS);
  assert_int_equal(rename(saved, seg.path), 0);

  /* Foreign: another archive's object in its place. */
  node other;
  node_start(&other, false);
  saves_and_drain(&other, 3);
  found theirs, ours;
  char bsub[64];
  snprintf(bsub, sizeof bsub, "e/%016x/b", 1u);
  assert_true(find_object(other.arc_dir, bsub, "", &theirs));
  assert_true(find_object(n.arc_dir, bsub, "", &ours));
  copy_file(ours.path, saved);
  copy_file(theirs.path, ours.path);
  assert_int_equal(restore(&n, newest, &got, err, sizeof err),
                   REPLICATE_EARCHIVE_FOREIGN);
  assert_non_null(strstr(err, strrchr(ours.path, '/') + 1));
  copy_file(saved, ours.path);
  unlink(saved);
  assert_int_equal(restore(&n, newest, &got, err, sizeof err), 0);
  node_stop(&other);
  node_stop(&n);
}

/* ---------------------------------------------------------------------- */
/* The streamed restore: pages at the importer's chunk boundaries, pages
 * past the base's size, an image that shrinks and grows again, a base
 * read in several pieces; and memory that does not grow with the image */

#define CHUNK LOOM_IMPORT_CHUNK_PAGES

/* Page pg gets random bytes: everywhere (whole), or a few of them (a
 * delta of a few stretches). */
static void scribble(node *n, uint64_t pg, bool whole)
{
  uint8_t *p = loom_page(n->l, pg);
  if (whole) {
    for (size_t i = 0; i < PS; i += 8) {
      uint64_t v = rng_next(&n->rng);
      memcpy(p + i, &v, 8);
    }
    return;
  }
  for (int j = 0; j < 24; j++)
    p[rng_next(&n->rng) % PS] = (uint8_t)rng_next(&n->rng);
}

/* One commit: the image at pages, the pages in touch scribbled. */
static void save_touching(node *n, uint64_t pages, const uint64_t *touch,
                          size_t k)
{
  n->low = pages;
  for (size_t i = 0; i < k; i++)
    scribble(n, touch[i], i % 3 == 2);
  assert_int_equal(loom_save(n->l, pages, node_arena(n)), 0);
}

typedef struct chunk_step {
  uint64_t pages;
  uint64_t touch[6];
  size_t k;
} chunk_step;

static const chunk_step chunk_steps[] = {
    {3 * CHUNK + 40, {0, CHUNK - 1, CHUNK, 2 * CHUNK - 1, 2 * CHUNK, 3 * CHUNK + 39}, 6},
    {4 * CHUNK + 7, {3 * CHUNK + 40, 4 * CHUNK - 1, 4 * CHUNK, 4 * CHUNK + 6}, 4},
    {4 * CHUNK + 7, {CHUNK - 1, CHUNK, 4 * CHUNK}, 3},
    {2 * CHUNK + 1, {2 * CHUNK, 1}, 2},
    {4 * CHUNK + 100, {4 * CHUNK, 4 * CHUNK + 99, 3 * CHUNK + 60}, 3},
    {3 * CHUNK, {3 * CHUNK - 1, CHUNK - 1}, 2},
    {3 * CHUNK, {3 * CHUNK - 1, 7, 3 * CHUNK - 2}, 3},
};
#define CHUNK_STEPS (sizeof chunk_steps / sizeof chunk_steps[0])

/* A restore of seq into a new directory is byte for byte image_dir's
 * image, and loom_verify passes on it. */
static void assert_restores_as(node *n, uint64_t seq, const char *image_dir)
{
  char *out = test_tmpdir("arcchunk");
  loom_position got, rec;
  uint64_t computed;
  replicate_restore_target t = {
      .kind = REPLICATE_RESTORE_SEQ, .seq = seq, .epoch = -1};
  assert_int_equal(restore_into(n, t, out, &got), 0);
  assert_int_equal(got.seq, seq);
  char a[1200], b[1200];
  snprintf(a, sizeof a, "%s/image", out);
  snprintf(b, sizeof b, "%s/image", image_dir);
  assert_true(same_bytes(a, b));
  assert_int_equal(loom_verify(out, &rec, &computed), 0);
  assert_true(loom_position_same_epoch(&rec, &got));
  test_rmtree(out);
}

/* A damaged base is refused naming it, however far its stream was read. */
static void assert_base_refused(node *n)
{
  char sub[64], err[800];
  snprintf(sub, sizeof sub, "e/%016x/b", 1u);
  found base;
  assert_true(find_object(n->arc_dir, sub, "", &base));
  const char *name = strrchr(base.path, '/') + 1;
  struct stat st;
  assert_int_equal(stat(base.path, &st), 0);
  loom_position got;
  replicate_restore_target newest = {.kind = REPLICATE_RESTORE_NEWEST,
                                     .epoch = -1};
  /* The end, the middle, the payload's start; the header's archive id,
   * first seq and key id: a damaged header is EARCHIVE_OBJECT (the
   * checksum first), not FOREIGN or KEY. */
  long at[] = {-3, st.st_size / 2, 100, 20, 40, 56};
  for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
    flip_byte(base.path, at[i]);
    assert_int_equal(restore(n, newest, &got, err, sizeof err),
                     REPLICATE_EARCHIVE_OBJECT);
    assert_non_null(strstr(err, name));
    flip_byte(base.path, at[i]);
  }
  char saved[1100];
  snprintf(saved, sizeof saved, "%s.saved", n->dir);
  copy_file(base.path, saved);
  assert_int_equal(truncate(base.path, st.st_size - st.st_size / 3), 0);
  assert_int_equal(restore(n, newest, &got, err, sizeof err),
                   REPLICATE_EARCHIVE_OBJECT);
  assert_non_null(strstr(err, name));
  copy_file(saved, base.path);
  unlink(saved);
  assert_int_equal(restore(n, newest, &got, err, sizeof err), 0);
}

static void streamed_chunks(bool encrypted)
{
  node n;
  node_prepare(&n, encrypted, 4 * CHUNK + 160);
  /* The base: every page random (it compresses to more than one piece of
   * ARC_PIECE_BYTES), at seq 1. */
  n.low = chunk_steps[0].pages;
  for (uint64_t pg = 0; pg < n.low; pg++)
    scribble(&n, pg, true);
  assert_int_equal(loom_save(n.l, n.low, node_arena(&n)), 0);
  node_archive(&n);
  /* The base at seq 1 (restored below): uploaded before the next save, or
   * a slow start (an encrypted base on a loaded machine) takes it later. */
  assert_int_equal(replicate_archiver_drain(n.ar, 30), 1);
  char *images[CHUNK_STEPS + 1];
  uint64_t seqs[CHUNK_STEPS + 1];
  loom_position pos;
  for (size_t i = 0; i <= CHUNK_STEPS; i++) {
    if (i > 0)
      save_touching(&n, chunk_steps[i - 1].pages, chunk_steps[i - 1].touch,
                    chunk_steps[i - 1].k);
    node_position(&n, &pos);
    seqs[i] = pos.seq;
    images[i] = image_now(&n, "arcchunkimg");
  }
  assert_int_equal(replicate_archiver_drain(n.ar, 10), 1);
  for (size_t i = 0; i <= CHUNK_STEPS; i++) {
    assert_restores_as(&n, seqs[i], images[i]);
    test_rmtree(images[i]);
  }
  assert_base_refused(&n);
  node_stop(&n);
}

/* ---------------------------------------------------------------------- */
/* Forged objects, re-sealed with a good checksum: what only the restore's
 * own checks (archive_image.c S3, S4) can refuse */

/* The whole file at path (its length in *len). */
static uint8_t *read_whole(const char *path, size_t *len)
{
  char *slash = strrchr(path, '/');
  char dir[2048];
  snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
  uint8_t *b = test_read_file(dir, slash + 1, len);
  assert_non_null(b);
  return b;
}

/* The plaintext object at path opened (every check of arc_unseal made):
 * its header and payload. */
static void unseal_file(const char *path, arc_header *h, replicate_buf *payload)
{
  size_t len;
  uint8_t *obj = read_whole(path, &len);
  arc_keys none = {0};
  assert_int_equal(arc_unseal(&none, NULL, obj, len, h, payload), 0);
  free(obj);
}

/* Writes payload over the object at path, sealed again under h (its
 * kind, archive id, seqs and flags): a good checksum over forged bytes. */
static void reseal_file(const char *path, arc_header *h, const void *payload,
                        size_t len)
{
  arc_keys none = {0};
  replicate_buf obj = {0};
  assert_int_equal(arc_seal(&none, h, payload, len, &obj), 0);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(obj.data, 1, obj.len, f), obj.len);
  fclose(f);
  replicate_buf_free(&obj);
}

/* A frame to forge: the commit of seq, which changed one page, sent again
 * whole as bytes, claiming hash, its after checksum moved by after_delta. */
typedef struct forged {
  uint64_t seq, page, hash, after_delta;
  const uint8_t *bytes;
} forged;

/* The segment record at p (the frame of fg->seq re-encoded as fg says)
 * appended to out: the record's length. */
static size_t forge_record(const uint8_t *p, const forged *fg,
                           replicate_buf *out, bool *done)
{
  size_t n = (size_t)arc_get64(p);
  replicate_decoder *dec = NULL;
  assert_int_equal(replicate_decoder_new(NULL, &dec), 0);
  replicate_frame f;
  assert_int_equal(replicate_frame_decode(dec, p + 8, n, &f), 0);
  replicate_buf frame = {0};
  if (f.info.after.seq == fg->seq) {
    assert_int_equal(f.info.page_count, 1);
    replicate_page pg;
    replicate_frame_get_page(&f, 0, &pg);
    assert_int_equal(pg.page_number, fg->page);
    replicate_frame_info info = f.info;
    info.after.checksum += fg->after_delta;
    replicate_page_src src = {.page_number = fg->page,
                              .new_hash = fg->hash,
                              .new_page = fg->bytes};
    replicate_encoder *enc = NULL;
    assert_int_equal(replicate_encoder_new(1, &enc), 0);
    assert_int_equal(replicate_frame_encode(enc, &info, &src, 1, &frame), 0);
    replicate_encoder_free(enc);
    *done = true;
  } else {
    assert_int_equal(replicate_buf_append(&frame, p + 8, n), 0);
  }
  uint8_t len[8];
  arc_put64(len, frame.len);
  assert_int_equal(replicate_buf_append(out, len, 8), 0);
  assert_int_equal(replicate_buf_append(out, frame.data, frame.len), 0);
  replicate_buf_free(&frame);
  replicate_decoder_free(dec);
  return 8 + n;
}

/* Forges fg's frame in the segment of epoch 1 that holds it: that
 * segment's name in seg (its path in *path). */
static void forge_frame(node *n, const forged *fg, found *seg)
{
  char sub[64];
  snprintf(sub, sizeof sub, "%s/e/%016x/s", n->arc_dir, 1u);
  DIR *d = opendir(sub);
  assert_non_null(d);
  bool done = false;
  struct dirent *e;
  while (!done && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.')
      continue;
    snprintf(seg->path, sizeof seg->path, "%s/%s", sub, e->d_name);
    arc_header h;
    replicate_buf payload = {0}, out = {0};
    unseal_file(seg->path, &h, &payload);
    if (h.first_seq <= fg->seq && fg->seq <= h.last_seq) {
      for (size_t at = 0; at < payload.len;)
        at += forge_record(payload.data + at, fg, &out, &done);
      assert_true(done);
      reseal_file(seg->path, &h, out.data, out.len);
    }
    replicate_buf_free(&payload);
    replicate_buf_free(&out);
  }
  closedir(d);
  assert_true(done);
}

/* The plaintext object at path copied aside into saved, to put back. */
static void keep_aside(node *n, const char *path, char *saved, size_t cap)
{
  snprintf(saved, cap, "%s.kept", n->dir);
  copy_file(path, saved);
}

/* A restore of t is refused with want, naming object (its path), and
 * leaves no store behind. */
static void assert_forged_refused(node *n, uint64_t seq, int want,
                                  const char *object)
{
  char *out = test_tmpdir("arcforged");
  loom_position got;
  replicate_restore_target t = {
      .kind = REPLICATE_RESTORE_SEQ, .seq = seq, .epoch = -1};
  replicate_archive *a = open_archive(n);
  int rc = replicate_archive_restore(a, &t, out, &got);
  const char *err = replicate_archive_last_error(a);
  if (rc != want)
    print_error("restore of seq %" PRIu64 ": %d (%s), wanted %d\n", seq, rc,
                err, want);
  assert_int_equal(rc, want);
  assert_non_null(strstr(err, strrchr(object, '/') + 1));
  replicate_archive_close(a);
  assert_false(exists_in(out, "meta"));
  test_rmtree(out);
}

/* The node for the forgeries: a base at seq 1 (8 random pages), then
 * seq 2: page 3 rewritten whole (kept in p3), seq 3: page 5, random until
 * then, rewritten as mostly zeros (a WHOLE version of few runs over a
 * non-zero page), seq 4: a few bytes of page 3 (a delta), all archived;
 * the images at seqs 3 and 4 in img3 and img4. */
typedef struct forgery {
  node n;
  uint8_t p3[PS];
  char *img3, *img4;
} forgery;

static void forgery_start(forgery *fo)
{
  node *n = &fo->n;
  node_prepare(n, false, 0);
  n->low = 8;
  for (uint64_t pg = 0; pg < n->low; pg++)
    scribble(n, pg, true);
  assert_int_equal(loom_save(n->l, n->low, node_arena(n)), 0);
  node_archive(n);
  assert_int_equal(replicate_archiver_drain(n->ar, 10), 1); /* the base */
  scribble(n, 3, true);
  memcpy(fo->p3, loom_page(n->l, 3), PS);
  assert_int_equal(loom_save(n->l, n->low, node_arena(n)), 0);
  uint8_t *p5 = loom_page(n->l, 5);
  memset(p5, 0, PS);
  memcpy(p5 + 1000, secret, sizeof secret - 1);
  p5[PS - 1] = 0x77;
  assert_int_equal(loom_save(n->l, n->low, node_arena(n)), 0);
  fo->img3 = image_now(n, "arcforge3");
  scribble(n, 3, false);
  assert_int_equal(loom_save(n->l, n->low, node_arena(n)), 0);
  fo->img4 = image_now(n, "arcforge4");
  assert_int_equal(replicate_archiver_drain(n->ar, 10), 1);
  loom_position pos;
  node_position(n, &pos);
  assert_int_equal(pos.seq, 4);
}

static void forgery_stop(forgery *fo)
{
  test_rmtree(fo->img3);
  test_rmtree(fo->img4);
  node_stop(&fo->n);
}

/* A WHOLE version of few runs written over a page that held other bytes
 * restores byte for byte (the page is cleared before its runs). */
static void test_restore_whole_over_nonzero(void **state)
{
  (void)state;
  forgery fo;
  forgery_start(&fo);
  assert_restores_as(&fo.n, 3, fo.img3);
  assert_restores_as(&fo.n, 4, fo.img4);
  forgery_stop(&fo);
}

/* A frame whose page bytes are not those its hash names (the segment
 * re-sealed with a good checksum): REPLICATE_EPAGE_HASH naming the
 * segment, at its seq and past it; no store. */
static void test_forged_page_refused(void **state)
{
  (void)state;
  forgery fo;
  uint8_t bad[PS];
  forgery_start(&fo);
  memcpy(bad, fo.p3, PS);
  bad[PS / 2] ^= 0x40;
  forged fg = {.seq = 2, .page = 3, .hash = loom_page_hash(3, fo.p3),
               .bytes = bad};
  found seg;
  forge_frame(&fo.n, &fg, &seg);
  assert_forged_refused(&fo.n, 2, REPLICATE_EPAGE_HASH, seg.path);
  assert_forged_refused(&fo.n, 4, REPLICATE_EPAGE_HASH, seg.path);
  /* The same frame with its true bytes: restored again. */
  fg.bytes = fo.p3;
  forge_frame(&fo.n, &fg, &seg);
  assert_restores_as(&fo.n, 4, fo.img4);
  forgery_stop(&fo);
}

/* A frame whose pages are right but whose after checksum is not theirs
 * (re-sealed): REPLICATE_EAFTER_CHECKSUM naming the segment; no store. */
static void test_forged_after_checksum_refused(void **state)
{
  (void)state;
  forgery fo;
  forgery_start(&fo);
  forged fg = {.seq = 2, .page = 3, .hash = loom_page_hash(3, fo.p3),
               .bytes = fo.p3, .after_delta = 1};
  found seg;
  forge_frame(&fo.n, &fg, &seg);
  assert_forged_refused(&fo.n, 2, REPLICATE_EAFTER_CHECKSUM, seg.path);
  forgery_stop(&fo);
}

/* A base whose page bytes do not hash to the checksum in its stream
 * header (re-sealed): REPLICATE_EARCHIVE_OBJECT naming the base; no
 * store. */
static void test_forged_base_refused(void **state)
{
  (void)state;
  forgery fo;
  forgery_start(&fo);
  char sub[64], saved[1100];
  snprintf(sub, sizeof sub, "e/%016x/b", 1u);
  found base;
  assert_true(find_object(fo.n.arc_dir, sub, "", &base));
  keep_aside(&fo.n, base.path, saved, sizeof saved);
  arc_header h;
  replicate_buf payload = {0};
  unseal_file(base.path, &h, &payload);
  payload.data[payload.len - PS / 2] ^= 0x40; /* page 7: no frame writes it */
  reseal_file(base.path, &h, payload.data, payload.len);
  replicate_buf_free(&payload);
  assert_forged_refused(&fo.n, 1, REPLICATE_EARCHIVE_OBJECT, base.path);
  assert_forged_refused(&fo.n, 4, REPLICATE_EARCHIVE_OBJECT, base.path);
  copy_file(saved, base.path);
  unlink(saved);
  assert_restores_as(&fo.n, 4, fo.img4);
  forgery_stop(&fo);
}

static void test_restore_streamed_chunks(void **state)
{
  (void)state;
  streamed_chunks(false);
}

static void test_restore_streamed_chunks_encrypted(void **state)
{
  (void)state;
  streamed_chunks(true);
}

/* A field of /proc/self/status in KiB ("VmHWM:"), 0 if absent. */
static uint64_t status_kib(const char *field)
{
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  uint64_t kib = 0;
  while (f != NULL && fgets(line, sizeof line, f) != NULL)
    if (strncmp(line, field, strlen(field)) == 0)
      kib = strtoull(line + strlen(field), NULL, 10);
  if (f != NULL)
    fclose(f);
  return kib;
}

/* Whether the peak RSS could be reset to the current one. */
static bool reset_hwm(void)
{
  FILE *f = fopen("/proc/self/clear_refs", "w");
  bool ok = f != NULL && fputs("5", f) >= 0;
  if (f != NULL)
    ok = fclose(f) == 0 && ok;
  return ok;
}

#define BIG_PAGES (24u * 1024) /* 384 MiB of 16 KiB pages, random */

/* The peak RSS since reset_hwm (hwm: it could be reset) grew by less
 * than half of bytes over rss0 (KiB). Not under ASan, whose quarantine
 * keeps freed memory. */
static void assert_peak_under_half(bool hwm, uint64_t rss0, uint64_t bytes)
{
#ifndef __SANITIZE_ADDRESS__
  uint64_t peak = status_kib("VmHWM:");
  if (hwm && peak > rss0)
    assert_true((peak - rss0) * 1024 < bytes / 2);
#else
  (void)hwm;
  (void)rss0;
  (void)bytes;
#endif
}

/* The base of n's archive damaged a quarter in: the restore is refused
 * naming it, and its refusal (the base read again to its checksum and
 * tag) holds a piece at a time, not the base. */
static void refused_in_bounded_memory(node *n, replicate_restore_target *t,
                                      uint64_t image_bytes)
{
  char sub[64];
  snprintf(sub, sizeof sub, "e/%016x/b", 1u);
  found base;
  assert_true(find_object(n->arc_dir, sub, "", &base));
  struct stat sb;
  assert_int_equal(stat(base.path, &sb), 0);
  flip_byte(base.path, (long)(sb.st_size / 4));
  char *out = test_tmpdir("arcbigbad");
  replicate_archive *a = open_archive(n);
  bool hwm = reset_hwm();
  uint64_t rss0 = status_kib("VmRSS:");
  loom_position got;
  assert_int_equal(replicate_archive_restore(a, t, out, &got),
                   REPLICATE_EARCHIVE_OBJECT);
  assert_non_null(strstr(replicate_archive_last_error(a),
                         strrchr(base.path, '/') + 1));
  replicate_archive_close(a);
  assert_peak_under_half(hwm, rss0, image_bytes);
  test_rmtree(out);
}

/* A restore of a 384 MiB image holds less than half of it: by its own
 * accounting, and by the process's peak RSS (reset before it; not under
 * ASan, whose quarantine keeps what was freed). The image restored is
 * the primary's. */
static void test_restore_memory_bounded(void **state)
{
  (void)state;
  node n;
  node_prepare(&n, false, BIG_PAGES + 64);
  n.low = BIG_PAGES;
  for (uint64_t pg = 0; pg < n.low; pg++)
    scribble(&n, pg, true);
  assert_int_equal(loom_save(n.l, n.low, node_arena(&n)), 0);
  node_archive(&n);
  uint64_t touch[] = {0, CHUNK, BIG_PAGES - 1, BIG_PAGES + 3};
  save_touching(&n, BIG_PAGES + 4, touch, 4);
  assert_int_equal(replicate_archiver_drain(n.ar, 10), 1);
  char *image = image_now(&n, "arcbigimg");
  replicate_archiver_stop(n.ar); /* no other thread allocating meanwhile */
  n.ar = NULL;
  uint64_t image_bytes = (uint64_t)BIG_PAGES * PS;

  char *out = test_tmpdir("arcbig");
  replicate_archive *a = open_archive(&n);
  bool hwm = reset_hwm();
  uint64_t rss0 = status_kib("VmRSS:");
  loom_position got;
  replicate_restore_target newest = {.kind = REPLICATE_RESTORE_NEWEST,
                                     .epoch = -1};
  assert_int_equal(replicate_archive_restore(a, &newest, out, &got), 0);
  uint64_t held = replicate_archive_restore_memory(a);
  replicate_archive_close(a);
  assert_true(held > 0);
  assert_true(held < image_bytes / 2);
  assert_peak_under_half(hwm, rss0, image_bytes);
  char x[1200], y[1200];
  snprintf(x, sizeof x, "%s/image", out);
  snprintf(y, sizeof y, "%s/image", image);
  assert_true(same_bytes(x, y));
  test_rmtree(out);
  test_rmtree(image);
  refused_in_bounded_memory(&n, &newest, image_bytes);
  node_stop(&n);
}

/* A second writer at the same epoch stops with last_error; the first
 * carries on. */
static void test_second_writer_stops(void **state)
{
  (void)state;
  node n;
  node_start(&n, false);
  saves_and_drain(&n, 2);
  replicate_archiver *second = NULL;
  replicate_archiver_options o = archiver_options(&n, "node-2");
  assert_int_equal(replicate_archiver_start(&o, &second), 0);
  replicate_archive_status st;
  wait_error(second, "another node", true, &st);
  replicate_archiver_stop(second);
  saves_and_drain(&n, 2);
  replicate_archiver_status(n.ar, &st);
  assert_false(st.stopped);
  assert_int_equal(st.uploaded_seq, 4);
  node_stop(&n);
}

static int snap_open(void *ctx, loom_snapshot **out)
{
  return loom_store_snapshot_open(ctx, out);
}

static void snap_close(void *ctx, loom_snapshot *snap)
{
  (void)ctx;
  loom_snapshot_close(snap);
}

/* Fed frames as a standby's receiver passes them (store NULL, bases from
 * the snapshot hooks, W1 waiting for the first frame): the archive
 * restores to the node; a frame that never came (inside a base image) is a
 * gap, and a base follows, so the newest still restores. */
static void test_fed_frames(void **state)
{
  (void)state;
  node n;
  node_start(&n, false);
  replicate_archiver_stop(n.ar);
  n.ar = NULL;
  assert_int_equal(replicate_encoder_new(1, &n.enc), 0);
  replicate_archiver_options o = archiver_options(&n, "standby-1");
  o.store = NULL;
  o.snapshot_open = snap_open;
  o.snapshot_close = snap_close;
  o.snapshot_ctx = loom_get_store(n.l);
  loom_store_lineage(loom_get_store(n.l), &o.lineage);
  assert_int_equal(replicate_archiver_start(&o, &n.ar), 0);
  replicate_archive_status st;
  replicate_archiver_status(n.ar, &st);
  assert_int_equal(st.requests.puts + st.requests.gets, 0); /* waits */
  saves_and_drain(&n, 6);
  assert_restores_newest(&n);
  replicate_archiver_status(n.ar, &st);
  assert_false(st.gap);
  n.skip_seq = 8;
  saves_and_drain(&n, 4);
  replicate_archiver_status(n.ar, &st);
  assert_true(st.gap);
  assert_int_equal(st.uploaded_seq, 10);
  assert_restores_newest(&n);
  replicate_archive *a = open_archive(&n);
  replicate_archive_verify_report rep;
  assert_int_equal(replicate_archive_verify(a, n.dir, &rep), 0);
  replicate_archive_close(a);
  replicate_encoder_free(n.enc);
  node_stop(&n);
}

/* A writer stopped after a base and before its head (a crash) uploads the
 * same base again at its restart (same seq, same key): retention counts
 * it once and keeps it (it deleted the only base before). */
static void test_base_again_after_lost_head(void **state)
{
  (void)state;
  node n;
  node_start(&n, false);
  replicate_archiver_stop(n.ar);
  replicate_archiver_options o = archiver_options(&n, "node-1");
  o.base_interval_seconds = 0.001; /* a base after the segment */
  o.keep_bases = 100;
  assert_int_equal(replicate_archiver_start(&o, &n.ar), 0);
  replicate_archive_status st;
  TEST_WAIT_UNTIL((replicate_archiver_status(n.ar, &st), st.bases >= 1), 5000);
  saves_and_drain(&n, 3);
  TEST_WAIT_UNTIL((replicate_archiver_status(n.ar, &st), st.bases >= 2), 5000);
  assert_true(st.bases >= 2); /* at 0 and at 3 */
  replicate_archiver_stop(n.ar);
  char head[1200];
  snprintf(head, sizeof head, "%s/e/%016x/head", n.arc_dir, 1);
  assert_int_equal(unlink(head), 0); /* the crash: the base's head lost */
  o.keep_bases = 1;
  assert_int_equal(replicate_archiver_start(&o, &n.ar), 0);
  TEST_WAIT_UNTIL((replicate_archiver_status(n.ar, &st),
                   st.uploaded_seq == 3 && st.last_error[0] == '\0'),
                  5000);
  assert_int_equal(st.uploaded_seq, 3);
  assert_int_equal(replicate_archiver_drain(n.ar, 10), 1);
  /* Retention follows the head in the same wake-up: the old base goes. */
  TEST_WAIT_UNTIL((replicate_archiver_status(n.ar, &st), st.bases <= 1), 5000);
  assert_int_equal(st.bases, 1);
  assert_restores_newest(&n);
  node_stop(&n);
}

static int count_gaps(void *ctx, const replicate_archive_entry *e)
{
  *(int *)ctx += e->kind == REPLICATE_ARCHIVE_GAP;
  return 0;
}

/* A base due by time (every wake-up here) uploads the commits queued
 * since the last segment first: no gap is recorded, every seq restores. */
/* Bases every tick (one per wake-up with commits) and 20 commits: no gap,
 * and a restore at every third seq is the node's checksum there. With
 * scratch, every base is sealed into an unlinked file in it (no image is
 * small enough for memory), which is empty again at the end. */
static void periodic_bases(bool encrypted, const char *scratch)
{
  node n;
  node_start(&n, encrypted);
  replicate_archiver_stop(n.ar);
  replicate_archiver_options o = archiver_options(&n, "node-1");
  o.base_interval_seconds = 0.001;
  o.keep_bases = 100;
  o.scratch_dir = scratch;
  o.base_memory_max_bytes = 1;
  o.scratch_reserve_bytes = 1; /* (a small /tmp must not refuse it) */
  assert_int_equal(replicate_archiver_start(&o, &n.ar), 0);
  replicate_archive_status st = {0};
  TEST_WAIT_UNTIL((replicate_archiver_status(n.ar, &st), st.bases >= 1), 5000);
  assert_int_equal(st.bases, 1); /* at seq 0: every seq is after it */
  for (int round = 0; round < 4; round++)
    saves_and_drain(&n, 5);
  replicate_archiver_status(n.ar, &st);
  assert_true(st.bases >= 3);
  assert_false(st.gap);
  assert_string_equal(st.last_error, "");
  replicate_archive *a = open_archive(&n);
  int gaps = 0;
  assert_int_equal(replicate_archive_list(a, count_gaps, &gaps), 0);
  replicate_archive_close(a);
  assert_int_equal(gaps, 0);
  for (uint64_t seq = 2; seq <= 20; seq += 3) {
    uint64_t epoch, sum;
    assert_int_equal(
        loom_store_checksum_at(loom_get_store(n.l), seq, &epoch, &sum), 1);
    replicate_restore_target t = {
        .kind = REPLICATE_RESTORE_SEQ, .seq = seq, .epoch = -1};
    loom_position got;
    char err[800];
    assert_int_equal(restore(&n, t, &got, err, sizeof err), 0);
    assert_int_equal(got.checksum, sum);
  }
  node_stop(&n);
  if (scratch != NULL) { /* nothing left behind */
    DIR *d = opendir(scratch);
    assert_non_null(d);
    int entries = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
      entries += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    assert_int_equal(entries, 0);
  }
}

static void test_periodic_base_keeps_frames(void **state)
{
  (void)state;
  periodic_bases(false, NULL);
}

/* A large image's base (here: every base, base_memory_max_bytes 1) sealed
 * in a scratch file and sent from its mapping, plaintext and encrypted,
 * restores as one sealed in memory does; a named scratch file left by a
 * crash is removed at the archiver's start. */
static void test_base_sealed_in_scratch_file(void **state)
{
  (void)state;
  char *scratch = test_tmpdir("arcscratch");
  char stale[1100]; /* a named scratch file a crash left: swept at start */
  snprintf(stale, sizeof stale, "%s/.archive-base-Xy12Zq", scratch);
  FILE *f = fopen(stale, "w");
  assert_non_null(f);
  fclose(f);
  periodic_bases(false, scratch);
  periodic_bases(true, scratch);
  /* The bases did go through scratch_dir (an unlinked file is seen in no
   * listing): one that is a regular file fails every base there. */
  node n;
  node_prepare(&n, false, 0);
  char not_dir[1100];
  snprintf(not_dir, sizeof not_dir, "%s/not-a-directory", scratch);
  f = fopen(not_dir, "w");
  assert_non_null(f);
  fclose(f);
  replicate_archiver_options o = archiver_options(&n, "node-1");
  o.scratch_dir = not_dir;
  o.base_memory_max_bytes = 1;
  assert_int_equal(replicate_archiver_start(&o, &n.ar), 0);
  replicate_archive_status st;
  wait_error(n.ar, "a scratch file in", false, &st);
  assert_int_equal(st.bases, 0);
  node_stop(&n);
  test_rmtree(scratch);
}

/* The store unwritable: saves go on, the archive lags, records a gap when
 * the backlog overflows, and catches up with a base afterwards. */
static void test_store_down_never_blocks(void **state)
{
  (void)state;
  node n;
  node_start(&n, false);
  saves_and_drain(&n, 2);
  replicate_archiver_stop(n.ar);
  /* Restart with a tiny backlog, then take the store away. */
  replicate_archiver_options o = archiver_options(&n, "node-1");
  o.max_backlog_bytes = 4096;
  assert_int_equal(replicate_archiver_start(&o, &n.ar), 0);
  char moved[1100];
  snprintf(moved, sizeof moved, "%s.away", n.arc_dir);
  assert_int_equal(rename(n.arc_dir, moved), 0);
  int64_t t0 = test_now_ms();
  for (int i = 0; i < 40; i++)
    node_save(&n);
  assert_true(test_now_ms() - t0 < 5000);
  replicate_archive_status st;
  wait_error(n.ar, "no such directory", false, &st);
  assert_true(st.lag_frames > 0);
  assert_true(st.gap); /* 40 saves of several pages overflow 4 KiB */
  assert_true(st.lag_seconds > 0); /* also when the queue was dropped */
  assert_int_equal(rename(moved, n.arc_dir), 0);
  assert_int_equal(replicate_archiver_drain(n.ar, 10), 1);
  assert_restores_newest(&n);
  loom_position got;
  char err[800];
  /* A seq inside the gap is refused as such. */
  replicate_archiver_status(n.ar, &st);
  replicate_restore_target in_gap = {
      .kind = REPLICATE_RESTORE_SEQ, .seq = st.gap_first, .epoch = -1};
  assert_int_equal(restore(&n, in_gap, &got, err, sizeof err),
                   REPLICATE_EARCHIVE_GAP);
  node_stop(&n);
}

/* A node archived up to seq 2, its archiver stopped, and a log of 1 KiB
 * segments (a frame or two each) in its directory: the options of the next
 * archiver, the log's only writer. */
static replicate_archiver_options node_with_log(node *n, replicate_log **log)
{
  node_start(n, false);
  saves_and_drain(n, 2);
  replicate_archiver_stop(n->ar);
  n->ar = NULL;
  replicate_log_options lo = {.segment_bytes = 1024, .max_bytes = UINT64_MAX};
  assert_int_equal(replicate_log_open(n->dir, &lo, NULL, log), 0);
  replicate_archiver_options o = archiver_options(n, "node-1");
  o.log = *log;
  o.log_writer = true;
  return o;
}

/* Once ar read the head (seq 2) again, the store is taken away (to away). */
static void store_away_once_started(node *n, replicate_archiver *ar, char *away,
                                    size_t size)
{
  replicate_archive_status st;
  TEST_WAIT_UNTIL((replicate_archiver_status(ar, &st),
                   st.uploaded_seq == 2 && st.last_error[0] == '\0'),
                  5000);
  assert_int_equal(st.uploaded_seq, 2);
  snprintf(away, size, "%s.away", n->arc_dir);
  assert_int_equal(rename(n->arc_dir, away), 0);
}

/* Past the backlog's cap the log's hold moves past the dropped frames (a
 * gap): a log without a byte cap of its own (a standby's receive log)
 * stays bounded while the store is away. */
static void test_backlog_cap_moves_hold(void **state)
{
  (void)state;
  node n;
  replicate_log *log;
  replicate_archiver_options o = node_with_log(&n, &log);
  o.max_backlog_bytes = 4096;
  assert_int_equal(replicate_archiver_start(&o, &n.ar), 0);
  char moved[1100];
  store_away_once_started(&n, n.ar, moved, sizeof moved);
  for (int i = 0; i < 40; i++)
    node_save(&n);
  replicate_archive_status st;
  replicate_archiver_status(n.ar, &st);
  assert_true(st.gap);
  assert_true(st.gap_last > 20);
  assert_int_equal(replicate_log_retain(log, UINT64_MAX), 0);
  replicate_log_stats ls;
  replicate_log_get_stats(log, &ls);
  assert_true(ls.oldest_seq > 3); /* the hold was at 3 (head 2) */
  assert_true(ls.oldest_seq <= st.gap_last + 1);
  assert_int_equal(rename(moved, n.arc_dir), 0);
  assert_int_equal(replicate_archiver_drain(n.ar, 10), 1);
  assert_restores_newest(&n);
  replicate_archiver_stop(n.ar);
  n.ar = NULL;
  assert_int_equal(replicate_log_close(log), 0);
  node_stop(&n);
}

/* The oldest seq log holds once retention may drop everything it is not
 * held to keep. */
static uint64_t oldest_kept(replicate_log *log)
{
  assert_int_equal(replicate_log_retain(log, UINT64_MAX), 0);
  replicate_log_stats ls;
  replicate_log_get_stats(log, &ls);
  return ls.oldest_seq;
}

/* An archiver on o (node_with_log) with hold_after_stop that sees count
 * saves while the store is away (moved to away) and stops with them not
 * uploaded. */
static void saves_not_uploaded(node *n, replicate_archiver_options *o,
                               int count, char *away, size_t size)
{
  o->hold_after_stop = true;
  replicate_archiver *ar;
  assert_int_equal(replicate_archiver_start(o, &ar), 0);
  store_away_once_started(n, ar, away, size);
  n->ar = ar;
  for (int i = 0; i < count; i++)
    node_save(n);
  n->ar = NULL;
  assert_int_equal(replicate_archiver_drain(ar, 0.2), 0);
  replicate_archiver_stop(ar);
}

/* hold_after_stop (a standby about to exit whose drain did not finish):
 * the stop leaves the log's hold at the uploaded seq + 1; without it the
 * stop lifts the hold. */
static void test_hold_after_stop(void **state)
{
  (void)state;
  node n;
  replicate_log *log;
  replicate_archiver_options o = node_with_log(&n, &log);
  char moved[1100];
  saves_not_uploaded(&n, &o, 10, moved, sizeof moved);
  assert_int_equal(oldest_kept(log), 3); /* held: 3-12 not uploaded */
  o.hold_after_stop = false;
  replicate_archiver *ar;
  assert_int_equal(replicate_archiver_start(&o, &ar), 0);
  replicate_archiver_stop(ar);
  assert_true(oldest_kept(log) > 3); /* lifted: only the newest segment */
  assert_int_equal(rename(moved, n.arc_dir), 0);
  assert_int_equal(replicate_log_close(log), 0);
  node_stop(&n);
}

/* Five saves not uploaded (the store away), then an archiver started
 * with segments of at most segment_max bytes (0: the default) on the
 * store back: n->ar. */
static replicate_log *restart_over_backlog(node *n, uint64_t segment_max)
{
  replicate_log *log;
  replicate_archiver_options o = node_with_log(n, &log);
  char moved[1100];
  saves_not_uploaded(n, &o, 5, moved, sizeof moved);
  assert_int_equal(rename(moved, n->arc_dir), 0);
  o.segment_max_bytes = segment_max;
  assert_int_equal(replicate_archiver_start(&o, &n->ar), 0);
  return log;
}

/* Frames that only the log holds (no position file was written, nothing
 * is committed after the restart) are uploaded by themselves: a segment
 * of log frames moves the head to its last one. */
static void test_log_only_backlog(void **state)
{
  (void)state;
  node n;
  replicate_log *log = restart_over_backlog(&n, 0);
  replicate_archiver *ar = n.ar;
  assert_int_equal(replicate_archiver_drain(ar, 10), 1);
  replicate_archive_status st;
  replicate_archiver_status(ar, &st);
  assert_int_equal(st.uploaded_seq, 7);
  assert_false(st.gap);
  assert_restores_newest(&n);
  replicate_archiver_stop(ar);
  n.ar = NULL;
  assert_int_equal(replicate_log_close(log), 0);
  node_stop(&n);
}

/* The segments after the base, each frame counted as a one-seq segment,
 * and the largest first..last span seen. */
typedef struct segment_count {
  int segments, gaps;
  uint64_t widest;
} segment_count;

static int count_segments(void *ctx, const replicate_archive_entry *e)
{
  segment_count *c = ctx;
  if (e->kind == REPLICATE_ARCHIVE_SEGMENT) {
    c->segments++;
    if (e->last_seq - e->first_seq + 1 > c->widest)
      c->widest = e->last_seq - e->first_seq + 1;
  }
  c->gaps += e->kind == REPLICATE_ARCHIVE_GAP;
  return 0;
}

/* A backlog is uploaded in segments of at most segment_max_bytes (here
 * one frame each: any frame fills the cap), one after the other in the
 * same wake-up, not as one segment held whole in memory: the frames read
 * back from the log after a restart and the queued ones alike. */
static void test_segment_cap(void **state)
{
  (void)state;
  node n;
  replicate_log *log = restart_over_backlog(&n, 1);
  replicate_archiver *ar = n.ar;
  assert_int_equal(replicate_archiver_drain(ar, 10), 1);
  for (int i = 0; i < 3; i++)
    node_save(&n);
  assert_int_equal(replicate_archiver_drain(ar, 10), 1);
  replicate_archive_status st;
  replicate_archiver_status(ar, &st);
  assert_int_equal(st.uploaded_seq, 10);
  assert_false(st.gap);
  replicate_archive *a = open_archive(&n);
  segment_count c = {0};
  assert_int_equal(replicate_archive_list(a, count_segments, &c), 0);
  replicate_archive_close(a);
  assert_int_equal(c.gaps, 0);
  assert_int_equal(c.widest, 1);
  assert_true(c.segments >= 8); /* seqs 3-10 at least, one each */
  assert_restores_newest(&n);
  replicate_archiver_stop(ar);
  n.ar = NULL;
  assert_int_equal(replicate_log_close(log), 0);
  node_stop(&n);
}

/* The store down when the archiver starts: it says so, retries, and
 * writes the archive once the store is there. */
static void test_store_down_at_start(void **state)
{
  (void)state;
  node n;
  node_start(&n, false);
  replicate_archiver_stop(n.ar);
  n.ar = NULL;
  assert_int_equal(test_remove_tree(n.arc_dir), 0); /* no store at all */
  replicate_archiver_options o = archiver_options(&n, "node-1");
  assert_int_equal(replicate_archiver_start(&o, &n.ar), 0);
  for (int i = 0; i < 3; i++)
    node_save(&n);
  replicate_archive_status st;
  wait_error(n.ar, "no such directory", false, &st);
  assert_int_equal(mkdir(n.arc_dir, 0700), 0);
  assert_int_equal(replicate_archiver_drain(n.ar, 10), 1);
  assert_restores_newest(&n);
  node_stop(&n);
}

/* Root only: this process's mounts made private (a mount namespace of its
 * own), so that the tests' tmpfs mounts are seen by nobody else. */
static bool private_mounts(void)
{
  return geteuid() == 0 && unshare(CLONE_NEWNS) == 0 &&
         mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0;
}

/* Fills dir's file system with dir/filler (its path into path). */
static void fill_up(const char *dir, char *path, size_t size)
{
  snprintf(path, size, "%s/filler", dir);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  static char block[4096];
  while (fwrite(block, 1, sizeof block, f) == sizeof block && fflush(f) == 0) {
  }
  fclose(f);
}

/* A full disk under the archive (a 1 MiB tmpfs in a private mount
 * namespace; root only): saves go on, status says ENOSPC, and once space
 * is freed the archive catches up and restores the newest position. */
static void test_full_disk(void **state)
{
  (void)state;
  if (!private_mounts()) {
    skip();
    return;
  }
  node n;
  node_start(&n, false);
  saves_and_drain(&n, 2);
  replicate_archiver_stop(n.ar);
  n.ar = NULL;
  assert_int_equal(mount("tmpfs", n.arc_dir, "tmpfs", 0, "size=1m"), 0);
  replicate_archiver_options o = archiver_options(&n, "node-1");
  assert_int_equal(replicate_archiver_start(&o, &n.ar), 0);
  saves_and_drain(&n, 2); /* a new archive on the tmpfs: base, segment */
  char filler[1100];
  fill_up(n.arc_dir, filler, sizeof filler);
  int64_t t0 = test_now_ms();
  for (int i = 0; i < 20; i++)
    node_save(&n);
  assert_true(test_now_ms() - t0 < 5000);
  replicate_archive_status st;
  wait_error(n.ar, "No space", false, &st);
  assert_true(st.lag_frames > 0);
  assert_int_equal(unlink(filler), 0);
  assert_int_equal(replicate_archiver_drain(n.ar, 10), 1);
  assert_restores_newest(&n);
  replicate_archiver_stop(n.ar);
  n.ar = NULL;
  assert_int_equal(umount(n.arc_dir), 0);
  node_stop(&n);
}

/* The scratch directory short of its reserve, then full: the base fails
 * with ENOSPC before any write both times (a full disk leaves no room
 * above any reserve; a write's own ENOSPC: test_format_sealed_in_pieces,
 * /dev/full), saves go on, and the base goes up once there is room. */
static void test_scratch_full(void **state)
{
  (void)state;
  if (!private_mounts()) {
    skip();
    return;
  }
  char *scratch = test_tmpdir("arcscratchfull");
  assert_int_equal(mount("tmpfs", scratch, "tmpfs", 0, "size=1m"), 0);
  node n;
  node_prepare(&n, false, 0);
  /* Room, but less than the reserve would leave: refused before a write. */
  replicate_archiver_options big = archiver_options(&n, "node-1");
  big.scratch_dir = scratch;
  big.base_memory_max_bytes = 1;
  big.scratch_reserve_bytes = UINT64_C(1) << 30;
  assert_int_equal(replicate_archiver_start(&big, &n.ar), 0);
  replicate_archive_status st;
  wait_error(n.ar, "keeps 1024 MiB free there): No space", false, &st);
  assert_int_equal(st.bases, 0);
  replicate_archiver_stop(n.ar);
  n.ar = NULL;
  char filler[1100];
  fill_up(scratch, filler, sizeof filler);
  for (int i = 0; i < 3; i++)
    node_save(&n);
  replicate_archiver_options o = archiver_options(&n, "node-1");
  o.scratch_dir = scratch;
  o.base_memory_max_bytes = 1;
  o.scratch_reserve_bytes = 1;
  assert_int_equal(replicate_archiver_start(&o, &n.ar), 0);
  wait_error(n.ar, "No space", false, &st);
  assert_non_null(strstr(st.last_error, "scratch file in"));
  assert_int_equal(st.bases, 0);
  node_save(&n);
  assert_int_equal(unlink(filler), 0);
  assert_int_equal(replicate_archiver_drain(n.ar, 10), 1);
  replicate_archiver_status(n.ar, &st);
  assert_int_equal(st.bases, 1);
  assert_restores_newest(&n);
  node_stop(&n);
  assert_int_equal(umount(scratch), 0);
  test_rmtree(scratch);
}

/* A key rotation: the writer restarted with "new, old" continues, seals
 * the small shared objects again under the new key, writes new objects
 * under it; reading needs both keys while old objects remain, and
 * `archive list` tells old from new. */
typedef struct key_count {
  uint32_t key;
  int n, total;
} key_count;

static int count_key(void *ctx, const replicate_archive_entry *e)
{
  key_count *k = ctx;
  k->total++;
  k->n += e->key_id == k->key;
  return 0;
}

static void test_key_rotation(void **state)
{
  (void)state;
  node n;
  node_start(&n, true); /* under key_a */
  saves_and_drain(&n, 3);
  replicate_archiver_stop(n.ar);
  char both[200];
  snprintf(both, sizeof both, "%s\n%s\n", key_b, key_a);
  free(n.kf);
  n.kf = key_file(n.dir, "rotated.key", both);
  replicate_archiver_options o = archiver_options(&n, "node-1");
  assert_int_equal(replicate_archiver_start(&o, &n.ar), 0);
  saves_and_drain(&n, 3);
  replicate_archive_status st;
  replicate_archiver_status(n.ar, &st);
  assert_string_equal(st.last_error, "");
  assert_int_equal(st.uploaded_seq, 6);

  arc_keys keys;
  char err[800];
  assert_int_equal(arc_keys_load(n.kf, &keys, err, sizeof err), 0);
  replicate_archive *a = open_archive(&n);
  key_count kc = {.key = keys.id[0]};
  assert_int_equal(replicate_archive_list(a, count_key, &kc), 0);
  assert_true(kc.n >= 1);       /* new objects under the new key */
  assert_true(kc.total > kc.n); /* old ones still under the old */
  replicate_archive_close(a);
  assert_restores_newest(&n);
  loom_position got;
  replicate_restore_target newest = {.kind = REPLICATE_RESTORE_NEWEST,
                                     .epoch = -1};
  /* The new key alone reads the shared objects (sealed again) but not
   * the old base and segments: refused, naming the first of them read
   * (the frames are read before the base: a segment). */
  free(n.kf);
  n.kf = key_file(n.dir, "new-only.key", key_b);
  assert_int_equal(restore(&n, newest, &got, err, sizeof err),
                   REPLICATE_EARCHIVE_KEY);
  char old_id[16];
  snprintf(old_id, sizeof old_id, ".%08" PRIx32 " ", keys.id[1]);
  assert_non_null(strstr(err, old_id));
  node_stop(&n);
}

/* ---------------------------------------------------------------------- */
/* Forks: a promoted copy writes epoch 2 from its branch point; epoch 1's
 * later objects stay, abandoned, restorable with --epoch; a node behind
 * the archive's newest position on its branch does not write. */

static void node_pause(node *n)
{
  replicate_archiver_stop(n->ar);
  n->ar = NULL;
  assert_int_equal(loom_close(n->l), 0);
  n->l = NULL;
}

static void node_resume(node *n, const char *who)
{
  node_open(n);
  replicate_archiver_options o = archiver_options(n, who);
  assert_int_equal(replicate_archiver_start(&o, &n->ar), 0);
}

static char *copy_dir(const char *dir, const char *tag)
{
  char *copy = test_tmpdir(tag);
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "cp -a '%s/.' '%s/'", dir, copy);
  assert_int_equal(system(cmd), 0);
  return copy;
}

static int count_abandoned(void *ctx, const replicate_archive_entry *e)
{
  if (e->abandoned) {
    assert_int_equal(e->epoch, 1);
    assert_true(e->last_seq > 5);
    ++*(int *)ctx;
  }
  return 0;
}

static void test_forks(void **state)
{
  (void)state;
  node a;
  node_start(&a, false);
  saves_and_drain(&a, 5);
  uint64_t e5, sum5;
  assert_int_equal(loom_store_checksum_at(loom_get_store(a.l), 5, &e5, &sum5),
                   1);
  node_pause(&a);
  char *bdir = copy_dir(a.dir, "arcfork"), *cdir = copy_dir(a.dir, "arcold");
  node_resume(&a, "node-1");
  saves_and_drain(&a, 3); /* seqs 6-8 at epoch 1: abandoned below */
  loom_position a_pos;
  node_position(&a, &a_pos);
  uint64_t e7, a_sum7;
  assert_int_equal(loom_store_checksum_at(loom_get_store(a.l), 7, &e7, &a_sum7),
                   1);
  node_pause(&a);

  /* b: the copy at seq 5, promoted to epoch 2, archiving as another node. */
  node b = a;
  b.dir = bdir;
  b.rng.state = 99;
  node_open(&b);
  assert_int_equal(loom_store_set_epoch(loom_get_store(b.l), 2), 0);
  node_save(&b); /* so that epoch 2's first base is past the branch point */
  replicate_archiver_options o = archiver_options(&b, "node-2");
  assert_int_equal(replicate_archiver_start(&o, &b.ar), 0);
  saves_and_drain(&b, 3);
  loom_position b_pos;
  node_position(&b, &b_pos);
  assert_int_equal(b_pos.epoch, 2);
  replicate_archive_status st;
  replicate_archiver_status(b.ar, &st);
  assert_string_equal(st.last_error, "");

  char err[800];
  loom_position got;
  replicate_restore_target t = {.kind = REPLICATE_RESTORE_NEWEST, .epoch = -1};
  assert_int_equal(restore(&b, t, &got, err, sizeof err), 0);
  assert_true(loom_position_same_epoch(&got, &b_pos));
  t.epoch = 1; /* the abandoned branch, on request */
  assert_int_equal(restore(&b, t, &got, err, sizeof err), 0);
  assert_true(loom_position_same_epoch(&got, &a_pos));
  t = (replicate_restore_target){.kind = REPLICATE_RESTORE_SEQ,
                                 .seq = 5,
                                 .epoch = -1}; /* before epoch 2's base */
  assert_int_equal(restore(&b, t, &got, err, sizeof err), 0);
  assert_int_equal(got.seq, 5);
  assert_int_equal(got.epoch, 1); /* from epoch 1's objects, to the branch */
  assert_int_equal(got.checksum, sum5);
  t.seq = 7; /* epoch 2's seq 7 (or none, if its first base is later),
                never the abandoned branch's */
  int rc = restore(&b, t, &got, err, sizeof err);
  assert_true(rc == REPLICATE_EARCHIVE_NOPOS ||
              (rc == 0 && got.epoch == 2 && got.checksum != a_sum7));

  replicate_archive *arc = open_archive(&b);
  int abandoned = 0;
  assert_int_equal(replicate_archive_list(arc, count_abandoned, &abandoned), 0);
  assert_true(abandoned >= 1);
  replicate_archive_close(arc);

  /* c: an old copy of the first node (seq 5 < the archive's 8 at epoch 1)
   * does not write. */
  node c = a;
  c.dir = cdir;
  node_open(&c);
  o = archiver_options(&c, "node-1");
  assert_int_equal(replicate_archiver_start(&o, &c.ar), 0);
  wait_error(c.ar, "behind", true, &st);
  replicate_archiver_stop(c.ar);
  assert_int_equal(loom_close(c.l), 0);
  test_rmtree(cdir);

  node_stop(&b); /* removes the archive too */
  test_rmtree(a.dir);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_format_round_trip),
      cmocka_unit_test(test_format_sealed_in_pieces),
      cmocka_unit_test(test_key_file_errors),
      cmocka_unit_test(test_key_names),
      cmocka_unit_test(test_archive_restore_plain),
      cmocka_unit_test(test_archive_restore_encrypted),
      cmocka_unit_test(test_damaged_refused),
      cmocka_unit_test(test_restore_byte_identical),
      cmocka_unit_test(test_restore_out_dir),
      cmocka_unit_test(test_restore_streamed_chunks),
      cmocka_unit_test(test_restore_streamed_chunks_encrypted),
      cmocka_unit_test(test_restore_whole_over_nonzero),
      cmocka_unit_test(test_forged_page_refused),
      cmocka_unit_test(test_forged_after_checksum_refused),
      cmocka_unit_test(test_forged_base_refused),
      cmocka_unit_test(test_restore_memory_bounded),
      cmocka_unit_test(test_second_writer_stops),
      cmocka_unit_test(test_periodic_base_keeps_frames),
      cmocka_unit_test(test_base_sealed_in_scratch_file),
      cmocka_unit_test(test_fed_frames),
      cmocka_unit_test(test_base_again_after_lost_head),
      cmocka_unit_test(test_store_down_never_blocks),
      cmocka_unit_test(test_backlog_cap_moves_hold),
      cmocka_unit_test(test_hold_after_stop),
      cmocka_unit_test(test_log_only_backlog),
      cmocka_unit_test(test_segment_cap),
      cmocka_unit_test(test_forks),
      cmocka_unit_test(test_store_down_at_start),
      cmocka_unit_test(test_full_disk),
      cmocka_unit_test(test_scratch_full),
      cmocka_unit_test(test_key_rotation),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
