"""Smoke runs of the benchmark scripts (--quick: synthetic data, a few tiny trials): they run
end to end and print their figures. The figures themselves are measured by hand (README)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import forked
from tests.helpers import ROOT, subprocess_env

pytestmark = pytest.mark.slow


def benchmark(script: str, *args: str) -> str:
    """``python benchmarks/SCRIPT ARGS`` (a process of its own, its libraries imported: tests/forked.py);
    its output, once it ended well."""
    done = forked.run(ROOT / "benchmarks" / script, list(args), cwd=ROOT, env=subprocess_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_sweep_quality_quick_prints_anytime_curves_and_medians(tmp_path: Path) -> None:
    out = benchmark("sweep_quality.py", "--quick", "--seeds", "0", "--out", str(tmp_path))
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("tpe-0", "random-0"))}
    assert set(rows) == {"tpe-0", "random-0"}
    for row in rows.values():
        complete, best_val = int(row[2]), float(row[6])
        assert complete >= 1 and 0.0 < best_val <= 1.0  # each sweep finished trials and has a best
    assert "median best val over seeds at half budget" in out and "median TPE - median random at full budget" in out
    assert (tmp_path / "sweep_quality.png").stat().st_size > 10_000  # the anytime-curve figure
    assert {p.name for p in tmp_path.glob("best_*.yaml")} == {"best_tpe-0.yaml", "best_random-0.yaml"}


def test_run_parts_prints_every_part_and_the_start_up_floor() -> None:
    out = benchmark("run_parts.py", "data=synthetic", "trainer.epochs=2")
    rows = dict(re.findall(r"^  (\S.*?\S)\s+(\d+\.\d\d) s\s+[\d.]+%$", out, flags=re.M))
    assert {"whole process (wall)", "training epochs", "validation after epochs", "model to MLflow (pt2)"} <= set(rows)
    parts = sum(float(v) for k, v in rows.items() if k not in ("whole process (wall)", "outside training"))
    assert abs(parts - float(rows["whole process (wall)"])) <= 0.005 * len(rows)  # they add up (each printed rounded)
    assert float(re.search(r"^  validation speed \(float32 forward passes\)\s+(\d+\.\d) GFLOP/s$", out,
                           flags=re.M).group(1)) > 0  # fmt: skip
    floor_line = r"^start-up floor: .* (\d+\.\d\d) s = ([\d.]+)% of imports \+ training; 15% of the wall allows "
    found = re.search(floor_line + r"(\d+\.\d\d) s outside (\d+\.\d\d) s of training$", out, flags=re.M)
    assert found, out[-2000:]  # its figures from each other (a busy machine may slow the import past the run):
    floor, share, allowed, train = map(float, found.groups())
    assert (
        floor > 0.2 and abs(share / 100 - floor / (floor + train)) < 0.002 and abs(allowed - 0.15 / 0.85 * train) < 0.01
    )


def test_pareto_quick_prints_the_front_and_the_picks(tmp_path: Path) -> None:
    out = benchmark("pareto.py", "--quick", "--requests", "20", "--dir", str(tmp_path))
    assert "2 trials in " in out and "the Pareto front of val_acc, latency_ms, most accurate first:" in out
    row = next(line for line in out.splitlines() if line.startswith("most accurate (champion recipe)"))
    test_acc, weights, ms, p50 = row.split()[5:9]
    assert 0.5 < float(test_acc) <= 1 and int(weights.replace(",", "")) > 7000 and 0 < float(ms) < float(p50)


def test_step_speed_quick_prints_each_part_old_and_new_and_the_share_of_the_peak() -> None:
    out = benchmark("step_speed.py", "--quick", "model.layer_size=128")
    number = r"\s+(\d+\.\d\d)"
    rows = {k: tuple(map(float, v)) for k, *v in re.findall(
        rf"^(\S.*?\S){number}{number}{number}x{number}{number}{number}x$", out, flags=re.M)}  # fmt: skip
    parts = ["augmentation (affine + elastic)", "forward, dropout included", "backward", "optimizer step (fused AdamW)"]
    step = "step (the four above, summed per step)"
    assert {*parts, step, "dropout alone (its layers, forward + backward)"} <= set(rows)
    assert any(k.startswith("validation pass (1,024 images") for k in rows)
    assert any(k.startswith("epoch of 1,024 images") for k in rows)
    for row in rows.values():  # best, then median: old, new, old/new
        for old, new, ratio in (row[:3], row[3:]):
            assert old > 0 and new > 0.005  # each printed rounded to 0.01:
            assert (old - 0.005) / (new + 0.005) - 0.005 <= ratio <= (old + 0.005) / (new - 0.005) + 0.005
    for column in (0, 1, 3, 4):  # a step takes each of its parts (best or median: not their sum, on a busy machine)
        assert all(rows[step][column] >= rows[p][column] for p in parts)
    epoch = next(row for key, row in rows.items() if key.startswith("epoch of 1,024 images"))
    ratios = re.search(
        r"^an epoch of model=best \(new\) takes (\S+) of the old path's \(best\), (\S+) \(median\)$", out, re.M
    )
    for ratio, old, new in ((ratios[1], *epoch[:2]), (ratios[2], *epoch[3:5])):  # the table's epochs, rounded
        assert (new - 0.005) / (old + 0.005) - 0.005 <= float(ratio) <= (new + 0.005) / (old - 0.005) + 0.005
    peaks = re.findall(r"^(best|median): matmul peak GFLOP/s at 512x128x128 of 1: bf16 (\S+), fp32 (\S+)$", out, re.M)
    assert [p[0] for p in peaks] == ["best"] * 2 + ["median"] * 2 and all(float(x) > 0 for p in peaks for x in p[1:])
    shares = re.findall(r"^  (old|new) step: \d+ GFLOP/s = (\d+)% of the bf16 peak$", out, flags=re.M)
    assert [path for path, _ in shares] == ["old", "new"] * 2 and all(int(s) > 0 for _, s in shares)
