/*
 * Doubles as text, fast: exactly what printf's "%.17g" writes, byte for
 * byte, since outputs written before and after an upgrade must agree (an
 * exactly_once replay compares them by hash). glibc's printf takes about a
 * sixth of a pipeline's time writing AVGs; this takes a few percent.
 */
#ifndef CKPT_ENGINE_DTOA_H
#define CKPT_ENGINE_DTOA_H

#include <stddef.h>

#define DTOA_MAX 32 /* bytes dtoa_17g may write, its NUL included */

/* Writes d as "%.17g" would, NUL-terminated, into out; returns its length.
 * d must be finite. */
size_t dtoa_17g(double d, char out[DTOA_MAX]);

/* "00", "01" ... "99": a number's digits, two a division (integers too). */
extern const char digit_pairs[201];

#endif
