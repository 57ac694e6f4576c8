"""Engine pieces: injection counts, metrics, splits, training set assembly, trainer."""

import os

import numpy as np
import pytest
import torch
from sklearn.metrics import (average_precision_score, balanced_accuracy_score,
                             brier_score_loss, f1_score, precision_recall_curve, recall_score,
                             roc_auc_score)

from medbench import injection, metrics
from medbench.data import ImageSet
from medbench.errors import DataError, SuiteError, TrainingError
from medbench.engine import Engine, positive_index, selection_rule
from medbench.splits import make_folds
from medbench.suite import TrainingConfig, load_suite
from medbench.trainer import (Selection, Settings, Trainer, augment_batch, balanced_mean,
                              batches, class_weight_vector)

from conftest import tiny_suite


# ------------------------------------------------------------------ injection


@pytest.mark.parametrize("counts", [[100, 30, 10], [50, 50], [7, 300, 1, 40], [1, 1, 2]])
def test_balance_fills_to_majority(counts):
    add = injection.plan("balance", counts, [str(i) for i in range(len(counts))])
    assert [c + a for c, a in zip(counts, add)] == [max(counts)] * len(counts)


@pytest.mark.parametrize("siir", [0.0, 0.05, 0.2, 0.5, 1.3])
@pytest.mark.parametrize("counts", [[100, 30, 10], [3616, 10192, 6012, 1345], [5, 9]])
def test_complementary_total_and_weights(siir, counts):
    add = injection.plan("complementary", counts, [str(i) for i in range(len(counts))], siir=siir)
    assert sum(add) == round(siir * sum(counts))
    gap = [max(counts) - c for c in counts]
    assert add[int(np.argmax(counts))] == 0
    # shares follow the complementary frequency within rounding
    for a, g in zip(add, gap):
        assert abs(a - sum(add) * g / sum(gap)) < 1.0
    # smaller classes never get fewer images than larger ones
    order = np.argsort(counts)
    assert all(add[order[i]] >= add[order[i + 1]] for i in range(len(counts) - 1))


def test_fixed_policy():
    assert injection.plan("fixed", [10, 40, 5], ["a", "b", "c"], per_class=7) == [7, 0, 7]
    assert injection.plan("fixed", [10, 40, 5], ["a", "b", "c"], per_class={"c": 3}) == [0, 0, 3]
    with pytest.raises(SuiteError):
        injection.plan("fixed", [1, 2], ["a", "b"], per_class={"zz": 1})


# ------------------------------------------------------------------ metrics


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    logits = rng.normal(size=(200, 3)) + 2 * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    rows = {(m, c): v for m, c, v in metrics.compute(y, p, ["a", "b", "c"], [
        "accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "recall", "specificity",
        "confusion"])}
    pred = p.argmax(1)
    assert rows[("accuracy", "")] == pytest.approx((pred == y).mean())
    assert rows[("balanced_accuracy", "")] == pytest.approx(balanced_accuracy_score(y, pred))
    assert rows[("macro_f1", "")] == pytest.approx(f1_score(y, pred, average="macro"))
    assert rows[("roc_auc", "")] == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))
    # specificity of class a: true negatives / negatives
    neg = y != 0
    assert rows[("specificity", "a")] == pytest.approx(((pred != 0) & neg).sum() / neg.sum())
    assert sum(v for (m, _), v in rows.items() if m == "confusion") == 200
    assert rows[("confusion", "b->b")] == ((y == 1) & (pred == 1)).sum()


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_a_class_absent_from_the_test_fold_has_no_recall_and_leaves_the_macro_averages():
    # class c never occurs in y (a fold without it); the model still predicts it twice
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    pred = np.array([0, 0, 2, 1, 1, 0, 0, 2])
    p = np.eye(3)[pred] * 0.8 + 0.1
    rows = {(m, c): v for m, c, v in metrics.compute(y, p, ["a", "b", "c"], [
        "balanced_accuracy", "macro_f1", "macro_recall", "macro_precision", "recall", "f1",
        "precision"])}
    assert np.isnan(rows[("recall", "c")]) and np.isnan(rows[("f1", "c")])
    assert rows[("precision", "c")] == 0.0                     # it was predicted, wrongly
    present = [0, 1]
    assert rows[("macro_f1", "")] == pytest.approx(f1_score(y, pred, labels=present, average="macro"))
    assert rows[("macro_recall", "")] == pytest.approx(
        recall_score(y, pred, labels=present, average="macro"))
    assert rows[("balanced_accuracy", "")] == pytest.approx(balanced_accuracy_score(y, pred))
    # with every class present the macro F1 is sklearn's plain macro F1 (as above)
    assert rows[("macro_f1", "")] > f1_score(y, pred, labels=[0, 1, 2], average="macro",
                                             zero_division=0)


