/*
 * Snapshot encoding, version 1 (contract in snapshot.h).
 *
 * The object in the bucket:
 *
 *   +-------------------+------------------------------------------------+
 *   | name (32 bytes)   | the encoded snapshot as a codec chunk (codec.c) |
 *   +-------------------+------------------------------------------------+
 *
 * where name is the codec's name of the plaintext, so decoding checks it
 * (and, with encryption, authenticates it). The plaintext:
 *
 *   offset size  header (little-endian)
 *        0    4  magic "CKSN"
 *        4    1  version, 1
 *        5    3  zero
 *        8    8  epoch
 *       16    8  sequence
 *       24    8  created, nanoseconds since 1970
 *       32    4  block size in bytes
 *       36    4  zero
 *   then four sections, each a count and that many records; integers are
 *   LEB128 varints (u), times zigzag varints (t), names and values a
 *   varint length and the bytes (s):
 *
 *     inodes   ino-delta u, mode u, uid u, gid u, nlink u, size u, rdev u,
 *              atime t, mtime t, ctime t, target s (empty unless a symlink)
 *     dentries parent u, name s, ino u            (in readdir order)
 *     xattrs   ino u, name s, value s
 *     blocks   ino-delta u, idx u, chunk name (32 bytes)
 *              (ordered by inode, then index; idx absolute)
 *
 * Rules a loader checks (a snapshot may come from someone else's bucket):
 *   1. inode numbers strictly increase; inode 1 is the root, a directory;
 *      types are the seven POSIX ones; symlinks alone have targets.
 *   2. an entry's name is 1..255 bytes, without '/' or NUL, not "." or "..";
 *      its parent is a directory; a directory has one entry, the root none;
 *      walking up from any directory reaches the root (no loops).
 *   3. a block belongs to a regular file, lies below its size, and indexes
 *      of one file strictly increase.
 *   4. counts fit the bytes that remain, so nothing is allocated on the word
 *      of a count alone.
 */
#include "snapshot.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/err.h"
#include "util/le.h"
#include "util/hmap.h"

#define MAGIC      "CKSN"
#define VERSION    1
#define HEADER_LEN 40
#define MAX_NAME   255
#define MAX_TARGET 4096
#define MAX_XATTR  65536
#define MAX_DEPTH  4096
/* The largest snapshot object: its name, a chunk header and tag, and the zstd
 * bound of a plaintext of CODEC_MAX_CHUNK bytes (what the codec decodes). */
#define MAX_OBJECT ((uint64_t)CODEC_MAX_CHUNK + (CODEC_MAX_CHUNK >> 7) + 4096)

/* ---- keys ---- */

void snapshot_key(struct snapshot_id id, char key[SNAPSHOT_KEY_LEN])
{
    snprintf(key, SNAPSHOT_KEY_LEN, SNAPSHOT_PREFIX "%08" PRIx64 "-%012" PRIx64, id.epoch, id.seq);
}

int snapshot_parse_key(const char *key, struct snapshot_id *id)
{
    unsigned long long e, s;
    int n = 0;
    if (sscanf(key, SNAPSHOT_PREFIX "%8llx-%12llx%n", &e, &s, &n) != 2 ||
        n != (int)strlen(SNAPSHOT_PREFIX) + 21 || key[n] != '\0')
        return -EINVAL;
    *id = (struct snapshot_id){ e, s };
    return 0;
}

int snapshot_newer(struct snapshot_id a, struct snapshot_id b)
{
    return a.epoch != b.epoch ? a.epoch > b.epoch : a.seq > b.seq;
}

struct lister {
    snapshot_list_fn fn;
    void *arg;
};

static int list_one(void *arg, const struct store_object *o)
{
    struct lister *l = arg;
    struct snapshot_id id;
    return snapshot_parse_key(o->key, &id) == 0 ? l->fn(l->arg, id, o) : 0;
}

