/*
 * objstore_s3.c: the s3:// backend of objstore.h: path-style S3 requests
 * to --archive-endpoint through one libcurl multi handle per store (its
 * connections are pooled and reused; a request waits in curl_multi_poll,
 * which objstore_cancel() wakes), signed with SigV4 by libcurl.
 * docs/OBJSTORE.md shows each request and answer.
 *
 * REQUESTS
 *
 *   put     PUT /BUCKET/PREFIX/KEY               (len <= multipart_bytes)
 *           POST ?uploads=, then PUT ?partNumber=N&uploadId=U for each
 *           part, then POST ?uploadId=U with the list of parts; DELETE
 *           ?uploadId=U (abort) when a step fails   (len > multipart_bytes)
 *   get     GET /BUCKET/PREFIX/KEY
 *   list    GET /BUCKET?[continuation-token=T&]list-type=2&max-keys=M
 *           &prefix=P, page after page
 *   delete  DELETE /BUCKET/PREFIX/KEY
 *
 * SIGNING
 *
 * S1 libcurl signs (CURLOPT_AWS_SIGV4 "aws:amz:REGION:s3"), with the key
 *    id and secret in CURLOPT_USERNAME/PASSWORD: the key id may contain a
 *    colon (Swift's "test:tester"), which "id:secret" could not carry.
 * S2 libcurl 7.88 signs the query string as it is given, so every query
 *    here is built canonical: parameters sorted by name, values with
 *    uppercase %XX for every byte but A-Z a-z 0-9 - _ . ~, and a
 *    parameter without a value written "name=" (?uploads=).
 * S3 x-amz-content-sha256 is sent explicitly (libcurl 7.88 does not add
 *    it). Over http:// it is the real hex SHA-256 of the body (libcrypto):
 *    the signature then covers the body, so nothing on the way can change
 *    it unseen (the store answers 400 BadDigest, or 403), and a damaged
 *    upload fails now, not at a restore months later. Over https:// it is
 *    UNSIGNED-PAYLOAD: TLS already protects the body, and the hash pass
 *    (0.15 s per 256 MiB at 1.7 GB/s with SHA-NI, in series with the
 *    upload of a single PUT) would buy nothing more; botocore decides
 *    the same way. A multipart put hashes its parts on a helper thread
 *    ahead of their uploads (M2), so only the first part's hash is in
 *    series.
 * S4 keys are [A-Za-z0-9._/-] (objstore.c checks them): no byte of a path
 *    needs encoding. The bucket is checked at open ([a-z0-9.-], 3-63).
 * S5 OBJSTORE_PUT_IF_ABSENT sends If-None-Match: * (S3 answers 412 when
 *    the key exists). Swift 2.30's s3api answers 501 NotImplemented to a
 *    conditional PUT: the store then remembers that and checks with HEAD
 *    before the PUT, which is not atomic (two writers racing within one
 *    round trip both succeed). A multipart put always checks with HEAD.
 * S6 Only x-amz-content-sha256 and If-None-Match are added as headers:
 *    libcurl 7.88 signs every header set through CURLOPT_HTTPHEADER, even
 *    one set empty to remove it ("Expect:"), which is then not sent and
 *    breaks the signature. So libcurl keeps its own Expect: 100-continue
 *    on bodies over 1 MiB (the store answers 100, or refuses early).
 *
 * MULTIPART
 *
 * M1 Up to options.parallel_parts parts are in flight at once, each its own
 *    PUT on its own connection (one easy handle per slot in the multi), in
 *    part order as slots free up: the store's per-request costs (its
 *    fsync of each part, the 100-continue round trip) overlap the other
 *    parts' transfers. A part is retried on its own (R1, R2); the first
 *    part that fails for good cuts the others, and the upload is aborted.
 * M2 The parts' hashes (S3) are made in order on one helper thread, which
 *    wakes the multi's wait as each is ready: a part goes out once its
 *    hash is there.
 * M3 Each part's ETag is kept under its part number; the complete lists
 *    them in order, whatever order the parts finished in.
 *
 * RETRIES
 *
 * R1 A request is sent again when it failed at the transport (no
 *    connection, a timeout, a cut) or was answered 500, 502, 503 or 504;
 *    never after 4xx or 501, nor when an answer was larger than asked.
 * R2 options.retries tries in all; between two, the wait doubles from
 *    retry_base_ms up to 5 s, except that a Retry-After (503 SlowDown)
 *    is waited instead (at most 30 s). The wait is the multi's poll, so
 *    other parts go on meanwhile and objstore_cancel() ends it.
 * R3 Every request is idempotent but one: a CompleteMultipartUpload sent
 *    again after its answer was lost finds NoSuchUpload; the object's size
 *    is then checked with HEAD before the put is called done.
 *
 * ERRORS (objstore.h): 403 -> REPLICATE_ESTORE_AUTH; 404 (NoSuchKey,
 * NoSuchBucket, NoSuchUpload) -> REPLICATE_ESTORE_MISSING; 412 or an
 * existing key under S5 -> REPLICATE_ESTORE_EXISTS; anything else ->
 * REPLICATE_ESTORE. last_error names the method, the object as
 * s3://BUCKET/NAME, the HTTP status and S3's error Code ("PUT
 * s3://b/p/x: 403 SignatureDoesNotMatch"), or the endpoint and libcurl's
 * words when no answer came.
 */
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "objstore_s3.h"
#include "replicate.h"

#define S3_ERROR_BODY_MAX ((size_t)64 << 10) /* kept of an error answer */
#define S3_LIST_BODY_MAX ((size_t)16 << 20)  /* one listing page */
#define S3_BACKOFF_CAP_MS 5000u
#define S3_RETRY_AFTER_CAP_S 30
#define S3_MAX_PARTS 10000u
#define S3_ETAG_MAX 128

