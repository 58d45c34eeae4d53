/* Progress lines (contract in progress.h). */
#include "progress.h"

#include <stdio.h>

void ctl_size_text(double bytes, char *out, size_t n)
{
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
    int u = 0;
    while (bytes >= 1024 && u < 4)
        bytes /= 1024, u++;
    snprintf(out, n, u ? "%.1f %s" : "%.0f %s", bytes, units[u]);
}

void ctl_progress(double done, double total, long long items_done, long long items,
                  const char *what)
{
    double frac = total > 0 ? done / total : 1;
    char have[32], want[32], bar[41];
    ctl_size_text(done, have, sizeof have);
    ctl_size_text(total, want, sizeof want);
    int fill = (int)(frac * 40);
    for (int i = 0; i < 40; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[40] = '\0';
    fprintf(stderr, "\r[%s] %3.0f%%  %s of %s, %lld of %lld %s ", bar, frac * 100, have, want,
            items_done, items, what);
}
