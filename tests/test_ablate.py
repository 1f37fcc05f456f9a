"""distillc ablate: axes, strategies, conditional dedupe, pruning, names, child specs (issue 5).

Small specs built on tests/fixtures/base.yaml (tiny models of 2 layers, temperature 1.0); SCHEDULED
makes the student a tiny-teacher too, so the feature loss is possible, and turns on schedules and
beta. Expected cells are written out by hand.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from distillc.compiler.ablation import Options, StrategyError, ablate, read_results
from distillc.compiler.ablation.axes import cli_axes
from distillc.compiler.ablation.names import name_limit, valid_cell_name
from distillc.compiler.ablation.output import INDEX, LAUNCH, to_csv, write_out
from distillc.compiler.ablation.priority import OTHER, load_priority
from distillc.compiler.check import check_loaded
from distillc.compiler.diagnostics import dotted
from distillc.compiler.loader import load_file, load_text
from tests.conftest import line_of, spec_text

SCHEDULED = """
loss:
  alpha: {start: 0.9, end: 0.5, schedule: cosine}
  beta: {start: 1.0, end: 0.1, schedule: cosine}
  layers: {strategy: evenly_spaced, count: 1}
student:
  model: tiny-teacher   # same hidden size: the feature loss is possible (DC126)
"""


def run(fragment: str = "", *axes: str, file: str = "spec.yaml", **opts):
    text = spec_text(fragment)
    return ablate(load_text(text, file), axes, Options(**opts)), text


def table(result) -> list[tuple[str, str]]:
    return [(c.name, c.status) for c in result.cells]


# ---------------------------------------------------------------- strategies


class TestGrid:
    def test_product_in_axis_order_with_readable_names(self):
        r, _ = run(SCHEDULED, "loss.alpha.end=0.3,0.7", "loss.temperature.start=1,2")
        assert r.ok, r.diagnostics
        assert table(r) == [
            ("quickstart-a03", "valid"),  # temperature 1 is the base's value: not in the name
            ("quickstart-a03-t2", "valid"),
            ("quickstart-a07", "valid"),
            ("quickstart-a07-t2", "valid"),
        ]
        assert r.cells[1].values == {"loss.alpha.end": 0.3, "loss.temperature.start": 2}
        assert r.cells[1].diff == (("loss.alpha.end", 0.3), ("loss.temperature.start", 2))

    def test_spec_block_and_cli_axes_merge_cli_wins(self):
        frag = SCHEDULED + "ablation: {axes: {loss.alpha.end: [0.3, 0.7], loss.beta.end: [0.5]}}"
        r, _ = run(frag, "loss.alpha.end=0.1")
        assert [c.values for c in r.cells] == [{"loss.alpha.end": 0.1, "loss.beta.end": 0.5}]
        assert [c.name for c in r.cells] == ["quickstart-a01-b05"]

    def test_cell_equal_to_the_base_is_named_base(self):
        r, _ = run(SCHEDULED, "loss.alpha.end=0.5,0.3")
        assert table(r) == [("quickstart-base", "valid"), ("quickstart-a03", "valid")]

    def test_csv_has_one_column_per_axis(self):
        r, _ = run(SCHEDULED, "loss.alpha.end=0.3", "loss.feature_loss=l2")
        rows = to_csv(r).splitlines()
        assert rows[0] == "name,status,loss.alpha.end,loss.feature_loss,reason,duplicate_of"
        assert rows[1] == "quickstart-a03-fl2,valid,0.3,l2,,"


class TestRandom:
    AXES = ("loss.alpha.end=0.1,0.3,0.5,0.7", "loss.temperature.start=1,2,4", "train.learning_rate=1.0e-3,3.0e-3")

    def test_reproducible_and_a_subset_of_the_grid(self):
        a, _ = run(SCHEDULED, *self.AXES, strategy="random", samples=5, seed=7)
        b, _ = run(SCHEDULED, *self.AXES, strategy="random", samples=5, seed=7)
        g, _ = run(SCHEDULED, *self.AXES, strategy="grid")
        assert [c.name for c in a.cells] == [c.name for c in b.cells]
        assert len(a.cells) == 5 and len({c.name for c in a.cells}) == 5
        grid_order = [c.name for c in g.cells]
        picked = [c.name for c in a.cells]
        assert set(picked) <= set(grid_order)
        assert picked == sorted(picked, key=grid_order.index)  # listed in grid order
        for c in a.cells:  # a sampled cell is the grid's cell with those values
            assert c.values == g.cells[grid_order.index(c.name)].values

    def test_seed_changes_the_sample(self):
        draws = {tuple(c.name for c in run(SCHEDULED, *self.AXES, strategy="random", samples=4, seed=s)[0].cells) for s in range(6)}
        assert len(draws) > 1

    def test_samples_from_the_spec_and_more_than_the_grid(self):
        frag = SCHEDULED + "ablation: {strategy: random, samples: 50, seed: 3, axes: {loss.alpha.end: [0.3, 0.7]}}"
        r, _ = run(frag)
        assert len(r.cells) == 2 and any("more than the grid" in n for n in r.notes)

    def test_needs_samples(self):
        with pytest.raises(StrategyError, match="--samples"):
            run(SCHEDULED, "loss.alpha.end=0.3", strategy="random")


class TestStaged:
    AXES = ("loss.layers.strategy=evenly_spaced,first_n", "loss.beta.end=0.01,0.5", "loss.alpha.end=0.3,0.7")

    def test_stage_one_sweeps_alpha_and_holds_the_rest_at_base(self):
        r, _ = run(SCHEDULED, *self.AXES, strategy="staged")
        assert r.stage.number == 1 and r.stage.group.name == "logits"
        assert [g.name for g in r.stage.groups] == ["logits", "beta", "layers"]
        assert [c.values for c in r.cells] == [{"loss.alpha.end": 0.3}, {"loss.alpha.end": 0.7}]
        assert table(r) == [("quickstart-a03", "valid"), ("quickstart-a07", "valid")]

    def test_best_fixes_the_winner_and_moves_to_the_next_stage(self, tmp_path):
        best = tmp_path / "results.csv"
        best.write_text("name,metric\nquickstart-a03,2.10\nquickstart-a07,2.05\n")
        r, _ = run(SCHEDULED, *self.AXES, strategy="staged", results=read_results(best))
        assert r.stage.number == 2 and r.stage.group.name == "beta"
        assert [(w.stage, w.cell, w.metric) for w in r.stage.winners] == [("logits", "quickstart-a07", 2.05)]
        assert [c.values for c in r.cells] == [
            {"loss.alpha.end": 0.7, "loss.beta.end": 0.01},
            {"loss.alpha.end": 0.7, "loss.beta.end": 0.5},
        ]
        assert [c.name for c in r.cells] == ["quickstart-a07-b001", "quickstart-a07-b05"]

    def test_maximize_and_json_results_and_third_stage(self, tmp_path):
        best = tmp_path / "results.json"
        best.write_text(json.dumps({"quickstart-a03": 0.61, "quickstart-a07": 0.58, "quickstart-a03-b05": 0.70, "quickstart-a03-b001": 0.2}))
        r, _ = run(SCHEDULED, *self.AXES, strategy="staged", results=read_results(best), maximize=True)
        assert [w.cell for w in r.stage.winners] == ["quickstart-a03", "quickstart-a03-b05"]
        assert r.stage.group.name == "layers"
        assert [c.values["loss.layers.strategy"] for c in r.cells] == ["evenly_spaced", "first_n"]
        assert all(c.values["loss.alpha.end"] == 0.3 and c.values["loss.beta.end"] == 0.5 for c in r.cells)

    def test_a_result_for_the_base_alone_does_not_finish_a_stage(self):
        # quickstart-base (every axis at the base's value) is a cell of every stage: a result for
        # it alone does not mean a stage ran, but once a stage ran its result takes part
        r, _ = run(SCHEDULED, "loss.alpha.end=0.3,0.5", "loss.beta.end=0.01,0.1", strategy="staged",
                   results={"quickstart-base": 1.0})
        assert r.stage.number == 1
        r, _ = run(SCHEDULED, "loss.alpha.end=0.3,0.5", "loss.beta.end=0.01,0.1", strategy="staged",
                   results={"quickstart-base": 1.0, "quickstart-a03": 2.0})
        assert r.stage.number == 2 and r.stage.winners[0].cell == "quickstart-base"
        assert [c.name for c in r.cells] == ["quickstart-b001", "quickstart-base"]

    def test_explicit_stage_with_earlier_winners(self):
        results = {"quickstart-a03": 2.0, "quickstart-a07": 1.0}
        r, _ = run(SCHEDULED, *self.AXES, strategy="staged", results=results, stage=2)
        assert r.stage.number == 2 and [c.values["loss.alpha.end"] for c in r.cells] == [0.7, 0.7]
        r, _ = run(SCHEDULED, *self.AXES, strategy="staged", results=results, stage=1)
        assert r.stage.number == 1 and r.stage.winners == () and [c.result for c in r.cells] == [2.0, 1.0]

    def test_explicit_stage_needs_earlier_winners(self):
        with pytest.raises(StrategyError, match="needs the winner of stage 1"):
            run(SCHEDULED, *self.AXES, strategy="staged", stage=2)
        with pytest.raises(StrategyError, match="has 3 stage"):
            run(SCHEDULED, *self.AXES, strategy="staged", stage=4)

    def test_every_stage_won_gives_the_combined_cell(self):
        results = {"quickstart-a03": 1.0, "quickstart-a07": 2.0, "quickstart-a03-b001": 0.5,
                   "quickstart-a03-b05": 0.9, "quickstart-a03-b001-lfirst": 0.4}
        r, _ = run(SCHEDULED, *self.AXES, strategy="staged", results=results)
        assert r.stage.complete
        assert [c.values for c in r.cells] == [{"loss.alpha.end": 0.3, "loss.beta.end": 0.01, "loss.layers.strategy": "first_n"}]


def test_priority_order_is_the_guides():
    p = load_priority()
    assert [s.name for s in p.stages] == ["logits", "beta", "layers", "schedules", "feature_loss"]
    assert p.stage_of("loss.alpha.end") == "logits"
    assert p.stage_of("loss.temperature.start") == "logits"
    assert p.stage_of("loss.beta.end") == "beta"
    assert p.stage_of("loss.layers.count") == "layers"
    assert p.stage_of("loss.alpha.schedule") == "schedules"  # the longer prefix wins
    assert p.stage_of("loss.feature_loss") == "feature_loss"
    assert p.stage_of("train.learning_rate") == OTHER


# ---------------------------------------------------------------- conditional axes and dedupe


class TestDedupe:
    def test_beta_zero_makes_layer_choices_one_cell(self):
        frag = SCHEDULED.replace("beta: {start: 1.0, end: 0.1, schedule: cosine}", "beta: 0.0")
        r, _ = run(frag, "loss.layers.strategy=evenly_spaced,first_n,top_heavy")
        assert table(r) == [
            ("quickstart-base", "valid"),
            ("quickstart-lfirst", "duplicate"),
            ("quickstart-ltop", "duplicate"),
        ]
        assert [c.duplicate_of for c in r.cells] == [None, "quickstart-base", "quickstart-base"]
        assert r.cells[0].aliases == ("quickstart-lfirst", "quickstart-ltop")

    def test_layer_choices_count_when_beta_is_positive(self):
        r, _ = run(SCHEDULED, "loss.layers.strategy=evenly_spaced,first_n")
        assert [c.status for c in r.cells] == ["valid", "valid"]  # count 1: the last layer vs the first

    def test_end_of_a_constant_schedule_does_not_matter(self):
        r, _ = run("loss: {alpha: 0.9}", "loss.alpha.end=0.3,0.5,0.7")
        assert [c.status for c in r.cells] == ["valid", "duplicate", "duplicate"]
        assert r.cells[2].duplicate_of == r.cells[0].name

    def test_switching_strategy_drops_keys_the_variant_has_no_use_for(self):
        # a 4-layer teacher; the student is the teacher with layer 1 pruned: 3 layers deep
        arch = "{num_layers: 4, emb_dim: 64, num_heads: 2, num_kv_heads: 2, head_dim: 32, mlp_dim: 256, vocab_size: 256, tokenizer: byte}"
        student = "  model: tiny-teacher   # same hidden size: the feature loss is possible (DC126)\n"
        assert student in SCHEDULED  # replaced, not written twice (a duplicate key is DC002)
        frag = SCHEDULED.replace(student, f"  model: {arch}\n  pruned_layers: [1]\nteacher:\n  model: {arch}\n")
        r, _ = run(frag, "loss.layers.strategy=straddle_pruned,first_n", "loss.layers.count=1,4")
        assert table(r) == [
            ("quickstart-lstrad", "valid"),  # teacher layers 0 and 2 around the pruned 1
            ("quickstart-lstrad-n4", "duplicate"),  # count means nothing to straddle_pruned
            ("quickstart-lfirst", "valid"),  # teacher 0 only
            ("quickstart-lfirst-n4", "pruned"),  # 4 layers of a 3-layer student
        ]
        assert r.evaluator.cell_data(r.cells[1].draft)["loss"]["layers"] == {"strategy": "straddle_pruned"}
        assert r.evaluator.cell_data(r.cells[2].draft)["loss"]["layers"] == {"strategy": "first_n", "count": 1}
        assert r.cells[1].duplicate_of == "quickstart-lstrad"
        assert r.cells[3].code == "DC123" and "exceeds the 3 layers" in r.cells[3].reason

    def test_strategies_that_pick_the_same_layers_are_one_cell(self):
        # a 2-layer student: first_n 2 and evenly_spaced 2 both align layers 0 and 1
        r, _ = run(SCHEDULED.replace("count: 1", "count: 2"), "loss.layers.strategy=first_n,evenly_spaced")
        assert [c.status for c in r.cells] == ["valid", "duplicate"]


# ---------------------------------------------------------------- pruning


class TestPruning:
    def test_beta_ramping_up_from_zero_is_dc120_for_maxtext(self):
        r, _ = run(SCHEDULED, "loss.beta.start=0.0,1.0", target="maxtext")
        assert table(r) == [("quickstart-bs0", "pruned"), ("quickstart-base", "valid")]
        assert r.cells[0].code == "DC120"
        assert r.cells[0].reason.startswith("DC120 beta starts at 0")

    def test_a_variant_missing_its_keys_is_pruned_with_the_parse_error(self):
        r, _ = run(SCHEDULED, "loss.alpha.schedule=linear,piecewise")
        assert table(r) == [("quickstart-alin", "valid"), ("quickstart-apw", "pruned")]
        assert r.cells[1].code == "DC012" and "points" in r.cells[1].reason

    def test_all_pruned_still_lists_every_cell(self):
        r, _ = run(SCHEDULED, "loss.beta.start=0.0", target="maxtext")
        assert table(r) == [("quickstart-bs0", "pruned")]

    def test_beta_ramping_up_from_zero_is_valid_for_distillc(self):
        r, _ = run(SCHEDULED, "loss.beta.start=0.0,1.0")
        assert table(r) == [("quickstart-bs0", "valid"), ("quickstart-base", "valid")]


# ---------------------------------------------------------------- the fast path agrees with check_loaded


@pytest.mark.parametrize("target", ["distillc", "maxtext"])
def test_every_cell_agrees_with_check_loaded_on_its_own_yaml(target):
    frag = SCHEDULED.replace("count: 1", "count: 2")
    axes = (
        "loss.beta.start=0.0,1.0",
        "loss.beta.end=0.1,0.0",
        "loss.layers.strategy=evenly_spaced,straddle_pruned,explicit",
        "loss.alpha.schedule=cosine,piecewise",
        "student.model=tiny-student,tiny-teacher,nope",
        "train.warmup_steps=10,1000",
    )
    r, _ = run(frag, *axes, target=target)
    assert len(r.cells) == 2 * 2 * 3 * 2 * 3 * 2
    statuses = set()
    for cell in r.cells:
        data = r.evaluator.cell_data(cell.draft, name="quickstart")
        full = check_loaded(load_text(yaml.safe_dump(data, sort_keys=False), "spec.yaml"), target=target)
        fast = r.evaluator.evaluate(cell.draft).checked
        got = sorted((d.code, d.message, dotted(d.path)) for d in fast.diagnostics)
        want = sorted((d.code, d.message, dotted(d.path)) for d in full.diagnostics)
        assert got == want, cell.name
        assert (cell.status == "pruned") == (not full.ok)
        statuses.add(cell.status)
    assert statuses == {"valid", "pruned", "duplicate"}


def test_a_crashing_rule_is_dc900_in_a_cell_as_in_check_loaded(monkeypatch):
    """The ablation runs rules through check.run_codes, as check_loaded does."""
    from distillc.compiler.diagnostics import Severity
    from distillc.compiler.registry import CODES, Code, load_rules

    def boom(ctx):
        if ctx.spec.loss.alpha.start > 0.5:
            raise ZeroDivisionError("division by zero")
        return ()

    load_rules()
    monkeypatch.setitem(CODES, "DC199", Code("DC199", Severity.ERROR, "boom", "", "", boom, ("loss",)))
    r, _ = run("loss: {alpha: 0.3}", "loss.alpha=0.3,0.9")  # the base must pass: DC900 stops an ablation
    assert [c.status for c in r.cells] == ["valid", "pruned"]
    assert r.cells[1].code == "DC900" and "DC199" in r.cells[1].reason
    for cell in r.cells:
        data = r.evaluator.cell_data(cell.draft, name="quickstart")
        full = check_loaded(load_text(yaml.safe_dump(data, sort_keys=False), "spec.yaml"))
        fast = r.evaluator.evaluate(cell.draft).checked
        assert fast.diagnostics == full.diagnostics


LLAMA = Path(__file__).resolve().parent.parent / "specs" / "ablation-example.yaml"


def _llama(*axes: str):
    data = yaml.safe_load(LLAMA.read_text())
    data.pop("ablation")
    return ablate(load_text(yaml.safe_dump(data, sort_keys=False), "llama.yaml"), axes)


def test_memory_that_does_not_fit_is_pruned():
    r = _llama("data.seq_len=2048,32768", "student.overrides.remat=full,none")
    assert table(r) == [
        # the base name gives way to the longest tail, once: every cell has the same prefix
        ("llama31-8b-prune-rfull", "valid"),
        ("llama31-8b-prune-rnone", "pruned"),
        ("llama31-8b-prune-seq32768-rfull", "pruned"),
        ("llama31-8b-prune-seq32768-rnone", "pruned"),
    ]
    assert {c.code for c in r.cells if c.status == "pruned"} == {"DC152"}
    assert "per chip" in r.cells[1].reason


def test_llama_cells_agree_with_check_loaded_and_resolve():
    """Memory, mesh, pruning and layer rules read many sections: the cached path must agree."""
    from distillc.compiler.ablation.plan import plan_key

    r = _llama(
        "resources.accelerator=v5p-128,v5p-8",
        "runtime.mesh.fsdp=64,4",
        "loss.beta=0.0,1.0",
        "loss.layers.strategy=straddle_pruned,evenly_spaced",
        "loss.layers.count=8,40",
        "mode=online,offline",
        "offline.top_k=64",
        "offline.data_dir=gs://b/topk",
    )
    seen = {}
    for cell in r.cells:
        data = r.evaluator.cell_data(cell.draft, name="llama31-8b-prune-abl")
        full = check_loaded(load_text(yaml.safe_dump(data, sort_keys=False), "llama.yaml"))
        fast = r.evaluator.evaluate(cell.draft).checked
        assert sorted((d.code, d.message, dotted(d.path)) for d in fast.diagnostics) == sorted(
            (d.code, d.message, dotted(d.path)) for d in full.diagnostics
        ), cell.name
        if full.ok:  # the memoized plan keys agree with resolving each cell from scratch
            seen.setdefault(plan_key(full), []).append(cell)
    for group in seen.values():
        assert [c.status for c in group] == ["valid"] + ["duplicate"] * (len(group) - 1)
    assert sum(c.status != "pruned" for c in r.cells) == sum(len(g) for g in seen.values())
    assert {"valid", "pruned", "duplicate"} == {c.status for c in r.cells}


# ---------------------------------------------------------------- axes and their diagnostics


class TestAxisDiagnostics:
    def test_unknown_key_path_in_the_spec_block_points_at_the_key(self):
        frag = SCHEDULED + "ablation:\n  axes:\n    loss.alpah.end: [0.3]\n"
        r, text = run(frag)
        (d,) = r.diagnostics
        assert d.code == "DC170" and d.file == "spec.yaml"
        assert (d.span.line, d.span.column) == (line_of(text, "loss.alpah.end"), 5)
        assert "alpha" in d.hint
        assert r.cells == ()

    def test_value_of_the_wrong_type_points_at_the_value(self):
        frag = SCHEDULED + "ablation:\n  axes:\n    loss.layers.count: [2, many, 0]\n"
        r, text = run(frag)
        codes = [(d.code, d.span.line) for d in r.diagnostics]
        line = line_of(text, "loss.layers.count")
        assert codes == [("DC171", line + 2), ("DC171", line + 3)]  # block style: one value per line
        assert "many" in r.diagnostics[0].message

    def test_cli_axis_positions(self):
        r, _ = run(SCHEDULED, "loss.alpha.end=0.3", "loss.feature_loss=cosine,l3")
        (d,) = r.diagnostics
        assert (d.code, d.file, d.span.line, d.span.column) == ("DC171", "--axis", 2, len("loss.feature_loss=cosine,") + 1)

    def test_malformed_and_forbidden_axes(self):
        for arg, code in [("loss.alpha.end", "DC172"), ("loss.alpha.end=", "DC172"), ("ablation.seed=1", "DC172"),
                          ("name=x", "DC172"), ("loss..end=1", "DC172"), ("loss.feature_loss.kind=1", "DC170")]:
            r, _ = run(SCHEDULED, arg)
            assert [d.code for d in r.diagnostics] == [code], arg

    def test_repeated_value_is_a_warning_and_dropped(self):
        r, _ = run(SCHEDULED, "loss.alpha.end=0.3,0.30,0.7")
        assert [d.code for d in r.diagnostics] == ["DC174"] and r.ok
        assert [c.values["loss.alpha.end"] for c in r.cells] == [0.3, 0.7]

    def test_no_axes_at_all(self):
        r, _ = run(SCHEDULED)
        assert [d.code for d in r.diagnostics] == ["DC172"]

    def test_cli_values_are_yaml_scalars(self):
        (axis,), diags = cli_axes(["loss.layers.indices=[0,1],[1],1e-6,true,cosine,'a,b'"])
        assert not diags
        assert axis.values == ([0, 1], [1], 1e-6, True, "cosine", "a,b")

    def test_base_spec_errors_stop_before_expansion(self):
        r, _ = run("loss: {alpah: 0.3}", "loss.alpha.end=0.3")
        assert [d.code for d in r.diagnostics] == ["DC010"] and r.cells == ()


def test_max_cells_is_checked_before_expanding():
    axes = ["loss.alpha.end=" + ",".join(str(i / 100) for i in range(1, 51)), "train.seed=" + ",".join(map(str, range(100)))]
    r, _ = run(SCHEDULED, *axes, max_cells=1000)
    (d,) = r.diagnostics
    assert d.code == "DC173" and "5,000 cells" in d.message and "1,000" in d.message
    assert r.cells == () and r.evaluator is None
    r, _ = run(SCHEDULED + "ablation: {max_cells: 3}", "loss.alpha.end=0.1,0.2,0.3,0.4")
    assert [d.code for d in r.diagnostics] == ["DC173"]


# ---------------------------------------------------------------- names


def test_names_are_unique_valid_and_fit_the_offline_suffix():
    long = "a-rather-long-experiment-name-for-llama"
    frag = SCHEDULED + f"name: {long}\n"
    r, _ = run(frag, "loss.alpha.end=0.3,0.5,0.7", "loss.alpha=0.3,0.5", "train.learning_rate=1.0e-5,3.0e-5",
               "loss.temperature.start=1,2,4")
    names = [c.name for c in r.cells]
    assert len(names) == 3 * 2 * 2 * 3 and len(set(names)) == len(names)
    assert all(valid_cell_name(n) for n in names), [n for n in names if not valid_cell_name(n)]
    assert name_limit() == 40 - len("-train") and all(len(n) + len("-topk") <= 40 for n in names)
    again, _ = run(frag, "loss.alpha.end=0.3,0.5,0.7", "loss.alpha=0.3,0.5", "train.learning_rate=1.0e-5,3.0e-5",
                   "loss.temperature.start=1,2,4")
    assert names == [c.name for c in again.cells]  # deterministic


def test_colliding_readable_names_are_told_apart():
    # loss.alpha (a bare constant) and loss.alpha.end share the short form 'a'
    r, _ = run(SCHEDULED, "loss.alpha=0.3", "loss.alpha.end=0.3,0.7")
    names = [c.name for c in r.cells]
    assert len(set(names)) == 2 and all(valid_cell_name(n) for n in names)


# ---------------------------------------------------------------- --out


def test_out_writes_child_specs_index_and_launch_script(tmp_path):
    frag = SCHEDULED + "ablation: {axes: {loss.alpha.end: [0.3, 0.5], loss.beta.start: [0.0, 1.0]}}"
    r, _ = run(frag, file=str(tmp_path / "base.yaml"), target="maxtext")
    out = tmp_path / "cells"
    r = write_out(r, out, cluster="my cluster")
    valid = [c for c in r.cells if c.status == "valid"]
    assert [c.name for c in valid] == ["quickstart-a03", "quickstart-base"]
    assert sorted(p.name for p in out.glob("*.yaml")) == ["quickstart-a03.yaml", "quickstart-base.yaml"]
    for c in valid:
        loaded = load_file(out / f"{c.name}.yaml")
        checked = check_loaded(loaded, target="maxtext")
        assert checked.ok, checked.diagnostics
        assert loaded.data["name"] == c.name and "ablation" not in loaded.data
        assert loaded.data["loss"]["alpha"]["end"] == c.values["loss.alpha.end"]
    index = json.loads((out / INDEX).read_text())
    assert [(c["name"], c["status"], c["spec"]) for c in index["cells"]] == [
        ("quickstart-a03-bs0", "pruned", None),
        ("quickstart-a03", "valid", "quickstart-a03.yaml"),
        ("quickstart-bs0", "pruned", None),
        ("quickstart-base", "valid", "quickstart-base.yaml"),
    ]
    script = (out / LAUNCH).read_text().splitlines()
    launches = [shlex.split(line) for line in script if line.startswith("distillc ")]
    assert launches == [["distillc", "launch", f"{c.name}.yaml", "--cluster", "my cluster", "$@"] for c in valid]
    assert (out / LAUNCH).stat().st_mode & 0o111
    # a later run with fewer valid cells removes the child specs it no longer lists
    r2, _ = run(SCHEDULED + "ablation: {axes: {loss.alpha.end: [0.3]}}", file=str(tmp_path / "base.yaml"))
    write_out(r2, out)
    assert sorted(p.name for p in out.glob("*.yaml")) == ["quickstart-a03.yaml"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_results_files(tmp_path):
    (tmp_path / "a.csv").write_text("quickstart-a03,1.5\nquickstart-a07,2\n")  # no header: name, metric
    (tmp_path / "b.csv").write_text("run,status,metric\nx,done,0.25\n")  # other columns are ignored
    (tmp_path / "c.json").write_text('[{"name": "x", "metric": 3}]')
    (tmp_path / "d.json").write_text('{"x": "oops"}')
    assert read_results(tmp_path / "a.csv") == {"quickstart-a03": 1.5, "quickstart-a07": 2.0}
    assert read_results(tmp_path / "b.csv") == {"x": 0.25}
    assert read_results(tmp_path / "c.json") == {"x": 3.0}
    with pytest.raises(StrategyError, match="not a number"):
        read_results(tmp_path / "d.json")
    with pytest.raises(StrategyError, match="cannot read"):
        read_results(tmp_path / "missing.csv")


def test_example_spec_ablates_and_validates():
    root = Path(__file__).resolve().parent.parent
    loaded = load_file(root / "specs" / "ablation-example.yaml")
    assert check_loaded(loaded).ok
    r = ablate(loaded)
    assert r.ok and r.count("valid") >= 1


def test_forked_workers_give_the_sequential_answer():
    """Run in a fresh interpreter: the forked workers are the compiler's, which never imports jax,
    but a pytest worker may have imported it for an earlier runtime test (forking a process with
    jax's threads can deadlock)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = f"""
import json, sys
from tests.test_ablate import SCHEDULED, run
axes = ("loss.alpha.end=0.3,0.5,0.7", "loss.beta.end=0.0,0.5", "loss.beta.start=0.0,1.0",
        "loss.layers.strategy=evenly_spaced,first_n,top_heavy", "train.learning_rate=1.0e-3,3.0e-3")
one, _ = run(SCHEDULED, *axes, parallel=False, target="maxtext")  # DC120 prunes for MaxText
many, _ = run(SCHEDULED, *axes, parallel=True, target="maxtext")
assert "jax" not in sys.modules
print(json.dumps({{"one": [c.to_json() for c in one.cells], "many": [c.to_json() for c in many.cells]}}))
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["many"] == out["one"]
    assert {c["status"] for c in out["one"]} == {"valid", "pruned", "duplicate"}


# ---------------------------------------------------------------- review fixes


def _stage_names(r):
    return [(c.name, c.status, c.result) for c in r.cells]


def test_staged_values_that_do_not_apply_stay_out_of_names_and_ran_cells_are_not_rerun(tmp_path):
    # stage 1 and 2 of specs/ablation-example.yaml ran; stage 3 (layers) lists count 8 with
    # straddle_pruned, which has no count: that cell is the stage-2 winner, already run
    loaded = load_file(LLAMA)
    s1 = ablate(loaded)
    assert all("-n8" not in c.name for c in s1.cells)
    res = {"llama31-a07": 2.0, "llama31-a03": 2.5}
    s2 = ablate(loaded, (), Options(results=res))
    assert s2.stage.group.name == "beta"
    res["llama31-a07-b001"] = 1.5
    s3 = ablate(loaded, (), Options(results=res))
    assert s3.stage.group.name == "layers"
    assert _stage_names(s3) == [
        ("llama31-a07-b001-leven-n8", "valid", None),
        ("llama31-a07-b001-lfirst-n8", "valid", None),
        ("llama31-a07-b001", "valid", 1.5),  # straddle_pruned: the stage-2 winner, already run
    ]


def test_a_cell_with_the_plan_of_a_cell_that_already_ran_is_its_duplicate():
    # alpha.end 0.9 = its start: the schedule cannot move, so stage 2's shapes are stage 1's winner
    frag = ("loss: {alpha: {start: 0.9, end: 0.5, schedule: cosine}}\n"
            "ablation: {strategy: staged, axes: {loss.alpha.end: [0.9, 0.5], loss.alpha.schedule: [cosine, linear]}}")
    r1, _ = run(frag)
    assert [c.name for c in r1.cells] == ["quickstart-a09", "quickstart-base"]
    r2, _ = run(frag, results={"quickstart-a09": 1.0, "quickstart-base": 2.0})
    assert r2.stage.group.name == "schedules"
    assert [(c.name, c.status, c.duplicate_of, c.result) for c in r2.cells] == [
        ("quickstart-a09", "valid", None, 1.0),
        ("quickstart-a09-alin", "duplicate", "quickstart-a09", 1.0),
    ]
    assert "already ran" in r2.cells[1].reason


def test_layer_choices_with_beta_0_are_duplicates_not_pruned():
    r, _ = run("", "loss.layers.strategy=evenly_spaced,first_n,top_heavy")  # quickstart: beta 0
    assert [c.status for c in r.cells] == ["valid", "duplicate", "duplicate"]
    assert {c.duplicate_of for c in r.cells[1:]} == {r.cells[0].name}
    assert "layers" not in (r.evaluator.cell_data(r.cells[0].draft).get("loss") or {})  # the child validates


def test_a_strategy_that_needs_a_count_carries_the_base_count_or_says_why_not():
    frag = SCHEDULED.replace("{strategy: evenly_spaced, count: 1}", "{strategy: explicit, indices: [0]}")
    r, _ = run(frag, "loss.layers.strategy=explicit,first_n")
    assert [c.status for c in r.cells] == ["valid", "pruned"]
    assert r.cells[1].code == "DC012" and "add it to the base's loss.layers or as an axis" in r.cells[1].reason
    r, _ = run(SCHEDULED, "loss.layers.strategy=evenly_spaced,first_n")  # the base's count 1 carries over
    assert [c.status for c in r.cells] == ["valid", "valid"]


def test_a_base_error_no_axis_fixes_is_reported_once():
    r, _ = run("name: " + "x" * 41, "loss.alpha=0.5,0.7")
    assert r.cells == () and not r.ok and [d.code for d in r.diagnostics] == ["DC161"]


def test_best_names_that_are_no_cell_are_a_warning():
    frag = "ablation: {strategy: staged, axes: {loss.alpha: [0.5, 0.7], train.steps: [100]}}"
    r, _ = run(frag, results={"quickstart-a05": 1.0, "typo-cell": 2.0})
    assert any(n.startswith("warning:") and "typo-cell" in n and "quickstart-a05" not in n for n in r.notes)


def test_samples_imply_random_and_max_cells_counts_the_sample():
    axes = ("loss.alpha=0.1,0.2,0.3,0.4,0.5,0.6", "train.steps=100,200,300,400,500,600")
    r, _ = run("", *axes, samples=5, seed=1, max_cells=10)
    assert r.strategy == "random" and len(r.cells) == 5 and r.ok
    assert any("--strategy random" in n for n in r.notes)
    r, _ = run("", *axes, strategy="random", samples=20, max_cells=10)
    assert [d.code for d in r.diagnostics] == ["DC173"] and "has 20 cells" in r.diagnostics[0].message


def _fake_distillc(tmp_path: Path) -> tuple[dict, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "argv.log"
    fake = bin_dir / "distillc"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s|" "$@" >> {shlex.quote(str(log))}\necho >> {shlex.quote(str(log))}\n')
    fake.chmod(0o755)
    import os

    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, log


def test_launch_script_dry_runs_or_executes_on_the_cluster(tmp_path):
    import subprocess

    frag = SCHEDULED + "ablation: {axes: {loss.alpha.end: [0.3, 0.5]}}"
    env, log = _fake_distillc(tmp_path)
    r, _ = run(frag, file=str(tmp_path / "base.yaml"))
    write_out(r, tmp_path / "with", cluster="big")
    script = tmp_path / "with" / LAUNCH
    assert subprocess.run(["bash", str(script)], env=env).returncode == 0
    assert subprocess.run(["bash", str(script), "--execute"], env=env).returncode == 0
    assert log.read_text().splitlines() == [
        "launch|quickstart-a03.yaml|--cluster|big|",
        "launch|quickstart-base.yaml|--cluster|big|",
        "launch|quickstart-a03.yaml|--cluster|big|--execute|",
        "launch|quickstart-base.yaml|--cluster|big|--execute|",
    ]
    log.unlink()
    write_out(r, tmp_path / "without")
    script = tmp_path / "without" / LAUNCH
    p = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert p.returncode == 2 and "usage:" in p.stderr and "CLUSTER" in p.stderr and not log.exists()
    assert subprocess.run(["bash", str(script), "--execute"], env=env, capture_output=True).returncode == 2
    assert subprocess.run(["bash", str(script), "c 1", "--execute"], env=env).returncode == 0
    assert log.read_text().splitlines()[0] == "launch|quickstart-a03.yaml|--cluster|c 1|--execute|"


def test_out_refuses_a_directory_ablate_did_not_write(tmp_path):
    from distillc.compiler.ablation.output import NotAblateOutput

    r, _ = run(SCHEDULED + "ablation: {axes: {loss.alpha.end: [0.3]}}", file=str(tmp_path / "base.yaml"))
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(NotAblateOutput, match="not the output of `distillc ablate`"):
        write_out(r, other)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    out = tmp_path / "out"
    write_out(r, out)
    write_out(r, out)  # its own earlier output is replaced
    assert json.loads((out / INDEX).read_text())["generator"] == "distillc ablate"


# ---------------------------------------------------------------- hostile input


def test_a_newline_in_a_path_cannot_end_a_comment_of_launch_all(tmp_path):
    # the "already run" line is a comment: a quoted --clusters path with a newline must not end it
    import subprocess

    frag = SCHEDULED + "ablation: {strategy: staged, axes: {loss.alpha.end: [0.3, 0.5], train.learning_rate: [1.0e-3, 3.0e-3]}}"
    env, log = _fake_distillc(tmp_path)
    r, _ = run(frag, file=str(tmp_path / "b\ntouch PWN #.yaml"), results={"quickstart-a03": 1.0, "quickstart-base": 2.0})
    assert [(c.name, c.result) for c in r.cells] == [("quickstart-a03-lr0001", None), ("quickstart-a03", 1.0)]
    clusters = tmp_path / "c\ntouch PWN2 #" / "clusters.yaml"
    write_out(r, tmp_path / "out", cluster="big", clusters_file=clusters)
    script = (tmp_path / "out" / LAUNCH).read_text()
    assert "/b\\ntouch PWN #.yaml: `distillc launch`" in script.splitlines()[1]
    p = subprocess.run(["bash", str(tmp_path / "out" / LAUNCH)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert not list(tmp_path.rglob("PWN*"))
    assert log.read_text() == f"launch|quickstart-a03-lr0001.yaml|--clusters|{clusters}|--cluster|big|\n"  # the path intact
    child = (tmp_path / "out" / "quickstart-a03.yaml").read_text()
    assert child.startswith("# Generated by `distillc ablate` from ") and "b\\ntouch PWN #.yaml" in child.splitlines()[0]
    assert check_loaded(load_text(child)).ok


def test_a_spec_path_that_is_not_utf8_is_written_out(tmp_path):
    r, _ = run(SCHEDULED + "ablation: {axes: {loss.alpha.end: [0.3]}}", file=str(tmp_path) + "/b\udcff.yaml")
    write_out(r, tmp_path / "out")
    assert json.loads((tmp_path / "out" / INDEX).read_text())["base"].endswith("b\udcff.yaml")
    assert "b\\udcff.yaml" in (tmp_path / "out" / LAUNCH).read_text().splitlines()[1]


HOSTILE = "gs://b/x\nmaxtext: {base_config: evil.yml}\n#"


@pytest.mark.parametrize("where", ["cli", "spec"])
def test_a_newline_in_an_axis_value_stays_in_the_value(tmp_path, where):
    if where == "cli":
        r, _ = run("", "teacher.checkpoint=" + json.dumps(HOSTILE) + ",gs://b/y")
    else:
        r, _ = run("ablation: {axes: {teacher.checkpoint: [" + json.dumps(HOSTILE) + ", gs://b/y]}}")
    assert r.ok and [c.status for c in r.cells] == ["valid", "valid"]
    write_out(r, tmp_path / "out")
    from distillc.compiler.ablation.output import table

    assert not [line for line in table(r).splitlines() if line.startswith("maxtext")]
    for c in r.cells:
        text = (tmp_path / "out" / f"{c.name}.yaml").read_text()
        head = text.splitlines()[:2]
        assert all(line.startswith("# ") for line in head) and text.splitlines()[2] == "version: 1"
        data = yaml.safe_load(text)
        assert "maxtext" not in data and data["teacher"]["checkpoint"] == c.values["teacher.checkpoint"]
    first = (tmp_path / "out" / f"{r.cells[0].name}.yaml").read_text()
    assert "# Values: teacher.checkpoint=gs://b/x\\nmaxtext: {base_config: evil.yml}\\n#" in first


@pytest.mark.parametrize("key,value", [("loss.alpha.end", ".inf"), ("loss.alpha.end", "-.inf"), ("loss.alpha.end", ".nan"),
                                       ("train.learning_rate", "1e999"), ("loss.alpha.end", "'inf'"), ("train.steps", "9" * 400)])
def test_non_finite_values_in_ablation_axes_are_dc171_at_the_value(key, value):
    # 1e999 and 'inf' are strings to a YAML 1.1 loader, floats (inf) to the spec language's types
    r, text = run(f"ablation: {{axes: {{{key}: [{value}, 1], loss.temperature.start: [2.0]}}}}")
    assert not r.ok and r.cells == ()
    (d,) = r.diagnostics
    assert d.code == "DC171" and "not a finite number" in d.message and d.message.startswith(f"{key}: ")
    assert dotted(d.path) == f"ablation.axes.{key}[0]" and d.span.line == line_of(text, f"{key}:") + 1


@pytest.mark.parametrize("axis", ["loss.alpha.end=.inf", "loss.alpha.end=0.5,1e999", "loss.alpha.end=.nan",
                                  "train.learning_rate=1e999"])
def test_non_finite_axis_options_are_a_usage_error(axis):
    key = axis.partition("=")[0]
    with pytest.raises(StrategyError, match=f"^--axis {key}: value .* is not a finite number"):
        run("", axis)


def test_best_refuses_repeats_infinities_and_an_unknown_header(tmp_path):
    cases = {
        "dup.csv": ("name,metric\na,1\na,2\n", "'a' is listed twice"),
        "dup.json": ('{"a": 1, "a": 2}', "'a' is listed twice"),
        "dup-list.json": ('[{"name": "a", "metric": 1}, {"name": "a ", "metric": 2}]', "'a' is listed twice"),
        "inf.csv": ("name,metric\na,inf\n", "metric of 'a' is infinite"),
        "minus-inf.json": ('{"a": -Infinity}', "metric of 'a' is infinite"),
        "nan.csv": ("name,metric\na,nan\n", "metric of 'a' is NaN"),
        "odd-header.csv": ("foo,bar\na,1\n", "the header needs a name column"),
        "scalar.json": ("5", "expected {name: metric}"),
        "binary.csv": (b"name,metric\n\xff\xfe,1\n", "not UTF-8 text (byte 12)"),
        "utf16.csv": ("name,metric\na,1\n".encode("utf-16"), "not UTF-8 text"),
        "nul.csv": ("name,metric\na\x00,1\n", "looks like a binary file"),
        "deep.json": ("[" * 100_000, "nests too deeply"),
        "big.csv": ("name,metric\n" + "a,1\n" * 300_000, "too large"),
    }
    for file, (content, message) in cases.items():
        path = tmp_path / file
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(StrategyError, match=f"^--best {path}: .*{re.escape(message)}"):
            read_results(path)
    with pytest.raises(StrategyError, match="not a regular file"):
        read_results("/dev/zero")
