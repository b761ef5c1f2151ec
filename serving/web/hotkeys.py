"""The review page's keys, which a city may re-map (settings `review_hotkeys`: action -> key).

Keys are what the browser reports as `KeyboardEvent.key` for a single press: one character
(letters are case-insensitive) or a named key such as `Enter`, `ArrowLeft`. Digits stay the
menus' choices and are not re-mappable; two actions on one key are refused at start, except
that an action added by a newer release (one with fallback keys) gives way to the city's own
key (`resolve_hotkeys`), so it cannot break a config that already used its default."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_HOTKEYS: dict[str, str] = {
    "confirm": "y",
    "reject": "n",
    "correct": "c",
    "next": "j",
    "previous": "k",
    "box": "b",
    "note": "m",
    "undo": "z",
    "help": "?",
    "labelling": "l",
    "zoom_in": "+",
    "zoom_out": "-",
    "fit": "f",
    "reset_zoom": "0",
    "frame_previous": "ArrowLeft",
    "frame_next": "ArrowRight",
    "duplicates": "d",
    # A truck load case: what the load really was (a menu of the load labels, keys 1-5), sent
    # with the next confirm or reject.
    "load": "t",
}
NAMED_KEYS = ("Enter", "Escape", "Tab", "Backspace", "Delete", "Home", "End", "PageUp", "PageDown",
              "ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "Insert") + tuple(f"F{i}" for i in range(1, 13))
# Keys the page keeps for itself: menu choices, box work and closing.
RESERVED = set("123456789") | {"Escape", "Tab", "a", "x", "[", "]"}


# Actions added after cities wrote their review_hotkeys: where the default moves when the city
# took its key for something else (the first free one), else the action is left without a key
# and resolve_hotkeys says so. The older actions have none: a city key on one of their
# defaults is refused at start, as it always was.
FALLBACK_HOTKEYS: dict[str, tuple[str, ...]] = {
    "load": ("g", "w"),
}


def norm_key(key: str) -> str:
    """A key as the maps compare it: letters in lower case, named keys as they are."""
    return key.lower() if len(key) == 1 else key


@dataclass(frozen=True)
class ResolvedHotkeys:
    """The page's keys: action -> key, None for an action left without one; `warnings` (one
    line each) for those, to be logged at start."""

    keys: dict[str, str | None]
    warnings: list[str] = field(default_factory=list)


def resolve_hotkeys(value: dict[str, str]) -> ResolvedHotkeys:
    """The city's keys (`value`, checked) over the defaults. A newer action's default whose key
    the city gave to another action moves to its first free fallback key, or is left without a
    key; any other two actions on one key are refused (ValueError)."""
    taken: dict[str, str] = {}
    for action, key in value.items():
        if norm_key(key) in taken:
            raise ValueError(f"review_hotkeys: {action} and {taken[norm_key(key)]} are both on {key!r}")
        taken[norm_key(key)] = action
    keys: dict[str, str | None] = {}
    displaced = []
    for action, key in DEFAULT_HOTKEYS.items():
        if action in value:
            keys[action] = value[action]
        elif norm_key(key) in taken:
            if action not in FALLBACK_HOTKEYS:
                raise ValueError(f"review_hotkeys: {taken[norm_key(key)]} and {action} are both on {key!r}")
            displaced.append(action)
        else:
            keys[action] = key
            taken[norm_key(key)] = action
    warnings = []
    for action in displaced:
        free = next((k for k in FALLBACK_HOTKEYS.get(action, ()) if norm_key(k) not in taken), None)
        keys[action] = free
        if free is not None:
            taken[norm_key(free)] = action
        else:
            default = DEFAULT_HOTKEYS[action]
            warnings.append(f"review_hotkeys: {action} has no key (its default {default!r} is "
                            f"{taken[norm_key(default)]}'s here); map it, e.g. review_hotkeys: {{{action}: KEY}}")
    return ResolvedHotkeys({action: keys[action] for action in DEFAULT_HOTKEYS}, warnings)


def check_hotkeys(value: dict[str, str]) -> dict[str, str]:
    """`value` (the city's own keys) as given, once it resolves over the defaults; ValueError
    naming the bad action or key."""
    unknown = sorted(set(value) - set(DEFAULT_HOTKEYS))
    if unknown:
        raise ValueError(f"unknown review_hotkeys action(s) {unknown}; known: {sorted(DEFAULT_HOTKEYS)}")
    for action, key in value.items():
        if not isinstance(key, str) or not (len(key) == 1 and key.isprintable() and key != " " or key in NAMED_KEYS):
            raise ValueError(f"review_hotkeys.{action}: {key!r} is not one key (a character or one of {NAMED_KEYS[:11]}...)")
        if norm_key(key) in RESERVED:
            raise ValueError(f"review_hotkeys.{action}: {key!r} is kept for menus and box work")
    resolve_hotkeys(value)
    return dict(value)
