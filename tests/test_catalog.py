"""The catalogs (compiler/catalogs/*.yaml): loading, cited sources, and facts the rules rely on.

The facts asserted here are independent of the YAML (published shapes, xpk's naming rule), so a
typo in a catalog entry fails a test instead of silently skewing a memory estimate or a
vocabulary check.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict

import pytest

from distillc.compiler.catalog import _expand_accelerators, _tpu_size, load_catalog

CATALOG = load_catalog()
MODELS = CATALOG.models
ACCS = CATALOG.accelerators
REAL = {n: m for n, m in MODELS.items() if m.family != "tiny"}

MAXTEXT_NAMES = [
    "llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b", "llama3-70b", "llama3.1-8b", "llama3.1-70b",
    "llama3.1-405b", "llama3.3-70b", "gemma-2b", "gemma-7b", "gemma2-2b", "gemma2-9b", "gemma2-27b",
    "gemma3-4b", "gemma3-12b", "gemma3-27b", "mistral-7b", "mixtral-8x7b", "mixtral-8x22b",
    "qwen2.5-1.5b", "qwen2.5-7b", "qwen2.5-14b", "qwen3-0.6b", "qwen3-4b", "qwen3-8b", "qwen3-14b",
    "qwen3-32b", "qwen3-30b-a3b", "deepseek2-16b", "deepseek3-671b", "gpt-oss-20b", "gpt-oss-120b",
]


def shape_params(name: str) -> int:
    """param_count() from the shapes alone (the published figure removed)."""
    return MODELS[name].model_copy(update={"params": None}).param_count()


# ---------------------------------------------------------------- models


class TestModels:
    def test_counts_and_names(self):
        assert len(REAL) >= 20
        assert set(MAXTEXT_NAMES) <= set(REAL)
        assert {"tiny-teacher", "tiny-student", "tiny-student-xs"} <= set(MODELS)

    @pytest.mark.parametrize("name", sorted(MODELS))
    def test_every_entry_cites_a_source(self, name):
        assert MODELS[name].source.strip()

    @pytest.mark.parametrize("name", sorted(REAL))
    def test_real_entries_cite_hf_or_maxtext(self, name):
        src = REAL[name].source
        assert "configs/models/" in src or "HF " in src, src
        assert REAL[name].params, "real models carry their published parameter count"

    @pytest.mark.parametrize("name", sorted(MODELS))
    def test_heads_group_evenly(self, name):
        m = MODELS[name]
        assert m.num_heads % m.num_kv_heads == 0
        assert m.experts_per_token <= m.num_experts
        assert (m.real_vocab_size or m.vocab_size) <= m.vocab_size

    @pytest.mark.parametrize("name", sorted(REAL))
    def test_shapes_reproduce_the_published_count(self, name):
        """Dense, GQA and plain-MoE shapes give the published count within 2% (most exactly).

        MLA models (deepseek) are approximate: param_count() models neither MLA's low-rank
        projections (it overcounts attention) nor shared experts and the leading dense layers
        (it undercounts the MLP); the errors partly cancel, so only 15% is asserted for them.
        """
        m = REAL[name]
        tolerance = 0.15 if m.attention == "mla" else 0.02
        assert abs(shape_params(name) / m.params - 1) <= tolerance

    def test_exact_counts_where_published_exactly(self):
        """HF safetensors counts, reproduced to the parameter by the catalog's shapes."""
        assert shape_params("llama2-70b") == 68_976_648_192
        assert shape_params("llama3.1-8b") == 8_030_261_248
        assert shape_params("llama3.1-405b") == 405_853_388_800
        assert shape_params("mixtral-8x7b") == 46_702_792_704
        assert shape_params("qwen3-30b-a3b") == 30_532_122_624  # qwen3's q/k norms counted (qk_norm)
        assert shape_params("qwen2.5-7b") == 7_615_616_512  # q/k/v biases counted (attention_bias)
        # gemma2's 4 norms per layer counted (post_norms); MaxText pads 128 vocab rows.
        assert shape_params("gemma2-9b") == 9_241_705_984 + (256128 - 256000) * 3584


