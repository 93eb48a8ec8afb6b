"""From a run folder to a service: export a run's network with its preprocessing
(``fmnist_lightning.serving.export``), and serve predictions over HTTP with LitServe
(``fmnist_lightning.serving.server``). See docs/serve.md."""