int snapshot_list(struct store *s, snapshot_list_fn fn, void *arg)
{
    struct lister l = { fn, arg };
    return store_list(s, SNAPSHOT_PREFIX, list_one, &l);
}

static int add_entry(void *arg, struct snapshot_id id, const struct store_object *o)
{
    struct snapshot_entries *l = arg;
    if (array_grow((void **)&l->v, &l->cap, l->n, sizeof *l->v))
        return -ENOMEM;
    l->v[l->n++] = (struct snapshot_entry){ id, o->mtime, o->size };
    return 0;
}

int snapshot_list_all(struct store *s, struct snapshot_entries *out)
{
    *out = (struct snapshot_entries){ 0 };
    int rc = snapshot_list(s, add_entry, out);
    if (rc) {
        free(out->v);
        *out = (struct snapshot_entries){ 0 };
    }
    return rc;
}

struct latest {
    struct snapshot_id id;
    int found;
};

static int consider(void *arg, struct snapshot_id id, const struct store_object *o)
{
    (void)o;
    struct latest *l = arg;
    if (!l->found || snapshot_newer(id, l->id)) {
        l->id = id;
        l->found = 1;
    }
    return 0;
}

int snapshot_latest(struct store *s, struct snapshot_id *id)
{
    struct latest l = { { 0, 0 }, 0 };
    int rc = snapshot_list(s, consider, &l);
    if (rc == 0 && !l.found)
        return -ENOENT;
    *id = l.id;
    return rc;
}

int snapshot_parse_id(const char *text, struct snapshot_id *id)
{
    char key[SNAPSHOT_KEY_LEN];
    if (strlen(text) != SNAPSHOT_ID_LEN - 1)
        return -EINVAL;
    snprintf(key, sizeof key, SNAPSHOT_PREFIX "%s", text);
    return snapshot_parse_key(key, id);
}

void snapshot_id_text(struct snapshot_id id, char text[SNAPSHOT_ID_LEN])
{
    snprintf(text, SNAPSHOT_ID_LEN, "%08" PRIx64 "-%012" PRIx64, id.epoch, id.seq);
}

/* ---- varints ---- */

static int put_u(struct buf *b, uint64_t v)
{
    uint8_t tmp[10];
    size_t n = 0;
    do {
        tmp[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    return buf_append(b, tmp, n);
}

static int put_t(struct buf *b, struct timespec ts)
{
    int64_t v = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    return put_u(b, ((uint64_t)v << 1) ^ (uint64_t)(v >> 63));
}

static int put_s(struct buf *b, const void *p, size_t n)
{
    int rc = put_u(b, n);
    return rc ? rc : buf_append(b, p, n);
}

/* A cursor over the plaintext; any read past the end marks it bad. */
struct cur {
    const uint8_t *p, *end;
    int bad;
};

static uint64_t get_u(struct cur *c)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (c->p >= c->end) {
            c->bad = 1;
            return 0;
        }
        uint8_t byte = *c->p++;
        v |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80))
            return v;
    }
    c->bad = 1;
    return 0;
}

static struct timespec get_t(struct cur *c)
{
    uint64_t z = get_u(c);
    int64_t v = (int64_t)(z >> 1) ^ -(int64_t)(z & 1);
    int64_t s = v / 1000000000, r = v % 1000000000;
    if (r < 0) {
        s--;
        r += 1000000000;
    }
    return (struct timespec){ .tv_sec = s, .tv_nsec = r };
}

static const uint8_t *get_bytes(struct cur *c, size_t n)
{
    if (c->bad || (size_t)(c->end - c->p) < n) {
        c->bad = 1;
        return NULL;
    }
    const uint8_t *p = c->p;
    c->p += n;
    return p;
}

static const uint8_t *get_s(struct cur *c, size_t max, size_t *n)
{
    *n = (size_t)get_u(c);
    if (*n > max)
        c->bad = 1;
    return get_bytes(c, c->bad ? 0 : *n);
}

