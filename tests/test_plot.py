import json

import pytest

from bdh_scale.experiments.plot import main, read_metrics, series


def write_run(directory, n=20, val_every=5):
    directory.mkdir(parents=True)
    lines = []
    for step in range(n):
        rec = {"step": step, "tokens": step * 1024, "loss": 5.0 - 0.1 * step, "lr": 1e-3, "tokens_per_s": 1e4}
        if step % val_every == 0:
            rec.update(val_loss=5.2 - 0.1 * step, val_bpb=7.0)
        lines.append(json.dumps(rec))
    (directory / "metrics.jsonl").write_text("\n".join(lines) + "\n{\"step\": 20, \"lo")  # live run: torn line
    return directory


@pytest.mark.parametrize("x", ["step", "tokens"])
def test_writes_a_png(tmp_path, x):
    a, b = write_run(tmp_path / "run_a"), write_run(tmp_path / "run_b", n=12)
    out = tmp_path / "plots" / "loss.png"
    main([str(a), str(b), "--out", str(out), "--x", x])
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_series_keeps_the_latest_record_per_step(tmp_path):
    records = read_metrics(write_run(tmp_path / "r"))
    records.append({"step": 3, "loss": 0.5})  # a resumed run re-logs step 3
    xs, ys = series(records, "step", "loss")
    assert xs == list(range(20)) and ys[3] == 0.5
    assert series(records, "step", "val_loss")[0] == [0, 5, 10, 15]


def test_missing_dir_and_empty_metrics_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main([str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")])
    assert str(err.value) == f"bdh-plot: error: run directory not found: {tmp_path / 'nope'}"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    with pytest.raises(SystemExit) as err:
        main([str(empty), "--out", str(tmp_path / "x.png")])
    assert "has no metrics records" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "x.png").exists()


def test_published_figures_are_drawn_beside_the_runs(tmp_path):
    from bdh_scale.experiments.plot import plot_runs

    run = write_run(tmp_path / "run_a")
    figures = tmp_path / "log.csv"
    figures.write_text("step,val_loss\n10,4.1\n5,4.5\n15,\n")  # unordered; a step without a figure
    fig = plot_runs([run], tmp_path / "x.png", references=[f"M1 log={figures}"])
    (line,) = [line for line in fig.axes[0].get_lines() if line.get_label() == "M1 log val"]
    assert list(line.get_xdata()) == [5.0, 10.0] and list(line.get_ydata()) == [4.5, 4.1]


def test_a_bad_reference_is_one_line(tmp_path):
    run = write_run(tmp_path / "run_a")
    bad = tmp_path / "bad.csv"
    bad.write_text("step,loss\n1,2\n")
    for spec, says in ((f"log={bad}", "needs a header with columns step and val_loss"),
                       (f"log={tmp_path / 'none.csv'}", "no file"), ("log", "expected LABEL=FILE.csv")):
        with pytest.raises(SystemExit) as err:
            main([str(run), "--out", str(tmp_path / "x.png"), "--reference", spec])
        assert says in str(err.value) and "\n" not in str(err.value)
