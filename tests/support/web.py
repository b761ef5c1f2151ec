"""Helpers for the review page's tests: accounts, a queue of real cases, signing in a
browser or an HTTP client."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.service import RunningService, event_json, push

PASSWORD = "correct horse 42"


def add_user(server: RunningService, name: str, role: str = "reviewer") -> str:
    from serving.accounts import add_user as add

    add(server.service.db, name, role, PASSWORD, actor="test")
    return name


def queue_cases(server: RunningService, images: list[Path], count: int) -> list[str]:
    """`count` pending cases through POST /v1/events, each a real image on its own camera,
    first seen a minute apart (so "oldest first" is their order here)."""
    numbers = []
    with server.client(server.key("camera")) as http:
        for i in range(count):
            event = event_json(event_id=f"web-{i}", camera=f"cam-{i:03d}", start_s=60 * i, end_s=60 * i + 240,
                               score=round(0.5 + 0.03 * i, 2))
            response = push(http, event, images[i % len(images)])
            response.raise_for_status()
            numbers.append(response.json()["case_number"])
    return numbers


def sign_in(page, base_url: str, name: str, password: str = PASSWORD) -> None:
    page.goto(f"{base_url}/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.press("input[name=password]", "Enter")
    page.wait_for_url(f"{base_url}/review")


def http_sign_in(http, name: str, password: str = PASSWORD):
    """Sign an httpx client in through the login form; returns the response."""
    http.get("/login")
    return http.post("/login", data={"username": name, "password": password,
                                     "csrf_token": http.cookies.get("gw_csrf")})


def tab_to(page, selector: str, limit: int = 60) -> None:
    """Tab through the page until `selector` has the focus: reachable by keyboard alone."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("(s) => document.activeElement && document.activeElement.matches(s)", selector):
            return
    pytest.fail(f"{selector} not reached with Tab")
