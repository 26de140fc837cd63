"""Compiled trees for `housing predict`: a LightGBM model's trees as C, built once, cached.

Why hand-written: ``make bench-predict`` found LightGBM's ``booster.predict`` to be about 75%
of the local engine's time (2.35 s of a 65,536-row batch on one core). The same trees as
nested ``if``s in C, compiled with ``cc -O1``, take a third of that and give the *same*
numbers (max abs difference 0.0 against ``booster.predict`` on the real champion). The
library that does this, Treelite + TL2cgen, was measured first and is not exact here: its
generated code marks a feature missing by reading the low 32 bits of the double
(``union Entry {int missing; double fvalue;}``, missing when they equal -1), so a value whose
low mantissa bits are all ones (225.99999999999997, common in derived ratios) is taken as
missing and goes the default way: 3,201 of 65,536 predictions differed by up to 0.42.
lleaves (LLVM) needs llvmlite < 0.44 and took 332 s to compile this model.

What is reproduced, from LightGBM 4's ``Tree::NumericalDecision`` and its dense row reader:
an input with ``|x| <= kZeroThreshold`` (1e-35f) is 0.0; for a split whose missing type is
not NaN a NaN input is 0.0; missing type Zero sends ``|x| <= kZeroThreshold`` the default way,
missing type NaN sends NaN the default way; otherwise ``x <= threshold`` goes left. The
trees are summed in order from 0.0, as ``GBDT::PredictRaw`` does. A model outside that
(categorical splits, linear trees, several outputs per row) is not compiled; and a compiled
library is used only after it gave exactly what the model's own predict gives on the check
rows (``compiled_predict``), so any other difference means LightGBM is used.

Each library also holds one worker thread (``CompiledTrees.start``, started at its first
use): ``housing serve`` hands it a micro-batch's trees and goes on answering on its event
loop; the thread never takes Python's GIL and signals through an eventfd.

The libraries are cached by the model file's sha256, the compiler and the flags
(``predict.compile_cache``, default ``$XDG_CACHE_HOME/housing-mlops/trees``): a model is
compiled once per machine. A cached library is native code run in this process, so it is
only loaded from a folder and file owned by the current user that nobody else can write.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from housing_mlops.models import ResidualCorrected

#: Bumped when the generated code changes meaning (part of the cache key). 3: the worker
#: thread (``housing_predict_rows_async``).
CODEGEN_VERSION = "3"
CFLAGS = ("-O1", "-fPIC")
# Translation units compiled side by side (one per core on this 2-core machine).
_UNITS = 2
_SYMBOL = "housing_predict_rows"
_ASYNC_SYMBOL = "housing_predict_rows_async"
# Rows per block of the tree-by-tree loop (see ``generate_sources``).
_BLOCK = 1024
# LightGBM's kZeroThreshold is the float 1e-35f, compared as a double.
_ZERO = "1.00000001800250948e-35"
COMPILE_TIMEOUT_S = 900


class NotCompilable(Exception):
    """The model (or this machine) cannot use compiled trees; the message says why."""


@dataclass(frozen=True)
class CompiledTrees:
    """A loaded library: ``predict(X)`` for a float64 (n x features) array."""

    path: Path
    features: int
    trees: int
    seconds: float  # spent compiling now (0.0 when it came from the cache)
    cached: bool
    _lib: Any

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.features:
            raise ValueError(f"expected {self.features} columns, got {X.shape}")
        out = np.empty(X.shape[0], dtype=np.float64)
        # ctypes releases the GIL for the call: batches on other threads run alongside.
        status = getattr(self._lib, _SYMBOL)(
            X.ctypes.data_as(ctypes.c_void_p),
            ctypes.c_long(X.shape[0]),
            out.ctypes.data_as(ctypes.c_void_p),
        )
        if status != 0:
            raise MemoryError("the compiled trees could not allocate their row blocks")
        return out

    def start(self, X: np.ndarray, out: np.ndarray, status: np.ndarray, eventfd: int) -> bool:
        """Begin ``predict`` of ``X`` on the library's own worker thread and return at once:
        when ``out`` holds the answers (``status[0]``: 0, or -1 when the row blocks could not
        be allocated) the thread adds 1 to the counter of ``eventfd``. One job at a time
        per library; False (nothing started) while one runs or when the thread cannot be
        created. ``X`` (C-contiguous float64, n x features), ``out`` (n float64) and
        ``status`` (1 int32) must stay alive and untouched until the event: the caller
        keeps them. The thread never takes Python's GIL."""
        if not (
            X.flags.c_contiguous
            and X.dtype == np.float64
            and X.ndim == 2
            and X.shape[1] == self.features
            and out.flags.c_contiguous
            and out.dtype == np.float64
            and out.shape == (X.shape[0],)
            and status.dtype == np.int32
            and status.shape == (1,)
        ):
            raise ValueError("start needs C-contiguous float64 rows, their output and a status")
        code = getattr(self._lib, _ASYNC_SYMBOL)(
            X.ctypes.data_as(ctypes.c_void_p),
            ctypes.c_long(X.shape[0]),
            out.ctypes.data_as(ctypes.c_void_p),
            status.ctypes.data_as(ctypes.c_void_p),
            ctypes.c_int(eventfd),
        )
        return bool(code == 0)


