"""The page's JavaScript modules, checked without a browser.

The page loads one module script, ``/static/main.js``, which imports the others. A browser
refuses a module served with a non-JavaScript media type (``nosniff`` is on), and one
import that names a missing file stops the whole page; both show here as a plain failure.
"""

from __future__ import annotations

import posixpath
import re
from importlib import resources

from tests.web.test_security import client_for

STATIC = resources.files("dlaas.web").joinpath("static")
ENTRY = "main.js"
# Classic scripts, loaded by a <script src> of their own rather than imported.
CLASSIC = {"swagger-init.js"}
SCRIPT_TAG = re.compile(r"<script\b[^>]*>", re.IGNORECASE)
# import ... from "x", export ... from "x", import "x", import("x")
SPECIFIER = re.compile(r"""\b(?:from|import)\s*\(?\s*["']([^"']+)["']""")
JAVASCRIPT = ("text/javascript", "application/javascript")


def imports(source: str) -> list[str]:
    return SPECIFIER.findall(source)


def test_the_page_loads_one_module_script_and_no_inline_script() -> None:
    html = STATIC.joinpath("index.html").read_text(encoding="utf-8")
    assert SCRIPT_TAG.findall(html) == [f'<script type="module" src="/static/{ENTRY}">']
    assert f'src="/static/{ENTRY}"></script>' in html  # nothing inline between the tags


def test_every_module_is_served_as_javascript_and_every_import_resolves() -> None:
    seen: set[str] = set()
    pending = [ENTRY]
    with client_for() as client:
        while pending:
            name = pending.pop()
            if name in seen:
                continue
            seen.add(name)
            response = client.get(f"/static/{name}")
            assert response.status_code == 200, name
            assert response.headers["content-type"].startswith(JAVASCRIPT), name
            assert response.headers["x-content-type-options"] == "nosniff"
            for specifier in imports(response.text):
                # No bundler and no import map: only relative paths resolve in the browser.
                assert specifier.startswith(("./", "../")), (name, specifier)
                target = posixpath.normpath(posixpath.join("/static", specifier))
                assert target.startswith("/static/"), (name, specifier)
                pending.append(target.removeprefix("/static/"))
    on_disk = {f.name for f in STATIC.iterdir() if f.name.endswith(".js")}
    assert seen <= on_disk
    # Every other script in static/ is a module the page imports: none is left behind.
    assert on_disk - CLASSIC == seen


def test_the_import_pattern_sees_each_form() -> None:
    source = """
import * as auth from "./auth.js";
import {
  a,
  b,
} from './jobview.js';
export { c } from "./c.js";
import "./side.js";
const lazy = import("./lazy.js");
"""
    assert imports(source) == ["./auth.js", "./jobview.js", "./c.js", "./side.js", "./lazy.js"]
