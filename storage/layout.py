"""Layer layouts: which parameters form each group, and where each sits in the flat vector.

The paper's unit of analysis is *one encoder layer with all of its parameters flattened*
(weights, biases, LayerNorm). A `Layout` fixes, per group, the ordered parameter names (relative
to the group, so `bert.encoder.layer.3.attention.self.query.weight` and
`encoder.layer.3.attention.self.query.weight` fall in the same slot), their shapes and their
offsets. Its hash identifies the layout independently of model class prefixes, so a basis computed
on `BertModel` checkpoints applies to `BertForSequenceClassification`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from storage.errors import InvalidInput, LayoutMismatch

if TYPE_CHECKING:
    import torch

# Each rule is a regex whose first capture group is the layer index; the text before the match
# (the model class prefix such as `bert.` or `transformer.`) is ignored.
GROUPING_RULES: dict[str, str] = {
    # BERT, RoBERTa, MPNet, ELECTRA, DeBERTa: encoder.layer.N.
    "bert": r"(?:^|\.)encoder\.layer\.(\d+)\.",
    # GPT-2 and GPT-J style: h.N.
    "gpt2": r"(?:^|\.)h\.(\d+)\.",
    # Llama, Mistral, Qwen, OPT-style decoders: layers.N.
    "llama": r"(?:^|\.)layers\.(\d+)\.",
}
GROUPING_RULES["roberta"] = GROUPING_RULES["bert"]
GROUPING_RULES["mpnet"] = GROUPING_RULES["bert"]

GLOBAL_GROUP = "encoder"


@dataclass(frozen=True)
class ParamSpec:
    """One parameter inside a group: its name relative to the group, shape and offset."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "offset": self.offset}


@dataclass(frozen=True)
class Group:
    """A parameter group: the unit whose parameters are flattened into one trajectory row."""

    name: str
    prefix: str  # the full-name prefix in the model the layout was built from
    params: tuple[ParamSpec, ...]

    @property
    def size(self) -> int:
        return sum(p.numel for p in self.params)

    def full_names(self, prefix: str | None = None) -> list[str]:
        pre = self.prefix if prefix is None else prefix
        return [pre + p.name for p in self.params]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "prefix": self.prefix,
            "params": [p.to_dict() for p in self.params],
        }


