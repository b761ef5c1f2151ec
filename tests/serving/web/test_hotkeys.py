"""The city's review_hotkeys over the defaults (serving/web/hotkeys.py): a default gives way to
a key the city mapped itself (moved to a free fallback key, or left without one and said at
start), so a default added by a newer release (`load`: T) never breaks an existing config;
two actions the city mapped itself onto one key are still refused."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from fastapi import FastAPI

from serving.settings import Settings
from serving.web.hotkeys import DEFAULT_HOTKEYS, FALLBACK_HOTKEYS, resolve_hotkeys


def test_a_city_key_on_a_newer_default_moves_that_default_to_a_fallback() -> None:
    settings = Settings(review_hotkeys={"confirm": "T"})  # a config from before `load` had T
    resolved = resolve_hotkeys(settings.review_hotkeys)
    assert resolved.keys["confirm"] == "T"
    assert resolved.keys["load"] == FALLBACK_HOTKEYS["load"][0]
    assert resolved.warnings == []
    assert {k: v for k, v in resolved.keys.items() if k not in ("confirm", "load")} == \
        {k: v for k, v in DEFAULT_HOTKEYS.items() if k not in ("confirm", "load")}


def test_a_default_without_a_free_key_is_left_without_one_and_said(caplog) -> None:
    from serving.web.app import install_web

    taken = {"confirm": "t", "reject": FALLBACK_HOTKEYS["load"][0], "note": FALLBACK_HOTKEYS["load"][1].upper()}
    settings = Settings(review_hotkeys=taken)
    resolved = resolve_hotkeys(settings.review_hotkeys)
    assert resolved.keys["load"] is None
    assert (resolved.keys["confirm"], resolved.keys["reject"]) == ("t", FALLBACK_HOTKEYS["load"][0])
    assert len(resolved.warnings) == 1 and "load has no key" in resolved.warnings[0]
    assert "review_hotkeys: {load: KEY}" in resolved.warnings[0]
    # Said once at start, where the web pages are put on the service's app.
    app = FastAPI()
    app.state.service = SimpleNamespace(settings=settings)
    with caplog.at_level(logging.WARNING, logger="gridwatch.web"):
        install_web(app)
    assert [r.getMessage() for r in caplog.records if r.name == "gridwatch.web"] == resolved.warnings


def test_an_older_actions_default_does_not_give_way_but_the_city_can_swap_keys() -> None:
    # reject has always been on n: a page without a reject key is worse than a refusal at start.
    with pytest.raises(ValueError, match="confirm and reject are both on 'n'"):
        resolve_hotkeys(Settings.model_construct(review_hotkeys={"confirm": "n"}).review_hotkeys)
    resolved = resolve_hotkeys(Settings(review_hotkeys={"confirm": "n", "reject": "y"}).review_hotkeys)
    assert (resolved.keys["confirm"], resolved.keys["reject"], resolved.warnings) == ("n", "y", [])


def test_two_explicit_mappings_on_one_key_are_still_refused() -> None:
    with pytest.raises(ValueError, match="both on 't'|both on 'T'"):
        Settings(review_hotkeys={"confirm": "t", "load": "T"})
    with pytest.raises(ValueError, match="both on"):
        Settings(review_hotkeys={"confirm": "q", "reject": "q"})
    # A fallback the city took itself is not free: the next one is used.
    resolved = resolve_hotkeys({"confirm": "t", "reject": FALLBACK_HOTKEYS["load"][0]})
    assert resolved.keys["load"] == FALLBACK_HOTKEYS["load"][1]
