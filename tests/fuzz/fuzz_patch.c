/*
 * fuzz_patch.c: hostile bytes as the commit log's next record (docs/FORMAT.md
 * "`log`"), written at the template's head, then open it: record
 * verification and recovery.
 *
 * Each input is tried as it is and with its checksums fixed up (the page
 * count made to fit the length, every entry's page hash, the header
 * checksum and the trailer recomputed), so the fuzzer reaches the field
 * checks and the apply of recovery (the lsn is set to the template's head
 * and the format version to 2 as well). For each, loom_store_open must return
 * an error or succeed; when it succeeds:
 *   - the position is the template's (the patch did not count) or the
 *     patch's after-position (it was applied), nothing else;
 *   - loom_verify recomputes that position's checksum from the pages;
 *   - when the patch did not count, the image file is byte for byte the
 *     template's.
 *
 * Run longer: build/tests/fuzz/fuzz_patch -max_len=120000 tests/fuzz/corpus/patch
 */
#include <xxhash.h>

#include "fuzz_common.h"

const int fuzz_replay_mutations = 500;

#define PATCH_HEADER 4096u
#define PATCH_ENTRY 16u

typedef struct patch_state {
  char tmpl[256], work[256];
  loom_position pos;
  uint64_t head, head_off; /* the template's log head: lsn, file offset */
  uint8_t *image;
  size_t image_len;
} patch_state;

static void patch_cleanup(void);

/* The head of the template's meta (the valid slot with the higher
 * generation): its lsn, and where it sits in the log file. */
static void template_head(const char *dir, uint64_t *lsn, uint64_t *off)
{
  size_t len;
  uint8_t *m = fuzz_read_file(dir, "meta", &len);
  CHECK(m != NULL && len >= 1024);
  uint64_t best = 0;
  int found = 0;
  for (int i = 0; i < 2; i++) {
    const uint8_t *slot = m + i * 512;
    if (fuzz_get_le64(slot + 504) != XXH3_64bits(slot, 504)) continue;
    uint64_t g = fuzz_get_le64(slot + 16);
    if (found && g <= best) continue;
    found = 1;
    best = g;
    uint64_t origin = fuzz_get_le64(slot + 280), size = fuzz_get_le64(slot + 288);
    *lsn = fuzz_get_le64(slot + 296);
    *off = size ? (*lsn - origin) % size : 0;
  }
  CHECK(found);
  free(m);
}

static patch_state *patch_get(void)
{
  static patch_state st;
  static int ready;
  if (!ready) {
    fuzz_scratch_path(st.tmpl, sizeof st.tmpl, "patch-template");
    fuzz_scratch_path(st.work, sizeof st.work, "patch-work");
    fuzz_build_template(st.tmpl, &st.pos);
    st.image = fuzz_read_file(st.tmpl, "image", &st.image_len);
    CHECK(st.image != NULL);
    template_head(st.tmpl, &st.head, &st.head_off);
    atexit(patch_cleanup);
    ready = 1;
  }
  return &st;
}

static void patch_cleanup(void)
{
  patch_state *st = patch_get();
  fuzz_clear_dir(st->tmpl);
  fuzz_clear_dir(st->work);
  free(st->image);
}

/* Recovery of a patch that verifies costs time and memory linear in the
 * image length it declares (a hash per page, zero pages included), as the
 * commit that wrote it did. A forged patch with valid checksums declaring
 * millions of pages is slow, not wrong: it needs write access to the data
 * directory, and over the network frames and base images are capped
 * (http max_image_pages). Declared lengths past this bound are out of this
 * target's scope (docs/RELIABILITY-security.md). */
#define FUZZ_MAX_DECLARED_PAGES (UINT64_C(1) << 16)

static void write_at_head(const patch_state *st, const uint8_t *data,
                          size_t size)
{
  char path[512];
  CHECK(snprintf(path, sizeof path, "%s/log", st->work) < (int)sizeof path);
  int fd = open(path, O_WRONLY);
  CHECK(fd >= 0);
  CHECK(pwrite(fd, data, size, (off_t)st->head_off) == (ssize_t)size);
  close(fd);
}

static void exercise(patch_state *st, const uint8_t *data, size_t size)
{
  if (size >= 104 && (fuzz_get_le64(data + 80) > FUZZ_MAX_DECLARED_PAGES ||
                      fuzz_get_le64(data + 48) > FUZZ_MAX_DECLARED_PAGES))
    return;
  fuzz_copy_template(st->tmpl, st->work);
  write_at_head(st, data, size);
  loom_store *store;
  int rc = loom_store_open(st->work, 0, NULL, &store);
  CHECK(rc >= 0 || (rc < 0 && rc > LOOM_ELAST));
  if (getenv("FUZZ_VERBOSE")) fprintf(stderr, "open: %s\n", loom_strerror(rc));
  if (rc != 0) return;
  loom_position opened, recorded;
  loom_store_position(store, &opened);
  if (getenv("FUZZ_VERBOSE"))
    fprintf(stderr, "  at seq %llu (template %llu)\n",
            (unsigned long long)opened.seq, (unsigned long long)st->pos.seq);
  CHECK(loom_store_close(store) == 0);
  fuzz_check_verifies(st->work, &recorded);
  CHECK(loom_position_same(&opened, &recorded));
  if (loom_position_same(&opened, &st->pos)) {
    size_t len;
    uint8_t *image = fuzz_read_file(st->work, "image", &len);
    CHECK(len == st->image_len && memcmp(image, st->image, len) == 0);
    free(image);
    return;
  }
  /* Applied: it must be the patch's after-position. */
  CHECK(size >= 104);
  CHECK(opened.seq == fuzz_get_le64(data + 64));
  CHECK(opened.checksum == fuzz_get_le64(data + 72));
  CHECK(opened.pages == fuzz_get_le64(data + 80));
}

