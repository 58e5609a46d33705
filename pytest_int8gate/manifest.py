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
        const: {sr: 16000}          # inputs fed the same value with every batch (a number or a .npy)
        sample_axis: {state: 1}     # an input's or output's samples on an axis other than 0

Relative paths are relative to the manifest's folder. The valid keys and what each must be come from the
settings table (``settings.SETTINGS``; the README lists them).
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
from .errors import Int8GateError, bounded_repr, bounded_text
from .settings import SETTINGS, Setting, SettingError, from_yaml, is_loader_spec, name_of, on


class ManifestError(Int8GateError):
    """The manifest is unreadable or an entry has an unknown key or a wrong type."""


#: key -> its setting, for one manifest entry: every setting the table puts on the manifest.
ENTRY_KEYS: dict[str, Setting] = {name_of(s.manifest): s for s in SETTINGS if on(s.manifest)}
#: Keys naming a file or data, resolved against the manifest's folder.
_PATH_KEYS = tuple(key for key, s in ENTRY_KEYS.items() if s.kind in ("path", "data"))
#: Keys whose values may name a .npy file (constant inputs).
_CONSTANT_KEYS = tuple(key for key, s in ENTRY_KEYS.items() if s.kind == "constants")
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
        for key in _PATH_KEYS:
            if key in merged and not (ENTRY_KEYS[key].kind == "data" and is_loader_spec(merged[key])):
                merged[key] = (
                    str((file.parent / merged[key]).resolve())
                    if not Path(merged[key]).is_absolute()
                    else merged[key]
                )
        for key in _CONSTANT_KEYS:  # a constant's .npy is relative to the manifest's folder too
            if isinstance(merged.get(key), dict):
                merged[key] = {
                    name: str((file.parent / value).resolve()) if isinstance(value, str) else value
                    for name, value in merged[key].items()
                }
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
            budget = Budget.from_mapping(
                merged["budget"], source=f"{file}: {label}: budget", origin="manifest"
            )
        except Int8GateError as exc:
            raise ManifestError(str(exc)) from exc
        entries.append(ManifestEntry(name=name, values=merged, budget=budget))
    return tuple(entries)


def _check_keys(file: Path, label: str, item: Mapping[str, Any], *, allow_model: bool) -> None:
    for key, raw_value in item.items():
        value: Any = raw_value
        if key not in ENTRY_KEYS or (not allow_model and key in ("name", "model")):
            valid = ", ".join(k for k in ENTRY_KEYS if allow_model or k not in ("name", "model"))
            raise ManifestError(
                f"{file}: {label}: unknown key {bounded_repr(key)}; valid keys are {valid}."
            )
        try:
            from_yaml(ENTRY_KEYS[key], value)
        except SettingError as exc:
            problem = str(exc)
            if problem.startswith("["):  # a mapping's value: name the item, e.g. calibrator_overrides['x']
                raise ManifestError(f"{file}: {label}: {key}{problem}.") from None
            raise ManifestError(f"{file}: {label}: {key!r} {problem}, not {bounded_repr(value)}.") from None


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
