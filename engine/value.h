/*
 * SQL values as the engine computes with them: NULL, BIGINT, DOUBLE,
 * VARCHAR, BOOLEAN and TIMESTAMP (microseconds since the epoch, UTC). A
 * VARCHAR's bytes belong to whoever made the value: a row owns those of its
 * values (row_free), an expression's result points into its inputs.
 */
#ifndef CKPT_ENGINE_VALUE_H
#define CKPT_ENGINE_VALUE_H

#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

enum type { T_NULL = 0, T_BIGINT, T_DOUBLE, T_VARCHAR, T_BOOLEAN, T_TIMESTAMP };

/* 16 bytes: rows, keys and a group's bags are arrays of them, and their
 * size is what a step waits for in memory. */
struct value {
    enum type t;
    uint32_t len; /* VARCHAR: the length of s (VALUE_MAX_STRING at most) */
    union {
        int64_t i; /* BIGINT, TIMESTAMP */
        double d;
        int b;
        const char *s; /* VARCHAR: len bytes, NUL after them only in a row */
    };
};

#define VALUE_MAX_STRING UINT32_MAX
_Static_assert(sizeof(struct value) == 16, "a value is 16 bytes");

/* "BIGINT", "DOUBLE" ... ("NULL" for T_NULL). */
const char *type_name(enum type t);

/* Total order within a type (numbers compared across BIGINT and DOUBLE;
 * NULL before everything), as MIN, MAX and grouping need it. Integers of
 * one type are compared inline: a step compares them per record. */
int value_order(const struct value *a, const struct value *b);
static inline int value_cmp(const struct value *a, const struct value *b)
{
    if (a->t == b->t && (a->t == T_BIGINT || a->t == T_TIMESTAMP))
        return (a->i > b->i) - (a->i < b->i);
    return value_order(a, b);
}
static inline int value_eq(const struct value *a, const struct value *b)
{
    return value_cmp(a, b) == 0;
}
uint64_t value_hash(const struct value *v, uint64_t seed);

/* A numeric value as a double (BIGINT widened). */
double value_num(const struct value *v);

/* Appends v as JSON (TIMESTAMP as "YYYY-MM-DD HH:MM:SS[.ffffff]"). */
int value_json(const struct value *v, struct buf *out);

/* The same, unchecked, at p, for a value whose JSON is short and needs no
 * escaping (not a VARCHAR or TIMESTAMP): p has room for VALUE_SHORT_MAX
 * bytes. Returns the length written, or 0 for a VARCHAR or TIMESTAMP. */
#define VALUE_SHORT_MAX 32 /* DTOA_MAX, and INT64_MIN's 20 */
size_t value_json_short(const struct value *v, char *p);

/* Parses text as a value of type t (a CSV field, a SQL literal's text):
 * -EINVAL if it is not one. VARCHAR points into text. */
int value_parse(enum type t, const char *text, size_t len, struct value *out);

/* A row of n values owning its strings. */
struct row {
    size_t n;
    struct value v[];
};

/* A copy of v[0..n) whose strings it owns; NULL if out of memory. */
struct row *row_new(const struct value *v, size_t n);

/* The same in place: r has row_size(v, n) bytes. Returns r. */
size_t row_size(const struct value *v, size_t n);
struct row *row_init(struct row *r, const struct value *v, size_t n);
void row_free(struct row *r);
/* value_hash of each value in turn, from ROW_HASH_SEED. */
#define ROW_HASH_SEED 0x5bd1e995
uint64_t row_hash(const struct value *v, size_t n);
int row_eq(const struct value *a, const struct value *b, size_t n);

#endif
