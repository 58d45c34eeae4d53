"""Differential random testing of a filesystem against a local reference directory.

The same random operation is applied to two trees, the reference (a plain local directory)
and the one under test (normally a ckptfs mount). The outcome of every operation (its return
value, or its errno) must be the same on both, and after every step the two trees must be
identical: names, types, modes, owners, link counts, hard-link groups, sizes, symlink targets
and file contents byte for byte. On a mismatch the seed and the last operations are reported,
so that `CKPT_SEED=<seed>` replays the exact sequence.

    DifferentialTester(reference_dir, dir_under_test).run(seed=7, steps=400)
"""

import collections
import ctypes
import errno
import hashlib
import os
import random
import stat

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_SYS_RENAMEAT2_X86_64 = 316

_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(old, new, flags):
    """rename(2) with flags (RENAME_NOREPLACE, RENAME_EXCHANGE); raises OSError like os.rename."""
    old_b, new_b = os.fsencode(old), os.fsencode(new)
    wrapper = getattr(_libc, "renameat2", None)  # glibc >= 2.28
    if wrapper is not None:
        wrapper.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]
        rc = wrapper(_AT_FDCWD, old_b, _AT_FDCWD, new_b, flags)
    else:
        rc = _libc.syscall(ctypes.c_long(_SYS_RENAMEAT2_X86_64), ctypes.c_int(_AT_FDCWD),
                           ctypes.c_char_p(old_b), ctypes.c_int(_AT_FDCWD),
                           ctypes.c_char_p(new_b), ctypes.c_uint(flags))
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), old, None, new)


KiB, MiB = 1 << 10, 1 << 20
BLOCK = 4 * MiB          # ckptfs's chunk size: writes straddling it are the risky ones
MAX_ENTRIES = 60         # bounded tree: every step compares all of it
MAX_DEPTH = 4
MAX_FILE = 9 * MiB       # a few files grow past two block boundaries
MAX_TOTAL = 20 * MiB     # bounds the bytes compared per step, hence the runtime
MAX_HELD = 4             # file descriptors kept open across steps (and across unlinks)
NAMES = ["a", "b", "c", "d", "e", "f", "g", "long-name-" + "x" * 40]  # few: names collide often
MODES = [0o644, 0o600, 0o755, 0o700, 0o444, 0o000, 0o4755, 0o2755, 0o6755, 0o1777, 0o2775]
LOG_LENGTH = 20


class Mismatch(AssertionError):
    pass


class Entry:
    """One entry of the reference tree, as the operation chooser sees it."""

    def __init__(self, rel, kind, depth, size):
        self.rel, self.kind, self.depth, self.size = rel, kind, depth, size
        self.height = 0  # for directories: how many levels of entries lie below it


class Tree:
    """The reference tree at the start of a step; operations draw their arguments from it."""

    def __init__(self, root):
        self.entries = []
        self.dirs = [Entry("", "d", 0, 0)]
        self._walk(root, "", 1)
        self._measure_heights()
        self.total_bytes = sum(e.size for e in self.entries if e.kind == "f")
        self.by_rel = {e.rel: e for e in self.entries}

    def _walk(self, root, rel_dir, depth):
        with os.scandir(os.path.join(root, rel_dir)) as it:
            children = sorted(it, key=lambda e: e.name)
        for child in children:
            rel = os.path.join(rel_dir, child.name)
            st = child.stat(follow_symlinks=False)
            entry = Entry(rel, _kind(st.st_mode), depth, st.st_size)
            self.entries.append(entry)
            if entry.kind == "d":
                self.dirs.append(entry)
                self._walk(root, rel, depth + 1)

    def _measure_heights(self):
        dirs = {d.rel: d for d in self.dirs}
        for entry in self.entries:
            parts = entry.rel.split("/")
            for i in range(1, len(parts)):
                ancestor = dirs["/".join(parts[:i])]
                ancestor.height = max(ancestor.height, entry.depth - ancestor.depth)

    def of_kind(self, kind):
        return [e for e in self.entries if e.kind == kind]

    def size_of(self, rel):
        entry = self.by_rel.get(rel)
        return entry.size if entry else 0

    def subtree(self, rel):
        """rel and everything below it, deepest first (the order to delete them in)."""
        inside = [e.rel for e in self.entries if e.rel == rel or e.rel.startswith(rel + "/")]
        return sorted(inside, key=lambda r: r.count("/"), reverse=True)


