"""Malformed data for each reader (features, inat_json, CIFAR, Fashion-MNIST, image folders):
one LongtailError naming the file and what was expected, never a traceback, a wrong count,
or a misleading message about another split."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from longtail.config import load_config
from longtail.data import build_data, read_feature_file, write_feature_file
from longtail.data.listfile import label_gap
from longtail.errors import LongtailError
from tests.conftest import (
    make_fake_cifar,
    make_fake_fmnist,
    make_image_folder,
    make_inat_json,
    write_idx,
)


def data_of(*overrides):
    return build_data(load_config(None, list(overrides)).data, seed=0)


# --------------------------------------------------------------------------------------------
# Features


def feature_files(folder: Path, train_labels: list[int], names=None, fmt: str = "npz") -> list:
    folder.mkdir(parents=True, exist_ok=True)
    labels = torch.tensor(train_labels)
    write_feature_file(folder / f"train.{fmt}", torch.randn(len(labels), 4), labels, names)
    write_feature_file(folder / f"test.{fmt}", torch.randn(4, 4), torch.tensor([0, 1, 2, 3]),
                       names)
    return ["data.kind=features", f"data.root={folder}", f"data.train=train.{fmt}",
            f"data.test=test.{fmt}", "stage2.tau_norm.tau=1"]


def test_features_without_columns_are_refused(tmp_path):
    path = tmp_path / "train.npz"
    np.savez(path, features=np.zeros((51, 0), np.float32), labels=np.arange(51) % 4)
    with pytest.raises(LongtailError, match=r"train\.npz: features: expected at least 1 column"
                                            r" .*found shape \(51, 0\)"):
        read_feature_file(path)


@pytest.mark.parametrize("names", [None, ["a", "b", "c", "d"]])
def test_a_huge_feature_label_is_named_before_bincount(tmp_path, names):
    """2^62 made torch.bincount try to allocate 2^62 counts (10^9: 8 GB)."""
    args = feature_files(tmp_path, [0, 0, 1, 1, 2, 3, 2**62], names)
    expected = ("no training row has label 4..4611686018427387903; labels must be 0..C-1"
                if names is None else r"label 4611686018427387904 is not below the class "
                                      r"count 4 \(class_names has 4 names\)")
    with pytest.raises(LongtailError, match=rf"train\.npz: {expected}"):
        data_of(*args)


@pytest.mark.parametrize("present,num_classes", [
    ([0, 2], 3), ([0, 3], 4), ([1, 2], 3), ([0, 2, 5, 9], 12), ([0], 30), ([5], 6),
    ([0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24], 25)])
def test_missing_labels_are_worded_as_label_gap_words_them(present, num_classes):
    # the wording from the full list of missing labels: a run as 'a..b', else the first ten
    missing = sorted(set(range(num_classes)) - set(present))
    listed = (f"{missing[0]}..{missing[-1]}" if len(missing) > 1
              and missing == list(range(missing[0], missing[-1] + 1))
              else ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else ""))
    assert label_gap(present, num_classes) == listed


@pytest.mark.parametrize("fmt", ["npz", "pt", "safetensors"])
def test_integer_class_names_read_as_strings_in_every_format(tmp_path, fmt):
    path = tmp_path / f"f.{fmt}"
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 3])
    if fmt == "npz":
        np.savez(path, features=x.numpy(), labels=y.numpy(), class_names=np.array([10, 11, 12,
                                                                                   13]))
    elif fmt == "pt":
        torch.save({"features": x, "labels": y, "class_names": [10, 11, 12, 13]}, path)
    else:
        from safetensors.torch import save_file

        save_file({"features": x, "labels": y}, str(path),
                  metadata={"class_names": json.dumps([10, 11, 12, 13])})
    assert read_feature_file(path)["class_names"] == ["10", "11", "12", "13"]


def test_class_names_stored_as_bytes_read_as_text(tmp_path):
    # arrays of dtype S (HDF5 exports, older numpy) once became "b'cat'"
    x, y = torch.randn(3, 2), torch.tensor([0, 1, 2])
    np.savez(tmp_path / "f.npz", features=x.numpy(), labels=y.numpy(),
             class_names=np.array([b"cat", "chévre".encode(), b"owl"]))
    torch.save({"features": x, "labels": y, "class_names": [b"cat", "chévre".encode(), "owl"]},
               tmp_path / "f.pt")
    for name in ("f.npz", "f.pt"):
        assert read_feature_file(tmp_path / name)["class_names"] == ["cat", "chévre", "owl"]


def test_numpy_values_in_a_pt_file_are_named_with_the_fix(tmp_path):
    # list(np.array([...])) holds numpy strings, which the safe loader must refuse
    torch.save({"features": torch.randn(3, 2), "labels": torch.tensor([0, 1, 2]),
                "class_names": list(np.array(["a", "b", "c"]))}, tmp_path / "f.pt")
    with pytest.raises(LongtailError, match=r"numpy\._core\.multiarray\.scalar\); numpy "
                       r"values \(arrays, numpy strings or numbers\) inside: save torch "
                       r"tensors and plain str / int instead$"):
        read_feature_file(tmp_path / "f.pt")


def test_class_names_of_another_kind_name_the_element(tmp_path):
    path = tmp_path / "f.pt"
    torch.save({"features": torch.randn(2, 3), "labels": torch.tensor([0, 1]),
                "class_names": ["a", {"b": 1}]}, path)
    with pytest.raises(LongtailError, match=r"f\.pt: class_names: expected a list of strings "
                                            r"\(or numbers\), found dict at index 1"):
        read_feature_file(path)


# --------------------------------------------------------------------------------------------
# iNaturalist JSON


def _set(key, index, value):
    def edit(blob):
        if index is None:
            blob[key] = value
        else:
            blob[key][index] = value
    return edit


def _drop(key, index, field):
    return lambda blob: blob[key][index].pop(field)


ANN = r"annotations\[1\]: expected an object with image_id and category_id \(integers\), found "
IMG = r"images\[1\]: expected an object with id \(integer\) and file_name \(a string\), found "


@pytest.mark.parametrize("edit,expected", [
    (_drop("categories", 0, "id"), r"categories\[0\]: expected an object with id \(integer\), "
                                   r"found \{\"name\": \"species 0\"\}"),
    (_drop("annotations", 1, "category_id"), ANN + r"\{\"id\": 1, \"image_id\": 1\}"),
    (_set("annotations", 1, [1, 0]), ANN + r"\[1, 0\]"),
    (_set("annotations", 1, {"image_id": 1, "category_id": 1.5}), ANN),
    (_set("annotations", 1, {"image_id": 1, "category_id": "0"}), ANN),
    (_set("annotations", 1, {"image_id": 1, "category_id": True}), ANN),
    (_drop("images", 1, "file_name"), IMG),
    (_set("images", 1, {"id": 1, "file_name": None}), IMG + r".*\"file_name\": null"),
    (_set("categories", None, None), r"categories: expected a list of objects, found a JSON null"),
    (_set("images", None, None), r"images: expected a list of objects, found a JSON null"),
    (_set("annotations", None, {}), r"annotations: expected a list of objects, found a JSON "
                                    r"object"),
    (lambda blob: blob["categories"].append({"id": 999, "name": "unused"}),
     r"categories\[3\]: category 999 \('unused'\) has no image in this training file"),
    (lambda blob: blob["images"].append({"id": 0, "file_name": "x.jpg"}),
     r"images\[\d+\]: id 0 is already that of images\[0\]"),
], ids=["category without id", "annotation without category_id", "annotation a list",
        "float category_id", "string category_id", "bool category_id", "image without file_name",
        "file_name null", "categories null", "images null", "annotations an object",
        "unused category", "image id twice"])
def test_malformed_inat_json_names_the_entry(tmp_path, edit, expected):
    files = make_inat_json(tmp_path, counts=[3, 2, 2])
    blob = json.loads(files["train"].read_text())
    edit(blob)
    files["train"].write_text(json.dumps(blob))
    with pytest.raises(LongtailError, match=rf"train2018\.json: {expected}"):
        data_of("data.kind=inat_json", f"data.root={tmp_path}", "data.train=train2018.json",
                "data.test=val2018.json", "data.val=val2018.json")


def test_inat_json_array_is_not_printed(tmp_path):
    files = make_inat_json(tmp_path, counts=[3, 2])
    files["train"].write_text(json.dumps([json.loads(files["train"].read_text())]))
    with pytest.raises(LongtailError) as info:
        data_of("data.kind=inat_json", f"data.root={tmp_path}", "data.train=train2018.json",
                "data.test=val2018.json", "stage2.tau_norm.tau=1")
    assert str(info.value) == (f"{files['train']}: expected a JSON object with images, "
                               f"annotations, categories, found a JSON array")


# --------------------------------------------------------------------------------------------
# CIFAR


def _rewrite_batch(path: Path, edit) -> None:
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    edit(batch)
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


@pytest.mark.parametrize("edit,expected", [
    (lambda b: b.update({b"data": b[b"data"][:, :1000]}),
     r"data: expected uint8 rows of 3072 values \(3x32x32 images\), found uint8 of shape "
     r"\(120, 1000\)"),
    (lambda b: b[b"labels"].__setitem__(3, 10), r"labels: expected labels 0\.\.9, found 10 at "
                                                r"index 3"),
    (lambda b: b[b"labels"].__setitem__(3, -1), r"labels: expected labels 0\.\.9, found -1"),
    (lambda b: b.update({b"labels": b[b"labels"][:-3]}),
     r"labels: expected 120 integer labels \(one per image\), found int64 of shape \(117,\)"),
    (lambda b: b.pop(b"labels"), r"expected a CIFAR batch with keys data and labels, found "
                                 r"\['data'\]"),
], ids=["1000 columns", "label 10", "label -1", "short labels", "no labels"])
def test_malformed_cifar_batch_is_named(tmp_path, edit, expected):
    root = make_fake_cifar(tmp_path, "cifar10_lt", train_per_class=60)
    _rewrite_batch(root / "cifar-10-batches-py" / "data_batch_2", edit)
    with pytest.raises(LongtailError, match=rf"cifar-10-batches-py/data_batch_2: {expected}"):
        data_of("data.kind=cifar10_lt", f"data.root={root}")


@pytest.mark.parametrize("content,expected", [
    (b"\x19garbage" * 100, r"not a readable CIFAR batch \(not a Python pickle, as the python "
                            r"version of CIFAR's batches are\)"),
    (b"", r"not a readable CIFAR batch \(the file ends early: truncated\? extract the archive "
          r"again\)"),
    (pickle.dumps(print), r"not a readable CIFAR batch \(refused to load builtins\.print"),
    (None, r"not a readable CIFAR batch \(the file ends early: truncated\? extract the archive "
           r"again\)"),
], ids=["not a pickle", "empty", "code", "cut in half"])
def test_unreadable_cifar_batch_says_why_in_words(tmp_path, content, expected):
    root = make_fake_cifar(tmp_path, "cifar10_lt", train_per_class=60)
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[: len(batch.read_bytes()) // 2] if content is None
                      else content)
    with pytest.raises(LongtailError, match=rf"cifar-10-batches-py/data_batch_2: {expected}"):
        data_of("data.kind=cifar10_lt", f"data.root={root}")


def test_cifar100_label_out_of_range(tmp_path):
    root = make_fake_cifar(tmp_path, "cifar100_lt", train_per_class=2, test_per_class=1)
    _rewrite_batch(root / "cifar-100-python" / "test", lambda b: b[b"fine_labels"].__setitem__(
        0, 100))
    with pytest.raises(LongtailError, match=r"cifar-100-python/test: fine_labels: expected "
                                            r"labels 0\.\.99, found 100 at index 0"):
        data_of("data.kind=cifar100_lt", f"data.root={root}")


def test_cifar_batches_saved_again_with_str_keys_are_read(tmp_path):
    """Saved again from Python 3 (e.g. loaded with encoding='latin1'), a batch has str keys:
    it was refused as lacking keys 'data' and 'labels' while listing them."""
    import pickle

    root = make_fake_cifar(tmp_path, "cifar10_lt", train_per_class=6, test_per_class=1)
    folder = root / "cifar-10-batches-py"
    for path in folder.iterdir():
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        with open(path, "wb") as f:
            pickle.dump({k.decode(): v for k, v in batch.items()}, f)
    data = data_of("data.kind=cifar10_lt", f"data.root={root}", "data.val_per_class=1")
    assert data.num_classes == 10 and len(data.class_names) == 10


def test_cifar_download_is_refused_with_where_to_put_the_files(tmp_path):
    with pytest.raises(LongtailError) as info:
        data_of("data.kind=cifar10_lt", f"data.root={tmp_path}", "data.download=true")
    message = str(info.value)
    assert "data.download=true downloads only Fashion-MNIST (fmnist_lt)" in message
    assert (f"download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and unpack it "
            f"into data.root {tmp_path}") in message
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Fashion-MNIST


@pytest.mark.parametrize("labels,expected", [
    (np.repeat(np.arange(10), 80)[:-5], r"train-labels-idx1-ubyte\.gz: expected 800 labels "
                                        r"\(one per image of train-images-idx3-ubyte\.gz\), "
                                        r"found shape \(795,\)"),
    (np.where(np.arange(800) == 17, 200, np.repeat(np.arange(10), 80)),
     r"train-labels-idx1-ubyte\.gz: expected labels 0\.\.9, found 200 at index 17"),
], ids=["short labels", "label 200"])
def test_malformed_fashion_mnist_labels_are_named(tmp_path, labels, expected):
    root = make_fake_fmnist(tmp_path / "f")
    write_idx(root / "train-labels-idx1-ubyte", labels)
    with pytest.raises(LongtailError, match=expected):
        data_of(f"data.root={root}")


def test_fashion_mnist_images_of_another_size(tmp_path):
    root = make_fake_fmnist(tmp_path / "f")
    write_idx(root / "t10k-images-idx3-ubyte", np.zeros((100, 32, 32), np.uint8))
    with pytest.raises(LongtailError, match=r"t10k-images-idx3-ubyte\.gz: expected uint8 "
                                            r"images of 28x28 .*found uint8 of shape "
                                            r"\(100, 32, 32\)"):
        data_of(f"data.root={root}")


def test_failed_fashion_mnist_download_says_where_and_leaves_nothing(tmp_path, monkeypatch):
    from urllib.error import URLError

    import torchvision.datasets

    def offline(root, train, download):  # as torchvision does: folders first, then fetch
        (Path(root) / "FashionMNIST" / "raw").mkdir(parents=True)
        (Path(root) / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"x")
        raise RuntimeError(f"Error downloading train-images-idx3-ubyte.gz: got: "
                           f"{URLError('Name or service not known')}")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    for root in (tmp_path / "new", tmp_path):  # made by the download, or already there
        with pytest.raises(LongtailError) as info:
            data_of(f"data.root={root}", "data.download=true")
        assert str(info.value) == (
            "downloading Fashion-MNIST failed (Error downloading train-images-idx3-ubyte.gz: "
            "got: <urlopen error Name or service not known>); download "
            "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz,"
            " t10k-labels-idx1-ubyte.gz from https://github.com/zalandoresearch/fashion-mnist "
            f"where there is network and put them in {root} (data.root)")
        assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Image folders


def folder_args(root: Path) -> list[str]:
    make_image_folder(root / "train", per_class=[4, 3, 2])
    make_image_folder(root / "test", per_class=[2, 2, 2])
    return ["data.kind=image_folder", f"data.root={root}", "data.train=train", "data.test=test",
            "stage2.tau_norm.tau=1"]


def test_symbolic_link_loop_in_a_class_folder_is_not_followed(tmp_path, capsys):
    args = folder_args(tmp_path)
    (tmp_path / "train" / "class_00" / "loop").symlink_to("..")
    (tmp_path / "train" / "class_01" / "other").symlink_to(tmp_path / "train" / "class_02")
    data = data_of(*args)
    assert data.train_counts == [4, 3, 2]
    out = capsys.readouterr().out
    assert out.count("warning:") == 1
    assert "not following 2 symbolic links to a folder inside a class folder (e.g. " in out


def test_hidden_folders_and_files_are_not_classes_or_images(tmp_path):
    args = folder_args(tmp_path)
    image = next((tmp_path / "train" / "class_00").iterdir()).read_bytes()
    for hidden in (".ipynb_checkpoints/a.png", ".thumbs/b.png", "class_00/.thumbs/c.png",
                   "class_01/._00001.png"):
        (tmp_path / "train" / hidden).parent.mkdir(exist_ok=True)
        (tmp_path / "train" / hidden).write_bytes(image if "._" not in hidden else b"\0\5")
    (tmp_path / "test" / ".ipynb_checkpoints").mkdir()
    data = data_of(*args)
    assert data.class_names == ["class_00", "class_01", "class_02"]
    assert data.train_counts == [4, 3, 2]


def test_broken_symbolic_link_image_is_called_so(tmp_path):
    args = folder_args(tmp_path)
    link = tmp_path / "train" / "class_02" / "broken.png"
    link.symlink_to("/nonexistent.png")
    for extra in ([], ["data.allow_outside_root=true"]):
        with pytest.raises(LongtailError, match=rf"{link} is a broken symbolic link "
                                                rf"\(-> /nonexistent\.png\), expected an image"):
            data_of(*args, *extra)
    assert data_of(*args, "data.on_bad_image=skip").train_counts == [4, 3, 2]
    link.unlink()
    link.symlink_to("/dev/null")  # there, but no file to decode: not "broken", not "missing"
    with pytest.raises(LongtailError, match=rf"{link} is not a regular file \(a FIFO, device "
                                            rf"or socket\), expected an image file$"):
        data_of(*args, "data.allow_outside_root=true")


# --------------------------------------------------------------------------------------------
# Image lists: the image size is that of the dataset, not of its first image


@pytest.mark.parametrize("odd_side, expected", [(1, 16), (80, 16)])
def test_one_odd_first_image_does_not_set_the_image_size(tmp_path, odd_side, expected):
    from PIL import Image

    from tests.conftest import make_image_list_dataset

    files = make_image_list_dataset(tmp_path / "d", counts=[6, 4, 3])
    Image.new("RGB", (odd_side, odd_side)).save(tmp_path / "d" / "odd.png")
    files["train"].write_text("odd.png 0\n" + files["train"].read_text())
    data = data_of("data.kind=list", f"data.root={tmp_path / 'd'}",
                   f"data.train={files['train']}", f"data.test={files['test']}",
                   f"data.val={files['val']}")
    assert data.image_size == expected and data.hflip is False


def test_the_size_sample_spans_small_lists_too(tmp_path):
    from PIL import Image

    from longtail.data.builder import _typical_size
    from longtail.data.listfile import FileSplit

    paths = []
    for i, side in enumerate([80, 16, 16]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (side, side)).save(paths[-1])
    split = FileSplit(tmp_path / "train.txt", paths, [0, 1, 1], ["a", "b", "c"])
    assert _typical_size(split) == (16, (80 * 80 + 2 * 16 * 16) // 3)


def test_images_below_8_px_are_refused_unless_a_size_is_given(tmp_path):
    from PIL import Image

    root = tmp_path / "d"
    root.mkdir()
    for i in range(4):
        Image.new("RGB", (4, 4), (i * 60, 0, 0)).save(root / f"{i}.png")
    (root / "train.txt").write_text("0.png 0\n1.png 1\n2.png 0\n3.png 1\n")
    args = ["data.kind=list", f"data.root={root}", f"data.train={root / 'train.txt'}",
            f"data.test={root / 'train.txt'}", f"data.val={root / 'train.txt'}"]
    with pytest.raises(LongtailError, match=r"train.txt: the training images are 4 px "
                                            r"\(median side\); at least 8 px are needed"):
        data_of(*args)
    assert data_of(*args, "data.image_size=8").image_size == 8


def _list_run(tmp_path, train_text=None, **extra):
    """A tiny list dataset; ``train_text`` replaces train.txt's content."""
    from tests.conftest import make_image_list_dataset

    files = make_image_list_dataset(tmp_path / "d", counts=[6, 4, 3])
    if train_text is not None:
        files["train"].write_bytes(train_text if isinstance(train_text, bytes)
                                   else train_text.encode())
    args = ["data.kind=list", f"data.root={tmp_path / 'd'}", f"data.train={files['train']}",
            f"data.val={files['val']}", f"data.test={files['test']}",
            *(f"{k}={v}" for k, v in extra.items())]
    return files, args


