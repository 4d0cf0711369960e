/* errors.c: replicate_strerror and replicate_error_name, for the
 * REPLICATE_E* codes of REPLICATE_ERROR_LIST (replicate.h); every other
 * value is passed to core's loom_strerror and loom_error_name. A switch
 * without default: -Wswitch-enum names a code the list gains and a switch
 * misses. */
#include "replicate.h"

static int replicate_range(int rc)
{
  return rc < REPLICATE_OK && rc > REPLICATE_ELAST;
}

const char *replicate_strerror(int rc)
{
  if (replicate_range(rc)) {
    switch ((enum replicate_error)rc) {
#define REPLICATE_ERROR_TEXT_(name, value, text) case name: return text;
      REPLICATE_ERROR_LIST(REPLICATE_ERROR_TEXT_)
#undef REPLICATE_ERROR_TEXT_
    case REPLICATE_OK:
    case REPLICATE_ELAST:
      break;
    }
  }
  return loom_strerror(rc); /* 0, errno values and LOOM_E* codes */
}

const char *replicate_error_name(int rc)
{
  if (replicate_range(rc)) {
    switch ((enum replicate_error)rc) {
#define REPLICATE_ERROR_NAME_(name, value, text) case name: return #name;
      REPLICATE_ERROR_LIST(REPLICATE_ERROR_NAME_)
#undef REPLICATE_ERROR_NAME_
    case REPLICATE_OK:
    case REPLICATE_ELAST:
      break;
    }
  }
  return loom_error_name(rc); /* 0, errno values and LOOM_E* codes */
}
