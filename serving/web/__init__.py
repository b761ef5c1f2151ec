"""The reviewers' web page: sign-in, the keyboard-first queue, dashboard, admin and audit
pages. Server-rendered (Jinja2) with plain JavaScript from static/; no build step."""