def test_list_lines_no_file_system_takes_are_named(tmp_path):
    files, args = _list_run(tmp_path)
    good = files["train"].read_text()
    for text, message in [
        (good + "train/" + "a" * 5000 + ".png 1\n", r"train.txt:14: .*\.\.\.: not a usable "
                                                    r"file name \(File name too long\)"),
        (good + "train/x\x00y.png 1\n", r"train.txt:14: holds a NUL byte"),
        (good.encode("utf-16"), r"train.txt:1: looks like UTF-16 text; save the file as UTF-8"),
        (good.encode("utf-16-le"), r"train.txt:1: looks like UTF-16 text"),
        # a crash during a write leaves NULs at the end: not UTF-16, as it was called
        (good.encode() + bytes(4096), r"train.txt:14: holds a NUL byte, which no file name "
                                      r"can contain \(a run of them, as a crash during a write "
                                      r"leaves: the file is damaged from here\)$"),
    ]:
        files["train"].write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(LongtailError, match=message):
            data_of(*args)
    (tmp_path / "d" / "la").symlink_to("lb")
    (tmp_path / "d" / "lb").symlink_to("la")
    files["train"].write_text(good + "la 1\n")
    with pytest.raises(LongtailError, match=r"train.txt:14: .*la is in a loop of symbolic links"):
        data_of(*args)