class TestTokenizers:
    def test_same_size_is_not_same_tokenizer(self):
        llama2, mistral, mixtral = MODELS["llama2-7b"], MODELS["mistral-7b"], MODELS["mixtral-8x7b"]
        assert llama2.vocab_size == mistral.vocab_size == mixtral.vocab_size == 32000
        assert llama2.tokenizer != mistral.tokenizer
        assert mistral.tokenizer == mixtral.tokenizer
        assert MODELS["mixtral-8x22b"].tokenizer != mixtral.tokenizer  # v3 tokenizer, 32768

    def test_qwen25_pair_shares_real_tokens(self):
        small, big = MODELS["qwen2.5-1.5b"], MODELS["qwen2.5-7b"]
        assert small.tokenizer == big.tokenizer
        assert small.vocab_size == 151936 and big.vocab_size == 152064
        assert small.real_vocab_size == big.real_vocab_size == small.shared_vocab == 151665

    def test_qwen3_extends_qwen25(self):
        q3, q25 = MODELS["qwen3-8b"], MODELS["qwen2.5-7b"]
        assert q3.tokenizer != q25.tokenizer
        assert q3.real_vocab_size == q25.real_vocab_size + 4  # tool_response pair, think pair

    def test_families_share_tokenizers(self):
        llama3 = {MODELS[n].tokenizer for n in ("llama3-8b", "llama3.1-70b", "llama3.2-1b", "llama3.3-70b")}
        assert len(llama3) == 1
        assert MODELS["gemma-7b"].tokenizer == MODELS["gemma2-9b"].tokenizer
        assert MODELS["gemma2-9b"].tokenizer != MODELS["gemma3-12b"].tokenizer
        assert MODELS["gemma2-2b"].shared_vocab == 256000 < MODELS["gemma2-2b"].vocab_size

    def test_one_tokenizer_one_real_vocabulary(self):
        """Equal tokenizer strings must mean equal token ids, so equal real vocabulary sizes."""
        real = defaultdict(set)
        for m in MODELS.values():
            real[m.tokenizer].add(m.shared_vocab)
        assert {t: v for t, v in real.items() if len(v) > 1} == {}


class TestLayerStructure:
    @pytest.mark.parametrize(
        "name, ratio, window",
        [("gemma2-2b", "1:1", 4096), ("gemma2-27b", "1:1", 4096), ("gemma3-4b", "5:1", 1024), ("gemma3-27b", "5:1", 1024),
         ("gpt-oss-20b", "1:1", 128)],
    )
    def test_interleaved_local_global(self, name, ratio, window):
        m = MODELS[name]
        assert (m.attention, m.local_global_ratio, m.sliding_window) == ("local_global", ratio, window)

    def test_deepseek_is_mla(self):
        assert {MODELS[n].attention for n in MODELS if n.startswith("deepseek")} == {"mla"}

    @pytest.mark.parametrize("name", sorted(MODELS))
    def test_window_fields_only_on_local_global(self, name):
        m = MODELS[name]
        interleaved = m.attention == "local_global"
        assert (m.local_global_ratio is not None) == interleaved
        assert (m.sliding_window is not None) == interleaved

    def test_gemma2_counts_real_layers(self):
        # MaxText's gemma2 configs count (local, global) pairs: 13 / 21 / 23.
        assert [MODELS[n].num_layers for n in ("gemma2-2b", "gemma2-9b", "gemma2-27b")] == [26, 42, 46]

    def test_moe_shapes(self):
        assert (MODELS["mixtral-8x7b"].num_experts, MODELS["mixtral-8x7b"].experts_per_token) == (8, 2)
        assert (MODELS["qwen3-30b-a3b"].num_experts, MODELS["qwen3-30b-a3b"].experts_per_token) == (128, 8)
        assert all(m.num_experts == m.experts_per_token == 1 for n, m in MODELS.items() if n.startswith("llama"))


class TestLocalModels:
    def test_tiny_shapes_unchanged(self):
        """Other code (quickstart spec, runtime tests) depends on these exact shapes."""
        def shape(n):
            m = MODELS[n]
            return (m.tokenizer, m.vocab_size, m.num_layers, m.emb_dim, m.num_heads, m.num_kv_heads, m.head_dim, m.mlp_dim)

        assert shape("tiny-teacher") == ("byte", 256, 2, 128, 4, 4, 32, 512)
        assert shape("tiny-student") == ("byte", 256, 2, 64, 2, 2, 32, 256)
        assert shape("tiny-student-xs") == ("byte", 256, 1, 32, 2, 2, 16, 128)

    def test_llama32_1b_is_a_llama3_student(self):
        m = MODELS["llama3.2-1b"]
        assert (m.num_layers, m.emb_dim, m.num_heads, m.num_kv_heads, m.head_dim, m.mlp_dim) == (16, 2048, 32, 8, 64, 8192)
        assert m.tie_embeddings and m.vocab_size == MODELS["llama3.1-8b"].vocab_size


# ---------------------------------------------------------------- accelerators


def topology_chips(topology: str) -> int:
    return math.prod(int(d) for d in topology.split("x"))


TPUS = {n: a for n, a in ACCS.items() if a.kind == "tpu"}
GPUS = {n: a for n, a in ACCS.items() if a.kind == "gpu"}


