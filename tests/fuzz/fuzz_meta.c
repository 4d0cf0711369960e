/*
 * fuzz_meta.c: hostile bytes as the `meta` file (the durable position,
 * docs/FORMAT.md) of a small image directory.
 *
 * Each input is tried as it is and with the checksums of both 512-byte
 * slots fixed up (so the fuzzer gets past them to the fields). For each:
 * loom_inspect, a read-only open and a writable open (which recovers) must
 * return an error or succeed; when the writable open succeeds, the position
 * it reports must be the one loom_verify recomputes from the pages. Never a
 * crash, never a position that the image does not hold.
 *
 * Build: tests/fuzz/meson.build (libFuzzer with clang, the replay driver
 * always). Run longer: build/tests/fuzz/fuzz_meta tests/fuzz/corpus/meta
 */
#include <xxhash.h>

#include "fuzz_common.h"

const int fuzz_replay_mutations = 500;

typedef struct meta_state {
  char tmpl[256], work[256];
  loom_position pos;
} meta_state;

static void meta_cleanup(void);

static meta_state *meta_get(void)
{
  static meta_state st;
  static int ready;
  if (!ready) {
    fuzz_scratch_path(st.tmpl, sizeof st.tmpl, "meta-template");
    fuzz_scratch_path(st.work, sizeof st.work, "meta-work");
    fuzz_build_template(st.tmpl, &st.pos);
    atexit(meta_cleanup);
    ready = 1;
  }
  return &st;
}

static void meta_cleanup(void)
{
  meta_state *st = meta_get();
  fuzz_clear_dir(st->tmpl);
  fuzz_clear_dir(st->work);
}

static void exercise(meta_state *st, const uint8_t *data, size_t size)
{
  fuzz_copy_template(st->tmpl, st->work);
  fuzz_write_file(st->work, "meta", data, size);

  loom_position inspected;
  int rc = loom_inspect(st->work, &inspected);
  CHECK(rc >= 0 || (rc <= LOOM_OK && rc > LOOM_ELAST));

  loom_store *store;
  rc = loom_store_open(st->work, LOOM_READONLY, NULL, &store);
  CHECK(rc >= 0 || (rc < 0 && rc > LOOM_ELAST));
  if (rc == 0) CHECK(loom_store_close(store) == 0);

  rc = loom_store_open(st->work, 0, NULL, &store);
  CHECK(rc >= 0 || (rc < 0 && rc > LOOM_ELAST));
  if (rc != 0) return;
  loom_position opened, recorded;
  loom_store_position(store, &opened);
  CHECK(loom_store_close(store) == 0);
  fuzz_check_verifies(st->work, &recorded);
  CHECK(loom_position_same(&opened, &recorded));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  meta_state *st = meta_get();
  exercise(st, data, size);
  if (size < 512) return 0;
  uint8_t *fixed = malloc(size);
  CHECK(fixed != NULL);
  memcpy(fixed, data, size);
  for (size_t slot = 0; slot + 512 <= size && slot < 1024; slot += 512)
    fuzz_put_le64(fixed + slot + 504, XXH3_64bits(fixed + slot, 504));
  exercise(st, fixed, size);
  free(fixed);
  return 0;
}

int fuzz_make_seeds(const char *dir)
{
  meta_state *st = meta_get();
  size_t len;
  uint8_t *meta = fuzz_read_file(st->tmpl, "meta", &len);
  CHECK(meta != NULL && len == 1024);
  fuzz_write_file(dir, "template-meta", meta, len);
  fuzz_write_file(dir, "one-slot", meta, 512);
  /* The older slot only (the newer one zeroed): the position of seq 1 or
   * of the epoch change, with the leftover patch to recover. */
  uint8_t copy[1024];
  for (int slot = 0; slot < 2; slot++) {
    memcpy(copy, meta, 1024);
    memset(copy + 512 * slot, 0, 512);
    fuzz_write_file(dir, slot ? "slot0-only" : "slot1-only", copy, 1024);
  }
  /* A slot claiming seq 1 of the template (the leftover patch's before). */
  memcpy(copy, meta, 1024);
  for (int slot = 0; slot < 2; slot++) {
    uint8_t *s = copy + 512 * slot;
    if (fuzz_get_le64(s + 16) == 0) continue;
    fuzz_put_le64(s + 32, 1);
    fuzz_put_le64(s + 504, XXH3_64bits(s, 504));
  }
  fuzz_write_file(dir, "claims-seq1", copy, 1024);
  free(meta);
  fuzz_write_file(dir, "empty", "", 0);
  return 0;
}
