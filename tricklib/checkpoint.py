"""Reproducible runs and checkpoints that survive a crash (the recipe chapters of the book).

A resumed run continues the *identical* loss curve only if the checkpoint holds
everything the next step depends on: the weights, the optimiser's state
(momentum, Adam's moments), the scheduler's position, the step counter and the
state of every random-number generator (batch order, dropout masks,
augmentations). :func:`save_checkpoint` stores all of it and writes the file
atomically, so a crash in the middle of a save leaves the previous checkpoint
intact; :func:`load_checkpoint` reads it back with ``torch.load(weights_only=True)``
(no arbitrary code runs when a file is loaded) and restores it.

Three promises, each checked in ``tests/test_checkpoint.py``: what
:func:`save_checkpoint` writes, :func:`load_checkpoint` reads back (values that
``weights_only`` loading would refuse are converted to plain types, or refused
before the old file is touched); a file damaged on disk or in transfer raises
:class:`CheckpointError` (every file carries a SHA-256 checksum of its
contents); and a load that fails leaves the objects passed in unchanged.
"""
from __future__ import annotations

import copy
import hashlib
import os
import random
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Marker stored in every checkpoint, so a foreign file is recognised as such.
FORMAT = "tricklib-checkpoint-v2"
# v1 files (tricklib 0.1 before the checksum) hold no checksum: refused with a way out
_OLD_FORMATS = ("tricklib-checkpoint-v1",)
_RESERVED = ("format", "rng", "sha256")
# exact types that torch.load(weights_only=True) reads back as they were saved
_PLAIN_SCALARS = (bool, int, float, complex, str, bytes, bytearray, type(None), torch.dtype, torch.device)


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
    """Restore the generators saved by :func:`rng_state`, all or none.

    CUDA/MPS states are restored when that device is present here; a checkpoint
    written on a GPU machine and resumed on a CPU-only one restores the CPU
    generators only (GPU random streams cannot be continued without the GPU).
    Generator states are CPU tensors whatever the device they were mapped to (a
    checkpoint loaded with ``map_location="cuda"``): they are moved back first. If
    one generator refuses its state, those already set are put back before the
    error is raised, so a failed call changes nothing.

    Args:
        state: what :func:`rng_state` returned, e.g. a loaded checkpoint's ``"rng"`` entry.

    Raises:
        ValueError: ``state`` lacks the ``"python"``, ``"numpy"`` or ``"torch"`` entry,
            or one of them is not a state of that generator.
    """
    missing = [k for k in ("python", "numpy", "torch") if k not in state]
    if missing:
        raise ValueError(f"state is not an rng_state(): missing {missing}")
    before = rng_state()
    try:
        _apply_rng_state(state)
    except Exception as err:  # random, NumPy and torch refuse bad states with different errors
        _apply_rng_state(before)
        raise ValueError(f"state is not an rng_state(): {type(err).__name__}: {err}") from err


def _apply_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["key"].cpu().numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"].cpu())


def _plain(where: str, value: Any) -> Any:
    """``value`` in types that ``torch.load(weights_only=True)`` reads back, or TypeError naming ``where``.

    NumPy scalars become Python numbers (``np.float64(0.5)`` → ``0.5``), subclasses
    of built-in types become the built-in type (``IntEnum`` → ``int``, ``np.str_`` →
    ``str``, ``defaultdict`` → ``dict``, a namedtuple → ``tuple``, ``frozenset`` →
    ``set``): the unpickler behind ``weights_only`` refuses them all. Containers are
    copied only where something inside changed, so a ``state_dict`` keeps its
    ``OrderedDict`` and its ``_metadata`` (module versions that ``load_state_dict`` reads).
    """
    kind = type(value)
    if kind in _PLAIN_SCALARS or kind is torch.Size:
        return value
    if isinstance(value, torch.Tensor):
        if value.is_quantized or value.layout != torch.strided or value.is_meta:
            raise TypeError(f"{where} is a {value.layout} {'quantized ' if value.is_quantized else ''}tensor on "
                            f"{value.device}; save_checkpoint stores dense tensors that hold their data")
        return value if kind in (torch.Tensor, torch.nn.Parameter) else value.as_subclass(torch.Tensor)
    if isinstance(value, np.generic):
        return _plain(where, value.item())
    for base in (int, float, complex, str, bytes):  # (bool cannot be subclassed)
        if isinstance(value, base):
            return base.__str__(value) if base is str else base(value)
    if isinstance(value, Mapping):
        items = [(_plain(f"{where} key {k!r}", k), _plain(f"{where}[{k!r}]", v)) for k, v in value.items()]
        if kind in (dict, OrderedDict) and all(a is k and b is v for (a, b), (k, v) in zip(items, value.items())):
            return value
        out = OrderedDict(items) if kind is OrderedDict else dict(items)
        if kind is OrderedDict:
            out.__dict__.update(value.__dict__)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain(f"{where}[{i}]", v) for i, v in enumerate(value)]
        base = set if isinstance(value, (set, frozenset)) else list if isinstance(value, list) else tuple
        if kind is base and all(a is b for a, b in zip(items, value)):
            return value
        return base(items)
    if isinstance(value, np.ndarray):
        raise TypeError(f"{where} is a numpy.ndarray, which torch.load(weights_only=True) cannot read back; "
                        "store torch.from_numpy(array) (or array.tolist())")
    raise TypeError(f"{where} is a {type(value).__name__}, which torch.load(weights_only=True) cannot read "
                    "back; store tensors, numbers, strings, None and lists/tuples/dicts of them")