typedef struct s3_store {
  struct objstore base; /* first: objstore.c sees only this */
  CURLM *multi;         /* every request goes through it (cancellable) */
  CURL *curl;           /* single requests' easy handle */
  char *endpoint;       /* "http://host:port", no trailing '/' */
  char *bucket;
  char *prefix; /* "" or "PREFIX/" */
  char *key_id, *secret;
  char sigv4[96];          /* "aws:amz:REGION:s3" */
  unsigned max_keys;       /* a listing page; 1000 but for tests */
  bool no_conditional_put; /* the store answered 501 to If-None-Match */
  bool unsigned_payload;   /* https://: S3 */
  bool curl_initialised;   /* curl_global_init() to undo at close */
} s3_store;

typedef struct s3_request {
  const char *method; /* GET HEAD PUT POST DELETE */
  const char *object; /* PREFIX/KEY under the bucket; NULL: the bucket */
  const char *query;  /* canonical (S2); NULL: none */
  const void *body;   /* PUT, POST */
  size_t body_len;
  const char *header; /* one more header; NULL: none */
  size_t max_len;     /* answer bytes taken at most; 0: no limit */
  uint64_t *count;    /* the stats kind this request counts in */
} s3_request;

typedef struct s3_answer {
  CURL *curl;
  long status; /* 0: no answer */
  CURLcode result;
  char *body; /* NUL-terminated */
  size_t len, cap, max;
  bool too_big;   /* a 2xx body past max */
  bool cancelled; /* objstore_cancel() cut it: no answer */
  long retry_after;
  int64_t content_length;
  unsigned tries;
  char etag[S3_ETAG_MAX];
  char curl_error[CURL_ERROR_SIZE];
} s3_answer;

typedef struct s3_upload {
  const char *data;
  size_t len, off;
} s3_upload;

static s3_store *s3_of(objstore *store) { return (s3_store *)store; }

/* ---------------------------------------------------------------------- */
/* One request */

static void sha256_hex(const void *data, size_t len, char hex[65])
{
  unsigned char md[32];
  unsigned int n = 0;
  static const char digits[] = "0123456789abcdef";
  EVP_Digest(data != NULL ? data : "", len, md, &n, EVP_sha256(), NULL);
  for (int i = 0; i < 32; i++) {
    hex[2 * i] = digits[md[i] >> 4];
    hex[2 * i + 1] = digits[md[i] & 15];
  }
  hex[64] = '\0';
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud)
{
  s3_answer *an = ud;
  size_t n = size * nmemb;
  long status = 0;
  curl_easy_getinfo(an->curl, CURLINFO_RESPONSE_CODE, &status);
  size_t max = status >= 300 ? S3_ERROR_BODY_MAX : an->max;
  if (n > max - an->len) {
    if (status >= 300)
      return n; /* the rest of an error text: dropped */
    an->too_big = true;
    return 0;
  }
  if (an->len + n + 1 > an->cap) {
    size_t cap = an->cap ? an->cap : 4096;
    while (cap < an->len + n + 1)
      cap *= 2;
    char *b = realloc(an->body, cap);
    if (b == NULL)
      return 0;
    an->body = b;
    an->cap = cap;
  }
  memcpy(an->body + an->len, data, n);
  an->len += n;
  an->body[an->len] = '\0';
  return n;
}

static size_t on_header(char *line, size_t size, size_t nmemb, void *ud)
{
  s3_answer *an = ud;
  size_t n = size * nmemb;
  if (n > 5 && strncasecmp(line, "ETag:", 5) == 0) {
    const char *v = line + 5;
    size_t k = n - 5;
    while (k > 0 && (*v == ' ' || *v == '\t'))
      v++, k--;
    while (k > 0 && (v[k - 1] == '\r' || v[k - 1] == '\n' || v[k - 1] == ' '))
      k--;
    if (k < sizeof an->etag) {
      memcpy(an->etag, v, k);
      an->etag[k] = '\0';
    }
  }
  return n;
}

static size_t on_read(char *buf, size_t size, size_t nitems, void *ud)
{
  s3_upload *up = ud;
  size_t n = size * nitems;
  if (n > up->len - up->off)
    n = up->len - up->off;
  memcpy(buf, up->data + up->off, n);
  up->off += n;
  return n;
}

static int on_seek(void *ud, curl_off_t offset, int origin)
{
  s3_upload *up = ud;
  if (origin != SEEK_SET || offset < 0 || (uint64_t)offset > up->len)
    return CURL_SEEKFUNC_FAIL;
  up->off = (size_t)offset;
  return CURL_SEEKFUNC_OK;
}

static char *request_url(const s3_store *s, const s3_request *rq)
{
  const char *obj = rq->object ? rq->object : "";
  const char *q = rq->query ? rq->query : "";
  size_t n =
      strlen(s->endpoint) + strlen(s->bucket) + strlen(obj) + strlen(q) + 4;
  char *url = malloc(n);
  if (url != NULL)
    snprintf(url, n, "%s/%s%s%s%s%s", s->endpoint, s->bucket,
             rq->object ? "/" : "", obj, *q ? "?" : "", q);
  return url;
}

static struct curl_slist *request_headers(const s3_request *rq, const char *sha)
{
  char line[100];
  snprintf(line, sizeof line, "x-amz-content-sha256: %s", sha);
  struct curl_slist *h = curl_slist_append(NULL, line);
  struct curl_slist *t = h; /* S6 */
  if (t != NULL && rq->header != NULL)
    t = curl_slist_append(t, rq->header);
  if (t == NULL)
    curl_slist_free_all(h);
  return t ? h : NULL;
}

static void set_method(CURL *c, const s3_request *rq, s3_upload *up)
{
  const char *m = rq->method;
  if (strcmp(m, "HEAD") == 0) {
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  } else if (strcmp(m, "PUT") == 0) {
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(c, CURLOPT_READDATA, up);
    curl_easy_setopt(c, CURLOPT_SEEKFUNCTION, on_seek);
    curl_easy_setopt(c, CURLOPT_SEEKDATA, up);
    curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)up->len);
  } else if (strcmp(m, "POST") == 0) {
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, up->data ? up->data : "");
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)up->len);
  } else if (strcmp(m, "DELETE") == 0) {
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "DELETE");
  }
}

/* One request in flight through the store's multi handle: what it sends,
 * where the answer goes, and when it is sent again (R1, R2). */
