"""OFA bridge: an imported Once-for-All supernet computes what the `ofa` package computes, for
every arch, through the supernet and through `extract()`; the `ofa50` resnet space has OFA's
parameter counts; OFA files load safely; archs translate both ways."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import nasbench
import supernets
from nasbench_core.errors import CheckpointError, UserError
from supernets.ofa_bridge import from_ofa, from_ofa_arch, to_ofa_arch

RES = 64  # small inputs keep the full-size OFA nets fast
N_RANDOM = 5


def _ofa():
    return pytest.importorskip("ofa.imagenet_classification.elastic_nn.networks",
                               reason="the peers extra (pip install ofa) is not installed")


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine terms, perturbed kernel transforms and an O(1) head, so a
    tensor mapped to the wrong place (or not at all) moves the outputs far beyond 1e-5."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0, 6 / m.in_features**0.5)
                m.bias.normal_(0, 0.1)
        for name, p in model.named_parameters():
            if name.endswith("_matrix"):  # OFA's 7to5 / 5to3 kernel transforms start at I
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def ofa_mbv3(width_mult: float = 1.0, classes: int = 7) -> nn.Module:
    nets = _ofa()
    return randomised(nets.OFAMobileNetV3(
        n_classes=classes, dropout_rate=0.0, width_mult=width_mult,
        ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4]))


def ofa_resnet50(classes: int = 7) -> nn.Module:
    nets = _ofa()
    return randomised(nets.OFAResNets(
        n_classes=classes, dropout_rate=0.0, depth_list=[0, 1, 2],
        expand_ratio_list=[0.2, 0.25, 0.35], width_mult_list=[0.65, 0.8, 1.0]))


def archs(net: supernets.Supernet, n_random: int = N_RANDOM) -> list[dict]:
    return [net.space.smallest(), net.space.largest()] + [net.space.sample(seed)
                                                          for seed in range(n_random)]


def assert_same_function(net: supernets.Supernet, model: nn.Module, size: int = RES,
                         n_random: int = N_RANDOM) -> None:
    """Ours (supernet and extracted subnet) against OFA's active subnet, arch by arch."""
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for arch in archs(net, n_random):
            model.set_active_subnet(**to_ofa_arch(net, arch))
            expected = model(x)
            assert expected.abs().max() > 0.2  # a scale at which 1e-5 means "equal"
            net.set_active(arch)
            torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=0)
            torch.testing.assert_close(net.extract(arch).eval()(x), expected, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def mbv3_pair():
    model = ofa_mbv3()
    return model, from_ofa(model, resolutions=[RES]).eval()


# -- mbv3 ------------------------------------------------------------------------------------
def test_mbv3_equals_ofa_for_smallest_largest_and_random_archs(mbv3_pair):
    model, net = mbv3_pair
    assert net.family == "mbv3"
    assert net.space["block0.kernel"].choices == (3, 5, 7)
    assert net.space["block0.expand"].choices == (3, 4, 6)
    assert net.space["stage0.depth"].choices == (2, 3, 4)
    assert_same_function(net, model)


def test_mbv3_state_dict_file_and_wider_net_infer_the_same_space(tmp_path):
    model = ofa_mbv3(width_mult=1.2, classes=5)
    from_module = from_ofa(model, resolutions=[RES])
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # as DataParallel saved it
    from_state = from_ofa(state, resolutions=[RES]).eval()
    path = tmp_path / "ofa_mbv3_d234_e346_k357_w1.2"  # OFA's published name and layout
    torch.save({"state_dict": model.state_dict()}, path)
    from_file = from_ofa(path, family="mbv3", resolutions=[RES])
    for net in (from_state, from_file):
        assert net.space == from_module.space
        assert net.build_config() == from_module.build_config()
    assert from_state.build_config()["width_mult"] == 1.2
    assert_same_function(from_state, model, n_random=1)


def test_mbv3_old_key_names_load_like_ofa_loads_them(mbv3_pair):
    """OFA's older checkpoints name blocks `mobile_inverted_conv` and static layers' tensors
    without the dynamic wrappers' doubled names; OFA's loader accepts both, and so do we."""
    model, net = mbv3_pair
    old = {k.replace(".conv.", ".mobile_inverted_conv.", 1) if k.startswith("blocks.") else k: v
           for k, v in model.state_dict().items()}
    old = {k.replace(".conv.conv.", ".conv.").replace(".bn.bn.", ".bn."): v for k, v in old.items()}
    again = from_ofa(old, resolutions=[RES]).state_dict()
    for key, value in net.state_dict().items():
        torch.testing.assert_close(again[key], value, atol=0, rtol=0)


def test_other_classes_get_a_fresh_head_and_keep_the_backbone(mbv3_pair):
    model, net = mbv3_pair
    three = from_ofa(model.state_dict(), num_classes=3, resolutions=[RES])
    assert three.head[4].out_features == 3
    torch.testing.assert_close(three.blocks[4].se.reduce.weight, net.blocks[4].se.reduce.weight)
    assert three(torch.randn(1, 3, RES, RES)).shape == (1, 3)


def test_mbv3_build_config_rebuilds_the_space(mbv3_pair):
    _, net = mbv3_pair
    cfg = json.loads(json.dumps(net.build_config()))
    assert supernets.create(**cfg).space.fingerprint() == net.space.fingerprint()


# -- arch translation ------------------------------------------------------------------------
def test_arch_translation_round_trips_and_matches_ofa_names(mbv3_pair):
    _, net = mbv3_pair
    smallest = to_ofa_arch(net, net.space.smallest())
    assert smallest == {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": RES}
    for seed in range(20):
        arch = net.space.sample(seed)
        ofa_arch = to_ofa_arch(net, arch)
        assert ofa_arch["ks"][7] == arch["block7.kernel"] and ofa_arch["d"][3] == arch["stage3.depth"]
        assert from_ofa_arch(net, ofa_arch) == arch
    # OFA's own forms: one value for every block, the resolution as a one-item list
    arch = from_ofa_arch(net, {"ks": 5, "e": 4, "d": [4, 3, 2, 3, 4], "r": [RES]})
    assert arch["block19.kernel"] == 5 and arch["block0.expand"] == 4 and arch["stage2.depth"] == 2
    with pytest.raises(UserError, match="OFA arch 'd' has 4 entries; this space needs 5"):
        from_ofa_arch(net, {"ks": 3, "e": 3, "d": [2, 2, 2, 2]})


# -- files and mistakes ----------------------------------------------------------------------
class _Payload:
    """A pickled object that would touch a file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_files_load_without_unpickling_objects_and_fail_in_one_line(tmp_path, mbv3_pair):
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match=f"OFA checkpoint {missing} does not exist"):
        from_ofa(missing)
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match=f"OFA checkpoint {evil} is not a plain torch"):
        from_ofa(evil)
    assert not marker.exists()
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=f"OFA checkpoint {junk} is not a plain torch"):
        from_ofa(junk)
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(CheckpointError, match="holds no state_dict of tensors"):
        from_ofa(empty)
    model, _ = mbv3_pair
    state = model.state_dict()
    wrong = tmp_path / "wrong.pth"
    torch.save({k: v for k, v in state.items() if "final_expand_layer.bn.weight" not in k}, wrong)
    with pytest.raises(CheckpointError, match=f"OFA checkpoint {wrong}: .* no tensor for "
                                              "supernet final.1.weight"):
        from_ofa(wrong)
    with pytest.raises(CheckpointError, match=f"OFA checkpoint {wrong}: .* pass family='mbv3'"):
        from_ofa(wrong, family="resnet")


def test_state_dict_mistakes_name_the_key(mbv3_pair):
    model, _ = mbv3_pair
    state = dict(model.state_dict())
    with pytest.raises(UserError, match="OFA tensor blocks.1.conv.extra.weight has no place"):
        from_ofa({**state, "blocks.1.conv.extra.weight": torch.zeros(1)})
    bad = {**state, "feature_mix_layer.conv.weight": torch.zeros(1280, 961, 1, 1)}
    with pytest.raises(UserError, match=r"feature_mix_layer.conv.weight has shape \(1280, 961"):
        from_ofa(bad)
    without = {k: v for k, v in state.items() if k != "blocks.1.conv.depth_conv.conv.conv.weight"}
    with pytest.raises(UserError, match="mbv3 state_dict lacks OFA tensor blocks.1.conv.depth"):
        from_ofa(without)
    with pytest.raises(UserError, match=r"has 1 \+ 5\*depth blocks, this one 0"):
        from_ofa({"first_conv.conv.weight": torch.zeros(16, 3, 3, 3)})
    with pytest.raises(UserError, match="neither OFAMobileNetV3's"):
        from_ofa({"fc.weight": torch.zeros(2, 2)})
    with pytest.raises(UserError, match="ks_list comes from the OFAMobileNetV3 module"):
        from_ofa(model, ks_list=[3])
    with pytest.raises(UserError, match="takes OFAMobileNetV3 or OFAResNets, not Linear"):
        from_ofa(nn.Linear(2, 2))


# -- resnet: the ofa50 space -----------------------------------------------------------------
def test_ofa50_spans_ofas_published_parameter_range():
    """6.54M-48.11M at 1000 classes, as OFAResNets' get_active_subnet counts them (the exact
    counts against `ofa` for random archs are in the slow test below)."""
    net = supernets.create("resnet", preset="ofa50", num_classes=1000)
    assert net.count_params(net.space.smallest()) == 6_539_280
    assert net.count_params(net.space.largest()) == 48_105_992
    assert sum(p.numel() for p in net.parameters()) == 48_105_992
    assert net.space["stage2.depth"].choices == (4, 5, 6)
    assert net.space["stage0.width"].choices == (0.65, 0.8, 1.0)
    assert net.space["stem.depth"].choices == (2, 3)


def test_resnet_presets_without_the_new_options_are_unchanged():
    net = supernets.create("resnet", preset="tiny")
    assert "stem.width" not in net.space and "stem.depth" not in net.space
    assert isinstance(net.fc, nn.Linear) and type(net.blocks[0].downsample[0]) is nn.Conv2d
    with pytest.raises(UserError, match="width_mults with more than one choice need stem: deep"):
        supernets.create("resnet", preset="tiny", width_mults=[0.5, 1.0])


@pytest.fixture(scope="module")
def resnet_pair():
    model = ofa_resnet50()
    return model, from_ofa(model, resolutions=[RES]).eval()


@pytest.mark.slow
def test_resnet_equals_ofa_for_smallest_largest_and_random_archs(resnet_pair):
    model, net = resnet_pair
    assert net.family == "resnet" and net.build_config()["preset"] == "ofa50"
    assert_same_function(net, model, size=RES - 1)  # odd: the avg-pool shortcut's ceil_mode


@pytest.mark.slow
def test_ofa50_parameter_counts_equal_ofas_subnets(resnet_pair):
    model, _ = resnet_pair
    big = ofa_resnet50(classes=1000)
    net = supernets.create("resnet", preset="ofa50", num_classes=1000)
    for arch in archs(net):
        big.set_active_subnet(**to_ofa_arch(net, arch))
        expected = sum(p.numel() for p in big.get_active_subnet().parameters())
        assert net.count_params(arch) == expected
        assert sum(p.numel() for p in net.extract(arch).parameters()) == expected


@pytest.mark.slow
def test_resnet_state_dict_and_arch_round_trip(resnet_pair):
    model, net = resnet_pair
    again = from_ofa(model.state_dict(), family="resnet", resolutions=[RES])
    assert again.space == net.space
    smallest = to_ofa_arch(net, net.space.smallest())
    assert smallest["d"] == [0, 0, 0, 0, 0] and smallest["w"] == [0] * 6
    assert to_ofa_arch(net, net.space.largest())["d"] == [2, 2, 2, 2, 2]
    for seed in range(10):
        arch = net.space.sample(seed)
        assert from_ofa_arch(net, to_ofa_arch(net, arch)) == arch


# -- nasbench train --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ofa_file(tmp_path_factory):
    """A random-weight OFA MobileNetV3 with ImageNet's 1000 classes, saved as a user would."""
    path = tmp_path_factory.mktemp("ofa") / "ofa.pth"
    torch.save(ofa_mbv3(classes=1000).state_dict(), path)
    return path


def train_config(path: Path, root: Path) -> dict:
    return {
        "supernet": {"from_ofa": str(path), "family": "mbv3", "kwargs": {"resolutions": [32]}},
        "data": {"name": "digits", "channels": 3, "resolution": 32, "limit": 64,
                 "batch_size": 32},
        "train": {"epochs": 1, "warmup_epochs": 0, "max_steps_per_epoch": 1,
                  "bn_recal_batches": 1},
        "device": "cpu", "run": {"root": str(root), "name": "t"}}


@pytest.mark.slow
def test_train_starts_from_an_ofa_checkpoint(ofa_file, tmp_path):
    run = nasbench.train(train_config(ofa_file, tmp_path), quiet=True)
    assert run.manifest["supernet"]["name"] == "mbv3"
    assert run.manifest["supernet"]["num_classes"] == 10  # digits: a new 10-way head
    assert len(run.metrics) == 1


def test_train_refuses_a_bad_ofa_source_before_the_run_dir(ofa_file, tmp_path):
    config = train_config(ofa_file, tmp_path / "bad")
    missing = tmp_path / "missing.pth"
    with pytest.raises(CheckpointError, match=f"OFA checkpoint {missing} does not exist"):
        nasbench.train({**config, "supernet": {"from_ofa": str(missing)}}, quiet=True)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(UserError, match="pass family='mbv3'"):
        nasbench.train({**config, "supernet": {"from_ofa": str(ofa_file), "family": "resnet"}},
                       quiet=True)
    with pytest.raises(UserError, match="takes 3-channel images; the data has 1"):
        nasbench.train({**config, "data": {**config["data"], "channels": 1}}, quiet=True)
    assert not (tmp_path / "bad").exists()


def test_an_ofa_checkpoint_keeps_its_channel_order_unless_asked(ofa_file):
    """OFA's smaller subnets are trained on its leading channels: sorting would change them."""
    from nasbench.runners.train import SupernetSection, build_supernet

    def weights(**extra):
        section = SupernetSection(from_ofa=ofa_file, family="mbv3", **extra)
        net = build_supernet(section, num_classes=1000, in_chans=3)
        return {k: v for k, v in net.state_dict().items() if "classifier" not in k}

    imported = supernets.from_ofa(ofa_file, family="mbv3").state_dict()
    kept, sorted_ = weights(), weights(reorder_channels=True)
    assert all(torch.equal(kept[k], imported[k]) for k in kept)
    assert not all(torch.equal(sorted_[k], imported[k]) for k in sorted_)
