/*
 * test_http_tls.c: the server over TLS, with a self-signed certificate
 * made for 127.0.0.1 by `openssl req -x509` in the test (skipped when
 * openssl is not installed): frames and a backup round trip, a plain HTTP
 * client refused, and bad certificate options refused at start.
 */
#include <errno.h>
#include <unistd.h>

#include "httptest.h"

/* Always inlined: as a function of its own, GCC 12 with -fsanitize=undefined
 * takes dir for NULL in ht_path's sprintf (-Wformat-overflow). */
__attribute__((always_inline)) static inline bool make_cert(const char *dir, char **cert,
                                                            char **key)
{
  if (system("command -v openssl >/dev/null 2>&1") != 0)
    return false;
  *cert = ht_path(dir, "cert.pem");
  *key = ht_path(dir, "key.pem");
  char cmd[2048];
  snprintf(cmd, sizeof cmd,
           "openssl req -x509 -newkey rsa:2048 -nodes -days 1 "
           "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 "
           "-keyout '%s' -out '%s' >/dev/null 2>&1",
           *key, *cert);
  assert_int_equal(system(cmd), 0);
  return true;
}

static void test_tls_round_trip(void **state)
{
  (void)state;
  char *tmp = test_tmpdir("tls");
  char *cert = NULL, *key = NULL;
  if (!make_cert(tmp, &cert, &key)) {
    test_rmtree(tmp);
    skip();
  }
  ht_primary p;
  ht_primary_open(&p, 128, 41);
  ht_primary_run(&p, 6);
  char *dir = test_tmpdir("standby");
  static const char token[] = "tls-token";
  http_server_options opt = {.role = HTTP_ROLE_STANDBY, .dir = dir,
                             .token = (const uint8_t *)token, .token_len = 9,
                             .tls_cert_file = cert, .tls_key_file = key};
  ht_server s;
  ht_start(&s, &opt);
  assert_true(strncmp(s.base, "https://", 8) == 0);

  for (size_t i = 0; i < p.nframes; i++) {
    ht_req req = {.token = token, .body = p.frames[i].data,
                  .body_len = p.frames[i].len, .cainfo = cert};
    ht_resp r;
    ht_call("POST", ht_url(&s, "/v1/frames"), &req, &r);
    assert_int_equal(r.curl_rc, CURLE_OK);
    assert_int_equal(r.status, 200);
    ht_resp_free(&r);
  }
  ht_wait_applied(&s, p.nframes);
  ht_req req = {.token = token, .cainfo = cert};
  ht_resp r;
  ht_call("GET", ht_url(&s, "/v1/backup"), &req, &r);
  assert_int_equal(r.status, 200);
  loom_position pos;
  ht_check_stream(r.body, r.len, &pos);
  assert_int_equal(pos.seq, p.nframes);
  ht_assert_image_is(dir, r.body + LOOM_STREAM_HEADER,
                     r.len - LOOM_STREAM_HEADER);
  ht_resp_free(&r);

  /* Plain HTTP to the TLS port gets no answer. */
  char plain[128];
  snprintf(plain, sizeof plain, "http://127.0.0.1:%u/healthz",
           (unsigned)http_server_port(s.server));
  ht_call("GET", plain, NULL, &r);
  assert_true(r.curl_rc != CURLE_OK || r.status != 200);
  ht_resp_free(&r);
  /* A client that does not trust the certificate fails. */
  ht_call("GET", ht_url(&s, "/healthz"), NULL, &r);
  assert_int_not_equal(r.curl_rc, CURLE_OK);
  ht_resp_free(&r);
  ht_stop(&s);
  ht_primary_close(&p);
  ht_assert_same_image(p.dir, dir);

  /* Start errors: a certificate that is not one; a missing key file. */
  char *junk = ht_path(tmp, "junk.pem");
  FILE *f = fopen(junk, "w");
  fputs("not a certificate\n", f);
  fclose(f);
  http_server *srv;
  opt = (http_server_options){.role = HTTP_ROLE_STANDBY, .dir = dir,
                              .tls_cert_file = junk, .tls_key_file = key};
  assert_int_equal(http_server_start(&opt, &srv), HTTP_EDAEMON);
  opt.tls_cert_file = cert;
  opt.tls_key_file = "/nonexistent/key.pem";
  assert_int_equal(http_server_start(&opt, &srv), HTTP_ETLS_FILE);

  free(junk);
  free(cert);
  free(key);
  ht_primary_free(&p);
  test_rmtree(dir);
  test_rmtree(tmp);
}

