/*
 * Incremental view maintenance (contract in ivm.h).
 *
 * A group is the rows of the table (passing WHERE) with one value of the
 * GROUP BY columns. Its state:
 *   rows         the number of such rows (weights summed): COUNT(*)
 *   per argument n (non-NULL values), isum/dsum (SUM, AVG), and for MIN
 *                and MAX a bag: the distinct non-NULL values, sorted, each
 *                with its multiplicity (an append-only table's: its
 *                smallest and largest alone).
 * Aggregates of one argument and kind share a state (struct state): SUM and
 * AVG of a column keep one pair of sums, its MIN and MAX one bag.
 * Invariants:
 *   1. A group with rows == 0 does not exist (unless the view has no GROUP
 *      BY: the one group always exists).
 *   2. A group touched in the current step is on the touched array once,
 *      with `before`, its output row as of the step's start (NULL if it did
 *      not exist then). A step's changes come out in the reverse order of
 *      the touches: outputs must stay byte for byte what earlier versions
 *      wrote, since an exactly_once replay compares them.
 *   3. Outside a step (after ivm_flush), no group is touched.
 *   4. A group changed since the last ivm_save is on the dirty list once
 *      (dirty_at is its place + 1); a group that was in a saved batch and
 *      is gone since has its key on the tombstone list.
 *   5. Inserts wait in a short queue (struct queued) and are applied in the
 *      order they came, QUEUE inserts later; meanwhile the memory they will
 *      touch is fetched ahead (below). Outside ivm_change the queue is
 *      empty: every other entry point drains it first, and so does a
 *      delete before it is checked.
 *
 * Why the queue: with a hundred thousand groups, an insert's slot and its
 * group's block are each a cache miss, and those misses were most of a
 * step's time. An insert's slot is prefetched when it is queued; QUEUE/2
 * inserts later a probe over slots now at hand finds its group (if it
 * exists), whose block is prefetched; QUEUE/2 later still the insert is
 * applied, its memory at hand.
 *
 * Batch files (ivm_save, ivm_load): a view's groups, all of them (a base)
 * or those changed since the last batch (a delta, applied over the batches
 * before it). Little-endian:
 *
 *   "CKIV" u8 version (1) u8 kind (1 base, 2 delta) u16 flags u32 items u64 records
 *   flags: 1 = a MIN's or MAX's bag keeps extremes alone (an append-only
 *           table's): its smallest, its largest, or both
 *   record: u8 tag (1 group, 2 tombstone), the key (the GROUP BY values),
 *           and for a group: i64 rows, then per aggregate item what it
 *           keeps: COUNT(e) i64 n; SUM and AVG i64 n, i128 isum (u64 low,
 *           u64 high), f64 dsum; MIN and MAX i64 n, u64 bag entries, each a
 *           value and an i64 count (COUNT(*) and GROUP BY columns: nothing;
 *           a shared state comes once per item that reads it)
 *   value:  u8 type, then BIGINT and TIMESTAMP i64, DOUBLE f64, BOOLEAN u8,
 *           VARCHAR u32 length and the bytes, NULL nothing
 *   u64 XXH3 of everything before it
 */
#include "ivm.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "util/arena.h"
#include "util/err.h"
#include "util/le.h"
#include "util/slab.h"

struct entry { /* a bag's value and its multiplicity */
    struct value v;
    int64_t count;
};

/* Most bags hold one or two values (an append-only table's hold no more):
 * they live in `inl`, inside the group's block, where a lookup has brought
 * them already; a third moves them all to the heap. */
struct bag {
    struct entry *v; /* sorted by value_cmp; inl, or from malloc */
    uint32_t n, cap;
    struct entry inl[2];
};

/* 8-byte aligned, so that sums take 32 bytes, not 48: a group's block is
 * what a lookup waits for, line by line. */
typedef __int128 int128_a8 __attribute__((aligned(8)));

/* What a state keeps (the batch format's words, at the top); each begins
 * with n, and takes only its own bytes of a group's block. */
enum kind { K_NONE, K_COUNT, K_SUMS, K_BAG };

struct sums {
    int64_t n;
    int128_a8 isum;
    double dsum;
};

struct bagst {
    int64_t n;
    struct bag bag;
};

/* A state of the view's groups: its kind, the first item that reads it
 * (whose argument it takes), and its offset in a group's block. */
struct state {
    enum kind kind;
    size_t item;
    size_t at;
};

/* A group's block: this header, its states, then its key (a row, strings
 * and all), so that every offset but the key's end is the view's. */
struct group {
    uint64_t hash;
    int64_t rows;
    struct row *before;
    size_t dirty_at; /* invariant 4 */
    uint32_t touched;
    uint32_t saved; /* in the batches saved so far */
};

/* The groups' table: open addressing, linear probing, at most half full.
 * A slot keeps the group's hash, so a probe past other groups reads the
 * table alone, not their blocks. */
struct slot {
    uint64_t hash;
    struct group *g; /* NULL: empty */
};

#define QUEUE 16 /* a power of two */

