"""The FID Inception: architecture and names of the published weights, the TF-specific pooling, loading from
torchscript (clean-fid) and state-dict (pytorch-fid) files with random weights, hashes, and the offline error."""

import hashlib
import io
import urllib.error

import pytest
import torch
from torch import Tensor, nn

from diffdistill.metrics import inception
from diffdistill.metrics.inception import (FIDInceptionV3, InceptionA, InceptionE, inception_to_torchscript,
                                           load_inception, pytorch_fid_normalize, random_inception,
                                           save_clean_fid_layout, tf_normalize)


def pixels(n: int = 2, size: int = 75, seed: int = 1) -> Tensor:
    """Float images in 0..255 (75 x 75 is the smallest size the trunk takes; 299 is the protocol size)."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 255


def test_architecture_matches_the_published_fid_inception():
    net = FIDInceptionV3()
    # torchvision documents 27,161,264 parameters for inception_v3 (aux head, 1000 classes). The FID graph has no aux
    # head (conv0 98,304 + 256, conv1 2,457,600 + 1,536, fc 769,000 = 3,326,696) and 1008 classes (+ 8 x 2049).
    assert sum(p.numel() for p in net.parameters()) == 27_161_264 - 3_326_696 + 8 * 2049 == 23_850_960
    state = net.state_dict()
    assert len(state) == 94 * 6 + 2            # 94 conv+BN units (weight, bn weight/bias/mean/var/count) + fc
    # key names and shapes of pytorch-fid's pt_inception-2015-12-05 state dict (torchvision's Inception3 names)
    expected = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Conv2d_4a_3x3.bn.running_var": (192,),
                "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1), "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
                "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
                "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
                "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
                "Mixed_7c.branch3x3dbl_3b.bn.num_batches_tracked": (), "fc.weight": (1008, 2048), "fc.bias": (1008,)}
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    tops = {k.split(".")[0] for k in state}
    assert tops == {"Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "Mixed_5b",
                    "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a",
                    "Mixed_7b", "Mixed_7c", "fc"}
    assert all(m.bn.eps == 1e-3 for m in net.modules() if isinstance(m, inception.BasicConv2d))
    assert net.Mixed_7c.max_pool and not net.Mixed_7b.max_pool        # only the last E block max-pools
    with torch.no_grad():
        features = net.eval()(torch.rand(1, 3, 299, 299) * 2 - 1)
        assert features.shape == (1, 2048) and net.logits(features).shape == (1, 1008)


def identity_pool_branch(block: nn.Module, channels: int) -> None:
    """Make the first ``channels`` outputs of a block's pool branch its pooled input (1x1 identity, identity BN)."""
    conv, bn = block.branch_pool.conv, block.branch_pool.bn
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:channels, :, 0, 0] = torch.eye(channels)
        bn.eps = 0.0
    block.eval()


def test_tf_pooling_differences():
    # A/C/E_1: TF's average pool ignores the zero padding, so a constant image stays constant at the borders (the
    # torch default would give 4/9 in the corners)
    a = InceptionA(4, pool_features=4)
    identity_pool_branch(a, 4)
    with torch.no_grad():
        pooled = a(torch.ones(1, 4, 5, 5))[:, -4:]
    assert torch.allclose(pooled, torch.ones_like(pooled))
    # E_2 (Mixed_7c): a max pool, so a single spike spreads unchanged over its 3x3 neighbourhood; E_1 averages it
    spike = torch.zeros(1, 4, 5, 5)
    spike[0, :, 2, 2] = 9.0
    e2, e1 = InceptionE(4, max_pool=True), InceptionE(4, max_pool=False)
    identity_pool_branch(e2, 4)
    identity_pool_branch(e1, 4)
    with torch.no_grad():
        out2, out1 = e2(spike)[:, -192:-188], e1(spike)[:, -192:-188]
    assert torch.allclose(out2[0, 0, 1:4, 1:4], torch.full((3, 3), 9.0)) and float(out2[0, 0, 0, 0]) == 0.0
    assert torch.allclose(out1[0, 0, 1:4, 1:4], torch.full((3, 3), 1.0))


def test_torchscript_round_trip_gives_identical_features(tmp_path):
    net = random_inception()
    x = pixels()
    with torch.no_grad():
        expect = net(tf_normalize(x))
    scripted = inception_to_torchscript(net)
    plain, nvidia = tmp_path / "plain" / "mine.pt", tmp_path / "nvidia" / "inception-2015-12-05.pt"
    plain.parent.mkdir()
    nvidia.parent.mkdir()
    scripted.save(str(plain))
    save_clean_fid_layout(scripted, nvidia)
    with torch.no_grad():
        for file, path in ((plain, plain), (nvidia, nvidia.parent)):      # a file, or a folder holding the file
            loaded = load_inception(path, mode="clean")
            assert torch.equal(loaded(x), expect), file
            assert loaded.sha256 == hashlib.sha256(file.read_bytes()).hexdigest() and loaded.path == file
            assert not any(p.requires_grad for p in loaded.parameters())
    # a state dict is not a torchscript file: say which mode it belongs to
    torch.save(net.state_dict(), tmp_path / "sd.pth")
    with pytest.raises(ValueError, match="mode='legacy'"):
        load_inception(tmp_path / "sd.pth", mode="clean")


