from pathlib import Path

import pytest

from longtail.cli import main
from longtail.config import (
    ConfigError,
    all_keys,
    config_from_dict,
    config_reference,
    dump_config,
    load_config,
)
from longtail.errors import LongtailError

ROOT = Path(__file__).resolve().parents[1]
REQUIRED_KEYS = ["seed", "data.kind", "data.root", "data.train", "data.val", "data.test",
                 "model.name", "stage1.epochs", "stage1.batch_size", "stage1.lr",
                 "stage1.weight_decay", "stage2.methods", "stage2.crt.epochs",
                 "stage2.lws.epochs", "eval.many_threshold", "eval.few_threshold"]


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_required_keys_exist_with_their_defaults():
    assert set(REQUIRED_KEYS) <= set(all_keys())
    cfg = load_config(None)
    assert cfg.eval.many_threshold == 100 and cfg.eval.few_threshold == 20
    assert cfg.stage2.crt.epochs == 10 and cfg.stage2.lws.epochs == 5
    assert cfg.stage2.methods == ["joint", "ncm_cosine", "ncm_euclidean", "crt", "tau_norm",
                                  "lws"]


def test_yaml_and_dotted_overrides(tmp_path):
    path = write(tmp_path, "stage1:\n  epochs: 3\n  weight_decay: 5e-4\n")
    cfg = load_config(path, ["stage1.lr=0.05", "stage2.methods=[crt, tau_norm]", "seed=4",
                             "data.root=/x y"])
    assert cfg.stage1.epochs == 3 and cfg.stage1.lr == 0.05
    assert cfg.stage1.weight_decay == 5e-4  # YAML 1.1 reads 5e-4 as a string
    assert cfg.stage2.methods == ["crt", "tau_norm"] and cfg.seed == 4
    assert cfg.data.root == "/x y"
    assert isinstance(load_config(None, ["stage1.lr=1"]).stage1.lr, float)


def test_resolved_config_round_trips():
    import yaml

    cfg = load_config(ROOT / "configs" / "fmnist_lt.yaml", ["stage1.epochs=2"])
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg


