"""Pieces of the training app: learning-rate schedules, early stopping, the metrics writer, batch casting and
the epoch loop (:mod:`models.train` wires them to the CLI)."""
