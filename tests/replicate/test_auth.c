/*
 * test_auth.c: authenticated frames (replicate/auth.c): the key file (two
 * keys, trimming, refused when malformed or open to group or others), key
 * ids (SHA-256's first 8 bytes, as openssl computes them), tags that pass
 * only for the same bytes, kind and key; the previous key during a
 * rotation; a tag streamed in pieces equals the one made at once; a
 * trailer header; a reload (SIGHUP) that rotates the keys in place, and
 * one that fails and keeps them.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "replicate.h"
#include "testlib.h"

/* The SHA-256 of 32 bytes 0x01 and of 32 bytes 0x02, first 8 bytes (from
 * `printf '\x01%.0s' {1..32} | openssl dgst -sha256`). */
#define K1 "0101010101010101010101010101010101010101010101010101010101010101"
#define K2 "0202020202020202020202020202020202020202020202020202020202020202"
#define K1_ID "72cd6e8422c407fb"
#define K2_ID "75877bb41d393b5f"

static char *write_key(const char *dir, const char *name, const char *text,
                       mode_t mode)
{
  char *path = xmalloc(strlen(dir) + strlen(name) + 2);
  sprintf(path, "%s/%s", dir, name);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  assert_int_equal(fchmod(fd, mode), 0);
  close(fd);
  return path;
}

static replicate_frame_key *load(const char *dir, const char *text, mode_t mode,
                                 int want)
{
  char *path = write_key(dir, "key", text, mode);
  replicate_frame_key *k = NULL;
  char why[256];
  int rc = replicate_frame_key_load(path, &k, why, sizeof why);
  free(path);
  assert_int_equal(rc, want);
  if (want)
    assert_non_null(strstr(why, "key")); /* names the file */
  return k;
}

static void test_key_file(void **state)
{
  (void)state;
  char *dir = test_tmpdir("auth");
  replicate_frame_key *k = load(dir, K1 "\n", 0600, 0);
  assert_string_equal(replicate_frame_key_id(k, 0), K1_ID);
  assert_null(replicate_frame_key_id(k, 1));
  replicate_frame_key_free(k);
  k = load(dir, K2 " \r\n" K1 "\n\n", 0600, 0);
  assert_string_equal(replicate_frame_key_id(k, 0), K2_ID);
  assert_string_equal(replicate_frame_key_id(k, 1), K1_ID);
  replicate_frame_key_free(k);
  load(dir, K1 "\n", 0640, REPLICATE_EKEY_FILE);  /* group may read */
  load(dir, "0101\n", 0600, REPLICATE_EKEY_FILE); /* too short */
  load(dir, K1 "0\n", 0600, REPLICATE_EKEY_FILE); /* too long */
  load(dir, "zz" K1 "\n", 0600, REPLICATE_EKEY_FILE);
  load(dir, "\n", 0600, REPLICATE_EKEY_FILE); /* no key */
  load(dir, K1 "\nnot a key\n", 0600, REPLICATE_EKEY_FILE);
  replicate_frame_key *none = NULL;
  char why[256];
  assert_int_equal(
      replicate_frame_key_load("/nonexistent/key", &none, why, sizeof why),
      REPLICATE_EKEY_FILE);
  assert_null(none);
  test_rmtree(dir);
}

