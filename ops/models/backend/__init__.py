"""Sources of the Python-backend ``model.py`` files copied into the Triton model repository."""
