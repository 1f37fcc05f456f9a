"""Parsing loaded YAML into the typed spec: pydantic errors become positioned diagnostics."""

from __future__ import annotations

from tests.conftest import at, check_text, codes, find, spec_text, where


def test_base_is_clean():
    checked = check_text(spec_text(""))
    assert codes(checked) == []
    assert checked.spec.full() is not None


class TestUnknownKeys:
    def test_typo_in_a_section_points_at_the_key(self):
        text = spec_text("loss: {alpah: 0.5}")
        d = find(check_text(text), "DC010")
        assert where(d) == at(text, "alpah")
        assert d.path == ("loss", "alpah")
        assert "'alpha'" in d.hint

    def test_unknown_section(self):
        text = spec_text("trian: {steps: 3}")
        d = find(check_text(text), "DC010")
        assert where(d) == at(text, "trian:")
        assert "'train'" in d.hint

    def test_unknown_key_inside_a_schedule(self):
        text = spec_text("loss: {alpha: {start: 0.9, end: 0.5, schedule: cosine, ramp: 3}}")
        d = find(check_text(text), "DC010")
        assert d.path == ("loss", "alpha", "ramp")
        assert where(d) == at(text, "ramp:")

    def test_unknown_key_in_an_override(self):
        text = spec_text("student: {overrides: {weight_dtpye: float32}}")
        d = find(check_text(text), "DC010")
        assert d.path == ("student", "overrides", "weight_dtpye") and "'weight_dtype'" in d.hint


class TestValues:
    def test_bad_schedule_kind_suggests(self):
        text = spec_text("loss: {alpha: {start: 0.9, end: 0.5, schedule: cosin}}")
        d = find(check_text(text), "DC011")
        assert where(d) == at(text, "schedule:", "cosin")
        assert "'cosine'" in d.hint

    def test_bad_layer_strategy_suggests(self):
        text = spec_text("loss: {layers: {strategy: evenly, count: 3}}")
        d = find(check_text(text), "DC011")
        assert d.path == ("loss", "layers", "strategy") and "'evenly_spaced'" in d.hint

    def test_bad_mode(self):
        text = spec_text("mode: onlien")
        d = find(check_text(text), "DC011")
        assert where(d) == at(text, "mode:", "onlien") and "'online'" in d.hint

    def test_bound(self):
        text = spec_text("train: {steps: -3}")
        d = find(check_text(text), "DC011")
        assert where(d) == at(text, "steps:", "-3")

    def test_missing_required_key(self):
        text = spec_text("loss: {layers: {strategy: evenly_spaced}}")
        d = find(check_text(text), "DC012")
        assert d.path == ("loss", "layers", "count")

    def test_missing_required_section(self):
        text = spec_text("").replace("train:\n", "xtrain:\n")
        got = codes(check_text(text))
        assert "DC012" in got and "DC010" in got

    def test_not_a_mapping(self):
        assert codes(check_text("- a\n- b\n")) == ["DC011"]

    def test_version(self):
        text = spec_text("version: 2")
        d = find(check_text(text), "DC015")
        assert where(d) == at(text, "version:", "2")


class TestOneMistakeOneError:
    def test_sections_are_parsed_independently(self):
        # a typo in train does not hide the error in loss
        text = spec_text("train: {steps: abc}\nloss: {alpha: 3}")
        assert sorted(codes(check_text(text))) == ["DC011", "DC130"]

    def test_rules_needing_a_failed_section_are_skipped(self):
        # loss fails to parse: no schedule or feature rule runs on a half-parsed loss
        text = spec_text("loss: {alpha: {start: high, schedule: cosine}}")
        assert codes(check_text(text)) == ["DC011"]

    def test_an_unknown_key_does_not_hide_the_sections_other_mistakes(self):
        # the typo is reported, and the section without it still reaches the rules
        text = spec_text("loss: {alpha: {start: 0.9, schedule: cosine, bad: 1}}")
        assert sorted(codes(check_text(text))) == ["DC010", "DC135"]  # and: cosine needs an end
        text = spec_text("student: {model: mistral-7b, chekpoint: gs://b/c}")
        checked = check_text(text)
        assert "DC010" in codes(checked) and "DC101" in codes(checked)  # the tokenizer mismatch still shows
        assert not checked.ok  # a recovered section is still an error: nothing compiles from it

    def test_a_section_with_an_unknown_key_and_a_bad_value_fails(self):
        text = spec_text("train: {steps: abc, stepz: 3}")
        checked = check_text(text)
        assert sorted(codes(checked)) == ["DC010", "DC011"] and "train" in checked.spec.failed

    def test_unknown_model_skips_the_model_rules(self):
        text = spec_text("teacher: {model: llama3.1-8bb}")
        checked = check_text(text)
        assert codes(checked) == ["DC013"]
        d = checked.diagnostics[0]
        assert where(d) == at(text, "teacher:", "llama3.1-8bb") and "'llama3.1-8b'" in d.hint

    def test_unknown_accelerator(self):
        text = spec_text("resources: {accelerator: v5p-12}")
        d = find(check_text(text), "DC014")
        assert where(d) == at(text, "accelerator:", "v5p-12")


