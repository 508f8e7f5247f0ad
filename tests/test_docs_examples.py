"""Every ```python block of README.md and docs/*.md runs (blocks of one page share a namespace)."""

from __future__ import annotations

import os
import re

import pytest

import prunekit as pk
from repo_paths import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _pages_with_code() -> list:
    return [p for p in PAGES if BLOCK.search(p.read_text(encoding="utf-8"))]


@pytest.mark.parametrize("page", _pages_with_code(), ids=lambda p: p.name)
def test_page_examples_run(page, tmp_path, monkeypatch, isolated_scheduler_registry):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PRUNEKIT_DOCS_TMP", str(tmp_path))
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for number, match in enumerate(BLOCK.finditer(page.read_text(encoding="utf-8")), start=1):
        code = match.group(1)
        try:
            exec(compile(code, f"{page.name}[block {number}]", "exec"), namespace)
        except Exception as err:  # pragma: no cover - the message is the point
            raise AssertionError(f"{page.name} block {number} failed: {type(err).__name__}: {err}\n{code}") from err
    assert os.getcwd() == str(ROOT)


def test_gallery_has_a_picture_for_every_builtin_scheduler(tmp_path):
    pytest.importorskip("matplotlib")
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_gallery", ROOT / "docs" / "build_gallery.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = {p.name for p in module.build(tmp_path)}
    text = (ROOT / "docs" / "schedulers.md").read_text(encoding="utf-8")
    for entry in pk.SCHEDULERS.entries():
        if issubclass(entry.obj, pk.Scheduler) and entry.obj.__module__.startswith("prunekit."):
            assert f"schedule_{entry.name}.png" in written
            assert (ROOT / "docs" / "images" / f"schedule_{entry.name}.png").exists()
            assert f"## `{entry.name}`" in text
        elif entry.obj.__module__.startswith("prunekit."):  # a built-in data scheduler
            assert entry.name in module.DATA_EXAMPLES, f"docs/build_gallery.py does not draw {entry.name!r}"
            assert f"| `{entry.name}` |" in text.split("## Data schedulers")[1]
    assert "schedule_data.png" in written and (ROOT / "docs" / "images" / "schedule_data.png").exists()
    for curve in pk.DECAY_CURVES.names():
        assert f"| `{curve}` |" in text
