/* client.c: see client.h. */
#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "array.h"
#include "client.h"

char *client_url(const char *base, const char *path)
{
  size_t b = strlen(base);
  while (b > 0 && base[b - 1] == '/')
    b--;
  char *url = malloc(b + strlen(path) + 1);
  if (url) {
    memcpy(url, base, b);
    strcpy(url + b, path);
  }
  return url;
}

static size_t collect(char *data, size_t size, size_t n, void *arg)
{
  client_reply *r = arg;
  size_t len = size * n;
  if (r->len + len > (16u << 20))
    return 0; /* a status document is small: refuse a flood */
  if (loom_array_reserve(&r->body, &r->cap, r->len + len + 1, 1))
    return 0;
  memcpy(r->body + r->len, data, len);
  r->len += len;
  r->body[r->len] = '\0';
  return len;
}

/* Keep the X-Loomship-Tag header's value (trimmed) in the reply. */
static size_t header_line(char *data, size_t size, size_t n, void *arg)
{
  client_reply *r = arg;
  size_t len = size * n;
  static const char name[] = "x-loomship-tag:";
  if (len > sizeof name - 1 && strncasecmp(data, name, sizeof name - 1) == 0) {
    size_t at = sizeof name - 1, end = len;
    while (at < end && data[at] == ' ')
      at++;
    while (end > at && (data[end - 1] == '\r' || data[end - 1] == '\n' || data[end - 1] == ' '))
      end--;
    if (end - at < sizeof r->tag) {
      memcpy(r->tag, data + at, end - at);
      r->tag[end - at] = '\0';
    }
  }
  return len;
}

int client_request(const char *method, const char *base_url, const char *path,
                   const client_options *opt, client_reply *reply)
{
  memset(reply, 0, sizeof *reply);
  char *url = client_url(base_url, path);
  CURL *c = curl_easy_init();
  if (!url || !c) {
    free(url);
    if (c)
      curl_easy_cleanup(c);
    strcpy(reply->error, "out of memory");
    return -1;
  }
  struct curl_slist *headers = NULL;
  char *auth = NULL;
  if (opt->token) {
    auth = malloc(strlen(opt->token) + 32);
    if (auth) {
      sprintf(auth, "Authorization: Bearer %s", opt->token);
      headers = curl_slist_append(headers, auth);
    }
  }
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, reply);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, header_line);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, reply);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
  if (opt->timeout_s)
    curl_easy_setopt(c, CURLOPT_TIMEOUT, opt->timeout_s);
  if (opt->ca_file)
    curl_easy_setopt(c, CURLOPT_CAINFO, opt->ca_file);
  if (!strcmp(method, "POST")) {
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
  }
  CURLcode rc = curl_easy_perform(c);
  if (rc == CURLE_OK)
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &reply->status);
  else
    snprintf(reply->error, sizeof reply->error, "%s", curl_easy_strerror(rc));
  if (!reply->body)
    reply->body = calloc(1, 1);
  curl_slist_free_all(headers);
  if (auth) {
    memset(auth, 0, strlen(auth)); /* the secret does not linger */
    free(auth);
  }
  curl_easy_cleanup(c);
  free(url);
  return rc == CURLE_OK ? 0 : -1;
}

void client_reply_free(client_reply *reply)
{
  free(reply->body);
  reply->body = NULL;
}

int client_url_check(const char *url, char *why, size_t size)
{
  const char *sep = strstr(url, "://");
  if (!sep) {
    snprintf(why, size, "not a URL: it must start with http:// or https://");
    return -1;
  }
  size_t n = (size_t)(sep - url);
  if (!((n == 4 && !strncasecmp(url, "http", 4)) || (n == 5 && !strncasecmp(url, "https", 5)))) {
    snprintf(why, size, "the scheme must be http or https, not '%.*s'", (int)(n < 64 ? n : 64),
             url);
    return -1;
  }
  if (!sep[3] || sep[3] == '/' || sep[3] == ':') {
    snprintf(why, size, "the URL names no host");
    return -1;
  }
  return 0;
}
