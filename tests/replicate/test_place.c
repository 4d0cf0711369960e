/*
 * test_place.c: the rules that keep a node from moving backwards or
 * sideways (replicate/place.c, DESIGN section 3), one case per rule, and
 * the lineage they read (core/history.c, and a store's meta).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "replicate_testlib.h"

static void test_done(char *dir) { test_rmtree(dir); }

static loom_history history_of(uint8_t b)
{
  loom_history h;
  memset(h.id, b, sizeof h.id);
  return h;
}

static loom_position at(uint64_t epoch, uint64_t seq, uint64_t checksum)
{
  return (loom_position){.epoch = epoch, .seq = seq, .checksum = checksum,
                         .pages = 4};
}

static replicate_frame_info frame(uint8_t history, uint64_t epoch,
                                  uint64_t before_seq, uint64_t before_sum,
                                  uint64_t after_seq, uint64_t after_sum)
{
  replicate_frame_info f = {.kind = REPLICATE_KIND_COMMIT, .epoch = epoch,
                            .before = {.epoch = epoch, .seq = before_seq,
                                       .checksum = before_sum, .pages = 4},
                            .after = {.epoch = epoch, .seq = after_seq,
                                      .checksum = after_sum, .pages = 4}};
  f.history = history_of(history);
  return f;
}

static void test_frame_rules(void **state)
{
  (void)state;
  loom_history ours = history_of(1);
  loom_position pos = at(2, 100, 0xa100);
  replicate_frame_info f;
  /* The next frame of our history applies; the same again is a duplicate. */
  f = frame(1, 2, 100, 0xa100, 101, 0xa101);
  assert_int_equal(replicate_place_frame(&ours, &pos, &f), 0);
  f = frame(1, 2, 99, 0xa099, 100, 0xa100);
  assert_int_equal(replicate_place_frame(&ours, &pos, &f), REPLICATE_EDUPLICATE);
  f = frame(1, 2, 90, 0xa090, 91, 0xa091);
  assert_int_equal(replicate_place_frame(&ours, &pos, &f), REPLICATE_EDUPLICATE);
  /* P1: another history, frame or heartbeat. */
  f = frame(7, 2, 100, 0xa100, 101, 0xa101);
  assert_int_equal(replicate_place_frame(&ours, &pos, &f), REPLICATE_EHISTORY);
  f.kind = REPLICATE_KIND_HEARTBEAT;
  assert_int_equal(replicate_place_frame(&ours, &pos, &f), REPLICATE_EHISTORY);
  /* P2: an older epoch. */
  f = frame(1, 1, 100, 0xa100, 101, 0xa101);
  assert_int_equal(replicate_place_frame(&ours, &pos, &f), REPLICATE_ESTALE_EPOCH);
  /* P4: another checksum at a seq we hold (two copies of one primary). */
  f = frame(1, 2, 99, 0xa099, 100, 0xbbbb);
  assert_int_equal(replicate_place_frame(&ours, &pos, &f), REPLICATE_EFORK);
  f = frame(1, 2, 100, 0xbbbb, 101, 0xa101);
  assert_int_equal(replicate_place_frame(&ours, &pos, &f), REPLICATE_EFORK);
  /* A gap, and a merged frame whose answer was lost (an overlap): resend. */
  f = frame(1, 2, 102, 0xa102, 103, 0xa103);
  assert_int_equal(replicate_place_frame(&ours, &pos, &f), REPLICATE_EPOSITION);
  f = frame(1, 2, 99, 0xa099, 110, 0xa110);
  f.flags = REPLICATE_FRAME_COALESCED;
  assert_int_equal(replicate_place_frame(&ours, &pos, &f), REPLICATE_EPOSITION);
  /* P3: a newer epoch that began before our seq; at our seq it applies. */
  f = frame(1, 3, 95, 0xa095, 96, 0xc096);
  assert_int_equal(replicate_place_frame(&ours, &pos, &f), REPLICATE_EPAST_BRANCH);
  f = frame(1, 3, 100, 0xa100, 101, 0xc101);
  assert_int_equal(replicate_place_frame(&ours, &pos, &f), 0);
}

/* A heartbeat says where its primary is: behind us, on another checksum at
 * our seq, or branched off before our seq, it is refused, so the standby
 * shows the divergence too (not only the primary). */
