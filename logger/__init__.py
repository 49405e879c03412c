from logger.logger import get_logger, setup_logging
from logger.reporter import MetricsFile, Reporter, RunInfo, Sink, make_reporter
from logger.visualization import NullWriter, TensorboardWriter, make_writer

__all__ = ["MetricsFile", "NullWriter", "Reporter", "RunInfo", "Sink", "TensorboardWriter", "get_logger",
           "make_reporter", "make_writer", "setup_logging"]
