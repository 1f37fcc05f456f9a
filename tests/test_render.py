"""Rendered artifacts: golden files, byte-identical re-renders, atomic writes, the MaxText target.

Golden inputs live in tests/golden/inputs/; each case's expected files in tests/golden/<case>/.
After an intended change, regenerate them with

    DISTILLC_UPDATE_GOLDEN=1 python -m pytest tests/test_render.py -k golden

and review the diff like code.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from distillc.compiler import render
from distillc.compiler.launch import compile_launch, write
from distillc.runtime.config import RuntimeConfig
from tests.conftest import line_of, spec_text

GOLDEN = Path(__file__).resolve().parent / "golden"
INPUTS = GOLDEN / "inputs"
CLUSTERS = INPUTS / "clusters.yaml"

CASES = {
    "pruning-v5p-distillc": ("pruning", "v5p", "distillc"),
    "pruning-v5p-maxtext": ("pruning", "v5p", "maxtext"),
    "logit_only-v5p-maxtext": ("logit_only", "v5p", "maxtext"),
    "offline-v5p-distillc": ("offline", "v5p", "distillc"),
    "offline-h100-maxtext": ("offline", "h100", "maxtext"),
}


def compile_case(spec: str, cluster: str, target: str, out: Path):
    compiled = compile_launch(INPUTS / f"{spec}.yaml", cluster_name=cluster, clusters_file=CLUSTERS,
                              target=target, out_dir=out)
    assert compiled.ok, [(d.code, d.message) for d in compiled.diagnostics if d.is_error]
    return compiled


@pytest.mark.parametrize("case", CASES)
def test_golden(case, monkeypatch):
    # from the inputs directory with relative paths, as a user runs it: launch.sh's Regenerate line
    # names the spec, clusters file and --out as given, so the golden files hold no checkout path
    monkeypatch.chdir(INPUTS)
    spec, cluster, target = CASES[case]
    compiled = compile_launch(Path(f"{spec}.yaml"), cluster_name=cluster, clusters_file=Path("clusters.yaml"),
                              target=target, out_dir=Path("build") / case)
    assert compiled.ok, [(d.code, d.message) for d in compiled.diagnostics if d.is_error]
    got = {a.name: a.content for a in compiled.build.artifacts}
    expected_dir = GOLDEN / case
    if os.environ.get("DISTILLC_UPDATE_GOLDEN") == "1":
        shutil.rmtree(expected_dir, ignore_errors=True)
        expected_dir.mkdir(parents=True)
        for name, content in got.items():
            (expected_dir / name).write_bytes(content)
    expected = {p.name: p.read_bytes() for p in sorted(expected_dir.iterdir())}
    assert sorted(got) == sorted(expected)
    for name in got:
        assert got[name].decode() == expected[name].decode(), f"{case}/{name} differs from the golden file"


class TestDeterminism:
    def test_same_spec_and_cluster_give_byte_identical_artifacts(self, tmp_path):
        a = compile_case("offline", "h100", "distillc", tmp_path / "a")
        b = compile_case("offline", "h100", "distillc", tmp_path / "elsewhere" / "b")
        write(a.build)
        write(b.build)
        files_a = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
        files_b = {p.name: p.read_bytes() for p in (tmp_path / "elsewhere" / "b").iterdir()}
        # only launch.sh's Regenerate line names the --out it was given (and manifest.json hashes launch.sh)
        regen_a = files_a.pop("launch.sh").replace(str(tmp_path / "a").encode(), b"OUT")
        regen_b = files_b.pop("launch.sh").replace(str(tmp_path / "elsewhere" / "b").encode(), b"OUT")
        assert regen_a == regen_b
        files_a.pop("manifest.json"), files_b.pop("manifest.json")
        assert files_a == files_b
        c = compile_case("offline", "h100", "distillc", tmp_path / "a")
        assert [x.content for x in c.build.artifacts] == [x.content for x in a.build.artifacts]

    def test_regenerate_line_regenerates(self, tmp_path):
        compiled = compile_case("offline", "h100", "maxtext", tmp_path / "o")
        script = {x.name: x.content for x in compiled.build.artifacts}["launch.sh"].decode()
        line = next(l for l in script.splitlines() if l.startswith("# Regenerate"))
        words = shlex.split(line.split(": ", 1)[1])
        assert words == ["distillc", "launch", str(INPUTS / "offline.yaml"), f"--clusters={CLUSTERS}",
                         "--cluster=h100", "--target=maxtext", f"--out={tmp_path / 'o'}"]

    def test_manifest_lists_every_artifact_hash(self, tmp_path):
        compiled = compile_case("offline", "v5p", "distillc", tmp_path / "o")
        write(compiled.build)
        doc = json.loads((tmp_path / "o" / "manifest.json").read_text())
        assert doc["generator"] == "distillc" and doc["distillc_version"]
        assert doc["spec"]["sha256"] == render.sha256_file(INPUTS / "offline.yaml")
        listed = {a["path"]: a["sha256"] for a in doc["artifacts"]}
        on_disk = {p.name for p in (tmp_path / "o").iterdir()} - {"manifest.json"}
        assert set(listed) == on_disk
        for name, digest in listed.items():
            assert render.sha256_file(tmp_path / "o" / name) == digest

    def test_runtime_configs_validate(self, tmp_path):
        compiled = compile_case("offline", "v5p", "distillc", tmp_path / "o")
        write(compiled.build)
        topk = RuntimeConfig.model_validate_json((tmp_path / "o" / "config-save_topk.json").read_text())
        train = RuntimeConfig.model_validate_json((tmp_path / "o" / "config-train.json").read_text())
        assert (topk.stage, train.stage) == ("save_topk", "train")
        assert topk.teacher.arch.name == "llama3.1-70b" and train.student.arch.name == "llama3.1-8b"

    def test_launch_script_waits_between_stages(self, tmp_path):
        compiled = compile_case("offline", "v5p", "distillc", tmp_path / "o")
        script = {a.name: a.content.decode() for a in compiled.build.artifacts}["launch.sh"]
        create_topk = script.index("--workload=golden-offline-topk")
        wait = script.index("--wait-for-job-completion=golden-offline-topk")
        create_train = script.index("--workload=golden-offline-train")
        assert create_topk < wait < create_train
        assert script.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in script


class TestAtomicWrite:
    def test_replaces_a_previous_build(self, tmp_path):
        out = tmp_path / "b"
        render.write_atomic(out, [render.Artifact("old.txt", b"x"), render.manifest([], {}, {})])
        render.write_atomic(out, [render.Artifact("new.txt", b"y"), render.manifest([], {}, {})])
        assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "new.txt"]
        assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temporary directories left

    def test_refuses_a_directory_it_did_not_write(self, tmp_path):
        out = tmp_path / "home"
        out.mkdir()
        (out / "precious.txt").write_text("keep me")
        with pytest.raises(render.OutputDirError):
            render.write_atomic(out, [render.Artifact("a", b"")])
        assert (out / "precious.txt").read_text() == "keep me"

    def test_unusable_out_is_one_clear_error(self, tmp_path, monkeypatch):
        """--out under a file, in a symlink loop, or '.' (the previous build, rebuilt in place)."""
        files = [render.Artifact("a.txt", b"x"), render.manifest([], {}, {})]
        (tmp_path / "afile").write_text("")
        with pytest.raises(render.OutputDirError, match=r"afile/sub: .*afile is a file, not a directory"):
            render.write_atomic(tmp_path / "afile" / "sub", files)
        (tmp_path / "loop").symlink_to(tmp_path / "loop")
        with pytest.raises(render.OutputDirError, match="cannot be resolved"):
            render.write_atomic(tmp_path / "loop", files)
        render.write_atomic(tmp_path / "b", files)
        monkeypatch.chdir(tmp_path / "b")
        render.write_atomic(Path("."), [render.Artifact("new.txt", b"y"), render.manifest([], {}, {})])
        assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["manifest.json", "new.txt"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "b", "loop"]  # nothing left behind

    def test_modes(self, tmp_path):
        compiled = compile_case("pruning", "v5p", "distillc", tmp_path / "o")
        write(compiled.build)
        assert os.access(tmp_path / "o" / "launch.sh", os.X_OK)
        assert not os.access(tmp_path / "o" / "config-train.json", os.X_OK)


def test_yaml_values_read_back():
    for value in [1e-5, 0.1, 2.0, 1e20, 3, True, None, "a \"q\" \\ é", [1, 2], -1, 1.5e-8]:
        assert yaml.safe_load(f"v: {render.yaml_value(value)}")["v"] == value


def test_templates_are_strict():
    import jinja2

    with pytest.raises(jinja2.UndefinedError):
        render.render_text("manifest.json.j2")


# ---------------------------------------------------------------- the MaxText target, key by key

# MaxText v0.2.4 configuration keys distillc writes: fields of src/maxtext/configs/types.py
# (classes Distillation, TrainingLoop, Checkpointing, DatasetGeneral, HfDataset, Grain, Tokenizer,
# Optimizer, AdamW, Parallelism, ...), plus base_config.
MAXTEXT_KEYS = {
    "base_config", "run_name", "base_output_directory",
    "student_overrides", "teacher_overrides", "offline_data_dir",
    "distill_alpha", "distill_alpha_end", "distill_alpha_schedule",
    "distill_temperature", "distill_temperature_end", "distill_temperature_schedule",
    "distill_beta", "distill_beta_end", "distill_beta_schedule",
    "distill_feature_loss_type", "distill_layer_indices",
    "scan_layers", "enable_nnx",
    "dataset_type", "hf_path", "hf_train_files", "train_data_columns", "grain_train_files", "grain_file_type",
    "tokenizer_type", "tokenizer_path", "max_target_length", "packing", "data_shuffle_seed",
    "per_device_batch_size", "gradient_accumulation_steps",
    "steps", "log_period", "enable_checkpointing", "checkpoint_period", "max_num_checkpoints_to_keep",
    "save_checkpoint_on_completion", "eval_interval",
    "ici_data_parallelism", "ici_fsdp_parallelism", "ici_tensor_parallelism",
    "dcn_data_parallelism", "dcn_fsdp_parallelism", "dcn_tensor_parallelism",
}
MAXTEXT_SIDE_KEYS = {
    "model_name", "base_num_decoder_layers", "override_model_config", "load_parameters_path",
    "weight_dtype", "dtype", "remat_policy", "init_weights_seed",
    "opt_type", "learning_rate", "warmup_steps_fraction", "learning_rate_final_fraction",
    "adam_b1", "adam_b2", "adam_eps", "adam_weight_decay", "gradient_clipping_threshold",
}


def maxtext_yaml(spec: str, cluster: str = "v5p", tmp: Path = Path("/nonexistent")) -> dict:
    compiled = compile_case(spec, cluster, "maxtext", tmp)
    text = {a.name: a.content for a in compiled.build.artifacts}["maxtext.yml"].decode()
    return yaml.safe_load(text)


class TestMaxTextKeys:
    def test_only_maxtext_keys(self):
        for spec in ("pruning", "logit_only", "offline"):
            doc = maxtext_yaml(spec)
            assert set(doc) <= MAXTEXT_KEYS, set(doc) - MAXTEXT_KEYS
            for side in ("student_overrides", "teacher_overrides"):
                assert set(doc[side]) <= MAXTEXT_SIDE_KEYS, set(doc[side]) - MAXTEXT_SIDE_KEYS

    def test_guide_pruning_recovery_starter(self):
        """The guide's 'Same-size pruning recovery (default recommendation)' block, key by key."""
        doc = maxtext_yaml("pruning")
        expected = {
            "distill_alpha": 0.9, "distill_alpha_end": 0.5, "distill_alpha_schedule": "cosine",
            "distill_temperature": 2.0, "distill_temperature_end": 1.0, "distill_temperature_schedule": "cosine",
            "distill_beta": 1.0, "distill_beta_end": 0.1, "distill_beta_schedule": "cosine",
            "distill_feature_loss_type": "cosine",
            "distill_layer_indices": [3, 7, 11, 15, 19, 23, 27, 31],
            "scan_layers": True, "enable_nnx": True,
        }
        for key, value in expected.items():
            assert doc[key] == value, key

    def test_guide_logit_only_starter(self):
        doc = maxtext_yaml("logit_only")
        expected = {
            "distill_alpha": 0.9, "distill_alpha_end": 0.5, "distill_alpha_schedule": "cosine",
            "distill_temperature": 2.0, "distill_temperature_schedule": "constant",
            "distill_beta": 0.0, "distill_beta_schedule": "constant", "distill_layer_indices": None,
        }
        for key, value in expected.items():
            assert doc[key] == value, key

    def test_sides_are_separate_and_complete(self):
        doc = maxtext_yaml("logit_only")
        s, t = doc["student_overrides"], doc["teacher_overrides"]
        assert (s["model_name"], s["base_num_decoder_layers"], s["override_model_config"]) == ("llama3.1-8b", 30, True)
        assert "base_num_decoder_layers" not in t
        assert (t["load_parameters_path"], s["load_parameters_path"]) == (
            "gs://golden/ckpt/llama3.1-8b/0/items", "gs://golden/ckpt/llama3.1-8b-pruned/0/items")
        assert (t["weight_dtype"], s["weight_dtype"]) == ("bfloat16", "float32")
        assert "learning_rate" in s and "learning_rate" not in t  # only the student has an optimizer

    def test_schedule_numbers(self):
        doc = maxtext_yaml("pruning")
        s = doc["student_overrides"]
        assert int(s["warmup_steps_fraction"] * doc["steps"]) == 500  # MaxText's int(fraction * steps)
        assert s["learning_rate"] == 1e-5 and s["learning_rate_final_fraction"] == 0.0
        assert doc["per_device_batch_size"] == 4 and doc["ici_fsdp_parallelism"] == 8

    def test_offline_keys_and_two_stages(self, tmp_path):
        compiled = compile_case("offline", "h100", "maxtext", tmp_path / "o")
        doc = yaml.safe_load({a.name: a.content for a in compiled.build.artifacts}["maxtext.yml"])
        assert doc["offline_data_dir"] == "gs://golden/topk/llama3.1-70b"
        assert (doc["dcn_data_parallelism"], doc["dcn_fsdp_parallelism"], doc["ici_fsdp_parallelism"]) == (1, 2, 8)
        topk, wait, train = compiled.build.steps
        cmd = [a for a in topk.argv if a.startswith("--command=")][0]
        assert "save_top_k_teacher_logits /app/maxtext.yml --top_k=64 --gcs_upload_path=gs://golden/topk/llama3.1-70b" in cmd
        assert [a for a in train.argv if a.startswith("--command=")] == [
            "--command=python3 -m maxtext.trainers.post_train.distillation.train_distill /app/maxtext.yml"]


