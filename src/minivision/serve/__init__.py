"""``minivision serve``: the HTTP service (FastAPI on uvicorn), its web page and the training-jobs API."""
