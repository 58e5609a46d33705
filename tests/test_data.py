"""Tests for pytest_int8gate.data: sources, checks against the model, fingerprints, batching, labels."""

from __future__ import annotations

import io
import sys
import tracemalloc
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from pytest_int8gate import data as data_module
from pytest_int8gate.data import (
    DEFAULT_BATCH_SIZE,
    Dataset,
    batch_size_for,
    check_dataset,
    check_labels,
    is_loader_spec,
    load_dataset,
    load_labels,
)
from pytest_int8gate.errors import DataError
from pytest_int8gate.graph import Dim, ModelInfo, prepare_model

FLOAT = TensorProto.FLOAT


def identity_model(inputs: Mapping[str, Sequence[Dim]], elem_type: int = FLOAT) -> ModelInfo:
    """A model that returns each input through a Relu/Identity: only its input signature matters here."""
    nodes = [helper.make_node("Identity", [name], [f"{name}_out"], name=f"id_{name}") for name in inputs]
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info(name, elem_type, list(shape)) for name, shape in inputs.items()],
        [
            helper.make_tensor_value_info(f"{name}_out", elem_type, list(shape))
            for name, shape in inputs.items()
        ],
    )
    return prepare_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])).info


@pytest.fixture
def single() -> ModelInfo:
    return identity_model({"x": ["N", 3, 2]})


@pytest.fixture
def pair() -> ModelInfo:
    return identity_model({"a": ["N", 2], "b": ["N", 4, 1]})


def samples(count: int, start: int = 0) -> np.ndarray:
    """``count`` samples of shape [3, 2] whose values identify the sample (sample i is all i)."""
    ids = np.arange(start, start + count, dtype=np.float32)
    return np.broadcast_to(ids[:, None, None], (count, 3, 2)).copy()


def collect(dataset: Dataset, batch_size: int, name: str = "x") -> list[np.ndarray]:
    return [batch[name] for batch in dataset.batches(batch_size)]


# ---- sources and fingerprints -------------------------------------------------------------------------


