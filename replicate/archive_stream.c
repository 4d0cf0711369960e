/*
 * archive_stream.c: a restore's base read ahead (archive_internal.h
 * arc_ahead_*): a thread opens the base on a store of its own and reads
 * its pieces (arc_pieces: ranged GETs, hashed and decrypted as they come)
 * from the moment the restore picked it: while the restore reads its
 * segments on the archive's store, then while it decompresses the piece
 * it holds and the importer writes, up to ARC_AHEAD_DEPTH pieces ahead.
 * The store's time overlaps the rest; the memory is the pieces in the
 * queue, the one being read and the one held.
 *
 * The thread writes no field of the archive (it reads its keys and id,
 * set before): its errors are kept here and handed over with the header
 * or the piece that failed. Stopping it cancels its store's request in
 * progress (objstore_cancel), so a restore that fails elsewhere does not
 * wait for a slow store.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "archive_internal.h"

struct arc_ahead {
  replicate_archive *a;
  char key[ARC_KEY_MAX];
  uint64_t size;
  objstore *store;   /* the thread's own */
  arc_pieces *src;
  bool synced;       /* mu and cv made */
  bool threaded;     /* the thread runs */
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool opened;       /* the open's outcome is known */
  int open_rc;
  arc_header h;
  replicate_buf q[ARC_AHEAD_DEPTH]; /* read, not yet taken */
  size_t head, count;
  bool done, stop; /* done: the end, or rc */
  int rc;
  char error[512]; /* the store could not be opened */
};

/* The open, on the thread's own store. */
static int ahead_open(arc_ahead *ah, arc_header *h)
{
  objstore *store = NULL;
  int rc = arc_store_open_another(ah->a, &store);
  if (rc != 0) {
    snprintf(ah->error, sizeof ah->error, "object %s: %s", ah->key,
             objstore_open_error());
    return rc;
  }
  if (ah->synced)
    pthread_mutex_lock(&ah->mu);
  ah->store = store; /* arc_ahead_stop may cancel it from here on */
  bool stop = ah->stop;
  if (ah->synced)
    pthread_mutex_unlock(&ah->mu);
  if (stop)
    return REPLICATE_ESTORE;
  return arc_pieces_open(ah->a, store, ah->key, ah->size, ARC_PIECE_BYTES, h,
                         &ah->src);
}

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
  arc_ahead *ah = arg;
  arc_header h;
  int rc = ahead_open(ah, &h);
  pthread_mutex_lock(&ah->mu);
  ah->opened = true;
  ah->open_rc = rc;
  ah->h = h;
  ah->done = rc != 0;
  pthread_cond_broadcast(&ah->cv);
  pthread_mutex_unlock(&ah->mu);
  while (rc == 0 && ahead_one(ah))
    ;
  return NULL;
}

int arc_ahead_begin(replicate_archive *a, const char *key, uint64_t size,
                    arc_ahead **out)
{
  arc_ahead *ah = calloc(1, sizeof *ah);
  *out = ah;
  if (ah == NULL)
    return ENOMEM;
  ah->a = a;
  ah->size = size;
  snprintf(ah->key, sizeof ah->key, "%s", key);
  if (pthread_mutex_init(&ah->mu, NULL) != 0)
    return 0; /* without the thread: opened and read when asked */
  ah->synced = pthread_cond_init(&ah->cv, NULL) == 0;
  if (!ah->synced)
    pthread_mutex_destroy(&ah->mu);
  else
    ah->threaded = pthread_create(&ah->thread, NULL, ahead_run, ah) == 0;
  return 0;
}

int arc_ahead_header(arc_ahead *ah, arc_header *h)
{
  if (!ah->threaded) {
    if (!ah->opened) {
      ah->open_rc = ahead_open(ah, &ah->h);
      ah->opened = true;
    }
    *h = ah->h;
    return ah->open_rc;
  }
  pthread_mutex_lock(&ah->mu);
  while (!ah->opened)
    pthread_cond_wait(&ah->cv, &ah->mu);
  int rc = ah->open_rc;
  *h = ah->h;
  pthread_mutex_unlock(&ah->mu);
  return rc;
}

int arc_ahead_next(arc_ahead *ah, replicate_buf *out)
{
  if (!ah->threaded)
    return ah->src ? arc_pieces_next(ah->src, out) : ah->open_rc;
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
    rc = ah->open_rc ? ah->open_rc : ah->rc; /* 0: the end */
  }
  pthread_mutex_unlock(&ah->mu);
  return rc;
}

const char *arc_ahead_error(const arc_ahead *ah)
{
  const char *e = ah->src ? arc_pieces_error(ah->src) : "";
  return e[0] ? e : ah->error;
}

void arc_ahead_stop(arc_ahead *ah)
{
  if (ah == NULL)
    return;
  if (ah->threaded) {
    pthread_mutex_lock(&ah->mu);
    ah->stop = true;
    if (!ah->done && ah->store != NULL)
      objstore_cancel(ah->store); /* a request in progress ends now */
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
  objstore_close(ah->store);
  free(ah);
}
