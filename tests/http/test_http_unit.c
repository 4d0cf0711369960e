/*
 * test_http_unit.c: the server's helpers on their own: the JSON writer,
 * Range parsing, ETags, the bearer token check, error names, and the
 * backups object without a server.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backup.h"
#include "json.h"
#include "reply.h"
#include "util.h"

static char *take(http_json_writer *w)
{
  char *doc = http_json_take(w, NULL);
  assert_non_null(doc);
  return doc;
}

static void test_json_writer(void **state)
{
  (void)state;
  http_json_writer w;
  http_json_init(&w);
  http_json_object_begin(&w);
  http_json_key(&w, "a");
  http_json_uint(&w, 18446744073709551615ull);
  http_json_key(&w, "b");
  http_json_int(&w, -5);
  http_json_key(&w, "list");
  http_json_array_begin(&w);
  http_json_bool(&w, true);
  http_json_null(&w);
  http_json_string(&w, NULL);
  http_json_object_begin(&w);
  http_json_object_end(&w);
  http_json_array_begin(&w);
  http_json_array_end(&w);
  http_json_array_end(&w);
  http_json_key(&w, "esc");
  http_json_string(&w, "q\"b\\n\n\t\x01\x1f\xc3\xa9");
  http_json_key(&w, "hex");
  http_json_hex64(&w, 0x9f3c);
  http_json_key(&w, "d");
  http_json_double(&w, 0.004);
  http_json_key(&w, "inf");
  http_json_double(&w, 1.0 / 0.0);
  http_json_key(&w, "t");
  http_json_time_ns(&w, 1700000000123456789LL);
  http_json_key(&w, "t0");
  http_json_time_ns(&w, 0);
  http_json_object_end(&w);
  char *doc = take(&w);
  assert_string_equal(
      doc, "{\"a\":18446744073709551615,\"b\":-5,"
           "\"list\":[true,null,null,{},[]],"
           "\"esc\":\"q\\\"b\\\\n\\n\\t\\u0001\\u001f\xc3\xa9\","
           "\"hex\":\"0000000000009f3c\",\"d\":0.004,\"inf\":null,"
           "\"t\":\"2023-11-14T22:13:20.123456789Z\",\"t0\":null}");
  free(doc);

  /* Unbalanced: the writer says so instead of producing bad JSON. */
  http_json_init(&w);
  http_json_object_end(&w);
  assert_null(http_json_take(&w, NULL));
}

/* Numbers exactly (issue 15): the shortest text that reads back as the
 * double, every nanosecond of a time, a timestamp's fraction to the ns. */
static void test_exact_numbers(void **state)
{
  (void)state;
  char b[HTTP_JSON_NUMBER_MAX];
  assert_string_equal(http_json_format_double(0.004, b), "0.004");
  assert_string_equal(http_json_format_double(1.0 / 3, b), "0.3333333333333333");
  assert_string_equal(http_json_format_double(1700000000.123456, b), "1700000000.123456");
  assert_string_equal(http_json_format_double(1234567.25, b), "1234567.25");
  assert_string_equal(http_json_format_double(0, b), "0");
  assert_string_equal(http_json_format_double(10, b), "10");
  assert_string_equal(http_json_format_double(-2500000, b), "-2500000");
  assert_string_equal(http_json_format_ns_seconds(1700000000123456789LL, b),
                      "1700000000.123456789");
  assert_string_equal(http_json_format_ns_seconds(1700000001000000000LL, b), "1700000001");
  assert_string_equal(http_json_format_ns_seconds(1500000000LL, b), "1.5");
  assert_string_equal(http_json_format_ns_seconds(0, b), "0");

  http_json_writer w;
  http_json_init(&w);
  http_json_array_begin(&w);
  http_json_time_ns(&w, 1700000000123000000LL);
  http_json_time_ns(&w, 1700000000123456000LL);
  http_json_time_ns(&w, 1700000000000000001LL);
  http_json_double(&w, 1700000000.123456);
  http_json_array_end(&w);
  char *doc = take(&w);
  assert_string_equal(doc, "[\"2023-11-14T22:13:20.123Z\",\"2023-11-14T22:13:20.123456Z\","
                           "\"2023-11-14T22:13:20.000000001Z\",1700000000.123456]");
  free(doc);
}

