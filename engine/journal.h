/*
 * exactly_once's journal: what each step took from its inputs and what it
 * wrote to its outputs, made durable before the step's output is written.
 * After a crash the engine replays the steps after its checkpoint from it,
 * checks that each comes out the same (record counts and hashes), and writes
 * only the output that is missing. The format is drawn in journal.c.
 *
 * Errors: negative errno with the thread's message: -EIO naming the file,
 * -EBADMSG for a damaged entry (a torn last entry is not damage: the crash
 * came before its step wrote anything, and it is dropped).
 */
#ifndef CKPT_ENGINE_JOURNAL_H
#define CKPT_ENGINE_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#define JOURNAL_DIR "journal"

/* What a step took from one input: its position (byte offset and line
 * number) before and after, the changes taken, a hash of the bytes
 * consumed, and for an input that cannot be read again (HTTP) the bytes
 * themselves (NULL for a file). */
struct journal_input {
    const char *name;
    uint64_t from, from_line, to, to_line, count, hash;
    const void *data; /* to - from bytes, or NULL */
};

/* What a step wrote to one output: where its bytes start in the file, how
 * many, and their hash. */
struct journal_output {
    const char *name;
    uint64_t before, len, hash;
};

struct journal_entry {
    uint64_t step;
    const struct journal_input *in;
    size_t nin;
    const struct journal_output *out;
    size_t nout;
};

struct journal;

/* The journal in DIR/journal (made if missing, unless read_only). */
int journal_open(const char *dir, int read_only, struct journal **out);
void journal_close(struct journal *j);

/* Calls fn with each entry of a step after `after`, in order (the entry and
 * what it points to live during the call; fn's error stops the replay and
 * is returned). Steps must follow one another from after + 1: a gap is
 * -EBADMSG. A torn last entry is dropped and, unless read-only, cut off the
 * file. A journal that is written to must be replayed first. */
typedef int (*journal_fn)(void *arg, const struct journal_entry *e);
int journal_replay(struct journal *j, uint64_t after, journal_fn fn, void *arg);

/* Appends the entry of the step after the last one and makes it durable
 * (fdatasync; on a ckptfs mount that names *.jnl in --publish-on, in the
 * bucket) before returning. */
int journal_append(struct journal *j, const struct journal_entry *e);

/* A checkpoint was committed, and the oldest checkpoint still kept is of
 * the state after step `oldest` (0: not known). Later entries go to a new
 * segment; segments whose steps are all at or before `oldest` are deleted
 * (no kept checkpoint needs them). */
int journal_checkpointed(struct journal *j, uint64_t oldest);

#endif
