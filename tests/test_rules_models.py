"""DC10x: the teacher/student pair, vocabulary, size and pruning. One class per rule."""

from __future__ import annotations

from tests.conftest import at, check_text, codes, find, spec_text, where

TINY_INLINE = "{num_layers: 2, emb_dim: 64, num_heads: 2, num_kv_heads: 2, head_dim: 32, mlp_dim: 256, vocab_size: %d, tokenizer: %s%s}"


LLAMA_TOK = "data:\n  tokenizer: /data/tok.model\n"


class TestDC100RuntimeCannotBuild:
    def test_fails_moe_teacher_at_its_model(self):
        text = spec_text("teacher: {model: mixtral-8x7b}\nstudent: {model: mistral-7b}\n" + LLAMA_TOK)
        d = find(check_text(text), "DC100")
        assert where(d) == at(text, "teacher:", "mixtral-8x7b")
        assert d.path == ("teacher", "model") and d.is_error
        assert "--target maxtext" in d.hint

    def test_fails_mla_on_both_sides(self):
        text = spec_text("teacher: {model: deepseek3-671b}\nstudent: {model: deepseek2-16b}\n" + LLAMA_TOK)
        hits = [d for d in check_text(text).diagnostics if d.code == "DC100"]
        assert [d.path for d in hits] == [("teacher", "model"), ("student", "model")]
        assert "attention 'mla'" in hits[0].message

    def test_fails_a_family_not_built_exactly(self, monkeypatch):
        from distillc.runtime import arch

        monkeypatch.setitem(arch.NOT_EXACT_FAMILIES, "gemma", "GeGLU (pretend)")
        text = spec_text("teacher: {model: gemma-7b}\nstudent: {model: gemma-2b}\n" + LLAMA_TOK)
        hits = [d for d in check_text(text).diagnostics if d.code == "DC100"]
        assert [d.path for d in hits] == [("teacher", "model"), ("student", "model")]
        assert "family 'gemma' exactly" in hits[0].message and "GeGLU (pretend)" in hits[0].message

    def test_passes_the_exact_families(self):
        for pair in (("llama3.1-8b", "llama3.2-1b"), ("qwen2.5-7b", "qwen2.5-1.5b"), ("qwen3-8b", "qwen3-0.6b"), ("gemma-7b", "gemma-2b"),
                     ("gemma2-27b", "gemma2-2b"), ("gemma3-27b", "gemma3-4b")):
            text = spec_text("teacher: {model: %s}\nstudent: {model: %s}\n" % pair + LLAMA_TOK)
            assert "DC100" not in codes(check_text(text)), pair

    def test_passes_for_the_maxtext_target(self):
        text = spec_text("teacher: {model: mixtral-8x7b}\nstudent: {model: mistral-7b}\n" + LLAMA_TOK)
        assert "DC100" not in codes(check_text(text, target="maxtext"))

    def test_passes_dense_global_models(self):
        assert "DC100" not in codes(check_text(spec_text()))


class TestDC148PrunedPattern:
    def test_fails_a_gemma3_layer_out_of_its_group(self):
        text = spec_text("teacher: {model: gemma3-4b}\nstudent: {model: gemma3-4b, pruned_layers: [0]}\n" + LLAMA_TOK)
        d = find(check_text(text), "DC148")
        assert d.path == ("student", "pruned_layers") and d.is_error
        # teacher layer 5 (global) becomes student layer 4, which the 5:1 pattern makes local
        assert "student layer 4 is teacher layer 5 (global)" in d.message

    def test_fails_for_the_maxtext_target_too(self):
        text = spec_text("teacher: {model: gemma2-9b}\nstudent: {model: gemma2-9b, pruned_layers: [4]}\n" + LLAMA_TOK)
        assert "DC148" in codes(check_text(text, target="maxtext"))

    def test_passes_whole_repeats(self):
        for model, pruned in (("gemma2-9b", "[40, 41]"), ("gemma3-4b", "[6, 7, 8, 9, 10, 11]"), ("llama3.1-8b", "[3]")):
            text = spec_text("teacher: {model: %s}\nstudent: {model: %s, pruned_layers: %s}\n" % (model, model, pruned)
                             + LLAMA_TOK)
            assert "DC148" not in codes(check_text(text)), model


class TestDC101TokenizerMismatch:
    def test_fails_on_equal_vocab_size_different_tokenizer(self):
        # llama2-7b and mistral-7b both have 32000 tokens and different tokenizers
        text = spec_text("teacher: {model: llama2-7b}\nstudent: {model: mistral-7b}\n" + LLAMA_TOK)
        d = find(check_text(text), "DC101")
        assert where(d) == at(text, "student:", "mistral-7b")
        assert d.path == ("student", "model")

    def test_fails_on_inline_tokenizer(self):
        text = spec_text("student:\n  model: " + TINY_INLINE % (256, "other-bytes", "") + "\n")
        d = find(check_text(text), "DC101")
        assert where(d) == at(text, "student:", "model:", "num_layers")

    def test_passes_padded_qwen_pair(self):
        # qwen2.5-7b (152064 rows) and qwen2.5-1.5b (151936) share 151665 real tokens: valid
        text = spec_text("teacher: {model: qwen2.5-7b}\nstudent: {model: qwen2.5-1.5b}\n" + LLAMA_TOK)
        got = codes(check_text(text))
        assert "DC101" not in got and "DC102" not in got

    def test_passes_same_tokenizer(self):
        assert "DC101" not in codes(check_text(spec_text("")))


