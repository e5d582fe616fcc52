"""The HTTP service: FastAPI app, model store and the `w2v` command line."""
