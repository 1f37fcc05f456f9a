"""`validate` on gs:// checkpoints (compiler/remote.py, compiler/checkpoint_files.py): exists, missing,
cannot tell (permission, no network, no credentials, out of time) for each rule that reads a
checkpoint, through the fake Cloud Storage of tests/fake_gcs.py (gs://bucket/ is tests/fixtures/).
No network: a real gcsfs filesystem is only ever made, never asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from distillc.compiler import checkpoint_files, remote as R
from distillc.runtime import gcs_credentials
from distillc.compiler.cli import app
from distillc.runtime.convert.gguf_meta import read_header
from tests.conftest import FIXTURES, ROOT, at, check_text, codes, find, spec_text, where
from tests.fake_gcs import FakeGCS, fake_remote

LLAMA2_INLINE = ("{num_layers: 2, emb_dim: 64, num_heads: 4, num_kv_heads: 4, head_dim: 16, mlp_dim: 96, "
                 "vocab_size: 96, tokenizer: byte, tie_embeddings: true, norm_eps: 1.0e-5}")
GGUF_INLINE = ("{num_layers: 2, emb_dim: 64, num_heads: 4, num_kv_heads: 2, head_dim: 16, mlp_dim: 96, "
               "vocab_size: 96, tokenizer: byte, tie_embeddings: false, norm_eps: 1.0e-5, rope_theta: 10000.0}")


def check(fragment: str, fs: FakeGCS | None = None, budget_s: float = 5.0, **kw):
    text = spec_text(fragment)
    return text, check_text(text, remote=fake_remote(budget_s, fs), **kw)


def notes(checked) -> dict[tuple, str]:
    return {d.path: d.message for d in checked.diagnostics if d.code == "DC186"}


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    """A machine where google-auth finds nothing: no variable, no gcloud ADC file, not Google Cloud."""
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "GCE_METADATA_HOST", "GCE_METADATA_IP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setattr(gcs_credentials, "DMI_PRODUCT", str(tmp_path / "product_name"))
    return tmp_path


# ----------------------------------------------------------------------------- the reader


class TestRemote:
    def test_exists_missing_and_a_directory_prefix(self):
        r = fake_remote()
        assert r.exists("gs://bucket/hf/llama2") and r.exists("gs://bucket/hf/llama2/config.json")
        assert not r.exists("gs://bucket/hf/no-such")
        assert r.is_file("gs://bucket/hf/llama2/config.json") and not r.is_file("gs://bucket/hf/llama2")
        assert {"config.json", "model.safetensors"} <= r.names("gs://bucket/hf/llama2")
        assert r.names("gs://bucket/hf/no-such") == frozenset()
        assert r.unchecked == {}

    def test_each_request_is_made_once(self):
        fs = FakeGCS()
        r = fake_remote(fs=fs)
        for _ in range(3):
            r.exists("gs://bucket/hf/llama2")
            r.exists("gs://bucket/no-such")
            r.read("gs://bucket/hf/llama2/config.json")
        assert len(fs.calls) == 3

    @pytest.mark.parametrize("bucket, why", [("no-access", "permission denied"), ("offline", "cannot reach Google Cloud")])
    def test_cannot_tell_is_unreachable_with_the_reason(self, bucket, why):
        r = fake_remote()
        with pytest.raises(R.Unreachable) as e:
            r.exists(f"gs://{bucket}/x")
        assert why in e.value.why and r.unchecked == {f"gs://{bucket}/x": e.value.why}

    def test_no_network_answers_every_later_request_at_once(self):
        fs = FakeGCS()
        r = fake_remote(fs=fs)
        with pytest.raises(R.Unreachable):
            r.exists("gs://offline/x")
        with pytest.raises(R.Unreachable, match="cannot reach Google Cloud"):
            r.exists("gs://bucket/hf/llama2")
        assert fs.calls == [("info", "gs://offline/x")]

    def test_permission_denied_is_one_path_not_every_path(self):
        r = fake_remote()
        with pytest.raises(R.Unreachable):
            r.exists("gs://no-access/x")
        assert r.exists("gs://bucket/hf/llama2")

    def test_a_request_that_never_answers_is_stopped_by_the_budget(self):
        fs = FakeGCS()
        r = fake_remote(0.3, fs)
        start = time.monotonic()
        try:
            with pytest.raises(R.Unreachable, match="no answer within 0.3 s"):
                r.exists("gs://slow/x")
            with pytest.raises(R.Unreachable, match="no answer within"):  # the budget is for the whole run
                r.exists("gs://bucket/hf/llama2")
            assert time.monotonic() - start < 5  # 0.3 s asked; a hang would never return
            assert fs.calls == [("info", "gs://slow/x")]
        finally:
            fs.release.set()

    def test_a_spent_budget_reads_nothing_more(self):
        fs = FakeGCS()
        r = fake_remote(1e-9, fs)
        time.sleep(0.01)
        r._remaining()  # the clock starts at the first request
        time.sleep(0.01)
        with pytest.raises(R.Unreachable, match="budget"):
            r.exists("gs://bucket/hf/llama2")
        assert fs.calls == []

    def test_any_error_of_the_client_is_a_reason_never_a_traceback(self):
        class Broken:
            def info(self, path):
                raise RuntimeError("boom")

        r = R.Remote(5.0, filesystem=Broken)
        with pytest.raises(R.Unreachable, match="RuntimeError: boom"):
            r.exists("gs://b/x")


class TestCredentials:
    def test_none_found_is_told_at_once_without_the_network(self, no_credentials):
        assert "no Google credentials" in R.credentials_problem()
        r = R.Remote(5.0)
        start = time.monotonic()
        with pytest.raises(R.Unreachable, match="no Google credentials"):
            r.exists("gs://bucket/x")
        assert time.monotonic() - start < 1

    def test_a_named_file_that_does_not_exist(self, no_credentials, monkeypatch):
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(no_credentials / "sa.json"))
        assert "GOOGLE_APPLICATION_CREDENTIALS names" in R.credentials_problem()

    def test_found_where_google_auth_looks(self, no_credentials, monkeypatch):
        (no_credentials / "sa.json").write_text("{}")
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(no_credentials / "sa.json"))
        assert R.credentials_problem() is None
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
        (no_credentials / "gcloud").mkdir()
        (no_credentials / "gcloud" / R.ADC_FILE).write_text("{}")
        assert R.credentials_problem() is None
        (no_credentials / "gcloud" / R.ADC_FILE).unlink()
        (no_credentials / "product_name").write_text("Google Compute Engine\n")
        assert R.credentials_problem() is None

    def test_an_unusable_credentials_file_is_named_and_stops_every_request(self, no_credentials, monkeypatch):
        """Once 'JSONDecodeError: Expecting ...' (or 'ValueError: ... missing fields') per path, the
        file not named; a directory named by the variable was 'a file that does not exist'."""
        creds = no_credentials / "sa.json"
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(creds))
        for content, why in (("{not json", "is not JSON"), (b"\xff\xfe", "is not JSON"),
                             ('{"type": "service_account"}', "service_account credentials in .* cannot be used")):
            creds.write_bytes(content if isinstance(content, bytes) else content.encode())
            r = R.Remote(5.0)
            with pytest.raises(R.Unreachable, match=f"{why}.*GOOGLE_APPLICATION_CREDENTIALS") as first:
                r.exists("gs://bucket/x")
            assert str(creds) in first.value.why
            with pytest.raises(R.Unreachable) as second:
                r.exists("gs://bucket/y")
            assert second.value.why == first.value.why
        creds.unlink()
        creds.mkdir()
        assert "which is not a file" in R.credentials_problem()

    def test_a_huge_budget_does_not_overflow_the_join(self):
        assert R._within(lambda: 7, 1e300) == 7

    def test_the_real_filesystem_is_gcsfs_json_api_class(self, no_credentials):
        """Made (never asked: that would need the network) from an ADC file, as after
        `gcloud auth application-default login`: gcsfs's plain class, not the one that asks each
        bucket's layout over gRPC first."""
        import gcsfs.core

        (no_credentials / "gcloud").mkdir()
        (no_credentials / "gcloud" / R.ADC_FILE).write_text(json.dumps(
            {"type": "authorized_user", "client_id": "c", "client_secret": "s", "refresh_token": "r"}))
        fs = R.gcs_filesystem()()
        assert type(fs) is gcsfs.core.GCSFileSystem and fs.credentials.credentials.refresh_token == "r"


