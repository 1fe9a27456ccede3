"""Stage 2 on images: online cRT / LWS in the stated BatchNorm mode, fine-tuning, and the
authors' best-val checkpoint selection in stage 1 and stage 2."""

import json

import torch

from longtail.cli import main
from longtail.config import load_config
from longtail.data import build_data
from longtail.models import build_model
from longtail.scalars import ScalarLog
from longtail.stages.online import NetworkStage2
from longtail.stages.rebalance import CRT, LWS
from tests.test_end_to_end import ROOT, TINY

FMNIST = str(ROOT / "configs" / "fmnist_lt.yaml")


def _data_and_model(fake_fmnist, bn: str):
    cfg = load_config(FMNIST, [f"data.root={fake_fmnist}", "data.n_max=40", "data.n_min=4",
                               "data.val_per_class=4", *TINY, "stage2.features=online",
                               f"stage2.bn={bn}"])
    data = build_data(cfg.data, cfg.seed, cfg.model.in_channels)
    model = build_model(cfg.model.name, data.num_classes, data.channels, data.image_size,
                        width=cfg.model.width, small_stem=cfg.model.small_stem)
    return cfg, data, model


def _running_stats(model) -> torch.Tensor:
    return torch.cat([b for n, b in model.state_dict().items() if "running_mean" in n])


def test_online_batches_run_the_backbone_in_the_stated_bn_mode(fake_fmnist, tmp_path):
    for bn, moves in (("eval", False), ("train", True)):
        cfg, data, model = _data_and_model(fake_fmnist, bn)
        before = _running_stats(model).clone()
        net = NetworkStage2(model, data, cfg, torch.device("cpu"), tmp_path,
                            ScalarLog(tmp_path / "logs", enabled=False))
        crt = CRT(data.num_classes, epochs=2, batch_size=16)
        batches, frozen = net.online_batches(crt)
        crt.fit(batches)
        assert not torch.equal(_running_stats(frozen), before) == moves, bn
        assert torch.equal(_running_stats(model), before)  # the stage-1 model is untouched
        assert all(not p.requires_grad for p in frozen.parameters())
        grads = [p.grad for p in frozen.parameters()]
        assert all(g is None for g in grads)  # frozen: no gradient reached the backbone


