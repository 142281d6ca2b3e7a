"""What a demo run is given: its settings, its workload and the keel.yaml it serves.

:class:`DemoConfig` holds every knob (the CLI's flags). :func:`load_workload` reads
BANKING77 by path — it is never copied — and splits it once, by the seed:

- ``train.csv`` is shuffled; its first ``calibration_size`` rows are the **calibration
  set** (labelled, never served, never reviewed, never trained on), the rest is the
  **traffic**, replayed in that order, each message once. A version is trained only on
  verdicts about messages already served, so every message it answers afterwards is new
  to it.
- ``test.csv`` gives the **gate set** (``gate_size`` rows, the same number per intent).

:func:`write_config` writes the served keel.yaml into the work folder: the ``intent``
feature of the given keel.yaml, unchanged but for absolute paths and the demo's canary
settings, so ``keel … --config WORKDIR/keel.yaml --db WORKDIR/keel.db`` works on it.
"""

from __future__ import annotations

import math
import os
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from keel.control.dataset_io import ReadOptions, read_items
from keel.control.datasets import Item
from keel.errors import ConfigError, KeelError

FEATURE = "intent"
ACTOR = "demo"  # who the control plane records for the demo's own changes
DEFAULT_DATA = "../shared/data/banking77"


def default_data_dir(config: Path, env: dict[str, str] | None = None) -> Path:
    """``$KEEL_BANKING77_DIR``, else ``../shared/data/banking77``; relative to keel.yaml's
    folder, as keel.yaml itself reads it."""
    env = dict(os.environ) if env is None else env
    raw = Path(env.get("KEEL_BANKING77_DIR") or DEFAULT_DATA)
    return raw if raw.is_absolute() else (config.resolve().parent / raw)