# ----------------------------------------------------------------------------- the rules


class TestDC180AndDC187Missing:
    def test_a_missing_gs_student_is_dc180_at_the_value(self):
        text, c = check("student:\n  checkpoint: gs://bucket/no-such/0/items\n")
        d = find(c, "DC180")
        assert where(d) == at(text, "student:", "checkpoint:", "gs://bucket/no-such") and d.is_error

    def test_a_missing_gs_teacher_is_dc187_and_a_local_one_is_not(self, tmp_path):
        text, c = check("teacher:\n  checkpoint: gs://bucket/no-such/0/items\n")
        d = find(c, "DC187")
        assert where(d) == at(text, "teacher:", "checkpoint:", "gs://bucket/no-such") and d.is_error
        _, c = check(f"teacher:\n  checkpoint: {tmp_path / 'trained-here-by-local'}\n")
        assert "DC187" not in codes(c)

    def test_existing_paths_pass(self):
        _, c = check("teacher:\n  checkpoint: gs://bucket/hf/llama2\nstudent:\n  checkpoint: gs://bucket/gguf/tiny-llama-f32.gguf\n")
        assert not {"DC180", "DC187", "DC186"} & set(codes(c))

    @pytest.mark.parametrize("bucket", ["no-access", "offline"])
    def test_cannot_tell_is_a_note_not_an_error(self, bucket):
        text, c = check(f"teacher:\n  checkpoint: gs://{bucket}/t\nstudent:\n  checkpoint: gs://{bucket}/s\n")
        assert c.ok and not {"DC180", "DC187"} & set(codes(c))
        assert set(notes(c)) == {("teacher", "checkpoint"), ("student", "checkpoint")}
        d = find(c, "DC186")
        assert d.severity.value == "note" and where(d) == at(text, "teacher:", "checkpoint:", f"gs://{bucket}/t")

    def test_a_timeout_is_a_note_naming_the_budget(self):
        fs = FakeGCS()
        try:
            _, c = check("student:\n  checkpoint: gs://slow/s\n", fs, budget_s=0.2)
        finally:
            fs.release.set()
        assert "DC180" not in codes(c) and "no answer within 0.2 s" in notes(c)[("student", "checkpoint")]

    def test_other_schemes_and_offline_read_nothing(self):
        fs = FakeGCS()
        _, c = check("student:\n  checkpoint: s3://bucket/no-such\n", fs)
        assert not {"DC180", "DC186"} & set(codes(c)) and fs.calls == []
        c = check_text(spec_text("student:\n  checkpoint: gs://bucket/no-such\n"))  # no Remote: --offline
        assert not {"DC180", "DC186"} & set(codes(c))


