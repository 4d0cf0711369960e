/*
 * test_objstore_s3_xml.c: the s3:// backend's text helpers
 * (replicate/objstore_s3_xml.c) on answers a real store seldom sends:
 * XML-escaped keys, pages that do not say whether they are truncated,
 * malformed text and sizes; S3 error codes; canonical query values; the
 * credentials file's form; the endpoint's form; and objstore_open's words
 * when it refuses one.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "objstore.h"
#include "objstore_s3.h"
#include "replicate.h"

typedef struct seen {
  int n;
  char keys[8][64];
  uint64_t sizes[8];
} seen;

static int collect(void *ctx, const char *key, uint64_t size)
{
  seen *s = ctx;
  if (s->n == 8)
    return 99;
  snprintf(s->keys[s->n], sizeof s->keys[0], "%s", key);
  s->sizes[s->n++] = size;
  return 0;
}

static int parse(const char *xml, seen *s, int *truncated, char *token)
{
  memset(s, 0, sizeof *s);
  *truncated = -1;
  return s3_list_parse(xml, strlen(xml), collect, s, truncated, token, 64);
}

#define HEAD "<?xml version='1.0'?><ListBucketResult xmlns=\"x\">"

static void test_list_escaped_and_paged(void **state)
{
  (void)state;
  seen s;
  int more;
  char token[64];
  const char *xml =
      HEAD "<IsTruncated>true</IsTruncated>"
           "<NextContinuationToken>t&amp;k/=</NextContinuationToken>"
           "<Contents><Key>p/a&amp;b</Key><Size>0</Size></Contents>"
           "<Contents><Key>p/&#x41;&#66;&lt;&gt;&quot;&apos;</Key>"
           "<Size>18446744073709551615</Size></Contents></ListBucketResult>";
  assert_int_equal(parse(xml, &s, &more, token), 0);
  assert_int_equal(more, 1);
  assert_string_equal(token, "t&k/=");
  assert_int_equal(s.n, 2);
  assert_string_equal(s.keys[0], "p/a&b");
  assert_string_equal(s.keys[1], "p/AB<>\"'");
  assert_true(s.sizes[1] == UINT64_MAX);
  xml = HEAD "<IsTruncated>false</IsTruncated></ListBucketResult>";
  assert_int_equal(parse(xml, &s, &more, token), 0);
  assert_int_equal(more, 0);
  assert_int_equal(s.n, 0);
}

static void test_list_refused(void **state)
{
  (void)state;
  seen s;
  int more;
  char token[64];
  static const char *bad[] = {
      /* no IsTruncated, or not true/false */
      HEAD "<Contents><Key>a</Key><Size>1</Size></Contents>",
      HEAD "<IsTruncated>yes</IsTruncated>",
      /* truncated without a token */
      HEAD "<IsTruncated>true</IsTruncated>",
      /* not a listing */
      "<Error><Code>x</Code><IsTruncated>false</IsTruncated></Error>",
      /* a raw '<', an unknown entity, a control character */
      HEAD "<IsTruncated>false</IsTruncated><Contents><Key>a<b</Key>"
           "<Size>1</Size></Contents>",
      HEAD "<IsTruncated>false</IsTruncated><Contents><Key>a&nbsp;</Key>"
           "<Size>1</Size></Contents>",
      HEAD "<IsTruncated>false</IsTruncated><Contents><Key>a&#10;</Key>"
           "<Size>1</Size></Contents>",
      /* sizes: missing, not digits, too long */
      HEAD "<IsTruncated>false</IsTruncated><Contents><Key>a</Key>"
           "</Contents>",
      HEAD "<IsTruncated>false</IsTruncated><Contents><Key>a</Key>"
           "<Size>-1</Size></Contents>",
      HEAD "<IsTruncated>false</IsTruncated><Contents><Key>a</Key>"
           "<Size>18446744073709551616</Size></Contents>",
      /* an empty key */
      HEAD "<IsTruncated>false</IsTruncated><Contents><Key></Key>"
           "<Size>1</Size></Contents>",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int rc = parse(bad[i], &s, &more, token);
    if (rc != REPLICATE_ESTORE)
      fail_msg("accepted case %zu: %s", i, bad[i]);
  }
  /* each's non-zero return stops the listing and is returned */
  char many[2048] = HEAD "<IsTruncated>false</IsTruncated>";
  for (int i = 0; i < 9; i++)
    strcat(many, "<Contents><Key>k</Key><Size>1</Size></Contents>");
  assert_int_equal(parse(many, &s, &more, token), 99);
}

