"""featx.detect_shift: the MMD test against a hand computation, false-positive rate on identical
distributions, power on a mean shift, the most shifted samples, bad input, the cache, the CLI."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import featx
from featx.cli import main

METHODS = ("mmd", "classifier", "ks")


def hand_mmd2(X: np.ndarray, Y: np.ndarray, median: float) -> float:
    """Unbiased MMD² with k(x, y) = exp(-|x - y|² / median), by explicit loops."""
    def k(a, b):
        return float(np.exp(-sum((ai - bi) ** 2 for ai, bi in zip(a, b)) / median))

    n, m = len(X), len(Y)
    xx = sum(k(X[i], X[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(Y[i], Y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x, y) for x in X for y in Y) / (n * m)
    return xx + yy - 2 * xy


def test_mmd_statistic_and_p_value_match_a_hand_computation():
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(9, 3)), rng.normal(size=(7, 3)) + 0.8
    pooled = np.vstack([X, Y])
    squared = [sum((a - b) ** 2) for a, b in itertools.combinations(pooled, 2)]
    median = float(np.median(squared))
    observed = hand_mmd2(X, Y, median)

    n_permutations = 40
    perm_rng = np.random.default_rng(0)  # the permutations detect_shift draws with random_state=0
    labels = np.r_[np.ones(9, bool), np.zeros(7, bool)]
    exceed = 0
    for _ in range(n_permutations):
        permuted = perm_rng.permutation(labels)
        exceed += hand_mmd2(pooled[permuted], pooled[~permuted], median) >= observed - 1e-6
    report = featx.detect_shift(X, Y, None, n_permutations=n_permutations, random_state=0)
    assert report.method == "mmd" and (report.n_ref, report.n_new) == (9, 7)
    assert report.statistic == pytest.approx(observed, abs=1e-5)
    assert report.p_value == pytest.approx((1 + exceed) / (1 + n_permutations))
    assert report.shifted == (report.p_value < 0.05)


@pytest.mark.parametrize("method", METHODS)
def test_identical_distributions_are_rarely_flagged(method):
    rng = np.random.default_rng(7)
    flagged = []
    for split in range(20):
        pool = rng.normal(size=(120, 5))
        report = featx.detect_shift(pool[:60], pool[60:], None, method=method, n_permutations=200,
                                    random_state=split)
        flagged.append(report.shifted)
    rate = float(np.mean(flagged))
    print(f"{method}: false-positive rate {rate:.2f} over 20 same-distribution splits at alpha 0.05")
    assert rate <= 0.15


@pytest.mark.parametrize("method", METHODS)
def test_a_mean_shift_is_flagged(method):
    rng = np.random.default_rng(3)
    report = featx.detect_shift(rng.normal(size=(80, 6)), rng.normal(size=(70, 6)) + 1.0, None, method=method,
                                n_permutations=200)
    assert report.shifted and report.p_value < 0.01 and report.alpha == 0.05


@pytest.mark.parametrize("method", METHODS)
def test_most_shifted_are_the_injected_outliers(method):
    rng = np.random.default_rng(4)
    new = rng.normal(size=(60, 4))
    outliers = [5, 17, 33, 48, 59]
    new[outliers] += 6
    report = featx.detect_shift(rng.normal(size=(60, 4)), new, None, method=method, n_permutations=100)
    indices, scores = report.most_shifted_
    assert sorted(indices[:5].tolist()) == outliers
    assert len(indices) == 60 and np.all(np.diff(scores) <= 0)


@pytest.mark.parametrize("kwargs, fault", [
    ({"X_new": np.zeros((5, 3))}, "X_ref has 4-d vectors but X_new 3-d"),
    ({"X_new": np.zeros((0, 4))}, "X_new has 0 samples"),
    ({"X_ref": np.zeros((1, 4))}, "X_ref has 1 sample:"),
    ({"X_new": np.r_[np.zeros((3, 4)), [[np.nan] * 4]]}, "X_new rows [3] hold NaN"),
    ({"method": "mdm"}, "method='mdm'"),
    ({"alpha": 0.0}, "alpha=0.0"),
    ({"alpha": 1.5}, "alpha=1.5"),
    ({"X_ref": ["some text", "more text"]}, "X_ref must be a 2-D float array"),
])
def test_bad_input_names_the_argument(kwargs, fault):
    args = {"X_ref": np.zeros((5, 4)), "X_new": np.ones((5, 4)), "backbone": None, **kwargs}
    with pytest.raises(featx.BadInputError) as info:
        featx.detect_shift(**args)
    assert fault in str(info.value)


@pytest.mark.parametrize("X_ref, X_new, fault", [
    ([], ["a cat", "a dog"], "X_ref: X is empty"),
    (["a cat", "a dog"], [], "X_new: X is empty"),
    (["a cat"], ["a dog", "a mat"], "X_ref has 1 sample:"),
    (np.r_[np.zeros((3, 4)), [[np.inf] * 4]], np.ones((3, 4)), "X_ref rows [3] hold NaN or inf"),
    (np.zeros((5, 4)), np.zeros(4), "X_new must be a 2-D float array"),
])
def test_empty_single_and_non_finite_sets_are_refused(counting, cache_dir, X_ref, X_new, fault):
    backbone = None if isinstance(X_ref, np.ndarray) else counting
    with pytest.raises(featx.BadInputError) as info:
        featx.detect_shift(X_ref, X_new, backbone, cache_dir=cache_dir)
    assert fault in str(info.value)


def test_mismatched_modalities_are_refused(counting, cache_dir):
    images = np.zeros((3, 8, 8, 3), np.uint8)
    with pytest.raises(featx.BadInputError, match="X_ref holds texts but X_new holds images"):
        featx.detect_shift(["a cat", "a dog", "a mat"], images, counting, cache_dir=cache_dir)
    with pytest.raises(featx.BadInputError, match="embeds texts"):
        featx.detect_shift(images, images, counting, cache_dir=cache_dir)
    assert counting.embedded == []


def test_samples_are_embedded_through_the_cache_once(counting, cache_dir):
    ref = [f"the cat sat {i}" for i in range(30)]
    new = [f"stock market fell {i}" for i in range(25)]
    first = featx.detect_shift(ref, new, counting, cache_dir=cache_dir, n_permutations=50)
    assert len(counting.embedded) == 55
    again = featx.detect_shift(ref, new, counting, method="ks", cache_dir=cache_dir)
    assert len(counting.embedded) == 55  # nothing embedded twice
    vectors = [featx.extract(counting, X, cache_dir=cache_dir).vectors for X in (ref, new)]
    on_vectors = featx.detect_shift(*vectors, None, n_permutations=50)
    assert (first.statistic, first.p_value) == (on_vectors.statistic, on_vectors.p_value)
    assert np.array_equal(first.most_shifted_[0], on_vectors.most_shifted_[0])
    assert again.n_ref == 30 and again.n_new == 25


def _folder(root, n: int, red: int, seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir()
    for i in range(n):
        pixels = rng.integers(0, 100, size=(16, 16, 3), dtype=np.uint8)
        pixels[..., 0] = np.clip(pixels[..., 0].astype(int) + red, 0, 255)
        Image.fromarray(pixels).save(root / f"{i}.png")
    return root


def test_cli_shift_prints_the_verdict_and_writes_a_report(tmp_path, capsys):
    ref, new = _folder(tmp_path / "ref", 12, 0, 0), _folder(tmp_path / "new", 10, 120, 1)
    code = main(["shift", str(ref), str(new), "-b", "acme/colorhist", "--report", str(tmp_path / "report"),
                 "--cache-dir", str(tmp_path / "cache"), "--permutations", "100"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("shift detected: mmd p=0.009901 < alpha 0.05") and "12 reference vs 10 new" in out
    page = (tmp_path / "report" / "report.html").read_text()
    assert "<script" not in page and "http" not in page and 'src="projection.png"' in page
    assert (tmp_path / "report" / "projection.png").stat().st_size > 1000
    assert page.count('src="shifted-') == 10 and (tmp_path / "report" / "shifted-10.png").is_file()


def test_cli_shift_errors_skip_leaves_unreadable_images_out_of_both_sets(tmp_path, capsys):
    ref, new = _folder(tmp_path / "ref", 12, 0, 0), _folder(tmp_path / "new", 10, 120, 1)
    (new / "broken.png").write_bytes(b"not a png")
    argv = ["shift", str(ref), str(new), "-b", "acme/colorhist", "--cache-dir", str(tmp_path / "cache"),
            "--permutations", "100", "--report", str(tmp_path / "report")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "--errors skip" in err and not (tmp_path / "report").exists()
    assert main([*argv, "--errors", "skip"]) == 0
    out, err = capsys.readouterr()
    assert "12 reference vs 10 new" in out and err.count("featx: skipped (unreadable):") == 1 and "broken.png" in err
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count('src="shifted-') == 10 and "broken" not in page


def test_cli_shift_same_folder_is_not_flagged(tmp_path, capsys):
    ref = _folder(tmp_path / "ref", 12, 0, 0)
    code = main(["shift", str(ref), str(ref), "-b", "acme/colorhist", "--method", "ks",
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 0 and capsys.readouterr().out.startswith("no shift detected: ks p=1 >= alpha 0.05")


@pytest.mark.parametrize("argv, message", [
    (["--alpha", "1"], "argument --alpha: must be a number strictly between 0 and 1"),
    (["--method", "mmmd"], "argument --method: invalid choice"),
])
def test_cli_shift_mistakes_exit_2(tmp_path, capsys, argv, message):
    ref = _folder(tmp_path / "ref", 3, 0, 0)
    with pytest.raises(SystemExit) as exit_info:
        main(["shift", str(ref), str(ref), "-b", "acme/colorhist", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_cli_shift_texts_against_images_exits_2(tmp_path, capsys):
    ref = _folder(tmp_path / "ref", 3, 0, 0)
    table = tmp_path / "news.csv"
    table.write_text("text\nhello\nworld\n")
    assert main(["shift", str(ref), str(table), "-b", "acme/colorhist", "--cache-dir", str(tmp_path / "c")]) == 2
    assert "holds texts (a table) but backbone 'acme/colorhist' embeds images" in capsys.readouterr().err


@pytest.mark.integration
def test_mnist_against_uci_digits_is_flagged_through_lite0(cache_dir):
    from featx.shift.digits import mnist_digits, uci_digits

    rng = np.random.default_rng(0)
    mnist, uci = mnist_digits(60, rng), uci_digits(60, rng)
    options = {"image_size": 32}
    report = featx.detect_shift(mnist, uci, "timm/tf_efficientnet_lite0", backbone_options=options,
                                cache_dir=cache_dir, n_permutations=200)
    assert report.shifted and report.p_value < 0.01 and (report.n_ref, report.n_new) == (60, 60)
    same = featx.detect_shift(mnist[:30], mnist[30:], "timm/tf_efficientnet_lite0", backbone_options=options,
                              cache_dir=cache_dir, n_permutations=200)
    assert not same.shifted


@pytest.mark.integration
def test_out_of_domain_text_is_flagged_and_a_same_distribution_news_stream_is_not(cache_dir):
    """A smaller examples/bbc_text_shift.py: MiniLM at 128 tokens, 60 reference articles."""
    from featx.shift.news import bbc_news, docstring_texts

    texts, _ = bbc_news()
    rows = np.random.default_rng(0).choice(len(texts), 100, replace=False)
    reference, control = [texts[i] for i in rows[:60]], [texts[i] for i in rows[60:]]
    docstrings = docstring_texts(40, np.random.default_rng(0))
    options = {"max_length": 128}
    for method in METHODS:
        ood = featx.detect_shift(reference, docstrings, "hf/all-MiniLM-L6-v2", method=method,
                                 backbone_options=options, cache_dir=cache_dir, n_permutations=200)
        same = featx.detect_shift(reference, control, "hf/all-MiniLM-L6-v2", method=method,
                                  backbone_options=options, cache_dir=cache_dir, n_permutations=200)
        assert ood.shifted and ood.p_value < 0.01, (method, ood.verdict())
        assert not same.shifted, (method, same.verdict())