class TestDC181AndDC182RemoteConfig:
    def test_the_same_fields_as_the_local_directory(self, monkeypatch):
        monkeypatch.chdir(ROOT)
        fields = {}
        for path in ("tests/fixtures/hf/llama2", "gs://bucket/hf/llama2"):
            _, c = check(f"teacher:\n  model: tiny-teacher\n  checkpoint: {path}\n")
            fields[path] = sorted(d.message.split(": ", 1)[1] for d in c.diagnostics if d.code == "DC181")
        assert fields["gs://bucket/hf/llama2"] == fields["tests/fixtures/hf/llama2"] and fields["gs://bucket/hf/llama2"]

    def test_the_model_it_holds_passes_reading_only_the_listing_and_config(self):
        fs = FakeGCS()
        _, c = check(f"teacher:\n  model: {LLAMA2_INLINE}\n  checkpoint: gs://bucket/hf/llama2\n", fs)
        assert not {"DC181", "DC186"} & set(codes(c))
        assert {p for _, p in fs.calls} == {"gs://bucket/hf/llama2", "gs://bucket/hf/llama2/config.json"}
        assert fs.bytes_read == (FIXTURES / "hf/llama2/config.json").stat().st_size

    def test_not_a_hugging_face_directory_is_not_read(self, tmp_path):
        (tmp_path / "ckpt").mkdir()
        (tmp_path / "ckpt" / "config.json").write_text("{not json")  # no *.safetensors beside it
        _, c = check("teacher:\n  model: tiny-teacher\n  checkpoint: gs://tmp/ckpt\n", FakeGCS({"tmp": tmp_path}))
        assert "DC181" not in codes(c)

    def test_an_unreadable_config_is_dc181(self, tmp_path):
        (tmp_path / "ckpt").mkdir()
        (tmp_path / "ckpt" / "config.json").write_text("[1]")
        (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"")
        _, c = check("teacher:\n  model: tiny-teacher\n  checkpoint: gs://tmp/ckpt\n", FakeGCS({"tmp": tmp_path}))
        assert "gs://tmp/ckpt/config.json: not a JSON object" in find(c, "DC181").message

    def test_unreachable_is_only_the_note(self):
        _, c = check("teacher:\n  model: tiny-teacher\n  checkpoint: gs://no-access/hf/llama2\n")
        assert "DC181" not in codes(c) and ("teacher", "checkpoint") in notes(c)

    def test_maxtext_target_detects_a_gs_hugging_face_directory(self):
        _, c = check("teacher:\n  checkpoint: gs://bucket/hf/llama2\n", target="maxtext")
        assert find(c, "DC182").path == ("teacher", "checkpoint")
        _, c = check("teacher:\n  checkpoint: gs://bucket/maxtext\n", target="maxtext")
        assert "DC182" not in codes(c)


