"""The data pipeline: readers of published formats -> filtered, split radius graphs in ADIOS2 -> loaders.

``readers/`` (the published formats), ``graphs`` (vesin radius graph with PBC and cap), ``split`` (stable ids,
hash splits), ``reference`` (element reference energies), ``filters``, ``shards`` (the ADIOS2 store format and
its writers), ``store`` (:class:`~models.data.store.GraphStore`: PyG batches from a store), ``loader``
(multi-dataset sampler), ``prefetch``, ``memory_budget``, ``merge`` (parts of a sharded run), ``demo``
(EMT / xTB demo generator). Apps: ``python -m models.preprocess`` and ``python -m models.demo``.
"""
