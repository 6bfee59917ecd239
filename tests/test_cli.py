"""The `potstill` command end to end on a tiny task: real processes, real files."""

import json
import os
import subprocess
import sys
from pathlib import Path


def potstill(*args, cwd=None, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    p = subprocess.run([sys.executable, "-m", "potstill", *map(str, args)], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"potstill {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def test_run_end_to_end_then_rerun_reuses_everything(task_dir):
    spec = task_dir / "potstill.yaml"
    first = potstill("run", spec)
    run = task_dir / "runs" / "tiny"
    report = json.loads((run / "report.json").read_text())
    for name in ("teacher", "student", "baseline"):
        m = report["models"][name]
        for key in ("accuracy", "macro_f1", "params", "latency_ms_p50", "throughput_per_s"):
            assert m[key] is not None, (name, key)
    assert report["models"]["teacher"]["accuracy"] > 0.8
    assert report["models"]["student"]["accuracy"] > 0.8
    assert report["models"]["student"]["params"] < report["models"]["teacher"]["params"]
    assert 0 <= report["models"]["student"]["agreement_with_teacher"] <= 1
    d = report["data"]
    assert d["inputs"] == 240 and d["kept"] + d["dropped"] == d["inputs"]
    assert "| student |" in (run / "report.md").read_text()
    assert "student" in first.stdout and "accuracy" in first.stdout

    man = json.loads((run / "student" / "manifest.json").read_text())
    for key in ("spec_hash", "teacher", "dataset_hash", "config", "versions", "git_commit", "metrics"):
        assert key in man
    assert man["teacher"].startswith("hf:teacher@")
    assert man["config"]["student"]["layers"] == [0, 3]
    assert man["init_from"] == str(run / "teacher")  # same family: initialised from the teacher
    base = json.loads((run / "baseline" / "manifest.json").read_text())
    assert base["init_from"] == man["config"]["student"]["model"]  # the baseline never sees the teacher
    for stage in ("inputs", "teacher", "labels", "filtered", "baseline", "eval"):
        assert (run / stage / "manifest.json").exists(), stage

    mtime = (run / "student" / "model.safetensors").stat().st_mtime
    second = potstill("run", spec)
    err = second.stderr
    assert "teacher fit: up to date" in err and "student: up to date" in err and "baseline: up to date" in err
    assert "(240 from cache, 0 new calls" in err
    assert (run / "student" / "model.safetensors").stat().st_mtime == mtime


def test_each_stage_alone_and_overrides(task_dir, tmp_path):
    spec = task_dir / "potstill.yaml"
    wd = tmp_path / "wd"
    potstill("teacher", "fit", spec, "--workdir", wd)
    assert (wd / "teacher" / "config.json").exists()
    potstill("label", spec, "--workdir", wd, "--set", "data.augment=1")
    records = [json.loads(l) for l in (wd / "labels" / "records.jsonl").read_text().splitlines()]
    aug = [r for r in records if r["source"] == "augmented"]
    assert len(records) - len(aug) == 240 and len(aug) > 100
    assert all(r["gold"] is None and r["label"] for r in aug)  # labelled by the teacher alone
    potstill("label", spec, "--workdir", wd)
    potstill("filter", spec, "--workdir", wd, "--set", "filters.max_chars=30")
    fr = json.loads((wd / "filtered" / "filter_report.json").read_text())
    assert fr["kept"] + sum(fr["dropped_by_reason"].values()) == 240
    assert fr["dropped_by_reason"]["too_long"] > 0 and fr["kept"] > 30
    dropped = (wd / "filtered" / "dropped.jsonl").read_text().splitlines()
    assert all(len(json.loads(l)["text"]) > 30 for l in dropped if '"too_long"' in l)
    potstill("train", spec, "--workdir", wd, "--set", "student.layers=[1,2]", "--set", "train.epochs=1")
    man = json.loads((wd / "student" / "manifest.json").read_text())
    assert man["layers"] == [1, 2] and len(man["metrics"]["history"]) == 1
    potstill("train", spec, "--workdir", wd, "--baseline", "--set", "train.epochs=1")
    assert json.loads((wd / "baseline" / "manifest.json").read_text())["objective"] == "gold"
    out = potstill("eval", spec, "--workdir", wd)
    assert "baseline" in out.stdout
    assert json.loads((wd / "report.json").read_text())["models"]["baseline"]["accuracy"] >= 0


def test_errors_name_the_file_and_line(task_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok", "label": "balance"}\n{"text": oops}\n')
    p = potstill("label", task_dir / "potstill.yaml", "--workdir", tmp_path / "wd",
                 "--set", f"data.train={bad}", check=False)
    assert p.returncode == 2 and f"{bad}:2: not valid JSON" in p.stderr
    p = potstill("run", task_dir / "potstill.yaml", "--set", "train.epochs=zero", check=False)
    assert p.returncode == 2 and "train.epochs" in p.stderr
    p = potstill("train", task_dir / "potstill.yaml", "--workdir", tmp_path / "empty", check=False)
    assert p.returncode == 2 and "run `potstill filter` first" in p.stderr


def test_init_copies_the_example_with_its_licence(tmp_path):
    potstill("init", tmp_path / "task", "--example", "clinc150")
    assert (tmp_path / "task" / "potstill.yaml").exists()
    assert (tmp_path / "task" / "LICENSE").exists()
    assert (tmp_path / "task" / "data" / "train.jsonl").exists()
    p = potstill("init", tmp_path / "task", check=False)
    assert p.returncode != 0 and "not empty" in p.stderr
    p = potstill("init", tmp_path / "t2", "--example", "nope", check=False)
    assert p.returncode != 0 and "clinc150" in p.stderr


def test_training_on_two_processes(task_dir, tmp_path):
    """torchrun starts two ranks; accelerate forms a CPU process group and splits the batches."""
    spec = task_dir / "potstill.yaml"
    wd = tmp_path / "wd"
    for stage in (("teacher", "fit"), ("label",), ("filter",)):
        potstill(*stage, spec, "--workdir", wd)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).parent / "torchrun"
    p = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "potstill", "train", str(spec),
                        "--workdir", str(wd)], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    hist = json.loads((wd / "student" / "history.json").read_text())
    assert hist["processes"] == 2
    assert hist["steps"] == 3 * 240 // (8 * 2)  # each rank takes half of every epoch's batches
    assert p.stderr.count("student: epoch 1/3") == 1  # logged once, by rank 0
    assert json.loads((wd / "student" / "manifest.json").read_text())["metrics"]["processes"] == 2
