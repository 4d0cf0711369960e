/*
 * fuzz_frame.c: a libFuzzer target for the frame decoder (and, through
 * it, the coalescer and the encoder).
 *
 * Each input is decoded twice: as it is, and with its length field and
 * both checksums fixed up so that the fuzzer gets past them to the field
 * checks, zstd and the page entries. Whatever decodes must satisfy the
 * decoder's promises, and coalescing it alone must give back the same
 * pages; a broken promise aborts.
 *
 * Built like every target here (tests/fuzz/meson.build): with clang,
 * `fuzz_frame` (libFuzzer's main):
 *         ./fuzz_frame -max_len=70000 tests/fuzz/corpus/frame
 * and always `fuzz_frame_replay` (replay_main.c), which replays the seed
 * corpus and deterministic mutations of it as a unit test.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "fuzz_common.h"
#include "replicate.h"




typedef struct fuzz_state {
  replicate_decoder *dec;
  replicate_decoder *again;
  replicate_encoder *enc;
  replicate_coalescer *co;
  replicate_buf out;
  uint8_t *scratch;
  size_t scratch_cap;
} fuzz_state;

static fuzz_state *fuzz_get(void)
{
  static fuzz_state st;
  if (st.dec == NULL) {
    /* Small limits: the fuzzer explores, it does not allocate gigabytes. */
    replicate_limits limits = {.max_frame_pages = 64,
                               .max_image_pages = 1u << 20,
                               .max_payload_bytes = 1u << 22};
    CHECK(replicate_decoder_new(&limits, &st.dec) == 0);
    CHECK(replicate_decoder_new(&limits, &st.again) == 0);
    CHECK(replicate_encoder_new(1, &st.enc) == 0);
    CHECK(replicate_coalescer_new(64, &st.co) == 0);
  }
  return &st;
}

/* The promises of a decoded frame (replicate.h, frame.c's invariants). */
static void check_frame(const replicate_frame *f, size_t size)
{
  const replicate_frame_info *info = &f->info;
  CHECK(info->frame_size == size);
  CHECK(info->page_count <= 64);
  CHECK(info->page_count <= info->after.pages);
  if (info->kind == REPLICATE_KIND_HEARTBEAT) {
    CHECK(info->page_count == 0 && info->flags == 0);
    return;
  }
  CHECK(info->kind == REPLICATE_KIND_COMMIT);
  CHECK(info->after.seq > info->before.seq);
  uint64_t previous = 0;
  for (uint64_t i = 0; i < info->page_count; i++) {
    replicate_page page;
    replicate_frame_get_page(f, i, &page);
    CHECK(i == 0 || page.page_number > previous);
    CHECK(page.page_number < info->after.pages);
    CHECK(page.encoding == REPLICATE_PAGE_WHOLE ||
          (page.encoding == REPLICATE_PAGE_XOR &&
           page.page_number < info->before.pages));
    previous = page.page_number;
  }
}

/* A frame coalesced alone is the same frame (pages, hashes, contents). */
static void check_coalesce_alone(fuzz_state *st, const replicate_frame *f)
{
  if (f->info.kind != REPLICATE_KIND_COMMIT) {
    CHECK(replicate_coalescer_add(st->co, f) == REPLICATE_EKIND);
    return;
  }
  CHECK(replicate_coalescer_add(st->co, f) == 0);
  CHECK(replicate_coalescer_finish(st->co, st->enc, &st->out) == 0);
  replicate_frame g;
  CHECK(replicate_frame_decode(st->again, st->out.data, st->out.len, &g) == 0);
  CHECK(g.info.page_count == f->info.page_count);
  CHECK(g.info.before.seq == f->info.before.seq);
  CHECK(g.info.after.seq == f->info.after.seq);
  CHECK(g.info.before.checksum == f->info.before.checksum);
  CHECK(g.info.after.checksum == f->info.after.checksum);
  CHECK(g.info.after.pages == f->info.after.pages);
  CHECK(g.info.flags == f->info.flags);
  for (uint64_t i = 0; i < f->info.page_count; i++) {
    replicate_page a, b;
    replicate_frame_get_page(f, i, &a);
    replicate_frame_get_page(&g, i, &b);
    CHECK(a.page_number == b.page_number && a.hash == b.hash &&
          a.encoding == b.encoding);
    CHECK(memcmp(a.contents, b.contents, LOOM_PAGE_SIZE) == 0);
  }
}

static void exercise(fuzz_state *st, const uint8_t *data, size_t size)
{
  replicate_frame_info info;
  int rc = replicate_frame_parse_header(data, size, NULL, &info);
  CHECK(rc <= 0 && (rc == 0 || rc > REPLICATE_ELAST));
  replicate_frame f;
  rc = replicate_frame_decode(st->dec, data, size, &f);
  CHECK(rc <= 0);
  if (rc == 0) {
    check_frame(&f, size);
    check_coalesce_alone(st, &f);
  }
}

static void put_le64(uint8_t *p, uint64_t v)
{
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  fuzz_state *st = fuzz_get();
  exercise(st, data, size);
  if (size < REPLICATE_HEADER_SIZE) return 0;
  /* Fix up the compressed size and both checksums (docs/FRAME.md). */
  if (st->scratch_cap < size) {
    free(st->scratch);
    st->scratch = malloc(size);
    CHECK(st->scratch != NULL);
    st->scratch_cap = size;
  }
  uint8_t *f = st->scratch;
  memcpy(f, data, size);
  size_t payload = size - REPLICATE_HEADER_SIZE;
  put_le64(f + 96, payload);
  put_le64(f + 112, XXH3_64bits(f + REPLICATE_HEADER_SIZE, payload));
  put_le64(f + 136, XXH3_64bits(f, 136));
  exercise(st, f, size);
  return 0;
}

/* The seed corpus is kept in corpus/frame (written when the format was
 * made); replay_main.c replays it and mutations of it. */
int fuzz_make_seeds(const char *dir)
{
  (void)dir;
  return 0;
}

const int fuzz_replay_mutations = 1000;

