"""Dataset readers on tiny fixtures: Fashion-MNIST IDX files and image lists."""

from pathlib import Path

import numpy as np
import pytest
import torch

from longtail.config import load_config
from longtail.data import build_data, fmnist
from longtail.errors import LongtailError
from tests.conftest import make_fake_fmnist, write_idx

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "fmnist_lt.yaml")


def test_read_idx_plain_and_gzip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for compress in (False, True):
        path = write_idx(tmp_path / f"a{compress}", array, compress)
        assert (fmnist.read_idx(path) == array).all()


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((4, 5), np.uint8), compress=False)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(LongtailError, match="truncated"):
        fmnist.read_idx(path)
    other = tmp_path / "y"
    other.write_bytes(b"\x89PNG....")
    with pytest.raises(LongtailError, match=r"not an IDX file \(bad magic number 0x89504e47\)"):
        fmnist.read_idx(other)
    other.write_bytes(b"")
    with pytest.raises(LongtailError, match=r"y: empty \(0 bytes\), expected an IDX file$"):
        fmnist.read_idx(other)
    # a uint8 file whose header was changed to say int32: not called a truncated download
    data = bytearray(write_idx(tmp_path / "z", np.zeros((4, 5), np.uint8), compress=False)
                     .read_bytes())
    data[2] = 0x0C
    (tmp_path / "z").write_bytes(bytes(data))
    with pytest.raises(LongtailError, match=r"expected 92 bytes for shape \(4, 5\), found 32 "
                                            r"\(its header says int32 values, the size fits "
                                            r"uint8\)"):
        fmnist.read_idx(tmp_path / "z")


def test_missing_fashion_mnist_says_where_to_put_it(tmp_path):
    cfg = load_config(None, [f"data.root={tmp_path}"])
    with pytest.raises(LongtailError) as info:
        build_data(cfg.data, seed=0)
    message = str(info.value)
    assert str(tmp_path) in message and "dataset-fashion-mnist" in message
    assert "train-images-idx3-ubyte" in message and "data.download" in message