/* A queued insert (invariant 5): what it needs of its row, evaluated, in a
 * row of its own (row_init: the strings copied too, if the view has any,
 * since the input's go with the input's row): the GROUP BY values, then
 * per state its argument. The buffer is reused by the next insert. */
struct queued {
    uint64_t hash;
    struct buf row;
};

struct ivm {
    const struct view *v;
    struct slot *slots;
    size_t nslots;
    uint64_t ngroups;
    struct state *states;
    size_t nstates;
    size_t *state_of;       /* item -> its state's index + 1, or 0 (state_at()) */
    size_t key_at;          /* in a group's block */
    size_t block_bytes;     /* of a group's block, its key's strings aside: what is prefetched */
    struct group **touched; /* invariant 2 */
    size_t ntouched, touched_cap;
    struct queued queue[QUEUE]; /* invariant 5 */
    uint64_t queued, applied;   /* inserts ever queued and applied: queue[n % QUEUE] */
    struct value *values;       /* a change's key and args (key_and_args) */
    struct value *scratch;      /* an output row being built */
    unsigned char *loaded;      /* per state: read already from the record being loaded */
    struct group **dirty;       /* invariant 4 */
    size_t ndirty, dirty_cap;
    struct row **tombs;
    size_t ntombs, tombs_cap;
    struct arena step;   /* the touched groups' `before` rows, until the flush */
    int extremes_only;   /* the table is append-only: bags keep their extremes */
    int strings;         /* a key or an argument may be a VARCHAR */
    struct slab *blocks; /* the groups' blocks, if a key has no strings: all of one size */
};

/* ---- bags ---- */

/* x with its string copied: a bag's values outlive the rows they came from. */
static int own(const struct value *x, struct value *out)
{
    *out = *x;
    return x->t == T_VARCHAR && !(out->s = strndup(x->s, x->len)) ? -ENOMEM : 0;
}

static void disown(const struct value *v)
{
    if (v->t == T_VARCHAR)
        free((char *)v->s);
}