@pytest.mark.parametrize("override,message", [
    ("stage1.epoch=3", "unknown config key stage1.epoch; did you mean stage1.epochs"),
    ("stage1.epochs=ten", "config key stage1.epochs: expected int, found str 'ten'"),
    ("stage1.epochs=2.5", "config key stage1.epochs: expected int, found float 2.5"),
    ("stage1.lr=fast", "config key stage1.lr: expected float or null, found str 'fast'"),
    ("data.kind=csv", "config key data.kind: expected one of fmnist_lt, cifar10_lt"),
    ("stage2.methods=crt+lws", "config key stage2.methods: expected all or a list of"),
    ("stage2.methods=[crt,lsw]", "config key stage2.methods: expected list of one of"),
    ("model.small_stem=yes please", "config key model.small_stem: expected bool or null"),
    ("stage1.sampler=balanced", "config key stage1.sampler: expected one of instance"),
    ("eval.few_threshold=200", "config key eval.few_threshold: expected at most"),
    ("data.kind=list", "config key data.train: expected a list file"),
    ("stage1=3", "config key stage1: expected a section"),
    ("epochs", "expected KEY=VALUE"),
    ("device=cuda:", "config key device: expected auto, cpu, cuda, cuda:N or mps, found 'cuda:'"),
    ("device=cuda:01", "config key device: expected auto, cpu, cuda, cuda:N or mps"),
    ("stage1.batch_size=1", "config key stage1.batch_size: expected at least 2 images per"),
    ("stage2.bn=train", "config key stage2.bn: expected eval unless stage2.features is online"),
])
def test_config_errors_name_the_key_and_what_was_expected(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_a_home_folder_in_a_path_is_expanded():
    cfg = load_config(None, ["data.kind=list", "data.root=~/d", "data.train=~/t.txt",
                             "data.test=t.txt", "data.val=~/v.txt"])
    home = str(Path.home())
    assert (cfg.data.root, cfg.data.train, cfg.data.test) == (f"{home}/d", f"{home}/t.txt",
                                                                 "t.txt")


def test_a_section_override_changes_only_the_keys_it_names(tmp_path):
    path = write(tmp_path, "stage1:\n  epochs: 3\n  lr: 0.05\n")
    cfg = load_config(path, ["stage1={epochs: 2, momentum: 0.8}"])
    assert (cfg.stage1.epochs, cfg.stage1.lr, cfg.stage1.momentum) == (2, 0.05, 0.8)


def torchrun_env(monkeypatch, world: str = "2", local_rank: str = "0") -> None:
    """Set what torchrun sets in each process it starts."""
    for key, value in (("WORLD_SIZE", world), ("RANK", local_rank), ("LOCAL_RANK", local_rank),
                       ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):
        monkeypatch.setenv(key, value)


def test_one_named_gpu_is_refused_under_torchrun(monkeypatch):
    assert load_config(None, ["device=cuda:1"]).device == "cuda:1"  # one process: that GPU
    torchrun_env(monkeypatch)
    for device in ("cuda", "auto", "cpu"):
        assert load_config(None, [f"device={device}"]).device == device
    with pytest.raises(ConfigError, match=r"config key device: expected cuda or auto under "
                                          r"torchrun \(2 processes on this machine: each "
                                          r"takes GPU LOCAL_RANK; CUDA_VISIBLE_DEVICES picks "
                                          r"which\), found 'cuda:0'"):
        load_config(None, ["device=cuda:0"])
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # one process on each of 2 machines
    assert load_config(None, ["device=cuda:1"]).device == "cuda:1"


def test_batch_split_over_torchrun_processes(monkeypatch):
    torchrun_env(monkeypatch)
    assert load_config(None, ["stage1.batch_size=32"]).stage1.batch_size == 32
    with pytest.raises(ConfigError, match=r"stage1.batch_size: expected a multiple of the 2 "
                                          r"processes \(WORLD_SIZE\), e.g. "
                                          r"stage1.batch_size=32 on the command line, found 33"):
        load_config(None, ["stage1.batch_size=33"])
    with pytest.raises(ConfigError, match="at least 2 images per process"):
        load_config(None, ["stage1.batch_size=2"])
    # fine-tuning's batch counts only when a finetune method runs
    with pytest.raises(ConfigError, match="stage2.finetune.batch_size: expected at least 2"):
        load_config(None, ["stage2.finetune.batch_size=2", "stage2.methods=[finetune_last]"])
    assert load_config(None, ["stage2.finetune.batch_size=3"]).stage2.finetune.batch_size == 3
    with pytest.raises(ConfigError, match="stage2.finetune.batch_size: expected a multiple"):
        load_config(None, ["stage2.finetune.batch_size=3", "stage2.methods=[finetune]"])
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(LongtailError, match="WORLD_SIZE: expected the number of processes"):
        load_config(None)
    monkeypatch.setenv("WORLD_SIZE", "")  # empty: unset, one process
    assert load_config(None, ["stage1.batch_size=33"]).stage1.batch_size == 33
    # set by hand, without torchrun: one line, not torch's rendezvous traceback
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_PORT")
    with pytest.raises(LongtailError, match="WORLD_SIZE: 2 processes, but MASTER_PORT is not "
                                            "set; start several processes with torchrun"):
        load_config(None)
    # set by hand with values torch would fail on with a traceback, or wait on forever
    for key, value, message in [
            ("MASTER_PORT", "abc", r"MASTER_PORT: expected a port number in \[1, 65535\]"),
            ("MASTER_PORT", "99999", r"MASTER_PORT: expected .*found '99999'"),
            ("RANK", "2", r"RANK: expected an index below WORLD_SIZE \(2\), found 2")]:
        torchrun_env(monkeypatch)
        monkeypatch.setenv(key, value)
        with pytest.raises(LongtailError, match=message):
            load_config(None)


def test_a_master_addr_that_does_not_resolve_is_one_line(monkeypatch):
    import socket

    import torch

    from longtail import distributed

    torchrun_env(monkeypatch)
    monkeypatch.setenv("MASTER_ADDR", "no.such.host.invalid")

    def unknown(host, *args, **kwargs):  # as a DNS server answers (none may be reachable)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", unknown)
    with pytest.raises(LongtailError, match=r"MASTER_ADDR: cannot find the host "
                                            r"'no.such.host.invalid' \(Name or service not "
                                            r"known\)"):
        with distributed.session(torch.device("cpu")):
            pass
    monkeypatch.setattr(socket, "getaddrinfo", real)
    monkeypatch.setenv("MASTER_ADDR", "a..b")  # no DNS asked: refused by its form
    with pytest.raises(LongtailError, match=r"MASTER_ADDR: not a host name: 'a..b'"):
        with distributed.session(torch.device("cpu")):
            pass


def test_rebase_paths_takes_relative_paths_from_where_the_run_started(tmp_path):
    from longtail.config import rebase_paths

    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "train.txt").write_text("")
    (tmp_path / "val.txt").write_text("")
    cfg = load_config(None, ["data.kind=list", "data.root=imgs", "data.train=train.txt",
                             "data.val=val.txt", "data.test=/abs/test.txt",
                             "data.class_names=n.txt"])
    moved = rebase_paths(cfg, tmp_path)
    assert moved.data.root == str(tmp_path / "imgs")
    assert moved.data.train == str(tmp_path / "imgs" / "train.txt")  # beside data.root
    assert moved.data.val == str(tmp_path / "val.txt")  # from where the run started
    assert (moved.data.test, moved.data.class_names) == ("/abs/test.txt", "n.txt")  # as given
    assert (cfg.data.root, cfg.data.train) == ("imgs", "train.txt")  # a copy
    # the project folder moved: nothing found from where the run started, paths stay as given
    gone = rebase_paths(cfg, tmp_path / "moved-away")
    assert (gone.data.root, gone.data.train, gone.data.val) == ("imgs", "train.txt", "val.txt")