def _height(entry):
    """How many levels an entry occupies below its own: 0 for all but non-empty dirs."""
    return entry.height if entry is not None and entry.kind == "d" else 0


def _kind(mode):
    if stat.S_ISREG(mode):
        return "f"
    if stat.S_ISDIR(mode):
        return "d"
    if stat.S_ISLNK(mode):
        return "l"
    return "o"


def _outcome(fn, root, side):
    try:
        return ("ok", fn(root, side))
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno, e.errno))


class DifferentialTester:
    def __init__(self, reference, under_test):
        self.roots = (str(reference), str(under_test))
        self.held = []  # [fd on reference, fd under test, what was opened]
        self.log = collections.deque(maxlen=LOG_LENGTH)
        self.seed = None
        self.rng = random.Random()

    # ---- driver ---------------------------------------------------------------------

    def run(self, seed, steps):
        """Applies `steps` random operations drawn from `seed`; raises Mismatch on the first
        difference. The trees may be non-empty but must be equal at the start."""
        self.seed, self.rng = seed, random.Random(seed)
        self.log.clear()
        self.compare_trees(-1)
        try:
            for step in range(steps):
                self.step(step)
        finally:
            self.close_all_held()
        self.compare_trees(steps)

    def step(self, step):
        tree = Tree(self.roots[0])
        # the harness's own promise: a bounded tree (else it slows down, or goes too deep)
        assert len(tree.entries) <= MAX_ENTRIES, len(tree.entries)
        assert max((e.depth for e in tree.entries), default=0) <= MAX_DEPTH
        op = self.choose_op(tree)
        described = op(tree)
        if described is None:  # nothing suitable in the tree for this operation
            return
        what, fn = described
        outcomes = [_outcome(fn, root, side) for side, root in enumerate(self.roots)]
        self.log.append(f"step {step}: {what} -> {_short(outcomes[0])}")
        if outcomes[0] != outcomes[1]:
            self.fail(step, f"outcomes differ: reference {_short(outcomes[0])}, "
                            f"under test {_short(outcomes[1])}")
        self.compare_trees(step)

    def fail(self, step, message):
        ops = "\n  ".join(self.log)
        raise Mismatch(f"seed {self.seed}, step {step}: {message}\n"
                       f"replay with CKPT_SEED={self.seed}; last operations:\n  {ops}")

    # ---- choosing operations --------------------------------------------------------

    def choose_op(self, tree):
        growing = [(self.op_create, 10), (self.op_mkdir, 5), (self.op_symlink, 4),
                   (self.op_link, 5)]
        other = [(self.op_write, 14), (self.op_read, 5), (self.op_truncate, 6),
                 (self.op_rename, 12), (self.op_unlink, 7), (self.op_rmdir, 5),
                 (self.op_remove_tree, 1), (self.op_fsync, 4), (self.op_chmod, 4),
                 (self.op_open_unlink_read, 3), (self.op_hold, 3), (self.op_held_io, 6),
                 (self.op_held_close, 2)]
        if len(tree.entries) >= MAX_ENTRIES:
            growing = [(self.op_remove_tree, 10)]
        ops, weights = zip(*(growing + other))
        return self.rng.choices(ops, weights)[0]

    def pick(self, items):
        return self.rng.choice(items) if items else None

    def any_path(self, tree):
        """Mostly an existing entry; sometimes a name that may not exist, or one below a
        non-directory, to compare error paths too."""
        r = self.rng.random()
        if r < 0.05:
            return self.name_in(tree)
        if r < 0.08 and tree.entries:
            return os.path.join(self.pick(tree.entries).rel, "under")
        entry = self.pick(tree.entries)
        return entry.rel if entry else self.name_in(tree)

    def file_path(self, tree):
        files = tree.of_kind("f")
        if files and self.rng.random() < 0.85:
            return self.pick(files).rel
        return self.any_path(tree)

    def name_in(self, tree, max_height=0):
        """A name in a random directory, deep enough for a subtree of `max_height`; with
        few names per directory it often exists already."""
        dirs = [d for d in tree.dirs if d.depth + 1 + max_height <= MAX_DEPTH]
        parent = self.pick(dirs) or tree.dirs[0]
        return os.path.join(parent.rel, self.pick(NAMES))

    def offset_and_length(self, size):
        r = self.rng.random()
        if r < 0.5:
            offset = self.rng.randrange(0, size + 4 * KiB)
        elif r < 0.75:
            offset = self.rng.randrange(0, MiB)
        elif r < 0.9:  # straddle a block boundary
            offset = self.rng.choice([BLOCK, 2 * BLOCK]) - self.rng.randrange(0, 64 * KiB)
        else:
            offset = self.rng.randrange(0, MAX_FILE)
        r = self.rng.random()
        length = (self.rng.randrange(1, 4 * KiB) if r < 0.6 else
                  self.rng.randrange(4 * KiB, 128 * KiB) if r < 0.92 else
                  self.rng.randrange(128 * KiB, MiB + 1))
        return offset, max(1, min(length, MAX_FILE - offset))

    def new_size(self, size):
        return self.rng.choice([0, size // 2, max(0, size - 1), size + 1,
                                size + self.rng.randrange(1, 256 * KiB),
                                BLOCK - 1, BLOCK + 1, self.rng.randrange(0, MAX_FILE)])

    # ---- operations: each returns (description, fn(root, side)) or None -----------------

    def op_create(self, tree):
        rel = self.name_in(tree)
        flags = os.O_CREAT | os.O_WRONLY | self.rng.choice([0, 0, os.O_EXCL, os.O_TRUNC])
        mode = self.rng.choice([0o644, 0o600, 0o755])

        def create(root, side):
            os.close(os.open(os.path.join(root, rel), flags, mode))
        return f"create {rel!r} flags={flags:#o} mode={mode:#o}", create

    def op_write(self, tree):
        rel = self.file_path(tree)
        size = tree.size_of(rel)
        if tree.total_bytes > MAX_TOTAL:
            return self.op_truncate(tree, shrink=True)
        offset, length = self.offset_and_length(size)
        data = self.rng.randbytes(length)
        append = self.rng.random() < 0.1
        flags = os.O_WRONLY | (os.O_APPEND if append else 0)

        def write(root, side):
            fd = os.open(os.path.join(root, rel), flags)
            try:
                return os.write(fd, data) if append else os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
        where = "append" if append else f"at {offset}"
        return f"write {rel!r} {length} bytes {where}", write

    def op_read(self, tree):
        rel = self.file_path(tree)
        size = tree.size_of(rel)
        offset, length = self.offset_and_length(size)

        def read(root, side):
            fd = os.open(os.path.join(root, rel), os.O_RDONLY)
            try:
                return hashlib.sha256(os.pread(fd, length, offset)).hexdigest()
            finally:
                os.close(fd)
        return f"read {rel!r} {length} bytes at {offset}", read

    def op_truncate(self, tree, shrink=False):
        rel = self.file_path(tree)
        size = tree.size_of(rel)
        new = size // 4 if shrink else self.new_size(size)
        how = self.rng.choice(["truncate", "ftruncate", "O_TRUNC"])

        def truncate(root, side):
            path = os.path.join(root, rel)
            if how == "truncate":
                return os.truncate(path, new)
            fd = os.open(path, os.O_WRONLY | (os.O_TRUNC if how == "O_TRUNC" else 0))
            try:
                if how == "ftruncate":
                    os.ftruncate(fd, new)
            finally:
                os.close(fd)
        return f"{how} {rel!r}" + ("" if how == "O_TRUNC" else f" to {new}"), truncate

    def op_rename(self, tree):
        src = self.any_path(tree)
        flags = self.rng.choices([0, RENAME_NOREPLACE, RENAME_EXCHANGE], [8, 1, 2])[0]
        dst = self.rename_target(tree, tree.by_rel.get(src), flags)
        if dst is None:
            return None

        def rename(root, side):
            old, new = os.path.join(root, src), os.path.join(root, dst)
            return os.rename(old, new) if flags == 0 else renameat2(old, new, flags)
        return f"rename {src!r} -> {dst!r} flags={flags}", rename

    def rename_target(self, tree, src, flags):
        """A destination that keeps the tree within MAX_DEPTH whether or not the rename
        succeeds: a name (new or existing) where src's subtree fits; for an exchange, the
        entry there must also fit where src is (mostly an existing one: else ENOENT)."""
        src_height, src_depth = _height(src), (src.depth if src else 1)

        def swappable(entry):
            return (entry.depth + src_height <= MAX_DEPTH
                    and src_depth + _height(entry) <= MAX_DEPTH)
        if flags == RENAME_EXCHANGE and self.rng.random() < 0.9:
            fitting = [e for e in tree.entries if swappable(e)]
            if fitting:
                return self.pick(fitting).rel
        dst = self.name_in(tree, max_height=src_height)
        other = tree.by_rel.get(dst)
        if flags == RENAME_EXCHANGE and other is not None and not swappable(other):
            return None
        return dst

    def op_link(self, tree):
        src, dst = self.file_path(tree), self.name_in(tree)
        follow = self.rng.random() < 0.2

        def link(root, side):
            os.link(os.path.join(root, src), os.path.join(root, dst), follow_symlinks=follow)
        return f"link {src!r} -> {dst!r} follow={follow}", link

    def op_unlink(self, tree):
        rel = self.any_path(tree)

        def unlink(root, side):
            os.unlink(os.path.join(root, rel))
        return f"unlink {rel!r}", unlink

    def op_rmdir(self, tree):
        dirs = [d.rel for d in tree.dirs if d.rel]
        rel = self.pick(dirs) if dirs and self.rng.random() < 0.85 else self.any_path(tree)

        def rmdir(root, side):
            os.rmdir(os.path.join(root, rel))
        return f"rmdir {rel!r}", rmdir

    def op_remove_tree(self, tree):
        candidates = [e.rel for e in tree.entries if e.depth == 1] or [e.rel for e in tree.entries]
        rel = self.pick(candidates)
        if rel is None:
            return None
        order = tree.subtree(rel)
        kinds = {e.rel: e.kind for e in tree.entries}

        def remove_tree(root, side):
            for r in order:
                (os.rmdir if kinds[r] == "d" else os.unlink)(os.path.join(root, r))
        return f"remove tree {rel!r} ({len(order)} entries)", remove_tree

    def op_mkdir(self, tree):
        rel = self.name_in(tree)
        mode = self.rng.choice([0o755, 0o700, 0o777, 0o2775, 0o1777])

        def mkdir(root, side):
            os.mkdir(os.path.join(root, rel), mode)
        return f"mkdir {rel!r} mode={mode:#o}", mkdir

    def op_symlink(self, tree):
        rel = self.name_in(tree)
        target = self.symlink_target(tree, os.path.dirname(rel))

        def symlink(root, side):
            os.symlink(target, os.path.join(root, rel))
        return f"symlink {rel!r} -> {target!r}", symlink

    def symlink_target(self, tree, link_dir):
        """A target without "..": it resolves below the link's directory wherever the link
        is later moved, so following it never leaves the tree (the two roots share a
        parent directory, and an escaping link would reach the same file from both)."""
        prefix = link_dir + "/" if link_dir else ""
        below = [e.rel[len(prefix):] for e in tree.entries if e.rel.startswith(prefix)]
        r = self.rng.random()
        if below and r < 0.75:
            return self.pick(below)
        if r < 0.8:
            return "."
        return self.pick(NAMES[:3]) + self.rng.choice(["", "-missing", "/x"])

    def op_fsync(self, tree):
        dirs = [d.rel for d in tree.dirs]
        rel = self.pick(dirs) if self.rng.random() < 0.3 else self.file_path(tree)
        data_only = self.rng.random() < 0.5

        def fsync(root, side):
            fd = os.open(os.path.join(root, rel), os.O_RDONLY)
            try:
                (os.fdatasync if data_only else os.fsync)(fd)
            finally:
                os.close(fd)
        return f"{'fdatasync' if data_only else 'fsync'} {rel!r}", fsync

    def op_chmod(self, tree):
        rel, mode = self.any_path(tree), self.rng.choice(MODES)

        def chmod(root, side):
            os.chmod(os.path.join(root, rel), mode)
        return f"chmod {rel!r} {mode:#o}", chmod

    def op_open_unlink_read(self, tree):
        """An fd held across the unlink of its name: still readable and writable."""
        rel = self.file_path(tree)
        data = self.rng.randbytes(self.rng.randrange(1, 8 * KiB))
        offset = self.rng.randrange(0, 64 * KiB)

        def open_unlink_read(root, side):
            fd = os.open(os.path.join(root, rel), os.O_RDWR)
            try:
                os.unlink(os.path.join(root, rel))
                os.pwrite(fd, data, offset)
                st = os.fstat(fd)
                content = _read_fd(fd, st.st_size)
                return st.st_size, st.st_nlink, hashlib.sha256(content).hexdigest()
            finally:
                os.close(fd)
        return f"open-unlink-read {rel!r} (writes {len(data)} at {offset})", open_unlink_read

    def op_hold(self, tree):
        """Opens a file on both sides and keeps the two fds for later steps (op_held_io)."""
        rel = self.file_path(tree)
        if len(self.held) >= MAX_HELD:
            self.close_held(0)
        pair = [None, None, rel]

        def hold(root, side):
            pair[side] = os.open(os.path.join(root, rel), os.O_RDWR)
            if side == 1:
                if pair[0] is None:  # only this side opened: a mismatch, reported next
                    os.close(pair[1])
                else:
                    self.held.append(pair)

        def hold_or_undo(root, side):
            try:
                return hold(root, side)
            except OSError:
                if side == 1 and pair[0] is not None:  # likewise, the other way round
                    os.close(pair[0])
                raise
        return f"hold open {rel!r}", hold_or_undo

    def op_held_io(self, tree):
        if not self.held:
            return None
        index = self.rng.randrange(len(self.held))
        pair = self.held[index]
        action = self.rng.choice(["pwrite", "pread", "fstat", "ftruncate", "fsync"])
        offset, length = self.offset_and_length(0)
        data = self.rng.randbytes(min(length, 64 * KiB))
        size = self.new_size(offset)

        def held_io(root, side):
            fd = pair[side]
            if action == "pwrite":
                return os.pwrite(fd, data, offset)
            if action == "pread":
                return hashlib.sha256(os.pread(fd, length, offset)).hexdigest()
            if action == "fstat":
                st = os.fstat(fd)
                return st.st_size, st.st_nlink, st.st_mode
            if action == "ftruncate":
                return os.ftruncate(fd, size)
            return os.fsync(fd)
        return f"held fd of {pair[2]!r}: {action} (offset {offset}, size {size})", held_io

    def op_held_close(self, tree):
        if not self.held:
            return None
        index = self.rng.randrange(len(self.held))
        what = self.held[index][2]

        def held_close(root, side):
            if side == 1:
                self.close_held(index)
        return f"close held fd of {what!r}", held_close

    def close_held(self, index):
        ref_fd, dut_fd, _ = self.held.pop(index)
        os.close(ref_fd)
        os.close(dut_fd)

    def close_all_held(self):
        while self.held:
            self.close_held(0)

    # ---- comparing ------------------------------------------------------------------

    def compare_trees(self, step):
        ref, dut = (snapshot(root) for root in self.roots)
        if ref.entries != dut.entries:
            self.fail(step, "trees differ:\n  " + _describe_difference(ref.entries, dut.entries))
        if ref.link_groups() != dut.link_groups():
            self.fail(step, f"hard-link groups differ: reference {ref.link_groups()}, "
                            f"under test {dut.link_groups()}")
        for rel in ref.files:
            offset = first_difference(os.path.join(self.roots[0], rel),
                                      os.path.join(self.roots[1], rel))
            if offset is not None:
                self.fail(step, f"contents of {rel!r} differ from byte {offset} on")


