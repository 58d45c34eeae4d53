/*
 * ckptctl's commands share this: each command is a function taking its own
 * argv (argv[0] is the command's name) and returning the process exit status.
 */
#ifndef CKPT_TOOLS_CKPTCTL_H
#define CKPT_TOOLS_CKPTCTL_H

/* Exit statuses, as documented in ckptctl --help. */
enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2 };

int cmd_store(int argc, char **argv);
int cmd_sync(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_warm(int argc, char **argv);
int cmd_snapshots(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_pull(int argc, char **argv);
int cmd_promote(int argc, char **argv);
int cmd_gc(int argc, char **argv);

struct option;
struct store_options;

/* Parses argv's options wherever they are on the line: own's (a list ended
 * by a zeroed entry; each met is passed to on with its val and argument) and
 * the store's (into opt). Leaves the operands in argv[optind..]. Returns
 * EXIT_OK, or EXIT_USAGE once it said what is wrong. */
int ctl_parse(int argc, char **argv, const struct option *own, struct store_options *opt,
              int (*on)(void *arg, int val, const char *value), void *arg);

/* Prints "ckptctl: error: MESSAGE" and returns EXIT_FAIL. */
int ctl_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prints "ckptctl: MESSAGE" and a hint to --help, and returns EXIT_USAGE. */
int ctl_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
