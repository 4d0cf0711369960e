/*
 * archive_writer.c: the archiver (archive.h): commits in, objects out.
 *
 * THE COMMIT SIDE (replicate_archiver_on_commit, the node's commit hook)
 *   encodes the commit's frame and queues it in memory (and, as the log's
 *   only writer, appends it to the replication log); past
 *   max_backlog_bytes the queue is emptied and the dropped seqs become a
 *   gap (a base follows). It never waits for the store.
 *
 * THE LOG HOLD: the replication log keeps every frame after the uploaded
 *   seq (replicate_log_hold, set at start and after every head), so that
 *   frames committed but not uploaded survive a kill -9. After every head
 *   the uploaded position is remembered in position_file; at the restart
 *   the frames after it are taken from the log into the queue at once
 *   (load_backlog), before a shipper or the first commit may start the log
 *   afresh (a kill between a commit point and its log append leaves the
 *   log one commit short: that commit is a gap). Past max_backlog_bytes
 *   the hold moves past the dropped frames (queue_overflow). The hold is
 *   lifted when archiving stops for good, and by replicate_archiver_stop
 *   unless hold_after_stop (a standby: its receiver holds every frame
 *   from its open on, receiver.h, and its next upload reads them back
 *   from the log, from_log; an archiver fed frames loads nothing at start).
 *
 * THE THREAD, per wake-up (every interval_seconds, or at once for a
 * drain):
 *   W1 start-up, retried until it succeeds or finds a reason to stop: the
 *      archive's id (made, IF_ABSENT, when there is none), this epoch's
 *      record (made when missing), its writer object (IF_ABSENT: another
 *      writer's is REPLICATE_EARCHIVE_WRITER), its head (ahead of the node:
 *      EARCHIVE_BEHIND; not on the node's history: EARCHIVE_FOREIGN), and
 *      one listing of e/E/ for the bases and segments kept (retention);
 *   W2 a base when none is at this epoch yet, after a gap, or when
 *      base_interval_seconds passed with commits since the last: a
 *      snapshot of the store, uploaded whole, then the head;
 *   W3 the queued frames after the uploaded seq as one segment (a
 *      missing one is looked up in the replication log, else it is a gap:
 *      W2 at the next step), put IF_ABSENT, then the head (the order
 *      matters: a head never names a seq whose segment is not stored);
 *   W4 retention: past keep_bases, the oldest base goes, with every segment
 *      that only it needed.
 * A failed request leaves everything queued for the next wake-up; the
 * error shows in status.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "archive_internal.h"
#include "clock.h"

typedef struct queued {
  uint64_t seq;
  int64_t time_ns;
  int64_t mono_ns; /* when it was fed */
  replicate_buf frame;
} queued;

typedef struct kept {
  arc_name name;
  char key[ARC_KEY_MAX];
} kept;

struct replicate_archiver {
  replicate_archiver_options o;
  char *url, *key_file, *writer_id, *endpoint, *region, *credentials;
  char *position_file;
  char *scratch_dir;
  replicate_archive *a;   /* the thread's */
  replicate_encoder *enc; /* the commit hook's */
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cond;
  /* under mu */
  queued *q;
  size_t qn, qcap;
  uint64_t backlog;
  loom_position committed;
  bool quit, drain, stopped, gap_pending, gap_seen;
  bool failing; /* the last step failed: wait before again */
  bool await_feed; /* a standby that held nothing at start: W1 waits for
                      the first frame (its epoch and history) */
  uint64_t gap_first, gap_last;
  int64_t dropped_mono_ns; /* when the oldest dropped commit came */
  loom_position uploaded;
  uint64_t base_count;
  char last_error[512];
  int64_t last_error_at_ns;
  objstore_stats stats;
  uint64_t idle_wakeups;
  arc_keys new_keys;  /* replicate_archiver_reload_key's, for the thread */
  bool keys_pending;
  /* the thread's */
  bool started, have_head, base_needed;
  /* A segment PUT whose outcome is unknown (a cut connection, a 5xx after
   * the store may have stored it): retried with the same range and key,
   * so that a stored copy is found (EXISTS) rather than overlapped. */
  uint64_t pend_first, pend_last;
  char pend_key[ARC_KEY_MAX];
  double last_base_mono;
  uint64_t committed_at_base;
  kept *kept;
  size_t kn;
  uint64_t epoch;
  loom_lineage lineage; /* the node's at start */
};

