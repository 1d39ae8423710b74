"""models: everything that runs on a compute node.

The multi-task graph neural network, the data pipeline, training, screening and fine-tuning. Its contract with
the outside is a JSON config file in, files and a JSON result out: every app runs as
``python -m models.<app> --config CONFIG.json --result RESULT.json`` so that srun / mpiexec / torchrun can
launch it. This package imports nothing of ``campaign``, ``db``, ``sites``, parsl, globus, deephyper,
sqlalchemy or typer (import-linter contracts check it). Importing ``models`` itself does not import torch.
"""
