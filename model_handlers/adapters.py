"""LoRA adapters on one served model, chosen per input row: one forward pass serves rows of many adapters.

The adapters are peft's LoRA layers, put into the model's own transformers modules (transformers'
`PeftAdapterMixin`: `add_adapter`, `load_adapter`, `delete_adapter`); a pass names each row's adapter and peft's
LoRA layers apply each one to its own rows (their mixed-batch forward; `BASE` for a row without one). Three
sources fill the set:
- built in: a checkpoint's own task adapters (jina-embeddings-v3's, converted by model_handlers/jina_v3.py) and the
  adapters `searchbox.json` names (PEFT directories inside the artifact); always held, never evicted;
- registered at run time (SageMaker's adapter API, POST /adapters): a PEFT directory or .tar.gz archive; held in
  memory up to a cap, past which the least recently used one that is neither pinned nor in use is unloaded (it stays
  registered and is loaded again, from where it was registered, when a request names it).

Two locks: the set's (its bookkeeping, held for moments) and the model's (a pass, or a change of the model's layers).
An adapter is added or removed between passes, never during one, and one that fails to load leaves nothing behind;
a request that only reads the set (which adapters there are, which it holds) never waits for a pass to end (it
would queue its texts only once the running pass ended, and the next pass would start without them).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import tarfile
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from model_handlers.errors import AdapterConflict, AdapterError, InvalidOption, ModelDirectoryError, Overloaded

logger = logging.getLogger(__name__)

# peft's name, in a mixed batch, for a row that takes no adapter
BASE = "__base__"
# What a SageMaker adapter artifact may be besides a directory.
_ARCHIVES = (".tar.gz", ".tgz", ".tar")
_CONFIG = "adapter_config.json"
_WEIGHTS = "adapter_model.safetensors"
_PICKLED_WEIGHTS = "adapter_model.bin"
# SageMaker's inference component names; also what torch accepts as a module key (no dots)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


@dataclass
class _Entry:
    """One adapter the set knows: where it comes from, whether it is held in memory, and who uses it."""

    name: str
    source: str
    pinned: bool
    builtin: bool
    loaded: bool = False
    in_use: int = 0
    last_used: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class AdapterInfo:
    """What GET /adapters and /v1/models say of one adapter."""

    name: str
    source: str
    pinned: bool
    builtin: bool
    loaded: bool


class RowAdapters:
    """The adapters of one transformers model (`torch.nn.Module` with transformers' peft integration).

    Args:
        model: the module that holds the adapted layers (its LoRA layers are found by type).
        max_loaded: run-time adapters held in memory at once (built-in ones are not counted).
        allow_pickle: accept an adapter whose weights are pickled (adapter_model.bin).
    """

    def __init__(self, model, *, max_loaded: int = 8, allow_pickle: bool = False, patches: str | None = None):
        self._model = model
        self._max_loaded = max_loaded
        self._allow_pickle = allow_pickle
        # layers under this module read image patches, not rows (a vision tower's flat patch sequence): they get one
        # adapter name per patch (`rows(..., patches=)`)
        self._patch_prefix = patches
        self._patch_layers: set[int] = set()
        self._patches: list[str] | None = None
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.RLock()  # the set: self._entries and each entry's fields
        self._model_lock = _ModelLock()  # the model's layers: passes of the plain model share them
        self._rows: list[str] | None = None  # what the LoRA layers read during a pass
        self._hooked: set[int] = set()
        self._layers: list[Any] = []  # the model's LoRA layers
        # what the layers apply when no pass names rows: an adapter, BASE (disabled), or None (not known: peft
        # changes its active adapter as adapters come and go)
        self._selected: str | None = None
        self._unpacked: dict[str, Path] = {}

    # --- the set ------------------------------------------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._entries)

    def describe(self) -> list[AdapterInfo]:
        with self._lock:
            return [AdapterInfo(e.name, e.source, e.pinned, e.builtin, e.loaded) for e in self._entries.values()]

    def add_builtin(self, name: str, source: str, install: Callable[[Any], None]) -> None:
        """An adapter of the artifact itself: `install(model)` puts its weights in (under `name`), now."""
        with self._lock:
            self._check_new(name)
            try:
                with _quiet(), self._model_lock.alone():
                    install(self._model)
            except Exception:
                self._discard(name)
                raise
            self._entries[name] = _Entry(name, source, pinned=True, builtin=True, loaded=True)
            self._hook_new_layers()

    def add_directory(self, name: str, directory: Path, *, builtin: bool) -> None:
        """A PEFT LoRA directory (adapter_config.json + adapter_model.safetensors) the artifact ships: loaded now."""
        with self._lock:
            self._check_new(name)
            self._load(name, str(directory))
            self._entries[name] = _Entry(name, str(directory), pinned=True, builtin=builtin, loaded=True)

    def register(self, name: str, source: str, *, preload: bool = True, pin: bool = False) -> None:
        """SageMaker's register-adapter call: a PEFT directory or archive at `source`, loaded now unless `preload`
        is false (then at the first request that names it).

        Raises:
            AdapterError: the name is taken, or the adapter cannot be read or loaded (nothing of it is kept).
            Overloaded: every adapter held in memory is in use right now (retrying later can succeed).
        """
        with self._lock:
            self._check_new(name)
            if not preload:
                self._readable(name, source)
                self._entries[name] = _Entry(name, source, pinned=pin, builtin=False)
                return
            self._make_room(name)
            self._load(name, source)
            self._entries[name] = _Entry(name, source, pinned=pin, builtin=False, loaded=True)

    def unregister(self, name: str) -> None:
        """SageMaker's unregister-adapter call.

        Raises:
            KeyError: no such adapter.
            AdapterError: it is built into the artifact (a task adapter), which cannot be removed.
        """
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                raise KeyError(name)
            if entry.builtin:
                raise AdapterConflict(f"adapter {name!r} is part of the model artifact and cannot be unregistered",
                                      code="ADAPTER_BUILT_IN")
            if entry.loaded:
                self._discard(name)
            del self._entries[name]
            self._forget_unpacked(name)

    @contextmanager
    def using(self, names: Sequence[str | None]) -> Iterator[None]:
        """Hold the adapters `names` asks for (loading any that was registered lazily or unloaded) for the length of
        a request, so that none of them is unloaded before the request's passes ran.

        Raises:
            InvalidOption: a name no adapter has, naming those there are.
            AdapterError, Overloaded: as `register`, when a registered adapter must be loaded first.
        """
        wanted = sorted({name for name in names if name is not None})
        with self._lock:
            for name in wanted:
                if name not in self._entries:
                    known = ", ".join(self._entries) or "none"
                    raise InvalidOption(f"no adapter {name!r} is loaded on this endpoint; adapters: {known}",
                                        code="UNKNOWN_ADAPTER")
            for name in wanted:
                entry = self._entries[name]
                if not entry.loaded:
                    self._make_room(name)
                    self._load(name, entry.source)
                    entry.loaded = True
                entry.in_use += 1
                entry.last_used = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                for name in wanted:
                    if name in self._entries:
                        self._entries[name].in_use -= 1

    # --- a forward pass -----------------------------------------------------------------------------------------

    @contextmanager
    def rows(self, names: Sequence[str | None], patches: Sequence[str | None] = ()) -> Iterator[None]:
        """Run the enclosed pass with one adapter per input row (None: the base model for that row), and, for the
        layers that read image patches, one per patch (`patches`: each image's row's adapter, once per patch)."""
        with self._model_lock.shared():
            plain = not self._entries
            if plain:
                yield  # nothing to apply: the plain model, which passes on other threads may run at once
        if plain:
            return
        with self._model_lock.alone():
            if not self._entries:
                yield
                return
            rows = [BASE if name is None else name for name in names]
            every = set(rows).union(BASE if name is None else name for name in patches)
            if len(every) == 1:
                # one adapter (or none) for the whole pass: peft's plain forward, not its mixed-batch one, which
                # sorts rows (and a vision tower's every patch) into adapters in Python at every layer
                self._select(every.pop())
                yield
                return
            self._select(None)
            self._rows = rows
            self._patches = [BASE if name is None else name for name in patches]
            try:
                yield
            finally:
                self._rows = self._patches = None

    def _select(self, name: str | None) -> None:
        """Make the LoRA layers apply `name` to every row (BASE: none), or (None) take each row's from the pass."""
        if name == self._selected and name is not None:
            return
        for layer in self._layers:
            layer.enable_adapters(name != BASE)  # a mixed batch needs them enabled: peft checks that first
            if name not in (None, BASE):
                layer.set_adapter(name, inference_mode=True)
        self._selected = name

    def _inject(self, module, args, kwargs):
        if self._rows is None:
            return None
        kwargs["adapter_names"] = self._patches if id(module) in self._patch_layers else self._rows
        return args, kwargs

    def _hook_new_layers(self) -> None:
        from peft.tuners.lora import LoraLayer

        self._selected = None  # an adapter was added: peft made it the active one

        for name, module in self._model.named_modules():
            if isinstance(module, LoraLayer) and id(module) not in self._hooked:
                module.register_forward_pre_hook(self._inject, with_kwargs=True)
                self._hooked.add(id(module))
                self._layers.append(module)
                if self._patch_prefix is not None and name.startswith(self._patch_prefix):
                    self._patch_layers.add(id(module))

    # --- loading ------------------------------------------------------------------------------------------------

    def _check_new(self, name: str) -> None:
        if not _NAME.fullmatch(name or ""):
            raise InvalidOption(f"{name!r} is not a usable adapter name: letters, digits, '-' and '_', at most 63, "
                                "starting with a letter or digit", code="INVALID_ADAPTER_NAME")
        if name in self._entries:
            raise AdapterConflict(f"adapter {name!r} is already registered; unregister it first to replace it",
                                  code="ADAPTER_EXISTS")

    def _make_room(self, name: str) -> None:
        """Unload least recently used run-time adapters until one more fits under the cap."""
        while sum(1 for e in self._entries.values() if e.loaded and not e.builtin) >= self._max_loaded:
            idle = [e for e in self._entries.values() if e.loaded and not e.builtin and not e.pinned and not e.in_use]
            if not idle:
                pinned = [e.name for e in self._entries.values() if e.loaded and not e.builtin and e.pinned]
                if len(pinned) >= self._max_loaded:
                    raise AdapterError(
                        f"cannot hold adapter {name!r}: the {self._max_loaded} adapters this endpoint holds in memory "
                        f"are all pinned ({', '.join(pinned)}); unregister one, or raise SEARCHBOX_MAX_ADAPTERS",
                        code="ADAPTER_CAPACITY")
                raise Overloaded(f"every adapter held in memory is in use; retry adapter {name!r} shortly",
                                 code="ADAPTERS_BUSY")
            victim = min(idle, key=lambda e: e.last_used)
            self._discard(victim.name)
            victim.loaded = False
            logger.info("adapter %s unloaded to make room for %s (cap %d)", victim.name, name, self._max_loaded)

    def _load(self, name: str, source: str) -> None:
        directory = self._readable(name, source)
        with self._model_lock.alone():
            self._load_layers(name, source, directory)

    def _load_layers(self, name: str, source: str, directory: Path) -> None:
        try:
            # offline all the same: the server forces HF_HUB_OFFLINE (model_handlers/loading.py); transformers'
            # own local_files_only argument breaks load_adapter in the lock's release
            with _quiet():
                self._model.load_adapter(str(directory), adapter_name=name,
                                         use_safetensors=None if self._allow_pickle else True)
            self._check_applied(name)
        except AdapterError:
            self._discard(name)
            raise
        except Exception as exc:  # peft and transformers raise many kinds; none may leave half an adapter behind
            self._discard(name)
            raise AdapterError(f"adapter {name!r} from {source} does not load on this model: "
                               f"{type(exc).__name__}: {exc}"[:500], code="ADAPTER_LOAD_FAILED") from None
        self._hook_new_layers()
        logger.info("adapter %s loaded from %s", name, source)

    def _check_applied(self, name: str) -> None:
        """An adapter whose target modules this model does not have adds no layer: refuse it rather than serve the
        base model under its name."""
        from peft.tuners.lora import LoraLayer

        if not any(isinstance(m, LoraLayer) and (name in m.lora_A or name in m.lora_embedding_A)
                   for m in self._model.modules()):
            raise AdapterError(f"adapter {name!r} targets no module of this model (wrong base model?)",
                               code="ADAPTER_LOAD_FAILED")

    def _readable(self, name: str, source: str) -> Path:
        """The PEFT directory at `source` (an archive is unpacked once, privately), checked before any weight loads.

        Raises:
            AdapterError: not there, not a LoRA adapter, or pickled weights while those are refused.
        """
        path = Path(source)
        if "://" in source:
            raise AdapterError(f"adapter {name!r}: src must be a path on this instance (SageMaker downloads the "
                               f"adapter artifact before registering it), not {source!r}", code="ADAPTER_NOT_FOUND")
        if path.is_file() and path.name.endswith(_ARCHIVES):
            path = self._unpack(name, path)
        if not path.is_dir():
            raise AdapterError(f"adapter {name!r}: {source} is neither a directory nor a .tar.gz of one",
                               code="ADAPTER_NOT_FOUND")
        config_path = _find(path, _CONFIG)
        if config_path is None:
            raise AdapterError(f"adapter {name!r}: {source} holds no {_CONFIG}", code="ADAPTER_INVALID")
        path = config_path.parent
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise AdapterError(f"adapter {name!r}: {config_path} is not valid JSON: {exc}", code="ADAPTER_INVALID")
        if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
            raise AdapterError(f"adapter {name!r}: searchbox serves LoRA adapters; {config_path} says peft_type "
                               f"{config.get('peft_type') if isinstance(config, dict) else None!r}",
                               code="ADAPTER_INVALID")
        if not (path / _WEIGHTS).is_file():
            if (path / _PICKLED_WEIGHTS).is_file() and not self._allow_pickle:
                raise AdapterError(f"adapter {name!r}: only pickled weights ({_PICKLED_WEIGHTS}); unpickling runs "
                                   "code: save it as safetensors, or set SEARCHBOX_ALLOW_PICKLE=1 if you trust it",
                                   code="ADAPTER_INVALID")
            if not (path / _PICKLED_WEIGHTS).is_file():
                raise AdapterError(f"adapter {name!r}: {path} holds no {_WEIGHTS}", code="ADAPTER_INVALID")
        return path

    def _unpack(self, name: str, archive: Path) -> Path:
        if name in self._unpacked:
            return self._unpacked[name]
        target = Path(tempfile.mkdtemp(prefix=f"searchbox-adapter-{name}-"))
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(target, filter="data")  # no absolute paths, links out or devices
        except (OSError, tarfile.TarError) as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise AdapterError(f"adapter {name!r}: cannot unpack {archive}: {exc}", code="ADAPTER_INVALID") from None
        self._unpacked[name] = target
        return target

    def _forget_unpacked(self, name: str) -> None:
        unpacked = self._unpacked.pop(name, None)
        if unpacked is not None:
            shutil.rmtree(unpacked, ignore_errors=True)

    def _discard(self, name: str) -> None:
        """Remove whatever layers or config `name` put into the model (if any)."""
        with self._model_lock.alone():
            if name in (getattr(self._model, "peft_config", None) or {}):
                self._model.delete_adapter(name)
                self._selected = None

    def close(self) -> None:
        with self._lock:
            for name in list(self._unpacked):
                self._forget_unpacked(name)


def held(adapters: RowAdapters | None, items: Sequence[Any], requested: str | None) -> tuple[str, ...]:
    """The adapters a request holds while it runs: the one it names (refused when the request is run if there is no
    such adapter), and those its work items' tasks select that `adapters` applies (a directory's own code applies
    the others itself)."""
    managed = set(adapters.names) if adapters is not None else set()
    names = {item.adapter for item in items if getattr(item, "adapter", None) in managed}
    if requested is not None:
        names.add(requested)
    return tuple(sorted(names))


def rows(adapters: RowAdapters | None, names: Sequence[str | None], patches: Sequence[str | None] = ()):
    """`adapters.rows(names, patches)`, or nothing to do for a model that holds no adapters."""
    return adapters.rows(names, patches) if adapters is not None else contextlib.nullcontext()


def attach(model, options, declared: Mapping[str, Path], where: Path) -> RowAdapters | None:
    """The adapter set of a transformers model (its peft integration), holding the adapters searchbox.json
    declares; None for a model that cannot hold adapters (a model of the directory's own code without peft support).

    Raises:
        ModelDirectoryError: adapters are declared for a model that cannot hold them.
    """
    if not hasattr(model, "load_adapter"):
        if declared:
            raise ModelDirectoryError(f"{where}: searchbox.json names adapters, but the model is not a transformers "
                                      "model that can hold them")
        return None
    adapters = RowAdapters(model, max_loaded=options.max_adapters, allow_pickle=options.allow_pickle)
    for name, directory in declared.items():
        adapters.add_directory(name, directory, builtin=True)
    return adapters


class _ModelLock:
    """Passes of the plain model share it (the batcher's lanes run them at once); a pass that applies adapters, or an
    adapter put in or taken out, has it alone, and the same thread may take it again inside. A thread waiting to have
    it alone keeps new passes out, so that adapters are registered under constant load too."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._sharing = 0
        self._owner: int | None = None
        self._depth = 0
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            me = threading.get_ident()
            while self._owner != me and (self._owner is not None or self._waiting):
                self._cond.wait()
            self._sharing += 1
        try:
            yield
        finally:
            with self._cond:
                self._sharing -= 1
                self._cond.notify_all()

    @contextmanager
    def alone(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._owner != me:
                self._waiting += 1
                try:
                    while self._owner is not None or self._sharing:
                        self._cond.wait()
                finally:
                    self._waiting -= 1
                self._owner = me
            self._depth += 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if not self._depth:
                    self._owner = None
                    self._cond.notify_all()


@contextmanager
def _quiet() -> Iterator[None]:
    """peft warns at every adapter after the first that a model holding several "needs care": holding several is
    the point here, so that line would only hide real warnings in the log."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        yield


def _find(root: Path, filename: str) -> Path | None:
    """`root/filename`, or the one such file one level down (an archive that wraps the adapter in a folder)."""
    if (root / filename).is_file():
        return root / filename
    found = [child / filename for child in root.iterdir() if child.is_dir() and (child / filename).is_file()]
    return found[0] if len(found) == 1 else None


def declared_adapters(model_dir: Path, value: Any, config_file: str) -> Mapping[str, Path]:
    """`searchbox.json`'s `adapters`: {name: path inside the model directory} of PEFT LoRA directories.

    Raises:
        ValueError: not such a mapping, or a path outside the directory or missing; the message names it.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{config_file}: adapters must be an object {{name: directory inside the model directory}}")
    adapters = {}
    for name, relative in value.items():
        if not isinstance(relative, str) or not relative or relative.startswith("/") or ".." in Path(relative).parts:
            raise ValueError(f"{config_file}: adapter {name!r} must name a directory inside the model directory, "
                             f"not {relative!r}")
        path = model_dir / relative
        if not (path / _CONFIG).is_file():
            raise ValueError(f"{config_file}: adapter {name!r}: {relative} holds no {_CONFIG}")
        adapters[str(name)] = path
    return adapters
