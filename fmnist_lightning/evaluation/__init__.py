"""Evaluating trained networks: the test report from Lightning's test loop, its figures and
logger summaries, run folders (``load_trained``), and predictions on image files."""

from fmnist_lightning.evaluation.evaluate import evaluate_run, run_test_report
from fmnist_lightning.evaluation.runs import TrainedModel, load_trained

__all__ = ["TrainedModel", "evaluate_run", "load_trained", "run_test_report"]