typedef struct s3_xfer {
  CURL *curl; /* the caller's; reused, its connection stays in the pool */
  const s3_request *rq;
  const char *sha; /* x-amz-content-sha256 */
  s3_answer *an;
  s3_upload up;
  char *url;
  struct curl_slist *headers;
  unsigned long wait_ms; /* the next backoff */
  double retry_at;       /* > 0: to be sent again then (monotonic s) */
  bool running, finished;
} s3_xfer;

static double mono_s(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static bool cancelled(const s3_store *s)
{
  return atomic_load(&s->base.cancelled);
}

static int xfer_init(s3_store *s, s3_xfer *x, CURL *curl,
                     const s3_request *rq, const char *sha, s3_answer *an)
{
  *x = (s3_xfer){.curl = curl, .rq = rq, .sha = sha, .an = an,
                 .wait_ms = s->base.options.retry_base_ms};
  x->url = request_url(s, rq);
  x->headers = x->url ? request_headers(rq, sha) : NULL;
  an->curl = curl;
  an->tries = 0;
  return x->headers ? 0 : ENOMEM;
}

static void xfer_free(s3_store *s, s3_xfer *x)
{
  if (x->running)
    curl_multi_remove_handle(s->multi, x->curl);
  x->running = false;
  curl_slist_free_all(x->headers);
  free(x->url);
  x->headers = NULL;
  x->url = NULL;
}

/* Sends x (again): the easy handle reset, set up and added to the multi. */
static int xfer_send(s3_store *s, s3_xfer *x)
{
  CURL *c = x->curl;
  s3_answer *an = x->an;
  (*x->rq->count)++;
  an->tries++;
  an->len = 0;
  an->too_big = false;
  an->status = 0;
  an->etag[0] = an->curl_error[0] = '\0';
  an->max = x->rq->max_len ? x->rq->max_len : SIZE_MAX - 1;
  x->up = (s3_upload){x->rq->body, x->rq->body_len, 0};
  x->retry_at = 0;
  curl_easy_reset(c);
  curl_easy_setopt(c, CURLOPT_URL, x->url);
  curl_easy_setopt(c, CURLOPT_PRIVATE, x);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_AWS_SIGV4, s->sigv4);
  curl_easy_setopt(c, CURLOPT_USERNAME, s->key_id);
  curl_easy_setopt(c, CURLOPT_PASSWORD, s->secret);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, x->headers);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, s->base.options.timeout_ms);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, an);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, an);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, an->curl_error);
  set_method(c, x->rq, &x->up);
  if (curl_multi_add_handle(s->multi, c) != CURLM_OK)
    return ENOMEM;
  x->running = true;
  return 0;
}

static bool transient(const s3_answer *an)
{
  if (an->too_big)
    return false;
  if (an->status == 0)
    return true; /* R1: no answer */
  return an->status == 500 || an->status == 502 || an->status == 503 ||
         an->status == 504;
}

/* A transfer ended with result: its answer read, then either finished or
 * due again after the backoff (R1, R2). */
static void xfer_ended(s3_store *s, s3_xfer *x, CURLcode result)
{
  s3_answer *an = x->an;
  curl_multi_remove_handle(s->multi, x->curl);
  x->running = false;
  an->result = result;
  curl_off_t ra = 0, cl = -1;
  if (result == CURLE_OK) {
    curl_easy_getinfo(x->curl, CURLINFO_RESPONSE_CODE, &an->status);
    curl_easy_getinfo(x->curl, CURLINFO_RETRY_AFTER, &ra);
    curl_easy_getinfo(x->curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
  }
  an->retry_after = ra > S3_RETRY_AFTER_CAP_S ? S3_RETRY_AFTER_CAP_S : (long)ra;
  an->content_length = cl;
  if (!transient(an) || an->tries >= s->base.options.retries) {
    x->finished = true;
    return;
  }
  s->base.stats.retries++;
  unsigned long ms = x->wait_ms;
  if (an->status == 503 && an->retry_after > 0)
    ms = (unsigned long)an->retry_after * 1000;
  x->retry_at = mono_s() + (double)ms / 1000;
  x->wait_ms = x->wait_ms * 2 > S3_BACKOFF_CAP_MS ? S3_BACKOFF_CAP_MS
                                                  : x->wait_ms * 2;
}

/* objstore_cancel(): every transfer of xs not finished is taken out of the
 * multi and finished without an answer. */
static void xfer_cancel_all(s3_store *s, s3_xfer *const *xs, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    if (xs[i] == NULL || xs[i]->finished)
      continue;
    if (xs[i]->running)
      curl_multi_remove_handle(s->multi, xs[i]->curl);
    xs[i]->running = false;
    xs[i]->finished = true;
    xs[i]->an->status = 0;
    xs[i]->an->cancelled = true;
  }
}

/* One round for the transfers xs (NULL entries skipped): send what is
 * due, move the bytes, note what ended, then wait for the sockets, the
 * next retry, a wake-up (a part's hash, objstore_cancel) or 1 s. 0, or
 * ENOMEM when a retry could not be sent. */
static int s3_pump(s3_store *s, s3_xfer *const *xs, size_t n)
{
  double now = mono_s(), wait = 1.0;
  for (size_t i = 0; i < n; i++) {
    s3_xfer *x = xs[i];
    if (x == NULL || x->finished || x->running || x->retry_at <= 0)
      continue;
    if (x->retry_at <= now) {
      if (xfer_send(s, x) != 0)
        return ENOMEM;
    } else if (x->retry_at - now < wait) {
      wait = x->retry_at - now;
    }
  }
  int running = 0, left = 0;
  curl_multi_perform(s->multi, &running);
  CURLMsg *m;
  while ((m = curl_multi_info_read(s->multi, &left)) != NULL) {
    if (m->msg != CURLMSG_DONE)
      continue;
    s3_xfer *x = NULL;
    CURL *easy = m->easy_handle;
    CURLcode result = m->data.result;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
    if (x != NULL)
      xfer_ended(s, x, result);
    wait = 0; /* a retry may be due at once; a slot is free */
  }
  if (wait > 0 && !cancelled(s))
    curl_multi_poll(s->multi, NULL, 0, (int)(wait * 1000) + 1, NULL);
  return 0;
}

