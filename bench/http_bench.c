/*
 * http_bench.c: the loopback HTTP limit, the reference for shipping. A
 * trivial libmicrohttpd server (thread per connection, like the standby's)
 * that reads and discards each POST body and answers 200 with a short JSON
 * body, and a libcurl easy handle reused for every request (one kept-alive
 * connection, like the shipper's pipeline per standby) POSTing bodies of
 * 1 MiB (throughput) and of 600 bytes (about one 64-page delta frame:
 * the round-trip floor under replication lag) to 127.0.0.1.
 *
 * Usage: http_bench [--quick]
 * Output: a table, and "RESULT name median min max unit reference ratio"
 * lines for ./bench. Medians are over repeats (rounds of requests).
 */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <microhttpd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "benchutil.h"

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *data,
                              size_t *size, void **state)
{
  (void)cls, (void)url, (void)method, (void)version, (void)data;
  static int marker;
  if (*state == NULL) {
    *state = &marker;
    return MHD_YES;
  }
  if (*size) { /* discard the body, as it arrives */
    *size = 0;
    return MHD_YES;
  }
  static const char body[] = "{\"ok\":true}";
  struct MHD_Response *r =
      MHD_create_response_from_buffer(sizeof body - 1, (void *)body, MHD_RESPMEM_PERSISTENT);
  enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, r);
  MHD_destroy_response(r);
  return ret;
}

static size_t sink(char *p, size_t s, size_t n, void *u)
{
  (void)p, (void)u;
  return s * n;
}

/* One round of `count` POSTs of `len` bytes: fills lat[] (seconds),
 * returns the round's wall time. */
static double round_of(CURL *h, const char *url, const uint8_t *body, size_t len, int count,
                       double *lat)
{
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
  double t0 = now_s();
  for (int i = 0; i < count; i++) {
    double a = now_s();
    CURLcode rc = curl_easy_perform(h);
    long code = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    if (rc != CURLE_OK || code != 200) {
      fprintf(stderr, "http_bench: request failed: %s (%ld)\n", curl_easy_strerror(rc), code);
      exit(1);
    }
    lat[i] = now_s() - a;
  }
  return now_s() - t0;
}

int main(int argc, char **argv)
{
  int quick = argc > 1 && !strcmp(argv[1], "--quick");
  int repeats = quick ? 3 : 7, count_big = quick ? 50 : 200, count_small = quick ? 200 : 1000;
  /* bind to 127.0.0.1 on an ephemeral port */
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = 0;
  struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL,
                       NULL, handle, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                       MHD_OPTION_END);
  if (!d) {
    fprintf(stderr, "http_bench: server did not start\n");
    return 1;
  }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%u/v1/frames", (unsigned)info->port);

  curl_global_init(CURL_GLOBAL_DEFAULT);
  CURL *h = curl_easy_init();
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink);
  curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
  struct curl_slist *hd = curl_slist_append(NULL, "Content-Type: application/octet-stream");
  hd = curl_slist_append(hd, "Expect:"); /* no 100-continue round trip */
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);

  size_t big = 1u << 20, small = 600;
  uint8_t *body = malloc(big);
  for (size_t i = 0; i < big; i++)
    body[i] = (uint8_t)(i * 2654435761u >> 13);
  double *lat = calloc((size_t)count_small, sizeof *lat);
  double mbps[16], p50_big[16], p50_small[16], rps_small[16];
  round_of(h, url, body, big, 10, lat); /* warm up */
  for (int r = 0; r < repeats; r++) {
    double t = round_of(h, url, body, big, count_big, lat);
    mbps[r] = (double)big * count_big / t / 1e6;
    qsort(lat, (size_t)count_big, sizeof *lat, cmp_double);
    p50_big[r] = lat[count_big / 2] * 1e3;
    t = round_of(h, url, body, small, count_small, lat);
    rps_small[r] = count_small / t;
    qsort(lat, (size_t)count_small, sizeof *lat, cmp_double);
    p50_small[r] = lat[count_small / 2] * 1e3;
  }
  stat3 a = summarize(mbps, repeats), b = summarize(p50_big, repeats),
        c = summarize(p50_small, repeats), e = summarize(rps_small, repeats);
  printf("loopback HTTP (libmicrohttpd thread-per-connection + libcurl keep-alive), %d "
         "repeats\n",
         repeats);
  printf("  %-36s %10s %10s %10s\n", "figure", "median", "min", "max");
  printf("  %-36s %10.1f %10.1f %10.1f\n", "1 MiB POST throughput (MB/s)", a.median, a.min,
         a.max);
  printf("  %-36s %10.3f %10.3f %10.3f\n", "1 MiB POST latency p50 (ms)", b.median, b.min,
         b.max);
  printf("  %-36s %10.3f %10.3f %10.3f\n", "600 B POST latency p50 (ms)", c.median, c.min,
         c.max);
  printf("  %-36s %10.0f %10.0f %10.0f\n", "600 B POSTs per second (1 conn)", e.median, e.min,
         e.max);
  printf("RESULT http_1MiB_MBps %.6g %.6g %.6g MB/s -=0 0\n", a.median, a.min, a.max);
  printf("RESULT http_1MiB_p50 %.6g %.6g %.6g ms -=0 0\n", b.median, b.min, b.max);
  printf("RESULT http_600B_p50 %.6g %.6g %.6g ms -=0 0\n", c.median, c.min, c.max);
  printf("RESULT http_600B_rps %.6g %.6g %.6g req/s -=0 0\n", e.median, e.min, e.max);
  curl_slist_free_all(hd);
  curl_easy_cleanup(h);
  curl_global_cleanup();
  MHD_stop_daemon(d);
  free(body);
  free(lat);
  return 0;
}
