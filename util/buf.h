/*
 * A growable byte buffer. The zero value ({0}) is an empty buffer; data is
 * kept NUL-terminated (one spare byte) so a buffer holding text is a C string.
 */
#ifndef CKPT_UTIL_BUF_H
#define CKPT_UTIL_BUF_H

#include <stddef.h>
#include <stdint.h>

struct buf {
    uint8_t *data;
    size_t len;
    size_t cap;
    int fixed; /* data is not to be reallocated (it may point inside a block) */
};

/* Makes room for at least n more bytes. Returns 0, or -ENOMEM (also when a
 * fixed buffer has no room). */
int buf_reserve(struct buf *b, size_t n);

/* Appends n bytes. Returns 0 or -ENOMEM. */
int buf_append(struct buf *b, const void *p, size_t n);

/* Appends formatted text. Returns 0 or -ENOMEM. */
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Empties the buffer, keeping its memory. */
void buf_reset(struct buf *b);

/* Room for one more element of size bytes in a growing array *v of *cap
 * elements, n in use (doubling). Returns 0 or -ENOMEM (*v unchanged). */
int array_grow(void **v, size_t *cap, size_t n, size_t size);

/* Releases the memory; the buffer is empty and reusable afterwards. */
void buf_free(struct buf *b);

#endif
