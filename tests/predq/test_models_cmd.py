"""`predq models push|list|show|alias` against a registry in tmp_path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner, Result

from predq.demo import iris_sample_rows, train_demo_model, train_mixed_pipeline
from predq.models_cmd import models
from predq.shared.registry.serialization import dump_estimator
from predq.shared.settings import get_settings


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "registry"
    monkeypatch.setenv("PREDQ_REGISTRY_ROOT", str(root))
    get_settings.cache_clear()
    yield root
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def iris_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("artifacts") / "iris.joblib"
    dump_estimator(train_demo_model(), path, "joblib")
    return path


def run(*args: str) -> Result:
    return CliRunner().invoke(models, list(args), catch_exceptions=False)


def test_push_list_show(root: Path, iris_file: Path) -> None:
    result = run("push", str(iris_file), "--name", "iris", "--alias", "production")
    assert result.exit_code == 0, result.output
    assert "Registered iris version 1 (aliases: production)" in result.output
    assert (root / "iris" / "1" / "model.joblib").is_file()
    assert run("push", str(iris_file), "--name", "iris").exit_code == 0

    listing = run("list")
    assert listing.exit_code == 0
    lines = listing.output.splitlines()
    assert lines[0].split() == ["NAME", "VERSIONS", "ALIASES", "DEFAULT"]
    assert lines[1].split() == ["iris", "1,", "2", "production=1", "1"]

    shown = run("show", "iris")
    assert shown.exit_code == 0
    manifest = json.loads(shown.output)
    assert manifest["name"] == "iris" and manifest["version"] == "1"
    assert manifest["classes"] == ["setosa", "versicolor", "virginica"]
    assert [f["name"] for f in manifest["features"]] == list(iris_sample_rows(1)[0])
    assert json.loads(run("show", "iris", "--version", "2").output)["version"] == "2"
    assert json.loads(run("show", "iris", "--version", "production").output)["version"] == "1"


def test_alias_command(root: Path, iris_file: Path) -> None:
    run("push", str(iris_file), "--name", "iris")
    run("push", str(iris_file), "--name", "iris")
    result = run("alias", "iris", "production", "1")
    assert result.exit_code == 0 and "production -> 1" in result.output
    assert json.loads(run("show", "iris").output)["version"] == "1"


def test_push_options(root: Path, tmp_path: Path) -> None:
    model = tmp_path / "mixed.joblib"
    dump_estimator(train_mixed_pipeline(), model, "joblib")
    sample = tmp_path / "sample.csv"
    pd.DataFrame({"color": ["red"], "size": ["S"], "x1": [1], "x2": [0.5]}).to_csv(
        sample, index=False
    )
    result = run(
        "push", str(model), "--name", "mixed", "--version", "7", "--sample", str(sample),
        "--accepts-missing",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads(run("show", "mixed").output)
    assert manifest["version"] == "7" and manifest["accepts_missing"] is True
    types = {f["name"]: f["type"] for f in manifest["features"]}
    assert types == {"color": "string", "size": "string", "x1": "integer", "x2": "number"}


def test_push_skops_with_trusted_type(root: Path, tmp_path: Path) -> None:
    model = tmp_path / "iris.skops"
    dump_estimator(train_demo_model(), model, "skops")
    refused = run("push", str(model), "--name", "iris")
    assert refused.exit_code == 1 and "--trusted-type" in refused.output
    result = run(
        "push", str(model), "--name", "iris", "--format", "skops",
        "--trusted-type", "sklearn.tree._tree.Tree",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads(run("show", "iris").output)
    assert manifest["format"] == "skops"
    assert manifest["trusted_types"] == ["sklearn.tree._tree.Tree"]


def test_errors_exit_non_zero(root: Path, iris_file: Path) -> None:
    empty = run("list")
    assert empty.exit_code == 0 and "No models registered" in empty.output
    missing = run("show", "nope")
    assert missing.exit_code == 1 and "Error: model 'nope' is not registered" in missing.output
    run("push", str(iris_file), "--name", "iris", "--version", "1")
    again = run("push", str(iris_file), "--name", "iris", "--version", "1")
    assert again.exit_code == 1 and "already exists" in again.output
    bad_name = run("push", str(iris_file), "--name", "../etc")
    assert bad_name.exit_code == 1 and "invalid model name" in bad_name.output
    no_version = run("show", "iris", "--version", "9")
    assert no_version.exit_code == 1 and "no version '9'" in no_version.output
    no_file = run("push", str(root / "missing.joblib"), "--name", "iris")
    assert no_file.exit_code == 2 and "does not exist" in no_file.output


def test_push_refuses_a_dirty_sample_unless_told_to_drop_its_rows(root: Path, tmp_path: Path
                                                                  ) -> None:
    model = tmp_path / "mixed.joblib"
    dump_estimator(train_mixed_pipeline(), model, "joblib")
    sample = tmp_path / "sample.csv"
    sample.write_text("color,size,x1,x2\nred,S,1,0.5\nblue,M,abc,0.25\ngreen,L,3,0.75\n")
    refused = run("push", str(model), "--name", "mixed", "--sample", str(sample))
    assert refused.exit_code == 1
    assert "column 'x1' holds numbers except at line 3 ('abc')" in refused.output
    assert run("list").output.startswith("No models registered")

    result = run("push", str(model), "--name", "mixed", "--sample", str(sample),
                 "--drop-bad-sample-rows")
    assert result.exit_code == 0, result.output
    assert "dropped 1 of 3 sample rows" in result.output
    manifest = json.loads(run("show", "mixed").output)
    features = {f["name"]: f for f in manifest["features"]}
    assert features["x1"]["type"] == "integer" and features["x1"]["example"] in (1, 3)


def test_push_chooses_and_show_reports_the_runtime(root: Path, iris_file: Path,
                                                    tmp_path: Path) -> None:
    result = run("push", str(iris_file), "--name", "iris")
    assert result.exit_code == 0, result.output
    assert "runtime treelite (verified on" in result.output
    assert "labels equal" in result.output and "faster than sklearn" in result.output
    rt = json.loads(run("show", "iris").output)["runtime"]
    assert rt["name"] == "treelite" and rt["requested"] == "auto"
    assert rt["verification"]["passed"] and rt["verification"]["labels_equal"]
    assert rt["verification"]["max_abs_diff"] <= 1e-9 and rt["tolerance"] == 1e-9
    assert rt["speed"][0]["rows"] == 10 and rt["speed"][0]["speedup"] > 0

    forced = run("push", str(iris_file), "--name", "iris", "--runtime", "sklearn")
    assert forced.exit_code == 0 and "runtime sklearn (requested by the operator)" in forced.output
    assert json.loads(run("show", "iris", "--version", "2").output)["runtime"]["name"] == "sklearn"

    mixed = tmp_path / "mixed.joblib"
    dump_estimator(train_mixed_pipeline(), mixed, "joblib")
    kept = run("push", str(mixed), "--name", "mixed")
    assert "runtime sklearn (kept: LogisticRegression is not a tree ensemble" in kept.output
    refused = CliRunner().invoke(models, ["push", str(mixed), "--name", "mixed",
                                          "--runtime", "treelite"])
    assert refused.exit_code == 1 and "treelite cannot serve this model" in refused.output
    bad = CliRunner().invoke(models, ["push", str(mixed), "--name", "mixed",
                                      "--tolerance", "-1"])
    assert bad.exit_code == 2
