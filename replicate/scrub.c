/*
 * scrub.c: the scrubber (replicate.h, "The scrubber"; DESIGN section 8).
 *
 * One thread. A pass walks the image from page 0 in chunks of CHUNK_PAGES
 * (1 MiB):
 * each chunk opens a snapshot (a consistent image and its tree at one
 * position), reads its pages, compares each page's hash with level 0 of
 * the snapshot's tree (the hash recorded when the page was written), and
 * closes the snapshot again, so an apply pays the snapshot's page copies
 * only for the chunk's short life. Reads are paced to the cap: after each
 * chunk the thread sleeps until the bytes read so far, at mbps, would have
 * taken as long as the pass. A pass that found no bad page sets the state
 * back to ok; a bad page makes it corrupt at once, naming the page, or,
 * with a repair hook, repairing: at the pass's end the hook gets the bad
 * pages (repair_round), and the state is ok again once it repaired them,
 * corrupt after REPLICATE_REPAIR_TRIES failed rounds; from then on it
 * stays corrupt (no flapping back to repairing) while each later pass
 * tries again, until a round succeeds. Too many bad pages for a repair
 * page by page (more than REPLICATE_PAGES_MAX in a pass, or a round
 * refused as REPLICATE_ETOOBIG) is corrupt at once and, with the want_base
 * hook, asks for a base image, which ends it (base_installed). The
 * next pass starts interval seconds after the previous one started (at
 * once when the pass took longer). The first starts FIRST_PASS_MAX_S after
 * start, or one interval when that is shorter: not at once, so that a node
 * restarted often still scrubs, while a short-lived process (a test, a
 * crash drill counting I/O operations) is not changed by it.
 */
#include <errno.h>
#include <math.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "array.h"
#include "replicate.h"

/* 1 MiB a snapshot: reads come in bursts of at most this much (the cap
 * holds on average over a pass, and every MiB), and a snapshot lives at
 * most that long, so applies meanwhile copy few pages for it. Opening one
 * copies the tree (8 bytes a page: 0.01 ms for a 1 GiB image). */
#define CHUNK_PAGES 64u
#define FIRST_PASS_MAX_S 600.0

struct replicate_scrubber {
  replicate_scrub_options opt;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cond;           /* stop */
  bool stopping;                 /* mu */
  replicate_scrub_status st;     /* mu */
  uint8_t *page;
  uint64_t found[REPLICATE_PAGES_MAX]; /* this pass's bad pages (thread) */
  uint64_t nfound;
  uint64_t asked[REPLICATE_PAGES_MAX]; /* mu: repairs asked for outside a
                                          pass, ascending, not yet run */
  uint64_t nasked;
  uint64_t inflight[REPLICATE_PAGES_MAX]; /* mu: the pages of the repair
                                             round running, ascending */
  uint64_t ninflight;
  uint64_t bases;                /* mu: base images installed (a round that
                                    sees one come ends: every page was
                                    rewritten) */
};

const char *replicate_integrity_state_name(replicate_integrity_state s)
{
  switch (s) {
  case REPLICATE_INTEGRITY_OK: return "ok";
  case REPLICATE_INTEGRITY_REPAIRING: return "repairing";
  case REPLICATE_INTEGRITY_CORRUPT: return "corrupt";
  }
  return "unknown";
}

