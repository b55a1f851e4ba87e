"""finetune compares with the setup as given; the result and the model follow the featx classifier contract;
bad arguments are featx errors that name the parameter, raised before any embedding."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

import featx
from featx.data.loaders import load_image_folder
from featx.cli import main
from featx.finetuning.estimator import FineTunedClassifier
from featx.finetuning.run import FineTuneResult
from test_finetune import text_task


@pytest.fixture
def bert(tiny_bert_dir):
    return f"hf/{tiny_bert_dir}"


def held_out_split(X, y):
    return train_test_split(X, np.asarray(y), test_size=0.25, stratify=y, random_state=0)


def test_the_frozen_reference_is_the_setup_with_its_own_head(bert, tmp_path):
    X, y = text_task(40)
    X_train, X_test, y_train, y_test = held_out_split(X, y)
    setup = featx.TransferClassifier(bert, head="knn", head_params={"n_neighbors": 3}, cache_dir=tmp_path / "c")
    result = featx.finetune(setup, X_train, y_train, strategy="lp-ft", epochs=1, batch_size=8, X_test=X_test,
                            y_test=y_test, progress=False)
    assert (result.frozen.head, result.frozen.head_params) == ("knn", {"n_neighbors": 3})
    refit = featx.TransferClassifier(bert, head="knn", head_params={"n_neighbors": 3}, cache_dir=tmp_path / "c")
    assert result.scores["frozen"] == refit.fit(X_train, y_train).score(X_test, y_test)
    # LP-FT still starts from a logistic-regression probe, fitted for it and scored under its own name
    assert result.probe.head == "logreg" and result.probe is not result.frozen
    assert set(result.scores) == {"frozen", "probe", "finetuned"}
    assert result.scores["probe"] == result.probe.score(X_test, y_test)
    assert "frozen knn head" in result.summary() and "linear probe" in result.summary()


def test_a_logreg_setup_is_its_own_probe_with_its_own_parameters(bert, tmp_path):
    X, y = text_task(40)
    setup = featx.TransferClassifier(bert, head_params={"C": 10.0}, cache_dir=tmp_path / "c")
    result = featx.finetune(setup, X, y, strategy="lp-ft", epochs=1, batch_size=8, progress=False)
    assert result.probe is result.frozen and result.frozen.head_.C == 10.0
    assert set(result.scores) == {"frozen", "finetuned"} and result.held_out == "validation"
    other = featx.finetune(setup, X, y, strategy="llrd", epochs=1, batch_size=8, progress=False)
    assert other.probe is None and set(other.scores) == {"frozen", "finetuned"}


def test_result_and_model_follow_the_classifier_contract(bert, tmp_path):
    X, y = text_task(40)
    result = featx.finetune(bert, X, y, strategy="lp-ft", epochs=1, batch_size=8, cache_dir=tmp_path / "c",
                            progress=False)
    model = result.model
    assert isinstance(result, FineTuneResult)
    assert model.backbone_.modality == "text" and model.backbone_.random_init is False
    assert model.backbone_name_ == f"{bert}+finetuned" and model.fingerprint_ == model.backbone_.fingerprint()
    assert list(model.classes_) == ["cats", "stocks"]
    before = dict(vars(model))
    model.predict(X[:5]), model.predict_proba(X[:5]), model.decision_function(X[:5]), model.score(X[:5], y[:5])
    assert vars(model).keys() == before.keys()  # predicting sets no attribute
    for keep in ("finetuned", "frozen"):
        result.keep = keep
        best = model if keep == "finetuned" else result.frozen
        assert result.best_ is best
        np.testing.assert_array_equal(result.predict(X), best.predict(X))
        np.testing.assert_allclose(result.predict_proba(X), best.predict_proba(X))
        assert result.score(X, y) == best.score(X, y) and list(result.classes_) == list(best.classes_)


def test_random_init_is_the_base_backbones(image_folder, tmp_path):
    paths, labels = load_image_folder(image_folder)
    setup = featx.TransferClassifier("timm/test_efficientnet", backbone_options={"image_size": 32, "pretrained": False},
                                     cache_dir=tmp_path / "c")
    result = featx.finetune(setup, paths, labels, epochs=1, batch_size=4, val_size=0.34, progress=False)
    base = featx.create_backbone("timm/test_efficientnet", image_size=32, pretrained=False)
    assert base.random_init and result.model.backbone_.random_init
    assert result.model.backbone_.modality == "image"


def test_cli_row_promotes_that_rows_head(tmp_path, tiny_bert_dir, capsys):
    X, y = text_task(48)
    data = tmp_path / "texts.csv"
    data.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in zip(X, y)))
    run_dir = tmp_path / "run"
    code = main(["sweep", str(data), "-b", f"hf/{tiny_bert_dir}", "--head", "logreg", "--head", "knn", "--cv", "2",
                 "--test-size", "0.25", "--run-dir", str(run_dir), "--cache-dir", str(tmp_path / "c"), "-q"])
    assert code == 0, capsys.readouterr().err
    rows = json.loads((run_dir / "leaderboard.json").read_text())["leaderboard"]
    knn_row = 1 + next(i for i, r in enumerate(rows) if r["head"] == "knn")
    code = main(["finetune", str(run_dir), "--row", str(knn_row), "--epochs", "1", "--batch-size", "8",
                 "--cache-dir", str(tmp_path / "c"), "-q"])
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads((run_dir / "finetune-lp-ft" / "finetune.json").read_text())
    assert summary["frozen_head"] == "knn" and set(summary["scores"]) == {"frozen", "probe", "finetuned"}
    assert f"frozen knn head {summary['scores']['frozen']:.3f}" in out
    frozen = featx.load(run_dir / "finetune-lp-ft" / "frozen.featx", cache_dir=tmp_path / "c")
    assert frozen.head == "knn" and frozen.head_params == rows[knn_row - 1]["params"]


@pytest.mark.parametrize("params, words", [
    ({"strategy": "sideways"}, ["'strategy'", "'lp-ft'", "'sideways'"]),
    ({"epochs": 0}, ["'epochs'", "range [1, inf)"]),
    ({"lr": -1e-4}, ["'lr'", "range [0.0, inf)"]),
    ({"val_size": 1.5}, ["'val_size'", "range (0.0, 1.0)"]),
    ({"val_size": 0}, ["'val_size'", "range (0.0, 1.0)"]),
    ({"batchnorm": "train"}, ["'batchnorm'", "'frozen'", "'update'"]),
    ({"batch_size": 0}, ["'batch_size'", "range [1, inf)"]),
    ({"epoch": 3}, ["epoch=", "'epochs'"]),
])
def test_bad_arguments_name_the_parameter_before_any_embedding(bert, tmp_path, params, words):
    X, y = text_task(20)
    with pytest.raises(featx.BadInputError) as info:
        featx.finetune(bert, X, y, cache_dir=tmp_path / "c", progress=False, **params)
    for word in words:
        assert word in str(info.value)
    assert not (tmp_path / "c").exists()  # nothing was embedded


def test_a_validation_split_too_small_for_the_classes_says_what_to_change(bert, tmp_path):
    X, y = text_task(20)
    with pytest.raises(featx.BadInputError, match=r"val_size=0.05 .* 2 classes .* change val_size"):
        featx.finetune(bert, X, y, val_size=0.05, cache_dir=tmp_path / "c", progress=False)


def test_backbones_that_cannot_be_fine_tuned(image_folder, tmp_path):
    paths, labels = load_image_folder(image_folder)
    with pytest.raises(featx.BadInputError, match="'acme/colorhist'.* not a torch model"):
        featx.finetune(featx.TransferClassifier("acme/colorhist", cache_dir=tmp_path / "c"), paths, labels,
                       progress=False)
    layered = featx.TransferClassifier("timm/test_efficientnet", cache_dir=tmp_path / "c",
                                       backbone_options={"layers": [-1, -2], "image_size": 32, "pretrained": False})
    with pytest.raises(featx.BadInputError, match=r"layers=\[-1, -2\].*drop the layers option"):
        featx.finetune(layered, paths, labels, progress=False)
    with pytest.raises(featx.BadInputError, match="view 'stage4'.*without a view"):
        featx.finetune(layered.set_params(view="stage4"), paths, labels, progress=False)
    assert not (tmp_path / "c").exists()
    with pytest.raises(featx.BadInputError, match="TransferClassifier"):
        featx.finetune(42, paths, labels, progress=False)


def test_the_estimator_validates_its_parameters_in_fit(bert):
    X, y = text_task(20)
    with pytest.raises(featx.BadInputError, match="'epochs' parameter of FineTunedClassifier"):
        FineTunedClassifier(bert, epochs=-2).fit(X, y)
    assert set(FineTunedClassifier._parameter_constraints) == set(FineTunedClassifier().get_params())


@pytest.mark.integration
def test_the_default_auto_backbone_is_named_by_what_x_holds(tmp_path):
    X, y = text_task(20)
    result = featx.finetune(featx.TransferClassifier(cache_dir=tmp_path / "c"), X, y, strategy="lp-ft", epochs=1,
                            lr=0.0, batch_size=8, progress=False)
    assert result.model.backbone == result.frozen.backbone == "hf/all-MiniLM-L6-v2"
    np.testing.assert_allclose(result.model.predict_proba(X), result.frozen.predict_proba(X), atol=1e-5)