class TestAccelerators:
    @pytest.mark.parametrize(
        "name, chips, hosts, topology",
        [("v5p-8", 4, 1, "2x2x1"), ("v5p-128", 64, 16, "4x4x4"), ("v5p-12288", 6144, 1536, "16x16x24"),
         ("v5litepod-16", 16, 4, "4x4"), ("v5litepod-256", 256, 64, "16x16"), ("v6e-1", 1, 1, "1x1"),
         ("v6e-8", 8, 2, "2x4"), ("v6e-256", 256, 64, "16x16"), ("v4-8", 4, 1, "2x2x1"), ("v4-4096", 2048, 512, "8x16x16"),
         ("tpu7x-128", 64, 16, "4x4x4")],
    )
    def test_known_slices(self, name, chips, hosts, topology):
        a = ACCS[name]
        assert (a.chips, a.hosts, a.topology) == (chips, hosts, topology)

    def test_xpk_names_present(self):
        for name in ["v5litepod-8", "v5litepod-32", "v5litepod-64", "v5litepod-128", "v6e-4", "v6e-16", "v6e-32",
                     "v6e-64", "v6e-128", "v5p-16", "v5p-32", "v5p-64", "v5p-256", "v5p-512", "v5p-1024", "v5p-2048",
                     "v5p-4096", "v5p-8192", "v4-16", "v4-1024", "h100-80gb-8", "h100-mega-80gb-8", "h200-141gb-8",
                     "b200-8", "a100-40gb-8", "cpu"]:
            assert name in ACCS, name

    # The per-entry checks loop inside one test each (266 entries): the failure lists every bad name.
    def test_entry_invariants(self):
        flags = {"tpu": "tpu-type", "gpu": "device-type", "cpu": "none"}
        one_gpu = {n for n, a in GPUS.items() if a.local_only}  # local one-GPU entries: no xpk flag
        bad = [n for n, a in ACCS.items()
               if not a.source.strip() or a.chips != a.hosts * a.chips_per_host
               or a.flag != ("none" if n in one_gpu else flags[a.kind])]
        assert bad == [] and all(GPUS[n].chips == 1 for n in one_gpu)

    def test_one_gpu_device_types_for_local_runs(self):
        """A single-GPU machine names its GPU: the xpk one-GPU types, and one GPU of each 8-GPU type."""
        for name, gen in [("h100-80gb-1", "h100"), ("h200-141gb-1", "h200"), ("b200-1", "b200"),
                          ("a100-40gb-1", "a100"), ("l4-1", "l4")]:
            a = GPUS[name]
            assert (a.chips, a.generation) == (1, gen) and a.hbm_gib == GPUS[f"{name[:-2]}-8"].hbm_gib
        assert ACCS["cpu"].local_only and ACCS["h100-80gb-1"].local_only and not ACCS["h100-80gb-8"].local_only

    def test_tpu_names_count_cores(self):
        """xpk's rule: <prefix>-<chips * TensorCores per chip>; v4/v5p/tpu7x have 2, v5e/v6e 1."""
        bad = [n for n, a in TPUS.items()
               if topology_chips(a.topology) != a.chips
               or a.cores_per_chip != (2 if a.generation in ("v4", "v5p", "tpu7x") else 1)
               or int(n.rsplit("-", 1)[1]) != a.chips * a.cores_per_chip]
        assert len(TPUS) > 200 and bad == []

    def test_gpu_nodes(self):
        assert {"h100-80gb-8", "h100-mega-80gb-8", "h200-141gb-8", "b200-8", "a100-40gb-8"} <= set(GPUS)
        assert all(a.hosts == 1 and a.chips == a.chips_per_host for a in GPUS.values())
        assert GPUS["h100-80gb-8"].hbm_gib < 80 < GPUS["h200-141gb-8"].hbm_gib < 141

    def test_super_slicing_is_tpu7x_cubes(self):
        marked = {n for n, a in ACCS.items() if a.super_slicing}
        cubes = {n for n, a in TPUS.items() if a.generation == "tpu7x"
                 and all(int(d) % 4 == 0 for d in a.topology.split("x"))}
        assert "tpu7x-128" in marked and marked == cubes

    def test_usable_hbm(self):
        assert ACCS["v5p-128"].usable_hbm_bytes == pytest.approx(95 * 0.9 * 2**30)


class TestExpansion:
    GEN = {"kind": "tpu", "generation": "v5p", "name_format": "v5p-{count}", "cores_per_chip": 2, "chips_per_host": 4,
           "hbm_gib": 95, "peak_bf16_tflops": 459, "flag": "tpu-type", "source": "test"}

    def test_derives_from_topology(self):
        assert _tpu_size("4x4x8", self.GEN) == {"topology": "4x4x8", "chips": 128, "hosts": 32, "count": 256}
        accs = _expand_accelerators({"generations": [{**self.GEN, "topologies": ["2x2x1", "4x4x4"]}]})
        assert sorted(accs["entries"]) == ["v5p-128", "v5p-8"]
        assert accs["entries"]["v5p-128"] == {"_shared": 0, "topology": "4x4x4", "chips": 64, "hosts": 16, "name": "v5p-128"}

    def test_partial_host_is_an_error(self):
        with pytest.raises(ValueError, match="whole hosts"):
            _tpu_size("1x2", self.GEN)

    def test_duplicate_name_is_an_error(self):
        with pytest.raises(ValueError, match="listed twice"):
            _expand_accelerators({"generations": [{**self.GEN, "topologies": ["2x2x1", "2x2x1"]}]})


