"""save_checkpoint / load_checkpoint: exact resume, atomic writes, clear errors on bad files."""
import collections
import enum
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from tricklib import (CheckpointError, History, load_checkpoint, rng_state, save_checkpoint, seed_everything,
                      set_rng_state)
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


# --- what save writes, load reads back --------------------------------------------------------------------
class Colour(enum.IntEnum):
    RED = 1


class Name(str):
    """A str subclass, as np.str_ or a StrEnum are."""


Point = collections.namedtuple("Point", "x y")


def test_numpy_scalars_and_subclasses_of_builtins_come_back_as_plain_values(tmp_path):
    history = History()
    history.step["loss"] += [0.5, 0.25]                       # a defaultdict
    accs = np.array([0.9, 0.95], dtype=np.float32)
    values = {"best_acc": np.mean(accs), "best64": np.float64(0.125), "epoch": np.int64(7), "small": np.uint8(3),
              "flag": np.bool_(True), "half": np.float16(1.5), "name": np.str_("run"), "colour": Colour.RED,
              "label": Name("cat"), "point": Point(1, 2.5), "frozen": frozenset({3, 4}),
              "nested": {"list": [np.int32(1), (np.float32(2.0), Colour.RED)], "tensor": torch.ones(2)},
              "history_step": history.step, "counts": collections.Counter(a=2),
              "ordered": collections.OrderedDict(b=np.int16(1))}
    path = tmp_path / "c.pt"
    save_checkpoint(path, **values)
    ckpt = load_checkpoint(path)
    expected = {"best_acc": float(np.mean(accs)), "best64": 0.125, "epoch": 7, "small": 3, "flag": True,
                "half": 1.5, "name": "run", "colour": 1, "label": "cat", "point": (1, 2.5), "frozen": {3, 4},
                "history_step": {"loss": [0.5, 0.25]}, "counts": {"a": 2},
                "ordered": collections.OrderedDict(b=1)}
    for key, value in expected.items():
        assert ckpt[key] == value and type(ckpt[key]) is type(value), key
    assert ckpt["nested"]["list"] == [1, (2.0, 1)] and type(ckpt["nested"]["list"][1][1]) is int


def test_a_state_dict_keeps_its_ordered_dict_and_metadata(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    state = model.state_dict()
    save_checkpoint(tmp_path / "c.pt", model=model)
    loaded = load_checkpoint(tmp_path / "c.pt")["model"]
    assert type(loaded) is collections.OrderedDict and loaded._metadata == state._metadata


@pytest.mark.parametrize("bad", [np.zeros(2), np.array(1.0), object(), {"fn": len}, [range(3)], np.datetime64("2020"),
                                 torch.ones(2).to_sparse()])
def test_a_value_load_cannot_read_is_refused_before_the_file_is_touched(tmp_path, bad):
    path = tmp_path / "c.pt"
    save_checkpoint(path, step=1)
    before = path.read_bytes()
    with pytest.raises(TypeError, match="extra"):
        save_checkpoint(path, step=2, extra=bad)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    assert load_checkpoint(path)["step"] == 1


def test_a_file_that_would_not_load_never_replaces_the_old_one(tmp_path, monkeypatch):
    """Whatever slips past the conversion (here: a save that writes garbage) is caught by reading the file back."""
    path = tmp_path / "c.pt"
    save_checkpoint(path, step=1)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: f.write(b"not a checkpoint"))
    with pytest.raises(CheckpointError):
        save_checkpoint(path, step=2)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


# --- corruption -------------------------------------------------------------------------------------------
def flipped(data: bytes, position: int, bit: int) -> bytes:
    out = bytearray(data)
    out[position] ^= 1 << bit
    return bytes(out)


def test_a_flipped_bit_in_the_weights_raises(tmp_path):
    model = nn.Linear(4, 4)
    path = tmp_path / "c.pt"
    save_checkpoint(path, model=model, step=3)
    data = path.read_bytes()
    for name in ("weight", "bias"):
        start = data.find(getattr(model, name).detach().numpy().tobytes())
        assert start > 0
        for position in range(start, start + getattr(model, name).numel() * 4, 3):
            for bit in (0, 7):
                path.write_bytes(flipped(data, position, bit))
                fresh = nn.Linear(4, 4)
                before = fresh.weight.detach().clone()
                with pytest.raises(CheckpointError, match="corrupted.*checksum"):
                    load_checkpoint(path, model=fresh)
                assert torch.equal(fresh.weight, before)


