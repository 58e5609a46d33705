"""The ``int8gate.yaml`` manifest: a list of models to gate, validated key by key, as gate specs.

    defaults:                       # optional; any entry key but name/model
      budget: {cosine: 0.98}
    models:
      - name: digits                # node id: int8gate.yaml::digits (default: the model's file stem)
        model: models/digits_cnn.onnx
        calib_data: data/calib.npz  # .npz / .npy / folder / module:function
        eval_data: data/eval.npz
        labels: data/eval_labels.npy
        budget: {top1_drop: 0.01, cosine: 0.98}
        calibrator: entropy
        exclude: ["/conv2/Conv"]
        calibrator_overrides: {"/fc1/Gemm": percentile}
        equalize: ["/conv2/Conv"]   # or true: cross-layer equalization before calibration
        bias_correction: ["/fc2/Gemm"]
        repairs: [calibrator, equalize, bias_correction]   # the bisection's ladder before float

Relative paths are relative to the manifest's folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .budget import Budget
from .choices import BACKEND_NAMES, CALIBRATORS, ORT_MODES, REPAIRS, STRATEGIES
from .data import is_loader_spec
from .errors import Int8GateError, bounded_repr, bounded_text


class ManifestError(Int8GateError):
    """The manifest is unreadable or an entry has an unknown key or a wrong type."""


#: key -> (type check, description) for one manifest entry.
_STR = (str,)
ENTRY_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "name": (_STR, "a string"),
    "model": (_STR, "a path"),
    "calib_data": (_STR, "a path or module:function"),
    "eval_data": (_STR, "a path or module:function"),
    "labels": (_STR, "a path"),
    "output": (_STR, "an output name"),
    "budget": ((dict,), "a mapping of metric: limit"),
    "calibrator": (_STR, f"one of {', '.join(CALIBRATORS)}"),
    "percentile": ((int, float), "a number in (0, 100]"),
    "exclude": ((list,), "a list of layer names"),
    "calibrator_overrides": ((dict,), "a mapping of layer name: calibrator"),
    "backend": (_STR, f"one of {', '.join(BACKEND_NAMES)}"),
    "ort_mode": (_STR, f"one of {', '.join(ORT_MODES)}"),
    "batch_size": ((int,), "a positive integer"),
    "bisect": ((bool,), "true or false"),
    "bisect_strategy": (_STR, f"one of {', '.join(STRATEGIES)}"),
    "bisect_subset": ((int,), "a positive integer"),
    "equalize": ((bool, list), "true, false or a list of layer names"),
    "bias_correction": ((list,), "a list of layer names"),
    "repairs": ((list,), f"a list of repairs from {', '.join(REPAIRS)}"),
    "strict_ci": ((bool,), "true or false"),
    "fp32_reference": (_STR, "a path to a .npz of FP32 reference outputs"),
}
_CHOICES = {
    "calibrator": CALIBRATORS,
    "backend": BACKEND_NAMES,
    "ort_mode": ORT_MODES,
    "bisect_strategy": STRATEGIES,
}
_ID_SAFE = re.compile(r"[^\w.\-]+")


@dataclass(frozen=True)
class ManifestEntry:
    """One validated model entry; paths already resolved against the manifest's folder."""

    name: str
    values: Mapping[str, Any]
    budget: Budget

    def path(self, key: str) -> str | None:
        value = self.values.get(key)
        return None if value is None else str(value)