/* ---- encoding ---- */

struct enc {
    struct buf inodes, dentries, xattrs, blocks;
    uint64_t n_inodes, n_dentries, n_xattrs, n_blocks;
    uint64_t last_ino, last_block_ino;
    struct buf files; /* the regular files' inode numbers, ascending (u64 each) */
    size_t at;        /* the first of them a block may still belong to */
};

static int enc_inode(void *arg, const struct ns_attr *a, const void *target, size_t target_len)
{
    struct enc *e = arg;
    struct buf *b = &e->inodes;
    int rc = S_ISREG(a->mode) ? buf_append(&e->files, &a->ino, sizeof a->ino) : 0;
    rc = rc ? rc : put_u(b, a->ino - e->last_ino);
    uint64_t f[] = { a->mode, a->uid, a->gid, a->nlink, a->size, a->rdev };
    for (size_t i = 0; rc == 0 && i < sizeof f / sizeof f[0]; i++)
        rc = put_u(b, f[i]);
    if (rc == 0)
        rc = put_t(b, a->atime);
    if (rc == 0)
        rc = put_t(b, a->mtime);
    if (rc == 0)
        rc = put_t(b, a->ctime);
    if (rc == 0)
        rc = put_s(b, target, target ? target_len : 0);
    e->last_ino = a->ino;
    e->n_inodes++;
    return rc;
}

static int enc_dentry(void *arg, uint64_t parent, const char *name, size_t len, uint64_t ino)
{
    struct enc *e = arg;
    int rc = put_u(&e->dentries, parent);
    if (rc == 0)
        rc = put_s(&e->dentries, name, len);
    if (rc == 0)
        rc = put_u(&e->dentries, ino);
    e->n_dentries++;
    return rc;
}

static int enc_xattr(void *arg, uint64_t ino, const char *name, size_t name_len, const void *value,
                     size_t value_len)
{
    struct enc *e = arg;
    int rc = put_u(&e->xattrs, ino);
    if (rc == 0)
        rc = put_s(&e->xattrs, name, name_len);
    if (rc == 0)
        rc = put_s(&e->xattrs, value, value_len);
    e->n_xattrs++;
    return rc;
}

/* Whether ino is a file the snapshot holds. Blocks come in inode order, as
 * the files did. A file unlinked while still open (or known to the kernel)
 * keeps its blocks until it is released, but it is in no snapshot. */
static int holds_file(struct enc *e, uint64_t ino)
{
    const uint64_t *v = (const uint64_t *)e->files.data;
    size_t n = e->files.len / sizeof *v;
    while (e->at < n && v[e->at] < ino)
        e->at++;
    return e->at < n && v[e->at] == ino;
}

static int enc_block(void *arg, uint64_t ino, uint64_t idx, const uint8_t name[CODEC_NAME_LEN])
{
    struct enc *e = arg;
    if (!holds_file(e, ino))
        return 0;
    int rc = put_u(&e->blocks, ino - e->last_block_ino);
    if (rc == 0)
        rc = put_u(&e->blocks, idx);
    if (rc == 0)
        rc = buf_append(&e->blocks, name, CODEC_NAME_LEN);
    e->last_block_ino = ino;
    e->n_blocks++;
    return rc;
}

static int append_section(struct buf *out, uint64_t count, const struct buf *body)
{
    int rc = put_u(out, count);
    return rc ? rc : buf_append(out, body->data, body->len);
}