def _feed(digest: Any, value: Any) -> None:
    """Add ``value`` to a running hash, in an encoding that a round trip through torch.save/load keeps."""
    if isinstance(value, torch.Tensor):
        # values in C order (layout, storage sharing and device do not matter), dtype and shape
        tensor = value.detach().resolve_conj().resolve_neg()
        if tensor.is_meta:
            raise ValueError("tensors mapped to the meta device hold no data, so the checkpoint's checksum "
                             "cannot be verified: load with map_location='cpu' (or a real device)")
        digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)};".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(value, Mapping):
        digest.update(f"{{{len(value)};".encode())
        for k, v in value.items():
            _feed(digest, k)
            _feed(digest, v)
        attributes = getattr(value, "__dict__", None)  # an OrderedDict state_dict's _metadata
        if attributes:
            digest.update(b"attributes;")
            _feed(digest, attributes)
    elif isinstance(value, (set, frozenset)):
        # a set's order changes from one process to the next (string hashing is salted)
        parts = []
        for v in value:
            part = hashlib.sha256()
            _feed(part, v)
            parts.append(part.digest())
        digest.update(f"set {len(value)};".encode() + b"".join(sorted(parts)))
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__} {len(value)};".encode())
        for v in value:
            _feed(digest, v)
    else:
        digest.update(f"{type(value).__name__} {value!r};".encode())


