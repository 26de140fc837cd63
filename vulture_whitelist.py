"""Names vulture (make lint) cannot see used: frameworks call them by convention.

Each entry says who uses it. Code that nothing uses is deleted, not listed here.
"""

# ruff: noqa
# mypy: ignore-errors
_ = object()

# Typer calls the app callback; uvicorn loads the app factory by its dotted name.
main_callback  # housing_mlops/cli/app.py
app_from_env  # housing_mlops/serving: "housing_mlops.serving...:app_from_env", factory=True

# FastAPI calls route handlers through their decorators.
health  # GET /health
ready  # GET /ready
prometheus_metrics  # GET /metrics
reload_model  # POST /model/reload

# pydantic: model settings and validators are read by the metaclass; response-model fields
# are serialized by name.
_.model_config
_._hex64  # config.DataConfig
_._unique_names  # config.TrainConfig
_._log_path_or_url  # config.ServeConfig
_._unquoted_off  # config.ServeConfig
_._a_time  # config.DriftConfig
_._warn_before_drift  # config.DriftConfig
_._a_range  # config.EvaluateConfig
_._yaml_types  # config._Section
_.prediction
_.prediction_usd
_.predictions_usd

# scikit-learn's estimator protocol: fitted attributes and signature parameters.
_.feature_names_in_  # read by sklearn's validation and get_feature_names_out
_.fit_transform  # Pipeline.fit calls it on the "features" step
_.get_feature_names_out  # ColumnTransformer / Pipeline feature names
fit_params  # SpatialFeatures.fit_transform(X, y, **fit_params)
input_features  # SpatialFeatures.get_feature_names_out(input_features)

# Rich calls Console.on_broken_pipe when stdout's reader left (output._Console).
_.on_broken_pipe
_.quiet

# prometheus_client calls a registered collector's collect() on every scrape.
_.collect  # serving.drift_collector

# Context manager protocol: __exit__(exc_type, exc, tb).
tb

# store.LabelledRows: every joined column is part of the row a caller gets (label delay).
_.received_at
