"""tricklib.knobs: pre-rendered frames behind a kernel-free HTML slider."""
from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

import tricklib  # noqa: E402
from tricklib.knobs import MAX_FRAMES, Knob, knob  # noqa: E402

calls: list[dict] = []


def curve(gamma, alpha=0.25):
    """A focal-loss-like curve: the kind of figure a chapter puts behind a knob."""
    calls.append({"gamma": gamma, "alpha": alpha})
    fig, ax = plt.subplots(figsize=(5, 3.2))
    p = np.linspace(0.01, 1, 200)
    ax.plot(p, -alpha * (1 - p) ** gamma * np.log(p))
    ax.set_title(f"gamma={gamma}, alpha={alpha}")
    return fig


class Parsed(HTMLParser):
    """Every start tag with its attributes, in order."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def all(self, tag):
        return [a for t, a in self.tags if t == tag]


@pytest.fixture(autouse=True)
def _fresh():
    calls.clear()
    plt.close("all")  # the figure checks below count only what the knob leaves open
    yield
    plt.close("all")


def decode(src: str) -> Image.Image:
    assert src.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    image.load()
    assert image.format == "PNG"
    return image


def test_one_knob_frames_sizes_and_initial_value():
    values = [0, 0.5, 1, 2, 5]
    k = knob(curve, {"gamma": values})
    assert isinstance(k, Knob)
    assert [c["gamma"] for c in calls] == values  # one call per frame, in order
    assert sorted(k.frames) == [(i,) for i in range(5)]
    assert len(k.frames) == 5
    for png in k.frames.values():
        assert 1_000 < len(png) < 60_000  # tens of KB, not hundreds
    assert k.nbytes == sum(map(len, k.frames.values()))
    assert k.start == (0,)
    assert plt.get_fignums() == []  # every figure closed

    doc = Parsed(k._repr_html_())
    imgs = doc.all("img")
    assert len(imgs) == 5
    shown = [im for im in imgs if "display:none" not in (im["style"] or "")]
    assert [im["data-key"] for im in shown] == ["0"]
    assert shown[0]["alt"] == "gamma=0"
    (slider,) = doc.all("input")
    assert (slider["type"], slider["min"], slider["max"], slider["value"]) == ("range", "0", "4", "0")
    assert re.search(r"<output[^>]*>0</output>", k.to_html())


def test_frames_decode_as_png_of_the_figure_size():
    k = knob(curve, {"gamma": [1, 2]})
    dpi = plt.rcParams["figure.dpi"]  # frames keep the figure's own dpi (100 by default)
    size = (round(5 * dpi), round(3.2 * dpi))
    for im in Parsed(k.to_html()).all("img"):
        image = decode(im["src"])
        assert image.size == size  # figsize (5, 3.2)
        assert (im["width"], im["height"]) == tuple(map(str, size))
    # frames of different knob values differ
    assert k.frames[(0,)] != k.frames[(1,)]


def test_two_knobs_grid_keys_and_initial():
    k = Knob(curve, {"gamma": [0, 1, 2], "alpha": [0.25, 0.5]}, initial={"gamma": 2, "alpha": 0.5},
             title="Focal loss")
    assert len(k.frames) == 6 and len(calls) == 6
    assert {(c["gamma"], c["alpha"]) for c in calls} == {(g, a) for g in [0, 1, 2] for a in [0.25, 0.5]}
    assert k.start == (2, 1)
    doc = Parsed(k.to_html())
    keys = [im["data-key"] for im in doc.all("img")]
    assert sorted(keys) == sorted(f"{i}-{j}" for i in range(3) for j in range(2))
    shown = [im["data-key"] for im in doc.all("img") if "display:none" not in im["style"]]
    assert shown == ["2-1"]
    sliders = doc.all("input")
    assert [(s["aria-label"], s["max"], s["value"]) for s in sliders] == [("gamma", "2", "2"), ("alpha", "1", "1")]
    outputs = re.findall(r"<output[^>]*>([^<]*)</output>", k.to_html())
    assert outputs == ["2", "0.5"]
    assert "Focal loss" in k.to_html()


def test_html_is_self_contained():
    page = knob(curve, {"gamma": [0, 1], "alpha": [0.25, 0.5]}).to_html()
    doc = Parsed(page)
    assert doc.all("script") == [] and doc.all("link") == [] and doc.all("iframe") == []
    for _tag, attrs in doc.tags:
        for name in ("src", "href"):
            if attrs.get(name) is not None:
                assert attrs[name].startswith("data:"), f"{name}={attrs[name][:60]}"
    assert "http://" not in page and "https://" not in page
    # the slider swaps frames through its inline handler only
    assert all(s["oninput"] for s in doc.all("input"))


def test_labels_survive_html_and_odd_values():
    k = knob(lambda mode: curve(gamma={"a|b": 1, "<&>": 2}[mode]), {"mode": ["a|b", "<&>"]})
    (slider,) = Parsed(k.to_html()).all("input")
    assert json.loads(slider["data-labels"]) == ["a|b", "<&>"]


def test_repr_is_deterministic():
    k = knob(curve, {"gamma": [0, 0.5]})
    assert re.fullmatch(r"Knob\(gamma=\[0, 0\.5\]; 2 frames, \d+ KB\)", repr(k))
    assert "0x" not in repr(k)  # no memory address in a saved notebook


def test_figure_may_return_axes():
    k = knob(lambda s: curve(s).axes[0], {"s": [1, 2]})
    assert len(k.frames) == 2


def test_dpi_and_colors():
    small = knob(curve, {"gamma": [1, 2]}, dpi=50, colors=16)
    assert decode(Parsed(small.to_html()).all("img")[0]["src"]).size == (250, 160)
    assert small.nbytes < knob(curve, {"gamma": [1, 2]}).nbytes


@pytest.mark.parametrize("values, error, match", [
    ({}, ValueError, "one or two knobs"),
    ({"a": [1, 2], "b": [1, 2], "c": [1, 2]}, ValueError, "one or two knobs"),
    ({"gamma": [1]}, ValueError, "at least two values"),
    ({"gamma": []}, ValueError, "at least two values"),
    ({"gamma": [1, 1.0]}, ValueError, "repeated"),
    ({"not a name": [1, 2]}, ValueError, "identifier"),
    ({3: [1, 2]}, TypeError, "strings"),
    ({"gamma": "abc"}, TypeError, "sequence"),
    ({"gamma": 5}, TypeError, "sequence"),
    ([("gamma", [1, 2])], TypeError, "mapping"),
    ({"gamma": list(range(9)), "alpha": list(range(8))}, ValueError, "too many"),
])
def test_bad_values(values, error, match):
    with pytest.raises(error, match=match):
        Knob(curve, values)
    assert calls == []  # rejected before any figure is drawn


def test_bad_initial_and_options():
    with pytest.raises(ValueError, match="not among"):
        Knob(curve, {"gamma": [0, 1]}, initial={"gamma": 3})
    with pytest.raises(ValueError, match="unknown knob"):
        Knob(curve, {"gamma": [0, 1]}, initial={"sigma": 0})
    with pytest.raises(ValueError, match="colors"):
        Knob(curve, {"gamma": [0, 1]}, colors=1)
    with pytest.raises(TypeError, match="callable"):
        Knob("curve", {"gamma": [0, 1]})
    with pytest.raises(TypeError, match="Figure or Axes"):
        Knob(lambda gamma: None, {"gamma": [0, 1]})
    with pytest.raises(ValueError, match="max_bytes"):
        Knob(curve, {"gamma": [0, 1]}, max_bytes=1000)
    assert MAX_FRAMES == 64
    assert plt.get_fignums() == []


def test_exported_from_tricklib():
    assert tricklib.knob is knob and tricklib.Knob is Knob


def test_live_widget():
    widgets = pytest.importorskip("ipywidgets")
    k = knob(curve, {"gamma": [0, 2], "alpha": [0.25, 0.5]}, initial={"alpha": 0.5})
    w = k.live()
    assert isinstance(w, widgets.interactive)
    sliders = {c.description: c for c in w.children if isinstance(c, widgets.SelectionSlider)}
    assert set(sliders) == {"gamma", "alpha"}
    assert sliders["alpha"].value == 0.5 and sliders["gamma"].value == 0
    assert sliders["gamma"].options == (("0", 0), ("2", 2))
    assert (sliders["alpha"].label, sliders["gamma"].label) == ("0.5", "0")


def test_labels_in_words_and_a_caption():
    k = Knob(curve, {"gamma": [0, 1], "alpha": [0.25, 0.5]}, labels={"gamma": "focusing γ (unitless)"},
             caption="Watch the easy examples' loss vanish as γ grows.")
    doc = Parsed(k.to_html())
    assert [s["aria-label"] for s in doc.all("input")] == ["focusing γ (unitless)", "alpha"]
    assert "focusing γ (unitless)</span>" in k.to_html()
    assert 'class="tricklib-knob-caption"' in k.to_html() and "easy examples&#x27; loss vanish" in k.to_html()
    with pytest.raises(ValueError, match="unknown knobs"):
        Knob(curve, {"gamma": [0, 1]}, labels={"beta": "b"})
    with pytest.raises(TypeError, match="non-empty strings"):
        Knob(curve, {"gamma": [0, 1]}, labels={"gamma": ""})