def test_fmnist_lt_split(tmp_path):
    root = make_fake_fmnist(tmp_path / "f", train_per_class=100, compress=False)
    cfg = load_config(None, [f"data.root={root}", "data.n_max=60", "data.n_min=2",
                             "data.val_per_class=5"])
    data = build_data(cfg.data, seed=0)
    assert sorted(data.train_counts, reverse=True) == [60, 41, 28, 19, 13, 9, 6, 4, 3, 2]
    assert torch.bincount(data.val.labels).tolist() == [5] * 10
    assert len(data.test) == 100 and data.channels == 1 and data.image_size == 28
    image, label = data.train.with_transform(data.transform(train=True))[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    three = build_data(cfg.data, seed=0, channels=3)
    assert three.train[0][0].shape == (3, 28, 28)


def list_cfg(root, files, *extra):
    return load_config(None, ["data.kind=list", f"data.root={root}",
                              f"data.train={files['train']}", f"data.val={files['val']}",
                              f"data.test={files['test']}", *extra])


@pytest.mark.parametrize("in_memory", [True, False])
def test_list_dataset_reads_any_pillow_format(image_lists, in_memory):
    root, files = image_lists
    data = build_data(list_cfg(root, files, f"data.in_memory={in_memory}").data, seed=0)
    assert data.num_classes == 4 and data.train_counts == [30, 12, 6, 3]
    assert len(data.val) == 8 and len(data.test) == 16
    assert data.in_memory == in_memory
    image, label = data.train[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8
    gray = build_data(list_cfg(root, files, f"data.in_memory={in_memory}").data, seed=0,
                      channels=1)
    assert gray.train[0][0].shape == (1, 16, 16)


def test_list_dataset_needs_only_train_and_test(image_lists):
    root, files = image_lists
    cfg = load_config(None, ["data.kind=list", f"data.root={root}",
                             f"data.train={files['train']}", f"data.test={files['test']}",
                             "stage2.tau_norm.tau=1.0"])
    assert build_data(cfg.data, seed=0).val is None


@pytest.mark.parametrize("line,message", [
    ("train/class_0/00000.png", r"train\.txt:2: expected 'relative/path label'"),
    ("train/class_0/00000.png zero", r"train\.txt:2: expected an integer label, found 'zero'"),
    ("train/class_0/00000.png -1", r"train\.txt:2: expected a label >= 0, found -1"),
    # digits int() takes but no list writer means as a label
    ("train/class_0/00000.png 0_4", r"train\.txt:2: expected an integer label, found '0_4'"),
    ("train/class_0/00000.png \uff14", r"train\.txt:2: expected an integer label, found '\uff14'"),
    ("train/class_0/00000.png \u0664", r"train\.txt:2: expected an integer label, found '\u0664'"),
    ("train/nowhere.png 0", r"train\.txt:2: image not found"),
])
def test_bad_list_lines_name_file_and_line(image_lists, line, message):
    root, files = image_lists
    lines = files["train"].read_text().splitlines()
    lines.insert(1, line)
    files["train"].write_text("\n".join(lines) + "\n")
    with pytest.raises(LongtailError, match=message):
        build_data(list_cfg(root, files).data, seed=0)


def test_test_label_beyond_the_classes(image_lists):
    root, files = image_lists
    with open(files["test"], "a") as f:
        f.write("test/class_0/extra.png 9\n")
    with pytest.raises(LongtailError, match=r"test\.txt:17: label 9 is not below the class "
                                            r"count 4"):
        build_data(list_cfg(root, files).data, seed=0)


def test_missing_root_folder(tmp_path, image_lists):
    _, files = image_lists
    with pytest.raises(LongtailError, match="data.root: folder not found"):
        build_data(list_cfg(tmp_path / "nope", files).data, seed=0)


def test_training_augmentation_is_the_same_with_any_workers(fake_fmnist):
    from torch.utils.data import DataLoader

    from longtail.data import build_sampler
    from longtail.data.datasets import Augmented, SeededDraws, collate_skipping

    cfg = load_config(None, [f"data.root={fake_fmnist}", "data.n_max=40", "data.n_min=4",
                             "data.val_per_class=2"])
    data = build_data(cfg.data, seed=0)
    # the batched path of small in-memory images, and the image-by-image one of the others
    views = [data.training_view(), (Augmented(data.train, data.transform(train=True)),
                                    collate_skipping)]
    for view, collate in views:
        batches = {}
        for workers in (0, 2):
            draws = SeededDraws(build_sampler("class", data.train.labels, seed=3), seed=3)
            draws.set_epoch(1)
            loader = DataLoader(view, batch_size=16, sampler=draws, num_workers=workers,
                                collate_fn=collate)
            torch.manual_seed(workers)  # the global RNG must not matter
            batches[workers] = torch.cat([images for images, _ in loader])
        assert torch.equal(batches[0], batches[2])
    # ... and augmentation does vary between draws of the same image.
    plain = data.train.with_transform(data.transform(train=False))
    assert not all(torch.equal(batches[0][i], plain[0][0]) for i in range(len(batches[0])))


def test_batch_augment_crops_flips_and_depends_only_on_each_draws_seed():
    from longtail.data.transforms import BatchAugment, _mix

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 2, 16, 16), generator=g, dtype=torch.uint8)
    seeds = torch.randint(0, 2**62, (64,), generator=g)
    augment = BatchAugment(16, (0.5, 0.5), (0.25, 0.25), hflip=True)
    out = augment(images, seeds)
    pad = 2  # 16 // 8
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    flips = 0
    for i in range(64):
        dy, dx = int(_mix(seeds[i : i + 1], 1) % 5), int(_mix(seeds[i : i + 1], 2) % 5)
        crop = padded[i, :, dy : dy + 16, dx : dx + 16]
        if int(_mix(seeds[i : i + 1], 3) & 1):
            crop, flips = crop.flip(-1), flips + 1
        assert torch.allclose(out[i], (crop.float() / 255 - 0.5) / 0.25)
    assert 16 < flips < 48  # about half
    # the same draw gives the same image in any batch, in any order
    order = torch.randperm(64, generator=g)
    assert torch.equal(augment(images[order], seeds[order]), out[order])
    # no flips when asked: every image is a plain crop
    plain = BatchAugment(16, (0.5, 0.5), (0.25, 0.25), hflip=False)(images, seeds)
    for i in range(64):
        dy, dx = int(_mix(seeds[i : i + 1], 1) % 5), int(_mix(seeds[i : i + 1], 2) % 5)
        crop = padded[i, :, dy : dy + 16, dx : dx + 16]
        assert torch.allclose(plain[i], (crop.float() / 255 - 0.5) / 0.25)


