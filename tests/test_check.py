"""compiler/check.py: the front end's plumbing (the rules have their own test files)."""

from __future__ import annotations

import os

from distillc.compiler import check
from distillc.compiler.loader import load_text


def _plugins_setting_seen(monkeypatch) -> list:
    seen: list = []
    real_parse = check.parse

    def spy(loaded):
        seen.append(os.environ.get("PYDANTIC_DISABLE_PLUGINS"))
        return real_parse(loaded)

    monkeypatch.setattr(check, "parse", spy)
    return seen


SPEC = "name: t\nteacher: {model: tiny-teacher}\nstudent: {model: tiny-student}\n" \
       "data: {source: builtin:pydoc_topics, seq_len: 64, global_batch_size: 16}\n" \
       "train: {steps: 10, learning_rate: 0.001}\n"


def test_pydantic_plugins_are_off_while_checking_and_restored_after(monkeypatch):
    monkeypatch.delenv("PYDANTIC_DISABLE_PLUGINS", raising=False)
    seen = _plugins_setting_seen(monkeypatch)
    check.check_loaded(load_text(SPEC, "spec.yaml"))
    assert seen == ["__all__"] and "PYDANTIC_DISABLE_PLUGINS" not in os.environ


def test_a_users_plugin_setting_is_kept(monkeypatch):
    monkeypatch.setenv("PYDANTIC_DISABLE_PLUGINS", "logfire")
    seen = _plugins_setting_seen(monkeypatch)
    check.check_loaded(load_text(SPEC, "spec.yaml"))
    assert seen == ["logfire"] and os.environ["PYDANTIC_DISABLE_PLUGINS"] == "logfire"
