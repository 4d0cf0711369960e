/* json_get.c: see json_get.h. */
#include "json_get.h"

#include <string.h>

json_t *cli_json_parse(const char *text, size_t len)
{
  json_error_t error;
  return text ? json_loadb(text, len, 0, &error) : NULL;
}

const json_t *cli_json_get(const json_t *j, const char *path)
{
  char key[64];
  while (j && *path) {
    size_t n = strcspn(path, ".");
    if (n >= sizeof key || !json_is_object(j))
      return NULL;
    memcpy(key, path, n);
    key[n] = '\0';
    j = json_object_get(j, key);
    path += n + (path[n] == '.');
  }
  return j;
}

bool cli_json_uint(const json_t *j, const char *path, uint64_t *out)
{
  const json_t *v = cli_json_get(j, path);
  if (!json_is_integer(v) || json_integer_value(v) < 0)
    return false;
  *out = (uint64_t)json_integer_value(v);
  return true;
}

uint64_t cli_json_uint_or(const json_t *j, const char *path, uint64_t dflt)
{
  cli_json_uint(j, path, &dflt);
  return dflt;
}

double cli_json_real(const json_t *j, const char *path, double dflt)
{
  const json_t *v = cli_json_get(j, path);
  return json_is_number(v) ? json_number_value(v) : dflt;
}

const char *cli_json_string(const json_t *j, const char *path, const char *dflt)
{
  const json_t *v = cli_json_get(j, path);
  return json_is_string(v) ? json_string_value(v) : dflt;
}

bool cli_json_bool(const json_t *j, const char *path, bool dflt)
{
  const json_t *v = cli_json_get(j, path);
  return json_is_boolean(v) ? json_is_true(v) : dflt;
}
