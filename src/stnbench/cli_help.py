"""``--help`` for the Hydra entry points, in well under a second.

Hydra's own help lists config groups by deep-copying its whole config repository once per group (116 times
with Hydra's and the plugins' groups): about 1.5 s of a 2 s ``stnbench-train --help``. This prints the same
two sections, the groups and the composed config, from one composition and a walk of the package's config
folder. Anything else (``--hydra-help``, ``--cfg``, ``--resolve``) is left to Hydra.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.resources import files
from importlib.resources.abc import Traversable

USAGE = {
    "train": "stnbench-train [group=option ...] [key=value ...]      one run\n"
             "       stnbench-train -m group=a,b key=x,y ...             a sweep (every combination)",
    "eval": "stnbench-eval ckpt_path=<run>/checkpoints/best.ckpt [key=value ...]",
    "predict": "stnbench-predict ckpt_path=<run>/checkpoints/best.ckpt images=<folder or file> [key=value ...]",
    "gallery": "stnbench-gallery [data=option] [key=value ...]",
}


def help_requested(args: list[str]) -> bool:
    """True when the fast help can answer: ``--help``/``-h`` without flags only Hydra knows."""
    wants = "--help" in args or "-h" in args
    return wants and not any(a.startswith("-") and a not in ("--help", "-h") for a in args)


def config_groups(root: Traversable | None = None, prefix: str = "") -> dict[str, list[str]]:
    """Group name -> its options, from the config folder (files starting with "_" are building blocks)."""
    root = root or files("stnbench.configs")
    groups: dict[str, list[str]] = {}
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith(("_", ".")):
            continue
        name = f"{prefix}{entry.name}"
        options = sorted(e.name[:-5] for e in entry.iterdir()
                         if e.is_file() and e.name.endswith(".yaml") and not e.name.startswith("_"))
        if options and name != "hydra":
            groups[name] = options
        groups.update(config_groups(entry, prefix=f"{name}/"))
    return groups


def help_text(config_name: str, overrides: list[str]) -> str:
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("stnbench.configs", version_base="1.3"):
        cfg = compose(config_name, overrides=overrides)
    groups = "\n".join(f"{group}: {', '.join(options)}" for group, options in config_groups().items())
    return (f"usage: {USAGE.get(config_name, f'stnbench-{config_name} [key=value ...]')}\n\n"
            "== Configuration groups ==\nCompose your configuration from those groups (group=option)\n\n"
            f"{groups}\n\n"
            "== Config ==\nOverride anything in the config (foo.bar=value)\n\n"
            f"{OmegaConf.to_yaml(cfg)}\n"
            "Hydra's flags (--cfg job, --multirun, --resolve, ...): --hydra-help. Docs: README.md, docs/.")


def print_help(config_name: str, args: list[str]) -> None:
    """Print the help for ``config_name`` with the overrides among ``args`` applied (exit 1 on a bad one)."""
    from hydra.errors import HydraException

    overrides = [a for a in args if not a.startswith("-")]
    try:
        print(help_text(config_name, overrides))
    except HydraException as error:
        raise SystemExit(f"stnbench-{config_name}: error: {one_line(str(error))}") from None


def one_line(message: str) -> str:
    """Hydra's "Could not find 'model/nope'" message, with its list of options, on one line."""
    first, _, rest = message.partition("\n")
    options = [line.strip() for line in rest.split("Config search path")[0].splitlines() if line.startswith("\t")]
    return f"{first} (options: {', '.join(options)})" if options else first


def run_command(config_name: str, hydra_main: Callable[[], object]) -> None:
    """An entry point's body: plain ``--help`` is answered here, everything else goes to ``hydra_main``."""
    if help_requested(sys.argv[1:]):
        print_help(config_name, sys.argv[1:])
        return
    hydra_main()
