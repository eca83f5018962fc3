"""`d1 eval --save_traces N` and `d1 trace`: the trace file beside the generations, its bad inputs, and the
HTML viewer replayed in a real headless Chromium (slider driven by key presses, the play button clicked, the DOM
checked against the trace, a screenshot that is not blank)."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest

from d1.cli.main import main
from d1.diffusion.trace import row_from_dict
from d1.evaluation import runner
from d1.evaluation.traces import read_traces
from d1.tasks.synthetic import make_dataset
from tests.viz.browser import Browser, find_chromium

SETTINGS = ["--gen_length", "32", "--block_length", "16", "--diffusion_steps", "8", "--batch_size", "2"]


@pytest.fixture(scope="module")
def traced(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trace file of a tiny-model Sudoku eval of 5 items, the first 3 traced."""
    folder = tmp_path_factory.mktemp("traced")
    data = make_dataset("sudoku", 5, 0, folder / "sudoku.csv")
    args = ["eval", "--model_path", str(tiny_model_dir), "--dataset", "sudoku", "--data_path", str(data),
            "--output_dir", str(folder / "out"), "--save_traces", "3", "--system_prompt", "", *SETTINGS]  # fmt: skip
    assert main(args) == 0
    (path,) = (folder / "out").glob("*_traces.json")
    assert path.name == f"sudoku_{tiny_model_dir.name}_32_8_0_traces.json"
    return path


def test_eval_saves_traces_of_the_first_items_beside_the_generations(traced: Path) -> None:
    items = read_traces(traced)
    generations = json.loads(traced.with_name(traced.name.replace("_traces", "_generations")).read_text())
    assert [item["index"] for item in items] == [0, 1, 2]
    for item, record in zip(items, generations["generations"], strict=False):
        assert item["generation"] == record["generations"] and item["question"] == record["question"]
        row = row_from_dict(item["trace"])
        assert len(item["pieces"]) == row.gen_length == 32 and len(row.steps) == 8
        assert sorted(p for s in row.steps for p in s.positions) == list(range(32))
        assert item["grids"][-1] == item["extracted"]  # the last grid is what the task's parser reads
        assert item["grids"][0] in ("", "0" * 16)  # before any step nothing is filled in