static void test_range_parse(void **state)
{
  (void)state;
  uint64_t a = 0, b = 0;
  assert_int_equal(http_range_parse(NULL, 100, &a, &b), HTTP_RANGE_NONE);
  assert_int_equal(http_range_parse("bytes=0-9", 100, &a, &b), HTTP_RANGE_SINGLE);
  assert_int_equal(a, 0);
  assert_int_equal(b, 9);
  assert_int_equal(http_range_parse("bytes=90-", 100, &a, &b), HTTP_RANGE_SINGLE);
  assert_int_equal(a, 90);
  assert_int_equal(b, 99);
  assert_int_equal(http_range_parse("bytes=90-1000", 100, &a, &b),
                   HTTP_RANGE_SINGLE);
  assert_int_equal(b, 99);
  assert_int_equal(http_range_parse("bytes=-10", 100, &a, &b), HTTP_RANGE_SINGLE);
  assert_int_equal(a, 90);
  assert_int_equal(b, 99);
  assert_int_equal(http_range_parse("bytes=-1000", 100, &a, &b),
                   HTTP_RANGE_SINGLE);
  assert_int_equal(a, 0);
  assert_int_equal(http_range_parse(" bytes = 5-6 ", 100, &a, &b),
                   HTTP_RANGE_SINGLE);
  assert_int_equal(a, 5);
  assert_int_equal(b, 6);
  assert_int_equal(http_range_parse("bytes=100-", 100, &a, &b),
                   HTTP_RANGE_UNSATISFIABLE);
  assert_int_equal(http_range_parse("bytes=-0", 100, &a, &b),
                   HTTP_RANGE_UNSATISFIABLE);
  assert_int_equal(http_range_parse("bytes=0-", 0, &a, &b),
                   HTTP_RANGE_UNSATISFIABLE);
  const char *ignored[] = {"bytes=5-4", "bytes=0-1,3-4", "items=0-1", "bytes",
                           "bytes=", "bytes=a-b", "bytes=1", "bytes=-",
                           "bytes=99999999999999999999-",
                           "bytes=1-2x", "bytes=5 - 6"};
  for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++)
    if (http_range_parse(ignored[i], 100, &a, &b) != HTTP_RANGE_NONE)
      fail_msg("%s was not ignored", ignored[i]);
}

static void test_etag_and_token(void **state)
{
  (void)state;
  loom_position pos = {.epoch = 3, .seq = 1042, .checksum = 0x9f3c};
  char etag[HTTP_ETAG_MAX];
  http_etag_format(&pos, etag);
  assert_string_equal(etag, "\"3-1042-0000000000009f3c\"");

  const uint8_t tok[] = "abc123";
  size_t n = 6;
  assert_true(http_token_matches(tok, n, "Bearer abc123"));
  assert_true(http_token_matches(tok, n, "bearer   abc123  "));
  assert_false(http_token_matches(tok, n, NULL));
  assert_false(http_token_matches(tok, n, ""));
  assert_false(http_token_matches(tok, n, "Bearer"));
  assert_false(http_token_matches(tok, n, "Bearer "));
  assert_false(http_token_matches(tok, n, "Bearer abc12"));
  assert_false(http_token_matches(tok, n, "Bearer abc1234"));
  assert_false(http_token_matches(tok, n, "Bearer abc124"));
  assert_false(http_token_matches(tok, n, "Bearerabc123"));
  assert_false(http_token_matches(tok, n, "Basic abc123"));
  assert_false(http_token_matches(tok, 0, "Bearer "));
}

