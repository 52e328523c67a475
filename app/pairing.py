"""Can this teacher be pruned to this student? If not directly, will an auxiliary teacher do?

InDistill matches stage l of the pruned network to stage l of the student, so the
network being pruned needs as many stages as the student, each at least as wide, and a
producing conv per stage. When that fails, or the width ratio is above a threshold, an
auxiliary teacher — the student's architecture at ``aux_width``× width, distilled from
the teacher first — is pruned instead.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache

from models import MODELS, ModelSpec, build_model, describe


@lru_cache(maxsize=128)
def spec_of(arch: str, num_classes: int = 10, width: float = 1.0, input_size: int = 32) -> ModelSpec:
    """The stage spec of a registered architecture (built once, on the CPU)."""
    return describe(build_model(arch, num_classes, width), input_size)


def direct_problems(pruned: ModelSpec, student: ModelSpec) -> list[str]:
    """Why ``pruned`` cannot be channel-pruned onto ``student`` (empty list: it can)."""
    problems = []
    if not pruned.prunable:
        problems.append(f"{pruned.arch} mixes channels inside its stages (no single producing conv), so it cannot be pruned")
    if len(pruned.stages) != len(student.stages):
        problems.append(f"{pruned.arch} has {len(pruned.stages)} stages and {student.arch} has {len(student.stages)}; "
                        "InDistill matches stages one to one")
    else:
        for i, (t, s) in enumerate(zip(pruned.stages, student.stages), 1):
            if t.channels < s.channels:
                problems.append(f"stage {i}: student has {s.channels} channels, more than {pruned.arch}'s {t.channels}")
    return problems


@dataclass
class PairVerdict:
    ok: bool                        # InDistill can run (directly or through an auxiliary teacher)
    use_aux: bool
    pruned_arch: str                # the architecture whose channels are pruned
    pruned_width: float
    messages: list[str] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)  # per stage: channels, sizes, ratio, kept fraction
    suggestions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def summary(self) -> str:
        if not self.ok:
            return "Cannot run InDistill: " + "; ".join(self.messages)
        how = f"auxiliary teacher {self.pruned_arch}×{self.pruned_width:g} is distilled, then pruned" if self.use_aux \
            else f"teacher {self.pruned_arch} is pruned directly"
        return f"OK — {how}." + (" " + " ".join(self.messages) if self.messages else "")


def stage_table(pruned: ModelSpec, student: ModelSpec) -> list[dict]:
    rows = []
    for i, (t, s) in enumerate(zip(pruned.stages, student.stages), 1):
        rows.append({"layer": i, "teacher_module": t.module, "teacher_channels": t.channels,
                     "student_channels": s.channels, "ratio": round(t.channels / s.channels, 3),
                     "kept_fraction": round(min(1.0, s.channels / t.channels), 3),
                     "teacher_size": list(t.size), "student_size": list(s.size),
                     "pooled": "teacher" if t.size > s.size else ("student" if s.size > t.size else "none")})
    return rows


def assess_pair(teacher: str, student: str, aux: str = "auto", aux_width: float = 2.0,
                ratio_threshold: float = 4.0, num_classes: int = 10, input_size: int = 32) -> PairVerdict:
    """The verdict for a teacher/student pair under the given auxiliary-teacher policy."""
    t_spec = spec_of(teacher, num_classes, 1.0, input_size)
    s_spec = spec_of(student, num_classes, 1.0, input_size)
    problems = direct_problems(t_spec, s_spec)
    ratio = max((r["ratio"] for r in stage_table(t_spec, s_spec)), default=0.0) if not problems else 0.0
    too_wide = ratio > ratio_threshold
    use_aux = aux == "on" or (aux == "auto" and (bool(problems) or too_wide))
    if not use_aux:
        if problems:
            return PairVerdict(False, False, teacher, 1.0, problems + ["the auxiliary teacher is off"],
                               suggestions=suggest(teacher, num_classes, input_size))
        notes = [f"width ratio {ratio:g} is above {ratio_threshold:g}: an auxiliary teacher may help"] if too_wide else []
        return PairVerdict(True, False, teacher, 1.0, notes, stage_table(t_spec, s_spec))
    a_spec = spec_of(student, num_classes, aux_width, input_size)
    aux_problems = direct_problems(a_spec, s_spec)
    if aux_width < 1:
        aux_problems.append("aux_width must be ≥ 1 so the auxiliary teacher is at least as wide as the student")
    why = problems or ([f"width ratio {ratio:g} exceeds {ratio_threshold:g}"] if too_wide else ["auxiliary teacher forced on"])
    if aux_problems:
        return PairVerdict(False, True, student, aux_width, [f"auxiliary teacher {student}×{aux_width:g}: " + p
                                                             for p in aux_problems],
                           suggestions=suggest(teacher, num_classes, input_size))
    return PairVerdict(True, True, student, aux_width, ["auxiliary teacher because " + "; ".join(why)],
                       stage_table(a_spec, s_spec))


def suggest(teacher: str, num_classes: int = 10, input_size: int = 32) -> list[str]:
    """Registered students that ``teacher`` can be pruned to directly, else a hint."""
    t_spec = spec_of(teacher, num_classes, 1.0, input_size)
    if t_spec.prunable:
        fits = [n for n, e in MODELS.items() if e.role == "student" and n != teacher
                and not direct_problems(t_spec, spec_of(n, num_classes, 1.0, input_size))]
        if fits:
            return [f"students {teacher} prunes to directly: {', '.join(fits)}",
                    "or set the auxiliary teacher to auto/on with a prunable student"]
    return ["pick a prunable student (any but shufflenetv2) and set the auxiliary teacher to auto or on"]
