"""The content-addressed repository: sha256 objects under `root/objects/<2 hex>/<62 hex>`.

Files are stored read-only; a dir is stored as its files plus a canonical JSON listing object
(`{relpath: [digest, size]}`) whose digest is the dir's. Imports no engine module but cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from reflowes.engine.errors import InfraError, UserError
from reflowes.events.model import FileRef

if TYPE_CHECKING:
    from reflowes.engine.cache import Cache

_CHUNK = 1 << 20
_SMALL = 1 << 16  # files below this size are read in one call
_READONLY = 0o444


class RepositoryError(InfraError):
    """An object is missing or the repository cannot be written; `path` names the file."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class InputNotFound(UserError):
    """An rf.file input names nothing readable."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source


def _hash_file(path: str, size_hint: int = -1) -> tuple[str, int]:
    if 0 <= size_hint < _SMALL:  # one read (a short read of a regular file is its end)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, _SMALL)
        finally:
            os.close(fd)
        if len(data) < _SMALL:
            return hashlib.sha256(data).hexdigest(), len(data)
    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _canonical(listing: dict[str, list[object]]) -> bytes:
    return json.dumps(listing, sort_keys=True, separators=(",", ":")).encode()


class Repository:
    """sha256 content-addressed objects; concurrent writers of the same object are harmless."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._objects_s = str(self.objects)
        self._made_dirs: set[str] = set()
        self._listings: dict[str, dict[str, list[object]]] = {}
        self._memo: Cache | None = None  # the Cache holding the intern memo, opened lazily

    # ------------------------------------------------------------ paths and lookups

    def _opath(self, digest: str) -> str:
        return f"{self._objects_s}/{digest[:2]}/{digest[2:]}"

    def path(self, ref: FileRef) -> Path:
        """Where the object of `ref` lives (a dir's listing object for a dir)."""
        return Path(self._opath(ref.digest))

    def path_str(self, ref: FileRef) -> str:
        """`path` as a plain string (no pathlib on the hot path)."""
        return self._opath(ref.digest)

    def has(self, ref: FileRef) -> bool:
        """True when the object exists with the right size (a dir: its listing and its files)."""
        try:
            st = os.stat(self._opath(ref.digest))
        except FileNotFoundError:
            return False
        if ref.kind != "dir":
            return st.st_size == ref.size
        try:
            listing = self.listing(ref)
        except (RepositoryError, ValueError):
            return False
        for digest, size in listing.values():
            try:
                if os.stat(self._opath(str(digest))).st_size != size:
                    return False
            except FileNotFoundError:
                return False
        return True

    def listing(self, ref: FileRef) -> dict[str, list[object]]:
        """A dir's listing: {relpath: [digest, size]}."""
        if ref.kind != "dir":
            raise ValueError(f"{ref.digest} is a file, not a dir")
        cached = self._listings.get(ref.digest)
        if cached is None:
            try:
                with open(self._opath(ref.digest), "rb") as f:
                    cached = json.loads(f.read())
            except FileNotFoundError:
                raise RepositoryError(self._opath(ref.digest), "dir listing missing") from None
            assert isinstance(cached, dict)
            self._listings[ref.digest] = cached
        return cached

    def read_bytes(self, ref: FileRef) -> bytes:
        """The content of a file object."""
        with open(self._opath(ref.digest), "rb") as f:
            return f.read()

    # ------------------------------------------------------------ writing

    def _ensure_dir(self, digest: str) -> None:
        d = digest[:2]
        if d not in self._made_dirs:
            os.makedirs(f"{self._objects_s}/{d}", exist_ok=True)
            self._made_dirs.add(d)

    def _tmp_name(self) -> str:
        return str(self.tmp / uuid.uuid4().hex)

    def _install(self, tmp: str, digest: str, size: int) -> None:
        """Rename a complete temp file into place unless an equal object is already there."""
        self._ensure_dir(digest)
        final = self._opath(digest)
        try:
            if os.stat(final).st_size == size:
                os.unlink(tmp)
                return
        except FileNotFoundError:
            pass
        os.chmod(tmp, _READONLY)
        os.replace(tmp, final)

    def put_bytes(self, data: bytes) -> FileRef:
        """Store `data` as a file object."""
        digest = hashlib.sha256(data).hexdigest()
        ref = FileRef(digest, len(data))
        if self.has(ref):
            return ref
        tmp = self._tmp_name()
        with open(tmp, "wb") as f:
            f.write(data)
        self._install(tmp, digest, len(data))
        return ref

    def put_file(self, path: str | os.PathLike[str], move: bool = False,
                 st: os.stat_result | None = None) -> FileRef:
        """Store a file. With `move`, the source is ours to give away: it is made read-only
        and hard linked in place (no copy) when on the same filesystem. `st`: its lstat, if
        the caller has it."""
        src = os.fspath(path)
        if move:  # only a plain file nobody else links to is ours to give away
            if st is None:
                st = os.lstat(src)
            move = stat.S_ISREG(st.st_mode) and st.st_nlink == 1
        if move:
            assert st is not None
            digest, size = _hash_file(src, st.st_size)
            self._ensure_dir(digest)
            final = self._opath(digest)
            try:
                os.chmod(src, _READONLY)
                os.link(src, final)
                return FileRef(digest, size)
            except FileExistsError:
                if os.stat(final).st_size == size:
                    return FileRef(digest, size)
                os.unlink(final)  # a truncated object (crash mid-write): replace it
                return self.put_file(src, move=True)
            except OSError:
                pass  # another filesystem, or links not allowed: copy below
        h = hashlib.sha256()
        size = 0
        tmp = self._tmp_name()
        try:
            with open(src, "rb", buffering=0) as fi, open(tmp, "wb", buffering=0) as fo:
                while chunk := fi.read(_CHUNK):
                    h.update(chunk)
                    fo.write(chunk)
                    size += len(chunk)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        digest = h.hexdigest()
        self._install(tmp, digest, size)
        return FileRef(digest, size)

    def put_dir(self, path: str | os.PathLike[str], move: bool = False) -> FileRef:
        """Store every file under `path`, then the dir's listing. With `move` (a step's
        output) nothing outside `path` is read: a symlinked dir is an error, a symlink to a
        file is stored by content. Without, symlinked dirs are followed (each dir once)."""
        base = os.fspath(path)
        if move and os.path.islink(base):
            raise RepositoryError(base, "output dir is a symlink")
        listing: dict[str, list[object]] = {}
        for dirpath, dirnames, filenames in _walk(base, followlinks=not move):
            if move:
                for name in dirnames:
                    if os.path.islink(os.path.join(dirpath, name)):
                        raise RepositoryError(os.path.join(dirpath, name),
                                              "symlink to a dir inside an output dir")
            for name in filenames:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, base).replace(os.sep, "/")
                ref = self.put_file(full, move=move)
                listing[rel] = [ref.digest, ref.size]
        return self._put_listing(listing)

    def _put_listing(self, listing: dict[str, list[object]]) -> FileRef:
        """Store a dir's listing (relative path -> [digest, size]); its ref is the dir's."""
        lref = self.put_bytes(_canonical(listing))
        self._listings[lref.digest] = listing
        return FileRef(lref.digest, lref.size, "dir")

    def put_path(self, path: str | os.PathLike[str], move: bool = False) -> FileRef:
        """A file or a dir, whichever `path` is."""
        if os.path.isdir(path):
            return self.put_dir(path, move=move)
        return self.put_file(path, move=move)

    # ------------------------------------------------------------ reading out

    def _link_or_copy(self, digest: str, dest: str) -> None:
        src = self._opath(digest)
        try:
            os.link(src, dest)
        except FileExistsError:
            os.unlink(dest)
            os.link(src, dest)
        except FileNotFoundError:
            if not os.path.exists(src):
                raise RepositoryError(src, "object missing from the repository") from None
            os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)  # only when missing
            self._link_or_copy(digest, dest)
        except OSError:
            shutil.copyfile(src, dest)
            os.chmod(dest, _READONLY)

    def materialize(self, ref: FileRef, dest: str | os.PathLike[str]) -> None:
        """Recreate `ref` at `dest`: a file hard linked (else copied), a dir as a tree."""
        d = os.fspath(dest)
        if ref.kind != "dir":
            self._link_or_copy(ref.digest, d)  # makes missing parent dirs
            return
        os.makedirs(d, exist_ok=True)
        made = {d}
        for rel, (digest, _size) in self.listing(ref).items():
            target = os.path.join(d, rel)
            parent = os.path.dirname(target)
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                made.add(parent)
            self._link_or_copy(str(digest), target)

    # ------------------------------------------------------------ interning inputs

    def _memo_cache(self) -> Cache:
        if self._memo is None:
            from reflowes.engine.cache import Cache

            self._memo = Cache(self.root, repo=self)
        return self._memo

    def flush(self) -> None:
        """Write the buffered intern memo (also done at exit)."""
        if self._memo is not None:
            self._memo.flush_memo()

    def intern(self, source: str | os.PathLike[str], kind: str | None = None) -> FileRef:
        """A local path or file:// URL as a repository value; unchanged files are not re-hashed
        (memo of (abspath, size, mtime_ns, inode) -> digest in the cache db). `kind` ("file" or
        "dir"), when given, must match what the path is."""
        ref = self.intern_many([source])[0]
        if kind is not None and ref.kind != kind:
            raise InputNotFound(os.fspath(source), f"is a {ref.kind}, expected a {kind}")
        return ref

    def intern_many(self, sources: list[str | os.PathLike[str]]) -> list[FileRef]:
        """`intern` for many sources with one memo query."""
        paths = [_local_path(s) for s in sources]
        stats: dict[str, os.stat_result] = {}
        files: list[str] = []
        for p in paths:
            try:
                st = os.stat(p)
            except OSError as e:
                raise InputNotFound(p, f"cannot read input ({e.strerror})") from None
            stats[p] = st
            if stat.S_ISREG(st.st_mode):
                files.append(p)
        memo = self._memo_cache()
        known = memo.memo_get_many(
            [(p, stats[p].st_size, stats[p].st_mtime_ns, stats[p].st_ino) for p in files]
        )
        fresh: list[tuple[str, int, int, int, str]] = []
        out: list[FileRef] = []
        for p in paths:
            st = stats[p]
            if stat.S_ISDIR(st.st_mode):
                out.append(self._intern_dir(p))
                continue
            digest = known.get(p)
            if digest is not None:
                ref = FileRef(digest, st.st_size)
                if self.has(ref):
                    out.append(ref)
                    continue
            try:
                ref = self.put_file(p)
            except OSError as e:
                raise InputNotFound(p, f"cannot read input ({e.strerror})") from None
            if ref.size == st.st_size:  # a file growing while read is not memoized
                fresh.append((p, st.st_size, st.st_mtime_ns, st.st_ino, ref.digest))
            out.append(ref)
        if fresh:
            memo.memo_put_many(fresh)
        return out

    def _intern_dir(self, base: str) -> FileRef:
        rels = [os.path.relpath(os.path.join(dirpath, name), base)
                for dirpath, _, filenames in _walk(base, followlinks=True) for name in filenames]
        refs = self.intern_many([os.path.join(base, r) for r in rels]) if rels else []
        return self._put_listing(
            {r.replace(os.sep, "/"): [f.digest, f.size] for r, f in zip(rels, refs)})


def _walk(base: str, followlinks: bool) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk in sorted order, each directory once (a symlink cycle is entered only once);
    the caller may read the subdirectory names but not change them."""
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(base, followlinks=followlinks):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:  # a symlink cycle
            dirnames.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames.sort()
        yield dirpath, dirnames, sorted(filenames)


def _local_path(source: str | os.PathLike[str]) -> str:
    s = os.fspath(source)
    if "://" in s:
        u = urlparse(s)
        if u.scheme != "file":
            raise InputNotFound(s, f"unsupported URL scheme {u.scheme!r} (use a path or file://)")
        if u.netloc not in ("", "localhost"):
            raise InputNotFound(s, "file:// URLs must name a local file (file:///path)")
        s = unquote(u.path)
    return os.path.abspath(s)
