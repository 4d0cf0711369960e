/*
 * place.c: placing input against a node's position (replicate.h, "Placing
 * input against a position"). Pure functions: no I/O, no locks.
 *
 * THE RULES (DESIGN section 3), in the order they are checked
 *
 *   P1. History: input of another history is refused, unless the node
 *       holds nothing (seq 0). A node at seq > 0 with no history id (a
 *       directory written before history ids, until it takes input) cannot
 *       be judged by history: P2-P4 still protect what it holds.
 *   P2. Epoch: input of an older epoch comes from a fenced sender.
 *   P3. Branch: input of a newer epoch may only continue from a position
 *       at or before the point where that epoch (or the first epoch newer
 *       than the node's) branched off; a node holding commits of its older
 *       epoch past that point has diverged.
 *   P4. Seq: a seq the node holds must carry the node's checksum; input
 *       that ends below the node's seq is old (a duplicate for frames, a
 *       refusal for base images, which would replace the image); input
 *       that begins past it leaves a gap.
 *   P5. Rewind (a cluster member only, DESIGN section 3's one exception):
 *       input of the node's own history at the allowed epoch or newer, and
 *       newer than the node's, may replace what lies past its branch point
 *       (P3's EPAST_BRANCH, P4's EFORK or EBEHIND); never another history.
 */
#include <stdbool.h>

#include "replicate.h"

int replicate_is_divergence(int rc)
{
  return rc == REPLICATE_EHISTORY || rc == REPLICATE_EBEHIND ||
         rc == REPLICATE_EFORK || rc == REPLICATE_EPAST_BRANCH;
}

static bool holds_nothing(const loom_position *pos)
{
  return pos->seq == 0;
}

/* P1: NULL or none on either side is "unknown", which refuses nothing. */
static int check_history(const loom_history *ours, const loom_position *pos,
                         const loom_history *theirs)
{
  if (!theirs || !ours || holds_nothing(pos) || loom_history_is_none(ours) ||
      loom_history_is_none(theirs) || loom_history_equal(ours, theirs))
    return 0;
  return REPLICATE_EHISTORY;
}

/* A heartbeat names its primary's latest position: a primary never ships
 * past what it committed, so one that is behind what this node holds lost
 * commits (an older directory: P4), or branched off before them (P3). */
static int place_heartbeat(const loom_history *ours, const loom_position *pos,
                           const replicate_frame_info *frame)
{
  const loom_position *latest = &frame->after;
  (void)ours;
  if (holds_nothing(pos) || latest->seq > pos->seq)
    return 0;
  if (frame->epoch > pos->epoch)
    return latest->seq < pos->seq ? REPLICATE_EPAST_BRANCH : 0;
  if (latest->seq < pos->seq)
    return REPLICATE_EBEHIND;
  return latest->checksum == pos->checksum ? 0 : REPLICATE_EFORK;
}

int replicate_place_frame(const loom_history *ours, const loom_position *pos,
                          const replicate_frame_info *frame)
{
  int rc = check_history(ours, pos, &frame->history);
  if (rc)
    return rc;
  if (frame->epoch < pos->epoch)                                   /* P2 */
    return REPLICATE_ESTALE_EPOCH;
  if (frame->kind == REPLICATE_KIND_HEARTBEAT)
    return place_heartbeat(ours, pos, frame);
  const loom_position *b = &frame->before, *a = &frame->after;
  if (frame->epoch > pos->epoch && b->seq < pos->seq &&
      !holds_nothing(pos))                                         /* P3 */
    return REPLICATE_EPAST_BRANCH; /* a frame never spans an epoch change */
  if (a->seq == pos->seq)                                          /* P4 */
    return a->checksum == pos->checksum ? REPLICATE_EDUPLICATE : REPLICATE_EFORK;
  if (b->seq == pos->seq)
    return loom_position_same(b, pos) ? 0 : REPLICATE_EFORK;
  if (a->seq < pos->seq)
    return REPLICATE_EDUPLICATE;
  return REPLICATE_EPOSITION; /* a gap, or an overlap from behind */
}

/* P3 for a position against a lineage's newer epochs. A full table whose
 * oldest branch is newer than the one after pos's epoch has dropped the
 * branch that matters: unknown, refused. */
static int check_branch(const loom_position *pos, const loom_lineage *lineage,
                        uint64_t newer_epoch)
{
  loom_branch branch;
  if (newer_epoch <= pos->epoch || pos->seq == 0)
    return 0;
  if (lineage->branch_count == LOOM_MAX_BRANCHES &&
      lineage->branches[0].epoch > pos->epoch + 1)
    return REPLICATE_EPAST_BRANCH;
  if (!loom_lineage_branch_after(lineage, pos->epoch, &branch))
    return 0;
  if (pos->seq > branch.seq)
    return REPLICATE_EPAST_BRANCH;
  if (pos->seq == branch.seq && pos->checksum != branch.checksum)
    return REPLICATE_EFORK;
  return 0;
}

int replicate_place_base(const loom_history *ours, const loom_position *pos,
                         const loom_position *base, const loom_lineage *lineage)
{
  if (holds_nothing(pos))
    return 0;
  int rc = check_history(ours, pos, &lineage->history);
  if (rc)
    return rc;
  if (base->epoch < pos->epoch)
    return REPLICATE_ESTALE_EPOCH;
  rc = check_branch(pos, lineage, base->epoch);
  if (rc)
    return rc;
  if (base->seq < pos->seq)
    return REPLICATE_EBEHIND;
  if (base->seq == pos->seq)
    return base->checksum == pos->checksum ? REPLICATE_EDUPLICATE
                                           : REPLICATE_EFORK;
  return 0;
}

int replicate_place_peer(const loom_lineage *ours, const loom_position *latest,
                         const loom_history *peer_history,
                         const loom_position *peer)
{
  if (holds_nothing(peer))
    return latest->seq == 0 && peer->checksum == latest->checksum
               ? REPLICATE_EDUPLICATE : 0;
  int rc = check_history(&ours->history, peer, peer_history);
  if (rc)
    return rc;
  rc = check_branch(peer, ours, latest->epoch);
  if (rc)
    return rc;
  if (peer->seq > latest->seq)
    return REPLICATE_EBEHIND;
  if (peer->seq == latest->seq)
    return loom_position_same(peer, latest) ? REPLICATE_EDUPLICATE
                                            : REPLICATE_EFORK;
  return 0;
}

int replicate_place_rewind(int place, const loom_history *ours,
                           const loom_position *pos, uint64_t allowed_epoch,
                           const loom_position *target, const loom_lineage *lineage)
{
  return (place == REPLICATE_EPAST_BRANCH || place == REPLICATE_EFORK ||
          place == REPLICATE_EBEHIND) &&
         allowed_epoch != 0 && target->epoch >= allowed_epoch &&
         target->epoch > pos->epoch && !loom_history_is_none(ours) &&
         loom_history_equal(ours, &lineage->history);
}

uint64_t replicate_rewound_commits(const loom_position *pos, const loom_position *target,
                                   const loom_lineage *lineage)
{
  loom_branch branch;
  uint64_t keep = target->seq;
  if (loom_lineage_branch_after(lineage, pos->epoch, &branch) && branch.seq < keep)
    keep = branch.seq;
  return pos->seq > keep ? pos->seq - keep : 0;
}