def test_a_command_line_mistake_under_torchrun_is_reported_once(monkeypatch, capsys):
    """Every process parses the same command line: only rank 0 says what is wrong; the others
    wait before they exit (torchrun would stop the first one before it has said it)."""
    import time

    import longtail.cli
    from longtail.cli import main

    monkeypatch.setattr(longtail.cli, "OTHER_RANK_WAIT", 0.2)
    for rank, said in (("1", 0), ("0", 1)):  # each node's first process speaks
        torchrun_env(monkeypatch, local_rank=rank)
        start = time.perf_counter()
        assert main(["run", "configs/fmnist_lt.yaml", "stage1.epochz=3"]) == 2
        with pytest.raises(SystemExit):
            main(["run", "configs/fmnist_lt.yaml", "--bogus"])
        if rank == "1":  # it waited for the first to speak
            assert time.perf_counter() - start >= 0.4
        err = capsys.readouterr().err
        assert err.count("longtail: error:") == 2 * said, err
    # rebalance and extract do one process's work: refused under torchrun, before any work
    for command in (["rebalance", "runs/r"], ["extract", "runs/r", "--out", "x"]):
        assert main(command) == 2
        assert capsys.readouterr().err == (
            f"longtail: error: {command[0]} works in one process (stage 2 and files on "
            f"features); run 'longtail {command[0]} ...' without torchrun\n")
    # and these printed (or wrote) everything once per process
    for command, work in ((["make-split", "fmnist", "--root", "r", "--out", "s"],
                           "list files and images"),
                          (["summarize", "runs/r"], "it prints a table of finished runs"),
                          (["config", "fmnist_lt"], "it prints a config")):
        assert main(command) == 2
        assert capsys.readouterr().err == (
            f"longtail: error: {command[0]} works in one process ({work}); run 'longtail "
            f"{command[0]} ...' without torchrun\n")


def test_yaml_merge_keys_still_work(tmp_path):
    path = write(tmp_path, "stage1: &s\n  epochs: 3\n  batch_size: 64\nstage2:\n  finetune:\n"
                           "    <<: *s\n    epochs: 2\n")
    cfg = load_config(path)
    assert (cfg.stage2.finetune.epochs, cfg.stage2.finetune.batch_size) == (2, 64)


def test_a_finished_runs_config_is_read_as_it_ran(tmp_path):
    # an earlier version allowed stage2.bn=train with cached features; summarize reads it
    path = write(tmp_path, "stage2:\n  bn: train\n")
    assert load_config(path, finished=True).stage2.bn == "train"
    with pytest.raises(ConfigError, match=r"c\.yaml:2: config key stage2\.bn: expected eval"):
        load_config(path)  # a file's own mistake is named by the file
    # ... but not a value the command line gave, as a key or as its section's mapping
    path = write(tmp_path, "stage2:\n  crt:\n    epochs: 10\n")
    for override in ("stage2.crt.epochs=0", "stage2.crt={epochs: 0}"):
        with pytest.raises(ConfigError) as info:
            load_config(path, [override])
        assert str(info.value) == "config key stage2.crt.epochs: expected an int >= 1, found 0"


def test_text_keys_keep_their_text():
    cfg = load_config(None, ["data.root=2024", "stage1.sampler=0.5", "device=cuda:0"])
    assert (cfg.data.root, cfg.stage1.sampler, cfg.device) == ("2024", 0.5, "cuda:0")