def _checksum(payload: Mapping[str, Any]) -> str:
    """SHA-256 of a checkpoint's contents (everything but the ``"sha256"`` entry), as hex."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in payload.items() if k != "sha256"})
    return digest.hexdigest()


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
    """The fixed temporary file :func:`save_checkpoint` writes before renaming: ``.<name>.tmp`` beside ``path``.

    Args:
        path: the checkpoint's file path (the file need not exist).
    """
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def save_checkpoint(path: str | os.PathLike, **state: Any) -> Path:
    """Save a training state atomically: the file at ``path`` is always either the old or the new checkpoint.

    Every keyword becomes one entry: objects with a ``state_dict()`` (model,
    optimizer, scheduler, GradScaler...) are stored as their state dict, anything
    else (``step=``, a list of losses...) as is. The state of every global random
    generator (:func:`rng_state`) is added under ``"rng"``, and a SHA-256 checksum
    of all of it under ``"sha256"`` (:func:`load_checkpoint` verifies it).

    Values that ``torch.load(weights_only=True)`` would refuse are stored as plain
    types: NumPy scalars as Python numbers (``best_acc=np.mean(accs)``), subclasses of
    built-in types as the built-in type (``IntEnum`` → ``int``, ``np.str_`` →
    ``str``, ``defaultdict`` such as ``History.step`` → ``dict``, a namedtuple →
    ``tuple``, ``frozenset`` → ``set``), tensor subclasses as tensors. Anything else
    (arrays, arbitrary objects) raises ``TypeError`` before any file is touched.

    The write is the classic atomic-replace recipe:

    1. ``torch.save`` into a temporary file *in the same directory* (a rename is
       only atomic within one file system),
    2. ``flush`` + ``os.fsync``: the bytes are on disk before the rename,
    3. the temporary file is read back as :func:`load_checkpoint` reads it (checksum
       included): a file that would not load never replaces the old one,
    4. ``os.replace(tmp, path)``: atomic on POSIX and Windows,
    5. ``fsync`` the directory, so the rename survives a power cut (POSIX).

    The temporary file has a fixed name (:func:`temp_path`), so even crashes that
    skip clean-up (``kill -9``) leave at most one stale file, overwritten by the
    next save; an exception during the write removes it. Use one writer per ``path``.

    Args:
        path: destination file, e.g. ``"run/last.pt"``; its directory must exist.
        **state: what to store, e.g. ``model=model, optimizer=opt, scheduler=sched, step=step``.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: no state given, or a reserved key (``"format"``, ``"rng"``, ``"sha256"``).
        TypeError: a value that ``torch.load(weights_only=True)`` could not read back
            and that has no plain equivalent; the message names it.
        FileNotFoundError: the directory of ``path`` does not exist.

    Checked in ``tests/test_checkpoint.py``: a resumed run equals the uninterrupted
    one step by step, a failure injected into ``torch.save`` leaves the previous
    checkpoint loadable and no temporary file behind, and NumPy/enum/defaultdict
    values come back as plain values.
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
        payload[name] = _plain(name, value.state_dict() if hasattr(value, "state_dict") else value)
    payload["rng"] = rng_state()
    payload["sha256"] = _checksum(payload)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        _read(tmp, "cpu")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def _read(path: Path, map_location: Any) -> dict[str, Any]:
    """The checkpoint at ``path``, checked: a torch file, a tricklib checkpoint, its checksum right."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError... depending on the damage
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(f"{str(path)!r} is not a readable checkpoint (truncated, corrupted or not written by "
                              f"torch.save): {type(err).__name__}: {reason}") from None
    if isinstance(ckpt, dict) and ckpt.get("format") in _OLD_FORMATS:
        raise CheckpointError(f"{str(path)!r} was written by an older tricklib (format {ckpt['format']!r}, without "
                              "a checksum); read it with torch.load(path, weights_only=True) and save it again")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{str(path)!r} is a torch file but not a tricklib checkpoint "
                              f"(no format={FORMAT!r} marker; found {found})")
    if ckpt.get("sha256") != _checksum(ckpt):
        raise CheckpointError(f"{str(path)!r} is corrupted: its contents do not match the SHA-256 checksum stored "
                              "when it was saved (damaged on disk or in transfer)")
    return ckpt


def load_checkpoint(path: str | os.PathLike, *, restore_rng: bool = True, map_location: Any = "cpu",
                    **objects: Any) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` and restore it into ``objects``.

    The file is read with ``torch.load(..., weights_only=True)``: only tensors,
    numbers, strings and containers of them are accepted, so loading a file
    cannot execute code. Its SHA-256 checksum is verified, so a flipped bit
    anywhere in the data raises instead of loading wrong weights. Tensors are
    mapped to ``map_location`` (the CPU by default); ``load_state_dict`` then
    copies them to wherever the model and the optimiser's parameters live. The
    random generators' states stay on the CPU whatever ``map_location`` says.

    All or nothing: the file is checked (readable, checksum, every entry named in
    ``objects``, ``"rng"`` if ``restore_rng``) before anything is restored, and if an
    object's ``load_state_dict`` or the generators refuse their state (a model of
    another shape), every object restored so far is put back as it was (from a copy
    of its ``state_dict()`` taken first) and the error is raised.

    Args:
        path: the checkpoint file.
        restore_rng: also restore every global random generator (default ``True``:
            without it the resumed run draws different batches and dropout masks).
        map_location: passed to ``torch.load`` (not ``"meta"``: the checksum needs the data).
        **objects: ``name=obj`` for each object to restore in place with
            ``obj.load_state_dict(checkpoint[name])``, e.g. ``model=model, optimizer=opt``.

    Returns:
        The whole checkpoint dict (e.g. ``ckpt["step"]``), the generators' states on the CPU.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        TypeError: an object in ``objects`` has no ``load_state_dict``.
        CheckpointError: (a ``ValueError``) the file is truncated, corrupted (checksum),
            not a torch file, a torch file that is not a tricklib checkpoint, or lacks an
            entry named in ``objects`` (or ``"rng"``); the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {str(path)!r}")
    for name, obj in objects.items():
        if not callable(getattr(obj, "load_state_dict", None)):
            raise TypeError(f"{name} must have a load_state_dict method (a model, optimizer, scheduler...), "
                            f"got {type(obj).__name__}")
    ckpt = _read(path, map_location)
    needed = [*objects, "rng"] if restore_rng else list(objects)
    missing = [name for name in needed if name not in ckpt]
    if missing:
        have = [k for k in ckpt if k not in _RESERVED]
        hint = " (pass restore_rng=False to load it without the generators)" if "rng" in missing else ""
        raise CheckpointError(f"{str(path)!r} has no entry {missing}; it holds {have}{hint}")
    if "rng" in ckpt:
        ckpt["rng"] = _to_cpu(ckpt["rng"])
    saved = {name: copy.deepcopy(obj.state_dict()) for name, obj in objects.items()}
    restored = []
    try:
        for name, obj in objects.items():
            restored.append(name)
            obj.load_state_dict(ckpt[name])
        if restore_rng:
            set_rng_state(ckpt["rng"])  # all or nothing by itself
    except BaseException:
        for name in restored:
            objects[name].load_state_dict(saved[name])
        raise
    return ckpt


def _to_cpu(value: Any) -> Any:
    """``value`` with every tensor inside moved to the CPU (containers rebuilt)."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, Mapping):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value
