/*
 * ship_status.c: what the shipper reports (replicate_shipper_status,
 * replicate_shipper_get_summary: states, lag in frames, bytes and
 * seconds) and the drain before a stop. The design and invariants are at
 * the top of ship.c.
 */
#include "ship_internal.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------------- */
/* Status (GET /v1/status, /metrics) */

/* Lag of a standby at applied seq, under mu. */
static void lag_locked(replicate_shipper *sh, uint64_t applied, int64_t now,
                       uint64_t *frames, uint64_t *bytes, double *seconds)
{
  *frames = 0;
  *bytes = 0;
  *seconds = 0;
  if (applied >= sh->latest.seq)
    return;
  *frames = sh->latest.seq - applied;
  commit_ring *r = &sh->ring;
  int64_t oldest_ns = sh->latest.commit_time_ns;
  if (r->len) {
    commit_entry *first = ship_ring_at(r, 0);
    commit_entry *last = ship_ring_at(r, r->len - 1);
    commit_entry *at = ship_ring_find(r, applied);
    commit_entry *next = ship_ring_find(r, applied + 1);
    if (at)
      *bytes = last->cum_bytes - at->cum_bytes;
    else if (applied < first->seq)
      *bytes = last->cum_bytes - first->cum_bytes + first->bytes;
    if (next)
      oldest_ns = next->commit_time_ns;
    else if (applied < first->seq)
      oldest_ns = first->commit_time_ns;
  }
  if (oldest_ns > 0 && now > oldest_ns)
    *seconds = (double)(now - oldest_ns) / 1e9;
}

void replicate_shipper_status(replicate_shipper *sh,
                              replicate_peer_status *array, size_t cap,
                              size_t *n)
{
  assert(sh && n && (array || cap == 0));
  int64_t now = ship_real_ns();
  pthread_mutex_lock(&sh->mu);
  *n = sh->n;
  for (size_t i = 0; i < sh->n && i < cap; i++) {
    const ship_peer *peer = &sh->peers[i];
    replicate_peer_status *o = &array[i];
    memset(o, 0, sizeof *o);
    snprintf(o->url, sizeof o->url, "%s", peer->url);
    o->state = peer->state;
    o->state_name = replicate_peer_state_name(peer->state);
    o->sent_seq = peer->sent_seq;
    o->verified_seq = peer->verified_seq;
    o->checksum_mismatches = peer->checksum_mismatches;
    o->received_seq = peer->has_position ? peer->received.seq : 0;
    o->applied_seq = peer->has_position ? peer->applied.seq : 0;
    o->received_epoch = peer->has_position ? peer->received.epoch : 0;
    lag_locked(sh, o->applied_seq, now, &o->lag_frames, &o->lag_bytes,
               &o->lag_seconds);
    memcpy(o->last_error, peer->last_error, sizeof o->last_error);
    o->last_error_at_ns = peer->last_error_ns;
    o->last_error_at = peer->last_error_ns / NS_PER_S;
    o->bytes_raw = peer->bytes_raw;
    o->bytes_wire = peer->bytes_wire;
    o->frames_sent = peer->frames_sent;
    o->requests = peer->requests;
    o->heartbeats_sent = peer->heartbeats_sent;
    o->coalesced_sent = peer->coalesced_sent;
    o->base_images_sent = peer->base_images_sent;
    o->failures = peer->failures;
    memcpy(o->errors, peer->errors, sizeof o->errors);
  }
  pthread_mutex_unlock(&sh->mu);
}

void replicate_shipper_get_summary(replicate_shipper *sh,
                                   replicate_shipper_summary *out)
{
  assert(sh && out);
  pthread_mutex_lock(&sh->mu);
  out->epoch = sh->latest.epoch;
  out->latest_seq = sh->latest.seq;
  out->latest_commit_time_ns = sh->latest.commit_time_ns;
  out->fenced = sh->fenced;
  out->sync_degraded = sh->degraded;
  out->sync_degraded_since_ns = sh->degraded ? sh->degraded_since_ns : 0;
  out->sync_count = sh->sync_count;
  out->standby_count = sh->n;
  pthread_mutex_unlock(&sh->mu);
}

/* A drain gives up on an unreachable standby only after this many failed
 * attempts in a row (about 1.5 s of backoff): one reset connection while the
 * primary stops is not a standby that is gone. */
#define DRAIN_UNREACHABLE_ATTEMPTS 4

/* ---------------------------------------------------------------------- */
/* Draining */

/* The standby holds the latest frame. Under mu. */
static bool holds_latest_locked(const replicate_shipper *sh, const ship_peer *peer)
{
  return peer->has_position && peer->on_chain &&
         peer->received.epoch == sh->latest.epoch &&
         peer->received.seq >= sh->latest.seq;
}

/* Waiting longer will not bring it the latest frame: unreachable, stalled
 * or refused (after DRAIN_UNREACHABLE_ATTEMPTS), unauthorized, fenced or
 * diverged. Under mu. */
static bool hopeless_locked(const ship_peer *peer)
{
  return ((peer->state == REPLICATE_PEER_UNREACHABLE ||
           peer->state == REPLICATE_PEER_STALLED ||
           peer->state == REPLICATE_PEER_REFUSED) &&
          peer->unreachable_run >= DRAIN_UNREACHABLE_ATTEMPTS) ||
         peer->state == REPLICATE_PEER_UNAUTHORIZED ||
         peer->state == REPLICATE_PEER_FENCED ||
         peer->state == REPLICATE_PEER_DIVERGED;
}

/* How the drain stands: 1 every standby holds the latest frame, -1 some do
 * not and waiting will not change it, 0 wait on. Under mu. */
static int drain_outcome_locked(const replicate_shipper *sh)
{
  int outcome = 1;
  for (size_t i = 0; i < sh->n; i++) {
    const ship_peer *peer = &sh->peers[i];
    if (holds_latest_locked(sh, peer))
      continue;
    if (!hopeless_locked(peer))
      return 0;
    outcome = -1;
  }
  return outcome;
}

bool replicate_shipper_drain(replicate_shipper *sh, double timeout_seconds)
{
  assert(sh);
  struct timespec deadline;
  ship_deadline_after(&deadline, timeout_seconds > 0 ? timeout_seconds : 0);
  pthread_mutex_lock(&sh->mu);
  int outcome = drain_outcome_locked(sh);
  while (outcome == 0 && !sh->fenced &&
         pthread_cond_timedwait(&sh->cond, &sh->mu, &deadline) != ETIMEDOUT)
    outcome = drain_outcome_locked(sh);
  bool done = drain_outcome_locked(sh) == 1 && !sh->fenced;
  pthread_mutex_unlock(&sh->mu);
  return done;
}
