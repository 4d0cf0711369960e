/* jsonread.c: see jsonread.h. Recursive descent over RFC 8259. */
#include <stdlib.h>
#include <string.h>

#include "jsonread.h"

typedef struct reader {
  const char *p, *end;
  int depth;
} reader;

static void skip_ws(reader *r)
{
  while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
    r->p++;
}

static json *value(reader *r);

static int hex4(const char *p, unsigned *out)
{
  *out = 0;
  for (int i = 0; i < 4; i++) {
    char c = p[i];
    unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0')
                 : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                 : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 99;
    if (d > 15)
      return -1;
    *out = *out * 16 + d;
  }
  return 0;
}

static char *string(reader *r)
{
  if (r->p >= r->end || *r->p != '"')
    return NULL;
  r->p++;
  char *out = malloc((size_t)(r->end - r->p) + 1);
  size_t n = 0;
  while (out && r->p < r->end && *r->p != '"') {
    unsigned char c = (unsigned char)*r->p++;
    if (c < 0x20)
      break;
    if (c != '\\') {
      out[n++] = (char)c;
      continue;
    }
    if (r->p >= r->end)
      break;
    char e = *r->p++;
    const char *simple = strchr("\"\\/bfnrt", e);
    if (simple && e) {
      out[n++] = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
    } else if (e == 'u' && r->end - r->p >= 4) {
      unsigned cp;
      if (hex4(r->p, &cp))
        break;
      r->p += 4;
      /* UTF-8 (surrogate pairs are kept as two code points: enough here) */
      if (cp < 0x80)
        out[n++] = (char)cp;
      else if (cp < 0x800)
        out[n++] = (char)(0xc0 | cp >> 6), out[n++] = (char)(0x80 | (cp & 0x3f));
      else
        out[n++] = (char)(0xe0 | cp >> 12), out[n++] = (char)(0x80 | ((cp >> 6) & 0x3f)),
        out[n++] = (char)(0x80 | (cp & 0x3f));
    } else {
      break;
    }
  }
  if (!out || r->p >= r->end || *r->p != '"') {
    free(out);
    return NULL;
  }
  r->p++;
  out[n] = '\0';
  return out;
}

static json *node(json_type t)
{
  json *j = calloc(1, sizeof *j);
  if (j)
    j->type = t;
  return j;
}

static int literal(reader *r, const char *word)
{
  size_t n = strlen(word);
  if ((size_t)(r->end - r->p) < n || memcmp(r->p, word, n) != 0)
    return 0;
  r->p += n;
  return 1;
}

static json *container(reader *r, int object)
{
  json *j = node(object ? JSON_OBJECT : JSON_ARRAY), **tail = &j->child;
  r->p++;
  skip_ws(r);
  if (r->p < r->end && *r->p == (object ? '}' : ']')) {
    r->p++;
    return j;
  }
  for (;;) {
    char *key = NULL;
    if (object) {
      skip_ws(r);
      if (!(key = string(r)))
        break;
      skip_ws(r);
      if (r->p >= r->end || *r->p != ':') {
        free(key);
        break;
      }
      r->p++;
    }
    json *v = value(r);
    if (!v) {
      free(key);
      break;
    }
    v->key = key;
    *tail = v;
    tail = &v->next;
    skip_ws(r);
    if (r->p < r->end && *r->p == ',') {
      r->p++;
      continue;
    }
    if (r->p < r->end && *r->p == (object ? '}' : ']')) {
      r->p++;
      return j;
    }
    break;
  }
  jsonread_free(j);
  return NULL;
}

static json *value(reader *r)
{
  skip_ws(r);
  if (r->p >= r->end || ++r->depth > 64)
    return NULL;
  json *j = NULL;
  char c = *r->p;
  if (c == '{' || c == '[') {
    j = container(r, c == '{');
  } else if (c == '"') {
    char *s = string(r);
    if (s && (j = node(JSON_STRING)))
      j->string = s;
    else
      free(s);
  } else if (literal(r, "true") || literal(r, "false")) {
    if ((j = node(JSON_BOOL)))
      j->number = r->p[-1] == 'e' && r->p[-2] == 'u';
  } else if (literal(r, "null")) {
    j = node(JSON_NULL);
  } else if (c == '-' || (c >= '0' && c <= '9')) {
    char buf[64];
    size_t n = 0;
    while (r->p < r->end && n < sizeof buf - 1 && strchr("+-0123456789.eE", *r->p))
      buf[n++] = *r->p++;
    buf[n] = '\0';
    char *end;
    double d = strtod(buf, &end);
    if (*end == '\0' && (j = node(JSON_NUMBER)))
      j->number = d;
  }
  r->depth--;
  return j;
}

json *jsonread_parse(const char *text, size_t len)
{
  reader r = {text, text + len, 0};
  json *j = value(&r);
  skip_ws(&r);
  if (j && r.p != r.end) {
    jsonread_free(j);
    return NULL;
  }
  return j;
}

void jsonread_free(json *j)
{
  while (j) {
    json *next = j->next;
    jsonread_free(j->child);
    free(j->string);
    free(j->key);
    free(j);
    j = next;
  }
}

const json *jsonread_get(const json *j, const char *path)
{
  while (j && *path) {
    const char *dot = strchr(path, '.');
    size_t n = dot ? (size_t)(dot - path) : strlen(path);
    const json *c = j->type == JSON_OBJECT ? j->child : NULL;
    while (c && !(strlen(c->key) == n && !memcmp(c->key, path, n)))
      c = c->next;
    j = c;
    path += n + (dot ? 1 : 0);
  }
  return j;
}

double jsonread_number(const json *j, const char *path, double dflt)
{
  const json *v = jsonread_get(j, path);
  return v && v->type == JSON_NUMBER ? v->number : dflt;
}

const char *jsonread_string(const json *j, const char *path, const char *dflt)
{
  const json *v = jsonread_get(j, path);
  return v && v->type == JSON_STRING ? v->string : dflt;
}

int jsonread_bool(const json *j, const char *path, int dflt)
{
  const json *v = jsonread_get(j, path);
  return v && v->type == JSON_BOOL ? (int)v->number : dflt;
}
