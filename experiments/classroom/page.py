"""The classroom page (Panel): the controls on the left, one rule's live plots, or two side by side.

Each browser tab builds its own page and `Lesson`, reads the learner registry afresh (a rule added
later appears on the next load), refreshes its plots from the boards a few times a second and
stops its training when the tab closes.
"""
from __future__ import annotations

import io
import sys
import tempfile
import threading
from pathlib import Path

import panel as pn

from core.errors import AltlearnError
from experiments.classroom.board import ENDED, IDLE
from experiments.classroom.lesson import Lesson, one_line
from experiments.classroom.settings import DATASETS, Settings, describe, knobs, learners
from experiments.classroom.views import RuleView

REFRESH_MS = 250
WIDTHS = [4, 8, 16, 32, 64, 128, 256]
FIRST_CHOICES = ("backprop", "feedback_alignment")
SIDEBAR_WIDTH = 300
# how each ending is announced (an alert type, a word)
ENDINGS = {"complete": ("success", "finished"), "stopped": ("secondary", "stopped"),
           "chance": ("warning", "finished at chance"), "diverging": ("warning", "loss rising: diverging"),
           "diverged": ("danger", "diverged"), "refused": ("danger", "refused"), "failed": ("danger", "failed")}


def knob_widget(knob):
    label = knob.path
    if knob.kind == "log" or (knob.kind == "choice" and all(isinstance(o, (int, float)) for o in knob.options)):
        return pn.widgets.DiscreteSlider(label=label, options=list(knob.options), value=knob.default,
                                         sizing_mode="stretch_width")
    if knob.kind == "choice":
        return pn.widgets.Select(label=label, options={str(o): o for o in knob.options}, value=knob.default,
                                 sizing_mode="stretch_width")
    if knob.kind == "int":
        return pn.widgets.IntSlider(label=label, start=int(knob.low), end=int(knob.high), value=int(knob.default),
                                    sizing_mode="stretch_width")
    step = (knob.high - knob.low) / 50
    return pn.widgets.FloatSlider(label=label, start=knob.low, end=knob.high, step=step, value=knob.default,
                                  sizing_mode="stretch_width")


class KnobPanel:
    """A rule's picker, its one-line description and the widgets of its declared search space."""

    def __init__(self, label: str, names: list[str], first: str):
        self.label = label
        self.rule = pn.widgets.Select(label=f"Rule {label}", options=names, value=first, sizing_mode="stretch_width",
                                      css_classes=[f"rule-{label}"])
        self.about = pn.pane.Markdown("", sizing_mode="stretch_width", styles={"font-size": "0.85em"})
        self.knobs = pn.Column(sizing_mode="stretch_width")
        self.widgets: dict = {}
        self.rule.param.watch(lambda event: self.show(event.new), "value")
        self.show(first)
        self.panel = pn.Column(self.rule, self.about, self.knobs, sizing_mode="stretch_width")

    def show(self, name: str):
        self.about.object = describe(name)
        self.widgets = {k.path: knob_widget(k) for k in knobs(name)}
        self.knobs.objects = list(self.widgets.values()) or [pn.pane.Markdown("*no tunable knobs declared*")]

    def values(self) -> dict:
        # plain Python numbers: they go into the learner and, as YAML, into the results' attrs
        return {path: getattr(w.value, "item", lambda: w.value)() for path, w in self.widgets.items()}

    def set_disabled(self, disabled: bool):
        self.rule.disabled = disabled
        for widget in self.widgets.values():
            widget.disabled = disabled


