"""Load the MNIST digits as in-memory uint8 tensors, with errors that say how to fix missing data.

Everything downstream distorts batches of these tensors on the training device, so this module only
has to find (or download) the four original IDX files and hand back ``(images, labels)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.datasets import MNIST

from stnbench.errors import MNISTNotFoundError

# The four original IDX files and their exact sizes: a wrong size means a truncated or foreign file.
RAW_FILES = {
    "train-images-idx3-ubyte": 47_040_016,
    "train-labels-idx1-ubyte": 60_008,
    "t10k-images-idx3-ubyte": 7_840_016,
    "t10k-labels-idx1-ubyte": 10_008,
}
# Their MD5 sums (uncompressed; the published, widely listed values): right-sized files of other content
# (a damaged copy, another dataset) are caught before anything trains on them.
RAW_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
# IDX headers: magic number (2051 images, 2049 labels) and item count.
_HEADERS = {"train-images-idx3-ubyte": (2051, 60000), "train-labels-idx1-ubyte": (2049, 60000),
            "t10k-images-idx3-ubyte": (2051, 10000), "t10k-labels-idx1-ubyte": (2049, 10000)}
MEMO_FILE = "mnist-md5.json"


@dataclass(frozen=True)
class DigitSplit:
    """Digits of one split: ``images`` uint8 [N, 28, 28], ``labels`` int64 [N]."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> DigitSplit:
        return DigitSplit(self.images[index], self.labels[index])


def _missing_message(root: Path, reason: str) -> str:
    raw = root / "MNIST" / "raw"
    files = "\n".join(f"  {raw / name}" for name in RAW_FILES)
    return (
        f"MNIST is not available under data root '{root}' ({reason}).\n"
        f"Put the four original files (uncompressed or .gz) here:\n{files}\n"
        "or point stnbench at an existing copy with `data.root=/path/to/data` or the "
        "STNBENCH_DATA_DIR environment variable (the folder that contains MNIST/raw/)."
    )


def raw_files_problem(root: Path) -> tuple[str, str] | None:
    """("missing" | "corrupt", details) when the raw files under ``root`` cannot be used, else None."""
    raw = root / "MNIST" / "raw"
    missing = [name for name in RAW_FILES if not (raw / name).is_file()]
    if missing:
        return "missing", "missing " + ", ".join(missing)
    wrong = [f"{name} has {(raw / name).stat().st_size} bytes, expected {size}"
             for name, size in RAW_FILES.items() if (raw / name).stat().st_size != size]
    return ("corrupt", "corrupt: " + "; ".join(wrong)) if wrong else None


def ensure_mnist(root: str | Path, download: bool = True) -> Path:
    """Make sure the four raw files are under ``root`` (downloading them when missing and allowed) without
    reading them; raise ``MNISTNotFoundError`` saying where to put them otherwise.

    A read-only root with complete files works: nothing is written unless something is missing.
    """
    root = Path(root).expanduser()
    problem = raw_files_problem(root)
    if problem and problem[0] == "missing" and download:
        try:
            _download(root)
        except Exception as error:  # network down, read-only root, corrupt archive ...
            raise MNISTNotFoundError(_missing_message(
                root, f"{problem[1]}; download failed: {type(error).__name__}: {error}")) from None
        problem = raw_files_problem(root)
    if problem:
        reason = problem[1] + ("" if problem[0] == "corrupt" or download else " (download disabled)")
        raise MNISTNotFoundError(_missing_message(root, reason))
    return root


def _download(root: Path) -> None:
    """Fetch the missing raw files into a scratch folder, then move them to ``<root>/MNIST/raw``: the data root
    gets nothing (no folder either) unless the download brought the files. ``.gz`` files already in raw/ are
    unpacked instead of downloaded again (torchvision skips a download whose archive is there and intact)."""
    raw = root / "MNIST" / "raw"
    with tempfile.TemporaryDirectory(prefix="stnbench-mnist-") as scratch:
        fetched = Path(scratch) / "MNIST" / "raw"
        fetched.mkdir(parents=True)
        for archive in raw.glob("*.gz") if raw.is_dir() else ():
            (fetched / archive.name).symlink_to(archive.resolve())
        MNIST(scratch, train=True, download=True)  # fetches (or unpacks) all four files
        brought = [name for name in RAW_FILES if not (raw / name).is_file() and (fetched / name).is_file()]
        if not brought:
            return
        raw.mkdir(parents=True, exist_ok=True)
        for name in brought:
            part = raw / f".{name}.{os.getpid()}.part"
            try:
                shutil.copyfile(fetched / name, part)
                os.replace(part, raw / name)  # a reader never sees half a file
            finally:
                part.unlink(missing_ok=True)


