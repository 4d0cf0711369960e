/* client.h: the loomship command's HTTP client (libcurl easy interface). */
#ifndef LOOMSHIP_CLIENT_H
#define LOOMSHIP_CLIENT_H

#include <stddef.h>
#include <stdint.h>

typedef struct client_options {
  const char *token;    /* bearer token, or NULL */
  const char *ca_file;  /* for https: CA bundle, or NULL for the system's */
  long timeout_s;       /* whole request; 0: none */
} client_options;

typedef struct client_reply {
  long status;          /* HTTP status, 0 when no answer */
  char *body;           /* NUL-terminated, malloc'd */
  size_t len;
  size_t cap;           /* bytes allocated for body */
  char error[256];      /* transport error, when status is 0 */
  char tag[96];         /* the X-Loomship-Tag header (a frame tag), or "" */
} client_reply;

/* method "GET" or "POST" (empty body) on base_url + path. 0 when an answer
 * came (any status), -1 on a transport error (reply->error says). */
int client_request(const char *method, const char *base_url, const char *path,
                   const client_options *opt, client_reply *reply);
void client_reply_free(client_reply *reply);

/* Whether url names a scheme loomship speaks (http or https) and a host:
 * 0, or -1 with why ("the scheme must be http or https, not 'htp'"). */
int client_url_check(const char *url, char *why, size_t size);

/* base_url + path into a malloc'd string, without a doubled slash. */
char *client_url(const char *base_url, const char *path);

#endif
