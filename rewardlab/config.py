"""Run configs as documented dataclasses: loaded from YAML plus ``--key value`` overrides, saved back.

Each trainer's config is a dataclass whose every field has a one-line docstring under it (what it
does, its unit), like TRL's. A run is ``defaults < YAML (--config run.yaml) < --key value``;
unknown keys are an error that lists the valid ones; values are coerced to the field's type; the
resolved config is saved next to the artifacts it produced, each key with its docstring.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import textwrap
import types
from dataclasses import fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from rewardlab.errors import RewardlabError


def docstrings(cls) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body, docs = tree.body[0].body, {}
    for node, nxt in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant)):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def documented(cls):
    """Copy each field's docstring into its metadata, where HfArgumentParser finds its --help."""
    docs = docstrings(cls)
    for f in fields(cls):
        if f.name not in docs:
            raise TypeError(f"{cls.__name__}.{f.name} has no docstring")
        f.metadata = types.MappingProxyType({**f.metadata, "help": docs[f.name].replace("%", "%%")})
    return cls


def _unknown(cls, keys, where: str) -> RewardlabError:
    return RewardlabError(
        f"unknown config key{'s' if len(keys) > 1 else ''} {', '.join(map(repr, keys))} in {where}; "
        f"valid keys: {', '.join(f.name for f in fields(cls))}"
    )


def _coerce(cls, f: dataclasses.Field, value: Any, where: str) -> Any:
    """A YAML value as the field's type (YAML reads 1e-4 as text, for instance)."""
    # From the annotations: HfArgumentParser rewrites Field.type (drops the None of Optional).
    kind, optional = get_type_hints(cls)[f.name], False
    if get_origin(kind) in (Union, types.UnionType):
        args = [a for a in get_args(kind) if a is not type(None)]
        optional, kind = True, args[0]
    if optional and isinstance(value, str) and value.strip().lower() in ("null", "none", "~", ""):
        value = None
    if value is None:
        if optional:
            return None
        raise RewardlabError(f"{where}: '{f.name}' cannot be null")
    try:
        if get_origin(kind) is list:
            items = value if isinstance(value, list) else str(value).replace(",", " ").split()
            return [str(v) for v in items] or None
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "yes", "1", "on"):
                return True
            if text in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        if kind is int and isinstance(value, str):
            number = float(value)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if kind is int:
            return int(value)
        return kind(value)
    except (TypeError, ValueError):
        raise RewardlabError(f"{where}: '{f.name}' must be {getattr(kind, '__name__', kind)}, got {value!r}") from None


def parse_overrides(overrides: list[str]) -> dict[str, str | None]:
    """``["--key", "value", "--flag", "--k=v"]`` -> {key: text}; a bare flag means true."""
    out, i = {}, 0
    while i < len(overrides):
        token = overrides[i]
        if not token.startswith("--") or len(token) == 2:
            raise RewardlabError(f"unexpected argument {token!r}; give config overrides as --key value")
        key, eq, value = token[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            nxt = overrides[i + 1] if i + 1 < len(overrides) else None
            if nxt is not None and not (nxt.startswith("--") and len(nxt) > 2):
                value, i = nxt, i + 1
            else:
                value = "true"
        out[key] = value
        i += 1
    return out


def load_dataclass(cls, path: str | Path | None = None, overrides: list[str] | dict | None = None):
    """Defaults, then the YAML file ``path``, then ``overrides`` (``--key value`` strings or a dict).

    Values go through ``transformers.HfArgumentParser`` (types, --help); unknown keys raise a
    RewardlabError that lists the valid ones.
    """
    from transformers import HfArgumentParser

    by_name = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    if path is not None:
        import yaml

        path = Path(path).expanduser()
        if not path.is_file():
            raise RewardlabError(f"--config {path}: no such file")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise RewardlabError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
        if not isinstance(loaded, dict):
            raise RewardlabError(f"{path}: must be a mapping of config keys to values")
        loaded = {str(k).replace("-", "_"): v for k, v in loaded.items()}
        unknown = [k for k in loaded if k not in by_name]
        if unknown:
            raise _unknown(cls, unknown, str(path))
        values.update({k: _coerce(cls, by_name[k], v, str(path)) for k, v in loaded.items()})
    if overrides:
        given = dict(overrides) if isinstance(overrides, dict) else parse_overrides(list(overrides))
        unknown = [k for k in given if k not in by_name]
        if unknown:
            raise _unknown(cls, unknown, "the command line" if not isinstance(overrides, dict) else "overrides")
        values.update({k: _coerce(cls, by_name[k], v, "command line") for k, v in given.items()})
    parser = HfArgumentParser(cls)
    parser.set_defaults(**values)
    (config,) = parser.parse_args_into_dataclasses(args=[])
    return config


def save_dataclass(config, path: Path, title: str) -> Path:
    """Write ``config`` as YAML to ``path``: every key, with its docstring as a comment above it."""
    import yaml

    docs = docstrings(type(config))
    lines = [f"# {title}"]
    for key, value in dataclasses.asdict(config).items():
        lines.append(f"# {docs[key]}")
        lines.append(yaml.safe_dump({key: value}, default_flow_style=True, width=1_000).strip()[1:-1])
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def help_epilog(cls) -> str:
    """The config keys and their docstrings, for the command's --help."""
    docs = docstrings(cls)
    rows = [f"  --{f.name} ({f.default!r}): {docs[f.name]}" for f in fields(cls)]
    return "config keys (in --config YAML or as --key value):\n" + "\n".join(rows)
