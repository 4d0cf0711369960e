/* backoff.c: exponential backoff with jitter, capped (etcd.h). The jitter
 * is a splitmix64 sequence: no global state, reproducible from a seed. */
#include "etcd.h"

#include <time.h>

static uint64_t backoff_rand(uint64_t *state)
{
  uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

void cluster_backoff_init(struct cluster_backoff *backoff, uint32_t base_ms,
                          uint32_t cap_ms, uint64_t seed)
{
  if (base_ms < 1)
    base_ms = 1;
  if (cap_ms < base_ms)
    cap_ms = base_ms;
  if (seed == 0) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    seed = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
  }
  backoff->base_ms = base_ms;
  backoff->cap_ms = cap_ms;
  backoff->attempt = 0;
  backoff->rng = seed;
}

uint32_t cluster_backoff_next(struct cluster_backoff *backoff)
{
  uint64_t d = backoff->base_ms;
  for (uint32_t i = 0; i < backoff->attempt && d < backoff->cap_ms; i++)
    d *= 2;
  if (d > backoff->cap_ms)
    d = backoff->cap_ms;
  if (backoff->attempt < 64)
    backoff->attempt++;
  uint64_t half = d / 2;
  return (uint32_t)(half + backoff_rand(&backoff->rng) % (d - half + 1));
}

void cluster_backoff_reset(struct cluster_backoff *backoff)
{
  backoff->attempt = 0;
}
