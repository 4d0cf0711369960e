/*
 * archive_stream.c: a restore's base read ahead (archive_internal.h
 * arc_ahead_*): a thread reads the base's next pieces (arc_pieces: ranged
 * GETs, hashed and decrypted as they come) while the restore decompresses
 * the piece it holds and the importer writes, up to ARC_AHEAD_DEPTH
 * pieces ahead. The store's time overlaps the rest; the memory is the
 * pieces in the queue, the one being read and the one held.
 *
 * The thread is the only user of the archive's store while it runs (the
 * restore read every segment before it started it), and it writes no
 * field of the archive: its errors are kept here and handed over with the
 * piece that failed.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "archive_internal.h"

struct arc_ahead {
  arc_pieces *src;
  bool synced;   /* mu and cv made */
  bool threaded; /* the thread runs */
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  replicate_buf q[ARC_AHEAD_DEPTH]; /* read, not yet taken */
  size_t head, count;
  bool done, stop; /* done: the end, or rc */
  int rc;
};

/* One piece read and queued; false at the end, an error or a stop. */
static bool ahead_one(arc_ahead *ah)
{
  pthread_mutex_lock(&ah->mu);
  while (ah->count == ARC_AHEAD_DEPTH && !ah->stop)
    pthread_cond_wait(&ah->cv, &ah->mu);
  bool stop = ah->stop;
  pthread_mutex_unlock(&ah->mu);
  if (stop)
    return false;
  replicate_buf b = {0};
  int rc = arc_pieces_next(ah->src, &b);
  pthread_mutex_lock(&ah->mu);
  bool more = rc == 0 && b.len > 0;
  if (more) {
    ah->q[(ah->head + ah->count) % ARC_AHEAD_DEPTH] = b;
    ah->count++;
  } else {
    ah->rc = rc;
    ah->done = true;
  }
  pthread_cond_broadcast(&ah->cv);
  pthread_mutex_unlock(&ah->mu);
  if (!more)
    replicate_buf_free(&b);
  return more;
}

static void *ahead_run(void *arg)
{
  while (ahead_one(arg))
    ;
  return NULL;
}

int arc_ahead_start(arc_pieces *src, arc_ahead **out)
{
  arc_ahead *ah = calloc(1, sizeof *ah);
  *out = ah;
  if (ah == NULL) {
    arc_pieces_close(src);
    return ENOMEM;
  }
  ah->src = src;
  if (pthread_mutex_init(&ah->mu, NULL) != 0)
    return 0; /* without the thread: read when asked (arc_ahead_next) */
  ah->synced = pthread_cond_init(&ah->cv, NULL) == 0;
  if (!ah->synced)
    pthread_mutex_destroy(&ah->mu);
  else
    ah->threaded = pthread_create(&ah->thread, NULL, ahead_run, ah) == 0;
  return 0;
}

int arc_ahead_next(arc_ahead *ah, replicate_buf *out)
{
  if (!ah->threaded)
    return arc_pieces_next(ah->src, out);
  replicate_buf_free(out);
  pthread_mutex_lock(&ah->mu);
  while (ah->count == 0 && !ah->done)
    pthread_cond_wait(&ah->cv, &ah->mu);
  int rc = 0;
  if (ah->count > 0) {
    *out = ah->q[ah->head];
    ah->q[ah->head] = (replicate_buf){0};
    ah->head = (ah->head + 1) % ARC_AHEAD_DEPTH;
    ah->count--;
    pthread_cond_broadcast(&ah->cv);
  } else {
    rc = ah->rc; /* 0: the end (out stays empty) */
  }
  pthread_mutex_unlock(&ah->mu);
  return rc;
}

const char *arc_ahead_error(const arc_ahead *ah)
{
  return arc_pieces_error(ah->src);
}

void arc_ahead_stop(arc_ahead *ah)
{
  if (ah == NULL)
    return;
  if (ah->threaded) {
    pthread_mutex_lock(&ah->mu);
    ah->stop = true;
    pthread_cond_broadcast(&ah->cv);
    pthread_mutex_unlock(&ah->mu);
    pthread_join(ah->thread, NULL);
  }
  if (ah->synced) {
    pthread_cond_destroy(&ah->cv);
    pthread_mutex_destroy(&ah->mu);
  }
  for (size_t i = 0; i < ARC_AHEAD_DEPTH; i++)
    replicate_buf_free(&ah->q[i]);
  arc_pieces_close(ah->src);
  free(ah);
}
