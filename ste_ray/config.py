"""Typed configuration: dataclasses with documented defaults, loadable from YAML, overridable on the
command line, validated before any work starts.

Every stage's config is a dataclass whose fields carry their help text (and any numeric bounds)
through ``option``; nested dataclasses become dotted flags (``--engine.max_model_len 1024``).
String options with a fixed set of values are ``Literal`` types, whose choices show in ``--help``.
A job class may declare ``aliases``: shorthand flags (``--model-url URL``) expanded into dotted
values at parse time, so that ``validate()`` only checks and never rewrites the config.

A job calls ``load_config(JobConfig, argv)``: defaults, then the YAML file given by ``--config``,
then the aliases and flags, then the declared bounds and ``validate()`` of every nested dataclass.
A dataclass may also define ``validate_given(given, prefix)``: the names of its fields that the YAML
file or the command line set, for a field that only some other setting uses (a URL that a started
engine would ignore): a value that cannot take effect is an error, not silence. Any error names the
offending field.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid. The message names the field."""


def option(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING,
           ge: float | None = None, gt: float | None = None, le: float | None = None):
    """A dataclass field with its help text (shown by ``--help`` and in the README tables) and its
    numeric bounds (``ge``: at least, ``gt``: more than, ``le``: at most), checked on load."""
    metadata = {"help": help, "bounds": {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le)) if v is not None}}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Alias:
    """A shorthand flag: ``--<name> VALUE`` sets each dotted field of ``sets`` ("{}" stands for
    VALUE). ``boolean`` aliases take no value."""

    name: str
    help: str
    sets: dict[str, str]
    boolean: bool = False

    def expand(self, value: str) -> dict[str, str]:
        return {path: v.replace("{}", value) for path, v in self.sets.items()}


def fail(path: str, message: str) -> typing.NoReturn:
    raise ConfigError(f"{path}: {message}")