# ---------------------------------------------------------------- what MaxText cannot express

MT_BASE = """
teacher: {model: llama3.1-8b, checkpoint: gs://b/t}
student: {model: llama3.1-8b, checkpoint: gs://b/s}
data: {source: gs://b/d.jsonl, tokenizer: gs://b/tok/tokenizer.json, seq_len: 2048, global_batch_size: 256, eval_fraction: 0}
train: {steps: 1000, learning_rate: 1.0e-5, output_dir: gs://b/runs}
runtime: {mesh: {data: -1, fsdp: 8, tensor: 1}}
resources: {accelerator: v5p-128}
"""


def mt_diags(tmp_path, fragment: str, cluster: str = "v5p"):
    text = spec_text(fragment, base=spec_text(MT_BASE))
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    compiled = compile_launch(spec, cluster_name=cluster, clusters_file=CLUSTERS, target="maxtext", out_dir=tmp_path / "o")
    return text, compiled


@pytest.mark.parametrize("code,fragment,needle", [
    ("DC421", "loss: {alpha: {schedule: piecewise, points: [[0, 0.9], [500, 0.5]]}}", "schedule: piecewise"),
    ("DC422", "student: {pruned_layers: [14, 15]}\nloss: {beta: 1.0, layers: {strategy: straddle_pruned}}", "  layers:"),
    ("DC425", "data: {source: gs://b/corpus.txt}", "source:"),
    ("DC427", "train: {lr_schedule: linear}", "lr_schedule:"),
    ("DC428", "mode: offline\nloss: {alpha: 0.5}\noffline: {top_k: 8, data_dir: gs://b/k}", "offline:"),
    ("DC429", "data: {eval_fraction: 0.1}", "eval_fraction:"),
    ("DC431", "data: {source: gs://b/corpus/}", "source:"),
    ("DC420", "maxtext: {version: v0.1.0}", "version: v0.1.0"),
])
def test_maxtext_diagnostics(tmp_path, code, fragment, needle):
    text, compiled = mt_diags(tmp_path, fragment)
    hits = [d for d in compiled.diagnostics if d.code == code]
    assert hits, [(d.code, d.message) for d in compiled.diagnostics]
    assert hits[0].span.line == line_of(text, needle)