static int64_t real_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void say(replicate_archiver *ar, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void say(replicate_archiver *ar, const char *fmt, ...)
{
  if (ar->o.log_fn == NULL)
    return;
  char line[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  ar->o.log_fn(ar->o.log_ctx, line);
}

/* Copies text into dst[cap], cut if need be. */
static void copy_text(char *dst, size_t cap, const char *text)
{
  size_t n = strnlen(text, cap - 1);
  memcpy(dst, text, n);
  dst[n] = '\0';
}

/* Records a failure (fatal: archiving stops for good). */
static int failed(replicate_archiver *ar, int rc, bool fatal)
{
  pthread_mutex_lock(&ar->mu);
  char text[sizeof ar->last_error];
  copy_text(text, sizeof text, fatal ? "archiving stopped: " : "");
  size_t n = strlen(text);
  copy_text(text + n, sizeof text - n, ar->a->error);
  bool news = strcmp(ar->last_error, text) != 0;
  memcpy(ar->last_error, text, sizeof text);
  ar->last_error_at_ns = real_ns();
  ar->failing = true;
  if (fatal)
    ar->stopped = true;
  pthread_mutex_unlock(&ar->mu);
  if (fatal && ar->o.log)
    replicate_log_hold(ar->o.log, 0); /* no reader any more */
  if (news || fatal)
    say(ar, "archive: %s", ar->last_error);
  return rc;
}

/* The log keeps what is not uploaded yet (THE LOG HOLD); the log's only
 * writer also trims what is. */
static void hold_log(replicate_archiver *ar, uint64_t uploaded_seq)
{
  if (ar->o.log == NULL)
    return;
  replicate_log_hold(ar->o.log, uploaded_seq + 1);
  if (ar->o.log_writer)
    replicate_log_retain(ar->o.log, uploaded_seq + 1);
}

/* ---------------------------------------------------------------------- */
/* The commit side */

static void queue_drop_all(replicate_archiver *ar)
{
  for (size_t i = 0; i < ar->qn; i++)
    replicate_buf_free(&ar->q[i].frame);
  ar->qn = 0;
  ar->backlog = 0;
}

/* The frames are dropped: a gap from the oldest commit not uploaded. The
 * log's hold moves past them too (the backlog's cap bounds the log as it
 * does the queue: a log without a byte cap of its own, a standby's receive
 * log, would otherwise grow while the store is away); the log's lock is a
 * leaf, so this may run under mu. */
static void queue_overflow(replicate_archiver *ar, queued *e)
{
  if (!ar->gap_pending) {
    ar->gap_first = ar->qn ? ar->q[0].seq : e->seq;
    ar->dropped_mono_ns = ar->qn ? ar->q[0].mono_ns : e->mono_ns;
  }
  ar->gap_pending = ar->gap_seen = true;
  ar->gap_last = e->seq;
  queue_drop_all(ar);
  replicate_buf_free(&e->frame);
  if (ar->o.log)
    replicate_log_hold(ar->o.log, e->seq + 1);
}

static void queue_push(replicate_archiver *ar, queued *e)
{
  if (ar->backlog + e->frame.len > ar->o.max_backlog_bytes)
    return queue_overflow(ar, e);
  if (ar->qn == ar->qcap) {
    size_t cap = ar->qcap ? ar->qcap * 2 : 256;
    queued *q = realloc(ar->q, cap * sizeof *q);
    if (q == NULL)
      return queue_overflow(ar, e);
    ar->q = q;
    ar->qcap = cap;
  }
  ar->backlog += e->frame.len;
  ar->q[ar->qn++] = *e;
}

/* The log's only writer appends the commit's frame: a cache of the store
 * for a restart (the commit is durable already), so a failure only means
 * the log starts afresh at the next commit (a gap if the archive needs
 * what it lacked, as for the shipper's log, ship.c). */
static void log_append(replicate_archiver *ar, const replicate_buf *frame)
{
  int rc = replicate_log_append(ar->o.log, frame->data, frame->len);
  if (rc == REPLICATE_ENOT_CONTIGUOUS && replicate_log_reset(ar->o.log) == 0)
    replicate_log_append(ar->o.log, frame->data, frame->len);
}

int replicate_archiver_on_commit(replicate_archiver *ar, loom *l,
                                 const loom_commit *c)
{
  queued e = {.seq = c->after.seq,
              .time_ns = c->after.commit_time_ns,
              .mono_ns = loom_mono_ns()};
  int rc = replicate_frame_encode_commit(ar->enc, l, c, &e.frame);
  pthread_mutex_lock(&ar->mu);
  bool append = rc == 0 && ar->o.log_writer && !ar->stopped;
  pthread_mutex_unlock(&ar->mu);
  if (append)
    log_append(ar, &e.frame);
  pthread_mutex_lock(&ar->mu);
  ar->committed = c->after;
  if (rc != 0 || ar->stopped) {
    replicate_buf_free(&e.frame);
    if (rc != 0 && !ar->gap_pending)
      ar->gap_first = e.seq, ar->dropped_mono_ns = e.mono_ns;
    if (rc != 0)
      ar->gap_pending = ar->gap_seen = true;
  } else {
    queue_push(ar, &e);
  }
  pthread_mutex_unlock(&ar->mu);
  return 0; /* the archive never fails a commit */
}

/* Under mu: seqs first..last will not be fed (they came inside a base
 * image, in a merged frame, or in one that could not be read): a gap, and
 * a base follows. */
static void feed_skipped(replicate_archiver *ar, uint64_t first, uint64_t last,
                         int64_t mono_ns)
{
  if (!ar->gap_pending)
    ar->gap_first = first, ar->dropped_mono_ns = mono_ns;
  ar->gap_pending = ar->gap_seen = true;
  ar->gap_last = last;
}

/* Under mu: the node follows another epoch now; this archiver stops. */
static void feed_new_epoch(replicate_archiver *ar, uint64_t epoch)
{
  snprintf(ar->last_error, sizeof ar->last_error,
           "archiving stopped: the node follows epoch %" PRIu64 " now, this "
           "archiver writes epoch %" PRIu64,
           epoch, ar->epoch);
  ar->last_error_at_ns = real_ns();
  ar->stopped = true;
  pthread_cond_broadcast(&ar->cond);
}

int replicate_archiver_on_frame(replicate_archiver *ar, const void *frame,
                                size_t len)
{
  replicate_frame_info info;
  int rc = replicate_frame_parse_header(frame, len, NULL, &info);
  if (rc == 0 && info.kind != REPLICATE_KIND_COMMIT)
    return 0;
  queued e = {.seq = info.after.seq,
              .time_ns = info.commit_time_ns,
              .mono_ns = loom_mono_ns()};
  pthread_mutex_lock(&ar->mu);
  uint64_t held = ar->committed.seq;
  if (rc == 0 && ar->await_feed) { /* the first frame: its epoch, history */
    ar->epoch = ar->uploaded.epoch = info.epoch;
    ar->lineage.history = info.history;
    ar->await_feed = false;
    pthread_cond_broadcast(&ar->cond);
  }
  if (rc == 0 && info.after.seq <= held) {
    pthread_mutex_unlock(&ar->mu); /* fed before this archiver started */
    return 0;
  }
  if (rc == 0 && info.epoch != ar->epoch) {
    feed_new_epoch(ar, info.epoch);
    pthread_mutex_unlock(&ar->mu);
    return 0;
  }
  bool single = rc == 0 && !(info.flags & REPLICATE_FRAME_COALESCED);
  if (rc == 0) {
    ar->committed = info.after;
    ar->committed.epoch = info.epoch;
    ar->committed.commit_time_ns = info.commit_time_ns;
  }
  if (!single)
    feed_skipped(ar, held + 1, rc == 0 ? info.after.seq : held + 1, e.mono_ns);
  else if (info.before.seq > held)
    feed_skipped(ar, held + 1, info.before.seq, e.mono_ns);
  if (single && !ar->stopped && (e.frame.data = malloc(len ? len : 1))) {
    memcpy(e.frame.data, frame, len);
    e.frame.len = e.frame.cap = len;
    queue_push(ar, &e);
  } else if (single && !ar->stopped) {
    feed_skipped(ar, info.after.seq, info.after.seq, e.mono_ns);
  }
  pthread_mutex_unlock(&ar->mu);
  return 0;
}

/* ---------------------------------------------------------------------- */
/* W1: start-up */

static int ensure_id(replicate_archiver *ar)
{
  replicate_archive *a = ar->a;
  int rc = arc_load_id(a);
  if (rc != REPLICATE_ESTORE_MISSING)
    return rc;
  if (RAND_bytes(a->id, ARC_ID_SIZE) != 1)
    return arc_fail(a, REPLICATE_EARCHIVE_KEY, "no random bytes for an id");
  arc_header h = {.kind = ARC_ID};
  uint8_t made[8];
  arc_put64(made, (uint64_t)real_ns());
  rc = arc_put(a, &h, "id", made, sizeof made, OBJSTORE_PUT_IF_ABSENT);
  if (rc == REPLICATE_ESTORE_EXISTS)
    return arc_load_id(a); /* raced */
  if (rc == 0)
    a->have_id = true;
  return rc;
}

/* A key rotation: the small objects a reader needs whatever it restores
 * (id, every epoch's record, head and writer) are sealed again under the
 * current key when they are under the previous one, so that the previous
 * key is needed only by bases, segments and gaps (whose keys name their
 * key id: `archive list` shows when none is left). At start only. */
static int reseal_one(replicate_archiver *ar, const char *key)
{
  arc_header h;
  replicate_buf b = {0};
  int rc = arc_get(ar->a, key, &h, &b);
  if (rc == REPLICATE_ESTORE_MISSING) {
    ar->a->error[0] = '\0';
    rc = 0;
  } else if (rc == 0 && h.key_id != arc_keys_current(&ar->a->keys)) {
    arc_header again = {.kind = h.kind,
                        .epoch = h.epoch,
                        .first_seq = h.first_seq,
                        .last_seq = h.last_seq,
                        .flags = h.flags & ARC_FLAG_ZSTD};
    rc = arc_put(ar->a, &again, key, b.data, b.len, 0);
    if (rc == 0)
      say(ar, "archive: %s sealed again under the current key", key);
  }
  replicate_buf_free(&b);
  return rc;
}

static int each_epoch_reseal(void *ctx, const char *key, uint64_t size)
{
  (void)size;
  replicate_archiver *ar = ctx;
  arc_name n;
  if (arc_key_parse(key, &n) != 0 || n.kind != ARC_EPOCH)
    return 0;
  char head[ARC_KEY_MAX], writer[ARC_KEY_MAX];
  arc_key_head(head, n.epoch);
  arc_key_writer(writer, n.epoch);
  int rc = reseal_one(ar, key);
  if (rc == 0)
    rc = reseal_one(ar, head);
  if (rc == 0)
    rc = reseal_one(ar, writer);
  return rc;
}

static int reseal_metadata(replicate_archiver *ar)
{
  if (ar->a->keys.count < 2)
    return 0; /* one key (or none): nothing to do */
  int rc = reseal_one(ar, "id");
  if (rc == 0 &&
      (rc = objstore_list(ar->a->store, "epochs/", each_epoch_reseal, ar)) &&
      ar->a->error[0] == '\0')
    arc_fail(ar->a, rc, "%s", objstore_last_error(ar->a->store));
  return rc;
}

/* The epoch's record: its history and where it branched off its parent. */
static int ensure_epoch(replicate_archiver *ar)
{
  char key[ARC_KEY_MAX];
  arc_key_epoch(key, ar->epoch);
  arc_header h;
  replicate_buf b = {0};
  int rc = arc_get(ar->a, key, &h, &b);
  const loom_lineage lin = ar->lineage;
  if (rc == 0 && (b.len != 40 || memcmp(b.data, lin.history.id, 16) != 0))
    rc = arc_fail(ar->a, REPLICATE_EARCHIVE_FOREIGN,
                  "object %s: epoch %" PRIu64 " of this archive belongs to "
                  "another history than this node's",
                  key, ar->epoch);
  replicate_buf_free(&b);
  if (rc != REPLICATE_ESTORE_MISSING)
    return rc;
  uint8_t p[40] = {0};
  memcpy(p, lin.history.id, 16);
  uint64_t parent = ar->epoch > 1 ? 1 : 0;
  for (uint32_t i = 0; i < lin.branch_count; i++) {
    const loom_branch *br = &lin.branches[i];
    if (br->epoch < ar->epoch && br->epoch > parent)
      parent = br->epoch;
    if (br->epoch == ar->epoch) {
      arc_put64(p + 24, br->seq);
      arc_put64(p + 32, br->checksum);
    }
  }
  arc_put64(p + 16, parent);
  arc_header eh = {.kind = ARC_EPOCH, .epoch = ar->epoch};
  return arc_put(ar->a, &eh, key, p, sizeof p, 0);
}

static int ensure_writer(replicate_archiver *ar)
{
  char key[ARC_KEY_MAX];
  arc_key_writer(key, ar->epoch);
  arc_header h = {.kind = ARC_WRITER, .epoch = ar->epoch};
  size_t n = strlen(ar->writer_id);
  int rc = arc_put(ar->a, &h, key, ar->writer_id, n, OBJSTORE_PUT_IF_ABSENT);
  if (rc != REPLICATE_ESTORE_EXISTS)
    return rc;
  replicate_buf b = {0};
  rc = arc_get(ar->a, key, &h, &b);
  if (rc == 0 && (b.len != n || memcmp(b.data, ar->writer_id, n) != 0))
    rc = arc_fail(
        ar->a, REPLICATE_EARCHIVE_WRITER,
        "%s: another node (%.*s) writes epoch %" PRIu64 " of this archive", key,
        (int)(b.len > 200 ? 200 : b.len), (const char *)b.data, ar->epoch);
  replicate_buf_free(&b);
  return rc;
}

static int load_head(replicate_archiver *ar)
{
  char key[ARC_KEY_MAX];
  arc_key_head(key, ar->epoch);
  loom_position head;
  int rc = arc_get_head(ar->a, ar->epoch, &ar->have_head, &head);
  if (rc != 0 || !ar->have_head)
    return rc;
  pthread_mutex_lock(&ar->mu); /* the node's newest commit (or its start) */
  loom_position now = ar->committed;
  pthread_mutex_unlock(&ar->mu);
  uint64_t epoch_at, sum_at;
  if (head.seq > now.seq)
    return arc_fail(ar->a, REPLICATE_EARCHIVE_BEHIND,
                    "this node is at seq %" PRIu64 ", behind the archive's "
                    "seq %" PRIu64 " at epoch %" PRIu64 " (%s)",
                    now.seq, head.seq, ar->epoch, key);
  if ((head.seq == now.seq && head.checksum != now.checksum) ||
      (head.seq < now.seq && ar->o.store &&
       loom_store_checksum_at(ar->o.store, head.seq, &epoch_at, &sum_at) &&
       sum_at != head.checksum))
    return arc_fail(ar->a, REPLICATE_EARCHIVE_FOREIGN,
                    "%s: the archive's seq %" PRIu64 " is not this node's "
                    "(another branch)",
                    key, head.seq);
  pthread_mutex_lock(&ar->mu);
  ar->uploaded = head;
  pthread_mutex_unlock(&ar->mu);
  hold_log(ar, head.seq);
  return 0;
}

static int each_kept(void *ctx, const char *key, uint64_t size)
{
  (void)size;
  replicate_archiver *ar = ctx;
  arc_name n;
  if (arc_key_parse(key, &n) != 0 ||
      (n.kind != ARC_BASE && n.kind != ARC_SEGMENT))
    return 0;
  kept *k = realloc(ar->kept, (ar->kn + 1) * sizeof *k);
  if (k == NULL)
    return ENOMEM;
  ar->kept = k;
  ar->kept[ar->kn].name = n;
  snprintf(ar->kept[ar->kn++].key, ARC_KEY_MAX, "%s", key);
  return 0;
}

static uint64_t count_bases(const replicate_archiver *ar)
{
  uint64_t n = 0;
  for (size_t i = 0; i < ar->kn; i++)
    n += ar->kept[i].name.kind == ARC_BASE;
  return n;
}

/* The uploaded position in position_file, "EPOCH SEQ CHECKSUM" (a cache,
 * never synced: an older one only makes the restart load more). */
static void remember_position(replicate_archiver *ar, const loom_position *pos)
{
  if (ar->o.position_file == NULL)
    return;
  char tmp[4096];
  if (snprintf(tmp, sizeof tmp, "%s.tmp", ar->o.position_file) >= (int)sizeof tmp)
    return;
  FILE *f = fopen(tmp, "w");
  if (f == NULL)
    return;
  int bad = fprintf(f, "%" PRIu64 " %" PRIu64 " %016" PRIx64 "\n", ar->epoch, pos->seq,
                    pos->checksum) < 0;
  bad |= fclose(f) != 0;
  if (bad || rename(tmp, ar->o.position_file) != 0)
    unlink(tmp);
}

static int put_head(replicate_archiver *ar, const loom_position *pos);

/* The position after the frames of a segment's payload (records of length,
 * frame) when they follow from *from one by one: 0 and *out, or
 * REPLICATE_EARCHIVE_OBJECT. */
static int segment_follows(const replicate_buf *payload, const loom_position *from,
                           uint64_t epoch, loom_position *out)
{
  loom_position at = *from;
  for (size_t off = 0; off < payload->len;) {
    if (payload->len - off < 8)
      return REPLICATE_EARCHIVE_OBJECT;
    uint64_t n = arc_get64(payload->data + off);
    replicate_frame_info info;
    if (n > payload->len - off - 8 ||
        replicate_frame_parse_header(payload->data + off + 8, (size_t)n, NULL, &info) != 0 ||
        info.kind != REPLICATE_KIND_COMMIT || info.epoch != epoch ||
        info.before.seq != at.seq || info.before.checksum != at.checksum)
      return REPLICATE_EARCHIVE_OBJECT;
    at = info.after;
    at.epoch = info.epoch;
    at.commit_time_ns = info.commit_time_ns;
    off += 8 + (size_t)n;
  }
  *out = at;
  return at.seq > from->seq ? 0 : REPLICATE_EARCHIVE_OBJECT;
}

/* Segments past the head: stored before a stop that came before their
 * head (W3 puts the segment, then the head), or read past a stale head.
 * One that follows the head is taken as uploaded (the head moves to its
 * end), in order; one that does not cannot be named by any head, so no
 * restore reads it, and it goes (the frames after the head are uploaded
 * again, maybe cut at other seqs, and two segments may not overlap). */
static int settle_orphans(replicate_archiver *ar)
{
  for (size_t i = 0; ar->have_head && i < ar->kn; i++) {
    const arc_name *n = &ar->kept[i].name;
    if (n->kind != ARC_SEGMENT || n->first_seq != ar->uploaded.seq + 1)
      continue;
    arc_header h;
    replicate_buf payload = {0};
    loom_position end;
    int rc = arc_get(ar->a, ar->kept[i].key, &h, &payload);
    if (rc == 0 && segment_follows(&payload, &ar->uploaded, ar->epoch, &end) == 0 &&
        end.seq == n->last_seq) {
      say(ar, "archive: %s was stored past the head (seq %" PRIu64 ") before a stop "
          "and follows it: the head moves to seq %" PRIu64, ar->kept[i].key,
          ar->uploaded.seq, end.seq);
      rc = put_head(ar, &end);
      i = (size_t)-1; /* the next one may follow it now */
    }
    replicate_buf_free(&payload);
    if (rc != 0)
      return rc;
  }
  for (size_t i = 0; i < ar->kn;) {
    if (ar->kept[i].name.kind != ARC_SEGMENT ||
        ar->kept[i].name.first_seq <= ar->uploaded.seq) {
      i++;
      continue;
    }
    int rc = objstore_delete(ar->a->store, ar->kept[i].key);
    if (rc != 0)
      return arc_fail(ar->a, rc, "%s", objstore_last_error(ar->a->store));
    say(ar, "archive: %s was stored past the head (seq %" PRIu64 ") and does "
        "not follow it: deleted", ar->kept[i].key, ar->uploaded.seq);
    memmove(&ar->kept[i], &ar->kept[i + 1], (--ar->kn - i) * sizeof *ar->kept);
  }
  return 0;
}

static int start_up(replicate_archiver *ar)
{
  int rc = ensure_id(ar);
  if (rc == 0)
    rc = reseal_metadata(ar);
  if (rc == 0)
    rc = ensure_epoch(ar);
  if (rc == 0)
    rc = ensure_writer(ar);
  if (rc == 0)
    rc = load_head(ar);
  char prefix[ARC_KEY_MAX];
  arc_key_prefix(prefix, ar->epoch);
  ar->kn = 0;
  if (rc == 0 && (rc = objstore_list(ar->a->store, prefix, each_kept, ar)))
    arc_fail(ar->a, rc, "%s", objstore_last_error(ar->a->store));
  if (rc == 0)
    rc = settle_orphans(ar);
  if (rc != 0)
    return rc;
  ar->started = true;
  ar->last_base_mono = loom_mono_s();
  ar->committed_at_base = ar->uploaded.seq;
  ar->base_needed = !ar->have_head || count_bases(ar) == 0;
  pthread_mutex_lock(&ar->mu);
  ar->base_count = count_bases(ar);
  pthread_mutex_unlock(&ar->mu);
  say(ar, "archive: writing epoch %" PRIu64 " of %s from seq %" PRIu64,
      ar->epoch, ar->url, ar->uploaded.seq);
  return 0;
}

/* ---------------------------------------------------------------------- */
/* W2: a base, W3: a segment, the head */

static int put_head(replicate_archiver *ar, const loom_position *pos)
{
  uint8_t p[32];
  arc_put64(p, pos->seq);
  arc_put64(p + 8, pos->checksum);
  arc_put64(p + 16, pos->pages);
  arc_put64(p + 24, (uint64_t)pos->commit_time_ns);
  char key[ARC_KEY_MAX];
  arc_key_head(key, ar->epoch);
  arc_header h = {.kind = ARC_HEAD,
                  .epoch = ar->epoch,
                  .first_seq = pos->seq,
                  .last_seq = pos->seq};
  int rc = arc_put(ar->a, &h, key, p, sizeof p, 0);
  if (rc == 0) {
    pthread_mutex_lock(&ar->mu);
    ar->uploaded = *pos;
    pthread_mutex_unlock(&ar->mu);
    ar->have_head = true;
    hold_log(ar, pos->seq);
    remember_position(ar, pos);
  }
  return rc;
}

static int keep(replicate_archiver *ar, arc_kind kind, const char *key,
                uint64_t first, uint64_t last)
{
  /* A key listed already (a base uploaded again at the same position,
   * after a crash before its head): once, or retention would count it
   * twice and delete the only copy. */
  for (size_t i = 0; i < ar->kn; i++)
    if (strcmp(ar->kept[i].key, key) == 0)
      return 0;
  kept *k = realloc(ar->kept, (ar->kn + 1) * sizeof *k);
  if (k == NULL)
    return ENOMEM;
  ar->kept = k;
  ar->kept[ar->kn] = (kept){.name = {.kind = kind,
                                     .epoch = ar->epoch,
                                     .first_seq = first,
                                     .last_seq = last}};
  snprintf(ar->kept[ar->kn++].key, ARC_KEY_MAX, "%s", key);
  return 0;
}

/* A base's payload, the image stream (docs/FORMAT.md) of a snapshot,
 * read piece by piece (arc_read_fn): the stream header, then the pages. */
typedef struct snapshot_stream {
  loom_snapshot *snap;
  uint8_t header[LOOM_STREAM_HEADER];
} snapshot_stream;

static int snapshot_stream_read(void *ctx, uint64_t off, void *buf, size_t len)
{
  snapshot_stream *ss = ctx;
  uint8_t *p = buf;
  if (off < LOOM_STREAM_HEADER) {
    size_t n = LOOM_STREAM_HEADER - off < len ? LOOM_STREAM_HEADER - off : len;
    memcpy(p, ss->header + off, n);
    p += n, off += n, len -= n;
  }
  return len ? loom_snapshot_read(ss->snap, off - LOOM_STREAM_HEADER, p, len) : 0;
}

/* Records seqs [first, last] as a gap. */
static int put_gap(replicate_archiver *ar, uint64_t first, uint64_t last)
{
  char key[ARC_KEY_MAX];
  arc_key_gap(key, ar->epoch, first, last, arc_keys_current(&ar->a->keys));
  arc_header h = {.kind = ARC_GAP,
                  .epoch = ar->epoch,
                  .first_seq = first,
                  .last_seq = last};
  int rc = arc_put(ar->a, &h, key, NULL, 0, 0);
  if (rc == 0) {
    pthread_mutex_lock(&ar->mu);
    ar->gap_seen = true;
    ar->gap_first = first;
    ar->gap_last = last;
    pthread_mutex_unlock(&ar->mu);
    say(ar, "archive: seqs %" PRIu64 "-%" PRIu64 " are a gap (%s)", first, last,
        key);
  }
  return rc;
}

static void queue_trim(replicate_archiver *ar, uint64_t upto)
{
  pthread_mutex_lock(&ar->mu);
  size_t n = 0;
  while (n < ar->qn && ar->q[n].seq <= upto) {
    ar->backlog -= ar->q[n].frame.len;
    replicate_buf_free(&ar->q[n++].frame);
  }
  if (n > 0 && ar->qn > n) /* q is NULL while nothing was ever queued */
    memmove(ar->q, ar->q + n, (ar->qn - n) * sizeof *ar->q);
  ar->qn -= n;
  pthread_mutex_unlock(&ar->mu);
}

/* A snapshot of the node's store: its own, or through the hooks. */
static int snap_open(replicate_archiver *ar, loom_snapshot **out)
{
  if (ar->o.store)
    return loom_store_snapshot_open(ar->o.store, out);
  return ar->o.snapshot_open(ar->o.snapshot_ctx, out);
}

static void snap_close(replicate_archiver *ar, loom_snapshot *snap)
{
  if (ar->o.store)
    loom_snapshot_close(snap);
  else
    ar->o.snapshot_close(ar->o.snapshot_ctx, snap);
}

static int upload_segments(replicate_archiver *ar, uint64_t limit);

/* A file in dir that nobody else sees and nothing leaves behind: O_TMPFILE,
 * or where the file system has none, a named file unlinked at once (one
 * that a crash left between the two goes at the archiver's start:
 * scratch_sweep). The fd, or -errno. */
#define SCRATCH_PREFIX ".archive-base-"

static int scratch_open(const char *dir)
{
  int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL))
    return fd >= 0 ? fd : -errno;
  char path[PATH_MAX];
  if (snprintf(path, sizeof path, "%s/" SCRATCH_PREFIX "XXXXXX", dir) >=
      (int)sizeof path)
    return -ENAMETOOLONG;
  fd = mkostemp(path, O_CLOEXEC);
  if (fd < 0)
    return -errno;
  if (unlink(path) != 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

/* The named scratch files a crash left in dir (best effort). */
static void scratch_sweep(const char *dir)
{
  DIR *d = opendir(dir);
  for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;)
    if (strncmp(e->d_name, SCRATCH_PREFIX, strlen(SCRATCH_PREFIX)) == 0)
      unlinkat(dirfd(d), e->d_name, 0);
  if (d != NULL)
    closedir(d);
}

static int upload_base(replicate_archiver *ar)
{
  snapshot_stream ss = {0};
  int rc = snap_open(ar, &ss.snap);
  if (rc != 0)
    return arc_fail(ar->a, rc, "base: snapshot: %s", replicate_strerror(rc));
  loom_position pos;
  loom_lineage lin;
  loom_snapshot_position(ss.snap, &pos);
  loom_snapshot_lineage(ss.snap, &lin);
  loom_stream_header_encode(ss.header, &pos, &lin);
  char key[ARC_KEY_MAX];
  arc_key_base(key, ar->epoch, pos.seq, pos.commit_time_ns,
               arc_keys_current(&ar->a->keys));
  arc_header h = {.kind = ARC_BASE,
                  .epoch = ar->epoch,
                  .first_seq = pos.seq,
                  .last_seq = pos.seq,
                  .flags = ARC_FLAG_ZSTD};
  /* Sealed as it is read: the process holds the base's compressed size
   * (in memory, or mapped from a scratch file for a large image), never
   * the image. The snapshot is closed before any request. */
  uint64_t len = LOOM_STREAM_HEADER + pos.pages * LOOM_PAGE_SIZE;
  int fd = -1;
  if (ar->o.scratch_dir != NULL && len > ar->o.base_memory_max_bytes &&
      (fd = scratch_open(ar->o.scratch_dir)) < 0)
    rc = arc_fail(ar->a, -fd, "base: a scratch file in %s: %s",
                  ar->o.scratch_dir, strerror(-fd));
  replicate_buf obj = {0};
  if (rc == 0)
    rc = arc_seal_object(ar->a, &h, key, snapshot_stream_read, &ss, len, fd,
                         ar->o.scratch_reserve_bytes, &obj);
  if (rc == ENOSPC && fd >= 0) /* (other errors: arc_seal_object's words) */
    arc_fail(ar->a, rc,
             "base %s: reading and sealing into a scratch file in %s (which "
             "keeps %" PRIu64 " MiB free there): %s",
             key, ar->o.scratch_dir, ar->o.scratch_reserve_bytes >> 20,
             replicate_strerror(rc));
  snap_close(ar, ss.snap);
  /* What is queued up to the base goes first, as a segment: a base due by
   * time must not turn the commits since the last segment into a gap
   * (only those missing from memory and from the log are one). */
  if (rc == 0 && ar->have_head && pos.seq > ar->uploaded.seq) {
    rc = upload_segments(ar, pos.seq);
    if (rc == ENOMEM) /* short of memory next to the sealed base: the base
                         goes ahead, what was not uploaded is the gap */
      rc = 0;
  }
  if (rc == 0)
    rc = arc_put_sealed(ar->a, key, &obj, 0);
  arc_sealed_free(&obj, fd);
  if (fd >= 0)
    close(fd); /* unlinked: its blocks go with it */
  uint64_t from = ar->uploaded.seq + 1;
  if (rc == 0 && ar->have_head && pos.seq > from)
    rc = put_gap(ar, from, pos.seq - 1);
  if (rc == 0 && pos.seq >= ar->uploaded.seq)
    rc = put_head(ar, &pos);
  if (rc == 0)
    rc = keep(ar, ARC_BASE, key, pos.seq, pos.seq);
  if (rc != 0)
    return rc;
  queue_trim(ar, pos.seq);
  ar->base_needed = false;
  ar->last_base_mono = loom_mono_s();
  ar->committed_at_base = pos.seq;
  pthread_mutex_lock(&ar->mu);
  ar->base_count = count_bases(ar);
  pthread_mutex_unlock(&ar->mu);
  say(ar, "archive: base at seq %" PRIu64 " uploaded (%s)", pos.seq, key);
  return 0;
}

/* Appends one record (length, frame) to a segment's payload. */
static int seg_add(replicate_buf *seg, const void *frame, size_t len)
{
  size_t need = seg->len + 8 + len;
  if (need > seg->cap) {
    size_t cap = need * 2;
    uint8_t *p = realloc(seg->data, cap);
    if (p == NULL)
      return ENOMEM;
    seg->data = p;
    seg->cap = cap;
  }
  arc_put64(seg->data + seg->len, len);
  memcpy(seg->data + seg->len + 8, frame, len);
  seg->len = need;
  return 0;
}

/* The position after a frame, from its header. */
static void frame_end(loom_position *last, const replicate_frame_info *info)
{
  *last = info->after;
  last->epoch = info->epoch;
  last->commit_time_ns = info->commit_time_ns;
}

/* The segment reached its byte cap (it holds a frame at least). */
static bool seg_full(const replicate_archiver *ar, const replicate_buf *seg)
{
  return seg->len >= ar->o.segment_max_bytes;
}

/* Frames next .. stop - 1 from the replication log, while it has them
 * and they are single commits of this archiver's epoch (an older epoch's
 * frames before a standby's branch point belong to another archive: a
 * base, W2), until the segment is full; *last follows them. Returns the
 * first seq not taken; *rc an error that is not the log's (memory: tried
 * again, not a gap). */
static uint64_t from_log(replicate_archiver *ar, uint64_t next, uint64_t stop,
                         replicate_buf *seg, loom_position *last, bool capped, int *rc)
{
  replicate_buf f = {0};
  replicate_frame_info info;
  *rc = 0;
  while (ar->o.log != NULL && next < stop && !(capped && seg_full(ar, seg))) {
    int read = replicate_log_read(ar->o.log, next, &f);
    if (read == ENOMEM)
      *rc = ENOMEM;
    if (read != 0 || replicate_frame_parse_header(f.data, f.len, NULL, &info) != 0 ||
        info.kind != REPLICATE_KIND_COMMIT || info.epoch != ar->epoch ||
        info.after.seq != next || (*rc = seg_add(seg, f.data, f.len)) != 0)
      break;
    frame_end(last, &info);
    next++;
  }
  replicate_buf_free(&f);
  return next;
}

/* The segment's payload: the frames after uploaded, contiguous, up to seq
 * limit: from the log up to the first queued one, then the queue, until
 * the segment is full (*full then; the rest is the next segment's). */
static int gather(replicate_archiver *ar, replicate_buf *seg,
                  loom_position *last, uint64_t limit, bool capped, bool *full)
{
  uint64_t next = ar->uploaded.seq + 1;
  pthread_mutex_lock(&ar->mu);
  uint64_t first_queued = ar->qn ? ar->q[0].seq : ar->committed.seq + 1;
  pthread_mutex_unlock(&ar->mu);
  uint64_t stop = limit < first_queued - 1 ? limit + 1 : first_queued;
  int rc;
  next = from_log(ar, next, stop, seg, last, capped, &rc);
  *full = capped && seg_full(ar, seg);
  if (rc)
    return arc_fail(ar->a, rc, "segment after seq %" PRIu64 ": reading seq %" PRIu64
                    " from the log: %s", ar->uploaded.seq, next, replicate_strerror(rc));
  if (next < stop && !*full)
    return REPLICATE_ELOG_GONE; /* a gap: W2 */
  if (*full)
    return 0;
  pthread_mutex_lock(&ar->mu);
  for (size_t i = 0; rc == 0 && i < ar->qn && !*full; i++) {
    if (ar->q[i].seq < next)
      continue;
    if (ar->q[i].seq != next || next > limit)
      break;
    replicate_frame_info info;
    rc = replicate_frame_parse_header(ar->q[i].frame.data, ar->q[i].frame.len,
                                      NULL, &info);
    if (rc == 0)
      rc = seg_add(seg, ar->q[i].frame.data, ar->q[i].frame.len);
    if (rc == 0)
      frame_end(last, &info), next++;
    *full = capped && seg_full(ar, seg);
  }
  pthread_mutex_unlock(&ar->mu);
  if (rc)
    return arc_fail(ar->a, rc, "segment after seq %" PRIu64 ": seq %" PRIu64 ": %s",
                    ar->uploaded.seq, next, replicate_strerror(rc));
  return 0;
}

/* The frames after the uploaded seq, up to limit, as one segment, then
 * the head; *more when the segment was full (frames are left for the
 * next). */
static int upload_segment(replicate_archiver *ar, uint64_t limit, bool *more)
{
  replicate_buf seg = {0};
  loom_position last = ar->uploaded;
  uint64_t first = ar->uploaded.seq + 1;
  bool retry = ar->pend_first == first && ar->pend_last >= first;
  /* A retry takes exactly the range tried (W3), whatever its bytes: the
   * log's copy of a frame may be larger than the queue's was. */
  int rc = gather(ar, &seg, &last, retry ? ar->pend_last : limit, !retry, more);
  if (rc == REPLICATE_ELOG_GONE) {
    ar->base_needed = true;
    replicate_buf_free(&seg);
    return 0;
  }
  if (rc == 0 && last.seq > ar->uploaded.seq && last.epoch != ar->epoch)
    rc = arc_fail(ar->a, REPLICATE_EINVAL,
                  "a frame of epoch %" PRIu64 " while archiving epoch %" PRIu64,
                  last.epoch, ar->epoch);
  if (rc != 0 || last.seq <= ar->uploaded.seq) {
    replicate_buf_free(&seg);
    return rc;
  }
  char key[ARC_KEY_MAX];
  arc_key_segment(key, ar->epoch, first, last.seq, last.commit_time_ns,
                  arc_keys_current(&ar->a->keys));
  arc_header h = {.kind = ARC_SEGMENT,
                  .epoch = ar->epoch,
                  .first_seq = first,
                  .last_seq = last.seq};
  rc = arc_put(ar->a, &h, key, seg.data, seg.len, OBJSTORE_PUT_IF_ABSENT);
  replicate_buf_free(&seg);
  if (rc == REPLICATE_ESTORE_EXISTS && retry && strcmp(key, ar->pend_key) == 0)
    rc = 0; /* our own earlier PUT of it was stored after all */
  if (rc == REPLICATE_ESTORE_EXISTS)
    return arc_fail(ar->a, REPLICATE_EARCHIVE_WRITER,
                    "%s exists already: another node writes to this archive",
                    key);
  ar->pend_first = first, ar->pend_last = last.seq; /* until the head */
  copy_text(ar->pend_key, sizeof ar->pend_key, key);
  if (rc == 0)
    rc = put_head(ar, &last);
  if (rc == 0)
    rc = keep(ar, ARC_SEGMENT, key, first, last.seq);
  if (rc == 0)
    queue_trim(ar, last.seq), ar->pend_first = 0;
  return rc;
}

/* Segments up to limit: one, and more at once while each was full (a
 * backlog in pieces of segment_max_bytes), until a stop is asked. */
static int upload_segments(replicate_archiver *ar, uint64_t limit)
{
  bool more = true;
  int rc = 0;
  pthread_mutex_lock(&ar->mu);
  if (limit > ar->committed.seq) /* what is committed meanwhile waits for
                                    the next interval, as one segment does */
    limit = ar->committed.seq;
  pthread_mutex_unlock(&ar->mu);
  while (rc == 0 && more) {
    rc = upload_segment(ar, limit, &more);
    pthread_mutex_lock(&ar->mu);
    if (ar->quit)
      more = false;
    pthread_mutex_unlock(&ar->mu);
  }
  return rc;
}

/* W4: past keep_bases, the oldest base and the segments only it needed
 * (those ending at or before the next base). */
static int retain(replicate_archiver *ar)
{
  while (count_bases(ar) > ar->o.keep_bases) {
    uint64_t oldest = UINT64_MAX, until = UINT64_MAX;
    for (size_t i = 0; i < ar->kn; i++)
      if (ar->kept[i].name.kind == ARC_BASE &&
          ar->kept[i].name.first_seq < oldest)
        oldest = ar->kept[i].name.first_seq;
    for (size_t i = 0; i < ar->kn; i++)
      if (ar->kept[i].name.kind == ARC_BASE &&
          ar->kept[i].name.first_seq > oldest &&
          ar->kept[i].name.first_seq < until)
        until = ar->kept[i].name.first_seq;
    for (size_t i = 0; i < ar->kn;) {
      const arc_name *n = &ar->kept[i].name;
      bool drop = (n->kind == ARC_BASE && n->first_seq == oldest) ||
                  (n->kind == ARC_SEGMENT && n->last_seq <= until);
      if (!drop) {
        i++;
        continue;
      }
      int rc = objstore_delete(ar->a->store, ar->kept[i].key);
      if (rc != 0)
        return arc_fail(ar->a, rc, "%s", objstore_last_error(ar->a->store));
      memmove(&ar->kept[i], &ar->kept[i + 1],
              (--ar->kn - i) * sizeof *ar->kept);
    }
  }
  pthread_mutex_lock(&ar->mu);
  ar->base_count = count_bases(ar);
  pthread_mutex_unlock(&ar->mu);
  return 0;
}

/* One wake-up: W1 to W4. */
/* The keys replicate_archiver_reload_key read, taken by the thread (the
 * only user of ar->a->keys) before its next request; once started, the
 * small objects are sealed again under the new current key, as at start. */
static int take_new_keys(replicate_archiver *ar)
{
  pthread_mutex_lock(&ar->mu);
  bool take = ar->keys_pending;
  if (take) {
    ar->a->keys = ar->new_keys;
    explicit_bzero(&ar->new_keys, sizeof ar->new_keys);
    ar->keys_pending = false;
  }
  pthread_mutex_unlock(&ar->mu);
  if (!take)
    return 0;
  say(ar, "archive: keys re-read from %s; new objects under key %08" PRIx32 "%s",
      ar->key_file, arc_keys_current(&ar->a->keys),
      ar->a->keys.count > 1 ? ", the previous one still read" : "");
  return ar->started ? reseal_metadata(ar) : 0;
}

static int step(replicate_archiver *ar)
{
  ar->a->error[0] = '\0';
  int rc = take_new_keys(ar);
  if (rc == 0 && !ar->started)
    rc = start_up(ar);
  pthread_mutex_lock(&ar->mu);
  bool gap = ar->gap_pending;
  ar->gap_pending = false;
  uint64_t committed = ar->committed.seq;
  pthread_mutex_unlock(&ar->mu);
  if (gap)
    ar->base_needed = true;
  if (rc == 0 && !ar->base_needed && committed > ar->committed_at_base &&
      loom_mono_s() - ar->last_base_mono >= ar->o.base_interval_seconds)
    ar->base_needed = true;
  bool based = false;
  if (rc == 0 && !ar->base_needed)
    rc = upload_segments(ar, UINT64_MAX);
  if (rc == 0 && ar->base_needed)
    based = (rc = upload_base(ar)) == 0;
  /* After a base, the frames past it at once; not after a segment: what
   * was committed during its upload waits for the next interval (one
   * segment per interval, not two against a slow store). */
  if (rc == 0 && based)
    rc = upload_segments(ar, UINT64_MAX);
  if (rc == 0)
    rc = retain(ar);
  if (rc == REPLICATE_EARCHIVE_WRITER || rc == REPLICATE_EARCHIVE_BEHIND ||
      rc == REPLICATE_EARCHIVE_FOREIGN || rc == REPLICATE_EARCHIVE_KEY)
    return failed(ar, rc, true);
  if (rc != 0)
    return failed(ar, rc, false);
  pthread_mutex_lock(&ar->mu);
  ar->failing = false;
  pthread_mutex_unlock(&ar->mu);
  return 0;
}

static bool caught_up_locked(const replicate_archiver *ar)
{
  return ar->uploaded.seq >= ar->committed.seq && !ar->gap_pending;
}

/* Nothing to do: caught up, and no base due (a base is due only when
 * something was committed since the last). */
static bool idle_locked(const replicate_archiver *ar)
{
  if (ar->keys_pending && ar->started)
    return false;
  if (ar->await_feed)
    return true;
  return ar->started && caught_up_locked(ar) &&
         !(ar->committed.seq > ar->committed_at_base &&
           loom_mono_s() - ar->last_base_mono >= ar->o.base_interval_seconds);
}

static void *archiver_main(void *arg)
{
  replicate_archiver *ar = arg;
  pthread_mutex_lock(&ar->mu);
  while (!ar->quit && !ar->stopped) {
    if (!idle_locked(ar)) {
      pthread_mutex_unlock(&ar->mu);
      step(ar);
      objstore_stats st;
      objstore_get_stats(ar->a->store, &st);
      pthread_mutex_lock(&ar->mu);
      ar->stats = st;
      pthread_cond_broadcast(&ar->cond);
      if (ar->quit || ar->stopped)
        break;
    } else {
      ar->idle_wakeups++;
    }
    if (ar->drain && !caught_up_locked(ar) && !ar->failing)
      continue;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    double t =
        (double)until.tv_sec + until.tv_nsec / 1e9 + ar->o.interval_seconds;
    until.tv_sec = (time_t)t;
    until.tv_nsec = (long)((t - (double)until.tv_sec) * 1e9);
    pthread_cond_timedwait(&ar->cond, &ar->mu, &until);
  }
  pthread_cond_broadcast(&ar->cond);
  pthread_mutex_unlock(&ar->mu);
  return NULL;
}

/* ---------------------------------------------------------------------- */
/* Start, drain, stop, status */

static char *dup_or_null(const char *s, int *rc)
{
  if (s == NULL)
    return NULL;
  char *d = strdup(s);
  if (d == NULL)
    *rc = ENOMEM;
  return d;
}

static int archiver_copy_options(replicate_archiver *ar,
                                 const replicate_archiver_options *o)
{
  int rc = 0;
  ar->o = *o;
  ar->url = dup_or_null(o->access.url, &rc);
  ar->key_file = dup_or_null(o->access.key_file, &rc);
  ar->endpoint = dup_or_null(o->access.store.endpoint, &rc);
  ar->region = dup_or_null(o->access.store.region, &rc);
  ar->credentials = dup_or_null(o->access.store.credentials_file, &rc);
  ar->o.position_file = ar->position_file = dup_or_null(o->position_file, &rc);
  ar->o.scratch_dir = ar->scratch_dir = dup_or_null(o->scratch_dir, &rc);
  char host[128] = "node";
  gethostname(host, sizeof host - 1);
  char id[300];
  snprintf(id, sizeof id, "%s:%ld", host, (long)getpid());
  ar->writer_id = dup_or_null(o->writer_id ? o->writer_id : id, &rc);
  ar->o.access.url = ar->url;
  ar->o.access.key_file = ar->key_file;
  ar->o.access.store.endpoint = ar->endpoint;
  ar->o.access.store.region = ar->region;
  ar->o.access.store.credentials_file = ar->credentials;
  if (ar->o.interval_seconds <= 0)
    ar->o.interval_seconds = 1;
  if (ar->o.base_interval_seconds <= 0)
    ar->o.base_interval_seconds = 86400;
  if (ar->o.keep_bases == 0)
    ar->o.keep_bases = 7;
  if (ar->o.max_backlog_bytes == 0)
    ar->o.max_backlog_bytes = REPLICATE_ARCHIVE_BACKLOG_DEFAULT;
  if (ar->o.segment_max_bytes == 0)
    ar->o.segment_max_bytes = REPLICATE_ARCHIVE_SEGMENT_DEFAULT;
  if (ar->o.base_memory_max_bytes == 0)
    ar->o.base_memory_max_bytes = REPLICATE_ARCHIVE_BASE_MEMORY_DEFAULT;
  if (ar->o.scratch_reserve_bytes == 0)
    ar->o.scratch_reserve_bytes = REPLICATE_ARCHIVE_SCRATCH_RESERVE_DEFAULT;
  return rc;
}

static void archiver_free(replicate_archiver *ar)
{
  explicit_bzero(&ar->new_keys, sizeof ar->new_keys);
  queue_drop_all(ar);
  free(ar->q);
  free(ar->kept);
  replicate_archive_close(ar->a);
  replicate_encoder_free(ar->enc);
  free(ar->url);
  free(ar->key_file);
  free(ar->endpoint);
  free(ar->region);
  free(ar->credentials);
  free(ar->position_file);
  free(ar->scratch_dir);
  free(ar->writer_id);
  pthread_mutex_destroy(&ar->mu);
  pthread_cond_destroy(&ar->cond);
  free(ar);
}

/* At start, from the caller's thread: the frames after the remembered
 * uploaded position (or the log's oldest, if it was trimmed past it
 * before the position was written), from the log into the queue, before
 * a shipper or the first commit may start the log afresh (THE LOG HOLD).
 * What the log lacks is looked for again at upload, else it is a gap, as
 * before. Not for an archiver fed frames (a standby): its log is the
 * receiver's, never started afresh at a restart, and the upload takes
 * them from it (from_log) in the archiver's thread, without holding up
 * the receipts that feed it. */
static void load_backlog(replicate_archiver *ar)
{
  uint64_t epoch = 0, seq = 0, sum = 0;
  FILE *f = ar->o.position_file ? fopen(ar->o.position_file, "r") : NULL;
  bool ok = f && fscanf(f, "%" SCNu64 " %" SCNu64 " %" SCNx64, &epoch, &seq, &sum) == 3;
  if (f)
    fclose(f);
  if (!ok || ar->o.log == NULL || ar->o.store == NULL || epoch != ar->epoch ||
      seq >= ar->committed.seq)
    return;
  replicate_log_stats ls;
  replicate_log_get_stats(ar->o.log, &ls);
  uint64_t next = ls.oldest_seq > seq + 1 ? ls.oldest_seq : seq + 1;
  replicate_log_iter it;
  replicate_log_iter_init(&it, ar->o.log, next);
  replicate_buf frame = {0};
  uint64_t loaded = 0;
  while (replicate_log_iter_next(&it, &frame) == 0) {
    replicate_frame_info info;
    if (replicate_frame_parse_header(frame.data, frame.len, NULL, &info) != 0 ||
        info.kind != REPLICATE_KIND_COMMIT || info.epoch != ar->epoch ||
        info.after.seq != next++ || info.after.seq > ar->committed.seq)
      break; /* another epoch's, a hole, or past the store: W3 looks again */
    queued e = {.seq = info.after.seq, .time_ns = info.commit_time_ns,
                .mono_ns = loom_mono_ns(), .frame = frame};
    frame = (replicate_buf){0};
    pthread_mutex_lock(&ar->mu);
    queue_push(ar, &e);
    pthread_mutex_unlock(&ar->mu);
    loaded++;
  }
  replicate_buf_free(&frame);
  if (loaded)
    say(ar, "archive: %" PRIu64 " frames after seq %" PRIu64 " (not uploaded before "
        "the stop) taken from the replication log", loaded, seq);
}

int replicate_archiver_start(const replicate_archiver_options *o,
                             replicate_archiver **out)
{
  *out = NULL;
  if ((o->store == NULL &&
       (o->snapshot_open == NULL || o->snapshot_close == NULL)) ||
      o->access.url == NULL)
    return REPLICATE_EINVAL;
  replicate_archiver *ar = calloc(1, sizeof *ar);
  if (ar == NULL)
    return ENOMEM;
  pthread_mutex_init(&ar->mu, NULL);
  pthread_cond_init(&ar->cond, NULL);
  uint64_t held_before = 0;
  int rc = archiver_copy_options(ar, o);
  if (rc == 0)
    rc = replicate_archive_open(&ar->o.access, &ar->a);
  if (rc == 0)
    rc = replicate_encoder_new(1, &ar->enc);
  if (rc == 0) {
    /* From the caller's thread (the store's owner): the thread reads only
     * what the commit hook feeds it, and thread-safe snapshot and
     * checksum_at calls. */
    if (o->store) {
      loom_store_position(o->store, &ar->committed);
      loom_store_lineage(o->store, &ar->lineage);
    } else {
      ar->committed = o->position;
      ar->lineage = o->lineage;
      ar->await_feed = o->position.seq == 0;
    }
    ar->epoch = ar->committed.epoch ? ar->committed.epoch : 1;
    ar->uploaded.epoch = ar->epoch;
    held_before = o->log ? replicate_log_held_from(o->log) : 0;
    if (o->log)
      replicate_log_hold(o->log, 1); /* all, until W1 reads the head */
    load_backlog(ar);
    if (ar->o.scratch_dir != NULL)
      scratch_sweep(ar->o.scratch_dir);
    rc = pthread_create(&ar->thread, NULL, archiver_main, ar);
    if (rc != 0 && o->log) /* no archiver: the caller's hold, as it was */
      replicate_log_hold(o->log, held_before);
  }
  if (rc != 0) {
    archiver_free(ar);
    return rc;
  }
  *out = ar;
  return 0;
}

int replicate_archiver_drain(replicate_archiver *ar, double timeout_seconds)
{
  double deadline = loom_mono_s() + timeout_seconds;
  pthread_mutex_lock(&ar->mu);
  ar->drain = true;
  pthread_cond_broadcast(&ar->cond);
  while (!caught_up_locked(ar) && !ar->stopped && loom_mono_s() < deadline) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += 50 * 1000000;
    if (until.tv_nsec >= 1000000000)
      until.tv_sec++, until.tv_nsec -= 1000000000;
    pthread_cond_timedwait(&ar->cond, &ar->mu, &until);
  }
  bool done = caught_up_locked(ar) && ar->started;
  pthread_mutex_unlock(&ar->mu);
  return done ? 1 : 0;
}