def test_npz_npy_folder_and_loader_read_the_same_content(
    tmp_path: Path, single: ModelInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = samples(10)
    np.savez(tmp_path / "calib.npz", x=x)
    np.save(tmp_path / "calib.npy", x)
    folder = tmp_path / "folder"
    folder.mkdir()
    np.save(folder / "only.npy", x)
    np.save(tmp_path / "x_source.npy", x)
    module = write_loader(
        tmp_path,
        monkeypatch,
        f"import numpy as np\n\ndef feeds():\n    yield {{'x': np.load(r'{tmp_path / 'x_source.npy'}')}}\n",
    )

    datasets = [
        load_dataset(tmp_path / "calib.npz", single),
        load_dataset(str(tmp_path / "calib.npy"), single),
        load_dataset(folder, single),
        load_dataset(f"{module}:feeds", single, search_path=tmp_path),
    ]
    for dataset in datasets:
        assert dataset.num_samples == 10
        assert dataset.input_names == ("x",)
        assert dict(dataset.sample_shapes) == {"x": (3, 2)}
        np.testing.assert_array_equal(np.concatenate(collect(dataset, 4)), x)
    assert len({d.fingerprint for d in datasets}) == 1


def test_fingerprint_is_stable_and_content_sensitive(tmp_path: Path, single: ModelInfo) -> None:
    x = samples(6)
    np.savez(tmp_path / "a.npz", x=x)
    np.savez(tmp_path / "same.npz", x=x.copy())
    changed = x.copy()
    changed[5, 2, 1] += 1e-3
    np.savez(tmp_path / "b.npz", x=changed)
    np.savez(tmp_path / "fewer.npz", x=x[:5])

    first = load_dataset(tmp_path / "a.npz", single).fingerprint
    assert load_dataset(tmp_path / "a.npz", single).fingerprint == first
    assert load_dataset(tmp_path / "same.npz", single).fingerprint == first
    assert load_dataset(tmp_path / "b.npz", single).fingerprint != first
    assert load_dataset(tmp_path / "fewer.npz", single).fingerprint != first


def test_fingerprint_sees_every_file_of_a_folder(tmp_path: Path, single: ModelInfo) -> None:
    folder = tmp_path / "calib"
    folder.mkdir()
    np.save(folder / "part0.npy", samples(3))
    np.save(folder / "part1.npy", samples(3, start=3))
    before = load_dataset(folder, single).fingerprint
    np.save(folder / "part1.npy", samples(3, start=30))
    assert load_dataset(folder, single).fingerprint != before


def test_loader_fingerprint_follows_the_yielded_content(
    tmp_path: Path, single: ModelInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = (
        "import numpy as np\n\ndef feeds():\n    yield {{'x': np.full((4, 3, 2), {value}, np.float32)}}\n"
    )
    one = write_loader(tmp_path, monkeypatch, source.format(value=1.0))
    also_one = write_loader(tmp_path, monkeypatch, source.format(value=1.0))
    two = write_loader(tmp_path, monkeypatch, source.format(value=2.0))
    fingerprints = [
        load_dataset(f"{name}:feeds", single, search_path=tmp_path).fingerprint
        for name in (one, also_one, two)
    ]
    assert fingerprints[0] == fingerprints[1] != fingerprints[2]


def write_loader(folder: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> str:
    """A uniquely named module in ``folder``; sys.path is restored after the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    name = f"int8gate_test_loader_{uuid.uuid4().hex}"
    (folder / f"{name}.py").write_text(source)
    return name


def test_loader_returning_one_dict_and_yielding_many(
    tmp_path: Path, single: ModelInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = write_loader(
        tmp_path,
        monkeypatch,
        "import numpy as np\n\n"
        "def one():\n    return {'x': np.zeros((5, 3, 2), np.float32)}\n\n"
        "def many():\n"
        "    for i in range(3):\n"
        "        yield {'x': np.full((i + 1, 3, 2), i, np.float32)}\n\n"
        "def bad():\n    yield [1, 2]\n\n"
        "NOT_CALLABLE = 3\n",
    )
    assert load_dataset(f"{module}:one", single, search_path=tmp_path).num_samples == 5
    many = load_dataset(f"{module}:many", single, search_path=tmp_path)
    assert many.num_samples == 6
    # re-iterable: every pass calls the function again
    assert [b["x"][:, 0, 0].tolist() for b in many.batches(4)] == [[0, 1, 1, 2], [2, 2]]
    assert [b["x"].shape[0] for b in many.batches(4)] == [4, 2]
    with pytest.raises(DataError, match="item 0 is a list"):
        load_dataset(f"{module}:bad", single, search_path=tmp_path)
    with pytest.raises(DataError, match="no callable 'NOT_CALLABLE'"):
        load_dataset(f"{module}:NOT_CALLABLE", single, search_path=tmp_path)
    with pytest.raises(DataError, match="cannot import module"):
        load_dataset("int8gate_no_such_module_xyz:feeds", single, search_path=tmp_path)


def test_is_loader_spec() -> None:
    assert is_loader_spec("my_pkg.data:calibration_feeds")
    assert not is_loader_spec("data/calib.npz")
    assert not is_loader_spec("calib.npz")
    assert not is_loader_spec("pkg:1func")


def test_unsupported_missing_and_empty_sources(tmp_path: Path, single: ModelInfo) -> None:
    (tmp_path / "calib.csv").write_text("1,2,3\n")
    with pytest.raises(DataError, match=r"calib\.csv: calibration data must be \.npz"):
        load_dataset(tmp_path / "calib.csv", single)
    with pytest.raises(DataError, match=r"absent\.npz: evaluation data not found"):
        load_dataset(tmp_path / "absent.npz", single, role="evaluation")
    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    with pytest.raises(DataError, match=r"holds no \.npz or \.npy files"):
        load_dataset(empty_folder, single)


def test_a_corrupt_npz_is_a_data_error(tmp_path: Path, single: ModelInfo) -> None:
    (tmp_path / "truncated.npz").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(DataError, match=r"truncated\.npz: not a readable numpy file"):
        load_dataset(tmp_path / "truncated.npz", single)


def test_a_file_that_is_not_numpy_is_not_called_a_pickle(tmp_path: Path, single: ModelInfo) -> None:
    """numpy reports any file without the .npy magic as pickled data; the message must not repeat that."""
    (tmp_path / "broken.npy").write_bytes(b"not numpy at all")
    with pytest.raises(DataError, match=r"broken\.npy: not a (readable )?numpy") as info:
        load_dataset(tmp_path / "broken.npy", single)
    assert "pickle" not in str(info.value)
    (tmp_path / "text.npz").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"text\.npz: not a (readable )?numpy") as info:
        load_dataset(tmp_path / "text.npz", single)
    assert "pickle" not in str(info.value)


# ---- batching ----------------------------------------------------------------------------------------


def test_batches_rechunk_exactly_across_files(tmp_path: Path, single: ModelInfo) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    # read in name order: a (3), b (5), c (2)
    np.save(folder / "c.npy", samples(2, start=8))
    np.save(folder / "a.npy", samples(3, start=0))
    np.savez(folder / "b.npz", x=samples(5, start=3))
    (folder / "notes.txt").write_text("ignored")
    dataset = load_dataset(folder, single)
    assert dataset.num_samples == 10

    expected = samples(10)
    for batch_size, sizes in {1: [1] * 10, 3: [3, 3, 3, 1], 4: [4, 4, 2], 5: [5, 5], 64: [10]}.items():
        batches = collect(dataset, batch_size)
        assert [b.shape[0] for b in batches] == sizes, batch_size
        np.testing.assert_array_equal(np.concatenate(batches), expected)
        assert all(b.dtype == np.float32 and b.shape[1:] == (3, 2) for b in batches)


def test_batches_keep_inputs_aligned(pair: ModelInfo, tmp_path: Path) -> None:
    a = np.arange(14, dtype=np.float32).reshape(7, 2)
    b = np.arange(28, dtype=np.float32).reshape(7, 4, 1) + 100
    np.savez(tmp_path / "pair.npz", a=a, b=b)
    dataset = load_dataset(tmp_path / "pair.npz", pair)
    assert dataset.input_names == ("a", "b")
    batches = list(dataset.batches(3))
    assert [sorted(batch) for batch in batches] == [["a", "b"]] * 3
    np.testing.assert_array_equal(np.concatenate([x["a"] for x in batches]), a)
    np.testing.assert_array_equal(np.concatenate([x["b"] for x in batches]), b)


def test_batches_rejects_a_non_positive_batch_size(single: ModelInfo) -> None:
    dataset = check_dataset(Dataset.from_arrays({"x": samples(4)}), single)
    for bad in (0, -1):
        with pytest.raises((ValueError, DataError)):
            next(dataset.batches(bad))


def test_head_holds_the_first_samples(tmp_path: Path, single: ModelInfo) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    np.save(folder / "0.npy", samples(3))
    np.save(folder / "1.npy", samples(4, start=3))
    dataset = load_dataset(folder, single)

    head = dataset.head(5)
    assert head.num_samples == 5
    np.testing.assert_array_equal(np.concatenate(collect(head, 2)), samples(5))
    assert head.source.endswith("[:5]")
    assert head.fingerprint != dataset.fingerprint
    assert dataset.head(100).num_samples == 7


def test_from_arrays_then_check_dataset(single: ModelInfo) -> None:
    unchecked = Dataset.from_arrays({"x": samples(4)})
    assert unchecked.num_samples == 4
    assert check_dataset(unchecked, single).fingerprint == unchecked.fingerprint
    with pytest.raises(DataError, match="dtype float64"):
        check_dataset(Dataset.from_arrays({"x": samples(4).astype(np.float64)}), single)


# ---- checks against the model --------------------------------------------------------------------------


def test_wrong_input_name_is_named_with_the_models_inputs(tmp_path: Path, single: ModelInfo) -> None:
    np.savez(tmp_path / "wrong.npz", images=samples(2))
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path / "wrong.npz", single)
    message = str(info.value)
    assert "wrong.npz" in message
    assert "'images'" in message
    assert "the model's inputs are ['x']" in message


def test_missing_input_is_named(tmp_path: Path, pair: ModelInfo) -> None:
    np.savez(tmp_path / "half.npz", a=np.zeros((3, 2), np.float32))
    with pytest.raises(DataError, match=r"missing model input\(s\) \['b'\]"):
        load_dataset(tmp_path / "half.npz", pair)


def test_npy_for_a_multi_input_model_is_refused(tmp_path: Path, pair: ModelInfo) -> None:
    np.save(tmp_path / "one.npy", np.zeros((3, 2), np.float32))
    with pytest.raises(DataError, match=r"one\.npy.*inputs a, b; use \.npz"):
        load_dataset(tmp_path / "one.npy", pair)


def test_wrong_per_sample_shape_names_the_axis(tmp_path: Path, single: ModelInfo) -> None:
    np.savez(tmp_path / "shape.npz", x=np.zeros((4, 3, 5), np.float32))
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path / "shape.npz", single)
    message = str(info.value)
    assert "'x' axis 2 is 5 but the model expects 2" in message
    assert "[N, 3, 2]" in message


def test_wrong_rank_is_refused(tmp_path: Path, single: ModelInfo) -> None:
    np.savez(tmp_path / "rank.npz", x=np.zeros((4, 6), np.float32))
    with pytest.raises(DataError, match=r"per-sample shape \[6\] but the model expects \[N, 3, 2\]"):
        load_dataset(tmp_path / "rank.npz", single)


def test_symbolic_axes_accept_any_size(tmp_path: Path) -> None:
    model = identity_model({"tokens": ["batch", "seq"]})
    np.savez(tmp_path / "seq.npz", tokens=np.zeros((2, 17), np.float32))
    assert load_dataset(tmp_path / "seq.npz", model).sample_shapes["tokens"] == (17,)


def test_shape_must_not_vary_between_files(tmp_path: Path) -> None:
    model = identity_model({"tokens": ["batch", "seq"]})
    folder = tmp_path / "parts"
    folder.mkdir()
    np.save(folder / "0.npy", np.zeros((2, 17), np.float32))
    np.save(folder / "1.npy", np.zeros((2, 9), np.float32))
    with pytest.raises(DataError, match=r"per-sample shape \[9\] in chunk 1 but \[17\] before"):
        load_dataset(folder, model)


def test_wrong_dtype_names_both(tmp_path: Path, single: ModelInfo) -> None:
    np.savez(tmp_path / "f64.npz", x=samples(3).astype(np.float64))
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path / "f64.npz", single)
    message = str(info.value)
    assert "float64" in message
    assert "float32" in message
    assert "'x'" in message


def test_empty_data_is_refused(tmp_path: Path, single: ModelInfo) -> None:
    np.savez(tmp_path / "none.npz", x=np.zeros((0, 3, 2), np.float32))
    with pytest.raises(DataError, match=r"none\.npz: the data holds no samples"):
        load_dataset(tmp_path / "none.npz", single)
    np.savez(tmp_path / "no_arrays.npz")
    with pytest.raises(DataError, match="holds no arrays"):
        load_dataset(tmp_path / "no_arrays.npz", single)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_data_names_the_sample(tmp_path: Path, single: ModelInfo, bad_value: float) -> None:
    x = samples(6)
    x[4, 1, 0] = bad_value
    np.savez(tmp_path / "nan.npz", x=x)
    with pytest.raises(DataError, match=r"'x' holds NaN or Inf.*sample 4\b"):
        load_dataset(tmp_path / "nan.npz", single)


def test_non_finite_data_in_a_folder_names_the_global_sample(tmp_path: Path, single: ModelInfo) -> None:
    """Chunk numbers mean nothing to the user: name the sample's position in the whole data set."""
    folder = tmp_path / "parts"
    folder.mkdir()
    np.save(folder / "0.npy", samples(3))
    later = samples(4, start=3)
    later[1, 0, 0] = np.nan
    np.save(folder / "1.npy", later)
    with pytest.raises(DataError, match=r"sample 4\b"):
        load_dataset(folder, single)


def test_object_arrays_and_pickles_are_refused(tmp_path: Path, single: ModelInfo) -> None:
    objects = np.empty((2, 3, 2), dtype=object)
    objects[...] = 1.0
    np.save(tmp_path / "objects.npy", objects, allow_pickle=True)
    with pytest.raises(DataError, match=r"objects\.npy.*pickle"):
        load_dataset(tmp_path / "objects.npy", single)
    np.savez(tmp_path / "objects.npz", x=objects)
    with pytest.raises(DataError, match=r"objects\.npz.*pickle"):
        load_dataset(tmp_path / "objects.npz", single)
    with pytest.raises(DataError, match="dtype object"):
        check_dataset(Dataset.from_arrays({"x": objects}), single)


def test_inputs_must_share_axis_zero(tmp_path: Path, pair: ModelInfo) -> None:
    np.savez(tmp_path / "ragged.npz", a=np.zeros((5, 2), np.float32), b=np.zeros((4, 4, 1), np.float32))
    with pytest.raises(DataError, match=r"share axis 0.*'a': 5.*'b': 4"):
        load_dataset(tmp_path / "ragged.npz", pair)


def test_scalar_array_is_refused(tmp_path: Path, single: ModelInfo) -> None:
    np.save(tmp_path / "scalar.npy", np.float32(1.0))
    with pytest.raises(DataError, match=r"scalar\.npy: array 'x' is 0-d \(one value, no sample axis\)"):
        load_dataset(tmp_path / "scalar.npy", single)


# ---- batch size and labels -----------------------------------------------------------------------------


def test_batch_size_for_a_fixed_batch_axis() -> None:
    assert batch_size_for(identity_model({"x": [1, 3]})) == 1
    assert batch_size_for(identity_model({"x": [1, 3]}), 64) == 1
    assert batch_size_for(identity_model({"x": ["N", 3]})) == DEFAULT_BATCH_SIZE
    assert batch_size_for(identity_model({"x": ["N", 3]}), 7) == 7
    assert batch_size_for(identity_model({"a": [4, 3], "b": [4, 2]})) == 4
    with pytest.raises(DataError, match=r"different fixed batch sizes \[1, 2\]"):
        batch_size_for(identity_model({"a": [1, 3], "b": [2, 3]}))


def test_fixed_batch_model_accepts_any_sample_count(tmp_path: Path) -> None:
    model = identity_model({"x": [1, 3]})
    np.savez(tmp_path / "five.npz", x=np.zeros((5, 3), np.float32))
    dataset = load_dataset(tmp_path / "five.npz", model)
    assert [b["x"].shape for b in dataset.batches(batch_size_for(model))] == [(1, 3)] * 5


def test_check_labels() -> None:
    np.testing.assert_array_equal(check_labels(np.array([1, 0, 2], np.int32), 3), [1, 0, 2])
    assert check_labels(np.array([1, 0, 2], np.uint8), 3).dtype == np.int64
    column = check_labels(np.array([[3], [1]], np.int64), 2)
    assert column.shape == (2,)
    np.testing.assert_array_equal(column, [3, 1])
    with pytest.raises(DataError, match="3 labels for 4 evaluation samples"):
        check_labels(np.array([1, 0, 2]), 4)
    with pytest.raises(DataError, match=r"1-D integer array.*float32"):
        check_labels(np.array([1.0, 0.0], np.float32), 2)
    with pytest.raises(DataError, match=r"1-D integer array.*\[2, 2\]"):
        check_labels(np.zeros((2, 2), np.int64), 2)


def test_load_labels(tmp_path: Path) -> None:
    np.save(tmp_path / "labels.npy", np.array([4, 5, 6], np.int64))
    np.testing.assert_array_equal(load_labels(tmp_path / "labels.npy", 3), [4, 5, 6])
    np.savez(tmp_path / "labels.npz", y=np.array([[1], [2]], np.int32))
    np.testing.assert_array_equal(load_labels(tmp_path / "labels.npz", 2), [1, 2])
    np.savez(tmp_path / "two.npz", y=np.zeros(2, np.int64), z=np.zeros(2, np.int64))
    with pytest.raises(DataError, match="exactly one array"):
        load_labels(tmp_path / "two.npz", 2)
    with pytest.raises(DataError, match=r"absent\.npy: labels file not found"):
        load_labels(tmp_path / "absent.npy", 2)
    with pytest.raises(DataError, match=r"labels\.npy: 3 labels for 5"):
        load_labels(tmp_path / "labels.npy", 5)


def test_corrupt_labels_files_are_data_errors(tmp_path: Path) -> None:
    (tmp_path / "labels.npz").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(DataError, match=r"labels\.npz: not a (readable )?numpy"):
        load_labels(tmp_path / "labels.npz", 2)
    (tmp_path / "labels.npy").write_text("0\n1\n")
    with pytest.raises(DataError, match=r"labels\.npy: not a (readable )?numpy") as info:
        load_labels(tmp_path / "labels.npy", 2)
    assert "pickle" not in str(info.value)


# ---- a large .npy is read a block of rows at a time -----------------------------------------------------


def test_a_npy_is_read_a_block_of_rows_at_a_time(
    tmp_path: Path, single: ModelInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data_module, "_READ_BLOCK_BYTES", 3 * 3 * 2 * 4)  # three samples of [3, 2] float32
    np.save(tmp_path / "x.npy", samples(10))
    dataset = load_dataset(tmp_path / "x.npy", single)
    assert [chunk["x"].shape[0] for chunk in dataset.chunks()] == [3, 3, 3, 1]
    assert dataset.num_samples == 10 and dataset.distinct_samples == 10
    for batch_size, sizes in {1: [1] * 10, 4: [4, 4, 2], 64: [10]}.items():
        batches = collect(dataset, batch_size)
        assert [b.shape[0] for b in batches] == sizes, batch_size
        np.testing.assert_array_equal(np.concatenate(batches), samples(10))
    # a Fortran-order array is read whole, with the same samples
    np.save(tmp_path / "f.npy", np.asfortranarray(samples(10)))
    fortran = load_dataset(tmp_path / "f.npy", single)
    assert [chunk["x"].shape[0] for chunk in fortran.chunks()] == [10]
    np.testing.assert_array_equal(np.concatenate(collect(fortran, 4)), samples(10))
    # the file cut short after it was checked: the next pass says so in one sentence
    path = tmp_path / "x.npy"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(DataError, match=r"x\.npy: .*(truncated|changed)"):
        collect(dataset, 4)


def test_a_forged_npy_header_of_empty_values_is_one_sentence(tmp_path: Path, single: ModelInfo) -> None:
    # "|S0" declares values of 0 bytes, so no payload is due, but numpy reads such values as 1 byte each:
    # the block read comes up short, which is the file's fault, not a change during the run
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|S0", "fortran_order": False, "shape": (5, 3, 2)})
    (tmp_path / "forged.npy").write_bytes(header.getvalue())
    with pytest.raises(DataError, match=r"forged\.npy: .*truncated or forged") as info:
        load_dataset(tmp_path / "forged.npy", single)
    assert "\n" not in str(info.value)


def test_reading_a_npy_keeps_memory_flat_in_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data_module, "_READ_BLOCK_BYTES", 1 << 20)
    # 32 MiB read in blocks of one default batch (2 MiB: blocks hold whole batches when a batch fits in
    # four blocks' bytes), so that the batches are views of a block
    images = np.random.default_rng(3).standard_normal((512, 16, 32, 32)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    info = identity_model({"x": ["N", 16, 32, 32]})
    tracemalloc.start()
    dataset = load_dataset(tmp_path / "images.npy", info)
    count = sum(batch["x"].shape[0] for batch in dataset.batches(8))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 512 and dataset.distinct_samples == 512
    assert peak < images.nbytes / 4, peak


def test_a_npy_of_large_samples_is_read_in_whole_default_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Samples so large that a block holds fewer than a default batch: the blocks hold one batch each, so
    that no batch spans two blocks and is copied (a 320 px image is 1.2 MB against 32 MiB blocks)."""
    monkeypatch.setattr(data_module, "_READ_BLOCK_BYTES", 1 << 20)
    images = np.random.default_rng(4).standard_normal((80, 16, 32, 32)).astype(np.float32)  # 64 KiB each
    np.save(tmp_path / "images.npy", images)
    dataset = load_dataset(tmp_path / "images.npy", identity_model({"x": ["N", 16, 32, 32]}))
    assert [len(chunk["x"]) for chunk in dataset.chunks()] == [32, 32, 16]
    batches = list(dataset.batches(DEFAULT_BATCH_SIZE))
    assert [len(batch["x"]) for batch in batches] == [32, 32, 16]
    assert all(batch["x"].base is not None for batch in batches)  # views of a block, not copies
    np.testing.assert_array_equal(np.concatenate([batch["x"] for batch in batches]), images)
