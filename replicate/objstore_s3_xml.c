/*
 * objstore_s3_xml.c: the few pieces of S3's text formats the s3:// backend
 * reads and writes (objstore_s3.h): the XML answers (an error's Code, an
 * upload id, a ListObjectsV2 page), query values in canonical form, the
 * credentials file and the endpoint's form.
 *
 * The XML is read minimally and strictly: only the elements named here,
 * found by their exact tags; text must be well-formed (a raw '<' or an
 * unknown '&' entity refuses the answer), and a listing must say whether
 * it is truncated. Anything else makes the answer unreadable
 * (REPLICATE_ESTORE), never half-read.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "objstore_s3.h"
#include "replicate.h"

/* ---------------------------------------------------------------------- */
/* XML */

/* The text of the first <name>...</name> in [p, end): 1 and [*v, *vend),
 * or 0 when there is none. */
static int xml_find(const char *p, const char *end, const char *name,
                    const char **v, const char **vend)
{
  char open[64], close[64];
  int no = snprintf(open, sizeof open, "<%s>", name);
  int nc = snprintf(close, sizeof close, "</%s>", name);
  if (no <= 0 || nc <= 0 || (size_t)no >= sizeof open)
    return 0;
  const char *a = memmem(p, (size_t)(end - p), open, (size_t)no);
  if (a == NULL)
    return 0;
  a += no;
  const char *b = memmem(a, (size_t)(end - a), close, (size_t)nc);
  if (b == NULL)
    return 0;
  *v = a;
  *vend = b;
  return 1;
}

static int entity(const char *p, const char *end, char *c)
{
  static const struct {
    const char *name;
    char c;
  } named[] = {{"&amp;", '&'},
               {"&lt;", '<'},
               {"&gt;", '>'},
               {"&quot;", '"'},
               {"&apos;", '\''}};
  for (size_t i = 0; i < sizeof named / sizeof named[0]; i++) {
    size_t n = strlen(named[i].name);
    if ((size_t)(end - p) >= n && memcmp(p, named[i].name, n) == 0) {
      *c = named[i].c;
      return (int)n;
    }
  }
  /* &#DDD; or &#xHH;: printable ASCII only (keys and tokens are). */
  if (end - p < 4 || p[1] != '#')
    return -1;
  int hex = p[2] == 'x';
  const char *q = p + 2 + hex;
  unsigned long v = 0;
  int digits = 0;
  for (; q < end && *q != ';' && digits < 6; q++, digits++) {
    const char *set = hex ? "0123456789abcdefABCDEF" : "0123456789";
    if (strchr(set, *q) == NULL)
      return -1;
    v = v * (hex ? 16 : 10) +
        (unsigned long)(*q <= '9' ? *q - '0' : (*q | 0x20) - 'a' + 10);
  }
  if (q >= end || *q != ';' || digits == 0 || v < 0x20 || v > 0x7e)
    return -1;
  *c = (char)v;
  return (int)(q + 1 - p);
}

int s3_xml_text(const char *v, const char *vend, char *out, size_t cap)
{
  size_t n = 0;
  while (v < vend) {
    char c = *v;
    int used = 1;
    if (c == '<' || (unsigned char)c < 0x20)
      return -1;
    if (c == '&' && (used = entity(v, vend, &c)) < 0)
      return -1;
    if (n + 1 >= cap)
      return -1;
    out[n++] = c;
    v += used;
  }
  out[n] = '\0';
  return (int)n;
}

int s3_xml_get(const char *body, size_t len, const char *name, char *out,
               size_t cap)
{
  const char *v, *vend;
  if (!xml_find(body, body + len, name, &v, &vend))
    return -1;
  return s3_xml_text(v, vend, out, cap);
}

int s3_error_code(const char *body, size_t len, char *code, size_t cap)
{
  code[0] = '\0';
  const char *e = memmem(body, len, "<Error>", 7);
  if (e == NULL)
    return -1;
  int n = s3_xml_get(e, len - (size_t)(e - body), "Code", code, cap);
  for (int i = 0; i < n; i++) {
    char c = code[i];
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
          (c >= '0' && c <= '9') || c == '.')) {
      n = -1;
      break;
    }
  }
  if (n <= 0)
    code[0] = '\0';
  return n > 0 ? 0 : -1;
}

static int parse_size(const char *v, const char *vend, uint64_t *size)
{
  uint64_t s = 0;
  if (v == vend || vend - v > 20)
    return -1;
  for (; v < vend; v++) {
    uint64_t d = (uint64_t)(*v - '0');
    if (*v < '0' || *v > '9' || s > (UINT64_MAX - d) / 10)
      return -1;
    s = s * 10 + d;
  }
  *size = s;
  return 0;
}

/* One <Contents> element: its Key and Size. */
static int parse_contents(const char *p, const char *end, char *key,
                          size_t key_cap, uint64_t *size)
{
  const char *v, *vend;
  if (!xml_find(p, end, "Key", &v, &vend) ||
      s3_xml_text(v, vend, key, key_cap) <= 0)
    return -1;
  if (!xml_find(p, end, "Size", &v, &vend))
    return -1;
  return parse_size(v, vend, size);
}