@dataclass(frozen=True)
class Layout:
    """Ordered groups of a model's parameters, with a content hash."""

    rule: str
    groups: tuple[Group, ...]
    hash: str = field(default="")

    def __post_init__(self) -> None:
        if not self.groups:
            raise InvalidInput(f"layout rule {self.rule!r} selected no parameters")
        if not self.hash:
            object.__setattr__(self, "hash", layout_hash(self.groups))

    @property
    def group_names(self) -> list[str]:
        return [g.name for g in self.groups]

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise LayoutMismatch(f"no group {name!r} in layout; groups are {self.group_names}")

    @property
    def total_size(self) -> int:
        return sum(g.size for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "hash": self.hash, "groups": [g.to_dict() for g in self.groups]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Layout:
        groups = tuple(
            Group(
                name=g["name"],
                prefix=g.get("prefix", ""),
                params=tuple(
                    ParamSpec(p["name"], tuple(int(s) for s in p["shape"]), int(p["offset"]))
                    for p in g["params"]
                ),
            )
            for g in data["groups"]
        )
        layout = cls(rule=data["rule"], groups=groups)
        if data.get("hash") and data["hash"] != layout.hash:
            raise LayoutMismatch(
                f"stored layout hash {data['hash'][:12]} does not match its content "
                f"({layout.hash[:12]}); the manifest is corrupt"
            )
        return layout

    def check_compatible(self, other: Layout, what: str = "layout") -> None:
        if other.hash != self.hash:
            raise LayoutMismatch(
                f"{what} hash {other.hash[:12]} does not match {self.hash[:12]}: "
                "they were built from different models or grouping rules"
            )


def layout_hash(groups: Iterable[Group]) -> str:
    """sha256 over group names, parameter names relative to their group, and shapes."""
    canon = [[g.name, [[p.name, list(p.shape)] for p in g.params]] for g in groups]
    return hashlib.sha256(json.dumps(canon, separators=(",", ":")).encode()).hexdigest()


def _compile_rule(rule: str) -> tuple[str, re.Pattern[str] | None]:
    """Return (kind, pattern). kind is 'indexed', 'global', or 'regex'."""
    if rule in GROUPING_RULES:
        return "indexed", re.compile(GROUPING_RULES[rule])
    if rule.startswith("global"):
        base = rule.partition(":")[2] or "auto"
        return "global", (re.compile(GROUPING_RULES[base]) if base != "auto" else None)
    if rule.startswith("regex:"):
        try:
            return "regex", re.compile(rule[len("regex:") :])
        except re.error as exc:
            raise InvalidInput(f"grouping regex {rule[6:]!r} does not compile: {exc}") from exc
    known = sorted(GROUPING_RULES) + ["global", "global:<rule>", "regex:<pattern>", "auto"]
    raise InvalidInput(f"unknown grouping rule {rule!r}; use one of {known}")


def detect_rule(names: Iterable[str]) -> str:
    """Pick the built-in indexed rule that matches the most parameter names."""
    names = list(names)
    best, best_count = None, 0
    for rule in ("bert", "gpt2", "llama"):
        pat = re.compile(GROUPING_RULES[rule])
        count = sum(1 for n in names if pat.search(n))
        if count > best_count:
            best, best_count = rule, count
    if best is None:
        raise InvalidInput(
            "no parameter matches a known layer pattern (encoder.layer.N., h.N., layers.N.); "
            "pass a rule such as 'regex:<pattern>'"
        )
    return best


def build_layout(
    shapes: Mapping[str, tuple[int, ...]] | Iterable[tuple[str, tuple[int, ...]]],
    rule: str = "auto",
) -> Layout:
    """Group named parameter shapes (in model order) by `rule`.

    Rules: `bert`/`roberta`/`mpnet` (`encoder.layer.N.`), `gpt2` (`h.N.`), `llama` (`layers.N.`),
    `auto` (whichever of those matches most), `global` or `global:<rule>` (all layer parameters
    as one group), and `regex:<pattern>` (the capture groups, joined by dots, name the group;
    without one, all matching parameters form one group). Parameters that match no group
    (embeddings, heads) are not part of the layout.
    """
    items = list(shapes.items()) if isinstance(shapes, Mapping) else list(shapes)
    if rule == "auto":
        rule = detect_rule(n for n, _ in items)
    if rule in ("global", "global:auto"):
        rule = f"global:{detect_rule(n for n, _ in items)}"
    kind, pat = _compile_rule(rule)

    members: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    prefixes: dict[str, str] = {}
    for full, shape in items:
        m = pat.search(full) if pat is not None else None
        if m is None:
            continue
        if kind == "indexed":
            gname = f"layer.{int(m.group(1))}"
            prefix = full[: m.end()]
        elif kind == "global":
            gname = GLOBAL_GROUP
            # Keep the layer index inside the relative name: `encoder.layer.3.attention...`.
            prefix = full[: m.start() + (1 if full[m.start()] == "." else 0)]
        else:
            captured = [c for c in m.groups() if c is not None]
            gname = ".".join(captured) if captured else "group"
            prefix = ""  # set per group below, from all of its members
        if kind != "regex" and prefixes.setdefault(gname, prefix) != prefix:
            raise InvalidInput(
                f"group {gname!r} gets parameters under two prefixes "
                f"({prefixes[gname]!r} and {prefix!r}); use a regex rule"
            )
        members.setdefault(gname, []).append((full, tuple(int(s) for s in shape)))
    if kind == "regex":
        # A regex group may span layers (`regex:(attention)` collects every layer's attention),
        # so its prefix is what all of its members share, cut at a dot: the class prefix
        # (`bert.`) then stays outside the relative names and the layout hash.
        prefixes = {g: _dotted_common_prefix([f for f, _ in ms]) for g, ms in members.items()}

    groups = []
    for gname in sorted(members, key=_natural_key):
        offset, params = 0, []
        for full, shape in members[gname]:
            params.append(ParamSpec(full[len(prefixes[gname]) :], shape, offset))
            offset += math.prod(shape)
        groups.append(Group(gname, prefixes[gname], tuple(params)))
    if not groups:
        raise InvalidInput(f"grouping rule {rule!r} matched none of {len(items)} parameters")
    return Layout(rule=rule, groups=tuple(groups))


def locate_params(
    layout: Layout,
    shapes: Mapping[str, tuple[int, ...]] | Iterable[tuple[str, tuple[int, ...]]],
    what: str = "checkpoint",
) -> dict[str, list[str]]:
    """Full names, in `layout` order, of each group's parameters in another set of named shapes.

    The other side may carry another class prefix (`bert.`) and list its parameters in another
    order (safetensors files list them sorted by name); it must hold the same groups with the
    same parameter names and shapes, else `LayoutMismatch` names the first differences.
    Returns group name -> full names aligned with `layout.group(name).params`.
    """
    try:
        theirs = build_layout(shapes, layout.rule)
    except InvalidInput as exc:
        raise LayoutMismatch(f"{what} does not fit layout {layout.hash[:12]}: {exc}") from exc
    if theirs.hash == layout.hash:
        return {g.name: g.full_names() for g in theirs.groups}
    problems = []
    if set(theirs.group_names) != set(layout.group_names):
        missing = sorted(set(layout.group_names) - set(theirs.group_names), key=_natural_key)
        extra = sorted(set(theirs.group_names) - set(layout.group_names), key=_natural_key)
        problems.append(
            ", ".join(
                f"{label} groups {names}"
                for label, names in (("missing", missing), ("unexpected", extra))
                if names
            )
        )
    out: dict[str, list[str]] = {}
    for group in layout.groups:
        if group.name not in theirs.group_names:
            continue
        other = theirs.group(group.name)
        found = {p.name: p.shape for p in other.params}
        for spec in group.params:
            if spec.name not in found:
                problems.append(f"{group.name}: no parameter {spec.name!r}")
            elif found[spec.name] != spec.shape:
                problems.append(
                    f"{group.name}: {spec.name!r} has shape {found[spec.name]}, "
                    f"the layout needs {spec.shape}"
                )
        wanted = {p.name for p in group.params}
        problems += [f"{group.name}: unexpected parameter {n!r}" for n in found if n not in wanted]
        out[group.name] = [other.prefix + p.name for p in group.params]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise LayoutMismatch(
            f"{what} does not match layout {layout.hash[:12]}: " + "; ".join(problems[:3]) + more
        )
    return out


def _dotted_common_prefix(names: list[str]) -> str:
    common = os.path.commonprefix(names)
    return common[: common.rfind(".") + 1]


def _natural_key(name: str) -> tuple[tuple[int, int, str], ...]:
    # layer.2 sorts before layer.10
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name))


def layout_from_state_dict(state: Mapping[str, Any], rule: str = "auto") -> Layout:
    """Build a layout from a state dict (torch tensors or numpy arrays), skipping non-floats."""
    shapes: list[tuple[str, tuple[int, ...]]] = []
    for name, value in state.items():
        # Integer buffers such as position_ids are not weights.
        if "float" in str(getattr(value, "dtype", "")):
            shapes.append((name, tuple(value.shape)))
    return build_layout(shapes, rule)


def layout_from_model(model: torch.nn.Module, rule: str = "auto") -> Layout:
    """Build a layout from a torch module's named parameters (buffers are not trained)."""
    return build_layout([(n, tuple(p.shape)) for n, p in model.named_parameters()], rule)
