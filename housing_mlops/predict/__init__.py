"""`housing predict`: batch scoring of files with the registered model, locally or on Spark.

The same model (``@champion`` by default, loaded with the service's sha256 check and skops
allow-list) and the same input rules as ``POST /predict`` (``housing_mlops.validation``).
``predict.job`` resolves the input and output and loads the model; ``predict.local``
streams Arrow batches in this process; ``predict.spark`` (the only module that imports
pyspark) scores with ``mapInArrow`` on any Spark master; ``predict.scoring`` is the
per-batch scoring both engines run.
"""

from housing_mlops.predict.job import PredictJob, make_job, read_lineage, run

__all__ = ["PredictJob", "make_job", "read_lineage", "run"]
