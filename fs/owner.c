#include "owner.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util/err.h"

struct holder {
    char mount_id[64], host[256];
    int64_t pid, heartbeat, lease;
    uint64_t epoch;
};

static int read_holder(struct store *s, struct holder *h)
{
    struct buf b = { 0 };
    int rc = store_get(s, OWNER_KEY, 0, STORE_TO_END, &b);
    if (rc) {
        buf_free(&b);
        return rc;
    }
    json_error_t jerr;
    json_t *j = json_loadb((const char *)b.data, b.len, 0, &jerr);
    const char *id = NULL, *host = "?";
    json_int_t pid = 0, hb = 0, lease = OWNER_LEASE, epoch = 0;
    if (!j || json_unpack(j, "{s:s, s?s, s?I, s:I, s:I, s?I}", "mount_id", &id, "host", &host,
                          "pid", &pid, "epoch", &epoch, "heartbeat", &hb, "lease", &lease))
        rc = err_set(-EBADMSG, "%s: the owner object is not ckptfs's: %s", store_url(s),
                     j ? "fields missing" : jerr.text);
    if (rc == 0) {
        snprintf(h->mount_id, sizeof h->mount_id, "%s", id);
        snprintf(h->host, sizeof h->host, "%s", host);
        h->pid = pid, h->heartbeat = hb, h->lease = lease, h->epoch = (uint64_t)epoch;
    }
    json_decref(j);
    buf_free(&b);
    return rc;
}

static int write_claim(struct store *s, const struct owner_claim *c, unsigned flags)
{
    char host[256] = "?";
    gethostname(host, sizeof host - 1);
    json_t *j =
        json_pack("{s:i, s:s, s:s, s:I, s:I, s:I, s:i}", "format", 1, "mount_id", c->mount_id,
                  "host", host, "pid", (json_int_t)getpid(), "epoch", (json_int_t)c->epoch,
                  "heartbeat", (json_int_t)time(NULL), "lease", OWNER_LEASE);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    int rc = text ? store_put(s, OWNER_KEY, text, strlen(text), flags) : -ENOMEM;
    free(text);
    json_decref(j);
    return rc;
}

static int refuse(struct store *s, const struct holder *h, int64_t age, int force)
{
    if (age < h->lease)
        return err_set(-EBUSY,
                       "%s is being written by another mount: %s on host %s (pid %lld, epoch "
                       "%llu), heartbeat %llds ago",
                       store_url(s), h->mount_id, h->host, (long long)h->pid,
                       (unsigned long long)h->epoch, (long long)age);
    if (!force)
        return err_set(-EBUSY,
                       "%s was being written by mount %s on host %s (pid %lld, epoch %llu), "
                       "whose heartbeat stopped %llds ago; if it is gone for good, mount with "
                       "--force to take over",
                       store_url(s), h->mount_id, h->host, (long long)h->pid,
                       (unsigned long long)h->epoch, (long long)age);
    return 0;
}

int owner_acquire(struct store *s, struct owner_claim *c)
{
    struct holder h;
    int rc = read_holder(s, &h);
    if (rc == -ENOENT) { /* nobody: ours, atomically where the server can say so */
        rc = write_claim(s, c, c->if_absent ? STORE_IF_ABSENT : 0);
        if (rc != -EEXIST)
            return rc;
        rc = read_holder(s, &h); /* someone claimed it a moment before us */
    }
    if (rc)
        return rc;
    if (strcmp(h.mount_id, c->mount_id) == 0) { /* ourselves, restarted */
        c->epoch = h.epoch > c->epoch ? h.epoch : c->epoch;
        return write_claim(s, c, 0);
    }
    if ((rc = refuse(s, &h, (int64_t)time(NULL) - h.heartbeat, c->force)) != 0)
        return rc;
    uint64_t top = h.epoch > c->epoch ? h.epoch : c->epoch;
    c->epoch = top + 1; /* a takeover: the old writer's snapshots can no longer win */
    return write_claim(s, c, 0);
}

int owner_seize(struct store *s, struct owner_claim *c)
{
    struct holder h = { .epoch = 0 };
    int rc = read_holder(s, &h);
    if (rc && rc != -ENOENT)
        return rc;
    c->epoch = (h.epoch > c->epoch ? h.epoch : c->epoch) + 1;
    return write_claim(s, c, 0);
}

/* Another holder with a lower epoch than ours is an old writer's heartbeat
 * that overwrote our takeover (its read came before our write): the bucket
 * is still ours, and our next heartbeat says so again. */
int owner_check(struct store *s, const struct owner_claim *c)
{
    struct holder h;
    int rc = read_holder(s, &h);
    if (rc == 0 && strcmp(h.mount_id, c->mount_id) != 0 && h.epoch >= c->epoch)
        return err_set(-ESTALE, "%s was taken over by mount %s on host %s (epoch %llu)",
                       store_url(s), h.mount_id, h.host, (unsigned long long)h.epoch);
    return rc == -ENOENT ? 0 : rc;
}

int owner_heartbeat(struct store *s, const struct owner_claim *c)
{
    int rc = owner_check(s, c);
    return rc ? rc : write_claim(s, c, 0);
}

int owner_release(struct store *s, const struct owner_claim *c)
{
    struct holder h;
    int rc = read_holder(s, &h);
    if (rc == -ENOENT)
        return 0;
    if (rc == 0 && strcmp(h.mount_id, c->mount_id) == 0)
        rc = store_delete(s, OWNER_KEY);
    return rc;
}
