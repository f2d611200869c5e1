"""Console verbosity: -v shows legseg's debug messages, -vv also the libraries'."""
from __future__ import annotations

import logging
import os

from legseg_tf import logging_setup


def test_verbosity_levels_and_log_file(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        log_file = logging_setup.configure(0, tmp_path / "logs", tag="t")
        assert logging.getLogger("tensorflow").level == logging.WARNING
        console = [h for h in root.handlers if getattr(h, "_legseg", False)
                   and not isinstance(h, logging.FileHandler)]
        assert console[0].level == logging.INFO
        logging.getLogger("legseg_tf.x").debug("only in the file")
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
        logging_setup.configure(1)
        assert logging.getLogger("tensorflow").level == logging.WARNING
        logging_setup.configure(2)
        assert logging.getLogger("tensorflow").level == logging.NOTSET
        assert sum(getattr(h, "_legseg", False) for h in root.handlers) == 1  # replaced, not added
        assert "only in the file" in log_file.read_text()
    finally:
        logging_setup.release()
        for handler in saved[0]:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(saved[1])
        for name in logging_setup.NOISY:
            logging.getLogger(name).setLevel(logging.WARNING)


def _legseg_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if getattr(h, "_legseg", False)]


def test_a_run_called_from_python_leaves_no_handler_behind(tiny_dataset, tmp_path):
    """The log file is complete and closed when cli.main returns; a later message goes
    nowhere near the finished run's output folder (a handler left behind wrote into it)."""
    from legseg_tf import cli

    empty_models = tmp_path / "models"
    empty_models.mkdir()
    out = tmp_path / "out"
    code = cli.main([str(tiny_dataset), str(out), "participant", "--models", str(empty_models),
                     "--skip_bids_validator"])
    assert code == cli.EXIT_NO_MODEL
    assert _legseg_handlers() == []
    [log_file] = (out / "logs").glob("legseg_participant_*.log")
    written = log_file.read_text()
    assert "no usable model manifest" in written
    logging.getLogger("legseg_tf.after").warning("after the run")
    assert log_file.read_text() == written


def test_a_log_file_that_cannot_be_reopened_stops_with_one_line(tmp_path, capsys):
    """A closed log file whose folder is gone: the next message must not raise in the
    caller (reopening happens outside logging's own error handling)."""
    import shutil

    root = logging.getLogger()
    saved_level = root.level
    try:
        log_file = logging_setup.configure(0, tmp_path / "logs", tag="t")
        [file_handler] = [h for h in _legseg_handlers() if isinstance(h, logging.FileHandler)]
        file_handler.close()  # the stream is reopened on the next message ...
        shutil.rmtree(tmp_path / "logs")  # ... in a folder that is gone
        logging.getLogger("legseg_tf.x").warning("first")
        logging.getLogger("legseg_tf.x").warning("second")
        errors = [line for line in capsys.readouterr().err.splitlines()
                  if line.startswith("legseg: cannot write the log file")]
        assert len(errors) == 1 and str(log_file) in errors[0]
    finally:
        logging_setup.release()
        root.setLevel(saved_level)
        for name in logging_setup.NOISY:
            logging.getLogger(name).setLevel(logging.WARNING)
