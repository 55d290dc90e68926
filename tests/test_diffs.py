"""Every chapter's one-line diff runs as written, and tricklib's public API is importable from the package.

A diff on the page is the code a reader pastes. For each ```diff block of a chapter we
rebuild the code *after* the change (context lines and ``+`` lines, ``-`` lines dropped),
and execute it in a small context that stands for the reader's training script: tensors,
a model, an optimiser, a loader (``CONTEXT`` below, with a few names per chapter in
``CHAPTER_CONTEXT``). A name the diff uses that exists nowhere (``tricklib.soft_nms`` when it
was only in ``tricklib.nms``, ``MEAN`` never defined) fails the test.
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import textwrap

import pytest

import tricklib
from conftest import ROOT, toc_chapters

# The reader's training script, as every diff may assume it: a small classifier and its data.
CONTEXT = '''
import copy, math
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch, torchvision
import torch.nn.functional as F
from torch import nn
import tricklib

torch.manual_seed(0)
C, T, B, m, step, epochs, base_lr, batch_size = 4, 40, 8, 5, 10, 2, 0.01, 64
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.head = nn.Linear(16, C)
    def forward(self, x):
        return self.head(self.body(x))
model = Net()
head = model.head
x, y = torch.randn(32, 8), torch.randint(0, C, (32,))
y_train, labels = y, y
train, val = (x, y), (x[:16], y[:16])
loader = [(x, y)]
logits = z = model(x)
loss_fn = F.cross_entropy
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loss = loss_fn(model(x), y)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0)
device = torch.device("cpu")
dtype = tricklib.autocast_dtype(device)
'''

# What a chapter's diff names beyond CONTEXT (its own variables, defined as the chapter does).
CHAPTER_CONTEXT = {
    "attention": '''
q, k, v = torch.randn(2, 4, 5, 64), torch.randn(2, 4, 7, 64), torch.randn(2, 4, 7, 16)
''',
    "backprop_dependencies": '''
x = torch.randn(8, 5, 3)
model = nn.Sequential(nn.Flatten(), nn.Linear(15, 4))
my_layer = nn.LayerNorm(3).double()
mu, var, eps = x.mean(-1, keepdim=True), x.var(-1, keepdim=True), 1e-5
''',
    "channel_shuffle": '''
g = 4
x = torch.randn(2, 16, 5, 5)
group_conv1 = nn.Conv2d(16, 16, 3, padding=1, groups=g)
group_conv2 = nn.Conv2d(16, 16, 3, padding=1, groups=g)
''',
    "look_before_the_net": '''
MEAN, STD = [0.5], [0.25]
x, y = torch.rand(8, 1, 16, 16), torch.rand(8, 16, 16) > 0.5
labels = torch.randint(0, 3, (8,))
loader = [(x, y)]
model = nn.Conv2d(1, 1, 3, padding=1)
loss_fn = lambda out, target: F.binary_cross_entropy_with_logits(out.squeeze(1), target.float())
''',
    "reproducibility_checkpoints": '''
import os, tempfile
os.chdir(tempfile.mkdtemp())
torch.save(model.state_dict(), "last.pt")
''',
    "sanity_checks": '''
def train_model(model):
    pass
''',
    "scale_and_split": '''
X, y = torch.randn(100, 5), torch.randint(0, 2, (100,))
configs = [0.1, 1.0]
def score(config, data):
    return float(config)
def report(value):
    pass
test = (X[:10], y[:10])
''',
    "mixed_precision": '''
def loss_fn(out, target):
    return F.cross_entropy(out, target)
''',
    "random_search": '''
def train_and_evaluate(lr, weight_decay):
    return lr
''',
    "sgdr_snapshot_ensembles": '''
snapshots = [copy.deepcopy(model.state_dict()) for _ in range(2)]
''',
    "focal_loss": '''
logits = torch.randn(32, 5)
y = (torch.rand(32, 5) < 0.1).float()
''',
    "swa": '''
model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, C))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 10)
swa_start, swa_lr = 1, 0.05
''',
    "model_soups": '''
pretrained, grid = copy.deepcopy(model.state_dict()), [0.05, 0.1, 0.2]


def fine_tune(state, lr):
    net = Net()
    net.load_state_dict(state)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(lr * torch.randn_like(p))
    return net.state_dict()


def validation_accuracy(state):
    net = Net()
    net.load_state_dict(state)
    return tricklib.evaluate(net, val)["acc"]
''',
    "giou": '''
xy = torch.rand(20, 2) * 50
pred_boxes = torch.cat([xy, xy + 10 + torch.rand(20, 2) * 20], dim=1).requires_grad_()
gt_boxes = pred_boxes.detach() + torch.randn(20, 4)
''',
    "pointrend": '''
features, fine = torch.randn(2, 8, 16, 16), torch.rand(2, 9, 64, 64)
mask_head = nn.Conv2d(8, 1, 1)
point_mlp = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))
def point_head(fine_at_points, coarse_at_points):  # [N, C, P], [N, 1, P] -> [N, 1, P]
    return point_mlp(torch.cat([fine_at_points, coarse_at_points], 1).transpose(1, 2)).transpose(1, 2)
coarse = mask_head(features)
gt_masks = (torch.rand(2, 1, 64, 64) > 0.5).float()
''',
    "soft_nms": '''
xy = torch.rand(20, 2) * 50
boxes = torch.cat([xy, xy + 10 + torch.rand(20, 2) * 20], dim=1)
scores = torch.rand(20)
''',
}


def diffs(docname: str) -> list[str]:
    nb = json.loads((ROOT / f"{docname}.ipynb").read_text(encoding="utf-8"))
    md = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    return re.findall(r"```diff\n(.*?)```", md, re.S)


def after(diff: str) -> str:
    """The code once the diff is applied: context and ``+`` lines, without their one-column marker."""
    lines = []
    for line in diff.splitlines():
        if line.startswith("-"):
            continue
        if line[:1] in ("+", " "):
            lines.append(line[1:])
        elif not line.strip():
            lines.append("")
        else:
            raise ValueError(f"a diff line must start with '+', '-' or a space: {line!r}")
    return textwrap.dedent("\n".join(lines))


@pytest.mark.parametrize("docname", toc_chapters())
def test_one_line_diff_runs(docname, tmp_path, monkeypatch):
    blocks = diffs(docname)
    assert blocks, "no ```diff block"
    name = docname.rsplit("/", 1)[-1]
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        code = after(block)
        namespace: dict = {}
        exec(compile(CONTEXT + CHAPTER_CONTEXT.get(name, ""), "<context>", "exec"), namespace)
        try:
            exec(compile(code, f"<{name} diff>", "exec"), namespace)
        except Exception as e:  # noqa: BLE001 - report which line of which diff
            pytest.fail(f"{name}: the diff does not run as written ({type(e).__name__}: {e}):\n{code}")
    os.chdir(ROOT)


def public_names():
    for path in sorted((ROOT / "tricklib").glob("*.py")):
        if path.stem.startswith("_"):
            continue
        module = importlib.import_module(f"tricklib.{path.stem}")
        for name, obj in vars(module).items():
            if (not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
                    and getattr(obj, "__module__", None) == module.__name__):
                yield path.stem, name, obj


def test_every_public_name_is_importable_from_the_package():
    missing = [f"tricklib.{module}.{name}" for module, name, obj in public_names()
               if getattr(tricklib, name, None) is not obj]
    assert not missing, f"not importable as tricklib.<name> (add them to tricklib/__init__.py): {missing}"
    listed = set(tricklib.__all__)
    unlisted = [name for _, name, _ in public_names() if name not in listed]
    assert not unlisted, f"missing from tricklib.__all__: {unlisted}"