static void test_heartbeat_rules(void **state)
{
  (void)state;
  loom_history ours = history_of(1);
  loom_position pos = at(2, 100, 0xa100);
  replicate_frame_info hb = {.kind = REPLICATE_KIND_HEARTBEAT, .epoch = 2,
                             .history = history_of(1),
                             .after = {.epoch = 2, .seq = 120,
                                       .checksum = 0xa120, .pages = 4}};
  assert_int_equal(replicate_place_frame(&ours, &pos, &hb), 0);
  hb.after = (loom_position){.epoch = 2, .seq = 100, .checksum = 0xa100, .pages = 4};
  assert_int_equal(replicate_place_frame(&ours, &pos, &hb), 0);
  hb.after = (loom_position){.epoch = 2, .seq = 100, .checksum = 0xbbbb, .pages = 4};
  assert_int_equal(replicate_place_frame(&ours, &pos, &hb), REPLICATE_EFORK);
  hb.after = (loom_position){.epoch = 2, .seq = 60, .checksum = 0xa060, .pages = 4};
  assert_int_equal(replicate_place_frame(&ours, &pos, &hb), REPLICATE_EBEHIND);
  hb.epoch = 3;
  assert_int_equal(replicate_place_frame(&ours, &pos, &hb), REPLICATE_EPAST_BRANCH);
  hb.after = (loom_position){.epoch = 3, .seq = 100, .checksum = 0xc100, .pages = 4};
  assert_int_equal(replicate_place_frame(&ours, &pos, &hb), 0);
  hb.epoch = 1;
  assert_int_equal(replicate_place_frame(&ours, &pos, &hb), REPLICATE_ESTALE_EPOCH);
  /* A standby that holds nothing takes any heartbeat. */
  loom_position empty = at(1, 0, 0);
  hb.epoch = 1;
  assert_int_equal(replicate_place_frame(&ours, &empty, &hb), 0);
}

static void test_frame_holds_nothing(void **state)
{
  (void)state;
  loom_history none = {{0}}, ours = history_of(1);
  loom_position empty = at(1, 0, 0);
  replicate_frame_info f = frame(7, 1, 0, 0, 1, 0x1);
  /* A new directory, or one still at seq 0, takes any history. */
  assert_int_equal(replicate_place_frame(&none, &empty, &f), 0);
  assert_int_equal(replicate_place_frame(&ours, &empty, &f), 0);
  loom_position pos = at(1, 5, 0x5);
  assert_int_equal(replicate_place_frame(&ours, &pos, &f), REPLICATE_EHISTORY);
  /* A directory from before history ids (none, at seq 100) holds commits:
   * no base image below or beside them, whatever history it carries, and
   * no primary behind it sends one. */
  loom_position legacy = at(1, 100, 0xa100);
  loom_lineage other = {.history = history_of(7)};
  loom_position b = at(1, 0, 0);
  assert_int_equal(replicate_place_base(&none, &legacy, &b, &other), REPLICATE_EBEHIND);
  b = at(1, 50, 0x50);
  assert_int_equal(replicate_place_base(&none, &legacy, &b, &other), REPLICATE_EBEHIND);
  b = at(1, 100, 0xbbbb);
  assert_int_equal(replicate_place_base(&none, &legacy, &b, &other), REPLICATE_EFORK);
  b = at(1, 150, 0x150);
  assert_int_equal(replicate_place_base(&none, &legacy, &b, &other), 0);
  loom_lineage fresh = {.history = history_of(7)};
  loom_position latest = at(1, 0, 0);
  assert_int_equal(replicate_place_peer(&fresh, &latest, &none, &legacy),
                   REPLICATE_EBEHIND);
  /* Its next frame, continuing its position, is taken. */
  f = frame(7, 1, 100, 0xa100, 101, 0xa101);
  assert_int_equal(replicate_place_frame(&none, &legacy, &f), 0);
}