def test_default_eval_fraction_is_a_note_not_a_warning(tmp_path):
    text = spec_text("", base=spec_text(MT_BASE.replace(", eval_fraction: 0}", "}")))
    assert "eval_fraction" not in text
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    compiled = compile_launch(spec, cluster_name="v5p", clusters_file=CLUSTERS, target="maxtext", out_dir=tmp_path / "o")
    got = {d.code: d.severity.value for d in compiled.diagnostics}
    assert compiled.ok and "DC429" not in got and got.get("DC432") == "note"
    _, written = mt_diags(tmp_path, "data: {eval_fraction: 0.1}")
    assert {"DC429"} <= {d.code for d in written.diagnostics} and "DC432" not in {d.code for d in written.diagnostics}


def test_maxtext_v021_has_no_schedules(tmp_path):
    _, compiled = mt_diags(tmp_path, "maxtext: {version: maxtext-v0.2.1}\nloss: {alpha: {start: 0.9, end: 0.5, schedule: cosine}}")
    assert "DC421" in [d.code for d in compiled.diagnostics]
    _, ok = mt_diags(tmp_path, "maxtext: {version: maxtext-v0.2.1}")
    assert ok.ok
    doc = yaml.safe_load({a.name: a.content for a in ok.build.artifacts}["maxtext.yml"])
    assert "distill_alpha_end" not in doc and "distill_feature_loss_type" not in doc


