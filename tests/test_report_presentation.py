"""stnbench-report as a new user reads it (issue 24): report.md shows its pictures, no column is empty in every
row, a configuration is never cut, the legend leaves the published ticks alone, glimpse pictures say whose they
are and what each image is and was taken for, and an Optuna search's plots come with the installed package."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.figure
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import ImageDraw

from conftest import compose_config
from stnbench import glimpses
from stnbench import report as report_module
from stnbench.records import write_json

ROTATED = {"_target_": "stnbench.data.distortions.Rotated", "max_angle": 90, "canvas_size": 28}
LONG_KEY = "model.localisation.a_rather_long_key_name_for_a_layer_width"


def _fake_run(root: Path, name: str, model: str = "cnn", transform: str | None = None, test_err: float = 2.0,
              config: dict | None = None, best_checkpoint: bool = False) -> Path:
    """A finished run folder as stnbench-train leaves it (no training): results.json and .hydra/config.yaml."""
    folder = root / name
    stored = {"seed": 1, "task_name": "train", "data": {"name": "rotated", "seed": 1, "num_val": 500,
                                                         "distortion": ROTATED},
              "model": {"_target_": model}, **(config or {})}
    write_json(folder / "results.json", {
        "status": "finished", "choice/data": "rotated", "choice/model": model, "choice/transform": transform,
        "choice/seed": 1, "choice/batch_size": 128, "test/err": test_err, "val/err_best": test_err + 1,
        "test_images": 1000, "parameters": 10, "fit_seconds": 1.0, "global_step": 3})
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(stored), folder / ".hydra" / "config.yaml")
    if best_checkpoint:
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "best.ckpt").write_bytes(b"")  # load_model is replaced in these tests
    return folder


def _nested(flat: dict) -> dict:
    nested: dict = {}
    for key, value in flat.items():
        node = nested
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return nested


# ---- the table ---------------------------------------------------------------------------------------------------
def test_columns_empty_in_every_row_are_left_out_of_the_console_and_report_md(tmp_path, capsys):
    _fake_run(tmp_path, "rotated-cnn-s1")
    _fake_run(tmp_path, "rotated-fcn-s1", model="fcn", test_err=3.0)
    result = report_module.report(tmp_path, plots=False)
    shown = report_module.display_table(result["table"])
    # single digits: no digit error; tested on 1,000 images: no published number beside them
    assert "digit err %" not in shown and "published %" not in shown
    assert {"configuration"} & set(shown) == set()  # one configuration per model: nothing tells rows apart
    assert {"data", "model", "test err % (mean ± std)", "val err best %", "test images", "trained on",
            "diff"} <= set(shown)
    assert "digit err %" in report_module.display_table(result["table"], drop_empty=False)
    markdown = (tmp_path / "report.md").read_text()
    assert "digit err %" not in markdown and "published %" not in markdown and "val err best %" in markdown
    report_module.print_report(result)
    printed = capsys.readouterr().out
    assert "digit err %" not in printed and "test images" in printed and "n/c [1]:" in printed


def _configuration_cells(printed: str) -> list[str]:
    """The ``configuration`` cell of every body row of a rich table, its wrapped lines joined."""
    lines = printed.splitlines()
    header = next(line for line in lines if "┃" in line and "configuration" in line)
    index = [cell.strip() for cell in header.split("┃")].index("configuration")
    cells, current = [], []
    for line in lines[lines.index(header) + 1:]:
        if line.startswith(("├", "└")) and current:
            cells.append("".join(current))
            current = []
        elif line.startswith("│"):
            current.append(line.split("│")[index].strip())
    return cells


def test_the_console_never_cuts_a_configuration(tmp_path, capsys):
    """Optuna-like rows told apart only by long key=value names: each is printed whole (wrapped)."""
    for k, (lr, monitor) in enumerate([(0.001234567, "train/loss"), (0.002345678, "val/err"), (0.1, "val/loss")]):
        _fake_run(tmp_path, f"rotated-st_cnn-affine-s1_{k}", model="st_cnn", transform="affine",
                  config=_nested({"callbacks.model_checkpoint.monitor": monitor, LONG_KEY: 123456789 + k,
                                  "optimizer.lr": lr, "model.loc_lr_multiplier": 0.1 * (k + 1)}))
    result = report_module.report(tmp_path, plots=False)
    names = sorted(result["table"]["configuration"])
    assert names[0] == (f"callbacks.model_checkpoint.monitor=train/loss, model.loc_lr_multiplier=0.1, {LONG_KEY}="
                        "123456789, optimizer.lr=0.001235")  # learning rates with 4 significant digits, as before
    report_module.print_report(result)
    printed = capsys.readouterr().out
    assert "…" not in printed
    cells = _configuration_cells(printed)
    assert sorted(c.replace(" ", "") for c in cells) == sorted(n.replace(" ", "") for n in names)


@pytest.fixture
def saved_figures(monkeypatch) -> list:
    """Every figure the report saves, kept open to be measured."""
    saved = []
    save = matplotlib.figure.Figure.savefig

    def keep(self, *args, **kwargs):
        saved.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    return saved


def _renderer(figure):
    """The figure was closed after saving: draw it again to measure it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return canvas.get_renderer()