class RuleColumn:
    """One rule's side of the page: its status, its message, its plots and its save button."""

    def __init__(self, label: str, lesson: Lesson):
        self.label, self.lesson = label, lesson
        self.view = RuleView(label)
        self.status = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=[f"status-{label}"])
        self.alert = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width",
                                   css_classes=[f"alert-{label}"])
        self.metric = pn.widgets.Select(label="per-block metric", options=[], sizing_mode="stretch_width",
                                        visible=False)
        self.metric.param.watch(lambda event: self.draw_blocks(), "value")
        self.save = pn.widgets.FileDownload(callback=self.results_file, filename="results.nc",
                                            label="Save run as results.nc", color="success",
                                            sizing_mode="stretch_width", css_classes=[f"save-{label}"],
                                            disabled=True)
        self.note = pn.pane.Markdown("", visible=False)
        self.no_blocks = pn.pane.Markdown("", visible=False)
        figs = self.view.figures()
        self.panes = {name: pn.pane.Bokeh(fig, sizing_mode="stretch_width") for name, fig in figs.items()}
        self.panel = pn.Column(self.status, self.alert, self.panes["boundary"], self.panes["confusion"],
                               pn.Row(self.panes["accuracy"], self.panes["loss"], sizing_mode="stretch_width"),
                               self.metric, self.panes["blocks"], self.no_blocks, self.save, self.note,
                               sizing_mode="stretch_width", css_classes=[f"rule-column-{label}"])
        self.last_view = None

    @property
    def run(self):
        return self.lesson.runs[self.label]

    def refresh(self):
        view = self.run.board.view()
        self.last_view = view
        if self.view.update(view, self.metric.value):
            labels = self.view.block_labels
            if labels != list(self.metric.options):
                self.metric.options = labels
                if labels and self.metric.value not in labels:
                    self.metric.value = labels[0]
            self.metric.visible = bool(labels)
            # a rule without per-block metrics says so in a line instead of an empty plot
            self.panes["blocks"].visible = bool(labels) or not view.epoch
            self.no_blocks.object = f"*{view.learner} reports no per-block metrics.*"
            self.no_blocks.visible = not self.panes["blocks"].visible
            self.panes["boundary"].visible = self.view.boundary.visible
            self.panes["confusion"].visible = self.view.confusion.visible
        self.status.object = status_line(self.label, view)
        self.save.disabled = not view.curves["epoch"]
        if view.status in ENDED and view.message:
            kind, word = ENDINGS[view.status]
            self.alert.alert_type = kind
            self.alert.object = f"**{word}**: {view.message}"
            self.alert.visible = True
        else:
            self.alert.visible = False

    def draw_blocks(self):
        if self.last_view is not None:
            self.view.show_blocks(self.last_view, self.metric.value)

    def results_file(self):
        """The run so far as results.nc, written by the writer every altlearn run uses."""
        try:
            with tempfile.TemporaryDirectory() as folder:
                path = self.run.save(Path(folder) / "results.nc")
                content = path.read_bytes()
        except (AltlearnError, TimeoutError) as err:
            self.note.object, self.note.visible = f"*could not save: {one_line(err)}*", True
            return None
        self.note.visible = False
        self.save.filename = self.run.file_name()
        return io.BytesIO(content)


def status_line(label: str, view) -> str:
    name = view.learner or "no rule yet"
    if view.status == IDLE:
        return f"<b>{label}</b> · {name}: idle: pick a rule and a data set, then press Start"
    parts = [f"<b>{label} · {name}</b> on {view.dataset}", ENDINGS.get(view.status, ("", view.status))[1]]
    if view.n_epochs:
        parts.append(f"epoch {view.epoch}/{view.n_epochs}, step {view.step}")
    accuracy = [a for a in view.curves["val_accuracy"] if a is not None]
    if accuracy:
        parts.append(f"validation accuracy {100 * accuracy[-1]:.1f}% (best {100 * max(accuracy):.1f}%)")
    if view.curves["time"]:
        parts.append(f"{view.curves['time'][-1]:.1f} s")
    return " · ".join(parts)


