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
  ship_peer *peer = ud;
  size_t n = size * nmemb;
  if (n > SHIP_ANSWER_MAX - peer->answer_len) {
    peer->answer_overflow = true;
    return 0;
  }
  memcpy(peer->answer + peer->answer_len, data, n);
  peer->answer_len += n;
  return n;
}

/* Note when bytes move (curl calls this about once a second even when
 * nothing does): the stall check (ship_check_stall) compares with it. */
static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow,
                       curl_off_t ultotal, curl_off_t ulnow)
{
  ship_peer *peer = ud;
  (void)dltotal;
  (void)ultotal;
  if (dlnow != peer->seen_down || ulnow != peer->seen_up) {
    peer->seen_down = dlnow;
    peer->seen_up = ulnow;
    peer->progress_ns = ship_mono_ns();
  }
  return 0;
}

/* A tagged base image's trailer (the tag of every byte before it) into
 * buf: as much of it as fits. Returns the bytes written. */
static size_t read_trailer(ship_peer *peer, char *buf, size_t room)
{
  if (peer->base_off == peer->base_image_end && peer->base_tag) {
    int rc = replicate_tag_stream_end(peer->base_tag, peer->base_trailer);
    replicate_tag_stream_free(peer->base_tag);
    peer->base_tag = NULL;
    if (rc) {
      peer->base_read_error = rc;
      return 0;
    }
  }
  size_t at = (size_t)(peer->base_off - peer->base_image_end);
  size_t k = REPLICATE_TAG_SIZE - at < room ? REPLICATE_TAG_SIZE - at : room;
  memcpy(buf, peer->base_trailer + at, k);
  peer->base_off += k;
  return k;
}

size_t ship_read_base(char *buf, size_t size, size_t nitems, void *ud)
{
  ship_peer *peer = ud;
  replicate_shipper *sh = peer->sh;
  size_t want = size * nitems;
  size_t done = 0;
  while (done < want && peer->base_off < peer->base_image_end) {
    if (peer->base_off < LOOM_STREAM_HEADER) {
      size_t k = (size_t)(LOOM_STREAM_HEADER - peer->base_off);
      if (k > want - done)
        k = want - done;
      memcpy(buf + done, peer->base_header + peer->base_off, k);
      done += k;
      peer->base_off += k;
      continue;
    }
    uint64_t left = peer->base_image_end - peer->base_off;
    size_t k = want - done;
    if (k > left)
      k = (size_t)left;
    int rc = loom_snapshot_read(sh->snap, peer->base_off - LOOM_STREAM_HEADER,
                                buf + done, k);
    if (rc) {
      peer->base_read_error = rc;
      return CURL_READFUNC_ABORT;
    }
    done += k;
    peer->base_off += k;
  }
  if (peer->base_tag && done &&
      replicate_tag_stream_update(peer->base_tag, buf, done) != 0) {
    peer->base_read_error = ENOMEM;
    return CURL_READFUNC_ABORT;
  }
  if (done < want && peer->base_off < peer->base_total) {
    done += read_trailer(peer, buf + done, want - done);
    if (peer->base_read_error)
      return CURL_READFUNC_ABORT;
  }
  if (peer->mending && peer->base_off >= peer->base_total) {
    peer->mending = false; /* sent whole: the mend counts (mend_allowed) */
    peer->mended_seq = peer->req_after_seq;
    peer->mended_ns = ship_mono_ns();
  }
  return done;
}

/* Append a copy of text to *list: false when out of memory (*list as it
 * was). */
static bool append_header(struct curl_slist **list, const char *text)
{
  struct curl_slist *next = curl_slist_append(*list, text);
  if (next)
    *list = next;
  return next != NULL;
}

