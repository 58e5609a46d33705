"""Mutation testing of the core claims: plant one deliberate bug at a time and see whether the suite notices.

Each mutant below is a textual patch of one source file (every ``old`` must occur exactly once), the tests
that should catch it, and the claim it breaks. For each mutant the driver copies the repository to a
scratch directory once, applies the patch there, runs the listed tests (``pytest -x``) against the patched
copy, records *killed* (a test failed), *survived* (all passed), *timeout* or *stale* (the patch no longer
applies: the code moved and the mutant must be rewritten), and restores the file. The working tree is never
touched. Not part of CI: a full run takes several minutes (one pytest process per mutant).

    python benchmarks/mutation.py                     # every mutant; prints the table
    python benchmarks/mutation.py --write docs/mutation-testing.md
    python benchmarks/mutation.py --only verified-fix-passed-forced --only percentile-side-right
    python benchmarks/mutation.py --check             # only that every patch still applies
    python benchmarks/mutation.py --jobs 3            # three mutants at a time, each in its own copy

A survivor is either a gap in the tests or an *equivalent* mutant (a change that cannot alter behaviour);
equivalent mutants carry the reason in ``equivalent`` and the written table explains them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: What the scratch copy needs: the package, the tests and the example project they read.
COPIED = ("pytest_int8gate", "tests", "example_project", "benchmarks", "pyproject.toml")
TIMEOUT_S = 900
PIPE = "\\|"  # a pipe inside a Markdown table cell


@dataclass(frozen=True)
class Mutant:
    """One deliberate bug: ``patches`` are (old, new) replacements in ``path``, each ``old`` unique there."""

    name: str
    kind: str
    path: str
    patches: tuple[tuple[str, str], ...]
    tests: tuple[str, ...]
    claim: str
    #: Why the mutant cannot change behaviour (an equivalent mutant); empty for a real bug.
    equivalent: str = ""

    @property
    def summary(self) -> str:
        old, new = self.patches[0]
        text = f"`{_one_line(old)}` → `{_one_line(new)}`"
        return text + (f" (+{len(self.patches) - 1} more)" if len(self.patches) > 1 else "")


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= 70 else flat[:67] + "..."


def m(
    name: str,
    kind: str,
    path: str,
    old: str,
    new: str,
    tests: Sequence[str],
    claim: str,
    *,
    more: Sequence[tuple[str, str]] = (),
    equivalent: str = "",
) -> Mutant:
    return Mutant(name, kind, path, ((old, new), *more), tuple(tests), claim, equivalent)


PKG = "pytest_int8gate"
T = "tests"

# fmt: off
MUTANTS: tuple[Mutant, ...] = (
    # ---- budget operators ----------------------------------------------------------------------------------
    m(
        "budget-direction-swapped", "budget operator", f"{PKG}/gate.py",
        "passed = observed <= limit + _FLOAT_SLACK if spec.upper else observed >= limit - _FLOAT_SLACK",
        "passed = observed >= limit - _FLOAT_SLACK if spec.upper else observed <= limit + _FLOAT_SLACK",
        [f"{T}/test_gate.py"], "an upper limit passes values below it, a lower limit values above it",
    ),
    m(
        "budget-limit-exclusive", "budget operator", f"{PKG}/gate.py",
        "passed = observed <= limit + _FLOAT_SLACK if spec.upper",
        "passed = observed < limit - _FLOAT_SLACK if spec.upper",
        [f"{T}/test_gate.py"], "a drop of exactly the limit passes",
    ),
    m(
        "budget-drop-sign", "budget operator", f"{PKG}/gate.py",
        "        observed = fp32 - int8\n", "        observed = int8 - fp32\n",
        [f"{T}/test_gate.py"], "a drop is FP32 minus INT8",
    ),
    m(
        "budget-slack-wide", "budget operator", f"{PKG}/gate.py",
        "_FLOAT_SLACK = 1e-9", "_FLOAT_SLACK = 1e-2",
        [f"{T}/test_gate.py", f"{T}/test_search_judgement.py", f"{T}/test_cli.py"],
        "only float noise is forgiven at the limit",
    ),
    m(
        "verdict-ignores-failed-diagnostics", "budget operator", f"{PKG}/results.py",
        "return all(r.passed for r in self.results) and not self.failed_diagnostics",
        "return all(r.passed for r in self.results)",
        [f"{T}/test_plugin_diagnostics.py", f"{T}/test_diagnostics.py"],
        "a failure finding fails a gate whose budget passes",
    ),
    m(
        "verdict-any-metric-passes", "budget operator", f"{PKG}/results.py",
        "return all(r.passed for r in self.results) and not self.failed_diagnostics",
        "return any(r.passed for r in self.results) and not self.failed_diagnostics",
        [f"{T}/test_gate.py", f"{T}/test_pipeline.py", f"{T}/test_cli.py"], "every budget metric must pass",
    ),
    # ---- confidence intervals ------------------------------------------------------------------------------
    m(
        "strict-ci-ignored", "confidence interval", f"{PKG}/gate.py",
        "        passed = passed and within\n", "        passed = passed\n",
        [f"{T}/test_stats.py"], "--int8-strict-ci needs the whole interval within the limit",
    ),
    m(
        "strict-ci-wrong-bound", "confidence interval", f"{PKG}/gate.py",
        "bound = interval.high if spec.upper else interval.low",
        "bound = interval.low if spec.upper else interval.high",
        [f"{T}/test_stats.py"], "a strict drop is judged on the interval's upper bound",
    ),
    m(
        "bonett-price-no-pseudo-counts", "confidence interval", f"{PKG}/stats.py",
        "    p_b = (b + 1) / (n + 2)\n    p_c = (c + 1) / (n + 2)\n",
        "    p_b = b / n\n    p_c = c / n\n",
        [f"{T}/test_stats.py"], "no disagreement still gives an interval of +-1.4 points on 200 samples",
    ),
    m(
        "ci-90-percent", "confidence interval", f"{PKG}/stats.py",
        "Z95 = 1.959963984540054", "Z95 = 1.6448536269514722",
        [f"{T}/test_stats.py"], "intervals are 95 %",
    ),
    m(
        "wilson-centre-dropped", "confidence interval", f"{PKG}/stats.py",
        "centre = (p + z2 / (2 * n)) / denominator", "centre = p",
        [f"{T}/test_stats.py"], "the agreement interval is Wilson's",
    ),
    m(
        "discordant-pairs-swapped", "confidence interval", f"{PKG}/stats.py",
        "return int(np.count_nonzero(fp32 & ~int8)), int(np.count_nonzero(~fp32 & int8))",
        "return int(np.count_nonzero(~fp32 & int8)), int(np.count_nonzero(fp32 & ~int8))",
        [f"{T}/test_stats.py"], "b counts FP32-right/INT8-wrong samples",
    ),
    # ---- calibrators ---------------------------------------------------------------------------------------
    m(
        "entropy-ties-to-smallest", "entropy", f"{PKG}/calibrate.py",
        "best = int(candidates[len(candidates) - 1 - int(np.argmin(divergence[::-1]))])",
        "best = int(candidates[int(np.argmin(divergence))])",
        [f"{T}/test_calibrate.py"], "KL ties go to the largest threshold, as NVIDIA's tools",
    ),
    m(
        "entropy-no-half-bin", "entropy", f"{PKG}/calibrate.py",
        "return float(min((best + 0.5) * bin_width, absmax))", "return float(min(best * bin_width, absmax))",
        [f"{T}/test_calibrate.py"], "amax is half a bin past the last kept bin",
    ),
    m(
        "entropy-zero-bin-kept", "entropy", f"{PKG}/calibrate.py",
        "    h[0] = h[1]\n", "    h[0] = h[0]\n",
        [f"{T}/test_calibrate.py"], "the exact zeros of ReLU outputs do not drive the search",
    ),
    m(
        "entropy-normalisation-sign", "entropy", f"{PKG}/calibrate.py",
        "divergence = (p_log_p - p_log_q) / total + np.log(kept / total)",
        "divergence = (p_log_p - p_log_q) / total - np.log(kept / total)",
        [f"{T}/test_calibrate.py"], "KL(P||Q) with Q normalised",
    ),
    m(
        "entropy-q-floor", "entropy", f"{PKG}/calibrate.py",
        "_KL_Q_FLOOR = 1e-10", "_KL_Q_FLOOR = 1e-3",
        [f"{T}/test_calibrate.py"], "an empty bin with outliers costs ModelOpt's smoothing",
    ),
    m(
        "percentile-side-right", "percentile", f"{PKG}/calibrate.py",
        'index = int(np.searchsorted(cumulative, target, side="left"))',
        'index = int(np.searchsorted(cumulative, target, side="right"))',
        [f"{T}/test_calibrate.py"], "percentile 99 of 99 values in [0, 1] and one at 100 is about 1",
    ),
    m(
        "percentile-no-interpolation", "percentile", f"{PKG}/calibrate.py",
        "fraction = (target - below) / inside if inside else 1.0", "fraction = 1.0",
        [f"{T}/test_calibrate.py"], "the percentile is interpolated inside its bin",
    ),
    m(
        "mse-ties-to-smallest", "mse", f"{PKG}/calibrate.py",
        "best = len(thresholds) - 1 - int(np.argmin(errors[::-1]))", "best = int(np.argmin(errors))",
        [f"{T}/test_calibrate.py"], "MSE ties go to the larger threshold",
    ),
    m(
        "max-signed", "max", f"{PKG}/calibrate.py",
        "        return float(stats.absmax)\n", "        return float(stats.max_value)\n",
        [f"{T}/test_calibrate.py"], "max calibration is the largest |x|",
    ),
    m(
        "nonfinite-calibration-quantized", "NaN fail-closed", f"{PKG}/calibrate.py",
        "    if stats.nonfinite:\n        return f", "    if False:\n        return f",
        [f"{T}/test_calibrate.py"], "a tensor with NaN/Inf in calibration is not quantized",
    ),
    # ---- quantization --------------------------------------------------------------------------------------
    m(
        "conv-axis-1", "per-channel axis", f"{PKG}/placement.py",
        '    if node.op_type == "Conv":\n        return 0, ""',
        '    if node.op_type == "Conv":\n        return 1, ""',
        [f"{T}/test_quantize.py"], "Conv weights are scaled per output channel (axis 0)",
    ),
    m(
        "gemm-transb-axis", "per-channel axis", f"{PKG}/placement.py",
        'return (0 if _int_attr(node, "transB", 0) else 1), ""',
        'return (1 if _int_attr(node, "transB", 0) else 0), ""',
        [f"{T}/test_quantize.py"], "Gemm's output-channel axis follows transB",
    ),
    m(
        "convtranspose-axis-0", "per-channel axis", f"{PKG}/placement.py",
        '        if group == 1:\n            return 1, ""',
        '        if group == 1:\n            return 0, ""',
        [f"{T}/test_quantize.py"], "ConvTranspose weights are scaled on axis 1",
    ),
    m(
        "weight-floor", "weights", f"{PKG}/quantize.py",
        "np.clip(np.rint(values / broadcast), -INT8_MAX, INT8_MAX)",
        "np.clip(np.floor(values / broadcast), -INT8_MAX, INT8_MAX)",
        [f"{T}/test_quantize.py"], "weights round to the nearest level",
    ),
    m(
        "weight-clip-asymmetric", "weights", f"{PKG}/quantize.py",
        "np.clip(np.rint(values / broadcast), -INT8_MAX, INT8_MAX)",
        "np.clip(np.rint(values / broadcast), -INT8_MAX - 1, INT8_MAX)",
        [f"{T}/test_quantize.py"], "weights are symmetric int8 [-127, 127]",
        equivalent="the scale is max|w| / 127, so |w| / scale <= 127 and rint never reaches -128: the lower "
        "clip bound is never hit whatever it is",
    ),
    # ---- the binary search ---------------------------------------------------------------------------------
    m(
        "bisect-loop-stops-early", "binary search", f"{PKG}/search_walk.py",
        "    while hi - lo > 1:\n", "    while hi - lo > 2:\n",
        [f"{T}/test_bisect.py"], "the search narrows to one layer",
    ),
    m(
        "bisect-offender-accepted", "binary search", f"{PKG}/search_walk.py",
        "        state.accepted.extend(range(position, offender))\n        settle(",
        "        state.accepted.extend(range(position, offender + 1))\n        settle(",
        [f"{T}/test_bisect.py"], "an offender is never part of the accepted prefix",
    ),
    m(
        "bisect-first-probe-uncounted", "binary search", f"{PKG}/search_walk.py",
        "            state.search_evaluations += 1  # measured before: counted here, not repeated\n"
        "            state.counted_first = True\n",
        "            state.counted_first = True\n",
        [f"{T}/test_bisect.py"], "the report counts every evaluation",
    ),
    m(
        "bisect-monotonic-check-off", "binary search", f"{PKG}/search_walk.py",
        "if long.passed and long.margin > short.margin + MONOTONIC_TOLERANCE:",
        "if long.passed and long.margin > short.margin + 1e9:",
        [f"{T}/test_bisect.py"], "a non-monotonic search falls back to a linear scan and says so",
    ),
    m(
        "margin-not-normalised", "binary search", f"{PKG}/search_oracle.py",
        'return max(abs(r.limit), 1e-6) if r.name in ("sqnr_db", "max_abs_error") else 1.0',
        "return 1.0",
        [f"{T}/test_search_judgement.py", f"{T}/test_bisect.py"],
        "dB and output-unit margins are relative to the limit (the fallback's 1 % tolerance)",
    ),
    m(
        "spread-margin-ignored", "binary search", f"{PKG}/adaptive.py",
        "return probe.passed and probe.margin >= holdout * probe.stderr",
        "return probe.passed",
        [f"{T}/test_search_adaptive.py"],
        "the spread walk accepts a prefix only by a standard error of margin (the fix holds on unseen data)",
    ),
    m(
        "culprit-walk-share-ignored", "binary search", f"{PKG}/adaptive.py",
        "if 1 <= len(outliers) <= few and share >= CULPRIT_NOISE_SHARE:",
        "if 1 <= len(outliers) <= few:",
        [f"{T}/test_search_adaptive.py"],
        "outliers that carry little of the predicted noise do not send the search after culprits",
    ),
    m(
        "search-ignores-strict-ci", "confidence interval", f"{PKG}/context.py",
        "return judge(self.parent.context.budget, self.compare(plan), strict_ci=self.parent.strict_ci)",
        "return judge(self.parent.context.budget, self.compare(plan))",
        [f"{T}/test_search_judgement.py"], "the search judges with the gate's strict intervals",
    ),
    m(
        "verification-ignores-strict-ci", "confidence interval", f"{PKG}/verification.py",
        "results = self.evaluator.judge(self.evaluator.compare(plan))",
        'results = __import__("pytest_int8gate.gate", fromlist=["judge"]).judge(context.budget, '
        "self.evaluator.compare(plan))",
        [f"{T}/test_search_judgement.py"], "the fix is verified with the gate's strict intervals",
    ),
    m(
        "strict-unresolvable-searched", "confidence interval", f"{PKG}/bisect.py",
        "        unresolvable = not empty.passed\n", "        unresolvable = False\n",
        [f"{T}/test_search_judgement.py"], "a set too small for a strict budget blames no layer",
    ),
    # ---- the verified fix ----------------------------------------------------------------------------------
    m(
        "verified-fix-passed-forced", "verified fix", f"{PKG}/verification.py",
        "        passed = all(r.passed for r in results)\n", "        passed = True\n",
        [f"{T}/test_search_judgement.py", f"{T}/test_cli.py", f"{T}/test_search_adaptive.py"],
        "a fix that misses the budget on the full set is never reported as PASS",
    ),
    m(
        "fix-fallback-removed", "verified fix", f"{PKG}/bisect.py",
        "        if not fix.passed and repaired:\n", "        if False:\n",
        [f"{T}/test_cli.py"], "a repair that fails on the full set falls back to float",
    ),
    m(
        "fix-view-always-pass", "verified fix", f"{PKG}/report/view.py",
        'outcome="PASS" if f.passed else "FAIL",', 'outcome="PASS",',
        [f"{T}/test_search_judgement.py"], "text, Markdown and HTML say FAIL for a failing fix",
    ),
    m(
        "fix-view-no-note", "verified fix", f"{PKG}/report/view.py",
        'outcome_note = "" if f.passed else "(not a fix)"', 'outcome_note = ""',
        [f"{T}/test_search_judgement.py"], "a failing fix is called not a fix",
    ),
    m(
        "html-fix-shown-green", "verified fix", f"{PKG}/report/html.py",
        """return f'<span class="{"ok" if passed else "bad"}">{esc(word)}</span>'""",
        """return f'<span class="ok">{esc(word)}</span>'""",
        [f"{T}/test_search_judgement.py", f"{T}/test_report_formats.py"], "the HTML shows a FAIL in red",
    ),
    # ---- metrics -------------------------------------------------------------------------------------------
    m(
        "top5-is-top4", "metrics", f"{PKG}/evaluate.py",
        '_topk_hits(fc, labels, 5)', '_topk_hits(fc, labels, 4)',
        [f"{T}/test_evaluate.py"], "top-5 counts a label ranked 5th",
        more=[('_topk_hits(ic, labels, 5)', '_topk_hits(ic, labels, 4)')],
    ),
    m(
        "nonfinite-output-passes", "NaN fail-closed", f"{PKG}/evaluate.py",
        'if array.dtype.kind == "f" and not np.isfinite(array).all():', "if False:",
        [f"{T}/test_evaluate.py", f"{T}/test_no_false_pass.py"], "a NaN/Inf output fails the gate",
    ),
    m(
        "fp32-parity-only-a-warning", "no false pass", f"{PKG}/diagnostics/parity.py",
        '        "fp32-parity",\n        "failure",\n', '        "fp32-parity",\n        "warning",\n',
        [f"{T}/test_no_false_pass.py"], "FP32 outputs that do not match the user's reference fail the gate",
    ),
    # ---- the cache -----------------------------------------------------------------------------------------
    m(
        "checksum-not-compared", "cache checksum", f"{PKG}/cache.py",
        "    if not recorded or recorded[0] != actual:\n", "    if not recorded:\n",
        [f"{T}/test_cache_integrity.py"], "a damaged cache entry is rebuilt, never used",
    ),
    m(
        "checksum-of-file-read-back", "cache checksum", f"{PKG}/cache.py",
        "            write_checksum(target, data)", "            write_checksum(target)",
        [f"{T}/test_cache_integrity.py", f"{T}/test_cache.py"], "the checksum vouches for what was built",
        equivalent="the file was just written from ``data`` and renamed into place under the lock, so its "
        "bytes read back are ``data``; only a disk that corrupts a write between the two calls tells them "
        "apart, which no test can stage",
    ),
    m(
        "cache-lock-no-recheck", "cache race", f"{PKG}/cache.py",
        "            if problem is None:  # another worker built it while this one waited\n",
        "            if False:\n",
        [f"{T}/test_concurrency.py"], "concurrent gates build one cache entry once",
    ),
    # ---- manifest validation -------------------------------------------------------------------------------
    m(
        "manifest-unknown-key-accepted", "manifest validation", f"{PKG}/manifest.py",
        'if key not in ENTRY_KEYS or (not allow_model and key in ("name", "model")):',
        'if not allow_model and key in ("name", "model"):',
        [f"{T}/test_manifest.py"], "a misspelt manifest key is an error naming it",
    ),
    m(
        "manifest-bool-for-number", "manifest validation", f"{PKG}/settings.py",
        "        ok = isinstance(value, (int, float)) and not isinstance(value, bool)\n",
        "        ok = isinstance(value, (int, float))\n",
        [f"{T}/test_manifest.py", f"{T}/test_settings.py"], "true is not a number",
    ),
    m(
        "manifest-repairs-unchecked", "manifest validation", f"{PKG}/settings.py",
        '        if kind == "repairs" and not all(v in REPAIRS for v in value):\n',
        '        if kind == "repairs" and False:\n',
        [f"{T}/test_manifest.py", f"{T}/test_settings.py", f"{T}/test_plugin.py"],
        "an unknown repair rung is an error",
    ),
    # ---- the backend's description -------------------------------------------------------------------------
    m(
        "vnni-without-arm-dot-product", "backend description", f"{PKG}/backends/onnxruntime.py",
        'VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")',
        'VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")',
        [f"{T}/test_backend_onnxruntime.py"], "Arm's int8 dot product counts as VNNI",
    ),
)
# fmt: on


@dataclass
class Outcome:
    mutant: Mutant
    status: str  # killed, survived, timeout, stale
    seconds: float = 0.0
    detail: str = ""
    failed_tests: list[str] = field(default_factory=list)


def scratch_copy() -> Path:
    root = Path(tempfile.mkdtemp(prefix="int8gate-mutation-"))
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, root / name)
    return root


def apply(mutant: Mutant, text: str) -> str | None:
    """The patched text, or None when an ``old`` is missing or not unique (a stale mutant)."""
    for old, new in mutant.patches:
        if text.count(old) != 1:
            return None
        text = text.replace(old, new)
    return text


def run_tests(copy: Path, tests: Sequence[str]) -> tuple[int, float, str]:
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return -1, time.perf_counter() - started, ""
    return done.returncode, time.perf_counter() - started, done.stdout


def failed_tests(output: str) -> list[str]:
    failed = [line for line in output.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    return [line.split(" ", 1)[1].split(" - ")[0] for line in failed]


def run(mutants: Sequence[Mutant], *, baseline: bool = True, jobs: int = 1) -> list[Outcome]:
    """Every mutant, ``jobs`` at a time (each job in its own scratch copy); outcomes in ``mutants`` order."""
    if jobs > 1:
        shares = [list(mutants[i::jobs]) for i in range(jobs)]
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            done = list(pool.map(lambda share: run(share, baseline=baseline), shares))
        by_name = {o.mutant.name: o for outcomes in done for o in outcomes}
        return [by_name[mutant.name] for mutant in mutants]
    copy = scratch_copy()
    try:
        tests = sorted({t for mutant in mutants for t in mutant.tests})
        if baseline:
            code, seconds, output = run_tests(copy, tests)
            if code != 0:
                failure = output[-3000:]
                raise SystemExit(f"the unmutated tests fail ({seconds:.0f} s); fix them first:\n{failure}")
            print(f"baseline: {len(tests)} test files pass unmutated ({seconds:.0f} s)", flush=True)
        outcomes = []
        for mutant in mutants:
            target = copy / mutant.path
            original = target.read_text() if target.is_file() else ""
            patched = apply(mutant, original)
            if patched is None:
                outcome = Outcome(mutant, "stale", detail="a patch does not apply exactly once")
            else:
                target.write_text(patched)
                try:
                    code, seconds, output = run_tests(copy, mutant.tests)
                finally:
                    target.write_text(original)
                status = "timeout" if code == -1 else "survived" if code == 0 else "killed"
                outcome = Outcome(mutant, status, seconds, failed_tests=failed_tests(output))
            outcomes.append(outcome)
            print(f"{outcome.status:<9} {seconds:6.1f} s  {mutant.name}", flush=True)
        return outcomes
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def check(mutants: Sequence[Mutant]) -> list[Outcome]:
    outcomes = []
    for mutant in mutants:
        source = ROOT / mutant.path
        text = source.read_text() if source.is_file() else ""
        missing = [t for t in mutant.tests if not (ROOT / t.split("::")[0]).exists()]
        status = "stale" if apply(mutant, text) is None or missing else "applies"
        outcomes.append(Outcome(mutant, status, detail=", ".join(missing)))
    return outcomes


def table(outcomes: Sequence[Outcome], commit: str, total_s: float) -> str:
    counts = {s: sum(o.status == s for o in outcomes) for s in ("killed", "survived", "timeout", "stale")}
    lines = [
        "# Mutation testing",
        "",
        "Deliberate bugs planted one at a time in the core claims, each run against the tests meant to catch",
        "it (`python benchmarks/mutation.py --write docs/mutation-testing.md`; the driver, its mutants and",
        "their rationale are in `benchmarks/mutation.py`). Not part of CI.",
        "",
        f"- last run: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, code of `{commit}`, "
        f"{total_s / 60:.1f} min",
        f"- {len(outcomes)} mutants: **{counts['killed']} killed**, {counts['survived']} survived, "
        f"{counts['timeout']} timed out, {counts['stale']} stale",
        "",
        "| # | mutant | kind | file | mutation | claim it breaks | result | caught by |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for number, o in enumerate(outcomes, 1):
        mutant = o.mutant
        caught = ", ".join(f"`{t.split('::', 1)[-1]}`" for t in o.failed_tests[:1]) or "-"
        result = {"killed": "killed", "survived": "**survived**"}.get(o.status, o.status)
        lines.append(
            f"| {number} | `{mutant.name}` | {mutant.kind} | `{mutant.path.removeprefix(PKG + '/')}` | "
            f"{mutant.summary.replace('|', PIPE)} | {mutant.claim} | {result} | {caught} |"
        )
    survivors = [o for o in outcomes if o.status != "killed"]
    lines += ["", "## Survivors", ""]
    if not survivors:
        lines.append("None.")
    for o in survivors:
        reason = o.mutant.equivalent or "**not explained: a gap in the tests**"
        lines.append(f"- `{o.mutant.name}` ({o.status}): {reason}.")
    return "\n".join(lines) + "\n"


def source_version() -> str:
    """The commit of the working tree, with "+ uncommitted changes" when it differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout

    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    dirty = git("status", "--porcelain", "--", *COPIED).strip()
    return f"{commit} + uncommitted changes" if dirty else commit


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], help="run only this mutant (repeatable)")
    parser.add_argument("--check", action="store_true", help="only check that every patch applies")
    parser.add_argument("--list", action="store_true", help="list the mutants")
    parser.add_argument("--write", type=Path, help="write the Markdown table to this file")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at the same time (default 1)")
    parser.add_argument(
        "--skip-baseline",
        action="store_true",
        help="do not first check that the listed tests pass unmutated (when the suite was just run green)",
    )
    args = parser.parse_args(argv)
    names = {mutant.name for mutant in MUTANTS}
    if len(names) != len(MUTANTS):
        raise SystemExit("two mutants share a name")
    unknown = set(args.only) - names
    if unknown:
        raise SystemExit(f"unknown mutant(s): {', '.join(sorted(unknown))}")
    mutants = [mutant for mutant in MUTANTS if not args.only or mutant.name in args.only]
    if args.list:
        for mutant in mutants:
            print(f"{mutant.name:<36} {mutant.kind:<20} {mutant.claim}")
        return 0
    if args.check:
        outcomes = check(mutants)
        for o in outcomes:
            print(f"{o.status:<8} {o.mutant.name} {o.detail}")
        return 1 if any(o.status == "stale" for o in outcomes) else 0
    started = time.perf_counter()
    commit = source_version()  # before the copy is made: the code the mutants were planted in
    outcomes = run(mutants, baseline=not args.skip_baseline, jobs=max(1, args.jobs))
    text = table(outcomes, commit, time.perf_counter() - started)
    if args.write:
        args.write.write_text(text)
        print(f"written to {args.write}")
    else:
        print(text)
    unexplained = [o for o in outcomes if o.status != "killed" and not o.mutant.equivalent]
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
