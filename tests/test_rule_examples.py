"""Every rule's docstring examples: the `Fails::` fragment triggers its code, `Passes::` does not.

Spec rules check a spec (the fragment merged onto tests/fixtures/base.yaml), reading gs:// paths
from the fake Cloud Storage of tests/fake_gcs.py (gs://bucket/ holds tests/fixtures/). Cluster rules check a
clusters file whose entry `example` (tests/fixtures/clusters.yaml) has the fragment merged in.
Plan rules launch the spec on that entry, with the rule's `Cluster::` fragment merged in; the
failing example of a cluster or plan rule is reported where its `At::` line says.
"""

from __future__ import annotations

import pytest

from distillc.compiler.registry import TARGETS, Rule, iter_codes
from tests.conftest import FIXTURES, at, check_text, codes, deep_merge, spec_text, where
from tests.fake_gcs import fake_remote

CODES = [c for c in iter_codes() if c.func is not None]
RULES = [r for c in CODES for r in c.rules]
SPEC_RULES = [r for r in RULES if r.stage == "spec"]
LATER_RULES = [r for r in RULES if r.stage != "spec"]


def rule_id(r: Rule) -> str:
    return f"{r.code}-{r.func.__name__}"


def clusters_text(fragment: str) -> str:
    from distillc.compiler.loader import dump, load_text

    doc = load_text((FIXTURES / "clusters.yaml").read_text()).data
    doc["clusters"]["example"] = deep_merge(doc["clusters"]["example"], load_text(fragment).data or {})
    return dump(doc)


def later_diagnostics(r: Rule, example: str, tmp_path) -> tuple[list, dict[str, str]]:
    """The diagnostics of a cluster or plan rule's example, and the text of each file by name."""
    from distillc.compiler.launch import compile_launch

    clusters = tmp_path / "clusters.yaml"
    spec = tmp_path / "spec.yaml"
    if r.stage == "cluster":
        clusters.write_text(clusters_text(r.examples[example]))
        spec.write_text(spec_text(""))
    else:
        clusters.write_text(clusters_text(r.examples.get("cluster", "")))
        spec.write_text(spec_text(r.examples[example]))
    compiled = compile_launch(spec, cluster_name="example", clusters_file=clusters, target=r.targets[0],
                              out_dir=tmp_path / "out")
    texts = {str(clusters): clusters.read_text(), str(spec): spec.read_text()}
    return list(compiled.diagnostics), texts


@pytest.mark.parametrize("rule", RULES, ids=rule_id)
def test_rule_has_both_examples(rule):
    assert {"fails", "passes"} <= set(rule.examples), f"{rule.code} docstring needs Fails:: and Passes:: blocks"


@pytest.mark.parametrize("rule", SPEC_RULES, ids=rule_id)
def test_failing_example_triggers(rule):
    assert rule.code in codes(check_text(spec_text(rule.examples["fails"]), target=rule.targets[0], remote=fake_remote()))


@pytest.mark.parametrize("rule", SPEC_RULES, ids=rule_id)
def test_passing_example_is_clean_of_the_code(rule):
    assert rule.code not in codes(check_text(spec_text(rule.examples["passes"]), target=rule.targets[0],
                                             remote=fake_remote()))


@pytest.mark.parametrize("rule", [r for r in SPEC_RULES if len(r.targets) == 1], ids=rule_id)
def test_a_target_rule_is_silent_for_the_other_target(rule):
    other = next(t for t in TARGETS if t not in rule.targets)
    assert rule.code not in codes(check_text(spec_text(rule.examples["fails"]), target=other, remote=fake_remote()))


@pytest.mark.parametrize("rule", LATER_RULES, ids=rule_id)
def test_failing_example_is_reported_where_it_says(rule, tmp_path):
    diags, texts = later_diagnostics(rule, "fails", tmp_path)
    hits = [d for d in diags if d.code == rule.code]
    assert hits, [(d.code, d.message) for d in diags]
    assert not [d for d in diags if d.is_error and not d.code.startswith("DC4")], [(d.code, d.message) for d in diags]
    assert "at" in rule.examples, f"{rule.code} docstring needs an At:: line"
    want = [at(texts[d.file], *rule.examples["at"].split(" > ")) for d in hits]
    assert where(hits[0]) in want and where(hits[0]) == want[0], (rule.examples["at"], [(d.message, where(d)) for d in hits])


@pytest.mark.parametrize("rule", LATER_RULES, ids=rule_id)
def test_passing_example_is_clean_of_the_code_on_launch(rule, tmp_path):
    diags, _ = later_diagnostics(rule, "passes", tmp_path)
    assert rule.code not in [d.code for d in diags], [(d.code, d.message) for d in diags]
    if rule.stage == "plan":  # the spec passed its own rules, so the plan was made and the rule ran
        assert not [d for d in diags if d.is_error and not d.code.startswith("DC4")], [(d.code, d.message) for d in diags]


def test_a_code_with_rules_in_two_modules_registers_in_either_order():
    """DC402 has rules in rules/cluster.py (with the hint) and rules/launch.py: whichever is imported
    first, both register and the code keeps its hint (a fresh interpreter, launch's rules first)."""
    import subprocess
    import sys

    code = ("import distillc.compiler.rules.launch, distillc.compiler.rules.cluster\n"
            "from distillc.compiler.registry import CODES\n"
            "c = CODES['DC402']; assert c.hint and len(c.rules) == 4, (c.hint, len(c.rules)); print('ok')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr
