"""`python -m experiments.reproduce --quick` end to end: every table, figure and number is written, and a
rerun resumes from the files instead of training or streaming again. Which method wins is not tested."""
import json
import os
import subprocess
import sys

import pytest

from experiments import reproduce

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(tmp_path):
    cmd = [sys.executable, "-m", "experiments.reproduce", "--quick", "--out", str(tmp_path / "run"),
           "--doc", str(tmp_path / "REPRODUCTION.md"), "--figures", str(tmp_path / "figures")]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
def test_quick_reproduction_writes_every_table_and_resumes(tmp_path):
    first = _run(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    doc = (tmp_path / "REPRODUCTION.md").read_text()
    for heading in ("## Claims", "## Table 4 shape", "## Table 5 shape", "## Table 7 shape", "## Fig. 8 shape",
                    "## Efficiency", "## Every run", "--quick", "Can the models read and copy names"):
        assert heading in doc, heading
    for v in reproduce.VARIANTS:
        assert f"| {v} (overlap" in doc, v
    data = json.loads((tmp_path / "run" / "reproduction.json").read_text())
    runs = reproduce.grid(reproduce.QUICK)
    assert sorted(data["runs"]) == sorted(r.id for r in runs)
    for r in data["runs"].values():
        assert len(r["segments"]) == 5 and r["cost"]["peak_cache_bytes"] > 0
        assert r["reached"] == r["seconds"] or r["stopped"]  # full attention may stop at its memory cap
        assert sum(s["events"] for s in r["segments"]) == r["score"]["events"] > 0
    assert sorted(data["probes"]) == sorted({f"{r.variant}_s{r.seed}" for r in runs})
    for p in data["probes"].values():  # teacher-forced name accuracy: counts of real name tokens
        assert p["probe"]["entry"]["n"] + p["probe"]["copy"]["n"] > 0
        kinds = [p["probe"][k] for k in ("entry", "copy", "unseen")]
        assert all(0 <= k["ok"] <= k["n"] for k in kinds)
        assert sum(p["probe"]["predicted"].values()) == sum(k["n"] for k in kinds)
    assert len(data["claims"]) == 6 and all(c["holds"] in (True, False, None) for c in data["claims"])
    for c in data["claims"]:
        assert c["claim"] in first.stdout and c["paper"] in first.stdout
    assert os.path.getsize(tmp_path / "figures" / "reproduction_segments_quick.png") > 0
    assert os.path.getsize(tmp_path / "figures" / "reproduction_efficiency_quick.png") > 0
    assert json.loads((tmp_path / "figures" / "reproduction_quick.json").read_text())["claims"] == data["claims"]

    again = _run(tmp_path)  # everything is on disk: nothing is trained or streamed again
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training" not in again.stdout and "call F1 " not in again.stdout.split("Claim |")[0]
    redo = json.loads((tmp_path / "run" / "reproduction.json").read_text())
    assert redo["claims"] == data["claims"] and redo["meta"]["sessions"] == 2


def test_bad_flags_exit_2(tmp_path, capsys):
    assert reproduce.main(["--quick", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
