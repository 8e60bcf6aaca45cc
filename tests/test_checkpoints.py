"""Tests for mzsr.files.checkpoints (safetensors, safe .pt loading, TF-1 import) and mzsr.files.tf_bundle (the bundle reader)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mzsr import MZSRError
from mzsr.files.checkpoints import (
    expected_shapes,
    import_tf_checkpoint,
    load_model,
    load_weights,
    save_weights,
)
from mzsr.files.tf_bundle import crc32c, list_tf_bundle, read_tf_bundle
from mzsr.network.model import PARAMETER_COUNT, MZSRNet
from conftest import TF_CHECKPOINT
from tf_bundle_writer import pb_bytes, pb_varint, synthetic_mzsr_tensors, write_bundle

OFFICIAL_PREFIX = TF_CHECKPOINT


def _random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in MZSRNet().state_dict().items()}


# --------------------------------------------------------------------------------------------------
# safetensors / .pt
# --------------------------------------------------------------------------------------------------

META = {
    "scale": 2,
    "degradation": "bicubic",
    "step": 12345,
    "config_digest": "ab12cd",
    "source": "unit-test",
    "lr": 4e-4,
    "tags": ["a", "b"],
}


def test_save_load_round_trip(tmp_path):
    state = _random_state(0)
    path = tmp_path / "w.safetensors"
    save_weights(path, state, META)
    loaded, meta = load_weights(path, expected_scale=2)
    assert list(loaded) == list(state)
    for k in state:
        assert loaded[k].dtype == torch.float32
        assert torch.equal(loaded[k], state[k]), k
    assert meta == META
    assert isinstance(meta["scale"], int) and isinstance(meta["step"], int)
    assert sum(v.numel() for v in loaded.values()) == PARAMETER_COUNT


def test_metadata_stored_as_json_strings(tmp_path):
    from safetensors import safe_open

    path = tmp_path / "w.safetensors"
    save_weights(path, _random_state(1), META)
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata()
    assert raw["scale"] == "2" and raw["degradation"] == '"bicubic"'
    assert all(json.loads(v) == META[k] for k, v in raw.items())


def test_atomic_write_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "w.safetensors"
    save_weights(path, _random_state(2), META)
    save_weights(path, _random_state(3), {**META, "step": 2})  # overwrite in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["w.safetensors"]
    _, meta = load_weights(path)
    assert meta["step"] == 2


def test_failed_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "w.safetensors"
    state = _random_state(4)
    save_weights(path, state, META)

    def boom(*args, **kwargs):
        Path(args[1]).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_weights(path, _random_state(5), META)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
    loaded, _ = load_weights(path)
    assert torch.equal(loaded["convs.0.weight"], state["convs.0.weight"])


def test_wrong_shape_rejected(tmp_path):
    state = _random_state(6)
    state["convs.3.weight"] = torch.zeros(64, 32, 3, 3)
    path = tmp_path / "bad.safetensors"
    save_weights(path, state, META)
    with pytest.raises(MZSRError) as err:
        load_weights(path)
    msg = str(err.value)
    assert "bad.safetensors" in msg and "convs.3.weight" in msg
    assert "[64, 64, 3, 3]" in msg and "[64, 32, 3, 3]" in msg


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_wrong_keys_rejected(tmp_path, change):
    state = _random_state(7)
    if change == "missing":
        del state["convs.7.bias"]
        expected = "convs.7.bias"
    else:
        state["convs.8.weight"] = torch.zeros(3)
        expected = "convs.8.weight"
    path = tmp_path / "keys.safetensors"
    save_weights(path, state, META)
    with pytest.raises(MZSRError, match=expected) as err:
        load_weights(path)
    assert "keys.safetensors" in str(err.value)


def test_non_finite_rejected(tmp_path):
    state = _random_state(8)
    state["convs.2.bias"][5] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_weights(path, state, META)
    with pytest.raises(MZSRError, match=r"nan\.safetensors.*convs\.2\.bias"):
        load_weights(path)


def test_wrong_scale_rejected(tmp_path):
    path = tmp_path / "x4.safetensors"
    save_weights(path, _random_state(9), {**META, "scale": 4})
    with pytest.raises(MZSRError, match=r"x4\.safetensors.*trained for x4, expected x2"):
        load_weights(path, expected_scale=2)
    _, meta = load_weights(path, expected_scale=4)
    assert meta["scale"] == 4


def test_missing_empty_truncated_files(tmp_path):
    with pytest.raises(MZSRError, match="nope.safetensors"):
        load_weights(tmp_path / "nope.safetensors")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(MZSRError, match="empty.safetensors.*empty"):
        load_weights(empty)
    path = tmp_path / "trunc.safetensors"
    save_weights(path, _random_state(10), META)
    data = path.read_bytes()
    for cut in (len(data) - 1000, len(data) // 2, 20, 5):
        path.write_bytes(data[:cut])
        with pytest.raises(MZSRError, match="trunc.safetensors"):
            load_weights(path)
    path.write_bytes(b"\x00" * 64)  # garbage header
    with pytest.raises(MZSRError, match="trunc.safetensors"):
        load_weights(path)


class _Evil:
    """Unpickling this runs `touch <marker>`: the kind of payload weights_only must refuse."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_refused(tmp_path, writer):
    # Control: prove the payload is live, so the refusal below means something.
    control = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(_Evil(control)))
    assert control.exists()

    marker = tmp_path / "pwned_marker"
    path = tmp_path / "evil.pt"
    payload = {"convs.0.weight": _Evil(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(payload, fh)
    with pytest.raises(MZSRError, match="evil.pt"):
        load_weights(path)
    assert not marker.exists()


def test_plain_pt_state_dict_loads(tmp_path):
    state = _random_state(11)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": state, "metadata": {"scale": 2}}, path)
    loaded, meta = load_weights(path, expected_scale=2)
    assert meta == {"scale": 2}
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    bare = tmp_path / "bare.pt"
    torch.save(state, bare)
    loaded, meta = load_weights(bare)
    assert meta == {} and torch.equal(loaded["convs.7.bias"], state["convs.7.bias"])


def test_load_model(tmp_path):
    state = _random_state(12)
    path = tmp_path / "w.safetensors"
    save_weights(path, state, META)
    model, meta = load_model(path, expected_scale=2)
    assert isinstance(model, MZSRNet) and not model.training
    assert meta["degradation"] == "bicubic"
    assert torch.equal(model.convs[4].weight.detach(), state["convs.4.weight"])
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = MZSRNet()
        ref.load_state_dict(state)
        assert torch.equal(model(x), ref(x))


# --------------------------------------------------------------------------------------------------
# Hand-built TF bundle (SSTable + protobuf), written by the test itself (tf_bundle_writer.py)
# --------------------------------------------------------------------------------------------------


def test_crc32c_known_vectors():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4 test vector


def _tiny_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(42)
    return {
        "MODEL/conv1/bias": rng.standard_normal(4).astype(np.float32),
        "MODEL/conv1/kernel": rng.standard_normal((3, 3, 2, 4)).astype(np.float32),
        "MODEL/conv1/kernel/Adam": rng.standard_normal((3, 3, 2, 4)).astype(np.float32),
        "MODEL/conv1/kernel/Adam_1": rng.standard_normal((3, 3, 2, 4)).astype(np.float32),
        "MODEL/conv2/kernel": rng.standard_normal((1, 1, 4, 2)).astype(np.float32),
        "beta1_power": np.array(0.9, dtype=np.float32),
        "double": np.array([1.5, -2.25], dtype=np.float64),
        "global_step": np.array(7, dtype=np.int64),
        "step32": np.array([3, -4], dtype=np.int32),
    }


def test_tiny_bundle_parsed_exactly(tmp_path):
    tensors = _tiny_tensors()
    prefix = tmp_path / "model.ckpt"
    write_bundle(prefix, tensors)
    index = Path(str(prefix) + ".index").read_bytes()
    # Keys really are prefix-compressed: 4 keys start with "MODEL/conv1/", but with 6 entries per block
    # and a restart every 3, "MODEL/conv1/kernel/Adam_1" is stored as the 2-byte delta "_1".
    assert index.count(b"MODEL/conv1/") < 4
    assert b"MODEL/conv1/kernel/Adam_1" not in index

    listing = list_tf_bundle(prefix)
    assert list(listing) == sorted(tensors)  # the header key "" is skipped
    assert listing["MODEL/conv1/kernel"] == ("float32", (3, 3, 2, 4))
    assert listing["global_step"] == ("int64", ())

    got = read_tf_bundle(prefix)
    assert sorted(got) == sorted(tensors)
    for name, arr in tensors.items():
        assert got[name].dtype == arr.dtype and got[name].shape == arr.shape, name
        np.testing.assert_array_equal(got[name], arr)
    only = read_tf_bundle(prefix, ["step32", "MODEL/conv1/kernel/Adam_1"])
    assert sorted(only) == ["MODEL/conv1/kernel/Adam_1", "step32"]
    np.testing.assert_array_equal(only["MODEL/conv1/kernel/Adam_1"], tensors["MODEL/conv1/kernel/Adam_1"])


def test_tiny_bundle_single_block_and_unsupported_dtype(tmp_path):
    tensors = _tiny_tensors()
    string_entry = pb_varint(1, 7) + pb_bytes(2, b"") + pb_varint(4, 0) + pb_varint(5, 0)
    prefix = tmp_path / "one"
    write_bundle(prefix, tensors, extra={"a_string": string_entry}, per_block=100)
    got = read_tf_bundle(prefix)  # unsupported dtype skipped silently when not asked for
    assert "a_string" not in got and len(got) == len(tensors)
    assert list_tf_bundle(prefix)["a_string"] == ("string", ())
    with pytest.raises(MZSRError, match=r"one\.index.*a_string.*unsupported dtype string"):
        read_tf_bundle(prefix, ["a_string"])
    with pytest.raises(MZSRError, match="no tensor named 'nope'"):
        read_tf_bundle(prefix, ["nope"])


def test_bundle_errors_name_the_file(tmp_path):
    tensors = _tiny_tensors()
    with pytest.raises(MZSRError, match=r"missing\.index.*not found"):
        read_tf_bundle(tmp_path / "missing")

    bad_magic = tmp_path / "magic"
    write_bundle(bad_magic, tensors, magic=0x1234)
    with pytest.raises(MZSRError, match=r"magic\.index.*bad table magic"):
        read_tf_bundle(bad_magic)

    compressed = tmp_path / "snappy"
    write_bundle(compressed, tensors, compression=1)
    with pytest.raises(MZSRError, match=r"snappy\.index.*compressed"):
        read_tf_bundle(compressed)

    short = tmp_path / "short"
    Path(str(short) + ".index").write_bytes(b"tiny")
    with pytest.raises(MZSRError, match=r"short\.index"):
        read_tf_bundle(short)

    flipped = tmp_path / "flipped"
    write_bundle(flipped, tensors)
    index_path = Path(str(flipped) + ".index")
    raw = bytearray(index_path.read_bytes())
    raw[10] ^= 0xFF  # inside the first data block
    index_path.write_bytes(bytes(raw))
    with pytest.raises(MZSRError, match=r"flipped\.index.*checksum"):
        read_tf_bundle(flipped)

    nodata = tmp_path / "nodata"
    write_bundle(nodata, tensors)
    data_path = Path(str(nodata) + ".data-00000-of-00001")
    data = data_path.read_bytes()
    data_path.write_bytes(data[:-8])
    with pytest.raises(MZSRError, match=r"nodata\.data-00000-of-00001.*past the end"):
        read_tf_bundle(nodata)
    data_path.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    with pytest.raises(MZSRError, match=r"nodata\.data-00000-of-00001.*checksum"):
        read_tf_bundle(nodata)
    data_path.unlink()
    with pytest.raises(MZSRError, match=r"nodata\.data-00000-of-00001.*not found"):
        read_tf_bundle(nodata)


def test_import_synthetic_tf_checkpoint(tmp_path):
    tensors = synthetic_mzsr_tensors()
    prefix = tmp_path / "Pretrained"
    write_bundle(prefix, tensors, per_block=5)
    state = import_tf_checkpoint(prefix)
    assert list(state) == list(expected_shapes())
    assert sum(v.numel() for v in state.values()) == PARAMETER_COUNT
    for i in range(8):
        hwio = tensors[f"MODEL/conv{i + 1}/kernel"]
        np.testing.assert_array_equal(state[f"convs.{i}.weight"].numpy(), hwio.transpose(3, 2, 0, 1))
        np.testing.assert_array_equal(state[f"convs.{i}.bias"].numpy(), tensors[f"MODEL/conv{i + 1}/bias"])
    w = state["convs.1.weight"]
    hwio = tensors["MODEL/conv2/kernel"]
    assert w[5, 7, 0, 2] == hwio[0, 2, 7, 5]
    MZSRNet().load_state_dict(state, strict=True)


def test_import_rejects_wrong_shape(tmp_path):
    tensors = synthetic_mzsr_tensors(1)
    tensors["MODEL/conv3/kernel"] = tensors["MODEL/conv3/kernel"][:, :, :32, :].copy()
    prefix = tmp_path / "Bad"
    write_bundle(prefix, tensors)
    with pytest.raises(MZSRError, match=r"Bad\.index.*convs\.2\.weight.*\[64, 64, 3, 3\].*\[64, 32, 3, 3\]"):
        import_tf_checkpoint(prefix)
    del tensors["MODEL/conv8/bias"]
    write_bundle(prefix, tensors)
    with pytest.raises(MZSRError, match=r"MODEL/conv8/bias"):
        import_tf_checkpoint(prefix)


# --------------------------------------------------------------------------------------------------
# The authors' released checkpoint (../shared/data)
# --------------------------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_official_bundle_listing():
    listing = list_tf_bundle(OFFICIAL_PREFIX)
    for i in range(1, 9):
        for var in ("kernel", "bias"):
            for slot in ("", "/Adam", "/Adam_1"):
                assert f"MODEL/conv{i}/{var}{slot}" in listing
    assert listing["MODEL/conv1/kernel"] == ("float32", (3, 3, 3, 64))
    assert listing["MODEL/conv1/kernel/Adam"] == ("float32", (3, 3, 3, 64))
    assert listing["MODEL/conv8/kernel"] == ("float32", (3, 3, 64, 3))
    assert set(listing) - {n for n in listing if n.startswith("MODEL/")} == {
        "beta1_power",
        "beta2_power",
        "global_step",
    }
    assert len(listing) == 51
    step = read_tf_bundle(OFFICIAL_PREFIX, ["global_step"])["global_step"]
    assert int(step) == 500_000  # the release was trained 500K steps


@pytest.mark.shared_data
def test_official_import():
    state = import_tf_checkpoint(OFFICIAL_PREFIX)
    assert list(state) == [f"convs.{i}.{p}" for i in range(8) for p in ("weight", "bias")]
    assert sum(v.numel() for v in state.values()) == PARAMETER_COUNT == 225_091
    assert all(torch.isfinite(v).all() for v in state.values())
    raw = read_tf_bundle(OFFICIAL_PREFIX, ["MODEL/conv1/kernel"])["MODEL/conv1/kernel"]
    w = state["convs.0.weight"].numpy()
    assert raw.shape == (3, 3, 3, 64) and w.shape == (64, 3, 3, 3)
    for o, i, y, x in [(0, 0, 0, 0), (63, 2, 2, 1), (17, 1, 0, 2), (40, 0, 1, 1)]:
        assert w[o, i, y, x] == raw[y, x, i, o]
    np.testing.assert_array_equal(w, raw.transpose(3, 2, 0, 1))


@pytest.mark.shared_data
def test_official_round_trips_through_safetensors(tmp_path):
    state = import_tf_checkpoint(OFFICIAL_PREFIX)
    path = tmp_path / "theta_T.safetensors"
    save_weights(
        path,
        state,
        {
            "scale": 2,
            "degradation": "bicubic",
            "step": 500_000,
            "config_digest": "",
            "source": "mzsr-official-pretrained",
        },
    )
    model, meta = load_model(path, expected_scale=2)
    assert meta["step"] == 500_000
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)


def test_a_safetensors_header_length_that_starts_like_a_pickle_is_still_safetensors(tmp_path):
    """The header length is little-endian: a low byte of 0x80 is a pickle's first byte (PROTO)."""
    from mzsr.files.checkpoints import _sniff, load_weights, save_weights
    from mzsr.network.model import MZSRNet

    state = MZSRNet().state_dict()
    for pad in range(0, 400):  # metadata lengths until the header length's low byte is 0x80
        path = tmp_path / "w.safetensors"
        save_weights(path, state, {"scale": 2, "pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert _sniff(path) == "safetensors"
    assert load_weights(path)[1]["pad"] == "x" * pad
