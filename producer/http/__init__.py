"""videoqueue's HTTP service (`videoqueue serve`): the router's API and OpenAI's Videos API for
backends in any language, over the producer's verbs.

`producer.http.app.create_app(settings)` builds the ASGI app; nothing is imported here, so
that the sandbox (ops/sandbox) can share `producer.http.bodies` without loading FastAPI.
"""
