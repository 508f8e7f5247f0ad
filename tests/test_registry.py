"""The Registry object: registration, duplicates, aliases, lookups, plugins, repr."""

from __future__ import annotations

import sys
import textwrap

import pytest
from pydantic import BaseModel

import prunekit as pk
from prunekit.errors import RegistryError
from prunekit.registry import Registry


class _Cfg(BaseModel):
    type: str = "a"


def test_register_as_decorator_returns_class_and_keeps_metadata():
    reg = Registry("thing")

    @reg.register("alpha", config=_Cfg, aliases=("a1",))
    class Alpha:
        """First line describes it.

        More text."""

    assert reg.get("alpha") is Alpha and reg["a1"] is Alpha
    entry = reg.entry("a1")
    assert entry.name == "alpha" and entry.config is _Cfg
    assert entry.description == "First line describes it."
    assert "alpha" in reg and "a1" in reg and "beta" not in reg and 3 not in reg
    assert len(reg) == 1 and list(reg) == ["alpha"] and reg.names() == ["alpha"]


def test_duplicate_name_names_the_holder_unless_forced():
    reg = Registry("thing")

    @reg.register("alpha")
    class Alpha:
        pass

    with pytest.raises(RegistryError, match=r"'alpha' is already registered by .*Alpha; .*force=True"):

        @reg.register("alpha")
        class Other:
            pass

    @reg.register("alpha", force=True)
    class Replacement:
        pass

    assert reg.get("alpha") is Replacement and len(reg) == 1


def test_alias_collision_is_a_duplicate():
    reg = Registry("thing")
    reg.register("alpha", type("A", (), {}), aliases=("x",))
    with pytest.raises(RegistryError, match="'x' is already registered"):
        reg.register("beta", type("B", (), {}), aliases=("x",))


def test_unknown_name_lists_candidates_and_suggests_closest():
    reg = Registry("thing")
    reg.register("iterative", type("I", (), {}))
    reg.register("oneshot", type("O", (), {}))
    with pytest.raises(RegistryError) as info:
        reg.get("iterativ")
    text = str(info.value)
    assert "unknown thing 'iterativ'" in text
    assert "did you mean 'iterative'?" in text
    assert "registered: iterative, oneshot" in text


def test_bad_registrations_are_rejected():
    reg = Registry("thing")
    with pytest.raises(RegistryError, match="non-empty string"):
        reg.register(" padded ", object)
    with pytest.raises(RegistryError, match="pydantic BaseModel"):
        reg.register("x", object, config=dict)  # type: ignore[arg-type]


def test_scheduler_registry_accepts_only_schedulers(scratch_scheduler_names):
    with pytest.raises(RegistryError, match="subclass of Scheduler"):

        @pk.register_scheduler("not_a_scheduler")
        class NotAScheduler:
            pass


def test_repr_is_readable():
    text = repr(pk.SCHEDULERS)
    assert text.startswith("Registry('scheduler',")
    assert "iterative (aliases: gradual): prunekit.schedulers.iterative.IterativeScheduler" in text


def test_list_schedulers_has_descriptions():
    rows = dict(pk.list_schedulers())
    assert set(rows) >= {"oneshot", "iterative"}
    assert all(rows[name] for name in ("oneshot", "iterative"))


def test_unregister_removes_aliases():
    reg = Registry("thing")
    reg.register("alpha", type("A", (), {}), aliases=("a1",))
    reg.unregister("a1")
    assert "alpha" not in reg and "a1" not in reg


def _install_fake_plugin(tmp_path, group: str, body: str, ep_line: str) -> None:
    (tmp_path / "fake_prunekit_plugin.py").write_text(textwrap.dedent(body))
    dist = tmp_path / "fake_prunekit_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-prunekit-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{ep_line}\n")
    sys.path.insert(0, str(tmp_path))


def test_entry_point_plugins_load_lazily_on_first_lookup(tmp_path, monkeypatch):
    group = "prunekit.test_plugins"
    _install_fake_plugin(
        tmp_path,
        group,
        """
        class FromPlugin:
            '''Registered through an entry point.'''
        """,
        "from_plugin = fake_prunekit_plugin:FromPlugin",
    )
    try:
        reg = Registry("thing", entry_point_group=group)
        assert "fake_prunekit_plugin" not in sys.modules  # nothing imported before a lookup
        assert "from_plugin" in reg
        entry = reg.entry("from_plugin")
        assert entry.obj.__name__ == "FromPlugin"
        assert entry.plugin == "from_plugin = fake_prunekit_plugin:FromPlugin"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("fake_prunekit_plugin", None)


def test_broken_plugin_warns_with_its_name(tmp_path):
    group = "prunekit.test_broken_plugins"
    _install_fake_plugin(tmp_path, group, "raise RuntimeError('boom')\n", "broken = fake_prunekit_plugin:X")
    try:
        reg = Registry("thing", entry_point_group=group)
        with pytest.warns(RuntimeWarning, match=r"'broken = fake_prunekit_plugin:X'.*RuntimeError: boom"):
            assert len(reg) == 0
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("fake_prunekit_plugin", None)


def test_force_on_an_alias_takes_only_the_alias():
    reg = Registry("thing")
    first = reg.register("iterative", type("I", (), {}), aliases=("gradual",))
    second = reg.register("gradual", type("G", (), {}), force=True)
    assert reg.get("iterative") is first and reg.entry("iterative").aliases == ()
    assert reg.get("gradual") is second and reg.names() == ["gradual", "iterative"]
