"""Comparers of the host-side categories: migration, vmstate, props (harness/fingerprint/host.py).

migration: the old side holds what is expected (status ok, the guest's hardware before it moved),
the new side what happened (status, the destination's error, the hardware after it moved). A
failed leg is one drift naming the device (or section) the destination refused; a leg that
succeeded is compared category by category, every guest-side drift re-filed under `migration`
with the leg in its subject and the category in its path (`pci.capabilities[MSI-X]...`).

vmstate: per device type, per section of its schema, with the direction that breaks as the
first part of the path (`breaks-old-to-new:`, `breaks-new-to-old:`, `breaks-both:`,
`compatible:`; `one-dump:` for a section only one build's dump lists). Field names are not in
the stream: a field renamed in place is `compatible`; a struct's C size is not compared, its
nested description is. A stream is loaded when the destination's minimum_version_id <= the source's
version_id <= the destination's version_id; a field is sent when it is in the source's
description and loaded when it is in the destination's with a version_id <= the stream's; a
subsection is sent only when needed, and a destination that does not know it fails.

props: per device, per property; `only-old.NAME` / `only-new.NAME` for a property one build
does not have, `NAME` for a changed value (an `x-*` compat property names itself). A device's
changes that the same policy row decides are folded into one drift with a count (`only-new.NAME
(+189 more)`, old and new as {name: value}, the names listed in its detail): a new vCPU model's 190
new properties are one entry, not 190 lines, in text, HTML and pytest messages alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness.drift.common import make_drift, presence_drift
from harness.drift.model import Change, Drift
from harness.drift.policy import rule_for
from harness.fingerprint.host import is_hyperv_prop

BOTH, FORWARD, ROLLBACK, COMPATIBLE = "breaks-both", "breaks-old-to-new", "breaks-new-to-old", "compatible"
ONE_DUMP = "one-dump"


# -- migration ---------------------------------------------------------------------------------------

def compare_migration(old: dict[str, Any], new: dict[str, Any]) -> list[Drift]:
    from harness.categories import get, guest_names

    drifts: list[Drift] = []
    for leg in sorted(old.keys() | new.keys()):
        if leg not in old or leg not in new:
            drifts.append(presence_drift("migration", leg, f"migration {leg}", leg, added=leg not in old))
            continue
        o, n = old[leg], new[leg]
        route = f"{n.get('source')} → {n.get('destination')}"
        if n.get("status") != "ok":
            where = n.get("device") or n.get("section")
            named = f", section {n['section']}" if n.get("section") and n.get("section") != where else ""
            subject = f"migration {leg} ({route})" + (f": device {where}{named}" if where else "")
            drifts.append(make_drift("migration", leg, subject, "status", o.get("status"),
                                     f"failed: {n.get('error') or 'no reason'}", detail=n.get("error")))
            continue
        before, after = o.get("hardware"), n.get("hardware")
        if not isinstance(before, dict) or not isinstance(after, dict):
            drifts.append(make_drift("migration", leg, f"migration {leg} ({route})", "hardware",
                                     "captured" if before else None, "captured" if after else None))
            continue
        for category in guest_names():
            for d in get(category).compare(before[category], after[category]):
                path = f"{category}.{d.path}" if d.path else category
                drifts.append(make_drift("migration", leg, f"migration {leg}: {d.subject}", path, d.old, d.new,
                                         d.change, detail=d.detail, key=f"{leg}/{category}/{d.key}"))
    return drifts


# -- vmstate -----------------------------------------------------------------------------------------

def _label(forward_breaks: bool, rollback_breaks: bool) -> str:
    if forward_breaks and rollback_breaks:
        return BOTH
    return FORWARD if forward_breaks else ROLLBACK if rollback_breaks else COMPATIBLE


def _fields(desc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A description's fields by name (`name#2` for a repeated one, e.g. `unused`)."""
    out: dict[str, dict[str, Any]] = {}
    for field in desc.get("Fields") or ():
        if not isinstance(field, dict):
            continue
        name = str(field.get("field", "?"))
        key, n = name, 2
        while key in out:
            key, n = f"{name}#{n}", n + 1
        out[key] = field
    return out


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


_NOT_LAYOUT = ("field", "version_id", "field_exists", "Description")


