/* hash_avx2.c: XXH3-64 of one page, compiled with -mavx2 (only called when
 * the CPU supports it; see hash.c). */
#define XXH_INLINE_ALL
#define XXH_VECTOR XXH_AVX2
#include <xxhash.h>

#include "hash.h"
#include "loom.h"

uint64_t hash_page_avx2(const void *page, uint64_t seed)
{
  return XXH3_64bits_withSeed(page, LOOM_PAGE_SIZE, seed);
}
