"""Training: build a run's objects from its config once (``build``), fit and test them
(``pipeline.train``), and keep the run folder: its status, history, loggers and resume."""