def load_mnist(root: str | Path, train: bool, download: bool = True) -> DigitSplit:
    """Read one MNIST split, downloading it first when it is missing and ``download`` is allowed."""
    root = ensure_mnist(root, download)
    dataset = MNIST(str(root), train=train, download=False)
    return DigitSplit(dataset.data.contiguous(), dataset.targets.long().contiguous())


def file_md5(path: Path) -> str:
    digest = hashlib.md5()  # noqa: S324 - a content fingerprint, not security
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _memo_path(memo_dir: str | Path | None) -> Path | None:
    return Path(memo_dir).expanduser() / MEMO_FILE if memo_dir else None


def raw_md5(root: str | Path, memo_dir: str | Path | None = None) -> dict[str, str]:
    """MD5 of each raw file, remembered in ``<memo_dir>/mnist-md5.json`` by (path, size, mtime), so only
    the first start-up after a file changes reads it (about 0.2 s for all four)."""
    raw = Path(root).expanduser().resolve() / "MNIST" / "raw"
    memo_file = _memo_path(memo_dir)
    try:
        memo = json.loads(memo_file.read_text()) if memo_file and memo_file.is_file() else {}
    except (OSError, ValueError):
        memo = {}
    sums, changed = {}, False
    for name in RAW_FILES:
        path = raw / name
        stat = path.stat()
        stamp = [stat.st_size, stat.st_mtime_ns]
        entry = memo.get(str(path))
        if entry and entry[:2] == stamp:
            sums[name] = entry[2]
            continue
        sums[name] = file_md5(path)
        memo[str(path)] = [*stamp, sums[name]]
        changed = True
    if changed and memo_file:
        try:  # remembering is an optimisation: a read-only cache folder is reported where it is written to
            memo_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo_file.with_name(f".{MEMO_FILE}.{os.getpid()}")
            tmp.write_text(json.dumps(memo, indent=1))
            os.replace(tmp, memo_file)
        except OSError:
            pass
    return sums


def check_headers(root: str | Path) -> None:
    """IDX magic numbers, item counts and label range: what a custom MNIST-format dataset must still get right."""
    raw = Path(root).expanduser() / "MNIST" / "raw"
    for name, (magic, count) in _HEADERS.items():
        header = (raw / name).read_bytes()[:8]
        found = (int.from_bytes(header[:4], "big"), int.from_bytes(header[4:8], "big"))
        if found != (magic, count):
            raise MNISTNotFoundError(f"{raw / name} is not an MNIST IDX file: header says magic {found[0]}, "
                                     f"{found[1]} items; expected magic {magic}, {count} items")
        if "labels" in name:
            labels = (raw / name).read_bytes()[8:]
            if labels and max(labels) > 9:
                raise MNISTNotFoundError(f"{raw / name} holds label {max(labels)}; MNIST labels are 0-9")


def verify_mnist(root: str | Path, check_known: bool = True, memo_dir: str | Path | None = None) -> dict[str, str]:
    """The raw files' MD5 sums, checked against the official ones unless ``check_known`` is off (a custom
    dataset in MNIST format: then headers and label ranges are still checked)."""
    sums = raw_md5(root, memo_dir)
    raw = Path(root).expanduser() / "MNIST" / "raw"
    if check_known:
        wrong = [name for name, digest in sums.items() if digest != RAW_MD5[name]]
        if wrong:
            raise MNISTNotFoundError(
                f"{raw / wrong[0]} is not the original MNIST file (MD5 {sums[wrong[0]]}, expected "
                f"{RAW_MD5[wrong[0]]}){' and ' + str(len(wrong) - 1) + ' more' if len(wrong) > 1 else ''}: "
                "replace it with the original (delete it to download again), or set data.verify_checksums=false "
                "for a custom dataset in MNIST format")
    else:
        check_headers(root)
    return sums