def test_the_test_error_legend_sits_outside_the_axes(tmp_path, saved_figures):
    """The legend must not cover the bars or the black ticks of the published numbers."""
    table = pd.DataFrame({"data": ["rotated", "rotated", "rts", "rts"], "model": ["cnn", "st_cnn-affine"] * 2,
                          "configuration": ["", "optimizer.lr=0.003", "", "optimizer.lr=0.003"],
                          "test_err_mean": [1.3, 0.8, 1.0, 0.6], "test_err_std": [0.1, None, 0.2, 0.1],
                          "published_err": [1.2, 0.7, 0.8, 0.5]})
    report_module.plot_test_error(table, tmp_path / "test_error.png")
    [figure] = saved_figures
    renderer = _renderer(figure)
    [axes] = figure.axes
    legend = axes.get_legend() or figure.legends[0]
    assert not legend.get_window_extent(renderer).overlaps(axes.get_window_extent(renderer))
    assert "published (the paper's setting only)" in [text.get_text() for text in legend.get_texts()]
    assert (tmp_path / "test_error.png").stat().st_size > 0


# ---- pictures ----------------------------------------------------------------------------------------------------
@pytest.fixture
def st_model():
    cfg = compose_config(["model=st_cnn", "data=rotated"])
    torch.manual_seed(0)
    return instantiate(cfg.model, input_shape=(1, 28, 28), num_classes=10, num_steps=1).eval()


