/* util.h: small internal helpers shared by the core's files. */
#ifndef LOOM_UTIL_H
#define LOOM_UTIL_H

#include <stdint.h>
#include <string.h>

static inline void le64_put(uint8_t *p, uint64_t v)
{
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint64_t le64_get(const uint8_t *p)
{
  uint64_t v = 0;
  for (int i = 0; i < 8; i++)
    v |= (uint64_t)p[i] << (8 * i);
  return v;
}

static inline void le32_put(uint8_t *p, uint32_t v)
{
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint32_t le32_get(const uint8_t *p)
{
  uint32_t v = 0;
  for (int i = 0; i < 4; i++)
    v |= (uint32_t)p[i] << (8 * i);
  return v;
}

/* CLOCK_REALTIME in nanoseconds. */
int64_t loom_now_ns(void);

#endif
