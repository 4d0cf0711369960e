/* version.c: the version of the library a program runs against. */
#include "loom.h"

const char *loom_version(void) { return LOOMSHIP_VERSION_STRING; }

int loom_version_number(void) { return LOOMSHIP_VERSION_NUMBER; }
