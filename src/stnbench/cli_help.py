"""The Hydra entry points' front door: a fast ``--help``, and one line per mistake on the command line.

Hydra's own help lists config groups by deep-copying its whole config repository once per group (116 times
with Hydra's and the plugins' groups): about 1.5 s of a 2 s ``stnbench-train --help``. This prints the
groups the command's own config uses, its own keys and the composed config, from one composition and a walk
of the package's config folder. Anything else (``--hydra-help``, ``--cfg``, ``--resolve``) is left to Hydra.

Before a command is handed to Hydra, its overrides are composed once here (about 0.1 s, no torch or
Lightning): a mistyped option, key or group, a transform for a model without one, or a GPU trainer on a
machine without a GPU gets one line, ``stnbench-train: error: ...``, naming what was wrong, the options or
the closest key, and the fix, instead of Hydra's text (which lists building blocks as options and advises
``+key=value`` for a typo, which then runs with a junk key). Files starting with "_" are building blocks of
a group's options (``data/_datamodule.yaml``), never options themselves.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

USAGE = {
    "train": "stnbench-train [group=option ...] [key=value ...]      one run\n"
             "       stnbench-train -m group=a,b key=x,y ...             a sweep (every combination)",
    "eval": "stnbench-eval ckpt_path=<run>/checkpoints/best.ckpt [key=value ...]",
    "predict": "stnbench-predict ckpt_path=<run>/checkpoints/best.ckpt input=<folder, image or .npy> [key=value ...]",
    "gallery": "stnbench-gallery [data=option] [key=value ...]",
}
# Groups a command's help lists beyond its defaults list: the launcher runs the sweeps of stnbench-train -m.
EXTRA_GROUPS = {"train": ("hydra/launcher",)}
# Hydra's flags that pick another config or print something else: such a command line is Hydra's to read.
HYDRA_ONLY_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun",
                    "--info", "-i", "--shell-completion", "-sc", "--hydra-help", "--version", "--help", "-h")
FLAGS_WITH_VALUE = ("--cfg", "-c", "--package", "-p")
# Launchers whose runs happen on this machine: a GPU trainer must find a GPU here (SLURM's are elsewhere).
LOCAL_LAUNCHERS = ("BasicLauncher", "JoblibLauncher", "LocalLauncher")


# ---- the config folder --------------------------------------------------------------------------------------
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


def _config_file(path: str) -> Traversable | None:
    """``configs/<path>.yaml`` if the package ships it."""
    entry = files("stnbench.configs")
    for part in f"{path}.yaml".split("/"):
        entry = entry / part
    return entry if entry.is_file() else None


def _defaults(path: str) -> list[tuple[str, Any]]:
    """A config file's defaults list as (group or config name, choice) pairs, without "optional"/"override"."""
    import yaml

    entry = _config_file(path)
    if entry is None:
        return []
    loaded = yaml.safe_load(entry.read_text(encoding="utf-8")) or {}
    pairs = []
    for item in loaded.get("defaults", []) if isinstance(loaded, dict) else []:
        if isinstance(item, str):
            pairs.append((item, None))
        elif isinstance(item, dict) and len(item) == 1:
            (key, value), = item.items()
            key = str(key).removeprefix("optional ").removeprefix("override ").strip()
            pairs.append((key.partition("@")[0].lstrip("/"), value))
    return pairs