static double mono_s(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int64_t real_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Sleep until mono_s() >= until, stop, or (when serving) a repair asked
 * for; true when stopping. */
static bool sleep_serving(replicate_scrubber *sc, double until, bool serving)
{
  pthread_mutex_lock(&sc->mu);
  while (!sc->stopping && !(serving && sc->nasked)) {
    double left = until - mono_s();
    if (left <= 0)
      break;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double at = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9 + (left < 1 ? left : 1);
    ts.tv_sec = (time_t)at;
    ts.tv_nsec = (long)((at - (double)ts.tv_sec) * 1e9);
    pthread_cond_timedwait(&sc->cond, &sc->mu, &ts);
  }
  bool stopping = sc->stopping;
  pthread_mutex_unlock(&sc->mu);
  return stopping;
}

static bool sleep_until(replicate_scrubber *sc, double until)
{
  return sleep_serving(sc, until, false);
}

static void say(replicate_scrubber *sc, const char *text)
{
  if (sc->opt.log)
    sc->opt.log(sc->opt.log_ctx, text);
}

/* Page n of snap failed its hash (or could not be read: rc). */
static void found_bad(replicate_scrubber *sc, const loom_position *pos,
                      uint64_t n, int rc)
{
  char text[256];
  if (rc)
    snprintf(text, sizeof text, "scrub: page %" PRIu64 " could not be read at seq %"
             PRIu64 ": %s", n, pos->seq, replicate_strerror(rc));
  else
    snprintf(text, sizeof text, "scrub: page %" PRIu64 " of the image does not "
             "match its recorded hash (seq %" PRIu64 ")", n, pos->seq);
  if (sc->nfound < REPLICATE_PAGES_MAX)
    sc->found[sc->nfound] = n;
  sc->nfound++;
  pthread_mutex_lock(&sc->mu);
  if (sc->st.state != REPLICATE_INTEGRITY_CORRUPT) /* corrupt stays until repaired */
    sc->st.state = sc->opt.repair && sc->nfound <= REPLICATE_PAGES_MAX
                       ? REPLICATE_INTEGRITY_REPAIRING : REPLICATE_INTEGRITY_CORRUPT;
  if (sc->nfound > REPLICATE_PAGES_MAX)
    sc->st.state = REPLICATE_INTEGRITY_CORRUPT;
  sc->st.bad_pages++;
  sc->st.bad_page = n;
  /* A repair that gave up keeps saying why (the page is in the log). */
  if (!(sc->opt.repair && sc->st.state == REPLICATE_INTEGRITY_CORRUPT &&
        strncmp(sc->st.last_error, "repair: ", 8) == 0))
    snprintf(sc->st.last_error, sizeof sc->st.last_error, "%s", text);
  pthread_mutex_unlock(&sc->mu);
  say(sc, text);
}

/* Pages [first, first + CHUNK_PAGES) of one snapshot: *pages is the
 * image's page count then, *bad the bad pages found. 0, or the snapshot's
 * error (the chunk is tried again later). */
static int scrub_chunk(replicate_scrubber *sc, uint64_t first, uint64_t *pages,
                       uint64_t *bad)
{
  loom_snapshot *snap;
  int rc = sc->opt.snapshot_open(sc->opt.ctx, &snap);
  if (rc)
    return rc;
  loom_position pos;
  loom_snapshot_position(snap, &pos);
  *pages = pos.pages;
  uint64_t end = pos.pages - first < CHUNK_PAGES ? pos.pages : first + CHUNK_PAGES;
  uint64_t done = 0;
  for (uint64_t n = first; n < end && first < pos.pages; n++, done++) {
    uint64_t recorded;
    rc = loom_snapshot_tree(snap, 0, n, 1, &recorded);
    if (rc)
      break; /* no tree: nothing to compare with */
    int read = loom_snapshot_read(snap, n * LOOM_PAGE_SIZE, sc->page, LOOM_PAGE_SIZE);
    if (read || loom_page_hash(n, sc->page) != recorded) {
      found_bad(sc, &pos, n, read);
      (*bad)++;
    }
  }
  sc->opt.snapshot_close(sc->opt.ctx, snap);
  pthread_mutex_lock(&sc->mu);
  sc->st.pages_scrubbed += done;
  pthread_mutex_unlock(&sc->mu);
  return rc;
}

/* The state after a repair round: ok (and n pages repaired) or, with
 * why, repairing (tried again) or corrupt (given up; a state that was
 * corrupt already stays so while later passes try again). */
static void repair_outcome(replicate_scrubber *sc, replicate_integrity_state state,
                           uint64_t n, const char *why)
{
  pthread_mutex_lock(&sc->mu);
  if (state != REPLICATE_INTEGRITY_REPAIRING || sc->st.state != REPLICATE_INTEGRITY_CORRUPT)
    sc->st.state = state;
  sc->st.pages_repaired += n;
  snprintf(sc->st.last_error, sizeof sc->st.last_error, "%s", why);
  pthread_mutex_unlock(&sc->mu);
  if (*why)
    say(sc, why);
}

/* Too many bad pages to move one by one: corrupt, and, with the hook, a
 * base image asked for (text says which). */
static void fall_back_to_base(replicate_scrubber *sc, const char *text)
{
  char line[480];
  snprintf(line, sizeof line, "%s; %s", text,
           sc->opt.want_base ? "a base image from the primary is asked for"
                             : "a base image (--resync-from) replaces the image");
  repair_outcome(sc, REPLICATE_INTEGRITY_CORRUPT, 0, line);
  if (sc->opt.want_base)
    sc->opt.want_base(sc->opt.repair_ctx, line);
}

/* A base image was installed since the round began (at bases0). */
static bool base_came(replicate_scrubber *sc, uint64_t bases0)
{
  pthread_mutex_lock(&sc->mu);
  bool came = sc->bases != bases0;
  pthread_mutex_unlock(&sc->mu);
  return came;
}

/* The bad pages (sc->found, sc->nfound) of a pass, or asked for, to the
 * repair hook; true when stopping. A pass's pages: up to
 * REPLICATE_REPAIR_TRIES rounds repair_retry_seconds apart, then corrupt
 * (the next pass tries again); with no upstream known, corrupt at once (as
 * without a hook). Pages asked for hold the standby up: up to
 * REPLICATE_REPAIR_TRIES_ASKED rounds, the wait doubling from
 * repair_retry_seconds (an upstream that restarts, or that the next
 * frames advertise, is waited for), then a base image is asked for. A
 * round the receiver refuses as busy (a base image being installed) is
 * not counted; one during which a base image came ends. */
static bool repair_tries(replicate_scrubber *sc, bool asked, uint64_t bases0)
{
  char why[200], text[400];
  bool ask_base = asked && sc->opt.want_base;
  int max_tries = ask_base ? REPLICATE_REPAIR_TRIES_ASKED : REPLICATE_REPAIR_TRIES;
  double wait = sc->opt.repair_retry_seconds;
  if (sc->nfound > REPLICATE_PAGES_MAX) {
    snprintf(text, sizeof text, "repair: %" PRIu64 " bad pages, more than %u: "
             "not repaired page by page", sc->nfound, (unsigned)REPLICATE_PAGES_MAX);
    fall_back_to_base(sc, text);
    return false;
  }
  for (int tries = 1;; tries++) {
    why[0] = '\0';
    int rc = sc->opt.repair(sc->opt.repair_ctx, sc->found, sc->nfound, why, sizeof why);
    if (rc == REPLICATE_ENO_UPSTREAM && !asked) { /* as without a hook */
      pthread_mutex_lock(&sc->mu);
      sc->st.state = REPLICATE_INTEGRITY_CORRUPT;
      pthread_mutex_unlock(&sc->mu);
      return false;
    }
    if (rc == 0) {
      snprintf(text, sizeof text, "repair: %" PRIu64 " bad pages fetched from the "
               "upstream, verified and written", sc->nfound);
      say(sc, text);
      repair_outcome(sc, REPLICATE_INTEGRITY_OK, sc->nfound, "");
      return false;
    }
    if (base_came(sc, bases0))
      return false; /* every page rewritten: the state is ok already */
    if (rc == REPLICATE_ETOOBIG) { /* no later round moves fewer pages */
      snprintf(text, sizeof text, "repair: %" PRIu64 " bad pages (first %" PRIu64
               "): %s", sc->nfound, sc->found[0], why[0] ? why : replicate_strerror(rc));
      fall_back_to_base(sc, text);
      return false;
    }
    if (rc == EBUSY) { /* not tried: a base image (or a rewind) holds the
                          store; the wait does not grow */
      tries--;
      if (sleep_until(sc, mono_s() + sc->opt.repair_retry_seconds))
        return true;
      continue;
    }
    bool last = tries >= max_tries;
    snprintf(text, sizeof text, "repair: %" PRIu64 " bad pages (first %" PRIu64
             "), try %d of %d failed: %s: %s%s", sc->nfound, sc->found[0], tries,
             max_tries, replicate_strerror(rc), why,
             last && !ask_base ? "; the image stays as it is" : "");
    if (last && ask_base) {
      /* Asked pages block the standby (a frame that no longer applies, or
       * a read-back its primary sees as a checksum that differs): with no
       * upstream to fetch them from, a base image is the way back. */
      fall_back_to_base(sc, text);
      return false;
    }
    repair_outcome(sc, last ? REPLICATE_INTEGRITY_CORRUPT : REPLICATE_INTEGRITY_REPAIRING,
                   0, text);
    if (last)
      return false;
    if (sleep_until(sc, mono_s() + wait))
      return true;
    if (ask_base && wait < 16 * sc->opt.repair_retry_seconds)
      wait *= 2;
  }
}

/* One round for the pages of found (a pass's, or the ones asked for):
 * while it runs they are in flight, so that a report of one of them
 * meanwhile is not counted as a new finding (ask_locked); a base image
 * installed after its start (bases0) ends it. */
static bool repair_round(replicate_scrubber *sc, bool asked)
{
  pthread_mutex_lock(&sc->mu);
  uint64_t bases0 = sc->bases;
  sc->ninflight = sc->nfound < REPLICATE_PAGES_MAX ? sc->nfound : REPLICATE_PAGES_MAX;
  memcpy(sc->inflight, sc->found, (size_t)sc->ninflight * sizeof *sc->inflight);
  pthread_mutex_unlock(&sc->mu);
  bool stop = repair_tries(sc, asked, bases0);
  pthread_mutex_lock(&sc->mu);
  sc->ninflight = 0;
  pthread_mutex_unlock(&sc->mu);
  return stop;
}

/* One full pass; true when stopping. */
static bool scrub_pass(replicate_scrubber *sc)
{
  double start = mono_s(), rate = sc->opt.mbps * 1048576.0;
  uint64_t first = 0, pages = 1, bad = 0, bytes = 0;
  sc->nfound = 0;
  while (first < pages) {
    int rc = scrub_chunk(sc, first, &pages, &bad);
    if (rc) {
      pthread_mutex_lock(&sc->mu);
      snprintf(sc->st.last_error, sizeof sc->st.last_error,
               "scrub: no snapshot of the image: %s", replicate_strerror(rc));
      pthread_mutex_unlock(&sc->mu);
      if (sleep_until(sc, mono_s() + 1))
        return true;
      continue;
    }
    uint64_t chunk = pages > first ? (pages - first < CHUNK_PAGES ? pages - first
                                                                 : CHUNK_PAGES) : 0;
    first += CHUNK_PAGES;
    bytes += chunk * LOOM_PAGE_SIZE;
    if (sleep_until(sc, start + (double)bytes / rate))
      return true;
  }
  pthread_mutex_lock(&sc->mu);
  sc->st.passes++;
  sc->st.last_scrub_at_ns = real_ns();
  if (bad == 0 && sc->st.state == REPLICATE_INTEGRITY_CORRUPT) {
    sc->st.state = REPLICATE_INTEGRITY_OK; /* rewritten since */
    sc->st.last_error[0] = '\0';
  }
  pthread_mutex_unlock(&sc->mu);
  return bad && sc->opt.repair ? repair_round(sc, false) : false;
}

/* The repairs asked for (replicate_scrubber_request_repair) as one round;
 * true when stopping. */
static bool asked_round(replicate_scrubber *sc)
{
  pthread_mutex_lock(&sc->mu);
  sc->nfound = sc->nasked;
  memcpy(sc->found, sc->asked, (size_t)sc->nasked * sizeof *sc->found);
  sc->nasked = 0;
  pthread_mutex_unlock(&sc->mu);
  return repair_round(sc, true);
}

/* Sleep until until, running the repairs asked for meanwhile; true when
 * stopping. */
static bool wait_serving(replicate_scrubber *sc, double until)
{
  for (;;) {
    if (sleep_serving(sc, until, true))
      return true;
    pthread_mutex_lock(&sc->mu);
    bool asked = sc->nasked > 0;
    pthread_mutex_unlock(&sc->mu);
    if (!asked)
      return false;
    if (asked_round(sc))
      return true;
  }
}

static void *scrub_main(void *arg)
{
  replicate_scrubber *sc = arg;
  double first = sc->opt.interval_seconds < FIRST_PASS_MAX_S
                     ? sc->opt.interval_seconds : FIRST_PASS_MAX_S;
  if (wait_serving(sc, sc->opt.repair_only ? INFINITY : mono_s() + first))
    return NULL;
  for (;;) {
    double start = mono_s();
    if (scrub_pass(sc) || wait_serving(sc, start + sc->opt.interval_seconds))
      return NULL;
  }
}

static bool sorted_has(const uint64_t *list, uint64_t n, uint64_t page)
{
  uint64_t at = loom_sorted_at(list, n, page);
  return at < n && list[at] == page;
}

/* Under mu: pages added to the asked ones (ascending, each once, at most
 * REPLICATE_PAGES_MAX: the rest a later pass finds); how many were
 * neither asked for already nor in the repair round running (a frame
 * that no longer applies reports its pages at each try: found once). */
static uint64_t ask_locked(replicate_scrubber *sc, const uint64_t *pages,
                           uint64_t count)
{
  uint64_t news = 0;
  for (uint64_t i = 0; i < count; i++) {
    uint64_t at = loom_sorted_at(sc->asked, sc->nasked, pages[i]);
    if (at < sc->nasked && sc->asked[at] == pages[i])
      continue;
    if (!sorted_has(sc->inflight, sc->ninflight, pages[i]))
      news++;
    if (sc->nasked == REPLICATE_PAGES_MAX)
      continue;
    memmove(sc->asked + at + 1, sc->asked + at, (size_t)(sc->nasked - at) * sizeof *sc->asked);
    sc->asked[at] = pages[i];
    sc->nasked++;
  }
  if (count > 0) {
    if (sc->st.state != REPLICATE_INTEGRITY_CORRUPT)
      sc->st.state = REPLICATE_INTEGRITY_REPAIRING;
    pthread_cond_broadcast(&sc->cond);
  }
  return news;
}

void replicate_scrubber_request_repair(replicate_scrubber *sc, const uint64_t *pages,
                                       uint64_t count)
{
  if (!sc || !sc->opt.repair || count == 0)
    return;
  pthread_mutex_lock(&sc->mu);
  sc->st.bad_pages += ask_locked(sc, pages, count); /* found again: once */
  sc->st.bad_page = pages[count - 1];
  pthread_mutex_unlock(&sc->mu);
}

void replicate_scrubber_base_installed(replicate_scrubber *sc,
                                       const uint64_t *still_bad, uint64_t count)
{
  if (!sc)
    return;
  pthread_mutex_lock(&sc->mu);
  bool was = sc->st.state != REPLICATE_INTEGRITY_OK;
  sc->st.state = REPLICATE_INTEGRITY_OK;
  sc->st.last_error[0] = '\0';
  sc->nasked = 0; /* every page was rewritten */
  sc->ninflight = 0; /* a report from here on is about the new image */
  sc->bases++;
  if (sc->opt.repair)
    ask_locked(sc, still_bad, count); /* counted when they were found */
  pthread_mutex_unlock(&sc->mu);
  if (was)
    say(sc, "repair: a base image replaced the whole image: integrity ok");
}

int replicate_scrubber_start(const replicate_scrub_options *opt,
                             replicate_scrubber **out)
{
  *out = NULL;
  if (!opt || !opt->snapshot_open || !opt->snapshot_close || opt->mbps < 0)
    return REPLICATE_EINVAL;
  if (opt->interval_seconds < 0 && !opt->repair_only)
    return 0;
  replicate_scrubber *sc = calloc(1, sizeof *sc);
  if (!sc || !(sc->page = malloc(LOOM_PAGE_SIZE))) {
    free(sc);
    return ENOMEM;
  }
  sc->opt = *opt;
  if (sc->opt.interval_seconds <= 0)
    sc->opt.interval_seconds = 86400;
  if (sc->opt.mbps == 0)
    sc->opt.mbps = 64;
  if (sc->opt.repair_retry_seconds <= 0)
    sc->opt.repair_retry_seconds = 1;
  sc->st.running = !opt->repair_only;
  sc->st.bad_page = UINT64_MAX;
  pthread_mutex_init(&sc->mu, NULL);
  pthread_cond_init(&sc->cond, NULL);
  int rc = pthread_create(&sc->thread, NULL, scrub_main, sc);
  if (rc) {
    pthread_mutex_destroy(&sc->mu);
    pthread_cond_destroy(&sc->cond);
    free(sc->page);
    free(sc);
    return rc;
  }
  *out = sc;
  return 0;
}

void replicate_scrubber_stop(replicate_scrubber *sc)
{
  if (!sc)
    return;
  pthread_mutex_lock(&sc->mu);
  sc->stopping = true;
  pthread_cond_broadcast(&sc->cond);
  pthread_mutex_unlock(&sc->mu);
  pthread_join(sc->thread, NULL);
  pthread_mutex_destroy(&sc->mu);
  pthread_cond_destroy(&sc->cond);
  free(sc->page);
  free(sc);
}

void replicate_scrubber_status(replicate_scrubber *sc, replicate_scrub_status *out)
{
  memset(out, 0, sizeof *out);
  out->bad_page = UINT64_MAX;
  if (!sc)
    return;
  pthread_mutex_lock(&sc->mu);
  *out = sc->st;
  pthread_mutex_unlock(&sc->mu);
}