@dataclass(frozen=True)
class StagedPredict:
    """``predict(X)`` of a pipeline with compiled trees, in its two stages: ``stage``
    (the pipeline's own steps on numpy, which hold the GIL: the trees' input, and what to
    add to their sum, or None) and ``trees`` (the compiled library, which does not need the
    GIL and can run on its worker thread: ``trees.start``). Calling it runs both here, as
    any predict function."""

    stage: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]
    trees: CompiledTrees

    def __call__(self, X: np.ndarray) -> np.ndarray:
        Z, add = self.stage(X)
        return finish(self.trees.predict(Z), add)


def finish(trees_sum: np.ndarray, add: np.ndarray | None) -> np.ndarray:
    """The prediction from the trees' sum and what the stage said to add (in place)."""
    if add is not None:
        trees_sum += add
    return trees_sum


# ------------------------------------------------------------------------ codegen
def _node(node: dict[str, Any], out: list[str], depth: int) -> None:
    pad = "  " * depth
    if "split_feature" not in node:
        if "leaf_coeff" in node:
            raise NotCompilable("the model has linear trees")
        out.append(f"{pad}return {float(node['leaf_value'])!r};")
        return
    if node.get("decision_type") != "<=":
        raise NotCompilable("the model has categorical splits")
    f = int(node["split_feature"])
    thr = repr(float(node["threshold"]))
    default = "1" if node.get("default_left") else "0"
    missing = node.get("missing_type", "None")
    if missing == "None":
        cond = f"z[{f}] <= {thr}"
    elif missing == "Zero":
        cond = f"(z[{f}] >= -{_ZERO} && z[{f}] <= {_ZERO}) ? {default} : (z[{f}] <= {thr})"
    elif missing == "NaN":
        cond = f"isnan(x[{f}]) ? {default} : (x[{f}] <= {thr})"
    else:
        raise NotCompilable(f"unknown missing type {missing!r}")
    out.append(f"{pad}if ({cond}) {{")
    _node(node["left_child"], out, depth + 1)
    out.append(f"{pad}}} else {{")
    _node(node["right_child"], out, depth + 1)
    out.append(f"{pad}}}")


_MAIN_INCLUDES = [
    "#include <errno.h>",
    "#include <pthread.h>",
    "#include <stdint.h>",
    "#include <stdlib.h>",
    "#include <unistd.h>",
]