/* (Re)build the standby's header list when the token changed. */
static int prepare_headers(ship_peer *peer)
{
  replicate_shipper *sh = peer->sh;
  pthread_mutex_lock(&sh->mu);
  uint64_t gen = sh->token_gen;
  if (peer->headers && peer->headers_token_gen == gen) {
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
  char *upstream = NULL;
  if (sh->upstream) {
    size_t len = sizeof "X-Loomship-Upstream: " + strlen(sh->upstream);
    if ((upstream = malloc(len)))
      snprintf(upstream, len, "X-Loomship-Upstream: %s", sh->upstream);
  }
  bool want_upstream = sh->upstream != NULL;
  pthread_mutex_unlock(&sh->mu);
  if ((want_auth && !auth) || (want_upstream && !upstream)) {
    ship_free_secret(auth);
    free(upstream);
    return ENOMEM;
  }

  for (struct curl_slist *p = peer->headers; p; p = p->next)
    explicit_bzero(p->data, strlen(p->data));
  curl_slist_free_all(peer->headers);
  peer->headers = NULL;

  struct curl_slist *list = NULL;
  static const char *const fixed[] = {
      "Content-Type: application/octet-stream", "Accept: application/json",
      "Expect:"};
  for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
    if (!append_header(&list, fixed[i]))
      goto fail;
  if ((auth && !append_header(&list, auth)) || (upstream && !append_header(&list, upstream)))
    goto fail;
  ship_free_secret(auth);
  free(upstream);
  peer->headers = list;
  peer->headers_token_gen = gen;
  return 0;
fail:
  ship_free_secret(auth);
  free(upstream);
  for (struct curl_slist *p = list; p; p = p->next)
    explicit_bzero(p->data, strlen(p->data));
  curl_slist_free_all(list);
  return ENOMEM;
}

/* Set the options every request shares. */
int ship_prepare_easy(ship_peer *peer, const char *url)
{
  replicate_shipper *sh = peer->sh;
  int rc = prepare_headers(peer);
  if (rc)
    return rc;
  CURL *e = peer->easy;
  curl_easy_reset(e);
  peer->errbuf[0] = '\0';
  peer->answer_len = 0;
  peer->answer_overflow = false;
  CURLcode c = CURLE_OK;
#define SET(opt, val)                                                        \
  do {                                                                       \
    if (c == CURLE_OK)                                                       \
      c = curl_easy_setopt(e, opt, val);                                     \
  } while (0)
  SET(CURLOPT_URL, url);
  SET(CURLOPT_PRIVATE, (void *)peer);
  SET(CURLOPT_NOSIGNAL, 1L);
  SET(CURLOPT_ERRORBUFFER, peer->errbuf);
  SET(CURLOPT_WRITEFUNCTION, write_answer);
  SET(CURLOPT_WRITEDATA, (void *)peer);
  SET(CURLOPT_NOPROGRESS, 0L);
  SET(CURLOPT_XFERINFOFUNCTION, on_progress);
  SET(CURLOPT_XFERINFODATA, (void *)peer);
  SET(CURLOPT_HTTPHEADER, peer->headers);
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

int ship_launch(ship_peer *peer)
{
  if (curl_multi_add_handle(peer->sh->multi, peer->easy) != CURLM_OK)
    return REPLICATE_ECURL;
  peer->in_flight = true;
  peer->progress_ns = ship_mono_ns();
  peer->seen_up = 0;
  peer->seen_down = 0;
  peer->stalled = false;
  return 0;
}

/* This request's own headers: ours and up to two more (NULL: none), as
 * peer->base_headers, set on the easy handle. */
CURLcode ship_request_headers(ship_peer *peer, const char *extra1, const char *extra2)
{
  curl_slist_free_all(peer->base_headers); /* a request that never started */
  peer->base_headers = NULL;
  for (struct curl_slist *p = peer->headers; p; p = p->next)
    if (!append_header(&peer->base_headers, p->data))
      return CURLE_OUT_OF_MEMORY;
  if ((extra1 && !append_header(&peer->base_headers, extra1)) ||
      (extra2 && !append_header(&peer->base_headers, extra2)))
    return CURLE_OUT_OF_MEMORY;
  return curl_easy_setopt(peer->easy, CURLOPT_HTTPHEADER, peer->base_headers);
}

/* The frame key's tag of the body, as its header (DESIGN section 8). */
static CURLcode tag_body(ship_peer *peer)
{
  char value[REPLICATE_TAG_TEXT];
  char header[sizeof REPLICATE_TAG_HEADER + 2 + REPLICATE_TAG_TEXT];
  if (replicate_tag_make(peer->sh->frame_key, REPLICATE_TAG_FRAMES, peer->body,
                         peer->body_len, value) != 0)
    return CURLE_OUT_OF_MEMORY;
  snprintf(header, sizeof header, "%s: %s", REPLICATE_TAG_HEADER, value);
  return ship_request_headers(peer, header, NULL);
}

/* POST the body (peer->body, peer->body_len) to /v1/frames, tagged under
 * the frame key when there is one. */
int ship_post_body(ship_peer *peer)
{
  replicate_shipper *sh = peer->sh;
  int rc = ship_prepare_easy(peer, peer->frames_url);
  if (rc)
    return rc;
  CURLcode c = sh->frame_key ? tag_body(peer) : CURLE_OK;
  if (c == CURLE_OK)
    c = curl_easy_setopt(peer->easy, CURLOPT_POST, 1L);
  if (c == CURLE_OK)
    c = curl_easy_setopt(peer->easy, CURLOPT_POSTFIELDS, (const char *)peer->body);
  if (c == CURLE_OK)
    c = curl_easy_setopt(peer->easy, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)peer->body_len);
  if (c == CURLE_OK)
    c = curl_easy_setopt(peer->easy, CURLOPT_TIMEOUT_MS, sh->request_timeout_ms);
  if (c != CURLE_OK)
    return REPLICATE_ECURL;
  return ship_launch(peer);
}

/* Drop what the finished (or abandoned) request held. */
void ship_release_request(ship_peer *peer)
{
  replicate_shipper *sh = peer->sh;
  if (peer->req_frame) {
    pthread_mutex_lock(&sh->mu);
    ship_frame_release_locked(sh, peer->req_frame);
    pthread_mutex_unlock(&sh->mu);
    peer->req_frame = NULL;
  }
  if (peer->holds_snapshot) {
    peer->holds_snapshot = false;
    if (--sh->snap_refs == 0) {
      loom_snapshot_close(sh->snap);
      sh->snap = NULL;
    }
  }
  curl_slist_free_all(peer->base_headers);
  peer->base_headers = NULL;
  replicate_tag_stream_free(peer->base_tag);
  peer->base_tag = NULL;
  peer->body = NULL;
  peer->body_len = 0;
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
void ship_check_stall(ship_peer *peer, int64_t now)
{
  replicate_shipper *sh = peer->sh;
  if (!peer->in_flight || peer->stalled || peer->seen_up == 0 ||
      now - peer->progress_ns < sh->stall_ns)
    return;
  peer->stalled = true;
  ship_set_error(peer, "%s: no answer for %.1f s on an open connection",
                 ship_request_name(peer->req), (double)(now - peer->progress_ns) / 1e9);
  ship_publish_state(peer, REPLICATE_PEER_STALLED);
}