class TestDC183RemoteGGUF:
    def test_the_header_is_read_by_ranges_never_the_tensors(self, tmp_path, monkeypatch):
        """A GGUF whose tensor data is 8 MiB: only its first bytes are read, the first range
        (shrunk to 256 bytes here) growing x4 until the header is whole; the header equals the
        local reader's."""
        big = tmp_path / "big.gguf"
        big.write_bytes((FIXTURES / "gguf/tiny-llama-f32.gguf").read_bytes() + bytes(8 << 20))
        monkeypatch.setattr(checkpoint_files, "GGUF_FIRST_READ", 256)
        fs = FakeGCS({"tmp": tmp_path})
        r = fake_remote(fs=fs)
        header = checkpoint_files.gguf_header(type("Ctx", (), {"remote": r})(), "gs://tmp/big.gguf", None)
        local = read_header(str(big))
        assert header.metadata == local.metadata and header.tensors == local.tensors and header.size == local.size
        assert 256 < fs.bytes_read < 1 << 20 and len([c for c in fs.calls if c[0] == "cat"]) > 1

    def test_each_disagreeing_field_and_a_match(self):
        _, c = check("teacher:\n  model: tiny-teacher\n  checkpoint: gs://bucket/gguf/tiny-llama-f32.gguf\n")
        fields = {d.message.split(": ")[1] for d in c.diagnostics if d.code == "DC183"}
        # query_pre_attn_scalar: a llama file's query scaling is its head_dim, which differs too
        assert fields == {"vocab_size", "emb_dim", "num_kv_heads", "head_dim", "mlp_dim", "query_pre_attn_scalar"}
        _, c = check(f"teacher:\n  model: {GGUF_INLINE}\n  checkpoint: gs://bucket/gguf/tiny-llama-f32.gguf\n")
        assert not {"DC183", "DC186"} & set(codes(c))

    def test_a_file_that_ends_inside_its_header_is_dc183(self, tmp_path):
        (tmp_path / "cut.gguf").write_bytes((FIXTURES / "gguf/tiny-llama-f32.gguf").read_bytes()[:200])
        _, c = check(f"teacher:\n  model: {GGUF_INLINE}\n  checkpoint: gs://tmp/cut.gguf\n", FakeGCS({"tmp": tmp_path}))
        assert "gs://tmp/cut.gguf: truncated GGUF header" in find(c, "DC183").message

    def test_missing_and_unreachable(self):
        _, c = check(f"teacher:\n  model: {GGUF_INLINE}\n  checkpoint: gs://bucket/gguf/no-such.gguf\n")
        assert "DC183" not in codes(c) and "DC187" in codes(c)
        _, c = check(f"teacher:\n  model: {GGUF_INLINE}\n  checkpoint: gs://no-access/x.gguf\n")
        assert "DC183" not in codes(c) and ("teacher", "checkpoint") in notes(c)


