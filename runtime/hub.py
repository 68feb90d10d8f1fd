"""Model files on a hub, next to local paths: `hf://OWNER/REPO/FILE.asw[@REVISION]` (Hugging Face) and
`ms://OWNER/REPO/FILE.asw[@REVISION]` (ModelScope), for ascend-run, ascend-inspect and ascend_super.load.

This module owns the URI grammar, the downloads (through each hub's own library and cache: resumable downloads,
tokens, HF_HUB_OFFLINE; the converter's hub snapshots come through here too) and the check on arrival:

- huggingface_hub (`hf_hub_download`): cache HF_HOME / HF_HUB_CACHE, token HF_TOKEN or `hf auth login`. The revision
  resolves to a commit: the snapshot folder the file lies in.
- modelscope (`model_file_download`; the optional extra `ascend-super[modelscope]` installs its light official
  client modelscope-hub, and a full modelscope install works as well): cache MODELSCOPE_CACHE, token
  MODELSCOPE_API_TOKEN or `modelscope login`. ModelScope caches by revision name (default "master"), so that name is
  what is recorded; pin a tag or commit with @REVISION for a reproducible download. HF_HUB_OFFLINE=1 keeps ms://
  off the network as well (modelscope has no offline switch of its own).

The first time a downloaded file is opened every tensor hash is checked; a record of that check is written beside
the cached file (`.<name>.ascend-verified`, JSON), keyed on the identity (device, inode, size, mtime, ctime) of the
file that was opened, so later opens start at once and any change to the file invalidates it. A Hugging Face
download's whole-file SHA-256 is compared with the one its blob is named by, the hub's. A file that fails (corrupt,
truncated, another file) is never used: the error names the problem and the cached path to delete. Local paths pass
through untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

from . import format as fmt
from .tempfiles import replace_text

SCHEMES = {"hf": "Hugging Face", "ms": "ModelScope"}
MS_DEFAULT_REVISION = "master"
RECORD_SUFFIX = ".ascend-verified"
MODELSCOPE_MISSING = "ModelScope needs its client library: pip install 'ascend-super[modelscope]'"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")
# a branch, tag or commit (Hugging Face's may hold '/', e.g. refs/pr/1): no spaces or control characters, no '\',
# and no '.' or '..' part that would lead a cache path out of its snapshot folder
_REVISION = re.compile(r"[^\s\\\x00-\x1f\x7f]+")
_TRUE = {"1", "ON", "YES", "TRUE"}

Report = Callable[[str], None]


class HubError(Exception):
    """A hub URI is malformed, or its file cannot be had (not found, gated, offline and not cached, no library)."""


@dataclass(frozen=True)
class HubFile:
    """One file on a hub, as the user named it."""

    scheme: str  # "hf" | "ms"
    repo_id: str  # OWNER/REPO
    filename: str  # path inside the repository
    revision: str | None  # as asked (branch, tag or commit); None = the hub's default

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.repo_id}/{self.filename}" + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class Located:
    """Where a model file lies on this machine; for a hub file also where it came from and the revision it
    resolved to (hf: the commit; ms: the cached revision name)."""

    path: Path
    origin: HubFile | None = None
    resolved_revision: str | None = None
    report: Report | None = field(default=None, compare=False, repr=False)  # where later steps tell about it

    def __fspath__(self) -> str:
        return str(self.path)

    def describe(self) -> dict[str, Any] | None:
        if self.origin is None:
            return None
        return {"uri": self.origin.uri, "hub": SCHEMES[self.origin.scheme], "repo": self.origin.repo_id,
                "file": self.origin.filename, "revision": self.resolved_revision, "cached_at": str(self.path)}


def offline() -> bool:
    """HF_HUB_OFFLINE, read now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE


# ------------------------------------------------------------------------------------------------------ parsing
def parse(spec: str) -> HubFile | None:
    """The hub file a `scheme://...` spec names, or None for anything without a scheme (a local path).
    Accepted: SCHEME://OWNER/REPO/PATH/FILE.asw[@REVISION], and the fsspec form SCHEME://OWNER/REPO@REVISION/FILE."""
    match = _SCHEME.match(spec)
    if match is None:
        return None
    scheme = match.group(1).lower()
    usage = f"expected {scheme}://OWNER/REPO/FILE.asw[@REVISION]"
    if scheme not in SCHEMES:
        raise HubError(f"{spec}: unknown scheme {scheme}://; use hf:// (Hugging Face) or ms:// (ModelScope)")
    owner, _, rest = spec[match.end():].partition("/")
    repo, _, filename = rest.partition("/")
    revision: str | None = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    elif "@" in filename:
        filename, revision = filename.rsplit("@", 1)
    if not (_NAME.match(owner) and _NAME.match(repo)):
        raise HubError(f"{spec}: {usage} (OWNER and REPO are letters, digits, '.', '-', '_')")
    parts = PurePosixPath(filename).parts
    if not filename or filename.startswith("/") or any(p in (".", "..") for p in parts):
        raise HubError(f"{spec}: {usage}")
    if not filename.lower().endswith(".asw"):
        raise HubError(f"{spec}: {filename!r} is not a .asw file ({usage})")
    if revision is not None and not revision.strip():
        raise HubError(f"{spec}: empty revision after '@'")
    check_revision(spec, revision)
    return HubFile(scheme, f"{owner}/{repo}", filename, revision)


