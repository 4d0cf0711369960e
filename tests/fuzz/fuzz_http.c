/*
 * fuzz_http.c: hostile bytes as a raw HTTP request to a real standby server
 * (http_server_start on 127.0.0.1, an ephemeral port, a bearer token, small
 * limits), so every handler (frames, base, promote, backup, status,
 * metrics, health) and libmicrohttpd's parsing see them.
 *
 * Each input is sent on a fresh TCP connection, the write side is shut, and
 * the answer is read until the server closes (at most 5 s). Promises:
 *   - whatever comes back starts with "HTTP/1." (or nothing: the server may
 *     drop a request it cannot parse);
 *   - afterwards, GET /healthz on another connection answers 200 within 2 s
 *     (the server survived and is responsive);
 *   - no log line of the server ever contains the token.
 * The server's state carries over from input to input (frames applied, a
 * base taken, a promotion), which only widens what is reached.
 *
 * Run longer: build/tests/fuzz/fuzz_http -max_len=8192 tests/fuzz/corpus/http
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>

#include "fuzz_common.h"
#include "server.h"

const int fuzz_replay_mutations = 40;

#define FUZZ_TOKEN "fuzz-token-6c1d0f2a9b"

typedef struct http_state {
  char dir[256];
  http_server *server;
  uint16_t port;
} http_state;

static void http_log(void *ctx, const char *message)
{
  (void)ctx;
  CHECK(strstr(message, FUZZ_TOKEN) == NULL);
}

static void http_cleanup(void);

static http_state *http_get(void)
{
  static http_state st;
  static int ready;
  if (!ready) {
    signal(SIGPIPE, SIG_IGN);
    fuzz_scratch_path(st.dir, sizeof st.dir, "http-standby");
    fuzz_clear_dir(st.dir);
    http_server_options opt;
    memset(&opt, 0, sizeof opt);
    opt.role = HTTP_ROLE_STANDBY;
    opt.dir = st.dir;
    opt.listen_host = "127.0.0.1";
    opt.token = (const uint8_t *)FUZZ_TOKEN;
    opt.token_len = strlen(FUZZ_TOKEN);
    opt.max_frame_bytes = 1u << 20;
    opt.max_frame_pages = 16;
    opt.max_image_pages = 64;
    opt.connection_timeout_seconds = 3;
    opt.log = http_log;
    int rc = http_server_start(&opt, &st.server);
    if (rc != 0) fprintf(stderr, "http_server_start: %s\n", http_strerror(rc));
    CHECK(rc == 0);
    st.port = http_server_port(st.server);
    atexit(http_cleanup);
    ready = 1;
  }
  return &st;
}

static void http_cleanup(void)
{
  http_state *st = http_get();
  http_server_stop(st->server);
  fuzz_clear_dir(st->dir);
}

static int64_t now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int connect_local(uint16_t port)
{
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(fd >= 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  /* Close with a reset: a long run opens two connections per input and
   * would otherwise exhaust the ephemeral ports with TIME_WAIT entries
   * (EADDRNOTAVAIL, the first "crash" the fuzzer found, kept in the
   * corpus). A refused connection means the server is gone: a finding. */
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  CHECK(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
  int rc = -1;
  for (int attempt = 0; attempt < 200; attempt++) {
    rc = connect(fd, (struct sockaddr *)&a, sizeof a);
    if (rc != 0 && errno == EINTR) {
      /* A signal (libFuzzer's timers) interrupted it: the connection goes
       * on in the background; wait for it and take its outcome. */
      struct pollfd p = {.fd = fd, .events = POLLOUT};
      int err = 0;
      socklen_t len = sizeof err;
      int n;
      do n = poll(&p, 1, 2000); while (n < 0 && errno == EINTR);
      if (n == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0) {
        rc = err ? -1 : 0;
        errno = err;
      }
    }
    if (rc == 0 || (errno != EADDRNOTAVAIL && errno != EAGAIN)) break;
    struct timespec pause = {.tv_sec = 0, .tv_nsec = 10 * 1000 * 1000};
    nanosleep(&pause, NULL);
  }
  if (rc != 0) perror("connect to the server under test");
  CHECK(rc == 0);
  return fd;
}

/* Send data, shut the write side, read the answer into buf (at most cap
 * bytes kept) until EOF or timeout_ms. Returns the bytes kept; *closed
 * says whether EOF came. */
