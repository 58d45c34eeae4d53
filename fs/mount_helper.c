/*
 * mount.ckptfs: what mount(8) runs for `mount -t ckptfs URL DIR -o OPTS` and
 * for /etc/fstab lines of type ckptfs:
 *
 *   s3://bucket/prefix  /var/lib/pipeline  ckptfs  _netdev,cache_dir=/var/cache/p,sync=local  0 0
 *
 * It runs `ckptfs -o OPTS URL DIR` (which daemonizes once mounted), so
 * mount(8) returns when the mount is there or has failed, with its status.
 * mount(8) flags: -f (fake) does nothing, -s (sloppy) and -n, -v are taken
 * and ignored; -N and -t take a value that is ignored too. CKPTFS_BIN names
 * another ckptfs to run (tests use the one they built).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    const char *opts = NULL, *src = NULL, *dst = NULL;
    int fake = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-o") && i + 1 < argc)
            opts = argv[++i];
        else if ((!strcmp(argv[i], "-t") || !strcmp(argv[i], "-N")) && i + 1 < argc)
            i++;
        else if (argv[i][0] == '-' && argv[i][1] && !argv[i][2] && strchr("sfnv", argv[i][1]))
            fake |= argv[i][1] == 'f';
        else if (!src)
            src = argv[i];
        else if (!dst)
            dst = argv[i];
        else
            return fprintf(stderr, "mount.ckptfs: unexpected argument %s\n", argv[i]), 1;
    }
    if (!src || !dst)
        return fprintf(stderr, "usage: mount.ckptfs URL MOUNTPOINT [-o OPTIONS]\n"), 1;
    if (fake)
        return 0;
    const char *bin = getenv("CKPTFS_BIN") ? getenv("CKPTFS_BIN") : CKPTFS_PATH;
    char *args[] = { (char *)bin, "-o",        (char *)(opts ? opts : "defaults"),
                     (char *)src, (char *)dst, NULL };
    execv(bin, args);
    fprintf(stderr, "mount.ckptfs: cannot run %s: %s\n", bin, strerror(errno));
    return 1;
}
