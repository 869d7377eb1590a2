"""Export a trained single-glimpse model to ONNX or TorchScript: ``stnbench-export ckpt_path=... format=onnx``.

The exported graph takes float images [B, C, H, W] in [0, 1] and returns ``logits`` [B, T, classes] and,
for spatial transformers, ``thetas`` [B, 1, P] and ``glimpses`` [B, 1, C, h, w] (the ``ModelOutput``
fields as a tuple). ONNX needs opset >= 16 for ``grid_sample`` and >= 20 for ``affine_grid`` (affine and
attention transforms), so the default is 20 (onnxruntime >= 1.17 runs it). Recurrent models (several glimpses, Python
loops over steps) are refused: export a single-glimpse model (fcn, cnn, st_fcn, st_cnn).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from torch import nn

from stnbench.build import USER_ERRORS
from stnbench.errors import ConfigError
from stnbench.predict import load

log = logging.getLogger("stnbench")
FORMATS = ("onnx", "torchscript")
MIN_OPSET = 16  # grid_sample


class Exportable(nn.Module):
    """``ModelOutput`` as a plain tuple (logits[, thetas, glimpses]): what tracers and ONNX can carry."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(images)
        if output.thetas is None:
            return (output.logits,)
        return output.logits, output.thetas, output.glimpses


def output_names(model: nn.Module, example: torch.Tensor) -> list[str]:
    with torch.no_grad():
        count = len(Exportable(model)(example))
    return ["logits", "thetas", "glimpses"][:count]


def check_single_glimpse(model: nn.Module, example: torch.Tensor) -> None:
    with torch.no_grad():
        output = model(example)
    if output.glimpses is not None and output.glimpses.shape[1] != 1:
        raise ConfigError(f"{type(model).__name__} takes {output.glimpses.shape[1]} glimpses per image; only "
                          "single-glimpse models (fcn, cnn, st_fcn, st_cnn) can be exported")


def export(ckpt_path: str | Path, output: str | Path, fmt: str = "onnx", opset: int = 20,
           batch_size: int = 1) -> Path:
    """Write the checkpoint's model as ONNX or TorchScript (both traced with a ``batch_size`` example); return
    the path. The batch axis is dynamic (models reshape with ``images.shape[0]``, which tracing keeps)."""
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "onnx" and opset < MIN_OPSET:
        raise ConfigError(f"opset={opset}: grid_sample needs ONNX opset >= {MIN_OPSET}; pass opset={MIN_OPSET} or more")
    loaded = load(ckpt_path)
    example = torch.rand(batch_size, *loaded.input_shape)
    check_single_glimpse(loaded.model, example)
    wrapper = Exportable(loaded.model).eval()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(wrapper, example)
        traced.save(str(output))
    else:
        names = output_names(loaded.model, example)
        try:
            torch.onnx.export(wrapper, (example,), str(output), input_names=["images"], output_names=names,
                              opset_version=opset, dynamo=False,
                              dynamic_axes={name: {0: "batch"} for name in ["images", *names]})
        except torch.onnx.errors.UnsupportedOperatorError as error:
            raise ConfigError(f"ONNX export at opset={opset} failed: {error}") from None
    log.info("Exported %s to %s", ckpt_path, output)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="stnbench-export", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="+", metavar="key=value",
                        help="ckpt_path=<ckpt> [format=onnx|torchscript] [output=<file>] [opset=20] [batch_size=1]")
    args = parser.parse_args(argv)
    options = dict(item.split("=", 1) for item in args.overrides if "=" in item)
    unknown = set(options) - {"ckpt_path", "format", "output", "opset", "batch_size"}
    if "ckpt_path" not in options or unknown:
        parser.error(f"unknown keys {sorted(unknown)}" if unknown else "ckpt_path=<checkpoint> is required")
    fmt = options.get("format", "onnx")
    default = Path(options["ckpt_path"]).with_suffix(".onnx" if fmt == "onnx" else ".pt")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = export(options["ckpt_path"], options.get("output", default), fmt, int(options.get("opset", 20)),
                      int(options.get("batch_size", 1)))
    except USER_ERRORS as error:
        raise SystemExit(f"stnbench-export: error: {error}") from None
    print(path)


if __name__ == "__main__":
    main()
