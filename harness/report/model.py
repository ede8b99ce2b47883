"""What a report is made of: runs (one machine type × guest, old build vs new build) and their set."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from harness.drift.impact import run_impact
from harness.drift.model import Comparison, Drift, Severity, severity_rank

RunStatus = Literal["compared", "unsupported", "error"]
Outcome = Literal["unchanged", "drift", "unsupported", "error"]
ReportVerdict = Literal["unchanged", "drift", "error"]
RUN_STATUSES: tuple[RunStatus, ...] = ("compared", "unsupported", "error")
OUTCOMES: tuple[Outcome, ...] = ("unchanged", "drift", "unsupported", "error")
EXIT_CODES: dict[str, int] = {"unchanged": 0, "drift": 1, "error": 2}


def decide(outcomes: Iterable[Outcome]) -> ReportVerdict:
    """The one verdict over runs, everywhere (check, the pytest plugin, `report --merge`, each
    matrix step and the matrix as a whole): "error" (could not decide) if a run errored or
    nothing was compared; "drift" if a compared run drifted; "error" if a run was not compared
    (unsupported); else "unchanged". An unsupported or errored run never gives "unchanged"."""
    seen = set(outcomes)
    unknown = seen - set(OUTCOMES)
    if unknown:
        raise ValueError(f"run outcome {min(unknown)!r} is not one of {', '.join(OUTCOMES)}")
    if "error" in seen or not seen & {"unchanged", "drift"}:
        return "error"
    if "drift" in seen:
        return "drift"
    return "error" if "unsupported" in seen else "unchanged"


def provenance(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """The build provenance recorded in a fingerprint's `source` (empty when there is none)."""
    source = fingerprint.get("source")
    build = source.get("build") if isinstance(source, Mapping) else None
    return dict(build) if isinstance(build, Mapping) else {}


def _source(fingerprint: Mapping[str, Any], key: str) -> str | None:
    source = fingerprint.get("source")
    value = source.get(key) if isinstance(source, Mapping) else None
    return value if isinstance(value, str) else None


def _image(fingerprint: Mapping[str, Any] | None) -> str | None:
    source = fingerprint.get("source") if isinstance(fingerprint, Mapping) else None
    image = source.get("image") if isinstance(source, Mapping) else None
    return image if isinstance(image, str) and image else None


def _config_hex(fingerprint: Mapping[str, Any] | None, key: str) -> str | None:
    pci = fingerprint.get("pci") if isinstance(fingerprint, Mapping) else None
    entry = pci.get(key) if isinstance(pci, Mapping) else None
    config = entry.get("config_hex") if isinstance(entry, Mapping) else None
    return config if isinstance(config, str) and config else None


# {"old": value, "new": value}: a fact of the run on each side.
Sides = Mapping[str, str | None]
MigrationStatus = Literal["ok", "failed", "skipped"]


@dataclass(frozen=True)
class Migration:
    """A run's live migration (--migrate): `status` ok (every leg), failed (a leg failed: `error`
    is the first failure) or skipped (not tried: `error` says why); `direction` forward or both;
    `legs` one dict per migration (direction, status, seconds, error, source, destination,
    section, device: harness.migrate.Leg.as_dict)."""

    status: MigrationStatus
    direction: str
    seconds: float | None = None
    error: str | None = None
    legs: tuple[Mapping[str, Any], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "direction": self.direction,
                               "seconds": None if self.seconds is None else round(float(self.seconds), 3),
                               "error": self.error}
        if self.legs:
            out["legs"] = [dict(leg) for leg in self.legs]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Migration:
        seconds = data.get("seconds")
        return cls(data["status"], data["direction"], float(seconds) if seconds is not None else None,
                   data.get("error"), tuple(dict(leg) for leg in data.get("legs") or ()))


