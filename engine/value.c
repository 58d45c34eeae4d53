#include "value.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "dtoa.h"

const char *type_name(enum type t)
{
    static const char *const names[] = { "NULL",    "BIGINT",  "DOUBLE",
                                         "VARCHAR", "BOOLEAN", "TIMESTAMP" };
    return names[t];
}

static int numeric(enum type t)
{
    return t == T_BIGINT || t == T_DOUBLE;
}

double value_num(const struct value *v)
{
    return v->t == T_BIGINT ? (double)v->i : v->d;
}

static int sign(double x)
{
    return (x > 0) - (x < 0);
}

int value_order(const struct value *a, const struct value *b)
{
    if (a->t == T_NULL || b->t == T_NULL)
        return (a->t != T_NULL) - (b->t != T_NULL);
    if (a->t == T_DOUBLE || b->t == T_DOUBLE)
        return numeric(a->t) && numeric(b->t) ? sign(value_num(a) - value_num(b))
                                              : (int)a->t - (int)b->t;
    if (a->t != b->t)
        return (int)a->t - (int)b->t;
    switch (a->t) {
    case T_VARCHAR: {
        size_t n = a->len < b->len ? a->len : b->len;
        int c = memcmp(a->s, b->s, n);
        return c ? (c > 0) - (c < 0) : (a->len > b->len) - (a->len < b->len);
    }
    case T_BOOLEAN:
        return (a->b > b->b) - (a->b < b->b);
    default:
        return (a->i > b->i) - (a->i < b->i);
    }
}

uint64_t value_hash(const struct value *v, uint64_t seed)
{
    switch (v->t) {
    case T_NULL:
        return XXH3_64bits_withSeed("", 0, seed ^ 0x9e37);
    case T_VARCHAR:
        return XXH3_64bits_withSeed(v->s, v->len, seed);
    case T_BOOLEAN:
        return XXH3_64bits_withSeed(&v->b, sizeof v->b, seed);
    case T_DOUBLE:
        if (v->d == floor(v->d) && fabs(v->d) < 9.2e18) { /* equal to a BIGINT: same hash */
            int64_t i = (int64_t)v->d;
            return XXH3_64bits_withSeed(&i, sizeof i, seed);
        }
        return XXH3_64bits_withSeed(&v->d, sizeof v->d, seed);
    default:
        return XXH3_64bits_withSeed(&v->i, sizeof v->i, seed);
    }
}

static int timestamp_text(int64_t us, struct buf *out)
{
    time_t secs = (time_t)(us >= 0 ? us / 1000000 : (us - 999999) / 1000000);
    int64_t frac = us - (int64_t)secs * 1000000;
    struct tm tm;
    char text[64];
    gmtime_r(&secs, &tm);
    size_t n = strftime(text, sizeof text, "%Y-%m-%d %H:%M:%S", &tm);
    if (frac)
        snprintf(text + n, sizeof text - n, ".%06lld", (long long)frac);
    return buf_printf(out, "\"%s\"", text);
}

/* Runs of plain bytes go in one append; the few that need it are escaped. */
static int string_json(const char *s, size_t len, struct buf *out)
{
    int rc = buf_append(out, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; rc == 0 && i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c != '"' && c != '\\' && c >= 0x20)
            continue;
        rc = buf_append(out, s + run, i - run);
        if (rc == 0)
            rc = c < 0x20 ? buf_printf(out, "\\u%04x", c) : buf_printf(out, "\\%c", c);
        run = i + 1;
    }
    rc = rc ? rc : buf_append(out, s + run, len - run);
    return rc ? rc : buf_append(out, "\"", 1);
}

/* Decimal digits at p, two at a time from the last; returns their count.
 * They are written where they go: a copy from a buffer just written would
 * wait for the stores to land. */
static size_t int_text(int64_t v, char *p)
{
    uint64_t u = v < 0 ? -(uint64_t)v : (uint64_t)v;
    size_t n = 1;
    for (uint64_t ten = 10; n < 20 && u >= ten; ten *= 10)
        n++;
    if (v < 0)
        *p++ = '-';
    char *q = p + n;
    for (; u >= 100; u /= 100)
        memcpy(q -= 2, digit_pairs + 2 * (u % 100), 2);
    if (u >= 10)
        memcpy(q - 2, digit_pairs + 2 * u, 2);
    else
        q[-1] = (char)('0' + u);
    return n + (v < 0);
}

_Static_assert(VALUE_SHORT_MAX >= DTOA_MAX, "a double's text fits");

size_t value_json_short(const struct value *v, char *p)
{
    switch (v->t) {
    case T_BIGINT:
        return int_text(v->i, p);
    case T_DOUBLE:
        if (isfinite(v->d))
            return dtoa_17g(v->d, p);
        __attribute__((fallthrough)); /* not a JSON number */
    case T_NULL:
        return memcpy(p, "null", 4), 4;
    case T_BOOLEAN:
        return v->b ? (memcpy(p, "true", 4), 4) : (memcpy(p, "false", 5), 5);
    default:
        return 0;
    }
}

int value_json(const struct value *v, struct buf *out)
{
    if (v->t == T_VARCHAR)
        return string_json(v->s, v->len, out);
    if (v->t == T_TIMESTAMP)
        return timestamp_text(v->i, out);
    if (buf_reserve(out, VALUE_SHORT_MAX))
        return -ENOMEM;
    out->len += value_json_short(v, (char *)out->data + out->len);
    out->data[out->len] = 0;
    return 0;
}