@pytest.mark.parametrize(
    "count, message",
    [
        ("9", "save_traces=9 is more than this run's 4 test items; pass at most --save_traces 4"),
        ("-1", "save_traces=-1 must be >= 0"),
    ],
)
def test_bad_save_traces_fail_before_loading(tiny_model_dir, tmp_path, monkeypatch, capsys, count, message):
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    data = make_dataset("sudoku", 4, 0, tmp_path / "sudoku.csv")
    args = ["eval", "--model_path", str(tiny_model_dir), "--dataset", "sudoku", "--data_path", str(data),
            "--output_dir", str(tmp_path / "out"), "--save_traces", count, *SETTINGS]  # fmt: skip
    assert main(args) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda text: text[: len(text) // 2], "is not complete JSON .* truncated"),
        (
            lambda text: text[: text.index('"question"') + 4],
            r"\(Unterminated string starting at: line \d+, column \d+\): truncated",
        ),
        (
            lambda text: text.replace('"version": 1', '"version": 7', 1),
            "a d1 trace of version 7; this d1 reads version 1",
        ),
        (lambda text: '{"generations": []}', "is not a d1 trace file"),
    ],
    ids=["truncated", "cut-in-a-string", "other-version", "generation-file"],
)
def test_bad_trace_files_are_one_line_errors_and_write_nothing(traced, tmp_path, capsys, damage, message):
    bad = tmp_path / "bad_traces.json"
    bad.write_text(damage(json.dumps(json.loads(traced.read_text()), indent=1)))
    assert main(["trace", str(bad), "--output", str(tmp_path / "view.html")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("d1 trace: error:") and len(err.strip().splitlines()) == 1
    assert re.search(message, err)
    assert list(tmp_path.iterdir()) == [bad]


def test_a_folder_with_one_trace_file_is_read_and_one_with_several_lists_them(traced, tmp_path, capsys) -> None:
    assert main(["trace", str(traced.parent), "--output", str(tmp_path / "one.html")]) == 0
    assert traced.name in (tmp_path / "one.html").read_text()
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("a_traces.json", "b_traces.json"):
        (folder / name).write_bytes(traced.read_bytes())
    capsys.readouterr()
    assert main(["trace", str(folder), "--output", str(tmp_path / "two.html")]) == 1
    err = capsys.readouterr().err
    assert "is a folder; its *_traces.json files: a_traces.json, b_traces.json. Pass one of them" in err
    assert not (tmp_path / "two.html").exists()


def _browser() -> Browser:
    executable = find_chromium()
    if executable is None:
        if os.geteuid() != 0:
            pytest.skip("Chromium is not installed and installing it needs root: apt-get install chromium")
        pytest.fail("Chromium is missing although `make test` installs it (apt-get install -y chromium)")
    return Browser(executable)


def test_viewer_replays_the_generation_in_headless_chromium(traced: Path, tmp_path: Path) -> None:
    page = tmp_path / "trace.html"
    assert main(["trace", str(traced), "--output", str(page)]) == 0
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and "<script src" not in text  # self-contained
    item = read_traces(traced)[1]
    row = row_from_dict(item["trace"])
    decided_at = row.decided_at()
    browser = _browser()
    try:
        browser.open(page.as_uri() + "#item=1&step=0")
        count = "document.querySelectorAll('#tokens .decided').length"
        assert browser.evaluate(count) == 0
        assert browser.evaluate("document.querySelectorAll('#tokens .masked').length") == 32
        browser.evaluate("document.getElementById('step').focus()")
        for k in range(1, 4):  # the arrow key moves the slider one step, as a user would
            browser.press("ArrowRight", 39)
            assert browser.evaluate("Number(document.getElementById('step').value)") == k
            shown = browser.evaluate(
                "[...document.querySelectorAll('#tokens .decided')].map(s => Number(s.dataset.pos))"
            )
            assert shown == [p for p in range(32) if decided_at[p] < k]
            new = browser.evaluate("[...document.querySelectorAll('#tokens .new')].map(s => s.textContent)")
            assert new == [item["pieces"][p] for p in sorted(row.steps[k - 1].positions)]
            # the label, the outlined tokens and the tooltips count steps alike: the k-th forward pass is step k
            label = browser.evaluate("document.getElementById('step-label').textContent")
            assert label == f"step {k} / {max(decided_at) + 1}"
            titles = browser.evaluate(
                "[...document.querySelectorAll('#tokens .decided')].map(s => [s.classList.contains('new'), s.title])"
            )
            assert {title.split(",")[0] for outlined, title in titles if outlined} == {f"step {k}"}
            assert [title.split(",")[0] for _, title in titles] == [f"step {decided_at[p] + 1}" for p in shown]
        cells = browser.evaluate("[...document.querySelectorAll('#grid .cell')].map(c => c.textContent)")
        assert len(cells) == 16
        assert [c for c, given in zip(cells, item["puzzle"], strict=True) if given != "0"] == [
            g for g in item["puzzle"] if g != "0"
        ]
        verdict = browser.evaluate("document.getElementById('verdict').textContent")
        assert verdict.startswith("correct" if item["correct"] else "incorrect")
        browser.click("#play")  # plays on to the end: every position decided
        browser.wait_for("document.getElementById('play').textContent === 'play'", timeout=20)
        assert browser.evaluate("Number(document.getElementById('step').value)") == max(decided_at) + 1
        assert browser.evaluate(count) == 32
        browser.open(page.as_uri() + "#item=1&step=5")
        assert browser.evaluate(count) == sum(1 for when in decided_at if when < 5)
        image = browser.screenshot()
    finally:
        browser.close()
    shot = tmp_path / "trace-viewer.png"
    shot.write_bytes(image)
    import matplotlib.image

    pixels = matplotlib.image.imread(io.BytesIO(image), format="png")
    assert pixels.shape[0] > 100 and pixels.std() > 0.05  # not a blank page
    assert len({tuple(p) for p in pixels[::7, ::7, :3].reshape(-1, 3).round(2).tolist()}) > 20
    print(f"screenshot: {shot}")