def test_numbers_are_read_as_yaml_1_2_reads_them(tmp_path):
    # YAML 1.1 (PyYAML) reads 1:00 as 60 (base 60) and 010 as 8 (octal): silently wrong
    assert load_config(None, ["seed=010", "stage1.epochs=0x10"]).seed == 10
    assert load_config(None, ["stage1.epochs=0x10"]).stage1.epochs == 16
    # ... and 08 or 09 as text, which an int key then refused
    assert load_config(None, ["seed=08", "stage1.epochs=09"]).seed == 8
    assert load_config(None, ["stage1.epochs=09"]).stage1.epochs == 9
    (tmp_path / "c.yaml").write_text("seed: 0_10\nstage1:\n  lr: 1:30.5\n")
    with pytest.raises(ConfigError, match=r"stage1.lr: expected float or null, found str "
                                          r"'1:30.5'"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match=r"config key seed: expected int, found str '1:00'"):
        load_config(None, ["seed=1:00"])


def test_a_key_given_twice_in_a_file(tmp_path):
    path = write(tmp_path, "seed: 1\ndata:\n  kind: list\n  kind: fmnist_lt\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:4: not valid YAML \(key 'kind' given twice "
                                          r"\(first on line 3\)\)"):
        load_config(path)


def test_unknown_key_in_a_file(tmp_path):
    path = write(tmp_path, "stage2:\n  crt:\n    epocs: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key stage2\.crt\.epocs; did you mean "
                                          r"stage2\.crt\.epochs"):
        load_config(path)


def test_bad_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "seed: 1\nstage1: [unclosed\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:\d+: not valid YAML"):
        load_config(path)


