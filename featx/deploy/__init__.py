"""Deployment: ``featx.export`` writes a fitted model as one ONNX graph (see ``featx.deploy.export``)."""
