/* Hexadecimal, as chunk names, SigV4 hashes and key files spell bytes. */
#ifndef CKPT_UTIL_HEX_H
#define CKPT_UTIL_HEX_H

#include <stddef.h>
#include <stdint.h>

/* Writes 2n lowercase hex digits and a NUL to out (room for 2n+1). */
void hex_encode(const uint8_t *p, size_t n, char *out);

/* Reads n bytes from the 2n hex digits at s. Upper-case digits are accepted
 * only if upper_ok (names have one spelling; people type keys either way).
 * Returns 0, or -EINVAL if a character is not a digit (out is then partly written). */
int hex_decode(const char *s, size_t n, uint8_t *out, int upper_ok);

#endif