def test_small_images_in_memory_are_augmented_a_batch_at_a_time(fake_fmnist):
    from longtail.data.datasets import RawDraws

    cfg = load_config(CONFIG, [f"data.root={fake_fmnist}", "data.n_max=40", "data.n_min=4",
                               "data.val_per_class=2"])
    data = build_data(cfg.data, seed=0)
    view, _ = data.training_view()
    assert isinstance(view, RawDraws) and data.hflip is False  # 28 px: no flips by default


def test_test_transform_of_a_batch_equals_the_image_by_image_one(fake_fmnist):
    """Features and val checks of small in-memory images take the test transform a batch at a
    time: the same floats as torchvision's transform, in the same order, with any batch size
    and under a torchrun-like shard; images at another size keep the per-image path."""
    from longtail.data.datasets import RawBatches, TensorImages
    from longtail.stages.inference import infer

    cfg = load_config(CONFIG, [f"data.root={fake_fmnist}", "data.n_max=40", "data.n_min=4",
                               "data.val_per_class=2", "data.mean=[0.3]", "data.std=[0.7]"])
    data = build_data(cfg.data, seed=0)
    view = data.eval_view(data.test)
    assert isinstance(view, RawBatches)
    plain = data.test.with_transform(data.transform(train=False))
    expected = torch.stack([plain[i][0] for i in range(len(plain))])
    for batch_size in (1, 7, 1000):
        out, labels = infer(lambda x: x.flatten(1), view, batch_size=batch_size,
                            device=torch.device("cpu"))
        assert torch.equal(out, expected.flatten(1)) and torch.equal(labels, data.test.labels)
    # a split held at another size (resized by the per-image transform) is not batched
    other = TensorImages(torch.zeros(3, 1, 20, 20, dtype=torch.uint8), [0, 1, 2])
    assert not isinstance(data.eval_view(other), RawBatches)
    assert data.eval_view(other)[0][0].shape == (1, 28, 28)


def test_list_files_with_a_bom_and_crlf_line_ends(image_lists):
    """Lists saved by Windows editors (BOM, CRLF) read as the same lists."""
    root, files = image_lists
    for path in files.values():
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    names = root / "names.txt"
    names.write_bytes(b"\xef\xbb\xbfcat\r\ndog\r\nbird\r\nfish\r\n")
    data = build_data(list_cfg(root, files, f"data.class_names={names}").data, seed=0)
    assert data.train_counts == [30, 12, 6, 3] and len(data.val) == 8
    assert data.class_names == ["cat", "dog", "bird", "fish"]


def test_list_files_with_comments(image_lists):
    """'#' lines are comments, or lines commented out; a path that starts with '#' and is
    there is still an image."""
    root, files = image_lists
    lines = files["train"].read_text().splitlines()
    files["train"].write_text("\n".join(["# ImageNet-LT style list", "# version 2",
                                          "#" + lines[0], *lines[1:]]) + "\n")
    data = build_data(list_cfg(root, files).data, seed=0)
    assert data.train_counts == [29, 12, 6, 3]
    (root / "#odd.png").write_bytes((root / lines[0].split()[0]).read_bytes())
    files["train"].write_text("\n".join([*lines, "#odd.png 0"]) + "\n")
    assert build_data(list_cfg(root, files).data, seed=0).train_counts == [31, 12, 6, 3]