# ---------------------------------------------------------------------------------------------
# Type coercion: YAML and CLI values become the field's declared type, or a ConfigError.


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(path: str, tp: Any, value: Any, from_cli: bool) -> Any:
    tp, optional = _strip_optional(tp)
    if value is None or (from_cli and optional and value in ("none", "null", "None")):
        if optional:
            return None
        fail(path, f"must not be empty (expected {getattr(tp, '__name__', tp)})")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str) and hasattr(tp, "parse"):  # a section with a one-string form (a tool source)
            return tp.parse(value)
        if not isinstance(value, dict):
            fail(path, f"expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, path)
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            fail(path, f"must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    is_list = tp is list or origin is list
    if from_cli and isinstance(value, str) and (origin is dict or tp is dict or (is_list and value.lstrip().startswith("["))):
        # Structured values on the command line are YAML (JSON is YAML): --engine.engine_kwargs '{a: 1}',
        # --in_flight '[8, 32]'; a list may also be written comma-separated: --in_flight 8,32
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as e:
            fail(path, f"could not parse {value!r} as YAML/JSON: {e}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        fail(path, f"expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            fail(path, f"expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            fail(path, f"expected an integer, got {value!r}")
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            fail(path, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (dict, list)):
            fail(path, f"expected a string, got {value!r}")
        return str(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            fail(path, f"expected a mapping, got {value!r}")
        key_tp, item_tp = typing.get_args(tp) or (str, Any)
        if item_tp is Any:
            return dict(value)
        return {str(k): _coerce(f"{path}.{k}", item_tp, v, from_cli) for k, v in value.items()}
    if is_list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            fail(path, f"expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        if item_tp is Any:
            return list(value)
        return [_coerce(f"{path}[{i}]", item_tp, v, from_cli) for i, v in enumerate(value)]
    if tp is Any:
        return value
    fail(path, f"unsupported field type {tp!r}")


def _build(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            fail(where, f"unknown field (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            path = f"{prefix}.{f.name}" if prefix else f.name
            value = _coerce(path, hints[f.name], values[f.name], from_cli=False)
            if dataclasses.is_dataclass(value) and f.default_factory is not dataclasses.MISSING:
                # A section given in YAML starts from the job's own default for it, not the section class's.
                given = {k: getattr(value, k) for k in values[f.name]}
                value = dataclasses.replace(f.default_factory(), **given)
            kwargs[f.name] = value
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# Command line: one flag per leaf field, dotted for nested dataclasses, plus the job's aliases.


def _leaf_fields(cls: type, prefix: str = "") -> typing.Iterator[tuple[str, Any, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _strip_optional(hints[f.name])
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield from _leaf_fields(tp, path + ".")
        else:
            yield path, hints[f.name], f


def _aliases(cls: type) -> tuple[Alias, ...]:
    return tuple(getattr(cls, "aliases", ()))


def _default_at(cls: type, path: str) -> Any:
    """A flag's default as the job sees it: read off a default instance, so that a job's own
    default for a nested section (e.g. a longer context for evaluation) is the one shown."""
    value: Any = cls()
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _type_name(tp: Any) -> str:
    tp, optional = _strip_optional(tp)
    if typing.get_origin(tp) is typing.Literal:
        name = "{" + ",".join(map(str, typing.get_args(tp))) + "}"
    elif typing.get_origin(tp) in (list, dict):
        name = f"{typing.get_origin(tp).__name__}[{', '.join(getattr(a, '__name__', str(a)) for a in typing.get_args(tp))}]"
    else:
        name = getattr(tp, "__name__", str(tp).replace("typing.", ""))
    return f"{name} or none" if optional else name


def _help(f: dataclasses.Field, tp: Any) -> str:
    """The field's help, with its choices and bounds spelled out."""
    text = f.metadata.get("help", "")
    tp, _ = _strip_optional(tp)
    if typing.get_origin(tp) is typing.Literal:
        text += f" (one of: {', '.join(map(str, typing.get_args(tp)))})"
    bounds = f.metadata.get("bounds", {})
    words = {"ge": "≥", "gt": ">", "le": "≤"}
    if bounds:
        text += " (" + ", ".join(f"{words[k]} {v:g}" for k, v in bounds.items()) + ")"
    return text


def _plain(value: Any) -> Any:
    """A default as shown in --help and the README: a section with a one-string form as that string."""
    return str(value) if hasattr(value, "parse") else dataclasses.asdict(value)


def _shown(value: Any) -> str:
    return json.dumps(value, default=_plain) if isinstance(value, (dict, list)) else str(value)


def build_parser(cls: type, description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description or (cls.__doc__ or "").strip().split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file with any of the fields below")
    for path, tp, f in _leaf_fields(cls):
        flags = [f"--{path}"] + ([f"--{path.replace('_', '-')}"] if "_" in path else [])
        help_text = f"{_help(f, tp)} [default: {_shown(_default_at(cls, path))}]"
        if _strip_optional(tp)[0] is bool:
            # --flag sets true; --flag false works through an optional value
            parser.add_argument(*flags, dest=path, nargs="?", const="true", metavar="BOOL", help=help_text)
        else:
            parser.add_argument(*flags, dest=path, metavar=_type_name(tp).upper().replace(" ", "_"), help=help_text)
    for alias in _aliases(cls):
        flags = [f"--{alias.name}"] + ([f"--{alias.name.replace('_', '-')}"] if "_" in alias.name else [])
        if alias.boolean:
            parser.add_argument(*flags, dest=f"alias:{alias.name}", action="store_const", const="true", help=alias.help)
        else:
            parser.add_argument(*flags, dest=f"alias:{alias.name}", metavar="VALUE", help=alias.help)
    return parser


def _check_bounds(cfg: Any, prefix: str, given: frozenset[str]) -> None:
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        sections = {f"{f.name}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {f.name: value}
        for path, section in sections.items():
            if dataclasses.is_dataclass(section):
                validate_all(section, f"{prefix}{path}.", given)
        for kind, bound in f.metadata.get("bounds", {}).items():
            if value is None:
                continue
            if kind == "ge" and value < bound:
                fail(f"{prefix}{f.name}", "must be 0 or more" if bound == 0 else f"must be at least {bound:g}")
            if kind == "gt" and value <= bound:
                fail(f"{prefix}{f.name}", "must be positive" if bound == 0 else f"must be more than {bound:g}")
            if kind == "le" and value > bound:
                fail(f"{prefix}{f.name}", f"must be at most {bound:g}")


def validate_all(cfg: Any, prefix: str = "", given: frozenset[str] = frozenset()) -> None:
    """Check the declared bounds of the config and of every nested dataclass, then call their
    ``validate()`` (cross-field checks) and ``validate_given()`` (the fields ``given``, dotted paths
    that the user set), innermost first."""
    _check_bounds(cfg, prefix, given)
    try:
        if hasattr(cfg, "validate"):
            cfg.validate()
        if hasattr(cfg, "validate_given"):
            cfg.validate_given({p[len(prefix):].split(".")[0] for p in given if p.startswith(prefix)}, prefix)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}") if prefix else e


def load_config(cls: type[T], argv: list[str] | None = None, description: str | None = None) -> T:
    """Defaults < YAML file (``--config``) < aliases < command-line flags; then validation."""
    parser = build_parser(cls, description)
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    config_file = args.pop("config", None)
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"--config: no such file {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"--config {path}: not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config {path}: expected a mapping at the top level")
        values = loaded
    cfg = _build(cls, values)
    flags: dict[str, str] = {}
    for alias in _aliases(cls):
        if f"alias:{alias.name}" in args:
            flags.update(alias.expand(args.pop(f"alias:{alias.name}")))
    flags.update(args)  # a field's own flag wins over an alias that also sets it
    for path, raw in flags.items():
        _set_cli(cfg, path, raw)
    validate_all(cfg, given=frozenset(_paths(values)) | set(flags))
    return cfg


def _paths(values: dict[str, Any], prefix: str = "") -> typing.Iterator[str]:
    """Every dotted path a YAML mapping sets (``{engine: {url: x}}``: engine, engine.url)."""
    for key, value in values.items():
        yield f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _paths(value, f"{prefix}{key}.")


def job_config(cls: type[T], argv: list[str] | None = None) -> T:
    """``load_config`` for a job's command line: a bad value ends the program with the error and no
    traceback."""
    try:
        return load_config(cls, argv)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None


def _set_cli(cfg: Any, path: str, raw: str) -> None:
    *parents, leaf = path.split(".")
    node = cfg
    for p in parents:
        node = getattr(node, p)
    tp = typing.get_type_hints(type(node))[leaf]
    setattr(node, leaf, _coerce(f"--{path}", tp, raw, from_cli=True))


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Build and validate a config from a plain mapping (e.g. YAML already loaded)."""
    cfg = _build(cls, values)
    validate_all(cfg, given=frozenset(_paths(values)))
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _escape_cell(text: str) -> str:
    return text.replace("|", "\\|")


def flags_markdown(cls: type) -> str:
    """The flags of a config as a Markdown table (the README's flag reference is made with this)."""
    lines = ["| flag | default | meaning |", "| --- | --- | --- |"]
    for path, tp, f in _leaf_fields(cls):
        default = _default_at(cls, path)
        shown = json.dumps(default, default=_plain) if isinstance(default, (dict, list, str)) else default
        lines.append(f"| `--{path}` | `{shown}` | {_escape_cell(_help(f, tp))} |")
    for alias in _aliases(cls):
        lines.append(f"| `--{alias.name}` | | {_escape_cell(alias.help)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    # python -m ste_ray.config jobs/explore.py:ExploreConfig  → the flag table of that job
    target = sys.argv[1] if len(sys.argv) > 1 else "ste_ray.engine:EngineConfig"
    module_name, _, class_name = target.partition(":")
    if module_name.endswith(".py"):
        spec = importlib.util.spec_from_file_location("job", module_name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    print(flags_markdown(getattr(module, class_name)))