/* Sends rq with sha as its x-amz-content-sha256, again while R1 says so,
 * at most options.retries times (R2). 0 with an filled (an->status 0 if
 * no answer ever came; an->cancelled after objstore_cancel()), or ENOMEM. */
static int s3_call_hashed(s3_store *s, const s3_request *rq, const char *sha,
                          s3_answer *an)
{
  s3_xfer x, *xs[1] = {&x};
  int rc = xfer_init(s, &x, s->curl, rq, sha, an);
  if (rc == 0)
    rc = xfer_send(s, &x);
  while (rc == 0 && !x.finished) {
    if (cancelled(s))
      xfer_cancel_all(s, xs, 1);
    else
      rc = s3_pump(s, xs, 1);
  }
  xfer_free(s, &x);
  return rc;
}

/* The x-amz-content-sha256 of a body (S3). */
static void payload_hash(const s3_store *s, const void *data, size_t len,
                         char hex[65])
{
  if (s->unsigned_payload)
    snprintf(hex, 65, "UNSIGNED-PAYLOAD");
  else
    sha256_hex(data, len, hex);
}

static int s3_call(s3_store *s, const s3_request *rq, s3_answer *an)
{
  char sha[65];
  payload_hash(s, rq->body, rq->body_len, sha);
  return s3_call_hashed(s, rq, sha, an);
}

/* ---------------------------------------------------------------------- */
/* Outcomes */

/* Sets last_error from a failed answer and returns the error code. */
static int fail_answer(s3_store *s, const s3_request *rq, const s3_answer *an)
{
  const char *obj = rq->object ? rq->object : "";
  const char *sep = rq->object ? "/" : "";
  const char *q = rq->query ? rq->query : "";
  const char *qsep = *q ? "?" : "";
  char tries[32] = "";
  if (an->tries > 1)
    snprintf(tries, sizeof tries, " (%u tries)", an->tries);
  if (an->cancelled)
    return objstore_fail_cancelled(&s->base, rq->method);
  if (an->too_big)
    return objstore_fail(&s->base, REPLICATE_ESTORE,
                         "%s s3://%s%s%s: larger than %zu bytes", rq->method,
                         s->bucket, sep, obj, an->max);
  if (an->status == 0)
    return objstore_fail(
        &s->base, REPLICATE_ESTORE, "%s s3://%s%s%s%s%.80s at %s: %s%s",
        rq->method, s->bucket, sep, obj, qsep, q, s->endpoint,
        an->curl_error[0] ? an->curl_error : curl_easy_strerror(an->result),
        tries);
  char code[64];
  s3_error_code(an->body ? an->body : "", an->len, code, sizeof code);
  int rc = an->status == 403   ? REPLICATE_ESTORE_AUTH
           : an->status == 404 ? REPLICATE_ESTORE_MISSING
           : an->status == 412 ? REPLICATE_ESTORE_EXISTS
                               : REPLICATE_ESTORE;
  return objstore_fail(&s->base, rc, "%s s3://%s%s%s%s%.80s: %ld %s%s",
                       rq->method, s->bucket, sep, obj, qsep, q, an->status,
                       code[0] ? code : "(no S3 error code)", tries);
}

static bool ok_status(const s3_answer *an)
{
  return an->status >= 200 && an->status < 300 && !an->too_big;
}

static bool has_code(const s3_answer *an, const char *want)
{
  char code[64];
  return s3_error_code(an->body ? an->body : "", an->len, code, sizeof code) ==
             0 &&
         strcmp(code, want) == 0;
}

/* Calls rq (sha: its payload hash, NULL: computed here) and maps a failed
 * answer: 0, or an error with last_error. */
static int s3_do(s3_store *s, const s3_request *rq, const char *sha,
                 s3_answer *an)
{
  int rc = sha ? s3_call_hashed(s, rq, sha, an) : s3_call(s, rq, an);
  if (rc != 0)
    return objstore_fail(&s->base, rc, "%s: out of memory", rq->method);
  return ok_status(an) ? 0 : fail_answer(s, rq, an);
}

static void answer_free(s3_answer *an) { free(an->body); }

static char *object_name(const s3_store *s, const char *key)
{
  size_t n = strlen(s->prefix) + strlen(key) + 1;
  char *o = malloc(n);
  if (o != NULL)
    snprintf(o, n, "%s%s", s->prefix, key);
  return o;
}

/* ---------------------------------------------------------------------- */
/* Put */

/* S5's fallback: REPLICATE_ESTORE_EXISTS when HEAD finds the object. */
static int check_absent(s3_store *s, const char *obj)
{
  s3_request rq = {"HEAD", obj, NULL, NULL, 0, NULL, 0, &s->base.stats.gets};
  s3_answer an = {0};
  int rc = s3_call(s, &rq, &an);
  if (rc == 0 && ok_status(&an))
    rc = objstore_fail(&s->base, REPLICATE_ESTORE_EXISTS,
                       "PUT s3://%s/%s: the key exists (checked with HEAD)",
                       s->bucket, obj);
  else if (rc == 0 && an.status != 404)
    rc = fail_answer(s, &rq, &an);
  answer_free(&an);
  return rc;
}

static int put_single(s3_store *s, const char *obj, const void *data,
                      size_t len, unsigned flags)
{
  bool cond = (flags & OBJSTORE_PUT_IF_ABSENT) && !s->no_conditional_put;
  if ((flags & OBJSTORE_PUT_IF_ABSENT) && !cond) {
    int rc = check_absent(s, obj);
    if (rc != 0)
      return rc;
  }
  s3_request rq = {"PUT", obj,
                   NULL,  data,
                   len,   cond ? "If-None-Match: *" : NULL,
                   0,     &s->base.stats.puts};
  s3_answer an = {0};
  int rc = s3_call(s, &rq, &an);
  if (rc == 0 && cond && an.status == 501) { /* S5: not supported here */
    s->no_conditional_put = true;
    answer_free(&an);
    return put_single(s, obj, data, len, flags);
  }
  if (rc == 0 && ok_status(&an))
    s->base.stats.bytes_up += len;
  else if (rc == 0)
    rc = fail_answer(s, &rq, &an);
  answer_free(&an);
  return rc;
}

