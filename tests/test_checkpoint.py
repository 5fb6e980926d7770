"""Checkpoint round trip and refusal of unsafe, corrupt, foreign and newer files."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from layercascade.errors import LCError
from layercascade.model.checkpoint import DEMO_CHECKPOINT, Checkpoint, load_checkpoint, save_checkpoint
from layercascade.model.config import get_config
from layercascade.model.network import LayerCascadeNet


def make_checkpoint() -> Checkpoint:
    torch.manual_seed(0)
    config = get_config("tiny", num_classes=3)
    model = LayerCascadeNet(config)
    return Checkpoint(config, model.state_dict(), ["a", "b", "c"], [[0, 0, 0], [255, 0, 0], [0, 255, 0]],
                      input_size=[96, 80], default_rho=0.9, training={"mode": "dsn", "history": [{"epoch": 1}]})


def test_round_trip(tmp_path) -> None:
    original = make_checkpoint()
    path = save_checkpoint(original, tmp_path / "sub" / "model.pt")
    assert sorted(os.listdir(path.parent)) == ["model.pt"]  # no temporary file left behind
    loaded = load_checkpoint(path)
    assert loaded.config == original.config
    assert loaded.classes == ["a", "b", "c"] and loaded.palette[1] == [255, 0, 0]
    assert loaded.input_size == [96, 80] and loaded.default_rho == 0.9
    assert loaded.training["history"] == [{"epoch": 1}]
    model = loaded.build_model()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = LayerCascadeNet(original.config)
        expected.load_state_dict(original.state_dict)
        torch.testing.assert_close(model(x, 0.9).fused, expected.eval()(x, 0.9).fused)


class _Payload:
    """Unpickling this would create a marker file: the load must never get that far."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_is_refused_without_running_it(tmp_path) -> None:
    marker = tmp_path / "pwned"
    data = make_checkpoint().to_dict()
    data["training"] = {"note": _Payload(str(marker))}
    path = tmp_path / "evil.pt"
    torch.save(data, path)
    with pytest.raises(LCError, match="refused to load") as error:
        load_checkpoint(path)
    assert not marker.exists()
    assert "\n" not in str(error.value)
    # Plain pickle files (not a torch zip) are refused the same way.
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(LCError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_truncated_file(tmp_path) -> None:
    path = save_checkpoint(make_checkpoint(), tmp_path / "model.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LCError, match="corrupt, truncated"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint\n", os.urandom(4096)])
def test_garbage_files(tmp_path, content: bytes) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(LCError, match="junk.pt"):
        load_checkpoint(path)


def test_foreign_and_incomplete_and_newer(tmp_path) -> None:
    plain = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, plain)
    with pytest.raises(LCError, match="not a layercascade checkpoint.*backbone-weights"):
        load_checkpoint(plain)
    newer = tmp_path / "newer.pt"
    torch.save(make_checkpoint().to_dict() | {"version": 99}, newer)
    with pytest.raises(LCError, match="newer"):
        load_checkpoint(newer)
    incomplete = tmp_path / "incomplete.pt"
    data = make_checkpoint().to_dict()
    del data["state_dict"]
    torch.save(data, incomplete)
    with pytest.raises(LCError, match="lacks state_dict"):
        load_checkpoint(incomplete)
    wrong = tmp_path / "wrong.pt"
    data = make_checkpoint().to_dict()
    data["config"]["backbone"] = "resnet18"
    torch.save(data, wrong)
    with pytest.raises(LCError, match="do not fit a resnet18"):
        load_checkpoint(wrong).build_model()
    with pytest.raises(LCError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pt")


def test_bundled_demo_model_loads() -> None:
    assert DEMO_CHECKPOINT.is_file(), "the demo checkpoint ships inside the package"
    assert DEMO_CHECKPOINT.stat().st_size <= 10 * 1024 * 1024
    checkpoint = load_checkpoint()
    assert checkpoint.config.backbone == "tiny" and len(checkpoint.classes) == 21
    assert checkpoint.training["mode"] == "cascade"
    assert checkpoint.resume is None  # shipped without optimizer state


def test_bundled_demo_model_dir_is_the_demo_checkpoint_exported() -> None:
    from layercascade.manifest import read_manifest, sha256_file
    from layercascade.runtime.cascade import DEMO_MODEL

    manifest = read_manifest(DEMO_MODEL)
    assert manifest["source"]["sha256"] == sha256_file(DEMO_CHECKPOINT), "re-run lc-export on the demo checkpoint"
    assert manifest["kind"] == "cascade" and manifest["classes"] == load_checkpoint().classes
