"""save_checkpoint / load_checkpoint: exact resume, atomic writes, clear errors on bad files."""
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from tricklib import CheckpointError, load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from tricklib.checkpoint import temp_path

STEPS = 40


def make(seed):
    """A model whose training uses every generator: dropout (torch), batch order (torch), noise (NumPy), python."""
    seed_everything(seed)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-2, total_steps=STEPS + 10)
    return model, opt, sched


DATA = torch.randn(200, 5, generator=torch.Generator().manual_seed(0))
TARGET = DATA.sum(1, keepdim=True)


def train_steps(model, opt, sched, n):
    losses = []
    for _ in range(n):
        idx = torch.randint(len(DATA), (16,))
        x = DATA[idx] + torch.from_numpy(np.random.normal(0, 0.1, (16, 5))).float()
        x = x * random.uniform(0.9, 1.1)
        loss = nn.functional.mse_loss(model(x), TARGET[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("stop", [1, 17, 39])
def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path, seed, stop):
    full = train_steps(*make(seed), STEPS)
    model, opt, sched = make(seed)
    first = train_steps(model, opt, sched, stop)
    save_checkpoint(tmp_path / "ckpt.pt", model=model, optimizer=opt, scheduler=sched, step=stop)
    train_steps(model, opt, sched, 5)              # the run goes on and moves every generator...
    np.random.rand(3), random.random()
    model, opt, sched = make(seed + 100)           # ...then dies; a new process builds fresh objects
    ckpt = load_checkpoint(tmp_path / "ckpt.pt", model=model, optimizer=opt, scheduler=sched)
    assert ckpt["step"] == stop
    resumed = first + train_steps(model, opt, sched, STEPS - stop)
    assert resumed == full                          # bit-identical, step by step


def test_without_rng_restore_the_resumed_run_differs(tmp_path):
    full = train_steps(*make(0), STEPS)
    model, opt, sched = make(0)
    first = train_steps(model, opt, sched, 20)
    save_checkpoint(tmp_path / "c.pt", model=model, optimizer=opt, scheduler=sched)
    model, opt, sched = make(5)
    load_checkpoint(tmp_path / "c.pt", model=model, optimizer=opt, scheduler=sched, restore_rng=False)
    resumed = first + train_steps(model, opt, sched, STEPS - 20)
    assert resumed[:20] == full[:20] and resumed[20] != full[20]


def test_rng_state_round_trip_covers_python_numpy_torch():
    seed_everything(3)
    state = rng_state()
    a = (random.random(), np.random.rand(), np.random.randn(), torch.rand(2))
    random.random(), np.random.rand(5), torch.rand(4)
    set_rng_state(state)
    b = (random.random(), np.random.rand(), np.random.randn(), torch.rand(2))
    assert a[:3] == b[:3] and torch.equal(a[3], b[3])
    with pytest.raises(ValueError, match="missing"):
        set_rng_state({"python": state["python"]})


def crashing_save(obj, f, *args, **kwargs):
    """Write half of the real bytes, then fail like a full disk or a killed process would."""
    import io
    buf = io.BytesIO()
    REAL_SAVE(obj, buf)
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    raise OSError("simulated crash in the middle of the write")


REAL_SAVE = torch.save


def test_crash_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    model = nn.Linear(3, 2)
    save_checkpoint(path, model=model, step=1)
    before = path.read_bytes()
    with torch.no_grad():
        model.weight.add_(1.0)
    monkeypatch.setattr(torch, "save", crashing_save)
    for _ in range(3):                              # repeated crashes leave nothing behind
        with pytest.raises(OSError, match="simulated crash"):
            save_checkpoint(path, model=model, step=2)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    monkeypatch.setattr(torch, "save", REAL_SAVE)
    fresh = nn.Linear(3, 2)
    assert load_checkpoint(path, model=fresh)["step"] == 1
    assert not torch.equal(fresh.weight, model.weight)


def test_stale_temp_file_from_a_killed_process_is_overwritten(tmp_path):
    path = tmp_path / "c.pt"
    temp_path(path).write_bytes(b"left over by kill -9")
    save_checkpoint(path, step=7)
    assert load_checkpoint(path)["step"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_naive_save_that_crashes_destroys_the_checkpoint(tmp_path, monkeypatch):
    """The failure mode the atomic write prevents: torch.save straight onto the file."""
    path = tmp_path / "c.pt"
    save_checkpoint(path, step=1)
    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError), open(path, "wb") as f:
        torch.save({"step": 2}, f)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_truncated_file_gives_a_clear_error_naming_it(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, model=nn.Linear(4, 4), step=3)
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="c.pt.*not a readable checkpoint"):
            load_checkpoint(path)


def test_foreign_files_give_a_clear_error(tmp_path):
    rand = tmp_path / "random.bin"
    rand.write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError, match="random.bin"):
        load_checkpoint(rand)
    plain = tmp_path / "weights.pt"
    torch.save(nn.Linear(2, 2).state_dict(), plain)      # a torch file, but not ours
    with pytest.raises(CheckpointError, match="weights.pt.*not a tricklib checkpoint"):
        load_checkpoint(plain)
    pickled = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), pickled)                  # a whole pickled module: refused by weights_only
    with pytest.raises(CheckpointError, match="module.pt"):
        load_checkpoint(pickled)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_missing_entry_and_bad_arguments(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, model=nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match="no entry"):
        load_checkpoint(path, optimizer=torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))
    with pytest.raises(ValueError, match="needs something"):
        save_checkpoint(path)
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(path, rng=1)
    with pytest.raises(TypeError, match="extra.*ndarray"):
        save_checkpoint(path, extra={"a": np.zeros(2)})
    with pytest.raises(FileNotFoundError):
        save_checkpoint(tmp_path / "no_such_dir" / "c.pt", step=1)


def test_load_maps_to_cpu_and_restores_optimizer_state(tmp_path):
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c.pt", optimizer=opt)
    opt2 = torch.optim.SGD(nn.Linear(3, 1).parameters(), lr=0.5, momentum=0.9)
    load_checkpoint(tmp_path / "c.pt", optimizer=opt2)
    assert opt2.param_groups[0]["lr"] == 0.1
    buf = next(iter(opt2.state.values()))["momentum_buffer"]
    torch.testing.assert_close(buf, next(iter(opt.state.values()))["momentum_buffer"])


def test_file_and_directory_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}")))   # Linux: is the synced fd a directory?
        real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", None))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step)   # a closure: stored as None
    save_checkpoint(tmp_path / "c.pt", optimizer=opt, scheduler=sched)
    assert [c[0] for c in calls] == ["fsync", "replace", "fsync"]
    if os.path.isdir("/proc/self/fd"):
        assert [c[1] for c in calls] == [False, None, True]
    load_checkpoint(tmp_path / "c.pt", scheduler=sched)
