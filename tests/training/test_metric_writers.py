"""Metric records: a line torn by a kill is dropped, on reading and when a run resumes."""

from mcjax.training.metrics import MetricWriter, read_records


def test_torn_non_utf8_last_line_of_metrics_is_tolerated(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 2, "train/loss": 1.5}\n{"step": 4, "train/lo\xff\xfe\x80')
    assert read_records(str(path)) == [{"step": 2, "train/loss": 1.5}]
    writer = MetricWriter(str(tmp_path), resume_step=3)  # what a resumed run does
    writer.close()
    assert read_records(str(path)) == [{"step": 2, "train/loss": 1.5}]
