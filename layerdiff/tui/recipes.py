"""The TUI's recipe keys: `p` pins the selected layer, `e` writes the pins as a recipe, `b` bisects in a
worker thread (`x` cancels it). Mixed into LayerdiffApp (tui/app.py), whose report, view state and
status line they use."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rich.text import Text
from textual import work
from textual.widgets import Static

from layerdiff.errors import LayerdiffError
from layerdiff.tui.screens import AskScreen, ConfirmScreen
from layerdiff.tui.state import cosine_text, proposed_cosine


class RecipeActions:
    """Pins, export and bisect, as LayerdiffApp's actions."""

    def _say(self, message: str) -> None:
        self.query_one("#status", Static).update(Text(message, style="bold"))

    def _beside(self, named: str) -> str:
        """A path the report holds, found from any directory: as written, else beside the report."""
        from layerdiff.recipe import beside

        return beside(named, Path(self.report_path)) if self.report_path else named

    def action_pin(self) -> None:
        if not self.selected:
            return
        row = self.by_key[self.selected]
        if not row.pinnable:
            self._say(f"{row.name} is a {row.kind} row with no ONNX node of its own: pin the layer that writes or "
                      "reads it")
            return
        self.view = self.view.toggled_pin(row.key)

    def default_recipe_path(self) -> str:
        base = Path(self.report_path).with_suffix("") if self.report_path else Path("layerdiff")
        return str(base) + ".recipe.json"

    def action_export(self) -> None:
        if not self.view.pins:
            self._say("nothing pinned: p pins the selected layer")
            return
        path = self.default_recipe_path()
        n = len(self.view.pins)
        note = f"{path} exists: it will be replaced" if Path(path).exists() else ""
        self.push_screen(ConfirmScreen(f"Write a recipe of {n} pinned row(s) to this file?", path, note),
                         self._export_to)

    def _export_to(self, path: str | None) -> None:
        if not path:
            self._say("export cancelled")
            return
        from layerdiff.files import check_writable
        from layerdiff.recipe import pinned_recipe, write_recipe

        try:
            check_writable(path, protect=tuple(p for p in (self.report_path, self.report.model.path) if p))
            rows = [self.layers[k] for k in self.view.pins]
            write_recipe(pinned_recipe(self.report, rows), path)
        except (LayerdiffError, OSError) as err:
            self._say(f"not written: {err}")
            return
        except Exception as err:  # a bug must not take the user's session (and pins) down with it
            self._say(f"not written: internal error, please report it: {type(err).__name__}: {err}")
            return
        self._say(f"recipe written to {path} ({len(self.view.pins)} row(s)); layerdiff apply RECIPE MODEL measures it")

    def action_bisect(self) -> None:
        if self._bisecting:
            self._say("a bisect is running (x cancels it)")
            return
        model = Path(self._beside(self.report.model.path))
        if not model.is_file():
            self._say(f"bisect runs the model, and {model} is not here, nor beside the report")
            return
        tol = self.report.tolerance
        worst = self._worst_output()
        suggest = proposed_cosine(worst, tol.min_cosine if tol else None)
        if suggest is None:
            self._say(f"nothing to bisect: the final outputs already agree (cosine {cosine_text(worst)})")
            return
        if worst is None:
            why = ""
        elif tol and suggest == repr(tol.min_cosine):
            why = "proposed: the report's --min-cosine\n"
        else:
            why = f"proposed: halfway between the candidate's output cosine {cosine_text(worst)} and 1\n"
        self.push_screen(AskScreen("Bisect: the lowest cosine of the final outputs to accept (worst sample)",
                                   suggest, why + "runs the FP32 model and the candidate many times; x cancels"),
                         self._bisect_with)

    def _bisect_with(self, answer: str | None) -> None:
        if answer is None:
            return
        try:
            threshold = float(answer)
        except ValueError:
            self._say(f"'{answer}' is not a number: bisect not started")
            return
        if not -1.0 <= threshold <= 1.0:
            self._say(f"a cosine is between -1 and 1, not {answer}: bisect not started")
            return
        self._cancel.clear()
        self._bisecting = True
        self.run_bisect(threshold)

    @work(thread=True, exclusive=True, group="bisect")
    def run_bisect(self, threshold: float) -> None:
        from layerdiff.bisect import bisect, prepare_split
        from layerdiff.target import Target

        r = self.report
        try:
            inputs = self.bisect_inputs or (None if r.inputs.random else self._beside(r.inputs.source))
            self.call_from_thread(self._say, "bisect: preparing (reference run, calibration)...")
            session, held = prepare_split(self._beside(r.model.path), inputs=inputs)
            outputs = r.tolerance.outputs if r.tolerance else ()
            target = Target.parse("cosine", threshold, outputs, session.model.outputs)

            def each(outcome, n, bound, cached):
                verdict = "pass" if outcome.passed else "fail"
                self.call_from_thread(self._say, f"bisect {n}/{bound}: {len(outcome.pins)} pins, cosine "
                                                 f"{cosine_text(outcome.value)} {verdict}   (x cancels)")

            result = bisect(session, r.candidate.spec, target, holdout=held, on_outcome=each, cancel=self._cancel,
                            evidence=False)
        except (LayerdiffError, OSError) as err:
            self.call_from_thread(self._bisect_failed, str(err))
            return
        except Exception as err:  # a bug must not take the user's session (and pins) down with it
            self.call_from_thread(self._bisect_failed, f"internal error, please report it: {type(err).__name__}: {err}")
            return
        self.call_from_thread(self._bisect_done, result)

    def _bisect_failed(self, message: str) -> None:
        self._bisecting = False
        self._say(f"bisect stopped: {message}")

    def _bisect_done(self, result) -> None:
        self._bisecting = False
        nodes = {p.node for p in result.pins}
        pins = frozenset(lay.name for lay in self.report.layers if lay.kind == "layer" and nodes & set(lay.onnx_nodes))
        self.view = replace(self.view, pins=pins)
        held = "" if result.holdout is None else f"; held-out {'holds' if result.holdout.holds else 'FAILS'}"
        self._say(f"bisect {result.status}: {len(result.pins)} pin(s), cosine {cosine_text(result.outcome.value)} "
                  f"({result.evaluations} evaluations{held}){'; e exports them' if pins else ''}")

    def action_cancel_bisect(self) -> None:
        if self._bisecting:
            self._cancel.set()
            self._say("cancelling bisect (the best plan so far is kept)")
