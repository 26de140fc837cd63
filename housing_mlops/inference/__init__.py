"""Running a registered model: what ``housing serve`` and ``housing predict`` share.

``inference.loaded_model`` loads a version for predicting (its fast path, checked against
``pipeline.predict`` at load); ``inference.compiled`` compiles a LightGBM model's trees to
C (the only module that loads native code). Both stages build on this package and never
import each other.
"""