@pytest.mark.parametrize("names,message", [
    ("a\nb\nc\nd\ne\nf\n", r"names\.txt: expected 4 class names .*, found 6; no class has "
                           r"label 4, 5"),
    ("0 a\n1 b\n2 c\n3 d\n7 h\n", r"names\.txt: expected 4 class names .*, found 5; no class "
                                  r"has label 7"),
    ("a\nb\n", r"names\.txt: expected a name for each of the 4 classes, missing \[2, 3\]"),
])
def test_class_name_file_of_another_class_count(image_lists, names, message):
    root, files = image_lists
    (root / "names.txt").write_text(names)
    with pytest.raises(LongtailError, match=message):
        build_data(list_cfg(root, files, "data.class_names=names.txt").data, seed=0)


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_grayscale_images_are_scaled_not_clipped(tmp_path, mode):
    from PIL import Image

    from longtail.data.datasets import decode_image

    pixels = np.arange(0, 65536, 16, dtype=np.uint16).reshape(64, 64)
    path = tmp_path / "a.png"
    Image.fromarray(pixels).save(path)  # 16-bit PNG: opens as I;16
    if mode == "I":  # 16-bit PGM files open as I (32-bit integers)
        path = tmp_path / "a.pgm"
        Image.fromarray(pixels).save(path)
    with Image.open(path) as img:
        assert img.mode == mode
    expected = torch.from_numpy((pixels >> 8).astype(np.uint8))
    assert torch.equal(decode_image(path, 3), expected.expand(3, -1, -1))
    assert torch.equal(decode_image(path, 1), expected[None])
    # 8-bit values in a 16- or 32-bit container are kept, not shifted to black
    small = (pixels >> 8).astype(np.int32)
    Image.fromarray(small).save(tmp_path / "b.tif")
    with Image.open(tmp_path / "b.tif") as img:
        assert img.mode == "I"
    assert torch.equal(decode_image(tmp_path / "b.tif", 1), expected[None])


def test_float_images_in_0_to_1_are_scaled_not_black(tmp_path):
    from PIL import Image

    from longtail.data.datasets import decode_image

    ramp = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    Image.fromarray(ramp).save(tmp_path / "a.tif")  # mode F: 32-bit floats
    with Image.open(tmp_path / "a.tif") as img:
        assert img.mode == "F"
    expected = torch.from_numpy((ramp.astype(np.float64) * 255).round().astype(np.uint8))
    assert torch.equal(decode_image(tmp_path / "a.tif", 1), expected[None])
    Image.fromarray(ramp * 255).save(tmp_path / "b.tif")  # 0..255 floats: taken as they are
    assert torch.equal(decode_image(tmp_path / "b.tif", 3), expected.expand(3, -1, -1))


def test_a_photos_exif_orientation_is_applied(tmp_path):
    """A camera's portrait photo is stored landscape with an EXIF rotation: decoded upright,
    as viewers (and whoever labelled it) show it."""
    from PIL import Image

    from longtail.data.datasets import decode_image

    stored = np.zeros((10, 40, 3), np.uint8)
    stored[:, :5] = 255  # a white band at the stored image's left
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    img.save(tmp_path / "portrait.jpg", exif=exif, quality=95)
    upright = decode_image(tmp_path / "portrait.jpg", 3)
    assert upright.shape == (3, 40, 10)
    assert upright[:, :5].float().mean() > 240 and upright[:, 10:].float().mean() < 15
    img.save(tmp_path / "plain.jpg", quality=95)  # no orientation: as stored
    assert decode_image(tmp_path / "plain.jpg", 3).shape == (3, 10, 40)


