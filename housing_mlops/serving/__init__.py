"""The prediction service: app factory, schemas, predictor, metrics."""
