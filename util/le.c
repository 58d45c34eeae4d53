/* Little-endian integers (contract in le.h). */
#include "le.h"

void le_store(uint8_t *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

int le_put(struct buf *b, uint64_t v, int bytes)
{
    uint8_t le[8];
    le_store(le, v, bytes);
    return buf_append(b, le, (size_t)bytes);
}

uint64_t le_load(const uint8_t *p, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

uint64_t le_get(struct le_reader *r, int bytes)
{
    const uint8_t *p = le_take(r, (size_t)bytes);
    return p ? le_load(p, bytes) : 0;
}

const uint8_t *le_take(struct le_reader *r, size_t n)
{
    if ((size_t)(r->end - r->p) < n) {
        r->bad = 1;
        r->p = r->end;
        return NULL;
    }
    const uint8_t *at = r->p;
    r->p += n;
    return at;
}
