"""Knobs that move without a kernel: pre-rendered frames behind an HTML slider.

A Jupyter Book page is static, so an ipywidgets slider on it is frozen. A
:class:`Knob` renders the figure once per knob value (one or two knobs, a
small grid) and displays as *one self-contained HTML block*: the frames as
inline PNG images (``data:`` URIs, palette PNGs of ~10–20 KB each) and a range
input whose few lines of inline JavaScript show the frame of the current value.
No external script, no kernel: the slider moves in the rendered book, offline.
Where a notebook front end strips inline scripts from outputs (JupyterLab on an
untrusted notebook, GitHub's viewer) the first frame still shows. With a live
kernel, :meth:`Knob.live` gives the ipywidgets version of the same figure.
"""
from __future__ import annotations

import base64
import html
import io
import itertools
import json
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

#: Most frames one knob may store (every frame is inlined in the page).
MAX_FRAMES = 64
#: Default cap on the total size of the frames, in bytes (a notebook output
#: should stay well under 2 MB).
MAX_BYTES = 1_500_000

# Inline handler of every slider: show the frame whose key matches the current
# slider positions and write the current value next to the slider.
_ON_INPUT = (
    "var k=this.closest('.tricklib-knob');"
    "var key=Array.prototype.map.call(k.querySelectorAll('input[type=range]'),"
    "function(e){return e.value}).join('-');"
    "Array.prototype.forEach.call(k.querySelectorAll('img'),"
    "function(im){im.style.display=(im.dataset.key===key)?'':'none'});"
    "this.parentNode.querySelector('output').textContent=JSON.parse(this.dataset.labels)[this.value];"
)


def _as_figure(result: Any, name: str) -> Figure:
    if isinstance(result, Figure):
        return result
    if isinstance(result, Axes):
        return result.figure
    raise TypeError(f"figure function {name} must return a matplotlib Figure or Axes, "
                    f"got {type(result).__name__}")


def _png_bytes(fig: Figure, dpi: float | None, colors: int) -> bytes:
    """The figure as a palette PNG (tens of KB instead of hundreds); closes the figure."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi if dpi is not None else "figure", facecolor="white")
    finally:
        plt.close(fig)
    buf.seek(0)
    image = Image.open(buf).convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _png_size(png: bytes) -> tuple[int, int]:
    """(width, height) read from a PNG's IHDR chunk."""
    return struct.unpack(">II", png[16:24])