typedef struct s3_multipart {
  const char *obj;
  char *upload_id; /* encoded for the query (S2) */
  unsigned parts;
  char (*etags)[S3_ETAG_MAX];
} s3_multipart;

static int mp_initiate(s3_store *s, s3_multipart *mp)
{
  s3_request rq = {"POST", mp->obj, "uploads=",        NULL,
                   0,      NULL,    S3_ERROR_BODY_MAX, &s->base.stats.puts};
  s3_answer an = {0};
  int rc = s3_do(s, &rq, NULL, &an);
  char id[512];
  if (rc == 0 && s3_xml_get(an.body ? an.body : "", an.len, "UploadId", id,
                            sizeof id) <= 0)
    rc = objstore_fail(&s->base, REPLICATE_ESTORE,
                       "POST s3://%s/%s?uploads=: no UploadId in the answer",
                       s->bucket, mp->obj);
  if (rc == 0 && (mp->upload_id = s3_query_encode(id)) == NULL)
    rc = ENOMEM;
  answer_free(&an);
  return rc;
}

static char *mp_complete_body(const s3_multipart *mp, size_t *len)
{
  size_t cap = 64 + (size_t)mp->parts * (S3_ETAG_MAX + 64), n = 0;
  char *b = malloc(cap);
  if (b == NULL)
    return NULL;
  n += (size_t)snprintf(b + n, cap - n, "<CompleteMultipartUpload>");
  for (unsigned i = 0; i < mp->parts; i++)
    n += (size_t)snprintf(b + n, cap - n,
                          "<Part><PartNumber>%u</PartNumber><ETag>%s</ETag>"
                          "</Part>",
                          i + 1, mp->etags[i]);
  n += (size_t)snprintf(b + n, cap - n, "</CompleteMultipartUpload>");
  *len = n;
  return b;
}

/* R3: a complete retried after a lost answer finds NoSuchUpload; the put
 * is done if the object is there with its size. */
static bool completed_before(s3_store *s, const s3_multipart *mp,
                             const s3_answer *an, size_t len)
{
  if (an->tries < 2 || an->status != 404 || !has_code(an, "NoSuchUpload"))
    return false;
  s3_request rq = {"HEAD", mp->obj, NULL, NULL,
                   0,      NULL,    0,    &s->base.stats.gets};
  s3_answer head = {0};
  bool done = s3_call(s, &rq, &head) == 0 && ok_status(&head) &&
              head.content_length == (int64_t)len;
  answer_free(&head);
  return done;
}

static int mp_complete(s3_store *s, s3_multipart *mp, size_t total)
{
  size_t len;
  char *body = mp_complete_body(mp, &len);
  char *q = malloc(strlen(mp->upload_id) + 16);
  if (body == NULL || q == NULL) {
    free(body);
    free(q);
    return ENOMEM;
  }
  sprintf(q, "uploadId=%s", mp->upload_id);
  s3_request rq = {"POST",
                   mp->obj,
                   q,
                   body,
                   len,
                   NULL,
                   S3_ERROR_BODY_MAX,
                   &s->base.stats.puts};
  s3_answer an = {0};
  int rc = s3_call(s, &rq, &an);
  const char *b = an.body ? an.body : "";
  if (rc == 0 && completed_before(s, mp, &an, total)) {
    rc = 0;
  } else if (rc == 0 && ok_status(&an) &&
             (memmem(b, an.len, "<Error>", 7) != NULL ||
              memmem(b, an.len, "<CompleteMultipartUploadResult", 30) ==
                  NULL)) {
    char code[64]; /* a 200 that carries an error (S3 does that) */
    s3_error_code(b, an.len, code, sizeof code);
    rc =
        objstore_fail(&s->base, REPLICATE_ESTORE, "POST s3://%s/%s?%s: %ld %s",
                      s->bucket, mp->obj, q, an.status,
                      code[0] ? code : "(not a CompleteMultipartUploadResult)");
  } else if (rc == 0 && !ok_status(&an)) {
    rc = fail_answer(s, &rq, &an);
  }
  answer_free(&an);
  free(body);
  free(q);
  return rc;
}

/* Best effort: the parts of a failed upload are not kept. The failure
 * that led here stays in last_error. */
static void mp_abort(s3_store *s, s3_multipart *mp)
{
  char q[600];
  if (snprintf(q, sizeof q, "uploadId=%s", mp->upload_id) >= (int)sizeof q)
    return;
  s3_request rq = {"DELETE", mp->obj, q, NULL,
                   0,        NULL,    0, &s->base.stats.deletes};
  s3_answer an = {0};
  s3_call(s, &rq, &an);
  answer_free(&an);
}

/* ---------------------------------------------------------------------- */
/* A multipart put's parts, several in flight (M1-M3 at the top) */

/* Part i's bytes: [*off, *off + *n) of len. */
static void part_span(size_t len, size_t part, unsigned i, size_t *off,
                      size_t *n)
{
  *off = (size_t)i * part;
  *n = len - *off < part ? len - *off : part;
}

/* M2: the parts' payload hashes, in order, on a helper thread ahead of
 * the uploads; it wakes the multi's wait as each is ready. */
typedef struct mp_hasher {
  const s3_store *s;
  CURLM *multi;
  const char *data;
  size_t len, part;
  unsigned parts;
  char (*hex)[65];
  atomic_uint ready; /* parts hashed */
  atomic_bool stop;
  pthread_t thread;
  bool threaded;
} mp_hasher;

static void hasher_one(mp_hasher *h, unsigned i)
{
  size_t off, n;
  part_span(h->len, h->part, i, &off, &n);
  payload_hash(h->s, h->data + off, n, h->hex[i]);
  atomic_store(&h->ready, i + 1);
}

static void *hasher_main(void *ud)
{
  mp_hasher *h = ud;
  for (unsigned i = 0; i < h->parts && !atomic_load(&h->stop); i++) {
    hasher_one(h, i);
    curl_multi_wakeup(h->multi);
  }
  return NULL;
}

