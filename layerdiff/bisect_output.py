"""bisect's console output: the answer, its pins and evidence, validation and held-out checks, costs."""

from __future__ import annotations

import math
import shlex

def print_bisect(result, target, out, err, quiet, output) -> None:
    from layerdiff.console import clean

    o = result.outcome
    pins = ", ".join(clean(p.node) for p in result.pins) or "none"
    line = {"met": f"already met with nothing pinned: {target.metric} {o.value:.7g}",
            "found": f"{len(result.pins)} pin(s) meet it: {target.metric} {o.value:.7g}",
            "budget": f"out of evaluations; the best plan found: {len(result.pins)} pin(s), {target.metric} "
                      f"{o.value:.7g}",
            "max-pins": f"no plan within --max-pins passed; the best: {len(result.pins)} pin(s), {target.metric} "
                        f"{o.value:.7g}",
            "interrupted": f"interrupted; the best plan so far: {len(result.pins)} pin(s), {target.metric} "
                           f"{o.value:.7g} ({'passes' if o.passed else 'fails'})"}[result.status]
    held = ""
    if result.holdout is not None:
        h = result.holdout
        held = (f"held out ({h.samples} sample(s)): {target.metric} {h.value:.7g}, "
                f"{'holds' if h.holds else 'FAILS'}")
    v = result.validation
    checked = ""
    if v is not None and v.samples:
        checked = (f"validation ({v.samples} sample(s)): {target.metric} {v.value:.7g}, "
                   f"{'holds' if v.holds else 'FAILS'}")
    if v is not None and v.counterexamples:
        checked += ("; " if checked else "") + f"searched on {v.searched} sample(s), counterexamples: " + \
            ", ".join(clean(c) for c in v.counterexamples)
    if quiet:
        print(f"{result.status}: {pins}; {target.metric} {o.value:.7g}" + (f"; {checked}" if checked else "")
              + (f"; {held}" if held else ""))
        for w in result.warnings:
            err.print(f"warning: {clean(w)}", markup=False, highlight=False)
        return
    p = lambda text="": out.print(text, markup=False, highlight=False)  # noqa: E731
    p(line)
    all_pinned = f", all pinned {result.all_pinned.value:.7g}" if result.all_pinned is not None else ""
    k, n = len(result.pins), result.pinnable
    estimate = f"; 2k·log2(n/k) = {round(2 * k * math.log2(n / k))}" \
        if result.strategy == "auto" and 0 < k < n else ""
    p(f"  baseline (nothing pinned) {result.baseline.value:.7g}{all_pinned}")
    p(f"  {result.evaluations} evaluations ({result.strategy}{estimate})")
    for pin in result.pins:
        ev = pin.evidence
        local = ev.get("local_cosine")
        facts = f"local cos {local:.6f}" if isinstance(local, float) else ""
        covers = f"{len(pin.covers)} conversion(s)" if pin.covers else ""
        p(f"  {clean(pin.node)}  {pin.op}  " + "  ".join(x for x in (facts, covers) if x))
    if result.forced:
        p(f"  and {len(result.forced)} node(s) pinned in every plan (values beyond FP16's range)")
    if checked:
        p(f"  {checked}")
    if held:
        p(f"  {held}")
    if result.pin_costs is not None:
        c, pins = result.pin_costs, [q.node for q in result.pins] + list(result.forced)
        p(f"estimated kernel time (ONNX Runtime's profiler, median of {c.runs} runs):")
        p(f"  FP32 {c.fp32_total_ms:.4g} ms, all-{result.precision.upper()} {c.reduced_total_ms:.4g} ms, recipe "
          f"{c.estimate_ms(pins):.4g} ms")
        if len(result.finalists) > 1:
            p(f"{len(result.finalists)} passing plans as small, timed in turns ({result.race_runs} runs):")
            for f in result.finalists:
                names = ", ".join(clean(n) for n in f.pins)
                names = names if len(names) <= 32 else names[:31] + "…"
                p(f"  {'*' if f.chosen else ' '} {names:<32} est. {f.estimated_kernel_ms:<7.4g} timed "
                  f"{f.latency_ms_median:<7.4g} p90 {f.latency_ms_p90:.4g} ms")
            p("  (est.: kernel time under the profiler; timed: plain runs; * the answer)")
        elif result.finalists:
            p("  no other plan as small passed: nothing to time it against")
    if result.cost is not None:
        for line in result.cost.lines():
            p(line)
    for w in result.warnings:
        p(f"warning: {clean(w)}")
    if output:
        p(f"recipe written to {output}")
        hint = f"  export it: layerdiff export {shlex.quote(str(output))} --format FORMAT (see --help)"
        p(hint if len(hint) <= 80 else "  export it: layerdiff export RECIPE --format FORMAT (see --help)")