int snapshot_encode(sqlite3 *reader, struct blocks *b, struct snapshot_id id, struct buf *out)
{
    struct enc e = { 0 };
    struct ns_visitor v = { enc_inode, enc_dentry, enc_xattr, &e };
    int rc = ns_scan_at(reader, &v);
    if (rc == 0)
        rc = blocks_scan_at(b, reader, enc_block, &e);
    uint8_t h[HEADER_LEN] = MAGIC;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    h[4] = VERSION;
    le_store(h + 8, id.epoch, 8);
    le_store(h + 16, id.seq, 8);
    le_store(h + 24, (uint64_t)((int64_t)now.tv_sec * 1000000000 + now.tv_nsec), 8);
    le_store(h + 32, blocks_block_size(b), 4);
    if (rc == 0)
        rc = buf_append(out, h, sizeof h);
    if (rc == 0)
        rc = append_section(out, e.n_inodes, &e.inodes);
    if (rc == 0)
        rc = append_section(out, e.n_dentries, &e.dentries);
    if (rc == 0)
        rc = append_section(out, e.n_xattrs, &e.xattrs);
    if (rc == 0)
        rc = append_section(out, e.n_blocks, &e.blocks);
    buf_free(&e.inodes);
    buf_free(&e.dentries);
    buf_free(&e.xattrs);
    buf_free(&e.blocks);
    buf_free(&e.files);
    return rc;
}

/* ---- the object ---- */

int snapshot_publish(struct store *s, struct codec *c, struct snapshot_id id,
                     const struct buf *plain, int if_absent)
{
    uint8_t name[CODEC_NAME_LEN];
    struct buf obj = { 0 };
    char key[SNAPSHOT_KEY_LEN];
    snapshot_key(id, key);
    int rc = codec_name(c, plain->data, plain->len, name);
    if (rc == 0)
        rc = buf_append(&obj, name, sizeof name);
    if (rc == 0)
        rc = codec_encode(c, plain->data, plain->len, name, &obj);
    if (rc == 0)
        rc = store_put(s, key, obj.data, obj.len, if_absent ? STORE_IF_ABSENT : 0);
    buf_free(&obj);
    return rc;
}

int snapshot_fetch(struct store *s, struct codec *c, struct snapshot_id id, struct buf *plain)
{
    struct buf obj = { 0 };
    char key[SNAPSHOT_KEY_LEN];
    snapshot_key(id, key);
    int rc = store_get(s, key, 0, MAX_OBJECT + 1, &obj);
    if (rc == 0 && obj.len < CODEC_NAME_LEN)
        rc = err_set(-EBADMSG, "snapshot %s is truncated", key);
    if (rc == 0 && obj.len > MAX_OBJECT)
        rc = err_set(-EBADMSG, "snapshot %s is bigger than any snapshot can be", key);
    if (rc == 0)
        rc = codec_decode(c, obj.data + CODEC_NAME_LEN, obj.len - CODEC_NAME_LEN, obj.data, plain);
    if (rc)
        err_wrap(rc, "snapshot %s", key);
    buf_free(&obj);
    return rc;
}

/* ---- loading ---- */

/* What the loader remembers of each inode, to check the rules. */
struct seen {
    uint32_t mode;
    uint64_t size;
    uint64_t parent; /* directories: the one parent; 0 until their entry is seen */
    int64_t last_idx;
};

struct load {
    struct cur c;
    const struct snapshot_visitor *v; /* NULL: check only */
    void *arg;
    struct hmap *inodes; /* ino -> struct seen */
    struct snapshot_info *info;
};

static int bad(const char *what)
{
    return err_set(-EBADMSG, "snapshot breaks the format: %s", what);
}

static int valid_type(uint32_t mode)
{
    switch (mode & S_IFMT) {
    case S_IFREG:
    case S_IFDIR:
    case S_IFLNK:
    case S_IFCHR:
    case S_IFBLK:
    case S_IFIFO:
    case S_IFSOCK:
        return 1;
    default:
        return 0;
    }
}

