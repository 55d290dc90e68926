"""Reproducible runs and checkpoints that survive a crash (Part 1 of the book).

A resumed run continues the *identical* loss curve only if the checkpoint holds
everything the next step depends on: the weights, the optimiser's state
(momentum, Adam's moments), the scheduler's position, the step counter and the
state of every random-number generator (batch order, dropout masks,
augmentations). :func:`save_checkpoint` stores all of it and writes the file
atomically, so a crash in the middle of a save leaves the previous checkpoint
intact; :func:`load_checkpoint` reads it back with ``torch.load(weights_only=True)``
(no arbitrary code runs when a file is loaded) and restores it.
"""
from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Marker stored in every checkpoint, so a foreign file is recognised as such.
FORMAT = "tricklib-checkpoint-v1"
_RESERVED = ("format", "rng")
# what torch.load(weights_only=True) can read back without running code
_SAFE_SCALARS = (bool, int, float, complex, str, bytes, type(None), torch.Tensor, torch.dtype,
                 torch.device, torch.Size)


class CheckpointError(ValueError):
    """A file that is not a readable tricklib checkpoint (truncated, corrupted or foreign)."""


def rng_state() -> dict[str, Any]:
    """The state of every global random-number generator, in a ``weights_only``-safe form.

    Covers Python's ``random``, NumPy's legacy global generator (``np.random.*``),
    torch on the CPU, and every CUDA device (and MPS) when present. NumPy's
    ``(name, uint32 array, pos, has_gauss, cached)`` tuple is stored with the array
    as an int64 tensor, because ``torch.load(weights_only=True)`` refuses NumPy
    arrays. Generators you create yourself (``np.random.default_rng``,
    ``torch.Generator``) are not global: checkpoint them yourself.

    Returns:
        ``{"python", "numpy", "torch"[, "cuda"][, "mps"]}``; restore with :func:`set_rng_state`.
    """
    name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generators saved by :func:`rng_state`.

    CUDA/MPS states are restored when that device is present here; a checkpoint
    written on a GPU machine and resumed on a CPU-only one restores the CPU
    generators only (GPU random streams cannot be continued without the GPU).

    Raises:
        ValueError: ``state`` lacks the ``"python"``, ``"numpy"`` or ``"torch"`` entry.
    """
    missing = [k for k in ("python", "numpy", "torch") if k not in state]
    if missing:
        raise ValueError(f"state is not an rng_state(): missing {missing}")
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])


def _check_safe(where: str, value: Any) -> None:
    """Raise TypeError if ``value`` holds something ``torch.load(weights_only=True)`` would refuse."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_safe(f"{where}[{k!r}]", k)
            _check_safe(f"{where}[{k!r}]", v)
    elif isinstance(value, (list, tuple, set)):
        for i, v in enumerate(value):
            _check_safe(f"{where}[{i}]", v)
    elif not isinstance(value, _SAFE_SCALARS):
        raise TypeError(f"{where} is a {type(value).__name__}, which torch.load(weights_only=True) cannot read "
                        "back; store tensors, numbers, strings, None and lists/tuples/dicts of them")


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX).

    A no-op where directories cannot be opened or synced (Windows, some network
    file systems): the new file is complete either way, only its survival of a
    power cut right after the rename is not guaranteed there.
    """
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: str | os.PathLike) -> Path:
    """The fixed temporary file :func:`save_checkpoint` writes before renaming: ``.<name>.tmp`` beside ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def save_checkpoint(path: str | os.PathLike, **state: Any) -> Path:
    """Save a training state atomically: the file at ``path`` is always either the old or the new checkpoint.

    Every keyword becomes one entry: objects with a ``state_dict()`` (model,
    optimizer, scheduler, GradScaler...) are stored as their state dict, anything
    else (``step=``, a list of losses...) as is. The state of every global random
    generator (:func:`rng_state`) is added under ``"rng"``.

    The write is the classic atomic-replace recipe:

    1. ``torch.save`` into a temporary file *in the same directory* (a rename is
       only atomic within one file system),
    2. ``flush`` + ``os.fsync``: the bytes are on disk before the rename,
    3. ``os.replace(tmp, path)``: atomic on POSIX and Windows,
    4. ``fsync`` the directory, so the rename survives a power cut (POSIX).

    The temporary file has a fixed name (:func:`temp_path`), so even crashes that
    skip clean-up (``kill -9``) leave at most one stale file, overwritten by the
    next save; an exception during the write removes it. Use one writer per ``path``.

    Args:
        path: destination file, e.g. ``"run/last.pt"``; its directory must exist.
        **state: what to store, e.g. ``model=model, optimizer=opt, scheduler=sched, step=step``.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: no state given, or a reserved key (``"format"``, ``"rng"``).
        TypeError: a value that ``torch.load(weights_only=True)`` could not read back.
        FileNotFoundError: the directory of ``path`` does not exist.

    Checked in ``tests/test_checkpoint.py``: a resumed run equals the uninterrupted
    one step by step, and a failure injected into ``torch.save`` leaves the previous
    checkpoint loadable and no temporary file behind.
    """
    if not state:
        raise ValueError("save_checkpoint needs something to save, e.g. model=model, optimizer=optimizer, step=step")
    reserved = [k for k in state if k in _RESERVED]
    if reserved:
        raise ValueError(f"{reserved} are reserved checkpoint keys; choose other names")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"directory of checkpoint path {str(path)!r} does not exist")
    payload: dict[str, Any] = {"format": FORMAT}
    for name, value in state.items():
        payload[name] = value.state_dict() if hasattr(value, "state_dict") else value
        _check_safe(name, payload[name])
    payload["rng"] = rng_state()
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def load_checkpoint(path: str | os.PathLike, *, restore_rng: bool = True, map_location: Any = "cpu",
                    **objects: Any) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` and restore it into ``objects``.

    The file is read with ``torch.load(..., weights_only=True)``: only tensors,
    numbers, strings and containers of them are accepted, so loading a file
    cannot execute code. Tensors are mapped to ``map_location`` (the CPU by
    default); ``load_state_dict`` then copies them to wherever the model and the
    optimiser's parameters live.

    Args:
        path: the checkpoint file.
        restore_rng: also restore every global random generator (default ``True``:
            without it the resumed run draws different batches and dropout masks).
        map_location: passed to ``torch.load``.
        **objects: ``name=obj`` for each object to restore in place with
            ``obj.load_state_dict(checkpoint[name])``, e.g. ``model=model, optimizer=opt``.

    Returns:
        The whole checkpoint dict (e.g. ``ckpt["step"]``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: (a ``ValueError``) the file is truncated, corrupted, not a
            torch file, a torch file that is not a tricklib checkpoint, or lacks an
            entry named in ``objects``; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {str(path)!r}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError... depending on the damage
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(f"{str(path)!r} is not a readable checkpoint (truncated, corrupted or not written by "
                              f"torch.save): {type(err).__name__}: {reason}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{str(path)!r} is a torch file but not a tricklib checkpoint "
                              f"(no format={FORMAT!r} marker; found {found})")
    missing = [name for name in objects if name not in ckpt]
    if missing:
        have = [k for k in ckpt if k not in _RESERVED]
        raise CheckpointError(f"{str(path)!r} has no entry {missing}; it holds {have}")
    for name, obj in objects.items():
        obj.load_state_dict(ckpt[name])
    if restore_rng:
        set_rng_state(ckpt["rng"])
    return ckpt