def test_online_finetune_and_select_run_end_to_end(fake_fmnist, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", FMNIST, f"data.root={fake_fmnist}", "data.n_max=40", "data.n_min=4",
                 "data.val_per_class=4", *TINY, "stage2.features=online", "stage2.bn=train",
                 "stage1.select=best_val", "stage2.select=best_val",
                 "stage2.finetune.epochs=1", "stage2.wb.epochs=1",
                 "stage2.methods=[joint,crt,lws,las,balms,wb,finetune,finetune_last]",
                 "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"joint", "crt", "lws", "las", "balms", "wb", "finetune",
                                       "finetune_last"}
    assert (out / "stage1" / "best.pt").is_file()
    assert (out / "stage2" / "finetune" / "last.pt").is_file()
    # rebalance reuses the image-based results and refits nothing it cannot
    assert main(["rebalance", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["methods"] == metrics["methods"]
    # ... nor one whose settings an override changes while keeping its result
    for key, method in (("stage2.finetune.lr=0.5", "finetune"), ("stage2.crt.lr=0.3", "crt")):
        capsys.readouterr()
        assert main(["rebalance", str(out), "stage2.methods=[joint]", key]) == 2
        printed = capsys.readouterr()
        name, err = key.split("=")[0], printed.err
        assert "fitted again" not in printed.out  # refused before any note
        assert err.startswith(f"longtail: error: override {name}: {method}'s result in "
                              f"metrics.json was made with {name}="), err
        assert err.endswith(f"rebalance cannot fit {method} again (it trains on images); use "
                            f"'longtail run'\n") and err.count("\n") == 1, err
    assert json.loads((out / "metrics.json").read_text())["methods"] == metrics["methods"]


def test_stage1_best_val_keeps_the_epoch_of_best_val_accuracy(fake_fmnist, tmp_path,
                                                              monkeypatch):
    """A stub val accuracy per epoch (50, 80, 60): best_val ends with epoch 2's weights."""
    from longtail.stages import joint

    scripted, states = iter(()), []

    def stub_accuracy(m, *args, **kwargs):
        states.append({k: v.clone() for k, v in m.state_dict().items()})
        return next(scripted)

    monkeypatch.setattr(joint, "accuracy", stub_accuracy)
    for select, epoch in (("best_val", 2), ("last", 3)):
        torch.manual_seed(0)
        cfg, data, model = _data_and_model(fake_fmnist, "eval")
        scripted, states = iter([50.0, 80.0, 60.0]), []
        stage = cfg.stage1.__class__(**{**vars(cfg.stage1), "epochs": 3, "select": select})
        joint.train_joint(model, data, stage, seed=0, device=torch.device("cpu"),
                          num_workers=0, eval_batch_size=64,
                          checkpoint_path=tmp_path / select / "last.pt",
                          log=ScalarLog(tmp_path / "logs", enabled=False))
        final = model.state_dict()
        assert all(torch.equal(final[k], states[epoch - 1][k]) for k in final), select
    best = torch.load(tmp_path / "best_val" / "best.pt", weights_only=True)
    assert best["epoch"] == 2 and best["val_top1"] == 80.0


def test_stage2_best_val_keeps_the_best_epoch():
    """cRT and LWS with select=best_val end with the epoch whose val top-1 is highest."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat_interleave(torch.tensor([60, 20, 8, 4]))
    x = torch.randn(len(y), 8, generator=g) + 1.5 * torch.nn.functional.one_hot(y, 8).float()
    xv = torch.randn(40, 8, generator=g)
    yv = torch.arange(4).repeat(10)
    xv += 1.5 * torch.nn.functional.one_hot(yv, 8).float()
    crt = CRT(4, epochs=6, batch_size=16, lr=0.5, select="best_val").fit(x, y, xv, yv)
    best = max(range(6), key=lambda e: crt.val_history_[e])  # first best on ties
    assert crt.best_epoch_ == best + 1
    top1 = (crt.predict(xv) == yv).double().mean().item()
    assert top1 == crt.val_history_[best]
    last = CRT(4, epochs=6, batch_size=16, lr=0.5).fit(x, y, xv, yv)
    assert last.val_history_ == []
    # LWS on its precomputed logits: the val logits are made (and used) only for best_val.
    w = torch.eye(4, 8) * torch.tensor([3.0, 2.0, 1.0, 0.5]).unsqueeze(1)
    lws = LWS(w, epochs=6, batch_size=16, lr=0.5, select="best_val").fit(x, y, xv, yv)
    best = max(range(6), key=lambda e: lws.val_history_[e])
    assert lws.best_epoch_ == best + 1 and len(lws.val_history_) == 6
    assert (lws.predict(xv) == yv).double().mean().item() == lws.val_history_[best]
    assert LWS(w, epochs=6, batch_size=16, lr=0.5).fit(x, y, xv, yv).val_history_ == []


def test_online_bn_train_on_a_tiny_split_keeps_two_images_a_step(tmp_path):
    """stage2.min_steps shrinks the batch of a small split, never below two images: one
    image in BatchNorm's train mode has no variance (torch refuses it)."""
    from tests.conftest import tiny_fmnist_run

    out = tiny_fmnist_run(tmp_path, "data.n_max=5", "data.n_min=1", "stage2.min_steps=16",
                          "stage2.features=online", "stage2.bn=train", "stage2.methods=[crt]")
    assert "crt" in json.loads((out / "metrics.json").read_text())["methods"]


def test_online_bn_train_skips_batches_that_undecodable_images_left_with_one(tmp_path):
    """data.on_bad_image=skip read from disk: a batch of two can lose one image, and one
    image in BatchNorm's train mode was a traceback."""
    import random

    from tests.conftest import make_image_list_dataset

    files = make_image_list_dataset(tmp_path / "d", counts=[12, 8, 6])
    rng = random.Random(0)
    for line in files["train"].read_text().splitlines()[1:]:  # the first decodes
        if rng.random() < 0.4:
            (tmp_path / "d" / line.split()[0]).write_bytes(b"not an image")
    out = tmp_path / "run"
    assert main(["run", FMNIST, "data.kind=list", f"data.root={tmp_path / 'd'}",
                 *(f"data.{s}={p}" for s, p in files.items()), "data.on_bad_image=skip",
                 "data.in_memory=false", "stage1.epochs=1", "stage1.batch_size=4",
                 "model.width=8", "stage2.features=online", "stage2.bn=train",
                 "stage2.batch_size=2", "stage2.min_steps=1", "stage2.crt.epochs=2",
                 "stage2.methods=[crt]", "--out", str(out)]) == 0
    assert "crt" in json.loads((out / "metrics.json").read_text())["methods"]


def test_a_run_written_before_min_steps_is_rebalanced_as_it_ran(tmp_path, capsys):
    """A run's config.yaml without min_steps (an earlier longtail) took its batches as given:
    read so, its stage-2 results stay valid (reused), not refitted with shrunken batches."""
    from tests.conftest import tiny_fmnist_run

    out = tiny_fmnist_run(tmp_path, "stage2.methods=[joint,crt]", "stage2.crt.epochs=2")
    before = json.loads((out / "metrics.json").read_text())["methods"]["crt"]["top1"]
    path = out / "config.yaml"
    path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                            if "min_steps" not in line))
    capsys.readouterr()
    assert main(["rebalance", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "crt" in printed and "reused" in printed and "fitted in" not in printed, printed
    assert json.loads((out / "metrics.json").read_text())["methods"]["crt"]["top1"] == before