class Snapshot:
    """What is compared of a tree: per entry (type and mode, link count, owner, size where it
    is defined, symlink target), which names share an inode, and the files to read."""

    def __init__(self):
        self.entries = {}
        self.inodes = collections.defaultdict(list)
        self.files = []

    def link_groups(self):
        return sorted(sorted(names) for names in self.inodes.values())


def snapshot(root):
    snap = Snapshot()
    st = os.lstat(root)
    snap.entries["."] = ("d", None, st.st_nlink)  # the root's own mode is the mount's business
    _snapshot_dir(root, "", snap)
    return snap


def _snapshot_dir(root, rel_dir, snap):
    with os.scandir(os.path.join(root, rel_dir)) as it:
        names = sorted(e.name for e in it)
    for name in names:
        rel = os.path.join(rel_dir, name)
        path = os.path.join(root, rel)
        st = os.lstat(path)
        kind = _kind(st.st_mode)
        # directory sizes are filesystem-specific (ext4 counts blocks); nothing relies on them
        size = None if kind in ("d", "o") else st.st_size
        target = os.readlink(path) if kind == "l" else None
        snap.entries[rel] = (kind, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, size, target)
        if kind == "f":
            if st.st_ino not in snap.inodes:
                snap.files.append(rel)
            snap.inodes[st.st_ino].append(rel)
        elif kind == "d":
            _snapshot_dir(root, rel, snap)


