/*
 * util.c: small helpers of the server: Range parsing, ETags, the bearer
 * token check, decoder limits, clocks and the log.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "logline.h"
#include "util.h"

/* ---------------------------------------------------------------------- */
/* Range: bytes=first-last | bytes=first- | bytes=-suffix (RFC 9110 14.1) */

/* Parse decimal digits at *p into *out; false on none or overflow. */
static bool parse_u64(const char **p, uint64_t *out)
{
  const char *s = *p;
  uint64_t v = 0;
  if (!isdigit((unsigned char)*s))
    return false;
  while (isdigit((unsigned char)*s)) {
    unsigned d = (unsigned)(*s - '0');
    if (v > (UINT64_MAX - d) / 10)
      return false;
    v = v * 10 + d;
    s++;
  }
  *p = s;
  *out = v;
  return true;
}

static const char *skip_spaces(const char *s)
{
  while (*s == ' ' || *s == '\t')
    s++;
  return s;
}

http_range_result http_range_parse(const char *value, uint64_t total,
                                   uint64_t *first, uint64_t *last)
{
  if (!value)
    return HTTP_RANGE_NONE;
  const char *p = skip_spaces(value);
  if (strncasecmp(p, "bytes", 5) != 0)
    return HTTP_RANGE_NONE;
  p = skip_spaces(p + 5);
  if (*p != '=')
    return HTTP_RANGE_NONE;
  p = skip_spaces(p + 1);
  if (strchr(p, ','))
    return HTTP_RANGE_NONE; /* several ranges: we send the whole body */

  uint64_t a, b;
  if (*p == '-') {
    p++;
    if (!parse_u64(&p, &b) || *skip_spaces(p) != '\0')
      return HTTP_RANGE_NONE;
    if (b == 0 || total == 0)
      return HTTP_RANGE_UNSATISFIABLE;
    *first = b >= total ? 0 : total - b;
    *last = total - 1;
    return HTTP_RANGE_SINGLE;
  }
  if (!parse_u64(&p, &a) || *p != '-')
    return HTTP_RANGE_NONE;
  p++;
  bool open_ended = *skip_spaces(p) == '\0';
  if (!open_ended) {
    if (!parse_u64(&p, &b) || *skip_spaces(p) != '\0' || b < a)
      return HTTP_RANGE_NONE;
  }
  if (a >= total)
    return HTTP_RANGE_UNSATISFIABLE;
  *first = a;
  *last = open_ended || b >= total ? total - 1 : b;
  return HTTP_RANGE_SINGLE;
}

void http_etag_format(const loom_position *pos, char out[HTTP_ETAG_MAX])
{
  snprintf(out, HTTP_ETAG_MAX, "\"%" PRIu64 "-%" PRIu64 "-%016" PRIx64 "\"",
           pos->epoch, pos->seq, pos->checksum);
}

/* ---------------------------------------------------------------------- */
/* The bearer token */

bool http_token_matches(const uint8_t *token, size_t token_len,
                        const char *authorization)
{
  if (!authorization)
    return false;
  const char *p = skip_spaces(authorization);
  if (strncasecmp(p, "Bearer", 6) != 0 || (p[6] != ' ' && p[6] != '\t'))
    return false;
  p = skip_spaces(p + 6);
  size_t n = strlen(p);
  while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
    n--;
  /* Every byte of the token is compared whatever the input, so the time
   * taken says nothing about where the first difference is. */
  unsigned diff = n != token_len;
  for (size_t i = 0; i < token_len; i++) {
    uint8_t c = i < n ? (uint8_t)p[i] : 0;
    diff |= (unsigned)(c ^ token[i]);
  }
  return diff == 0 && token_len > 0;
}

replicate_limits http_limits_of(const http_server_options *opt)
{
  replicate_limits l = replicate_limits_default();
  l.max_frame_pages = opt->max_frame_pages ? opt->max_frame_pages : 4096;
  l.max_image_pages =
      opt->max_image_pages ? opt->max_image_pages : (UINT64_C(1) << 30);
  l.max_payload_bytes =
      opt->max_frame_bytes ? opt->max_frame_bytes : (UINT64_C(64) << 20);
  return l;
}

/* ---------------------------------------------------------------------- */
/* Clocks */

static _Atomic int64_t realtime_offset_ns;

void http_clock_offset_set(int64_t ns) { atomic_store(&realtime_offset_ns, ns); }

int64_t http_now_ns(void)
{
  return loom_real_ns() + atomic_load(&realtime_offset_ns);
}
int64_t http_monotonic_ns(void) { return loom_mono_ns(); }

/* ---------------------------------------------------------------------- */
/* The log */

void http_logf(const http_logger *logger, const char *fmt, ...)
{
  if (!logger)
    return;
  va_list ap;
  va_start(ap, fmt);
  loom_log_vline(logger->fn, logger->ctx, fmt, ap);
  va_end(ap);
}
