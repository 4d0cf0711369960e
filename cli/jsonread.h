/* jsonread.h: a small, strict JSON reader (a tree), for the documents the
 * loomship command reads from servers (status, errors, positions). */
#ifndef LOOMSHIP_JSONREAD_H
#define LOOMSHIP_JSONREAD_H

#include <stddef.h>

typedef enum json_type { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING,
                         JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json json;
struct json {
  json_type type;
  double number;      /* JSON_NUMBER, JSON_BOOL (0/1) */
  char *string;       /* JSON_STRING (decoded), and the member name in objects */
  char *key;          /* member name, for children of an object */
  json *child, *next; /* arrays and objects: first child; siblings */
};

/* Parse len bytes; NULL on malformed input or depth over 64. Free with
 * jsonread_free. */
json *jsonread_parse(const char *text, size_t len);
void jsonread_free(json *j);
/* Member of an object by name, or NULL. Path "a.b.c" descends objects. */
const json *jsonread_get(const json *j, const char *path);
/* Typed getters with a default when absent or of another type. */
double jsonread_number(const json *j, const char *path, double dflt);
const char *jsonread_string(const json *j, const char *path, const char *dflt);
int jsonread_bool(const json *j, const char *path, int dflt);

#endif