static void test_error_names(void **state)
{
  (void)state;
  assert_string_equal(http_error_name(0), "OK");
  assert_string_equal(http_error_name(ENOSPC), "ENOSPC");
  assert_string_equal(http_error_name(REPLICATE_EPAYLOAD_CHECKSUM),
                      "REPLICATE_EPAYLOAD_CHECKSUM");
  assert_string_equal(http_error_name(LOOM_EPOSITION), "LOOM_EPOSITION");
  assert_string_equal(http_error_name(HTTP_ETLS), "HTTP_ETLS");
  assert_string_equal(http_error_name(-1), "UNKNOWN");
  for (int rc = REPLICATE_ETRUNCATED; rc > REPLICATE_ELAST; rc--)
    assert_string_not_equal(http_error_name(rc), "UNKNOWN");
  for (int rc = LOOM_ELOCKED; rc > LOOM_ELAST; rc--)
    assert_string_not_equal(http_error_name(rc), "UNKNOWN");
  for (int rc = HTTP_EINVAL; rc > HTTP_ELAST; rc--) {
    assert_string_not_equal(http_error_name(rc), "UNKNOWN");
    assert_string_not_equal(http_strerror(rc), "unknown error");
  }
  /* Each module's names come from its own list, the others' through it. */
  assert_string_equal(loom_error_name(LOOM_EMETA), "LOOM_EMETA");
  assert_string_equal(loom_error_name(REPLICATE_EFORK), "UNKNOWN");
  assert_string_equal(replicate_error_name(REPLICATE_EFORK), "REPLICATE_EFORK");
  assert_string_equal(replicate_error_name(LOOM_EMETA), "LOOM_EMETA");
  assert_string_equal(replicate_error_name(EIO), "EIO");
  assert_string_equal(loom_strerror(LOOM_ELAST), "unknown error");
  for (int rc = LOOM_ELOCKED; rc > LOOM_ELAST; rc--)
    assert_string_not_equal(loom_strerror(rc), "unknown error");
  for (int rc = REPLICATE_ETRUNCATED; rc > REPLICATE_ELAST; rc--)
    assert_string_not_equal(replicate_strerror(rc), "unknown error");
  /* The state names status and metrics show (a public contract). */
  static const char *const names[] = {
      "streaming", "catching_up", "base_sync", "unreachable", "unauthorized",
      "fenced", "stalled", "refused", "diverged"};
  for (int v = 0; v < 9; v++)
    assert_string_equal(replicate_peer_state_name((replicate_peer_state)v),
                        names[v]);
  assert_string_equal(replicate_peer_state_name(REPLICATE_PEER_REFUSED),
                      "refused");
  assert_string_equal(replicate_peer_state_name((replicate_peer_state)99),
                      "unknown");
}

static int busy_open(void *ctx, loom_snapshot **out)
{
  (*(int *)ctx)++;
  *out = NULL;
  return EBUSY;
}

static void never_close(void *ctx, loom_snapshot *snap)
{
  (void)ctx;
  (void)snap;
  fail_msg("closed a snapshot that was never opened");
}

/* The backups stand alone: a source that cannot give a snapshot makes a
 * 503 reply for the caller to send, and the figures stay at zero. */
static void test_backups_unavailable(void **state)
{
  (void)state;
  int opens = 0;
  http_backup_source source = {&opens, busy_open, never_close};
  http_backups *b = NULL;
  assert_int_equal(http_backups_create(&source, &b), 0);
  http_reply reply = {0};
  struct MHD_Response *resp = (struct MHD_Response *)&reply;
  assert_int_equal(http_backups_respond(b, "bytes=0-9", NULL, &reply, &resp),
                   503);
  assert_null(resp);
  assert_int_equal(reply.retry_after, 1);
  assert_int_equal(opens, 1);
  char *doc = take(&reply.body);
  assert_non_null(strstr(doc, "\"error\":\"base image in progress\""));
  assert_non_null(strstr(doc, "\"code\":\"EBUSY\""));
  free(doc);
  http_backup_figures fig;
  http_backups_figures(b, &fig);
  assert_int_equal(fig.in_progress, 0);
  assert_int_equal(fig.started, 0);
  assert_false(fig.open);
  http_backups_free(b);

  /* No source of snapshots (a primary without snapshot_open). */
  http_backup_source none = {NULL, NULL, never_close};
  assert_int_equal(http_backups_create(&none, &b), 0);
  http_reply other = {0};
  assert_int_equal(http_backups_respond(b, NULL, NULL, &other, &resp), 503);
  doc = take(&other.body);
  assert_non_null(strstr(doc, "\"error\":\"backup unavailable\""));
  assert_non_null(strstr(doc, http_error_name(ENOTSUP)));
  free(doc);
  http_backups_free(b);
  http_backups_free(NULL);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_json_writer),
      cmocka_unit_test(test_exact_numbers),
      cmocka_unit_test(test_range_parse),
      cmocka_unit_test(test_etag_and_token),
      cmocka_unit_test(test_error_names),
      cmocka_unit_test(test_backups_unavailable),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