static size_t exchange(uint16_t port, const uint8_t *data, size_t size,
                       char *buf, size_t cap, int timeout_ms, int *closed)
{
  int fd = connect_local(port);
  size_t sent = 0;
  while (sent < size) {
    ssize_t w = send(fd, data + sent, size - sent, MSG_NOSIGNAL);
    if (w <= 0) break; /* the server may close early (413, 400) */
    sent += (size_t)w;
  }
  shutdown(fd, SHUT_WR);
  size_t got = 0;
  *closed = 0;
  int64_t deadline = now_ms() + timeout_ms;
  for (;;) {
    int left = (int)(deadline - now_ms());
    if (left <= 0) break;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, left) <= 0) break;
    char tmp[4096];
    ssize_t r = recv(fd, tmp, sizeof tmp, 0);
    if (r <= 0) {
      *closed = 1;
      break;
    }
    size_t keep = (size_t)r;
    if (got + keep > cap - 1) keep = cap - 1 - got;
    memcpy(buf + got, tmp, keep);
    got += keep;
  }
  buf[got] = 0;
  close(fd);
  return got;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  http_state *st = http_get();
  static char answer[65536];
  int closed;
  size_t got = exchange(st->port, data, size, answer, sizeof answer, 5000,
                        &closed);
  if (got > 0) {
    if (strncmp(answer, "HTTP/1.", 7) != 0)
      fprintf(stderr, "answer: %.200s\n", answer);
    CHECK(strncmp(answer, "HTTP/1.", 7) == 0);
  }
  static const char health[] =
      "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  got = exchange(st->port, (const uint8_t *)health, sizeof health - 1, answer,
                 sizeof answer, 2000, &closed);
  if (strncmp(answer, "HTTP/1.1 200", 12) != 0) {
    /* Diagnose before failing: the threads the process has (one per open
     * connection) and whether the server answers again later. */
    fprintf(stderr, "healthz after input: got %zu bytes: %.200s\n", got,
            answer);
    FILE *fp = fopen("/proc/self/status", "r");
    char line[256];
    while (fp != NULL && fgets(line, sizeof line, fp) != NULL)
      if (strncmp(line, "Threads:", 8) == 0) fprintf(stderr, "%s", line);
    if (fp != NULL) fclose(fp);
    for (int second = 1; second <= 15; second++) {
      got = exchange(st->port, (const uint8_t *)health, sizeof health - 1,
                     answer, sizeof answer, 1000, &closed);
      if (strncmp(answer, "HTTP/1.1 200", 12) == 0) {
        fprintf(stderr, "healthz answered again after %d more s\n", second);
        break;
      }
    }
  }
  CHECK(strncmp(answer, "HTTP/1.1 200", 12) == 0);
  return 0;
}

static void seed(const char *dir, const char *name, const char *text)
{
  fuzz_write_file(dir, name, text, strlen(text));
}

int fuzz_make_seeds(const char *dir)
{
  const char *auth = "Authorization: Bearer " FUZZ_TOKEN "\r\n";
  char buf[2048];
  seed(dir, "healthz", "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
  seed(dir, "readyz", "GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n");
  seed(dir, "status", "GET /v1/status HTTP/1.1\r\nHost: a\r\n\r\n");
  seed(dir, "metrics", "GET /metrics HTTP/1.0\r\n\r\n");
  snprintf(buf, sizeof buf,
           "GET /v1/backup HTTP/1.1\r\nHost: a\r\n%sRange: bytes=10-99\r\n"
           "If-Range: \"2-2-0\"\r\n\r\n", auth);
  seed(dir, "backup-range", buf);
  snprintf(buf, sizeof buf, "HEAD /v1/backup HTTP/1.1\r\nHost: a\r\n%s\r\n",
           auth);
  seed(dir, "backup-head", buf);
  seed(dir, "backup-no-token", "GET /v1/backup HTTP/1.1\r\nHost: a\r\n\r\n");
  snprintf(buf, sizeof buf,
           "POST /v1/frames HTTP/1.1\r\nHost: a\r\n%s"
           "Content-Type: application/octet-stream\r\nContent-Length: 16\r\n\r\n"
           "LOOMFRM\x01garbage!", auth);
  seed(dir, "frames-garbage", buf);
  snprintf(buf, sizeof buf,
           "POST /v1/frames HTTP/1.1\r\nHost: a\r\n%s"
           "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", auth);
  seed(dir, "frames-chunked", buf);
  snprintf(buf, sizeof buf,
           "POST /v1/frames HTTP/1.1\r\nHost: a\r\n%s"
           "Content-Length: 99999999999\r\n\r\n", auth);
  seed(dir, "frames-huge-length", buf);
  snprintf(buf, sizeof buf,
           "PUT /v1/base HTTP/1.1\r\nHost: a\r\n%sContent-Length: 64\r\n\r\n"
           "LOOMIMG\x01" "0123456789012345678901234567890123456789012345678901234",
           auth);
  seed(dir, "base-short", buf);
  snprintf(buf, sizeof buf,
           "POST /v1/promote HTTP/1.1\r\nHost: a\r\n%sContent-Length: 0\r\n\r\n",
           auth);
  seed(dir, "promote", buf);
  seed(dir, "promote-wrong-token",
       "POST /v1/promote HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer x\r\n"
       "Content-Length: 0\r\n\r\n");
  seed(dir, "pipelined",
       "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /v1/status HTTP/1.1\r\n"
       "Host: a\r\n\r\nDELETE /v1/frames HTTP/1.1\r\nHost: a\r\n\r\n");
  seed(dir, "bad-method", "BREW /v1/status HTTP/1.1\r\nHost: a\r\n\r\n");
  seed(dir, "http09", "GET /\r\n\r\n");
  return 0;
}
