/*
 * "%.17g" without printf (contract in dtoa.h).
 *
 * A finite d != 0 is m * 2^q exactly, m < 2^53. With e its decimal
 * exponent (10^e <= |d| < 10^(e+1)), the 17 significant digits are
 *
 *   D = |d| * 10^(16-e), rounded to an integer: 10^16 <= D < 10^17
 *
 * to nearest, ties to even, as glibc rounds. For k = 16 - e in [0, MAX_K],
 * |d| * 10^k = m * 5^k * 2^(q+k): an integer product below 2^117, then a
 * shift whose dropped bits decide the rounding exactly. Outside that range
 * (|d| >= 1e17, or below about 1e-11) printf is called: rare in a view's
 * output. Then D is laid out as %g does: exponent form when e < -4 or
 * e >= 17, else positional; trailing zeros dropped, and a point left bare.
 */
#include "dtoa.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define MAX_K 27 /* 5^27 < 2^63 */
#define TEN16 10000000000000000ull
#define TEN17 100000000000000000ull

/* clang-format off */
static const uint64_t pow5[MAX_K + 1] = {
    1ull, 5ull, 25ull, 125ull,
    625ull, 3125ull, 15625ull, 78125ull,
    390625ull, 1953125ull, 9765625ull, 48828125ull,
    244140625ull, 1220703125ull, 6103515625ull, 30517578125ull,
    152587890625ull, 762939453125ull, 3814697265625ull, 19073486328125ull,
    95367431640625ull, 476837158203125ull, 2384185791015625ull, 11920928955078125ull,
    59604644775390625ull, 298023223876953125ull, 1490116119384765625ull, 7450580596923828125ull,
};
/* clang-format on */

/* D for m * 2^q and k; -1 where the exact arithmetic does not reach. */
static int scaled(uint64_t m, int q, int k, uint64_t *d)
{
    if (k < 0 || k > MAX_K)
        return -1;
    typedef unsigned __int128 u128;
    u128 n = (u128)m * pow5[k];
    int s = q + k;
    if (s >= 0) {
        if (s >= 64 || n >> (64 - s))
            return -1;
        *d = (uint64_t)(n << s);
        return 0;
    }
    int r = -s;
    if (r >= 120) /* n < 2^117: nothing would be left */
        return -1;
    u128 whole = n >> r, rest = n & (((u128)1 << r) - 1), half = (u128)1 << (r - 1);
    if (rest > half || (rest == half && (whole & 1)))
        whole++;
    if (whole >> 64)
        return -1;
    *d = (uint64_t)whole;
    return 0;
}

/* The 17 digits and the decimal exponent of m * 2^q (m != 0). The first
 * guess of e, from the binary exponent, is off by at most one; rounding up
 * to 10^17 moves it too. */
static int digits(uint64_t m, int q, uint64_t *d, int *e)
{
    int b = 63 - __builtin_clzll(m) + q; /* 2^b <= |d| < 2^(b+1) */
    *e = b >= 0 ? b * 30103 / 100000 : -((-b * 30103 + 99999) / 100000);
    for (int tries = 0; tries < 3; tries++) {
        if (scaled(m, q, 16 - *e, d))
            return -1;
        if (*d >= TEN17)
            ++*e;
        else if (*d < TEN16)
            --*e;
        else
            return 0;
    }
    return -1;
}

static char *exponent(char *p, int e)
{
    *p++ = 'e';
    *p++ = e < 0 ? '-' : '+';
    unsigned a = (unsigned)(e < 0 ? -e : e);
    if (a >= 100)
        *p++ = (char)('0' + a / 100);
    *p++ = (char)('0' + a / 10 % 10);
    *p++ = (char)('0' + a % 10);
    return p;
}

/* "00" to "99": digits come two a division. */
const char digit_pairs[201] = "0001020304050607080910111213141516171819202122232425262728293031"
                              "3233343536373839404142434445464748495051525354555657585960616263"
                              "6465666768697071727374757677787980818283848586878889909192939495"
                              "96979899";

/* %g's layout of the digits of d * 10^(e-16). */
static size_t layout(int neg, uint64_t d, int e, char *out)
{
    char dig[17];
    for (int i = 15; i > 0; i -= 2, d /= 100) /* 10^16 <= d < 10^17: one digit is left */
        memcpy(dig + i, digit_pairs + 2 * (d % 100), 2);
    dig[0] = (char)('0' + d);
    int nd = 17;
    while (nd > 1 && dig[nd - 1] == '0')
        nd--;
    char *p = out;
    if (neg)
        *p++ = '-';
    if (e < -4 || e >= 17) {
        *p++ = dig[0];
        if (nd > 1) {
            *p++ = '.';
            memcpy(p, dig + 1, (size_t)nd - 1);
            p += nd - 1;
        }
        p = exponent(p, e);
    } else if (e >= 0) {
        memcpy(p, dig, (size_t)e + 1);
        p += e + 1;
        if (nd > e + 1) {
            *p++ = '.';
            memcpy(p, dig + e + 1, (size_t)(nd - e - 1));
            p += nd - e - 1;
        }
    } else {
        *p++ = '0';
        *p++ = '.';
        for (int i = 0; i < -e - 1; i++)
            *p++ = '0';
        memcpy(p, dig, (size_t)nd);
        p += nd;
    }
    *p = 0;
    return (size_t)(p - out);
}

size_t dtoa_17g(double x, char out[DTOA_MAX])
{
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits);
    int neg = (int)(bits >> 63), be = (int)(bits >> 52 & 0x7ff);
    uint64_t m = bits & ((1ull << 52) - 1), d;
    int e;
    if (be == 0 && m == 0) {
        memcpy(out, neg ? "-0" : "0", 3 - !neg);
        return (size_t)(1 + neg);
    }
    int q = be ? be - 1075 : -1074;
    if (be)
        m |= 1ull << 52;
    if (digits(m, q, &d, &e))
        return (size_t)snprintf(out, DTOA_MAX, "%.17g", x);
    return layout(neg, d, e, out);
}