def command_groups(config_name: str, groups: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """The groups of the config folder that ``config_name``'s own defaults list uses, with their subgroups
    (model -> model/transform, model/layout): what its help lists and its command line may choose."""
    groups = config_groups() if groups is None else groups
    used = [key for key, _ in _defaults(config_name) if key != "_self_" and not key.startswith("hydra")]
    used += EXTRA_GROUPS.get(config_name, ())
    return {name: options for name, options in groups.items()
            if any(name == group or name.startswith(f"{group}/") for group in used)}


def own_keys(config_name: str) -> list[tuple[str, str]]:
    """The primary config's own top-level keys with their comments (``key: value  # comment``)."""
    entry = _config_file(config_name)
    if entry is None:
        return []
    keys: list[tuple[str, list[str]]] = []
    for line in entry.read_text(encoding="utf-8").splitlines():
        found = re.match(r"([A-Za-z]\w*):(.*)$", line)
        if found:
            keys.append((found.group(1), []))
        elif not keys or not line.startswith(" "):  # a comment at the margin is a paragraph, no key's
            continue
        comment = (found.group(2) if found else line).partition("#")[2].strip()
        if comment:  # a key's comment goes on over the lines of its children: divergence's factor, window
            keys[-1][1].append(comment)
    return [(key, " ".join(comment)) for key, comment in keys if key not in ("defaults", "hydra")]


# ---- --help --------------------------------------------------------------------------------------------------
def help_requested(args: list[str]) -> bool:
    """True when the fast help can answer: ``--help``/``-h`` without flags only Hydra knows."""
    wants = "--help" in args or "-h" in args
    return wants and not any(a.startswith("-") and a not in ("--help", "-h") for a in args)


def help_text(config_name: str, overrides: list[str]) -> str:
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("stnbench.configs", version_base="1.3"):
        cfg = compose(config_name, overrides=overrides)
    command = f"stnbench-{config_name}"
    groups = command_groups(config_name)
    if groups:
        listed = "\n".join(f"{group}: {', '.join(options)}" for group, options in groups.items())
        groups_text = f"Compose your configuration from those groups (group=option)\n\n{listed}"
    else:
        groups_text = f"{command} has none: set its keys (key=value)"
    keys = own_keys(config_name)
    width = max((len(key) for key, _ in keys), default=0)
    keys_text = "\n".join(f"{key:<{width}}  {comment}".rstrip() for key, comment in keys)
    return (f"usage: {USAGE.get(config_name, f'{command} [key=value ...]')}\n\n"
            f"== Configuration groups ==\n{groups_text}\n\n"
            f"== Keys of {command} ==\n{keys_text}\n\n"
            "== Config ==\nOverride anything in the config (foo.bar=value)\n\n"
            f"{OmegaConf.to_yaml(cfg)}\n"
            "Hydra's flags (--cfg job, --multirun, --resolve, ...): --hydra-help. Docs: README.md, docs/.")


def print_help(config_name: str, args: list[str]) -> None:
    """Print the help for ``config_name`` with the overrides among ``args`` applied (exit 1 on a bad one)."""
    from hydra.errors import HydraException

    overrides = [a for a in args if not a.startswith("-")]
    errors = command_line_errors(config_name, overrides, run=False)
    if errors:
        raise SystemExit("\n".join(f"stnbench-{config_name}: error: {error}" for error in errors))
    try:
        print(help_text(config_name, overrides))
    except HydraException as error:
        raise SystemExit(f"stnbench-{config_name}: error: {one_line(str(error))}") from None


def one_line(message: str) -> str:
    """A Hydra message on one line: "Could not find 'model/nope'" with its options (no building blocks)
    and the closest one."""
    first, _, rest = message.strip().partition("\n")
    options = [line.strip() for line in rest.split("Config search path")[0].splitlines()
               if line.startswith("\t") and not line.strip().startswith("_")]
    if not options:
        lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
        return "; ".join(lines[:3]) if first.startswith(("Error parsing", "Ambiguous")) else first
    missing = re.search(r"Could not find '(?:.*/)?([^'/]+)'", first)
    close = difflib.get_close_matches(missing.group(1), options, n=1, cutoff=0.6) if missing else []
    return f"{first}{f'; did you mean {close[0]}?' if close else ''} (options: {', '.join(options)})"


# ---- the command line ----------------------------------------------------------------------------------------
def run_command(config_name: str, hydra_main: Callable[[], object]) -> None:
    """An entry point's body: plain ``--help`` is answered here, a command line with a mistake gets one line
    per mistake (exit 1), everything else goes to ``hydra_main``."""
    args = sys.argv[1:]
    if help_requested(args):
        print_help(config_name, args)
        return
    errors = command_line_errors(config_name, args)
    if errors:
        raise SystemExit("\n".join(f"stnbench-{config_name}: error: {error}" for error in errors))
    hydra_main()


@dataclass
class _Mistake:
    override: Any  # hydra's Override
    kind: str      # key | no_key | exists | defaults | option | sweep
    detail: str = ""


def command_line_errors(config_name: str, args: list[str], run: bool = True) -> list[str]:
    """What is wrong with a command line (Hydra's flags and overrides), one message per mistake; empty when
    it composes (and, for a ``run``, its required keys are given and a GPU trainer finds a GPU). What this
    cannot read (another config, a flag only Hydra knows) is left to Hydra, which composes it again anyway."""
    overrides, multirun, runs = _split(args)
    if overrides is None:
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except HydraException:
        return [_parse_error(parser, override) for override in overrides if _parse_error(parser, override)]
    groups = config_groups()
    errors = [e for o in parsed for e in [_building_block(o, groups) or _null_option(o, groups)] if e]
    if errors:
        return errors
    try:
        return _composition_errors(config_name, parsed, multirun, runs and run, groups)
    except HydraException as error:  # something the diagnosis did not foresee: Hydra's own words, on one line
        return [one_line(str(error))]
    except Exception:  # noqa: BLE001 - a command line this cannot read must still reach Hydra, never a traceback here
        return []


def _parse_error(parser: Any, override: str) -> str | None:
    from hydra.errors import HydraException

    try:
        parser.parse_override(override)
    except HydraException as error:
        lines = str(error).strip().splitlines()
        reason = lines[1].strip() if len(lines) > 1 and not lines[1].startswith("See ") else ""
        return (f"{override}: not an override{f' ({reason})' if reason else ''}; write key=value, group=option, "
                "+key=value (a new key) or ~key (drop one)")
    return None


def _split(args: list[str]) -> tuple[list[str] | None, bool, bool]:
    """(overrides, multirun, the command runs something) from the command line; None: Hydra's to read."""
    overrides, multirun, runs, skip = [], False, True, False
    for arg in args:
        if skip:
            skip = False
            continue
        if not arg.startswith("-"):
            overrides.append(arg)
            continue
        flag = arg.partition("=")[0]
        if flag in HYDRA_ONLY_FLAGS:
            return None, False, False
        multirun |= flag in ("-m", "--multirun")
        if flag in ("--cfg", "-c"):
            runs = False  # prints the config and runs nothing
        skip = flag in FLAGS_WITH_VALUE and "=" not in arg
    return overrides, multirun, runs


def _building_block(override: Any, groups: dict[str, list[str]]) -> str | None:
    """``data=_datamodule``: Hydra would take it; it is a part of every data option, not one of them."""
    group = override.key_or_group
    if group not in groups or override.is_delete():
        return None
    for value in _values(override):
        if value.startswith("_"):
            return (f"{override.input_line}: {value} is a building block of the {group} options, not an option; "
                    f"options: {', '.join(groups[group])}")
    return None


def _listed_sweep(override: Any) -> bool:
    """A sweep that lists its choices (``a,b``, ``choice(a,b)``): not a glob, range or interval."""
    return override.is_discrete_sweep() and override.value_type.name != "GLOB_CHOICE_SWEEP"


def _null_option(override: Any, groups: dict[str, list[str]]) -> str | None:
    """``schedule=null``: Hydra takes no null for a group on the command line (a traceback); ``~group`` drops one."""
    group = override.key_or_group
    if group not in groups or override.is_delete():
        return None
    if _listed_sweep(override):
        if all(value is not None for value in override.sweep_iterator()):
            return None
    elif override.is_sweep_override() or override.value() is not None:
        return None
    return (f"{override.input_line}: a config group takes one of its options, not null; to go without one, drop it "
            f"with ~{group} (options: {', '.join(groups[group])})")


def _values(override: Any) -> list[str]:
    """A group override's choices as strings (a sweep's every choice); [] for null, globs, intervals."""
    if _listed_sweep(override):
        return [str(v) for v in override.sweep_iterator()]
    value = override.value()
    return [value] if isinstance(value, str) else []


def _composable(override: Any, multirun: bool) -> str | None:
    """The override as a single run composes it: a sweep's first choice (None: a sweep that has none)."""
    if not multirun or not override.is_sweep_override():
        return override.input_line
    if _listed_sweep(override):
        return f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}"
    return None


