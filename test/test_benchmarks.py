"""The learning benchmark's harness: a method runs on a tiny file and gets its csv row."""

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(
        name, REPO / "benchmarks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_harness_runs_a_method_and_reports(tmp_path, monkeypatch, tiny_d4rl_file):
    learning, report = _load("learning"), _load("report")
    dataset = tiny_d4rl_file(tmp_path / "tiny.hdf5", 3, 1, "Pendulum-v1", n=200)
    tiny = dict(
        datasets=[str(dataset)],
        ablation_datasets=[str(dataset)],
        seeds=[0],
        overrides=[
            "preset=demo",
            "optim.gradient_steps=10",
            "eval.interval=5",
            "eval.episodes=2",
            "eval.max_steps=10",
            "optim.batch_size=16",
            "loss.num_mcmc_samples=2",
        ],
    )
    monkeypatch.setitem(learning.SCALES, "tiny", tiny)
    monkeypatch.setattr(learning, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(report, "RESULTS", tmp_path / "results")
    out = tmp_path / "results" / "learning_tiny.csv"
    learning.main(["--scale", "tiny", "--methods", "bc", "misa-k5", "--out", str(out)])
    rows = list(csv.DictReader(out.open()))
    assert [(r["method"], r["seed"], r["steps"]) for r in rows] == [
        ("bc", "0", "10"),
        ("misa-k5", "0", "10"),
    ]
    assert all(np.isfinite(float(r["final_score"])) for r in rows)
    # Finished jobs are skipped: a second call runs nothing new.
    learning.main(["--scale", "tiny", "--methods", "bc", "--out", str(out)])
    assert len(list(csv.DictReader(out.open()))) == 2
    # The ablation's override reached the script.
    k5 = next(r for r in rows if r["method"] == "misa-k5")
    cfg = (Path(k5["run_dir"]) / ".hydra" / "overrides.yaml").read_text()
    assert "loss.num_mcmc_samples=5" in cfg

    report.main(["--scale", "tiny"])
    md = (tmp_path / "results" / "learning_tiny.md").read_text()
    assert "| tiny |" in md and "bc" in md
    assert (tmp_path / "results" / "learning_tiny_main.png").exists()


def test_job_overrides_select_method_and_ablation():
    learning = _load("learning")
    job = learning.Job("small", "datasets/x.hdf5", "misa-dv", 2)
    ov = job.overrides()
    assert "algorithm=misa" in ov and "loss.mi_estimator=dv" in ov and "seed=2" in ov
    assert "algorithm=cql" in learning.Job("small", "d.hdf5", "cql", 0).overrides()
    names = [j.name for j in learning.jobs_for("small")]
    # small: 3 seeds x 5 methods x 2 datasets, ablations on the shipped one only
    assert len(names) == len(set(names)) == 3 * 5 * 2 + 3 * len(learning.ABLATIONS)
    cheetah = learning.Job("small", learning.CHEETAH_MR, "iql", 1).overrides()
    assert "eval.max_steps=1000" in cheetah and "algorithm=iql" in cheetah
    # the dataset's own budget comes after (and so overrides) the scale's
    assert cheetah.index("optim.gradient_steps=15000") > cheetah.index(
        "optim.gradient_steps=4000"
    )


def test_missing_dataset_names_its_generator_command(tmp_path, monkeypatch, capsys):
    learning = _load("learning")
    absent = "datasets/extra/walker2d-medium-expert-v0.hdf5"
    monkeypatch.setitem(
        learning.SCALES,
        "tiny",
        dict(datasets=[absent], ablation_datasets=[], seeds=[0], overrides=[]),
    )
    out = tmp_path / "rows.csv"
    with pytest.raises(SystemExit, match="Missing datasets") as err:
        learning.main(["--scale", "tiny", "--out", str(out)])
    assert (
        f"{absent}: python -m torchrl_misa.data.generate --env Walker2d-v5 "
        "--recipes medium-expert" in str(err.value)
    )
    # Leaving the dataset out runs nothing and needs no file.
    learning.main(
        ["--scale", "tiny", "--datasets", "other", "--dry-run", "--out", str(out)]
    )
    assert capsys.readouterr().out.startswith("0 jobs to run")
