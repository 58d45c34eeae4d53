/*
 * Diagnostics for people: one line per event on stderr, with the level and
 * the program name. The level comes from log_init() (CKPT_LOG=debug|info|
 * warn|error overrides it), so tests and users can turn on detail without a
 * rebuild.
 */
#ifndef CKPT_UTIL_LOG_H
#define CKPT_UTIL_LOG_H

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Sets the program name shown on each line and the default level. */
void log_init(const char *program, enum log_level level);

/* True when a message at this level would be printed (to skip costly formatting). */
int log_enabled(enum log_level level);

void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
