/*
 * big_arena_test.c: a 4 GiB arena with every other image page dirtied
 * (131,072 scattered dirty pages, past vm.max_map_count's 65,530 mappings)
 * must save correctly, with each tracker. Suite: slow.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <time.h>

#include <cmocka.h>

#include "testutil.h"

#define ARENA_PAGES (UINT64_C(4) << 30) / PAGE /* 4 GiB */

static double now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void run(loom_tracker tracker)
{
  char *dir = test_tmpdir("big");
  uint64_t image = ARENA_PAGES - 2;
  loom_options o = {.arena_pages = ARENA_PAGES, .flags = LOOM_CREATE,
                    .tracker = tracker};
  loom *l;
  assert_int_equal(loom_open(dir, &o, &l), 0);
  /* An image of zero pages: the file grows, nothing is copied. */
  assert_int_equal(loom_save(l, image, ARENA_PAGES), 0);
  uint8_t *base = loom_base(l);
  double t0 = now();
  for (uint64_t n = 0; n < image; n += 2)
    base[n * PAGE + (n % 4096)] = (uint8_t)(n * 31 + 1) | 1;
  double t1 = now();
  assert_int_equal(loom_save(l, image, ARENA_PAGES), 0);
  double t2 = now();
  loom_stats st;
  loom_get_stats(l, &st);
  print_message("%s: dirtied %llu pages in %.2f s, saved %llu pages in %.2f s\n",
                loom_tracker_name(tracker), (unsigned long long)(image / 2),
                t1 - t0, (unsigned long long)st.pages_saved - 0, t2 - t1);
  assert_int_equal(st.pages_saved, image / 2);
  assert_int_equal(loom_check(l, NULL, NULL), 0);
  /* A second round on the same pages: still noticed after re-protection. */
  for (uint64_t n = 0; n < image; n += 2)
    base[n * PAGE + (n % 4096)] ^= 0x80;
  assert_int_equal(loom_save(l, image, ARENA_PAGES), 0);
  loom_get_stats(l, &st);
  assert_int_equal(st.pages_saved, image);
  assert_int_equal(loom_close(l), 0);
  loom_position rec;
  uint64_t computed;
  assert_int_equal(loom_verify(dir, &rec, &computed), 0);
  assert_int_equal(rec.seq, 3);
  /* Spot-check bytes on disk. */
  char path[4200];
  snprintf(path, sizeof path, "%s/image", dir);
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  for (uint64_t n = 0; n < image; n += 997) {
    fseek(f, (long)(n * PAGE + (n % 4096)), SEEK_SET);
    int expect = n % 2 ? 0 : (((uint8_t)(n * 31 + 1) | 1) ^ 0x80);
    assert_int_equal(fgetc(f), expect);
  }
  fclose(f);
  test_rmtree(dir);
}

static void test_uffd(void **state)
{
  (void)state;
  run(LOOM_TRACK_UFFD_ASYNC);
}

static void test_mprotect(void **state)
{
  (void)state;
  run(LOOM_TRACK_MPROTECT);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_uffd),
      cmocka_unit_test(test_mprotect),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
