from logger.logger import MetricsFile, get_logger, setup_logging
from logger.visualization import NullWriter, TensorboardWriter, make_writer

__all__ = ["MetricsFile", "NullWriter", "TensorboardWriter", "get_logger", "make_writer", "setup_logging"]