def _compose(config_name: str, overrides: list[str]) -> Any:
    from hydra import compose

    return compose(config_name, overrides=overrides, return_hydra_config=True)


def _composition_errors(config_name: str, parsed: list, multirun: bool, run: bool,
                        groups: dict[str, list[str]]) -> list[str]:
    from hydra import initialize_config_module
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    lines = {id(o): line for o in parsed if (line := _composable(o, multirun)) is not None}
    remaining = [o for o in parsed if id(o) in lines]
    mistakes: list[_Mistake] = []
    with initialize_config_module("stnbench.configs", version_base="1.3"):
        cfg = None
        for _ in range(len(remaining) + 1):  # each mistake is set aside and the rest composed again
            try:
                cfg = _compose(config_name, [lines[id(o)] for o in remaining])
                break
            except HydraException as error:
                mistake = _mistake(error, remaining)
                if mistake is None:
                    return [_message(m, config_name, None, groups) for m in mistakes] + [_hydra_line(error)]
                mistakes.append(mistake)
                remaining.remove(mistake.override)
        mistakes.sort(key=lambda m: parsed.index(m.override))  # in the command line's order, not Hydra's
        if mistakes or cfg is None:
            return [_message(m, config_name, cfg, groups) for m in mistakes]
        tree = OmegaConf.to_container(cfg, resolve=False)
        errors = [_message(_Mistake(o, "key"), config_name, cfg, groups) for o in parsed
                  if id(o) not in lines and not _is_group(o, cfg) and not _exists(tree, o.key_or_group)]
        if multirun:
            errors += _sweep_option_errors(config_name, parsed, cfg)
    if errors or not run:
        return errors
    return _value_errors(config_name, cfg, multirun)