# The service's event loop hands a micro-batch's trees to this thread and goes on with other
# requests; the thread never touches Python (no GIL), and says "done" through an eventfd the
# loop watches. A Python thread was measured first and lost: it needs the GIL to take the job
# and to hand back the answer, and the busy event loop kept it waiting (README, levers).
# Started at the first call; one job at a time (the caller waits for the event).
_WORKER_SOURCE = f"""
static pthread_mutex_t job_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t job_cv = PTHREAD_COND_INITIALIZER;
static int job_ready = 0, job_busy = 0, worker_started = 0;
static const double* job_x;
static long job_n;
static double* job_y;
static int* job_status;
static int job_fd;

static void* housing_worker(void* unused) {{
  (void)unused;
  for (;;) {{
    pthread_mutex_lock(&job_mu);
    while (!job_ready) pthread_cond_wait(&job_cv, &job_mu);
    job_ready = 0;
    const double* x = job_x;
    long n = job_n;
    double* y = job_y;
    int* status = job_status;
    int fd = job_fd;
    pthread_mutex_unlock(&job_mu);
    *status = {_SYMBOL}(x, n, y);
    pthread_mutex_lock(&job_mu);
    job_busy = 0;
    pthread_mutex_unlock(&job_mu);
    uint64_t one = 1;
    while (write(fd, &one, sizeof one) < 0 && errno == EINTR) {{}}
  }}
  return NULL;
}}

int {_ASYNC_SYMBOL}(const double* X, long n, double* y, int* status, int fd) {{
  pthread_mutex_lock(&job_mu);
  if (!worker_started) {{
    pthread_t thread;
    if (pthread_create(&thread, NULL, housing_worker, NULL) != 0) {{
      pthread_mutex_unlock(&job_mu);
      return -1;
    }}
    pthread_detach(thread);
    worker_started = 1;
  }}
  if (job_busy) {{
    pthread_mutex_unlock(&job_mu);
    return -2;
  }}
  job_x = X;
  job_n = n;
  job_y = y;
  job_status = status;
  job_fd = fd;
  job_busy = 1;
  job_ready = 1;
  pthread_cond_signal(&job_cv);
  pthread_mutex_unlock(&job_mu);
  return 0;
}}
"""


