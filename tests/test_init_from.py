"""Fine-tuning a packaged student: ``student.init_from`` starts training from a package's
weights (or a checkpoint file) with its architecture and normalisation."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import small_config
from orbdistill.config import ConfigError
from orbdistill.distill_config import load_distill_config
from orbdistill.models import load_student
from orbdistill.packages import weights_sha256
from orbdistill.pipeline import _student, distill, run_train


def _fine_tune_config(bulk_only, tmp_path, **student):
    cfg, _ = bulk_only
    pkg = Path(cfg["package_dir"])
    shutil.copytree(Path(cfg["work_dir"]) / "data", tmp_path / "run" / "data")  # no labelling
    new = small_config(tmp_path, student={"kind": "v2", "init_from": str(pkg), **student},
                       train={"epochs": 1, "batch_size": 8, "lr": 1e-4, "warmup_epochs": 1})
    return new, pkg


def test_fine_tuning_starts_from_the_package_and_beats_a_fresh_start(bulk_only, tmp_path):
    cfg, pkg = _fine_tune_config(bulk_only, tmp_path)
    start = load_student(pkg)
    model = _student(load_distill_config(cfg), [])
    for (k, a), (_, b) in zip(start.state_dict().items(), model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)  # the weights and normalisation, unchanged
    summary = distill(cfg, progress=False, log_fn=None)  # the data are there: trains and packages
    tuned = load_student(summary["package"])
    # the element references are the package's, not refitted on this data
    torch.testing.assert_close(tuned.element_refs, start.element_refs, rtol=0, atol=0)
    # the new card and README say where the weights started
    card = json.loads((Path(summary["package"]) / "card.json").read_text())
    assert card["training"]["init_from"] == {"source": str(pkg), "weights_sha256": weights_sha256(pkg)}
    assert f"started from | `{pkg}`" in (Path(summary["package"]) / "README.md").read_text()
    fresh_cfg = dict(cfg, student=small_config(tmp_path)["student"], work_dir=str(tmp_path / "fresh"))
    shutil.copytree(tmp_path / "run" / "data", tmp_path / "fresh" / "data")
    _, fresh, _ = run_train(fresh_cfg, progress=False, log_fn=None)
    # one epoch from the package keeps its accuracy; one epoch from scratch is far off
    start_card = json.loads((pkg / "card.json").read_text())
    tuned_f = json.loads((tmp_path / "run" / "train" / "history.json").read_text())[-1]["force_mae_mev_a"]
    fresh_f = fresh.history[-1]["force_mae_mev_a"]
    assert tuned_f < 0.5 * fresh_f
    assert tuned_f < 3 * start_card["metrics"]["force_mae_mev_a"]


def test_a_checkpoint_file_works_as_well_as_a_package(bulk_only, tmp_path):
    cfg, pkg = _fine_tune_config(bulk_only, tmp_path)
    cfg["student"]["init_from"] = str(pkg / "model.pt")
    model = _student(load_distill_config(cfg), [])
    torch.testing.assert_close(model.element_refs, load_student(pkg).element_refs, rtol=0, atol=0)


@pytest.mark.parametrize("change, expected", [
    ({"overrides": {"num_features": 64}}, r"num_features = 64 \(the weights have 32\)"),
    ({"kind": "v1"}, r"is a v2 student, but student.kind is 'v1'"),
    ({"init_from_teacher": True}, "both set"),
    ({"init_from": "no-such-package"}, "no-such-package"),
])
def test_a_start_that_cannot_fit_the_config_is_named_before_any_work(bulk_only, tmp_path, change, expected):
    cfg, _ = _fine_tune_config(bulk_only, tmp_path)
    cfg["student"].update(change)
    with pytest.raises(ConfigError, match=expected):
        load_distill_config(cfg)


def test_elements_the_weights_do_not_cover_are_named(bulk_only, tmp_path):
    cfg, _ = _fine_tune_config(bulk_only, tmp_path)
    cfg["generate"]["seeds"] = ["bulk:Ag:fcc:4.09"]
    with pytest.raises(ConfigError, match="covers Cu; the data also has Ag"):
        load_distill_config(cfg)
