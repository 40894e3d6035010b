"""The evaluation harness in its small form (2 held-out seeds at 3 mm) through a real stack:
every part runs, the report and JSON are written, and the 3 mm targets hold."""
import json
import sys
from pathlib import Path

import pytest

from tests import tools

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_small_evaluation_meets_the_targets_at_3mm(tmp_path):
    if not (Path(sys.executable).parent / "envoy").exists():
        tools.missing("envoy (run `make setup`)")
    sys.path.insert(0, str(REPO / "scripts"))
    import eval as evaluation

    out_json, out_md = tmp_path / "evaluation.json", tmp_path / "evaluation.md"
    assert evaluation.main(["--seeds", "2", "--resolutions", "3mm", "--json", str(out_json),
                            "--markdown", str(out_md)]) == 0
    data = json.loads(out_json.read_text())
    assert data["meta"]["seeds"] == [evaluation.FIRST_HELD_OUT_SEED, evaluation.FIRST_HELD_OUT_SEED + 1]
    assert len(data["cases"]) == 2
    summary = data["summary"]["3mm"]
    assert set(summary) >= {"chain", "fat", "repair", "template", "checks"}
    assert set(summary["chain"]) == set(evaluation.CHAIN_STRUCTURES)
    for row in summary["chain"].values():
        assert row["cases"] == 2 and row["dice"]["min"] <= row["dice"]["median"] <= row["dice"]["max"]
    # The harness's own checks; the science targets are reported (docs/evaluation.md), and the
    # ones the demo models miss are named there, so they are not asserted here.
    assert summary["chain"]["kidney"]["dice"]["min"] >= 0.9
    assert summary["repair"]["artery"]["dice"]["min"] >= 0.9
    assert summary["fat"]["fat"]["dice"]["min"] >= 0.92  # AddFat on true inputs
    assert {row["what"] for row in data["targets"]} >= {"chain kidney Dice min", "fat fat Dice min",
                                                         "cases with a tumor piece outside the kidneys"}
    assert "| 3mm | chain kidney Dice min |" in out_md.read_text()
    assert (tmp_path / "evaluation-dice.png").stat().st_size > 1000
    with pytest.raises(SystemExit):  # evaluation seeds never overlap the development ones
        evaluation.main(["--first-seed", "100"])