/* GET /healthz trusting only the certificate in cainfo: 200 or not. */
static bool trusted(ht_server *s, const char *cainfo)
{
  ht_req req = {.cainfo = cainfo};
  ht_resp r;
  ht_call("GET", ht_url(s, "/healthz"), &req, &r);
  bool ok = r.curl_rc == CURLE_OK && r.status == 200;
  ht_resp_free(&r);
  return ok;
}

/* SIGHUP's certificate rotation: new connections get the new certificate,
 * files that cannot be used change nothing, a plain server stays plain. */
static void test_tls_reload(void **state)
{
  (void)state;
  char *tmp_a = test_tmpdir("tls-a"), *tmp_b = test_tmpdir("tls-b");
  char *cert_a = NULL, *key_a = NULL, *cert_b = NULL, *key_b = NULL;
  bool have = make_cert(tmp_a, &cert_a, &key_a);
  if (have)
    have = make_cert(tmp_b, &cert_b, &key_b);
  if (!have) {
    test_rmtree(tmp_a);
    test_rmtree(tmp_b);
    skip();
  }
  char *dir = test_tmpdir("standby");
  http_server_options opt = {.role = HTTP_ROLE_STANDBY, .dir = dir,
                             .tls_cert_file = cert_a, .tls_key_file = key_a};
  ht_server s;
  ht_start(&s, &opt);
  assert_true(trusted(&s, cert_a));
  assert_false(trusted(&s, cert_b));
  assert_int_equal(http_server_reload_tls(s.server, cert_b, key_b), 0);
  assert_true(trusted(&s, cert_b));
  assert_false(trusted(&s, cert_a));
  /* Unusable files: an error, and B is still served. */
  assert_int_equal(http_server_reload_tls(s.server, "/nonexistent/c.pem", key_a),
                   HTTP_ETLS_FILE);
  char *junk = ht_path(tmp_a, "junk.pem");
  FILE *f = fopen(junk, "w");
  fputs("not a certificate\n", f);
  fclose(f);
  assert_int_equal(http_server_reload_tls(s.server, junk, key_a), HTTP_EDAEMON);
  assert_true(trusted(&s, cert_b));
  /* And back to A, twice: every replaced daemon is stopped at the end. */
  assert_int_equal(http_server_reload_tls(s.server, cert_a, key_a), 0);
  assert_int_equal(http_server_reload_tls(s.server, cert_a, key_a), 0);
  assert_true(trusted(&s, cert_a));
  ht_stop(&s);

  char *dir2 = test_tmpdir("standby-plain");
  http_server_options plain = {.role = HTTP_ROLE_STANDBY, .dir = dir2};
  ht_start(&s, &plain);
  assert_int_equal(http_server_reload_tls(s.server, cert_a, key_a), HTTP_ETLS);
  ht_stop(&s);
  free(junk);
  free(cert_a), free(key_a), free(cert_b), free(key_b);
  test_rmtree(dir);
  test_rmtree(dir2);
  test_rmtree(tmp_a);
  test_rmtree(tmp_b);
}

int main(void)
{
  curl_global_init(CURL_GLOBAL_DEFAULT);
  if (getenv("HTTP_TEST_FILTER")) /* run only the tests matching a pattern */
    cmocka_set_test_filter(getenv("HTTP_TEST_FILTER"));
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tls_round_trip),
      cmocka_unit_test(test_tls_reload),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  curl_global_cleanup();
  return rc;
}
