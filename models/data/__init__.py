"""The data pipeline: readers of published formats -> filtered, split radius graphs in ADIOS2 -> loaders.

``readers/`` (ASE files, ANI-layout HDF5, ASE-LMDB), ``graphs`` (vesin radius graph with PBC and cap),
``split`` (stable ids, hash splits), ``reference`` (element reference energies), ``filters``, ``store``
(ADIOS2 writer and :class:`~models.data.store.GraphStore`), ``loader`` (multi-dataset sampler), ``demo``
(EMT / xTB demo generator). Apps: ``python -m models.preprocess`` and ``python -m models.demo``.
"""
