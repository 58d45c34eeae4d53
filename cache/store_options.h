/*
 * The command-line options every program that opens a store takes, parsed
 * in one place so ckptfs, ckptctl and mount.ckptfs spell and check them the
 * same way.
 */
#ifndef CKPT_CACHE_STORE_OPTIONS_H
#define CKPT_CACHE_STORE_OPTIONS_H

#include <getopt.h>

#include "store.h"

/* getopt_long entries for the store options (terminated by a zero entry).
 * Their .val fields are STORE_OPT_BASE + n, so callers can tell them apart. */
#define STORE_OPT_BASE 0x5300
extern const struct option store_long_options[];

/* Applies option `name` (without dashes) with its argument to *o. Returns 1
 * if it was a store option and was set, 0 if name is not a store option,
 * -EINVAL (with a message naming the option and the bad value) otherwise.
 * Strings are referenced, not copied. */
int store_options_set(struct store_options *o, const char *name, const char *value);

/* The usage lines of the store options, for --help texts. */
extern const char store_options_usage[];

#endif