class TestDC185RemoteTokenizer:
    def test_a_gs_checkpoint_against_a_local_tokenizer(self, monkeypatch):
        monkeypatch.chdir(ROOT)
        text, c = check("teacher:\n  checkpoint: gs://bucket/tokenizers/hf\n"
                        "data:\n  tokenizer: tests/fixtures/tokenizers/other.json\n")
        d = find(c, "DC185")
        assert "gs://bucket/tokenizers/hf/tokenizer.json" in d.message and d.path == ("teacher", "checkpoint")
        _, c = check("teacher:\n  checkpoint: gs://bucket/tokenizers/hf\n"
                     "data:\n  tokenizer: tests/fixtures/tokenizers/hf/tokenizer.json\n")
        assert "DC185" not in codes(c)

    def test_both_on_gs(self):
        _, c = check("teacher:\n  checkpoint: gs://bucket/tokenizers/hf\ndata:\n  tokenizer: gs://bucket/tokenizers/other.json\n")
        assert "gs://bucket/tokenizers/other.json" in find(c, "DC185").message
        _, c = check("teacher:\n  checkpoint: gs://bucket/tokenizers/hf\n"
                     "data:\n  tokenizer: gs://bucket/tokenizers/hf/tokenizer.json\n")
        assert not {"DC185", "DC186"} & set(codes(c))

    def test_an_unreachable_data_tokenizer_is_a_note_at_its_key(self):
        _, c = check("teacher:\n  checkpoint: gs://bucket/tokenizers/hf\ndata:\n  tokenizer: gs://no-access/tokenizer.json\n")
        assert "DC185" not in codes(c) and "permission denied" in notes(c)[("data", "tokenizer")]

    def test_a_file_over_the_read_limit_is_noted_not_read(self, monkeypatch):
        monkeypatch.setattr(checkpoint_files, "MAX_READ", 100)
        fs = FakeGCS()
        _, c = check("teacher:\n  checkpoint: gs://bucket/tokenizers/hf\ndata:\n  tokenizer: gs://bucket/tokenizers/other.json\n", fs)
        assert "DC185" not in codes(c) and "MiB" in notes(c)[("data", "tokenizer")]
        assert fs.bytes_read == 0


class TestDC186:
    def test_select_alone_still_checks_the_checkpoints(self):
        _, c = check("student:\n  checkpoint: gs://offline/s\n", select=("DC186",))
        assert codes(c) == ["DC186"]

    def test_one_note_per_key_naming_the_file(self, tmp_path):
        (tmp_path / "ckpt").mkdir()
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (tmp_path / "ckpt" / name).write_text("{}")
        fs = FakeGCS({"tmp": tmp_path})
        r = fake_remote(fs=fs)
        r.unchecked["gs://tmp/ckpt/tokenizer.json"] = "a reason"  # as a read past the budget records it
        c = check_text(spec_text("teacher:\n  checkpoint: gs://tmp/ckpt\n"), remote=r)
        assert notes(c) == {("teacher", "checkpoint"): "teacher.checkpoint 'gs://tmp/ckpt' was not checked "
                                                      "(tokenizer.json): a reason"}


# ----------------------------------------------------------------------------- the command