def test_matches_xpk_when_installed():
    """Every TPU/GPU entry agrees with xpk's table (runs where xpk 1.16 is importable)."""
    sc = pytest.importorskip("xpk.core.system_characteristics")
    table = sc.UserFacingNameToSystemCharacteristics
    for name, a in {**TPUS, **GPUS}.items():
        if a.local_only:  # not an xpk device type (one GPU of a machine, for `launch --local`)
            continue
        x = table[name]
        assert (x.topology, x.vms_per_slice, x.chips_per_vm) == (a.topology, a.hosts, a.chips_per_host), name
        assert x.vms_per_slice * x.chips_per_vm == a.chips, name
    assert {n for n, x in table.items() if x.supports_super_slicing and re.fullmatch(r"[a-z0-9]+-\d+", n)} <= {
        n for n, a in ACCS.items() if a.super_slicing
    }


class TestParsedCache:
    """The parsed catalogs are cached as JSON (cold-start speed): the cache must never change them."""

    @pytest.fixture
    def cache(self, tmp_path, monkeypatch):
        monkeypatch.setenv("DISTILLC_CATALOG_CACHE", str(tmp_path / "cache"))
        load_catalog.cache_clear()
        yield tmp_path / "cache"
        load_catalog.cache_clear()

    def test_cached_catalog_equals_the_parsed_one(self, cache):
        parsed = load_catalog()
        files = sorted(p.name.split(".")[0] for p in cache.glob("*.json"))
        assert files == ["accelerators", "models"]
        load_catalog.cache_clear()
        assert load_catalog() == parsed

    def test_corrupt_or_stale_cache_files_are_ignored(self, cache):
        parsed = load_catalog()
        for p in cache.glob("*.json"):
            p.write_text("{not json")
        stale = [cache / f"models.yaml.{i:024d}.json" for i in range(3)]  # other digests: other versions
        for age, p in enumerate(stale):
            p.write_text('{"entries": {"llama3.1-8b": {"name": "wrong"}}, "shared": []}')
            os.utime(p, (1e9 - age, 1e9 - age))
        load_catalog.cache_clear()
        assert load_catalog() == parsed
        # the two newest other versions stay (two installs side by side keep their caches), older go
        assert [p.exists() for p in stale] == [True, True, False]

    def test_damaged_entries_in_the_cache_are_read_again_from_the_yaml(self, cache):
        """Valid JSON with broken entries (a hand edit, a disk fault): lookups re-parse the YAML and
        rewrite the cache, never raise."""
        parsed = load_catalog()
        want_model, want_acc = parsed.models["llama3.1-8b"], parsed.accelerators["v5p-128"]
        for p in cache.glob("*.json"):
            doc = json.loads(p.read_text())
            doc["entries"] = {n: {"name": n} if i % 2 else ["junk"] for i, n in enumerate(doc["entries"])}
            doc["shared"] = []
            p.write_text(json.dumps(doc))
        load_catalog.cache_clear()
        again = load_catalog()
        assert again.models["llama3.1-8b"] == want_model and again.accelerators["v5p-128"] == want_acc
        assert again == parsed
        load_catalog.cache_clear()  # the rewritten cache serves the next process
        for p in cache.glob("*.json"):
            assert all(isinstance(e, dict) and len(e) > 1 for e in json.loads(p.read_text())["entries"].values()), p.name
        assert load_catalog() == parsed

    def test_entries_are_built_on_lookup(self, cache):
        cat = load_catalog()
        assert cat.models._built == {}  # noqa: SLF001 (nothing validated before a lookup)
        assert cat.models["llama3.1-8b"] is cat.models["llama3.1-8b"]
        assert list(cat.models._built) == ["llama3.1-8b"]  # noqa: SLF001
        assert cat.models.get("no-such-model") is None and "no-such-model" not in cat.models
        with pytest.raises(KeyError):
            cat.accelerators["v5p-7"]
        assert len(cat.accelerators) == len(list(cat.accelerators)) > 200

    def test_unwritable_cache_still_loads(self, cache):
        cache.parent.mkdir(exist_ok=True)
        cache.write_text("a file where the directory should be")
        load_catalog.cache_clear()
        assert "llama3.1-8b" in load_catalog().models