class TestScheduleForms:
    def test_bare_number_is_constant(self):
        checked = check_text(spec_text("loss: {alpha: 0.7}"))
        assert checked.spec.loss.alpha.schedule == "constant" and checked.spec.loss.alpha.start == 0.7

    def test_defaults_are_schedules_too(self):
        text = spec_text("").replace("loss:\n  alpha: 0.9\n  temperature: 1.0\n  beta: 0.0\n", "")
        checked = check_text(text)
        assert codes(checked) == []
        assert checked.spec.loss.beta.schedule == "constant" and checked.spec.loss.alpha.start == 0.5

    def test_piecewise(self):
        checked = check_text(spec_text("loss: {alpha: {schedule: piecewise, points: [[0, 0.9], [400, 0.5]]}}"))
        assert checked.spec.loss.alpha.points == [(0, 0.9), (400, 0.5)]

    def test_inline_architecture(self):
        arch = "{num_layers: 2, emb_dim: 64, num_heads: 2, num_kv_heads: 2, head_dim: 32, mlp_dim: 256, vocab_size: 256, tokenizer: byte}"
        checked = check_text(spec_text(f"student: {{model: {arch}}}"))
        assert codes(checked) == []
        assert checked.context.student_arch.emb_dim == 64


class TestUserWording:
    """pydantic's wording ("Input should be a valid dictionary or instance of Side") never leaks."""

    CASES = [
        ("loss: {alpha: true}", "DC011", ("loss", "alpha"), "expected a number or a mapping {start, end, schedule} (got true)"),
        # YAML 1.2: yes is a string, not true; refused all the same
        ("loss: {alpha: yes}", "DC011", ("loss", "alpha"), "expected a number or a mapping {start, end, schedule} (got 'yes')"),
        ("teacher: llama", "DC011", ("teacher",), "expected a mapping with key 'model' (teacher: {model: llama3.1-8b}) (got 'llama')"),
        ("loss: {alpha: {schedule: piecewise, points: [[0, 1.0, 2]]}}", "DC011", ("loss", "alpha", "points", 0), "a piecewise point is [step, value], e.g. [1000, 0.5]"),
        ("loss: {alpha: {schedule: piecewise, points: [5]}}", "DC011", ("loss", "alpha", "points", 0), "a piecewise point is [step, value], e.g. [1000, 0.5] (got 5)"),
        ("version: '1'", "DC015", ("version",), "version is the number 1, not the string '1': write `version: 1` without quotes"),
        ("version: 2", "DC015", ("version",), "unsupported spec version 2: this distillc reads version 1"),
        ("train: {steps: many}", "DC011", ("train", "steps"), "expected an integer (got 'many')"),
        ("train: {steps: 0}", "DC011", ("train", "steps"), "must be greater than 0 (got 0)"),
        ("data: {seq_len: 1.5}", "DC011", ("data", "seq_len"), "expected an integer, not a fraction (got 1.5)"),
        # strict: YAML's types are the spec's; the message says how to write the value
        ("data: {seq_len: 64.0}", "DC011", ("data", "seq_len"), "expected an integer: write 64, not 64.0 (got 64.0)"),
        ("data: {global_batch_size: true}", "DC011", ("data", "global_batch_size"), "expected an integer, not true/false (got true)"),
        ("train: {steps: '400'}", "DC011", ("train", "steps"), "expected an integer, not a string: write 400 without quotes (got '400')"),
        ("train: {learning_rate: '3e-4'}", "DC011", ("train", "learning_rate"), "expected a number, not a string: write 3e-4 without quotes (got '3e-4')"),
        # YAML 1.2 (the loader's rules): 1_000 is text, so "without quotes" would not fix it
        ("train: {steps: 1_000}", "DC011", ("train", "steps"), "expected an integer: write 1000 ('1_000' is text in YAML 1.2) (got '1_000')"),
        ("train: {learning_rate: 1_0.5}", "DC011", ("train", "learning_rate"), "expected a number: write 10.5 ('1_0.5' is text in YAML 1.2) (got '1_0.5')"),
        ("runtime: {scan_layers: yes}", "DC011", ("runtime", "scan_layers"), "expected true or false (got 'yes')"),
        ("train: {learning_rate: .inf}", "DC011", ("train", "learning_rate"), "expected a finite number (got inf)"),
        ("train: {learning_rate: 'nan'}", "DC011", ("train", "learning_rate"), "expected a finite number (got 'nan')"),
        ("runtime: {scan_layers: 1}", "DC011", ("runtime", "scan_layers"), "expected true or false (got 1)"),
        ("student: {model: 5}", "DC011", ("student", "model"), "expected a catalog model name (`distillc models`) or an inline architecture mapping (got 5)"),
        ("loss: {layers: 3}", "DC011", ("loss", "layers"), "expected a mapping with key 'strategy' (layers: {strategy: evenly_spaced, count: 4}) (got 3)"),
        ("student: {pruned_layers: 3}", "DC011", ("student", "pruned_layers"), "expected a list (got 3)"),
        ("data: {packing: maybe}", "DC011", ("data", "packing"), "expected true or false (got 'maybe')"),
    ]

    def test_messages(self):
        for fragment, code, path, message in self.CASES:
            got = [(d.code, d.path, d.message) for d in check_text(spec_text(fragment)).diagnostics]
            assert got == [(code, path, message)], fragment

    def test_no_pydantic_wording_anywhere(self):
        for fragment, *_ in self.CASES:
            for d in check_text(spec_text(fragment)).diagnostics:
                assert "Input should" not in d.message and "instance of" not in d.message
                assert "after validation" not in d.message and "True" not in d.message


def test_list_and_dict_defaults_are_not_shared():
    """The spec's literal [] / {} defaults are copied per instance (pydantic), never shared."""
    from distillc.compiler.spec import Ablation, Overrides, Side

    a, b = Side(model="llama3.1-8b"), Side(model="llama3.2-1b")
    assert a.pruned_layers == [] and a.pruned_layers is not b.pruned_layers
    assert Overrides().maxtext == {} and Overrides().maxtext is not Overrides().maxtext
    assert Ablation().axes is not Ablation().axes