static void test_base_rules(void **state)
{
  (void)state;
  loom_history ours = history_of(1);
  loom_position pos = at(2, 100, 0xa100);
  loom_lineage lin = {.history = history_of(1), .branch_count = 1,
                      .branches = {{2, 40, 0xa040}}};
  loom_position b;
  b = at(2, 150, 0xa150);
  assert_int_equal(replicate_place_base(&ours, &pos, &b, &lin), 0);
  /* An empty or older primary would wipe what we hold. */
  b = at(2, 0, 0);
  assert_int_equal(replicate_place_base(&ours, &pos, &b, &lin), REPLICATE_EBEHIND);
  b = at(2, 60, 0xa060);
  assert_int_equal(replicate_place_base(&ours, &pos, &b, &lin), REPLICATE_EBEHIND);
  b = at(2, 100, 0xbbbb);
  assert_int_equal(replicate_place_base(&ours, &pos, &b, &lin), REPLICATE_EFORK);
  b = at(2, 100, 0xa100);
  assert_int_equal(replicate_place_base(&ours, &pos, &b, &lin), REPLICATE_EDUPLICATE);
  b = at(1, 150, 0xa150);
  assert_int_equal(replicate_place_base(&ours, &pos, &b, &lin), REPLICATE_ESTALE_EPOCH);
  /* Another history, whatever its position. */
  loom_lineage other = lin;
  other.history = history_of(9);
  b = at(5, 500, 0x500);
  assert_int_equal(replicate_place_base(&ours, &pos, &b, &other), REPLICATE_EHISTORY);
  /* A newer epoch that branched off before our seq (we went past it). */
  lin.branch_count = 2;
  lin.branches[1] = (loom_branch){3, 90, 0xa090};
  b = at(3, 150, 0xc150);
  assert_int_equal(replicate_place_base(&ours, &pos, &b, &lin),
                   REPLICATE_EPAST_BRANCH);
  lin.branches[1] = (loom_branch){3, 100, 0xdddd};
  assert_int_equal(replicate_place_base(&ours, &pos, &b, &lin), REPLICATE_EFORK);
  lin.branches[1] = (loom_branch){3, 100, 0xa100};
  assert_int_equal(replicate_place_base(&ours, &pos, &b, &lin), 0);
  /* A standby that holds nothing takes any base. */
  loom_history none = {{0}};
  loom_position empty = at(1, 0, 0);
  assert_int_equal(replicate_place_base(&none, &empty, &b, &other), 0);
}

/* P5: a cluster member's rewind, and what it discards. */
static void test_rewind_rules(void **state)
{
  (void)state;
  loom_history ours = history_of(1);
  loom_position pos = at(2, 100, 0xa100);
  loom_lineage lin = {.history = history_of(1), .branch_count = 2,
                      .branches = {{2, 40, 0xa040}, {3, 90, 0xa090}}};
  loom_position b = at(3, 95, 0xc095);
  int place = replicate_place_base(&ours, &pos, &b, &lin);
  assert_int_equal(place, REPLICATE_EPAST_BRANCH);
  assert_true(replicate_place_rewind(place, &ours, &pos, 3, &b, &lin));
  assert_int_equal(replicate_rewound_commits(&pos, &b, &lin), 10); /* 91-100 */
  /* Not allowed: no permission, a permission for a newer epoch, input not
   * newer than ours, another history, a placement that is no divergence. */
  assert_false(replicate_place_rewind(place, &ours, &pos, 0, &b, &lin));
  assert_false(replicate_place_rewind(place, &ours, &pos, 4, &b, &lin));
  loom_position same_epoch = at(2, 95, 0xc095);
  assert_false(replicate_place_rewind(REPLICATE_EBEHIND, &ours, &pos, 2, &same_epoch, &lin));
  loom_lineage other = lin;
  other.history = history_of(9);
  assert_false(replicate_place_rewind(REPLICATE_EHISTORY, &ours, &pos, 3, &b, &other));
  assert_false(replicate_place_rewind(place, &ours, &pos, 3, &b, &other));
  assert_false(replicate_place_rewind(0, &ours, &pos, 3, &b, &lin));
  assert_false(replicate_place_rewind(REPLICATE_ESTALE_EPOCH, &ours, &pos, 3, &b, &lin));
  /* EFORK and EBEHIND are rewound too; below the branch, what lies past
   * the target goes. */
  assert_true(replicate_place_rewind(REPLICATE_EFORK, &ours, &pos, 3, &b, &lin));
  b = at(3, 80, 0xc080);
  assert_true(replicate_place_rewind(REPLICATE_EBEHIND, &ours, &pos, 3, &b, &lin));
  assert_int_equal(replicate_rewound_commits(&pos, &b, &lin), 20);
}

