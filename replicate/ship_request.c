/*
 * ship_request.c: the shipper's HTTP requests over libcurl: the easy
 * handles and their headers, request bodies (frames, the base image
 * streamed from a snapshot), the answers read back, progress and stalls.
 * The design and invariants are at the top of ship.c.
 */
#include "ship_internal.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------------- */
/* Requests */

static size_t write_answer(char *data, size_t size, size_t nmemb, void *ud)
{
  standby *sb = ud;
  size_t n = size * nmemb;
  if (n > SHIP_ANSWER_MAX - sb->answer_len) {
    sb->answer_overflow = true;
    return 0;
  }
  memcpy(sb->answer + sb->answer_len, data, n);
  sb->answer_len += n;
  return n;
}

/* Note when bytes move (curl calls this about once a second even when
 * nothing does): the stall check (ship_check_stall) compares with it. */
static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow,
                       curl_off_t ultotal, curl_off_t ulnow)
{
  standby *sb = ud;
  (void)dltotal;
  (void)ultotal;
  if (dlnow != sb->seen_down || ulnow != sb->seen_up) {
    sb->seen_down = dlnow;
    sb->seen_up = ulnow;
    sb->progress_ns = ship_mono_ns();
  }
  return 0;
}

size_t ship_read_base(char *buf, size_t size, size_t nitems, void *ud)
{
  standby *sb = ud;
  replicate_shipper *sh = sb->sh;
  size_t want = size * nitems;
  size_t done = 0;
  while (done < want && sb->base_off < sb->base_total) {
    if (sb->base_off < LOOM_STREAM_HEADER) {
      size_t k = (size_t)(LOOM_STREAM_HEADER - sb->base_off);
      if (k > want - done)
        k = want - done;
      memcpy(buf + done, sb->base_header + sb->base_off, k);
      done += k;
      sb->base_off += k;
      continue;
    }
    uint64_t left = sb->base_total - sb->base_off;
    size_t k = want - done;
    if (k > left)
      k = (size_t)left;
    int rc = loom_snapshot_read(sh->snap, sb->base_off - LOOM_STREAM_HEADER,
                                buf + done, k);
    if (rc) {
      sb->base_read_error = rc;
      return CURL_READFUNC_ABORT;
    }
    done += k;
    sb->base_off += k;
  }
  return done;
}

/* (Re)build the standby's header list when the token changed. */
static int prepare_headers(standby *sb)
{
  replicate_shipper *sh = sb->sh;
  pthread_mutex_lock(&sh->mu);
  uint64_t gen = sh->token_gen;
  if (sb->headers && sb->headers_token_gen == gen) {
    pthread_mutex_unlock(&sh->mu);
    return 0;
  }
  char *auth = NULL;
  if (sh->token) {
    static const char prefix[] = "Authorization: Bearer ";
    size_t len = sizeof prefix - 1 + strlen(sh->token) + 1;
    auth = malloc(len);
    if (auth)
      snprintf(auth, len, "%s%s", prefix, sh->token);
  }
  bool want_auth = sh->token != NULL;
  pthread_mutex_unlock(&sh->mu);
  if (want_auth && !auth)
    return ENOMEM;

  for (struct curl_slist *p = sb->headers; p; p = p->next)
    explicit_bzero(p->data, strlen(p->data));
  curl_slist_free_all(sb->headers);
  sb->headers = NULL;

  struct curl_slist *list = NULL;
  static const char *const fixed[] = {
      "Content-Type: application/octet-stream", "Accept: application/json",
      "Expect:"};
  for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
    struct curl_slist *next = curl_slist_append(list, fixed[i]);
    if (!next)
      goto fail;
    list = next;
  }
  if (auth) {
    struct curl_slist *next = curl_slist_append(list, auth);
    if (!next)
      goto fail;
    list = next;
    ship_free_secret(auth);
    auth = NULL;
  }
  sb->headers = list;
  sb->headers_token_gen = gen;
  return 0;
fail:
  ship_free_secret(auth);
  for (struct curl_slist *p = list; p; p = p->next)
    explicit_bzero(p->data, strlen(p->data));
  curl_slist_free_all(list);
  return ENOMEM;
}