def test_pytorch_fid_state_dict_loads_strictly_with_its_normalisation(tmp_path):
    net = random_inception(seed=3)
    x01 = pixels() / 255
    file = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), file)
    # random weights under the published name: the name's SHA-256 prefix does not match -> refused, unless the
    # user asks for it (then warned)
    with pytest.raises(ValueError, match="6726825d.*allow-unverified-inception"):
        load_inception(file, mode="legacy")
    with pytest.warns(UserWarning, match="6726825d"):
        loaded = load_inception(file, mode="legacy", allow_unverified=True)
    with torch.no_grad():
        assert torch.equal(loaded(x01), net(pytorch_fid_normalize(x01)))
        assert not torch.allclose(loaded(x01), net(tf_normalize(x01 * 255)), atol=1e-4)   # the modes differ
    assert loaded.sha256 == hashlib.sha256(file.read_bytes()).hexdigest()
    state = net.state_dict()
    del state["fc.bias"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(RuntimeError, match="fc.bias"):                 # strict: a missing key is an error
        load_inception(tmp_path / "partial.pth", mode="legacy")


def test_a_file_changed_since_its_download_is_refused(tmp_path):
    """The ``<name>.sha256`` record written at download time: a file that no longer matches it is not loaded."""
    scripted = inception_to_torchscript(random_inception(seed=5))
    file = save_clean_fid_layout(scripted, tmp_path / "inception-2015-12-05.pt")
    record = tmp_path / "inception-2015-12-05.pt.sha256"
    record.write_text(f"{hashlib.sha256(file.read_bytes()).hexdigest()}  {file.name}  url\n")
    load_inception(file, mode="clean")                                     # matches its record: loads quietly
    record.write_text("0" * 64 + "  inception-2015-12-05.pt  url\n")
    with pytest.raises(ValueError, match="not the one recorded in inception-2015-12-05.pt.sha256"):
        load_inception(file, mode="clean")


def test_offline_error_names_the_file_url_and_place(tmp_path, monkeypatch):
    monkeypatch.delenv("DIFFDISTILL_INCEPTION", raising=False)

    def offline(url, target, timeout=60.0):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(inception, "_download", offline)
    with pytest.raises(FileNotFoundError) as err:
        load_inception(mode="clean", cache_dir=tmp_path)
    message = str(err.value)
    assert "inception-2015-12-05.pt" in message and str(tmp_path / "inception-2015-12-05.pt") in message
    assert "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt" in (
        message)
    assert "DIFFDISTILL_INCEPTION" in message and "no network" in message
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth.*github.com/mseitzer"):
        load_inception(mode="legacy", cache_dir=tmp_path, download=False)
    with pytest.raises(FileNotFoundError, match="no Inception weights at"):
        load_inception(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="unknown Inception mode"):
        load_inception(mode="tf")


def test_download_goes_to_the_cache_with_its_hash_and_env_var_is_searched(tmp_path, monkeypatch):
    net = random_inception(seed=4)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    payload = buffer.getvalue()
    requested = []

    def fake_urlopen(url, timeout):
        requested.append(url)
        return io.BytesIO(payload)

    monkeypatch.delenv("DIFFDISTILL_INCEPTION", raising=False)
    monkeypatch.setenv("DIFFDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(inception.urllib.request, "urlopen", fake_urlopen)
    with pytest.raises(ValueError, match="not the published weights"):
        load_inception(mode="legacy")
    with pytest.warns(UserWarning, match="not the published weights"):
        loaded = load_inception(mode="legacy", allow_unverified=True)
    target = tmp_path / "cache" / "pt_inception-2015-12-05-6726825d.pth"
    digest = hashlib.sha256(payload).hexdigest()
    assert requested == [inception.WEIGHTS["legacy"].url] and target.read_bytes() == payload
    assert loaded.sha256 == digest and (tmp_path / "cache" / (target.name + ".sha256")).read_text().startswith(digest)
    assert not (tmp_path / "cache" / (target.name + ".part")).exists()
    # second call: found in the cache, no download
    with pytest.warns(UserWarning):
        load_inception(mode="legacy", allow_unverified=True)
    assert len(requested) == 1
    # $DIFFDISTILL_INCEPTION wins over the cache
    monkeypatch.setenv("DIFFDISTILL_INCEPTION", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="DIFFDISTILL_INCEPTION"):
        load_inception(mode="legacy")
