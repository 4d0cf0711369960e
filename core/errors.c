/* errors.c: loom_strerror, covering errno values and LOOM_E* codes. */
#include <string.h>

#include "loom.h"

const char *loom_strerror(int rc)
{
  if (rc >= 0)
    return rc == 0 ? "success" : strerror(rc);
  switch ((enum loom_error)rc) {
  case LOOM_OK: return "success";
  case LOOM_ELOCKED: return "the directory is in use by another process or handle";
  case LOOM_ECORRUPT: return "on-disk data fails its checksum or is malformed";
  case LOOM_EVERSION: return "unsupported on-disk format version";
  case LOOM_EPANIC: return "the handle is poisoned after a failed commit; reopen to recover";
  case LOOM_EEXHAUSTED: return "the arena is exhausted: no free page left";
  case LOOM_EPAGESIZE: return "the loom page size is not a multiple of the system page size";
  case LOOM_EPOSITION: return "the patch does not apply to the current position";
  case LOOM_ETOOBIG: return "the image is larger than the arena";
  case LOOM_EBUG: return "an invariant was violated (a bug was caught)";
  case LOOM_EINVAL: return "an argument is out of range";
  case LOOM_ENOIMAGE: return "no image in that directory";
  case LOOM_ETRACKER: return "the requested dirty-page tracker is not available";
  case LOOM_EHISTORY: return "the image directory already follows another history";
  case LOOM_ELAST: break;
  }
  return "unknown error";
}
