"""Every public function, class and method of tricklib documents every one of its parameters.

The API reference (book/api/<module>.md) is rendered from the docstrings by Sphinx
autodoc + napoleon, Google style: a parameter is described in an ``Args:`` section as
``name: text`` (or ``name, other: text`` for several), continuation lines indented
deeper. A class documents its constructor's parameters in the class docstring (a
dataclass may list its fields under ``Attributes:``). ``self``/``cls`` need no entry,
``*args``/``**kwargs`` only when the docstring names them anyway. A method without a
docstring of its own shows the one it overrides (autodoc does the same).
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import re

from conftest import ROOT

MODULES = [importlib.import_module(f"tricklib.{p.stem}")
           for p in sorted((ROOT / "tricklib").glob("*.py")) if not p.stem.startswith("_")]
ARG_SECTIONS = ("Args", "Arguments", "Parameters", "Keyword Args", "Keyword Arguments", "Other Parameters")
HEADER = re.compile(r"^(\s*)([A-Z][A-Za-z ]*):\s*$")
# "name: text", "name (type): text", "name, other: text", "*args: text"
ENTRY = re.compile(r"^(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)*)\s*(?:\([^)]*\))?\s*:(.*)$")


def described(doc: str, sections=ARG_SECTIONS) -> dict[str, str]:
    """``{parameter name: description}`` from the given Google-style sections of ``doc``."""
    out: dict[str, str] = {}
    lines = inspect.cleandoc(doc or "").splitlines()
    i = 0
    while i < len(lines):
        header = HEADER.match(lines[i])
        i += 1
        if not header or header.group(2) not in sections:
            continue
        indent, names = len(header.group(1)), []
        entry_indent = None
        while i < len(lines):
            line = lines[i]
            depth = len(line) - len(line.lstrip())
            if line.strip() and depth <= indent:
                break  # the section ended
            i += 1
            if not line.strip():
                continue
            entry_indent = depth if entry_indent is None else entry_indent
            match = ENTRY.match(line.strip()) if depth == entry_indent else None
            if match:
                names = [n.strip().lstrip("*") for n in match.group(1).split(",")]
                for name in names:
                    out[name] = match.group(2).strip()
            else:  # a continuation line belongs to the entry above
                for name in names:
                    out[name] = (out[name] + " " + line.strip()).strip()
    return out


def parameters(func) -> list[tuple[str, bool]]:
    """``(name, optional)`` of the documentable parameters of ``func``: ``*args``/``**kwargs`` are optional."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return []
    star = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [(p.name, p.kind in star) for p in sig.parameters.values() if p.name not in ("self", "cls")]


def undescribed(func, doc: str, sections=ARG_SECTIONS) -> list[str]:
    found = described(doc, sections)
    return [name for name, optional in parameters(func)
            if not found.get(name) and not (optional and name not in found)]


def public_objects():
    """``(qualified name, object)`` of each public function and class defined in a tricklib module."""
    for module in MODULES:
        for name, obj in vars(module).items():
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if obj.__module__ == module.__name__:
                yield f"{module.__name__}.{name}", obj


def public_methods(cls):
    """``(name, function)`` of each public method that ``cls`` itself defines (static and class methods too)."""
    for name, attr in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(attr, (staticmethod, classmethod)):
            attr = attr.__func__
        if inspect.isfunction(attr):
            yield name, getattr(cls, name)


def test_public_names_have_docstrings():
    missing = [name for name, obj in public_objects() if not (obj.__doc__ or "").strip()]
    assert not missing, f"public functions/classes without a docstring: {missing}"


def test_every_parameter_is_described():
    missing = {}
    for qualname, obj in public_objects():
        if inspect.isclass(obj):
            # a dataclass's constructor takes its fields, which it may document as Attributes
            sections = ARG_SECTIONS + ("Attributes",) if dataclasses.is_dataclass(obj) else ARG_SECTIONS
            if undescribed(obj, obj.__doc__, sections):
                missing[qualname] = undescribed(obj, obj.__doc__, sections)
            for name, method in public_methods(obj):
                if undescribed(method, inspect.getdoc(method)):
                    missing[f"{qualname}.{name}"] = undescribed(method, inspect.getdoc(method))
        elif undescribed(obj, obj.__doc__):
            missing[qualname] = undescribed(obj, obj.__doc__)
    report = "\n".join(f"  {name}: {params}" for name, params in missing.items())
    assert not missing, f"{sum(map(len, missing.values()))} parameters without a description " \
                        f"(add them to the docstring's Args: section):\n{report}"


def test_the_parser_reads_google_style():
    doc = """One line.

    Args:
        x: the input,
            over two lines.
        a, b: two at once.
        c (int): typed.
        empty:
        **kwargs: passed on.

    Returns:
        y: not a parameter.
    """
    assert described(doc) == {"x": "the input, over two lines.", "a": "two at once.", "b": "two at once.",
                              "c": "typed.", "empty": "", "kwargs": "passed on."}