def test_threshold_tuning_improves_val_f1():
    rng = np.random.default_rng(1)
    y = (rng.random(300) < 0.2).astype(int)
    score = np.clip(0.25 + 0.3 * y + rng.normal(0, 0.12, 300), 0, 1)
    p = np.stack([1 - score, score], 1)
    t = metrics.tune_threshold(y, p)
    assert f1_score(y, (score >= t).astype(int)) >= f1_score(y, (score >= 0.5).astype(int))
    assert t < 0.5


def _binary_scores(seed=2, n=400, share=0.25):
    """Labels where class 0 is the minority (as PneumoniaMNIST's normal class is) and
    informative, imperfect probabilities."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) >= share).astype(int)               # 1 is the majority
    p1 = np.clip(0.55 + 0.25 * (2 * y - 1) + rng.normal(0, 0.2, n), 0.01, 0.99)
    return y, np.stack([1 - p1, p1], 1)


def test_positive_class_drives_pr_auc_and_the_threshold():
    y, p = _binary_scores()
    classes = ["normal", "pneumonia"]
    for pos in (0, 1):
        rows = dict(((m, c), v) for m, c, v in metrics.compute(
            y, p, classes, ["pr_auc", "roc_auc"], positive=pos))
        assert rows[("pr_auc", "")] == pytest.approx(
            average_precision_score(y, p[:, pos], pos_label=pos))
        assert rows[("roc_auc", "")] == pytest.approx(roc_auc_score(y, p[:, 1]))
    # the two classes give different PR-AUCs: which one is asked for matters
    assert average_precision_score(y, p[:, 0], pos_label=0) != pytest.approx(
        average_precision_score(y, p[:, 1], pos_label=1), abs=1e-3)
    # the threshold maximises the F1 of the positive class: scikit-learn's precision-
    # recall curve of that class, with pos_label, has no threshold with a higher F1
    for pos in (0, 1):
        t = metrics.tune_threshold(y, p, positive=pos)
        pred = metrics.predict(p, t, positive=pos)
        assert set(pred[p[:, pos] >= t]) == {pos} and pos not in set(pred[p[:, pos] < t])
        best = f1_score(y, pred, pos_label=pos)
        prec, rec, _ = precision_recall_curve(y, p[:, pos], pos_label=pos)
        f1s = np.divide(2 * prec * rec, prec + rec, out=np.zeros_like(prec), where=prec + rec > 0)
        assert best == pytest.approx(f1s.max())
        rows = dict(((m, c), v) for m, c, v in metrics.compute(
            y, p, classes, ["f1"], threshold=t, positive=pos))
        assert rows[("f1", classes[pos])] == pytest.approx(best)


def test_positive_class_defaults_to_the_minority_and_is_checked():
    ds = _imageset([30, 10])
    assert positive_index(ds, None) == 1 and positive_index(ds, "c0") == 0
    assert positive_index(_imageset([5, 9]), None) == 0
    assert positive_index(_imageset([5, 9, 3]), None) is None
    with pytest.raises(DataError, match="not a class of the data"):
        positive_index(ds, "c7")
    with pytest.raises(DataError, match="applies to binary tasks"):
        positive_index(_imageset([5, 9, 3]), "c0")


def test_calibration_ece_and_brier_by_hand_and_against_sklearn():
    # top probabilities 0.9, 0.9, 0.6, 0.6 (bins (0.867, 0.933] and (0.533, 0.6]) with
    # one of each pair right: ECE = 0.5 * |0.5 - 0.9| + 0.5 * |0.5 - 0.6| = 0.25
    p = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 0, 0, 0])
    assert metrics.expected_calibration_error(y, p) == pytest.approx(0.25)
    # Brier: (0.1^2 * 2) + (0.9^2 * 2) + (0.4^2 * 2) + (0.6^2 * 2), over 4 images
    assert metrics.brier_score(y, p) == pytest.approx((0.02 + 1.62 + 0.32 + 0.72) / 4)
    yb, pb = _binary_scores()
    assert metrics.brier_score(yb, pb) == pytest.approx(2 * brier_score_loss(yb, pb[:, 1]))
    # a perfectly calibrated predictor in expectation: small ECE; a confident wrong one: ~1
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 20000)
    right = rng.random(20000) < conf
    pc = np.stack([conf, 1 - conf], 1)
    assert metrics.expected_calibration_error(np.where(right, 0, 1), pc) < 0.02
    assert metrics.expected_calibration_error(np.ones(10, int), np.tile([0.99, 0.01], (10, 1))) \
        == pytest.approx(0.99)
    rows = {m: v for m, _, v in metrics.compute(y, p, ["a", "b"], ["ece", "brier"])}
    assert rows == pytest.approx({"ece": 0.25, "brier": (0.02 + 1.62 + 0.32 + 0.72) / 4})
    assert metrics.lower_is_better("ece") and metrics.lower_is_better("brier")
    assert metrics.lower_is_better("test_loss") and not metrics.lower_is_better("macro_f1")


# ------------------------------------------------------------------ splits


def _imageset(counts, splits=None):
    labels = np.concatenate([[c] * n for c, n in enumerate(counts)])
    imgs = torch.arange(len(labels) * 4, dtype=torch.int64).remainder(256).to(torch.uint8)
    return ImageSet(imgs.view(-1, 1, 2, 2), torch.from_numpy(labels),
                    [f"c{i}" for i in range(len(counts))], splits=splits)


def test_kfold_partitions_every_image_into_one_test_fold():
    ds = _imageset([50, 20, 10])
    folds = make_folds(ds, "kfold", seed=3, folds=5)
    test = np.concatenate([f.test for f in folds])
    assert sorted(test.tolist()) == list(range(len(ds)))
    for f in folds:
        assert not set(f.train) & set(f.test) and not set(f.val) & set(f.test)
        assert np.bincount(ds.labels.numpy()[f.test], minlength=3).min() >= 2  # stratified
    assert [f.test.tolist() for f in folds] == [f.test.tolist() for f in make_folds(ds, "kfold", seed=3, folds=5)]


def test_holdout_uses_the_datasets_own_splits():
    splits = ["train"] * 60 + ["test"] * 20
    rng = np.random.default_rng(0)
    order = rng.permutation(80)
    ds = _imageset([40, 40], splits=[splits[i] for i in order])
    (fold,) = make_folds(ds, "holdout", seed=0, val_fraction=0.2)
    assert sorted(fold.test.tolist()) == ds.split_index("test").tolist()
    assert set(fold.val) <= set(ds.split_index("train").tolist())


def test_too_few_images_is_a_clear_error():
    with pytest.raises(DataError, match="needs at least 5 images per class"):
        make_folds(_imageset([30, 3]), "kfold", seed=0, folds=5)


# ------------------------------------------------------------------ training set


def test_synthetic_images_only_enter_training(write_suite):
    loaded = load_suite(write_suite(tiny_suite()))
    from medbench.engine import load_dataset
    ds, _ = load_dataset(loaded)
    engine = Engine(loaded, ds, torch.device("cpu"))
    arm = engine.arm("oversample")
    for fold in engine.folds(0):
        x, y, synth, wanted = engine.training_set(arm, fold, 0)
        real_train = ds.images[torch.from_numpy(fold.train)]
        assert torch.equal(x[~synth], real_train)            # real part untouched
        counts = torch.bincount(y, minlength=3).tolist()
        assert counts == [max(counts)] * 3                   # balance policy
        assert int(synth.sum()) == sum(wanted)
        # every synthetic image is a copy of a training image of its own class, and the
        # held-out images are exactly the dataset's real images of the fold
        train_rows = {(bytes(img.numpy().tobytes()), int(lbl)) for img, lbl in
                      zip(real_train, ds.labels[torch.from_numpy(fold.train)])}
        for img, lbl in zip(x[synth], y[synth]):
            assert (bytes(img.numpy().tobytes()), int(lbl)) in train_rows
        held_out = set(fold.val.tolist()) | set(fold.test.tolist())
        assert not held_out & set(fold.train.tolist())


# ------------------------------------------------------------------ trainer


class _Net(torch.nn.Module):
    """body + head, the head reachable as .head (a Sequential would run it twice)."""

    def __init__(self, *layers):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), *layers[:-1])
        self.head = layers[-1]

    def forward(self, x):
        return self.head(self.body(x))


def _settings(**kw):
    return Settings.resolve(TrainingConfig(**kw), {"optimizer": "adam", "lr": 1e-2, "batch_size": 8})


def test_batches_cover_everything_and_avoid_singletons():
    for n in (1, 9, 16, 17, 33):
        got = torch.cat(list(batches(n, 8, torch.Generator().manual_seed(0))))
        assert sorted(got.tolist()) == list(range(n))
        assert all(len(b) != 1 for b in batches(n, 8, None)) or n == 1


def test_augment_batch_is_seeded_and_shape_preserving():
    from medbench.suite import AugmentConfig
    x = torch.randn(6, 1, 16, 16)
    aug = AugmentConfig(hflip=True, rotate=15, translate=0.1, scale=0.1, brightness=0.2, contrast=0.2)
    a = augment_batch(x, aug, torch.Generator().manual_seed(5))
    b = augment_batch(x, aug, torch.Generator().manual_seed(5))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def test_nan_loss_is_a_training_error():
    model = _Net(torch.nn.Linear(4, 2))
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    x = torch.randint(0, 255, (10, 1, 2, 2), dtype=torch.uint8)
    y = torch.randint(0, 2, (10,))
    trainer = Trainer(_settings(epochs=1), torch.device("cpu"), "half", 1)
    with pytest.raises(TrainingError, match="NaN|nan"):
        trainer.fit(model, model.head, x, y, x, y, seed=0)


def test_frozen_backbone_stage_changes_only_the_head():
    torch.manual_seed(0)
    model = _Net(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randint(0, 255, (32, 1, 2, 2), dtype=torch.uint8)
    y = (x.float().mean((1, 2, 3)) > 127).long()
    cfg = TrainingConfig(stages=[{"epochs": 3, "freeze_backbone": True}], epochs=3)
    trainer = Trainer(Settings.resolve(cfg, {"lr": 0.05}), torch.device("cpu"), "half", 1)
    trainer.fit(model, model.head, x, y, x, y, seed=0)
    after = model.state_dict()
    assert torch.equal(before["body.1.weight"], after["body.1.weight"])
    assert not torch.equal(before["head.weight"], after["head.weight"])


def test_balanced_mean_weighs_every_class_alike():
    losses = torch.tensor([1.0, 1.0, 1.0, 4.0, 0.5, 0.5])
    y = torch.tensor([0, 0, 0, 1, 2, 2])
    assert balanced_mean(losses, y) == pytest.approx((1.0 + 4.0 + 0.5) / 3)
    # a class absent from the split does not count
    assert balanced_mean(torch.tensor([2.0, 1.0]), torch.tensor([0, 2])) == pytest.approx(1.5)


def _imbalanced(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 255, (n, 1, 2, 2), dtype=torch.uint8, generator=g)
    y = ((x.float().mean((1, 2, 3)) > 150) | (torch.rand(n, generator=g) < 0.1)).long()
    return x, y


@pytest.mark.parametrize("rule", ["balanced_loss", "loss", "macro_f1"])
def test_the_selection_rule_chooses_the_checkpoint_and_ignores_class_weights(rule):
    x, y = _imbalanced()
    xv, yv = _imbalanced(seed=1)
    sel = selection_rule(rule, ["a", "b"], 1)
    for weights in (None, class_weight_vector(y, 2)):
        torch.manual_seed(0)
        model = _Net(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        trainer = Trainer(_settings(epochs=6, selection=rule), torch.device("cpu"), "half", 1)
        res = trainer.fit(model, model.head, x, y, xv, yv, seed=0, class_weights=weights,
                          selection=sel)
        scores = [h["val_score"] for h in res.history]
        best = (int(np.argmax(scores)) if sel.maximize else int(np.argmin(scores))) + 1
        assert res.selection == rule and res.best_epoch == best
        assert res.best_score == pytest.approx(scores[best - 1])
        # the restored model is the chosen checkpoint, measured without the arm's weights
        probs, loss = trainer.evaluate(model, xv, yv)
        _, losses = trainer._predict(model, xv, yv)
        assert res.best_val_loss == pytest.approx(loss)
        assert res.best_score == pytest.approx(sel.value(yv, probs, losses))
        if rule == "balanced_loss":     # cross-entropy weighted by 1 / (validation count)
            w = 1.0 / torch.bincount(yv, minlength=2).float()
            _, weighted = trainer.evaluate(model, xv, yv, weight=w)
            assert res.best_score == pytest.approx(weighted, rel=1e-5)


def test_the_warm_up_chooses_no_checkpoint_and_spends_no_patience():
    # a rule whose value per epoch is scripted (lower is better): the warm-up's epoch 1
    # is the best of all, as a class-balanced loss can be before a net learns anything
    values = [0.1, 0.9, 0.8, 0.7, 0.6, 0.65, 0.5, 0.4]
    x, y = _imbalanced()

    def fit(early_stopping, epochs=8):
        script = iter(values)
        sel = Selection("scripted", lambda yv, probs: next(script), maximize=False)
        model = _Net(torch.nn.Linear(4, 2))
        trainer = Trainer(_settings(epochs=epochs, early_stopping=early_stopping),
                          torch.device("cpu"), "half", 1)
        return trainer.fit(model, model.head, x, y, x, y, seed=0, selection=sel)

    assert fit(None).best_epoch == 1
    res = fit({"patience": 1})
    assert (res.epochs_run, res.best_epoch) == (2, 1)
    res = fit({"patience": 100, "start_from_epoch": 3})
    assert (res.epochs_run, res.best_epoch, res.best_score) == (8, 8, 0.4)
    # patience counts from epoch 4: 0.7, 0.6 (best), 0.65 (no better: stop)
    res = fit({"patience": 1, "start_from_epoch": 3})
    assert (res.epochs_run, res.best_epoch, res.best_score) == (6, 5, 0.6)
    # a run no longer than its warm-up restores its last epoch
    assert fit({"patience": 1, "start_from_epoch": 5}, epochs=4).best_epoch == 4


def test_selection_is_validated_and_metric_rules_need_a_score():
    assert TrainingConfig().selection == "balanced_loss"
    assert TrainingConfig(selection="roc_auc").selection == "roc_auc"
    with pytest.raises(ValueError, match="unknown selection rule 'recall'"):
        TrainingConfig(selection="recall")            # a per-class metric: no one number
    with pytest.raises(TrainingError, match="score function"):
        Selection("macro_f1")
    assert selection_rule("ece", ["a", "b"], 1).maximize is False
    assert selection_rule("balanced_accuracy", ["a", "b"], 1).maximize is True


def test_every_arm_of_a_suite_is_selected_by_the_same_recorded_rule(write_suite):
    from medbench.engine import Cell, load_dataset
    suite = tiny_suite(arms=[{"name": "none"}, {"name": "class-weights", "class_weights": True},
                             {"name": "oversample", "generator": "oversample"}],
                       protocol={"kind": "kfold", "folds": 3, "seeds": [0], "max_folds": 1})
    suite["training"] = {**suite["training"], "epochs": 1}
    loaded = load_suite(write_suite(suite))
    ds, report = load_dataset(loaded)
    assert "positive_class" not in report                  # 3 classes: no positive one
    engine = Engine(loaded, ds, torch.device("cpu"))
    frames = [engine.run_cell(Cell(i, arm, "smallcnn", 0, 0))[0]
              for i, arm in enumerate(("none", "class-weights", "oversample"))]
    assert [set(f["selection"]) for f in frames] == [{"balanced_loss"}] * 3
    for f in frames:
        assert {"val_loss", "val_balanced_loss", "ece", "brier"} <= set(f["metric"])


def test_class_weights_are_inverse_frequency():
    w = class_weight_vector(torch.tensor([0] * 6 + [1] * 3 + [2]), 3)
    assert torch.allclose(w, torch.tensor([10 / 18, 10 / 9, 10 / 3]))


# --------------------------------------------------------------------------- files


def test_atomic_write_honours_umask_and_leaves_nothing_on_failure(tmp_path):
    from medbench.files import atomic_text, atomic_write

    old = os.umask(0o027)
    try:
        atomic_text(tmp_path / "a.txt", "hello")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640   # not mkstemp's 0600

    def half_then_fail(p):
        p.write_text("partial")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "a.txt", half_then_fail)
    assert (tmp_path / "a.txt").read_text() == "hello"              # old content kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temporary left
