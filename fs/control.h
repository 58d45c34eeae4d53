/*
 * The control socket: how `ckptctl sync`, `status` and `warm` talk to a
 * running mount. A Unix socket in the cache directory, found through the
 * mount's root directory (getxattr "user.ckptfs.control"). One request per
 * connection, a line of text; JSON lines back, the last one the answer:
 *
 *   sync     -> {"ok": true, "snapshot": "EEEEEEEE-SSSSSSSSSSSS"} once a
 *               snapshot with every change made before the request is in the bucket
 *   status   -> {"ok": true, "url": ..., "dirty_bytes": ..., ...}
 *   promote  -> {"ok": true, "snapshot": ..., "epoch": N, "seconds": S} once a
 *               follower is the writer and its first snapshot is in the bucket
 *   warm INO -> {"progress": true, "done": ..., "total": ..., ...} every 200 ms,
 *               then {"ok": true, "fetched": BYTES, "files": N}
 *   failure  -> {"ok": false, "error": "..."}
 */
#ifndef CKPT_FS_CONTROL_H
#define CKPT_FS_CONTROL_H

#include "fs/fs.h"

struct control;

/* Listens on control_socket_path(fs) (replacing a stale socket). */
int control_start(struct fs *fs, struct control **out);
void control_stop(struct control *c);

/* CACHE_DIR/control.sock */
const char *control_socket_path(const struct fs *fs);

#endif