class TestDC102RealVocab:
    def test_fails(self):
        text = spec_text("student:\n  model: " + TINY_INLINE % (384, "byte", "") + "\n")
        d = find(check_text(text), "DC102")
        assert where(d) == at(text, "student:", "model:", "num_layers")

    def test_passes_with_declared_padding(self):
        text = spec_text("student:\n  model: " + TINY_INLINE % (384, "byte", ", real_vocab_size: 256") + "\n")
        assert "DC102" not in codes(check_text(text))


class TestDC103StudentLarger:
    def test_fails(self):
        text = spec_text("teacher: {model: llama3.1-8b}\nstudent: {model: llama3.1-70b}\n" + LLAMA_TOK)
        d = find(check_text(text), "DC103")
        assert where(d) == at(text, "student:", "llama3.1-70b")

    def test_passes_compression(self):
        text = spec_text("teacher: {model: llama3.1-70b}\nstudent: {model: llama3.1-8b}\n" + LLAMA_TOK)
        assert "DC103" not in codes(check_text(text))

    def test_passes_same_size(self):
        assert "DC103" not in codes(check_text(spec_text("student: {model: tiny-teacher}")))


class TestDC104TeacherPruned:
    def test_fails(self):
        text = spec_text("teacher: {pruned_layers: [1]}")
        d = find(check_text(text), "DC104")
        assert where(d) == at(text, "teacher:", "pruned_layers:")

    def test_passes(self):
        assert "DC104" not in codes(check_text(spec_text("student: {model: tiny-teacher, pruned_layers: [1]}")))


class TestDC105PrunedOutOfRange:
    def test_fails(self):
        text = spec_text("student: {model: tiny-teacher, pruned_layers: [0, 5]}")
        checked = check_text(text)
        d = find(checked, "DC105")
        assert where(d) == at(text, "pruned_layers:", "- 5", "5")
        assert d.path == ("student", "pruned_layers", 1)
        # the student's depth is unknown: rules about it are skipped, not cascaded
        assert codes(checked) == ["DC105"]

    def test_fails_negative(self):
        text = spec_text("student: {model: tiny-teacher, pruned_layers: [-1]}")
        assert where(find(check_text(text), "DC105")) == at(text, "pruned_layers:", "-1")

    def test_passes(self):
        assert "DC105" not in codes(check_text(spec_text("student: {model: tiny-teacher, pruned_layers: [1]}")))


class TestDC106PrunedDuplicate:
    def test_fails(self):
        text = spec_text("student: {model: llama3.1-8b, pruned_layers: [14, 15, 14]}\nteacher: {model: llama3.1-8b}\n" + LLAMA_TOK)
        d = find(check_text(text), "DC106")
        assert where(d) == at(text, "pruned_layers:", "- 15", "- 14", "14")
        assert d.path == ("student", "pruned_layers", 2)

    def test_passes(self):
        text = spec_text("student: {model: llama3.1-8b, pruned_layers: [14, 15]}\nteacher: {model: llama3.1-8b}\n" + LLAMA_TOK)
        assert "DC106" not in codes(check_text(text))


class TestDC107PrunedOtherModel:
    def test_fails(self):
        text = spec_text("student: {pruned_layers: [1]}")
        d = find(check_text(text), "DC107")
        assert where(d) == at(text, "student:", "pruned_layers:")

    def test_fails_straddle_on_other_model(self):
        text = spec_text("student: {pruned_layers: [1]}\nloss: {layers: {strategy: straddle_pruned}}")
        assert "DC107" in codes(check_text(text))

    def test_passes_same_inline_model(self):
        arch = "{num_layers: 4, emb_dim: 64, num_heads: 2, num_kv_heads: 2, head_dim: 32, mlp_dim: 256, vocab_size: 256, tokenizer: byte}"
        text = spec_text(f"teacher: {{model: {arch}}}\nstudent: {{model: {arch}, pruned_layers: [2]}}")
        assert "DC107" not in codes(check_text(text))


class TestDC108PrunedEverything:
    def test_fails(self):
        text = spec_text("student: {model: tiny-teacher, pruned_layers: [1, 0]}")
        d = find(check_text(text), "DC108")
        assert where(d) == at(text, "student:", "pruned_layers:")

    def test_passes(self):
        assert "DC108" not in codes(check_text(spec_text("student: {model: tiny-teacher, pruned_layers: [0]}")))


class TestDC109StraddleNeedsPruned:
    def test_fails(self):
        text = spec_text("loss: {layers: {strategy: straddle_pruned}}")
        d = find(check_text(text), "DC109")
        assert where(d) == at(text, "layers:", "strategy:", "straddle_pruned")

    def test_passes(self):
        text = spec_text("student: {model: tiny-teacher, pruned_layers: [1]}\nloss: {beta: 1.0, layers: {strategy: straddle_pruned}}")
        assert "DC109" not in codes(check_text(text))