/* "YYYY-MM-DD[ T]HH:MM:SS[.ffffff]", or a date alone. */
static int parse_timestamp(const char *text, int64_t *us)
{
    struct tm tm = { 0 };
    char frac[8] = "";
    int y, mo, d, h = 0, mi = 0, s = 0, used = 0, got;
    got = sscanf(text, "%4d-%2d-%2d%n", &y, &mo, &d, &used);
    if (got != 3)
        return -EINVAL;
    const char *p = text + used;
    if (*p == ' ' || *p == 'T') {
        if (sscanf(p + 1, "%2d:%2d:%2d%n", &h, &mi, &s, &used) != 3)
            return -EINVAL;
        p += 1 + used;
        if (*p == '.' && sscanf(p + 1, "%6[0-9]%n", frac, &used) == 1)
            p += 1 + used;
    }
    if (*p || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60)
        return -EINVAL;
    tm.tm_year = y - 1900, tm.tm_mon = mo - 1, tm.tm_mday = d;
    tm.tm_hour = h, tm.tm_min = mi, tm.tm_sec = s;
    int64_t f = 0;
    for (int i = 0; i < 6; i++)
        f = f * 10 + (frac[i] && i < (int)strlen(frac) ? frac[i] - '0' : 0);
    *us = (int64_t)timegm(&tm) * 1000000 + f;
    return 0;
}

/* strtoll's grammar in base 10 (leading white space of the C locale, a
 * sign, digits), over the whole text and without its locale machinery,
 * which made it a twentieth of a pipeline's time. Below UINT64_MAX / 10
 * no digit can overflow: the exact check is made above it alone. */
static int parse_bigint(const char *s, size_t len, int64_t *out)
{
    size_t i = 0;
    while (i < len && (s[i] == ' ' || (s[i] >= '\t' && s[i] <= '\r')))
        i++;
    int neg = i < len && s[i] == '-';
    i += i < len && (s[i] == '-' || s[i] == '+');
    if (i == len)
        return -EINVAL;
    uint64_t v = 0;
    for (; i < len; i++) {
        unsigned d = (unsigned)(unsigned char)s[i] - '0';
        if (d > 9 || (v >= UINT64_MAX / 10 && v > (UINT64_MAX - d) / 10))
            return -EINVAL;
        v = v * 10 + d;
    }
    if (v > (uint64_t)INT64_MAX + (uint64_t)neg)
        return -EINVAL;
    *out = neg ? -(int64_t)(v - 1) - 1 : (int64_t)v;
    return 0;
}

/* A number, boolean or timestamp is shorter than this, or not one. */
#define SHORT_TEXT 64

/* The types that go through libc, on a NUL-terminated copy: apart, so
 * that BIGINT and VARCHAR, the common ones, need no room for the copy. */
__attribute__((noinline)) static int parse_with_libc(enum type t, const char *text, size_t len,
                                                     struct value *out)
{
    char tmp[SHORT_TEXT], *end;
    if (len == 0 || len >= sizeof tmp)
        return -EINVAL;
    memcpy(tmp, text, len);
    tmp[len] = '\0';
    errno = 0;
    switch (t) {
    case T_DOUBLE: /* NaN has no place in an order: not a value here */
        out->d = strtod(tmp, &end);
        return *end || errno == ERANGE || isnan(out->d) ? -EINVAL : 0;
    case T_BOOLEAN:
        if (!strcasecmp(tmp, "true") || !strcmp(tmp, "1"))
            return out->b = 1, 0;
        if (!strcasecmp(tmp, "false") || !strcmp(tmp, "0"))
            return out->b = 0, 0;
        return -EINVAL;
    case T_TIMESTAMP:
        return parse_timestamp(tmp, &out->i);
    default:
        return -EINVAL;
    }
}

int value_parse(enum type t, const char *text, size_t len, struct value *out)
{
    out->t = t;
    if (t == T_VARCHAR) {
        out->s = text;
        out->len = (uint32_t)len;
        return len <= VALUE_MAX_STRING ? 0 : -EINVAL;
    }
    if (t == T_BIGINT)
        return len && len < SHORT_TEXT ? parse_bigint(text, len, &out->i) : -EINVAL;
    return parse_with_libc(t, text, len, out);
}

size_t row_size(const struct value *v, size_t n)
{
    size_t bytes = sizeof(struct row) + n * sizeof *v;
    for (size_t i = 0; i < n; i++)
        bytes += v[i].t == T_VARCHAR ? (size_t)v[i].len + 1 : 0;
    return bytes;
}

struct row *row_new(const struct value *v, size_t n)
{
    struct row *r = malloc(row_size(v, n));
    return r ? row_init(r, v, n) : NULL;
}

struct row *row_init(struct row *r, const struct value *v, size_t n)
{
    char *s = (char *)&r->v[n];
    r->n = n;
    for (size_t i = 0; i < n; i++) {
        r->v[i] = v[i];
        if (v[i].t == T_VARCHAR) { /* the strings live after the values, in one block */
            memcpy(s, v[i].s, v[i].len);
            s[v[i].len] = '\0';
            r->v[i].s = s;
            s += (size_t)v[i].len + 1;
        }
    }
    return r;
}

void row_free(struct row *r)
{
    free(r);
}

uint64_t row_hash(const struct value *v, size_t n)
{
    uint64_t h = ROW_HASH_SEED;
    for (size_t i = 0; i < n; i++)
        h = value_hash(&v[i], h);
    return h;
}

int row_eq(const struct value *a, const struct value *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (a[i].t != b[i].t || !value_eq(&a[i], &b[i]))
            return 0;
    return 1;
}