static int load_inode(struct load *l, uint64_t *last)
{
    struct ns_attr a = { 0 };
    a.ino = *last + get_u(&l->c);
    uint64_t f[6];
    for (int i = 0; i < 6; i++)
        f[i] = get_u(&l->c);
    a.mode = (uint32_t)f[0], a.uid = (uint32_t)f[1], a.gid = (uint32_t)f[2];
    a.nlink = (uint32_t)f[3], a.size = f[4], a.rdev = f[5];
    a.atime = get_t(&l->c), a.mtime = get_t(&l->c), a.ctime = get_t(&l->c);
    size_t tlen;
    const uint8_t *target = get_s(&l->c, MAX_TARGET, &tlen);
    if (l->c.bad)
        return bad("an inode record is cut short");
    if (a.ino <= *last || f[0] > UINT32_MAX || !valid_type(a.mode) || a.nlink == 0 ||
        a.size > (1ull << 62) || (tlen > 0) != S_ISLNK(a.mode) ||
        (a.ino == NS_ROOT) != (*last == 0) || (a.ino == NS_ROOT && !S_ISDIR(a.mode)))
        return bad("an inode record holds impossible values");
    *last = a.ino;
    struct seen *s = calloc(1, sizeof *s);
    if (!s || hmap_put(l->inodes, a.ino, 0, s)) {
        free(s);
        return -ENOMEM;
    }
    *s = (struct seen){ .mode = a.mode, .size = a.size, .last_idx = -1 };
    l->info->inodes++;
    l->info->files += S_ISREG(a.mode) != 0;
    if (S_ISREG(a.mode))
        l->info->bytes += a.size;
    return l->v && l->v->inode ? l->v->inode(l->arg, &a, target, tlen) : 0;
}

static int valid_name(const uint8_t *p, size_t n)
{
    if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
        return 0;
    return !memchr(p, '/', n) && !memchr(p, '\0', n);
}

static int load_dentry(struct load *l)
{
    uint64_t parent = get_u(&l->c);
    size_t n;
    const uint8_t *name = get_s(&l->c, MAX_NAME, &n);
    uint64_t ino = get_u(&l->c);
    if (l->c.bad)
        return bad("an entry record is cut short");
    struct seen *p = hmap_get(l->inodes, parent, 0), *child = hmap_get(l->inodes, ino, 0);
    if (!valid_name(name, n))
        return bad("an entry name is empty, '.', '..', or holds '/' or NUL");
    if (!p || !S_ISDIR(p->mode) || !child || ino == NS_ROOT)
        return bad("an entry joins inodes that cannot be joined");
    if (S_ISDIR(child->mode)) {
        if (child->parent)
            return bad("a directory has two entries");
        child->parent = parent;
    }
    int rc = l->v && l->v->dentry ? l->v->dentry(l->arg, parent, (const char *)name, n, ino) : 0;
    return rc == -EEXIST ? bad("a directory holds one name twice") : rc;
}

static int load_xattr(struct load *l)
{
    uint64_t ino = get_u(&l->c);
    size_t nn, vn;
    const uint8_t *name = get_s(&l->c, MAX_NAME, &nn);
    const uint8_t *value = get_s(&l->c, MAX_XATTR, &vn);
    if (l->c.bad)
        return bad("an xattr record is cut short");
    if (!hmap_get(l->inodes, ino, 0) || nn == 0 || memchr(name, '\0', nn))
        return bad("an xattr record is impossible");
    int rc = l->v && l->v->xattr ? l->v->xattr(l->arg, ino, (const char *)name, nn, value, vn) : 0;
    return rc == -EEXIST ? bad("an inode has one xattr twice") : rc;
}

static int load_block(struct load *l, uint64_t *last_ino)
{
    uint64_t ino = *last_ino + get_u(&l->c);
    uint64_t idx = get_u(&l->c);
    const uint8_t *name = get_bytes(&l->c, CODEC_NAME_LEN);
    if (l->c.bad)
        return bad("a block record is cut short");
    struct seen *s = hmap_get(l->inodes, ino, 0);
    uint64_t bs = l->info->block_size;
    if (!s || !S_ISREG(s->mode) || idx >= (s->size + bs - 1) / bs || (int64_t)idx <= s->last_idx)
        return bad("a block lies outside its file");
    s->last_idx = (int64_t)idx;
    *last_ino = ino;
    l->info->blocks++;
    return l->v && l->v->block ? l->v->block(l->arg, ino, idx, name) : 0;
}