int s3_list_parse(const char *body, size_t len, s3_list_fn fn, void *ctx,
                  int *truncated, char *token, size_t token_cap)
{
  const char *p = body, *end = body + len;
  char flag[8];
  token[0] = '\0';
  if (memmem(body, len, "<ListBucketResult", 17) == NULL ||
      s3_xml_get(body, len, "IsTruncated", flag, sizeof flag) < 0)
    return REPLICATE_ESTORE;
  if (strcmp(flag, "true") == 0)
    *truncated = 1;
  else if (strcmp(flag, "false") == 0)
    *truncated = 0;
  else
    return REPLICATE_ESTORE;
  if (*truncated &&
      s3_xml_get(body, len, "NextContinuationToken", token, token_cap) <= 0)
    return REPLICATE_ESTORE;
  const char *v, *vend;
  char key[S3_KEY_MAX + 1];
  while (xml_find(p, end, "Contents", &v, &vend)) {
    uint64_t size;
    if (parse_contents(v, vend, key, sizeof key, &size) != 0)
      return REPLICATE_ESTORE;
    int rc = fn(ctx, key, size);
    if (rc != 0)
      return rc;
    p = vend + 11; /* past "</Contents>" */
  }
  return 0;
}

/* ---------------------------------------------------------------------- */
/* Query values */

char *s3_query_encode(const char *in)
{
  static const char hex[] = "0123456789ABCDEF";
  size_t n = strlen(in);
  char *out = malloc(3 * n + 1), *o = out;
  if (out == NULL)
    return NULL;
  for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
    unsigned char c = *p;
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
        (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' ||
        c == '~') {
      *o++ = (char)c;
    } else {
      *o++ = '%';
      *o++ = hex[c >> 4];
      *o++ = hex[c & 15];
    }
  }
  *o = '\0';
  return out;
}

/* ---------------------------------------------------------------------- */
/* Credentials and endpoint */

/* One line of the credentials file: 1-255 printable bytes, no blanks. */
static int cred_line(const char *p, size_t n)
{
  if (n == 0 || n > 255)
    return 0;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)p[i] <= 0x20 || (unsigned char)p[i] >= 0x7f)
      return 0;
  return 1;
}

static int cred_split(char *text, size_t len, char **id, char **secret)
{
  char *nl = memchr(text, '\n', len);
  if (nl == NULL)
    return -1;
  size_t n1 = (size_t)(nl - text);
  char *s = nl + 1;
  size_t n2 = len - n1 - 1;
  if (n2 > 0 && s[n2 - 1] == '\n')
    n2--; /* the final newline */
  if (!cred_line(text, n1) || !cred_line(s, n2))
    return -1;
  *id = strndup(text, n1);
  *secret = strndup(s, n2);
  return 0;
}

int s3_read_credentials(const char *path, char **id, char **secret, char *why,
                        size_t why_len)
{
  *id = *secret = NULL;
  FILE *f = path != NULL ? fopen(path, "re") : NULL;
  if (f == NULL) {
    snprintf(why, why_len, "credentials file %s: %s",
             path ? path : "(none given)", path ? strerror(errno) : "");
    return REPLICATE_EINVAL;
  }
  char text[1024];
  size_t len = fread(text, 1, sizeof text, f);
  int big = len == sizeof text;
  fclose(f);
  if (big || cred_split(text, len, id, secret) != 0) {
    snprintf(why, why_len,
             "credentials file %s: expected two lines, the access key id "
             "and the secret (1-255 printable characters each, no blanks)",
             path);
    return REPLICATE_EINVAL;
  }
  if (*id == NULL || *secret == NULL) {
    free(*id);
    free(*secret);
    *id = *secret = NULL;
    return ENOMEM;
  }
  return 0;
}

int s3_endpoint_ok(const char *url)
{
  const char *h = strncmp(url, "http://", 7) == 0    ? url + 7
                  : strncmp(url, "https://", 8) == 0 ? url + 8
                                                     : NULL;
  if (h == NULL)
    return 0;
  const char *colon = strrchr(h, ':');
  if (colon == NULL || colon == h)
    return 0;
  for (const char *p = h; p < colon; p++) {
    char c = *p;
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
             (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '[' ||
             c == ']' || (c == ':' && h[0] == '[');
    if (!ok)
      return 0;
  }
  if (h[0] == '[' && colon[-1] != ']')
    return 0;
  unsigned long port = 0;
  const char *p = colon + 1;
  for (; *p >= '0' && *p <= '9' && p - colon <= 5; p++)
    port = port * 10 + (unsigned long)(*p - '0');
  if (p == colon + 1 || port == 0 || port > 65535)
    return 0;
  return *p == '\0' || (p[0] == '/' && p[1] == '\0');
}