def test_a_flipped_bit_anywhere_raises_or_changes_nothing(tmp_path):
    """Across the whole file (a sample of positions): the load fails, or gives exactly what was saved."""
    model = nn.Linear(3, 2)
    path = tmp_path / "c.pt"
    save_checkpoint(path, model=model, step=3, note="a string")
    data = path.read_bytes()
    positions = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:400].tolist()
    loaded = 0
    for position in positions:
        path.write_bytes(flipped(data, position, position % 8))
        try:
            ckpt = load_checkpoint(path, restore_rng=False)
        except CheckpointError:
            continue
        loaded += 1
        assert torch.equal(ckpt["model"]["weight"], model.weight) and torch.equal(ckpt["model"]["bias"], model.bias)
        assert ckpt["step"] == 3 and ckpt["note"] == "a string"
    assert loaded < len(positions) // 4   # most bytes matter; the rest are zip padding and timestamps


def test_an_old_checkpoint_without_checksum_gets_a_way_out(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": "tricklib-checkpoint-v1", "step": 1, "rng": rng_state()}, path)
    with pytest.raises(CheckpointError, match="older tricklib.*save it again"):
        load_checkpoint(path)


# --- a failed load changes nothing ------------------------------------------------------------------------
def forged(path, **entries):
    """A checkpoint with a valid checksum but the given entries, as a buggy writer could produce."""
    from tricklib.checkpoint import FORMAT, _checksum
    payload = {"format": FORMAT, **entries}
    payload["sha256"] = _checksum(payload)
    torch.save(payload, path)


def test_a_file_without_rng_raises_checkpoint_error_not_key_error(tmp_path):
    path = tmp_path / "c.pt"
    forged(path, model=nn.Linear(2, 2).state_dict(), step=4)
    model = nn.Linear(2, 2)
    before = model.weight.detach().clone()
    with pytest.raises(CheckpointError, match="no entry.*rng.*restore_rng=False"):
        load_checkpoint(path, model=model)
    assert torch.equal(model.weight, before)
    assert load_checkpoint(path, model=model, restore_rng=False)["step"] == 4
    assert not torch.equal(model.weight, before)


def test_a_bad_rng_state_leaves_model_and_generators_unchanged(tmp_path):
    path = tmp_path / "c.pt"
    state = rng_state()
    state["torch"] = torch.zeros(7, dtype=torch.uint8)          # not a generator state
    forged(path, model=nn.Linear(2, 2).state_dict(), rng=state)
    model = nn.Linear(2, 2)
    before = model.weight.detach().clone()
    seed_everything(0)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    seed_everything(0)
    with pytest.raises(ValueError, match="not an rng_state"):
        load_checkpoint(path, model=model)
    assert torch.equal(model.weight, before)
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def test_an_object_that_does_not_fit_leaves_every_object_unchanged(tmp_path):
    path = tmp_path / "c.pt"
    small = nn.Linear(2, 2)
    save_checkpoint(path, model=small, optimizer=torch.optim.SGD(small.parameters(), lr=0.1))
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD([*model.parameters(), nn.Parameter(torch.ones(1))], lr=0.5)  # 3 params, not 2
    before = model.weight.detach().clone()
    with pytest.raises(ValueError, match="parameter group"):
        load_checkpoint(path, model=model, optimizer=optimizer)
    assert torch.equal(model.weight, before) and optimizer.param_groups[0]["lr"] == 0.5
    wrong_shape = nn.Linear(2, 3)
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_checkpoint(path, model=wrong_shape)
    with pytest.raises(TypeError, match="load_state_dict"):
        load_checkpoint(path, model=model.weight)


def test_set_rng_state_is_all_or_nothing():
    seed_everything(1)
    expected = random.random()
    seed_everything(1)
    bad = rng_state()
    bad["numpy"] = {"name": "MT19937"}                          # python and torch fine, numpy broken
    random.seed(99)
    with pytest.raises(ValueError, match="not an rng_state"):
        set_rng_state(bad)
    random.seed(1)
    assert random.random() == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_map_location_cuda_keeps_generators_on_the_cpu(tmp_path):
    model = nn.Linear(3, 2)
    save_checkpoint(tmp_path / "c.pt", model=model, step=1)
    expected = torch.rand(3)
    gpu_model = nn.Linear(3, 2).cuda()
    ckpt = load_checkpoint(tmp_path / "c.pt", model=gpu_model, map_location="cuda")
    assert torch.equal(torch.rand(3), expected) and ckpt["rng"]["torch"].device.type == "cpu"
    assert ckpt["model"]["weight"].is_cuda and torch.equal(gpu_model.weight.cpu(), model.weight)
