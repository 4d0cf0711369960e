/*
 * objstore_tool.c: one objstore.h call from the command line, for the
 * tests against a real S3 store (objstore_s3.py) and the upload bench
 * (bench/objstore_bench.py). Prints what came back on its last line:
 *
 *   result=NAME ms=T puts=.. gets=.. lists=.. deletes=.. bytes_up=..
 *   bytes_down=.. errors=.. retries=.. error=LAST_ERROR
 *
 * (NAME is "ok" or replicate_error_name()); exits 0 on success, 1 on an
 * error of the call, 2 on bad usage.
 *
 *   objstore_tool [OPTIONS] URL put KEY FILE [if-absent]
 *   objstore_tool [OPTIONS] URL get KEY OUTFILE [MAX_LEN]
 *   objstore_tool [OPTIONS] URL list PREFIX       (lines "KEY SIZE")
 *   objstore_tool [OPTIONS] URL delete KEY
 *   objstore_tool [OPTIONS] URL putmany PREFIX N  (N objects PREFIXi, i bytes)
 *
 * OPTIONS: --endpoint URL --credentials FILE --region R
 * --multipart-bytes N --parallel-parts N --retries N --retry-base-ms N --timeout-ms N
 * --max-keys N (the listing page size: objstore_s3_set_max_keys)
 * --cancel-after-ms N (another thread calls objstore_cancel then)
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "objstore.h"
#include "objstore_s3.h"
#include "replicate.h"

static double now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int read_file(const char *path, char **data, size_t *len)
{
  FILE *f = fopen(path, "rb");
  if (f == NULL)
    return errno;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  *data = malloc(n > 0 ? (size_t)n : 1);
  *len = *data && n >= 0 ? fread(*data, 1, (size_t)n, f) : 0;
  fclose(f);
  return *data && (long)*len == n ? 0 : EIO;
}

static int write_file(const char *path, const void *data, size_t len)
{
  FILE *f = fopen(path, "wb");
  if (f == NULL)
    return errno;
  size_t w = fwrite(data, 1, len, f);
  return fclose(f) == 0 && w == len ? 0 : EIO;
}

static int print_entry(void *ctx, const char *key, uint64_t size)
{
  (void)ctx;
  printf("%s %llu\n", key, (unsigned long long)size);
  return 0;
}

static int putmany(objstore *st, const char *prefix, long n)
{
  char key[600], buf[4096];
  memset(buf, 'x', sizeof buf);
  for (long i = 0; i < n; i++) {
    snprintf(key, sizeof key, "%s%05ld", prefix, i);
    int rc = objstore_put(st, key, buf, (size_t)i % sizeof buf, 0);
    if (rc != 0)
      return rc;
  }
  return 0;
}

static int run(objstore *st, int argc, char **argv)
{
  const char *op = argv[0];
  if (strcmp(op, "put") == 0 && argc >= 3) {
    char *data = NULL;
    size_t len = 0;
    int rc = read_file(argv[2], &data, &len);
    unsigned flags = argc > 3 && strcmp(argv[3], "if-absent") == 0
                         ? OBJSTORE_PUT_IF_ABSENT
                         : 0;
    double t0 = now_ms();
    if (rc == 0)
      rc = objstore_put(st, argv[1], data, len, flags);
    fprintf(stderr, "put_ms=%.1f\n", now_ms() - t0);
    free(data);
    return rc;
  }
  if (strcmp(op, "get") == 0 && argc >= 3) {
    void *data;
    size_t len;
    size_t max = argc > 3 ? strtoull(argv[3], NULL, 10) : 0;
    int rc = objstore_get(st, argv[1], max, &data, &len);
    if (rc == 0)
      rc = write_file(argv[2], data, len);
    free(data);
    return rc;
  }
  if (strcmp(op, "list") == 0 && argc >= 2)
    return objstore_list(st, argv[1], print_entry, NULL);
  if (strcmp(op, "delete") == 0 && argc >= 2)
    return objstore_delete(st, argv[1]);
  if (strcmp(op, "putmany") == 0 && argc >= 3)
    return putmany(st, argv[1], strtol(argv[2], NULL, 10));
  return -1;
}

static void report(int rc, const char *error, const objstore_stats *s,
                   double ms)
{
  printf("result=%s ms=%.1f puts=%llu gets=%llu lists=%llu deletes=%llu "
         "bytes_up=%llu bytes_down=%llu errors=%llu retries=%llu error=%s\n",
         rc == 0 ? "ok" : replicate_error_name(rc), ms,
         (unsigned long long)s->puts, (unsigned long long)s->gets,
         (unsigned long long)s->lists, (unsigned long long)s->deletes,
         (unsigned long long)s->bytes_up, (unsigned long long)s->bytes_down,
         (unsigned long long)s->errors, (unsigned long long)s->retries, error);
}

typedef struct canceller {
  objstore *store;
  long ms;
} canceller;

static void *cancel_later(void *ud)
{
  canceller *c = ud;
  struct timespec ts = {c->ms / 1000, (c->ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
  objstore_cancel(c->store);
  return NULL;
}

int main(int argc, char **argv)
{
  long cancel_ms = -1;
  objstore_options o = {0};
  unsigned max_keys = 0;
  int i = 1;
  for (; i + 1 < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
    const char *k = argv[i], *v = argv[i + 1];
    if (strcmp(k, "--endpoint") == 0)
      o.endpoint = v;
    else if (strcmp(k, "--credentials") == 0)
      o.credentials_file = v;
    else if (strcmp(k, "--region") == 0)
      o.region = v;
    else if (strcmp(k, "--multipart-bytes") == 0)
      o.multipart_bytes = strtoull(v, NULL, 10);
    else if (strcmp(k, "--parallel-parts") == 0)
      o.parallel_parts = (unsigned)atoi(v);
    else if (strcmp(k, "--retries") == 0)
      o.retries = (unsigned)atoi(v);
    else if (strcmp(k, "--retry-base-ms") == 0)
      o.retry_base_ms = (unsigned)atoi(v);
    else if (strcmp(k, "--timeout-ms") == 0)
      o.timeout_ms = atol(v);
    else if (strcmp(k, "--max-keys") == 0)
      max_keys = (unsigned)atoi(v);
    else if (strcmp(k, "--cancel-after-ms") == 0)
      cancel_ms = atol(v);
    else {
      fprintf(stderr, "objstore_tool: unknown option %s\n", k);
      return 2;
    }
  }
  if (argc - i < 2) {
    fprintf(stderr, "usage: objstore_tool [OPTIONS] URL OP ARGS...\n");
    return 2;
  }
  objstore *st;
  objstore_stats none = {0};
  double t0 = now_ms();
  int rc = objstore_open(argv[i], &o, &st);
  if (rc != 0) {
    report(rc, objstore_open_error(), &none, now_ms() - t0);
    return 1;
  }
  if (max_keys)
    objstore_s3_set_max_keys(st, max_keys);
  canceller c = {st, cancel_ms};
  pthread_t t;
  bool cancelling =
      cancel_ms >= 0 && pthread_create(&t, NULL, cancel_later, &c) == 0;
  rc = run(st, argc - i - 1, argv + i + 1);
  if (cancelling)
    pthread_join(t, NULL);
  if (rc == -1) {
    fprintf(stderr, "objstore_tool: bad operation\n");
    objstore_close(st);
    return 2;
  }
  objstore_stats s;
  objstore_get_stats(st, &s);
  report(rc, rc ? objstore_last_error(st) : "", &s, now_ms() - t0);
  objstore_close(st);
  return rc ? 1 : 0;
}
