"""The embedded benchmark's version 2: the body-evidence dial moves class evidence and nothing
else, and the body-only / part-only renderings differ from the normal image only where they say."""
import colorsys
import json

import numpy as np
import pytest
from scipy import stats

import dataloader
from camlab import synthetic as gen
from camlab.images import decode_image, read_mask
from camlab.utils import CamlabError

K = len(gen.PART_STYLES)
DRAWS = 3000  # body looks per statistical test (balanced: 300 per class)


def _looks(dial: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(labels, periods, light-stripe hues measured from the pixels, textures' mean RGB) of
    DRAWS body textures drawn at ``dial``, at 16 px (the look's parameters do not depend on size)."""
    labels = np.arange(DRAWS) % K
    periods, hues, means = [], [], []
    for i, label in enumerate(labels):
        texture, look = gen._body_texture(np.random.default_rng([seed, i]), int(label), 16, dial)
        pixels = texture.reshape(-1, 3)
        light = pixels[np.argmax(pixels.sum(axis=1))] / 255.0
        hues.append(colorsys.rgb_to_hsv(*light)[0])
        periods.append(look.period)
        means.append(pixels.mean(axis=0))
    return labels, np.array(periods), np.array(hues), np.array(means)


def _dependence_p(labels: np.ndarray, values: np.ndarray, circular: bool = False) -> float:
    """p-value of the chi-square test of independence between the label and ``values`` binned
    into 5 equal-count bins (hue: 5 equal arcs, it is circular)."""
    edges = np.linspace(0, 1, 6) if circular else np.quantile(values, np.linspace(0, 1, 6))
    bins = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, 4)
    table = np.zeros((K, 5))
    np.add.at(table, (labels, bins), 1)
    return stats.chi2_contingency(table).pvalue


def test_at_dial_0_the_body_is_independent_of_the_label() -> None:
    labels, periods, hues, _ = _looks(0.0)
    assert _dependence_p(labels, periods) > 0.01
    assert _dependence_p(labels, hues, circular=True) > 0.01


def test_at_dial_1_the_body_names_the_class() -> None:
    # the same test has the power to see evidence when there is some
    labels, periods, hues, _ = _looks(1.0)
    assert _dependence_p(labels, periods) < 1e-12
    assert _dependence_p(labels, hues, circular=True) < 1e-12
    band = (gen._PERIOD_RANGE[1] - gen._PERIOD_RANGE[0]) / K
    assert np.array_equal(((periods - gen._PERIOD_RANGE[0]) // band).astype(int), labels)


def test_pooled_body_statistics_do_not_move_with_the_dial() -> None:
    """Tolerances: two-sample KS tests at p > 0.01 for the period and hue distributions pooled
    over classes, and the textures' mean colour within 2 grey levels (its standard error over
    3000 draws is about 0.6) and their pixel spread within 2 grey levels."""
    _, p0, h0, m0 = _looks(0.0, seed=1)
    _, p1, h1, m1 = _looks(1.0, seed=2)
    assert stats.ks_2samp(p0, p1).pvalue > 0.01
    assert stats.ks_2samp(h0, h1).pvalue > 0.01
    assert np.abs(m0.mean(axis=0) - m1.mean(axis=0)).max() < 2.0
    assert abs(m0.std(axis=0).mean() - m1.std(axis=0).mean()) < 2.0


def test_the_dial_changes_an_image_only_inside_its_body() -> None:
    for i in range(20):
        a = gen.draw_sample(np.random.default_rng([7, i]), i % K, body_evidence=0.0)
        b = gen.draw_sample(np.random.default_rng([7, i]), i % K, body_evidence=1.0)
        body = a.mask & ~a.part_mask
        assert np.array_equal(a.mask, b.mask) and np.array_equal(a.part_mask, b.part_mask)
        assert np.array_equal(a.image[~body], b.image[~body])


@pytest.mark.parametrize("render, unpainted", [("body", "part"), ("part", "body")])
def test_renderings_equal_the_normal_image_outside_the_unpainted_region(render, unpainted) -> None:
    differs = 0
    for i in range(20):
        normal = gen.draw_sample(np.random.default_rng([3, i]), i % K, render="normal")
        other = gen.draw_sample(np.random.default_rng([3, i]), i % K, render=render)
        region = normal.part_mask if unpainted == "part" else normal.mask & ~normal.part_mask
        assert np.array_equal(normal.image[~region], other.image[~region])
        differs += int((normal.image[region] != other.image[region]).any())
    assert differs == 20  # and the unpainted region really is not painted


def test_bad_dial_and_rendering_are_refused() -> None:
    with pytest.raises(CamlabError, match="--body_evidence 1.5"):
        gen.draw_sample(np.random.default_rng(0), 0, body_evidence=1.5)
    with pytest.raises(ValueError, match="render"):
        gen.draw_sample(np.random.default_rng(0), 0, render="head")


def test_meta_records_the_dial_and_redraw_gives_the_files(tmp_path) -> None:
    root = tmp_path / "be"
    gen.generate_synthetic(root, seed=3, n_train=4, n_test=10, progress=False, body_evidence=0.25)
    meta = json.loads((root / "meta.json").read_text())
    assert meta["version"] == gen.SYNTHETIC_VERSION == 2 and meta["body_evidence"] == 0.25
    images, parts, labels = gen.redraw(meta, "test")
    for i in range(10):
        assert np.array_equal(images[i], decode_image(root / "test" / f"{i:05d}.png"))
    assert labels.tolist() == [int(line.split()[1]) for line in (root / "test_cls.txt").read_text().splitlines()]
    masks = np.stack([read_mask(root / "test_masks" / f"{i:05d}.png") for i in range(10)])
    assert (parts <= masks).all() and parts.any()


def test_default_roots_name_the_dial(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert gen.default_root(None) == gen.default_root(gen.BODY_EVIDENCE)
    assert gen.default_root(0.25).name == "synthetic_be0.25"
    assert dataloader.resolve_root("lab", None, 0.25) == gen.default_root(0.25)
    assert dataloader._default_dials(gen.default_root(0.25)) == [0.25]
    assert dataloader._default_dials(tmp_path / "data" / "synthetic_be2") == []


def test_an_older_generators_dataset_is_refused_with_what_to_do(tmp_path) -> None:
    root = tmp_path / "old"
    gen.generate_synthetic(root, seed=0, n_train=2, n_test=2, progress=False)
    meta = json.loads((root / "meta.json").read_text())
    (root / "meta.json").write_text(json.dumps({**meta, "version": 1}))
    with pytest.raises(CamlabError, match="version 1 of the embedded benchmark.*delete"):
        dataloader.load_split("lab", root, "test", img_size=32, cache_dir=None, progress=False)


def test_a_default_root_at_another_setting_is_refused_and_runs_record_the_setting(tmp_path, monkeypatch) -> None:
    """data/synthetic generated when the default was another setting (1, say) must not be read as
    the default's data: one line says where it belongs. A run records the setting as a number."""
    import train
    monkeypatch.chdir(tmp_path)
    root = gen.default_root(None)
    gen.generate_synthetic(root, seed=0, n_train=2, n_test=2, progress=False, body_evidence=1.0)
    assert gen.BODY_EVIDENCE != 1.0
    with pytest.raises(CamlabError, match=r"body evidence 1\b.*rename it to data/synthetic_be1 "):
        dataloader.load_split("lab", root, "test", img_size=32, cache_dir=None, progress=False)
    cfg = train.RunConfig(weights="none", img_size=32, device="cpu").checked()
    assert cfg.body_evidence == gen.BODY_EVIDENCE
    assert train.RunConfig(weights="none", img_size=32, device="cpu", data_root="x").checked().body_evidence is None
