"""The configuration reference (docs/configuration.md), rendered from the schema.

Every key of ``music_gen.config.Config`` as Markdown tables: one table per section
(``model``, ``codec``, ``codec.train``, ...), one row per key with its dotted name, type
(with its bounds), default and description (the docstring under the field). The file in
the repository is this function's output; ``tests/unit/test_config_reference.py`` keeps
the two equal, and ``music-gen config reference --output docs/configuration.md``
refreshes it.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from music_gen.config import Config

COMMAND = "music-gen config reference --output docs/configuration.md"
"""What refreshes the committed file."""
BOUNDS = {"gt": annotated_types.Gt, "ge": annotated_types.Ge, "lt": annotated_types.Lt,
          "le": annotated_types.Le}  # fmt: skip

INTRO = """\
Every setting of the platform, generated from the schema in `music_gen/config.py` (the
docstring under each field). Do not edit: `{command}` rewrites it.

A command's config is the defaults below, then each `--config FILE` in order (YAML with
these sections at the top level; presets live in `configs/`), then dotted overrides
anywhere on the line, e.g. `train.lr=3e-4 model.dim=512` (values are read as YAML:
`model.attributes=[genre,mood]`, `train.segment_curriculum={{0: 10, 2000: 30}}`,
`serve.autoscaling_config.max_replicas=4`). An unknown key or a wrong type is one error
line naming the key. `null` in YAML is Python's `None`.
"""


def sections(
    model: type[BaseModel] = Config, prefix: str = ""
) -> Iterator[tuple[str, type[BaseModel], FieldInfo | None]]:
    """``(dotted name, model class, the field holding it)`` for ``model`` and every config
    section nested in it, depth first in field order (the root has no field)."""
    if prefix:
        yield prefix, model, None
    for name, field in model.model_fields.items():
        nested = _section_type(field.annotation)
        if nested is not None:
            dotted = f"{prefix}.{name}" if prefix else name
            for key, section, _ in sections(nested, dotted):
                yield key, section, field if key == dotted else None


def missing_descriptions(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Dotted keys whose field has no description (no docstring under it)."""
    missing = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}.{name}" if prefix else name
        if not (field.description or "").strip():
            missing.append(dotted)
        nested = _section_type(field.annotation)
        if nested is not None:
            missing += missing_descriptions(nested, dotted)
    return missing


def render_reference(model: type[BaseModel] = Config) -> str:
    """The whole reference as Markdown (what docs/configuration.md holds)."""
    lines = ["# Configuration reference", "", INTRO.format(command=COMMAND).rstrip(), ""]
    found = list(sections(model))
    lines.append(
        "Sections: " + ", ".join(f"[`{key}`](#{_anchor(key)})" for key, _, _ in found) + "."
    )
    parents = {key: field for key, _, field in found}
    for key, section, _ in found:
        lines += ["", f"{'#' * (2 + key.count('.'))} {key}", ""]
        # What the section's class says of itself, else what its field in the parent says.
        field = parents[key]
        about = _text(section.__doc__) or _text(field.description if field else None)
        if about:
            lines += [about, ""]
        lines += ["| key | type | default | description |", "| --- | --- | --- | --- |"]
        for name, field in section.model_fields.items():
            nested = _section_type(field.annotation)
            dotted = f"{key}.{name}"
            if nested is not None and nested is field.annotation:
                continue  # a section of its own, below
            kind = _type(field.annotation)
            if nested is not None:  # an optional section: `null` or the table below
                kind = kind.replace(nested.__name__, f"[{nested.__name__}](#{_anchor(dotted)})")
            bounds = _bounds(field)
            cells = [
                f"`{dotted}`",
                kind + (f" ({bounds})" if bounds else ""),
                f"`{_value(field.default)}`",
                _text(field.description) or "",
            ]
            lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


# --- helpers --------------------------------------------------------------------------------


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The config class a field holds (``X`` or ``X | None``), else None."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _type(annotation: Any) -> str:
    """A type as a user writes its values: ``int | None``, ``"ddp" | "fsdp"``, ``list[str]``."""
    if annotation is type(None):
        return "null"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(_value(arg, quote=True) for arg in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type(arg) for arg in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type(arg) for arg in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: FieldInfo) -> str:
    """The field's bounds: ``> 0``, ``>= 0, < 1``."""
    signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    found = []
    for item in field.metadata:
        for name, sign in signs.items():
            if isinstance(item, BOUNDS[name]):
                found.append(f"{sign} {_value(getattr(item, name))}")
    return ", ".join(found)


def _value(value: Any, quote: bool = False) -> str:
    """A default as it is written in YAML (``null``, ``true``, ``[0.9, 0.95]``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, BaseModel):
        return "{...}"
    if isinstance(value, str):
        return f'"{value}"' if quote or not value else value
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(item, quote) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_value(k)}: {_value(v, quote)}" for k, v in value.items()) + "}"
    return repr(value)


def _text(doc: str | None) -> str:
    """A docstring as one Markdown line: RST's double backticks become single ones."""
    if not doc:
        return ""
    return re.sub(r"\s+", " ", doc.replace("``", "`")).strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _anchor(key: str) -> str:
    """GitHub's anchor of a heading ``key`` (dots dropped, lower case)."""
    return re.sub(r"[^a-z0-9_ -]", "", key.lower()).replace(" ", "-")
