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
        for handler in [h for h in root.handlers if getattr(h, "_legseg", False)]:
            root.removeHandler(handler)
            handler.close()
        for handler in saved[0]:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(saved[1])
        for name in logging_setup.NOISY:
            logging.getLogger(name).setLevel(logging.WARNING)
