"""Named datasets: where their files are looked for, where they come from, how they are verified.

Lookup order for ``locate``: an explicit data folder (argument, else ``$MINIVISION_DATA``), the
user cache, the Debian package folder (Fashion-MNIST only), and finally a download into the
explicit folder or the cache. An explicit folder that holds part of a dataset is completed by
download (or named, with the files it lacks, when that fails); one that holds none of it is passed
over with a note naming the copy used instead. Downloads go to a temporary file in the target
folder, are checked against the published digest and only then moved into place, so an
interrupted or tampered download never leaves a file that a later run would trust.

The files of an IDX dataset (MNIST, Fashion-MNIST) are found in the forms people have them: as
published (``train-images-idx3-ubyte.gz``), decompressed (``train-images-idx3-ubyte``), and with the
dotted name some copies use (``train-images.idx3-ubyte``, Kaggle's MNIST), compressed or not.

Digests: each IDX file has the sha256 of its *decompressed* bytes, which holds for every copy
(distributions such as Debian re-compress the files, and a decompressed copy has no archive to
check); MNIST's files keep their published MD5 too, checked on a file exactly as published.
CIFAR-10 is checked against the published MD5 of the archive as downloaded. Files are verified
on every load: hashing is ~0.1 s for all of Fashion-MNIST, cheap next to decompression, and it
catches a corrupted cache the run it happens.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from minivision.data import cifar, idx
from minivision.data.dataset import Dataset, Split
from minivision.errors import DataError, Note
from minivision.fileio import atomic_path

DOWNLOAD_TIMEOUT_S = 30.0
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class RemoteFile:
    """One published file. ``md5`` is of the file as published; ``sha256`` of its decompressed bytes."""

    name: str
    md5: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Source:
    """A named dataset: its files, mirrors (tried in order), classes and how a user gets it by hand."""

    name: str
    files: tuple[RemoteFile, ...]
    mirrors: tuple[str, ...]
    classes: tuple[str, ...]
    apt_package: str | None = None


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# Tests replace entries (dataclasses.replace) to point at a local server with their own digests;
# MINIVISION_MIRROR_<NAME> (comma-separated base URLs, NAME upper-case with _ for -) overrides too.
SOURCES: dict[str, Source] = {
    "fashion-mnist": Source(
        name="fashion-mnist",
        files=(
            RemoteFile("train-images-idx3-ubyte.gz",
                       sha256="c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
            RemoteFile("train-labels-idx1-ubyte.gz",
                       sha256="bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
            RemoteFile("t10k-images-idx3-ubyte.gz",
                       sha256="5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
            RemoteFile("t10k-labels-idx1-ubyte.gz",
                       sha256="0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
        ),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        classes=FASHION_CLASSES,
        apt_package="dataset-fashion-mnist",
    ),
    # MD5: as published (torchvision's MNIST resources); sha256 of the decompressed files (47,040,016, 60,008,
    # 7,840,016 and 10,008 bytes), as recorded for the same files in several public projects' checksum lists
    "mnist": Source(
        name="mnist",
        files=(
            RemoteFile("train-images-idx3-ubyte.gz", md5="f68b3c2dcbeaaa9fbdd348bbdeb94873",
                       sha256="ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
            RemoteFile("train-labels-idx1-ubyte.gz", md5="d53e105ee54ea40749a09fcbcd1e9432",
                       sha256="65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
            RemoteFile("t10k-images-idx3-ubyte.gz", md5="9fb629c4189551a2d022fa330f9573f3",
                       sha256="0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
            RemoteFile("t10k-labels-idx1-ubyte.gz", md5="ec29112dd5afa0611ce80d1b7f02629c",
                       sha256="ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
        ),
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        classes=tuple(str(i) for i in range(10)),
    ),
    "cifar10": Source(
        name="cifar10",
        files=(RemoteFile("cifar-10-binary.tar.gz", md5="c32a1d4ab5d03f1284b67883e8d87530"),),
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        classes=tuple(cifar.CLASSES),
    ),
}
# The python-pickle CIFAR archive is accepted when a user already has it (torchvision's MD5).
CIFAR_PYTHON = RemoteFile("cifar-10-python.tar.gz", md5="c58f30108f718f92721af3b95e74349a")

DATASETS: tuple[str, ...] = tuple(SOURCES)


def user_cache_dir() -> Path:
    """``$MINIVISION_CACHE``, else ``$XDG_CACHE_HOME/minivision``, else ``~/.cache/minivision``."""
    if os.environ.get("MINIVISION_CACHE"):
        return Path(os.environ["MINIVISION_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "minivision"


def get_source(name: str) -> Source:
    """The registered source for a name, or a DataError with a "did you mean"."""
    if name in SOURCES:
        return SOURCES[name]
    close = difflib.get_close_matches(name, DATASETS, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise DataError(f"unknown dataset {name!r}{hint} (known: {', '.join(DATASETS)})")


def _mirrors(source: Source) -> tuple[str, ...]:
    env = os.environ.get("MINIVISION_MIRROR_" + source.name.upper().replace("-", "_"))
    if env:
        return tuple(m.strip() for m in env.split(",") if m.strip())
    return source.mirrors


def _debian_dirs(source: Source) -> list[Path]:
    if source.apt_package is None:
        return []
    if DEBIAN_FASHION_DIR.is_dir():
        return [DEBIAN_FASHION_DIR]
    if not shutil.which("dpkg"):
        return []
    try:
        listing = subprocess.run(["dpkg", "-L", source.apt_package], capture_output=True, text=True,
                                 timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    first = source.files[0].name
    return [Path(line).parent for line in listing.splitlines() if line.endswith(first)]


def local_names(remote: RemoteFile) -> list[str]:
    """The names a copy of a published file may have, in the order they are looked for: as published,
    then, for a file with a digest of its decompressed bytes (``sha256``), decompressed and with the
    dotted IDX name (``train-images.idx3-ubyte``, as Kaggle's MNIST has it), each with or without .gz."""
    names = [remote.name]
    if remote.sha256 and remote.name.endswith(".gz"):
        plain = remote.name[:-3]
        dotted = plain.replace("-idx", ".idx", 1)
        names += [n for n in (plain, dotted, dotted + ".gz") if n not in names]
    return names


def _find(folder: Path, remote: RemoteFile) -> Path | None:
    """The copy of a published file in a folder, under any of its ``local_names``, or None."""
    for name in local_names(remote):
        if (folder / name).is_file():
            return folder / name
    return None


def _complete(folder: Path, source: Source) -> bool:
    if source.name == "cifar10" and (_find(folder, CIFAR_PYTHON) or cifar.batch_folder(folder)):
        return True
    return all(_find(folder, f) for f in source.files)


def _missing(folder: Path, source: Source) -> list[RemoteFile]:
    """The files of ``source`` that ``folder`` has under none of their ``local_names``."""
    return [f for f in source.files if _find(folder, f) is None]


def _shown(remote: RemoteFile) -> str:
    """A file as a message names it: ``train-images-idx3-ubyte[.gz]`` where a decompressed copy counts too."""
    return remote.name[:-3] + "[.gz]" if len(local_names(remote)) > 1 else remote.name


def _candidates(source: Source, data_dir: Path | None) -> list[Path]:
    folders: list[Path] = []
    if data_dir is not None:
        folders += [data_dir, data_dir / source.name]
    folders.append(user_cache_dir() / "datasets" / source.name)
    folders += _debian_dirs(source)
    return folders


def verify(path: Path, remote: RemoteFile, data: bytes | None = None, *, published: bool | None = None,
           decompress: bool = False) -> bytes:
    """Check a file against its published digest and return its bytes (decompressed if asked).

    The MD5 applies only to the file exactly as published (``published``, by default: it carries
    the published name); the sha256 applies to the decompressed bytes of any copy.
    """
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if published is None:
        published = path.name == remote.name
    if remote.md5 and published:
        got = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if got != remote.md5:
            raise DataError(f"{path}: md5 {got} does not match the published {remote.md5}; "
                            "the file is corrupt or not the original, delete it and try again")
    is_gzip = data[:2] == b"\x1f\x8b"
    raw = idx.gunzip(data, path) if is_gzip and (remote.sha256 or decompress) else data
    if remote.sha256:
        got = hashlib.sha256(raw).hexdigest()
        if got != remote.sha256:
            raise DataError(f"{path}: sha256 {got} (decompressed) does not match the published "
                            f"{remote.sha256}; the file is corrupt or not the original, "
                            "delete it and try again")
    return raw if decompress else data


def _download(url: str, target: Path, remote: RemoteFile) -> None:
    """Fetch one file to a temporary name next to ``target``, verify it, then move it into place."""
    import urllib.request  # here: reading data already on disk never needs it (~30 ms to import)

    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            shutil.copyfileobj(response, out, length=1 << 20)
        try:
            verify(tmp, remote, published=True)
        except DataError as exc:  # name the URL, not the temporary file
            raise DataError(str(exc).replace(str(tmp), url)) from None


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


def _fetch_missing(source: Source, target: Path, given: str | None = None) -> None:
    """Download every file of ``source`` missing from ``target``, trying mirrors in order. ``given``: how
    the user named ``target`` (``--data-dir``, ``$MINIVISION_DATA``), None for the cache."""
    mirrors = _mirrors(source)
    missing = _missing(target, source)
    for remote in source.files:
        if _find(target, remote):
            continue
        reason = "no mirror configured"
        for base in mirrors:
            url = base.rstrip("/") + "/" + remote.name
            print(f"downloading {url} -> {target}", file=sys.stderr)
            try:
                _download(url, target / remote.name, remote)
                break
            except DataError as exc:  # digest mismatch: try the next mirror, report if none is good
                reason = f"{url}: {exc}"
            except (OSError, ValueError) as exc:  # URLError, timeouts, HTTP errors are OSErrors
                reason = f"{url}: {_one_line(exc)}"
        else:
            raise DataError(_not_found_message(source, target, reason, given, missing))


def _not_found_message(source: Source, target: Path, reason: str, given: str | None = None,
                       missing: list[RemoteFile] | None = None) -> str:
    """The one line for a dataset that is neither here nor downloadable: for a folder the user gave
    (``given``: ``--data-dir`` or ``$MINIVISION_DATA``), that folder and the files it lacks (``missing``,
    default all); else where it was looked for and how to get it, ``--data-dir`` among the ways."""
    missing = list(missing) if missing else list(source.files)
    ways = []
    if source.apt_package and given is None:
        ways.append(f"install it with `apt-get install -y {source.apt_package}`")
    mirrors = _mirrors(source)
    base = mirrors[0].rstrip("/") + "/" if mirrors else ""
    ways.append(f"download {' '.join(base + f.name for f in missing)} into {target}")
    if given is None:
        ways.append("or pass --data-dir")
        return f"{source.name} not found and download failed ({reason}): {', '.join(ways)}"
    return (f"{source.name}: {given} {target} lacks {', '.join(_shown(f) for f in missing)}, and the download "
            f"failed ({reason}): {ways[0]}")


def _explicit_dir(data_dir: str | Path | None) -> Path | None:
    explicit = data_dir if data_dir is not None else os.environ.get("MINIVISION_DATA") or None
    return Path(explicit).expanduser() if explicit is not None else None


def _given_as(data_dir: str | Path | None) -> str:
    """How the user named the explicit data folder, for messages."""
    return "--data-dir" if data_dir is not None else "$MINIVISION_DATA"


def _partial(folder: Path, source: Source) -> Path | None:
    """The explicit folder (or its sub-folder named after the dataset) that holds some but not all of the
    dataset's files, or None."""
    for f in (folder, folder / source.name):
        if any(_find(f, r) for r in source.files) and not _complete(f, source):
            return f
    return None


def find_local(name: str, data_dir: str | Path | None = None) -> Path | None:
    """The folder holding a complete copy of dataset ``name`` on this machine, or None; never downloads.

    Looks where ``locate`` looks, in the same order: ``data_dir`` (else ``$MINIVISION_DATA``), the
    user cache, Debian's dataset packages. Raises DataError for an unknown name."""
    source = get_source(name)
    return next((f for f in _candidates(source, _explicit_dir(data_dir)) if _complete(f, source)), None)


def locate(name: str, data_dir: str | Path | None = None) -> Path:
    """The folder holding the files of dataset ``name``, downloading them if no copy is found.

    An explicit folder (``data_dir``, else ``$MINIVISION_DATA``) that holds part of the dataset is
    completed by download into it; one that holds none of it gives way to another local copy (a ``Note``
    names both when ``data_dir`` was given). Raises DataError (one line) when the files are neither found
    nor downloadable: for an explicit folder, naming it and the files it lacks."""
    source = get_source(name)
    explicit_dir = _explicit_dir(data_dir)
    given = _given_as(data_dir) if explicit_dir is not None else None
    partial = _partial(explicit_dir, source) if explicit_dir is not None else None
    found = None
    if partial is None:
        found = find_local(name, data_dir)
    if found is not None:
        if data_dir is not None and found not in (explicit_dir, explicit_dir / source.name):
            warnings.warn(f"{given} {explicit_dir} holds no {source.name} files; using the copy in {found}", Note,
                          stacklevel=2)
        return found
    target = partial or (explicit_dir if explicit_dir is not None else user_cache_dir() / "datasets" / source.name)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = f"cannot create {target}: {_one_line(exc)}"
        raise DataError(_not_found_message(source, target, reason, given, _missing(target, source))) from None
    _fetch_missing(source, target, given)
    return target


def load_named(name: str, data_dir: str | Path | None = None, test_only: bool = False) -> Dataset:
    """Load a registered dataset (train and test splits, class names), verifying its files.

    ``test_only`` skips reading the training files of IDX datasets (``evaluate`` on the test split
    then reads 10,000 images, not 70,000); the train split is then empty."""
    source = get_source(name)
    folder = locate(name, data_dir)
    if source.name == "cifar10":
        for remote in (*source.files, CIFAR_PYTHON):
            path = _find(folder, remote)
            if path is not None:
                return cifar.read_cifar_archive(verify(path, remote), str(path))
        return cifar.read_cifar(folder)  # extracted batches: no published digest to check
    arrays = {}
    for remote in source.files:
        if test_only and remote.name.startswith("train-"):
            continue
        path = _find(folder, remote)
        assert path is not None  # locate() returned a complete folder
        raw = verify(path, remote, decompress=True)
        arrays[remote.name.split("-idx")[0]] = (idx.parse_idx(raw, path), path)
    splits = {}
    for split in ("t10k",) if test_only else ("train", "t10k"):
        (images, ipath), (labels, lpath) = arrays[f"{split}-images"], arrays[f"{split}-labels"]
        splits[split] = idx.make_split(images, labels, ipath, lpath, num_classes=len(source.classes))
    if test_only:
        test = splits["t10k"]
        splits["train"] = Split(test.x[:0], test.y[:0])
    return Dataset(name=source.name, classes=list(source.classes), train=splits["train"],
                   test=splits["t10k"], source=str(folder))