static int hasher_start(mp_hasher *h, s3_store *s, const char *data,
                        size_t len, size_t part, unsigned parts)
{
  *h = (mp_hasher){.s = s, .multi = s->multi, .data = data, .len = len,
                   .part = part, .parts = parts};
  atomic_init(&h->ready, 0);
  atomic_init(&h->stop, false);
  h->hex = malloc(parts * sizeof *h->hex);
  if (h->hex == NULL)
    return ENOMEM;
  h->threaded = !s->unsigned_payload && parts > 1 &&
                pthread_create(&h->thread, NULL, hasher_main, h) == 0;
  return 0;
}

/* Part i's x-amz-content-sha256 (parts are asked for in order), or NULL
 * while the helper has not made it yet. Without the helper (https://, or
 * no thread to be had) it is made here. */
static const char *hasher_get(mp_hasher *h, unsigned i)
{
  if (!h->threaded && atomic_load(&h->ready) <= i)
    hasher_one(h, i);
  return atomic_load(&h->ready) > i ? h->hex[i] : NULL;
}

static void hasher_stop(mp_hasher *h)
{
  atomic_store(&h->stop, true);
  if (h->threaded)
    pthread_join(h->thread, NULL);
  h->threaded = false;
  free(h->hex);
  h->hex = NULL;
}

/* One part in flight: its own easy handle (the multi pools connections). */
typedef struct mp_slot {
  CURL *curl;
  s3_xfer x;
  s3_request rq;
  s3_answer an;
  char *query;
  unsigned part; /* 1-based; 0: the slot is free */
} mp_slot;

static int slot_start(s3_store *s, s3_multipart *mp, mp_slot *sl, unsigned n,
                      const char *data, size_t len, const char *sha)
{
  sprintf(sl->query, "partNumber=%u&uploadId=%s", n, mp->upload_id);
  sl->rq = (s3_request){"PUT", mp->obj, sl->query, data,
                        len,   NULL,    0,         &s->base.stats.puts};
  sl->part = n;
  int rc = xfer_init(s, &sl->x, sl->curl, &sl->rq, sha, &sl->an);
  return rc != 0 ? rc : xfer_send(s, &sl->x);
}

/* A part's transfer finished: its ETag kept (M3), or its error. */
static int slot_finish(s3_store *s, s3_multipart *mp, mp_slot *sl)
{
  s3_answer *an = &sl->an;
  int rc = ok_status(an) ? 0 : fail_answer(s, &sl->rq, an);
  if (rc == 0 && (an->etag[0] == '\0' || strpbrk(an->etag, "<>&") != NULL))
    rc = objstore_fail(&s->base, REPLICATE_ESTORE,
                       "PUT s3://%s/%s part %u: no usable ETag in the answer",
                       s->bucket, mp->obj, sl->part);
  if (rc == 0) {
    memcpy(mp->etags[sl->part - 1], an->etag, sizeof an->etag);
    s->base.stats.bytes_up += sl->rq.body_len;
  }
  xfer_free(s, &sl->x);
  answer_free(an);
  *an = (s3_answer){0};
  sl->part = 0;
  return rc;
}

/* M1: parts go out in order as slots free up and their hashes are ready,
 * each retried on its own (R1, R2); the first part that fails ends the
 * put (the others are cut by the caller's slot cleanup). */
static int mp_drive(s3_store *s, s3_multipart *mp, mp_hasher *h, mp_slot *sl,
                    s3_xfer **xs, unsigned np, const char *data, size_t len,
                    size_t part)
{
  unsigned next = 0, done = 0;
  int rc = 0;
  while (rc == 0 && done < mp->parts) {
    if (cancelled(s))
      return objstore_fail_cancelled(&s->base, "PUT");
    for (unsigned i = 0; i < np && rc == 0 && next < mp->parts; i++) {
      const char *sha = sl[i].part == 0 ? hasher_get(h, next) : NULL;
      if (sha == NULL)
        continue;
      size_t off, n;
      part_span(len, part, next, &off, &n);
      rc = slot_start(s, mp, &sl[i], ++next, data + off, n, sha);
      xs[i] = &sl[i].x;
    }
    if (rc == 0)
      rc = s3_pump(s, xs, np);
    for (unsigned i = 0; i < np && rc == 0; i++)
      if (sl[i].part != 0 && sl[i].x.finished) {
        rc = slot_finish(s, mp, &sl[i]);
        xs[i] = NULL;
        done++;
      }
  }
  return rc;
}

/* Every part of data, up to options.parallel_parts at once. */
static int mp_parts(s3_store *s, s3_multipart *mp, const char *data, size_t len,
                    size_t part)
{
  unsigned np = s->base.options.parallel_parts < mp->parts
                    ? s->base.options.parallel_parts
                    : mp->parts;
  mp_slot *sl = calloc(np, sizeof *sl);
  s3_xfer **xs = calloc(np, sizeof *xs);
  mp_hasher h = {0};
  int rc = sl && xs ? hasher_start(&h, s, data, len, part, mp->parts) : ENOMEM;
  for (unsigned i = 0; rc == 0 && i < np; i++) {
    sl[i].curl = i == 0 ? s->curl : curl_easy_init();
    sl[i].query = malloc(strlen(mp->upload_id) + 40);
    if (sl[i].curl == NULL || sl[i].query == NULL)
      rc = ENOMEM;
  }
  if (rc == 0)
    rc = mp_drive(s, mp, &h, sl, xs, np, data, len, part);
  for (unsigned i = 0; sl != NULL && i < np; i++) {
    xfer_free(s, &sl[i].x); /* cuts a part still in flight */
    answer_free(&sl[i].an);
    free(sl[i].query);
    if (i > 0 && sl[i].curl != NULL)
      curl_easy_cleanup(sl[i].curl);
  }
  hasher_stop(&h);
  free(sl);
  free(xs);
  return rc;
}