static size_t bag_find(const struct bag *b, const struct value *x, int *found)
{
    size_t lo = 0, hi = b->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = value_cmp(&b->v[mid].v, x);
        if (c == 0) {
            *found = 1;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = 0;
    return lo;
}

static int bag_add(struct bag *b, const struct value *x, int64_t weight)
{
    int found;
    size_t i = bag_find(b, x, &found);
    if (found) {
        if ((b->v[i].count += weight) == 0) {
            disown(&b->v[i].v);
            memmove(&b->v[i], &b->v[i + 1], (b->n - i - 1) * sizeof *b->v);
            b->n--;
        }
        return 0;
    }
    if (!b->cap) {
        b->v = b->inl;
        b->cap = 2;
    } else if (b->n == b->cap) {
        uint32_t cap = 2 * b->cap;
        struct entry *v =
            cap > b->cap ? realloc(b->v == b->inl ? NULL : b->v, cap * sizeof *v) : NULL;
        if (!v)
            return -ENOMEM;
        if (b->v == b->inl)
            memcpy(v, b->inl, sizeof b->inl);
        b->v = v, b->cap = cap;
    }
    struct entry e = { .count = weight };
    if (own(x, &e.v))
        return -ENOMEM;
    memmove(&b->v[i + 1], &b->v[i], (b->n - i) * sizeof *b->v);
    b->v[i] = e;
    b->n++;
    return 0;
}

/* An append-only table's bag: its smallest and largest values alone, each
 * counted once, since none of its values can be deleted. */
static int bag_keep_extremes(struct bag *b, const struct value *x)
{
    if (b->n < 2) {
        int found;
        bag_find(b, x, &found);
        return found ? 0 : bag_add(b, x, 1);
    }
    struct entry *e = value_cmp(x, &b->v[0].v) < 0          ? &b->v[0]
                      : value_cmp(x, &b->v[b->n - 1].v) > 0 ? &b->v[b->n - 1]
                                                            : NULL;
    if (!e)
        return 0;
    struct value copy;
    if (own(x, &copy))
        return -ENOMEM;
    disown(&e->v);
    e->v = copy;
    return 0;
}

static void bag_free(struct bag *b)
{
    for (size_t i = 0; i < b->n; i++)
        disown(&b->v[i].v);
    if (b->v != b->inl)
        free(b->v);
}

/* ---- groups ---- */

static enum kind kind_of(const struct item *it)
{
    if (!it->is_agg || it->agg == A_COUNT_STAR)
        return K_NONE;
    return it->agg == A_COUNT ? K_COUNT : it->agg == A_SUM || it->agg == A_AVG ? K_SUMS : K_BAG;
}

static size_t state_bytes(enum kind k)
{
    return k == K_COUNT  ? sizeof(int64_t)
           : k == K_SUMS ? sizeof(struct sums)
                         : sizeof(struct bagst);
}

static void *state_at(const struct ivm *m, const struct group *g, size_t s)
{
    return (char *)g + m->states[s].at;
}

static struct bag *bag_of(const struct ivm *m, const struct group *g, size_t s)
{
    return &((struct bagst *)state_at(m, g, s))->bag;
}

/* Item i's state, or NULL if it keeps none. */
static const void *item_state(const struct ivm *m, const struct group *g, size_t i)
{
    return m->state_of[i] ? state_at(m, g, m->state_of[i] - 1) : NULL;
}

static struct row *key_of(const struct ivm *m, const struct group *g)
{
    return (struct row *)((char *)g + m->key_at);
}

static void group_free(const struct ivm *m, struct group *g)
{
    for (size_t s = 0; s < m->nstates; s++)
        if (m->states[s].kind == K_BAG)
            bag_free(bag_of(m, g, s));
    if (m->blocks)
        slab_put(m->blocks, g);
    else
        free(g);
}

static void place(struct slot *slots, size_t n, uint64_t h, struct group *g)
{
    size_t i = h & (n - 1);
    while (slots[i].g)
        i = (i + 1) & (n - 1);
    slots[i] = (struct slot){ h, g };
}

static int grow_slots(struct ivm *m)
{
    size_t n = m->nslots ? m->nslots * 2 : 1024;
    struct slot *slots = huge_calloc(n * sizeof *slots);
    if (!slots)
        return -ENOMEM;
    for (size_t i = 0; i < m->nslots; i++)
        if (m->slots[i].g)
            place(slots, n, m->slots[i].hash, m->slots[i].g);
    huge_free(m->slots, m->nslots * sizeof *m->slots);
    m->slots = slots;
    m->nslots = n;
    return 0;
}

static struct group *find(struct ivm *m, const struct value *key, uint64_t h)
{
    size_t mask = m->nslots - 1;
    for (size_t i = h & mask; m->slots[i].g; i = (i + 1) & mask)
        if (m->slots[i].hash == h && row_eq(key_of(m, m->slots[i].g)->v, key, m->v->ngroup))
            return m->slots[i].g;
    return NULL;
}

static struct group *add_group(struct ivm *m, const struct value *key, uint64_t h)
{
    if (2 * (m->ngroups + 1) > m->nslots && grow_slots(m))
        return NULL;
    struct group *g =
        m->blocks ? slab_get(m->blocks) : calloc(1, m->key_at + row_size(key, m->v->ngroup));
    if (!g)
        return NULL;
    row_init(key_of(m, g), key, m->v->ngroup);
    g->hash = h;
    place(m->slots, m->nslots, h, g);
    m->ngroups++;
    return g;
}

/* Its slot emptied, and the groups probed past it moved up (backward-shift
 * deletion: no tombstones in the table). */
static void unlink_group(struct ivm *m, struct group *g)
{
    size_t mask = m->nslots - 1, i = g->hash & mask;
    while (m->slots[i].g != g)
        i = (i + 1) & mask;
    for (size_t j = i;;) {
        j = (j + 1) & mask;
        if (!m->slots[j].g)
            break;
        size_t home = m->slots[j].hash & mask;
        if (i <= j ? i < home && home <= j : i < home || home <= j)
            continue; /* it may stay: its probe does not pass the hole */
        m->slots[i] = m->slots[j];
        i = j;
    }
    m->slots[i].g = NULL;
    m->ngroups--;
}

/* Invariant 4. */
static int mark_dirty(struct ivm *m, struct group *g)
{
    if (g->dirty_at)
        return 0;
    if (array_grow((void **)&m->dirty, &m->dirty_cap, m->ndirty, sizeof *m->dirty))
        return -ENOMEM;
    m->dirty[m->ndirty++] = g;
    g->dirty_at = m->ndirty;
    return 0;
}

/* A group that no longer exists goes; a saved one leaves a tombstone. */
static int forget_group(struct ivm *m, struct group *g)
{
    int rc = 0;
    if (g->dirty_at) { /* its place on the dirty list goes to the last one */
        struct group *last = m->dirty[--m->ndirty];
        m->dirty[g->dirty_at - 1] = last;
        last->dirty_at = last == g ? 0 : g->dirty_at;
    }
    if (g->saved) {
        if (array_grow((void **)&m->tombs, &m->tombs_cap, m->ntombs, sizeof *m->tombs))
            rc = -ENOMEM;
        else if (!(m->tombs[m->ntombs] = row_new(key_of(m, g)->v, m->v->ngroup)))
            rc = -ENOMEM;
        else
            m->ntombs++;
    }
    unlink_group(m, g);
    group_free(m, g);
    return rc;
}

/* ---- output rows ---- */

/* Item it's value, from its state st. */
static void result(const struct item *it, const void *st, int64_t rows, struct value *out)
{
    const struct sums *sums = st;
    const struct bag *b;
    out->t = T_NULL;
    switch (it->agg) {
    case A_COUNT_STAR:
        *out = (struct value){ .t = T_BIGINT, .i = rows };
        return;
    case A_COUNT:
        *out = (struct value){ .t = T_BIGINT, .i = *(const int64_t *)st };
        return;
    case A_SUM:
        if (sums->n && it->type == T_DOUBLE)
            *out = (struct value){ .t = T_DOUBLE, .d = sums->dsum };
        else if (sums->n && sums->isum >= INT64_MIN && sums->isum <= INT64_MAX)
            *out = (struct value){ .t = T_BIGINT, .i = (int64_t)sums->isum };
        return;
    case A_AVG:
        if (sums->n)
            *out =
                (struct value){ .t = T_DOUBLE,
                                .d = (it->arg->type == T_DOUBLE ? sums->dsum : (double)sums->isum) /
                                     (double)sums->n };
        return;
    case A_MIN:
    case A_MAX:
        b = &((const struct bagst *)st)->bag;
        if (b->n)
            *out = b->v[it->agg == A_MIN ? 0 : b->n - 1].v;
        return;
    }
}

/* The group's output row, in m->scratch. */
static void output(struct ivm *m, const struct group *g)
{
    const struct view *v = m->v;
    for (size_t i = 0; i < v->nitems; i++) {
        const struct item *it = &v->items[i];
        if (it->is_agg)
            result(it, item_state(m, g, i), g->rows, &m->scratch[i]);
        else
            m->scratch[i] = key_of(m, g)->v[it->group];
    }
}

static int exists(const struct ivm *m, const struct group *g)
{
    return g->rows > 0 || m->v->ngroup == 0;
}

/* Invariant 2. */
static int touch(struct ivm *m, struct group *g)
{
    if (g->touched)
        return 0;
    if (exists(m, g)) {
        output(m, g);
        struct row *r = arena_alloc(&m->step, row_size(m->scratch, m->v->nitems));
        if (!r)
            return -ENOMEM;
        g->before = row_init(r, m->scratch, m->v->nitems);
    }
    if (array_grow((void **)&m->touched, &m->touched_cap, m->ntouched, sizeof *m->touched))
        return -ENOMEM;
    m->touched[m->ntouched++] = g;
    g->touched = 1;
    return 0;
}

/* ---- changes ---- */

/* x: the state's argument, evaluated (key_and_args). */
static int update(const struct ivm *m, void *st, enum kind kind, const struct value *x, int weight)
{
    if (x->t == T_NULL)
        return 0;
    *(int64_t *)st += weight; /* every state's n */
    if (kind == K_SUMS) {
        struct sums *s = st;
        if (x->t == T_DOUBLE)
            s->dsum += weight * x->d;
        else
            s->isum += (__int128)weight * x->i;
        if (s->n == 0) /* no rounding left behind by values that came and went */
            s->dsum = 0;
    } else if (kind == K_BAG) {
        struct bag *b = &((struct bagst *)st)->bag;
        return m->extremes_only ? bag_keep_extremes(b, x) : bag_add(b, x, weight);
    }
    return 0;
}

/* A deletion must find what it deletes: the group's rows, and each MIN and
 * MAX argument in its bag. Checked before anything changes. */
static int can_delete(const struct ivm *m, const struct group *g, const struct value *args)
{
    int ok = g && g->rows > 0;
    for (size_t s = 0; ok && s < m->nstates; s++)
        if (m->states[s].kind == K_BAG && args[s].t != T_NULL)
            bag_find(bag_of(m, g, s), &args[s], &ok);
    return ok ? 0 : err_set(-EINVAL, "view %s: a deleted row was never inserted", m->v->name);
}

/* A change to the group of key (hash h), its states' arguments evaluated. */
static int apply(struct ivm *m, const struct value *key, uint64_t h, const struct value *args,
                 int weight)
{
    struct group *g = find(m, key, h);
    int rc = weight < 0 ? can_delete(m, g, args) : 0;
    if (rc)
        return rc;
    if (!g && !(g = add_group(m, key, h)))
        return -ENOMEM;
    rc = touch(m, g);
    if (rc == 0)
        rc = mark_dirty(m, g);
    for (size_t s = 0; rc == 0 && s < m->nstates; s++)
        rc = update(m, state_at(m, g, s), m->states[s].kind, &args[s], weight);
    g->rows += weight;
    return rc;
}

/* ---- prepared changes ----
 *
 * A prepared change (ivm_prepare) is one value beside its row: the group
 * key's hash as a BIGINT, or NULL if the row fails WHERE. One value, since
 * rows parsed ahead wait in memory for the step; the aggregates' arguments
 * are read from the row when the change is applied.
 */

void ivm_prepare(const struct view *v, const struct value *row, struct value *prep)
{
    uint64_t h = ROW_HASH_SEED;
    if (v->where) {
        expr_eval(v->where, row, prep);
        if (prep->t != T_BOOLEAN || !prep->b) {
            prep->t = T_NULL;
            return;
        }
    }
    for (size_t i = 0; i < v->ngroup; i++) /* row_hash of the key */
        h = value_hash(&row[v->group[i]], h);
    *prep = (struct value){ .t = T_BIGINT, .i = (int64_t)h };
}

/* The group's key and the states' arguments of a row, in out: the key,
 * then an argument per state. */
static void key_and_args(const struct ivm *m, const struct value *row, struct value *out)
{
    const struct view *v = m->v;
    struct value *args = out + v->ngroup;
    for (size_t i = 0; i < v->ngroup; i++)
        out[i] = row[v->group[i]];
    for (size_t s = 0; s < m->nstates; s++) {
        const struct expr *e = v->items[m->states[s].item].arg;
        if (e->op == E_COLUMN) /* the usual argument: no call for it */
            args[s] = row[e->column];
        else
            expr_eval(e, row, &args[s]);
    }
}

/* Every cache line of [p, p + n): a block from malloc starts anywhere in
 * a line, so its last bytes may lie a line further than n / 64 lines on. */
static void prefetch_lines(const void *p, size_t n)
{
    uintptr_t line = (uintptr_t)p & ~(uintptr_t)63, end = (uintptr_t)p + n;
    for (; line < end; line += 64)
        __builtin_prefetch((const void *)line);
}

/* Invariant 5: the group of the insert queued QUEUE/2 ago. */
static void prefetch_group(const struct ivm *m)
{
    if (m->queued - m->applied <= QUEUE / 2)
        return;
    const struct queued *q = &m->queue[(m->queued - 1 - QUEUE / 2) % QUEUE];
    size_t mask = m->nslots - 1;
    for (size_t i = q->hash & mask; m->slots[i].g; i = (i + 1) & mask)
        if (m->slots[i].hash == q->hash) {
            prefetch_lines(m->slots[i].g, m->block_bytes);
            break;
        }
}

static int apply_queued(struct ivm *m)
{
    const struct queued *q = &m->queue[m->applied++ % QUEUE];
    const struct row *r = (const struct row *)q->row.data;
    return apply(m, r->v, q->hash, r->v + m->v->ngroup, 1);
}

static int drain(struct ivm *m)
{
    int rc = 0;
    while (rc == 0 && m->applied < m->queued)
        rc = apply_queued(m);
    m->applied = m->queued; /* after an error the rest goes: the pipeline fails */
    return rc;
}

static int enqueue(struct ivm *m, const struct value *row, const struct value *prep)
{
    struct queued *q = &m->queue[m->queued % QUEUE];
    size_t n = m->v->ngroup + m->nstates;
    q->hash = (uint64_t)prep->i;
    if (m->strings) {
        key_and_args(m, row, m->values);
        buf_reset(&q->row);
        if (buf_reserve(&q->row, row_size(m->values, n)))
            return -ENOMEM;
        row_init((struct row *)q->row.data, m->values, n);
    } else /* the row's room was made by ivm_new */
        key_and_args(m, row, ((struct row *)q->row.data)->v);
    __builtin_prefetch(&m->slots[q->hash & (m->nslots - 1)]);
    m->queued++;
    prefetch_group(m);
    return m->queued - m->applied == QUEUE ? apply_queued(m) : 0;
}

int ivm_change_prepared(struct ivm *m, const struct value *row, const struct value *prep,
                        int weight)
{
    const struct view *v = m->v;
    if (weight < 0 && m->extremes_only)
        return err_set(-EINVAL, "view %s: table %s is append-only: no deletes", v->name,
                       v->from->name);
    if (prep->t == T_NULL) /* WHERE said no */
        return 0;
    int rc = weight > 0 ? enqueue(m, row, prep) : drain(m);
    if (rc == 0 && weight < 0) {
        key_and_args(m, row, m->values);
        rc = apply(m, m->values, (uint64_t)prep->i, m->values + v->ngroup, weight);
    }
    return rc ? err_wrap(rc, "view %s", v->name) : 0;
}

int ivm_change(struct ivm *m, const struct value *row, int weight)
{
    struct value prep[IVM_PREP_WIDTH];
    ivm_prepare(m->v, row, prep);
    return ivm_change_prepared(m, row, prep, weight);
}

/* One touched group's changes; the group goes if it no longer exists. */
static int flush_group(struct ivm *m, struct group *g, ivm_emit_fn emit, void *arg)
{
    int rc = 0, now = exists(m, g);
    if (now)
        output(m, g);
    int same = now && g->before && row_eq(g->before->v, m->scratch, m->v->nitems);
    if (g->before && !same)
        rc = emit(arg, g->before->v, -1);
    if (rc == 0 && now && !same)
        rc = emit(arg, m->scratch, 1);
    g->before = NULL;
    g->touched = 0;
    if (!now) {
        int gone = forget_group(m, g);
        rc = rc ? rc : gone;
    }
    return rc;
}

/* Groups this many places ahead in the touched array are prefetched. */
#define FLUSH_AHEAD 8

int ivm_flush(struct ivm *m, ivm_emit_fn emit, void *arg)
{
    int rc = drain(m);
    for (size_t i = m->ntouched; i-- > 0;) { /* invariant 2: the last touched first */
        if (i >= FLUSH_AHEAD)
            prefetch_lines(m->touched[i - FLUSH_AHEAD], m->block_bytes);
        int one = flush_group(m, m->touched[i], emit, arg);
        rc = rc ? rc : one;
    }
    m->ntouched = 0;
    arena_reset(&m->step);
    return rc;
}

int ivm_scan(struct ivm *m, ivm_emit_fn fn, void *arg)
{
    int rc = drain(m);
    for (size_t i = 0; rc == 0 && i < m->nslots; i++)
        if (m->slots[i].g && exists(m, m->slots[i].g)) {
            output(m, m->slots[i].g);
            rc = fn(arg, m->scratch, 1);
        }
    return rc;
}

uint64_t ivm_groups(const struct ivm *m)
{
    return m->ngroups;
}

/* Without strings, what is copied is of one size: a key's group blocks
 * come from a slab, and a queued insert's row has its room made once. */
static int sizes_init(struct ivm *m)
{
    const struct view *v = m->v;
    size_t n = v->ngroup + m->nstates;
    int key_strings = 0;
    for (size_t i = 0; i < v->ngroup; i++)
        key_strings |= v->from->cols[v->group[i]].type == T_VARCHAR;
    int rc = key_strings ? 0 : slab_new(m->block_bytes, &m->blocks);
    if (rc == -ENOMEM) /* -EINVAL: blocks too large for a slab, so malloc's */
        return rc;
    m->strings = key_strings;
    for (size_t s = 0; s < m->nstates; s++)
        m->strings |= v->items[m->states[s].item].arg->type == T_VARCHAR;
    for (size_t i = 0; !m->strings && i < QUEUE; i++) {
        if (buf_reserve(&m->queue[i].row, sizeof(struct row) + n * sizeof(struct value)))
            return -ENOMEM;
        ((struct row *)m->queue[i].row.data)->n = n;
    }
    return 0;
}

static int same_arg(const struct expr *a, const struct expr *b)
{
    return a == b || (a->op == E_COLUMN && b->op == E_COLUMN && a->column == b->column);
}

/* The states (one per kind and argument), where they lie in a group's
 * block, and what of the block is prefetched: all but the key's strings. */
static int layout_init(struct ivm *m)
{
    const struct view *v = m->v;
    if (!(m->values = calloc(v->ngroup + v->nitems + 1, sizeof *m->values)) ||
        !(m->state_of = calloc(v->nitems + 1, sizeof *m->state_of)) ||
        !(m->states = calloc(v->nitems + 1, sizeof *m->states)) ||
        !(m->loaded = calloc(v->nitems + 1, 1)))
        return -ENOMEM;
    size_t at = sizeof(struct group);
    for (size_t i = 0; i < v->nitems; i++) {
        enum kind k = kind_of(&v->items[i]);
        size_t s = 0;
        if (k == K_NONE)
            continue;
        while (s < m->nstates && !(m->states[s].kind == k &&
                                   same_arg(v->items[m->states[s].item].arg, v->items[i].arg)))
            s++;
        if (s == m->nstates) {
            m->states[m->nstates++] = (struct state){ k, i, at };
            at += state_bytes(k);
        }
        m->state_of[i] = s + 1;
    }
    m->key_at = at;
    m->block_bytes = at + sizeof(struct row) + v->ngroup * sizeof(struct value);
    return sizes_init(m);
}

/* Every offset in a group's block stays aligned for what lies there. */
_Static_assert(sizeof(struct group) % 8 == 0 && sizeof(struct sums) % 8 == 0 &&
                   sizeof(struct bagst) % 8 == 0 && _Alignof(struct row) <= 8,
               "a group's block keeps 8-byte offsets");

int ivm_new(const struct view *v, struct ivm **out)
{
    struct ivm *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    m->v = v;
    m->extremes_only = table_append_only(v->from);
    int rc =
        v->ngroup <= 64 ? 0 : err_set(-EINVAL, "view %s: more than 64 GROUP BY columns", v->name);
    if (rc == 0 && (!(m->scratch = calloc(v->nitems + 1, sizeof *m->scratch)) || grow_slots(m) ||
                    layout_init(m)))
        rc = -ENOMEM;
    struct group *all = NULL;
    if (rc == 0 && v->ngroup == 0) { /* the one group: its first row comes out at once */
        if (!(all = add_group(m, NULL, row_hash(NULL, 0))))
            rc = -ENOMEM;
        else
            rc = touch(m, all);
        if (all)
            all->before = NULL;
    }
    if (rc) {
        ivm_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

void ivm_free(struct ivm *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->nslots; i++)
        if (m->slots[i].g)
            group_free(m, m->slots[i].g);
    for (size_t i = 0; i < m->ntombs; i++)
        row_free(m->tombs[i]);
    free(m->tombs);
    free(m->dirty);
    free(m->touched);
    free(m->values);
    free(m->state_of);
    free(m->states);
    free(m->loaded);
    for (size_t i = 0; i < QUEUE; i++)
        buf_free(&m->queue[i].row);
    slab_free(m->blocks);
    huge_free(m->slots, m->nslots * sizeof *m->slots);
    free(m->scratch);
    arena_free(&m->step);
    free(m);
}

/* ---- batches ---- */

#define BATCH_MAGIC   "CKIV"
#define BATCH_VERSION 1
#define F_EXTREMES    1

static int put_f64(struct buf *b, double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return le_put(b, u, 8);
}

static int put_value(struct buf *b, const struct value *v)
{
    int rc = le_put(b, (uint64_t)v->t, 1);
    if (rc || v->t == T_NULL)
        return rc;
    switch (v->t) {
    case T_DOUBLE:
        return put_f64(b, v->d);
    case T_BOOLEAN:
        return le_put(b, (uint64_t)v->b, 1);
    case T_VARCHAR:
        rc = le_put(b, v->len, 4);
        return rc ? rc : buf_append(b, v->s, v->len);
    default:
        return le_put(b, (uint64_t)v->i, 8);
    }
}

static int put_key(struct buf *b, const struct ivm *m, const struct row *key, int tag)
{
    int rc = le_put(b, (uint64_t)tag, 1);
    for (size_t i = 0; rc == 0 && i < m->v->ngroup; i++)
        rc = put_value(b, &key->v[i]);
    return rc;
}

static int put_state(struct buf *b, enum kind kind, const void *st)
{
    int rc = le_put(b, (uint64_t) * (const int64_t *)st, 8);
    if (rc == 0 && kind == K_SUMS) {
        const struct sums *sums = st;
        unsigned __int128 u = (unsigned __int128)sums->isum;
        rc = le_put(b, (uint64_t)u, 8);
        if (rc == 0)
            rc = le_put(b, (uint64_t)(u >> 64), 8);
        if (rc == 0)
            rc = put_f64(b, sums->dsum);
    }
    if (rc == 0 && kind == K_BAG) {
        const struct bag *bag = &((const struct bagst *)st)->bag;
        rc = le_put(b, bag->n, 8);
        for (size_t e = 0; rc == 0 && e < bag->n; e++) {
            rc = put_value(b, &bag->v[e].v);
            if (rc == 0)
                rc = le_put(b, (uint64_t)bag->v[e].count, 8);
        }
    }
    return rc;
}

static int put_group(struct buf *b, const struct ivm *m, struct group *g)
{
    int rc = put_key(b, m, key_of(m, g), 1);
    if (rc == 0)
        rc = le_put(b, (uint64_t)g->rows, 8);
    for (size_t i = 0; rc == 0 && i < m->v->nitems; i++)
        if (m->state_of[i])
            rc = put_state(b, m->states[m->state_of[i] - 1].kind, item_state(m, g, i));
    g->saved = 1;
    g->dirty_at = 0;
    return rc;
}

int ivm_save(struct ivm *m, int base, struct buf *out)
{
    int rc = drain(m);
    uint64_t records = base ? m->ngroups : m->ntombs + m->ndirty;
    if (rc == 0)
        rc = buf_append(out, BATCH_MAGIC, 4);
    if (rc == 0)
        rc = le_put(out,
                    BATCH_VERSION | (uint64_t)(base ? 1 : 2) << 8 |
                        (uint64_t)(m->extremes_only ? F_EXTREMES : 0) << 16,
                    4);
    if (rc == 0)
        rc = le_put(out, m->v->nitems, 4);
    if (rc == 0)
        rc = le_put(out, records, 8);
    for (size_t i = 0; rc == 0 && !base && i < m->ntombs; i++)
        rc = put_key(out, m, m->tombs[i], 2);
    for (size_t i = 0; rc == 0 && !base && i < m->ndirty; i++)
        rc = put_group(out, m, m->dirty[i]);
    for (size_t i = 0; rc == 0 && base && i < m->nslots; i++)
        if (m->slots[i].g)
            rc = put_group(out, m, m->slots[i].g);
    if (rc == 0)
        rc = le_put(out, XXH3_64bits(out->data, out->len), 8);
    for (size_t i = 0; i < m->ntombs; i++)
        row_free(m->tombs[i]);
    for (size_t i = 0; base && i < m->ndirty; i++)
        m->dirty[i]->dirty_at = 0;
    m->ntombs = m->ndirty = 0;
    return rc;
}

static double get_f64(struct le_reader *r)
{
    uint64_t u = le_get(r, 8);
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

/* A value; a VARCHAR points into the batch. */
static void get_value(struct le_reader *r, struct value *v)
{
    v->t = (enum type)le_get(r, 1);
    switch (v->t) {
    case T_NULL:
        return;
    case T_DOUBLE:
        v->d = get_f64(r);
        return;
    case T_BOOLEAN:
        v->b = (int)le_get(r, 1);
        return;
    case T_VARCHAR:
        v->len = (size_t)le_get(r, 4);
        v->s = (const char *)le_take(r, v->len);
        return;
    case T_BIGINT:
    case T_TIMESTAMP:
        v->i = (int64_t)le_get(r, 8);
        return;
    default:
        r->bad = 1;
    }
}

/* One item's copy of state s. A shared state's second copy adds only what
 * an append-only table's bags keep, for batches written before states were
 * shared held each item's own extreme. */
static void get_state(struct ivm *m, struct le_reader *r, struct group *g, size_t s)
{
    enum kind kind = m->states[s].kind;
    void *st = state_at(m, g, s);
    int again = m->loaded[s];
    int64_t n = (int64_t)le_get(r, 8);
    if (!again) {
        if (kind == K_BAG)
            bag_free(bag_of(m, g, s));
        memset(st, 0, state_bytes(kind));
        *(int64_t *)st = n;
        m->loaded[s] = 1;
    }
    if (kind == K_SUMS) {
        uint64_t lo = le_get(r, 8), hi = le_get(r, 8);
        double dsum = get_f64(r);
        struct sums *sums = st;
        if (!again)
            sums->isum = (__int128)(((unsigned __int128)hi << 64) | lo), sums->dsum = dsum;
    }
    uint64_t entries = kind == K_BAG ? le_get(r, 8) : 0;
    for (uint64_t e = 0; !r->bad && e < entries; e++) {
        struct value v;
        get_value(r, &v);
        int64_t count = (int64_t)le_get(r, 8);
        if (r->bad || count <= 0)
            r->bad = 1;
        else if (m->extremes_only ? bag_keep_extremes(bag_of(m, g, s), &v)
                                  : !again && bag_add(bag_of(m, g, s), &v, count))
            r->bad = 1;
    }
}

static int get_states(struct ivm *m, struct le_reader *r, struct group *g)
{
    memset(m->loaded, 0, m->nstates);
    for (size_t i = 0; !r->bad && i < m->v->nitems; i++)
        if (m->state_of[i])
            get_state(m, r, g, m->state_of[i] - 1);
    return r->bad ? -EBADMSG : 0;
}

/* A saved key of other types than the view's columns (the program was
 * changed) is refused: a group's block is sized by those types. */
static int key_types(const struct ivm *m, const struct value *key)
{
    const struct view *v = m->v;
    for (size_t i = 0; i < v->ngroup; i++) {
        const struct column *c = &v->from->cols[v->group[i]];
        if (key[i].t != T_NULL && key[i].t != c->type)
            return err_set(-EINVAL,
                           "view %s: a saved group's %s is a %s, not a %s (was the program "
                           "changed?)",
                           v->name, c->name, type_name(key[i].t), type_name(c->type));
    }
    return 0;
}

static int get_record(struct ivm *m, struct le_reader *r)
{
    struct value key[64];
    int tag = (int)le_get(r, 1);
    for (size_t i = 0; i < m->v->ngroup; i++)
        get_value(r, &key[i]);
    if (r->bad || (tag != 1 && tag != 2) || (tag == 2 && m->v->ngroup == 0))
        return -EBADMSG; /* the one group of a view without GROUP BY never goes */
    int rc = key_types(m, key);
    if (rc)
        return rc;
    uint64_t h = row_hash(key, m->v->ngroup);
    struct group *g = find(m, key, h);
    if (tag == 2) { /* a tombstone */
        if (g) {
            unlink_group(m, g);
            group_free(m, g);
        }
        return 0;
    }
    if (!g && !(g = add_group(m, key, h)))
        return -ENOMEM;
    g->rows = (int64_t)le_get(r, 8);
    g->saved = 1;
    return get_states(m, r, g);
}

/* What is loaded is the state as saved: nothing to emit (invariant 3). */
static void untouch_all(struct ivm *m)
{
    for (size_t i = 0; i < m->ntouched; i++) {
        m->touched[i]->touched = 0;
        m->touched[i]->before = NULL;
    }
    m->ntouched = 0;
    arena_reset(&m->step);
}

int ivm_load(struct ivm *m, const void *data, size_t len)
{
    const uint8_t *end = (const uint8_t *)data + len;
    if (len < 28 || memcmp(data, BATCH_MAGIC, 4))
        return err_set(-EBADMSG, "view %s: not a batch", m->v->name);
    struct le_reader r = { (const uint8_t *)data + 4, end - 8, 0 }, tail = { end - 8, end, 0 };
    if (le_get(&tail, 8) != XXH3_64bits(data, len - 8))
        return err_set(-EBADMSG, "view %s: a batch cut short or damaged", m->v->name);
    uint64_t head = le_get(&r, 4), items = le_get(&r, 4), records = le_get(&r, 8);
    if ((head & 0xff) != BATCH_VERSION || items != m->v->nitems)
        return err_set(-EBADMSG, "view %s: a batch of version %u for %llu columns, not this view's",
                       m->v->name, (unsigned)(head & 0xff), (unsigned long long)items);
    if ((head >> 16 & F_EXTREMES) && !m->extremes_only) /* its bags are not whole */
        return err_set(-EINVAL,
                       "view %s: saved when table %s was append-only (MIN and MAX kept their "
                       "extreme alone); now that it takes deletes the view must be built "
                       "afresh: start with a new storage directory",
                       m->v->name, m->v->from->name);
    int rc = drain(m);
    untouch_all(m);
    for (uint64_t i = 0; rc == 0 && i < records; i++)
        rc = get_record(m, &r);
    if (rc == 0 && r.p != r.end)
        rc = -EBADMSG;
    return rc == -EBADMSG ? err_set(rc, "view %s: a damaged batch", m->v->name) : rc;
}
