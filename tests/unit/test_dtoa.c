/*
 * engine/dtoa.c against printf itself: byte for byte the same text as
 * "%.17g" for the doubles a view writes (averages, sums), for the hard ones
 * (exact ties between two 17-digit neighbours, powers of ten and the
 * doubles next to them, the layouts' borders) and for random bit patterns.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "engine/dtoa.h"

static unsigned long tried;

static void same(double d)
{
    char want[64], got[DTOA_MAX];
    if (!isfinite(d))
        return;
    snprintf(want, sizeof want, "%.17g", d);
    size_t n = dtoa_17g(d, got);
    tried++;
    CHECK(n == strlen(want) && strcmp(got, want) == 0, "%a: got '%s' (%zu), printf '%s'", d, got, n,
          want);
}

static void around(double d)
{
    same(d);
    same(-d);
    same(nextafter(d, INFINITY));
    same(nextafter(d, 0));
}

static uint64_t rnd_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void) /* splitmix64 */
{
    uint64_t z = (rnd_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Averages and sums as views make them: integer sums over counts. */
static void test_averages(void)
{
    for (int i = 0; i < 300000; i++) {
        int64_t sum = (int64_t)(rnd() % 2000000000000ull) - 1000000000;
        int64_t n = (int64_t)(rnd() % 100000) + 1;
        same((double)sum / (double)n);
        same((double)(rnd() % 100000) / 7.0);
    }
    for (int64_t i = -2000; i <= 2000; i++)
        same((double)i);
}

/* m * 2^-k with few bits in m: many have exactly 18 significant digits
 * ending in 5, a tie that must go to the even neighbour. */
static void test_ties(void)
{
    for (uint64_t m = 1; m < 4096; m++)
        for (int k = 0; k <= 80; k++)
            same(ldexp((double)m, -k));
}

static void test_borders(void)
{
    for (int e = -330; e <= 310; e++)
        around(pow(10, e));
    static const double b[] = { 1e-5,
                                9.9999999999999995e-5,
                                1e-4,
                                0.5,
                                1,
                                9.999999999999999e16,
                                1e17,
                                1.7976931348623157e308,
                                4.9406564584124654e-324,
                                2.2250738585072014e-308,
                                0.1,
                                0.2,
                                0.3,
                                1.0 / 3 };
    for (size_t i = 0; i < sizeof b / sizeof *b; i++)
        around(b[i]);
    same(0.0);
    same(-0.0);
}

static void test_random_bits(void)
{
    for (int i = 0; i < 1000000; i++) {
        uint64_t bits = rnd();
        double d;
        memcpy(&d, &bits, sizeof d);
        same(d);
        same(ldexp((double)(rnd() >> 11), -(int)(rnd() % 90))); /* mostly the fast path */
    }
}

int main(void)
{
    test_averages();
    test_ties();
    test_borders();
    test_random_bits();
    printf("test_dtoa: %lu doubles compared with printf\n", tried);
    return check_done("test_dtoa");
}