def _same_layout(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two fields put the same bytes in the stream, as far as both dumps tell: the keys
    both have (newer QEMUs add `num`), without `size` for a struct (the C struct's size, not the
    stream's: its nested description is compared instead). Field names are not in the stream."""
    struct = isinstance(a.get("Description"), dict) and isinstance(b.get("Description"), dict)
    keys = (a.keys() & b.keys()) - set(_NOT_LAYOUT) - ({"size"} if struct else set())
    return all(a[k] == b[k] for k in keys)


def _renames(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Old field name → new name for a field renamed in place (same position, same layout)."""
    olist, nlist = list(old), list(new)
    out = {}
    for i, name in enumerate(olist):
        if name not in new and i < len(nlist) and nlist[i] not in old and _same_layout(old[name], new[nlist[i]]) \
                and old[name].get("version_id") == new[nlist[i]].get("version_id"):
            out[name] = nlist[i]
    return out


def _describe(section: str, path: str, old: dict[str, Any], new: dict[str, Any], o_ver: int, n_ver: int,
              nested: bool, out: list[Drift], subject: str) -> None:
    """Drifts between two descriptions; `o_ver`/`n_ver` are the stream versions each side sends."""
    def add(label: str, where: str, a: Any, b: Any, change: str = "changed") -> None:
        out.append(make_drift("vmstate", section, subject, f"{label}:{path}{where}", a, b,
                              change, key=section))  # type: ignore[arg-type]

    of, nf = _fields(old), _fields(new)
    renamed = _renames(of, nf)
    for old_name, new_name in renamed.items():
        add(COMPATIBLE, f"fields.{old_name}", old_name, new_name)   # names are not in the stream
        nf[old_name] = nf.pop(new_name)
    for name in list(of) + [n for n in nf if n not in of]:
        a, b = of.get(name), nf.get(name)
        if a is not None and b is not None and a == b:
            continue
        a_ver, b_ver = _int((a or {}).get("version_id")), _int((b or {}).get("version_id"))
        if nested:  # a nested struct carries no version: a field on one side only breaks both ways
            fwd = rb = a is None or b is None
        else:
            # forward: old sends a; new loads b when b.version_id <= old's stream version
            fwd = (a is not None) != (b is not None and b_ver <= o_ver)
            # rollback: new sends b; old loads a when a.version_id <= new's stream version
            rb = (b is not None) != (a is not None and a_ver <= n_ver)
        if a is not None and b is not None:
            if not _same_layout(a, b):
                fwd = rb = True
            sub_a, sub_b = a.get("Description"), b.get("Description")
            if isinstance(sub_a, dict) and isinstance(sub_b, dict) and (fwd, rb) == (False, False):
                if sub_a != sub_b:   # a nested struct: its own description, compared field by field
                    _describe(section, f"{path}fields.{name}.", sub_a, sub_b, 0, 0, True, out, subject)
                continue
            if (fwd, rb) == (False, False) and _int(a.get("version_id")) == _int(b.get("version_id")):
                continue     # only what one dump does not say (e.g. `num`) differs
            add(_label(fwd, rb), f"fields.{name}", _field_text(a), _field_text(b))
        else:
            add(_label(fwd, rb), f"fields.{name}", _field_text(a), _field_text(b),
                "added" if a is None else "removed")
    osub = {str(s.get("name")): s for s in old.get("Subsections") or () if isinstance(s, dict)}
    nsub = {str(s.get("name")): s for s in new.get("Subsections") or () if isinstance(s, dict)}
    for name in sorted(osub.keys() | nsub.keys()):
        a, b = osub.get(name), nsub.get(name)
        if a is None or b is None:
            # sent when needed; a destination that does not know a subsection refuses the stream
            add(ROLLBACK if a is None else FORWARD, f"subsections.{name}", None if a is None else "present",
                None if b is None else "present", "added" if a is None else "removed")
            continue
        _versions(section, f"{path}subsections.{name}.", a, b, out, subject)


def _field_text(field: dict[str, Any] | None) -> Any:
    if field is None:
        return None
    shape = {k: v for k, v in field.items() if k in ("version_id", "size")}
    return shape


def _versions(section: str, path: str, old: dict[str, Any], new: dict[str, Any], out: list[Drift],
              subject: str) -> None:
    o_ver, o_min = _int(old.get("version_id")), _int(old.get("minimum_version_id"))
    n_ver, n_min = _int(new.get("version_id")), _int(new.get("minimum_version_id"))
    fwd = not n_min <= o_ver <= n_ver     # new loads old's stream
    rb = not o_min <= n_ver <= o_ver      # old loads new's stream
    for key, a, b in (("version_id", o_ver, n_ver), ("minimum_version_id", o_min, n_min)):
        if a != b:
            out.append(make_drift("vmstate", section, subject, f"{_label(fwd, rb)}:{path}{key}", a, b, key=section))
    if not (fwd and rb):
        _describe(section, path, old, new, o_ver, n_ver, False, out, subject)


def compare_vmstate(old: dict[str, Any], new: dict[str, Any]) -> list[Drift]:
    drifts: list[Drift] = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        name = (b or a or {}).get("Description", {}).get("name", key)
        subject = f"vmstate {key} (section {name})"
        if a is None or b is None:
            # a device type instantiated on both VMs whose schema only one dump lists: the other
            # build registers it at realize (out of -dump-vmstate's reach) or not at all; the
            # migration legs decide
            drifts.append(presence_drift("vmstate", key, subject, "section", added=a is None,
                                         path=f"{ONE_DUMP}:(section)"))
            continue
        _versions(key, "", a["Description"], b["Description"], drifts, subject)
    return drifts


# -- props -------------------------------------------------------------------------------------------

def compare_props(old: dict[str, Any], new: dict[str, Any]) -> list[Drift]:
    """Every device's QOM properties but a vCPU's hv-* ones (the `hyperv` category's)."""
    return _compare_properties("props", old, new, lambda entry, name: not is_hyperv_prop(entry, name))


def compare_hyperv(old: dict[str, Any], new: dict[str, Any]) -> list[Drift]:
    """A vCPU's hv-* properties (harness/fingerprint/host.py decode_hyperv)."""
    return _compare_properties("hyperv", old, new, is_hyperv_prop)


def _compare_properties(category: str, old: dict[str, Any], new: dict[str, Any],
                        keep: Callable[[dict[str, Any], str], bool]) -> list[Drift]:
    drifts: list[Drift] = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        subject = f"{category} {key}"
        if a is None or b is None:
            drifts.append(presence_drift(category, key, subject, (a or b or {}).get("type"), added=a is None,
                                         path="(device)"))
            continue
        pa = {k: v for k, v in (a.get("props") or {}).items() if keep(a, k)}
        pb = {k: v for k, v in (b.get("props") or {}).items() if keep(b, k)}
        singles: list[Drift] = []
        for name in sorted(pa.keys() | pb.keys()):
            if name in pa and name in pb:
                if pa[name] != pb[name]:
                    singles.append(make_drift(category, key, subject, name, pa[name], pb[name]))
            elif name in pa:
                singles.append(make_drift(category, key, subject, f"only-old.{name}", pa[name], None, "removed"))
            else:
                singles.append(make_drift(category, key, subject, f"only-new.{name}", None, pb[name], "added"))
        drifts += _fold_props(category, key, subject, singles)
    return drifts


def _fold_props(category: str, key: str, subject: str, singles: list[Drift]) -> list[Drift]:
    """One drift per (policy row, kind of change) of a device: the first property's path with
    `(+N more)`, old and new as {property: value}, every name in the detail."""
    buckets: dict[tuple[str, Change, str], list[Drift]] = {}
    for d in singles:
        buckets.setdefault((rule_for(category, key, d.path).doc, d.change, d.severity), []).append(d)
    out: list[Drift] = []
    for (_doc, change, _severity), group in buckets.items():
        if len(group) == 1:
            out += group
            continue
        prefix = {"added": "only-new.", "removed": "only-old."}.get(change, "")
        names = [d.path.removeprefix(prefix) for d in group]
        folded = make_drift(category, key, subject, f"{group[0].path} (+{len(group) - 1} more)",
                            None if change == "added" else {n: d.old for n, d in zip(names, group, strict=True)},
                            None if change == "removed" else {n: d.new for n, d in zip(names, group, strict=True)},
                            change, detail=f"{len(group)} properties: {', '.join(names)}")
        out += [folded] if folded.severity == group[0].severity else group
    return out
