"""compare's deployment gate (--max-abs, --min-speedup, --max-size-ratio): each bound measured, and
whether it holds."""

from __future__ import annotations

from layerdiff.bench import candidate_size, model_size


def gate_checks(session, candidate, report, *, max_abs: float | None = None, min_speedup: float | None = None,
                max_size_ratio: float | None = None, outputs=()) -> tuple:
    """compare's deployment bounds, each measured: --max-abs on the final outputs (worst sample, the
    --outputs specs where given), --min-speedup from the timed medians, --max-size-ratio from the sizes
    on disk."""
    from layerdiff.cost import GateCheck
    from layerdiff.target import Target

    checks = []
    if max_abs is not None:
        target = Target.parse("max-abs", max_abs, tuple(outputs), session.model.outputs)
        reference = session.reference_outputs()
        target.check(reference[0])
        got = session.outputs_on(candidate)
        value = target.worst([target.score(r, g) for r, g in zip(reference, got, strict=True)])
        where = f" of {', '.join(s.text for s in target.outputs)}" if outputs else ""
        checks.append(GateCheck("--max-abs", max_abs, value, target.passes(value), f"max abs error{where}"))
    if min_speedup is not None:
        speed = report.cost.speedup if report.cost is not None else None
        checks.append(GateCheck("--min-speedup", min_speedup, speed, speed is not None and speed >= min_speedup,
                                "speed-up (medians)"))
    if max_size_ratio is not None:
        ratio = report.cost.size_ratio if report.cost is not None else None
        if ratio is None:
            size = candidate_size(candidate)
            ratio = size / model_size(session.model.path) if size is not None else None
        checks.append(GateCheck("--max-size-ratio", max_size_ratio, ratio,
                                ratio is not None and ratio <= max_size_ratio, "size ratio"))
    return tuple(checks)
