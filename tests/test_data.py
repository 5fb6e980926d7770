"""Data sets: synthetic generator, VOC and Cityscapes loaders on tiny trees, image reading."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layercascade.errors import LCError
from layercascade.model.data import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    VOC_CLASSES,
    VOC_PALETTE,
    SegmentationDataset,
    SyntheticSegmentation,
    open_dataset,
    read_label,
    read_rgb,
)
from layercascade.model.data.synthetic import _EXTENT, _SHAPES, _shape_mask

# --- synthetic ------------------------------------------------------------------------


def test_synthetic_is_deterministic_per_seed_and_split() -> None:
    image, label = SyntheticSegmentation("val")[7]
    again_image, again_label = SyntheticSegmentation("val")[7]
    assert image.tobytes() == again_image.tobytes() and label.tobytes() == again_label.tobytes()
    other_seed, _ = SyntheticSegmentation("val", seed=1)[7]
    train, _ = SyntheticSegmentation("train")[7]
    assert not np.array_equal(image, other_seed)
    assert not np.array_equal(image, train)
    assert not np.array_equal(image, SyntheticSegmentation("val")[8][0])


def test_synthetic_shapes_lengths_and_names() -> None:
    train, val = SyntheticSegmentation("train"), SyntheticSegmentation("val")
    assert isinstance(val, SegmentationDataset)
    assert (len(train), len(val)) == (2000, 300)
    assert val.classes == VOC_CLASSES and val.palette.shape == (21, 3) and val.ignore_index == 255
    image, label = val[0]
    assert image.shape == (160, 160, 3) and image.dtype == np.uint8 and image.flags.c_contiguous
    assert label.shape == (160, 160) and label.dtype == np.uint8
    image, label = SyntheticSegmentation("val", size=(96, 128))[0]
    assert image.shape == (96, 128, 3) and label.shape == (96, 128)
    assert val.sample_id(7) == "synthetic-val-0007"
    assert SyntheticSegmentation("train", seed=3).sample_id(12) == "synthetic-s3-train-0012"
    assert np.array_equal(val[-1][1], val[299][1])
    with pytest.raises(IndexError):
        val[300]
    assert sum(1 for _ in SyntheticSegmentation("val", length=3)) == 3


def test_synthetic_label_statistics() -> None:
    val = SyntheticSegmentation("val")
    seen: set[int] = set()
    classes_per_image = []
    for i in range(200):
        _, label = val[i]
        values = set(np.unique(label).tolist())
        assert values <= set(range(21)) | {255}
        seen |= values
        classes_per_image.append(len(values - {0, 255}))
    assert seen == set(range(21)) | {255}
    assert np.mean(classes_per_image) > 1.5


def test_synthetic_ignore_band_is_optional_and_on_contours() -> None:
    _, plain = SyntheticSegmentation("val", ignore_boundary=False)[4]
    _, banded = SyntheticSegmentation("val")[4]
    assert 255 not in plain
    band = banded == 255
    assert band.any() and np.array_equal(banded[~band], plain[~band])
    # Every band pixel has a 4-neighbour of another class in the unbanded map.
    padded = np.pad(plain, 1, mode="edge").astype(int)
    differs = np.zeros_like(band)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        differs |= padded[dy:dy + plain.shape[0], dx:dx + plain.shape[1]] != plain
    assert np.array_equal(band, differs)


@pytest.mark.parametrize("shape", _SHAPES)
def test_synthetic_shapes_stay_inside_their_reach(shape: str) -> None:
    # _draw clips each object to radius * extent + thickness / 2; nothing may stick out.
    y = (np.arange(-60, 60, dtype=np.float32) + 0.5)[:, None]
    x = (np.arange(-60, 60, dtype=np.float32) + 0.5)[None, :]
    distance = np.sqrt(x**2 + y**2)
    for seed in range(500):
        mask = _shape_mask(np.random.default_rng(seed), shape, x, y, 20.0, 5.0)
        assert mask.any() and distance[mask].max() <= 20.0 * _EXTENT[shape] + 2.5


def test_synthetic_speed() -> None:
    val = SyntheticSegmentation("val")
    val[0]  # builds the cached noise tile
    start = time.perf_counter()
    for i in range(50):
        val[i]
    # 3-4.5 ms on the development VM; a generous bound so a loaded CI machine does not fail.
    assert (time.perf_counter() - start) / 50 < 0.03


def test_synthetic_errors() -> None:
    with pytest.raises(LCError, match="split"):
        SyntheticSegmentation("test")
    with pytest.raises(LCError, match="seed"):
        SyntheticSegmentation("val", seed=-1)


def test_open_dataset_synthetic() -> None:
    data = open_dataset("synthetic", "val", seed=2, limit=5)
    assert isinstance(data, SyntheticSegmentation) and len(data) == 5
    assert np.array_equal(data[4][0], SyntheticSegmentation("val", seed=2)[4][0])
    assert len(open_dataset("synthetic", "val", limit=10_000)) == 300


def test_open_dataset_synthetic_of_another_size() -> None:
    data = open_dataset("synthetic:120x200", "val", limit=2)
    image, label = data[1]
    assert image.shape == (120, 200, 3) and label.shape == (120, 200)
    assert np.array_equal(image, SyntheticSegmentation("val", size=(120, 200))[1][0])


@pytest.mark.parametrize("spec", ["imagenet", "synthetic:x", "voc:", "cityscapes", ""])
def test_open_dataset_rejects_bad_spec(spec: str) -> None:
    with pytest.raises(LCError):
        open_dataset(spec)


def test_open_dataset_rejects_missing_dirs_and_bad_limit(tmp_path: Path) -> None:
    with pytest.raises(LCError, match="no VOC2012 tree"):
        open_dataset(f"voc:{tmp_path / 'missing'}")
    with pytest.raises(LCError, match="no Cityscapes tree"):
        open_dataset(f"cityscapes:{tmp_path}")
    with pytest.raises(LCError, match="limit"):
        open_dataset("synthetic", limit=0)


def test_data_package_does_not_import_torch() -> None:
    code = "import sys, layercascade.model.data as d; d.open_dataset('synthetic')[0]; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- VOC ------------------------------------------------------------------------------


def _palette_png(path: Path, indices: np.ndarray, palette: np.ndarray) -> None:
    """Write ``indices`` as a palette PNG, the way the VOC devkit stores labels."""
    image = Image.frombytes("P", (indices.shape[1], indices.shape[0]), indices.astype(np.uint8).tobytes())
    full = np.zeros((256, 3), np.uint8)
    full[: len(palette)] = palette
    full[255] = (224, 224, 192)  # VOC's boundary colour
    image.putpalette(full.ravel().tolist())
    image.save(path)


VOC_LABELS = {
    "2007_000032": np.array([[0, 1, 1, 255], [15, 15, 255, 20], [0, 0, 0, 0]], np.uint8),
    "2007_000033": np.array([[8, 8, 12, 12], [255, 255, 255, 0], [3, 3, 3, 3]], np.uint8),
    "2008_000001": np.full((3, 4), 7, np.uint8),
}


def _voc_tree(root: Path) -> Path:
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    for k, (sample, label) in enumerate(VOC_LABELS.items()):
        pixels = np.full((*label.shape, 3), 40 * k + 30, np.uint8)
        Image.fromarray(pixels).save(base / "JPEGImages" / f"{sample}.jpg", quality=95)
        _palette_png(base / "SegmentationClass" / f"{sample}.png", label, VOC_PALETTE)
    (base / "ImageSets/Segmentation/val.txt").write_text("2007_000032\n2007_000033\n\n")
    (base / "ImageSets/Segmentation/train.txt").write_text("2008_000001\n")
    return base


def test_voc_palette() -> None:
    assert VOC_PALETTE.shape == (21, 3) and VOC_PALETTE.dtype == np.uint8
    assert VOC_PALETTE[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert VOC_PALETTE[15].tolist() == [192, 128, 128] and VOC_PALETTE[20].tolist() == [0, 64, 128]


def test_voc_loads_ids_and_exact_labels(tmp_path: Path) -> None:
    base = _voc_tree(tmp_path)
    data = open_dataset(f"voc:{tmp_path}", "val")
    assert data.name == "voc" and data.classes == VOC_CLASSES and len(data) == 2
    assert [data.sample_id(i) for i in range(2)] == ["2007_000032", "2007_000033"]
    for i, sample in enumerate(["2007_000032", "2007_000033"]):
        image, label = data[i]
        assert image.shape == (3, 4, 3) and image.dtype == np.uint8
        assert abs(int(image.mean()) - (40 * i + 30)) <= 3  # JPEG is lossy
        assert label.dtype == np.uint8 and np.array_equal(label, VOC_LABELS[sample])
    # The VOCdevkit dir and the VOC2012 dir work as roots too; limit keeps the first ids.
    assert len(open_dataset(f"voc:{tmp_path / 'VOCdevkit'}", "val", limit=1)) == 1
    assert np.array_equal(open_dataset(f"voc:{base}", "train")[0][1], VOC_LABELS["2008_000001"])


def test_voc_errors(tmp_path: Path) -> None:
    base = _voc_tree(tmp_path)
    with pytest.raises(LCError, match="no split 'trainval'.*available: train, val"):
        open_dataset(f"voc:{tmp_path}", "trainval")
    (base / "SegmentationClass" / "2007_000033.png").unlink()
    with pytest.raises(LCError, match="2007_000033"):
        open_dataset(f"voc:{tmp_path}", "val")
    (base / "ImageSets/Segmentation/train.txt").write_text("\n")
    with pytest.raises(LCError, match="empty"):
        open_dataset(f"voc:{tmp_path}", "train")


# --- Cityscapes -----------------------------------------------------------------------


def _cityscapes_pair(root: Path, split: str, stem: str, label_ids: np.ndarray) -> None:
    city = stem.split("_")[0]
    for folder in ("leftImg8bit", "gtFine"):
        (root / folder / split / city).mkdir(parents=True, exist_ok=True)
    image = np.zeros((*label_ids.shape, 3), np.uint8)
    Image.fromarray(image).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
    Image.fromarray(label_ids.astype(np.uint8)).save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path: Path) -> None:
    _cityscapes_pair(tmp_path, "val", "munster_000001_000019", np.array([[7, 26], [0, 33]]))
    _cityscapes_pair(tmp_path, "val", "aachen_000000_000019", np.array([[24, 23], [1, 255]]))
    data = open_dataset(f"cityscapes:{tmp_path}", "val")
    assert data.name == "cityscapes" and len(data) == 2
    assert data.classes == CITYSCAPES_CLASSES and len(CITYSCAPES_CLASSES) == 19 and CITYSCAPES_PALETTE.shape == (19, 3)
    assert [data.sample_id(i) for i in range(2)] == ["aachen_000000_000019", "munster_000001_000019"]
    image, label = data[1]
    assert image.shape == (2, 2, 3) and label.dtype == np.uint8
    assert label.tolist() == [[0, 13], [255, 18]]
    assert data[0][1].tolist() == [[11, 10], [255, 255]]


def test_cityscapes_errors(tmp_path: Path) -> None:
    _cityscapes_pair(tmp_path, "val", "aachen_000000_000019", np.array([[7]]))
    with pytest.raises(LCError, match="no split 'train'"):
        open_dataset(f"cityscapes:{tmp_path}", "train")
    (tmp_path / "gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(LCError, match="aachen_000000_000019_gtFine_labelIds.png"):
        open_dataset(f"cityscapes:{tmp_path}", "val")


# --- read_rgb / read_label ------------------------------------------------------------

RGB = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3) * 4


@pytest.mark.parametrize("suffix", ["png", "bmp", "tiff"])
def test_read_rgb_lossless_formats(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"image.{suffix}"
    Image.fromarray(RGB).save(path)
    out = read_rgb(path)
    assert out.dtype == np.uint8 and np.array_equal(out, RGB)


def test_read_rgb_converts_modes(tmp_path: Path) -> None:
    alpha = np.full((4, 5, 1), 7, np.uint8)
    Image.fromarray(np.concatenate([RGB, alpha], axis=2)).save(tmp_path / "rgba.png")
    assert np.array_equal(read_rgb(tmp_path / "rgba.png"), RGB)

    gray = RGB[:, :, 0]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    assert np.array_equal(read_rgb(tmp_path / "gray.png"), np.repeat(gray[:, :, None], 3, axis=2))

    wide = np.array([[0, 257 * 100, 65535]], np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    assert read_rgb(tmp_path / "wide.png").tolist() == [[[0] * 3, [100] * 3, [255] * 3]]

    _palette_png(tmp_path / "palette.png", np.array([[0, 1, 15]]), VOC_PALETTE)
    assert np.array_equal(read_rgb(tmp_path / "palette.png"), VOC_PALETTE[[[0, 1, 15]]])

    Image.fromarray(RGB).convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert read_rgb(tmp_path / "cmyk.jpg").shape == (4, 5, 3)


def test_read_rgb_rejects_broken_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(LCError, match="cut.jpg"):
        read_rgb(tmp_path / "cut.jpg")
    (tmp_path / "notes.txt").write_text("not an image\n")
    with pytest.raises(LCError, match="notes.txt"):
        read_rgb(tmp_path / "notes.txt")
    with pytest.raises(LCError, match="no such file"):
        read_rgb(tmp_path / "missing.png")


def test_read_label_keeps_indices(tmp_path: Path) -> None:
    indices = np.array([[0, 5, 255], [20, 1, 0]], np.uint8)
    _palette_png(tmp_path / "label.png", indices, VOC_PALETTE)
    assert np.array_equal(read_label(tmp_path / "label.png"), indices)
    Image.fromarray(indices).save(tmp_path / "gray.png")
    assert np.array_equal(read_label(tmp_path / "gray.png"), indices)
    Image.fromarray(VOC_PALETTE[indices % 21]).save(tmp_path / "colour.png")
    with pytest.raises(LCError, match="RGB"):
        read_label(tmp_path / "colour.png")