static void test_tags(void **state)
{
  (void)state;
  char *dir = test_tmpdir("auth");
  replicate_frame_key *k1 = load(dir, K1 "\n", 0600, 0);
  replicate_frame_key *k2 = load(dir, K2 "\n", 0600, 0);
  replicate_frame_key *rotated = load(dir, K2 "\n" K1 "\n", 0600, 0);
  uint8_t body[1000];
  test_rng rng = {42};
  rng_fill(&rng, body, sizeof body);
  char tag[REPLICATE_TAG_TEXT];
  assert_int_equal(
      replicate_tag_make(k1, REPLICATE_TAG_FRAMES, body, sizeof body, tag), 0);
  assert_int_equal(strlen(tag), 81);
  assert_memory_equal(tag, K1_ID " ", 17);
  const replicate_tag_kind F = REPLICATE_TAG_FRAMES;
  assert_int_equal(replicate_tag_check(k1, F, tag, body, sizeof body), 0);
  assert_int_equal(replicate_tag_check(k1, F, NULL, body, sizeof body),
                   REPLICATE_ETAG_MISSING);
  assert_int_equal(
      replicate_tag_check(k1, REPLICATE_TAG_PAGES, tag, body, sizeof body),
      REPLICATE_ETAG_BAD); /* a tag of one kind never passes for another */
  assert_int_equal(replicate_tag_check(k2, F, tag, body, sizeof body),
                   REPLICATE_ETAG_KEY);
  assert_int_equal(replicate_tag_check(rotated, F, tag, body, sizeof body),
                   0); /* previous */
  body[500] ^= 1;
  assert_int_equal(replicate_tag_check(k1, F, tag, body, sizeof body),
                   REPLICATE_ETAG_BAD);
  body[500] ^= 1;
  char forged[REPLICATE_TAG_TEXT];
  memcpy(forged, tag, sizeof forged);
  forged[40] = forged[40] == '0' ? '1' : '0';
  assert_int_equal(replicate_tag_check(k1, F, forged, body, sizeof body),
                   REPLICATE_ETAG_BAD);
  /* Made under k2 but claiming k1's id: the key id does not make a tag. */
  assert_int_equal(replicate_tag_make(k2, F, body, sizeof body, forged), 0);
  memcpy(forged, K1_ID, 16);
  assert_int_equal(replicate_tag_check(k1, F, forged, body, sizeof body),
                   REPLICATE_ETAG_BAD);
  assert_int_equal(replicate_tag_check(k1, F, "junk", body, sizeof body),
                   REPLICATE_ETAG_BAD);
  char trailer[64];
  snprintf(trailer, sizeof trailer, "%s trailer", K1_ID);
  assert_int_equal(replicate_tag_check(k1, F, trailer, body, sizeof body),
                   REPLICATE_ETAG_BAD);
  replicate_frame_key_free(k1);
  replicate_frame_key_free(k2);
  replicate_frame_key_free(rotated);
  test_rmtree(dir);
}

/* A base image's tag, streamed in pieces by the sender and checked in
 * other pieces by the receiver under the key id of the header. */
static void test_stream(void **state)
{
  (void)state;
  char *dir = test_tmpdir("auth");
  replicate_frame_key *k1 = load(dir, K1 "\n", 0600, 0);
  replicate_frame_key *rotated = load(dir, K2 "\n" K1 "\n", 0600, 0);
  uint8_t body[70000];
  test_rng rng = {7};
  rng_fill(&rng, body, sizeof body);
  replicate_tag_stream *s = NULL;
  uint8_t tag[REPLICATE_TAG_SIZE];
  assert_int_equal(replicate_tag_stream_begin(k1, REPLICATE_TAG_BASE, NULL, &s),
                   0);
  for (size_t at = 0; at < sizeof body; at += 4096)
    assert_int_equal(
        replicate_tag_stream_update(
            s, body + at, sizeof body - at < 4096 ? sizeof body - at : 4096),
        0);
  assert_int_equal(replicate_tag_stream_end(s, tag), 0);
  replicate_tag_stream_free(s);

  replicate_tag t;
  char header[64];
  snprintf(header, sizeof header, "%s trailer", K1_ID);
  assert_int_equal(replicate_tag_parse(header, &t), 0);
  assert_true(t.trailer);
  assert_string_equal(t.key_id, K1_ID);
  assert_int_equal(
      replicate_tag_stream_begin(rotated, REPLICATE_TAG_BASE, t.key_id, &s), 0);
  assert_int_equal(replicate_tag_stream_update(s, body, 1), 0);
  assert_int_equal(replicate_tag_stream_update(s, body + 1, sizeof body - 1),
                   0);
  assert_int_equal(replicate_tag_stream_check(s, tag), 0);
  replicate_tag_stream_free(s);
  assert_int_equal(
      replicate_tag_stream_begin(rotated, REPLICATE_TAG_BASE, t.key_id, &s), 0);
  body[69999] ^= 0x80;
  assert_int_equal(replicate_tag_stream_update(s, body, sizeof body), 0);
  assert_int_equal(replicate_tag_stream_check(s, tag), REPLICATE_ETAG_BAD);
  replicate_tag_stream_free(s);
  assert_int_equal(
      replicate_tag_stream_begin(k1, REPLICATE_TAG_BASE, K2_ID, &s),
      REPLICATE_ETAG_KEY);
  assert_null(s);
  assert_int_equal(replicate_tag_parse(NULL, &t), REPLICATE_ETAG_MISSING);
  assert_int_equal(replicate_tag_parse(K1_ID, &t), REPLICATE_ETAG_BAD);
  replicate_frame_key_free(k1);
  replicate_frame_key_free(rotated);
  test_rmtree(dir);
}

