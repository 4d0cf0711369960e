/*
 * status_check.c: `loomship status URL --check [--max-lag SECONDS]`, a
 * health check for container runtimes, load balancers and monitoring
 * scripts (DESIGN.md section 5), and the health lines of the plain status.
 *
 * The verdict, in this order:
 *   C1. GET /readyz: no answer, or an answer other than 200 or 503: exit 2
 *       (unreachable or error).
 *   C2. GET /v1/status: no answer, not 200, or not JSON: exit 2.
 *   C3. degraded (exit 1) when exactly one or more of: /readyz said 503
 *       (not ready, with its reason); "fenced" is true; "integrity" is
 *       present and its "state" is not "ok"; --max-lag was given and the
 *       lag in seconds exceeds it (a standby's own "lag.seconds", less
 *       "apply_delay.seconds" on a delayed standby; on a primary the
 *       largest "standbys[].lag.seconds").
 *   C4. otherwise healthy: exit 0.
 * One line on stdout says the verdict and every reason for it.
 */
#include <math.h>
#include <string.h>

#include "client.h"
#include "json_get.h"
#include "status_check.h"

/* The lag a check compares with --max-lag (C3). */
double cli_status_lag_seconds(const json_t *status)
{
  const json_t *sb = cli_json_get(status, "standbys");
  if (!json_is_array(sb)) /* a delayed standby lags by its delay on purpose */
    return fmax(0, cli_json_real(status, "lag.seconds", 0) -
                       cli_json_real(status, "apply_delay.seconds", 0));
  double worst = 0;
  size_t i;
  const json_t *s;
  json_array_foreach(sb, i, s)
    worst = fmax(worst, cli_json_real(s, "lag.seconds", 0));
  return worst;
}

/* Append "; " and text to reasons (a fixed buffer, cut when full). */
static void add_reason(char *reasons, size_t size, const char *text)
{
  size_t used = strlen(reasons);
  if (used < size)
    snprintf(reasons + used, size - used, "%s%s", used ? "; " : "", text);
}

/* C3 on the status document j and the readiness answer; the reasons into
 * reasons. True when degraded. */
static bool degraded(const json_t *j, const json_t *readyz, bool ready,
                     double max_lag, char *reasons, size_t size)
{
  char text[300];
  if (!ready) {
    snprintf(text, sizeof text, "not ready (%s)",
             cli_json_string(readyz, "reason", "no reason given"));
    add_reason(reasons, size, text);
  }
  if (cli_json_bool(j, "fenced", false))
    add_reason(reasons, size, "fenced");
  const char *integrity = cli_json_string(j, "integrity.state", NULL);
  if (cli_json_get(j, "integrity") && (!integrity || strcmp(integrity, "ok"))) {
    snprintf(text, sizeof text, "integrity %s", integrity ? integrity : "unknown");
    add_reason(reasons, size, text);
  }
  double lag = cli_status_lag_seconds(j);
  if (max_lag >= 0 && lag > max_lag) {
    snprintf(text, sizeof text, "lag %.3f s over --max-lag %g", lag, max_lag);
    add_reason(reasons, size, text);
  }
  return reasons[0] != '\0';
}

/* GET path into a parsed JSON tree: 0, or 2 after a line naming url. */
static int get_json(const char *url, const char *path, const client_options *o,
                    long *status, json_t **out)
{
  client_reply r;
  *out = NULL;
  if (client_request("GET", url, path, o, &r)) {
    printf("unreachable: %s%s: %s\n", url, path, r.error);
    client_reply_free(&r);
    return 2;
  }
  *status = r.status;
  *out = cli_json_parse(r.body, r.len);
  client_reply_free(&r);
  return 0;
}

int cli_status_check(const char *url, const client_options *o, double max_lag)
{
  long ready_status = 0, status = 0;
  json_t *readyz, *j;
  if (get_json(url, "/readyz", o, &ready_status, &readyz)) /* C1 */
    return 2;
  if (ready_status != 200 && ready_status != 503) {
    printf("error: %s/readyz answered HTTP %ld\n", url, ready_status);
    json_decref(readyz);
    return 2;
  }
  if (get_json(url, "/v1/status", o, &status, &j)) { /* C2 */
    json_decref(readyz);
    return 2;
  }
  int rc = 2;
  char reasons[1024] = "";
  if (status != 200 || !j) {
    printf("error: %s/v1/status answered HTTP %ld%s\n", url, status,
           j ? "" : ", not a JSON status document");
  } else if (degraded(j, readyz, ready_status == 200, max_lag, reasons,
                      sizeof reasons)) { /* C3 */
    printf("degraded: %s %s: %s\n", cli_json_string(j, "role", "?"), url, reasons);
    rc = 1;
  } else { /* C4 */
    printf("healthy: %s %s, lag %.3f s\n", cli_json_string(j, "role", "?"), url,
           cli_status_lag_seconds(j));
    rc = 0;
  }
  json_decref(readyz);
  json_decref(j);
  return rc;
}

/* "2026-11-25T22:01:02.123Z", or "never" for null. */
static const char *when(const json_t *j, const char *path)
{
  return cli_json_string(j, path, "never");
}

void cli_status_print_health(const json_t *j)
{
  printf("ready      %s\n", cli_json_bool(j, "ready", false) ? "yes" : "NO");
  if (cli_json_get(j, "last_contact_at"))
    printf("contact    last heard from the primary at %s\n", when(j, "last_contact_at"));
  if (cli_json_get(j, "last_apply_error")) {
    const char *e = cli_json_string(j, "last_apply_error", NULL);
    if (e)
      printf("apply      last error %s at %s\n", e, when(j, "last_apply_error_at"));
    else
      printf("apply      no error\n");
  }
  if (cli_json_get(j, "sync"))
    printf("sync       %llu required, %s%s\n",
           (unsigned long long)cli_json_uint_or(j, "sync.required", 0),
           cli_json_bool(j, "sync.degraded", false) ? "DEGRADED since " : "not degraded",
           cli_json_bool(j, "sync.degraded", false) ? when(j, "sync.degraded_since") : "");
  printf("version    %s\n", cli_json_string(j, "version", "?"));
}
