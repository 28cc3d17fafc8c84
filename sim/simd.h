/*
 * simd.h - vectorised code paths chosen at load time for the running CPU.
 *
 * KV_SIMD_CLONES before a function compiles it for AVX-512 (x86-64-v4), AVX2 (x86-64-v3)
 * and baseline x86-64 (GCC's target_clones; an ifunc picks one at load time); elsewhere
 * it expands to nothing. Loops meant to vectorise carry `#pragma omp simd`. The build
 * uses -std=c11, so GCC does not contract a * b + c into FMAs (-ffp-contract=off): an
 * elementwise loop rounds the same in every clone, and results do not depend on the CPU.
 */
#ifndef KV_SIMD_H
#define KV_SIMD_H

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KV_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", \
                                                    "default")))
#else
#define KV_SIMD_CLONES
#endif

#endif
