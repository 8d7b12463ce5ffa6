"""Progress reports: speed over recent updates, ETA, terminal vs. log lines."""

import io

from mcjax.training import metrics as progress


def test_speed_recovers_after_a_pause_and_eta_follows(monkeypatch):
    # __init__ reads the clock once, then one read per update; a 60 s compile after step 30.
    clock = iter([0.0, 1.0, 2.0, 3.0, 63.0, 64.0, 65.0, 66.0])
    monkeypatch.setattr(progress.time, "time", lambda: next(clock))
    out = io.StringIO()
    bar = progress.Progress(
        total_steps=100, start_step=0, images_per_step=8, stream=out, interactive=False, window=3
    )
    lines = [bar.update(step) for step in (10, 20, 30, 40, 50, 60, 70)]
    assert "-- img/s" in lines[0]
    assert "80 img/s" in lines[2]  # 10 steps of 8 images per second
    assert "ETA 00:07" in lines[2]  # 70 steps left at 10 steps/s
    assert "80 img/s" not in lines[3]  # the compile is inside the window...
    assert "80 img/s" in lines[6] and "ETA 00:03" in lines[6]  # ...and then out of it


def test_interactive_bar_rewrites_one_line():
    out = io.StringIO()
    bar = progress.Progress(
        total_steps=4, start_step=0, images_per_step=1, stream=out, interactive=True
    )
    bar.update(2)
    bar.update(4)
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    assert "[###############...............] 2/4" in text