class ClassroomPage:
    def __init__(self):
        self.lesson = Lesson()
        names = learners()
        firsts = [n for n in FIRST_CHOICES if n in names] + names
        self.mode = pn.widgets.RadioButtonGroup(options=["One rule", "Compare two"], value="One rule",
                                                sizing_mode="stretch_width", css_classes=["mode"])
        self.rule_a = KnobPanel("A", names, firsts[0])
        self.rule_b = KnobPanel("B", names, firsts[1] if len(firsts) > 1 else firsts[0])
        self.rule_b.panel.visible = False
        self.dataset = pn.widgets.Select(label="Data set", options=list(DATASETS), value="moons",
                                         sizing_mode="stretch_width", css_classes=["dataset"])
        self.width = pn.widgets.DiscreteSlider(label="Width (units per hidden layer)", options=WIDTHS, value=32,
                                               sizing_mode="stretch_width")
        self.depth = pn.widgets.IntSlider(label="Depth (hidden layers)", start=1, end=4, value=2,
                                          sizing_mode="stretch_width")
        self.epochs = pn.widgets.IntInput(label="Epochs", value=60, start=1, end=10000, sizing_mode="stretch_width")
        self.seed = pn.widgets.IntInput(label="Seed", value=0, start=0, sizing_mode="stretch_width")
        self.slow = pn.widgets.Checkbox(label="Slow motion (at least 0.3 s per epoch)", value=False)
        self.start = pn.widgets.Button(label="Start", color="primary", css_classes=["start"])
        self.pause = pn.widgets.Button(label="Pause", color="warning", disabled=True, css_classes=["pause"])
        self.reset = pn.widgets.Button(label="Reset", color="danger", css_classes=["reset"])
        self.start.on_click(lambda event: self.on_start())
        self.pause.on_click(lambda event: self.on_pause())
        self.reset.on_click(lambda event: self.on_reset())
        self.mode.param.watch(lambda event: self.on_mode(), "value")
        self.columns = {label: RuleColumn(label, self.lesson) for label in ("A", "B")}
        self.columns["B"].panel.visible = False
        self.settings_widgets = [self.mode, self.dataset, self.width, self.depth, self.epochs, self.seed, self.slow]
        # refreshing starts once the page is in the browser: before, there is no one to show it to
        pn.state.onload(lambda: pn.state.add_periodic_callback(self.refresh, period=REFRESH_MS))
        pn.state.on_session_destroyed(lambda context: self.closed())

    def layout(self):
        sidebar = pn.Column(
            pn.pane.HTML("<h2 style='margin:0'>altlearn classroom</h2>", margin=(10, 10)), self.mode, self.rule_a.panel,
            self.rule_b.panel, pn.layout.Divider(), self.dataset, self.width, self.depth, self.epochs, self.seed,
            self.slow, pn.Row(self.start, self.pause, self.reset, sizing_mode="stretch_width"),
            width=SIDEBAR_WIDTH, styles={"background": "#f7f7f9"})
        main = pn.Row(self.columns["A"].panel, self.columns["B"].panel, sizing_mode="stretch_width")
        return pn.Row(sidebar, main, sizing_mode="stretch_width")

    @property
    def compare(self) -> bool:
        return self.mode.value == "Compare two"

    def settings(self) -> Settings:
        return Settings(learner=self.rule_a.rule.value, dataset=self.dataset.value, width=int(self.width.value),
                        depth=int(self.depth.value), knobs=self.rule_a.values(), seed=int(self.seed.value or 0),
                        epochs=int(self.epochs.value or 1), min_epoch_s=0.3 if self.slow.value else 0.0)

    def on_start(self):
        if self.lesson.running:          # a second press starts nothing (a paused lesson resumes)
            self.lesson.resume()
        elif self.compare:
            self.lesson.start(self.settings(), self.rule_b.rule.value, self.rule_b.values())
        else:
            self.lesson.start(self.settings())
        self.refresh()

    def on_pause(self):
        if self.lesson.paused:
            self.lesson.resume()
        else:
            self.lesson.pause()
        self.refresh()

    def on_reset(self):
        self.lesson.reset()
        self.refresh()

    def on_mode(self):
        self.rule_b.panel.visible = self.compare
        self.columns["B"].panel.visible = self.compare

    def closed(self):
        """The tab is gone: stop its training, and say so once the training threads have ended."""
        if not self.lesson.running:
            return
        self.lesson.close()

        def report():
            if self.lesson.wait(60):
                print("altlearn classroom: a page was closed: its training stopped", file=sys.stderr, flush=True)

        threading.Thread(target=report, daemon=True).start()

    def refresh(self):
        for label, column in self.columns.items():
            if label == "A" or self.compare or column.run.status != IDLE:
                column.refresh()
        running = self.lesson.running
        self.start.disabled = running and not self.lesson.paused
        self.pause.disabled = not running
        self.pause.label = "Resume" if self.lesson.paused else "Pause"
        for widget in self.settings_widgets:
            widget.disabled = running
        self.rule_a.set_disabled(running)
        self.rule_b.set_disabled(running)


def build_page():
    """One tab's page (Panel calls it once per browser session)."""
    return ClassroomPage().layout()