@dataclass(frozen=True, slots=True)
class DemoConfig:
    data: Path  # a folder with train.csv, test.csv and categories.json
    config: Path = Path("keel.yaml")  # where the intent feature comes from
    workdir: Path | None = None  # None: a new temporary folder
    cycles: int = 4
    traffic: int = 1000  # messages per serving phase (before the first cycle and after each)
    alpha: float = 0.1  # the error allowed among auto-accepted answers
    delta: float = 0.1  # the chance the calibration guarantee may fail
    reviewer_error: float = 0.05  # share of verdicts a simulated reviewer gets wrong
    review_cost_usd: float = 0.10  # assumed price of one human verdict
    gate_size: int = 770  # test.csv rows in the gate set, 10 per intent (0: all)
    calibration_size: int = 1500  # train.csv rows held out to calibrate thresholds
    canary_steps: tuple[float, ...] = (0.25, 0.5, 1.0)
    canary_min_calls: int = 100  # calls per version before a canary step is judged
    users: int = 500  # distinct users the traffic comes from (canary splits are by user)
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port
    plot: Path | None = None  # None: WORKDIR/demo.png (demo.svg without matplotlib)
    keep_serving: bool = False
    label_column: str = "category"
    batch: int = 50  # calls between review rounds and rollout-controller ticks
    eval_concurrency: int = 4  # per gate run; low: the gate compares p95s, not queueing

    def __post_init__(self) -> None:
        checks = [
            (self.cycles >= 1, "--cycles must be at least 1"),
            (self.traffic >= 10, "--traffic must be at least 10 messages"),
            (0 < self.alpha < 1 and 0 < self.delta < 1, "--alpha and --delta must be in (0, 1)"),
            (0 <= self.reviewer_error <= 1, "--reviewer-error must be in [0, 1]"),
            (self.review_cost_usd >= 0, "--review-cost must not be negative"),
            (self.gate_size >= 0, "--gate-size must not be negative"),
            (self.calibration_size >= 50, "--calibration-size must be at least 50"),
            (self.canary_min_calls >= 1, "--canary-min-calls must be at least 1"),
            (self.users >= 1, "--users must be at least 1"),
            (self.batch >= 1 and self.eval_concurrency >= 1, "batch and concurrency must be >= 1"),
            (0 <= self.port < 65536, "--port must be in [0, 65535]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def canary_budget(self) -> int:
        """Calls a canary needs when every step passes at its first judgement (the demo
        gives it three times as many before it rolls the canary back by hand)."""
        return sum(math.ceil(self.canary_min_calls / w) for w in self.canary_steps)

    def summary(self) -> dict[str, Any]:
        return {"data": str(self.data), "config": str(self.config), "cycles": self.cycles,
                "traffic": self.traffic, "alpha": self.alpha, "delta": self.delta,
                "reviewer_error": self.reviewer_error, "review_cost_usd": self.review_cost_usd,
                "gate_size": self.gate_size, "calibration_size": self.calibration_size,
                "canary_steps": list(self.canary_steps), "canary_min_calls": self.canary_min_calls,
                "users": self.users, "seed": self.seed, "batch": self.batch}


@dataclass(frozen=True, slots=True)
class Message:
    """One message of replayed traffic, with what the simulated reviewers know of it."""

    row: int  # its line in train.csv
    text: str
    label: str  # the true intent
    user: str
    slip: bool  # the reviewer who sees it errs
    wrong_label: str  # the label an erring reviewer picks when the output was right


@dataclass(frozen=True, slots=True)
class Workload:
    labels: list[str]
    traffic: list[Message]
    calibration: list[Item]  # split "calibration"
    golden: list[Item]  # split "golden"
    files: dict[str, str] = field(default_factory=dict)


def _labels(data: Path) -> list[str]:
    import orjson

    path = data / "categories.json"
    try:
        labels = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; --data must name a folder with train.csv, "
                          "test.csv and categories.json (BANKING77's layout)") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON ({exc})") from None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels) or len(labels) < 2:
        raise ConfigError(f"{path}: must be a JSON list of at least two label names")
    return labels


def _read(path: Path, label_column: str, split: str) -> list[Item]:
    try:
        items = read_items(path, "csv", ReadOptions(label_column=label_column, split=split))
    except KeelError as exc:
        raise ConfigError(exc.message) from None
    return items


def _label_of(item: Item) -> str:
    expected = item.expected
    label = expected.get("label") if isinstance(expected, dict) else None
    if not isinstance(label, str):
        raise ConfigError(f"{item.provenance.get('file')} line {item.provenance.get('line')}: "
                          "no label")
    return label


def load_workload(cfg: DemoConfig) -> Workload:
    """Read and split the data (see the module docstring); deterministic given the seed."""
    labels = _labels(cfg.data)
    known = set(labels)
    train = _read(cfg.data / "train.csv", cfg.label_column, "calibration")
    test = _read(cfg.data / "test.csv", cfg.label_column, "golden")
    for item in (*train, *test):
        if _label_of(item) not in known:
            raise ConfigError(f"{item.provenance.get('file')} line {item.provenance.get('line')}: "
                              f"label {_label_of(item)!r} is not in categories.json")
    rng = random.Random(cfg.seed)
    order = list(range(len(train)))
    rng.shuffle(order)
    need = cfg.calibration_size + (cfg.cycles + 1) * cfg.traffic + cfg.cycles * cfg.canary_budget()
    if need > len(train):
        raise ConfigError(
            f"{cfg.data / 'train.csv'} has {len(train)} messages; {cfg.cycles} cycles of "
            f"{cfg.traffic} messages, their canaries (~{cfg.canary_budget()} each) and a "
            f"calibration set of {cfg.calibration_size} need about {need}: lower --traffic, "
            "--cycles or --calibration-size")
    calibration = [train[i] for i in order[:cfg.calibration_size]]
    traffic: list[Message] = []
    for i in order[cfg.calibration_size:]:
        item, truth = train[i], _label_of(train[i])
        text = item.input.get("text")
        slip = rng.random() < cfg.reviewer_error
        wrong = rng.choice([x for x in labels if x != truth])
        user = f"user-{rng.randrange(cfg.users)}"
        line = item.provenance.get("line")
        traffic.append(Message(line if isinstance(line, int) else i, str(text), truth, user,
                               slip, wrong))
    golden = test
    if cfg.gate_size and cfg.gate_size < len(test):
        by_label: dict[str, list[Item]] = defaultdict(list)
        shuffled = list(test)
        rng.shuffle(shuffled)
        for item in shuffled:
            by_label[_label_of(item)].append(item)
        per_label, extra = divmod(cfg.gate_size, len(by_label))
        golden = []
        for n, label in enumerate(sorted(by_label)):
            golden += by_label[label][:per_label + (n < extra)]
    return Workload(labels, traffic, calibration, golden,
                    {"train": str(cfg.data / "train.csv"), "test": str(cfg.data / "test.csv")})


# --- the served keel.yaml ---------------------------------------------------------------


def _absolute(value: Any, base: Path) -> Any:
    if isinstance(value, str) and value and "${" not in value and not Path(value).is_absolute():
        return str((base / value).resolve())
    return value


def write_config(cfg: DemoConfig, workdir: Path) -> Path:
    """WORKDIR/keel.yaml: the ``intent`` feature of ``cfg.config`` with absolute paths, its
    labels from ``cfg.data`` and the demo's canary settings (steps, ``min_calls``, no
    ``min_step_s``: the demo judges a step as soon as both versions have the calls)."""
    try:
        raw = yaml.safe_load(cfg.config.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{cfg.config}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{cfg.config}: invalid YAML: {exc}") from None
    features = raw.get("features") if isinstance(raw, dict) else None
    if not isinstance(features, dict) or not isinstance(features.get(FEATURE), dict):
        raise ConfigError(f"{cfg.config}: no feature '{FEATURE}' (the demo serves BANKING77's "
                          "intent feature; see the repository's keel.yaml)")
    base = cfg.config.resolve().parent
    feature = dict(features[FEATURE])
    output = dict(feature.get("output") or {})
    if output.get("kind") != "label":
        raise ConfigError(f"{cfg.config}: features.{FEATURE}.output.kind must be 'label'")
    output["labels_file"] = str((cfg.data / "categories.json").resolve())
    output.pop("labels", None)
    if "label_descriptions_file" in output:
        output["label_descriptions_file"] = _absolute(output["label_descriptions_file"], base)
    feature["output"] = output
    versions = {}
    for name, version in (feature.get("versions") or {}).items():
        if isinstance(version, dict) and isinstance(version.get("params"), dict) \
                and "head" in version["params"]:
            params = {**version["params"], "head": _absolute(version["params"]["head"], base)}
            version = {**version, "params": params}
        versions[name] = version
    feature["versions"] = versions
    rollout = dict(feature.get("rollout") or {})
    rollout.update({"steps": list(cfg.canary_steps), "min_calls": cfg.canary_min_calls,
                    "min_step_s": 0})
    feature["rollout"] = rollout
    doc: dict[str, Any] = {k: raw[k] for k in ("providers", "pricing") if k in raw}
    doc["features"] = {FEATURE: feature}
    path = workdir / "keel.yaml"
    header = (f"# written by `keel demo` from {cfg.config.resolve()}: its '{FEATURE}' feature with\n"
              "# absolute paths and the demo's canary settings (docs/demo.md)\n")
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True),
                    encoding="utf-8")
    return path
