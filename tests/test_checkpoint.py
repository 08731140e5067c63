"""Supernet checkpoints: safetensors + JSON round trip, refusals with clear messages, no pickles."""

from __future__ import annotations

import json

import pytest
import torch

import supernets
from nasbench_core.errors import CheckpointError
from supernets.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_supernet,
    read_checkpoint_meta,
    resolve_checkpoint,
    save_checkpoint,
)


def tiny(**kwargs):
    torch.manual_seed(kwargs.pop("seed", 0))
    return supernets.create("mbv3", preset="tiny", num_classes=10, in_chans=1, **kwargs)


def stepped_adamw(net, scheduler=False):
    opt = torch.optim.AdamW(net.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s) if scheduler else None
    net.set_active(net.space.smallest())
    res = net.space.smallest()["resolution"]
    net(torch.randn(2, 1, res, res)).sum().backward()
    opt.step()
    if sched is not None:
        sched.step()
    return opt, sched


def test_round_trip_rebuilds_the_supernet_with_identical_weights(tmp_path):
    net = tiny()
    stem = save_checkpoint(tmp_path / "ck", net, meta={"epoch": 3, "global_step": 30})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.json", "ck.safetensors"]
    loaded, meta = load_supernet(tmp_path / "ck.safetensors")
    assert meta["epoch"] == 3 and meta["global_step"] == 30
    assert meta["build_config"] == net.build_config()
    assert meta["space_fingerprint"] == net.space.fingerprint()
    a, b = net.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resolve_checkpoint(tmp_path / "ck.json") == stem


def test_optimizer_and_scheduler_state_round_trip_exactly(tmp_path):
    net = tiny()
    opt, sched = stepped_adamw(net, scheduler=True)
    save_checkpoint(tmp_path / "ck", net, opt, sched, meta={})

    net2 = tiny(seed=1)
    opt2 = torch.optim.AdamW(net2.parameters(), lr=0.01)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 0.5**s)
    load_checkpoint(tmp_path / "ck", net2, opt2, sched2)
    assert sched2.state_dict()["last_epoch"] == 1 and opt2.param_groups[0]["lr"] == 0.005
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for pid in s1:
        for key in s1[pid]:
            assert torch.equal(s1[pid][key], s2[pid][key]), (pid, key)


def test_checkpoint_of_another_space_is_refused(tmp_path):
    save_checkpoint(tmp_path / "ck", tiny(), meta={})
    other = supernets.create("mbv3", preset="default", num_classes=10, in_chans=1)
    with pytest.raises(CheckpointError, match="was trained on another search space"):
        load_checkpoint(tmp_path / "ck", other)


def test_checkpoint_with_other_tensor_shapes_is_refused(tmp_path):
    save_checkpoint(tmp_path / "ck", tiny(), meta={})
    three_channel = supernets.create("mbv3", preset="tiny", num_classes=10, in_chans=3)
    with pytest.raises(CheckpointError, match=r"has shape \[.*\], the model expects"):
        load_checkpoint(tmp_path / "ck", three_channel)


def test_mixture_and_plain_supernet_checkpoints_do_not_mix(tmp_path):
    save_checkpoint(tmp_path / "ck", tiny(), meta={})
    doc = json.loads((tmp_path / "ck.json").read_text())
    doc["mos"] = True
    doc["build_config"]["mos"] = {"experts": 2}
    (tmp_path / "ck.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="holds a mixture-of-supernets but the model is a "
                                              "plain supernet"):
        load_checkpoint(tmp_path / "ck", tiny())


def test_optimizer_class_mismatch_is_refused(tmp_path):
    net = tiny()
    save_checkpoint(tmp_path / "ck", net, stepped_adamw(net)[0], meta={})
    sgd = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(CheckpointError, match="trained with AdamW, not SGD"):
        load_checkpoint(tmp_path / "ck", net, sgd)


def test_pickles_are_never_loaded(tmp_path, monkeypatch):
    net = tiny()
    torch.save(net.state_dict(), tmp_path / "model.pt")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(CheckpointError, match=r"pickled \.pt/\.pth files are never loaded"):
        load_supernet(tmp_path / "model.pt")


def test_corrupt_or_foreign_files_give_checkpoint_errors(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="x.json is unreadable"):
        read_checkpoint_meta(tmp_path / "x")
    (tmp_path / "y.json").write_text('{"format": "something-else"}')
    with pytest.raises(CheckpointError, match="is not a nasbench checkpoint"):
        read_checkpoint_meta(tmp_path / "y.json")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        resolve_checkpoint(tmp_path / "empty_dir_that_is_missing")


def test_directory_resolves_to_latest_complete_checkpoint(tmp_path):
    net = tiny()
    for epoch in (1, 2, 10):
        save_checkpoint(tmp_path / f"epoch_{epoch:04d}", net, meta={"epoch": epoch})
    (tmp_path / "epoch_0011.json").write_text("{}")  # weights never landed: incomplete
    assert latest_checkpoint(tmp_path).name == "epoch_0010"
    assert read_checkpoint_meta(tmp_path)["epoch"] == 10
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_each_checkpoint_file_is_fsynced_before_its_rename_and_its_directory_after(
        tmp_path, monkeypatch):
    """Durable, not only atomic: each of the three files' data reaches the disk before the
    rename makes it visible, and the directory entry right after (`nasbench_core.atomic`)."""
    import os

    events: list[tuple[str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))  # a rename keeps the inode
        return real_replace(src, dst)

    net = tiny()
    opt, _ = stepped_adamw(net)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    stem = save_checkpoint(tmp_path / "ck", net, opt, meta={})
    folder = tmp_path.stat().st_ino
    for suffix in (".safetensors", ".optim.safetensors", ".json"):
        ino = stem.with_name(stem.name + suffix).stat().st_ino
        renamed = events.index(("replace", ino))
        assert ("fsync", ino) in events[:renamed], suffix
        assert events[renamed + 1] == ("fsync", folder), suffix  # before the next file