def generate_sources(dump: dict[str, Any], units: int = _UNITS) -> tuple[list[str], int, int]:
    """C sources for ``booster.dump_model()``: ``units`` files of tree functions and a main
    file; returns (sources, features, trees). Raises NotCompilable."""
    if int(dump.get("num_class", 1)) != 1 or int(dump.get("num_tree_per_iteration", 1)) != 1:
        raise NotCompilable("the model has more than one output per row")
    trees = dump.get("tree_info") or []
    if not trees:
        raise NotCompilable("the model has no trees")
    features = int(dump["max_feature_idx"]) + 1
    head = ["#include <math.h>", ""]
    per_unit = -(-len(trees) // units)
    sources: list[str] = []
    for u in range(units):
        body = list(head)
        for i in range(u * per_unit, min(len(trees), (u + 1) * per_unit)):
            body.append(f"double housing_tree_{i}(const double* x, const double* z) {{")
            _node(trees[i]["tree_structure"], body, 1)
            body.append("}")
        sources.append("\n".join(body) + "\n")
    # Tree by tree over a block of rows, not row by row over every tree: one tree's code
    # (a few kB) stays in the instruction cache for the whole block, where a row walked the
    # whole model (megabytes of code) each time. Each row still sums its trees in order
    # from 0.0, so the sum is LightGBM's to the bit.
    main = [*head, *_MAIN_INCLUDES, "", f"#define BLOCK {_BLOCK}"]
    main += [
        f"double housing_tree_{i}(const double* x, const double* z);" for i in range(len(trees))
    ]
    main += ["typedef double (*housing_tree_fn)(const double*, const double*);"]
    main += [f"static const housing_tree_fn TREES[{len(trees)}] = {{"]
    main += [f"  housing_tree_{i}," for i in range(len(trees))]
    main += ["};"]
    main += [
        f"int {_SYMBOL}(const double* X, long n, double* y) {{",
        f"  double* xb = malloc(sizeof(double) * BLOCK * {features});",
        f"  double* zb = malloc(sizeof(double) * BLOCK * {features});",
        "  double* acc = malloc(sizeof(double) * BLOCK);",
        "  if (!xb || !zb || !acc) { free(xb); free(zb); free(acc); return -1; }",
        "  for (long start = 0; start < n; start += BLOCK) {",
        "    long m = n - start < BLOCK ? n - start : BLOCK;",
        "    for (long r = 0; r < m; ++r) {",
        f"      const double* row = X + (start + r) * {features};",
        f"      for (int j = 0; j < {features}; ++j) {{",
        "        double v = row[j];",
        f"        if (!isnan(v) && v >= -{_ZERO} && v <= {_ZERO}) v = 0.0;",
        f"        xb[r * {features} + j] = v;",
        f"        zb[r * {features} + j] = isnan(v) ? 0.0 : v;",
        "      }",
        "      acc[r] = 0.0;",
        "    }",
        f"    for (int t = 0; t < {len(trees)}; ++t) {{",
        "      housing_tree_fn tree = TREES[t];",
        "      for (long r = 0; r < m; ++r) {",
        f"        acc[r] += tree(xb + r * {features}, zb + r * {features});",
        "      }",
        "    }",
        "    for (long r = 0; r < m; ++r) y[start + r] = acc[r];",
        "  }",
        "  free(xb); free(zb); free(acc);",
        "  return 0;",
        "}",
        _WORKER_SOURCE,
    ]
    sources.append("\n".join(main) + "\n")
    return sources, features, len(trees)


# ------------------------------------------------------------------------ build + cache
def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "housing-mlops" / "trees"


def find_compiler() -> str | None:
    """The C compiler: ``$CC`` or ``cc`` on PATH (None when there is none)."""
    return shutil.which(os.environ.get("CC") or "cc")


def _compiler_id(cc: str) -> str:
    try:
        done = subprocess.run(  # noqa: S603 - the user's own compiler, fixed arguments
            [cc, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise NotCompilable(f"the C compiler {cc} does not run: {exc}") from None
    return done.stdout.splitlines()[0] if done.stdout else cc


def _trusted(path: Path) -> bool:
    """Owned by us and writable by nobody else (the file and its folder)."""
    try:
        for p in (path, path.parent):
            st = p.stat()
            if st.st_uid != os.getuid() or st.st_mode & 0o022:
                return False
    except OSError:
        return False
    return True


def _load(path: Path) -> Any:
    lib = ctypes.CDLL(str(path))
    try:
        fn = getattr(lib, _SYMBOL)
        start = getattr(lib, _ASYNC_SYMBOL)
    except AttributeError as exc:  # not a library this code generated
        raise OSError(f"{path}: {exc}") from None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p)
    fn.restype = ctypes.c_int
    start.argtypes = (
        ctypes.c_void_p,
        ctypes.c_long,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int,
    )
    start.restype = ctypes.c_int
    return lib


def _compile(cc: str, sources: list[str], target: Path) -> None:
    """Compile the units side by side, link, and move the library to ``target``."""
    with tempfile.TemporaryDirectory(prefix="housing-trees-") as tmp:
        files = []
        for i, text in enumerate(sources):
            src = Path(tmp) / f"unit{i}.c"
            src.write_text(text)
            files.append(src)
        objects = [f.with_suffix(".o") for f in files]
        procs = [
            subprocess.Popen(  # noqa: S603 - fixed arguments
                [cc, *CFLAGS, "-c", str(src), "-o", str(obj)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for src, obj in zip(files, objects, strict=True)
        ]
        errors = []
        for proc in procs:
            try:
                _, err = proc.communicate(timeout=COMPILE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
                errors.append(f"timed out after {COMPILE_TIMEOUT_S} s")
                continue
            if proc.returncode:
                lines = (err or "").strip().splitlines()
                errors.append(lines[-1] if lines else f"exit {proc.returncode}")
        if errors:
            raise NotCompilable(f"{cc} failed: {errors[0]}")
        lib = Path(tmp) / "trees.so"
        linked = subprocess.run(  # noqa: S603 - fixed arguments
            [cc, "-shared", "-pthread", "-o", str(lib), *map(str, objects), "-lm"],
            capture_output=True,
            text=True,
            timeout=COMPILE_TIMEOUT_S,
            check=False,
        )
        if linked.returncode:
            raise NotCompilable(f"{cc} could not link: {linked.stderr.strip()[-200:]}")
        lib.chmod(0o600)
        staged = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.copyfile(lib, staged)
        staged.chmod(0o600)
        os.replace(staged, target)  # atomic: a concurrent run sees the old one or this one


def library_path(model_key: str, cache_dir: Path | None = None) -> Path | None:
    """Where the compiled trees of the model ``model_key`` (its sha256) are cached with this
    compiler (None without a compiler). The model's hash decides its trees, so the source
    need not be generated to find them."""
    cc = find_compiler()
    if cc is None:
        return None
    key = hashlib.sha256(
        "\0".join([CODEGEN_VERSION, _compiler_id(cc), " ".join(CFLAGS), model_key]).encode()
    ).hexdigest()[:32]
    return (cache_dir or default_cache_dir()) / f"lightgbm-{key}.so"


def is_cached(model_key: str, cache_dir: Path | None = None) -> bool:
    """Whether a usable compiled library of this model is already in the cache."""
    try:
        path = library_path(model_key, cache_dir)
    except NotCompilable:
        return False
    return path is not None and path.exists() and _trusted(path)


def build(booster: Any, model_key: str, cache_dir: Path | None = None) -> CompiledTrees:
    """The compiled trees of a LightGBM ``booster`` (``model_key``: the model file's
    sha256), from the cache or compiled now. Raises NotCompilable (an unsupported model, no
    compiler, a failed compile)."""
    cc = find_compiler()
    target = library_path(model_key, cache_dir)
    if cc is None or target is None:
        raise NotCompilable("no C compiler: install gcc (or set CC)")
    dump = booster.dump_model()
    sources, features, trees = generate_sources(dump)
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise NotCompilable(f"cannot create the cache folder {target.parent}: {exc}") from None
    started = time.perf_counter()
    cached = target.exists() and _trusted(target)
    if not cached:
        if not _trusted(target.parent):
            raise NotCompilable(
                f"the cache folder {target.parent} is not ours alone: chmod go-w it"
            )
        _compile(cc, sources, target)
    seconds = 0.0 if cached else time.perf_counter() - started
    try:
        lib = _load(target)
    except OSError as exc:  # a damaged cached file: build it again, once
        if not cached:
            raise NotCompilable(f"the compiled trees do not load: {exc}") from None
        with contextlib.suppress(OSError):
            target.unlink()
        return build(booster, model_key, cache_dir)
    return CompiledTrees(target, features, trees, seconds, cached, lib)


def load_bytes(blob: bytes, features: int, trees: int) -> CompiledTrees:
    """A library shipped as bytes (a Spark executor): written to a private temporary
    folder and loaded from there."""
    folder = Path(tempfile.mkdtemp(prefix="housing-trees-"))
    path = folder / "trees.so"
    path.write_bytes(blob)
    path.chmod(0o600)
    return CompiledTrees(path, features, trees, 0.0, True, _load(path))


# ------------------------------------------------------------------------ the model
def lightgbm_booster(pipeline: Any) -> Any | None:
    """The booster of a pipeline whose final step is a LightGBM model, alone or inside
    ``ResidualCorrected`` (else None)."""
    est = pipeline.steps[-1][1] if hasattr(pipeline, "steps") else pipeline
    if isinstance(est, ResidualCorrected):
        est = getattr(est, "estimator_", None)
    if not type(est).__module__.startswith("lightgbm"):
        return None
    return getattr(est, "booster_", None)


def compiled_predict(model: Any, trees: CompiledTrees, check: np.ndarray) -> StagedPredict:
    """``model.predict`` with the compiled trees in place of LightGBM's: the pipeline's
    feature steps on numpy, then the library. Raises NotCompilable unless it gives exactly
    the model's own predictions on ``check`` (rows of the 8 raw features)."""
    steps = [step for _, step in model.pipeline.steps[:-1]]
    final = model.pipeline.steps[-1][1]
    corrected = final if isinstance(final, ResidualCorrected) else None

    def stage(X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        for step in steps:
            X = step.transform(X)
        if corrected is not None:
            return corrected.split(X)
        return np.ascontiguousarray(X, dtype=np.float64), None

    predict = StagedPredict(stage, trees)
    want = np.asarray(model.predict(check), dtype=np.float64)
    got = predict(check)
    if got.shape != want.shape or not np.array_equal(got, want):
        diff = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("nan")
        raise NotCompilable(f"the compiled trees differ from LightGBM's (max {diff:.3g})")
    return predict
