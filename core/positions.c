/*
 * positions.c: the positions ring, DIR/positions (loom.h:
 * loom_store_checksum_at). Which checksum this directory had at each of
 * its last POSITIONS_SLOTS commits, so that a primary can tell a standby
 * that forked from its history from one that is only behind, also when
 * its replication log no longer reaches back (DESIGN section 3: another
 * checksum at a seq the standby holds is divergence, never a reason to
 * overwrite it).
 *
 * FORMAT (docs/FORMAT.md): slot seq % POSITIONS_SLOTS, 32 bytes at offset
 * 32 * slot: seq (u64), epoch (u64), checksum (u64), XXH3-64 of the first
 * 24 bytes (u64); all little-endian. A slot that fails its checksum or
 * holds another seq says "unknown".
 *
 * WHY NO FSYNC. A slot is written after its commit point, never synced:
 * a crash may lose it, which costs only "unknown" (the primary then treats
 * the standby as before this ring existed). What a slot says is never
 * wrong for a seq at or below the directory's position: slots are written
 * in commit order after their commit is durable, and a seq above the
 * position (a copy of the directory taken while it ran, then rolled back
 * by recovery) is never asked for before it is committed, and so
 * overwritten, again. Every failure here disables the ring; none fails a
 * commit.
 */
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include "store_internal.h"
#include "bytes.h"

#define POSITIONS_SLOTS (UINT64_C(1) << 20) /* 32 MiB at most, sparse */
#define SLOT_BYTES 32u

int positions_open(int dirfd)
{
  return openat(dirfd, "positions", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
}

int positions_open_readonly(int dirfd)
{
  return openat(dirfd, "positions", O_RDONLY | O_CLOEXEC);
}

void positions_note(int fd, const loom_position *p)
{
  if (fd < 0)
    return;
  uint8_t slot[SLOT_BYTES];
  put_le64(slot, p->seq);
  put_le64(slot + 8, p->epoch);
  put_le64(slot + 16, p->checksum);
  put_le64(slot + 24, XXH3_64bits(slot, 24));
  off_t off = (off_t)((p->seq % POSITIONS_SLOTS) * SLOT_BYTES);
  ssize_t n;
  do
    n = pwrite(fd, slot, sizeof slot, off);
  while (n < 0 && errno == EINTR);
}

void positions_forget(int fd)
{
  if (fd >= 0 && ftruncate(fd, 0) != 0)
    return; /* best effort, as the rest: a slot that stays says its seq */
}

int positions_lookup(int fd, uint64_t seq, uint64_t *epoch, uint64_t *checksum)
{
  if (fd < 0)
    return 0;
  uint8_t slot[SLOT_BYTES];
  off_t off = (off_t)((seq % POSITIONS_SLOTS) * SLOT_BYTES);
  ssize_t n;
  do
    n = pread(fd, slot, sizeof slot, off);
  while (n < 0 && errno == EINTR);
  if (n != (ssize_t)sizeof slot || get_le64(slot + 24) != XXH3_64bits(slot, 24) ||
      get_le64(slot) != seq)
    return 0;
  *epoch = get_le64(slot + 8);
  *checksum = get_le64(slot + 16);
  return 1;
}