static int put_multipart(s3_store *s, const char *obj, const char *data,
                         size_t len, unsigned flags)
{
  size_t part = s->base.options.multipart_bytes;
  s3_multipart mp = {obj, NULL, (unsigned)((len + part - 1) / part), NULL};
  if ((len + part - 1) / part > S3_MAX_PARTS)
    return objstore_fail(&s->base, REPLICATE_EINVAL,
                         "PUT s3://%s/%s: %zu bytes need more than %u parts "
                         "of %zu bytes",
                         s->bucket, obj, len, S3_MAX_PARTS, part);
  if (flags & OBJSTORE_PUT_IF_ABSENT) {
    int rc = check_absent(s, obj);
    if (rc != 0)
      return rc;
  }
  mp.etags = calloc(mp.parts, sizeof *mp.etags);
  if (mp.etags == NULL)
    return ENOMEM;
  int rc = mp_initiate(s, &mp);
  if (rc == 0)
    rc = mp_parts(s, &mp, data, len, part);
  if (rc == 0)
    rc = mp_complete(s, &mp, len);
  if (rc != 0 && mp.upload_id != NULL)
    mp_abort(s, &mp);
  free(mp.upload_id);
  free(mp.etags);
  return rc;
}

static int s3_put(objstore *store, const char *key, const void *data,
                  size_t len, unsigned flags)
{
  s3_store *s = s3_of(store);
  char *obj = object_name(s, key);
  if (obj == NULL)
    return ENOMEM;
  int rc = len > store->options.multipart_bytes
               ? put_multipart(s, obj, data, len, flags)
               : put_single(s, obj, data, len, flags);
  free(obj);
  return rc;
}

/* ---------------------------------------------------------------------- */
/* Get, delete */

/* A GET of key (with one more header, or none): its body into *data. */
static int get_object(objstore *store, const char *key, const char *header,
                      size_t max_len, void **data, size_t *len)
{
  s3_store *s = s3_of(store);
  char *obj = object_name(s, key);
  if (obj == NULL)
    return ENOMEM;
  s3_request rq = {"GET", obj,     NULL,    NULL,
                   0,     header,  max_len, &s->base.stats.gets};
  s3_answer an = {0};
  int rc = s3_do(s, &rq, NULL, &an);
  if (rc == 0 && an.body == NULL && (an.body = malloc(1)) == NULL)
    rc = ENOMEM;
  if (rc == 0) {
    *data = an.body;
    *len = an.len;
    s->base.stats.bytes_down += an.len;
  } else {
    answer_free(&an);
  }
  free(obj);
  return rc;
}

static int s3_get(objstore *store, const char *key, size_t max_len, void **data,
                  size_t *len)
{
  return get_object(store, key, NULL, max_len, data, len);
}

/* A Range GET: 206 with the bytes asked (fewer at the object's end). A
 * store that ignored the header and answered 200 with the whole object:
 * refused by max_len when it is larger, else handed out as it is (the
 * archive's reader checks its bytes against the object's checksum). */
static int s3_get_range(objstore *store, const char *key, uint64_t offset,
                        size_t len, void **data, size_t *got)
{
  char range[64];
  snprintf(range, sizeof range, "Range: bytes=%" PRIu64 "-%" PRIu64, offset,
           offset + len - 1);
  return get_object(store, key, range, len, data, got);
}

static int s3_delete(objstore *store, const char *key)
{
  s3_store *s = s3_of(store);
  char *obj = object_name(s, key);
  if (obj == NULL)
    return ENOMEM;
  s3_request rq = {"DELETE", obj,  NULL, NULL,
                   0,        NULL, 0,    &s->base.stats.deletes};
  s3_answer an = {0};
  int rc = s3_call(s, &rq, &an);
  bool missing_key = an.status == 404 && !has_code(&an, "NoSuchBucket");
  if (rc == 0 && !ok_status(&an) && !missing_key)
    rc = fail_answer(s, &rq, &an);
  answer_free(&an);
  free(obj);
  return rc;
}

/* ---------------------------------------------------------------------- */
/* List */

typedef struct s3_listing {
  s3_store *s;
  const char *full_prefix; /* the store's prefix and the caller's */
  objstore_each_fn each;
  void *ctx;
  char last[S3_KEY_MAX + 1]; /* the previous name: names must ascend */
  bool bad;
} s3_listing;

static int list_entry(void *ud, const char *name, uint64_t size)
{
  s3_listing *l = ud;
  size_t np = strlen(l->full_prefix);
  if (strncmp(name, l->full_prefix, np) != 0 ||
      (l->last[0] != '\0' && strcmp(name, l->last) <= 0)) {
    l->bad = true; /* outside the prefix, or out of order */
    return REPLICATE_ESTORE;
  }
  snprintf(l->last, sizeof l->last, "%s", name);
  return l->each(l->ctx, name + strlen(l->s->prefix), size);
}

static char *list_query(const s3_store *s, const char *token,
                        const char *prefix)
{
  char *t = token[0] ? s3_query_encode(token) : NULL;
  char *p = s3_query_encode(prefix);
  size_t n = (t ? strlen(t) : 0) + (p ? strlen(p) : 0) + 100;
  char *q = (p && (t || !token[0])) ? malloc(n) : NULL;
  if (q != NULL) /* S2: sorted by name */
    snprintf(q, n, "%s%s%slist-type=2&max-keys=%u&prefix=%s",
             t ? "continuation-token=" : "", t ? t : "", t ? "&" : "",
             s->max_keys, p);
  free(t);
  free(p);
  return q;
}

/* One page; *token in: where to start ("" first), out: the next page's. */
static int list_page(s3_listing *l, char *token, size_t token_cap, int *more)
{
  s3_store *s = l->s;
  char *q = list_query(s, token, l->full_prefix);
  if (q == NULL)
    return ENOMEM;
  s3_request rq = {
      "GET", NULL, q, NULL, 0, NULL, S3_LIST_BODY_MAX, &s->base.stats.lists};
  s3_answer an = {0};
  int rc = s3_do(s, &rq, NULL, &an);
  if (rc == 0) {
    rc = s3_list_parse(an.body ? an.body : "", an.len, list_entry, l, more,
                       token, token_cap);
    if (rc == REPLICATE_ESTORE)
      rc = objstore_fail(&s->base, rc, "GET s3://%s?%.200s: %s", s->bucket, q,
                         l->bad ? "keys out of order or outside the prefix"
                                : "not a well-formed ListObjectsV2 answer");
  }
  answer_free(&an);
  free(q);
  return rc;
}

