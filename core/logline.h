/* logline.h: one formatted diagnostic line handed to a caller's callback,
 * the pattern every module's logger shares (receiver, shipper, server).
 * Internal to the tree: not installed. Lines are cut at 511 bytes. */
#ifndef LOOM_LOGLINE_H
#define LOOM_LOGLINE_H

#include <stdarg.h>
#include <stdio.h>

static inline void loom_log_vline(void (*fn)(void *ctx, const char *line),
                                  void *ctx, const char *fmt, va_list ap)
{
  if (!fn)
    return;
  char line[512];
  vsnprintf(line, sizeof line, fmt, ap);
  fn(ctx, line);
}

#endif