/* Make the checksums of a record of `size` bytes agree with its contents,
 * at the template's head. */
static void fix_up(uint8_t *p, size_t size)
{
  uint64_t k = (size - PATCH_HEADER - 8) / (LOOM_PAGE_SIZE + PATCH_ENTRY);
  fuzz_put_le64(p + 96, k);
  uint8_t *entries = p + PATCH_HEADER + k * LOOM_PAGE_SIZE;
  for (uint64_t i = 0; i < k; i++) {
    uint64_t n = fuzz_get_le64(entries + i * PATCH_ENTRY);
    fuzz_put_le64(entries + i * PATCH_ENTRY + 8,
                  loom_page_hash(n, p + PATCH_HEADER + i * LOOM_PAGE_SIZE));
  }
  p[8] = 2;
  p[9] = p[10] = p[11] = 0;
  fuzz_put_le64(p + 104, patch_get()->head);
  uint64_t header_sum = XXH3_64bits(p, 112);
  fuzz_put_le64(p + 112, header_sum);
  fuzz_put_le64(entries + k * PATCH_ENTRY,
                XXH3_64bits_withSeed(entries, k * PATCH_ENTRY, header_sum));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  patch_state *st = patch_get();
  exercise(st, data, size);
  if (size < PATCH_HEADER + 8) return 0;
  /* Cut to the nearest whole number of pages, then fix up. */
  uint64_t k = (size - PATCH_HEADER - 8) / (LOOM_PAGE_SIZE + PATCH_ENTRY);
  size_t fitted = PATCH_HEADER + k * (LOOM_PAGE_SIZE + PATCH_ENTRY) + 8;
  uint8_t *fixed = malloc(fitted);
  CHECK(fixed != NULL);
  memcpy(fixed, data, fitted);
  fix_up(fixed, fitted);
  exercise(st, fixed, fitted);
  free(fixed);
  return 0;
}

/* A patch file from before to after with the given pages, per FORMAT.md. */
static void write_patch(const char *dir, const char *name,
                        const loom_position *before,
                        const loom_position *after, unsigned flags,
                        uint8_t (*pages)[LOOM_PAGE_SIZE],
                        const uint64_t *numbers, uint64_t k)
{
  size_t size = PATCH_HEADER + k * (LOOM_PAGE_SIZE + PATCH_ENTRY) + 8;
  uint8_t *p = calloc(1, size);
  CHECK(p != NULL);
  memcpy(p, "LOOMPTCH", 8);
  p[8] = 1;
  fuzz_put_le64(p + 12, LOOM_PAGE_SIZE); /* u32 page size, u32 flags below */
  p[16] = (uint8_t)flags;
  p[17] = p[18] = p[19] = 0;
  fuzz_put_le64(p + 24, before->epoch);
  fuzz_put_le64(p + 32, before->seq);
  fuzz_put_le64(p + 40, before->checksum);
  fuzz_put_le64(p + 48, before->pages);
  fuzz_put_le64(p + 56, after->epoch);
  fuzz_put_le64(p + 64, after->seq);
  fuzz_put_le64(p + 72, after->checksum);
  fuzz_put_le64(p + 80, after->pages);
  fuzz_put_le64(p + 88, (uint64_t)after->commit_time_ns);
  uint8_t *entries = p + PATCH_HEADER + k * LOOM_PAGE_SIZE;
  for (uint64_t i = 0; i < k; i++) {
    memcpy(p + PATCH_HEADER + i * LOOM_PAGE_SIZE, pages[numbers[i]],
           LOOM_PAGE_SIZE);
    fuzz_put_le64(entries + i * PATCH_ENTRY, numbers[i]);
  }
  fix_up(p, size);
  fuzz_write_file(dir, name, p, size);
  free(p);
}

int fuzz_make_seeds(const char *dir)
{
  patch_state *st = patch_get();
  uint8_t (*pages)[LOOM_PAGE_SIZE] = calloc(FUZZ_TEMPLATE_PAGES + 1,
                                            LOOM_PAGE_SIZE);
  CHECK(pages != NULL);
  fuzz_template_pages(pages, 1);
  loom_position after = st->pos;
  after.seq++;
  after.pages = FUZZ_TEMPLATE_PAGES + 1;
  after.checksum = 0;
  for (uint64_t n = 0; n < after.pages; n++)
    after.checksum += loom_page_hash(n, pages[n]);
  after.commit_time_ns = FUZZ_TIME_NS + 2000;
  uint64_t changed[] = {2, 5};
  write_patch(dir, "next-commit", &st->pos, &after, 0, pages, changed, 2);

  /* A base image: every page, replacing the image (4 pages: a shrink). */
  uint64_t all[] = {0, 1, 2, 3};
  loom_position base = after;
  base.pages = 4;
  base.checksum = 0;
  for (uint64_t n = 0; n < 4; n++) base.checksum += loom_page_hash(n, pages[n]);
  write_patch(dir, "base-shrink", &st->pos, &base, 1, pages, all, 4);

  /* An empty commit (no pages, same length). */
  loom_position same = st->pos;
  same.seq++;
  write_patch(dir, "no-pages", &st->pos, &same, 0, pages, all, 0);

  /* The leftover patch of the template (already applied). */
  size_t len;
  uint8_t *left = fuzz_read_file(st->tmpl, "patch", &len);
  if (left != NULL) {
    fuzz_write_file(dir, "template-leftover", left, len);
    free(left);
  }
  free(pages);
  return 0;
}
