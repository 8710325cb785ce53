"""The plots of one rule on the page (bokeh figures) and how a `View` of its board updates them.

Each figure keeps bokeh's save tool in its toolbar: one click downloads it as a PNG. Data sources
carry names (``A-curves``, ``A-boundary`` ...) so a browser test can read what the page holds.
"""
from __future__ import annotations

import numpy as np
from bokeh.models import ColumnDataSource, Range1d, SaveTool
from bokeh.palettes import Category10_10, Viridis256
from bokeh.plotting import figure

from experiments.classroom.board import CURVES, View

CLASS_COLOURS = Category10_10
TRAIN_COLOUR, VAL_COLOUR = "#1f77b4", "#d62728"
# stretched to their column, down to a small minimum, so that two rules fit side by side on a laptop
FIGURE = dict(tools="", toolbar_location="above", sizing_mode="stretch_width", width=300, min_width=160)
# the plane and the confusion matrix keep their shape: a stretched boundary misleads
SQUARE = dict(tools="", toolbar_location="above", width=470, height=410)


def _rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)


def plane_rgba(classes: np.ndarray, confidence: np.ndarray, n_classes: int) -> np.ndarray:
    """The predicted class as its colour, paler where the rule is less sure (uint32 RGBA image)."""
    palette = np.stack([_rgb(c) for c in CLASS_COLOURS])
    floor = 1.0 / max(n_classes, 2)
    sure = np.clip((confidence - floor) / (1 - floor), 0, 1)[..., None]
    white = np.full(3, 255.0)
    rgb = white + (palette[classes % len(palette)] - white) * (0.15 + 0.55 * sure)
    rgba = np.concatenate([rgb, np.full(classes.shape + (1,), 255.0)], -1).astype(np.uint8)
    return rgba.view(np.uint32).reshape(classes.shape)


