"""DC15x: mesh, accelerator and memory, and the memory estimate itself (compiler/memory.py)."""

from __future__ import annotations

import math
import re

import pytest

from tests.conftest import ROOT, at, check_text, codes, find, spec_text, where

CLUSTER = "teacher: {checkpoint: gs://b/teacher/0/items}\ntrain: {output_dir: gs://b/runs}\n"
LLAMA = "data: {tokenizer: gs://b/llama3/tokenizer.model, seq_len: 4096, global_batch_size: %d}\n"


def cluster(fragment: str) -> str:
    return spec_text(fragment, base=spec_text(CLUSTER))


class TestDC150MeshDevices:
    def test_fails_product(self):
        # v5p-8 is 4 chips (the name counts TensorCores)
        text = cluster("resources: {accelerator: v5p-8}\nruntime: {mesh: {data: 2, fsdp: 4, tensor: 1}}")
        d = find(check_text(text), "DC150")
        assert where(d) == at(text, "mesh:", "data:")
        assert "8" in d.message and "4" in d.message

    def test_fails_rest_does_not_divide(self):
        text = cluster("resources: {accelerator: v5p-8}\nruntime: {mesh: {data: -1, fsdp: 3}}")
        assert find(check_text(text), "DC150").path == ("runtime", "mesh")

    def test_fails_zero_axis(self):
        text = cluster("runtime: {mesh: {fsdp: 0}}")
        d = find(check_text(text), "DC150")
        assert where(d) == at(text, "fsdp:", "0")

    def test_passes_multi_slice(self):
        text = cluster("resources: {accelerator: v5p-8, num_slices: 2}\nruntime: {mesh: {data: 2, fsdp: 4, tensor: 1}}")
        assert "DC150" not in codes(check_text(text))


    def test_fsdp_rest_takes_every_device(self):
        from distillc.compiler.memory import MeshShape, resolve_mesh

        assert resolve_mesh(1, -1, 1, 64) == MeshShape(1, 64, 1)
        assert resolve_mesh(2, -1, 2, 16) == MeshShape(2, 4, 2)
        assert resolve_mesh(-1, -1, 1, 8) is None
        assert resolve_mesh(3, -1, 1, 8) is None
        for acc in ("v5p-8", "v5p-128", "v6e-8"):
            text = cluster(f"resources: {{accelerator: {acc}}}\nruntime: {{mesh: {{data: 1, fsdp: -1, tensor: 1}}}}")
            assert "DC150" not in codes(check_text(text)), acc

    def test_fails_both_rest(self):
        text = cluster("resources: {accelerator: v5p-8}\nruntime: {mesh: {data: -1, fsdp: -1, tensor: 1}}")
        d = find(check_text(text), "DC150")
        assert "both -1" in d.message and d.path == ("runtime", "mesh", "fsdp")

    def test_fails_fsdp_rest_does_not_divide(self):
        text = cluster("resources: {accelerator: v5p-8}\nruntime: {mesh: {data: 3, fsdp: -1, tensor: 1}}")
        assert "fsdp: -1 takes the rest" in find(check_text(text), "DC150").message

    def test_fails_negative_fsdp_other_than_rest(self):
        text = cluster("resources: {accelerator: v5p-8}\nruntime: {mesh: {data: 1, fsdp: -2, tensor: 1}}")
        assert "fsdp is -2" in find(check_text(text), "DC150").message


class TestDC151BatchDivisible:
    def test_fails(self):
        text = cluster("resources: {accelerator: v5p-8}\ndata: {global_batch_size: 6}")
        d = find(check_text(text), "DC151")
        assert where(d) == at(text, "global_batch_size:", "6")

    def test_tensor_axis_does_not_split_the_batch(self):
        text = cluster("resources: {accelerator: v5p-8}\nruntime: {mesh: {data: 1, fsdp: 2, tensor: 2}}\ndata: {global_batch_size: 6}")
        assert "DC151" not in codes(check_text(text))

    def test_passes(self):
        assert "DC151" not in codes(check_text(cluster("resources: {accelerator: v5p-8}\ndata: {global_batch_size: 8}")))


def _gib_needed(message: str) -> float:
    return float(re.search(r"needs an estimated ([0-9.]+) GiB", message).group(1))


