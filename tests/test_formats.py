"""Every dataset format on tiny fixtures: counts, labels, splits and shot groups."""

import json
import pickle

import numpy as np
import pytest
import torch

from longtail.cli import main
from longtail.config import load_config
from longtail.data import build_data, cifar
from longtail.data.profiles import cifar_lt_profile
from longtail.errors import LongtailError
from tests.conftest import (
    make_fake_cifar,
    make_fake_fmnist,
    make_image_folder,
    make_image_list_dataset,
    make_inat_json,
)


def data_of(*overrides, seed=0, channels=None):
    return build_data(load_config(None, list(overrides)).data, seed=seed, channels=channels)


def test_cifar10_lt_matches_cao_et_al(tmp_path):
    root = make_fake_cifar(tmp_path, "cifar10_lt", train_per_class=60)
    data = data_of("data.kind=cifar10_lt", f"data.root={root}", "data.imbalance_ratio=10",
                   "data.val_per_class=3")
    profile = cifar_lt_profile(10, 60, 10)
    assert profile == [int(60 * 0.1 ** (i / 9)) for i in range(10)]
    assert data.group_counts == profile  # label order, head is class 0
    assert data.image_size == 32 and data.channels == 3 and len(data.test) == 50
    # The exact images of Cao et al.'s generator: np.random.seed(0), then per class in label
    # order a shuffle of its indices, keeping the first n_c.
    labels = np.concatenate([np.asarray(cifar.read_batch(
        root / "cifar-10-batches-py" / f"data_batch_{i}")[b"labels"]) for i in range(1, 6)])
    np.random.seed(0)
    expected = []
    for c, n in enumerate(profile):
        idx = np.where(labels == c)[0]
        np.random.shuffle(idx)
        expected.append(idx[:n])
    expected = np.sort(np.concatenate(expected))
    arrays = cifar.load_cifar(root, "cifar10_lt")
    # val: 3 per class from unused images; the head class uses all of its images, so its 3
    # val images come out of its training images, and the groups keep the counts before that.
    val_counts = torch.bincount(data.val.labels, minlength=10).tolist()
    assert val_counts == [3] * 10
    assert data.train_counts == [profile[0] - 3, *profile[1:]]
    assert data.group_counts == profile
    kept = torch.from_numpy(arrays["train_images"][expected])
    assert all((kept == image).flatten(1).all(1).any() for image in data.train.images)
    assert len(data.train) + 3 == len(kept)
    groups = load_config(None).eval
    assert groups.many_threshold == 100


def test_cifar_step_profile_and_cifar100(tmp_path):
    root = make_fake_cifar(tmp_path, "cifar100_lt", train_per_class=20, test_per_class=1)
    data = data_of("data.kind=cifar100_lt", f"data.root={root}", "data.imbalance_ratio=10",
                   "data.profile=step", "data.val_per_class=0", "stage2.tau_norm.tau=1")
    assert data.train_counts == [20] * 50 + [2] * 50
    assert data.val is None and data.num_classes == 100 and data.class_names[3] == "class3"


def test_cifar_classes_truncated_to_nothing_keep_one_image(tmp_path):
    # int(10 / 100 ** (i / 9)) is 0 for classes 5..9: Cao et al.'s code would train on
    # classes without an image, and a run used to fail after stage 1.
    root = make_fake_cifar(tmp_path, "cifar10_lt", train_per_class=20)
    data = data_of("data.kind=cifar10_lt", f"data.root={root}", "data.n_max=10",
                   "data.val_per_class=2")
    assert min(data.group_counts) == 1 and len(data.group_counts) == 10
    assert data.group_counts[:5] == cifar_lt_profile(10, 10, 100)[:5]
    assert any("5 classes (" in note and "each keeps 1" in note for note in data.notes)


def test_cifar_pickles_cannot_run_code(tmp_path):
    root = make_fake_cifar(tmp_path, "cifar10_lt", train_per_class=10)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(root / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil()}, f)
    with pytest.raises(LongtailError, match="refused to load builtins.print"):
        data_of("data.kind=cifar10_lt", f"data.root={root}")


def test_missing_cifar_names_the_folder(tmp_path):
    with pytest.raises(LongtailError, match="cifar-10-batches-py"):
        data_of("data.kind=cifar10_lt", f"data.root={tmp_path}")