def test_a_list_that_is_an_image_or_an_archive_or_has_odd_lines(tmp_path):
    import gzip
    import io

    from PIL import Image

    files, args = _list_run(tmp_path)
    good = files["train"].read_text()
    for fmt, what in (("PNG", "a PNG"), ("JPEG", "a JPEG"), ("BMP", "a BMP"), ("ICO", "an ICO"),
                      ("TGA", "a TGA"), ("PPM", "a PPM"), ("GIF", "a GIF")):
        out = io.BytesIO()
        Image.new("RGB", (16, 16)).save(out, fmt)
        files["train"].write_bytes(out.getvalue())
        with pytest.raises(LongtailError, match=rf"train.txt: is {what} image, expected a text "
                                                rf"list of 'relative/path label' lines$"):
            data_of(*args)
    files["train"].write_bytes(gzip.compress(good.encode()))
    with pytest.raises(LongtailError, match=r"train.txt: is a gzip file \(decompress it first\)"):
        data_of(*args)
    import tarfile

    with tarfile.open(files["train"], "w") as archive:  # told from its first bytes only
        archive.add(files["val"], arcname="val.txt")
    with pytest.raises(LongtailError, match=r"train.txt: is a tar archive, expected a text"):
        data_of(*args)
    files["train"].write_bytes(bytes(range(256)) * 1000)
    with pytest.raises(LongtailError, match=r"train.txt: is a binary file, expected a text"):
        data_of(*args)
    # a third column (a weight, a flag) is not part of the path
    first, rest = good.split("\n", 1)
    files["train"].write_text(first + " 1\n" + rest)
    with pytest.raises(LongtailError, match=r"train.txt:1: expected 'relative/path label', found "
                                            r"3 fields '.*\.png 0 1'; remove the columns"):
        data_of(*args)
    # old Mac line ends (a lone CR) are line ends
    files["train"].write_bytes(good.replace("\n", "\r").encode())
    assert data_of(*args).train_counts == [6, 4, 3]