class TestDC152MemoryFit:
    def test_fails_405b_teacher_on_v5p_8(self):
        text = cluster(
            "teacher: {model: llama3.1-405b}\nstudent: {model: llama3.1-8b}\n"
            + LLAMA % 32
            + "runtime: {mesh: {data: 1, fsdp: 4}}\nresources: {accelerator: v5p-8}"
        )
        d = find(check_text(text), "DC152")
        assert where(d) == at(text, "accelerator:", "v5p-8")
        # 405B parameters in bfloat16 over 4 chips alone are ~189 GiB per chip
        assert _gib_needed(d.message) > 189
        assert "85.5 GiB usable" in d.message

    def test_passes_70b_to_8b_on_v5p_128(self):
        text = cluster(
            "teacher: {model: llama3.1-70b}\nstudent: {model: llama3.1-8b}\n"
            + LLAMA % 128
            + "runtime: {mesh: {data: -1, fsdp: 64}}\nresources: {accelerator: v5p-128}"
        )
        assert "DC152" not in codes(check_text(text))

    def test_fsdp_is_the_fix(self):
        # the same run with weights replicated (fsdp 1) does not fit
        text = cluster(
            "teacher: {model: llama3.1-70b}\nstudent: {model: llama3.1-8b}\n"
            + LLAMA % 128
            + "runtime: {mesh: {data: -1, fsdp: 1}}\nresources: {accelerator: v5p-128}"
        )
        assert "DC152" in codes(check_text(text))

    def test_offline_checks_each_stage(self):
        text = cluster(
            "mode: offline\noffline: {top_k: 64, data_dir: gs://b/topk}\n"
            "teacher: {model: llama3.1-405b}\nstudent: {model: llama3.1-8b}\n"
            + LLAMA % 32
            + "runtime: {mesh: {data: 1, fsdp: 4}}\nresources: {accelerator: v5p-8}"
        )
        d = find(check_text(text), "DC152")
        assert d.message.startswith("top-k capture")

    def test_fp32_teacher_costs_twice(self):
        # 70B + 8B on 4 chips fits with a bfloat16 teacher (~72 GiB), not with a float32 one (~105)
        base = cluster(
            "teacher: {model: llama3.1-70b}\nstudent: {model: llama3.1-8b}\n"
            "data: {tokenizer: gs://b/tok.model, seq_len: 2048, global_batch_size: 4}\n"
            "runtime: {mesh: {data: 1, fsdp: 4}}\nresources: {accelerator: v5p-8}"
        )
        assert "DC152" not in codes(check_text(base))
        fp32 = spec_text("teacher: {overrides: {weight_dtype: float32}}", base=base)
        assert "DC152" in codes(check_text(fp32))


class TestDC153CpuTooBig:
    def test_fails(self):
        text = spec_text("teacher: {model: llama3.1-8b}\nstudent: {model: llama3.2-1b}\ndata: {tokenizer: /t.model}")
        d = find(check_text(text), "DC153")
        assert where(d) == at(text, "accelerator:", "cpu")

    def test_passes(self):
        assert "DC153" not in codes(check_text(spec_text("")))


class TestDC154CpuSlices:
    def test_fails(self):
        text = spec_text("resources: {num_slices: 2}")
        d = find(check_text(text), "DC154")
        assert where(d) == at(text, "num_slices:", "2")

    def test_passes(self):
        assert "DC154" not in codes(check_text(spec_text("resources: {num_slices: 1}")))


class TestDC155TensorHeads:
    def test_fails(self):
        # v5p-24 is 12 chips: tensor 3 fits the mesh but not the tiny student's 2 heads
        text = cluster("resources: {accelerator: v5p-24}\nruntime: {mesh: {data: -1, fsdp: 1, tensor: 3}}\ndata: {global_batch_size: 16}")
        d = find(check_text(text), "DC155")
        assert where(d) == at(text, "tensor:", "3")

    def test_passes(self):
        text = cluster("resources: {accelerator: v5p-8}\nruntime: {mesh: {data: -1, fsdp: 1, tensor: 2}}")
        assert "DC155" not in codes(check_text(text))


# ---------------------------------------------------------------- the estimate itself


@pytest.fixture(scope="module")
def cat():
    from distillc.compiler.catalog import load_catalog

    return load_catalog()


def _est(cat, teacher, student, acc, mesh, seq=4096, batch=128, **kw):
    from distillc.compiler.memory import estimate_memory, resolve_mesh

    a = cat.accelerators[acc]
    m = resolve_mesh(*mesh, a.chips)
    return estimate_memory(
        cat.models.get(teacher), cat.models.get(student), accelerator=a, mesh=m, seq_len=seq, global_batch_size=batch, **kw
    )


