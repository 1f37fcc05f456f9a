"""runtime/gcs_credentials.py: gs:// paths on a machine without Google credentials stop the runtime
and `data prepare` at once, naming the path (no gcsfs probing, no network)."""

from __future__ import annotations

import time

from distillc.runtime import gcs_credentials as C
from distillc.runtime.data.prepared import run_prepare
from distillc.runtime.main import EXIT_USAGE, main

from tests.runtime_configs import make_config
from tests.test_remote import no_credentials  # noqa: F401 (the fixture: no Google credentials here)


def test_gs_paths_are_found_with_their_keys_in_order():
    data = {"teacher": {"checkpoint": "gs://b/t"}, "data": {"sources": [{"source": "/local"}, {"source": "gs://b/c"}]},
            "name": "gs-not-a-path", "steps": 3}
    assert C.gs_paths(data) == [("teacher.checkpoint", "gs://b/t"), ("data.sources[1].source", "gs://b/c")]


def test_missing_credentials_names_the_first_path_and_the_fix(no_credentials):
    problem = C.missing_credentials({"a": "gs://b/x", "b": ["gs://b/y"]})
    assert problem.startswith("a is gs://b/x (and 1 more gs:// path(s)), but no Google credentials")
    assert "GOOGLE_APPLICATION_CREDENTIALS" in problem
    assert C.missing_credentials({"a": "/local/x"}) is None
    adc = no_credentials / "gcloud" / C.ADC_FILE
    adc.parent.mkdir()
    adc.write_text("{}")
    assert C.missing_credentials({"a": "gs://b/x"}) is None


def test_the_runtime_stops_before_starting_jax(no_credentials, tmp_path, capsys):
    cfg = make_config(tmp_path / "run", teacher_checkpoint="gs://bucket/teacher/0/items")
    path = tmp_path / "run.json"
    path.write_text(cfg.model_dump_json())
    start = time.monotonic()
    assert main(["--config", str(path)]) == EXIT_USAGE
    assert time.monotonic() - start < 5
    err = capsys.readouterr().err
    assert "teacher.checkpoint is gs://bucket/teacher/0/items" in err and "no Google credentials" in err
    assert not (tmp_path / "run").exists()


def test_data_prepare_to_gs_stops_at_once(no_credentials, tmp_path, capsys):
    data = make_config(tmp_path / "run").data
    assert run_prepare(data, "gs://bucket/prepared") == 2
    assert "--out is gs://bucket/prepared" in capsys.readouterr().err