def check_revision(what: str, revision: str | None) -> None:
    """Refuse a revision that is no branch, tag or commit name; the hubs' libraries build cache paths from it."""
    if revision is not None and (not _REVISION.fullmatch(revision) or revision.startswith("/")
                                 or any(p in ("", ".", "..") for p in revision.split("/"))):
        raise HubError(f"{what}: {revision!r} is not a revision (a branch, tag or commit: no spaces, '\\' or "
                       "control characters, no empty, '.' or '..' part between '/')")


# ---------------------------------------------------------------------------------------------------- downloads
def locate(spec: str | os.PathLike[str] | Located, report: Report | None = None) -> Located:
    """A local path as is; a hub URI downloaded (or found in the hub's cache) and reported in one line."""
    if isinstance(spec, Located):
        return spec
    hub_file = parse(spec) if isinstance(spec, str) else None
    if hub_file is None:
        return Located(Path(spec).expanduser())
    asked = time.time()
    path = _download_hf(hub_file) if hub_file.scheme == "hf" else _download_ms(hub_file)
    if hub_file.scheme == "ms":
        resolved, note = _ms_revision(hub_file, path, asked)
    else:  # huggingface_hub: the snapshot folder is the commit the revision resolved to
        resolved, note = _snapshot_revision(path, hub_file.filename) or hub_file.revision, ""
    located = Located(path, hub_file, resolved, report)
    if report is not None:
        report(f"{hub_file.uri}: revision {resolved or 'unknown'}, cached at {path}{note}")
    return located


def _ms_revision(hub_file: HubFile, path: Path, asked: float) -> tuple[str | None, str]:
    """The revision of the file modelscope returned (see _ms_copy_of), and a note for the report line: a cached copy
    of a branch is returned without asking the hub whether the branch moved on."""
    inner = PurePosixPath(hub_file.filename).parts
    revision = _ms_copy_of(hub_file.uri, path, hub_file.revision, inner)
    if revision is None:
        return None, " (modelscope's older cache layout: which revision this copy is, is not recorded)"
    note = ""
    if revision == MS_DEFAULT_REVISION:
        with contextlib.suppress(OSError):
            written = path.stat().st_mtime
            if written < asked - 1:  # not written by this call: a copy from earlier
                since = time.strftime("%Y-%m-%d %H:%M", time.localtime(written))
                note = (f" (a copy from {since}: modelscope reuses a cached copy of a branch without asking the hub "
                        "whether it moved on; pin a tag or commit, or delete the copy to download the branch anew)")
    return revision, note


def _ms_copy_of(what: str, path: Path, revision: str | None, inner: tuple[str, ...]) -> str | None:
    """The revision `path` (a file or snapshot folder modelscope returned; `inner`: its parts below the snapshot
    folder) is a copy of: the one asked, since modelscope caches by revision name (`.../snapshots/<revision>/`).
    modelscope also returns a file of its older flat cache layout (<= 1.37; no revision kept) for any revision
    asked, if that cache exists (no `snapshots` folder above it): None when no revision was pinned, refused when one
    was."""
    wanted = revision or MS_DEFAULT_REVISION
    tail = ("snapshots", *wanted.split("/"), *inner)
    if path.parts[-len(tail):] == tail:
        return wanted
    above = path.parts[:len(path.parts) - len(inner)]  # the folder modelscope keeps the repository's files in
    legacy = "snapshots" not in above[-3:]  # not .../snapshots/<revision> (revisions of up to two parts)
    if legacy and revision is None:
        return None
    why = ("from its older cache layout, which keeps no revision; move that repository's folder out of the "
           "modelscope cache and run again to download the pinned revision") if legacy else \
        f"not its cached copy of revision {wanted!r} (.../snapshots/{wanted}/)"
    raise HubError(f"{what}: modelscope returned {path}, {why}")


