"""`housing predict`: batch scoring of files with the registered model, locally or on Spark.

The same model (``@champion`` by default, loaded with the service's sha256 check and skops
allow-list) and the same input rules as ``POST /predict`` (``housing_mlops.validation``).
``predict.runner`` runs a job; ``predict.job`` resolves its input and output and loads
the model; ``predict.local`` streams Arrow batches in this process; ``predict.spark`` (the
only module that imports pyspark) scores with ``mapInArrow`` on any Spark master;
``predict.scoring`` is the per-batch scoring both engines run. The modules import
downwards only (runner, spark, local, job, then scoring and compiled: an import-linter
contract).
"""

from housing_mlops.predict.job import PredictJob, make_job, read_lineage
from housing_mlops.predict.runner import run

__all__ = ["PredictJob", "make_job", "read_lineage", "run"]