/* Set the options every request shares. */
int ship_prepare_easy(standby *sb, const char *url)
{
  replicate_shipper *sh = sb->sh;
  int rc = prepare_headers(sb);
  if (rc)
    return rc;
  CURL *e = sb->easy;
  curl_easy_reset(e);
  sb->errbuf[0] = '\0';
  sb->answer_len = 0;
  sb->answer_overflow = false;
  CURLcode c = CURLE_OK;
#define SET(opt, val)                                                        \
  do {                                                                       \
    if (c == CURLE_OK)                                                       \
      c = curl_easy_setopt(e, opt, val);                                     \
  } while (0)
  SET(CURLOPT_URL, url);
  SET(CURLOPT_PRIVATE, (void *)sb);
  SET(CURLOPT_NOSIGNAL, 1L);
  SET(CURLOPT_ERRORBUFFER, sb->errbuf);
  SET(CURLOPT_WRITEFUNCTION, write_answer);
  SET(CURLOPT_WRITEDATA, (void *)sb);
  SET(CURLOPT_NOPROGRESS, 0L);
  SET(CURLOPT_XFERINFOFUNCTION, on_progress);
  SET(CURLOPT_XFERINFODATA, (void *)sb);
  SET(CURLOPT_HTTPHEADER, sb->headers);
  SET(CURLOPT_CONNECTTIMEOUT_MS, sh->connect_timeout_ms);
  SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
  SET(CURLOPT_PROTOCOLS_STR, "http,https");
  SET(CURLOPT_SSL_VERIFYPEER, 1L);
  SET(CURLOPT_SSL_VERIFYHOST, 2L);
  SET(CURLOPT_TCP_KEEPALIVE, 1L);
  if (sh->ca_file)
    SET(CURLOPT_CAINFO, sh->ca_file);
#undef SET
  return c == CURLE_OK ? 0 : REPLICATE_ECURL;
}

int ship_launch(standby *sb)
{
  if (curl_multi_add_handle(sb->sh->multi, sb->easy) != CURLM_OK)
    return REPLICATE_ECURL;
  sb->in_flight = true;
  sb->progress_ns = ship_mono_ns();
  sb->seen_up = 0;
  sb->seen_down = 0;
  sb->stalled = false;
  return 0;
}

/* POST the body (sb->body, sb->body_len) to /v1/frames. */
int ship_post_body(standby *sb)
{
  replicate_shipper *sh = sb->sh;
  int rc = ship_prepare_easy(sb, sb->frames_url);
  if (rc)
    return rc;
  CURLcode c = curl_easy_setopt(sb->easy, CURLOPT_POST, 1L);
  if (c == CURLE_OK)
    c = curl_easy_setopt(sb->easy, CURLOPT_POSTFIELDS, (const char *)sb->body);
  if (c == CURLE_OK)
    c = curl_easy_setopt(sb->easy, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)sb->body_len);
  if (c == CURLE_OK)
    c = curl_easy_setopt(sb->easy, CURLOPT_TIMEOUT_MS, sh->request_timeout_ms);
  if (c != CURLE_OK)
    return REPLICATE_ECURL;
  return ship_launch(sb);
}

/* Drop what the finished (or abandoned) request held. */
void ship_release_request(standby *sb)
{
  replicate_shipper *sh = sb->sh;
  if (sb->req_frame) {
    pthread_mutex_lock(&sh->mu);
    ship_frame_release_locked(sh, sb->req_frame);
    pthread_mutex_unlock(&sh->mu);
    sb->req_frame = NULL;
  }
  if (sb->holds_snapshot) {
    sb->holds_snapshot = false;
    if (--sh->snap_refs == 0) {
      loom_snapshot_close(sh->snap);
      sh->snap = NULL;
    }
  }
  curl_slist_free_all(sb->base_headers);
  sb->base_headers = NULL;
  sb->body = NULL;
  sb->body_len = 0;
}

const char *ship_request_name(request_kind k)
{
  switch (k) {
  case REQ_HEARTBEAT: return "heartbeat";
  case REQ_FRAME: return "frame";
  case REQ_COALESCED: return "merged frames";
  case REQ_BASE: return "base image";
  case REQ_NONE: break;
  }
  return "request";
}

/* ---------------------------------------------------------------------- */
/* Stalls */

/* A request on an open connection (bytes went out) that has moved no byte
 * either way for stall_ns: show it (the request goes on to its timeout). */
void ship_check_stall(standby *sb, int64_t now)
{
  replicate_shipper *sh = sb->sh;
  if (!sb->in_flight || sb->stalled || sb->seen_up == 0 ||
      now - sb->progress_ns < sh->stall_ns)
    return;
  sb->stalled = true;
  ship_set_error(sb, "%s: no answer for %.1f s on an open connection",
                 ship_request_name(sb->req), (double)(now - sb->progress_ns) / 1e9);
  ship_publish_state(sb, REPLICATE_PEER_STALLED);
}