def _download_hf(hub_file: HubFile) -> Path:
    from huggingface_hub import hf_hub_download

    with _hf_errors(hub_file.uri, hub_file.revision, hub_file.filename):
        return Path(hf_hub_download(hub_file.repo_id, hub_file.filename, revision=hub_file.revision,
                                    local_files_only=offline()))


def _modelscope() -> tuple[Callable[..., str], Callable[..., str]]:
    """modelscope's (model_file_download, snapshot_download): from the light official client modelscope-hub
    (what modelscope >= 1.38 delegates to; it imports in well under a second), else from an older modelscope
    (whose import also loads torch when it is installed: seconds)."""
    try:
        from modelscope_hub.compat import model_file_download, snapshot_download

        return model_file_download, snapshot_download
    except ImportError:
        pass
    try:
        from modelscope.hub.file_download import model_file_download
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError:
        raise HubError(MODELSCOPE_MISSING) from None
    return model_file_download, snapshot_download


def _download_ms(hub_file: HubFile) -> Path:
    model_file_download, _ = _modelscope()
    with _ms_errors(hub_file.uri):
        return Path(model_file_download(hub_file.repo_id, hub_file.filename,
                                        revision=hub_file.revision or MS_DEFAULT_REVISION,
                                        local_files_only=offline()))


def download_snapshot(scheme: str, repo_id: str, revision: str | None,
                      patterns: list[str]) -> tuple[Path, str | None]:
    """The local snapshot folder of a whole hub repository (only files matching `patterns`), for the converter, and
    the revision it is a copy of (hf: the commit; ms: the revision name, None from modelscope's older cache)."""
    what = f"{repo_id} ({SCHEMES[scheme]})"
    check_revision(what, revision)
    if scheme == "hf":
        from huggingface_hub import snapshot_download

        with _hf_errors(what, revision, None):
            folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                            local_files_only=offline()))
        return folder, snapshot_revision(folder) or revision
    _, ms_snapshot_download = _modelscope()
    with _ms_errors(what):
        folder = Path(ms_snapshot_download(repo_id, revision=revision or MS_DEFAULT_REVISION,
                                           allow_patterns=patterns, local_files_only=offline()))
    return folder, _ms_copy_of(what, folder, revision, ())