@pytest.fixture
def drawn(monkeypatch) -> list[str]:
    """Every text PIL draws."""
    texts: list[str] = []
    draw = ImageDraw.ImageDraw.text

    def record(self, xy, text, *args, **kwargs):
        texts.append(str(text))
        return draw(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", record)
    return texts


def test_glimpse_pictures_name_the_run_and_label_every_image(tmp_path, st_model, drawn, monkeypatch):
    run = _fake_run(tmp_path / "sweep", "rotated-st_cnn-affine-s1", model="st_cnn", transform="affine")
    monkeypatch.setattr(glimpses, "load_model", lambda path: st_model)
    images, labels = torch.rand(5, 1, 28, 28), torch.tensor([3, 1, 4, 1, 5])
    written = glimpses.write_glimpse_pictures([run], tmp_path / "glimpses", images=images, targets=labels)
    assert written == {run.name: tmp_path / "glimpses" / f"{run.name}.png"}  # the file name as before
    title = "".join(text for text in drawn if not re.match(r"label \d", text)).replace(" ", "")
    assert title.startswith("rotated-st_cnn-affine-s1(modelst_cnn-affine)")  # wrapped to the picture's width
    with torch.no_grad():
        predicted = st_model(images).logits[:, -1].argmax(-1)
    assert [f"label {int(y)}  pred {int(p)}" for y, p in zip(labels, predicted, strict=True)] == \
        [text for text in drawn if re.match(r"label \d", text)]


class NoTransformer(torch.nn.Module):
    """A model without a spatial transformer: nothing to draw."""

    def forward(self, images):
        from stnbench.models.output import ModelOutput

        return ModelOutput(logits=torch.zeros(len(images), 1, 10))


def test_report_md_embeds_its_pictures_with_relative_links(tmp_path, st_model, monkeypatch):
    _fake_run(tmp_path, "rotated-cnn-s1", best_checkpoint=True)
    _fake_run(tmp_path, "rotated-st_cnn-affine-s1", model="st_cnn", transform="affine", best_checkpoint=True)
    monkeypatch.setattr(glimpses, "load_model", lambda path: st_model if "st_cnn" in str(path) else NoTransformer())
    monkeypatch.setattr(glimpses, "reference_inputs", lambda runs, count, **options: (
        torch.rand(count, 1, 28, 28), torch.arange(count) % 10, None))  # images, labels, no source
    result = report_module.report(tmp_path)
    assert tmp_path / "glimpses" / "rotated-st_cnn-affine-s1.png" in result["written"]
    markdown = (tmp_path / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert "test_error.png" in links and "glimpses/rotated-st_cnn-affine-s1.png" in links
    assert all((tmp_path / link).is_file() for link in links)  # relative to report.md, all there
    assert all(path.relative_to(tmp_path).as_posix() in links for path in result["written"]
               if path.suffix == ".png")


# ---- Optuna ------------------------------------------------------------------------------------------------------
def _study(folder: Path, name: str = "optuna_demo") -> None:
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    from stnbench.optuna_trial import open_storage

    study = optuna.create_study(study_name=name, storage=open_storage(str(folder / "optuna.journal")))
    for number, errors in enumerate([[30.0, 20.0, 15.0], [25.0, 12.0, 9.0], [60.0], [40.0, 30.0, 28.0]]):
        trial = study.ask({"optimizer.lr": FloatDistribution(1e-4, 1e-1, log=True)})
        for step, value in enumerate(errors, 1):
            trial.report(value, step * 3)
        if number == 2:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, min(errors))


PLOTS = ["optuna_optimization_history.png", "optuna_intermediate_values.png", "optuna_parallel_coordinate.png",
         "optuna_slice.png"]


def test_report_optuna_writes_the_study_plots_into_the_sweep_folder(tmp_path, capsys):
    _study(tmp_path)
    report_module.main(["--optuna", str(tmp_path)])
    printed = capsys.readouterr().out
    assert all((tmp_path / name).stat().st_size > 0 for name in PLOTS)
    assert "trial   2 PRUNED" in printed and str(tmp_path / PLOTS[0]) in printed


def test_report_optuna_without_a_study_says_so_in_one_line(tmp_path):
    with pytest.raises(SystemExit) as stopped:
        report_module.main(["--optuna", str(tmp_path)])
    message = str(stopped.value)
    assert message.startswith(f"stnbench-report: error: no Optuna study in '{tmp_path}'") and "\n" not in message
    assert "optuna.journal" in message and not list(tmp_path.iterdir())


def test_the_report_of_an_optuna_sweep_embeds_its_study(tmp_path):
    _fake_run(tmp_path, "rotated-cnn-s1_optimizer.lr=0.001")
    _study(tmp_path)
    result = report_module.report(tmp_path)
    assert all(tmp_path / name in result["written"] for name in PLOTS)
    markdown = (tmp_path / "report.md").read_text()
    assert "## Optuna study" in markdown and all(f"({name})" in markdown for name in PLOTS)


def test_the_optuna_plots_ship_with_the_package():
    """A pip-installed stnbench has them: the script in the source tree is a wrapper of the package's module."""
    import stnbench.optuna_plots as plots

    assert Path(plots.__file__).parent == Path(report_module.__file__).parent
    script = (Path(__file__).resolve().parents[1] / "scripts" / "optuna_plots.py").read_text()
    assert "from stnbench.optuna_plots import main" in script


def test_validation_curves_keep_their_legend_below_and_their_tail_readable(tmp_path, monkeypatch, saved_figures):
    """Curves from chance (~90 %) to a few % get a log axis, and the legend sits outside the panel."""
    curves = {"a": [(500, 10.0, 90.0), (1000, 20.0, 12.0), (1500, 30.0, 3.0)],
              "b": [(500, 11.0, 40.0), (1000, 21.0, 38.0), (1500, 31.0, 36.0)]}
    monkeypatch.setattr(report_module, "validation_curve", lambda run_dir: curves[run_dir])
    runs = pd.DataFrame({"data": ["rotated", "rts"], "model": ["cnn", "cnn"], "configuration": ["", ""],
                         "label": ["cnn", "cnn"], "run_dir": ["a", "b"], "test/err": [3.0, 36.0]})
    monkeypatch.setattr(report_module, "_tested", lambda frame: frame)
    monkeypatch.setattr(report_module, "configuration_names", lambda frame: {})
    assert report_module.plot_validation(runs, tmp_path / "val_error.png") == 2
    [figure] = saved_figures
    renderer = _renderer(figure)
    wide, narrow = figure.axes
    assert wide.get_yscale() == "log" and narrow.get_yscale() == "linear"  # 90 -> 3 spans 30x, 40 -> 36 does not
    for axes in figure.axes:
        assert not axes.get_legend().get_window_extent(renderer).overlaps(axes.get_window_extent(renderer))