def test_data_root_dot_names_the_dataset_by_its_folder(tmp_path, monkeypatch):
    files, args = _list_run(tmp_path)
    monkeypatch.chdir(tmp_path / "d")
    args = [a if not a.startswith("data.root=") else "data.root=." for a in args]
    assert data_of(*args).name == "d"


def test_make_split_of_a_list_not_numbered_from_0_says_which_labels_lack(tmp_path):
    from longtail.data.makesplit import SplitRequest, make_split

    files, _ = _list_run(tmp_path)
    text = files["train"].read_text()
    for old, new in ((" 2\n", " 3\n"), (" 1\n", " 2\n"), (" 0\n", " 1\n")):
        text = text.replace(old, new)
    files["train"].write_text(text)
    request = SplitRequest(source="list", root=tmp_path / "d", out=tmp_path / "s",
                           list_file=files["train"])
    with pytest.raises(LongtailError, match=r"train.txt: labels must be 0..C-1, each present; "
                                            r"no image has label 0 \(renumber"):
        make_split(request)


def test_class_name_files_with_odd_digits_or_a_label_named_twice(tmp_path):
    files, args = _list_run(tmp_path)
    names = tmp_path / "names.txt"
    names.write_text("0 cat\n1 dog\n0 cow\n2 owl\n")
    with pytest.raises(LongtailError, match=r"names.txt:3: label 0 is named twice "
                                            r"\('cat' and 'cow'\)"):
        data_of(*args, f"data.class_names={names}")
    # '²' is a digit int() refuses: after 'label name' lines, a line without a label, not
    # three names "0 cat", "1 dog", "² owl"
    names.write_text("0 cat\n1 dog\n\u00b2 owl\n")
    with pytest.raises(LongtailError, match=r"names.txt:3: expected 'label name' \(a label >= "
                                            r"0\) as on line 1 \('0 cat'\), found '\u00b2 owl'"):
        data_of(*args, f"data.class_names={names}")