static int s3_list(objstore *store, const char *prefix, objstore_each_fn each,
                   void *ctx)
{
  s3_store *s = s3_of(store);
  char *full = object_name(s, prefix);
  s3_listing *l = calloc(1, sizeof *l);
  char *token = calloc(1, 4096);
  int rc = full && l && token ? 0 : ENOMEM;
  if (rc == 0) {
    *l = (s3_listing){.s = s, .full_prefix = full, .each = each, .ctx = ctx};
    int more = 1;
    while (rc == 0 && more)
      rc = list_page(l, token, 4096, &more);
  }
  free(token);
  free(l);
  free(full);
  return rc;
}

/* ---------------------------------------------------------------------- */
/* Open, close */

static void s3_close(objstore *store)
{
  s3_store *s = s3_of(store);
  if (s->multi != NULL) /* no easy handle is in it between calls */
    curl_multi_cleanup(s->multi);
  if (s->curl != NULL)
    curl_easy_cleanup(s->curl);
  if (s->curl_initialised)
    curl_global_cleanup();
  free(s->endpoint);
  free(s->bucket);
  free(s->prefix);
  free(s->key_id);
  if (s->secret != NULL) {
    memset(s->secret, 0, strlen(s->secret));
    free(s->secret);
  }
  free(s);
}

/* From another thread: base.cancelled is set; wake the request's wait. */
static void s3_cancel(objstore *store)
{
  s3_store *s = s3_of(store);
  if (s->multi != NULL)
    curl_multi_wakeup(s->multi);
}

static const struct objstore_backend s3_backend = {
    .put = s3_put,
    .get = s3_get,
    .get_range = s3_get_range,
    .list = s3_list,
    .del = s3_delete,
    .close = s3_close,
    .cancel = s3_cancel,
};

void objstore_s3_set_max_keys(objstore *store, unsigned n)
{
  if (store->backend == &s3_backend && n >= 1 && n <= 1000)
    s3_of(store)->max_keys = n;
}

static int bucket_ok(const char *b, size_t n)
{
  if (n < 3 || n > 63)
    return 0;
  for (size_t i = 0; i < n; i++)
    if (!((b[i] >= 'a' && b[i] <= 'z') || (b[i] >= '0' && b[i] <= '9') ||
          b[i] == '.' || b[i] == '-'))
      return 0;
  return 1;
}

/* "BUCKET[/PREFIX]": bucket and "PREFIX/" (or "") into s. */
static int parse_location(s3_store *s, const char *location)
{
  const char *slash = strchr(location, '/');
  size_t nb = slash ? (size_t)(slash - location) : strlen(location);
  const char *p = slash ? slash + 1 : "";
  size_t np = strlen(p);
  while (np > 0 && p[np - 1] == '/')
    np--;
  if (!bucket_ok(location, nb))
    return objstore_open_fail(REPLICATE_EINVAL,
                              "%s: the bucket must be 3-63 of [a-z0-9.-]",
                              s->base.url);
  for (size_t i = 0; i < np; i++)
    if (!(strchr("._/-", p[i]) || (p[i] >= 'a' && p[i] <= 'z') ||
          (p[i] >= 'A' && p[i] <= 'Z') || (p[i] >= '0' && p[i] <= '9')) ||
        p[0] == '/' || (i > 0 && p[i] == '.' && p[i - 1] == '.'))
      return objstore_open_fail(REPLICATE_EINVAL,
                                "%s: the prefix must be [A-Za-z0-9._/-] "
                                "without '..'",
                                s->base.url);
  s->bucket = strndup(location, nb);
  s->prefix = malloc(np + 2);
  if (s->bucket == NULL || s->prefix == NULL)
    return ENOMEM;
  memcpy(s->prefix, p, np);
  strcpy(s->prefix + np, np ? "/" : "");
  return 0;
}

static int s3_setup(s3_store *s, const char *location)
{
  const objstore_options *o = &s->base.options;
  if (o->endpoint == NULL || !s3_endpoint_ok(o->endpoint))
    return objstore_open_fail(REPLICATE_EINVAL,
                              "%s: the endpoint must be http(s)://HOST:PORT "
                              "(got %s)",
                              s->base.url, o->endpoint ? o->endpoint : "none");
  size_t n = strlen(o->endpoint);
  s->endpoint = strndup(o->endpoint, o->endpoint[n - 1] == '/' ? n - 1 : n);
  if (s->endpoint == NULL)
    return ENOMEM;
  int rc = parse_location(s, location);
  if (rc != 0)
    return rc;
  char why[300];
  rc = s3_read_credentials(o->credentials_file, &s->key_id, &s->secret, why,
                           sizeof why);
  if (rc != 0)
    return objstore_open_fail(rc, "%s: %s", s->base.url, why);
  if (snprintf(s->sigv4, sizeof s->sigv4, "aws:amz:%s:s3", o->region) >=
          (int)sizeof s->sigv4 ||
      strchr(o->region, ':') != NULL || o->region[0] == '\0')
    return objstore_open_fail(REPLICATE_EINVAL, "%s: bad region '%s'",
                              s->base.url, o->region);
  s->max_keys = 1000;
  s->unsigned_payload = strncmp(s->endpoint, "https://", 8) == 0; /* S3 */
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) /* as ship.c */
    return objstore_open_fail(REPLICATE_ESTORE, "%s: libcurl would not start",
                              s->base.url);
  s->curl_initialised = true;
  s->curl = curl_easy_init();
  s->multi = curl_multi_init();
  return s->curl && s->multi ? 0 : ENOMEM;
}

int objstore_s3_open(const char *url, const char *location,
                     const objstore_options *options, objstore **out)
{
  *out = NULL;
  s3_store *s = calloc(1, sizeof *s);
  if (s == NULL)
    return ENOMEM;
  int rc = objstore_init_common(&s->base, &s3_backend, url, options);
  if (rc == 0)
    rc = s3_setup(s, location);
  if (rc != 0) {
    free(s->base.url);
    s3_close(&s->base);
    return rc;
  }
  *out = &s->base;
  return 0;
}