static void test_peer_rules(void **state)
{
  (void)state;
  loom_lineage ours = {.history = history_of(1), .branch_count = 1,
                       .branches = {{3, 90, 0xa090}}};
  loom_position latest = at(3, 120, 0xc120);
  loom_history same = history_of(1), other = history_of(2);
  loom_position p;
  p = at(3, 110, 0xc110);
  assert_int_equal(replicate_place_peer(&ours, &latest, &same, &p), 0);
  p = at(3, 120, 0xc120);
  assert_int_equal(replicate_place_peer(&ours, &latest, &same, &p),
                   REPLICATE_EDUPLICATE);
  p = at(3, 120, 0xeeee);
  assert_int_equal(replicate_place_peer(&ours, &latest, &same, &p), REPLICATE_EFORK);
  /* A standby ahead of this primary: its directory is older. */
  p = at(3, 200, 0xc200);
  assert_int_equal(replicate_place_peer(&ours, &latest, &same, &p), REPLICATE_EBEHIND);
  assert_int_equal(replicate_place_peer(&ours, &latest, NULL, &p), REPLICATE_EBEHIND);
  p = at(3, 110, 0xc110);
  assert_int_equal(replicate_place_peer(&ours, &latest, &other, &p), REPLICATE_EHISTORY);
  /* An older epoch: fine up to our branch point, diverged past it. */
  p = at(2, 80, 0xa080);
  assert_int_equal(replicate_place_peer(&ours, &latest, &same, &p), 0);
  p = at(2, 95, 0xb095);
  assert_int_equal(replicate_place_peer(&ours, &latest, &same, &p),
                   REPLICATE_EPAST_BRANCH);
  /* An empty standby, of no history yet. */
  loom_history none = {{0}};
  p = at(1, 0, 0);
  assert_int_equal(replicate_place_peer(&ours, &latest, &none, &p), 0);
}

/* The lineage kept in a store's meta: a new history for a primary, a
 * branch per promotion, adoption only of what a store may take. */
static void test_store_lineage(void **state)
{
  (void)state;
  char *dir = test_tmpdir("place");
  loom_store *s;
  assert_int_equal(loom_store_open(dir, LOOM_CREATE, NULL, &s), 0);
  loom_lineage l;
  loom_store_lineage(s, &l);
  assert_true(loom_history_is_none(&l.history));
  assert_int_equal(loom_store_ensure_history(s), 0);
  loom_store_lineage(s, &l);
  assert_false(loom_history_is_none(&l.history));
  loom_history first = l.history;
  /* Promotion records where epoch 2 began. */
  assert_int_equal(loom_store_set_epoch(s, 2), 0);
  loom_store_lineage(s, &l);
  assert_true(loom_history_equal(&l.history, &first));
  assert_int_equal(l.branch_count, 1);
  assert_int_equal(l.branches[0].epoch, 2);
  assert_int_equal(l.branches[0].seq, 0);
  assert_int_equal(loom_store_close(s), 0);
  /* Durable across reopen, and shown by inspect. */
  loom_position pos;
  loom_lineage seen;
  assert_int_equal(loom_inspect_lineage(dir, &pos, &seen), 0);
  assert_memory_equal(&seen, &l, sizeof l);
  assert_int_equal(pos.epoch, 2);
  /* At seq 0 a store may take another history; the hex form round-trips. */
  assert_int_equal(loom_store_open(dir, 0, NULL, &s), 0);
  loom_lineage other = {.history = history_of(0x5a)};
  assert_int_equal(loom_store_adopt_lineage(s, &other), 0);
  loom_store_lineage(s, &l);
  char hex[33];
  loom_history_hex(&l.history, hex);
  assert_string_equal(hex, "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a");
  loom_history parsed;
  assert_int_equal(loom_history_parse(hex, &parsed), 0);
  assert_true(loom_history_equal(&parsed, &other.history));
  assert_int_equal(loom_history_parse("5a5a", &parsed), LOOM_EINVAL);
  assert_int_equal(loom_store_close(s), 0);
  test_done(dir);
}