def test_inat_json(tmp_path):
    files = make_inat_json(tmp_path, counts=[12, 5, 2])
    data = data_of("data.kind=inat_json", f"data.root={tmp_path}", "data.train=train2018.json",
                   "data.test=val2018.json", "data.val_from_train=1")
    # category ids 0, 10, 20 become labels 0, 1, 2; one image per class held out as val
    assert data.train_counts == [11, 4, 1] and data.class_names == ["species 0", "species 1",
                                                                    "species 2"]
    assert data.group_counts == [12, 5, 2]  # Many/Medium/Few from the counts before hold-out
    assert torch.bincount(data.val.labels).tolist() == [1, 1, 1]
    assert torch.bincount(data.test.labels).tolist() == [3, 3, 3]
    assert files["train"].is_file()


def test_inat_json_errors_name_the_annotation(tmp_path):
    files = make_inat_json(tmp_path, counts=[3, 2])
    good = files["val"].read_text()
    blob = json.loads(good)
    blob["annotations"][1]["category_id"] = 999
    files["val"].write_text(json.dumps(blob))
    with pytest.raises(LongtailError, match=r"val2018\.json: annotations\[1\]: category_id 999"):
        data_of("data.kind=inat_json", f"data.root={tmp_path}", "data.train=train2018.json",
                "data.test=val2018.json", "stage2.tau_norm.tau=1")
    files["val"].write_text(good)
    args = ("data.kind=inat_json", f"data.root={tmp_path}", "data.train=bad.json",
            "data.test=val2018.json", "stage2.tau_norm.tau=1")
    train = json.loads(files["train"].read_text())
    # a training annotation of a category 'categories' lacks: not a class of its own (which
    # the val split was then blamed for lacking)
    bad = json.loads(json.dumps(train))
    bad["annotations"][0]["category_id"] = 999
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(LongtailError, match=r"bad\.json: annotations\[0\]: category_id 999 is "
                                            r"not one of the ids in 'categories'$"):
        data_of(*args)
    # one image annotated twice: trained on under two labels
    bad = json.loads(json.dumps(train))
    bad["annotations"][4]["image_id"] = 0
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(LongtailError, match=r"bad\.json: annotations\[4\]: image 0 is annotated "
                                            r"twice \(first in annotations\[0\]\); expected one "
                                            r"annotation per image$"):
        data_of(*args)
    # one file under two image ids: trained on (and counted) twice, as a list refuses
    bad = json.loads(json.dumps(train))
    bad["images"][4]["file_name"] = "./" + bad["images"][0]["file_name"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(LongtailError, match=r"bad\.json: annotations\[4\]: image '\./.*' is "
                                            r"annotated twice, under two image ids \(first in "
                                            r"annotations\[0\]\)"):
        data_of(*args)
    # arrays nested thousands deep: one line, not a RecursionError traceback
    (tmp_path / "bad.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(LongtailError, match=r"bad\.json: not a readable JSON file \(nested too "
                                            r"deeply\)$"):
        data_of(*args)
    # a category named null is named by its id, not 'None'
    bad = json.loads(json.dumps(train))
    bad["categories"][1]["name"] = None
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert data_of(*args).class_names == ["species 0", "10"]


def test_image_folder_generated_long_tailed_split(tmp_path):
    root = make_image_folder(tmp_path / "folder", per_class=[30] * 5)
    data = data_of("data.kind=image_folder", f"data.root={root}", "data.n_max=20",
                   "data.n_min=2", "data.val_per_class=3", "data.test_per_class=5", seed=1)
    assert sorted(data.train_counts, reverse=True) == [20, 11, 6, 4, 2]
    assert torch.bincount(data.val.labels).tolist() == [3] * 5
    assert torch.bincount(data.test.labels).tolist() == [5] * 5
    assert data.class_names == [f"class_{c:02d}" for c in range(5)]
    again = data_of("data.kind=image_folder", f"data.root={root}", "data.n_max=20",
                    "data.n_min=2", "data.val_per_class=3", "data.test_per_class=5", seed=1)
    assert again.split_sha256 == data.split_sha256


def test_image_folder_used_as_it_is(tmp_path):
    make_image_folder(tmp_path / "train", per_class=[9, 4, 2])
    make_image_folder(tmp_path / "test", per_class=[2, 2, 2])
    data = data_of("data.kind=image_folder", f"data.root={tmp_path}", "data.train=train",
                   "data.test=test", "stage2.tau_norm.tau=1")
    assert data.train_counts == [9, 4, 2] and len(data.test) == 6 and data.val is None


def test_list_class_names_and_remap(tmp_path):
    root = tmp_path / "d"
    files = make_image_list_dataset(root, counts=[5, 3, 2])
    (root / "names.txt").write_text("cat\ndog\nbird\n")
    data = data_of("data.kind=list", f"data.root={root}", f"data.train={files['train']}",
                   f"data.test={files['test']}", "data.class_names=names.txt",
                   "stage2.tau_norm.tau=1")
    assert data.class_names == ["cat", "dog", "bird"]
    # Labels 0, 1, 2 rewritten as 0, 5, 9: an error unless remapping is asked for.
    for name in ("train", "test"):
        text = files[name].read_text().replace(" 1\n", " 5\n").replace(" 2\n", " 9\n")
        files[name].write_text(text)
    args = ["data.kind=list", f"data.root={root}", f"data.train={files['train']}",
            f"data.test={files['test']}", "stage2.tau_norm.tau=1"]
    with pytest.raises(LongtailError, match=r"train\.txt:\d+: label 5, but no training image "
                                            r"has label 1, 2, 3, 4, 6, 7, 8"):
        data_of(*args)
    remapped = data_of(*args, "data.remap_labels=true")
    assert remapped.train_counts == [5, 3, 2]
    assert any("5->1" in note for note in remapped.notes)
    # classes keep the lists' labels as names, and a class-name file is keyed by them (it may
    # name labels no image has)
    assert remapped.class_names == ["0", "5", "9"]
    (root / "labels.txt").write_text("9 bird\n0 cat\n5 dog\n7 fish\n")
    named = data_of(*args, "data.remap_labels=true", "data.class_names=labels.txt")
    assert named.class_names == ["cat", "dog", "bird"]
    (root / "labels.txt").write_text("0 cat\n1 dog\n2 bird\n")
    with pytest.raises(LongtailError, match=r"labels\.txt: expected a name for each label of "
                                            r"the training list, missing labels \[5, 9\]$"):
        data_of(*args, "data.remap_labels=true", "data.class_names=labels.txt")
    # one name per line: one per class in label order, or one per label from 0
    (root / "labels.txt").write_text("cat\ndog\nbird\n")
    assert data_of(*args, "data.remap_labels=true",
                   "data.class_names=labels.txt").class_names == ["cat", "dog", "bird"]
    (root / "labels.txt").write_text("".join(f"n{i}\n" for i in range(10)))
    assert data_of(*args, "data.remap_labels=true",
                   "data.class_names=labels.txt").class_names == ["n0", "n5", "n9"]
    (root / "labels.txt").write_text("cat\ndog\nbird\nowl\n")
    with pytest.raises(LongtailError, match=r"missing labels \[5, 9\] \(a file of one name per "
                                            r"line has one per class, 3 lines"):
        data_of(*args, "data.remap_labels=true", "data.class_names=labels.txt")
    # 'label name' lines with one whose label is not a label >= 0: not three names "0 cat"...
    (root / "labels.txt").write_text("0 cat\n5 dog\n-9 bird\n")
    with pytest.raises(LongtailError, match=r"labels\.txt:3: expected 'label name' \(a label "
                                            r">= 0\) as on line 1 \('0 cat'\), found '-9 bird'"):
        data_of(*args, "data.remap_labels=true", "data.class_names=labels.txt")


def test_make_split_from_an_image_folder_is_reproducible(tmp_path, capsys):
    root = make_image_folder(tmp_path / "pool", per_class=[40] * 6)
    args = ["make-split", "image_folder", "--root", str(root), "--profile", "pareto",
            "--n-max", "30", "--n-min", "2", "--val-per-class", "2", "--test-per-class", "4"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "split.json").read_text())
    b = json.loads((tmp_path / "b" / "split.json").read_text())
    assert a["files"] == b["files"]  # same seed: same lists, same SHA-256
    train = a["counts"]["train"]
    assert max(train) == 30 and min(train) == 2 and a["counts"]["test"] == [4] * 6
    assert "use it: longtail run" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "c"), "--seed", "1"]) == 0
    c = json.loads((tmp_path / "c" / "split.json").read_text())
    assert c["files"]["train.txt"]["sha256"] != a["files"]["train.txt"]["sha256"]
    # The lists are a list-kind dataset.
    data = data_of("data.kind=list", f"data.root={a['data_root']}",
                   f"data.train={tmp_path / 'a' / 'train.txt'}",
                   f"data.val={tmp_path / 'a' / 'val.txt'}",
                   f"data.test={tmp_path / 'a' / 'test.txt'}")
    assert data.train_counts == train