/* replicate_frame_key_reload: the same object takes the new keys; a bad
 * file leaves them as they were (never no key); old id strings stay
 * valid. */
static void test_reload(void **state)
{
  (void)state;
  char *dir = test_tmpdir("auth");
  replicate_frame_key *k = load(dir, K1 "\n", 0600, 0);
  const char *old_id = replicate_frame_key_id(k, 0);
  uint8_t body[100] = {1, 2, 3};
  char tag1[REPLICATE_TAG_TEXT], tag2[REPLICATE_TAG_TEXT], why[256];
  const replicate_tag_kind F = REPLICATE_TAG_FRAMES;
  assert_int_equal(replicate_tag_make(k, F, body, sizeof body, tag1), 0);
  char *path = write_key(dir, "key", K2 "\n" K1 "\n", 0600);
  assert_int_equal(replicate_frame_key_reload(k, path, why, sizeof why), 0);
  assert_string_equal(replicate_frame_key_id(k, 0), K2_ID);
  assert_string_equal(replicate_frame_key_id(k, 1), K1_ID);
  assert_string_equal(old_id, K1_ID); /* still readable */
  assert_int_equal(replicate_tag_make(k, F, body, sizeof body, tag2), 0);
  assert_memory_equal(tag2, K2_ID " ", 17);
  assert_int_equal(replicate_tag_check(k, F, tag1, body, sizeof body), 0);
  free(write_key(dir, "key", "not a key\n", 0600));
  assert_int_equal(replicate_frame_key_reload(k, path, why, sizeof why),
                   REPLICATE_EKEY_FILE);
  assert_non_null(strstr(why, "line 1"));
  free(write_key(dir, "key", K1 "\n", 0644));
  assert_int_equal(replicate_frame_key_reload(k, path, why, sizeof why),
                   REPLICATE_EKEY_FILE);
  assert_string_equal(replicate_frame_key_id(k, 0), K2_ID); /* kept */
  assert_int_equal(replicate_tag_check(k, F, tag2, body, sizeof body), 0);
  free(write_key(dir, "key", K2 "\n", 0600));
  assert_int_equal(replicate_frame_key_reload(k, path, why, sizeof why), 0);
  assert_null(replicate_frame_key_id(k, 1));
  assert_int_equal(replicate_tag_check(k, F, tag1, body, sizeof body),
                   REPLICATE_ETAG_KEY); /* the retired key is refused */
  assert_int_equal(replicate_tag_check(k, F, tag2, body, sizeof body), 0);
  free(path);
  replicate_frame_key_free(k);
  test_rmtree(dir);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_key_file),
      cmocka_unit_test(test_tags),
      cmocka_unit_test(test_stream),
      cmocka_unit_test(test_reload),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