def test_pillows_warnings_about_what_it_reads_past_are_not_printed(tmp_path):
    """Corrupt EXIF or a palette's transparency given as bytes: Pillow decodes the image and
    warned in two lines per image, epoch and worker (50 lines for 5 images and 3 epochs)."""
    import warnings

    from PIL import Image, ImageOps

    from longtail.data.datasets import decode_image

    palette = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16) % 4, "P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    palette.save(tmp_path / "palette.png", transparency=bytes([0, 255, 128, 255]))
    exif = Image.Exif()
    exif[0x010E] = "x" * 40  # ImageDescription, then cut short: corrupt
    Image.new("RGB", (16, 16)).save(tmp_path / "exif.jpg", exif=exif.tobytes()[:-20])
    for name in ("palette.png", "exif.jpg"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Pillow's own warning would fail here
            assert decode_image(tmp_path / name, 3).shape == (3, 16, 16)
        with warnings.catch_warnings(record=True) as caught:  # and they are Pillow's
            warnings.simplefilter("always")
            Image.open(tmp_path / name).convert("RGB").getexif()
            ImageOps.exif_transpose(Image.open(tmp_path / name))
        assert caught and all(issubclass(w.category, UserWarning) for w in caught)


def test_images_above_pillows_pixel_limit_are_said_once_in_one_line(tmp_path, monkeypatch,
                                                                    capsys):
    """Pillow warns in two lines from its own source, per image and per worker: the data
    builder says it once, naming a sampled image, and decoding stays quiet."""
    import warnings

    from PIL import Image

    from longtail.data.builder import _typical_size
    from longtail.data.datasets import decode_image
    from longtail.data.listfile import FileSplit

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.new("L", (16, 16)).save(paths[-1])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # 256 px: above, not twice
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's own warning would fail here
        assert _typical_size(FileSplit(tmp_path / "t.txt", paths, [0, 1, 1], ["a"] * 3)) == (
            16, 256)
        for path in paths:
            assert decode_image(path, 1).shape == (1, 16, 16)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(f"warning: {paths[0]}: 16x16 px, more than "
                                                   f"Pillow's limit of 200 pixels")


def test_a_shape_held_only_in_alpha_is_not_decoded_blank(tmp_path):
    from PIL import Image

    from longtail.data.datasets import decode_image

    glyph = np.zeros((16, 16, 4), np.uint8)
    glyph[4:12, 4:12, 3] = 255  # a black square on a transparent background
    Image.fromarray(glyph, "RGBA").save(tmp_path / "black.png")
    for channels in (1, 3):  # drawn over white, not dropped to all black
        image = decode_image(tmp_path / "black.png", channels)
        assert image.shape == (channels, 16, 16)
        assert image[:, 8, 8].tolist() == [0] * channels
        assert image[:, 0, 0].tolist() == [255] * channels
    glyph[..., :3] = 255  # a white one: over black
    Image.fromarray(glyph, "RGBA").save(tmp_path / "white.png")
    assert decode_image(tmp_path / "white.png", 1)[0, 8, 8] == 255
    assert decode_image(tmp_path / "white.png", 1)[0, 0, 0] == 0
    # a photo with an alpha channel keeps its colours (alpha dropped, as torchvision does)
    photo = np.random.default_rng(0).integers(0, 256, (16, 16, 4), dtype=np.uint8)
    Image.fromarray(photo, "RGBA").save(tmp_path / "photo.png")
    assert torch.equal(decode_image(tmp_path / "photo.png", 3),
                       torch.from_numpy(photo[..., :3]).permute(2, 0, 1))


def test_splits_sharing_images_are_warned_about(image_lists, capsys):
    root, files = image_lists
    files["val"].write_text(files["train"].read_text())
    data = build_data(list_cfg(root, files).data, seed=0)
    assert len(data.val) == 51  # a warning, not an error
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("warning: the train and val splits share 51 "
                                               "images ("), out
    build_data(list_cfg(root, {**files, "val": files["test"]}).data, seed=0)
    assert "warning: the val and test splits share 16 images" in capsys.readouterr().out


def test_a_list_file_found_in_two_places_is_named(tmp_path, monkeypatch, capsys):
    from longtail.data.listfile import resolve_near_root

    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "train.txt").write_text("a.png 0\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_near_root("train.txt", "root") == Path("root/train.txt")  # only beside
    (tmp_path / "train.txt").write_text("b.png 0\n")
    assert resolve_near_root("train.txt", "root") == Path("train.txt")
    assert capsys.readouterr().out.startswith(
        f"warning: train.txt is read from the working directory {tmp_path}; data.root holds "
        f"another root/train.txt")
    # said once, though the file is looked up again when it is read after the checks
    assert resolve_near_root("train.txt", "root") == Path("train.txt")
    assert capsys.readouterr().out == ""


def test_augmentation_seeds_of_every_allowed_run_seed_fit_torchs_generator():
    """Seeds from 2^15 up once overflowed the 63 bits torch takes (a traceback at the first
    batch), and seeds 0 and 65536 drew the same augmentations."""
    import torch

    from longtail.data.datasets import augmentation_seed

    assert augmentation_seed(3, 2, 7) == (3 << 48) | (2 << 32) | 7  # small seeds as before
    for seed in (0, 32767, 32768, 65536, 2**31, 2**32 - 1):
        value = augmentation_seed(seed, 5, 123)
        assert 0 <= value < 2**63
        torch.Generator().manual_seed(value)
    assert augmentation_seed(0, 1, 1) != augmentation_seed(65536, 1, 1)
    assert augmentation_seed(40000, 1, 1) != augmentation_seed(40000, 1, 2)


def test_a_ratio_the_smallest_class_cannot_meet_is_noted(tmp_path, fake_fmnist, capsys):
    """n_max / ratio is a whole number of images, at least one: with n_max under the default
    ratio of 100 the split is less imbalanced than asked, which the run and make-split say."""
    from longtail.cli import main
    from longtail.data.profiles import ratio_shortfall
    from tests.conftest import make_image_folder

    assert ratio_shortfall([1280, 13], 100) is None  # 98.5: rounding, within 10%
    assert ratio_shortfall([60, 1], 100) == ("imbalance ratio 60, not 100: n_max 60 / 100 = "
                                             "0.6 images, and the smallest class keeps 1")
    root = make_image_folder(tmp_path / "folder", per_class=[40] * 3, size=8)
    base = ["data.kind=image_folder", f"data.root={root}", "data.val_per_class=2",
            "data.test_per_class=3", "data.n_max=null", "data.n_min=null"]
    data = build_data(load_config(CONFIG, base).data, seed=0)  # n_max: 35, all there is
    assert [n for n in data.notes if "imbalance ratio" in n] == [
        "imbalance ratio 35, not 100: n_max 35 / 100 = 0.35 images, and the smallest class "
        "keeps 1; data.n_min sets it"]
    for extra in (["data.n_min=3"], ["data.imbalance_ratio=7"]):
        data = build_data(load_config(CONFIG, [*base, *extra]).data, seed=0)
        assert not [n for n in data.notes if "imbalance ratio" in n], extra
    # fmnist_lt's smallest class is 5 images unless a ratio is given
    fm = [f"data.root={fake_fmnist}", "data.n_max=40", "data.n_min=null",
          "data.val_per_class=2"]
    assert not [n for n in build_data(load_config(CONFIG, fm).data, seed=0).notes
                if "imbalance ratio" in n]
    notes = build_data(load_config(CONFIG, [*fm, "data.imbalance_ratio=30"]).data, 0).notes
    assert any(n.startswith("imbalance ratio 40, not 30:") for n in notes)
    for extra, said in ((["--n-max", "60"], True), (["--n-max", "60", "--n-min", "1"], False),
                        (["--n-max", "60", "--ratio", "6"], False)):
        out = tmp_path / f"split{len(extra)}{extra[-1]}"
        capsys.readouterr()
        assert main(["make-split", "fmnist", "--root", str(fake_fmnist), "--out", str(out),
                     "--val-per-class", "0", *extra]) == 0
        lines = [line for line in capsys.readouterr().out.splitlines() if "note:" in line]
        assert lines == (["note: imbalance ratio 60, not 100: n_max 60 / 100 = 0.6 images, and "
                          "the smallest class keeps 1; --n-min sets it"] if said else []), extra


def test_make_split_without_val_says_what_its_command_needs(tmp_path, fake_fmnist, capsys):
    """The bundled configs choose two taus on val: make-split --val-per-class 0 says how to
    give its printed command a val split (or fixed taus), and both ways load."""
    import shlex

    from longtail.cli import main
    from longtail.config import ConfigError

    out = tmp_path / "split"
    assert main(["make-split", "fmnist", "--root", str(fake_fmnist), "--out", str(out),
                 "--val-per-class", "0", "--n-max", "60", "--n-min", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    usage = next(line for line in lines if line.startswith("use it: "))
    assert any(line.startswith("no val.txt (--val-per-class 0)") for line in lines)
    overrides = shlex.split(usage)[5:]  # after "use it: longtail run CONFIG"
    with pytest.raises(ConfigError, match="stage2.tau_norm.tau: null chooses tau on the val"):
        load_config(CONFIG, overrides)
    load_config(CONFIG, [*overrides, "data.val_from_train=2"])
    load_config(CONFIG, [*overrides, "stage2.tau_norm.tau=1.0", "stage2.logit_adjust.tau=1.0"])


def test_make_split_overwrite_and_stop_leave_only_a_whole_split(tmp_path, fake_fmnist,
                                                                monkeypatch, capsys):
    """--overwrite of an earlier split removes the images it exported; a make-split stopped
    half-way removes the folder it made (a rerun then needs no --overwrite), or leaves the
    split it was overwriting as it was."""
    from longtail.cli import main
    from longtail.data import makesplit

    out = tmp_path / "split"
    base = ["make-split", "fmnist", "--root", str(fake_fmnist), "--out", str(out)]
    assert main([*base, "--n-max", "60"]) == 0
    assert main([*base, "--n-max", "20", "--n-min", "2", "--overwrite"]) == 0
    listed = sum(len((out / f"{s}.txt").read_text().splitlines()) for s in ("train", "val",
                                                                             "test"))
    assert len(list((out / "images").rglob("*.png"))) == listed
    real = makesplit._export

    def stop_in_val(out_, split, *rest):
        if split == "val":
            raise KeyboardInterrupt
        return real(out_, split, *rest)

    monkeypatch.setattr(makesplit, "_export", stop_in_val)
    other = tmp_path / "other"
    assert main([*base[:-1], str(other), "--n-max", "20"]) == 130
    assert not other.exists()
    nested = tmp_path / "nest" / "a" / "b"  # the folders it made, from the topmost
    assert main([*base[:-1], str(nested), "--n-max", "20"]) == 130
    assert not (tmp_path / "nest").exists()
    empty = tmp_path / "empty"  # a folder that was there, empty: left empty
    empty.mkdir()
    assert main([*base[:-1], str(empty), "--n-max", "20"]) == 130
    assert empty.is_dir() and not any(empty.iterdir())
    # a stopped --overwrite leaves the earlier split whole: its lists, its images, no others
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main([*base, "--n-max", "40", "--overwrite"]) == 130
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # images/ that no earlier split exported is named, not written into
    mine = tmp_path / "mine"
    (mine / "images").mkdir(parents=True)
    (mine / "notes.md").write_text("x")
    monkeypatch.setattr(makesplit, "_export", real)
    capsys.readouterr()
    assert main([*base[:-1], str(mine), "--n-max", "20", "--overwrite"]) == 2
    assert "holds images/, which make-split did not export there" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["images", "notes.md"]
    capsys.readouterr()


def test_a_class_too_small_for_the_split_names_the_config_keys(tmp_path, fake_fmnist, capsys):
    from longtail.cli import main

    assert main(["run", CONFIG, f"data.root={fake_fmnist}", "data.val_per_class=100000",
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith(
        " (val) + 0 (test); lower config key data.n_max or data.val_per_class"), err
    assert not (tmp_path / "r").exists()


def test_images_upscaled_to_224_say_why_and_how_to_keep_their_size(tmp_path):
    from longtail.config import load_config
    from longtail.data import build_data
    from tests.conftest import make_image_list_dataset

    files = make_image_list_dataset(tmp_path / "d", counts=[6, 3, 2], size=70)
    keys = ["data.kind=list", f"data.root={tmp_path / 'd'}", f"data.train={files['train']}",
            f"data.val={files['val']}", f"data.test={files['test']}"]
    data = build_data(load_config(CONFIG, keys).data, seed=0)
    assert data.image_size == 224
    assert ("input 224 px: the training images' median longer side is 70 px (>= 64: the "
            "paper's 224); data.image_size=70 trains at their own size, several times "
            "faster") in data.notes
    own = build_data(load_config(CONFIG, [*keys, "data.image_size=70"]).data, seed=0)
    assert own.image_size == 70 and not any("input 224" in n for n in own.notes)


def test_a_very_long_image_is_cut_to_its_middle_before_the_resize():
    """A 1 x 400,000 px strip resized to a 28 px short side was 11 M px long: GBs for one
    image. The middle part (8 times as long as wide) is resized instead; an image of normal
    shape comes out exactly as through Resize + CenterCrop alone."""
    from torchvision.transforms import v2

    from longtail.data.transforms import build_transform, central_part

    strip = torch.zeros(3, 1, 400_000, dtype=torch.uint8)
    strip[..., 200_000 - 4 : 200_000 + 4] = 255  # its middle 8 px: all the crop may keep
    assert central_part(strip).shape == (3, 1, 8) and bool((central_part(strip) == 255).all())
    assert central_part(strip.transpose(1, 2)).shape == (3, 8, 1)
    for size in (28, 224):
        out = build_transform(size, False, (0.0,) * 3, (1.0,) * 3)(strip)
        assert out.shape == (3, size, size) and bool((out > 0.9).all())
    image = torch.randint(0, 255, (3, 40, 100), dtype=torch.uint8)
    plain = v2.Compose([v2.Resize(28), v2.CenterCrop(28), v2.ToDtype(torch.float32, scale=True)])
    assert torch.equal(build_transform(28, False, (0.0,) * 3, (1.0,) * 3)(image), plain(image))


def test_images_augmented_one_at_a_time_get_workers_only_for_a_gpu(tmp_path):
    """In memory, small images are augmented a batch at a time in the main process; 224 px
    ones go one at a time, which a GPU would wait for, while on CPU cores the model is the
    bottleneck (workers measured slower there)."""
    from longtail.data.builder import usable_cpus
    from tests.conftest import make_image_list_dataset

    files = make_image_list_dataset(tmp_path / "d", counts=[4, 3], size=16)
    args = ["data.kind=list", f"data.root={tmp_path / 'd'}", f"data.train={files['train']}",
            f"data.test={files['test']}", "stage2.tau_norm.tau=1", "stage2.logit_adjust.tau=1"]

    def workers(device_type: str, *extra: str) -> int:
        cfg = load_config(CONFIG, [*args, *extra])
        data = build_data(cfg.data, 0, device_type=device_type)
        assert data.in_memory
        return data.num_workers

    assert workers("cpu") == workers("cuda") == 0  # 16 px: batched
    assert workers("cpu", "data.image_size=64") == 0
    assert workers("cuda", "data.image_size=64") == min(8, usable_cpus())
    assert workers("cuda", "data.image_size=64", "data.num_workers=1") == 1  # as given
