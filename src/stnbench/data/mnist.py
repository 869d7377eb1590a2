"""Load the MNIST digits as in-memory uint8 tensors, with errors that say how to fix missing data.

Everything downstream distorts batches of these tensors on the training device, so this module only
has to find (or download) the four original IDX files and hand back ``(images, labels)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.datasets import MNIST

# The four original IDX files and their exact sizes: a wrong size means a truncated or foreign file.
RAW_FILES = {
    "train-images-idx3-ubyte": 47_040_016,
    "train-labels-idx1-ubyte": 60_008,
    "t10k-images-idx3-ubyte": 7_840_016,
    "t10k-labels-idx1-ubyte": 10_008,
}


class MNISTNotFoundError(RuntimeError):
    """MNIST is neither on disk nor downloadable."""


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
            MNIST(str(root), train=True, download=True)  # fetches all four files
        except Exception as error:  # network down, read-only root, corrupt archive ...
            raise MNISTNotFoundError(_missing_message(
                root, f"{problem[1]}; download failed: {type(error).__name__}: {error}")) from None
        problem = raw_files_problem(root)
    if problem:
        reason = problem[1] + ("" if problem[0] == "corrupt" or download else " (download disabled)")
        raise MNISTNotFoundError(_missing_message(root, reason))
    return root


def load_mnist(root: str | Path, train: bool, download: bool = True) -> DigitSplit:
    """Read one MNIST split, downloading it first when it is missing and ``download`` is allowed."""
    root = ensure_mnist(root, download)
    dataset = MNIST(str(root), train=train, download=False)
    return DigitSplit(dataset.data.contiguous(), dataset.targets.long().contiguous())
