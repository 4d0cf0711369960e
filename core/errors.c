/* errors.c: loom_strerror and loom_error_name, covering errno values and
 * the LOOM_E* codes of LOOM_ERROR_LIST (loom.h). A switch without default:
 * -Wswitch-enum names a code the list gains and a switch misses. */
#include <string.h>

#include "loom.h"

const char *loom_strerror(int rc)
{
  if (rc >= 0)
    return rc == 0 ? "success" : strerror(rc);
  switch ((enum loom_error)rc) {
  case LOOM_OK: return "success";
#define LOOM_ERROR_TEXT_(name, value, text) case name: return text;
  LOOM_ERROR_LIST(LOOM_ERROR_TEXT_)
#undef LOOM_ERROR_TEXT_
  case LOOM_ELAST: break;
  }
  return "unknown error";
}

const char *loom_error_name(int rc)
{
  if (rc > 0) {
    const char *name = strerrorname_np(rc);
    return name ? name : "ERRNO";
  }
  switch ((enum loom_error)rc) {
  case LOOM_OK: return "OK";
#define LOOM_ERROR_NAME_(name, value, text) case name: return #name;
  LOOM_ERROR_LIST(LOOM_ERROR_NAME_)
#undef LOOM_ERROR_NAME_
  case LOOM_ELAST: break;
  }
  return "UNKNOWN";
}
