/* hex.h: reading hexadecimal digits, the one helper for history ids
 * (core/history.c) and checksums in JSON answers (replicate/ship_json.c).
 * Internal: not installed. */
#ifndef LOOM_HEX_H
#define LOOM_HEX_H

/* The value of the hex digit c (either case), or -1. */
static inline int loom_hex_digit(int c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

#endif