class RuleView:
    """The figures of rule ``label`` (A or B) and what they last showed."""

    def __init__(self, label: str, height: int = 260):
        self.label = label
        self.shown_version = -1
        self.shown_epochs = 0
        self.shown_picture = None
        self.block_labels: list[str] = []
        self.named_for = None
        self.curves = ColumnDataSource({k: [] for k in CURVES}, name=f"{label}-curves")
        self.image = ColumnDataSource({"image": [], "x": [], "y": [], "dw": [], "dh": []}, name=f"{label}-boundary")
        self.points = ColumnDataSource({"x": [], "y": [], "colour": []}, name=f"{label}-points")
        self.cells = ColumnDataSource({"true": [], "predicted": [], "count": [], "colour": [], "text": []},
                                      name=f"{label}-confusion")
        self.lines = ColumnDataSource({"xs": [], "ys": [], "colour": [], "block": []}, name=f"{label}-blocks")

        self.boundary = figure(title="decision boundary", x_range=Range1d(0, 1), y_range=Range1d(0, 1), **SQUARE)
        self.boundary.image_rgba(image="image", x="x", y="y", dw="dw", dh="dh", source=self.image)
        self.boundary.scatter("x", "y", fill_color="colour", line_color="black", line_width=0.4, size=5,
                              source=self.points)

        self.confusion = figure(title="confusion matrix (validation)", x_axis_label="predicted",
                                y_axis_label="true", x_range=Range1d(-0.5, 9.5), y_range=Range1d(9.5, -0.5),
                                visible=False, **SQUARE)
        self.confusion.rect("predicted", "true", 1, 1, fill_color="colour", line_color="white", source=self.cells)
        self.confusion.text("predicted", "true", text="text", text_align="center", text_baseline="middle",
                            text_font_size="9pt", source=self.cells)

        self.accuracy = figure(title="accuracy", height=height, x_axis_label="epoch", y_range=Range1d(0, 1.02),
                               **FIGURE)
        self.loss = figure(title="loss (cross-entropy)", height=height, x_axis_label="epoch", **FIGURE)
        for fig, metric in ((self.accuracy, "accuracy"), (self.loss, "loss")):
            fig.line("epoch", f"train_{metric}", source=self.curves, color=TRAIN_COLOUR, line_width=2,
                     legend_label="train")
            fig.line("epoch", f"val_{metric}", source=self.curves, color=VAL_COLOUR, line_width=2,
                     legend_label="validation")
            fig.legend.location = "bottom_right" if metric == "accuracy" else "top_right"
            fig.legend.background_fill_alpha = 0.6

        self.blocks = figure(title="per-block metric", height=height, x_axis_label="epoch", **FIGURE)
        self.blocks.multi_line("xs", "ys", line_color="colour", line_width=2, legend_field="block", source=self.lines)
        self.blocks.legend.location = "top_left"
        self.blocks.legend.background_fill_alpha = 0.6

        self.save_tools = {}
        for kind, fig in self.figures().items():
            fig.toolbar.logo = None
            self.save_tools[kind] = SaveTool(filename=f"classroom_{label}_{kind}", description="Save as PNG")
            fig.add_tools(self.save_tools[kind])

    def figures(self) -> dict:
        return {"boundary": self.boundary, "confusion": self.confusion, "accuracy": self.accuracy,
                "loss": self.loss, "blocks": self.blocks}

    def update(self, view: View, block_metric: str | None) -> bool:
        """Draw what is new in ``view``; True if anything was."""
        if view.version == self.shown_version:
            return False
        if view.learner and (view.learner, view.dataset) != self.named_for:
            self.named_for = (view.learner, view.dataset)
            for kind, tool in self.save_tools.items():   # PNG downloads named after what they show
                tool.filename = f"classroom_{self.label}_{view.learner}_{view.dataset}_{kind}"
        self.shown_version = view.version
        name = view.learner or "rule"
        n = len(view.curves["epoch"])
        if n < self.shown_epochs or (n == 0 and self.shown_epochs == 0):
            self.curves.data = {k: _plain(v) for k, v in view.curves.items()}
            self.shown_epochs = n
        elif n > self.shown_epochs:
            self.curves.stream({k: _plain(v[self.shown_epochs:]) for k, v in view.curves.items()})
            self.shown_epochs = n
        self.accuracy.title.text = f"{self.label} · {name}: accuracy"
        self.loss.title.text = f"{self.label} · {name}: loss (cross-entropy)"
        self._picture(view, name)
        self.show_blocks(view, block_metric)
        return True

    def _picture(self, view: View, name: str):
        picture = view.picture
        if picture is self.shown_picture:
            return
        self.shown_picture = picture
        if picture is None:
            self.image.data = {"image": [], "x": [], "y": [], "dw": [], "dh": []}
            self.points.data = {"x": [], "y": [], "colour": []}
            self.cells.data = {"true": [], "predicted": [], "count": [], "colour": [], "text": []}
            return
        plane = picture.kind == "plane"
        self.boundary.visible, self.confusion.visible = plane, not plane
        if plane:
            (x0, x1), (y0, y1) = picture.x_range, picture.y_range
            self.boundary.x_range.update(start=x0, end=x1)
            self.boundary.y_range.update(start=y0, end=y1)
            self.image.data = {"image": [plane_rgba(picture.classes, picture.confidence, view.n_classes)],
                               "x": [x0], "y": [y0], "dw": [x1 - x0], "dh": [y1 - y0]}
            if view.points is not None and len(self.points.data["x"]) != len(view.points[0]):
                x, y = view.points
                self.points.data = {"x": x[:, 0].tolist(), "y": x[:, 1].tolist(),
                                    "colour": [CLASS_COLOURS[int(c) % 10] for c in y]}
            self.boundary.title.text = f"{self.label} · {name}: decision boundary (epoch {picture.epoch})"
        else:
            m = picture.confusion
            k = m.shape[0]
            share = m / np.maximum(m.sum(1, keepdims=True), 1)
            true, predicted = np.divmod(np.arange(k * k), k)
            self.cells.data = {"true": true.tolist(), "predicted": predicted.tolist(), "count": m.ravel().tolist(),
                               "colour": [Viridis256[int(255 * s)] for s in share.ravel()],
                               "text": [str(c) if c else "" for c in m.ravel()]}
            self.confusion.x_range.end = self.confusion.y_range.start = k - 0.5
            accuracy = np.trace(m) / max(m.sum(), 1)
            self.confusion.title.text = (f"{self.label} · {name}: confusion matrix, validation "
                                         f"(epoch {picture.epoch}, {100 * accuracy:.1f}%)")

    def show_blocks(self, view: View, metric: str | None):
        self.block_labels = sorted(view.blocks)
        series = view.blocks.get(metric) if metric else None
        if not series:
            self.lines.data = {"xs": [], "ys": [], "colour": [], "block": []}
            self.blocks.title.text = (f"{self.label} · {view.learner or 'rule'}: "
                                      + ("no per-block metrics from this rule" if view.epoch else "per-block metric"))
            return
        n_blocks = max(len(v) for v in series if v)
        epochs = view.curves["epoch"][:len(series)]
        xs, ys, colours, names = [], [], [], []
        for b in range(n_blocks):
            values = [np.nan if v is None or b >= len(v) or v[b] is None else v[b] for v in series]
            xs.append(list(epochs))
            ys.append(values)
            colours.append(CLASS_COLOURS[b % 10])
            names.append(f"block {b}")
        self.lines.data = {"xs": xs, "ys": ys, "colour": colours, "block": names}
        self.blocks.title.text = f"{self.label} · {view.learner}: {metric} per block"


def _plain(values):
    return [np.nan if v is None else v for v in values]
