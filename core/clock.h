/* clock.h: the clocks, in one place. CLOCK_MONOTONIC for durations,
 * timeouts and deadlines; CLOCK_REALTIME only for what is shown or sent as
 * a time of day (commit times, "last_error_at"). Internal: not installed. */
#ifndef LOOM_CLOCK_H
#define LOOM_CLOCK_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

#define LOOM_NS_PER_S INT64_C(1000000000)

static inline int64_t loom_clock_ns(clockid_t id)
{
  struct timespec ts;
  clock_gettime(id, &ts);
  return (int64_t)ts.tv_sec * LOOM_NS_PER_S + ts.tv_nsec;
}

/* CLOCK_MONOTONIC in nanoseconds. */
static inline int64_t loom_mono_ns(void) { return loom_clock_ns(CLOCK_MONOTONIC); }

/* CLOCK_REALTIME in nanoseconds. */
static inline int64_t loom_real_ns(void) { return loom_clock_ns(CLOCK_REALTIME); }

/* CLOCK_MONOTONIC in seconds (progress lines, rates). */
static inline double loom_mono_s(void) { return (double)loom_mono_ns() / 1e9; }

/* The absolute time ns after now on clock id, for pthread_cond_timedwait
 * (whose condition variable must use the same clock). */
static inline struct timespec loom_deadline(clockid_t id, int64_t ns)
{
  int64_t at = loom_clock_ns(id) + ns;
  return (struct timespec){.tv_sec = (time_t)(at / LOOM_NS_PER_S),
                           .tv_nsec = (long)(at % LOOM_NS_PER_S)};
}

/* Initialise a condition variable whose timed waits count on
 * CLOCK_MONOTONIC (loom_deadline(CLOCK_MONOTONIC, ...)): a wait that a
 * step of the wall clock neither cuts short nor stretches. 0 or
 * pthread_cond_init's error. */
static inline int loom_cond_init_mono(pthread_cond_t *cond)
{
  pthread_condattr_t ca;
  int rc = pthread_condattr_init(&ca);
  if (rc)
    return rc;
  rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  if (!rc)
    rc = pthread_cond_init(cond, &ca);
  pthread_condattr_destroy(&ca);
  return rc;
}

#endif