def _format(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


class Knob:
    """A figure with one or two knobs, pre-rendered at every combination of their values.

    Display it (the last expression of a cell) to get the kernel-free HTML
    slider; call :meth:`live` in a running kernel for the ipywidgets version.

    Args:
        figure: ``figure(**{name: value})`` returns a matplotlib ``Figure`` (or an
            ``Axes`` of one); it is called once per frame and the figure is closed.
            Give every frame the same ``figsize`` so the page does not jump.
        values: ``{name: [value, ...]}`` for one or two knobs; names are the keyword
            arguments of ``figure``; each knob has at least two distinct values.
            Every combination is one stored frame, at most ``MAX_FRAMES`` (64).
        initial: starting value per knob (default: each knob's first value).
        dpi: resolution of the frames; default ``None`` keeps the figure's own
            dpi, so the frames match the notebook's static figures.
        colors: palette size of each PNG frame (2–256).
        title: optional heading shown above the sliders.
        labels: ``{name: label}``: what each slider is, in words with its unit (e.g.
            ``{"resume_at": "resume at step"}``); default: the knob's name.
        caption: one or two sentences under the figure saying what to look for.
        max_bytes: raise if the frames together are larger than this (default
            ``MAX_BYTES``, 1.5 MB): lower ``dpi``, ``colors`` or the number of values.

    Raises:
        TypeError: ``values`` is not a mapping, a knob name is not a string, or
            ``figure`` returns something other than a Figure or Axes.
        ValueError: not one or two knobs, a name that is not an identifier, fewer
            than two or repeated values, too many frames, an ``initial`` value that
            is not among the knob's values, or frames larger than ``max_bytes``.

    Example:
        ``tricklib.knob(lambda gamma: plot_focal(gamma), {"gamma": [0, 0.5, 1, 2, 5]})``
    """

    def __init__(self, figure: Callable[..., Figure | Axes], values: Mapping[str, Sequence[Any]], *,
                 initial: Mapping[str, Any] | None = None, dpi: float | None = None, colors: int = 256,
                 title: str | None = None, labels: Mapping[str, str] | None = None, caption: str | None = None,
                 max_bytes: int = MAX_BYTES):
        if not callable(figure):
            raise TypeError(f"figure must be callable, got {type(figure).__name__}")
        if not isinstance(values, Mapping):
            raise TypeError(f"values must be a mapping {{name: [values...]}}, got {type(values).__name__}")
        if not 1 <= len(values) <= 2:
            raise ValueError(f"values must name one or two knobs, got {list(values)}")
        for name, vals in values.items():
            if not isinstance(name, str):
                raise TypeError(f"knob names must be strings, got {name!r}")
            if not name.isidentifier():
                raise ValueError(f"knob name {name!r} must be a Python identifier (it is a keyword argument)")
            if isinstance(vals, (str, bytes)) or not hasattr(vals, "__len__"):
                raise TypeError(f"knob {name!r} needs a sequence of values, got {type(vals).__name__}")
            vals = list(vals)
            if len(vals) < 2:
                raise ValueError(f"knob {name!r} needs at least two values, got {vals}")
            shown = [_format(v) for v in vals]
            if len(set(shown)) != len(shown):
                raise ValueError(f"knob {name!r} has repeated values: {vals}")
        if not 2 <= colors <= 256:
            raise ValueError(f"colors must be between 2 and 256, got {colors}")
        n_frames = math.prod(len(v) for v in values.values())
        if n_frames > MAX_FRAMES:
            raise ValueError(f"{n_frames} frames is too many for one page; use at most {MAX_FRAMES}")
        self.figure = figure
        self.values: dict[str, list[Any]] = {name: list(vals) for name, vals in values.items()}
        initial = dict(initial or {})
        for name, value in initial.items():
            if name not in self.values:
                raise ValueError(f"initial names an unknown knob {name!r}; knobs are {list(self.values)}")
            if value not in self.values[name]:
                raise ValueError(f"initial value {name}={value!r} is not among the knob values {self.values[name]}")
        self.start = tuple(self.values[n].index(initial.get(n, self.values[n][0])) for n in self.values)
        self.title = title
        self.labels = dict(labels or {})
        unknown = sorted(set(self.labels) - set(self.values))
        if unknown:
            raise ValueError(f"labels names unknown knobs {unknown}; knobs are {list(self.values)}")
        if not all(isinstance(v, str) and v for v in self.labels.values()):
            raise TypeError("labels must map knob names to non-empty strings")
        self.caption = caption
        self.frames: dict[tuple[int, ...], bytes] = {}
        for index in itertools.product(*(range(len(v)) for v in self.values.values())):
            kwargs = self._kwargs(index)
            fig = _as_figure(figure(**kwargs), getattr(figure, "__name__", repr(figure)))
            self.frames[index] = _png_bytes(fig, dpi, colors)
        if self.nbytes > max_bytes:
            raise ValueError(f"the {n_frames} frames take {self.nbytes / 1e6:.2f} MB (> max_bytes={max_bytes}); "
                             "lower dpi or colors, or use fewer values")

    def _kwargs(self, index: tuple[int, ...]) -> dict[str, Any]:
        return {name: self.values[name][i] for name, i in zip(self.values, index)}

    @property
    def nbytes(self) -> int:
        """Total size of the PNG frames, in bytes."""
        return sum(len(f) for f in self.frames.values())

    def __repr__(self) -> str:
        knobs = ", ".join(f"{n}=[{', '.join(_format(v) for v in vals)}]" for n, vals in self.values.items())
        return f"Knob({knobs}; {len(self.frames)} frames, {self.nbytes // 1000} KB)"

    def to_html(self) -> str:
        """The self-contained HTML block: sliders, current values and every frame inline."""
        imgs = []
        for idx, png in self.frames.items():
            width, height = _png_size(png)
            hidden = "" if idx == self.start else "display:none;"
            imgs.append(
                f'<img data-key="{"-".join(map(str, idx))}" alt="{html.escape(self._describe(idx))}" '
                f'width="{width}" height="{height}" style="{hidden}max-width:100%;height:auto" '
                f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"/>')
        sliders = "".join(
            f'<label style="display:block;font-family:sans-serif;font-size:14px;margin:4px 0">'
            f'<span style="display:inline-block;min-width:6em">{html.escape(self.labels.get(name, name))}</span> '
            f'<input type="range" min="0" max="{len(vals) - 1}" step="1" value="{i}" '
            f'aria-label="{html.escape(self.labels.get(name, name))}" '
            f'data-labels="{html.escape(json.dumps([_format(v) for v in vals]))}" '
            f'oninput="{html.escape(_ON_INPUT)}" style="vertical-align:middle;width:16em"/> '
            f'<output aria-live="polite">{html.escape(_format(vals[i]))}</output></label>'
            for (name, vals), i in zip(self.values.items(), self.start))
        title = (f'<div style="font-weight:bold;font-family:sans-serif">{html.escape(self.title)}</div>'
                 if self.title else "")
        caption = (f'<div class="tricklib-knob-caption" style="font-family:sans-serif;font-size:14px;'
                   f'margin:2px 0 8px">{html.escape(self.caption)}</div>' if self.caption else "")
        return f'<div class="tricklib-knob">{title}{sliders}<div>{"".join(imgs)}</div>{caption}</div>'

    def _repr_html_(self) -> str:
        return self.to_html()

    def _describe(self, index: tuple[int, ...]) -> str:
        return ", ".join(f"{n}={_format(v)}" for n, v in self._kwargs(index).items())

    def live(self) -> Any:
        """The same figure under ipywidgets sliders (needs a running kernel).

        Its output is a widget: save the notebook without widget state
        (``store_widget_state=False``) so the book loads no widget manager.
        """
        import ipywidgets as widgets
        from IPython.display import display

        def show(**kwargs: Any) -> None:
            fig = _as_figure(self.figure(**kwargs), "figure")
            display(fig)
            plt.close(fig)

        # index=, not value=: ipywidgets leaves the label blank for a falsy value such as 0
        sliders = {name: widgets.SelectionSlider(options=[(_format(v), v) for v in vals], index=i,
                                                 description=self.labels.get(name, name),
                                                 style={"description_width": "initial"})
                   for (name, vals), i in zip(self.values.items(), self.start)}
        return widgets.interactive(show, **sliders)


def knob(figure: Callable[..., Figure | Axes], values: Mapping[str, Sequence[Any]], **kwargs: Any) -> Knob:
    """Build a :class:`Knob` (same arguments).

    Args:
        figure: ``figure(**{name: value})`` returns a matplotlib ``Figure`` or ``Axes``
            for one frame (see :class:`Knob`).
        values: ``{name: [value, ...]}`` for one or two knobs, at least two distinct
            values each.
        **kwargs: the keyword-only arguments of :class:`Knob` (``initial``, ``dpi``,
            ``colors``, ``title``, ``labels``, ``caption``, ``max_bytes``).

    Example:
        ``tricklib.knob(lambda gamma: plot_focal(gamma), {"gamma": [0, 0.5, 1, 2, 5]})``
    """
    return Knob(figure, values, **kwargs)
