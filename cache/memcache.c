/* The memory tier (contract in memcache.h). */
#include "memcache.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "util/bufpool.h"
#include "util/hmap.h"

struct entry {
    struct entry *prev, *next; /* LRU list, head most recent */
    uint8_t name[CODEC_NAME_LEN];
    void *base; /* what to free */
    size_t cap; /* its size */
    const uint8_t *data;
    size_t len;
    unsigned refs; /* the table's (while listed) and each copy's */
};

#define SPARE_MAX 16 /* buffers kept for reuse */

struct memcache {
    pthread_mutex_t lock;
    struct bufpool *bufs;
    struct hmap *map; /* the name's first 16 bytes -> entry */
    struct entry lru;
    struct memcache_stats st;
};

static uint64_t key(const uint8_t *name, int half)
{
    uint64_t k;
    memcpy(&k, name + 8 * half, sizeof k);
    return k;
}

int memcache_new(size_t limit, size_t buf_size, struct memcache **out)
{
    struct memcache *m = calloc(1, sizeof *m);
    if (!m || !(m->map = hmap_new()) || bufpool_new(buf_size, SPARE_MAX, &m->bufs)) {
        if (m)
            hmap_free(m->map);
        free(m);
        return -ENOMEM;
    }
    pthread_mutex_init(&m->lock, NULL);
    m->lru.prev = m->lru.next = &m->lru;
    m->st.limit = limit;
    *out = m;
    return 0;
}

static void unref(struct memcache *m, struct entry *e)
{
    if (--e->refs == 0) {
        bufpool_put(m->bufs, e->base, e->cap);
        free(e);
    }
}

void memcache_recycle(struct memcache *m, void *base, size_t cap)
{
    bufpool_put(m->bufs, base, cap);
}

void *memcache_buffer(struct memcache *m)
{
    return bufpool_get(m->bufs);
}

static void drop(struct memcache *m, struct entry *e)
{
    hmap_del(m->map, key(e->name, 0), key(e->name, 1));
    e->prev->next = e->next;
    e->next->prev = e->prev;
    m->st.bytes -= e->len;
    m->st.chunks--;
    unref(m, e);
}

void memcache_free(struct memcache *m)
{
    if (!m)
        return;
    while (m->lru.next != &m->lru)
        drop(m, m->lru.next);
    bufpool_free(m->bufs);
    hmap_free(m->map);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

static struct entry *find(struct memcache *m, const uint8_t *name)
{
    struct entry *e = hmap_get(m->map, key(name, 0), key(name, 1));
    return e && !memcmp(e->name, name, CODEC_NAME_LEN) ? e : NULL;
}

static void link_front(struct memcache *m, struct entry *e)
{
    e->next = m->lru.next;
    e->prev = &m->lru;
    m->lru.next->prev = e;
    m->lru.next = e;
}

static void to_front(struct memcache *m, struct entry *e)
{
    e->prev->next = e->next;
    e->next->prev = e->prev;
    link_front(m, e);
}

const void *memcache_pin(struct memcache *m, const uint8_t name[CODEC_NAME_LEN], size_t *len,
                         void **pin)
{
    pthread_mutex_lock(&m->lock);
    struct entry *e = find(m, name);
    if (e) {
        m->st.hits++;
        e->refs++;
        to_front(m, e);
    } else {
        m->st.misses++;
    }
    pthread_mutex_unlock(&m->lock);
    *pin = e;
    *len = e ? e->len : 0;
    return e ? e->data : NULL;
}

void memcache_unpin(struct memcache *m, void *pin)
{
    pthread_mutex_lock(&m->lock);
    unref(m, pin);
    pthread_mutex_unlock(&m->lock);
}

int memcache_read(struct memcache *m, const uint8_t name[CODEC_NAME_LEN], size_t off, size_t len,
                  void *out)
{
    void *pin;
    size_t n;
    const uint8_t *data = memcache_pin(m, name, &n, &pin);
    if (!data)
        return 0;
    size_t have = off < n ? n - off : 0;
    have = have < len ? have : len;
    memcpy(out, data + off, have);
    memset((uint8_t *)out + have, 0, len - have);
    memcache_unpin(m, pin);
    return 1;
}

void memcache_put(struct memcache *m, const uint8_t name[CODEC_NAME_LEN], void *base, size_t cap,
                  const void *data, size_t len)
{
    struct entry *e = NULL;
    pthread_mutex_lock(&m->lock);
    if (len <= m->st.limit && !find(m, name) && (e = calloc(1, sizeof *e)) != NULL) {
        *e = (struct entry){ .base = base, .cap = cap, .data = data, .len = len, .refs = 1 };
        memcpy(e->name, name, CODEC_NAME_LEN);
        if (hmap_put(m->map, key(name, 0), key(name, 1), e)) {
            free(e);
            e = NULL;
        }
    }
    if (e) {
        link_front(m, e);
        m->st.bytes += len;
        m->st.chunks++;
        while (m->st.bytes > m->st.limit)
            drop(m, m->lru.prev);
    }
    if (!e)
        bufpool_put(m->bufs, base, cap);
    pthread_mutex_unlock(&m->lock);
}

void memcache_get_stats(struct memcache *m, struct memcache_stats *st)
{
    pthread_mutex_lock(&m->lock);
    *st = m->st;
    pthread_mutex_unlock(&m->lock);
}