/* Rule 4: a count that cannot fit the bytes left is a lie. */
static int count_of(struct load *l, size_t min_record, uint64_t *n)
{
    *n = get_u(&l->c);
    if (l->c.bad || *n > (uint64_t)(l->c.end - l->c.p) / min_record)
        return bad("a count exceeds the snapshot's size");
    return 0;
}

static int walk_up(struct load *l, uint64_t ino, struct seen *s)
{
    for (int depth = 0; ino != NS_ROOT; depth++) {
        if (!s || !s->parent || depth > MAX_DEPTH)
            return bad("a directory cannot be reached from the root");
        ino = s->parent;
        s = hmap_get(l->inodes, ino, 0);
    }
    return 0;
}

struct reach {
    struct load *l;
    int rc;
};

static void check_reach(void *arg, uint64_t ino, uint64_t unused, void *v)
{
    (void)unused;
    struct reach *r = arg;
    struct seen *s = v;
    if (!r->rc && S_ISDIR(s->mode))
        r->rc = walk_up(r->l, ino, s);
}

static int load_sections(struct load *l)
{
    uint64_t n, last = 0;
    int rc = count_of(l, 12, &n);
    for (uint64_t i = 0; rc == 0 && i < n; i++)
        rc = load_inode(l, &last);
    if (rc == 0 && !hmap_get(l->inodes, NS_ROOT, 0))
        rc = bad("there is no root directory");
    if (rc == 0 && (rc = count_of(l, 4, &n)) == 0)
        for (uint64_t i = 0; rc == 0 && i < n; i++)
            rc = load_dentry(l);
    if (rc == 0) {
        struct reach r = { l, 0 };
        hmap_each(l->inodes, check_reach, &r);
        rc = r.rc;
    }
    if (rc == 0 && (rc = count_of(l, 4, &n)) == 0)
        for (uint64_t i = 0; rc == 0 && i < n; i++)
            rc = load_xattr(l);
    last = 0;
    if (rc == 0 && (rc = count_of(l, 2 + CODEC_NAME_LEN, &n)) == 0)
        for (uint64_t i = 0; rc == 0 && i < n; i++)
            rc = load_block(l, &last);
    if (rc == 0 && l->c.p != l->c.end)
        rc = bad("bytes follow the last section");
    return rc;
}

static int read_header(struct load *l, size_t block_size)
{
    const uint8_t *h = get_bytes(&l->c, HEADER_LEN);
    if (!h || memcmp(h, MAGIC, 4) != 0)
        return bad("not a ckptfs snapshot");
    if (h[4] != VERSION)
        return err_set(-EPROTONOSUPPORT, "snapshot format version %u is not one this build reads",
                       h[4]);
    l->info->id = (struct snapshot_id){ le_load(h + 8, 8), le_load(h + 16, 8) };
    l->info->created_ns = (int64_t)le_load(h + 24, 8);
    l->info->block_size = (uint32_t)le_load(h + 32, 4);
    if (l->info->block_size == 0)
        return bad("the block size is 0");
    if (block_size && l->info->block_size != block_size)
        return err_set(-EPROTONOSUPPORT,
                       "snapshot uses %u-byte blocks; this cache uses %zu-byte blocks",
                       l->info->block_size, block_size);
    return 0;
}

static void free_seen(void *arg, uint64_t a, uint64_t b, void *v)
{
    (void)arg;
    (void)a;
    (void)b;
    free(v);
}

/* One pass over the encoding, calling v (if not NULL) per record once it
 * passed the checks that can be made so far. */