def test_cli_reports_config_errors_in_one_line_with_status_2(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", str(ROOT / "configs" / "fmnist_lt.yaml"), "stage1.epochs=ten",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0 and "stage1.epochs" in err and "Traceback" not in err
    assert not out.exists()  # stopped before any work


def test_config_reference_in_docs_is_current():
    text = (ROOT / "docs" / "config.md").read_text()
    assert config_reference() in text, "docs/config.md is stale: run 'make docs'"


def test_shipped_configs_load():
    paths = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(paths) >= 8
    for path in paths:
        load_config(path, ["data.root=/data", "model.weights=/w.pth"])


def test_paper_configs_need_their_data_root():
    with pytest.raises(ConfigError, match="data.root: expected the dataset folder"):
        load_config(ROOT / "configs" / "imagenet_lt_resnext50.yaml")
    with pytest.raises(ConfigError, match="model.weights: expected a file"):
        load_config(ROOT / "configs" / "places_lt_resnet152.yaml", ["data.root=/data"])


def test_linear_lr_scaling():
    cfg = load_config(ROOT / "configs" / "imagenet_lt_resnext50.yaml", ["data.root=/d"])
    assert cfg.stage1.resolved_lr() == pytest.approx(0.2)
    cfg = load_config(ROOT / "configs" / "imagenet_lt_resnext50.yaml",
                      ["data.root=/d", "stage1.batch_size=128"])
    assert cfg.stage1.resolved_lr() == pytest.approx(0.05)
    # a small dataset: the batch shrinks to give min_steps (16) steps an epoch, at least 2
    # images a process (BatchNorm); lr follows the real batch
    assert cfg.stage1.real_batch_size(100_000) == 128
    assert cfg.stage1.real_batch_size(1000) == 62
    assert cfg.stage1.real_batch_size(1001, world=2) == 62  # as one process takes it
    # 210 images: 13 in one process; on more, the nearest multiple of their count below
    assert [cfg.stage1.real_batch_size(210, world=w) for w in (1, 2, 3, 4)] == [13, 12, 12, 12]
    assert cfg.stage1.real_batch_size(20) == 2
    assert cfg.stage1.resolved_lr(62) == pytest.approx(0.1 * 62 / 256)
    one = load_config(ROOT / "configs" / "imagenet_lt_resnext50.yaml",
                      ["data.root=/d", "stage1.batch_size=128", "stage1.min_steps=1"])
    assert one.stage1.real_batch_size(100) == 100  # min_steps 1: at most one epoch
    assert cfg.stage2.real_batch_size(1000) == 62 and cfg.stage2.real_batch_size(10) == 2


def test_stage2_methods_all_means_every_method_on_features():
    from longtail.config import FEATURE_METHODS

    for value in ("all", "[all]"):
        cfg = load_config(None, [f"stage2.methods={value}"])
        assert cfg.stage2.methods == list(FEATURE_METHODS)
    assert "finetune" not in FEATURE_METHODS and "logit_adjust" in FEATURE_METHODS
    # names joined by commas (as grid's --samplers takes them), or one name alone
    for value, methods in (("crt,tau_norm", ["crt", "tau_norm"]), ("lws", ["lws"]),
                           ("ncm_cosine, joint", ["ncm_cosine", "joint"])):
        assert load_config(None, [f"stage2.methods={value}"]).stage2.methods == methods
    for value in ("crt,wls", "every"):
        with pytest.raises(ConfigError, match=f"stage2.methods: expected all or a list of .*, "
                                              f"found '{value}'"):
            load_config(None, [f"stage2.methods={value}"])
    for value in ("crt,", "crt,,lws", ",lws"):
        with pytest.raises(ConfigError) as info:
            load_config(None, [f"stage2.methods={value}"])
        assert str(info.value) == (f"config key stage2.methods: an empty name in '{value}' (a "
                                   f"comma at an end, or two in a row); expected names joined "
                                   f"by commas, e.g. crt,tau_norm")


def test_yaml_sections_dotted_keys_empty_sections_and_null_overrides(tmp_path):
    dotted = write(tmp_path, "stage1.epochs: 3\n")
    with pytest.raises(ConfigError, match=r"config key stage1.epochs: dotted keys are for the "
                                          r"command line; in a YAML file write it nested, as "
                                          r"stage1: \{epochs: \.\.\.\}"):
        load_config(dotted)
    # `stage1:` with nothing (or only comments) under it: no changes
    empty = write(tmp_path, "stage1:\n  # later\nstage2:\nseed: 3\n")
    assert load_config(empty).stage1 == load_config(None).stage1
    # on the command line, null would silently reset the file's whole section
    with pytest.raises(ConfigError, match=r"'stage1=null': stage1 is a section; set its keys, "
                                          r"e.g. stage1.epochs=VALUE"):
        load_config(empty, ["stage1=null"])
    assert load_config(empty, ["stage1.epochs=2"]).stage1.epochs == 2  # into the empty one
    with pytest.raises(ConfigError, match=r"eval.many_threshold: expected a count >= 0, "
                                          r"found -5"):
        load_config(None, ["eval.many_threshold=-5"])


def test_data_overrides_the_dataset_does_not_read_are_noted():
    """A data key given on the command line that this kind of data ignores (n_max with split
    lists of its own, ...) is noted, not dropped silently; keys from the file are not."""
    from longtail.config import ignored_overrides

    def noted(*overrides: str) -> list[str]:
        cfg = load_config(str(ROOT / "configs" / "fmnist_lt.yaml"), list(overrides))
        return [n.split(" is ignored")[0].removeprefix("note: ")
                for n in ignored_overrides(cfg, list(overrides))]

    lists = ["data.kind=list", "data.root=/d", "data.train=t.txt", "data.test=u.txt"]
    assert noted(*lists, "data.imbalance_ratio=10", "data.n_min=null", "data.profile=pareto",
                 "data.val_per_class=5", "data.val_from_train=3", "data.class_order=label") == [
        "data.imbalance_ratio", "data.profile", "data.val_per_class", "data.class_order"]
    assert noted(*lists, "data.val=v.txt", "data.val_from_train=3") == ["data.val_from_train"]
    # the config file's n_max, n_min, val_per_class: not noted
    assert noted(*lists, "data.val=v.txt") == []
    # fmnist_lt generates its split: these apply, test_per_class and val_from_train do not
    assert noted("data.n_max=60", "data.val_per_class=5", "data.test_per_class=7",
                 "data.val_from_train=2", "data.pareto_alpha=3") == [
        "data.test_per_class", "data.val_from_train", "data.pareto_alpha"]
    assert noted("data.profile=pareto", "data.pareto_alpha=3") == []
    folder = ["data.kind=image_folder", "data.root=/d"]
    # a generated folder split without val_per_class holds val out of train; split_seed
    # draws which rows: neither is ignored
    assert noted(*folder, "data.test_per_class=7", "data.n_max=50", "data.val_per_class=0",
                 "data.val_from_train=5", "data.split_seed=4", "stage2.tau_norm.tau=1",
                 "stage2.logit_adjust.tau=1") == []
    assert noted(*lists, "data.val_from_train=3", "data.split_seed=4") == []
    assert noted(*folder, "data.train=train", "data.val=val", "data.test=test",
                 "data.test_per_class=7", "data.n_max=50") == ["data.test_per_class",
                                                               "data.n_max"]
    # a key of another setting of a key than the one given: ignored, so said
    assert noted("stage1.loss_tau=2", "stage1.samples_per_class=8", "stage2.crt.loss_tau=.5",
                 "stage2.samples_per_class=3") == [
        "stage1.loss_tau", "stage1.samples_per_class", "stage2.crt.loss_tau",
        "stage2.samples_per_class"]
    assert noted("stage1.loss=logit_adjusted", "stage1.loss_tau=2", "stage2.lws.sampler="
                 "class_aware", "stage2.samples_per_class=3", "stage1.sampler=class_aware",
                 "stage1.samples_per_class=8") == []
    # a tau grid while tau is fixed (rebalance: also by an earlier rebalance's config.yaml)
    assert noted("stage2.tau_norm.tau=0.5", "stage2.tau_norm.grid_max=1",
                 "stage2.logit_adjust.grid_step=0.1") == ["stage2.tau_norm.grid_max"]
    assert noted("stage2.logit_adjust.tau=1", "stage2.logit_adjust.grid_step=0.1") == [
        "stage2.logit_adjust.grid_step"]
    # a grid step beyond grid_max is refused only where the grid is searched
    assert noted("stage2.tau_norm.tau=0.5", "stage2.tau_norm.grid_step=3") == [
        "stage2.tau_norm.grid_step"]
    # a key given twice: the last one wins, and is said to
    cfg = load_config(str(ROOT / "configs" / "fmnist_lt.yaml"), ["seed=1", "seed=2"])
    assert cfg.seed == 2
    assert ignored_overrides(cfg, ["seed=1", "stage1.lr=0.1", "seed=2"]) == [
        "note: seed is given more than once (seed=1 seed=2); the last one is used"]


def test_a_stop_before_joining_is_said_by_each_nodes_first_process_only(monkeypatch, capsys):
    """torchrun's SIGTERM after the first process said a mistake can reach another before it
    has found the mistake itself: that one printed 'longtail: stopped by SIGTERM' (a run that
    seemed resumable) under the error line."""
    import longtail.cli
    from longtail.cli import main

    def stopped(args, argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(longtail.cli, "_dispatch", stopped)
    torchrun_env(monkeypatch, local_rank="1")
    main(["config", "fmnist_lt"])
    assert capsys.readouterr().err == ""
    torchrun_env(monkeypatch, local_rank="0")  # the node's first process says it
    main(["config", "fmnist_lt"])
    assert capsys.readouterr().err == "longtail: interrupted\n"


def test_a_process_that_follows_another_ones_failure_says_so_in_one_line(monkeypatch, capsys):
    """When one torchrun process fails (and says why), the others' collectives fail with
    Gloo's 'Connection closed by peer': one line instead of its 50-line traceback."""
    import longtail.cli
    import longtail.distributed
    import longtail.pipeline
    from longtail.cli import main

    def lost(args, argv):
        raise RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer "
                           "[127.0.0.1]:1234")

    monkeypatch.setattr(longtail.cli, "_dispatch", lost)
    monkeypatch.setattr(longtail.distributed, "joined", True)
    monkeypatch.setattr(longtail.pipeline, "active_run", None)  # no run of an earlier test
    assert main(["config", "fmnist_lt"]) == 2
    assert capsys.readouterr().err == ("longtail: error: another process of this run ended "
                                       "(its message, if any, is above); this one stopped "
                                       "with it\n")
    monkeypatch.setattr(longtail.distributed, "joined_rank", 1)  # rank 0 says it, once
    assert main(["config", "fmnist_lt"]) == 2 and capsys.readouterr().err == ""
    monkeypatch.setattr(longtail.distributed, "joined", False)  # not in a group: a bug, shown
    with pytest.raises(RuntimeError, match="Connection closed by peer"):
        main(["config", "fmnist_lt"])


def test_a_timm_model_without_timm_is_said_before_any_work(monkeypatch, capsys):
    """The import error came after torch's import and the checks, 5.7 s in."""
    import importlib.util

    from longtail.cli import main

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "timm" else find_spec(name, *a))
    for command in ("run", "grid"):
        assert main([command, str(ROOT / "configs" / "fmnist_lt.yaml"),
                     "model.name=timm/convnext_atto", "data.root=/usr/share"]) == 2
        assert capsys.readouterr().err == (
            "longtail: error: config key model.name: timm/ models need the timm package; pip "
            "install timm (in longtail's repository: pip install '.[timm]')\n")