void replicate_archiver_stop(replicate_archiver *ar)
{
  if (ar == NULL)
    return;
  pthread_mutex_lock(&ar->mu);
  ar->quit = true;
  pthread_cond_broadcast(&ar->cond);
  pthread_mutex_unlock(&ar->mu);
  /* A request in progress (a store that hangs: up to timeout_ms per try)
   * ends now: the drain before this call was the time given to it. What
   * it was uploading stays as a crash would leave it (ARCHIVE.md). */
  objstore_cancel(replicate_archive_store(ar->a));
  pthread_join(ar->thread, NULL);
  if (ar->o.log && !ar->o.hold_after_stop)
    replicate_log_hold(ar->o.log, 0);
  archiver_free(ar);
}

void replicate_archiver_status(replicate_archiver *ar,
                               replicate_archive_status *out)
{
  memset(out, 0, sizeof *out);
  copy_text(out->url, sizeof out->url, ar->url);
  pthread_mutex_lock(&ar->mu);
  out->stopped = ar->stopped;
  out->epoch = ar->epoch;
  out->uploaded_seq = ar->uploaded.seq;
  out->committed_seq = ar->committed.seq;
  out->lag_frames = ar->committed.seq > ar->uploaded.seq
                        ? ar->committed.seq - ar->uploaded.seq
                        : 0;
  int64_t oldest =
      ar->gap_pending || ar->qn == 0 ? ar->dropped_mono_ns : ar->q[0].mono_ns;
  if (out->lag_frames > 0 && oldest > 0)
    out->lag_seconds = (double)(loom_mono_ns() - oldest) / 1e9;
  out->bases = ar->base_count;
  out->gap = ar->gap_seen || ar->gap_pending;
  out->gap_first = ar->gap_first;
  out->gap_last = ar->gap_last;
  out->backlog_bytes = ar->backlog;
  copy_text(out->last_error, sizeof out->last_error, ar->last_error);
  out->last_error_at_ns = ar->last_error_at_ns;
  out->requests = ar->stats;
  out->idle_wakeups = ar->idle_wakeups;
  pthread_mutex_unlock(&ar->mu);
}

int replicate_archiver_reload_key(replicate_archiver *ar, char *why, size_t why_len)
{
  if (why_len)
    why[0] = '\0';
  if (ar->key_file == NULL)
    return 0; /* a plaintext archive stays one */
  arc_keys k;
  int rc = arc_keys_load(ar->key_file, &k, why, why_len);
  if (rc != 0)
    return rc; /* the old keys stay */
  pthread_mutex_lock(&ar->mu);
  ar->new_keys = k;
  ar->keys_pending = true;
  pthread_cond_broadcast(&ar->cond);
  pthread_mutex_unlock(&ar->mu);
  explicit_bzero(&k, sizeof k);
  return 0;
}
