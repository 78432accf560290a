"""Every change CopyLoRA makes to the WebUI's own objects goes through this registry, so that each one can be
undone and a script unload (the WebUI's "Reload UI") undoes them all (`undo_all`, called from the entry script).

What is patched, and by whom (see docs/architecture.md, "Host patches"):
- `block_apply`: a per-instance `multiplier` on the built-in Lora's NetworkModules, a signature on each network,
  and a re-merge of its layers when those go away;
- `forge_blocks`: our scaled ModelPatchers installed in a Forge model's `forge_objects`;
- `model_state`: per-instance `forward` of the UNet's blocks and the loaded hypernetworks, during a training run;
- `host`: the clip-skip option, for one text encode;
- `xyz_axes`: our axes in the X/Y/Z plot's `axis_options`;
- `api`: our routes on the FastAPI app.

Two kinds of entries. `set_attribute` / `set_item` remember what was there before the first change (a value, or
nothing: an instance attribute that shadowed a class one is then removed again); `add` records an undo function
for changes that are not one attribute (a list of axes, routes, swapped patchers). Targets are held weakly where
Python allows, so a patched object the host drops (a network evicted from its cache) is not kept alive by us.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Optional

log = logging.getLogger("copylora")
_MISSING = object()


@dataclass
class Patch:
    key: Hashable
    owner: str  # who made it, for the console and the tests
    _target: Callable[[], Any]  # a weak (or, for dicts and lists, strong) reference to the patched object
    _undo: Callable[[Any], None]

    @property
    def target(self) -> Any:
        return self._target()

    def undo(self) -> None:
        target = self._target()
        if target is not None:  # gone with the host's object: nothing of it is left to restore
            self._undo(target)


_patches: dict[Hashable, Patch] = {}
_lock = threading.RLock()


def _reference(target: Any) -> Callable[[], Any]:
    try:
        return weakref.ref(target)
    except TypeError:  # dicts and lists cannot be weakly referenced; they are few and belong to long-lived objects
        return lambda: target


def _live(key: Hashable, target: Any) -> Optional[Patch]:
    """The entry under `key` if it is still about this very object (ids are reused after an object dies)."""
    patch = _patches.get(key)
    if patch is not None and patch.target is not target:
        del _patches[key]
        return None
    return patch


def add(key: Hashable, target: Any, undo: Callable[[Any], None], owner: str) -> bool:
    """Record `undo(target)` as the way back from a change just made; False (and nothing recorded) when `key`
    already has one, so that repeating a change keeps the first way back."""
    with _lock:
        if _live(key, target) is not None:
            return False
        _patches[key] = Patch(key, owner, _reference(target), undo)
        return True


def forget(key: Hashable) -> None:
    """Drop an entry whose change was taken back by its owner (without running its undo)."""
    with _lock:
        _patches.pop(key, None)


def undo(key: Hashable) -> bool:
    """Run one entry's undo and drop it; False when there was none."""
    with _lock:
        patch = _patches.pop(key, None)
    if patch is None:
        return False
    patch.undo()
    return True


def _attribute_key(target: Any, name: str) -> tuple:
    return ("attribute", id(target), name)


def _put_back_attribute(name: str, old: Any) -> Callable[[Any], None]:
    def put_back(target: Any) -> None:
        if old is _MISSING:
            vars(target).pop(name, None)
        else:
            setattr(target, name, old)
    return put_back


def set_attribute(target: Any, name: str, value: Any, owner: str) -> None:
    """`setattr(target, name, value)`, remembering the instance's own value from before our first change."""
    with _lock:
        if _live(_attribute_key(target, name), target) is None:
            old = vars(target).get(name, _MISSING)
            add(_attribute_key(target, name), target, _put_back_attribute(name, old), owner)
        setattr(target, name, value)


def restore_attribute(target: Any, name: str) -> bool:
    """Put back what `set_attribute` replaced; False when we had not changed it."""
    with _lock:
        if _live(_attribute_key(target, name), target) is None:
            return False
    return undo(_attribute_key(target, name))


def _put_back_item(item: Hashable, old: Any) -> Callable[[Any], None]:
    def put_back(mapping: Any) -> None:
        if old is _MISSING:
            mapping.pop(item, None)
        else:
            mapping[item] = old
    return put_back


def set_item(mapping: dict, item: Hashable, value: Any, owner: str) -> None:
    """`mapping[item] = value` (a host's settings dict), remembering the value from before our first change."""
    key = ("item", id(mapping), item)
    with _lock:
        if _live(key, mapping) is None:
            add(key, mapping, _put_back_item(item, mapping.get(item, _MISSING)), owner)
        mapping[item] = value


def restore_item(mapping: dict, item: Hashable) -> bool:
    return undo(("item", id(mapping), item))


def active() -> list[Patch]:
    """The changes in place now, oldest first (dead targets included until undone)."""
    with _lock:
        return list(_patches.values())


def undo_all() -> list[str]:
    """Undo everything, newest first; returns the owners of what was undone (for the console line)."""
    undone = []
    while True:
        with _lock:
            if not _patches:
                return undone
            key = next(reversed(_patches))
            patch = _patches.pop(key)
        try:
            patch.undo()
        except Exception as exc:  # one failing undo must not leave the others in place; say which one failed
            log.warning("CopyLoRA: could not undo %s (%s: %s)", patch.owner, type(exc).__name__, exc)
        undone.append(patch.owner)
