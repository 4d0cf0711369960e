/*
 * test_objstore.c: the file:// backend of objstore.h (replicate/
 * objstore_file.c): put/get/list/delete round trips, IF_ABSENT, max_len,
 * ascending recursive listing, the errors objstore.h promises, and that a
 * temporary file never shows.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <sys/stat.h>

#include "objstore.h"
#include "replicate.h"
#include "testlib.h"

typedef struct fixture {
  char *dir;
  objstore *store;
} fixture;

static int setup(void **state)
{
  fixture *f = xcalloc(sizeof *f);
  f->dir = test_tmpdir("objstore");
  char url[600];
  snprintf(url, sizeof url, "file://%s", f->dir);
  assert_int_equal(objstore_open(url, NULL, &f->store), 0);
  *state = f;
  return 0;
}

static int teardown(void **state)
{
  fixture *f = *state;
  objstore_close(f->store);
  test_rmtree(f->dir);
  free(f);
  return 0;
}

static void put_str(objstore *s, const char *key, const char *text)
{
  assert_int_equal(objstore_put(s, key, text, strlen(text), 0), 0);
}

static void test_round_trip(void **state)
{
  fixture *f = *state;
  put_str(f->store, "a/b/c/one", "hello");
  void *data;
  size_t len;
  assert_int_equal(objstore_get(f->store, "a/b/c/one", 0, &data, &len), 0);
  assert_int_equal(len, 5);
  assert_memory_equal(data, "hello", 5);
  free(data);
  /* Overwritten by a plain put. */
  put_str(f->store, "a/b/c/one", "bye");
  assert_int_equal(objstore_get(f->store, "a/b/c/one", 0, &data, &len), 0);
  assert_int_equal(len, 3);
  free(data);
  /* The bytes are where objstore.h says: one file per key. */
  char path[700];
  snprintf(path, sizeof path, "%s/a/b/c/one", f->dir);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_size, 3);
  /* An empty object is an object. */
  assert_int_equal(objstore_put(f->store, "empty", "", 0, 0), 0);
  assert_int_equal(objstore_get(f->store, "empty", 0, &data, &len), 0);
  assert_int_equal(len, 0);
  free(data);
  objstore_stats st2;
  objstore_get_stats(f->store, &st2);
  assert_int_equal(st2.puts, 3);
  assert_int_equal(st2.gets, 3);
  assert_int_equal(st2.bytes_up, 8);
  assert_int_equal(st2.bytes_down, 8);
}

static void test_if_absent(void **state)
{
  fixture *f = *state;
  assert_int_equal(
      objstore_put(f->store, "w/writer", "1", 1, OBJSTORE_PUT_IF_ABSENT), 0);
  assert_int_equal(
      objstore_put(f->store, "w/writer", "2", 1, OBJSTORE_PUT_IF_ABSENT),
      REPLICATE_ESTORE_EXISTS);
  assert_non_null(strstr(objstore_last_error(f->store), "w/writer"));
  void *data;
  size_t len;
  assert_int_equal(objstore_get(f->store, "w/writer", 0, &data, &len), 0);
  assert_memory_equal(data, "1", 1); /* the first one stays */
  free(data);
}

static void test_missing_and_limits(void **state)
{
  fixture *f = *state;
  void *data = (void *)1;
  size_t len = 7;
  assert_int_equal(objstore_get(f->store, "nope", 0, &data, &len),
                   REPLICATE_ESTORE_MISSING);
  assert_null(data);
  assert_int_equal(len, 0);
  assert_non_null(strstr(objstore_last_error(f->store), "nope"));
  put_str(f->store, "big", "0123456789");
  assert_int_equal(objstore_get(f->store, "big", 9, &data, &len),
                   REPLICATE_ESTORE);
  assert_int_equal(objstore_get(f->store, "big", 10, &data, &len), 0);
  free(data);
  /* Keys objstore.h forbids never reach the file system. */
  assert_int_equal(objstore_put(f->store, "../escape", "x", 1, 0),
                   REPLICATE_EINVAL);
  assert_int_equal(objstore_put(f->store, "/abs", "x", 1, 0), REPLICATE_EINVAL);
  assert_int_equal(objstore_put(f->store, "a~b", "x", 1, 0), REPLICATE_EINVAL);
  /* Deleting a missing key is not an error. */
  assert_int_equal(objstore_delete(f->store, "never/was"), 0);
  objstore_stats st;
  objstore_get_stats(f->store, &st);
  assert_true(st.errors >= 2);
}

typedef struct seen {
  char keys[16][64];
  uint64_t sizes[16];
  int n;
} seen;

