/*
 * histogram.c: durations as a Prometheus histogram (replicate.h,
 * "Durations"): fixed bucket bounds, counts per bucket, their sum. In the
 * codec library: the receiver times its applies, the server prints them,
 * the example application times its saves.
 */
#include "replicate.h"

const double replicate_duration_bounds[REPLICATE_DURATION_BUCKETS] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5, 10,
};

void replicate_duration_observe(replicate_duration_histogram *h, double seconds)
{
  unsigned i = 0;
  while (i < REPLICATE_DURATION_BUCKETS && seconds > replicate_duration_bounds[i])
    i++;
  h->counts[i]++;
  h->count++;
  h->sum_seconds += seconds;
}