def load_manifest(path: str | os.PathLike[str]) -> tuple[ManifestEntry, ...]:
    """Read and validate the manifest at ``path``; :class:`ManifestError` names the entry and key."""
    file = Path(path)
    try:
        raw = load_manifest_yaml(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError(f"{file}: cannot read the manifest ({exc.strerror}).") from exc
    except RefusedYaml as exc:
        raise ManifestError(f"{file}: {exc}") from exc
    except RecursionError as exc:
        raise ManifestError(f"{file}: not valid YAML (nested too deeply).") from exc
    except yaml.YAMLError as exc:
        raise ManifestError(f"{file}: not valid YAML ({bounded_text(str(exc).splitlines()[0])}).") from exc
    defaults: Mapping[str, Any] = {}
    models: Any
    if isinstance(raw, list):
        models = raw
    elif isinstance(raw, dict):
        unknown = sorted(set(raw) - {"models", "defaults"}, key=str)  # keys of any type
        if unknown:
            raise ManifestError(
                f"{file}: unknown top-level key(s) {bounded_repr(unknown)}; valid keys are models, defaults."
            )
        models = raw.get("models")
        defaults = raw.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise ManifestError(f"{file}: 'defaults' must be a mapping.")
        _check_keys(file, "defaults", defaults, allow_model=False)
    else:
        raise ManifestError(f"{file}: the manifest must hold a 'models:' list.")
    if not isinstance(models, list) or not models:
        raise ManifestError(f"{file}: 'models' must be a non-empty list of model entries.")
    entries: list[ManifestEntry] = []
    seen: set[str] = set()
    for index, item in enumerate(models):
        label = f"entry {index + 1}"
        if not isinstance(item, dict):
            raise ManifestError(f"{file}: {label} must be a mapping with at least 'model' and 'calib_data'.")
        if isinstance(item.get("name"), str):
            label = f"entry {index + 1} ({bounded_text(item['name'], 80)})"
        _check_keys(file, label, item, allow_model=True)
        merged = {**defaults, **item}
        merged["budget"] = {**(defaults.get("budget") or {}), **(item.get("budget") or {})}
        for key in ("model", "calib_data"):
            if key not in merged:
                raise ManifestError(f"{file}: {label} has no {key!r}.")
        for key in ("model", "calib_data", "eval_data", "labels", "fp32_reference"):
            if key in merged and not (key.endswith("data") and is_loader_spec(merged[key])):
                merged[key] = (
                    str((file.parent / merged[key]).resolve())
                    if not Path(merged[key]).is_absolute()
                    else merged[key]
                )
        if not Path(merged["model"]).is_file():
            raise ManifestError(f"{file}: {label}: 'model' {bounded_text(str(merged['model']))} not found.")
        name = str(item.get("name") or Path(str(merged["model"])).stem)
        name = _ID_SAFE.sub("_", name)
        if name in seen:
            raise ManifestError(
                f"{file}: {label}: name {bounded_repr(name)} is used twice; give each entry a unique 'name'."
            )
        seen.add(name)
        try:
            budget = Budget.from_mapping(merged["budget"], source=f"{file}: {label}: budget")
        except Int8GateError as exc:
            raise ManifestError(str(exc)) from exc
        entries.append(ManifestEntry(name=name, values=merged, budget=budget))
    return tuple(entries)


def _check_keys(file: Path, label: str, item: Mapping[str, Any], *, allow_model: bool) -> None:
    for key, raw_value in item.items():
        value: Any = raw_value
        if key not in ENTRY_KEYS or (not allow_model and key in ("name", "model")):
            valid = ", ".join(k for k in ENTRY_KEYS if allow_model or k not in ("name", "model"))
            raise ManifestError(f"{file}: {label}: unknown key {key!r}; valid keys are {valid}.")
        types, meaning = ENTRY_KEYS[key]
        wrong_bool = isinstance(value, bool) and bool not in types
        if not isinstance(raw_value, types) or wrong_bool:
            raise ManifestError(f"{file}: {label}: {key!r} must be {meaning}, not {value!r}.")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ManifestError(f"{file}: {label}: {key!r} must be {meaning}, not {value!r}.")
        if key in ("batch_size", "bisect_subset") and value <= 0:
            raise ManifestError(f"{file}: {label}: {key!r} must be {meaning}, not {value!r}.")
        if key == "percentile" and not 0 < float(value) <= 100:
            raise ManifestError(f"{file}: {label}: {key!r} must be {meaning}, not {value!r}.")
        if key == "exclude" and not all(isinstance(v, str) for v in value):
            raise ManifestError(f"{file}: {label}: 'exclude' must be a list of layer names (strings).")
        names = value if key in ("equalize", "bias_correction") and isinstance(value, list) else []
        if not all(isinstance(v, str) for v in names):
            raise ManifestError(f"{file}: {label}: {key!r} must be a list of layer names (strings).")
        if key == "repairs" and not all(isinstance(v, str) and v in REPAIRS for v in value):
            raise ManifestError(f"{file}: {label}: 'repairs' must be {meaning}, not {value!r}.")
        if key == "calibrator_overrides":
            for layer, calib in value.items():
                if not isinstance(layer, str) or calib not in CALIBRATORS:
                    raise ManifestError(
                        f"{file}: {label}: calibrator_overrides[{layer!r}] must be one of "
                        f"{', '.join(CALIBRATORS)}, not {calib!r}."
                    )


class RefusedYaml(yaml.YAMLError):
    """A YAML construct a manifest may not use; the message names it and its line."""

    def __init__(self, problem: str, mark: yaml.Mark | None) -> None:
        where = f"line {mark.line + 1}: " if mark is not None else ""
        super().__init__(f"{where}{problem}.")


class _ManifestLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s constructors, without aliases (a few hundred bytes of them expand to 10**9
    items: the billion laughs) and without duplicate keys (YAML silently keeps the last one: a budget could
    lose a limit without a word)."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise RefusedYaml(
                f"the alias *{bounded_text(str(event.anchor), 40)} is not allowed in a manifest; put shared "
                "settings under 'defaults:'",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class refuses it
                continue
            if duplicate:
                raise RefusedYaml(
                    f"the key {bounded_repr(key)} appears twice in one mapping", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def load_manifest_yaml(text: str) -> Any:
    """The manifest's YAML as plain data: safe constructors only, no aliases, no duplicate keys."""
    loader = _ManifestLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