def test_a_symbolic_link_loop_beside_the_class_folders_is_not_a_class(tmp_path, capsys):
    root = make_image_folder(tmp_path / "f", [6, 4, 3])
    (root / "x").symlink_to("y")
    (root / "y").symlink_to("x")
    from longtail.data.folder import read_image_folder

    split, classes = read_image_folder(root)
    assert len(classes) == 3 and len(split.paths) == 13
    assert "x: Too many levels of symbolic links; not a class folder" in capsys.readouterr().out


def test_sparse_or_overflowing_features_are_refused(tmp_path):
    folder = tmp_path / "f"
    feature_files(folder, [0, 0, 1, 1, 2, 3], fmt="pt")
    x, y = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 3])
    torch.save({"features": x.to_sparse(), "labels": y}, folder / "train.pt")
    with pytest.raises(LongtailError, match=r"train.pt: features: expected a dense tensor, "
                                            r"found layout torch.sparse_coo"):
        read_feature_file(folder / "train.pt")
    x[4, 2] = 3e30
    torch.save({"features": x, "labels": y}, folder / "train.pt")
    with pytest.raises(LongtailError, match=r"train.pt: features: expected values of magnitude "
                                            r"at most 1e15, found 3e30 in row 4"):
        read_feature_file(folder / "train.pt")


def test_image_extensions_are_torchvisions():
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from longtail.data import folder

    assert folder.IMG_EXTENSIONS == IMG_EXTENSIONS