static void test_error_code(void **state)
{
  (void)state;
  char code[64];
  const char *b = "<?xml version='1.0'?>\n<Error><Code>SignatureDoesNotMatch"
                  "</Code><Message>m</Message></Error>";
  assert_int_equal(s3_error_code(b, strlen(b), code, sizeof code), 0);
  assert_string_equal(code, "SignatureDoesNotMatch");
  b = "<Error><Code>a b</Code></Error>";
  assert_int_equal(s3_error_code(b, strlen(b), code, sizeof code), -1);
  assert_string_equal(code, "");
  b = "<html>503</html>";
  assert_int_equal(s3_error_code(b, strlen(b), code, sizeof code), -1);
}

static void test_query_encode(void **state)
{
  (void)state;
  char *q = s3_query_encode("db1/x y~-_.+=&\xc3\xa9");
  assert_string_equal(q, "db1%2Fx%20y~-_.%2B%3D%26%C3%A9");
  free(q);
}

static char *write_temp(const char *text)
{
  char *path = strdup("/tmp/loomship-cred-XXXXXX");
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  return path;
}

static void test_credentials(void **state)
{
  (void)state;
  static const struct {
    const char *text;
    int ok;
  } cases[] = {
      {"test:tester\ntesting\n", 1},  {"test:tester\ntesting", 1},
      {"test:tester\n", 0},           {"test:tester\ntesting\nmore\n", 0},
      {"id\r\nsecret\r\n", 0},        {"\nsecret\n", 0},
      {"id with blank\nsecret\n", 0}, {"", 0},
  };
  char why[300];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char *path = write_temp(cases[i].text), *id, *secret;
    int rc = s3_read_credentials(path, &id, &secret, why, sizeof why);
    if (cases[i].ok) {
      assert_int_equal(rc, 0);
      assert_string_equal(id, "test:tester");
      assert_string_equal(secret, "testing");
    } else {
      assert_int_equal(rc, REPLICATE_EINVAL);
      assert_non_null(strstr(why, path)); /* names the file */
      assert_null(id);
    }
    free(id);
    free(secret);
    unlink(path);
    free(path);
  }
}

static void test_endpoint(void **state)
{
  (void)state;
  assert_true(s3_endpoint_ok("http://127.0.0.1:8080"));
  assert_true(s3_endpoint_ok("https://s3.example:443/"));
  assert_true(s3_endpoint_ok("http://[::1]:9000"));
  assert_false(s3_endpoint_ok("127.0.0.1:8080"));
  assert_false(s3_endpoint_ok("http://127.0.0.1"));
  assert_false(s3_endpoint_ok("http://127.0.0.1:0"));
  assert_false(s3_endpoint_ok("http://127.0.0.1:65536"));
  assert_false(s3_endpoint_ok("http://127.0.0.1:80/path"));
  assert_false(s3_endpoint_ok("http://user@host:80"));
  assert_false(s3_endpoint_ok("ftp://host:21"));
}

static void test_open_refusals(void **state)
{
  (void)state;
  char *cred = write_temp("id\nsecret\n");
  objstore_options o = {.endpoint = "http://127.0.0.1:9",
                        .credentials_file = cred};
  objstore *st = NULL;
  static const struct {
    const char *url;
    const char *words;
  } cases[] = {
      {"s3://Upper/p", "bucket"},       {"s3://ab/p", "bucket"},
      {"s3://bucket/p/../q", "prefix"}, {"s3://bucket/p q", "prefix"},
      {"ftp://bucket/p", "not s3://"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    assert_int_equal(objstore_open(cases[i].url, &o, &st), REPLICATE_EINVAL);
    assert_null(st);
    assert_non_null(strstr(objstore_open_error(), cases[i].words));
  }
  o.endpoint = "127.0.0.1:9";
  assert_int_equal(objstore_open("s3://bucket/p", &o, &st), REPLICATE_EINVAL);
  assert_non_null(strstr(objstore_open_error(), "http(s)://HOST:PORT"));
  o.endpoint = "http://127.0.0.1:9";
  assert_int_equal(objstore_open("s3://bucket/p/", &o, &st), 0);
  assert_string_equal(objstore_open_error(), "");
  assert_string_equal(objstore_url(st), "s3://bucket/p/");
  objstore_close(st);
  unlink(cred);
  free(cred);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_list_escaped_and_paged),
      cmocka_unit_test(test_list_refused),
      cmocka_unit_test(test_error_code),
      cmocka_unit_test(test_query_encode),
      cmocka_unit_test(test_credentials),
      cmocka_unit_test(test_endpoint),
      cmocka_unit_test(test_open_refusals),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