def _hydra_line(error: BaseException) -> str:
    cause = error.__cause__
    line = one_line(str(error))
    return f"{line} ({one_line(str(cause))})" if cause is not None and str(cause).strip() else line


def _mistake(error: BaseException, overrides: list) -> _Mistake | None:
    """Which command-line override Hydra's error is about, and what kind of mistake it is."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    message = str(error)
    patterns = [("defaults", r"Could not override '([^']+)'\. No match in the defaults list"),
                ("exists", r"Could not append to config\. An item is already at '([^']+)'"),
                ("no_key", r"Could not delete from config\. '([^']+)' does not exist"),
                ("key", r"Could not override '([^']+)'\."),
                ("sweep", r"Ambiguous value for argument '([^'=]+)=")]
    for kind, pattern in patterns:
        found = re.search(pattern, message)
        if found:
            if kind == "key" and not isinstance(error.__cause__, ConfigAttributeError | ConfigKeyError):
                return None  # e.g. a value of the wrong type for a typed key: Hydra's words say it
            key = found.group(1)
            override = next((o for o in overrides if o.key_or_group == key), None)
            return _Mistake(override, kind) if override is not None else None
    found = re.search(r"Could not find '(.+)/([^/']+)'", message)
    if isinstance(error, MissingConfigException) and found:
        group, value = found.groups()
        override = next((o for o in overrides if o.key_or_group == group and value in _values(o)), None)
        options = [line.strip() for line in message.split("Config search path")[0].splitlines()
                   if line.startswith("\t") and not line.strip().startswith("_")]
        return _Mistake(override, "option", f"{value}\n{', '.join(options)}") if override is not None else None
    return None


def _message(mistake: _Mistake, config_name: str, cfg: Any, groups: dict[str, list[str]]) -> str:
    from omegaconf import OmegaConf

    override, line = mistake.override, mistake.override.input_line
    tree = OmegaConf.to_container(cfg, resolve=False) if cfg is not None else None
    key = override.key_or_group
    if mistake.kind == "option":
        value, _, options = mistake.detail.partition("\n")
        close = difflib.get_close_matches(value, options.split(", "), n=1, cutoff=0.6)
        fix = f"; did you mean {override.get_key_element()}={close[0]}?" if close else ""
        return f"{line}: {key} has no option {value}{fix} (options: {options})"
    if mistake.kind == "defaults" or "/" in key:  # Hydra reads a/b=c as a key where no group a/b exists
        return _defaults_message(override, config_name, cfg, groups)
    if mistake.kind == "exists":
        return f"{line}: {key} is already in the config; drop the + ({line.lstrip('+')})"
    if mistake.kind == "sweep":
        return (f"{line}: several values make a sweep: add -m (stnbench-{config_name} -m {line}); for a list "
                f"write {key}=[...], for a string with commas quote it")
    # a key that is not in the config (kind key, or no_key for ~key)
    suggestions = _closest_keys(tree, key) if tree is not None else []
    if suggestions:
        prefix = override.get_key_element()[: -len(key)] if override.get_key_element().endswith(key) else ""
        value = f"={override.get_value_string()}" if "=" in (line or "") else ""
        fixes = " or ".join(f"{prefix}{s}{value}" for s in suggestions)
        return f"{line}: the config has no {key}; did you mean {fixes}?"
    parent_key, _, _ = key.rpartition(".")
    parent = _node(tree, parent_key) if tree is not None else None
    if not isinstance(parent, dict):
        return f"{line}: the config has no {key} (see stnbench-{config_name} --help)"
    where = f"{parent_key} has" if parent_key else "its keys are"
    listed = ", ".join(str(k) for k in parent if not str(k).startswith("_") and (parent_key or k != "hydra"))
    add = (f"; to give {parent.get('_target_')} a new argument on purpose, write +{key}={override.get_value_string()}"
           if "_target_" in parent and not key.startswith("hydra.") and "=" in (line or "") else "")
    group = parent_key.replace(".", "/")
    chosen = cfg.hydra.runtime.choices.get(group) if parent_key and group in cfg.hydra.runtime.choices else None
    has = f"{where}: {listed}" if listed else f"{parent_key} has no keys{f' with {group}={chosen}' if chosen else ''}"
    return f"{line}: the config has no {key} ({has}){add}"


def _defaults_message(override: Any, config_name: str, cfg: Any, groups: dict[str, list[str]]) -> str:
    """A group the composed defaults list does not hold: not this command's, or a subgroup the chosen
    option of its parent has not (model=cnn has no model/transform)."""
    line, group = override.input_line, override.key_or_group
    command = f"stnbench-{config_name}"
    own = command_groups(config_name, groups)
    known = set(groups) | (set(cfg.hydra.runtime.choices) if cfg is not None else set())
    if group not in known:
        close = difflib.get_close_matches(group, sorted(own) or sorted(known), n=1, cutoff=0.6)
        value = f"={override.get_value_string()}" if "=" in (line or "") else ""
        fix = (f"; did you mean {override.get_key_element().replace(group, close[0])}{value}?" if close
               else f" (its groups: {', '.join(own) or 'none'})")
        return f"{line}: {command} has no group {group}{fix}"
    parent, _, child = group.rpartition("/")
    if not parent or parent not in own:
        return f"{line}: {command} does not use the group {group} (its groups: {', '.join(own) or 'none'})"
    choice = cfg.hydra.runtime.choices.get(parent) if cfg is not None else None
    having = [option for option in groups.get(parent, []) if _has_subgroup(parent, option, child)]
    default = dict(_defaults(config_name)).get(parent)
    example = default if default in having else (having[0] if having else None)
    chosen = f"{parent}={choice}" if choice else f"the chosen {parent}"
    if not having:
        return f"{line}: {chosen} has no {child}, and no {parent} option has one"
    return (f"{line}: {chosen} has no {child}; {child}s belong to the {parent} options that have one "
            f"({', '.join(having)}), e.g. {parent}={example} {line}")


def _has_subgroup(group: str, option: str, child: str, depth: int = 0) -> bool:
    """Whether ``group/option.yaml`` (or an option it extends) puts ``group/child`` in its defaults list."""
    for key, _ in _defaults(f"{group}/{option}"):
        if key in (child, f"{group}/{child}"):
            return True
        if depth < 5 and key != "_self_" and _config_file(f"{group}/{key}") is not None and \
                _has_subgroup(group, key, child, depth + 1):
            return True
    return False


def _is_group(override: Any, cfg: Any) -> bool:
    return "/" in override.key_or_group or override.key_or_group in cfg.hydra.runtime.choices


def _node(tree: Any, key: str) -> Any:
    node = tree
    for part in key.split(".") if key else []:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _exists(tree: dict, key: str) -> bool:
    parent, _, last = key.rpartition(".")
    node = _node(tree, parent)
    return isinstance(node, dict) and last in node or isinstance(node, list)


def _paths(tree: Any, prefix: str = "") -> list[str]:
    if not isinstance(tree, dict):
        return []
    found = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        found.append(path)
        found += _paths(value, f"{path}.")
    return found


def _closest_keys(tree: dict, key: str) -> list[str]:
    """The keys of the config a mistyped key most likely meant: trainer.max_epoch -> trainer.max_epochs,
    trainr.max_epochs -> trainer.max_epochs, max_epochs -> trainer.max_epochs."""
    if not key.startswith("hydra"):
        tree = {k: v for k, v in tree.items() if k != "hydra"}
    parts = key.split(".")
    node, path = tree, []
    for part in parts:
        if not isinstance(node, dict):
            break
        if part not in node:
            close = difflib.get_close_matches(part, [str(k) for k in node], n=1, cutoff=0.7)
            if not close:
                break
            part = close[0]
        path.append(part)
        node = node[part]
    else:
        return [".".join(path)]
    last = parts[-1]
    return [path for path in _paths(tree) if path.rpartition(".")[2] == last and path != key][:3]


def _sweep_option_errors(config_name: str, parsed: list, cfg: Any) -> list[str]:
    """A sweep's other choices of a group (the first one was composed): each must be an option."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    searchpath = [o.input_line for o in parsed if o.key_or_group == "hydra.searchpath"]
    errors = []
    for override in parsed:
        values = _values(override) if _is_group(override, cfg) else []
        if len(values) < 2:
            continue
        options = [o for o in loader.get_group_options(override.key_or_group, config_name=config_name,
                                                       overrides=searchpath) if not o.startswith("_")]
        for value in values[1:]:
            if value not in options and value != "null":
                detail = f"{value}\n{', '.join(options)}"
                errors.append(_message(_Mistake(override, "option", detail), config_name, cfg, {}))
    return errors


def _value_errors(config_name: str, cfg: Any, multirun: bool) -> list[str]:
    """Required keys left at ???, and a GPU trainer for a run made on this machine without a GPU."""
    from omegaconf import OmegaConf

    from stnbench.errors import ConfigError

    missing = [str(key) for key in cfg if key != "hydra" and OmegaConf.is_missing(cfg, key)]
    if missing:
        return [f"{key} is required: add {key}=<value> (usage: {USAGE.get(config_name, '').splitlines()[0]})"
                for key in missing]
    launcher = str(OmegaConf.select(cfg, "hydra.launcher._target_", default="") or "")
    if multirun and not launcher.endswith(LOCAL_LAUNCHERS):
        return []
    from stnbench.config_checks import check_devices

    try:
        trainer = cfg.get("trainer")
        check_devices(OmegaConf.to_container(trainer, resolve=False) if trainer is not None else None)
    except ConfigError as error:
        return [str(error)]
    return []
