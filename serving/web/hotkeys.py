"""The review page's keys, which a city may re-map (settings `review_hotkeys`: action -> key).

Keys are what the browser reports as `KeyboardEvent.key` for a single press: one character
(letters are case-insensitive) or a named key such as `Enter`, `ArrowLeft`. Digits stay the
menus' choices and are not re-mappable; two actions on one key are refused at start."""

from __future__ import annotations

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


def check_hotkeys(value: dict[str, str]) -> dict[str, str]:
    """`value` merged over the defaults; ValueError naming the bad action or key."""
    unknown = sorted(set(value) - set(DEFAULT_HOTKEYS))
    if unknown:
        raise ValueError(f"unknown review_hotkeys action(s) {unknown}; known: {sorted(DEFAULT_HOTKEYS)}")
    for action, key in value.items():
        if not isinstance(key, str) or not (len(key) == 1 and key.isprintable() and key != " " or key in NAMED_KEYS):
            raise ValueError(f"review_hotkeys.{action}: {key!r} is not one key (a character or one of {NAMED_KEYS[:11]}...)")
        if (key.lower() if len(key) == 1 else key) in RESERVED:
            raise ValueError(f"review_hotkeys.{action}: {key!r} is kept for menus and box work")
    merged = {**DEFAULT_HOTKEYS, **value}
    seen: dict[str, str] = {}
    for action, key in merged.items():
        norm = key.lower() if len(key) == 1 else key
        if norm in seen:
            raise ValueError(f"review_hotkeys: {action} and {seen[norm]} are both on {key!r}")
        seen[norm] = action
    return dict(value)