def test_make_split_exports_array_sources(tmp_path):
    root = make_fake_fmnist(tmp_path / "f", train_per_class=30, test_per_class=2)
    out = tmp_path / "split"
    assert main(["make-split", "fmnist", "--root", str(root), "--out", str(out), "--n-max",
                 "20", "--ratio", "10", "--val-per-class", "2"]) == 0
    summary = json.loads((out / "split.json").read_text())
    assert sorted(summary["counts"]["train"], reverse=True)[0] == 20
    assert min(summary["counts"]["train"]) == 2 and summary["counts"]["test"] == [2] * 10
    first = (out / "train.txt").read_text().split()[0]
    assert (out / first).is_file()


def test_make_split_says_when_classes_are_too_small(tmp_path, capsys):
    root = make_image_folder(tmp_path / "pool", per_class=[10] * 3)
    assert main(["make-split", "image_folder", "--root", str(root), "--out",
                 str(tmp_path / "o"), "--n-max", "50"]) == 2
    assert "class class_00 has only 10 images" in capsys.readouterr().err


def test_make_split_names_the_options_that_fit(tmp_path, capsys):
    """With the default --n-max, a class too small for val + test is not reported as a
    negative --n-max the user never gave."""
    root = make_image_folder(tmp_path / "pool", per_class=[9, 8, 9])
    assert main(["make-split", "image_folder", "--root", str(root), "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert ("make-split: class class_01 has only 8 images; a split needs 20 val + 50 test + 1 "
            "train per class (lower --val-per-class or --test-per-class)") in err, err
    assert "-62" not in err and not (tmp_path / "o").exists()
    assert main(["make-split", "image_folder", "--root", str(root), "--out",
                 str(tmp_path / "o"), "--val-per-class", "2", "--test-per-class", "3",
                 "--n-max", "4"]) == 2
    assert ("make-split --n-max: expected at most 3, found 4: class class_01 has 8 images, of "
            "which 2 val + 3 test are set aside") in capsys.readouterr().err


def test_image_folder_too_small_for_a_generated_split(tmp_path):
    root = make_image_folder(tmp_path / "folder", per_class=[30, 6, 30])
    with pytest.raises(LongtailError, match=r"folder/class_01: class folder has only 6 images; "
                                            r"the generated split needs 3 val \+ 5 test \+ 1 "
                                            r"train per class"):
        data_of("data.kind=image_folder", f"data.root={root}", "data.val_per_class=3",
                "data.test_per_class=5")
    with pytest.raises(LongtailError, match=r"config key data.n_max: expected at most 2 \(class "
                                            r"folder .*/class_01 has 6 images.*found 5"):
        data_of("data.kind=image_folder", f"data.root={root}", "data.val_per_class=2",
                "data.test_per_class=2", "data.n_max=5")


@pytest.mark.parametrize("generated", [False, True])
def test_empty_class_folder_is_named(tmp_path, generated):
    """An empty class folder is a class without training images: named by its path, not
    reported later as a val or test split lacking a class."""
    if generated:
        make_image_folder(tmp_path, per_class=[30] * 3)
        args = ["data.n_max=10", "data.val_per_class=2", "data.test_per_class=2"]
    else:
        for split in ("train", "val", "test"):
            make_image_folder(tmp_path / split, per_class=[4, 3, 2])
        args = ["data.train=train", "data.val=val", "data.test=test"]
    empty = (tmp_path / "train" if not generated else tmp_path) / "class_zz"
    empty.mkdir()
    with pytest.raises(LongtailError, match=rf"{empty}: class folder has no images"):
        data_of("data.kind=image_folder", f"data.root={tmp_path}", *args)


def test_images_outside_class_folders_are_said_to_be_left_out(tmp_path, capsys):
    from longtail.data.folder import read_image_folder

    root = make_image_folder(tmp_path / "train", per_class=[3, 2])
    (root / "class_00" / "00000.png").rename(root / "stray.png")
    (root / "notes.txt").write_text("not an image")
    (root / "class_01" / "anim.gif").write_bytes(b"GIF89a")  # not an ImageFolder extension
    split, classes = read_image_folder(root)
    assert classes == ["class_00", "class_01"] and len(split.paths) == 4
    assert capsys.readouterr().out.splitlines() == [
        f"warning: {root}: 1 file in class folders (e.g. class_01/anim.gif) is left out: not "
        f"one of the image extensions .jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp",
        f"warning: {root}: 1 image (e.g. stray.png) directly in the folder, in no class "
        f"folder, is left out"]
    (root / "stray.png").unlink()
    (root / "class_01" / "anim.gif").unlink()
    read_image_folder(root)
    assert capsys.readouterr().out == ""


def test_folder_and_file_mixed_up(tmp_path):
    root = make_image_folder(tmp_path / "train", per_class=[3, 3])
    (tmp_path / "test").write_text("x")
    with pytest.raises(LongtailError, match=r"/test: is a file, expected a folder of class "
                                            r"folders"):
        data_of("data.kind=image_folder", f"data.root={tmp_path}", "data.train=train",
                "data.test=test", "stage2.tau_norm.tau=1")
    with pytest.raises(LongtailError, match=r"/train: is a folder, expected an annotation file"):
        data_of("data.kind=inat_json", f"data.root={tmp_path}", f"data.train={root}",
                "data.test=test", "stage2.tau_norm.tau=1")
    files = make_image_list_dataset(tmp_path / "d", counts=[3, 2])
    (tmp_path / "d" / "names").mkdir()
    with pytest.raises(LongtailError, match=r"d/names: is a folder, expected a class-name file"):
        data_of("data.kind=list", f"data.root={tmp_path / 'd'}", f"data.train={files['train']}",
                f"data.test={files['test']}", "data.class_names=names", "stage2.tau_norm.tau=1")


def test_splits_a_generated_folder_or_cifar_split_would_have_ignored_or_flattened(tmp_path):
    """Silent before: image_folder without data.train ignored data.val / data.test (with a
    note saying the opposite); a root of train/ val/ test/ trained on 'classes' val, test and
    train; CIFAR's n_max above a class's images flattened the profile's head, and a
    val_per_class as large left 1 training image a class."""
    from longtail.config import ConfigError

    for key in ("val", "test"):
        with pytest.raises(ConfigError, match=rf"^config key data\.{key}: expected null, since "
                                              r"data\.train is not set: image_folder draws"):
            load_config(None, ["data.kind=image_folder", "data.root=/d", f"data.{key}=x"])
    root = tmp_path / "splits"
    for split in ("train", "val", "test"):
        make_image_folder(root / split, per_class=[3, 3])
    with pytest.raises(LongtailError, match=r"splits: its sub-folders test, train, val are "
                                            r"splits, not classes; use them as they are: "
                                            r"data\.test=test data\.train=train data\.val=val$"):
        data_of("data.kind=image_folder", f"data.root={root}", "data.n_max=2",
                "data.val_per_class=1", "data.test_per_class=1")
    cifar = make_fake_cifar(tmp_path / "c", "cifar10_lt", train_per_class=60)
    with pytest.raises(LongtailError, match=r"^config key data\.n_max: expected at most 60 \(the "
                                            r"images per class of cifar10; null takes them all"):
        data_of("data.kind=cifar10_lt", f"data.root={cifar}", "data.n_max=100")
    with pytest.raises(LongtailError, match=r"^config key data\.val_per_class: expected below "
                                            r"60 \(the images per class of cifar10\), found 60"):
        data_of("data.kind=cifar10_lt", f"data.root={cifar}", "data.val_per_class=60")
