/*
 * fuzz_apply.c: hostile frames decoded and applied to a standby's store
 * (replicate_frame_decode + replicate_frame_apply), the path every frame
 * a standby receives takes.
 *
 * Each input is tried as it is and with the frame's payload length and both
 * checksums fixed up (docs/FRAME.md), then, when it decodes as a commit,
 * applied to a fresh copy of the template store (epoch 2, seq 2). Promises:
 *   - a frame of an older epoch (1) is refused with REPLICATE_ESTALE_EPOCH
 *     and changes nothing (suite 6: a standby never applies a frame from an
 *     older epoch);
 *   - an apply that succeeds leaves the store at the frame's after-position
 *     and epoch; one that fails leaves seq, checksum and pages unchanged;
 *   - either way, after closing, loom_verify recomputes the recorded
 *     position from the pages.
 *
 * Run longer: build/tests/fuzz/fuzz_apply -max_len=70000 tests/fuzz/corpus/apply
 */
#include <xxhash.h>

#include "fuzz_common.h"
#include "replicate.h"

const int fuzz_replay_mutations = 1000;

typedef struct apply_state {
  char tmpl[256], work[256];
  loom_position pos;
  replicate_decoder *dec;
  replicate_encoder *enc;
} apply_state;

static void apply_cleanup(void);

static apply_state *apply_get(void)
{
  static apply_state st;
  static int ready;
  if (!ready) {
    fuzz_scratch_path(st.tmpl, sizeof st.tmpl, "apply-template");
    fuzz_scratch_path(st.work, sizeof st.work, "apply-work");
    fuzz_build_template(st.tmpl, &st.pos);
    replicate_limits limits = {.max_frame_pages = 64,
                               .max_image_pages = 1u << 16,
                               .max_payload_bytes = 1u << 22};
    CHECK(replicate_decoder_new(&limits, &st.dec) == 0);
    CHECK(replicate_encoder_new(1, &st.enc) == 0);
    atexit(apply_cleanup);
    ready = 1;
  }
  return &st;
}

static void apply_cleanup(void)
{
  apply_state *st = apply_get();
  fuzz_clear_dir(st->tmpl);
  fuzz_clear_dir(st->work);
  replicate_decoder_free(st->dec);
  replicate_encoder_free(st->enc);
}

static void exercise(apply_state *st, const uint8_t *data, size_t size)
{
  replicate_frame f;
  int rc = replicate_frame_decode(st->dec, data, size, &f);
  CHECK(rc <= 0);
  if (rc != 0 || f.info.kind != REPLICATE_KIND_COMMIT) return;

  fuzz_copy_template(st->tmpl, st->work);
  loom_store *store;
  CHECK(loom_store_open(st->work, 0, NULL, &store) == 0);
  rc = replicate_frame_apply(&f, store);
  CHECK(rc >= 0 || (rc < 0 && rc > REPLICATE_ELAST) ||
        (rc < 0 && rc > LOOM_ELAST));
  loom_position now;
  loom_store_position(store, &now);
  if (getenv("FUZZ_VERBOSE"))
    fprintf(stderr, "apply epoch %llu: %s\n", (unsigned long long)f.info.epoch,
            replicate_strerror(rc));
  if (f.info.epoch < st->pos.epoch) {
    CHECK(rc == REPLICATE_ESTALE_EPOCH);
    CHECK(now.epoch == st->pos.epoch);
  }
  if (rc == 0) {
    CHECK(now.seq == f.info.after.seq);
    CHECK(now.checksum == f.info.after.checksum);
    CHECK(now.pages == f.info.after.pages);
    CHECK(now.epoch == f.info.epoch);
  } else {
    CHECK(loom_position_same(&now, &st->pos));
    CHECK(now.epoch >= st->pos.epoch);
  }
  CHECK(loom_store_close(store) == 0);
  loom_position recorded;
  fuzz_check_verifies(st->work, &recorded);
  CHECK(loom_position_same(&now, &recorded));
  CHECK(recorded.epoch == now.epoch);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  apply_state *st = apply_get();
  exercise(st, data, size);
  if (size < REPLICATE_HEADER_SIZE) return 0;
  uint8_t *f = malloc(size);
  CHECK(f != NULL);
  memcpy(f, data, size);
  size_t payload = size - REPLICATE_HEADER_SIZE;
  fuzz_put_le64(f + 96, payload);
  fuzz_put_le64(f + 112, XXH3_64bits(f + REPLICATE_HEADER_SIZE, payload));
  fuzz_put_le64(f + 136, XXH3_64bits(f, 136));
  exercise(st, f, size);
  free(f);
  return 0;
}

static void write_frame(apply_state *st, const char *dir, const char *name,
                        uint64_t epoch, int xor)
{
  uint8_t (*pages)[LOOM_PAGE_SIZE] = calloc(FUZZ_TEMPLATE_PAGES + 1,
                                            LOOM_PAGE_SIZE);
  uint8_t (*old)[LOOM_PAGE_SIZE] = calloc(FUZZ_TEMPLATE_PAGES + 1,
                                          LOOM_PAGE_SIZE);
  CHECK(pages != NULL && old != NULL);
  fuzz_template_pages(pages, 1);
  fuzz_template_pages(old, 0);
  replicate_frame_info info;
  memset(&info, 0, sizeof info);
  info.kind = REPLICATE_KIND_COMMIT;
  info.epoch = epoch;
  info.before.seq = st->pos.seq;
  info.before.checksum = st->pos.checksum;
  info.before.pages = st->pos.pages;
  info.after.seq = st->pos.seq + 1;
  info.after.pages = FUZZ_TEMPLATE_PAGES + 1;
  for (uint64_t n = 0; n < info.after.pages; n++)
    info.after.checksum += loom_page_hash(n, pages[n]);
  info.commit_time_ns = info.first_commit_time_ns = FUZZ_TIME_NS + 5000;
  replicate_page_src src[2] = {
      {.page_number = 2, .new_hash = loom_page_hash(2, pages[2]),
       .new_page = pages[2], .old_page = xor ? old[2] : NULL},
      {.page_number = 5, .new_hash = loom_page_hash(5, pages[5]),
       .new_page = pages[5], .old_page = NULL}};
  replicate_buf out = {0};
  CHECK(replicate_frame_encode(st->enc, &info, src, 2, &out) == 0);
  fuzz_write_file(dir, name, out.data, out.len);
  replicate_buf_free(&out);
  free(pages);
  free(old);
}

int fuzz_make_seeds(const char *dir)
{
  apply_state *st = apply_get();
  write_frame(st, dir, "next-xor", FUZZ_EPOCH, 1);
  write_frame(st, dir, "next-whole", FUZZ_EPOCH, 0);
  write_frame(st, dir, "older-epoch", FUZZ_EPOCH - 1, 1);
  write_frame(st, dir, "newer-epoch", FUZZ_EPOCH + 1, 1);
  loom_position latest = {.epoch = FUZZ_EPOCH,
                          .seq = st->pos.seq + 3,
                          .checksum = st->pos.checksum,
                          .pages = st->pos.pages,
                          .commit_time_ns = FUZZ_TIME_NS};
  replicate_buf out = {0};
  CHECK(replicate_frame_encode_heartbeat(&no_history, &latest, FUZZ_TIME_NS + 1,
                                         &out) == 0);
  fuzz_write_file(dir, "heartbeat", out.data, out.len);
  replicate_buf_free(&out);
  return 0;
}