@dataclass(frozen=True)
class Run:
    """One comparison: a machine type and guest profile, booted under the old and the new build.

    `status` is "compared" (then `comparison` is set), "unsupported" (a build cannot run this
    profile or machine type; `reason` says why) or "error" (could not decide; `reason`).

    Optional facts that reports show when known: `seconds` (wall time of the run), `image` (the
    reference image hash booted on each side) and `config` (per drifted PCI device key, its
    config space in hex on each side); `with_fingerprints` takes the last two from fingerprints.
    `recorded_impact` is the run impact a JSON report recorded (`impact` recomputes it from the
    drifts otherwise). `migration` is the run's live migration when --migrate asked for one."""

    machine: str
    guest: str
    old: Mapping[str, Any] = field(default_factory=dict)
    new: Mapping[str, Any] = field(default_factory=dict)
    status: RunStatus = "compared"
    reason: str | None = None
    comparison: Comparison | None = None
    seconds: float | None = None
    image: Sides | None = None
    config: Mapping[str, Sides] = field(default_factory=dict)
    recorded_impact: Mapping[str, Any] | None = None
    migration: Migration | None = None

    def __post_init__(self) -> None:
        if self.status not in RUN_STATUSES:
            raise ValueError(f"run status {self.status!r} is not one of {', '.join(RUN_STATUSES)}")
        if self.status == "compared" and self.comparison is None:
            raise ValueError("a compared run needs its comparison")
        if self.status != "compared" and not self.reason:
            raise ValueError(f"an {self.status} run needs a reason")

    @classmethod
    def from_fingerprints(cls, old: Mapping[str, Any], new: Mapping[str, Any], comparison: Comparison) -> Run:
        """A compared run, machine/guest/provenance taken from the fingerprints' `source`."""
        return cls(machine=_pair(_source(old, "machine"), _source(new, "machine")),
                   guest=_pair(_source(old, "guest"), _source(new, "guest")),
                   old=provenance(old), new=provenance(new), comparison=comparison)

    @classmethod
    def failed(cls, reason: str, old: Mapping[str, Any] | None = None, new: Mapping[str, Any] | None = None,
               status: RunStatus = "error") -> Run:
        """An error (or unsupported) run, with what is known of the fingerprints that did load."""
        o, n = old or {}, new or {}
        return cls(machine=_pair(_source(o, "machine"), _source(n, "machine")),
                   guest=_pair(_source(o, "guest"), _source(n, "guest")),
                   old=provenance(o), new=provenance(n), status=status, reason=reason)

    def with_fingerprints(self, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> Run:
        """This run with the facts its fingerprints hold: the image hashes and, per drifted PCI
        device, its config space on each side."""
        old_image, new_image = _image(old), _image(new)
        config: dict[str, Sides] = {}
        for drift in self.drifts:
            if drift.category == "pci" and drift.key and drift.key not in config:
                old_hex, new_hex = _config_hex(old, drift.key), _config_hex(new, drift.key)
                if old_hex or new_hex:
                    config[drift.key] = {"old": old_hex, "new": new_hex}
        return replace(self, image={"old": old_image, "new": new_image} if old_image or new_image else None,
                       config=config)

    @property
    def drifts(self) -> tuple[Drift, ...]:
        """The drifts of a compared run (none for an unsupported or error run)."""
        return self.comparison.drifts if self.comparison is not None and self.status == "compared" else ()

    @property
    def impact(self) -> dict[str, dict[str, Any]] | None:
        """What the guests do about this run: per OS ("windows", "linux") the worst level of its
        unwaived drifts and the components at that level (`harness.drift.impact.run_impact`);
        None for a run that was not compared."""
        if self.status != "compared":
            return None
        if self.recorded_impact is not None:
            return {os_name: {"level": str(side["level"]), "components": [str(c) for c in side["components"]]}
                    for os_name, side in self.recorded_impact.items()}
        return run_impact(self.drifts)

    @property
    def name(self) -> str:
        return f"{self.machine}, guest {self.guest}"

    def outcome(self, fail_on: Severity = "warn") -> Outcome:
        if self.status == "error":
            return "error"
        if self.status == "unsupported":
            return "unsupported"
        assert self.comparison is not None
        return self.comparison.verdict(fail_on)


def _pair(old: str | None, new: str | None) -> str:
    if old == new or new is None:
        return old or "?"
    if old is None:
        return new
    return f"{old} → {new}"


# The most shards a check is split into (--shard I/N, a report's "shard" record): far more CI
# runners than a check has runs is not a plan, and a count is read from hostile reports too.
MAX_SHARDS = 1000


@dataclass(frozen=True)
class ShardInfo:
    """Which slice of a check a RunSet holds: shard `index` of `count`, and every (machine, guest)
    run of the whole check (`planned`), so that a merge can tell a complete set of shards from
    one that lacks a shard or a run."""

    index: int
    count: int
    planned: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count <= MAX_SHARDS:
            raise ValueError(f"shard {self.index}/{self.count}: expected 1 <= I <= N <= {MAX_SHARDS}")

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "count": self.count, "planned": [list(case) for case in self.planned]}


@dataclass(frozen=True)
class RunSet:
    """All runs of one check, and the overall verdict (`decide`): error if any run errored (or
    nothing was compared at all), drift if any run has unwaived drift at `fail_on` or above, error
    if any run was not compared (unsupported), else unchanged.

    `seconds` (the whole check's wall time), `generated` (ISO 8601) and `qabi_version` (the qabi
    that made it, when read back from a report) are shown when known. `details` is False for a
    RunSet read back from a JSON report written without its detail fields: its drifts then have
    no keys or longer text, its stale waivers and compared categories are unknown, and its
    `fail_on` was inferred from the verdict. `shard` is set on one shard's RunSet (`--shard I/N`):
    its verdict is that shard's alone until `qabi report --merge` has every shard."""

    runs: tuple[Run, ...]
    fail_on: Severity = "warn"
    seconds: float | None = None
    generated: str | None = None
    qabi_version: str | None = None
    details: bool = True
    shard: ShardInfo | None = None

    def __post_init__(self) -> None:
        severity_rank(self.fail_on)

    @property
    def verdict(self) -> ReportVerdict:
        """`decide` over the runs' outcomes at this RunSet's fail-on threshold."""
        return decide(run.outcome(self.fail_on) for run in self.runs)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]


def as_runset(result: RunSet | Run | Comparison, fail_on: Severity = "warn") -> RunSet:
    """Accept a bare Comparison or Run where a RunSet is expected."""
    if isinstance(result, RunSet):
        return result
    if isinstance(result, Run):
        return RunSet((result,), fail_on)
    return RunSet((Run(machine="?", guest="?", comparison=result),), fail_on)