static int walk_once(const struct buf *plain, size_t block_size, const struct snapshot_visitor *v,
                     void *arg, struct snapshot_info *info)
{
    memset(info, 0, sizeof *info);
    struct load l = { { plain->data, plain->data + plain->len, 0 }, v, arg, hmap_new(), info };
    if (!l.inodes)
        return -ENOMEM;
    int rc = read_header(&l, block_size);
    if (rc == 0)
        rc = load_sections(&l);
    hmap_each(l.inodes, free_seen, NULL);
    hmap_free(l.inodes);
    return rc;
}

int snapshot_walk(const struct buf *plain, size_t block_size, const struct snapshot_visitor *v,
                  void *arg, struct snapshot_info *info)
{
    /* The whole snapshot is checked before v sees a record: the loops and
     * unreachable directories rule 2 forbids show only at the end. */
    int rc = walk_once(plain, block_size, NULL, NULL, info);
    return rc || !v ? rc : walk_once(plain, block_size, v, arg, info);
}

struct loader {
    struct ns *ns;
    struct blocks *b;
    struct blocks_ref *refs; /* collected here instead of set in b, if b is NULL */
    size_t n, cap;
};

static int ld_inode(void *arg, const struct ns_attr *a, const void *target, size_t target_len)
{
    return ns_load_inode(((struct loader *)arg)->ns, a, target, target_len);
}

static int ld_dentry(void *arg, uint64_t parent, const char *name, size_t len, uint64_t ino)
{
    return ns_load_dentry(((struct loader *)arg)->ns, parent, name, len, ino);
}

static int ld_xattr(void *arg, uint64_t ino, const char *name, size_t name_len, const void *value,
                    size_t value_len)
{
    return ns_load_xattr(((struct loader *)arg)->ns, ino, name, name_len, value, value_len);
}

static int ld_block(void *arg, uint64_t ino, uint64_t idx, const uint8_t name[CODEC_NAME_LEN])
{
    struct loader *ld = arg;
    int rc = 0;
    if (ld->b)
        rc = blocks_set_remote(ld->b, ino, idx, name);
    else if ((rc = array_grow((void **)&ld->refs, &ld->cap, ld->n, sizeof *ld->refs)) == 0) {
        struct blocks_ref *ref = &ld->refs[ld->n++];
        ref->ino = ino;
        ref->idx = idx;
        memcpy(ref->name, name, CODEC_NAME_LEN);
    }
    return rc;
}

/* The tables from the snapshot, in one transaction (checked first). */
static int load(const struct buf *plain, struct db *db, size_t block_size, struct loader *ld,
                struct snapshot_info *info)
{
    static const struct snapshot_visitor load_into_tables = { ld_inode, ld_dentry, ld_xattr,
                                                              ld_block };
    int rc = snapshot_walk(plain, block_size, NULL, NULL, info);
    if (rc)
        return rc;
    db_lock(db);
    rc = db_exec(db, "BEGIN IMMEDIATE");
    if (rc == 0) {
        rc = ns_clear(ld->ns);
        if (rc == 0 && ld->b)
            rc = blocks_clear_locked(ld->b);
        if (rc == 0)
            rc = walk_once(plain, block_size, &load_into_tables, ld, info);
        int end = db_exec(db, rc ? "ROLLBACK" : "COMMIT");
        rc = rc ? rc : end;
    }
    db_unlock(db);
    return rc;
}

int snapshot_load(const struct buf *plain, struct db *db, struct ns *ns, struct blocks *b,
                  struct snapshot_info *info)
{
    struct loader ld = { .ns = ns, .b = b };
    return load(plain, db, blocks_block_size(b), &ld, info);
}

int snapshot_load_tree(const struct buf *plain, struct db *db, struct ns *ns, size_t block_size,
                       struct blocks_ref **refs, size_t *n, struct snapshot_info *info)
{
    struct loader ld = { .ns = ns };
    int rc = load(plain, db, block_size, &ld, info);
    if (rc) {
        free(ld.refs);
        return rc;
    }
    blocks_refs_sort(ld.refs, ld.n);
    *refs = ld.refs;
    *n = ld.n;
    return 0;
}
