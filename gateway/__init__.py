"""The gateway: the mesh's public REST API (FastAPI), upload validation and the web page (see ``gateway.app``)."""
