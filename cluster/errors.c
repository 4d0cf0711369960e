/* errors.c: cluster_strerror and cluster_error_name for the CLUSTER_E*
 * codes of CLUSTER_ERROR_LIST (etcd.h); every other value is passed to
 * replicate's (which passes on to core's). A switch without default:
 * -Wswitch-enum names a code the list gains and a switch misses. */
#include "etcd.h"

#include "replicate.h"

static int cluster_range(int rc)
{
  return rc < CLUSTER_OK && rc > CLUSTER_ELAST;
}

const char *cluster_strerror(int rc)
{
  if (cluster_range(rc)) {
    switch ((enum cluster_error)rc) {
#define CLUSTER_ERROR_TEXT_(name, value, text) case name: return text;
      CLUSTER_ERROR_LIST(CLUSTER_ERROR_TEXT_)
#undef CLUSTER_ERROR_TEXT_
    case CLUSTER_OK:
    case CLUSTER_ELAST:
      break;
    }
  }
  return replicate_strerror(rc);
}

const char *cluster_error_name(int rc)
{
  if (cluster_range(rc)) {
    switch ((enum cluster_error)rc) {
#define CLUSTER_ERROR_NAME_(name, value, text) case name: return #name;
      CLUSTER_ERROR_LIST(CLUSTER_ERROR_NAME_)
#undef CLUSTER_ERROR_NAME_
    case CLUSTER_OK:
    case CLUSTER_ELAST:
      break;
    }
  }
  return replicate_error_name(rc);
}