/* The positions ring: the checksum of each commit, looked up by seq. */
static void test_positions_ring(void **state)
{
  (void)state;
  char *dir = test_tmpdir("ring");
  loom_store *s;
  assert_int_equal(loom_store_open(dir, LOOM_CREATE, NULL, &s), 0);
  uint8_t *page = calloc(1, LOOM_PAGE_SIZE);
  assert_non_null(page);
  uint64_t sums[4];
  for (uint64_t seq = 1; seq <= 3; seq++) {
    memset(page, (int)seq, LOOM_PAGE_SIZE);
    loom_position before;
    loom_store_position(s, &before);
    loom_patch_header h = {.before = before,
                           .after = {.epoch = 1, .seq = seq, .pages = 1,
                                     .checksum = loom_page_hash(0, page)},
                           .page_count = 1, .flags = LOOM_PATCH_BASE};
    loom_patch *p;
    assert_int_equal(loom_store_patch_begin(s, &h, &p), 0);
    assert_int_equal(loom_patch_add(p, 0, page), 0);
    assert_int_equal(loom_patch_commit(p), 0);
    sums[seq] = h.after.checksum;
  }
  uint64_t epoch, sum;
  for (uint64_t seq = 1; seq <= 3; seq++) {
    assert_int_equal(loom_store_checksum_at(s, seq, &epoch, &sum), 1);
    assert_int_equal(sum, sums[seq]);
    assert_int_equal(epoch, 1);
  }
  assert_int_equal(loom_store_checksum_at(s, 4, &epoch, &sum), 0);
  assert_int_equal(loom_store_checksum_at(s, (UINT64_C(1) << 20) + 2, &epoch, &sum), 0);
  assert_int_equal(loom_store_close(s), 0);
  /* Kept across reopen; a damaged slot is "unknown", never a wrong value. */
  char path[256];
  snprintf(path, sizeof path, "%s/positions", dir);
  FILE *f = fopen(path, "r+b");
  assert_non_null(f);
  assert_int_equal(fseek(f, 2 * 32 + 17, SEEK_SET), 0);
  fputc(0x55, f);
  fclose(f);
  assert_int_equal(loom_store_open(dir, 0, NULL, &s), 0);
  assert_int_equal(loom_store_checksum_at(s, 1, &epoch, &sum), 1);
  assert_int_equal(sum, sums[1]);
  assert_int_equal(loom_store_checksum_at(s, 2, &epoch, &sum), 0);
  assert_int_equal(loom_store_close(s), 0);
  free(page);
  test_done(dir);
}

/* The branch table keeps the newest LOOM_MAX_BRANCHES epochs. */
static void test_branch_table_bounded(void **state)
{
  (void)state;
  char *dir = test_tmpdir("branches");
  loom_store *s;
  assert_int_equal(loom_store_open(dir, LOOM_CREATE, NULL, &s), 0);
  for (uint64_t e = 2; e <= 2 + LOOM_MAX_BRANCHES + 3; e++)
    assert_int_equal(loom_store_set_epoch(s, e), 0);
  loom_lineage l;
  loom_store_lineage(s, &l);
  assert_int_equal(l.branch_count, LOOM_MAX_BRANCHES);
  assert_int_equal(l.branches[LOOM_MAX_BRANCHES - 1].epoch, 2 + LOOM_MAX_BRANCHES + 3);
  loom_branch b;
  assert_int_equal(loom_lineage_branch_after(&l, 2 + LOOM_MAX_BRANCHES + 3, &b), 0);
  assert_int_equal(loom_lineage_branch_after(&l, 8, &b), 1);
  assert_int_equal(b.epoch, 9);
  assert_int_equal(loom_store_close(s), 0);
  test_done(dir);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_frame_rules),
      cmocka_unit_test(test_heartbeat_rules),
      cmocka_unit_test(test_frame_holds_nothing),
      cmocka_unit_test(test_base_rules),
      cmocka_unit_test(test_rewind_rules),
      cmocka_unit_test(test_peer_rules),
      cmocka_unit_test(test_store_lineage),
      cmocka_unit_test(test_positions_ring),
      cmocka_unit_test(test_branch_table_bounded),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