class TestMemoryEstimate:
    def test_bytes_per_parameter(self, cat):
        e = _est(cat, "llama3.1-70b", "llama3.1-8b", "v5p-128", (1, 64, 1))
        t, s = cat.models["llama3.1-70b"].param_count(), cat.models["llama3.1-8b"].param_count()
        assert math.isclose(e.teacher_weights, 2 * t / 64)
        assert math.isclose(e.student_weights + e.student_grads + e.student_optimizer, 18 * s / 64)
        bf16 = _est(cat, "llama3.1-70b", "llama3.1-8b", "v5p-128", (1, 64, 1), student_dtype="bfloat16")
        assert math.isclose(bf16.student_weights + bf16.student_grads + bf16.student_optimizer, 12 * s / 64)
        fp32 = _est(cat, "llama3.1-70b", "llama3.1-8b", "v5p-128", (1, 64, 1), teacher_dtype="float32")
        assert math.isclose(fp32.teacher_weights, 2 * e.teacher_weights)

    def test_data_axis_replicates_weights(self, cat):
        e = _est(cat, "llama3.1-70b", "llama3.1-8b", "v5p-128", (64, 1, 1))
        assert math.isclose(e.teacher_weights, 2 * cat.models["llama3.1-70b"].param_count())

    def test_korthikanti_activations(self, cat):
        # one teacher layer (forward only) + the student's remat-full inputs + one student layer
        from distillc.compiler.memory import _layer_bytes

        e = _est(cat, "llama3.1-70b", "llama3.1-8b", "v5p-128", (1, 64, 1), seq=2048, batch=64)
        s, b = 2048, 1
        t, st = cat.models["llama3.1-70b"], cat.models["llama3.1-8b"]
        assert math.isclose(_layer_bytes(s, b, 4096, 32, 1), s * b * 4096 * (34 + 5 * 32 * s / 4096))
        want = _layer_bytes(s, b, t.emb_dim, t.num_heads, 1) + st.num_layers * 2 * s * b * st.emb_dim + _layer_bytes(s, b, st.emb_dim, st.num_heads, 1)
        assert math.isclose(e.activations, want)
        none = _est(cat, "llama3.1-70b", "llama3.1-8b", "v5p-128", (1, 64, 1), seq=2048, batch=64, remat="none")
        assert none.activations > e.activations

    def test_logits(self, cat):
        e = _est(cat, "llama3.1-70b", "llama3.1-8b", "v5p-128", (1, 64, 1), seq=1024, batch=64)
        assert math.isclose(e.logits, 3 * 1024 * 128256 * 4)

    def test_fits_and_breakdown(self, cat):
        ok = _est(cat, "llama3.1-70b", "llama3.1-8b", "v5p-128", (1, 64, 1))
        assert ok.fits and ok.total < ok.usable
        bad = _est(cat, "llama3.1-405b", "llama3.1-8b", "v5p-8", (1, 4, 1), batch=32)
        assert not bad.fits
        assert next(iter(bad.components())) == "teacher weights"
        assert "teacher weights" in bad.breakdown()

    def test_resolve_mesh(self):
        from distillc.compiler.memory import MeshShape, resolve_mesh

        assert resolve_mesh(-1, 8, 1, 64) == MeshShape(8, 8, 1)
        assert resolve_mesh(-1, 3, 1, 64) is None
        assert resolve_mesh(2, 2, 2, 9) is None
        assert resolve_mesh(0, 1, 1, 1) is None
        assert resolve_mesh(1, 0, 1, 1) is None


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (ROOT / "specs").glob("*.yaml") if p.name != "clusters.yaml")
)
def test_rule_and_plan_agree_on_memory(name):
    """DC152/DC153 and the resolver's plan use one estimate with the same defaults."""
    from distillc.compiler.check import check_loaded
    from distillc.compiler.loader import load_file
    from distillc.compiler.memory import estimate_spec
    from distillc.compiler.resolve import resolve_checked

    checked = check_loaded(load_file(ROOT / "specs" / name))
    ctx = checked.context
    mine = estimate_spec(ctx.spec, ctx.teacher_arch, ctx.student_arch, ctx.accelerator)
    plan = resolve_checked(checked).memory
    assert set(mine) == set(plan)
    for stage, est in mine.items():
        assert math.isclose(est.total, plan[stage].total), stage