class TestValidateCommand:
    def run(self, *args, env=None):
        return CliRunner().invoke(app, ["validate", *args], env=env)

    def spec(self, tmp_path, fragment):
        p = tmp_path / "spec.yaml"
        p.write_text(spec_text(fragment))
        return str(p)

    def test_remote_checks_run_unless_offline(self, tmp_path, monkeypatch):
        fs = FakeGCS()
        monkeypatch.setattr(R, "credentials_problem", lambda: None)
        monkeypatch.setattr(R, "gcs_filesystem", lambda: lambda: fs)
        spec = self.spec(tmp_path, "student:\n  checkpoint: gs://bucket/no-such\n")
        r = self.run(spec, "--format", "json", env={"DISTILLC_OFFLINE": ""})
        assert r.exit_code == 1 and [d["code"] for d in json.loads(r.stdout)] == ["DC180"]
        calls = len(fs.calls)
        for offline in (["--offline"], []):
            r = self.run(spec, *offline, env={"DISTILLC_OFFLINE": "" if offline else "1"})
            assert r.exit_code == 0, r.output
        assert len(fs.calls) == calls

    def test_the_budget_option_and_its_variable(self, tmp_path, monkeypatch):
        fs = FakeGCS()
        monkeypatch.setattr(R, "credentials_problem", lambda: None)
        monkeypatch.setattr(R, "gcs_filesystem", lambda: lambda: fs)
        spec = self.spec(tmp_path, "student:\n  checkpoint: gs://slow/s\n")
        try:
            for args, env in ((["--remote-timeout", "0.2"], {}), ([], {"DISTILLC_REMOTE_TIMEOUT": "0.2"})):
                r = self.run(spec, "--format", "json", *args, env={"DISTILLC_OFFLINE": "", **env})
                assert r.exit_code == 0, r.output
                (d,) = json.loads(r.stdout)
                assert d["code"] == "DC186" and "no answer within 0.2 s" in d["message"]
        finally:
            fs.release.set()
        for bad in ("0", "-1", "nan", "inf"):  # inf once passed, and every request's join overflowed
            r = self.run(spec, "--remote-timeout", bad)
            assert r.exit_code == 2 and "--remote-timeout" in r.stderr, (bad, r.output)


PROBE = """
import json, sys, time
import distillc.compiler.remote as R
import distillc.runtime.gcs_credentials as C
C.DMI_PRODUCT = "/nonexistent"  # not a Google Cloud machine, wherever the tests run
from distillc.compiler.cli import app
start = time.monotonic()
try:
    app(sys.argv[1:])
except SystemExit as exc:
    rc = exc.code
loaded = sorted({m.split('.')[0] for m in sys.modules} & {"jax", "gcsfs", "fsspec", "aiohttp", "google"})
print(json.dumps({"rc": rc, "loaded": loaded, "s": time.monotonic() - start}))
"""


@pytest.mark.parametrize("spec, remote", [("specs/quickstart.yaml", False), ("specs/llama31-70b-to-8b.yaml", True)])
def test_validate_imports_gcsfs_only_for_gs_paths_and_never_jax(spec, remote, no_credentials):
    """A local spec never imports gcsfs (nor fsspec, aiohttp, google-auth); a gs:// one on a machine
    without credentials notes each checkpoint at once, still without importing them."""
    env = {k: v for k, v in os.environ.items() if k != "DISTILLC_OFFLINE"}
    proc = subprocess.run([sys.executable, "-c", PROBE, "validate", spec, "--format", "json"], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)
    *report, last = proc.stdout.strip().splitlines()
    out = json.loads(last)
    assert out["rc"] == 0 and out["loaded"] == [], (out, proc.stderr[-2000:])
    diags = json.loads("\n".join(report))
    noted = [d["path"] for d in diags if d["code"] == "DC186"]
    assert noted == (["teacher.checkpoint", "student.checkpoint"] if remote else [])
    assert all("no Google credentials" in d["message"] for d in diags if d["code"] == "DC186")
