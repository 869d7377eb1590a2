"""How often does reading order hang on a pixel? On data=multi_digit_scattered the digits are read left to right
by their centres, so two digits whose centres stand at nearly the same x are ordered by a pixel or two: a
model can read both and still say them in the wrong order (``unordered_err`` forgives that, ``err`` does not).
Prints, per digit range, the share of images of two or more digits with two neighbours in reading order whose
centres lie within 0, 1, 2 pixels in x (layouts only: no digits are drawn).

    python scripts/scattered_order_ties.py                        # experiment=scattered's canvas and counts
    python scripts/scattered_order_ties.py --canvas 100 --ranges 1-4
"""

from __future__ import annotations

import argparse

import torch

from stnbench.data.scattered import ScatteredDigits


def nearest_neighbour_gap(left: torch.Tensor) -> torch.Tensor:
    """[B] the smallest x distance between digits next in reading order, from ``left`` [B, N >= 2] (a large
    number for an image of one digit)."""
    both = (left[:, 1:] >= 0) & (left[:, :-1] >= 0)
    return torch.where(both, left[:, 1:] - left[:, :-1], torch.full_like(left[:, 1:], 10**6)).min(1).values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canvas", type=int, default=90)
    parser.add_argument("--ranges", default="1-3,4-4", help="digit ranges low-high, comma separated")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"canvas {args.canvas}x{args.canvas}, {args.images:,} layouts per range, seed {args.seed}")
    for spec in args.ranges.split(","):
        low, high = (int(v) for v in spec.split("-"))
        data = ScatteredDigits(num_digits=[low, high], canvas_size=args.canvas, bank_size=1, root=".")
        layout = data.sample_layout(args.images, torch.Generator().manual_seed(args.seed), torch.device("cpu"))
        several = layout["count"] > 1
        if not several.any():
            print(f"{low}-{high} digits: no image holds 2 or more")
            continue
        gap = nearest_neighbour_gap(layout["left"])[several]
        shares = ", ".join(f"within {k} px {100 * (gap <= k).float().mean():.1f} %" for k in (0, 1, 2))
        print(f"{low}-{high} digits ({int(several.sum()):,} images of 2 or more): {shares}")


if __name__ == "__main__":
    main()
