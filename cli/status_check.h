/* status_check.h: `loomship status --check` and the health lines of the
 * plain status (status_check.c says the verdict's rules C1-C4). */
#ifndef LOOMSHIP_STATUS_CHECK_H
#define LOOMSHIP_STATUS_CHECK_H

#include <jansson.h>

#include "client.h"

/* The health check of the node at url: 0 healthy, 1 degraded, 2
 * unreachable or error (DESIGN.md section 5), after one line on stdout
 * naming the verdict and its reasons. max_lag < 0: no lag limit. */
int cli_status_check(const char *url, const client_options *o, double max_lag);
/* The lag in seconds a check compares with --max-lag: a standby's own, a
 * primary's largest standby lag (0 without standbys). */
double cli_status_lag_seconds(const json_t *status);
/* Lines for ready, last contact, last apply error, sync and version. */
void cli_status_print_health(const json_t *status);

#endif