def _describe_difference(ref, dut):
    lines = []
    for rel in sorted(set(ref) | set(dut)):
        if ref.get(rel) != dut.get(rel):
            lines.append(f"{rel!r}: reference {_fmt(ref.get(rel))}, "
                         f"under test {_fmt(dut.get(rel))}")
    return "\n  ".join(lines[:20])


def _fmt(entry):
    if entry is None:
        return "missing"
    if len(entry) == 3:
        return f"dir nlink={entry[2]}"
    kind, mode, nlink, uid, gid, size, target = entry
    return (f"{kind} mode={mode:#o} nlink={nlink} owner={uid}:{gid} size={size}"
            + (f" -> {target!r}" if target is not None else ""))


def first_difference(path_a, path_b):
    """Offset of the first byte where two files differ (a length difference counts), or None.
    Reads into two reused buffers: fresh 1 MiB bytes objects per read cost more than the
    reads themselves, and this runs for every file after every step."""
    buf_a, buf_b = _COMPARE_BUFFERS
    with open(path_a, "rb", buffering=0) as a, open(path_b, "rb", buffering=0) as b:
        offset = 0
        while True:
            n_a, n_b = _fill(a, buf_a), _fill(b, buf_b)
            same = buf_a == buf_b if n_a == n_b == len(buf_a) else buf_a[:n_a] == buf_b[:n_b]
            if not same:
                n = min(n_a, n_b)
                return offset + next((i for i in range(n) if buf_a[i] != buf_b[i]), n)
            if n_a < len(buf_a):
                return None
            offset += n_a


_COMPARE_BUFFERS = (bytearray(MiB), bytearray(MiB))


def _fill(f, buf):
    """Reads until buf is full or the file ends (a read may legally return less)."""
    view, n = memoryview(buf), 0
    while n < len(buf):
        got = f.readinto(view[n:])
        if not got:
            break
        n += got
    return n


def _read_fd(fd, size):
    parts, offset = [], 0
    while offset < size:
        part = os.pread(fd, min(MiB, size - offset), offset)
        if not part:
            break
        parts.append(part)
        offset += len(part)
    return b"".join(parts)


def _short(outcome):
    text = repr(outcome)
    return text if len(text) < 120 else text[:117] + "..."