def test_maxtext_vocab_and_model_checks(tmp_path):
    _, compiled = mt_diags(tmp_path, "teacher: {model: qwen2.5-7b}\nstudent: {model: qwen2.5-1.5b}\ndata: {tokenizer: gs://b/q/tokenizer.json}")
    assert "DC424" in [d.code for d in compiled.diagnostics]
    _, compiled = mt_diags(tmp_path, "teacher: {model: llama3.2-1b}\nstudent: {model: llama3.2-1b}")
    assert "DC423" in [d.code for d in compiled.diagnostics]


def test_shell_form_of_the_commands_is_the_argv(tmp_path):
    """launch.sh and the printed dry run compute the config's base64 from its file: same bytes."""
    import subprocess

    compiled = compile_case("offline", "v5p", "distillc", tmp_path / "o")
    write(compiled.build)
    for step in compiled.build.steps:
        for directory, cwd in ((str(tmp_path / "o"), tmp_path), (".", tmp_path / "o")):
            out = subprocess.run(["bash", "-c", "printf '%s\\0' " + step.shell_line(directory)], cwd=cwd,
                                 capture_output=True, check=True).stdout.decode().split("\0")[:-1]
            assert out == list(step.argv)


def test_hostile_names_stay_inside_comments_and_keys(tmp_path):
    """A spec file name, a cluster key or a MaxText override key with a newline cannot inject lines."""
    import subprocess

    evil = "x\ntouch /tmp/distillc-pwned #"
    clusters = tmp_path / "clusters.yaml"
    clusters.write_text(CLUSTERS.read_text().replace("  v5p:\n", f"  {json.dumps(evil)}:\n", 1))
    spec = tmp_path / f"spec{evil}.yaml".replace("/", "_")
    fragment = yaml.safe_dump({"student": {"overrides": {"maxtext": {evil: 1}}}})
    spec.write_text(spec_text(fragment, base=(INPUTS / "logit_only.yaml").read_text()))
    for target in ("distillc", "maxtext"):
        compiled = compile_launch(spec, cluster_name=evil, clusters_file=clusters, target=target, out_dir=tmp_path / target)
        assert compiled.ok, compiled.diagnostics
        files = {a.name: a.content.decode() for a in compiled.build.artifacts}
        script = files["launch.sh"]
        assert "\ntouch" not in script
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)
        if target == "maxtext":
            assert "\ntouch" not in files["maxtext.yml"] and yaml.safe_load(files["maxtext.yml"])


def test_yaml_keys():
    assert render.yaml_key("model_name") == "model_name"
    assert yaml.safe_load(f"{render.yaml_key('a: b')}: 1") == {"a: b": 1}
    assert yaml.safe_load(f"{render.yaml_key('x' + chr(10) + 'y')}: 1") == {"x\ny": 1}
