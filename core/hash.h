/* hash.h: page hashing variants (internal). */
#ifndef LOOM_HASH_H
#define LOOM_HASH_H
#include <stdint.h>
typedef uint64_t page_hash_fn(const void *page, uint64_t seed);
/* XXH3-64 compiled with -mavx2 (hash_avx2.c), when the build has it. */
page_hash_fn hash_page_avx2;
#endif
