/* hash.c: loom_page_hash, with an AVX2 build of XXH3 chosen at run time
 * when the CPU has it (Debian's libxxhash is built for baseline x86-64;
 * both compute the same value). */
#include <pthread.h>
#include <stdint.h>
#include <xxhash.h>

#include "hash.h"
#include "loom.h"

static uint64_t hash_generic(const void *page, uint64_t seed)
{
  return XXH3_64bits_withSeed(page, LOOM_PAGE_SIZE, seed);
}

static page_hash_fn *chosen = hash_generic;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void choose(void)
{
#if defined(LOOM_HAVE_AVX2) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2"))
    chosen = hash_page_avx2;
#endif
}

uint64_t loom_page_hash(uint64_t page_number, const void *page)
{
  pthread_once(&once, choose);
  return chosen(page, page_number);
}