@contextlib.contextmanager
def _hf_errors(what: str, revision: str | None, filename: str | None) -> Iterator[None]:
    """huggingface_hub's exceptions as one-line HubErrors."""
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    try:
        yield
    except GatedRepoError:
        raise HubError(f"{what}: gated repository; accept its terms on the hub and log in (hf auth login or "
                       "HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise HubError(f"{what}: no such repository on the hub (or it is private: log in with hf auth login or "
                       "set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise HubError(f"{what}: revision {revision!r} not found") from None
    except LocalEntryNotFoundError:
        raise HubError(f"{what}: not in the local huggingface_hub cache and the hub cannot be reached "
                       "(HF_HUB_OFFLINE set or no network); download it once on a connected machine") from None
    except EntryNotFoundError:
        raise HubError(f"{what}: the repository has no file {filename!r} at that revision") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise HubError(f"{what}: download failed: {_first_line(exc)}") from None


@contextlib.contextmanager
def _ms_errors(what: str) -> Iterator[None]:
    """modelscope's exceptions (their classes change between releases) as one-line HubErrors."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - any failure of the library is one line naming the file
        if offline():
            raise HubError(f"{what}: not in the local modelscope cache and HF_HUB_OFFLINE is set; download it once "
                           f"on a connected machine ({_first_line(exc)})") from None
        raise HubError(f"{what}: download from ModelScope failed: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def snapshot_revision(folder: Path) -> str | None:
    """The revision of a snapshot folder in either hub's cache layout (`.../snapshots/<revision>`), else None
    (modelscope's older flat layout keeps no revision)."""
    return folder.name if folder.parent.name == "snapshots" else None


def _snapshot_revision(path: Path, filename: str) -> str | None:
    return snapshot_revision(path.parents[len(PurePosixPath(filename).parts) - 1])


# ------------------------------------------------------------------------------------------- check on arrival
def open_model_file(spec: str | os.PathLike[str] | Located, backend: str | None = None, report: Report | None = None,
                    verify_once: bool = True, on_open: Callable[[fmt.AswFile], object] | None = None) -> fmt.AswFile:
    """Open a local or hub .asw file: locate it, read its manifest, refuse a file `backend` cannot run (before any
    weight is read), and for a hub file check every tensor hash once (remembered beside the cached file).
    `on_open` is called with the validated file before any of that reads a weight (the console scripts' bus-error
    guard: runtime/busguard.py)."""
    located = locate(spec, report)
    report = report or located.report
    try:
        asw = fmt.AswFile.open(located.path)
    except fmt.FormatError as exc:
        raise _as_corrupt(exc, located) from None
    try:
        if on_open is not None:
            on_open(asw)
        if backend is not None:
            asw.check_runnable(backend)
        if verify_once and located.origin is not None and not is_remembered(asw, located):
            verify(asw, located, report)
    except BaseException:
        asw.close()
        raise
    return asw


def verify(asw: fmt.AswFile, located: Located | None = None, report: Report | None = None) -> None:
    """Check every tensor hash and the padding (a progress bar on stderr when it is a terminal); for a hub file,
    remember a pass beside the cached file and turn a failure into the error that says which file to delete."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    console = Console(stderr=True)
    progress = Progress(TextColumn("[bold]verifying"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        console=console, transient=True, disable=not console.is_terminal)
    task = progress.add_task("verify", total=asw.preamble.data_nbytes)
    published = _published_sha256(located)
    if progress.disable and report is not None and located is not None and located.origin is not None:
        report(f"{located.origin.uri}: checking every tensor hash ({asw.preamble.data_nbytes / 1e9:.2f} GB)"
               f"{' and the SHA-256 the hub published' if published else ''}, once, before its first use")
    try:
        with progress:
            asw.verify(lambda entry: progress.advance(task, entry.nbytes))
            if published is not None:
                whole = progress.add_task("sha-256", total=asw.opened.st_size)
                actual = asw.sha256(lambda nbytes: progress.advance(whole, nbytes))
                if actual != published:
                    raise fmt.HashMismatch(f"{asw.path}: the file's SHA-256 is {actual}, not {published}, the one the "
                                           "hub published for it (its blob's name): another file took its place")
    except (fmt.HashMismatch, fmt.NonZeroPadding) as exc:
        if located is not None and located.origin is not None:
            _forget(located)
            raise _as_corrupt(exc, located) from None
        raise
    if located is not None and located.origin is not None:
        where = _remember(asw, located)
        if report is not None:
            report(f"{located.origin.uri}: all {len(asw.tensors)} tensor hashes match" +
                   (f" (remembered in {where})" if where else " (could not write the record beside the cached file)"))


def _published_sha256(located: Located | None) -> str | None:
    """The SHA-256 huggingface_hub names a downloaded LFS file's blob by (the hub's own hash of what it published),
    or None (a local file, ModelScope, a small non-LFS file whose blob is named by its git hash)."""
    if located is None or located.origin is None or located.origin.scheme != "hf":
        return None
    name = located.path.resolve().name
    return name if re.fullmatch(r"[0-9a-f]{64}", name) else None


def record_path(path: Path) -> Path:
    """Where the verification record of a cached file lies: beside the real file (the blob, for huggingface_hub)."""
    real = path.resolve()
    return real.with_name(f".{real.name}{RECORD_SUFFIX}")


def _identity(asw: fmt.AswFile) -> dict[str, int]:
    """The identity of the file `asw` mapped, from the status taken when it was opened: the record describes the
    file that was checked even when another one has replaced it at that path since."""
    stat = asw.opened
    return {"dev": stat.st_dev, "ino": stat.st_ino, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "ctime_ns": stat.st_ctime_ns, "manifest_xxh3_64": asw.preamble.manifest_xxh3_64}


def is_remembered(asw: fmt.AswFile, located: Located) -> bool:
    """Whether a record says this very file (same identity, unchanged since) passed the check."""
    try:
        record = json.loads(record_path(located.path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("identity") == _identity(asw)


def _remember(asw: fmt.AswFile, located: Located) -> Path | None:
    from ascend_super import __version__

    where = record_path(located.path)
    record = {"identity": _identity(asw), "tensors": len(asw.tensors), "verifier": f"ascend-super {__version__}",
              "origin": located.describe()}
    try:
        replace_text(where, json.dumps(record, indent=1))
    except OSError:
        return None
    return where


def _forget(located: Located) -> None:
    with contextlib.suppress(OSError):
        record_path(located.path).unlink(missing_ok=True)


def _as_corrupt(exc: fmt.FormatError, located: Located) -> fmt.FormatError:
    """For a hub file, the same error saying that the cached download is not used and how to get a good one."""
    if located.origin is None or isinstance(exc, fmt.UnsupportedVersion):
        return exc
    return type(exc)(f"{exc} -- the cached download of {located.origin.uri} is corrupt or incomplete and was not "
                     f"used; delete {located.path.resolve()} and run again to download it anew")