static int collect(void *ctx, const char *key, uint64_t size)
{
  seen *s = ctx;
  assert_true(s->n < 16);
  snprintf(s->keys[s->n], sizeof s->keys[0], "%s", key);
  s->sizes[s->n++] = size;
  return 0;
}

static int stop_at_two(void *ctx, const char *key, uint64_t size)
{
  (void)key;
  (void)size;
  return ++*(int *)ctx == 2 ? 42 : 0;
}

static void test_list(void **state)
{
  fixture *f = *state;
  const char *keys[] = {"seg/00000002/b", "seg/00000001/z", "base/x",
                        "seg/00000001/a", "segment",        "seg/0000000"};
  for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
    put_str(f->store, keys[i], keys[i]);
  /* A temporary file left by a crash is not an object. */
  char path[700];
  snprintf(path, sizeof path, "%s/seg/00000001/a~tmp.1.1", f->dir);
  FILE *fp = fopen(path, "w");
  assert_non_null(fp);
  fclose(fp);

  seen s = {0};
  assert_int_equal(objstore_list(f->store, "seg/", collect, &s), 0);
  assert_int_equal(s.n, 4);
  assert_string_equal(s.keys[0], "seg/0000000");
  assert_string_equal(s.keys[1], "seg/00000001/a");
  assert_string_equal(s.keys[2], "seg/00000001/z");
  assert_string_equal(s.keys[3], "seg/00000002/b");
  assert_int_equal(s.sizes[1], strlen("seg/00000001/a"));

  memset(&s, 0, sizeof s); /* a prefix that is not a directory */
  assert_int_equal(objstore_list(f->store, "seg/00000001/", collect, &s), 0);
  assert_int_equal(s.n, 2);
  memset(&s, 0, sizeof s);
  assert_int_equal(objstore_list(f->store, "seg", collect, &s), 0);
  assert_int_equal(s.n, 5); /* "segment" too, as S3 would */
  memset(&s, 0, sizeof s);
  assert_int_equal(objstore_list(f->store, "", collect, &s), 0);
  assert_int_equal(s.n, 6);
  assert_string_equal(s.keys[0], "base/x");
  memset(&s, 0, sizeof s);
  assert_int_equal(objstore_list(f->store, "nothing/", collect, &s), 0);
  assert_int_equal(s.n, 0);

  int calls = 0;
  assert_int_equal(objstore_list(f->store, "", stop_at_two, &calls), 42);
  assert_int_equal(calls, 2);

  assert_int_equal(objstore_delete(f->store, "seg/00000001/a"), 0);
  memset(&s, 0, sizeof s);
  assert_int_equal(objstore_list(f->store, "seg/00000001/", collect, &s), 0);
  assert_int_equal(s.n, 1);
  assert_string_equal(s.keys[0], "seg/00000001/z");
}

/* A missing directory is a missing bucket; a malformed URL is EINVAL. */
static void test_open_errors(void **state)
{
  (void)state;
  objstore *s = NULL;
  assert_int_equal(objstore_open("file://relative", NULL, &s),
                   REPLICATE_EINVAL);
  assert_null(s);
  assert_int_equal(objstore_open("ftp://x", NULL, &s), REPLICATE_EINVAL);
  assert_int_equal(objstore_open("file:///nonexistent-loom-dir", NULL, &s), 0);
  assert_int_equal(objstore_put(s, "k", "x", 1, 0), REPLICATE_ESTORE_MISSING);
  assert_non_null(strstr(objstore_last_error(s), "nonexistent-loom-dir"));
  void *data;
  size_t len;
  assert_int_equal(objstore_get(s, "k", 0, &data, &len),
                   REPLICATE_ESTORE_MISSING);
  assert_string_equal(objstore_url(s), "file:///nonexistent-loom-dir");
  objstore_close(s);
}

/* An unwritable directory is the system call's errno, and leaves nothing. */
static void test_unwritable(void **state)
{
  fixture *f = *state;
  if (geteuid() == 0) {
    /* root ignores modes: make the key's parent a file instead */
    put_str(f->store, "ro", "file");
    assert_int_equal(objstore_put(f->store, "ro/k", "x", 1, 0), ENOTDIR);
  } else {
    chmod(f->dir, 0555);
    assert_int_equal(objstore_put(f->store, "k", "x", 1, 0), EACCES);
    chmod(f->dir, 0755);
  }
  assert_non_null(strstr(objstore_last_error(f->store), "PUT"));
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
      cmocka_unit_test_setup_teardown(test_if_absent, setup, teardown),
      cmocka_unit_test_setup_teardown(test_missing_and_limits, setup, teardown),
      cmocka_unit_test_setup_teardown(test_list, setup, teardown),
      cmocka_unit_test(test_open_errors),
      cmocka_unit_test_setup_teardown(test_unwritable, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
